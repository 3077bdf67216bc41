// Typed proxies of mproc::Manager (part of managers.hpp: include that).
// Each method is one round trip; the batched ones (update, items, extend,
// slice, get_many, put_many) move any number of elements in one.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <typeinfo>
#include <utility>
#include <vector>

#ifndef MPROC_MANAGER_PROXIES_FROM_MANAGERS_HPP
#error "include mproc/managers.hpp, not mproc/manager_proxies.hpp"
#endif

namespace mproc {

namespace detail {
template <class T>
std::vector<T> read_values(wire::Reader r) {
  std::vector<T> out;
  const std::uint64_t n = r.u64();
  out.reserve(static_cast<std::size_t>(std::min<std::uint64_t>(n, r.left() / 8)));
  for (std::uint64_t i = 0; i < n; ++i) out.push_back(r.template value<T>());
  return out;
}
// Appends a count and the values of a range (the count patched afterwards).
template <class Range>
void put_values(Bytes& b, const Range& values) {
  const std::size_t at = b.size();
  wire::put_u64(b, 0);
  std::uint64_t n = 0;
  for (const auto& v : values) {
    wire::put_value(b, v);
    ++n;
  }
  std::memcpy(b.data() + at, &n, 8);
}
inline void put_index(Bytes& b, std::int64_t i) { wire::put_u64(b, static_cast<std::uint64_t>(i)); }
inline void put_opt_index(Bytes& b, std::optional<std::int64_t> i) {
  wire::put_u8(b, i ? 1 : 0);
  put_index(b, i.value_or(0));
}
}  // namespace detail

// Python's DictProxy: insertion-ordered; keys compare by their serialized bytes.
template <class K, class V>
class DictProxy : public detail::ProxyBase {
 public:
  DictProxy() = default;
  explicit DictProxy(detail::ProxyBase base) : ProxyBase(std::move(base)) {}

  void set(const K& key, const V& value) const {
    Bytes r = request("set");
    detail::wire::put_value(r, key);
    detail::wire::put_value(r, value);
    call(std::move(r));
  }
  std::optional<V> get(const K& key) const {
    Bytes r = request("get");
    detail::wire::put_value(r, key);
    auto res = call(std::move(r));
    auto rd = res.reader();
    if (rd.u8() == 0) return std::nullopt;
    return rd.template value<V>();
  }
  V get(const K& key, const V& fallback) const {
    auto v = get(key);
    return v ? std::move(*v) : fallback;
  }
  // Python's d[key]: KeyError when missing.
  V at(const K& key) const {
    auto v = get(key);
    if (!v) throw KeyError("mproc::DictProxy::at: key not found");
    return std::move(*v);
  }
  bool contains(const K& key) const { return key_call("contains", key); }
  // Python's del d[key]; tells whether the key was there.
  bool erase(const K& key) const { return key_call("del", key); }
  std::optional<V> pop(const K& key) const {
    Bytes r = request("pop");
    detail::wire::put_value(r, key);
    auto res = call(std::move(r));
    auto rd = res.reader();
    if (rd.u8() == 0) return std::nullopt;
    return rd.template value<V>();
  }
  V setdefault(const K& key, const V& value) const {
    Bytes r = request("setdefault");
    detail::wire::put_value(r, key);
    detail::wire::put_value(r, value);
    return call(std::move(r)).reader().template value<V>();
  }
  std::size_t size() const { return detail::reply_u64(call(request("len"))); }
  void clear() const { call(request("clear")); }
  // One round trip for any number of (key, value) pairs (a map, a vector of pairs...).
  template <class Range>
  void update(const Range& items) const {
    Bytes r = request("update");
    const std::size_t at = r.size();
    detail::wire::put_u64(r, 0);
    std::uint64_t n = 0;
    for (const auto& [k, v] : items) {
      detail::wire::put_value(r, static_cast<const K&>(k));
      detail::wire::put_value(r, static_cast<const V&>(v));
      ++n;
    }
    std::memcpy(r.data() + at, &n, 8);
    call(std::move(r));
  }
  std::vector<std::pair<K, V>> items() const {
    auto res = call(request("items"));
    auto rd = res.reader();
    std::vector<std::pair<K, V>> out;
    const std::uint64_t n = rd.u64();
    out.reserve(static_cast<std::size_t>(std::min<std::uint64_t>(n, rd.left() / 16)));
    for (std::uint64_t i = 0; i < n; ++i) {
      K k = rd.template value<K>();
      out.emplace_back(std::move(k), rd.template value<V>());
    }
    return out;
  }
  std::vector<K> keys() const { return detail::read_values<K>(call(request("keys")).reader()); }
  std::vector<V> values() const { return detail::read_values<V>(call(request("values")).reader()); }
  // Many lookups in one round trip.
  std::vector<std::optional<V>> get_many(const std::vector<K>& keys) const {
    Bytes r = request("get_many");
    detail::put_values(r, keys);
    auto res = call(std::move(r));
    auto rd = res.reader();
    std::vector<std::optional<V>> out;
    const std::uint64_t n = rd.u64();
    for (std::uint64_t i = 0; i < n; ++i) {
      if (rd.u8() == 0) out.emplace_back();
      else out.emplace_back(rd.template value<V>());
    }
    return out;
  }

