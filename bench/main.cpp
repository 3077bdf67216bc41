// Benchmark main: mproc::init first (a spawned child re-enters main and runs
// its target inside init, never reaching Google Benchmark), then the suite.
#include <benchmark/benchmark.h>

#include "mproc/context.hpp"

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
