// Manager: Python's multiprocessing.managers. A server process holds objects;
// other processes, on this machine or another, use them through typed proxies.
//
//   mproc::Manager m;                      // Python: Manager()
//   m.start();                             // forks the server (dies with us)
//   auto status = m.dict<std::string, std::string>();
//   mproc::Process p([](auto d) { d.set("job", "completed"); }, status);
//   p.start(); p.join();
//   status.get("job");                     // "completed"
//
// Remote: one program serves (Manager({.address = Address::tcp("0.0.0.0",
// 5000), .authkey = key}).serve_forever()), another connects
// (Manager({...same...}).connect()) and asks for objects by name:
// m.dict<K, V>("board") returns the server's "board", creating it if needed.
//
// - Connections are Listener/Client ones (listener.hpp): nothing is read
//   before the HMAC handshake completes.
// - The server stores serialized bytes keyed by serialized bytes: it needs no
//   knowledge of K, V or T, so any binary serves any proxy. Keys compare as
//   bytes (two keys are equal when they serialize the same). A dict keeps
//   insertion order, as Python's.
// - A proxy holds (address, authkey, object id): it is serializable, so it can
//   be given to a Process (any start method) or a pool task and works there.
//   Each process opens its own connections lazily; a call borrows an idle
//   connection of the proxy's process-wide pool, so threads never wait for
//   each other's blocking calls (Queue.get, Lock.acquire).
// - Errors: a server-side failure comes back as the same exception where
//   mproc has it (KeyError, IndexError, ValueError, AttributeError, Empty, Full,
//   BrokenBarrierError, TimeoutError), else as RemoteError (unknown object or
//   method, wrong argument types, ...). A dead server: ConnectionClosed.
// - Objects live until the server ends, or until release(proxy).
#pragma once
#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <vector>

#include "mproc/errors.hpp"
#include "mproc/listener.hpp"
#include "mproc/process.hpp"
#include "mproc/serialize.hpp"

namespace mproc {

class Manager;

namespace detail::wire {
// The manager's wire helpers: little-endian fixed-size integers and byte
// strings (u64 length + bytes), the same layout as mproc's archives give.
inline void put_u64(Bytes& b, std::uint64_t v) {
  const auto* p = reinterpret_cast<const std::byte*>(&v);
  b.insert(b.end(), p, p + 8);
}
inline void put_u8(Bytes& b, std::uint8_t v) { b.push_back(static_cast<std::byte>(v)); }
inline void put_f64(Bytes& b, double v) {
  const auto* p = reinterpret_cast<const std::byte*>(&v);
  b.insert(b.end(), p, p + 8);
}
inline void put_str(Bytes& b, std::string_view s) {
  put_u64(b, s.size());
  const auto* p = reinterpret_cast<const std::byte*>(s.data());
  b.insert(b.end(), p, p + s.size());
}
// A value serialized in place as a byte string.
template <class T>
void put_value(Bytes& b, const T& v) {
  const std::size_t at = b.size();
  b.resize(at + 8);
  serialize_into(b, v);
  const std::uint64_t n = b.size() - at - 8;
  std::memcpy(b.data() + at, &n, 8);
}
// Seconds, or -1 for "forever".
inline void put_timeout(Bytes& b, Timeout t) {
  put_f64(b, t ? std::chrono::duration<double>(*t).count() : -1.0);
}

// Bounds-checked reader: throws DeserializeError on a short read.
class Reader {
 public:
  explicit Reader(std::span<const std::byte> in) : in_(in) {}
  std::uint64_t u64() {
    std::uint64_t v;
    std::memcpy(&v, take(8).data(), 8);
    return v;
  }
  std::uint8_t u8() { return static_cast<std::uint8_t>(take(1)[0]); }
  double f64() {
    double v;
    std::memcpy(&v, take(8).data(), 8);
    return v;
  }
  std::span<const std::byte> bytes() { return take(u64()); }
  std::string_view str() {
    auto s = bytes();
    return {reinterpret_cast<const char*>(s.data()), s.size()};
  }
  template <class T>
  T value() {
    return from_bytes<T>(bytes());
  }
  std::span<const std::byte> rest() { return take(in_.size() - pos_); }
  bool done() const noexcept { return pos_ == in_.size(); }
  std::size_t left() const noexcept { return in_.size() - pos_; }
  std::span<const std::byte> take(std::uint64_t n);

