// Large payloads through reused, sealed memfd slabs: see bulk_payload.hpp.
#include "ipc/bulk_payload.hpp"

#include <fmt/format.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cerrno>
#include <cstring>

#include "mproc/errors.hpp"
#include "sys/shared_copy.hpp"

namespace mproc::detail {

namespace {

constexpr std::uint32_t kSlabMagic = 0x4d505253;  // "MPRS"
constexpr std::uint32_t kInFlight = 1, kFree = 0;
constexpr std::size_t kMaxSlabs = 4;
// A slab at least this large is not kept after its message (the receiver's
// fd keeps it alive until it is read).
constexpr std::size_t kKeepCap = std::size_t{256} << 20;
constexpr std::size_t kMinCap = std::size_t{1} << 20;

struct SlabHeader {
  std::uint32_t magic;
  std::atomic<std::uint32_t> state;
};
static_assert(sizeof(SlabHeader) <= kSlabPayloadOffset);
constexpr off_t kStateOffset = offsetof(SlabHeader, state);

SlabHeader* header_of(std::byte* map) { return reinterpret_cast<SlabHeader*>(map); }

}  // namespace

BulkSender::~BulkSender() {
  for (Slab& s : slabs_) drop(s);
}

void BulkSender::drop(Slab& s) noexcept {
  if (s.map) ::munmap(s.map, kSlabPayloadOffset + s.cap);
  if (s.fd >= 0) ::close(s.fd);
  s = Slab{};
}

bool BulkSender::is_free(const Slab& s) noexcept {
  return header_of(s.map)->state.load(std::memory_order_acquire) == kFree;
}

BulkSender::Slab BulkSender::make_slab(std::size_t cap) {
  sys::UniqueFd fd(::memfd_create("mproc-bulk", MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!fd) sys::throw_errno("memfd_create(bulk slab)");
  const std::size_t bytes = kSlabPayloadOffset + cap;
  if (::ftruncate(fd.get(), static_cast<off_t>(bytes)) != 0) sys::throw_errno("ftruncate(bulk slab)");
  // Sealed before anyone else sees it: the receiver can neither truncate our
  // mapping away (SIGBUS here) nor seal it against our writes.
  if (::fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0)
    sys::throw_errno("fcntl(F_ADD_SEALS, bulk slab)");
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
  if (p == MAP_FAILED) sys::throw_errno("mmap(bulk slab)");
  Slab s;
  s.map = static_cast<std::byte*>(p);
  s.cap = cap;
  s.fd = fd.release();
  header_of(s.map)->magic = kSlabMagic;
  header_of(s.map)->state.store(kFree, std::memory_order_relaxed);
  return s;
}

int BulkSender::stage(std::span<const std::span<const std::byte>> parts, std::size_t total) {
  const pid_t me = ::getpid();
  if (owner_ != me) {  // inherited through fork: the parent's slabs are the parent's
    for (Slab& s : slabs_) drop(s);
    slabs_.clear();
    owner_ = me;
  }
  Slab* use = nullptr;
  for (Slab& s : slabs_)
    if (s.cap >= total && is_free(s) && (!use || s.cap < use->cap)) use = &s;
  if (!use) {
    const std::size_t cap = std::max(kMinCap, std::bit_ceil(total));
    Slab fresh = make_slab(cap);
    // Room for it: a free slab too small goes first, else the oldest in
    // flight (its receiver's fd keeps the memory alive).
    auto victim = std::find_if(slabs_.begin(), slabs_.end(), [](const Slab& s) { return is_free(s); });
    if (victim == slabs_.end() && slabs_.size() >= kMaxSlabs) victim = slabs_.begin();
    if (victim != slabs_.end()) {
      drop(*victim);
      slabs_.erase(victim);
    }
    slabs_.push_back(fresh);
    use = &slabs_.back();
  }
  std::byte* dst = use->map + kSlabPayloadOffset;
  // The first use faults pages in; a batched prefault is cheaper than one
  // fault per 4 KiB page inside memcpy.
  (void)::madvise(dst, total, MADV_POPULATE_WRITE);
  for (std::span<const std::byte> part : parts) {
    if (!part.empty()) sys::copy_to_shared(dst, part.data(), part.size());  // the receiver reads it next
    dst += part.size();
  }
  header_of(use->map)->state.store(kInFlight, std::memory_order_release);
  return use->fd;
}

void BulkSender::after_send() noexcept {
  std::erase_if(slabs_, [](Slab& s) {
    if (s.cap < kKeepCap) return false;
    drop(s);
    return true;
  });
}

// ---- receiving --------------------------------------------------------------

ssize_t recv_stream(int sock, std::byte* dst, std::size_t n, std::uint64_t& stream_pos,
                    std::deque<ArrivedFd>& fds) {
  iovec iov{dst, n};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 4)];
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  const ssize_t r = ::recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
  if (r < 0) return r;
  stream_pos += static_cast<std::uint64_t>(r);
  if (msg.msg_controllen == 0) return r;  // the common case: no fds
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    const std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (std::size_t i = 0; i < count; ++i) {
      int fd = -1;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
      // An fd that came with no byte cannot belong to a header: refused.
      if (r == 0) {
        ::close(fd);
        continue;
      }
      fds.push_back({stream_pos - 1, sys::UniqueFd(fd)});
      if (fds.size() > kMaxArrivedFds) fds.pop_front();  // never more than a few held
    }
  }
  return r;
}

