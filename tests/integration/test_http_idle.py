"""Idle keep-alive clients cost little memory (issue 10): after its response
a client holds no request state and no I/O buffer, only its connection.

HAProxy 2.6 costs about 1.2 KB of RSS per idle keep-alive client on this
box and nginx about 0.6 KB (benchmarks/results/); waygate must stay under
HAProxy's figure. Then every idle client is used again, to prove that the
state given back between requests is rebuilt correctly.
"""

from test_http import start
from wglib import SANITIZED, Harness, connect, http_request, read_http_response, scaled

IDLE_BYTES_MAX = 1100           # HAProxy 2.6: ~1,206 B per idle client here


def one_request(s, path):
    s.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: t\r\n\r\n")
    r = read_http_response(s)
    assert r.status == 200, r
    return r


def test_idle_keepalive_clients_hold_no_request_state():
    n = scaled(3000, 600)
    with Harness() as h:
        wg, _ = start(h, rlimit_nofile=n + 1000)
        port = wg.port("web")
        for _ in range(200):                        # warm up: free lists, pools, heap
            assert http_request(port, path="/warm").status == 200
        rss0 = wg.rss_kib()
        socks = []
        try:
            for k in range(n):
                s = connect(port, 5.0)
                socks.append(s)
                one_request(s, "/first/%d" % k)
            rss1 = wg.rss_kib()
            per_conn = (rss1 - rss0) * 1024.0 / n
            print("RSS %d -> %d KiB: %.0f bytes per idle keep-alive client" % (rss0, rss1, per_conn))
            if not SANITIZED:
                assert per_conn < IDLE_BYTES_MAX, per_conn
            for k, s in enumerate(socks):           # every idle client works again
                r = one_request(s, "/second/%d" % k)
                assert r.body, r
        finally:
            for s in socks:
                s.close()
