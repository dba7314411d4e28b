"""Load generators for the bench harness: wrappers around ab and wrk, and two stdlib clients
(stale-connection bursts, and many slow clients) that ab and wrk cannot express."""

import os
import random
import re
import selectors
import socket
import ssl
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor


def percentile(values, q):
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(q / 100.0 * len(s) + 0.5)) - 1))
    return s[k]


# ---------------------------------------------------------------- ab ---------------------------------

def run_ab(port, n, c, keepalive=False, tmpdir="/tmp", timeout=300, scheme="http"):
    """ab -n N -c C: HTTP/1.0, one connection per request (or -k). Returns a result dict.
    scheme "https": a full TLS handshake per connection (ab never resumes a session)."""
    csv = os.path.join(tmpdir, "ab-%d.csv" % os.getpid())
    argv = ["ab", "-r", "-q", "-s", "10", "-n", str(n), "-c", str(c), "-e", csv]
    if keepalive:
        argv.append("-k")
    argv.append("%s://127.0.0.1:%d/bench" % (scheme, port))
    t0 = time.monotonic()
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        out, rc = p.stdout + p.stderr, p.returncode
    except subprocess.TimeoutExpired:
        out, rc = "", -1
    elapsed = time.monotonic() - t0

    def num(pattern, default=0.0):
        m = re.search(pattern, out)
        return float(m.group(1)) if m else default

    complete = int(num(r"Complete requests:\s+(\d+)"))
    failed = int(num(r"Failed requests:\s+(\d+)"))
    non2xx = int(num(r"Non-2xx responses:\s+(\d+)"))
    pct = {}
    try:
        with open(csv) as f:
            for line in f.read().splitlines()[1:]:
                a, b = line.split(",")
                pct[int(float(a))] = float(b)
        os.unlink(csv)
    except (OSError, ValueError):
        pass
    res = {
        "sent": n,
        "completed": complete,
        "errors": failed + non2xx + (n - complete if rc != 0 else 0),
        "ok": max(0, complete - failed - non2xx),
        "rps": num(r"Requests per second:\s+([\d.]+)"),
        "p50_ms": pct.get(50, float("nan")),
        "p99_ms": pct.get(99, float("nan")),
        "elapsed_s": elapsed,
    }
    if rc != 0:
        res["note"] = "ab exit %d: %s" % (rc, out.strip().splitlines()[-1] if out.strip() else "")
    return res


# ---------------------------------------------------------------- wrk --------------------------------

WRK_LUA = """-- HTTP/1.0 keep-alive clients (legacy clients that do ask for keep-alive).
local req = "GET /bench HTTP/1.0\\r\\nHost: 127.0.0.1\\r\\nConnection: keep-alive\\r\\n\\r\\n"
request = function() return req end
"""


def _dur_ms(v, unit):
    return float(v) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def run_wrk(port, duration_s, conns, threads=2, tmpdir="/tmp", timeout=None):
    lua = os.path.join(tmpdir, "http10-keepalive.lua")
    with open(lua, "w") as f:
        f.write(WRK_LUA)
    argv = ["wrk", "--latency", "-t", str(threads), "-c", str(conns), "-d", "%ds" % duration_s,
            "--timeout", "5s", "-s", lua, "http://127.0.0.1:%d/bench" % port]
    t0 = time.monotonic()
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout or duration_s + 30)
        out, rc = p.stdout + p.stderr, p.returncode
    except subprocess.TimeoutExpired:
        out, rc = "", -1
    elapsed = time.monotonic() - t0
    m = re.search(r"(\d+) requests in", out)
    total = int(m.group(1)) if m else 0
    errs = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errs += sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    non2xx = int(m.group(1)) if m else 0
    lat = {}
    for q, v, unit in re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M):
        lat[int(q)] = _dur_ms(v, unit)
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    res = {
        "sent": total,
        "completed": total,
        "errors": errs + non2xx,
        "ok": max(0, total - non2xx),
        "rps": float(m.group(1)) if m else 0.0,
        "p50_ms": lat.get(50, float("nan")),
        "p99_ms": lat.get(99, float("nan")),
        "elapsed_s": elapsed,
    }
    if rc != 0:
        res["note"] = "wrk exit %d" % rc
    return res


# ---------------------------------------------------------------- raw HTTP/1.0 -----------------------

