"""A small HTTP/2 client for the tests: python3-h2 (Debian) for well-formed
traffic, raw frames for the attacks it refuses to send."""

import socket
import ssl
import struct
import time

from wglib import debian_import

h2 = debian_import("h2")                # Debian's python3-h2
for _m in ("config", "connection", "events", "settings"):
    debian_import("h2." + _m)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = \
    range(10)
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1
ENHANCE_YOUR_CALM, COMPRESSION_ERROR, PROTOCOL_ERROR = 0xb, 0x9, 0x1


def recv_some(sock, timeout):
    """Bytes that arrive within `timeout`: None when none did, b"" once closed."""
    sock.settimeout(timeout)
    try:
        return sock.recv(65536)
    except (socket.timeout, ssl.SSLWantReadError):
        return None
    except OSError:                     # reset, TLS error
        return b""


def read_or_close(conn, timeout):
    """conn.sock's next bytes, or None: nothing yet, or closed (conn.closed set)."""
    if conn.closed:
        return None
    data = recv_some(conn.sock, timeout)
    if data == b"":
        conn.closed = True
        return None
    return data


def frame(ftype, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + \
        struct.pack(">I", stream) + payload


class Client:
    """One h2 connection (h2c, or TLS with ALPN h2 when ctx is given)."""

    def __init__(self, port, ctx=None, server_hostname="localhost", settings=None, prefix=b""):
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        if prefix:                      # e.g. a PROXY protocol header
            raw.sendall(prefix)
        self.sock = ctx.wrap_socket(raw, server_hostname=server_hostname) if ctx else raw
        cfg = h2.config.H2Configuration(client_side=True, validate_outbound_headers=False,
                                        normalize_outbound_headers=False,
                                        validate_inbound_headers=False)
        self.conn = h2.connection.H2Connection(config=cfg)
        self.conn.initiate_connection()
        if settings:
            self.conn.update_settings(settings)
        self.flush()
        self.responses = {}             # stream id -> dict(status, headers, body, ended, reset)
        self.goaway = None              # error code of a GOAWAY received
        self.closed = False

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def send_raw(self, data):
        self.sock.sendall(data)

    def request(self, path, method="GET", headers=(), body=None, authority="localhost",
                end=True):
        sid = self.conn.get_next_available_stream_id()
        hdrs = [(":method", method), (":scheme", "http"), (":path", path)]
        if authority is not None:
            hdrs.append((":authority", authority))
        hdrs += list(headers)
        self.conn.send_headers(sid, hdrs, end_stream=end and body is None)
        self.responses[sid] = {"status": None, "headers": [], "body": bytearray(), "ended": False,
                               "reset": None, "trailers": [], "frames": []}
        if body is not None:
            self.send_body(sid, body, end=end)
        self.flush()
        return sid

    def send_body(self, sid, body, end=True, timeout=30):
        """Sends body as the windows open; fails if the connection closes
        or no window opens for `timeout` seconds."""
        off = 0
        deadline = time.monotonic() + timeout
        while off < len(body):
            window = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
            if window <= 0:
                if not self.pump(0.5):
                    raise AssertionError("connection closed with %d bytes of stream %d unsent"
                                         % (len(body) - off, sid))
                if time.monotonic() > deadline:
                    raise AssertionError("no window for stream %d in %ds" % (sid, timeout))
                continue
            deadline = time.monotonic() + timeout
            chunk = body[off:off + window]
            self.conn.send_data(sid, chunk)
            off += len(chunk)
            self.flush()
        if end:
            self.conn.end_stream(sid)
            self.flush()

    def pump(self, timeout):
        """Read and handle what arrives within `timeout`; False once closed."""
        data = read_or_close(self, timeout)
        if data is None:
            return not self.closed
        for ev in self.conn.receive_data(data):
            r = self.responses.get(getattr(ev, "stream_id", None))
            if isinstance(ev, h2.events.ResponseReceived) and r is not None:
                hd = [(k.decode() if isinstance(k, bytes) else k,
                       v.decode() if isinstance(v, bytes) else v) for k, v in ev.headers]
                r["headers"] = hd
                r["status"] = int(dict(hd)[":status"])
            elif isinstance(ev, h2.events.TrailersReceived) and r is not None:
                r["trailers"] = ev.headers
            elif isinstance(ev, h2.events.DataReceived):
                if r is not None:
                    r["body"] += ev.data
                    r["frames"].append(len(ev.data))
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded) and r is not None:
                r["ended"] = True
            elif isinstance(ev, h2.events.StreamReset) and r is not None:
                r["reset"] = ev.error_code
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self.goaway = ev.error_code
        try:
            self.flush()
        except OSError:
            self.closed = True
        return True

    def wait(self, pred, timeout, what):
        deadline = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > deadline:
                raise AssertionError("timed out waiting for " + what)
            if not self.pump(0.2) and not pred():
                raise AssertionError("connection closed waiting for %s (goaway=%r)" %
                                     (what, self.goaway))

    def response(self, sid, timeout=10):
        r = self.responses[sid]
        self.wait(lambda: r["ended"] or r["reset"] is not None, timeout, "stream %d" % sid)
        return r

    def get(self, path, timeout=10, **kw):
        return self.response(self.request(path, **kw), timeout)

    def wait_closed(self, timeout):
        """Until the server closes (after a GOAWAY); returns the GOAWAY code."""
        deadline = time.monotonic() + timeout
        while self.pump(0.2):
            if time.monotonic() > deadline:
                raise AssertionError("server did not close the connection (goaway=%r)" % self.goaway)
        return self.goaway

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def h2c_listener(name="h2", **http):
    http = dict({"h2c": True}, **http)
    return {"name": name, "mode": "http", "routes": [{"path_prefix": "/", "service": "users"}],
            "http": http}


