// The light codec: mproc's binary archives and the encoding of the types
// tasks normally carry, without cereal (issue 15: a file including
// `<mproc/process.hpp>` must stay small).
//
// Encoded here, byte for byte as cereal's binary archives write them (so the
// wire did not change when cereal left the public path):
//   bool (one byte, 0 or 1), arithmetic types, std::byte, enums (their
//   underlying bytes); std::basic_string and std::vector (a u64 size tag, then
//   the elements; one block for elements that are their own bytes);
//   std::array, std::pair, std::tuple (the elements); std::optional (a bool
//   "is empty", then the value); any standard-like container by its members
//   (size tag, then the elements; a map's as key, value); trivially copyable
//   classes with no serialization of their own (their bytes); classes with a
//   `serialize(A&)` member, `save(A&) const` + `load(A&)` members, or a
//   non-member `serialize(A&, T&)` / `save` + `load` found by ADL.
// Everything else (std::variant, smart pointers, cereal's wrappers, types
// that need cereal itself) is an "extension" that `<mproc/serialize.hpp>`
// encodes through cereal: using one without that header is a compile error
// naming it (`detail::ExtCodec` is declared here, defined there), never a
// second encoding of the same type.
//
// Decoding cannot amplify: a size tag is refused (DeserializeError naming the
// count and the bytes left) when its elements cannot fit in the bytes left
// (min_wire_size: the fewest bytes one element takes), and a container
// allocates up front at most kMaxAmplification times the bytes left, growing
// past that only as elements are decoded.
#pragma once
#include <initializer_list>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <new>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <vector>

#include "mproc/detail/archive.hpp"
#include "mproc/errors.hpp"

