"""A draining instance under gRPC (issue 17, DESIGN §3/§9): instances of
real python3-grpcio servers registered in a real etcd (native records with
"protocol":"grpc"); a server-streaming call in flight on an instance that
starts draining — its key deleted from etcd, or drained through the admin
API — completes normally, while every new call goes to the other
instances.

Streams waygate itself cuts after their response head went out (DESIGN
§15, exchange.h wg_exchange_abort): at drain_timeout, at on_unhealthy:
close, at shutdown_timeout after SIGTERM — the client reads UNAVAILABLE
with waygate's grpc-message after the messages it already got, never a
bare RST_STREAM (INTERNAL)."""

import json
import signal

from etcdlib import EtcdHarness
from grpclib import GrpcCall, GrpcServer, GrpcStream, grpc_call, need_grpcio
from h2lib import h2c_listener
from test_grpc_cut import world
from wglib import Harness, http_request, slack, wait_until

SLOW = [("x-count", "30"), ("x-interval-ms", "200")]     # 30 replies over 6 s


def instances(wg):
    svc = wg.status()["services"].get("users") or {}
    return {i["id"]: i for i in svc.get("instances", [])}


def busy(wg):
    """The id of the instance with a call in flight, else None."""
    for i, v in instances(wg).items():
        if v["active_connections"] > 0:
            return i
    return None


def drain_while_streaming(wg, target, drain, others):
    """Starts a long stream, drains the instance it is on with drain(id),
    checks that new calls avoid it and that the stream completes there."""
    call = GrpcCall(target, "bidi", "/wg.Echo/Slow", 100, metadata=SLOW, timeout=60, wait=90)
    holder = wait_until(lambda: busy(wg), slack(10), "the stream on an instance")
    drain(holder)
    r = grpc_call(target, "unary", "/wg.Echo/One", 10, count=12)
    assert r["code"] == "OK" and r["calls"] == 12, r
    assert holder not in r["servers"] and set(r["servers"]) <= set(others) - {holder}, \
        (holder, r["servers"])
    assert call.proc.poll() is None, "the stream ended before the drain was tested"
    s = call.result()
    assert s["code"] == "OK" and s["bytes"] == 30 * 100, s
    assert s["trailing"].get("x-server") == holder, (holder, s)
    return holder


def test_grpc_stream_on_a_draining_instance_completes():
    if not need_grpcio():
        return
    with EtcdHarness() as h:
        etcd = h.etcd()
        c = etcd.client()
        servers = {n: GrpcServer(h, n) for n in ("a", "b", "c")}
        for n, s in servers.items():
            c.put("/services/users/" + n, json.dumps(
                {"address": "127.0.0.1", "port": s.port, "protocol": "grpc"}))
        wg = h.waygate_etcd(etcd, listeners=[h2c_listener("g")],
                            services={"users": {"upstream": {"protocol": "auto"}}})
        wg.wait_instances({n: "127.0.0.1:%d" % s.port for n, s in servers.items()})
        target = "127.0.0.1:%d" % wg.ports["g"]
        assert {v["protocol"] for v in instances(wg).values()} == {"h2c"}

        def deregister(i):              # the registrar deletes the key: it drains
            c.delete("/services/users/" + i)
            wait_until(lambda: i not in instances(wg), slack(5), "%s gone from /status" % i)
        first = drain_while_streaming(wg, target, deregister, servers)
        left = set(servers) - {first}

        def admin_drain(i):
            r = http_request(wg.admin_port, "POST", "/services/users/instances/%s/drain" % i,
                             timeout=slack(10))
            assert r.status == 200, r
            assert instances(wg)[i]["health"] == "draining"
        second = drain_while_streaming(wg, target, admin_drain, left)
        r = grpc_call(target, "unary", "/wg.Echo/One", 10, count=5)
        assert r["servers"] == {(left - {second}).pop(): 5}, r


# ---- streams waygate cuts --------------------------------------------------------

def cut_world(h, name, services=None, **top):
    g, wg, port = world(h, name, services, **top)
    call = GrpcStream(h, "127.0.0.1:%d" % port, "server", "/wg.Echo/Down", 100,
                      count=300, interval_ms=100, timeout=60)
    call.wait_reply(slack(30))
    return g, wg, call


def assert_cut(call, message, within):
    """The long server stream (300 messages 100 ms apart) ended early with
    UNAVAILABLE and waygate's message, after at least one message."""
    r = call.result(slack(within))
    assert r["code"] == "UNAVAILABLE", r
    assert r["details"] == "waygate: " + message, r
    assert 1 <= r["count"] < 300 and r["bytes"] == 100 * r["count"], r
    return r


def cut_logged(h, reason):
    def logged():
        try:
            with open(h.path("access.log")) as f:
                return any(("reason=%s " % reason) in l and "grpc_code=UNAVAILABLE" in l
                           for l in f)
        except FileNotFoundError:
            return False
    wait_until(logged, slack(5), "the cut stream's access log line (reason=%s)" % reason)


def test_grpc_stream_cut_on_unhealthy_ends_with_unavailable():
    """on_unhealthy: close: the instance's gRPC probe says NOT_SERVING, the
    stream in flight on it is cut on the next tick with trailers."""
    if not need_grpcio():
        return
    from test_health import probes, wait_health
    with Harness() as h:
        hc = probes("grpc", interval="100ms", timeout="1s", up=1, down=1)
        g, wg, call = cut_world(h, "sick", dict(hc, on_unhealthy="close"))
        wait_health(wg, "users", "sick", "healthy", slack(10))
        g.set_all({"": "NOT_SERVING"})
        wait_health(wg, "users", "sick", "unhealthy", slack(5))
        assert_cut(call, "upstream unhealthy (on_unhealthy: close)", 10)
        cut_logged(h, "on_unhealthy")


def test_grpc_stream_cut_at_drain_timeout_ends_with_unavailable():
    """An instance drained through the admin API with drain_timeout 1s: the
    stream on it goes on for the timeout, then ends with trailers."""
    if not need_grpcio():
        return
    with Harness() as h:
        g, wg, call = cut_world(h, "drained", {"drain_timeout": "1s"})
        r = http_request(wg.admin_port, "POST", "/services/users/instances/drained/drain",
                         timeout=slack(10))
        assert r.status == 200, r
        r = assert_cut(call, "upstream drained (drain_timeout)", 10)
        assert r["count"] >= 3, r       # it went on for about a second first (10 messages)
        cut_logged(h, "drain_timeout")


def test_grpc_stream_cut_at_shutdown_timeout_ends_with_unavailable():
    """SIGTERM with shutdown_timeout 2s: the stream goes on (GOAWAY), then
    the worker stops and the stream ends with trailers; exit status 0."""
    if not need_grpcio():
        return
    with Harness() as h:
        g, wg, call = cut_world(h, "stopping", shutdown_timeout="2s")
        wg.proc.signal(signal.SIGTERM)
        r = assert_cut(call, "shutting down (shutdown_timeout)", 15)
        assert r["count"] >= 5, r       # it went on for about two seconds first (20 messages)
        assert wg.proc.wait(slack(10)) == 0
        cut_logged(h, "shutdown")
