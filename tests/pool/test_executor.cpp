// ProcessPoolExecutor: submit/get of values of every kind, map (order,
// chunks, timeout, errors), parallelism, shutdown semantics, the destructor
// and submitters on several threads.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <numeric>
#include <ranges>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "mproc/executor.hpp"
#include "pool_test_util.hpp"
#include "support.hpp"

using namespace pooltest;
using mproc::Future;
using mproc::PoolOptions;
using mproc::ProcessPoolExecutor;

TEST(ExecutorBasics, SubmitReturnsValuesOfEveryKind) {
  ProcessPoolExecutor ex(2);
  auto fi = ex.submit(square, 12);
  auto fs = ex.submit(greet, std::string("world"));
  auto fv = ex.submit(iota_vec, 1000);
  auto fp = ex.submit(move_point, Point{1, 1.5, "p"}, 41);
  auto fl = ex.submit([](int a, int b) { return a - b; }, 10, 3);
  auto fo = ex.submit(Scale{7}, 6);
  EXPECT_EQ(fi.get(), 144);
  EXPECT_EQ(fs.get(), "hello, world");
  auto v = fv.get();
  ASSERT_EQ(v.size(), 1000u);
  for (int i = 0; i < 1000; ++i) ASSERT_EQ(v[static_cast<std::size_t>(i)], i);
  EXPECT_EQ(fp.get(), (Point{42, 3.0, "p!"}));
  EXPECT_EQ(fl.get(), 7);
  EXPECT_EQ(fo.get(), 42);
  // get() may be called again: the value stays.
  EXPECT_EQ(fi.get(), 144);
}

TEST(ExecutorBasics, TasksRunInWorkerProcesses) {
  ProcessPoolExecutor ex(2);
  pid_t pid = ex.submit(my_pid).get();
  EXPECT_NE(pid, ::getpid());
  auto pids = ex.worker_pids();
  EXPECT_EQ(ex.max_workers(), 2u);
  EXPECT_NE(std::find(pids.begin(), pids.end(), pid), pids.end()) << "task pid is not one of worker_pids()";
}

TEST(ExecutorBasics, VoidTaskRunsAndGetReturns) {
  TempDir dir;
  ProcessPoolExecutor ex(1);
  Future<void> f = ex.submit(touch, dir.file("done"));
  f.get();
  EXPECT_TRUE(f.done());
  EXPECT_EQ(f.exception(), nullptr);
  EXPECT_TRUE(file_exists(dir.file("done")));
}

TEST(ExecutorBasics, MapInOrderChunksizeOne) {
  ProcessPoolExecutor ex(2);
  std::vector<int> in(200);
  std::iota(in.begin(), in.end(), -50);
  auto out = ex.map(square, in);
  ASSERT_EQ(out.size(), in.size());
  for (std::size_t i = 0; i < in.size(); ++i) EXPECT_EQ(out[i], in[i] * in[i]) << "at " << i;
}

TEST(ExecutorBasics, MapInOrderWithChunks) {
  ProcessPoolExecutor ex(2);
  for (std::size_t chunk : {2u, 7u, 64u, 1000u}) {
    auto out = ex.map(twice_plus_one, std::views::iota(0L, 301L), std::nullopt, chunk);
    ASSERT_EQ(out.size(), 301u) << "chunksize " << chunk;
    for (long i = 0; i < 301; ++i) ASSERT_EQ(out[static_cast<std::size_t>(i)], 2 * i + 1) << "chunksize " << chunk;
  }
}

TEST(ExecutorBasics, MapOfEmptyRangeIsEmpty) {
  ProcessPoolExecutor ex(1);
  std::vector<int> none;
  EXPECT_TRUE(ex.map(square, none).empty());
}

TEST(ExecutorBasics, MapWithLambdaAndFunctionObject) {
  ProcessPoolExecutor ex(2);
  auto a = ex.map([](int x) { return std::to_string(x); }, std::vector<int>{1, 22, 333}, std::nullopt, 2);
  EXPECT_EQ(a, (std::vector<std::string>{"1", "22", "333"}));
  auto b = ex.map(Scale{3}, std::vector<int>{1, 2, 3});
  EXPECT_EQ(b, (std::vector<long>{3, 6, 9}));
}

TEST(ExecutorBasics, MapTimeoutThrowsTimeoutError) {
  TempDir dir;
  ProcessPoolExecutor ex(2);
  const auto t0 = Clock::now();
  std::vector<std::string> gates{dir.file("open"), dir.file("gate"), dir.file("open")};
  write_file(dir.file("open"), "x");
  EXPECT_THROW(ex.map(gated, gates, 300ms), mproc::TimeoutError);
  const double took = seconds_since(t0);
  write_file(dir.file("gate"), "x");
  EXPECT_GE(took, 0.25);
  // Wide (load, sanitizers): it only has to come well before the gated task's
  // own 30 s, which waiting for it would take.
  EXPECT_LT(took, 15.0) << "map(timeout=300ms) returned only after " << took << " s";
}

