"""PROXY protocol (v1 and v2) on listeners with proxy_protocol: true: the
address it carries becomes the client address (X-Forwarded-For); garbage
or a missing header closes the connection without an answer."""

import socket
import struct

from test_http import fields, http_listener
from wglib import Harness, ThreadedServer, connect, recv_until_eof

SIG = b"\r\n\r\n\x00\r\nQUIT\n"
REQ = b"GET /request HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"


def v2_tcp4(src, dst, sport, dport):
    addr = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)
    return SIG + b"\x21\x11" + struct.pack("!H", len(addr)) + addr


def v2_tcp6(src, dst, sport, dport):
    addr = (socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst) +
            struct.pack("!HH", sport, dport))
    tlv = b"\x04\x00\x02ok"                                 # a TLV, skipped
    return SIG + b"\x21\x21" + struct.pack("!H", len(addr) + len(tlv)) + addr + tlv


def xff_via(port, prefix, split=False):
    with connect(port) as s:
        if split:                                           # the header in pieces
            for k in range(0, len(prefix), 5):
                s.sendall(prefix[k:k + 5])
        else:
            s.sendall(prefix)
        try:
            s.sendall(REQ)
            data = recv_until_eof(s)
        except ConnectionResetError:                        # closed with our bytes unread
            data = b""
    if not data:
        return None
    head = data.split(b"\r\n\r\n", 1)[1].decode()
    return dict(fields(head)).get("x-forwarded-for")


def test_proxy_protocol_v1_v2_and_garbage():
    with Harness() as h:
        b = h.backend("http", name="b")
        listener = http_listener([{"path_prefix": "/", "service": "users"}])
        listener["proxy_protocol"] = True
        listener["trusted_proxies"] = ["127.0.0.0/8"]
        wg = h.waygate(listeners=[listener], instances={"users": [b.instance()]})
        port = wg.port()
        assert xff_via(port, b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 80\r\n") == "192.0.2.7"
        assert xff_via(port, b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 80\r\n",
                       split=True) == "2001:db8::7"
        assert xff_via(port, v2_tcp4("203.0.113.9", "10.0.0.1", 1234, 80)) == "203.0.113.9"
        assert xff_via(port, v2_tcp6("2001:db8::9", "::1", 1234, 80), split=True) == "2001:db8::9"
        assert xff_via(port, b"PROXY UNKNOWN\r\n") == "127.0.0.1"
        assert xff_via(port, SIG + b"\x20\x00\x00\x00") == "127.0.0.1"     # v2 LOCAL
        for garbage in (b"", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n",
                        b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", b"PROXY TCP9 a b 1 2\r\n",
                        SIG + b"\x21\x12\x00\x0c" + bytes(12),              # UDP
                        b"\x00" * 16):
            assert xff_via(port, garbage) is None, garbage


def test_no_proxy_header_on_plain_listener_is_http():
    with Harness() as h:
        b = h.backend("http", name="b")
        wg = h.waygate(listeners=[http_listener([{"path_prefix": "/", "service": "users"}])],
                       instances={"users": [b.instance()]})
        with connect(wg.port()) as s:                       # a PROXY line is not HTTP
            s.sendall(b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 80\r\n" + REQ)
            data = recv_until_eof(s)
        assert data.startswith(b"HTTP/1.1 400 "), data


class V2Reader(ThreadedServer):
    """Reads the PROXY v2 header waygate sends upstream (service
    proxy_protocol: true) and answers the source address it names."""

    def serve(self, c):
        with c:
            try:
                c.settimeout(5)
                head = b""
                while len(head) < 16:
                    d = c.recv(16 - len(head))
                    if not d:
                        break
                    head += d
                if len(head) < 16 or head[:12] != SIG:
                    return
                n = struct.unpack("!H", head[14:16])[0]
                body = b""
                while len(body) < n:
                    body += c.recv(n - len(body))
                src = socket.inet_ntoa(body[0:4]) if head[13] == 0x11 else \
                    socket.inet_ntop(socket.AF_INET6, body[0:16]) if head[13] == 0x21 \
                    else "local"
                c.sendall(("src=%s\n" % src).encode())
            except OSError:
                pass


def test_tcp_listener_accepts_proxy_protocol():
    up = V2Reader()
    try:
        with Harness() as h:
            wg = h.waygate(listeners=[{"name": "t", "mode": "tcp", "service": "users",
                                       "proxy_protocol": True}],
                           instances={"users": [{"id": "r", "address": "127.0.0.1",
                                                 "port": up.port}]},
                           services={"users": {"proxy_protocol": True}},
                           trusted_proxies=["127.0.0.1"])      # the top level's, inherited
            for prefix, want in ((b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 80\r\n", "192.0.2.7"),
                                 (v2_tcp4("203.0.113.9", "10.0.0.1", 1234, 80), "203.0.113.9"),
                                 (b"PROXY UNKNOWN\r\n", "127.0.0.1")):
                with connect(wg.port()) as s:
                    for k in range(0, len(prefix), 7):     # in pieces
                        s.sendall(prefix[k:k + 7])
                    assert recv_until_eof(s) == ("src=%s\n" % want).encode(), prefix
            with connect(wg.port()) as s:                   # garbage: closed, nothing relayed
                s.sendall(b"HELLO\r\n")
                try:
                    assert recv_until_eof(s) == b""
                except ConnectionResetError:
                    pass
    finally:
        up.close()
