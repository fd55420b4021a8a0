"""HTTP/2 at the edge (DESIGN §15): ALPN h2 on TLS listeners, h2c with prior
knowledge, the same exchange as HTTP/1.1 (routes, forwarded headers, access
log), flow control with large bodies, and the limits against misbehaving
clients (each attack closes only its own connection)."""

import hashlib
import os
import re
import shutil
import signal
import subprocess
import threading
import time

from h2lib import (ACK, COMPRESSION_ERROR, CONTINUATION, DATA, END_HEADERS, END_STREAM,
                   ENHANCE_YOUR_CALM, HEADERS, PING, PREFACE, PRIORITY, RST_STREAM, SETTINGS,
                   WINDOW_UPDATE, Client, Raw, frame, h2c_listener)
from tlslib import client_context, shared
from wglib import (MIB, SANITIZED, Harness, curl, http_request, scaled, slack,
                   wait_until)


def h2_waygate(h, b, listener=None, **kw):
    return h.waygate(listeners=[listener or h2c_listener()], instances={"users": [b.instance()]},
                     **kw)


def curl_ok(*args):
    rc, out, err = curl(*args)
    assert rc == 0, (args, rc, err)
    return out.decode()


def metrics(wg):
    return http_request(wg.admin_port, path="/metrics").body.decode()


def metric(text, name):
    m = re.search(r"^%s (\d+)$" % re.escape(name), text, re.M)
    return int(m.group(1)) if m else None


def test_h2_tls_alpn_curl_and_h1_alongside():
    with Harness() as h:
        pki = shared()
        crt, key = pki.leaf("a", ["a.test"])
        b = h.backend("http", name="a")
        listener = {"name": "web", "mode": "http",
                    "routes": [{"path_prefix": "/", "service": "users"}],
                    "tls": {"certificates": [{"cert": crt, "key": key}]}}
        wg = h2_waygate(h, b, listener)
        url = "https://a.test:%d/request" % wg.port("web")
        res = "a.test:%d:127.0.0.1" % wg.port("web")
        out = curl_ok("--http2", "--cacert", pki.ca, "--resolve", res, "-w",
                   "\\n%{http_version}", url)
        body, version = out.rsplit("\n", 1)
        assert version == "2", out
        low = body.lower()
        assert "x-forwarded-proto: https" in low and "host: a.test" in low, body
        assert "x-request-id: " in low and "connection:" not in low, body
        out = curl_ok("--http1.1", "--cacert", pki.ca, "--resolve", res, "-w",
                   "\\n%{http_version}", url)
        assert out.endswith("\n1.1"), out


def test_h2c_prior_knowledge_curl_many_streams_h2load():
    with Harness() as h:
        b = h.backend("http", name="a")
        wg = h.waygate(listeners=[h2c_listener(), h2c_listener("quiet")],
                       instances={"users": [b.instance()]})
        port = wg.port("h2")
        out = curl_ok("--http2-prior-knowledge", "-w", "\\n%{http_version}",
                   "http://127.0.0.1:%d/" % port)
        assert out == "a\n2", out
        r = http_request(port, path="/")             # HTTP/1.1 on the same listener
        assert r.status == 200 and r.body == b"a", r
        n = scaled(4000, 400)
        p = subprocess.run(["h2load", "-n", str(n), "-c", "4", "-m", "50",
                            "http://127.0.0.1:%d/" % port], capture_output=True, text=True,
                           timeout=120)
        assert re.search(r"%d succeeded, 0 failed, 0 errored" % n, p.stdout), p.stdout
        m = metrics(wg)
        assert metric(m, 'waygate_http2_streams_total{listener="h2"}') >= n + 1, m
        assert metric(m, 'waygate_http2_connections_total{listener="h2"}') >= 5, m
        assert metric(m, 'waygate_http2_streams_total{listener="quiet"}') == 0, m
        assert metric(m, 'waygate_http2_connections_total{listener="quiet"}') == 0, m
        wait_until(lambda: metric(metrics(wg), 'waygate_http2_streams_active{listener="h2"}') == 0,
                   slack(5), "no active stream")


