"""gRPC flow control through waygate (issue 17, DESIGN §15), real
python3-grpcio on both sides (grpc_client.py -> waygate -> grpc_server.py):
16 MiB messages both ways over h2c and TLS, and bounded buffering for a
client that reads a long streamed response slowly."""

from grpclib import GrpcServer, grpc_call, need_grpcio
from h2lib import h2c_listener
from wglib import Harness, wait_until

MIB = 1 << 20


def tls_listener(pki, name="s"):
    crt, key = pki.leaf(name, ips=["127.0.0.1"])
    return {"name": name, "mode": "http", "routes": [{"path_prefix": "/", "service": "users"}],
            "tls": {"certificates": [{"cert": crt, "key": key}]}}


def pattern_hex(n=16):
    return bytes((i * 7 + 1) & 0xFF for i in range(n)).hex()


def test_grpc_16mib_messages_over_h2c_and_tls():
    """A 16 MiB unary request echoed back as a 16 MiB response, and a
    16 MiB message streamed by the server, through the h2c and the TLS
    listener. (They used to stall past ~8 MiB: the de-chunked response
    block kept each chunk's framing as a gap that only grew while grpcio
    kept the block from draining, until no chunk fitted.)"""
    if not need_grpcio():
        return
    import tlslib
    with Harness() as h:
        pki = tlslib.shared()
        g = GrpcServer(h, "g16")
        wg = h.waygate(listeners=[h2c_listener("g"), tls_listener(pki)],
                       instances={"users": [g.instance()]},
                       services={"users": {"upstream": {"protocol": "h2c"}}})
        for port, ca in ((wg.ports["g"], None), (wg.ports["s"], pki.ca)):
            target = "127.0.0.1:%d" % port
            r = grpc_call(target, "unary", "/wg.Echo/One", 16 * MIB, timeout=60, tls_ca=ca, wait=90)
            assert r["code"] == "OK" and r["replies"] == [16 * MIB], r
            assert r["first"] == pattern_hex(), r
            r = grpc_call(target, "server", "/wg.Echo/Down", 16 * MIB, count=1, timeout=60,
                          tls_ca=ca, wait=90)
            assert r["code"] == "OK" and r["replies"] == [16 * MIB], r


def grpc_frame(payload):
    return b"\0" + len(payload).to_bytes(4, "big") + payload


GRPC_HEADERS = [("content-type", "application/grpc"), ("te", "trailers")]


def test_grpc_slow_reader_does_not_make_waygate_buffer():
    """A client that stops opening its window while the server streams
    16 MiB: waygate stops reading the upstream stream, so the server is
    held after its first messages and waygate's RSS does not grow by the
    response (bytes waygate holds: the upstream's 256 KiB stream window,
    shared by the stream's buffer and the queue for the client, whose
    64 KiB window went out; the server got 3 messages of 128 KiB ahead
    while the stream's buffer and the queue had a window each); once the
    client reads again, every byte arrives and the trailers end it."""
    if not need_grpcio():
        return
    import time
    from h2lib import Client
    from wglib import SANITIZED, slack
    count, size = 128, 128 << 10
    with Harness() as h:
        g = GrpcServer(h, "slow")
        wg = h.waygate(listeners=[h2c_listener("g")], instances={"users": [g.instance()]},
                       services={"users": {"upstream": {"protocol": "h2c"}}})
        rss0 = wg.rss_kib()
        c = Client(wg.ports["g"])
        sid = c.request("/wg.Echo/Down", method="POST", headers=GRPC_HEADERS,
                        body=grpc_frame(b"%d %d 0" % (count, size)))
        peak = 0
        t0 = time.monotonic()
        while time.monotonic() - t0 < slack(2.0):   # no reads, no WINDOW_UPDATE
            time.sleep(0.2)
            peak = max(peak, wg.rss_kib() - rss0)
        held = g.down_sent()
        print("server %d messages ahead, waygate RSS +%d KiB" % (held, peak))
        assert held <= 2, "the server got %d of %d messages ahead of a client that reads none" \
            % (held, count)
        if not SANITIZED:
            assert peak < 8 * 1024, "waygate's RSS grew %d KiB for a client that reads none" % peak
        r = c.response(sid, timeout=slack(60))
        assert len(r["body"]) == count * (size + 5), len(r["body"])
        assert dict((k.decode(), v.decode()) for k, v in r["trailers"]).get("grpc-status") == "0", r
        assert g.down_sent() == count
        c.close()


def test_grpc_upload_to_a_stalled_upstream_is_held_by_flow_control():
    """The other way: an upstream that reads nothing (connects are accepted
    by the kernel's backlog only). The client can put no more than a few
    windows into waygate (downstream stage, the exchange's block, the
    upstream stream's buffer and its initial 64 KiB window), not its 16 MiB
    message."""
    import time
    from h2lib import Client
    from test_grpc_proxy import silent_upstream
    from wglib import slack
    with Harness() as h:
        quiet = silent_upstream()
        inst = {"id": "q", "address": "127.0.0.1", "port": quiet.getsockname()[1], "weight": 100}
        wg = h.waygate(listeners=[h2c_listener("g")], instances={"users": [inst]},
                       services={"users": {"upstream": {"protocol": "h2c"},
                                           "response_timeout": "60s"}})
        c = Client(wg.ports["g"], settings={4: 1 << 24})
        sid = c.request("/wg.Echo/Up", method="POST", headers=GRPC_HEADERS, end=False)
        total, sent = 16 << 20, 0
        chunk = bytes(16384)
        t0 = time.monotonic()
        while sent < total and time.monotonic() - t0 < slack(3.0):
            window = min(c.conn.local_flow_control_window(sid), len(chunk))
            if window > 0:
                c.conn.send_data(sid, chunk[:window])
                sent += window
                c.flush()
            else:
                c.pump(0.1)
        print("client sent %d bytes to a stalled upstream" % sent)
        assert sent <= 1 << 20, "a stalled upstream let the client send %d bytes" % sent
        assert sent >= 64 << 10, "the client could send only %d bytes" % sent
        c.close()
        quiet.close()


