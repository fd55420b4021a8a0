"""registry.zookeeper against real ZooKeeper servers (Debian's zookeeper 3.8,
zklib.py) and registrations written by kazoo (Debian's python3-kazoo), a
client no one here wrote: plain §7 values and Curator-shaped JSON under
/services, Dubbo provider URLs under /dubbo; invalid nodes counted, never
fatal; churn across a session that expires while waygate is stopped
(SIGSTOP) ends with /status equal to ZooKeeper's own listing; a 3-server
ensemble loses the server waygate is connected to; ZooKeeper down for 10 s
(the issue's 30 s, shortened to keep `make test` fast: nothing in waygate
depends on the length) leaves routing on the last known pools, then resyncs."""

import json
import random
import signal
import time
import urllib.parse

from wglib import name_via, slack, wait_until
from zklib import ZkHarness, listing

ROOT = "/services"


def native(b, weight=None):
    v = {"address": "127.0.0.1", "port": b.port}
    if weight is not None:
        v["weight"] = weight
    return json.dumps(v).encode()


def curator(b, name="users", rid="x", ssl_port=None, enabled=None):
    """A ServiceInstance as Curator's JsonInstanceSerializer writes it."""
    v = {"name": name, "id": rid, "address": "127.0.0.1", "port": b.port, "sslPort": ssl_port,
         "payload": {"@class": "org.example.InstanceDetails", "zone": "a"},
         "registrationTimeUTC": int(time.time() * 1000), "serviceType": "DYNAMIC",
         "uriSpec": {"parts": [{"value": "http://", "variable": False},
                               {"value": "address", "variable": True}]}}
    if enabled is not None:
        v["enabled"] = enabled
    return json.dumps(v).encode()


def status_listing(wg):
    """{service: sorted ids} as waygate's /status shows them."""
    out = {}
    for name, svc in wg.status().get("services", {}).items():
        ids = sorted(i["id"] for i in svc.get("instances", []))
        if ids:
            out[name] = ids
    return out


def wait_equal(wg, c, timeout=10, root=ROOT):
    """Waits until /status equals ZooKeeper's listing; returns the seconds
    it took (measured from the call)."""
    t = time.monotonic()
    last = [None, None]

    def same():
        last[0], last[1] = status_listing(wg), listing(c, root)
        return last[0] == last[1]
    try:
        wait_until(same, slack(timeout), "/status equal to ZooKeeper's listing", interval=0.01)
    except AssertionError:
        raise AssertionError("/status %s\nzookeeper %s" % (last[0], last[1]))
    return time.monotonic() - t


def test_kazoo_plain_curator_and_invalid_nodes():
    with ZkHarness() as h:
        zk = h.zookeeper()
        c = h.kazoo(zk)
        a, b, d = (h.backend("name", name=n) for n in "abd")
        c.create(ROOT + "/users/a", native(a, weight=50), makepath=True)
        c.create(ROOT + "/users/b", curator(b, rid="ignored"), ephemeral=True)
        c.create(ROOT + "/users/bad", b"not an address", ephemeral=True)
        c.create(ROOT + "/other/d", ("127.0.0.1:%d" % d.port).encode(), makepath=True)
        wg = h.waygate_zk(zk)
        wg.wait_instances({"a": "127.0.0.1:%d" % a.port, "b": "127.0.0.1:%d" % b.port})
        wg.wait_instances({"d": "127.0.0.1:%d" % d.port}, service="other")
        rs = wg.registry_status()
        assert rs["source"] == "zookeeper" and rs["connected"] and rs["session"] == "connected"
        assert rs["server"] == zk.address and rs["zxid"] > 0, rs
        assert rs["invalid_records_total"] == 1, rs
        assert {name_via(wg.port()) for _ in range(20)} == {"a", "b"}
        svc = wg.status()["services"]["users"]
        assert {i["id"]: i["weight"] for i in svc["instances"]} == {"a": 50, "b": 100}
        # a data change, a Curator instance disabled, an invalid update, a delete
        count = wg.metric("waygate_registry_propagation_seconds_count")
        c.set(ROOT + "/users/a", native(d, weight=7))
        wg.wait_instances({"a": "127.0.0.1:%d" % d.port, "b": "127.0.0.1:%d" % b.port})
        # one change, one snapshot, one observation of put -> routable
        assert wg.metric("waygate_registry_propagation_seconds_count") == count + 1
        gen = wg.status()["generation"]
        c.set(ROOT + "/users/b", curator(b, enabled=False))
        wait_until(lambda: [i["weight"] for i in wg.status()["services"]["users"]["instances"]
                            if i["id"] == "b"] == [0], slack(5), "b at weight 0")
        assert wg.status()["generation"] == gen + 1
        c.set(ROOT + "/users/a", b'{"address": 5}')
        wg.wait_instances({"b": "127.0.0.1:%d" % b.port})
        assert wg.registry_status()["invalid_records_total"] == 2
        c.delete(ROOT + "/users/b")
        c.delete(ROOT + "/other", recursive=True)
        wg.wait_instances({})
        wg.wait_instances({}, service="other")
        # a new service directory with an instance
        c.create(ROOT + "/late/x", native(a), makepath=True)
        wg.wait_instances({"x": "127.0.0.1:%d" % a.port}, service="late")
        # host names are resolved on the control thread (DESIGN §7), also in Curator's JSON
        c.create(ROOT + "/late/h", ("localhost:%d" % b.port).encode())
        c.create(ROOT + "/late/k", curator(d).replace(b'"127.0.0.1"', b'"localhost"'))
        wg.wait_instances({"x": "127.0.0.1:%d" % a.port, "h": "127.0.0.1:%d" % b.port,
                           "k": "127.0.0.1:%d" % d.port}, service="late")
        c.create(ROOT + "/late/n", b"no-such-host.invalid:80")
        wait_until(lambda: wg.registry_status()["invalid_records_total"] == 3, slack(10),
                   "the name that does not resolve counted")
        assert wg.alive()
        err = wg.stderr_text()
        assert "invalid registry record skipped" in err and "/services/users/bad" in err, err


