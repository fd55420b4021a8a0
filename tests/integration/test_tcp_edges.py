"""tcp listener edge cases of the data path (DESIGN §3: workers never spin)."""

import time

from wglib import SANITIZED, Harness, connect, slack


def test_partial_proxy_header_does_not_spin():
    """A client that sends half a PROXY header and waits must not make its
    worker spin: the header is peeked (MSG_PEEK), so a level-triggered read
    event fires again at once for the same bytes, until the 10 s deadline."""
    with Harness() as h:
        a = h.backend("name", name="a")
        wg = h.waygate(listeners=[{"name": "t", "mode": "tcp", "service": "users",
                                   "proxy_protocol": True, "trusted_proxies": ["127.0.0.1"]}],
                       instances={"users": [a.instance()]})
        with connect(wg.port()) as s:
            s.sendall(b"PROXY TCP4 192.0.2.7 ")
            time.sleep(0.3)
            cpu0, t0 = wg.cpu_seconds(), time.monotonic()
            time.sleep(2.0)
            cpu = (wg.cpu_seconds() - cpu0) / (time.monotonic() - t0)
            # The rest of the header still completes it.
            s.sendall(b"198.51.100.1 40000 80\r\n")
            s.settimeout(slack(5))
            assert s.recv(64).startswith(b"a"), "not served after the header completed"
        if not SANITIZED:
            # Idle is ~0%; the spin measured 20-100% of a CPU (shared cores).
            assert cpu < 0.05, "waygate used %.0f%% of a CPU while a PROXY header was " \
                "incomplete" % (cpu * 100)
