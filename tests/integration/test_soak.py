"""Soak under faults (issue 16): a 3-member etcd cluster, wg_backend
instances registered by `waygate register`, and a steady wrk load through an
http, a TLS (http, client certificates optional) and a tcp listener, while
faults run one after another in a random order (seed printed, replay with
WAYGATE_SOAK_SEED): a backend SIGKILLed and restarted, a rolling restart of
one instance (deregister, drain, stop, a new process registers), the etcd
leader SIGKILLed and restarted, a compaction, a health endpoint flipping to
503 and back; and, all the time, a SIGHUP every few seconds alternating a
valid and an invalid configuration. WAYGATE_SOAK_SECONDS (default 60; `make
soak` runs 600) is the length of the load.

At the end: no failed request (wrk errors, non-2xx, counted by a wrk Lua
script), no request served by an instance after its drain finished (the
backend's own count, read before and after), /status equal to etcd's listing,
every reload answered, descriptors back to their quiet level, RSS of the last
part within SOAK_RSS_BOUND_KIB of the first (not under sanitizers), and the
counters consistent (requests = sum of status classes; waygate's count
against wrk's). tcp relays cannot replay a connection whose upstream died, so
SIGKILL faults hit the http service `users` only; the tcp service `raw` sees
rolling restarts and health flips (graceful), and its wrk closes after every
request so that a drain has something to finish."""

import copy
import json
import os
import random
import re
import shutil
import signal
import subprocess
import threading
import time

from etcdlib import EtcdError, EtcdHarness
from tlslib import shared
from wglib import (SANITIZED, fd_listing, free_port, http_request, open_fds, slack, tool,
                   wait_until, write_atomic, yaml_block)

SECONDS = float(os.environ.get("WAYGATE_SOAK_SECONDS") or 60)
# RSS of the last part of the load may exceed the first part by this much:
# malloc arenas and the workers' buffer pools settle within the first seconds,
# later growth is a leak (one lost 16 KiB block per request of a 60 s run is
# ~400 MiB; per fault ~1 MiB).
SOAK_RSS_BOUND_KIB = 8 * 1024
DRAIN = 2.0             # what the operator waits between deregistering and stopping
AFTER_DRAIN = 1.5       # the old process keeps serving this long after the drain
P = "/services/"
REPORT = os.environ.get("WAYGATE_SOAK_REPORT")     # `make soak` prints this file


def report(line):
    """A line of the soak's account: on stdout (shown when the test fails)
    and appended to $WAYGATE_SOAK_REPORT when set."""
    print(line, flush=True)
    if REPORT:
        with open(REPORT, "a") as f:
            f.write(line + "\n")

WRK_LUA = r"""
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args)
  ok, bad = 0, 0
  pause = tonumber(args[1]) or 10
end
function delay() return pause end
function response(status, headers, body)
  if status >= 200 and status < 300 then ok = ok + 1 else bad = bad + 1 end
end
function done(summary, latency, requests)
  local o, b = 0, 0
  for _, t in ipairs(threads) do o = o + t:get("ok"); b = b + t:get("bad") end
  local e = summary.errors
  io.write(string.format(
    "SOAK requests=%d ok=%d non2xx=%d connect=%d read=%d write=%d status=%d timeout=%d\n",
    summary.requests, o, b, e.connect, e.read, e.write, e.status, e.timeout))
end
"""


def metrics(wg):
    """{name or name{labels}: value} of waygate's /metrics."""
    code, body = wg.admin("/metrics")
    assert code == 200, code
    out = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out


def summed(m, name):
    return sum(v for k, v in m.items() if k == name or k.startswith(name + "{"))


def etcd_listing(c):
    """{service: {id: address}} from etcd."""
    out = {}
    for k, v in c.get_prefix(P).items():
        svc, rid = k[len(P):].split("/", 1)
        rec = json.loads(v)
        out.setdefault(svc, {})[rid] = "%s:%d" % (rec["address"], rec["port"])
    return out


def status_listing(wg):
    out = {}
    for svc, s in wg.status().get("services", {}).items():
        inst = {i["id"]: i["address"] for i in s.get("instances", [])}
        if inst:
            out[svc] = inst
    return out


