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
    # grpcio acks each small reply with its own WINDOW_UPDATE (and BDP
    # PINGs): thousands of calls a second pass the default flood limit
    return h.waygate(listeners=[h2c_listener("g", h2_max_control_frames_per_second=100000)],
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
