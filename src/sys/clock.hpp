// sys layer (internal): detail::Deadline and Timeout as std::chrono values,
// for the code in src/ (the public headers leave `<chrono>` out; issue 15).
// Conversions only: the timeout-to-deadline rule is detail::deadline_after.
#pragma once
#include <chrono>

#include "mproc/detail/deadline.hpp"

namespace mproc::sys {

// The timeout as a duration (zero when empty).
inline std::chrono::nanoseconds as_duration(Timeout timeout) noexcept {
  return std::chrono::nanoseconds(timeout.nanoseconds());
}

// The deadline on steady_clock (CLOCK_MONOTONIC on Linux, the clock
// detail::monotonic_ns reads); time_point::max() when forever.
inline std::chrono::steady_clock::time_point to_time_point(detail::Deadline d) noexcept {
  using Clock = std::chrono::steady_clock;
  if (d.is_forever()) return Clock::time_point::max();
  return Clock::time_point(std::chrono::duration_cast<Clock::duration>(std::chrono::nanoseconds(d.ns())));
}

}  // namespace mproc::sys
