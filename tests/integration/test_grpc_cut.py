"""gRPC calls waygate cuts itself (DESIGN §15, exchange.h wg_exchange_abort)
at on_unhealthy: close, at drain_timeout and at shutdown_timeout, in the two
cases test_grpc_drain.py's HTTP/2 server stream does not cover:

- a call still waiting for its response head (a python3-grpcio server's
  /wg.Echo/Slow holding it for 30 s): a Trailers-Only answer, grpc-status
  14 UNAVAILABLE and grpc-message "waygate: <why>", to a real grpcio client
  (HTTP/2) and to gRPC-Web clients over HTTP/1.1 (http.client) and h2
  (python3-h2), never a reset or a closed connection;
- a gRPC-Web server stream (binary and -text, over HTTP/1.1 and h2) whose
  head and first messages are out: its body ends with a trailer frame (0x80)
  carrying the same status after the messages already sent, then the
  response ends normally (the last chunk for HTTP/1.1), never truncated.

All seven calls run at once on one instance, and one cut ends them all.
Calls still waiting for a forward_auth verdict (a grpcio call, gRPC-Web
over h2 and HTTP/1.1) have no response byte out either: the same
Trailers-Only answer at shutdown_timeout and at the auth instance's
drain_timeout. gRPC-Web calls passed unchanged to an http1 instance that
speaks gRPC-Web itself end the same way when cut between two messages,
and are closed / reset when cut inside one."""

import http.client
import signal
import socket
import time

from grpclib import GrpcCall, GrpcServer, need_grpcio
from h2lib import Raw, h2c_listener
from test_grpc_web import frame, frames, trailer_fields
from test_grpc_web_text import TEXT, b64, dechunk, down, payload, unb64
from wglib import Harness, http_request, slack, wait_until

WEB = "application/grpc-web"
HOLD = [("x-count", "1"), ("x-interval-ms", "30000")]   # /wg.Echo/Slow: head after 30 s


def world(h, name, services=None, **top):
    g = GrpcServer(h, name)
    svc = {"upstream": {"protocol": "h2c"}}
    svc.update(services or {})
    wg = h.waygate(listeners=[h2c_listener("g")], instances={"users": [g.instance()]},
                   services={"users": svc},
                   log={"level": "info", "access_log": h.path("access.log"),
                        "access_format": "text"}, **top)
    return g, wg, wg.ports["g"]


class Calls:
    """The seven calls in flight: three waiting for their head, four
    gRPC-Web server streams (100-byte messages 100 ms apart) with theirs out."""

    def __init__(self, g, port):
        self.g = g
        # waiting for the head: grpcio (HTTP/2), gRPC-Web over HTTP/1.1 and h2
        self.grpcio = GrpcCall("127.0.0.1:%d" % port, "bidi", "/wg.Echo/Slow", 8, count=1,
                               metadata=HOLD, timeout=60, wait=slack(60))
        self.h1_wait = http.client.HTTPConnection("127.0.0.1", port, timeout=slack(30))
        self.h1_wait.request("POST", "/wg.Echo/Slow", body=frame(b"hold"),
                             headers=dict([("Content-Type", WEB), ("X-Grpc-Web", "1")] + HOLD))
        self.c = Raw(port)              # (python3-h2 reads nothing after a GOAWAY)
        self.h2_wait = 1
        self.c.request(1, "/wg.Echo/Slow", body=frame(b"hold"),
                       headers=[("content-type", WEB), ("x-grpc-web", "1")] + HOLD)
        # streaming: binary and -text over HTTP/1.1 and h2
        self.h1_streams = {}
        for ct, body in ((WEB, down(300, 100, 100)), (TEXT, b64(down(300, 100, 100)))):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=slack(30))
            conn.request("POST", "/wg.Echo/Down", body=body,
                         headers={"Content-Type": ct, "X-Grpc-Web": "1"})
            self.h1_streams[ct] = (conn, conn.getresponse())     # the head is out
        self.h2_streams = {WEB: 3, TEXT: 5}
        for ct, body in ((WEB, down(300, 100, 100)), (TEXT, b64(down(300, 100, 100)))):
            self.c.request(self.h2_streams[ct], "/wg.Echo/Down", body=body,
                           headers=[("content-type", ct), ("x-grpc-web", "1")])
        wait_until(lambda: self.c.pump(0.05) and
                   all(self.c.streams[s]["status"] for s in self.h2_streams.values()),
                   slack(10), "the h2 gRPC-Web streams' heads")
        wait_until(lambda: g.echo_calls().count("Slow") == 3 and g.echo_calls().count("Down") == 4,
                   slack(10), "the seven calls at the server (%s)" % g.echo_calls())

    def check(self, why, within):
        message = "waygate: " + why
        # Trailers-Only to the calls that had no response head yet
        r = self.grpcio.result()
        assert r["code"] == "UNAVAILABLE" and r["details"] == message and r["count"] == 0, r
        resp = self.h1_wait.getresponse()
        body = resp.read()
        assert resp.status == 200 and resp.getheader("Content-Type") == WEB, resp.getheaders()
        assert resp.getheader("grpc-status") == "14", resp.getheaders()
        assert resp.getheader("grpc-message") == message and body == b"", (resp.getheaders(), body)
        r = self.c.response(self.h2_wait, slack(within))
        hd = r["headers"]
        assert r["status"] == 200 and r["reset"] is None and r["body"] == b"", r
        assert hd.get("grpc-status") == "14" and hd.get("grpc-message") == message, r
        # the gRPC-Web streams: their messages, then the trailer frame
        for ct, (conn, resp) in self.h1_streams.items():
            body = resp.read()          # http.client: IncompleteRead without the last chunk
            assert resp.getheader("Transfer-Encoding") == "chunked", resp.getheaders()
            stream_ended(ct, body, message)
            conn.close()
        for ct, sid in self.h2_streams.items():
            r = self.c.response(sid, slack(within))
            assert r["reset"] is None and r["ended"] and "grpc-status" not in r["headers"], \
                (ct, r["reset"], r["headers"], len(r["body"]))
            stream_ended(ct, bytes(r["body"]), message)
        self.c.close()
        self.h1_wait.close()


