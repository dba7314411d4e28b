#!/usr/bin/env python3
"""A deliberately unreliable HTTP/1.0 keep-alive backend for the longhaul fault soak.

Answers every request with `HTTP/1.0 200`, `Connection: keep-alive` and a Content-Length body
that echoes the request id, and misbehaves at random:
  - closes a connection that stayed idle for a random short time (FIN, or RST now and then);
  - closes a connection after N requests (announced with `Connection: close` or silently);
  - resets a connection (SO_LINGER 0) after reading a request, before answering;
  - closes (FIN) after reading a request, without answering;
  - answers slowly;
  - restarts: stops listening and drops every connection for a moment, then comes back.

It records what it did in an event log (one line per event, `time kind fields...`):
  post ID SEQ        a POST with this id was read in full (SEQ: its number on the connection)
  get ID SEQ         the same for a GET
  reset ID SEQ       the request was answered with a reset
  drop ID SEQ        the request was answered with a close
  idle_close - SEQ   an idle connection was closed (idle_reset: with a reset)
  last_close ID SEQ  the connection was closed after answering its last request
  down T / up T      a restart began / ended
Python 3 standard library only.
"""

import argparse
import random
import socket
import struct
import sys
import threading
import time


class Backend:
    def __init__(self, args):
        self.args = args
        self.rng = random.Random(args.seed)
        self.rng_lock = threading.Lock()
        self.log_lock = threading.Lock()
        self.log = open(args.events, "a", buffering=1)
        # connection -> None, or "reset"/"close" once a restart has condemned it
        self.conns = {}
        self.conns_lock = threading.Lock()
        self.listener = None
        self.stop = threading.Event()
        self.generation = 0

    def rand(self):
        with self.rng_lock:
            return self.rng.random()

    def uniform(self, lo, hi):
        with self.rng_lock:
            return self.rng.uniform(lo, hi)

    def randint(self, lo, hi):
        with self.rng_lock:
            return self.rng.randint(lo, hi)

    def event(self, *fields):
        line = "%.6f %s\n" % (time.time(), " ".join(str(f) for f in fields))
        with self.log_lock:
            self.log.write(line)

    # --- listening and restarts -------------------------------------------------------------

    def listen(self):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.args.port))
        s.listen(512)
        s.settimeout(0.2)
        self.listener = s
        self.generation += 1
        threading.Thread(target=self.accept_loop, args=(s, self.generation), daemon=True).start()

    def accept_loop(self, listener, generation):
        while not self.stop.is_set() and generation == self.generation:
            try:
                conn, _ = listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            conn.settimeout(None)
            with self.conns_lock:
                self.conns[conn] = None
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def restart_loop(self):
        a = self.args
        while not self.stop.wait(self.uniform(a.restart_min, a.restart_max)):
            self.event("down", "%.6f" % time.time())
            self.generation += 1
            self.listener.close()
            # Each connection's own thread carries out the sentence: shutdown(SHUT_RD) wakes it
            # from recv (a close() from here would not, and would not reset either).
            with self.conns_lock:
                for c in self.conns:
                    self.conns[c] = "reset" if self.rand() < 0.5 else "close"
                victims = list(self.conns)
            for c in victims:
                try:
                    c.shutdown(socket.SHUT_RD)
                except OSError:
                    pass
            time.sleep(self.uniform(a.down_min, a.down_max))
            while True:
                try:
                    self.listen()
                    break
                except OSError:
                    time.sleep(0.05)
            self.event("up", "%.6f" % time.time())

    # --- one connection ---------------------------------------------------------------------

    def serve(self, conn):
        a = self.args
        idle_timeout = self.uniform(a.idle_min, a.idle_max)
        idle_reset = self.rand() < 0.3
        max_requests = self.randint(1, a.max_requests)
        announce_last = self.rand() < 0.5
        buf = b""
        seq = 0
        try:
            while True:
                conn.settimeout(idle_timeout)
                head, buf = read_head(conn, buf)
                if self.condemned(conn):
                    return
                if head is None:
                    if buf == b"idle":
                        self.event("idle_" + ("reset" if idle_reset else "close"), "-", seq)
                        (reset if idle_reset else close)(conn)
                    else:
                        close(conn)
                    return
                conn.settimeout(10)
                method, target, headers = parse_head(head)
                length = int(headers.get("content-length", "0") or 0)
                while len(buf) < length:
                    chunk = conn.recv(65536)
                    if not chunk:
                        close(conn)
                        return
                    buf += chunk
                body, buf = buf[:length], buf[length:]
                seq += 1
                rid = headers.get("x-soak-id", "-")
                self.event(method.lower(), rid, seq)
                r = self.rand()
                if r < a.p_reset:
                    self.event("reset", rid, seq)
                    reset(conn)
                    return
                if r < a.p_reset + a.p_drop:
                    self.event("drop", rid, seq)
                    close(conn)
                    return
                if r < a.p_reset + a.p_drop + a.p_slow:
                    time.sleep(self.uniform(0.2, a.slow_max))
                if self.condemned(conn):
                    return
                last = seq >= max_requests
                payload = ("%s %s id=%s len=%d\n" % (method, target, rid, len(body))).encode()
                payload += b"x" * self.randint(0, 512)
                lines = [
                    "HTTP/1.0 200 OK",
                    "Content-Type: text/plain",
                    "Content-Length: %d" % len(payload),
                    "X-Soak-Id: %s" % rid,
                ]
                if last and announce_last:
                    lines.append("Connection: close")
                else:
                    lines.append("Connection: keep-alive")
                conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + payload)
                if last:
                    self.event("last_close", rid, seq)
                    close(conn)
                    return
        except OSError:
            close(conn)
        finally:
            with self.conns_lock:
                self.conns.pop(conn, None)

    def condemned(self, conn):
        """Carries out a restart's reset or close on this connection, if there was one."""
        with self.conns_lock:
            mode = self.conns.get(conn)
        if mode is None:
            return False
        (reset if mode == "reset" else close)(conn)
        return True


def read_head(conn, buf):
    """(head bytes, rest) or (None, b"idle") after an idle timeout, (None, b"") at EOF."""
    while b"\r\n\r\n" not in buf:
        try:
            chunk = conn.recv(65536)
        except socket.timeout:
            return None, (b"idle" if not buf else b"")
        if not chunk:
            return None, b""
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    return head, rest


def parse_head(head):
    lines = head.decode("latin-1").split("\r\n")
    method, target = lines[0].split(" ")[:2]
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return method, target, headers


def reset(conn):
    try:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()
    except OSError:
        pass


def close(conn):
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        conn.close()
    except OSError:
        pass


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--events", required=True, help="event log file")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--idle-min", type=float, default=0.3)
    p.add_argument("--idle-max", type=float, default=5.0)
    p.add_argument("--max-requests", type=int, default=100)
    p.add_argument("--p-reset", type=float, default=0.01)
    p.add_argument("--p-drop", type=float, default=0.005)
    p.add_argument("--p-slow", type=float, default=0.03)
    p.add_argument("--slow-max", type=float, default=1.5)
    p.add_argument("--restart-min", type=float, default=30.0)
    p.add_argument("--restart-max", type=float, default=60.0)
    p.add_argument("--down-min", type=float, default=0.5)
    p.add_argument("--down-max", type=float, default=3.0)
    args = p.parse_args()
    b = Backend(args)
    b.listen()
    b.event("up", "%.6f" % time.time())
    print("backend listening on 127.0.0.1:%d" % args.port, file=sys.stderr, flush=True)
    try:
        b.restart_loop()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
