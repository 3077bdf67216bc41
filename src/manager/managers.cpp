// Manager (start / connect / serve_forever / shutdown) and the client side of
// proxies: a per-process pool of authenticated connections per server.
#include "mproc/managers.hpp"

#include <fmt/format.h>
#include <pthread.h>
#include <sys/random.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <map>
#include <mutex>
#include <new>

#include "manager/manager_server.hpp"
#include "mproc/shared_memory.hpp"
#include "sys/fd.hpp"

namespace mproc {

namespace detail {

// A process's pool of connections to one server. Counted by hand (refs):
// the registry holds one reference, each proxy's EndpointRef one, each call
// in flight one; the last release deletes it (closing its idle connections).
struct Endpoint {
  Address address;
  std::string authkey;
  pid_t pid = 0;
  std::atomic<std::size_t> refs{1};
  std::mutex mu;
  std::vector<Connection> idle;
};

namespace {

void retain(Endpoint* ep) noexcept {
  if (ep) ep->refs.fetch_add(1, std::memory_order_relaxed);
}
void release(Endpoint* ep) noexcept {
  if (ep && ep->refs.fetch_sub(1, std::memory_order_acq_rel) == 1) delete ep;
}

// One owned reference to an Endpoint.
class EndpointPtr {
 public:
  EndpointPtr() = default;
  explicit EndpointPtr(Endpoint* adopt) noexcept : p_(adopt) {}
  EndpointPtr(EndpointPtr&& o) noexcept : p_(std::exchange(o.p_, nullptr)) {}
  EndpointPtr& operator=(EndpointPtr&& o) noexcept {
    if (this != &o) release(std::exchange(p_, std::exchange(o.p_, nullptr)));
    return *this;
  }
  ~EndpointPtr() { release(p_); }
  Endpoint* get() const noexcept { return p_; }
  Endpoint* operator->() const noexcept { return p_; }
  Endpoint& operator*() const noexcept { return *p_; }
  explicit operator bool() const noexcept { return p_ != nullptr; }

