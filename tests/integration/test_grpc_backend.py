"""The C gRPC test backend (tests/tools/wg_grpc_backend.c) answers a real
python3-grpcio client: unary calls with its fixed message, every echo
streaming call byte for byte, Trailers-Only errors on request, and the
Health service that waygate's gRPC probes call."""

import time

from grpclib import GrpcBackend, grpc_call, need_grpcio
from test_health import health, probes, transitions, wait_health
from wglib import Harness, slack


def test_grpc_backend_unary_echo_errors_and_health():
    if not need_grpcio():
        return
    with Harness() as h:
        b = GrpcBackend(h, name="ab", message_size=64)
        target = "127.0.0.1:%d" % b.port
        r = grpc_call(target, "unary", "/bench.B/Call", 10, count=200)
        assert r["code"] == "OK" and r["calls"] == 200, r
        assert r["replies"][0] == 64 and r["first"] == (b"ab" * 8).hex(), r
        r = grpc_call(target, "bidi", "/wg.Echo/Chat", 1000, count=50)
        assert r["code"] == "OK" and r["bytes"] == 50 * 1000, r
        assert r["first"] == bytes((i * 7 + 1) & 0xFF for i in range(16)).hex(), r
        r = grpc_call(target, "unary", "/wg.Echo/One", 3 << 20)
        assert r["code"] == "OK" and r["replies"] == [3 << 20], r
        r = grpc_call(target, "unary", "/bench.B/Call", 1, metadata=[("x-grpc-status", "14")])
        assert r["code"] == "UNAVAILABLE" and r["details"] == "wg_grpc_backend", r
        wg = h.waygate(instances={"users": [b.instance()]},
                       service_defaults=probes("grpc", interval="100ms", timeout="1s"))
        wait_health(wg, "users", "ab", "healthy", slack(10))


def test_grpc_probe_survives_goaway():
    """A server that sends GOAWAY every 2 streams and refuses the third:
    the refused probe is retried on a fresh connection, so the instance
    never goes down (unhealthy_threshold 1), and the probes reconnect."""
    with Harness() as h:
        b = GrpcBackend(h, name="ga", extra=("--goaway-after", "2"))
        wg = h.waygate(instances={"users": [b.instance()]},
                       service_defaults=probes("grpc", interval="50ms", timeout="1s",
                                               up=1, down=1))
        wait_health(wg, "users", "ga", "healthy", slack(10))
        t0 = time.monotonic()
        while time.monotonic() - t0 < 2.0:
            assert health(wg, "users", "ga") == "healthy", transitions(wg, "ga")
            time.sleep(0.05)
        assert not [t for t in transitions(wg, "ga") if t[1] == "unhealthy"], transitions(wg, "ga")
        accepted = b.accepted()
        assert accepted >= 5, "connections accepted: %d (want a new one after each GOAWAY)" % accepted
