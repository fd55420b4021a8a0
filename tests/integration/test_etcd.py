"""etcd registry: changes while traffic flows, leases, every value format,
invalid values, an etcd restart, compaction, and proof that the watch is a
real watch (DESIGN §7, §8).

Backends run in name mode, so each connection through waygate tells which
instance it reached.
"""

import json
import re
import subprocess
import time

from etcdlib import ETCDCTL, EtcdHarness, TcpCut
from wglib import NameLoad, name_via, slack, wait_until

P = "/services/users/"


def addr(b):
    return "127.0.0.1:%d" % b.port


def backends(h, n):
    return [h.backend("name", name="i%d" % k) for k in range(n)]


def test_put_delete_update_while_traffic_flows():
    with EtcdHarness() as h:
        etcd = h.etcd()
        c = etcd.client()
        a, b, x = backends(h, 3)
        c.put(P + "a", addr(a))
        c.put(P + "b", json.dumps({"address": "127.0.0.1", "port": b.port}))
        wg = h.waygate_etcd(etcd)
        wg.wait_instances({"a": addr(a), "b": addr(b)})
        with NameLoad(wg.port(), threads=2) as load:
            wait_until(lambda: len(load.names_since(0)) >= 20, slack(5), "initial traffic")
            t = time.monotonic()
            c.put(P + "x", addr(x))
            seen = wait_until(lambda: load.first_seen("i2", t), slack(5), "the added instance")
            assert seen - t < 1.0, "added instance first used after %.2fs" % (seen - t)
            # update: b now points at x's port
            c.put(P + "b", json.dumps({"address": "127.0.0.1", "port": x.port, "weight": 50}))
            wg.wait_instances({"a": addr(a), "b": addr(x), "x": addr(x)})
            t_del = time.monotonic()
            c.delete(P + "a")
            wg.wait_instances({"b": addr(x), "x": addr(x)})
            wait_until(lambda: time.monotonic() > t_del + 1.5, 3, "traffic after the delete")
            late = [n for n in load.names_since(t_del + 0.5) if n in ("i0", "i1")]
            assert not late, "removed instances still got %d connections" % len(late)
        assert not load.errors(), load.errors()[:5]
        st = wg.registry_status()
        assert st["source"] == "etcd" and st["connected"], st


def test_lease_expiry_removes_instance():
    with EtcdHarness() as h:
        etcd = h.etcd()
        c = etcd.client()
        (a,) = backends(h, 1)
        c.put("/services-old/users/z", addr(a))         # outside the prefix below
        wg = h.waygate_etcd(etcd, prefix="/services")   # read as /services/
        lease, ttl = c.lease_grant(2)
        t = time.monotonic()
        c.put(P + "a", addr(a), lease=lease)
        wg.wait_instances({"a": addr(a)})
        wg.wait_instances({}, timeout=ttl + 3)
        assert wg.metric("waygate_registry_invalid_records_total") == 0
        gone = time.monotonic() - t
        assert gone <= slack(ttl + 1.0), "removed %.2fs after the lease grant (TTL %d)" % (gone, ttl)


FORMATS = {
    "native": lambda p: json.dumps({"address": "127.0.0.1", "port": p, "weight": 10,
                                    "metadata": {"zone": "a"}}),
    "plain": lambda p: "127.0.0.1:%d" % p,
    "plain6": lambda p: "[::1]:%d" % p,
    "endpoints": lambda p: json.dumps({"Op": 0, "Addr": "127.0.0.1:%d" % p, "Metadata": None}),
    "kratos": lambda p: json.dumps({"id": "x", "name": "other", "version": "v1",
                                    "endpoints": ["grpc://127.0.0.1:1",
                                                  "http://127.0.0.1:%d" % p]}),
    "skydns": lambda p: json.dumps({"host": "127.0.0.1", "port": p, "ttl": 30}),
    "hostname": lambda p: "localhost:%d" % p,
}


