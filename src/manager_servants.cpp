// The built-in servants of the manager server. They hold serialized bytes
// only, so the server needs no knowledge of the element types. Method
// arguments are read with the bounds-checked wire::Reader; a short or
// malformed argument list throws DeserializeError before anything changes.
#include <poll.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <list>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "manager_server.hpp"

namespace mproc::detail {

namespace {

using Clock = std::chrono::steady_clock;
constexpr auto kSlice = std::chrono::milliseconds(100);

std::string to_string(std::span<const std::byte> b) { return {reinterpret_cast<const char*>(b.data()), b.size()}; }
std::string_view view(std::span<const std::byte> b) { return {reinterpret_cast<const char*>(b.data()), b.size()}; }

[[noreturn]] void unknown_method(const Servant& s, std::string_view m) {
  throw ValueError("mproc::Manager: a " + s.kind + " has no method '" + std::string(m) + "'");
}

// A wire timeout (seconds; negative: forever) as a deadline. NaN counts as 0.
Clock::time_point deadline_of(double seconds) {
  if (seconds < 0 || seconds > 1e9) return Clock::time_point::max();
  if (!(seconds > 0)) return Clock::now();
  return Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
}

// Waits for pred under lk until the deadline, in slices that check whether
// the caller is still there. False on timeout.
template <class Pred>
bool wait_for(std::unique_lock<std::mutex>& lk, std::condition_variable& cv, Clock::time_point deadline,
              CallContext& ctx, Pred pred) {
  if (pred()) {
    // A request read after its sender died (it sat in the socket) must not
    // take an item or the lock either: one poll(2), cheap beside the round trip.
    if (ctx.peer_gone()) throw PeerGone{};
    return true;
  }
  if (!ctx.may_block) return false;
  while (!pred()) {
    const auto now = Clock::now();
    if (now >= deadline) return false;
    cv.wait_until(lk, std::min(deadline, now + kSlice));
    if (!pred() && ctx.peer_gone()) throw PeerGone{};
  }
  // It had to wait: a caller that left meanwhile must not take the item (or
  // the lock) it can no longer receive; another waiter gets it.
  if (ctx.peer_gone()) {
    cv.notify_all();
    throw PeerGone{};
  }
  return true;
}

std::int64_t norm_index(std::int64_t i, std::size_t n) {
  return i < 0 ? i + static_cast<std::int64_t>(n) : i;
}

// ---- dict: insertion-ordered --------------------------------------------------
class DictServant final : public Servant {
 public:
  void call(std::string_view m, wire::Reader& a, Bytes& out, CallContext&) override {
    std::lock_guard lk(mu_);
    if (m == "set") {
      auto k = a.bytes();
      auto v = a.bytes();
      set(view(k), to_string(v));
    } else if (m == "get") {
      auto it = index_.find(view(a.bytes()));
      put_found(out, it);
    } else if (m == "contains") {
      wire::put_u8(out, index_.count(view(a.bytes())) ? 1 : 0);
    } else if (m == "del") {
      auto it = index_.find(view(a.bytes()));
      wire::put_u8(out, it != index_.end() ? 1 : 0);
      if (it != index_.end()) erase(it);
    } else if (m == "pop") {
      auto it = index_.find(view(a.bytes()));
      put_found(out, it);
      if (it != index_.end()) erase(it);
    } else if (m == "setdefault") {
      auto k = a.bytes();
      auto v = a.bytes();
      auto it = index_.find(view(k));
      if (it == index_.end()) it = set(view(k), to_string(v));
      wire::put_str(out, it->second->second);
    } else if (m == "len") {
      wire::put_u64(out, entries_.size());
    } else if (m == "clear") {
      index_.clear();
      entries_.clear();
    } else if (m == "update") {
      // Validate the whole batch before applying any of it.
      const std::uint64_t n = a.u64();
      std::vector<std::pair<std::string_view, std::span<const std::byte>>> batch;
      batch.reserve(static_cast<std::size_t>(std::min<std::uint64_t>(n, a.left() / 16)));
      for (std::uint64_t i = 0; i < n; ++i) {
        auto k = a.bytes();
        batch.emplace_back(view(k), a.bytes());
      }
      index_.reserve(index_.size() + batch.size());
      for (auto& [k, v] : batch) set(k, to_string(v));
    } else if (m == "items" || m == "keys" || m == "values") {
      wire::put_u64(out, entries_.size());
      for (auto& [k, v] : entries_) {
        if (m != "values") wire::put_str(out, k);
        if (m != "keys") wire::put_str(out, v);
      }
    } else if (m == "get_many") {
      const std::uint64_t n = a.u64();
      std::vector<std::string_view> keys;
      for (std::uint64_t i = 0; i < n; ++i) keys.push_back(view(a.bytes()));
      wire::put_u64(out, keys.size());
      for (auto k : keys) put_found(out, index_.find(k));
    } else {
      unknown_method(*this, m);
    }
  }

