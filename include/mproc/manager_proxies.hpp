// Typed proxies of mproc::Manager's containers: dict, list, array, set,
// value, namespace and registered user classes (manager_sync_proxies.hpp:
// queues and synchronisation). Each method is one round trip through its
// entry in the object's protocol table (detail/manager_protocol.hpp); the
// batched ones (update, items, extend, slice, get_many) move any number of
// elements in one. Iterating a dict or list proxy walks a snapshot taken in
// one round trip when the loop starts (later changes are not seen), as
// iterating over list(d.items()) in Python.
#pragma once
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <typeinfo>
#include <utility>
#include <vector>

#include "mproc/detail/manager_client.hpp"

namespace mproc {

namespace detail {
// The argument type a value travels as: string literals go as std::string.
template <class A>
using wire_arg_t = std::conditional_t<std::is_convertible_v<A, std::string_view> &&
                                          !std::is_same_v<std::decay_t<A>, std::string>,
                                      std::string, std::decay_t<A>>;

// A range-for over a snapshot: the elements fetched when the loop began,
// shared by the snapshot and its iterators through a count of their own (a
// std::shared_ptr would cost every proxy user <memory>).
template <class E>
class Snapshot {
  struct Box {
    std::vector<E> items;
    std::size_t refs = 1;
  };
  // One counted reference to a Box (atomic: copies may go to other threads).
  class Ref {
   public:
    Ref() = default;
    explicit Ref(std::vector<E> items) : box_(new Box{std::move(items)}) {}
    Ref(const Ref& o) noexcept : box_(o.box_) {
      if (box_) __atomic_add_fetch(&box_->refs, 1, __ATOMIC_RELAXED);
    }
    Ref(Ref&& o) noexcept : box_(std::exchange(o.box_, nullptr)) {}
    Ref& operator=(Ref o) noexcept {
      std::swap(box_, o.box_);
      return *this;
    }
    ~Ref() {
      if (box_ && __atomic_sub_fetch(&box_->refs, 1, __ATOMIC_ACQ_REL) == 0) delete box_;
    }
    const std::vector<E>* get() const noexcept { return box_ ? &box_->items : nullptr; }

   private:
    Box* box_ = nullptr;
  };

 public:
  explicit Snapshot(std::vector<E> items) : items_(std::move(items)) {}
  class iterator {
   public:
    using value_type = E;
    using difference_type = std::ptrdiff_t;
    iterator() = default;
    iterator(Ref items, std::size_t i) : items_(std::move(items)), i_(i) {}
    const E& operator*() const { return (*items_.get())[i_]; }
    const E* operator->() const { return &(*items_.get())[i_]; }
    iterator& operator++() {
      ++i_;
      return *this;
    }
    iterator operator++(int) {
      iterator old = *this;
      ++i_;
      return old;
    }
    bool operator==(const iterator& o) const { return i_ == o.i_; }
    bool operator==(std::default_sentinel_t) const { return !items_.get() || i_ >= items_.get()->size(); }

   private:
    Ref items_;
    std::size_t i_ = 0;
  };
  iterator begin() const { return {items_, 0}; }
  iterator end() const { return {items_, size()}; }
  std::size_t size() const { return items_.get()->size(); }

 private:
  Ref items_;
};
}  // namespace detail

template <class K, class V>
class DictProxy;

// What dict_proxy[key] gives: assigning to it sets the key; reading it
// (converting to V, or value()) gets it, KeyError when missing. Each is one
// round trip; it holds the key, not the value (auto x = d[k] is a reference).
template <class K, class V>
class DictItemRef {
 public:
  DictItemRef(DictProxy<K, V> dict, K key) : dict_(std::move(dict)), key_(std::move(key)) {}
  const DictItemRef& operator=(const V& value) const {
    dict_.set(key_, value);
    return *this;
  }
  const DictItemRef& operator=(const DictItemRef& other) const { return *this = other.value(); }
  V value() const { return dict_.at(key_); }
  operator V() const { return value(); }  // NOLINT: implicit, as Python's d[k]

