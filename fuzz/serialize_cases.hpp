// The serializer's fuzz entry point, shared by fuzz/fuzz_serialize.cpp
// (libFuzzer) and tests/serialize/test_serialize_bounds.cpp (seeded inputs every
// run): in[0] picks one of the common types below, the rest of the input is
// decoded as that type. Decoding may only throw DeserializeError; a value
// that decodes is encoded again, and that encoding must decode to the same
// bytes (a round trip through the receiver's own view of the value; for
// unordered containers, whose order may change, the same size).
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstdio>
#include <deque>
#include <list>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <variant>
#include <vector>

#include "mproc/errors.hpp"
#include "mproc/serialize.hpp"

namespace mproc::fuzz {

struct Person {  // a user type with cereal's serialize()
  std::string name;
  std::vector<int> scores;
  std::optional<std::map<std::string, double>> extra;
  template <class A>
  void serialize(A& ar) {
    ar(name, scores, extra);
  }
};

using CommonTypes = std::tuple<
    int, double, std::string, std::vector<int>, std::vector<std::string>, std::vector<std::vector<int>>,
    std::vector<std::vector<std::vector<std::string>>>, std::map<std::string, int>,
    std::map<int, std::vector<std::string>>, std::multimap<std::string, std::set<int>>, std::set<std::string>,
    std::unordered_map<std::string, std::vector<double>>, std::unordered_set<std::int64_t>,
    std::tuple<int, std::string, std::optional<double>>, std::optional<std::vector<int>>,
    std::variant<int, std::string, std::vector<int>>, std::vector<std::variant<std::monostate, int, std::string>>,
    std::list<std::string>, std::deque<std::uint16_t>, std::vector<bool>, std::vector<std::array<char, 64>>,
    std::pair<std::string, std::vector<std::pair<int, std::string>>>, std::vector<std::optional<std::string>>,
    Person, std::vector<Person>, std::unique_ptr<std::vector<std::string>>, std::vector<std::uint8_t>, ErrorInfo>;
inline constexpr std::size_t kCommonTypeCount = std::tuple_size_v<CommonTypes>;

template <class T> struct is_unordered : std::false_type {};
template <class K, class V, class H, class E, class A>
struct is_unordered<std::unordered_map<K, V, H, E, A>> : std::true_type {};
template <class K, class H, class E, class A> struct is_unordered<std::unordered_set<K, H, E, A>> : std::true_type {};

// meter(f) runs f, the first decoding alone (so a caller can measure what
// it allocates).
template <class T, class Meter>
void decode_one(std::span<const std::byte> in, Meter& meter) {
  T value{};
  bool decoded = false;
  meter([&] {
    try {
      value = from_bytes<T>(in);
      decoded = true;
    } catch (const DeserializeError&) {  // the one error bad input may give
    }
  });
  if (!decoded) return;
  const Bytes again = to_bytes(value);
  if constexpr (is_unordered<T>::value) {  // iteration order may change: compare as sets
    const std::size_t size = value.size();
    value = T{};
    if (from_bytes<T>(again).size() == size) return;
  } else {
    value = T{};
    if (to_bytes(from_bytes<T>(again)) == again) return;
  }
  std::fprintf(stderr, "round trip changed a value of %s\n", demangle(typeid(T).name()).c_str());
  std::abort();
}

template <class Meter, std::size_t... I>
void decode_by_index(std::size_t index, std::span<const std::byte> in, Meter& meter, std::index_sequence<I...>) {
  ((index == I ? decode_one<std::tuple_element_t<I, CommonTypes>>(in, meter) : void()), ...);
}

// Decodes in[1...] as common type number in[0] (modulo their count).
template <class Meter>
void decode_as_common_type(std::span<const std::byte> in, Meter&& meter) {
  if (in.empty()) return;
  const auto index = static_cast<std::size_t>(in[0]) % kCommonTypeCount;
  decode_by_index(index, in.subspan(1), meter, std::make_index_sequence<kCommonTypeCount>{});
}

}  // namespace mproc::fuzz
