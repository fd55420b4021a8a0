"""Gateway policies (docs/policies.md) end to end on HTTP/1.1: real keys and
tokens made by the openssl command, htpasswd files by htpasswd(1), curl and
wrk as clients, wg_backend's /request showing what reached the upstream."""

import base64
import json
import os
import re
import subprocess
import time

from wglib import (SANITIZED, BrowserPage, Harness, http_request, run_waygate, slack, tool,
                   wait_until)

from test_http import http_listener


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def rs256_token(h, key, claims, kid=None):
    """A JWT signed by `openssl dgst -sha256 -sign`."""
    hdr = {"alg": "RS256", "typ": "JWT"}
    if kid:
        hdr["kid"] = kid
    signing = "%s.%s" % (b64url(json.dumps(hdr).encode()), b64url(json.dumps(claims).encode()))
    sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", key], input=signing.encode(),
                         stdout=subprocess.PIPE, check=True).stdout
    return signing + "." + b64url(sig)


def rsa_key(h, name="rsa"):
    key, pub = h.path(name + ".key"), h.path(name + ".pub")
    subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                    "-out", key], check=True, stderr=subprocess.DEVNULL)
    subprocess.run(["openssl", "pkey", "-in", key, "-pubout", "-out", pub], check=True)
    return key, pub


def curl(port, path="/", *args):
    """(status, {lower-case header: value}, body) of one curl request."""
    out = subprocess.run(["curl", "-s", "-i", "--max-time", "10", *args,
                          "http://127.0.0.1:%d%s" % (port, path)],
                         stdout=subprocess.PIPE, check=True).stdout.decode(errors="replace")
    head, _, body = out.partition("\r\n\r\n")
    lines = head.split("\r\n")
    status = int(lines[0].split()[1])
    hdrs = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        hdrs.setdefault(k.strip().lower(), v.strip())
    return status, hdrs, body


def start(h, policies, listener_policies=None, path_prefix="/", workers=1, services=None):
    b = h.backend("http", name="b0")
    route = {"path_prefix": path_prefix, "service": "users", "policies": policies}
    lst = http_listener([route])
    if listener_policies:
        lst["policies"] = listener_policies
    wg = h.waygate(listeners=[lst], instances={"users": [b.instance()]}, workers=workers,
                   services=services)
    return wg, b


def metric(wg, name):
    r = http_request(wg.admin_port, path="/metrics")
    m = re.search(r"^%s (\d+)$" % re.escape(name), r.body.decode(), re.M)
    return int(m.group(1)) if m else None


def test_jwt_headers_rewrite_trace():
    with Harness() as h:
        key, pub = rsa_key(h)
        now = int(time.time())
        policies = [
            {"trace": {"generate": True}},
            {"jwt": {"keys": pub, "issuer": "https://id.test", "audience": "api",
                     "forward_claims": {"sub": "X-User"}}},
            {"headers": {"request": {"set": {"X-Gw": "sub=$jwt.sub ip=$client_ip"},
                                     "remove": ["X-Debug"]},
                         "response": {"set": {"X-Frame-Options": "DENY"}, "remove": ["X-Backend"]}}},
            {"rewrite": {"regex": "^/api/(.*)$", "replace": "/$1"}},
        ]
        wg, b = start(h, policies, path_prefix="/api/")
        port = wg.port("web")
        st, hd, _ = curl(port, "/api/request")
        assert st == 401 and hd.get("www-authenticate") == 'Bearer realm="waygate"', (st, hd)
        good = rs256_token(h, key, {"sub": "alice", "iss": "https://id.test", "aud": "api",
                                    "exp": now + 300})
        st, hd, body = curl(port, "/api/request?x=1", "-H", "Authorization: Bearer " + good,
                            "-H", "X-User: root", "-H", "X-Debug: 1")
        assert st == 200, (st, hd, body)
        assert body.startswith("GET /request?x=1 HTTP/1.1\r\n"), body     # rewritten, query kept
        assert "\r\nX-User: alice\r\n" in body and "root" not in body, body
        assert "\r\nX-Gw: sub=alice ip=127.0.0.1\r\n" in body, body
        assert "X-Debug" not in body, body
        tp = re.search(r"\r\ntraceparent: 00-([0-9a-f]{32})-[0-9a-f]{16}-01\r\n", body)
        assert tp, body
        assert hd.get("x-frame-options") == "DENY" and "x-backend" not in hd, hd
        expired = rs256_token(h, key, {"sub": "alice", "iss": "https://id.test", "aud": "api",
                                       "exp": now - 100})
        st, hd, _ = curl(port, "/api/", "-H", "Authorization: Bearer " + expired)
        assert st == 401 and 'error_description="token expired"' in hd["www-authenticate"], hd
        other_key, _ = rsa_key(h, "other")
        forged = rs256_token(h, other_key, {"sub": "alice", "iss": "https://id.test", "aud": "api",
                                            "exp": now + 300})
        st, _, _ = curl(port, "/api/", "-H", "Authorization: Bearer " + forged)
        assert st == 401
        wrong_aud = rs256_token(h, key, {"sub": "a", "iss": "https://id.test", "aud": "web",
                                         "exp": now + 300})
        st, _, _ = curl(port, "/api/", "-H", "Authorization: Bearer " + wrong_aud)
        assert st == 401
        assert metric(wg, "waygate_policy_denied_total") == 4
        served = json.loads(http_request(b.port, path="/stats").body)["served"]
        assert served == 1, served                  # the refused ones never reached it