def access_lines(wg):
    """The access log (text format, on waygate's stdout) as dicts; lines
    of an http listener only once the request ended, tcp ones on close."""
    out = []
    for line in wg.proc.stdout_text().splitlines():
        fields = dict(kv.split("=", 1) for kv in re.findall(r'(\w+=(?:"(?:[^"\\]|\\.)*"|\S*))',
                                                            line))
        if "listener" in fields:
            out.append(fields)
    return out


class Instance:
    """A wg_backend on a fixed port and the `waygate register` that keeps it
    in etcd, restartable. A gated registrar (--health) takes the record out
    while the backend fails its health check; for the others only waygate's
    own probes keep traffic away."""

    def __init__(self, soak, service, rid, gated):
        self.soak, self.service, self.rid, self.gated = soak, service, rid, gated
        self.gen = 0
        self.port = None
        self.backend = self.registrar = None

    def start_backend(self, new_port=False):
        h = self.soak.h
        if new_port or self.port is None:
            self.port = free_port()
        for attempt in range(20):       # the port may be taken meanwhile, or not yet free
            self.gen += 1
            name = "%s-%d" % (self.rid, self.gen)
            p = h.start("backend-" + name, [tool("wg_backend"), "--listen",
                                            "127.0.0.1:%d" % self.port, "--name", self.rid,
                                            "--mode", "http"], pipe_stdout=True)
            try:
                if p.read_line(timeout=slack(5)) == "ready %d" % self.port:
                    self.backend = p
                    return
            except AssertionError:
                pass
            p.kill()
            time.sleep(0.2)
            if new_port:
                self.port = free_port()
        raise AssertionError("backend %s could not listen on %d" % (self.rid, self.port))

    def start_registrar(self):
        s = self.soak
        self.registrar = s.h.start("register-%s-%d" % (self.rid, self.gen), [
            tool("waygate"), "register", "--etcd", ",".join(s.cluster.urls), "--service",
            self.service, "--id", self.rid, "--address", "127.0.0.1:%d" % self.port,
            "--ttl", "10s", "--drain", "0s"] + (
            ["--health", "http://127.0.0.1:%d/health" % self.port, "--health-interval", "200ms"]
            if self.gated else []))

    def stats(self):
        return json.loads(http_request(self.port, path="/stats", timeout=5).body)

    def set_health(self, status):
        r = http_request(self.port, method="POST", path="/control/health?status=%d" % status,
                         timeout=5)
        assert r.status == 200, r

    def address(self):
        return "127.0.0.1:%d" % self.port


