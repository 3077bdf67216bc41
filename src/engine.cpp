// The pool engine: workers, the tasks in flight on each, respawn, deadlines,
// recycling. One mutex guards all of it; three kinds of thread take it.
//
//   submit() (any thread)                                      workers
//   ─────────────────────                                      ───────
//   pending.push(task); assign ──────TaskMsg (socket)────────▶ run tasks in
//     (pool::DepthRule: 1 to 32 in flight per worker)           order, spin
//                                                                100 µs for
//   Future::get() spinning: poll() ◀────ResultMsg (ring)───────  the next
//     reads ready results itself, finishes futures, assigns
//     pending tasks (no thread hop: the round trip is two
//     processes, each on its own CPU)
//
//   dispatcher thread (sleeps in epoll):
//     doorbell (eventfd), nobody spinning → the same as poll()
//     sentinel readable: the worker died → the task it said it ran fails
//       with WorkerCrashed, the rest go back to pending, a new worker takes
//       its slot (started from this long-lived thread: a child's death
//       signal follows the thread that forked it)
//     timerfd: a head task past its deadline → TaskTimeout, SIGKILL
//
// The tasks (queue, each worker's flight, assignment, their state machine,
// settle()) are the scheduler core's, shared with the MPI executor
// (src/pool/scheduler.hpp draws both state machines); this file is the
// local transport: processes, sockets, result rings, doorbells, deadlines'
// timer, respawn. Futures are finished after the mutex is released, so a
// done-callback may submit again.
//
// One worker's misbehaviour is that worker's death, never the pool's: a
// malformed record, a result for a task it does not run, a result over the
// limit make it `doomed` (killed; its running task fails with WorkerFault).
#include "engine.hpp"

#include <fmt/format.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <algorithm>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>

#include "engine_state.hpp"
#include "mproc/shared_memory.hpp"
#include "pool_protocol.hpp"
#include "result_ring.hpp"
#include "sys/fd.hpp"

namespace mproc::detail {

namespace {
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

}  // namespace

using namespace engine_state;
using pool::complete;
using pool::Completions;
using pool::WorkerPhase;

struct Engine::Impl : Progress, pool::Transport {
  explicit Impl(EngineOptions o) : opt(with_workers(std::move(o))) {}
  static EngineOptions with_workers(EngineOptions o) {
    if (o.workers == 0) o.workers = cpu_count();
    return o;
  }

  EngineOptions opt;
  WorkerConfig config;

  std::mutex mu;  // everything below, but the atomics and the fds
  pool::Scheduler sched{*this, kLocalDepth, opt.workers};
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
  std::unique_ptr<Worker> start_worker(std::size_t slot) {
    auto w = std::make_unique<Worker>();
    auto [mine, theirs] = Pipe(true);
    w->ring = ResultRing::create();
    w->bell = sys::UniqueFd(sys::check(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK), "eventfd(doorbell)"));
    ProcessOptions po;
    po.name = fmt::format("{}-{}", opt.name, ++worker_counter);
    po.daemon = true;  // killed, not joined, if the engine is torn down
    po.start_method = opt.start_method;
    w->proc = Process(std::move(po), worker_main, std::move(theirs), config, PassedFd{w->ring.fd()},
                      PassedFd{w->bell.get()});
    w->proc.start();
    w->conn = std::move(mine);
    w->pid = w->proc.pid();
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = slot;
    sys::check(::epoll_ctl(results.get(), EPOLL_CTL_ADD, w->bell.get(), &ev), "epoll_ctl(doorbell)");
    sys::check(::epoll_ctl(epoll.get(), EPOLL_CTL_ADD, w->proc.sentinel(), &ev), "epoll_ctl(sentinel)");
    return w;
  }

  void publish_pids() {
    pids.clear();
    for (auto& w : workers)
      if (w) pids.push_back(w->pid);
  }