def test_api_key_and_basic_auth():
    with Harness() as h:
        keys = h.path("keys")
        with open(keys, "w") as f:
            f.write("# consumers\nalice: k-alice\n")
        ht = h.path("htpasswd")
        subprocess.run(["htpasswd", "-cbB", ht, "bob", "pw-bob"], check=True,
                       stderr=subprocess.DEVNULL)
        b = h.backend("http", name="b0")
        routes = [{"path_prefix": "/key/", "service": "users", "strip_prefix": True,
                   "policies": [{"api_key": {"keys": keys}}]},
                  {"path_prefix": "/basic/", "service": "users", "strip_prefix": True,
                   "policies": [{"basic_auth": {"htpasswd": ht, "realm": "api"}}]}]
        wg = h.waygate(listeners=[http_listener(routes)], instances={"users": [b.instance()]},
                       workers=1)
        port = wg.port("web")
        st, hd, _ = curl(port, "/key/request")
        assert st == 401 and hd["www-authenticate"] == 'ApiKey header="X-API-Key"', (st, hd)
        st, _, _ = curl(port, "/key/request", "-H", "X-API-Key: k-alicE")
        assert st == 401
        st, _, body = curl(port, "/key/request", "-H", "X-API-Key: k-alice",
                           "-H", "X-Consumer: mallory")
        assert st == 200 and "\r\nX-Consumer: alice\r\n" in body, body
        assert "k-alice" not in body and "mallory" not in body, body
        st, hd, _ = curl(port, "/basic/request")
        assert st == 401 and hd["www-authenticate"].startswith('Basic realm="api"'), hd
        st, _, _ = curl(port, "/basic/request", "-u", "bob:wrong")
        assert st == 401
        for _ in range(2):                          # the second one from the worker's cache
            st, _, body = curl(port, "/basic/request", "-u", "bob:pw-bob")
            assert st == 200 and "\r\nX-Consumer: bob\r\n" in body, body
            assert "Authorization" not in body, body


