// Queue<T>, SimpleQueue<T>, JoinableQueue<T>: Python's multiprocessing
// queues, multi-producer multi-consumer across processes, without a pipe or
// a feeder thread.
//
//   mproc::Queue<std::tuple<int, std::string>> q;
//   mproc::Process p([](auto q) { q.put({42, "hello"}); }, q);
//   auto [n, s] = q.get();
//
// Design (see docs/architecture.md, "Shared state"): a byte ring in an
// anonymous shared block, guarded by a robust process-shared mutex; every
// update has one commit point (the head or tail index), so a producer or
// consumer killed inside put/get leaves the ring consistent and the next
// locker repairs the counters. Sleeps are shared futexes (with a short spin
// first, and re-checks every 100 ms so a woken consumer that is killed
// cannot strand the others). A message larger than a quarter of the ring
// travels in a reused slot of a second memfd of the queue (its pages stay
// allocated between messages; a slot whose holder died is taken back), so it
// never waits for ring space and never leaves a /dev/shm entry.
//
// put() serializes in the caller: a value that cannot serialize throws there
// at once. Queue(maxsize) counts messages (0: no limit but the ring's bytes).
#pragma once
#include <cstddef>
#include <cstdint>
#include <span>

#include "mproc/errors.hpp"
#include "mproc/process.hpp"  // mproc::Timeout
#include "mproc/detail/codec.hpp"
#include "mproc/shared_memory.hpp"
#include "mproc/synchronize.hpp"
#include "mproc/timeout.hpp"

namespace mproc {

struct QueueOptions {
  std::size_t maxsize = 0;             // messages; 0: bounded only by ring_bytes
  std::size_t ring_bytes = 1u << 20;   // rounded up to a power of two, at least 4 KiB
};

namespace detail {
struct QueueState;

// The untyped queue: byte messages.
class QueueCore {
 public:
  QueueCore() = default;
  QueueCore(const QueueOptions& options, bool joinable);
  // False when full (block=false) or on timeout.
  bool put(std::span<const std::byte> msg, bool block, Timeout timeout) const;
  // False when empty (block=false) or on timeout.
  bool get(Bytes& out, bool block, Timeout timeout) const;
  std::size_t qsize() const;
  bool empty() const;
  bool full() const;
  void close() noexcept;
  bool closed() const noexcept { return st_ == nullptr; }
  void task_done() const;
  bool join(Timeout timeout) const;

  void save(OutputArchive& ar) const;
  void load(InputArchive& ar);

 private:
  const QueueState& state(const char* op) const;
  void lock() const;
  void recover() const;
  void copy_in(std::uint64_t pos, const void* src, std::size_t n) const;
  void copy_out(std::uint64_t pos, void* dst, std::size_t n) const;
  // Large messages (src/shared/queues.cpp draws a slot's states): store_big
  // returns a slot index in state writing; load_big copies a slot out and
  // frees it.
  std::uint64_t take_slot(std::uint64_t len) const;
  void release_slot(std::uint64_t index, bool locked) const noexcept;
  std::uint64_t store_big(std::span<const std::byte> msg) const;
  void load_big(std::uint64_t index, std::uint64_t len, Bytes& out) const;
  void free_pages(std::uint64_t off, std::uint64_t len) const noexcept;
  SharedMemory mem_;  // state + ring
  SharedMemory big_;  // large messages, at offsets past its first page
  SharedMutex mutex_;
  QueueState* st_ = nullptr;
  std::byte* ring_ = nullptr;
};
}  // namespace detail

template <class T>
class Queue {
  static_assert(is_serializable_v<T>, "mproc::Queue<T>: T must be serializable");
  static_assert(std::is_default_constructible_v<T>, "mproc::Queue<T>: T must be default-constructible");

 public:
  explicit Queue(std::size_t maxsize = 0) : Queue(QueueOptions{maxsize}) {}
  explicit Queue(const QueueOptions& options) : core_(options, false) {}

  // Throws Full when block is false and the queue is full, or on timeout.
  void put(const T& value, bool block = true, Timeout timeout = std::nullopt) const {
    thread_local Bytes scratch;
    scratch.clear();
    serialize_into(scratch, value);
    if (!core_.put(scratch, block, timeout)) throw Full("mproc::Queue is full");
  }
  void put_nowait(const T& value) const { put(value, false); }
  // Throws Empty when block is false and the queue is empty, or on timeout.
  T get(bool block = true, Timeout timeout = std::nullopt) const {
    thread_local Bytes scratch;
    if (!core_.get(scratch, block, timeout)) throw Empty("mproc::Queue is empty");
    return from_bytes<T>(scratch);
  }
  T get_nowait() const { return get(false); }
  std::size_t qsize() const { return core_.qsize(); }
  bool empty() const { return core_.empty(); }
  bool full() const { return core_.full(); }
  // This handle is done (Python's close()); other handles and processes go on.
  void close() noexcept { core_.close(); }

  void save(OutputArchive& ar) const { ar(core_); }
  void load(InputArchive& ar) { ar(core_); }

 protected:
  Queue(const QueueOptions& options, bool joinable) : core_(options, joinable) {}
  detail::QueueCore core_;
};

template <class T>
class SimpleQueue {
 public:
  SimpleQueue() = default;
  void put(const T& value) const { q_.put(value); }
  T get() const { return q_.get(); }
  bool empty() const { return q_.empty(); }
  void close() noexcept { q_.close(); }
  void save(OutputArchive& ar) const { ar(q_); }
  void load(InputArchive& ar) { ar(q_); }

 private:
  Queue<T> q_;
};

// Queue + task_done()/join(): join() returns once every item put has been
// marked done. Note: a producer killed between its put's commit and the
// count's update leaves the count one short (join may return one item early).
template <class T>
class JoinableQueue : public Queue<T> {
 public:
  explicit JoinableQueue(std::size_t maxsize = 0) : Queue<T>(QueueOptions{maxsize}, true) {}
  explicit JoinableQueue(const QueueOptions& options) : Queue<T>(options, true) {}
  // Throws mproc::Error when called more times than items were put.
  void task_done() const { this->core_.task_done(); }
  void join() const { this->core_.join(std::nullopt); }
  // False on timeout.
  bool join(Timeout timeout) const { return this->core_.join(timeout); }
};

}  // namespace mproc
