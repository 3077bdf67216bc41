// sys::copy_to_shared (src/sys/shared_copy.hpp): the copy into memory that
// another process reads next. Above its threshold it streams with
// non-temporal stores after an aligned head; every length and alignment must
// still copy exactly the bytes asked for, and nothing beside them.
#include <gtest/gtest.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "sys/shared_copy.hpp"

namespace {

std::vector<unsigned char> pattern(std::size_t n, unsigned seed) {
  std::vector<unsigned char> v(n);
  std::uint32_t x = seed * 2654435761u + 1;
  for (auto& b : v) {
    x = x * 1664525u + 1013904223u;
    b = static_cast<unsigned char>(x >> 24);
  }
  return v;
}

TEST(SharedCopy, CopiesEveryLengthAndAlignmentExactlyAndNothingBeside) {
  constexpr std::size_t kT = mproc::sys::kStreamingCopyBytes;
  constexpr std::size_t kGuard = 64;
  const std::size_t lengths[] = {0, 1, 63, 4096, kT - 1, kT, kT + 1, kT + 15, kT + 63, kT + 64, (std::size_t{1} << 20) + 17};
  unsigned seed = 1;
  for (const std::size_t n : lengths)
    for (const std::size_t dst_off : {0, 1, 8, 15, 16, 17, 63})
      for (const std::size_t src_off : {0, 3}) {
        const auto src = pattern(n + src_off, seed++);
        std::vector<unsigned char> dst(kGuard + dst_off + n + kGuard, 0xA5);
        mproc::sys::copy_to_shared(dst.data() + kGuard + dst_off, src.data() + src_off, n);
        for (std::size_t i = 0; i < kGuard + dst_off; ++i)
          ASSERT_EQ(dst[i], 0xA5) << "a byte before the block changed: n=" << n << " dst_off=" << dst_off;
        for (std::size_t i = 0; i < n; ++i)
          ASSERT_EQ(dst[kGuard + dst_off + i], src[src_off + i])
              << "byte " << i << " of " << n << " (dst_off=" << dst_off << ", src_off=" << src_off << ")";
        for (std::size_t i = kGuard + dst_off + n; i < dst.size(); ++i)
          ASSERT_EQ(dst[i], 0xA5) << "a byte after the block changed: n=" << n << " dst_off=" << dst_off;
      }
}

}  // namespace
