"""The mirror policy (docs/policies.md#mirror) end to end: a recording mirror
backend written here (plain or TLS) gets the same method, path, fields and
body bytes as the real upstream, from HTTP/1.1 (Content-Length, chunked)
and h2c clients, toward HTTP/1.1 and h2c upstreams; its share at percent 50;
copies over max_body dropped and counted; mirrors that never read, are down
or fail mid-body never hold up the real requests; h2c and h2 (TLS) mirror
services get the copies as streams of the worker's HTTP/2 pool, and a
stalled one never holds up the real requests either."""

import json
import os
import re
import socket
import threading

from grpclib import GrpcBackend
from h2lib import Client, h2c_listener
from test_http import http_listener
from tlslib import shared
from wglib import Harness, ThreadedServer, connect, debian_import, http_request, \
    read_http_response, slack, wait_until


def dechunk(data):
    """The payload of a complete chunked body, or None while incomplete."""
    body, i = bytearray(), 0
    while True:
        j = data.find(b"\r\n", i)
        if j < 0:
            return None
        size = int(data[i:j].split(b";")[0], 16)
        if size == 0:
            return bytes(body) if data.endswith(b"\r\n\r\n", j) else None   # (trailers)
        if len(data) < j + 2 + size + 2:
            return None
        body += data[j + 2:j + 2 + size]
        i = j + 2 + size + 2


class Recorder(ThreadedServer):
    """A mirror backend: every request it reads whole is recorded as
    {method, target, lines (field lines as received), body (payload), raw
    (body bytes as received)}; answered 200, then closed. `ctx`: TLS.
    `cut`: close right after reading the head (a mirror failing mid-body)."""

    def __init__(self, ctx=None, cut=False):
        self.ctx, self.cut = ctx, cut
        self.lock = threading.Lock()
        self.reqs, self.heads = [], 0
        super().__init__(backlog=256)

    def serve(self, c):
        try:
            c.settimeout(10)
            if self.ctx:
                c = self.ctx.wrap_socket(c, server_side=True)
            buf = b""
            while b"\r\n\r\n" not in buf:
                d = c.recv(65536)
                if not d:
                    return
                buf += d
            head, _, raw = buf.partition(b"\r\n\r\n")
            with self.lock:
                self.heads += 1
            if self.cut:
                return
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            fields = {k.lower(): v for k, _, v in (x.partition(": ") for x in lines[1:])}
            chunked = fields.get("transfer-encoding") == "chunked"
            n = int(fields.get("content-length", "0"))
            while (dechunk(raw) is None) if chunked else len(raw) < n:
                d = c.recv(65536)
                if not d:
                    return
                raw += d
            body = dechunk(raw) if chunked else raw
            with self.lock:
                self.reqs.append({"method": method, "target": target, "lines": lines[1:],
                                  "body": body, "raw": raw})
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        except (OSError, ValueError):
            pass
        finally:
            c.close()

    def count(self):
        with self.lock:
            return len(self.reqs)

    def find(self, target):
        with self.lock:
            return [r for r in self.reqs if r["target"] == target]

    def one(self, target):
        wait_until(lambda: self.find(target), slack(5), "the copy of %s at the mirror" % target)
        got = self.find(target)
        assert len(got) == 1, "%d copies of %s" % (len(got), target)
        return got[0]


def metrics(wg):
    text = http_request(wg.admin_port, path="/metrics").body.decode()
    out = {}
    for m in re.finditer(r"^(waygate_mirror_\w+)(?:\{reason=\"(\w+)\"\})? (\d+)$", text, re.M):
        out[m.group(1) + ("." + m.group(2) if m.group(2) else "")] = int(m.group(3))
    return out


def mirror_route(service, prefix="/", real="users", **kw):
    route = {"path_prefix": prefix, "service": real,
             "policies": [{"mirror": dict({"service": service}, **kw)}]}
    if prefix != "/" and real == "users":
        route["strip_prefix"] = True
    return route


def raw_request(method, path, fields, body=b""):
    return ("%s %s HTTP/1.1\r\nHost: app.test\r\n" % (method, path)).encode() + b"".join(
        ("%s: %s\r\n" % kv).encode() for kv in fields) + b"\r\n" + body


def head_lines(text):
    """The field lines of a request head wg_backend's /request sent back."""
    return text.split("\r\n\r\n")[0].split("\r\n")[1:]


