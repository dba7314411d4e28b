#!/usr/bin/env python3
"""Load driver and judge for the longhaul fault soak.

A pool of threads sends mixed GET/POST requests to longhaul for a bounded time, one HTTP/1.0
connection per request, every request carrying a unique `X-Soak-Id` (POSTs also carry it in
the body). Then it reads the backend's event log (soak/backend.py) and prints a summary:
requests sent, client-visible errors by cause, POSTs that reached the backend more than once,
and longhaul's RSS and open fds at start and end. Exit status 0 when no POST was duplicated,
no response was crossed and no error was UNEXPECTED (see classify); 1 otherwise.
Python 3 standard library only.
"""

import argparse
import bisect
import collections
import json
import os
import random
import socket
import sys
import threading
import time

SENT = collections.defaultdict(int)  # worker -> requests sent so far (progress lines)
RESTART_GRACE = 0.5  # seconds after the backend is back that still count as "restarting"


def proc_stats(pid):
    rss_kb = None
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss_kb = int(line.split()[1])
        fds = len(os.listdir("/proc/%d/fd" % pid))
    except OSError:
        return None, None
    return rss_kb, fds


def error_cause(text):
    """A short name for the cause in a longhaul error body."""
    for needle, name in (
        ("ejected or unreachable", "ejected"),
        ("connect failed", "connect_failed"),
        ("connect timed out", "connect_timeout"),
        ("closed or reset", "closed_or_reset"),
        ("no response head", "response_timeout"),
        ("pool exhausted", "pool_exhausted"),
        ("invalid response", "invalid_response"),
    ):
        if needle in text:
            return name
    return "other"


def one_request(port, method, rid, rng):
    """Returns (kind, status) where kind is "ok" or an error kind."""
    n = rng.randint(0, 9999)
    if method == "GET":
        body = b""
        head = "GET /item/%d?id=%s HTTP/1.0\r\nHost: soak.test\r\nX-Soak-Id: %s\r\n\r\n" % (
            n,
            rid,
            rid,
        )
    else:
        body = ("id=%s&" % rid).encode() + b"p" * rng.randint(0, 2048)
        head = (
            "POST /orders/%d HTTP/1.0\r\nHost: soak.test\r\nX-Soak-Id: %s\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: %d\r\n\r\n"
            % (n, rid, len(body))
        )
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
    except ConnectionRefusedError:
        return "connect_refused", None
    except socket.timeout:
        return "connect_timeout", None
    except OSError as e:
        return "connect_error_%s" % (e.errno,), None
    try:
        s.settimeout(30)
        s.sendall(head.encode() + body)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except ConnectionResetError:
        return "conn_reset", None
    except BrokenPipeError:
        return "broken_pipe", None
    except socket.timeout:
        return "read_timeout", None
    except OSError as e:
        return "io_error_%s" % (e.errno,), None
    finally:
        s.close()
    if not data:
        return "empty_response", None
    head_bytes, sep, payload = data.partition(b"\r\n\r\n")
    if not sep:
        return "incomplete_head", None
    lines = head_bytes.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split(" ")[1])
    except (IndexError, ValueError):
        return "bad_status_line", None
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    if "content-length" in headers and int(headers["content-length"]) != len(payload):
        return "truncated_body", status
    if status != 200:
        # longhaul's error bodies say why on their second line.
        why = payload.decode("latin-1").split("\n")
        return "status_%d/%s" % (status, error_cause(why[1] if len(why) > 1 else "")), status
    # The response must be the one for this request: a crossed response is the worst bug.
    expect = ("%s " % method).encode()
    if headers.get("x-soak-id") != rid or not payload.startswith(expect) or (
        b" id=%s " % rid.encode()
    ) not in payload:
        return "crossed_response", status
    return "ok", status


def worker(args, wid, deadline, results, lock):
    rng = random.Random(args.seed * 1000 + wid if args.seed is not None else None)
    local = []
    i = 0
    while time.time() < deadline:
        i += 1
        rid = "w%d-%d" % (wid, i)
        method = "POST" if rng.random() < args.post_ratio else "GET"
        t0 = time.time()
        kind, status = one_request(args.port, method, rid, rng)
        t1 = time.time()
        local.append((t0, t1, method, rid, kind, status))
        SENT[wid] = i
        pause = rng.uniform(0, 2 * args.think) if args.think > 0 else 0
        if kind != "ok":
            pause += 0.02  # do not spin on fast failures while the backend is down
        if pause:
            time.sleep(pause)
    with lock:
        results.extend(local)


