// Internal: large payloads through shared memory (issue 13).
//
// A message at or above a Connection's bulk threshold does not go through the
// socket's stream. The sender copies it into a *slab*: a memfd it keeps and
// reuses, so its pages are faulted in once, not for every message. The frame
// is then only a 16-byte header (magic kBulkMagic, tag, length) sent with the
// slab's fd attached (SCM_RIGHTS); the receiver checks the fd, copies the
// payload out with pread (no mapping: a file that shrinks gives a short read,
// never SIGBUS) and marks the slab free.
//
// Slab layout (sender-owned memfd, sealed F_SEAL_SHRINK | F_SEAL_GROW |
// F_SEAL_SEAL right after it is sized, so neither side can truncate the
// sender's mapping away or add F_SEAL_WRITE under it):
//
//   [0, 4096)            SlabHeader {magic, state}: state 1 = in flight,
//                        0 = the receiver copied it out (slab free again)
//   [4096, 4096 + cap)   payload
//
// Slab lifecycle, per sender:
//
//   (none) ──stage()──▶ in flight ──receiver's pread + release()──▶ free
//                          │                                         │
//                          │ all kMaxSlabs in flight: dropped        └─▶ stage() reuses it
//                          ▼ (our fd and mapping closed; the receiver's
//                             fd keeps the memory until it closes it)
//
// A slab in flight to a receiver that dies is freed with that receiver's fd
// (the kernel closes in-flight SCM_RIGHTS fds of a closed socket); nothing is
// named, so nothing reaches /dev/shm.
//
// What the receiver requires of the fd (verify_bulk_fd): a regular file that
// supports seals (a memfd: F_GET_SEALS succeeds), sealed against shrinking,
// at least 4096 + length bytes long, and with at least `length` bytes of
// memory actually allocated (st_blocks), so a peer's lie in the header costs
// the receiver no more than the peer spent itself. Otherwise ProtocolError
// naming what was wrong.
#pragma once
#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <deque>
#include <span>
#include <vector>

#include "sys/fd.hpp"

namespace mproc::detail {

inline constexpr std::uint64_t kSlabPayloadOffset = 4096;

// The sender's reusable slabs.
class BulkSender {
 public:
  BulkSender() = default;
  BulkSender(const BulkSender&) = delete;
  BulkSender& operator=(const BulkSender&) = delete;
  ~BulkSender();
  // Copies the concatenation of parts into a free slab, marks it in flight
  // and returns its fd (still owned here) to attach to the frame.
  int stage(std::span<const std::span<const std::byte>> parts, std::size_t total);
  // After the frame went out: slabs too large to keep are let go.
  void after_send() noexcept;

 private:
  struct Slab {
    int fd = -1;
    std::byte* map = nullptr;
    std::size_t cap = 0;  // payload bytes
  };
  static Slab make_slab(std::size_t cap);
  static void drop(Slab& s) noexcept;
  static bool is_free(const Slab& s) noexcept;
  std::vector<Slab> slabs_;
  pid_t owner_ = 0;  // a fork child inherits the slabs but must not share them
};

// fds that arrived on a Unix socket, each with the stream position of the
// last byte of the read that brought it (the kernel ends a read at the
// message an fd is attached to, so that byte belongs to it).
struct ArrivedFd {
  std::uint64_t pos;
  sys::UniqueFd fd;
};

// Reads up to n bytes from a Unix stream socket with recvmsg, keeping the fds
// that come with them in `fds` (at most kMaxArrivedFds; older ones are closed,
// extra ones refused). `stream_pos` counts the bytes read so far. Returns the
// count (0 at EOF); errno as read(2) on failure (-1).
ssize_t recv_stream(int sock, std::byte* dst, std::size_t n, std::uint64_t& stream_pos,
                    std::deque<ArrivedFd>& fds);
inline constexpr std::size_t kMaxArrivedFds = 8;

// The fd attached to the header occupying stream bytes [start, start + 16),
// or none. Every fd that arrived before that header's end is closed (a fd
// sent with anything but a bulk header is refused this way).
sys::UniqueFd take_header_fd(std::deque<ArrivedFd>& fds, std::uint64_t start, std::uint64_t size);

// The receiver's read-only mappings of its peer's slabs, by (device, inode):
// a slab seen again is copied from without mapping or faulting anew. Safe
// to map because the slab is sealed against shrinking (no SIGBUS); at most
// kMaxMaps kept, none over 256 MiB.
class SlabMaps {
 public:
  SlabMaps() = default;
  SlabMaps(const SlabMaps&) = delete;
  SlabMaps& operator=(const SlabMaps&) = delete;
  ~SlabMaps();
  // The payload of `length` bytes of the verified slab fd (dev, ino), or
  // nullptr when it cannot be mapped (the caller then preads).
  const std::byte* payload(int fd, dev_t dev, ino_t ino, std::size_t length);

 private:
  struct Map {
    dev_t dev;
    ino_t ino;
    std::byte* base;
    std::size_t len;
  };
  std::vector<Map> maps_;  // most recently used last
  std::byte* oneshot_ = nullptr;  // a mapping too large to keep: unmapped on the next call
  std::size_t oneshot_len_ = 0;
};

// A Connection's bulk side: its slabs, the fds read and not yet matched to
// a header, the fd of the pending bulk frame, the peer's slabs mapped.
struct BulkState {
  BulkSender sender;
  std::deque<ArrivedFd> arrived;
  sys::UniqueFd frame_fd;
  SlabMaps maps;
};

struct VerifiedSlab {
  dev_t dev;
  ino_t ino;
};
// Checks fd against a bulk frame of `length` bytes; throws ProtocolError.
VerifiedSlab verify_bulk_fd(int fd, std::uint64_t length);
// Copies the payload into dst (from a cached mapping, else pread), then
// marks the slab free. Throws ProtocolError if the file ends early.
void read_bulk(BulkState& b, const VerifiedSlab& slab, std::byte* dst, std::size_t length);

}  // namespace mproc::detail