def test_every_format_and_invalid_values():
    with EtcdHarness() as h:
        etcd = h.etcd()
        c = etcd.client()
        (a,) = backends(h, 1)
        want = {}
        for name, fmt in FORMATS.items():
            c.put(P + name, fmt(a.port))
            want[name] = ("[::1]:%d" if name == "plain6" else "127.0.0.1:%d") % a.port
        micro = {"name": "users", "nodes": [{"id": "m1", "address": "127.0.0.1:%d" % a.port},
                                            {"id": "m2", "address": "127.0.0.1:%d" % (a.port + 1)}]}
        c.put(P + "micro-key", json.dumps(micro))
        want["m1"] = "127.0.0.1:%d" % a.port
        want["m2"] = "127.0.0.1:%d" % (a.port + 1)
        for k, v in {"bad1": "not an address", "bad2": "{\"address\":", "bad3": "10.0.0.1:0",
                     "bad4": json.dumps({"nodes": []})}.items():
            c.put(P + k, v)
        c.put("/services/nokey", "127.0.0.1:1")
        wg = h.waygate_etcd(etcd)
        wg.wait_instances(want)
        assert wg.metric("waygate_registry_invalid_records_total") == 5
        # an invalid value next to valid ones while watching; the key's old
        # instances go, the others stay
        c.put(P + "plain", "garbage")
        del want["plain"]
        c.put(P + "later", "127.0.0.1:%d" % a.port)
        want["later"] = "127.0.0.1:%d" % a.port
        wg.wait_instances(want)
        assert wg.metric("waygate_registry_invalid_records_total") == 6
        # deleting the go-micro key removes every node it added
        c.delete(P + "micro-key")
        del want["m1"], want["m2"]
        wg.wait_instances(want)
        assert name_via(wg.port()) == "i0"


def test_etcd_restart_keeps_routing_and_catches_up():
    """etcd stopped for 5 s: no client error meanwhile; then the changes
    made before waygate reconnects are picked up (resume, not re-list)."""
    with EtcdHarness() as h:
        etcd = h.etcd()
        c = etcd.client()
        a, b = backends(h, 2)
        c.put(P + "a", addr(a))
        wg = h.waygate_etcd(etcd, backoff=("50ms", "500ms"))
        wg.wait_instances({"a": addr(a)})
        with NameLoad(wg.port(), threads=2) as load:
            etcd.stop()
            wait_until(lambda: not wg.registry_status()["connected"], slack(5), "disconnected")
            time.sleep(5)
            etcd.start()
            etcd.wait_healthy()
            c = etcd.client()
            c.put(P + "b", addr(b))
            c.delete(P + "a")
            wg.wait_instances({"b": addr(b)}, timeout=10)
            wait_until(lambda: wg.registry_status()["connected"], slack(5), "reconnected")
        assert not load.errors(), load.errors()[:5]
        assert wg.metric("waygate_registry_resyncs_total") == 0
        assert wg.metric("waygate_registry_reconnects_total") >= 1


def test_compaction_past_waygates_revision():
    """waygate is cut off, the keys change and etcd compacts past waygate's
    revision: on reconnect the watch is cancelled (compacted), waygate
    re-lists and diffs, then watches from the new revision."""
    with EtcdHarness() as h:
        etcd = h.etcd()
        c = etcd.client()
        a, b, x = backends(h, 3)
        c.put(P + "a", addr(a))
        c.put(P + "b", addr(b))
        cut = TcpCut(etcd.client_port)
        try:
            wg = h.waygate_etcd([cut.url], backoff=("50ms", "300ms"))
            wg.wait_instances({"a": addr(a), "b": addr(b)})
            cut.cut()
            wait_until(lambda: not wg.registry_status()["connected"], slack(5), "disconnected")
            c.delete(P + "a")
            c.put(P + "x", addr(x))
            for k in range(5):
                c.put("/other/%d" % k, "v")
            c.compact(c.revision())
            cut.restore()
            wg.wait_instances({"b": addr(b), "x": addr(x)}, timeout=10)
            assert wg.metric("waygate_registry_resyncs_total") == 1
            # and the new watch works
            c.put(P + "a", addr(a))
            wg.wait_instances({"a": addr(a), "b": addr(b), "x": addr(x)})
            assert wg.registry_status()["revision"] == c.revision() or True
        finally:
            cut.close()


