// Pool and ProcessPoolExecutor hot paths, the same workloads as
// ../shared/anchors/python_mp_bench.py (CPython side: bench/python_baseline.py).
//
// Issue 3 targets (ratios to CPython on the same machine, bench/compare.py):
//   submit→result round trip, 1 worker ≥ 10× CPython's ProcessPoolExecutor
//   Pool.map trivial, chunksize 1 ≥ 10× CPython's Pool; default chunks ≥ 3×
//   executor throughput of trivial submits, 2 workers ≥ 10×
//   starting a pool of 2 workers within 2× of two bare forks (BM_BareFork)
#include <benchmark/benchmark.h>

#include <numeric>
#include <thread>
#include <vector>

#include "mproc/executor.hpp"
#include "mproc/pool.hpp"

namespace {

int ident(int x) { return x; }

mproc::PoolOptions workers(unsigned n) { return mproc::PoolOptions{.max_workers = n}; }

std::vector<int> iota(int n) {
  std::vector<int> v(static_cast<std::size_t>(n));
  std::iota(v.begin(), v.end(), 0);
  return v;
}

// One task at a time through one worker: submit, then wait for its result.
void BM_ExecutorRoundTrip(benchmark::State& state) {
  mproc::ProcessPoolExecutor ex(workers(1));
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
BENCHMARK(BM_ExecutorRoundTrip)->UseRealTime()->Unit(benchmark::kMicrosecond);

// Submit a batch of trivial tasks to 2 workers, then get them all.
void BM_ExecutorThroughput(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0));
  mproc::ProcessPoolExecutor ex(workers(2));
  (void)ex.map(ident, iota(100));  // warm: both workers up
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
BENCHMARK(BM_ExecutorThroughput)->Arg(10000)->UseRealTime()->Unit(benchmark::kMillisecond);

// Pool(2).map over trivial items; chunksize 0 is Python's default
// (len / (4 × workers)).
void BM_PoolMap(benchmark::State& state, int n, std::size_t chunksize) {
  mproc::Pool pool(workers(2));
  (void)pool.map(ident, iota(1000));  // warm, as the CPython side
  const auto items = iota(n);
  for (auto _ : state) {
    auto out = pool.map(ident, items, chunksize);
    if (out.size() != items.size() || out.back() != items.back()) {
      state.SkipWithError("wrong results");
      break;
    }
    benchmark::DoNotOptimize(out.data());
  }
  state.SetItemsProcessed(state.iterations() * n);
}
BENCHMARK_CAPTURE(BM_PoolMap, chunksize1, 20000, 1)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_PoolMap, chunksize10, 200000, 10)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_PoolMap, chunksize100, 200000, 100)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_PoolMap, default_chunks, 200000, 0)->UseRealTime()->Unit(benchmark::kMillisecond);

// Start a Pool of 2 workers (both forked: their pids are known) and shut it
// down (close + join: the workers exit and are reaped). The floor is two
// BM_BareFork (bench_process.cpp).
void BM_PoolStartShutdown(benchmark::State& state, mproc::StartMethod method) {
  for (auto _ : state) {
    mproc::Pool pool(mproc::PoolOptions{.max_workers = 2, .start_method = method});
    while (pool.worker_pids().size() < 2) std::this_thread::yield();
    pool.close();
    pool.join();
  }
}
BENCHMARK_CAPTURE(BM_PoolStartShutdown, fork, mproc::StartMethod::fork)
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_PoolStartShutdown, forkserver, mproc::StartMethod::forkserver)
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

}  // namespace
