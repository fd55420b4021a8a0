"""TLS termination: full handshakes per second and keep-alive rps over TLS.

Every TLS server (the "direct" backend server block, waygate, HAProxy, nginx)
uses the same self-signed RSA-2048 certificate and allows TLS 1.2 and 1.3;
the proxies speak plain HTTP with keep-alive to the backend.

- handshakes: wrk -H "Connection: close": one request per connection and a
  full handshake each time. wrk never calls SSL_set_session, so no session is
  resumed (tickets are issued by the servers' defaults but never presented).
  Run at TLS 1.3 (wrk's default) and TLS 1.2 (the client is capped with an
  OPENSSL_CONF MaxProtocol = TLSv1.2; ECDHE-RSA-AES256-GCM-SHA384 is chosen).
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


def run(ctx, log=print):
    import tempfile
    fd, tls12 = tempfile.mkstemp(prefix="wg-tls12-", suffix=".cnf")
    with os.fdopen(fd, "w") as f:
        f.write(TLS12_CONF)
    env12 = dict(os.environ, OPENSSL_CONF=tls12)
    c = 10 if ctx.smoke else 50
    close = ["Connection: close"]
    variants = [("handshake TLS1.3 -c%d" % c, "/", {"conns": c, "headers": close}, len(SMALL_BODY)),
                ("handshake TLS1.2 -c%d" % c, "/", {"conns": c, "headers": close, "env": env12},
                 len(SMALL_BODY)),
                ("keep-alive TLS1.3 -c%d" % c, "/", {"conns": c}, len(SMALL_BODY))]
    if ctx.smoke:
        variants = variants[::2]
    try:
        rows = l7_matrix(ctx, "tls", variants, log)
    finally:
        os.unlink(tls12)
    return table(rows, WRK_COLS, "rps"), errors_of(rows)
