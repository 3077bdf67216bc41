// Process start+join per start method, against the floor of a bare
// fork + _exit + waitpid in this same binary (same address-space size, so the
// same page-table copy cost).
//
// Issue 2 target: Process start+join with fork within 2x of BM_BareFork.
#include <benchmark/benchmark.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>

#include "mproc/process.hpp"

namespace {

void noop_fn() {}

mproc::ProcessOptions with_method(mproc::StartMethod method) {
  mproc::ProcessOptions o;
  o.start_method = method;
  return o;
}

// Floor: the cheapest way to create a process and reap it.
void BM_BareFork(benchmark::State& state) {
  for (auto _ : state) {
    pid_t pid = ::fork();
    if (pid == 0) ::_exit(0);
    if (pid < 0) {
      state.SkipWithError("fork failed");
      break;
    }
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
  }
}
BENCHMARK(BM_BareFork)->UseRealTime()->Unit(benchmark::kMicrosecond);

// mproc::Process with an explicit start method: construct, start, join.
void BM_ProcessStartJoin(benchmark::State& state, mproc::StartMethod method) {
  for (auto _ : state) {
    mproc::Process p(with_method(method), &noop_fn);
    p.start();
    p.join();
    if (p.exitcode() != 0) {
      state.SkipWithError("child did not exit with 0");
      break;
    }
  }
}
BENCHMARK_CAPTURE(BM_ProcessStartJoin, fork, mproc::StartMethod::fork)
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_ProcessStartJoin, forkserver, mproc::StartMethod::forkserver)
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_ProcessStartJoin, spawn, mproc::StartMethod::spawn)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

}  // namespace
