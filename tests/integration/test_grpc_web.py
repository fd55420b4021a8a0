"""gRPC-Web (binary) through waygate (issue 17, docs/http.md "gRPC-Web"): a
browser-style client over HTTP/1.1 and over HTTP/2 sends
application/grpc-web(+proto); waygate forwards application/grpc(+proto)
to a python3-grpcio server (h2c) and returns the reply as gRPC-Web: the
content type back to grpc-web, the trailers as the body's 0x80 frame; an
upstream's Trailers-Only error and waygate's own errors keep grpc-status in
the response head."""

import struct

from grpclib import GrpcServer, need_grpcio
from h2lib import Client, h2c_listener
from test_admin import get_metrics, parse_metrics
from test_grpc_metrics import grpc_series
from wglib import Harness, http_request, slack, wait_until


def frame(payload, flags=0):
    return struct.pack(">BI", flags, len(payload)) + payload


def frames(body):
    """[(flags, payload)] of a gRPC-Web body; the whole body must parse."""
    out, off = [], 0
    while off < len(body):
        assert len(body) - off >= 5, body
        flags, n = struct.unpack(">BI", body[off:off + 5])
        assert len(body) - off - 5 >= n, body
        out.append((flags, bytes(body[off + 5:off + 5 + n])))
        off += 5 + n
    return out


def trailer_fields(payload):
    return dict(l.split(": ", 1) for l in payload.decode().split("\r\n") if l)


def check_echo(body, msg, server):
    fs = frames(body)
    assert [f for f, _ in fs] == [0, 0x80] and fs[0][1] == msg, fs
    t = trailer_fields(fs[1][1])
    assert t.get("grpc-status") == "0" and t.get("x-server") == server, t


def web_setup(h, name):
    """A grpcio server `name` behind an HTTP/1.1 + h2c listener: service
    users (h2c), and service none whose only instance has weight 0."""
    g = GrpcServer(h, name)
    lst = h2c_listener("g")             # HTTP/1.1 and h2c on one port
    lst["routes"] = [{"path_prefix": "/none.", "service": "none"},
                     {"path_prefix": "/", "service": "users"}]
    wg = h.waygate(listeners=[lst],
                   instances={"users": [g.instance()], "none": [g.instance("w0", weight=0)]},
                   services={"users": {"upstream": {"protocol": "h2c"}},
                             "none": {"upstream": {"protocol": "h2c"}}})
    return g, wg, wg.ports["g"]


def test_grpc_web_over_http1_and_h2_to_a_grpc_upstream():
    if not need_grpcio():
        return
    with Harness() as h:
        g, wg, port = web_setup(h, "web")
        msg = b"hello, grpc-web"
        web = [("Content-Type", "application/grpc-web+proto"), ("X-Grpc-Web", "1")]
        r = http_request(port, "POST", "/wg.Echo/One", headers=web, body=frame(msg),
                         timeout=slack(10))
        # grpcio answers application/grpc: application/grpc-web back
        assert r.status == 200 and r.header("Content-Type") == "application/grpc-web", r
        check_echo(r.body, msg, "web")
        # server streaming: the messages as they come, the trailer frame last
        r = http_request(port, "POST", "/wg.Echo/Slow", body=frame(b"tick"), timeout=slack(10),
                         headers=web + [("x-count", "3"), ("x-interval-ms", "20")])
        fs = frames(r.body)
        assert fs[:3] == [(0, b"tick")] * 3 and len(fs) == 4 and fs[3][0] == 0x80, fs
        assert trailer_fields(fs[3][1])["grpc-status"] == "0", fs
        # HTTP/2 client, plain application/grpc-web: no HTTP trailers, the frame instead
        c = Client(port)
        sid = c.request("/wg.Echo/One", method="POST", body=frame(msg * 3),
                        headers=[("content-type", "application/grpc-web"), ("x-grpc-web", "1")])
        resp = c.response(sid, timeout=slack(10))
        hd = dict(resp["headers"])
        assert resp["status"] == 200 and hd["content-type"] == "application/grpc-web", resp
        assert not resp["trailers"], resp
        check_echo(resp["body"], msg * 3, "web")
        # the upstream's Trailers-Only error (health of an unknown service:
        # NOT_FOUND) keeps grpc-status in the head
        r = http_request(port, "POST", "/grpc.health.v1.Health/Check", headers=web,
                         body=frame(b"\x0a\x04nope"), timeout=slack(10))
        assert r.status == 200 and r.header("grpc-status") == "5" and r.body == b"", r
        # waygate's own errors: no routable instance, over both protocols
        r = http_request(port, "POST", "/none.S/M", headers=web, body=frame(b"x"),
                         timeout=slack(10))
        assert r.status == 200 and r.header("grpc-status") == "14", r
        assert r.header("Content-Type") == "application/grpc-web", r
        resp = c.response(c.request("/none.S/M", method="POST", body=frame(b"x"),
                                    headers=[("content-type", "application/grpc-web")]),
                          timeout=slack(10))
        hd = dict(resp["headers"])
        assert hd.get("grpc-status") == "14" and hd["content-type"] == "application/grpc-web", hd
        c.close()
        # counted as gRPC calls
        wait_until(lambda: grpc_series(parse_metrics(get_metrics(wg)),
                                       "waygate_grpc_responses_total", service="users") ==
                   {"OK": 3, "NOT_FOUND": 1}, slack(5), "grpc_code counters of gRPC-Web calls")