 private:
  using Entries = std::list<std::pair<std::string, std::string>>;
  using Index = std::unordered_map<std::string_view, Entries::iterator>;
  Index::iterator set(std::string_view k, std::string v) {
    auto it = index_.find(k);
    if (it != index_.end()) {
      it->second->second = std::move(v);
      return it;
    }
    entries_.emplace_back(std::string(k), std::move(v));
    auto node = std::prev(entries_.end());
    return index_.emplace(std::string_view(node->first), node).first;
  }
  void erase(Index::iterator it) {
    auto node = it->second;
    index_.erase(it);
    entries_.erase(node);
  }
  void put_found(Bytes& out, Index::iterator it) {
    if (it == index_.end()) return wire::put_u8(out, 0);
    wire::put_u8(out, 1);
    wire::put_str(out, it->second->second);
  }
  std::mutex mu_;
  Entries entries_;
  Index index_;
};

// ---- list ---------------------------------------------------------------------
class ListServant final : public Servant {
 public:
  void call(std::string_view m, wire::Reader& a, Bytes& out, CallContext&) override {
    std::lock_guard lk(mu_);
    if (m == "append") {
      items_.push_back(to_string(a.bytes()));
    } else if (m == "extend") {
      const std::uint64_t n = a.u64();
      std::vector<std::string> add;
      for (std::uint64_t i = 0; i < n; ++i) add.push_back(to_string(a.bytes()));
      items_.insert(items_.end(), std::make_move_iterator(add.begin()), std::make_move_iterator(add.end()));
    } else if (m == "get") {
      wire::put_str(out, items_[at(a)]);
    } else if (m == "set") {
      const std::size_t i = at(a);
      items_[i] = to_string(a.bytes());
    } else if (m == "slice") {
      const auto n = static_cast<std::int64_t>(items_.size());
      auto bound = [&](std::int64_t dflt) {
        const bool has = a.u8() != 0;
        std::int64_t v = static_cast<std::int64_t>(a.u64());
        if (!has) return dflt;
        v = norm_index(v, items_.size());
        return std::clamp<std::int64_t>(v, 0, n);
      };
      const std::int64_t lo = bound(0), hi = bound(n);
      wire::put_u64(out, hi > lo ? static_cast<std::uint64_t>(hi - lo) : 0);
      for (std::int64_t i = lo; i < hi; ++i) wire::put_str(out, items_[static_cast<std::size_t>(i)]);
    } else if (m == "len") {
      wire::put_u64(out, items_.size());
    } else if (m == "pop") {
      if (items_.empty()) throw IndexError("pop from empty list");
      const std::size_t i = at(a);
      wire::put_str(out, items_[i]);
      items_.erase(items_.begin() + static_cast<std::ptrdiff_t>(i));
    } else if (m == "insert") {
      const auto n = static_cast<std::int64_t>(items_.size());
      const std::int64_t i = std::clamp<std::int64_t>(norm_index(static_cast<std::int64_t>(a.u64()), items_.size()), 0, n);
      items_.insert(items_.begin() + static_cast<std::ptrdiff_t>(i), to_string(a.bytes()));
    } else if (m == "remove" || m == "index") {
      auto it = std::find(items_.begin(), items_.end(), view(a.bytes()));
      if (it == items_.end()) throw ValueError("list." + std::string(m) + "(x): x not in list");
      if (m == "remove") items_.erase(it);
      else wire::put_u64(out, static_cast<std::uint64_t>(it - items_.begin()));
    } else if (m == "count") {
      wire::put_u64(out, static_cast<std::uint64_t>(std::count(items_.begin(), items_.end(), view(a.bytes()))));
    } else if (m == "clear") {
      items_.clear();
    } else {
      unknown_method(*this, m);
    }
  }

