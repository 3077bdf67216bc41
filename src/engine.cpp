// The pool engine: workers, the tasks in flight on each, respawn, deadlines,
// recycling. One mutex guards all of it; three kinds of thread take it.
//
//   submit() (any thread)                                      workers
//   ─────────────────────                                      ───────
//   pending.push(task); assign ──────TaskMsg (socket)────────▶ run tasks in
//     (up to kDepth tasks in flight per worker)                 order, spin
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
// A task's and a worker's states: engine_state.hpp.
// Futures are finished after the mutex is released, so a done-callback may
// submit again.
//
// One worker's misbehaviour is that worker's death, never the pool's: a
// malformed record, a result for a task it does not run, a result over the
// limit make it `doomed` (killed; its running task fails with WorkerFault).
#include "mproc/engine.hpp"

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
// Tasks in flight per worker: two, so a worker never waits for its next
// task; up to kMaxDepth when many are pending (a map of tiny tasks), so
// they travel in batches.
constexpr std::size_t kDepth = 2, kMaxDepth = 32;
constexpr double kShortTaskUs = 1000;  // "tiny" tasks: under a millisecond on average
constexpr auto kQuiet = std::chrono::milliseconds(1);  // no waiter spun for this long: doorbells on
// More is queued behind a running task only while the queued payloads fit
// in the socket buffer: a large task sent while the worker is writing a
// large result would block both sides for good.
constexpr std::size_t kQueuedBytes = 32 << 10;
constexpr std::uint64_t kWake = ~std::uint64_t{0}, kTimer = kWake - 1, kResults = kWake - 2;

}  // namespace

using namespace engine_state;

struct Engine::Impl : Progress {
  EngineOptions opt;
  WorkerConfig config;

  std::mutex mu;  // everything below, but the atomics and the fds
  std::deque<Pending> pending;
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
  double avg_task_us = -1;         // under mu; -1 until a task has finished
  bool timer_dirty = false;        // under mu: a head got a deadline since the timer was set
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

  bool stopping() const { return terminating || broken || (closing && pending.empty()); }

  void replace(std::size_t slot) {
    Worker& w = *workers[slot];
    ::epoll_ctl(results.get(), EPOLL_CTL_DEL, w.bell.get(), nullptr);
    ::epoll_ctl(epoll.get(), EPOLL_CTL_DEL, w.proc.sentinel(), nullptr);
    workers[slot].reset();
    if (!stopping()) {
      workers[slot] = start_worker(slot);
      ++respawn_count;
    }
    publish_pids();
  }

  // ---- tasks (under mu) ----------------------------------------------------
  void fail_all(const std::exception_ptr& error, Completions& done) {
    for (auto& p : pending) settle(done, std::move(p.state), {}, error);
    pending.clear();
    for (auto& w : workers)
      if (w) {
        for (auto& f : w->flight) settle(done, std::move(f.task.state), {}, error);
        w->flight.clear();
      }
  }

  // The head of a worker's queue is the task it runs (it runs them in
  // order): its deadline counts from now. The timer is set again before mu
  // is released (assign, on_timer), wherever the head changed.
  void arm_head(Worker& w) {
    if (w.flight.empty()) return;
    auto& head = w.flight.front();
    if (head.started != Clock::time_point{}) return;
    head.started = Clock::now();
    if (head.task.limit) {
      head.deadline = head.started + *head.task.limit;
      timer_dirty = true;
    }
  }

  void arm_timer() {
    timer_dirty = false;
    auto next = Clock::time_point::max();
    for (auto& w : workers)
      if (w && !w->doomed && !w->flight.empty()) next = std::min(next, w->flight.front().deadline);
    itimerspec its{};
    if (next != Clock::time_point::max()) {
      auto ns = std::max<std::int64_t>(1, std::chrono::duration_cast<std::chrono::nanoseconds>(next - Clock::now()).count());
      its.it_value.tv_sec = ns / 1'000'000'000;
      its.it_value.tv_nsec = ns % 1'000'000'000;
    }
    ::timerfd_settime(timer.get(), 0, &its, nullptr);
  }

