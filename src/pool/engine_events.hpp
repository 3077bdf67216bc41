// What the local pool engine tells the outside world about its life: log
// lines (mproc/log.hpp: worker started, task sent and ended, worker crashed
// with its signal, task timed out, worker recycled or faulted) and the task
// timeline (trace.hpp: a lane per worker, a span per task). Called under the
// engine's mutex; each call costs one relaxed load when logging is off, and
// nothing else when no trace is written.
#pragma once
#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "pool/scheduler.hpp"
#include "base/trace.hpp"

namespace mproc::detail {

class EngineEvents final : public pool::Observer {
 public:
  // trace_file: PoolOptions::trace_file; else $MPROC_TRACE; else none.
  EngineEvents(std::string pool, std::size_t workers, const std::optional<std::string>& trace_file);
  ~EngineEvents();

  void worker_started(pool::WorkerId slot, pid_t pid, std::string_view name, bool respawn);
  void tasks_sent(pool::WorkerId slot, const std::deque<pool::InFlight>& flight, std::size_t first);
  void task_ended(pool::WorkerId slot, const pool::InFlight& task, std::string_view outcome) override;
  // exitcode: Python's (-signal when killed by one); running: the task it ran (0: none).
  void worker_died(pool::WorkerId slot, int exitcode, std::uint64_t running, bool retiring, bool doomed);
  void task_timed_out(pool::WorkerId slot, std::uint64_t task, std::chrono::nanoseconds limit);
  void worker_fault(pool::WorkerId slot, std::string_view what);
  void close();  // the trace file is complete

 private:
  pid_t pid_of(pool::WorkerId slot) const { return slot < pids_.size() ? pids_[slot] : 0; }
  std::string pool_;
  std::vector<pid_t> pids_;
  std::unique_ptr<TraceWriter> trace_;
};

}  // namespace mproc::detail
