// The scheduler core shared by the local pool engine (src/pool/engine.cpp) and
// the MPI executor (src/mpi/engine.cpp): the queue of tasks not yet sent,
// each worker's tasks in flight (in the order sent: a worker runs them in
// that order), the assignment policy, the moving average of a task's time,
// and settle(), the one way a task reaches a final state. How tasks travel
// (a socket + result ring; MPI messages), deadlines' timers, respawn and
// reading results are the engine's; it calls the functions below, under its
// own mutex, for every transition of a task or a worker.
//
// A task's life:
//
//                       assign()                heads its worker's flight
//   enqueue ─▶ queued ───────────▶ sent ─────────────────────────────────▶ running
//               │  ▲                │                                        │
//               │  └─worker_died()──┘ never started: requeued at the front;  │
//               │    blamed instead once it headed kMaxRequeues dead flights │
//               │                                                            │
//               │ cancel() by the user (assign() drops it)  complete_head() ─┼─▶ done / failed (RemoteError,
//               │                                                            │    ResultTooLarge)
//               │ cancel_queued() (shutdown, cancel_futures)    doom_head() ─┼─▶ timed out (TaskTimeout)
//               ▼                                             worker_died() ─┼─▶ crashed (WorkerCrashed)
//           cancelled                                        doom_through() ─┴─▶ crashed (WorkerFault)
//
//   fail_all() (pool broken or stopped): queued, sent, running ──▶ failed (BrokenPool)
//
// "sent" and "running" differ only in the core's view (the head of a
// worker's flight runs: its time and deadline count from when it became
// head); TaskState says `running` from assign() on, so cancel() fails.
// Every arrow into a final state goes through settle() after the task has
// left the queue or its worker's flight, so it happens once; the futures
// are finished by complete(), after the engine released its mutex (a
// done-callback may submit again).
//
// A worker's life (the slot's WorkerPhase):
//
//   absent ──worker_up()──▶ live ──worker_retiring()──▶ retiring ────────┐
//     ▲                      │    (its result said it exits after it)    │
//     │                      ├──doom_head() / doom_through()──▶ doomed ──┤
//     │                      │    (deadline / fault: the tasks concerned │
//     │                      │     settled now; the engine kills it)     │
//     │                      └──────────────── dies ─────────────────────┤
//     │                                                                  ▼
//     └─────── the engine starts a replacement ◀──── worker_died(): blames the task it
//              (unless the pool stops)                ran (unless doomed), requeues the rest
//
// Only live workers get tasks. A doomed worker's blamed tasks were settled
// when it was doomed, so its death blames nothing more.
#pragma once
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <string_view>
#include <vector>

#include "mproc/call.hpp"
#include "mproc/futures.hpp"
#include "pool/task_state.hpp"

namespace mproc::detail::pool {

using Clock = std::chrono::steady_clock;
using WorkerId = std::size_t;

// Deaths with no task running after which the same task heads the queue
// again: then it is blamed all the same, so no task can make workers die
// for ever (a task that scribbles "nothing runs" into its ring, then dies).
constexpr unsigned kMaxRequeues = 3;

struct Pending {
  TaskHandle state;
  Call call;                                      // local engine: sent from here
  std::optional<std::chrono::nanoseconds> limit;  // deadline once it runs
  unsigned requeues = 0;                          // sent to a worker that died before starting it
  std::shared_ptr<const Bytes> wire;              // MPI: {id, call} encoded at submit, outside the lock
};

struct InFlight {
  Pending task;
  Clock::time_point started{};                            // when it headed the flight (runs)
  Clock::time_point deadline = Clock::time_point::max();  // started + its limit
};

// Futures to finish (or cancel) once the engine's mutex is released.
struct Completion {
  TaskHandle state;
  Bytes result;
  std::exception_ptr error;
  bool cancelled = false;
};
using Completions = std::vector<Completion>;
void complete(Completions& done);

// The error a task ends with when its worker fails it (crash, deadline, fault).
using ErrorFor = std::function<std::exception_ptr(std::uint64_t task)>;

// How many tasks a worker may hold. `fixed` > 0: that many. Otherwise, while
// tasks are long (average over short_task_us) or none has finished yet:
// `long_tasks` (1 locally: the others stay cancellable and go to whichever
// worker frees first, as Python's executor; 2 over MPI, hiding the network).
// Tiny tasks: pending / live workers, clamped to [tiny_min, tiny_max], so
// they travel in batches. The average that decides is the pool's, or each
// worker's own (per_worker: MPI ranks may run on hosts of different speeds).
struct DepthRule {
  std::size_t fixed = 0;
  std::size_t long_tasks = 1;
  double short_task_us = 1000;
  std::size_t tiny_min = 2, tiny_max = 32;
  bool per_worker = false;
  // More is queued behind a worker's running task only while the payloads
  // queued fit this (the local engine: the socket buffer, so a large task
  // sent while the worker writes a large result never blocks both sides).
  std::size_t max_queued_bytes = std::numeric_limits<std::size_t>::max();
};

// How tasks reach a worker. Called by assign() once per worker that got
// tasks: flight[first..] are new, in order. The transport may fill a lazy
// call's payload (Call::lazy) there; nothing else of the flight changes.
struct Transport {
  virtual void send(WorkerId worker, std::deque<InFlight>& flight, std::size_t first) = 0;
  // The bytes a queued task occupies on the way (DepthRule::max_queued_bytes):
  // its payload, unless the transport moves it aside (the local engine's
  // large payloads travel as a descriptor).
  virtual std::size_t queued_size(const Call& call) const { return call.payload.size(); }

