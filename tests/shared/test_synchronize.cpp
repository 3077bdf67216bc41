// Process-shared Lock, RLock, Semaphore, BoundedSemaphore, Event, Condition,
// Barrier: exclusion and wake-ups across processes of every start method,
// holders killed while holding, timeouts, and misuse errors.
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <mutex>
#include <set>
#include <stdexcept>
#include <thread>

#include "mproc/process.hpp"
#include "mproc/sharedctypes.hpp"
#include "mproc/synchronize.hpp"
#include "shared_test_util.hpp"
#include "support.hpp"

namespace {

using namespace sharedtest;
using mproc::Barrier;
using mproc::Condition;
using mproc::Event;
using mproc::Lock;
using mproc::RLock;
using mproc::Semaphore;

constexpr int kIncrements = 2000;

// Read-modify-write with a yield in the middle: loses updates without the lock.
void increment_under(Lock lock, mproc::Array<long> cell) {
  for (int i = 0; i < kIncrements; ++i) {
    std::scoped_lock g(lock);
    long v = cell[0];
    if (i % 64 == 0) std::this_thread::yield();
    cell[0] = v + 1;
  }
}

class SyncByMethod : public testing::TestWithParam<StartMethod> {};

TEST_P(SyncByMethod, LockExcludesAcrossProcesses) {
  Lock lock;
  mproc::Array<long> cell(1, mproc::no_lock);
  std::vector<mproc::Process> kids;
  for (int i = 0; i < 3; ++i) kids.emplace_back(with(GetParam()), increment_under, lock, cell);
  for (auto& k : kids) k.start();
  increment_under(lock, cell);
  for (auto& k : kids) join_ok(k);
  EXPECT_EQ(cell[0], 4L * kIncrements);
}

void hold_and_hang(Lock lock, Event held) {
  lock.lock();
  held.set();
  for (;;) ::pause();
}

TEST_P(SyncByMethod, LockHolderKilledNextAcquirerProceedsAndIsTold) {
  Lock lock;
  Event held;
  mproc::Process p(with(GetParam()), hold_and_hang, lock, held);
  p.start();
  ASSERT_TRUE(held.wait(60s));
  EXPECT_FALSE(lock.try_lock()) << "the child holds it";
  p.kill();
  p.join();
  ASSERT_TRUE(lock.acquire(true, 30s)) << "a dead holder wedged the lock";
  EXPECT_TRUE(lock.owner_died());
  lock.release();
  std::unique_lock again(lock);  // consistent again: usable as any mutex
  EXPECT_FALSE(lock.owner_died());
}

void set_after_wait(Event go, Event done) {
  if (!go.wait(60s)) ::_exit(2);
  done.set();
}

TEST_P(SyncByMethod, EventWakesWaiterInAnotherProcess) {
  Event go, done;
  mproc::Process p(with(GetParam()), set_after_wait, go, done);
  p.start();
  EXPECT_FALSE(done.wait(20ms));
  go.set();
  EXPECT_TRUE(done.wait(60s));
  join_ok(p);
  EXPECT_TRUE(go.is_set());
  go.clear();
  EXPECT_FALSE(go.is_set());
  EXPECT_FALSE(go.wait(0ns));
}

void release_n(Semaphore sem, int n) {
  for (int i = 0; i < n; ++i) sem.release();
}

TEST_P(SyncByMethod, SemaphoreCountsAcrossProcesses) {
  Semaphore sem(0);
  EXPECT_FALSE(sem.acquire(false));
  EXPECT_FALSE(sem.acquire(true, 10ms));
  mproc::Process p(with(GetParam()), release_n, sem, 5);
  p.start();
  for (int i = 0; i < 5; ++i) EXPECT_TRUE(sem.acquire(true, 60s)) << i;
  join_ok(p);
  EXPECT_EQ(sem.get_value(), 0u);
  EXPECT_FALSE(sem.try_lock());
}

struct CondShared {
  Condition cond;
  mproc::Value<int> stage{0, mproc::no_lock};
  template <class A>
  void serialize(A& ar) {
    ar(cond, stage);
  }
};

// Waits for stage 1, answers with stage 2.
void cond_responder(CondShared s) {
  std::unique_lock g(s.cond);
  if (!s.cond.wait_for([&] { return s.stage.load() == 1; }, 60s)) ::_exit(2);
  s.stage.store(2);
  s.cond.notify_all();
}

TEST_P(SyncByMethod, ConditionNotifiesAcrossProcesses) {
  CondShared s;
  mproc::Process p(with(GetParam()), cond_responder, s);
  p.start();
  {
    std::unique_lock g(s.cond);
    s.stage.store(1);
    s.cond.notify_all();
    EXPECT_TRUE(s.cond.wait_for([&] { return s.stage.load() == 2; }, 60s));
  }
  join_ok(p);
}

void barrier_rounds(Barrier b, mproc::Array<int> seen, int rounds) {
  for (int r = 0; r < rounds; ++r) {
    unsigned idx = b.wait(60s);
    seen.fetch_add(static_cast<std::size_t>(r) * b.parties() + idx, 1);
  }
}

TEST_P(SyncByMethod, BarrierReleasesAllPartiesEachRoundWithUniqueIndices) {
  constexpr int kRounds = 5;
  Barrier b(3);
  mproc::Array<int> seen(3 * kRounds, 0);
  std::vector<mproc::Process> kids;
  for (int i = 0; i < 2; ++i) kids.emplace_back(with(GetParam()), barrier_rounds, b, seen, kRounds);
  for (auto& k : kids) k.start();
  barrier_rounds(b, seen, kRounds);
  for (auto& k : kids) join_ok(k);
  for (int i = 0; i < 3 * kRounds; ++i) EXPECT_EQ(seen[i], 1) << "round " << i / 3 << " index " << i % 3;
  EXPECT_FALSE(b.broken());
}

// The action of a Barrier has no arguments (Python's has none either): it
// finds its log by the test process's pid, which children of every start
// method know as their parent's (the environment would not reach a
// forkserver child).
std::string action_log_of(pid_t test_pid) {
  return (std::filesystem::temp_directory_path() / ("mproc-barrier-action-" + std::to_string(test_pid))).string();
}
std::size_t lines_in(const std::string& path) {
  std::ifstream in(path);
  std::size_t n = 0;
  for (std::string line; std::getline(in, line);) ++n;
  return n;
}
void log_action() {
  const auto parent = mproc::parent_process();
  const pid_t test_pid = parent && parent->name == "MainProcess" ? parent->pid : ::getpid();
  std::ofstream(action_log_of(test_pid), std::ios::app) << ::getpid() << "\n";
}
void barrier_rounds_after_action(Barrier b, mproc::Array<int> ok, int rounds, std::string log) {
  for (int r = 0; r < rounds; ++r) {
    b.wait(60s);
    // The action ran before anyone was released: its line of round r is there.
    if (lines_in(log) >= static_cast<std::size_t>(r) + 1) ok.fetch_add(static_cast<std::size_t>(r), 1);
  }
}

TEST_P(SyncByMethod, TestBarrier_test_action) {
  constexpr int kRounds = 4;
  const std::string log = action_log_of(::getpid());
  std::remove(log.c_str());
  Barrier b(3, log_action);
  mproc::Array<int> ok(kRounds, 0);
  std::vector<mproc::Process> kids;
  for (int i = 0; i < 2; ++i) kids.emplace_back(with(GetParam()), barrier_rounds_after_action, b, ok, kRounds, log);
  for (auto& k : kids) k.start();
  barrier_rounds_after_action(b, ok, kRounds, log);
  for (auto& k : kids) join_ok(k);
  EXPECT_EQ(lines_in(log), static_cast<std::size_t>(kRounds)) << "the action runs exactly once per round";
  for (int r = 0; r < kRounds; ++r) EXPECT_EQ(ok[r], 3) << "round " << r;
  std::remove(log.c_str());
}

INSTANTIATE_TEST_SUITE_P(AllMethods, SyncByMethod, MPROC_ALL_METHODS);

TEST(Lock, TimeoutsAndMisuse) {
  Lock lock;
  Event held, release;
  mproc::Process p(with(StartMethod::fork), [&] {
    std::scoped_lock g(lock);
    held.set();
    release.wait(60s);
  });
  p.start();
  ASSERT_TRUE(held.wait(60s));
  EXPECT_FALSE(lock.acquire(false));
  EXPECT_FALSE(lock.acquire(true, 20ms));
  std::unique_lock<Lock> ul(lock, std::defer_lock);
  EXPECT_FALSE(ul.try_lock_for(10ms));
  EXPECT_THROW(lock.release(), mproc::Error) << "released a lock held by another process";
  release.set();
  join_ok(p);
  EXPECT_TRUE(ul.try_lock_for(60s));
  EXPECT_THROW(lock.lock(), mproc::ValueError) << "re-acquiring a Lock must not deadlock silently";
  ul.unlock();
  EXPECT_THROW(lock.release(), mproc::Error) << "released an unlocked lock";
}

// Mirrors CPython _TestLock.test_lock. Python: the holder's lock.acquire(False) is False, acquire(timeout=t) is
// False after t; locked() says whether anyone holds it.
TEST(Lock, TestLock_test_lock) {
  Lock lock;
  EXPECT_FALSE(lock.locked());
  ASSERT_TRUE(lock.acquire());
  EXPECT_TRUE(lock.locked());
  EXPECT_FALSE(lock.acquire(false));
  EXPECT_FALSE(lock.try_lock());
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_FALSE(lock.acquire(true, 30ms));
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 30ms) << "returned before its timeout";
  EXPECT_THROW(lock.acquire(), mproc::ValueError) << "blocking for ever on oneself is refused, not a deadlock";
  lock.release();
  EXPECT_FALSE(lock.locked());
  // Held by another process: locked() there too.
  Event held, release;
  mproc::Process p(with(StartMethod::fork), [&] {
    std::scoped_lock g(lock);
    held.set();
    release.wait(60s);
  });
  p.start();
  ASSERT_TRUE(held.wait(60s));
  EXPECT_TRUE(lock.locked());
  release.set();
  join_ok(p);
  EXPECT_FALSE(lock.locked());
}

