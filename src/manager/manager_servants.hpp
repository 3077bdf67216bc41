// What the built-in servants share: ServantOf (a servant dispatching its
// protocol table under its own mutex), the slice-wise wait that notices a
// caller that has gone, and the kinds' makers (by kind name and table
// fingerprint). Containers: manager_servants.cpp; queues and
// synchronisation: manager_sync_servants.cpp.
#pragma once
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string_view>
#include <vector>

#include "manager/manager_dispatch.hpp"
#include "manager/manager_server.hpp"

namespace mproc::detail {

// What a handler gets besides its arguments: the calling connection and the
// servant's lock, held (blocking handlers wait on it).
struct ServantCall {
  CallContext& ctx;
  std::unique_lock<std::mutex>& lock;
};

// A servant of protocol P: Impl has on(proto::Tag<"name">, ServantCall&, args...)
// for every entry of P (a missing one does not compile).
template <class P, class Impl>
class ServantOf : public Servant {
 public:
  void call(std::uint16_t method, wire::Reader& args, Bytes& out, CallContext& ctx) final {
    std::unique_lock lk(mu_);
    ServantCall c{ctx, lk};
    dispatch<P>(static_cast<Impl&>(*this), method, args, out, c);
  }

 private:
  std::mutex mu_;
};

// Waits for pred under c.lock until the deadline, in slices that check
// whether the caller is still there (PeerGone when not: it must not take
// the item or the lock it could no longer receive). False on timeout.
template <class Pred>
bool wait_for(ServantCall& c, std::condition_variable& cv, ServerClock::time_point deadline, Pred pred) {
  constexpr auto kSlice = std::chrono::milliseconds(100);
  if (pred()) {
    // A request read after its sender died (it sat in the socket) must not
    // take an item or the lock either: one poll(2), cheap beside the round trip.
    if (c.ctx.peer_gone()) throw PeerGone{};
    return true;
  }
  if (!c.ctx.may_block) return false;
  while (!pred()) {
    const auto now = ServerClock::now();
    if (now >= deadline) return false;
    cv.wait_until(c.lock, std::min(deadline, now + kSlice));
    if (!pred() && c.ctx.peer_gone()) throw PeerGone{};
  }
  if (c.ctx.peer_gone()) {  // it had to wait and left meanwhile: another waiter gets it
    cv.notify_all();
    throw PeerGone{};
  }
  return true;
}

// A kind the server can make: its name, its table's fingerprint, and the
// maker that decodes its creation data (ServerCodec<P::init>).
struct BuiltinKind {
  std::string_view kind;
  std::uint64_t fingerprint;
  std::unique_ptr<Servant> (*make)(std::span<const std::byte> init);
};

template <class P, class S>
constexpr BuiltinKind builtin_kind() {
  return {P::kind, P::fingerprint, [](std::span<const std::byte> init) -> std::unique_ptr<Servant> {
            wire::Reader r(init);
            auto data = ServerCodec<typename P::init>::get(r);
            if (!r.done())
              throw DeserializeError(fmt::format("mproc::Manager: {} bytes after a {}'s creation data", r.left(),
                                                 P::kind));
            return std::make_unique<S>(data);
          }};
}

std::span<const BuiltinKind> container_kinds();  // manager_servants.cpp
std::span<const BuiltinKind> sync_kinds();       // manager_sync_servants.cpp
// A servant for an instance of a registered user type.
std::unique_ptr<Servant> make_user_servant(std::shared_ptr<const ServedType> type);

}  // namespace mproc::detail