def test_mirror_copies_http1_bodies_exactly():
    """Content-Length and chunked bodies from HTTP/1.1 clients: the copy is
    what the real upstream got (a Recorder too, which reads the whole body
    before it answers), plus Connection: close."""
    with Harness() as h:
        main, rec = Recorder(), Recorder()
        wg = h.waygate(listeners=[http_listener([mirror_route("shadow")])], workers=1,
                       instances={"users": [main.instance("m")], "shadow": [rec.instance("s")]})
        port = wg.port("web")
        body = os.urandom(40000)
        r = http_request(port, raw=raw_request("POST", "/cl", [("Content-Length", len(body)),
                                                               ("X-Test", "a b"),
                                                               ("Content-Type", "text/x")], body))
        assert r.status == 200, r.status
        chunks = [os.urandom(5000), b"x", os.urandom(20000)]
        wire = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
        with connect(port) as s:                 # the body in pieces, as a client streams it
            s.sendall(raw_request("PUT", "/chunked", [("Transfer-Encoding", "chunked")]) +
                      wire[:7000])
            s.sendall(wire[7000:])
            assert read_http_response(s).status == 200
        assert http_request(port, path="/plain").status == 200
        for target, method, payload in (("/cl", "POST", body), ("/chunked", "PUT", b"".join(chunks)),
                                        ("/plain", "GET", b"")):
            real, got = main.one(target), rec.one(target)
            assert got["method"] == method and got["body"] == payload, target
            assert got["raw"] == real["raw"], "%s: the body bytes as forwarded" % target
            assert got["lines"] == real["lines"] + ["Connection: close"], (got["lines"], real["lines"])
        assert rec.find("/chunked")[0]["raw"] == wire, "the chunked body as the client framed it"
        m = metrics(wg)
        assert m["waygate_mirror_sent_total"] == 3 and m["waygate_mirror_skipped_total"] == 0, m


def h2_post(c, path, body, length, grpc=False):
    """A POST from an h2c client whose body comes in DATA frames of 1000
    bytes; with or without a content-length field."""
    fields = [("content-type", "application/grpc" if grpc else "application/octet-stream"),
              ("x-test", "h2")]
    if length:
        fields.append(("content-length", str(len(body))))
    sid = c.request(path, method="POST", headers=fields, end=False)
    for k in range(0, len(body), 1000):
        c.send_body(sid, body[k:k + 1000], end=False)
    c.send_body(sid, b"", end=True)
    return c.response(sid)


def test_mirror_copies_h2c_client_bodies():
    """DATA frames become an HTTP/1.1 body for the copy: Content-Length
    when the client gave one, chunked otherwise; toward an HTTP/1.1
    upstream (the body teed as forwarded) and an h2c one (de-chunked
    payload, framed again by the copy)."""
    with Harness() as h:
        main, rec = h.backend("http", name="main"), Recorder()
        grpc = GrpcBackend(h, name="g")
        lst = h2c_listener()
        lst["routes"] = [mirror_route("shadow", "/wg.Echo/", real="grpc"), mirror_route("shadow")]
        wg = h.waygate(listeners=[lst], workers=1,
                       instances={"users": [main.instance()], "shadow": [rec.instance("s")],
                                  "grpc": [grpc.instance()]},
                       services={"grpc": {"upstream": {"protocol": "h2c"}}})
        c = Client(wg.port("h2"))
        try:
            for length in (True, False):
                body = os.urandom(12345)
                r = h2_post(c, "/echo?len=%d" % length, body, length)
                assert r["status"] == 200 and bytes(r["body"]) == body
                got = rec.one("/echo?len=%d" % length)
                assert got["method"] == "POST" and got["body"] == body, len(got["body"])
                assert "X-Test: h2" in got["lines"] or "x-test: h2" in got["lines"], got["lines"]
                framing = [x for x in got["lines"] if x.lower().startswith(("content-length",
                                                                           "transfer-encoding"))]
                assert framing == (["content-length: 12345"] if length
                                   else ["Transfer-Encoding: chunked"]), framing
                msg = b"\0" + len(body).to_bytes(4, "big") + body     # one gRPC message
                r = h2_post(c, "/wg.Echo/E%d" % length, msg, length, grpc=True)
                assert r["status"] == 200 and bytes(r["body"]) == msg, r["status"]
                got = rec.one("/wg.Echo/E%d" % length)
                assert got["body"] == msg, "the copy of a body sent to an h2c upstream"
        finally:
            c.close()
        m = metrics(wg)
        assert m["waygate_mirror_sent_total"] == 4, m