 private:
  bool key_call(std::string_view m, const K& key) const {
    Bytes r = request(m);
    detail::wire::put_value(r, key);
    return detail::reply_bool(call(std::move(r)));
  }
};

// Python's ListProxy. Indices may be negative (from the end); slices clamp.
template <class T>
class ListProxy : public detail::ProxyBase {
 public:
  ListProxy() = default;
  explicit ListProxy(detail::ProxyBase base) : ProxyBase(std::move(base)) {}

  void append(const T& v) const {
    Bytes r = request("append");
    detail::wire::put_value(r, v);
    call(std::move(r));
  }
  template <class Range>
  void extend(const Range& values) const {
    Bytes r = request("extend");
    detail::put_values(r, values);
    call(std::move(r));
  }
  // IndexError past either end.
  T get(std::int64_t i) const {
    Bytes r = request("get");
    detail::put_index(r, i);
    return call(std::move(r)).reader().template value<T>();
  }
  void set(std::int64_t i, const T& v) const {
    Bytes r = request("set");
    detail::put_index(r, i);
    detail::wire::put_value(r, v);
    call(std::move(r));
  }
  // Python's l[start:stop] (nullopt: from the start / to the end).
  std::vector<T> slice(std::optional<std::int64_t> start, std::optional<std::int64_t> stop) const {
    Bytes r = request("slice");
    detail::put_opt_index(r, start);
    detail::put_opt_index(r, stop);
    return detail::read_values<T>(call(std::move(r)).reader());
  }
  std::vector<T> tolist() const { return slice(std::nullopt, std::nullopt); }
  std::size_t size() const { return detail::reply_u64(call(request("len"))); }
  T pop(std::int64_t i = -1) const {
    Bytes r = request("pop");
    detail::put_index(r, i);
    return call(std::move(r)).reader().template value<T>();
  }
  void insert(std::int64_t i, const T& v) const {
    Bytes r = request("insert");
    detail::put_index(r, i);
    detail::wire::put_value(r, v);
    call(std::move(r));
  }
  // The first equal element (by serialized bytes); ValueError if none (as Python).
  void remove(const T& v) const { value_call("remove", v); }
  std::size_t index(const T& v) const { return detail::reply_u64(value_call("index", v)); }
  std::size_t count(const T& v) const { return detail::reply_u64(value_call("count", v)); }
  void clear() const { call(request("clear")); }

 private:
  detail::CallResult value_call(std::string_view m, const T& v) const {
    Bytes r = request(m);
    detail::wire::put_value(r, v);
    return call(std::move(r));
  }
};

// A set of T (elements compare by their serialized bytes; no order).
template <class T>
class SetProxy : public detail::ProxyBase {
 public:
  SetProxy() = default;
  explicit SetProxy(detail::ProxyBase base) : ProxyBase(std::move(base)) {}

  // True when v was not there yet.
  bool add(const T& v) const { return value_call("add", v); }
  // True when v was there.
  bool discard(const T& v) const { return value_call("discard", v); }
  // KeyError when v is not there.
  void remove(const T& v) const {
    if (!discard(v)) throw KeyError("mproc::SetProxy::remove: element not found");
  }
  bool contains(const T& v) const { return value_call("contains", v); }
  std::size_t size() const { return detail::reply_u64(call(request("len"))); }
  void clear() const { call(request("clear")); }
  std::vector<T> items() const { return detail::read_values<T>(call(request("items")).reader()); }
  template <class Range>
  void update(const Range& values) const {
    Bytes r = request("update");
    detail::put_values(r, values);
    call(std::move(r));
  }

