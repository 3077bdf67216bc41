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
// The lock, as Python's Value(typecode, v, lock=...):
//   Value<T>(v)                  lock=True/None: a new RLock (in the same block)
//   Value<T, Lock>(v, lock)      lock=<a Lock>: get_lock() is that Lock; the
//   Value<T>(v, rlock)           same for an RLock. CTAD: Value v(0, lock)
//   RawValue<T>(v)               lock=False, RawValue: there is no get_lock()
//                                (Value<T, NoLock>: asking is a compile error)
//   Value<T>(v, mproc::no_lock)  kept for source compatibility: no lock, and
//                                get_lock() throws ValueError at run time
// Array / RawArray likewise. A holder that dies never wedges the lock (robust).
// load()/store() are atomic (sequentially consistent, as std::atomic_ref's;
// detail::AtomicRef) when T is lock-free; else they take the lock (when
// there is one), or skip it when the calling thread holds it already (so
// store() under get_lock() of a plain Lock works where Python would
// deadlock). fetch_add & co. exist where std::atomic_ref<T> has them
// (fetch_add/fetch_sub: integers but bool, floating point, pointers;
// fetch_and/or/xor: integers but bool), need no lock and return a T.
//
// Array<char> has Python's c_char array semantics: value() is the bytes up to
// the first NUL, set_value(s) writes s and a NUL when there is room, raw() and
// set_raw(s) are the whole array; a string longer than the array is a
// ValueError. They take the lock as load()/store() do.
//
// Copies share the block, and every operation is const (a handle, as a
// shared_ptr). Given to a Process or a pool task, only a handle travels (the
// block's fd, and the caller's lock's), never the data.
#pragma once
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>

#include "mproc/errors.hpp"
#include "mproc/detail/atomic_ref.hpp"
#include "mproc/detail/codec.hpp"
#include "mproc/shared_memory.hpp"
#include "mproc/synchronize.hpp"

namespace mproc {

struct NoLock {};
inline constexpr NoLock no_lock{};

namespace detail {
template <class L>
concept CellLock = std::same_as<L, Lock> || std::same_as<L, RLock>;

// Where the lock of a Value/Array is. Fixed at construction; a handle sent to
// another process carries it (and for `own_block`, the lock's own handle).
enum class LockPlace : std::uint8_t {
  none = 0,       // RawValue/RawArray, or no_lock
  in_block = 1,   // the default RLock, at offset 0 of the cells' block
  own_block = 2,  // a Lock/RLock in a block of its own: the caller's, or a new Lock
};

// [robust mutex (kMutexStateSize)] [n x T], T aligned. L: the type get_lock()
// returns (NoLock: there is none).
template <class T, class L>
class SharedCells {
  static_assert(std::is_trivially_copyable_v<T>, "mproc::Value/Array hold trivially copyable types only");
  static_assert(alignof(T) <= 4096, "mproc::Value/Array: alignment above a page is not supported");
  static_assert(CellLock<L> || std::same_as<L, NoLock>, "mproc::Value/Array: the lock is a Lock, an RLock or NoLock");

 public:
  static constexpr std::size_t kOffset = (kMutexStateSize + alignof(T) - 1) / alignof(T) * alignof(T);

  SharedCells() = default;
  // with_lock: L's default (an RLock in the block, or a new Lock).
  SharedCells(std::size_t n, bool with_lock) : mem_(kOffset + (n > 0 ? n * sizeof(T) : 1)), n_(n) {
    if constexpr (std::same_as<L, RLock>) {
      if (with_lock) {
        lock_.emplace(SharedMutex(mem_, 0, true, true));
        place_ = LockPlace::in_block;
      }
    } else if constexpr (std::same_as<L, Lock>) {
      if (with_lock) {
        lock_.emplace();
        place_ = LockPlace::own_block;
      }
    }
    bind();
    for (std::size_t i = 0; i < n; ++i) new (cells_ + i) T{};
  }
  // The caller's lock (Python's lock=<a lock object>).
  SharedCells(std::size_t n, const L& lock)
    requires CellLock<L>
      : SharedCells(n, false) {
    lock_.emplace(lock);
    place_ = LockPlace::own_block;
  }

  L& get_lock() const
    requires CellLock<L>
  {
    if (!lock_) throw ValueError("mproc::Value/Array was made with no_lock: it has no lock");
    return *lock_;
  }
  bool has_lock() const noexcept { return place_ != LockPlace::none; }
  std::size_t count() const noexcept { return n_; }
  T* cells() const noexcept { return cells_; }
  const SharedMemory& memory() const noexcept { return mem_; }

