"""Shared health (issue 21, DESIGN §18): with health_check.shared one replica
per zone probes and publishes transitions in etcd; the others apply them.
6 replicas in 2 zones on a 3-member cluster, http backends counting the
probes they receive (/stats requests)."""

import json
import time

from etcdlib import EtcdHarness, TcpCut
from wglib import http_request, slack, wait_until

INTERVAL, DOWN, TTL = 0.2, 2, 3


def stats_requests(backend):
    r = http_request(backend.port, path="/stats", timeout=5)
    return json.loads(r.body)["requests"]


def set_health(backend, code):
    r = http_request(backend.port, path="/control/health?status=%d" % code)
    assert r.status == 200, r


def health(wg, iid):
    for i in wg.status()["services"]["users"]["instances"]:
        if i["id"] == iid:
            return i["health"]
    return None


def role(wg):
    return (wg.status().get("shared_health") or {}).get("role")


def probe_rate(backend, seconds=2.0):
    """Probes per interval the backend receives, measured over `seconds`."""
    n0, t0 = stats_requests(backend), time.monotonic()
    time.sleep(seconds)
    n1, t1 = stats_requests(backend), time.monotonic()
    return (n1 - n0 - 1) / ((t1 - t0) / INTERVAL)


def start(h, endpoints, name, zone):
    hc = {"type": "http", "interval": "%dms" % (INTERVAL * 1000), "timeout": "200ms",
          "healthy_threshold": 2, "unhealthy_threshold": DOWN, "shared": True}
    return h.waygate_etcd(endpoints, zone=zone, workers=1, services={"users": {"health_check": hc}},
                          fleet={"name": name, "ttl": "%ds" % TTL}, backoff=("50ms", "500ms"))


def test_one_prober_per_zone_transitions_takeover_and_partition():
    with EtcdHarness() as h:
        cluster = h.etcd_cluster(3)
        c = cluster.client()
        a = h.backend("http", name="a")
        b = h.backend("http", name="b")
        c.txn_put([("/services/users/a", json.dumps({"address": "127.0.0.1", "port": a.port})),
                   ("/services/users/b", json.dumps({"address": "127.0.0.1", "port": b.port}))])
        # r5 reaches etcd only through a cuttable proxy.
        cut = TcpCut(cluster[0].client_port)
        wgs = [start(h, cluster, "r%d" % k, "za" if k < 3 else "zb") for k in range(5)]
        wgs.append(start(h, [cut.url], "r5", "zb"))
        za, zb = wgs[:3], wgs[3:]

        def roles(group):
            return sorted(role(w) for w in group)
        for group in (za, zb):
            wait_until(lambda: roles(group) == ["follower", "follower", "prober"], slack(10),
                       "one prober and two followers per zone")
        for w in wgs:
            wait_until(lambda: health(w, "a") == "healthy" and health(w, "b") == "healthy",
                       slack(5), "a and b healthy everywhere")
        # Probe traffic: one replica per zone, not six.
        rate = probe_rate(a)
        print("measured: backend probes per interval with shared: %.2f (2 zones, 6 replicas)"
              % rate)
        assert 1.4 <= rate <= 2.6, ("probes per interval", rate)

        # A flipped /health reaches every replica of both zones within
        # interval x threshold + 100 ms (+ one interval of phase, + margin).
        set_health(a, 500)
        t0 = time.monotonic()
        for w in wgs:
            wait_until(lambda: health(w, "a") == "unhealthy",
                       slack(INTERVAL * DOWN + 0.1 + INTERVAL + 1.0), "a unhealthy everywhere")
        took = time.monotonic() - t0
        print("measured: /health 500 -> unhealthy on all 6 replicas after %.3fs "
              "(interval %.1fs x threshold %d)" % (took, INTERVAL, DOWN))
        followers = [w for w in za if role(w) == "follower"]
        assert any("shared by the zone's prober" in w.stderr_text() for w in followers)

        # Kill zone za's prober: a follower takes over within the lease TTL,
        # starting from the published states (a stays unhealthy).
        prober = [w for w in za if role(w) == "prober"][0]
        rest = [w for w in za if w is not prober]
        prober.proc.kill()
        t0 = time.monotonic()
        wait_until(lambda: "prober" in [role(w) for w in rest], TTL + slack(2),
                   "a za follower takes over")
        print("measured: prober SIGKILLed -> successor elected after %.2fs (ttl %ds)"
              % (time.monotonic() - t0, TTL))
        assert [health(w, "a") for w in rest] == ["unhealthy", "unhealthy"]
        set_health(a, 200)
        for w in rest + zb:
            wait_until(lambda: health(w, "a") == "healthy", slack(5), "a healthy again")

        # Cut r5 from etcd: it probes by itself (b's probe rate goes up by one
        # replica) and sees b fail through its own probes.
        cut.cut()
        wait_until(lambda: role(wgs[5]) == "alone", TTL + slack(3), "r5 probes alone")
        rate = probe_rate(b)
        print("measured: backend probes per interval with one replica cut off: %.2f" % rate)
        assert 2.4 <= rate <= 3.6, ("r5 probes too", rate)
        set_health(b, 500)
        wait_until(lambda: health(wgs[5], "b") == "unhealthy", slack(3), "r5 sees b down")
        cut.close()


def test_states_probed_before_the_election_are_published():
    """100 instances (more than the prober probes at once: their first
    probes are spread over one interval, across the election): whatever the
    prober found before it was elected is published too, so no follower
    keeps an instance unknown."""
    with EtcdHarness() as h:
        etcd = h.etcd()
        c = etcd.client()
        a = h.backend("http", name="a")
        c.txn_put([("/services/users/i%03d" % k,
                    json.dumps({"address": "127.0.0.1", "port": a.port})) for k in range(100)])
        wgs = [start(h, etcd, "r%d" % k, "za") for k in range(2)]

        def healthy(w):
            return sum(1 for i in w.status()["services"]["users"]["instances"]
                       if i["health"] == "healthy")
        wait_until(lambda: sorted(role(w) for w in wgs) == ["follower", "prober"], slack(10),
                   "a prober and a follower")
        for w in wgs:
            wait_until(lambda: healthy(w) == 100, slack(10), "100 healthy on %s" % w.proc.name)

        def published():
            return len([k for k in c.get_prefix("/waygate/health/za/")
                        if not k.endswith("/_prober")])
        wait_until(lambda: published() == 100, slack(5), "100 states published")
