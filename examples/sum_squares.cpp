// The classic first multiprocessing program: four processes each sum the
// squares of 0..10^7, timed against doing the four sums in one process.
//
//   ./sum_squares [n]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "mproc/mproc.hpp"

namespace {

unsigned long long sum_squares(unsigned long long n) {
  unsigned long long total = 0;
  for (unsigned long long i = 0; i < n; ++i) total += i * i;
  return total;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  const unsigned long long n = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 10'000'000ULL;
  constexpr int kWorkers = 4;

  auto t0 = std::chrono::steady_clock::now();
  unsigned long long expected = 0;
  for (int i = 0; i < kWorkers; ++i) expected += sum_squares(n);
  const double sequential = seconds_since(t0);

  // Each child sends its sum back over its own Pipe. Connections are
  // inherited, so these children use the fork start method.
  auto ctx = mproc::get_context(mproc::StartMethod::fork);
  t0 = std::chrono::steady_clock::now();
  std::vector<mproc::Connection> results;
  std::vector<mproc::Process> workers;
  for (int i = 0; i < kWorkers; ++i) {
    auto [reader, writer] = mproc::Pipe(false);
    workers.push_back(ctx.process([n, w = std::move(writer)]() mutable { w.send(sum_squares(n)); }));
    workers.back().start();
    results.push_back(std::move(reader));
  }
  unsigned long long total = 0;
  for (auto& r : results) total += r.recv<unsigned long long>();
  for (auto& w : workers) w.join();
  const double parallel = seconds_since(t0);

  std::printf("sum of squares below %llu, %d times (cpu_count() = %u)\n", n, kWorkers, mproc::cpu_count());
  std::printf("  one process  : %.3f s\n", sequential);
  std::printf("  %d processes  : %.3f s   speed-up %.2fx\n", kWorkers, parallel, sequential / parallel);
  std::printf("  results agree: %s\n", total == expected ? "yes" : "NO");
  return total == expected ? 0 : 1;
}