def test_cors_preflight_and_actual_request():
    with Harness() as h:
        cors = {"cors": {"origins": ["https://app.test", "*.corp.test"], "methods": ["GET", "PUT"],
                         "headers": ["Authorization"], "credentials": True, "max_age": "10m"}}
        wg, b = start(h, [], listener_policies=[cors])
        port = wg.port("web")
        st, hd, body = curl(port, "/x", "-X", "OPTIONS", "-H", "Origin: https://app.test",
                            "-H", "Access-Control-Request-Method: PUT",
                            "-H", "Access-Control-Request-Headers: authorization")
        assert st == 204 and body == "", (st, hd, body)
        assert hd["access-control-allow-origin"] == "https://app.test", hd
        assert hd["access-control-allow-methods"] == "GET, PUT", hd
        assert hd["access-control-allow-credentials"] == "true", hd
        assert hd["access-control-max-age"] == "600" and hd["vary"] == "Origin", hd
        assert "content-length" not in hd, hd
        st, _, _ = curl(port, "/x", "-X", "OPTIONS", "-H", "Origin: https://evil.test",
                        "-H", "Access-Control-Request-Method: GET")
        assert st == 403
        st, hd, body = curl(port, "/", "-H", "Origin: https://a.corp.test")
        assert st == 200 and body == "b0", (st, body)
        assert hd["access-control-allow-origin"] == "https://a.corp.test", hd
        assert hd["vary"] == "Origin", hd
        # keep-alive carries on after a preflight answered by waygate
        out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{num_connects}\n",
                              "-X", "OPTIONS", "-H", "Origin: https://app.test",
                              "-H", "Access-Control-Request-Method: GET",
                              "http://127.0.0.1:%d/a" % port, "-X", "OPTIONS",
                              "http://127.0.0.1:%d/b" % port],
                             stdout=subprocess.PIPE, check=True).stdout.decode().split("\n")
        assert out[0] == "204 1" and out[1] == "204 0", out


def test_rate_limit_429_headers_and_wrk_rate():
    with Harness() as h:
        rate, burst = 200, 20
        wg, b = start(h, [{"rate_limit": {"rate": "%d/s" % rate, "burst": burst, "key": "route"}}],
                      workers=2)
        port = wg.port("web")
        st, hd, _ = curl(port, "/")
        assert st == 200 and hd["ratelimit-limit"] == str(burst), hd
        assert int(hd["ratelimit-remaining"]) == burst - 1, hd
        seconds = 4
        out = subprocess.run(["wrk", "-t2", "-c8", "-d%ds" % seconds, "--latency",
                              "http://127.0.0.1:%d/" % port],
                             stdout=subprocess.PIPE, check=True, timeout=seconds + 30).stdout.decode()
        total = int(re.search(r"(\d+) requests in ([\d.]+)s", out).group(1))
        took = float(re.search(r"(\d+) requests in ([\d.]+)s", out).group(2))
        m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        refused = int(m.group(1)) if m else 0
        allowed = total - refused
        expect = rate * took + burst
        assert refused > 0, out
        assert abs(allowed - expect) <= 0.05 * expect, (allowed, expect, out)
        counted = metric(wg, "waygate_policy_rate_limited_total")
        # wrk does not count the answers still in flight when it stops (one per connection)
        assert refused <= counted <= refused + 8, (counted, refused)
        st, hd, body = curl(port, "/")
        if st == 429:
            assert hd["retry-after"] in ("0", "1") and hd["ratelimit-remaining"] == "0", hd
            assert body == "rate limit exceeded\n", body


def test_config_errors_positioned():
    with Harness() as h:
        cfg = h.path("bad.yaml")
        with open(cfg, "w") as f:
            f.write("listeners:\n  - name: w\n    listen: 127.0.0.1:1\n    mode: http\n"
                    "    routes:\n      - path_prefix: /\n        service: a\n"
                    "        policies:\n          - rate_limit: { rate: 10/s, scope: fleets }\n"
                    "          - jwtt: {}\n")
        rc, _, err = run_waygate("-t", "-c", cfg)
        assert rc == 1, err
        assert "%s:9:46: scope: expected process or fleet, got 'fleets'" % cfg in err, err
        assert "%s:10:13: unknown policy 'jwtt' (did you mean 'jwt'?)" % cfg in err, err


