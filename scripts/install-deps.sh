#!/usr/bin/env bash
# Installs every Debian package mproc needs to build, test, bench and run its
# examples. Idempotent: does nothing (and prints nothing) when all are present.
# Uses sudo when not root. Prints one line per step; apt's own output goes to
# a log that is shown only when a step fails.
set -euo pipefail
PKGS=(build-essential cmake pkg-config libcereal-dev libfmt-dev libssl-dev
      libgtest-dev libgmock-dev libbenchmark-dev python3 procps
      libvips-dev python3-pil gnuplot-nox libopenmpi-dev openmpi-bin doxygen
      clang libclang-rt-14-dev)  # clang: the libFuzzer targets (scripts/fuzz.sh)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
log=$(mktemp /tmp/mproc-install-deps.XXXXXX.log)
export DEBIAN_FRONTEND=noninteractive
step() {  # step "what" command...: one line, the log on failure
  local what=$1; shift
  printf 'install-deps: %s ... ' "$what"
  if "$@" >>"$log" 2>&1; then
    echo ok
  else
    echo "FAILED; apt's output ($log):"
    tail -n 40 "$log"
    exit 1
  fi
}
step "apt-get update" $SUDO apt-get update
step "installing ${#missing[@]} packages (${missing[*]})" \
  $SUDO apt-get install -y --no-install-recommends "${missing[@]}"
rm -f "$log"
