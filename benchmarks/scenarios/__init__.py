"""Scenario registry of benchmarks/run (issue 10).

Each module exports NAME, TITLE and run(ctx, log) -> (markdown, errors),
where ctx is a _common.Ctx (build dir, runs, duration, smoke, targets).
They can be used on their own:

    import sys; sys.path.insert(0, "benchmarks")
    from scenarios import SCENARIOS, Ctx
    md, errors = SCENARIOS["tls"].run(Ctx("build", runs=3, duration=5))

benchmarks/run runs its own L7 keep-alive scenario first, then these, in
this order.
"""

import importlib

from ._common import Ctx, TARGETS  # noqa: F401

ORDER = ("l7_newconn", "l7_64k", "l4_iperf", "tls", "h2", "idle_memory", "discovery",
         "sync_100k", "policies", "grpc")
SCENARIOS = {name: importlib.import_module("." + name, __name__) for name in ORDER}


def run_all(names, ctx, log=print):
    """Runs the named scenarios in ORDER; returns (markdown sections, total errors)."""
    parts, errors = [], 0
    for name in ORDER:
        if name not in names:
            continue
        mod = SCENARIOS[name]
        log("== %s: %s" % (name, mod.TITLE))
        try:
            md, bad = mod.run(ctx, log)
        except Exception as e:             # one broken scenario must not hide the others
            md, bad = "failed: %s: %s" % (type(e).__name__, e), 1
            log("  " + md)
        errors += bad
        parts.append("## %s — %s\n\n%s\n" % (name, mod.TITLE, md))
    return "\n".join(parts), errors