TEST(ExecutorBasics, TaskExceptionComesBackAsRemoteError) {
  ProcessPoolExecutor ex(1);
  auto f = ex.submit(throw_out_of_range, std::string("index 7 is out of range"));
  try {
    f.get();
    FAIL() << "get() did not throw";
  } catch (const mproc::RemoteError& e) {
    EXPECT_EQ(e.type_name(), "std::out_of_range");
    EXPECT_EQ(e.message(), "index 7 is out of range");
    EXPECT_NE(std::string(e.what()).find("index 7 is out of range"), std::string::npos);
  }
  // The worker survives a task's exception: the next task runs on the same pid.
  pid_t before = ex.submit(my_pid).get();
  EXPECT_THROW(ex.submit(throw_out_of_range, std::string("x")).get(), mproc::RemoteError);
  EXPECT_EQ(ex.submit(my_pid).get(), before);
  EXPECT_EQ(ex.respawns(), 0u);
}

TEST(ExecutorBasics, MapRethrowsTheTaskError) {
  ProcessPoolExecutor ex(2);
  try {
    ex.map([](int x) { return fail_on(x, 13); }, std::views::iota(0, 20), std::nullopt, 3);
    FAIL() << "map did not throw";
  } catch (const mproc::RemoteError& e) {
    EXPECT_EQ(e.type_name(), "std::invalid_argument");
    EXPECT_EQ(e.message(), "bad item 13");
  }
  EXPECT_EQ(ex.submit(square, 5).get(), 25);
}

// Two workers run two tasks at the same time, each in its own process, even
// when both are submitted at once.
TEST(ExecutorBasics, TasksRunInParallelOnSeparateWorkers) {
  ProcessPoolExecutor ex(2);
  ex.submit(my_pid).get();  // workers up
  ASSERT_TRUE(mproc::test::eventually([&] { return ex.worker_pids().size() == 2; }, 10000));
  // Each task waits until it sees the other one started: they only both
  // return if they ran at the same time (no wall-clock bound to break).
  TempDir dir;
  auto a = ex.submit(meet_then_pid, dir.file("a"), dir.file("b"));
  auto b = ex.submit(meet_then_pid, dir.file("b"), dir.file("a"));
  pid_t pa = a.get(), pb = b.get();
  EXPECT_GT(pa, 0) << "task a never saw task b running";
  EXPECT_GT(pb, 0) << "task b never saw task a running";
  EXPECT_NE(pa, pb) << "both tasks ran on worker " << pa << " while the other one was idle";
}

TEST(ExecutorShutdown, WaitTrueWaitsForPendingWork) {
  TempDir dir;
  ProcessPoolExecutor ex(1);
  std::vector<Future<void>> fs;
  for (int i = 0; i < 4; ++i) fs.push_back(ex.submit(sleep_then_touch, 100, dir.file(std::to_string(i))));
  ex.shutdown(true);
  for (int i = 0; i < 4; ++i) {
    EXPECT_TRUE(fs[static_cast<std::size_t>(i)].done()) << i;
    EXPECT_TRUE(file_exists(dir.file(std::to_string(i)))) << "task " << i << " had not run when shutdown returned";
  }
  for (auto& f : fs) EXPECT_NO_THROW(f.get());
  EXPECT_TRUE(ex.worker_pids().empty());
}

TEST(ExecutorShutdown, WaitFalseReturnsAtOnceAndWorkStillCompletes) {
  TempDir dir;
  ProcessPoolExecutor ex(1);
  // The task cannot end before the gate opens (after shutdown returned): no
  // wall-clock bound needed to show that shutdown(false) did not wait for it.
  auto f = ex.submit(gated_then_touch, dir.file("gate"), dir.file("late"));
  ex.shutdown(false);
  EXPECT_FALSE(f.done()) << "shutdown(false) waited for the running task";
  EXPECT_THROW(ex.submit(square, 1), mproc::Error);
  write_file(dir.file("gate"), "x");
  EXPECT_NO_THROW(f.get());
  EXPECT_TRUE(file_exists(dir.file("late")));
}

