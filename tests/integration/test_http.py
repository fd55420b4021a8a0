"""HTTP listener (mode: http): routing, forwarding, keep-alive, retries.

Backends are wg_backend in http mode; /stats tells how many connections a
backend accepted, which proves upstream keep-alive reuse. The helpers at the
top are shared by the other test_http_*.py files.
"""

import json
import re
import socket
import time

from wglib import (Harness, connect, http_request, read_http_response, recv_until_eof, slack,
                   wait_until)


# ---- shared helpers ------------------------------------------------------

def http_listener(routes, name="web", **http):
    spec = {"name": name, "mode": "http", "routes": routes}
    if http:
        spec["http"] = http
    return spec


def start(h, routes=None, backends=1, http=None, services=None, workers=1, instances=None,
          service_defaults=None, extra_listeners=(), **top):
    """Backends b0..bN-1 behind one http listener routing everything to
    service "users"; returns (waygate, [backends])."""
    bs = [h.backend("http", name="b%d" % k) for k in range(backends)]
    if instances is None:
        instances = {"users": [b.instance() for b in bs]}
    routes = routes or [{"path_prefix": "/", "service": "users"}]
    wg = h.waygate(listeners=[http_listener(routes, **(http or {}))] + list(extra_listeners),
                   instances=instances, services=services, workers=workers,
                   service_defaults=service_defaults, **top)
    return wg, bs


def backend_stats(b):
    r = http_request(b.port, path="/stats")
    assert r.status == 200, r
    return json.loads(r.body)


def raw_exchange(port, data, timeout=5.0):
    """Sends bytes, reads until EOF: (all bytes, closed by the proxy)."""
    with connect(port, timeout) as s:
        s.sendall(data)
        return recv_until_eof(s, timeout)


def status_of(raw):
    m = re.match(rb"HTTP/1\.1 (\d{3}) ", raw)
    assert m, "no status line in %r" % raw[:200]
    return int(m.group(1))


def request_head(port, path="/request", headers=None, **kw):
    """The head the backend received (its /request echoes it)."""
    r = http_request(port, path=path, headers=headers, **kw)
    assert r.status == 200, r
    return r.body.decode()


class Responses:
    """Reads consecutive responses from one socket, keeping what follows
    (wglib.read_http_response drops bytes past the response it reads)."""

    def __init__(self, sock, timeout=10.0):
        self.s = sock
        self.buf = b""
        self.timeout = timeout

    def _more(self):
        self.s.settimeout(self.timeout)
        chunk = self.s.recv(65536)
        assert chunk, "EOF; have %r" % self.buf[:200]
        self.buf += chunk

    def _take(self, n):
        while len(self.buf) < n:
            self._more()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _line(self):
        while b"\r\n" not in self.buf:
            self._more()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def next(self, head_only=False):
        """(status, {lower name: value}, body)."""
        while b"\r\n\r\n" not in self.buf:
            self._more()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        hdrs = {}
        for l in lines[1:]:
            k, _, v = l.partition(":")
            hdrs[k.strip().lower()] = v.strip()
        if head_only or status in (204, 304) or 100 <= status < 200:
            return status, hdrs, b""
        if hdrs.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int(self._line().split(b";")[0], 16)
                if size == 0:
                    while self._line():
                        pass
                    return status, hdrs, body
                body += self._take(size)
                assert self._take(2) == b"\r\n"
        return status, hdrs, self._take(int(hdrs.get("content-length", "0")))


def fields(head):
    out = []
    for line in head.split("\r\n")[1:]:
        if line:
            k, _, v = line.partition(":")
            out.append((k.lower(), v.strip()))
    return out


# ---- tests -------------------------------------------------------------

