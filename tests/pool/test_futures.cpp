// Future<R> (states, cancel, timeouts, exception(), callbacks, wait_for),
// as_completed and mproc::wait, on futures of a real executor.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "mproc/executor.hpp"
#include "mproc/futures.hpp"
#include "pool_test_util.hpp"
#include "support.hpp"

using namespace pooltest;
using mproc::Future;
using mproc::ProcessPoolExecutor;

// The boundary (docs/architecture.md): a file that includes only public
// headers sees the task state and the engine as incomplete types and a
// Future without a way to them, so no user code can depend on their layout.
template <class T>
concept CompleteType = requires { sizeof(T); };
template <class F>
concept ExposesState = requires(const F& f) { f.state(); };
static_assert(!CompleteType<mproc::detail::TaskState>);
static_assert(!CompleteType<mproc::detail::Engine>);
static_assert(!ExposesState<Future<int>>);

TEST(FuturesState, DefaultConstructedHasNoState) {
  Future<int> f;
  EXPECT_FALSE(f.valid());
  EXPECT_THROW((void)f.done(), mproc::ValueError);
}

TEST(FuturesState, DoneRunningCancelledFollowTheTask) {
  TempDir dir;
  ProcessPoolExecutor ex(1);
  auto f = ex.submit(started_then_gated, dir.file("started"), dir.file("gate"));
  EXPECT_TRUE(f.valid());
  EXPECT_GT(f.id(), 0u);
  ASSERT_TRUE(wait_for_file(dir.file("started"), 10s));
  EXPECT_TRUE(f.running());
  EXPECT_FALSE(f.done());
  EXPECT_FALSE(f.cancelled());
  write_file(dir.file("gate"), "x");
  const pid_t pid = f.get();
  EXPECT_EQ(std::to_string(pid), read_file(dir.file("started")));
  EXPECT_TRUE(f.done());
  EXPECT_FALSE(f.running());
  EXPECT_FALSE(f.cancelled());
}

TEST(FuturesState, CancelPendingTaskQueuedBehindLongOnes) {
  TempDir dir;
  ProcessPoolExecutor ex(1);
  auto blocker = ex.submit(started_then_gated, dir.file("started"), dir.file("gate"));
  ASSERT_TRUE(wait_for_file(dir.file("started"), 10s));
  std::vector<Future<void>> queued;
  for (int i = 0; i < 12; ++i) queued.push_back(ex.submit(touch, dir.file("ran" + std::to_string(i))));
  auto& last = queued.back();
  EXPECT_FALSE(last.running());
  EXPECT_TRUE(last.cancel()) << "a task queued behind a busy worker must be cancellable";
  EXPECT_TRUE(last.cancelled());
  EXPECT_TRUE(last.done());
  EXPECT_TRUE(last.cancel()) << "cancel() of a cancelled future is true, as in Python";
  EXPECT_THROW(last.get(), mproc::CancelledError);
  write_file(dir.file("gate"), "x");
  for (std::size_t i = 0; i + 1 < queued.size(); ++i) EXPECT_NO_THROW(queued[i].get()) << i;
  ex.shutdown();
  EXPECT_FALSE(file_exists(dir.file("ran11"))) << "a cancelled task ran anyway";
  EXPECT_TRUE(file_exists(dir.file("ran10")));
  EXPECT_GT(blocker.get(), 0);
}

TEST(FuturesState, CancelOfRunningOrFinishedTaskFails) {
  TempDir dir;
  ProcessPoolExecutor ex(1);
  auto f = ex.submit(started_then_gated, dir.file("started"), dir.file("gate"));
  ASSERT_TRUE(wait_for_file(dir.file("started"), 10s));
  EXPECT_FALSE(f.cancel());
  EXPECT_FALSE(f.cancelled());
  write_file(dir.file("gate"), "x");
  EXPECT_GT(f.get(), 0);
  EXPECT_FALSE(f.cancel());
  EXPECT_FALSE(f.cancelled());
  auto g = ex.submit(square, 4);
  EXPECT_EQ(g.get(), 16);
  EXPECT_FALSE(g.cancel());
  EXPECT_EQ(g.get(), 16);
}

TEST(FuturesState, ResultWithTimeoutThrowsTimeoutError) {
  TempDir dir;
  ProcessPoolExecutor ex(1);
  auto f = ex.submit(gated, dir.file("gate"));
  auto t0 = Clock::now();
  EXPECT_THROW(f.result(150ms), mproc::TimeoutError);
  EXPECT_GE(seconds_since(t0), 0.14);
  // Upper bound: a loaded 2-core machine can delay the wake-up by seconds; it
  // only has to come well before the task's gate gives up (30 s).
  EXPECT_LT(seconds_since(t0), 15.0);
  EXPECT_THROW(f.exception(50ms), mproc::TimeoutError);
  EXPECT_FALSE(f.done());
  write_file(dir.file("gate"), "x");
  EXPECT_EQ(f.result(10s), 1);  // still there after a timeout
}