def http10_request(port, method, body=b"", timeout=5.0):
    """One request on its own connection, HTTP/1.0 without keep-alive. Returns (ok, latency_ms, why)."""
    t0 = time.monotonic()
    head = "%s /stale HTTP/1.0\r\nHost: 127.0.0.1\r\n" % method
    if method == "POST":
        head += "Content-Type: text/plain\r\nContent-Length: %d\r\n" % len(body)
    data = head.encode() + b"\r\n" + body
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(data)
            chunks = []
            while True:
                c = s.recv(65536)
                if not c:
                    break
                chunks.append(c)
    except OSError as e:
        return False, (time.monotonic() - t0) * 1000, type(e).__name__
    resp = b"".join(chunks)
    ms = (time.monotonic() - t0) * 1000
    head, sep, payload = resp.partition(b"\r\n\r\n")
    if not sep:
        return False, ms, "no response head"
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1", "replace")
    parts = status_line.split(" ")
    if len(parts) < 2 or parts[1] != "200":
        return False, ms, "status %s" % (parts[1] if len(parts) > 1 else "?")
    m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    if m and int(m.group(1)) != len(payload):
        return False, ms, "short body %d/%s" % (len(payload), m.group(1).decode())
    return True, ms, ""


def stale_bursts(port, bursts, per_burst, id_prefix, post_share=0.5, seed=1):
    """Bursts of short HTTP/1.0 requests every 185-215 ms (start to start), GETs and POSTs with unique
    ids. Pooled upstream connections sit idle for about the backend's 200 ms idle timeout between
    bursts, which is where a proxy meets connections the backend is closing."""
    rnd = random.Random(seed)
    lat, errors, why = [], 0, {}
    sent = {"GET": 0, "POST": 0}
    t_start = time.monotonic()
    next_t = t_start
    seq = 0
    with ThreadPoolExecutor(per_burst) as pool:
        for _ in range(bursts):
            jobs = []
            for _ in range(per_burst):
                seq += 1
                if rnd.random() < post_share:
                    body = ("%s-%d" % (id_prefix, seq)).encode()
                    jobs.append(pool.submit(http10_request, port, "POST", body))
                    sent["POST"] += 1
                else:
                    jobs.append(pool.submit(http10_request, port, "GET"))
                    sent["GET"] += 1
            for j in jobs:
                ok, ms, reason = j.result()
                lat.append(ms)
                if not ok:
                    errors += 1
                    why[reason] = why.get(reason, 0) + 1
            next_t += rnd.uniform(0.185, 0.215)
            delay = next_t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    elapsed = time.monotonic() - t_start
    total = sent["GET"] + sent["POST"]
    return {
        "sent": total,
        "sent_get": sent["GET"],
        "sent_post": sent["POST"],
        "completed": total,
        "errors": errors,
        "error_kinds": why,
        "ok": total - errors,
        "rps": total / elapsed if elapsed else 0.0,
        "p50_ms": percentile(lat, 50),
        "p99_ms": percentile(lat, 99),
        "elapsed_s": elapsed,
    }


# ---------------------------------------------------------------- slow clients -----------------------

def slow_clients(port, n, hold_s, measure, deadline_s=60.0):
    """Opens n connections, sends half a request head on each, holds them for hold_s, calls
    measure() (while all n are open and waiting), then completes every request and reads the
    responses. Returns (result dict, measure()'s value)."""
    conns = []
    connect_errors = 0
    t0 = time.monotonic()
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(5)
        try:
            s.connect(("127.0.0.1", port))
            s.sendall(b"GET /slow HTTP/1.0\r\nHost: 127.0.0.1\r\n")
            conns.append(s)
        except OSError:
            connect_errors += 1
            s.close()
    connect_s = time.monotonic() - t0
    time.sleep(hold_s)
    measured = measure()
    # Did the proxy keep them all? A closed one reads EOF without blocking.
    sel = selectors.DefaultSelector()
    for s in conns:
        s.setblocking(False)
        try:
            s.sendall(b"User-Agent: slow-client\r\n\r\n")
        except OSError:
            pass
        sel.register(s, selectors.EVENT_READ, [])
    ok = errors = 0
    why = {}
    lat = []
    t1 = time.monotonic()
    pending = len(conns)
    while pending and time.monotonic() - t1 < deadline_s:
        for key, _ in sel.select(timeout=1.0):
            s, bufs = key.fileobj, key.data
            try:
                c = s.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                c = b""
                bufs.append(b"\x00ERR")
            if c:
                bufs.append(c)
                continue
            resp = b"".join(bufs)
            if resp.startswith(b"HTTP/1.") and resp[9:12] == b"200":
                ok += 1
            else:
                errors += 1
                kind = ("status " + resp[9:12].decode("latin-1")) if resp.startswith(b"HTTP/1.") else (
                    "closed without response" if not resp else "bad response")
                why[kind] = why.get(kind, 0) + 1
            lat.append((time.monotonic() - t1) * 1000)
            sel.unregister(s)
            s.close()
            pending -= 1
    for key in list(sel.get_map().values()):
        errors += 1
        why["no answer by deadline"] = why.get("no answer by deadline", 0) + 1
        key.fileobj.close()
    if connect_errors:
        why["connect"] = connect_errors
    sel.close()
    return {
        "sent": n,
        "completed": ok + errors,
        "ok": ok,
        "errors": errors + connect_errors,
        "error_kinds": why,
        "connect_s": connect_s,
        "finish_s": time.monotonic() - t1,
        "rps": 0.0,
        "p50_ms": percentile(lat, 50),
        "p99_ms": percentile(lat, 99),
    }, measured