 private:
  std::size_t at(wire::Reader& a) {
    const std::int64_t i = norm_index(static_cast<std::int64_t>(a.u64()), items_.size());
    if (i < 0 || i >= static_cast<std::int64_t>(items_.size()))
      throw IndexError("list index out of range");
    return static_cast<std::size_t>(i);
  }
  std::mutex mu_;
  std::vector<std::string> items_;
};

// ---- set ----------------------------------------------------------------------
struct StrHash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};

class SetServant final : public Servant {
 public:
  void call(std::string_view m, wire::Reader& a, Bytes& out, CallContext&) override {
    std::lock_guard lk(mu_);
    if (m == "add") {
      wire::put_u8(out, items_.insert(to_string(a.bytes())).second ? 1 : 0);
    } else if (m == "discard") {
      auto it = items_.find(view(a.bytes()));
      wire::put_u8(out, it != items_.end() ? 1 : 0);
      if (it != items_.end()) items_.erase(it);
    } else if (m == "contains") {
      wire::put_u8(out, items_.find(view(a.bytes())) != items_.end() ? 1 : 0);
    } else if (m == "len") {
      wire::put_u64(out, items_.size());
    } else if (m == "clear") {
      items_.clear();
    } else if (m == "items") {
      wire::put_u64(out, items_.size());
      for (const auto& v : items_) wire::put_str(out, v);
    } else if (m == "update") {
      const std::uint64_t n = a.u64();
      std::vector<std::string> add;
      for (std::uint64_t i = 0; i < n; ++i) add.push_back(to_string(a.bytes()));
      for (auto& v : add) items_.insert(std::move(v));
    } else {
      unknown_method(*this, m);
    }
  }

 private:
  std::mutex mu_;
  std::unordered_set<std::string, StrHash, std::equal_to<>> items_;
};

// ---- value --------------------------------------------------------------------
class ValueServant final : public Servant {
 public:
  explicit ValueServant(std::string v) : value_(std::move(v)) {}
  void call(std::string_view m, wire::Reader& a, Bytes& out, CallContext&) override {
    std::lock_guard lk(mu_);
    if (m == "get") wire::put_str(out, value_);
    else if (m == "set") value_ = to_string(a.bytes());
    else unknown_method(*this, m);
  }

