// Bulk data (issue 13): large Connection messages and Queue messages, beside
// the floors measured in this binary: memcpy bandwidth here, and (in
// bench_connection.cpp) a raw socketpair stream of 64 MiB.
//
// Targets: Connection.send_bytes 64 MiB >= 80% of BM_RawSocketStream64MiB;
// Queue 1 MiB messages >= 2 GB/s.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <string>
#include <utility>
#include <vector>

#include "mproc/connection.hpp"
#include "mproc/detail/archive.hpp"  // prefault_for_writing, for the fresh-result floor
#include "mproc/executor.hpp"
#include "mproc/pool.hpp"
#include "mproc/process.hpp"
#include "mproc/queues.hpp"

namespace {

constexpr std::size_t k64MiB = std::size_t{64} << 20;
constexpr std::size_t k1MiB = std::size_t{1} << 20;

mproc::ProcessOptions forked() {
  mproc::ProcessOptions o;
  o.start_method = mproc::StartMethod::fork;
  return o;
}

// Floor: memcpy of 64 MiB between two buffers already faulted in.
void BM_Memcpy64MiB(benchmark::State& state) {
  std::vector<std::byte> src(k64MiB, std::byte{3}), dst(k64MiB, std::byte{0});
  for (auto _ : state) {
    std::memcpy(dst.data(), src.data(), k64MiB);
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(k64MiB));
}
BENCHMARK(BM_Memcpy64MiB)->UseRealTime()->Unit(benchmark::kMillisecond);

// 64 MiB send_bytes to a forked child that receives into one reused buffer
// (recv_bytes_into, as the raw socketpair floor does) and acks with 1 byte.
// reuse=false: the child takes a fresh Bytes from recv_bytes() each time.
void BM_ConnectionSendBytes64MiB(benchmark::State& state, bool reuse) {
  try {
    auto ends = mproc::Pipe(true);
    mproc::Connection parent = std::move(ends.first), child = std::move(ends.second);
    mproc::Process p(forked(), [&parent, &child, reuse] {
      parent.close();
      std::vector<std::byte> buf(k64MiB);
      for (;;) {
        std::size_t n = 0;
        if (reuse) {
          n = child.recv_bytes_into(buf);
        } else {
          mproc::Bytes m = child.recv_bytes();
          n = m.size();
        }
        if (n == 0) return;
        child.send_bytes("k");
      }
    });
    p.start();
    child.close();
    std::vector<std::byte> data(k64MiB, std::byte{3});
    parent.send_bytes(data);  // warm-up
    (void)parent.recv_bytes();
    for (auto _ : state) {
      parent.send_bytes(data);
      mproc::Bytes ack = parent.recv_bytes();
      benchmark::DoNotOptimize(ack.data());
    }
    state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(k64MiB));
    parent.send_bytes(std::span<const std::byte>{});
    p.join();
  } catch (const std::exception& e) {
    state.SkipWithError((std::string("exception: ") + e.what()).c_str());
  }
}
BENCHMARK_CAPTURE(BM_ConnectionSendBytes64MiB, recv_into, true)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_ConnectionSendBytes64MiB, recv_bytes, false)->UseRealTime()->Unit(benchmark::kMillisecond);

// The threshold's measurement: one message of range(0) bytes and a 1-byte
// ack, through the stream (range(1) == 0) or shared memory (1); the child
// receives into a reused buffer.
void BM_ConnectionMessageBySize(benchmark::State& state) {
  const auto size = static_cast<std::size_t>(state.range(0));
  const bool bulk = state.range(1) != 0;
  try {
    auto ends = mproc::Pipe(true);
    mproc::Connection parent = std::move(ends.first), child = std::move(ends.second);
    parent.set_bulk_threshold(bulk ? 1 : SIZE_MAX);
    mproc::Process p(forked(), [&parent, &child, size] {
      parent.close();
      std::vector<std::byte> buf(size);
      while (child.recv_bytes_into(buf) != 0) child.send_bytes("k");
    });
    p.start();
    child.close();
    std::vector<std::byte> data(size, std::byte{3});
    for (auto _ : state) {
      parent.send_bytes(data);
      mproc::Bytes ack = parent.recv_bytes();
      benchmark::DoNotOptimize(ack.data());
    }
    state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(size));
    parent.send_bytes(std::span<const std::byte>{});
    p.join();
  } catch (const std::exception& e) {
    state.SkipWithError((std::string("exception: ") + e.what()).c_str());
  }
}
BENCHMARK(BM_ConnectionMessageBySize)
    ->ArgsProduct({{64 << 10, 128 << 10, 256 << 10, 1 << 20}, {0, 1}})
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

// 1 producer (a forked child) -> 1 consumer (this process), 1 MiB
// std::string messages through a Queue of at most 4 messages.
void BM_Queue1MiB(benchmark::State& state) {
  try {
    mproc::Queue<std::string> q(4);
    mproc::Process producer(forked(), [q]() mutable {
      const std::string msg(k1MiB, 'x');
      for (;;) q.put(msg);  // ends when the parent terminates it
    });
    producer.start();
    std::size_t total = 0;
    for (auto _ : state) total += q.get().size();
    benchmark::DoNotOptimize(total);
    producer.terminate();
    producer.join();
    state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(k1MiB));
  } catch (const std::exception& e) {
    state.SkipWithError((std::string("exception: ") + e.what()).c_str());
  }
}
BENCHMARK(BM_Queue1MiB)->UseRealTime()->Unit(benchmark::kMicrosecond);

}  // namespace