 private:
  DictProxy<K, V> dict_;
  K key_;
};

// Python's DictProxy: insertion-ordered; keys compare by their serialized bytes.
template <class K, class V>
class DictProxy : public detail::ProxyOf<detail::proto::DictProtocol, detail::Bind<K, V>> {
 public:
  using DictProxy::ProxyOf::ProxyOf;

  void set(const K& key, const V& value) const { this->template invoke<"set">(key, value); }
  std::optional<V> get(const K& key) const { return this->template invoke<"get">(key); }
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
  // d[key] = v; V v = d[key]  (Python's __setitem__ / __getitem__).
  DictItemRef<K, V> operator[](const K& key) const { return DictItemRef<K, V>(*this, key); }
  bool contains(const K& key) const { return this->template invoke<"contains">(key); }
  // Python's del d[key]; tells whether the key was there.
  bool erase(const K& key) const { return this->template invoke<"del">(key); }
  std::optional<V> pop(const K& key) const { return this->template invoke<"pop">(key); }
  V setdefault(const K& key, const V& value) const { return this->template invoke<"setdefault">(key, value); }
  std::size_t size() const { return this->template invoke<"len">(); }
  void clear() const { this->template invoke<"clear">(); }
  // One round trip for any number of (key, value) pairs (a map, a vector of pairs...).
  template <class Range>
  void update(const Range& items) const {
    this->template invoke<"update">(items);
  }
  std::vector<std::pair<K, V>> items() const { return this->template invoke<"items">(); }
  std::vector<K> keys() const { return this->template invoke<"keys">(); }
  std::vector<V> values() const { return this->template invoke<"values">(); }
  // Many lookups in one round trip.
  std::vector<std::optional<V>> get_many(const std::vector<K>& keys) const {
    return this->template invoke<"get_many">(keys);
  }
  // for (const auto& [k, v] : d): the (key, value) pairs, a snapshot taken
  // in one round trip (C++ maps iterate pairs; Python's dicts, keys: use keys()).
  typename detail::Snapshot<std::pair<K, V>>::iterator begin() const { return snapshot_items().begin(); }
  std::default_sentinel_t end() const { return {}; }
  detail::Snapshot<std::pair<K, V>> snapshot_items() const { return detail::Snapshot<std::pair<K, V>>(items()); }
};

// Python's Manager().Array: a fixed-length sequence. Indices may be negative
// (from the end); slices clamp; IndexError past either end.
template <class T, class P = detail::proto::ArrayProtocol>
class ArrayProxy : public detail::ProxyOf<P, detail::Bind<void, T>> {
 public:
  using ArrayProxy::ProxyOf::ProxyOf;

  T get(std::int64_t i) const { return this->template invoke<"get">(i); }
  void set(std::int64_t i, const T& v) const { this->template invoke<"set">(i, v); }
  // Python's l[start:stop] (nullopt: from the start / to the end).
  std::vector<T> slice(std::optional<std::int64_t> start, std::optional<std::int64_t> stop) const {
    return this->template invoke<"slice">(start, stop);
  }
  std::vector<T> tolist() const { return slice(std::nullopt, std::nullopt); }
  std::size_t size() const { return this->template invoke<"len">(); }
  // for (const T& x : l): a snapshot (tolist()) taken when the loop starts.
  typename detail::Snapshot<T>::iterator begin() const { return detail::Snapshot<T>(tolist()).begin(); }
  std::default_sentinel_t end() const { return {}; }
};

// Python's ListProxy: an Array that grows and shrinks.
template <class T>
class ListProxy : public ArrayProxy<T, detail::proto::ListProtocol> {
 public:
  using ListProxy::ArrayProxy::ArrayProxy;

