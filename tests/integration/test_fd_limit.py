"""Out of file descriptors: waygate runs with RLIMIT_NOFILE 64 and 200
clients arrive at once. It serves what it can, does not spin (CPU < 10 %
of one core while saturated), and serves new clients once the crowd left.
"""

import select
import socket
import time

from wglib import SANITIZED, Harness, name_via, slack, wait_until

CLIENTS = 200


def open_clients(port, n):
    socks = []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        socks.append(s)
    return socks


def collect(socks, seconds):
    """Reads greetings for `seconds`; returns (served, closed) sets of
    socket indexes: served got "NAME\\n", closed got EOF or an error first."""
    served, closed = set(), set()
    bufs = {}
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pending = [s for i, s in enumerate(socks) if i not in served and i not in closed]
        if not pending:
            break
        readable, _, _ = select.select(pending, [], [], max(0.0, min(0.1, end - time.monotonic())))
        for s in readable:
            i = socks.index(s)
            try:
                data = s.recv(256)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                closed.add(i)
                continue
            if not data:
                closed.add(i)
                continue
            bufs[i] = bufs.get(i, b"") + data
            if b"\n" in bufs[i]:
                served.add(i)
    return served, closed


def test_fd_exhaustion_serves_recovers_and_does_not_spin():
    with Harness() as h:
        b = h.backend("name", name="n")
        wg = h.waygate(instances={"users": [b.instance()]}, rlimit_nofile=64)
        assert name_via(wg.port()) == "n"

        socks = open_clients(wg.port(), CLIENTS)
        try:
            served, closed = collect(socks, slack(3))
            print("of %d clients: %d served, %d closed, %d waiting"
                  % (CLIENTS, len(served), len(closed), CLIENTS - len(served) - len(closed)))
            assert len(served) >= 5, "only %d clients served under the fd limit" % len(served)
            assert wg.alive(), "waygate died under fd exhaustion: exit %s" % wg.proc.returncode

            # Saturated: the served clients hold their fds; the rest wait.
            cpu0, t0 = wg.cpu_seconds(), time.monotonic()
            more_served, more_closed = collect([s for s in socks], 3.0)
            cpu1, t1 = wg.cpu_seconds(), time.monotonic()
            usage = (cpu1 - cpu0) / (t1 - t0)
            print("CPU while saturated: %.1f%% of one core" % (usage * 100))
            if not SANITIZED:
                assert usage < 0.10, "waygate used %.0f%% CPU while out of fds" % (usage * 100)
        finally:
            for s in socks:
                s.close()

        # Everybody left: new clients are served again.
        wait_until(lambda: try_name(wg.port()), slack(10), "a new client to be served")
        for k in range(20):
            assert name_via(wg.port(), timeout=slack(5)) == "n", "client %d after recovery" % k
        assert wg.alive()


def try_name(port):
    try:
        return name_via(port, timeout=1.0) == "n"
    except (OSError, AssertionError):
        return False
