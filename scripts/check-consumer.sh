#!/usr/bin/env bash
# Installs the built library into a scratch prefix and builds + runs a separate
# project against it with find_package(mproc CONFIG), together with every C++
# example of the README (each must compile and exit 0, as shown).
set -euo pipefail
build=${1:-build}
root=$(cd "$(dirname "$0")/.." && pwd)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
cmake --install "$build" --prefix "$scratch/prefix" >/dev/null
mkdir -p "$scratch/readme"
awk -v dir="$scratch/readme" '
  /^```cpp$/ { n++; out = sprintf("%s/readme_example_%d.cpp", dir, n); next }
  /^```$/    { out = ""; next }
  out != ""  { print > out }' "$root/README.md"
cmake -S "$root/tests/consumer" -B "$scratch/build" -DCMAKE_PREFIX_PATH="$scratch/prefix" \
      -DREADME_DIR="$scratch/readme" \
      -DCMAKE_CXX_FLAGS="${CONSUMER_CXX_FLAGS:--Wall -Wextra -Werror}" >/dev/null
cmake --build "$scratch/build" -j "$(nproc)" >/dev/null
"$scratch/build/consumer"
echo "consumer check: find_package(mproc CONFIG) install works"
for exe in "$scratch"/build/readme_example_*; do
  "$exe" || { echo "README example $(basename "$exe") exited with $?" >&2; exit 1; }
done
echo "consumer check: the README's $(ls "$scratch"/readme | wc -l) C++ examples compile and run"
