// ProcessPoolExecutor faults, each provoked for real: segfault, abort,
// exit(), _exit(), SIGKILL from outside, per-task deadlines, the memory cap,
// max_tasks_per_child and initializers. After each, the pool must still
// serve new tasks.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>

#include <algorithm>
#include <map>
#include <optional>
#include <ranges>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "mproc/executor.hpp"
#include "mproc/process.hpp"
#include "pool_test_util.hpp"
#include "support.hpp"

using namespace pooltest;
using mproc::Future;
using mproc::PoolOptions;
using mproc::ProcessPoolExecutor;
using mproc::SubmitOptions;

namespace {

template <class R>
std::optional<mproc::WorkerCrashed> crash_of(const Future<R>& f) {
  try {
    f.get();
    ADD_FAILURE() << "task " << f.id() << " did not fail";
  } catch (const mproc::WorkerCrashed& e) {
    return e;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "task " << f.id() << " failed with another error: " << e.what();
  }
  return std::nullopt;
}

template <class R>
std::optional<mproc::TaskTimeout> timeout_of(const Future<R>& f) {
  try {
    f.get();
    ADD_FAILURE() << "task " << f.id() << " did not fail";
  } catch (const mproc::TaskTimeout& e) {
    return e;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "task " << f.id() << " failed with another error: " << e.what();
  }
  return std::nullopt;
}

// Runs in a child process: starts a pool, records its worker pids, dies.
void pool_then_die(std::string path) {
  ProcessPoolExecutor ex(2);
  ex.submit(my_pid).get();
  mproc::test::eventually([&] { return ex.worker_pids().size() == 2; }, 10000);
  std::string text;
  for (pid_t p : ex.worker_pids()) text += std::to_string(p) + "\n";
  write_file(path, text);
  ::raise(SIGKILL);
}

void pool_in_child(int x) {
  ProcessPoolExecutor ex(1);
  ::_exit(ex.submit(square, x).get());
}

bool contains(const std::vector<pid_t>& v, pid_t p) { return std::find(v.begin(), v.end(), p) != v.end(); }

// The pool still works: a fresh batch of tasks all succeed.
void expect_pool_serves(ProcessPoolExecutor& ex) {
  std::vector<Future<int>> fs;
  for (int i = 0; i < 10; ++i) fs.push_back(ex.submit(square, i));
  for (int i = 0; i < 10; ++i) EXPECT_EQ(fs[static_cast<std::size_t>(i)].get(), i * i);
  EXPECT_EQ(ex.map(square, std::vector<int>{1, 2, 3}, std::nullopt, 2), (std::vector<int>{1, 4, 9}));
}

// Runs `crasher` among normal tasks on 2 workers; returns its WorkerCrashed.
template <class F, class... A>
std::optional<mproc::WorkerCrashed> crash_among_others(ProcessPoolExecutor& ex, F crasher, A... args) {
  ex.submit(my_pid).get();
  EXPECT_TRUE(mproc::test::eventually([&] { return ex.worker_pids().size() == ex.max_workers(); }, 10000));
  const auto before = ex.worker_pids();
  std::vector<Future<int>> others;
  for (int i = 0; i < 5; ++i) others.push_back(ex.submit(square, i));
  auto bad = ex.submit(crasher, args...);
  for (int i = 5; i < 10; ++i) others.push_back(ex.submit(square, i));
  auto e = crash_of(bad);
  for (int i = 0; i < 10; ++i)
    EXPECT_EQ(others[static_cast<std::size_t>(i)].get(), i * i) << "task " << i << " beside the crash";
  if (e) {
    EXPECT_EQ(e->task(), bad.id());
    EXPECT_TRUE(contains(before, e->pid())) << "WorkerCrashed::pid " << e->pid() << " is not a worker";
    EXPECT_TRUE(mproc::test::eventually([&] { return !contains(ex.worker_pids(), e->pid()); }));
    EXPECT_TRUE(mproc::test::eventually([&] { return ex.worker_pids().size() == ex.max_workers(); }, 10000))
        << "the dead worker was not replaced";
    EXPECT_GE(ex.respawns(), 1u);
  }
  expect_pool_serves(ex);
  return e;
}

}  // namespace