TEST(ExecutorShutdown, CancelFuturesCancelsPendingWhileRunningFinish) {
  TempDir dir;
  ProcessPoolExecutor ex(1);
  auto running = ex.submit(started_then_gated, dir.file("started"), dir.file("gate"));
  ASSERT_TRUE(wait_for_file(dir.file("started"), 10s));
  std::vector<Future<int>> pending;
  for (int i = 0; i < 16; ++i) pending.push_back(ex.submit(square, i));
  std::this_thread::sleep_for(50ms);  // let the dispatcher hand out what it will
  std::vector<bool> was_running;
  for (auto& f : pending) was_running.push_back(f.running());
  std::thread opener([&] {
    std::this_thread::sleep_for(200ms);
    write_file(dir.file("gate"), "open");
  });
  ex.shutdown(true, true);
  opener.join();
  EXPECT_TRUE(running.done());
  EXPECT_FALSE(running.cancelled());
  EXPECT_GT(running.get(), 0) << "the running task must finish normally";
  // Tasks already handed to the busy worker (running()) complete; every task
  // that was still pending is cancelled.
  int cancelled = 0;
  for (std::size_t i = 0; i < pending.size(); ++i) {
    ASSERT_TRUE(pending[i].done()) << i;
    if (pending[i].cancelled()) {
      ++cancelled;
      EXPECT_FALSE(was_running[i]) << "task " << i << " was running, yet got cancelled";
      EXPECT_THROW(pending[i].get(), mproc::CancelledError);
      EXPECT_THROW(std::rethrow_exception(pending[i].exception()), mproc::CancelledError);
    } else {
      EXPECT_TRUE(was_running[i]) << "pending task " << i << " was not cancelled by shutdown(cancel_futures)";
      EXPECT_EQ(pending[i].get(), static_cast<int>(i * i));
    }
  }
  EXPECT_GE(cancelled, 1);
  EXPECT_TRUE(pending.back().cancelled());
}

TEST(ExecutorShutdown, SubmitAfterShutdownThrows) {
  ProcessPoolExecutor ex(1);
  EXPECT_EQ(ex.submit(square, 3).get(), 9);
  ex.shutdown();
  EXPECT_THROW(ex.submit(square, 3), mproc::Error);
  EXPECT_THROW(ex.map(square, std::vector<int>{1, 2}), mproc::Error);
  ex.shutdown();  // twice is fine
}

TEST(ExecutorShutdown, DestructorWaitsForSubmittedWork) {
  TempDir dir;
  {
    ProcessPoolExecutor ex(2);
    for (int i = 0; i < 6; ++i) (void)ex.submit(sleep_then_touch, 80, dir.file(std::to_string(i)));
  }
  for (int i = 0; i < 6; ++i)
    EXPECT_TRUE(file_exists(dir.file(std::to_string(i)))) << "task " << i << " had not run when ~Executor returned";
}

TEST(ExecutorThreads, FourSubmitterThreads) {
  ProcessPoolExecutor ex(2);
  constexpr int kThreads = 4, kPer = 1500;
  std::vector<std::vector<long>> got(kThreads);
  std::atomic<int> errors{0};
  std::vector<std::thread> ts;
  for (int t = 0; t < kThreads; ++t)
    ts.emplace_back([&, t] {
      try {
        std::vector<Future<long>> fs;
        for (int i = 0; i < kPer; ++i) fs.push_back(ex.submit(twice_plus_one, static_cast<long>(t * kPer + i)));
        for (auto& f : fs) got[static_cast<std::size_t>(t)].push_back(f.get());
        // map from several threads too
        auto m = ex.map(twice_plus_one, std::views::iota(0L, 100L), std::nullopt, 9);
        for (long i = 0; i < 100; ++i)
          if (m[static_cast<std::size_t>(i)] != 2 * i + 1) ++errors;
      } catch (...) {
        ++errors;
      }
    });
  for (auto& t : ts) t.join();
  EXPECT_EQ(errors.load(), 0);
  for (int t = 0; t < kThreads; ++t) {
    ASSERT_EQ(got[static_cast<std::size_t>(t)].size(), static_cast<std::size_t>(kPer));
    for (int i = 0; i < kPer; ++i)
      ASSERT_EQ(got[static_cast<std::size_t>(t)][static_cast<std::size_t>(i)], 2L * (t * kPer + i) + 1);
  }
}

namespace {
// CPU seconds used so far by a process (all its threads), from /proc.
double cpu_seconds(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  std::getline(in, line);
  std::istringstream rest(line.substr(line.rfind(')') + 2));
  std::string field;
  long utime = 0, stime = 0;
  for (int i = 3; i <= 15 && rest >> field; ++i) {
    if (i == 14) utime = std::stol(field);
    if (i == 15) stime = std::stol(field);
  }
  return static_cast<double>(utime + stime) / static_cast<double>(::sysconf(_SC_CLK_TCK));
}
}  // namespace

