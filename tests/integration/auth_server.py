#!/usr/bin/env python3
"""A forward-auth service for the tests (its own process, HTTP/1.1 keep-alive):
decides per request by its Authorization field.

    auth_server.py NAME [--health-status N]     prints "ready PORT" when listening

    Authorization: Bearer allow:USER  200, X-User: USER, X-Auth-Instance: NAME, body "ok"
    Authorization: Bearer deny        403, X-Reason: policy, body "denied by NAME\\n"
    Authorization: Bearer slow        waits 5 s, then as allow:slow
    Authorization: Bearer slow:MS     waits MS ms, then as allow:slow
    Authorization: Bearer big         403 with a 100 KiB body
    (none)                            401, WWW-Authenticate: Bearer realm="auth",
                                      body "login first\\n"
    GET /health                       the health status (--health-status)
    GET /stats                        {"connections": N, "requests": N} (auth requests)
    GET /last                         the head of the last auth request, as received
"""

import http.server
import json
import socketserver
import sys
import threading
import time

NAME = sys.argv[1]
HEALTH = int(sys.argv[sys.argv.index("--health-status") + 1]) if "--health-status" in sys.argv else 200
lock = threading.Lock()
stats = {"connections": 0, "requests": 0}
last = [b""]


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        with lock:
            stats["connections"] += 1

    def log_message(self, *args):
        pass

    def send(self, status, body, fields=()):
        self.send_response(status)
        for k, v in fields:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def decide(self):
        if self.path == "/health":
            return self.send(HEALTH, b"health")
        if self.path == "/stats":
            with lock:
                return self.send(200, json.dumps(stats).encode())
        if self.path == "/last":
            return self.send(200, last[0])
        with lock:
            stats["requests"] += 1
            last[0] = ("%s %s %s\r\n" % (self.command, self.path, self.request_version)).encode() + \
                bytes(self.headers)
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(n)
        auth = self.headers.get("Authorization") or ""
        if auth == "Bearer slow" or auth.startswith("Bearer slow:"):
            time.sleep(int(auth[12:]) / 1000 if auth[12:] else 5)
            auth = "Bearer allow:slow"
        if auth.startswith("Bearer allow:"):
            return self.send(200, b"ok", [("X-User", auth[13:]), ("X-Auth-Instance", NAME)])
        if auth == "Bearer deny":
            return self.send(403, ("denied by %s\n" % NAME).encode(), [("X-Reason", "policy")])
        if auth == "Bearer big":
            return self.send(403, b"x" * 100 * 1024)
        return self.send(401, b"login first\n", [("WWW-Authenticate", 'Bearer realm="auth"')])

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_OPTIONS = decide


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


srv = Server(("127.0.0.1", 0), Handler)
print("ready %d" % srv.server_address[1], flush=True)
srv.serve_forever()
