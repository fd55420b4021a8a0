#!/usr/bin/env python3
"""dashboard_shot — the picture behind `make dashboard-shot`.

    tests/tools/dashboard_shot.py --build DIR [--out docs/dashboard.png]

Starts sample backends and a waygate with the admin API (through the
integration tests' harness, which stops every process it started), gives the
dashboard something to show — traffic, a drained instance, an instance whose
health checks fail — and has headless Chromium screenshot the page once it
has polled /status a few times."""

import argparse
import json
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default=os.environ.get("WAYGATE_BUILD", "build"))
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "dashboard.png"))
    ap.add_argument("--size", default="1200,800")
    return ap.parse_args()


def start(h, wglib):
    names = [h.backend("name", name=n) for n in ("users-1", "users-2", "users-3", "orders-1")]
    dead = {"id": "orders-2", "address": "127.0.0.1", "port": wglib.free_port()}
    instances = {"users": [b.instance(b.name) for b in names[:3]],
                 "orders": [names[3].instance("orders-1"), dead]}
    probe = {"type": "tcp", "interval": "200ms", "timeout": "100ms"}
    return h.waygate(listeners=[{"name": "users-tcp", "mode": "tcp", "service": "users"},
                                {"name": "orders-tcp", "mode": "tcp", "service": "orders"}],
                     services={"users": {"balance": "least_conn"},
                               "orders": {"health_check": probe}},
                     instances=instances, log={"level": "warn", "access_log": "off"})


def health(wglib, wg, service, id):
    r = wglib.http_request(wg.admin_port, "GET", "/status?service=" + service)
    for inst in json.loads(r.body)["services"][service]["instances"]:
        if inst["id"] == id:
            return inst["health"]
    return None


def shoot(h, wg, chromium, out, size):
    env = dict(os.environ, DBUS_SESSION_BUS_ADDRESS="disabled:")
    cp = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                         "--disable-background-networking", "--disable-dev-shm-usage",
                         "--user-data-dir=" + h.path("chromium"), "--hide-scrollbars",
                         "--window-size=" + size, "--virtual-time-budget=4000",
                         "--screenshot=" + out, "http://127.0.0.1:%d/" % wg.admin_port],
                        stdin=subprocess.DEVNULL, capture_output=True, env=env, timeout=120)
    if cp.returncode != 0 or not os.path.exists(out):
        raise SystemExit("chromium failed (exit %d):\n%s" % (cp.returncode,
                                                           cp.stderr.decode()[-2000:]))


def main():
    args = parse_args()
    os.environ["WAYGATE_BUILD"] = os.path.abspath(args.build)
    sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
    import wglib
    chromium = shutil.which("chromium")
    if not chromium:
        raise SystemExit("chromium is not installed (Debian package chromium)")
    out = os.path.abspath(args.out)
    with wglib.Harness() as h:
        wg = start(h, wglib)
        r = wglib.http_request(wg.admin_port, "POST", "/services/users/instances/users-3/drain")
        assert r.status == 200, r
        wglib.wait_until(lambda: health(wglib, wg, "orders", "orders-2") == "unhealthy", 10,
                         "orders-2 to fail its health checks")
        with wglib.NameLoad(wg.port("users-tcp"), threads=2), \
                wglib.NameLoad(wg.port("orders-tcp"), threads=1):
            shoot(h, wg, chromium, out, args.size)
    print("wrote %s" % os.path.relpath(out))


if __name__ == "__main__":
    main()
