"""Every gRPC streaming kind through waygate (issue 17, DESIGN §15), real
python3-grpcio on both sides (grpc_client.py -> waygate -> grpc_server.py):
unary, server-streaming, client-streaming and bidi over h2c and TLS;
long-lived streams judged by tunnel_idle_timeout (not response_timeout)
once the response head is out, an idle one ended with a status the client
reads; an instance SIGKILLed mid-stream: the client reads UNAVAILABLE, the
failure ejects it (passive outlier detection), later calls go to the
other instance."""

from grpclib import GrpcServer, GrpcStream, grpc_call, need_grpcio
from h2lib import h2c_listener
from test_grpc_flow import pattern_hex, tls_listener
from wglib import Harness, slack, wait_until


def test_grpc_every_streaming_kind_over_h2c_and_tls():
    if not need_grpcio():
        return
    import tlslib
    with Harness() as h:
        pki = tlslib.shared()
        g = GrpcServer(h, "kinds")
        wg = h.waygate(listeners=[h2c_listener("g"), tls_listener(pki)],
                       instances={"users": [g.instance()]},
                       services={"users": {"upstream": {"protocol": "h2c"}}})
        for port, ca in ((wg.ports["g"], None), (wg.ports["s"], pki.ca)):
            target = "127.0.0.1:%d" % port
            r = grpc_call(target, "unary", "/wg.Echo/One", 1000, count=20, tls_ca=ca)
            assert r["code"] == "OK" and r["calls"] == 20 and r["bytes"] == 20 * 1000, r
            assert r["servers"] == {"kinds": 20}, r
            r = grpc_call(target, "server", "/wg.Echo/Down", 1000, count=50, tls_ca=ca)
            assert r["code"] == "OK" and r["count"] == 50 and r["bytes"] == 50 * 1000, r
            assert r["first"] == pattern_hex(), r
            r = grpc_call(target, "client", "/wg.Echo/Up", 1000, count=50, tls_ca=ca)
            assert r["code"] == "OK" and r["count"] == 1, r
            assert r["first"] == b"50 50000".hex(), r
            r = grpc_call(target, "bidi", "/wg.Echo/Chat", 1000, count=50, tls_ca=ca)
            assert r["code"] == "OK" and r["count"] == 50 and r["bytes"] == 50 * 1000, r
        assert g.echo_calls() == ["One"] * 20 + ["Down", "Up", "Chat"] + ["One"] * 20 + \
            ["Down", "Up", "Chat"], g.echo_calls()


def test_grpc_long_lived_streams_use_tunnel_idle_timeout():
    """response_timeout 1s, tunnel_idle_timeout 3s: streams that live 4.5 s
    while messages keep flowing (either way) pass; a server stream that
    goes quiet is ended after the idle timeout with DEADLINE_EXCEEDED and
    waygate's grpc-message, after the message that did arrive."""
    if not need_grpcio():
        return
    with Harness() as h:
        g = GrpcServer(h, "long")
        lst = h2c_listener("g", tunnel_idle_timeout="3s")     # 2 s was cut once under load
        wg = h.waygate(listeners=[lst], instances={"users": [g.instance()]},
                       services={"users": {"upstream": {"protocol": "h2c"},
                                           "response_timeout": "1s"}})
        target = "127.0.0.1:%d" % wg.ports["g"]
        r = grpc_call(target, "server", "/wg.Echo/Down", 100, count=15, interval_ms=300, timeout=30)
        assert r["code"] == "OK" and r["count"] == 15, r
        r = grpc_call(target, "bidi", "/wg.Echo/Chat", 100, count=15, interval_ms=300, timeout=30)
        assert r["code"] == "OK" and r["count"] == 15, r
        # the server sent its head and then only reads: the client's
        # messages are what keeps this stream from being idle
        r = grpc_call(target, "client", "/wg.Echo/Up", 100, count=15, interval_ms=300, timeout=30)
        assert r["code"] == "OK" and r["first"] == b"15 1500".hex(), r
        r = grpc_call(target, "server", "/wg.Echo/Down", 100, count=2, interval_ms=20000,
                      timeout=60)
        assert r["code"] == "DEADLINE_EXCEEDED" and r["count"] == 1, r
        assert r["details"] == "waygate: stream idle past tunnel_idle_timeout", r
        assert 2.5 < r["seconds"] < slack(12), r


def two_instances(h, name):
    a, b = GrpcServer(h, name + "-a"), GrpcServer(h, name + "-b")
    wg = h.waygate(listeners=[h2c_listener("g")],
                   instances={"users": [a.instance(), b.instance()]},
                   services={"users": {"upstream": {"protocol": "h2c"}}},
                   service_defaults={"outlier_detection": {"consecutive_failures": 1,
                                                           "base_ejection_time": "60s"}},
                   log={"level": "info", "access_log": h.path("access.log"),
                        "access_format": "text"})
    return a, b, wg