def test_traffic_split_ratio_and_sticky():
    with Harness() as h:
        b0, b1 = h.backend("http", name="b0"), h.backend("http", name="b1")
        routes = [{"path_prefix": "/sticky", "sticky": "cookie:uid",
                   "backends": [{"service": "web", "weight": 50}, {"service": "web2", "weight": 50}]},
                  {"path_prefix": "/", "backends": [{"service": "web", "weight": 80},
                                                    {"service": "web2", "weight": 20}]}]
        wg = h.waygate(listeners=[http_listener(routes)], workers=2,
                       instances={"web": [b0.instance()], "web2": [b1.instance()]})
        port = wg.port("web")
        for uid in ("u1", "u2", "u3", "u4", "u5", "u6"):
            seen = {curl(port, "/sticky", "-b", "uid=" + uid)[2] for _ in range(5)}
            assert len(seen) == 1, (uid, seen)
        names = {curl(port, "/sticky", "-b", "uid=x%d" % k)[2] for k in range(40)}
        assert names == {"b0", "b1"}, names
        before = [json.loads(http_request(b.port, path="/stats").body)["served"] for b in (b0, b1)]
        subprocess.run(["wrk", "-t2", "-c4", "-d3s", "http://127.0.0.1:%d/" % port],
                       stdout=subprocess.DEVNULL, check=True, timeout=60)
        after = [json.loads(http_request(b.port, path="/stats").body)["served"] for b in (b0, b1)]
        n0, n1 = after[0] - before[0], after[1] - before[1]
        assert n0 + n1 >= 10000 or SANITIZED, (n0, n1)
        share = n1 / (n0 + n1)
        assert abs(share - 0.20) <= 0.02, (n0, n1, share)


def test_trace_id_in_access_log_and_our_5xx():
    with Harness() as h:
        log = h.path("access.log")
        dead = h.backend("http", name="dead")
        inst = dead.instance()
        dead.stop()                                 # its port now refuses: 502 after retries
        routes = [{"path_prefix": "/", "service": "users",
                   "policies": [{"trace": {"generate": True}}]}]
        wg = h.waygate(listeners=[http_listener(routes)], instances={"users": [inst]}, workers=1,
                       log={"level": "info", "access_log": log, "access_format": "json"})
        tid = "4bf92f3577b34da6a3ce929d0e0e4736"
        st, _, body = curl(wg.port("web"), "/", "-H",
                           "traceparent: 00-%s-00f067aa0ba902b7-01" % tid)
        assert st == 502 and body.endswith("trace_id=%s\n" % tid), (st, body)

        def logged():
            if not os.path.exists(log):
                return None
            lines = [json.loads(x) for x in open(log).read().splitlines() if x.strip()]
            return lines or None
        lines = wait_until(logged, slack(5), "the access line")
        assert lines[-1]["trace_id"] == tid and lines[-1]["status"] == 502, lines


def test_htpasswd_change_reloads_without_sighup():
    with Harness() as h:
        ht = h.path("htpasswd")
        subprocess.run(["htpasswd", "-cbB", ht, "bob", "pw-bob"], check=True,
                       stderr=subprocess.DEVNULL)
        wg, b = start(h, [{"basic_auth": {"htpasswd": ht}}])
        port = wg.port("web")
        assert curl(port, "/", "-u", "carol:pw-c")[0] == 401
        subprocess.run(["htpasswd", "-bB", ht, "carol", "pw-c"], check=True,
                       stderr=subprocess.DEVNULL)
        wait_until(lambda: curl(port, "/", "-u", "carol:pw-c")[0] == 200, slack(5),
                   "carol accepted after the htpasswd change")
        assert curl(port, "/", "-u", "bob:pw-bob")[0] == 200
        with open(ht, "w") as f:
            f.write("bob:plaintext\n")              # refused: the old users keep working
        wait_until(lambda: "reload refused" in wg.stderr_text(), slack(5), "the refusal logged")
        assert curl(port, "/", "-u", "carol:pw-c")[0] == 200


