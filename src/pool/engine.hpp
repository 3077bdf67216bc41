// Internal: the pool engine under Pool and ProcessPoolExecutor (see
// src/pool/engine.cpp for the data-flow picture). The public headers reach it
// only through detail::PoolCore (include/mproc/detail/pool_core.hpp,
// src/pool/pool_core.cpp).
#pragma once
#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "mproc/call.hpp"
#include "mproc/detail/pool_core.hpp"
#include "mproc/futures.hpp"
#include "mproc/process.hpp"
#include "pool/task_state.hpp"

namespace mproc::detail {

class Engine {
 public:
  explicit Engine(EngineOptions options);
  ~Engine();  // shutdown(wait = true)
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Thread-safe. Throws BrokenPool / Error once shut down.
  // timeout: the task's deadline once it runs; empty: EngineOptions::task_timeout.
  TaskHandle submit(Call call, Timeout timeout = std::nullopt);
  // Many at once (map): one lock and one hand-out, so they travel in batches.
  std::vector<TaskHandle> submit_many(std::vector<Call> calls, Timeout timeout = std::nullopt);
  // No new tasks; pending ones run (or are cancelled); workers then exit.
  // wait: block until they have.
  void shutdown(bool wait, bool cancel_pending);
  // Kill the workers now; unfinished tasks fail with BrokenPool.
  void terminate();
  // Block until the engine has stopped (after shutdown or terminate).
  void join();

  unsigned size() const noexcept;
  std::vector<pid_t> worker_pids() const;  // live workers, for tests and tools
  std::size_t respawns() const noexcept;   // workers replaced so far

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;  // futures hold it weakly, to drive progress
};

}  // namespace mproc::detail
