#!/usr/bin/env python3
"""Issue #12's small-device row: a backend that serves 4 connections at a time (backend-sim
--max-connections 4: a fifth waits in its accept queue until one of the four closes), `ab -n N
-c 50` HTTP/1.0 short connections, through longhaul with max_size 32 and adaptive on, with
max_size 4 set by hand (adaptive off), with max_size 32 and adaptive off, and through HAProxy
(maxconn 32, http-reuse always). A fresh backend for each target.

  python3 bench/lib/device.py [--n 20000] [--rounds 3] [--longhaul target/release/longhaul]

Each round measures every target once, starting one target later than the round before; the
table gives each target's median req/s, p50 and p99 over the rounds (ab's p99 moves by a few ms
between runs on this box), then every round's req/s and p99. Every process it starts is stopped at exit. Loopback only.
"""

import argparse
import atexit
import os
import shutil
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import clients  # noqa: E402
import harness  # noqa: E402

DEVICE_CONNECTIONS = 4

# name: (max_size, [upstream.pool] lines)
LONGHAUL = {
    "longhaul-adaptive-32": (32, "adaptive = true\n"),
    "longhaul-fixed-4": (DEVICE_CONNECTIONS, "adaptive = false\n"),
    "longhaul-fixed-32": (32, "adaptive = false\n"),
}


def start_device(procs, longhaul):
    port = harness.free_port()
    argv = [longhaul, "backend-sim", "--listen", "127.0.0.1:%d" % port, "--conn-cost", "1ms",
            "--keepalive-timeout", "5s", "--body-size", "1024", "--protocol", "http/1.0",
            "--max-connections", str(DEVICE_CONNECTIONS)]
    p = procs.start("device-%d" % port, argv)
    harness.wait_port(port, p)
    return p, port


def start_target(procs, tmp, name, longhaul, backend_port):
    port = harness.free_port()
    if name in LONGHAUL:
        pool, extra = LONGHAUL[name]
        conf = harness.longhaul_config(tmp, port, harness.free_port(), backend_port, pool,
                                       pool_extra=extra)
        p = procs.start("%s-%d" % (name, port), [longhaul, "--config", conf])
    else:
        conf = harness.haproxy_config(tmp, port, backend_port, 32)
        p = procs.start("haproxy-%d" % port, ["haproxy", "-db", "-f", conf])
    harness.wait_port(port, p)
    return p, port


def measure(procs, tmp, name, longhaul, n):
    device, backend_port = start_device(procs, longhaul)
    try:
        proxy, port = start_target(procs, tmp, name, longhaul, backend_port)
        try:
            return clients.run_ab(port, n, 50, tmpdir=tmp)
        finally:
            procs.stop(proxy)
    finally:
        procs.stop(device)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000, help="requests per target")
    ap.add_argument("--rounds", type=int, default=3, help="measurements of each target, interleaved")
    ap.add_argument("--longhaul", default=os.path.join(harness.REPO, "target", "release", "longhaul"))
    ap.add_argument("--targets", default=",".join(list(LONGHAUL) + ["haproxy"]))
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    tmp = tempfile.mkdtemp(prefix="longhaul-device-")
    procs = harness.Procs(tmp, os.path.join(tmp, "pids"))
    # Run last to first: the processes are stopped before their directory goes.
    atexit.register(shutil.rmtree, tmp, True)
    atexit.register(procs.stop_all)
    names = args.targets.split(",")
    runs = {name: [] for name in names}
    for r in range(args.rounds):
        # Each round starts one target later, so a drift of the box does not favour one target.
        for name in names[r % len(names):] + names[:r % len(names)]:
            m = measure(procs, tmp, name, args.longhaul, args.n)
            runs[name].append(m)
            print("round %d, %s: %.0f req/s, p99 %.0f ms, %d errors" % (
                r + 1, name, m["rps"], m["p99_ms"], m["errors"]), file=sys.stderr)
    print("| %d-connection device, ab -n %d -c 50, HTTP/1.0, median of %d | req/s | p50 ms | p99 ms | errors (all rounds) |"
          % (DEVICE_CONNECTIONS, args.n, args.rounds))
    print("| --- | --- | --- | --- | --- |")
    for name in names:
        med = lambda key: statistics.median([m[key] for m in runs[name]])  # noqa: E731
        print("| %s | %.0f | %.0f | %.0f | %d |" % (
            name, med("rps"), med("p50_ms"), med("p99_ms"), sum(m["errors"] for m in runs[name])))
    print()
    print("| round | " + " | ".join("%s req/s, p99 ms" % name for name in names) + " |")
    print("| --- |" + " --- |" * len(names))
    for r in range(args.rounds):
        print("| %d | " % (r + 1) + " | ".join(
            "%.0f, %.0f" % (runs[name][r]["rps"], runs[name][r]["p99_ms"]) for name in names) + " |")


if __name__ == "__main__":
    main()