TEST(ExecutorFaults, SegfaultFailsOnlyThatTask) {
  ProcessPoolExecutor ex(2);
  auto e = crash_among_others(ex, segfault);
  ASSERT_TRUE(e);
  EXPECT_EQ(e->signal(), SIGSEGV);
  EXPECT_EQ(e->exitcode(), -SIGSEGV);
  EXPECT_NE(std::string(e->what()).find(std::to_string(e->pid())), std::string::npos) << e->what();
}

TEST(ExecutorFaults, AbortGivesSigabrt) {
  ProcessPoolExecutor ex(2);
  auto e = crash_among_others(ex, do_abort);
  ASSERT_TRUE(e);
  EXPECT_EQ(e->signal(), SIGABRT);
}

TEST(ExecutorFaults, ExitInTaskGivesExitcode) {
  ProcessPoolExecutor ex(2);
  auto e = crash_among_others(ex, do_exit, 3);
  ASSERT_TRUE(e);
  EXPECT_EQ(e->exitcode(), 3);
  EXPECT_EQ(e->signal(), 0);
}

TEST(ExecutorFaults, UnderscoreExitInTaskGivesExitcode) {
  ProcessPoolExecutor ex(2);
  auto e = crash_among_others(ex, do__exit, 3);
  ASSERT_TRUE(e);
  EXPECT_EQ(e->exitcode(), 3);
  EXPECT_EQ(e->signal(), 0);
}

TEST(ExecutorFaults, ExitZeroInTaskIsStillACrash) {
  ProcessPoolExecutor ex(1);
  auto f = ex.submit(do__exit, 0);
  auto e = crash_of(f);
  ASSERT_TRUE(e);
  EXPECT_EQ(e->exitcode(), 0);
  expect_pool_serves(ex);
}

TEST(ExecutorFaults, SigkillOfTheRunningWorker) {
  TempDir dir;
  ProcessPoolExecutor ex(2);
  auto f = ex.submit(started_then_gated, dir.file("started"), dir.file("gate"));
  ASSERT_TRUE(wait_for_file(dir.file("started"), 10s));
  const pid_t pid = std::stoi(read_file(dir.file("started")));
  ASSERT_TRUE(contains(ex.worker_pids(), pid));
  ASSERT_EQ(::kill(pid, SIGKILL), 0);
  auto e = crash_of(f);
  ASSERT_TRUE(e);
  EXPECT_EQ(e->signal(), SIGKILL);
  EXPECT_EQ(e->pid(), pid);
  EXPECT_EQ(e->task(), f.id());
  write_file(dir.file("gate"), "x");
  expect_pool_serves(ex);
  EXPECT_FALSE(contains(ex.worker_pids(), pid));
}

TEST(ExecutorFaults, SeveralCrashesInARowThenNormalWork) {
  ProcessPoolExecutor ex(2);
  std::vector<Future<int>> bad;
  for (int i = 0; i < 6; ++i) bad.push_back(i % 2 ? ex.submit(segfault) : ex.submit(do_abort));
  for (auto& f : bad) EXPECT_TRUE(crash_of(f));
  expect_pool_serves(ex);
  EXPECT_GE(ex.respawns(), 6u);
}