TEST(FuturesState, ExceptionReturnsTheErrorOrNull) {
  ProcessPoolExecutor ex(1);
  auto ok = ex.submit(square, 3);
  auto bad = ex.submit(throw_out_of_range, std::string("nope"));
  EXPECT_EQ(ok.exception(), nullptr);
  auto e = bad.exception();
  ASSERT_NE(e, nullptr);
  try {
    std::rethrow_exception(e);
  } catch (const mproc::RemoteError& r) {
    EXPECT_EQ(r.type_name(), "std::out_of_range");
    EXPECT_EQ(r.message(), "nope");
  } catch (...) {
    FAIL() << "exception() is not a RemoteError";
  }
  EXPECT_TRUE(bad.done());
  EXPECT_FALSE(bad.cancelled());
}

TEST(FuturesState, DoneCallbackRunsOnceEvenWhenAddedAfterCompletion) {
  TempDir dir;
  ProcessPoolExecutor ex(1);
  auto f = ex.submit(gated, dir.file("gate"));
  std::atomic<int> before{0}, after{0};
  std::atomic<int> seen_value{-1};
  f.add_done_callback([&](Future<int> g) {
    ++before;
    seen_value = g.done() ? g.get() : -2;
  });
  std::this_thread::sleep_for(50ms);
  EXPECT_EQ(before.load(), 0) << "callback ran before the task finished";
  write_file(dir.file("gate"), "x");
  EXPECT_EQ(f.get(), 1);
  ASSERT_TRUE(mproc::test::eventually([&] { return before.load() == 1; }));
  EXPECT_EQ(seen_value.load(), 1);
  f.add_done_callback([&](Future<int> g) {
    EXPECT_TRUE(g.done());
    ++after;
  });
  EXPECT_EQ(after.load(), 1) << "a callback added to a done future runs at once";
  // Cancel fires the callbacks too.
  auto blocker = ex.submit(gated, dir.file("gate2"));
  auto queued = ex.submit(square, 2);
  auto queued2 = ex.submit(square, 3);
  auto queued3 = ex.submit(square, 4);
  std::atomic<int> on_cancel{0};
  queued3.add_done_callback([&](Future<int> g) { on_cancel += g.cancelled() ? 1 : 100; });
  if (queued3.cancel()) {
    EXPECT_EQ(on_cancel.load(), 1);
  }
  write_file(dir.file("gate2"), "x");
  ex.shutdown();
  EXPECT_EQ(before.load(), 1);
  EXPECT_EQ(after.load(), 1);
  EXPECT_LE(on_cancel.load(), 1) << "the callback ran twice, or saw the wrong state";
  EXPECT_EQ(queued.get() + queued2.get(), 13);
  (void)blocker.get();
}

// add_done_callback takes any callable, a move-only one too (it was a
// std::function, which needs a copyable one), and runs it once.
TEST(FuturesState, DoneCallbackTakesAnyCallable) {
  TempDir dir;
  ProcessPoolExecutor ex(1);
  auto f = ex.submit(gated, dir.file("gate"));
  std::atomic<int> moved_only{0}, wrapped{0};
  auto owned = std::make_unique<int>(7);
  f.add_done_callback([&moved_only, p = std::move(owned)](Future<int> g) { moved_only += *p * g.get(); });
  f.add_done_callback(std::function<void(Future<int>)>([&wrapped](Future<int>) { ++wrapped; }));
  write_file(dir.file("gate"), "x");
  EXPECT_EQ(f.get(), 1);
  ASSERT_TRUE(mproc::test::eventually([&] { return moved_only.load() == 7 && wrapped.load() == 1; }));
  ex.shutdown();
  EXPECT_EQ(moved_only.load(), 7) << "the callback ran more than once";
  EXPECT_EQ(wrapped.load(), 1);
}

TEST(FuturesState, WaitForReportsCompletion) {
  TempDir dir;
  ProcessPoolExecutor ex(1);
  auto f = ex.submit(gated, dir.file("gate"));
  auto t0 = Clock::now();
  EXPECT_FALSE(f.wait_for(100ms));
  EXPECT_GE(seconds_since(t0), 0.09);
  write_file(dir.file("gate"), "x");
  EXPECT_TRUE(f.wait_for(10s));
  EXPECT_TRUE(f.done());
  f.wait();
  EXPECT_EQ(f.get(), 1);
}

