// The one rule that turns a Timeout into a deadline (with `<chrono>`, which
// timeout.hpp itself leaves out).
#pragma once
#include <chrono>

#include "mproc/timeout.hpp"

namespace mproc::detail {

// The timeout as a std::chrono duration (zero when empty).
inline std::chrono::nanoseconds as_duration(Timeout timeout) noexcept {
  return std::chrono::nanoseconds(timeout.nanoseconds());
}

// now + timeout, or time_point::max() (forever) for nullopt or a timeout so
// long that now + timeout would overflow. Every timeout-to-deadline
// conversion in mproc goes through this.
inline std::chrono::steady_clock::time_point deadline_after(Timeout timeout) {
  using Clock = std::chrono::steady_clock;
  if (!timeout) return Clock::time_point::max();
  const auto now = Clock::now();
  const auto ns = as_duration(timeout);
  if (ns > Clock::time_point::max() - now) return Clock::time_point::max();
  return now + std::chrono::duration_cast<Clock::duration>(ns);
}

}  // namespace mproc::detail