class Soak:
    def __init__(self, h, cluster, seed):
        self.h, self.cluster = h, cluster
        self.rng = random.Random(seed)
        self.faults = []            # (seconds since the load started, what)
        self.violations = []        # requests served after a drain finished
        self.t0 = None
        self.instances = [Instance(self, "users", "u%d" % k, k < 2) for k in range(3)] + \
            [Instance(self, "raw", "r%d" % k, k < 1) for k in range(2)]
        self.wg = None

    def client(self):
        """A client of a member that is up (any: etcd forwards to the leader)."""
        alive = [m for m in self.cluster.members if m.alive()]
        return self.rng.choice(alive).client(timeout=5)

    def etcd_call(self, fn, what):
        last = [None]

        def attempt():
            try:
                last[0] = fn(self.client())
                return True
            except (EtcdError, OSError) as e:
                last[0] = e
                return False
        wait_until(attempt, slack(20), what, interval=0.2)
        return last[0]

    def listing(self):
        return self.etcd_call(etcd_listing, "an etcd listing")

    def wait_registered(self, inst, present=True):
        def ok():
            there = self.listing().get(inst.service, {}).get(inst.rid) == inst.address()
            return there == present
        wait_until(ok, slack(15), "%s %s in etcd" % (inst.rid, "registered" if present else
                                                     "deregistered"), interval=0.1)

    def wait_routed(self, inst, present=True):
        def ok():
            svc = self.wg.status().get("services", {}).get(inst.service, {})
            st = {i["id"]: i for i in svc.get("instances", [])}.get(inst.rid)
            if not present:
                return st is None or st.get("address") != inst.address() or \
                    st.get("health") != "healthy"
            return st is not None and st.get("address") == inst.address() and \
                st.get("health") == "healthy"
        wait_until(ok, slack(15), "%s %s in waygate" % (inst.rid, "routed" if present else
                                                        "not routed"), interval=0.1)

    def note(self, what, kind=None):
        t = time.monotonic() - self.t0
        if kind:
            self.faults.append((t, kind))
        report("%7.1fs  %s" % (t, what))

    # ---- faults ----------------------------------------------------------

    def kill_backend(self):
        inst = self.rng.choice([i for i in self.instances if i.service == "users"])
        self.note("SIGKILL backend %s (port %d)" % (inst.rid, inst.port), "backend killed")
        inst.backend.kill()
        if inst.gated:
            self.wait_registered(inst, present=False)   # the registrar's health check
        self.wait_routed(inst, present=False)
        inst.start_backend()
        self.wait_registered(inst)
        self.wait_routed(inst)

    def rolling_restart(self):
        inst = self.rng.choice(self.instances)
        self.note("rolling restart %s/%s" % (inst.service, inst.rid), "rolling restart")
        inst.registrar.signal(signal.SIGTERM)   # deletes the key, revokes the lease
        rc = inst.registrar.wait(slack(15))
        assert rc == 0, "registrar %s: exit %s\n%s" % (inst.rid, rc,
                                                        inst.registrar.stderr_text()[-2000:])
        time.sleep(DRAIN)
        before = inst.stats()
        time.sleep(AFTER_DRAIN)
        after = inst.stats()
        if after["served"] != before["served"]:
            self.violations.append("%s/%s served %d requests between %.1fs and %.1fs after "
                                   "its deregistration" % (inst.service, inst.rid,
                                                           after["served"] - before["served"],
                                                           DRAIN, DRAIN + AFTER_DRAIN))
        assert inst.backend.stop() == 0
        inst.start_backend(new_port=True)       # the new version, elsewhere
        inst.start_registrar()
        self.wait_registered(inst)
        self.wait_routed(inst)

    def kill_etcd_leader(self):
        def leader(c):
            st = c.call("/v3/maintenance/status", {})
            return st.get("leader")
        lid = self.etcd_call(leader, "the etcd leader")
        idx = None
        for i, m in enumerate(self.cluster.members):
            try:
                st = m.client(timeout=5).call("/v3/maintenance/status", {})
                if st["header"]["member_id"] == lid:
                    idx = i
            except (EtcdError, OSError):
                pass
        assert idx is not None, "no member is the leader %s" % lid
        m = self.cluster[idx]
        self.note("SIGKILL etcd leader %s" % m.name, "etcd leader killed")
        m.kill()
        time.sleep(2)
        # a write through the two others: a new leader was elected
        self.etcd_call(lambda c: c.put("/soak/probe", str(time.time())), "a write after the kill")
        m.start()
        m.wait_healthy(timeout=30)
        self.note("etcd %s back" % m.name)

    def compact(self):
        # a write first: two compactions in a row would name the same
        # revision, and etcd refuses one that is compacted already
        rev = self.etcd_call(lambda c: c.put("/soak/compact", str(time.time())), "a write")
        self.note("compaction at revision %d" % rev, "compaction")

        def compact(c):
            try:
                return c.compact(rev)
            except EtcdError as e:
                if "compacted" not in e.body:   # a retry after a lost answer
                    raise
        self.etcd_call(compact, "a compaction")

    def health_flip(self):
        inst = self.rng.choice(self.instances)
        self.note("health of %s/%s -> 503" % (inst.service, inst.rid), "health flip")
        inst.set_health(503)
        if inst.gated:
            self.wait_registered(inst, present=False)
        self.wait_routed(inst, present=False)
        inst.set_health(200)
        self.note("health of %s/%s -> 200" % (inst.service, inst.rid))
        self.wait_registered(inst)
        self.wait_routed(inst)


