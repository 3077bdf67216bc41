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
  const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(100);
  do {
    if (conn.poll()) return true;
  } while (std::chrono::steady_clock::now() < until);
  return conn.poll(std::nullopt);
}

}  // namespace

void worker_main(Connection conn, WorkerConfig config) {
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
    conn.send(result);
    if (result.retiring) return;
  }
}

}  // namespace mproc::detail
