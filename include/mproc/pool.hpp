// Pool: multiprocessing.Pool over the same engine as ProcessPoolExecutor. A
// worker that segfaults, aborts or is killed fails its task alone
// (WorkerCrashed) and is replaced; CPython's Pool hangs there (gh-66587).
//
//   mproc::Pool pool(4);
//   std::vector<int> squares = pool.map(square, std::views::iota(0, 100));
#pragma once
#include <cstddef>
#include <exception>
#include <type_traits>
#include <utility>
#include <vector>

#include "mproc/executor.hpp"

namespace mproc {

namespace detail {
// AsyncResult's type-erased side (src/pool/async_result.cpp): its parts and
// the callbacks waiting for all of them. A handle: copies share one state.
//
//   parts pending ──(each part settles: left - 1)──▶ left == 0: ready,
//   on_ready callbacks run once, in the thread that settled the last part.
class AsyncCore {
 public:
  explicit AsyncCore(std::vector<FutureCore> parts);
  AsyncCore(const AsyncCore& o) noexcept;
  AsyncCore& operator=(const AsyncCore& o) noexcept;
  ~AsyncCore();

  const std::vector<FutureCore>& parts() const noexcept;
  bool ready() const;  // every part done
  bool wait(Deadline deadline) const;
  // The first part's error (in part order) among those done; null if none.
  std::exception_ptr first_error() const;
  // Runs cb once every part is done (at once if they are).
  void on_ready(TaskCallback cb) const;

 private:
  struct Impl;
  Impl* p_;
};

// A callback argument given or not: a null function pointer or an empty
// std::function is "none", as Python's callback=None.
template <class F>
bool callback_given(const F& f) noexcept {
  if constexpr (std::is_same_v<F, std::nullptr_t>) return false;
  else if constexpr (std::is_pointer_v<F>) return f != nullptr;
  else if constexpr (requires { f.operator bool(); }) return static_cast<bool>(f);
  else return true;
}
}  // namespace detail

// apply_async / map_async: Python's AsyncResult.
template <class R>
class AsyncResult {
 public:
  // The value, decoded from the parts once all succeeded.
  using Decode = R (*)(const std::vector<detail::FutureCore>& parts);
  AsyncResult(std::vector<detail::FutureCore> parts, Decode decode) : core_(std::move(parts)), decode_(decode) {}

  bool ready() const { return core_.ready(); }
  // ValueError when not ready, as Python.
  bool successful() const {
    if (!ready()) throw ValueError("AsyncResult::successful: not ready");
    return core_.first_error() == nullptr;
  }
  bool wait(Timeout timeout = std::nullopt) const { return core_.wait(detail::deadline_after(timeout)); }
  R get(Timeout timeout = std::nullopt) const {
    if (!wait(timeout)) throw TimeoutError("AsyncResult::get: timed out");
    if (auto e = core_.first_error()) std::rethrow_exception(e);
    return decode_(core_.parts());
  }
  // Python's callback / error_callback: called once, when all parts are done
  // (at once if they are), in the thread that finished the last part.
  // on_value takes `const R&` (nothing for a void task), on_error a
  // std::exception_ptr; either may be any callable, or nullptr for none.
  template <class OnValue, class OnError = std::nullptr_t>
  void add_callback(OnValue on_value, OnError on_error = nullptr) {
    core_.on_ready([self = *this, on_value = std::move(on_value), on_error = std::move(on_error)]() mutable {
      if (auto e = self.core_.first_error()) {
        if constexpr (!std::is_same_v<OnError, std::nullptr_t>)
          if (detail::callback_given(on_error)) on_error(e);
      } else if constexpr (!std::is_same_v<OnValue, std::nullptr_t>) {
        if (detail::callback_given(on_value)) {
          if constexpr (std::is_void_v<R>) on_value();
          else on_value(static_cast<const R&>(self.decode_(self.core_.parts())));
        }
      }
    });
  }

 private:
  detail::AsyncCore core_;
  Decode decode_;
};

// Pool.imap / imap_unordered: a lazy input range in, results out as they are
// consumed. At most `window` chunks are in flight, so memory stays flat
// however long the input is.
template <class F, class Range, bool Ordered>
class IMap {
  using Item = std::ranges::range_value_t<Range>;
  using R = detail::stored_result_t<detail::chunk_result_t<F, Item, false>>;

 public:
  IMap(detail::PoolCore& engine, F fn, Range items, std::size_t chunksize, std::size_t window)
      : engine_(&engine), fn_(std::move(fn)), items_(std::move(items)), it_(std::ranges::begin(items_)),
        chunksize_(chunksize > 0 ? chunksize : 1), window_(window > 0 ? window : 1) {}
  IMap(IMap&&) = delete;  // iterators point into it; returned by guaranteed elision