class Raw:
    """An h2c connection driven frame by frame: what python3-h2 refuses to
    send (floods, bad HPACK) and what it refuses to read (streams finishing
    after a GOAWAY)."""

    def __init__(self, port):
        import hpack
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.enc, self.dec = hpack.Encoder(), hpack.Decoder()
        self.buf = b""
        self.goaway = None
        self.closed = False
        self.streams = {}               # id -> {"status", "body", "ended", "reset"}
        self.sock.sendall(PREFACE + frame(SETTINGS, 0, 0) +
                          frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 1 << 30)))

    def block(self, path="/", method="GET"):
        return self.enc.encode([(":method", method), (":scheme", "http"), (":path", path),
                                (":authority", "localhost")])

    def get(self, sid, path="/"):
        self.streams[sid] = {"status": None, "body": b"", "ended": False, "reset": None}
        self.send_raw(frame(HEADERS, END_HEADERS | END_STREAM, sid, self.block(path)))

    def request(self, sid, path, method="POST", headers=(), body=b""):
        """A request with fields `headers` (lower-case names) and its body
        in one DATA frame; the response's fields land in "headers"."""
        self.streams[sid] = {"status": None, "headers": {}, "body": b"", "ended": False,
                             "reset": None}
        block = self.enc.encode([(":method", method), (":scheme", "http"), (":path", path),
                                 (":authority", "localhost")] + list(headers))
        self.send_raw(frame(HEADERS, END_HEADERS | (0 if body else END_STREAM), sid, block) +
                      (frame(DATA, END_STREAM, sid, body) if body else b""))

    def send_raw(self, data):
        self.sock.sendall(data)

    def _reply(self, data):
        try:
            self.sock.sendall(data)
        except OSError:
            self.closed = True

    def _frames(self):
        while len(self.buf) >= 9:
            n = int.from_bytes(self.buf[:3], "big")
            if len(self.buf) < 9 + n:
                return
            t, fl, sid = self.buf[3], self.buf[4], int.from_bytes(self.buf[5:9], "big") & 0x7fffffff
            payload, self.buf = self.buf[9:9 + n], self.buf[9 + n:]
            yield t, fl, sid, payload

    def pump(self, timeout):
        data = read_or_close(self, timeout)
        if data is None:
            return not self.closed
        self.buf += data
        for t, fl, sid, p in self._frames():
            st = self.streams.get(sid)
            if t == SETTINGS and not fl & ACK:
                self._reply(frame(SETTINGS, ACK, 0))
            elif t == GOAWAY:
                self.goaway = int.from_bytes(p[4:8], "big")
            elif t == HEADERS and st is not None:
                hd = dict((k.decode() if isinstance(k, bytes) else k, v) for k, v in
                          self.dec.decode(p))
                if ":status" in hd:
                    st["status"] = int(hd[":status"])
                if "headers" in st:
                    st["headers"].update((k, v.decode() if isinstance(v, bytes) else v)
                                         for k, v in hd.items())
                st["ended"] |= bool(fl & END_STREAM)
            elif t == DATA and st is not None:
                st["body"] += p
                st["ended"] |= bool(fl & END_STREAM)
                if p:
                    self._reply(frame(WINDOW_UPDATE, 0, sid, struct.pack(">I", len(p))))
            elif t == RST_STREAM and st is not None:
                st["reset"] = int.from_bytes(p[:4], "big")
        return True

    def response(self, sid, timeout):
        st = self.streams[sid]
        deadline = time.monotonic() + timeout
        while not (st["ended"] or st["reset"] is not None):
            if time.monotonic() > deadline:
                raise AssertionError("timed out waiting for stream %d" % sid)
            if not self.pump(0.2) and not (st["ended"] or st["reset"] is not None):
                raise AssertionError("closed waiting for stream %d (goaway=%r)" % (sid, self.goaway))
        return st

    def wait_closed(self, timeout):
        deadline = time.monotonic() + timeout
        while self.pump(0.2):
            if time.monotonic() > deadline:
                raise AssertionError("server did not close the connection (goaway=%r)" %
                                     self.goaway)
        return self.goaway

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass
