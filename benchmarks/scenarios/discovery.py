"""Discovery: etcd put -> first request routed to the new instance.

A real etcd 3.4 (tmpfs, tests/integration/etcdlib.py) and waygate (one
worker, registry.etcd, a tcp listener over one service, health checks off).
Each put moves the service's only instance to the other of two name-mode
backends (wg_backend greets with its name); the client then connects through
waygate in a loop until the new name answers. Measured from just before the
put is sent to the first connection routed to the new instance, so it
includes the put's own round trip through etcd's JSON gateway and raft (the
put is sent by the gateway client, not by spawning etcdctl, whose process
start-up alone would dominate). ≥ 500 puts per run; p50/p99 per run, median
of the runs. "inside waygate" is waygate's own share (watch response read off
the socket -> snapshot published) from its debug log, the value behind
waygate_registry_propagation_seconds.

HAProxy 2.6 and nginx have no etcd discovery of their own: n/a.
"""

import re
import time

from ._common import median, pct

NAME = "discovery"
TITLE = "Discovery: etcd put -> first request routed to the new instance"


def one_run(wglib, wg, c, backends, puts, first):
    times = []
    for k in range(first, first + puts):
        target = backends[k % 2]
        t0 = time.perf_counter()
        c.put("/services/users/x", "127.0.0.1:%d" % target.port)
        end = t0 + 10
        while time.perf_counter() < end:
            try:
                if wglib.name_via(wg.port(), timeout=2) == target.name:
                    break
            except (OSError, AssertionError):
                pass
        else:
            times.append(None)
            continue
        times.append((time.perf_counter() - t0) * 1000)
    return times


def run(ctx, log=print):
    etcdlib, wglib = __import__("scenarios._etcd", fromlist=["load"]).load(ctx.build)
    puts = 20 if ctx.smoke else 500
    rows, inner_all, errors = [], [], 0
    with etcdlib.EtcdHarness() as h:
        etcd = h.etcd()
        c = etcd.client()
        a, b = h.backend("name", name="a"), h.backend("name", name="b")
        c.put("/services/users/x", "127.0.0.1:%d" % a.port)
        wg = h.waygate_etcd(etcd, workers=1, log={"level": "debug", "access_log": "off"})
        wglib.wait_until(lambda: wglib.name_via(wg.port()) == "a", 10, "first instance")
        first = 1
        for r in range(ctx.runs):
            t = one_run(wglib, wg, c, [a, b], puts, first)
            first += puts
            ok = [x for x in t if x is not None]
            errors += len(t) - len(ok)
            rows.append({"p50": pct(ok, 50), "p99": pct(ok, 99), "max": max(ok)})
            log("  run %d: %d puts: p50 %.2f ms, p99 %.2f ms, max %.2f ms%s" % (
                r + 1, len(t), rows[-1]["p50"], rows[-1]["p99"], rows[-1]["max"],
                "  (%d never routed)" % (len(t) - len(ok)) if len(ok) < len(t) else ""))
        inner_all = [float(x) / 1000 for x in re.findall(
            r"etcd watch response applied.*propagation_us=([0-9.]+)", wg.proc.stderr_text())]
        wg.proc.stop()
    p50, p99 = median([r["p50"] for r in rows]), median([r["p99"] for r in rows])
    lines = ["| target | puts per run | p50 ms | p99 ms | max ms | inside waygate p50 / p99 ms |",
             "|---|---|---|---|---|---|",
             "| waygate | %d | %.2f | %.2f | %.2f | %s |" % (
                 puts, p50, p99, median([r["max"] for r in rows]),
                 "%.3f / %.3f" % (pct(inner_all, 50), pct(inner_all, 99)) if inner_all else "n/a"),
             "| haproxy | - | n/a | n/a | n/a | no etcd discovery |",
             "| nginx | - | n/a | n/a | n/a | no etcd discovery |"]
    return "\n".join(lines), errors
