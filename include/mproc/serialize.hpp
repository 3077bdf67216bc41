// The serialization layer's cereal side: include it to send what the light
// codec (mproc/detail/codec.hpp, which every public header uses) does not
// encode itself: std::variant, std::unique_ptr / std::shared_ptr, and types
// whose serialization uses cereal's own tools (cereal::make_nvp,
// cereal::base_class, make_size_tag, binary_data).
//
// How: the light archives (mproc::OutputArchive / InputArchive) hand such a
// value to a cereal archive that writes into and reads from them
// (detail::CerealOut / CerealIn). Inside it, cereal encodes the value's parts
// with its own adapters, which write the same bytes as the light codec; its
// loads of the standard containers are mproc's bounded ones
// (serialize_bounded.hpp), so decoding cannot amplify here either:
// every element count is checked against the bytes left divided by the
// fewest bytes one element can take, a container allocates up front at most
// kMaxAmplification times the bytes left, and cereal's errors (a bad variant
// index) become DeserializeError.
//
// Limitation: each extension value starts a new cereal archive, so two
// shared_ptrs to one object, sent as two values, arrive as two objects.
#pragma once
#include <cereal/archives/binary.hpp>  // probe archives for detail::cereal_bitwise
#include <cereal/cereal.hpp>
#include <cereal/types/array.hpp>
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
// Not cereal's chrono, complex and bitset adapters: those types are
// trivially copyable, so both codecs copy their bytes (for durations and
// complex numbers the bytes cereal wrote too).

#include <array>
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

#include "mproc/detail/codec.hpp"
#include "mproc/errors.hpp"

namespace mproc::detail {

// A cereal archive writing into a light one.
class CerealOut : public cereal::OutputArchive<CerealOut, cereal::AllowEmptyClassElision> {
 public:
  explicit CerealOut(mproc::OutputArchive& inner)
      : cereal::OutputArchive<CerealOut, cereal::AllowEmptyClassElision>(this), inner_(inner) {}
  void saveBinary(const void* data, std::size_t size) { inner_.saveBinary(data, size); }
  mproc::OutputArchive& inner() { return inner_; }

 private:
  mproc::OutputArchive& inner_;
};

// A cereal archive reading from a light one.
class CerealIn : public cereal::InputArchive<CerealIn, cereal::AllowEmptyClassElision> {
 public:
  explicit CerealIn(mproc::InputArchive& inner)
      : cereal::InputArchive<CerealIn, cereal::AllowEmptyClassElision>(this), inner_(inner) {}
  void loadBinary(void* data, std::size_t size) { inner_.loadBinary(data, size); }
  std::size_t remaining() const noexcept { return inner_.remaining(); }
  [[noreturn]] void throw_size(std::uint64_t size, std::size_t each = 1) const { inner_.throw_size(size, each); }
  mproc::InputArchive& inner() { return inner_; }

