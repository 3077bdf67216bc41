// Robust process-shared mutexes (pthread) and futex-based semaphores,
// events, conditions and barriers on anonymous shared blocks.
#include "mproc/synchronize.hpp"

#include <pthread.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <climits>
#include <new>
#include <system_error>
#include <type_traits>

#include "mproc/function_ref.hpp"
#include "sys/futex.hpp"

namespace mproc {

namespace {
constexpr int kLockSpin = 100;  // trylocks before sleeping on a held lock
using std::chrono::nanoseconds;

// gettid() is a syscall: cache it per thread, and forget it in a forked child.
// The handler is registered at load, never lazily: a first call racing a fork
// in another thread would leave the child a static-init guard held forever.
constinit thread_local pid_t t_tid = 0;
[[maybe_unused]] const int g_tid_atfork = ::pthread_atfork(nullptr, nullptr, [] { t_tid = 0; });
pid_t my_tid() {
  if (t_tid == 0) t_tid = ::gettid();
  return t_tid;
}

timespec monotonic_after(nanoseconds d) {
  timespec now{};
  ::clock_gettime(CLOCK_MONOTONIC, &now);
  long long ns = static_cast<long long>(now.tv_nsec) + d.count() % 1000000000;
  timespec t{};
  t.tv_sec = now.tv_sec + static_cast<time_t>(d.count() / 1000000000 + ns / 1000000000);
  t.tv_nsec = static_cast<long>(ns % 1000000000);
  return t;
}

// Waiters that a killed waker might strand re-check at least this often.
constexpr std::chrono::milliseconds kSlice{200};

template <class State>
State* place(const SharedMemory& mem, std::size_t offset = 0) {
  return reinterpret_cast<State*>(mem.buf().data() + offset);
}
}  // namespace

namespace detail {

struct MutexState {
  pthread_mutex_t m;
  std::atomic<std::int32_t> owner_tid;  // written by the holder; a hint for errors
  std::uint32_t depth;                  // holds by the current owner
  std::uint32_t died;                   // the current hold began with EOWNERDEAD
};
static_assert(sizeof(MutexState) <= kMutexStateSize);

SharedMutex::SharedMutex(SharedMemory mem, std::size_t offset, bool init, bool recursive)
    : mem_(std::move(mem)), offset_(offset) {
  if (offset_ + kMutexStateSize > mem_.size()) throw ValueError("mproc: mutex outside its shared block");
  void* at = mem_.buf().data() + offset_;
  if (init) {
    auto* st = new (at) MutexState{};
    pthread_mutexattr_t a;
    ::pthread_mutexattr_init(&a);
    ::pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    ::pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    ::pthread_mutexattr_settype(&a, recursive ? PTHREAD_MUTEX_RECURSIVE : PTHREAD_MUTEX_ERRORCHECK);
    int rc = ::pthread_mutex_init(&st->m, &a);
    ::pthread_mutexattr_destroy(&a);
    if (rc != 0) throw OSError(rc, "pthread_mutex_init");
  }
  st_ = static_cast<MutexState*>(at);
}

void SharedMutex::load(InputArchive& ar) {
  SharedMemory mem;
  std::uint64_t offset = 0;
  ar(mem, offset);
  *this = SharedMutex(std::move(mem), static_cast<std::size_t>(offset), false, false);
}

bool SharedMutex::acquire(Timeout timeout) const {
  if (!st_) throw Error("mproc: acquire on an empty (moved-from or default) lock");
  // Critical sections here are short (a queue operation, Value += 1): a
  // few trylocks first usually get the lock without the futex sleep and
  // wake-up, which cost microseconds on both sides. Robust mutexes never
  // spin by themselves (glibc has no adaptive robust kind).
  int rc = ::pthread_mutex_trylock(&st_->m);
  for (int i = 0; rc == EBUSY && i < kLockSpin && (!timeout || timeout->count() > 0); ++i) {
    sys::cpu_relax();
    rc = ::pthread_mutex_trylock(&st_->m);
  }
  if (rc != EBUSY) {
    // got it (or EOWNERDEAD, handled below)
  } else if (!timeout) {
    rc = ::pthread_mutex_lock(&st_->m);
  } else if (timeout->count() > 0) {
    timespec abs = monotonic_after(sys::as_duration(timeout));
    rc = ::pthread_mutex_clocklock(&st_->m, CLOCK_MONOTONIC, &abs);
  }
  bool died = false;
  if (rc == EOWNERDEAD) {
    // The holder died: make the mutex usable again (else it turns
    // ENOTRECOVERABLE for good) and tell whoever asks.
    ::pthread_mutex_consistent(&st_->m);
    died = true;
    st_->depth = 0;
    rc = 0;
  }
  if (rc == EBUSY || rc == ETIMEDOUT) return false;
  if (rc == EDEADLK) {
    // The caller holds this (non-recursive) Lock. Python's acquire(False)
    // says False, and acquire(timeout=t) says False after t; blocking for
    // ever would be a deadlock, so that one is an error.
    if (!timeout)
      throw ValueError("mproc::Lock: the calling thread already holds this lock; acquiring it again without "
                       "a timeout would deadlock (an RLock may be re-entered)");
    if (timeout->count() > 0) {
      timespec abs = monotonic_after(sys::as_duration(timeout));
      while (::clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &abs, nullptr) == EINTR) {
      }
    }
    return false;
  }
  if (rc != 0) throw OSError(rc, "pthread_mutex_lock");
  if (st_->depth == 0) {
    st_->died = died ? 1 : 0;
    st_->owner_tid.store(my_tid(), std::memory_order_relaxed);
  }
  ++st_->depth;
  return true;
}

bool SharedMutex::held_by_caller() const {
  return st_ && st_->depth > 0 && st_->owner_tid.load(std::memory_order_relaxed) == my_tid();
}

void SharedMutex::release() const {
  if (!held_by_caller()) throw Error("mproc: release of a lock that the calling thread does not hold");
  if (--st_->depth == 0) st_->owner_tid.store(0, std::memory_order_relaxed);
  int rc = ::pthread_mutex_unlock(&st_->m);
  if (rc != 0) throw OSError(rc, "pthread_mutex_unlock");
}

bool SharedMutex::locked() const {
  return st_ && st_->owner_tid.load(std::memory_order_relaxed) != 0;
}

bool SharedMutex::owner_died() const { return held_by_caller() && st_->died != 0; }

unsigned SharedMutex::release_all() const {
  if (!held_by_caller()) throw Error("mproc: Condition.wait/notify without holding its lock");
  unsigned depth = st_->depth;
  st_->depth = 0;
  st_->owner_tid.store(0, std::memory_order_relaxed);
  for (unsigned i = 0; i < depth; ++i) ::pthread_mutex_unlock(&st_->m);
  return depth;
}

void SharedMutex::reacquire(unsigned depth) const {
  for (unsigned i = 0; i < depth; ++i) acquire(std::nullopt);
}

}  // namespace detail

