"""Memory per idle keep-alive client connection.

For each target, a fresh process (and a fresh backend): one request through
it (pools, lazy initialisation), RSS from /proc/PID/status; then a Python
client opens N = 10,000 connections (WG_IDLE_CONNECTIONS=100000 for the
100,000 of docs/operations.md, which needs a hard RLIMIT_NOFILE above N +
500 for this client and for the proxies; above 10,000 the idle connections
come from several source addresses 127.0.0.2, 127.0.0.3, ... (127.0.0.1 is
wrk's), as many each as net.ipv4.ip_local_port_range leaves less 2,000 (at
most 50,000), since one address has at most that many ports toward one
destination; RLIMIT_NOFILE
raised to its hard limit; at most 50, resp. 500, requests in flight), sends
one keep-alive GET on each, reads the whole response, and keeps
them all open and idle; after 1 s the RSS again. Per connection =
(RSS after - RSS before) / N. The connections end with RST (SO_LINGER 0), so
runs leave no TIME_WAIT behind. "direct" is the nginx backend itself.

Mixed load (issue 18): with WG_IDLE_ACTIVE=1 (the default at 100,000 and
more), 90 % of the N connections are opened idle as above and the other
10 % are wrk's, active for the run's duration while the idle ones stay
open: the table adds their p99 and errors, and the p99 of the same wrk
load run again once the idle connections are closed (the usual p99); a
2-second wrk run before both warms the proxy's upstream connections. WG_IDLE_WORKERS=1,2 runs waygate
with one and with two workers. As root, the hard RLIMIT_NOFILE is raised to
N + 20,000 (up to fs.nr_open) for this process and what it starts.
"""

import os
import resource
import selectors
import socket
import struct
import time

from ._common import Env, combine, free_port, rss_kib, start_target, table, check_get, wrk

NAME = "idle_memory"
CONNECTIONS = int(os.environ.get("WG_IDLE_CONNECTIONS", "10000"))