 private:
  std::span<const std::byte> in_;
  std::size_t pos_ = 0;
};
}  // namespace detail::wire

namespace detail {

struct Endpoint;     // a process's pool of connections to one server
struct CallContext;  // server side: the calling connection

// The result of one call: status byte, then the method's reply.
struct CallResult {
  Bytes bytes;
  wire::Reader reader() const { return wire::Reader(std::span<const std::byte>(bytes).subspan(1)); }
};

// A proxy's handle on its process's connection pool, reset after fork.
// ep_ is guarded by the process-wide proxy registry's lock (managers.cpp),
// which is held across fork: a lock of its own could be copied into a fork
// child while another thread held it.
class EndpointRef {
 public:
  EndpointRef() = default;
  EndpointRef(const EndpointRef& o);
  EndpointRef& operator=(const EndpointRef& o);
  ~EndpointRef() = default;
  void reset();
  // This process's pool for (address, authkey).
  std::shared_ptr<Endpoint> get(const Address& address, const std::string& authkey) const;

 private:
  std::shared_ptr<Endpoint> raw() const;
  mutable std::shared_ptr<Endpoint> ep_;
};

class ProxyBase {
 public:
  ProxyBase() = default;
  ProxyBase(Address address, std::string authkey, std::uint64_t id);
  std::uint64_t id() const noexcept { return id_; }
  const Address& address() const noexcept { return address_; }

  void save(OutputArchive& ar) const { ar(address_, authkey_, id_); }
  void load(InputArchive& ar) {
    ar(address_, authkey_, id_);
    ep_.reset();
  }

  // A request for method on this object; append its arguments, then call().
  Bytes request(std::string_view method) const;
  CallResult call(Bytes&& request) const;

 protected:
  friend class mproc::Manager;
  Address address_;
  std::string authkey_;
  std::uint64_t id_ = 0;
  EndpointRef ep_;
};

template <class... T>
std::string type_sig() {
  std::string s;
  ((s += typeid(T).name(), s += ','), ...);
  return s;
}

// ---- server-side objects (servants) ----------------------------------------
class Servant {
 public:
  virtual ~Servant() = default;
  // Runs method; appends its reply to out. Throws for an unknown method or
  // bad arguments (the caller gets the exception).
  virtual void call(std::string_view method, wire::Reader& args, Bytes& out, CallContext& ctx) = 0;
  std::string kind, sig;
};

template <class T>
struct Method {
  std::string name;
  std::string arg_sig;  // mangled name of std::tuple<decayed argument types>
  std::string arg_desc;
  std::function<void(T&, std::span<const std::byte>, Bytes&)> fn;
};

template <class T>
using MethodTable = std::map<std::string, Method<T>, std::less<>>;

template <class T>
class UserServant final : public Servant {
 public:
  explicit UserServant(std::shared_ptr<const MethodTable<T>> table) : table_(std::move(table)) {}
  void call(std::string_view method, wire::Reader& args, Bytes& out, CallContext&) override {
    auto it = table_->find(method);
    if (it == table_->end())
      throw ValueError("mproc::Manager: " + sig + " has no method '" + std::string(method) + "'");
    std::string_view got = args.str();
    if (got != it->second.arg_sig)
      throw ValueError("mproc::Manager: " + sig + "." + it->second.name + " takes (" +
                                  it->second.arg_desc + "), not (" + demangle_args(got) + ")");
    it->second.fn(obj_, args.rest(), out);  // one call at a time per object (the server holds its lock)
  }

