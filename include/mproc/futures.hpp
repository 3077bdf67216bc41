// Futures of pool tasks, as concurrent.futures: Future<R>, as_completed,
// wait(FIRST_COMPLETED | FIRST_EXCEPTION | ALL_COMPLETED), and the errors a
// task can end with beyond its own exception (RemoteError).
#pragma once
#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "mproc/errors.hpp"
#include "mproc/serialize.hpp"

namespace mproc {

using Timeout = std::optional<std::chrono::nanoseconds>;  // nullopt: forever

// The worker running a task died (segfault, abort, exit(), SIGKILL, OOM).
// Only that task fails; the worker is replaced.
class WorkerCrashed : public Error {
 public:
  WorkerCrashed(std::uint64_t task, pid_t pid, int exitcode);
  std::uint64_t task() const noexcept { return task_; }
  pid_t pid() const noexcept { return pid_; }
  // Python's convention: -signal when killed by one, else the exit status.
  int exitcode() const noexcept { return exitcode_; }
  int signal() const noexcept { return exitcode_ < 0 ? -exitcode_ : 0; }

 protected:
  WorkerCrashed(const std::string& what, std::uint64_t task, pid_t pid, int exitcode);

 private:
  std::uint64_t task_;
  pid_t pid_;
  int exitcode_;
};

// The worker running a task broke the pool's protocol (its result ring
// overwritten, a malformed or oversized record, a result for another task):
// the engine killed it (exitcode -SIGKILL) and replaced it. Only that task
// fails; what() says what was wrong.
class WorkerFault : public WorkerCrashed {
 public:
  WorkerFault(std::uint64_t task, pid_t pid, const std::string& what);
};

// A task's result was larger than the pool's limit
// (PoolOptions::max_result_bytes). Only that task fails; the worker goes on.
class ResultTooLarge : public Error {
 public:
  ResultTooLarge(std::uint64_t task, std::uint64_t size, std::uint64_t limit);
  std::uint64_t task() const noexcept { return task_; }
  std::uint64_t size() const noexcept { return size_; }    // bytes of the serialized result
  std::uint64_t limit() const noexcept { return limit_; }  // bytes

 private:
  std::uint64_t task_, size_, limit_;
};

// A task ran past its deadline; its worker was killed and replaced.
class TaskTimeout : public Error {
 public:
  TaskTimeout(std::uint64_t task, pid_t pid, std::chrono::nanoseconds limit);
  std::uint64_t task() const noexcept { return task_; }
  pid_t pid() const noexcept { return pid_; }
  std::chrono::nanoseconds limit() const noexcept { return limit_; }

 private:
  std::uint64_t task_;
  pid_t pid_;
  std::chrono::nanoseconds limit_;
};

// get() on a cancelled future.
class CancelledError : public Error {
 public:
  using Error::Error;
};

// The pool cannot run tasks: its initializer failed, or it was terminated.
class BrokenPool : public Error {
 public:
  using Error::Error;
};

namespace detail {

enum class TaskPhase : std::uint8_t { pending, running, done, cancelled };

// Something a waiting thread can drive while it spins (the pool engine reads
// results itself instead of waiting for its dispatcher to wake up).
struct Progress {
  virtual ~Progress() = default;
  virtual void poll() = 0;
  virtual void spin_begin() {}
  virtual void spin_end() {}
};

// Shared by a Future and the engine.
struct TaskState {
  std::uint64_t id = 0;
  std::atomic<TaskPhase> phase{TaskPhase::pending};
  std::mutex mu;
  std::condition_variable cv;
  Bytes result;              // the serialized value, when done without error
  std::exception_ptr error;  // RemoteError, WorkerCrashed, TaskTimeout, BrokenPool...
  std::vector<std::function<void()>> callbacks;
  std::weak_ptr<Progress> driver;

  bool start_running();  // pending → running; false when cancelled
  bool cancel();         // pending → cancelled
  void finish(Bytes result, std::exception_ptr error);
  void add_callback(std::function<void()> cb);
  // Spins briefly (results of tiny tasks come back in microseconds), then sleeps.
  bool wait_until(std::chrono::steady_clock::time_point deadline);
  void wait();
  bool finished() const noexcept {
    auto p = phase.load(std::memory_order_acquire);
    return p == TaskPhase::done || p == TaskPhase::cancelled;
  }
};

std::chrono::steady_clock::time_point deadline_after(Timeout timeout);

}  // namespace detail

template <class R>
class Future {
 public:
  Future() = default;
  explicit Future(std::shared_ptr<detail::TaskState> s) : s_(std::move(s)) {}

  bool valid() const noexcept { return s_ != nullptr; }
  std::uint64_t id() const { return state().id; }
  bool done() const { return state().finished(); }
  bool running() const { return state().phase.load() == detail::TaskPhase::running; }
  bool cancelled() const { return state().phase.load() == detail::TaskPhase::cancelled; }
  // Succeeds only while the task has not started.
  bool cancel() { return state().cancel(); }

  void wait() const { state().wait(); }
  template <class Rep, class Period>
  bool wait_for(std::chrono::duration<Rep, Period> d) const {
    return state().wait_until(std::chrono::steady_clock::now() + d);
  }

