// The demo tour (`make demo`): runs each example next to this binary in turn.
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "mproc/mproc.hpp"

namespace {
void run_example(std::string path, std::vector<std::string> args) {
  std::vector<char*> argv{path.data()};
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  ::execv(path.c_str(), argv.data());
  ::_exit(127);
}
}  // namespace

int main(int argc, char** argv) {
  mproc::init(argc, argv, {.start_method = mproc::StartMethod::fork});
  const auto dir = std::filesystem::canonical("/proc/self/exe").parent_path();
  struct Step {
    const char* title;
    const char* program;
    std::vector<std::string> args;
  };
  const std::vector<Step> tour = {
      {"Four processes summing squares vs one process", "sum_squares", {}},
      {"Pipe ping-pong between two processes", "pipe_ping", {"20000"}},
      {"A crash, an exception and a runaway: each fails alone", "crash_isolation", {}},
      {"Largest prime factors with ProcessPoolExecutor(4)", "prime_factors", {}},
      {"Pool.map, starmap and imap over twenty match analyses", "match_analysis", {}},
      {"A bad batch: a segfault and a runaway among twenty tasks", "bad_batch", {}},
      {"Manager().dict(): a child sets status to \"completed\"", "manager_dict", {}},
      {"Remote work board: a server program and two clients on loopback TCP", "work_board", {}},
      {"A Value counter and an Array name changed by children under get_lock()", "shared_value", {}},
      {"Queue messages from a child", "queue_messages", {}},
      {"A producer/consumer pipeline with JoinableQueue", "pipeline", {}},
      {"A parallel histogram into a shared Array", "histogram", {}},
      {"SHA-256 of a folder tree with Pool.imap, checked against sha256sum", "sha256_tree", {}},
      {"Resizing photos to 300x300 with Pool.map, beside CPython + Pillow", "resize_images", {}},
  };
  int failures = 0;
  for (const auto& step : tour) {
    std::printf("\n== %s ==\n", step.title);
    std::fflush(stdout);
    // An example whose library was missing at configure time (CMake said so).
    if (!std::filesystem::exists(dir / step.program)) {
      std::printf("  (skipped: %s was not built)\n", step.program);
      continue;
    }
    mproc::Process p(run_example, (dir / step.program).string(), step.args);
    p.start();
    p.join();
    if (p.exitcode() != 0) {
      std::printf("  (%s exited with %d)\n", step.program, p.exitcode().value_or(-1));
      ++failures;
    }
  }
  std::printf("\n%s\n", failures ? "demo: some steps failed" : "demo: all steps done");
  return failures ? 1 : 0;
}
