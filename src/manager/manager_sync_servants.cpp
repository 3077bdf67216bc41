// The queue and synchronisation servants of the manager server (queue,
// joinable queue, lock, rlock, semaphore, condition, event, barrier). A
// blocking handler waits with wait_for (manager_servants.hpp): in slices
// that notice a caller that has gone, which then takes nothing.
//
// A holder that dies keeps what it holds (a lock, an rlock, semaphore
// units), as CPython's manager does: the server cannot tell a dead holder
// from a slow one, since a proxy's calls use any of its process's pooled
// connections.
#include <algorithm>
#include <deque>
#include <string>
#include <vector>

#include "manager/manager_servants.hpp"

namespace mproc::detail {

namespace {

using proto::Tag;
using View = std::string_view;
using Deadline = ServerClock::time_point;

// ---- queue, joinable queue --------------------------------------------------------
// unfinished_: items put and not yet marked done (only a joinable queue's
// proxy has task_done/join; the count costs nothing for a plain queue).
template <class P>
class QueueServant final : public ServantOf<P, QueueServant<P>> {
 public:
  explicit QueueServant(std::uint64_t maxsize) : maxsize_(maxsize) {}

  void on(Tag<"put">, ServantCall& c, Deadline deadline, View v) { put(c, deadline, std::span<const View>(&v, 1)); }
  void on(Tag<"put_many">, ServantCall& c, Deadline deadline, const std::vector<View>& values) { put(c, deadline, values); }
  std::string on(Tag<"get">, ServantCall& c, Deadline deadline) {
    wait_not_empty(c, deadline);
    std::string v = std::move(items_.front());
    items_.pop_front();
    not_full_.notify_all();
    return v;
  }
  std::vector<std::string> on(Tag<"get_many">, ServantCall& c, std::uint64_t max_items, Deadline deadline) {
    std::vector<std::string> out;
    if (max_items == 0) return out;
    wait_not_empty(c, deadline);
    const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(max_items, items_.size()));
    out.reserve(n);
    for (std::size_t i = 0; i < n; ++i) {
      out.push_back(std::move(items_.front()));
      items_.pop_front();
    }
    not_full_.notify_all();
    return out;
  }
  std::uint64_t on(Tag<"qsize">, ServantCall&) { return items_.size(); }
  bool on(Tag<"full">, ServantCall&) { return maxsize_ != 0 && items_.size() >= maxsize_; }
  void on(Tag<"task_done">, ServantCall&) {
    if (unfinished_ == 0) throw ValueError("task_done() called too many times");
    if (--unfinished_ == 0) all_done_.notify_all();
  }
  bool on(Tag<"join">, ServantCall& c, Deadline deadline) {
    return wait_for(c, all_done_, deadline, [&] { return unfinished_ == 0; });
  }

 private:
  void put(ServantCall& c, Deadline deadline, std::span<const View> values) {
    for (View v : values) {
      if (!wait_for(c, not_full_, deadline, [&] { return maxsize_ == 0 || items_.size() < maxsize_; }))
        throw Full("queue is full");
      items_.emplace_back(v);
      ++unfinished_;
      not_empty_.notify_one();
    }
  }
  void wait_not_empty(ServantCall& c, Deadline deadline) {
    if (!wait_for(c, not_empty_, deadline, [&] { return !items_.empty(); })) throw Empty("queue is empty");
  }
  std::condition_variable not_empty_, not_full_, all_done_;
  std::deque<std::string> items_;
  std::uint64_t maxsize_;
  std::uint64_t unfinished_ = 0;
};

// ---- lock -----------------------------------------------------------------------
class LockServant final : public ServantOf<proto::LockProtocol, LockServant> {
 public:
  explicit LockServant(proto::None) {}
  bool on(Tag<"acquire">, ServantCall& c, Deadline deadline) {
    const bool got = wait_for(c, cv_, deadline, [&] { return !locked_; });
    if (got) locked_ = true;
    return got;
  }
  void on(Tag<"release">, ServantCall&) {
    if (!locked_) throw ValueError("release of an unlocked lock");
    locked_ = false;
    cv_.notify_one();
  }
  bool on(Tag<"locked">, ServantCall&) { return locked_; }

