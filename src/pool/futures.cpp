#include "mproc/futures.hpp"

#include "pool/task_state.hpp"
#include "sys/clock.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstring>
#include <functional>
#include <mutex>
#include <thread>

#include "mproc/pool.hpp"

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

WorkerFault WorkerFault::broken_by_task(std::uint64_t task, pid_t pid, const std::string& what) {
  // The worker stops by throwing out of its target: exit status 1.
  return WorkerFault(fmt::format("task {}: it broke its pool worker {}: {}", task, pid, what), task, pid, 1);
}

ResultTooLarge::ResultTooLarge(std::uint64_t task, std::uint64_t size, std::uint64_t limit)
    : Error(fmt::format("task {}: its result is {} bytes, over the pool's limit of {} bytes "
                        "(PoolOptions::max_result_bytes)",
                        task, size, limit)),
      task_(task), size_(size), limit_(limit) {}

TaskTimeout::TaskTimeout(std::uint64_t task, pid_t pid, Timeout limit)
    : Error(fmt::format("task {}: ran past its {:.3f} s deadline; worker {} was killed", task,
                        static_cast<double>(limit.nanoseconds()) / 1e9, pid)),
      task_(task), pid_(pid), limit_(limit) {}

namespace detail {

bool TaskState::start_running() {
  TaskPhase expect = TaskPhase::pending;
  return phase.compare_exchange_strong(expect, TaskPhase::running);
}

bool TaskState::cancel() {
  std::vector<TaskCallback> cbs;
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
  std::vector<TaskCallback> cbs;
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

void TaskState::add_callback(TaskCallback cb) {
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

void destroy_task_state(TaskStateBase* state) noexcept { delete static_cast<TaskState*>(state); }

namespace {
TaskState& state_of(TaskStateBase* s) {
  if (!s) throw ValueError("mproc::Future: no state (default-constructed)");
  return *static_cast<TaskState*>(s);
}
}  // namespace

std::uint64_t FutureCore::id() const { return state_of(s_).id; }
bool FutureCore::done() const { return state_of(s_).finished(); }
bool FutureCore::running() const { return state_of(s_).phase.load() == TaskPhase::running; }
bool FutureCore::cancelled() const { return state_of(s_).phase.load() == TaskPhase::cancelled; }
bool FutureCore::cancel() const { return state_of(s_).cancel(); }
void FutureCore::wait() const { state_of(s_).wait(); }
bool FutureCore::wait_until(Deadline deadline) const {
  return state_of(s_).wait_until(sys::to_time_point(deadline));
}

std::exception_ptr FutureCore::exception(Deadline deadline) const {
  auto& s = state_of(s_);
  if (!s.wait_until(sys::to_time_point(deadline))) throw TimeoutError("Future::exception: timed out");
  return error_if_done();
}

std::exception_ptr FutureCore::error_if_done() const {
  auto& s = state_of(s_);
  const TaskPhase phase = s.phase.load(std::memory_order_acquire);
  if (phase == TaskPhase::cancelled)
    return std::make_exception_ptr(CancelledError("task " + std::to_string(s.id) + " was cancelled"));
  if (phase != TaskPhase::done) return nullptr;
  std::lock_guard lock(s.mu);
  return s.error;
}

const Bytes& FutureCore::result_bytes() const { return state_of(s_).result; }

void FutureCore::add_callback(TaskCallback cb) const { state_of(s_).add_callback(std::move(cb)); }

// ---- CompletionQueue -------------------------------------------------------

// Shared by the handles and the callbacks that push into it.
struct CompletionQueue::Impl {
  long refs = 1;  // atomic builtins: handles and callbacks drop it in any thread
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::size_t> ready;  // completed indices, oldest first
  std::size_t head = 0;            // ready[head..] not popped yet
};

CompletionQueue::CompletionQueue() : p_(new Impl) {}
CompletionQueue::CompletionQueue(const CompletionQueue& o) noexcept : p_(o.p_) {
  __atomic_add_fetch(&p_->refs, 1, __ATOMIC_RELAXED);  // from a live handle: no ordering needed
}
CompletionQueue::~CompletionQueue() {
  if (__atomic_sub_fetch(&p_->refs, 1, __ATOMIC_ACQ_REL) == 0) delete p_;
}

void CompletionQueue::push(std::size_t index) const {
  {
    std::lock_guard lock(p_->mu);
    p_->ready.push_back(index);
  }
  p_->cv.notify_all();
}

void CompletionQueue::push_when_done(const FutureCore& core, std::size_t index) const {
  core.add_callback([q = *this, index] { q.push(index); });
}

std::optional<std::size_t> CompletionQueue::pop(Deadline until) const {
  Impl& q = *p_;
  const auto deadline = sys::to_time_point(until);
  std::unique_lock lock(q.mu);
  auto ready = [&] { return q.head < q.ready.size(); };
  if (until.is_forever()) q.cv.wait(lock, ready);
  else if (!q.cv.wait_until(lock, deadline, ready)) return std::nullopt;
  const std::size_t i = q.ready[q.head++];
  if (q.head == q.ready.size()) {  // all popped: start over (no erase from the front)
    q.ready.clear();
    q.head = 0;
  }
  return i;
}

std::vector<std::size_t> first_occurrences(const std::vector<const void*>& ids) {
  std::vector<std::size_t> order(ids.size());
  for (std::size_t i = 0; i < ids.size(); ++i) order[i] = i;
  // By id, then by position: within one id, the first position comes first.
  // (Not std::stable_sort: libstdc++ 12's temporary buffer is allocated with
  // operator new and returned in a way ASan reports as a new/free mismatch.)
  std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    if (ids[a] != ids[b]) return std::less<const void*>{}(ids[a], ids[b]);
    return a < b;
  });
  std::vector<std::size_t> keep;
  keep.reserve(ids.size());
  for (std::size_t k = 0; k < order.size(); ++k)
    if (k == 0 || ids[order[k]] != ids[order[k - 1]]) keep.push_back(order[k]);
  std::sort(keep.begin(), keep.end());
  return keep;
}

// ---- AsyncCore (pool.hpp's AsyncResult) -------------------------------------

struct AsyncCore::Impl {
  long refs = 1;  // atomic builtins, as CompletionQueue::Impl's
  std::vector<FutureCore> parts;
  std::mutex mu;
  std::size_t left = 0;  // parts not settled yet (under mu)
  std::vector<TaskCallback> on_ready;
  bool ready = false;  // left reached 0 and on_ready was taken (under mu)

