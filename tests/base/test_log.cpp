// mproc's logger (log_to_stderr / get_logger / MPROC_LOG) and the pool's task
// timeline (PoolOptions::trace_file / MPROC_TRACE), checked against the
// tasks a pool really ran: a normal one, one that crashes its worker and one
// past its deadline.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <map>
#include <sstream>
#include <string>

#include "mproc/executor.hpp"
#include "mproc/log.hpp"
#include "mproc/process.hpp"
#include "support.hpp"

using namespace std::chrono_literals;

namespace {

int square(int x) { return x * x; }
int crash(int) {
  ::raise(SIGABRT);
  return 0;
}
int hang(int) {
  for (;;) ::pause();
}

std::string temp_path(const char* what) {
  return (std::filesystem::temp_directory_path() / (std::string("mproc_log_") + what + "_" + std::to_string(::getpid())))
      .string();
}

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// The text after `key` up to `end`; whether one line holds all of `parts`.
// (std::regex is avoided: GCC's -Wmaybe-uninitialized misfires on it in the
// sanitizer builds).
std::string after(const std::string& text, const std::string& key, char end) {
  const auto at = text.find(key);
  if (at == std::string::npos) return {};
  const auto from = at + key.size();
  return text.substr(from, text.find(end, from) - from);
}
bool has_line_with(const std::string& text, std::initializer_list<std::string> parts) {
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    bool all = true;
    for (const auto& p : parts) all = all && line.find(p) != std::string::npos;
    if (all) return true;
  }
  return false;
}
bool all_digits(const std::string& s) { return !s.empty() && s.find_first_not_of("0123456789") == std::string::npos; }

struct TaskIds {
  std::uint64_t ok = 0, crashed = 0, timed_out = 0;
};

// One executor: a task that succeeds, one that kills its worker with SIGABRT,
// one that runs past its 100 ms deadline.
TaskIds run_three_tasks(mproc::PoolOptions options) {
  options.max_workers = 1;
  options.start_method = mproc::StartMethod::fork;
  TaskIds ids;
  mproc::ProcessPoolExecutor ex(options);
  auto ok = ex.submit(square, 7);
  ids.ok = ok.id();
  EXPECT_EQ(ok.get(), 49);
  auto c = ex.submit(crash, 0);
  ids.crashed = c.id();
  EXPECT_THROW(c.get(), mproc::WorkerCrashed);
  auto t = ex.submit(mproc::SubmitOptions{.timeout = 100ms}, hang, 0);
  ids.timed_out = t.id();
  EXPECT_THROW(t.get(), mproc::TaskTimeout);
  return ids;
}

// A child process logs one line to the file at `path` (its own descriptor:
// the parent's does not reach a spawned or forkserver child).
void log_from_child(std::string path) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
  if (fd < 0) ::_exit(3);
  mproc::Logger& log = mproc::log_to_stderr(mproc::LogLevel::info);
  log.set_fd(fd);
  log.info("from the child");
  log.set_level(mproc::LogLevel::off);
  log.set_fd(2);
  ::close(fd);
}

TEST(Log, ParsesLevelsAsPythonNamesThem) {
  EXPECT_EQ(mproc::parse_log_level("DEBUG"), mproc::LogLevel::debug);
  EXPECT_EQ(mproc::parse_log_level("info"), mproc::LogLevel::info);
  EXPECT_EQ(mproc::parse_log_level("Warning"), mproc::LogLevel::warning);
  EXPECT_EQ(mproc::parse_log_level("error"), mproc::LogLevel::error);
  EXPECT_EQ(mproc::parse_log_level("nonsense"), mproc::LogLevel::off);
}

// A child's lines carry the child's name, not "MainProcess": the process
// layer hands the name to the logger (base may not ask it), under every
// start method.
TEST(Log, ChildLinesCarryTheChildsName) {
  for (const mproc::StartMethod m : {mproc::StartMethod::fork, mproc::StartMethod::spawn,
                                     mproc::StartMethod::forkserver}) {
    const std::string path = temp_path("child");
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    ASSERT_GE(fd, 0);
    ::close(fd);
    mproc::Process p(mproc::ProcessOptions{.name = "LogChild", .start_method = m}, log_from_child, path);
    p.start();
    p.join();
    EXPECT_EQ(p.exitcode(), 0);
    const std::string text = read_file(path);
    std::remove(path.c_str());
    EXPECT_EQ(text, "[INFO/LogChild " + std::to_string(p.pid()) + "] from the child\n")
        << "start method " << static_cast<int>(m);
  }
}

