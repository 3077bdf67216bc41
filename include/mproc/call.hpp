// A call encoded for another process of the same binary: a FunctionRef to a
// typed entry point (a template instantiated here, so it exists there too)
// plus the serialized callable and arguments. Used by Process under
// spawn/forkserver and by every pool task.
#pragma once
#include <cstring>
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

// Copies an item's bytes into a worker's arena, which that worker reads
// next: from 256 KiB with non-temporal stores, which do not first pull the
// lines the worker read before into this core (1.6x on 1 MiB map arguments
// here). Defined with the arena (src/pool/task_arena.cpp).
void copy_into_arena(std::byte* dst, const void* src, std::size_t n) noexcept;

// A payload encoded only when its task is sent (the local pool's large map
// chunks, see make_lazy_chunk_call): straight into the worker's arena, so
// a map never holds all its chunks' bytes at once (issue 13).
struct PayloadEncoder {
  virtual ~PayloadEncoder() = default;
  // The bytes write() puts down when known without encoding (items that are
  // contiguous bytes: strings, vectors of numbers); 0: unknown, use encode().
  virtual std::size_t exact_size() const noexcept { return 0; }
  // Writes exactly exact_size() bytes at dst; never throws.
  virtual void write(std::byte* /*dst*/) const noexcept {}
  // Appends the payload to out; may throw (a user type's save()).
  virtual void encode(Bytes& out) const = 0;

 private:
  friend class EncoderRef;
  mutable long refs_ = 1;  // EncoderRef's count (a Call may be copied)
};

// Shared ownership of a PayloadEncoder, as a shared_ptr without `<memory>`
// (issue 15: this header is on process.hpp's path). Copying takes a
// reference with a relaxed increment: a copy is made from a live reference,
// which already keeps the object, so no ordering is needed. Dropping one is
// acq_rel: the release orders this owner's use before the count falls, the
// acquire makes the last owner see every other owner's use before it deletes.
class EncoderRef {
 public:
  EncoderRef() noexcept = default;
  explicit EncoderRef(const PayloadEncoder* adopt) noexcept : p_(adopt) {}
  EncoderRef(const EncoderRef& other) noexcept : p_(other.p_) {
    if (p_) __atomic_add_fetch(&p_->refs_, 1, __ATOMIC_RELAXED);
  }
  EncoderRef(EncoderRef&& other) noexcept : p_(std::exchange(other.p_, nullptr)) {}
  EncoderRef& operator=(EncoderRef other) noexcept {
    std::swap(p_, other.p_);
    return *this;
  }
  ~EncoderRef() {
    if (p_ && __atomic_sub_fetch(&p_->refs_, 1, __ATOMIC_ACQ_REL) == 0) delete p_;
  }
  const PayloadEncoder* get() const noexcept { return p_; }
  const PayloadEncoder* operator->() const noexcept { return p_; }
  const PayloadEncoder& operator*() const noexcept { return *p_; }
  explicit operator bool() const noexcept { return p_ != nullptr; }

 private:
  const PayloadEncoder* p_ = nullptr;
};

// Payloads at least this large go through the local pool's shared-memory
// arena (src/pool/task_arena.hpp: TaskArena::kThreshold).
inline constexpr std::size_t kLargePayloadBytes = std::size_t{256} << 10;

struct Call {
  FunctionRef entry;
  Bytes payload;
  // Set: the payload is encoded by `lazy` when the task is sent (payload
  // stays empty until then, or holds it once encoded for a socket). Never
  // serialized: only the local pool engine takes such calls. The items it
  // refers to must outlive the task (Pool::map waits for every chunk).
  EncoderRef lazy{};
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
  Call c{entry_ref<&call_entry<F, A...>>(), {}, {}};
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
  Call c{entry_ref<&chunk_entry<F, Item, Star>>(), {}, {}};
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

// Items whose encoding is a size tag and one block of bytes (the archive's
// std::string, std::vector<arithmetic>): their chunk is written straight
// into the arena, one copy (tests/test_pool_bulk.cpp checks the bytes).
template <class T>
struct contiguous_item : std::false_type {};
template <>
struct contiguous_item<std::string> : std::true_type {};
template <class T>
struct contiguous_item<std::vector<T>>
    : std::bool_constant<std::is_arithmetic_v<T> && !std::is_same_v<T, bool>> {};

// A map chunk over the caller's items [first, last), encoded when sent. The
// callable and the count are encoded now (small); the items are read at
// send time, so they must outlive the task.
template <class F, class Item, bool Star, class It>
class ChunkEncoder final : public PayloadEncoder {
 public:
  ChunkEncoder(const F& fn, It first, It last) : first_(first), last_(last) {
    OutputArchive ar(head_);
    save_callable(ar, fn);
    std::uint64_t n = 0;
    if constexpr (std::sized_sentinel_for<It, It>) n = static_cast<std::uint64_t>(last - first);
    else for (It i = first; i != last; ++i) ++n;
    ar.save_size(n);
    if constexpr (contiguous_item<Item>::value) {
      exact_ = head_.size();
      for (It it = first; it != last; ++it)
        exact_ += sizeof(std::uint64_t) + item(it).size() * sizeof(typename Item::value_type);
    }
  }
  std::size_t exact_size() const noexcept override { return exact_; }
  void write(std::byte* dst) const noexcept override {
    if constexpr (contiguous_item<Item>::value) {
      std::memcpy(dst, head_.data(), head_.size());
      dst += head_.size();
      for (It it = first_; it != last_; ++it) {
        const Item& v = item(it);
        const auto n = static_cast<std::uint64_t>(v.size());
        std::memcpy(dst, &n, sizeof n);
        dst += sizeof n;
        const std::size_t bytes = v.size() * sizeof(typename Item::value_type);
        if (bytes) copy_into_arena(dst, v.data(), bytes);
        dst += bytes;
      }
    }
  }
  void encode(Bytes& out) const override {
    out.insert(out.end(), head_.begin(), head_.end());
    OutputArchive ar(out);
    for (It it = first_; it != last_; ++it) ar(item(it));
  }

 private:
  static const Item& item(const It& it) { return static_cast<const Item&>(*it); }
  Bytes head_;
  It first_, last_;
  std::size_t exact_ = 0;
};

// make_chunk_call's payload, encoded when the local pool sends it (see
// PayloadEncoder); the same bytes on the wire.
template <class F, class Item, bool Star, class It>
Call make_lazy_chunk_call(const F& fn, It first, It last) {
  static_assert(std::forward_iterator<It> && std::is_lvalue_reference_v<std::iter_reference_t<It>>,
                "mproc: a lazy chunk refers to stored items");
  Call c{entry_ref<&chunk_entry<F, Item, Star>>(), {}, {}};
  c.lazy = EncoderRef(new ChunkEncoder<F, Item, Star, It>(fn, first, last));
  return c;
}

}  // namespace detail
}  // namespace mproc
