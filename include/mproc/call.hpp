// A call encoded for another process of the same binary: a FunctionRef to a
// typed entry point (a template instantiated here, so it exists there too)
// plus the serialized callable and arguments. Used by Process under
// spawn/forkserver and by every pool task.
#pragma once
#include <optional>
#include <span>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "mproc/function_ref.hpp"
#include "mproc/detail/codec.hpp"

namespace mproc {

namespace detail {
template <class F>
inline constexpr bool is_fn_ptr_v = std::is_pointer_v<F> && std::is_function_v<std::remove_pointer_t<F>>;
// Captureless lambdas and other empty function objects: rebuilt, not sent.
template <class F>
inline constexpr bool is_stateless_v = std::is_class_v<F> && std::is_empty_v<F> &&
                                       std::is_default_constructible_v<F> && std::is_trivially_copyable_v<F>;
template <class F>
inline constexpr bool is_serializable_fn_v = std::is_class_v<F> && !is_stateless_v<F> &&
                                             is_serializable_v<F> && std::is_default_constructible_v<F>;
template <class A>
inline constexpr bool is_sendable_v = is_serializable_v<A> && std::is_default_constructible_v<A>;
}  // namespace detail

namespace detail {
// What an argument travels as: its decayed type, except that a string
// literal (any char array) becomes a std::string, as Python's str; its
// pointer could not cross to another process.
template <class A>
using task_arg_t =
    std::conditional_t<std::is_array_v<std::remove_reference_t<A>> &&
                           std::is_same_v<std::remove_cv_t<std::remove_extent_t<std::remove_reference_t<A>>>, char>,
                       std::string, std::decay_t<A>>;
}  // namespace detail

// A target that can run in another process image (spawn, forkserver, pool
// workers, MPI ranks): a function, a stateless lambda or a serializable
// function object, with serializable arguments.
template <class F, class... A>
concept Remotable = (detail::is_fn_ptr_v<F> || detail::is_stateless_v<F> || detail::is_serializable_fn_v<F>) &&
                    (detail::is_sendable_v<A> && ...);

namespace detail {

template <class F>
void save_callable(OutputArchive& ar, const F& fn) {
  if constexpr (is_fn_ptr_v<F>) ar(FunctionRef::of(fn));
  else if constexpr (is_serializable_fn_v<F>) ar(fn);
}

template <class F>
F load_callable(InputArchive& ar) {
  if constexpr (is_fn_ptr_v<F>) {
    FunctionRef ref;
    ar(ref);
    return ref.get<std::remove_pointer_t<F>>();
  } else {
    F f{};
    if constexpr (is_serializable_fn_v<F>) ar(f);
    return f;
  }
}

// The FunctionRef of an entry point, computed once: it holds no address, so
// it stays valid for the life of the process. Published through a
// constant-initialised atomic, not a lazily initialised static: a fork child
// must never find a static-init guard held by a thread its parent had (a
// racing first use computes it twice and keeps one; never freed).
template <auto Entry>
const FunctionRef& entry_ref() {
  // (The compiler's atomic builtins, not <atomic>: public headers stay light.)
  static constinit const FunctionRef* cached = nullptr;
  if (const FunctionRef* r = __atomic_load_n(&cached, __ATOMIC_ACQUIRE)) return *r;
  auto* mine = new FunctionRef(FunctionRef::of(Entry));
  const FunctionRef* expected = nullptr;
  if (__atomic_compare_exchange_n(&cached, &expected, mine, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) return *mine;
  delete mine;
  return *expected;
}

template <class F, class... A>
using call_result_t = std::invoke_result_t<F&, A&&...>;

struct Call {
  FunctionRef entry;
  Bytes payload;
  template <class Ar>
  void serialize(Ar& ar) {
    ar(entry, payload);
  }
};
using CallEntry = void (*)(std::span<const std::byte> in, Bytes& out);

template <class F, class... A>
void call_entry(std::span<const std::byte> in, Bytes& out) {
  InputArchive ar(in);
  std::optional<F> fn;
  std::tuple<A...> args;
  // Decoding errors (bad_alloc included) become DeserializeError; what the
  // target itself throws keeps its type.
  decode_with(typeid(std::tuple<F, A...>).name(), ar, [&] {
    fn.emplace(load_callable<F>(ar));
    ar(args);
  });
  if constexpr (std::is_void_v<call_result_t<F, A...>>) {
    std::apply(*fn, std::move(args));
  } else {
    serialize_into(out, std::apply(*fn, std::move(args)));
  }
}

template <class R>
inline constexpr bool is_returnable_v = std::is_void_v<R> || is_sendable_v<R>;

template <class F, class... A>
Call make_call(const F& fn, const A&... args) {
  static_assert(Remotable<F, A...>,
                "mproc: a task must be a function, a captureless lambda or a serializable function object, "
                "with serializable, default-constructible arguments");
  static_assert(is_returnable_v<call_result_t<F, A...>>,
                "mproc: a task's result must be serializable and default-constructible");
  Call c{entry_ref<&call_entry<F, A...>>(), {}};
  OutputArchive ar(c.payload);
  save_callable(ar, fn);
  ar(std::tie(args...));
  return c;
}

// map/starmap: one call runs fn over a chunk of items (each item an
// argument, or with Star a tuple of arguments) and returns the results.
template <class F, class Item, bool Star>
struct ChunkTraits {
  using result_type = decltype(std::apply(std::declval<F&>(), std::declval<Item>()));
};
template <class F, class Item>
struct ChunkTraits<F, Item, false> {
  using result_type = std::invoke_result_t<F&, Item>;
};
template <class F, class Item, bool Star>
using chunk_result_t = typename ChunkTraits<F, Item, Star>::result_type;
// void results come back as one byte each, so a chunk still counts them.
template <class R>
using stored_result_t = std::conditional_t<std::is_void_v<R>, unsigned char, R>;

template <class F, class Item, bool Star>
void chunk_entry(std::span<const std::byte> in, Bytes& out) {
  using R = chunk_result_t<F, Item, Star>;
  InputArchive ar(in);
  std::optional<F> fn_slot;
  std::vector<Item> items;
  decode_with(typeid(std::vector<Item>).name(), ar, [&] {
    fn_slot.emplace(load_callable<F>(ar));
    ar(items);
  });
  F& fn = *fn_slot;
  std::vector<stored_result_t<R>> results;
  results.reserve(items.size());
  for (auto& item : items) {
    if constexpr (std::is_void_v<R>) {
      if constexpr (Star) std::apply(fn, std::move(item));
      else fn(std::move(item));
      results.push_back(0);
    } else if constexpr (Star) {
      results.push_back(std::apply(fn, std::move(item)));
    } else {
      results.push_back(fn(std::move(item)));
    }
  }
  serialize_into(out, results);
}

template <class F, class Item, bool Star, class It>
Call make_chunk_call(const F& fn, It first, It last) {
  static_assert(Remotable<F, Item>, "mproc: map's function must be a function, a captureless lambda or a "
                                    "serializable function object, over serializable items");
  static_assert(is_returnable_v<chunk_result_t<F, Item, Star>>,
                "mproc: map's results must be serializable and default-constructible");
  Call c{entry_ref<&chunk_entry<F, Item, Star>>(), {}};
  OutputArchive ar(c.payload);
  save_callable(ar, fn);
  if constexpr (std::forward_iterator<It> && !std::is_trivially_copyable_v<Item>) {
    // As std::vector<Item> is written (its size, then each item), straight
    // from the caller's items: a large item (a string, a vector) is copied
    // once, not twice. Trivially copyable items keep the vector path below,
    // which writes them in one block (item by item was 1.8x slower for the
    // default chunks of ints in BM_PoolMap).
    std::uint64_t n = 0;
    if constexpr (std::sized_sentinel_for<It, It>) n = static_cast<std::uint64_t>(last - first);
    else for (It i = first; i != last; ++i) ++n;
    ar.save_size(n);
    for (; first != last; ++first) ar(static_cast<const Item&>(*first));
  } else {
    std::vector<Item> items;  // not vector(first, last): C++20-only iterators (iota_view's) lack its category
    if constexpr (std::sized_sentinel_for<It, It>) items.reserve(static_cast<std::size_t>(last - first));
    for (; first != last; ++first) items.push_back(static_cast<Item>(*first));
    ar(items);
  }
  return c;
}

}  // namespace detail
}  // namespace mproc
