// mproc::Process under every start method: exit codes, signals, exceptions,
// timeouts, terminate/kill, sentinels, identity and RAII.
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdlib>
#include <stdexcept>
#include <thread>

#include "mproc/connection.hpp"
#include "mproc/context.hpp"
#include "mproc/process.hpp"
#include "support.hpp"

using namespace std::chrono_literals;
using mproc::Process;
using mproc::ProcessOptions;
using mproc::StartMethod;

namespace {

void exit_with(int code) { ::_exit(code); }
void return_normally() {}
void throw_out_of_range(std::string msg) { throw std::out_of_range(msg); }
void sleep_forever() {
  for (;;) ::pause();
}
// A real fault (not a raise): UBSan builds must not turn it into an abort.
__attribute__((no_sanitize("undefined"))) void segfault() {
  volatile int* p = nullptr;
  *p = 1;
}
void do_abort() { std::abort(); }
void check_args(std::string s, std::vector<int> v, std::pair<int, double> p) {
  bool ok = s == "héllo" && v == std::vector<int>{1, 2, 3} && p.first == 4 && p.second == 2.5;
  ::_exit(ok ? 42 : 1);
}
void exit_with_own_name(std::string expected) { ::_exit(mproc::current_process().name == expected ? 0 : 1); }
void exit_if_parent_is(pid_t expected) {
  auto parent = mproc::parent_process();
  ::_exit(parent && parent->pid == expected && parent->name == "MainProcess" ? 0 : 1);
}

struct Adder {  // a serializable function object
  int base = 0;
  void operator()(int x) const { ::_exit(base + x); }
  template <class A>
  void serialize(A& ar) {
    ar(base);
  }
};

ProcessOptions with(StartMethod m) { return ProcessOptions{.start_method = m}; }

class ProcessByMethod : public testing::TestWithParam<StartMethod> {};

std::string method_name(const testing::TestParamInfo<StartMethod>& info) {
  return std::string(mproc::to_string(info.param));
}

}  // namespace

// Compile-time contract of what may cross an exec.
static_assert(mproc::Remotable<void (*)(int), int>);
static_assert(mproc::Remotable<Adder, int>);
struct NotSerializable {
  std::string text;  // neither trivially copyable nor given a serialize()
};
static_assert(!mproc::Remotable<void (*)(NotSerializable), NotSerializable>);
static_assert(!mproc::Remotable<std::function<void()>>);

TEST_P(ProcessByMethod, ExitCodeOfTarget) {
  Process p(with(GetParam()), exit_with, 7);
  EXPECT_EQ(p.pid(), 0);
  p.start();
  EXPECT_GT(p.pid(), 0);
  p.join();
  EXPECT_EQ(p.exitcode(), 7);
  EXPECT_FALSE(p.is_alive());
  EXPECT_EQ(p.start_method(), GetParam());
}

TEST_P(ProcessByMethod, NormalReturnIsZero) {
  Process p(with(GetParam()), return_normally);
  p.start();
  p.join();
  EXPECT_EQ(p.exitcode(), 0);
  EXPECT_FALSE(p.exception().has_value());
}

TEST_P(ProcessByMethod, CaptureLessLambdaAndArguments) {
  Process p(with(GetParam()), check_args, std::string("héllo"), std::vector<int>{1, 2, 3}, std::pair<int, double>{4, 2.5});
  p.start();
  p.join();
  EXPECT_EQ(p.exitcode(), 42);
  Process q(with(GetParam()), [](int a, int b) { ::_exit(a * b); }, 6, 7);
  q.start();
  q.join();
  EXPECT_EQ(q.exitcode(), 42);
}

TEST_P(ProcessByMethod, SerializableFunctionObject) {
  Process p(with(GetParam()), Adder{40}, 2);
  p.start();
  p.join();
  EXPECT_EQ(p.exitcode(), 42);
}

// A string literal argument is a std::string in the child, under every start
// method (it used to be a raw pointer, which cannot cross an exec).
void exit_with_length(std::string s) { ::_exit(static_cast<int>(s.size())); }
TEST_P(ProcessByMethod, StringLiteralArgumentArrivesAsAString) {
  Process p(with(GetParam()), exit_with_length, "John Doe");
  p.start();
  ASSERT_TRUE(p.join(std::chrono::seconds(60)));
  EXPECT_EQ(p.exitcode(), 8);
}

TEST_P(ProcessByMethod, ExceptionCrossesAsRemoteError) {
  Process p(with(GetParam()), throw_out_of_range, std::string("index 9 past the end"));
  p.start();
  p.join();
  EXPECT_EQ(p.exitcode(), 1);
  auto err = p.exception();
  ASSERT_TRUE(err.has_value());
  EXPECT_EQ(err->type_name(), "std::out_of_range");
  EXPECT_EQ(err->message(), "index 9 past the end");
  EXPECT_NE(std::string(err->what()).find("index 9 past the end"), std::string::npos);
}

