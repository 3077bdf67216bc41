// mproc::Pool: map, starmap, apply, the async forms and AsyncResult, imap /
// imap_unordered (order, laziness, bounded memory), close/join/terminate
// and the destructor.
#include <gtest/gtest.h>

#include <atomic>
#include <functional>
#include <mutex>
#include <numeric>
#include <optional>
#include <ranges>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "mproc/pool.hpp"
#include "pool_test_util.hpp"
#include "support.hpp"

using namespace pooltest;
using mproc::Pool;
using mproc::PoolOptions;

TEST(PoolBasics, DefaultSizeIsCpuCount) {
  Pool pool;
  EXPECT_EQ(pool.processes(), mproc::cpu_count());
  EXPECT_EQ(pool.apply(square, 9), 81);
}

TEST(PoolBasics, MapInOrderWithEveryChunksize) {
  Pool pool(2);
  std::vector<int> in(257);
  std::iota(in.begin(), in.end(), 0);
  for (std::size_t chunk : {0u, 1u, 5u, 300u}) {  // 0: Python's default
    auto out = pool.map(square, in, chunk);
    ASSERT_EQ(out.size(), in.size()) << "chunksize " << chunk;
    for (std::size_t i = 0; i < in.size(); ++i) ASSERT_EQ(out[i], in[i] * in[i]) << "chunksize " << chunk;
  }
  auto s = pool.map([](int x) { return std::string(static_cast<std::size_t>(x), 'a'); }, std::views::iota(0, 5));
  EXPECT_EQ(s, (std::vector<std::string>{"", "a", "aa", "aaa", "aaaa"}));
  EXPECT_TRUE(pool.map(square, std::vector<int>{}).empty());
}

TEST(PoolBasics, MapOfVoidFunctionRunsEveryItem) {
  TempDir dir;
  Pool pool(2);
  std::vector<std::string> paths;
  for (int i = 0; i < 10; ++i) paths.push_back(dir.file(std::to_string(i)));
  auto r = pool.map(touch, paths, 3);
  EXPECT_EQ(r.size(), 10u);
  EXPECT_EQ(dir.entries().size(), 10u);
}

TEST(PoolBasics, Starmap) {
  Pool pool(2);
  std::vector<std::tuple<int, int>> pairs;
  for (int i = 0; i < 50; ++i) pairs.emplace_back(i, i + 1);
  auto out = pool.starmap(mul, pairs);
  ASSERT_EQ(out.size(), 50u);
  for (int i = 0; i < 50; ++i) EXPECT_EQ(out[static_cast<std::size_t>(i)], i * (i + 1));
  auto r = pool.starmap_async(add, std::vector<std::tuple<int, int>>{{1, 2}, {3, 4}}, 1).get();
  EXPECT_EQ(r, (std::vector<int>{3, 7}));
}

TEST(PoolBasics, ApplyAndApplyAsync) {
  Pool pool(2);
  EXPECT_EQ(pool.apply(greet, std::string("pool")), "hello, pool");
  EXPECT_EQ(pool.apply(move_point, Point{0, 2, "q"}, 5), (Point{5, 4, "q!"}));
  auto r = pool.apply_async(square, 7);
  EXPECT_TRUE(r.wait(10s));
  EXPECT_TRUE(r.ready());
  EXPECT_TRUE(r.successful());
  EXPECT_EQ(r.get(), 49);
  EXPECT_EQ(r.get(1s), 49);
}

TEST(PoolBasics, ApplyAsyncOfVoidFunction) {
  TempDir dir;
  Pool pool(1);
  auto r = pool.apply_async(touch, dir.file("v"));
  r.get();
  EXPECT_TRUE(r.successful());
  EXPECT_TRUE(file_exists(dir.file("v")));
  std::atomic<int> calls{0};
  r.add_callback([&] { ++calls; });
  EXPECT_EQ(calls.load(), 1);
}

TEST(PoolBasics, MapAsync) {
  Pool pool(2);
  auto r = pool.map_async(twice_plus_one, std::views::iota(0L, 1000L), 10);
  auto v = r.get(30s);
  ASSERT_EQ(v.size(), 1000u);
  for (long i = 0; i < 1000; ++i) ASSERT_EQ(v[static_cast<std::size_t>(i)], 2 * i + 1);
  EXPECT_TRUE(r.ready());
  EXPECT_TRUE(r.successful());
  auto bad = pool.map_async([](int x) { return fail_on(x, 4); }, std::views::iota(0, 10), 2);
  EXPECT_TRUE(bad.wait(30s));
  EXPECT_FALSE(bad.successful());
  try {
    bad.get();
    FAIL() << "no error";
  } catch (const mproc::RemoteError& e) {
    EXPECT_EQ(e.type_name(), "std::invalid_argument");
    EXPECT_EQ(e.message(), "bad item 4");
  }
}

