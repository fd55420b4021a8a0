"""upstream.protocol h2 end to end (issue 17, DESIGN §15): a real gRPC client
-> waygate's h2c listener -> a python3-grpcio server with a TLS certificate,
reached over TLS with ALPN h2 and verification (chain and name): unary,
bidi and server-streaming calls with trailers intact; a wrong name fails
verification and an upstream that speaks only http/1.1 over TLS gives the
client UNAVAILABLE from waygate at once instead of a hang."""

import ssl
import time

import tlslib
from grpclib import GrpcServer, grpc_call, need_grpcio
from h2lib import h2c_listener
from test_admin import get_metrics, metric, parse_metrics
from wglib import Harness, ThreadedServer, slack, wait_until


def h2_service(pki, sni="grpc.test"):
    return {"upstream": {"protocol": "h2"}, "retries": 0,
            "tls": {"enabled": True, "ca": pki.ca, "verify": True, "sni": sni}}


def test_grpc_through_a_verified_tls_h2_upstream():
    if not need_grpcio():
        return
    pki = tlslib.shared()
    crt, key = pki.leaf("grpc-up", dns=("grpc.test",), ips=("127.0.0.1",))
    with Harness() as h:
        g = GrpcServer(h, "tls-a", cert=crt, key=key)
        lst = h2c_listener("g")
        lst["routes"] = [{"path_prefix": "/wrong.", "service": "wrong"},
                         {"path_prefix": "/", "service": "users"}]
        wg = h.waygate(listeners=[lst],
                       instances={"users": [g.instance()], "wrong": [g.instance()]},
                       services={"users": h2_service(pki), "wrong": h2_service(pki, "other.test")})
        target = "127.0.0.1:%d" % wg.ports["g"]
        r = grpc_call(target, "unary", "/wg.Echo/One", 1000, count=50)
        assert r["code"] == "OK" and r["calls"] == 50 and r["replies"][0] == 1000, r
        assert r["first"] == bytes((i * 7 + 1) & 0xFF for i in range(16)).hex(), r
        assert r["trailing"].get("x-server") == "tls-a", r
        r = grpc_call(target, "bidi", "/wg.Echo/Chat", 3000, count=30)
        assert r["code"] == "OK" and r["bytes"] == 30 * 3000, r
        assert r["trailing"].get("x-server") == "tls-a", r
        r = grpc_call(target, "bidi", "/wg.Echo/Slow", 100, count=1,
                      metadata=[("x-count", "5"), ("x-interval-ms", "50")])
        assert r["code"] == "OK" and r["replies"] == [100] * 5, r
        # the whole-server health status: SERVING (field 1 = 1)
        r = grpc_call(target, "unary", "/grpc.health.v1.Health/Check", 0)
        assert r["code"] == "OK" and r["first"] == "0801", r
        # sni other.test is not in the certificate: verification fails
        r = grpc_call(target, "unary", "/wrong.S/M", 10)
        assert r["code"] == "UNAVAILABLE" and r["details"].startswith("waygate"), r


class Http11OnlyTls(ThreadedServer):
    """TLS with ALPN http/1.1 only; counts handshakes, answers nothing."""

    def __init__(self, crt, key):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(crt, key)
        self.ctx.set_alpn_protocols(["http/1.1"])
        self.handshakes = 0
        super().__init__()

    def serve(self, conn):
        try:
            conn.settimeout(30)
            with self.ctx.wrap_socket(conn, server_side=True) as s:
                self.handshakes += 1
                s.recv(4096)            # waygate closes: no HTTP/2 without ALPN h2
        except (OSError, ssl.SSLError):
            pass


def test_alpn_mismatch_is_a_clear_unavailable_not_a_hang():
    if not need_grpcio():
        return
    pki = tlslib.shared()
    crt, key = pki.leaf("grpc-up", dns=("grpc.test",), ips=("127.0.0.1",))
    with Harness() as h:
        up = Http11OnlyTls(crt, key)
        wg = h.waygate(listeners=[h2c_listener("g")],
                       instances={"users": [up.instance("h1only")]},
                       services={"users": dict(h2_service(pki), response_timeout="60s")})
        t0 = time.monotonic()
        r = grpc_call("127.0.0.1:%d" % wg.ports["g"], "unary", "/wg.Echo/One", 10, timeout=60,
                      wait=90)
        took = time.monotonic() - t0
        assert r["code"] == "UNAVAILABLE" and r["details"].startswith("waygate"), r
        assert took < slack(20), "the call waited %.1fs (60 s deadlines): a hang" % took
        assert up.handshakes >= 1
        wait_until(lambda: "no ALPN h2" in wg.stderr_text(), slack(5),
                   "the log line naming the ALPN mismatch")
        fams = parse_metrics(get_metrics(wg))   # a failed connect of the instance
        assert metric(fams, "waygate_upstream_connect_failures_total", service="users",
                      upstream="h1only") == 1
        up.close()