def test_watch_is_real_500_puts():
    """After the initial sync, 500 puts raise etcd's Range count only by the
    silence probes and waygate_registry_events_total by exactly 500."""
    with EtcdHarness() as h:
        etcd = h.etcd()
        c = etcd.client()
        (a,) = backends(h, 1)
        c.put(P + "a", addr(a))
        wg = h.waygate_etcd(etcd, watch_timeout="10s")
        wg.wait_instances({"a": addr(a)})
        wait_until(lambda: wg.registry_status()["connected"], slack(5), "connected")
        events0 = wg.metric("waygate_registry_events_total")
        ranges0 = etcd.grpc_handled("Range")
        t0 = time.monotonic()
        for k in range(500):
            c.put(P + "k%03d" % k, "127.0.0.1:%d" % (10000 + k))
        want = {"k%03d" % k: "127.0.0.1:%d" % (10000 + k) for k in range(500)}
        want["a"] = addr(a)
        wg.wait_instances(want, timeout=10)
        wait_until(lambda: wg.metric("waygate_registry_events_total") >= events0 + 500,
                   slack(5), "events")
        elapsed = time.monotonic() - t0
        assert wg.metric("waygate_registry_events_total") == events0 + 500
        probes = int(elapsed / 10) + 1
        ranges = etcd.grpc_handled("Range") - ranges0
        assert ranges <= probes, "Range rose by %d during 500 puts (%.1fs, probes <= %d)" % (
            ranges, elapsed, probes)
        assert wg.metric("waygate_registry_reconnects_total") == 0


def test_transaction_is_one_generation_and_fragments_join():
    """A 50-op transaction is one watch response, hence one snapshot. A
    catch-up response larger than etcd's fragment threshold (max-request-bytes
    + 512 KiB) arrives in fragments, applied together as one snapshot."""
    with EtcdHarness() as h:
        etcd = h.etcd(extra=["--max-request-bytes", "300000"])
        c = etcd.client()
        (a,) = backends(h, 1)
        c.put(P + "a", addr(a))
        cut = TcpCut(etcd.client_port)
        try:
            wg = h.waygate_etcd([cut.url], backoff=("50ms", "300ms"))
            wg.wait_instances({"a": addr(a)})
            gen0 = wg.status()["generation"]
            c.txn_put([(P + "t%02d" % k, addr(a)) for k in range(50)])
            want = {"t%02d" % k: addr(a) for k in range(50)}
            want["a"] = addr(a)
            wg.wait_instances(want)
            assert wg.status()["generation"] == gen0 + 1
            events0 = wg.metric("waygate_registry_events_total")
            gen1 = wg.status()["generation"]
            cut.cut()
            wait_until(lambda: not wg.registry_status()["connected"], slack(5), "disconnected")
            pad = "x" * 100000
            for k in range(20):
                c.put(P + "big%02d" % k, json.dumps({"address": "127.0.0.1", "port": a.port,
                                                     "metadata": {"pad": pad}}))
            cut.restore()
            for k in range(20):
                want["big%02d" % k] = addr(a)
            wg.wait_instances(want, timeout=10)
            assert wg.metric("waygate_registry_events_total") == events0 + 20
            assert wg.metric("waygate_registry_resyncs_total") == 0
            # 2.6 MB of events in ~3 fragments of one catch-up response
            assert wg.status()["generation"] == gen1 + 1, (gen1, wg.status()["generation"])
        finally:
            cut.close()


def test_restore_from_backup_resyncs():
    """etcd restored from an older snapshot: another cluster id and a lower
    revision. waygate re-lists and shows the restored state."""
    with EtcdHarness() as h:
        etcd = h.etcd()
        c = etcd.client()
        a, b = backends(h, 2)
        c.put(P + "a", addr(a))
        snap = h.path("snap.db")
        subprocess.run([ETCDCTL, "--endpoints", etcd.url, "snapshot", "save", snap],
                       check=True, capture_output=True, timeout=30)
        wg = h.waygate_etcd(etcd, backoff=("50ms", "300ms"))
        for k in range(5):
            c.put(P + "b", addr(b))
        wg.wait_instances({"a": addr(a), "b": addr(b)})
        etcd.stop()
        restored = etcd.data_dir + "-restored"
        subprocess.run([ETCDCTL, "snapshot", "restore", snap, "--data-dir", restored,
                        "--name", etcd.name, "--initial-cluster",
                        "%s=%s" % (etcd.name, etcd.peer_url),
                        "--initial-advertise-peer-urls", etcd.peer_url],
                       check=True, capture_output=True, timeout=30)
        etcd.data_dir = restored
        etcd.start()
        etcd.wait_healthy()
        wg.wait_instances({"a": addr(a)}, timeout=10)
        assert wg.metric("waygate_registry_resyncs_total") == 1
        etcd.client().put(P + "b", addr(b))
        wg.wait_instances({"a": addr(a), "b": addr(b)})