TEST_P(ProcessByMethod, KilledBySignalGivesNegativeSignal) {
  Process seg(with(GetParam()), segfault);
  Process ab(with(GetParam()), do_abort);
  seg.start();
  ab.start();
  seg.join();
  ab.join();
  EXPECT_EQ(seg.exitcode(), -SIGSEGV);
  EXPECT_EQ(ab.exitcode(), -SIGABRT);
}

TEST_P(ProcessByMethod, JoinTimeoutReturnsInTimeThenTerminate) {
  Process p(with(GetParam()), sleep_forever);
  p.start();
  auto t0 = std::chrono::steady_clock::now();
  EXPECT_FALSE(p.join(150ms));
  auto waited = std::chrono::steady_clock::now() - t0;
  EXPECT_GE(waited, 140ms);
  EXPECT_LT(waited, 15s);  // a hang guard only: a loaded machine can delay the wake-up
  EXPECT_TRUE(p.is_alive());
  EXPECT_EQ(p.exitcode(), std::nullopt);
  p.terminate();
  EXPECT_TRUE(p.join(30s));
  EXPECT_EQ(p.exitcode(), -SIGTERM);
}

TEST_P(ProcessByMethod, KillGivesSigkill) {
  Process p(with(GetParam()), sleep_forever);
  p.start();
  p.kill();
  p.join();
  EXPECT_EQ(p.exitcode(), -SIGKILL);
  p.kill();  // already dead: harmless
  p.terminate();
}

TEST_P(ProcessByMethod, SentinelBecomesReadableAtExit) {
  Process p(with(GetParam()), sleep_forever);
  p.start();
  pollfd pfd{p.sentinel(), POLLIN, 0};
  EXPECT_EQ(::poll(&pfd, 1, 50), 0);
  p.kill();
  EXPECT_EQ(::poll(&pfd, 1, 5000), 1);
  auto ready = mproc::wait({p}, 5s);
  ASSERT_EQ(ready.size(), 1u);
  p.join();
}

TEST_P(ProcessByMethod, NameAndIdentityInChild) {
  Process p(ProcessOptions{.name = "worker-A", .start_method = GetParam()}, exit_with_own_name, std::string("worker-A"));
  EXPECT_EQ(p.name(), "worker-A");
  p.start();
  p.join();
  EXPECT_EQ(p.exitcode(), 0);
  Process q(with(GetParam()), exit_if_parent_is, ::getpid());
  q.start();
  q.join();
  EXPECT_EQ(q.exitcode(), 0);
}

TEST_P(ProcessByMethod, DaemonIsKilledByDestructor) {
  pid_t pid;
  auto t0 = std::chrono::steady_clock::now();
  {
    Process p(ProcessOptions{.daemon = true, .start_method = GetParam()}, sleep_forever);
    p.start();
    pid = p.pid();
    EXPECT_TRUE(p.daemon());
  }
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 30s);  // vs forever (sleep_forever); wide: load
  EXPECT_TRUE(mproc::test::pid_gone(pid));
}

TEST_P(ProcessByMethod, DestructorJoinsNonDaemon) {
  pid_t pid;
  {
    Process p(with(GetParam()), [] {
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
      ::_exit(0);
    });
    p.start();
    pid = p.pid();
  }
  EXPECT_TRUE(mproc::test::pid_gone(pid));
}

void echo_twice(mproc::Connection c, int x) {
  c.send(x * 2);
  auto s = c.recv<std::string>();
  c.send(s + "!");
}

TEST_P(ProcessByMethod, PipeEndMovedIntoTheChild) {
  auto [mine, theirs] = mproc::Pipe();
  Process p(with(GetParam()), echo_twice, std::move(theirs), 21);
  p.start();
  EXPECT_EQ(mine.recv<int>(), 42);
  mine.send(std::string("hi"));
  EXPECT_EQ(mine.recv<std::string>(), "hi!");
  p.join();
  EXPECT_EQ(p.exitcode(), 0);
  // The parent's Process dropped its copy at start: the child's exit is EOF.
  EXPECT_THROW(mine.recv<int>(), mproc::ConnectionClosed);
}

INSTANTIATE_TEST_SUITE_P(AllMethods, ProcessByMethod,
                         testing::Values(StartMethod::fork, StartMethod::spawn, StartMethod::forkserver), method_name);

TEST(Process, ForkRunsAnyCallableIncludingCaptures) {
  int secret = 21;
  auto owned = std::make_unique<int>(2);
  Process p(with(StartMethod::fork), [secret, o = std::move(owned)] { ::_exit(secret * *o); });
  p.start();
  p.join();
  EXPECT_EQ(p.exitcode(), 42);
}