  void append(const T& v) const { this->template invoke<"append">(v); }
  template <class Range>
  void extend(const Range& values) const {
    this->template invoke<"extend">(values);
  }
  T pop(std::int64_t i = -1) const { return this->template invoke<"pop">(i); }
  void insert(std::int64_t i, const T& v) const { this->template invoke<"insert">(i, v); }
  // The first equal element (by serialized bytes); ValueError if none (as Python).
  void remove(const T& v) const { this->template invoke<"remove">(v); }
  std::size_t index(const T& v) const { return this->template invoke<"index">(v); }
  std::size_t count(const T& v) const { return this->template invoke<"count">(v); }
  void clear() const { this->template invoke<"clear">(); }
};

// A set of T (elements compare by their serialized bytes; no order).
template <class T>
class SetProxy : public detail::ProxyOf<detail::proto::SetProtocol, detail::Bind<void, T>> {
 public:
  using SetProxy::ProxyOf::ProxyOf;

  // True when v was not there yet.
  bool add(const T& v) const { return this->template invoke<"add">(v); }
  // True when v was there.
  bool discard(const T& v) const { return this->template invoke<"discard">(v); }
  // KeyError when v is not there.
  void remove(const T& v) const {
    if (!discard(v)) throw KeyError("mproc::SetProxy::remove: element not found");
  }
  bool contains(const T& v) const { return this->template invoke<"contains">(v); }
  std::size_t size() const { return this->template invoke<"len">(); }
  void clear() const { this->template invoke<"clear">(); }
  std::vector<T> items() const { return this->template invoke<"items">(); }
  template <class Range>
  void update(const Range& values) const {
    this->template invoke<"update">(values);
  }
};

// Python's Manager().Value: one shared value.
template <class T>
class ValueProxy : public detail::ProxyOf<detail::proto::ValueProtocol, detail::Bind<void, T>> {
 public:
  using ValueProxy::ProxyOf::ProxyOf;
  T get() const { return this->template invoke<"get">(); }
  void set(const T& v) const { this->template invoke<"set">(v); }
};

// Python's Namespace: named values of any serializable types. get<T> checks
// the type the value was set with (ValueError otherwise) and
// throws AttributeError for a name never set.
class NamespaceProxy : public detail::ProxyOf<detail::proto::NamespaceProtocol, detail::NoBind> {
 public:
  using ProxyOf::ProxyOf;
  template <class T>
  void set(std::string_view name, const T& value) const {
    using W = detail::wire_arg_t<T>;
    invoke<"set">(name, std::string_view(typeid(W).name()), to_bytes(static_cast<const W&>(W(value))));
  }
  template <class T>
  T get(std::string_view name) const {
    auto [type, bytes] = invoke<"get">(name);
    if (type != typeid(T).name())
      throw ValueError("mproc::NamespaceProxy::get: '" + std::string(name) + "' holds a " + demangle(type.c_str()) +
                       ", not a " + demangle(typeid(T).name()));
    return from_bytes<T>(bytes);
  }
  bool contains(std::string_view name) const { return invoke<"has">(name); }
  bool erase(std::string_view name) const { return invoke<"del">(name); }
  std::vector<std::string> names() const { return invoke<"names">(); }
};

// A registered class on the server (Manager::register_type / create): calls
// go by method name with serialized arguments; no code crosses the wire.
template <class T>
class ObjectProxy : public detail::ProxyOf<detail::proto::UserProtocol, detail::NoBind> {
 public:
  using ObjectProxy::ProxyOf::ProxyOf;

  // The argument types must be the method's (decayed); string literals go as
  // std::string. A mismatch is a RemoteError naming both.
  template <class R = void, class... A>
    requires(!(std::is_member_function_pointer_v<A> || ...))
  R call_method(std::string_view name, const A&... args) const {
    Bytes encoded;
    if constexpr (sizeof...(A) > 0)
      serialize_into(encoded, static_cast<const detail::wire_arg_t<A>&>(detail::wire_arg_t<A>(args))...);
    Bytes result = this->template invoke<"call">(
        name, std::string_view(typeid(std::tuple<detail::wire_arg_t<A>...>).name()), encoded);
    if constexpr (!std::is_void_v<R>) return from_bytes<R>(result);
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