def test_mirror_share_at_50_percent_http1_and_h2():
    """percent: 50 over 1,000 HTTP/1.1 and 1,000 HTTP/2 requests, while the
    main service answers every one: the mirror gets each share within 5
    standard deviations (±80 of 1,000)."""
    import http.client
    with Harness() as h:
        main, rec = h.backend("http", name="main"), Recorder()
        route = mirror_route("shadow", percent=50, max_in_flight=1000)
        lst2 = h2c_listener()
        lst2["routes"] = [route]
        wg = h.waygate(listeners=[http_listener([route]), lst2], workers=1,
                       instances={"users": [main.instance()], "shadow": [rec.instance("s")]})
        conn = http.client.HTTPConnection("127.0.0.1", wg.port("web"), timeout=10)
        for k in range(1000):
            conn.request("GET", "/a%d" % k)
            r = conn.getresponse()
            assert r.status == 200 and r.read() == b"main", k
        conn.close()
        wait_until(lambda: metrics(wg)["waygate_mirror_sent_total"] == rec.count(), slack(10),
                   "every copy sent received")
        n1 = rec.count()
        assert 420 <= n1 <= 580, "%d of 1000 HTTP/1.1 requests mirrored" % n1
        c = Client(wg.port("h2"))
        try:
            for batch in range(0, 1000, 50):
                sids = [c.request("/b%d" % k) for k in range(batch, batch + 50)]
                for sid in sids:
                    r = c.response(sid)
                    assert r["status"] == 200 and bytes(r["body"]) == b"main"
        finally:
            c.close()
        wait_until(lambda: metrics(wg)["waygate_mirror_sent_total"] == rec.count(), slack(10),
                   "every copy sent received")
        n2 = rec.count() - n1
        assert 420 <= n2 <= 580, "%d of 1000 HTTP/2 requests mirrored" % n2
        assert metrics(wg)["waygate_mirror_skipped_total"] == 0
        assert json.loads(http_request(main.port, path="/stats").body)["served"] == 2000


def test_mirror_max_body_drops_the_copy_not_the_request():
    with Harness() as h:
        main, rec = h.backend("http", name="main"), Recorder()
        wg = h.waygate(listeners=[http_listener([mirror_route("shadow", max_body="16k")])],
                       workers=1,
                       instances={"users": [main.instance()], "shadow": [rec.instance("s")]})
        port = wg.port("web")
        big = os.urandom(16 * 1024 + 1)
        r = http_request(port, "POST", "/echo?big", body=big)          # Content-Length: at once
        assert r.status == 200 and r.body == big
        wire = b"".join(b"%x\r\n%s\r\n" % (4096, big[k:k + 4096]) for k in range(0, 16384, 4096))
        r = http_request(port, raw=raw_request("POST", "/echo?chunked", [("Transfer-Encoding",
                                                                         "chunked")],
                                               wire + b"1\r\nz\r\n0\r\n\r\n"))
        assert r.status == 200 and r.body == big[:16384] + b"z"        # grows past it
        fits = os.urandom(16 * 1024)
        r = http_request(port, "POST", "/echo?fits", body=fits)
        assert r.status == 200 and r.body == fits
        assert rec.one("/echo?fits")["body"] == fits
        m = metrics(wg)
        assert m["waygate_mirror_dropped_total.max_body"] == 2, m
        assert m["waygate_mirror_sent_total"] == 1, m
        assert not rec.find("/echo?big") and not rec.find("/echo?chunked")


