"""The forward_auth policy (docs/policies.md) end to end: a real auth service
(auth_server.py, its own process, deciding by Authorization) asked by
waygate through its own upstream code, on HTTP/1.1, h2c, h2 over TLS (ALPN)
and gRPC; balanced over the auth service's healthy instances, pooled, with
its timeout and both failure modes."""

import json
import os
import re
import socket
import subprocess
import time

from wglib import Harness, free_port, http_request, slack, wait_until

from test_health import probes, wait_health
from test_http import http_listener
from test_policies import curl, metric

HERE = os.path.dirname(os.path.abspath(__file__))


class AuthServer:
    def __init__(self, h, name, health=200):
        argv = ["python3", os.path.join(HERE, "auth_server.py"), name, "--health-status", str(health)]
        self.proc = h.start("auth-" + name, argv, pipe_stdout=True)
        m = re.fullmatch(r"ready (\d+)", self.proc.read_line(timeout=10))
        assert m, "auth_server did not start"
        self.name, self.port = name, int(m.group(1))

    def instance(self):
        return {"id": self.name, "address": "127.0.0.1", "port": self.port}

    def stats(self):
        return json.loads(http_request(self.port, path="/stats").body)

    def last(self):
        """The last auth request's head, lines ending in "\n"."""
        return http_request(self.port, path="/last").body.decode().replace("\r\n", "\n")


def fa(service="auth", **kw):
    d = {"service": service, "copy_headers": ["X-User", "X-Auth-Instance"]}
    d.update(kw)
    return {"forward_auth": d}


def auth_waygate(h, auth_instances, listeners=None, routes=None, services=None, **kw):
    b = h.backend("http", name="b0")
    routes = routes or [{"path_prefix": "/", "service": "users", "policies": [fa()]}]
    svcs = {"auth": {"connect_timeout": "1s"}, "down": {"retries": 1}}
    svcs.update(services or {})
    wg = h.waygate(listeners=listeners or [http_listener(routes)],
                   instances={"users": [b.instance()], "auth": auth_instances,
                              "down": [{"id": "d", "address": "127.0.0.1", "port": free_port()}]},
                   services=svcs, workers=1, **kw)
    return wg, b


def bearer(v):
    return ["-H", "Authorization: Bearer " + v]


def test_forward_auth_http1_verdicts_headers_body_and_pool():
    with Harness() as h:
        a = AuthServer(h, "a1")
        wg, b = auth_waygate(h, [a.instance()])
        port = wg.port("web")
        st, hd, body = curl(port, "/request")
        assert st == 401 and hd["www-authenticate"] == 'Bearer realm="auth"', (st, hd)
        assert body == "login first\n", body           # the auth service's own body
        st, hd, body = curl(port, "/request", *bearer("deny"))
        assert st == 403 and hd["x-reason"] == "policy" and body == "denied by a1\n", (st, hd, body)
        st, hd, body = curl(port, "/request?q=1", *bearer("allow:alice"), "-H", "X-User: root",
                            "-H", "Cookie: s=1", "-H", "X-Private: no")
        assert st == 200, (st, hd, body)
        assert "\r\nX-User: alice\r\n" in body and "root" not in body, body     # copied, not forged
        assert "\r\nX-Auth-Instance: a1\r\n" in body, body
        asked = a.last()
        assert asked.startswith("GET /request?q=1 HTTP/1.1\n"), asked
        for field in ("Authorization: Bearer allow:alice", "Cookie: s=1", "X-Forwarded-Method: GET",
                      "X-Forwarded-Uri: /request?q=1", "X-Forwarded-Proto: http"):
            assert "\n%s\n" % field in asked, (field, asked)
        assert "X-Private" not in asked and "X-User" not in asked, asked
        # a body waits (unread) while the auth service decides, then goes whole
        data = "x" * 200000
        with open(h.path("body"), "w") as f:
            f.write(data)
        st, _, body = curl(port, "/echo", *bearer("allow:bob"), "--data-binary", "@" + h.path("body"))
        assert st == 200 and body == data, (st, len(body))
        st, _, body = curl(port, "/echo", *bearer("deny"), "--data-binary", "@" + h.path("body"))
        assert st == 403 and body == "denied by a1\n", (st, body)
        for _ in range(5):
            assert curl(port, "/", *bearer("allow:c"))[0] == 200
        s = a.stats()
        assert s["requests"] == 10 and s["connections"] < s["requests"], s    # pooled
        assert metric(wg, "waygate_policy_denied_total") == 3
        served = json.loads(http_request(b.port, path="/stats").body)["served"]
        assert served == 7, served                      # the refused ones never reached it