 protected:
  ~Transport() = default;
};

// Told of every task that leaves a worker's flight for a final state, with
// the worker and how it ended ("ok", "error", "timed out", "worker fault",
// "crashed", "failed"): the engine's log and trace. None by default (no cost).
struct Observer {
  virtual void task_ended(WorkerId worker, const InFlight& task, std::string_view outcome) = 0;

 protected:
  ~Observer() = default;
};

enum class WorkerPhase : std::uint8_t { absent, live, retiring, doomed };

// Not thread-safe: the engine calls it under its mutex.
class Scheduler {
 public:
  Scheduler(Transport& transport, DepthRule rule, std::size_t workers);
  void set_observer(Observer* observer) { observer_ = observer; }

  // ---- tasks ----------------------------------------------------------------
  void enqueue(Pending task) { queue_.push_back(std::move(task)); }
  // queued → sent: to the least loaded live worker, up to the depth rule;
  // a task cancelled meanwhile is dropped (TaskState already says cancelled).
  void assign();
  // The head of `worker`'s flight ended (result, or the task's own error).
  void complete_head(WorkerId worker, Bytes result, std::exception_ptr error, Completions& done);
  // shutdown(cancel_futures): every queued task is cancelled.
  void cancel_queued(Completions& done);
  // The pool is broken or stopped: every task not settled fails with `error`.
  void fail_all(const std::exception_ptr& error, Completions& done);

  // ---- workers --------------------------------------------------------------
  void worker_up(WorkerId worker);        // absent → live
  void worker_retiring(WorkerId worker);  // live → retiring: no more tasks
  // The engine kills a worker: its head fails with error(id) (a deadline),
  // or every task up to the one it says it runs (a fault: results before it
  // are lost with the worker's trust), or the head when `running` is none
  // of them. A late result of the last one is ignored (abandoned()).
  void doom_head(WorkerId worker, const ErrorFor& error, Completions& done);
  void doom_through(WorkerId worker, std::uint64_t running, const ErrorFor& error, Completions& done);
  // It died (→ absent). Unless doomed, the task it said it ran (`running`,
  // 0: none) and those before it fail with crashed(id); a head whose
  // workers died unexplained kMaxRequeues times is blamed even when nothing
  // ran (a retiring worker's death is explained: it said it stops). The
  // rest never started: back to the front of the queue, in order.
  void worker_died(WorkerId worker, std::uint64_t running, const ErrorFor& crashed, Completions& done);

  // The engine moves the running task's clock (a fresh worker's first task
  // counts from when it really runs, not from its worker's start-up).
  void set_head_clock(WorkerId worker, Clock::time_point started, Clock::time_point deadline);

  // ---- queries --------------------------------------------------------------
  WorkerPhase phase(WorkerId worker) const { return slots_[worker].phase; }
  const InFlight* head(WorkerId worker) const {
    auto& f = slots_[worker].flight;
    return f.empty() ? nullptr : &f.front();
  }
  const std::deque<InFlight>& flight(WorkerId worker) const { return slots_[worker].flight; }
  // A result for the task settled when its worker was doomed.
  bool abandoned(WorkerId worker, std::uint64_t id) const { return id != 0 && slots_[worker].abandoned == id; }
  std::size_t queued() const { return queue_.size(); }
  std::size_t in_flight() const { return in_flight_; }
  bool idle() const { return queue_.empty() && in_flight_ == 0; }
  std::size_t workers() const { return slots_.size(); }
  double average_task_us() const { return avg_task_us_; }  // -1 until one finished
  double average_task_us(WorkerId worker) const { return slots_[worker].avg_us; }
  // The earliest deadline of a running task on a worker not doomed.
  Clock::time_point earliest_deadline() const;
  // True once after a running task got a deadline (the engine sets its timer).
  bool take_deadlines_changed() {
    bool c = deadlines_changed_;
    deadlines_changed_ = false;
    return c;
  }

 private:
  struct Slot {
    std::deque<InFlight> flight;
    std::size_t queued_bytes = 0;  // payloads sent behind the running task
    std::uint64_t abandoned = 0;   // settled when doomed: its late result is ignored
    double avg_us = -1;            // this worker's average task time (DepthRule::per_worker)
    WorkerPhase phase = WorkerPhase::absent;
  };

  std::size_t depth(const Slot& s, std::size_t tiny) const;
  void arm_head(Slot& s);
  void doom(WorkerId worker, std::size_t count, const ErrorFor& error, std::string_view outcome, Completions& done);
  void ended(WorkerId worker, const InFlight& task, std::string_view outcome) {
    if (observer_) observer_->task_ended(worker, task, outcome);
  }
  // The one way a task reaches a final state.
  static void settle(Completions& done, TaskHandle state, Bytes result, std::exception_ptr error,
                     bool cancelled = false);

  Transport& transport_;
  Observer* observer_ = nullptr;
  DepthRule rule_;
  std::deque<Pending> queue_;
  std::vector<Slot> slots_;
  std::vector<std::size_t> first_;  // scratch of assign()
  std::size_t in_flight_ = 0;
  double avg_task_us_ = -1;
  bool deadlines_changed_ = false;
};

}  // namespace mproc::detail::pool