  bool stopping() const { return terminating || broken || (closing && sched.queued() == 0); }

  void replace(std::size_t slot) {
    Worker& w = *workers[slot];
    ::epoll_ctl(results.get(), EPOLL_CTL_DEL, w.bell.get(), nullptr);
    ::epoll_ctl(epoll.get(), EPOLL_CTL_DEL, w.proc.sentinel(), nullptr);
    workers[slot].reset();
    if (!stopping()) {
      workers[slot] = start_worker(slot);
      sched.worker_up(slot);
      ++respawn_count;
    }
    publish_pids();
  }

  // ---- the transport's side of the core (under mu) ---------------------
  // New tasks for a worker, in one write. A send that fails means the worker
  // is dying: its sentinel will tell, and worker_died() requeues what never
  // started.
  void send(pool::WorkerId slot, const std::deque<pool::InFlight>& flight, std::size_t first) override {
    batch.refs.clear();
    for (std::size_t k = first; k < flight.size(); ++k)
      batch.refs.emplace_back(flight[k].task.state->id, &flight[k].task.call);
    try {
      workers[slot]->conn.send(batch);
    } catch (const Error&) {
    }
  }

  // The timer is set again before mu is released (assign, on_timer),
  // wherever a running task got a deadline.
  void arm_timer() {
    (void)sched.take_deadlines_changed();
    const auto next = sched.earliest_deadline();
    itimerspec its{};
    if (next != Clock::time_point::max()) {
      auto ns = std::max<std::int64_t>(1, std::chrono::duration_cast<std::chrono::nanoseconds>(next - Clock::now()).count());
      its.it_value.tv_sec = ns / 1'000'000'000;
      its.it_value.tv_nsec = ns % 1'000'000'000;
    }
    ::timerfd_settime(timer.get(), 0, &its, nullptr);
  }

  void assign() {
    sched.assign();
    if (sched.take_deadlines_changed()) arm_timer();
  }

  // The engine kills a worker it doomed (deadline, fault): the core settled
  // the tasks concerned, so its death blames nothing more.
  void kill_doomed(std::size_t slot, bool was_doomed) {
    if (!was_doomed) workers[slot]->proc.kill();
  }

  // Throws ProtocolError for a record this worker had no business sending
  // (drain_ring makes it the worker's fault), before changing anything.
  void on_result(std::size_t slot, ResultMsg&& msg, Completions& done) {
    Worker& w = *workers[slot];
    if (msg.id == kStop) {  // a task broke its fds, its result out already: it stops, no task to blame
      sched.worker_retiring(slot);
      return;
    }
    if (msg.id == 0) {  // the initializer failed: no point respawning
      if (w.records != 0) throw ProtocolError("an initializer's failure after its results");
      ErrorInfo info = from_bytes<ErrorInfo>(msg.data);
      broken = std::make_exception_ptr(BrokenPool(
          fmt::format("pool initializer failed in worker {}: {}: {}", w.pid, info.type_name, info.message)));
      sched.fail_all(broken, done);
      return;
    }
    const pool::InFlight* head = sched.head(slot);
    if (!head || head->task.state->id != msg.id) {
      if (sched.abandoned(slot, msg.id)) return;  // its deadline fired first: settled already
      throw ProtocolError(fmt::format("a result for task {}, which is not the task it runs", msg.id));
    }
    const std::uint64_t id = msg.id;
    std::exception_ptr error;
    if (msg.too_large) error = std::make_exception_ptr(ResultTooLarge(id, msg.too_large, max_result()));
    else if (msg.fault)  // this task broke the worker's fds (it stops next)
      error = std::make_exception_ptr(
          WorkerFault(id, w.pid, std::string(reinterpret_cast<const char*>(msg.data.data()), msg.data.size())));
    else if (!msg.ok) error = std::make_exception_ptr(to_remote_error(from_bytes<ErrorInfo>(msg.data)));
    ++w.records;
    if (msg.retiring) sched.worker_retiring(slot);
    if (error) sched.complete_head(slot, {}, std::move(error), done);
    else sched.complete_head(slot, std::move(msg.data), nullptr, done);
  }

