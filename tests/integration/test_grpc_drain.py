"""A draining instance under gRPC (issue 17, DESIGN §3/§9): instances of
real python3-grpcio servers registered in a real etcd (native records with
"protocol":"grpc"); a server-streaming call in flight on an instance that
starts draining — its key deleted from etcd, or drained through the admin
API — completes normally, while every new call goes to the other
instances."""

import json

from etcdlib import EtcdHarness
from grpclib import GrpcCall, GrpcServer, grpc_call, need_grpcio
from h2lib import h2c_listener
from wglib import http_request, slack, wait_until

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