def test_grpc_streams_end_after_their_last_bytes():
    """Rounds of 24 concurrent 2 MiB server streams on one connection, a
    client slower than the server: every stream ends with its trailers.
    (The last data call could leave the exchange marked paused after the
    upstream stream had closed, which kept the trailers out for good: a
    stream or two in a few rounds stalled with its whole body delivered.)"""
    if not need_grpcio():
        return
    from h2lib import Client
    from wglib import slack
    count, size, streams = 16, 128 << 10, 24
    with Harness() as h:
        g = GrpcServer(h, "ends")
        wg = h.waygate(listeners=[h2c_listener("g")], instances={"users": [g.instance()]},
                       services={"users": {"upstream": {"protocol": "h2c"}}})
        c = Client(wg.ports["g"], settings={4: 1 << 20})
        for rnd in range(5):
            sids = [c.request("/wg.Echo/Down", method="POST", headers=GRPC_HEADERS,
                              body=grpc_frame(b"%d %d 0" % (count, size))) for _ in range(streams)]
            try:
                c.wait(lambda: all(c.responses[s]["ended"] for s in sids), slack(20), "the streams")
            except AssertionError:
                stuck = [(s, len(c.responses[s]["body"])) for s in sids if not c.responses[s]["ended"]]
                raise AssertionError("round %d: streams not ended (id, body bytes): %s"
                                     % (rnd, stuck)) from None
            for s in sids:
                r = c.responses.pop(s)
                assert len(r["body"]) == count * (size + 5), (s, len(r["body"]))
                assert (b"grpc-status", b"0") in r["trailers"], (s, r["trailers"])
        c.close()


def test_grpc_streams_ending_ahead_of_their_client_keep_the_connection_window():
    """Rounds of 60 streams of 192 KiB that the upstream finishes while the
    client reads none: waygate holds most of each one when its upstream
    stream closes. Those bytes go back to the upstream connection's 16 MiB
    window (they were lost from it at every such stream, and the second
    round stalled the whole connection)."""
    if not need_grpcio():
        return
    import time
    from h2lib import Client
    from wglib import slack
    count, size, streams = 3, 64 << 10, 60
    with Harness() as h:
        g = GrpcServer(h, "window")
        wg = h.waygate(listeners=[h2c_listener("g", max_concurrent_streams=100)],
                       instances={"users": [g.instance()]},
                       services={"users": {"upstream": {"protocol": "h2c"}}})
        c = Client(wg.ports["g"])
        for rnd in range(3):
            calls = len(g.echo_calls())
            sids = [c.request("/wg.Echo/Down", method="POST", headers=GRPC_HEADERS,
                              body=grpc_frame(b"%d %d 0" % (count, size))) for _ in range(streams)]
            wait_until(lambda: len(g.echo_calls()) - calls == streams, slack(20),
                       "round %d: the %d calls at the server" % (rnd, streams))
            time.sleep(1.0)             # the server finishes them; the client reads nothing
            try:
                c.wait(lambda: all(c.responses[s]["ended"] for s in sids), slack(20), "the streams")
            except AssertionError:
                stuck = sum(1 for s in sids if not c.responses[s]["ended"])
                raise AssertionError("round %d: %d of %d streams did not end" % (rnd, stuck, streams)) \
                    from None
            for s in sids:
                r = c.responses.pop(s)
                assert len(r["body"]) == count * (size + 5), (s, len(r["body"]))
                assert (b"grpc-status", b"0") in r["trailers"], (s, r["trailers"])
        c.close()


def test_grpc_stalled_streams_do_not_block_their_upstream_connection():
    """Bytes a stream holds because its client reads nothing are given back
    to the upstream connection's window: one client with 90 non-reading
    streams of 1 MiB replies (each holding an upstream stream window of
    256 KiB, 22 MiB in all) does not stall other clients' calls that share
    the upstream connection with them. (They held the connection's 16 MiB
    window: past 64 such streams every call on that connection stopped.)"""
    if not need_grpcio():
        return
    import time
    from grpclib import GrpcBackend
    from h2lib import Client
    from wglib import slack
    with Harness() as h:
        b = GrpcBackend(h, name="big", message_size=MIB, max_streams=1000)
        wg = h.waygate(listeners=[h2c_listener("g")], instances={"users": [b.instance()]},
                       services={"users": {"upstream": {"protocol": "h2c"},
                                           "response_timeout": "60s"}}, workers=1)
        target = "127.0.0.1:%d" % wg.ports["g"]
        assert grpc_call(target, "unary", "/wg.Echo/One", 16)["code"] == "OK"
        c = Client(wg.ports["g"])
        sids = [c.request("/bench.B/Call", method="POST", headers=GRPC_HEADERS,
                          body=grpc_frame(b"q")) for _ in range(90)]
        time.sleep(slack(1.0))          # the backend fills every window it is given
        for i in range(3):
            r = grpc_call(target, "unary", "/wg.Echo/One", 1000, timeout=slack(5), wait=slack(30))
            assert r["code"] == "OK" and r["replies"] == [1000], \
                "call %d behind 90 stalled streams: %r" % (i, r)
        r = c.response(sids[0], timeout=slack(30))          # the stalled ones still end whole
        assert len(r["body"]) == MIB + 5, len(r["body"])
        c.close()
