// Internal: what the pool engine and its workers say to each other.
//
//   engine → worker   TaskBatch{TaskMsg{id, call}...} on the socket
//                     (id kStop: exit)
//   worker → engine   ResultMsg{id, ok, retiring, too_large, fault, data} in
//                     the shared ResultRing only (large ones in chunks), and
//                     a doorbell (eventfd) when the engine sleeps
//                     id 0: the initializer failed (data = ErrorInfo); only
//                       as a worker's first record
//                     id kStop: the worker stops because a task broke its
//                       fds after its result went out (`retiring` set): its
//                       death is no task's fault
//                     ok: data = the serialized result; else an ErrorInfo
//                     too_large: the result was this many bytes, over the
//                       pool's limit; data is empty
//                     fault: this task broke the worker's fds (closed, dup2'd
//                       over): it fails with WorkerFault, data = what it
//                       broke (text); `retiring` is set
//                     retiring: the worker exits after this record (max
//                       tasks / memory, or broken fds)
// The worker shuts its socket for writing at start: a task that writes
// garbage into the worker's fds cannot put a byte in front of the engine
// (write() gets EPIPE and raises SIGPIPE in the task that did it, whose
// worker dies of it while it runs: that task is blamed). A task that closes
// or replaces the worker's fds is found by the worker (worker.cpp, OwnFds). A worker runs its tasks in the
// order sent, and says in the ring which one it runs: when it dies, that one
// is blamed; the others never started.
#pragma once
#include <cstdint>
#include <limits>
#include <optional>

#include "mproc/call.hpp"
#include "mproc/connection.hpp"
#include "result_ring.hpp"

namespace mproc::detail {

inline constexpr std::uint64_t kStop = std::numeric_limits<std::uint64_t>::max();

struct TaskMsg {
  std::uint64_t id = 0;
  Call call;
  template <class A>
  void serialize(A& ar) {
    ar(id, call);
  }
};

// Several tasks in one write: tiny tasks cost one syscall per batch. The
// engine sends from `refs` (its calls stay in its in-flight table, to be
// sent again if the worker dies before starting them); workers load `tasks`.
struct TaskBatch {
  std::vector<TaskMsg> tasks;
  std::vector<std::pair<std::uint64_t, const Call*>> refs;
  template <class A>
  void save(A& ar) const {
    if (refs.empty()) {
      ar(tasks);
      return;
    }
    ar(cereal::make_size_tag(static_cast<cereal::size_type>(refs.size())));
    for (const auto& [id, call] : refs) ar(id, *call);
  }
  template <class A>
  void load(A& ar) {
    ar(tasks);
  }
};

struct ResultMsg {
  std::uint64_t id = 0;
  bool ok = false;
  bool retiring = false;
  std::uint64_t too_large = 0;
  bool fault = false;
  Bytes data;
  template <class A>
  void serialize(A& ar) {
    ar(id, ok, retiring, too_large, fault, data);
  }
};

struct WorkerConfig {
  std::optional<Call> initializer;
  unsigned max_tasks = 0;
  std::uint64_t max_memory = 0;
  std::uint64_t max_result = 0;  // bytes of a serialized ResultMsg
  template <class A>
  void serialize(A& ar) {
    ar(initializer, max_tasks, max_memory, max_result);
  }
};

// The worker process's target.
void worker_main(Connection conn, WorkerConfig config, PassedFd ring, PassedFd doorbell);

}  // namespace mproc::detail
