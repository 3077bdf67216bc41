// The prime-factor tutorial (examples/prime_factors.cpp) across MPI ranks:
// the same submit / as_completed code, with mproc::mpi::PoolExecutor in place
// of ProcessPoolExecutor. Rank 0 runs main; mproc::init makes the other
// ranks workers.
//
//   mpirun -n 3 --oversubscribe build/examples/mpi_prime_factors
//   build/examples/mpi_prime_factors          (one rank: spawns its workers)
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "mproc/mpi.hpp"
#include "mproc/mproc.hpp"

namespace {

using u64 = std::uint64_t;

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

// The answer and the rank that found it.
struct Answer {
  u64 factor = 0;
  int rank = 0;
};
Answer factor_on_rank(u64 n) { return {largest_prime_factor(n), mproc::mpi::worker_info().rank}; }

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

bool round(mproc::mpi::PoolExecutor& pool, const char* title, const std::vector<u64>& numbers) {
  std::printf("%s\n", title);
  auto t0 = std::chrono::steady_clock::now();
  std::vector<u64> expected;
  for (u64 n : numbers) expected.push_back(largest_prime_factor(n));
  const double sequential = seconds_since(t0);

  t0 = std::chrono::steady_clock::now();
  std::vector<mproc::Future<Answer>> futures;
  for (u64 n : numbers) futures.push_back(pool.submit(factor_on_rank, n));
  bool ok = true;
  for (const auto& f : mproc::as_completed(futures)) {
    std::size_t i = 0;
    while (futures[i].id() != f.id()) ++i;
    const Answer a = f.get();
    ok = ok && a.factor == expected[i];
    std::printf("  %llu: largest prime factor %llu (rank %d)%s\n", static_cast<unsigned long long>(numbers[i]),
                static_cast<unsigned long long>(a.factor), a.rank, a.factor == expected[i] ? "" : "  (WRONG)");
  }
  const double parallel = seconds_since(t0);
  std::printf("  one process %.4f s   %u worker ranks %.4f s   speed-up %.2fx\n", sequential, pool.max_workers(),
              parallel, sequential / parallel);
  return ok;
}

}  // namespace

int main(int argc, char** argv) {
  mproc::init(argc, argv);  // ranks other than 0 serve tasks in here, then exit
  auto t0 = std::chrono::steady_clock::now();
  mproc::mpi::PoolExecutor pool;  // every other rank, or cpu_count() spawned
  std::printf("mpi::PoolExecutor with %u worker rank(s)%s ready in %.1f ms\n", pool.max_workers(),
              pool.spawned() ? " (spawned)" : "", seconds_since(t0) * 1e3);
  bool ok = round(pool, "the tutorial's six 12-digit numbers:",
                  {100913100913ULL, 100913100917ULL, 100913100919ULL, 100913100921ULL, 100913100927ULL,
                   100913100931ULL});
  ok = round(pool, "six 16-digit primes (more work per task):",
             {1009131009131027ULL, 1009131009131057ULL, 1009131009131173ULL, 1009131009131209ULL,
              1009131009131243ULL, 1009131009131321ULL}) &&
       ok;
  return ok ? 0 : 1;
}
