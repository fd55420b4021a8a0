"""Gateway policies on the keep-alive route (issue 19): JWT (RS256, ES256)
+ rate limit + one header rule, against waygate's and HAProxy's plain proxy.

Tokens are signed by the openssl command line with fresh keys. The goal of
the issue: waygate's CPU per request with the three policies at most 1.3x
its plain proxy CPU per request, and below HAProxy's plain proxy CPU per
request. Verified tokens are cached per worker by their bytes, so a client
that keeps one token pays one signature check.
"""

import base64
import json
import subprocess
import time

from ._common import (WRK_COLS, Env, check_get, combine, errors_of, free_port, measured,
                      start_target, table, wrk)

NAME = "policies"
TITLE = "L7 keep-alive with JWT (RS256 / ES256) + rate limit + header rule"


def _b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _token(env, alg, key):
    hdr = _b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    body = _b64(json.dumps({"sub": "bench-user", "iss": "https://id.bench", "aud": "bench",
                            "exp": int(time.time()) + 3600}).encode())
    signing = ("%s.%s" % (hdr, body)).encode()
    sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", key], input=signing,
                         capture_output=True, check=True).stdout
    if alg == "ES256":                  # DER -> r || s (JWS)
        der = subprocess.run(["openssl", "asn1parse", "-inform", "DER"], input=sig,
                             capture_output=True, check=True).stdout.decode()
        ints = [l.split(":")[-1] for l in der.splitlines() if "INTEGER" in l]
        sig = b"".join(bytes.fromhex(i.rjust(64, "0"))[-32:] for i in ints)
    return signing.decode() + "." + _b64(sig)


def _keys(env):
    rs, es = env.path("rs.key"), env.path("es.key")
    subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                    "-out", rs], check=True, capture_output=True)
    subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-out", es], check=True, capture_output=True)
    for k in (rs, es):
        subprocess.run(["openssl", "pkey", "-in", k, "-pubout", "-out", k + ".pub"], check=True)
    return rs, es


def run(ctx, log=print):
    conns = 10 if ctx.smoke else 50
    rows = []
    with Env(ctx) as env:
        backend_port = env.backend()
        rs, es = _keys(env)
        variants = [("plain", "/", []),
                    ("jwt RS256+rl+hdr", "/rs/", ["Authorization: Bearer " + _token(env, "RS256", rs)]),
                    ("jwt ES256+rl+hdr", "/es/", ["Authorization: Bearer " + _token(env, "ES256", es)])]
        for target in ("waygate", "haproxy"):
            if target not in ctx.targets:
                continue
            if target == "waygate":
                port = free_port()
                p = env.waygate("policies.waygate.yaml", port, REG=env.registry(backend_port),
                                RS_PUB=rs + ".pub", ES_PUB=es + ".pub")
                url, todo = "http://127.0.0.1:%d" % port, variants
            else:
                url, p, _ = start_target(env, "haproxy", "http", backend_port)
                todo = variants[:1]
            try:
                check_get(url, "/")
                if not ctx.smoke:
                    wrk(url + "/", conns=10, duration=1)
                for label, path, headers in todo:
                    samples = [measured(p.pid, lambda: wrk(url + path, conns=conns,
                                                           duration=ctx.duration, headers=headers))
                               for _ in range(ctx.runs)]
                    d = combine(samples)
                    rows.append((target, label, d))
                    log("  %-8s %-18s %9.0f rps  cpu %3.0f%%  %5.1f us/req%s"
                        % (target, label, d["rps"], d["cpu"], d.get("cpu_us") or 0,
                           "  errors %d" % d["errors"] if d["errors"] else ""))
            except Exception as e:
                log("  %s: %s" % (target, e))
                rows += [(target, v[0], None) for v in todo]
            finally:
                env.stop(p)
    md = table(rows, WRK_COLS, "cpu_us")
    plain = {t: d for t, v, d in rows if v == "plain" and d}
    notes = []
    for t, v, d in rows:
        if t == "waygate" and v != "plain" and d and plain.get("waygate"):
            notes.append("- %s: %.2fx waygate's plain CPU per request (goal <= 1.3x)%s"
                         % (v, d["cpu_us"] / plain["waygate"]["cpu_us"],
                            "; %.2fx HAProxy's plain" % (d["cpu_us"] / plain["haproxy"]["cpu_us"])
                            if plain.get("haproxy") else ""))
    return md + ("\n\n" + "\n".join(notes) if notes else ""), errors_of(rows)
