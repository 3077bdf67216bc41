// Manager server internals: the object table, the request dispatcher and the
// built-in servants. See docs/architecture.md ("Managers").
//
// Request frame (raw bytes on an authenticated Connection):
//   u64 object id | u16 method index | method arguments...
// Reply frame:
//   u8 0 | method reply...            on success
//   u8 1 | str type name | str what   on failure (the caller rethrows it)
// Object 0 is the server itself (proto::ServerProtocol: create / release /
// count / ping / shutdown). Every object's methods, arguments and results
// are its kind's table in mproc/detail/manager_protocol.hpp.
#pragma once
#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "mproc/listener.hpp"
#include "mproc/managers.hpp"

namespace mproc::detail {

struct CallContext;

// A server-side object. call() runs the method at that index of its
// protocol table (dispatch<P>, manager_dispatch.hpp) and appends its reply;
// it throws for an index past the table or malformed arguments (the caller
// gets the exception as an error reply).
class Servant {
 public:
  virtual ~Servant() = default;
  virtual void call(std::uint16_t method, wire::Reader& args, Bytes& out, CallContext& ctx) = 0;
  std::string kind, sig;
};

// The connection a call came on: blocking methods wait in slices and give up
// when its peer hangs up, so a crashed client never pins a server thread (nor
// takes a queue item it can no longer receive).
struct CallContext {
  int peer_fd = -1;
  bool may_block = true;  // false under the fuzzer: every wait times out at once
  bool peer_gone() const;
};

// Thrown by a wait whose caller has gone: the connection ends without a reply.
struct PeerGone {};

struct ServerConfig {
  std::string authkey;
  std::uint64_t max_message_size = std::uint64_t{64} << 20;
  // Bytes all clients together may have in requests being received; a
  // request over kFreeFrameSize reserves its announced length from it first
  // (see serve_client), so stalled clients cannot cost more than this.
  std::uint64_t max_buffered_bytes = std::uint64_t{256} << 20;
  std::size_t max_connections = 512;  // authenticated clients
  // Connections still in their handshake: a separate, small pool, so silent
  // peers never take an authenticated client's place. When it is full the
  // oldest is dropped; each is dropped at handshake_deadline anyway.
  std::size_t max_unauthenticated = 32;
  std::chrono::nanoseconds handshake_deadline{std::chrono::seconds(3)};
  std::size_t max_objects = std::size_t{1} << 20;
  std::shared_ptr<const TypeRegistry> types;
};

// A registered user type as the server serves it: its methods by name.
struct ServedType {
  std::string name;
  void* (*make)() = nullptr;
  void (*destroy)(void* obj) noexcept = nullptr;
  std::map<std::string, UserMethod, std::less<>> methods;
};

// The user types registered with a Manager (register_type), by name. The
// server gets a copy when it starts (types registered later are not served).
struct TypeRegistry {
  std::map<std::string, std::shared_ptr<const ServedType>, std::less<>> types;
  // Replaces a type of that name; of two methods with one name, the first serves.
  void add(UserType type);  // manager_servants.cpp
};

class Server {
 public:
  explicit Server(ServerConfig config);
  // Handles one request frame's payload; returns the reply frame's payload.
  // Never throws, except PeerGone.
  Bytes handle(std::span<const std::byte> request, CallContext& ctx);
  bool stopping() const noexcept { return stopping_.load(); }
  const ServerConfig& config() const noexcept { return config_; }
  // The accept loop's eventfd; wake() pokes it (after a "shutdown" reply).
  void set_wake_fd(int fd) noexcept { wake_fd_ = fd; }
  void wake() noexcept;
  // A "shutdown" was requested and its reply sent: the accept loop may end.
  bool stop_ready() const noexcept { return stop_ready_.load(); }

 private:
  struct Entry {
    std::shared_ptr<Servant> servant;
    std::shared_ptr<std::mutex> lock;  // user objects: one call at a time
  };
  Entry find(std::uint64_t id);

 public:
  // ServerProtocol's handlers (object 0).
  std::uint64_t on(proto::Tag<"create">, CallContext&, std::string_view kind, std::uint64_t fingerprint,
                   std::string_view name, std::string_view sig, std::span<const std::byte> init);
  bool on(proto::Tag<"release">, CallContext&, std::uint64_t id);
  std::uint64_t on(proto::Tag<"count">, CallContext&);
  void on(proto::Tag<"ping">, CallContext&) {}
  void on(proto::Tag<"shutdown">, CallContext&);

 private:

  ServerConfig config_;
  std::shared_mutex mu_;
  std::unordered_map<std::uint64_t, Entry> objects_;
  std::unordered_map<std::string, std::uint64_t> names_;
  std::uint64_t next_id_ = 1;
  std::atomic<bool> stopping_{false};
  std::atomic<bool> stop_ready_{false};
  std::atomic<int> wake_fd_{-1};
};

// A built-in servant of that kind ("dict", "list", ...), from its creation
// data; fingerprint: the client's table's (a ValueError when it differs from
// this server's). For kind "user", the registered type named sig.
std::unique_ptr<Servant> make_servant(std::string_view kind, std::uint64_t fingerprint, std::string_view sig,
                                      std::span<const std::byte> init, const TypeRegistry& types);

// Accepts and serves until a client asks the server to stop.
void serve(Listener& listener, ServerConfig config);

// Every built-in kind with valid creation data (for the fuzzer and tests).
struct FuzzKind {
  std::string kind;
  std::uint64_t fingerprint;
  Bytes init;
};
std::vector<FuzzKind> fuzz_kinds();

// Fuzzing entry (also run by a normal test): data is a byte stream of frames
// as a client would send them after authentication; each is decoded by the
// real Connection reader and dispatched to a fresh in-process server holding
// one object of every kind. Must never crash, hang or leak.
void dispatch_for_fuzz(std::span<const std::byte> data);

}  // namespace mproc::detail
