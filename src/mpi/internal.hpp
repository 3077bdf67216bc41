// Internal to mproc_mpi: rank 0's engine, the MPI runtime (init hook, worker
// loop, shared values) and the wire protocol between rank 0 and the workers.
//
// Every message is on a communicator of mproc's own (a dup of
// MPI_COMM_WORLD, or the intercommunicator of MPI_Comm_spawn), so it never
// mixes with the application's MPI traffic. MPI keeps messages between two
// ranks in order, which the protocol relies on (a SHARE reaches a worker
// before the tasks that read it; CLOSE after every task).
//
//   rank 0 → worker   kOpen    {session, optional<Call> initializer}
//   worker → rank 0   kHello   Hello (build-id, host, pid, initializer error)
//   rank 0 → worker   kTask    {u64 id, Call}            (cereal, zero-copy read)
//   worker → rank 0   kResult  {u64 id, u8 ok} + result bytes or ErrorInfo
//   rank 0 → worker   kShare   {u64 id} + serialized value
//   rank 0 → worker   kRelease {u64 id}
//   rank 0 → worker   kClose   (end of an executor) → worker answers kClosed
//   rank 0 → worker   kStop    (rank 0 exits, or spawned workers' executor ends)
#pragma once
#include <mpi.h>

#include <cstdint>
#include <memory>
#include <string>

#include "mproc/mpi.hpp"
#include "pool/task_state.hpp"

namespace mproc::mpi::detail {

using mproc::detail::TaskState;

// Rank 0's engine (src/mpi/engine.cpp); mpi.hpp reaches it through
// ExecutorCore (src/mpi/executor_core.cpp).
class Engine {
 public:
  explicit Engine(const PoolOptions& options);
  ~Engine();  // shutdown(true)
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  mproc::detail::TaskHandle submit(Call call);
  std::vector<mproc::detail::TaskHandle> submit_many(std::vector<Call> calls);
  std::uint64_t share(Bytes bytes, SharedValue local, const std::type_info& type);
  void release(std::uint64_t id);
  void shutdown(bool wait, bool cancel_pending);

  unsigned size() const noexcept;
  std::vector<int> worker_ranks() const;
  bool spawned() const noexcept;
  Stats stats() const;

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};


enum Tag : int { kTask = 1, kResult, kOpen, kHello, kShare, kRelease, kClose, kClosed, kStop };
inline constexpr std::size_t kResultHeader = 9;  // u64 id + u8 ok

struct Hello {
  std::string build_id;
  std::string host;
  std::int32_t pid = 0;
  std::int32_t rank = 0;
  bool init_ok = true;
  ErrorInfo init_error;
  template <class Ar>
  void serialize(Ar& ar) {
    ar(build_id, host, pid, rank, init_ok, init_error);
  }
};

// MPI_Init_thread when nobody did yet (a singleton, for MPI_Comm_spawn);
// registers the finalizer at exit. Returns the thread level provided.
int ensure_mpi_initialized();
// The dup of MPI_COMM_WORLD made by the init hook (MPI_COMM_NULL when the
// hook did not run under an MPI launcher).
MPI_Comm world_comm() noexcept;
bool init_hook_ran() noexcept;
// argv[1..] as given to mproc::init, for spawned workers.
const std::vector<std::string>& program_args();

std::string main_build_id();
std::string host_name();
std::string mpi_error_string(int code);

// One executor at a time per program (the workers serve one).
void claim_session();
void release_session() noexcept;

// The shared-value table.
void shared_put_local(std::uint64_t id, SharedValue value, const std::type_info& type);
void shared_erase(std::uint64_t id);

// Referenced by the engine so that the linker keeps the runtime's object.
void register_hook() noexcept;

}  // namespace mproc::mpi::detail
