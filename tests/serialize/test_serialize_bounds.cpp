// Deserialization cannot amplify: hostile size tags against the bytes left,
// the memory decoding holds (counted by tests/alloc_counter.cpp's operator
// new), running out of memory under a limit, and seeded random inputs over
// the serializer fuzzer's entry point.
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdint>
#include <cstring>
#include <deque>
#include <fstream>
#include <iostream>
#include <list>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "../../fuzz/serialize_cases.hpp"
#include "alloc_counter.hpp"
#include "mproc/errors.hpp"
#include "mproc/serialize.hpp"

namespace {

using mproc::Bytes;
using mproc::fuzz::Person;

constexpr std::size_t kMessage = 64 << 10;  // the 64 KiB message
constexpr std::size_t kBound = 1 << 20;     // what decoding it may hold at most

// A 64 KiB message: the given u64 size tags, then zeros.
Bytes hostile(std::initializer_list<std::uint64_t> tags) {
  Bytes b;
  for (std::uint64_t t : tags) {
    const Bytes tb = mproc::to_bytes(t);
    b.insert(b.end(), tb.begin(), tb.end());
  }
  b.resize(kMessage, std::byte{0});
  return b;
}

// Decodes `in` as T, expecting DeserializeError; returns the most bytes
// held at once while decoding.
template <class T>
std::size_t peak_while_refusing(const Bytes& in) {
  mproc::test::AllocCounter count;
  EXPECT_THROW((void)mproc::from_bytes<T>(in), mproc::DeserializeError) << mproc::demangle(typeid(T).name());
  std::cout << "  " << mproc::demangle(typeid(T).name()) << ": " << in.size() << "-byte message, peak "
            << count.peak() << " bytes held (x" << count.peak() / in.size() << ")\n";
  return count.peak();
}

}  // namespace

// Each message is 64 KiB of size tags that claim as much as the old check
// (count <= bytes left) let through, then zeros. Before: the first one
// allocated 256 MiB (a count of 65528 elements of 4 KiB), the others 1.5 to
// 3.6 MiB.
TEST(SerializeBounds, HostileMessageAllocatesUnderOneMiB) {
  const std::uint64_t all = kMessage - 8;  // as many elements as bytes left
  EXPECT_LT((peak_while_refusing<std::vector<std::array<char, 4096>>>(hostile({all}))), kBound);
  EXPECT_LT((peak_while_refusing<std::vector<std::vector<std::vector<int>>>>(hostile({all, all - 8, all - 16}))),
            kBound);
  // The same nested type with counts that each pass the new check.
  EXPECT_LT((peak_while_refusing<std::vector<std::vector<std::vector<int>>>>(
                hostile({all / 8, (all - 8) / 8, (all - 16) / 4 - 1}))),
            kBound);
  EXPECT_LT(peak_while_refusing<std::vector<std::string>>(hostile({all})), kBound);
  EXPECT_LT(peak_while_refusing<std::vector<std::string>>(hostile({all / 8, all - 16})), kBound);
  EXPECT_LT(peak_while_refusing<std::list<std::string>>(hostile({all})), kBound);
  EXPECT_LT(peak_while_refusing<std::vector<Person>>(hostile({all})), kBound);
  EXPECT_LT((peak_while_refusing<std::vector<std::tuple<std::string, int, std::optional<double>>>>(hostile({all}))),
            kBound);
  EXPECT_LT((peak_while_refusing<std::vector<std::variant<int, std::string>>>(hostile({all}))), kBound);
  EXPECT_LT((peak_while_refusing<std::map<std::string, std::vector<std::string>>>(hostile({all}))), kBound);
  EXPECT_LT((peak_while_refusing<std::deque<std::vector<int>>>(hostile({all}))), kBound);
}

// An honest message of many small elements stays within a small multiple
// of its size too (the bound is per type, the same for honest and hostile).
TEST(SerializeBounds, HonestNestedMessageStaysWithinBound) {
  std::multimap<std::string, std::vector<std::string>> m;
  for (int i = 0; i < 4000; ++i) m.emplace("", std::vector<std::string>{});
  const Bytes b = mproc::to_bytes(m);
  ASSERT_LT(b.size(), kMessage);
  mproc::test::AllocCounter count;
  EXPECT_EQ((mproc::from_bytes<std::multimap<std::string, std::vector<std::string>>>(b).size()), 4000u);
  EXPECT_LT(count.peak(), kBound);
}