  std::uint64_t max_result() const {
    return opt.max_result_bytes ? opt.max_result_bytes : Connection::kDefaultMaxMessageSize;
  }

  // Results in the ring, in order; never blocks. Anything malformed is the
  // worker's fault: the results before it were delivered, it dies.
  void drain_ring(std::size_t slot, Completions& done) {
    Worker& w = *workers[slot];
    if (w.untrusted) return;
    Bytes& rec = w.record;
    std::uint32_t flags = 0;
    try {
      while (w.ring.try_pop(rec, flags)) {
        if (w.partial.size() + rec.size() > max_result() + 64)  // 64: the ResultMsg around the value
          throw ProtocolError(fmt::format("a result of more than {} bytes, over the pool's limit of {} bytes",
                                          w.partial.size() + rec.size(), max_result()));
        if (flags & ResultRing::kMore || !w.partial.empty()) {
          w.partial.insert(w.partial.end(), rec.begin(), rec.end());
          if (flags & ResultRing::kMore) continue;
          on_result(slot, from_bytes<ResultMsg>(w.partial), done);
          w.partial = Bytes();
          continue;
        }
        on_result(slot, from_bytes<ResultMsg>(rec), done);
        if (broken) return;
      }
    } catch (const std::exception& e) {
      fault(slot, e.what(), done);
    }
  }

  // A malformed record: the worker cannot be trusted any more, and dies. The
  // task it says it runs fails, and any before it, whose results cannot be
  // read any more (a task that overwrote its ring took them along); if it
  // names no task of its flight, the head fails (its result is the one that
  // is malformed). Those after it never started: they run elsewhere.
  void fault(std::size_t slot, const std::string& what, Completions& done) {
    Worker& w = *workers[slot];
    w.untrusted = true;
    w.partial = Bytes();
    const pid_t pid = w.pid;
    const bool was_doomed = sched.phase(slot) == WorkerPhase::doomed;
    sched.doom_through(
        slot, w.ring.running(), [&](std::uint64_t id) { return std::make_exception_ptr(WorkerFault(id, pid, what)); },
        done);
    kill_doomed(slot, was_doomed);
  }

  // Reads every result that is ready (never blocks), then hands out work.
  // A spinning waiter reads only the rings (no syscall); the dispatcher also
  // clears the doorbells that epoll reported.
  void collect(Completions& done, bool doorbells) {
    if (doorbells) {
      epoll_event events[64];
      int n = ::epoll_wait(results.get(), events, 64, 0);
      for (int i = 0; i < n; ++i) {
        const std::size_t slot = events[i].data.u64;
        std::uint64_t rings;
        if (slot < workers.size() && workers[slot]) (void)::read(workers[slot]->bell.get(), &rings, sizeof rings);
      }
    }
    for (std::size_t i = 0; i < workers.size(); ++i)
      if (workers[i]) drain_ring(i, done);
    assign();
  }

  // Before the dispatcher sleeps for good: ask workers for a doorbell.
  // False when a result slipped in meanwhile.
  bool arm_doorbells() {
    for (auto& w : workers)
      if (w) w->ring.set_sleeping(true);
    doorbells_armed = true;
    for (auto& w : workers)
      if (w && !w->untrusted && !w->ring.empty()) return false;  // an untrusted ring is never read again
    return true;
  }

