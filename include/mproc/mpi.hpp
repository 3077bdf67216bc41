// mproc::mpi::PoolExecutor: ProcessPoolExecutor's interface over MPI ranks,
// as mpi4py.futures.MPIPoolExecutor. Link mproc::mpi (built when Open MPI is
// found, MPROC_WITH_MPI=AUTO); not part of mproc.hpp, since MPI is optional.
//
//   int main(int argc, char** argv) {
//     mproc::init(argc, argv);              // ranks != 0 become workers here
//     mproc::mpi::PoolExecutor ex;          // one worker per other rank
//     auto f = ex.submit(largest_prime_factor, 100913100913ULL);
//     f.get();
//   }
//   $ mpirun -n 4 ./app        (or ./app alone: workers via MPI_Comm_spawn)
//
// Semantics (docs/mpi.md): exceptions come back as RemoteError; a task that
// kills its rank aborts the MPI job (MPI's model; use a ProcessPoolExecutor
// inside the task for isolation); no per-task timeouts or recycling.
#pragma once
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <vector>

#include "mproc/call.hpp"
#include "mproc/executor.hpp"
#include "mproc/futures.hpp"

namespace mproc::mpi {

// A worker rank runs another binary than rank 0 (its build-id differs), so
// function references could not name the same code there.
class BuildMismatch : public Error {
 public:
  using Error::Error;
};

struct PoolOptions {
  unsigned max_workers = 0;  // 0: every other rank (mpirun), or cpu_count() spawned
  std::optional<mproc::detail::Call> initializer = {};  // run once per worker and executor
  // Tasks sent ahead to each worker; 0: adaptive (2, or 32 while its tasks
  // take under 100 µs each).
  unsigned max_inflight = 0;
  // Answer time for the build-id handshake at construction (`30s`; empty:
  // forever).
  Timeout handshake_timeout = Timeout::from_nanoseconds(60'000'000'000);
};

// Traffic counters of an executor (rank 0 side), for tests and tuning.
struct Stats {
  std::uint64_t tasks_sent = 0;
  std::uint64_t task_bytes_sent = 0;   // task messages, headers included
  std::uint64_t shares_sent = 0;       // Shared<T> values, one per worker each
  std::uint64_t share_bytes_sent = 0;
  std::uint64_t results_received = 0;
  std::uint64_t result_bytes_received = 0;
};

// Inside a task on a worker rank: who runs it, and what reached this worker
// since its executor opened (rank 0 outside a worker: rank 0 and zeros).
struct WorkerInfo {
  int rank = 0;  // in MPI_COMM_WORLD (mpirun) or in the spawned workers' world
  std::uint64_t tasks_run = 0;
  std::uint64_t shares_received = 0;
  std::uint64_t share_bytes_received = 0;
  std::string host;
  template <class Ar>
  void serialize(Ar& ar) {
    ar(rank, tasks_run, shares_received, share_bytes_received, host);
  }
};
WorkerInfo worker_info();

// True in a process started under an MPI launcher (mpirun, srun) or by
// MPI_Comm_spawn.
bool launched_under_mpi() noexcept;

namespace detail {
using mproc::detail::Call;

// The per-process table of shared values (workers: received; rank 0: shared).
using mproc::detail::SharedValue;
SharedValue shared_lookup(std::uint64_t id, const std::type_info& type, SharedValue (*decode)(const Bytes&));
template <class T>
SharedValue decode_shared(const Bytes& bytes) {
  return SharedValue::make<T>(from_bytes<T>(bytes));
}

class Engine;  // src/mpi/internal.hpp

// The type-erased face of rank 0's engine that PoolExecutor holds: calls go
// in as bytes, futures come out as FutureCores; MPI stays in src/mpi/.
class ExecutorCore {
 public:
  explicit ExecutorCore(const PoolOptions& options);
  ~ExecutorCore();  // shutdown(true)
  ExecutorCore(const ExecutorCore&) = delete;
  ExecutorCore& operator=(const ExecutorCore&) = delete;

  mproc::detail::FutureCore submit(Call call);
  std::vector<mproc::detail::FutureCore> submit_many(std::vector<Call> calls);
  std::uint64_t share(Bytes bytes, SharedValue local, const std::type_info& type);
  void release(std::uint64_t id);
  void shutdown(bool wait, bool cancel_pending);

  unsigned size() const noexcept;
  std::vector<int> worker_ranks() const;
  bool spawned() const noexcept;
  Stats stats() const;

