// Timeouts, as Python's `timeout=None | seconds`: the one type every
// blocking call of the API takes. A leaf header without `<chrono>` (issue
// 15: it is on every public header's path): a Timeout is built from any
// std::chrono::duration (or anything shaped like one: `D::period::num`,
// `D::period::den`, `.count()`), from std::nullopt (forever), or from an
// std::optional of a duration. The one rule that turns it into a deadline,
// detail::deadline_after, is in mproc/detail/deadline.hpp.
#pragma once
#include <cstdint>
#include <optional>
#include <type_traits>

namespace mproc {

namespace detail {
template <class D>
concept duration_like = requires(const D& d) {
  D::period::num;
  D::period::den;
  d.count();
};

constexpr std::intmax_t gcd_of(std::intmax_t a, std::intmax_t b) noexcept {
  while (b != 0) {
    const std::intmax_t r = a % b;
    a = b;
    b = r;
  }
  return a;
}

// d in nanoseconds, truncated toward zero as std::chrono::duration_cast
// does, saturated to what an int64 holds.
template <duration_like D>
constexpr std::int64_t to_nanoseconds(const D& d) noexcept {
  constexpr std::intmax_t num = static_cast<std::intmax_t>(D::period::num) * 1000000000;
  constexpr std::intmax_t den = static_cast<std::intmax_t>(D::period::den);
  constexpr std::intmax_t g = gcd_of(num, den);
  constexpr std::intmax_t mul = num / g, div = den / g;
  constexpr long double kMax = 9.2233720368547758e18L;
  using Rep = std::remove_cvref_t<decltype(d.count())>;
  if constexpr (std::is_integral_v<Rep> && div == 1) {
    std::int64_t ns = 0;
    if (__builtin_mul_overflow(static_cast<std::int64_t>(d.count()), static_cast<std::int64_t>(mul), &ns))
      return d.count() < 0 ? INT64_MIN : INT64_MAX;
    return ns;
  } else if constexpr (std::is_integral_v<Rep> && mul == 1) {
    return static_cast<std::int64_t>(d.count() / div);
  } else {
    const long double ns = static_cast<long double>(d.count()) * mul / div;
    if (!(ns == ns)) return 0;  // NaN
    if (ns >= kMax) return INT64_MAX;
    if (ns <= -kMax) return INT64_MIN;
    return static_cast<std::int64_t>(ns);
  }
}
}  // namespace detail

// Empty (std::nullopt, the default) waits forever; zero or negative means
// "do not wait". Where std::optional<std::chrono::nanoseconds> was used
// before: `if (t)`, `t->count()` (nanoseconds) and `t.reset()` still work;
// `*t` became `t.nanoseconds()` (an int64 count).
class Timeout {
 public:
  constexpr Timeout() noexcept = default;
  constexpr Timeout(std::nullopt_t) noexcept {}  // NOLINT: implicit, as optional's
  template <detail::duration_like D>
  constexpr Timeout(const D& d) noexcept  // NOLINT: implicit, as optional's
      : ns_(detail::to_nanoseconds(d)), set_(true) {}
  template <detail::duration_like D>
  constexpr Timeout(const std::optional<D>& d) noexcept  // NOLINT: implicit
      : ns_(d ? detail::to_nanoseconds(*d) : 0), set_(d.has_value()) {}

  // A timeout of ns nanoseconds (what Deadline::left() gives back).
  static constexpr Timeout from_nanoseconds(std::int64_t ns) noexcept {
    Timeout t;
    t.ns_ = ns;
    t.set_ = true;
    return t;
  }

  constexpr bool has_value() const noexcept { return set_; }
  constexpr explicit operator bool() const noexcept { return set_; }
  // The timeout in nanoseconds (0 when empty).
  constexpr std::int64_t nanoseconds() const noexcept { return ns_; }
  constexpr std::int64_t count() const noexcept { return ns_; }
  // `t->count()`, as with the std::optional<nanoseconds> this replaced.
  constexpr const Timeout* operator->() const noexcept { return this; }
  constexpr void reset() noexcept { *this = Timeout(); }
  friend constexpr bool operator==(const Timeout&, const Timeout&) = default;

 private:
  std::int64_t ns_ = 0;
  bool set_ = false;
};

}  // namespace mproc
