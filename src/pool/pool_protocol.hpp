// Internal: what the pool engine and its workers say to each other.
//
//   engine → worker   TaskBatch{TaskMsg{id, call}...} on the socket (a large
//                     payload staged in the worker's TaskArena instead)
//                     (id kStop: exit)
//   worker → engine   ResultMsg{id, ok, retiring, too_large, fault, data} in
//                     the shared ResultRing only (large ones in chunks), and
//                     a doorbell (eventfd) when the engine sleeps
//                     id 0: the initializer failed (data = ErrorInfo); only
//                       as a worker's first record
//                     id kStop: the worker stops because a task broke its
//                       fds after its result went out (`retiring` set): its
//                       death is no task's fault
//                     ok: data = the serialized result (or, when large,
//                       bulk_off/bulk_len in the worker's TaskArena: see
//                       pool/task_arena.hpp); else an ErrorInfo
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
#include "pool/result_ring.hpp"

namespace mproc::detail {

inline constexpr std::uint64_t kStop = std::numeric_limits<std::uint64_t>::max();

// bulk_len != 0: the payload is not in call.payload (empty) but in the
// worker's TaskArena, arguments area [bulk_off, bulk_off + bulk_len).
struct TaskMsg {
  std::uint64_t id = 0;
  Call call;
  std::uint64_t bulk_off = 0, bulk_len = 0;
  template <class A>
  void serialize(A& ar) {
    ar(id, call, bulk_off, bulk_len);
  }
};

// One task as the engine sends it: its call stays in the in-flight table;
// `bulk_off` when its payload (`bulk_len` bytes: a lazy call's payload is
// encoded straight into the arena, its call.payload empty) was staged in
// the worker's arena.
struct TaskRef {
  std::uint64_t id;
  const Call* call;
  std::optional<std::uint64_t> bulk_off;
  std::uint64_t bulk_len = 0;
};

// Several tasks in one write: tiny tasks cost one syscall per batch. The
// engine sends from `refs` (its calls stay in its in-flight table, to be
// sent again if the worker dies before starting them); workers load `tasks`.
struct TaskBatch {
  std::vector<TaskMsg> tasks;
  std::vector<TaskRef> refs;
  template <class A>
  void save(A& ar) const {
    if (refs.empty()) {
      ar(tasks);
      return;
    }
    ar(cereal::make_size_tag(static_cast<cereal::size_type>(refs.size())));
    for (const TaskRef& r : refs) {
      if (r.bulk_off) ar(r.id, r.call->entry, cereal::make_size_tag(cereal::size_type{0}), *r.bulk_off, r.bulk_len);
      else ar(r.id, r.call->entry, r.call->payload, std::uint64_t{0}, std::uint64_t{0});
    }
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
  // bulk_len != 0: the (ok) result is not in data (empty) but in the
  // worker's TaskArena, results area [bulk_off, bulk_off + bulk_len).
  std::uint64_t bulk_off = 0, bulk_len = 0;
  template <class A>
  void serialize(A& ar) {
    ar(id, ok, retiring, too_large, fault, data, bulk_off, bulk_len);
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
void worker_main(Connection conn, WorkerConfig config, PassedFd ring, PassedFd doorbell, PassedFd arena);

}  // namespace mproc::detail
