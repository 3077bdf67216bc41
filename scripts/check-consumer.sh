#!/usr/bin/env bash
# Installs the built library into a scratch prefix and builds + runs a separate
# project against it with find_package(mproc CONFIG), together with every C++
# example of the README (each must compile and exit 0, as shown); then the same
# program through pkg-config (no CMake), and through FetchContent (mproc's
# source as a subproject: only the library is built, and configuring must not
# need Google Benchmark or GoogleTest, nor libvips, which only examples use: no
# example target may exist there).
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

pc_flags=$(PKG_CONFIG_PATH="$(dirname "$(find "$scratch/prefix" -name mproc.pc)")" \
           pkg-config --cflags --libs mproc)
c++ -std=c++20 ${CONSUMER_CXX_FLAGS:--Wall -Wextra -Werror} "$root/tests/consumer/main.cpp" \
    -o "$scratch/pkgconfig_consumer" $pc_flags
"$scratch/pkgconfig_consumer" >/dev/null
echo "consumer check: pkg-config --cflags --libs mproc builds and runs it"
cmake -S "$root/tests/consumer/fetchcontent" -B "$scratch/fetch" -DMPROC_SOURCE_DIR="$root" \
      -DMPROC_WITH_MPI=OFF \
      -DCMAKE_DISABLE_FIND_PACKAGE_benchmark=ON -DCMAKE_DISABLE_FIND_PACKAGE_GTest=ON \
      ${CMAKE_CXX_COMPILER_LAUNCHER:+-DCMAKE_CXX_COMPILER_LAUNCHER=$CMAKE_CXX_COMPILER_LAUNCHER} >/dev/null
cmake --build "$scratch/fetch" -j "$(nproc)" >/dev/null
"$scratch/fetch/consumer" >/dev/null
echo "consumer check: FetchContent builds only the library, without benchmark, gtest or libvips"
(cd "$build" && cpack -G DEB -B "$scratch/deb" >/dev/null)
deb=$(ls "$scratch"/deb/*.deb)
contents=$(dpkg-deb -c "$deb")
for f in ./usr/include/mproc/mproc.hpp ./usr/lib/libmproc.a ./usr/lib/pkgconfig/mproc.pc \
         ./usr/lib/cmake/mproc/mproc-config.cmake ./usr/share/doc/mproc/LICENSE; do
  grep -q " $f\$" <<<"$contents" || { echo "make package: $f missing from $(basename "$deb")" >&2; exit 1; }
done
echo "consumer check: make package gives $(basename "$deb") with headers, library, pkg-config, CMake config, LICENSE"
