// Typed proxies of mproc::Manager's queues and synchronisation objects
// (Python's Manager().Queue, JoinableQueue, Lock, RLock, Semaphore,
// BoundedSemaphore, Condition, Event, Barrier). Every method is one round
// trip through its protocol table entry (detail/manager_protocol.hpp).
//
// A blocking call waits on the server; a caller that dies while waiting
// takes nothing (no queue item, no lock). A client that dies while HOLDING a
// Lock, RLock or Semaphore does not give it back (as in CPython, whose
// manager locks stay held when their holder dies): use timeouts where a
// holder may die.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "mproc/detail/deadline.hpp"
#include "mproc/detail/manager_client.hpp"
#include "mproc/timeout.hpp"

namespace mproc {

// Python's Manager().Queue (queue.Queue semantics: Empty / Full on timeout).
template <class T, class P = detail::proto::QueueProtocol>
class QueueProxy : public detail::ProxyOf<P, detail::Bind<void, T>> {
 public:
  using QueueProxy::ProxyOf::ProxyOf;

  void put(const T& v, bool block = true, Timeout timeout = std::nullopt) const {
    this->template invoke<"put">(detail::WaitArg{block, timeout}, v);
  }
  void put_nowait(const T& v) const { put(v, false); }
  T get(bool block = true, Timeout timeout = std::nullopt) const {
    return this->template invoke<"get">(detail::WaitArg{block, timeout});
  }
  T get_nowait() const { return get(false); }
  // Puts every value in one round trip (waiting for room as put does).
  template <class Range>
  void put_many(const Range& values, bool block = true, Timeout timeout = std::nullopt) const {
    this->template invoke<"put_many">(detail::WaitArg{block, timeout}, values);
  }
  // Up to max_items values; waits (as get) for the first one only.
  std::vector<T> get_many(std::size_t max_items, bool block = true, Timeout timeout = std::nullopt) const {
    return this->template invoke<"get_many">(std::uint64_t{max_items}, detail::WaitArg{block, timeout});
  }
  std::size_t qsize() const { return this->template invoke<"qsize">(); }
  bool empty() const { return qsize() == 0; }
  bool full() const { return this->template invoke<"full">(); }
};

// Python's Manager().JoinableQueue: join() returns once every item put has
// been marked done by task_done() (ValueError when called more often than
// items were put).
template <class T>
class JoinableQueueProxy : public QueueProxy<T, detail::proto::JoinableQueueProtocol> {
 public:
  using JoinableQueueProxy::QueueProxy::QueueProxy;
  void task_done() const { this->template invoke<"task_done">(); }
  void join() const { this->template invoke<"join">(Timeout{}); }
  // False when the timeout passed first.
  bool join(Timeout timeout) const { return this->template invoke<"join">(timeout); }
};

// Python's Manager().Lock (any holder may release, as threading.Lock).
class LockProxy : public detail::ProxyOf<detail::proto::LockProtocol, detail::NoBind> {
 public:
  using ProxyOf::ProxyOf;
  bool acquire(bool block = true, Timeout timeout = std::nullopt) const {
    return invoke<"acquire">(detail::WaitArg{block, timeout});
  }
  // ValueError when not locked.
  void release() const { invoke<"release">(); }
  bool locked() const { return invoke<"locked">(); }
  // Lockable, for std::lock_guard / std::unique_lock.
  void lock() const { acquire(); }
  bool try_lock() const { return acquire(false); }
  void unlock() const { release(); }
};

// Python's Manager().RLock: the thread that holds it may acquire it again;
// only that thread may release it (ValueError otherwise), as many times.
// The owner is the calling thread of the calling process, whichever proxy
// copy or connection it uses.
class RLockProxy : public detail::ProxyOf<detail::proto::RLockProtocol, detail::NoBind> {
 public:
  using ProxyOf::ProxyOf;
  bool acquire(bool block = true, Timeout timeout = std::nullopt) const {
    return invoke<"acquire">(detail::caller_identity(), detail::WaitArg{block, timeout});
  }
  void release() const { invoke<"release">(detail::caller_identity()); }
  bool locked() const { return invoke<"locked">(); }
  void lock() const { acquire(); }
  bool try_lock() const { return acquire(false); }
  void unlock() const { release(); }
};

// Python's Manager().Semaphore: acquire() takes one unit (waiting for one),
// release(n) gives n back.
class SemaphoreProxy : public detail::ProxyOf<detail::proto::SemaphoreProtocol, detail::NoBind> {
 public:
  using ProxyOf::ProxyOf;
  bool acquire(bool block = true, Timeout timeout = std::nullopt) const {
    return invoke<"acquire">(detail::WaitArg{block, timeout});
  }
  void release(std::size_t n = 1) const { invoke<"release">(std::uint64_t{n}); }
  // Units free now (multiprocessing.Semaphore.get_value()).
  std::size_t get_value() const { return invoke<"get_value">(); }
  void lock() const { acquire(); }
  bool try_lock() const { return acquire(false); }
  void unlock() const { release(); }
};

// Python's Manager().BoundedSemaphore: release() past the initial value is a
// ValueError and changes nothing.
class BoundedSemaphoreProxy : public SemaphoreProxy {
 public:
  using SemaphoreProxy::SemaphoreProxy;
};

// Python's Manager().Condition() (with its own RLock): wait() releases the
// lock, waits for a notify (or the timeout) and takes the lock back, to the
// same depth; the caller must hold the lock for wait/notify (ValueError
// otherwise). wait_for(pred) re-checks pred on this side after each wake-up,
// as CPython's proxy does.
class ConditionProxy : public detail::ProxyOf<detail::proto::ConditionProtocol, detail::NoBind> {
 public:
  using ProxyOf::ProxyOf;
  bool acquire(bool block = true, Timeout timeout = std::nullopt) const {
    return invoke<"acquire">(detail::caller_identity(), detail::WaitArg{block, timeout});
  }
  void release() const { invoke<"release">(detail::caller_identity()); }
  void lock() const { acquire(); }
  bool try_lock() const { return acquire(false); }
  void unlock() const { release(); }
  // False when the timeout passed without a notify.
  bool wait(Timeout timeout = std::nullopt) const { return invoke<"wait">(detail::caller_identity(), timeout); }
  template <class Pred>
  bool wait_for(Pred pred, Timeout timeout = std::nullopt) const {
    const auto deadline = mproc::detail::deadline_after(timeout);
    bool result = pred();
    while (!result) {
      const Timeout left = deadline.left();
      if (left && left.nanoseconds() <= 0) break;
      wait(left);
      result = pred();
    }
    return result;
  }
  void notify(std::size_t n = 1) const { invoke<"notify">(detail::caller_identity(), std::uint64_t{n}); }
  void notify_all() const { invoke<"notify_all">(detail::caller_identity()); }
};

class EventProxy : public detail::ProxyOf<detail::proto::EventProtocol, detail::NoBind> {
 public:
  using ProxyOf::ProxyOf;
  void set() const { invoke<"set">(); }
  void clear() const { invoke<"clear">(); }
  bool is_set() const { return invoke<"is_set">(); }
  // True when the flag is set (at once or within timeout).
  bool wait(Timeout timeout = std::nullopt) const { return invoke<"wait">(timeout); }
};

// Python's Barrier: wait() returns an index in [0, parties); a timeout, an
// abort() or a reset() during a wait breaks it (BrokenBarrierError).
class BarrierProxy : public detail::ProxyOf<detail::proto::BarrierProtocol, detail::NoBind> {
 public:
  using ProxyOf::ProxyOf;
  std::size_t wait(Timeout timeout = std::nullopt) const { return invoke<"wait">(timeout); }
  void abort() const { invoke<"abort">(); }
  void reset() const { invoke<"reset">(); }
  std::size_t parties() const { return invoke<"parties">(); }
  std::size_t n_waiting() const { return invoke<"n_waiting">(); }
  bool broken() const { return invoke<"broken">(); }
};

}  // namespace mproc
