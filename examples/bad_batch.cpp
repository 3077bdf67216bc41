// A bad batch: twenty tasks, where one segfaults and one loops forever under
// a deadline. Each fails alone (WorkerCrashed, TaskTimeout), its worker is
// replaced, the other eighteen results arrive, and the pool goes on serving.
// (CPython's Pool hangs on the segfault for good, gh-66587; its
// ProcessPoolExecutor turns wholly broken with BrokenProcessPool.)
//
// The pool's log goes to stderr from warnings up (mproc::log_to_stderr:
// the crash with its signal, the timeout), and its task timeline to
// bad_batch_trace.json in the temp directory: load it in ui.perfetto.dev or
// chrome://tracing to see a lane per worker and a span per task.
//
//   ./bad_batch [trace.json]   exit code 0 only for 18 results, 1 crash, 1 timeout
#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <cstdio>
#include <exception>
#include <memory>
#include <vector>

#include "mproc/log.hpp"
#include "mproc/mproc.hpp"

namespace {

constexpr int kTasks = 20, kSegfaults = 7, kLoops = 13;

long checksum(long n) {  // some real work for the good tasks
  long s = 0;
  for (long i = 1; i <= n * 200'000; ++i) s = (s * 31 + i) % 1'000'000'007;
  return s;
}

// Record `i` of the batch; two of them are bad.
long process_record(int i) {
  if (i == kSegfaults) {
    volatile int* p = nullptr;
    *p = 42;  // SIGSEGV in the worker
  }
  if (i == kLoops) {
    volatile unsigned long spin = 0;
    for (;;) spin = spin + 1;  // never returns: the deadline kills it
  }
  return checksum(i + 1);
}

}  // namespace

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  using namespace std::chrono_literals;
  mproc::log_to_stderr(mproc::LogLevel::warning);
  const std::string trace = argc > 1 ? argv[1] : (std::filesystem::temp_directory_path() / "bad_batch_trace.json").string();
  std::fflush(stdout);
  auto pool = std::make_unique<mproc::ProcessPoolExecutor>(
      mproc::PoolOptions{.max_workers = 2, .task_timeout = 1500ms, .trace_file = trace});
  std::printf("a batch of %d records on %u workers, each task under a 1.5 s deadline\n", kTasks, pool->max_workers());

  const auto t0 = std::chrono::steady_clock::now();
  std::vector<mproc::Future<long>> futures;
  for (int i = 0; i < kTasks; ++i) futures.push_back(pool->submit(process_record, i));

  int ok = 0, crashed = 0, timed_out = 0, other = 0;
  for (int i = 0; i < kTasks; ++i) {
    std::printf("  record %2d: ", i);
    try {
      const long v = futures[i].get();
      std::printf("%ld\n", v);
      ++ok;
    } catch (const mproc::WorkerCrashed& e) {
      std::printf("WorkerCrashed: worker %d killed by signal %d (task %llu)\n", static_cast<int>(e.pid()), e.signal(),
                  static_cast<unsigned long long>(e.task()));
      ++crashed;
    } catch (const mproc::TaskTimeout& e) {
      std::printf("TaskTimeout: still running after %.1f s, worker %d killed\n",
                  static_cast<double>(e.limit().count()) / 1e9, static_cast<int>(e.pid()));
      ++timed_out;
    } catch (const std::exception& e) {
      std::printf("unexpected error: %s\n", e.what());
      ++other;
    }
  }
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("  %d results, %d crashed, %d timed out, %d other, in %.2f s\n", ok, crashed, timed_out, other,
              elapsed);

  // The same pool serves on: a short per-submit deadline, then a second batch.
  std::vector<mproc::Future<long>> again;
  for (int i = 0; i < 4; ++i) again.push_back(pool->submit(mproc::SubmitOptions{.timeout = 5s}, process_record, i));
  bool serves = true;
  for (int i = 0; i < 4; ++i) serves = serves && again[i].get() == checksum(i + 1);
  std::printf("  afterwards the pool still serves: %s; %zu workers replaced; workers now:",
              serves ? "4 of 4 new tasks done" : "NO", pool->respawns());
  for (pid_t pid : pool->worker_pids()) std::printf(" %d", static_cast<int>(pid));
  std::printf("\n");
  pool.reset();  // the trace is complete once the pool has stopped
  std::ifstream in(trace);
  std::string line;
  int spans = 0;
  while (std::getline(in, line)) spans += line.find("\"ph\":\"X\"") != std::string::npos;
  std::printf("  task timeline: %d task spans in %s (open it in ui.perfetto.dev)\n", spans, trace.c_str());
  return ok == 18 && crashed == 1 && timed_out == 1 && other == 0 && serves ? 0 : 1;
}