 private:
  static std::string demangle_args(std::string_view mangled) {
    std::string d = demangle(std::string(mangled).c_str());
    if (d.starts_with("std::tuple<") && d.ends_with('>')) return d.substr(11, d.size() - 12);
    return d;
  }
  T obj_{};
  std::shared_ptr<const MethodTable<T>> table_;
};

using ServantFactory = std::function<std::unique_ptr<Servant>()>;
using TypeRegistry = std::map<std::string, ServantFactory, std::less<>>;

// The argument type a value travels as: string literals go as std::string.
template <class A>
using wire_arg_t = std::conditional_t<std::is_convertible_v<A, std::string_view> &&
                                          !std::is_same_v<std::decay_t<A>, std::string>,
                                      std::string, std::decay_t<A>>;

template <class... A>
std::string arg_desc() {
  std::string s;
  ((s += (s.empty() ? "" : ", "), s += demangle(typeid(A).name())), ...);
  return s;
}

template <class T, class R, class... A, class PM>
Method<T> make_method(std::string name, PM pm) {
  static_assert((is_serializable_v<std::decay_t<A>> && ...), "mproc::method: arguments must be serializable");
  static_assert(std::is_void_v<R> || is_serializable_v<std::decay_t<R>>, "mproc::method: result must be serializable");
  Method<T> m;
  m.name = std::move(name);
  m.arg_sig = typeid(std::tuple<std::decay_t<A>...>).name();
  m.arg_desc = arg_desc<std::decay_t<A>...>();
  m.fn = [pm](T& obj, std::span<const std::byte> in, Bytes& out) {
    auto args = from_bytes<std::tuple<std::decay_t<A>...>>(in);
    if constexpr (std::is_void_v<R>) {
      std::apply([&](auto&... a) { (obj.*pm)(std::move(a)...); }, args);
    } else {
      serialize_into(out, std::apply([&](auto&... a) -> decltype(auto) { return (obj.*pm)(std::move(a)...); }, args));
    }
  };
  return m;
}
}  // namespace detail

// A method of a registered class, served by name: method("inc", &Counter::inc).
template <class T, class R, class... A>
detail::Method<T> method(std::string name, R (T::*pm)(A...)) {
  return detail::make_method<T, R, A...>(std::move(name), pm);
}
template <class T, class R, class... A>
detail::Method<T> method(std::string name, R (T::*pm)(A...) const) {
  return detail::make_method<T, R, A...>(std::move(name), pm);
}

// Timeout conversions for proxies' blocking calls.
namespace detail {
inline bool reply_bool(const CallResult& r) { return r.reader().u8() != 0; }
inline std::uint64_t reply_u64(const CallResult& r) { return r.reader().u64(); }
}  // namespace detail

}  // namespace mproc

#define MPROC_MANAGER_PROXIES_FROM_MANAGERS_HPP
#include "mproc/manager_proxies.hpp"

namespace mproc {

struct ManagerOptions {
  // Where the server listens. Default (start()): a Unix socket in a fresh
  // 0700 directory (as CPython), removed with the server: only this user can
  // reach it, and a Unix-socket peer of another uid is refused before the
  // handshake anyway. serve_forever()/connect() need one.
  std::optional<Address> address;
  // Default (start()): 32 random bytes. Empty is allowed for connect/serve
  // only when the other side also uses an empty key.
  std::string authkey;
  // Largest request the server reads; larger frames drop the connection.
  std::uint64_t max_message_size = std::uint64_t{64} << 20;
  // Authenticated connections served at once; more are refused (closed).
  std::size_t max_connections = 512;
  // Bytes the server buffers for requests in flight, all clients together. A
  // request over 64 KiB reserves its announced length first; one that does
  // not fit gets a MessageTooLarge error reply naming both figures and its
  // connection ends, so stalled clients cost the server at most this.
  std::uint64_t max_buffered_bytes = std::uint64_t{256} << 20;
  // Connections still in their handshake, counted apart from the above: at
  // most this many (the oldest is dropped for a newcomer), each dropped after
  // handshake_deadline. Silent peers never crowd out authenticated clients.
  std::size_t max_unauthenticated = 32;
  std::chrono::milliseconds handshake_deadline{3000};
};

class Manager {
 public:
  Manager();
  explicit Manager(ManagerOptions options);
  Manager(Manager&&) noexcept;
  Manager& operator=(Manager&&) noexcept;
  Manager(const Manager&) = delete;
  Manager& operator=(const Manager&) = delete;
  ~Manager();  // shutdown()

