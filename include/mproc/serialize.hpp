// Serialization layer: cereal as the engine, with mproc's own binary archives.
//
// - Arithmetic types, strings, standard containers, pair/tuple, optional,
//   variant, chrono and trivially copyable structs need no user code.
// - User types add cereal's `template <class A> void serialize(A&)`.
// - The input archive cannot be made to amplify: every element count is
//   checked against the bytes left divided by the fewest bytes one element
//   can take (detail::min_wire_size), and a container allocates up front at
//   most kMaxAmplification times the bytes left, growing past that only as
//   elements are actually decoded. bad_alloc / length_error while decoding
//   become DeserializeError.
#pragma once
#include <cereal/archives/binary.hpp>  // probe archives for detail::bitwise
#include <cereal/cereal.hpp>
#include <cereal/types/array.hpp>
#include <cereal/types/bitset.hpp>
#include <cereal/types/chrono.hpp>
#include <cereal/types/complex.hpp>
#include <cereal/types/deque.hpp>
#include <cereal/types/list.hpp>
#include <cereal/types/map.hpp>
#include <cereal/types/memory.hpp>
#include <cereal/types/optional.hpp>
#include <cereal/types/set.hpp>
#include <cereal/types/string.hpp>
#include <cereal/types/tuple.hpp>
#include <cereal/types/unordered_map.hpp>
#include <cereal/types/unordered_set.hpp>
#include <cereal/types/utility.hpp>
#include <cereal/types/variant.hpp>
#include <cereal/types/vector.hpp>

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <exception>
#include <list>
#include <map>
#include <memory>
#include <new>
#include <optional>
#include <set>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <typeinfo>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <variant>
#include <vector>

#include "mproc/errors.hpp"

namespace mproc {

using Bytes = std::vector<std::byte>;

// Appends to a byte vector. No stream, no virtual calls.
class OutputArchive : public cereal::OutputArchive<OutputArchive, cereal::AllowEmptyClassElision> {
 public:
  // fds: where file descriptors of serialized objects (a Connection given
  // to a child) are collected, to travel beside the bytes (SCM_RIGHTS).
  explicit OutputArchive(Bytes& out, std::vector<int>* fds = nullptr)
      : cereal::OutputArchive<OutputArchive, cereal::AllowEmptyClassElision>(this), out_(out), fds_(fds) {}
  void saveBinary(const void* data, std::size_t size) {
    const auto* p = static_cast<const std::byte*>(data);
    out_.insert(out_.end(), p, p + size);
  }
  // Records fd for passing; returns its index. Throws where fds cannot travel.
  std::uint32_t attach_fd(int fd, const char* what);

 private:
  Bytes& out_;
  std::vector<int>* fds_;
};

// Reads from a byte span; throws DeserializeError on a short read or on a size
// tag larger than what is left.
class InputArchive : public cereal::InputArchive<InputArchive, cereal::AllowEmptyClassElision> {
 public:
  // fds: descriptors received beside the bytes; take_fd() claims them.
  explicit InputArchive(std::span<const std::byte> in, std::vector<int>* fds = nullptr)
      : cereal::InputArchive<InputArchive, cereal::AllowEmptyClassElision>(this), in_(in), fds_(fds) {}
  void loadBinary(void* data, std::size_t size) {
    if (size > remaining()) throw_short(size);
    if (size != 0) std::memcpy(data, in_.data() + pos_, size);  // data may be null when size is 0
    pos_ += size;
  }
  std::size_t remaining() const noexcept { return in_.size() - pos_; }
  [[noreturn]] void throw_short(std::size_t wanted) const;
  // A count of `size` elements of at least `each` bytes does not fit.
  [[noreturn]] void throw_size(std::uint64_t size, std::size_t each = 1) const;
  std::size_t position() const noexcept { return pos_; }
  std::size_t size() const noexcept { return in_.size(); }
  // The received fd at index (ownership passes to the caller).
  int take_fd(std::uint32_t index, const char* what);

