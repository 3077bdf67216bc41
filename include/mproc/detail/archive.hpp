// mproc's binary archives: OutputArchive appends bytes to a vector,
// InputArchive reads them back with every size checked (no stream, no
// virtual call). What a type's bytes are is mproc/detail/codec.hpp's
// business (detail::encode / detail::decode, declared here, defined there);
// this header is the archives alone, for code that only moves bytes or
// declares save/load members.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

#include "mproc/errors.hpp"


namespace mproc {

using Bytes = std::vector<std::byte>;

class OutputArchive;
class InputArchive;

namespace detail {
template <class T>
void encode(OutputArchive& ar, const T& t);
template <class T>
void decode(InputArchive& ar, T& t);

// Large contiguous values (a decoded vector or string, a pool result copied
// out of shared memory) are written into memory the allocator just handed
// out. When that memory is not resident yet (glibc gives a freed heap back
// to the kernel), one batched MADV_POPULATE_WRITE costs far less than a page
// fault per 4 KiB page inside the copy (2.5x on this project's VMs, where a
// fault costs ~19 us); from 4 MiB, transparent huge pages are advised over
// the range's aligned interior first (only memory about to be written).
// Resident memory is left as it is (one mincore probe of its first and last
// page). Never fails: a kernel without the advice just takes the faults.
// Below kPrefaultBytes it does nothing.
inline constexpr std::size_t kPrefaultBytes = std::size_t{256} << 10;
void prefault_for_writing(void* p, std::size_t n) noexcept;
}  // namespace detail

// Appends to a byte vector. No stream, no virtual calls.
class OutputArchive {
 public:
  // fds: where file descriptors of serialized objects (a Connection given
  // to a child) are collected, to travel beside the bytes (SCM_RIGHTS).
  explicit OutputArchive(Bytes& out, std::vector<int>* fds = nullptr) : out_(out), fds_(fds) {}
  OutputArchive(const OutputArchive&) = delete;
  OutputArchive& operator=(const OutputArchive&) = delete;
  void saveBinary(const void* data, std::size_t size) {
    const auto* p = static_cast<const std::byte*>(data);
    if (size <= 16) {
      // Scalars: resize + memcpy, not insert(), whose inlined copy of a
      // constant small size GCC 12 misreads as an overflow
      // (-Wstringop-overflow, an error under -Werror).
      const std::size_t at = out_.size();
      out_.resize(at + size);
      if (size != 0) std::memcpy(out_.data() + at, p, size);
    } else {
      out_.insert(out_.end(), p, p + size);
    }
  }
  // A container's element count, as cereal writes it (a u64).
  void save_size(std::uint64_t n) { saveBinary(&n, sizeof n); }
  // Records fd for passing; returns its index. Throws where fds cannot travel.
  std::uint32_t attach_fd(int fd, const char* what);
  // Writes each value in turn.
  template <class... Ts>
  OutputArchive& operator()(const Ts&... values) {
    (detail::encode(*this, values), ...);
    return *this;
  }

 private:
  Bytes& out_;
  std::vector<int>* fds_;
};

// Reads from a byte span; throws DeserializeError on a short read or on a size
// tag larger than what is left.
class InputArchive {
 public:
  // fds: descriptors received beside the bytes; take_fd() claims them.
  explicit InputArchive(std::span<const std::byte> in, std::vector<int>* fds = nullptr) : in_(in), fds_(fds) {}
  InputArchive(const InputArchive&) = delete;
  InputArchive& operator=(const InputArchive&) = delete;
  void loadBinary(void* data, std::size_t size) {
    if (size > remaining()) throw_short(size);
    if (size != 0) std::memcpy(data, in_.data() + pos_, size);  // data may be null when size is 0
    pos_ += size;
  }
  // A size tag (u64) counting elements of at least `each` bytes: refused
  // when they cannot fit in the bytes left.
  std::size_t load_size(std::size_t each = 1) {
    std::uint64_t n = 0;
    loadBinary(&n, sizeof n);
    if (each == 0) each = 1;
    if (n > remaining() / each) throw_size(n, each);
    return static_cast<std::size_t>(n);
  }
  // The next `size` bytes where they lie (no copy), checked as loadBinary.
  const std::byte* take_bytes(std::size_t size) {
    if (size > remaining()) throw_short(size);
    const std::byte* p = in_.data() + pos_;
    pos_ += size;
    return p;
  }
  std::size_t remaining() const noexcept { return in_.size() - pos_; }
  [[noreturn]] void throw_short(std::size_t wanted) const;
  // A count of `size` elements of at least `each` bytes does not fit.
  [[noreturn]] void throw_size(std::uint64_t size, std::size_t each = 1) const;
  std::size_t position() const noexcept { return pos_; }
  std::size_t size() const noexcept { return in_.size(); }
  // The received fd at index (ownership passes to the caller).
  int take_fd(std::uint32_t index, const char* what);
  // Reads each value in turn (temporaries too: cereal's size tags).
  template <class... Ts>
  InputArchive& operator()(Ts&&... values) {
    (detail::decode(*this, values), ...);
    return *this;
  }

 private:
  std::span<const std::byte> in_;
  std::size_t pos_ = 0;
  std::vector<int>* fds_;
};

// Upper bound on what a container allocates before reading its elements,
// as a multiple of the bytes left in the message.
inline constexpr std::size_t kMaxAmplification = 8;

}  // namespace mproc