 private:
  std::condition_variable cv_;
  bool locked_ = false;
};

// ---- rlock, condition -------------------------------------------------------------
// A recursive lock owned by a caller (OwnerId: process + thread).
//   free (depth 0) --acquire(who)--> held by who (depth 1) --acquire(who)--> depth+1
//   held --release(who), depth 1--> free        release by another: ValueError
template <class P, class Impl>
class OwnedLockServant : public ServantOf<P, Impl> {
 public:
  bool on(Tag<"acquire">, ServantCall& c, OwnerId who, Deadline deadline) {
    if (depth_ > 0 && owner_ == who) {
      ++depth_;
      return true;
    }
    const bool got = wait_for(c, cv_, deadline, [&] { return depth_ == 0; });
    if (got) {
      owner_ = who;
      depth_ = 1;
    }
    return got;
  }
  void on(Tag<"release">, ServantCall&, OwnerId who) {
    require_owner(who, "release");
    if (--depth_ == 0) cv_.notify_all();
  }
  bool on(Tag<"locked">, ServantCall&) { return depth_ > 0; }

 protected:
  void require_owner(OwnerId who, const char* op) const {
    if (depth_ == 0 || !(owner_ == who)) throw ValueError(fmt::format("cannot {} un-acquired lock", op));
  }
  std::condition_variable cv_;  // the lock's and (Condition) its waiters'
  OwnerId owner_;
  std::uint64_t depth_ = 0;
};

class RLockServant final : public OwnedLockServant<proto::RLockProtocol, RLockServant> {
 public:
  explicit RLockServant(proto::None) {}
  using OwnedLockServant::on;
};

// Condition: its waiters hold tickets; notify(n) hands out the n oldest.
//   wait(who): owner only; lock released fully --> ticket queued
//              --notify/timeout--> lock taken back at the same depth (waits
//              for it as long as needed) --> reply (notified or not)
class ConditionServant final : public OwnedLockServant<proto::ConditionProtocol, ConditionServant> {
 public:
  explicit ConditionServant(proto::None) {}
  using OwnedLockServant::on;

  bool on(Tag<"wait">, ServantCall& c, OwnerId who, Deadline deadline) {
    require_owner(who, "wait on");
    const std::uint64_t saved = std::exchange(depth_, 0);
    cv_.notify_all();
    const std::uint64_t ticket = next_ticket_++;
    waiting_.push_back(ticket);
    auto queued = [&] { return std::find(waiting_.begin(), waiting_.end(), ticket) != waiting_.end(); };
    bool notified = false;
    try {
      notified = wait_for(c, cv_, deadline, [&] { return !queued(); });
    } catch (const PeerGone&) {
      std::erase(waiting_, ticket);
      throw;
    }
    if (!notified) std::erase(waiting_, ticket);
    // Back to the caller's depth; a caller that leaves meanwhile holds nothing.
    // (False only where waits are off, under the fuzzer: never take a held lock.)
    if (!wait_for(c, cv_, Deadline::max(), [&] { return depth_ == 0; }))
      throw TimeoutError("Condition.wait: the lock is held by another (waits are off)");
    owner_ = who;
    depth_ = saved;
    return notified;
  }
  void on(Tag<"notify">, ServantCall&, OwnerId who, std::uint64_t n) {
    require_owner(who, "notify on");
    const auto k = static_cast<std::ptrdiff_t>(std::min<std::uint64_t>(n, waiting_.size()));
    waiting_.erase(waiting_.begin(), waiting_.begin() + k);
    cv_.notify_all();
  }
  void on(Tag<"notify_all">, ServantCall&, OwnerId who) {
    require_owner(who, "notify on");
    waiting_.clear();
    cv_.notify_all();
  }

 private:
  std::deque<std::uint64_t> waiting_;
  std::uint64_t next_ticket_ = 0;
};

// ---- semaphore, bounded semaphore --------------------------------------------------
class SemaphoreServant final : public ServantOf<proto::SemaphoreProtocol, SemaphoreServant> {
 public:
  explicit SemaphoreServant(std::pair<std::uint64_t, bool> init)
      : value_(init.first), bound_(init.second ? init.first : UINT64_MAX) {}
  bool on(Tag<"acquire">, ServantCall& c, Deadline deadline) {
    const bool got = wait_for(c, cv_, deadline, [&] { return value_ > 0; });
    if (got) --value_;
    return got;
  }
  void on(Tag<"release">, ServantCall&, std::uint64_t n) {
    if (n > bound_ - value_) throw ValueError("Semaphore released too many times");
    value_ += n;
    cv_.notify_all();
  }
  std::uint64_t on(Tag<"get_value">, ServantCall&) { return value_; }

