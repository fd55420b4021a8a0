"""etcd registry: authentication (short token TTL, etcd restart), TLS with a
CA made by the test, start from the cache with etcd down, an idle watch on
etcd's default settings, and reloads that change the etcd settings (also
while host names are being resolved)."""

import copy
import json
import os
import random
import signal
import socket
import subprocess
import time

from etcdlib import ETCDCTL, EtcdHarness
from wglib import (NameLoad, SANITIZED, free_port, name_via, slack, tool, wait_until,
                   write_atomic, yaml_block)

P = "/services/users/"


def etcdctl(member, *args):
    cp = subprocess.run([ETCDCTL, "--endpoints", member.url] + list(args),
                        capture_output=True, timeout=30, env=dict(os.environ, ETCDCTL_API="3"))
    assert cp.returncode == 0, "etcdctl %s: %s" % (" ".join(args), cp.stderr.decode())
    return cp.stdout.decode()


def enable_auth(member):
    etcdctl(member, "role", "add", "root")
    etcdctl(member, "user", "add", "root", "--new-user-password", "rootpw")
    etcdctl(member, "user", "grant-role", "root", "root")
    etcdctl(member, "auth", "enable")


def test_auth_short_token_ttl_and_restart():
    with EtcdHarness() as h:
        etcd = h.etcd(extra=["--auth-token", "simple", "--auth-token-ttl", "1"])
        enable_auth(etcd)
        a, b, x = (h.backend("name", name=n) for n in ("a", "b", "x"))
        c = etcd.client(user="root", password="rootpw")
        c.put(P + "a", "127.0.0.1:%d" % a.port)
        wg = h.waygate_etcd(etcd, username="root", password="rootpw", watch_timeout="2s",
                            backoff=("50ms", "300ms"))
        wg.wait_instances({"a": "127.0.0.1:%d" % a.port})
        # the token expires while idle; the silence probe then re-authenticates
        time.sleep(3.5)
        c.authenticate("root", "rootpw")
        c.put(P + "b", "127.0.0.1:%d" % b.port)
        wg.wait_instances({"a": "127.0.0.1:%d" % a.port, "b": "127.0.0.1:%d" % b.port})
        # a restart kills every simple token
        etcd.stop()
        etcd.start()
        etcd.wait_healthy()
        c = etcd.client(user="root", password="rootpw")
        c.put(P + "x", "127.0.0.1:%d" % x.port)
        wg.wait_instances({"a": "127.0.0.1:%d" % a.port, "b": "127.0.0.1:%d" % b.port,
                           "x": "127.0.0.1:%d" % x.port}, timeout=10)
        wait_until(lambda: wg.registry_status()["connected"], slack(5), "connected")
        assert "etcd authenticated" in wg.stderr_text()
        assert wg.stderr_text().count("etcd authenticated") >= 2


def test_tls_with_a_test_ca():
    with EtcdHarness() as h:
        files = h.tls_files()
        etcd = h.etcd(tls=files)
        (a,) = [h.backend("name", name="a")]
        etcd.client().put(P + "a", "127.0.0.1:%d" % a.port)
        tls = {"ca": files["ca"], "cert": files["client_cert"], "key": files["client_key"]}
        wg = h.waygate_etcd(etcd, tls=tls)
        wg.wait_instances({"a": "127.0.0.1:%d" % a.port})
        assert name_via(wg.port()) == "a"
        # by name: localhost is in the certificate
        wg2 = h.waygate_etcd(["https://localhost:%d" % etcd.client_port], tls=tls)
        wg2.wait_instances({"a": "127.0.0.1:%d" % a.port})
        # a name the certificate does not hold is refused
        bad = dict(tls, server_name="wrong.example")
        wg3 = h.waygate_etcd(etcd, tls=bad, wait_ready=False)
        wait_until(lambda: "etcd session ended" in wg3.stderr_text(), slack(10), "a refusal")
        time.sleep(0.5)
        assert "etcd watching" not in wg3.stderr_text()


def test_start_from_cache_with_etcd_down():
    with EtcdHarness() as h:
        etcd = h.etcd()
        a, b = h.backend("name", name="a"), h.backend("name", name="b")
        c = etcd.client()
        c.put(P + "a", "127.0.0.1:%d" % a.port)
        cache = h.path("registry-cache.yaml")
        wg = h.waygate_etcd(etcd, cache=cache, backoff=("50ms", "300ms"))
        wg.wait_instances({"a": "127.0.0.1:%d" % a.port})
        wait_until(lambda: os.path.exists(cache) and "127.0.0.1" in open(cache).read(),
                   slack(5), "the cache file")
        wg.proc.stop()
        etcd.stop()
        wg2 = h.waygate_etcd(etcd, cache=cache, backoff=("50ms", "300ms"))
        assert name_via(wg2.port()) == "a"
        st = wg2.registry_status()
        assert not st["connected"], st
        with NameLoad(wg2.port(), threads=1) as load:
            etcd.start()
            etcd.wait_healthy()
            c = etcd.client()
            c.put(P + "b", "127.0.0.1:%d" % b.port)
            c.delete(P + "a")
            wg2.wait_instances({"b": "127.0.0.1:%d" % b.port}, timeout=10)
        assert not load.errors(), load.errors()[:5]


