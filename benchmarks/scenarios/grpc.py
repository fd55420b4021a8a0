"""gRPC unary calls through the proxy (issue 17): HTTP/2 at both ends.

The backend is tests/tools/wg_grpc_backend (C, nghttp2, one thread, on the
load CPU): every call on a path it does not know is answered, once the
request ended, with one fixed message, framed, then grpc-status 0. Two of
them run: one with a 16-byte reply, one with a 1 MiB reply. Its DATA
frames are as large as the proxy's SETTINGS_MAX_FRAME_SIZE allows:
waygate allows a stream window (256 KiB); nginx's grpc_pass sends no such
setting, nor does HAProxy while tune.bufsize is 16 KiB (as here; it
allows tune.bufsize), so both get the 16 KiB default. That is each
proxy's own setting at work, as it would be with any backend that sends
frames as large as allowed. The backend writes those frames from where
the message is (no copy into nghttp2's frame buffer), so that the frame
size a proxy allows does not change what a call costs the backend beyond
its system calls and the kernel's copy.

h2load sends gRPC requests (POST, `content-type: application/grpc`,
`te: trailers`, the body a framed message from a file, `-d`), one thread on
the load CPU, `-c50 -m10`:

- tiny: a 16-byte request message, a 16-byte reply;
- 1 MiB: a 16-byte request, a 1 MiB reply; and a 1 MiB request with a 1 MiB
  reply (-c10 -m1: 1 MiB messages at -c50 -m10 put 500 MiB in flight);

with h2c (prior knowledge) at the edge, and h2 over TLS 1.3 (ALPN h2) for the
tiny call. waygate: `upstream.protocol: h2c`; nginx: `grpc_pass` to an
upstream with `keepalive`; HAProxy: `server ... proto h2` (connections
reused, `http-reuse always`). Within a variant all targets' proxies run
and the runs alternate between them, each run in a turned order; each
figure is the median of a target's runs. p50/p99 come from h2load's
per-request log (--log-file); CPU per call is the proxy's utime+stime over
the run / calls.
Ratios are waygate's to the better of nginx and HAProxy in that column
(rps: the higher; CPU per call and p99: the lower). "load CPU %" is how
busy the load CPU (h2load and the backend) was: where it is near 100 % the
load, not the proxy, bounded that row's rps, and only CPU per call compares
the proxies.
"""

import os
import subprocess

from ._common import (LOAD_CPU, Env, combine, errors_of, fmt, free_port, h2load_summary,
                      measured, pct, pinned)

NAME = "grpc"
TITLE = "gRPC unary calls (h2load), HTTP/2 to the C gRPC backend"
TARGETS = ("waygate", "haproxy", "nginx")
METHOD = "/bench.Bench/Unary"
BIG = 1 << 20

# (label, edge, reply size, request size, clients, streams)
VARIANTS = [
    ("h2c tiny -c50 -m10", "h2c", 16, 16, 50, 10),
    ("h2c 1MiB reply -c50 -m10", "h2c", BIG, 16, 50, 10),
    ("h2c 1MiB both -c10 -m1", "h2c", BIG, BIG, 10, 1),
    ("TLS tiny -c50 -m10", "h2tls", 16, 16, 50, 10),
]


def frame(n):
    """One gRPC message of n bytes, length-prefixed (uncompressed)."""
    return bytes([0]) + n.to_bytes(4, "big") + b"q" * n


def h2load(url, body, duration, clients, streams, log_path=None, rps=None):
    """rps: calls per second in all (h2load --rps per client), else as fast as it goes."""
    argv = ["h2load", "-c%d" % clients, "-m%d" % streams, "-t1", "-D%d" % duration,
            "-H", "content-type: application/grpc", "-H", "te: trailers", "-d", body]
    if rps:
        argv.append("--rps=%g" % (rps / clients))
    if log_path:
        argv += ["--log-file", log_path]
    argv.append(url + METHOD)
    out = subprocess.run(pinned(argv, LOAD_CPU), capture_output=True, text=True,
                         timeout=duration + 90).stdout
    s = h2load_summary(out)
    r = {"rps": s["rps"], "mibs": s["bytes_per_s"] / (1 << 20), "errors": s["errors"],
         "p50": None, "p99": None}
    if s["succeeded"] == 0:
        r["errors"] = max(r["errors"], 1)
    if log_path:
        lat = []
        with open(log_path) as f:
            for line in f:
                parts = line.split("\t")
                if len(parts) >= 3 and parts[1].startswith("2"):
                    lat.append(int(parts[2]) / 1000.0)
        os.unlink(log_path)
        if lat:
            r["p50"], r["p99"] = pct(lat, 50), pct(lat, 99)
    return r


def start_backend(env, size):
    """A wg_grpc_backend on the load CPU answering `size`-byte messages: its port."""
    tool = os.path.join(env.ctx.build, "wg_grpc_backend")
    port = free_port()
    env.start("grpc-backend-%d" % size, [tool, "--listen", "127.0.0.1:%d" % port,
                                         "--message-size", str(size), "--name", "bench",
                                         "--max-streams", "1000", "--ready-fd", "2"],
              port, LOAD_CPU)
    return port


