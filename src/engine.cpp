// The pool engine: one dispatcher thread per pool owns the workers.
//
//   submit() (any thread)          dispatcher thread                 workers
//   ─────────────────────          ─────────────────                 ───────
//   pending.push(task) ──wake──▶   assign: up to kDepth tasks ──TaskMsg──▶ run in order
//                                  per worker, in flight
//   Future::get() ◀──finish()───   results ◀─────────────────ResultMsg──  (+ retiring)
//                                  sentinel readable: the worker died →
//                                    its first in-flight task fails with
//                                    WorkerCrashed, the rest go back to
//                                    pending; a new worker takes its slot
//                                  timerfd: a head task past its deadline →
//                                    SIGKILL the worker, TaskTimeout
//
// Everything about workers happens on the dispatcher thread, so no lock
// guards them; `mu` guards only the pending queue and the flags.
#include "mproc/engine.hpp"

#include <fmt/format.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <atomic>
#include <deque>
#include <mutex>
#include <thread>

#include "pool_protocol.hpp"
#include "sys/fd.hpp"

namespace mproc::detail {

namespace {
using Clock = std::chrono::steady_clock;
constexpr std::size_t kDepth = 2;  // tasks in flight per worker
// A second task is queued behind a running one only when both directions
// then fit in the socket buffers: a large task sent while the worker is
// writing a large result would block both sides for good.
constexpr std::size_t kSmallPayload = 32 << 10;
// How long the dispatcher polls for results before sleeping while tasks are
// out: a trivial task's result comes within microseconds, and a wake-up
// across CPUs costs tens of them.
constexpr auto kSpin = std::chrono::microseconds(100);
constexpr std::uint64_t kWake = ~std::uint64_t{0};

struct Pending {
  std::shared_ptr<TaskState> state;
  Call call;
  std::optional<std::chrono::nanoseconds> limit;
};

struct InFlight {
  Pending task;
  Clock::time_point deadline = Clock::time_point::max();  // set when it heads the queue
};

struct Worker {
  Process proc;
  Connection conn;
  pid_t pid = 0;
  std::deque<InFlight> flight;
  bool retiring = false;  // told us it exits after its last result
  bool timed_out = false;
};
}  // namespace

struct Engine::Impl {
  EngineOptions opt;
  WorkerConfig config;

  std::mutex mu;
  std::deque<Pending> pending;
  std::atomic<std::size_t> pending_count{0};
  bool closing = false, cancel_pending = false, terminating = false;
  std::exception_ptr broken;
  std::atomic<bool> sleeping{false};
  std::atomic<bool> stopped{false};

  sys::UniqueFd wake, epoll, timer;
  std::vector<std::unique_ptr<Worker>> workers;  // dispatcher thread only
  std::atomic<std::size_t> respawn_count{0};
  std::atomic<std::uint64_t> next_id{1};
  unsigned worker_counter = 0;
  mutable std::mutex pids_mu;
  std::vector<pid_t> pids;
  std::thread thread;
  std::mutex join_mu;

  void notify() {
    if (sleeping.load()) {
      std::uint64_t one = 1;
      (void)::write(wake.get(), &one, sizeof one);
    }
  }

  // ---- workers ---------------------------------------------------------
  void watch(std::size_t slot, Worker& w) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = slot * 2;
    sys::check(::epoll_ctl(epoll.get(), EPOLL_CTL_ADD, w.conn.fileno(), &ev), "epoll_ctl(conn)");
    ev.data.u64 = slot * 2 + 1;
    sys::check(::epoll_ctl(epoll.get(), EPOLL_CTL_ADD, w.proc.sentinel(), &ev), "epoll_ctl(sentinel)");
  }

  std::unique_ptr<Worker> start_worker() {
    auto w = std::make_unique<Worker>();
    auto [mine, theirs] = Pipe(true);
    ProcessOptions po;
    po.name = fmt::format("{}-{}", opt.name, ++worker_counter);
    po.daemon = true;  // killed, not joined, if the engine is torn down
    po.start_method = opt.start_method;
    w->proc = Process(std::move(po), worker_main, std::move(theirs), config);
    w->proc.start();
    w->conn = std::move(mine);
    w->pid = w->proc.pid();
    return w;
  }