TEST(FuturesAsCompleted, YieldsEachFutureOnceInCompletionOrder) {
  ProcessPoolExecutor ex(3);
  std::vector<int> ms{700, 50, 350};
  std::vector<Future<int>> fs;
  std::mutex mu;
  std::vector<int> finished;  // by the done callbacks, in the order tasks finished
  for (int m : ms) {
    fs.push_back(ex.submit(sleep_ms, m));
    fs.back().add_done_callback([&mu, &finished](Future<int> g) {
      std::lock_guard lock(mu);
      finished.push_back(g.get());
    });
  }
  std::vector<int> order;
  for (const auto& f : mproc::as_completed(fs)) {
    EXPECT_TRUE(f.done());
    order.push_back(f.get());
  }
  ASSERT_EQ(order.size(), 3u);
  std::lock_guard lock(mu);
  EXPECT_EQ(order, finished);
  EXPECT_EQ(std::set<int>(order.begin(), order.end()), (std::set<int>{50, 350, 700}));
}

// With as many workers as tasks, the shorter task comes first.
TEST(FuturesAsCompleted, ShorterTasksComeFirstGivenEnoughWorkers) {
  ProcessPoolExecutor ex(3);
  ex.map(sleep_ms, std::vector<int>{1, 1, 1});
  ASSERT_TRUE(mproc::test::eventually([&] { return ex.worker_pids().size() == 3; }, 10000));
  std::vector<Future<int>> fs;
  for (int m : {900, 100, 500}) fs.push_back(ex.submit(sleep_ms, m));
  std::vector<int> order;
  for (const auto& f : mproc::as_completed(fs)) order.push_back(f.get());
  EXPECT_EQ(order, (std::vector<int>{100, 500, 900}));
}

TEST(FuturesAsCompleted, TimeoutThrowsAfterTheFinishedOnes) {
  TempDir dir;
  ProcessPoolExecutor ex(2);
  std::vector<Future<int>> fs;
  fs.push_back(ex.submit(square, 3));
  fs.push_back(ex.submit(gated, dir.file("gate")));
  auto ac = mproc::as_completed(fs, 300ms);
  auto first = ac.next();
  ASSERT_TRUE(first.has_value());
  EXPECT_EQ(first->get(), 9);
  auto t0 = Clock::now();
  EXPECT_THROW(ac.next(), mproc::TimeoutError);
  EXPECT_LT(seconds_since(t0), 15.0);  // wide (load): only well before the gate's 30 s
  write_file(dir.file("gate"), "x");
  EXPECT_EQ(fs[1].get(), 1);
  // Already-finished futures are yielded without waiting.
  auto all = mproc::as_completed(fs, 0ms);
  int n = 0;
  for (const auto& f : all) n += f.done() ? 1 : 0;
  EXPECT_EQ(n, 2);
}

TEST(FuturesWait, FirstCompleted) {
  TempDir dir;
  ProcessPoolExecutor ex(2);
  std::vector<Future<int>> fs{ex.submit(square, 5), ex.submit(gated, dir.file("gate"))};
  auto r = mproc::wait(fs, mproc::FIRST_COMPLETED);
  ASSERT_EQ(r.done.size(), 1u);
  ASSERT_EQ(r.not_done.size(), 1u);
  EXPECT_EQ(r.done[0].get(), 25);
  EXPECT_EQ(r.not_done[0].id(), fs[1].id());
  write_file(dir.file("gate"), "x");
  EXPECT_EQ(fs[1].get(), 1);
}

TEST(FuturesWait, FirstExceptionStopsAtTheFailure) {
  TempDir dir;
  ProcessPoolExecutor ex(2);
  std::vector<Future<int>> fs{ex.submit(square, 2), ex.submit(throw_out_of_range, std::string("boom")),
                              ex.submit(gated, dir.file("gate"))};
  // The first task must be done before the failure is seen (on a loaded
  // machine the failing one could otherwise finish first).
  ASSERT_EQ(fs[0].get(), 4);
  auto t0 = Clock::now();
  auto r = mproc::wait(fs, mproc::FIRST_EXCEPTION, 20s);
  EXPECT_LT(seconds_since(t0), 10.0);
  ASSERT_EQ(r.not_done.size(), 1u);
  EXPECT_EQ(r.not_done[0].id(), fs[2].id());
  bool has_failed = std::any_of(r.done.begin(), r.done.end(), [&](auto& f) { return f.id() == fs[1].id(); });
  EXPECT_TRUE(has_failed);
  EXPECT_THROW(fs[1].get(), mproc::RemoteError);
  write_file(dir.file("gate"), "x");
  // Without any exception, FIRST_EXCEPTION waits for all.
  std::vector<Future<int>> ok{ex.submit(sleep_ms, 50), ex.submit(sleep_ms, 150)};
  auto r2 = mproc::wait(ok, mproc::FIRST_EXCEPTION);
  EXPECT_EQ(r2.done.size(), 2u);
  EXPECT_TRUE(r2.not_done.empty());
}

