"""waygate register (the provider side) against real etcd and a real waygate:
a registered backend becomes routable; SIGKILL leaves the record to its
lease's TTL, SIGTERM removes it at once and revokes the lease; --health
gates the record (the lease stays); a lost lease (revoked, or etcd's data
gone) is granted again and the record written again; a wrapped command is
restarted three times in a row with no failed request through waygate; a
forwarded signal that ends the child deregisters and passes its status; TLS
settings from a config file and a partition longer than the TTL; a
cluster member dies under a registrar that authenticates with settings from
a config file; usage errors and the child's exit status."""

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time

from etcdlib import ETCDCTL, EtcdError, EtcdHarness, TcpCut, b64, unb64
from wglib import (Harness, http_request, name_via, run_waygate, slack, tool, wait_until,
                   free_port)

P = "/services/users/"


def enable_auth(member):
    for args in (["role", "add", "root"], ["user", "add", "root", "--new-user-password", "rootpw"],
                 ["user", "grant-role", "root", "root"], ["auth", "enable"]):
        cp = subprocess.run([ETCDCTL, "--endpoints", member.url] + args, capture_output=True,
                            timeout=30, env=dict(os.environ, ETCDCTL_API="3"))
        assert cp.returncode == 0, "etcdctl %s: %s" % (" ".join(args), cp.stderr.decode())


def registrar(h, endpoints, rid, port, *opts, command=None):
    argv = [tool("waygate"), "register", "--etcd", ",".join(endpoints), "--service", "users",
            "--id", rid, "--address", "127.0.0.1:%d" % port] + list(opts)
    if command:
        argv += ["--"] + list(command)
    return h.start("register-%s-%d" % (rid, len(h.procs)), argv)


def record(c, rid):
    """(value dict, lease id) of the instance's key, or None."""
    kvs = c.call("/v3/kv/range", {"key": b64(P + rid)}).get("kvs", [])
    if not kvs:
        return None
    return json.loads(unb64(kvs[0]["value"])), int(kvs[0].get("lease", 0))


def lease_ttl(c, lease):
    """Seconds left on a lease; -1 when etcd does not know it."""
    return int(c.call("/v3/lease/timetolive", {"ID": str(lease)}).get("TTL", -1))


def wait_record(c, rid, timeout=5, present=True):
    what = "record %s %s" % (rid, "written" if present else "deleted")
    return wait_until(lambda: (record(c, rid) if present else record(c, rid) is None),
                      slack(timeout), what, interval=0.02)


