// Start methods and contexts: forkserver from a threaded parent, children
// dying with their parent, cpu_count.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <set>
#include <thread>

#include "mproc/context.hpp"
#include "mproc/process.hpp"
#include "support.hpp"

using namespace std::chrono_literals;
using mproc::Process;
using mproc::ProcessOptions;
using mproc::StartMethod;

namespace {

std::mutex g_held;  // held by a parent thread while children start

void lock_held_mutex() {
  // Under fork this would copy a locked mutex and hang; the fork server's
  // image is from before any thread existed.
  std::lock_guard lock(g_held);
  ::_exit(0);
}

void sleep_forever() {
  for (;;) ::pause();
}

// Starts a grandchild that sleeps forever, reports its pid on fd, then waits.
void parent_of_sleeper(int fd, int method) {
  Process grandchild(ProcessOptions{.start_method = static_cast<StartMethod>(method)}, sleep_forever);
  grandchild.start();
  pid_t pid = grandchild.pid();
  if (::write(fd, &pid, sizeof pid) != sizeof pid) ::_exit(2);
  sleep_forever();
}

void exit_with_cpu_count() { ::_exit(static_cast<int>(mproc::cpu_count())); }

}  // namespace

TEST(Context, DefaultIsForkserverAfterInit) {
  EXPECT_TRUE(mproc::initialized());
  EXPECT_EQ(mproc::get_start_method(), StartMethod::forkserver);
  EXPECT_EQ(mproc::get_all_start_methods().size(), 3u);
  EXPECT_EQ(mproc::parse_start_method("spawn"), StartMethod::spawn);
  EXPECT_EQ(mproc::parse_start_method("vfork"), std::nullopt);
}

TEST(Context, ContextFixesTheMethod) {
  for (StartMethod m : mproc::get_all_start_methods()) {
    auto ctx = mproc::get_context(m);
    Process p = ctx.process([] { ::_exit(9); });
    EXPECT_EQ(p.start_method(), m);
    p.start();
    p.join();
    EXPECT_EQ(p.exitcode(), 9);
  }
  Process s = mproc::get_context<StartMethod::spawn>().process([](int x) { ::_exit(x); }, 5);
  s.start();
  s.join();
  EXPECT_EQ(s.exitcode(), 5);
}

// Mirrors CPython's test_get_all_start_methods: the default comes first.
TEST(Context, TestStartMethod_test_get_all_start_methods) {
  for (StartMethod m : {StartMethod::spawn, StartMethod::fork, StartMethod::forkserver}) {
    mproc::set_start_method(m);
    const auto all = mproc::get_all_start_methods();
    ASSERT_EQ(all.size(), 3u);
    EXPECT_EQ(all.front(), m);
    EXPECT_EQ(std::set<StartMethod>(all.begin(), all.end()).size(), 3u);
  }
}

// A child's exit code says what it saw: 10 + its default start method, plus
// 20 when it could start a spawn grandchild that exited 0.
int method_code(StartMethod m) { return static_cast<int>(m); }
void report_default_and_spawn_grandchild() {
  int code = 10 + method_code(mproc::get_start_method());
  try {
    Process g(ProcessOptions{.start_method = StartMethod::spawn}, [] { ::_exit(0); });
    g.start();
    g.join();
    if (g.exitcode() == 0) code += 20;
  } catch (...) {
  }
  ::_exit(code);
}

// Mirrors CPython's test_set_get (the child of a context sees that context's
// method) and the spawn-in-spawn case of test_nested_startmethod.
TEST(Context, TestStartMethod_test_nested_startmethod) {
  for (StartMethod m : {StartMethod::spawn, StartMethod::forkserver}) {
    Process p(ProcessOptions{.start_method = m}, report_default_and_spawn_grandchild);
    p.start();
    ASSERT_TRUE(p.join(60s));
    EXPECT_EQ(p.exitcode(), 30 + method_code(m)) << "started by " << mproc::to_string(m);
  }
}

TEST(Context, SetStartMethodChangesTheDefault) {
  mproc::set_start_method(StartMethod::spawn);
  Process p([] { ::_exit(0); });
  EXPECT_EQ(p.start_method(), StartMethod::spawn);
  mproc::set_start_method(StartMethod::forkserver);
  EXPECT_EQ(p.start_method(), StartMethod::forkserver);
}

TEST(Context, ForkserverFromAParentRunningFourThreads) {
  std::unique_lock hold(g_held);
  std::atomic<bool> stop{false};
  std::atomic<int> ok{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&] {
      // Each thread keeps the allocator and the mutex busy while starting
      // children of its own through the shared fork server.
      for (int i = 0; i < 5; ++i) {
        Process p(ProcessOptions{.start_method = StartMethod::forkserver}, lock_held_mutex);
        p.start();
        if (p.join(60s) && p.exitcode() == 0) ++ok;
      }
      while (!stop) std::this_thread::sleep_for(1ms);
    });
  while (ok < 20 && !::testing::Test::HasFailure()) {
    static auto deadline = std::chrono::steady_clock::now() + 90s;  // wide: load, sanitizers
    ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "only " << ok << " of 20 children ended well";
    std::this_thread::sleep_for(5ms);
  }
  stop = true;
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok, 20);
}

