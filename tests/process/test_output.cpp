// Output as in Python or better, with stdout going to a file (as `> log`,
// `| tee` or a CI log, where stdio is fully buffered):
//   - nothing the parent printed before start() is printed again by a fork
//     child, nor comes out after the children's lines;
//   - no line a pool task printed is lost when the pool is destroyed (its
//     destructor terminates the workers), nor when a task is killed while it
//     runs (pool workers write whole lines as they are printed).
// Each start method runs the scenario in a fresh copy of this binary whose
// stdout is a file; the test reads the file.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "mproc/pool.hpp"
#include "mproc/process.hpp"
#include "support.hpp"

namespace {

int print_and_square(int x) {
  std::printf("line: task %d\n", x);  // no flush: the worker must not lose it
  return x * x;
}

// Prints, says it has (a file the parent waits for), then runs until killed.
int print_then_hang(std::string marker) {
  std::printf("line: hanging task started\n");
  std::ofstream(marker) << "started";
  for (;;) ::pause();
}

void child_prints() { std::printf("line: process child\n"); }

std::string temp_path(const char* what) {
  return (std::filesystem::temp_directory_path() /
          (std::string("mproc_output_") + what + "_" + std::to_string(::getpid())))
      .string();
}

// The scenario, run only inside the copy the real tests start (stdout = file).
TEST(OutputScenario, DISABLED_PrintsFromEverywhere) {
  const char* method_env = std::getenv("MPROC_TEST_OUTPUT_METHOD");
  ASSERT_NE(method_env, nullptr);
  mproc::StartMethod method = mproc::StartMethod::fork;
  for (auto m : {mproc::StartMethod::fork, mproc::StartMethod::spawn, mproc::StartMethod::forkserver})
    if (mproc::to_string(m) == std::string(method_env)) method = m;
  std::printf("line: parent before process\n");  // buffered, not flushed
  mproc::ProcessOptions po;
  po.start_method = method;
  mproc::Process p(po, child_prints);
  p.start();
  ASSERT_TRUE(p.join(std::chrono::seconds(60)));
  std::printf("line: parent before pool\n");
  {
    mproc::Pool pool(mproc::PoolOptions{.max_workers = 2, .start_method = method});
    std::vector<int> in;
    for (int i = 0; i < 24; ++i) in.push_back(i);
    auto out = pool.map(print_and_square, in, 1);
    ASSERT_EQ(out.size(), in.size());
    const std::string marker = std::getenv("MPROC_TEST_OUTPUT_MARKER");
    auto hanging = pool.apply_async(print_then_hang, marker);
    ASSERT_TRUE(mproc::test::eventually([&] { return std::filesystem::exists(marker); }, 60000));
  }  // ~Pool terminates both workers, one of them in the middle of a task
  std::printf("line: parent after pool\n");
}

class Output : public testing::TestWithParam<mproc::StartMethod> {};

TEST_P(Output, EveryLineOnceAndInOrderWhenStdoutIsAFile) {
  const std::string out_path = temp_path("out");
  const std::string marker = temp_path("marker");
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    const int fd = ::open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0 || ::dup2(fd, 1) != 1) ::_exit(126);
    ::setenv("MPROC_TEST_OUTPUT_METHOD", std::string(mproc::to_string(GetParam())).c_str(), 1);
    ::setenv("MPROC_TEST_OUTPUT_MARKER", marker.c_str(), 1);
    ::execl("/proc/self/exe", "mproc_tests", "--gtest_also_run_disabled_tests",
            "--gtest_filter=OutputScenario.DISABLED_PrintsFromEverywhere", static_cast<char*>(nullptr));
    ::_exit(127);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  std::ifstream in(out_path);
  std::vector<std::string> lines;
  std::string all;
  for (std::string l; std::getline(in, l);) {
    all += l + "\n";
    if (l.rfind("line: ", 0) == 0) lines.push_back(l.substr(6));
  }
  std::filesystem::remove(out_path);
  std::filesystem::remove(marker);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "scenario failed:\n" << all;

  std::map<std::string, int> count;
  for (const auto& l : lines) ++count[l];
  auto at = [&](const std::string& l) { return std::find(lines.begin(), lines.end(), l) - lines.begin(); };
  for (const char* l : {"parent before process", "process child", "parent before pool", "hanging task started",
                        "parent after pool"})
    EXPECT_EQ(count[l], 1) << "'" << l << "' printed " << count[l] << " times:\n" << all;
  for (int i = 0; i < 24; ++i)
    EXPECT_EQ(count["task " + std::to_string(i)], 1) << "task " << i << "'s line:\n" << all;
  // Python's order: what the parent printed before start() comes first.
  EXPECT_LT(at("parent before process"), at("process child")) << all;
  EXPECT_LT(at("process child"), at("parent before pool")) << all;
  EXPECT_LT(at("parent before pool"), at("task 0")) << all;
  EXPECT_EQ(lines.back(), "parent after pool") << all;
}

INSTANTIATE_TEST_SUITE_P(ByMethod, Output,
                         testing::Values(mproc::StartMethod::fork, mproc::StartMethod::spawn,
                                         mproc::StartMethod::forkserver),
                         [](const auto& info) { return std::string(mproc::to_string(info.param)); });

}  // namespace