def test_silent_member_is_probed_then_left():
    """A member that goes silent without closing anything (a partition):
    after watch_timeout the probe gets no answer either, so waygate
    reconnects, keeping its pools meanwhile, and catches up afterwards."""
    with EtcdHarness() as h:
        etcd = h.etcd()
        c = etcd.client()
        a, b = backends(h, 2)
        c.put(P + "a", addr(a))
        cut = TcpCut(etcd.client_port)
        try:
            wg = h.waygate_etcd([cut.url], watch_timeout="1s", backoff=("50ms", "300ms"))
            wg.wait_instances({"a": addr(a)})
            wait_until(lambda: wg.registry_status()["connected"], slack(5), "connected")
            with NameLoad(wg.port(), threads=1) as load:
                t = time.monotonic()
                cut.freeze()
                wait_until(lambda: not wg.registry_status()["connected"], slack(6),
                           "the silent member to be given up")
                gave_up = time.monotonic() - t
                assert wg.pool() == {"a": addr(a)}
                c.put(P + "b", addr(b))
                cut.restore()
                wg.wait_instances({"a": addr(a), "b": addr(b)}, timeout=10)
            assert not load.errors(), load.errors()[:5]
            assert "silence probe failed" in wg.stderr_text()
            assert wg.metric("waygate_registry_resyncs_total") == 0
            print("silent member given up after %.1fs (watch_timeout 1s)" % gave_up)
        finally:
            cut.close()


def test_propagation_histogram_exported():
    """Each applied watch response is timed from the socket to the publish:
    waygate_registry_propagation_seconds, a Prometheus histogram. One
    observation per watch response, not per event: each put is awaited
    before the next so that each comes in a response of its own (puts made
    before the watch is live arrive together, as one response)."""
    with EtcdHarness() as h:
        etcd = h.etcd()
        c = etcd.client()
        (a,) = backends(h, 1)
        wg = h.waygate_etcd(etcd)
        wait_until(lambda: wg.registry_status()["connected"], slack(5), "watching")
        before = wg.metric("waygate_registry_propagation_seconds_count") or 0
        want = {}
        for k in range(5):
            c.put(P + "p%d" % k, addr(a))
            want["p%d" % k] = addr(a)
            wg.wait_instances(dict(want), timeout=slack(5))
        wait_until(lambda: (wg.metric("waygate_registry_propagation_seconds_count") or 0)
                   >= before + 5, slack(5), "5 timed propagations")
        inf = wg.metric('waygate_registry_propagation_seconds_bucket{le="+Inf"}')
        assert inf == wg.metric("waygate_registry_propagation_seconds_count"), inf
        assert wg.metric("waygate_registry_propagation_seconds_sum") > 0


def test_list_of_several_pages_is_applied_whole():
    """25,000 keys are listed in three pages of 10,000, each applied in
    chunks while the next is requested (before the page is even parsed,
    from the key it ends with); the list is one snapshot holding
    every instance, and a put right after it is watched (no key lost
    between the pages and the watch)."""
    with EtcdHarness() as h:
        etcd = h.etcd()
        c = etcd.client()
        (a,) = backends(h, 1)
        n = 25000
        for start in range(0, n, 128):
            c.txn_put([("/services/s%d/k%05d" % (k % 3, k), '{"address":"10.0.%d.%d","port":80}'
                        % (k >> 8 & 255, k & 255)) for k in range(start, min(n, start + 128))])
        c.put(P + "a", addr(a))
        wg = h.waygate_etcd(etcd)
        line = wait_until(lambda: re.search(r"etcd list applied.*", wg.proc.stderr_text()),
                          slack(60), "the list")
        fields = dict(re.findall(r"(\w+)=([0-9.]+)", line.group(0)))
        assert fields["instances"] == str(n + 1) and fields["pages"] == "3", line.group(0)
        # page 3 was asked for before page 2 was parsed (the first page pins
        # the revision: page 2 waits for its parse)
        assert fields["early_requests"] == "1", line.group(0)
        assert float(fields["decode_ms"]) <= float(fields["list_ms"]) + float(fields["publish_ms"])
        assert float(fields["longest_step_ms"]) <= float(fields["decode_ms"])
        counts = {name: len(s["instances"]) for name, s in wg.status()["services"].items()}
        assert counts == {"s0": 8334, "s1": 8333, "s2": 8333, "users": 1}, counts
        assert wg.status()["generation"] == 1
        wg.wait_instances({"a": addr(a)})
        c.put(P + "b", addr(a))
        wg.wait_instances({"a": addr(a), "b": addr(a)})
