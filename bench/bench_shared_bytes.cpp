// SharedBytes through Pool(2).map (issue 13 item 2): the items are sealed
// memfd buffers, so only ~40-byte handles travel; the worker maps the buffer
// (no copy) and returns it (echo: the parent finds its own mapping again) or
// a new buffer it filled (fresh: the parent maps the worker's). Same shape
// as BM_PoolMapBulk (bench_bulk.cpp): 128 MiB of items a map, chunksize 1,
// bytes counted one way. CPython's analogue is bytes through Pool.map
// (python_baseline.py pool_map_bulk_echo_*).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "mproc/pool.hpp"
#include "mproc/shared_bytes.hpp"

namespace shared_bytes_bench {
mproc::SharedBytes echo(mproc::SharedBytes b) { return b; }
// A new buffer of the same size, its first and last bytes copied (the work
// a task would do is not what is measured).
mproc::SharedBytes fresh(mproc::SharedBytes b) {
  auto out = mproc::SharedBytes::create(b.size());
  auto w = out.writable();
  w.front() = b.bytes().front();
  w.back() = b.bytes().back();
  return out;
}
}  // namespace shared_bytes_bench

void BM_PoolMapSharedBytes(benchmark::State& state, bool echo) {
  const auto size = static_cast<std::size_t>(state.range(0));
  const std::size_t count = std::clamp<std::size_t>((std::size_t{128} << 20) / size, 8, 512);
  try {
    mproc::Pool pool(mproc::PoolOptions{.max_workers = 2});
    std::vector<mproc::SharedBytes> items;
    for (std::size_t i = 0; i < count; ++i) {
      auto b = mproc::SharedBytes::create(size);
      std::memset(b.writable().data(), 5, size);
      b.seal();
      items.push_back(std::move(b));
    }
    (void)pool.map(shared_bytes_bench::echo, items, 1);  // warm: workers up
    for (auto _ : state) {
      auto out = pool.map(echo ? shared_bytes_bench::echo : shared_bytes_bench::fresh, items, 1);
      if (out.size() != items.size() || out.back().size() != size || out.back().bytes().back() != std::byte{5}) {
        state.SkipWithError("wrong results");
        break;
      }
    }
    state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(items.size() * size));
  } catch (const std::exception& e) {
    state.SkipWithError((std::string("exception: ") + e.what()).c_str());
  }
}
BENCHMARK_CAPTURE(BM_PoolMapSharedBytes, echo, true)
    ->Arg(1 << 20)->Arg(16 << 20)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_PoolMapSharedBytes, fresh, false)
    ->Arg(1 << 20)->Arg(16 << 20)->UseRealTime()->Unit(benchmark::kMillisecond);
