#!/usr/bin/env python3
"""etcd registry benchmark (not a test): propagation and initial sync.

    python3 benchmarks/etcd_propagation.py [--build DIR] [--puts N] [--instances N]
                                           [--services N]

0. N instances (default 100,000) in --services services (default 10,000)
   are seeded with transactions of 128 puts; they stay registered for
   everything below.
1. Propagation: waygate watches a real etcd (tmpfs data dir, a TCP listener
   over one more service with health checks off), with the big registry
   loaded (it waits for its initial list first). Each round writes one key with
   the v3 JSON gateway so that the service's only instance moves to the
   other of two name-mode backends, then connects through waygate in a loop
   until the new backend answers. Reported: time from just before the put
   is sent to the first connection routed to the new instance, p50/p99/max
   over N puts (default 500); and waygate's own
   waygate_registry_propagation_seconds (socket read -> snapshot published).
2. etcd alone: the same paged range loop waygate runs (pages of 10,000
   keys at a pinned revision), timed from Python: etcd's own time to serve
   the listing (JSON parse of each page included).
3. Initial sync: a fresh waygate starts; reported: time from exec to the
   "etcd list applied" log line, waygate's own split of it (list_ms: first
   page requested -> last page read, decode_ms: pages decoded meanwhile,
   publish_ms: last page read -> snapshot published), and its RSS after.
"""

import argparse
import http.client
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
ap.add_argument("--services", type=int, default=10000)
ap.add_argument("--small", type=int, default=10,
                help="propagation with this many instances first, in the same run (0: no)")
ap.add_argument("--no-propagation", action="store_true", help="seed and sync only")
args = ap.parse_args()
os.environ["WAYGATE_BUILD"] = os.path.abspath(args.build)

from etcdlib import EtcdHarness, b64, prefix_end, unb64   # noqa: E402  (needs WAYGATE_BUILD first)
from propagation import pct, report, time_until_routed   # noqa: E402
from wglib import name_via, wait_until   # noqa: E402


def histogram(wg):
    _, body = wg.admin("/metrics")
    lines = [l for l in body.splitlines() if l.startswith("waygate_registry_propagation_seconds")]
    return lines


WATCHER = """
import base64, http.client, json, sys, time
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=3600)
key = base64.b64encode(sys.argv[2].encode()).decode()
c.request("POST", "/v3/watch", json.dumps({"create_request": {"key": key}}),
          {"Content-Type": "application/json"})
r = c.getresponse()
print("ready", flush=True)
while True:
    line = r.readline()
    if not line:
        break
    t = time.perf_counter()
    for ev in json.loads(line).get("result", {}).get("events", []):
        print(ev["kv"]["mod_revision"], t, flush=True)
"""