// Counts are checked against the smallest encoding of one element: just
// over what fits is refused, exactly what fits decodes.
TEST(SerializeBounds, CountCheckedAgainstSmallestElement) {
  auto tagged = [](std::uint64_t count, std::size_t bytes, std::byte fill = std::byte{0}) {
    Bytes b = mproc::to_bytes(count);
    b.resize(b.size() + bytes, fill);
    return b;
  };
  // vector<vector<int>>: each inner element costs at least its 8-byte tag.
  EXPECT_EQ(mproc::from_bytes<std::vector<std::vector<int>>>(tagged(4, 32)).size(), 4u);
  try {
    (void)mproc::from_bytes<std::vector<std::vector<int>>>(tagged(5, 32));
    FAIL() << "no exception";
  } catch (const mproc::DeserializeError& e) {
    EXPECT_NE(std::string(e.what()).find("5 elements of at least 8 bytes each"), std::string::npos) << e.what();
  }
  // vector<array<char, 4096>>: sizeof each.
  EXPECT_EQ((mproc::from_bytes<std::vector<std::array<char, 4096>>>(tagged(2, 8192)).size()), 2u);
  EXPECT_THROW((void)(mproc::from_bytes<std::vector<std::array<char, 4096>>>(tagged(3, 8192))),
               mproc::DeserializeError);
  // map<int, string>: 4 + 8 bytes per entry; set<string>: 8.
  EXPECT_THROW((void)(mproc::from_bytes<std::map<int, std::string>>(tagged(3, 35))), mproc::DeserializeError);
  EXPECT_THROW((void)mproc::from_bytes<std::set<std::string>>(tagged(5, 39)), mproc::DeserializeError);
  // optional / variant elements: their flag or index.
  EXPECT_THROW((void)(mproc::from_bytes<std::vector<std::variant<int, double>>>(tagged(4, 31))),
               mproc::DeserializeError);
  EXPECT_EQ((mproc::from_bytes<std::vector<std::optional<int>>>(tagged(7, 7, std::byte{1})).size()), 7u);  // nullopts
}

// Honest values of the bounded types still round trip, large and nested.
TEST(SerializeBounds, HonestValuesRoundTrip) {
  std::vector<Person> people(3000);
  for (std::size_t i = 0; i < people.size(); ++i) {
    people[i].name = std::string(i % 40, 'p');
    people[i].scores.assign(i % 7, static_cast<int>(i));
    if (i % 3 == 0) people[i].extra = std::map<std::string, double>{{"k", 1.5}};
  }
  const auto back = mproc::from_bytes<std::vector<Person>>(mproc::to_bytes(people));
  ASSERT_EQ(back.size(), people.size());
  for (std::size_t i = 0; i < people.size(); ++i) {
    EXPECT_EQ(back[i].name, people[i].name);
    EXPECT_EQ(back[i].scores, people[i].scores);
    EXPECT_EQ(back[i].extra, people[i].extra);
  }
  std::vector<std::optional<std::string>> opts(10000);  // 1 byte each on the wire, 40 in memory
  opts[17] = "x";
  EXPECT_EQ(mproc::from_bytes<decltype(opts)>(mproc::to_bytes(opts)), opts);
  std::vector<std::vector<std::vector<std::string>>> deep(50, std::vector<std::vector<std::string>>(20, {"a", "", "bc"}));
  EXPECT_EQ(mproc::from_bytes<decltype(deep)>(mproc::to_bytes(deep)), deep);
  std::list<std::string> l(5000, "li");
  EXPECT_EQ(mproc::from_bytes<decltype(l)>(mproc::to_bytes(l)), l);
  std::deque<std::vector<int>> d(3000, std::vector<int>{1, 2});
  EXPECT_EQ(mproc::from_bytes<decltype(d)>(mproc::to_bytes(d)), d);
  std::vector<bool> bits(1001, true);
  EXPECT_EQ(mproc::from_bytes<decltype(bits)>(mproc::to_bytes(bits)), bits);
  std::u32string wide(1000, U'x');
  EXPECT_EQ(mproc::from_bytes<std::u32string>(mproc::to_bytes(wide)), wide);
  EXPECT_THROW((void)mproc::from_bytes<std::u32string>(Bytes(mproc::to_bytes(std::uint64_t{3}))), mproc::DeserializeError);
}

// Out of memory while decoding, under RLIMIT_AS in a child: a 64 MiB message
// of 8M empty strings needs 256 MiB to hold (an honest value), with 48 MiB
// of address space left (more than any free heap a test process keeps).
// Before: std::bad_alloc escaped from from_bytes.
// A bool (and so std::optional's flag) other than 0 or 1 is refused before
// any code reads it (reading it would be undefined behaviour; UBSan found
// one through SeededFuzzInputs).
TEST(SerializeBounds, BoolOtherThanZeroOrOneIsRefused) {
  mproc::Bytes flag{std::byte{2}};
  EXPECT_THROW((void)mproc::from_bytes<bool>(flag), mproc::DeserializeError);
  mproc::Bytes opt{std::byte{2}, std::byte{7}, std::byte{0}, std::byte{0}, std::byte{0}};
  EXPECT_THROW((void)mproc::from_bytes<std::optional<int>>(opt), mproc::DeserializeError);
  EXPECT_EQ(mproc::from_bytes<std::optional<int>>(mproc::to_bytes(std::optional<int>(7))), std::optional<int>(7));
  EXPECT_TRUE(mproc::from_bytes<bool>(mproc::to_bytes(true)));
}

