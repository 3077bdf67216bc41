// mproc::mpi::PoolExecutor, run as `mpirun -n 3 --oversubscribe mproc_mpi_tests`
// (rank 0 runs GoogleTest, ranks 1 and 2 are workers), and for the
// single-rank tests as a plain `mproc_mpi_tests --gtest_filter=MpiSpawn.*`
// (the workers come from MPI_Comm_spawn). See tests/CMakeLists.txt.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "mproc/context.hpp"
#include "mproc/executor.hpp"
#include "mproc/mpi.hpp"

namespace {

namespace mpi = mproc::mpi;
using namespace std::chrono_literals;

// Rank 0's engine stays in src/mpi/ (docs/architecture.md, the public boundary).
template <class T>
concept CompleteType = requires { sizeof(T); };
static_assert(!CompleteType<mproc::mpi::detail::Engine>);
static_assert(!CompleteType<mproc::detail::TaskState>);

int add(int a, int b) { return a + b; }
int square(int x) { return x * x; }
std::string greet(std::string name) { return "hello " + name; }
int my_rank(int) { return mpi::worker_info().rank; }
void nothing(int) {}
int fail_on_13(int x) {
  if (x == 13) throw std::invalid_argument("unlucky " + std::to_string(x));
  return x;
}
int sleep_ms(int ms) {
  std::this_thread::sleep_for(std::chrono::milliseconds(ms));
  return ms;
}
// Blocks its worker until the file exists (the test decides when).
int wait_for_file(std::string path) {
  for (int i = 0; i < 60000 && !std::filesystem::exists(path); ++i) std::this_thread::sleep_for(1ms);
  return 1;
}
std::vector<char> echo_bytes(std::vector<char> v) { return v; }

double sum_shared(mpi::Shared<std::vector<double>> data, int k) {
  double s = 0;
  for (double d : data.get()) s += d;
  return s + k;
}
mpi::WorkerInfo info_after_use(mpi::Shared<std::vector<double>> data) {
  (void)data.get().size();
  return mpi::worker_info();
}

// Isolation inside a rank: the risky part runs in a local pool of the
// worker rank, so a crash costs that task alone (WorkerCrashed), not the job.
int crash_if_negative(int x) {
  if (x < 0) std::abort();
  return x;
}
int isolated(int x) {
  static mproc::ProcessPoolExecutor local(1);  // one per worker rank, made on first use
  return local.submit(crash_if_negative, x).get();
}
int abort_rank(int) { std::abort(); }

int g_configured = 0;
void configure(int v) { g_configured = v; }
int configured(int) { return g_configured; }
void bad_initializer() { throw std::runtime_error("no database here"); }

std::string temp_flag_path() {
  return (std::filesystem::temp_directory_path() / ("mproc_mpi_test_flag_" + std::to_string(::getpid()))).string();
}

bool under_mpirun() { return mpi::launched_under_mpi(); }

#define REQUIRE_MPIRUN()                                                             \
  do {                                                                               \
    if (!under_mpirun()) GTEST_SKIP() << "run under mpirun -n 3 (see tests/CMakeLists.txt)"; \
  } while (0)

TEST(MpiExecutor, SubmitReturnsResults) {
  REQUIRE_MPIRUN();
  mpi::PoolExecutor ex;
  EXPECT_EQ(ex.max_workers(), 2u);
  EXPECT_EQ(ex.worker_ranks(), (std::vector<int>{1, 2}));
  EXPECT_FALSE(ex.spawned());
  EXPECT_EQ(ex.submit(add, 2, 3).get(), 5);
  EXPECT_EQ(ex.submit(greet, std::string("mpi")).get(), "hello mpi");
  EXPECT_EQ(ex.submit([](int x) { return x * 10; }, 4).get(), 40);
  auto v = ex.submit(nothing, 1);
  v.get();
  EXPECT_TRUE(v.done());
}

TEST(MpiExecutor, TasksRunOnTheWorkerRanks) {
  REQUIRE_MPIRUN();
  mpi::PoolExecutor ex;
  // The first two tasks go to the two idle workers (least loaded first).
  std::vector<mproc::Future<int>> fs{ex.submit(my_rank, 0), ex.submit(my_rank, 0)};
  std::set<int> ranks{fs[0].get(), fs[1].get()};
  EXPECT_EQ(ranks, (std::set<int>{1, 2}));
}

TEST(MpiExecutor, MapKeepsInputOrder) {
  REQUIRE_MPIRUN();
  mpi::PoolExecutor ex;
  std::vector<int> items(1000);
  std::iota(items.begin(), items.end(), 0);
  std::vector<int> expected;
  for (int x : items) expected.push_back(x * x);
  EXPECT_EQ(ex.map(square, items), expected);
  EXPECT_EQ(ex.map(square, items, std::nullopt, 7), expected);
  EXPECT_EQ(ex.map(square, std::vector<int>{}), std::vector<int>{});
  auto units = ex.map(nothing, std::vector<int>{1, 2, 3});
  EXPECT_EQ(units.size(), 3u);
}

TEST(MpiExecutor, ExceptionsComeBackAsRemoteError) {
  REQUIRE_MPIRUN();
  mpi::PoolExecutor ex;
  auto f = ex.submit(fail_on_13, 13);
  try {
    f.get();
    FAIL() << "no exception";
  } catch (const mproc::RemoteError& e) {
    EXPECT_EQ(e.type_name(), "std::invalid_argument");
    EXPECT_EQ(e.message(), "unlucky 13");
  }
  EXPECT_NE(f.exception(), nullptr);
  std::vector<int> items{1, 2, 13, 4};
  EXPECT_THROW(ex.map(fail_on_13, items), mproc::RemoteError);
  EXPECT_EQ(ex.submit(fail_on_13, 12).get(), 12);  // the worker goes on
}

TEST(MpiExecutor, AsCompletedAndWait) {
  REQUIRE_MPIRUN();
  mpi::PoolExecutor ex;
  std::vector<mproc::Future<int>> fs;
  for (int i = 0; i < 20; ++i) fs.push_back(ex.submit(add, i, 1));
  std::set<int> seen;
  for (const auto& f : mproc::as_completed(fs)) seen.insert(f.get());
  EXPECT_EQ(seen.size(), 20u);
  EXPECT_EQ(*seen.begin(), 1);
  EXPECT_EQ(*seen.rbegin(), 20);

  std::vector<mproc::Future<int>> more{ex.submit(sleep_ms, 1), ex.submit(sleep_ms, 2), ex.submit(sleep_ms, 3)};
  auto all = mproc::wait(more, mproc::ALL_COMPLETED);
  EXPECT_EQ(all.done.size(), 3u);
  EXPECT_TRUE(all.not_done.empty());

  const std::string flag = temp_flag_path();
  std::filesystem::remove(flag);
  std::vector<mproc::Future<int>> mixed{ex.submit(wait_for_file, flag), ex.submit(add, 1, 1)};
  auto first = mproc::wait(mixed, mproc::FIRST_COMPLETED);
  ASSERT_EQ(first.done.size(), 1u);  // the blocked one cannot be done
  EXPECT_EQ(first.done[0].get(), 2);
  std::ofstream(flag).put('x');
  EXPECT_EQ(mixed[0].get(), 1);
  std::filesystem::remove(flag);
}

TEST(MpiExecutor, LargeArgumentsAndResults) {
  REQUIRE_MPIRUN();
  mpi::PoolExecutor ex;
  std::vector<char> big(4 << 20);
  for (std::size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>(i * 7);
  EXPECT_EQ(ex.submit(echo_bytes, big).get(), big);
  auto out = ex.map(echo_bytes, std::vector<std::vector<char>>(4, big));
  ASSERT_EQ(out.size(), 4u);
  EXPECT_EQ(out[3], big);
}

TEST(MpiExecutor, SharedValueIsSentOncePerWorker) {
  REQUIRE_MPIRUN();
  mpi::PoolExecutor ex;
  std::vector<double> data(1 << 17);  // 1 MiB
  std::iota(data.begin(), data.end(), 0.0);
  const double total = std::accumulate(data.begin(), data.end(), 0.0);
  auto h = ex.share(data);
  EXPECT_EQ(h.get(), data);  // rank 0 reads the original
  std::vector<mproc::Future<double>> fs;
  for (int k = 0; k < 20; ++k) fs.push_back(ex.submit(sum_shared, h, k));
  for (int k = 0; k < 20; ++k) EXPECT_EQ(fs[static_cast<std::size_t>(k)].get(), total + k);
  // Each worker got it once (and read it from its cache after that).
  auto infos = ex.map(info_after_use, std::vector<mpi::Shared<std::vector<double>>>(8, h));
  std::set<int> ranks;
  for (const auto& i : infos) {
    ranks.insert(i.rank);
    EXPECT_EQ(i.shares_received, 1u);
    EXPECT_GE(i.share_bytes_received, data.size() * sizeof(double));
    EXPECT_LT(i.share_bytes_received, data.size() * sizeof(double) + 64);
  }
  EXPECT_EQ(ranks, (std::set<int>{1, 2}));
  const auto st = ex.stats();
  EXPECT_EQ(st.shares_sent, 2u);
  EXPECT_LT(st.share_bytes_sent, 2 * (data.size() * sizeof(double) + 64));
  EXPECT_EQ(st.tasks_sent, 28u);
  EXPECT_LT(st.task_bytes_sent, 28u * 200u);  // handles, not the data
  // Released: tasks submitted afterwards no longer find it on the workers.
  ex.release(h);
  try {
    ex.submit(sum_shared, h, 0).get();
    FAIL() << "released value still found";
  } catch (const mproc::RemoteError& e) {
    EXPECT_NE(e.message().find("is not on this rank"), std::string::npos) << e.what();
  }
}

TEST(MpiExecutor, InitializerRunsOnEveryWorker) {
  REQUIRE_MPIRUN();
  {
    mpi::PoolExecutor ex(mpi::PoolOptions{.initializer = mproc::call(configure, 42)});
    EXPECT_EQ(ex.map(configured, std::vector<int>(6, 0)), std::vector<int>(6, 42));
  }
  mpi::PoolExecutor broken(mpi::PoolOptions{.initializer = mproc::call(bad_initializer)});
  EXPECT_THROW(broken.submit(add, 1, 2).get(), mproc::BrokenPool);
}

TEST(MpiExecutor, LocalPoolOptionsAreAccepted) {
  REQUIRE_MPIRUN();
  mpi::PoolExecutor ex(mproc::PoolOptions{.max_workers = 1});
  EXPECT_EQ(ex.worker_ranks(), (std::vector<int>{1}));
  static_assert(std::is_constructible_v<mpi::PoolExecutor, mpi::PoolOptions>);
  static_assert(std::is_constructible_v<mpi::PoolExecutor, decltype(mproc::PoolOptions{.max_workers = 2})>);
  EXPECT_EQ(ex.submit(add, 1, 1).get(), 2);
  EXPECT_THROW(mpi::PoolExecutor(mproc::PoolOptions{.task_timeout = 1s}), mproc::Error);
}

TEST(MpiExecutor, OneExecutorAtATime) {
  REQUIRE_MPIRUN();
  mpi::PoolExecutor ex({.max_workers = 2});  // braced: mpi::PoolOptions
  EXPECT_THROW(mpi::PoolExecutor{}, mproc::Error);
  EXPECT_EQ(ex.submit(add, 1, 2).get(), 3);
}

TEST(MpiExecutor, ShutdownCancelsPendingAndRefusesNewTasks) {
  REQUIRE_MPIRUN();
  const std::string flag = temp_flag_path();
  std::filesystem::remove(flag);
  mpi::PoolExecutor ex(mpi::PoolOptions{.max_inflight = 1});
  // One blocked task per worker: the next five cannot leave rank 0.
  std::vector<mproc::Future<int>> blocked{ex.submit(wait_for_file, flag), ex.submit(wait_for_file, flag)};
  std::vector<mproc::Future<int>> queued;
  for (int i = 0; i < 5; ++i) queued.push_back(ex.submit(add, i, 0));
  ex.shutdown(/*wait=*/false, /*cancel_futures=*/true);
  for (auto& f : queued) {
    EXPECT_TRUE(f.cancelled());
    EXPECT_THROW(f.get(), mproc::CancelledError);
  }
  EXPECT_THROW(ex.submit(add, 1, 1), mproc::Error);
  std::ofstream(flag).put('x');
  ex.shutdown(true);  // waits for the two running tasks
  EXPECT_EQ(blocked[0].get() + blocked[1].get(), 2);
  std::filesystem::remove(flag);
}

TEST(MpiExecutor, ShutdownWaitsForRunningTasksAndANewExecutorWorks) {
  REQUIRE_MPIRUN();
  std::vector<mproc::Future<int>> fs;
  {
    mpi::PoolExecutor ex;
    for (int i = 0; i < 6; ++i) fs.push_back(ex.submit(sleep_ms, 20));
  }  // the destructor is shutdown(wait = true)
  for (auto& f : fs) {
    EXPECT_TRUE(f.done());
    EXPECT_EQ(f.get(), 20);
  }
  mpi::PoolExecutor again;
  EXPECT_EQ(again.submit(add, 20, 22).get(), 42);
}

TEST(MpiExecutor, ALocalPoolInsideARankIsolatesCrashes) {
  REQUIRE_MPIRUN();
  mpi::PoolExecutor ex;
  try {
    ex.submit(isolated, -1).get();
    FAIL() << "no error";
  } catch (const mproc::RemoteError& e) {
    EXPECT_EQ(e.type_name(), "mproc::WorkerCrashed") << e.what();
  }
  EXPECT_EQ(ex.map(isolated, std::vector<int>{1, 2, 3, 4}), (std::vector<int>{1, 2, 3, 4}));
}

// A task that kills its rank aborts the MPI job (MPI's model): mpirun
// reports it and ends every rank; nothing hangs (a separate mpirun whose
// output is checked, see tests/CMakeLists.txt).
TEST(MpiCrash, ATaskThatKillsItsRankAbortsTheJob) {
  REQUIRE_MPIRUN();
  if (std::getenv("MPROC_MPI_TEST_CRASH") == nullptr) GTEST_SKIP() << "needs MPROC_MPI_TEST_CRASH=1";
  mpi::PoolExecutor ex(1);
  ex.submit(abort_rank, 0).get();  // mpirun ends this process
  FAIL() << "rank 0 went on after its worker rank died";
}

// Run with MPROC_MPI_TEST_CORRUPT_BUILD_ID=2: rank 2 pretends to run another
// build (a separate mpirun, see tests/CMakeLists.txt).
TEST(MpiBuildId, MismatchIsAClearErrorAtConstruction) {
  REQUIRE_MPIRUN();
  const char* bad = std::getenv("MPROC_MPI_TEST_CORRUPT_BUILD_ID");
  if (bad == nullptr || std::string(bad) != "2") GTEST_SKIP() << "needs MPROC_MPI_TEST_CORRUPT_BUILD_ID=2";
  try {
    mpi::PoolExecutor ex;
    FAIL() << "no error for a worker with another build-id";
  } catch (const mpi::BuildMismatch& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("worker rank 2"), std::string::npos) << what;
    EXPECT_NE(what.find("runs another build"), std::string::npos) << what;
    EXPECT_NE(what.find("rank 0 has"), std::string::npos) << what;
  }
  // The job is still usable without that rank, and no rank hangs at the end.
  mpi::PoolExecutor ex(1);
  EXPECT_EQ(ex.submit(add, 2, 2).get(), 4);
}

// A single process (no mpirun): the workers come from MPI_Comm_spawn.
TEST(MpiSpawn, SingleRankSpawnsItsWorkers) {
  if (under_mpirun()) GTEST_SKIP() << "single-rank test (run without mpirun)";
  mpi::PoolExecutor ex(2);
  EXPECT_TRUE(ex.spawned());
  EXPECT_EQ(ex.max_workers(), 2u);
  EXPECT_EQ(ex.submit(add, 40, 2).get(), 42);
  std::vector<int> items{1, 2, 3, 4, 5};
  EXPECT_EQ(ex.map(square, items), (std::vector<int>{1, 4, 9, 16, 25}));
  EXPECT_THROW(ex.submit(fail_on_13, 13).get(), mproc::RemoteError);
}

TEST(MpiSpawn, WithoutDynamicProcessesTheErrorSaysUseMpirun) {
  if (under_mpirun()) GTEST_SKIP() << "single-rank test (run without mpirun)";
  ::setenv("MPROC_MPI_TEST_NO_SPAWN", "1", 1);
  try {
    mpi::PoolExecutor ex(2);
    FAIL() << "no error";
  } catch (const mproc::Error& e) {
    EXPECT_NE(std::string(e.what()).find("mpirun -n 3"), std::string::npos) << e.what();
  }
  ::unsetenv("MPROC_MPI_TEST_NO_SPAWN");
}

}  // namespace

int main(int argc, char** argv) {
  mproc::init(argc, argv);  // ranks other than 0 serve tasks in here and exit
  testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