def test_mirror_that_never_reads_is_down_or_fails_never_holds_requests():
    """Copies to a mirror that accepts but never reads, to a closed port, and
    to one that closes mid-body: every real request completes (asserted on
    completion, not on timing); each chosen request is counted once."""
    with Harness() as h:
        main, cut = h.backend("http", name="main"), Recorder(cut=True)
        hole = socket.socket()                  # accepts (backlog), never reads
        hole.bind(("127.0.0.1", 0))
        hole.listen(64)
        down = socket.socket()                  # a port nobody listens on
        down.bind(("127.0.0.1", 0))
        routes = [mirror_route("hole", "/hole/", max_in_flight=2, timeout="30s",
                               max_body="1m"),
                  mirror_route("down", "/down/", max_body="1m"),
                  mirror_route("cut", "/cut/", max_body="1m")]
        wg = h.waygate(listeners=[http_listener(routes)], workers=1, instances={
            "users": [main.instance()], "cut": [cut.instance("c")],
            "hole": [{"id": "h", "address": "127.0.0.1", "port": hole.getsockname()[1]}],
            "down": [{"id": "d", "address": "127.0.0.1", "port": down.getsockname()[1]}]})
        port = wg.port("web")
        body = os.urandom(1 << 20)              # more than the socket buffers take
        for k in range(4):
            r = http_request(port, "POST", "/hole/echo", body=body, timeout=30)
            assert r.status == 200 and r.body == body, k
        for k in range(3):
            assert http_request(port, path="/hole/x").body == b"main"
        for prefix in ("/down/", "/cut/"):
            for k in range(3):
                r = http_request(port, "POST", prefix + "echo", body=body[:200000], timeout=30)
                assert r.status == 200 and r.body == body[:200000], (prefix, k)
        wait_until(lambda: cut.heads == 3, slack(5), "3 copies cut at the mirror")
        m = metrics(wg)
        assert m["waygate_mirror_skipped_total"] >= 5, m    # hole: 2 in flight, 5 more
        dropped = sum(v for k, v in m.items() if k.startswith("waygate_mirror_dropped_total"))
        assert m["waygate_mirror_sent_total"] + m["waygate_mirror_skipped_total"] + dropped == 13, m
        assert m["waygate_mirror_dropped_total.aborted"] == 0, m
        hole.close()
        down.close()


def test_mirror_aborts_free_the_copy():
    """The client leaves mid-body, the real upstream resets mid-body: the
    copy is dropped as aborted and the mirror never gets a whole request
    (ASan: nothing leaks)."""
    with Harness() as h:
        main, rec = h.backend("http", name="main"), Recorder()
        wg = h.waygate(listeners=[http_listener([mirror_route("shadow")])], workers=1,
                       instances={"users": [main.instance()], "shadow": [rec.instance("s")]},
                       service_defaults={"health_check": {"type": "none"}, "retries": 0})
        port = wg.port("web")
        with connect(port) as s:
            s.sendall(raw_request("POST", "/echo?gone", [("Content-Length", 50000)], b"x" * 1000))
            wait_until(lambda: rec.heads == 1, slack(5), "the copy's head at the mirror")
        wait_until(lambda: metrics(wg).get("waygate_mirror_dropped_total.aborted") == 1, slack(5),
                   "the copy dropped when the client left")
        with connect(port) as s:
            s.sendall(raw_request("POST", "/reset", [("Transfer-Encoding", "chunked")],
                                  b"3e8\r\n" + b"y" * 1000 + b"\r\n"))
            r = read_http_response(s)
            assert r.status == 502, r.status
        wait_until(lambda: metrics(wg).get("waygate_mirror_dropped_total.aborted") == 2, slack(5),
                   "the copy dropped when the upstream reset")
        assert rec.count() == 0
        assert http_request(port, "POST", "/echo", body=b"ok").body == b"ok"
        assert rec.one("/echo")["body"] == b"ok"


def test_mirror_failing_mid_body_is_dropped_the_request_goes_on():
    """The mirror closes once it has the head while the client still sends
    the body: the copy is dropped as failed, the real request completes."""
    with Harness() as h:
        main, cut = h.backend("http", name="main"), Recorder(cut=True)
        wg = h.waygate(listeners=[http_listener([mirror_route("cut")])], workers=1,
                       instances={"users": [main.instance()], "cut": [cut.instance("c")]})
        body = os.urandom(30000)
        with connect(wg.port("web")) as s:
            s.sendall(raw_request("POST", "/echo", [("Content-Length", len(body))], body[:10000]))
            wait_until(lambda: cut.heads == 1, slack(5), "the copy's head at the mirror")
            wait_until(lambda: metrics(wg).get("waygate_mirror_dropped_total.failed") == 1,
                       slack(5), "the copy dropped when the mirror closed")
            s.sendall(body[10000:])
            r = read_http_response(s)
        assert r.status == 200 and r.body == body
        m = metrics(wg)
        assert m["waygate_mirror_sent_total"] == 0 and m["waygate_mirror_dropped_total.aborted"] == 0


