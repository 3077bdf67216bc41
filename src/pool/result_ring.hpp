// Internal: a single-producer single-consumer ring in a shared memfd mapping,
// carrying a pool worker's results to the engine without a syscall.
//
// Records are [u32 length][bytes], padded to 8; a length with kMore set is a
// chunk of a large result whose next chunks follow (a result larger than a
// record is cut in chunks, so the ring is the worker's only way to speak and
// its socket carries tasks one way). The consumer raises `sleeping` before it
// blocks; a producer that sees it rings the doorbell (an eventfd). Data
// already in the ring survives the producer's death, so a crash never loses a
// finished task's result. The worker also publishes the id of the task it
// runs (`running`), so the engine blames a death on the task that was
// running, and on none when the worker died between tasks.
//
// The mapping is shared with code the engine does not trust (the task runs in
// the producer): each side keeps its own index privately and only publishes
// it, so a task that scribbles over the header or the data makes the reader
// throw ProtocolError (caught as that worker's fault), never read out of
// bounds or loop.
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
  static constexpr std::uint32_t kMore = 0x80000000u;  // a chunk; more of this result follow
  static constexpr std::size_t kCapacity = 1 << 20;     // data bytes (power of two)
  static constexpr std::size_t kMaxRecord = kCapacity / 4;  // larger results travel in chunks

  ResultRing() = default;
  // Parent: a new ring. Worker: the ring behind an inherited/passed fd.
  static ResultRing create();
  static ResultRing attach(int fd);
  ResultRing(ResultRing&&) noexcept;
  ResultRing& operator=(ResultRing&&) noexcept;
  ~ResultRing();

  int fd() const noexcept { return fd_.get(); }
  explicit operator bool() const noexcept { return hdr_ != nullptr; }

  // Producer. Returns false when there is no room now (msg <= kMaxRecord);
  // ProtocolError when the consumer's published index makes no sense.
  bool try_push(std::span<const std::byte> msg, std::uint32_t flags = 0);
  bool consumer_sleeping() const noexcept;
  // The task the producer runs now (0: none). A plain store: no syscall.
  void set_running(std::uint64_t id) noexcept { hdr_->running.store(id, std::memory_order_release); }

  // Consumer. False when empty; out_flags gets kMore for a chunk.
  // ProtocolError when the producer's header or a record is malformed.
  bool try_pop(Bytes& out, std::uint32_t& out_flags);
  bool empty() const noexcept;
  void set_sleeping(bool sleeping) noexcept;
  std::uint64_t running() const noexcept { return hdr_->running.load(std::memory_order_acquire); }

 private:
  struct Header {
    alignas(64) std::atomic<std::uint64_t> head;  // published by the producer
    alignas(64) std::atomic<std::uint64_t> tail;  // published by the consumer
    alignas(64) std::atomic<std::uint32_t> sleeping;
    alignas(64) std::atomic<std::uint64_t> running;  // written by the producer, read after its death
  };
  sys::UniqueFd fd_;
  Header* hdr_ = nullptr;
  std::byte* data_ = nullptr;
  std::uint64_t mine_ = 0;  // the producer's head, or the consumer's tail: never read back from the mapping
  void copy_in(std::uint64_t pos, const void* src, std::size_t n);
  void copy_out(std::uint64_t pos, void* dst, std::size_t n) const;
};

// A file descriptor given to a child as a Process argument (passed with
// SCM_RIGHTS under spawn/forkserver, inherited under fork).
struct PassedFd {
  int fd = -1;
  void save(OutputArchive& ar) const { ar(ar.attach_fd(fd, "pool worker fd")); }
  void load(InputArchive& ar) {
    std::uint32_t index = 0;
    ar(index);
    fd = ar.take_fd(index, "pool worker fd");
  }
};

}  // namespace mproc::detail