def test_dubbo_provider_urls():
    """Providers as Dubbo's ZookeeperRegistry writes them: ephemeral nodes
    under /dubbo/<interface>/providers/ named by the URL-encoded URL, next to
    consumers/ and configurators/ (skipped); the interface is mapped to a
    service; disabled=true gives weight 0."""
    with ZkHarness() as h:
        zk = h.zookeeper()
        c = h.kazoo(zk)
        a, b = h.backend("name", name="a"), h.backend("name", name="b")
        iface = "org.example.UserService"

        def url(be, proto="dubbo", extra=""):
            u = ("%s://127.0.0.1:%d/%s?anyhost=true&application=users&interface=%s&"
                 "methods=get,put&side=provider&timestamp=1700000000000%s"
                 % (proto, be.port, iface, iface, extra))
            return "/dubbo/%s/providers/%s" % (iface, urllib.parse.quote(u, safe=""))

        c.create(url(a, extra="&weight=30"), b"127.0.0.1", ephemeral=True, makepath=True)
        c.create("/dubbo/%s/consumers/%s" % (iface, urllib.parse.quote(
            "consumer://127.0.0.1/%s?side=consumer" % iface, safe="")), makepath=True)
        c.create("/dubbo/%s/configurators" % iface, makepath=True)
        wg = h.waygate_zk(zk, root="/dubbo", dubbo_services={iface: "users"})
        wg.wait_instances({"127.0.0.1:%d" % a.port: "127.0.0.1:%d" % a.port})
        assert name_via(wg.port()) == "a"
        c.create(url(b, proto="tri"), ephemeral=True)
        wg.wait_instances({"127.0.0.1:%d" % a.port: "127.0.0.1:%d" % a.port,
                           "127.0.0.1:%d" % b.port: "127.0.0.1:%d" % b.port})
        weights = {i["id"]: i["weight"] for i in wg.status()["services"]["users"]["instances"]}
        assert weights == {"127.0.0.1:%d" % a.port: 30, "127.0.0.1:%d" % b.port: 100}, weights
        c.delete(url(a, extra="&weight=30"))
        c.create(url(a, extra="&disabled=true"), ephemeral=True)
        wait_until(lambda: {i["id"]: i["weight"] for i in
                            wg.status()["services"]["users"]["instances"]}.get(
                                "127.0.0.1:%d" % a.port) == 0, slack(5), "a disabled")
        assert wg.registry_status()["invalid_records_total"] == 0
        assert {name_via(wg.port()) for _ in range(10)} == {"b"}


def churn(c, rng, backends, n_ops, ids):
    """Random creates, updates and deletes of ephemeral nodes."""
    for _ in range(n_ops):
        rid = "i%d" % rng.randrange(ids)
        path = "%s/%s/%s" % (ROOT, rng.choice(("users", "orders")), rid)
        b = rng.choice(backends)
        if c.exists(path):
            if rng.random() < 0.5:
                c.delete(path)
            else:
                c.set(path, native(b, weight=rng.randrange(1, 100)))
        else:
            c.create(path, native(b), ephemeral=True, makepath=True)


