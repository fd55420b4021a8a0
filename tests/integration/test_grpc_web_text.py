"""gRPC-Web-text through waygate (issue 17, docs/http.md "gRPC-Web"): a
browser-style client sends application/grpc-web-text (the base64 form
grpc-web's default "grpcwebtext" mode uses) over HTTP/1.1 and over HTTP/2,
its body cut into several padded base64 chunks and into pieces that arrive
in separate reads; waygate forwards application/grpc to a python3-grpcio
server (h2c) and returns the reply as base64 with content type
application/grpc-web-text: messages and the 0x80 trailer frame. Invalid
base64 is waygate's own Trailers-Only INTERNAL."""

import base64
import html
import json
import re
import socket
import time

from grpclib import GrpcServer, need_grpcio
from h2lib import Client, h2c_listener
from test_grpc_web import check_echo, frame, frames, trailer_fields, web_setup
from wglib import BrowserPage, Harness, http_request, read_http_response, slack

TEXT = "application/grpc-web-text"


def b64(data):
    return base64.b64encode(data)


def unb64(text):
    """Decode a grpc-web-text body: padded 4-char groups one after the other
    (the way grpc-web's JavaScript client reads it: each group alone)."""
    text = bytes(text)
    assert len(text) % 4 == 0, text
    return b"".join(base64.b64decode(text[i:i + 4], validate=True) for i in range(0, len(text), 4))


def chunks(data, *cuts):
    """data as padded base64 chunks, one per piece between the cuts."""
    at = [0] + list(cuts) + [len(data)]
    return b"".join(b64(data[a:b]) for a, b in zip(at, at[1:]))


def web_headers(ct=TEXT):
    return [("Content-Type", ct), ("Accept", TEXT), ("X-Grpc-Web", "1")]


def down(count, size, interval_ms, status=None):
    return frame(("%d %d %d%s" % (count, size, interval_ms,
                                  " " + status if status else "")).encode())


def payload(size):
    return bytes((i * 7 + 1) & 0xFF for i in range(size))


def chunked_request(port, path, headers, pieces, pause=0.05):
    """POST with a chunked body, each piece its own chunk and its own write
    (a pause apart, so that waygate reads them separately)."""
    with socket.create_connection(("127.0.0.1", port), timeout=slack(10)) as s:
        head = "POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n" \
               "Transfer-Encoding: chunked\r\n" % path
        head += "".join("%s: %s\r\n" % kv for kv in headers) + "\r\n"
        s.sendall(head.encode())
        for p in pieces:
            time.sleep(pause)
            s.sendall(b"%x\r\n%s\r\n" % (len(p), p))
        s.sendall(b"0\r\n\r\n")
        return read_http_response(s, slack(10))


def setup(h):
    return web_setup(h, "text")


