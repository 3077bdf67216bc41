#!/usr/bin/env bash
# Installs the built library into a scratch prefix and builds + runs a separate
# project against it with find_package(mproc CONFIG).
set -euo pipefail
build=${1:-build}
root=$(cd "$(dirname "$0")/.." && pwd)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
cmake --install "$build" --prefix "$scratch/prefix" >/dev/null
cmake -S "$root/tests/consumer" -B "$scratch/build" -DCMAKE_PREFIX_PATH="$scratch/prefix" \
      -DCMAKE_CXX_FLAGS="${CONSUMER_CXX_FLAGS:--Wall -Wextra -Werror}" >/dev/null
cmake --build "$scratch/build" >/dev/null
"$scratch/build/consumer"
echo "consumer check: find_package(mproc CONFIG) install works"