 private:
  std::mutex mu_;
  std::string value_;
};

// ---- queue --------------------------------------------------------------------
class QueueServant final : public Servant {
 public:
  explicit QueueServant(std::uint64_t maxsize) : maxsize_(maxsize) {}
  void call(std::string_view m, wire::Reader& a, Bytes& out, CallContext& ctx) override {
    std::unique_lock lk(mu_);
    if (m == "put" || m == "put_many") {
      const bool block = a.u8() != 0;
      const auto deadline = block ? deadline_of(a.f64()) : (a.f64(), Clock::now());
      std::vector<std::string> add;
      if (m == "put") {
        add.push_back(to_string(a.bytes()));
      } else {
        const std::uint64_t n = a.u64();
        for (std::uint64_t i = 0; i < n; ++i) add.push_back(to_string(a.bytes()));
      }
      for (auto& v : add) {
        if (!wait_for(lk, not_full_, deadline, ctx, [&] { return maxsize_ == 0 || items_.size() < maxsize_; }))
          throw Full("queue is full");
        items_.push_back(std::move(v));
        not_empty_.notify_one();
      }
    } else if (m == "get" || m == "get_many") {
      const std::uint64_t max_items = m == "get" ? 1 : a.u64();
      const bool block = a.u8() != 0;
      const auto deadline = block ? deadline_of(a.f64()) : (a.f64(), Clock::now());
      if (max_items == 0) return wire::put_u64(out, 0);
      if (!wait_for(lk, not_empty_, deadline, ctx, [&] { return !items_.empty(); })) throw Empty("queue is empty");
      if (m == "get") {
        wire::put_str(out, items_.front());
        items_.pop_front();
      } else {
        const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(max_items, items_.size()));
        wire::put_u64(out, n);
        for (std::size_t i = 0; i < n; ++i) {
          wire::put_str(out, items_.front());
          items_.pop_front();
        }
      }
      not_full_.notify_all();
    } else if (m == "qsize") {
      wire::put_u64(out, items_.size());
    } else if (m == "full") {
      wire::put_u8(out, maxsize_ != 0 && items_.size() >= maxsize_ ? 1 : 0);
    } else {
      unknown_method(*this, m);
    }
  }

 private:
  std::mutex mu_;
  std::condition_variable not_empty_, not_full_;
  std::deque<std::string> items_;
  std::uint64_t maxsize_;
};

// ---- lock, event ----------------------------------------------------------------
class LockServant final : public Servant {
 public:
  void call(std::string_view m, wire::Reader& a, Bytes& out, CallContext& ctx) override {
    std::unique_lock lk(mu_);
    if (m == "acquire") {
      const bool block = a.u8() != 0;
      const auto deadline = block ? deadline_of(a.f64()) : (a.f64(), Clock::now());
      const bool got = wait_for(lk, cv_, deadline, ctx, [&] { return !locked_; });
      if (got) locked_ = true;
      wire::put_u8(out, got ? 1 : 0);
    } else if (m == "release") {
      if (!locked_) throw ValueError("release of an unlocked lock");
      locked_ = false;
      cv_.notify_one();
    } else if (m == "locked") {
      wire::put_u8(out, locked_ ? 1 : 0);
    } else {
      unknown_method(*this, m);
    }
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool locked_ = false;
};

class EventServant final : public Servant {
 public:
  void call(std::string_view m, wire::Reader& a, Bytes& out, CallContext& ctx) override {
    std::unique_lock lk(mu_);
    if (m == "set") {
      flag_ = true;
      cv_.notify_all();
    } else if (m == "clear") {
      flag_ = false;
    } else if (m == "is_set") {
      wire::put_u8(out, flag_ ? 1 : 0);
    } else if (m == "wait") {
      wire::put_u8(out, wait_for(lk, cv_, deadline_of(a.f64()), ctx, [&] { return flag_; }) ? 1 : 0);
    } else {
      unknown_method(*this, m);
    }
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool flag_ = false;
};

// ---- barrier --------------------------------------------------------------------
class BarrierServant final : public Servant {
  struct Generation {
    bool released = false, reset = false;
  };

