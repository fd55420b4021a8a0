#!/usr/bin/env python3
"""What one gRPC call costs each process: the proxy, the backend and h2load.

    benchmarks/grpc_cost.py [--variant N] [--rps R] [--rounds K] [--duration S]
                            [TARGET ...]

TARGET is `nginx`, `haproxy` or `LABEL=BUILD_DIR` (a waygate build; default
`waygate=build` and `nginx`). One backend of the grpc scenario's variant N
(benchmarks/scenarios/grpc.py VARIANTS, default 1: the 1 MiB reply) serves
every target; all targets run at once and the rounds alternate between
them, the order turning each round. --rps R holds the call rate fixed (0:
as fast as it goes), so that a process's CPU per call compares between
targets at the same load. Per round and target it prints the rps, the CPU
microseconds per call of the proxy, of the backend and of h2load, the load
CPU's busy %, the proxy's RSS; then the medians.

Where the load CPU is at 100 % the rps is bound by what a call costs the
backend and h2load together: this says which of them, and through which
proxy, pays more (results/grpc.md, 2026-12-04).
"""

import argparse
import os
import resource
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from scenarios import grpc                                  # noqa: E402
from scenarios._common import (LOAD_CPU, Ctx, Env, cpu_seconds, cpu_ticks,  # noqa: E402
                               rss_kib)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", type=int, default=1)
    ap.add_argument("--rps", type=float, default=0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("targets", nargs="*", default=["waygate=build", "nginx"])
    a = ap.parse_args()
    label, edge, reply, req, conns, streams = grpc.VARIANTS[a.variant]
    ctx = Ctx("build", runs=1, duration=a.duration)
    print("variant: %s, rps %s" % (label, a.rps or "as fast as it goes"))
    with Env(ctx) as env:
        bport = grpc.start_backend(env, reply)
        bpid = env.procs[-1].pid            # the backend just started (taskset execs it)
        body = env.path("req.bin")
        with open(body, "wb") as f:
            f.write(grpc.frame(req))
        procs = {}
        for t in a.targets:
            name, _, build = t.partition("=")
            if build:
                ctx.build = os.path.abspath(build)
            procs[t] = grpc.start_proxy(env, "waygate" if build else name, edge, bport)
            grpc.h2load(procs[t][0], body, 1, 2, 2)            # serves gRPC, warms up
        rows = {t: [] for t in a.targets}
        for r in range(a.rounds):
            turn = r % len(a.targets)
            for t in a.targets[turn:] + a.targets[:turn]:
                url, proc = procs[t]
                p0, b0, l0 = cpu_seconds(proc.pid), cpu_seconds(bpid), cpu_ticks(LOAD_CPU)
                h0 = resource.getrusage(resource.RUSAGE_CHILDREN)
                out = grpc.h2load(url, body, a.duration, conns, streams, rps=a.rps or None)
                h1 = resource.getrusage(resource.RUSAGE_CHILDREN)
                p1, b1, l1 = cpu_seconds(proc.pid), cpu_seconds(bpid), cpu_ticks(LOAD_CPU)
                calls = out["rps"] * a.duration or 1
                h2l = h1.ru_utime + h1.ru_stime - h0.ru_utime - h0.ru_stime
                row = (out["rps"], (p1 - p0) / calls * 1e6, (b1 - b0) / calls * 1e6,
                       h2l / calls * 1e6, 100.0 * (l1[0] - l0[0]) / max(1, l1[1] - l0[1]),
                       rss_kib(proc.pid) / 1024.0)
                rows[t].append(row)
                print("%-22s rps %7.0f  us/call: proxy %6.0f backend %6.0f h2load %6.0f  "
                      "load %3.0f%%  rss %4.0f MiB%s" % ((t,) + row + (
                          "  errors %d" % out["errors"] if out["errors"] else "",)), flush=True)
        for t in a.targets:
            m = [statistics.median(col) for col in zip(*rows[t])]
            print("median %-15s rps %7.0f  us/call: proxy %6.0f backend %6.0f h2load %6.0f  "
                  "load %3.0f%%  rss %4.0f MiB" % ((t,) + tuple(m)))


if __name__ == "__main__":
    main()
