"""Stopping a fleet replica (DESIGN §18): SIGTERM exits 0 even when the
teardown is slow, and a graceful stop takes the replica out of the fleet at
once (its lease is revoked) instead of after the TTL."""

import json
import os
import signal
import socket
import threading
import time

from etcdlib import EtcdHarness
from wglib import slack, wait_until


def fleet_names(wg):
    return sorted(r["name"] for r in (wg.status().get("fleet") or {}).get("replicas", []))


def shared_hc():
    return {"users": {"health_check": {"type": "tcp", "interval": "100ms", "timeout": "200ms",
                                       "healthy_threshold": 1, "unhealthy_threshold": 1,
                                       "shared": True}}}


def test_slow_teardown_with_a_fleet_exits_0():
    """The access log is a FIFO its reader stops reading: after `stopped`
    the teardown waits for the writer, well past the control thread's
    100 ms tick. The etcd registry's free then runs the loop once more;
    the tick ran there and read the freed workers (ASan:
    heap-use-after-free in check_stop; Release: a rare SIGSEGV)."""
    with EtcdHarness() as h:
        etcd = h.etcd()
        b = h.backend("name", name="a")
        etcd.client().put("/services/users/a",
                          json.dumps({"address": "127.0.0.1", "port": b.port}))
        fifo = h.path("fifo")
        os.mkfifo(fifo)
        rfd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)   # lets waygate open it
        done = threading.Event()
        try:
            wg = h.waygate_etcd(etcd, workers=1, services=shared_hc(),
                                fleet={"name": "r0", "ttl": "3s"},
                                log={"level": "info", "access_log": fifo})
            wait_until(lambda: fleet_names(wg) == ["r0"], slack(10), "registered")
            for _ in range(600):            # ~200 bytes a line: more than the pipe's 64 KiB
                with socket.create_connection(("127.0.0.1", wg.port()), timeout=5) as s:
                    s.settimeout(5)
                    s.recv(16)
            wg.proc.signal(signal.SIGTERM)
            wait_until(lambda: '"stopped"' in wg.proc.stderr_text() or None, slack(10),
                       "stopped logged")
            time.sleep(0.5)                 # the teardown waits on the full pipe

            def drain():
                while not done.is_set():
                    try:
                        if not os.read(rfd, 1 << 16):
                            time.sleep(0.01)
                    except BlockingIOError:
                        time.sleep(0.01)
            reader = threading.Thread(target=drain, daemon=True)
            reader.start()
            assert wg.proc.wait(slack(10)) == 0, wg.proc.stderr_text()[-3000:]
        finally:
            done.set()
            os.close(rfd)
