// The pool worker: runs tasks in order until told to stop, EOF, or recycling.
#include <fmt/format.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <malloc.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <deque>
#include <fstream>

#include "mproc/shared_bytes.hpp"
#include "process/launch.hpp"
#include "pool/task_arena.hpp"
#include "pool/pool_protocol.hpp"

namespace mproc::detail {

namespace {

using Clock = std::chrono::steady_clock;

std::uint64_t resident_bytes() {
  std::ifstream statm("/proc/self/statm");
  std::uint64_t size = 0, resident = 0;
  statm >> size >> resident;
  return resident * static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
}

// The worker's own descriptors: its task socket, its result ring's memfd and
// its doorbell. Tasks run in this process and may close them, dup2 something
// else over them, or write into them. Their identity (the fd number, and the
// device and inode behind it) is taken at start; damage() compares.
//
// When it is checked (one fstat per fd: about 1.5 µs each on the project's
// machine, where a tiny task's whole round trip is 4 µs):
//   - after a task, BEFORE its result goes out, when the engine sleeps (a
//     doorbell write follows anyway) or when kCheckEvery has passed since the
//     last check: the damage is then pinned on that task alone if no other
//     result went out unchecked since the last good check;
//   - before the worker blocks for its next task (it sleeps anyway);
//   - whenever a syscall on them fails.
// Damage found with other results out since the last good check cannot be
// pinned on one task: their results stand, and the worker stops without
// blaming any (see stop_damaged()).
constexpr auto kCheckEvery = std::chrono::milliseconds(1);

class OwnFds {
 public:
  OwnFds(int socket, int ring, int bell)
      : ids_{{{socket, "task socket"}, {ring, "result ring memfd"}, {bell, "doorbell eventfd"}}} {
    for (auto& id : ids_) {
      struct stat st {};
      sys::check(::fstat(id.fd, &st), "fstat(pool worker fd)");
      id.dev = st.st_dev;
      id.ino = st.st_ino;
    }
  }
  // Empty when all three are intact; else which one is broken, and how.
  [[nodiscard]] std::string damage() const {
    for (const auto& id : ids_)
      if (std::string d = damage_of(id); !d.empty()) return d;
    return {};
  }
  [[nodiscard]] bool bell_intact() const { return damage_of(ids_[2]).empty(); }
  int bell() const { return ids_[2].fd; }

 private:
  struct Id {
    int fd;
    const char* name;
    dev_t dev = 0;
    ino_t ino = 0;
  };
  std::array<Id, 3> ids_;

  static std::string damage_of(const Id& id) {
    struct stat st {};
    if (::fstat(id.fd, &st) != 0) return fmt::format("its {} (fd {}) was closed", id.name, id.fd);
    if (st.st_dev != id.dev || st.st_ino != id.ino)
      return fmt::format("its {} (fd {}) was replaced by another file (dup2 over it)", id.name, id.fd);
    return {};
  }
};

// When the fds were last found intact, and which results went out since
// without a check (the suspects if damage is found next).
struct Checks {
  Clock::time_point next = Clock::now() + kCheckEvery;
  std::uint64_t first_unchecked = 0;  // the first task whose result went out unchecked (0: none)
  std::size_t unchecked = 0;          // how many

