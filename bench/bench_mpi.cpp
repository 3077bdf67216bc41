// mproc::mpi::PoolExecutor hot paths against Open MPI's own floor, run as
//   mpirun -n 3 --oversubscribe build/bench/mproc_mpi_bench
// (rank 0 runs Google Benchmark, ranks 1-2 are workers; docs/mpi.md).
//
// Issue 6 target: a trivial task's round trip within 10x of the raw 1-byte
// MPI ping-pong between the same two ranks (BM_RawMpiPingPong). Throughput
// compares with mproc_bench's BM_ExecutorThroughput (local pool, 2 workers).
#include <benchmark/benchmark.h>
#include <mpi.h>

#include <cstdio>
#include <numeric>
#include <vector>

#include "mproc/context.hpp"
#include "mproc/mpi.hpp"

namespace {

int ident(int x) { return x; }

std::vector<int> iota(int n) {
  std::vector<int> v(static_cast<std::size_t>(n));
  std::iota(v.begin(), v.end(), 0);
  return v;
}

// One task at a time through one worker rank: submit, then wait for its result.
void BM_MpiRoundTrip(benchmark::State& state) {
  mproc::mpi::PoolExecutor ex(1);
  if (ex.submit(ident, -1).get() != -1) state.SkipWithError("warm-up task failed");
  int i = 0;
  for (auto _ : state) {
    if (ex.submit(ident, i).get() != i) {
      state.SkipWithError("wrong result");
      break;
    }
    ++i;
  }
}
BENCHMARK(BM_MpiRoundTrip)->UseRealTime()->Unit(benchmark::kMicrosecond);

// Submit a batch of trivial tasks to 2 worker ranks, then get them all
// (as mproc_bench's BM_ExecutorThroughput); second argument: tasks in flight
// per worker (0: adaptive, the default).
void BM_MpiThroughput(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0));
  mproc::mpi::PoolExecutor ex(mproc::mpi::PoolOptions{.max_workers = 2,
                                                      .max_inflight = static_cast<unsigned>(state.range(1))});
  (void)ex.map(ident, iota(100));  // warm
  std::vector<mproc::Future<int>> futures;
  futures.reserve(static_cast<std::size_t>(n));
  for (auto _ : state) {
    futures.clear();
    for (int i = 0; i < n; ++i) futures.push_back(ex.submit(ident, i));
    long sum = 0;
    for (auto& f : futures) sum += f.get();
    if (sum != static_cast<long>(n) * (n - 1) / 2) {
      state.SkipWithError("wrong results");
      break;
    }
  }
  state.SetItemsProcessed(state.iterations() * n);
}
BENCHMARK(BM_MpiThroughput)
    ->Args({10000, 0})  // adaptive (the default)
    ->Args({10000, 2})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

// map over trivial items, 2 worker ranks, chunksize 1 and 1000.
void BM_MpiMap(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0));
  const auto chunksize = static_cast<std::size_t>(state.range(1));
  mproc::mpi::PoolExecutor ex(2);
  const auto items = iota(n);
  for (auto _ : state) {
    auto out = ex.map(ident, items, std::nullopt, chunksize);
    if (out.size() != items.size() || out.back() != items.back()) {
      state.SkipWithError("wrong results");
      break;
    }
  }
  state.SetItemsProcessed(state.iterations() * n);
}
BENCHMARK(BM_MpiMap)->Args({20000, 1})->Args({200000, 1000})->UseRealTime()->Unit(benchmark::kMillisecond);

// The floor: Open MPI's 1-byte ping-pong between rank 0 and rank 1, on
// MPI_COMM_WORLD. Rank 1 echoes from inside a task (it is a worker); a zero
// byte ends the task.
constexpr int kPingTag = 77;
int pong_server(int) {
  int echoed = 0;
  for (;;) {
    unsigned char b = 0;
    MPI_Recv(&b, 1, MPI_BYTE, 0, kPingTag, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    if (b == 0) return echoed;
    MPI_Send(&b, 1, MPI_BYTE, 0, kPingTag, MPI_COMM_WORLD);
    ++echoed;
  }
}

void BM_RawMpiPingPong(benchmark::State& state) {
  mproc::mpi::PoolExecutor ex(1);
  auto server = ex.submit(pong_server, 0);
  long n = 0;
  for (auto _ : state) {
    unsigned char b = 1;
    MPI_Send(&b, 1, MPI_BYTE, 1, kPingTag, MPI_COMM_WORLD);
    MPI_Recv(&b, 1, MPI_BYTE, 1, kPingTag, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    ++n;
  }
  unsigned char stop = 0;
  MPI_Send(&stop, 1, MPI_BYTE, 1, kPingTag, MPI_COMM_WORLD);
  if (server.get() != n) state.SkipWithError("ping-pong count mismatch");
}
BENCHMARK(BM_RawMpiPingPong)->UseRealTime()->Unit(benchmark::kMicrosecond);

}  // namespace

int main(int argc, char** argv) {
  mproc::init(argc, argv);  // worker ranks serve in here
  if (!mproc::mpi::launched_under_mpi()) {
    std::fprintf(stderr, "run under MPI: mpirun -n 3 --oversubscribe %s\n", argv[0]);
    return 2;
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