TEST(SerializeBounds, OutOfMemoryIsDeserializeError) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  // The sanitizer's allocator reports an allocation over RLIMIT_AS as its own
  // fatal error instead of throwing std::bad_alloc: nothing to convert.
  GTEST_SKIP() << "RLIMIT_AS out-of-memory is a sanitizer report, not std::bad_alloc, in a sanitizer build";
#endif
  const std::uint64_t strings = 8 << 20;
  Bytes message((strings + 1) * 8, std::byte{0});  // the count, then an 8-byte zero size per string
  std::memcpy(message.data(), &strings, 8);
  int report[2];
  ASSERT_EQ(::pipe(report), 0);
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::close(report[0]);
    long vm_kb = -1;
    std::ifstream status("/proc/self/status");
    for (std::string line; std::getline(status, line);)
      if (line.rfind("VmSize:", 0) == 0) vm_kb = std::stol(line.substr(7));
    status.close();
    const rlim_t limit = static_cast<rlim_t>(vm_kb) * 1024 + (rlim_t{48} << 20);
    const rlimit rl{limit, limit};
    char verdict = 'E';  // E: setup failed
    std::string what;
    if (vm_kb > 0 && ::setrlimit(RLIMIT_AS, &rl) == 0) {
      try {
        (void)mproc::from_bytes<std::vector<std::string>>(message);
        verdict = 'N';  // no exception
      } catch (const mproc::DeserializeError& e) {
        verdict = 'D';
        what = e.what();
      } catch (const std::bad_alloc&) {
        verdict = 'B';
      } catch (...) {
        verdict = 'O';
      }
    }
    (void)!::write(report[1], &verdict, 1);
    (void)!::write(report[1], what.data(), what.size());
    ::_exit(0);
  }
  ::close(report[1]);
  std::string got;
  char buf[512];
  for (ssize_t r; (r = ::read(report[0], buf, sizeof buf)) > 0;) got.append(buf, static_cast<std::size_t>(r));
  ::close(report[0]);
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_FALSE(got.empty());
  EXPECT_EQ(got[0], 'D') << "D: DeserializeError, B: std::bad_alloc, N: none, O: other, E: no limit set";
  EXPECT_NE(got.find("from " + std::to_string(message.size()) + " bytes"), std::string::npos) << got;
  EXPECT_NE(got.find("bad_alloc"), std::string::npos) << got;
}

// Seeded random and mutated inputs through the serializer fuzzer's entry
// point: only DeserializeError, round trips stable, and what decoding holds
// stays within a small multiple of the input (the worst common type is
// vector<optional<string>>: 40 bytes held per 1-byte element, doubled while
// the vector grows).
TEST(SerializeBounds, SeededFuzzInputs) {
  std::mt19937_64 rng(12);
  std::vector<Bytes> seeds;
  seeds.push_back(mproc::to_bytes(std::vector<std::string>{"a", "bc"}));
  seeds.push_back(mproc::to_bytes(std::map<int, std::vector<std::string>>{{1, {"x"}}, {2, {}}}));
  seeds.push_back(mproc::to_bytes(std::vector<std::vector<std::vector<std::string>>>{{{"q"}}, {}}));
  seeds.push_back(mproc::to_bytes(std::tuple<int, std::string, std::optional<double>>{1, "t", 2.0}));
  for (int iter = 0; iter < 4000; ++iter) {
    Bytes in;
    if (iter % 2 == 0) {
      in.resize(1 + rng() % 200);
      for (auto& b : in) b = static_cast<std::byte>(rng() % 4 == 0 ? rng() : rng() % 3);
    } else {
      in = seeds[rng() % seeds.size()];
      for (int m = 0; m < 3; ++m)
        if (!in.empty()) in[rng() % in.size()] = static_cast<std::byte>(rng());
    }
    in.insert(in.begin(), static_cast<std::byte>(iter % mproc::fuzz::kCommonTypeCount));
    std::size_t peak = 0;
    mproc::fuzz::decode_as_common_type(in, [&](auto&& decode) {
      mproc::test::AllocCounter count;
      decode();
      peak = count.peak();
    });
    ASSERT_LE(peak, 96 * in.size() + (64 << 10)) << "input " << iter;
  }
}