TEST(PoolBasics, AsyncResultTimeoutsAndReadiness) {
  TempDir dir;
  Pool pool(1);
  auto r = pool.apply_async(gated, dir.file("gate"));
  EXPECT_FALSE(r.ready());
  EXPECT_THROW((void)r.successful(), mproc::ValueError);
  auto t0 = Clock::now();
  EXPECT_FALSE(r.wait(100ms));
  EXPECT_THROW(r.get(100ms), mproc::TimeoutError);
  EXPECT_GE(seconds_since(t0), 0.19);
  EXPECT_LT(seconds_since(t0), 15.0);  // wide (load): only well before the gate's 30 s
  write_file(dir.file("gate"), "x");
  EXPECT_EQ(r.get(10s), 1);
  EXPECT_TRUE(r.ready());
}

TEST(PoolBasics, AsyncResultCallbacks) {
  TempDir dir;
  Pool pool(2);
  std::atomic<int> values{0}, errors{0}, got{0};
  auto r = pool.apply_async(gated, dir.file("gate"));
  r.add_callback([&](const int& v) {
    ++values;
    got = v;
  }, [&](std::exception_ptr) { ++errors; });
  std::this_thread::sleep_for(30ms);
  EXPECT_EQ(values.load(), 0);
  write_file(dir.file("gate"), "x");
  r.wait();
  ASSERT_TRUE(mproc::test::eventually([&] { return values.load() == 1; }));
  EXPECT_EQ(got.load(), 1);
  EXPECT_EQ(errors.load(), 0);

  // Error callback, with the task's error.
  std::atomic<int> evalues{0}, eerrors{0};
  std::string type;
  std::mutex mu;
  auto bad = pool.apply_async(throw_out_of_range, std::string("oops"));
  bad.add_callback([&](const int&) { ++evalues; },
                   [&](std::exception_ptr e) {
                     try {
                       std::rethrow_exception(e);
                     } catch (const mproc::RemoteError& re) {
                       std::lock_guard lock(mu);
                       type = re.type_name();
                     } catch (...) {
                     }
                     ++eerrors;
                   });
  bad.wait();
  ASSERT_TRUE(mproc::test::eventually([&] { return eerrors.load() == 1; }));
  EXPECT_EQ(evalues.load(), 0);
  {
    std::lock_guard lock(mu);
    EXPECT_EQ(type, "std::out_of_range");
  }

  // map_async: one callback with the whole list; added after ready: at once.
  auto m = pool.map_async(square, std::vector<int>{1, 2, 3}, 1);
  m.wait();
  std::vector<int> seen;
  m.add_callback([&](const std::vector<int>& v) { seen = v; });
  EXPECT_EQ(seen, (std::vector<int>{1, 4, 9}));
  EXPECT_EQ(values.load(), 1);
}

// Python's callback=None / error_callback=None: nullptr, a null function
// pointer or an empty std::function is no callback (calling an empty
// std::function would throw in the thread that settled the task).
TEST(PoolBasics, AsyncResultCallbacksMayBeNone) {
  Pool pool(1);
  std::atomic<int> errors{0};
  auto bad = pool.apply_async(throw_out_of_range, std::string("oops"));
  bad.add_callback(nullptr, [&](std::exception_ptr) { ++errors; });
  bad.add_callback(std::function<void(const int&)>(), std::function<void(std::exception_ptr)>());
  void (*no_value)(const int&) = nullptr;
  bad.add_callback(no_value);
  EXPECT_THROW(bad.get(), mproc::RemoteError);
  ASSERT_TRUE(mproc::test::eventually([&] { return errors.load() == 1; }));

  static std::atomic<int> values{0};
  auto ok = pool.apply_async(square, 3);
  ok.add_callback(+[](const int& v) { values += v; }, nullptr);
  ok.add_callback(std::function<void(const int&)>([](const int& v) { values += 10 * v; }));
  EXPECT_EQ(ok.get(), 9);
  ASSERT_TRUE(mproc::test::eventually([&] { return values.load() == 99; }));
  pool.close();
  pool.join();
  EXPECT_EQ(errors.load(), 1);
  EXPECT_EQ(values.load(), 99);
}

TEST(PoolImap, ImapYieldsInInputOrder) {
  Pool pool(2);
  std::vector<int> ms;
  for (int i = 0; i < 24; ++i) ms.push_back((i * 7) % 5 * 6);  // uneven durations
  for (std::size_t chunk : {1u, 4u}) {
    auto it = pool.imap(sleep_ms, ms, chunk);
    auto& m = imap_of(it);
    std::vector<int> out;
    for (const int& v : m) out.push_back(v);
    EXPECT_EQ(out, ms) << "chunksize " << chunk;
  }
}

