#!/usr/bin/env python3
"""Instructions (and syscalls) per request: a repeatable speed signal on a
noisy machine (not a test).

    python3 benchmarks/instructions.py [--build DIR] [--scenario l7|newconn|64k|tls|tlska|h2c|h2tls|hs13|hs12|grpc|grpc1m|grpc1m2]
                                       [--seconds S] [--targets waygate,haproxy,nginx]
                                       [--cert rsa|ecdsa] [--handshakes N] [--sni] [--syscalls]

Each proxy runs under `valgrind --tool=callgrind` (one worker/thread, the
configs of benchmarks/configs) in front of the nginx-light backend. After a
warm-up the counters are zeroed (callgrind_control -z), wrk drives load for
S seconds (h2load -m10 for h2c and h2tls), the counters are dumped (callgrind_control -d): Ir of the dump /
requests wrk completed = user-space instructions per request, the proxy's
own code plus the libraries it calls (libevent, OpenSSL, libc); the kernel's
work is not in it. The dump files are kept (path printed) for
callgrind_annotate.

hs13 / hs12 are full TLS handshakes (TLS 1.3 / 1.2): a fixed number
(--handshakes) of connections one after another, each a new session (nothing
resumed, as `openssl s_time -new`) with one GET; Ir / handshakes = user-space
instructions per full handshake, with the --cert key type (RSA-2048 or ECDSA
P-256) and with or without SNI. --syscalls runs the proxy natively instead
and counts its system calls per handshake (`perf stat -e
raw_syscalls:sys_enter` on its PID): the kernel side callgrind does not see;
with a load scenario (l7, h2c, h2tls, ...) it counts them per request.
"""

import argparse
import glob
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.dont_write_bytecode = True
from scenarios._common import (Ctx, Env, free_port, full_handshakes, wait_port, wrk,  # noqa
                               LOAD_CPU, PROXY_CPU)

# Uncompressed names: the measured part (.1) names every function itself.
CALLGRIND = ["valgrind", "--tool=callgrind", "--compress-strings=no"]

SCEN = {"l7": ("http", "/", []), "newconn": ("http", "/", ["Connection: close"]),
        "64k": ("http", "/64k", []), "tls": ("tls", "/", ["Connection: close"]),
        "tlska": ("tls", "/", []), "h2c": ("h2c", "/", []), "h2tls": ("h2tls", "/", []),
        "hs13": ("tls", "/", "1.3"), "hs12": ("tls", "/", "1.2"),
        "grpc": ("grpc", 16, 16), "grpc1m": ("grpc", 1 << 20, 16),
        "grpc1m2": ("grpc", 1 << 20, 1 << 20)}


def h2load(url, conns, seconds, headers=()):
    """h2load -mN on the load CPU (the h2 scenarios): {'rps'}."""
    from scenarios.h2 import h2load as run
    return run(url.rsplit("/", 1)[0], "/" + url.rsplit("/", 1)[1], seconds, clients=conns,
               streams=10)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.environ.get("WAYGATE_BUILD", "build"))
    ap.add_argument("--scenario", default="l7", choices=sorted(SCEN))
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--conns", type=int, default=50)
    ap.add_argument("--streams", type=int, default=0,
                    help="grpc*: h2load -m (default 10 for grpc, 1 for grpc1m)")
    ap.add_argument("--rps", type=float, default=0,
                    help="grpc*: a fixed call rate (h2load --rps), so that two builds under "
                         "callgrind see the same arrivals (else as fast as each goes)")
    ap.add_argument("--targets", default="waygate,haproxy,nginx")
    ap.add_argument("--keep", default="/tmp/wg-callgrind")
    ap.add_argument("--cert", default="rsa", choices=("rsa", "ecdsa"))
    ap.add_argument("--handshakes", type=int, default=200)
    ap.add_argument("--sni", action="store_true", help="handshakes send SNI bench.test")
    ap.add_argument("--syscalls", action="store_true",
                    help="run natively, count syscalls per handshake (hs*) or request with perf stat")
    ap.add_argument("--record", action="store_true",
                    help="with --syscalls: also perf record -g the proxy (KEEP/LABEL-TARGET.perf, KEEP/SCENARIO-TARGET.perf for load scenarios)")
    args = ap.parse_args()
    kind, path, headers = SCEN[args.scenario]
    hs = args.scenario.startswith("hs")
    os.makedirs(args.keep, exist_ok=True)
    ctx = Ctx(args.build)
    if kind == "grpc":
        return grpc_run(args, ctx, reply=path, request=headers)
    with Env(ctx) as env:
        tls_direct = free_port() if kind == "tls" else None
        load = h2load if kind.startswith("h2") else wrk
        bport = env.backend(tls_port=tls_direct)
        subst = {"BACKEND": bport}
        if kind in ("tls", "h2tls"):
            crt, key, pem = env.cert(args.cert)
            subst.update(CRT=crt, KEY=key, PEM=pem)
        for target in args.targets.split(","):
            port = free_port()
            label = args.scenario + ("-" + args.cert if hs else "")
            out = os.path.join(args.keep, "%s-%s.%%p" % (label, target))
            vg = CALLGRIND + ["--callgrind-out-file=" + out]
            if args.syscalls:
                vg = []
            if target == "waygate":
                conf = env.config("%s.waygate.yaml" % kind, "wg.yaml", PORT=port, ADMIN=free_port(),
                                  REG=env.registry(bport), **subst)
                argv = vg + [os.path.join(ctx.build, "waygate"), "-c", conf]
            elif target == "haproxy":
                conf = env.config("%s.haproxy.cfg" % kind, "ha.cfg", PORT=port, **subst)
                argv = vg + ["haproxy", "-db", "-f", conf]
            else:
                conf = env.config("%s.nginx.conf" % kind, "ng.conf", PORT=port, **subst)
                argv = vg + ["nginx", "-p", env.tmp, "-c", conf]
            p = env.start(target, argv, None, PROXY_CPU)
            if not wait_port(port, 60, p):
                print(target, "did not start:", env.log_tail(target))
                continue
            if hs:
                handshake_run(args, env, p, port, target, label, out)
                continue
            scheme = "https" if kind in ("tls", "h2tls") else "http"
            url = "%s://127.0.0.1:%d%s" % (scheme, port, path)
            load(url, 10, 2, headers=headers)               # warm-up
            if args.syscalls:
                load_syscalls(args, env, p,
                              lambda: load(url, args.conns, args.seconds, headers=headers), target)
                continue
            subprocess.run(["callgrind_control", "-z", str(p.pid)], capture_output=True)
            r = load(url, args.conns, args.seconds, headers=headers)
            ir, dumps = dump_and_stop(env, p, out)
            n = r["rps"] * args.seconds
            print("%-8s %-8s %8.0f requests  %s instructions/request  (%s)" % (
                target, args.scenario, n, "%.0f" % (ir / n) if ir and n else "?", ", ".join(dumps)),
                flush=True)


