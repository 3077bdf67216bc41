// detail::PoolCore: the public headers' handle on the local engine. Each
// member forwards to the Engine; futures leave as FutureCores (a move of
// the engine's reference, no allocation per task).
#include "mproc/detail/pool_core.hpp"

#include "pool/engine.hpp"

namespace mproc::detail {

PoolCore::PoolCore(EngineOptions options) : engine_(new Engine(std::move(options))) {}

PoolCore::~PoolCore() = default;  // ~Engine: shutdown(wait = true)

FutureCore PoolCore::submit(Call call, Timeout timeout) { return engine_->submit(std::move(call), timeout).future(); }

std::vector<FutureCore> PoolCore::submit_many(std::vector<Call> calls, Timeout timeout) {
  auto states = engine_->submit_many(std::move(calls), timeout);
  std::vector<FutureCore> out;
  out.reserve(states.size());
  for (auto& s : states) out.push_back(std::move(s).future());
  return out;
}

void PoolCore::shutdown(bool wait, bool cancel_pending) { engine_->shutdown(wait, cancel_pending); }
void PoolCore::terminate() { engine_->terminate(); }
void PoolCore::join() { engine_->join(); }
unsigned PoolCore::size() const noexcept { return engine_->size(); }
std::vector<pid_t> PoolCore::worker_pids() const { return engine_->worker_pids(); }
std::size_t PoolCore::respawns() const noexcept { return engine_->respawns(); }

}  // namespace mproc::detail