TEST(RLock, ReentrantAndRecoversFromDeadHolder) {
  RLock r;
  {
    std::scoped_lock a(r);
    std::scoped_lock b(r);
    EXPECT_TRUE(r.try_lock());
    r.unlock();
  }
  Event held;
  mproc::Process p(with(StartMethod::fork), [&] {
    r.lock();
    r.lock();
    held.set();
    for (;;) ::pause();
  });
  p.start();
  ASSERT_TRUE(held.wait(60s));
  EXPECT_FALSE(r.try_lock());
  p.kill();
  p.join();
  ASSERT_TRUE(r.try_lock_for(30s));
  EXPECT_TRUE(r.owner_died());
  r.unlock();  // one level: the dead holder's two are gone
  EXPECT_THROW(r.unlock(), mproc::Error);
}

TEST(Semaphore, BoundedRefusesOverRelease) {
  mproc::BoundedSemaphore b(2);
  EXPECT_THROW(b.release(), mproc::Error);
  EXPECT_TRUE(b.acquire());
  b.release();
  EXPECT_EQ(b.get_value(), 2u);
  Semaphore s(0);
  s.release(3);  // unbounded
  EXPECT_EQ(s.get_value(), 3u);
  mproc::BoundedSemaphore zero(0);
  EXPECT_FALSE(zero.try_lock());
  EXPECT_THROW(zero.release(), mproc::Error);
}

