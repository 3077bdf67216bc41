// The type-erased face of the local pool engine (src/pool/engine.hpp) that Pool
// and ProcessPoolExecutor hold: calls go in as bytes (detail::Call), futures
// come out as FutureCores. The engine, its workers and its progress
// machinery stay in src/. Not part of the public API.
#pragma once
#include <sys/types.h>

#include <cstddef>
#include <optional>
#include <string>
#include <vector>

#include "mproc/call.hpp"
#include "mproc/detail/future_core.hpp"
#include "mproc/detail/owned.hpp"
#include "mproc/process.hpp"

namespace mproc::detail {

struct EngineOptions {
  unsigned workers = 0;                          // 0: cpu_count()
  std::optional<StartMethod> start_method;       // default: get_start_method()
  std::optional<Call> initializer;               // run once in each worker
  unsigned max_tasks_per_child = 0;              // 0: no limit
  std::size_t max_memory_per_child = 0;          // bytes of RSS; 0: no limit
  Timeout task_timeout;                          // per task; empty: none
  std::size_t max_result_bytes = 0;              // 0: Connection::kDefaultMaxMessageSize
  std::string name = "PoolWorker";
  std::optional<std::string> trace_file;         // PoolOptions::trace_file
};

class Engine;  // src/pool/engine.hpp

class PoolCore {
 public:
  explicit PoolCore(EngineOptions options);  // the workers are up when it returns
  ~PoolCore();                               // shutdown(wait = true)
  PoolCore(const PoolCore&) = delete;
  PoolCore& operator=(const PoolCore&) = delete;

  // Thread-safe. Throws BrokenPool / Error once shut down.
  // timeout: this task's deadline once it runs; empty: EngineOptions::task_timeout.
  FutureCore submit(Call call, Timeout timeout = std::nullopt);
  // Many at once (map): one lock and one hand-out, so they travel in batches.
  std::vector<FutureCore> submit_many(std::vector<Call> calls, Timeout timeout = std::nullopt);
  // No new tasks; pending ones run (or are cancelled); workers then exit.
  void shutdown(bool wait, bool cancel_pending);
  // Kill the workers now; unfinished tasks fail with BrokenPool.
  void terminate();
  // Block until the engine has stopped (after shutdown or terminate).
  void join();

  unsigned size() const noexcept;
  std::vector<pid_t> worker_pids() const;  // live workers, for tests and tools
  std::size_t respawns() const noexcept;   // workers replaced so far

 private:
  Owned<Engine> engine_;
};

}  // namespace mproc::detail
