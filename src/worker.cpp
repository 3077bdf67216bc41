// The pool worker: runs tasks in order until told to stop, EOF, or recycling.
#include <sys/socket.h>
#include <sys/stat.h>
#include <malloc.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <deque>
#include <fstream>

#include "launch.hpp"
#include "pool_protocol.hpp"

namespace mproc::detail {

namespace {

std::uint64_t resident_bytes() {
  std::ifstream statm("/proc/self/statm");
  std::uint64_t size = 0, resident = 0;
  statm >> size >> resident;
  return resident * static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
}

// Tiny tasks arrive microseconds apart: poll a little before sleeping, so the
// next one costs no wake-up. An idle worker still sleeps (no CPU).
bool wait_for_task(Connection& conn) {
  return conn.poll_spinning(std::chrono::microseconds(100)) || conn.poll(std::nullopt);
}

// The eventfd that wakes a sleeping engine. Tasks run in this process and
// may close it or dup2 something else over it: a doorbell that no longer
// reaches the engine would leave it asleep beside our results, so then this
// worker dies instead (its sentinel wakes the engine, which reads the ring).
// Checked only when the engine sleeps: the fast path has no syscall. So the
// damage is found while some later task delivers: that task is not to blame.
class Doorbell {
 public:
  explicit Doorbell(int fd) : fd_(fd) {
    struct stat st {};
    sys::check(::fstat(fd, &st), "fstat(doorbell)");
    dev_ = st.st_dev;
    ino_ = st.st_ino;
  }
  // False: the doorbell is gone (a task closed it or dup2'd over it).
  [[nodiscard]] bool ring_if_sleeping(const ResultRing& ring, bool always = false) const {
    if (!always && !ring.consumer_sleeping()) return true;
    struct stat st {};
    if (::fstat(fd_.get(), &st) != 0 || st.st_dev != dev_ || st.st_ino != ino_) return false;
    const std::uint64_t one = 1;
    // EAGAIN: the counter is full, so the engine has a wake-up pending anyway.
    if (::write(fd_.get(), &one, sizeof one) < 0 && errno != EAGAIN && errno != EINTR)
      sys::throw_errno("write(doorbell)");
    return true;
  }

 private:
  sys::UniqueFd fd_;
  dev_t dev_ = 0;
  ino_t ino_ = 0;
};

constexpr std::size_t kAlwaysRing = 64 << 10;

// Results go to the ring (no syscall), in chunks when large; a result over
// the pool's limit is replaced by a note of its size (the task fails with
// ResultTooLarge, the worker goes on).
// `bytes` is the worker's one serialization buffer, kept from task to task.
// False: the doorbell is gone; the result may be in the ring only in part.
[[nodiscard]] bool deliver(ResultRing& ring, const Doorbell& bell, const ResultMsg& result, std::uint64_t max_result,
             Bytes& bytes) {
  bytes.clear();
  serialize_into(bytes, result);
  if (max_result && bytes.size() > max_result) {
    const std::size_t size = bytes.size();
    bytes.clear();
    serialize_into(bytes, ResultMsg{result.id, false, result.retiring, size, {}});
  }
  std::span<const std::byte> rest(bytes);
  do {
    const std::size_t n = std::min(rest.size(), ResultRing::kMaxRecord);
    const std::uint32_t flags = n < rest.size() ? ResultRing::kMore : 0;
    while (!ring.try_push(rest.first(n), flags)) {
      // Full: the engine is behind. Make sure it is awake, then give it time.
      if (!bell.ring_if_sleeping(ring)) return false;
      ::usleep(20);
    }
    rest = rest.subspan(n);
  } while (!rest.empty());
  // A large result took long enough to make that its waiter may have given
  // up spinning: wake the engine now rather than at its next look (1 ms).
  return bell.ring_if_sleeping(ring, bytes.size() > kAlwaysRing);
}

// An earlier task destroyed the doorbell: die between tasks, so that no task
// is blamed (the engine reads what is in the ring, then requeues the rest).
[[noreturn]] void die_for_lost_doorbell(ResultRing& ring) {
  ring.set_running(0);
  throw ProtocolError("pool worker: a task closed or replaced the doorbell fd; this worker stops "
                      "(the task that ran last is not to blame: the damage is found late)");
}

}  // namespace

void worker_main(Connection conn, WorkerConfig config, PassedFd ring_fd, PassedFd bell_fd) {
  ResultRing ring = ResultRing::attach(ring_fd.fd);
  const Doorbell bell(bell_fd.fd);
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
  if (config.initializer) {
    Bytes ignored;
    try {
      auto* entry = config.initializer->entry.get<void(std::span<const std::byte>, Bytes&)>();
      entry(config.initializer->payload, ignored);
    } catch (...) {
      Bytes bytes;
      (void)deliver(ring, bell, ResultMsg{0, false, true, 0, to_bytes(capture_error(std::current_exception()))}, 0,
                    bytes);  // we exit next: the engine finds it in the ring either way
      return;
    }
  }
  unsigned done = 0;
  std::deque<TaskMsg> queue;
  Bytes out;  // see deliver()
  for (;;) {
    if (queue.empty()) {
      ring.set_running(0);  // between tasks: a death now is no task's fault
      try {
        wait_for_task(conn);
        for (auto& t : conn.recv<TaskBatch>().tasks) queue.push_back(std::move(t));
      } catch (const ConnectionClosed&) {
        return;  // the pool is gone
      }
      if (queue.empty()) continue;
    }
    TaskMsg task = std::move(queue.front());
    queue.pop_front();
    if (task.id == kStop) return;
    ring.set_running(task.id);
    ResultMsg result{task.id, true, false, 0, {}};
    try {
      auto* entry = task.call.entry.get<void(std::span<const std::byte>, Bytes&)>();
      entry(task.call.payload, result.data);
    } catch (...) {
      result.ok = false;
      result.data = to_bytes(capture_error(std::current_exception()));
    }
    flush_stdio();  // its output is written before its result can be seen
    ++done;
    result.retiring = (config.max_tasks && done >= config.max_tasks) ||
                      (config.max_memory && resident_bytes() > config.max_memory);
    bool bell_ok = true;
    try {
      bell_ok = deliver(ring, bell, result, config.max_result, out);
    } catch (const Error&) {
      ring.set_running(task.id);  // the task may have scribbled it too: this one broke us
      throw;
    }
    if (!bell_ok) die_for_lost_doorbell(ring);
    if (result.retiring) return;
  }
}

}  // namespace mproc::detail