  void publish_pids() {
    std::lock_guard lock(pids_mu);
    pids.clear();
    for (auto& w : workers)
      if (w) pids.push_back(w->pid);
  }

  void unwatch(Worker& w) {
    ::epoll_ctl(epoll.get(), EPOLL_CTL_DEL, w.conn.fileno(), nullptr);
    ::epoll_ctl(epoll.get(), EPOLL_CTL_DEL, w.proc.sentinel(), nullptr);
  }

  void replace(std::size_t slot) {
    unwatch(*workers[slot]);
    workers[slot].reset();
    bool stop;
    {
      std::lock_guard lock(mu);
      stop = terminating || broken || (closing && pending.empty());
    }
    if (!stop) {
      workers[slot] = start_worker();
      watch(slot, *workers[slot]);
      ++respawn_count;
    }
    publish_pids();
  }

  // ---- tasks -------------------------------------------------------------
  void fail_all(std::exception_ptr error, bool running_too) {
    std::deque<Pending> drop;
    {
      std::lock_guard lock(mu);
      drop.swap(pending);
      pending_count = 0;
    }
    for (auto& p : drop) p.state->finish({}, error);
    if (!running_too) return;
    for (auto& w : workers)
      if (w)
        for (auto& f : w->flight) f.task.state->finish({}, error);
  }

  void arm_head(Worker& w) {
    if (w.flight.empty()) return;
    auto& head = w.flight.front();
    if (head.deadline == Clock::time_point::max() && head.task.limit)
      head.deadline = Clock::now() + *head.task.limit;
  }

  void assign() {
    for (auto& w : workers) {
      if (!w || w->retiring || w->timed_out) continue;
      while (w->flight.size() < kDepth) {
        Pending p;
        {
          std::lock_guard lock(mu);
          if (pending.empty()) return;
          if (!w->flight.empty() && pending.front().call.payload.size() > kSmallPayload) break;
          p = std::move(pending.front());
          pending.pop_front();
          --pending_count;
        }
        if (!p.state->start_running()) continue;  // cancelled while pending
        try {
          w->conn.send(TaskMsg{p.state->id, std::move(p.call)});
        } catch (const Error&) {
          // The worker is dying; its sentinel will tell. Requeue the task.
          p.state->phase = TaskPhase::pending;
          std::lock_guard lock(mu);
          pending.push_front(std::move(p));
          ++pending_count;
          break;
        }
        p.call = {};
        w->flight.push_back(InFlight{std::move(p)});
        arm_head(*w);
      }
    }
  }

  void on_result(Worker& w, ResultMsg&& msg) {
    if (msg.id == 0) {  // the initializer failed: no point respawning
      ErrorInfo info = from_bytes<ErrorInfo>(msg.data);
      auto error = std::make_exception_ptr(BrokenPool(fmt::format(
          "pool initializer failed in worker {}: {}: {}", w.pid, info.type_name, info.message)));
      {
        std::lock_guard lock(mu);
        broken = error;
      }
      fail_all(error, true);
      return;
    }
    if (msg.retiring) w.retiring = true;
    if (w.flight.empty() || w.flight.front().task.state->id != msg.id) return;  // already failed (timeout)
    auto task = std::move(w.flight.front().task.state);
    w.flight.pop_front();
    arm_head(w);
    if (msg.ok) {
      task->finish(std::move(msg.data), nullptr);
    } else {
      ErrorInfo info = from_bytes<ErrorInfo>(msg.data);
      task->finish({}, std::make_exception_ptr(to_remote_error(info)));
    }
  }

  void drain(Worker& w) {
    try {
      while (w.conn.poll()) on_result(w, w.conn.recv<ResultMsg>());
    } catch (const ConnectionClosed&) {
      // the worker is gone; its sentinel says how
    }
  }

