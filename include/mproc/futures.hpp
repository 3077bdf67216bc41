// Futures of pool tasks, as concurrent.futures: Future<R>, as_completed,
// wait(FIRST_COMPLETED | FIRST_EXCEPTION | ALL_COMPLETED), and the errors a
// task can end with beyond its own exception (RemoteError).
#pragma once
#include <sys/types.h>

#include <cstdint>
#include <exception>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "mproc/detail/future_core.hpp"
#include "mproc/errors.hpp"
#include "mproc/detail/codec.hpp"
#include "mproc/detail/deadline.hpp"

namespace mproc {

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

// A task's worker went wrong in a way the pool caught, and was replaced.
// Only that task fails; what() says what was wrong. Two ways:
//   - the worker broke the pool's protocol (its result ring overwritten, a
//     malformed or oversized record, a result for another task): the engine
//     killed it, exitcode() -SIGKILL;
//   - the task broke its worker (closed or replaced the fds the worker talks
//     to the pool through), which the worker found after the task and
//     reported before stopping itself: exitcode() 1, as a Process whose
//     target threw (broken_by_task).
class WorkerFault : public WorkerCrashed {
 public:
  // The first way: the engine found `what` and killed the worker.
  WorkerFault(std::uint64_t task, pid_t pid, const std::string& what);
  // The second way: `what` is the worker's own report.
  static WorkerFault broken_by_task(std::uint64_t task, pid_t pid, const std::string& what);

 private:
  WorkerFault(const std::string& message, std::uint64_t task, pid_t pid, int exitcode)
      : WorkerCrashed(message, task, pid, exitcode) {}
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
  TaskTimeout(std::uint64_t task, pid_t pid, Timeout limit);
  std::uint64_t task() const noexcept { return task_; }
  pid_t pid() const noexcept { return pid_; }
  // The deadline it ran past: `limit().count()` nanoseconds; compares equal
  // to a duration (`e.limit() == 2s`).
  Timeout limit() const noexcept { return limit_; }

 private:
  std::uint64_t task_;
  pid_t pid_;
  Timeout limit_;
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

template <class R>
class Future;
class AnyFuture;

namespace detail {
// How the library's templates (wait, as_completed, Pool) reach a Future's
// type-erased core; not for users.
struct FutureAccess;

// What Future<R> and AnyFuture share: everything but the value, over one
// FutureCore. Thread-safety: any member from any thread.
class FutureBase {
 public:
  bool valid() const noexcept { return core_.valid(); }
  std::uint64_t id() const { return core_.id(); }
  bool done() const { return core_.done(); }
  bool running() const { return core_.running(); }
  bool cancelled() const { return core_.cancelled(); }
  // Succeeds only while the task has not started.
  bool cancel() { return core_.cancel(); }

  void wait() const { core_.wait(); }
  // True once done; false when d passed first. Any std::chrono::duration.
  template <duration_like D>
  bool wait_for(const D& d) const {
    return core_.wait_until(deadline_after(Timeout(d)));
  }
  // The task's error (null when it succeeded); TimeoutError if not done in time.
  std::exception_ptr exception(Timeout timeout = std::nullopt) const {
    return core_.exception(deadline_after(timeout));
  }

 protected:
  FutureBase() = default;
  explicit FutureBase(FutureCore core) noexcept : core_(std::move(core)) {}

  FutureCore core_;

 private:
  friend struct FutureAccess;
};

struct FutureAccess {
  static const FutureCore& core(const FutureBase& f) noexcept { return f.core_; }
};
}  // namespace detail

template <class R>
class Future : public detail::FutureBase {
 public:
  Future() = default;
  explicit Future(detail::FutureCore core) noexcept : FutureBase(std::move(core)) {}

  // The value; rethrows the task's error (RemoteError, WorkerCrashed,
  // TaskTimeout, CancelledError, BrokenPool).
  R get() const { return result(std::nullopt); }
  // As get(), or TimeoutError if not done within timeout.
  R result(Timeout timeout) const {
    if (auto e = exception(timeout)) std::rethrow_exception(e);
    if constexpr (!std::is_void_v<R>) return from_bytes<R>(core_.result_bytes());
  }
  // Called with this future once it is done (at once if it already is), in
  // the thread that completed it. fn: any callable taking a Future<R>.
  template <class Fn>
    requires std::is_invocable_v<std::decay_t<Fn>&, Future<R>>
  void add_done_callback(Fn&& fn) {
    core_.add_callback([self = *this, fn = std::decay_t<Fn>(std::forward<Fn>(fn))]() mutable { fn(self); });
  }
  // Copies of one future compare equal (as_completed hands back copies).
  friend bool operator==(const Future& a, const Future& b) noexcept { return a.core_ == b.core_; }
};

// A future of any result type, for waiting on futures of different result
// types together (Python's futures are untyped): `wait({fa, fb})` with a
// Future<int> and a Future<std::string>. Everything but the value; take the
// value from the typed Future it was made from (they compare equal).
// Thread-safety: as Future, any member from any thread.
class AnyFuture : public detail::FutureBase {
 public:
  AnyFuture() = default;
  template <class R>
  AnyFuture(const Future<R>& f) noexcept : FutureBase(detail::FutureAccess::core(f)) {}  // NOLINT: implicit by design

