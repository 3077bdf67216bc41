// Internal to src/engine.cpp: what the pool engine knows of a task and of a
// worker, and the one function that ends a task's life.
//
// A task's life (docs/architecture.md draws it):
//
//   queued ──assign──▶ sent ──heads its worker──▶ running ──result──▶ done/failed
//     │ ▲               │                          ├─deadline──────▶ timed out
//     │ └──worker died before it started (requeued)┼─worker died───▶ crashed
//     │                                            └─worker's fault▶ crashed (WorkerFault)
//     ├──cancel()/shutdown(cancel_futures)────────────────────────▶ cancelled
//     └──pool broken/terminated (any state before settled)────────▶ failed (BrokenPool)
//
// Every arrow to a final state goes through settle(), after the task has left
// the engine's tables (pending, a worker's flight), so it happens once.
#pragma once
#include <chrono>
#include <cstddef>
#include <deque>
#include <exception>
#include <memory>
#include <optional>
#include <vector>

#include "mproc/call.hpp"
#include "mproc/connection.hpp"
#include "mproc/futures.hpp"
#include "mproc/process.hpp"
#include "result_ring.hpp"
#include "sys/fd.hpp"

namespace mproc::detail::engine_state {

using Clock = std::chrono::steady_clock;

// Deaths with no task running after which the same task heads the queue
// again: then it is blamed all the same, so no task can make workers die
// for ever (a task that scribbles "nothing runs" into its ring, then dies).
constexpr unsigned kMaxRequeues = 3;

struct Pending {
  std::shared_ptr<TaskState> state;
  Call call;
  std::optional<std::chrono::nanoseconds> limit;
  unsigned requeues = 0;  // sent to a worker that died before starting it
};

struct InFlight {
  Pending task;
  Clock::time_point started{};                            // when it headed the queue
  Clock::time_point deadline = Clock::time_point::max();  // started + its limit
};

// A worker's life:
//
//   live ──result with `retiring`──▶ retiring ──exits──▶ dead ──▶ replaced
//    │ └──────────── crashes (the task it runs is blamed) ─────▶ dead
//    └─deadline / fault: its head settled, SIGKILL──▶ doomed ──▶ dead
//
// Only live workers get tasks. On death, the task the worker said it ran
// (ResultRing::running) fails unless the worker was doomed (its head was
// settled then); the others in flight never started and go back to pending.
struct Worker {
  Process proc;
  Connection conn;      // tasks, engine → worker (the worker shut its side for writing)
  ResultRing ring;      // results, worker → engine
  sys::UniqueFd bell;   // the worker's doorbell (eventfd)
  Bytes partial;        // the chunks of a large result read so far
  Bytes record;         // the last record read (kept: no allocation per result)
  pid_t pid = 0;
  std::deque<InFlight> flight;
  std::size_t queued_bytes = 0;  // payloads sent behind the running task
  std::uint64_t records = 0;     // results read: an initializer's failure can only be the first
  std::uint64_t abandoned = 0;   // the head settled when it was doomed: its late result is ignored
  bool retiring = false;   // told us it exits after its last result
  bool doomed = false;     // killed by the engine; nothing more is blamed on its death
  bool untrusted = false;  // doomed for a fault: its ring is not read any more
};

// Futures to finish once the mutex is released.
struct Completion {
  std::shared_ptr<TaskState> state;
  Bytes result;
  std::exception_ptr error;
};
using Completions = std::vector<Completion>;

// The one way a task reaches a final state (see the diagram above). The
// caller has taken it out of the engine's tables already.
void settle(Completions& done, std::shared_ptr<TaskState> state, Bytes result, std::exception_ptr error) {
  done.push_back({std::move(state), std::move(result), std::move(error)});
}

void complete(Completions& done) {
  for (auto& c : done) c.state->finish(std::move(c.result), std::move(c.error));
  done.clear();
}

}  // namespace mproc::detail::engine_state