def test_grpc_web_text_over_http1():
    if not need_grpcio():
        return
    with Harness() as h:
        g, wg, port = setup(h)
        msg = b"hello, grpc-web-text!"
        # unary, one padded chunk, Content-Length: application/grpc-web-text back
        r = http_request(port, "POST", "/wg.Echo/One", headers=web_headers(),
                         body=b64(frame(msg)), timeout=slack(10))
        assert r.status == 200 and r.header("Content-Type") == TEXT, r
        check_echo(unb64(r.body), msg, "text")
        # +proto (grpcio answers application/grpc: -web-text added to that)
        r = http_request(port, "POST", "/wg.Echo/One", headers=web_headers(TEXT + "+proto"),
                         body=b64(frame(msg)), timeout=slack(10))
        assert r.header("Content-Type") == TEXT, r
        check_echo(unb64(r.body), msg, "text")
        # the body as three padded chunks, cut into pieces at every few chars
        # (groups and chunks split across reads)
        f = frame(msg * 5)
        text = chunks(f, 2, 7)
        assert text.count(b"=") >= 2, text
        for step in (1, 5, 7):
            pieces = [text[i:i + step] for i in range(0, len(text), step)]
            r = chunked_request(port, "/wg.Echo/One", web_headers(), pieces,
                                pause=0.05 if step > 1 else 0.005)
            assert r.status == 200 and r.header("Content-Type") == TEXT, r
            check_echo(unb64(r.body), msg * 5, "text")
        # a message of many blocks both ways (decoded and encoded block by block)
        big = bytes(range(256)) * 1200 + b"x"
        r = http_request(port, "POST", "/wg.Echo/One", headers=web_headers(),
                         body=b64(frame(big)), timeout=slack(30))
        check_echo(unb64(r.body), big, "text")
        # server streaming: 3 messages, then the trailer frame
        r = http_request(port, "POST", "/wg.Echo/Down", headers=web_headers(),
                         body=b64(down(3, 1000, 20)), timeout=slack(10))
        fs = frames(unb64(r.body))
        assert fs[:3] == [(0, payload(1000))] * 3 and len(fs) == 4 and fs[3][0] == 0x80, fs
        assert trailer_fields(fs[3][1])["grpc-status"] == "0", fs
        # the server's error after its messages: read from the trailer frame
        r = http_request(port, "POST", "/wg.Echo/Down", headers=web_headers(),
                         body=b64(down(2, 7, 0, "FAILED_PRECONDITION")), timeout=slack(10))
        assert r.status == 200 and r.header("grpc-status") is None, r
        fs = frames(unb64(r.body))
        assert fs[:2] == [(0, payload(7))] * 2 and fs[2][0] == 0x80, fs
        t = trailer_fields(fs[2][1])
        assert t["grpc-status"] == "9" and t["grpc-message"] == "down: FAILED_PRECONDITION", t
        # the upstream's Trailers-Only error keeps grpc-status in the head
        r = http_request(port, "POST", "/grpc.health.v1.Health/Check", headers=web_headers(),
                         body=b64(frame(b"\x0a\x04nope")), timeout=slack(10))
        assert r.status == 200 and r.header("grpc-status") == "5" and r.body == b"", r
        assert r.header("Content-Type") == TEXT, r
        # waygate's own error, in the client's content type
        r = http_request(port, "POST", "/none.S/M", headers=web_headers(), body=b64(frame(b"x")),
                         timeout=slack(10))
        assert r.status == 200 and r.header("grpc-status") == "14", r
        assert r.header("Content-Type") == TEXT, r
        # invalid base64: INTERNAL from waygate, whatever the cut
        for bad in (b"AAAA*AAA", b"AAAAAAU=A", b"AAA=====", b"AAAAA", b"AA=A",
                    b64(frame(msg)) + b"\r\n"):
            for pieces in ([bad], [bad[:3], bad[3:]]):
                r = chunked_request(port, "/wg.Echo/One", web_headers(), pieces)
                assert r.status == 200 and r.header("grpc-status") == "13", (bad, r)
                assert r.header("grpc-message") == "waygate: malformed request", r
                assert r.header("Content-Type") == TEXT and r.body == b"", r
        # and waygate still serves
        r = http_request(port, "POST", "/wg.Echo/One", headers=web_headers(),
                         body=b64(frame(msg)), timeout=slack(10))
        check_echo(unb64(r.body), msg, "text")


def dechunk(data):
    """(payload of the complete chunks at the front of data, ended: the last
    chunk came)."""
    out, off = b"", 0
    while True:
        i = data.find(b"\r\n", off)
        if i < 0:
            return out, False
        n = int(data[off:i], 16)
        if n == 0:
            return out, True
        if len(data) < i + 2 + n + 2:
            return out, False
        out += data[i + 2:i + 2 + n]
        off = i + 2 + n + 2


def whole_frames(data):
    """The complete (flags, payload) frames at the front of data."""
    out, off = [], 0
    while len(data) - off >= 5:
        n = int.from_bytes(data[off + 1:off + 5], "big")
        if len(data) - off - 5 < n:
            break
        out.append((data[off], bytes(data[off + 5:off + 5 + n])))
        off += 5 + n
    return out