TEST(ExecutorFaults, PoolTaskTimeoutKillsAndFailsThatTaskAlone) {
  // 2 s, not less: the quick tasks and expect_pool_serves run under it too,
  // on workers respawned meanwhile, and a loaded machine (or a sanitizer
  // build) can take a good part of a second to start one.
  ProcessPoolExecutor ex(PoolOptions{.max_workers = 2, .task_timeout = 2s});
  ex.submit(my_pid).get();
  const auto t0 = Clock::now();
  auto slow = ex.submit(sleep_ms, 20000);
  std::vector<Future<int>> quick;
  for (int i = 0; i < 8; ++i) quick.push_back(ex.submit(sleep_ms, 20));
  auto e = timeout_of(slow);
  const double took = seconds_since(t0);
  ASSERT_TRUE(e);
  EXPECT_GE(took, 1.99);
  // Wide (load, sanitizers): it only has to come well before the 20 s the
  // task would take to finish by itself.
  EXPECT_LT(took, 15.0) << "a 2 s deadline fired after " << took << " s";
  EXPECT_EQ(e->task(), slow.id());
  EXPECT_EQ(e->limit(), std::chrono::nanoseconds(2s));
  EXPECT_TRUE(mproc::test::eventually([&] { return mproc::test::pid_gone(e->pid()); }))
      << "the timed-out worker " << e->pid() << " still runs";
  for (auto& f : quick) EXPECT_EQ(f.get(), 20);
  expect_pool_serves(ex);
}

TEST(ExecutorFaults, SubmitTimeoutOverridesThePoolDeadline) {
  // Shorter than none at all.
  {
    ProcessPoolExecutor ex(2);
    const auto t0 = Clock::now();
    auto slow = ex.submit(SubmitOptions{.timeout = 200ms}, sleep_ms, 20000);
    auto unlimited = ex.submit(sleep_ms, 700);  // no deadline: runs to the end
    auto e = timeout_of(slow);
    ASSERT_TRUE(e);
    EXPECT_LT(seconds_since(t0), 15.0);  // vs the task's 20 s; wide for load
    EXPECT_EQ(e->limit(), std::chrono::nanoseconds(200ms));
    EXPECT_EQ(unlimited.get(), 700);
    expect_pool_serves(ex);
  }
  // Longer than the pool's.
  {
    // 1 s pool deadline, not less: expect_pool_serves runs under it on a
    // respawned worker, which a loaded machine can take long to start.
    ProcessPoolExecutor ex(PoolOptions{.max_workers = 1, .task_timeout = 1s});
    auto ok = ex.submit(SubmitOptions{.timeout = 10s}, sleep_ms, 1500);
    EXPECT_EQ(ok.get(), 1500);
    auto e = timeout_of(ex.submit(sleep_ms, 8000));
    ASSERT_TRUE(e);
    EXPECT_EQ(e->limit(), std::chrono::nanoseconds(1s));
    expect_pool_serves(ex);
  }
}

// The deadline counts from when the task starts, not from submit: tasks
// queued behind a slow (but in-time) one must not time out while waiting.
TEST(ExecutorFaults, DeadlineCountsFromStartNotFromSubmit) {
  // Each task needs a third of the deadline (a wide margin for load); the
  // four together need more than it.
  ProcessPoolExecutor ex(PoolOptions{.max_workers = 1, .task_timeout = 1500ms});
  std::vector<Future<int>> fs;
  for (int i = 0; i < 4; ++i) fs.push_back(ex.submit(sleep_ms, 500));
  for (auto& f : fs) EXPECT_EQ(f.get(), 500);
}

TEST(ExecutorFaults, MemoryCapRecyclesTheWorkerAfterItsTask) {
  ProcessPoolExecutor ex(PoolOptions{.max_workers = 1, .max_memory_per_child = 100u << 20});
  const pid_t p0 = ex.submit(my_pid).get();
  EXPECT_EQ(ex.submit(my_pid).get(), p0) << "a small task must not recycle the worker";
  EXPECT_EQ(ex.submit(hog_memory, 200).get(), p0) << "the task over the cap must itself succeed";
  const pid_t p1 = ex.submit(my_pid).get();
  EXPECT_NE(p1, p0) << "the worker over the memory cap was not recycled";
  EXPECT_TRUE(mproc::test::eventually([&] { return mproc::test::pid_gone(p0); }));
  EXPECT_EQ(ex.submit(my_pid).get(), p1);
  expect_pool_serves(ex);
}

