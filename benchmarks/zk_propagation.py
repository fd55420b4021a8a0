#!/usr/bin/env python3
"""ZooKeeper registry benchmark (not a test): propagation and initial sync.

    python3 benchmarks/zk_propagation.py [--build DIR] [--creates N] [--instances N,N]

1. Propagation: waygate follows a real ZooKeeper 3.8 (tests/integration/zklib.py:
   tmpfs data dir, forceSync=no) with a TCP listener over one service, health
   checks off. Each round is one kazoo transaction that deletes the service's
   only node and creates a new one (a new id) on the other of two name-mode
   backends; then connections go through waygate in a loop until the new
   backend answers. Reported: from just before the transaction is sent to
   the first connection routed to the new instance, p50/p99/max over N
   creates (default 500); and waygate's own waygate_registry_propagation_seconds
   (result handed over by the C client -> snapshot published). A create costs
   waygate two reads after the event (children, then data).
2. Initial sync: N instances (default 10,000 and 100,000, 100 services)
   created with kazoo, then a fresh waygate starts; reported: time from exec
   to the "zookeeper list applied" log line, and waygate's RSS afterwards.
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
ap.add_argument("--creates", type=int, default=500)
ap.add_argument("--instances", default="10000,100000")
args = ap.parse_args()
os.environ["WAYGATE_BUILD"] = os.path.abspath(args.build)

from propagation import report, time_until_routed  # noqa: E402  (needs WAYGATE_BUILD first)
from wglib import name_via, wait_until   # noqa: E402
from zklib import ZkHarness              # noqa: E402


def node(b):
    return ('{"address":"127.0.0.1","port":%d}' % b.port).encode()


def propagation(h, zk):
    c = h.kazoo(zk)
    a, b = h.backend("name", name="a"), h.backend("name", name="b")
    backends = [a, b]
    c.create("/services/users/x0", node(a), makepath=True)
    wg = h.waygate_zk(zk, log={"level": "debug", "access_log": "off"})
    wait_until(lambda: name_via(wg.port()) == "a", 10, "first instance")
    times = []
    for k in range(1, args.creates + 1):
        target = backends[k % 2]
        t = c.transaction()
        t.delete("/services/users/x%d" % (k - 1))
        t.create("/services/users/x%d" % k, node(target))
        times.append(time_until_routed(t.commit, wg.port(), target.name))
    inner = [float(x) / 1000 for x in
             re.findall(r"zookeeper change applied.*propagation_us=([0-9.]+)", wg.stderr_text())]
    report("create -> first routed connection, %d creates" % len(times),
           [t * 1000 for t in times], inner, "result handed over -> snapshot published")
    wg.proc.stop()


def initial_sync(h, zk, n):
    c = h.kazoo(zk)
    t0 = time.monotonic()
    root = "/sync%d" % n
    for s in range(100):
        c.create("%s/svc%d" % (root, s), makepath=True)
    pending = []
    for k in range(n):
        pending.append(c.create_async(
            "%s/svc%d/i%06d" % (root, k % 100, k),
            ('{"address":"10.%d.%d.%d","port":8080}'
             % (k >> 16 & 255, k >> 8 & 255, k & 255)).encode()))
        if len(pending) >= 2000:
            for p in pending:
                p.get(timeout=60)
            pending = []
    for p in pending:
        p.get(timeout=60)
    print("seeded %d instances in %.1f s" % (n, time.monotonic() - t0))
    t1 = time.monotonic()
    wg = h.waygate_zk(zk, root=root, wait_ready=False)
    line = wait_until(lambda: re.search(r'zookeeper list applied.*', wg.stderr_text()), 300,
                      "the initial list", interval=0.01)
    took = time.monotonic() - t1
    time.sleep(1.0)
    print("initial sync of %d instances: %.2f s to publish (%s); RSS %.0f MiB" % (
        n, took, line.group(0)[:120], wg.rss_kib() / 1024.0))
    wg.proc.stop()


with ZkHarness() as h:
    zk = h.zookeeper()
    propagation(h, zk)
    for n in (int(x) for x in args.instances.split(",") if x):
        initial_sync(h, zk, n)
