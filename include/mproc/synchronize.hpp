// Process-shared synchronization, as Python's multiprocessing.synchronize:
// Lock, RLock, Semaphore, BoundedSemaphore, Event, Condition, Barrier.
//
//   mproc::Lock lock;
//   mproc::Process p([lock]() mutable { std::scoped_lock g(lock); ... });
//
// Each object lives in a small anonymous shared block (a memfd); copies share
// it, and it reaches a child of any start method or a pool task as a handle.
// - Lock / RLock are robust pthread mutexes (PTHREAD_PROCESS_SHARED +
//   PTHREAD_MUTEX_ROBUST): when a holder dies, the next acquirer gets the
//   lock and owner_died() tells it so. Nothing deadlocks on a dead holder.
//   Unlike Python's Lock, only the holder may release (an error otherwise).
//   A holder's acquire(false) or acquire(true, timeout) of its own Lock
//   returns false (after the timeout), as Python's; a blocking acquire without
//   timeout throws instead of deadlocking for ever.
// - Waits (Semaphore, Event, Condition, Barrier) are raw futexes without
//   FUTEX_PRIVATE_FLAG on the shared block, so wake-ups cross processes.
// - Timeouts: nullopt waits forever; all are measured on CLOCK_MONOTONIC.
// Everything satisfies Lockable / TimedLockable where it makes sense, for
// std::scoped_lock and std::unique_lock.
#pragma once
#include <cstddef>
#include <cstdint>
#include <optional>

#include "mproc/errors.hpp"
#include "mproc/detail/deadline.hpp"
#include "mproc/process.hpp"  // mproc::Timeout
#include "mproc/detail/codec.hpp"
#include "mproc/shared_memory.hpp"
#include "mproc/timeout.hpp"

namespace mproc {

namespace detail {
struct MutexState;
// Bytes a robust mutex takes inside a shared block (Value/Array put theirs first).
inline constexpr std::size_t kMutexStateSize = 128;

// A robust, process-shared mutex at `offset` in a shared block.
class SharedMutex {
 public:
  SharedMutex() = default;
  // init: construct a fresh mutex there (once, by the block's creator).
  SharedMutex(SharedMemory mem, std::size_t offset, bool init, bool recursive);
  // timeout 0: try once; nullopt: forever. False on timeout.
  bool acquire(Timeout timeout) const;
  void release() const;
  bool owner_died() const;
  bool held_by_caller() const;
  bool locked() const;
  bool valid() const noexcept { return st_ != nullptr; }
  // For Condition: drop every level of a recursive hold / take them back.
  unsigned release_all() const;
  void reacquire(unsigned depth) const;
  const SharedMemory& memory() const noexcept { return mem_; }

  void save(OutputArchive& ar) const { ar(mem_, static_cast<std::uint64_t>(offset_)); }
  void load(InputArchive& ar);

 private:
  SharedMemory mem_;
  std::size_t offset_ = 0;
  MutexState* st_ = nullptr;
};

// A std::chrono::time_point, or anything shaped like one: its clock tells
// the time, and the difference of two is duration_like. (The caller who
// passes one has `<chrono>`; this header leaves it out, issue 15.)
template <class T>
concept time_point_like = requires(const T& t) {
  typename T::clock;
  typename T::duration;
  { t - T::clock::now() } -> duration_like;
};

// The time left until t (zero once it has passed), measured on t's clock.
template <time_point_like T>
Timeout until(const T& t) {
  const std::int64_t left = to_nanoseconds(t - T::clock::now());
  return Timeout::from_nanoseconds(left > 0 ? left : 0);
}

// What Lock and RLock share.
class LockBase {
 public:
  // Python's acquire(block, timeout): false when not acquired.
  bool acquire(bool block = true, Timeout timeout = std::nullopt) const {
    return m_.acquire(block ? timeout : Timeout::from_nanoseconds(0));
  }
  void release() const { m_.release(); }
  void lock() const { m_.acquire(std::nullopt); }
  bool try_lock() const { return m_.acquire(Timeout::from_nanoseconds(0)); }
  void unlock() const { m_.release(); }
  template <duration_like D>
  bool try_lock_for(const D& d) const {
    return m_.acquire(Timeout(d));
  }
  template <time_point_like T>
  bool try_lock_until(const T& t) const {
    return m_.acquire(until(t));
  }
  // True when the caller holds the lock and took it over from a holder that
  // died holding it (what it protected may be half-updated).
  bool owner_died() const { return m_.owner_died(); }
  // Whether some thread of some process holds it now (a snapshot; a holder
  // that died counts until the next acquire takes the lock over).
  bool locked() const { return m_.locked(); }

