// A task timeline in the Chrome trace event format (chrome://tracing,
// https://ui.perfetto.dev): one process group per pool, one lane per worker
// (named "PoolWorker-3 pid 4720"), a span per task ("task 17", coloured by
// outcome), instant markers for crashes, timeouts, recycling and respawns.
//
// Written by the pool engine under its own mutex; lines are buffered and
// written out in large pieces and at close(), so tracing costs a few hundred
// nanoseconds per task and nothing when off (the engine holds no writer).
// The file is valid JSON once closed; if the program dies first, trace
// viewers still read it (the JSON array format tolerates a missing "]").
#pragma once
#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

namespace mproc::detail {

class TraceWriter {
 public:
  using Clock = std::chrono::steady_clock;

  // The file for a pool named `pool`: `path` if given, else $MPROC_TRACE
  // (read at load); nullptr when neither. "%p" in the path becomes the pid,
  // "%n" the pool's sequence number in this process; without "%n", pools
  // after the first add "-<n>" before the extension so none overwrites another.
  static std::unique_ptr<TraceWriter> open_for_pool(const std::optional<std::string>& path, std::string_view pool);

  explicit TraceWriter(std::string path, std::string_view pool);  // throws OSError
  ~TraceWriter();  // close()
  TraceWriter(const TraceWriter&) = delete;
  TraceWriter& operator=(const TraceWriter&) = delete;

  void worker_started(pid_t worker, std::string_view name, Clock::time_point at);
  // outcome: "ok", "error", "crashed", "timed out", "cancelled", ...
  void task(pid_t worker, std::uint64_t task, Clock::time_point begin, Clock::time_point end, std::string_view outcome);
  void marker(pid_t worker, std::string_view what, Clock::time_point at);
  void close();
  const std::string& path() const noexcept { return path_; }

 private:
  void event(std::string_view json);
  void flush();
  double us(Clock::time_point t) const;
  std::string path_;
  int fd_ = -1;
  unsigned pool_id_ = 0;
  Clock::time_point origin_;
  std::string buf_;
  bool first_ = true;
};

}  // namespace mproc::detail
