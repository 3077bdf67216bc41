// SharedMemory: Python's multiprocessing.shared_memory.SharedMemory, without
// its leaks.
//
//   auto shm = mproc::SharedMemory::create("frames", 1 << 20);  // /dev/shm/frames
//   auto same = mproc::SharedMemory::attach("frames");          // any process
//   mproc::SharedMemory anon(4096);                             // memfd, no name
//   std::span<std::byte> b = shm.buf();
//   shm.close(); shm.unlink();
//
// - Named segments are POSIX shm objects (files in /dev/shm, as shm_open
//   makes them; $MPROC_SHM_DIR names another tmpfs directory), attachable by
//   name from any process. A 4 KiB header page before buf() records the size
//   and the creator (pid + start time). Only unlink() removes a name; attaching or
//   closing never does (CPython's resource_tracker unlinks live segments).
// - The tracker: creating a named segment first sweeps /dev/shm for mproc
//   segments whose creator died without unlinking them, so /dev/shm never
//   fills. cleanup_leaked_segments() runs the sweep on demand. Pass
//   track=false to create a segment meant to outlive its creator.
// - Anonymous segments are memfds: no name, nothing to leak; they reach a
//   child inherited (fork) or passed as an fd (spawn, forkserver).
// - Copies share one mapping; it goes away with the last copy or close().
// - A SharedMemory (or anything built on one: Value, Array, locks, queues)
//   given to a Process target or a pool task travels as a handle, never as a
//   copy of the data: a named one by name, an anonymous one as its fd (to a
//   Process) or as `/proc/<pid>/fd/<n>` of a live holder (to a pool task,
//   whose arguments carry no fds; the sender must keep it open until then).
// - A handle decoded from a message never names a file (docs/security.md):
//   a name is looked up only in this process's segment directory, opened
//   without following links, and must be a regular file of our uid with
//   mproc's header and the sender's device/inode; a /proc fd must be one of
//   mproc's memfds held by this process or an ancestor. Anything else throws
//   SharedMemoryError.
#pragma once
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "mproc/errors.hpp"
#include "mproc/detail/codec.hpp"

namespace mproc {

namespace detail {
struct Segment;
// A counted reference to a mapped segment, as std::shared_ptr<Segment> (the
// count is atomic: copies may live in several threads), defined out of line
// (src/shared_memory.cpp) so that this header needs no `<memory>`.
class SegmentRef {
 public:
  SegmentRef() noexcept = default;
  explicit SegmentRef(Segment* adopt) noexcept : p_(adopt) {}  // adopts a count of one
  SegmentRef(const SegmentRef& other) noexcept;
  SegmentRef& operator=(const SegmentRef& other) noexcept;
  SegmentRef(SegmentRef&& other) noexcept : p_(other.p_) { other.p_ = nullptr; }
  SegmentRef& operator=(SegmentRef&& other) noexcept;
  ~SegmentRef() { reset(); }
  void reset() noexcept;
  Segment* get() const noexcept { return p_; }
  Segment* operator->() const noexcept { return p_; }
  Segment& operator*() const noexcept { return *p_; }
  explicit operator bool() const noexcept { return p_ != nullptr; }

 private:
  Segment* p_ = nullptr;
};
}

class SharedMemory {
 public:
  static constexpr std::size_t kHeaderSize = 4096;
  static constexpr std::string_view kGeneratedPrefix = "mproc_";

  SharedMemory() = default;
  // Anonymous (memfd) segment of size bytes, zero-filled.
  explicit SharedMemory(std::size_t size);
  // Python's SharedMemory(name, create, size): create (name "" picks a
  // fresh name) or attach (size 0: the whole segment).
  SharedMemory(std::string_view name, bool create, std::size_t size = 0, bool track = true);
  static SharedMemory create(std::string_view name, std::size_t size, bool track = true) {
    return SharedMemory(name, true, size, track);
  }
  // size: at most the segment's (SharedMemoryError naming both byte counts
  // otherwise); buf() is always the whole segment, as in Python.
  static SharedMemory attach(std::string_view name, std::size_t size = 0) { return SharedMemory(name, false, size); }

  std::span<std::byte> buf() const;
  std::byte* data() const { return buf().data(); }
  std::size_t size() const;
  const std::string& name() const;  // empty when anonymous; still there after close()
  bool anonymous() const;
  // The segment's fd (owned by this handle; valid until close()).
  int fileno() const;
  bool closed() const noexcept { return !seg_; }
  // Drops this handle's mapping (and fd); the segment lives on elsewhere.
  void close() noexcept { seg_.reset(); }
  // Removes the name (named segments; mappings stay valid), also after
  // close() as in Python. Throws SharedMemoryNotFound when it is already gone.
  void unlink();

  void save(OutputArchive& ar) const;
  void load(InputArchive& ar);

 private:
  // opened_fd: attach through this fd (already opened and checked), not by name.
  SharedMemory(std::string_view name, bool create, std::size_t size, bool track, std::string dir,
               int opened_fd = -1);
  const detail::Segment& seg(const char* op) const;
  detail::SegmentRef seg_;
  // Kept by the handle, not the mapping: unlink() works after close().
  std::string name_;
  std::string dir_;
};

// The tracker's sweep: removes the mproc segments in /dev/shm (or
// $MPROC_SHM_DIR) whose creator died without unlinking them. Returns how many
// were removed.
std::size_t cleanup_leaked_segments();
std::size_t cleanup_leaked_segments(const std::string& dir);

namespace detail {
// While one lives on this thread, every SharedMemory decoded stays mapped
// until the process exits, whatever happens to the object. A spawned or
// forkserver child decodes its target's arguments under one: a Lock the
// target leaves held (returning or throwing) is still mapped when the process
// exits, so the kernel marks it owner-dead for the next acquirer instead of
// leaving it locked for ever (robust futexes need the mapping).
class RetainDecodedSegments {
 public:
  RetainDecodedSegments() noexcept;
  ~RetainDecodedSegments();
  RetainDecodedSegments(const RetainDecodedSegments&) = delete;
  RetainDecodedSegments& operator=(const RetainDecodedSegments&) = delete;

 private:
  bool previous_;
};

// Checks a segment name: not empty, at most 255 bytes, no '/' and not "." or
// "..". Throws InvalidSharedMemoryName naming the problem.
void check_shm_name(std::string_view name);
}  // namespace detail

}  // namespace mproc
