// mproc's own loads of the standard containers, so that decoding a message
// cannot amplify it (included by serialize.hpp; saves stay cereal's, so the
// bytes on the wire are unchanged).
//
// Two rules, for every container:
// 1. A count n is refused (DeserializeError) when n elements cannot fit in
//    the bytes left: n > remaining / min_wire_size<element>, where
//    min_wire_size is the fewest bytes one element can take (a string or a
//    nested container: its 8-byte size tag; an int: 4; a user type with its
//    own serialize(): 1, unknown).
// 2. Before any element is read, a container allocates at most
//    kMaxAmplification times the bytes left; past that it grows only as
//    elements are decoded (each of which consumes input). Node containers
//    (map, set, list, deque, unordered_*) allocate per decoded element.
// So the memory a hostile message can make the receiver hold while decoding
// is at most what an honest message of the same size and type holds, plus
// kMaxAmplification × its size per level of container nesting.
// (These overloads are more specialized than cereal's, which they replace
// for the cereal side of serialize.hpp, cb::CerealIn, only; the light
// codec, mproc/detail/codec.hpp, applies the same two rules itself.)
#pragma once
#include <algorithm>
#include <chrono>
#include <complex>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <list>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <variant>
#include <vector>

namespace mproc::detail {

namespace cb {

// ---- the fewest bytes one T takes on the wire --------------------------
template <class T>
struct min_wire {
  static constexpr std::size_t get() {
    if constexpr (std::is_arithmetic_v<T> || std::is_enum_v<T>) return sizeof(T);
    else if constexpr (std::is_class_v<T>) return cereal_bitwise_v<T> ? sizeof(T) : 1;  // 1: unknown
    else return 1;
  }
  static constexpr std::size_t value = get();
};
template <class T>
inline constexpr std::size_t min_wire_size = min_wire<std::remove_cv_t<T>>::value;

// Everything that starts with a size tag.
inline constexpr std::size_t kSizeTagBytes = sizeof(cereal::size_type);
template <class C, class Tr, class A> struct min_wire<std::basic_string<C, Tr, A>> : min_wire<cereal::size_type> {};
template <class T, class A> struct min_wire<std::vector<T, A>> : min_wire<cereal::size_type> {};
template <class T, class A> struct min_wire<std::deque<T, A>> : min_wire<cereal::size_type> {};
template <class T, class A> struct min_wire<std::list<T, A>> : min_wire<cereal::size_type> {};
template <class K, class C, class A> struct min_wire<std::set<K, C, A>> : min_wire<cereal::size_type> {};
template <class K, class C, class A> struct min_wire<std::multiset<K, C, A>> : min_wire<cereal::size_type> {};
template <class K, class V, class C, class A> struct min_wire<std::map<K, V, C, A>> : min_wire<cereal::size_type> {};
template <class K, class V, class C, class A>
struct min_wire<std::multimap<K, V, C, A>> : min_wire<cereal::size_type> {};
template <class K, class H, class E, class A>
struct min_wire<std::unordered_set<K, H, E, A>> : min_wire<cereal::size_type> {};
template <class K, class H, class E, class A>
struct min_wire<std::unordered_multiset<K, H, E, A>> : min_wire<cereal::size_type> {};
template <class K, class V, class H, class E, class A>
struct min_wire<std::unordered_map<K, V, H, E, A>> : min_wire<cereal::size_type> {};
template <class K, class V, class H, class E, class A>
struct min_wire<std::unordered_multimap<K, V, H, E, A>> : min_wire<cereal::size_type> {};
// Composites: the sum of their parts.
template <class T, std::size_t N>
struct min_wire<std::array<T, N>> : std::integral_constant<std::size_t, N * min_wire_size<T>> {};
template <class A, class B>
struct min_wire<std::pair<A, B>> : std::integral_constant<std::size_t, min_wire_size<A> + min_wire_size<B>> {};
template <class... Ts>
struct min_wire<std::tuple<Ts...>> : std::integral_constant<std::size_t, (std::size_t{0} + ... + min_wire_size<Ts>)> {};
// optional: its bool flag; variant: its int32 index and the smallest
// alternative; smart pointers: a 1-byte (unique) or 4-byte (shared) tag.
template <class T> struct min_wire<std::optional<T>> : std::integral_constant<std::size_t, 1> {};
template <class... Ts>
struct min_wire<std::variant<Ts...>>
    : std::integral_constant<std::size_t, sizeof(std::int32_t) + std::min({min_wire_size<Ts>...})> {};
template <> struct min_wire<std::monostate> : std::integral_constant<std::size_t, 0> {};
template <class T, class D> struct min_wire<std::unique_ptr<T, D>> : std::integral_constant<std::size_t, 1> {};
template <class T> struct min_wire<std::shared_ptr<T>> : std::integral_constant<std::size_t, 1> {};
template <class R, class P> struct min_wire<std::chrono::duration<R, P>> : min_wire<R> {};
template <class C, class D> struct min_wire<std::chrono::time_point<C, D>> : min_wire<D> {};
template <class T> struct min_wire<std::complex<T>> : std::integral_constant<std::size_t, 2 * sizeof(T)> {};

// Reads a container's size tag and refuses a count whose elements cannot
// fit in the bytes left (rule 1).
template <class Elem>
std::size_t load_count(CerealIn& ar) {
  cereal::size_type n = 0;
  ar(cereal::make_size_tag(n));
  constexpr std::size_t each = std::max<std::size_t>(min_wire_size<Elem>, 1);
  if (n > ar.remaining() / each) ar.throw_size(static_cast<std::uint64_t>(n), each);
  return static_cast<std::size_t>(n);
}

// How many elements of `bytes_each` may be allocated before any is read
// (rule 2).
inline std::size_t up_front(const CerealIn& ar, std::size_t n, std::size_t bytes_each) {
  const std::size_t allowed = std::max<std::size_t>(1, ar.remaining() * kMaxAmplification / bytes_each);
  return std::min(n, allowed);
}

// vector / deque / list of non-arithmetic elements.
template <class Seq>
void load_sequence(CerealIn& ar, Seq& seq) {
  using T = typename Seq::value_type;
  const std::size_t n = load_count<T>(ar);
  seq.clear();
  if constexpr (std::is_same_v<Seq, std::vector<T, typename Seq::allocator_type>>) {
    const std::size_t first = up_front(ar, n, sizeof(T));
    if (first == n) {  // the common case: allocate once, load in place
      seq.resize(n);
      for (auto& x : seq) ar(x);
      return;
    }
    seq.reserve(first);
  }
  for (std::size_t i = 0; i < n; ++i) ar(seq.emplace_back());
}

template <class Set>
void load_set(CerealIn& ar, Set& set) {
  using K = typename Set::key_type;
  const std::size_t n = load_count<K>(ar);
  set.clear();
  auto hint = set.begin();
  for (std::size_t i = 0; i < n; ++i) {
    K key{};
    ar(key);
    hint = emplace_in_wire_order(set, hint, std::move(key));
  }
}

template <class Map>
void load_map(CerealIn& ar, Map& map) {
  using K = typename Map::key_type;
  using V = typename Map::mapped_type;
  const std::size_t n = load_count<std::pair<K, V>>(ar);
  map.clear();
  auto hint = map.begin();
  for (std::size_t i = 0; i < n; ++i) {
    K key{};
    V value{};
    ar(key, value);
    hint = emplace_in_wire_order(map, hint, std::move(key), std::move(value));
  }
}

}  // namespace cb

// ---- the loads (ADL through mproc::InputArchive) -------------------------
template <class C, class Tr, class A>
void CEREAL_LOAD_FUNCTION_NAME(CerealIn& ar, std::basic_string<C, Tr, A>& s) {
  const std::size_t n = cb::load_count<C>(ar);
  s.resize(n);
  ar.loadBinary(s.data(), n * sizeof(C));
}

template <class T, class A>
std::enable_if_t<!std::is_same_v<T, bool> && !std::is_same_v<T, std::byte>> CEREAL_LOAD_FUNCTION_NAME(
    CerealIn& ar, std::vector<T, A>& v) {
  if constexpr (std::is_arithmetic_v<T>) {  // one block, as cereal writes it
    const std::size_t n = cb::load_count<T>(ar);
    v.resize(n);
    ar.loadBinary(v.data(), n * sizeof(T));
  } else {
    cb::load_sequence(ar, v);
  }
}

template <class A>
void CEREAL_LOAD_FUNCTION_NAME(CerealIn& ar, std::vector<bool, A>& v) {
  const std::size_t n = cb::load_count<bool>(ar);
  v.resize(n);
  for (auto&& bit : v) {
    bool b = false;
    ar(b);
    bit = b;
  }
}

template <class T, class A>
void CEREAL_LOAD_FUNCTION_NAME(CerealIn& ar, std::deque<T, A>& d) {
  cb::load_sequence(ar, d);
}
template <class T, class A>
void CEREAL_LOAD_FUNCTION_NAME(CerealIn& ar, std::list<T, A>& l) {
  cb::load_sequence(ar, l);
}

template <class K, class C, class A>
void CEREAL_LOAD_FUNCTION_NAME(CerealIn& ar, std::set<K, C, A>& s) {
  cb::load_set(ar, s);
}
template <class K, class C, class A>
void CEREAL_LOAD_FUNCTION_NAME(CerealIn& ar, std::multiset<K, C, A>& s) {
  cb::load_set(ar, s);
}
template <class K, class H, class E, class A>
void CEREAL_LOAD_FUNCTION_NAME(CerealIn& ar, std::unordered_set<K, H, E, A>& s) {
  cb::load_set(ar, s);
}
template <class K, class H, class E, class A>
void CEREAL_LOAD_FUNCTION_NAME(CerealIn& ar, std::unordered_multiset<K, H, E, A>& s) {
  cb::load_set(ar, s);
}

template <class K, class V, class C, class A>
void CEREAL_LOAD_FUNCTION_NAME(CerealIn& ar, std::map<K, V, C, A>& m) {
  cb::load_map(ar, m);
}
template <class K, class V, class C, class A>
void CEREAL_LOAD_FUNCTION_NAME(CerealIn& ar, std::multimap<K, V, C, A>& m) {
  cb::load_map(ar, m);
}
template <class K, class V, class H, class E, class A>
void CEREAL_LOAD_FUNCTION_NAME(CerealIn& ar, std::unordered_map<K, V, H, E, A>& m) {
  cb::load_map(ar, m);
}
template <class K, class V, class H, class E, class A>
void CEREAL_LOAD_FUNCTION_NAME(CerealIn& ar, std::unordered_multimap<K, V, H, E, A>& m) {
  cb::load_map(ar, m);
}

}  // namespace mproc::detail