  // A part settled; the last one runs the callbacks, outside the lock.
  void part_done() {
    std::vector<TaskCallback> cbs;
    {
      std::lock_guard lock(mu);
      if (--left != 0) return;
      ready = true;
      cbs.swap(on_ready);
    }
    for (auto& cb : cbs) cb();
  }
};

AsyncCore::AsyncCore(std::vector<FutureCore> parts) : p_(new Impl) {
  p_->parts = std::move(parts);
  p_->left = p_->parts.size();
  if (p_->parts.empty()) p_->ready = true;
  // Each part's callback holds the state until that part settles (every
  // future settles: done, failed or cancelled), so the count reaches 0.
  for (const auto& part : p_->parts) part.add_callback([self = *this] { self.p_->part_done(); });
}
AsyncCore::AsyncCore(const AsyncCore& o) noexcept : p_(o.p_) { __atomic_add_fetch(&p_->refs, 1, __ATOMIC_RELAXED); }
AsyncCore& AsyncCore::operator=(const AsyncCore& o) noexcept {
  AsyncCore copy(o);
  std::swap(p_, copy.p_);
  return *this;
}
AsyncCore::~AsyncCore() {
  if (__atomic_sub_fetch(&p_->refs, 1, __ATOMIC_ACQ_REL) == 0) delete p_;
}

const std::vector<FutureCore>& AsyncCore::parts() const noexcept { return p_->parts; }

bool AsyncCore::ready() const {
  for (const auto& p : p_->parts)
    if (!p.done()) return false;
  return true;
}

bool AsyncCore::wait(Deadline deadline) const {
  for (const auto& p : p_->parts)
    if (!p.wait_until(deadline)) return false;
  return true;
}

std::exception_ptr AsyncCore::first_error() const {
  for (const auto& p : p_->parts)
    if (auto e = p.error_if_done()) return e;
  return nullptr;
}

void AsyncCore::on_ready(TaskCallback cb) const {
  {
    // ready() as well as the flag: a waiter can see every part finished
    // before the thread that finished the last one has run part_done().
    std::lock_guard lock(p_->mu);
    if (!p_->ready && !ready()) {
      p_->on_ready.push_back(std::move(cb));
      return;
    }
  }
  cb();
}

}  // namespace detail
}  // namespace mproc