def stream_ended(ct, body, message):
    """The body: whole 100-byte messages, then the trailer frame of the cut."""
    fs = frames(unb64(body) if ct == TEXT else body)
    assert len(fs) >= 2 and fs[:-1] == [(0, payload(100))] * (len(fs) - 1), (ct, fs[-2:])
    assert fs[-1][0] == 0x80, (ct, fs[-1])
    assert trailer_fields(fs[-1][1]) == {"grpc-status": "14", "grpc-message": message}, fs[-1]


def cuts_logged(h, reason, n):
    def logged():
        try:
            with open(h.path("access.log")) as f:
                return sum(1 for l in f if ("reason=%s " % reason) in l and
                           "grpc_code=UNAVAILABLE" in l)
        except FileNotFoundError:
            return 0
    wait_until(lambda: logged() == n, slack(5), "%d access log lines reason=%s" % (n, reason))


def test_grpc_calls_cut_on_unhealthy():
    """on_unhealthy: close: the instance's gRPC probe says NOT_SERVING; the
    next tick cuts the seven calls."""
    if not need_grpcio():
        return
    from test_health import probes, wait_health
    with Harness() as h:
        hc = probes("grpc", interval="100ms", timeout="1s", up=1, down=1)
        g, wg, port = world(h, "sick", dict(hc, on_unhealthy="close"))
        wait_health(wg, "users", "sick", "healthy", slack(10))
        calls = Calls(g, port)
        g.set_all({"": "NOT_SERVING"})
        calls.check("upstream unhealthy (on_unhealthy: close)", 10)
        cuts_logged(h, "on_unhealthy", 7)


def test_grpc_calls_cut_at_drain_timeout():
    """The instance drained through the admin API, drain_timeout 1s."""
    if not need_grpcio():
        return
    with Harness() as h:
        g, wg, port = world(h, "drained", {"drain_timeout": "1s"})
        calls = Calls(g, port)
        r = http_request(wg.admin_port, "POST", "/services/users/instances/drained/drain",
                         timeout=slack(10))
        assert r.status == 200, r
        calls.check("upstream drained (drain_timeout)", 10)
        cuts_logged(h, "drain_timeout", 7)


def test_grpc_calls_cut_at_shutdown_timeout():
    """SIGTERM with shutdown_timeout 2s: the calls go on, then the worker
    stops, each gets its end in the last write; exit status 0."""
    if not need_grpcio():
        return
    with Harness() as h:
        g, wg, port = world(h, "stopping", shutdown_timeout="2s")
        calls = Calls(g, port)
        wg.proc.signal(signal.SIGTERM)
        calls.check("shutting down (shutdown_timeout)", 15)
        assert wg.proc.wait(slack(10)) == 0
        cuts_logged(h, "shutdown", 7)