def start_proxy(env, target, edge, backend_port):
    """(url base, process): `target` in front of backend_port, `edge` h2c or h2tls."""
    port = free_port()
    tls = edge == "h2tls"
    crt, key, pem = env.cert("rsa") if tls else (None, None, None)
    if target == "waygate":
        if tls:
            e = ('tls: { certificates: [ { cert: %s, key: %s } ], min_version: "1.2" }\n'
                 '    http: { client_idle_timeout: 300s }' % (crt, key))
        else:
            e = "http: { client_idle_timeout: 300s, h2c: true }"
        p = env.waygate("grpc.waygate.yaml", port, REG=env.registry(backend_port), EDGE=e)
    elif target == "haproxy":
        b = "ssl crt %s alpn h2" % pem if tls else "proto h2"
        p = env.haproxy("grpc.haproxy.cfg", port, BACKEND=backend_port, BIND=b)
    else:
        ssl = ("ssl_certificate %s; ssl_certificate_key %s; ssl_protocols TLSv1.2 TLSv1.3; "
               "ssl_session_cache off;" % (crt, key)) if tls else ""
        p = env.nginx("grpc.nginx.conf", port, BACKEND=backend_port,
                      LISTEN="ssl http2" if tls else "http2", SSL=ssl)
    return "%s://127.0.0.1:%d" % ("https" if tls else "http", port), p


def run(ctx, log=print):
    rows = []
    variants = VARIANTS[:1] if ctx.smoke else VARIANTS
    targets = [t for t in ctx.targets if t in TARGETS]
    with Env(ctx) as env:
        backends = {size: start_backend(env, size) for size in sorted({v[2] for v in variants})}
        bodies = {}
        for size in sorted({v[3] for v in variants}):
            with open(env.path("req-%d.bin" % size), "wb") as f:
                f.write(frame(size))
            bodies[size] = env.path("req-%d.bin" % size)
        for label, edge, reply, req, c, m in variants:
            # Every target's proxy runs for the whole variant and the runs
            # alternate between them (the order turning each run), so that
            # the box's drift, up to 30 % within minutes, falls on all of
            # them alike rather than on whichever ran last.
            procs, samples = {}, {}
            try:
                for target in targets:
                    try:
                        url, proc = start_proxy(env, target, edge, backends[reply])
                    except RuntimeError as e:
                        log("  %s %s: %s" % (target, label, e))
                        continue
                    procs[target] = (url, proc)
                    try:
                        w = h2load(url, bodies[req], 1, 2, 2)      # serves gRPC, warms up
                        if w["errors"]:
                            raise RuntimeError("%d failed calls in the warm-up" % w["errors"])
                        samples[target] = []
                    except (RuntimeError, subprocess.TimeoutExpired) as e:
                        log("  %s %s: %s" % (target, label, e))
                for run_i in range(ctx.runs):
                    live = [t for t in targets if t in samples]
                    turn = run_i % len(live) if live else 0
                    for target in live[turn:] + live[:turn]:
                        url, proc = procs[target]
                        try:
                            samples[target].append(measured(proc.pid, lambda: h2load(
                                url, bodies[req], ctx.duration, c, m, env.path("h2load.log"))))
                        except (RuntimeError, subprocess.TimeoutExpired) as e:
                            log("  %s %s: %s" % (target, label, e))
                            del samples[target]
            finally:
                for url, proc in procs.values():
                    env.stop(proc)
            for target in targets:
                if not samples.get(target):
                    rows.append((target, label, None))
                    continue
                d = combine(samples[target])
                rows.append((target, label, d))
                log("  %-8s %-26s %9.0f rps  p50 %6.2f  p99 %7.2f ms  cpu %3.0f%%  "
                    "%6.1f us/call  load %3.0f%%  rss %6.1f MiB%s"
                    % (target, label, d["rps"], d["p50"] or 0, d["p99"] or 0, d["cpu"],
                       d.get("cpu_us") or 0, d.get("load_cpu") or 0, d["rss"],
                       "  errors %d" % d["errors"] if d["errors"] else ""))
    order = [v[0] for v in VARIANTS]
    rows.sort(key=lambda r: (order.index(r[1]), TARGETS.index(r[0])))
    return grpc_table(rows), errors_of(rows)


COLS = [("rps", "rps", "%.0f"), ("MiB/s", "mibs", "%.0f"), ("p50 ms", "p50", "%.2f"),
        ("p99 ms", "p99", "%.2f"), ("CPU %", "cpu", "%.0f"), ("CPU us/call", "cpu_us", "%.1f"),
        ("load CPU %", "load_cpu", "%.0f"),
        ("RSS MiB", "rss", "%.1f"), ("errors", "errors", "%d")]


def grpc_table(rows):
    """The rows, then waygate's ratios to the better of HAProxy and nginx per variant."""
    hdr = ["target", "variant"] + [c[0] for c in COLS]
    lines = ["| " + " | ".join(hdr) + " |", "|" + "---|" * len(hdr)]
    by = {(t, v): d for t, v, d in rows}
    for t, v, d in rows:
        cells = [fmt(d.get(k), f) if d else "n/a" for _, k, f in COLS]
        lines.append("| %s | %s | %s |" % (t, v, " | ".join(cells)))
    lines += ["", "| variant | rps / best | CPU per call / best | p99 / best |", "|---|---|---|---|"]
    for v in dict.fromkeys(r[1] for r in rows):
        wg = by.get(("waygate", v))
        others = [by.get((t, v)) for t in ("haproxy", "nginx")]
        others = [o for o in others if o]
        if not wg or not others:
            continue

        def best(key, hi):
            vals = [o[key] for o in others if o.get(key)]
            return (max(vals) if hi else min(vals)) if vals else None

        cells = []
        for key, hi in (("rps", True), ("cpu_us", False), ("p99", False)):
            b = best(key, hi)
            cells.append("%.2f" % (wg[key] / b) if b and wg.get(key) is not None else "-")
        lines.append("| %s | %s |" % (v, " | ".join(cells)))
    return "\n".join(lines)
