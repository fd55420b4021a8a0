"""L4 TCP bulk throughput: iperf3 through a TCP relay.

One iperf3 server (on the load CPU) is the backend; the client (load CPU too)
sends for ctx.duration seconds, one stream, through: nothing (direct), a
waygate `mode: tcp` listener (splice through a pipe per direction), HAProxy
`mode tcp` (option splice-auto), and nginx's stream module (n/a when the
Debian package libnginx-mod-stream is not installed). iperf3's control
connection goes through the proxy too. Reported: received Gbit/s (median),
the proxy's CPU and RSS.
"""

import json
import subprocess
import time

from ._common import (LOAD_CPU, Env, combine, free_port, measured, nginx_has_stream, pinned,
                      table)

NAME = "l4_iperf"
TITLE = "L4 TCP bulk throughput (iperf3, 1 stream)"


def iperf(port, duration, reverse=False):
    """One iperf3 run. iperf3's server takes one test at a time and, on a
    busy box, may still be closing the previous one when the next connects
    ("the server is busy running a test"): such a refusal is tried again,
    a few times, half a second apart; any other failure counts as an error."""
    argv = ["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(duration), "-J"]
    if reverse:
        argv.append("-R")
    for attempt in range(4):
        cp = subprocess.run(pinned(argv, LOAD_CPU), capture_output=True, text=True,
                            timeout=duration + 30)
        try:
            j = json.loads(cp.stdout)
        except ValueError:
            return {"gbps": None, "errors": 1}
        if "busy" in str(j.get("error", "")) and attempt < 3:
            time.sleep(0.5)
            continue
        try:
            bps = j["end"]["sum_received"]["bits_per_second"]
        except KeyError:
            return {"gbps": None, "errors": 1}
        return {"gbps": bps / 1e9, "errors": 0}
    return {"gbps": None, "errors": 1}


def run(ctx, log=print):
    rows = []
    duration = 1 if ctx.smoke else ctx.duration
    with Env(ctx) as env:
        sport = free_port()
        server = env.start("iperf3", ["iperf3", "-s", "-p", str(sport)], sport, LOAD_CPU)
        for target in ctx.targets:
            own = None
            if target == "direct":
                port, proc = sport, server
            elif target == "nginx" and not nginx_has_stream():
                log("  nginx: no stream module (apt-get install libnginx-mod-stream): n/a")
                rows += [(target, v, None) for v in ("client->server", "server->client")]
                continue
            else:
                port = free_port()
                subst = {"BACKEND": sport}
                if target == "waygate":
                    own = env.waygate("tcp.waygate.yaml", port, REG=env.registry(sport), **subst)
                elif target == "haproxy":
                    own = env.haproxy("tcp.haproxy.cfg", port, **subst)
                else:
                    own = env.nginx("tcp.nginx.conf", port, **subst)
                proc = own
            try:
                for label, rev in (("client->server", False), ("server->client", True)):
                    samples = [measured(proc.pid, lambda: iperf(port, duration, rev))
                               for _ in range(ctx.runs)]
                    d = combine(samples)
                    rows.append((target, label, d))
                    log("  %-8s %-15s %6.2f Gbit/s  cpu %3.0f%%  rss %5.1f MiB" % (
                        target, label, d["gbps"] or 0, d["cpu"], d["rss"]))
            finally:
                if own:
                    env.stop(own)
    rows.sort(key=lambda r: r[1])
    cols = [("Gbit/s", "gbps", "%.2f"), ("CPU %", "cpu", "%.0f"), ("RSS MiB", "rss", "%.1f"),
            ("errors", "errors", "%d")]
    md = table(rows, cols, "gbps")
    md += ("\n\nCPU of \"direct\" is the iperf3 server's. The client and the server share "
           "the load CPU, so the proxies' ceiling is the load side as much as their own.")
    return md, sum((d or {}).get("errors", 0) for _, _, d in rows)