 private:
  mproc::InputArchive& inner_;
};


// ---- archive primitives (found by ADL through the archive type) ----------
template <class T>
std::enable_if_t<std::is_arithmetic_v<T>> CEREAL_SAVE_FUNCTION_NAME(CerealOut& ar, const T& t) {
  ar.saveBinary(std::addressof(t), sizeof(t));
}
template <class T>
std::enable_if_t<std::is_arithmetic_v<T> && !std::is_same_v<T, bool>> CEREAL_LOAD_FUNCTION_NAME(CerealIn& ar,
                                                                                             T& t) {
  ar.loadBinary(std::addressof(t), sizeof(t));
}
// A bool's byte is checked: any other value than 0 or 1 would be undefined
// behaviour once read (std::optional's flag is one: UBSan found it).
inline void CEREAL_LOAD_FUNCTION_NAME(CerealIn& ar, bool& b) {
  unsigned char v = 0;
  ar.loadBinary(&v, 1);
  if (v > 1) throw DeserializeError("mproc: a bool encoded as " + std::to_string(v) + " (0 or 1 expected)");
  b = v != 0;
}
template <class Archive, class T>
CEREAL_ARCHIVE_RESTRICT(CerealIn, CerealOut)
CEREAL_SERIALIZE_FUNCTION_NAME(Archive& ar, cereal::NameValuePair<T>& t) {
  ar(t.value);
}
template <class T>
void CEREAL_SAVE_FUNCTION_NAME(CerealOut& ar, const cereal::SizeTag<T>& t) {
  ar(t.size);
}
// The fallback for a size tag read by a container mproc does not load itself
// (below): every element takes at least one byte of input, so a count above
// the bytes left is a lie. (Limitation: this, and the loads below, reject
// containers of elements that serialize to zero bytes, such as
// std::vector<std::monostate>, longer than the bytes left.)
template <class T>
void CEREAL_LOAD_FUNCTION_NAME(CerealIn& ar, cereal::SizeTag<T>& t) {
  ar(t.size);
  if (static_cast<std::uint64_t>(t.size) > ar.remaining()) ar.throw_size(static_cast<std::uint64_t>(t.size));
}
template <class T>
void CEREAL_SAVE_FUNCTION_NAME(CerealOut& ar, const cereal::BinaryData<T>& bd) {
  ar.saveBinary(bd.data, static_cast<std::size_t>(bd.size));
}
template <class T>
void CEREAL_LOAD_FUNCTION_NAME(CerealIn& ar, cereal::BinaryData<T>& bd) {
  ar.loadBinary(bd.data, static_cast<std::size_t>(bd.size));
}


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
          !tr::has_member_serialize<T, CerealOut>::value && !tr::has_member_serialize<T, CerealIn>::value &&
          !tr::has_member_versioned_serialize<T, CerealOut>::value &&
          !tr::has_member_versioned_serialize<T, CerealIn>::value &&
          !tr::has_member_save<T, CerealOut>::value && !tr::has_member_load<T, CerealIn>::value &&
          !tr::has_member_versioned_save<T, CerealOut>::value &&
          !tr::has_member_versioned_load<T, CerealIn>::value &&
          !tr::has_member_save_minimal<T, CerealOut>::value &&
          !tr::has_member_load_minimal<T, CerealIn>::value &&
          !tr::has_non_member_serialize<T, CerealOut>::value &&
          !tr::has_non_member_serialize<T, CerealIn>::value &&
          !tr::has_non_member_versioned_serialize<T, CerealOut>::value &&
          !tr::has_non_member_versioned_serialize<T, CerealIn>::value &&
          trd::count_output_serializers<T, cereal::BinaryOutputArchive>::value == 0 &&
          trd::count_input_serializers<T, cereal::BinaryInputArchive>::value == 0> {};

// A trivially copyable class with no serialization of its own is copied as
// bytes. It must also be copy-constructible (GCC calls std::mutex trivially
// copyable). Views are excluded: their pointers mean nothing in another
// process. std::conjunction short-circuits, so the lookups above run only for
// such classes.
template <class T>
struct cereal_bitwise : std::conjunction<std::is_class<T>, std::is_trivially_copyable<T>, std::is_copy_constructible<T>,
                                  std::negation<is_view<T>>, has_no_serialization<T>> {};
template <class T>
inline constexpr bool cereal_bitwise_v = cereal_bitwise<T>::value;

// The archive is a template parameter checked first, so a lookup made with
// another archive (the probe above) stops before evaluating detail::bitwise.
template <class Ar, class T>
std::enable_if_t<std::conjunction_v<std::is_same<Ar, CerealOut>, cereal_bitwise<T>>>
CEREAL_SAVE_FUNCTION_NAME(Ar& ar, const T& t) {
  ar.saveBinary(std::addressof(t), sizeof(T));
}
template <class Ar, class T>
std::enable_if_t<std::conjunction_v<std::is_same<Ar, CerealIn>, cereal_bitwise<T>>>
CEREAL_LOAD_FUNCTION_NAME(Ar& ar, T& t) {
  ar.loadBinary(std::addressof(t), sizeof(T));
}

// std::byte (an enum class, which cereal leaves out) and byte vectors, sent
// in one block rather than element by element.
inline void CEREAL_SAVE_FUNCTION_NAME(CerealOut& ar, const std::byte& b) { ar.saveBinary(&b, 1); }
inline void CEREAL_LOAD_FUNCTION_NAME(CerealIn& ar, std::byte& b) { ar.loadBinary(&b, 1); }
template <class Alloc>
void CEREAL_SAVE_FUNCTION_NAME(CerealOut& ar, const std::vector<std::byte, Alloc>& v) {
  ar(cereal::make_size_tag(static_cast<cereal::size_type>(v.size())));
  ar.saveBinary(v.data(), v.size());
}
template <class Alloc>
void CEREAL_LOAD_FUNCTION_NAME(CerealIn& ar, std::vector<std::byte, Alloc>& v) {
  cereal::size_type n = 0;
  ar(cereal::make_size_tag(n));
  v.resize(static_cast<std::size_t>(n));
  ar.loadBinary(v.data(), v.size());
}

// Types the light codec encodes through their members (handle types:
// SharedMemory, Connection, locks, queues...) inside a cereal archive: the
// same members, on the light archive underneath.
template <class T>
  requires(adl::member_save_load<T> && !cereal::traits::has_member_save<T, CerealOut>::value)
void CEREAL_SAVE_FUNCTION_NAME(CerealOut& ar, const T& t) {
  t.save(ar.inner());
}
template <class T>
  requires(adl::member_save_load<T> && !cereal::traits::has_member_load<T, CerealIn>::value)
void CEREAL_LOAD_FUNCTION_NAME(CerealIn& ar, T& t) {
  t.load(ar.inner());
}

// ---- the extensions, for the light archives ---------------------------------
template <class T> struct is_size_tag : std::false_type {};
template <class T> struct is_size_tag<cereal::SizeTag<T>> : std::true_type {};

// cereal's wrappers, used inside a serialize() member.
template <class T> struct ext_family<cereal::SizeTag<T>> : std::true_type {
  static constexpr std::size_t min_wire = sizeof(cereal::size_type);
};
template <class T> struct ext_family<cereal::NameValuePair<T>> : std::true_type {};
template <class T> struct ext_family<cereal::BinaryData<T>> : std::true_type {};
template <class T> struct ext_family<cereal::base_class<T>> : std::true_type {};
template <class T> struct ext_family<cereal::virtual_base_class<T>> : std::true_type {};

// A size tag straight on the light archive (the pool's protocol writes them).
template <class T>
struct ExtCodec<cereal::SizeTag<T>> {
  static void save(OutputArchive& ar, const cereal::SizeTag<T>& t) {
    ar.save_size(static_cast<std::uint64_t>(t.size));
  }
  static void load(InputArchive& ar, cereal::SizeTag<T>& t) { t.size = ar.load_size(1); }
};

// Everything else, through cereal.
template <class T>
struct ExtCodec<T, std::enable_if_t<ext_family<T>::value && !is_size_tag<T>::value>> {
  static void save(OutputArchive& ar, const T& t) {
    CerealOut c(ar);
    c(t);
  }
  static void load(InputArchive& ar, T& t) {
    CerealIn c(ar);
    try {
      c(t);
    } catch (const cereal::Exception& e) {
      throw DeserializeError(std::string("mproc: ") + e.what());
    }
  }
};

}  // namespace mproc::detail

#include "mproc/serialize_bounded.hpp"  // container loads that cannot amplify

CEREAL_SETUP_ARCHIVE_TRAITS(mproc::detail::CerealIn, mproc::detail::CerealOut)
CEREAL_REGISTER_ARCHIVE(mproc::detail::CerealOut)
CEREAL_REGISTER_ARCHIVE(mproc::detail::CerealIn)