  void save(OutputArchive& ar) const { ar(m_); }
  void load(InputArchive& ar) { ar(m_); }
  const SharedMutex& mutex() const noexcept { return m_; }

 protected:
  LockBase() = default;
  explicit LockBase(SharedMutex m) : m_(std::move(m)) {}
  SharedMutex m_;
};
}  // namespace detail

class Lock : public detail::LockBase {
 public:
  Lock();
  // A view of a mutex made elsewhere (an empty one to deserialize into).
  explicit Lock(detail::SharedMutex m) : LockBase(std::move(m)) {}
};

class RLock : public detail::LockBase {
 public:
  RLock();
  // A view of a recursive mutex inside another block (Value::get_lock()).
  explicit RLock(detail::SharedMutex m) : LockBase(std::move(m)) {}
};

class Semaphore {
 public:
  Semaphore() : Semaphore(1u, kUnbounded) {}
  explicit Semaphore(unsigned value) : Semaphore(value, kUnbounded) {}
  bool acquire(bool block = true, Timeout timeout = std::nullopt) const;
  void release(unsigned n = 1) const;
  unsigned get_value() const;
  void lock() const { acquire(); }
  bool try_lock() const { return acquire(false); }
  void unlock() const { release(); }
  template <detail::duration_like D>
  bool try_lock_for(const D& d) const {
    return acquire(true, Timeout(d));
  }
  template <detail::time_point_like T>
  bool try_lock_until(const T& t) const {
    return acquire(true, detail::until(t));
  }
  void save(OutputArchive& ar) const { ar(mem_); }
  void load(InputArchive& ar);

 protected:
  static constexpr unsigned kUnbounded = ~0u;
  Semaphore(unsigned value, unsigned max);

 private:
  struct State;
  SharedMemory mem_;
  State* st_ = nullptr;
};

// release() above the initial value throws mproc::Error (Python's ValueError).
class BoundedSemaphore : public Semaphore {
 public:
  BoundedSemaphore() : BoundedSemaphore(1u) {}
  explicit BoundedSemaphore(unsigned value) : Semaphore(value, value) {}
};

class Event {
 public:
  Event();
  bool is_set() const;
  void set() const;
  void clear() const;
  // True once set; false on timeout.
  bool wait(Timeout timeout = std::nullopt) const;
  void save(OutputArchive& ar) const { ar(mem_); }
  void load(InputArchive& ar);

 private:
  struct State;
  SharedMemory mem_;
  State* st_ = nullptr;
};

// The lock interface (acquire, lock, owner_died, ...) is its lock's.
class Condition : public detail::LockBase {
 public:
  Condition();  // with a new RLock, as Python
  explicit Condition(const Lock& lock);
  explicit Condition(const RLock& lock);
  // With the lock held: releases it, sleeps until notified (or timeout:
  // false), takes it back. May wake spuriously; wait_for loops on a predicate.
  bool wait(Timeout timeout = std::nullopt) const;
  template <class Pred>
  bool wait_for(Pred pred, Timeout timeout = std::nullopt) const {
    const auto end = mproc::detail::deadline_after(timeout);
    while (!pred()) {
      const Timeout left = end.left();
      if (left && left.nanoseconds() <= 0) return pred();
      wait(left);
    }
    return true;
  }
  void notify(unsigned n = 1) const;
  void notify_all() const;
  void save(OutputArchive& ar) const { ar(m_, mem_); }
  void load(InputArchive& ar);

 private:
  struct State;
  void init();
  SharedMemory mem_;
  State* st_ = nullptr;
};

// Python's Barrier(parties, action, timeout). wait() returns an index in
// [0, parties), unique per generation. The last party to arrive runs
// `action` (a plain function or captureless lambda, named by FunctionRef so
// that any process of the same binary can run it) before the others are
// released; if it throws, the barrier breaks and that party gets the
// exception. A timeout breaks the barrier, and every waiter (then and later,
// until reset()) gets BrokenBarrierError. wait() without a timeout uses the
// barrier's `timeout` (nullopt: forever).
class Barrier {
 public:
  Barrier() = default;  // an empty handle, to receive one into
  explicit Barrier(unsigned parties, void (*action)() = nullptr, Timeout timeout = std::nullopt);
  unsigned wait(Timeout timeout = std::nullopt) const;
  Timeout timeout() const;  // the default of wait()
  void reset() const;
  void abort() const;
  unsigned parties() const;
  unsigned n_waiting() const;
  bool broken() const;
  void save(OutputArchive& ar) const { ar(mem_); }
  void load(InputArchive& ar);

 private:
  struct State;
  detail::SharedMutex m_;  // at offset 0 of mem_
  SharedMemory mem_;
  State* st_ = nullptr;
};

}  // namespace mproc
