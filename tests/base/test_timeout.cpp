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
  EXPECT_TRUE(mproc::detail::deadline_after(std::nullopt).is_forever());
  EXPECT_TRUE(mproc::detail::deadline_after(std::chrono::hours(24 * 365 * 1000)).is_forever());
  EXPECT_FALSE(mproc::detail::deadline_after(std::nullopt).left());  // forever: an empty Timeout
}

TEST(Timeout, DeadlineIsNowPlusTimeout) {
  // The deadline's clock is steady_clock's (CLOCK_MONOTONIC).
  const auto ns = [](std::chrono::steady_clock::time_point t) {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
  };
  const auto before = std::chrono::steady_clock::now();
  const auto deadline = mproc::detail::deadline_after(2s);
  EXPECT_GE(deadline.ns(), ns(before + 2s));
  EXPECT_LE(deadline.ns(), ns(std::chrono::steady_clock::now() + 2s));
  EXPECT_FALSE(deadline.passed());
  const Timeout left = deadline.left();
  ASSERT_TRUE(left);
  EXPECT_LE(left.nanoseconds(), 2'000'000'000);
  EXPECT_GT(left.nanoseconds(), 0);
}

TEST(Timeout, APassedDeadlineLeavesZero) {
  const auto deadline = mproc::detail::deadline_after(-5s);  // negative: do not wait
  EXPECT_TRUE(deadline.passed());
  ASSERT_TRUE(deadline.left());
  EXPECT_EQ(deadline.left().nanoseconds(), 0);
}
