// The type-erased side of a Future: a handle to a task's state, which lives
// in src/ (src/pool/task_state.hpp) and is shared with the engine that runs the
// task. Templates (Future<R>, wait, as_completed, AsyncResult, imap) only
// wait, query and decode the result bytes through these out-of-line
// members (src/pool/futures.cpp), so the engine's state can change without
// recompiling users. Not part of the public API.
#pragma once
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <vector>

#include "mproc/detail/deadline.hpp"

namespace mproc::detail {

struct TaskState;  // src/pool/task_state.hpp


class FutureCore {
 public:
  FutureCore() noexcept = default;
  explicit FutureCore(std::shared_ptr<TaskState> state) noexcept : s_(std::move(state)) {}

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
  void add_callback(std::function<void()> cb) const;

  friend bool operator==(const FutureCore& a, const FutureCore& b) noexcept { return a.s_ == b.s_; }
  // The same for every copy of one future (for de-duplicating sets of them).
  const void* identity() const noexcept { return s_.get(); }

 private:
  TaskState& state() const;
  std::shared_ptr<TaskState> s_;
};

}  // namespace mproc::detail
