// Manager round trips and batched operations.
//
// Issue 5 targets (ratio to CPython's Manager on the same machine):
// - BM_ManagerDictSetGet/unix: one iteration = d[k] = v then d[k] (two round
//   trips); items_per_second counts set+get pairs, round_trips_per_s both.
//   Target >= 5x CPython's Manager dict set+get.
// - BM_ManagerDictUpdate100k: one batched update of 10^5 int -> int items
//   (one round trip); target >= 50x CPython setting the same items one by one.
// /tcp variants run over loopback TCP (the remote case) instead of the
// manager's default Unix socket.
#include <benchmark/benchmark.h>

#include <string>
#include <utility>
#include <vector>

#include "mproc/managers.hpp"

namespace {

mproc::Manager start_manager(bool tcp) {
  mproc::ManagerOptions o;
  if (tcp) o.address = mproc::Address::tcp("127.0.0.1", 0);
  mproc::Manager m(o);
  m.start();
  return m;
}

void BM_ManagerDictSetGet(benchmark::State& state) {
  mproc::Manager m = start_manager(state.range(0) != 0);
  auto d = m.dict<std::string, int>();
  const std::string key = "key";
  int i = 0;
  d.set(key, 0);  // the connection is open before timing
  for (auto _ : state) {
    d.set(key, ++i);
    auto v = d.get(key);
    benchmark::DoNotOptimize(v);
  }
  if (d.get(key) != i) state.SkipWithError("lost update");
  state.SetItemsProcessed(state.iterations());
  state.counters["round_trips_per_s"] =
      benchmark::Counter(static_cast<double>(state.iterations()) * 2, benchmark::Counter::kIsRate);
}
BENCHMARK(BM_ManagerDictSetGet)->Arg(0)->Arg(1)->ArgName("tcp")->UseRealTime();

void BM_ManagerDictUpdate100k(benchmark::State& state) {
  mproc::Manager m = start_manager(state.range(0) != 0);
  auto d = m.dict<int, int>();
  std::vector<std::pair<int, int>> items;
  items.reserve(100000);
  for (int i = 0; i < 100000; ++i) items.emplace_back(i, i);
  d.set(-1, -1);
  for (auto _ : state) {
    state.PauseTiming();
    d.clear();
    state.ResumeTiming();
    d.update(items);
  }
  if (d.size() != items.size()) state.SkipWithError("update lost items");
  state.SetItemsProcessed(state.iterations() * static_cast<std::int64_t>(items.size()));
}
BENCHMARK(BM_ManagerDictUpdate100k)->Arg(0)->Arg(1)->ArgName("tcp")->UseRealTime()->Unit(benchmark::kMillisecond);

// The item-by-item way (what CPython has to do), for the same 10^5 items
// would take long: 1000 items per iteration, reported per item.
void BM_ManagerDictSetItemByItem(benchmark::State& state) {
  mproc::Manager m = start_manager(false);
  auto d = m.dict<int, int>();
  d.set(-1, -1);
  for (auto _ : state) {
    for (int i = 0; i < 1000; ++i) d.set(i, i);
  }
  state.SetItemsProcessed(state.iterations() * 1000);
}
BENCHMARK(BM_ManagerDictSetItemByItem)->UseRealTime()->Unit(benchmark::kMillisecond);

// The same batch read back: items() of 10^5 entries in one round trip.
void BM_ManagerDictItems100k(benchmark::State& state) {
  mproc::Manager m = start_manager(false);
  auto d = m.dict<int, int>();
  std::vector<std::pair<int, int>> items;
  for (int i = 0; i < 100000; ++i) items.emplace_back(i, i);
  d.update(items);
  for (auto _ : state) {
    auto got = d.items();
    benchmark::DoNotOptimize(got);
  }
  state.SetItemsProcessed(state.iterations() * 100000);
}
BENCHMARK(BM_ManagerDictItems100k)->UseRealTime()->Unit(benchmark::kMillisecond);

}  // namespace