 private:
  bool value_call(std::string_view m, const T& v) const {
    Bytes r = request(m);
    detail::wire::put_value(r, v);
    return detail::reply_bool(call(std::move(r)));
  }
};

// Python's Manager().Value: one shared value.
template <class T>
class ValueProxy : public detail::ProxyBase {
 public:
  ValueProxy() = default;
  explicit ValueProxy(detail::ProxyBase base) : ProxyBase(std::move(base)) {}
  T get() const { return call(request("get")).reader().template value<T>(); }
  void set(const T& v) const {
    Bytes r = request("set");
    detail::wire::put_value(r, v);
    call(std::move(r));
  }
};

// Python's Manager().Queue (queue.Queue semantics: Empty / Full on timeout).
template <class T>
class QueueProxy : public detail::ProxyBase {
 public:
  QueueProxy() = default;
  explicit QueueProxy(detail::ProxyBase base) : ProxyBase(std::move(base)) {}

  void put(const T& v, bool block = true, Timeout timeout = std::nullopt) const {
    Bytes r = request("put");
    detail::wire::put_u8(r, block ? 1 : 0);
    detail::wire::put_timeout(r, timeout);
    detail::wire::put_value(r, v);
    call(std::move(r));
  }
  void put_nowait(const T& v) const { put(v, false); }
  T get(bool block = true, Timeout timeout = std::nullopt) const {
    Bytes r = request("get");
    detail::wire::put_u8(r, block ? 1 : 0);
    detail::wire::put_timeout(r, timeout);
    return call(std::move(r)).reader().template value<T>();
  }
  T get_nowait() const { return get(false); }
  // Puts every value in one round trip (waiting for room as put does).
  template <class Range>
  void put_many(const Range& values, bool block = true, Timeout timeout = std::nullopt) const {
    Bytes r = request("put_many");
    detail::wire::put_u8(r, block ? 1 : 0);
    detail::wire::put_timeout(r, timeout);
    detail::put_values(r, values);
    call(std::move(r));
  }
  // Up to max_items values; waits (as get) for the first one only.
  std::vector<T> get_many(std::size_t max_items, bool block = true, Timeout timeout = std::nullopt) const {
    Bytes r = request("get_many");
    detail::wire::put_u64(r, max_items);
    detail::wire::put_u8(r, block ? 1 : 0);
    detail::wire::put_timeout(r, timeout);
    return detail::read_values<T>(call(std::move(r)).reader());
  }
  std::size_t qsize() const { return detail::reply_u64(call(request("qsize"))); }
  bool empty() const { return qsize() == 0; }
  bool full() const { return detail::reply_bool(call(request("full"))); }
};

// Python's Manager().Lock (any holder may release, as threading.Lock).
class LockProxy : public detail::ProxyBase {
 public:
  LockProxy() = default;
  explicit LockProxy(detail::ProxyBase base) : ProxyBase(std::move(base)) {}
  bool acquire(bool block = true, Timeout timeout = std::nullopt) const {
    Bytes r = request("acquire");
    detail::wire::put_u8(r, block ? 1 : 0);
    detail::wire::put_timeout(r, timeout);
    return detail::reply_bool(call(std::move(r)));
  }
  // ValueError when not locked.
  void release() const { call(request("release")); }
  bool locked() const { return detail::reply_bool(call(request("locked"))); }
  // Lockable, for std::lock_guard / std::unique_lock.
  void lock() const { acquire(); }
  bool try_lock() const { return acquire(false); }
  void unlock() const { release(); }
};

class EventProxy : public detail::ProxyBase {
 public:
  EventProxy() = default;
  explicit EventProxy(detail::ProxyBase base) : ProxyBase(std::move(base)) {}
  void set() const { call(request("set")); }
  void clear() const { call(request("clear")); }
  bool is_set() const { return detail::reply_bool(call(request("is_set"))); }
  // True when the flag is set (at once or within timeout).
  bool wait(Timeout timeout = std::nullopt) const {
    Bytes r = request("wait");
    detail::wire::put_timeout(r, timeout);
    return detail::reply_bool(call(std::move(r)));
  }
};

// Python's Barrier: wait() returns an index in [0, parties); a timeout, an
// abort() or a reset() during a wait breaks it (BrokenBarrierError).
class BarrierProxy : public detail::ProxyBase {
 public:
  BarrierProxy() = default;
  explicit BarrierProxy(detail::ProxyBase base) : ProxyBase(std::move(base)) {}
  std::size_t wait(Timeout timeout = std::nullopt) const {
    Bytes r = request("wait");
    detail::wire::put_timeout(r, timeout);
    return detail::reply_u64(call(std::move(r)));
  }
  void abort() const { call(request("abort")); }
  void reset() const { call(request("reset")); }
  std::size_t parties() const { return detail::reply_u64(call(request("parties"))); }
  std::size_t n_waiting() const { return detail::reply_u64(call(request("n_waiting"))); }
  bool broken() const { return detail::reply_bool(call(request("broken"))); }
};

// Python's Namespace: named values of any serializable types. get<T> checks
// the type the value was set with (ValueError otherwise) and
// throws AttributeError for a name never set.
class NamespaceProxy : public detail::ProxyBase {
 public:
  NamespaceProxy() = default;
  explicit NamespaceProxy(detail::ProxyBase base) : ProxyBase(std::move(base)) {}
  template <class T>
  void set(std::string_view name, const T& value) const {
    using W = detail::wire_arg_t<T>;
    Bytes r = request("set");
    detail::wire::put_str(r, name);
    detail::wire::put_str(r, typeid(W).name());
    detail::wire::put_value(r, static_cast<const W&>(W(value)));
    call(std::move(r));
  }
  template <class T>
  T get(std::string_view name) const {
    Bytes r = request("get");
    detail::wire::put_str(r, name);
    auto res = call(std::move(r));
    auto rd = res.reader();
    std::string_view type = rd.str();
    if (type != typeid(T).name())
      throw ValueError("mproc::NamespaceProxy::get: '" + std::string(name) + "' holds a " +
                                  demangle(std::string(type).c_str()) + ", not a " + demangle(typeid(T).name()));
    return rd.template value<T>();
  }
  bool contains(std::string_view name) const { return name_call("has", name); }
  bool erase(std::string_view name) const { return name_call("del", name); }
  std::vector<std::string> names() const {
    auto res = call(request("names"));
    auto rd = res.reader();
    std::vector<std::string> out;
    const std::uint64_t n = rd.u64();
    for (std::uint64_t i = 0; i < n; ++i) out.emplace_back(rd.str());
    return out;
  }

