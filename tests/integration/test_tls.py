"""TLS at the edge and to upstreams (DESIGN §11), on tcp listeners: SNI,
versions, tickets, client certificates, handshake timeout, backpressure,
reload, and upstream verification of chain and name."""

import signal
import socket
import ssl
import subprocess
import time

from tlslib import client_context, peer_cn, shared
from wglib import (SANITIZED, Harness, MIB, connect, free_port, recv_exact, run_waygate, slack,
                   wait_until, write_atomic, yaml_block)


def tls_listener(certs, **tls):
    t = {"certificates": [{"cert": c, "key": k} for c, k in certs], "handshake_timeout": "2s"}
    t.update(tls)
    return {"name": "t", "mode": "tcp", "service": "users", "tls": t}


def tls_connect(port, ctx, sni=None, timeout=5):
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        return ctx.wrap_socket(raw, server_hostname=sni)
    except Exception:
        raw.close()
        raise


def read_name(s):
    data = b""
    while not data.endswith(b"\n"):
        chunk = s.recv(64)
        if not chunk:
            break
        data += chunk
    return data.decode().strip()


def start(h, pki, certs, backend_mode="name", **tls):
    b = h.backend(backend_mode, name="a")
    wg = h.waygate(listeners=[tls_listener(certs, **tls)], instances={"users": [b.instance()]})
    return b, wg


def test_sni_selects_certificate_and_default_without_sni():
    with Harness() as h:
        pki = shared()
        a = pki.leaf("a", ["a.test"])
        wild = pki.leaf("wild", ["*.b.test"])
        b, wg = start(h, pki, [a, wild])
        ctx = client_context(ca=pki.ca)
        with tls_connect(wg.port(), ctx, "a.test") as s:
            assert peer_cn(s) == "a.test"
            assert read_name(s) == "a"          # relayed to the backend
        with tls_connect(wg.port(), ctx, "x.b.test") as s:
            assert peer_cn(s) == "*.b.test"
        # A wildcard covers exactly one label: x.y.b.test gets the default.
        with tls_connect(wg.port(), client_context(), "x.y.b.test") as s:
            assert peer_cn(s) == "a.test"
        with tls_connect(wg.port(), client_context(), None) as s:
            assert peer_cn(s) == "a.test"


def test_ecdsa_and_rsa_side_by_side():
    with Harness() as h:
        pki = shared()
        rsa = pki.leaf("c-rsa", ["c.test"])
        ec = pki.leaf("c-ec", ["c.test"], ec=True)
        b, wg = start(h, pki, [rsa, ec])
        for ciphers, want in (("ECDHE-ECDSA-AES128-GCM-SHA256", "id-ecPublicKey"),
                              ("ECDHE-RSA-AES128-GCM-SHA256", "rsaEncryption")):
            ctx = client_context(ca=pki.ca, max_version=ssl.TLSVersion.TLSv1_2)
            ctx.set_ciphers(ciphers)
            with tls_connect(wg.port(), ctx, "c.test") as s:
                der = s.getpeercert(binary_form=True)
                out = subprocess.run(["openssl", "x509", "-inform", "DER", "-noout", "-text"],
                                     input=der, capture_output=True).stdout.decode()
                assert want in out, "expected a %s certificate" % want


def test_old_versions_refused_tls13_works():
    with Harness() as h:
        pki = shared()
        b, wg = start(h, pki, [pki.leaf("a", ["a.test"])])
        for v in ("-tls1", "-tls1_1"):
            cp = subprocess.run(["openssl", "s_client", "-connect", "127.0.0.1:%d" % wg.port(), v,
                                 "-servername", "a.test"], input=b"", capture_output=True,
                                timeout=20)
            assert cp.returncode != 0, "%s was accepted" % v
        ctx = client_context(ca=pki.ca, min_version=ssl.TLSVersion.TLSv1_3)
        with tls_connect(wg.port(), ctx, "a.test") as s:
            assert s.version() == "TLSv1.3"
            assert read_name(s) == "a"
        assert wg.alive()


