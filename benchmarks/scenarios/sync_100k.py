"""Initial sync and RSS with 100,000 registry instances.

100,000 instances (WG_SYNC_INSTANCES=1000000 for a million) in 100 services
are seeded into a real etcd with transactions of 1,024 puts (etcd runs with
--max-txn-ops 1024); then, per run, a fresh waygate (one
worker, registry.etcd, health checks off) starts. Measured: exec -> the
"etcd list applied" log line (its first snapshot), waygate's CPU seconds by
then, and its RSS one second later. HAProxy 2.6 and nginx have no etcd
registry: n/a.
"""

import os
import re
import time

from ._common import cpu_seconds, median

NAME = "sync_100k"
TITLE = "Initial sync and RSS at 100,000 registry instances"


def run(ctx, log=print):
    etcdlib, wglib = __import__("scenarios._etcd", fromlist=["load"]).load(ctx.build)
    n = 2000 if ctx.smoke else int(os.environ.get("WG_SYNC_INSTANCES", "100000"))
    samples, errors = [], 0
    with etcdlib.EtcdHarness() as h:
        etcd = h.etcd(extra=["--quota-backend-bytes", str(8 << 30), "--max-txn-ops", "1024",
                             "--max-request-bytes", str(8 << 20)])
        c = etcd.client()
        t0 = time.monotonic()
        for start in range(0, n, 1024):
            c.txn_put([("/services/svc%d/i%06d" % (k % 100, k),
                        '{"address":"10.%d.%d.%d","port":8080}' % (k >> 16 & 255, k >> 8 & 255,
                                                                   k & 255))
                       for k in range(start, min(n, start + 1024))])
        log("  seeded %d instances in %.1f s" % (n, time.monotonic() - t0))
        for r in range(ctx.runs):
            t1 = time.monotonic()
            wg = h.waygate_etcd(etcd, workers=1, wait_ready=False)
            try:
                wglib.wait_until(lambda: re.search(r"etcd list applied", wg.proc.stderr_text()),
                                 900, "the initial list", interval=0.01)
            except AssertionError as e:
                log("  run %d: %s" % (r + 1, e))
                errors += 1
                wg.proc.stop()
                continue
            took = time.monotonic() - t1
            cpu = cpu_seconds(wg.proc.pid)
            time.sleep(1.0)
            rss = wg.proc.rss_kib() / 1024.0
            samples.append((took, cpu, rss))
            log("  run %d: %d instances: %.2f s to the first snapshot, %.2f s CPU, RSS %.0f MiB"
                % (r + 1, n, took, cpu, rss))
            wg.proc.stop()
    if not samples:
        return "failed", errors or 1
    lines = ["| target | instances | sync s | waygate CPU s | RSS MiB | RSS bytes / instance |",
             "|---|---|---|---|---|---|",
             "| waygate | %d | %.2f | %.2f | %.0f | %.0f |" % (
                 n, median([s[0] for s in samples]), median([s[1] for s in samples]),
                 median([s[2] for s in samples]), median([s[2] for s in samples]) * 1048576 / n),
             "| haproxy | - | n/a | n/a | n/a | no etcd registry |",
             "| nginx | - | n/a | n/a | n/a | no etcd registry |"]
    return "\n".join(lines), errors