  void on_death(std::size_t slot) {
    Worker& w = *workers[slot];
    drain(w);
    w.proc.join();
    const int code = w.proc.exitcode().value_or(-1);
    if (!w.flight.empty()) {
      // A recycled worker finished what it answered; the rest never started.
      auto head = std::move(w.flight.front());
      w.flight.pop_front();
      if (w.retiring) w.flight.push_front(std::move(head));
      else if (!w.timed_out)
        head.task.state->finish({}, std::make_exception_ptr(WorkerCrashed(head.task.state->id, w.pid, code)));
      // The rest never started: they go back to the front of the queue.
      std::lock_guard lock(mu);
      for (auto it = w.flight.rbegin(); it != w.flight.rend(); ++it) {
        it->task.state->phase = TaskPhase::pending;
        pending.push_front(std::move(it->task));
        ++pending_count;
      }
      w.flight.clear();
    }
    replace(slot);
  }

  void on_timer() {
    std::uint64_t ticks;
    (void)::read(timer.get(), &ticks, sizeof ticks);
    const auto now = Clock::now();
    for (auto& w : workers) {
      if (!w || w->timed_out || w->flight.empty() || w->flight.front().deadline > now) continue;
      auto& head = w->flight.front();
      w->timed_out = true;
      w->proc.kill();
      head.task.state->finish({}, std::make_exception_ptr(TaskTimeout(head.task.state->id, w->pid, *head.task.limit)));
    }
  }

  void arm_timer() {
    auto next = Clock::time_point::max();
    for (auto& w : workers)
      if (w && !w->timed_out && !w->flight.empty()) next = std::min(next, w->flight.front().deadline);
    itimerspec its{};
    if (next != Clock::time_point::max()) {
      auto ns = std::max<std::int64_t>(1, std::chrono::duration_cast<std::chrono::nanoseconds>(next - Clock::now()).count());
      its.it_value.tv_sec = ns / 1'000'000'000;
      its.it_value.tv_nsec = ns % 1'000'000'000;
    }
    ::timerfd_settime(timer.get(), 0, &its, nullptr);
  }

  bool busy() const {
    for (auto& w : workers)
      if (w && !w->flight.empty()) return true;
    return false;
  }

  bool finished() {
    std::lock_guard lock(mu);
    if (terminating || broken) return true;
    if (!closing) return false;
    if (cancel_pending) {
      for (auto& p : pending) p.state->cancel();
      pending.clear();
      pending_count = 0;
    }
    return pending.empty() && !busy();
  }

  // ---- the loop ------------------------------------------------------------
  void run() {
    try {
      for (std::size_t i = 0; i < workers.size(); ++i) {
        workers[i] = start_worker();
        watch(i, *workers[i]);
      }
      publish_pids();
      loop();
    } catch (...) {
      auto error = std::make_exception_ptr(
          BrokenPool(std::string("pool dispatcher failed: ") + capture_error(std::current_exception()).message));
      {
        std::lock_guard lock(mu);
        broken = error;
      }
      fail_all(error, true);
    }
    stop_workers();
    stopped = true;
  }

  void loop() {
    epoll_event events[64];
    for (;;) {
      assign();
      if (finished()) return;
      arm_timer();
      // Spin briefly while results are due: a trivial task comes back in
      // microseconds. Then sleep until something happens.
      int n = 0;
      if (busy()) {
        const auto until = Clock::now() + kSpin;
        do {
          n = ::epoll_wait(epoll.get(), events, 64, 0);
        } while (n == 0 && pending_count.load() == 0 && Clock::now() < until);
      }
      if (n == 0 && pending_count.load() == 0) {
        sleeping = true;
        if (pending_count.load() == 0) n = ::epoll_wait(epoll.get(), events, 64, -1);
        sleeping = false;
      }
      if (n < 0 && errno != EINTR) sys::throw_errno("epoll_wait");
      for (int i = 0; i < n; ++i) {
        const std::uint64_t key = events[i].data.u64;
        if (key == kWake) {
          std::uint64_t v;
          (void)::read(wake.get(), &v, sizeof v);
        } else if (key == kWake - 1) {
          on_timer();
        } else {
          const std::size_t slot = key / 2;
          if (slot >= workers.size() || !workers[slot]) continue;
          if (key % 2 == 0) drain(*workers[slot]);
          else on_death(slot);
        }
      }
    }
  }

