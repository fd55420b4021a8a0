"""TCP relay: byte-exact bulk transfer, half-close both ways, a client that
stops reading (backpressure, RSS), client resets.

Bulk data is the deterministic stream of wg_backend/wg_blast, generated and
verified on the fly (never held in memory).
"""

import socket
import time

from wglib import (GIB, MIB, SANITIZED, Harness, connect, fnv1a, pattern, recv_exact,
                   recv_until_eof, reset_close, scaled, slack, tool, wait_until)


def one_backend(h, mode, **kw):
    b = h.backend(mode, name="up", **kw)
    wg = h.waygate(instances={"users": [b.instance()]})
    return b, wg


def all_upstream_closed(backend):
    return len(backend.closes()) == len(backend.accepts())


def test_relay_1gb_both_ways_byte_exact():
    size = scaled(GIB, 128 * MIB)
    with Harness() as h:
        b, wg = one_backend(h, "echo")
        start = time.monotonic()
        out = h.blast_ok(wg.port(), "--bytes", size, "--shutdown", "--expect-eof",
                         timeout=slack(120))
        secs = time.monotonic() - start
        print("relay %d bytes each way: %.2fs (%s)" % (size, secs, out.strip()))
        if not SANITIZED:
            assert secs < 30, "1 GiB each way took %.1fs" % secs
        wait_until(lambda: all_upstream_closed(b), slack(5), "the upstream connection to close")
        ours = max(b.closes(), key=lambda c: int(c["rx"]))
        assert int(ours["rx"]) == size and int(ours["tx"]) == size, ours


def test_half_close_client_to_backend():
    """Client sends, then shutdown(SHUT_WR): the backend sees EOF and still
    sends its answer, which the client reads before its own EOF."""
    data = pattern(MIB, seed=7)
    with Harness() as h:
        b, wg = one_backend(h, "sink")
        with connect(wg.port()) as s:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            answer = recv_until_eof(s, timeout=slack(10))
        assert answer == b"received %d fnv=%08x\n" % (len(data), fnv1a(data)), answer

        # The same through an echo backend with enough data to fill buffers.
        b2 = h.backend("echo", name="echo")
        wg.set_instances({"users": [b2.instance()]})
        wait_until(lambda: probe_echo(wg.port()), 5, "the echo backend in use")
        h.blast_ok(wg.port(), "--bytes", 16 * MIB, "--shutdown", "--expect-eof",
                   timeout=slack(30))


def probe_echo(port):
    with connect(port) as s:
        s.sendall(b"x")
        s.shutdown(socket.SHUT_WR)
        return recv_until_eof(s, timeout=5) == b"x"


def test_half_close_backend_to_client():
    """The backend sends, then shutdown(SHUT_WR): the client sees EOF and can
    still send; the backend receives all of it and then the client's EOF."""
    n_down = 100 * 1024
    up = pattern(256 * 1024, seed=3)
    with Harness() as h:
        b, wg = one_backend(h, "source", source=n_down)
        with connect(wg.port()) as s:
            got = recv_exact(s, n_down, timeout=slack(10))
            assert got == pattern(n_down), "source stream corrupted"
            s.settimeout(slack(5))
            assert s.recv(1) == b"", "expected EOF after the backend's shutdown"
            # Our direction is still open, through waygate to the backend.
            s.sendall(up)
            s.shutdown(socket.SHUT_WR)
            # Ours is the connection that received our bytes (the harness's
            # readiness probe makes one too, and may be accepted after ours).
            closed = wait_until(lambda: next((x for x in b.closes() if int(x["rx"]) == len(up)),
                                             None),
                                slack(5), "the backend to see the client's EOF")
            assert closed["reason"] == "done", closed
            assert int(closed["rx"]) == len(up), closed
            assert closed["rx_fnv"] == "%08x" % fnv1a(up), closed
            # And the client's side then ends completely.
            assert s.recv(1) == b""
        assert wg.alive()


def test_slow_reader_bounded_memory():
    """A client that stops reading while the backend sends 1 GiB: waygate
    must stop reading the backend (backpressure) — its RSS grows by less
    than 8 MiB — and the stream then completes byte-exact."""
    size = scaled(GIB, 128 * MIB)
    pause = 3000
    with Harness() as h:
        b, wg = one_backend(h, "source", source=size)
        # Warm up: one connection that reads a little and resets.
        h.blast_ok(wg.port(), "--recv", 4 * MIB, "--reset-after", 4 * MIB, timeout=slack(30))
        wait_until(lambda: all_upstream_closed(b), slack(5), "the warm-up upstream to close")
        baseline = wg.rss_kib()

        blast = h.start("blast-slow", [tool("wg_blast"), "--connect", "127.0.0.1:%d" % wg.port(),
                                       "--recv", str(size), "--expect-eof",
                                       "--pause-after", str(MIB), "--pause-ms", str(pause),
                                       "--timeout-ms", str(int(slack(120) * 1000))],
                        pipe_stdout=True)
        line = blast.read_line(timeout=slack(10))
        assert line.startswith("paused"), line
        peak = baseline
        end = time.monotonic() + (pause / 1000.0) * 0.9
        while time.monotonic() < end:
            peak = max(peak, wg.rss_kib())
            time.sleep(0.05)
        rc = blast.wait(timeout=slack(120))
        assert rc == 0, "wg_blast exit %d: %s" % (rc, blast.stderr_text())
        growth_mib = (peak - baseline) / 1024.0
        print("RSS baseline %d KiB, peak while paused %d KiB (+%.2f MiB)"
              % (baseline, peak, growth_mib))
        if not SANITIZED:
            assert growth_mib < 8, "RSS grew by %.1f MiB while the client was not reading" % (
                growth_mib)


def test_client_reset_mid_transfer():
    """Clients that reset (SO_LINGER 0) mid-transfer, in both directions,
    leave waygate serving, and their upstream connections get closed."""
    with Harness() as h:
        src = h.backend("source", name="src", source=scaled(GIB, 256 * MIB))
        echo = h.backend("echo", name="echo")
        wg = h.waygate(listeners=[{"name": "src", "mode": "tcp", "service": "src"},
                                  {"name": "echo", "mode": "tcp", "service": "echo"}],
                       instances={"src": [src.instance()], "echo": [echo.instance()]})
        for k in range(3):
            h.blast_ok(wg.port("src"), "--recv", 64 * MIB, "--reset-after", (k + 1) * 4 * MIB,
                       timeout=slack(30))
            h.blast_ok(wg.port("echo"), "--bytes", 256 * MIB, "--reset-after", (k + 1) * 4 * MIB,
                       timeout=slack(30))
            # A reset that races with data in flight the other way.
            with connect(wg.port("echo")) as s:
                s.sendall(pattern(64 * 1024))
                reset_close(s)
        assert wg.alive(), "waygate died: exit %s" % wg.proc.returncode
        wait_until(lambda: all_upstream_closed(src) and all_upstream_closed(echo), slack(5),
                   "every upstream connection of a reset client to close")
        # Still serving, byte-exact.
        h.blast_ok(wg.port("echo"), "--bytes", 8 * MIB, "--shutdown", "--expect-eof",
                   timeout=slack(30))
        h.blast_ok(wg.port("src"), "--recv", 8 * MIB, "--reset-after", 8 * MIB, timeout=slack(30))
        assert wg.alive()