TEST(PoolImap, ImapUnorderedYieldsEveryItem) {
  Pool pool(2);
  std::vector<int> ms;
  for (int i = 0; i < 40; ++i) ms.push_back(i % 4 * 5 + i * 1000);
  auto it = pool.imap_unordered([](int x) {
    std::this_thread::sleep_for(std::chrono::milliseconds(x % 1000));
    return x;
  }, ms, 3);
  auto& m = imap_of(it);
  std::multiset<int> out;
  for (const int& v : m) out.insert(v);
  EXPECT_EQ(out, std::multiset<int>(ms.begin(), ms.end()));
}

TEST(PoolImap, ImapIsLazyAndMemoryStaysBounded) {
  Pool pool(2);
  EXPECT_EQ(pool.apply(square, 2), 4);
  const std::size_t rss0 = rss_bytes();
  const auto t0 = Clock::now();
  {
    auto it = pool.imap(twice_plus_one, std::views::iota(0L, 100'000'000L));
    auto& m = imap_of(it);
    long i = 0;
    for (const long& v : m) {
      ASSERT_EQ(v, 2 * i + 1);
      if (++i == 1000) break;
    }
    EXPECT_EQ(i, 1000);
  }
  const double took = seconds_since(t0);
  const std::size_t rss1 = rss_bytes();
  // Wide (load, sanitizers): submitting 10^8 inputs eagerly takes minutes.
  EXPECT_LT(took, 30.0) << "imap over 10^8 inputs took " << took << " s for 1000 results: not lazy";
  EXPECT_LT(rss1, rss0 + (50u << 20)) << "RSS grew from " << (rss0 >> 20) << " MiB to " << (rss1 >> 20) << " MiB";
  // The pool goes on.
  EXPECT_EQ(pool.apply(square, 3), 9);
}

TEST(PoolImap, ImapUnorderedIsLazyToo) {
  Pool pool(2);
  const std::size_t rss0 = rss_bytes();
  const auto t0 = Clock::now();
  {
    auto it = pool.imap_unordered(twice_plus_one, std::views::iota(0L, 100'000'000L), 4);
    auto& m = imap_of(it);
    std::set<long> seen;
    for (const long& v : m) {
      seen.insert(v);
      if (seen.size() == 1000) break;
    }
    EXPECT_EQ(seen.size(), 1000u);
  }
  EXPECT_LT(seconds_since(t0), 30.0);  // wide (load): submitting 10^8 inputs eagerly takes minutes
  EXPECT_LT(rss_bytes(), rss0 + (50u << 20));
}

TEST(PoolImap, NextWithTimeoutKeepsTheItem) {
  TempDir dir;
  Pool pool(1);
  auto it = pool.imap(gated, std::vector<std::string>{dir.file("gate"), dir.file("gate")});
  auto& m = imap_of(it);
  EXPECT_THROW(m.next(100ms), mproc::TimeoutError);
  write_file(dir.file("gate"), "x");
  auto a = m.next(10s);
  auto b = m.next(10s);
  ASSERT_TRUE(a.has_value()) << "the item that timed out was lost";
  ASSERT_TRUE(b.has_value()) << "the item that timed out was lost";
  EXPECT_EQ(*a + *b, 2);
  EXPECT_FALSE(m.next().has_value());
}

TEST(PoolImap, TaskErrorIsRaisedAtItsPositionAndIterationGoesOn) {
  Pool pool(2);
  auto it = pool.imap([](int x) { return fail_on(x, 3); }, std::views::iota(0, 6));
  auto& m = imap_of(it);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(m.next(), i);
  EXPECT_THROW(m.next(), mproc::RemoteError);
  EXPECT_EQ(m.next(), 4);
  EXPECT_EQ(m.next(), 5);
  EXPECT_EQ(m.next(), std::nullopt);
}

TEST(PoolLifecycle, CloseThenJoinFinishesQueuedWork) {
  TempDir dir;
  Pool pool(2);
  std::vector<std::string> paths;
  for (int i = 0; i < 8; ++i) paths.push_back(dir.file(std::to_string(i)));
  auto r = pool.map_async([](std::string p) {
    sleep_then_touch(50, p);
    return 1;
  }, paths, 1);
  pool.close();
  EXPECT_THROW(pool.apply_async(square, 1), mproc::Error);
  pool.join();
  EXPECT_TRUE(r.ready());
  EXPECT_EQ(r.get(), std::vector<int>(8, 1));
  EXPECT_EQ(dir.entries().size(), 8u);
  EXPECT_TRUE(pool.worker_pids().empty());
}

