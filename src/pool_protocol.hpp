// Internal: what the pool engine and its workers say to each other.
//
//   engine → worker   TaskBatch{TaskMsg{id, call}...}   (id kStop: exit)
//   worker → engine   ResultMsg{id, ok, retiring, data} in the shared
//                     ResultRing (large ones on the socket, with a marker
//                     in the ring), and a doorbell on the socket when the
//                     engine sleeps
//                     id 0: the initializer failed (data = ErrorInfo)
//                     ok: data = the serialized result; else an ErrorInfo
//                     retiring: recycled after this task (max tasks / memory)
// A worker runs its tasks in the order sent, so when it dies the first
// unanswered task is the one that killed it; the others never started.
#pragma once
#include <cstdint>
#include <limits>
#include <optional>

#include "mproc/call.hpp"
#include "mproc/connection.hpp"
#include "result_ring.hpp"

namespace mproc::detail {

inline constexpr std::uint64_t kStop = std::numeric_limits<std::uint64_t>::max();
inline constexpr std::uint64_t kDoorbell = kStop - 1;  // worker → engine: look at the ring

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
  Bytes data;
  template <class A>
  void serialize(A& ar) {
    ar(id, ok, retiring, data);
  }
};

struct WorkerConfig {
  std::optional<Call> initializer;
  unsigned max_tasks = 0;
  std::uint64_t max_memory = 0;
  template <class A>
  void serialize(A& ar) {
    ar(initializer, max_tasks, max_memory);
  }
};

// The worker process's target.
void worker_main(Connection conn, WorkerConfig config, PassedFd ring);

}  // namespace mproc::detail