def test_h2c_needs_h2c_true():
    with Harness() as h:
        b = h.backend("http", name="a")
        wg = h2_waygate(h, b, h2c_listener(h2c=False))
        p = subprocess.run(["curl", "-sS", "--http2-prior-knowledge",
                            "http://127.0.0.1:%d/" % wg.port("h2")], capture_output=True,
                           text=True, timeout=30)
        assert p.returncode != 0, p.stdout       # answered as HTTP/1.1 (505), not HTTP/2


def test_h2_request_mapping_and_access_log():
    with Harness() as h:
        b = h.backend("http", name="a")
        log = h.path("access.log")
        wg = h2_waygate(h, b, log={"level": "info", "access_log": log, "access_format": "text"})
        c = Client(wg.port("h2"))
        try:
            r = c.get("/request?x=1", headers=[("cookie", "a=1"), ("cookie", "b=2"),
                                               ("x-forwarded-for", "6.6.6.6")])
            assert r["status"] == 200, r
            head = bytes(r["body"]).decode().lower()
            assert "cookie: a=1; b=2" in head, head
            assert "host: localhost" in head and "get /request?x=1 http/1.1" in head, head
            assert "x-forwarded-for: 127.0.0.1\r\n" in head and "6.6.6.6" not in head, head
            # (an untrusted peer's X-Forwarded-For is replaced, DESIGN §10)
            assert c.get("/", authority="a.test", headers=[("host", "b.test")])["status"] == 400
            r = c.get("/", headers=[("connection", "close")])
            assert r["reset"] == 1, r                    # PROTOCOL_ERROR (RFC 9113 §8.2.2)
            r = c.get("/", headers=[("te", "gzip")])
            assert r["reset"] == 1, r
            assert c.get("/", headers=[("te", "trailers")])["status"] == 200
            r = c.get("/echo", method="POST", body=b"hello h2")           # chunked upstream
            assert r["status"] == 200 and bytes(r["body"]) == b"hello h2", r
            r = c.get("/echo", method="POST", body=b"x" * 1000,
                      headers=[("content-length", "1000")])
            assert r["status"] == 200 and bytes(r["body"]) == b"x" * 1000, r
            r = c.get("/", headers=[("x-big", "v" * 40000)])   # list over max_header_size
            assert r["status"] == 431, r
            assert c.get("/")["status"] == 200           # the connection lives on
            for _ in range(3):
                assert c.get("/")["status"] == 200
        finally:
            c.close()
        # streams that ended whole give their upstream connection back to the pool
        assert metric(metrics(wg), "waygate_http_upstream_reused_total") >= 3
        wait_until(lambda: os.path.exists(log) and "proto=h2 stream=" in open(log).read(),
                   slack(5), "an h2 access line")
        text = open(log).read()
        assert re.search(r'path="/request\?x=1" status=200 .* proto=h2 stream=1$', text, re.M), text


