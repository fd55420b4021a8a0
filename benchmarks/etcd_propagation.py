#!/usr/bin/env python3
"""etcd registry benchmark (not a test): propagation and initial sync.

    python3 benchmarks/etcd_propagation.py [--build DIR] [--puts N] [--instances N]

1. Propagation: waygate watches a real etcd (tmpfs data dir, a TCP listener
   over one service with health checks off). Each round writes one key with
   the v3 JSON gateway so that the service's only instance moves to the
   other of two name-mode backends, then connects through waygate in a loop
   until the new backend answers. Reported: time from just before the put
   is sent to the first connection routed to the new instance, p50/p99/max
   over N puts (default 500); and waygate's own
   waygate_registry_propagation_seconds (socket read -> snapshot published).
2. Initial sync: N instances (default 100,000) seeded with transactions of
   128 puts, then a fresh waygate starts; reported: time from exec to the
   "etcd list applied" log line, and waygate's RSS afterwards.
"""

import argparse
import os
import re
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests", "integration"))

ap = argparse.ArgumentParser()
ap.add_argument("--build", default=os.environ.get("WAYGATE_BUILD", "build"))
ap.add_argument("--puts", type=int, default=500)
ap.add_argument("--instances", type=int, default=100000)
args = ap.parse_args()
os.environ["WAYGATE_BUILD"] = os.path.abspath(args.build)

from etcdlib import EtcdHarness          # noqa: E402  (needs WAYGATE_BUILD first)
from propagation import report, time_until_routed  # noqa: E402
from wglib import name_via, wait_until   # noqa: E402


def histogram(wg):
    _, body = wg.admin("/metrics")
    lines = [l for l in body.splitlines() if l.startswith("waygate_registry_propagation_seconds")]
    return lines


def propagation(h, etcd):
    c = etcd.client()
    a, b = h.backend("name", name="a"), h.backend("name", name="b")
    backends = [a, b]
    c.put("/services/users/x", "127.0.0.1:%d" % a.port)
    wg = h.waygate_etcd(etcd, log={"level": "debug", "access_log": "off"})
    wait_until(lambda: name_via(wg.port()) == "a", 10, "first instance")
    times = []
    for k in range(1, args.puts + 1):
        target = backends[k % 2]
        times.append(time_until_routed(
            lambda: c.put("/services/users/x", "127.0.0.1:%d" % target.port), wg.port(),
            target.name))
    inner = [float(x) / 1000 for x in
             re.findall(r"etcd watch response applied.*propagation_us=([0-9.]+)", wg.stderr_text())]
    report("put -> first routed connection, %d puts" % len(times), [t * 1000 for t in times],
           inner, "watch response read -> snapshot published")
    for line in histogram(wg):
        print("  " + line)
    wg.proc.stop()


def initial_sync(h, etcd):
    c = etcd.client()
    n = args.instances
    t0 = time.monotonic()
    for start in range(0, n, 128):
        c.txn_put([("/services/svc%d/i%06d" % (k % 100, k),
                    '{"address":"10.%d.%d.%d","port":8080}' % (k >> 16 & 255, k >> 8 & 255, k & 255))
                   for k in range(start, min(n, start + 128))])
    print("seeded %d instances in %.1f s" % (n, time.monotonic() - t0))
    t1 = time.monotonic()
    wg = h.waygate_etcd(etcd, wait_ready=False)
    line = wait_until(lambda: re.search(r'etcd list applied.*', wg.stderr_text()), 300,
                      "the initial list", interval=0.01)
    took = time.monotonic() - t1
    time.sleep(1.0)
    print("initial sync of %d instances: %.2f s to publish (%s); RSS %.0f MiB" % (
        n, took, line.group(0)[:120], wg.rss_kib() / 1024.0))
    wg.proc.stop()


with EtcdHarness() as h:
    etcd = h.etcd(extra=["--quota-backend-bytes", str(4 << 30)])
    propagation(h, etcd)
    initial_sync(h, etcd)