  // The value; rethrows the task's error (RemoteError, WorkerCrashed,
  // TaskTimeout, CancelledError, BrokenPool).
  R get() const { return result(std::nullopt); }
  // As get(), or TimeoutError if not done within timeout.
  R result(Timeout timeout) const {
    rethrow_if_failed(timeout);
    if constexpr (!std::is_void_v<R>) return from_bytes<R>(state().result);
  }
  // The task's error (null when it succeeded); TimeoutError if not done in time.
  std::exception_ptr exception(Timeout timeout = std::nullopt) const {
    auto& s = state();
    if (!s.wait_until(detail::deadline_after(timeout))) throw TimeoutError("Future::exception: timed out");
    if (s.phase.load() == detail::TaskPhase::cancelled)
      return std::make_exception_ptr(CancelledError("task " + std::to_string(s.id) + " was cancelled"));
    std::lock_guard lock(s.mu);
    return s.error;
  }
  // Called with this future once it is done (at once if it already is), in
  // the thread that completed it.
  void add_done_callback(std::function<void(Future<R>)> fn) {
    Future<R> self = *this;
    state().add_callback([self, fn = std::move(fn)] { fn(self); });
  }
  detail::TaskState& state() const {
    if (!s_) throw std::logic_error("mproc::Future: no state (default-constructed)");
    return *s_;
  }
  // Copies of one future compare equal (as_completed hands back copies).
  friend bool operator==(const Future& a, const Future& b) noexcept { return a.s_ == b.s_; }

 private:
  void rethrow_if_failed(Timeout timeout) const {
    if (auto e = exception(timeout)) std::rethrow_exception(e);
  }
  std::shared_ptr<detail::TaskState> s_;
};

enum class ReturnWhen { FIRST_COMPLETED, FIRST_EXCEPTION, ALL_COMPLETED };
inline constexpr ReturnWhen FIRST_COMPLETED = ReturnWhen::FIRST_COMPLETED;
inline constexpr ReturnWhen FIRST_EXCEPTION = ReturnWhen::FIRST_EXCEPTION;
inline constexpr ReturnWhen ALL_COMPLETED = ReturnWhen::ALL_COMPLETED;

template <class R>
struct WaitResult {
  std::vector<Future<R>> done, not_done;
};

namespace detail {
// Collects completions of a set of tasks (callbacks push their index).
class CompletionQueue {
 public:
  void push(std::size_t index);
  // The next completed index, or nullopt at the deadline.
  std::optional<std::size_t> pop(std::chrono::steady_clock::time_point deadline);

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::size_t> ready_;
};
}  // namespace detail

// concurrent.futures.wait.
template <class R>
WaitResult<R> wait(const std::vector<Future<R>>& futures, ReturnWhen when = ALL_COMPLETED,
                   Timeout timeout = std::nullopt) {
  auto q = std::make_shared<detail::CompletionQueue>();
  for (std::size_t i = 0; i < futures.size(); ++i) futures[i].state().add_callback([q, i] { q->push(i); });
  const auto deadline = detail::deadline_after(timeout);
  std::vector<bool> finished(futures.size());
  std::size_t count = 0;
  while (count < futures.size()) {
    auto i = q->pop(deadline);
    if (!i) break;
    finished[*i] = true;
    ++count;
    if (when == FIRST_COMPLETED) break;
    if (when == FIRST_EXCEPTION && !futures[*i].cancelled() && futures[*i].exception()) break;
  }
  WaitResult<R> out;
  for (std::size_t i = 0; i < futures.size(); ++i) (futures[i].done() ? out.done : out.not_done).push_back(futures[i]);
  return out;
}

// concurrent.futures.as_completed: the futures in the order they finish.
// Iterating past `timeout` throws TimeoutError.
template <class R>
class AsCompleted {
 public:
  AsCompleted(std::vector<Future<R>> futures, Timeout timeout)
      : futures_(std::move(futures)), q_(std::make_shared<detail::CompletionQueue>()),
        deadline_(detail::deadline_after(timeout)) {
    for (std::size_t i = 0; i < futures_.size(); ++i) futures_[i].state().add_callback([q = q_, i] { q->push(i); });
  }
  // The next finished future, or nullopt when all have been returned.
  std::optional<Future<R>> next() {
    if (returned_ == futures_.size()) return std::nullopt;
    auto i = q_->pop(deadline_);
    if (!i) throw TimeoutError("as_completed: " + std::to_string(futures_.size() - returned_) + " of " +
                               std::to_string(futures_.size()) + " futures unfinished at the timeout");
    ++returned_;
    return futures_[*i];
  }
  class iterator {
   public:
    using value_type = Future<R>;
    using difference_type = std::ptrdiff_t;
    explicit iterator(AsCompleted* owner) : owner_(owner) { ++*this; }
    iterator() = default;
    const Future<R>& operator*() const { return *cur_; }
    iterator& operator++() {
      cur_ = owner_->next();
      return *this;
    }
    bool operator==(const iterator& o) const { return !cur_ && !o.cur_; }

   private:
    AsCompleted* owner_ = nullptr;
    std::optional<Future<R>> cur_;
  };
  iterator begin() { return iterator(this); }
  iterator end() { return iterator(); }

 private:
  std::vector<Future<R>> futures_;
  std::shared_ptr<detail::CompletionQueue> q_;
  std::chrono::steady_clock::time_point deadline_;
  std::size_t returned_ = 0;
};

template <class R>
AsCompleted<R> as_completed(std::vector<Future<R>> futures, Timeout timeout = std::nullopt) {
  return AsCompleted<R>(std::move(futures), timeout);
}

}  // namespace mproc
