// The per-process cache behind Shared<T> (include/mproc/pool_share.hpp): a
// worker decodes each shared value once and keeps the last
// kMaxSharedValues it used.
#include <pthread.h>
#include <unistd.h>

#include <atomic>
#include <mutex>
#include <vector>

#include "mproc/pool_share.hpp"
#include "sys/no_destroy.hpp"

namespace mproc::detail {

namespace {
struct Entry {
  std::uint64_t id;
  std::uint32_t type;
  SharedValue value;
};
// Most recently used last. Constant-initialised, never destroyed; the lock
// is taken around fork() so that a fork child never inherits it held.
std::mutex g_mu;
sys::NoDestroy<std::vector<Entry>> g_cache;
std::atomic<std::uint32_t> g_counter{0};
struct AtFork {
  AtFork() {
    ::pthread_atfork([] { g_mu.lock(); }, [] { g_mu.unlock(); }, [] { g_mu.unlock(); });
  }
} g_at_fork;
}  // namespace

std::uint64_t next_share_id() noexcept {
  return (static_cast<std::uint64_t>(::getpid()) << 32) | (g_counter.fetch_add(1, std::memory_order_relaxed) + 1);
}

SharedValue cached_shared_value(std::uint64_t id, std::uint32_t type) {
  std::lock_guard lock(g_mu);
  auto& cache = g_cache.value;
  for (auto it = cache.begin(); it != cache.end(); ++it) {
    if (it->id != id) continue;
    if (it->type != type)
      throw DeserializeError("mproc::Shared: shared value " + std::to_string(id) + " is read as another type");
    Entry e = std::move(*it);
    cache.erase(it);
    cache.push_back(std::move(e));
    return cache.back().value;
  }
  return {};
}

SharedValue cache_shared_value(std::uint64_t id, std::uint32_t type, const SharedBytes& bytes, SharedDecode decode) {
  if (bytes.empty()) throw DeserializeError("mproc::Shared: shared value " + std::to_string(id) + " has no buffer");
  auto value = decode(bytes.bytes());  // outside the lock: it may be large
  std::lock_guard lock(g_mu);
  auto& cache = g_cache.value;
  std::erase_if(cache, [&](const Entry& e) { return e.id == id; });
  cache.push_back({id, type, value});
  if (cache.size() > kMaxSharedValues) cache.erase(cache.begin());
  return value;
}

}  // namespace mproc::detail
