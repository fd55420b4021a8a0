"""Lifecycle on http listeners (DESIGN §3, §4): reloads under a wrk load,
routes switching for keep-alive clients, a fresh waygate that answers no 503
before it is ready, and SIGTERM during a long download."""

import re
import shutil
import signal
import socket
import subprocess
import threading
import time

from wglib import (Harness, Waygate, connect, free_port, read_http_response, slack,
                   wait_until, write_atomic, yaml_block)


def http_listener(routes):
    return {"name": "web", "mode": "http", "routes": routes}


def reload(wg, edit):
    cfg = wg.config_dict()
    edit(cfg)
    write_atomic(wg.config_path, yaml_block(cfg) + "\n")
    wg.proc.signal(signal.SIGHUP)


def reloads(wg):
    return wg.stderr_text().count("configuration reloaded")


def get(sock, path="/", host="x"):
    sock.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (path, host)).encode())
    return read_http_response(sock, timeout=5)


def test_twenty_reloads_during_wrk_no_failed_request():
    if not shutil.which("wrk"):
        raise AssertionError("wrk is missing: make deps")
    with Harness() as h:
        a, b = h.backend("http", name="a"), h.backend("http", name="b")
        wg = h.waygate(listeners=[http_listener([{"path_prefix": "/", "service": "users"}])],
                       instances={"users": [a.instance(), b.instance()]},
                       service_defaults={"health_check": {"type": "none"}})
        p = subprocess.Popen(["wrk", "-t1", "-c8", "-d6s", "http://127.0.0.1:%d/" % wg.port()],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            time.sleep(0.5)
            for k in range(20):
                reload(wg, lambda c: c["service_defaults"].update(retries=k % 3))
                wait_until(lambda: reloads(wg) == k + 1, slack(5), "reload %d" % (k + 1))
                time.sleep(0.1)
            out = p.communicate(timeout=30)[0].decode()
        finally:
            if p.poll() is None:
                p.kill()
        m = re.search(r"(\d+) requests in", out)
        assert m and int(m.group(1)) > 100, out
        assert "Socket errors" not in out, out
        assert "Non-2xx" not in out, out


def test_keepalive_client_sees_changed_route_on_next_request():
    with Harness() as h:
        a, b = h.backend("http", name="a"), h.backend("http", name="b")
        wg = h.waygate(listeners=[http_listener([{"path_prefix": "/", "service": "users"}])],
                       instances={"users": [a.instance()], "other": [b.instance()]},
                       service_defaults={"health_check": {"type": "none"}})
        with connect(wg.port()) as s:
            assert get(s).body.strip() == b"a"
            reload(wg, lambda c: c["listeners"][0].update(
                routes=[{"path_prefix": "/", "service": "other"}]))
            wait_until(lambda: reloads(wg) == 1, slack(5), "the reload")
            r = get(s)                  # same connection, next request
            assert r.body.strip() == b"b", r


def test_fresh_waygate_answers_no_503_before_ready():
    """Clients hammer the address before and while waygate starts (health
    probes on): connections are refused or wait, never answered 503."""
    with Harness() as h:
        a = h.backend("http", name="a")
        port = free_port()
        statuses, stop = [], threading.Event()

        def loop():
            while not stop.is_set():
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                        s.settimeout(5)
                        statuses.append(get(s).status)
                except (OSError, AssertionError):
                    time.sleep(0.002)
        t = threading.Thread(target=loop, daemon=True)
        t.start()
        try:
            wg = Waygate(h, listeners=[dict(http_listener([{"path_prefix": "/", "service": "users"}]),
                                            listen="127.0.0.1:%d" % port)],
                         instances={"users": [a.instance()]},
                         service_defaults={"health_check": {"type": "http", "interval": "1s"}})
            h.waygates.append(wg)
            wg.start()
            wait_until(lambda: len(statuses) >= 50, slack(10), "50 answers")
        finally:
            stop.set()
            t.join(10)
        assert 503 not in statuses, "503 before ready: %s" % statuses[:20]
        assert set(statuses) == {200}, statuses[:20]


def test_sigterm_lets_a_long_download_finish():
    with Harness() as h:
        a = h.backend("http", name="a")
        wg = h.waygate(listeners=[http_listener([{"path_prefix": "/", "service": "users"}])],
                       instances={"users": [a.instance()]}, shutdown_timeout="20s",
                       service_defaults={"health_check": {"type": "none"}})
        n = 64 * 1024 * 1024
        with connect(wg.port(), timeout=10) as s:
            s.sendall(b"GET /bytes?n=%d HTTP/1.1\r\nHost: x\r\n\r\n" % n)
            got = s.recv(65536)
            assert got.startswith(b"HTTP/1.1 200"), got[:100]
            wg.proc.signal(signal.SIGTERM)
            total = len(got) - got.index(b"\r\n\r\n") - 4
            s.settimeout(10)
            while total < n:
                time.sleep(0.001)       # a slow reader: the drain must wait for it
                chunk = s.recv(1 << 20)
                if not chunk:
                    break
                total += len(chunk)
            assert total == n, "download cut at %d of %d bytes" % (total, n)
        assert wg.proc.wait(timeout=slack(20)) == 0