def test_h2_large_upload_and_download_byte_exact_rss_bounded():
    size = scaled(128 * MIB, 8 * MIB)       # 128 MiB each way keeps the test a few seconds
    with Harness() as h:
        b = h.backend("http", name="a")
        wg = h2_waygate(h, b)
        port = wg.port("h2")
        src = h.path("up.bin")
        with open(src, "wb") as f:
            block = os.urandom(MIB)
            for _ in range(size // MIB):
                f.write(block)
        want = hashlib.sha256(open(src, "rb").read()).hexdigest()
        up = subprocess.run("nghttp -d %s http://127.0.0.1:%d/echo | sha256sum" % (src, port),
                            shell=True, capture_output=True, text=True, timeout=300)
        assert up.stdout.split()[0] == want, (up.stdout, up.stderr)
        down = subprocess.run("curl -sS --http2-prior-knowledge 'http://127.0.0.1:%d/bytes?n=%d'"
                              " | sha256sum" % (port, size), shell=True, capture_output=True,
                              text=True, timeout=300)
        r = subprocess.run("curl -sS 'http://127.0.0.1:%d/bytes?n=%d' | sha256sum" %
                           (b.port, size), shell=True, capture_output=True, text=True, timeout=300)
        assert down.stdout.split()[0] == r.stdout.split()[0], (down.stdout, down.stderr)
        if not SANITIZED:
            assert wg.rss_kib() < 64 * 1024, "RSS %d KiB after %d bytes each way" % (
                wg.rss_kib(), size)


def test_h2_data_frame_with_its_header_fits_one_tls_record():
    """An upstream read becomes one DATA frame of at most 16,375 bytes: with
    its 9-byte header one 16 KiB TLS record (a 16 KiB frame left 9 bytes for
    a record and a write of their own)."""
    with Harness() as h:
        b = h.backend("http", name="a")
        wg = h2_waygate(h, b)
        c = Client(wg.port("h2"))
        try:
            r = c.get("/bytes?n=%d" % (1 << 20))
            assert r["status"] == 200 and len(r["body"]) == 1 << 20, r["status"]
            assert max(r["frames"]) <= 16384 - 9, sorted(r["frames"])[-3:]
        finally:
            c.close()


def test_h2_zero_window_client_reset_after_send_timeout():
    with Harness() as h:
        b = h.backend("http", name="a")
        wg = h2_waygate(h, b, h2c_listener(send_timeout="1s"))
        c = Client(wg.port("h2"), settings={4: 0})      # SETTINGS_INITIAL_WINDOW_SIZE = 0
        ok = Client(wg.port("h2"))
        try:
            sid = c.request("/bytes?n=1000000")
            c.wait(lambda: c.responses[sid]["reset"] is not None, slack(10), "a reset")
            assert ok.get("/")["status"] == 200
        finally:
            c.close()
            ok.close()


def attack(port, payload_fn, what):
    """Run one attack on its own connection while a well-behaved client on
    another one keeps getting every response; returns the GOAWAY code."""
    good = Client(port)
    bad = Raw(port)
    stop = threading.Event()
    failures = []

    def behave():
        try:
            while not stop.is_set():
                r = good.get("/", timeout=10)
                if r["status"] != 200:
                    failures.append(r)
        except AssertionError as e:
            failures.append(str(e))

    t = threading.Thread(target=behave)
    t.start()
    try:
        try:
            payload_fn(bad)
        except OSError:
            pass                                        # the server already closed it
        code = bad.wait_closed(slack(10))
    finally:
        stop.set()
        t.join(30)
        good.close()
        bad.close()
    assert not failures, (what, failures[:3])
    return code


def hdr_block(client, sid, path="/"):
    """An HPACK block for a GET (the raw client's encoder)."""
    return client.block(path)


def test_h2_attacks_end_only_their_connection():
    with Harness() as h:
        b = h.backend("http", name="a")
        wg = h2_waygate(h, b, h2c_listener(h2_max_resets_per_second=50,
                                           h2_max_control_frames_per_second=200))
        port = wg.port("h2")

        def rapid_reset(c):
            for i in range(200):
                sid = 2 * i + 1
                c.send_raw(frame(HEADERS, END_HEADERS | END_STREAM, sid, hdr_block(c, sid)) +
                           frame(RST_STREAM, 0, sid, b"\0\0\0\x08"))

        assert attack(port, rapid_reset, "rapid reset") == ENHANCE_YOUR_CALM

        def continuation_flood(c):
            c.send_raw(frame(HEADERS, 0, 1, hdr_block(c, 1)))
            for _ in range(2000):
                c.send_raw(frame(CONTINUATION, 0, 1, b"\x40\x01x\x01y" * 100))

        assert attack(port, continuation_flood, "continuation") == ENHANCE_YOUR_CALM

        def settings_flood(c):
            c.send_raw(frame(SETTINGS, 0, 0) * 2000)

        assert attack(port, settings_flood, "settings") == ENHANCE_YOUR_CALM

        def ping_flood(c):
            c.send_raw(frame(PING, 0, 0, b"12345678") * 2000)

        assert attack(port, ping_flood, "ping") == ENHANCE_YOUR_CALM

        def window_update_flood(c):
            c.send_raw(frame(WINDOW_UPDATE, 0, 0, b"\0\0\0\x01") * 2000)

        assert attack(port, window_update_flood, "window update") == ENHANCE_YOUR_CALM

        def priority_flood(c):
            c.send_raw(frame(PRIORITY, 0, 1, b"\0\0\0\0\x10") * 2000)

        assert attack(port, priority_flood, "priority") == ENHANCE_YOUR_CALM

        def empty_data_flood(c):
            c.send_raw(frame(HEADERS, END_HEADERS, 1, hdr_block(c, 1)))
            c.send_raw(frame(DATA, 0, 1) * 2000)

        assert attack(port, empty_data_flood, "empty data") == ENHANCE_YOUR_CALM

        def hpack_table_size(c):                        # a dynamic table size update of 2^30
            c.send_raw(frame(HEADERS, END_HEADERS | END_STREAM, 1,
                             b"\x3f\xe1\xff\xff\xff\x03" + hdr_block(c, 1)))

        assert attack(port, hpack_table_size, "hpack") == COMPRESSION_ERROR
        m = metrics(wg)
        calm = 'waygate_http2_goaways_sent_total{listener="h2",reason="enhance_your_calm"}'
        assert metric(m, calm) >= 7, m
        assert metric(m, 'waygate_http2_resets_received_total{listener="h2"}') >= 50, m


def test_h2_huge_header_table_setting_and_max_concurrent_streams():
    with Harness() as h:
        b = h.backend("http", name="a")
        wg = h2_waygate(h, b, h2c_listener(max_concurrent_streams=4))
        c = Client(wg.port("h2"), settings={1: 1 << 30})    # SETTINGS_HEADER_TABLE_SIZE
        try:
            c.pump(0.5)
            assert c.conn.remote_settings.max_concurrent_streams == 4
            sids = [c.request("/slow?ms=300", headers=[("x-%d" % i, "y" * 50) for i in range(40)])
                    for _ in range(4)]
            for sid in sids:
                assert c.response(sid)["status"] == 200
        finally:
            c.close()
        r = Raw(wg.port("h2"))
        try:
            for sid in range(1, 11, 2):             # five at once over a limit of four
                r.get(sid, "/slow?ms=500")
            got = [r.response(sid, slack(10)) for sid in range(1, 11, 2)]
            assert sum(1 for g in got if g["status"] == 200) == 4, got
            assert sum(1 for g in got if g["reset"] == 7) == 1, got       # REFUSED_STREAM
        finally:
            r.close()
        ok = Client(wg.port("h2"))
        try:
            assert ok.get("/")["status"] == 200
        finally:
            ok.close()


def test_h2_sigterm_goaway_lets_streams_finish():
    with Harness() as h:
        b = h.backend("http", name="a")
        wg = h2_waygate(h, b, shutdown_timeout="5s")
        c = Raw(wg.port("h2"))
        try:
            c.get(1, "/slow?ms=1500")
            c.pump(0.3)
            wg.proc.signal(signal.SIGTERM)
            r = c.response(1, timeout=slack(10))
            assert r["status"] == 200 and r["body"] == b"a", r
            assert c.wait_closed(slack(10)) == 0         # GOAWAY NO_ERROR, then closed
        finally:
            c.close()
        assert wg.proc.wait(slack(10)) == 0


TRAILED = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n"
           b"5\r\nhello\r\n6\r\n world\r\n0\r\nGrpc-Status: 0\r\nX-Checksum: abc\r\n\r\n")


def test_h2_response_trailers_from_a_chunked_upstream():
    from test_http_upstream import Canned
    up = Canned(TRAILED)                        # what a gRPC-style HTTP/1.1 upstream sends
    try:
        with Harness() as h:
            wg = h.waygate(listeners=[h2c_listener()], instances={"users": [up.instance("t")]})
            c = Client(wg.port("h2"))
            try:
                for _ in range(2):                          # and again on the pooled connection
                    r = c.get("/")
                    assert r["status"] == 200 and bytes(r["body"]) == b"hello world", r
                    tr = dict((k.decode() if isinstance(k, bytes) else k,
                               v.decode() if isinstance(v, bytes) else v) for k, v in r["trailers"])
                    assert tr == {"grpc-status": "0", "x-checksum": "abc"}, r
                    assert "transfer-encoding" not in dict(r["headers"]), r
            finally:
                c.close()
    finally:
        up.close()


def test_h2c_behind_proxy_protocol():
    with Harness() as h:
        b = h.backend("http", name="a")
        listener = h2c_listener()
        listener["proxy_protocol"] = True
        wg = h2_waygate(h, b, listener, trusted_proxies=["127.0.0.1/32"])
        c = Client(wg.port("h2"), prefix=b"PROXY TCP4 203.0.113.7 10.0.0.1 40000 80\r\n")
        try:
            r = c.get("/request")
            assert r["status"] == 200, r
            assert "x-forwarded-for: 203.0.113.7" in bytes(r["body"]).decode().lower(), r
        finally:
            c.close()