Lock::Lock() : LockBase(detail::SharedMutex(SharedMemory(detail::kMutexStateSize), 0, true, false)) {}
RLock::RLock() : LockBase(detail::SharedMutex(SharedMemory(detail::kMutexStateSize), 0, true, true)) {}

// ---- Semaphore ----------------------------------------------------------------
struct Semaphore::State {
  std::atomic<std::uint32_t> value;
  std::atomic<std::uint32_t> waiters;
  std::uint32_t max;  // kUnbounded: no bound
};

Semaphore::Semaphore(unsigned value, unsigned max) : mem_(sizeof(State)) {
  st_ = new (mem_.buf().data()) State{};
  st_->value.store(value);
  st_->max = max;
}

void Semaphore::load(InputArchive& ar) {
  ar(mem_);
  st_ = place<State>(mem_);
}

bool Semaphore::acquire(bool block, Timeout timeout) const {
  const sys::Deadline deadline = block ? sys::deadline_after(timeout) : sys::Deadline(detail::monotonic_ns());
  for (;;) {
    std::uint32_t v = st_->value.load(std::memory_order_relaxed);
    while (v > 0)
      if (st_->value.compare_exchange_weak(v, v - 1, std::memory_order_acquire)) return true;
    if (!block || sys::expired(deadline)) return false;
    st_->waiters.fetch_add(1);
    // Sliced: a releaser's wake may go to a waiter that is killed before it
    // takes the count; the others then find it on their next look.
    sys::futex_wait(&st_->value, 0, sys::sliced(deadline, kSlice));
    st_->waiters.fetch_sub(1);
  }
}