def test_churn_across_an_expired_session_ends_equal():
    with ZkHarness() as h:
        zk = h.zookeeper()
        c = h.kazoo(zk)
        rng = random.Random(20)
        backends = [h.backend("name", name="b%d" % k) for k in range(3)]
        churn(c, rng, backends, 40, 15)
        wg = h.waygate_zk(zk, session_timeout="1s")
        wait_equal(wg, c)
        sid = wg.registry_status()["session_id"]
        churn(c, rng, backends, 60, 15)
        wait_equal(wg, c)
        wg.proc.signal(signal.SIGSTOP)
        try:
            churn(c, rng, backends, 60, 15)
            time.sleep(2.5)             # > the 1 s session: ZooKeeper expires it
        finally:
            wg.proc.signal(signal.SIGCONT)
        churn(c, rng, backends, 60, 15)
        took = wait_equal(wg, c)
        print("equal %.0f ms after the last write" % (took * 1000))
        rs = wg.registry_status()
        assert rs["session_id"] != sid, "the session did not expire"
        assert rs["session"] == "connected"
        assert "session expired" in wg.stderr_text()
        churn(c, rng, backends, 30, 15)
        took = wait_equal(wg, c)
        print("equal %.0f ms after the last write (new session)" % (took * 1000))


def test_ensemble_loses_the_server_waygate_uses():
    with ZkHarness() as h:
        e = h.zookeeper_ensemble(3)
        c = h.kazoo(e)
        rng = random.Random(3)
        backends = [h.backend("name", name="b%d" % k) for k in range(2)]
        churn(c, rng, backends, 30, 10)
        wg = h.waygate_zk(e, session_timeout="10s")
        wait_equal(wg, c)
        used = wg.registry_status()["server"]
        victim = [s for s in e.servers if s.address == used]
        assert victim, "waygate talks to %s, not one of %s" % (used, e.addresses)
        victim[0].kill()
        c.stop()
        c.close()
        c = h.kazoo(type(e)([s for s in e.servers if s.alive()]))
        churn(c, rng, backends, 40, 10)
        wait_equal(wg, c, timeout=30)
        rs = wg.registry_status()
        assert rs["server"] != used and rs["session"] == "connected", rs
        churn(c, rng, backends, 20, 10)
        wait_equal(wg, c)


def test_zookeeper_down_keeps_routing_then_resyncs():
    with ZkHarness() as h:
        zk = h.zookeeper()
        c = h.kazoo(zk)
        a, b = h.backend("name", name="a"), h.backend("name", name="b")
        c.create(ROOT + "/users/a", native(a), makepath=True)
        cache = h.path("registry-cache.yaml")
        wg = h.waygate_zk(zk, session_timeout="2s", cache=cache)
        wg.wait_instances({"a": "127.0.0.1:%d" % a.port})
        c.stop()
        c.close()
        zk.kill()
        wait_until(lambda: not wg.registry_status()["connected"], slack(10), "disconnected")
        end = time.monotonic() + 10
        while time.monotonic() < end:   # last known routing all along
            assert name_via(wg.port()) == "a"
            time.sleep(0.5)
        assert wg.registry_status()["session"] == "connecting"
        zk.start()
        zk.wait_serving()
        c = h.kazoo(zk)
        c.create(ROOT + "/users/b", native(b), ephemeral=True)
        wg.wait_instances({"a": "127.0.0.1:%d" % a.port, "b": "127.0.0.1:%d" % b.port},
                          timeout=30)
        assert wg.registry_status()["connected"]
        assert wg.metric("waygate_registry_resyncs_total") >= 1
        with open(cache) as f:
            assert '"port": %d' % a.port in f.read()
        # a start with ZooKeeper down serves the cache
        wg.proc.stop()
        c.stop()
        c.close()
        zk.kill()
        wg2 = h.waygate_zk(zk, cache=cache)
        wg2.wait_instances({"a": "127.0.0.1:%d" % a.port, "b": "127.0.0.1:%d" % b.port})
        assert not wg2.registry_status()["connected"]
        assert "serving the registry cache" in wg2.stderr_text()


def test_digest_auth_and_chroot():
    """Nodes readable only with digest credentials, under a chroot: waygate
    with registry.zookeeper.auth and chroot follows them; without the
    credentials it reads nothing and keeps running."""
    with ZkHarness() as h:
        zk = h.zookeeper()
        c = h.kazoo(zk, auth_data=[("digest", "reg:secret")])
        from kazoo.security import make_digest_acl      # after zklib found kazoo
        acl = [make_digest_acl("reg", "secret", all=True)]
        a = h.backend("name", name="a")
        c.create("/apps/services/users", makepath=True, acl=acl)
        c.create("/apps/services/users/a", native(a), acl=acl)
        wg = h.waygate_zk(zk, chroot="/apps",
                          auth={"scheme": "digest", "credentials": "reg:secret"})
        wg.wait_instances({"a": "127.0.0.1:%d" % a.port})
        assert name_via(wg.port()) == "a"
        c.create("/apps/services/users/b", native(a, weight=5), acl=acl)
        wg.wait_instances({"a": "127.0.0.1:%d" % a.port, "b": "127.0.0.1:%d" % a.port})
        other = h.waygate_zk(zk, chroot="/apps")
        wait_until(lambda: "zookeeper children read failed" in other.stderr_text() and
                   "not authenticated" in other.stderr_text(), slack(5), "a refused read logged")
        assert other.pool() == {} and other.alive()
