// The shared-memory queue: a byte ring under a robust mutex, futex wake-ups,
// and large messages in reused slots of a second memfd.
#include "mproc/queues.hpp"

#include <fcntl.h>
#include <linux/falloc.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <bit>
#include <cerrno>
#include <climits>
#include <cstring>
#include <system_error>

#include "shared/queue_fault_hook.hpp"
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
  std::uint64_t slot, len;
};

// Large messages (over a quarter of the ring) live in slots of the big
// memfd, each a page-aligned region [off, off + cap) that keeps its pages
// between messages (no fault, no allocation per message). A slot's life,
// every transition under the queue's lock:
//
//   unused ──put: no free slot fits──▶ writing(pid) ──put's commit──▶ queued
//     ▲                                   ▲   │                          │
//     │ cap over kKeepSlot               │   │ put times out / fails    │ get's commit
//     │ (pages punched)          free ───┘   ▼                          ▼
//   freed ◀────────────────────────────── free ◀──get copied it out── reading(pid)
//
// A writing or reading slot whose pid is dead (killed inside put, or after
// get's commit) is taken back when a put finds no free slot: a dead
// producer's half-written message or a dead consumer's message in hand,
// never a message still queued. A queued slot never read dies with the
// queue's memfd (nothing is named: nothing reaches /dev/shm).
enum SlotState : std::uint32_t { kUnused = 0, kSlotFree, kWriting, kQueued, kReading };
struct BigSlot {
  std::uint64_t off;
  std::uint64_t cap;
  std::uint32_t state;
  std::int32_t pid;
};
constexpr std::size_t kSlots = 64;
// A slot larger than this gives its pages back once read (a queue keeps at
// most a few of them resident).
constexpr std::uint64_t kKeepSlot = std::uint64_t{64} << 20;
constexpr std::uint64_t kMinSlot = std::uint64_t{64} << 10;

bool pid_dead(std::int32_t pid) { return pid > 0 && ::kill(pid, 0) != 0 && errno == ESRCH; }
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
  BigSlot slots[kSlots];  // large messages' regions of the big file (under the lock)
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

// Takes a slot of at least len bytes for this process (under the lock):
// the smallest free one, else a new region, else one whose holder died.
std::uint64_t QueueCore::take_slot(std::uint64_t len) const {
  lock();
  BigSlot* best = nullptr;
  BigSlot* unused = nullptr;
  for (BigSlot& sl : st_->slots) {
    if (sl.state == kSlotFree && sl.cap >= len && (!best || sl.cap < best->cap)) best = &sl;
    if (sl.state == kUnused && !unused) unused = &sl;
  }
  if (!best)
    for (BigSlot& sl : st_->slots)  // holders killed inside put, or after get's commit
      if ((sl.state == kWriting || sl.state == kReading) && pid_dead(sl.pid)) {
        if (sl.cap >= len) {
          best = &sl;
          break;
        }
        free_pages(sl.off, sl.cap);
        sl.state = kUnused;
        if (!unused) unused = &sl;
      }
  if (!best && unused) {
    const std::uint64_t cap = std::max(kMinSlot, std::bit_ceil(round_page(len)));
    unused->off = st_->big_next.fetch_add(cap);
    unused->cap = cap;
    best = unused;
  }
  if (!best) {
    mutex_.release();
    throw Error("mproc::Queue: all " + std::to_string(kSlots) + " large-message slots are in use");
  }
  best->pid = static_cast<std::int32_t>(::getpid());  // before the state: a kill between leaves it reclaimable
  best->state = kWriting;
  const auto index = static_cast<std::uint64_t>(best - st_->slots);
  mutex_.release();
  return index;
}

void QueueCore::release_slot(std::uint64_t index, bool locked) const noexcept {
  if (!locked) {
    try {
      lock();
    } catch (...) {
      return;  // the lock is gone (closed queue): the slot dies with the memfd
    }
  }
  BigSlot& sl = st_->slots[index];
  if (sl.cap > kKeepSlot) {
    free_pages(sl.off, sl.cap);
    sl.state = kUnused;
  } else {
    sl.state = kSlotFree;
  }
  if (!locked) mutex_.release();
}

