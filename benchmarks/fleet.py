#!/usr/bin/env python3
"""Fleet benchmark (not a test): R replicas x N instances on a 3-member etcd
cluster, with and without health_check.shared.

    python3 benchmarks/fleet.py [--build DIR] [--replicas 20] [--instances 1000]
                                [--backends 10] [--seconds 20] [--zones 2]

Method: one real waygate process per replica (workers: 1, its own zone,
fleet: with ttl 10s), all on one 3-member etcd cluster (tmpfs). The N
instances are registry records spread over a few http wg_backend processes
(N / backends ids per backend port: identity is (id, address), so each id is
its own instance and is probed on its own). Probes: http, interval 1s. For
each mode the replicas start, every instance gets healthy on every replica,
then for --seconds we measure:
  - backend probe rate: the /stats request counters of the backends;
  - etcd CPU: utime+stime of the three members (from /proc);
  - etcd bytes sent to clients per second (etcd_network_client_grpc_sent_bytes_total,
    summed over members: the JSON gateway is a gRPC client of its member);
  - watchers (etcd_debugging_mvcc_watcher_total) and watch streams.
Reported as one line per mode; docs/operations.md extrapolates them.
"""

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests", "integration"))

ap = argparse.ArgumentParser()
ap.add_argument("--build", default=os.environ.get("WAYGATE_BUILD", "build"))
ap.add_argument("--replicas", type=int, default=20)
ap.add_argument("--instances", type=int, default=1000)
ap.add_argument("--backends", type=int, default=10)
ap.add_argument("--seconds", type=float, default=20)
ap.add_argument("--zones", type=int, default=2)
args = ap.parse_args()
os.environ["WAYGATE_BUILD"] = os.path.abspath(args.build)

from etcdlib import EtcdHarness                     # noqa: E402
from wglib import cpu_seconds, http_request, wait_until  # noqa: E402


def etcd_metric(cluster, name):
    total = 0.0
    for k in range(3):
        for line in cluster[k].metrics().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
    return total


def requests(backends):
    return sum(json.loads(http_request(b.port, path="/stats", timeout=5).body)["requests"]
               for b in backends)


def healthy_everywhere(wgs, n):
    for w in wgs:
        svc = w.status()["services"].get("users", {})
        got = sum(1 for i in svc.get("instances", []) if i["health"] == "healthy")
        if got < n:
            LAST[0] = "%s: %d of %d healthy" % (w.proc.name, got, n)
            return False
    return True


LAST = [""]


def run(shared):
    with EtcdHarness() as h:
        cluster = h.etcd_cluster(3)
        c = cluster.client()
        backends = [h.backend("http", name="b%d" % k) for k in range(args.backends)]
        items = []
        for i in range(args.instances):
            b = backends[i % len(backends)]
            items.append(("/services/users/i%05d" % i,
                          json.dumps({"address": "127.0.0.1", "port": b.port})))
        for k in range(0, len(items), 128):
            c.txn_put(items[k:k + 128])
        hc = {"type": "http", "interval": "1s", "timeout": "500ms", "shared": shared}
        wgs = []
        for r in range(args.replicas):
            wgs.append(h.waygate_etcd(cluster, zone="z%d" % (r % args.zones), workers=1,
                                      services={"users": {"health_check": hc}},
                                      fleet={"name": "r%d" % r, "ttl": "10s"}))
        try:
            wait_until(lambda: healthy_everywhere(wgs, args.instances), 120,
                       "every instance healthy on every replica", interval=0.5)
        except AssertionError:
            raise AssertionError(LAST[0])
        time.sleep(2)
        pids = [cluster[k].proc.pid for k in range(3)]
        cpu0 = sum(cpu_seconds(p) for p in pids)
        sent0 = etcd_metric(cluster, "etcd_network_client_grpc_sent_bytes_total")
        req0, t0 = requests(backends), time.monotonic()
        wg_cpu0 = sum(w.cpu_seconds() for w in wgs)
        time.sleep(args.seconds)
        dt = time.monotonic() - t0
        probes = (requests(backends) - req0 - len(backends)) / dt
        cpu = (sum(cpu_seconds(p) for p in pids) - cpu0) / dt
        wg_cpu = (sum(w.cpu_seconds() for w in wgs) - wg_cpu0) / dt
        sent = (etcd_metric(cluster, "etcd_network_client_grpc_sent_bytes_total") - sent0) / dt
        watchers = etcd_metric(cluster, "etcd_debugging_mvcc_watcher_total")
        streams = etcd_metric(cluster, "etcd_debugging_mvcc_watch_stream_total")
        print("shared=%-5s replicas=%d instances=%d: backend probes %.0f/s (%.2f per instance "
              "per s), etcd CPU %.1f%% (3 members), etcd sent %.1f KB/s, watchers %d, "
              "watch streams %d, waygate CPU %.1f%% (all replicas)"
              % (shared, args.replicas, args.instances, probes, probes / args.instances,
                 cpu * 100, sent / 1000, watchers, streams, wg_cpu * 100), flush=True)


run(False)
run(True)