sys::UniqueFd take_header_fd(std::deque<ArrivedFd>& fds, std::uint64_t start, std::uint64_t size) {
  sys::UniqueFd mine;
  while (!fds.empty() && fds.front().pos < start + size) {
    if (fds.front().pos >= start && !mine) mine = std::move(fds.front().fd);
    fds.pop_front();  // anything else before the header's end was not ours to keep
  }
  return mine;
}

VerifiedSlab verify_bulk_fd(int fd, std::uint64_t length) {
  struct stat st{};
  if (::fstat(fd, &st) != 0) sys::throw_errno("fstat(bulk payload fd)");
  if (!S_ISREG(st.st_mode))
    throw ProtocolError(fmt::format("recv: bulk frame of {} bytes: the attached fd is not a shared-memory "
                                    "file (file type {:#o})", length, st.st_mode & S_IFMT));
  const int seals = ::fcntl(fd, F_GET_SEALS);
  if (seals < 0)
    throw ProtocolError(fmt::format("recv: bulk frame of {} bytes: the attached fd is a regular file, not a "
                                    "memfd (F_GET_SEALS: {})", length, std::strerror(errno)));
  if (!(seals & F_SEAL_SHRINK))
    throw ProtocolError(fmt::format("recv: bulk frame of {} bytes: the attached memfd is not sealed against "
                                    "shrinking (seals {:#x}); refused", length, seals));
  // Only the state word of an mproc slab is ever written back (read_bulk):
  // a memfd of other use (a peer that got one of ours) is refused.
  std::uint32_t magic = 0;
  if (::pread(fd, &magic, sizeof magic, 0) != static_cast<ssize_t>(sizeof magic) || magic != kSlabMagic)
    throw ProtocolError(fmt::format("recv: bulk frame of {} bytes: the attached memfd is not an mproc bulk "
                                    "slab (no slab magic)", length));
  const auto size = static_cast<std::uint64_t>(st.st_size);
  if (size < kSlabPayloadOffset || size - kSlabPayloadOffset < length)
    throw ProtocolError(fmt::format("recv: bulk frame announces {} bytes but its memfd holds {} bytes of "
                                    "payload", length, size < kSlabPayloadOffset ? 0 : size - kSlabPayloadOffset));
  // Memory the sender really spent: a sparse file of the right size would
  // make us allocate what it never paid for.
  const auto allocated = static_cast<std::uint64_t>(st.st_blocks) * 512;
  if (allocated < length)
    throw ProtocolError(fmt::format("recv: bulk frame announces {} bytes but its memfd has only {} bytes of "
                                    "memory allocated (a sparse file)", length, allocated));
  return {st.st_dev, st.st_ino};
}

SlabMaps::~SlabMaps() {
  for (const Map& m : maps_) ::munmap(m.base, m.len);
  if (oneshot_) ::munmap(oneshot_, oneshot_len_);
}

const std::byte* SlabMaps::payload(int fd, dev_t dev, ino_t ino, std::size_t length) {
  if (oneshot_) {
    ::munmap(oneshot_, oneshot_len_);
    oneshot_ = nullptr;
  }
  const std::size_t need = (kSlabPayloadOffset + length + 4095) & ~std::size_t{4095};
  for (auto it = maps_.begin(); it != maps_.end(); ++it) {
    if (it->dev != dev || it->ino != ino) continue;
    if (it->len >= need) {
      std::rotate(it, it + 1, maps_.end());  // most recently used last
      return maps_.back().base + kSlabPayloadOffset;
    }
    ::munmap(it->base, it->len);  // too short for this message: mapped again below
    maps_.erase(it);
    break;
  }
  // Only the pages this message needs (the sender allocated at least as
  // many: verify_bulk_fd), populated in one go rather than faulted one by one.
  void* p = ::mmap(nullptr, need, PROT_READ, MAP_SHARED | MAP_POPULATE, fd, 0);
  if (p == MAP_FAILED) return nullptr;
  auto* base = static_cast<std::byte*>(p);
  if (need > kKeepCap) {
    oneshot_ = base;
    oneshot_len_ = need;
    return base + kSlabPayloadOffset;
  }
  if (maps_.size() >= kMaxSlabs) {
    ::munmap(maps_.front().base, maps_.front().len);
    maps_.erase(maps_.begin());
  }
  maps_.push_back({dev, ino, base, need});
  return base + kSlabPayloadOffset;
}

void read_bulk(BulkState& b, const VerifiedSlab& slab, std::byte* dst, std::size_t length) {
  const int fd = b.frame_fd.get();
  std::size_t got = 0;
  if (const std::byte* src = b.maps.payload(fd, slab.dev, slab.ino, length)) {
    std::memcpy(dst, src, length);
    got = length;
  }
  while (got < length) {
    const ssize_t r = ::pread(fd, dst + got, length - got, static_cast<off_t>(kSlabPayloadOffset + got));
    if (r > 0) {
      got += static_cast<std::size_t>(r);
    } else if (r == 0) {
      throw ProtocolError(fmt::format("recv: bulk frame of {} bytes: its memfd ended after {} bytes",
                                      length, got));
    } else if (errno != EINTR) {
      sys::throw_errno("pread(bulk payload)");
    }
  }
  // Tell the sender the slab is free again. A file that refuses (sealed
  // against writes by a hostile sender) only means no reuse.
  const std::uint32_t free_state = kFree;
  (void)!::pwrite(fd, &free_state, sizeof free_state, kStateOffset);
}

}  // namespace mproc::detail
