#include "sys/pages.hpp"

#include <sys/mman.h>

#include <cstdint>

namespace mproc::sys {

void advise_huge_pages(void* p, std::size_t n) noexcept {
  if (n < 2 * kHugePage) return;
  const auto begin = (reinterpret_cast<std::uintptr_t>(p) + kHugePage - 1) & ~(kHugePage - 1);
  const auto end = (reinterpret_cast<std::uintptr_t>(p) + n) & ~(kHugePage - 1);
  if (end > begin) (void)::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
}

void prefault_for_writing(void* p, std::size_t n) noexcept {
  constexpr std::uintptr_t kPage = 4096;  // the probe's granularity; a larger page size only wastes a probe
  const auto begin = (reinterpret_cast<std::uintptr_t>(p) + kPage - 1) & ~(kPage - 1);
  const auto end = (reinterpret_cast<std::uintptr_t>(p) + n) & ~(kPage - 1);
  if (end <= begin) return;
  unsigned char first = 0, last = 0;
  if (::mincore(reinterpret_cast<void*>(begin), kPage, &first) == 0 &&
      ::mincore(reinterpret_cast<void*>(end - kPage), kPage, &last) == 0 && (first & 1) && (last & 1))
    return;
  advise_huge_pages(p, n);
  (void)::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_POPULATE_WRITE);
}

}  // namespace mproc::sys
