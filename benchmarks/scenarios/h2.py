"""HTTP/2 to the proxy (h2load), HTTP/1.1 keep-alive to the same nginx backend.

- h2 over TLS (ALPN h2; RSA-2048, TLS 1.3): h2load -c50 -m10 and -m1, tiny body;
  -c10 -m1 on /64k (64 KiB responses).
- h2c with prior knowledge: h2load -c50 -m10 and -m1.
HAProxy: `alpn h2,http/1.1` / `proto h2` on the bind; nginx: `http2` on the
listen line; waygate: the default http.protocols / `http.h2c: true`. h2load
runs on the load CPU, the proxy on its own (as every scenario). "direct" is
not measured: the backend speaks HTTP/1.1 only.
"""

import re
import subprocess

from ._common import (LOAD_CPU, Env, combine, errors_of, h2load_summary, measured, pinned,
                      start_target, table)

NAME = "h2"
TITLE = "HTTP/2 at the proxy (h2load), HTTP/1.1 to the backend"


def h2load(url, path, duration, clients=50, streams=10):
    argv = ["h2load", "-c%d" % clients, "-m%d" % streams, "-t1", "-D%d" % duration, url + path]
    out = subprocess.run(pinned(argv, LOAD_CPU), capture_output=True, text=True,
                         timeout=duration + 60).stdout
    r = h2load_summary(out)
    lat = re.search(r"time for request:\s+\S+\s+\S+\s+(\S+)", out)
    return {"rps": r["rps"], "bytes_per_s": r["bytes_per_s"], "errors": r["errors"],
            "p50": None, "p99": None,
            "mean": _ms(lat.group(1)) if lat else None}


def _ms(text):
    m = re.match(r"([\d.]+)(us|ms|s)$", text)
    return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)] if m else None


VARIANTS = {
    "h2tls": [("TLS -c50 -m10", "/", 50, 10), ("TLS -c50 -m1", "/", 50, 1),
              ("TLS -c10 -m1 /64k", "/64k", 10, 1)],
    "h2c": [("h2c -c50 -m10", "/", 50, 10), ("h2c -c50 -m1", "/", 50, 1)],
}


def run(ctx, log=print):
    rows = []
    targets = [t for t in ctx.targets if t != "direct"]
    for kind, variants in VARIANTS.items():
        if ctx.smoke:
            variants = variants[:1]
        with Env(ctx) as env:
            backend_port = env.backend()
            for target in targets:
                try:
                    url, proc, own = start_target(env, target, kind, backend_port)
                    h2load(url, "/", 1, clients=2, streams=2)          # serves h2, warms up
                except (RuntimeError, subprocess.TimeoutExpired) as e:
                    log("  %s %s: %s" % (target, kind, e))
                    rows += [(target, v[0], None) for v in variants]
                    continue
                try:
                    for label, path, c, m in variants:
                        samples = [measured(proc.pid, lambda: h2load(url, path, ctx.duration, c, m))
                                   for _ in range(ctx.runs)]
                        d = combine(samples)
                        if d.get("bytes_per_s"):
                            d["mibs"] = d["bytes_per_s"] / (1 << 20)
                        rows.append((target, label, d))
                        log("  %-8s %-20s %9.0f rps  cpu %3.0f%%  %5.1f us/req  rss %6.1f MiB%s"
                            % (target, label, d["rps"], d["cpu"], d.get("cpu_us") or 0, d["rss"],
                               "  errors %d" % d["errors"] if d["errors"] else ""))
                finally:
                    if own:
                        env.stop(own)
    order = [v[0] for vs in VARIANTS.values() for v in vs]
    rows.sort(key=lambda r: order.index(r[1]))
    cols = [("rps", "rps", "%.0f"), ("MiB/s", "mibs", "%.0f"), ("mean ms", "mean", "%.2f"),
            ("CPU %", "cpu", "%.0f"), ("CPU us/req", "cpu_us", "%.1f"), ("RSS MiB", "rss", "%.1f"),
            ("errors", "errors", "%d")]
    return table(rows, cols, "rps"), errors_of(rows)