def perf_stop(env, p, perf, rec):
    """End perf stat (and perf record when running), stop the proxy; the
    event counts perf stat printed, by event name."""
    perf.send_signal(2)
    text = perf.communicate(timeout=30)[1]
    if rec:
        rec.send_signal(2)
        rec.wait(timeout=60)
    env.stop(p)
    return {ev: int(v) for v, ev in re.findall(r"^(\d+),[^,]*,([\w:-]+)", text, re.M)}


def load_syscalls(args, env, p, run, target, unit="request"):
    """--syscalls with a load scenario: the proxy runs natively; run() drives
    the load and returns its summary; prints system calls (perf stat
    raw_syscalls:sys_enter on the proxy's PID), context switches and CPU per
    request (or call), then stops the proxy."""
    perf = subprocess.Popen(["perf", "stat", "-x,", "-e", "raw_syscalls:sys_enter,context-switches",
                             "-p", str(p.pid)], stderr=subprocess.PIPE, text=True)
    cg = ["--call-graph", os.environ["WG_PERF_CALL_GRAPH"]] if os.environ.get("WG_PERF_CALL_GRAPH") else ["-g"]
    rec = subprocess.Popen(["perf", "record", "-q", "-F", "2000", *cg, "-o",
                            os.path.join(args.keep, "%s-%s.perf" % (args.scenario, target)),
                            "-p", str(p.pid)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL) if args.record else None
    time.sleep(0.5)
    c0 = cpu_split(p.pid)
    r = run()
    c1 = cpu_split(p.pid)
    counts = perf_stop(env, p, perf, rec)
    n = r["rps"] * args.seconds
    print("%-8s %-8s %8.0f rps  per %s: %s syscalls, %s context switches, CPU us user %s sys %s"
          % (target, args.scenario, r["rps"], unit,
             *["%.2f" % (counts[ev] / n) if n and ev in counts else "?"
               for ev in ("raw_syscalls:sys_enter", "context-switches")],
             *["%.1f" % ((b - a) / n * 1e6) if n else "?" for a, b in zip(c0, c1)]), flush=True)


def grpc_run(args, ctx, reply, request):
    """gRPC unary calls (the grpc scenario's configs and backend, h2c at the
    edge): instructions per call under callgrind, or with --syscalls, natively,
    system calls (and CPU) per call from perf stat on the proxy's PID."""
    from scenarios import grpc
    streams = args.streams if args.streams else 10 if reply < (1 << 20) else 1
    with Env(ctx) as env:
        bport = grpc.start_backend(env, reply)
        body = env.path("req.bin")
        with open(body, "wb") as f:
            f.write(grpc.frame(request))
        for target in args.targets.split(","):
            out = os.path.join(args.keep, "%s-%s.%%p" % (args.scenario, target))
            vg = [] if args.syscalls else CALLGRIND + ["--callgrind-out-file=" + out]
            port = free_port()
            if target == "waygate":
                conf = env.config("grpc.waygate.yaml", "wg.yaml", PORT=port, ADMIN=free_port(),
                                  REG=env.registry(bport),
                                  EDGE="http: { client_idle_timeout: 300s, h2c: true }")
                argv = vg + [os.path.join(ctx.build, "waygate"), "-c", conf]
            elif target == "haproxy":
                conf = env.config("grpc.haproxy.cfg", "ha.cfg", PORT=port, BACKEND=bport,
                                  BIND="proto h2")
                argv = vg + ["haproxy", "-db", "-f", conf]
            else:
                conf = env.config("grpc.nginx.conf", "ng.conf", PORT=port, BACKEND=bport,
                                  LISTEN="http2", SSL="")
                argv = vg + ["nginx", "-p", env.tmp, "-c", conf]
            p = env.start(target, argv, None, PROXY_CPU)
            if not wait_port(port, 60, p):
                print(target, "did not start:", env.log_tail(target))
                continue
            url = "http://127.0.0.1:%d" % port
            grpc.h2load(url, body, 2, 10, streams)                  # warm-up
            if args.syscalls:
                load_syscalls(args, env, p,
                              lambda: grpc.h2load(url, body, args.seconds, args.conns, streams,
                                                  rps=args.rps),
                              target, "call")
                continue
            subprocess.run(["callgrind_control", "-z", str(p.pid)], capture_output=True)
            r = grpc.h2load(url, body, args.seconds, args.conns, streams, rps=args.rps)
            n = r["rps"] * args.seconds
            ir, dumps = dump_and_stop(env, p, out)
            print("%-8s %-8s %8.0f calls  %s instructions/call  (%s)" % (
                target, args.scenario, n, "%.0f" % (ir / n) if ir and n else "?",
                ", ".join(dumps)), flush=True)


def dump_and_stop(env, p, out):
    """Dump p's counters as "measured", stop it: (Ir of that dump or None, dump files)."""
    subprocess.run(["callgrind_control", "-d", "measured", str(p.pid)], capture_output=True)
    env.stop(p)
    time.sleep(0.5)
    ir = None
    dumps = sorted(glob.glob(out.replace("%p", str(p.pid)) + "*"))
    for d in dumps:
        with open(d, errors="replace") as f:
            text = f.read()
        if re.search(r"^desc: Trigger: dump measured", text, re.M):
            m = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
            ir = int(m.group(1)) if m else None
    return ir, dumps


def cpu_split(pid):
    """(utime, stime) of pid in seconds."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / os.sysconf("SC_CLK_TCK"), int(fields[12]) / os.sysconf("SC_CLK_TCK")


def handshake_run(args, env, p, port, target, label, out):
    """Full handshakes: warm up, zero, args.handshakes of them, dump (or perf stat)."""
    version, sni = SCEN[args.scenario][2], "bench.test" if args.sni else None
    full_handshakes(port, 20, version, sni)                 # warm-up
    if args.syscalls:
        perf = subprocess.Popen(["perf", "stat", "-x,", "-e",
                                 "raw_syscalls:sys_enter,page-faults,context-switches", "-p",
                                 str(p.pid)], stderr=subprocess.PIPE, text=True)
        rec = subprocess.Popen(["perf", "record", "-q", "-F", "4000", "-g", "-o",
                                os.path.join(args.keep, "%s-%s.perf" % (label, target)), "-p",
                                str(p.pid)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL) if args.record else None
        time.sleep(0.5)
    else:
        subprocess.run(["callgrind_control", "-z", str(p.pid)], capture_output=True)
    c0 = cpu_split(p.pid)
    ok = full_handshakes(port, args.handshakes, version, sni)
    time.sleep(1.0)                                         # the proxy's closes
    c1 = cpu_split(p.pid)
    if args.syscalls:
        counts = perf_stop(env, p, perf, rec)
        per = ["%.2f" % (counts[ev] / ok) if ok and ev in counts else "?"
               for ev in ("raw_syscalls:sys_enter", "page-faults", "context-switches")]
        us = ["%.0f" % ((b - a) / ok * 1e6) if ok else "?" for a, b in zip(c0, c1)]
        print("%-8s %-12s %5d/%d handshakes  per handshake: %s syscalls, %s page faults, "
              "%s context switches, CPU us user %s sys %s"
              % (target, label + ("-sni" if sni else ""), ok, args.handshakes, per[0], per[1],
                 per[2], us[0], us[1]), flush=True)
        return
    ir, dumps = dump_and_stop(env, p, out)
    print("%-8s %-12s %5d/%d handshakes  %s instructions/handshake  (%s)" % (
        target, label + ("-sni" if sni else ""), ok, args.handshakes,
        "%.0f" % (ir / ok) if ir and ok else "?", ", ".join(dumps)), flush=True)


if __name__ == "__main__":
    main()
