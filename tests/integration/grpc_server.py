#!/usr/bin/python3
"""A real gRPC server (Debian python3-grpcio) for the gRPC tests.

Runs under /usr/bin/python3 (where Debian's python3-grpcio lives), not the
interpreter of the test runner. Debian does not package grpc_health, so the
grpc.health.v1.Health service is a generic handler whose messages are
encoded by hand (HealthCheckRequest: field 1 string service;
HealthCheckResponse: field 1 enum status).

    grpc_server.py --control FILE [--cert CRT --key KEY] [--name NAME]

Prints "ready PORT" once serving on 127.0.0.1:PORT. FILE holds lines
"SERVICE STATUS" (SERVICE "-" = the empty name, the whole server), STATUS one
of SERVING, NOT_SERVING, SERVICE_UNKNOWN, or UNIMPLEMENTED / NOT_FOUND (the
call fails with that grpc status). It is re-read on every call; a service
not listed fails with NOT_FOUND, as grpc's own health service does. Every
Check call is appended to FILE.calls as one line (the service asked about).

Beside it, wg.Echo (raw bytes, no protobuf), one method per streaming kind,
each answer with trailing metadata "x-server: NAME":
    /wg.Echo/One    unary: the request message back
    /wg.Echo/Chat   bidi: every message back as it arrives
    /wg.Echo/Slow   every message back "x-count" times (metadata, default
                    10), "x-interval-ms" apart (default 200): a long stream
    /wg.Echo/Down   server streaming: the request is ASCII "COUNT SIZE
                    INTERVAL_MS [STATUS]"; COUNT messages of SIZE bytes
                    (byte i of each is (i * 7 + 1) & 0xFF), INTERVAL_MS
                    apart; after each one is handed to grpcio the number
                    sent so far is written to FILE.down (how far the server
                    got ahead of a slow reader); then, when STATUS (a
                    grpc.StatusCode name) is given, the call fails with it
                    and the message "down: STATUS" (in the trailers, after
                    the messages)
    /wg.Echo/Up     client streaming: reads every message (request metadata
                    "x-read-delay-ms: N" sleeps N ms after each one), then
                    answers ASCII "MESSAGES BYTES"
Every wg.Echo call appends its method name to FILE.echo when it starts.
"""

import argparse
import os
import sys
import threading
import time
from concurrent import futures

import grpc

SERVING = {"UNKNOWN": 0, "SERVING": 1, "NOT_SERVING": 2, "SERVICE_UNKNOWN": 3}


def varint(data, off):
    v, shift = 0, 0
    while True:
        b = data[off]
        off += 1
        v |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return v, off


def request_service(data):
    off, name = 0, b""
    while off < len(data):
        key, off = varint(data, off)
        if key == 0x0A:
            n, off = varint(data, off)
            name, off = data[off:off + n], off + n
        else:
            raise ValueError("unexpected field %d" % key)
    return name.decode()


def echo_handler(name, control):
    def tag(context, method):
        with open(control + ".echo", "a") as f:
            f.write(method + "\n")
        context.set_trailing_metadata((("x-server", name),))

    def one(request, context):
        tag(context, "One")
        return request

    def chat(requests, context):
        tag(context, "Chat")
        for m in requests:
            yield m

    def slow(requests, context):
        tag(context, "Slow")
        md = dict(context.invocation_metadata())
        count, pause = int(md.get("x-count", "10")), int(md.get("x-interval-ms", "200")) / 1000
        for m in requests:
            for _ in range(count):
                time.sleep(pause)
                yield m

    def note_down(n):
        tmp = control + ".down.%d" % threading.get_ident()     # calls run in parallel
        with open(tmp, "w") as f:
            f.write("%d\n" % n)
        os.rename(tmp, control + ".down")

    def down(request, context):
        tag(context, "Down")
        context.send_initial_metadata(())   # the head goes out before the first message
        words = request.decode().split()
        count, size, interval = (int(x) for x in words[:3])
        payload = bytes((i * 7 + 1) & 0xFF for i in range(size))
        for i in range(count):
            if i and interval:
                time.sleep(interval / 1000.0)
            yield payload
            note_down(i + 1)
        if len(words) > 3:
            context.abort(getattr(grpc.StatusCode, words[3]), "down: " + words[3])

    def up(requests, context):
        tag(context, "Up")
        context.send_initial_metadata(())   # the head goes out while the client streams
        delay = dict(context.invocation_metadata()).get("x-read-delay-ms")
        n = total = 0
        for m in requests:
            n += 1
            total += len(m)
            if delay:
                time.sleep(int(delay) / 1000.0)
        return ("%d %d" % (n, total)).encode()

    return grpc.method_handlers_generic_handler("wg.Echo", {
        "One": grpc.unary_unary_rpc_method_handler(one),
        "Chat": grpc.stream_stream_rpc_method_handler(chat),
        "Slow": grpc.stream_stream_rpc_method_handler(slow),
        "Down": grpc.unary_stream_rpc_method_handler(down),
        "Up": grpc.stream_unary_rpc_method_handler(up)})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--control", required=True)
    ap.add_argument("--cert")
    ap.add_argument("--key")
    ap.add_argument("--name", default="grpc")
    args = ap.parse_args()

    def states():
        out = {}
        with open(args.control) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 2:
                    out["" if parts[0] == "-" else parts[0]] = parts[1]
        return out

    def check(request, context):
        name = request_service(request)
        with open(args.control + ".calls", "a") as f:
            f.write((name or "-") + "\n")
        st = states().get(name, "NOT_FOUND")
        if st in SERVING:
            return bytes([0x08, SERVING[st]])
        context.abort(getattr(grpc.StatusCode, st), "health: %s" % st)

    handler = grpc.method_handlers_generic_handler(
        "grpc.health.v1.Health",
        {"Check": grpc.unary_unary_rpc_method_handler(check)})
    opts = [("grpc.max_receive_message_length", 64 << 20),
            ("grpc.max_send_message_length", 64 << 20)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=opts)
    server.add_generic_rpc_handlers((handler, echo_handler(args.name, args.control)))
    if args.cert:
        with open(args.cert, "rb") as f:
            crt = f.read()
        with open(args.key, "rb") as f:
            key = f.read()
        port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(key, crt)]))
    else:
        port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print("ready %d" % port, flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    sys.exit(main())
