// Value<T> and Array<T>: Python's multiprocessing.Value / Array for trivially
// copyable T, in an anonymous shared block.
//
//   mproc::Value<int> counter(0);            // with a recursive lock
//   mproc::Array<char> name(16);
//   mproc::Process p([counter, name] {    // copies are handles to one block
//     std::scoped_lock g(counter.get_lock());
//     counter.store(counter.load() + 1);
//   });
//
// - get_lock() is an RLock living in the same block (robust: a holder that
//   dies never wedges it). Pass mproc::no_lock for a lock-free RawValue.
// - load()/store() are atomic (std::atomic_ref) when T is lock-free; else
//   they take the lock (when there is one). fetch_add & co. exist where
//   std::atomic_ref<T> has them, and need no lock.
// - Copies share the block, and every operation is const (a handle, as a
//   shared_ptr). Given to a Process or a pool task, only a handle travels
//   (the block's fd), never the data.
#pragma once
#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstring>
#include <initializer_list>
#include <mutex>
#include <span>
#include <stdexcept>
#include <type_traits>

#include "mproc/errors.hpp"
#include "mproc/serialize.hpp"
#include "mproc/shared_memory.hpp"
#include "mproc/synchronize.hpp"

namespace mproc {

struct NoLock {};
inline constexpr NoLock no_lock{};

namespace detail {
// [robust mutex (kMutexStateSize)] [n x T], T aligned.
template <class T>
class SharedCells {
  static_assert(std::is_trivially_copyable_v<T>, "mproc::Value/Array hold trivially copyable types only");
  static_assert(alignof(T) <= 4096, "mproc::Value/Array: alignment above a page is not supported");

 public:
  static constexpr std::size_t kOffset = (kMutexStateSize + alignof(T) - 1) / alignof(T) * alignof(T);

  SharedCells() = default;
  SharedCells(std::size_t n, bool with_lock)
      : mem_(kOffset + std::max<std::size_t>(1, n * sizeof(T))), n_(n), has_lock_(with_lock) {
    if (with_lock) lock_ = RLock(SharedMutex(mem_, 0, true, true));
    bind();
    for (std::size_t i = 0; i < n; ++i) new (cells_ + i) T{};
  }

  RLock& get_lock() const {
    if (!has_lock_) throw Error("mproc::Value/Array was made with no_lock: it has no lock");
    return lock_;
  }
  bool has_lock() const noexcept { return has_lock_; }
  std::size_t count() const noexcept { return n_; }
  T* cells() const noexcept { return cells_; }
  const SharedMemory& memory() const noexcept { return mem_; }

  T load_at(std::size_t i) const {
    if constexpr (std::atomic_ref<T>::is_always_lock_free) {
      return std::atomic_ref<T>(cells_[i]).load();
    } else if (has_lock_) {
      std::scoped_lock g(lock_);
      return cells_[i];
    } else {
      return cells_[i];
    }
  }
  void store_at(std::size_t i, const T& v) const {
    if constexpr (std::atomic_ref<T>::is_always_lock_free) {
      std::atomic_ref<T>(cells_[i]).store(v);
    } else if (has_lock_) {
      std::scoped_lock g(lock_);
      cells_[i] = v;
    } else {
      cells_[i] = v;
    }
  }

  void save(OutputArchive& ar) const { ar(mem_, static_cast<std::uint64_t>(n_), has_lock_); }
  void load(InputArchive& ar) {
    std::uint64_t n = 0;
    ar(mem_, n, has_lock_);
    if (mem_.closed() || mem_.size() < kOffset + n * sizeof(T))
      throw DeserializeError("mproc::Value/Array: shared block smaller than " + std::to_string(n) + " elements");
    n_ = static_cast<std::size_t>(n);
    if (has_lock_) lock_ = RLock(SharedMutex(mem_, 0, false, true));
    bind();
  }

 private:
  void bind() { cells_ = reinterpret_cast<T*>(mem_.buf().data() + kOffset); }
  SharedMemory mem_;
  std::size_t n_ = 0;
  bool has_lock_ = false;
  mutable RLock lock_{SharedMutex()};  // a handle: locking it changes only shared state
  T* cells_ = nullptr;
};
}  // namespace detail

template <class T>
class Value {
 public:
  Value() : Value(T{}) {}
  explicit Value(const T& init) : c_(1, true) { *c_.cells() = init; }
  Value(const T& init, NoLock) : c_(1, false) { *c_.cells() = init; }