 private:
  bool name_call(std::string_view m, std::string_view name) const {
    Bytes r = request(m);
    detail::wire::put_str(r, name);
    return detail::reply_bool(call(std::move(r)));
  }
};

// A registered class on the server (Manager::register_type / create): calls
// go by method name with serialized arguments; no code crosses the wire.
template <class T>
class ObjectProxy : public detail::ProxyBase {
 public:
  ObjectProxy() = default;
  explicit ObjectProxy(detail::ProxyBase base) : ProxyBase(std::move(base)) {}

  // The argument types must be the method's (decayed); string literals go as
  // std::string. A mismatch is a RemoteError naming both.
  template <class R = void, class... A>
    requires(!(std::is_member_function_pointer_v<A> || ...))
  R call_method(std::string_view name, const A&... args) const {
    Bytes r = request(name);
    detail::wire::put_str(r, typeid(std::tuple<detail::wire_arg_t<A>...>).name());
    if constexpr (sizeof...(A) > 0)
      serialize_into(r, static_cast<const detail::wire_arg_t<A>&>(detail::wire_arg_t<A>(args))...);
    auto res = call(std::move(r));
    if constexpr (!std::is_void_v<R>) return from_bytes<R>(res.reader().rest());
  }
  // The same with the member pointer giving the argument and result types.
  template <class R, class... P, class... A>
  R call_method(std::string_view name, R (T::*)(P...), A&&... args) const {
    return call_method<R, std::decay_t<P>...>(name, static_cast<std::decay_t<P>>(std::forward<A>(args))...);
  }
  template <class R, class... P, class... A>
  R call_method(std::string_view name, R (T::*)(P...) const, A&&... args) const {
    return call_method<R, std::decay_t<P>...>(name, static_cast<std::decay_t<P>>(std::forward<A>(args))...);
  }
};

}  // namespace mproc