 public:
  explicit BarrierServant(std::uint64_t parties) : parties_(parties) {
    if (parties == 0) throw ValueError("Barrier: parties must be at least 1");
  }
  void call(std::string_view m, wire::Reader& a, Bytes& out, CallContext& ctx) override {
    std::unique_lock lk(mu_);
    if (m == "wait") {
      const auto deadline = deadline_of(a.f64());
      if (broken_) throw BrokenBarrierError("barrier is broken");
      const std::uint64_t index = count_++;
      if (count_ == parties_) {
        gen_->released = true;
        gen_ = std::make_shared<Generation>();
        count_ = 0;
        cv_.notify_all();
        return wire::put_u64(out, index);
      }
      auto mine = gen_;
      bool done = false;
      try {
        done = wait_for(lk, cv_, deadline, ctx, [&] { return mine->released || mine->reset || broken_; });
      } catch (const PeerGone&) {
        if (!mine->released && !mine->reset) break_barrier();  // a party left: the others would wait forever
        throw;
      }
      if (mine->released) return wire::put_u64(out, index);
      if (!done) break_barrier();
      throw BrokenBarrierError(mine->reset ? "barrier was reset while waiting" : "barrier is broken");
    } else if (m == "abort") {
      break_barrier();
    } else if (m == "reset") {
      if (count_ > 0) gen_->reset = true;
      gen_ = std::make_shared<Generation>();
      count_ = 0;
      broken_ = false;
      cv_.notify_all();
    } else if (m == "parties") {
      wire::put_u64(out, parties_);
    } else if (m == "n_waiting") {
      wire::put_u64(out, count_);
    } else if (m == "broken") {
      wire::put_u8(out, broken_ ? 1 : 0);
    } else {
      unknown_method(*this, m);
    }
  }

 private:
  void break_barrier() {
    broken_ = true;
    count_ = 0;
    cv_.notify_all();
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::uint64_t parties_, count_ = 0;
  bool broken_ = false;
  std::shared_ptr<Generation> gen_ = std::make_shared<Generation>();
};

// ---- namespace ------------------------------------------------------------------
class NamespaceServant final : public Servant {
 public:
  void call(std::string_view m, wire::Reader& a, Bytes& out, CallContext&) override {
    std::lock_guard lk(mu_);
    if (m == "set") {
      std::string name(a.str());
      std::string type(a.str());
      values_[std::move(name)] = {std::move(type), to_string(a.bytes())};
    } else if (m == "get") {
      const std::string_view name = a.str();
      auto it = values_.find(name);
      if (it == values_.end())
        throw AttributeError("Namespace has no attribute '" + std::string(name) + "'");
      wire::put_str(out, it->second.first);
      wire::put_str(out, it->second.second);
    } else if (m == "has") {
      wire::put_u8(out, values_.count(a.str()) ? 1 : 0);
    } else if (m == "del") {
      auto it = values_.find(a.str());
      wire::put_u8(out, it != values_.end() ? 1 : 0);
      if (it != values_.end()) values_.erase(it);
    } else if (m == "names") {
      wire::put_u64(out, values_.size());
      for (const auto& [k, v] : values_) wire::put_str(out, k);
    } else {
      unknown_method(*this, m);
    }
  }

 private:
  std::mutex mu_;
  std::map<std::string, std::pair<std::string, std::string>, std::less<>> values_;
};

}  // namespace

bool CallContext::peer_gone() const {
  if (peer_fd < 0) return false;
  pollfd p{peer_fd, POLLRDHUP, 0};
  return ::poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
}

std::unique_ptr<Servant> make_builtin_servant(std::string_view kind, wire::Reader& init) {
  if (kind == "dict") return std::make_unique<DictServant>();
  if (kind == "list") return std::make_unique<ListServant>();
  if (kind == "set") return std::make_unique<SetServant>();
  if (kind == "value") return std::make_unique<ValueServant>(to_string(init.bytes()));
  if (kind == "queue") return std::make_unique<QueueServant>(init.u64());
  if (kind == "lock") return std::make_unique<LockServant>();
  if (kind == "event") return std::make_unique<EventServant>();
  if (kind == "barrier") return std::make_unique<BarrierServant>(init.u64());
  if (kind == "namespace") return std::make_unique<NamespaceServant>();
  throw ValueError("mproc::Manager: unknown object kind '" + std::string(kind) + "'");
}

}  // namespace mproc::detail
