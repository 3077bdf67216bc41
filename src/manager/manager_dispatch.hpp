// The server side of the Manager's protocol tables (mproc/detail/
// manager_protocol.hpp): decodes a call's arguments by its table entry,
// runs the servant's on(Tag<"name">, ctx, args...) and encodes the result
// the entry declares. Decoding is bounds-checked (wire::Reader): a short or
// malformed argument list, or bytes left after it, throws DeserializeError
// before the handler runs, so nothing changes; a count never reserves more
// elements than the bytes left could hold.
#pragma once
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include "mproc/detail/manager_client.hpp"

namespace mproc::detail {

using ServerClock = std::chrono::steady_clock;

// A wire timeout (seconds; negative: forever) as a deadline. NaN counts as 0.
inline ServerClock::time_point deadline_of(double seconds) {
  if (seconds < 0 || seconds > 1e9) return ServerClock::time_point::max();
  if (!(seconds > 0)) return ServerClock::now();
  return ServerClock::now() +
         std::chrono::duration_cast<ServerClock::duration>(std::chrono::duration<double>(seconds));
}

inline std::string_view as_view(std::span<const std::byte> b) {
  return {reinterpret_cast<const char*>(b.data()), b.size()};
}

// Wire type -> what the server decodes it to / encodes it from.
template <class W>
struct ServerCodec;
template <>
struct ServerCodec<proto::None> {
  static constexpr std::size_t min_size = 0;
  static proto::None get(wire::Reader&) { return {}; }
};
struct BytesCodec {  // Key, Val, Blob, Str: the server keeps bytes
  static constexpr std::size_t min_size = 8;
  static std::string_view get(wire::Reader& r) { return as_view(r.bytes()); }
  static void put(Bytes& out, std::string_view s) { wire::put_str(out, s); }
};
template <>
struct ServerCodec<proto::Key> : BytesCodec {};
template <>
struct ServerCodec<proto::Val> : BytesCodec {};
template <>
struct ServerCodec<proto::Blob> : BytesCodec {};
template <>
struct ServerCodec<proto::Str> : BytesCodec {};
template <>
struct ServerCodec<proto::Rest> {
  static constexpr std::size_t min_size = 0;
  static std::span<const std::byte> get(wire::Reader& r) { return r.rest(); }
  static void put(Bytes& out, std::span<const std::byte> b) { out.insert(out.end(), b.begin(), b.end()); }
};
// Block flag + timeout: the deadline of the wait (now when not blocking).
template <>
struct ServerCodec<proto::Wait> {
  static constexpr std::size_t min_size = 9;
  static ServerClock::time_point get(wire::Reader& r) {
    const bool block = r.u8() != 0;
    const double seconds = r.f64();
    return block ? deadline_of(seconds) : ServerClock::now();
  }
};
template <>
struct ServerCodec<proto::Seconds> {
  static constexpr std::size_t min_size = 8;
  static ServerClock::time_point get(wire::Reader& r) { return deadline_of(r.f64()); }
};
template <>
struct ServerCodec<proto::Owner> {
  static constexpr std::size_t min_size = 16;
  static OwnerId get(wire::Reader& r) {
    OwnerId o;
    o.process = r.u64();
    o.thread = r.u64();
    return o;
  }
};
template <>
struct ServerCodec<bool> {
  static constexpr std::size_t min_size = 1;
  static bool get(wire::Reader& r) { return r.u8() != 0; }
  static void put(Bytes& out, bool v) { wire::put_u8(out, v ? 1 : 0); }
};
template <>
struct ServerCodec<std::uint64_t> {
  static constexpr std::size_t min_size = 8;
  static std::uint64_t get(wire::Reader& r) { return r.u64(); }
  static void put(Bytes& out, std::uint64_t v) { wire::put_u64(out, v); }
};
template <>
struct ServerCodec<std::int64_t> {
  static constexpr std::size_t min_size = 8;
  static std::int64_t get(wire::Reader& r) { return static_cast<std::int64_t>(r.u64()); }
  static void put(Bytes& out, std::int64_t v) { wire::put_u64(out, static_cast<std::uint64_t>(v)); }
};
template <class W>
struct ServerCodec<proto::Maybe<W>> {
  static constexpr std::size_t min_size = 1;
  static auto get(wire::Reader& r) {
    using T = decltype(ServerCodec<W>::get(r));
    if (r.u8() == 0) return std::optional<T>();
    return std::optional<T>(ServerCodec<W>::get(r));
  }
  template <class X>
  static void put(Bytes& out, const std::optional<X>& v) {
    wire::put_u8(out, v ? 1 : 0);
    if (v) ServerCodec<W>::put(out, *v);
  }
};
template <class W>
struct ServerCodec<proto::Many<W>> {
  static_assert(ServerCodec<W>::min_size > 0, "mproc: a Many<> of an element that may take no bytes");
  static constexpr std::size_t min_size = 8;
  static auto get(wire::Reader& r) {
    using T = decltype(ServerCodec<W>::get(r));
    std::vector<T> out;
    const std::uint64_t n = r.u64();
    out.reserve(static_cast<std::size_t>(std::min<std::uint64_t>(n, r.left() / ServerCodec<W>::min_size)));
    for (std::uint64_t i = 0; i < n; ++i) out.push_back(ServerCodec<W>::get(r));
    return out;
  }
  template <class Range>
  static void put(Bytes& out, const Range& values) {
    const std::size_t at = out.size();
    wire::put_u64(out, 0);
    std::uint64_t n = 0;
    for (const auto& v : values) {
      ServerCodec<W>::put(out, v);
      ++n;
    }
    std::memcpy(out.data() + at, &n, 8);
  }
};
template <class A, class B>
struct ServerCodec<proto::Pair<A, B>> {
  static constexpr std::size_t min_size = ServerCodec<A>::min_size + ServerCodec<B>::min_size;
  static auto get(wire::Reader& r) {
    auto a = ServerCodec<A>::get(r);
    return std::pair(a, ServerCodec<B>::get(r));
  }
  template <class P>
  static void put(Bytes& out, const P& p) {
    const auto& [a, b] = p;
    ServerCodec<A>::put(out, a);
    ServerCodec<B>::put(out, b);
  }
};

// Decodes O's arguments, calls impl.on(Tag<O's name>, ctx, args...), encodes its result.
template <class P, class O, class Impl, class Ctx>
void run_op(Impl& impl, wire::Reader& in, Bytes& out, Ctx& ctx) {
  [&]<class... W>(proto::Types<W...>) {
    // Braced initialisation: the arguments are read left to right.
    std::tuple<decltype(ServerCodec<W>::get(in))...> args{ServerCodec<W>::get(in)...};
    if (!in.done())
      throw DeserializeError(fmt::format("mproc::Manager: {}.{}: {} bytes after the arguments", P::kind, O::name,
                                         in.left()));
    using R = typename O::result;
    auto invoke = [&](auto&... a) -> decltype(auto) { return impl.on(proto::Tag<O::id>{}, ctx, a...); };
    if constexpr (std::is_void_v<R>) {
      std::apply(invoke, args);
    } else {
      ServerCodec<R>::put(out, std::apply(invoke, args));
    }
  }(typename O::args{});
}

template <class P, class Impl, class Ctx, std::size_t... I>
void dispatch_at(Impl& impl, std::uint16_t index, wire::Reader& in, Bytes& out, Ctx& ctx, std::index_sequence<I...>) {
  (void)((index == I && (run_op<P, proto::OpAt<P, I>>(impl, in, out, ctx), true)) || ...);
}

// Runs method `index` of protocol P on impl; an index past P's table is a
// ValueError naming the kind and the index.
template <class P, class Impl, class Ctx>
void dispatch(Impl& impl, std::uint16_t index, wire::Reader& in, Bytes& out, Ctx& ctx) {
  if (index >= P::size)
    throw ValueError(fmt::format("mproc::Manager: a {} has no method #{} (its table has {})", P::kind, index,
                                 P::size));
  dispatch_at<P>(impl, index, in, out, ctx, std::make_index_sequence<P::size>{});
}

}  // namespace mproc::detail
