// Value<T> / Array<T>: shared with children of every start method and with
// pool tasks (as handles), get_lock() exclusion and recovery, atomics.
#include <signal.h>
#include <unistd.h>

#include <cstring>
#include <mutex>
#include <string>

#include "mproc/executor.hpp"
#include "mproc/pool.hpp"
#include "mproc/process.hpp"
#include "mproc/sharedctypes.hpp"
#include "shared_test_util.hpp"
#include "support.hpp"

namespace {

using namespace sharedtest;
using mproc::Array;
using mproc::Value;

constexpr int kAdds = 1000;

void add_under_lock(Value<long> v, int n) {
  for (int i = 0; i < n; ++i) {
    std::scoped_lock g(v.get_lock());
    v.store(v.load() + 1);  // two atomic steps: only the lock makes the sum exact
  }
}

void rename(Array<char> name, std::string to) {
  std::scoped_lock g(name.get_lock());
  std::memset(name.data(), 0, name.size());
  std::memcpy(name.data(), to.data(), std::min(to.size(), name.size() - 1));
}

class ValueByMethod : public testing::TestWithParam<StartMethod> {};

TEST_P(ValueByMethod, CounterUnderGetLockAcrossProcesses) {
  Value<long> v(0);
  std::vector<mproc::Process> kids;
  for (int i = 0; i < 3; ++i) kids.emplace_back(with(GetParam()), add_under_lock, v, kAdds);
  for (auto& k : kids) k.start();
  add_under_lock(v, kAdds);
  for (auto& k : kids) join_ok(k);
  EXPECT_EQ(v.load(), 4 * kAdds);
}

TEST_P(ValueByMethod, ArrayNameChangedByChild) {
  Array<char> name(16, '\0');
  rename(name, "parent");
  mproc::Process p(with(GetParam()), rename, name, std::string("child"));
  p.start();
  join_ok(p);
  EXPECT_STREQ(name.data(), "child");
}

void atomic_adds(Value<std::uint64_t> v, Array<int> hist, int n) {
  for (int i = 0; i < n; ++i) {
    v.fetch_add(1);
    hist.fetch_add(static_cast<std::size_t>(i % 4), 1);
  }
}

TEST_P(ValueByMethod, AtomicOperationsNeedNoLock) {
  Value<std::uint64_t> v(0, mproc::no_lock);
  Array<int> hist(4, mproc::no_lock);
  EXPECT_FALSE(v.has_lock());
  EXPECT_THROW(v.get_lock(), mproc::Error);
  mproc::Process p(with(GetParam()), atomic_adds, v, hist, 4000);
  p.start();
  atomic_adds(v, hist, 4000);
  join_ok(p);
  EXPECT_EQ(v.load(), 8000u);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(hist[i], 2000) << i;
}

INSTANTIATE_TEST_SUITE_P(AllMethods, ValueByMethod, MPROC_ALL_METHODS);

struct Big {  // not lock-free: load/store go through the lock
  long a[6];
};

TEST(Value, NonLockFreeTypeAndInitialValues) {
  Value<Big> big(Big{{1, 2, 3, 4, 5, 6}});
  EXPECT_EQ(big.load().a[5], 6);
  big.store(Big{{7, 7, 7, 7, 7, 7}});
  EXPECT_EQ(big.value().a[0], 7);
  Value<double> d(2.5);
  EXPECT_EQ(d.exchange(3.5), 2.5);
  double expected = 3.5;
  EXPECT_TRUE(d.compare_exchange(expected, 4.5));
  EXPECT_EQ(d.load(), 4.5);
  Array<int> a{1, 2, 3};
  EXPECT_EQ(a.size(), 3u);
  EXPECT_EQ(a.load(2), 3);
  EXPECT_THROW(a.load(3), mproc::IndexError);
  EXPECT_THROW(a.at(3), mproc::IndexError);
  Array<int> empty(std::size_t{0});
  EXPECT_EQ(empty.size(), 0u);
}

TEST(Value, LockHolderKilledNextHolderIsTold) {
  Value<int> v(0);
  mproc::Event held;
  mproc::Process p(with(StartMethod::fork), [&] {
    v.get_lock().lock();
    v.ref() = 99;  // half-way through an update
    held.set();
    for (;;) ::pause();
  });
  p.start();
  ASSERT_TRUE(held.wait(60s));
  p.kill();
  p.join();
  ASSERT_TRUE(v.get_lock().try_lock_for(30s));
  EXPECT_TRUE(v.get_lock().owner_died());
  EXPECT_EQ(v.ref(), 99);
  v.get_lock().unlock();
}

long pool_add(Value<long> v, Array<int> seen, int i) {
  std::scoped_lock g(v.get_lock());
  v.ref() += i;
  seen[static_cast<std::size_t>(i)] = ::getpid();
  return 0;
}

TEST(Value, PoolTasksGetHandlesNotCopies) {
  Value<long> v(0);
  Array<int> seen(20, 0);
  {
    mproc::Pool pool(2);
    std::vector<mproc::AsyncResult<long>> rs;
    for (int i = 0; i < 20; ++i) rs.push_back(pool.apply_async(pool_add, v, seen, i));
    for (auto& r : rs) r.get();
  }
  EXPECT_EQ(v.load(), 190);  // 0 + 1 + ... + 19, written by the workers into our block
  for (int i = 0; i < 20; ++i) {
    EXPECT_NE(seen[i], 0) << i;
    EXPECT_NE(seen[i], ::getpid()) << i;
  }
}

int executor_touch(Array<double> a) {
  for (auto& x : a) x *= 2;
  return static_cast<int>(a.size());
}

TEST(Array, ExecutorTaskWritesLargeArrayInPlace) {
  Array<double> a(1 << 20, 1.5);  // 8 MiB: only a handle crosses
  mproc::ProcessPoolExecutor ex(mproc::PoolOptions{.max_workers = 1});
  EXPECT_EQ(ex.submit(executor_touch, a).get(), 1 << 20);
  EXPECT_EQ(a[0], 3.0);
  EXPECT_EQ(a[(1 << 20) - 1], 3.0);
  ex.shutdown();
}

}  // namespace
