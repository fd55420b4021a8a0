"""gRPC instances from a real etcd (issue 17): the protocol markers of
docs/registry.md pick address and protocol per instance — a Kratos value's
grpc:// endpoint (alone, or beside http:// under upstream.protocol h2c), an
endpoints.Manager value with Metadata protocol grpc, a native value with
"protocol":"grpc" — shown in /status and probed with gRPC health checks
against real python3-grpcio servers (a probe reaching the http:// port of a
Kratos value would fail: nothing speaks gRPC there)."""

import json

from etcdlib import EtcdHarness
from grpclib import GrpcServer, need_grpcio
from wglib import slack, wait_until

HC = {"health_check": {"type": "grpc", "interval": "100ms", "timeout": "1s",
                       "healthy_threshold": 1, "unhealthy_threshold": 1}}


def instances(wg, service):
    svc = wg.status()["services"].get(service) or {}
    return {i["id"]: (i["address"], i["protocol"], i["health"]) for i in svc.get("instances", [])}


def test_protocol_markers_from_etcd_pick_grpc_endpoints():
    if not need_grpcio():
        return
    with EtcdHarness() as h:
        etcd = h.etcd()
        c = etcd.client()
        servers = [GrpcServer(h, n) for n in ("k", "e", "n", "both")]
        k, e, n, both = servers
        dead_http = "127.0.0.1:1"           # the http:// endpoint nobody serves
        c.put("/services/auto/k", json.dumps(
            {"id": "k", "name": "auto", "endpoints": ["grpc://127.0.0.1:%d" % k.port]}))
        c.put("/services/auto/e", json.dumps(
            {"Op": 0, "Addr": "127.0.0.1:%d" % e.port, "Metadata": {"protocol": "grpc"}}))
        c.put("/services/auto/n", json.dumps(
            {"address": "127.0.0.1", "port": n.port, "protocol": "grpc"}))
        c.put("/services/pinned/both", json.dumps(
            {"id": "both", "endpoints": ["http://%s" % dead_http,
                                         "grpc://127.0.0.1:%d" % both.port]}))
        wg = h.waygate_etcd(etcd, listeners=[{"name": "t", "mode": "tcp", "service": "auto"}],
                            services={"auto": dict(HC, upstream={"protocol": "auto"}),
                                      "pinned": dict(HC, upstream={"protocol": "h2c"})})
        want = {"k": ("127.0.0.1:%d" % k.port, "h2c", "healthy"),
                "e": ("127.0.0.1:%d" % e.port, "h2c", "healthy"),
                "n": ("127.0.0.1:%d" % n.port, "h2c", "healthy")}
        wait_until(lambda: instances(wg, "auto") == want, slack(10),
                   "auto instances %s (now %s)" % (want, instances(wg, "auto")))
        pinned = {"both": ("127.0.0.1:%d" % both.port, "h2c", "healthy")}
        wait_until(lambda: instances(wg, "pinned") == pinned, slack(10),
                   "pinned instances (now %s)" % instances(wg, "pinned"))
        for s in servers:
            assert s.calls(), "no health call reached %s" % s.name
        # The marker goes away: the same address is a new, HTTP/1.1 instance.
        c.put("/services/auto/n", json.dumps({"address": "127.0.0.1", "port": n.port}))
        wait_until(lambda: instances(wg, "auto").get("n", ("", ""))[1] == "http1", slack(10),
                   "n back to http1 (now %s)" % instances(wg, "auto"))