TEST(FuturesWait, AllCompleted) {
  ProcessPoolExecutor ex(2);
  std::vector<Future<int>> fs;
  for (int m : {10, 80, 40, 120, 0}) fs.push_back(ex.submit(sleep_ms, m));
  auto r = mproc::wait(fs);  // ALL_COMPLETED by default
  EXPECT_EQ(r.done.size(), 5u);
  EXPECT_TRUE(r.not_done.empty());
  for (auto& f : fs) EXPECT_TRUE(f.done());
  auto r2 = mproc::wait(fs, mproc::ALL_COMPLETED, 0ms);  // already done: no wait
  EXPECT_EQ(r2.done.size(), 5u);
}

TEST(FuturesWait, TimeoutReturnsWhatIsDone) {
  TempDir dir;
  ProcessPoolExecutor ex(2);
  std::vector<Future<int>> fs{ex.submit(square, 6), ex.submit(gated, dir.file("gate"))};
  fs[0].wait();
  auto t0 = Clock::now();
  auto r = mproc::wait(fs, mproc::ALL_COMPLETED, 200ms);
  const double took = seconds_since(t0);
  EXPECT_GE(took, 0.19);
  EXPECT_LT(took, 15.0);  // wide (load): only well before the gate's 30 s
  ASSERT_EQ(r.done.size(), 1u);
  ASSERT_EQ(r.not_done.size(), 1u);
  EXPECT_EQ(r.done[0].get(), 36);
  write_file(dir.file("gate"), "x");
  EXPECT_EQ(fs[1].get(), 1);
}

// Mirrors CPython's AsCompletedTests.test_duplicate_futures (bpo-20367): a
// future given twice is yielded once, and wait() counts it once.
TEST(FuturesParity, AsCompletedTests_test_duplicate_futures) {
  ProcessPoolExecutor ex(1);
  auto a = ex.submit(square, 3);
  auto b = ex.submit(square, 4);
  std::vector<Future<int>> given{a, b, a, a, b};
  std::vector<int> got;
  for (const auto& f : mproc::as_completed(given)) got.push_back(f.get());
  std::sort(got.begin(), got.end());
  EXPECT_EQ(got, (std::vector<int>{9, 16}));
  auto r = mproc::wait(given);
  EXPECT_EQ(r.done.size(), 2u);
  EXPECT_TRUE(r.not_done.empty());
}

// A string literal argument travels as a std::string, as Python's str.
std::size_t length_of(std::string s) { return s.size(); }
TEST(FuturesParity, StringLiteralArgumentsDecayToStdString) {
  ProcessPoolExecutor ex(1);
  EXPECT_EQ(ex.submit(length_of, "hello").get(), 5u);
  EXPECT_EQ(ex.submit(mproc::SubmitOptions{.timeout = std::chrono::seconds(60)}, length_of, "John Doe").get(), 8u);
}

// Python's futures are untyped, so CPython's WaitTests mix tasks of any
// result; mproc's AnyFuture carries that: wait() and as_completed() over a
// Future<int> and a Future<std::string> together.
std::string word_of(int n) { return std::string(static_cast<std::size_t>(n), 'w'); }
TEST(FuturesParity, WaitTests_test_all_completed_MixedResultTypes) {
  ProcessPoolExecutor ex(2);
  Future<int> a = ex.submit(square, 5);
  Future<std::string> b = ex.submit(word_of, 3);
  auto r = mproc::wait({a, b});
  ASSERT_EQ(r.done.size(), 2u);
  EXPECT_TRUE(r.not_done.empty());
  EXPECT_TRUE(r.done[0] == a || r.done[1] == a);
  EXPECT_TRUE(r.done[0] == b || r.done[1] == b);
  EXPECT_EQ(a.get(), 25);
  EXPECT_EQ(b.get(), "www");

  Future<int> c = ex.submit(square, 6);
  Future<std::string> d = ex.submit(word_of, 2);
  std::size_t seen = 0;
  for (const mproc::AnyFuture& f : mproc::as_completed({c, d, c})) {
    EXPECT_TRUE(f.done());
    EXPECT_FALSE(f.exception());
    ++seen;
  }
  EXPECT_EQ(seen, 2u);  // c given twice counts once
  EXPECT_EQ(c.get(), 36);
  EXPECT_EQ(d.get(), "ww");
}
