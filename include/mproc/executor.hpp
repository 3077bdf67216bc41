// ProcessPoolExecutor: concurrent.futures.ProcessPoolExecutor, where a task
// that crashes or runs past its deadline fails alone (WorkerCrashed /
// TaskTimeout) and the pool goes on.
//
//   mproc::ProcessPoolExecutor ex({.max_workers = 4, .task_timeout = 5s});
//   auto f = ex.submit(largest_prime_factor, 100913100913ULL);
//   f.get();
#pragma once
#include <cstddef>
#include <optional>
#include <type_traits>
#include <utility>
#include <vector>

#include "mproc/call.hpp"
#include "mproc/detail/deadline.hpp"
#include "mproc/pool_share.hpp"
#include "mproc/shared_bytes.hpp"
#include "mproc/detail/pool_core.hpp"
#include "mproc/futures.hpp"

namespace mproc {

// A function and its arguments, for an initializer:
// `PoolOptions{.initializer = mproc::call(setup, "db.sqlite")}`.
template <class F, class... A>
detail::Call call(F&& fn, A&&... args) {
  return detail::make_call<std::decay_t<F>, detail::task_arg_t<A>...>(fn, args...);
}

struct PoolOptions {
  std::optional<unsigned> max_workers = {};  // unset: cpu_count(); 0 is a ValueError, as Python's
  unsigned max_tasks_per_child = 0;      // recycle a worker after this many tasks
  std::size_t max_memory_per_child = 0;  // recycle a worker whose RSS passed this (bytes)
  std::optional<detail::Call> initializer = {};
  Timeout task_timeout = {};  // per task (`5s`); submit can override
  std::optional<StartMethod> start_method = {};          // Python's mp_context
  std::size_t max_result_bytes = 0;  // a larger result fails its task (ResultTooLarge); 0: 1 GiB
  // A task timeline (Chrome trace JSON, for ui.perfetto.dev or chrome://tracing):
  // a lane per worker, a span per task, markers for crashes, timeouts and
  // respawns. "%p" becomes the pid, "%n" the pool's number. Default: none,
  // or $MPROC_TRACE when set.
  std::optional<std::string> trace_file = {};
};

struct SubmitOptions {
  Timeout timeout = {};  // overrides PoolOptions::task_timeout
};

namespace detail {
inline EngineOptions engine_options(const PoolOptions& o, const char* name) {
  EngineOptions e;
  if (o.max_workers && *o.max_workers == 0)
    throw ValueError("mproc: max_workers must be at least 1 (leave it unset for cpu_count())");
  e.workers = o.max_workers.value_or(0);
  e.start_method = o.start_method;
  e.initializer = o.initializer;
  e.max_tasks_per_child = o.max_tasks_per_child;
  e.max_memory_per_child = o.max_memory_per_child;
  e.task_timeout = o.task_timeout;
  e.trace_file = o.trace_file;
  e.max_result_bytes = o.max_result_bytes;
  e.name = name;
  return e;
}

// One chunk's results handed out in order, one at a time (MapResults, IMap).
template <class R>
class ChunkCursor {
 public:
  bool empty() const noexcept { return pos_ == part_.size(); }
  void load(std::vector<R> part) noexcept {
    part_ = std::move(part);
    pos_ = 0;
  }
  R take() { return std::move(part_[pos_++]); }
  void clear() noexcept { load({}); }

