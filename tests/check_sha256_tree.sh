#!/usr/bin/env bash
# The sha256 example's output must be byte-identical to sha256sum's over a
# generated tree: empty files, files larger than its 1 MiB read size, names
# with spaces, a backslash, a newline and a carriage return.
set -euo pipefail
exe=$1
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
mkdir -p "$dir/a b/c" "$dir/d"
: > "$dir/empty"
: > "$dir/a b/also empty"
head -c 5242881 /dev/urandom > "$dir/a b/c/big.bin"          # 5 MiB + 1
head -c 1048576 /dev/urandom > "$dir/d/exactly one read"     # 1 MiB
for i in $(seq 1 40); do head -c $((i * 997)) /dev/urandom > "$dir/d/f$i"; done
printf 'x' > "$dir/d/back\\slash"
printf 'y' > "$dir/d/new
line"
printf 'z' > "$dir/d/carriage$(printf '\r')return"
expected=$(cd / && find "$dir" -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
actual=$("$exe" "$dir")
if [ "$expected" != "$actual" ]; then
  echo "sha256_tree output differs from sha256sum:" >&2
  diff <(echo "$expected") <(echo "$actual") >&2 || true
  exit 1
fi
echo "sha256_tree: $(echo "$actual" | wc -l) lines, byte-identical to sha256sum"
