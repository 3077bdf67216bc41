// The chaos tier (issue 11, item 5): randomised, seeded, reproducible fault
// injection against Pool and ProcessPoolExecutor, with the promises checked
// after every round:
//   - every future settles, a deadline task within its deadline (from the
//     moment it started running, which it records) plus a margin;
//   - no innocent task (a plain one, without a deadline) fails, and every
//     value is right;
//   - a faulty task fails with the error of its own fault (blame);
//   - nothing is left: no process, fd or /dev/shm entry (tests/main.cpp's
//     leak check runs after each test).
//
// Seed: printed as "[chaos] seed=N"; MPROC_CHAOS_SEED=N replays the same task
// mix (the same kinds, values, deadlines and run times, in the same order; the
// machine's timing is not replayed). MPROC_CHAOS_SECONDS=S runs rounds for S
// seconds instead of the short run that `make test` does.
//
// Fault classes: every class by default; MPROC_CHAOS_FAULTS=kill,garbage (a
// comma list of class names: plain tasks are always in the mix) narrows it.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <condition_variable>
#include <cstdio>
#include <fstream>
#include <memory>
#include <mutex>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "mproc/executor.hpp"
#include "mproc/pool.hpp"
#include "pool_test_util.hpp"

namespace {

using namespace pooltest;
using std::chrono::duration_cast;
using std::chrono::milliseconds;
using std::chrono::nanoseconds;

// ---- tasks (run in worker processes) ---------------------------------------

long expected_value(long x) { return 3 * x + 1; }

long chaos_plain(long x) { return expected_value(x); }
long chaos_sleep(long x, long us) {
  ::usleep(static_cast<useconds_t>(us));
  return expected_value(x);
}
long chaos_kill(long) {
  ::raise(SIGKILL);
  return 0;
}
__attribute__((no_sanitize("undefined"))) long chaos_segfault(long) {
  volatile int* p = nullptr;
  *p = 1;
  return 0;
}
long chaos_abort(long) { std::abort(); }
long chaos_exit(long) { ::_exit(7); }

// Records when it started running (steady_clock is CLOCK_MONOTONIC: one clock
// for every process of the machine), then runs for run_us.
long chaos_run_for(long x, long run_us, std::string start_file) {
  {
    std::ofstream(start_file) << Clock::now().time_since_epoch().count();
  }
  const auto end = Clock::now() + std::chrono::microseconds(run_us);
  while (Clock::now() < end) {
    const auto left = std::chrono::duration_cast<std::chrono::microseconds>(end - Clock::now()).count();
    if (left > 200) ::usleep(static_cast<useconds_t>(std::min<long>(left / 2, 100'000)));
  }
  return expected_value(x);
}

// Hostile to its own worker: every descriptor of the worker above stderr.
bool is_socket(int fd) {
  struct stat st {};
  return ::fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode);
}
long chaos_close_fds(long x) {
  ::close_range(3, ~0u, 0);
  return expected_value(x);
}
long chaos_garbage(long x, long seed) {
  std::mt19937 rng(static_cast<unsigned>(seed));
  char junk[64];
  for (char& c : junk) c = static_cast<char>(rng());
  for (int fd = 3; fd < 1024; ++fd)
    if (is_socket(fd)) (void)!::write(fd, junk, 1 + rng() % sizeof junk);
  return expected_value(x);
}
long chaos_dup2_fds(long x) {
  const int null = ::open("/dev/null", O_RDWR | O_CLOEXEC);
  for (int fd = 3; fd < 1024; ++fd)
    if (fd != null && is_socket(fd)) ::dup2(null, fd);
  return expected_value(x);
}

// ---- the fault classes ---------------------------------------------------------

enum class Kind { plain, sleep, kill, segfault, abort, exit, runaway, near_deadline, close_fds, garbage, dup2_fds };
struct KindInfo {
  Kind kind;
  const char* name;
  bool innocent;  // must succeed with the right value
};
constexpr KindInfo kKinds[] = {
    {Kind::plain, "plain", true},          {Kind::sleep, "sleep", true},
    {Kind::kill, "kill", false},           {Kind::segfault, "segfault", false},
    {Kind::abort, "abort", false},         {Kind::exit, "exit", false},
    {Kind::runaway, "runaway", false},     {Kind::near_deadline, "near_deadline", false},
    {Kind::close_fds, "close_fds", false}, {Kind::garbage, "garbage", false},
    {Kind::dup2_fds, "dup2_fds", false},
};
const KindInfo& info(Kind k) { return kKinds[static_cast<int>(k)]; }

// A task's deadline is checked against the moment it started plus this: the
// engine kills a worker past its deadline within milliseconds; a loaded
// 2-core machine (ctest -j8) or a sanitizer build can delay that by seconds.
constexpr auto kDeadlineMargin = std::chrono::seconds(5);
// Every future of a round settles by then (a hang guard, far above a round's
// work of about a second).
constexpr auto kRoundGuard = std::chrono::seconds(60);

std::vector<Kind> kinds_from(const char* spec) {
  std::vector<Kind> out;
  if (spec == nullptr || std::string(spec).empty()) spec = "all";
  std::string s(spec);
  if (s == "all") {
    for (const auto& k : kKinds) out.push_back(k.kind);
    return out;
  }
  out = {Kind::plain};  // innocents are always in the mix: they are what is checked
  std::stringstream in(s);
  for (std::string name; std::getline(in, name, ',');)
    for (const auto& k : kKinds)
      if (name == k.name) out.push_back(k.kind);
  return out;
}

// ---- one round -------------------------------------------------------------------

// Shared with the done callbacks, which may outlive a failed round.
struct Outcome {
  std::mutex mu;
  std::condition_variable cv;
  int left = 0;
};

struct Task {
  Kind kind;
  long x = 0;
  std::optional<nanoseconds> deadline;
  long run_us = 0;
  std::string start_file;
  const char* where = "";
  // Filled by the done callback.
  bool settled = false;
  bool settled_twice = false;
  Clock::time_point settled_at;
  bool ok = false;
  long value = 0;
  std::exception_ptr error;
};

class Round {
 public:
  Round(std::uint64_t seed, int index, const std::vector<Kind>& kinds, const TempDir& dir)
      : rng_(seed ^ (0x9e3779b97f4a7c15ULL * static_cast<std::uint64_t>(index + 1))),
        index_(index),
        kinds_(kinds),
        dir_(dir) {}

  void run() {
    constexpr int kTasksPerPool = 40;
    tasks_.reserve(3 * kTasksPerPool);
    {
      // One worker or two: with one, every task queues behind all the others.
      mproc::ProcessPoolExecutor ex(mproc::PoolOptions{.max_workers = 1 + static_cast<unsigned>(rng_() % 2)});
      mproc::Pool pool(mproc::PoolOptions{.max_workers = 2});
      // A pool destroyed while the others run: its workers die mid-task; its
      // futures must settle all the same, the others' tasks must not notice.
      std::vector<std::shared_ptr<Task>> doomed_tasks;
      {
        mproc::Pool doomed(mproc::PoolOptions{.max_workers = 2});
        for (int i = 0; i < kTasksPerPool / 2; ++i) submit_pool(doomed, make_task("doomed pool"), true);
        for (int i = 0; i < kTasksPerPool; ++i) {
          submit_executor(ex, make_task("executor"));
          submit_pool(pool, make_task("pool"), false);
        }
      }  // ~Pool: terminate()
      wait_all();
      ex.shutdown(false, true);
    }
    check();
  }

 private:
  std::shared_ptr<Task> make_task(const char* where) {
    auto t = std::make_shared<Task>();
    t->kind = kinds_[rng_() % kinds_.size()];
    t->x = static_cast<long>(rng_() % 1'000'000);
    t->where = where;
    const long deadline_ms = 20 + static_cast<long>(rng_() % 180);
    switch (t->kind) {
      case Kind::sleep: t->run_us = static_cast<long>(rng_() % 3000); break;
      case Kind::runaway:
        t->deadline = milliseconds(deadline_ms);
        t->run_us = 60'000'000;  // a minute: only the deadline ends it in time
        break;
      case Kind::near_deadline: {
        // Short deadlines (2..10 ms) and run times of 85%..115% of them: many
        // results land within a millisecond of their deadline, on both sides.
        const long short_ms = 2 + static_cast<long>(rng_() % 9);
        t->deadline = milliseconds(short_ms);
        t->run_us = short_ms * (850 + static_cast<long>(rng_() % 300));
        break;
      }
      default: break;
    }
    if (t->deadline) t->start_file = dir_.file("start-" + std::to_string(index_) + "-" + std::to_string(counter_++));
    return t;
  }

  template <class Submit>
  auto dispatch(const Task& t, Submit&& submit) {
    switch (t.kind) {
      case Kind::plain: return submit(chaos_plain, t.x);
      case Kind::sleep: return submit(chaos_sleep, t.x, t.run_us);
      case Kind::kill: return submit(chaos_kill, t.x);
      case Kind::segfault: return submit(chaos_segfault, t.x);
      case Kind::abort: return submit(chaos_abort, t.x);
      case Kind::exit: return submit(chaos_exit, t.x);
      case Kind::close_fds: return submit(chaos_close_fds, t.x);
      case Kind::garbage: return submit(chaos_garbage, t.x, t.x);
      case Kind::dup2_fds: return submit(chaos_dup2_fds, t.x);
      case Kind::runaway:
      case Kind::near_deadline: return submit(chaos_run_for, t.x, t.run_us, t.start_file);
    }
    std::abort();
  }

  static void settle(Outcome& o, Task& t, bool ok, long value, std::exception_ptr error) {
    std::lock_guard lk(o.mu);
    if (t.settled) {
      t.settled_twice = true;
      return;
    }
    t.settled = true;
    t.settled_at = Clock::now();
    t.ok = ok;
    t.value = value;
    t.error = std::move(error);
    if (--o.left == 0) o.cv.notify_all();
  }

  void track(const std::shared_ptr<Task>& t) {
    std::lock_guard lk(outcome_->mu);
    ++outcome_->left;
    tasks_.push_back(t);
  }

  void submit_executor(mproc::ProcessPoolExecutor& ex, std::shared_ptr<Task> t) {
    if (t->kind == Kind::runaway) {
      // Behind a burst of tiny tasks: its deadline must hold all the same
      // once it starts (it counts from its start, not from its submission).
      for (int i = 0; i < 100; ++i) {
        auto tiny = std::make_shared<Task>();
        tiny->kind = Kind::plain;
        tiny->x = static_cast<long>(rng_() % 1'000'000);
        tiny->where = t->where;
        submit_executor(ex, tiny);
      }
    }
    track(t);
    mproc::SubmitOptions o{.timeout = t->deadline};
    auto fut = dispatch(*t, [&](auto fn, auto... args) { return ex.submit(o, fn, args...); });
    fut.add_done_callback([o = outcome_, t](mproc::Future<long> f) {
      std::exception_ptr e = f.exception(std::chrono::seconds(0));
      settle(*o, *t, e == nullptr, e ? 0 : f.get(), e);
    });
  }

  // Pool has no per-task deadline: the deadline kinds are the executor's.
  void submit_pool(mproc::Pool& pool, std::shared_ptr<Task> t, bool doomed) {
    if (t->deadline) t->kind = Kind::plain, t->deadline.reset();
    t->where = doomed ? "doomed pool" : "pool";
    track(t);
    auto res = dispatch(*t, [&](auto fn, auto... args) { return pool.apply_async(fn, args...); });
    res.add_callback([o = outcome_, t](const long& v) { settle(*o, *t, true, v, nullptr); },
                     [o = outcome_, t](std::exception_ptr e) { settle(*o, *t, false, 0, std::move(e)); });
  }

  void wait_all() {
    std::unique_lock lk(outcome_->mu);
    outcome_->cv.wait_for(lk, kRoundGuard, [&] { return outcome_->left == 0; });
  }

  std::optional<Clock::time_point> started_at(const Task& t) const {
    std::ifstream in(t.start_file);
    long long ns = 0;
    if (!(in >> ns)) return std::nullopt;
    return Clock::time_point(Clock::duration(ns));
  }

  void check() {
    std::lock_guard lk(outcome_->mu);
    for (std::size_t i = 0; i < tasks_.size(); ++i) {
      const Task& t = *tasks_[i];
      const std::string what = std::string("round ") + std::to_string(index_) + ", task " + std::to_string(i) + " (" +
                               info(t.kind).name + ", " + t.where + ")";
      if (t.settled_twice) ADD_FAILURE() << what << ": settled twice";
      if (!t.settled) {
        ADD_FAILURE() << what << ": never settled (waited " << kRoundGuard.count() << " s)";
        continue;
      }
      const bool doomed = std::string(t.where) == "doomed pool";
      if (t.ok) {
        EXPECT_EQ(t.value, expected_value(t.x)) << what << ": wrong value";
      } else if (info(t.kind).innocent && !doomed) {
        ADD_FAILURE() << what << ": an innocent task failed: " << describe(t.error);
      }
      if (!doomed) check_blame(t, what);
      if (t.deadline) check_deadline(t, what);
    }
  }

  // A faulty task fails with its own fault; one that broke its worker's
  // descriptors may fail in any mproc way (the worker dies) or even succeed.
  void check_blame(const Task& t, const std::string& what) {
    auto crashed_with = [&](int sig, int code) {
      if (t.ok) {
        ADD_FAILURE() << what << ": succeeded";
        return;
      }
      try {
        std::rethrow_exception(t.error);
      } catch (const mproc::WorkerCrashed& e) {
        EXPECT_EQ(e.exitcode(), sig ? -sig : code) << what;
      } catch (...) {
        ADD_FAILURE() << what << ": " << describe(t.error);
      }
    };
    switch (t.kind) {
      case Kind::kill: crashed_with(SIGKILL, 0); break;
      case Kind::segfault: crashed_with(SIGSEGV, 0); break;
      case Kind::abort: crashed_with(SIGABRT, 0); break;
      case Kind::exit: crashed_with(0, 7); break;
      case Kind::runaway:
        if (t.ok) ADD_FAILURE() << what << ": ran a minute past its deadline and succeeded";
        [[fallthrough]];
      case Kind::near_deadline:
        if (!t.ok) {
          try {
            std::rethrow_exception(t.error);
          } catch (const mproc::TaskTimeout&) {
          } catch (...) {
            ADD_FAILURE() << what << ": " << describe(t.error);
          }
        }
        break;
      case Kind::close_fds:
      case Kind::dup2_fds:
      case Kind::garbage:
        if (!t.ok) {
          try {
            std::rethrow_exception(t.error);
          } catch (const mproc::Error&) {
          } catch (...) {
            ADD_FAILURE() << what << ": not an mproc error: " << describe(t.error);
          }
        }
        break;
      default: break;
    }
  }

  void check_deadline(const Task& t, const std::string& what) {
    auto start = started_at(t);
    if (!start) return;  // never ran (its pool went first): settling is all
    EXPECT_LE(t.settled_at, *start + *t.deadline + kDeadlineMargin)
        << what << ": deadline " << duration_cast<milliseconds>(*t.deadline).count() << " ms, settled "
        << duration_cast<milliseconds>(t.settled_at - *start).count() << " ms after it started";
  }

  static std::string describe(const std::exception_ptr& e) {
    if (!e) return "no error";
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& x) {
      return std::string(typeid(x).name()) + ": " + x.what();
    } catch (...) {
      return "unknown exception";
    }
  }

  std::mt19937_64 rng_;
  int index_;
  std::vector<Kind> kinds_;
  const TempDir& dir_;
  int counter_ = 0;
  std::shared_ptr<Outcome> outcome_ = std::make_shared<Outcome>();
  std::vector<std::shared_ptr<Task>> tasks_;
};

std::uint64_t chaos_seed() {
  if (const char* s = std::getenv("MPROC_CHAOS_SEED")) return std::strtoull(s, nullptr, 0);
  return std::random_device{}() * 0x100000001ULL ^ std::random_device{}();
}

void run_chaos() {
  const std::uint64_t seed = chaos_seed();
  const char* secs = std::getenv("MPROC_CHAOS_SECONDS");
  const auto budget = std::chrono::seconds(secs ? std::atol(secs) : 0);
  const int min_rounds = secs ? 1 : 3;  // the short run: three rounds
  const auto kinds = kinds_from(std::getenv("MPROC_CHAOS_FAULTS"));
  std::string names;
  for (Kind k : kinds) names += std::string(names.empty() ? "" : ",") + info(k).name;
  std::printf("[chaos] seed=%llu (replay: MPROC_CHAOS_SEED=%llu) faults=%s\n", static_cast<unsigned long long>(seed),
              static_cast<unsigned long long>(seed), names.c_str());
  std::fflush(stdout);
  testing::Test::RecordProperty("seed", std::to_string(seed));
  TempDir dir;
  const auto t0 = Clock::now();
  int rounds = 0;
  while (rounds < min_rounds || Clock::now() - t0 < budget) {
    Round(seed, rounds, kinds, dir).run();
    ++rounds;
    if (testing::Test::HasFailure()) {
      ADD_FAILURE() << "chaos failed in round " << rounds - 1 << "; replay with MPROC_CHAOS_SEED=" << seed;
      break;
    }
  }
  std::printf("[chaos] %d rounds in %.1f s\n", rounds, seconds_since(t0));
}

TEST(Chaos, FaultsAndPoolDestructionNeverLeaveAFutureOrAnInnocentBehind) { run_chaos(); }

}  // namespace
