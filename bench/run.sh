#!/usr/bin/env bash
# longhaul vs nginx vs HAProxy benchmark: one command.
#   bash bench/run.sh            full run (~15-25 min), writes bench/RESULTS.md
#   bash bench/run.sh --quick    small counts (~2-3 min)
# Other options go to bench/lib/harness.py (--only a5,b  --out FILE  --json-out FILE  --keep-tmp).
# Builds longhaul in release mode, installs nginx, haproxy, ab, wrk, valgrind and strace with apt-get when missing,
# and runs everything on 127.0.0.1 as the current user. Every process it starts is killed at exit.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/sbin"

no_build=0
args=()
for a in "$@"; do
  case "$a" in
    --no-build) no_build=1 ;;
    -h|--help) sed -n '2,7p' "$0"; echo "  --no-build   use target/release/longhaul as it is"; exit 0 ;;
    *) args+=("$a") ;;
  esac
done

missing=()
command -v nginx   >/dev/null 2>&1 || missing+=(nginx-light)
command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
command -v ab      >/dev/null 2>&1 || missing+=(apache2-utils)
command -v wrk     >/dev/null 2>&1 || missing+=(wrk)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
command -v valgrind >/dev/null 2>&1 || missing+=(valgrind)
command -v strace  >/dev/null 2>&1 || missing+=(strace)
if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing: ${missing[*]}"
  $sudo apt-get update -qq
  # policy-rc.d 101: the packages must not start system services (nginx on :80); we run our own.
  prc=/usr/sbin/policy-rc.d
  if [ ! -e "$prc" ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$prc" >/dev/null && $sudo chmod +x "$prc"
    trap '$sudo rm -f "$prc"' EXIT
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
  $sudo rm -f "$prc"
  trap - EXIT
fi

if [ "$no_build" -eq 0 ]; then
  cargo build --release --quiet --bin longhaul
fi

# File descriptors: 5,000 slow clients plus their upstream side.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

pidfile="$(mktemp -t longhaul-bench-pids.XXXXXX)"
cleanup() {
  # harness.py kills its children itself; this catches anything left if it was killed hard.
  if [ -s "$pidfile" ]; then
    while read -r pid; do
      kill -KILL -- "-$pid" 2>/dev/null || true
    done <"$pidfile"
  fi
  rm -f "$pidfile"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

python3 bench/lib/harness.py --pidfile "$pidfile" "${args[@]}"
