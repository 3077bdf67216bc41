#!/usr/bin/env bash
# Builds the libFuzzer targets with Debian's clang (ASan + UBSan) in
# build-fuzz/ and runs each for a bounded time over its committed corpus:
#   fuzz_manager     the manager's frame decoder + request dispatcher (half the time)
#   fuzz_connection  the Connection frame decoder against a model, with a
#                    timeout in mid-stream (a quarter)
#   fuzz_serialize   the serializer over the common types (a quarter)
#
#   scripts/fuzz.sh [seconds]        (total, default 60)
#
# New inputs the fuzzers find go to build-fuzz/corpus-<name> (scratch
# copies), so the committed corpora change only when someone copies
# interesting ones back. A crash leaves crash-* in build-fuzz/ and exits
# non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."
TOTAL="${1:-60}"
./scripts/install-deps.sh  # clang and libclang-rt-14-dev among the rest
cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DCMAKE_CXX_COMPILER=clang++ -DMPROC_BUILD_FUZZ=ON -DMPROC_WITH_MPI=OFF \
      -DMPROC_BUILD_TESTS=OFF -DMPROC_BUILD_BENCH=OFF -DMPROC_BUILD_EXAMPLES=OFF >/dev/null
cmake --build build-fuzz -j "$(nproc)" --target fuzz_manager fuzz_connection fuzz_serialize
cd build-fuzz
# run NAME SECONDS [libFuzzer flags...]
run() {
  local name="$1" seconds="$2"
  shift 2
  mkdir -p "corpus-$name"
  cp -n "../fuzz/corpus/$name"/* "corpus-$name/" 2>/dev/null || true
  echo "== fuzz_$name: $seconds s"
  "./fuzz/fuzz_$name" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 "$@" \
      "corpus-$name" "../fuzz/corpus/$name"
}
run manager $((TOTAL / 2))
# The stream is at most 64 KiB, so a receive buffer reserves at most 64 x
# that (4 MiB); one sized by an announced length (up to 1 GiB) is caught.
run connection $((TOTAL / 4)) -malloc_limit_mb=8
run serialize $((TOTAL / 4)) -malloc_limit_mb=64
