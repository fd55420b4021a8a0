#!/usr/bin/python3
"""A real gRPC client (Debian python3-grpcio) for the gRPC tests; runs under
/usr/bin/python3. Messages are raw bytes (no protobuf codegen).

    grpc_client.py TARGET unary PATH SIZE [--count N] [--metadata K=V ...]
                                          [--timeout S] [--tls-ca FILE]
    grpc_client.py TARGET bidi PATH SIZE --count N [...]

unary: N calls, each sending SIZE bytes; bidi: one call streaming N messages
of SIZE bytes and reading replies. Prints one JSON line:
    {"code": "OK", "calls": N, "replies": [len, ...up to 10], "bytes": total,
     "first": "hex of the first 16 reply bytes", "details": "...",
     "trailing": {"key": "value"}, "servers": {"x-server trailer": unary calls}}
"""

import argparse
import json
import sys

import grpc


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("target")
    ap.add_argument("kind", choices=("unary", "bidi"))
    ap.add_argument("path")
    ap.add_argument("size", type=int)
    ap.add_argument("--count", type=int, default=1)
    ap.add_argument("--metadata", action="append", default=[])
    ap.add_argument("--timeout", type=float, default=10.0)
    ap.add_argument("--tls-ca")
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
    out = {"code": "OK", "calls": 0, "replies": [], "bytes": 0, "first": "", "details": "",
           "trailing": {}, "servers": {}}

    def note(reply):
        if not out["first"]:
            out["first"] = reply[:16].hex()
        if len(out["replies"]) < 10:
            out["replies"].append(len(reply))
        out["bytes"] += len(reply)

    try:
        if a.kind == "unary":
            call = ch.unary_unary(a.path)
            for _ in range(a.count):
                reply, c = call.with_call(payload, timeout=a.timeout, metadata=md or None)
                note(reply)
                out["calls"] += 1
                out["trailing"] = {k: v for k, v in (c.trailing_metadata() or ())}
                srv = out["trailing"].get("x-server")
                if srv:
                    out["servers"][srv] = out["servers"].get(srv, 0) + 1
        else:
            call = ch.stream_stream(a.path)
            it = call(iter([payload] * a.count), timeout=a.timeout, metadata=md or None)
            for reply in it:
                note(reply)
            out["calls"] = 1
            out["trailing"] = {k: v for k, v in (it.trailing_metadata() or ())}
    except grpc.RpcError as e:
        out["code"] = e.code().name
        out["details"] = e.details() or ""
        out["trailing"] = {k: (v if isinstance(v, str) else v.hex())
                           for k, v in (e.trailing_metadata() or ())}
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
