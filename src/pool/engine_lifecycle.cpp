// The local pool engine's workers (start, replacement, stop) and the Engine
// API: construction, submit, shutdown, terminate. The dispatcher is in
// engine.cpp; engine_impl.hpp holds the state both share.
#include "pool/engine_impl.hpp"

#include <fmt/format.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <unistd.h>

namespace mproc::detail {

std::unique_ptr<Worker> Engine::Impl::start_worker(std::size_t slot) {
  auto w = std::make_unique<Worker>();
  auto [mine, theirs] = Pipe(true);
  w->ring = ResultRing::create();
  w->arena = TaskArena::create();
  w->bell = sys::UniqueFd(sys::check(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK), "eventfd(doorbell)"));
  ProcessOptions po;
  po.name = fmt::format("{}-{}", opt.name, ++worker_counter);
  po.daemon = true;  // killed, not joined, if the engine is torn down
  po.start_method = opt.start_method;
  w->proc = Process(std::move(po), worker_main, std::move(theirs), config, PassedFd{w->ring.fd()},
                    PassedFd{w->bell.get()}, PassedFd{w->arena.fd()});
  w->proc.start();
  w->conn = std::move(mine);
  w->pid = w->proc.pid();
  events.worker_started(slot, w->pid, w->proc.name(), worker_counter > opt.workers);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = slot;
  sys::check(::epoll_ctl(results.get(), EPOLL_CTL_ADD, w->bell.get(), &ev), "epoll_ctl(doorbell)");
  sys::check(::epoll_ctl(epoll.get(), EPOLL_CTL_ADD, w->proc.sentinel(), &ev), "epoll_ctl(sentinel)");
  return w;
}

void Engine::Impl::publish_pids() {
  pids.clear();
  for (auto& w : workers)
    if (w) pids.push_back(w->pid);
}

void Engine::Impl::replace(std::size_t slot) {
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

void Engine::Impl::stop_workers() {
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

Engine::Engine(EngineOptions options) : impl_(std::make_shared<Impl>(std::move(options))) {
  // Named segments whose creator died (SIGKILL) go when a pool starts, not at
  // some later create (docs/security.md).
  cleanup_leaked_segments();
  Impl& m = *impl_;
  m.sched.set_observer(&m.events);
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

namespace {
// A task's limit: its own timeout, else the pool's; none when both are empty.
std::optional<std::chrono::nanoseconds> task_limit(Timeout own, Timeout pool) {
  const Timeout t = own ? own : pool;
  if (!t) return std::nullopt;
  return std::chrono::nanoseconds(t.nanoseconds());
}
}  // namespace

TaskHandle Engine::submit(Call call, Timeout timeout) {
  Impl& m = *impl_;
  auto state = TaskHandle::make();
  state->id = m.next_id++;
  state->driver = impl_;
  std::lock_guard lock(m.mu);
  if (m.broken) std::rethrow_exception(m.broken);
  if (m.closing || m.terminating) throw ValueError("mproc: cannot submit a task after the pool was shut down (Pool not running)");
  m.sched.enqueue(pool::Pending{.state = state, .call = std::move(call), .limit = task_limit(timeout, m.opt.task_timeout)});
  m.assign();  // straight to an idle worker: no thread hop
  return state;
}

std::vector<TaskHandle> Engine::submit_many(std::vector<Call> calls, Timeout timeout) {
  Impl& m = *impl_;
  std::vector<TaskHandle> states;
  states.reserve(calls.size());
  for (std::size_t i = 0; i < calls.size(); ++i) {
    auto state = TaskHandle::make();
    state->id = m.next_id++;
    state->driver = impl_;
    states.push_back(std::move(state));
  }
  std::lock_guard lock(m.mu);
  if (m.broken) std::rethrow_exception(m.broken);
  if (m.closing || m.terminating) throw ValueError("mproc: cannot submit a task after the pool was shut down (Pool not running)");
  const auto limit = task_limit(timeout, m.opt.task_timeout);
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