def test_forward_auth_balanced_to_healthy_timeout_and_failure_modes():
    with Harness() as h:
        good, sick = AuthServer(h, "good"), AuthServer(h, "sick", health=503)
        routes = [
            {"path_prefix": "/slow/", "service": "users",
             "policies": [fa(timeout="300ms")]},
            {"path_prefix": "/slowopen/", "service": "users",
             "policies": [fa(timeout="300ms", failure_mode="allow")]},
            {"path_prefix": "/open/", "service": "users",
             "policies": [fa("down", failure_mode="allow")]},
            {"path_prefix": "/closed/", "service": "users", "policies": [fa("down")]},
            {"path_prefix": "/big/", "service": "users", "policies": [fa(max_response_size="1k")]},
            {"path_prefix": "/", "service": "users", "policies": [fa()]},
        ]
        wg, _ = auth_waygate(h, [good.instance(), sick.instance()], routes=routes,
                             services={"auth": probes("http", path="/health"),
                                       "down": {"retries": 1}})
        wait_health(wg, "auth", "sick", "unhealthy", slack(5))
        wait_health(wg, "auth", "good", "healthy", slack(5))
        port = wg.port("web")
        seen = set()
        for _ in range(12):
            st, _, body = curl(port, "/request", *bearer("allow:u"))
            assert st == 200, (st, body)
            seen.add(re.search(r"\r\nX-Auth-Instance: (\w+)\r\n", body).group(1))
        assert seen == {"good"}, seen
        assert sick.stats()["requests"] == 0
        t0 = time.monotonic()
        st, _, body = curl(port, "/slow/request", *bearer("slow"))
        took = time.monotonic() - t0
        assert st == 500 and "authorization service unavailable" in body, (st, body)
        assert took < 4, took                           # 300ms, not the auth service's 5 s
        t0 = time.monotonic()                           # the timer lets it through
        st, _, body = curl(port, "/slowopen/request", *bearer("slow"), "-H", "X-User: root")
        assert st == 200 and "root" not in body and time.monotonic() - t0 < 4, (st, body)
        st, _, body = curl(port, "/closed/request", *bearer("allow:u"))
        assert st == 500, (st, body)
        st, _, body = curl(port, "/open/request", *bearer("allow:u"), "-H", "X-User: root")
        assert st == 200 and "root" not in body and "X-User" not in body, (st, body)
        st, _, body = curl(port, "/big/", *bearer("big"))
        assert st == 500, (st, len(body))               # a refusal over max_response_size
        st, _, body = curl(port, "/big/", *bearer("deny"))
        assert st == 403 and body == "denied by good\n", (st, body)
        assert wg.alive()