TEST(PoolLifecycle, TerminateFailsUnfinishedTasksWithBrokenPool) {
  TempDir dir;
  Pool pool(1);
  auto running = pool.apply_async(started_then_gated, dir.file("started"), dir.file("gate"));
  ASSERT_TRUE(wait_for_file(dir.file("started"), 10s));
  const pid_t pid = std::stoi(read_file(dir.file("started")));
  std::vector<mproc::AsyncResult<int>> queued;
  for (int i = 0; i < 5; ++i) queued.push_back(pool.apply_async(square, i));
  const auto t0 = Clock::now();
  pool.terminate();
  EXPECT_LT(seconds_since(t0), 15.0);  // wide (load): waiting would take the gate's 30 s
  EXPECT_TRUE(running.ready());
  EXPECT_THROW(running.get(1s), mproc::BrokenPool);
  for (auto& q : queued) {
    ASSERT_TRUE(q.wait(20s)) << "a queued task hangs after terminate()";
    EXPECT_THROW(q.get(), mproc::BrokenPool);
  }
  EXPECT_TRUE(mproc::test::pid_gone(pid));
  EXPECT_THROW(pool.apply_async(square, 1), mproc::Error);
  pool.join();  // after terminate: returns
}

TEST(PoolLifecycle, DestructorTerminates) {
  TempDir dir;
  pid_t pid = 0;
  std::optional<mproc::AsyncResult<int>> r;
  const auto t0 = Clock::now();
  {
    Pool pool(2);
    r = pool.apply_async(started_then_gated, dir.file("started"), dir.file("gate"));
    ASSERT_TRUE(wait_for_file(dir.file("started"), 10s));
    pid = std::stoi(read_file(dir.file("started")));
  }
  // Wide (load): waiting for the task would take its gate's 30 s.
  EXPECT_LT(seconds_since(t0), 15.0) << "~Pool waited for a task instead of terminating";
  EXPECT_TRUE(mproc::test::pid_gone(pid));
  ASSERT_TRUE(r.has_value());
  EXPECT_TRUE(r->ready());
  EXPECT_THROW(r->get(), mproc::BrokenPool);
}

// Mirrors CPython's _TestPool.test_make_pool: Pool(0) is a ValueError (as is
// ProcessPoolExecutor(max_workers=0): test_max_workers_negative).
TEST(PoolParity, TestPool_test_make_pool) {
  EXPECT_THROW(Pool(0u), mproc::ValueError);
  EXPECT_THROW(Pool(PoolOptions{.max_workers = 0}), mproc::ValueError);
  EXPECT_THROW(mproc::ProcessPoolExecutor(0u), mproc::ValueError);
  Pool p(PoolOptions{.max_workers = 1, .start_method = mproc::StartMethod::fork});
  EXPECT_EQ(p.processes(), 1u);
}

// Python's Pool.join() before close()/terminate() raises ValueError instead
// of waiting for ever; after close(), submitting is refused the same way.
TEST(PoolParity, TestPool_test_join_requires_close_or_terminate) {
  Pool p(PoolOptions{.max_workers = 1, .start_method = mproc::StartMethod::fork});
  EXPECT_EQ(p.apply(square, 3), 9);
  EXPECT_THROW(p.join(), mproc::ValueError);
  p.close();
  EXPECT_THROW(p.apply_async(square, 4), mproc::ValueError);
  p.join();
}

// Mirrors CPython's _TestPool.test_imap_handle_iterable_exception: an input
// that throws at item 3 yields the results of items 0..2 first, then the
// input's exception, for every chunk size.
struct SayWhenError : std::runtime_error {
  SayWhenError() : std::runtime_error("Somebody said when") {}
};
TEST(PoolParity, TestPool_test_imap_handle_iterable_exception) {
  Pool p(PoolOptions{.max_workers = 2, .start_method = mproc::StartMethod::fork});
  for (std::size_t chunksize : {1u, 2u, 5u}) {
    auto throwing = std::views::iota(0, 10) | std::views::transform([](int i) {
                      if (i == 3) throw SayWhenError();
                      return i;
                    });
    auto it = p.imap(square, throwing, chunksize);
    std::vector<int> got;
    EXPECT_THROW(
        {
          for (auto r = it.next(); r; r = it.next()) got.push_back(*r);
        },
        SayWhenError)
        << "chunksize " << chunksize;
    EXPECT_EQ(got, (std::vector<int>{0, 1, 4})) << "chunksize " << chunksize;
  }
  EXPECT_EQ(p.apply(square, 5), 25) << "the pool serves on";
}
