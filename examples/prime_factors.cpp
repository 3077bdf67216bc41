// The classic concurrent.futures tutorial: the largest prime factor of six
// 12-digit numbers (100913_100913 … 100913_100931) with a
// ProcessPoolExecutor(4), results printed as they complete, timed against one
// process doing them in turn.
//
// C++ does the tutorial's six numbers in about a millisecond, so the pool's
// round trips show; a second round takes six 16-digit primes (about 30x the
// trial divisions each), where the processes pay off.
//
//   ./prime_factors [n ...]       (numbers of your own instead of both rounds)
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "mproc/mproc.hpp"

namespace {

using u64 = std::uint64_t;

// Trial division: strip each factor found; what is left above sqrt is prime.
u64 largest_prime_factor(u64 n) {
  if (n < 2) return n;
  u64 largest = 1;
  while (n % 2 == 0) {
    largest = 2;
    n /= 2;
  }
  for (u64 i = 3; i <= n / i; i += 2) {
    while (n % i == 0) {
      largest = i;
      n /= i;
    }
  }
  return n > 1 ? n : largest;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// One round: sequential, then the pool (already started), results as they come.
bool round(mproc::ProcessPoolExecutor& pool, const char* title, const std::vector<u64>& numbers) {
  std::printf("%s\n", title);
  auto t0 = std::chrono::steady_clock::now();
  std::vector<u64> expected;
  for (u64 n : numbers) expected.push_back(largest_prime_factor(n));
  const double sequential = seconds_since(t0);

  t0 = std::chrono::steady_clock::now();
  std::vector<mproc::Future<u64>> futures;
  for (u64 n : numbers) futures.push_back(pool.submit(largest_prime_factor, n));
  bool ok = true;
  for (const auto& f : mproc::as_completed(futures)) {
    std::size_t i = 0;
    while (futures[i].id() != f.id()) ++i;
    const u64 got = f.get();
    ok = ok && got == expected[i];
    std::printf("  %llu: largest prime factor %llu%s\n", static_cast<unsigned long long>(numbers[i]),
                static_cast<unsigned long long>(got), got == expected[i] ? "" : "  (WRONG)");
  }
  const double parallel = seconds_since(t0);
  std::printf("  one process %.4f s   pool of %u %.4f s   speed-up %.2fx\n", sequential, pool.max_workers(), parallel,
              sequential / parallel);
  return ok;
}

}  // namespace

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  auto t0 = std::chrono::steady_clock::now();
  mproc::ProcessPoolExecutor pool(mproc::PoolOptions{.max_workers = 4});
  (void)pool.submit(largest_prime_factor, u64{2}).get();  // the workers are up
  std::printf("ProcessPoolExecutor(4) started in %.1f ms (cpu_count() = %u)\n", seconds_since(t0) * 1e3,
              mproc::cpu_count());

  bool ok = true;
  if (argc > 1) {
    std::vector<u64> mine;
    for (int i = 1; i < argc; ++i) mine.push_back(std::strtoull(argv[i], nullptr, 10));
    ok = round(pool, "your numbers:", mine);
  } else {
    ok = round(pool, "the tutorial's six 12-digit numbers:",
               {100913100913ULL, 100913100917ULL, 100913100919ULL, 100913100921ULL, 100913100927ULL,
                100913100931ULL});
    ok = round(pool, "six 16-digit primes (more work per task):",
               {1009131009131027ULL, 1009131009131057ULL, 1009131009131173ULL, 1009131009131209ULL,
                1009131009131243ULL, 1009131009131321ULL}) &&
         ok;
  }
  return ok ? 0 : 1;
}
