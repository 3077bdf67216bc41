// sys layer (internal): raw futexes on 32-bit words in *shared* mappings.
// No FUTEX_PRIVATE_FLAG, so a wake in one process reaches a waiter in another
// (libstdc++'s std::atomic::wait uses private futexes: it cannot).
#pragma once
#include <atomic>
#include <chrono>
#include <cstdint>
#include <optional>

#include "sys/clock.hpp"

namespace mproc::sys {

using mproc::Timeout;
using Deadline = detail::Deadline;

// Sleeps while *word == expected, until woken or the deadline (absolute,
// CLOCK_MONOTONIC). Returns false only on timeout; a wake, a changed value,
// EINTR or a spurious wake return true (callers re-check their condition).
bool futex_wait(std::atomic<std::uint32_t>* word, std::uint32_t expected, Deadline deadline);
// Wakes up to n waiters (INT_MAX: all); returns how many were woken.
int futex_wake(std::atomic<std::uint32_t>* word, int n);

using detail::deadline_after;  // mproc's one timeout rule
inline bool expired(const Deadline& d) { return d.passed(); }
// The earlier of d and now+slice: waits are cut into slices so that a waker
// killed between its wake and its work never strands the other waiters.
inline Deadline sliced(const Deadline& d, std::chrono::milliseconds slice) {
  const Deadline s(detail::monotonic_ns() + std::chrono::nanoseconds(slice).count());
  return d < s ? d : s;
}
// A short busy spin for a cross-process event, before sleeping.
inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

}  // namespace mproc::sys