std::uint64_t QueueCore::store_big(std::span<const std::byte> msg) const {
  const std::uint64_t index = take_slot(msg.size());
  const std::uint64_t off = st_->slots[index].off;
  // pwrite, not a mapping: no page-table faults per message; the slot's
  // pages stay allocated in the memfd between messages.
  std::size_t done = 0;
  while (done < msg.size()) {
    const ssize_t w = ::pwrite(big_.fileno(), msg.data() + done, msg.size() - done, static_cast<off_t>(off + done));
    if (w > 0) {
      done += static_cast<std::size_t>(w);
    } else if (w < 0 && errno != EINTR) {
      const int err = errno;
      release_slot(index, false);
      sys::throw_errno("pwrite(queue message)", err);
    }
  }
  return index;
}

void QueueCore::load_big(std::uint64_t index, std::uint64_t len, Bytes& out) const {
  const std::uint64_t off = st_->slots[index].off;
  out.resize(len);
  std::size_t done = 0;
  while (done < len) {
    const ssize_t r = ::pread(big_.fileno(), out.data() + done, len - done, static_cast<off_t>(off + done));
    if (r > 0) {
      done += static_cast<std::size_t>(r);
    } else if (r == 0 || errno != EINTR) {
      const int err = r == 0 ? EIO : errno;
      release_slot(index, false);
      sys::throw_errno("pread(queue message)", err);
    }
  }
  hook("get:after-commit");
  release_slot(index, false);
}

// Gives the pages back; the file's size stays (sparse).
void QueueCore::free_pages(std::uint64_t off, std::uint64_t len) const noexcept {
  ::fallocate(big_.fileno(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(off),
              static_cast<off_t>(len));
}

bool QueueCore::put(std::span<const std::byte> msg, bool block, Timeout timeout) const {
  QueueState& st = const_cast<QueueState&>(state("put"));
  // Over a quarter of the ring (or a 32-bit record length) goes aside, so a
  // put never waits for more contiguous room than a quarter of the ring.
  const bool big = msg.size() > std::min<std::uint64_t>(st.capacity / 4, UINT32_MAX);
  BigRef ref{};
  if (big) ref = {store_big(msg), msg.size()};  // a slot in state writing
  const std::span<const std::byte> payload =
      big ? std::as_bytes(std::span<const BigRef>(&ref, 1)) : msg;
  const Record rec{static_cast<std::uint32_t>(payload.size()), big ? kBig : 0};
  const std::uint64_t need = sizeof rec + pad8(payload.size());
  const sys::Deadline deadline = block ? sys::deadline_after(timeout) : sys::Deadline::forever();
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
      if (big) st.slots[ref.slot].state = kQueued;
      st.count.fetch_add(1, std::memory_order_relaxed);
      st.unfinished.fetch_add(1, std::memory_order_relaxed);
      st.put_seq.fetch_add(1, std::memory_order_release);
      const bool wake = st.getters_waiting.load(std::memory_order_relaxed) > 0;
      mutex_.release();
      if (wake) sys::futex_wake(&st.put_seq, 1);
      return true;
    }
    if (!block || sys::expired(deadline)) {
      if (big) release_slot(ref.slot, true);
      mutex_.release();
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
  const sys::Deadline deadline = block ? sys::deadline_after(timeout) : sys::Deadline::forever();
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
      BigRef ref{};
      if (rec.flags & kBig) copy_out(tail + sizeof rec, &ref, sizeof ref);
      if (need > head - tail ||
          ((rec.flags & kBig) && (rec.len != sizeof(BigRef) || ref.slot >= kSlots ||
                                  st.slots[ref.slot].state != kQueued || ref.len > st.slots[ref.slot].cap))) {
        st.tail.store(head);
        st.count.store(0);
        mutex_.release();
        throw ProtocolError("mproc::Queue: corrupt record of " + std::to_string(rec.len) + " bytes");
      }
      if (rec.flags & kBig) {
        st.slots[ref.slot].state = kReading;  // ours from the commit on; taken back if we die
        st.slots[ref.slot].pid = static_cast<std::int32_t>(::getpid());
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
      if (rec.flags & kBig) load_big(ref.slot, ref.len, out);
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
