// Shared state: queue throughput and latency, a Value under its lock across
// two processes, and the raw futex ping-pong floor they are built on.
//
// Issue 4 target: queue messages/s >= 10x CPython's multiprocessing.Queue;
// lock round trips >= 10x.
#include <benchmark/benchmark.h>
#include <linux/futex.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <climits>
#include <cstdint>
#include <mutex>
#include <new>

#include "mproc/executor.hpp"
#include "mproc/process.hpp"
#include "mproc/queues.hpp"
#include "mproc/sharedctypes.hpp"
#include "mproc/synchronize.hpp"

namespace {

using namespace std::chrono_literals;

mproc::ProcessOptions forked() {
  mproc::ProcessOptions o;
  o.start_method = mproc::StartMethod::fork;
  return o;
}

// 1 producer -> 1 consumer, 8-byte messages: the parent consumes, a child
// produces until told to stop.
void BM_QueueThroughput(benchmark::State& state) {
  mproc::Queue<std::uint64_t> q(100000);
  mproc::Event stop;
  mproc::Process producer(forked(), [q, stop]() mutable {
    std::uint64_t i = 0;
    while (!stop.is_set()) {
      try {
        q.put(i, true, 10ms);
        ++i;
      } catch (const mproc::Full&) {
      }
    }
  });
  producer.start();
  std::uint64_t sum = 0;
  for (auto _ : state) sum += q.get();
  benchmark::DoNotOptimize(sum);
  stop.set();
  while (producer.is_alive())
    try {
      q.get(true, 1ms);
    } catch (const mproc::Empty&) {
    }
  producer.join();
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_QueueThroughput)->UseRealTime();

// put -> get -> put back: a round trip through two queues, the child idle
// (waiting in get) between messages.
void BM_QueuePingPong(benchmark::State& state) {
  mproc::Queue<std::uint64_t> to, from;
  mproc::Process echo(forked(), [to, from]() mutable {
    for (;;) {
      std::uint64_t v = to.get();
      if (v == ~std::uint64_t{0}) return;
      from.put(v);
    }
  });
  echo.start();
  std::uint64_t i = 0;
  for (auto _ : state) {
    to.put(++i);
    benchmark::DoNotOptimize(from.get());
  }
  to.put(~std::uint64_t{0});
  echo.join();
}
BENCHMARK(BM_QueuePingPong)->UseRealTime()->Unit(benchmark::kMicrosecond);

// Value += 1 under get_lock(), while a second process does the same.
void BM_ValueIncrementLocked2Proc(benchmark::State& state) {
  mproc::Value<long> v(0);
  mproc::Event stop;
  mproc::Process other(forked(), [v, stop]() mutable {
    while (!stop.is_set()) {
      std::scoped_lock g(v.get_lock());
      v.ref() += 1;
    }
  });
  other.start();
  long before = 0, after = 0;
  {
    std::scoped_lock g(v.get_lock());
    before = v.ref();
  }
  for (auto _ : state) {
    std::scoped_lock g(v.get_lock());
    v.ref() += 1;
  }
  {
    std::scoped_lock g(v.get_lock());
    after = v.ref();
  }
  stop.set();
  other.join();
  // Both processes' increments while the loop ran, as CPython's figure.
  state.SetItemsProcessed(after - before);
}
BENCHMARK(BM_ValueIncrementLocked2Proc)->UseRealTime();

// Uncontended: lock + add + unlock in one process (the robust mutex's cost).
void BM_ValueIncrementLockedUncontended(benchmark::State& state) {
  mproc::Value<long> v(0);
  for (auto _ : state) {
    std::scoped_lock g(v.get_lock());
    v.ref() += 1;
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_ValueIncrementLockedUncontended);

// A 64 MiB Array to a pool worker and one element back: only the handle
// (~40 bytes) crosses; the worker maps the caller's block.
double read_last(mproc::Array<double> a) { return a[a.size() - 1]; }
void BM_Array64MiBToWorker(benchmark::State& state) {
  mproc::Array<double> a((std::size_t{64} << 20) / sizeof(double), 1.0);
  mproc::ProcessPoolExecutor ex(mproc::PoolOptions{.max_workers = 1});
  ex.submit(read_last, a).get();  // warm: the worker is up
  double sum = 0;
  for (auto _ : state) sum += ex.submit(read_last, a).get();
  benchmark::DoNotOptimize(sum);
  ex.shutdown();
  // 64 MiB made available to the worker per iteration, for the comparison
  // with CPython's Pipe.send_bytes of the same size.
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(a.size() * sizeof(double)));
}
BENCHMARK(BM_Array64MiBToWorker)->UseRealTime()->Unit(benchmark::kMicrosecond);

// Floor: two processes hand a turn back and forth through a shared futex
// word (wait / wake syscalls, no spinning).
long futex(std::atomic<std::uint32_t>* w, int op, std::uint32_t val) {
  return ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(w), op, val, nullptr, nullptr, 0);
}
void BM_RawFutexPingPong(benchmark::State& state) {
  void* mem = ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) {
    state.SkipWithError("mmap failed");
    return;
  }
  auto* turn = new (mem) std::atomic<std::uint32_t>(0);  // even: parent's turn; odd: child's; ~0: stop
  pid_t pid = ::fork();
  if (pid == 0) {
    for (std::uint32_t expect = 1;; expect += 2) {
      std::uint32_t t;
      while ((t = turn->load()) != expect && t != ~0u) futex(turn, FUTEX_WAIT, t);
      if (t == ~0u) ::_exit(0);
      turn->store(expect + 1);
      futex(turn, FUTEX_WAKE, 1);
    }
  }
  std::uint32_t mine = 0;
  for (auto _ : state) {
    turn->store(mine + 1);
    futex(turn, FUTEX_WAKE, 1);
    std::uint32_t t;
    while ((t = turn->load()) != mine + 2) futex(turn, FUTEX_WAIT, t);
    mine += 2;
  }
  turn->store(~0u);
  futex(turn, FUTEX_WAKE, INT_MAX);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  ::munmap(mem, 4096);
}
BENCHMARK(BM_RawFutexPingPong)->UseRealTime()->Unit(benchmark::kMicrosecond);

}  // namespace
