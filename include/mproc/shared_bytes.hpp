// SharedBytes: a contiguous byte buffer in shared memory that crosses
// processes as a handle, never as a copy (pickle protocol 5's out-of-band
// buffers, for mproc).
//
//   auto img = mproc::SharedBytes::create(16 << 20);   // zero-filled, writable
//   fill(img.writable());                               // write it here, once
//   auto sums = pool.map(checksum, std::vector{img});   // sends a handle; seals it
//   // in the task:  std::uint64_t checksum(const mproc::SharedBytes& b) {
//   //                 std::span<const std::byte> v = b.bytes();  // no copy ... }
//
// Memory: an anonymous memfd (memfd_create), mapped MAP_SHARED. It has no
// name, so nothing can leak into /dev/shm; the kernel frees it when the last
// fd and mapping of it, in any process, goes. A process that dies holding one
// (killed -9 or not) frees its share with its fds.
//
// Lifetime, within a process: copies share one mapping (reference counted,
// thread-safe); the mapping and the fd go with the last copy.
//
// Mutability: writable from create() until sealed, immutable after.
//   create(n) ──writable()──▶ writable ──seal() / first send──▶ sealed (read-only, for ever)
// Sealing remaps the buffer read-only IN PLACE (same address: spans taken
// from writable() stay valid for reading; writing through them after the
// seal is a bug and faults) and adds F_SEAL_WRITE|SHRINK|GROW|SEAL, so no
// process can change or resize it any more. Why: a receiver reads the
// sender's pages with no copy, so it must be able to rely on them not
// changing under it (a hash it computed stays true, a value it decoded stays
// valid) and never losing pages (a shrunk file would SIGBUS a reader). A
// receiver that wants to write takes copy() (one memcpy into a new writable
// buffer) — an explicit copy rather than a hidden copy-on-write mapping.
//
// How it crosses (the receiver always maps it read-only; zero copies):
// - fork: inherited (the child's copy shares the parent's mapping, writable
//   too while it is not sealed: seal() before forking to share it read-only);
// - Process arguments under spawn/forkserver (and any archive with an fd
//   channel): the fd itself (SCM_RIGHTS);
// - pool task arguments and results, Queue/SimpleQueue messages and
//   Connection/Pipe messages (Connection::send carries no fds of a value):
//   a "by process" handle {sender pid, fd number, device,
//   inode, size}; the receiver fetches the fd with pidfd_getfd (or, where
//   that is refused, opens `/proc/<pid>/fd/<n>`). Only this process, an
//   ancestor or a descendant is asked, and, in a process mproc started,
//   another descendant of the process that started it while that one lives
//   (siblings: a Queue or Pipe between two Process children, a pool worker
//   and a Process); a handle naming this process (an echo
//   of its own buffer) is found among its live buffers by inode: the same
//   mapping comes back. The sender must still hold the fd when the receiver
//   maps it:
//     * pool task arguments: the pool keeps them until the task settles;
//     * pool results: the worker keeps each result buffer until the pool's
//       process has mapped it, i.e. read the result (get(), map()): the
//       reader moves the shared file offset from 0 to 1 on the fd it
//       fetched, which the worker checks before each task. At most 512
//       unread ones are kept per worker (oldest released first: fds are
//       finite), and all go when the worker exits. So read a result holding
//       a SharedBytes while its worker lives; one nobody reads holds its
//       memory until then;
//     * Queue and Connection messages: the sender keeps its SharedBytes
//       until the message has been received (as SharedMemory's anonymous
//       handles).
//   Otherwise the receiver gets SharedBytesError saying the sender no longer
//   holds it.
//
// Hostile input: a received fd is checked before it is mapped — a regular
// file that is a memfd (it has seals), sealed against writing, shrinking and
// growing, and exactly the size the handle says — and a by-process handle
// must match the fd's device and inode. Anything else is SharedBytesError
// naming what was wrong and the byte counts; nothing is ever opened by a
// name a peer chose, and a mapping can never SIGBUS.
#pragma once
#include <cstddef>
#include <cstdint>
#include <span>
#include <utility>

#include "mproc/errors.hpp"

namespace mproc {

class OutputArchive;
class InputArchive;

// A SharedBytes refused (forged or stale handle) or misused (writing a
// sealed one).
class SharedBytesError : public SharedMemoryError {
 public:
  using SharedMemoryError::SharedMemoryError;
};

namespace detail {
struct BytesBlock;  // src/shared/shared_bytes.cpp
}

class SharedBytes {
 public:
  SharedBytes() noexcept = default;  // empty: size 0, nothing mapped
  // n zero bytes, writable until sealed (n == 0: an empty buffer).
  static SharedBytes create(std::size_t n);
  // A sealed buffer holding a copy of bytes.
  static SharedBytes copy_of(std::span<const std::byte> bytes);

  SharedBytes(const SharedBytes& other) noexcept;
  SharedBytes(SharedBytes&& other) noexcept : b_(std::exchange(other.b_, nullptr)) {}
  SharedBytes& operator=(const SharedBytes& other) noexcept;
  SharedBytes& operator=(SharedBytes&& other) noexcept;
  ~SharedBytes();

  std::size_t size() const noexcept;
  bool empty() const noexcept { return size() == 0; }
  // The bytes, read-only: valid while any copy of this handle lives.
  std::span<const std::byte> bytes() const noexcept;
  // The bytes, writable: SharedBytesError once sealed (sent, or received).
  std::span<std::byte> writable() const;
  bool sealed() const noexcept;
  // Makes it immutable (see above). Idempotent; sending does it.
  void seal() const;
  // A new, writable buffer with the same bytes (one copy).
  SharedBytes copy() const;
  // The memfd's inode (0 when empty): one buffer has one inode in every
  // process that maps it, so this shows that no copy was made.
  std::uint64_t inode() const noexcept;

  void save(OutputArchive& ar) const;
  void load(InputArchive& ar);

 private:
  explicit SharedBytes(detail::BytesBlock* b) noexcept : b_(b) {}
  detail::BytesBlock* b_ = nullptr;
};

namespace detail {
// Collects the SharedBytes sent "by process" (no fd channel) on this thread
// while it lives, so that their sender keeps them open until the receiver
// has mapped them: the pool's submit paths hand them to the task's future
// (released when it settles: keep_until_settled), the worker keeps those of
// its results (keep_until_fetched). What is still here at destruction is
// released. Nests.
class FutureCore;
class SendPins {
 public:
  SendPins() noexcept;
  ~SendPins();
  SendPins(const SendPins&) = delete;
  SendPins& operator=(const SendPins&) = delete;
  // Held until each of these futures has settled (the last one releases).
  void keep_until_settled(const FutureCore* cores, std::size_t n);
  // Worker side: held until the receiver has fetched them (see above).
  void keep_until_fetched();
  void* list_ = nullptr;  // the pins taken so far (src/shared/shared_bytes.cpp)
  void* previous_ = nullptr;
};
// Pool workers: releases the result pins the pool has acknowledged. The
// worker calls it between tasks.
void release_fetched_pins() noexcept;
}  // namespace detail

}  // namespace mproc
