#!/usr/bin/env python3
"""Instructions (and syscalls) per request: a repeatable speed signal on a
noisy machine (not a test).

    python3 benchmarks/instructions.py [--build DIR] [--scenario l7|newconn|64k|tls|tlska|h2c|h2tls]
                                       [--seconds S] [--targets waygate,haproxy,nginx]

Each proxy runs under `valgrind --tool=callgrind` (one worker/thread, the
configs of benchmarks/configs) in front of the nginx-light backend. After a
warm-up the counters are zeroed (callgrind_control -z), wrk drives load for
S seconds (h2load -m10 for h2c and h2tls), the counters are dumped (callgrind_control -d): Ir of the dump /
requests wrk completed = user-space instructions per request, the proxy's
own code plus the libraries it calls (libevent, OpenSSL, libc); the kernel's
work is not in it. The dump files are kept (path printed) for
callgrind_annotate.
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
from scenarios._common import Ctx, Env, free_port, wait_port, wrk, LOAD_CPU, PROXY_CPU  # noqa

SCEN = {"l7": ("http", "/", []), "newconn": ("http", "/", ["Connection: close"]),
        "64k": ("http", "/64k", []), "tls": ("tls", "/", ["Connection: close"]),
        "tlska": ("tls", "/", []), "h2c": ("h2c", "/", []), "h2tls": ("h2tls", "/", [])}


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
    ap.add_argument("--targets", default="waygate,haproxy,nginx")
    ap.add_argument("--keep", default="/tmp/wg-callgrind")
    args = ap.parse_args()
    kind, path, headers = SCEN[args.scenario]
    os.makedirs(args.keep, exist_ok=True)
    ctx = Ctx(args.build)
    with Env(ctx) as env:
        tls_direct = free_port() if kind == "tls" else None
        load = h2load if kind.startswith("h2") else wrk
        bport = env.backend(tls_port=tls_direct)
        subst = {"BACKEND": bport}
        if kind in ("tls", "h2tls"):
            crt, key, pem = env.cert()
            subst.update(CRT=crt, KEY=key, PEM=pem)
        for target in args.targets.split(","):
            port = free_port()
            out = os.path.join(args.keep, "%s-%s.%%p" % (args.scenario, target))
            vg = ["valgrind", "--tool=callgrind", "--callgrind-out-file=" + out]
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
            scheme = "https" if kind in ("tls", "h2tls") else "http"
            url = "%s://127.0.0.1:%d%s" % (scheme, port, path)
            load(url, 10, 2, headers=headers)               # warm-up
            subprocess.run(["callgrind_control", "-z", str(p.pid)], capture_output=True)
            r = load(url, args.conns, args.seconds, headers=headers)
            subprocess.run(["callgrind_control", "-d", "measured", str(p.pid)], capture_output=True)
            env.stop(p)
            time.sleep(0.5)
            n = r["rps"] * args.seconds
            dumps = sorted(glob.glob(out.replace("%p", str(p.pid)) + "*"))
            ir = None
            for d in dumps:
                with open(d, errors="replace") as f:
                    text = f.read()
                if re.search(r"^desc: Trigger: dump measured", text, re.M):
                    m = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
                    ir = int(m.group(1)) if m else None
            print("%-8s %-8s %8.0f requests  %s instructions/request  (%s)" % (
                target, args.scenario, n, "%.0f" % (ir / n) if ir and n else "?", ", ".join(dumps)),
                flush=True)


if __name__ == "__main__":
    main()
