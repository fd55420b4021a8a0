"""An h2c client of an HTTP/2 instance gets the response payload written
straight from the exchange's block, by reference (http2.c struct h2_ref,
exchange.h uin): the frame headers sit in the write buffer and the
payloads go out between them in one writev. These tests hold the client's
socket full so that payloads stay lent across many writes, partial ones
included, while the exchanges finish (the block is then the connection's),
while a stream is reset, and while the connection closes; every byte must
arrive once, in order, and nothing may leak (make asan)."""

import os
import signal
import socket
import time

from grpclib import GrpcBackend
from h2lib import Client, h2, h2c_listener
from wglib import Harness, slack

MIB = 1 << 20
GRPC = [("content-type", "application/grpc"), ("te", "trailers")]


def grpc_frame(payload):
    return b"\0" + len(payload).to_bytes(4, "big") + payload


def world(h):
    b = GrpcBackend(h, name="lent", max_streams=100)
    return h.waygate(listeners=[h2c_listener("g")], instances={"users": [b.instance()]},
                     services={"users": {"upstream": {"protocol": "h2c"}}})


def slow_client(port, rcvbuf=16384):
    """An h2c client with a small socket receive buffer and windows far
    larger than what it reads, so that TCP, not HTTP/2, holds waygate."""
    c = Client.__new__(Client)
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    raw.settimeout(10)
    raw.connect(("127.0.0.1", port))
    c.sock = raw
    cfg = h2.config.H2Configuration(client_side=True, validate_inbound_headers=False)
    c.conn = h2.connection.H2Connection(config=cfg)
    c.conn.initiate_connection()
    c.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 64 * MIB})
    c.conn.increment_flow_control_window(512 * MIB)
    c.flush()
    c.responses, c.goaway, c.closed = {}, None, False
    return c


def echo(c, payload):
    return c.request("/wg.Echo/One", method="POST", headers=GRPC, body=grpc_frame(payload))


def read_slowly(c, sids, timeout, pause=0.002):
    """Pump in small bites with pauses until every stream in sids ended."""
    deadline = time.monotonic() + timeout
    while not all(c.responses[s]["ended"] or c.responses[s]["reset"] is not None for s in sids):
        assert time.monotonic() < deadline, "responses not complete: %r" % {
            s: len(c.responses[s]["body"]) for s in sids}
        assert c.pump(0.2), "connection closed"
        time.sleep(pause)


def check_echo(c, sid, payload):
    r = c.responses[sid]
    assert r["ended"] and r["reset"] is None, (sid, r["reset"], len(r["body"]))
    body = bytes(r["body"])
    assert len(body) == len(payload) + 5, (sid, len(body), len(payload) + 5)
    assert body == grpc_frame(payload), "stream %d: payload differs at byte %d" % (
        sid, next(i for i in range(len(body)) if body[i] != grpc_frame(payload)[i]))
    assert dict(r["trailers"]).get(b"grpc-status", dict(r["trailers"]).get("grpc-status")) in \
        (b"0", "0"), r["trailers"]


def test_h2c_lent_payload_byte_exact_through_a_full_socket():
    """Three 8 MiB echoes of random bytes at once to a client that reads
    64 KiB at a time: more than the socket buffers hold, so payloads stay
    lent while the socket is full. Each reply must equal its request."""
    with Harness() as h:
        wg = world(h)
        c = slow_client(wg.ports["g"], rcvbuf=4096)
        msgs = [os.urandom(8 * MIB) for _ in range(3)]
        sids = [echo(c, m) for m in msgs]
        time.sleep(0.5)                 # the socket fills: nothing is read for a while
        read_slowly(c, sids, slack(60))
        for sid, m in zip(sids, msgs):
            check_echo(c, sid, m)
        r = c.get("/wg.Echo/One", method="POST", headers=GRPC, body=grpc_frame(b"after"))
        assert bytes(r["body"]) == grpc_frame(b"after"), r
        c.close()


