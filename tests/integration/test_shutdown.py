"""SIGTERM (DESIGN §4): stop accepting, drain in-flight work bounded by
shutdown_timeout, exit 0."""

import signal
import socket
import time

from wglib import Harness, Waygate, connect, connectable, recv_exact, slack, wait_until


def test_sigterm_idle_exits_zero():
    with Harness() as h:
        b = h.backend("echo", name="e")
        wg = h.waygate(instances={"users": [b.instance()]}, shutdown_timeout="2s")
        t0 = time.monotonic()
        wg.proc.signal(signal.SIGTERM)
        rc = wg.proc.wait(timeout=slack(2) + 1)
        assert rc == 0, "exit status %d after SIGTERM" % rc
        print("idle shutdown took %.2fs" % (time.monotonic() - t0))


def test_sigterm_as_soon_as_listening_exits_zero():
    """A SIGTERM that arrives once the listener is connectable (start-up not
    finished yet, e.g. a supervisor stopping a just-started unit) still
    means a clean stop: exit 0, not death by the default action."""
    with Harness() as h:
        b = h.backend("echo", name="e")
        statuses = []
        for _ in range(5):
            wg = Waygate(h, instances={"users": [b.instance()]}, wait_ready=False)
            h.waygates.append(wg)
            wg.start()
            wait_until(lambda: connectable(wg.port()), slack(10), "the listener", interval=0.0005)
            wg.proc.signal(signal.SIGTERM)
            statuses.append(wg.proc.wait(timeout=slack(2) + 1))
        assert statuses == [0] * 5, "exit statuses after an early SIGTERM: %s (-15 = killed " \
            "by the signal's default action)" % statuses


def new_client_refused(port):
    """True if a new connection is refused or closed without service."""
    try:
        with connect(port, timeout=1.0) as s:
            s.sendall(b"ping")
            s.settimeout(1.0)
            return s.recv(4) == b""
    except OSError:
        return True


def test_sigterm_drains_open_connection_until_shutdown_timeout():
    """An open connection keeps working during the drain; new connections
    are not served; waygate exits 0 once shutdown_timeout has passed."""
    with Harness() as h:
        b = h.backend("echo", name="e")
        wg = h.waygate(instances={"users": [b.instance()]}, shutdown_timeout="2s")
        with connect(wg.port()) as s:
            s.sendall(b"hello")
            assert recv_exact(s, 5) == b"hello"
            t0 = time.monotonic()
            wg.proc.signal(signal.SIGTERM)
            wait_until(lambda: new_client_refused(wg.port()), slack(1.5),
                       "waygate to stop accepting after SIGTERM")
            if wg.alive():
                s.sendall(b"still there")
                assert recv_exact(s, 11, timeout=2) == b"still there"
            rc = wg.proc.wait(timeout=slack(2) + 1.5)
            took = time.monotonic() - t0
            assert rc == 0, "exit status %d after SIGTERM" % rc
            assert took >= 1.5, "exited after %.2fs with a connection still open " \
                "(shutdown_timeout 2s)" % took
            s.settimeout(2)
            try:
                rest = s.recv(100)
            except ConnectionResetError:
                rest = b""
            assert rest == b"", "data after waygate exited: %r" % rest


def test_sigterm_exits_as_soon_as_work_is_done():
    """With shutdown_timeout 10s, waygate exits right after the last open
    connection ends instead of waiting out the timeout."""
    with Harness() as h:
        b = h.backend("echo", name="e")
        wg = h.waygate(instances={"users": [b.instance()]}, shutdown_timeout="10s")
        s = connect(wg.port())
        s.sendall(b"x")
        assert recv_exact(s, 1) == b"x"
        t0 = time.monotonic()
        wg.proc.signal(signal.SIGTERM)
        time.sleep(0.5)
        assert wg.alive(), "waygate exited while a connection was open"
        s.shutdown(socket.SHUT_WR)
        s.settimeout(5)
        assert s.recv(1) == b"", "expected the echo backend's EOF"
        s.close()
        rc = wg.proc.wait(timeout=slack(3))
        took = time.monotonic() - t0
        assert rc == 0, "exit status %d" % rc
        assert took < slack(3.5), "took %.1fs" % took
