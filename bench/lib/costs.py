"""Probes for the per-request cost rows: callgrind instruction totals, strace syscall counts,
context switches and open file descriptors of a running proxy (all its processes and threads)."""

import os
import re
import signal
import subprocess
import time


# ---------------------------------------------------------------- callgrind --------------------------

def valgrind_argv(out_file):
    """Prefix that runs one process under callgrind, without following its children; the out file is
    written when the process exits normally (or dies of a catchable signal), never on SIGKILL."""
    return ["valgrind", "--tool=callgrind", "--trace-children=no", "--callgrind-out-file=" + out_file]


def callgrind_instructions(out_file):
    """User-space instructions (Ir) of the whole run: the `totals:` line of the callgrind out file,
    or its `summary:` line when there is no totals line. None if the file is missing or unreadable."""
    found = {}
    try:
        with open(out_file) as f:
            for line in f:
                for key in ("totals:", "summary:"):
                    if line.startswith(key):
                        found[key] = int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return found.get("totals:", found.get("summary:"))


# ---------------------------------------------------------------- strace -----------------------------

class Strace:
    """strace attached to every process of a proxy (with -f, strace attaches to all threads of each -p
    process and logs one "Process N attached [with M threads]" line per process). mode "count":
    `-c`, the per-syscall table of calls and errors; mode "failed": `-Z`, one line per failed call,
    which names its errno. finish() detaches with SIGINT and returns the parsed result."""

    def __init__(self, procs, tmp, label, pids, mode="count", attach_timeout=15.0):
        self.mode = mode
        self.out = os.path.join(tmp, "strace-%s-%s.out" % (label, mode))
        argv = ["strace", "-f", "-c" if mode == "count" else "-Z", "-o", self.out]
        for pid in pids:
            argv += ["-p", str(pid)]
        self.procs = procs
        self.proc = procs.start("strace-%s-%s" % (label, mode), argv)
        want = len(pids)
        end = time.monotonic() + attach_timeout
        while time.monotonic() < end:
            if self._attached() >= want:
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.procs.stop(self.proc)
        raise RuntimeError("strace did not attach to %d processes in %.0fs; see %s" % (
            want, attach_timeout, self.proc.logpath))

    def _attached(self):
        try:
            with open(self.proc.logpath) as f:
                return sum(1 for line in f if " attached" in line)
        except OSError:
            return 0

    def finish(self, timeout=30.0):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        self.procs.stop(self.proc)
        with open(self.out) as f:
            text = f.read()
        return parse_strace_summary(text) if self.mode == "count" else parse_failed_calls(text)


_SUMMARY_ROW = re.compile(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:(\d+)\s+)?(\S+)\s*$")


def parse_strace_summary(text):
    """strace -c's table -> {"calls": total, "errors": total, "by_call": {name: (calls, errors)}}."""
    by_call, calls, errors = {}, 0, 0
    for line in text.splitlines():
        m = _SUMMARY_ROW.match(line)
        if not m:
            continue
        n, e, name = int(m.group(1)), int(m.group(2) or 0), m.group(3)
        if name == "total":
            calls, errors = n, e
        else:
            by_call[name] = (n, e)
    return {"calls": calls, "errors": errors, "by_call": by_call}


_FAILED_CALL = re.compile(r"^(?:\[pid\s+\d+\]\s+|\d+\s+)?(?:<\.\.\. (\w+) resumed>|(\w+)\().*\)\s+=\s+-1\s+(E[A-Z0-9]+)")


def parse_failed_calls(text):
    """strace -Z's lines -> {"syscall errno": count}, e.g. {"recvfrom EAGAIN": 2000}."""
    out = {}
    for line in text.splitlines():
        m = _FAILED_CALL.match(line)
        if m:
            key = "%s %s" % (m.group(1) or m.group(2), m.group(3))
            out[key] = out.get(key, 0) + 1
    return out


# ---------------------------------------------------------------- /proc ------------------------------

def context_switches(pids):
    """{tid: (voluntary, nonvoluntary)} over every thread of the given processes."""
    out = {}
    for pid in pids:
        try:
            tids = os.listdir("/proc/%d/task" % pid)
        except OSError:
            continue
        for tid in tids:
            vol = nonvol = 0
            try:
                with open("/proc/%d/task/%s/status" % (pid, tid)) as f:
                    for line in f:
                        if line.startswith("voluntary_ctxt_switches:"):
                            vol = int(line.split()[1])
                        elif line.startswith("nonvoluntary_ctxt_switches:"):
                            nonvol = int(line.split()[1])
            except OSError:
                continue
            out[int(tid)] = (vol, nonvol)
    return out


def switches_between(before, after):
    """(voluntary, nonvoluntary) done between two context_switches() samples, by the threads alive at
    the second one (a thread that exited in between takes its counts with it)."""
    vol = sum(v - before.get(tid, (0, 0))[0] for tid, (v, _) in after.items())
    nonvol = sum(n - before.get(tid, (0, 0))[1] for tid, (_, n) in after.items())
    return vol, nonvol


def open_fds(pids):
    n = 0
    for pid in pids:
        try:
            n += len(os.listdir("/proc/%d/fd" % pid))
        except OSError:
            pass
    return n