  // The worker's sentinel fired. What it finished before dying is
  // delivered; then the core blames the task it said it ran (none when it
  // was between tasks, or doomed) and requeues the rest.
  void on_death(std::size_t slot, Completions& done) {
    Worker& w = *workers[slot];
    drain_ring(slot, done);
    w.proc.join();
    const int code = w.proc.exitcode().value_or(-1);
    const std::uint64_t running = w.untrusted ? 0 : w.ring.running();
    const pid_t pid = w.pid;
    sched.worker_died(
        slot, running, [&](std::uint64_t id) { return std::make_exception_ptr(WorkerCrashed(id, pid, code)); }, done);
    replace(slot);
  }

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
  // once it runs, it counts from the last look that found it not running (at
  // most `look`, 1% of the limit, early). `deadline != started + limit` marks
  // a pushed-back deadline. Never past kMaxStartup after it was sent: a ring
  // is the worker's word, and a task may have scribbled it.
  bool first_task_not_started(std::size_t slot, std::chrono::nanoseconds limit, Clock::time_point now) {
    constexpr auto kMaxStartup = std::chrono::seconds(60);
    Worker& w = *workers[slot];
    const pool::InFlight& head = *sched.head(slot);
    if (w.records != 0 || w.untrusted) return false;
    const auto look = std::clamp<std::chrono::nanoseconds>(limit / 100, std::chrono::microseconds(100),
                                                           std::chrono::milliseconds(10));
    const bool pushed_back = head.deadline != head.started + limit;
    if (w.ring.running() != head.task.state->id) {
      if (now - head.started > kMaxStartup) return false;
      sched.set_head_clock(slot, head.started, now + look);
      return true;
    }
    if (!pushed_back) return false;
    const auto started = now - look;  // it runs now: its clock starts at the last look
    sched.set_head_clock(slot, started, started + limit);
    return started + limit > now;
  }

  void on_timer(Completions& done) {
    std::uint64_t ticks;
    (void)::read(timer.get(), &ticks, sizeof ticks);
    const auto now = Clock::now();
    for (std::size_t slot = 0; slot < workers.size(); ++slot) {
      if (!past_deadline(slot, now)) continue;
      drain_ring(slot, done);  // a result that raced its deadline is delivered, not lost
      if (!past_deadline(slot, now)) continue;
      const auto limit = *sched.head(slot)->task.limit;
      if (first_task_not_started(slot, limit, now)) continue;
      const pid_t pid = workers[slot]->pid;
      sched.doom_head(
          slot, [&](std::uint64_t id) { return std::make_exception_ptr(TaskTimeout(id, pid, limit)); }, done);
      kill_doomed(slot, false);
    }
    arm_timer();
  }

  // Under mu. Tasks cancelled by shutdown(cancel_futures) are settled in
  // `done`, once mu is released (callbacks may submit).
  bool finished(Completions& done) {
    if (terminating || broken) return true;
    if (!closing) return false;
    if (cancel_pending) sched.cancel_queued(done);
    return sched.idle();
  }

  // ---- Progress: a spinning waiter reads results itself ------------------
  void poll() override {
    std::unique_lock lock(mu, std::try_to_lock);
    if (!lock) return;
    Completions done;
    collect(done, false);
    lock.unlock();
    complete(done);
  }

  // A spinning waiter reads the rings itself, so workers need not ring the
  // dispatcher meanwhile: the first spinner turns doorbells off. They are
  // turned back on by the dispatcher, once no waiter has spun for kQuiet.
  //
  // The dispatcher sleeps without a timeout only while doorbells are armed,
  // so the spinner that disarms them also wakes it: it then polls every
  // kQuiet until spinning stops and re-arms them. Without that wake-up a
  // waiter that gives up spinning before its result arrives would sleep
  // forever beside a dispatcher that no worker rings.
  void spin_begin() override {
    ++spinners;
    if (doorbells_armed.exchange(false)) {
      {
        std::lock_guard lock(mu);
        for (auto& w : workers)
          if (w) w->ring.set_sleeping(false);
      }
      wake_dispatcher();
    }
  }
  void spin_end() override {
    last_spin_ns = Clock::now().time_since_epoch().count();
    --spinners;
  }
  bool spinning_lately() const {
    return spinners.load() > 0 ||
           Clock::now().time_since_epoch().count() - last_spin_ns.load() < std::chrono::nanoseconds(kQuiet).count();
  }

