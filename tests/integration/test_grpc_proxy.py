"""gRPC through waygate (issue 17, DESIGN §15): a real python3-grpcio
client -> waygate's h2c listener -> h2c upstreams (python3-grpcio's server
side is wg_grpc_backend here, the C gRPC backend): unary calls, streaming
echo, a 4 MiB message, trailers (grpc-status, grpc-message) intact, and a
backend that sends GOAWAY every few streams retried without a failed
call."""

from grpclib import GrpcBackend, grpc_call, need_grpcio
from h2lib import h2c_listener
from wglib import Harness


def grpc_waygate(h, b, **kw):
    # The default flood limits: grpcio acks each small reply with its own
    # WINDOW_UPDATE, which must not count as a control-frame flood.
    return h.waygate(listeners=[h2c_listener("g")],
                     instances={"users": [b.instance()]},
                     services={"users": {"upstream": {"protocol": "h2c"}}}, **kw)


def test_grpc_unary_streaming_large_and_status_through_h2c():
    if not need_grpcio():
        return
    with Harness() as h:
        b = GrpcBackend(h, name="ab", message_size=64)
        wg = grpc_waygate(h, b)
        target = "127.0.0.1:%d" % wg.ports["g"]
        r = grpc_call(target, "unary", "/bench.B/Call", 10, count=2000)
        assert r["code"] == "OK" and r["calls"] == 2000, r
        assert r["replies"][0] == 64 and r["first"] == (b"ab" * 8).hex(), r
        r = grpc_call(target, "bidi", "/wg.Echo/Chat", 1000, count=50)
        assert r["code"] == "OK" and r["bytes"] == 50 * 1000, r
        assert r["first"] == bytes((i * 7 + 1) & 0xFF for i in range(16)).hex(), r
        r = grpc_call(target, "unary", "/wg.Echo/One", 4 << 20, timeout=30)
        assert r["code"] == "OK" and r["replies"] == [4 << 20], r
        # Trailers-Only error from the upstream, status and message intact
        r = grpc_call(target, "unary", "/bench.B/Call", 1, metadata=[("x-grpc-status", "14")])
        assert r["code"] == "UNAVAILABLE" and r["details"] == "wg_grpc_backend", r
        r = grpc_call(target, "unary", "/bench.B/Call", 1, metadata=[("x-grpc-status", "5")])
        assert r["code"] == "NOT_FOUND", r


def test_grpc_upstream_goaway_is_retried():
    """The backend sends GOAWAY after every 2 streams and refuses the
    next: those unprocessed calls go again on a new connection."""
    if not need_grpcio():
        return
    with Harness() as h:
        b = GrpcBackend(h, name="ga", extra=("--goaway-after", "2"))
        wg = grpc_waygate(h, b)
        target = "127.0.0.1:%d" % wg.ports["g"]
        r = grpc_call(target, "unary", "/bench.B/Call", 10, count=40)
        assert r["code"] == "OK" and r["calls"] == 40, r
        assert b.accepted() >= 10, b.accepted()


def silent_upstream():
    """A listening socket never accepted: connects succeed, nothing answers."""
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    return s


def test_grpc_own_errors_are_trailers_only_statuses():
    """waygate's own answers to gRPC calls: no route UNIMPLEMENTED, no
    instance UNAVAILABLE, response_timeout DEADLINE_EXCEEDED, each as
    one HEADERS frame (HTTP 200, grpc-status) ending the stream; the
    client's grpc-timeout caps the deadline."""
    if not need_grpcio():
        return
    import time
    from h2lib import Client
    with Harness() as h:
        quiet = silent_upstream()
        lst = h2c_listener("g")
        lst["routes"] = [{"path_prefix": "/bench.", "service": "users"},
                         {"path_prefix": "/slow.", "service": "slow"},
                         {"path_prefix": "/none.", "service": "none"}]
        slow = {"id": "q", "address": "127.0.0.1", "port": quiet.getsockname()[1], "weight": 100}
        wg = h.waygate(listeners=[lst], instances={"users": [], "slow": [slow], "none": []},
                       services={"slow": {"upstream": {"protocol": "h2c"},
                                          "response_timeout": "30s"},
                                 "none": {"upstream": {"protocol": "h2c"}}})
        target = "127.0.0.1:%d" % wg.ports["g"]
        r = grpc_call(target, "unary", "/other.S/M", 1)
        assert r["code"] == "UNIMPLEMENTED" and r["details"].startswith("waygate"), r
        r = grpc_call(target, "unary", "/none.S/M", 1)
        assert r["code"] == "UNAVAILABLE" and r["details"].startswith("waygate"), r
        # grpc-timeout 300m caps the 30 s response_timeout: waygate answers
        # (the raw client has no deadline of its own)
        c = Client(wg.ports["g"])
        t0 = time.monotonic()
        sid = c.request("/slow.S/M", method="POST", body=b"\0\0\0\0\0",
                        headers=[("content-type", "application/grpc"), ("te", "trailers"),
                                 ("grpc-timeout", "300m")])
        resp = c.response(sid, timeout=20)
        hd = dict(resp["headers"])
        assert resp["status"] == 200 and hd.get("grpc-status") == "4", resp
        assert resp["ended"] and not resp["body"] and not resp["trailers"], resp
        assert time.monotonic() - t0 < 15, "the 30 s response_timeout was not capped"
        c.close()
        quiet.close()


