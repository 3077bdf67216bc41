// Test main: mproc::init first (spawned children re-enter main here), then
// GoogleTest with a listener that fails any test leaving a child process, an
// open fd or a /dev/shm entry behind.
#include <gtest/gtest.h>
#include <sys/prctl.h>

#include <algorithm>
#include <iterator>

#include "mproc/context.hpp"
#include "support.hpp"

namespace {

class LeakCheck : public testing::EmptyTestEventListener {
  std::set<int> fds_;
  std::set<std::string> shm_;

  void OnTestStart(const testing::TestInfo&) override {
    fds_ = mproc::test::open_fds();
    shm_ = mproc::test::shm_entries();
  }
  void OnTestEnd(const testing::TestInfo&) override {
    auto kids = mproc::test::child_pids();
    for (pid_t pid : kids) ADD_FAILURE() << "leak check: child process " << pid << " still exists after the test";
    auto fds = mproc::test::open_fds();
    for (int fd : fds)
      if (!fds_.count(fd)) ADD_FAILURE() << "leak check: fd " << mproc::test::describe_fd(fd) << " left open";
    // sem.*: named POSIX semaphores, which mproc never makes; other programs
    // on a shared machine do (CPython's multiprocessing: sem.mp-*), and
    // theirs appeared during a test run here.
    for (const auto& e : mproc::test::shm_entries())
      if (!shm_.count(e) && e.rfind("sem.", 0) != 0) ADD_FAILURE() << "leak check: /dev/shm/" << e << " left behind";
  }
};

}  // namespace

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  // Orphaned descendants come to this process instead of init, so the leak
  // check sees them and tests that orphan on purpose can reap them.
  ::prctl(PR_SET_CHILD_SUBREAPER, 1);
  testing::InitGoogleTest(&argc, argv);
  testing::UnitTest::GetInstance()->listeners().Append(new LeakCheck);
  return RUN_ALL_TESTS();
}
