"""Zones and priorities (issue 21, DESIGN §18): instances carry metadata.zone
and priority in the etcd registry; each waygate replica has its own `zone`.
Traffic stays in the replica's zone while the zone's healthy share times
overprovisioning (1.4) covers it, spills the deficit to the other zone in
proportion, all of it when the local zone has nothing healthy; strict never
leaves (closes the connection: the tcp form of a 503). Shares are measured
over connections (name-mode backends) and must match within 5 %.
"""

import json
import time

from etcdlib import EtcdHarness
from wglib import name_via, slack, wait_until

SAMPLES = 2000


def record(backend, zone, priority=None):
    v = {"address": "127.0.0.1", "port": backend.port, "metadata": {"zone": zone}}
    if priority is not None:
        v["priority"] = priority
    return json.dumps(v)


def shares(wg, n=SAMPLES):
    """{backend name: fraction} over n connections, and failures."""
    counts, failed = {}, 0
    for _ in range(n):
        try:
            name = name_via(wg.port(), timeout=5)
        except (OSError, AssertionError):
            failed += 1
            continue
        counts[name] = counts.get(name, 0) + 1
    return {k: v / n for k, v in counts.items()}, failed


def zone_share(s, prefix):
    return sum(v for k, v in s.items() if k.startswith(prefix))


def healthy_count(wg, zone):
    svc = wg.status()["services"].get("users", {})
    return sum(1 for i in svc.get("instances", [])
               if i["zone"] == zone and i["health"] == "healthy")


def start(h, etcd, zone, mode, **kw):
    services = {"users": {"locality": {"mode": mode},
                          "health_check": {"type": "tcp", "interval": "100ms",
                                           "timeout": "200ms", "healthy_threshold": 1,
                                           "unhealthy_threshold": 1}}}
    return h.waygate_etcd(etcd, zone=zone, services=services, workers=1, **kw)


def test_prefer_stays_local_then_spills_in_proportion():
    with EtcdHarness() as h:
        etcd = h.etcd()
        c = etcd.client()
        a = [h.backend("name", name="a%d" % k) for k in range(4)]
        b = [h.backend("name", name="b%d" % k) for k in range(4)]
        c.txn_put([("/services/users/%s" % x.name, record(x, "za")) for x in a] +
                  [("/services/users/%s" % x.name, record(x, "zb")) for x in b])
        wg = start(h, etcd, "za", "prefer")
        wg_b = start(h, etcd, "zb", "prefer")
        wait_until(lambda: healthy_count(wg, "za") == 4 and healthy_count(wg, "zb") == 4,
                   slack(10), "all 8 healthy")
        st = wg.status()["services"]["users"]
        assert {i["zone"] for i in st["instances"]} == {"za", "zb"}, st
        assert st["locality"]["zones"] == {"za": 1.0, "zb": 0.0}, st["locality"]
        s, failed = shares(wg, 200)
        assert failed == 0 and zone_share(s, "a") == 1.0, s
        s, failed = shares(wg_b, 200)
        assert failed == 0 and zone_share(s, "b") == 1.0, ("zone b replica stays in b", s)
        # Fail the local instances one by one: 3/4 x 1.4 >= 1 stays local,
        # then 70 %, 35 %, 0 % local.
        want = [1.0, 0.70, 0.35, 0.0]
        for k, local in enumerate(want):
            a[k].kill()
            wait_until(lambda: healthy_count(wg, "za") == 3 - k, slack(5),
                       "%d healthy in za" % (3 - k))
            s, failed = shares(wg)
            got = zone_share(s, "a")
            print("measured: %d/4 local healthy -> local share %.3f (want %.2f)"
                  % (3 - k, got, local))
            assert failed == 0, (failed, s)
            assert abs(got - local) <= 0.05, ("local share", 3 - k, got, local, s)
            z = wg.status()["services"]["users"]["locality"]["zones"]
            assert abs(z["za"] - local) < 0.001, z
        # The remote spill spreads over zone b's instances.
        for x in b:
            assert s.get(x.name, 0) > 0.15, s
        # /metrics: picks counted per instance zone.
        code, body = wg.admin("/metrics")
        picks = {l.split('zone="')[1].split('"')[0]: float(l.split()[-1])
                 for l in body.splitlines() if l.startswith("waygate_picks_total{")}
        assert picks["za"] > 0 and picks["zb"] > 0, picks