 private:
  std::span<const std::byte> in_;
  std::size_t pos_ = 0;
  std::vector<int>* fds_;
};

// ---- archive primitives (found by ADL through the archive type) ----------
template <class T>
std::enable_if_t<std::is_arithmetic_v<T>> CEREAL_SAVE_FUNCTION_NAME(OutputArchive& ar, const T& t) {
  ar.saveBinary(std::addressof(t), sizeof(t));
}
template <class T>
std::enable_if_t<std::is_arithmetic_v<T> && !std::is_same_v<T, bool>> CEREAL_LOAD_FUNCTION_NAME(InputArchive& ar,
                                                                                             T& t) {
  ar.loadBinary(std::addressof(t), sizeof(t));
}
// A bool's byte is checked: any other value than 0 or 1 would be undefined
// behaviour once read (std::optional's flag is one: UBSan found it).
inline void CEREAL_LOAD_FUNCTION_NAME(InputArchive& ar, bool& b) {
  unsigned char v = 0;
  ar.loadBinary(&v, 1);
  if (v > 1) throw DeserializeError("mproc: a bool encoded as " + std::to_string(v) + " (0 or 1 expected)");
  b = v != 0;
}
template <class Archive, class T>
CEREAL_ARCHIVE_RESTRICT(InputArchive, OutputArchive)
CEREAL_SERIALIZE_FUNCTION_NAME(Archive& ar, cereal::NameValuePair<T>& t) {
  ar(t.value);
}
template <class T>
void CEREAL_SAVE_FUNCTION_NAME(OutputArchive& ar, const cereal::SizeTag<T>& t) {
  ar(t.size);
}
// The fallback for a size tag read by a container mproc does not load itself
// (below): every element takes at least one byte of input, so a count above
// the bytes left is a lie. (Limitation: this, and the loads below, reject
// containers of elements that serialize to zero bytes, such as
// std::vector<std::monostate>, longer than the bytes left.)
template <class T>
void CEREAL_LOAD_FUNCTION_NAME(InputArchive& ar, cereal::SizeTag<T>& t) {
  ar(t.size);
  if (static_cast<std::uint64_t>(t.size) > ar.remaining()) ar.throw_size(static_cast<std::uint64_t>(t.size));
}
template <class T>
void CEREAL_SAVE_FUNCTION_NAME(OutputArchive& ar, const cereal::BinaryData<T>& bd) {
  ar.saveBinary(bd.data, static_cast<std::size_t>(bd.size));
}
template <class T>
void CEREAL_LOAD_FUNCTION_NAME(InputArchive& ar, cereal::BinaryData<T>& bd) {
  ar.loadBinary(bd.data, static_cast<std::size_t>(bd.size));
}

namespace detail {
template <class T> struct is_view : std::false_type {};
template <class C, class Tr> struct is_view<std::basic_string_view<C, Tr>> : std::true_type {};
template <class T, std::size_t N> struct is_view<std::span<T, N>> : std::true_type {};

namespace tr = cereal::traits;
namespace trd = cereal::traits::detail;

// True when T brings no serialization of its own. Member functions and
// non-member serialize() are looked up with mproc's archives; non-member
// save/load (how cereal handles std::array, optional, variant, chrono, complex,
// bitset, ...) with cereal's binary archives as a probe, because looking them
// up with mproc's archives would find the bitwise save/load below and recurse.
template <class T>
struct has_no_serialization
    : std::bool_constant<
          !tr::has_member_serialize<T, OutputArchive>::value && !tr::has_member_serialize<T, InputArchive>::value &&
          !tr::has_member_versioned_serialize<T, OutputArchive>::value &&
          !tr::has_member_versioned_serialize<T, InputArchive>::value &&
          !tr::has_member_save<T, OutputArchive>::value && !tr::has_member_load<T, InputArchive>::value &&
          !tr::has_member_versioned_save<T, OutputArchive>::value &&
          !tr::has_member_versioned_load<T, InputArchive>::value &&
          !tr::has_member_save_minimal<T, OutputArchive>::value &&
          !tr::has_member_load_minimal<T, InputArchive>::value &&
          !tr::has_non_member_serialize<T, OutputArchive>::value &&
          !tr::has_non_member_serialize<T, InputArchive>::value &&
          !tr::has_non_member_versioned_serialize<T, OutputArchive>::value &&
          !tr::has_non_member_versioned_serialize<T, InputArchive>::value &&
          trd::count_output_serializers<T, cereal::BinaryOutputArchive>::value == 0 &&
          trd::count_input_serializers<T, cereal::BinaryInputArchive>::value == 0> {};

// A trivially copyable class with no serialization of its own is copied as
// bytes. It must also be copy-constructible (GCC calls std::mutex trivially
// copyable). Views are excluded: their pointers mean nothing in another
// process. std::conjunction short-circuits, so the lookups above run only for
// such classes.
template <class T>
struct bitwise : std::conjunction<std::is_class<T>, std::is_trivially_copyable<T>, std::is_copy_constructible<T>,
                                  std::negation<is_view<T>>, has_no_serialization<T>> {};
template <class T>
inline constexpr bool bitwise_v = bitwise<T>::value;
}  // namespace detail

// The archive is a template parameter checked first, so a lookup made with
// another archive (the probe above) stops before evaluating detail::bitwise.
template <class Ar, class T>
std::enable_if_t<std::conjunction_v<std::is_same<Ar, OutputArchive>, detail::bitwise<T>>>
CEREAL_SAVE_FUNCTION_NAME(Ar& ar, const T& t) {
  ar.saveBinary(std::addressof(t), sizeof(T));
}
template <class Ar, class T>
std::enable_if_t<std::conjunction_v<std::is_same<Ar, InputArchive>, detail::bitwise<T>>>
CEREAL_LOAD_FUNCTION_NAME(Ar& ar, T& t) {
  ar.loadBinary(std::addressof(t), sizeof(T));
}

namespace detail {
template <class T>
struct serializable;
// cereal declares its standard-library functions for any element type, so its
// traits say "yes" for std::vector<NotSerializable>; look inside them.
template <class T>
struct elements_ok : std::true_type {};
template <class... Ts>
struct all_ok : std::conjunction<serializable<std::remove_const_t<Ts>>...> {};
template <class T, class A> struct elements_ok<std::vector<T, A>> : all_ok<T> {};
template <class T, class A> struct elements_ok<std::deque<T, A>> : all_ok<T> {};
template <class T, class A> struct elements_ok<std::list<T, A>> : all_ok<T> {};
template <class T, std::size_t N> struct elements_ok<std::array<T, N>> : all_ok<T> {};
template <class K, class C, class A> struct elements_ok<std::set<K, C, A>> : all_ok<K> {};
template <class K, class C, class A> struct elements_ok<std::multiset<K, C, A>> : all_ok<K> {};
template <class K, class H, class E, class A> struct elements_ok<std::unordered_set<K, H, E, A>> : all_ok<K> {};
template <class K, class H, class E, class A>
struct elements_ok<std::unordered_multiset<K, H, E, A>> : all_ok<K> {};
template <class K, class V, class C, class A> struct elements_ok<std::map<K, V, C, A>> : all_ok<K, V> {};
template <class K, class V, class C, class A> struct elements_ok<std::multimap<K, V, C, A>> : all_ok<K, V> {};
template <class K, class V, class H, class E, class A>
struct elements_ok<std::unordered_map<K, V, H, E, A>> : all_ok<K, V> {};
template <class K, class V, class H, class E, class A>
struct elements_ok<std::unordered_multimap<K, V, H, E, A>> : all_ok<K, V> {};
template <class A, class B> struct elements_ok<std::pair<A, B>> : all_ok<A, B> {};
template <class... Ts> struct elements_ok<std::tuple<Ts...>> : all_ok<Ts...> {};
template <class T> struct elements_ok<std::optional<T>> : all_ok<T> {};
template <class... Ts> struct elements_ok<std::variant<Ts...>> : all_ok<Ts...> {};
template <class T, class D> struct elements_ok<std::unique_ptr<T, D>> : all_ok<T> {};
template <class T> struct elements_ok<std::shared_ptr<T>> : all_ok<T> {};

template <class T>
struct serializable : std::conjunction<cereal::traits::is_output_serializable<T, OutputArchive>,
                                       cereal::traits::is_input_serializable<T, InputArchive>, elements_ok<T>> {};
}  // namespace detail

// True when T can be written and read by mproc's archives.
template <class T>
inline constexpr bool is_serializable_v = detail::serializable<std::decay_t<T>>::value;

// ---- whole-value helpers -------------------------------------------------
template <class... Ts>
void serialize_into(Bytes& out, const Ts&... values) {
  static_assert((is_serializable_v<Ts> && ...),
                "mproc: this type cannot be serialized; add a cereal serialize() member");
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
// the input it failed: a short read or a size tag (DeserializeError), a
// cereal error (bad variant index), and bad_alloc / length_error (memory
// ran out, under a limit, for an allocation the bounds let through).
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
  } catch (const cereal::Exception&) {
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
  static constinit std::atomic<std::uint32_t> cached{0};
  std::uint32_t fp = cached.load(std::memory_order_relaxed);
  if (fp == 0) {
    fp = type_fingerprint(typeid(std::decay_t<T>).name());
    cached.store(fp, std::memory_order_relaxed);
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

// std::byte (an enum class, which cereal leaves out) and byte vectors, sent
// in one block rather than element by element.
inline void CEREAL_SAVE_FUNCTION_NAME(OutputArchive& ar, const std::byte& b) { ar.saveBinary(&b, 1); }
inline void CEREAL_LOAD_FUNCTION_NAME(InputArchive& ar, std::byte& b) { ar.loadBinary(&b, 1); }
template <class Alloc>
void CEREAL_SAVE_FUNCTION_NAME(OutputArchive& ar, const std::vector<std::byte, Alloc>& v) {
  ar(cereal::make_size_tag(static_cast<cereal::size_type>(v.size())));
  ar.saveBinary(v.data(), v.size());
}
template <class Alloc>
void CEREAL_LOAD_FUNCTION_NAME(InputArchive& ar, std::vector<std::byte, Alloc>& v) {
  cereal::size_type n = 0;
  ar(cereal::make_size_tag(n));
  v.resize(static_cast<std::size_t>(n));
  ar.loadBinary(v.data(), v.size());
}

}  // namespace mproc

#include "mproc/serialize_bounded.hpp"  // container loads that cannot amplify

CEREAL_SETUP_ARCHIVE_TRAITS(mproc::InputArchive, mproc::OutputArchive)
CEREAL_REGISTER_ARCHIVE(mproc::OutputArchive)
CEREAL_REGISTER_ARCHIVE(mproc::InputArchive)
