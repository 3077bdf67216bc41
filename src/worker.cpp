// The pool worker: runs tasks in order until told to stop, EOF, or recycling.
#include <unistd.h>

#include <chrono>
#include <deque>
#include <fstream>

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

// Results go to the ring (no syscall); the socket carries what does not fit,
// and a doorbell when the engine sleeps.
void deliver(Connection& conn, ResultRing& ring, const ResultMsg& result) {
  Bytes bytes = to_bytes(result);
  std::uint32_t flags = 0;
  if (bytes.size() > ResultRing::kMaxInline) {
    conn.send(result);  // before its marker, so the engine always finds it
    bytes.clear();
    flags = ResultRing::kOnSocket;
  }
  while (!ring.try_push(bytes, flags)) {
    // Full: the engine is behind. Make sure it is awake, then give it time.
    if (ring.consumer_sleeping()) conn.send(ResultMsg{kDoorbell, true, false, {}});
    ::usleep(20);
  }
  if (ring.consumer_sleeping()) conn.send(ResultMsg{kDoorbell, true, false, {}});
}

}  // namespace

void worker_main(Connection conn, WorkerConfig config, PassedFd ring_fd) {
  ResultRing ring = ResultRing::attach(ring_fd.fd);
  if (config.initializer) {
    Bytes ignored;
    try {
      auto* entry = config.initializer->entry.get<void(std::span<const std::byte>, Bytes&)>();
      entry(config.initializer->payload, ignored);
    } catch (...) {
      conn.send(ResultMsg{0, false, true, to_bytes(capture_error(std::current_exception()))});
      return;
    }
  }
  unsigned done = 0;
  std::deque<TaskMsg> queue;
  for (;;) {
    if (queue.empty()) {
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
    ResultMsg result{task.id, true, false, {}};
    try {
      auto* entry = task.call.entry.get<void(std::span<const std::byte>, Bytes&)>();
      entry(task.call.payload, result.data);
    } catch (...) {
      result.ok = false;
      result.data = to_bytes(capture_error(std::current_exception()));
    }
    ++done;
    result.retiring = (config.max_tasks && done >= config.max_tasks) ||
                      (config.max_memory && resident_bytes() > config.max_memory);
    deliver(conn, ring, result);
    if (result.retiring) return;
  }
}

}  // namespace mproc::detail