def port_open(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def test_register_route_sigkill_expires_sigterm_removes():
    with EtcdHarness() as h:
        etcd = h.etcd()
        c = etcd.client()
        a, b = h.backend("name", name="a"), h.backend("name", name="b")
        wg = h.waygate_etcd(etcd)
        ra = registrar(h, [etcd.url], "a", a.port, "--ttl", "2s", "--weight", "50",
                       "--metadata", "zone=a", "rack=r1")
        value, lease = wait_record(c, "a")
        assert value == {"address": "127.0.0.1", "port": a.port, "weight": 50,
                         "metadata": {"zone": "a", "rack": "r1"}}, value
        assert lease and lease_ttl(c, lease) > 0
        wg.wait_instances({"a": "127.0.0.1:%d" % a.port})
        assert name_via(wg.port()) == "a"
        # etcd grants at least 2 s for 1 s: keep-alives follow the granted TTL
        rb = registrar(h, [etcd.url], "b", b.port, "--ttl", "1s")
        wg.wait_instances({"a": "127.0.0.1:%d" % a.port, "b": "127.0.0.1:%d" % b.port})
        assert "ttl_s=2 keepalive_ms=666" in rb.stderr_text(), rb.stderr_text()
        # SIGKILL: nothing deletes the key; the lease expires after the TTL
        time.sleep(1.5)                 # several keep-alives went through meanwhile
        assert record(c, "a")[1] == lease, "the lease changed while etcd was fine"
        t = time.monotonic()
        ra.kill()
        time.sleep(0.5)
        assert record(c, "a") is not None, "gone before the lease expired"
        wg.wait_instances({"b": "127.0.0.1:%d" % b.port}, timeout=6)
        gone = time.monotonic() - t
        assert gone <= slack(3.5), "removed %.2fs after SIGKILL (TTL 2s)" % gone
        # SIGTERM: deleted and revoked before the exit
        _, lease_b = record(c, "b")
        rb.signal(signal.SIGTERM)
        assert rb.wait(slack(5)) == 0, rb.stderr_text()
        assert record(c, "b") is None
        assert lease_ttl(c, lease_b) == -1, "lease still alive after SIGTERM"
        wg.wait_instances({}, timeout=1)
        assert "deregistered" in rb.stderr_text() and "lease revoked" in rb.stderr_text()


def test_health_gate_keeps_the_lease():
    with EtcdHarness() as h:
        etcd = h.etcd()
        c = etcd.client()
        hb = h.backend("http", name="hb")
        url = "http://127.0.0.1:%d/health" % hb.port
        r = registrar(h, [etcd.url], "hb", hb.port, "--ttl", "2s", "--health", url,
                      "--health-interval", "100ms", "--health-timeout", "500ms")
        _, lease = wait_record(c, "hb")
        http_request(hb.port, path="/control/health?status=503")
        wait_record(c, "hb", present=False, timeout=2)
        time.sleep(2.5)                 # longer than the TTL: only keep-alives hold it
        assert record(c, "hb") is None
        assert lease_ttl(c, lease) > 0, "the lease was dropped while unhealthy"
        http_request(hb.port, path="/control/health?status=200")
        _, lease2 = wait_record(c, "hb", timeout=2)
        assert lease2 == lease, "registered again under another lease"
        r.signal(signal.SIGINT)
        assert r.wait(slack(5)) == 0
        assert record(c, "hb") is None and lease_ttl(c, lease) == -1
        err = r.stderr_text()
        assert "health check fails, deregistering" in err and "HTTP 503" in err, err


def test_lost_lease_and_etcd_restarts_bring_the_record_back():
    with EtcdHarness() as h:
        etcd = h.etcd()
        c = etcd.client()
        a = h.backend("name", name="a")
        wg = h.waygate_etcd(etcd, backoff=("50ms", "300ms"))
        r = registrar(h, [etcd.url], "a", a.port, "--ttl", "2s")
        _, lease1 = wait_record(c, "a")
        # revoked behind its back: the next keep-alive has no TTL
        c.lease_revoke(lease1)
        assert record(c, "a") is None
        _, lease2 = wait_record(c, "a", timeout=3)
        assert lease2 != lease1
        assert "keep-alive answered without TTL" in r.stderr_text()
        # a restart with the data kept: the lease survives, keep-alives resume
        etcd.stop()
        time.sleep(1)
        etcd.start()
        etcd.wait_healthy()
        c = etcd.client()
        time.sleep(2.5)                 # longer than the TTL after the restart
        assert record(c, "a") == ({"address": "127.0.0.1", "port": a.port, "weight": 100},
                                  lease2)
        # a restart with the data lost: a new lease and the record again
        etcd.stop()
        shutil.rmtree(etcd.data_dir)
        etcd.start()
        etcd.wait_healthy()
        c = etcd.client()
        _, lease3 = wait_record(c, "a", timeout=8)
        assert lease3 != lease2
        wg.wait_instances({"a": "127.0.0.1:%d" % a.port}, timeout=10)
        assert name_via(wg.port()) == "a"
        assert r.alive()


class HttpLoad:
    """Threads sending GET / through waygate; every answer and failure kept."""

    def __init__(self, port, threads=2):
        self.port = port
        self.ok = []
        self.failures = []
        self.stop_flag = threading.Event()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(threads)]

    def run(self):
        while not self.stop_flag.is_set():
            t = time.monotonic()
            try:
                resp = http_request(self.port, path="/", timeout=5)
                if resp.status == 200:
                    self.ok.append((t, resp.body.decode()))
                else:
                    self.failures.append((t, "HTTP %d %r" % (resp.status, resp.body[:80])))
            except (OSError, AssertionError) as e:
                self.failures.append((t, "%s: %s" % (type(e).__name__, e)))

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop_flag.set()
        for t in self.threads:
            t.join(timeout=10)
        return False

    def names_since(self, t):
        return {n for ts, n in list(self.ok) if ts >= t}


