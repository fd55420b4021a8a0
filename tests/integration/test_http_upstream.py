"""Upstream responses get the request parser's scrutiny (DESIGN §10): a
malformed head is a 502 when nothing was forwarded yet; a reset before the
response is retried on another instance (an idempotent request: DESIGN §6);
hash_key routes by header and cookie."""

import collections
import socket

from test_http import start
from wglib import Harness, ThreadedServer, http_request


class Canned(ThreadedServer):
    """Answers every request on a connection with the same raw bytes, then
    closes if `close` (or resets if `reset`)."""

    def __init__(self, raw=b"", close=False, reset=False):
        self.raw, self.close_after, self.reset = raw, close, reset
        self.requests = 0
        super().__init__()

    def serve(self, c):
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    d = c.recv(4096)
                    if not d:
                        return
                    buf += d
                _, _, buf = buf.partition(b"\r\n\r\n")
                self.requests += 1
                if self.reset:
                    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    return
                c.sendall(self.raw)
                if self.close_after:
                    return
        except OSError:
            pass
        finally:
            c.close()


BAD = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX: a\rb\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/9.9 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"garbage\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\n\r\n",          # 101 to a request that asked none
]


def test_malformed_upstream_responses_are_502():
    servers = [Canned(raw, close=True) for raw in BAD]
    try:
        with Harness() as h:
            inst = {"s%d" % k: [srv.instance("i%d" % k)] for k, srv in enumerate(servers)}
            routes = [{"path_prefix": "/%d" % k, "service": "s%d" % k, "retries": 0}
                      for k in range(len(servers))]
            wg, _ = start(h, routes=routes, instances=inst)
            for k in range(len(servers)):
                r = http_request(wg.port(), path="/%d" % k)
                assert r.status == 502, (k, BAD[k], r)
    finally:
        for s in servers:
            s.close()


def test_reset_before_response_retried_on_another_instance():
    bad = Canned(reset=True)
    good = Canned(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ngood")
    try:
        with Harness() as h:
            wg, _ = start(h, instances={"users": [bad.instance("bad"), good.instance("good")]},
                          service_defaults={"retries": 1})
            for _ in range(6):
                r = http_request(wg.port(), method="PUT", path="/", body=b"abc")
                assert r.status == 200 and r.body == b"good", r
            assert bad.requests >= 1, "the resetting instance was never tried"
    finally:
        bad.close()
        good.close()


def test_hash_by_header_and_cookie_is_sticky():
    with Harness() as h:
        bs = [h.backend("http", name="h%d" % k) for k in range(3)]
        inst = {"byhdr": [b.instance() for b in bs], "bycookie": [b.instance() for b in bs]}
        wg = h.waygate(listeners=[{"name": "web", "mode": "http", "routes": [
                           {"path_prefix": "/c", "service": "bycookie"},
                           {"path_prefix": "/", "service": "byhdr"}]}],
                       instances=inst,
                       services={"byhdr": {"balance": "hash", "hash_key": "header:X-User"},
                                 "bycookie": {"balance": "hash", "hash_key": "cookie:sid"}})
        seen = collections.defaultdict(set)
        for user in range(20):
            for _ in range(3):
                r = http_request(wg.port(), path="/x", headers={"X-User": "u%d" % user})
                seen["h%d" % user].add(r.body)
                r = http_request(wg.port(), path="/c", headers={"Cookie": "a=1; sid=s%d; b=2" % user})
                seen["c%d" % user].add(r.body)
        assert all(len(v) == 1 for v in seen.values()), dict(seen)
        assert len({next(iter(v)) for k, v in seen.items() if k[0] == "h"}) > 1, dict(seen)
