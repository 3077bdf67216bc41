// sys layer: the monotonic clock behind detail::Deadline.
#include <time.h>

#include "mproc/detail/deadline.hpp"

namespace mproc::detail {

std::int64_t monotonic_ns() noexcept {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

}  // namespace mproc::detail
