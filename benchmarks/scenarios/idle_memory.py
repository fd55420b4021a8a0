"""Memory per idle keep-alive client connection.

For each target, a fresh process (and a fresh backend): one request through
it (pools, lazy initialisation), RSS from /proc/PID/status; then a Python
client opens N = 10,000 connections (WG_IDLE_CONNECTIONS=100000 for the
100,000 of docs/operations.md, which needs a hard RLIMIT_NOFILE above N +
500 for this client and for the proxies; above 20,000 the connections come
from several source addresses 127.0.0.1, 127.0.0.2, ..., 50,000 each, since
one address has at most ~64,000 ports toward one destination; RLIMIT_NOFILE
raised to its hard limit; at most 50, resp. 500, requests in flight), sends
one keep-alive GET on each, reads the whole response, and keeps
them all open and idle; after 1 s the RSS again. Per connection =
(RSS after - RSS before) / N. The connections end with RST (SO_LINGER 0), so
runs leave no TIME_WAIT behind. "direct" is the nginx backend itself.
"""

import os
import resource
import selectors
import socket
import struct
import time

from ._common import Env, combine, free_port, rss_kib, start_target, table, check_get

NAME = "idle_memory"
CONNECTIONS = int(os.environ.get("WG_IDLE_CONNECTIONS", "10000"))
PER_SOURCE = 50000                  # connections per client source address
TITLE = ("%s idle keep-alive client connections after one request each: RSS per connection"
         % format(CONNECTIONS, ","))

# Requests in flight while the connections are opened: 50 shows the steady
# cost of an idle connection; 500 adds what a burst leaves behind (buffers
# kept in free lists, heap fragmentation).
BATCHES = (50, 500)

REQ = b"GET / HTTP/1.1\r\nHost: bench.test\r\nUser-Agent: idle\r\n\r\n"


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
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
            if n > 20000:
                s.bind(("127.0.0.%d" % (1 + k // PER_SOURCE), 0))
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


def one(ctx, target, n, batch):
    with Env(ctx) as env:
        backend_port = env.backend()
        url, proc, _ = start_target(env, target, "http", backend_port, clients=n)
        port = int(url.rsplit(":", 1)[1])
        for _ in range(3):
            check_get(url, "/")
        time.sleep(0.3)
        before = rss_kib(proc.pid)
        socks, failures = open_idle(port, n, batch)
        time.sleep(1.0)
        after = rss_kib(proc.pid)
        for s in socks:
            s.close()
        return {"before": before / 1024.0, "after": after / 1024.0,
                "per_conn": (after - before) * 1024.0 / n, "errors": failures}


def run(ctx, log=print):
    hard = raise_nofile()
    n = 200 if ctx.smoke else min(CONNECTIONS, hard - 500)
    if n < CONNECTIONS and not ctx.smoke:
        log("  RLIMIT_NOFILE hard limit %d: %d connections instead of %d (docs/operations.md)"
            % (hard, n, CONNECTIONS))
    rows = []
    for batch in BATCHES:
        label = "%d conns, %d in flight" % (n, batch)
        for target in ctx.targets:
            samples = []
            for _ in range(ctx.runs):
                try:
                    samples.append(one(ctx, target, n, batch))
                except RuntimeError as e:
                    log("  %s: %s" % (target, e))
                    break
            if not samples:
                rows.append((target, label, None))
                continue
            d = combine(samples)
            rows.append((target, label, d))
            log("  %-8s %s: RSS %6.1f -> %6.1f MiB: %6.0f bytes per idle connection%s"
                % (target, label, d["before"], d["after"], d["per_conn"],
                   "  (%d failed)" % d["errors"] if d["errors"] else ""))
    cols = [("RSS before MiB", "before", "%.1f"), ("RSS after MiB", "after", "%.1f"),
            ("bytes / idle conn", "per_conn", "%.0f"), ("failed", "errors", "%d")]
    md = table(rows, cols, "per_conn")
    md += ("\n\nLower is better here: a bytes/conn ratio below 1.00 means less memory per "
           "idle connection than HAProxy (resp. the nginx backend).")
    return md, sum((d or {}).get("errors", 0) for _, _, d in rows)
