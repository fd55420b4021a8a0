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


def test_grpc_backend_uncopied_frames_byte_exact_through_a_full_socket():
    """The fixed reply leaves in DATA frames written from where the message
    is; what a partial write leaves is kept and written first. A client
    that lets 1 MiB frames in but does not read for a while (the socket
    fills, the backend's writes end mid-frame) then reads two 4 MiB replies
    of interleaved streams byte for byte, each ended by grpc-status 0."""
    from h2lib import Client, h2
    size = 4 << 20
    with Harness() as h:
        b = GrpcBackend(h, name="nc", message_size=size)
        c = Client(b.port, settings={h2.settings.SettingCodes.MAX_FRAME_SIZE: 1 << 20,
                                     h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 24})
        c.conn.increment_flow_control_window(1 << 26)
        c.flush()
        hdrs = [("content-type", "application/grpc"), ("te", "trailers")]
        body = bytes([0, 0, 0, 0, 1]) + b"q"
        sids = [c.request("/bench.B/Call", method="POST", headers=hdrs, body=body)
                for _ in range(2)]
        time.sleep(0.5)                 # the backend fills the socket and keeps the rest
        want = bytes([0]) + size.to_bytes(4, "big") + (b"nc" * (size // 2))
        for sid in sids:
            r = c.response(sid, timeout=slack(20))
            assert r["reset"] is None and r["status"] == 200, r["status"]
            assert len(r["body"]) == len(want) and r["body"] == want, \
                "stream %d: %d bytes, first difference at %s" % (
                    sid, len(r["body"]), next((i for i, (x, y) in enumerate(zip(r["body"], want))
                                               if x != y), None))
            assert (b"grpc-status", b"0") in r["trailers"], r["trailers"]
            assert max(r["frames"]) > 16384, max(r["frames"])
        c.close()
