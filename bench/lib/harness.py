#!/usr/bin/env python3
"""longhaul vs nginx vs HAProxy (and direct-to-backend) on loopback, interleaved round by round.

Started by bench/run.sh (which installs the tools and builds longhaul); usable alone:
  python3 bench/lib/harness.py [--quick] [--longhaul PATH] [--out bench/RESULTS.md]
Every process it starts runs in its own process group and is killed at exit (also on Ctrl-C).
"""

import argparse
import atexit
import datetime
import json
import os
import platform
import random
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import clients  # noqa: E402
import costs  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
BENCH = os.path.dirname(HERE)
REPO = os.path.dirname(BENCH)
CLK_TCK = os.sysconf("SC_CLK_TCK")
POOL = 32  # upstream connections per server, for all three proxies


def nofile_limit():
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)

# ------------------------------------------------------------------ processes -----------------------

class Procs:
    """Children, each in its own session (process group), killed at exit."""

    def __init__(self, tmp, pidfile):
        self.tmp, self.pidfile, self.live = tmp, pidfile, []

    def start(self, name, argv, env=None):
        log = open(os.path.join(self.tmp, name + ".log"), "ab")
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True, env=env)
        p.name, p.logpath = name, log.name
        log.close()
        self.live.append(p)
        with open(self.pidfile, "a") as f:
            f.write("%d\n" % p.pid)
        return p

    def stop(self, p, grace=5.0, sig=signal.SIGTERM, resend=None):
        """sig to the process group, up to grace seconds to exit (sent again every resend seconds if
        given), then SIGKILL to what is left."""
        end = time.monotonic() + grace
        while p.poll() is None and time.monotonic() < end:
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                break
            try:
                p.wait(max(0.0, min(resend or grace, end - time.monotonic())))
            except subprocess.TimeoutExpired:
                pass
        try:  # the group too: nginx workers, anything left behind
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            p.wait(2)
        except subprocess.TimeoutExpired:
            pass
        if p in self.live:
            self.live.remove(p)
        with open(self.pidfile, "w") as f:  # only live ones, so run.sh's trap kills nothing else
            f.writelines("%d\n" % q.pid for q in self.live)

    def stop_all(self):
        for p in list(self.live):
            self.stop(p, grace=2.0)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, timeout=15.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("%s exited with %s; see %s" % (proc.name, proc.returncode, proc.logpath))
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("port %d not listening after %.0fs (%s)" % (port, timeout, proc and proc.logpath))


def http_get(port, path, timeout=5.0):
    with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=timeout) as r:
        return r.read().decode()