def test_idle_watch_on_default_settings_stays_connected():
    """etcd's default progress interval (10 min): 30 s of silence are
    bridged by the silence probes, not by reconnecting."""
    with EtcdHarness() as h:
        etcd = h.etcd(progress_notify=None)
        (a,) = [h.backend("name", name="a")]
        etcd.client().put(P + "a", "127.0.0.1:%d" % a.port)
        wg = h.waygate_etcd(etcd, watch_timeout="10s")
        wg.wait_instances({"a": "127.0.0.1:%d" % a.port})
        ranges0 = etcd.grpc_handled("Range")
        time.sleep(30)
        st = wg.registry_status()
        assert st["connected"], st
        assert wg.metric("waygate_registry_reconnects_total") == 0
        probes = etcd.grpc_handled("Range") - ranges0
        assert 2 <= probes <= 4, "silence probes in 30 s: %d" % probes
        assert wg.metric("waygate_registry_last_contact_seconds") < 11
        etcd.client().put(P + "b", "127.0.0.1:%d" % a.port)
        wg.wait_instances({"a": "127.0.0.1:%d" % a.port, "b": "127.0.0.1:%d" % a.port})


def test_reload_with_new_etcd_settings_switches_cleanly():
    """A reload that changes registry.etcd frees the old client from inside
    the control loop: no nested loop pass (libevent printed "reentrant
    invocation" on stderr at every such reload), and the new client
    watches."""
    with EtcdHarness() as h:
        etcd = h.etcd()
        a, b = h.backend("name", name="a"), h.backend("name", name="b")
        c = etcd.client()
        c.put(P + "a", "127.0.0.1:%d" % a.port)
        wg = h.waygate_etcd(etcd)
        wg.wait_instances({"a": "127.0.0.1:%d" % a.port})
        for k in range(3):
            cfg = copy.deepcopy(wg.config_dict())
            cfg["registry"]["etcd"]["watch_timeout"] = "%ds" % (11 + k)
            write_atomic(wg.config_path, yaml_block(cfg) + "\n")
            wg.proc.signal(signal.SIGHUP)
            wait_until(lambda: wg.stderr_text().count("registry settings changed") == k + 1,
                       slack(5), "registry switch %d" % (k + 1))
        c.put(P + "b", "127.0.0.1:%d" % b.port)
        wg.wait_instances({"a": "127.0.0.1:%d" % a.port, "b": "127.0.0.1:%d" % b.port})
        err = wg.stderr_text()
        assert "reentrant" not in err and "[warn]" not in err, err[-3000:]


def silent_resolver():
    """A UDP socket on port 53 of some 127.x address that reads queries and
    never answers, or None where it cannot be had (no root)."""
    for _ in range(5):
        addr = "127.%d.%d.%d" % (random.randrange(1, 255), random.randrange(1, 255),
                                 random.randrange(2, 255))
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.bind((addr, 53))
            return s
        except OSError:
            s.close()
    return None


def test_reload_while_host_names_are_being_resolved():
    """A reload that replaces the etcd registry while lookups of host-name
    records are in flight: the cancelled lookups are freed by libevent's
    deferred cancel callbacks, not before them (they were: a use after free
    at the next loop pass, caught by ASan). waygate runs in a mount namespace
    whose /etc/resolv.conf names a resolver that never answers."""
    dns = silent_resolver()
    cp = subprocess.run(["unshare", "-m", "true"], capture_output=True, timeout=10)
    if dns is None or cp.returncode != 0:
        print("skipped: needs root for port 53 and unshare -m")
        return
    with EtcdHarness() as h:
        etcd = h.etcd()
        c = etcd.client()
        rc = h.path("resolv.conf")
        with open(rc, "w") as f:
            f.write("nameserver %s\noptions timeout:30 attempts:1\n" % dns.getsockname()[0])
        cfg_path = h.path("waygate.yaml")
        admin, port = free_port(), free_port()

        def write(watch_timeout):
            write_atomic(cfg_path, yaml_block({
                "workers": 1, "shutdown_timeout": "2s",
                "admin": {"listen": "127.0.0.1:%d" % admin},
                "registry": {"etcd": {"endpoints": [etcd.url], "watch_timeout": watch_timeout}},
                "listeners": [{"name": "t", "mode": "tcp", "service": "users",
                               "listen": "127.0.0.1:%d" % port}]}) + "\n")
        write("10s")
        wg = h.start("waygate-ns", ["unshare", "-m", "sh", "-c", "mount --bind %s /etc/resolv.conf"
                                    " && exec %s -c %s" % (rc, tool("waygate"), cfg_path)])
        wg.expect_clean_exit = True         # exit 0 on the cleanup's SIGTERM, no ASan report
        wg.stop_timeout = slack(5)
        wait_until(lambda: "etcd watching" in wg.stderr_text(), slack(10), "the watch")
        for k in range(3):
            c.put(P + "h%d" % k, json.dumps({"address": "h%d.soak.test" % k, "port": 80}))
        dns.settimeout(slack(10))
        for _ in range(3):
            dns.recvfrom(2048)              # lookups in flight, never answered
        write("12s")
        wg.signal(signal.SIGHUP)
        wait_until(lambda: "registry settings changed" in wg.stderr_text(), slack(5), "the switch")
        # the new registry lists the keys again and resolves them again
        wait_until(lambda: wg.stderr_text().count("etcd list applied") == 2, slack(5), "relist")
        time.sleep(0.5)                     # loop passes run the cancel callbacks
        assert wg.alive(), wg.stderr_text()[-3000:]
        dns.close()