def read_events(path):
    windows = []
    arrivals = collections.defaultdict(list)  # id -> [(t, method, seq)]
    aborts = collections.defaultdict(list)  # id -> [(t, kind, seq)]
    closes = []  # times the backend closed a connection on its own (idle or request limit)
    down_at = None
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) < 2:
                continue
            t, kind = float(parts[0]), parts[1]
            if kind == "down":
                down_at = t
            elif kind == "up" and down_at is not None:
                windows.append((down_at, t))
                down_at = None
            elif kind in ("get", "post"):
                arrivals[parts[2]].append((t, kind, int(parts[3])))
            elif kind in ("reset", "drop"):
                aborts[parts[2]].append((t, kind, int(parts[3])))
            elif kind in ("idle_close", "idle_reset", "last_close"):
                closes.append(t)
    if down_at is not None:
        windows.append((down_at, float("inf")))
    closes.sort()
    return windows, arrivals, aborts, closes


def closed_during(closes, t0, t1):
    """Whether the backend closed some connection on its own while this request was open."""
    i = bisect.bisect_left(closes, t0 - 0.05)
    return i < len(closes) and closes[i] <= t1 + 0.05


EXPECTED = "expected"
AFTER_OUTAGE = "after-outage"
UNEXPECTED = "UNEXPECTED"


