// Internal to the local pool engine: its state and the declarations of its
// transitions. engine.cpp defines the dispatcher (results, deaths,
// deadlines, the epoll loop; its data flow is drawn there) and
// engine_lifecycle.cpp the workers' start, replacement and stop and the
// Engine API. Nothing else includes this.
#pragma once
#include <signal.h>
#include <sys/types.h>

#include <atomic>
#include <algorithm>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "pool/engine.hpp"
#include "pool/engine_events.hpp"
#include "pool/engine_state.hpp"
#include "mproc/shared_memory.hpp"
#include "pool/pool_protocol.hpp"
#include "pool/result_ring.hpp"
#include "sys/fd.hpp"

namespace mproc::detail {

namespace engine_config {
// Tasks in flight per worker: one while tasks are long (so the others stay
// cancellable and go to whichever worker frees first, as Python's executor
// does); two once they are tiny (under a millisecond on average), so a
// worker never waits for its next task, up to 32 when many are pending (a
// map of tiny tasks), so they travel in batches. More is queued behind a
// running task only while the queued payloads fit in the socket buffer: a
// large task sent while the worker is writing a large result would block
// both sides for good.
constexpr pool::DepthRule kLocalDepth{
    .fixed = 0, .long_tasks = 1, .short_task_us = 1000, .tiny_min = 2, .tiny_max = 32, .max_queued_bytes = 32 << 10};
constexpr auto kQuiet = std::chrono::milliseconds(1);  // no waiter spun for this long: doorbells on
constexpr std::uint64_t kWake = ~std::uint64_t{0}, kTimer = kWake - 1, kResults = kWake - 2;

}  // namespace engine_config

using namespace engine_state;
using pool::complete;
using pool::Completions;
using pool::WorkerPhase;

using namespace engine_config;

struct Engine::Impl : Progress, pool::Transport {
  explicit Impl(EngineOptions o);
  static EngineOptions with_workers(EngineOptions o) {
    if (o.workers == 0) o.workers = cpu_count();
    return o;
  }

  EngineOptions opt;
  WorkerConfig config;

  std::mutex mu;  // everything below, but the atomics and the fds
  pool::Scheduler sched{*this, kLocalDepth, opt.workers};
  EngineEvents events{opt.name, opt.workers, opt.trace_file};
  TaskBatch batch;  // scratch of send()
  bool closing = false, cancel_pending = false, terminating = false;
  std::exception_ptr broken;
  std::vector<std::unique_ptr<Worker>> workers;
  unsigned worker_counter = 0;
  std::vector<pid_t> pids;

  sys::UniqueFd wake, epoll, results, timer;
  std::atomic<std::size_t> respawn_count{0};
  std::atomic<int> spinners{0};
  std::atomic<std::int64_t> last_spin_ns{0};
  std::atomic<bool> doorbells_armed{false};
  bool started = false;            // under mu: the first workers are up
  std::condition_variable started_cv;
  std::atomic<std::uint64_t> next_id{1};
  std::thread thread;
  std::mutex join_mu;

  void wake_dispatcher() {
    std::uint64_t one = 1;
    (void)::write(wake.get(), &one, sizeof one);
  }

  // ---- workers (under mu) ------------------------------------------------
  std::unique_ptr<Worker> start_worker(std::size_t slot);

  void publish_pids();

  bool stopping() const { return terminating || broken || (closing && sched.queued() == 0); }

  void replace(std::size_t slot);

  // ---- the transport's side of the core (under mu) ---------------------
  // New tasks for a worker, in one write. A send that fails means the worker
  // is dying: its sentinel will tell, and worker_died() requeues what never
  // started.
  void send(pool::WorkerId slot, std::deque<pool::InFlight>& flight, std::size_t first) override;
  // A lazy call (a large map chunk, Call::lazy) is encoded here, when sent:
  // straight into the worker's arena when its size is known (one copy from
  // the caller's items), else through `lazy_scratch` (kept: no page faults
  // per task); into call.payload when it turns out small or the arena is
  // full (then inline, as any small task). Throws what the encoder throws.
  TaskRef stage_lazy(TaskArena& arena, std::uint64_t id, Call& call);
  Bytes lazy_scratch;
  // Buffers of large results whose futures are gone (Progress::recycle),
  // reused by on_result: at most kSpares, each at most kMaxSpare bytes.
  // Their own lock: a TaskState dies in any thread, under mu or not.
  static constexpr std::size_t kSpares = 4, kMaxSpare = (std::size_t{16} << 20) + (64 << 10);
  std::mutex spares_mu;
  std::vector<Bytes> spares;  // reserved for kSpares: recycle() never allocates
  void recycle(Bytes& bytes) noexcept override;
  Bytes spare_for(std::size_t size);
  // Tasks whose arguments failed to encode when sent (a user type's save()
  // threw): the worker gets `encode_failed_call` in their place, which
  // throws there, so the task's result arrives in order as any failure
  // (the worker and its arena go on). on_result settles the task with the
  // error kept here (the caller sees what its save() threw). Entries of
  // tasks that end otherwise (their worker died) go once the pool is idle.
  std::unordered_map<std::uint64_t, std::exception_ptr> encode_failed;
  const Call encode_failed_call;
  // A large payload is staged in the worker's arena (usually: it may go
  // inline when the arena is full, then the socket's own bulk path carries
  // it as a 16-byte frame plus a memfd, so it cannot fill the socket buffer
  // either). Counted as a few KiB, so a few large tasks queue behind the
  // running one (the worker never waits for its next argument) while the
  // arena holds at most ~8 of them.
  std::size_t queued_size(const Call& call) const override {
    return call.lazy || call.payload.size() >= TaskArena::kThreshold ? kQueuedBulkSize : call.payload.size();
  }
  static constexpr std::size_t kQueuedBulkSize = 4 << 10;

