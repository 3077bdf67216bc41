// The type-erased side of a Future: a handle to a task's state, which lives
// in src/ (src/pool/task_state.hpp) and is shared with the engine that runs the
// task. Templates (Future<R>, wait, as_completed, AsyncResult, imap) only
// wait, query and decode the result bytes through these out-of-line
// members (src/pool/futures.cpp), so the engine's state can change without
// recompiling users. Not part of the public API.
//
// No `<memory>`, `<functional>`, `<mutex>` or `<chrono>` here (issue 15:
// this header is on the path of pool.hpp): the state is counted intrusively,
// callbacks are type-erased by hand, and the completion queue's lock is in
// src/pool/futures.cpp.
#pragma once
#include <cstddef>
#include <cstdint>
#include <exception>
#include <optional>
#include <type_traits>
#include <utility>
#include <vector>

#include "mproc/detail/deadline.hpp"

namespace mproc::detail {

// What a task's state (src/pool/task_state.hpp: TaskState derives from it)
// starts with: the count of handles that keep it (FutureCore here, TaskHandle
// in the engines). A new state starts at 1, its creator's reference.
struct TaskStateBase {
  long refs = 1;  // only through the __atomic builtins below
};
struct TaskState;  // src/pool/task_state.hpp: the rest, out of users' sight

// Deletes a state whose count fell to zero (src/pool/futures.cpp).
void destroy_task_state(TaskStateBase* state) noexcept;
// Taking a reference is relaxed: it is taken from a live reference, which
// already keeps the state. Dropping one is acq_rel: the release orders this
// owner's use before the count falls; the acquire makes the last owner see
// every other owner's use before it destroys the state.
inline void retain_task_state(TaskStateBase* s) noexcept { __atomic_add_fetch(&s->refs, 1, __ATOMIC_RELAXED); }
inline void release_task_state(TaskStateBase* s) noexcept {
  if (__atomic_sub_fetch(&s->refs, 1, __ATOMIC_ACQ_REL) == 0) destroy_task_state(s);
}

// A callable run once, when a task settles: a heap copy of the function
// object and two functions (std::function without `<functional>`; it
// allocated for these captures too). Move-only.
class TaskCallback {
 public:
  TaskCallback() noexcept = default;
  template <class F>
    requires(!std::is_same_v<std::remove_cvref_t<F>, TaskCallback> && std::is_invocable_v<std::decay_t<F>&>)
  TaskCallback(F&& f)  // NOLINT: implicit, as std::function's
      : state_(new std::decay_t<F>(std::forward<F>(f))) {
    using Fn = std::decay_t<F>;
    run_ = [](void* s) { (*static_cast<Fn*>(s))(); };
    destroy_ = [](void* s) noexcept { delete static_cast<Fn*>(s); };
  }
  TaskCallback(TaskCallback&& o) noexcept
      : state_(std::exchange(o.state_, nullptr)), run_(std::exchange(o.run_, nullptr)),
        destroy_(std::exchange(o.destroy_, nullptr)) {}
  TaskCallback& operator=(TaskCallback&& o) noexcept {
    if (this != &o) {
      clear();
      state_ = std::exchange(o.state_, nullptr);
      run_ = std::exchange(o.run_, nullptr);
      destroy_ = std::exchange(o.destroy_, nullptr);
    }
    return *this;
  }
  TaskCallback(const TaskCallback&) = delete;
  TaskCallback& operator=(const TaskCallback&) = delete;
  ~TaskCallback() { clear(); }

  explicit operator bool() const noexcept { return run_ != nullptr; }
  void operator()() const { run_(state_); }

 private:
  void clear() noexcept {
    if (destroy_) destroy_(state_);
    state_ = nullptr;
    run_ = nullptr;
    destroy_ = nullptr;
  }
  void* state_ = nullptr;
  void (*run_)(void*) = nullptr;
  void (*destroy_)(void*) noexcept = nullptr;
};

class FutureCore {
 public:
  FutureCore() noexcept = default;
  // Takes over the caller's reference (the engines' TaskHandle::future()).
  static FutureCore adopt(TaskStateBase* state) noexcept {
    FutureCore c;
    c.s_ = state;
    return c;
  }
  FutureCore(const FutureCore& o) noexcept : s_(o.s_) {
    if (s_) retain_task_state(s_);
  }
  FutureCore(FutureCore&& o) noexcept : s_(std::exchange(o.s_, nullptr)) {}
  FutureCore& operator=(FutureCore o) noexcept {
    std::swap(s_, o.s_);
    return *this;
  }
  ~FutureCore() {
    if (s_) release_task_state(s_);
  }

  // All but valid() throw ValueError on an empty handle.
  bool valid() const noexcept { return s_ != nullptr; }
  std::uint64_t id() const;
  bool done() const;  // finished or cancelled
  bool running() const;
  bool cancelled() const;
  bool cancel() const;  // succeeds only while the task has not started
  void wait() const;
  bool wait_until(Deadline deadline) const;
  // Once done: the task's error, CancelledError when cancelled, null when it
  // succeeded. TimeoutError if not done by the deadline.
  std::exception_ptr exception(Deadline deadline) const;
  // exception() of a task known to be done (no wait); null while not done.
  std::exception_ptr error_if_done() const;
  // The serialized value of a task that succeeded (check exception() first).
  const std::vector<std::byte>& result_bytes() const;
  // Called once the task is done (at once if it is), in the thread that
  // finished it.
  void add_callback(TaskCallback cb) const;

  friend bool operator==(const FutureCore& a, const FutureCore& b) noexcept { return a.s_ == b.s_; }
  // The same for every copy of one future (for de-duplicating sets of them).
  const void* identity() const noexcept { return s_; }

 private:
  TaskStateBase* s_ = nullptr;
};

// Collects completions of a set of tasks: a handle (copies share one queue;
// the last one, or the last pending callback, frees it), the queue and its
// lock in src/pool/futures.cpp.
class CompletionQueue {
 public:
  CompletionQueue();
  CompletionQueue(const CompletionQueue& o) noexcept;
  CompletionQueue& operator=(const CompletionQueue&) = delete;
  ~CompletionQueue();

  void push(std::size_t index) const;
  // Pushes index once core settles (done, failed or cancelled).
  void push_when_done(const FutureCore& core, std::size_t index) const;
  // The next completed index, or nullopt at the deadline.
  std::optional<std::size_t> pop(Deadline deadline) const;

 private:
  struct Impl;
  Impl* p_;
};

// Python's wait() and as_completed() take a set: the positions of the first
// copy of each future in ids (identity()s), in order.
std::vector<std::size_t> first_occurrences(const std::vector<const void*>& ids);

}  // namespace mproc::detail