TEST(ExecutorFaults, MaxTasksPerChildRecyclesEveryTwoTasks) {
  ProcessPoolExecutor ex(PoolOptions{.max_workers = 1, .max_tasks_per_child = 2});
  std::vector<pid_t> pids;
  for (int i = 0; i < 8; ++i) pids.push_back(ex.submit(my_pid).get());
  for (std::size_t i = 0; i < pids.size(); i += 2) {
    EXPECT_EQ(pids[i], pids[i + 1]) << "tasks " << i << " and " << i + 1;
    if (i + 2 < pids.size()) {
      EXPECT_NE(pids[i + 1], pids[i + 2]) << "no recycling after task " << i + 1;
    }
  }
  // Submitted all at once too.
  std::vector<Future<pid_t>> fs;
  for (int i = 0; i < 10; ++i) fs.push_back(ex.submit(pid_of_item, i));
  std::map<pid_t, int> per_pid;
  for (auto& f : fs) ++per_pid[f.get()];
  EXPECT_EQ(per_pid.size(), 5u);
  for (auto [pid, n] : per_pid) EXPECT_EQ(n, 2) << "worker " << pid;
}

TEST(ExecutorFaults, MaxTasksPerChildOneDoesNotStall) {
  ProcessPoolExecutor ex(PoolOptions{.max_workers = 2, .max_tasks_per_child = 1});
  const auto t0 = Clock::now();
  std::vector<Future<pid_t>> fs;
  for (int i = 0; i < 50; ++i) fs.push_back(ex.submit(pid_of_item, i));
  std::set<pid_t> pids;
  for (auto& f : fs) {
    ASSERT_TRUE(f.wait_for(30s)) << "the pool stalled";
    pids.insert(f.get());
  }
  EXPECT_EQ(pids.size(), 50u) << "a worker ran more than one task";
  EXPECT_LT(seconds_since(t0), 60.0);  // a stall guard (normally ~2 s); wide for load
  auto m = ex.map(square, std::views::iota(0, 20), std::nullopt, 3);
  for (int i = 0; i < 20; ++i) EXPECT_EQ(m[static_cast<std::size_t>(i)], i * i);
}

TEST(ExecutorFaults, InitializerRunsOncePerWorker) {
  TempDir dir;
  std::set<pid_t> task_pids;
  {
    ProcessPoolExecutor ex(PoolOptions{.max_workers = 3, .initializer = mproc::call(init_record_pid, dir.path())});
    std::vector<Future<pid_t>> fs;
    for (int i = 0; i < 60; ++i) fs.push_back(ex.submit(sleep_then_pid, 3));
    for (auto& f : fs) task_pids.insert(f.get());
    EXPECT_EQ(ex.respawns(), 0u);
  }
  auto files = dir.entries();
  EXPECT_EQ(files.size(), 3u);
  std::set<pid_t> init_pids;
  for (auto& name : files) {
    init_pids.insert(std::stoi(name));
    EXPECT_EQ(read_file(dir.file(name)), "init\n") << "the initializer ran more than once in worker " << name;
  }
  for (pid_t p : task_pids) EXPECT_TRUE(init_pids.count(p)) << "worker " << p << " ran tasks without the initializer";
}

TEST(ExecutorFaults, InitializerRunsAgainInARecycledWorker) {
  TempDir dir;
  std::set<pid_t> task_pids;
  {
    ProcessPoolExecutor ex(PoolOptions{
        .max_workers = 1, .max_tasks_per_child = 1, .initializer = mproc::call(init_record_pid, dir.path())});
    for (int i = 0; i < 3; ++i) task_pids.insert(ex.submit(my_pid).get());
  }
  EXPECT_EQ(task_pids.size(), 3u);
  // Each recycled worker ran the initializer once (a replacement started
  // after the last task may have run it too).
  EXPECT_GE(dir.entries().size(), 3u);
  EXPECT_LE(dir.entries().size(), 4u);
  for (pid_t p : task_pids) EXPECT_EQ(read_file(dir.file(std::to_string(p))), "init\n") << "worker " << p;
}