 private:
  std::vector<R> part_;
  std::size_t pos_ = 0;
};

template <class R>
std::vector<R> concat_chunks(std::vector<Future<std::vector<R>>>& chunks, Deadline deadline) {
  std::vector<R> out;
  for (auto& c : chunks) {
    auto part = c.result(deadline.left());
    out.insert(out.end(), std::make_move_iterator(part.begin()), std::make_move_iterator(part.end()));
  }
  return out;
}

// Submits fn over items in chunks; each future holds one chunk's results.
// Any core with submit_many(calls) → FutureCores serves (PoolCore, mpi's).
// lazy (the local PoolCore only, and only when the items outlive every
// chunk: Pool::map waits for all of them): large chunks are encoded when
// sent, straight into their worker's arena (PayloadEncoder).
template <class F, class Item, bool Star, class Range, class AnyEngine>
auto submit_chunks(AnyEngine& engine, const F& fn, const Range& items, std::size_t chunksize, bool lazy = false) {
  using R = stored_result_t<chunk_result_t<F, Item, Star>>;
  std::vector<Future<std::vector<R>>> chunks;
  if (chunksize == 0) chunksize = 1;
  auto it = std::ranges::begin(items);
  const auto end = std::ranges::end(items);
  std::vector<Item> buf;
  std::vector<Call> calls;
  SendPins pins;  // SharedBytes items: kept open until their chunk settles
  while (it != end) {
    if constexpr (std::ranges::forward_range<const Range> &&
                  std::is_same_v<std::remove_cvref_t<std::ranges::range_reference_t<const Range>>, Item>) {
      // Serialized from the items themselves: no copy of a large item first.
      auto stop = it;
      for (std::size_t n = 0; stop != end && n < chunksize; ++n) ++stop;
      bool large = false;  // a large chunk goes lazy; a small one is encoded now, as before
      if constexpr (std::is_lvalue_reference_v<std::ranges::range_reference_t<const Range>>) {  // stored items
        if (lazy) {
          if constexpr (contiguous_item<Item>::value) {
            std::size_t bytes = 0;
            for (auto p = it; p != stop; ++p)
              bytes += static_cast<const Item&>(*p).size() * sizeof(typename Item::value_type);
            large = bytes >= kLargePayloadBytes;
          } else {  // unknown without encoding: the first chunk (encoded now) tells for the others
            large = !calls.empty() && calls.front().payload.size() >= kLargePayloadBytes;
          }
        }
        if (large) calls.push_back(make_lazy_chunk_call<F, Item, Star>(fn, it, stop));
      }
      if (!large) calls.push_back(make_chunk_call<F, Item, Star>(fn, it, stop));
      it = stop;
      continue;
    }
    buf.clear();
    for (; it != end && buf.size() < chunksize; ++it) buf.push_back(*it);
    calls.push_back(make_chunk_call<F, Item, Star>(fn, buf.begin(), buf.end()));
  }
  auto cores = engine.submit_many(std::move(calls));
  pins.keep_until_settled(cores.data(), cores.size());
  for (auto& core : cores) chunks.emplace_back(std::move(core));
  return chunks;
}

// Python's default: len / (4 × workers), rounded up.
template <class Range>
std::size_t default_chunksize(const Range& items, unsigned workers) {
  if constexpr (std::ranges::sized_range<Range>) {
    auto n = static_cast<std::size_t>(std::ranges::size(items));
    const std::size_t d = 4u * (workers > 0 ? workers : 1u);
    return n > d ? (n + d - 1) / d : 1;
  } else {
    return 1;
  }
}
}  // namespace detail

// What ProcessPoolExecutor::imap returns: Python's Executor.map iterator.
// Every chunk was submitted by the call; the results come out in input
// order, each waited for within what is left of the call's timeout. A task's
// error, or TimeoutError, is raised at its position, after every result
// before it was handed out; the iteration then ends, and the chunks not yet
// started are cancelled, as Python's map cancels its futures. Dropping the
// range before its end cancels them too. Every chunk's future settles: done,
// failed or cancelled (the engine settles those it has started).
//
//   next(): result ─┬─ (more) ─> next()
//                   ├─ end ─────> nullopt for ever
//                   └─ error ───> cancel the rest, rethrow ─> end
template <class R>
class MapResults {
 public:
  MapResults(std::vector<Future<std::vector<R>>> chunks, detail::Deadline deadline)
      : chunks_(std::move(chunks)), deadline_(deadline) {}
  MapResults(MapResults&&) = delete;  // iterators point into it; returned by guaranteed elision
  ~MapResults() { cancel_from(next_chunk_); }

  // The next result, or nullopt at the end.
  std::optional<R> next() {
    while (part_.empty()) {
      if (next_chunk_ == chunks_.size()) return std::nullopt;
      try {
        part_.load(chunks_[next_chunk_].result(left()));
      } catch (...) {
        cancel_from(next_chunk_);
        next_chunk_ = chunks_.size();
        part_.clear();
        throw;
      }
      ++next_chunk_;
    }
    return part_.take();
  }
  // The rest, as ProcessPoolExecutor::map returns them.
  std::vector<R> collect() {
    std::vector<R> out;
    while (auto r = next()) out.push_back(std::move(*r));
    return out;
  }
  operator std::vector<R>() && { return collect(); }  // NOLINT: as map's result