def tree(root):
    """root and all its descendants."""
    children = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                st = f.read()
        except OSError:
            continue
        ppid = int(st.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(root):
    total = 0
    for pid in tree(root):
        try:
            with open("/proc/%d/stat" % pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
        except OSError:
            pass
    return total / CLK_TCK


def status_kib(root, key):
    total = 0
    for pid in tree(root):
        try:
            with open("/proc/%d/status" % pid) as f:
                for line in f:
                    if line.startswith(key + ":"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def reset_hwm(root):
    """Writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0), so each run's peak
    is its own."""
    for pid in tree(root):
        try:
            with open("/proc/%d/clear_refs" % pid, "w") as f:
                f.write("5")
        except OSError:
            pass


def established_to(port):
    """Established TCP connections whose remote end is 127.0.0.1:port (the proxy's upstream side)."""
    n = 0
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    rem, state = parts[2], parts[3]
                    if state == "01" and int(rem.rsplit(":", 1)[1], 16) == port:
                        n += 1
        except OSError:
            pass
    return n


# ------------------------------------------------------------------ backends ------------------------

class Backend:
    def __init__(self, procs, kind, longhaul, conn_cost="5ms", keepalive="5s", idle_close=0.2):
        self.port, self.stats_port = free_port(), free_port()
        self.kind = kind
        self.ca = None  # TLS to the backend: the CA file of a "sim-tls" backend
        if kind in ("sim", "sim-tls"):
            argv = [longhaul, "backend-sim", "--listen", "127.0.0.1:%d" % self.port,
                    "--stats-listen", "127.0.0.1:%d" % self.stats_port, "--conn-cost", conn_cost,
                    "--keepalive-timeout", keepalive, "--body-size", "1024", "--protocol", "http/1.0"]
            self.desc = "backend-sim conn-cost %s keepalive-timeout %s" % (conn_cost, keepalive)
            if kind == "sim-tls":  # TLS to the backend
                self.ca = os.path.join(procs.tmp, "backend-ca-%d.pem" % self.port)
                argv += ["--tls-ca-out", self.ca]
                self.desc += ", TLS (certificate for localhost generated at start)"
        else:
            argv = [sys.executable, os.path.join(HERE, "dup_backend.py"), "--listen",
                    "127.0.0.1:%d" % self.port, "--stats-listen", "127.0.0.1:%d" % self.stats_port,
                    "--idle-close", str(idle_close)]
            self.desc = "dup_backend.py idle-close %dms" % (idle_close * 1000)
        self.proc = procs.start("backend-%s-%d" % (kind, self.port), argv)
        wait_port(self.port, self.proc)
        wait_port(self.stats_port, self.proc)

    def stats(self):
        return json.loads(http_get(self.stats_port, "/stats"))


# ------------------------------------------------------------------ proxies -------------------------

def tls_files(tmp):
    """A self-signed P-256 certificate for localhost, its key, and both in one file (HAProxy)."""
    d = os.path.join(tmp, "tls")
    os.makedirs(d, exist_ok=True)
    cert, key, both = (os.path.join(d, n) for n in ("site.pem", "site.key", "site-and-key.pem"))
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "30", "-keyout", key, "-out", cert, "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost"], check=True, capture_output=True)
    with open(both, "w") as f:
        f.write(open(cert).read() + open(key).read())
    return {"cert": cert, "key": key, "both": both}


def longhaul_config(tmp, port, admin, backend_port, pool, idle_timeout="30s", one_loop=False, tls=None,
                    backend_ca=None, pool_extra=""):
    """tls: the files of tls_files(); then `port` is a tls_listen port and plain HTTP gets another.
    backend_ca: TLS to the backend, trusting that CA; pool_extra: more [upstream.pool] lines."""
    path = os.path.join(tmp, "longhaul-%d.toml" % port)
    listen = "listen = [\"127.0.0.1:{port}\"]".format(port=port)
    if tls:
        listen = ("listen = [\"127.0.0.1:{plain}\"]\ntls_listen = [\"127.0.0.1:{port}\"]".format(
            plain=free_port(), port=port))
    tls_table = ""
    if tls:
        tls_table = "\n[server.tls]\ncertificates = [{{ cert = \"{cert}\", key = \"{key}\" }}]\n".format(**tls)
    with open(path, "w") as f:
        f.write("""# generated by bench/lib/harness.py: shipped defaults except listeners, logging and the pool
[server]
{listen}
max_connections = 20000
{workers}{tls_table}
[admin]
listen = "127.0.0.1:{admin}"

[log]
level = "warn"
access_log = false

[[upstream]]
name = "legacy"
servers = ["127.0.0.1:{backend}"]
protocol = "http/1.0"

[upstream.pool]
max_size = {pool}
idle_timeout = "{idle}"
{extra}""".format(listen=listen, admin=admin, backend=backend_port, pool=pool, idle=idle_timeout,
           workers="workers = 1\n" if one_loop else "", tls_table=tls_table, extra=pool_extra))
        if backend_ca:  # TLS to the backend
            f.write('\n[upstream.tls]\nserver_name = "localhost"\nca = "%s"\n' % backend_ca)
    return path


def nginx_config(tmp, port, backend_port, pool, workers=2, idle_timeout="30s", one_loop=False, tls=None,
                 backend_tls=False):
    """one_loop: a single process (worker_processes 1, master_process off), so that valgrind, which
    does not follow children, sees the process that serves the requests."""
    if one_loop:
        workers = 1
    d = os.path.join(tmp, "nginx-%d" % port)
    os.makedirs(os.path.join(d, "tmp"), exist_ok=True)
    user = ""
    if os.geteuid() == 0:  # otherwise workers would drop to `nobody`; stay the current user
        user = "user root root;"
    per_worker = max(1, pool // workers)
    path = os.path.join(d, "nginx.conf")
    with open(path, "w") as f:
        f.write("""# generated by bench/lib/harness.py
{user}
worker_processes {workers};
worker_rlimit_nofile {nofile};
daemon off;
master_process {master};
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections {wconns}; }}
http {{
    access_log off;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    keepalive_timeout 60s;
    keepalive_requests 1000;
    client_header_timeout 10s;
    upstream legacy {{
        server 127.0.0.1:{backend};
        # keepalive = idle connections cached PER WORKER: {workers} x {per_worker} = {pool} in total.
        keepalive {per_worker};
        keepalive_requests 1000;
        keepalive_timeout {idle};
    }}
    server {{
        listen 127.0.0.1:{port} {ssl}backlog=4096;
        {ssl_files}
        location / {{
            proxy_pass {scheme}://legacy;{backend_tls}
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_connect_timeout 1s;
            proxy_read_timeout 30s;
            proxy_buffering on;
        }}
    }}
}}
""".format(user=user, workers=workers, master="off" if one_loop else "on", d=d, backend=backend_port, per_worker=per_worker, pool=pool,
           port=port, idle=idle_timeout, nofile=nofile_limit(), wconns=min(20000, nofile_limit() - 100),
           ssl="ssl " if tls else "",
           scheme="https" if backend_tls else "http",
           backend_tls=("\n            proxy_ssl_session_reuse on;\n            proxy_ssl_server_name on;"
                        "\n            proxy_ssl_name localhost;\n            proxy_ssl_verify off;")
           if backend_tls else "",
           ssl_files=("ssl_certificate {cert}; ssl_certificate_key {key}; ssl_protocols TLSv1.2 TLSv1.3;".format(**tls)
                      if tls else "")))
    return d, path


def haproxy_config(tmp, port, backend_port, pool, idle_timeout="30s", one_loop=False, tls=None,
                   backend_tls=False, connect_timeout="1s"):
    path = os.path.join(tmp, "haproxy-%d.cfg" % port)
    with open(path, "w") as f:
        f.write("""# generated by bench/lib/harness.py
global
    nbthread {nbthread}
    maxconn {maxconn}

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect {connect}
    timeout queue 500ms
    timeout client 60s
    timeout server 30s
    timeout http-request 10s
    timeout http-keep-alive 60s

frontend fe
    bind 127.0.0.1:{port}{ssl}
    default_backend legacy

backend legacy
    # maxconn = connections to the server, busy and idle (excess requests queue, like a pool wait);
    # pool-max-conn = idle connections kept for reuse.
    server s1 127.0.0.1:{backend} maxconn {pool} pool-max-conn {pool} pool-purge-delay {idle}{backend_tls}
""".format(port=port, backend=backend_port, pool=pool, idle=idle_timeout, nbthread=1 if one_loop else 2,
           backend_tls=" ssl verify none sni str(localhost)" if backend_tls else "", connect=connect_timeout,
           ssl=(" ssl crt %s alpn http/1.1" % tls["both"]) if tls else "",
           maxconn=min(20000, (nofile_limit() - 200) // 2)))
    return path


class Target:
    """One thing the clients hit: direct backend, or a proxy in front of it."""

    def __init__(self, name, port, proc=None, admin=None):
        self.name, self.port, self.proc, self.admin = name, port, proc, admin

    @property
    def pid(self):
        return self.proc.pid if self.proc else None


def start_targets(procs, tmp, longhaul, backend, names, pool=POOL, idle_timeout="30s", one_loop=False,
                  prefix=(), start_timeout=15.0, tls=None, longhaul_pool_extra="", haproxy_connect="1s"):
    """one_loop: one event loop each (longhaul `workers = 1`, HAProxy `nbthread 1`, nginx one process,
    no master). prefix: argv put in front of the proxy's own (valgrind). tls: tls_files(); each
    proxy terminates TLS on the target port with that certificate."""
    out = []
    for name in names:
        if name == "direct":
            out.append(Target("direct", backend.port))
            continue
        port = free_port()
        admin = None
        backend_tls = backend.ca is not None
        if name == "longhaul":
            admin = free_port()
            cfg = longhaul_config(tmp, port, admin, backend.port, pool, idle_timeout, one_loop, tls,
                                  backend.ca, longhaul_pool_extra)
            argv = [longhaul, "--config", cfg]
        elif name == "nginx":
            d, cfg = nginx_config(tmp, port, backend.port, pool, idle_timeout=idle_timeout, one_loop=one_loop,
                                  tls=tls, backend_tls=backend_tls)
            argv = ["nginx", "-p", d, "-e", os.path.join(d, "error.log"), "-c", cfg]
        elif name == "haproxy":
            cfg = haproxy_config(tmp, port, backend.port, pool, idle_timeout, one_loop, tls, backend_tls,
                                 haproxy_connect)
            argv = ["haproxy", "-db", "-f", cfg]
        else:
            raise ValueError(name)
        p = procs.start("%s-%d" % (name, port), list(prefix) + argv)
        wait_port(port, p, start_timeout)
        out.append(Target(name, port, p, admin))
    return out


# ------------------------------------------------------------------ measuring -----------------------

def measured(target, backend, load):
    """Runs load() against target and adds backend deltas, proxy CPU and peak RSS."""
    s0 = backend.stats()
    if target.pid:
        reset_hwm(target.pid)
        c0 = cpu_seconds(target.pid)
    res = load()
    time.sleep(0.1)  # let the backend count the last requests
    s1 = backend.stats()
    res["backend_conns"] = s1["connections_accepted"] - s0["connections_accepted"]
    res["backend_requests"] = s1["requests"] - s0["requests"]
    if backend.ca:  # TLS to the backend
        res["backend_tls_handshakes"] = s1["tls_handshakes"] - s0["tls_handshakes"]
        res["backend_tls_resumed"] = s1["tls_resumed"] - s0["tls_resumed"]
    if "duplicate_posts" in s1:
        res["duplicate_posts"] = s1["duplicate_posts"] - s0["duplicate_posts"]
        res["backend_posts"] = s1["posts"] - s0["posts"]
    if target.pid:
        res["cpu_s"] = cpu_seconds(target.pid) - c0
        res["hwm_kib"] = status_kib(target.pid, "VmHWM")
    return res


def longhaul_pools(target):
    try:
        return json.loads(http_get(target.admin, "/pools"))
    except Exception as e:  # noqa: BLE001 - informational only
        return {"error": str(e)}


def longhaul_metrics(target, prefixes=("longhaul_upstream_retries_total", "longhaul_upstream_errors_total",
                                       "longhaul_upstream_connections_closed_total",
                                       "longhaul_requests_total")):
    try:
        text = http_get(target.admin, "/metrics")
    except Exception as e:  # noqa: BLE001
        return ["(metrics unavailable: %s)" % e]
    return [l for l in text.splitlines() if l.startswith(prefixes) and not l.endswith(" 0")]


def summarize(runs):
    """Per-target aggregate over rounds."""
    agg = {}
    med = lambda k: statistics.median([r[k] for r in runs if r.get(k) == r.get(k)] or [float("nan")])
    total = lambda k: sum(r.get(k, 0) for r in runs)
    sent = total("sent")
    agg["rounds"] = len(runs)
    agg["sent"] = sent
    agg["ok"] = total("ok")
    agg["errors"] = total("errors")
    agg["rps"] = med("rps")
    agg["p50_ms"] = med("p50_ms")
    agg["p99_ms"] = med("p99_ms")
    agg["backend_conns"] = total("backend_conns")
    agg["backend_requests"] = total("backend_requests")
    agg["conns_per_req"] = agg["backend_conns"] / sent if sent else float("nan")
    agg["backend_req_per_sent"] = agg["backend_requests"] / sent if sent else float("nan")
    if all("cpu_s" in r for r in runs) and runs:
        agg["cpu_s"] = total("cpu_s")
        agg["req_per_cpu_s"] = agg["ok"] / agg["cpu_s"] if agg["cpu_s"] > 0 else float("nan")
        agg["peak_rss_mib"] = max(r["hwm_kib"] for r in runs) / 1024.0
    if runs and all("backend_tls_handshakes" in r for r in runs):  # TLS to the backend
        agg["backend_tls_handshakes"] = total("backend_tls_handshakes")
        agg["backend_tls_resumed"] = total("backend_tls_resumed")
        agg["tls_handshakes_per_req"] = agg["backend_tls_handshakes"] / sent if sent else float("nan")
    if any("duplicate_posts" in r for r in runs):
        agg["duplicate_posts"] = total("duplicate_posts")
        agg["sent_post"] = total("sent_post")
        agg["backend_posts"] = total("backend_posts")
    kinds = {}
    for r in runs:
        for k, v in r.get("error_kinds", {}).items():
            kinds[k] = kinds.get(k, 0) + v
    if kinds:
        agg["error_kinds"] = kinds
    notes = [r["note"] for r in runs if r.get("note")]
    if notes:
        agg["notes"] = notes
    return agg


# ------------------------------------------------------------------ scenarios -----------------------

def throughput_scenario(ctx, sc):
    """Start one backend per target (so one proxy's background connections never show in another's
    counts) and every target, warm up, then interleave the rounds."""
    procs, tmp, lh = ctx["procs"], ctx["tmp"], ctx["longhaul"]
    backends, targets = {}, []
    for name in sc["targets"]:
        b = Backend(procs, sc["backend"], lh, **sc.get("backend_args", {}))
        [t] = start_targets(procs, tmp, lh, b, [name], tls=ctx["tls"] if sc.get("tls") else None)
        backends[name] = b
        targets.append(t)
    log("  backend: %s (one per target); targets: %s" % (
        backends[targets[0].name].desc, ", ".join("%s:%d" % (t.name, t.port) for t in targets)))
    runs = {t.name: [] for t in targets}
    extra = {}
    try:
        for t in targets:  # warm-up, not counted: opens pools, faults pages in
            if sc["load"] != "stale":
                scheme = "https" if sc.get("tls") or direct_tls(sc, t) else "http"
                clients.run_ab(t.port, ctx["warmup"], 10, tmpdir=tmp, timeout=60, scheme=scheme)
        for rnd in range(sc["rounds"]):
            order = targets[rnd % len(targets):] + targets[:rnd % len(targets)]
            for t in order:
                load = make_load(ctx, sc, t, rnd)
                r = measured(t, backends[t.name], load)
                runs[t.name].append(r)
                log("  round %d %-8s %8.0f req/s p50 %6.2f ms p99 %7.2f ms be-conns %6d be-req %7d errors %d%s" % (
                    rnd + 1, t.name, r["rps"], r["p50_ms"], r["p99_ms"], r["backend_conns"],
                    r["backend_requests"], r["errors"],
                    (" dup-posts %d" % r["duplicate_posts"]) if "duplicate_posts" in r else ""))
        # With no traffic at all: does anything keep opening backend connections?
        s0 = {n: b.stats()["connections_accepted"] for n, b in backends.items()}
        time.sleep(ctx["idle_probe"])
        idle = {n: (b.stats()["connections_accepted"] - s0[n]) / ctx["idle_probe"] for n, b in backends.items()}
        for t in targets:
            if t.name == "longhaul":
                extra["longhaul_pools"] = longhaul_pools(t)
                extra["longhaul_metrics"] = longhaul_metrics(t)
    finally:
        for t in targets:
            if t.proc:
                procs.stop(t.proc)
        for b in backends.values():
            procs.stop(b.proc)
    summary = {k: summarize(v) for k, v in runs.items()}
    for k in summary:
        summary[k]["idle_conns_per_s"] = idle.get(k, float("nan"))
    return {"backend": backends[targets[0].name].desc, "targets": summary, "runs": runs, **extra}


def direct_tls(sc, t):
    """TLS to the backend: direct clients speak HTTPS to it (a full handshake each)."""
    return t.name == "direct" and sc.get("backend") == "sim-tls"


def make_load(ctx, sc, t, rnd):
    kind, tmp = sc["load"], ctx["tmp"]
    if kind == "ab":
        scheme = "https" if direct_tls(sc, t) else "http"
        return lambda: clients.run_ab(t.port, sc["n"], sc["c"], tmpdir=tmp, scheme=scheme)
    if kind == "ab-tls":
        return lambda: clients.run_ab(t.port, sc["n"], sc["c"], tmpdir=tmp, scheme="https")
    if kind == "ab-k":
        return lambda: clients.run_ab(t.port, sc["n"], sc["c"], keepalive=True, tmpdir=tmp)
    if kind == "wrk":
        return lambda: clients.run_wrk(t.port, sc["duration"], sc["c"], tmpdir=tmp)
    if kind == "stale":
        prefix = "%s-%s-%d-%d" % (sc["key"], t.name, rnd, random.randrange(1 << 30))
        return lambda: clients.stale_bursts(t.port, sc["bursts"], sc["per_burst"], prefix, seed=rnd)
    raise ValueError(kind)


def idle_pool_scenario(ctx, sc):
    """RSS of each proxy holding N idle pooled upstream connections."""
    procs, tmp, lh, n = ctx["procs"], ctx["tmp"], ctx["longhaul"], sc["n"]
    out = {}
    for name in sc["targets"]:
        backend = Backend(procs, sc.get("backend", "sim"), lh, conn_cost=sc.get("conn_cost", "1s"),
                          keepalive="120s")
        [t] = start_targets(procs, tmp, lh, backend, [name], pool=n, idle_timeout="120s",
                            longhaul_pool_extra=sc.get("longhaul_pool_extra", ""),
                            haproxy_connect=sc.get("haproxy_connect", "1s"))
        try:
            time.sleep(0.5)
            base = status_kib(t.pid, "VmRSS")
            # N concurrent clients while every new backend connection takes 1 s to answer: the
            # proxy has to open (about) N upstream connections, which then sit idle in its pool.
            r = clients.run_ab(t.port, n, n, tmpdir=tmp, timeout=120)
            time.sleep(1.0)
            held = established_to(backend.port)
            rss = status_kib(t.pid, "VmRSS")
            st = backend.stats()
            out[name] = {"idle_conns": held, "rss_base_mib": base / 1024.0, "rss_mib": rss / 1024.0,
                         "kib_per_conn": (rss - base) / held if held else float("nan"),
                         "backend_conns": st["connections_accepted"], "errors": r["errors"]}
            if name == "longhaul":
                out[name]["pools"] = longhaul_pools(t)
            log("  %-8s idle upstream conns %5d  RSS %7.1f MiB (base %.1f)  errors %d" % (
                name, held, rss / 1024.0, base / 1024.0, r["errors"]))
        finally:
            procs.stop(t.proc)
            procs.stop(backend.proc)
    return out


def slow_clients_scenario(ctx, sc):
    """RSS of each proxy with N concurrent clients that send their request head slowly."""
    procs, tmp, lh, n = ctx["procs"], ctx["tmp"], ctx["longhaul"], sc["n"]
    out = {}
    for name in sc["targets"]:
        backend = Backend(procs, "sim", lh, conn_cost="0ms", keepalive="60s")
        # All n requests complete at once. HAProxy's queue is unbounded by default and nginx opens
        # a connection per request; longhaul's max_waiters (1024) would answer the rest 503, so it
        # is raised to n: the row compares memory, not queue bounds.
        [t] = start_targets(procs, tmp, lh, backend, [name],
                            longhaul_pool_extra="max_waiters = %d\n" % n)
        try:
            time.sleep(0.5)
            base = status_kib(t.pid, "VmRSS")
            reset_hwm(t.pid)
            r, rss = clients.slow_clients(t.port, n, sc["hold"], lambda: status_kib(t.pid, "VmRSS"))
            hwm = status_kib(t.pid, "VmHWM")
            out[name] = {"clients": n, "rss_base_mib": base / 1024.0, "rss_held_mib": rss / 1024.0,
                         "kib_per_client": (rss - base) / n, "peak_rss_mib": hwm / 1024.0,
                         "ok": r["ok"], "errors": r["errors"], "finish_s": r["finish_s"],
                         "error_kinds": r["error_kinds"]}
            if name == "longhaul":
                out[name]["metrics"] = longhaul_metrics(t)
            log("  %-8s %d slow clients: RSS held %7.1f MiB (base %.1f) peak %.1f  ok %d errors %d %s" % (
                name, n, rss / 1024.0, base / 1024.0, hwm / 1024.0, r["ok"], r["errors"], r["error_kinds"] or ""))
        finally:
            procs.stop(t.proc)
            procs.stop(backend.proc)
    return out


def callgrind_scenario(ctx, sc):
    """User-space instructions per request, marginal: each proxy (one event loop) runs twice under
    callgrind, once for n_low and once for n_high requests; start-up, pool fill and shutdown are in
    both totals, so (total_high - total_low) / (n_high - n_low) is the cost of one more request."""
    procs, tmp, lh = ctx["procs"], ctx["tmp"], ctx["longhaul"]
    out = {}
    for name in sc["targets"]:
        backend = Backend(procs, "sim", lh, conn_cost="0ms", keepalive="60s")
        totals, errors = {}, 0
        try:
            for n in (sc["n_low"], sc["n_high"]):
                cg_out = os.path.join(tmp, "callgrind-%s-%s-%d.out" % (sc["key"], name, n))
                [t] = start_targets(procs, tmp, lh, backend, [name], one_loop=True,
                                    prefix=costs.valgrind_argv(cg_out), start_timeout=120.0)
                try:
                    r = clients.run_ab(t.port, n, sc["c"], keepalive=sc["keepalive"], tmpdir=tmp, timeout=600)
                    errors += r["errors"]
                finally:
                    # SIGTERM: longhaul drains and exits, nginx (no master) and HAProxy (-db) exit
                    # normally too, so valgrind writes the out file; SIGKILL would lose it. Sent again
                    # every 5 s: under valgrind, nginx once missed a SIGTERM that arrived while it
                    # was blocked in epoll_wait with no timer (all three ignore a repeated one).
                    procs.stop(t.proc, grace=120.0, resend=5.0)
                totals[n] = costs.callgrind_instructions(cg_out)
                log("  %-8s %5d requests: %s instructions (%s), errors %d" % (
                    name, n, totals[n], cg_out, r["errors"]))
        finally:
            procs.stop(backend.proc)
        lo, hi = totals.get(sc["n_low"]), totals.get(sc["n_high"])
        per_req = (hi - lo) / (sc["n_high"] - sc["n_low"]) if lo is not None and hi is not None else float("nan")
        out[name] = {"instructions": {str(k): v for k, v in totals.items()}, "per_request": per_req,
                     "errors": errors}
        log("  %-8s %.0f instructions per request" % (name, per_req))
    return out


def syscalls_scenario(ctx, sc):
    """Context switches and syscalls per request of each proxy in its bench setup, after a warm-up
    that fills the pools: loads with nothing attached (context switches from /proc), the same
    load with strace -c -f attached to all its processes and threads (calls and failures per
    syscall), and once more with strace -Z -f (which errno each failed call returned)."""
    procs, tmp, lh, n = ctx["procs"], ctx["tmp"], ctx["longhaul"], sc["n"]
    out = {}
    for name in sc["targets"]:
        backend = Backend(procs, "sim", lh, conn_cost="0ms", keepalive="60s")
        [t] = start_targets(procs, tmp, lh, backend, [name])
        try:
            clients.run_ab(t.port, ctx["warmup"], sc["c"], keepalive=sc["keepalive"], tmpdir=tmp, timeout=120)
            # Nonvoluntary switches depend on what else runs on the machine: the median of 3 loads.
            switches, errors, threads_gone = [], 0, 0
            for _ in range(sc["switch_loads"]):
                before = costs.context_switches(tree(t.pid))
                r1 = clients.run_ab(t.port, n, sc["c"], keepalive=sc["keepalive"], tmpdir=tmp, timeout=300)
                after = costs.context_switches(tree(t.pid))
                switches.append(costs.switches_between(before, after))
                threads_gone += len(set(before) - set(after))
                errors += r1["errors"]
            vol, nonvol = sorted(switches, key=sum)[len(switches) // 2]
            traced = {}
            for mode in ("count", "failed"):
                tracer = costs.Strace(procs, tmp, "%s-%s" % (sc["key"], name), tree(t.pid), mode)
                try:
                    r = clients.run_ab(t.port, n, sc["c"], keepalive=sc["keepalive"], tmpdir=tmp, timeout=600)
                finally:
                    traced[mode] = (tracer.finish(), r)
            summary, r2 = traced["count"]
            failed_by_errno, r3 = traced["failed"]
        finally:
            procs.stop(t.proc)
            procs.stop(backend.proc)
        out[name] = {"requests": n, "voluntary": vol, "nonvoluntary": nonvol,
                     "switches_per_request": (vol + nonvol) / n, "syscalls": summary["calls"],
                     "failed": summary["errors"], "by_call": summary["by_call"],
                     "syscalls_per_request": summary["calls"] / n, "failed_per_request": summary["errors"] / n,
                     "failed_by_errno": failed_by_errno, "switch_loads": switches, "threads_gone": threads_gone,
                     "errors": errors + r2["errors"] + r3["errors"]}
        log("  %-8s %.2f context switches/request (%d vol + %d nonvol), %.2f syscalls/request (%.2f failed), "
            "errors %d" % (name, (vol + nonvol) / n, vol, nonvol, summary["calls"] / n, summary["errors"] / n,
                           out[name]["errors"]))
    return out


def silent_clients_scenario(ctx, sc):
    """RSS of each proxy holding N client connections that connected and sent nothing."""
    procs, tmp, lh, n = ctx["procs"], ctx["tmp"], ctx["longhaul"], sc["n"]
    out = {}
    for name in sc["targets"]:
        backend = Backend(procs, "sim", lh, conn_cost="0ms", keepalive="60s")
        # All n requests complete at once. HAProxy's queue is unbounded by default and nginx opens
        # a connection per request; longhaul's max_waiters (1024) would answer the rest 503, so it
        # is raised to n: the row compares memory, not queue bounds.
        [t] = start_targets(procs, tmp, lh, backend, [name],
                            longhaul_pool_extra="max_waiters = %d\n" % n)
        try:
            time.sleep(0.5)
            base = status_kib(t.pid, "VmRSS")
            fds0 = costs.open_fds(tree(t.pid))
            r, rss = clients.silent_clients(t.port, n, lambda: status_kib(t.pid, "VmRSS"),
                                            lambda: costs.open_fds(tree(t.pid)) - fds0)
        finally:
            procs.stop(t.proc)
            procs.stop(backend.proc)
        out[name] = dict(r, rss_base_mib=base / 1024.0, rss_mib=rss / 1024.0, kib_per_conn=(rss - base) / n)
        log("  %-8s %d silent clients (%d accepted, %d closed by the proxy): RSS %.1f MiB (base %.1f), "
            "%.1f KiB each" % (name, n, r["accepted"], r["closed_by_proxy"], rss / 1024.0, base / 1024.0,
                               (rss - base) / n))
    return out


def idle_tls_clients_scenario(ctx, sc):
    """RSS of each proxy holding N TLS client connections that finished the handshake and sent
    nothing since."""
    procs, tmp, lh, n = ctx["procs"], ctx["tmp"], ctx["longhaul"], sc["n"]
    out = {}
    for name in sc["targets"]:
        backend = Backend(procs, "sim", lh, conn_cost="0ms", keepalive="60s")
        [t] = start_targets(procs, tmp, lh, backend, [name], tls=ctx["tls"])
        try:
            clients.run_ab(t.port, 100, 10, tmpdir=tmp, timeout=60, scheme="https")  # TLS state warm
            time.sleep(0.5)
            base = status_kib(t.pid, "VmRSS")
            r, rss = clients.idle_tls_clients(t.port, n, lambda: status_kib(t.pid, "VmRSS"))
        finally:
            procs.stop(t.proc)
            procs.stop(backend.proc)
        out[name] = dict(r, rss_base_mib=base / 1024.0, rss_mib=rss / 1024.0, kib_per_conn=(rss - base) / n)
        log("  %-8s %d idle TLS clients (%d connected, %d closed by the proxy): RSS %.1f MiB (base %.1f), "
            "%.1f KiB each" % (name, n, r["connected"], r["closed_by_proxy"], rss / 1024.0, base / 1024.0,
                               (rss - base) / n))
    return out


def client_handshakes(target):
    """longhaul's client-side TLS handshakes from /metrics: {(result, resumed): count}."""
    out = {}
    for line in http_get(target.admin, "/metrics").splitlines():
        if line.startswith("longhaul_tls_handshakes_total{") and 'side="client"' in line:
            labels = dict(kv.split("=", 1) for kv in line[line.index("{") + 1:line.index("}")].split(","))
            out[(labels["result"].strip('"'), labels["resumed"].strip('"'))] = float(line.rsplit(" ", 1)[1])
    return out


def tls_resume_scenario(ctx, sc):
    """Short HTTPS clients that offer the previous connection's session: how many are resumed.
    Counted by the client (every target) and, for longhaul, by its own metric."""
    procs, tmp, lh, n = ctx["procs"], ctx["tmp"], ctx["longhaul"], sc["n"]
    out = {}
    for name in sc["targets"]:
        backend = Backend(procs, "sim", lh, conn_cost="0ms", keepalive="60s")
        [t] = start_targets(procs, tmp, lh, backend, [name], tls=ctx["tls"])
        try:
            h0 = client_handshakes(t) if name == "longhaul" else None
            r = clients.tls_resume_clients(t.port, n)
            r["client_ratio"] = r["resumed"] / r["ok"] if r["ok"] else float("nan")
            if h0 is not None:
                h1 = client_handshakes(t)
                d = {k: h1.get(k, 0) - h0.get(k, 0) for k in h1}
                all_ok = d.get(("ok", "true"), 0) + d.get(("ok", "false"), 0)
                r["metric_resumed"], r["metric_ok"] = d.get(("ok", "true"), 0), all_ok
                r["metric_ratio"] = r["metric_resumed"] / all_ok if all_ok else float("nan")
        finally:
            procs.stop(t.proc)
            procs.stop(backend.proc)
        out[name] = r
        log("  %-8s %d requests, ok %d, errors %d, resumed %d (client ratio %.4f)%s" % (
            name, n, r["ok"], r["errors"], r["resumed"], r["client_ratio"],
            (" longhaul metric: %d of %d ok handshakes resumed (%.4f)" % (
                r["metric_resumed"], r["metric_ok"], r["metric_ratio"])) if "metric_ratio" in r else ""))
    return out


def scenarios(quick):
    q = quick
    proxies = ["longhaul", "nginx", "haproxy"]
    allt = ["direct"] + proxies
    rounds = 1 if q else 3
    n = 2000 if q else 20000
    sn = 500 if q else 2000
    return [
        dict(key="a5", title="(a) expensive connections, 5 ms each; ab -n %d -c 50, HTTP/1.0 short" % n,
             backend="sim", backend_args=dict(conn_cost="5ms"), load="ab", n=n, c=50, rounds=rounds,
             targets=allt, kind="throughput"),
        dict(key="a20", title="(a') expensive connections, 20 ms each; ab -n %d -c 50" % (n // 2),
             backend="sim", backend_args=dict(conn_cost="20ms"), load="ab", n=n // 2, c=50, rounds=rounds,
             targets=allt, kind="throughput"),
        dict(key="b", title="(b) fast backend (conn-cost 0); ab -n %d -c 50, HTTP/1.0 short" % n,
             backend="sim", backend_args=dict(conn_cost="0ms"), load="ab", n=n, c=50, rounds=rounds,
             targets=allt, kind="throughput"),
        dict(key="c", title="(c) fast backend, keep-alive clients; wrk -c 50 -d %ds, HTTP/1.0 + Connection: keep-alive"
             % (3 if q else 10), backend="sim", backend_args=dict(conn_cost="0ms"), load="wrk",
             duration=3 if q else 10, c=50, rounds=rounds, targets=allt, kind="throughput"),
        dict(key="d-sim", title="(d) stale connections: backend-sim closes idle after 200 ms; bursts every 185-215 ms",
             backend="sim", backend_args=dict(conn_cost="0ms", keepalive="200ms"), load="stale",
             bursts=15 if q else 100, per_burst=10 if q else 20, rounds=1 if q else 2, targets=allt,
             kind="throughput"),
        dict(key="d-dup", title="(d') stale connections: dup_backend.py closes idle after 200 ms, POST ids checked",
             backend="dup", backend_args=dict(idle_close=0.2), load="stale",
             bursts=15 if q else 100, per_burst=10 if q else 20, rounds=1 if q else 2, targets=allt,
             kind="throughput"),
        # Memory per pooled connection, so the pool is let open all N at once, as HAProxy's does:
        # the adaptive limit (the default) holds a one-shot burst against a backend whose new
        # connections take 1 s to answer to far fewer (it held 3 in the run at f74bfd5), and
        # max_connecting (4 by default) opens them 4 at a time, so about 5 % of the clients
        # waited past request_timeout (504) in the run at 39b14d3.
        dict(key="e-idle", title="(e) memory: RSS with %d idle pooled upstream connections" % (200 if q else 1000),
             n=200 if q else 1000, targets=proxies, kind="idle",
             longhaul_pool_extra="adaptive = false\nmax_connecting = %d\n" % (200 if q else 1000)),
        dict(key="e-slow", title="(e') memory: RSS with %d concurrent slow clients" % (1000 if q else 5000),
             n=1000 if q else 5000, hold=1.0 if q else 3.0, targets=proxies, kind="slow"),
        # Per-request and per-connection costs (bench/README.md, "Cost per request and per connection").
        dict(key="cg-short", title="(f) callgrind instructions per short HTTP/1.0 request, marginal "
             "(3000 - 1000 requests, ab -c 10), one event loop each", n_low=1000, n_high=3000, c=10,
             keepalive=False, targets=proxies, kind="callgrind", needs=["valgrind"]),
        dict(key="cg-ka", title="(f') callgrind instructions per keep-alive request (ab -k), marginal as (f)",
             n_low=1000, n_high=3000, c=10, keepalive=True, targets=proxies, kind="callgrind", needs=["valgrind"]),
        dict(key="sys-short", title="(g) syscalls and context switches per short request (ab -n %d -c 10)" % sn,
             n=sn, c=10, keepalive=False, switch_loads=3, targets=proxies, kind="syscalls", needs=["strace"]),
        dict(key="sys-ka", title="(g') syscalls and context switches per keep-alive request (ab -k -n %d -c 10)" % sn,
             n=sn, c=10, keepalive=True, switch_loads=3, targets=proxies, kind="syscalls", needs=["strace"]),
        dict(key="mem-pooled", title="(h) RSS per idle pooled upstream connection (%d held; the e-idle run)"
             % (200 if q else 1000), n=200 if q else 1000, targets=proxies, kind="pooled", same_as="e-idle"),
        dict(key="mem-client", title="(h') RSS per silent client connection (1000 connected, nothing sent)",
             n=1000, targets=proxies, kind="silent"),
        # TLS terminated by each proxy (bench/README.md, "TLS"); the backend stays plain HTTP/1.0.
        dict(key="tls-short", title="(i) short HTTPS clients, TLS terminated by the proxy (a full handshake per "
             "request), fast plain backend; ab -n %d -c 50 https://" % sn, backend="sim",
             backend_args=dict(conn_cost="0ms"), load="ab-tls", n=sn, c=50, rounds=rounds, tls=True,
             targets=proxies, kind="throughput", needs=["openssl"]),
        dict(key="mem-tls-client", title="(i') RSS per idle TLS client connection (1000 handshaken, nothing sent)",
             n=1000, targets=proxies, kind="tls-idle", needs=["openssl"]),
        # TLS to the backend (bench/README.md, "TLS to the backend"): plain short clients to the
        # proxies, a TLS backend-sim that counts its handshakes.
        dict(key="tls-upstream", title="(j) TLS backend (backend-sim over TLS, conn-cost 0); ab -n %d -c 50, plain "
             "HTTP/1.0 short clients to the proxies, HTTPS (a full handshake each) direct" % n,
             backend="sim-tls", backend_args=dict(conn_cost="0ms"), load="ab", n=n, c=50, rounds=rounds,
             targets=allt, kind="throughput"),
        # TLS on both sides: the main case, short HTTPS clients (a full handshake each) to
        # a proxy that speaks TLS to the backend; direct = the same clients straight to the backend.
        dict(key="tls-both", title="(j*) short HTTPS clients (a full handshake each) -> proxy -> TLS backend "
             "(backend-sim over TLS, conn-cost 0); ab -n %d -c 50 https://" % sn,
             backend="sim-tls", backend_args=dict(conn_cost="0ms"), load="ab-tls", n=sn, c=50, rounds=rounds,
             tls=True, targets=allt, kind="throughput", needs=["openssl"]),
        dict(key="mem-tls-pooled", title="(j') RSS per idle pooled upstream TLS connection (%d held)"
             % (200 if q else 1000), n=200 if q else 1000, backend="sim-tls", targets=["longhaul", "haproxy"],
             kind="idle",
             # Each handshake waits conn-cost and holds a max_connecting slot: open them all at once.
             # HAProxy's `timeout connect` covers the TLS handshake: 1,000 at once take longer than
             # the usual 1 s on a busy machine (it then retried and held almost none), hence 10 s.
             conn_cost="500ms", haproxy_connect="10s",
             longhaul_pool_extra="max_connecting = %d\nadaptive = false\n" % (200 if q else 1000)),
        dict(key="tls-resume", title="(j'') short HTTPS clients offering the previous connection's session "
             "(%d requests, one at a time, Python ssl); resumed ratio" % sn, n=sn, targets=proxies,
             kind="tls-resume", needs=["openssl"]),
    ]


# ------------------------------------------------------------------ report --------------------------

def fmt(v, spec="%.0f"):
    if v is None or v != v:
        return "-"
    return spec % v


def commas(v):
    return "-" if v is None or v != v else "{:,.0f}".format(v)


def ratio(a, b):
    if a is None or b is None or a != a or b != b or b == 0:
        return "-"
    return "%.2fx" % (a / b)


def tls_upstream_table(results, scs):
    """TLS to the backend: backend TLS handshakes per request."""
    lines = ["| scenario | target | backend TLS handshakes | per request | resumed | req/s | req per CPU-s | client errors |",
             "|---|---|---|---|---|---|---|---|"]
    for sc in scs:
        if sc["kind"] != "throughput" or sc.get("backend") != "sim-tls" or sc["key"] not in results:
            continue
        for name, a in results[sc["key"]]["targets"].items():
            lines.append("| %s | %s | %s | %s | %s | %s | %s | %d |" % (
                sc["key"], name, commas(a.get("backend_tls_handshakes")), fmt(a.get("tls_handshakes_per_req"), "%.4f"),
                commas(a.get("backend_tls_resumed")), fmt(a["rps"]), fmt(a.get("req_per_cpu_s")), a["errors"]))
    return lines if len(lines) > 2 else []


def tls_resume_table(results):
    """TLS session resumption: resumed ratio per proxy (client count; longhaul's metric too)."""
    r = results.get("tls-resume")
    if not r:
        return []
    lines = ["| target | requests ok | errors | sessions offered | resumed (client) | resumed ratio (client) | "
             "longhaul metric: resumed / ok client handshakes |", "|---|---|---|---|---|---|---|"]
    for name, v in r.items():
        metric = ("%d / %d = %.4f" % (v["metric_resumed"], v["metric_ok"], v["metric_ratio"])
                  if "metric_ratio" in v else "-")
        lines.append("| %s | %d | %d | %d | %d | %s | %s |" % (
            name, v["ok"], v["errors"], v["offered"], v["resumed"], fmt(v["client_ratio"], "%.4f"), metric))
    return lines


def throughput_table(results, scs):
    head = ("| scenario | target | req/s | p50 ms | p99 ms | backend conns/req | backend req/sent | "
            "proxy CPU s | req per CPU-s | peak RSS MiB | client errors | dup POSTs | idle conns/s |")
    lines = [head, "|" + "---|" * 13]
    for sc in scs:
        if sc["kind"] != "throughput" or sc["key"] not in results:
            continue
        for name, a in results[sc["key"]]["targets"].items():
            lines.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %d | %s | %s |" % (
                sc["key"], name, fmt(a["rps"]), fmt(a["p50_ms"], "%.2f"), fmt(a["p99_ms"], "%.2f"),
                fmt(a["conns_per_req"], "%.4f"), fmt(a["backend_req_per_sent"], "%.4f"),
                fmt(a.get("cpu_s"), "%.2f"), fmt(a.get("req_per_cpu_s")), fmt(a.get("peak_rss_mib"), "%.1f"),
                a["errors"], fmt(a.get("duplicate_posts"), "%d"), fmt(a.get("idle_conns_per_s"), "%.1f")))
    return lines


def ratio_table(results, scs):
    lines = ["| scenario | longhaul vs | req/s | p99 (lower is better) | req per CPU-s | peak RSS (lower is better) | backend conns/req |",
             "|---|---|---|---|---|---|---|"]
    for sc in scs:
        if sc["kind"] != "throughput" or sc["key"] not in results:
            continue
        tg = results[sc["key"]]["targets"]
        lh = tg.get("longhaul")
        if not lh:
            continue
        for peer in ("nginx", "haproxy", "direct"):
            p = tg.get(peer)
            if not p:
                continue
            lines.append("| %s | %s | %s | %s | %s | %s | %s |" % (
                sc["key"], peer, ratio(lh["rps"], p["rps"]), ratio(lh["p99_ms"], p["p99_ms"]),
                ratio(lh.get("req_per_cpu_s"), p.get("req_per_cpu_s")),
                ratio(lh.get("peak_rss_mib"), p.get("peak_rss_mib")),
                ratio(lh["conns_per_req"], p["conns_per_req"])))
    return lines


def memory_tables(results, scs):
    lines = []
    for sc in scs:
        r = results.get(sc["key"])
        if not r:
            continue
        if sc["kind"] == "idle":
            lines += ["", "**%s**" % sc["title"], "",
                      "| target | idle upstream conns held | RSS MiB | RSS before MiB | KiB per conn | client errors | longhaul ratio (RSS) |",
                      "|---|---|---|---|---|---|---|"]
            lh = r.get("longhaul", {}).get("rss_mib")
            for name, v in r.items():
                lines.append("| %s | %d | %.1f | %.1f | %s | %d | %s |" % (
                    name, v["idle_conns"], v["rss_mib"], v["rss_base_mib"], fmt(v["kib_per_conn"], "%.1f"),
                    v["errors"], "-" if name == "longhaul" else ratio(lh, v["rss_mib"])))
        elif sc["kind"] == "slow":
            lines += ["", "**%s**" % sc["title"], "",
                      "| target | slow clients | RSS held MiB | RSS before MiB | KiB per client | peak RSS MiB | ok | errors | longhaul ratio (RSS held) |",
                      "|---|---|---|---|---|---|---|---|---|"]
            lh = r.get("longhaul", {}).get("rss_held_mib")
            for name, v in r.items():
                lines.append("| %s | %d | %.1f | %.1f | %.1f | %.1f | %d | %d | %s |" % (
                    name, v["clients"], v["rss_held_mib"], v["rss_base_mib"], v["kib_per_client"],
                    v["peak_rss_mib"], v["ok"], v["errors"], "-" if name == "longhaul" else ratio(lh, v["rss_held_mib"])))
            for name, v in r.items():
                if v.get("error_kinds"):
                    lines.append("")
                    lines.append("- %s errors by kind: %s" % (name, v["error_kinds"]))
                for m in v.get("metrics", []):
                    lines.append("    - `%s`" % m)
    return lines


PEERS = ("longhaul", "haproxy", "nginx")


def top_calls(by_call, n_req, failed=False, k=4):
    """The k largest syscalls per request, e.g. 'recvfrom 2.00, writev 1.00'."""
    col = 1 if failed else 0
    rows = sorted(((v[col], name) for name, v in by_call.items() if v[col]), reverse=True)[:k]
    return ", ".join("%s %.2f" % (name, c / n_req) for c, name in rows)


def top_failed(by_errno, n_req, k=3):
    """The k most frequent failed calls per request, e.g. 'recvfrom EAGAIN 1.00'."""
    rows = sorted(((c, key) for key, c in by_errno.items()), reverse=True)[:k]
    return ", ".join("%s %.2f" % (key, c / n_req) for c, key in rows)


def cost_rows(results):
    """(figure, unit, {proxy: (value, shown)}) for every cost figure measured in this run."""
    rows = []

    def add(key, figure, unit, value, show):
        r = results.get(key)
        if r:
            rows.append((figure, unit, {p: (value(r[p]), show(r[p])) for p in PEERS if p in r}))

    for key, what in (("cg-short", "short HTTP/1.0 request"), ("cg-ka", "keep-alive request, ab -k")):
        add(key, "user-space instructions per %s (callgrind, marginal: (3,000 - 1,000) / 2,000 requests, "
            "ab -c 10, one event loop)" % what, "instructions/request",
            lambda v: v["per_request"], lambda v: commas(v["per_request"]))
    for key, what in (("sys-short", "short request"), ("sys-ka", "keep-alive request")):
        add(key, "syscalls per %s (strace -c -f, ab -c 10)" % what, "syscalls/request",
            lambda v: v["syscalls_per_request"],
            lambda v: "%.2f (%s)" % (v["syscalls_per_request"], top_calls(v["by_call"], v["requests"])))
        add(key, "failed syscalls per %s (strace -c; errno from a strace -Z run of the same load)" % what,
            "failed calls/request", lambda v: v["failed_per_request"],
            lambda v: "%.2f%s" % (v["failed_per_request"], (" (%s)" % top_failed(v["failed_by_errno"], v["requests"]))
                                  if v["failed_by_errno"] else ""))
        add(key, "context switches per %s (voluntary + nonvoluntary, /proc/PID/task/*/status, "
            "ab -c 10, no tracer, median of 3 loads)" % what, "switches/request",
            lambda v: v["switches_per_request"],
            lambda v: "%.2f (%.2f + %.2f)" % (v["switches_per_request"], v["voluntary"] / v["requests"],
                                              v["nonvoluntary"] / v["requests"]))
    add("mem-pooled", "RSS per idle pooled upstream connection ((RSS holding them - RSS after start) / "
        "connections held)", "KiB/connection",
        lambda v: v["kib_per_conn"], lambda v: "%s (%d held)" % (fmt(v["kib_per_conn"], "%.1f"), v["idle_conns"]))
    add("mem-tls-client", "RSS per idle TLS client connection (handshake done, nothing sent; (RSS holding them - "
        "RSS after start) / clients)", "KiB/connection", lambda v: v["kib_per_conn"],
        lambda v: "%.1f (%d connected%s)" % (v["kib_per_conn"], v["connected"],
                                             ", %d closed by the proxy" % v["closed_by_proxy"]
                                             if v["closed_by_proxy"] else ""))
    add("mem-client", "RSS per silent client connection ((RSS holding them - RSS after start) / clients)",
        "KiB/connection", lambda v: v["kib_per_conn"],
        lambda v: "%.1f (%d accepted%s)" % (v["kib_per_conn"], v["accepted"],
                                            ", %d closed by the proxy" % v["closed_by_proxy"]
                                            if v["closed_by_proxy"] else ""))
    return rows


def cost_table(results):
    rows = cost_rows(results)
    if not rows:
        return []
    lines = ["| figure | unit | longhaul | HAProxy | nginx | longhaul / HAProxy (lower is better) |",
             "|---|---|---|---|---|---|"]
    for figure, unit, vals in rows:
        cell = lambda p: vals[p][1] if p in vals else "-"
        lh, ha = vals.get("longhaul", (None,))[0], vals.get("haproxy", (None,))[0]
        lines.append("| %s | %s | %s | %s | %s | %s |" % (
            figure, unit, cell("longhaul"), cell("haproxy"), cell("nginx"), ratio(lh, ha)))
    return lines


def cost_details(results):
    """The raw figures behind the cost table, and any client errors during those loads."""
    lines = []
    for key in ("cg-short", "cg-ka"):
        for p, v in results.get(key, {}).items():
            totals = ", ".join("%s requests %s" % (n, commas(i) if i is not None else "no out file")
                               for n, i in v["instructions"].items())
            lines.append("- %s %s: instructions for %s; client errors %d" % (key, p, totals, v["errors"]))
    for key in ("sys-short", "sys-ka"):
        for p, v in results.get(key, {}).items():
            lines.append("- %s %s: %d syscalls (%d failed) for %d requests; failed calls by errno in the -Z run: "
                         "%s; %d voluntary + %d nonvoluntary context switches for %d requests (the median load; "
                         "all loads: %s; threads that exited during them: %d); client errors %d" % (
                             key, p, v["syscalls"], v["failed"], v["requests"],
                             ", ".join("%s %d" % kv for kv in sorted(v["failed_by_errno"].items())) or "none",
                             v["voluntary"], v["nonvoluntary"], v["requests"],
                             ", ".join("%d+%d" % tuple(x) for x in v["switch_loads"]), v["threads_gone"],
                             v["errors"]))
    for key in ("mem-pooled", "mem-client", "mem-tls-client"):
        for p, v in results.get(key, {}).items():
            held = v["idle_conns"] if key == "mem-pooled" else v["accepted"]
            lines.append("- %s %s: RSS %.1f MiB holding %d, %.1f MiB after start; client errors %d" % (
                key, p, v["rss_mib"], held, v["rss_base_mib"], v["errors"]))
    return lines


def cmd_out(argv):
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        return (p.stdout + p.stderr).strip().splitlines()[0]
    except Exception as e:  # noqa: BLE001
        return "unavailable (%s)" % e


def machine(longhaul):
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = "?"
    try:
        with open("/proc/meminfo") as f:
            mem = "%.1f GiB" % (int(f.readline().split()[1]) / 1024 / 1024)
    except OSError:
        pass
    git = cmd_out(["git", "-C", REPO, "describe", "--always", "--dirty"])
    return [
        ("nproc", str(os.cpu_count())),
        ("CPU", cpu),
        ("memory", mem),
        ("kernel", platform.release()),
        ("os", cmd_out(["sh", "-c", ". /etc/os-release; echo $PRETTY_NAME"])),
        ("longhaul", "%s (git %s)" % (cmd_out([longhaul, "--version"]), git)),
        ("nginx", cmd_out(["nginx", "-v"])),
        ("haproxy", cmd_out(["haproxy", "-v"])),
        ("ab", cmd_out(["sh", "-c", "ab -V | head -1"])),
        ("wrk", cmd_out(["sh", "-c", "wrk -v 2>&1 | head -1"])),
        ("python", platform.python_version()),
    ]


def write_results(path, args, results, scs, info, started, elapsed):
    L = ["# longhaul benchmark results", "",
         "Generated by `bash bench/run.sh%s` on %s (%.1f min). Do not edit by hand: rerun the harness."
         % (" --quick" if args.quick else "", started, elapsed / 60), ""]
    if args.quick:
        L += ["**Quick mode**: small counts, one round. Indicative only; run without `--quick` for numbers to quote.", ""]
    L += ["## Machine", "", "| | |", "|---|---|"] + ["| %s | %s |" % kv for kv in info]
    L += ["", "Everything runs on this one machine over loopback: the load generator (ab, wrk or the Python",
          "clients), the backend and the proxy share the cores, so absolute numbers are lower than on",
          "separate hosts and the proxy with the cheapest CPU per request gets the most headroom.", ""]
    L += ["## Scenarios", ""] + ["- **%s** %s" % (sc["key"], sc["title"]) for sc in scs] + [""]
    L += ["## Throughput, latency, efficiency", "",
          "Medians over rounds for req/s and latencies; totals over rounds for the rest. Backend conns/req",
          "= connections the backend accepted / requests sent (1.0 = no reuse). Backend req/sent > 1 means",
          "requests reached the backend more than once. Proxy CPU = utime+stime of the proxy's processes",
          "(/proc/PID/stat) during the measured runs. Peak RSS = VmHWM (summed over nginx's processes),",
          "reset before each run. Idle conns/s = backend connections opened per second during a pause with",
          "no traffic after the rounds (each target has its own backend). In quick mode CPU seconds have",
          "the kernel's 10 ms tick resolution.", ""]
    L += throughput_table(results, scs)
    L += ["", "### longhaul's ratio to each peer", "",
          "req/s and req per CPU-s: above 1.00x is better for longhaul; p99, peak RSS and backend conns/req:",
          "below 1.00x is better for longhaul.", ""]
    L += ratio_table(results, scs)
    tls_lines = tls_upstream_table(results, scs)  # TLS to the backend
    if tls_lines:
        L += ["", "### TLS to the backend", "",
              "Backend TLS handshakes (full or resumed) counted by the TLS backend-sim per run; resumed =",
              "how many of them resumed a session. Clients speak plain HTTP to the proxies; direct clients",
              "speak HTTPS with a full handshake per request (ab). longhaul `[upstream.tls]` trusting the",
              "backend's CA; HAProxy `ssl verify none sni str(localhost)` + `http-reuse always`; nginx",
              "`proxy_ssl_session_reuse on` with a keepalive upstream.", ""] + tls_lines
    resume_lines = tls_resume_table(results)  # TLS session resumption
    if resume_lines:
        L += ["", "### TLS session resumption", "",
              "Short HTTPS clients, one at a time, each offering the session the previous connection got",
              "(Python ssl); the first has none to offer.", ""] + resume_lines
    L += ["", "## Memory"] + memory_tables(results, scs)
    costs_lines = cost_table(results)
    if costs_lines:
        L += ["", "## Cost per request and per connection", "",
              "Method: bench/README.md. Instructions come from callgrind with one event loop per proxy",
              "(longhaul `workers = 1`, HAProxy `nbthread 1`, nginx one process, no master); syscalls and",
              "context switches from each proxy in its bench setup above, after a warm-up that fills the",
              "pools. In brackets: the largest syscalls per request, or voluntary + nonvoluntary switches.",
              "nginx opens one backend connection per request here (HTTP/1.0 backend, see Notes), so its",
              "rows include the upstream connect and close.", ""]
        L += costs_lines + [""] + cost_details(results)
    L += ["", "## longhaul's own view", ""]
    for sc in scs:
        r = results.get(sc["key"])
        if not r or sc["kind"] != "throughput":
            continue
        pools = r.get("longhaul_pools", {})
        try:
            s = pools["upstreams"][0]["servers"][0]
            L.append("- **%s**: /pools opened=%s requests=%s reused=%s reuse_ratio=%s keepalive_timeout_seconds=%s"
                     % (sc["key"], s.get("opened"), s.get("requests"), s.get("reused"), s.get("reuse_ratio"),
                        s.get("keepalive_timeout_seconds")))
        except (KeyError, IndexError, TypeError):
            L.append("- **%s**: /pools: %s" % (sc["key"], pools))
        for m in r.get("longhaul_metrics", []):
            L.append("    - `%s`" % m)
        lh = r["targets"].get("longhaul", {})
        if lh.get("error_kinds"):
            L.append("    - client-visible errors by kind: %s" % lh["error_kinds"])
        for t, a in r["targets"].items():
            if a.get("notes"):
                L.append("    - %s: %s" % (t, "; ".join(a["notes"])))
    L += ["", "## Notes", "",
          "- Pool size is %d connections per backend server for all three proxies. longhaul: `max_size = %d`"
          " (busy + idle; excess requests wait up to `wait_timeout` 500 ms). HAProxy: `server ... maxconn %d"
          " pool-max-conn %d` (excess requests queue, `timeout queue 500ms`), `http-reuse always`, `nbthread 2`."
          " nginx: `keepalive %d` per worker x `worker_processes 2` idle connections, `proxy_http_version 1.1`,"
          " `Connection \"\"`; nginx has no queue, so it opens more connections than that under load"
          " (`max_conns` without the commercial `queue` would turn them into 502s)." % (POOL, POOL, POOL, POOL, POOL // 2),
          "- nginx does not reuse an upstream connection whose response is HTTP/1.0, even with"
          " `Connection: keep-alive` (its proxy module marks every pre-1.1 response as connection-close),"
          " so against this HTTP/1.0 backend nginx opens one backend connection per request: the"
          " backend conns/req column shows it.",
          "- backend-sim announces `Keep-Alive: timeout=N` in whole seconds, at least 1: with"
          " `--keepalive-timeout 200ms` it announces `timeout=1` but closes idle connections after 200 ms,"
          " so a proxy that trusts the announcement meets closed connections. dup_backend.py does the same"
          " (announces 1 s, closes after 200 ms) and also counts POST bodies (unique ids) it saw twice.",
          "- Scenario (c) uses wrk with a Lua script that sends `GET /bench HTTP/1.0` + `Connection: keep-alive`.",
          "- Raw per-run numbers: `%s` in the run's temporary directory (with the logs and generated"
          " configs; kept with `--keep-tmp`, or give `--json-out`)." % os.path.basename(args.json_out),
          ""]
    # The targets a run does not meet are explained, with profiles, in ANALYSIS.md (by hand).
    analysis = os.path.join(BENCH, "ANALYSIS.md")
    if os.path.exists(analysis):
        with open(analysis) as f:
            L += ["", f.read().rstrip(), ""]
    with open(path, "w") as f:
        f.write("\n".join(L))


# ------------------------------------------------------------------ main ----------------------------

T0 = time.monotonic()


def log(msg):
    print("[%6.1fs] %s" % (time.monotonic() - T0, msg), flush=True)


def main():
    ap = argparse.ArgumentParser(description="longhaul vs nginx vs HAProxy on loopback")
    ap.add_argument("--quick", action="store_true", help="small counts, one round (~2 minutes)")
    ap.add_argument("--longhaul", default=os.path.join(REPO, "target", "release", "longhaul"))
    ap.add_argument("--out", default=os.path.join(BENCH, "RESULTS.md"))
    ap.add_argument("--json-out", default=None, help="raw results as JSON (default: in the temp dir)")
    ap.add_argument("--only", default="", help="comma-separated scenario keys (a5,a20,b,c,d-sim,d-dup,e-idle,e-slow,"
                    "cg-short,cg-ka,sys-short,sys-ka,mem-pooled,mem-client,tls-short,mem-tls-client,"
                    "tls-upstream,tls-both,mem-tls-pooled,tls-resume)")
    ap.add_argument("--targets", default="", help="comma-separated subset of direct,longhaul,nginx,haproxy")
    ap.add_argument("--keep-tmp", action="store_true")
    ap.add_argument("--pidfile", default=None, help="where child pids are recorded (run.sh's trap reads it)")
    args = ap.parse_args()

    if not os.access(args.longhaul, os.X_OK):
        sys.exit("error: %s not found; cargo build --release" % args.longhaul)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 65536) if hard != resource.RLIM_INFINITY else 65536
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))

    tmp = tempfile.mkdtemp(prefix="longhaul-bench-")
    pidfile = args.pidfile or os.path.join(tmp, "pids")
    procs = Procs(tmp, pidfile)
    if not args.json_out:
        args.json_out = os.path.join(tmp, "results.json")

    def on_signal(signum, _frame):
        raise KeyboardInterrupt("signal %d" % signum)

    signal.signal(signal.SIGTERM, on_signal)
    atexit.register(procs.stop_all)

    scs = scenarios(args.quick)
    if args.only:
        keep = set(args.only.split(","))
        scs = [s for s in scs if s["key"] in keep]
        unknown = keep - {s["key"] for s in scenarios(args.quick)}
        if unknown:
            sys.exit("error: unknown scenario key(s) %s" % ",".join(sorted(unknown)))
    for tool in sorted({"ab", "wrk", "nginx", "haproxy"}.union(*[s.get("needs", []) for s in scs])):
        if not shutil.which(tool):
            sys.exit("error: %s not found (bench/run.sh installs it)" % tool)
    if args.targets:
        want = args.targets.split(",")
        for sc in scs:
            sc["targets"] = [t for t in sc["targets"] if t in want]
    ctx = {"procs": procs, "tmp": tmp, "longhaul": os.path.abspath(args.longhaul),
           "warmup": 200 if args.quick else 1000, "idle_probe": 1.0 if args.quick else 3.0,
           "tls": tls_files(tmp) if any(s.get("tls") or s["kind"] in ("tls-idle", "tls-resume") for s in scs) else None}
    started = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    info = machine(ctx["longhaul"])
    log("temp dir %s (logs, configs); mode %s" % (tmp, "quick" if args.quick else "full"))
    results = {}
    try:
        for sc in scs:
            log(sc["title"])
            t = time.monotonic()
            if sc["kind"] == "throughput":
                results[sc["key"]] = throughput_scenario(ctx, sc)
            elif sc["kind"] == "idle":
                results[sc["key"]] = idle_pool_scenario(ctx, sc)
            elif sc["kind"] == "pooled":  # the e-idle figures when e-idle ran in this run
                results[sc["key"]] = results.get(sc["same_as"]) or idle_pool_scenario(ctx, sc)
            elif sc["kind"] == "callgrind":
                results[sc["key"]] = callgrind_scenario(ctx, sc)
            elif sc["kind"] == "syscalls":
                results[sc["key"]] = syscalls_scenario(ctx, sc)
            elif sc["kind"] == "silent":
                results[sc["key"]] = silent_clients_scenario(ctx, sc)
            elif sc["kind"] == "tls-idle":
                results[sc["key"]] = idle_tls_clients_scenario(ctx, sc)
            elif sc["kind"] == "tls-resume":  # TLS session resumption
                results[sc["key"]] = tls_resume_scenario(ctx, sc)
            else:
                results[sc["key"]] = slow_clients_scenario(ctx, sc)
            log("  done in %.0fs" % (time.monotonic() - t))
    except KeyboardInterrupt:
        log("interrupted; writing what was measured")
    finally:
        procs.stop_all()
    elapsed = time.monotonic() - T0
    with open(args.json_out, "w") as f:
        json.dump({"machine": dict(info), "quick": args.quick, "results": results}, f, indent=1, default=str)
    write_results(args.out, args, results, scs, info, started, elapsed)
    print()
    print("\n".join(throughput_table(results, scs)))
    print()
    print("\n".join(ratio_table(results, scs)))
    print()
    print("\n".join(tls_upstream_table(results, scs)))
    print("\n".join(tls_resume_table(results)))
    print("\n".join(memory_tables(results, scs)))
    print()
    print("\n".join(cost_table(results)))
    print()
    log("wrote %s and %s" % (args.out, args.json_out))
    if not args.keep_tmp:
        for name in os.listdir(tmp):  # keep logs and results, drop the bulky bits
            if name.startswith("nginx-"):
                shutil.rmtree(os.path.join(tmp, name, "tmp"), ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
