"""Edges of the control thread (DESIGN §3, §4): signals that arrive during
start-up, a start-up that fails half-way, and the listening sockets during a
graceful stop (once SIGTERM stops accepting they close, so that new clients
are refused or go to a sibling process instead of waiting in a backlog
nobody accepts from)."""

import errno
import signal
import socket

from wglib import Harness, Waygate, connect, name_via, recv_exact, run_waygate, slack, wait_until


def connectable(port):
    s = socket.socket()
    try:
        s.connect(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def test_sighup_as_soon_as_listening_is_a_reload():
    """A SIGHUP that arrives once the listener is connectable but before
    start-up finished (a deploy script reloading a just-started unit) is a
    reload, not death by the signal's default action."""
    with Harness() as h:
        a = h.backend("name", name="a")
        for _ in range(3):
            wg = Waygate(h, instances={"users": [a.instance()]}, wait_ready=False)
            h.waygates.append(wg)
            wg.start()
            wait_until(lambda: connectable(wg.port()), slack(10), "the listener",
                       interval=0.0005)
            wg.proc.signal(signal.SIGHUP)
            wait_until(lambda: "configuration reloaded" in wg.stderr_text() or not wg.alive(),
                       slack(10), "the reload")
            assert wg.alive(), "waygate died of an early SIGHUP (exit %s)" % wg.proc.returncode
            assert name_via(wg.port()) == "a"
            wg.proc.stop()


def test_address_in_use_exits_1_without_crashing():
    """A listener that cannot bind fails start-up with exit status 1 (the
    teardown of a half-started process must not crash)."""
    with Harness() as h:
        a = h.backend("name", name="a")
        wg = h.waygate(instances={"users": [a.instance()]})
        rc, out, err = run_waygate("-c", wg.config_path, timeout=slack(10))
        assert rc == 1, "exit status %d (negative: killed by a signal)\n%s" % (rc, err[-2000:])
        assert "Address already in use" in err, err
        assert name_via(wg.port()) == "a"
