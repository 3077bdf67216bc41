// Timeouts, as Python's `timeout=None | seconds`: the one type every
// blocking call of the API takes, and the one rule that turns it into a
// deadline. A leaf header (only `<chrono>` and `<optional>`).
#pragma once
#include <chrono>
#include <optional>

namespace mproc {

// nullopt waits forever; zero or negative means "do not wait".
using Timeout = std::optional<std::chrono::nanoseconds>;

namespace detail {

// now + timeout, or time_point::max() (forever) for nullopt or a timeout so
// long that now + timeout would overflow. Every timeout-to-deadline
// conversion in mproc goes through this.
inline std::chrono::steady_clock::time_point deadline_after(Timeout timeout) {
  using Clock = std::chrono::steady_clock;
  if (!timeout) return Clock::time_point::max();
  const auto now = Clock::now();
  if (*timeout > Clock::time_point::max() - now) return Clock::time_point::max();
  return now + std::chrono::duration_cast<Clock::duration>(*timeout);
}

}  // namespace detail
}  // namespace mproc