  // How many tasks a worker may hold: one while tasks are long (so the
  // others stay cancellable and go to whichever worker frees first, as
  // Python's executor does); for tiny tasks, more as the queue grows, so they
  // travel in batches.
  std::size_t depth(std::size_t live) const {
    if (avg_task_us < 0 || avg_task_us > kShortTaskUs) return 1;
    return std::clamp(pending.size() / std::max<std::size_t>(1, live), kDepth, kMaxDepth);
  }

  void assign() {
    hand_out();
    if (timer_dirty) arm_timer();
  }

  void hand_out() {
    if (pending.empty()) return;
    std::size_t live = 0;
    for (auto& w : workers) live += w && !w->retiring && !w->doomed;
    const std::size_t limit = depth(live);
    // Each round gives one task to the least loaded worker: idle ones first.
    std::vector<std::size_t> first(workers.size());
    for (std::size_t i = 0; i < workers.size(); ++i) first[i] = workers[i] ? workers[i]->flight.size() : 0;
    while (!pending.empty()) {
      Worker* best = nullptr;
      for (auto& w : workers)
        if (w && !w->retiring && !w->doomed && w->flight.size() < limit &&
            (!best || w->flight.size() < best->flight.size()))
          best = w.get();
      if (!best) break;
      const std::size_t size = pending.front().call.payload.size();
      if (!best->flight.empty() && best->queued_bytes + size > kQueuedBytes) break;
      Pending p = std::move(pending.front());
      pending.pop_front();
      if (!p.state->start_running()) continue;  // cancelled while pending
      if (!best->flight.empty()) best->queued_bytes += size;
      best->flight.push_back(InFlight{std::move(p)});
    }
    TaskBatch batch;
    for (std::size_t i = 0; i < workers.size(); ++i) {
      Worker* w = workers[i].get();
      if (!w || w->flight.size() == first[i]) continue;
      batch.refs.clear();
      for (std::size_t k = first[i]; k < w->flight.size(); ++k)
        batch.refs.emplace_back(w->flight[k].task.state->id, &w->flight[k].task.call);
      try {
        w->conn.send(batch);
      } catch (const Error&) {
        // The worker is dying; its sentinel will tell, and on_death puts
        // what never started back in the queue.
      }
      arm_head(*w);
    }
  }