def test_h2_reload_applies_to_the_next_stream_of_an_open_connection():
    from test_lifecycle_http import reload, reloads
    with Harness() as h:
        a, b = h.backend("http", name="a"), h.backend("http", name="b")
        wg = h.waygate(listeners=[h2c_listener()],
                       instances={"users": [a.instance()], "other": [b.instance()]})
        c = Client(wg.port("h2"))
        try:
            assert bytes(c.get("/")["body"]) == b"a"
            reload(wg, lambda cfg: cfg["listeners"][0].update(
                routes=[{"path_prefix": "/", "service": "other"}]))
            wait_until(lambda: reloads(wg) == 1, slack(5), "the reload")
            assert bytes(c.get("/")["body"]) == b"b"       # same connection, new config
        finally:
            c.close()


def test_h2_max_body_size_per_stream():
    with Harness() as h:
        b = h.backend("http", name="a")
        wg = h2_waygate(h, b, h2c_listener(max_body_size="1k"))
        c = Client(wg.port("h2"))
        try:
            r = c.get("/echo", method="POST", body=b"x" * 2000,
                      headers=[("content-length", "2000")])
            assert r["status"] == 413, r                    # known up front
            r = c.get("/echo", method="POST", body=b"y" * 3000)      # chunked upstream
            assert r["status"] == 413 or r["reset"] is not None, r
            r = c.get("/echo", method="POST", body=b"z" * 500)
            assert r["status"] == 200 and bytes(r["body"]) == b"z" * 500, r
        finally:
            c.close()
        raw = Raw(wg.port("h2"))            # HEADERS, DATA and END_STREAM in one read
        try:
            raw.streams[1] = {"status": None, "body": b"", "ended": False, "reset": None}
            raw.send_raw(frame(HEADERS, END_HEADERS, 1, raw.block("/echo", "POST")) +
                         frame(DATA, END_STREAM, 1, b"one packet"))
            got = raw.response(1, slack(10))
            assert got["status"] == 200 and got["body"] == b"one packet", got
        finally:
            raw.close()