def test_min_version_13_refuses_12():
    with Harness() as h:
        pki = shared()
        b, wg = start(h, pki, [pki.leaf("a", ["a.test"])], min_version="1.3")
        ctx = client_context(ca=pki.ca, max_version=ssl.TLSVersion.TLSv1_2)
        try:
            tls_connect(wg.port(), ctx, "a.test").close()
            raise AssertionError("TLS 1.2 accepted with min_version 1.3")
        except (ssl.SSLError, ConnectionResetError):
            pass


def s_client(port, args, ca, sni="a.test"):
    """openssl s_client against 127.0.0.1:port. stdin stays open a moment: a
    TLS 1.3 ticket arrives after the handshake, and s_client with a closed
    stdin may quit before it."""
    p = subprocess.Popen(["openssl", "s_client", "-connect", "127.0.0.1:%d" % port,
                          "-servername", sni, "-CAfile", ca] + args,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(0.5)
    out, err = p.communicate(b"", timeout=20)
    return subprocess.CompletedProcess(args, p.returncode, out, err)


def test_session_ticket_resumption():
    with Harness() as h:
        pki = shared()
        b, wg = start(h, pki, [pki.leaf("a", ["a.test"])])
        sess = h.path("sess.pem")
        for v in ("-tls1_2", "-tls1_3"):
            first = s_client(wg.port(), [v, "-sess_out", sess], pki.ca)
            assert first.returncode == 0, first.stderr
            again = s_client(wg.port(), [v, "-sess_in", sess, "-msg"], pki.ca)
            assert b"Reused" in again.stdout, "%s session not resumed:\n%s" % (
                v, again.stdout.decode(errors="replace")[-2000:])
            if v == "-tls1_3":
                # TLS 1.3 clients use a ticket once (OpenSSL's client cache,
                # browsers): a resumed connection must bring a fresh one, or
                # every other handshake is a full one (wrk showed it).
                assert b"NewSessionTicket" in again.stdout, again.stdout.decode(
                    errors="replace")[-3000:]


def test_resumption_with_client_certificates():
    """mTLS listeners (verify optional and required, tcp and http) resume a
    session on TLS 1.2 and 1.3; before a session id context was set, OpenSSL
    answered every resumption there with a fatal internal_error alert."""
    with Harness() as h:
        pki = shared()
        client = pki.leaf("client", cn="client-1", client=True)
        cert = ["-cert", client[0], "-key", client[1]]
        leaf = [pki.leaf("a", ["a.test"])]
        listeners = []
        for verify in ("optional", "required"):
            t = tls_listener(leaf, client_ca=pki.ca, verify=verify)
            t["name"] = "t-" + verify
            w = https_listener(leaf, client_ca=pki.ca, verify=verify)
            w["name"] = "web-" + verify
            listeners += [t, w]
        b = h.backend("name", name="a")
        wg = h.waygate(listeners=listeners, instances={"users": [b.instance()]})
        for name in [l["name"] for l in listeners]:
            for v in ("-tls1_2", "-tls1_3"):
                sess = h.path("%s%s.pem" % (name, v))
                first = s_client(wg.port(name), [v, "-sess_out", sess] + cert, pki.ca)
                assert first.returncode == 0 and b"New," in first.stdout, (name, v, first.stderr)
                again = s_client(wg.port(name), [v, "-sess_in", sess] + cert, pki.ca)
                assert b"Reused" in again.stdout, "%s %s: not resumed:\n%s%s" % (
                    name, v, again.stdout.decode(errors="replace")[-1500:],
                    again.stderr.decode(errors="replace")[-1000:])
        assert "internal error" not in wg.stderr_text().lower()
        assert wg.alive()


def test_ticket_does_not_cross_into_an_mtls_listener():
    """Ticket keys are process-wide: a ticket from listener `open` (no client
    certificate) presented to listener `mtls` (verify required) gets a full
    handshake, which asks for a certificate, never a resumed session."""
    with Harness() as h:
        pki = shared()
        client = pki.leaf("client", cn="client-1", client=True)
        leaf = [pki.leaf("a", ["a.test"])]
        b = h.backend("name", name="a")
        o = tls_listener(leaf)
        o["name"] = "open"
        m = tls_listener(leaf, client_ca=pki.ca, verify="required")
        m["name"] = "mtls"
        wg = h.waygate(listeners=[o, m], instances={"users": [b.instance()]})
        for v in ("-tls1_2", "-tls1_3"):
            sess = h.path("open%s.pem" % v)
            first = s_client(wg.port("open"), [v, "-sess_out", sess], pki.ca)
            assert first.returncode == 0 and b"New," in first.stdout, first.stderr
            # With a client certificate: a full handshake that succeeds.
            full = s_client(wg.port("mtls"), [v, "-sess_in", sess, "-cert", client[0],
                                              "-key", client[1]], pki.ca)
            out = full.stdout.decode(errors="replace")
            assert "Reused" not in out, "%s: open's ticket resumed on mtls" % v
            assert "New," in out and full.returncode == 0, "%s: no full handshake:\n%s%s" % (
                v, out[-1500:], full.stderr.decode(errors="replace")[-1000:])
            # Without one: refused, never served from the open listener's session.
            bare = s_client(wg.port("mtls"), [v, "-sess_in", sess], pki.ca)
            text = bare.stdout.decode(errors="replace") + bare.stderr.decode(errors="replace")
            assert "Reused" not in text, "%s: resumed without a client certificate" % v
            refused = "certificate required" in text or "handshake failure" in text
            assert refused, "%s: not refused:\n%s" % (v, text[-2000:])


def test_required_client_certificate():
    with Harness() as h:
        pki = shared()
        client = pki.leaf("client", cn="client-1", client=True)
        b, wg = start(h, pki, [pki.leaf("a", ["a.test"])], client_ca=pki.ca, verify="required")
        with tls_connect(wg.port(), client_context(ca=pki.ca, cert=client[0], key=client[1]),
                         "a.test") as s:
            assert read_name(s) == "a"
        other = shared("other")
        forged = other.leaf("forged", cn="client-1", client=True)
        for ctx in (client_context(ca=pki.ca),
                    client_context(ca=pki.ca, cert=forged[0], key=forged[1])):
            try:
                with tls_connect(wg.port(), ctx, "a.test") as s:
                    # TLS 1.3: the refusal arrives after the client's Finished.
                    s.settimeout(5)
                    assert s.recv(10) == b"", "served without a valid client certificate"
            except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
                pass


def test_handshake_timeout_closes_silent_connection():
    with Harness() as h:
        pki = shared()
        b, wg = start(h, pki, [pki.leaf("a", ["a.test"])])
        with connect(wg.port(), timeout=10) as s:
            t0 = time.monotonic()
            s.settimeout(slack(10))
            assert s.recv(10) == b""
            took = time.monotonic() - t0
        assert 1.5 <= took <= slack(4), "closed after %.2fs (handshake_timeout 2s)" % took
        assert not b.accepts(), "a connection without a handshake reached the backend"


def test_slow_reader_over_tls_keeps_rss_bounded():
    with Harness() as h:
        pki = shared()
        b = h.backend("source", name="src", source=1024 * MIB)
        wg = h.waygate(listeners=[tls_listener([pki.leaf("a", ["a.test"])])],
                       instances={"users": [b.instance()]})
        rss0 = wg.rss_kib()
        with tls_connect(wg.port(), client_context(ca=pki.ca), "a.test", timeout=10) as s:
            got = 0
            while got < 4 * MIB:                # some traffic, then stop reading
                got += len(s.recv(65536))
            time.sleep(2)
            rss1 = wg.rss_kib()
        if not SANITIZED:
            assert rss1 - rss0 < 8 * 1024, "RSS grew by %d KiB with a stalled TLS reader" % (
                rss1 - rss0)
        assert wg.alive()


def test_reload_swaps_certificate_old_connection_continues():
    with Harness() as h:
        pki = shared()
        old = pki.leaf("old", ["a.test"], cn="old")
        new = pki.leaf("new", ["a.test"], cn="new")
        b = h.backend("echo", name="e")
        wg = h.waygate(listeners=[tls_listener([old])], instances={"users": [b.instance()]})
        ctx = client_context(ca=pki.ca)
        with tls_connect(wg.port(), ctx, "a.test") as held:
            assert peer_cn(held) == "old"
            cfg = wg.config_dict()
            cfg["listeners"][0]["tls"]["certificates"] = [{"cert": new[0], "key": new[1]}]
            write_atomic(wg.config_path, yaml_block(cfg) + "\n")
            wg.proc.signal(signal.SIGHUP)
            wait_until(lambda: "configuration reloaded" in wg.stderr_text(), slack(5), "reload")
            with tls_connect(wg.port(), ctx, "a.test") as s:
                assert peer_cn(s) == "new"
            held.sendall(b"still old")
            assert recv_exact(held, 9) == b"still old"


def test_key_not_matching_certificate_is_a_config_error():
    with Harness() as h:
        pki = shared()
        a_crt, a_key = pki.leaf("a", ["a.test"])
        b_crt, b_key = pki.leaf("b", ["b.test"])
        port = free_port()
        cfg = h.path("bad.yaml")
        write_atomic(cfg, yaml_block({"listeners": [dict(tls_listener([(a_crt, b_key)]),
                                                         listen="127.0.0.1:%d" % port)]}) + "\n")
        rc, out, err = run_waygate("-t", "-c", cfg)
        assert rc == 1, (rc, out, err)
        assert b_key in err and "does not match" in err, err


def upstream_chain(h, pki, server_cert, upstream_tls):
    """client -> waygate B (plain tcp, TLS to its upstream) -> waygate A
    (TLS listener) -> name backend."""
    b = h.backend("name", name="a")
    front = h.waygate(listeners=[tls_listener([server_cert])], instances={"users": [b.instance()]})
    back = h.waygate(listeners=[{"name": "p", "mode": "tcp", "service": "tlsup"}],
                     instances={"tlsup": [{"id": "front", "address": "127.0.0.1",
                                           "port": front.port()}]},
                     services={"tlsup": {"tls": upstream_tls, "retries": 0}})
    return back


def name_or_none(port):
    try:
        with connect(port) as s:
            s.settimeout(5)
            return read_name(s) or None
    except OSError:
        return None


def test_upstream_tls_verifies_chain_and_name():
    with Harness() as h:
        pki = shared()
        good = pki.leaf("up", ["up.test"], ips=["127.0.0.1"])
        ok = upstream_chain(h, pki, good, {"enabled": True, "ca": pki.ca, "sni": "up.test"})
        assert name_or_none(ok.port()) == "a"
        by_ip = upstream_chain(h, pki, good, {"enabled": True, "ca": pki.ca})
        assert name_or_none(by_ip.port()) == "a"    # verified against 127.0.0.1
        other = shared("other")
        wrong_ca = upstream_chain(h, pki, good, {"enabled": True, "ca": other.ca, "sni": "up.test"})
        assert name_or_none(wrong_ca.port()) is None
        wrong_name = upstream_chain(h, pki, good, {"enabled": True, "ca": pki.ca,
                                                   "sni": "other.test"})
        assert name_or_none(wrong_name.port()) is None
        assert "upstream tls handshake failed" in wrong_name.stderr_text()


# ---- http listeners -----------------------------------------------------------

def https_listener(certs, **tls):
    t = {"certificates": [{"cert": c, "key": k} for c, k in certs], "handshake_timeout": "2s"}
    t.update(tls)
    return {"name": "web", "mode": "http", "routes": [{"path_prefix": "/", "service": "users"}],
            "tls": t}


def https_get(port, ctx, sni, path, headers=(), keep=False):
    s = tls_connect(port, ctx, sni)
    req = "GET %s HTTP/1.1\r\nHost: %s\r\n" % (path, sni) + "".join(
        "%s: %s\r\n" % kv for kv in headers) + ("" if keep else "Connection: close\r\n") + "\r\n"
    s.sendall(req.encode())
    from wglib import read_http_response
    r = read_http_response(s, timeout=10)
    if not keep:
        s.close()
        return r
    return r, s


def test_https_listener_alpn_forwarded_proto_keepalive():
    with Harness() as h:
        pki = shared()
        b = h.backend("http", name="a")
        listener = https_listener([pki.leaf("a", ["a.test"])])
        listener["http"] = {"protocols": ["http1"]}     # h2 is offered by default (test_http2)
        wg = h.waygate(listeners=[listener], instances={"users": [b.instance()]})
        ctx = client_context(ca=pki.ca)
        ctx.set_alpn_protocols(["h2", "http/1.1"])
        r, s = https_get(wg.port(), ctx, "a.test", "/request", keep=True)
        try:
            assert s.selected_alpn_protocol() == "http/1.1"
            assert r.status == 200
            assert b"x-forwarded-proto: https" in r.body.lower(), r.body
            from wglib import read_http_response
            s.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")   # same TLS connection
            assert read_http_response(s, timeout=10).body.strip() == b"a"
        finally:
            s.close()


def test_https_client_certificate_subject_and_forged_header_stripped():
    with Harness() as h:
        pki = shared()
        client = pki.leaf("client", cn="client-1", client=True)
        b = h.backend("http", name="a")
        wg = h.waygate(listeners=[https_listener([pki.leaf("a", ["a.test"])], client_ca=pki.ca,
                                                 verify="optional")],
                       instances={"users": [b.instance()]})
        forged = [("X-Client-Cert-Subject", "CN=admin"), ("X-Client-Cert-Verified", "yes")]
        with_cert = https_get(wg.port(), client_context(ca=pki.ca, cert=client[0], key=client[1]),
                              "a.test", "/request", forged)
        body = with_cert.body.lower()
        assert b"x-client-cert-subject: cn=client-1,o=waygate tests" in body, with_cert.body
        assert b"cn=admin" not in body and b"x-client-cert-verified" not in body, with_cert.body
        without = https_get(wg.port(), client_context(ca=pki.ca), "a.test", "/request", forged)
        body = without.body.lower()
        assert b"x-client-cert" not in body, without.body


def test_https_download_and_handshake_timeout():
    with Harness() as h:
        pki = shared()
        b = h.backend("http", name="a")
        wg = h.waygate(listeners=[https_listener([pki.leaf("a", ["a.test"])])],
                       instances={"users": [b.instance()]})
        n = 8 * MIB
        r = https_get(wg.port(), client_context(ca=pki.ca), "a.test", "/bytes?n=%d" % n)
        assert r.status == 200 and len(r.body) == n
        with connect(wg.port(), timeout=10) as s:     # never sends a ClientHello
            t0 = time.monotonic()
            s.settimeout(slack(10))
            assert s.recv(10) == b""
            assert time.monotonic() - t0 <= slack(4)


def test_http_upstream_tls_pooled_and_verified():
    """client -> waygate B (http, TLS to its upstream, keep-alive pool) ->
    waygate A (https listener) -> backend; wrong CA or name: 502."""
    with Harness() as h:
        pki = shared()
        b = h.backend("http", name="a")
        good = pki.leaf("up", ["up.test"], ips=["127.0.0.1"])
        front = h.waygate(listeners=[https_listener([good])], instances={"users": [b.instance()]})

        def back_with(tls):
            return h.waygate(listeners=[{"name": "web", "mode": "http",
                                         "routes": [{"path_prefix": "/", "service": "tlsup"}]}],
                             instances={"tlsup": [{"id": "front", "address": "127.0.0.1",
                                                   "port": front.port()}]},
                             services={"tlsup": {"tls": tls, "retries": 0,
                                                 "health_check": {"type": "none"}}})
        from wglib import http_request
        ok = back_with({"enabled": True, "ca": pki.ca, "sni": "up.test"})
        with connect(ok.port()) as s:
            from wglib import read_http_response
            for _ in range(3):          # keep-alive client, pooled TLS upstream
                s.sendall(b"GET /request HTTP/1.1\r\nHost: x\r\n\r\n")
                r = read_http_response(s, timeout=10)
                assert r.status == 200 and b"x-forwarded-proto: http" in r.body.lower(), r
        # front accepted the harness's readiness probe and ONE pooled TLS connection
        m = http_request(front.admin_port, path="/metrics").body.decode()
        accepted = [l for l in m.splitlines() if l.startswith("waygate_connections_accepted_total")]
        assert accepted and float(accepted[0].split()[-1]) <= 2, accepted
        by_ip = back_with({"enabled": True, "ca": pki.ca})
        assert http_request(by_ip.port(), path="/").status == 200
        wrong_ca = back_with({"enabled": True, "ca": shared("other").ca, "sni": "up.test"})
        assert http_request(wrong_ca.port(), path="/").status == 502
        wrong_name = back_with({"enabled": True, "ca": pki.ca, "sni": "nope.test"})
        assert http_request(wrong_name.port(), path="/").status == 502


def test_health_probes_over_tls():
    """http probes of a TLS service speak TLS and verify like traffic does."""
    with Harness() as h:
        pki = shared()
        b = h.backend("http", name="a")
        good = pki.leaf("up", ["up.test"], ips=["127.0.0.1"])
        front = h.waygate(listeners=[https_listener([good])], instances={"users": [b.instance()]})
        from wglib import http_request
        import json

        def back_with(ca):
            return h.waygate(listeners=[{"name": "web", "mode": "http",
                                         "routes": [{"path_prefix": "/", "service": "tlsup"}]}],
                             instances={"tlsup": [{"id": "front", "address": "127.0.0.1",
                                                   "port": front.port()}]},
                             services={"tlsup": {"tls": {"enabled": True, "ca": ca,
                                                         "sni": "up.test"},
                                                 "health_check": {"type": "http",
                                                                  "interval": "200ms"}}})

        def health(wg):
            st = json.loads(http_request(wg.admin_port, path="/status").body)
            return st["services"]["tlsup"]["instances"][0]["health"]
        ok = back_with(pki.ca)
        wait_until(lambda: health(ok) == "healthy", slack(5), "the TLS probe to pass")
        assert http_request(ok.port(), path="/").body.strip() == b"a"
        bad = back_with(shared("other").ca)
        wait_until(lambda: health(bad) == "unhealthy", slack(5), "the TLS probe to fail")


def test_bad_certificate_reload_keeps_the_old_one():
    with Harness() as h:
        pki = shared()
        good = pki.leaf("old", ["a.test"], cn="old")
        other = pki.leaf("b", ["b.test"])
        b = h.backend("name", name="a")
        wg = h.waygate(listeners=[tls_listener([good])], instances={"users": [b.instance()]})
        cfg = wg.config_dict()
        cfg["listeners"][0]["tls"]["certificates"] = [{"cert": good[0], "key": other[1]}]
        write_atomic(wg.config_path, yaml_block(cfg) + "\n")
        wg.proc.signal(signal.SIGHUP)
        wait_until(lambda: "reload refused" in wg.stderr_text(), slack(5), "the refusal")
        assert "does not match" in wg.stderr_text()
        with tls_connect(wg.port(), client_context(ca=pki.ca), "a.test") as s:
            assert peer_cn(s) == "old" and read_name(s) == "a"


def test_expired_certificate_is_a_warning_and_a_metric():
    with Harness() as h:
        pki = shared()
        expired = pki.leaf("expired", ["a.test"], cn="expired", days=0)
        time.sleep(1.1)                     # notAfter = notBefore = when it was made
        b = h.backend("name", name="a")
        wg = h.waygate(listeners=[tls_listener([expired])], instances={"users": [b.instance()]})
        assert "certificate expired" in wg.stderr_text()
        with tls_connect(wg.port(), client_context(), "a.test") as s:   # still served
            assert read_name(s) == "a"
        from wglib import http_request
        text = http_request(wg.admin_port, path="/metrics").body.decode()
        line = [l for l in text.splitlines() if l.startswith("waygate_tls_cert_not_after_seconds{")]
        assert line and float(line[0].split()[-1]) < time.time(), line
