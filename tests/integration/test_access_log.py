"""Access log (log.access_log, log.access_format): one line per tcp
connection with the documented fields, text and json; stdout by default;
`off` writes nothing; SIGUSR1 reopens a renamed file; a reload switches the
format; a stuck destination drops lines (counted) instead of blocking."""

import json
import os
import re
import signal
import socket
import stat
import struct
import time

from wglib import (FifoDrain, Harness, connect, free_port, http_request, recv_exact, slack,
                   wait_until)

TEXT_KEYS = ["client", "listener", "service", "upstream", "method", "path", "status", "reason",
             "bytes_in", "bytes_out", "duration_ms", "connect_ms", "retries", "request_id"]
_PAIR = re.compile(r' ([a-z_]+)=("(?:[^"\\]|\\.)*"|[^ "]+)')
_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def parse_text(line):
    """{key: value} of a text line; checks the time and the key order."""
    assert _TIME.fullmatch(line[:24]), line
    pairs = _PAIR.findall(line[24:])
    assert "".join(" %s=%s" % p for p in pairs) == line[24:], "unparsed text in %r" % line
    assert [k for k, _ in pairs] == TEXT_KEYS, line
    return {k: (json.loads(v) if v.startswith('"') else v) for k, v in pairs}


def parse_json(line):
    doc = json.loads(line)
    assert list(doc) == ["time"] + TEXT_KEYS, line
    assert _TIME.fullmatch(doc["time"]), line
    return doc


def lines_of(path):
    try:
        with open(path) as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


def line_of(path, client, parse):
    """The parsed line of the connection from `client` ("ip:port"), waiting
    for the writer thread (it writes every 50 ms)."""
    def find():
        for line in lines_of(path):
            doc = parse(line)
            if doc["client"] == client:
                return doc
        return None
    return wait_until(find, slack(5), "the access log line of %s" % client)


def echo_once(port, data=b"ping"):
    """One connection through an echo backend; returns its client address."""
    with connect(port) as s:
        client = "127.0.0.1:%d" % s.getsockname()[1]
        s.sendall(data)
        assert recv_exact(s, len(data)) == data
        s.shutdown(socket.SHUT_WR)
        assert s.recv(1) == b""
    return client


def access(path, fmt="text"):
    return {"level": "info", "access_log": path, "access_format": fmt}


def test_tcp_lines_text_then_json_on_reload():
    with Harness() as h:
        a = h.backend("echo", name="a")
        path = h.path("access.log")
        wg = h.waygate(instances={"users": [a.instance("a")]}, log=access(path))
        client = echo_once(wg.port(), b"hello")
        doc = line_of(path, client, parse_text)
        assert doc["listener"] == "t" and doc["service"] == "users" and doc["upstream"] == "a", doc
        assert doc["method"] == doc["path"] == doc["status"] == doc["request_id"] == "-", doc
        assert doc["reason"] == "eof" and doc["retries"] == "0", doc
        assert doc["bytes_in"] == "5" and doc["bytes_out"] == "5", doc
        assert float(doc["duration_ms"]) >= float(doc["connect_ms"]) >= 0, doc
        clients = [echo_once(wg.port()) for _ in range(10)]
        for c in clients:
            line_of(path, c, parse_text)
        seen = [parse_text(l)["client"] for l in lines_of(path)]
        assert all(seen.count(c) == 1 for c in clients + [client]), seen

        # A reload switches the format of the next lines, same file.
        wg.top["log"] = access(path, "json")
        wg.write_config()
        wg.proc.signal(signal.SIGHUP)
        wait_until(lambda: "configuration reloaded" in wg.stderr_text(), slack(5), "the reload")
        client = echo_once(wg.port(), b"x" * 1000)
        doc = line_of(path, client, lambda l: parse_json(l) if l.startswith("{") else {"client": 0})
        assert doc["upstream"] == "a" and doc["reason"] == "eof", doc
        assert doc["bytes_in"] == 1000 and doc["bytes_out"] == 1000, doc
        assert doc["method"] is None and doc["path"] is None and doc["status"] is None, doc
        assert doc["request_id"] is None and doc["retries"] == 0, doc
        assert isinstance(doc["duration_ms"], float) and isinstance(doc["connect_ms"], float), doc


def test_failures_have_their_reason():
    """No instance: reason no_upstream. Every connect refused: connect_failed
    after `retries` retries, no upstream. Idle: idle_timeout."""
    with Harness() as h:
        a = h.backend("echo", name="a")
        dead = [{"id": "d%d" % k, "address": "127.0.0.1", "port": free_port()} for k in range(3)]
        path = h.path("access.json")
        wg = h.waygate(listeners=[{"name": "none", "mode": "tcp", "service": "empty"},
                                  {"name": "dead", "mode": "tcp", "service": "dead"},
                                  {"name": "idle", "mode": "tcp", "service": "users",
                                   "idle_timeout": "300ms"}],
                       instances={"empty": [], "dead": dead, "users": [a.instance("a")]},
                       log=access(path, "json"))
        for name, reason in (("none", "no_upstream"), ("dead", "connect_failed")):
            with connect(wg.port(name)) as s:
                client = "127.0.0.1:%d" % s.getsockname()[1]
                assert s.recv(1) == b""
            doc = line_of(path, client, parse_json)
            assert doc["reason"] == reason and doc["upstream"] is None, doc
            assert doc["bytes_in"] == 0 and doc["connect_ms"] is None, doc
            assert doc["retries"] == (2 if name == "dead" else 0), doc
        with connect(wg.port("idle")) as s:
            client = "127.0.0.1:%d" % s.getsockname()[1]
            assert s.recv(1) == b""
        doc = line_of(path, client, parse_json)
        assert doc["reason"] == "idle_timeout" and doc["upstream"] == "a", doc
        assert doc["duration_ms"] >= 300, doc