  class iterator {
   public:
    using value_type = R;
    using difference_type = std::ptrdiff_t;
    iterator() = default;
    explicit iterator(MapResults* m) : m_(m) { ++*this; }
    R& operator*() const { return *cur_; }
    iterator& operator++() {
      cur_ = m_->next();
      return *this;
    }
    void operator++(int) { ++*this; }
    bool operator==(std::default_sentinel_t) const { return !cur_; }

   private:
    MapResults* m_ = nullptr;
    mutable std::optional<R> cur_;
  };
  iterator begin() { return iterator(this); }
  std::default_sentinel_t end() { return {}; }

 private:
  Timeout left() const { return deadline_.left(); }
  void cancel_from(std::size_t i) {
    for (; i < chunks_.size(); ++i) chunks_[i].cancel();
  }

  std::vector<Future<std::vector<R>>> chunks_;
  detail::Deadline deadline_;
  std::size_t next_chunk_ = 0;
  detail::ChunkCursor<R> part_;  // the chunk being handed out
};

class ProcessPoolExecutor {
 public:
  explicit ProcessPoolExecutor(PoolOptions options = {})
      : engine_(detail::engine_options(options, "ExecutorWorker")) {}
  explicit ProcessPoolExecutor(unsigned max_workers) : ProcessPoolExecutor(PoolOptions{.max_workers = max_workers}) {}
  ~ProcessPoolExecutor() = default;  // the engine shuts down, waiting

  template <class F, class... A>
    requires(!std::is_same_v<std::decay_t<F>, SubmitOptions>)
  auto submit(F&& fn, A&&... args) {
    return submit(SubmitOptions{}, std::forward<F>(fn), std::forward<A>(args)...);
  }
  template <class F, class... A>
  auto submit(SubmitOptions options, F&& fn, A&&... args) {
    using R = detail::call_result_t<std::decay_t<F>, detail::task_arg_t<A>...>;
    detail::SendPins pins;  // SharedBytes arguments: kept open until the task settles
    auto call = detail::make_call<std::decay_t<F>, detail::task_arg_t<A>...>(fn, args...);
    auto core = engine_.submit(std::move(call), options.timeout);
    pins.keep_until_settled(&core, 1);
    return Future<R>(std::move(core));
  }
  // A value sent once per worker; tasks take the handle (pool_share.hpp).
  template <class T>
  Shared<T> share(T value) {
    static_assert(detail::is_sendable_v<T>, "mproc::share: the value must be serializable and default-constructible");
    return Shared<T>::make(std::move(value));
  }

  // Results in input order, all collected (a std::vector). Throws the first
  // task's error, or TimeoutError when the results are not all in within
  // timeout (from this call); either way the chunks not yet started are
  // cancelled. For Python's lazy iterator, see imap.
  template <class F, std::ranges::input_range Range>
  auto map(F&& fn, const Range& items, Timeout timeout = std::nullopt, std::size_t chunksize = 1) {
    return imap(std::forward<F>(fn), items, timeout, chunksize).collect();
  }
  // Python's Executor.map as it is: submits everything now and returns a
  // lazy range (MapResults) of the results in input order, so the results
  // before a task error or the timeout are usable:
  //   for (int r : ex.imap(f, items, 5s)) use(r);   // ... then TimeoutError
  template <class F, std::ranges::input_range Range>
  auto imap(F&& fn, const Range& items, Timeout timeout = std::nullopt, std::size_t chunksize = 1) {
    using Item = std::ranges::range_value_t<Range>;
    using R = detail::stored_result_t<detail::chunk_result_t<std::decay_t<F>, Item, false>>;
    const auto deadline = detail::deadline_after(timeout);
    return MapResults<R>(detail::submit_chunks<std::decay_t<F>, Item, false>(engine_, fn, items, chunksize), deadline);
  }

  // No new tasks. wait: block until running and pending tasks are done and
  // the workers have exited. cancel_futures: cancel the pending ones.
  void shutdown(bool wait = true, bool cancel_futures = false) { engine_.shutdown(wait, cancel_futures); }

  unsigned max_workers() const noexcept { return engine_.size(); }
  std::vector<pid_t> worker_pids() const { return engine_.worker_pids(); }
  std::size_t respawns() const noexcept { return engine_.respawns(); }

 private:
  detail::PoolCore engine_;
};

}  // namespace mproc