  void stop_workers() {
    std::exception_ptr error;
    {
      std::lock_guard lock(mu);
      error = broken ? broken : std::make_exception_ptr(BrokenPool("the pool was terminated"));
    }
    fail_all(error, true);  // nothing should remain after a clean shutdown
    for (auto& w : workers) {
      if (!w) continue;
      if (!terminating) {
        try {
          w->conn.send(TaskMsg{kStop, {}});
        } catch (const Error&) {
        }
        if (!w->proc.join(std::chrono::seconds(2))) w->proc.kill();
      } else {
        w->proc.kill();
      }
      w->proc.join();
      w.reset();
    }
    publish_pids();
  }
};

Engine::Engine(EngineOptions options) : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  m.opt = std::move(options);
  if (m.opt.workers == 0) m.opt.workers = cpu_count();
  m.config.initializer = m.opt.initializer;
  m.config.max_tasks = m.opt.max_tasks_per_child;
  m.config.max_memory = m.opt.max_memory_per_child;
  m.workers.resize(m.opt.workers);
  m.wake = sys::UniqueFd(sys::check(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK), "eventfd"));
  m.epoll = sys::UniqueFd(sys::check(::epoll_create1(EPOLL_CLOEXEC), "epoll_create1"));
  m.timer = sys::UniqueFd(sys::check(::timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK), "timerfd_create"));
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = kWake;
  sys::check(::epoll_ctl(m.epoll.get(), EPOLL_CTL_ADD, m.wake.get(), &ev), "epoll_ctl(wake)");
  ev.data.u64 = kWake - 1;
  sys::check(::epoll_ctl(m.epoll.get(), EPOLL_CTL_ADD, m.timer.get(), &ev), "epoll_ctl(timer)");
  // Workers are started (and restarted) by the dispatcher thread: a child's
  // death signal follows the thread that forked it, and this one lives as
  // long as the pool.
  m.thread = std::thread([&m] { m.run(); });
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
  {
    std::lock_guard lock(m.mu);
    if (m.broken) std::rethrow_exception(m.broken);
    if (m.closing || m.terminating) throw Error("mproc: cannot submit a task after the pool was shut down");
    m.pending.push_back(Pending{state, std::move(call), timeout ? timeout : m.opt.task_timeout});
    ++m.pending_count;
  }
  m.notify();
  return state;
}

void Engine::shutdown(bool wait, bool cancel_pending) {
  Impl& m = *impl_;
  {
    std::lock_guard lock(m.mu);
    m.closing = true;
    m.cancel_pending = m.cancel_pending || cancel_pending;
  }
  std::uint64_t one = 1;
  (void)::write(m.wake.get(), &one, sizeof one);
  if (wait) join();
}

void Engine::terminate() {
  Impl& m = *impl_;
  {
    std::lock_guard lock(m.mu);
    m.closing = m.terminating = true;
  }
  std::uint64_t one = 1;
  (void)::write(m.wake.get(), &one, sizeof one);
  join();
}

void Engine::join() {
  Impl& m = *impl_;
  std::lock_guard lock(m.join_mu);
  if (m.thread.joinable() && m.thread.get_id() != std::this_thread::get_id()) m.thread.join();
}

unsigned Engine::size() const noexcept { return impl_->opt.workers; }

std::vector<pid_t> Engine::worker_pids() const {
  std::lock_guard lock(impl_->pids_mu);
  return impl_->pids;
}

std::size_t Engine::respawns() const noexcept { return impl_->respawn_count.load(); }

}  // namespace mproc::detail