  friend bool operator==(const AnyFuture& a, const AnyFuture& b) noexcept { return a.core_ == b.core_; }
  template <class R>
  friend bool operator==(const AnyFuture& a, const Future<R>& b) noexcept {
    return a.core_ == detail::FutureAccess::core(b);
  }
};

enum class ReturnWhen { FIRST_COMPLETED, FIRST_EXCEPTION, ALL_COMPLETED };
inline constexpr ReturnWhen FIRST_COMPLETED = ReturnWhen::FIRST_COMPLETED;
inline constexpr ReturnWhen FIRST_EXCEPTION = ReturnWhen::FIRST_EXCEPTION;
inline constexpr ReturnWhen ALL_COMPLETED = ReturnWhen::ALL_COMPLETED;

// What wait() returns: F is Future<R> or AnyFuture.
template <class F>
struct WaitSets {
  std::vector<F> done, not_done;
};
template <class R>
using WaitResult = WaitSets<Future<R>>;

namespace detail {
// Python's wait() and as_completed() take a set: a future given twice counts once.
template <class F>
std::vector<F> unique_futures(std::vector<F> futures) {
  std::vector<const void*> ids;
  ids.reserve(futures.size());
  for (const auto& f : futures) ids.push_back(FutureAccess::core(f).identity());
  const std::vector<std::size_t> keep = first_occurrences(ids);
  if (keep.size() == futures.size()) return futures;
  std::vector<F> out;
  out.reserve(keep.size());
  for (std::size_t i : keep) out.push_back(std::move(futures[i]));
  return out;
}

template <class F>
WaitSets<F> wait_for_set(const std::vector<F>& given, ReturnWhen when, Timeout timeout) {
  const std::vector<F> futures = unique_futures(given);
  const CompletionQueue q;
  for (std::size_t i = 0; i < futures.size(); ++i) q.push_when_done(FutureAccess::core(futures[i]), i);
  const auto deadline = deadline_after(timeout);
  std::size_t count = 0;
  while (count < futures.size()) {
    auto i = q.pop(deadline);
    if (!i) break;
    ++count;
    if (when == FIRST_COMPLETED) break;
    if (when == FIRST_EXCEPTION && !futures[*i].cancelled() && futures[*i].exception()) break;
  }
  WaitSets<F> out;
  for (const auto& f : futures) (f.done() ? out.done : out.not_done).push_back(f);
  return out;
}
}  // namespace detail

// concurrent.futures.wait.
template <class R>
WaitResult<R> wait(const std::vector<Future<R>>& futures, ReturnWhen when = ALL_COMPLETED,
                   Timeout timeout = std::nullopt) {
  return detail::wait_for_set(futures, when, timeout);
}
// Futures of different result types: wait({AnyFuture(fa), fb}) or a vector of AnyFuture.
inline WaitSets<AnyFuture> wait(const std::vector<AnyFuture>& futures, ReturnWhen when = ALL_COMPLETED,
                                Timeout timeout = std::nullopt) {
  return detail::wait_for_set(futures, when, timeout);
}

// concurrent.futures.as_completed: the futures in the order they finish.
// Iterating past `timeout` throws TimeoutError. F is Future<R> or AnyFuture.
template <class F>
class AsCompletedSet {
 public:
  AsCompletedSet(std::vector<F> futures, Timeout timeout)
      : futures_(detail::unique_futures(std::move(futures))), deadline_(detail::deadline_after(timeout)) {
    for (std::size_t i = 0; i < futures_.size(); ++i) q_.push_when_done(detail::FutureAccess::core(futures_[i]), i);
  }
  // The next finished future, or nullopt when all have been returned.
  std::optional<F> next() {
    if (returned_ == futures_.size()) return std::nullopt;
    auto i = q_.pop(deadline_);
    if (!i) throw TimeoutError("as_completed: " + std::to_string(futures_.size() - returned_) + " of " +
                               std::to_string(futures_.size()) + " futures unfinished at the timeout");
    ++returned_;
    return futures_[*i];
  }
  class iterator {
   public:
    using value_type = F;
    using difference_type = std::ptrdiff_t;
    explicit iterator(AsCompletedSet* owner) : owner_(owner) { ++*this; }
    iterator() = default;
    const F& operator*() const { return *cur_; }
    iterator& operator++() {
      cur_ = owner_->next();
      return *this;
    }
    bool operator==(const iterator& o) const { return !cur_ && !o.cur_; }

   private:
    AsCompletedSet* owner_ = nullptr;
    std::optional<F> cur_;
  };
  iterator begin() { return iterator(this); }
  iterator end() { return iterator(); }

 private:
  std::vector<F> futures_;
  detail::CompletionQueue q_;
  detail::Deadline deadline_;
  std::size_t returned_ = 0;
};
template <class R>
using AsCompleted = AsCompletedSet<Future<R>>;

template <class R>
AsCompleted<R> as_completed(std::vector<Future<R>> futures, Timeout timeout = std::nullopt) {
  return AsCompleted<R>(std::move(futures), timeout);
}
inline AsCompletedSet<AnyFuture> as_completed(std::vector<AnyFuture> futures, Timeout timeout = std::nullopt) {
  return AsCompletedSet<AnyFuture>(std::move(futures), timeout);
}

}  // namespace mproc