  T load() const { return c_.load_at(0); }
  void store(const T& v) const { c_.store_at(0, v); }
  T value() const { return load(); }  // Python's .value
  // The object itself, for use under get_lock().
  T& ref() const noexcept { return *c_.cells(); }
  RLock& get_lock() const { return c_.get_lock(); }
  bool has_lock() const noexcept { return c_.has_lock(); }

  // Atomic read-modify-write, where std::atomic_ref<T> offers it (no lock).
  T exchange(const T& v) const { return ar().exchange(v); }
  bool compare_exchange(T& expected, const T& desired) const { return ar().compare_exchange_strong(expected, desired); }
  template <class U = T>
  auto fetch_add(U d) const -> decltype(std::declval<std::atomic_ref<U>&>().fetch_add(d)) { return ar().fetch_add(d); }
  template <class U = T>
  auto fetch_sub(U d) const -> decltype(std::declval<std::atomic_ref<U>&>().fetch_sub(d)) { return ar().fetch_sub(d); }
  template <class U = T>
  auto fetch_and(U d) const -> decltype(std::declval<std::atomic_ref<U>&>().fetch_and(d)) { return ar().fetch_and(d); }
  template <class U = T>
  auto fetch_or(U d) const -> decltype(std::declval<std::atomic_ref<U>&>().fetch_or(d)) { return ar().fetch_or(d); }
  template <class U = T>
  auto fetch_xor(U d) const -> decltype(std::declval<std::atomic_ref<U>&>().fetch_xor(d)) { return ar().fetch_xor(d); }

  void save(OutputArchive& a) const { a(c_); }
  void load(InputArchive& a) {
    a(c_);
    if (c_.count() != 1) throw DeserializeError("mproc::Value: received an array");
  }

 private:
  std::atomic_ref<T> ar() const {
    static_assert(std::atomic_ref<T>::is_always_lock_free, "mproc::Value: atomic operations need a lock-free T");
    return std::atomic_ref<T>(*c_.cells());
  }
  detail::SharedCells<T> c_;
};

template <class T>
class Array {
 public:
  Array() : Array(std::size_t{0}) {}
  explicit Array(std::size_t n, const T& init = T{}) : c_(n, true) { std::fill_n(c_.cells(), n, init); }
  Array(std::size_t n, NoLock) : c_(n, false) {}
  Array(std::initializer_list<T> init) : Array(std::span<const T>(init.begin(), init.size())) {}
  explicit Array(std::span<const T> init) : c_(init.size(), true) { std::copy(init.begin(), init.end(), c_.cells()); }
  Array(std::span<const T> init, NoLock) : c_(init.size(), false) {
    std::copy(init.begin(), init.end(), c_.cells());
  }

  std::size_t size() const noexcept { return c_.count(); }
  T* data() const noexcept { return c_.cells(); }
  std::span<T> span() const noexcept { return {c_.cells(), c_.count()}; }
  T* begin() const noexcept { return c_.cells(); }
  T* end() const noexcept { return c_.cells() + c_.count(); }
  // Plain access (take get_lock() around related updates).
  T& operator[](std::size_t i) const noexcept { return c_.cells()[i]; }
  T& at(std::size_t i) const {
    if (i >= size()) throw IndexError("mproc::Array index " + std::to_string(i) + " >= " + std::to_string(size()));
    return c_.cells()[i];
  }
  T load(std::size_t i) const { return c_.load_at(check(i)); }
  void store(std::size_t i, const T& v) const { c_.store_at(check(i), v); }
  template <class U = T>
  auto fetch_add(std::size_t i, U d) const -> decltype(std::declval<std::atomic_ref<U>&>().fetch_add(d)) {
    return std::atomic_ref<T>(c_.cells()[check(i)]).fetch_add(d);
  }
  RLock& get_lock() const { return c_.get_lock(); }
  bool has_lock() const noexcept { return c_.has_lock(); }

  void save(OutputArchive& a) const { a(c_); }
  void load(InputArchive& a) { a(c_); }

 private:
  std::size_t check(std::size_t i) const {
    if (i >= size()) throw IndexError("mproc::Array index " + std::to_string(i) + " >= " + std::to_string(size()));
    return i;
  }
  detail::SharedCells<T> c_;
};

}  // namespace mproc
