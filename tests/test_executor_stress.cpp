// ProcessPoolExecutor under stress: 10^5 tasks while a thread SIGKILLs random
// workers (every input ends with exactly one correct result), and many tasks
// from several submitter threads.
#include <gtest/gtest.h>
#include <signal.h>

#include <atomic>
#include <random>
#include <thread>
#include <vector>

#include "mproc/executor.hpp"
#include "pool_test_util.hpp"
#include "support.hpp"

using namespace pooltest;
using mproc::Future;
using mproc::ProcessPoolExecutor;

TEST(ExecutorStress, NoLostOrDuplicatedResultsWhileWorkersAreKilled) {
  constexpr long kTasks = 100'000;
  constexpr std::size_t kBatch = 4096;
  ProcessPoolExecutor ex(2);
  ex.submit(my_pid).get();

  std::atomic<bool> stop{false};
  std::atomic<int> kills{0};
  std::thread killer([&] {
    std::mt19937 rng(12345);
    while (!stop.load()) {
      std::this_thread::sleep_for(2ms);
      auto pids = ex.worker_pids();
      if (pids.empty()) continue;
      if (::kill(pids[rng() % pids.size()], SIGKILL) == 0) ++kills;
    }
  });

  std::vector<int> results_per_input(kTasks, 0);
  long wrong = 0, crashed = 0, other_errors = 0;
  std::vector<long> todo(kTasks);
  for (long i = 0; i < kTasks; ++i) todo[static_cast<std::size_t>(i)] = i;
  const auto t0 = Clock::now();
  int rounds = 0;
  while (!todo.empty() && rounds < 50) {
    ++rounds;
    if (rounds > 1 && todo.size() < 100) stop = true;  // let the last retries through
    std::vector<long> retry;
    for (std::size_t base = 0; base < todo.size(); base += kBatch) {
      std::vector<std::pair<long, Future<long>>> batch;
      for (std::size_t i = base; i < std::min(todo.size(), base + kBatch); ++i)
        batch.emplace_back(todo[i], ex.submit(twice_plus_one, todo[i]));
      for (auto& [x, f] : batch) {
        try {
          long r = f.get();
          if (r != 2 * x + 1) ++wrong;
          ++results_per_input[static_cast<std::size_t>(x)];
        } catch (const mproc::WorkerCrashed& e) {
          ++crashed;
          if (e.signal() != SIGKILL) ++other_errors;
          retry.push_back(x);
        } catch (const std::exception& e) {
          ++other_errors;
          ADD_FAILURE() << "task " << x << ": " << e.what();
          retry.push_back(x);
        }
      }
    }
    todo.swap(retry);
  }
  stop = true;
  killer.join();
  const double took = seconds_since(t0);

  EXPECT_TRUE(todo.empty()) << todo.size() << " inputs still without a result after " << rounds << " rounds";
  EXPECT_EQ(wrong, 0) << "results that do not match their input";
  EXPECT_EQ(other_errors, 0);
  long missing = 0, duplicated = 0;
  for (int n : results_per_input) {
    if (n == 0) ++missing;
    if (n > 1) ++duplicated;
  }
  EXPECT_EQ(missing, 0);
  EXPECT_EQ(duplicated, 0);
  EXPECT_GT(kills.load(), 10) << "the killer did not get to kill";
  EXPECT_GT(crashed, 0) << "no task ever saw its worker killed";
  RecordProperty("kills", kills.load());
  RecordProperty("crashed", static_cast<int>(crashed));
  std::printf("[stress] %ld tasks, %d kills, %ld crashed tasks resubmitted, %d rounds, %.2f s\n", kTasks,
              kills.load(), crashed, rounds, took);
  // Still serving (a kill sent just before the killer stopped may still land
  // on one more task).
  int crashes_after = 0;
  for (;;) {
    try {
      EXPECT_EQ(ex.submit(twice_plus_one, 20L).get(), 41);
      break;
    } catch (const mproc::WorkerCrashed&) {
      ASSERT_LT(++crashes_after, 3);
    }
  }
}

TEST(ExecutorStress, ManySubmitterThreadsManyTasks) {
  ProcessPoolExecutor ex(2);
  constexpr int kThreads = 4, kPer = 5000;
  std::vector<long> sums(kThreads, 0);
  std::atomic<int> errors{0};
  std::vector<std::thread> ts;
  for (int t = 0; t < kThreads; ++t)
    ts.emplace_back([&, t] {
      std::vector<Future<long>> fs;
      fs.reserve(kPer);
      for (int i = 0; i < kPer; ++i) fs.push_back(ex.submit(twice_plus_one, static_cast<long>(i)));
      for (auto& f : fs) {
        try {
          sums[static_cast<std::size_t>(t)] += f.get();
        } catch (...) {
          ++errors;
        }
      }
    });
  for (auto& t : ts) t.join();
  EXPECT_EQ(errors.load(), 0);
  const long expect = static_cast<long>(kPer) * kPer;  // sum of 2i+1 for i < n = n^2
  for (int t = 0; t < kThreads; ++t) EXPECT_EQ(sums[static_cast<std::size_t>(t)], expect) << "thread " << t;
}
