"""L7, 64 KiB responses over keep-alive (wrk -c50 GET /64k).

The backend sends a 65,536-byte file with sendfile; the proxies stream it to
the client through their buffers. Reported alongside rps: throughput in MiB/s.
"""

from ._common import WRK_COLS, BIG_SIZE, errors_of, l7_matrix, table

NAME = "l7_64k"
TITLE = "L7, 64 KiB responses, keep-alive"


def run(ctx, log=print):
    conns = [10] if ctx.smoke else [50]
    variants = [("-c%d /64k" % c, "/64k", {"conns": c}, BIG_SIZE) for c in conns]
    rows = l7_matrix(ctx, "http", variants, log)
    for _, _, d in rows:
        if d and d.get("bytes_per_s") is not None:
            d["mibs"] = d["bytes_per_s"] / (1 << 20)
    cols = WRK_COLS[:1] + [("MiB/s", "mibs", "%.0f")] + WRK_COLS[1:]
    return table(rows, cols, "rps"), errors_of(rows)
