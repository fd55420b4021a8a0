#!/usr/bin/env python3
"""A gRPC-Web server speaking HTTP/1.1 itself (its own process), for calls
waygate passes unchanged to an `http1` instance:

    grpc_web_h1_server.py       prints "ready PORT" when listening

Every POST reads its body, then answers 200 with the request's content
type (application/grpc-web or application/grpc-web-text), chunked, as the
request's fields say:

    x-count: N          N messages of x-size bytes ("m" * size), each a chunk
                        of its own (-text: each message in padded base64),
                        x-interval-ms apart (default 1)
    x-split: 1          then one more message, only its first half sent
    x-length: 1         Content-Length framing instead (the whole body is
                        announced, then only the messages are sent)

then holds the call (no trailer frame) for 60 s, or until waygate lets go
of the connection.
"""

import base64
import http.server
import socketserver
import struct
import time


def frame(payload, flags=0):
    return struct.pack(">BI", flags, len(payload)) + payload


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(n)
        ct = self.headers.get("Content-Type") or "application/grpc-web"
        text = ct.startswith("application/grpc-web-text")
        count = int(self.headers.get("x-count") or 1)
        size = int(self.headers.get("x-size") or 10)
        interval = int(self.headers.get("x-interval-ms") or 1) / 1000
        split = self.headers.get("x-split") == "1"
        length = self.headers.get("x-length") == "1"
        enc = base64.b64encode if text else (lambda b: b)
        msg = enc(frame(b"m" * size))
        self.send_response(200)
        self.send_header("Content-Type", ct)
        if length:
            self.send_header("Content-Length", str(len(msg) * (count + 1)))
        else:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()
        try:
            for i in range(count):
                time.sleep(interval)
                self.wfile.write(msg if length else b"%x\r\n%s\r\n" % (len(msg), msg))
                self.wfile.flush()
            if split:
                half = enc(frame(b"m" * size)[:size // 2])
                self.wfile.write(b"%x\r\n%s\r\n" % (len(half), half))
                self.wfile.flush()
            self.connection.settimeout(60)
            self.rfile.read(1)          # until waygate closes the connection
        except OSError:
            pass
        self.close_connection = True


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


srv = Server(("127.0.0.1", 0), Handler)
print("ready %d" % srv.server_address[1], flush=True)
srv.serve_forever()