  // The next result, or nullopt at the end. Rethrows a task's error (at its
  // position; iteration can go on). TimeoutError leaves everything in place.
  std::optional<R> next(Timeout timeout = std::nullopt) {
    while (out_.empty()) {  // (ChunkCursor: the next result of the chunk taken last)
      refill();
      if (inflight_.empty()) {
        // The input threw at item k: the results before k came out first,
        // then its exception, as Python's imap (bpo-28699).
        if (input_error_) std::rethrow_exception(std::exchange(input_error_, nullptr));
        return std::nullopt;
      }
      auto pos = inflight_.begin();
      if constexpr (!Ordered) {
        auto i = done_.pop(detail::deadline_after(timeout));
        if (!i) throw TimeoutError("imap_unordered: no result within the timeout");
        while (pos->first != *i) ++pos;  // it is in flight: pushed once, when it settled
      }
      auto error = pos->second.exception(timeout);  // TimeoutError: nothing consumed
      auto fut = std::move(pos->second);
      inflight_.erase(pos);
      if (error) std::rethrow_exception(error);
      out_.load(fut.get());
    }
    return out_.take();
  }

  class iterator {
   public:
    using value_type = R;
    using difference_type = std::ptrdiff_t;
    iterator() = default;
    explicit iterator(IMap* m) : m_(m) { ++*this; }
    const R& operator*() const { return *cur_; }
    iterator& operator++() {
      cur_ = m_->next();
      return *this;
    }
    void operator++(int) { ++*this; }
    bool operator==(std::default_sentinel_t) const { return !cur_; }

   private:
    IMap* m_ = nullptr;
    std::optional<R> cur_;
  };
  iterator begin() { return iterator(this); }
  std::default_sentinel_t end() { return {}; }

 private:
  void refill() {
    std::vector<Item> buf;
    while (!input_failed_ && inflight_.size() < window_ && it_ != std::ranges::end(items_)) {
      buf.clear();
      try {
        for (; it_ != std::ranges::end(items_) && buf.size() < chunksize_; ++it_) buf.push_back(*it_);
      } catch (...) {  // the items read before it still run
        input_error_ = std::current_exception();
        input_failed_ = true;
        if (buf.empty()) break;
      }
      detail::SendPins pins;  // SharedBytes items: kept open until the chunk settles
      auto core = engine_->submit(detail::make_chunk_call<F, Item, false>(fn_, buf.begin(), buf.end()));
      pins.keep_until_settled(&core, 1);
      Future<std::vector<R>> f(std::move(core));
      const std::size_t index = next_index_++;
      if constexpr (!Ordered) done_.push_when_done(detail::FutureAccess::core(f), index);
      inflight_.emplace_back(index, std::move(f));
    }
  }

  detail::PoolCore* engine_;
  F fn_;
  Range items_;
  std::ranges::iterator_t<Range> it_;
  std::size_t chunksize_, window_;
  // At most window_ (2 × workers): a vector, erased from the front or middle.
  std::vector<std::pair<std::size_t, Future<std::vector<R>>>> inflight_;
  detail::ChunkCursor<R> out_;
  std::size_t next_index_ = 0;
  detail::CompletionQueue done_;
  std::exception_ptr input_error_;  // what reading the input threw; raised after the results before it
  bool input_failed_ = false;       // the input is not read again
};

class Pool {
 public:
  explicit Pool(PoolOptions options = {}) : engine_(detail::engine_options(options, "PoolWorker")) {}
  explicit Pool(unsigned processes) : Pool(PoolOptions{.max_workers = processes}) {}
  // As Python's `with Pool() as p:` block: terminate.
  ~Pool() { engine_.terminate(); }

  // fn over items, results in order; chunksize 0 = Python's default.
  // (The blocking forms skip AsyncResult's per-chunk callbacks.)
  template <class F, std::ranges::input_range Range>
  auto map(F&& fn, const Range& items, std::size_t chunksize = 0) {
    return chunked<std::decay_t<F>, std::ranges::range_value_t<Range>, false>(fn, items, chunksize);
  }
  template <class F, std::ranges::input_range Range>
  auto starmap(F&& fn, const Range& items, std::size_t chunksize = 0) {
    return chunked<std::decay_t<F>, std::ranges::range_value_t<Range>, true>(fn, items, chunksize);
  }
  template <class F, std::ranges::input_range Range>
  auto map_async(F&& fn, const Range& items, std::size_t chunksize = 0) {
    return chunked_async<std::decay_t<F>, std::ranges::range_value_t<Range>, false>(fn, items, chunksize);
  }
  template <class F, std::ranges::input_range Range>
  auto starmap_async(F&& fn, const Range& items, std::size_t chunksize = 0) {
    return chunked_async<std::decay_t<F>, std::ranges::range_value_t<Range>, true>(fn, items, chunksize);
  }