def test_resets_name_their_side():
    """A relay that a peer reset ends with the side that did it: the client
    (RST after its echo came back) gives client_reset, an instance that
    resets the connection gives upstream_reset (reason error stays for
    other failures)."""
    with Harness() as h:
        a = h.backend("echo", name="a")
        r = h.backend("http", name="r")
        path = h.path("access.json")
        wg = h.waygate(listeners=[{"name": "echo", "mode": "tcp", "service": "users"},
                                  {"name": "rst", "mode": "tcp", "service": "resets"}],
                       instances={"users": [a.instance("a")], "resets": [r.instance("r")]},
                       log=access(path, "json"))
        s = connect(wg.port("echo"))
        client = "127.0.0.1:%d" % s.getsockname()[1]
        s.sendall(b"ping")
        assert recv_exact(s, 4) == b"ping"
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()                       # RST
        doc = line_of(path, client, parse_json)
        assert doc["reason"] == "client_reset" and doc["upstream"] == "a", doc
        with connect(wg.port("rst")) as s:
            client = "127.0.0.1:%d" % s.getsockname()[1]
            s.sendall(b"GET /reset HTTP/1.1\r\nHost: t\r\n\r\n")
            try:
                assert s.recv(1) == b""
            except ConnectionResetError:
                pass
        doc = line_of(path, client, parse_json)
        assert doc["reason"] == "upstream_reset" and doc["upstream"] == "r", doc


def test_stdout_by_default_and_off_writes_nothing():
    with Harness() as h:
        a = h.backend("echo", name="a")
        wg = h.waygate(instances={"users": [a.instance("a")]})
        client = echo_once(wg.port())
        doc = line_of(wg.proc.stdout_path, client, parse_text)
        assert doc["reason"] == "eof", doc
        off = h.waygate(instances={"users": [a.instance("a")]},
                        log={"level": "info", "access_log": "off"})
        for _ in range(5):
            echo_once(off.port())
        time.sleep(slack(0.3))              # several writer periods
        assert os.path.getsize(off.proc.stdout_path) == 0, off.proc.stdout_text()
        assert not [f for f in os.listdir(h.tmp) if f == "off"], os.listdir(h.tmp)


def test_sigusr1_reopens_a_renamed_file():
    with Harness() as h:
        a = h.backend("echo", name="a")
        path = h.path("access.log")
        wg = h.waygate(instances={"users": [a.instance("a")]}, log=access(path))
        first = echo_once(wg.port())
        line_of(path, first, parse_text)
        os.rename(path, path + ".1")        # logrotate
        second = echo_once(wg.port())       # still the open, renamed file
        line_of(path + ".1", second, parse_text)
        wg.proc.signal(signal.SIGUSR1)
        wait_until(lambda: "access log reopened" in wg.stderr_text(), slack(5), "the reopen")
        assert os.path.exists(path)
        # The writer thread switches files at its next pass (at once: it is
        # woken); lines made before that still go to the renamed file.
        time.sleep(slack(0.2))
        third = echo_once(wg.port())
        doc = line_of(path, third, parse_text)
        assert doc["reason"] == "eof", doc
        old = [parse_text(l)["client"] for l in lines_of(path + ".1")]
        assert third not in old and first in old and second in old, old


def test_stuck_destination_drops_and_counts():
    """The file is a FIFO nobody reads: the writer thread blocks, the worker
    ring (1 MiB) fills, the rest is dropped and counted; the proxy and the
    admin go on serving. Reading the FIFO unblocks everything."""
    with Harness() as h:
        fifo = h.path("fifo")
        os.mkfifo(fifo)
        rfd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)   # lets waygate open it
        try:
            wg = h.waygate(workers=1, instances={"users": []}, log=access(fifo))
            assert stat.S_ISFIFO(os.stat(fifo).st_mode)
            n = 7000                        # ~200 bytes each: more than 64 KiB + 1 MiB
            t = time.monotonic()
            for _ in range(n):
                with socket.create_connection(("127.0.0.1", wg.port()), timeout=5) as s:
                    s.settimeout(5)
                    assert s.recv(1) == b""     # closed: no upstream
            assert time.monotonic() - t < slack(60)

            def dropped():
                r = http_request(wg.admin_port, "GET", "/metrics")
                m = re.search(rb"^waygate_access_log_dropped_total (\d+)$", r.body, re.M)
                assert m, "no waygate_access_log_dropped_total"
                return int(m.group(1)) or None
            assert wait_until(dropped, slack(10), "dropped lines counted") > 0
        finally:
            reader = FifoDrain(rfd)
            try:
                assert wg.proc.stop() == 0
            finally:
                reader.stop()
                os.close(rfd)
