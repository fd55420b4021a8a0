#!/usr/bin/python3
"""A real gRPC client (Debian python3-grpcio) for the gRPC tests; runs under
/usr/bin/python3. Messages are raw bytes (no protobuf codegen).

    grpc_client.py TARGET unary PATH SIZE [--count N] [--metadata K=V ...]
                                          [--timeout S] [--tls-ca FILE]
    grpc_client.py TARGET bidi|server|client PATH SIZE --count N [...]
                   [--interval-ms MS] [--read-delay-ms MS] [--announce]

unary: N calls, each sending SIZE bytes; bidi: one call streaming N messages
of SIZE bytes and reading replies; server: one server-streaming call whose
request is "N SIZE MS" (grpc_server.py's /wg.Echo/Down: N messages of SIZE
bytes, MS apart); client: one client-streaming call of N messages of SIZE
bytes, one reply. --interval-ms: the pause between the messages sent (bidi,
client); --read-delay-ms: the pause after each reply read; --announce:
print "reply" once the first reply arrived (a test then acts mid-call).
Prints one JSON line at the end:
    {"code": "OK", "calls": N, "replies": [len, ...up to 10], "bytes": total,
     "count": replies, "first": "hex of the first 16 reply bytes",
     "details": "...", "trailing": {"key": "value"}, "initial": {...},
     "servers": {"x-server trailer": unary calls}, "seconds": wall time}
"""

import argparse
import json
import sys
import time

import grpc


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("target")
    ap.add_argument("kind", choices=("unary", "bidi", "server", "client"))
    ap.add_argument("path")
    ap.add_argument("size", type=int)
    ap.add_argument("--count", type=int, default=1)
    ap.add_argument("--metadata", action="append", default=[])
    ap.add_argument("--timeout", type=float, default=10.0)
    ap.add_argument("--tls-ca")
    ap.add_argument("--interval-ms", type=int, default=0)
    ap.add_argument("--read-delay-ms", type=int, default=0)
    ap.add_argument("--announce", action="store_true")
    a = ap.parse_args()
    md = [tuple(kv.split("=", 1)) for kv in a.metadata]
    # replies up to 64 MiB (grpcio's default limit is 4 MiB)
    opts = [("grpc.max_receive_message_length", 64 << 20),
            ("grpc.max_send_message_length", 64 << 20)]
    if a.tls_ca:
        with open(a.tls_ca, "rb") as f:
            ch = grpc.secure_channel(a.target, grpc.ssl_channel_credentials(f.read()), options=opts)
    else:
        ch = grpc.insecure_channel(a.target, options=opts)
    payload = bytes((i * 7 + 1) & 0xFF for i in range(a.size))
    out = {"code": "OK", "calls": 0, "replies": [], "bytes": 0, "count": 0, "first": "",
           "details": "", "trailing": {}, "initial": {}, "servers": {}, "seconds": 0.0}
    t0 = time.monotonic()

    def note(reply):
        if not out["first"]:
            out["first"] = reply[:16].hex()
            if a.announce:
                print("reply", flush=True)
        if len(out["replies"]) < 10:
            out["replies"].append(len(reply))
        out["bytes"] += len(reply)
        out["count"] += 1
        if a.read_delay_ms:
            time.sleep(a.read_delay_ms / 1000.0)

    def messages():
        for i in range(a.count):
            if i and a.interval_ms:
                time.sleep(a.interval_ms / 1000.0)
            yield payload

    def metadata(pairs):
        return {k: (v if isinstance(v, str) else v.hex()) for k, v in (pairs or ())}

    kw = {"timeout": a.timeout, "metadata": md or None}
    try:
        if a.kind == "unary":
            call = ch.unary_unary(a.path)
            for _ in range(a.count):
                reply, c = call.with_call(payload, **kw)
                note(reply)
                out["calls"] += 1
                out["initial"] = metadata(c.initial_metadata())
                out["trailing"] = metadata(c.trailing_metadata())
                srv = out["trailing"].get("x-server")
                if srv:
                    out["servers"][srv] = out["servers"].get(srv, 0) + 1
        elif a.kind == "client":
            reply, c = ch.stream_unary(a.path).with_call(messages(), **kw)
            note(reply)
            out["calls"] = 1
            out["initial"] = metadata(c.initial_metadata())
            out["trailing"] = metadata(c.trailing_metadata())
        else:
            if a.kind == "server":
                request = ("%d %d %d" % (a.count, a.size, a.interval_ms)).encode()
                it = ch.unary_stream(a.path)(request, **kw)
            else:
                it = ch.stream_stream(a.path)(messages(), **kw)
            for reply in it:
                if not out["initial"]:
                    out["initial"] = metadata(it.initial_metadata())
                note(reply)
            out["calls"] = 1
            out["trailing"] = metadata(it.trailing_metadata())
    except grpc.RpcError as e:
        out["code"] = e.code().name
        out["details"] = e.details() or ""
        out["trailing"] = metadata(e.trailing_metadata())
    out["seconds"] = round(time.monotonic() - t0, 3)
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
