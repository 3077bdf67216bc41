// mpi::detail::ExecutorCore: mpi.hpp's handle on rank 0's engine. Each
// member forwards; futures leave as FutureCores (a move, no allocation).
#include "mpi/internal.hpp"

namespace mproc::mpi::detail {

ExecutorCore::ExecutorCore(const PoolOptions& options) : engine_(new Engine(options)) {}

ExecutorCore::~ExecutorCore() = default;  // ~Engine: shutdown(true)

mproc::detail::FutureCore ExecutorCore::submit(Call call) {
  return engine_->submit(std::move(call)).future();
}

std::vector<mproc::detail::FutureCore> ExecutorCore::submit_many(std::vector<Call> calls) {
  auto states = engine_->submit_many(std::move(calls));
  std::vector<mproc::detail::FutureCore> out;
  out.reserve(states.size());
  for (auto& s : states) out.push_back(std::move(s).future());
  return out;
}

std::uint64_t ExecutorCore::share(Bytes bytes, SharedValue local, const std::type_info& type) {
  return engine_->share(std::move(bytes), std::move(local), type);
}

void ExecutorCore::release(std::uint64_t id) { engine_->release(id); }
void ExecutorCore::shutdown(bool wait, bool cancel_pending) { engine_->shutdown(wait, cancel_pending); }
unsigned ExecutorCore::size() const noexcept { return engine_->size(); }
std::vector<int> ExecutorCore::worker_ranks() const { return engine_->worker_ranks(); }
bool ExecutorCore::spawned() const noexcept { return engine_->spawned(); }
Stats ExecutorCore::stats() const { return engine_->stats(); }

}  // namespace mproc::mpi::detail
