// The one rule that turns a Timeout into a deadline, without `<chrono>`
// (issue 15: this header is on the path of every blocking call). A deadline
// is a point on CLOCK_MONOTONIC in nanoseconds, the clock that
// std::chrono::steady_clock reads on Linux; src/sys/clock.hpp converts it to
// and from std::chrono for the code in src/.
#pragma once
#include <cstdint>

#include "mproc/timeout.hpp"

namespace mproc::detail {

// Now on CLOCK_MONOTONIC, in nanoseconds (src/sys/deadline.cpp).
std::int64_t monotonic_ns() noexcept;

// A point on CLOCK_MONOTONIC, or "forever". Thread-safety: a value type.
class Deadline {
 public:
  static constexpr std::int64_t kForever = INT64_MAX;

  constexpr Deadline() noexcept = default;  // forever
  constexpr explicit Deadline(std::int64_t ns) noexcept : ns_(ns) {}
  static constexpr Deadline forever() noexcept { return Deadline(); }

  constexpr bool is_forever() const noexcept { return ns_ == kForever; }
  // Nanoseconds on CLOCK_MONOTONIC (kForever when forever).
  constexpr std::int64_t ns() const noexcept { return ns_; }
  bool passed() const noexcept { return !is_forever() && monotonic_ns() >= ns_; }
  // What is left, as a Timeout: empty (forever) for a forever deadline,
  // otherwise max(0, deadline - now).
  Timeout left() const noexcept {
    if (is_forever()) return Timeout();
    const std::int64_t d = ns_ - monotonic_ns();
    return Timeout::from_nanoseconds(d > 0 ? d : 0);
  }
  friend constexpr bool operator==(Deadline, Deadline) noexcept = default;
  friend constexpr bool operator<(Deadline a, Deadline b) noexcept { return a.ns_ < b.ns_; }

 private:
  std::int64_t ns_ = kForever;
};

// now + timeout, or forever for an empty timeout or one so long that now +
// timeout would overflow. Every timeout-to-deadline conversion in mproc goes
// through this.
inline Deadline deadline_after(Timeout timeout) noexcept {
  if (!timeout) return Deadline::forever();
  const std::int64_t now = monotonic_ns();
  const std::int64_t ns = timeout.nanoseconds() > 0 ? timeout.nanoseconds() : 0;
  if (ns >= Deadline::kForever - now) return Deadline::forever();
  return Deadline(now + ns);
}

}  // namespace mproc::detail