 private:
  Endpoint* p_ = nullptr;
};

}  // namespace

namespace {

constexpr std::size_t kMaxIdle = 8;

// The endpoints of this process, by (address, authkey), as CPython keeps a
// connection per manager address: a pool task or a child that gets proxies
// again and again reuses its authenticated connections. Manager::shutdown()
// (and a connected manager's end) forgets its server's endpoint and closes
// the idle connections; otherwise they last as long as the process.
struct Registry {
  std::mutex mu;
  pid_t pid = 0;
  std::uint64_t nonce = 0;  // this process's part of an OwnerId (0: not drawn yet)
  std::map<std::string, EndpointPtr> endpoints;
};

// 64 random bits, never 0: OwnerIds of processes on different machines (or a
// pid reused) do not collide.
std::uint64_t random_nonce() {
  std::uint64_t v = 0;
  while (v == 0) {
    if (::getrandom(&v, sizeof v, 0) != static_cast<ssize_t>(sizeof v)) sys::throw_errno("getrandom");
  }
  return v;
}

std::string endpoint_key(const Address& address, const std::string& authkey) {
  std::string key = address.to_string();
  key.push_back('\0');
  key += authkey;
  return key;
}

// Made at load and never destroyed (proxies may outlive static destruction);
// its lock is held across fork, so a fork child never inherits it locked.
// Nothing here is initialised lazily: a first use racing a fork in another
// thread would leave the child a static-init guard held forever.
Registry& g_registry = *new Registry;
[[maybe_unused]] const int g_registry_atfork =
    ::pthread_atfork([] { g_registry.mu.lock(); }, [] { g_registry.mu.unlock(); }, [] { g_registry.mu.unlock(); });

// With g_registry.mu held; the registry keeps its own reference.
Endpoint* endpoint_for_locked(const Address& address, const std::string& authkey) {
  Registry& r = g_registry;
  const pid_t me = ::getpid();
  if (r.pid != me) {
    r.endpoints.clear();  // the parent's: never used here
    r.pid = me;
    r.nonce = 0;
  }
  auto& slot = r.endpoints[endpoint_key(address, authkey)];
  if (slot) return slot.get();
  auto* ep = new Endpoint;
  ep->address = address;
  ep->authkey = authkey;
  ep->pid = me;
  slot = EndpointPtr(ep);
  return ep;
}

Connection take(Endpoint& ep) {
  {
    std::lock_guard lk(ep.mu);
    if (!ep.idle.empty()) {
      Connection c = std::move(ep.idle.back());
      ep.idle.pop_back();
      return c;
    }
  }
  try {
    return Client(ep.address, ep.authkey);
  } catch (const OSError& e) {
    throw ConnectionClosed(fmt::format("manager at {} is unreachable: {}", ep.address.to_string(), e.what()));
  }
}

void give_back(Endpoint& ep, Connection c) {
  std::lock_guard lk(ep.mu);
  if (ep.idle.size() < kMaxIdle) ep.idle.push_back(std::move(c));
}

// A reply usually comes within a few microseconds: waiting for it awake
// (a bounded spin of non-blocking polls) saves the sleep/wake-up.
// Read at load, not on first use (no static-init guard on a fork child's path).
const int g_spin_us = [] {
  const char* e = std::getenv("MPROC_MANAGER_SPIN_US");
  return e ? std::atoi(e) : 20;
}();
void spin_for_reply(Connection& c) {
  if (g_spin_us > 0) c.poll_spinning(std::chrono::microseconds(g_spin_us));
}

[[noreturn]] void throw_remote(std::string type, std::string message) {
  if (type == "mproc::KeyError") throw KeyError(message);
  if (type == "mproc::IndexError") throw IndexError(message);
  if (type == "mproc::ValueError") throw ValueError(message);
  if (type == "mproc::AttributeError") throw AttributeError(message);
  if (type == "mproc::Empty") throw Empty(message);
  if (type == "mproc::Full") throw Full(message);
  if (type == "mproc::BrokenBarrierError") throw BrokenBarrierError(message);
  if (type == "mproc::TimeoutError") throw TimeoutError(message);
  throw RemoteError(std::move(type), std::move(message));
}

}  // namespace

void forget_endpoint(const Address& address, const std::string& authkey) {
  EndpointPtr ep;
  {
    Registry& r = g_registry;
    std::lock_guard lk(r.mu);
    if (r.pid != ::getpid()) return;
    auto it = r.endpoints.find(endpoint_key(address, authkey));
    if (it == r.endpoints.end()) return;
    ep = std::move(it->second);
    r.endpoints.erase(it);
  }
  std::vector<Connection> idle;
  {
    std::lock_guard lk(ep->mu);
    idle.swap(ep->idle);
  }
}  // closed here, outside the locks

// A proxy's ep_ is guarded by the registry's lock, not a lock of its own:
// that one is held across fork, a per-proxy one could be copied locked.
EndpointRef::EndpointRef(const EndpointRef& o) {
  std::lock_guard lk(g_registry.mu);
  ep_ = o.ep_;
  retain(ep_);
}

EndpointRef& EndpointRef::operator=(const EndpointRef& o) {
  if (this == &o) return *this;
  EndpointPtr old;  // released outside the lock
  std::lock_guard lk(g_registry.mu);
  retain(o.ep_);
  old = EndpointPtr(std::exchange(ep_, o.ep_));
  return *this;
}

// Not locked, as std::shared_ptr's destructor was not: no other thread may
// use a proxy being destroyed.
EndpointRef::~EndpointRef() { release(ep_); }

void EndpointRef::reset() {
  EndpointPtr old;
  std::lock_guard lk(g_registry.mu);
  old = EndpointPtr(std::exchange(ep_, nullptr));
}

Endpoint* EndpointRef::acquire(const Address& address, const std::string& authkey) const {
  EndpointPtr old;
  std::lock_guard lk(g_registry.mu);
  if (!ep_ || ep_->pid != ::getpid()) {
    Endpoint* fresh = endpoint_for_locked(address, authkey);
    retain(fresh);
    old = EndpointPtr(std::exchange(ep_, fresh));
  }
  retain(ep_);
  return ep_;
}

ProxyBase::ProxyBase(Address address, std::string authkey, std::uint64_t id)
    : address_(std::move(address)), authkey_(std::move(authkey)), id_(id) {}

Bytes ProxyBase::request(std::uint16_t method) const {
  Bytes r;
  r.reserve(64);
  wire::put_u64(r, id_);
  wire::put_u16(r, method);
  return r;
}

OwnerId caller_identity() {
  OwnerId id;
  {
    Registry& r = g_registry;
    std::lock_guard lk(r.mu);
    if (r.pid != ::getpid()) {  // a fork child is not its parent's owner
      r.endpoints.clear();
      r.pid = ::getpid();
      r.nonce = 0;
    }
    if (r.nonce == 0) r.nonce = random_nonce();
    id.process = r.nonce;
  }
  id.thread = static_cast<std::uint64_t>(::gettid());
  return id;
}

CallResult ProxyBase::call(Bytes&& request) const {
  if (authkey_.empty() && address_.path.empty() && address_.host.empty())
    throw ValueError("mproc: call through an empty proxy (default-constructed or moved from)");
  EndpointPtr ep(ep_.acquire(address_, authkey_));
  Connection c = take(*ep);
  CallResult res;
  try {
    c.send_bytes(request);
    spin_for_reply(c);
    res.bytes = c.recv_bytes();
  } catch (const ConnectionClosed& e) {
    throw ConnectionClosed(fmt::format("manager at {}: connection lost ({})", address_.to_string(), e.what()));
  }
  if (res.bytes.empty()) throw ProtocolError("manager: empty reply");
  give_back(*ep, std::move(c));
  if (res.bytes[0] == std::byte{0}) return res;
  wire::Reader rd(std::span<const std::byte>(res.bytes).subspan(1));
  std::string type(rd.str());
  std::string message(rd.str());
  throw_remote(std::move(type), std::move(message));
}

}  // namespace detail

// ---- Manager ---------------------------------------------------------------------

namespace {

// The forked server: keeps only stdio and the listening socket, serves, exits.
[[noreturn]] void run_forked_server(Listener& listener, detail::ServerConfig& config) {
  const int lfd = listener.fileno();
  if (lfd > 3) ::close_range(3, static_cast<unsigned>(lfd - 1), 0);
  ::close_range(static_cast<unsigned>(lfd + 1), ~0u, 0);
  listener.set_path_owner(::getpid());  // a socket path is the server's to unlink
  int code = 0;
  try {
    detail::serve(listener, std::move(config));
  } catch (...) {
    code = 1;
  }
  listener.close();
  ::_exit(code);
}

detail::ServerConfig server_config(const ManagerOptions& o, const std::string& authkey,
                                   const detail::TypeRegistry* types) {
  if (!o.handshake_deadline)
    throw ValueError("mproc::Manager: ManagerOptions::handshake_deadline is empty; it needs a time limit "
                     "(the default is 3 s)");
  detail::ServerConfig config;
  config.authkey = authkey;
  config.max_message_size = o.max_message_size;
  config.max_buffered_bytes = o.max_buffered_bytes;
  config.max_connections = o.max_connections;
  config.max_unauthenticated = o.max_unauthenticated;
  config.handshake_deadline = std::chrono::nanoseconds(o.handshake_deadline.nanoseconds());
  config.types = types ? std::make_shared<const detail::TypeRegistry>(*types)
                       : std::make_shared<const detail::TypeRegistry>();
  return config;
}

// The default socket's file and 0700 directory, when the server could not
// remove them itself (killed).
void remove_private_socket(const Address& a) {
  if (a.kind != Address::Kind::unix_socket || a.path.empty() || a.path[0] == '@') return;
  ::unlink(a.path.c_str());
  const auto slash = a.path.rfind('/');
  if (slash != std::string::npos && slash > 0) ::rmdir(a.path.substr(0, slash).c_str());
}

}  // namespace

Manager::Manager() : Manager(ManagerOptions{}) {}

Manager::Manager(ManagerOptions options)
    : options_(std::move(options)), types_(new detail::TypeRegistry) {}

Manager::Manager(Manager&& o) noexcept
    : options_(std::move(o.options_)),
      address_(std::move(o.address_)),
      authkey_(std::move(o.authkey_)),
      state_(std::exchange(o.state_, State::idle)),
      types_(std::move(o.types_)),
      server_(std::move(o.server_)),
      root_(std::move(o.root_)) {}

Manager& Manager::operator=(Manager&& o) noexcept {
  if (this != &o) {
    try {
      shutdown();
    } catch (...) {
    }
    options_ = std::move(o.options_);
    address_ = std::move(o.address_);
    authkey_ = std::move(o.authkey_);
    state_ = std::exchange(o.state_, State::idle);
    types_ = std::move(o.types_);
    server_ = std::move(o.server_);
    root_ = std::move(o.root_);
  }
  return *this;
}

Manager::~Manager() {
  try {
    shutdown();
  } catch (...) {
  }
}

void Manager::start() {
  if (state_ != State::idle) throw ValueError("Manager::start: the manager is already running");
  authkey_ = options_.authkey.empty() ? random_authkey() : options_.authkey;
  detail::ServerConfig config = server_config(options_, authkey_, types_.get());  // checks the options
  cleanup_leaked_segments();  // dead creators' named segments go now, not at some later create
  // Default: a Unix socket in a fresh 0700 directory (Listener's empty path).
  auto listener = std::make_shared<Listener>(options_.address.value_or(Address{}), authkey_);
  address_ = listener->address();
  ProcessOptions po;
  po.name = "SyncManager";
  po.daemon = true;
  po.start_method = StartMethod::fork;
  server_ = detail::Owned<Process>(
      new Process(po, [listener, config]() mutable { run_forked_server(*listener, config); }));
  server_->start();
  listener->set_path_owner(0);
  listener.reset();  // the server's now (the target, and its copy of the socket, go with start())
  root_ = detail::ServerProxy(detail::ProxyBase(address_, authkey_, 0));
  state_ = State::started;
}

void Manager::connect() {
  if (state_ != State::idle) throw ValueError("Manager::connect: the manager is already running");
  if (!options_.address) throw ValueError("Manager::connect: ManagerOptions::address is required");
  address_ = *options_.address;
  authkey_ = options_.authkey;
  root_ = detail::ServerProxy(detail::ProxyBase(address_, authkey_, 0));
  root_.ping();
  state_ = State::connected;
}

void Manager::serve_with(void (*ready)(void* context, const Address& address), void* context) {
  if (state_ != State::idle) throw ValueError("Manager::serve_forever: the manager is already running");
  if (!options_.address) throw ValueError("Manager::serve_forever: ManagerOptions::address is required");
  authkey_ = options_.authkey;
  detail::ServerConfig config = server_config(options_, authkey_, types_.get());  // checks the options
  Listener listener(*options_.address, authkey_);
  address_ = listener.address();
  state_ = State::serving;
  struct Reset {
    State& s;
    ~Reset() { s = State::idle; }
  } reset{state_};
  if (ready) ready(context, address_);
  detail::serve(listener, std::move(config));
}

void Manager::add_type(detail::UserType type) {
  if (!types_) types_ = detail::Owned<detail::TypeRegistry>(new detail::TypeRegistry);  // moved from
  types_->add(std::move(type));
}

pid_t Manager::server_pid() const noexcept { return server_ ? server_->pid() : 0; }

void Manager::stop_server() {
  require_running("stop_server");
  root_.shutdown();
}

void Manager::shutdown() {
  if (state_ == State::started && server_) {
    try {
      root_.shutdown();
    } catch (const Error&) {  // already gone
    }
    if (!server_->join(std::chrono::seconds(5))) {
      server_->kill();
      server_->join();
    }
    server_.reset();
    if (!options_.address) remove_private_socket(address_);
  }
  if (state_ == State::started || state_ == State::connected) {
    detail::forget_endpoint(address_, authkey_);
    root_ = detail::ServerProxy();
    state_ = State::idle;
  }
}

void Manager::require_running(const char* op) const {
  if (state_ != State::started && state_ != State::connected)
    throw ValueError(fmt::format("Manager::{}: start() or connect() the manager first", op));
}

detail::ProxyBase Manager::make(std::string_view kind, std::uint64_t fingerprint, std::string_view name,
                                std::string_view sig, const Bytes& init) {
  require_running("create");
  return detail::ProxyBase(address_, authkey_, root_.create(kind, fingerprint, name, sig, init));
}

void Manager::release(const detail::ProxyBase& proxy) {
  require_running("release");
  root_.release(proxy.id());
}

std::size_t Manager::object_count() {
  require_running("object_count");
  return root_.count();
}

}  // namespace mproc
