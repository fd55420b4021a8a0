"""gRPC calls in /metrics by the grpc-status their client got (issue 17:
metric label grpc_code): waygate_grpc_responses_total{service,grpc_code}
and waygate_listener_grpc_responses_total{listener,grpc_code}, counting
the upstream's statuses and waygate's own Trailers-Only errors, with at
most the 17 code names as label values. The HTTP/2 upstream pools'
counters (waygate_upstream_h2_*, /status upstream_h2) follow real grpcio
calls."""

from grpclib import GrpcBackend, GrpcServer, GrpcStream, grpc_call, need_grpcio
from h2lib import h2c_listener
from test_admin import admin, check_promtool, get_metrics, metric, parse_metrics
from wglib import Harness, slack, wait_until


def grpc_series(fams, family, **labels):
    """{grpc_code: value} of the family's samples matching labels."""
    return {l["grpc_code"]: v for l, v in fams[family]["samples"]
            if all(l.get(k) == x for k, x in labels.items())}


def test_grpc_code_metrics_per_service_and_listener():
    if not need_grpcio():
        return
    with Harness() as h:
        b = GrpcBackend(h, name="m")
        lst = h2c_listener("g")
        lst["routes"] = [{"path_prefix": "/bench.", "service": "users"},
                         {"path_prefix": "/none.", "service": "none"}]
        wg = h.waygate(listeners=[lst], instances={"users": [b.instance()],
                                                    "none": [b.instance("w0", weight=0)]},
                       services={"users": {"upstream": {"protocol": "h2c"}},
                                 "none": {"upstream": {"protocol": "h2c"}}})
        target = "127.0.0.1:%d" % wg.ports["g"]
        assert grpc_call(target, "unary", "/bench.B/Call", 1, count=3)["code"] == "OK"
        for _ in range(2):
            r = grpc_call(target, "unary", "/bench.B/Call", 1, metadata=[("x-grpc-status", "5")])
            assert r["code"] == "NOT_FOUND", r
        # a code outside 0..16 counts as UNKNOWN, as the client reads it
        r = grpc_call(target, "unary", "/bench.B/Call", 1, metadata=[("x-grpc-status", "99")])
        assert r["code"] == "UNKNOWN", r
        # waygate's own Trailers-Only errors: no routable instance (weight 0),
        # no route (counted by the listener only)
        assert grpc_call(target, "unary", "/none.S/M", 1)["code"] == "UNAVAILABLE"
        assert grpc_call(target, "unary", "/other.S/M", 1)["code"] == "UNIMPLEMENTED"
        want_users = {"OK": 3, "NOT_FOUND": 2, "UNKNOWN": 1}
        want_g = dict(want_users, UNAVAILABLE=1, UNIMPLEMENTED=1)

        def settled():                  # the counters move when the access entry is made
            fams = parse_metrics(get_metrics(wg))
            got = grpc_series(fams, "waygate_listener_grpc_responses_total", listener="g")
            return fams if got == want_g else None
        fams = wait_until(settled, slack(5), "the listener's grpc_code counters")
        assert grpc_series(fams, "waygate_grpc_responses_total", service="users") == want_users
        assert grpc_series(fams, "waygate_grpc_responses_total", service="none") == \
            {"UNAVAILABLE": 1}, fams["waygate_grpc_responses_total"]
        assert fams["waygate_grpc_responses_total"]["type"] == "counter"
        assert metric(fams, "waygate_grpc_responses_total", service="users",
                      grpc_code="OK") == 3
        check_promtool(wg)


H2_POOL = ("connections", "streams", "connects", "goaways", "pings", "ping_failures", "refused",
           "idle_closed")


def h2_pool(wg):
    """{field: value} of the waygate_upstream_h2_* metrics, checked
    against /status upstream_h2 (both sum the workers' counters)."""
    fams = parse_metrics(get_metrics(wg))
    got = {}
    for f in H2_POOL:
        gauge = f in ("connections", "streams")
        name = "waygate_upstream_h2_" + f + ("" if gauge else "_total")
        assert fams[name]["type"] == ("gauge" if gauge else "counter"), fams[name]
        got[f] = metric(fams, name)
    import json
    st = json.loads(admin(wg, "/status").body)["upstream_h2"]
    for f in ("connects", "goaways", "ping_failures", "refused"):
        assert st[f] == got[f], (st, got)   # (the others may move between the two reads)
    return got


def test_upstream_h2_pool_metrics():
    """Calls through an h2c instance: a connection is opened and kept
    (idle, pinged every 100 ms), a stream in flight shows in the streams
    gauge and leaves it when the call is over."""
    if not need_grpcio():
        return
    with Harness() as h:
        g = GrpcServer(h, "pool")
        wg = h.waygate(listeners=[h2c_listener("g")], instances={"users": [g.instance()]},
                       services={"users": {"upstream": {"protocol": "h2c",
                                                        "ping_interval": "100ms"}}})
        target = "127.0.0.1:%d" % wg.ports["g"]
        before = h2_pool(wg)
        assert before["connections"] == 0 and before["streams"] == 0, before
        assert before["connects"] == 0, before
        r = grpc_call(target, "unary", "/wg.Echo/One", 10, count=5)
        assert r["code"] == "OK" and r["calls"] == 5, r
        call = GrpcStream(h, target, "server", "/wg.Echo/Down", 10, count=30, interval_ms=100,
                          timeout=30)
        call.wait_reply(slack(30))
        busy = h2_pool(wg)
        assert busy["streams"] == 1, busy
        assert busy["connections"] >= 1 and busy["connects"] >= 1, busy
        assert call.result(slack(30))["code"] == "OK"
        idle = wait_until(lambda: (lambda p: p if p["streams"] == 0 and p["pings"] >= 1 else None)
                          (h2_pool(wg)), slack(5), "the streams gauge back to 0, a ping sent")
        assert idle["connections"] >= 1, idle           # kept idle (max_idle 64)
        assert idle["connects"] == idle["connections"] <= 2, idle   # one per worker at most
        assert idle["goaways"] == idle["ping_failures"] == idle["refused"] == 0, idle
        check_promtool(wg)