def test_forward_auth_over_h2c_tls_h2_and_grpc():
    from grpclib import GrpcBackend, grpc_call, need_grpcio
    from h2lib import Client
    from tlslib import shared
    with Harness() as h:
        a = AuthServer(h, "a1")
        pki = shared()
        crt, key = pki.leaf("a", ["a.test"])
        routes = [{"path_prefix": "/h2auth/", "service": "users", "strip_prefix": True,  # h2c auth
                   "policies": [fa("gauth", copy_headers=["X-Backend"])]},
                  {"path_prefix": "/", "service": "users", "policies": [fa()]}]
        grpc_routes = [
            {"path_prefix": "/down.", "service": "g", "policies": [fa("down")]},
            {"path_prefix": "/", "service": "g", "policies": [fa()]}]
        listeners = [
            {"name": "h2", "mode": "http", "http": {"h2c": True}, "routes": routes},
            {"name": "tls", "mode": "http", "routes": routes,
             "tls": {"certificates": [{"cert": crt, "key": key}]}},
            {"name": "g", "mode": "http", "http": {"h2c": True}, "routes": grpc_routes}]
        grpc = need_grpcio()
        gb = GrpcBackend(h, name="gb")
        wg, _ = auth_waygate(h, [a.instance()], listeners=listeners,
                             services={"g": {"upstream": {"protocol": "h2c"}},
                                       "gauth": {"upstream": {"protocol": "h2c"}}})
        wg.set_instances(dict(wg.instances, g=[gb.instance()], gauth=[gb.instance("gauth")]))
        c = Client(wg.port("h2"))
        try:
            wait_until(lambda: c.get("/h2auth/request")["status"] == 200, slack(10),
                       "the h2c auth service routable")
            r = c.get("/h2auth/request", headers=[("x-backend", "forged")])
            body = bytes(r["body"])
            assert r["status"] == 200 and b"\r\nX-Backend: gb\r\n" in body, r
            assert b"forged" not in body, body
            r = c.get("/request", headers=[("authorization", "Bearer allow:h2")])
            assert r["status"] == 200 and b"\r\nX-User: h2\r\n" in bytes(r["body"]), r
            r = c.get("/request", headers=[("authorization", "Bearer deny")])
            hd = dict(r["headers"])
            assert r["status"] == 403 and bytes(r["body"]) == b"denied by a1\n", r
            assert hd.get("x-reason") == "policy", hd
            # a POST body held by flow control while the auth service decides
            sid = c.request("/echo", method="POST", headers=[("authorization", "Bearer allow:p")],
                            body=b"y" * 100000)
            r = c.response(sid)
            assert r["status"] == 200 and bytes(r["body"]) == b"y" * 100000, r["status"]
            # the client resets its stream while the auth service is slow
            sid = c.request("/request", headers=[("authorization", "Bearer slow")])
            c.pump(0.3)
            c.conn.reset_stream(sid)
            c.flush()
            r = c.get("/request", headers=[("authorization", "Bearer allow:after")])
            assert r["status"] == 200, r
        finally:
            c.close()
        res = "a.test:%d:127.0.0.1" % wg.port("tls")
        url = "https://a.test:%d/request" % wg.port("tls")
        for token, status in (("allow:tls", 200), ("deny", 403), (None, 401)):
            args = ["curl", "-s", "--http2", "--cacert", pki.ca, "--resolve", res, "-w",
                    "\n%{http_code} %{http_version}", url]
            if token:
                args += ["-H", "Authorization: Bearer " + token]
            out = subprocess.run(args, stdout=subprocess.PIPE, timeout=20).stdout.decode()
            body, tail = out.rsplit("\n", 1)
            assert tail == "%d 2" % status, (token, out)
            if status == 200:
                assert "\r\nX-User: tls\r\n" in body and "X-Forwarded-Proto: https" in body, body
        assert "X-Forwarded-Proto: https" in a.last()
        if grpc:
            target = "127.0.0.1:%d" % wg.port("g")
            wait_until(lambda: grpc_call(target, "unary", "/bench.B/Call", 10,
                                         metadata=[("authorization", "Bearer allow:g")])["code"] == "OK",
                       slack(10), "the gRPC backend routable")
            r = grpc_call(target, "unary", "/bench.B/Call", 10)
            assert r["code"] == "UNAUTHENTICATED", r
            r = grpc_call(target, "unary", "/bench.B/Call", 10,
                          metadata=[("authorization", "Bearer deny")])
            assert r["code"] == "PERMISSION_DENIED", r
            r = grpc_call(target, "unary", "/down.S/Call", 10,
                          metadata=[("authorization", "Bearer allow:g")])
            assert r["code"] == "UNAVAILABLE", r
        assert wg.alive()


def test_forward_auth_client_gone_mid_subrequest():
    """HTTP/1.1 clients that reset while the auth service decides: the
    request does not go on when it lets them through, nothing is left
    behind (ASan's leak check at exit), waygate goes on."""
    with Harness() as h:
        a = AuthServer(h, "a1")
        routes = [{"path_prefix": "/", "service": "users", "policies": [fa(timeout="5s")]}]
        log = h.path("access.log")
        wg, b = auth_waygate(h, [a.instance()], routes=routes,
                             log={"level": "info", "access_log": log})
        port = wg.port("web")
        socks = []
        for _ in range(3):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer slow:1000\r\n\r\n")
            socks.append(s)
        wait_until(lambda: a.stats()["requests"] == 3, slack(5), "the auth service asked")
        for s in socks:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            s.close()                                   # RST
        assert curl(port, "/", *bearer("allow:x"))[0] == 200
        time.sleep(1.5)                                 # the slow verdicts came: allow
        assert curl(port, "/", *bearer("allow:y"))[0] == 200
        served = json.loads(http_request(b.port, path="/stats").body)["served"]
        assert served == 2, served                      # not the three that left
        assert wg.alive()
        def gone():                                     # each with its subrequest's line
            docs = access_lines(log)
            left = [d for d in docs if d.get("reason") == "client_closed"]
            auth = {d["client"] for d in docs if d.get("kind") == "auth"}
            return left if len(left) == 3 and all(d["client"] in auth for d in left) else None
        for d in wait_until(gone, slack(5), "the lines of the three that left"):
            assert d["service"] == "users" and "kind" not in d, d


def access_lines(path):
    """The access log's text lines as {key: value} (optional keys too)."""
    from test_access_log import _PAIR, lines_of
    return [{k: (json.loads(v) if v.startswith('"') else v) for k, v in _PAIR.findall(line[24:])}
            for line in lines_of(path)]