def test_grpc_web_streams_end_with_a_trailer_frame_when_the_upstream_dies():
    """The same rule for an upstream that fails mid-stream (grpc_cut): the
    grpcio server SIGKILLed under gRPC-Web server streams, binary over
    HTTP/1.1 and -text over h2, ends their bodies with UNAVAILABLE
    'waygate: upstream connection lost' in a trailer frame."""
    if not need_grpcio():
        return
    with Harness() as h:
        g, wg, port = world(h, "doomed")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=slack(30))
        conn.request("POST", "/wg.Echo/Down", body=down(300, 100, 100),
                     headers={"Content-Type": WEB, "X-Grpc-Web": "1"})
        resp = conn.getresponse()
        c = Raw(port)
        c.request(1, "/wg.Echo/Down", body=b64(down(300, 100, 100)),
                  headers=[("content-type", TEXT), ("x-grpc-web", "1")])
        wait_until(lambda: c.pump(0.05) and c.streams[1]["status"] and
                   g.echo_calls().count("Down") == 2, slack(10), "both streams under way")
        g.proc.kill()                   # SIGKILL, by PID
        message = "waygate: upstream connection lost"
        stream_ended(WEB, resp.read(), message)
        conn.close()
        r = c.response(1, slack(10))
        assert r["reset"] is None and r["ended"], (r["reset"], r["headers"], len(r["body"]))
        stream_ended(TEXT, r["body"], message)
        c.close()
        cuts_logged(h, "upstream_error", 2)


def test_grpc_web_stream_cut_inside_a_message_is_closed():
    """A cut that falls inside a message cannot end the body with a
    trailer frame (the client would read it as the message's bytes): a
    4 MiB message to an HTTP/1.1 client that reads nothing is still on its
    way at drain_timeout, and the connection is closed without a last
    chunk, as before."""
    if not need_grpcio():
        return
    with Harness() as h:
        g, wg, port = world(h, "big", {"drain_timeout": "1s"})
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)    # the message cannot fit
        s.settimeout(slack(10))
        s.connect(("127.0.0.1", port))
        body = down(1, 4 << 20, 0)
        s.sendall(("POST /wg.Echo/Down HTTP/1.1\r\nHost: x\r\nContent-Type: %s\r\n"
                   "Content-Length: %d\r\n\r\n" % (WEB, len(body))).encode() + body)
        buf = b""
        while b"\r\n\r\n" not in buf:
            got = s.recv(1024)
            assert got, buf
            buf += got
        wait_until(lambda: "Down" in g.echo_calls(), slack(10), "the call at the server")
        r = http_request(wg.admin_port, "POST", "/services/users/instances/big/drain",
                         timeout=slack(10))
        assert r.status == 200, r
        cuts_logged_any(h, "drain_timeout")
        end = time.monotonic() + slack(20)
        while True:                     # now read it all: the close comes after what was sent
            assert time.monotonic() < end, len(buf)
            got = s.recv(1 << 20)
            if not got:
                break
            buf += got
        s.close()
        data, ended = dechunk(buf.split(b"\r\n\r\n", 1)[1])
        assert not ended and 0 < len(data) < 5 + (4 << 20), (ended, len(data))


def cuts_logged_any(h, reason):
    def logged():
        try:
            with open(h.path("access.log")) as f:
                return any(("reason=%s " % reason) in l for l in f)
        except FileNotFoundError:
            return False
    wait_until(logged, slack(10), "an access log line reason=%s" % reason)


def auth_world(h, name, auth_services=None, **top):
    """A gRPC service behind forward_auth whose auth service (auth_server.py,
    HTTP/1.1) holds its verdict 30 s for "Bearer slow:30000"."""
    from test_forward_auth import AuthServer, fa
    g = GrpcServer(h, name)
    a = AuthServer(h, "auth-" + name)
    routes = [{"path_prefix": "/", "service": "users", "policies": [fa(timeout="60s")]}]
    services = {"users": {"upstream": {"protocol": "h2c"}}, "auth": auth_services or {}}
    wg = h.waygate(listeners=[dict(h2c_listener("g"), routes=routes)],
                   instances={"users": [g.instance()], "auth": [a.instance()]},
                   services=services,
                   log={"level": "info", "access_log": h.path("access.log"),
                        "access_format": "text"}, **top)
    return g, a, wg, wg.ports["g"]


