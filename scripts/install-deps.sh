#!/usr/bin/env bash
# Installs every Debian package mproc needs to build, test, bench and run its
# examples. Idempotent: does nothing when all are present. Uses sudo when not root.
set -euo pipefail
PKGS=(build-essential cmake pkg-config libcereal-dev libfmt-dev libssl-dev
      libgtest-dev libgmock-dev libbenchmark-dev python3 procps
      libstb-dev python3-pil gnuplot-nox libopenmpi-dev openmpi-bin
      clang libclang-rt-14-dev)  # clang: the libFuzzer target (scripts/fuzz.sh)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
