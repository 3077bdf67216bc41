// Internal: a single-producer single-consumer ring in a shared memfd mapping,
// carrying a pool worker's results to the engine without a syscall.
//
// Records are [u32 length][bytes], padded to 8; a length with kOnSocket set
// says "this result was too large and waits on the socket" (the worker
// writes it there before the record, so the reader always finds it). The
// consumer raises `sleeping` before it blocks; a producer that sees it rings
// the doorbell (a write on the socket). Data already in the ring survives the
// producer's death, so a crash never loses a finished task's result.
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <span>

#include "mproc/serialize.hpp"
#include "sys/fd.hpp"

namespace mproc::detail {

class ResultRing {
 public:
  static constexpr std::uint32_t kOnSocket = 0x80000000u;
  static constexpr std::size_t kCapacity = 1 << 20;     // data bytes (power of two)
  static constexpr std::size_t kMaxInline = 64 << 10;   // larger results use the socket

  ResultRing() = default;
  // Parent: a new ring. Worker: the ring behind an inherited/passed fd.
  static ResultRing create();
  static ResultRing attach(int fd);
  ResultRing(ResultRing&&) noexcept;
  ResultRing& operator=(ResultRing&&) noexcept;
  ~ResultRing();

  int fd() const noexcept { return fd_.get(); }
  explicit operator bool() const noexcept { return hdr_ != nullptr; }

  // Producer. Returns false when there is no room now.
  bool try_push(std::span<const std::byte> msg, std::uint32_t flags = 0);
  bool consumer_sleeping() const noexcept;

  // Consumer. False when empty; out_flags gets kOnSocket for a marker.
  bool try_pop(Bytes& out, std::uint32_t& out_flags);
  bool empty() const noexcept;
  void set_sleeping(bool sleeping) noexcept;

 private:
  struct Header {
    alignas(64) std::atomic<std::uint64_t> head;  // written by the producer
    alignas(64) std::atomic<std::uint64_t> tail;  // written by the consumer
    alignas(64) std::atomic<std::uint32_t> sleeping;
  };
  sys::UniqueFd fd_;
  Header* hdr_ = nullptr;
  std::byte* data_ = nullptr;
  void copy_in(std::uint64_t pos, const void* src, std::size_t n);
  void copy_out(std::uint64_t pos, void* dst, std::size_t n) const;
};

// A file descriptor given to a child as a Process argument (passed with
// SCM_RIGHTS under spawn/forkserver, inherited under fork).
struct PassedFd {
  int fd = -1;
  void save(OutputArchive& ar) const { ar(ar.attach_fd(fd, "shared ring")); }
  void load(InputArchive& ar) {
    std::uint32_t index = 0;
    ar(index);
    fd = ar.take_fd(index, "shared ring");
  }
};

}  // namespace mproc::detail