SLOW = "Bearer slow:30000"


def held_by_auth(h, g, a, port):
    """A grpcio unary call and gRPC-Web ones over h2 and HTTP/1.1, all
    waiting for the auth service's verdict."""
    call = GrpcCall("127.0.0.1:%d" % port, "unary", "/wg.Echo/One", 8, timeout=60,
                    metadata=[("authorization", SLOW)], wait=slack(60))
    c = Raw(port)
    c.request(1, "/wg.Echo/One", body=frame(b"hold"),
              headers=[("content-type", WEB), ("x-grpc-web", "1"), ("authorization", SLOW)])
    h1 = http.client.HTTPConnection("127.0.0.1", port, timeout=slack(30))
    h1.request("POST", "/wg.Echo/One", body=frame(b"hold"),
               headers={"Content-Type": WEB, "X-Grpc-Web": "1", "Authorization": SLOW})
    wait_until(lambda: c.pump(0.05) and a.stats()["requests"] == 3, slack(10),
               "the three calls at the auth service")
    return call, c, h1


def check_held(h, held, g, why, within):
    call, c, h1 = held
    message = "waygate: " + why
    r = call.result()
    assert r["code"] == "UNAVAILABLE" and r["details"] == message, r
    r = c.response(1, slack(within))
    hd = r["headers"]
    assert r["status"] == 200 and r["reset"] is None and r["body"] == b"", r
    assert hd.get("grpc-status") == "14" and hd.get("grpc-message") == message, r
    c.close()
    resp = h1.getresponse()
    body = resp.read()
    assert resp.status == 200 and resp.getheader("grpc-status") == "14", resp.getheaders()
    assert resp.getheader("grpc-message") == message and body == b"", (resp.getheaders(), body)
    h1.close()
    assert g.echo_calls() == [], g.echo_calls()     # never let through


def auth_cuts_logged(h, reason):
    """Each call's line (grpc_code UNAVAILABLE) and its subrequest's (kind=auth)."""
    def logged():
        try:
            with open(h.path("access.log")) as f:
                ls = [l for l in f if ("reason=%s " % reason) in l]
        except FileNotFoundError:
            return False
        return (sum(1 for l in ls if "kind=auth" in l) == 3 and
                sum(1 for l in ls if "grpc_code=UNAVAILABLE" in l and "kind=auth" not in l) == 3)
    wait_until(logged, slack(5), "the access log lines reason=%s" % reason)


def test_grpc_calls_waiting_for_forward_auth_cut_at_shutdown_timeout():
    """SIGTERM with shutdown_timeout 1s while forward_auth subrequests are
    pending: no response byte is out, so the calls get Trailers-Only
    UNAVAILABLE, as without auth (not a reset, INTERNAL to grpcio); the
    subrequests' connections are let go; exit status 0."""
    if not need_grpcio():
        return
    with Harness() as h:
        g, a, wg, port = auth_world(h, "authstop", shutdown_timeout="1s")
        held = held_by_auth(h, g, a, port)
        wg.proc.signal(signal.SIGTERM)
        check_held(h, held, g, "shutting down (shutdown_timeout)", 15)
        assert wg.proc.wait(slack(10)) == 0
        auth_cuts_logged(h, "shutdown")


def test_grpc_calls_waiting_for_forward_auth_cut_at_drain_timeout():
    """The auth service's instance drained (drain_timeout 1s) under pending
    subrequests: the calls get Trailers-Only UNAVAILABLE; waygate goes on
    and calls after it still reach the auth service (its connections were
    closed, not pooled half-read)."""
    if not need_grpcio():
        return
    from grpclib import grpc_call
    with Harness() as h:
        g, a, wg, port = auth_world(h, "authdrain", {"drain_timeout": "1s"})
        held = held_by_auth(h, g, a, port)
        r = http_request(wg.admin_port, "POST", "/services/auth/instances/auth-authdrain/drain",
                         timeout=slack(10))
        assert r.status == 200, r
        check_held(h, held, g, "upstream drained (drain_timeout)", 10)
        auth_cuts_logged(h, "drain_timeout")
        r = http_request(wg.admin_port, "POST",
                         "/services/auth/instances/auth-authdrain/enable", timeout=slack(10))
        assert r.status == 200, r
        r = grpc_call("127.0.0.1:%d" % port, "unary", "/wg.Echo/One", 8,
                      metadata=[("authorization", "Bearer allow:after")])
        assert r["code"] == "OK", r
        assert wg.alive()