 private:
  mproc::detail::Owned<Engine> engine_;
};
}  // namespace detail

// A value sent once to every worker (PoolExecutor::share) and named by tasks
// through this handle: only its id travels with each task; get() resolves to
// the worker's cached copy (on rank 0, to the original).
template <class T>
class Shared {
 public:
  Shared() = default;
  // value: made from a T (SharedValue::make<T>).
  Shared(std::uint64_t id, detail::SharedValue value) : id_(id), value_(std::move(value)) {}

  const T& get() const {
    if (!value_) throw Error("mproc::mpi::Shared: empty handle");
    return *value_.template get<T>();
  }
  const T& operator*() const { return get(); }
  const T* operator->() const { return &get(); }
  std::uint64_t id() const noexcept { return id_; }
  explicit operator bool() const noexcept { return static_cast<bool>(value_); }

  template <class Ar>
  void save(Ar& ar) const {
    ar(id_);
  }
  template <class Ar>
  void load(Ar& ar) {
    ar(id_);
    value_ = detail::shared_lookup(id_, typeid(T), &detail::decode_shared<T>);
  }

 private:
  std::uint64_t id_ = 0;
  detail::SharedValue value_;  // a T
};

class PoolExecutor {
 public:
  explicit PoolExecutor(PoolOptions options = {}) : engine_(options) {}
  explicit PoolExecutor(unsigned max_workers) : PoolExecutor(PoolOptions{.max_workers = max_workers}) {}
  // The local executor's options, so switching the type is the only change.
  // What MPI ranks cannot do (per-task timeouts, recycling) is refused.
  // (A template, so that a braced `{.max_workers = 2}` means mpi::PoolOptions.)
  template <class O>
    requires std::is_same_v<O, mproc::PoolOptions>
  explicit PoolExecutor(const O& o) : PoolExecutor(from_local(o)) {}
  ~PoolExecutor() = default;  // shutdown(true)

  template <class F, class... A>
  auto submit(F&& fn, A&&... args) {
    using R = mproc::detail::call_result_t<std::decay_t<F>, mproc::detail::task_arg_t<A>...>;
    auto call = mproc::detail::make_call<std::decay_t<F>, mproc::detail::task_arg_t<A>...>(fn, args...);
    return Future<R>(engine_.submit(std::move(call)));
  }

  // Results in input order; the first task error is rethrown; TimeoutError
  // when not all are in within timeout. chunksize items travel per message.
  template <class F, std::ranges::input_range Range>
  auto map(F&& fn, const Range& items, Timeout timeout = std::nullopt, std::size_t chunksize = 1) {
    using Item = std::ranges::range_value_t<Range>;
    const auto deadline = mproc::detail::deadline_after(timeout);
    auto chunks = mproc::detail::submit_chunks<std::decay_t<F>, Item, false>(engine_, fn, items, chunksize);
    return mproc::detail::concat_chunks(chunks, deadline);
  }

  // Sends value once to every worker; tasks take the handle (by value or
  // const&) and read it with get(). Kept until release() or shutdown.
  template <class T>
  Shared<T> share(T value) {
    static_assert(is_sendable_v<T>, "mproc::mpi::share: the value must be serializable and default-constructible");
    Bytes bytes = to_bytes(value);
    auto local = detail::SharedValue::make<T>(std::move(value));
    auto id = engine_.share(std::move(bytes), local, typeid(T));
    return Shared<T>(id, std::move(local));
  }
  // Drops a shared value on every worker, after the tasks already submitted.
  template <class T>
  void release(const Shared<T>& handle) {
    engine_.release(handle.id());
  }

  // No new tasks. wait: block until every task is done and the workers have
  // left this executor. cancel_futures: cancel those not yet sent.
  void shutdown(bool wait = true, bool cancel_futures = false) { engine_.shutdown(wait, cancel_futures); }

  unsigned max_workers() const noexcept { return engine_.size(); }
  std::vector<int> worker_ranks() const { return engine_.worker_ranks(); }
  bool spawned() const noexcept { return engine_.spawned(); }  // workers from MPI_Comm_spawn
  Stats stats() const { return engine_.stats(); }

 private:
  template <class T>
  static constexpr bool is_sendable_v = mproc::detail::is_sendable_v<T>;
  static PoolOptions from_local(const mproc::PoolOptions& o);
  detail::ExecutorCore engine_;
};

}  // namespace mproc::mpi