  // Lazy, in order (imap) or as they finish (imap_unordered). The range is
  // read as results are consumed; it must outlive nothing (it is moved in).
  template <class F, std::ranges::input_range Range>
  auto imap(F fn, Range items, std::size_t chunksize = 1) {
    return IMap<F, Range, true>(engine_, fn, std::move(items), chunksize, 2 * engine_.size());
  }
  template <class F, std::ranges::input_range Range>
  auto imap_unordered(F fn, Range items, std::size_t chunksize = 1) {
    return IMap<F, Range, false>(engine_, fn, std::move(items), chunksize, 2 * engine_.size());
  }

  template <class F, class... A>
  auto apply(F&& fn, A&&... args) {
    return apply_async(std::forward<F>(fn), std::forward<A>(args)...).get();
  }
  template <class F, class... A>
  auto apply_async(F&& fn, A&&... args) {
    using R = detail::call_result_t<std::decay_t<F>, detail::task_arg_t<A>...>;
    detail::SendPins pins;  // SharedBytes arguments: kept open until the task settles
    auto core = engine_.submit(detail::make_call<std::decay_t<F>, detail::task_arg_t<A>...>(fn, args...));
    pins.keep_until_settled(&core, 1);
    return AsyncResult<R>({std::move(core)}, [](const std::vector<detail::FutureCore>& parts) -> R {
      if constexpr (!std::is_void_v<R>) return from_bytes<R>(parts.front().result_bytes());
    });
  }

  // A value sent once per worker, as mpi::PoolExecutor::share: tasks take
  // the Shared<T> handle and read the worker's one decoded copy
  // (pool_share.hpp has its lifetime).
  template <class T>
  Shared<T> share(T value) {
    static_assert(detail::is_sendable_v<T>, "mproc::Pool::share: the value must be serializable and default-constructible");
    return Shared<T>::make(std::move(value));
  }

  // No more tasks; workers exit when the queued ones are done.
  void close() {
    __atomic_store_n(&open_, false, __ATOMIC_RELAXED);
    engine_.shutdown(false, false);
  }
  // Stop the workers now; unfinished tasks fail with BrokenPool.
  void terminate() {
    __atomic_store_n(&open_, false, __ATOMIC_RELAXED);
    engine_.terminate();
  }
  // Wait for the workers to exit. Before close() or terminate() it would
  // wait for ever: ValueError, as Python's.
  void join() {
    if (__atomic_load_n(&open_, __ATOMIC_RELAXED)) throw ValueError("mproc::Pool::join: the pool is still running; call close() or terminate() first");
    engine_.join();
  }

  unsigned processes() const noexcept { return engine_.size(); }
  std::vector<pid_t> worker_pids() const { return engine_.worker_pids(); }
  std::size_t respawns() const noexcept { return engine_.respawns(); }

 private:
  template <class F, class Item, bool Star, class Range>
  auto chunked(const F& fn, const Range& items, std::size_t chunksize) {
    if (chunksize == 0) chunksize = detail::default_chunksize(items, engine_.size());
    // Large chunks are encoded from `items` when sent (lazy), so every chunk
    // is settled before this returns or throws, as Python's map does (its
    // MapResult is ready once all chunks are done, with the first error).
    using R = detail::stored_result_t<detail::chunk_result_t<F, Item, Star>>;
    auto chunks = detail::submit_chunks<F, Item, Star>(engine_, fn, items, chunksize, /*lazy=*/true);
    std::vector<R> out;
    std::exception_ptr first_error;
    for (auto& c : chunks) {
      if (first_error) {
        c.wait();
      } else {
        try {
          auto part = c.get();
          out.insert(out.end(), std::make_move_iterator(part.begin()), std::make_move_iterator(part.end()));
        } catch (...) {
          first_error = std::current_exception();
        }
      }
      c = {};  // its result's bytes go now: the next chunk's reuse that memory (no page faults)
    }
    if (first_error) std::rethrow_exception(first_error);
    return out;
  }
  template <class F, class Item, bool Star, class Range>
  auto chunked_async(const F& fn, const Range& items, std::size_t chunksize) {
    using R = detail::stored_result_t<detail::chunk_result_t<F, Item, Star>>;
    if (chunksize == 0) chunksize = detail::default_chunksize(items, engine_.size());
    auto chunks = detail::submit_chunks<F, Item, Star>(engine_, fn, items, chunksize);
    std::vector<detail::FutureCore> parts;
    parts.reserve(chunks.size());
    for (auto& c : chunks) parts.push_back(detail::FutureAccess::core(c));
    return AsyncResult<std::vector<R>>(std::move(parts), [](const std::vector<detail::FutureCore>& done) {
      std::vector<R> out;  // every part succeeded (get() checked)
      for (const auto& p : done) {
        auto part = from_bytes<std::vector<R>>(p.result_bytes());
        out.insert(out.end(), std::make_move_iterator(part.begin()), std::make_move_iterator(part.end()));
      }
      return out;
    });
  }
  detail::PoolCore engine_;
  // close() or terminate() not called yet. Atomic builtins (not <atomic>): a
  // flag read by join() in any thread; the engine orders the rest.
  bool open_ = true;
};

}  // namespace mproc