# ---------------------------------------------------------------- silent clients ---------------------

def silent_clients(port, n, measure, accepted, deadline_s=15.0):
    """Opens n connections that send nothing, waits (at most deadline_s) until accepted() says the
    proxy holds them all, calls measure() while they are open and silent, then closes them.
    Returns (result dict, measure()'s value)."""
    conns, connect_errors = [], 0
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(5)
            try:
                s.connect(("127.0.0.1", port))
                conns.append(s)
            except OSError:
                connect_errors += 1
                s.close()
        end = time.monotonic() + deadline_s
        while accepted() < len(conns) and time.monotonic() < end:
            time.sleep(0.05)
        held = accepted()
        time.sleep(0.5)  # the proxy builds its per-connection state right after accept
        value = measure()
        # Did the proxy keep them all open? One it closed reads EOF without blocking.
        closed = 0
        for s in conns:
            s.setblocking(False)
            try:
                if s.recv(1) == b"":
                    closed += 1
            except BlockingIOError:
                pass
            except OSError:
                closed += 1
    finally:
        for s in conns:
            s.close()
    return {"clients": n, "connected": len(conns), "accepted": held, "closed_by_proxy": closed,
            "errors": connect_errors + closed}, value


# ---------------------------------------------------------------- idle TLS clients -------------------

def idle_tls_clients(port, n, measure, deadline_s=15.0):
    """Opens n TLS connections (full handshake, the certificate is not checked) that then send
    nothing, calls measure() while they are open, then closes them. Returns (result dict,
    measure()'s value)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    conns, errors = [], 0
    end = time.monotonic() + deadline_s
    try:
        for _ in range(n):
            if time.monotonic() > end:
                errors += 1
                continue
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            try:
                conns.append(ctx.wrap_socket(s, server_hostname="localhost"))
            except OSError:
                errors += 1
                s.close()
        time.sleep(0.5)  # let every proxy settle its per-connection state
        value = measure()
        closed = 0
        for s in conns:
            s.setblocking(False)
            try:
                if s.recv(1) == b"":
                    closed += 1
            except (ssl.SSLWantReadError, BlockingIOError):
                pass
            except OSError:
                closed += 1
    finally:
        for s in conns:
            s.close()
    return {"clients": n, "connected": len(conns), "accepted": len(conns), "closed_by_proxy": closed,
            "errors": errors + closed}, value


# ---------------------------------------------------------------- TLS session reuse -----------------

def tls_resume_clients(port, n, deadline_s=60.0):
    """n short HTTPS requests (GET /bench HTTP/1.0, a new TLS connection each), every one offering
    the session (ticket) the previous connection got, as a client with a session cache does.
    Counts, on the client side, how many handshakes the server resumed."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    ok = errors = resumed = offered = 0
    session = None
    end = time.monotonic() + deadline_s
    for _ in range(n):
        if time.monotonic() > end:
            errors += 1
            continue
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as s:
                    offered += session is not None
                    s.sendall(b"GET /bench HTTP/1.0\r\nHost: localhost\r\n\r\n")
                    data = b""
                    while True:  # to EOF: the TLS 1.3 tickets arrive with (before) the response
                        chunk = s.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                    resumed += s.session_reused
                    session = s.session
                    if data.startswith(b"HTTP/1.") and b" 200 " in data.split(b"\r\n", 1)[0]:
                        ok += 1
                    else:
                        errors += 1
        except OSError:
            errors += 1
    return {"sent": n, "ok": ok, "errors": errors, "offered": offered, "resumed": resumed}