def test_grpc_web_text_message_not_held_back():
    """Each streamed message is readable as soon as it arrives: its last
    base64 group is padded, not held for the next message's bytes (a
    5+11-byte message leaves one byte over a 3-byte group)."""
    if not need_grpcio():
        return
    with Harness() as h:
        g, wg, port = setup(h)
        with socket.create_connection(("127.0.0.1", port), timeout=slack(10)) as s:
            body = b64(down(2, 11, 3000))
            s.sendall(("POST /wg.Echo/Down HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                       "Content-Type: %s\r\nContent-Length: %d\r\n\r\n" % (TEXT, len(body))).encode()
                      + body)
            buf, end = b"", time.monotonic() + slack(10)

            def received():
                if b"\r\n\r\n" not in buf:
                    return [], False
                text, ended = dechunk(buf.split(b"\r\n\r\n", 1)[1])
                return whole_frames(unb64(text[:len(text) // 4 * 4])), ended

            while not received()[0]:
                assert time.monotonic() < end, buf
                s.settimeout(max(0.1, end - time.monotonic()))
                got = s.recv(65536)
                assert got, buf
                buf += got
            # the first message is whole while the server still waits to send the second
            assert received()[0] == [(0, payload(11))], buf
            assert g.down_sent() < 2, g.down_sent()
            s.settimeout(slack(10))
            while not received()[1]:
                got = s.recv(65536)
                assert got, buf
                buf += got
        fs = received()[0]
        assert fs[:2] == [(0, payload(11))] * 2 and fs[2][0] == 0x80 and len(fs) == 3, fs


def test_grpc_web_text_over_h2():
    if not need_grpcio():
        return
    with Harness() as h:
        g, wg, port = setup(h)
        msg = b"over h2, in base64"
        hdrs = [("content-type", TEXT), ("x-grpc-web", "1")]
        c = Client(port)
        # unary, the body in several DATA frames cut inside groups
        text = chunks(frame(msg * 3), 4)
        sid = c.request("/wg.Echo/One", method="POST", headers=hdrs, end=False)
        for i in range(0, len(text), 9):
            c.send_body(sid, text[i:i + 9], end=False)
            time.sleep(0.02)
        c.send_body(sid, b"", end=True)
        resp = c.response(sid, timeout=slack(10))
        hd = dict(resp["headers"])
        assert resp["status"] == 200 and hd["content-type"] == TEXT, resp
        assert not resp["trailers"], resp
        check_echo(unb64(resp["body"]), msg * 3, "text")
        # a message of many blocks both ways, the body in two padded chunks
        big = bytes(range(256)) * 1200 + b"yz"
        resp = c.response(c.request("/wg.Echo/One", method="POST", headers=hdrs,
                                    body=chunks(frame(big), 100001)), timeout=slack(30))
        check_echo(unb64(resp["body"]), big, "text")
        # server streaming, larger than a DATA frame
        resp = c.response(c.request("/wg.Echo/Down", method="POST", headers=hdrs,
                                    body=b64(down(3, 40000, 10))), timeout=slack(10))
        fs = frames(unb64(resp["body"]))
        assert fs[:3] == [(0, payload(40000))] * 3 and len(fs) == 4, [f for f, _ in fs]
        assert trailer_fields(fs[3][1])["grpc-status"] == "0", fs[3]
        # the server's error in the trailer frame
        resp = c.response(c.request("/wg.Echo/Down", method="POST", headers=hdrs,
                                    body=b64(down(1, 3, 0, "ABORTED"))), timeout=slack(10))
        fs = frames(unb64(resp["body"]))
        assert fs[0] == (0, payload(3)) and trailer_fields(fs[1][1])["grpc-status"] == "10", fs
        # invalid base64: waygate's INTERNAL, Trailers-Only
        resp = c.response(c.request("/wg.Echo/One", method="POST", headers=hdrs,
                                    body=b"AAAA!AAA"), timeout=slack(10))
        hd = dict(resp["headers"])
        assert hd.get("grpc-status") == "13" and hd["content-type"] == TEXT, resp
        assert resp["body"] == b"", resp
        # the connection goes on
        resp = c.response(c.request("/wg.Echo/One", method="POST", headers=hdrs,
                                    body=b64(frame(msg))), timeout=slack(10))
        check_echo(unb64(resp["body"]), msg, "text")
        c.close()


GRPC_WEB_CORS = {"cors": {"origins": ["http://app.test"], "methods": ["POST"],
                          "headers": ["content-type", "x-grpc-web", "x-user-agent", "grpc-timeout"],
                          "expose_headers": ["grpc-status", "grpc-message"], "max_age": "10m"}}


def test_grpc_web_text_cors():
    """docs/policies.md's grpc-web CORS example: the browser's preflight is
    answered, and every answer to the call itself (the upstream's messages,
    its Trailers-Only error, waygate's own errors, over HTTP/1.1 and h2)
    carries Access-Control-Allow-Origin and exposes grpc-status and
    grpc-message, without which the browser reads no status."""
    if not need_grpcio():
        return
    with Harness() as h:
        g = GrpcServer(h, "cors")
        lst = h2c_listener("g")
        lst["policies"] = [GRPC_WEB_CORS]
        lst["routes"] = [{"path_prefix": "/none.", "service": "none"},
                         {"path_prefix": "/", "service": "users"}]
        wg = h.waygate(listeners=[lst],
                       instances={"users": [g.instance()], "none": [g.instance("w0", weight=0)]},
                       services={"users": {"upstream": {"protocol": "h2c"}},
                                 "none": {"upstream": {"protocol": "h2c"}}})
        port = wg.ports["g"]
        origin = [("Origin", "http://app.test")]
        r = http_request(port, "OPTIONS", "/wg.Echo/One", timeout=slack(10), headers=origin + [
            ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", "content-type,grpc-timeout,x-grpc-web,x-user-agent")])
        assert r.status == 204 and r.header("Access-Control-Allow-Origin") == "http://app.test", r
        assert "x-grpc-web" in r.header("Access-Control-Allow-Headers"), r
        assert r.header("Access-Control-Allow-Methods") == "POST", r

        def cors_ok(r, status):
            assert r.status == 200 and r.header("Access-Control-Allow-Origin") == "http://app.test", r
            assert r.header("Access-Control-Expose-Headers") == "grpc-status, grpc-message", r
            if status is not None:
                assert r.header("grpc-status") == status, r

        hdrs = web_headers() + origin
        r = http_request(port, "POST", "/wg.Echo/One", headers=hdrs, body=b64(frame(b"hi")),
                         timeout=slack(10))
        cors_ok(r, None)
        check_echo(unb64(r.body), b"hi", "cors")
        r = http_request(port, "POST", "/grpc.health.v1.Health/Check", headers=hdrs,
                         body=b64(frame(b"\x0a\x04nope")), timeout=slack(10))
        cors_ok(r, "5")                 # the upstream's Trailers-Only
        r = http_request(port, "POST", "/none.S/M", headers=hdrs, body=b64(frame(b"x")),
                         timeout=slack(10))
        cors_ok(r, "14")                # waygate's own
        r = http_request(port, "POST", "/wg.Echo/One", headers=hdrs, body=b"!!!!",
                         timeout=slack(10))
        cors_ok(r, "13")                # waygate's own: invalid base64
        c = Client(port)
        h2hdrs = [("content-type", TEXT), ("x-grpc-web", "1"), ("origin", "http://app.test")]
        for path, body, status in (("/none.S/M", b64(frame(b"x")), "14"),
                                   ("/wg.Echo/One", b"!!!!", "13"),
                                   ("/grpc.health.v1.Health/Check", b64(frame(b"\x0a\x01x")), "5")):
            resp = c.response(c.request(path, method="POST", headers=h2hdrs, body=body),
                              timeout=slack(10))
            hd = dict(resp["headers"])
            assert hd.get("grpc-status") == status, resp
            assert hd.get("access-control-allow-origin") == "http://app.test", resp
            assert hd.get("access-control-expose-headers") == "grpc-status, grpc-message", resp
        c.close()


def test_grpc_web_text_from_headless_chromium():
    """fetch() from a page on another origin makes the calls grpc-web's
    JavaScript client makes in grpcwebtext mode (its headers, a preflight,
    the body decoded 4 chars at a time): the echo's message and trailer
    frame, and the status of Trailers-Only answers read from the head."""
    if not need_grpcio():
        return
    with Harness() as h, BrowserPage() as page:
        if not page.chromium:
            print("chromium not installed: gRPC-Web-from-a-browser check skipped")
            return
        g = GrpcServer(h, "browser")
        cors = {"cors": dict(GRPC_WEB_CORS["cors"], origins=[page.origin])}
        lst = h2c_listener("g")
        lst["policies"] = [cors]
        lst["routes"] = [{"path_prefix": "/none.", "service": "none"},
                         {"path_prefix": "/", "service": "users"}]
        wg = h.waygate(listeners=[lst],
                       instances={"users": [g.instance()], "none": [g.instance("w0", weight=0)]},
                       services={"users": {"upstream": {"protocol": "h2c"}},
                                 "none": {"upstream": {"protocol": "h2c"}}})
        api = "http://127.0.0.1:%d" % wg.ports["g"]
        dom = page.dom(h, """<!doctype html><html><body><pre id="out">pending</pre><script>
const API = "%s";
function frame(bytes) {
  const f = new Uint8Array(5 + bytes.length);
  new DataView(f.buffer).setUint32(1, bytes.length);
  f.set(bytes, 5);
  return f;
}
function b64(u8) { let s = ""; for (const b of u8) s += String.fromCharCode(b); return btoa(s); }
function unb64(text) {          /* as grpc-web does: 4 chars at a time */
  const out = [];
  for (let i = 0; i < text.length; i += 4)
    for (const c of atob(text.substr(i, 4))) out.push(c.charCodeAt(0));
  return new Uint8Array(out);
}
async function call(path, body) {
  try {
    const r = await fetch(API + path, {method: "POST", body: body, headers: {
      "content-type": "application/grpc-web-text", "accept": "application/grpc-web-text",
      "x-grpc-web": "1", "x-user-agent": "grpc-web-javascript/0.1", "grpc-timeout": "10S"}});
    const text = await r.text();
    if (r.headers.get("grpc-status") !== null)
      return "head " + r.headers.get("grpc-status") + " " + r.headers.get("grpc-message");
    const u8 = unb64(text), out = [];
    for (let off = 0; off < u8.length; ) {
      const n = new DataView(u8.buffer).getUint32(off + 1);
      out.push(u8[off] + ":" + new TextDecoder().decode(u8.subarray(off + 5, off + 5 + n)));
      off += 5 + n;
    }
    return out.join("|");
  } catch (e) { return "blocked " + e; }
}
(async () => {
  const hello = new TextEncoder().encode("hello from a browser");
  const r = [await call("/wg.Echo/One", b64(frame(hello))),
             await call("/none.S/M", b64(frame(hello))),
             await call("/wg.Echo/One", "!!!!"),
             await call("/grpc.health.v1.Health/Check",
                        b64(frame(new Uint8Array([10, 4, 110, 111, 112, 101]))))];
  document.getElementById("out").textContent = "result " + JSON.stringify(r);
})();
</script></body></html>""" % api, budget_ms=10000)
        m = re.search(r'<pre id="out">result (.*)</pre>', dom)
        assert m, (dom[-2000:], page.stderr[-2000:])
        r = json.loads(html.unescape(m.group(1)))
        assert r[0].startswith("0:hello from a browser|128:"), r
        assert "grpc-status: 0" in r[0] and "x-server: browser" in r[0], r
        assert r[1] == "head 14 waygate: no healthy upstream", r
        assert r[2] == "head 13 waygate: malformed request", r
        assert r[3] == "head 5 health: NOT_FOUND", r