def propagation(h, etcd, registered, stop_waygate=True):
    """put -> routed, split: the put's own round trip (JSON gateway, raft,
    commit), etcd delivering the event to a watcher (another process with its
    own watch on the key: etcd's share), and the rest (waygate reading it,
    publishing, a worker picking it up, the client's connection loop)."""
    import subprocess
    from urllib.parse import urlparse
    c = etcd.client()
    a, b = h.backend("name", name="a"), h.backend("name", name="b")
    backends = [a, b]
    c.put("/services/users/x", "127.0.0.1:%d" % a.port)
    watcher = subprocess.Popen([sys.executable, "-c", WATCHER, str(urlparse(etcd.url).port),
                                "/services/users/x"], stdout=subprocess.PIPE, text=True)
    assert watcher.stdout.readline().strip() == "ready"
    wg = h.waygate_etcd(etcd, log={"level": "debug", "access_log": "off"})
    wait_until(lambda: re.search(r"etcd list applied", wg.stderr_text()), 300, "the initial list",
               interval=0.05)
    wait_until(lambda: name_via(wg.port()) == "a", 10, "first instance")
    times, puts = [], []
    for k in range(1, args.puts + 1):
        target = backends[k % 2]
        rec = {}

        def write():
            rec["t0"] = time.perf_counter()
            rec["rev"] = c.put("/services/users/x", "127.0.0.1:%d" % target.port)
            rec["t1"] = time.perf_counter()
        times.append(time_until_routed(write, wg.port(), target.name))
        puts.append(rec)
    time.sleep(0.2)
    watcher.kill()
    seen = {}
    for line in watcher.stdout.read().splitlines():
        rev, t = line.split()
        seen[int(rev)] = float(t)
    put_ms = [(p["t1"] - p["t0"]) * 1000 for p in puts]
    etcd_ms = [(seen[p["rev"]] - p["t0"]) * 1000 for p in puts if p["rev"] in seen]
    rest_ms = [t * 1000 - e for t, e in zip(times, etcd_ms)]
    inner = [float(x) / 1000 for x in
             re.findall(r"etcd watch response applied.*propagation_us=([0-9.]+)", wg.stderr_text())]
    report("with %d instances registered, put -> first routed connection, %d puts"
           % (registered, len(times)), [t * 1000 for t in times], inner,
           "watch response read -> snapshot published")
    print("  etcd: put round trip (gateway + raft + commit) p50 %.2f ms, p99 %.2f ms; "
          "put sent -> event at another watcher p50 %.2f ms, p99 %.2f ms; "
          "the rest (waygate + the client's connect loop) p50 %.2f ms, p99 %.2f ms"
          % (pct(put_ms, 50), pct(put_ms, 99), pct(etcd_ms, 50), pct(etcd_ms, 99),
             pct(rest_ms, 50), pct(rest_ms, 99)))
    for line in histogram(wg)[-2:]:
        print("  " + line)
    if stop_waygate:
        wg.proc.stop()
        return None
    return wg


def admin_get(port, path, timeout=300):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, len(r.read())
    finally:
        conn.close()


FETCH = """
import http.client, sys, time
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=300)
t = time.perf_counter()
c.request("GET", sys.argv[2])
r = c.getresponse()
n = 0
while True:
    b = r.read(1 << 20)
    if not b:
        break
    n += len(b)
print(r.status, n, time.perf_counter() - t)
"""


def admin_stalls(wg):
    """/status and /metrics with the big registry: one streams to another
    process while this one asks /live in a loop; the longest answer bounds
    how long the control thread was kept from its loop."""
    import subprocess
    for path in ("/status", "/metrics", "/status?service=svc4242"):
        base = []
        for _ in range(50):
            t = time.perf_counter()
            admin_get(wg.admin_port, "/live", timeout=10)
            base.append(time.perf_counter() - t)
        child = subprocess.Popen([sys.executable, "-c", FETCH, str(wg.admin_port), path],
                                 stdout=subprocess.PIPE, text=True)
        lat = []
        while child.poll() is None:
            t = time.perf_counter()
            admin_get(wg.admin_port, "/live", timeout=10)
            lat.append(time.perf_counter() - t)
        code, size, took = child.stdout.read().split()
        ms = [x * 1000 for x in lat]
        steps = re.findall(r'admin reply streamed\" uri="%s" bytes=\d+ longest_step_ms=([0-9.]+)'
                           % re.escape(path), wg.stderr_text())
        print("admin %s: HTTP %s, %.1f MB in %.2f s; longest step on the control thread %s ms; "
              "/live meanwhile (%d asks): p50 %.2f ms, max %.2f ms (idle: p50 %.2f ms, max %.2f ms)"
              % (path, code, int(size) / 1e6, float(took), steps[-1] if steps else "?", len(ms),
                 pct(ms, 50) if ms else 0, max(ms) if ms else 0,
                 pct([x * 1000 for x in base], 50), max(base) * 1000))


TXN_OPS = 1024          # etcd runs with --max-txn-ops TXN_OPS (its default: 128)


