// Internal: what a future shares with the engine that runs its task. Public
// templates never see it; they hold a detail::FutureCore (an opaque handle,
// include/mproc/detail/future_core.hpp) whose members, in src/pool/futures.cpp,
// are the only code outside the engines that touches it.
//
// A task's phase (the engines own the finer states, engine_state.hpp):
//
//   pending ──start_running()──▶ running ──finish()──▶ done
//     │  └───────────────────finish()─────────────────▶ done (failed before it ran)
//     └──cancel()──▶ cancelled
//
// done and cancelled are final: finish() after either is ignored, so each
// future settles once (callbacks run once, by the thread that settled it).
#pragma once
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <vector>

#include "mproc/futures.hpp"

namespace mproc::detail {

enum class TaskPhase : std::uint8_t { pending, running, done, cancelled };

// Something a waiting thread can drive while it spins (the pool engine reads
// results itself instead of waiting for its dispatcher to wake up).
struct Progress {
  virtual ~Progress() = default;
  virtual void poll() = 0;
  virtual void spin_begin() {}
  virtual void spin_end() {}
  // A large result's buffer whose future is gone: the engine may take it
  // (move from `bytes`) for a later large result, whose copy out of the
  // arena then lands on warm pages (no mmap, page faults and munmap per
  // result). Any thread, any lock held: the engine uses a lock of its own.
  virtual void recycle(Bytes& /*bytes*/) noexcept {}
};

inline constexpr std::size_t kRecycledResultBytes = std::size_t{256} << 10;

// Shared by a Future (through FutureCore) and the engine (through TaskHandle);
// counted in TaskStateBase (detail/future_core.hpp), freed by the last one.
struct TaskState : TaskStateBase {
  std::uint64_t id = 0;
  std::atomic<TaskPhase> phase{TaskPhase::pending};
  std::mutex mu;
  std::condition_variable cv;
  Bytes result;              // the serialized value, when done without error
  std::exception_ptr error;  // RemoteError, WorkerCrashed, TaskTimeout, BrokenPool...
  std::vector<TaskCallback> callbacks;
  std::weak_ptr<Progress> driver;

  TaskState() = default;
  TaskState(const TaskState&) = delete;
  TaskState& operator=(const TaskState&) = delete;
  ~TaskState() {
    if (result.capacity() >= kRecycledResultBytes)
      if (auto d = driver.lock()) d->recycle(result);
  }

  bool start_running();  // pending → running; false when cancelled
  bool cancel();         // pending → cancelled
  void finish(Bytes result, std::exception_ptr error);
  void add_callback(TaskCallback cb);
  // Spins briefly (results of tiny tasks come back in microseconds), then sleeps.
  bool wait_until(std::chrono::steady_clock::time_point deadline);
  void wait();
  bool finished() const noexcept {
    auto p = phase.load(std::memory_order_acquire);
    return p == TaskPhase::done || p == TaskPhase::cancelled;
  }
};

// The engines' reference to a task's state (as std::shared_ptr<TaskState>,
// sharing FutureCore's count: no second allocation per task).
class TaskHandle {
 public:
  TaskHandle() noexcept = default;
  static TaskHandle make() { return TaskHandle(new TaskState); }  // count 1: this reference
  TaskHandle(const TaskHandle& o) noexcept : p_(o.p_) {
    if (p_) retain_task_state(p_);
  }
  TaskHandle(TaskHandle&& o) noexcept : p_(std::exchange(o.p_, nullptr)) {}
  TaskHandle& operator=(TaskHandle o) noexcept {
    std::swap(p_, o.p_);
    return *this;
  }
  ~TaskHandle() {
    if (p_) release_task_state(p_);
  }
  TaskState* get() const noexcept { return p_; }
  TaskState* operator->() const noexcept { return p_; }
  TaskState& operator*() const noexcept { return *p_; }
  explicit operator bool() const noexcept { return p_ != nullptr; }
  // A future's handle on this state (another reference).
  FutureCore future() const& noexcept {
    if (p_) retain_task_state(p_);
    return FutureCore::adopt(p_);
  }
  // This reference, handed to a future.
  FutureCore future() && noexcept { return FutureCore::adopt(std::exchange(p_, nullptr)); }

 private:
  explicit TaskHandle(TaskState* adopt) noexcept : p_(adopt) {}
  TaskState* p_ = nullptr;
};

}  // namespace mproc::detail
