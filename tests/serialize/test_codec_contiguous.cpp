// Strings and vectors of elements that are their own bytes decode by one
// assign from the wire bytes when those are aligned for the element (no
// zero-fill first), else by resize + memcpy; large ones prefault fresh
// memory first (detail::prefault_for_writing). Both branches must give the
// same values, whatever the container held before.
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <fstream>
#include <sstream>
#include <numeric>
#include <string>
#include <tuple>
#include <vector>

#include "mproc/serialize.hpp"

namespace {

using mproc::from_bytes;
using mproc::to_bytes;

std::vector<std::uint32_t> iota_u32(std::size_t n) {
  std::vector<std::uint32_t> v(n);
  std::iota(v.begin(), v.end(), 0x01020304u);
  return v;
}

// The offset of the first element in a tuple<char, vector<u32>>'s bytes: one
// char, then the u64 size tag. Odd, so the elements lie unaligned for u32.
constexpr std::size_t kUnalignedAt = 1 + 8;

}  // namespace

TEST(CodecContiguous, AlignedAndUnalignedElementsDecodeTheSame) {
  const auto v = iota_u32(1000);
  const mproc::Bytes aligned = to_bytes(v);  // elements at offset 8 of a heap buffer
  const mproc::Bytes unaligned = to_bytes(std::tuple<char, std::vector<std::uint32_t>>{'x', v});
  ASSERT_EQ(reinterpret_cast<std::uintptr_t>(aligned.data() + 8) % alignof(std::uint32_t), 0u);
  ASSERT_NE(reinterpret_cast<std::uintptr_t>(unaligned.data() + kUnalignedAt) % alignof(std::uint32_t), 0u);
  EXPECT_EQ(from_bytes<std::vector<std::uint32_t>>(aligned), v);
  const auto [c, back] = from_bytes<std::tuple<char, std::vector<std::uint32_t>>>(unaligned);
  EXPECT_EQ(c, 'x');
  EXPECT_EQ(back, v);
}

TEST(CodecContiguous, LargeValuesRoundTripThroughThePrefaultPath) {
  // Above kPrefaultBytes: fresh capacity, prefaulted, then assigned.
  const std::size_t n = 3 * mproc::detail::kPrefaultBytes + 5;
  std::vector<unsigned char> bytes(n);
  for (std::size_t i = 0; i < n; ++i) bytes[i] = static_cast<unsigned char>(i * 131 + 7);
  std::string text(n, '\0');
  for (std::size_t i = 0; i < n; ++i) text[i] = static_cast<char>('a' + i % 26);
  const auto words = iota_u32(n / 4);
  EXPECT_EQ(from_bytes<std::vector<unsigned char>>(to_bytes(bytes)), bytes);
  EXPECT_EQ(from_bytes<std::string>(to_bytes(text)), text);
  EXPECT_EQ(from_bytes<std::vector<std::uint32_t>>(to_bytes(words)), words);
}

TEST(CodecContiguous, DecodingReplacesWhatTheContainerHeld) {
  // Into a container that already holds more (capacity kept, contents
  // replaced) and one that holds less (grown).
  const std::vector<std::uint16_t> small{1, 2, 3};
  const mproc::Bytes wire = to_bytes(small);
  std::vector<std::uint16_t> bigger(4096, 9);
  mproc::InputArchive in(wire);
  in(bigger);
  EXPECT_EQ(bigger, small);

  const std::string large(mproc::detail::kPrefaultBytes * 2, 'q');
  const mproc::Bytes wire2 = to_bytes(large);
  std::string shorter = "abc";
  mproc::InputArchive in2(wire2);
  in2(shorter);
  EXPECT_EQ(shorter, large);
}

TEST(CodecContiguous, ATruncatedBlockIsRefusedNotRead) {
  mproc::Bytes wire = to_bytes(std::vector<unsigned char>(100, 1));
  wire.resize(wire.size() - 1);  // the size tag promises one byte more than there is
  EXPECT_THROW((void)from_bytes<std::vector<unsigned char>>(wire), mproc::DeserializeError);
}

TEST(CodecContiguous, PrefaultMakesFreshMemoryResident) {
  const long page = ::sysconf(_SC_PAGESIZE);
  const std::size_t n = 4 * mproc::detail::kPrefaultBytes;
  void* p = ::mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(p, MAP_FAILED);
  std::vector<unsigned char> resident(n / static_cast<std::size_t>(page));
  auto count = [&] {
    EXPECT_EQ(::mincore(p, n, resident.data()), 0);
    std::size_t k = 0;
    for (unsigned char r : resident) k += r & 1;
    return k;
  };
  ASSERT_EQ(count(), 0u) << "a fresh anonymous mapping has no page yet";
  mproc::detail::prefault_for_writing(p, mproc::detail::kPrefaultBytes - 1);  // below the threshold: nothing
  EXPECT_EQ(count(), 0u);
  mproc::detail::prefault_for_writing(p, n);
  // Every page, unless the kernel predates MADV_POPULATE_WRITE (5.14), when
  // it is a no-op and the copy takes the faults as before.
  const std::size_t got = count();
  ASSERT_EQ(::munmap(p, n), 0);
  if (got == 0u) GTEST_SKIP() << "this kernel has no MADV_POPULATE_WRITE";
  EXPECT_EQ(got, resident.size());
}

namespace {
// The VmFlags of the mapping that holds address `a`, from /proc/self/smaps.
std::string vm_flags_at(std::uintptr_t a) {
  std::ifstream smaps("/proc/self/smaps");
  std::string line;
  bool inside = false;
  while (std::getline(smaps, line)) {
    std::uintptr_t lo = 0, hi = 0;
    char dash = 0;
    std::istringstream head(line);
    if (head >> std::hex >> lo >> dash >> hi && dash == '-') {
      inside = lo <= a && a < hi;
      continue;
    }
    if (inside && line.rfind("VmFlags:", 0) == 0) return line;
  }
  return "";
}
}  // namespace

TEST(CodecContiguous, LargeFreshMemoryIsAdvisedHugePagesInsideItsRangeOnly) {
  std::ifstream thp("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string modes;
  std::getline(thp, modes);
  if (modes.empty() || modes.find("[never]") != std::string::npos) GTEST_SKIP() << "no transparent huge pages here";
  constexpr std::size_t kHuge = std::size_t{2} << 20;
  const std::size_t n = 4 * kHuge;  // 8 MiB at an offset of 1 MiB from a 2 MiB boundary
  void* map = ::mmap(nullptr, n + 2 * kHuge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(map, MAP_FAILED);
  const auto aligned = (reinterpret_cast<std::uintptr_t>(map) + kHuge - 1) & ~(kHuge - 1);
  auto* p = reinterpret_cast<unsigned char*>(aligned + kHuge / 2);
  mproc::detail::prefault_for_writing(p, n);
  const std::string inside = vm_flags_at(aligned + kHuge);           // in [p, p + n), 2 MiB-aligned
  const std::string before = vm_flags_at(reinterpret_cast<std::uintptr_t>(p));  // p's own, unaligned huge page
  const std::string after = vm_flags_at(reinterpret_cast<std::uintptr_t>(p) + n + kHuge / 4);  // past the range
  ASSERT_EQ(::munmap(map, n + 2 * kHuge), 0);
  EXPECT_NE(inside.find(" hg"), std::string::npos) << inside;
  EXPECT_EQ(before.find(" hg"), std::string::npos) << "the partial huge page at the start holds memory outside the range: " << before;
  EXPECT_EQ(after.find(" hg"), std::string::npos) << after;
}