def test_mirror_copies_never_delay_and_are_bounded():
    import socket
    with Harness() as h:
        main, shadow = h.backend("http", name="main"), h.backend("http", name="shadow")
        hole = socket.socket()                      # accepts (backlog), never answers
        hole.bind(("127.0.0.1", 0))
        hole.listen(64)
        routes = [{"path_prefix": "/hole/", "service": "users", "strip_prefix": True,
                   "policies": [{"mirror": {"service": "hole", "max_in_flight": 2,
                                            "timeout": "5s"}}]},
                  {"path_prefix": "/", "service": "users",
                   "policies": [{"mirror": {"service": "shadow", "percent": 100}}]}]
        wg = h.waygate(listeners=[http_listener(routes)], workers=1,
                       instances={"users": [main.instance()], "shadow": [shadow.instance()],
                                  "hole": [{"id": "h", "address": "127.0.0.1",
                                            "port": hole.getsockname()[1]}]})
        port = wg.port("web")
        for k in range(10):
            assert curl(port, "/x%d" % k)[2] == "main"
        st, _, _ = curl(port, "/echo", "-d", "body")   # a body: copied too (test_mirror.py)
        assert st == 200
        wait_until(lambda: json.loads(http_request(shadow.port, path="/stats").body)["served"] == 11,
                   slack(5), "11 copies at the shadow")
        start = time.monotonic()
        for k in range(5):
            assert curl(port, "/hole/") [2] == "main"
        assert time.monotonic() - start < slack(3), "a copy delayed the real request"
        assert metric(wg, "waygate_mirror_sent_total") == 13
        assert metric(wg, "waygate_mirror_skipped_total") == 3
        hole.close()


def jwk_of(pub):
    """The RSA JWK of a PEM public key (n, e from `openssl rsa -pubin -text`)."""
    out = subprocess.run(["openssl", "rsa", "-pubin", "-in", pub, "-noout", "-modulus"],
                         stdout=subprocess.PIPE, check=True).stdout.decode()
    n = bytes.fromhex(out.strip().split("=", 1)[1])
    return {"kty": "RSA", "n": b64url(n), "e": b64url(b"\x01\x00\x01")}