def check_fixed(c, sid, name, size):
    """The backend's fixed reply: `name` repeated to `size` bytes, framed."""
    want = grpc_frame((name.encode() * (size // len(name) + 1))[:size])
    r = c.responses[sid]
    assert r["ended"] and r["reset"] is None, (sid, r["reset"], len(r["body"]))
    assert bytes(r["body"]) == want, "stream %d: %d bytes, want %d%s" % (
        sid, len(r["body"]), len(want), "" if len(r["body"]) != len(want) else " (differ)")


def test_h2c_lent_payload_stream_reset_and_connection_close():
    """4 MiB replies to a client that reads nothing for a while, then 64 KiB
    at a time: the socket's send buffer stays small (the client's window
    is), so waygate's writes are short and lent payloads go out in pieces
    (this test fails if a short write loses them). A stream reset while its
    payload is lent: the frames already framed still go out whole (the
    connection stays in sync) and the other streams' bytes are intact; then
    connections closed while lent."""
    with Harness() as h:
        name, size = "lent7", 4 * MIB   # 5 bytes: a lost or doubled frame breaks the pattern
        b = GrpcBackend(h, name=name, message_size=size)
        # python3-h2 answers every DATA frame that still arrives for the
        # stream it reset with a RST_STREAM of its own: hundreds here, which
        # the rapid-reset guard (100 a second) would rightly end the
        # connection for.
        lst = h2c_listener("g", h2_max_resets_per_second=100000)
        wg = h.waygate(listeners=[lst], instances={"users": [b.instance()]},
                       services={"users": {"upstream": {"protocol": "h2c"}}})
        c = slow_client(wg.ports["g"])
        sids = [c.request("/bench.B/Call", method="POST", headers=GRPC, body=grpc_frame(b"x"))
                for _ in range(3)]
        time.sleep(0.5)                 # waygate's writes to the full socket are short
        deadline = time.monotonic() + slack(20)
        while len(c.responses[sids[0]]["body"]) < 256 * 1024:
            assert time.monotonic() < deadline, "no bytes of the first reply"
            c.pump(0.2)
        assert not c.responses[sids[0]]["ended"], "the reply ended before the reset"
        c.conn.reset_stream(sids[0], error_code=8)      # CANCEL
        c.flush()
        read_slowly(c, sids[1:], slack(60))
        for sid in sids[1:]:
            check_fixed(c, sid, name, size)
        r = c.get("/wg.Echo/One", method="POST", headers=GRPC, body=grpc_frame(b"again"))
        assert bytes(r["body"]) == grpc_frame(b"again"), r
        c.close()

        for _ in range(3):              # gone with payload lent (ASan: nothing leaks)
            d = slow_client(wg.ports["g"], rcvbuf=4096)
            for _ in range(2):
                d.request("/bench.B/Call", method="POST", headers=GRPC, body=grpc_frame(b"x"))
            time.sleep(0.3)
            d.pump(0.2)
            d.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
            d.close()                   # RST: waygate's next write fails with payload lent
        c = slow_client(wg.ports["g"])
        sid = c.request("/bench.B/Call", method="POST", headers=GRPC, body=grpc_frame(b"x"))
        read_slowly(c, [sid], slack(30), pause=0)
        check_fixed(c, sid, name, size)
        c.close()


def test_h2c_request_bodies_lent_to_a_stalled_upstream():
    """Request bodies go to an h2c instance from the upstream stream's
    buffer by reference (upstream_h2.c struct up_ref). The instance is
    stopped (SIGSTOP) mid-upload so that waygate's writes to it are short
    and payloads stay lent across many writes; a stream the client resets
    meanwhile leaves its buffer to the connection. Once the instance runs
    again, every echo equals its request, byte for byte."""
    with Harness() as h:
        b = GrpcBackend(h, name="up", max_streams=100)
        lst = h2c_listener("g", h2_max_resets_per_second=100000)
        wg = h.waygate(listeners=[lst], instances={"users": [b.instance()]},
                       services={"users": {"upstream": {"protocol": "h2c"}}})
        c = slow_client(wg.ports["g"], rcvbuf=1 << 20)
        r = c.get("/wg.Echo/One", method="POST", headers=GRPC, body=grpc_frame(b"warm"))
        assert bytes(r["body"]) == grpc_frame(b"warm"), r   # its SETTINGS (1 MiB windows) are in
        msgs = [os.urandom(3 * MIB) for _ in range(6)]  # 6 x its 1 MiB window: over what
        sids = [c.request("/wg.Echo/One", method="POST", headers=GRPC, end=False)  # TCP buffers
                for _ in msgs]
        os.kill(b.proc.pid, signal.SIGSTOP)
        try:
            frames = [grpc_frame(m) for m in msgs]
            offs = [0] * len(frames)
            quiet = time.monotonic()
            while time.monotonic() - quiet < 0.5:   # until waygate holds what it can
                moved = False
                for i, sid in enumerate(sids):
                    room = min(c.conn.local_flow_control_window(sid),
                               c.conn.max_outbound_frame_size, len(frames[i]) - offs[i] - 1)
                    if room > 0:
                        c.conn.send_data(sid, frames[i][offs[i]:offs[i] + room])
                        offs[i] += room
                        moved = True
                c.flush()
                if moved:
                    quiet = time.monotonic()
                else:
                    c.pump(0.05)
            assert sum(offs) > 3 * MIB, "uploaded with the instance stopped: %r" % offs
            time.sleep(0.3)
            c.conn.reset_stream(sids[-1], error_code=8)  # CANCEL, with bytes lent
            c.flush()
        finally:
            os.kill(b.proc.pid, signal.SIGCONT)
        for i, sid in enumerate(sids[:-1]):
            c.send_body(sid, frames[i][offs[i]:], end=True)
        read_slowly(c, sids[:-1], slack(60), pause=0)
        for sid, m in zip(sids[:-1], msgs[:-1]):
            check_echo(c, sid, m)
        r = c.get("/wg.Echo/One", method="POST", headers=GRPC, body=grpc_frame(b"after"))
        assert bytes(r["body"]) == grpc_frame(b"after"), r
        c.close()


def test_h2c_reply_frames_whole_across_receive_buffers():
    """A 16 KiB DATA frame of the instance's that a 64 KiB read cuts in two
    (one piece at the end of one receive buffer, the rest at the start of
    the next) reaches the client as one 16,384-byte frame, not two (http2.c
    send_queued). A 1 MiB reply is 64 such frames and a 5-byte one; every
    64 KiB read ends inside a frame. (The backend keeps to 16 KiB frames
    here, as grpc-go does; waygate would let it send 256 KiB ones.)"""
    size, name = MIB, "whole"
    with Harness() as h:
        b = GrpcBackend(h, name=name, message_size=size, extra=["--frame-max", "16384"])
        wg = h.waygate(listeners=[h2c_listener("g")], instances={"users": [b.instance()]},
                       services={"users": {"upstream": {"protocol": "h2c"}}})
        c = slow_client(wg.ports["g"], rcvbuf=4 * MIB)
        frames = []
        for _ in range(8):
            sid = c.request("/bench.B/Call", method="POST", headers=GRPC, body=grpc_frame(b"x"))
            read_slowly(c, [sid], slack(20), pause=0)
            check_fixed(c, sid, name, size)
            frames += c.responses[sid]["frames"]
        cut = [n for n in frames if n not in (16384, 5)]
        # A read that ends where the instance's writes did (the rest of the
        # frame not sent yet) still sends what it has: a few, not one a read.
        assert len(cut) <= 8, "%d of %d frames not whole: %r" % (len(cut), len(frames), cut[:20])
        c.close()
