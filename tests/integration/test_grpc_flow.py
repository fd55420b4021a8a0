"""gRPC flow control through waygate (issue 17, DESIGN §15), real
python3-grpcio on both sides (grpc_client.py -> waygate -> grpc_server.py):
16 MiB messages both ways over h2c and TLS, and bounded buffering for a
client that reads a long streamed response slowly."""

from grpclib import GrpcServer, grpc_call, need_grpcio
from h2lib import h2c_listener
from wglib import Harness

MIB = 1 << 20


def tls_listener(pki, name="s"):
    crt, key = pki.leaf(name, ips=["127.0.0.1"])
    return {"name": name, "mode": "http", "routes": [{"path_prefix": "/", "service": "users"}],
            "tls": {"certificates": [{"cert": crt, "key": key}]}}


def pattern_hex(n=16):
    return bytes((i * 7 + 1) & 0xFF for i in range(n)).hex()


def test_grpc_16mib_messages_over_h2c_and_tls():
    """A 16 MiB unary request echoed back as a 16 MiB response, and a
    16 MiB message streamed by the server, through the h2c and the TLS
    listener. (They used to stall past ~8 MiB: the de-chunked response
    block kept each chunk's framing as a gap that only grew while grpcio
    kept the block from draining, until no chunk fitted.)"""
    if not need_grpcio():
        return
    import tlslib
    with Harness() as h:
        pki = tlslib.shared()
        g = GrpcServer(h, "g16")
        wg = h.waygate(listeners=[h2c_listener("g"), tls_listener(pki)],
                       instances={"users": [g.instance()]},
                       services={"users": {"upstream": {"protocol": "h2c"}}})
        for port, ca in ((wg.ports["g"], None), (wg.ports["s"], pki.ca)):
            target = "127.0.0.1:%d" % port
            r = grpc_call(target, "unary", "/wg.Echo/One", 16 * MIB, timeout=60, tls_ca=ca, wait=90)
            assert r["code"] == "OK" and r["replies"] == [16 * MIB], r
            assert r["first"] == pattern_hex(), r
            r = grpc_call(target, "server", "/wg.Echo/Down", 16 * MIB, count=1, timeout=60,
                          tls_ca=ca, wait=90)
            assert r["code"] == "OK" and r["replies"] == [16 * MIB], r
