// A parallel histogram: four processes classify their share of 10^7
// pseudo-random numbers straight into one shared Array of bins (atomic adds,
// no lock, no result messages).
//
//   ./histogram
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "mproc/mproc.hpp"

namespace {

constexpr int kBins = 10;
constexpr long kSamples = 10'000'000;

void fill(mproc::Array<std::uint64_t> bins, unsigned seed, long n) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(5.0, 1.8);
  std::vector<std::uint64_t> local(kBins);  // count locally, publish once per chunk
  for (long i = 0; i < n; ++i) {
    double x = normal(rng);
    int b = x < 0 ? 0 : x >= kBins ? kBins - 1 : static_cast<int>(x);
    ++local[static_cast<std::size_t>(b)];
    if ((i & 0xffff) == 0 || i == n - 1) {
      for (std::size_t k = 0; k < kBins; ++k) bins.fetch_add(k, local[k]);
      std::fill(local.begin(), local.end(), 0);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  mproc::Array<std::uint64_t> bins(kBins, mproc::no_lock);
  std::vector<mproc::Process> workers;
  for (unsigned w = 0; w < 4; ++w) workers.emplace_back(fill, bins, 1000 + w, kSamples / 4);
  for (auto& p : workers) p.start();
  for (auto& p : workers) p.join();
  std::uint64_t total = 0;
  for (std::size_t b = 0; b < kBins; ++b) {
    total += bins[b];
    std::printf("[%zu,%zu) %9llu %s\n", b, b + 1, static_cast<unsigned long long>(bins[b]),
                std::string(bins[b] * 60 / static_cast<std::uint64_t>(kSamples / 4), '#').c_str());
  }
  std::printf("total %llu of %ld samples\n", static_cast<unsigned long long>(total), kSamples);
  return total == static_cast<std::uint64_t>(kSamples) ? 0 : 1;
}
