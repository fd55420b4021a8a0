"""Trust at the edge (DESIGN §10): trusted_proxies decides whether inbound
X-Forwarded-*, Forwarded and X-Real-IP are believed (the chain kept, the
client = the first untrusted hop from the right) or replaced; PROXY headers
only from trusted peers; a lingering close long enough to read a 413."""

import time

from test_access_log import access, line_of, parse_text
from test_health import metric
from test_http import fields, http_listener, request_head, start
from test_http_proxy_protocol import REQ
from wglib import (SANITIZED, Harness, connect, http_request, read_http_response, recv_until_eof,
                    slack, wait_until)

FORGED = [("X-Forwarded-For", "203.0.113.5, 198.51.100.7, 10.1.2.3"),
          ("X-Real-IP", "6.6.6.6"), ("Forwarded", "for=6.6.6.6"),
          ("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "front.example")]


def test_untrusted_peer_forwarded_fields_are_replaced():
    with Harness() as h:
        wg, _ = start(h)                                # default: trust nobody
        f = fields(request_head(wg.port(), headers=FORGED))
        names = [k for k, _ in f]
        assert ("x-forwarded-for", "127.0.0.1") in f and names.count("x-forwarded-for") == 1, f
        assert ("x-real-ip", "127.0.0.1") in f and names.count("x-real-ip") == 1, f
        assert "forwarded" not in names, f
        assert ("x-forwarded-proto", "http") in f and names.count("x-forwarded-proto") == 1, f
        assert ("x-forwarded-host", "127.0.0.1:%d" % wg.port()) in f, f


def test_trusted_peer_chain_kept_client_is_first_untrusted_from_the_right():
    with Harness() as h:
        path_log = h.path("access.log")
        wg, _ = start(h, trusted_proxies=["127.0.0.1/32", "10.0.0.0/8", "2001:db8:1::/48"],
                      log=access(path_log))
        f = dict(fields(request_head(wg.port("web"), headers=FORGED)))
        assert f["x-forwarded-for"] == "203.0.113.5, 198.51.100.7, 10.1.2.3, 127.0.0.1", f
        assert f["x-real-ip"] == "198.51.100.7", f
        assert f["forwarded"] == "for=6.6.6.6", f
        assert f["x-forwarded-proto"] == "https" and f["x-forwarded-host"] == "front.example", f
        cases = [("2001:db8::9, 2001:db8:1::7", "2001:db8::9"),    # IPv6, one trusted hop
                 ("10.0.0.1, 10.0.0.2", "10.0.0.1"),                # all trusted: the leftmost
                 ("198.51.100.1, bogus, 10.0.0.2", "10.0.0.2"),     # not an address: stop
                 ("[2001:db8::5]:443", "2001:db8::5"), ("192.0.2.1:8080", "192.0.2.1")]
        for xff, client in cases:
            f = dict(fields(request_head(wg.port("web"), headers=[("X-Forwarded-For", xff)])))
            assert f["x-real-ip"] == client, (xff, f)
        s = connect(wg.port("web"))                     # the access log shows that client
        s.sendall(b"GET /logged HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 192.0.2.44\r\n"
                  b"Connection: close\r\n\r\n")
        assert read_http_response(s).status == 200
        s.close()
        assert line_of(path_log, "192.0.2.44", parse_text)["path"] == "/logged"


def test_listener_override_and_hash_by_the_real_client():
    with Harness() as h:
        bs = [h.backend("http", name="h%d" % k) for k in range(3)]
        strict = http_listener([{"path_prefix": "/", "service": "users"}], name="strict")
        strict["trusted_proxies"] = []                  # overrides the top level: nobody
        wg = h.waygate(listeners=[http_listener([{"path_prefix": "/", "service": "users"}]),
                                  strict],
                       instances={"users": [b.instance() for b in bs]},
                       services={"users": {"balance": "hash", "hash_key": "client_ip"}},
                       trusted_proxies=["127.0.0.1"])
        f = dict(fields(request_head(wg.port("strict"), headers=FORGED)))
        assert f["x-forwarded-for"] == "127.0.0.1" and f["x-real-ip"] == "127.0.0.1", f
        seen = {}
        for k in range(24):
            client = "192.0.2.%d" % (k + 1)
            got = {backend_of(wg.port("web"), client) for _ in range(2)}
            assert len(got) == 1, (client, got)
            seen[client] = got.pop()
        assert len(set(seen.values())) > 1, "every client on one instance: %r" % seen


def backend_of(port, client):
    r = http_request(port, path="/", headers=[("X-Forwarded-For", client)])
    assert r.status == 200, r
    return r.body


def closed_without_answer(port, data):
    with connect(port) as s:
        try:
            s.sendall(data)
            return recv_until_eof(s) == b""
        except (BrokenPipeError, ConnectionResetError):    # closed at once, our bytes unread
            return True


def test_proxy_protocol_only_from_trusted_peers():
    with Harness() as h:
        b = h.backend("http", name="b")
        a = h.backend("name", name="a")
        web = http_listener([{"path_prefix": "/", "service": "users"}])
        web["proxy_protocol"] = True
        tcp = {"name": "t4", "mode": "tcp", "service": "names", "proxy_protocol": True}
        wg = h.waygate(listeners=[web, tcp],
                       instances={"users": [b.instance()], "names": [a.instance()]})
        line = b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 80\r\n"
        # The harness's readiness connects count too, once a worker has
        # accepted them (after wait_listening returned): wait until they are in.
        def settled():
            a = metric(wg, "waygate_proxy_protocol_untrusted_total")
            time.sleep(0.3)
            return a >= 2 and metric(wg, "waygate_proxy_protocol_untrusted_total") == a
        wait_until(settled, slack(5), "the readiness connects to be counted")
        before = metric(wg, "waygate_proxy_protocol_untrusted_total")
        assert closed_without_answer(wg.port("web"), line + REQ), "PROXY from an untrusted peer"
        assert closed_without_answer(wg.port("t4"), line + b"hello"), "tcp: relayed"
        assert metric(wg, "waygate_proxy_protocol_untrusted_total") == before + 2


def test_lingering_close_outlasts_a_slow_client():
    """After a 413 the client may still be sending its body for seconds:
    waygate keeps reading (and dropping) it, so the client's later writes are
    not answered with a reset that would destroy the 413 it has not read."""
    with Harness() as h:
        wg, _ = start(h, workers=1, http={"max_body_size": "10"})
        with connect(wg.port()) as s:
            s.sendall(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n")
            for k in range(4):                          # 3.3 s of a slow upload
                s.sendall(b"x" * 1000)
                time.sleep(1.1 if k < 3 else 0.2)
            try:
                s.sendall(b"x" * 1000)
            except OSError as e:
                raise AssertionError("reset while the client was still sending: %s" % e) from None
            r = read_http_response(s)
            assert r.status == 413, r


def test_lingering_connections_are_bounded_per_worker():
    """At most 1024 lingering closes per worker: past them an error closes
    at once (the client's next bytes meet a reset)."""
    n = 1100
    with Harness() as h:
        wg, _ = start(h, workers=1)
        socks = []
        try:
            for _ in range(n):
                s = connect(wg.port())
                s.sendall(b"BAD\r\n\r\n")
                socks.append(s)
            for s in socks:
                assert read_http_response(s).status == 400
            reset = set()
            for step in (b"x", b"y", b"z"):             # a closed socket answers x with a reset
                for k, s in enumerate(socks):
                    try:
                        s.sendall(step)
                    except OSError:
                        reset.add(k)
                time.sleep(0.2)
            resets = len(reset)
            if SANITIZED:                               # slow: some lingers may have ended (5 s)
                assert resets >= n - 1024, resets
            else:
                assert resets == n - 1024, "%d connections closed at once, want %d" % (
                    resets, n - 1024)
        finally:
            for s in socks:
                s.close()