def seed(etcd, n):
    """Keys i000000.. up to n (a second call adds the ones beyond the first),
    transactions of TXN_OPS puts from 4 threads: 1,000,000 keys in about a
    minute (one 128-put transaction at a time took 6 s per 100,000)."""
    import threading
    t0 = time.monotonic()
    starts = list(range(0, n, TXN_OPS))
    errors = []

    def run(part):
        c = etcd.client(timeout=120)
        try:
            for start in part:
                c.txn_put([(key(k), '{"address":"10.%d.%d.%d","port":8080}'
                            % (k >> 16 & 255, k >> 8 & 255, k & 255))
                           for k in range(start, min(n, start + TXN_OPS))])
        except Exception as e:       # reported below: a short seed is no benchmark
            errors.append(e)
    threads = [threading.Thread(target=run, args=(starts[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    print("seeded %d instances in %d services in %.1f s" % (n, min(n, args.services),
                                                            time.monotonic() - t0))


def key(k):
    return "/services/svc%d/i%06d" % (k % args.services, k)


def etcd_listing(etcd):
    """The paged range loop waygate runs, without waygate: etcd's own time.
    Each page is read whole, but only its end is looked at (the last key,
    `more`), so that Python's JSON parse of ~2 MiB pages is not counted as
    etcd's time."""
    import json
    import urllib.request
    prefix = "/services/"
    t0 = time.monotonic()
    rev, key, keys, pages = 0, prefix, 0, 0
    key_re = re.compile(rb'"key":"([^"]*)"')
    while True:
        body = {"key": b64(key), "range_end": b64(prefix_end(prefix)), "limit": "10000"}
        if rev:
            body["revision"] = str(rev)
        req = urllib.request.Request(etcd.url + "/v3/kv/range", data=json.dumps(body).encode(),
                                     method="POST", headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as r:
            raw = r.read()
        pages += 1
        if not rev:
            rev = int(re.search(rb'"revision":"(\d+)"', raw).group(1))
        n = raw.count(b'"create_revision"')
        keys += n
        if not n or b'"more":true' not in raw:
            break
        last = None
        for m in key_re.finditer(raw, max(0, len(raw) - 4096)):
            last = m.group(1)
        key = unb64(last.decode()) + "\0"
    took = time.monotonic() - t0
    print("etcd alone, paged range of %d keys (%d pages): %.2f s" % (keys, pages, took))
    return took


def initial_sync(h, etcd, etcd_s):
    t1 = time.monotonic()
    wg = h.waygate_etcd(etcd, wait_ready=False)
    line = wait_until(lambda: re.search(r'etcd list applied.*', wg.stderr_text()), 900,
                      "the initial list", interval=0.01)
    took = time.monotonic() - t1
    time.sleep(1.0)
    fields = dict(re.findall(r"(list_ms|decode_ms|publish_ms|longest_step_ms|pages)=([0-9.]+)",
                             line.group(0)))
    with open("/proc/%d/status" % wg.proc.pid) as f:
        hwm = int(re.search(r"VmHWM:\s+(\d+)", f.read()).group(1))
    print("initial sync of %d instances: %.2f s from exec to published; list %s ms (decode %s ms "
          "of it, longest step %s ms), last page -> published %s ms; etcd alone %.2f s "
          "(waygate's share of exec -> published: %.2f s); RSS %.0f MiB (peak %.0f MiB)"
          % (args.instances, took, fields.get("list_ms"), fields.get("decode_ms"),
             fields.get("longest_step_ms"), fields.get("publish_ms"), etcd_s, took - etcd_s,
             wg.rss_kib() / 1024.0, hwm / 1024.0))
    wg.proc.stop()


with EtcdHarness() as h:
    etcd = h.etcd(extra=["--quota-backend-bytes", str(8 << 30), "--max-txn-ops", str(TXN_OPS),
                         "--max-request-bytes", str(8 << 20)])
    if not args.no_propagation and args.small:
        seed(etcd, args.small - 1)          # + /services/users/x
        propagation(h, etcd, args.small)
    seed(etcd, args.instances)
    if not args.no_propagation:
        wg = propagation(h, etcd, args.instances + 1, stop_waygate=False)
        admin_stalls(wg)
        wg.proc.stop()
    initial_sync(h, etcd, etcd_listing(etcd))
