"""HTTP timeouts are deadlines (DESIGN §6): client_header_timeout from the
first byte (a byte a second does not extend it), idle and body timeouts,
and slow clients never delay the others."""

import socket
import threading
import time

from test_http import raw_exchange, start, status_of
from wglib import SANITIZED, Blackhole, Harness, connect, http_request, recv_until_eof, slack


def slow_send(sock, data, interval, stop):
    """One byte every `interval` seconds until `stop` is set or the peer closes."""
    for k in range(len(data)):
        if stop.is_set():
            return
        try:
            sock.sendall(data[k:k + 1])
        except OSError:
            return
        time.sleep(interval)


def test_slow_header_gets_408_at_the_deadline():
    with Harness() as h:
        wg, _ = start(h, http={"client_header_timeout": "2s"})
        with connect(wg.port(), timeout=15) as s:
            stop = threading.Event()
            t0 = time.monotonic()
            th = threading.Thread(target=slow_send, daemon=True,
                                  args=(s, b"GET / HTTP/1.1\r\nHost: a\r\nX-Long: " + b"x" * 100, 1.0, stop))
            th.start()
            data = recv_until_eof(s, timeout=15)
            took = time.monotonic() - t0
            stop.set()
        assert status_of(data) == 408 and b"Connection: close" in data, data
        assert 1.0 <= took <= 3.0 + (2 if SANITIZED else 0), took


def test_hundreds_of_slow_clients_do_not_delay_others():
    n = 100 if SANITIZED else 300
    with Harness() as h:
        wg, _ = start(h, http={"client_header_timeout": "30s"})
        stop = threading.Event()
        socks = []
        try:
            for _ in range(n):
                s = connect(wg.port())
                s.sendall(b"GET / HTTP/1.1\r\n")        # a head that never ends
                socks.append(s)

            def drip():                                 # each sends a byte a second
                while not stop.wait(1.0):
                    for s in socks:
                        try:
                            s.send(b"x")
                        except OSError:
                            pass

            threading.Thread(target=drip, daemon=True).start()
            took = []
            for _ in range(100):
                time.sleep(0.02)
                t = time.monotonic()
                r = http_request(wg.port(), path="/x")
                took.append(time.monotonic() - t)
                assert r.status == 200, r
            took.sort()
            # medians and 95th percentiles, not the worst: this machine's
            # scheduler (and the drip thread) add their own outliers
            assert took[50] < slack(0.05) and took[95] < slack(0.25), took
        finally:
            stop.set()
            for s in socks:
                s.close()


def test_idle_keepalive_client_closed_after_client_idle_timeout():
    with Harness() as h:
        wg, _ = start(h, http={"client_idle_timeout": "1s"})
        with connect(wg.port()) as s:
            s.sendall(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
            t = time.monotonic()
            data = recv_until_eof(s, timeout=10)        # the response, then EOF
            took = time.monotonic() - t
        assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"b0"), data
        assert 0.8 <= took <= slack(2.5), took


def test_body_timeout_408():
    with Harness() as h:
        wg, _ = start(h, http={"client_body_timeout": "1s"})
        with connect(wg.port()) as s:
            # /slow answers only later: the body deadline comes first
            s.sendall(b"POST /slow?ms=5000 HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
            t = time.monotonic()
            data = recv_until_eof(s, timeout=10)
            took = time.monotonic() - t
        assert status_of(data) == 408, data
        assert 0.8 <= took <= slack(2.5), took


def test_connect_timeout_then_502():
    with Harness() as h:
        hole = Blackhole()
        port = hole.port
        inst = {"users": [{"id": "x%d" % k, "address": "127.0.0.1", "port": port} for k in range(1)]}
        wg, _ = start(h, instances=inst, service_defaults={"connect_timeout": "300ms", "retries": 0})
        t = time.monotonic()
        r = http_request(wg.port(), path="/")
        took = time.monotonic() - t
        hole.close()
        assert r.status == 502, r
        assert 0.25 <= took <= slack(1.5), took


def test_send_timeout_closes_a_client_that_stops_reading():
    with Harness() as h:
        wg, _ = start(h, http={"send_timeout": "1s"})
        total = 200 * 1024 * 1024
        with connect(wg.port(), timeout=20) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            s.sendall(b"GET /bytes?n=%d HTTP/1.1\r\nHost: a\r\n\r\n" % total)
            time.sleep(slack(3.0))                      # read nothing: waygate's writes stall
            got = 0
            try:
                while True:
                    chunk = s.recv(1 << 20)
                    if not chunk:
                        break
                    got += len(chunk)
            except ConnectionResetError:
                pass
        assert 0 < got < total, got                     # cut, not completed
