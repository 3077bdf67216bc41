// Tests of include/mproc/timeout.hpp: Timeout, a small class (no <chrono> in
// the public path, issue 15) built from any std::chrono duration, from
// std::nullopt or from an optional duration, converted to nanoseconds as
// std::chrono::duration_cast does, saturated instead of overflowing.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <ratio>

#include "mproc/detail/deadline.hpp"
#include "mproc/timeout.hpp"

namespace {
using namespace std::chrono_literals;
using mproc::Timeout;

static_assert(Timeout(1500ms).nanoseconds() == 1'500'000'000);
static_assert(Timeout(-3s).nanoseconds() == -3'000'000'000);
static_assert(Timeout(std::chrono::duration<double>(0.25)).nanoseconds() == 250'000'000);
static_assert(Timeout(std::chrono::duration<long long, std::pico>(2500)).nanoseconds() == 2);  // truncated
static_assert(Timeout(std::chrono::duration<long long, std::ratio<1, 3>>(1)).nanoseconds() == 333'333'333);
static_assert(Timeout(std::chrono::hours(24 * 365 * 1000)).nanoseconds() == INT64_MAX);  // saturated
static_assert(Timeout(std::chrono::duration<double>(-1e300)).nanoseconds() == INT64_MIN);
static_assert(!Timeout(std::nullopt) && !Timeout() && Timeout(0s));
static_assert(Timeout(std::optional<std::chrono::milliseconds>(5ms)).nanoseconds() == 5'000'000);
static_assert(!Timeout(std::optional<std::chrono::milliseconds>()));
static_assert(Timeout(20ms) == Timeout(20'000'000ns));
}  // namespace

TEST(Timeout, ForeverHasNoDeadline) {
  EXPECT_EQ(mproc::detail::deadline_after(std::nullopt), std::chrono::steady_clock::time_point::max());
  EXPECT_EQ(mproc::detail::deadline_after(std::chrono::hours(24 * 365 * 1000)),
            std::chrono::steady_clock::time_point::max());
}

TEST(Timeout, DeadlineIsNowPlusTimeout) {
  const auto before = std::chrono::steady_clock::now();
  const auto deadline = mproc::detail::deadline_after(2s);
  EXPECT_GE(deadline, before + 2s);
  EXPECT_LE(deadline, std::chrono::steady_clock::now() + 2s);
}
