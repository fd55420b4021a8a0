"""A service with `proxy_protocol: true` gets a PROXY v2 header first, naming
the real client (DESIGN §5 service_defaults.proxy_protocol)."""

import socket
import struct
import threading

from wglib import Harness, connect, recv_exact

SIG = b"\r\n\r\n\x00\r\nQUIT\n"


class HeaderServer:
    """Accepts connections, reads each one's PROXY v2 header, answers 'ok\\n'.
    (waygate's readiness probe by the harness makes a connection too.)"""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.headers = []
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return                  # closed
            with conn:
                try:
                    fixed = recv_exact(conn, 16, timeout=5)
                    rest = recv_exact(conn, struct.unpack("!H", fixed[14:16])[0], timeout=5)
                    self.headers.append(fixed + rest)
                    conn.sendall(b"ok\n")
                except (OSError, AssertionError):
                    pass

    def close(self):
        self.sock.close()


def test_proxy_v2_header_names_the_client():
    with Harness() as h:
        srv = HeaderServer()
        try:
            wg = h.waygate(instances={"users": [{"id": "p", "address": "127.0.0.1",
                                                 "port": srv.port}]},
                           services={"users": {"proxy_protocol": True}})
            with connect(wg.port()) as s:
                client_port = s.getsockname()[1]
                assert recv_exact(s, 3) == b"ok\n"
            mine = [x for x in srv.headers if x[12:14] == b"\x21\x11" and
                    struct.unpack("!H", x[24:26])[0] == client_port]
            assert len(mine) == 1, srv.headers
            hd = mine[0]
            assert hd[:12] == SIG, hd
            assert hd[12] == 0x21 and hd[13] == 0x11, "v2 PROXY over TCP/IPv4 expected: %r" % hd[:16]
            src, dst, sport, dport = struct.unpack("!4s4sHH", hd[16:28])
            assert socket.inet_ntoa(src) == "127.0.0.1"
            assert sport == client_port, (sport, client_port)
            assert dport == wg.port()
        finally:
            srv.close()