  // ---- the dispatcher thread ---------------------------------------------
  void run() {
    Completions done;
    try {
      {
        std::lock_guard lock(mu);
        try {
          for (std::size_t i = 0; i < workers.size(); ++i) {
            workers[i] = start_worker(i);
            sched.worker_up(i);
          }
        } catch (...) {
          started = true;
          started_cv.notify_all();
          throw;
        }
        publish_pids();
        started = true;
        started_cv.notify_all();
        assign();
      }
      loop();
    } catch (...) {
      std::lock_guard lock(mu);
      broken = std::make_exception_ptr(
          BrokenPool(std::string("pool dispatcher failed: ") + capture_error(std::current_exception()).message));
      sched.fail_all(broken, done);
    }
    complete(done);
    stop_workers();
  }

  void loop() {
    epoll_event events[64];
    unsigned quick_looks = 0;
    for (;;) {
      Completions done;
      bool stop;
      int timeout_ms = 0;  // 0: look again at once
      {
        std::lock_guard lock(mu);
        collect(done, true);
        stop = finished(done);
        if (!stop && done.empty()) {
          // While waiters spin they read the results; check back soon
          // without doorbells. Otherwise sleep until one rings.
          if (spinning_lately()) timeout_ms = 1;
          else if (arm_doorbells()) timeout_ms = -1;
        }
      }
      complete(done);
      if (stop) return;
      // Looking again at once still visits the epoll now and then: a
      // sentinel (a death) must never wait behind a stream of results.
      if (timeout_ms == 0 && ++quick_looks < 16) continue;
      quick_looks = 0;
      int n = ::epoll_wait(epoll.get(), events, 64, timeout_ms);
      if (n < 0 && errno != EINTR) sys::throw_errno("epoll_wait");
      {
        std::lock_guard lock(mu);
        for (int i = 0; i < n; ++i) {
          const std::uint64_t key = events[i].data.u64;
          if (key == kWake) {
            std::uint64_t v;
            (void)::read(wake.get(), &v, sizeof v);
          } else if (key == kTimer) {
            on_timer(done);
          } else if (key != kResults && key < workers.size() && workers[key]) {
            on_death(key, done);
          }
        }
      }
      complete(done);
    }
  }

  void stop_workers() {
    std::unique_lock lock(mu);
    Completions done;
    sched.fail_all(broken ? broken : std::make_exception_ptr(BrokenPool("the pool was terminated")), done);
    auto list = std::move(workers);
    workers.clear();
    publish_pids();
    const bool kill_now = terminating;
    lock.unlock();
    complete(done);
    // Tell them all first, then reap: the workers exit side by side.
    for (auto& w : list) {
      if (!w) continue;
      if (kill_now) {
        w->proc.kill();
        continue;
      }
      try {
        w->conn.send(TaskBatch{{TaskMsg{kStop, {}}}});
      } catch (const Error&) {
      }
    }
    const auto grace = Clock::now() + std::chrono::seconds(2);
    for (auto& w : list) {
      if (!w) continue;
      if (!kill_now && !w->proc.join(std::max(Clock::duration::zero(), grace - Clock::now()))) w->proc.kill();
      w->proc.join();
    }
  }
};

