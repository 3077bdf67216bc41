// The shared-memory queue: a byte ring under a robust mutex, futex wake-ups,
// and large messages in hole-punched pages of a second memfd.
#include "mproc/queues.hpp"

#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/mman.h>

#include <atomic>
#include <bit>
#include <cerrno>
#include <climits>
#include <cstring>
#include <system_error>

#include "sys/fd.hpp"
#include "sys/futex.hpp"

namespace mproc::detail {

namespace {
constexpr std::size_t kStateBytes = 4096;
constexpr std::size_t kPage = 4096;
constexpr std::uint32_t kBig = 1;  // record flag: payload is {offset, length} in the big file
constexpr std::chrono::milliseconds kSlice{100};
constexpr int kSpin = 200;
constexpr std::uint64_t pad8(std::uint64_t n) { return (n + 7) & ~std::uint64_t{7}; }
constexpr std::uint64_t round_page(std::uint64_t n) { return (n + kPage - 1) & ~std::uint64_t{kPage - 1}; }

std::atomic<QueueFaultHook> g_hook{nullptr};
void hook(const char* where) {
  if (auto h = g_hook.load(std::memory_order_relaxed)) h(where);
}

struct Record {
  std::uint32_t len;
  std::uint32_t flags;
};
struct BigRef {
  std::uint64_t off, len;
};
}  // namespace

void set_queue_fault_hook(QueueFaultHook h) noexcept { g_hook.store(h); }

struct QueueState {
  std::uint64_t capacity;  // ring bytes, a power of two
  std::uint64_t maxsize;   // messages; 0: none
  std::atomic<std::uint64_t> head;   // bytes ever written: put's commit point
  std::atomic<std::uint64_t> tail;   // bytes ever consumed: get's commit point
  std::atomic<std::uint64_t> count;  // messages between tail and head
  std::atomic<std::uint32_t> put_seq;  // futex: bumped by every put
  std::atomic<std::uint32_t> get_seq;  // futex: bumped by every get
  std::atomic<std::uint32_t> getters_waiting;
  std::atomic<std::uint32_t> putters_waiting;
  std::atomic<std::uint64_t> big_next;  // next free offset in the big file
  std::atomic<std::int64_t> unfinished;
  std::atomic<std::uint32_t> done_seq;  // futex: bumped when unfinished reaches 0
};
static_assert(kMutexStateSize + sizeof(QueueState) <= kStateBytes);

QueueCore::QueueCore(const QueueOptions& options, bool /*joinable: every queue counts, only
                                                        JoinableQueue exposes it*/) {
  const std::uint64_t cap = std::bit_ceil(std::max<std::uint64_t>(options.ring_bytes, kPage));
  mem_ = SharedMemory(kStateBytes + cap);
  big_ = SharedMemory(kPage);
  mutex_ = SharedMutex(mem_, 0, true, false);
  st_ = new (mem_.data() + kMutexStateSize) QueueState{};
  st_->capacity = cap;
  st_->maxsize = options.maxsize;
  st_->big_next.store(kPage);
  ring_ = mem_.data() + kStateBytes;
}

void QueueCore::save(OutputArchive& ar) const {
  state("save");
  ar(mem_, big_);
}

void QueueCore::load(InputArchive& ar) {
  ar(mem_, big_);
  if (mem_.size() < kStateBytes + kPage) throw DeserializeError("mproc::Queue: shared block too small");
  mutex_ = SharedMutex(mem_, 0, false, false);
  st_ = reinterpret_cast<QueueState*>(mem_.data() + kMutexStateSize);
  if (st_->capacity + kStateBytes != mem_.size()) throw DeserializeError("mproc::Queue: ring size mismatch");
  ring_ = mem_.data() + kStateBytes;
}

void QueueCore::close() noexcept {
  st_ = nullptr;
  ring_ = nullptr;
  mutex_ = SharedMutex();
  mem_.close();
  big_.close();
}

const QueueState& QueueCore::state(const char* op) const {
  if (!st_) throw Error(std::string("mproc::Queue::") + op + " on a closed queue");
  return *st_;
}

void QueueCore::lock() const {
  mutex_.acquire(std::nullopt);
  if (mutex_.owner_died()) recover();
}

// The previous holder died inside put/get. head and tail are single stores,
// so the ring holds exactly the committed records; recount them.
void QueueCore::recover() const {
  std::uint64_t pos = st_->tail.load(), head = st_->head.load(), n = 0;
  while (pos < head) {
    Record r{};
    copy_out(pos, &r, sizeof r);
    const std::uint64_t need = sizeof r + pad8(r.len);
    if (need > head - pos) {  // cannot happen with committed records; never trust it blindly
      st_->tail.store(head);
      n = 0;
      break;
    }
    pos += need;
    ++n;
  }
  st_->count.store(n);
}

void QueueCore::copy_in(std::uint64_t pos, const void* src, std::size_t n) const {
  const std::size_t cap = st_->capacity, at = pos & (cap - 1), first = std::min(n, cap - at);
  std::memcpy(ring_ + at, src, first);
  if (first < n) std::memcpy(ring_, static_cast<const std::byte*>(src) + first, n - first);
}

void QueueCore::copy_out(std::uint64_t pos, void* dst, std::size_t n) const {
  const std::size_t cap = st_->capacity, at = pos & (cap - 1), first = std::min(n, cap - at);
  std::memcpy(dst, ring_ + at, first);
  if (first < n) std::memcpy(static_cast<std::byte*>(dst) + first, ring_, n - first);
}

std::uint64_t QueueCore::store_big(std::span<const std::byte> msg) const {
  const std::uint64_t len = round_page(msg.size());
  const std::uint64_t off = st_->big_next.fetch_add(len);
  const int fd = big_.fileno();
  if (::fallocate(fd, 0, static_cast<off_t>(off), static_cast<off_t>(len)) != 0)
    sys::throw_errno("fallocate(queue message)");
  void* p = ::mmap(nullptr, len, PROT_WRITE, MAP_SHARED, fd, static_cast<off_t>(off));
  if (p == MAP_FAILED) {
    int err = errno;
    free_big(off, len);
    sys::throw_errno("mmap(queue message)", err);
  }
  std::memcpy(p, msg.data(), msg.size());
  ::munmap(p, len);
  return off;
}

void QueueCore::load_big(std::uint64_t off, std::uint64_t len, Bytes& out) const {
  const std::uint64_t mapped = round_page(len);
  out.resize(len);
  void* p = ::mmap(nullptr, mapped, PROT_READ, MAP_SHARED, big_.fileno(), static_cast<off_t>(off));
  if (p == MAP_FAILED) {
    int err = errno;
    free_big(off, mapped);
    sys::throw_errno("mmap(queue message)", err);
  }
  std::memcpy(out.data(), p, len);
  ::munmap(p, mapped);
  free_big(off, mapped);
}

// Gives the pages back; the file's size stays (sparse), offsets never reuse.
void QueueCore::free_big(std::uint64_t off, std::uint64_t len) const noexcept {
  ::fallocate(big_.fileno(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(off),
              static_cast<off_t>(len));
}

bool QueueCore::put(std::span<const std::byte> msg, bool block, Timeout timeout) const {
  QueueState& st = const_cast<QueueState&>(state("put"));
  // Over a quarter of the ring (or a 32-bit record length) goes aside, so a
  // put never waits for more contiguous room than a quarter of the ring.
  const bool big = msg.size() > std::min<std::uint64_t>(st.capacity / 4, UINT32_MAX);
  BigRef ref{};
  if (big) ref = {store_big(msg), msg.size()};
  const std::span<const std::byte> payload =
      big ? std::as_bytes(std::span<const BigRef>(&ref, 1)) : msg;
  const Record rec{static_cast<std::uint32_t>(payload.size()), big ? kBig : 0};
  const std::uint64_t need = sizeof rec + pad8(payload.size());
  const sys::Deadline deadline = block ? sys::deadline_after(timeout) : std::nullopt;
  lock();
  for (;;) {
    const std::uint64_t head = st.head.load(std::memory_order_relaxed);
    const bool room = st.capacity - (head - st.tail.load(std::memory_order_relaxed)) >= need &&
                      (st.maxsize == 0 || st.count.load(std::memory_order_relaxed) < st.maxsize);
    if (room) {
      copy_in(head, &rec, sizeof rec);
      copy_in(head + sizeof rec, payload.data(), payload.size());
      hook("put:before-commit");
      st.head.store(head + need, std::memory_order_release);  // the commit point
      st.count.fetch_add(1, std::memory_order_relaxed);
      st.unfinished.fetch_add(1, std::memory_order_relaxed);
      st.put_seq.fetch_add(1, std::memory_order_release);
      const bool wake = st.getters_waiting.load(std::memory_order_relaxed) > 0;
      mutex_.release();
      if (wake) sys::futex_wake(&st.put_seq, 1);
      return true;
    }
    if (!block || sys::expired(deadline)) {
      mutex_.release();
      if (big) free_big(ref.off, round_page(ref.len));
      return false;
    }
    const std::uint32_t seq = st.get_seq.load();
    st.putters_waiting.fetch_add(1);
    mutex_.release();
    sys::futex_wait(&st.get_seq, seq, sys::sliced(deadline, kSlice));
    lock();
    st.putters_waiting.fetch_sub(1);
  }
}

bool QueueCore::get(Bytes& out, bool block, Timeout timeout) const {
  QueueState& st = const_cast<QueueState&>(state("get"));
  const sys::Deadline deadline = block ? sys::deadline_after(timeout) : std::nullopt;
  if (block)  // a short spin: a put arriving within microseconds costs no sleep
    for (int i = 0; i < kSpin && st.count.load(std::memory_order_relaxed) == 0; ++i) sys::cpu_relax();
  lock();
  for (;;) {
    const std::uint64_t tail = st.tail.load(std::memory_order_relaxed);
    const std::uint64_t head = st.head.load(std::memory_order_relaxed);
    if (head != tail) {
      Record rec{};
      copy_out(tail, &rec, sizeof rec);
      const std::uint64_t need = sizeof rec + pad8(rec.len);
      if (need > head - tail || ((rec.flags & kBig) && rec.len != sizeof(BigRef))) {
        st.tail.store(head);
        st.count.store(0);
        mutex_.release();
        throw ProtocolError("mproc::Queue: corrupt record of " + std::to_string(rec.len) + " bytes");
      }
      BigRef ref{};
      if (rec.flags & kBig) {
        copy_out(tail + sizeof rec, &ref, sizeof ref);
      } else {
        out.resize(rec.len);
        copy_out(tail + sizeof rec, out.data(), rec.len);
      }
      hook("get:before-commit");
      st.tail.store(tail + need, std::memory_order_release);  // the commit point
      st.count.fetch_sub(1, std::memory_order_relaxed);
      st.get_seq.fetch_add(1, std::memory_order_release);
      const bool wake_putter = st.putters_waiting.load(std::memory_order_relaxed) > 0;
      // Pass the baton: a getter woken for an earlier message may have died.
      const bool wake_getter = head != tail + need && st.getters_waiting.load(std::memory_order_relaxed) > 0;
      mutex_.release();
      if (wake_putter) sys::futex_wake(&st.get_seq, 1);
      if (wake_getter) sys::futex_wake(&st.put_seq, 1);
      if (rec.flags & kBig) load_big(ref.off, ref.len, out);
      return true;
    }
    if (!block || sys::expired(deadline)) {
      mutex_.release();
      return false;
    }
    const std::uint32_t seq = st.put_seq.load();
    st.getters_waiting.fetch_add(1);
    mutex_.release();
    sys::futex_wait(&st.put_seq, seq, sys::sliced(deadline, kSlice));
    lock();
    st.getters_waiting.fetch_sub(1);
  }
}

std::size_t QueueCore::qsize() const { return state("qsize").count.load(); }
bool QueueCore::empty() const {
  const QueueState& st = state("empty");
  return st.head.load() == st.tail.load();
}
bool QueueCore::full() const {
  const QueueState& st = state("full");
  return st.maxsize != 0 && st.count.load() >= st.maxsize;
}

void QueueCore::task_done() const {
  QueueState& st = const_cast<QueueState&>(state("task_done"));
  std::int64_t v = st.unfinished.load();
  do {
    if (v <= 0) throw Error("mproc::JoinableQueue::task_done() called more times than items were put");
  } while (!st.unfinished.compare_exchange_weak(v, v - 1));
  if (v == 1) {
    st.done_seq.fetch_add(1);
    sys::futex_wake(&st.done_seq, INT_MAX);
  }
}

bool QueueCore::join(Timeout timeout) const {
  QueueState& st = const_cast<QueueState&>(state("join"));
  const sys::Deadline deadline = sys::deadline_after(timeout);
  for (;;) {
    const std::uint32_t seq = st.done_seq.load();
    if (st.unfinished.load() <= 0) return true;
    if (!sys::futex_wait(&st.done_seq, seq, deadline)) return st.unfinished.load() <= 0;
  }
}

}  // namespace mproc::detail