def test_jwks_url_fetched_and_rotated():
    import http.server
    import ssl
    import threading
    with Harness() as h:
        crt, keyf = h.path("tls.crt"), h.path("tls.key")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                        "-keyout", keyf, "-out", crt], check=True, capture_output=True)
        ka, pa = rsa_key(h, "a")
        kb, pb = rsa_key(h, "b")
        state = {"keys": [dict(jwk_of(pa), kid="a1")], "fetches": 0}

        class Jwks(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                state["fetches"] += 1
                body = json.dumps({"keys": state["keys"]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Jwks)
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(crt, keyf)
        srv.socket = tls.wrap_socket(srv.socket, server_side=True)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        try:
            url = "https://127.0.0.1:%d/jwks" % srv.server_address[1]
            wg, b = start(h, [{"jwt": {"keys": url, "keys_ca": crt, "refresh": "1h"}}])
            port = wg.port("web")
            now = int(time.time())
            ta = rs256_token(h, ka, {"sub": "a", "exp": now + 300}, kid="a1")
            wait_until(lambda: curl(port, "/", "-H", "Authorization: Bearer " + ta)[0] == 200,
                       slack(10), "the first JWKS fetch")
            # rotation: the server now has only b1; a token with kid b1 makes waygate refetch
            state["keys"] = [dict(jwk_of(pb), kid="b1")]
            tb = rs256_token(h, kb, {"sub": "b", "exp": now + 300}, kid="b1")
            fetches = state["fetches"]
            wait_until(lambda: curl(port, "/", "-H", "Authorization: Bearer " + tb)[0] == 200,
                       slack(15), "the refetch on an unknown kid")
            assert state["fetches"] >= fetches + 1
            assert curl(port, "/", "-H", "Authorization: Bearer " + ta)[0] == 401   # a1 is gone
        finally:
            srv.shutdown()
            srv.server_close()


def test_policies_on_http2_and_grpc_status():
    from grpclib import grpc_call, need_grpcio
    from h2lib import Client, h2c_listener
    with Harness() as h:
        key, pub = rsa_key(h)
        b = h.backend("http", name="b0")
        lst = h2c_listener()
        lst["routes"] = [
            {"path_prefix": "/", "service": "users", "policies": [
                {"cors": {"origins": ["https://app.test"], "methods": ["GET", "PUT"]}},
                {"jwt": {"keys": pub, "forward_claims": {"sub": "X-User"}}},
                {"rate_limit": {"rate": "1000/s", "burst": 100}},
                {"headers": {"response": {"remove": ["X-Backend"], "set": {"X-Policy": "h2"}}}}]}]
        wg = h.waygate(listeners=[lst], instances={"users": [b.instance()]}, workers=1)
        port = wg.port("h2")
        c = Client(port)
        try:
            r = c.get("/request")
            hd = dict(r["headers"])
            assert r["status"] == 401 and hd.get("www-authenticate") == 'Bearer realm="waygate"', r
            tok = rs256_token(h, key, {"sub": "h2-user", "exp": int(time.time()) + 300})
            r = c.get("/request", headers=[("authorization", "Bearer " + tok), ("x-user", "root")])
            hd = dict(r["headers"])
            assert r["status"] == 200, r
            assert b"\r\nX-User: h2-user\r\n" in bytes(r["body"]) and b"root" not in bytes(r["body"])
            assert hd["x-policy"] == "h2" and "x-backend" not in hd, hd
            assert hd["ratelimit-limit"] == "100" and "ratelimit-remaining" in hd, hd
            r = c.get("/x", method="OPTIONS", headers=[("origin", "https://app.test"),
                                                        ("access-control-request-method", "PUT")])
            hd = dict(r["headers"])
            assert r["status"] == 204 and hd["access-control-allow-origin"] == "https://app.test", r
            assert "content-length" not in hd, hd
        finally:
            c.close()
        # a gRPC call refused by the jwt policy: Trailers-Only, UNAUTHENTICATED
        if need_grpcio():
            res = grpc_call("127.0.0.1:%d" % port, "unary", "/pkg.Svc/Method", 0)
            assert res["code"] == "UNAUTHENTICATED", res


def test_api_key_and_cors_over_tls_h2_alpn():
    """The same hooks behind the TLS listener's HTTP/2 (ALPN h2): an api_key
    refusal with its challenge, a consumer forwarded, a CORS preflight
    answered and an actual request's CORS fields, all on one connection."""
    from h2lib import Client
    from tlslib import client_context, shared
    with Harness() as h:
        pki = shared()
        crt, key = pki.leaf("a", ["a.test"])
        keys = h.path("keys")
        with open(keys, "w") as f:
            f.write("alice: k-alice\n")
        b = h.backend("http", name="b0")
        lst = {"name": "tls", "mode": "http", "tls": {"certificates": [{"cert": crt, "key": key}]},
               "routes": [{"path_prefix": "/", "service": "users", "policies": [
                   {"cors": {"origins": ["https://app.test"], "methods": ["GET", "PUT"]}},
                   {"api_key": {"keys": keys}}]}]}
        wg = h.waygate(listeners=[lst], instances={"users": [b.instance()]}, workers=1)
        ctx = client_context(pki.ca)
        ctx.set_alpn_protocols(["h2"])
        c = Client(wg.port("tls"), ctx=ctx, server_hostname="a.test")
        try:
            assert c.sock.selected_alpn_protocol() == "h2"
            r = c.get("/request")
            hd = dict(r["headers"])
            assert r["status"] == 401 and hd["www-authenticate"] == 'ApiKey header="X-API-Key"', r
            r = c.get("/request", headers=[("x-api-key", "k-alice"), ("origin", "https://app.test")])
            hd, body = dict(r["headers"]), bytes(r["body"])
            assert r["status"] == 200 and b"\r\nX-Consumer: alice\r\n" in body, r
            assert b"X-Forwarded-Proto: https" in body and b"k-alice" not in body, body
            assert hd["access-control-allow-origin"] == "https://app.test", hd
            assert hd["vary"] == "Origin", hd
            r = c.get("/x", method="OPTIONS", headers=[("origin", "https://app.test"),
                                                        ("access-control-request-method", "PUT")])
            hd = dict(r["headers"])
            assert r["status"] == 204 and hd["access-control-allow-methods"] == "GET, PUT", r
        finally:
            c.close()


def test_rate_limit_scope_fleet_divides_by_live_replicas():
    from etcdlib import EtcdHarness
    replicas = 3
    with EtcdHarness() as h:
        etcd = h.etcd()
        b = h.backend("http", name="b0")
        etcd.client().put("/services/users/b0", json.dumps({"address": "127.0.0.1", "port": b.port}))
        rate, burst = 600, 60
        lst = http_listener([{"path_prefix": "/", "service": "users", "policies": [
            {"rate_limit": {"rate": "%d/s" % rate, "burst": burst, "key": "route",
                            "scope": "fleet"}}]}])
        wgs = [h.waygate_etcd(etcd, listeners=[lst], workers=1,
                              fleet={"name": "r%d" % k, "ttl": "3s"}) for k in range(replicas)]
        for wg in wgs:
            wait_until(lambda: (wg.status().get("fleet") or {}).get("live") == replicas, slack(10),
                       "all replicas live")
        for wg in wgs:
            st, hd, _ = curl(wg.port("web"), "/")
            assert st == 200 and hd["ratelimit-limit"] == str(burst // replicas), hd
        port = wgs[0].port("web")
        seconds = 4
        out = subprocess.run(["wrk", "-t2", "-c8", "-d%ds" % seconds, "http://127.0.0.1:%d/" % port],
                             stdout=subprocess.PIPE, check=True, timeout=seconds + 30).stdout.decode()
        m = re.search(r"(\d+) requests in ([\d.]+)s", out)
        total, took = int(m.group(1)), float(m.group(2))
        nm = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        allowed = total - (int(nm.group(1)) if nm else 0)
        expect = rate / replicas * took + burst / replicas     # this replica's third
        assert abs(allowed - expect) <= 0.05 * expect, (allowed, expect, out)
        wgs[2].proc.stop(timeout=10)                   # one leaves: the others take its share
        wait_until(lambda: (wgs[0].status().get("fleet") or {}).get("live") == replicas - 1,
                   slack(10), "the replica gone from the fleet")
        wait_until(lambda: curl(port, "/")[1].get("ratelimit-limit") == str(burst // (replicas - 1)),
                   slack(5), "the limit re-divided")


def test_api_key_consumers_from_the_etcd_registry():
    import hashlib
    from etcdlib import EtcdHarness
    with EtcdHarness() as h:
        etcd = h.etcd()
        c = etcd.client()
        b = h.backend("http", name="b0")
        c.put("/services/users/b0", json.dumps({"address": "127.0.0.1", "port": b.port}))
        lst = http_listener([{"path_prefix": "/", "service": "users",
                              "policies": [{"api_key": {"registry": True}}]}])
        wg = h.waygate_etcd(etcd, listeners=[lst], workers=2)
        port = wg.port("web")
        st, _, _ = curl(port, "/request", "-H", "X-API-Key: k-dave")
        assert st == 401
        c.put("/waygate/consumers/dave", json.dumps({"key": "k-dave"}))
        c.put("/waygate/consumers/erin", json.dumps(
            {"key_sha256": hashlib.sha256(b"k-erin").hexdigest()}))
        c.put("/waygate/consumers/bad", "not json")
        wait_until(lambda: curl(port, "/request", "-H", "X-API-Key: k-dave")[0] == 200, slack(10),
                   "a consumer put in etcd is accepted")
        st, _, body = curl(port, "/request", "-H", "X-API-Key: k-dave")
        assert st == 200 and "\r\nX-Consumer: dave\r\n" in body and "k-dave" not in body, body
        wait_until(lambda: curl(port, "/request", "-H", "X-API-Key: k-erin")[0] == 200, slack(10),
                   "a consumer given by its key's SHA-256")
        assert curl(port, "/request", "-H", "X-API-Key: not json")[0] == 401
        c.delete("/waygate/consumers/dave")
        wait_until(lambda: curl(port, "/request", "-H", "X-API-Key: k-dave")[0] == 401, slack(10),
                   "a consumer deleted from etcd is refused")
        assert curl(port, "/request", "-H", "X-API-Key: k-erin")[0] == 200


def test_cors_preflight_from_headless_chromium():
    """A page on one origin (wglib.BrowserPage) PUTs with a custom header (a
    preflighted request) to waygate on 127.0.0.1:P2; the page writes what
    fetch() saw into the DOM, read with --dump-dom."""
    with Harness() as h, BrowserPage() as page:
        if not page.chromium:
            print("chromium not installed: CORS-from-a-browser check skipped")
            return
        origin = page.origin
        b = h.backend("http", name="b0")
        allow = {"cors": {"origins": [origin], "methods": ["PUT"], "headers": ["X-Custom"]}}
        other = {"cors": {"origins": ["http://elsewhere.test"], "methods": ["PUT"],
                          "headers": ["X-Custom"]}}
        routes = [{"path_prefix": "/ok/", "service": "users", "strip_prefix": True,
                   "policies": [allow]},
                  {"path_prefix": "/no/", "service": "users", "strip_prefix": True,
                   "policies": [other]}]
        wg = h.waygate(listeners=[http_listener(routes)], instances={"users": [b.instance()]},
                       workers=1)
        api = "http://127.0.0.1:%d" % wg.port("web")
        dom = page.dom(h, """<!doctype html><html><body><pre id="out">pending</pre><script>
async function call(path) {
  try {
    const r = await fetch("%s" + path, {method: "PUT", headers: {"X-Custom": "1"}, body: "x"});
    return path + "=" + r.status + ":" + (await r.text());
  } catch (e) { return path + "=blocked"; }
}
(async () => {
  document.getElementById("out").textContent =
    "result " + (await call("/ok/")) + " " + (await call("/no/"));
})();
</script></body></html>""" % api)
        m = re.search(r'<pre id="out">result (\S+) (\S+)</pre>', dom)
        assert m, (dom[-2000:], page.stderr[-2000:])
        assert m.group(1) == "/ok/=200:b0", dom
        assert m.group(2) == "/no/=blocked", dom


def test_header_policy_values_hold_no_control_characters():
    """A headers policy value with a control character but HTAB (or DEL) is
    a config error, as CR and LF always were (`waygate -t`): no such byte
    can reach an upstream head, HTTP/1.1 or HTTP/2 (whose split of the head
    waygate built refuses it as the parser would). HTAB and non-ASCII bytes
    are field-value bytes: they reach an http1 instance and a gRPC call
    through an h2c one goes on."""
    from grpclib import GrpcServer, grpc_call, need_grpcio
    from h2lib import h2c_listener
    with Harness() as h:
        reg = h.path("instances.yaml")
        with open(reg, "w") as f:
            f.write("users:\n  - { id: u1, address: 127.0.0.1, port: 9001 }\n")
        for value in (r"a\x01b", r"$client_ip\x1b", r"a\x7fb"):
            path = h.path("bad.yaml")
            with open(path, "w") as f:
                f.write("registry: { file: %s }\nlisteners:\n"
                        "  - name: web\n    listen: 127.0.0.1:17002\n    mode: http\n"
                        "    routes:\n      - path_prefix: /\n        service: users\n"
                        "        policies: [ { headers: { request: { set: { X-A: \"%s\" } } } } ]\n"
                        % (reg, value))
            rc, _, err = run_waygate("-t", "-c", path)
            assert rc != 0 and "control characters are not allowed in a header value" in err, \
                (value, rc, err)
        b = h.backend("http", name="b0")
        pol = [{"headers": {"request": {"set": {"X-A": "a\tb \xe9"}}}}]
        listeners = [http_listener([{"path_prefix": "/", "service": "users", "policies": pol}])]
        instances = {"users": [b.instance()]}
        services = {}
        grpc = need_grpcio()
        if grpc:
            g = GrpcServer(h, "g1")
            listeners.append(dict(h2c_listener("g"), routes=[
                {"path_prefix": "/", "service": "gs", "policies": pol}]))
            instances["gs"] = [g.instance()]
            services["gs"] = {"upstream": {"protocol": "h2c"}}
        wg = h.waygate(listeners=listeners, instances=instances, services=services)
        st, _, body = curl(wg.port("web"), "/request")
        assert st == 200 and "\r\nX-A: a\tb \xe9\r\n" in body, (st, body)
        if grpc:
            r = grpc_call("127.0.0.1:%d" % wg.ports["g"], "unary", "/wg.Echo/One", 8)
            assert r["code"] == "OK", r