def test_h2_client_certificate_subject():
    with Harness() as h:
        pki = shared()
        crt, key = pki.leaf("a", ["a.test"])
        ccrt, ckey = pki.leaf("client", cn="client-1", client=True)
        b = h.backend("http", name="a")
        listener = {"name": "web", "mode": "http",
                    "routes": [{"path_prefix": "/", "service": "users"}],
                    "tls": {"certificates": [{"cert": crt, "key": key}], "client_ca": pki.ca,
                            "verify": "optional"}}
        wg = h2_waygate(h, b, listener)
        out = curl_ok("--http2", "--cacert", pki.ca, "--cert", ccrt, "--key", ckey, "--resolve",
                      "a.test:%d:127.0.0.1" % wg.port("web"), "-H", "X-Client-Cert-Subject: CN=admin",
                      "-w", "\\n%{http_version}", "https://a.test:%d/request" % wg.port("web"))
        body, version = out.rsplit("\n", 1)
        assert version == "2", out
        low = body.lower()
        assert "x-client-cert-subject: cn=client-1" in low and "cn=admin" not in low, body


def test_h2_retries_and_response_timeout():
    from wglib import free_port
    with Harness() as h:
        b = h.backend("http", name="a")
        dead = {"id": "dead", "address": "127.0.0.1", "port": free_port()}   # nothing listens
        listener = h2c_listener()
        listener["routes"] = [{"path_prefix": "/slow", "service": "users", "response_timeout": "300ms",
                               "retries": 0},
                              {"path_prefix": "/", "service": "users"}]
        wg = h.waygate(listeners=[listener], instances={"users": [dead, b.instance()]},
                       service_defaults={"balance": "round_robin", "retries": 2})
        c = Client(wg.port("h2"))
        try:
            for _ in range(6):                  # round robin meets the dead one: retried
                r = c.get("/")
                assert r["status"] == 200 and bytes(r["body"]) == b"a", r
            got = [c.get("/slow?ms=3000", timeout=slack(10))["status"] for _ in range(2)]
            assert 504 in got and set(got) <= {502, 504}, got
        finally:
            c.close()


def test_h2_chromium_loads_the_dashboard_over_tls():
    """Headless Chromium opens the admin dashboard through a TLS listener of
    a second waygate: ALPN gives h2, the page and its /status fetch are two
    streams (access log proto=h2), and the DOM shows what /status said."""
    binary = shutil.which("chromium")
    if not binary:
        print("chromium not installed: skipped")
        return
    with Harness() as h:
        pki = shared()
        crt, key = pki.leaf("dash", ["dash.test"])
        b = h.backend("http", name="a")
        inner = h.waygate(instances={"users": [b.instance("marker-instance-7")]})
        log = h.path("access.log")
        listener = {"name": "web", "mode": "http",
                    "routes": [{"path_prefix": "/", "service": "users"}],
                    "tls": {"certificates": [{"cert": crt, "key": key}]}}
        edge = h.waygate(listeners=[listener], log={"level": "info", "access_log": log,
                                                     "access_format": "text"},
                         instances={"users": [{"id": "admin", "address": "127.0.0.1",
                                               "port": inner.admin_port}]})
        env = dict(os.environ, DBUS_SESSION_BUS_ADDRESS="disabled:")
        cp = subprocess.run([binary, "--headless", "--no-sandbox", "--disable-gpu",
                             "--disable-background-networking", "--disable-dev-shm-usage",
                             "--user-data-dir=" + h.path("chrome"), "--ignore-certificate-errors",
                             "--host-resolver-rules=MAP dash.test 127.0.0.1",
                             "--virtual-time-budget=3000", "--dump-dom",
                             "https://dash.test:%d/" % edge.port("web")],
                            stdin=subprocess.DEVNULL, capture_output=True, env=env,
                            timeout=slack(90))
        dom = cp.stdout.decode(errors="replace")
        assert cp.returncode == 0, cp.stderr.decode()[-2000:]
        assert "<title>waygate</title>" in dom and "marker-instance-7" in dom, dom[-3000:]
        wait_until(lambda: os.path.exists(log) and "path=/status " in open(log).read(),
                   slack(5), "the dashboard's /status fetch in the access log")
        text = open(log).read()
        assert re.search(r"path=/ status=200 .* proto=h2 stream=\d+$", text, re.M), text
        assert re.search(r"path=/status status=200 .* proto=h2 stream=\d+$", text, re.M), text
        assert all(" proto=h2 " in l for l in text.splitlines()), text
