#include "pool/result_ring.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <utility>

namespace mproc::detail {

namespace {
constexpr std::size_t kHeaderBytes = 4096;
constexpr std::uint64_t pad8(std::uint64_t n) { return (n + 7) & ~std::uint64_t{7}; }
}  // namespace

ResultRing ResultRing::create() {
  int fd = ::memfd_create("mproc-results", MFD_CLOEXEC);
  if (fd < 0) sys::throw_errno("memfd_create");
  sys::UniqueFd owned(fd);
  sys::check(::ftruncate(fd, kHeaderBytes + kCapacity), "ftruncate(result ring)");
  ResultRing r = attach(owned.release());
  new (r.hdr_) Header{};
  return r;
}

ResultRing ResultRing::attach(int fd) {
  ResultRing r;
  r.fd_.reset(fd);
  void* p = ::mmap(nullptr, kHeaderBytes + kCapacity, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) sys::throw_errno("mmap(result ring)");
  r.hdr_ = static_cast<Header*>(p);
  r.data_ = static_cast<std::byte*>(p) + kHeaderBytes;
  return r;
}

ResultRing::ResultRing(ResultRing&& o) noexcept
    : fd_(std::move(o.fd_)), hdr_(std::exchange(o.hdr_, nullptr)), data_(std::exchange(o.data_, nullptr)),
      mine_(std::exchange(o.mine_, 0)) {}

ResultRing& ResultRing::operator=(ResultRing&& o) noexcept {
  if (this != &o) {
    this->~ResultRing();
    new (this) ResultRing(std::move(o));
  }
  return *this;
}

ResultRing::~ResultRing() {
  if (hdr_) ::munmap(hdr_, kHeaderBytes + kCapacity);
  hdr_ = nullptr;
}

void ResultRing::copy_in(std::uint64_t pos, const void* src, std::size_t n) {
  const std::size_t at = pos & (kCapacity - 1);
  const std::size_t first = std::min(n, kCapacity - at);
  std::memcpy(data_ + at, src, first);
  if (first < n) std::memcpy(data_, static_cast<const std::byte*>(src) + first, n - first);
}

void ResultRing::copy_out(std::uint64_t pos, void* dst, std::size_t n) const {
  const std::size_t at = pos & (kCapacity - 1);
  const std::size_t first = std::min(n, kCapacity - at);
  std::memcpy(dst, data_ + at, first);
  if (first < n) std::memcpy(static_cast<std::byte*>(dst) + first, data_, n - first);
}

bool ResultRing::try_push(std::span<const std::byte> msg, std::uint32_t flags) {
  const std::uint64_t head = mine_;
  const std::uint64_t tail = hdr_->tail.load(std::memory_order_acquire);
  // The consumer never runs ahead of what was written, nor falls more than
  // the capacity behind: anything else was written by someone else.
  if (tail > head || head - tail > kCapacity)
    throw ProtocolError("result ring: the consumer's index " + std::to_string(tail) + " is outside the " +
                        std::to_string(head) + " bytes written (the mapping was overwritten)");
  const std::uint64_t need = 8 + pad8(msg.size());
  if (kCapacity - (head - tail) < need) return false;
  const std::uint32_t len = static_cast<std::uint32_t>(msg.size()) | flags;
  copy_in(head, &len, sizeof len);
  copy_in(head + 8, msg.data(), msg.size());
  mine_ = head + need;
  hdr_->head.store(mine_, std::memory_order_seq_cst);
  return true;
}

bool ResultRing::consumer_sleeping() const noexcept { return hdr_->sleeping.load(std::memory_order_seq_cst) != 0; }

bool ResultRing::try_pop(Bytes& out, std::uint32_t& out_flags) {
  const std::uint64_t tail = mine_;
  const std::uint64_t head = hdr_->head.load(std::memory_order_acquire);
  if (head == tail) return false;
  // The producer is another process, running code we do not trust.
  if (head < tail || head - tail > kCapacity)
    throw ProtocolError("result ring: the producer's index " + std::to_string(head) + " is outside the " +
                        std::to_string(kCapacity) + " bytes after " + std::to_string(tail) +
                        " (the mapping was overwritten)");
  std::uint32_t len = 0;
  copy_out(tail, &len, sizeof len);
  out_flags = len & kMore;
  len &= ~kMore;
  if (len > kMaxRecord || 8 + pad8(len) > head - tail)
    throw ProtocolError("result ring: a record of " + std::to_string(len) + " bytes overruns the " +
                        std::to_string(head - tail) + " bytes written");
  out.resize(len);
  copy_out(tail + 8, out.data(), len);
  mine_ = tail + 8 + pad8(len);
  hdr_->tail.store(mine_, std::memory_order_release);
  return true;
}

bool ResultRing::empty() const noexcept { return hdr_->head.load(std::memory_order_seq_cst) == mine_; }

void ResultRing::set_sleeping(bool sleeping) noexcept { hdr_->sleeping.store(sleeping ? 1 : 0, std::memory_order_seq_cst); }

}  // namespace mproc::detail