Engine::Engine(EngineOptions options) : impl_(std::make_shared<Impl>(std::move(options))) {
  // Named segments whose creator died (SIGKILL) go when a pool starts, not at
  // some later create (docs/security.md).
  cleanup_leaked_segments();
  Impl& m = *impl_;
  m.config.initializer = m.opt.initializer;
  m.config.max_tasks = m.opt.max_tasks_per_child;
  m.config.max_memory = m.opt.max_memory_per_child;
  m.config.max_result = m.max_result();
  m.workers.resize(m.opt.workers);
  m.wake = sys::UniqueFd(sys::check(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK), "eventfd"));
  m.epoll = sys::UniqueFd(sys::check(::epoll_create1(EPOLL_CLOEXEC), "epoll_create1"));
  m.results = sys::UniqueFd(sys::check(::epoll_create1(EPOLL_CLOEXEC), "epoll_create1"));
  m.timer = sys::UniqueFd(sys::check(::timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK), "timerfd_create"));
  for (auto [fd, key] : {std::pair{m.wake.get(), kWake}, {m.timer.get(), kTimer}, {m.results.get(), kResults}}) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = key;
    sys::check(::epoll_ctl(m.epoll.get(), EPOLL_CTL_ADD, fd, &ev), "epoll_ctl");
  }
  m.thread = std::thread([&m] { m.run(); });
  // As Python's Pool(): the workers exist when the constructor returns.
  std::unique_lock lock(m.mu);
  m.started_cv.wait(lock, [&] { return m.started; });
}

Engine::~Engine() {
  try {
    shutdown(true, false);
  } catch (...) {
  }
}

std::shared_ptr<TaskState> Engine::submit(Call call, std::optional<std::chrono::nanoseconds> timeout) {
  Impl& m = *impl_;
  auto state = std::make_shared<TaskState>();
  state->id = m.next_id++;
  state->driver = impl_;
  std::lock_guard lock(m.mu);
  if (m.broken) std::rethrow_exception(m.broken);
  if (m.closing || m.terminating) throw Error("mproc: cannot submit a task after the pool was shut down");
  m.sched.enqueue(pool::Pending{.state = state, .call = std::move(call), .limit = timeout ? timeout : m.opt.task_timeout});
  m.assign();  // straight to an idle worker: no thread hop
  return state;
}

std::vector<std::shared_ptr<TaskState>> Engine::submit_many(std::vector<Call> calls,
                                                            std::optional<std::chrono::nanoseconds> timeout) {
  Impl& m = *impl_;
  std::vector<std::shared_ptr<TaskState>> states;
  states.reserve(calls.size());
  for (std::size_t i = 0; i < calls.size(); ++i) {
    auto state = std::make_shared<TaskState>();
    state->id = m.next_id++;
    state->driver = impl_;
    states.push_back(std::move(state));
  }
  std::lock_guard lock(m.mu);
  if (m.broken) std::rethrow_exception(m.broken);
  if (m.closing || m.terminating) throw Error("mproc: cannot submit a task after the pool was shut down");
  const auto limit = timeout ? timeout : m.opt.task_timeout;
  for (std::size_t i = 0; i < calls.size(); ++i)
    m.sched.enqueue(pool::Pending{.state = states[i], .call = std::move(calls[i]), .limit = limit});
  m.assign();
  return states;
}

void Engine::shutdown(bool wait, bool cancel_pending) {
  Impl& m = *impl_;
  {
    std::lock_guard lock(m.mu);
    m.closing = true;
    m.cancel_pending = m.cancel_pending || cancel_pending;
  }
  m.wake_dispatcher();
  if (wait) join();
}

void Engine::terminate() {
  Impl& m = *impl_;
  {
    std::lock_guard lock(m.mu);
    m.closing = m.terminating = true;
  }
  m.wake_dispatcher();
  join();
}

void Engine::join() {
  Impl& m = *impl_;
  std::lock_guard lock(m.join_mu);
  if (m.thread.joinable() && m.thread.get_id() != std::this_thread::get_id()) m.thread.join();
}

unsigned Engine::size() const noexcept { return impl_->opt.workers; }

std::vector<pid_t> Engine::worker_pids() const {
  std::lock_guard lock(impl_->mu);
  return impl_->pids;
}

std::size_t Engine::respawns() const noexcept { return impl_->respawn_count.load(); }

}  // namespace mproc::detail