def test_mirror_to_a_tls_service():
    """A mirror service with tls.enabled: the copy goes over TLS with the
    service's CA, SNI and verification; a copy to a service whose
    certificate does not verify never arrives (and the real request never
    notices)."""
    import ssl
    with Harness() as h:
        pki = shared()
        cert, key = pki.leaf("mirror", ["mirror.test"])
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        main, rec = h.backend("http", name="main"), Recorder(ctx=ctx)
        routes = [mirror_route("bad", "/bad/"), mirror_route("shadow")]
        wg = h.waygate(listeners=[http_listener(routes)], workers=1,
                       instances={"users": [main.instance()], "shadow": [rec.instance("s")],
                                  "bad": [rec.instance("b")]},
                       services={"shadow": {"tls": {"enabled": True, "ca": pki.ca,
                                                    "sni": "mirror.test"}},
                                 "bad": {"tls": {"enabled": True, "ca": pki.ca,
                                                 "sni": "other.test"}}})
        port = wg.port("web")
        body = os.urandom(30000)
        r = http_request(port, "POST", "/echo?tls", body=body)
        assert r.status == 200 and r.body == body
        got = rec.one("/echo?tls")
        assert got["method"] == "POST" and got["body"] == body
        assert http_request(port, "POST", "/bad/echo", body=b"b" * 100).body == b"b" * 100
        wait_until(lambda: "upstream tls handshake failed" in wg.stderr_text(), slack(5),
                   "the failed handshake with the bad mirror logged")
        assert rec.count() == 1


class H2Recorder(ThreadedServer):
    """An h2c mirror backend (python3-h2; h2 over TLS with ALPN h2 when `ctx`
    is given): every stream it reads whole is recorded as {method, target,
    fields (lower-case name -> value), body}, then answered 200 "ok".
    `stall`: after the connection preface nothing is answered and no
    received DATA is acknowledged, so the flow-control windows stay shut (a
    mirror that stopped); heads and resets are still counted."""

    def __init__(self, ctx=None, stall=False):
        self.h2c = debian_import("h2.connection")
        self.h2cfg = debian_import("h2.config")
        self.ev = debian_import("h2.events")
        self.ctx, self.stall = ctx, stall
        self.lock = threading.Lock()
        self.reqs, self.heads, self.resets = [], 0, 0
        super().__init__(backlog=64)

    def serve(self, c):
        try:
            c.settimeout(60)
            if self.ctx:
                c = self.ctx.wrap_socket(c, server_side=True)
            conn = self.h2c.H2Connection(config=self.h2cfg.H2Configuration(client_side=False))
            conn.initiate_connection()
            c.sendall(conn.data_to_send())
            streams = {}
            while True:
                data = c.recv(65536)
                if not data:
                    return
                for ev in conn.receive_data(data):
                    if isinstance(ev, self.ev.RequestReceived):
                        hd = [(k.decode() if isinstance(k, bytes) else k,
                               v.decode() if isinstance(v, bytes) else v) for k, v in ev.headers]
                        streams[ev.stream_id] = {"hd": hd, "body": bytearray()}
                        with self.lock:
                            self.heads += 1
                    elif isinstance(ev, self.ev.DataReceived):
                        streams[ev.stream_id]["body"] += ev.data
                        if not self.stall:
                            conn.acknowledge_received_data(ev.flow_controlled_length,
                                                           ev.stream_id)
                    elif isinstance(ev, self.ev.StreamReset):
                        with self.lock:
                            self.resets += 1
                    elif isinstance(ev, self.ev.StreamEnded) and not self.stall:
                        st = streams.pop(ev.stream_id)
                        d = dict(st["hd"])
                        with self.lock:
                            self.reqs.append({"method": d[":method"], "target": d[":path"],
                                              "fields": {k: v for k, v in st["hd"]
                                                         if not k.startswith(":")},
                                              "authority": d.get(":authority"),
                                              "body": bytes(st["body"])})
                        conn.send_headers(ev.stream_id, [(":status", "200")])
                        conn.send_data(ev.stream_id, b"ok", end_stream=True)
                out = conn.data_to_send()
                if out:
                    c.sendall(out)
        except Exception:               # closed, reset, a protocol error: the test tells
            pass
        finally:
            c.close()

    count, find, one = Recorder.count, Recorder.find, Recorder.one


