// detail::PoolCore: the public headers' handle on the local engine. Each
// member forwards to the Engine; futures leave as FutureCores (a move of
// the engine's shared_ptr, no allocation per task).
#include "mproc/detail/pool_core.hpp"

#include "pool/engine.hpp"

namespace mproc::detail {

PoolCore::PoolCore(EngineOptions options) : engine_(std::make_unique<Engine>(std::move(options))) {}

PoolCore::~PoolCore() = default;  // ~Engine: shutdown(wait = true)

FutureCore PoolCore::submit(Call call, std::optional<std::chrono::nanoseconds> timeout) {
  return FutureCore(engine_->submit(std::move(call), timeout));
}

std::vector<FutureCore> PoolCore::submit_many(std::vector<Call> calls, std::optional<std::chrono::nanoseconds> timeout) {
  auto states = engine_->submit_many(std::move(calls), timeout);
  std::vector<FutureCore> out;
  out.reserve(states.size());
  for (auto& s : states) out.emplace_back(std::move(s));
  return out;
}

void PoolCore::shutdown(bool wait, bool cancel_pending) { engine_->shutdown(wait, cancel_pending); }
void PoolCore::terminate() { engine_->terminate(); }
void PoolCore::join() { engine_->join(); }
unsigned PoolCore::size() const noexcept { return engine_->size(); }
std::vector<pid_t> PoolCore::worker_pids() const { return engine_->worker_pids(); }
std::size_t PoolCore::respawns() const noexcept { return engine_->respawns(); }

}  // namespace mproc::detail