namespace mproc {

namespace detail {

template <class T>
struct serializable;
template <class T>
inline constexpr bool serializable_v = serializable<std::remove_cv_t<T>>::value;
template <class... Ts>
inline constexpr bool all_serializable_v = (serializable_v<Ts> && ...);
template <class T>
constexpr std::size_t min_wire_of();
template <class T>
inline constexpr std::size_t min_wire_size = min_wire_of<std::remove_cv_t<T>>();

// ---- extensions: encoded by <mproc/serialize.hpp> --------------------------
// ext_family<T>::value: T is encoded by serialize.hpp and its elements are
// serializable; ::min_wire: the fewest bytes one T takes. std::variant and
// the smart pointers are recognised here by their shape, without their
// headers, so that every file agrees on which types are extensions and
// whether they are serializable; serialize.hpp adds cereal's wrappers.
template <class T>
concept variant_like = requires(const T& t) {
  t.index();
  t.valueless_by_exception();
};
template <class T>
concept pointer_like = requires(T& t) {
  typename T::element_type;
  t.get();
  static_cast<bool>(t);
  t.reset();
};
template <class T>
struct ext_family : std::false_type {};
constexpr std::size_t least_of(std::initializer_list<std::size_t> sizes) {
  std::size_t least = ~std::size_t{0};
  for (std::size_t s : sizes) least = s < least ? s : least;
  return least;
}
template <template <class...> class V, class... Ts>
  requires variant_like<V<Ts...>>
struct ext_family<V<Ts...>> : std::bool_constant<all_serializable_v<Ts...>> {
  // cereal writes the index as an int32, then the alternative (an empty
  // one, std::monostate, as nothing).
  static constexpr std::size_t min_wire =
      sizeof(std::int32_t) + least_of({(std::is_empty_v<Ts> ? std::size_t{0} : min_wire_size<Ts>)...});
};
template <class P>
  requires pointer_like<P>
struct ext_family<P> : std::bool_constant<serializable_v<typename P::element_type>> {
  static constexpr std::size_t min_wire = 1;  // a validity byte or a 4-byte id
};
template <class T, class Enable = void>
struct ExtCodec;  // save(OutputArchive&, const T&), load(InputArchive&, T&)
template <class T>
concept ext_codec_defined = requires { sizeof(ExtCodec<T>); };

// ---- what a type is ------------------------------------------------------
template <class T, template <class...> class Tmpl>
struct is_spec : std::false_type {};
template <template <class...> class Tmpl, class... A>
struct is_spec<Tmpl<A...>, Tmpl> : std::true_type {};
template <class T>
struct is_std_array : std::false_type {};
template <class T, std::size_t N>
struct is_std_array<std::array<T, N>> : std::true_type {};
template <class T>
struct is_view : std::false_type {};
template <class C, class Tr>
struct is_view<std::basic_string_view<C, Tr>> : std::true_type {};
template <class T, std::size_t N>
struct is_view<std::span<T, N>> : std::true_type {};

template <class T>
inline constexpr bool is_string_v = is_spec<T, std::basic_string>::value;
template <class T>
inline constexpr bool is_vector_v = is_spec<T, std::vector>::value;

// Encoded as their own bytes (sizeof(T) of them).
template <class T>
inline constexpr bool is_scalar_codec_v =
    (std::is_arithmetic_v<T> && !std::is_same_v<T, bool>) || std::is_enum_v<T>;

// The serialization a class brings: members, or non-members found by ADL.
// (cereal's versioned forms, save_minimal and private members reached
// through cereal::access are not seen here: a class using them gets
// cereal's handling only through serialize.hpp's bridge, inside
// extensions.)
namespace adl {
void serialize() = delete;
void save() = delete;
void load() = delete;
template <class T>
concept member_serialize = requires(T& t, OutputArchive& o, InputArchive& i) {
  t.serialize(o);
  t.serialize(i);
};
template <class T>
concept member_save_load = requires(const T& ct, T& t, OutputArchive& o, InputArchive& i) {
  ct.save(o);
  t.load(i);
};
template <class T>
concept free_serialize = requires(T& t, OutputArchive& o, InputArchive& i) {
  serialize(o, t);
  serialize(i, t);
};
template <class T>
concept free_save_load = requires(const T& ct, T& t, OutputArchive& o, InputArchive& i) {
  save(o, ct);
  load(i, t);
};
template <class T>
void call_free_serialize(OutputArchive& o, const T& t) {
  serialize(o, const_cast<T&>(t));
}
template <class T>
void call_free_serialize(InputArchive& i, T& t) {
  serialize(i, t);
}
template <class T>
void call_free_save(OutputArchive& o, const T& t) {
  save(o, t);
}
template <class T>
void call_free_load(InputArchive& i, T& t) {
  load(i, t);
}
}  // namespace adl

template <class T>
concept has_own_serialization =
    adl::member_serialize<T> || adl::member_save_load<T> || adl::free_serialize<T> || adl::free_save_load<T>;

// A standard-like container, encoded as size tag + elements.
template <class C>
concept sequence_like = requires(C& c) {
  typename C::value_type;
  c.size();
  c.begin();
  c.end();
  c.clear();
  c.emplace_back();
};
template <class C>
concept set_like = requires(C& c, typename C::key_type k) {
  typename C::value_type;
  c.size();
  c.begin();
  c.end();
  c.clear();
  c.emplace_hint(c.begin(), std::move(k));
} && std::is_same_v<typename C::key_type, typename C::value_type>;
template <class C>
concept map_like = requires(C& c, typename C::key_type k, typename C::mapped_type v) {
  c.size();
  c.begin();
  c.end();
  c.clear();
  c.emplace_hint(c.begin(), std::move(k), std::move(v));
};

// Inserts a decoded element of a map or set where the sender's iteration
// order puts it, so the equal keys of a multimap or multiset keep their
// order. Ordered: at end(), O(1) for the sorted order a sender writes and
// still right, O(log n), for any other (a hint at the previous element would
// put an equal key in front of it, reversing runs of equal keys). Unordered:
// after the previous element, the one hint libstdc++ follows for an equal
// key (without it a new equal key goes in front of its equals).
template <class C, class... Args>
typename C::iterator emplace_in_wire_order(C& c, typename C::iterator previous, Args&&... args) {
  if constexpr (requires { typename C::key_compare; }) return c.emplace_hint(c.end(), std::forward<Args>(args)...);
  else return c.emplace_hint(previous, std::forward<Args>(args)...);
}

// A trivially copyable class with no serialization of its own is copied as
// bytes. It must also be copy-constructible (GCC calls std::mutex trivially
// copyable). Views are excluded: their pointers mean nothing elsewhere.
template <class T>
inline constexpr bool bitwise_v = std::is_class_v<T> && std::is_trivially_copyable_v<T> &&
                                  std::is_copy_constructible_v<T> && !is_view<T>::value;

// The kinds, in the order they are tried.
enum class Kind { unsupported, boolean, scalar, byte, string, vector, array, pair, tuple, optional, ext,
                  member_serialize, member_save_load, free_serialize, free_save_load, map, set, sequence,
                  bitwise };
template <class T>
constexpr Kind kind_of() {
  if constexpr (std::is_same_v<T, bool>) return Kind::boolean;
  else if constexpr (std::is_same_v<T, std::byte>) return Kind::byte;
  else if constexpr (is_scalar_codec_v<T>) return Kind::scalar;
  else if constexpr (!std::is_class_v<T> || is_view<T>::value) return Kind::unsupported;
  else if constexpr (is_string_v<T>) return Kind::string;
  else if constexpr (is_vector_v<T>) return Kind::vector;
  else if constexpr (is_std_array<T>::value) return Kind::array;
  else if constexpr (is_spec<T, std::pair>::value) return Kind::pair;
  else if constexpr (is_spec<T, std::tuple>::value) return Kind::tuple;
  else if constexpr (is_spec<T, std::optional>::value) return Kind::optional;
  else if constexpr (ext_family<T>::value) return Kind::ext;
  else if constexpr (adl::member_serialize<T>) return Kind::member_serialize;
  else if constexpr (adl::member_save_load<T>) return Kind::member_save_load;
  else if constexpr (adl::free_serialize<T>) return Kind::free_serialize;
  else if constexpr (adl::free_save_load<T>) return Kind::free_save_load;
  else if constexpr (map_like<T>) return Kind::map;
  else if constexpr (set_like<T>) return Kind::set;
  else if constexpr (sequence_like<T>) return Kind::sequence;
  else if constexpr (bitwise_v<T>) return Kind::bitwise;
  else return Kind::unsupported;
}
template <class T>
inline constexpr Kind kind_v = kind_of<std::remove_cv_t<T>>();

template <class T, Kind K = kind_v<T>>
struct serializable_impl : std::bool_constant<K != Kind::unsupported> {};
template <class T>
struct serializable_impl<T, Kind::ext> : std::bool_constant<ext_family<T>::value> {};
template <class T>
struct serializable_impl<T, Kind::vector> : std::bool_constant<serializable_v<typename T::value_type>> {};
template <class T>
struct serializable_impl<T, Kind::array> : std::bool_constant<serializable_v<typename T::value_type>> {};
template <class T>
struct serializable_impl<T, Kind::sequence> : std::bool_constant<serializable_v<typename T::value_type>> {};
template <class T>
struct serializable_impl<T, Kind::set> : std::bool_constant<serializable_v<typename T::key_type>> {};
template <class T>
struct serializable_impl<T, Kind::map>
    : std::bool_constant<serializable_v<typename T::key_type> && serializable_v<typename T::mapped_type>> {};
template <class A, class B>
struct serializable_impl<std::pair<A, B>, Kind::pair> : std::bool_constant<all_serializable_v<A, B>> {};
template <class... Ts>
struct serializable_impl<std::tuple<Ts...>, Kind::tuple> : std::bool_constant<all_serializable_v<Ts...>> {};
template <class T>
struct serializable_impl<std::optional<T>, Kind::optional> : std::bool_constant<serializable_v<T>> {};
template <class T>
struct serializable : serializable_impl<T> {};

// ---- the fewest bytes one T takes on the wire --------------------------
template <class Tuple>
struct min_wire_sum;
template <template <class...> class Tmpl, class... Ts>
struct min_wire_sum<Tmpl<Ts...>> : std::integral_constant<std::size_t, (std::size_t{0} + ... + min_wire_size<Ts>)> {};
template <class T>
constexpr std::size_t min_wire_of() {
  constexpr Kind k = kind_v<T>;
  if constexpr (k == Kind::boolean || k == Kind::byte) return 1;
  else if constexpr (k == Kind::scalar || k == Kind::bitwise) return sizeof(T);
  else if constexpr (k == Kind::string || k == Kind::vector || k == Kind::map || k == Kind::set ||
                     k == Kind::sequence)
    return sizeof(std::uint64_t);
  else if constexpr (k == Kind::array) return std::tuple_size_v<T> * min_wire_size<typename T::value_type>;
  else if constexpr (k == Kind::pair || k == Kind::tuple) return min_wire_sum<T>::value;
  else if constexpr (k == Kind::optional) return 1;
  else if constexpr (k == Kind::ext) {
    if constexpr (requires { ext_family<T>::min_wire; }) return ext_family<T>::min_wire;
    else return 1;
  } else return 1;  // unknown: a user type's own serialization
}

// How many elements of `bytes_each` may be allocated before any is read.
inline std::size_t up_front(const InputArchive& ar, std::size_t n, std::size_t bytes_each) {
  std::size_t allowed = ar.remaining() * kMaxAmplification / (bytes_each == 0 ? 1 : bytes_each);
  if (allowed == 0) allowed = 1;
  return n < allowed ? n : allowed;
}

template <class T>
void no_encoding() {
  static_assert(sizeof(T) == 0,
                "mproc: this type cannot be serialized by <mproc/process.hpp> and friends alone: "
                "std::variant, smart pointers and cereal's wrappers need #include <mproc/serialize.hpp>; "
                "a class of your own needs a serialize(A&) member (or save/load)");
}

template <class T>
void encode(OutputArchive& ar, const T& t) {
  constexpr Kind k = kind_v<T>;
  if constexpr (k == Kind::boolean) {
    const unsigned char v = t ? 1 : 0;
    ar.saveBinary(&v, 1);
  } else if constexpr (k == Kind::scalar || k == Kind::byte || k == Kind::bitwise) {
    ar.saveBinary(&t, sizeof(T));
  } else if constexpr (k == Kind::string) {
    ar.save_size(t.size());
    ar.saveBinary(t.data(), t.size() * sizeof(typename T::value_type));
  } else if constexpr (k == Kind::vector) {
    using E = typename T::value_type;
    ar.save_size(t.size());
    constexpr Kind ek = kind_v<E>;
    if constexpr (ek == Kind::scalar || ek == Kind::byte || ek == Kind::bitwise) {
      ar.saveBinary(t.data(), t.size() * sizeof(E));  // one block: the same bytes as one by one
    } else {
      for (const auto& e : t) encode(ar, static_cast<const E&>(e));
    }
  } else if constexpr (k == Kind::array) {
    for (const auto& e : t) encode(ar, e);
  } else if constexpr (k == Kind::pair) {
    encode(ar, t.first);
    encode(ar, t.second);
  } else if constexpr (k == Kind::tuple) {
    std::apply([&](const auto&... e) { (encode(ar, e), ...); }, t);
  } else if constexpr (k == Kind::optional) {
    encode(ar, !t.has_value());  // cereal's "nullopt" flag
    if (t) encode(ar, *t);
  } else if constexpr (k == Kind::ext) {
    if constexpr (ext_codec_defined<T>) ExtCodec<T>::save(ar, t);
    else no_encoding<T>();
  } else if constexpr (k == Kind::member_serialize) {
    const_cast<T&>(t).serialize(ar);
  } else if constexpr (k == Kind::member_save_load) {
    t.save(ar);
  } else if constexpr (k == Kind::free_serialize) {
    adl::call_free_serialize(ar, t);
  } else if constexpr (k == Kind::free_save_load) {
    adl::call_free_save(ar, t);
  } else if constexpr (k == Kind::map) {
    ar.save_size(t.size());
    for (const auto& [key, value] : t) {
      encode(ar, key);
      encode(ar, value);
    }
  } else if constexpr (k == Kind::set || k == Kind::sequence) {
    ar.save_size(t.size());
    for (const auto& e : t) encode(ar, e);
  } else {
    no_encoding<T>();
  }
}

// A string or vector of elements that are their own bytes: `n` elements
// (already checked against the bytes left). When the bytes are aligned for E
// (always for byte-sized elements) the container is assigned from them: one
// allocation and one copy, without resize()'s zero-fill first (which wrote
// every byte twice: a 1 MiB argument spent a fifth of its worker's time in
// that memset). Otherwise resize and copy.
template <class E, class C>
void load_contiguous(InputArchive& ar, C& t, std::size_t n) {
  const std::size_t bytes = n * sizeof(E);
  const std::byte* src = ar.take_bytes(bytes);
  if (reinterpret_cast<std::uintptr_t>(src) % alignof(E) != 0) {
    t.resize(n);
    if (bytes != 0) std::memcpy(t.data(), src, bytes);
    return;
  }
  if (bytes >= kPrefaultBytes && t.capacity() < n) {
    t.clear();
    t.reserve(n);  // the allocation assign would make, so it can be prefaulted
    prefault_for_writing(t.data(), bytes);
  }
  const E* first = reinterpret_cast<const E*>(src);  // copied as bytes: the library copies trivial types by memmove
  t.assign(first, first + n);
}

template <class T>
void decode(InputArchive& ar, T& t) {
  constexpr Kind k = kind_v<T>;
  if constexpr (k == Kind::boolean) {
    // Checked: any other value than 0 or 1 would be undefined behaviour once
    // read (std::optional's flag is one: UBSan found it).
    unsigned char v = 0;
    ar.loadBinary(&v, 1);
    if (v > 1) throw DeserializeError("mproc: a bool encoded as " + std::to_string(v) + " (0 or 1 expected)");
    t = v != 0;
  } else if constexpr (k == Kind::scalar || k == Kind::byte || k == Kind::bitwise) {
    ar.loadBinary(&t, sizeof(T));
  } else if constexpr (k == Kind::string) {
    using C = typename T::value_type;
    load_contiguous<C>(ar, t, ar.load_size(sizeof(C)));
  } else if constexpr (k == Kind::vector) {
    using E = typename T::value_type;
    constexpr Kind ek = kind_v<E>;
    const std::size_t n = ar.load_size(min_wire_size<E>);
    if constexpr (ek == Kind::scalar || ek == Kind::byte || ek == Kind::bitwise) {
      load_contiguous<E>(ar, t, n);
    } else if constexpr (ek == Kind::boolean) {
      t.resize(n);
      for (auto&& bit : t) {
        bool b = false;
        decode(ar, b);
        bit = b;
      }
    } else {
      t.clear();
      const std::size_t first = up_front(ar, n, sizeof(E));
      if (first == n) {  // the common case: allocate once, load in place
        t.resize(n);
        for (auto& e : t) decode(ar, e);
        return;
      }
      t.reserve(first);
      for (std::size_t i = 0; i < n; ++i) decode(ar, t.emplace_back());
    }
  } else if constexpr (k == Kind::array) {
    for (auto& e : t) decode(ar, e);
  } else if constexpr (k == Kind::pair) {
    decode(ar, t.first);
    decode(ar, t.second);
  } else if constexpr (k == Kind::tuple) {
    std::apply([&](auto&... e) { (decode(ar, e), ...); }, t);
  } else if constexpr (k == Kind::optional) {
    bool empty = true;
    decode(ar, empty);
    if (empty) {
      t.reset();
    } else {
      t.emplace();
      decode(ar, *t);
    }
  } else if constexpr (k == Kind::ext) {
    if constexpr (ext_codec_defined<T>) ExtCodec<T>::load(ar, t);
    else no_encoding<T>();
  } else if constexpr (k == Kind::member_serialize) {
    t.serialize(ar);
  } else if constexpr (k == Kind::member_save_load) {
    t.load(ar);
  } else if constexpr (k == Kind::free_serialize) {
    adl::call_free_serialize(ar, t);
  } else if constexpr (k == Kind::free_save_load) {
    adl::call_free_load(ar, t);
  } else if constexpr (k == Kind::map) {
    using K = typename T::key_type;
    using V = typename T::mapped_type;
    const std::size_t n = ar.load_size(min_wire_size<K> + min_wire_size<V>);
    t.clear();
    auto hint = t.begin();
    for (std::size_t i = 0; i < n; ++i) {
      K key{};
      V value{};
      decode(ar, key);
      decode(ar, value);
      hint = emplace_in_wire_order(t, hint, std::move(key), std::move(value));
    }
  } else if constexpr (k == Kind::set) {
    using K = typename T::key_type;
    const std::size_t n = ar.load_size(min_wire_size<K>);
    t.clear();
    auto hint = t.begin();
    for (std::size_t i = 0; i < n; ++i) {
      K key{};
      decode(ar, key);
      hint = emplace_in_wire_order(t, hint, std::move(key));
    }
  } else if constexpr (k == Kind::sequence) {
    const std::size_t n = ar.load_size(min_wire_size<typename T::value_type>);
    t.clear();
    for (std::size_t i = 0; i < n; ++i) decode(ar, t.emplace_back());
  } else {
    no_encoding<T>();
  }
}

}  // namespace detail

// True when T can be written and read by mproc's archives.
template <class T>
inline constexpr bool is_serializable_v = detail::serializable_v<std::decay_t<T>>;

// ---- whole-value helpers -------------------------------------------------
template <class... Ts>
void serialize_into(Bytes& out, const Ts&... values) {
  static_assert((is_serializable_v<Ts> && ...),
                "mproc: this type cannot be serialized; add a serialize(A&) member (std::variant and smart "
                "pointers need #include <mproc/serialize.hpp>)");
  OutputArchive ar(out);
  ar(values...);
}

template <class... Ts>
Bytes to_bytes(const Ts&... values) {
  Bytes out;
  serialize_into(out, values...);
  return out;
}

[[noreturn]] void throw_deserialize(const char* type, const char* what);

// What decoding can throw, as DeserializeError naming the type and where in
// the input it failed: a short read or a size tag (DeserializeError; the
// extensions turn cereal's errors, such as a bad variant index, into it),
// and bad_alloc / length_error (memory ran out, under a limit, for an
// allocation the bounds let through).
[[noreturn]] void throw_decode_failure(const char* type, const InputArchive& ar);

// Runs decode() over ar and turns what it throws into throw_decode_failure.
// Only the decoding goes inside: an error from the user's own code must
// keep its type.
template <class F>
void decode_with(const char* type, InputArchive& ar, F&& decode) {
  try {
    decode();
  } catch (const DeserializeError&) {
    throw_decode_failure(type, ar);
  } catch (const std::bad_alloc&) {
    throw_decode_failure(type, ar);
  } catch (const std::length_error&) {
    throw_decode_failure(type, ar);
  }
}

// Reads exactly one T from the bytes; trailing bytes are an error.
template <class T>
T from_bytes(std::span<const std::byte> in) {
  static_assert(is_serializable_v<T>, "mproc: this type cannot be deserialized");
  static_assert(std::is_default_constructible_v<T>, "mproc: received types must be default-constructible");
  T value{};
  InputArchive ar(in);
  decode_with(typeid(T).name(), ar, [&] { ar(value); });
  if (ar.remaining() != 0)
    throw_deserialize(typeid(T).name(), (std::to_string(ar.remaining()) + " trailing bytes after the value").c_str());
  return value;
}

// A stable fingerprint of a type, equal in every process of the same build:
// it tells a receiver whether a frame holds the type it asks for.
std::uint32_t type_fingerprint(const char* mangled_name) noexcept;
template <class T>
std::uint32_t type_fingerprint() noexcept {
  // Hashes the mangled name once per type: it is on every message's path.
  // A constant-initialised cache, not a lazily initialised static: no guard a
  // fork child could inherit held (a racing first use just hashes twice).
  // The compiler's atomic builtins, not <atomic>: this header must stay light.
  static constinit std::uint32_t cached = 0;
  std::uint32_t fp = __atomic_load_n(&cached, __ATOMIC_RELAXED);
  if (fp == 0) {
    fp = type_fingerprint(typeid(std::decay_t<T>).name());
    __atomic_store_n(&cached, fp, __ATOMIC_RELAXED);
  }
  return fp;
}

// The readable name of a type (demangled).
std::string demangle(const char* mangled_name);

// An exception as it crosses processes.
struct ErrorInfo {
  std::string type_name;
  std::string message;
  template <class A>
  void serialize(A& ar) {
    ar(type_name, message);
  }
};
// Captures the current or given exception (type name + what()).
ErrorInfo capture_error(std::exception_ptr e);
// A RemoteError carrying what was captured.
RemoteError to_remote_error(const ErrorInfo& info);

}  // namespace mproc
