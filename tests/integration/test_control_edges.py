"""Edges of the control thread (DESIGN §3, §4): signals that arrive during
start-up, a start-up that fails half-way, and the listening sockets during a
graceful stop (once SIGTERM stops accepting they close, so that new clients
are refused or go to a sibling process instead of waiting in a backlog
nobody accepts from)."""

import errno
import signal
import socket

from wglib import (Harness, Waygate, connect, connectable, name_via, recv_exact, run_waygate,
                   slack, wait_until, write_atomic, yaml_block)


def refused(port):
    """True when a new connection is refused outright (ECONNREFUSED)."""
    s = socket.socket()
    s.settimeout(1.0)
    try:
        s.connect(("127.0.0.1", port))
        return False
    except OSError as e:
        return e.errno == errno.ECONNREFUSED
    finally:
        s.close()


def test_sigterm_closes_listeners_while_draining_with_many_idle_workers():
    """Idle workers exit at once on SIGTERM. Each must still let go of its
    listening sockets, or none of them ever closes and new clients hang in
    the backlog for the whole drain. Repeated: the worker exit races the
    control thread's removal messages."""
    with Harness() as h:
        b = h.backend("echo", name="e")
        for round in range(3):
            wg = h.waygate(instances={"users": [b.instance()]}, workers=8,
                           shutdown_timeout="30s")
            with connect(wg.port()) as s:
                s.sendall(b"hello")
                assert recv_exact(s, 5) == b"hello"
                wg.proc.signal(signal.SIGTERM)
                wait_until(lambda: refused(wg.port()), slack(3),
                           "round %d: new connections refused while one drains" % round)
                s.sendall(b"still")
                assert recv_exact(s, 5) == b"still"
            assert wg.proc.wait(timeout=slack(5)) == 0


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


def test_sighup_while_draining_does_not_reopen_listeners():
    """A reload during the graceful stop must not bind the listeners again
    (to workers that no longer accept): new clients stay refused."""
    with Harness() as h:
        b = h.backend("echo", name="e")
        wg = h.waygate(instances={"users": [b.instance()]}, shutdown_timeout="30s")
        with connect(wg.port()) as s:
            s.sendall(b"hello")
            assert recv_exact(s, 5) == b"hello"
            wg.proc.signal(signal.SIGTERM)
            wait_until(lambda: refused(wg.port()), slack(3), "new connections refused")
            wg.proc.signal(signal.SIGHUP)
            wait_until(lambda: "reload" in wg.stderr_text().split("stopping: draining", 1)[1],
                       slack(5), "the SIGHUP to be handled")
            for _ in range(5):
                assert refused(wg.port()), "a new connection was accepted into a backlog " \
                    "after a reload during the drain"
            s.sendall(b"still")
            assert recv_exact(s, 5) == b"still"


def test_many_workers_all_accept():
    """Every worker a config may ask for (up to 1024) must serve: a worker
    that could not start (no reclaim slot) still owned its SO_REUSEPORT
    socket, so its share of new connections hung forever."""
    with Harness() as h:
        a = h.backend("name", name="a")
        wg = h.waygate(instances={"users": [a.instance()]}, workers=600)
        wait_until(lambda: "waygate started" in wg.stderr_text(), slack(10), "start-up")
        assert "too many reclaim readers" not in wg.stderr_text()
        hung = 0
        for _ in range(40):
            try:
                # A slow start of 600 threads on 2 cores delays, never loses.
                assert name_via(wg.port(), timeout=slack(3.0)) == "a"
            except (OSError, AssertionError):
                hung += 1
        assert hung == 0, "%d of 40 connections not served with 600 workers" % hung


def served(port):
    try:
        with connect(port, timeout=slack(2)) as s:
            s.sendall(b"z")
            return recv_exact(s, 1, timeout=slack(2)) == b"z"
    except (OSError, AssertionError):
        return False


def test_reload_applies_global_max_connections_to_existing_listeners():
    """The global max_connections is reloadable (docs/operations.md lists
    what needs a restart, and it is not there): a listener whose address is
    unchanged must apply the new limit, not the one it was bound with."""
    with Harness() as h:
        b = h.backend("echo", name="e")
        wg = h.waygate(instances={"users": [b.instance()]}, max_connections=2)
        held = []

        def hold_one():         # the start-up probe may still count for a moment
            s = connect(wg.port())
            try:
                s.sendall(b"x")
                if recv_exact(s, 1) == b"x":
                    held.append(s)
                    return True
            except (OSError, AssertionError):
                pass
            s.close()
            return False
        for _ in range(2):
            wait_until(hold_one, slack(5), "a connection served")
        assert not served(wg.port()), "a third connection served with max_connections 2"
        cfg = wg.config_dict()
        cfg["max_connections"] = 10
        write_atomic(wg.config_path, yaml_block(cfg) + "\n")
        wg.proc.signal(signal.SIGHUP)
        wait_until(lambda: "configuration reloaded" in wg.stderr_text(), slack(5), "the reload")
        assert served(wg.port()), "a third connection refused after raising max_connections to 10"
        for s in held:
            s.close()