def wrk_cmd(lua, url, conns, pause_ms, seconds, close=False):
    argv = ["wrk", "-t1", "-c%d" % conns, "-d%ds" % seconds, "--timeout", "10s", "-s", lua]
    if close:
        argv += ["-H", "Connection: close"]
    return argv + [url, "--", str(pause_ms)]


def parse_wrk(name, out):
    m = re.search(r"SOAK (.*)", out)
    assert m, "%s: no summary from the Lua script:\n%s" % (name, out)
    return {k: int(v) for k, v in (kv.split("=") for kv in m.group(1).split())}


def test_soak_under_faults():
    if not shutil.which("wrk"):
        raise AssertionError("wrk is missing: make deps")
    seed = int(os.environ.get("WAYGATE_SOAK_SEED") or random.randrange(1 << 31))
    report("soak: %ds, seed %d (WAYGATE_SOAK_SEED=%d replays the fault order)"
           % (SECONDS, seed, seed))
    with EtcdHarness() as h:
        cluster = h.etcd_cluster(3)
        soak = Soak(h, cluster, seed)
        for inst in soak.instances:
            inst.start_backend()
            inst.start_registrar()
        pki = shared()
        cert, key = pki.leaf("a", ["a.test"])
        routes = [{"path_prefix": "/", "service": "users"}]
        listeners = [
            {"name": "web", "mode": "http", "routes": routes},
            {"name": "secure", "mode": "http", "routes": routes,
             "tls": {"certificates": [{"cert": cert, "key": key}], "client_ca": pki.ca,
                     "verify": "optional"}},
            {"name": "raw", "mode": "tcp", "service": "raw"},
        ]
        health = {"type": "http", "path": "/health", "interval": "300ms", "timeout": "1s"}
        wg = soak.wg = h.waygate_etcd(cluster, backoff=("50ms", "500ms"), listeners=listeners,
                                      service_defaults={
                                          "health_check": health, "retries": 2,
                                          "upstream": {"idle_timeout": "1s"},
                                          # a killed instance that waygate ejects (connects
                                          # refused) is back within the fault's wait: the
                                          # default 30 s, x the ejection count, is not
                                          "outlier_detection": {"base_ejection_time": "2s",
                                                                "max_ejection_time": "3s"}})
        for inst in soak.instances:
            soak.wait_registered(inst)
            soak.wait_routed(inst)

        # reloads: valid and invalid configurations, alternating
        sent = {"valid": 0, "invalid": 0}
        stop = threading.Event()
        reload_errors = []

        def reloader():
            k = 0
            while not stop.wait(3.0):
                cfg = copy.deepcopy(wg.config_dict())
                valid = k % 2 == 0
                if valid:
                    # a service setting, and the registry section: a new
                    # registry client takes over at every valid reload
                    cfg["service_defaults"]["connect_timeout"] = "1s" if k % 4 else "2s"
                    cfg["registry"]["etcd"]["watch_timeout"] = "10s" if k % 4 else "12s"
                    text = yaml_block(cfg) + "\n"
                else:
                    text = yaml_block(cfg) + "\nservice_defaults_typo: 1\n"
                write_atomic(wg.config_path, text)
                want = ("configuration reloaded", "msg=\"reload refused")[not valid]
                n0 = wg.stderr_text().count(want)
                wg.proc.signal(signal.SIGHUP)
                sent["valid" if valid else "invalid"] += 1
                try:
                    wait_until(lambda: wg.stderr_text().count(want) > n0, slack(10),
                               "SIGHUP %d (%s) answered" % (k, "valid" if valid else "invalid"))
                except AssertionError as e:
                    reload_errors.append(str(e))
                k += 1
            write_atomic(wg.config_path, yaml_block(wg.config_dict()) + "\n")

        # descriptors when quiet (no client, pools timed out): start and end
        time.sleep(slack(2))
        fds_quiet0 = open_fds(wg.pid)
        fds_quiet0_list = fd_listing(wg.pid)
        lua = h.path("soak.lua")
        with open(lua, "w") as f:
            f.write(WRK_LUA)
        load_s = int(SECONDS)
        wrks = {
            "http": wrk_cmd(lua, "http://127.0.0.1:%d/" % wg.port("web"), 4, 10, load_s),
            "tls": wrk_cmd(lua, "https://127.0.0.1:%d/" % wg.port("secure"), 4, 10, load_s),
            "tcp": wrk_cmd(lua, "http://127.0.0.1:%d/" % wg.port("raw"), 2, 20, load_s,
                           close=True),
        }
        procs = {n: h.start("wrk-" + n, argv) for n, argv in wrks.items()}
        soak.t0 = time.monotonic()
        samples = []            # (t, rss KiB, fds)

        def sampler():
            while not stop.wait(1.0):
                try:
                    samples.append((time.monotonic() - soak.t0, wg.rss_kib(), open_fds(wg.pid)))
                except OSError:
                    pass
        threads = [threading.Thread(target=reloader, daemon=True),
                   threading.Thread(target=sampler, daemon=True)]
        for t in threads:
            t.start()
        faults = [soak.kill_backend, soak.rolling_restart, soak.kill_etcd_leader, soak.compact,
                  soak.health_flip]
        try:
            end = soak.t0 + load_s - slack(8)        # the last part runs without faults
            while time.monotonic() < end:
                order = faults[:]
                soak.rng.shuffle(order)
                for fault in order:
                    if time.monotonic() >= end:
                        break
                    fault()
                    time.sleep(soak.rng.uniform(0.3, 1.5))
            for n, p in procs.items():
                rc = p.wait(load_s + slack(60))
                assert rc == 0, "wrk %s: exit %s %s" % (n, rc, p.stderr_text())
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=30)
        results = {n: parse_wrk(n, p.stdout_text()) for n, p in procs.items()}
        for n, r in sorted(results.items()):
            report("wrk %-4s %s" % (n, " ".join("%s=%d" % kv for kv in sorted(r.items()))))
        kinds = {}
        for _, k in soak.faults:
            kinds[k] = kinds.get(k, 0) + 1
        report("faults: %d %s; SIGHUPs: %s" % (len(soak.faults), kinds, sent))

        # 1. no failed request
        for n, r in results.items():
            errors = sum(r[k] for k in ("connect", "read", "write", "status", "timeout"))
            assert r["requests"] > 0 and r["ok"] == r["requests"], "%s: %s" % (n, r)
            assert errors == 0 and r["non2xx"] == 0, "%s: failed requests: %s" % (n, r)
        # 2. no request served after a drain finished
        assert not soak.violations, soak.violations
        # 3. /status equal to etcd's listing
        want = {}

        def same():
            want.clear()
            want.update(soak.listing())
            return status_listing(wg) == want
        try:
            wait_until(same, slack(10), "/status equal to etcd")
        except AssertionError:
            raise AssertionError("/status %s, etcd %s" % (status_listing(wg), want))
        assert want == {s: {i.rid: i.address() for i in soak.instances if i.service == s}
                        for s in ("users", "raw")}, want
        # 4. every reload answered, the refused ones refused
        assert not reload_errors, reload_errors
        assert sent["valid"] >= 1 and sent["invalid"] >= 1, sent
        # 5. descriptors and memory
        try:
            wait_until(lambda: open_fds(wg.pid) <= fds_quiet0 + 2, slack(15),
                       "descriptors back to the quiet level")
        except AssertionError:
            now = fd_listing(wg.pid)
            extra = {fd: what for fd, what in sorted(now.items())
                     if fds_quiet0_list.get(fd) != what}
            raise AssertionError("descriptors: %d quiet, %d now; new or changed: %r" % (
                fds_quiet0, len(now), extra))
        fds_end = open_fds(wg.pid)
        first = [s for s in samples if 0.15 * load_s <= s[0] <= 0.35 * load_s]
        last = [s for s in samples if s[0] >= 0.8 * load_s and s[0] <= load_s]
        assert first and last, samples
        med = lambda xs: sorted(xs)[len(xs) // 2]
        rss_first, rss_last = med([s[1] for s in first]), med([s[1] for s in last])
        fd_first, fd_last = max(s[2] for s in first), max(s[2] for s in last)
        report("rss KiB first %d last %d; fds quiet %d -> %d, under load max %d -> %d" % (
            rss_first, rss_last, fds_quiet0, fds_end, fd_first, fd_last))
        if not SANITIZED:
            assert rss_last - rss_first <= SOAK_RSS_BOUND_KIB, (
                "RSS grew from %d to %d KiB" % (rss_first, rss_last))
        # 6. counters
        m = metrics(wg)
        reqs = m.get("waygate_http_requests_total", 0)
        classes = {c: m.get('waygate_http_responses_total{code="%s"}' % c, 0)
                   for c in ("1xx", "2xx", "3xx", "4xx", "5xx")}
        assert reqs == sum(classes.values()), (reqs, classes)
        assert classes["2xx"] == reqs, classes
        served = results["http"]["requests"] + results["tls"]["requests"]
        inflight = 8                    # wrk stops with up to one request per connection open
        assert served <= reqs <= served + inflight, "waygate %d requests, wrk %d" % (reqs, served)
        acc = m.get("waygate_connections_accepted_total", 0)
        per = summed(m, "waygate_listener_connections_accepted_total")
        assert acc == per, (acc, per)
        assert acc >= results["tcp"]["requests"], (acc, results["tcp"])
        assert m.get("waygate_registry_connected") == 1
        # 7. nothing left open: no client connection, no in-flight count
        wait_until(lambda: metrics(wg).get("waygate_connections_open") == 0, slack(10),
                   "no client connection open")
        active = {(svc, i["id"]): i["active_connections"]
                  for svc, st in wg.status()["services"].items() for i in st["instances"]}
        assert not any(active.values()), "active counts left after the load: %s" % active
        # 8. the access log agrees with the counters
        lines = access_lines(wg)
        m = metrics(wg)
        dropped = m.get("waygate_access_log_dropped_total", 0)
        http_lines = [l for l in lines if l["listener"] in ("web", "secure")]
        tcp_lines = [l for l in lines if l["listener"] == "raw"]
        assert len(http_lines) + len(tcp_lines) == len(lines), {l["listener"] for l in lines}
        reqs = m["waygate_http_requests_total"]
        assert len(http_lines) <= reqs <= len(http_lines) + dropped, (len(http_lines), dropped,
                                                                      reqs)
        bad = [l for l in http_lines if l["status"] != "200" or l["reason"] != "-"]
        assert not bad, "%d http requests did not end with a 200: %s" % (len(bad), bad[:3])
        bad = [l for l in tcp_lines if l["reason"] != "eof"]
        assert not bad, "%d tcp connections did not end with eof: %s" % (len(bad), bad[:3])
        raw_accepted = m.get('waygate_listener_connections_accepted_total{listener="raw"}', 0)
        assert len(tcp_lines) <= raw_accepted <= len(tcp_lines) + dropped, (len(tcp_lines),
                                                                           raw_accepted)
        retries = sum(int(l["retries"]) for l in lines)
        report("access log: %d http, %d tcp lines, %d dropped; retries %d (metric %d)" % (
            len(http_lines), len(tcp_lines), dropped, retries, m["waygate_retries_total"]))
        if not dropped:
            assert retries == m["waygate_retries_total"], (retries, m["waygate_retries_total"])
        # 9. waygate's stderr holds its own log lines only (a libevent
        # "[warn] ... reentrant invocation" at every registry switch was
        # the soak's first find)
        err = wg.stderr_text().splitlines()
        stray = [l for l in err if not re.match(r"\d{4}-\d\d-\d\dT\S+ level=\w+ msg=", l)]
        assert not stray, "stderr lines not from waygate's log: %s" % stray[:5]
        levels = {}
        for l in err:
            m = re.search(r'level=(warn|error) msg="([^"]*)"', l)
            if m:
                levels[m.group(0)] = levels.get(m.group(0), 0) + 1
        report("warnings and errors logged: %s" % (levels or "none"))
        assert wg.alive()
