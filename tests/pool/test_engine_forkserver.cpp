// The fork server belongs to the program, not to a pool (issue 11, item 3):
// destroying one pool leaves other pools' workers alone, and a killed fork
// server is restarted while the pools go on.
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>

#include <string>
#include <vector>

#include "mproc/context.hpp"
#include "mproc/executor.hpp"
#include "pool_test_util.hpp"
#include "process/runtime.hpp"
#include "support.hpp"
#include "sys/pidfd.hpp"

using namespace pooltest;
using mproc::Future;
using mproc::ProcessPoolExecutor;

namespace {

// Kills the running fork server; the next start of a child starts another
// one, from whichever thread asks first.
void kill_forkserver() {
  const pid_t server = mproc::detail::forkserver_pid();
  ASSERT_GT(server, 0) << "no fork server runs (is forkserver the default start method?)";
  ASSERT_EQ(::kill(server, SIGKILL), 0);
  ASSERT_TRUE(mproc::test::eventually([&] { return mproc::test::pid_gone(server); }, 10000));
}

}  // namespace

// Pool A's dispatcher thread is the first to need the fork server after it
// was killed, so it starts the new one. A child's PR_SET_PDEATHSIG follows
// the THREAD that created it: the server used to die when pool A ended, and
// its SIGKILL took pool B's running workers along.
TEST(EngineForkServer, DestroyingOnePoolLeavesAnotherPoolsWorkersAlone) {
  if (mproc::get_start_method() != mproc::StartMethod::forkserver) GTEST_SKIP() << "forkserver is not the default";
  TempDir dir;
  kill_forkserver();
  auto a = std::make_unique<ProcessPoolExecutor>(1);  // restarts the server from its dispatcher thread
  EXPECT_EQ(a->submit(square, 3).get(), 9);
  const pid_t server = mproc::detail::forkserver_pid();
  ASSERT_GT(server, 0);
  ProcessPoolExecutor b(2);
  std::vector<Future<pid_t>> running;
  for (int i = 0; i < 2; ++i)
    running.push_back(b.submit(started_then_gated, dir.file("started" + std::to_string(i)), dir.file("gate")));
  for (int i = 0; i < 2; ++i) ASSERT_TRUE(wait_for_file(dir.file("started" + std::to_string(i)), 30s));
  a.reset();  // ends pool A and its dispatcher thread
  // Had the server died with that thread, its SIGKILL would be on its way
  // now: give it a second to land (the pidfd says at once if it does).
  {
    mproc::sys::UniqueFd pidfd = mproc::sys::pidfd_open(server);
    pollfd p{pidfd.get(), POLLIN, 0};
    EXPECT_EQ(::poll(&p, 1, 1000), 0) << "the fork server died with the pool whose thread started it";
  }
  write_file(dir.file("gate"), "x");
  for (auto& f : running) {
    ASSERT_TRUE(f.wait_for(60s));
    try {
      f.get();
    } catch (const std::exception& e) {
      ADD_FAILURE() << "pool B's task failed when pool A was destroyed: " << e.what();
    }
  }
  std::vector<Future<int>> more;
  for (int i = 0; i < 10; ++i) more.push_back(b.submit(square, i));
  for (int i = 0; i < 10; ++i) EXPECT_EQ(more[static_cast<std::size_t>(i)].get(), i * i);
  EXPECT_EQ(mproc::detail::forkserver_pid(), server);
}

// A killed fork server takes its children (the pool's idle workers) along;
// the pool starts a new server, new workers, and serves on without failing
// a task (none was running).
TEST(EngineForkServer, AKilledForkServerIsRestartedAndThePoolGoesOn) {
  if (mproc::get_start_method() != mproc::StartMethod::forkserver) GTEST_SKIP() << "forkserver is not the default";
  ProcessPoolExecutor ex(2);
  EXPECT_EQ(ex.submit(square, 2).get(), 4);
  ASSERT_TRUE(mproc::test::eventually([&] { return ex.worker_pids().size() == 2; }, 10000));
  const auto old_workers = ex.worker_pids();
  const pid_t old_server = mproc::detail::forkserver_pid();
  kill_forkserver();
  for (pid_t w : old_workers)
    EXPECT_TRUE(mproc::test::eventually([&] { return mproc::test::pid_gone(w); }, 10000)) << "worker " << w;
  std::vector<Future<int>> fs;
  for (int i = 0; i < 50; ++i) fs.push_back(ex.submit(square, i));
  for (int i = 0; i < 50; ++i) {
    ASSERT_TRUE(fs[static_cast<std::size_t>(i)].wait_for(60s)) << "the pool hangs without its fork server";
    EXPECT_EQ(fs[static_cast<std::size_t>(i)].get(), i * i);
  }
  EXPECT_NE(mproc::detail::forkserver_pid(), old_server);
  EXPECT_GT(mproc::detail::forkserver_pid(), 0);
  EXPECT_GE(ex.respawns(), 2u);
  // The old workers were reparented here (a subreaper): reap them.
  mproc::test::reap_orphans(1000);
}
