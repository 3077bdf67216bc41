// FunctionRef: names a function across processes of the same binary as
// (module build-id, offset from the module's load address), as UPC++ does.
// Valid under fork, forkserver, spawn and MPI alike, because it never carries
// a raw address. Resolution checks the build-id, that the offset lies in an
// executable segment of that module, and the function's signature: a
// mismatch is a FunctionRefError, never a jump.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <type_traits>
#include <typeinfo>

#include "mproc/errors.hpp"
#include "mproc/detail/codec.hpp"

namespace mproc {

class FunctionRef {
 public:
  FunctionRef() = default;

  // Names function `fn` (a plain function or a captureless lambda's pointer).
  template <class R, class... A>
  static FunctionRef of(R (*fn)(A...)) {
    return make(reinterpret_cast<const void*>(fn), type_fingerprint<R (*)(A...)>());
  }

  // Resolves to a callable pointer of exactly type Fn* (e.g. `int(int)`).
  template <class Fn>
  Fn* get() const {
    static_assert(std::is_function_v<Fn>, "FunctionRef::get<Fn>: Fn must be a function type");
    return reinterpret_cast<Fn*>(const_cast<void*>(resolve(type_fingerprint<Fn*>())));
  }

  bool empty() const noexcept { return build_id_len_ == 0; }
  std::uint64_t offset() const noexcept { return offset_; }
  std::string build_id_hex() const;
  std::string to_string() const;  // "build-id+0xoffset"

  // Low level: raw address + expected signature fingerprint.
  static FunctionRef make(const void* address, std::uint32_t signature);
  const void* resolve(std::uint32_t signature) const;

  template <class Ar>
  void serialize(Ar& ar) {
    ar(build_id_, build_id_len_, offset_, signature_);
  }
  friend bool operator==(const FunctionRef&, const FunctionRef&) = default;

 private:
  std::array<std::uint8_t, 32> build_id_{};
  std::uint8_t build_id_len_ = 0;
  std::uint64_t offset_ = 0;
  std::uint32_t signature_ = 0;
};

}  // namespace mproc
