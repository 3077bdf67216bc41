// The Manager's wire protocol, as one table per object kind (CPython's
// managers.py builds its proxies from one list of method names; this table
// also gives every argument's and result's wire type).
//
//   using LockProtocol = Protocol<"lock", None,            // kind, creation data
//       Op<"acquire", bool(Wait)>,                          // method 0
//       Op<"release", void()>,                              // method 1
//       Op<"locked", bool()>>;                              // method 2
//
// The client encodes a call from its table entry (ProxyOf::invoke<"acquire">,
// manager_proxies.hpp); the server decodes it and dispatches to the servant's
// on(Tag<"acquire">, ...) through the same entry (src/manager/manager_dispatch.hpp).
// A name missing from the table, a wrong argument count or type, a servant
// without a handler: compile errors. On the wire a method is its index in the
// table (u16); an index past the table gets a ValueError reply. Each table
// has a fingerprint (kind, names, wire types) that a "create" carries, so a
// client and server built from different tables refuse each other's objects
// instead of misreading them. Adding a method: one Op line here, one handler
// in the servant, one proxy member that calls invoke<"name">.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <type_traits>

namespace mproc::detail::proto {

// A string usable as a template argument: Op<"set", ...>.
template <std::size_t N>
struct Name {
  char text[N]{};
  constexpr Name(const char (&s)[N]) {  // NOLINT: implicit by design
    for (std::size_t i = 0; i < N; ++i) text[i] = s[i];  // (not std::copy_n: <algorithm> costs ~9k lines)
  }
  constexpr std::string_view view() const { return {text, N - 1}; }
};

// ---- wire types: what an argument or a result is on the wire ---------------
// The client maps each to a C++ type (Key/Val to the proxy's K/V or T); the
// server sees the serialized bytes only.
struct None {};     // nothing (a kind's creation data when it takes none)
struct Key {};      // a serialized K; the server compares keys as bytes
struct Val {};      // a serialized V (or the element type T)
struct Blob {};     // bytes the client serialized itself (Namespace values)
struct Str {};      // a string the server reads (names, type names)
struct Wait {};     // block flag + timeout: the server waits until a deadline
struct Seconds {};  // a timeout (negative: forever)
struct Owner {};    // the calling thread's identity (RLock, Condition)
struct Rest {};     // all bytes left (a user object's arguments); last only
template <class W>
struct Maybe {};  // u8 present, then W
template <class W>
struct Many {};  // u64 count, then that many W
template <class A, class B>
struct Pair {};
// Plain scalars travel as themselves: bool (u8), std::uint64_t, std::int64_t.

template <class... T>
struct Types {};

// One method: its name and signature in wire types.
template <Name N, class Sig>
struct Op;
template <Name N, class R, class... A>
struct Op<N, R(A...)> {
  static constexpr Name id = N;
  static constexpr std::string_view name = N.view();
  using result = R;
  using args = Types<A...>;
};

// ---- fingerprints ------------------------------------------------------------
constexpr std::uint64_t mix(std::uint64_t h, std::string_view s) {
  for (char c : s) {
    h ^= static_cast<unsigned char>(c);
    h *= 1099511628211ull;  // FNV-1a
  }
  return h;
}
template <class W>
struct WireHash;
#define MPROC_WIRE_HASH(T, tag) \
  template <>                   \
  struct WireHash<T> {          \
    static constexpr std::uint64_t of(std::uint64_t h) { return mix(h, tag); } \
  }
MPROC_WIRE_HASH(void, "v");
MPROC_WIRE_HASH(None, "n");
MPROC_WIRE_HASH(Key, "K");
MPROC_WIRE_HASH(Val, "V");
MPROC_WIRE_HASH(Blob, "B");
MPROC_WIRE_HASH(Str, "S");
MPROC_WIRE_HASH(Wait, "W");
MPROC_WIRE_HASH(Seconds, "T");
MPROC_WIRE_HASH(Owner, "O");
MPROC_WIRE_HASH(Rest, "R");
MPROC_WIRE_HASH(bool, "b");
MPROC_WIRE_HASH(std::uint64_t, "u");
MPROC_WIRE_HASH(std::int64_t, "i");
#undef MPROC_WIRE_HASH
template <class W>
struct WireHash<Maybe<W>> {
  static constexpr std::uint64_t of(std::uint64_t h) { return mix(WireHash<W>::of(mix(h, "?(")), ")"); }
};
template <class W>
struct WireHash<Many<W>> {
  static constexpr std::uint64_t of(std::uint64_t h) { return mix(WireHash<W>::of(mix(h, "*(")), ")"); }
};
template <class A, class B>
struct WireHash<Pair<A, B>> {
  static constexpr std::uint64_t of(std::uint64_t h) {
    return mix(WireHash<B>::of(mix(WireHash<A>::of(mix(h, "(")), ",")), ")");
  }
};
template <class O>
constexpr std::uint64_t op_hash(std::uint64_t h) {
  h = WireHash<typename O::result>::of(mix(mix(h, O::name), "("));
  return [h]<class... A>(Types<A...>) {
    std::uint64_t x = h;
    ((x = WireHash<A>::of(mix(x, ","))), ...);
    return mix(x, ");");
  }(typename O::args{});
}

// ---- the table ---------------------------------------------------------------
template <Name Kind, class InitW, class... Ops>
struct Protocol {
  static constexpr std::string_view kind = Kind.view();
  using init = InitW;  // the wire type of the creation data
  using ops = Types<Ops...>;
  static constexpr std::size_t size = sizeof...(Ops);
  static constexpr std::array<std::string_view, size> names{Ops::name...};
  static constexpr std::uint64_t fingerprint = [] {
    std::uint64_t h = WireHash<InitW>::of(mix(14695981039346656037ull, Kind.view()));
    ((h = op_hash<Ops>(h)), ...);
    return h;
  }();
  static constexpr std::size_t find(std::string_view n) {
    for (std::size_t i = 0; i < size; ++i)
      if (names[i] == n) return i;
    return size;
  }
  static_assert(size < 65536, "mproc: a method index travels as a u16");
  static_assert(
      [] {
        for (std::size_t i = 0; i < size; ++i)
          for (std::size_t j = i + 1; j < size; ++j)
            if (names[i] == names[j]) return false;
        return true;
      }(),
      "mproc: a protocol names a method twice");
};

template <std::size_t I, class... T>
struct Nth;
template <class T0, class... T>
struct Nth<0, T0, T...> {
  using type = T0;
};
template <std::size_t I, class T0, class... T>
struct Nth<I, T0, T...> {
  using type = typename Nth<I - 1, T...>::type;
};
template <class P, std::size_t I>
struct OpAtImpl;
template <Name K, class InitW, class... Ops, std::size_t I>
struct OpAtImpl<Protocol<K, InitW, Ops...>, I> {
  using type = typename Nth<I, Ops...>::type;
};
template <class P, std::size_t I>
using OpAt = typename OpAtImpl<P, I>::type;

// A protocol with more methods after Base's (Base's indices unchanged).
template <Name Kind, class Base, class... More>
struct ExtendImpl;
template <Name Kind, Name K0, class InitW, class... Ops, class... More>
struct ExtendImpl<Kind, Protocol<K0, InitW, Ops...>, More...> {
  using type = Protocol<Kind, InitW, Ops..., More...>;
};
template <Name Kind, class Base, class... More>
using Extend = typename ExtendImpl<Kind, Base, More...>::type;

// The servant's handler for method N: on(Tag<"set">, call, args...).
template <Name N>
struct Tag {};

// ---- the tables ----------------------------------------------------------------
// Object 0: the server itself. create's Rest is the kind's creation data.
using ServerProtocol = Protocol<"server", None,
    Op<"create", std::uint64_t(Str /*kind*/, std::uint64_t /*fingerprint*/, Str /*name*/, Str /*types*/, Rest)>,
    Op<"release", bool(std::uint64_t /*object id*/)>,
    Op<"count", std::uint64_t()>,
    Op<"ping", void()>,
    Op<"shutdown", void()>>;

using DictProtocol = Protocol<"dict", Many<Pair<Key, Val>>,
    Op<"set", void(Key, Val)>,
    Op<"get", Maybe<Val>(Key)>,
    Op<"contains", bool(Key)>,
    Op<"del", bool(Key)>,
    Op<"pop", Maybe<Val>(Key)>,
    Op<"setdefault", Val(Key, Val)>,
    Op<"len", std::uint64_t()>,
    Op<"clear", void()>,
    Op<"update", void(Many<Pair<Key, Val>>)>,
    Op<"items", Many<Pair<Key, Val>>()>,
    Op<"keys", Many<Key>()>,
    Op<"values", Many<Val>()>,
    Op<"get_many", Many<Maybe<Val>>(Many<Key>)>>;

// Python's Array: a list of fixed length.
using ArrayProtocol = Protocol<"array", Many<Val>,
    Op<"len", std::uint64_t()>,
    Op<"get", Val(std::int64_t)>,
    Op<"set", void(std::int64_t, Val)>,
    Op<"slice", Many<Val>(Maybe<std::int64_t>, Maybe<std::int64_t>)>>;

using ListProtocol = Extend<"list", ArrayProtocol,
    Op<"append", void(Val)>,
    Op<"extend", void(Many<Val>)>,
    Op<"pop", Val(std::int64_t)>,
    Op<"insert", void(std::int64_t, Val)>,
    Op<"remove", void(Val)>,
    Op<"index", std::uint64_t(Val)>,
    Op<"count", std::uint64_t(Val)>,
    Op<"clear", void()>>;

using SetProtocol = Protocol<"set", Many<Val>,
    Op<"add", bool(Val)>,
    Op<"discard", bool(Val)>,
    Op<"contains", bool(Val)>,
    Op<"len", std::uint64_t()>,
    Op<"clear", void()>,
    Op<"items", Many<Val>()>,
    Op<"update", void(Many<Val>)>>;

using ValueProtocol = Protocol<"value", Val,
    Op<"get", Val()>,
    Op<"set", void(Val)>>;

// Creation data: maxsize (0: unbounded).
using QueueProtocol = Protocol<"queue", std::uint64_t,
    Op<"put", void(Wait, Val)>,
    Op<"put_many", void(Wait, Many<Val>)>,
    Op<"get", Val(Wait)>,
    Op<"get_many", Many<Val>(std::uint64_t /*max items*/, Wait)>,
    Op<"qsize", std::uint64_t()>,
    Op<"full", bool()>>;

using JoinableQueueProtocol = Extend<"joinable_queue", QueueProtocol,
    Op<"task_done", void()>,
    Op<"join", bool(Seconds)>>;

using LockProtocol = Protocol<"lock", None,
    Op<"acquire", bool(Wait)>,
    Op<"release", void()>,
    Op<"locked", bool()>>;

using RLockProtocol = Protocol<"rlock", None,
    Op<"acquire", bool(Owner, Wait)>,
    Op<"release", void(Owner)>,
    Op<"locked", bool()>>;

// Creation data: (initial value, bounded).
using SemaphoreProtocol = Protocol<"semaphore", Pair<std::uint64_t, bool>,
    Op<"acquire", bool(Wait)>,
    Op<"release", void(std::uint64_t)>,
    Op<"get_value", std::uint64_t()>>;

// A condition variable with its own recursive lock (Python's default).
using ConditionProtocol = Extend<"condition", RLockProtocol,
    Op<"wait", bool(Owner, Seconds)>,
    Op<"notify", void(Owner, std::uint64_t)>,
    Op<"notify_all", void(Owner)>>;

using EventProtocol = Protocol<"event", None,
    Op<"set", void()>,
    Op<"clear", void()>,
    Op<"is_set", bool()>,
    Op<"wait", bool(Seconds)>>;

// Creation data: parties.
using BarrierProtocol = Protocol<"barrier", std::uint64_t,
    Op<"wait", std::uint64_t(Seconds)>,
    Op<"abort", void()>,
    Op<"reset", void()>,
    Op<"parties", std::uint64_t()>,
    Op<"n_waiting", std::uint64_t()>,
    Op<"broken", bool()>>;

// Values with their type's mangled name (checked by the client on get).
using NamespaceProtocol = Protocol<"namespace", None,
    Op<"set", void(Str /*name*/, Str /*type*/, Blob)>,
    Op<"get", Pair<Str, Blob>(Str)>,
    Op<"has", bool(Str)>,
    Op<"del", bool(Str)>,
    Op<"names", Many<Str>()>>;

// A registered user type: its own method table goes by name (register_type).
using UserProtocol = Protocol<"user", None,
    Op<"call", Rest(Str /*method*/, Str /*argument types*/, Rest /*arguments*/)>>;

}  // namespace mproc::detail::proto
