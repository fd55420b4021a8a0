"""TLS termination: full handshakes per second and keep-alive rps over TLS.

Every TLS server (the "direct" backend server block, waygate, HAProxy, nginx)
uses the same self-signed RSA-2048 certificate (the ECDSA rows: one ECDSA
P-256 certificate) and allows TLS 1.2 and 1.3; the proxies speak plain HTTP
with keep-alive to the backend.

- full handshakes: 8 `openssl s_time -new` clients in parallel (-tls1_3, then
  -tls1_2), each connecting again and again with a new session every time
  (nothing resumed), one GET / HTTP/1.0 per connection. p50/p99: n/a.
- wrk -H "Connection: close" (TLS 1.3, and TLS 1.2 with the client capped by
  an OPENSSL_CONF MaxProtocol = TLSv1.2): also a connection per request, but
  wrk keeps its SSL object (SSL_clear), so it offers the last session again
  and resumes wherever the server accepts it (HAProxy and nginx issue tickets
  by default, waygate too): shown for reference, not the handshake figure.
- keep-alive: wrk -c50 over TLS 1.3, many requests per connection.
"""

import os

from ._common import WRK_COLS, SMALL_BODY, errors_of, l7_matrix, table

NAME = "tls"
TITLE = "TLS: full handshakes/s (one request per connection) and keep-alive rps"

TLS12_CONF = """openssl_conf = openssl_init
[openssl_init]
ssl_conf = ssl_sect
[ssl_sect]
system_default = system_default_sect
[system_default_sect]
MaxProtocol = TLSv1.2
"""


S_TIME_PROCS = 8


def s_time(version):
    """A runner: S_TIME_PROCS `openssl s_time -new` clients in parallel on the load
    CPU, each opening connection after connection with a full handshake (a new
    session every time: no ticket, no session id reused) and one GET each."""
    def runner(url, path, duration):
        import re
        import subprocess
        from ._common import LOAD_CPU, pinned
        hostport = url.split("://", 1)[1]
        procs = [subprocess.Popen(pinned(["openssl", "s_time", "-connect", hostport, "-new",
                                          version, "-time", str(duration), "-www", path],
                                         LOAD_CPU),
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for _ in range(S_TIME_PROCS)]
        conns, bad = 0, 0
        for p in procs:
            out = p.communicate(timeout=duration + 60)[0]
            m = re.search(r"(\d+) connections in ([\d.]+) real seconds", out)
            if m:
                conns += int(m.group(1))
            else:
                bad += 1
        return {"rps": conns / float(duration), "p50": None, "p99": None, "errors": bad}
    return runner


def run(ctx, log=print):
    import tempfile
    fd, tls12 = tempfile.mkstemp(prefix="wg-tls12-", suffix=".cnf")
    with os.fdopen(fd, "w") as f:
        f.write(TLS12_CONF)
    env12 = dict(os.environ, OPENSSL_CONF=tls12)
    c = 10 if ctx.smoke else 50
    close = ["Connection: close"]
    variants = [("full handshake TLS1.3 s_time x%d" % S_TIME_PROCS, "/",
                 {"runner": s_time("-tls1_3")}, len(SMALL_BODY)),
                ("full handshake TLS1.2 s_time x%d" % S_TIME_PROCS, "/",
                 {"runner": s_time("-tls1_2")}, len(SMALL_BODY)),
                ("wrk close TLS1.3 -c%d (resumes)" % c, "/", {"conns": c, "headers": close},
                 len(SMALL_BODY)),
                ("wrk close TLS1.2 -c%d (resumes)" % c, "/",
                 {"conns": c, "headers": close, "env": env12}, len(SMALL_BODY)),
                ("keep-alive TLS1.3 -c%d" % c, "/", {"conns": c}, len(SMALL_BODY))]
    ecdsa = [("ECDSA " + v[0],) + v[1:] for v in variants[:2]]
    if ctx.smoke:
        variants, ecdsa = [variants[0], variants[4]], ecdsa[:1]
    try:
        rows = l7_matrix(ctx, "tls", variants, log)
        rows += l7_matrix(ctx, "tls", ecdsa, log, cert="ecdsa")
    finally:
        os.unlink(tls12)
    return table(rows, WRK_COLS, "rps"), errors_of(rows)
