"""waygate register --zookeeper (the provider side) against a real ZooKeeper
(Debian's zookeeper 3.8) read with kazoo: an ephemeral node in Curator's or
waygate's native JSON that a waygate routes to; SIGTERM deletes it; a
session that expires while the registrar is stopped (SIGSTOP) comes back as
a new session with the node created again; a wrapped command is health-gated
and its node deleted before the child is stopped; usage errors."""

import json
import signal
import time

from wglib import connectable, free_port, name_via, run_waygate, slack, tool, wait_until
from zklib import ZkHarness

NODE = "/services/users/"


def registrar(h, zk, rid, port, *opts, command=None):
    argv = [tool("waygate"), "register", "--zookeeper", zk.address, "--service", "users",
            "--id", rid, "--address", "127.0.0.1:%d" % port] + list(opts)
    if command:
        argv += ["--"] + list(command)
    return h.start("register-%s-%d" % (rid, len(h.procs)), argv)


def node(c, rid):
    """(data dict, stat) of the instance's node, or None."""
    from kazoo.exceptions import NoNodeError
    try:
        data, stat = c.get(NODE + rid)
    except NoNodeError:
        return None
    return json.loads(data), stat


def wait_node(c, rid, timeout=10, present=True):
    what = "node %s %s" % (rid, "created" if present else "deleted")
    return wait_until(lambda: (node(c, rid) if present else node(c, rid) is None),
                      slack(timeout), what, interval=0.02)


def test_curator_and_plain_nodes_route_and_sigterm_deletes():
    with ZkHarness() as h:
        zk = h.zookeeper()
        c = h.kazoo(zk)
        a, b = h.backend("name", name="a"), h.backend("name", name="b")
        wg = h.waygate_zk(zk)
        ra = registrar(h, zk, "a", a.port, "--layout", "curator", "--metadata", "zone=a")
        data, stat = wait_node(c, "a")
        assert stat.ephemeralOwner != 0, "not ephemeral"
        assert data["name"] == "users" and data["id"] == "a" and data["address"] == "127.0.0.1"
        assert data["port"] == a.port and data["sslPort"] is None
        assert data["serviceType"] == "DYNAMIC" and data["registrationTimeUTC"] > 0
        assert data["payload"] == {"@class": "java.util.LinkedHashMap", "zone": "a"}, data
        rb = registrar(h, zk, "b", b.port, "--weight", "30")
        data, stat = wait_node(c, "b")
        assert data == {"address": "127.0.0.1", "port": b.port, "weight": 30}, data
        wg.wait_instances({"a": "127.0.0.1:%d" % a.port, "b": "127.0.0.1:%d" % b.port})
        assert {name_via(wg.port()) for _ in range(20)} == {"a", "b"}
        ra.signal(signal.SIGTERM)
        assert ra.wait(slack(10)) == 0, ra.stderr_text()
        assert node(c, "a") is None
        assert "deregistered" in ra.stderr_text()
        wg.wait_instances({"b": "127.0.0.1:%d" % b.port})
        rb.signal(signal.SIGTERM)
        assert rb.wait(slack(10)) == 0
        assert c.get_children("/services/users") == []


def test_session_expiry_recreates_the_node_and_a_wrapped_child_drains():
    """--ttl 1s is the session timeout: stopped for 4 s, the registrar's
    session expires and its node goes; continued, it opens a new session
    and creates the node again. SIGTERM deletes the node, waits --drain with
    the child still serving, then stops the child."""
    with ZkHarness() as h:
        zk = h.zookeeper()
        c = h.kazoo(zk)
        port = free_port()
        cmd = [tool("wg_backend"), "--listen", "127.0.0.1:%d" % port, "--name", "x",
               "--mode", "http"]
        r = registrar(h, zk, "x", port, "--ttl", "1s", "--drain", "1s",
                      "--health", "http://127.0.0.1:%d/health" % port,
                      "--health-interval", "100ms", command=cmd)
        _, stat = wait_node(c, "x")
        first_owner = stat.ephemeralOwner
        r.signal(signal.SIGSTOP)
        try:
            wait_node(c, "x", present=False, timeout=10)
        finally:
            r.signal(signal.SIGCONT)
        _, stat = wait_node(c, "x", timeout=15)
        assert stat.ephemeralOwner != first_owner, "the same session?"
        assert "session expired" in r.stderr_text(), r.stderr_text()[-2000:]
        t = time.monotonic()
        r.signal(signal.SIGTERM)
        wait_node(c, "x", present=False, timeout=2)
        assert connectable(port), "the child stopped before its node was deleted"
        assert r.wait(slack(10)) == 0, r.stderr_text()
        assert time.monotonic() - t >= 1.0, "no drain"
        assert not connectable(port)


def test_zookeeper_usage_errors():
    cases = [
        (["--zookeeper", "127.0.0.1:1", "--etcd", "http://127.0.0.1:2"], "mutually exclusive"),
        (["--layout", "curator", "--etcd", "http://127.0.0.1:2"], "only with --zookeeper"),
        (["--zookeeper", "127.0.0.1:1", "--layout", "json"], "expected plain or curator"),
        (["--zookeeper", "127.0.0.1:1", "--layout", "curator", "--weight", "5"], "no weight"),
        (["--zookeeper", "127.0.0.1:1", "--prefix", "services"], "starts with '/'"),
    ]
    for extra, want in cases:
        rc, out, err = run_waygate("register", "--service", "users", "--id", "a", "--address",
                                   "127.0.0.1:80", *extra)
        assert rc == 2 and want in err, (extra, rc, err)
    rc, out, err = run_waygate("register", "--zookeeper", "127.0.0.1:1", "--service", "users",
                               "--id", "a/b", "--address", "127.0.0.1:80")
    assert rc == 2 and "no '/'" in err, err


def test_a_node_of_another_session_is_waited_for():
    """A second registrar with the same --id finds the node owned by the
    first one's session and waits; SIGKILL the first (nothing deletes its
    node): once its 1 s session expires, the second creates the node."""
    with ZkHarness() as h:
        zk = h.zookeeper()
        c = h.kazoo(zk)
        a, b = h.backend("name", name="a"), h.backend("name", name="b")
        ra = registrar(h, zk, "x", a.port, "--ttl", "1s")
        data, first = wait_node(c, "x")
        assert data["port"] == a.port
        rb = registrar(h, zk, "x", b.port, "--ttl", "1s")
        wait_until(lambda: "exists under another session" in rb.stderr_text(), slack(10),
                   "the second registrar waiting")
        assert node(c, "x")[0]["port"] == a.port
        ra.kill()
        wait_until(lambda: (node(c, "x") or ({}, None))[0].get("port") == b.port, slack(15),
                   "the node taken over")
        assert node(c, "x")[1].ephemeralOwner != first.ephemeralOwner
        rb.signal(signal.SIGTERM)
        assert rb.wait(slack(10)) == 0
        assert node(c, "x") is None
