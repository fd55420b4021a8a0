"""propagation — what the registry benchmarks (etcd_propagation.py,
zk_propagation.py) share: percentiles, and timing a registry write until the
first connection through waygate lands on the instance it named."""

import time

from wglib import name_via


def pct(values, p):
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100.0 * (len(v) - 1))))]


def time_until_routed(write, port, name):
    """Seconds from just before write() to the first connection to `port`
    answered by the backend called `name`."""
    t0 = time.perf_counter()
    write()
    while True:
        try:
            if name_via(port, timeout=2) == name:
                break
        except (OSError, AssertionError):
            pass
    return time.perf_counter() - t0


def report(what, ms, inner, inner_what):
    print("propagation, %s: p50 %.2f ms, p99 %.2f ms, max %.2f ms"
          % (what, pct(ms, 50), pct(ms, 99), max(ms)))
    if inner:
        print("inside waygate, %s, %d: p50 %.3f ms, p99 %.3f ms, max %.3f ms"
              % (inner_what, len(inner), pct(inner, 50), pct(inner, 99), max(inner)))