def three_then_cut(body, message):
    fs = frames(body)
    assert fs[:3] == [(0, b"m" * 10)] * 3 and len(fs) == 4 and fs[3][0] == 0x80, fs
    assert trailer_fields(fs[3][1]) == {"grpc-status": "14", "grpc-message": message}, fs[3]


class WebH1Server:
    """grpc_web_h1_server.py: a gRPC-Web server speaking HTTP/1.1 itself."""

    def __init__(self, h, name):
        import os
        import re
        here = os.path.dirname(os.path.abspath(__file__))
        self.proc = h.start("grpc-web-h1-" + name,
                            ["python3", os.path.join(here, "grpc_web_h1_server.py")],
                            pipe_stdout=True)
        m = re.fullmatch(r"ready (\d+)", self.proc.read_line(timeout=10))
        assert m, "grpc_web_h1_server did not start"
        self.name, self.port = name, int(m.group(1))

    def instance(self):
        return {"id": self.name, "address": "127.0.0.1", "port": self.port}


def test_grpc_web_passed_to_an_http1_instance_ends_with_a_trailer_frame_when_cut():
    """gRPC-Web calls waygate passes unchanged to an http1 instance that
    speaks gRPC-Web itself (chunked, a message per chunk), cut at
    drain_timeout after three messages: on a message boundary the body
    ends with the trailer frame (UNAVAILABLE, waygate's message), then the
    last chunk / END_STREAM, for binary and -text over HTTP/1.1 and binary
    over h2. Inside a message (half of a fourth one sent), or in a
    Content-Length body, no frame can end it: the connection is closed
    without a last chunk (HTTP/1.1), the stream reset (h2)."""
    with Harness() as h:
        s = WebH1Server(h, "w1")
        wg = h.waygate(listeners=[h2c_listener("g")], instances={"users": [s.instance()]},
                       services={"users": {"drain_timeout": "1s"}},
                       log={"level": "info", "access_log": h.path("access.log"),
                            "access_format": "text"})
        port = wg.ports["g"]
        three = frame(b"m" * 10) * 3
        calls = {}                      # name: (conn, resp, prefix already read)
        for name, ct, more in (("bin", WEB, {}), ("text", TEXT, {}),
                               ("split", WEB, {"x-split": "1"}), ("length", WEB, {"x-length": "1"})):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=slack(30))
            conn.request("POST", "/wg.Echo/Down", body=b"",
                         headers=dict({"Content-Type": ct, "X-Grpc-Web": "1", "x-count": "3"},
                                      **more))
            resp = conn.getresponse()
            want = b64(frame(b"m" * 10)) * 3 if ct == TEXT else three
            got = resp.read(len(want))
            assert got == want, (name, got)
            calls[name] = (conn, resp, got)
        c = Raw(port)
        c.request(1, "/wg.Echo/Down", headers=[("content-type", WEB), ("x-grpc-web", "1"),
                                               ("x-count", "3")])
        c.request(3, "/wg.Echo/Down", headers=[("content-type", WEB), ("x-grpc-web", "1"),
                                               ("x-count", "3"), ("x-split", "1")])
        wait_until(lambda: c.pump(0.05) and len(c.streams[1]["body"]) == len(three) and
                   len(c.streams[3]["body"]) >= len(three), slack(10), "the h2 messages")
        r = http_request(wg.admin_port, "POST", "/services/users/instances/w1/drain",
                         timeout=slack(10))
        assert r.status == 200, r
        message = "waygate: upstream drained (drain_timeout)"
        for name in ("bin", "text"):
            conn, resp, got = calls[name]
            body = got + resp.read()    # http.client: IncompleteRead without the last chunk
            three_then_cut(unb64(body) if name == "text" else body, message)
            conn.close()
        r = c.response(1, slack(10))
        assert r["reset"] is None and r["ended"], (r["reset"], r["headers"], len(r["body"]))
        three_then_cut(bytes(r["body"]), message)
        for name in ("split", "length"):
            conn, resp, got = calls[name]
            try:
                rest = resp.read()
                raise AssertionError("%s: ended whole: %r" % (name, rest))
            except http.client.IncompleteRead as e:
                assert b"\x80" not in e.partial, (name, e.partial)
            conn.close()
        r = c.response(3, slack(10))
        assert r["reset"] is not None and not r["ended"], r
        c.close()
        cuts_logged(h, "drain_timeout", 3)
        assert wg.alive()