def test_strict_never_leaves_and_priorities_back_up():
    with EtcdHarness() as h:
        etcd = h.etcd()
        c = etcd.client()
        a = [h.backend("name", name="a%d" % k) for k in range(2)]
        b = h.backend("name", name="b0")
        backup = h.backend("name", name="p1")
        c.txn_put([("/services/users/%s" % x.name, record(x, "za")) for x in a] +
                  [("/services/users/b0", record(b, "zb"))])
        wg = start(h, etcd, "za", "strict")
        wait_until(lambda: healthy_count(wg, "za") == 2 and healthy_count(wg, "zb") == 1,
                   slack(10), "all healthy")
        s, failed = shares(wg, 100)
        assert failed == 0 and zone_share(s, "a") == 1.0, s
        for x in a:
            x.kill()
        wait_until(lambda: healthy_count(wg, "za") == 0, slack(5), "za down")
        s, failed = shares(wg, 50)
        assert failed == 50 and not s, ("strict: nothing leaves the zone", s, failed)
        # A local backup (priority 1) takes over what level 0 cannot carry.
        c.put("/services/users/p1", record(backup, "za", priority=1))
        wait_until(lambda: healthy_count(wg, "za") == 1, slack(5), "backup healthy")
        st = wg.status()["services"]["users"]
        assert [i["priority"] for i in st["instances"] if i["id"] == "p1"] == [1], st
        s, failed = shares(wg, 100)
        assert failed == 0 and s == {"p1": 1.0}, s


# ---- the fleet -----------------------------------------------------------------

def fleet_of(wg):
    return wg.status().get("fleet") or {}


def test_fleet_lists_replicas_and_drops_a_killed_one_within_ttl():
    """6 replicas in 2 zones on a 3-member cluster: every replica lists all
    six; the live count per zone (what rate_limit scope: fleet divides by)
    is in /status and waygate_fleet_replicas; a SIGKILLed replica drops
    from every view within its lease TTL; a reload shows in its generation."""
    with EtcdHarness() as h:
        cluster = h.etcd_cluster(3)
        wgs = []
        for k in range(6):
            zone = "za" if k < 3 else "zb"
            wgs.append(h.waygate_etcd(cluster, zone=zone, workers=1,
                                      fleet={"name": "r%d" % k, "ttl": "3s"}))

        def names(wg):
            return sorted(r["name"] for r in fleet_of(wg).get("replicas", []))
        want = ["r%d" % k for k in range(6)]
        for wg in wgs:
            wait_until(lambda: names(wg) == want, slack(10), "fleet view of 6")
        f = fleet_of(wgs[0])
        assert f["connected"] and f["registered"] and f["live"] == 6, f
        assert f["zones"] == {"za": 3, "zb": 3}, f
        me = [r for r in f["replicas"] if r["self"]]
        assert [r["name"] for r in me] == ["r0"], f
        assert me[0]["zone"] == "za" and me[0]["version"], me
        assert me[0]["value"]["listeners"][0]["listen"].startswith("127.0.0.1:"), me
        assert wgs[0].metric('waygate_fleet_connected') == 1
        code, body = wgs[0].admin("/metrics")
        assert 'waygate_fleet_replicas{zone="zb"} 3' in body, body[:2000]
        # The dashboard's fleet view reads these fields of /status.
        code, page = wgs[0].admin("/")
        assert code == 200 and "fleetSection(s.fleet, s.shared_health)" in page
        for r in f["replicas"]:
            assert {"name", "zone", "version", "generation", "updated", "self"} <= set(r), r
            assert len(r["value"]["config"]) == 16, r
        # SIGKILL r5: its key goes when etcd expires the lease (3 s).
        t0 = time.monotonic()
        wgs[5].proc.kill()
        for wg in wgs[:5]:
            wait_until(lambda: names(wg) == want[:5], 3 + slack(3), "r5 dropped")
        took = time.monotonic() - t0
        print("measured: SIGKILLed replica dropped from 5 views after %.2fs (ttl 3s)" % took)
        f = fleet_of(wgs[0])
        assert f["zones"] == {"za": 3, "zb": 2}, f
        assert [r["name"] for r in f["gone"]] == ["r5"], f
        # Put the gauges/generation through: a registry change is a new generation.
        c = cluster.client()
        b = h.backend("name", name="x")
        c.put("/services/users/x", record(b, "za"))

        def gen_seen():
            mine = wgs[0].status()["generation"]
            seen = [r["generation"] for r in fleet_of(wgs[1])["replicas"] if r["name"] == "r0"]
            return seen == [mine] and mine > 1
        wait_until(gen_seen, 3 + slack(5), "r1 sees r0's new generation")
