"""The HTTP/2 upstream pools take the service's settings (issue 17, DESIGN
§15): upstream.max_idle / idle_timeout, connect_timeout and the idle
connections' PING liveness (upstream.ping_interval / ping_timeout), watched
at the backend (its established TCP connections, ss) and in /status."""

import os
import signal
import time

from grpclib import GrpcBackend, grpc_call, need_grpcio
from h2lib import Client, h2c_listener
from test_grpc_health import established_to
from wglib import Blackhole, Harness, slack, wait_until

GRPC = [("content-type", "application/grpc"), ("te", "trailers")]
MSG = b"\0\0\0\0\x03abc"                # one gRPC message of 3 bytes


def established(b):
    return established_to(b.proc.pid, b.port)


def test_h2_pool_max_idle_and_idle_timeout_are_the_services():
    """A backend that takes one stream per connection: three held streams
    need three connections; once they end, max_idle 1 keeps one, and
    idle_timeout 2s closes that one too (the pool's own defaults keep 4
    for 60 s). A service with max_idle 0 keeps none."""
    with Harness() as h:
        b = GrpcBackend(h, name="one", extra=("--max-streams", "1"))
        z = GrpcBackend(h, name="zero")
        lst = h2c_listener("g")
        lst["routes"] = [{"path_prefix": "/zero.", "service": "zero"},
                         {"path_prefix": "/", "service": "users"}]
        wg = h.waygate(listeners=[lst], workers=1,
                       instances={"users": [b.instance()], "zero": [z.instance()]},
                       services={"users": {"upstream": {"protocol": "h2c", "max_idle": 1,
                                                        "idle_timeout": "2s"}},
                                 "zero": {"upstream": {"protocol": "h2c", "max_idle": 0}}})
        c = Client(wg.ports["g"])
        sids = []
        for _ in range(3):              # one at a time: each finds the others' connections full
            sid = c.request("/wg.Echo/Hold", method="POST", headers=GRPC, body=MSG, end=False)
            c.wait(lambda: c.responses[sid]["status"] is not None, slack(10), "head %d" % sid)
            sids.append(sid)
        assert established(b) == 3, established(b)
        for sid in sids:
            c.send_body(sid, b"", end=True)
        for sid in sids:
            r = c.response(sid, timeout=slack(10))
            assert r["status"] == 200 and bytes(r["body"]) == MSG, r
        wait_until(lambda: established(b) == 1, slack(5), "max_idle 1: one idle connection kept")
        t0 = time.monotonic()
        wait_until(lambda: established(b) == 0, slack(6), "idle_timeout 2s: the last one closed")
        assert time.monotonic() - t0 >= 0.5, "closed before its idle_timeout"
        r = c.response(c.request("/zero.Z/Call", method="POST", headers=GRPC, body=MSG),
                       timeout=slack(10))
        trailers = {k if isinstance(k, str) else k.decode(): v if isinstance(v, str) else v.decode()
                    for k, v in r["trailers"]}
        assert r["status"] == 200 and trailers.get("grpc-status") == "0", r
        wait_until(lambda: established(z) == 0, slack(3), "max_idle 0: no idle connection")
        c.close()


def test_h2_connect_timeout_is_the_services():
    """connect_timeout 2s toward a blackhole: the gRPC call waits those 2 s
    (not the pool's default 1 s), then gets UNAVAILABLE from waygate, and
    the timed-out connect counts as one connect failure, not as a stream
    to send again."""
    if not need_grpcio():
        return
    from test_admin import get_metrics, metric, parse_metrics
    with Harness() as h:
        hole = Blackhole()
        inst = {"id": "hole", "address": "127.0.0.1", "port": hole.port, "weight": 100}
        wg = h.waygate(listeners=[h2c_listener("g")], instances={"users": [inst]},
                       services={"users": {"upstream": {"protocol": "h2c"},
                                           "connect_timeout": "2s", "retries": 0}})
        t0 = time.monotonic()
        r = grpc_call("127.0.0.1:%d" % wg.ports["g"], "unary", "/bench.B/Call", 1, timeout=30)
        took = time.monotonic() - t0
        assert r["code"] == "UNAVAILABLE" and r["details"].startswith("waygate"), r
        assert took >= 1.8, "gave up after %.2fs: not the service's connect_timeout" % took
        fams = parse_metrics(get_metrics(wg))
        assert metric(fams, "waygate_upstream_connect_failures_total", service="users",
                      upstream="hole") == 1
        hole.close()


def test_h2_idle_connection_ping_liveness():
    """upstream.ping_interval 500ms / ping_timeout 1s: an idle pooled
    connection to a backend that stops answering (SIGSTOP, the socket stays
    open) is closed once a PING goes unanswered; the next call after the
    backend resumes gets a fresh connection. An answering backend keeps its
    connection through several pings."""
    if not need_grpcio():
        return
    with Harness() as h:
        b = GrpcBackend(h, name="p")
        wg = h.waygate(listeners=[h2c_listener("g")], workers=1,
                       instances={"users": [b.instance()]},
                       services={"users": {"upstream": {"protocol": "h2c",
                                                        "ping_interval": "500ms",
                                                        "ping_timeout": "1s"}}})
        target = "127.0.0.1:%d" % wg.ports["g"]
        assert grpc_call(target, "unary", "/bench.B/Call", 1)["code"] == "OK"
        time.sleep(3)                   # pings answered: the connection stays
        assert established(b) == 1, established(b)
        assert b.accepted() == 1, b.accepted()
        os.kill(b.proc.pid, signal.SIGSTOP)
        try:
            wait_until(lambda: established(b) == 0, slack(6), "the unanswered PING to close it")
        finally:
            os.kill(b.proc.pid, signal.SIGCONT)
        assert grpc_call(target, "unary", "/bench.B/Call", 1)["code"] == "OK"
        assert b.accepted() == 2, b.accepted()