TEST(Context, ForkserverRecoversWhenItsServerIsKilled) {
  pid_t server = mproc::detail::forkserver_pid();
  ASSERT_GT(server, 0);
  ::kill(server, SIGKILL);
  ::waitpid(server, nullptr, 0);  // the test plays the part of the crash
  Process p(ProcessOptions{.start_method = StartMethod::forkserver}, [] { ::_exit(3); });
  p.start();
  p.join();
  EXPECT_EQ(p.exitcode(), 3);
  EXPECT_NE(mproc::detail::forkserver_pid(), server);
}

class GrandchildDies : public testing::TestWithParam<StartMethod> {};

TEST_P(GrandchildDies, WithinOneSecondOfItsParentsKill) {
  int fds[2];
  ASSERT_EQ(::pipe2(fds, O_CLOEXEC), 0);
  Process parent(ProcessOptions{.start_method = StartMethod::fork}, parent_of_sleeper, fds[1],
                 static_cast<int>(GetParam()));
  parent.start();
  ::close(fds[1]);
  pid_t grandchild = 0;
  ASSERT_EQ(::read(fds[0], &grandchild, sizeof grandchild), static_cast<ssize_t>(sizeof grandchild));
  ::close(fds[0]);
  ASSERT_FALSE(mproc::test::pid_gone(grandchild));
  parent.kill();
  parent.join();
  EXPECT_TRUE(mproc::test::eventually([&] { return mproc::test::pid_gone(grandchild); }, 10000))  // wide: load
      << "grandchild " << grandchild << " outlived its parent";
  // Orphaned, it was handed to this process (a subreaper, see main.cpp).
  if (GetParam() != StartMethod::forkserver) {
    EXPECT_EQ(::waitpid(grandchild, nullptr, 0), grandchild);
  }
}

INSTANTIATE_TEST_SUITE_P(Methods, GrandchildDies,
                         testing::Values(StartMethod::fork, StartMethod::spawn, StartMethod::forkserver),
                         [](const auto& info) { return std::string(mproc::to_string(info.param)); });

TEST(CpuCount, HonoursTheAffinityMask) {
  cpu_set_t set;
  CPU_ZERO(&set);
  ASSERT_EQ(::sched_getaffinity(0, sizeof set, &set), 0);
  unsigned affinity = static_cast<unsigned>(CPU_COUNT(&set));
  EXPECT_GE(mproc::cpu_count(), 1u);
  EXPECT_LE(mproc::cpu_count(), affinity);
  // A child pinned to one CPU sees one.
  Process p(ProcessOptions{.start_method = StartMethod::fork}, [] {
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(sched_getcpu(), &one);
    if (::sched_setaffinity(0, sizeof one, &one) != 0) ::_exit(99);
    exit_with_cpu_count();
  });
  p.start();
  p.join();
  EXPECT_EQ(p.exitcode(), 1);
}

TEST(CpuCount, ParsesCgroupCpuMax) {
  using mproc::detail::parse_cpu_max;
  EXPECT_EQ(parse_cpu_max("max 100000\n"), std::nullopt);
  EXPECT_EQ(parse_cpu_max("100000 100000\n"), 1u);
  EXPECT_EQ(parse_cpu_max("150000 100000\n"), 2u);  // 1.5 CPUs round up
  EXPECT_EQ(parse_cpu_max("400000 100000"), 4u);
  EXPECT_EQ(parse_cpu_max("garbage"), std::nullopt);
  EXPECT_EQ(parse_cpu_max("12 x"), std::nullopt);
  EXPECT_EQ(parse_cpu_max("0 100000"), std::nullopt);
}

TEST(CpuCount, TakesTheTightestQuotaUpTheCgroupTree) {
  std::ifstream cg("/proc/self/cgroup");
  std::string line, path;
  while (std::getline(cg, line))
    if (line.rfind("0::", 0) == 0) path = line.substr(3);
  if (path.empty()) GTEST_SKIP() << "no cgroup v2 path for this process";
  namespace fs = std::filesystem;
  fs::path root = fs::temp_directory_path() / ("mproc-cg-" + std::to_string(::getpid()));
  fs::create_directories(root.string() + path);
  std::ofstream(root / "cpu.max") << "max 100000\n";
  EXPECT_EQ(mproc::detail::cgroup_cpu_limit(root.string()), std::nullopt);
  std::ofstream(root.string() + path + "/cpu.max") << "250000 100000\n";
  EXPECT_EQ(mproc::detail::cgroup_cpu_limit(root.string()), 3u);
  if (path != "/") {
    std::ofstream(root / "cpu.max") << "100000 100000\n";  // an ancestor is tighter
    EXPECT_EQ(mproc::detail::cgroup_cpu_limit(root.string()), 1u);
  }
  fs::remove_all(root);
}
