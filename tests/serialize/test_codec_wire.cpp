// The light codec (mproc/detail/codec.hpp) and serialize.hpp's cereal bridge
// write exactly the bytes that the cereal-only serialization wrote before
// issue 15 split it: the expected strings were printed by main's
// serialize.hpp (commit cfe56a6) for the same values, so nothing changed on
// the wire between processes.
#include <gtest/gtest.h>

#include <array>
#include <chrono>
#include <complex>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <deque>
#include <list>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <variant>
#include <vector>

#include "mproc/serialize.hpp"

namespace {

using mproc::to_bytes;

struct P {  // trivially copyable, no padding: its bytes
  int x;
  float y;
  char t[4];
};
struct Q {  // member serialize
  std::string s;
  std::vector<int> v;
  template <class A>
  void serialize(A& a) {
    a(s, v);
  }
};
struct R {  // trivially copyable with a non-member serialize: that, not its bytes
  std::uint8_t r = 1, g = 2, b = 3, u = 4;
};
template <class A>
void serialize(A& a, R& c) {
  a(c.r, c.g, c.b);
}
enum class E : short { a = 7 };

std::string hex(const mproc::Bytes& b) {
  std::string s;
  char two[3];
  for (std::byte x : b) {
    std::snprintf(two, sizeof two, "%02x", static_cast<unsigned>(x));
    s += two;
  }
  return s;
}

}  // namespace

TEST(CodecWire, SameBytesAsCerealBefore) {
  EXPECT_EQ(hex(to_bytes(std::map<std::string, std::vector<int>>{{"a", {1, 2}}, {"bc", {}}})), "020000000000000001000000000000006102000000000000000100000002000000020000000000000062630000000000000000");
  EXPECT_EQ(hex(to_bytes(P{1, 2.5f, {1,2,3,4}})), "010000000000204001020304");
  EXPECT_EQ(hex(to_bytes(std::vector<P>{P{1, 2.5f, {1,2,3,4}}})), "0100000000000000010000000000204001020304");
  EXPECT_EQ(hex(to_bytes(Q{"x", {3}})), "010000000000000078010000000000000003000000");
  EXPECT_EQ(hex(to_bytes(R{})), "010203");
  EXPECT_EQ(hex(to_bytes(E::a)), "0700");
  EXPECT_EQ(hex(to_bytes(std::optional<int>{}, std::optional<int>{5}, std::optional<std::string>{"s"})), "01000500000000010000000000000073");
  EXPECT_EQ(hex(to_bytes(std::tuple<int, std::string, char>{1, "y", 'c'})), "0100000001000000000000007963");
  EXPECT_EQ(hex(to_bytes(std::vector<bool>{true, false, true})), "0300000000000000010001");
  EXPECT_EQ(hex(to_bytes(std::set<std::string>{"z", "a"})), "020000000000000001000000000000006101000000000000007a");
  EXPECT_EQ(hex(to_bytes(std::deque<int>{1, 2})), "02000000000000000100000002000000");
  EXPECT_EQ(hex(to_bytes(std::list<std::string>{"q"})), "0100000000000000010000000000000071");
  EXPECT_EQ(hex(to_bytes(std::array<int, 3>{1, 2, 3})), "010000000200000003000000");
  EXPECT_EQ(hex(to_bytes(std::array<std::string, 2>{"a", "b"})), "010000000000000061010000000000000062");
  EXPECT_EQ(hex(to_bytes(std::pair<int, double>{1, 2.0})), "010000000000000000000040");
  EXPECT_EQ(hex(to_bytes(std::chrono::milliseconds(1500))), "dc05000000000000");
  EXPECT_EQ(hex(to_bytes(std::complex<double>(1, 2))), "000000000000f03f0000000000000040");
  EXPECT_EQ(hex(to_bytes(std::variant<int, std::string>{std::string("v")})), "01000000010000000000000076");
  EXPECT_EQ(hex(to_bytes(std::variant<std::monostate, int>{})), "00000000");
  EXPECT_EQ(hex(to_bytes(std::unique_ptr<int>(new int(5)))), "0105000000");
  EXPECT_EQ(hex(to_bytes(std::shared_ptr<std::string>(new std::string("sp")))), "0100008002000000000000007370");
  EXPECT_EQ(hex(to_bytes(std::vector<std::variant<int, Q>>{Q{"n", {1}}, 4})), "02000000000000000100000001000000000000006e0100000000000000010000000000000004000000");
  EXPECT_EQ(hex(to_bytes(std::unordered_map<int, int>{{1, 2}})), "01000000000000000100000002000000");
  EXPECT_EQ(hex(to_bytes(std::vector<std::vector<int>>{{1}, {}})), "02000000000000000100000000000000010000000000000000000000");
  EXPECT_EQ(hex(to_bytes(mproc::ErrorInfo{"t", "m"})), "01000000000000007401000000000000006d");
  EXPECT_EQ(hex(to_bytes(true, 'c', 1.5f, std::uint64_t{9})), "01630000c03f0900000000000000");
}