def per_source():
    """Connections per client source address: what net.ipv4.ip_local_port_range
    leaves (the default 32768-60999: 28,232 ports toward one destination),
    less a margin, at most 50,000."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = (int(x) for x in f.read().split())
        return max(1000, min(50000, hi - lo + 1 - 2000))
    except (OSError, ValueError):
        return 25000


PER_SOURCE = per_source()
TITLE = ("%s idle keep-alive client connections after one request each: RSS per connection"
         % format(CONNECTIONS, ","))

# Requests in flight while the connections are opened: 50 shows the steady
# cost of an idle connection; 500 adds what a burst leaves behind (buffers
# kept in free lists, heap fragmentation).
BATCHES = tuple(int(b) for b in os.environ.get("WG_IDLE_BATCHES", "50,500").split(","))
ACTIVE = os.environ.get("WG_IDLE_ACTIVE", "1" if CONNECTIONS >= 100000 else "0") == "1"
WORKERS = [int(w) for w in os.environ.get("WG_IDLE_WORKERS", "1").split(",")]

REQ = b"GET / HTTP/1.1\r\nHost: bench.test\r\nUser-Agent: idle\r\n\r\n"


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = CONNECTIONS + 20000
    if hard < want and os.geteuid() == 0:
        try:
            with open("/proc/sys/fs/nr_open") as f:
                want = min(want, int(f.read()))
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            hard = want
        except (OSError, ValueError):
            pass
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def open_idle(port, n, batch):
    """n connections, one request/response each, left open; at most `batch`
    requests in flight at a time. Returns (sockets, failures)."""
    socks, pending, failures = [], {}, 0
    sel = selectors.DefaultSelector()
    for start in range(0, n, batch):
        for k in range(start, min(n, start + batch)):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            if n > 10000:       # 127.0.0.2, .3, ...: 127.0.0.1 is left to wrk
                s.bind(("127.0.0.%d" % (2 + k // PER_SOURCE), 0))
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            socks.append(s)
            pending[s] = b""
            sel.register(s, selectors.EVENT_WRITE)
        deadline = time.monotonic() + 30
        while pending and time.monotonic() < deadline:
            for key, ev in sel.select(timeout=1):
                s = key.fileobj
                if ev & selectors.EVENT_WRITE:
                    try:
                        s.send(REQ)
                    except OSError:
                        failures += 1
                        sel.unregister(s)
                        del pending[s]
                        continue
                    sel.modify(s, selectors.EVENT_READ)
                    continue
                try:
                    data = s.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    failures += 1
                    sel.unregister(s)
                    del pending[s]
                    continue
                buf = pending[s] + data
                head, sep, body = buf.partition(b"\r\n\r\n")
                if sep:
                    clen = 0
                    for line in head.split(b"\r\n")[1:]:
                        k, _, v = line.partition(b":")
                        if k.strip().lower() == b"content-length":
                            clen = int(v)
                    if len(body) >= clen:
                        if not head.startswith(b"HTTP/1.1 200"):
                            failures += 1
                        sel.unregister(s)
                        del pending[s]
                        continue
                pending[s] = buf
        failures += len(pending)
        for s in pending:
            sel.unregister(s)
        pending = {}
    sel.close()
    return socks, failures


def one(ctx, target, n, batch, workers=1):
    with Env(ctx) as env:
        backend_port = env.backend()
        url, proc, _ = start_target(env, target, "http", backend_port, clients=n, workers=workers)
        port = int(url.rsplit(":", 1)[1])
        for _ in range(3):
            check_get(url, "/")
        time.sleep(0.3)
        active = n // 10 if ACTIVE else 0
        before = rss_kib(proc.pid)
        socks, failures = open_idle(port, n - active, batch)
        time.sleep(1.0)
        after = rss_kib(proc.pid)
        d = {"before": before / 1024.0, "after": after / 1024.0,
             "per_conn": (after - before) * 1024.0 / (n - active), "errors": failures}
        if active:
            # A first short run opens the proxy's upstream connections (and
            # wrk's): both measured runs below then find them warm.
            wrk(url + "/", conns=active, duration=2, threads=2)
            r = wrk(url + "/", conns=active, duration=ctx.duration, threads=2)
        for s in socks:
            s.close()
        if active:      # the same active load once the idle ones are gone: the usual p99
            time.sleep(1.0)
            base = wrk(url + "/", conns=active, duration=ctx.duration, threads=2)
            d.update(p99=r["p99"], rps=r["rps"], errors=failures + r["errors"],
                     p99_alone=base["p99"], rps_alone=base["rps"], errors_alone=base["errors"])
        return d



def run(ctx, log=print):
    hard = raise_nofile()
    # A proxy holds a descriptor per client connection and, for each active
    # one, one upstream: 1.1 N at 10 % active (at 19,000 under a hard limit
    # of 20,000 the proxies ran out and refused some of wrk's connections).
    n = 200 if ctx.smoke else min(CONNECTIONS, int((hard - 500) / (1.1 if ACTIVE else 1)))
    if n < CONNECTIONS and not ctx.smoke:
        log("  RLIMIT_NOFILE hard limit %d: %d connections instead of %d (docs/operations.md)"
            % (hard, n, CONNECTIONS))
    rows = []
    runs = [(t, w) for t in ctx.targets for w in (WORKERS if t == "waygate" else [1])]
    for batch in BATCHES:
        label = ("%d conns (%d idle + %d wrk), %d in flight" % (n, n - n // 10, n // 10, batch)
                 if ACTIVE else "%d conns, %d in flight" % (n, batch))
        for target, workers in runs:
            tlabel = "%s, %d workers" % (target, workers) if len(WORKERS) > 1 and \
                target == "waygate" else target
            samples = []
            for _ in range(ctx.runs):
                try:
                    samples.append(one(ctx, target, n, batch, workers))
                except RuntimeError as e:
                    log("  %s: %s" % (target, e))
                    break
            if not samples:
                rows.append((tlabel, label, None))
                continue
            d = combine(samples)
            rows.append((tlabel, label, d))
            log("  %-8s %s: RSS %6.1f -> %6.1f MiB: %6.0f bytes per idle connection%s%s"
                % (tlabel, label, d["before"], d["after"], d["per_conn"],
                   "; active p99 %.2f ms at %.0f rps (without the idle ones: %.2f ms at "
                   "%.0f rps, %d failed)" % (d["p99"], d["rps"], d["p99_alone"], d["rps_alone"],
                                             d["errors_alone"])
                   if ACTIVE else "",
                   "  (%d failed)" % d["errors"] if d["errors"] else ""))
    cols = [("RSS before MiB", "before", "%.1f"), ("RSS after MiB", "after", "%.1f"),
            ("bytes / idle conn", "per_conn", "%.0f")]
    if ACTIVE:
        cols += [("active p99 ms", "p99", "%.2f"), ("active rps", "rps", "%.0f"),
                 ("p99 ms without the idle ones", "p99_alone", "%.2f"),
                 ("rps without", "rps_alone", "%.0f")]
    cols += [("failed", "errors", "%d")]
    md = table(rows, cols, "per_conn")
    md += ("\n\nLower is better here: a bytes/conn ratio below 1.00 means less memory per "
           "idle connection than HAProxy (resp. the nginx backend).")
    return md, sum((d or {}).get("errors", 0) for _, _, d in rows)
