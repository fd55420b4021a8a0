"""L7, a new client connection per request (wrk -H "Connection: close").

wrk has no switch for one request per connection; with `Connection: close`
every proxy (and the backend, for "direct") closes after the response and wrk
reconnects, so each request pays accept + a fresh client-side connection. The
proxies keep their upstream connections alive (pooled) as in production.
"""

from ._common import WRK_COLS, SMALL_BODY, errors_of, l7_matrix, table

NAME = "l7_newconn"
TITLE = "L7, new connection per request (Connection: close)"


def run(ctx, log=print):
    conns = [10] if ctx.smoke else [50]
    variants = [("-c%d close" % c, "/", {"conns": c, "headers": ["Connection: close"]},
                 len(SMALL_BODY)) for c in conns]
    rows = l7_matrix(ctx, "http", variants, log)
    md = table(rows, WRK_COLS, "rps")
    return md, errors_of(rows)
