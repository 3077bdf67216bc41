#include "mproc/futures.hpp"

#include "pool/task_state.hpp"
#include "sys/clock.hpp"

#include <fmt/format.h>

#include <csignal>
#include <cstring>
#include <thread>

namespace mproc {

WorkerCrashed::WorkerCrashed(std::uint64_t task, pid_t pid, int exitcode)
    : Error(exitcode < 0 ? fmt::format("task {}: worker {} was killed by signal {} ({})", task, pid, -exitcode,
                                       ::strsignal(-exitcode))
                         : fmt::format("task {}: worker {} exited with status {} while running it", task, pid,
                                       exitcode)),
      task_(task), pid_(pid), exitcode_(exitcode) {}

WorkerCrashed::WorkerCrashed(const std::string& what, std::uint64_t task, pid_t pid, int exitcode)
    : Error(what), task_(task), pid_(pid), exitcode_(exitcode) {}

WorkerFault::WorkerFault(std::uint64_t task, pid_t pid, const std::string& what)
    : WorkerCrashed(fmt::format("task {}: worker {} broke the pool protocol and was killed: {}", task, pid, what), task,
                    pid, -SIGKILL) {}

ResultTooLarge::ResultTooLarge(std::uint64_t task, std::uint64_t size, std::uint64_t limit)
    : Error(fmt::format("task {}: its result is {} bytes, over the pool's limit of {} bytes "
                        "(PoolOptions::max_result_bytes)",
                        task, size, limit)),
      task_(task), size_(size), limit_(limit) {}

TaskTimeout::TaskTimeout(std::uint64_t task, pid_t pid, std::chrono::nanoseconds limit)
    : Error(fmt::format("task {}: ran past its {:.3f} s deadline; worker {} was killed", task,
                        std::chrono::duration<double>(limit).count(), pid)),
      task_(task), pid_(pid), limit_(limit) {}

namespace detail {

bool TaskState::start_running() {
  TaskPhase expect = TaskPhase::pending;
  return phase.compare_exchange_strong(expect, TaskPhase::running);
}

bool TaskState::cancel() {
  std::vector<std::function<void()>> cbs;
  {
    std::lock_guard lock(mu);
    TaskPhase expect = TaskPhase::pending;
    if (!phase.compare_exchange_strong(expect, TaskPhase::cancelled)) return expect == TaskPhase::cancelled;
    cbs.swap(callbacks);
  }
  cv.notify_all();
  for (auto& cb : cbs) cb();
  return true;
}

void TaskState::finish(Bytes r, std::exception_ptr e) {
  std::vector<std::function<void()>> cbs;
  {
    std::lock_guard lock(mu);
    if (finished()) return;  // cancelled meanwhile, or finished twice
    result = std::move(r);
    error = std::move(e);
    phase.store(TaskPhase::done, std::memory_order_release);
    cbs.swap(callbacks);
  }
  cv.notify_all();
  for (auto& cb : cbs) cb();
}

void TaskState::add_callback(std::function<void()> cb) {
  {
    std::lock_guard lock(mu);
    if (!finished()) {
      callbacks.push_back(std::move(cb));
      return;
    }
  }
  cb();
}

bool TaskState::wait_until(std::chrono::steady_clock::time_point deadline) {
  // A trivial task's result comes back in microseconds: spin a little,
  // reading results ourselves (driver), which saves two wake-ups — across
  // CPUs those cost tens of microseconds each.
  if (!finished()) {
    auto driver_ptr = driver.lock();
    if (driver_ptr) driver_ptr->spin_begin();
    const auto spin_until = std::min(deadline, std::chrono::steady_clock::now() + std::chrono::microseconds(200));
    while (!finished() && std::chrono::steady_clock::now() < spin_until) {
      if (driver_ptr) driver_ptr->poll();
      std::this_thread::yield();
    }
    if (driver_ptr) driver_ptr->spin_end();
  }
  if (finished()) return true;
  std::unique_lock lock(mu);
  if (deadline == std::chrono::steady_clock::time_point::max()) {
    cv.wait(lock, [&] { return finished(); });
    return true;
  }
  return cv.wait_until(lock, deadline, [&] { return finished(); });
}

void TaskState::wait() { wait_until(std::chrono::steady_clock::time_point::max()); }

// ---- FutureCore: the templates' only way into a TaskState -----------------

TaskState& FutureCore::state() const {
  if (!s_) throw ValueError("mproc::Future: no state (default-constructed)");
  return *s_;
}

std::uint64_t FutureCore::id() const { return state().id; }
bool FutureCore::done() const { return state().finished(); }
bool FutureCore::running() const { return state().phase.load() == TaskPhase::running; }
bool FutureCore::cancelled() const { return state().phase.load() == TaskPhase::cancelled; }
bool FutureCore::cancel() const { return state().cancel(); }
void FutureCore::wait() const { state().wait(); }
bool FutureCore::wait_until(Deadline deadline) const {
  return state().wait_until(sys::to_time_point(deadline));
}

std::exception_ptr FutureCore::exception(Deadline deadline) const {
  auto& s = state();
  if (!s.wait_until(sys::to_time_point(deadline))) throw TimeoutError("Future::exception: timed out");
  return error_if_done();
}

std::exception_ptr FutureCore::error_if_done() const {
  auto& s = state();
  const TaskPhase phase = s.phase.load(std::memory_order_acquire);
  if (phase == TaskPhase::cancelled)
    return std::make_exception_ptr(CancelledError("task " + std::to_string(s.id) + " was cancelled"));
  if (phase != TaskPhase::done) return nullptr;
  std::lock_guard lock(s.mu);
  return s.error;
}

const Bytes& FutureCore::result_bytes() const { return state().result; }

void FutureCore::add_callback(std::function<void()> cb) const { state().add_callback(std::move(cb)); }

void CompletionQueue::push(std::size_t index) {
  {
    std::lock_guard lock(mu_);
    ready_.push_back(index);
  }
  cv_.notify_all();
}

std::optional<std::size_t> CompletionQueue::pop(Deadline until) {
  const auto deadline = sys::to_time_point(until);
  std::unique_lock lock(mu_);
  if (until.is_forever()) cv_.wait(lock, [&] { return !ready_.empty(); });
  else if (!cv_.wait_until(lock, deadline, [&] { return !ready_.empty(); })) return std::nullopt;
  std::size_t i = ready_.front();
  ready_.erase(ready_.begin());
  return i;
}

}  // namespace detail
}  // namespace mproc
