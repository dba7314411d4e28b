#!/usr/bin/env bash
# Fault soak: longhaul (release build) in front of a deliberately unreliable HTTP/1.0 keep-alive
# backend (soak/backend.py), driven by soak/client.py for a bounded time. Not part of `cargo test`.
#
#   soak/run.sh [--duration 300s|5m|60] [--threads N] [--seed N] [--keep]
#
# Prints requests sent, client-visible errors by cause, POSTs that reached the backend more than
# once (must be 0), and longhaul's RSS and open fds at start and end. Exit 0 when nothing
# unexpected happened. Every process it starts is stopped on exit. Loopback only.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
duration=300
threads=8
seed=""
keep=0

to_seconds() {
    python3 -c '
import re, sys
m = re.fullmatch(r"([0-9.]+)\s*(ms|s|m|h)?", sys.argv[1].strip())
if not m:
    sys.exit("bad duration: " + sys.argv[1])
n, unit = float(m.group(1)), m.group(2) or "s"
print("%g" % (n * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]))
' "$1"
}

while [ $# -gt 0 ]; do
    case "$1" in
        --duration) duration="$(to_seconds "$2")"; shift 2 ;;
        --duration=*) duration="$(to_seconds "${1#*=}")"; shift ;;
        --threads) threads="$2"; shift 2 ;;
        --seed) seed="$2"; shift 2 ;;
        --keep) keep=1; shift ;;
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

work="$(mktemp -d /tmp/longhaul-soak.XXXXXX)"
pids=()
cleanup() {
    local status=$?
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [ "$keep" = 1 ]; then
        echo "logs kept in $work" >&2
    else
        rm -rf "$work"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "building longhaul (release)..." >&2
(cd "$repo" && cargo build --release --quiet --bin longhaul)
bin="$repo/target/release/longhaul"

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
backend_port="$(free_port)"
proxy_port="$(free_port)"
admin_port="$(free_port)"

seed_args=()
[ -n "$seed" ] && seed_args=(--seed "$seed")

# SOAK_BACKEND_ARGS: extra backend.py options, e.g. "--restart-min 5 --restart-max 10".
# shellcheck disable=SC2086
python3 "$here/backend.py" --port "$backend_port" --events "$work/events.log" "${seed_args[@]}" \
    ${SOAK_BACKEND_ARGS:-} \
    2>"$work/backend.log" &
pids+=($!)

cat >"$work/proxy.toml" <<EOF
[server]
listen = "127.0.0.1:$proxy_port"

[admin]
listen = "127.0.0.1:$admin_port"

[log]
level = "warn"
access_log = false

[[upstream]]
name = "flaky"
servers = ["127.0.0.1:$backend_port"]
protocol = "http/1.0"
connect_timeout = "1s"
response_timeout = "5s"

[upstream.pool]
max_size = 16
min_idle = 2
idle_timeout = "30s"
wait_timeout = "2s"
EOF

"$bin" --config "$work/proxy.toml" 2>"$work/longhaul.log" &
longhaul_pid=$!
pids+=("$longhaul_pid")

for _ in $(seq 1 100); do
    if python3 - "$admin_port" <<'EOF' 2>/dev/null; then break; fi
import sys, urllib.request
urllib.request.urlopen("http://127.0.0.1:%s/healthz" % sys.argv[1], timeout=1).read()
EOF
    if ! kill -0 "$longhaul_pid" 2>/dev/null; then
        echo "longhaul exited early:" >&2
        cat "$work/longhaul.log" >&2
        exit 1
    fi
    sleep 0.1
done

echo "longhaul pid $longhaul_pid on 127.0.0.1:$proxy_port, backend on 127.0.0.1:$backend_port," \
    "running ${duration}s with $threads client threads" >&2
status=0
python3 "$here/client.py" --port "$proxy_port" --duration "$duration" --threads "$threads" \
    --events "$work/events.log" --pid "$longhaul_pid" --json "$work/summary.json" \
    "${seed_args[@]}" || status=$?

echo
echo "longhaul counters (admin /metrics):"
python3 - "$admin_port" <<'EOF' || true
import sys, urllib.request
text = urllib.request.urlopen("http://127.0.0.1:%s/metrics" % sys.argv[1], timeout=5).read().decode()
for line in text.splitlines():
    if line.startswith(("longhaul_upstream_retries_total", "longhaul_upstream_errors_total",
                        "longhaul_upstream_connections_opened_total",
                        "longhaul_upstream_connections_closed_total",
                        "longhaul_upstream_requests_total", "longhaul_requests_total")):
        print("  " + line)
EOF
if ! kill -0 "$longhaul_pid" 2>/dev/null; then
    echo "longhaul is no longer running:" >&2
    tail -20 "$work/longhaul.log" >&2
    status=1
fi
if grep -q "panicked" "$work/longhaul.log"; then
    echo "longhaul log has a panic:" >&2
    grep -A3 "panicked" "$work/longhaul.log" | head -20 >&2
    status=1
fi
exit "$status"
