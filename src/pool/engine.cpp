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
#include "pool/engine_impl.hpp"

#include <fmt/format.h>
#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <unistd.h>

namespace mproc::detail {

namespace {
// Run by a worker in place of a task whose arguments could not be encoded
// when sent (see Impl::encode_failed): its failure reaches the engine in
// order, as any task's, and the engine puts the real error in its place.
void encode_failed_entry(std::span<const std::byte>, Bytes&) {
  throw Error("mproc: this task's arguments could not be encoded when it was sent");
}
}  // namespace

static_assert(kLargePayloadBytes == TaskArena::kThreshold, "map's lazy chunks are those the arena takes");

Engine::Impl::Impl(EngineOptions o)
    : opt(with_workers(std::move(o))), encode_failed_call{entry_ref<&encode_failed_entry>(), {}, {}} {
  spares.reserve(kSpares);
}

void Engine::Impl::recycle(Bytes& bytes) noexcept {
  if (bytes.capacity() > kMaxSpare) return;
  std::lock_guard lock(spares_mu);
  if (spares.size() < kSpares) spares.push_back(std::move(bytes));
}

Bytes Engine::Impl::spare_for(std::size_t size) {
  std::lock_guard lock(spares_mu);
  for (std::size_t i = 0; i < spares.size(); ++i)
    if (spares[i].capacity() >= size) {
      Bytes b = std::move(spares[i]);
      spares.erase(spares.begin() + static_cast<std::ptrdiff_t>(i));
      return b;
    }
  return {};
}

TaskRef Engine::Impl::stage_lazy(TaskArena& arena, std::uint64_t id, Call& call) {
  const PayloadEncoder& encoder = *call.lazy;
  if (const std::size_t n = encoder.exact_size(); n >= TaskArena::kThreshold) {
    if (const auto off = arena.reserve_argument(id, n)) {
      encoder.write(arena.argument_data(*off));  // the one copy
      return TaskRef{id, &call, *off, n};
    }
  } else if (n == 0) {
    lazy_scratch.clear();
    encoder.encode(lazy_scratch);
    if (lazy_scratch.size() >= TaskArena::kThreshold)
      if (const auto off = arena.stage_argument(id, lazy_scratch)) return TaskRef{id, &call, *off, lazy_scratch.size()};
    call.payload.assign(lazy_scratch.begin(), lazy_scratch.end());
    return TaskRef{id, &call, std::nullopt, 0};
  }
  encoder.encode(call.payload);  // small, or no room in the arena now: inline (a resend uses it as it is)
  return TaskRef{id, &call, std::nullopt, 0};
}

void Engine::Impl::send(pool::WorkerId slot, std::deque<pool::InFlight>& flight, std::size_t first) {
  batch.refs.clear();
  TaskArena& arena = workers[slot]->arena;
  for (std::size_t k = first; k < flight.size(); ++k) {
    const std::uint64_t id = flight[k].task.state->id;
    Call& call = flight[k].task.call;
    TaskRef ref{id, &call, std::nullopt, 0};
    // Large: the socket carries a descriptor (the region is freed by this
    // task's result, on_result, or goes with the worker's arena). No room
    // now: inline, as a small one.
    if (call.lazy && call.payload.empty()) {
      try {
        ref = stage_lazy(arena, id, call);
      } catch (...) {
        // Settled by on_result, when the worker's failure of
        // encode_failed_call comes back (or by its death, as any task).
        encode_failed[id] = std::current_exception();
        ref = TaskRef{id, &encode_failed_call, std::nullopt, 0};
      }
    } else if (call.payload.size() >= TaskArena::kThreshold) {
      if (const auto off = arena.stage_argument(id, call.payload)) ref = TaskRef{id, &call, *off, call.payload.size()};
    }
    batch.refs.push_back(ref);
  }
  events.tasks_sent(slot, flight, first);
  try {
    workers[slot]->conn.send(batch);
  } catch (const Error&) {
  }
}

void Engine::Impl::arm_timer() {
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

void Engine::Impl::assign() {
  sched.assign();
  if (sched.take_deadlines_changed()) arm_timer();
}

void Engine::Impl::kill_doomed(std::size_t slot, bool was_doomed) {
  if (!was_doomed) workers[slot]->proc.kill();
}

void Engine::Impl::on_result(std::size_t slot, ResultMsg&& msg, Completions& done) {
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
  w.arena.release_argument(id);  // the worker is done with its argument
  std::exception_ptr encode_error;  // it ran encode_failed_call: this is its error
  if (!encode_failed.empty())
    if (auto it = encode_failed.find(id); it != encode_failed.end()) {
      encode_error = it->second;
      encode_failed.erase(it);
    }
  if (msg.bulk_len) {
    if (!msg.ok || msg.too_large || msg.fault || !msg.data.empty())
      throw ProtocolError(fmt::format("task {}: a result descriptor of {} bytes on a record that is not a plain "
                                      "result", id, msg.bulk_len));
    if (msg.bulk_len > max_result())
      throw ProtocolError(fmt::format("task {}: a result descriptor of {} bytes, over the pool's limit of {} bytes",
                                      id, msg.bulk_len, max_result()));
    const std::span<const std::byte> bytes = w.arena.result(msg.bulk_off, msg.bulk_len);  // checked bounds
    msg.data = spare_for(bytes.size());  // warm pages when a spare fits
    if (msg.data.capacity() < bytes.size()) {  // fresh memory: one batched prefault, not a fault per page
      msg.data.reserve(bytes.size());
      prefault_for_writing(msg.data.data(), bytes.size());
    }
    msg.data.assign(bytes.begin(), bytes.end());
    w.arena.result_consumed();
  }
  std::exception_ptr error;
  if (encode_error && !msg.fault) error = encode_error;
  else if (msg.too_large) error = std::make_exception_ptr(ResultTooLarge(id, msg.too_large, max_result()));
  else if (msg.fault)  // this task broke the worker's fds (it stops next)
    error = std::make_exception_ptr(WorkerFault::broken_by_task(
        id, w.pid, std::string(reinterpret_cast<const char*>(msg.data.data()), msg.data.size())));
  else if (!msg.ok) error = std::make_exception_ptr(to_remote_error(from_bytes<ErrorInfo>(msg.data)));
  ++w.records;
  if (msg.retiring) sched.worker_retiring(slot);
  if (error) sched.complete_head(slot, {}, std::move(error), done);
  else sched.complete_head(slot, std::move(msg.data), nullptr, done);
}

void Engine::Impl::drain_ring(std::size_t slot, Completions& done) {
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

void Engine::Impl::fault(std::size_t slot, const std::string& what, Completions& done) {
  Worker& w = *workers[slot];
  w.untrusted = true;
  w.partial = Bytes();
  const pid_t pid = w.pid;
  const bool was_doomed = sched.phase(slot) == WorkerPhase::doomed;
  if (!was_doomed) events.worker_fault(slot, what);
  sched.doom_through(
      slot, w.ring.running(), [&](std::uint64_t id) { return std::make_exception_ptr(WorkerFault(id, pid, what)); },
      done);
  kill_doomed(slot, was_doomed);
}

void Engine::Impl::collect(Completions& done, bool doorbells) {
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
  if (!encode_failed.empty() && sched.idle()) encode_failed.clear();  // their tasks ended otherwise (see send)
}

bool Engine::Impl::arm_doorbells() {
  for (auto& w : workers)
    if (w) w->ring.set_sleeping(true);
  doorbells_armed = true;
  for (auto& w : workers)
    if (w && !w->untrusted && !w->ring.empty()) return false;  // an untrusted ring is never read again
  return true;
}

void Engine::Impl::on_death(std::size_t slot, Completions& done) {
  Worker& w = *workers[slot];
  drain_ring(slot, done);
  w.proc.join();
  const int code = w.proc.exitcode().value_or(-1);
  const std::uint64_t running = w.untrusted ? 0 : w.ring.running();
  const pid_t pid = w.pid;
  events.worker_died(slot, code, running, sched.phase(slot) == WorkerPhase::retiring,
                     sched.phase(slot) == WorkerPhase::doomed);
  sched.worker_died(
      slot, running, [&](std::uint64_t id) { return std::make_exception_ptr(WorkerCrashed(id, pid, code)); }, done);
  replace(slot);
}

bool Engine::Impl::first_task_not_started(std::size_t slot, std::chrono::nanoseconds limit, Clock::time_point now) {
  constexpr auto kMaxStartup = std::chrono::seconds(60);
  Worker& w = *workers[slot];
  const pool::InFlight& head = *sched.head(slot);
  if (w.records != 0 || w.untrusted) return false;
  const auto look = std::clamp<std::chrono::nanoseconds>(limit / 10, std::chrono::milliseconds(1),
                                                         std::chrono::milliseconds(10));
  const bool pushed_back = head.deadline != head.started + limit;
  if (w.ring.running() != head.task.state->id) {
    if (now - head.started > kMaxStartup) return false;
    sched.set_head_clock(slot, head.started, now + look);
    return true;
  }
  if (!pushed_back) return false;
  sched.set_head_clock(slot, now, now + limit);  // it runs: its clock starts now (it started at most `look` ago)
  return true;
}

void Engine::Impl::on_timer(Completions& done) {
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
    events.task_timed_out(slot, sched.head(slot)->task.state->id, limit);
    sched.doom_head(
        slot, [&](std::uint64_t id) { return std::make_exception_ptr(TaskTimeout(id, pid, limit)); }, done);
    kill_doomed(slot, false);
  }
  arm_timer();
}

bool Engine::Impl::finished(Completions& done) {
  if (terminating || broken) return true;
  if (!closing) return false;
  if (cancel_pending) sched.cancel_queued(done);
  return sched.idle();
}

void Engine::Impl::poll() {
  std::unique_lock lock(mu, std::try_to_lock);
  if (!lock) return;
  Completions done;
  collect(done, false);
  lock.unlock();
  complete(done);
}

void Engine::Impl::spin_begin() {
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

void Engine::Impl::spin_end() {
  last_spin_ns = Clock::now().time_since_epoch().count();
  --spinners;
}

void Engine::Impl::run() {
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
  std::lock_guard lock(mu);
  events.close();  // the trace is complete once the pool has stopped
}

void Engine::Impl::loop() {
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

}  // namespace mproc::detail