TEST(Semaphore, WaitersAllProceedWhenAWokenWaiterIsKilled) {
  Semaphore sem(0);
  Event ready;
  mproc::Value<int> got(0, mproc::no_lock);
  auto waiter = [&] {
    ready.set();
    if (sem.acquire(true, 60s)) got.fetch_add(1);
  };
  mproc::Process victim(with(StartMethod::fork), [&] {
    ready.set();
    sem.acquire();
    for (;;) ::pause();
  });
  victim.start();
  ASSERT_TRUE(ready.wait(60s));
  std::vector<mproc::Process> others;
  for (int i = 0; i < 2; ++i) others.emplace_back(with(StartMethod::fork), waiter);
  for (auto& o : others) o.start();
  sem.release();  // may go to the victim, which is then killed
  victim.kill();
  victim.join();
  sem.release(2);
  for (auto& o : others) join_ok(o);
  EXPECT_GE(got.load(), 2);
}

TEST(Condition, WaitTimesOutAndRequiresTheLock) {
  Condition c;
  EXPECT_THROW(c.wait(1ms), mproc::Error);
  EXPECT_THROW(c.notify(), mproc::Error);
  std::unique_lock g(c);
  EXPECT_FALSE(c.wait(10ms));
  EXPECT_FALSE(c.wait_for([] { return false; }, 10ms));
  Lock plain;
  Condition over_lock(plain);
  std::unique_lock g2(over_lock);
  EXPECT_FALSE(over_lock.wait(1ms));
}