  // Throws ProtocolError for a record this worker had no business sending
  // (drain_ring makes it the worker's fault), before changing anything.
  void on_result(Worker& w, ResultMsg&& msg, Completions& done) {
    if (msg.id == kStop) {  // a task broke its fds, its result out already: it stops, no task to blame
      w.retiring = true;
      return;
    }
    if (msg.id == 0) {  // the initializer failed: no point respawning
      if (w.records != 0) throw ProtocolError("an initializer's failure after its results");
      ErrorInfo info = from_bytes<ErrorInfo>(msg.data);
      broken = std::make_exception_ptr(BrokenPool(
          fmt::format("pool initializer failed in worker {}: {}: {}", w.pid, info.type_name, info.message)));
      fail_all(broken, done);
      return;
    }
    if (w.flight.empty() || w.flight.front().task.state->id != msg.id) {
      if (msg.id == w.abandoned) return;  // its deadline fired first: settled already
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
    if (msg.retiring) w.retiring = true;
    const double us = std::chrono::duration<double, std::micro>(Clock::now() - w.flight.front().started).count();
    avg_task_us = avg_task_us < 0 ? us : 0.8 * avg_task_us + 0.2 * us;
    auto task = std::move(w.flight.front().task.state);
    w.flight.pop_front();
    // The next task now runs: it no longer waits in the socket.
    if (!w.flight.empty()) w.queued_bytes -= std::min(w.queued_bytes, w.flight.front().task.call.payload.size());
    arm_head(w);
    if (error) settle(done, std::move(task), {}, std::move(error));
    else settle(done, std::move(task), std::move(msg.data), nullptr);
  }

  std::uint64_t max_result() const {
    return opt.max_result_bytes ? opt.max_result_bytes : Connection::kDefaultMaxMessageSize;
  }

  // Results in the ring, in order; never blocks. Anything malformed is the
  // worker's fault: the results before it were delivered, it dies.
  void drain_ring(Worker& w, Completions& done) {
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
          on_result(w, from_bytes<ResultMsg>(w.partial), done);
          w.partial = Bytes();
          continue;
        }
        on_result(w, from_bytes<ResultMsg>(rec), done);
        if (broken) return;
      }
    } catch (const std::exception& e) {
      fault(w, e.what(), done);
    }
  }

  // The engine kills a worker: the first `count` tasks of its queue (the one
  // it runs, and for a fault those before it whose results are lost) are
  // settled now with `error`, so its death blames nothing more; a late
  // result of the last of them is ignored.
  void doom(Worker& w, std::size_t count, const std::function<std::exception_ptr(std::uint64_t)>& error,
            Completions& done) {
    if (w.doomed) return;
    w.doomed = true;
    for (; count > 0 && !w.flight.empty(); --count) {
      auto head = std::move(w.flight.front());
      w.flight.pop_front();
      w.abandoned = head.task.state->id;
      settle(done, std::move(head.task.state), {}, error(w.abandoned));
    }
    w.proc.kill();
  }

  // A malformed record: the worker cannot be trusted any more, and dies. The
  // task it says it runs fails, and any before it, whose results cannot be
  // read any more (a task that overwrote its ring took them along); if it
  // names no task of its queue, the head fails (its result is the one that
  // is malformed). Those after it never started: they run elsewhere.
  void fault(Worker& w, const std::string& what, Completions& done) {
    w.untrusted = true;
    w.partial = Bytes();
    const std::uint64_t running = w.ring.running();
    std::size_t count = 1;
    for (std::size_t i = 0; i < w.flight.size(); ++i)
      if (w.flight[i].task.state->id == running) count = i + 1;
    const pid_t pid = w.pid;
    doom(w, count, [&](std::uint64_t id) { return std::make_exception_ptr(WorkerFault(id, pid, what)); }, done);
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
    for (auto& w : workers)
      if (w) drain_ring(*w, done);
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

  void on_death(std::size_t slot, Completions& done) {
    Worker& w = *workers[slot];
    drain_ring(w, done);  // what it finished before dying is delivered
    w.proc.join();
    const int code = w.proc.exitcode().value_or(-1);
    // A death nothing explains (no task of its queue running by its ring, no
    // record saying it stops, not killed by us) counts against the task at
    // the front, which is blamed at the kMaxRequeues-th (engine_state.hpp).
    // A death that blamed a task, or that the worker announced, counts
    // against no other task.
    bool unexplained = false;
    if (!w.doomed && !w.flight.empty()) {
      // The task it said it ran (if still unanswered) killed it, and those
      // before it ran too, though their results are lost: a worker runs its
      // tasks in order. When it was between tasks nobody is to blame.
      const std::uint64_t running = w.untrusted ? 0 : w.ring.running();
      auto end = std::find_if(w.flight.begin(), w.flight.end(),
                              [&](const InFlight& f) { return f.task.state->id == running; });
      if (end != w.flight.end()) ++end;
      else if (w.retiring) end = w.flight.begin();  // it said it stops (recycled, or broken fds)
      else if (w.flight.front().task.requeues >= kMaxRequeues) end = w.flight.begin() + 1;
      else end = w.flight.begin(), unexplained = true;
      for (auto it = w.flight.begin(); it != end; ++it) {
        const std::uint64_t id = it->task.state->id;
        settle(done, std::move(it->task.state), {}, std::make_exception_ptr(WorkerCrashed(id, w.pid, code)));
      }
      w.flight.erase(w.flight.begin(), end);
    }
    // What is left never started: back to the front of the queue, in order.
    for (auto it = w.flight.rbegin(); it != w.flight.rend(); ++it) {
      it->task.state->phase = TaskPhase::pending;
      if (unexplained && it == w.flight.rend() - 1) ++it->task.requeues;
      pending.push_front(std::move(it->task));
    }
    w.flight.clear();
    replace(slot);
  }

  // A fresh worker's first task: its deadline counts from when it runs, not
  // from when it was sent: the worker's start-up (and initializer) is not the
  // task's time, and takes seconds on a loaded machine. Until the worker's
  // ring says it runs it, its deadline is pushed back by `look` at a time;
  // once it runs, it counts from the look that found it running (late by at
  // most `look`, never early). `deadline != started + limit` marks a
  // pushed-back deadline. Never past kMaxStartup after it was sent: a ring is
  // the worker's word, and a task may have scribbled it.
  bool first_task_not_started(Worker& w, std::chrono::nanoseconds limit, Clock::time_point now) {
    constexpr auto kMaxStartup = std::chrono::seconds(60);
    auto& head = w.flight.front();
    if (w.records != 0 || w.untrusted) return false;
    const auto look = std::clamp<std::chrono::nanoseconds>(limit / 10, std::chrono::milliseconds(1),
                                                           std::chrono::milliseconds(10));
    const bool pushed_back = head.deadline != head.started + limit;
    if (w.ring.running() != head.task.state->id) {
      if (now - head.started > kMaxStartup) return false;
      head.deadline = now + look;
      timer_dirty = true;
      return true;
    }
    if (!pushed_back) return false;
    head.started = now;  // it runs: its clock starts now (it started at most `look` ago)
    head.deadline = head.started + limit;
    timer_dirty = true;
    return head.deadline > now;
  }

  void on_timer(Completions& done) {
    std::uint64_t ticks;
    (void)::read(timer.get(), &ticks, sizeof ticks);
    const auto now = Clock::now();
    for (auto& w : workers) {
      if (!w || w->doomed || w->flight.empty() || w->flight.front().deadline > now) continue;
      drain_ring(*w, done);  // a result that raced its deadline is delivered, not lost
      if (w->doomed || w->flight.empty() || w->flight.front().deadline > now) continue;
      const auto limit = *w->flight.front().task.limit;
      if (first_task_not_started(*w, limit, now)) continue;
      const pid_t pid = w->pid;
      doom(*w, 1, [&](std::uint64_t id) { return std::make_exception_ptr(TaskTimeout(id, pid, limit)); }, done);
    }
    arm_timer();
  }

  bool busy() const {
    for (auto& w : workers)
      if (w && !w->flight.empty()) return true;
    return false;
  }

  // Under mu. Tasks cancelled by shutdown(cancel_futures) are moved to
  // `cancelled`, to be cancelled once mu is released (callbacks may submit).
  bool finished(std::vector<std::shared_ptr<TaskState>>& cancelled) {
    if (terminating || broken) return true;
    if (!closing) return false;
    if (cancel_pending) {
      for (auto& p : pending) cancelled.push_back(std::move(p.state));
      pending.clear();
    }
    return pending.empty() && !busy();
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
          for (std::size_t i = 0; i < workers.size(); ++i) workers[i] = start_worker(i);
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
      fail_all(broken, done);
    }
    complete(done);
    stop_workers();
  }

  void loop() {
    epoll_event events[64];
    unsigned quick_looks = 0;
    for (;;) {
      Completions done;
      std::vector<std::shared_ptr<TaskState>> cancelled;
      bool stop;
      int timeout_ms = 0;  // 0: look again at once
      {
        std::lock_guard lock(mu);
        collect(done, true);
        stop = finished(cancelled);
        if (!stop && done.empty()) {
          // While waiters spin they read the results; check back soon
          // without doorbells. Otherwise sleep until one rings.
          if (spinning_lately()) timeout_ms = 1;
          else if (arm_doorbells()) timeout_ms = -1;
        }
      }
      complete(done);
      for (auto& c : cancelled) c->cancel();
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
    fail_all(broken ? broken : std::make_exception_ptr(BrokenPool("the pool was terminated")), done);
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

Engine::Engine(EngineOptions options) : impl_(std::make_shared<Impl>()) {
  // Named segments whose creator died (SIGKILL) go when a pool starts, not at
  // some later create (docs/security.md).
  cleanup_leaked_segments();
  Impl& m = *impl_;
  m.opt = std::move(options);
  if (m.opt.workers == 0) m.opt.workers = cpu_count();
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
  m.pending.push_back(Pending{state, std::move(call), timeout ? timeout : m.opt.task_timeout});
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
  for (std::size_t i = 0; i < calls.size(); ++i) m.pending.push_back(Pending{states[i], std::move(calls[i]), limit});
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