def test_mirror_to_an_h2c_service_gets_the_copies_with_bodies():
    """A mirror service whose instance speaks h2c gets each copy as an
    HTTP/2 stream of the worker's pool: method, path, authority, the fields
    the real upstream got and the payload; Content-Length and chunked
    bodies from HTTP/1.1 clients (the chunked one de-chunked), bodies larger
    than the stream's buffer and window (flow control), and h2c clients'
    DATA frames with and without a content-length."""
    with Harness() as h:
        main, rec = Recorder(), H2Recorder()
        lst = h2c_listener()
        route = mirror_route("shadow", max_body="1m", timeout="20s")
        lst["routes"] = [route]
        wg = h.waygate(listeners=[http_listener([route]), lst],
                       workers=1,
                       instances={"users": [main.instance("m")], "shadow": [rec.instance("s")]},
                       services={"shadow": {"upstream": {"protocol": "h2c"}}})
        port = wg.port("web")
        body = os.urandom(40000)
        r = http_request(port, raw=raw_request("POST", "/cl?a=1", [("Content-Length", len(body)),
                                                                   ("X-Test", "a b")], body))
        assert r.status == 200, r.status
        chunks = [os.urandom(5000), b"x", os.urandom(20000)]
        wire = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
        with connect(port) as s:                 # the body in pieces, as a client streams it
            s.sendall(raw_request("PUT", "/chunked", [("Transfer-Encoding", "chunked")]) +
                      wire[:7000])
            s.sendall(wire[7000:])
            assert read_http_response(s).status == 200
        big = os.urandom(700000)                 # past the stream buffer and the windows
        assert http_request(port, raw=raw_request("POST", "/big", [("Content-Length", len(big))],
                                                  big), timeout=30).status == 200
        assert http_request(port, path="/plain").status == 200
        for target, method, payload in (("/cl?a=1", "POST", body),
                                        ("/chunked", "PUT", b"".join(chunks)),
                                        ("/big", "POST", big), ("/plain", "GET", b"")):
            real, got = main.one(target), rec.one(target)
            assert got["method"] == method and got["body"] == payload, (target, len(got["body"]))
            fields = {k.lower(): v for k, _, v in (x.partition(": ") for x in real["lines"])}
            assert got["authority"] == fields["host"], (got, fields)
            want = {k: v for k, v in fields.items()
                    if k not in ("host", "transfer-encoding", "connection")}
            assert got["fields"] == want, (target, got["fields"], want)
        c = Client(wg.port("h2"))
        try:
            for length in (True, False):
                body = os.urandom(100000)
                r = h2_post(c, "/echo?len=%d" % length, body, length)
                assert r["status"] == 200, r["status"]
                got = rec.one("/echo?len=%d" % length)
                assert got["method"] == "POST" and got["body"] == body, len(got["body"])
                assert got["fields"]["x-test"] == "h2", got["fields"]
                assert got["fields"].get("content-length") == ("100000" if length else None)
        finally:
            c.close()
        m = metrics(wg)
        assert m["waygate_mirror_sent_total"] == 6 and m["waygate_mirror_skipped_total"] == 0, m
        assert sum(v for k, v in m.items() if k.startswith("waygate_mirror_dropped")) == 0, m


def test_mirror_to_a_tls_h2_service():
    """protocol h2 with tls.enabled: the copy is a stream over TLS with ALPN
    h2, the service's CA and SNI; the body arrives whole."""
    import ssl
    with Harness() as h:
        pki = shared()
        cert, key = pki.leaf("mirror-h2", ["mirror.test"])
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        ctx.set_alpn_protocols(["h2"])
        main, rec = h.backend("http", name="main"), H2Recorder(ctx=ctx)
        wg = h.waygate(listeners=[http_listener([mirror_route("shadow")])], workers=1,
                       instances={"users": [main.instance()], "shadow": [rec.instance("s")]},
                       services={"shadow": {"upstream": {"protocol": "h2"},
                                            "tls": {"enabled": True, "ca": pki.ca,
                                                    "sni": "mirror.test"}}})
        body = os.urandom(30000)
        r = http_request(wg.port("web"), "POST", "/echo?tls", body=body)
        assert r.status == 200 and r.body == body
        got = rec.one("/echo?tls")
        assert got["method"] == "POST" and got["body"] == body
        assert metrics(wg)["waygate_mirror_sent_total"] == 1


