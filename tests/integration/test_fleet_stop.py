"""Stopping a fleet replica (DESIGN §18): SIGTERM exits 0 even when the
teardown is slow, and a graceful stop takes the replica out of the fleet at
once (its lease is revoked) instead of after the TTL."""

import json
import os
import signal
import socket
import time

from etcdlib import EtcdHarness
from wglib import FifoDrain, slack, wait_until


def fleet_names(wg):
    return sorted(r["name"] for r in (wg.status().get("fleet") or {}).get("replicas", []))


def shared_hc():
    return {"users": {"health_check": {"type": "tcp", "interval": "100ms", "timeout": "200ms",
                                       "healthy_threshold": 1, "unhealthy_threshold": 1,
                                       "shared": True}}}


def test_slow_teardown_with_a_fleet_exits_0():
    """The access log is a FIFO its reader stops reading: after `stopped`
    the teardown waits for the writer, well past the control thread's
    100 ms tick. The etcd registry's free then runs the loop once more;
    the tick ran there and read the freed workers (ASan:
    heap-use-after-free in check_stop; Release: a rare SIGSEGV)."""
    with EtcdHarness() as h:
        etcd = h.etcd()
        b = h.backend("name", name="a")
        etcd.client().put("/services/users/a",
                          json.dumps({"address": "127.0.0.1", "port": b.port}))
        fifo = h.path("fifo")
        os.mkfifo(fifo)
        rfd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)   # lets waygate open it
        reader = None
        try:
            wg = h.waygate_etcd(etcd, workers=1, services=shared_hc(),
                                fleet={"name": "r0", "ttl": "3s"},
                                log={"level": "info", "access_log": fifo})
            wait_until(lambda: fleet_names(wg) == ["r0"], slack(10), "registered")
            for _ in range(600):            # ~200 bytes a line: more than the pipe's 64 KiB
                with socket.create_connection(("127.0.0.1", wg.port()), timeout=5) as s:
                    s.settimeout(5)
                    s.recv(16)
            wg.proc.signal(signal.SIGTERM)
            wait_until(lambda: '"stopped"' in wg.proc.stderr_text() or None, slack(10),
                       "stopped logged")
            time.sleep(0.5)                 # the teardown waits on the full pipe
            reader = FifoDrain(rfd)
            assert wg.proc.wait(slack(10)) == 0, wg.proc.stderr_text()[-3000:]
        finally:
            if reader:
                reader.stop()
            os.close(rfd)


def role(wg):
    return (wg.status().get("shared_health") or {}).get("role")


def test_sigterm_revokes_the_lease_the_others_drop_it_at_once():
    """TTL 60 s: a SIGTERMed replica revokes its lease while it drains, so
    its key and its prober key go at once; the other replica drops it and
    takes over probing long before the TTL could have expired."""
    with EtcdHarness() as h:
        etcd = h.etcd()
        c = etcd.client()
        b = h.backend("name", name="a")
        c.put("/services/users/a", json.dumps({"address": "127.0.0.1", "port": b.port}))
        wgs = [h.waygate_etcd(etcd, workers=1, services=shared_hc(),
                              fleet={"name": "r%d" % k, "ttl": "60s"}) for k in range(2)]
        for wg in wgs:
            wait_until(lambda: fleet_names(wg) == ["r0", "r1"], slack(10), "both listed")
        wait_until(lambda: sorted(role(wg) for wg in wgs) == ["follower", "prober"],
                   slack(10), "a prober elected")
        gone, stays = wgs if role(wgs[0]) == "prober" else wgs[::-1]
        name = "r0" if gone is wgs[0] else "r1"
        t0 = time.monotonic()
        assert gone.proc.stop() == 0
        assert "fleet: left, lease revoked" in gone.proc.stderr_text()
        assert "/waygate/replicas/" + name not in c.get_prefix("/waygate/replicas/")
        wait_until(lambda: name not in fleet_names(stays), slack(10), "dropped by the other")
        wait_until(lambda: role(stays) == "prober", slack(10), "the other probes")
        # The stopping replica must not campaign again without a lease: such
        # a prober key would outlive it and nobody could take over.
        keys = c.get_prefix("/waygate/health/")
        assert json.loads(keys["/waygate/health//_prober"])["name"] == ("r1" if name == "r0"
                                                                       else "r0"), keys
        took = time.monotonic() - t0
        print("measured: a stopped replica dropped and probing taken over after %.2fs "
              "(ttl 60s)" % took)
        assert took < 60


def test_sigterm_with_etcd_down_gives_up_the_revoke_and_exits_0():
    with EtcdHarness() as h:
        etcd = h.etcd()
        wg = h.waygate_etcd(etcd, workers=1, fleet={"name": "r0", "ttl": "60s"})
        wait_until(lambda: fleet_names(wg) == ["r0"], slack(10), "registered")
        etcd.stop()
        assert wg.proc.stop(slack(10)) == 0
        assert "lease could not be revoked" in wg.proc.stderr_text()