void Semaphore::release(unsigned n) const {
  if (st_->max != kUnbounded) {
    std::uint32_t v = st_->value.load();
    do {
      if (std::uint64_t{v} + n > st_->max) throw Error("mproc::BoundedSemaphore released too many times (above " +
                                        std::to_string(st_->max) + ")");
    } while (!st_->value.compare_exchange_weak(v, v + n));
  } else {
    st_->value.fetch_add(n);
  }
  if (st_->waiters.load() > 0) sys::futex_wake(&st_->value, static_cast<int>(n));
}

unsigned Semaphore::get_value() const { return st_->value.load(); }

// ---- Event ------------------------------------------------------------------------
struct Event::State {
  std::atomic<std::uint32_t> flag;
  std::atomic<std::uint32_t> waiters;
};

Event::Event() : mem_(sizeof(State)) { st_ = new (mem_.buf().data()) State{}; }
void Event::load(InputArchive& ar) {
  ar(mem_);
  st_ = place<State>(mem_);
}
bool Event::is_set() const { return st_->flag.load() != 0; }
void Event::set() const {
  st_->flag.store(1);
  if (st_->waiters.load() > 0) sys::futex_wake(&st_->flag, INT_MAX);
}
void Event::clear() const { st_->flag.store(0); }
bool Event::wait(Timeout timeout) const {
  const sys::Deadline deadline = sys::deadline_after(timeout);
  while (st_->flag.load() == 0) {
    st_->waiters.fetch_add(1);
    bool in_time = sys::futex_wait(&st_->flag, 0, deadline);
    st_->waiters.fetch_sub(1);
    if (!in_time) return st_->flag.load() != 0;
  }
  return true;
}

// ---- Condition ----------------------------------------------------------------------
struct Condition::State {
  std::atomic<std::uint32_t> seq;  // bumped by every notify
  std::atomic<std::uint32_t> waiters;
};

void Condition::init() {
  mem_ = SharedMemory(sizeof(State));
  st_ = new (mem_.buf().data()) State{};
}
Condition::Condition() : LockBase(detail::SharedMutex(SharedMemory(detail::kMutexStateSize), 0, true, true)) { init(); }
Condition::Condition(const Lock& lock) : LockBase(lock.mutex()) { init(); }
Condition::Condition(const RLock& lock) : LockBase(lock.mutex()) { init(); }

void Condition::load(InputArchive& ar) {
  ar(m_, mem_);
  st_ = place<State>(mem_);
}

bool Condition::wait(Timeout timeout) const {
  const sys::Deadline deadline = sys::deadline_after(timeout);
  const std::uint32_t seq = st_->seq.load();  // read under the lock: no notify is missed
  const unsigned depth = m_.release_all();      // throws when not held, before any change
  // A notify between the release and this increment skips the wake, but
  // it moved seq, so the futex wait below returns at once.
  st_->waiters.fetch_add(1);
  bool notified = true;
  while (st_->seq.load() == seq) {
    if (!sys::futex_wait(&st_->seq, seq, deadline)) {
      notified = st_->seq.load() != seq;
      break;
    }
  }
  st_->waiters.fetch_sub(1);
  m_.reacquire(depth);
  return notified;
}

void Condition::notify(unsigned n) const {
  if (!m_.held_by_caller()) throw Error("mproc: Condition.notify without holding its lock");
  st_->seq.fetch_add(1);
  if (st_->waiters.load() > 0) sys::futex_wake(&st_->seq, static_cast<int>(n));
}
void Condition::notify_all() const { notify(INT_MAX); }

// ---- Barrier -------------------------------------------------------------------------
struct Barrier::State {
  std::uint32_t parties;
  std::uint32_t count;                // arrived in this generation
  std::atomic<std::uint32_t> word;    // generation << 1 | broken
  std::uint32_t reset_gen;            // 1 + the generation that reset() broke (0: none)
  std::int64_t timeout_ns;            // wait()'s default; -1: forever
  FunctionRef action;                 // empty: none
};
static_assert(std::is_trivially_copyable_v<FunctionRef>, "Barrier keeps its action in shared memory");

