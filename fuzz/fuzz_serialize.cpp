// libFuzzer target over the serializer: in[0] picks one of the common types
// of fuzz/serialize_cases.hpp (string, vector, map, set, tuple, optional,
// variant, nested containers, a user type), the rest is decoded as it. Only
// DeserializeError may come out, a decoded value must round-trip, and the
// memory held while decoding must stay under 96 x the input + 64 KiB
// (counted with the sanitizer allocator's hooks; the worst common type,
// vector<optional<string>>, holds 40 bytes per 1-byte element, doubled while
// growing). The seed corpus is fuzz/corpus/serialize; tests/
// test_serialize_bounds.cpp runs the same entry point over seeded inputs.
#include <sanitizer/allocator_interface.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <span>

#include "serialize_cases.hpp"

namespace {
bool counting = false;
long long live = 0, peak = 0;

void on_malloc(const volatile void*, std::size_t size) {
  if (!counting) return;
  live += static_cast<long long>(size);
  if (live > peak) peak = live;
}
void on_free(const volatile void* p) {
  if (counting && p != nullptr) live -= static_cast<long long>(__sanitizer_get_allocated_size(const_cast<const void*>(p)));
}
}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  __sanitizer_install_malloc_and_free_hooks(on_malloc, on_free);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto in = std::as_bytes(std::span<const std::uint8_t>(data, size));
  mproc::fuzz::decode_as_common_type(in, [&](auto&& decode) {
    live = peak = 0;
    counting = true;
    decode();
    counting = false;
    const auto bound = 96 * static_cast<long long>(size) + (64 << 10);
    if (peak > bound) {
      std::fprintf(stderr, "fuzz_serialize: decoding %zu bytes held %lld bytes at once (bound %lld)\n", size, peak,
                   bound);
      std::abort();
    }
  });
  return 0;
}
