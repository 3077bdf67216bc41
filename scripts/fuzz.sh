#!/usr/bin/env bash
# Builds the libFuzzer target over the manager's frame decoder + request
# dispatcher with Debian's clang (ASan + UBSan) in build-fuzz/, then runs it
# for a bounded time over the committed corpus fuzz/corpus/manager.
#
#   scripts/fuzz.sh [seconds]        (default 30)
#
# New inputs the fuzzer finds go to build-fuzz/corpus (a scratch copy), so the
# committed corpus changes only when someone copies interesting ones back.
# A crash leaves crash-* in build-fuzz/ and exits non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_TO_RUN="${1:-30}"
./scripts/install-deps.sh  # clang and libclang-rt-14-dev among the rest
cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DCMAKE_CXX_COMPILER=clang++ -DMPROC_BUILD_FUZZ=ON -DMPROC_WITH_MPI=OFF \
      -DMPROC_BUILD_TESTS=OFF -DMPROC_BUILD_BENCH=OFF -DMPROC_BUILD_EXAMPLES=OFF >/dev/null
cmake --build build-fuzz -j "$(nproc)" --target fuzz_manager
mkdir -p build-fuzz/corpus
cp -n fuzz/corpus/manager/* build-fuzz/corpus/ 2>/dev/null || true
cd build-fuzz
./fuzz/fuzz_manager -max_total_time="$SECONDS_TO_RUN" -timeout=10 -rss_limit_mb=2048 \
    corpus ../fuzz/corpus/manager