// The spinning that makes tiny round trips fast must stop when work stops:
// an idle pool (dispatcher and workers) uses next to no CPU.
TEST(ExecutorBasics, IdlePoolCostsNoCpu) {
  ProcessPoolExecutor ex(2);
  for (int i = 0; i < 2000; ++i) ASSERT_EQ(ex.submit(square, 3).get(), 9);  // spinning paths in use
  auto pids = ex.worker_pids();
  ASSERT_EQ(pids.size(), 2u);
  std::this_thread::sleep_for(50ms);  // spins end within a millisecond
  auto total = [&] {
    double s = cpu_seconds(::getpid());
    for (pid_t p : pids) s += cpu_seconds(p);
    return s;
  };
  const double before = total();
  std::this_thread::sleep_for(1s);
  const double used = total() - before;
  EXPECT_LT(used, 0.05) << "an idle pool used " << used << " CPU seconds in one second";
  EXPECT_EQ(ex.submit(square, 4).get(), 16);  // and it still serves at once
}

// ---- imap: Python's lazy Executor.map (test_concurrent_futures) ---------------

// Mirrors CPython's ExecutorTest.test_map_timeout: map(sleep, [0, 0, 6],
// timeout=5) yields the first two results, then raises TimeoutError.
TEST(ExecutorParity, ExecutorTest_test_map_timeout) {
  TempDir dir;
  ProcessPoolExecutor ex(2);
  // Both workers up first, and a timeout of seconds (Python's test: 5 s), so
  // that the two quick results are in before it even on a loaded machine.
  (void)ex.map(square, std::vector<int>{1, 2});
  ASSERT_TRUE(mproc::test::eventually([&] { return ex.worker_pids().size() == 2; }, 30000));
  write_file(dir.file("open"), "x");
  std::vector<std::string> gates{dir.file("open"), dir.file("open"), dir.file("gate")};
  std::vector<int> results;
  const auto t0 = Clock::now();
  try {
    for (int r : ex.imap(gated, gates, 2s)) results.push_back(r);
    ADD_FAILURE() << "imap(timeout=2s) ended without TimeoutError";
  } catch (const mproc::TimeoutError&) {
  }
  const double took = seconds_since(t0);
  write_file(dir.file("gate"), "x");
  EXPECT_EQ(results, (std::vector<int>{1, 1})) << "the results before the timeout were not handed out";
  EXPECT_GE(took, 1.9);
  EXPECT_LT(took, 20.0) << "imap(timeout=2s) raised only after " << took << " s";  // wide: load
}

// Mirrors CPython's ExecutorTest.test_map_exception: the results before the
// failing item come out, then its error; then the iteration is over.
TEST(ExecutorParity, ExecutorTest_test_map_exception) {
  ProcessPoolExecutor ex(2);
  auto it = ex.imap([](int x) { return fail_on(x, 2); }, std::vector<int>{0, 1, 2, 3});
  EXPECT_EQ(it.next(), 0);
  EXPECT_EQ(it.next(), 1);
  try {
    (void)it.next();
    FAIL() << "the failing item did not raise";
  } catch (const mproc::RemoteError& e) {
    EXPECT_EQ(e.message(), "bad item 2");
  }
  EXPECT_EQ(it.next(), std::nullopt);
  // The eager form still collects into a std::vector, as before.
  std::vector<int> all = ex.imap(square, std::vector<int>{1, 2, 3});
  EXPECT_EQ(all, (std::vector<int>{1, 4, 9}));
}

// Blocks on a path ending in "gate"; otherwise creates the file.
int gate_or_touch(std::string path) {
  if (path.ends_with("gate")) return gated(path);
  write_file(path, "x");
  return 2;
}

// As Python's map (its iterator's `finally: future.cancel()`): a timeout
// cancels the tasks not yet started, in map and imap alike, and dropping an
// imap range early does too.
TEST(ExecutorParity, MapTimeoutCancelsTheTasksNotStarted) {
  TempDir dir;
  ProcessPoolExecutor ex(1);  // one worker: the gated task holds it
  std::vector<std::string> items{dir.file("gate"), dir.file("a"), dir.file("b")};
  EXPECT_THROW(ex.map(gate_or_touch, items, 200ms), mproc::TimeoutError);
  {
    auto dropped = ex.imap(gate_or_touch, std::vector<std::string>{dir.file("c"), dir.file("d")});
  }
  write_file(dir.file("gate"), "x");
  ex.shutdown(true);  // whatever was still queued would run now
  for (const char* f : {"a", "b", "c", "d"}) EXPECT_FALSE(file_exists(dir.file(f))) << f << " ran after cancel";
}