def test_get_post_chunked_and_forwarded_headers():
    with Harness() as h:
        wg, (b,) = start(h)
        port = wg.port()
        r = http_request(port, path="/")
        assert r.status == 200 and r.body == b"b0" and r.header("X-Backend") == "b0", r
        body = bytes(range(256)) * 300
        r = http_request(port, method="POST", path="/echo", body=body)
        assert r.status == 200 and r.body == body, r
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in (b"hello ", b"chunked ", b"world"))
        raw = (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
               b"Connection: close\r\n\r\n" + chunks + b"0\r\nX-Trailer: t\r\n\r\n")
        r = http_request(port, raw=raw)
        assert r.status == 200 and r.body == b"hello chunked world", r
        assert (r.header("Transfer-Encoding") or "").lower() == "chunked", r
        head = request_head(port, headers=[
            ("X-Forwarded-For", "10.0.0.1"), ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "evil"), ("X-Client-Cert-Subject", "CN=forged"),
            ("Connection", "Foo, keep-alive"), ("Foo", "1"), ("Keep-Alive", "timeout=5"),
            ("TE", "trailers"), ("Proxy-Connection", "x"), ("Upgrade", "h2c"), ("X-Kept", "yes")])
        f = fields(head)
        names = [k for k, v in f]
        assert ("x-forwarded-for", "127.0.0.1") in f, head      # untrusted peer: replaced
        assert ("x-real-ip", "127.0.0.1") in f, head
        assert ("x-forwarded-proto", "http") in f and ("x-forwarded-host", "127.0.0.1:%d" % port) in f, head
        assert ("host", "127.0.0.1:%d" % port) in f and ("x-kept", "yes") in f, head
        for gone in ("x-client-cert-subject", "connection", "foo", "keep-alive", "te",
                     "proxy-connection", "upgrade"):
            assert gone not in names, (gone, head)
        assert re.fullmatch(r"[0-9a-f]{32}", dict(f)["x-request-id"]), head
        assert names.count("x-forwarded-for") == 1 and names.count("x-forwarded-proto") == 1, head
        head = request_head(port, headers={"X-Request-Id": "abc"})
        assert ("x-request-id", "abc") in fields(head), head


def test_routes_hosts_methods_headers_strip_and_404():
    routes = [
        {"host": "api.example.com", "path_prefix": "/users/", "service": "users",
         "strip_prefix": True},
        {"host": "*.example.com", "path_prefix": "/", "methods": ["GET", "HEAD"], "service": "web"},
        {"path_prefix": "/", "headers": {"X-Canary": "1"}, "service": "canary"},
        {"path_prefix": "/static/", "service": "web"},
    ]
    with Harness() as h:
        bu, bw, bc = (h.backend("http", name=n) for n in ("users", "web", "canary"))
        wg = h.waygate(listeners=[http_listener(routes)],
                       instances={"users": [bu.instance()], "web": [bw.instance()],
                                  "canary": [bc.instance()]})
        port = wg.port()

        def who(path="/", host="x", method="GET", headers=()):
            hdrs = [("Host", host), ("Connection", "close")] + list(headers)
            raw = ("%s %s HTTP/1.1\r\n" % (method, path)).encode() + b"".join(
                ("%s: %s\r\n" % kv).encode() for kv in hdrs) + b"\r\n"
            r = http_request(port, raw=raw, method=method)
            return r.status, r.header("X-Backend")

        assert who("/users/1", "API.example.com:80") == (200, "users")
        head = http_request(port, raw=b"GET /users/request?q=1 HTTP/1.1\r\n"
                            b"Host: api.example.com\r\nConnection: close\r\n\r\n")
        assert head.body.startswith(b"GET /request?q=1 HTTP/1.1\r\n"), head.body[:80]
        assert who("/users/1", "a.b.example.com") == (200, "web")
        assert who("/", "example.com") == (404, None)
        assert who("/", "a.example.com", method="POST") == (404, None)
        assert who("/", "other", headers=[("X-Canary", "1")]) == (200, "canary")
        assert who("/static/x", "other") == (200, "web")
        r = http_request(port, path="/nothing")
        assert r.status == 404 and r.body == b"404 Not Found\n", r


def test_503_no_instance_and_502_after_retries():
    with Harness() as h:
        dead = h.backend("http", name="dead")
        dead_port = dead.port
        dead.stop()
        wg, (b,) = start(h, instances={"users": [], "gone": [{"id": "d", "address": "127.0.0.1",
                                                               "port": dead_port}]},
                         routes=[{"path_prefix": "/gone", "service": "gone"},
                                 {"path_prefix": "/", "service": "users"}])
        r = http_request(wg.port(), path="/")
        assert r.status == 503 and r.body == b"no healthy upstream\n", r
        r = http_request(wg.port(), path="/gone")
        assert r.status == 502, r