def test_grpc_status_counts_for_outliers_and_is_logged():
    """An upstream's grpc-status UNAVAILABLE counts like a 5xx for passive
    outlier detection (consecutive_failures 3 ejects one of two: at most
    50% are ejected), and the access log line carries grpc_code."""
    if not need_grpcio():
        return
    from test_health import health
    from wglib import slack, wait_until
    with Harness() as h:
        b = GrpcBackend(h, name="bad")
        b2 = GrpcBackend(h, name="bad2")
        log = h.path("access.log")
        wg = h.waygate(listeners=[h2c_listener("g")],
                       instances={"users": [b.instance(), b2.instance()]},
                       services={"users": {"upstream": {"protocol": "h2c"}}}, service_defaults={
            "outlier_detection": {"consecutive_failures": 3, "base_ejection_time": "30s"}},
            log={"level": "info", "access_log": log, "access_format": "text"})
        target = "127.0.0.1:%d" % wg.ports["g"]
        r = grpc_call(target, "unary", "/bench.B/Call", 1, count=1)
        assert r["code"] == "OK", r
        assert health(wg, "users", "bad") == "healthy"
        for _ in range(6):
            r = grpc_call(target, "unary", "/bench.B/Call", 1, metadata=[("x-grpc-status", "14")])
            assert r["code"] == "UNAVAILABLE" and r["details"] == "wg_grpc_backend", r
        wait_until(lambda: "ejected" in (health(wg, "users", "bad"), health(wg, "users", "bad2")),
                   slack(5), "an ejection")

        def lines():
            try:
                with open(log) as f:
                    return f.read()
            except FileNotFoundError:
                return ""
        wait_until(lambda: "grpc_code=UNAVAILABLE" in lines() and "grpc_code=OK" in lines(),
                   slack(5), "grpc_code in the access log")


def test_grpc_through_a_tls_listener():
    """The same calls over a TLS listener (ALPN h2) to an h2c upstream."""
    if not need_grpcio():
        return
    import tlslib
    with Harness() as h:
        pki = tlslib.shared()
        crt, key = pki.leaf("g", ips=["127.0.0.1"])
        b = GrpcBackend(h, name="ab", message_size=64)
        lst = {"name": "g", "mode": "http", "routes": [{"path_prefix": "/", "service": "users"}],
               "tls": {"certificates": [{"cert": crt, "key": key}]}}
        wg = h.waygate(listeners=[lst], instances={"users": [b.instance()]},
                       services={"users": {"upstream": {"protocol": "h2c"}}})
        target = "127.0.0.1:%d" % wg.ports["g"]
        r = grpc_call(target, "unary", "/bench.B/Call", 10, count=200, tls_ca=pki.ca)
        assert r["code"] == "OK" and r["calls"] == 200 and r["replies"][0] == 64, r
        r = grpc_call(target, "bidi", "/wg.Echo/Chat", 1000, count=20, tls_ca=pki.ca)
        assert r["code"] == "OK" and r["bytes"] == 20 * 1000, r
        r = grpc_call(target, "unary", "/bench.B/Call", 1, metadata=[("x-grpc-status", "14")],
                      tls_ca=pki.ca)
        assert r["code"] == "UNAVAILABLE" and r["details"] == "wg_grpc_backend", r
