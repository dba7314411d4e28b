#!/usr/bin/env python3
"""A tiny legacy HTTP/1.0 backend for the stale-connection scenario (stdlib only).

It answers every request with `HTTP/1.0 200`, `Content-Length` and `Connection: keep-alive` (when the
request allows it), announces `Keep-Alive: timeout=1` like backend-sim does (whole seconds, at least 1)
but closes a connection that has been idle for --idle-close (default 200 ms). Each POST body carries
a unique id (`id=...`); the backend counts ids it has already seen, so a POST that reached it twice
(a proxy re-sending a non-idempotent request) shows up as a duplicate.

GET /stats on --stats-listen answers JSON:
  {"connections_accepted":N,"requests":N,"posts":N,"duplicate_posts":N,"idle_closes":N}
"""

import argparse
import json
import socket
import socketserver
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()
STATS = {"connections_accepted": 0, "requests": 0, "posts": 0, "duplicate_posts": 0, "idle_closes": 0}
SEEN = set()


def bump(key, n=1):
    with LOCK:
        STATS[key] += n


class Conn(socketserver.BaseRequestHandler):
    idle_close = 0.2
    first_timeout = 10.0
    body = b"x" * 1024

    def handle(self):
        sock = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        bump("connections_accepted")
        buf = b""
        timeout = self.first_timeout
        while True:
            # Read one request head; the idle timer runs only while nothing of it has arrived.
            while b"\r\n\r\n" not in buf:
                sock.settimeout(timeout if not buf else self.first_timeout)
                try:
                    chunk = sock.recv(65536)
                except socket.timeout:
                    if not buf:
                        bump("idle_closes")
                    return
                except OSError:
                    return
                if not chunk:
                    return
                buf += chunk
            head, _, buf = buf.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            try:
                method, _target, version = lines[0].split(" ", 2)
            except ValueError:
                sock.sendall(b"HTTP/1.0 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                return
            headers = {}
            for line in lines[1:]:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
            length = int(headers.get("content-length", "0") or 0)
            sock.settimeout(self.first_timeout)
            while len(buf) < length:
                try:
                    chunk = sock.recv(65536)
                except OSError:
                    return
                if not chunk:
                    return
                buf += chunk
            payload, buf = buf[:length], buf[length:]
            bump("requests")
            if method == "POST":
                pid = payload.decode("latin-1", "replace").strip()
                with LOCK:
                    STATS["posts"] += 1
                    if pid in SEEN:
                        STATS["duplicate_posts"] += 1
                    else:
                        SEEN.add(pid)
            tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
            if version.upper() == "HTTP/1.0":
                keep = "keep-alive" in tokens
            else:
                keep = "close" not in tokens
            hdr = "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n" % len(self.body)
            if keep:
                hdr += "Connection: keep-alive\r\nKeep-Alive: timeout=1\r\n\r\n"
            else:
                hdr += "Connection: close\r\n\r\n"
            try:
                sock.sendall(hdr.encode("ascii") + self.body)
            except OSError:
                return
            if not keep:
                return
            timeout = self.idle_close


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 4096


class StatsHandler(BaseHTTPRequestHandler):
    def do_GET(self):
        with LOCK:
            data = json.dumps(STATS).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def addr(s):
    host, _, port = s.rpartition(":")
    return host, int(port)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listen", required=True, type=addr)
    ap.add_argument("--stats-listen", required=True, type=addr)
    ap.add_argument("--idle-close", type=float, default=0.2, help="seconds")
    ap.add_argument("--body-size", type=int, default=1024)
    a = ap.parse_args()
    Conn.idle_close = a.idle_close
    Conn.body = b"x" * a.body_size
    srv = Server(a.listen, Conn)
    stats = ThreadingHTTPServer(a.stats_listen, StatsHandler)
    threading.Thread(target=stats.serve_forever, daemon=True).start()
    print("dup-backend listening on %s:%d stats on %s:%d" % (a.listen + a.stats_listen), flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
