// Shared<T>: a value sent once per worker (Pool::share,
// ProcessPoolExecutor::share), as mpi::PoolExecutor::share does for MPI ranks.
//
//   mproc::Pool pool(4);
//   auto table = pool.share(load_big_table());          // serialised once
//   pool.map(+[](std::pair<mproc::Shared<Table>, int> job) {
//     return job.first->lookup(job.second);             // the worker's one copy
//   }, jobs);
//
// share() serialises the value once into a sealed SharedBytes; a task's
// argument carries only the handle {id, SharedBytes} (~45 bytes, the
// buffer's fd travels as other SharedBytes do). A worker decodes the value
// the first time it meets the id and keeps it (at most kMaxSharedValues per
// worker, least recently used dropped first; a dropped one is decoded again
// from the buffer if it comes back); a fresh (replacement) worker decodes it
// on its first task, as any. Lifetime: the buffer lives while a Shared copy
// lives in the pool's process or a task holding one is unsettled; a worker's
// copies go with it (the pool closing) or with the cache's bound.
#pragma once
#include <cstdint>
#include <span>
#include <utility>

#include "mproc/detail/codec.hpp"
#include "mproc/shared_bytes.hpp"

namespace mproc {

namespace detail {
// An immutable value of a type its maker knows, counted by reference: the
// worker's cache and every Shared<T> decoded from it hold one. As
// std::shared_ptr<const void>, without `<memory>` (issue 15): one block
// (count, destroyer, value); copies take a reference with a relaxed
// increment (made from a live one), the last drop (acq_rel: every owner's
// use happens before the delete) destroys it.
class SharedValue {
 public:
  SharedValue() noexcept = default;
  template <class T>
  static SharedValue make(T value) {
    SharedValue v;
    v.box_ = new Typed<T>(std::move(value));
    return v;
  }
  SharedValue(const SharedValue& o) noexcept : box_(o.box_) {
    if (box_) __atomic_add_fetch(&box_->refs, 1, __ATOMIC_RELAXED);
  }
  SharedValue(SharedValue&& o) noexcept : box_(std::exchange(o.box_, nullptr)) {}
  SharedValue& operator=(SharedValue o) noexcept {
    std::swap(box_, o.box_);
    return *this;
  }
  ~SharedValue() {
    if (box_ && __atomic_sub_fetch(&box_->refs, 1, __ATOMIC_ACQ_REL) == 0) box_->destroy(box_);
  }
  // The value, as the T it was made from (null when empty).
  template <class T>
  const T* get() const noexcept {
    return box_ ? &static_cast<const Typed<T>*>(box_)->value : nullptr;
  }
  explicit operator bool() const noexcept { return box_ != nullptr; }

 private:
  struct Box {
    long refs = 1;
    void (*destroy)(Box*) noexcept;
  };
  template <class T>
  struct Typed : Box {
    explicit Typed(T&& v) : Box{1, [](Box* b) noexcept { delete static_cast<Typed*>(b); }}, value(std::move(v)) {}
    const T value;
  };
  Box* box_ = nullptr;
};

inline constexpr std::size_t kMaxSharedValues = 16;
using SharedDecode = SharedValue (*)(std::span<const std::byte>);
// A fresh id: this process's pid and a counter (unique for the life of the
// pool's process, which is all a worker's cache sees).
std::uint64_t next_share_id() noexcept;
// The cached value of share `id` (type fingerprint type), or null.
SharedValue cached_shared_value(std::uint64_t id, std::uint32_t type);
// Decodes bytes and caches the value under id.
SharedValue cache_shared_value(std::uint64_t id, std::uint32_t type, const SharedBytes& bytes, SharedDecode decode);
template <class T>
SharedValue decode_shared_value(std::span<const std::byte> bytes) {
  return SharedValue::make<T>(from_bytes<T>(bytes));
}
// Reads a SharedBytes handle without mapping it (and closes its fd if one came).
void skip_shared_bytes(InputArchive& ar);
}  // namespace detail

template <class T>
class Shared {
 public:
  Shared() = default;
  // What share() does: one serialisation, into a sealed buffer.
  static Shared make(T value) {
    Shared s;
    s.value_ = detail::SharedValue::make<T>(std::move(value));
    s.bytes_ = SharedBytes::copy_of(to_bytes(*s.value_.template get<T>()));
    s.id_ = detail::next_share_id();
    return s;
  }
  const T& get() const {
    if (!value_) throw ValueError("mproc::Shared: empty handle");
    return *value_.template get<T>();
  }
  const T& operator*() const { return get(); }
  const T* operator->() const { return &get(); }
  explicit operator bool() const noexcept { return static_cast<bool>(value_); }
  std::uint64_t id() const noexcept { return id_; }
  // The serialised value's buffer (its size is what each worker decodes once).
  const SharedBytes& buffer() const noexcept { return bytes_; }

  void save(OutputArchive& ar) const { ar(id_, bytes_); }
  void load(InputArchive& ar) {
    ar(id_);
    const std::uint32_t type = type_fingerprint<T>();
    if (auto hit = detail::cached_shared_value(id_, type)) {
      detail::skip_shared_bytes(ar);  // decoded here before: the buffer is not even mapped
      bytes_ = SharedBytes();
      value_ = std::move(hit);
      return;
    }
    ar(bytes_);
    value_ = detail::cache_shared_value(id_, type, bytes_, &detail::decode_shared_value<T>);
  }

 private:
  std::uint64_t id_ = 0;
  SharedBytes bytes_;
  detail::SharedValue value_;  // a T
};

}  // namespace mproc