def test_mirror_to_a_stalled_h2_service_never_holds_requests():
    """An h2c mirror that stops reading: its windows stay shut, so each copy
    holds at most its own bounded buffer. The real requests all complete
    (asserted on completion, not timing); copies past max_in_flight are
    skipped; a copy whose timeout passes while the client still sends the
    body is dropped (failed) and its stream reset; every chosen request is
    counted once."""
    with Harness() as h:
        main, stall = h.backend("http", name="main"), H2Recorder(stall=True)
        routes = [mirror_route("stall", "/stall/", max_in_flight=2, timeout="30s",
                               max_body="1m"),
                  mirror_route("slow", "/slow/", timeout="300ms", max_body="1m")]
        wg = h.waygate(listeners=[http_listener(routes)], workers=1,
                       instances={"users": [main.instance()], "stall": [stall.instance("st")],
                                  "slow": [stall.instance("sl")]},
                       services={"stall": {"upstream": {"protocol": "h2c"}},
                                 "slow": {"upstream": {"protocol": "h2c"}}})
        port = wg.port("web")
        body = os.urandom(300000)               # more than a stream's buffer and window
        for k in range(4):
            r = http_request(port, "POST", "/stall/echo", body=body, timeout=30)
            assert r.status == 200 and r.body == body, k
        for k in range(3):
            assert http_request(port, path="/stall/x").body == b"main"
        wait_until(lambda: stall.heads == 2, slack(5), "the 2 copies in flight at the mirror")
        m = metrics(wg)
        assert m["waygate_mirror_sent_total"] == 2 and m["waygate_mirror_skipped_total"] == 5, m
        with connect(port) as s:                # the copy's time is up mid-body
            s.sendall(raw_request("POST", "/slow/echo", [("Content-Length", len(body))],
                                  body[:100000]))
            wait_until(lambda: metrics(wg).get("waygate_mirror_dropped_total.failed") == 1,
                       slack(5), "the copy dropped at its timeout")
            s.sendall(body[100000:])
            r = read_http_response(s)
        assert r.status == 200 and r.body == body
        wait_until(lambda: stall.resets >= 1, slack(5), "the dropped copy's stream reset")
        m = metrics(wg)
        dropped = sum(v for k, v in m.items() if k.startswith("waygate_mirror_dropped_total"))
        assert m["waygate_mirror_sent_total"] + m["waygate_mirror_skipped_total"] + dropped == 8, m
        assert m["waygate_mirror_dropped_total.aborted"] == 0, m
        assert stall.count() == 0


def test_mirror_after_forward_auth_copies_what_the_auth_let_through():
    """forward_auth then mirror on one route: the copy starts once the auth
    service let the request through (its copied fields in the head), and
    the body that waited meanwhile is teed whole; a refused request is not
    copied at all."""
    from test_forward_auth import AuthServer
    with Harness() as h:
        main, rec, auth = h.backend("http", name="main"), Recorder(), AuthServer(h, "a1")
        route = {"path_prefix": "/", "service": "users", "policies": [
            {"forward_auth": {"service": "auth", "copy_headers": ["X-User"]}},
            {"mirror": {"service": "shadow"}}]}
        wg = h.waygate(listeners=[http_listener([route])], workers=1,
                       instances={"users": [main.instance()], "shadow": [rec.instance("s")],
                                  "auth": [auth.instance()]},
                       services={"auth": {"connect_timeout": "1s"}})
        port = wg.port("web")
        body = os.urandom(50000)
        r = http_request(port, "POST", "/echo?ok", body=body,
                         headers={"Authorization": "Bearer slow:200"})
        assert r.status == 200 and r.body == body
        got = rec.one("/echo?ok")
        assert got["body"] == body and "X-User: slow" in got["lines"], got["lines"]
        r = http_request(port, "POST", "/echo?no", body=body, headers={"Authorization": "Bearer deny"})
        assert r.status == 403
        m = metrics(wg)
        assert m["waygate_mirror_sent_total"] == 1 and m["waygate_mirror_skipped_total"] == 0, m
        assert not rec.find("/echo?no")