TEST(Process, CapturingLambdaUnderSpawnIsAClearError) {
  int secret = 21;
  for (StartMethod m : {StartMethod::spawn, StartMethod::forkserver}) {
    Process p(with(m), [secret] { ::_exit(secret); });
    try {
      p.start();
      FAIL() << "start() should refuse a capturing lambda under " << mproc::to_string(m);
    } catch (const mproc::ValueError& e) {
      EXPECT_NE(std::string(e.what()).find("captureless lambda"), std::string::npos) << e.what();
    }
    EXPECT_EQ(p.pid(), 0);
  }
}

TEST(Process, MisuseIsAValueError) {
  Process p(with(StartMethod::fork), return_normally);
  EXPECT_THROW(p.join(), mproc::ValueError);
  EXPECT_THROW(p.sentinel(), mproc::ValueError);
  p.start();
  EXPECT_THROW(p.start(), mproc::ValueError);
  EXPECT_THROW(p.set_daemon(true), mproc::ValueError);
  p.join();
  Process empty;
  EXPECT_THROW(empty.start(), mproc::ValueError);
  std::error_code ec;
  empty.start(ec);
  EXPECT_TRUE(ec);
}

TEST(Process, DefaultNamesCountUp) {
  Process a(return_normally), b(return_normally);
  EXPECT_EQ(a.name().rfind("Process-", 0), 0u);
  EXPECT_NE(a.name(), b.name());
  EXPECT_EQ(mproc::current_process().name, "MainProcess");
  EXPECT_EQ(mproc::current_process().pid, ::getpid());
}

TEST(Process, MovedProcessStillJoins) {
  Process a(with(StartMethod::fork), exit_with, 3);
  a.start();
  Process b = std::move(a);
  b.join();
  EXPECT_EQ(b.exitcode(), 3);
  std::vector<Process> many;
  for (int i = 0; i < 4; ++i) many.emplace_back(with(StartMethod::forkserver), exit_with, i);
  for (auto& p : many) p.start();
  for (int i = 0; i < 4; ++i) {
    many[i].join();
    EXPECT_EQ(many[i].exitcode(), i);
  }
}

TEST(Process, ActiveChildrenListsLiveOnes) {
  Process a(with(StartMethod::fork), sleep_forever), b(with(StartMethod::forkserver), sleep_forever);
  a.start();
  b.start();
  auto kids = mproc::active_children();
  ASSERT_EQ(kids.size(), 2u);
  std::set<pid_t> pids{kids[0].pid, kids[1].pid};
  EXPECT_TRUE(pids.count(a.pid()) && pids.count(b.pid()));
  a.kill();
  a.join();
  EXPECT_EQ(mproc::active_children().size(), 1u);
  b.kill();
  b.join();
  EXPECT_TRUE(mproc::active_children().empty());
}

TEST(Process, CloseRefusesARunningProcess) {
  Process p(with(StartMethod::fork), sleep_forever);
  p.start();
  EXPECT_THROW(p.close(), mproc::ValueError);
  p.kill();
  p.join();
  p.close();
}

// Python's _check_closed: after close() the handles are gone, and using them
// is a ValueError naming the process; name and daemon still answer.
TEST(Process, TestProcess_test_close) {
  Process p(with(StartMethod::fork), return_normally);
  p.set_name("closing-one");
  p.start();
  p.join();
  p.close();
  p.close();  // twice is fine, as in Python
  auto closed = [](auto&& call) {
    try {
      call();
    } catch (const mproc::ValueError& e) {
      return std::string(e.what()).find("closing-one is closed") != std::string::npos;
    }
    return false;
  };
  EXPECT_TRUE(closed([&] { p.start(); }));
  EXPECT_TRUE(closed([&] { p.join(); }));
  EXPECT_TRUE(closed([&] { (void)p.is_alive(); }));
  EXPECT_TRUE(closed([&] { (void)p.exitcode(); }));
  EXPECT_TRUE(closed([&] { p.terminate(); }));
  EXPECT_TRUE(closed([&] { p.kill(); }));
  EXPECT_TRUE(closed([&] { (void)p.sentinel(); }));
  EXPECT_TRUE(closed([&] { (void)p.exception(); }));
  EXPECT_EQ(p.name(), "closing-one");
}

TEST(Process, IgnoredSigchldIsRefusedClearly) {
  struct sigaction ign {}, old {};
  ign.sa_handler = SIG_IGN;
  ::sigaction(SIGCHLD, &ign, &old);
  Process p(with(StartMethod::fork), return_normally);
  EXPECT_THROW(p.start(), mproc::ValueError);
  ::sigaction(SIGCHLD, &old, nullptr);
  EXPECT_EQ(p.pid(), 0);
}