Barrier::Barrier(unsigned parties, void (*action)(), Timeout timeout)
    : mem_(detail::kMutexStateSize + sizeof(State)) {
  if (parties == 0) throw ValueError("mproc::Barrier: parties must be at least 1");
  if (timeout && timeout->count() < 0) throw ValueError("mproc::Barrier: a negative timeout");
  m_ = detail::SharedMutex(mem_, 0, true, false);
  st_ = new (mem_.buf().data() + detail::kMutexStateSize) State{};
  st_->parties = parties;
  st_->timeout_ns = timeout ? timeout->count() : -1;
  if (action) st_->action = FunctionRef::of(action);
}

Timeout Barrier::timeout() const {
  if (!st_ || st_->timeout_ns < 0) return std::nullopt;
  return std::chrono::nanoseconds(st_->timeout_ns);
}

void Barrier::load(InputArchive& ar) {
  ar(mem_);
  m_ = detail::SharedMutex(mem_, 0, false, false);
  st_ = place<State>(mem_, detail::kMutexStateSize);
}

unsigned Barrier::wait(Timeout timeout) const {
  if (!st_) throw Error("mproc::Barrier: wait on an empty barrier");
  if (!timeout) timeout = this->timeout();
  const sys::Deadline deadline = sys::deadline_after(timeout);
  m_.acquire(std::nullopt);
  std::uint32_t w = st_->word.load();
  if (w & 1) {
    m_.release();
    throw BrokenBarrierError("mproc::Barrier is broken");
  }
  const std::uint32_t gen = w >> 1;
  const unsigned index = st_->count++;
  if (st_->count == st_->parties) {
    if (!st_->action.empty()) {
      // Python runs the action in the last thread to arrive, before anyone is
      // released; an exception from it breaks the barrier.
      try {
        FunctionRef action = st_->action;  // a copy: resolving reads it
        action.get<void()>()();
      } catch (...) {
        st_->count = 0;
        st_->word.store(w | 1);
        m_.release();
        sys::futex_wake(&st_->word, INT_MAX);
        throw;
      }
    }
    st_->count = 0;
    st_->word.store((gen + 1) << 1);
    m_.release();
    sys::futex_wake(&st_->word, INT_MAX);
    return index;
  }
  m_.release();
  for (;;) {
    w = st_->word.load();
    if ((w >> 1) != gen) {
      if (st_->reset_gen == gen + 1) throw BrokenBarrierError("mproc::Barrier was reset while waiting");
      return index;
    }
    if (w & 1) throw BrokenBarrierError("mproc::Barrier was broken while waiting");
    if (!sys::futex_wait(&st_->word, w, deadline)) {
      m_.acquire(std::nullopt);
      if (st_->word.load() == w) st_->word.store(w | 1);  // a timeout breaks the barrier, as Python's
      m_.release();
      sys::futex_wake(&st_->word, INT_MAX);
    }
  }
}

void Barrier::reset() const {
  if (!st_) throw Error("mproc::Barrier: reset on an empty barrier");
  m_.acquire(std::nullopt);
  const std::uint32_t w = st_->word.load();
  const std::uint32_t gen = w >> 1;
  if (st_->count > 0 || (w & 1)) {
    st_->reset_gen = gen + 1;
    st_->count = 0;
    st_->word.store((gen + 1) << 1);
  }
  m_.release();
  sys::futex_wake(&st_->word, INT_MAX);
}

void Barrier::abort() const {
  if (!st_) throw Error("mproc::Barrier: abort on an empty barrier");
  m_.acquire(std::nullopt);
  st_->word.fetch_or(1);
  m_.release();
  sys::futex_wake(&st_->word, INT_MAX);
}

unsigned Barrier::parties() const { return st_ ? st_->parties : 0; }
unsigned Barrier::n_waiting() const { return !st_ || (st_->word.load() & 1) ? 0 : st_->count; }
bool Barrier::broken() const { return st_ && (st_->word.load() & 1) != 0; }

}  // namespace mproc
