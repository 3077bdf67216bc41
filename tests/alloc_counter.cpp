// See alloc_counter.hpp. Sizes are malloc_usable_size() of each block, so a
// free matches its allocation exactly whatever delete form is used.
#include "alloc_counter.hpp"

#include <malloc.h>

#include <cstdlib>
#include <new>

namespace {
struct Counts {
  bool on = false;
  long long live = 0, peak = 0;
  std::size_t total = 0;
};
thread_local Counts counts;

void* counted_alloc(std::size_t n) {
  void* p = std::malloc(n == 0 ? 1 : n);
  if (p == nullptr) throw std::bad_alloc();
  if (counts.on) {
    const auto got = static_cast<long long>(malloc_usable_size(p));
    counts.live += got;
    counts.total += static_cast<std::size_t>(got);
    if (counts.live > counts.peak) counts.peak = counts.live;
  }
  return p;
}

void counted_free(void* p) noexcept {
  if (p == nullptr) return;
  if (counts.on) counts.live -= static_cast<long long>(malloc_usable_size(p));
  std::free(p);
}
}  // namespace

void* operator new(std::size_t n) { return counted_alloc(n); }
void* operator new[](std::size_t n) { return counted_alloc(n); }
void operator delete(void* p) noexcept { counted_free(p); }
void operator delete[](void* p) noexcept { counted_free(p); }
void operator delete(void* p, std::size_t) noexcept { counted_free(p); }
void operator delete[](void* p, std::size_t) noexcept { counted_free(p); }

namespace mproc::test {

AllocCounter::AllocCounter() { counts = Counts{true, 0, 0, 0}; }
AllocCounter::~AllocCounter() { counts.on = false; }
std::size_t AllocCounter::peak() const noexcept { return static_cast<std::size_t>(counts.peak); }
std::size_t AllocCounter::total() const noexcept { return counts.total; }

}  // namespace mproc::test
