"""1 GiB through an http listener both ways at once (a streamed /echo), with
waygate's RSS bounded: bodies are never buffered whole. Checksums compare
what went in with what came out."""

import hashlib
import socket
import threading
import time

from test_http import start
from wglib import GIB, MIB, SANITIZED, Harness, connect, scaled


def block(k, size=MIB):
    seed = hashlib.sha256(b"%d" % k).digest()
    return (seed * (size // len(seed) + 1))[:size]


def test_one_gib_both_ways_rss_bounded():
    total = scaled(GIB, 64 * MIB)
    with Harness() as h:
        wg, _ = start(h)
        rss0 = wg.rss_kib()
        peak = [rss0]
        sent_hash = hashlib.blake2b()
        recv_hash = hashlib.blake2b()
        done = threading.Event()

        def sampler():
            while not done.is_set():
                peak[0] = max(peak[0], wg.rss_kib())
                time.sleep(0.05)

        with connect(wg.port(), timeout=60) as s:
            s.sendall(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % total)

            def sender():
                for k in range(total // MIB):
                    b = block(k % 64)
                    sent_hash.update(b)
                    s.sendall(b)

            threads = [threading.Thread(target=sender, daemon=True),
                       threading.Thread(target=sampler, daemon=True)]
            for t in threads:
                t.start()
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = s.recv(65536)
                assert chunk, head
                head += chunk
            head, _, rest = head.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200") and b"Content-Length: %d" % total in head, head
            got = len(rest)
            recv_hash.update(rest)
            while got < total:
                chunk = s.recv(1 << 20)
                assert chunk, "EOF after %d of %d" % (got, total)
                recv_hash.update(chunk)
                got += len(chunk)
            threads[0].join(60)
            done.set()
            threads[1].join(5)
        assert got == total and sent_hash.digest() == recv_hash.digest()
        if not SANITIZED:
            growth = peak[0] - rss0
            assert growth < 16 * 1024, "RSS grew by %d KiB (from %d)" % (growth, rss0)


def test_download_one_gib_rss_bounded():
    total = scaled(GIB, 64 * MIB)
    with Harness() as h:
        wg, _ = start(h)
        rss0 = wg.rss_kib()
        peak = rss0
        with connect(wg.port(), timeout=60) as s:
            s.sendall(b"GET /bytes?n=%d HTTP/1.1\r\nHost: a\r\n\r\n" % total)
            buf = b""
            while b"\r\n\r\n" not in buf:
                buf += s.recv(65536)
            head, _, rest = buf.partition(b"\r\n\r\n")
            assert b"Content-Length: %d" % total in head, head
            got, n = len(rest), 0
            while got < total:
                chunk = s.recv(1 << 20)
                assert chunk, "EOF after %d" % got
                got += len(chunk)
                n += 1
                if n % 256 == 0:
                    peak = max(peak, wg.rss_kib())
        assert got == total
        if not SANITIZED:
            assert peak - rss0 < 16 * 1024, (rss0, peak)


def send_queue(local_port, remote_port):
    """Bytes the kernel holds for the TCP socket local_port -> remote_port
    that its peer has not acknowledged (/proc/net/tcp's tx_queue, what `ss`
    shows as Send-Q), or None when there is no such socket."""
    with open("/proc/net/tcp") as f:
        for line in f.read().splitlines()[1:]:
            fields = line.split()
            if (int(fields[1].rsplit(":", 1)[1], 16) == local_port and
                    int(fields[2].rsplit(":", 1)[1], 16) == remote_port):
                return int(fields[4].split(":")[0], 16)
    return None


def unsent_to_a_client_that_reads_nothing(lowat):
    """waygate's Send-Q toward a client that asked for 64 MiB and reads
    none of it, once it stops growing."""
    with Harness() as h:
        wg, _ = start(h, http=None if lowat is None else {"tcp_notsent_lowat": lowat})
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        s.settimeout(10)
        try:
            s.connect(("127.0.0.1", wg.port()))
            s.sendall(b"GET /bytes?n=%d HTTP/1.1\r\nHost: a\r\n\r\n" % (64 * MIB))
            me = s.getsockname()[1]
            last, steady, deadline = -1, 0, time.monotonic() + 20
            while steady < 5 and time.monotonic() < deadline:
                time.sleep(0.1)
                q = send_queue(wg.port(), me)
                steady = steady + 1 if q == last else 0
                last = q
            assert steady >= 5, "Send-Q still moving after 20 s: %r" % last
            return last
        finally:
            s.close()


def test_tcp_notsent_lowat_bounds_what_waits_in_the_kernel():
    # The default 128k: what the client has not read stays in waygate (and
    # the upstream), not in the socket, a write at most beyond the mark.
    bounded = unsent_to_a_client_that_reads_nothing(None)
    unbounded = unsent_to_a_client_that_reads_nothing("0")
    assert bounded < 384 * 1024, (bounded, unbounded)
    assert unbounded > 2 * bounded, (bounded, unbounded)