TEST(ExecutorFaults, InitializerThatThrowsBreaksThePoolWithoutALoop) {
  const auto t0 = Clock::now();
  {
    ProcessPoolExecutor ex(PoolOptions{.max_workers = 2,
                                       .initializer = mproc::call(init_throws, std::string("cannot open db.sqlite"))});
    std::vector<Future<int>> fs;
    try {
      for (int i = 0; i < 5; ++i) fs.push_back(ex.submit(square, i));
    } catch (const mproc::BrokenPool&) {
      // the pool may already know it is broken
    }
    for (auto& f : fs) {
      ASSERT_TRUE(f.wait_for(20s)) << "a task of a broken pool hangs";
      try {
        f.get();
        ADD_FAILURE() << "a task ran in a pool whose initializer failed";
      } catch (const mproc::BrokenPool& e) {
        std::string what = e.what();
        EXPECT_NE(what.find("initializer"), std::string::npos) << what;
        EXPECT_NE(what.find("cannot open db.sqlite"), std::string::npos) << what;
        EXPECT_NE(what.find("std::runtime_error"), std::string::npos) << what;
      } catch (const std::exception& e) {
        ADD_FAILURE() << "not BrokenPool: " << e.what();
      }
    }
    // Later submits fail at once (or their futures do), with the same error.
    std::this_thread::sleep_for(300ms);
    try {
      auto f = ex.submit(square, 1);
      ASSERT_TRUE(f.wait_for(20s));
      EXPECT_THROW(f.get(), mproc::BrokenPool);
    } catch (const mproc::BrokenPool& e) {
      EXPECT_NE(std::string(e.what()).find("cannot open db.sqlite"), std::string::npos);
    }
    EXPECT_LE(ex.respawns(), 2u) << "the pool kept respawning workers whose initializer fails";
    EXPECT_TRUE(mproc::test::eventually([&] { return ex.worker_pids().empty(); }, 30000));
  }
  EXPECT_LT(seconds_since(t0), 60.0);  // a hang guard (normally ~1 s); wide for load and sanitizers
}

TEST(ExecutorFaults, WorkersDieWithTheParentWithinASecond) {
  TempDir dir;
  // fork: see PoolInsideAForkserverChild for the default method.
  mproc::Process p(mproc::ProcessOptions{.start_method = mproc::StartMethod::fork}, pool_then_die, dir.file("pids"));
  p.start();
  ASSERT_TRUE(p.join(20s));
  EXPECT_EQ(p.exitcode(), -SIGKILL);
  ASSERT_TRUE(file_exists(dir.file("pids")));
  std::vector<pid_t> pids;
  std::istringstream in(read_file(dir.file("pids")));
  for (pid_t q; in >> q;) pids.push_back(q);
  ASSERT_EQ(pids.size(), 2u);
  for (pid_t q : pids)
    // Normally within milliseconds (death signal); 10 s: load, sanitizers.
    EXPECT_TRUE(mproc::test::eventually([&] { return mproc::test::pid_gone(q); }, 10000))
        << "worker " << q << " outlived its pool's process by more than 10 s";
  // Orphans come to this process (a subreaper): reap them.
  for (pid_t q : pids) ::waitpid(q, nullptr, WNOHANG);
}

// A process started by the default method (forkserver) can run a pool of
// its own, as in Python.
TEST(ExecutorFaults, PoolInsideAForkserverChild) {
  mproc::Process p(pool_in_child, 6);
  p.start();
  const bool ended = p.join(15s);
  if (!ended) {
    p.kill();
    p.join();
  }
  ASSERT_TRUE(ended) << "a pool started inside a forkserver child hangs";
  EXPECT_EQ(p.exitcode(), 36);
  // The child _exit()ed under its pool: its worker and fork server must
  // follow it at once (they come back to this subreaper to be reaped).
  EXPECT_TRUE(mproc::test::reap_orphans(10000)) << "the child's pool outlived it";  // wide: load
}
