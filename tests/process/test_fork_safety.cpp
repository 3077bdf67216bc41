// Fork safety (issue 11, item 4): a fork child must never wait on a lock or
// a static-initialisation guard that another thread of its parent held at
// the moment of the fork. The classic trap is a function-local static whose
// initialiser calls pthread_atfork: the initialising thread blocks on glibc's
// atfork lock for the whole fork, so the child inherits the guard "being
// initialised" and waits on it forever the first time it takes the same path.
//
// Each round runs in a freshly spawned process (nothing of mproc initialised
// yet). There, threads take their first Condition / Lock / Queue / Manager
// proxy paths while other threads fork (raw fork() and the fork start method)
// at the same instant; every fork child then takes those same paths. A child
// that does not finish within a bound far above its work is a deadlock.
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <latch>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "mproc/managers.hpp"
#include "mproc/process.hpp"
#include "mproc/queues.hpp"
#include "mproc/synchronize.hpp"
#include "shared_test_util.hpp"

namespace {

using namespace sharedtest;
using Clock = std::chrono::steady_clock;

// A fork child's whole work is a few lock round trips and one manager call
// (milliseconds). 20 s is a margin of three orders of magnitude for a loaded
// 2-core machine or a sanitizer build; a deadlocked child never finishes.
constexpr auto kChildBound = std::chrono::seconds(20);
constexpr int kInitThreads = 4;
constexpr int kForkThreads = 4;

struct Objects {
  mproc::Condition cond;
  mproc::Lock lock;
  mproc::Queue<int> queue;
  mproc::Manager* manager;
};

// What both the racing threads and the fork children do: the first use of
// each in a process runs its lazy paths (thread id cache, proxy registry,
// type fingerprints, entry-point references).
void use_objects(Objects& o, int who) {
  {
    std::unique_lock g(o.cond);
    o.cond.notify_all();
    o.cond.wait(std::chrono::milliseconds(1));
  }
  {
    std::scoped_lock g(o.lock);
  }
  o.queue.put(who);
  (void)o.queue.get(true, std::chrono::seconds(5));  // its own put is there at least
  auto list = o.manager->list<int>();
  list.append(who);
}

// Waits for a raw fork child up to the bound; kills it if it hangs. True when
// it exited 0 in time.
bool reap_bounded(pid_t pid) {
  const int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  const auto end = Clock::now() + kChildBound;
  bool ended = false;
  while (!ended) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - Clock::now()).count();
    if (left <= 0) break;
    pollfd p{pidfd, POLLIN, 0};
    ended = ::poll(&p, 1, static_cast<int>(left)) > 0;
  }
  if (!ended) ::kill(pid, SIGKILL);
  ::close(pidfd);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return ended && WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

// One round, in a fresh process: exit status = number of children that hung
// or failed (0 = pass).
void fork_race_round(int round) {
  mproc::Manager manager;
  manager.start();
  Objects o{mproc::Condition(), mproc::Lock(), mproc::Queue<int>(), &manager};
  std::atomic<int> bad{0};
  std::latch go(kInitThreads + kForkThreads);
  std::vector<std::thread> threads;
  for (int i = 0; i < kInitThreads; ++i)
    threads.emplace_back([&, i] {
      go.arrive_and_wait();
      try {
        use_objects(o, i);
      } catch (...) {
        bad.fetch_add(1);
      }
    });
  for (int i = 0; i < kForkThreads; ++i)
    threads.emplace_back([&, i] {
      go.arrive_and_wait();
      if ((i + round) % 2 == 0) {
        const pid_t pid = ::fork();
        if (pid == 0) {
          use_objects(o, 100 + i);
          ::_exit(0);
        }
        if (pid < 0 || !reap_bounded(pid)) bad.fetch_add(1);
      } else {
        mproc::Process p(with(StartMethod::fork), [&o, i] { use_objects(o, 200 + i); });
        p.start();
        if (!p.join(kChildBound)) {
          p.kill();
          p.join();
          bad.fetch_add(1);
        } else if (p.exitcode() != 0) {
          bad.fetch_add(1);
        }
      }
    });
  for (auto& t : threads) t.join();
  manager.shutdown();
  std::fflush(nullptr);
  ::_exit(bad.load());
}

int rounds_from_env() {
  const char* v = std::getenv("MPROC_FORK_SAFETY_ROUNDS");
  return v ? std::max(1, std::atoi(v)) : 10;
}

// Before the fix about 40% of rounds deadlocked a child (the thread-id cache's
// guard, the manager registry's guard); stops at the first bad round so a
// regression fails in about kChildBound rather than rounds x kChildBound.
TEST(ForkSafety, ForksFromManyThreadsWhileOthersInitialiseMprocObjects) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  // GCC 12's ASan and TSan runtimes do not hold their allocator's locks
  // across fork(): a fork child of a threaded process can inherit one held
  // and hang in malloc (seen in both: __sanitizer::SizeClassAllocator64::
  // GetFromAllocator), the very race this test provokes. Not mproc's to fix;
  // the plain build runs it.
  GTEST_SKIP() << "the sanitizer's allocator is not fork-safe in a threaded process (GCC 12 runtime)";
#endif
  const int rounds = rounds_from_env();
  for (int r = 0; r < rounds; ++r) {
    mproc::Process p(with(StartMethod::spawn), fork_race_round, r);
    p.start();
    // The round's own bound is kChildBound per child, all waited in parallel.
    if (!p.join(kChildBound * 3)) {
      p.kill();
      p.join();
      FAIL() << "round " << r << ": the round process itself hung";
    }
    ASSERT_EQ(p.exitcode(), 0) << "round " << r << ": " << p.exitcode().value_or(-1)
                               << " fork children hung (deadlocked) or failed";
  }
}

}  // namespace
