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
// - Every kind's methods, with their argument and result types, are one
//   table (detail/manager_protocol.hpp) from which both its proxy
//   (manager_proxies.hpp, manager_sync_proxies.hpp) and its servant are
//   built: they cannot drift, and adding a method is one line in the table.
#pragma once
#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <vector>

#include "mproc/detail/manager_client.hpp"
#include "mproc/errors.hpp"
#include "mproc/listener.hpp"
#include "mproc/manager_proxies.hpp"
#include "mproc/manager_sync_proxies.hpp"
#include "mproc/process.hpp"
#include "mproc/timeout.hpp"
#include "mproc/detail/codec.hpp"
#include "mproc/detail/owned.hpp"

namespace mproc {

namespace detail {

template <class... T>
std::string type_sig() {
  std::string s;
  ((s += typeid(T).name(), s += ','), ...);
  return s;
}

// ---- user classes (register_type) -------------------------------------------
// A registered class's methods and instances, with their types erased so
// that the server (src/manager/) serves them without templates: it finds a
// method by name, checks the argument types and calls invoke.
struct UserMethod {
  std::string name;
  std::string arg_sig;   // mangled name of std::tuple<decayed argument types>
  std::string arg_desc;  // the same, readable (for the error a mismatch gets)
  // Decodes the arguments from in, calls the member function kept in
  // member_bytes on obj (a T*), appends the serialized result to out.
  void (*invoke)(const UserMethod& self, void* obj, std::span<const std::byte> in, Bytes& out) = nullptr;
  // The member function pointer, as bytes (it is trivially copyable; its
  // size is the same for every class under the Itanium C++ ABI).
  alignas(void*) unsigned char member_bytes[2 * sizeof(void*)]{};
};

// A method of T (mproc::method's result): register_type<T> takes only T's.
template <class T>
struct Method : UserMethod {};

// A registered class: how to make and destroy an instance, and its methods.
struct UserType {
  std::string name;
  void* (*make)() = nullptr;
  void (*destroy)(void* obj) noexcept = nullptr;
  std::vector<UserMethod> methods;  // a name given twice: the first one serves
};

struct TypeRegistry;  // src/manager/: the registered UserTypes by name

template <class... A>
std::string arg_desc() {
  std::string s;
  ((s += (s.empty() ? "" : ", "), s += demangle(typeid(A).name())), ...);
  return s;
}

// obj.*pm(args...). Not checked by -fsanitize=vptr: GCC 12 checks the
// `this` of a call through a pointer to a base class's member (converted to
// T's, as `method("sum", &Square::sum)` with `sum` from a second base) AFTER
// the base adjustment, against T, and reports a valid call as "does not
// point to an object of type T" (reproduced without mproc; clang does not).
template <class T, class PM, class... Args>
__attribute__((no_sanitize("vptr"))) decltype(auto) call_member(T& obj, PM pm, Args&&... args) {
  return (obj.*pm)(std::forward<Args>(args)...);
}

template <class T, class R, class... A, class PM>
Method<T> make_method(std::string name, PM pm) {
  static_assert((is_serializable_v<std::decay_t<A>> && ...), "mproc::method: arguments must be serializable");
  static_assert(std::is_void_v<R> || is_serializable_v<std::decay_t<R>>, "mproc::method: result must be serializable");
  static_assert(sizeof(PM) <= sizeof(UserMethod::member_bytes) && std::is_trivially_copyable_v<PM>);
  Method<T> m;
  m.name = std::move(name);
  m.arg_sig = typeid(std::tuple<std::decay_t<A>...>).name();
  m.arg_desc = arg_desc<std::decay_t<A>...>();
  std::memcpy(m.member_bytes, &pm, sizeof pm);
  m.invoke = [](const UserMethod& self, void* obj_ptr, std::span<const std::byte> in, Bytes& out) {
    PM member{};
    std::memcpy(&member, self.member_bytes, sizeof member);
    T& obj = *static_cast<T*>(obj_ptr);
    auto args = from_bytes<std::tuple<std::decay_t<A>...>>(in);
    if constexpr (std::is_void_v<R>) {
      std::apply([&](auto&... a) { call_member(obj, member, std::move(a)...); }, args);
    } else {
      serialize_into(
          out, std::apply([&](auto&... a) -> decltype(auto) { return call_member(obj, member, std::move(a)...); }, args));
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
  // handshake_deadline (any duration, `3s`; empty is a ValueError at
  // start()/serve_forever()). Silent peers never crowd out authenticated clients.
  std::size_t max_unauthenticated = 32;
  Timeout handshake_deadline = Timeout::from_nanoseconds(3'000'000'000);
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
  void serve_forever() { serve_with(nullptr, nullptr); }
  template <class F>
    requires std::is_invocable_v<F&, const Address&>
  void serve_forever(F&& ready) {
    using Fn = std::remove_cvref_t<F>;
    // An empty function pointer or std::function (which has result_type)
    // is no callback, as the std::function this took used to be.
    if constexpr (std::is_pointer_v<Fn> || requires(const Fn& f) {
                    typename Fn::result_type;
                    static_cast<bool>(f);
                  }) {
      if (!static_cast<bool>(ready)) return serve_forever();
    }
    serve_with([](void* f, const Address& a) { (*static_cast<std::remove_reference_t<F>*>(f))(a); },
               static_cast<void*>(&ready));
  }
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
  // Initial contents apply when the object is made, not when a named one
  // already exists.
  template <class K, class V>
  DictProxy<K, V> dict(std::string_view name = {}) {
    return dict<K, V>(std::initializer_list<std::pair<K, V>>{}, name);
  }
  template <class K, class V>
  DictProxy<K, V> dict(std::initializer_list<std::pair<K, V>> init, std::string_view name = {}) {
    return make_typed<DictProxy<K, V>>(name, detail::type_sig<K, V>(), init);
  }
  template <class T>
  ListProxy<T> list(std::string_view name = {}) {
    return list<T>(std::initializer_list<T>{}, name);
  }
  template <class T>
  ListProxy<T> list(std::initializer_list<T> init, std::string_view name = {}) {
    return make_typed<ListProxy<T>>(name, detail::type_sig<T>(), init);
  }
  // Python's Manager().Array(typecode, sequence): fixed length.
  template <class T>
  ArrayProxy<T> array(std::initializer_list<T> init, std::string_view name = {}) {
    return make_typed<ArrayProxy<T>>(name, detail::type_sig<T>(), init);
  }
  template <class T>
  ArrayProxy<T> array(const std::vector<T>& init, std::string_view name = {}) {
    return make_typed<ArrayProxy<T>>(name, detail::type_sig<T>(), init);
  }
  template <class T>
  ArrayProxy<T> array(std::size_t size, const T& fill = T{}, std::string_view name = {}) {
    return array<T>(std::vector<T>(size, fill), name);
  }
  template <class T>
  SetProxy<T> set(std::string_view name = {}) {
    return make_typed<SetProxy<T>>(name, detail::type_sig<T>(), std::initializer_list<T>{});
  }
  template <class T>
  ValueProxy<T> value(const T& initial = T{}, std::string_view name = {}) {
    return make_typed<ValueProxy<T>>(name, detail::type_sig<T>(), initial);
  }
  // maxsize 0: unbounded.
  template <class T>
  QueueProxy<T> queue(std::size_t maxsize = 0, std::string_view name = {}) {
    return make_typed<QueueProxy<T>>(name, detail::type_sig<T>(), std::uint64_t{maxsize});
  }
  template <class T>
  JoinableQueueProxy<T> joinable_queue(std::size_t maxsize = 0, std::string_view name = {}) {
    return make_typed<JoinableQueueProxy<T>>(name, detail::type_sig<T>(), std::uint64_t{maxsize});
  }
  LockProxy lock(std::string_view name = {}) { return make_typed<LockProxy>(name, "", detail::proto::None{}); }
  RLockProxy rlock(std::string_view name = {}) { return make_typed<RLockProxy>(name, "", detail::proto::None{}); }
  SemaphoreProxy semaphore(std::size_t value = 1, std::string_view name = {}) {
    return make_typed<SemaphoreProxy>(name, "", std::pair<std::uint64_t, bool>(value, false));
  }
  // release() past the initial value: ValueError.
  BoundedSemaphoreProxy bounded_semaphore(std::size_t value = 1, std::string_view name = {}) {
    return make_typed<BoundedSemaphoreProxy>(name, "", std::pair<std::uint64_t, bool>(value, true));
  }
  ConditionProxy condition(std::string_view name = {}) {
    return make_typed<ConditionProxy>(name, "", detail::proto::None{});
  }
  EventProxy event(std::string_view name = {}) { return make_typed<EventProxy>(name, "", detail::proto::None{}); }
  BarrierProxy barrier(std::size_t parties, std::string_view name = {}) {
    return make_typed<BarrierProxy>(name, "", std::uint64_t{parties});
  }
  NamespaceProxy namespace_(std::string_view name = {}) {
    return make_typed<NamespaceProxy>(name, "", detail::proto::None{});
  }

  // ---- user classes (Python's register) ---------------------------------
  // Serves T through a table of named methods; T must be default-constructible.
  // Register in the server program and in every client, before start().
  template <class T, class... M>
  void register_type(std::string type_name, M... methods) {
    static_assert(std::is_default_constructible_v<T>, "mproc::Manager::register_type: T must be default-constructible");
    static_assert((std::is_same_v<M, detail::Method<T>> && ...),
                  "mproc::Manager::register_type: methods must be mproc::method(name, &T::member)");
    detail::UserType type;
    type.name = std::move(type_name);
    type.make = []() -> void* { return new T{}; };
    type.destroy = [](void* obj) noexcept { delete static_cast<T*>(obj); };
    type.methods.reserve(sizeof...(M));
    (type.methods.push_back(std::move(methods)), ...);
    add_type(std::move(type));
  }
  // An instance of a registered type on the server.
  template <class T>
  ObjectProxy<T> create(std::string_view type_name, std::string_view name = {}) {
    return make_typed<ObjectProxy<T>>(name, type_name, detail::proto::None{});
  }

  // Drops the server's object (its other proxies then get RemoteError).
  void release(const detail::ProxyBase& proxy);
  // How many objects the server holds.
  std::size_t object_count();

 private:
  enum class State { idle, started, connected, serving };
  // A proxy of type Proxy for a new (or the named) object, made with init
  // encoded as its protocol's creation data.
  template <class Proxy, class Init>
  Proxy make_typed(std::string_view name, std::string_view sig, const Init& init) {
    using P = typename Proxy::protocol;
    Bytes data;
    detail::Codec<typename P::init, typename Proxy::binding>::put(data, init);
    return Proxy(make(P::kind, P::fingerprint, name, sig, data));
  }
  detail::ProxyBase make(std::string_view kind, std::uint64_t fingerprint, std::string_view name,
                         std::string_view sig, const Bytes& init);
  void require_running(const char* op) const;
  void add_type(detail::UserType type);
  // serve_forever with ready(context, address) (null: none).
  void serve_with(void (*ready)(void* context, const Address& address), void* context);

  ManagerOptions options_;
  Address address_;
  std::string authkey_;
  State state_ = State::idle;
  detail::Owned<detail::TypeRegistry> types_;
  detail::Owned<Process> server_;
  detail::ServerProxy root_;  // object 0: the server itself
};

}  // namespace mproc