def test_forward_auth_subrequests_have_their_own_access_log_line():
    """With the access log on, each subrequest has a line of its own
    (kind=auth, last), in the request line's format: the auth service and
    instance, the subrequest's method and target, the auth service's status,
    the request's id; a failure has its reason (upstream_error, timeout);
    the request's line stays as it was (its own service, no kind). With
    the access log off nothing is written."""
    with Harness() as h:
        a = AuthServer(h, "a1")
        routes = [{"path_prefix": "/closed/", "service": "users", "policies": [fa("down")]},
                  {"path_prefix": "/slow/", "service": "users",
                   "policies": [fa(timeout="300ms", path="/check")]},
                  {"path_prefix": "/", "service": "users", "policies": [fa()]}]
        log = h.path("access.log")
        wg, _ = auth_waygate(h, [a.instance()], routes=routes,
                             log={"level": "info", "access_log": log, "access_format": "text"})
        port = wg.port("web")
        cases = [("ok", "/request?q=1", "allow:alice", 200),
                 ("no", "/request", "deny", 403),
                 ("down", "/closed/x", "allow:u", 500),
                 ("late", "/slow/x", "slow", 500)]
        for rid, path, token, status in cases:
            st, _, _ = curl(port, path, *bearer(token), "-H", "X-Request-Id: " + rid)
            assert st == status, (rid, st)

        def by_client():                                 # one connection per request
            got = {}
            for doc in access_lines(log):
                got.setdefault(doc["client"], []).append(doc)
            return got if len(got) == len(cases) and all(len(v) == 2 for v in got.values()) \
                else None
        lines = list(wait_until(by_client, slack(5), "two lines per request").values())
        for (rid, path, token, status), pair in zip(cases, lines):
            auth = [d for d in pair if d.get("kind") == "auth"]
            req = [d for d in pair if "kind" not in d]
            assert len(auth) == 1 and len(req) == 1, pair
            auth, req = auth[0], req[0]
            assert list(auth)[-1] == "kind" and auth["kind"] == "auth", auth
            assert req["service"] == "users" and req["status"] == str(status), req
            assert req["path"] == path, (req, path)
            assert auth["listener"] == req["listener"] and auth["request_id"] == rid, auth
            assert auth["method"] == "GET" and auth["bytes_in"] == "0", auth
            float(auth["duration_ms"])
            if rid in ("ok", "no"):
                assert auth["service"] == "auth" and auth["upstream"] == "a1", auth
                assert auth["path"] == path and auth["reason"] == "-", auth
                assert auth["status"] == str(status), auth
                assert auth["connect_ms"] != "-", auth
            elif rid == "down":                          # nobody listens: no answer
                assert auth["service"] == "down" and auth["status"] == "-", auth
                assert auth["reason"] == "upstream_error", auth
            else:                                        # the auth service's 5 s > 300 ms
                assert auth["service"] == "auth" and auth["path"] == "/check", auth
                assert auth["status"] == "-" and auth["reason"] == "timeout", auth
                assert 250 <= float(auth["duration_ms"]) < 4000, auth

    with Harness() as h:                                 # an h2 client resets mid-subrequest
        from h2lib import Client, h2c_listener
        a = AuthServer(h, "a1")
        lst = h2c_listener()
        lst["routes"] = [{"path_prefix": "/", "service": "users", "policies": [fa(timeout="5s")]}]
        log = h.path("access.log")
        wg, _ = auth_waygate(h, [a.instance()], listeners=[lst],
                             log={"level": "info", "access_log": log})
        c = Client(wg.port("h2"))
        try:
            sid = c.request("/gone", headers=[("authorization", "Bearer slow:1000")])
            wait_until(lambda: a.stats()["requests"] == 1, slack(5), "the auth service asked")
            c.conn.reset_stream(sid, 8)
            c.flush()
            assert c.get("/next", headers=[("authorization", "Bearer allow:z")])["status"] == 200
        finally:
            c.close()

        def both():
            docs = [d for d in access_lines(log) if d["path"] == "/gone"]
            return docs if len(docs) == 2 else None
        auth, req = sorted(wait_until(both, slack(5), "the two lines of /gone"),
                           key=lambda d: "kind" in d, reverse=True)
        assert auth["kind"] == "auth" and auth["reason"] == "client_reset", auth
        assert auth["service"] == "auth" and auth["upstream"] == "a1", auth
        assert req["service"] == "users" and req["upstream"] == "-" and "kind" not in req, req
        assert req["reason"] == "client_reset" and req["connect_ms"] == "-", req

    with Harness() as h:                                 # off: not a line
        a = AuthServer(h, "a1")
        wg, _ = auth_waygate(h, [a.instance()], log={"level": "info", "access_log": "off"})
        assert curl(wg.port("web"), "/", *bearer("allow:x"))[0] == 200
        time.sleep(slack(0.3))                           # several writer periods
        assert os.path.getsize(wg.proc.stdout_path) == 0, wg.proc.stdout_text()
