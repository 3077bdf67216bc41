// The scheduler core; the state machines are drawn in scheduler.hpp.
#include "pool/scheduler.hpp"

#include <algorithm>

namespace mproc::detail::pool {

void complete(Completions& done) {
  for (auto& c : done) {
    if (c.cancelled) c.state->cancel();
    else c.state->finish(std::move(c.result), std::move(c.error));
  }
  done.clear();
}

void Scheduler::settle(Completions& done, TaskHandle state, Bytes result, std::exception_ptr error,
                       bool cancelled) {
  done.push_back({std::move(state), std::move(result), std::move(error), cancelled});
}

Scheduler::Scheduler(Transport& transport, DepthRule rule, std::size_t workers)
    : transport_(transport), rule_(rule), slots_(workers), first_(workers) {}

// `tiny`: the depth for tiny tasks, from the queue's length when assign() began.
std::size_t Scheduler::depth(const Slot& s, std::size_t tiny) const {
  if (rule_.fixed != 0) return rule_.fixed;
  const double avg = rule_.per_worker ? s.avg_us : avg_task_us_;
  return avg < 0 || avg > rule_.short_task_us ? rule_.long_tasks : tiny;
}

// The head of a worker's flight is the task it runs (it runs them in
// order): its time and its deadline count from now.
void Scheduler::arm_head(Slot& s) {
  if (s.flight.empty()) return;
  auto& head = s.flight.front();
  if (head.started != Clock::time_point{}) return;
  head.started = Clock::now();
  if (head.task.limit) {
    head.deadline = head.started + *head.task.limit;
    deadlines_changed_ = true;
  }
}

void Scheduler::assign() {
  if (queue_.empty()) return;
  std::size_t live = 0;
  for (std::size_t i = 0; i < slots_.size(); ++i) {
    first_[i] = slots_[i].flight.size();
    live += slots_[i].phase == WorkerPhase::live;
  }
  const std::size_t tiny = std::clamp(queue_.size() / std::max<std::size_t>(1, live), rule_.tiny_min, rule_.tiny_max);
  // Each round gives one task to the least loaded worker: idle ones first.
  while (!queue_.empty()) {
    Slot* best = nullptr;
    for (auto& s : slots_)
      if (s.phase == WorkerPhase::live && s.flight.size() < depth(s, tiny) &&
          (!best || s.flight.size() < best->flight.size()))
        best = &s;
    if (!best) break;
    const std::size_t size = transport_.queued_size(queue_.front().call);
    if (!best->flight.empty() && best->queued_bytes + size > rule_.max_queued_bytes) break;
    Pending p = std::move(queue_.front());
    queue_.pop_front();
    if (!p.state->start_running()) continue;  // cancelled while queued: cancel() settled it
    if (!best->flight.empty()) best->queued_bytes += size;
    best->flight.push_back(InFlight{std::move(p)});
    ++in_flight_;
  }
  for (std::size_t i = 0; i < slots_.size(); ++i) {
    Slot& s = slots_[i];
    if (s.flight.size() == first_[i]) continue;
    transport_.send(i, s.flight, first_[i]);
    arm_head(s);
  }
}

void Scheduler::complete_head(WorkerId worker, Bytes result, std::exception_ptr error, Completions& done) {
  Slot& s = slots_[worker];
  // Timed from when it headed the flight; a task that never did (the one
  // after a doomed worker's abandoned head) says nothing of the time a task takes.
  if (const auto started = s.flight.front().started; started != Clock::time_point{}) {
    const double us = std::chrono::duration<double, std::micro>(Clock::now() - started).count();
    avg_task_us_ = avg_task_us_ < 0 ? us : 0.8 * avg_task_us_ + 0.2 * us;
    s.avg_us = s.avg_us < 0 ? us : 0.8 * s.avg_us + 0.2 * us;
  }
  ended(worker, s.flight.front(), error ? "error" : "ok");
  auto task = std::move(s.flight.front().task.state);
  s.flight.pop_front();
  --in_flight_;
  // The next task now runs: it no longer waits behind another.
  if (!s.flight.empty()) s.queued_bytes -= std::min(s.queued_bytes, transport_.queued_size(s.flight.front().task.call));
  arm_head(s);
  settle(done, std::move(task), std::move(result), std::move(error));
}

void Scheduler::cancel_queued(Completions& done) {
  for (auto& p : queue_) settle(done, std::move(p.state), {}, nullptr, true);
  queue_.clear();
}

void Scheduler::fail_all(const std::exception_ptr& error, Completions& done) {
  for (auto& p : queue_) settle(done, std::move(p.state), {}, error);
  queue_.clear();
  for (WorkerId w = 0; w < slots_.size(); ++w) {
    Slot& s = slots_[w];
    for (auto& f : s.flight) {
      ended(w, f, "failed");
      settle(done, std::move(f.task.state), {}, error);
    }
    s.flight.clear();
    s.queued_bytes = 0;
  }
  in_flight_ = 0;
}

void Scheduler::worker_up(WorkerId worker) {
  Slot& s = slots_[worker];
  s = Slot{};
  s.phase = WorkerPhase::live;
}

void Scheduler::worker_retiring(WorkerId worker) {
  Slot& s = slots_[worker];
  if (s.phase == WorkerPhase::live) s.phase = WorkerPhase::retiring;
}

void Scheduler::doom(WorkerId worker, std::size_t count, const ErrorFor& error, std::string_view outcome,
                     Completions& done) {
  Slot& s = slots_[worker];
  if (s.phase == WorkerPhase::doomed) return;
  s.phase = WorkerPhase::doomed;
  for (; count > 0 && !s.flight.empty(); --count) {
    ended(worker, s.flight.front(), outcome);
    auto head = std::move(s.flight.front());
    s.flight.pop_front();
    --in_flight_;
    s.abandoned = head.task.state->id;
    settle(done, std::move(head.task.state), {}, error(s.abandoned));
  }
}

void Scheduler::doom_head(WorkerId worker, const ErrorFor& error, Completions& done) {
  doom(worker, 1, error, "timed out", done);
}

void Scheduler::doom_through(WorkerId worker, std::uint64_t running, const ErrorFor& error, Completions& done) {
  Slot& s = slots_[worker];
  std::size_t count = 1;
  for (std::size_t i = 0; i < s.flight.size(); ++i)
    if (s.flight[i].task.state->id == running) count = i + 1;
  doom(worker, count, error, "worker fault", done);
}

void Scheduler::worker_died(WorkerId worker, std::uint64_t running, const ErrorFor& crashed, Completions& done) {
  Slot& s = slots_[worker];
  // A death nothing explains (no task of its flight running by its word, no
  // record saying it stops, not killed by the engine) counts against the
  // task at the front, which is blamed at the kMaxRequeues-th. A death that
  // blamed a task, or that the worker announced (retiring: recycled, or a
  // task broke its fds and was failed for it), counts against no other task.
  bool unexplained = false;
  if (s.phase != WorkerPhase::doomed && !s.flight.empty()) {
    // The task it said it ran (if still unanswered) killed it, and those
    // before it ran too, though their results are lost: a worker runs its
    // tasks in order. When it was between tasks nobody is to blame.
    auto end = std::find_if(s.flight.begin(), s.flight.end(),
                            [&](const InFlight& f) { return running != 0 && f.task.state->id == running; });
    if (end != s.flight.end()) ++end;
    else if (s.phase == WorkerPhase::retiring) end = s.flight.begin();
    else if (s.flight.front().task.requeues >= kMaxRequeues) end = s.flight.begin() + 1;
    else end = s.flight.begin(), unexplained = true;
    for (auto it = s.flight.begin(); it != end; ++it) {
      const std::uint64_t id = it->task.state->id;
      ended(worker, *it, "crashed");
      settle(done, std::move(it->task.state), {}, crashed(id));
    }
    in_flight_ -= static_cast<std::size_t>(end - s.flight.begin());
    s.flight.erase(s.flight.begin(), end);
  }
  // What is left never started: back to the front of the queue, in order.
  for (auto it = s.flight.rbegin(); it != s.flight.rend(); ++it) {
    it->task.state->phase = TaskPhase::pending;
    if (unexplained && it == s.flight.rend() - 1) ++it->task.requeues;
    queue_.push_front(std::move(it->task));
  }
  in_flight_ -= s.flight.size();
  s = Slot{};
}

void Scheduler::set_head_clock(WorkerId worker, Clock::time_point started, Clock::time_point deadline) {
  auto& f = slots_[worker].flight;
  if (f.empty()) return;
  f.front().started = started;
  f.front().deadline = deadline;
  deadlines_changed_ = true;
}

Clock::time_point Scheduler::earliest_deadline() const {
  auto next = Clock::time_point::max();
  for (auto& s : slots_)
    if (s.phase != WorkerPhase::doomed && !s.flight.empty()) next = std::min(next, s.flight.front().deadline);
  return next;
}

}  // namespace mproc::detail::pool