def test_wrapped_commands_rolling_restart_no_failed_request():
    with EtcdHarness() as h:
        etcd = h.etcd()
        c = etcd.client()
        listener = {"name": "web", "mode": "http",
                    "routes": [{"path_prefix": "/", "service": "users"}]}
        wg = h.waygate_etcd(etcd, listeners=[listener], service_defaults={"retries": 0})
        ports = [free_port() for _ in range(3)]

        def start(k):
            cmd = [tool("wg_backend"), "--listen", "127.0.0.1:%d" % ports[k], "--name",
                   "r%d" % k, "--mode", "http"]
            # r0 waits for its health URL, the others for their port
            opts = ["--ttl", "2s", "--drain", "1s"]
            if k == 0:
                opts += ["--health", "http://127.0.0.1:%d/health" % ports[k],
                         "--health-interval", "100ms"]
            return registrar(h, [etcd.url], "r%d" % k, ports[k], *opts, command=cmd)

        regs = [start(k) for k in range(3)]
        want = {"r%d" % k: "127.0.0.1:%d" % ports[k] for k in range(3)}
        wg.wait_instances(want, timeout=10)
        with HttpLoad(wg.port()) as load:
            wait_until(lambda: load.names_since(0) == set(want), slack(5), "all three serving")
            for k in range(3):
                t = time.monotonic()
                regs[k].signal(signal.SIGTERM)
                wait_record(c, "r%d" % k, present=False, timeout=1)
                assert port_open(ports[k]), "the child stopped before the drain"
                assert regs[k].wait(slack(10)) == 0, regs[k].stderr_text()
                assert not port_open(ports[k])
                assert time.monotonic() - t >= 1.0, "no drain delay"
                regs[k] = start(k)
                wg.wait_instances(want, timeout=10)
                t = time.monotonic()
                wait_until(lambda: "r%d" % k in load.names_since(t), slack(5),
                           "r%d serving again" % k)
        assert len(load.ok) > 50, "only %d requests" % len(load.ok)
        assert not load.failures, "%d failed, first: %s" % (len(load.failures),
                                                           load.failures[:3])
        err = regs[0].stderr_text()
        assert "health check passes" in err, err
        for r in regs:                  # all at once: the drains overlap
            r.signal(signal.SIGTERM)
        for r in regs:
            assert r.wait(slack(10)) == 0
        assert c.get_prefix(P) == {}


def test_forwarded_signal_ends_the_child_then_the_record_goes():
    """SIGHUP is forwarded at once; the child (no HUP handler) dies of it:
    the key is deleted, the lease revoked, and the exit status is 128 + 1."""
    with EtcdHarness() as h:
        etcd = h.etcd()
        c = etcd.client()
        port = free_port()
        cmd = [tool("wg_backend"), "--listen", "127.0.0.1:%d" % port, "--mode", "http"]
        r = registrar(h, [etcd.url], "x", port, "--ttl", "5s", command=cmd)
        _, lease = wait_record(c, "x")
        r.signal(signal.SIGHUP)
        assert r.wait(slack(5)) == 128 + signal.SIGHUP, r.stderr_text()
        assert record(c, "x") is None and lease_ttl(c, lease) == -1
        assert not port_open(port)
        assert "forwarding signal" in r.stderr_text()


def test_member_failover_with_auth_from_the_config_file():
    with EtcdHarness() as h:
        # tokens die after 1 s unused; keep-alives come every 2 s (TTL 6 s)
        cluster = h.etcd_cluster(3, extra=["--auth-token", "simple", "--auth-token-ttl", "1"])
        enable_auth(cluster[0])
        c = cluster.client(2, user="root", password="rootpw")
        a = h.backend("name", name="a")
        cfg = h.path("register.yaml")
        with open(cfg, "w") as f:
            f.write("registry:\n  etcd:\n    endpoints: [%s]\n    prefix: /services/\n"
                    "    username: root\n    password: rootpw\n"
                    "    backoff: { initial: 20ms, max: 200ms }\n" % ", ".join(cluster.urls))
        argv = [tool("waygate"), "register", "-c", cfg, "--service", "users", "--id", "a",
                "--address", "127.0.0.1:%d" % a.port, "--ttl", "6s"]
        r = h.start("register-a", argv)
        _, lease = wait_record(c, "a")
        assert "etcd authenticated" in r.stderr_text()
        cluster[0].kill()               # the member in use (first endpoint)
        end = time.monotonic() + 5
        while time.monotonic() < end:   # present all along: keep-alives moved on
            try:
                rec = record(c, "a")
            except EtcdError:           # the test's own read during the election
                continue
            assert rec is not None and rec[1] == lease, "record lost after the member died"
            time.sleep(0.1)
        err = r.stderr_text()
        assert "etcd call failed, retrying" in err, err
        # keep-alives need no token; the delete does, and the token expired
        r.signal(signal.SIGTERM)
        assert r.wait(slack(8)) == 0
        c.authenticate("root", "rootpw")
        assert record(c, "a") is None and lease_ttl(c, lease) == -1
        err = r.stderr_text()
        assert "authenticating again" in err and err.count("etcd authenticated") >= 2, err


