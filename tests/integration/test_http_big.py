"""1 GiB through an http listener both ways at once (a streamed /echo), with
waygate's RSS bounded: bodies are never buffered whole. Checksums compare
what went in with what came out."""

import hashlib
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