def test_retry_goes_to_another_instance():
    with Harness() as h:
        dead = h.backend("http", name="dead")
        dead_inst = dead.instance()
        dead.stop()
        live = h.backend("http", name="live")
        wg = h.waygate(listeners=[http_listener([{"path_prefix": "/", "service": "users"}])],
                       instances={"users": [dead_inst, live.instance()]},
                       service_defaults={"retries": 1})
        for _ in range(10):
            r = http_request(wg.port(), path="/")
            assert r.status == 200 and r.body == b"live", r


def test_keepalive_reuse_counted_by_backend_accepts():
    with Harness() as h:
        wg, (b,) = start(h, workers=1)
        port = wg.port()
        with connect(port) as s:                        # one client connection
            for k in range(30):
                s.sendall(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
                r = read_http_response(s)
                assert r.status == 200 and r.body == b"b0", (k, r)
        for k in range(30):                             # thirty client connections
            assert http_request(port, path="/x").status == 200
        st = backend_stats(b)
        assert st["accepted"] == 2, st                  # 1 upstream connection + our /stats
        assert st["requests"] == 61, st


def test_client_asking_to_close_is_closed_at_once_errors_linger():
    """Connection: close from the client, request read whole: waygate closes
    the socket as soon as the response is out (no lingering read for the
    client's FIN). After an error it lingers: bytes the client still sends
    are read and dropped, not answered with a reset that could destroy the
    error response."""
    import errno
    with Harness() as h:
        wg, _ = start(h, workers=1, http={"max_body_size": "10"})
        port = wg.port()

        def reset_after_response(raw):
            with connect(port) as s:
                s.sendall(raw)
                r = read_http_response(s)
                assert recv_until_eof(s, 5.0) == b""   # then the FIN
                time.sleep(0.2)
                try:                                    # a closed socket answers RST
                    s.sendall(b"late bytes")
                    time.sleep(0.2)
                    s.sendall(b"more late bytes")
                    return r, False                     # still read (and dropped)
                except OSError as e:
                    assert e.errno in (errno.ECONNRESET, errno.EPIPE), e
                    return r, True

        r, reset = reset_after_response(b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        assert r.status == 200 and reset, (r, reset)
        r, reset = reset_after_response(b"GET /x HTTP/1.0\r\n\r\n")
        assert r.status == 200 and reset, (r, reset)
        # 413: the client may still be sending its body: linger
        r, reset = reset_after_response(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n")
        assert r.status == 413 and not reset, (r, reset)


def test_stale_pooled_connection_is_a_free_retry():
    with Harness() as h:
        b = h.backend("http", name="first")
        port = b.port
        wg = h.waygate(listeners=[http_listener([{"path_prefix": "/", "service": "users",
                                                  "retries": 0}])],
                       instances={"users": [b.instance()]}, workers=1)
        assert http_request(wg.port(), path="/").body == b"first"
        b.kill()                                        # the pooled connection goes stale
        b2 = h.backend("http", name="second", extra=("--listen", "127.0.0.1:%d" % port))
        assert b2.port == port
        r = http_request(wg.port(), path="/")
        assert r.status == 200 and r.body == b"second", r


def test_pipelining_head_204_304_http10_and_expect():
    with Harness() as h:
        wg, (b,) = start(h)
        port = wg.port()
        with connect(port) as s:
            s.sendall(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n"
                      b"HEAD /bytes?n=100 HTTP/1.1\r\nHost: a\r\n\r\n"
                      b"GET /status/204 HTTP/1.1\r\nHost: a\r\n\r\n"
                      b"GET /status/304 HTTP/1.1\r\nHost: a\r\n\r\n"
                      b"GET /request HTTP/1.1\r\nHost: last\r\n\r\n")
            rd = Responses(s)
            r1, r2, r3, r4 = rd.next(), rd.next(head_only=True), rd.next(), rd.next()
            r5 = rd.next()
            assert r1[2] == b"b0" and r2[0] == 200 and r2[1]["content-length"] == "100", (r1, r2)
            assert r3[0] == 204 and r4[0] == 304, (r3, r4)
            assert r5[0] == 200 and b"Host: last" in r5[2], r5
            s.settimeout(0.3)                           # nothing after: no body of 204/304
            try:
                extra = s.recv(100)
            except socket.timeout:
                extra = b""
            assert extra == b"" and rd.buf == b"", (extra, rd.buf)
        raw = raw_exchange(port, b"GET /x HTTP/1.0\r\n\r\n")
        assert raw.startswith(b"HTTP/1.1 200") and b"Connection: close" in raw and raw.endswith(b"b0")
        with connect(port) as s:                        # HTTP/1.0 keep-alive
            for _ in range(2):
                s.sendall(b"GET /x HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
                r = read_http_response(s)
                assert r.status == 200 and r.header("Connection") == "keep-alive", r
        with connect(port) as s:                        # Expect: 100-continue
            s.sendall(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
                      b"Expect: 100-continue\r\n\r\n")
            rd = Responses(s)
            assert rd.next()[0] == 100
            s.sendall(b"hello")
            r = rd.next()
            assert r[0] == 200 and r[2] == b"hello", r


def test_max_body_size_413():
    with Harness() as h:
        wg, (b,) = start(h, http={"max_body_size": 1000})
        port = wg.port()
        raw = raw_exchange(port, b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 1001\r\n\r\n")
        assert status_of(raw) == 413, raw
        body = b"".join(b"100\r\n" + b"x" * 256 + b"\r\n" for _ in range(5)) + b"0\r\n\r\n"
        raw = raw_exchange(port, b"POST /echo HTTP/1.1\r\nHost: a\r\n"
                           b"Transfer-Encoding: chunked\r\n\r\n" + body)
        assert status_of(raw) == 413, raw
        r = http_request(port, method="POST", path="/echo", body=b"y" * 1000)
        assert r.status == 200 and len(r.body) == 1000


def test_response_timeout_504_route_override():
    with Harness() as h:
        wg, (b,) = start(h, routes=[{"path_prefix": "/slow", "service": "users",
                                     "response_timeout": "500ms", "retries": 0},
                                    {"path_prefix": "/", "service": "users"}])
        t = time.monotonic()
        r = http_request(wg.port(), path="/slow?ms=3000")
        took = time.monotonic() - t
        assert r.status == 504, r
        assert 0.4 <= took <= slack(1.5), took
        assert http_request(wg.port(), path="/x").status == 200


def test_redirect_http_308():
    with Harness() as h:
        b = h.backend("http", name="b")
        listener = http_listener([{"path_prefix": "/", "service": "users"}])
        listener["tls"] = {"redirect_http": "https"}
        wg = h.waygate(listeners=[listener], instances={"users": [b.instance()]})
        raw = raw_exchange(wg.port(), b"GET /a/b?c=d HTTP/1.1\r\nHost: Example.COM:8080\r\n"
                           b"Connection: close\r\n\r\n")
        assert status_of(raw) == 308, raw
        assert b"\r\nLocation: https://example.com/a/b?c=d\r\n" in raw, raw


def test_chunked_response_with_trailers_and_dechunked_for_http10():
    import threading
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)

    def serve(c):
        with c:
            buf = b""
            while True:
                while b"\r\n\r\n" not in buf:
                    d = c.recv(4096)
                    if not d:
                        return
                    buf += d
                _, _, buf = buf.partition(b"\r\n\r\n")
                c.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n"
                          b"5\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\n")

    def accept():
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(c,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        with Harness() as h:
            wg, _ = start(h, instances={"users": [{"id": "c", "address": "127.0.0.1",
                                                   "port": srv.getsockname()[1]}]})
            raw = raw_exchange(wg.port(), b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            assert raw.endswith(b"\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\n"), raw
            assert b"Transfer-Encoding: chunked" in raw and b"Trailer:" not in raw, raw
            raw = raw_exchange(wg.port(), b"GET / HTTP/1.0\r\n\r\n")
            assert raw.endswith(b"\r\nConnection: close\r\n\r\nhello world"), raw
            assert b"Transfer-Encoding" not in raw, raw
            with connect(wg.port()) as s:               # keep-alive over a chunked upstream
                rd = Responses(s)
                for _ in range(3):
                    s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
                    assert rd.next()[2] == b"hello world"
    finally:
        srv.close()
