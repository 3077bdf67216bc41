#include "sys/futex.hpp"

#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <climits>

#include "sys/fd.hpp"

namespace mproc::sys {

static_assert(sizeof(std::atomic<std::uint32_t>) == 4 && std::atomic<std::uint32_t>::is_always_lock_free);

bool futex_wait(std::atomic<std::uint32_t>* word, std::uint32_t expected, Deadline deadline) {
  timespec ts{};
  timespec* tsp = nullptr;
  if (!deadline.is_forever()) {
    // A Deadline is on CLOCK_MONOTONIC, FUTEX_WAIT_BITSET's default clock.
    auto ns = deadline.ns();
    if (ns < 0) ns = 0;
    ts.tv_sec = static_cast<time_t>(ns / 1000000000);
    ts.tv_nsec = static_cast<long>(ns % 1000000000);
    tsp = &ts;
  }
  long r = ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(word), FUTEX_WAIT_BITSET, expected, tsp, nullptr,
                     FUTEX_BITSET_MATCH_ANY);
  if (r == 0) return true;
  if (errno == ETIMEDOUT) return false;
  if (errno == EAGAIN || errno == EINTR) return true;
  throw_errno("futex(FUTEX_WAIT_BITSET)");
}

int futex_wake(std::atomic<std::uint32_t>* word, int n) {
  long r = ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(word), FUTEX_WAKE, n, nullptr, nullptr, 0);
  if (r < 0) throw_errno("futex(FUTEX_WAKE)");
  return static_cast<int>(r);
}

}  // namespace mproc::sys
