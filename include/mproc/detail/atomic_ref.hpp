// detail::AtomicRef<T>: atomic access to a T in shared memory, as
// std::atomic_ref<T> (the subset Value/Array use), on GCC's __atomic
// builtins: `<atomic>` costs a file that includes it ~4k preprocessed lines
// (issue 15). Every operation is inline and compiles to the instructions
// std::atomic_ref<T> gives on libstdc++ 12 (they are built on the same
// builtins).
//
// Memory order: __ATOMIC_SEQ_CST for every operation, std::atomic_ref's
// default that this replaces: users of Value/Array (as Python's) reason as if
// all loads and stores across processes happened in one order, and a weaker
// order would silently change what their code means. On x86-64 it costs
// only on store (xchg instead of mov), as before. The relaxed accesses are
// those of a floating-point fetch_add's CAS loop that publish nothing (its
// first load, and the value a failed CAS reads back): the CAS checks that
// value, and a stale one only costs a retry (libstdc++ does the same).
#pragma once
#include <cstddef>
#include <utility>
#include <type_traits>

namespace mproc::detail {

// As std::atomic_ref<T>::is_always_lock_free on libstdc++: the size decides.
template <class T>
inline constexpr bool atomic_always_lock_free_v = __atomic_always_lock_free(sizeof(T), 0);

template <class T>
concept atomic_integral = std::is_integral_v<T> && !std::is_same_v<T, bool>;
template <class T>
concept atomic_object_pointer = std::is_pointer_v<T> && std::is_object_v<std::remove_pointer_t<T>>;
// fetch_add/fetch_sub: where std::atomic_ref<T> has them (integers but bool,
// floating point, pointers to objects), lock-free.
template <class T>
concept atomic_addable =
    (atomic_integral<T> || std::is_floating_point_v<T> || atomic_object_pointer<T>) && atomic_always_lock_free_v<T>;
// fetch_and/fetch_or/fetch_xor: integers but bool, lock-free.
template <class T>
concept atomic_bitwise = atomic_integral<T> && atomic_always_lock_free_v<T>;

// What fetch_add adds: a T, or an element count for a pointer.
template <class T>
using atomic_difference_t = std::conditional_t<std::is_pointer_v<T>, std::ptrdiff_t, T>;

// T must be trivially copyable, lock-free (atomic_always_lock_free_v) and
// aligned to its size when that is 1, 2, 4 or 8 (Value/Array's cells are).
template <class T>
class AtomicRef {
  static_assert(std::is_trivially_copyable_v<T>, "mproc::detail::AtomicRef: T must be trivially copyable");
  static_assert(atomic_always_lock_free_v<T>, "mproc::detail::AtomicRef: T must be lock-free");

 public:
  explicit AtomicRef(T& cell) noexcept : p_(__builtin_addressof(cell)) {}  // no <memory> (issue 15)

  T load() const noexcept {
    alignas(T) unsigned char buf[sizeof(T)];
    T* out = reinterpret_cast<T*>(buf);
    __atomic_load(p_, out, __ATOMIC_SEQ_CST);
    return *out;
  }
  void store(T v) const noexcept { __atomic_store(p_, __builtin_addressof(v), __ATOMIC_SEQ_CST); }
  T exchange(T v) const noexcept {
    alignas(T) unsigned char buf[sizeof(T)];
    T* out = reinterpret_cast<T*>(buf);
    __atomic_exchange(p_, __builtin_addressof(v), out, __ATOMIC_SEQ_CST);
    return *out;
  }
  // Compares the object representations (padding bytes included), as
  // std::atomic_ref does on libstdc++ 12.
  bool compare_exchange_strong(T& expected, T desired) const noexcept {
    return __atomic_compare_exchange(p_, __builtin_addressof(expected), __builtin_addressof(desired), false, __ATOMIC_SEQ_CST,
                                     __ATOMIC_SEQ_CST);
  }

  T fetch_add(atomic_difference_t<T> d) const noexcept
    requires atomic_addable<T>
  {
    if constexpr (std::is_floating_point_v<T>) {
      return fetch_float(d, false);
    } else if constexpr (std::is_pointer_v<T>) {
      // The builtin adds bytes to a pointer; atomic_ref adds elements.
      return __atomic_fetch_add(p_, d * static_cast<std::ptrdiff_t>(sizeof(*std::declval<T>())), __ATOMIC_SEQ_CST);
    } else {
      return __atomic_fetch_add(p_, d, __ATOMIC_SEQ_CST);
    }
  }
  T fetch_sub(atomic_difference_t<T> d) const noexcept
    requires atomic_addable<T>
  {
    if constexpr (std::is_floating_point_v<T>) {
      return fetch_float(d, true);
    } else if constexpr (std::is_pointer_v<T>) {
      return __atomic_fetch_sub(p_, d * static_cast<std::ptrdiff_t>(sizeof(*std::declval<T>())), __ATOMIC_SEQ_CST);
    } else {
      return __atomic_fetch_sub(p_, d, __ATOMIC_SEQ_CST);
    }
  }
  T fetch_and(T d) const noexcept
    requires atomic_bitwise<T>
  {
    return __atomic_fetch_and(p_, d, __ATOMIC_SEQ_CST);
  }
  T fetch_or(T d) const noexcept
    requires atomic_bitwise<T>
  {
    return __atomic_fetch_or(p_, d, __ATOMIC_SEQ_CST);
  }
  T fetch_xor(T d) const noexcept
    requires atomic_bitwise<T>
  {
    return __atomic_fetch_xor(p_, d, __ATOMIC_SEQ_CST);
  }

 private:
  // No floating-point fetch_add instruction: a CAS loop, as libstdc++'s.
  T fetch_float(T d, bool subtract) const noexcept {
    T old;
    __atomic_load(p_, &old, __ATOMIC_RELAXED);  // checked by the CAS below
    T next = subtract ? old - d : old + d;
    while (!__atomic_compare_exchange(p_, &old, &next, true, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED))
      next = subtract ? old - d : old + d;
    return old;
  }

  T* p_;
};

}  // namespace mproc::detail
