// The classic first multiprocessing program: four processes each sum the
// squares of 0..10^7, timed against doing the four sums in one process.
//
//   ./sum_squares [n]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "mproc/mproc.hpp"

namespace {

unsigned long long sum_squares(unsigned long long n) {
  unsigned long long total = 0;
  for (unsigned long long i = 0; i < n; ++i) total += i * i;
  return total;
}

// A child's target: a plain function, so any start method can run it; the
// Connection moved into it reaches the child under each of them.
void send_sum(unsigned long long n, mproc::Connection out) { out.send(sum_squares(n)); }

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

struct Timing {
  double one, many;
  bool agree;
};

Timing run(unsigned long long n, int workers) {
  auto t0 = std::chrono::steady_clock::now();
  unsigned long long expected = 0;
  for (int i = 0; i < workers; ++i) expected += sum_squares(n);
  const double sequential = seconds_since(t0);

  // Each child sends its sum back over its own Pipe.
  t0 = std::chrono::steady_clock::now();
  std::vector<mproc::Connection> results;
  std::vector<mproc::Process> children;
  for (int i = 0; i < workers; ++i) {
    auto [reader, writer] = mproc::Pipe(false);
    children.emplace_back(send_sum, n, std::move(writer));
    children.back().start();
    results.push_back(std::move(reader));
  }
  unsigned long long total = 0;
  for (auto& r : results) total += r.recv<unsigned long long>();
  for (auto& c : children) c.join();
  return {sequential, seconds_since(t0), total == expected};
}

}  // namespace

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  constexpr int kWorkers = 4;
  std::printf("sum of squares below n (mod 2^64), %d times: one process vs %d processes\n", kWorkers, kWorkers);
  std::printf("cpu_count() = %u, start method %s\n", mproc::cpu_count(),
              std::string(mproc::to_string(mproc::get_start_method())).c_str());
  // The tutorial's 10^7 takes C++ a few milliseconds, so process start-up
  // shows; 10^9 is enough work for the processes to pay off.
  std::vector<unsigned long long> sizes = {10'000'000ULL, 1'000'000'000ULL};
  if (argc > 1) sizes = {std::strtoull(argv[1], nullptr, 10)};
  bool ok = true;
  for (auto n : sizes) {
    Timing t = run(n, kWorkers);
    std::printf("  n = %-12llu one process %8.3f s   %d processes %8.3f s   speed-up %.2fx   %s\n", n, t.one,
                kWorkers, t.many, t.one / t.many, t.agree ? "results agree" : "RESULTS DIFFER");
    ok = ok && t.agree;
  }
  return ok ? 0 : 1;
}
