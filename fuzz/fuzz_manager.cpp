// libFuzzer target over the manager's frame decoder and request dispatcher:
// each input is the byte stream an authenticated client would send (frames
// of {magic, tag, length} + request). See scripts/fuzz.sh; the seed corpus is
// fuzz/corpus/manager. tests/manager/test_managers_faults.cpp runs the same entry
// point over seeded random inputs in every test run.
#include <cstddef>
#include <cstdint>
#include <span>

#include "manager/manager_server.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  mproc::detail::dispatch_for_fuzz(std::as_bytes(std::span<const std::uint8_t>(data, size)));
  return 0;
}