TEST(Barrier, TimeoutBreaksItAndResetRepairsIt) {
  Barrier b(2);
  EXPECT_THROW(b.wait(10ms), mproc::BrokenBarrierError);
  EXPECT_TRUE(b.broken());
  EXPECT_THROW(b.wait(10ms), mproc::BrokenBarrierError);
  b.reset();
  EXPECT_FALSE(b.broken());
  mproc::Process p(with(StartMethod::fork), [&] { b.wait(60s); });
  p.start();
  EXPECT_LT(b.wait(60s), 2u);
  join_ok(p);
  // A waiter in another process is released by abort() with the error.
  mproc::Process q(with(StartMethod::fork), [&] {
    try {
      b.wait(60s);
    } catch (const mproc::BrokenBarrierError&) {
      ::_exit(7);
    }
  });
  q.start();
  ASSERT_TRUE(mproc::test::eventually([&] { return b.n_waiting() == 1; }, 60000));
  b.abort();
  ASSERT_TRUE(q.join(60s));
  EXPECT_EQ(q.exitcode(), 7);
}

void failing_action() { throw std::runtime_error("action failed"); }

TEST(Barrier, TestBarrier_test_action_that_raises_breaks_it) {
  Barrier b(2, failing_action);
  mproc::Process q(with(StartMethod::fork), [&] {
    try {
      b.wait(60s);
    } catch (const mproc::BrokenBarrierError&) {
      ::_exit(7);
    }
  });
  q.start();
  ASSERT_TRUE(mproc::test::eventually([&] { return b.n_waiting() == 1; }, 60000));
  try {
    b.wait(60s);  // the last to arrive: it runs the action
    ADD_FAILURE() << "the action's exception did not reach the party that ran it";
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(), "action failed");
  }
  ASSERT_TRUE(q.join(60s));
  EXPECT_EQ(q.exitcode(), 7) << "the other party must get BrokenBarrierError";
  EXPECT_TRUE(b.broken());
}

TEST(Barrier, TestBarrier_test_default_timeout) {
  Barrier b(2, nullptr, 20ms);
  ASSERT_TRUE(b.timeout());
  EXPECT_EQ(b.timeout(), mproc::Timeout(20ms));
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_THROW(b.wait(), mproc::BrokenBarrierError);
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 20ms);
  EXPECT_TRUE(b.broken());
  EXPECT_THROW(Barrier(0), mproc::ValueError);
}

// ---- a holder that exits without releasing (issue 12 item 5) ----------------
// Under spawn and forkserver the target's arguments used to be destroyed
// (unmapping the lock) before the process exited, so the kernel could not
// mark the robust mutex owner-dead: the lock stayed locked for ever.
void hold_and_return(Lock lock) { lock.acquire(); }
void hold_and_throw(Lock lock) {
  lock.acquire();
  throw std::runtime_error("left holding the lock");
}
void rhold_twice_and_return(RLock lock) {
  lock.acquire();
  lock.acquire();
}

class HolderExits : public testing::TestWithParam<StartMethod> {};

template <class L>
void expect_owner_died(L& lock) {
  // 20 s: far above an uncontended acquire, even on a loaded machine.
  ASSERT_TRUE(lock.acquire(true, std::chrono::seconds(20))) << "the lock stayed locked after its holder exited";
  EXPECT_TRUE(lock.owner_died());
  lock.release();
  ASSERT_TRUE(lock.acquire(false)) << "the lock is usable again";
  lock.release();
}

TEST_P(HolderExits, ReturningWithALockHeldLeavesItOwnerDead) {
  Lock lock;
  mproc::Process p(with(GetParam()), hold_and_return, lock);
  p.start();
  join_ok(p);
  expect_owner_died(lock);
}

TEST_P(HolderExits, ThrowingWithALockHeldLeavesItOwnerDead) {
  Lock lock;
  mproc::Process p(with(GetParam()), hold_and_throw, lock);
  p.start();
  ASSERT_TRUE(p.join(60s));
  EXPECT_EQ(p.exitcode(), 1);
  expect_owner_died(lock);
}

TEST_P(HolderExits, ReturningWithAnRLockHeldTwiceLeavesItOwnerDead) {
  RLock lock;
  mproc::Process p(with(GetParam()), rhold_twice_and_return, lock);
  p.start();
  join_ok(p);
  expect_owner_died(lock);
}

INSTANTIATE_TEST_SUITE_P(AllMethods, HolderExits, MPROC_ALL_METHODS);

}  // namespace