  // Forks a server process (fork start method, so registered types are
  // there); it dies with this process (PR_SET_PDEATHSIG: start it from a
  // long-lived thread). Register types before start().
  void start();
  // Uses a server already listening at options.address (checked by a ping).
  void connect();
  // Serves in this process until a client calls stop_server() (then
  // returns). ready(address) runs once listening (a TCP port 0 resolved).
  void serve_forever(const std::function<void(const Address&)>& ready = {});
  // Stops the server this manager started (and waits for it); for a
  // connected manager, only drops this manager's own connections.
  void shutdown();
  // Asks the server to stop, whoever started it.
  void stop_server();
  bool running() const noexcept { return state_ != State::idle; }
  const Address& address() const noexcept { return address_; }
  const std::string& authkey() const noexcept { return authkey_; }
  // The server process started by start() (0 otherwise), as Python's
  // manager._process.pid: for monitoring it (memory, fds).
  pid_t server_pid() const noexcept;
  // The server process started by start(), if any.
  Process* server_process() noexcept { return server_.get(); }

  // ---- objects: anonymous, or named ("get or create" by name) -----------
  template <class K, class V>
  DictProxy<K, V> dict(std::string_view name = {}) {
    return DictProxy<K, V>(make("dict", name, detail::type_sig<K, V>(), {}));
  }
  template <class T>
  ListProxy<T> list(std::string_view name = {}) {
    return ListProxy<T>(make("list", name, detail::type_sig<T>(), {}));
  }
  template <class T>
  SetProxy<T> set(std::string_view name = {}) {
    return SetProxy<T>(make("set", name, detail::type_sig<T>(), {}));
  }
  template <class T>
  ValueProxy<T> value(const T& initial = T{}, std::string_view name = {}) {
    Bytes init;
    detail::wire::put_value(init, initial);
    return ValueProxy<T>(make("value", name, detail::type_sig<T>(), init));
  }
  // maxsize 0: unbounded.
  template <class T>
  QueueProxy<T> queue(std::size_t maxsize = 0, std::string_view name = {}) {
    Bytes init;
    detail::wire::put_u64(init, maxsize);
    return QueueProxy<T>(make("queue", name, detail::type_sig<T>(), init));
  }
  LockProxy lock(std::string_view name = {}) { return LockProxy(make("lock", name, "", {})); }
  EventProxy event(std::string_view name = {}) { return EventProxy(make("event", name, "", {})); }
  BarrierProxy barrier(std::size_t parties, std::string_view name = {}) {
    Bytes init;
    detail::wire::put_u64(init, parties);
    return BarrierProxy(make("barrier", name, "", init));
  }
  NamespaceProxy namespace_(std::string_view name = {}) { return NamespaceProxy(make("namespace", name, "", {})); }

  // ---- user classes (Python's register) ---------------------------------
  // Serves T through a table of named methods; T must be default-constructible.
  // Register in the server program and in every client, before start().
  template <class T, class... M>
  void register_type(std::string type_name, M... methods) {
    static_assert(std::is_default_constructible_v<T>, "mproc::Manager::register_type: T must be default-constructible");
    auto table = std::make_shared<detail::MethodTable<T>>();
    (table->emplace(methods.name, std::move(methods)), ...);
    std::shared_ptr<const detail::MethodTable<T>> ct = table;
    (*types_)[type_name] = [ct, type_name]() -> std::unique_ptr<detail::Servant> {
      auto s = std::make_unique<detail::UserServant<T>>(ct);
      s->sig = type_name;
      return s;
    };
  }
  // An instance of a registered type on the server.
  template <class T>
  ObjectProxy<T> create(std::string_view type_name, std::string_view name = {}) {
    return ObjectProxy<T>(make("user", name, type_name, {}));
  }

  // Drops the server's object (its other proxies then get RemoteError).
  void release(const detail::ProxyBase& proxy);
  // How many objects the server holds.
  std::size_t object_count();

 private:
  enum class State { idle, started, connected, serving };
  detail::ProxyBase make(std::string_view kind, std::string_view name, std::string_view sig, const Bytes& init);
  void require_running(const char* op) const;

  ManagerOptions options_;
  Address address_;
  std::string authkey_;
  State state_ = State::idle;
  std::shared_ptr<detail::TypeRegistry> types_;
  std::unique_ptr<Process> server_;
  detail::ProxyBase root_;  // object 0: the server itself
};

}  // namespace mproc