  // fn() under the lock, when there is one that this thread does not hold.
  template <class Fn>
  decltype(auto) guarded(Fn&& fn) const {
    if constexpr (CellLock<L>) {
      if (lock_ && !lock_->mutex().held_by_caller()) {
        struct Unlock {  // std::scoped_lock without <mutex> (issue 15)
          const L& lock;
          ~Unlock() { lock.unlock(); }
        };
        lock_->lock();
        const Unlock g{*lock_};
        return fn();
      }
    }
    return fn();
  }

  T load_at(std::size_t i) const {
    if constexpr (atomic_always_lock_free_v<T>) {
      return AtomicRef<T>(cells_[i]).load();
    } else {
      return guarded([&] { return cells_[i]; });
    }
  }
  void store_at(std::size_t i, const T& v) const {
    if constexpr (atomic_always_lock_free_v<T>) {
      AtomicRef<T>(cells_[i]).store(v);
    } else {
      guarded([&] { cells_[i] = v; });
    }
  }

  void save(OutputArchive& ar) const {
    ar(mem_, static_cast<std::uint64_t>(n_), static_cast<std::uint8_t>(place_));
    if constexpr (CellLock<L>)
      if (place_ == LockPlace::own_block) ar(*lock_);
  }
  void load(InputArchive& ar) {
    std::uint64_t n = 0;
    std::uint8_t place = 0;
    ar(mem_, n, place);
    if (mem_.closed() || mem_.size() < kOffset + n * sizeof(T))
      throw DeserializeError("mproc::Value/Array: shared block smaller than " + std::to_string(n) + " elements");
    const bool fits = place == 0 || (CellLock<L> && place == 2) || (std::same_as<L, RLock> && place == 1);
    if (!fits)
      throw DeserializeError("mproc::Value/Array: lock kind " + std::to_string(place) + " does not fit this type");
    n_ = static_cast<std::size_t>(n);
    place_ = static_cast<LockPlace>(place);
    lock_.reset();
    if constexpr (CellLock<L>) {
      if (place_ == LockPlace::own_block) {
        L lock{SharedMutex()};  // an empty handle, filled from the archive
        ar(lock);
        lock_.emplace(std::move(lock));
      }
    }
    if constexpr (std::same_as<L, RLock>)
      if (place_ == LockPlace::in_block) lock_.emplace(SharedMutex(mem_, 0, false, true));
    bind();
  }

 private:
  void bind() { cells_ = reinterpret_cast<T*>(mem_.buf().data() + kOffset); }
  SharedMemory mem_;
  std::size_t n_ = 0;
  LockPlace place_ = LockPlace::none;
  mutable std::optional<L> lock_;  // a handle: locking it changes only shared state
  T* cells_ = nullptr;
};
}  // namespace detail

template <class T, class L = RLock>
class Value {
 public:
  Value() : Value(T{}) {}
  // L's default lock (RLock: a new one; Lock: a new one; NoLock: none).
  explicit Value(const T& init) : c_(1, !std::same_as<L, NoLock>) { *c_.cells() = init; }
  Value(const T& init, NoLock) : c_(1, false) { *c_.cells() = init; }
  // The caller's lock: get_lock() returns it, and it guards load()/store().
  Value(const T& init, const L& lock)
    requires detail::CellLock<L>
      : c_(1, lock) {
    *c_.cells() = init;
  }

  T load() const { return c_.load_at(0); }
  void store(const T& v) const { c_.store_at(0, v); }
  T value() const { return load(); }  // Python's .value
  // The object itself, for use under get_lock().
  T& ref() const noexcept { return *c_.cells(); }
  L& get_lock() const
    requires detail::CellLock<L>
  {
    return c_.get_lock();
  }
  bool has_lock() const noexcept { return c_.has_lock(); }

  // Atomic read-modify-write, where std::atomic_ref<T> offers it (no lock).
  T exchange(const T& v) const { return ar().exchange(v); }
  bool compare_exchange(T& expected, const T& desired) const { return ar().compare_exchange_strong(expected, desired); }
  T fetch_add(detail::atomic_difference_t<T> d) const
    requires detail::atomic_addable<T>
  {
    return ar().fetch_add(d);
  }
  T fetch_sub(detail::atomic_difference_t<T> d) const
    requires detail::atomic_addable<T>
  {
    return ar().fetch_sub(d);
  }
  T fetch_and(T d) const
    requires detail::atomic_bitwise<T>
  {
    return ar().fetch_and(d);
  }
  T fetch_or(T d) const
    requires detail::atomic_bitwise<T>
  {
    return ar().fetch_or(d);
  }
  T fetch_xor(T d) const
    requires detail::atomic_bitwise<T>
  {
    return ar().fetch_xor(d);
  }