def killed_mid_stream(kind, path, method):
    """A long `kind` call; once its first reply arrived, the instance
    serving it is SIGKILLed: the client reads UNAVAILABLE from waygate's
    trailers, the instance is ejected, later calls reach the survivor."""
    from test_health import health
    with Harness() as h:
        a, b, wg = two_instances(h, kind)
        target = "127.0.0.1:%d" % wg.ports["g"]
        call = GrpcStream(h, target, kind, path, 100, count=200, interval_ms=100, timeout=60)
        call.wait_reply(slack(30))
        serving = [g for g in (a, b) if method in g.echo_calls()]
        assert len(serving) == 1, (a.echo_calls(), b.echo_calls())
        killed = serving[0]
        survivor = b if killed is a else a
        killed.proc.kill()              # SIGKILL, by PID
        r = call.result(slack(20))
        assert r["code"] == "UNAVAILABLE", r
        assert r["details"] == "waygate: upstream connection lost", r
        assert 1 <= r["count"] < 200, r
        wait_until(lambda: health(wg, "users", killed.name) == "ejected", slack(5),
                   "the killed instance ejected (now %s)" % health(wg, "users", killed.name))
        assert health(wg, "users", survivor.name) == "healthy"

        def cut_logged():
            try:
                with open(h.path("access.log")) as f:
                    return any("reason=upstream_error" in l and "grpc_code=UNAVAILABLE" in l
                               and ("upstream=%s " % killed.name) in l for l in f)
            except FileNotFoundError:
                return False
        wait_until(cut_logged, slack(5), "the cut stream's access log line")
        r = grpc_call(target, "unary", "/wg.Echo/One", 10, count=10)
        assert r["code"] == "OK" and r["calls"] == 10, r
        assert r["servers"] == {survivor.name: 10}, r


def test_grpc_instance_killed_mid_server_stream():
    if need_grpcio():
        killed_mid_stream("server", "/wg.Echo/Down", "Down")


def test_grpc_instance_killed_mid_bidi_stream():
    if need_grpcio():
        killed_mid_stream("bidi", "/wg.Echo/Chat", "Chat")


class ResettingUpstream:
    """A python3-h2 server (a thread; closed by close()): every stream gets
    a gRPC response head and one 10-byte message, then RST_STREAM with the
    code its request's "x-rst" field names."""

    def __init__(self):
        import socket
        import threading
        from wglib import debian_import
        self.h2 = debian_import("h2.connection")
        debian_import("h2.config")
        self.events = debian_import("h2.events")
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.done = False
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        import threading
        while not self.done:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.conn, args=(c,), daemon=True).start()

    def conn(self, c):
        import h2.config
        conn = self.h2.H2Connection(config=h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        c.sendall(conn.data_to_send())
        while True:
            try:
                data = c.recv(65536)
            except OSError:
                return
            if not data:
                return
            for ev in conn.receive_data(data):
                if isinstance(ev, self.events.RequestReceived):
                    code = int(dict((k.decode() if isinstance(k, bytes) else k,
                                     v.decode() if isinstance(v, bytes) else v)
                                    for k, v in ev.headers).get("x-rst", "2"))
                    conn.send_headers(ev.stream_id, [(":status", "200"),
                                                     ("content-type", "application/grpc")])
                    conn.send_data(ev.stream_id, b"\0\0\0\0\x0a" + b"r" * 10)
                    c.sendall(conn.data_to_send())
                    conn.reset_stream(ev.stream_id, code)
                elif isinstance(ev, self.events.DataReceived):
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            try:
                c.sendall(conn.data_to_send())
            except OSError:
                return

    def close(self):
        self.done = True
        self.sock.close()


def test_grpc_upstream_reset_mid_stream_is_a_status():
    """An upstream that resets a stream after its head and a message: the
    client reads the message, then the status grpc's mapping gives the
    reset code (http-grpc-status-mapping.md), from waygate's trailers."""
    if not need_grpcio():
        return
    with Harness() as h:
        up = ResettingUpstream()
        inst = {"id": "rst", "address": "127.0.0.1", "port": up.port, "weight": 100}
        wg = h.waygate(listeners=[h2c_listener("g")], instances={"users": [inst]},
                       services={"users": {"upstream": {"protocol": "h2c"}}})
        target = "127.0.0.1:%d" % wg.ports["g"]
        for code, status in ((8, "CANCELLED"), (7, "UNAVAILABLE"), (2, "INTERNAL"),
                             (0, "INTERNAL"), (11, "RESOURCE_EXHAUSTED")):
            r = grpc_call(target, "server", "/wg.Echo/Down", 10, count=5,
                          metadata=[("x-rst", str(code))])
            assert r["code"] == status and r["count"] == 1 and r["first"] == (b"r" * 10).hex(), \
                (code, r)
            assert r["details"] == "waygate: upstream reset the stream", (code, r)
        up.close()
