"""Upgrade (WebSocket) through an http listener: the upstream's 101 is
forwarded, then bytes are tunnelled both ways until either side closes or
tunnel_idle_timeout passes."""

import base64
import hashlib
import socket
import threading
import time

from test_http import start
from wglib import Harness, ThreadedServer, connect, recv_exact, recv_until_eof, slack

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC11B73"


class WsBackend(ThreadedServer):
    """A tiny threaded WebSocket-ish server: answers the upgrade with 101,
    then echoes bytes back, upper-cased so that an echo cannot be faked."""

    def __init__(self):
        self.heads = []
        super().__init__()

    def serve(self, c):
        with c:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = c.recv(4096)
                if not chunk:
                    return
                head += chunk
            head, _, rest = head.partition(b"\r\n\r\n")
            self.heads.append(head.decode("latin-1"))
            key = b""
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"sec-websocket-key:"):
                    key = line.split(b":", 1)[1].strip()
            accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
            c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                      b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
            if rest:
                c.sendall(rest.upper())
            while True:
                data = c.recv(65536)
                if not data:
                    c.shutdown(socket.SHUT_WR)
                    return
                c.sendall(data.upper())


UPGRADE = (b"GET /chat HTTP/1.1\r\nHost: ws.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def read_head(s):
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(4096)
        assert chunk, buf
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head.decode("latin-1"), rest


def test_websocket_tunnel_both_ways():
    ws = WsBackend()
    try:
        with Harness() as h:
            wg, _ = start(h, instances={"users": [{"id": "ws", "address": "127.0.0.1",
                                                   "port": ws.port}]})
            with connect(wg.port()) as s:
                s.sendall(UPGRADE)
                head, rest = read_head(s)
                assert head.startswith("HTTP/1.1 101 "), head
                want = base64.b64encode(hashlib.sha1(b"dGhlIHNhbXBsZSBub25jZQ==" + GUID).digest())
                assert "Sec-WebSocket-Accept: %s" % want.decode() in head, head
                assert "Upgrade: websocket" in head and "Connection: upgrade" in head, head
                up = ws.heads[-1]
                assert "Upgrade: websocket" in up and "Connection: upgrade" in up, up
                for k in range(50):
                    msg = b"frame %d " % k * 100
                    s.sendall(msg)
                    got = rest + recv_exact(s, len(msg) - len(rest))
                    rest = b""
                    assert got == msg.upper(), (k, got[:50])
                big = bytes(range(97, 123)) * 40000        # ~1 MB each way
                threading.Thread(target=s.sendall, args=(big,), daemon=True).start()
                assert recv_exact(s, len(big), timeout=20) == big.upper()
                s.shutdown(socket.SHUT_WR)                  # half-close travels through
                assert recv_until_eof(s, timeout=5) == b""
    finally:
        ws.close()


def test_tunnel_idle_timeout_closes():
    ws = WsBackend()
    try:
        with Harness() as h:
            wg, _ = start(h, http={"tunnel_idle_timeout": "1s"},
                          instances={"users": [{"id": "ws", "address": "127.0.0.1",
                                                "port": ws.port}]})
            with connect(wg.port(), timeout=10) as s:
                s.sendall(UPGRADE)
                head, rest = read_head(s)
                assert head.startswith("HTTP/1.1 101 "), head
                t = time.monotonic()
                assert recv_until_eof(s, timeout=10) == rest
                took = time.monotonic() - t
                assert 0.8 <= took <= slack(2.5), took
    finally:
        ws.close()