// Floor for an echo's results: one process, no IPC, making what a map's
// caller must make for its results: `count` fresh std::vectors of `size`
// bytes (128 MiB, as BM_PoolMapBulk), each prefaulted in one batch by the
// codec's own prefault_for_writing (huge pages from 4 MiB, then
// MADV_POPULATE_WRITE) and filled by memcpy, then all freed. Where
// first-touching fresh memory is dear (a VM: ~9 µs a 4 KiB page here, even
// in one batch), this, not memcpy, bounds any library whose results are new
// vectors, CPython's bytes included.
void BM_FreshResults(benchmark::State& state) {
  const auto size = static_cast<std::size_t>(state.range(0));
  const std::size_t count = std::clamp<std::size_t>((std::size_t{128} << 20) / size, 8, 512);
  const std::vector<unsigned char> src(size, 5);
  for (auto _ : state) {
    std::vector<std::vector<unsigned char>> out;
    out.reserve(count);
    for (std::size_t i = 0; i < count; ++i) {
      std::vector<unsigned char> v;
      v.reserve(size);
      mproc::detail::prefault_for_writing(v.data(), size);
      v.assign(src.begin(), src.end());
      out.push_back(std::move(v));
    }
    benchmark::DoNotOptimize(out.back().data());
  }
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(count * size));
}
BENCHMARK(BM_FreshResults)->Arg(1 << 20)->Arg(16 << 20)->UseRealTime()->Unit(benchmark::kMillisecond);

// ---- Pool with large items (issue 13) ---------------------------------------
// Pool(2).map over `count` items of `size` bytes, chunksize 1; the task
// returns a tiny checksum (args) or its item (echo). Bytes counted: the
// items' (one way), as CPython's side (python_baseline.py pool_map_bulk_*).
namespace bulk_pool {
using Item = std::vector<unsigned char>;
std::uint64_t sum_ends(Item b) {
  return b.size() + (b.empty() ? 0 : static_cast<std::uint64_t>(b.front()) + static_cast<std::uint64_t>(b.back()));
}
Item echo(Item b) { return b; }
}  // namespace bulk_pool

void BM_PoolMapBulk(benchmark::State& state, bool echo) {
  const auto size = static_cast<std::size_t>(state.range(0));
  // 128 MiB a map (at most 512 items, at least 8): 512 x 64 KiB, 128 x 1 MiB, 8 x 16 MiB.
  const std::size_t count = std::clamp<std::size_t>((std::size_t{128} << 20) / size, 8, 512);
  try {
    mproc::Pool pool(mproc::PoolOptions{.max_workers = 2});  // the default start method, as users get
    std::vector<bulk_pool::Item> items(count, bulk_pool::Item(size, 5));
    (void)pool.map(bulk_pool::sum_ends, items, 1);  // warm: workers up, arenas faulted in
    for (auto _ : state) {
      if (echo) {
        auto out = pool.map(bulk_pool::echo, items, 1);
        if (out.size() != items.size() || out.back().size() != size) {
          state.SkipWithError("wrong results");
          break;
        }
      } else {
        auto out = pool.map(bulk_pool::sum_ends, items, 1);
        if (out.size() != items.size() || out.back() != size + 10) {
          state.SkipWithError("wrong results");
          break;
        }
      }
    }
    state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(items.size() * size));
  } catch (const std::exception& e) {
    state.SkipWithError((std::string("exception: ") + e.what()).c_str());
  }
}
BENCHMARK_CAPTURE(BM_PoolMapBulk, args, false)
    ->Arg(64 << 10)->Arg(1 << 20)->Arg(16 << 20)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_PoolMapBulk, echo, true)
    ->Arg(64 << 10)->Arg(1 << 20)->Arg(16 << 20)->UseRealTime()->Unit(benchmark::kMillisecond);

// ProcessPoolExecutor(1).submit of a 16 MiB std::vector<std::uint32_t>; the
// task returns its sum. Bytes counted: the vector's.
std::uint64_t sum_u32(std::vector<std::uint32_t> v) {
  std::uint64_t s = 0;
  for (auto x : v) s += x;
  return s;
}
void BM_ExecutorSubmit16MiB(benchmark::State& state) {
  try {
    mproc::ProcessPoolExecutor ex(mproc::PoolOptions{.max_workers = 1});
    const std::vector<std::uint32_t> v(std::size_t{4} << 20, 1u);
    (void)ex.submit(sum_u32, v).get();
    for (auto _ : state) {
      if (ex.submit(sum_u32, v).get() != v.size()) {
        state.SkipWithError("wrong result");
        break;
      }
    }
    state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(v.size() * sizeof(std::uint32_t)));
  } catch (const std::exception& e) {
    state.SkipWithError((std::string("exception: ") + e.what()).c_str());
  }
}
BENCHMARK(BM_ExecutorSubmit16MiB)->UseRealTime()->Unit(benchmark::kMillisecond);
