// Large task arguments and results through a per-worker memfd: see task_arena.hpp.
#include "pool/task_arena.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <utility>

#include "mproc/call.hpp"
#include "mproc/errors.hpp"
#include "sys/shared_copy.hpp"

namespace mproc::detail {

namespace {
constexpr std::size_t kArgsAt = 4096;
constexpr std::size_t kResultsAt = kArgsAt + TaskArena::kArgsCap;
constexpr std::size_t kBytes = kResultsAt + TaskArena::kResultsCap;
constexpr std::size_t kAlign = 64;
constexpr std::size_t align_up(std::size_t n) { return (n + kAlign - 1) & ~(kAlign - 1); }
}  // namespace

// ---- RegionFifo -------------------------------------------------------------

std::optional<std::size_t> RegionFifo::take(std::size_t len, std::uint64_t tag) {
  len = align_up(std::max<std::size_t>(len, 1));
  if (len > cap_) return std::nullopt;
  peak_ = std::max(peak_, held_ + len);  // counted even when it fails: the demand seen
  std::size_t off = 0;
  if (!regions_.empty()) {
    const std::size_t first = regions_.front().off;
    const std::size_t end = regions_.back().off + regions_.back().len;
    if (regions_.back().off >= first) {  // held: [first, end); free: [end, cap) and [0, first)
      // Back to the start early, once [0, first) has room for the most this
      // FIFO has held at once plus this region: a steady stream then cycles
      // over about twice what it keeps in flight (pages faulted once, still
      // in cache) instead of walking the whole area, and after the wrap,
      // where only [end, first) is free, the regions that follow still fit.
      // (Wrapping as soon as `len` fitted left no room for the next task when
      // more went in flight: it went inline, a copy through fresh memory.)
      if (first >= peak_ + len) off = 0;
      else if (cap_ - end >= len) off = end;
      else if (first >= len) off = 0;  // the ring's ordinary wrap
      else return std::nullopt;
    } else {  // wrapped (the newest lies before the oldest): held [first, cap) and [0, end); free: [end, first)
      if (first - end >= len) off = end;
      else return std::nullopt;
    }
  }
  regions_.push_back({tag, off, len});
  held_ += len;
  return off;
}

bool RegionFifo::give_back(std::uint64_t tag) {
  for (auto it = regions_.begin(); it != regions_.end(); ++it) {
    if (it->tag != tag) continue;
    // Out of order (rare: a task resent elsewhere): its bytes stay held
    // until those before it go, but it no longer counts as the last.
    if (it == regions_.begin() || std::next(it) == regions_.end()) {
      held_ -= it->len;
      regions_.erase(it);
    } else {
      it->tag = kHole;  // freed with its neighbours
    }
    while (!regions_.empty() && regions_.front().tag == kHole) pop_oldest();
    return true;
  }
  return false;
}

void RegionFifo::pop_oldest() noexcept {
  held_ -= regions_.front().len;
  regions_.pop_front();
}

// ---- TaskArena --------------------------------------------------------------

void copy_into_arena(std::byte* dst, const void* src, std::size_t n) noexcept { sys::copy_to_shared(dst, src, n); }

struct TaskArena::Header {
  std::atomic<std::uint64_t> results_consumed;  // written by the engine only
};

TaskArena::Header* TaskArena::header() const noexcept { return reinterpret_cast<Header*>(base_); }

TaskArena TaskArena::create() {
  sys::UniqueFd fd(::memfd_create("mproc-pool-bulk", MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!fd) sys::throw_errno("memfd_create(pool bulk arena)");
  // Sparse: memory is spent only on the pages large tasks touch.
  if (::ftruncate(fd.get(), static_cast<off_t>(kBytes)) != 0) sys::throw_errno("ftruncate(pool bulk arena)");
  if (::fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0)
    sys::throw_errno("fcntl(F_ADD_SEALS, pool bulk arena)");
  void* p = ::mmap(nullptr, kBytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd.get(), 0);
  if (p == MAP_FAILED) sys::throw_errno("mmap(pool bulk arena)");
  // A child forked from here (a worker, a user's Process) must not inherit
  // this mapping: it would keep a dead worker's arena alive for its own life.
  (void)::madvise(p, kBytes, MADV_DONTFORK);
  TaskArena a;
  a.fd_ = std::move(fd);
  a.base_ = static_cast<std::byte*>(p);
  new (a.base_) Header{};
  return a;
}

TaskArena TaskArena::attach(int fd) {
  sys::UniqueFd owned(fd);
  struct stat st{};
  if (::fstat(fd, &st) != 0) sys::throw_errno("fstat(pool bulk arena)");
  if (static_cast<std::uint64_t>(st.st_size) < kBytes)
    throw ProtocolError(fmt::format("pool bulk arena of {} bytes, expected {}", st.st_size, kBytes));
  void* p = ::mmap(nullptr, kBytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0);
  if (p == MAP_FAILED) sys::throw_errno("mmap(pool bulk arena)");
  TaskArena a;
  a.base_ = static_cast<std::byte*>(p);
  // The mapping keeps the memory: no fd is left for a task to break.
  return a;
}

TaskArena::TaskArena(TaskArena&& o) noexcept
    : fd_(std::move(o.fd_)),
      base_(std::exchange(o.base_, nullptr)),
      args_(std::move(o.args_)),
      results_(std::move(o.results_)),
      results_placed_(o.results_placed_),
      results_freed_(o.results_freed_) {}

TaskArena& TaskArena::operator=(TaskArena&& o) noexcept {
  if (this != &o) {
    this->~TaskArena();
    new (this) TaskArena(std::move(o));
  }
  return *this;
}

TaskArena::~TaskArena() {
  if (base_) ::munmap(base_, kBytes);
  base_ = nullptr;
}

std::optional<std::size_t> TaskArena::reserve_argument(std::uint64_t task, std::size_t len) {
  const auto off = args_.take(len, task);
  if (!off) return std::nullopt;
  (void)::madvise(argument_data(*off), len, MADV_POPULATE_WRITE);  // first use: one batched fault, not one per page
  return off;
}

std::byte* TaskArena::argument_data(std::size_t off) const noexcept { return base_ + kArgsAt + off; }

std::optional<std::size_t> TaskArena::stage_argument(std::uint64_t task, std::span<const std::byte> payload) {
  const auto off = reserve_argument(task, payload.size());
  if (off) sys::copy_to_shared(argument_data(*off), payload.data(), payload.size());
  return off;
}

std::span<const std::byte> TaskArena::result(std::uint64_t off, std::uint64_t len) const {
  if (off > kResultsCap || len > kResultsCap - off)
    throw ProtocolError(fmt::format("a result descriptor of {} bytes at offset {} lies outside the worker's "
                                    "result area of {} bytes",
                                    len, off, kResultsCap));
  return {base_ + kResultsAt + off, static_cast<std::size_t>(len)};
}

void TaskArena::result_consumed() noexcept { header()->results_consumed.fetch_add(1, std::memory_order_release); }

std::span<const std::byte> TaskArena::argument(std::uint64_t off, std::uint64_t len) const {
  if (off > kArgsCap || len > kArgsCap - off)
    throw ProtocolError(fmt::format("a task argument of {} bytes at offset {} lies outside the pool bulk "
                                    "arena's {} bytes",
                                    len, off, kArgsCap));
  return {base_ + kArgsAt + off, static_cast<std::size_t>(len)};
}

std::optional<std::size_t> TaskArena::place_result(std::span<const std::byte> data) {
  // Regions of results the engine has read are free (results are read in order).
  const std::uint64_t consumed = header()->results_consumed.load(std::memory_order_acquire);
  while (results_freed_ < consumed && results_freed_ < results_placed_ && !results_.empty()) {
    results_.pop_oldest();
    ++results_freed_;
  }
  const auto off = results_.take(data.size(), results_placed_);
  if (!off) return std::nullopt;
  std::byte* dst = base_ + kResultsAt + *off;
  (void)::madvise(dst, data.size(), MADV_POPULATE_WRITE);
  sys::copy_to_shared(dst, data.data(), data.size());  // the engine reads it next, on another core
  ++results_placed_;
  return off;
}

}  // namespace mproc::detail