  // The timer is set again before mu is released (assign, on_timer),
  // wherever a running task got a deadline.
  void arm_timer();

  void assign();

  // The engine kills a worker it doomed (deadline, fault): the core settled
  // the tasks concerned, so its death blames nothing more.
  void kill_doomed(std::size_t slot, bool was_doomed);

  // Throws ProtocolError for a record this worker had no business sending
  // (drain_ring makes it the worker's fault), before changing anything.
  void on_result(std::size_t slot, ResultMsg&& msg, Completions& done);

  std::uint64_t max_result() const {
    return opt.max_result_bytes ? opt.max_result_bytes : Connection::kDefaultMaxMessageSize;
  }

  // Results in the ring, in order; never blocks. Anything malformed is the
  // worker's fault: the results before it were delivered, it dies.
  void drain_ring(std::size_t slot, Completions& done);

  // A malformed record: the worker cannot be trusted any more, and dies. The
  // task it says it runs fails, and any before it, whose results cannot be
  // read any more (a task that overwrote its ring took them along); if it
  // names no task of its flight, the head fails (its result is the one that
  // is malformed). Those after it never started: they run elsewhere.
  void fault(std::size_t slot, const std::string& what, Completions& done);

  // Reads every result that is ready (never blocks), then hands out work.
  // A spinning waiter reads only the rings (no syscall); the dispatcher also
  // clears the doorbells that epoll reported.
  void collect(Completions& done, bool doorbells);

  // Before the dispatcher sleeps for good: ask workers for a doorbell.
  // False when a result slipped in meanwhile.
  bool arm_doorbells();

  // The worker's sentinel fired. What it finished before dying is
  // delivered; then the core blames the task it said it ran (none when it
  // was between tasks, or doomed) and requeues the rest.
  void on_death(std::size_t slot, Completions& done);

  // A running task past its deadline: a result that raced it is delivered,
  // not lost; otherwise it fails with TaskTimeout and its worker is doomed.
  bool past_deadline(std::size_t slot, Clock::time_point now) const {
    const pool::InFlight* head = workers[slot] ? sched.head(slot) : nullptr;
    return head && sched.phase(slot) != WorkerPhase::doomed && head->deadline <= now;
  }

  // A fresh worker's first task: its deadline counts from when it runs, not
  // from when it was sent: the worker's start-up (and initializer) is not the
  // task's time, and takes seconds on a loaded machine. Until the worker's
  // ring says it runs it, its deadline is pushed back by `look` at a time;
  // once it runs, it counts from the look that found it running (late by at
  // most `look`, never early). `deadline != started + limit` marks a
  // pushed-back deadline. Never past kMaxStartup after it was sent: a ring is
  // the worker's word, and a task may have scribbled it.
  bool first_task_not_started(std::size_t slot, std::chrono::nanoseconds limit, Clock::time_point now);

  void on_timer(Completions& done);

  // Under mu. Tasks cancelled by shutdown(cancel_futures) are settled in
  // `done`, once mu is released (callbacks may submit).
  bool finished(Completions& done);

  // ---- Progress: a spinning waiter reads results itself ------------------
  void poll() override;

  // A spinning waiter reads the rings itself, so workers need not ring the
  // dispatcher meanwhile: the first spinner turns doorbells off. They are
  // turned back on by the dispatcher, once no waiter has spun for kQuiet.
  //
  // The dispatcher sleeps without a timeout only while doorbells are armed,
  // so the spinner that disarms them also wakes it: it then polls every
  // kQuiet until spinning stops and re-arms them. Without that wake-up a
  // waiter that gives up spinning before its result arrives would sleep
  // forever beside a dispatcher that no worker rings.
  void spin_begin() override;
  void spin_end() override;
  bool spinning_lately() const {
    return spinners.load() > 0 ||
           Clock::now().time_since_epoch().count() - last_spin_ns.load() < std::chrono::nanoseconds(kQuiet).count();
  }

  // ---- the dispatcher thread ---------------------------------------------
  void run();

  void loop();

  void stop_workers();
};

}  // namespace mproc::detail
