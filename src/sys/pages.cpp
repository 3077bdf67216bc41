#include "sys/pages.hpp"

#include <sys/mman.h>

#include <cstdint>

namespace mproc::sys {

namespace {
// The whole `align`-sized blocks inside [p, p + n): [begin, end), empty when
// end <= begin. Only these may be advised: a block that sticks out holds
// memory that is not the caller's to fault in.
struct Interior {
  std::uintptr_t begin, end;
};
Interior aligned_interior(void* p, std::size_t n, std::uintptr_t align) noexcept {
  const auto at = reinterpret_cast<std::uintptr_t>(p);
  return {(at + align - 1) & ~(align - 1), (at + n) & ~(align - 1)};
}
}  // namespace

void advise_huge_pages(void* p, std::size_t n) noexcept {
  if (n < 2 * kHugePage) return;
  const auto [begin, end] = aligned_interior(p, n, kHugePage);
  if (end > begin) (void)::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
}

void prefault_for_writing(void* p, std::size_t n) noexcept {
  constexpr std::uintptr_t kPage = 4096;  // the probe's granularity; a larger page size only wastes a probe
  const auto [begin, end] = aligned_interior(p, n, kPage);
  if (end <= begin) return;
  unsigned char first = 0, last = 0;
  if (::mincore(reinterpret_cast<void*>(begin), kPage, &first) == 0 &&
      ::mincore(reinterpret_cast<void*>(end - kPage), kPage, &last) == 0 && (first & 1) && (last & 1))
    return;
  advise_huge_pages(p, n);
  (void)::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_POPULATE_WRITE);
}

}  // namespace mproc::sys