def test_tls_and_a_partition_longer_than_the_ttl():
    """TLS settings from -c; the registrar is cut off from etcd for longer
    than the TTL: the lease expires, and once the path is back the
    keep-alive finds it gone and the record is written under a new lease."""
    with EtcdHarness() as h:
        files = h.tls_files()
        etcd = h.etcd(tls=files)
        c = etcd.client()
        cut = TcpCut(etcd.client_port)
        try:
            cfg = h.path("register.yaml")
            with open(cfg, "w") as f:
                f.write("registry:\n  etcd:\n    endpoints: [https://127.0.0.1:%d]\n"
                        "    tls: { ca: %s, cert: %s, key: %s }\n"
                        "    backoff: { initial: 20ms, max: 200ms }\n"
                        % (cut.port, files["ca"], files["client_cert"], files["client_key"]))
            r = h.start("register-a", [tool("waygate"), "register", "-c", cfg, "--service",
                                       "users", "--id", "a", "--address", "127.0.0.1:9",
                                       "--ttl", "2s"])
            _, lease = wait_record(c, "a")
            cut.cut()
            wait_record(c, "a", present=False, timeout=4)
            assert lease_ttl(c, lease) == -1
            cut.restore()
            _, lease2 = wait_record(c, "a", timeout=4)
            assert lease2 != lease
            err = r.stderr_text()
            assert "lease lost, granting a new one" in err, err
            r.signal(signal.SIGTERM)
            assert r.wait(slack(5)) == 0
            assert record(c, "a") is None
        finally:
            cut.close()


def test_usage_errors_and_the_childs_exit_status():
    base = ["register", "--etcd", "http://127.0.0.1:1", "--service", "users", "--id", "x",
            "--address", "127.0.0.1:1"]
    cases = [
        (["register"], "missing --service"),
        (base[:-2], "missing --address"),
        (base + ["--ttl", "10"], "--ttl: "),
        (base + ["--ttl", "500ms"], "at least 1s"),
        (base + ["--metadata", "novalue"], "KEY=VALUE"),
        (base + ["--metadata", "a=1", "a=2"], "given twice"),
        (base + ["--weight", "-1"], "--weight"),
        (base + ["--health", "https://127.0.0.1:1/health"], "--health"),
        (base + ["--bogus"], "unknown option '--bogus'"),
        (base + ["stray"], "unexpected argument 'stray'"),
        (base + ["--"], "must be followed by a command"),
        (base[:-1] + ["127.0.0.1"], "--address"),
        (base[:4] + ["a/b"] + base[5:], "--service"),
        (["register", "--service", "users", "--id", "x", "--address", "127.0.0.1:1"],
         "no etcd endpoints"),
    ]
    for args, text in cases:
        rc, out, err = run_waygate(*args)
        assert rc == 2 and text in err, "%s: exit %d, %r" % (args, rc, err)
    rc, out, err = run_waygate("register", "--help")
    assert rc == 0 and "--service NAME" in out
    # the child's status, with etcd unreachable (nothing to deregister)
    for cmd, want in ((["sh", "-c", "exit 3"], 3), (["/nonexistent/cmd"], 127),
                      (["sh", "-c", "kill -9 $$"], 128 + 9)):
        rc, out, err = run_waygate(*(base + ["--"] + cmd), timeout=20)
        assert rc == want, "%s: exit %d, want %d\n%s" % (cmd, rc, want, err)
