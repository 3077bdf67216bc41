// Test support: counts what operator new hands out on the calling thread
// while a scope is open (tests/alloc_counter.cpp replaces the global
// operator new/delete of the test binary; outside a scope they only add a
// thread-local check).
#pragma once
#include <cstddef>

namespace mproc::test {

class AllocCounter {
 public:
  AllocCounter();   // starts counting on this thread
  ~AllocCounter();  // stops
  AllocCounter(const AllocCounter&) = delete;
  AllocCounter& operator=(const AllocCounter&) = delete;
  // The most bytes held at once (allocated minus freed since the start).
  std::size_t peak() const noexcept;
  // Every byte allocated since the start.
  std::size_t total() const noexcept;
};

}  // namespace mproc::test