def classify(rec, windows, arrivals, aborts, closes):
    """Why a failed request failed: (cause, verdict).

    expected: the fault hit that very request, or the backend was down (restarting) while it ran;
    after-outage: the backend was back but longhaul still had its only server ejected (passive
        ejection outlives the outage by up to the ejection time); not a backend-down error, so
        reported apart;
    UNEXPECTED: anything else (a GET that failed outside a fault, a crossed response, ...).
    """
    t0, t1, method, rid, kind, status = rec
    if kind == "crossed_response":
        return "BUG: response belongs to another request", UNEXPECTED
    restarting = any(t0 <= up + RESTART_GRACE and t1 >= down for down, up in windows)
    last_up = max((up for _, up in windows if up <= t0), default=None)
    reached = arrivals.get(rid, [])
    aborted = aborts.get(rid, [])
    last_aborted = bool(aborted) and (not reached or aborted[-1][0] >= reached[-1][0])
    if restarting:
        return "backend restarting (down, or back < %.1f s)" % RESTART_GRACE, EXPECTED
    if last_aborted:
        # The fault hit this very request on the backend (reset or close before answering).
        if method == "POST":
            return "POST aborted by the backend after it was read", EXPECTED
        if len(reached) == 1 and reached[0][2] > 1:
            return "GET aborted on a reused connection and not retried", UNEXPECTED
        return "GET aborted by the backend on a fresh connection", EXPECTED
    if kind.endswith("/ejected") and last_up is not None and t0 - last_up < 30:
        return "server still ejected %.0f-%.0f s after the backend came back" % (
            int(t0 - last_up),
            int(t0 - last_up) + 1,
        ), AFTER_OUTAGE
    if method == "POST" and reached and kind.startswith("status_502"):
        return "POST written, connection died before the answer", EXPECTED
    if method == "POST" and not reached and kind.startswith("status_502"):
        if closed_during(closes, t0, t1):
            # Sent on a pooled connection the backend was closing at that moment: longhaul
            # cannot know whether it was read, so it must not resend it.
            return "POST written as the backend closed that connection", EXPECTED
        return "POST 502 that never reached the backend", UNEXPECTED
    return "unexplained %s error" % method, UNEXPECTED


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True, help="longhaul's listen port")
    p.add_argument("--duration", type=float, default=300)
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--post-ratio", type=float, default=0.3)
    p.add_argument("--think", type=float, default=0.005, help="mean pause between requests (s)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--events", required=True, help="the backend's event log")
    p.add_argument("--pid", type=int, required=True, help="longhaul's pid")
    p.add_argument("--json", help="also write the summary here as JSON")
    args = p.parse_args()

    start_rss, start_fds = proc_stats(args.pid)
    samples = [(0.0, start_rss, start_fds)]
    results, lock = [], threading.Lock()
    began = time.time()
    deadline = began + args.duration
    threads = [
        threading.Thread(target=worker, args=(args, w, deadline, results, lock), daemon=True)
        for w in range(args.threads)
    ]
    for t in threads:
        t.start()
    next_sample = began + 30
    while any(t.is_alive() for t in threads):
        time.sleep(0.5)
        if time.time() >= next_sample:
            rss, fds = proc_stats(args.pid)
            samples.append((time.time() - began, rss, fds))
            print(
                "  t=%4.0fs  sent=%d  rss=%s kB  fds=%s" % (time.time() - began, sum(SENT.values()), rss, fds),
                file=sys.stderr,
                flush=True,
            )
            next_sample += 30
    for t in threads:
        t.join()
    elapsed = time.time() - began
    end_rss, end_fds = proc_stats(args.pid)
    time.sleep(0.5)  # let the backend's log catch up
    windows, arrivals, aborts, closes = read_events(args.events)

    by_method = collections.Counter(r[2] for r in results)
    ok = collections.Counter(r[2] for r in results if r[4] == "ok")
    errors_by_kind = collections.Counter((r[2], r[4]) for r in results if r[4] != "ok")
    causes = collections.Counter()
    unexpected = []
    for r in results:
        if r[4] == "ok":
            continue
        cause, verdict = classify(r, windows, arrivals, aborts, closes)
        causes[(r[2], r[4], cause, verdict)] += 1
        if verdict == UNEXPECTED:
            unexpected.append((r, cause))
    post_ids = {r[3] for r in results if r[2] == "POST"}
    dup_posts = {rid: len(a) for rid, a in arrivals.items() if rid in post_ids and len(a) > 1}
    get_retried = sum(1 for r in results if r[2] == "GET" and len(arrivals.get(r[3], [])) > 1)
    post_reached = sum(1 for rid in post_ids if arrivals.get(rid))
    resets = sum(1 for a in aborts.values() for x in a if x[1] == "reset")
    drops = sum(1 for a in aborts.values() for x in a if x[1] == "drop")

    out = []
    w = out.append
    w("longhaul fault soak: %.0f s, %d client threads, POST ratio %.2f" % (elapsed, args.threads, args.post_ratio))
    w("")
    w("requests sent:            %d (%.0f/s)  GET %d, POST %d" % (len(results), len(results) / elapsed, by_method["GET"], by_method["POST"]))
    w("succeeded:                %d  GET %d, POST %d" % (sum(ok.values()), ok["GET"], ok["POST"]))
    w("client-visible errors:    %d" % sum(errors_by_kind.values()))
    for (method, kind), n in sorted(errors_by_kind.items()):
        w("  %-5s %-28s %d" % (method, kind, n))
    w("errors by cause (expected: the fault hit that request, or the backend was down;")
    w("                 after-outage: backend back, its only server still ejected by longhaul):")
    order = {EXPECTED: 0, AFTER_OUTAGE: 1, UNEXPECTED: 2}
    for (method, kind, cause, verdict), n in sorted(causes.items(), key=lambda x: (order[x[0][3]], x[0])):
        w("  %-12s %-4s %-26s %-52s %d" % (verdict, method, kind, cause, n))
    if not causes:
        w("  (none)")
    w("")
    w("backend faults injected:  restarts %d (down %.1f s in all), request resets %d, request drops %d"
      % (len(windows), sum(min(up, time.time()) - down for down, up in windows), resets, drops))
    w("POSTs that reached the backend:          %d of %d" % (post_reached, len(post_ids)))
    w("POSTs that reached the backend >1 time:  %d%s" % (len(dup_posts), "" if not dup_posts else "  " + str(sorted(dup_posts.items())[:10])))
    w("GETs the backend saw more than once (longhaul retries): %d" % get_retried)
    w("")
    w("longhaul RSS:  start %s kB, end %s kB" % (start_rss, end_rss))
    w("longhaul fds:  start %s, end %s" % (start_fds, end_fds))
    w("samples (t, RSS kB, fds): %s" % ", ".join("%.0fs %s %s" % s for s in samples + [(elapsed, end_rss, end_fds)]))
    if unexpected:
        w("")
        w("first unexpected errors (t0, t1, method, id, kind, status, cause; backend events for the id):")
        for r, cause in unexpected[:20]:
            w("  %.3f %.3f %s %s %s %s  %s  arrivals=%s aborts=%s"
              % (r[0], r[1], r[2], r[3], r[4], r[5], cause, arrivals.get(r[3], []), aborts.get(r[3], [])))
    print("\n".join(out))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "sent": len(results),
                    "ok": sum(ok.values()),
                    "errors": {"%s %s" % k: v for k, v in errors_by_kind.items()},
                    "causes": [
                        {"method": m, "kind": k, "cause": c, "verdict": v, "count": n}
                        for (m, k, c, v), n in causes.items()
                    ],
                    "duplicate_posts": len(dup_posts),
                    "restarts": len(windows),
                    "rss_kb": [start_rss, end_rss],
                    "fds": [start_fds, end_fds],
                },
                f,
                indent=1,
            )
    bad = dup_posts or unexpected
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