  void save(OutputArchive& a) const { a(c_); }
  void load(InputArchive& a) {
    a(c_);
    if (c_.count() != 1) throw DeserializeError("mproc::Value: received an array");
  }

 private:
  detail::AtomicRef<T> ar() const {
    static_assert(detail::atomic_always_lock_free_v<T>, "mproc::Value: atomic operations need a lock-free T");
    return detail::AtomicRef<T>(*c_.cells());
  }
  detail::SharedCells<T, L> c_;
};

// Python's RawValue (and Value(..., lock=False)): no lock, no get_lock().
template <class T>
using RawValue = Value<T, NoLock>;

template <class T, class L = RLock>
class Array {
 public:
  Array() : Array(std::size_t{0}) {}
  explicit Array(std::size_t n, const T& init = T{}) : c_(n, !std::same_as<L, NoLock>) {
    for (std::size_t i = 0; i < n; ++i) c_.cells()[i] = init;
  }
  Array(std::size_t n, NoLock) : c_(n, false) {}
  Array(std::initializer_list<T> init) : Array(std::span<const T>(init.begin(), init.size())) {}
  explicit Array(std::span<const T> init) : c_(init.size(), !std::same_as<L, NoLock>) { copy_in(init); }
  Array(std::span<const T> init, NoLock) : c_(init.size(), false) { copy_in(init); }
  // The caller's lock: get_lock() returns it; it guards load()/store() (of a
  // T that is not lock-free) and the char value()/raw().
  Array(std::size_t n, const L& lock)
    requires detail::CellLock<L>
      : c_(n, lock) {}
  Array(std::span<const T> init, const L& lock)
    requires detail::CellLock<L>
      : c_(init.size(), lock) {
    copy_in(init);
  }
  Array(std::initializer_list<T> init, const L& lock)
    requires detail::CellLock<L>
      : Array(std::span<const T>(init.begin(), init.size()), lock) {}

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
  T fetch_add(std::size_t i, detail::atomic_difference_t<T> d) const
    requires detail::atomic_addable<T>
  {
    return detail::AtomicRef<T>(c_.cells()[check(i)]).fetch_add(d);
  }
  L& get_lock() const
    requires detail::CellLock<L>
  {
    return c_.get_lock();
  }
  bool has_lock() const noexcept { return c_.has_lock(); }

  // ---- Python's c_char array: .value and .raw -------------------------------
  // The characters up to the first NUL (all of them when there is none).
  std::string value() const
    requires std::same_as<T, char>
  {
    return c_.guarded([&] {
      const std::string_view all(c_.cells(), size());
      return std::string(all.substr(0, all.find('\0')));
    });
  }
  // s, then a NUL if there is room (what follows it stays), as Python's.
  void set_value(std::string_view s) const
    requires std::same_as<T, char>
  {
    check_fits(s, "set_value");
    c_.guarded([&] {
      if (!s.empty()) std::memcpy(c_.cells(), s.data(), s.size());
      if (s.size() < size()) c_.cells()[s.size()] = '\0';
    });
  }
  // All size() characters, NULs included.
  std::string raw() const
    requires std::same_as<T, char>
  {
    return c_.guarded([&] { return std::string(c_.cells(), size()); });
  }
  // s over the first s.size() characters, no NUL added.
  void set_raw(std::string_view s) const
    requires std::same_as<T, char>
  {
    check_fits(s, "set_raw");
    c_.guarded([&] {
      if (!s.empty()) std::memcpy(c_.cells(), s.data(), s.size());
    });
  }

  void save(OutputArchive& a) const { a(c_); }
  void load(InputArchive& a) { a(c_); }

 private:
  void copy_in(std::span<const T> init) const {
    if (!init.empty()) std::memcpy(static_cast<void*>(c_.cells()), init.data(), init.size_bytes());
  }
  std::size_t check(std::size_t i) const {
    if (i >= size()) throw IndexError("mproc::Array index " + std::to_string(i) + " >= " + std::to_string(size()));
    return i;
  }
  void check_fits(std::string_view s, const char* op) const {
    if (s.size() > size())
      throw ValueError("mproc::Array<char>::" + std::string(op) + ": string too long: " + std::to_string(s.size()) +
                       " characters for an array of " + std::to_string(size()));
  }
  detail::SharedCells<T, L> c_;
};

// Python's RawArray (and Array(..., lock=False)): no lock, no get_lock().
template <class T>
using RawArray = Array<T, NoLock>;

}  // namespace mproc
