// The client side of the Manager's wire: byte helpers, the proxy base (a
// process's pooled connections to a server) and ProxyOf<Protocol, Types>,
// which encodes a call from its protocol table entry and decodes the reply.
// The tables: manager_protocol.hpp. The server side: src/manager/manager_dispatch.hpp.
//
// Request frame: u64 object id | u16 method index | arguments (wire types).
// Reply frame:   u8 0 | result                       on success
//                u8 1 | str type name | str what     on failure (rethrown)
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "mproc/detail/manager_protocol.hpp"
#include "mproc/errors.hpp"
#include "mproc/listener.hpp"
#include "mproc/detail/deadline.hpp"
#include "mproc/timeout.hpp"
#include "mproc/detail/codec.hpp"

namespace mproc {
class Manager;

namespace detail::wire {
// Little-endian fixed-size integers and byte strings (u64 length + bytes),
// the same layout as mproc's archives give.
// (resize + memcpy, not insert(): GCC 12 misreads an inlined insert of a
// constant small size as an overflow, -Wstringop-overflow.)
inline void put_u64(Bytes& b, std::uint64_t v) {
  const std::size_t at = b.size();
  b.resize(at + 8);
  std::memcpy(b.data() + at, &v, 8);
}
inline void put_u16(Bytes& b, std::uint16_t v) {
  const std::size_t at = b.size();
  b.resize(at + 2);
  std::memcpy(b.data() + at, &v, 2);
}
inline void put_u8(Bytes& b, std::uint8_t v) { b.push_back(static_cast<std::byte>(v)); }
inline void put_f64(Bytes& b, double v) {
  const std::size_t at = b.size();
  b.resize(at + 8);
  std::memcpy(b.data() + at, &v, 8);
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
  put_f64(b, t ? static_cast<double>(t.nanoseconds()) / 1e9 : -1.0);
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
  std::uint16_t u16() {
    std::uint16_t v;
    std::memcpy(&v, take(2).data(), 2);
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

struct Endpoint;  // a process's pool of connections to one server

// The result of one call: status byte, then the method's reply.
struct CallResult {
  Bytes bytes;
  wire::Reader reader() const { return wire::Reader(std::span<const std::byte>(bytes).subspan(1)); }
};

// A proxy's counted reference to its process's connection pool for its
// server, reset after fork. The count is the Endpoint's own (managers.cpp;
// a std::shared_ptr would put <memory> on every proxy user's path). ep_ is
// guarded by the process-wide proxy registry's lock (managers.cpp), which is
// held across fork: a lock of its own could be copied into a fork child
// while another thread held it.
class EndpointRef {
 public:
  EndpointRef() = default;
  EndpointRef(const EndpointRef& o);
  EndpointRef& operator=(const EndpointRef& o);
  ~EndpointRef();
  void reset();
  // This process's pool for (address, authkey), with a reference the caller
  // owns (managers.cpp's EndpointPtr adopts it).
  Endpoint* acquire(const Address& address, const std::string& authkey) const;

 private:
  mutable Endpoint* ep_ = nullptr;  // one reference, or null
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

  // A request for the method at that index of this object's protocol table;
  // append its arguments, then call(). (Proxies go through ProxyOf::invoke.)
  Bytes request(std::uint16_t method) const;
  CallResult call(Bytes&& request) const;

 protected:
  friend class mproc::Manager;
  Address address_;
  std::string authkey_;
  std::uint64_t id_ = 0;
  EndpointRef ep_;
};

// The calling thread, for owned locks (RLock, Condition): a random number of
// this process (drawn again after fork) and the thread id.
struct OwnerId {
  std::uint64_t process = 0, thread = 0;
  bool operator==(const OwnerId&) const = default;
};
OwnerId caller_identity();

// Block flag and timeout of a blocking call (Queue.get, Lock.acquire).
struct WaitArg {
  bool block = true;
  Timeout timeout;
};

// ---- client codec: wire type -> C++ type, with the proxy's K / V ------------
template <class K, class V>
struct Bind {
  using key = K;
  using val = V;
};
using NoBind = Bind<void, void>;

template <class W, class B>
struct Codec;
template <class B>
struct Codec<proto::None, B> {
  using type = proto::None;
  static void put(Bytes&, proto::None) {}
  static type get(wire::Reader&) { return {}; }
};
template <class B>
struct Codec<proto::Key, B> {
  using type = typename B::key;
  static void put(Bytes& b, const type& v) { wire::put_value(b, v); }
  static type get(wire::Reader& r) { return r.template value<type>(); }
};
template <class B>
struct Codec<proto::Val, B> {
  using type = typename B::val;
  static void put(Bytes& b, const type& v) { wire::put_value(b, v); }
  static type get(wire::Reader& r) { return r.template value<type>(); }
};
template <class B>
struct Codec<proto::Blob, B> {
  using type = Bytes;
  static void put(Bytes& b, std::span<const std::byte> v) {
    wire::put_u64(b, v.size());
    b.insert(b.end(), v.begin(), v.end());
  }
  static type get(wire::Reader& r) {
    auto s = r.bytes();
    return Bytes(s.begin(), s.end());
  }
};
template <class B>
struct Codec<proto::Rest, B> {
  using type = Bytes;
  static void put(Bytes& b, std::span<const std::byte> v) { b.insert(b.end(), v.begin(), v.end()); }
  static type get(wire::Reader& r) {
    auto s = r.rest();
    return Bytes(s.begin(), s.end());
  }
};
template <class B>
struct Codec<proto::Str, B> {
  using type = std::string;
  static void put(Bytes& b, std::string_view s) { wire::put_str(b, s); }
  static type get(wire::Reader& r) { return std::string(r.str()); }
};
template <class B>
struct Codec<proto::Wait, B> {
  using type = WaitArg;
  static void put(Bytes& b, const WaitArg& w) {
    wire::put_u8(b, w.block ? 1 : 0);
    wire::put_timeout(b, w.timeout);
  }
};
template <class B>
struct Codec<proto::Seconds, B> {
  using type = Timeout;
  static void put(Bytes& b, Timeout t) { wire::put_timeout(b, t); }
};
template <class B>
struct Codec<proto::Owner, B> {
  using type = OwnerId;
  static void put(Bytes& b, const OwnerId& o) {
    wire::put_u64(b, o.process);
    wire::put_u64(b, o.thread);
  }
};
template <class B>
struct Codec<bool, B> {
  using type = bool;
  static void put(Bytes& b, bool v) { wire::put_u8(b, v ? 1 : 0); }
  static type get(wire::Reader& r) { return r.u8() != 0; }
};
template <class B>
struct Codec<std::uint64_t, B> {
  using type = std::uint64_t;
  static void put(Bytes& b, std::uint64_t v) { wire::put_u64(b, v); }
  static type get(wire::Reader& r) { return r.u64(); }
};
template <class B>
struct Codec<std::int64_t, B> {
  using type = std::int64_t;
  static void put(Bytes& b, std::int64_t v) { wire::put_u64(b, static_cast<std::uint64_t>(v)); }
  static type get(wire::Reader& r) { return static_cast<std::int64_t>(r.u64()); }
};
template <class W, class B>
struct Codec<proto::Maybe<W>, B> {
  using type = std::optional<typename Codec<W, B>::type>;
  template <class X>
  static void put(Bytes& b, const std::optional<X>& v) {
    wire::put_u8(b, v ? 1 : 0);
    if (v) Codec<W, B>::put(b, *v);
  }
  static type get(wire::Reader& r) {
    if (r.u8() == 0) return std::nullopt;
    return Codec<W, B>::get(r);
  }
};
// The fewest bytes a value of wire type W takes (Codec::put below), for a
// proxy binding B: what a sized Many reserves per element.
template <class T>
constexpr std::size_t min_payload = std::is_arithmetic_v<T> ? sizeof(T) : 0;  // archives write scalars raw
template <class W, class B>
struct MinWire {
  static constexpr std::size_t bytes = 8;  // Blob, Str (u64 length), u64, i64, Seconds, Many
};
template <class B>
struct MinWire<proto::Key, B> {
  static constexpr std::size_t bytes = 8 + min_payload<typename B::key>;
};
template <class B>
struct MinWire<proto::Val, B> {
  static constexpr std::size_t bytes = 8 + min_payload<typename B::val>;
};
template <class B>
struct MinWire<bool, B> {
  static constexpr std::size_t bytes = 1;
};
template <class W, class B>
struct MinWire<proto::Maybe<W>, B> {
  static constexpr std::size_t bytes = 1;
};
template <class A, class C, class B>
struct MinWire<proto::Pair<A, C>, B> {
  static constexpr std::size_t bytes = MinWire<A, B>::bytes + MinWire<C, B>::bytes;
};

template <class W, class B>
struct Codec<proto::Many<W>, B> {
  using type = std::vector<typename Codec<W, B>::type>;
  // Any range (a vector, a map, an initializer_list); the count is patched.
  template <class Range>
  static void put(Bytes& b, const Range& values) {
    // A sized range: room for its elements' least size in one allocation,
    // not a dozen doublings that each touch fresh pages once the allocator
    // has given the heap's top back (BM_ManagerDictUpdate100k).
    if constexpr (requires { values.size(); })
      b.reserve(b.size() + 8 + static_cast<std::size_t>(values.size()) * MinWire<W, B>::bytes);
    const std::size_t at = b.size();
    wire::put_u64(b, 0);
    std::uint64_t n = 0;
    for (const auto& v : values) {
      Codec<W, B>::put(b, v);
      ++n;
    }
    std::memcpy(b.data() + at, &n, 8);
  }
  static type get(wire::Reader& r) {
    type out;
    const std::uint64_t n = r.u64();
    out.reserve(static_cast<std::size_t>(n < r.left() ? n : r.left()));  // >= 1 byte each
    for (std::uint64_t i = 0; i < n; ++i) out.push_back(Codec<W, B>::get(r));
    return out;
  }
};
template <class A, class C, class B>
struct Codec<proto::Pair<A, C>, B> {
  using type = std::pair<typename Codec<A, B>::type, typename Codec<C, B>::type>;
  template <class P>
  static void put(Bytes& b, const P& p) {
    const auto& [x, y] = p;
    Codec<A, B>::put(b, x);
    Codec<C, B>::put(b, y);
  }
  static type get(wire::Reader& r) {
    auto x = Codec<A, B>::get(r);
    return type(std::move(x), Codec<C, B>::get(r));
  }
};

// A proxy of protocol P whose Key / Val are B's types. invoke<"name">(args...)
// encodes a call by its table entry and decodes the result it declares.
template <class P, class B>
class ProxyOf : public ProxyBase {
 public:
  using protocol = P;
  using binding = B;
  ProxyOf() = default;
  explicit ProxyOf(ProxyBase base) : ProxyBase(std::move(base)) {}

 protected:
  template <proto::Name N, class... A>
  auto invoke(const A&... args) const {
    constexpr std::size_t index = P::find(N.view());
    static_assert(index < P::size, "mproc: this method is not in the object's protocol table");
    using O = proto::OpAt<P, index>;
    Bytes r = request(static_cast<std::uint16_t>(index));
    [&]<class... W>(proto::Types<W...>) {
      static_assert(sizeof...(W) == sizeof...(A), "mproc: wrong number of arguments for this method");
      (Codec<W, B>::put(r, args), ...);
    }(typename O::args{});
    CallResult res = call(std::move(r));
    using R = typename O::result;
    if constexpr (!std::is_void_v<R>) {
      wire::Reader rd = res.reader();
      auto v = Codec<R, B>::get(rd);
      if (!rd.done()) throw ProtocolError("manager: a reply longer than its method's result");
      return v;
    }
  }
};

// Object 0 of every server: the server itself.
class ServerProxy : public ProxyOf<proto::ServerProtocol, NoBind> {
 public:
  using ProxyOf::ProxyOf;
  std::uint64_t create(std::string_view kind, std::uint64_t fingerprint, std::string_view name,
                       std::string_view types, std::span<const std::byte> init) const {
    return invoke<"create">(kind, fingerprint, name, types, init);
  }
  bool release(std::uint64_t id) const { return invoke<"release">(id); }
  std::uint64_t count() const { return invoke<"count">(); }
  void ping() const { invoke<"ping">(); }
  void shutdown() const { invoke<"shutdown">(); }
};

}  // namespace detail
}  // namespace mproc