// Mirrors CPython's test_log_to_stderr/_TestLogging.test_level: what is
// below the level is dropped; lifecycle events name the pid and the task.
TEST(Log, LifecycleEventsNameThePidAndTheTask) {
  const std::string path = temp_path("events");
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  ASSERT_GE(fd, 0);
  mproc::Logger& log = mproc::log_to_stderr(mproc::LogLevel::debug);
  log.set_fd(fd);
  log.info("before the pool");
  const TaskIds ids = run_three_tasks({});
  log.set_level(mproc::LogLevel::warning);
  log.info("dropped: below the level");
  log.set_level(mproc::LogLevel::off);
  log.set_fd(2);
  ::close(fd);
  const std::string text = read_file(path);
  std::remove(path.c_str());
  const std::string me = std::to_string(::getpid());
  EXPECT_NE(text.find("[INFO/MainProcess " + me + "] before the pool\n"), std::string::npos) << text;
  EXPECT_EQ(text.find("dropped"), std::string::npos) << text;
  const std::string first = after(text, "worker ExecutorWorker-1 started (pid ", ')');
  ASSERT_TRUE(all_digits(first)) << text;
  EXPECT_NE(text.find("task " + std::to_string(ids.ok) + " sent to worker pid " + first), std::string::npos) << text;
  EXPECT_NE(text.find("task " + std::to_string(ids.ok) + " ended (ok) on worker pid " + first), std::string::npos)
      << text;
  EXPECT_NE(text.find("[WARNING/MainProcess " + me + "] pool ExecutorWorker: worker pid " + first +
                      " crashed with signal 6 (SIGABRT) while running task " + std::to_string(ids.crashed)),
            std::string::npos)
      << text;
  EXPECT_TRUE(has_line_with(text, {"task " + std::to_string(ids.timed_out) + " timed out after 100 ms on worker pid ",
                                    "; killing the worker"}))
      << text;
  EXPECT_TRUE(has_line_with(text, {"worker ExecutorWorker-2 started (pid ", "), a replacement"})) << text;
}

// The environment switch is read when the library loads: a fresh copy of
// this binary with MPROC_LOG=debug logs the same events to its stderr.
TEST(LogScenario, DISABLED_RunsThreeTasks) { run_three_tasks({}); }

TEST(Log, EnvironmentSwitchTurnsItOnWithoutCode) {
  const std::string err = temp_path("env_stderr");
  const pid_t pid = ::fork();
  if (pid == 0) {
    const int fd = ::open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    ::dup2(fd, 2);
    ::setenv("MPROC_LOG", "debug", 1);
    ::execl("/proc/self/exe", "mproc_tests", "--gtest_filter=LogScenario.DISABLED_RunsThreeTasks",
            "--gtest_also_run_disabled_tests", static_cast<char*>(nullptr));
    ::_exit(127);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  const std::string text = read_file(err);
  std::remove(err.c_str());
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << text;
  EXPECT_TRUE(has_line_with(text, {"[DEBUG/MainProcess ", "] pool ExecutorWorker: task ", " sent to worker pid "}))
      << text;
  EXPECT_NE(text.find("crashed with signal 6 (SIGABRT)"), std::string::npos) << text;
}

// The timeline: valid JSON (checked by Python's json module), a lane named
// after each worker, and one span per task run, with its outcome.
TEST(Trace, SpansMatchTheTasksRun) {
  const std::string path = temp_path("trace") + ".json";
  const TaskIds ids = run_three_tasks({.trace_file = path});
  const std::string text = read_file(path);
  ASSERT_EQ(std::system(("python3 -c 'import json,sys; json.load(open(sys.argv[1]))' " + path).c_str()), 0)
      << "not valid JSON:\n" << text;
  std::remove(path.c_str());
  std::map<std::uint64_t, std::string> outcome;  // task → outcome
  std::map<std::uint64_t, std::string> lane;     // task → worker pid (tid)
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);) {
    if (line.find(R"("ph":"X")") == std::string::npos) continue;
    const std::string id_text = after(line, R"("name":"task )", '"');
    const std::string tid = after(line, R"("tid":)", ',');
    ASSERT_TRUE(all_digits(id_text) && all_digits(tid)) << line;
    const auto id = std::stoull(id_text);
    EXPECT_EQ(outcome.count(id), 0u) << "task " << id << " has two spans";
    outcome[id] = after(line, R"("outcome":")", '"');
    lane[id] = tid;
  }
  EXPECT_EQ(outcome.size(), 3u) << text;
  EXPECT_EQ(outcome[ids.ok], "ok");
  EXPECT_EQ(outcome[ids.crashed], "crashed");
  EXPECT_EQ(outcome[ids.timed_out], "timed out");
  // Each span sits in the lane of a worker the trace names.
  for (auto& [id, tid] : lane)
    EXPECT_NE(text.find(R"("tid":)" + tid + R"(,"args":{"name":"ExecutorWorker-)"), std::string::npos) << "task " << id;
  EXPECT_NE(text.find(R"J("name":"crashed: signal 6 (SIGABRT)")J"), std::string::npos) << text;
  EXPECT_NE(text.find(R"("name":"timeout: task )" + std::to_string(ids.timed_out)), std::string::npos) << text;
}

}  // namespace