 private:
  std::condition_variable cv_;
  std::uint64_t value_, bound_;
};

// ---- event ----------------------------------------------------------------------
class EventServant final : public ServantOf<proto::EventProtocol, EventServant> {
 public:
  explicit EventServant(proto::None) {}
  void on(Tag<"set">, ServantCall&) {
    flag_ = true;
    cv_.notify_all();
  }
  void on(Tag<"clear">, ServantCall&) { flag_ = false; }
  bool on(Tag<"is_set">, ServantCall&) { return flag_; }
  bool on(Tag<"wait">, ServantCall& c, Deadline deadline) { return wait_for(c, cv_, deadline, [&] { return flag_; }); }

 private:
  std::condition_variable cv_;
  bool flag_ = false;
};

// ---- barrier --------------------------------------------------------------------
class BarrierServant final : public ServantOf<proto::BarrierProtocol, BarrierServant> {
  struct Generation {
    bool released = false, reset = false;
  };

 public:
  explicit BarrierServant(std::uint64_t parties) : parties_(parties) {
    if (parties == 0) throw ValueError("Barrier: parties must be at least 1");
  }
  std::uint64_t on(Tag<"wait">, ServantCall& c, Deadline deadline) {
    if (broken_) throw BrokenBarrierError("barrier is broken");
    const std::uint64_t index = count_++;
    if (count_ == parties_) {
      gen_->released = true;
      gen_ = std::make_shared<Generation>();
      count_ = 0;
      cv_.notify_all();
      return index;
    }
    auto mine = gen_;
    bool done = false;
    try {
      done = wait_for(c, cv_, deadline, [&] { return mine->released || mine->reset || broken_; });
    } catch (const PeerGone&) {
      if (!mine->released && !mine->reset) break_barrier();  // a party left: the others would wait forever
      throw;
    }
    if (mine->released) return index;
    if (!done) break_barrier();
    throw BrokenBarrierError(mine->reset ? "barrier was reset while waiting" : "barrier is broken");
  }
  void on(Tag<"abort">, ServantCall&) { break_barrier(); }
  void on(Tag<"reset">, ServantCall&) {
    if (count_ > 0) gen_->reset = true;
    gen_ = std::make_shared<Generation>();
    count_ = 0;
    broken_ = false;
    cv_.notify_all();
  }
  std::uint64_t on(Tag<"parties">, ServantCall&) { return parties_; }
  std::uint64_t on(Tag<"n_waiting">, ServantCall&) { return count_; }
  bool on(Tag<"broken">, ServantCall&) { return broken_; }

 private:
  void break_barrier() {
    broken_ = true;
    count_ = 0;
    cv_.notify_all();
  }
  std::condition_variable cv_;
  std::uint64_t parties_, count_ = 0;
  bool broken_ = false;
  std::shared_ptr<Generation> gen_ = std::make_shared<Generation>();
};

constexpr BuiltinKind kSyncKinds[] = {
    builtin_kind<proto::QueueProtocol, QueueServant<proto::QueueProtocol>>(),
    builtin_kind<proto::JoinableQueueProtocol, QueueServant<proto::JoinableQueueProtocol>>(),
    builtin_kind<proto::LockProtocol, LockServant>(),
    builtin_kind<proto::RLockProtocol, RLockServant>(),
    builtin_kind<proto::SemaphoreProtocol, SemaphoreServant>(),
    builtin_kind<proto::ConditionProtocol, ConditionServant>(),
    builtin_kind<proto::EventProtocol, EventServant>(),
    builtin_kind<proto::BarrierProtocol, BarrierServant>(),
};

}  // namespace

std::span<const BuiltinKind> sync_kinds() { return kSyncKinds; }

}  // namespace mproc::detail