  bool due(const ResultRing& ring) const { return ring.consumer_sleeping() || Clock::now() >= next; }
  void passed() {
    next = Clock::now() + kCheckEvery;
    first_unchecked = 0;
    unchecked = 0;
  }
  void went_out_unchecked(std::uint64_t id) {
    if (unchecked++ == 0) first_unchecked = id;
  }
  std::string suspects() const {
    return unchecked == 0 ? std::string("none")
                          : fmt::format("{} task(s) from task {} on, whose results went out", unchecked,
                                        first_unchecked);
  }
};

// Tiny tasks arrive microseconds apart: poll a little before sleeping, so the
// next one costs no wake-up. An idle worker still sleeps (no CPU), after
// checking its fds: a socket a task replaced would never bring a task.
bool wait_for_task(Connection& conn, const OwnFds& fds, Checks& checks) {
  if (conn.poll_spinning(std::chrono::microseconds(100))) return true;
  if (std::string damage = fds.damage(); !damage.empty()) throw ProtocolError(damage);
  checks.passed();
  return conn.poll(std::nullopt);
}

// The eventfd that wakes a sleeping engine. A doorbell that no longer
// reaches the engine would leave it asleep beside our results, so then this
// worker stops instead (its sentinel wakes the engine, which reads the ring).
// `verified`: the fds were checked since the last task ran (no fstat needed).
// False: the doorbell is gone (a task closed it or dup2'd over it).
[[nodiscard]] bool ring_if_sleeping(const ResultRing& ring, const OwnFds& fds, bool verified, bool always = false) {
  if (!always && !ring.consumer_sleeping()) return true;
  if (!verified && !fds.bell_intact()) return false;
  const std::uint64_t one = 1;
  // EAGAIN: the counter is full, so the engine has a wake-up pending anyway.
  if (::write(fds.bell(), &one, sizeof one) < 0 && errno != EAGAIN && errno != EINTR) return false;
  return true;
}

constexpr std::size_t kAlwaysRing = 64 << 10;

// How far a result went: all of it in the ring (and the engine woken if it
// sleeps), all of it but the doorbell is gone, none or part of it (the ring
// was full and the doorbell is gone: the engine may never make room).
enum class Delivered { whole, whole_bell_gone, not_at_all, in_part };

// Results go to the ring (no syscall), in chunks when large; a result over
// the pool's limit is replaced by a note of its size (the task fails with
// ResultTooLarge, the worker goes on).
// `bytes` is the worker's one serialization buffer, kept from task to task.
// `verified`: see ring_if_sleeping().
// A large ok result goes through the arena (`arena` given): its bytes are
// copied there once and the ring carries a descriptor.
[[nodiscard]] Delivered place_in_arena(TaskArena& arena, ResultRing& ring, const OwnFds& fds, bool verified,
                                       ResultMsg& result) {
  std::optional<std::size_t> off;
  while (!(off = arena.place_result(result.data))) {
    // No room: the engine has not read earlier results yet. Make sure it is
    // awake, then give it time (as for a full ring).
    if (!ring_if_sleeping(ring, fds, verified)) return Delivered::not_at_all;
    ::usleep(20);
  }
  result.bulk_off = *off;
  result.bulk_len = result.data.size();
  result.data.clear();  // keeps its capacity for the next task
  return Delivered::whole;
}

[[nodiscard]] Delivered deliver(ResultRing& ring, const OwnFds& fds, bool verified, ResultMsg& result,
                                std::uint64_t max_result, Bytes& bytes, TaskArena* arena = nullptr) {
  if (arena && result.ok && !result.fault && result.data.size() >= TaskArena::kThreshold &&
      result.data.size() <= TaskArena::kResultsCap && (!max_result || result.data.size() + 64 <= max_result)) {
    if (place_in_arena(*arena, ring, fds, verified, result) != Delivered::whole) return Delivered::not_at_all;
  }
  bytes.clear();
  serialize_into(bytes, result);
  if (max_result && bytes.size() > max_result) {
    const std::size_t size = bytes.size();
    bytes.clear();
    serialize_into(bytes, ResultMsg{result.id, false, result.retiring, size, false, {}});
  }
  std::span<const std::byte> rest(bytes);
  do {
    const std::size_t n = std::min(rest.size(), ResultRing::kMaxRecord);
    const std::uint32_t flags = n < rest.size() ? ResultRing::kMore : 0;
    while (!ring.try_push(rest.first(n), flags)) {
      // Full: the engine is behind. Make sure it is awake, then give it time.
      if (!ring_if_sleeping(ring, fds, verified))
        return rest.size() == bytes.size() ? Delivered::not_at_all : Delivered::in_part;
      ::usleep(20);
    }
    rest = rest.subspan(n);
  } while (!rest.empty());
  // A large result took long enough to make that its waiter may have given
  // up spinning: wake the engine now rather than at its next look (1 ms).
  return ring_if_sleeping(ring, fds, verified, bytes.size() > kAlwaysRing) ? Delivered::whole
                                                                           : Delivered::whole_bell_gone;
}

// A task broke this worker's fds: the worker stops (and is replaced).
//   culprit != 0: found right after that task, before its result went out,
//     with no unchecked result before it: it alone fails, with WorkerFault
//     (a `fault` record); it is the running task should the record not fit.
//   culprit == 0: found later; the results that went out stand. A `kStop`
//     record tells the engine the death is no task's (so the tasks it had
//     sent us are requeued without counting against them).
// Either record has `retiring` set: the engine sends nothing more, and on
// our death requeues what we never started.
[[noreturn]] void stop_damaged(ResultRing& ring, const OwnFds& fds, const Checks& checks,
                               std::uint64_t culprit, const std::string& damage, Bytes& bytes) {
  std::string what = culprit ? fmt::format("task {} broke its pool worker (pid {}): {}", culprit, ::getpid(), damage)
                             : fmt::format("a task broke this pool worker (pid {}): {}; suspects: {}", ::getpid(),
                                           damage, checks.suspects());
  ResultMsg msg{culprit ? culprit : kStop, false, true, 0, culprit != 0, {}};
  if (culprit) {
    const std::string text = damage + "; the worker stopped and is replaced";
    msg.data.resize(text.size());
    std::memcpy(msg.data.data(), text.data(), text.size());
  }
  // The doorbell may be gone: never wait for room that only it can make.
  const Delivered sent = deliver(ring, fds, false, msg, 0, bytes);  // never through the arena
  if (sent == Delivered::whole || sent == Delivered::whole_bell_gone || !culprit) ring.set_running(0);
  throw ProtocolError(what + "; this worker stops");
}

}  // namespace

void worker_main(Connection conn, WorkerConfig config, PassedFd ring_fd, PassedFd bell_fd, PassedFd arena_fd) {
  ResultRing ring = ResultRing::attach(ring_fd.fd);
  TaskArena arena = TaskArena::attach(arena_fd.fd);  // closes the fd: the mapping is all it needs
  const sys::UniqueFd bell(bell_fd.fd);
  const OwnFds fds(conn.fileno(), ring_fd.fd, bell.get());
  Checks checks;
  // Keep freed memory for the next task: with glibc's default (dynamic)
  // thresholds a worker gave back and faulted in again every large
  // result's buffers (Pool.map of 100 kB chunks measured 5× slower).
  ::mallopt(M_TRIM_THRESHOLD, 32 << 20);
  ::mallopt(M_MMAP_THRESHOLD, 32 << 20);
  // The socket only brings tasks: nothing a task writes into it reaches the
  // engine (see pool_protocol.hpp).
  sys::check(::shutdown(conn.fileno(), SHUT_WR), "shutdown(pool worker socket)");
  // Whole lines go out as tasks print them, even into a file or a pipe: a
  // worker can be killed at any time (terminate(), the pool's destructor, a
  // deadline, a crash), and no line a task printed may be lost with it.
  // The partial line a task leaves is written when it returns (below).
  std::setvbuf(stdout, nullptr, _IOLBF, BUFSIZ);
  Bytes out;  // see deliver()
  if (config.initializer) {
    Bytes ignored;
    try {
      auto* entry = config.initializer->entry.get<void(std::span<const std::byte>, Bytes&)>();
      entry(config.initializer->payload, ignored);
    } catch (...) {
      ResultMsg failed{0, false, true, 0, false, to_bytes(capture_error(std::current_exception()))};
      (void)deliver(ring, fds, false, failed, 0, out);  // we exit next: the engine finds it in the ring either way
      return;
    }
  }
  unsigned done = 0;
  std::deque<TaskMsg> queue;
  // A task's result is serialized here, kept from task to task (its
  // capacity too): a large result is written into warm memory, without
  // regrowing, then copied once into the arena (deliver).
  Bytes task_out;
  for (;;) {
    if (queue.empty()) {
      ring.set_running(0);  // between tasks: a death now is no task's fault
      try {
        wait_for_task(conn, fds, checks);
        for (auto& t : conn.recv<TaskBatch>().tasks) queue.push_back(std::move(t));
      } catch (const std::exception& e) {
        // EOF or an error (EBADF: OSError) where the tasks come
        // from: the pool is gone, or a task (whose result went out) broke
        // the socket.
        if (std::string damage = fds.damage(); !damage.empty())
          stop_damaged(ring, fds, checks, 0, damage, out);
        if (dynamic_cast<const ConnectionClosed*>(&e)) return;  // the pool is gone
        throw;
      }
      if (queue.empty()) continue;
    }
    TaskMsg task = std::move(queue.front());
    queue.pop_front();
    if (task.id == kStop) return;
    ring.set_running(task.id);
    ResultMsg result{task.id, true, false, 0, false, std::move(task_out)};
    result.data.clear();
    try {
      auto* entry = task.call.entry.get<void(std::span<const std::byte>, Bytes&)>();
      // A large argument is read in place, from the arena (the engine frees
      // its region when this task's result arrives).
      const std::span<const std::byte> payload =
          task.bulk_len ? arena.argument(task.bulk_off, task.bulk_len) : std::span<const std::byte>(task.call.payload);
      // SharedBytes in the result travel as {our pid, fd}: kept open here
      // until the pool's process has fetched them (shared_bytes.hpp).
      detail::release_fetched_pins();
      detail::SendPins result_pins;
      entry(payload, result.data);
      result_pins.keep_until_fetched();
    } catch (...) {
      result.ok = false;
      result.data = to_bytes(capture_error(std::current_exception()));
    }
    flush_stdio();  // its output is written before its result can be seen
    ++done;
    result.retiring = (config.max_tasks && done >= config.max_tasks) ||
                      (config.max_memory && resident_bytes() > config.max_memory);
    // Did this task break us? Asked before its result goes out (see OwnFds).
    const bool verified = checks.due(ring);
    std::string damage;
    if (verified) {
      damage = fds.damage();
      if (damage.empty()) checks.passed();
      else if (checks.unchecked == 0) stop_damaged(ring, fds, checks, task.id, damage, out);
      // Else other results went out unchecked since the last check: this one
      // is no more suspect than they are, and its result stands as theirs
      // do (a task never runs twice). We stop after it.
      else result.retiring = true;
    }
    Delivered sent = Delivered::whole;
    try {
      sent = deliver(ring, fds, verified && damage.empty(), result, config.max_result, out, &arena);
    } catch (const Error&) {
      ring.set_running(task.id);  // the task may have scribbled it too: this one broke us
      throw;
    }
    task_out = std::move(result.data);  // emptied by deliver when it went through the arena
    if (!verified || !damage.empty()) checks.went_out_unchecked(task.id);
    // Unless the fds were found intact after this task, an earlier unchecked
    // task (or this one) may have broken the doorbell: then the engine may
    // sleep beside our result, and we stop.
    if (sent == Delivered::in_part) {  // half a result: told apart from a crash by nothing; it is blamed
      ring.set_running(task.id);
      throw ProtocolError(fmt::format("pool worker: {}; the result of task {} was cut", fds.damage(), task.id));
    }
    // not_at_all: its result never went out, it runs again elsewhere.
    if (sent != Delivered::whole || !damage.empty())
      stop_damaged(ring, fds, checks, 0, damage.empty() ? fds.damage() : damage, out);
    if (result.retiring) return;
  }
}

}  // namespace mproc::detail
