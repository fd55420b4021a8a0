"""etcdlib — real etcd members and clusters for waygate's integration tests.

    with EtcdHarness() as h:
        etcd = h.etcd()                      # one member, free ports, tmpfs data dir
        c = etcd.client()                    # the v3 JSON gateway, from Python
        c.put("/services/users/a", "127.0.0.1:9001")
        wg = h.waygate_etcd(etcd)            # waygate with registry.etcd

Members run with --data-dir under /dev/shm (removed at exit),
--unsafe-no-fsync and --experimental-watch-progress-notify-interval=1s unless
`progress_notify=None` (etcd's 10 min default). The harness stops exactly the
processes it started, by PID. Every wait is bounded.
"""

import base64
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.request

from wglib import Harness, ServerProcess, Waygate, free_ports, slack, wait_until

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
ETCDCTL = shutil.which("etcdctl") or "/usr/bin/etcdctl"


def b64(s):
    if isinstance(s, str):
        s = s.encode()
    return base64.b64encode(s).decode()


def unb64(s):
    return base64.b64decode(s).decode(errors="replace")


def prefix_end(prefix):
    p = bytearray(prefix.encode())
    p[-1] += 1
    return bytes(p)


class EtcdError(Exception):
    def __init__(self, status, body):
        super().__init__("HTTP %d: %s" % (status, body[:300]))
        self.status = status
        self.body = body


class Client:
    """A small client of the v3 JSON gateway (one endpoint)."""

    def __init__(self, url, ca=None, cert=None, key=None, user=None, password=None, timeout=10):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.token = None
        self.ctx = None
        if url.startswith("https://"):
            self.ctx = ssl.create_default_context(cafile=ca)
            if cert:
                self.ctx.load_cert_chain(cert, key)
        if user:
            self.authenticate(user, password)

    def call(self, path, body):
        data = json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method="POST",
                                     headers={"Content-Type": "application/json"})
        if self.token:
            req.add_header("Authorization", self.token)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self.ctx) as r:
                return json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            raise EtcdError(e.code, e.read().decode(errors="replace")) from None

    def authenticate(self, user, password):
        self.token = None
        self.token = self.call("/v3/auth/authenticate", {"name": user, "password": password})["token"]

    def put(self, key, value, lease=0):
        body = {"key": b64(key), "value": b64(value)}
        if lease:
            body["lease"] = str(lease)
        return int(self.call("/v3/kv/put", body)["header"]["revision"])

    def delete(self, key):
        return int(self.call("/v3/kv/deleterange", {"key": b64(key)})["header"]["revision"])

    def txn_put(self, items):
        """One transaction putting every (key, value) of `items` (<= 128)."""
        ops = [{"request_put": {"key": b64(k), "value": b64(v)}} for k, v in items]
        return int(self.call("/v3/kv/txn", {"success": ops})["header"]["revision"])

    def txn_delete(self, keys):
        ops = [{"request_delete_range": {"key": b64(k)}} for k in keys]
        return int(self.call("/v3/kv/txn", {"success": ops})["header"]["revision"])

    def get_prefix(self, prefix):
        r = self.call("/v3/kv/range", {"key": b64(prefix), "range_end": b64(prefix_end(prefix))})
        return {unb64(kv["key"]): unb64(kv.get("value", "")) for kv in r.get("kvs", [])}

    def revision(self):
        return int(self.call("/v3/kv/range", {"key": b64("\0"), "count_only": True})
                   ["header"]["revision"])

    def compact(self, revision):
        return self.call("/v3/kv/compaction", {"revision": str(revision), "physical": True})

    def lease_grant(self, ttl):
        r = self.call("/v3/lease/grant", {"TTL": str(ttl)})
        return int(r["ID"]), int(r["TTL"])

    def lease_revoke(self, lease):
        return self.call("/v3/lease/revoke", {"ID": str(lease)})


class Member(ServerProcess):
    def __init__(self, harness, name, data_dir, client_port, peer_port, tls=None,
                 progress_notify="1s", extra=()):
        self.h = harness
        self.name = name
        self.data_dir = data_dir
        self.client_port = client_port
        self.peer_port = peer_port
        self.tls = tls
        self.progress_notify = progress_notify
        self.extra = list(extra)
        self.proc = None
        self.cluster = None             # "name=url,..." for initial-cluster
        self.starts = 0

    @property
    def scheme(self):
        return "https" if self.tls else "http"

    @property
    def url(self):
        return "%s://127.0.0.1:%d" % (self.scheme, self.client_port)

    @property
    def peer_url(self):
        return "http://127.0.0.1:%d" % self.peer_port

    def argv(self):
        a = [ETCD, "--name", self.name, "--data-dir", self.data_dir,
             "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
             "--listen-peer-urls", self.peer_url, "--initial-advertise-peer-urls", self.peer_url,
             "--initial-cluster", self.cluster or "%s=%s" % (self.name, self.peer_url),
             "--initial-cluster-token", os.path.basename(os.path.dirname(self.data_dir)),
             "--initial-cluster-state", "new", "--unsafe-no-fsync",
             "--log-level", "warn", "--logger", "zap"]
        if self.progress_notify:
            a += ["--experimental-watch-progress-notify-interval", self.progress_notify]
        if self.tls:
            a += ["--cert-file", self.tls["cert"], "--key-file", self.tls["key"],
                  "--trusted-ca-file", self.tls["ca"], "--client-cert-auth"]
        return a + self.extra

    def start(self):
        self.starts += 1
        self.proc = self.h.start("etcd-%s-%d" % (self.name, self.starts), self.argv())
        return self

    def client(self, **kw):
        if self.tls:
            kw.setdefault("ca", self.tls["ca"])
            kw.setdefault("cert", self.tls["client_cert"])
            kw.setdefault("key", self.tls["client_key"])
        return Client(self.url, **kw)

    def healthy(self):
        try:
            ctx = None
            if self.tls:
                ctx = ssl.create_default_context(cafile=self.tls["ca"])
                ctx.load_cert_chain(self.tls["client_cert"], self.tls["client_key"])
            with urllib.request.urlopen(self.url + "/health", timeout=2, context=ctx) as r:
                return json.loads(r.read()).get("health") == "true"
        except (OSError, ValueError):
            return False

    def wait_healthy(self, timeout=20):
        def ok():
            if not self.alive():
                raise AssertionError("etcd %s exited: %s" % (self.name, self.proc.stderr_text()[-2000:]))
            return self.healthy()
        wait_until(ok, slack(timeout), "etcd %s healthy" % self.name, interval=0.05)

    def metrics(self):
        """etcd's own /metrics text."""
        ctx = None
        if self.tls:
            ctx = ssl.create_default_context(cafile=self.tls["ca"])
            ctx.load_cert_chain(self.tls["client_cert"], self.tls["client_key"])
        with urllib.request.urlopen(self.url + "/metrics", timeout=5, context=ctx) as r:
            return r.read().decode()

    def grpc_handled(self, method):
        """Sum of grpc_server_handled_total{grpc_method=METHOD}."""
        total = 0
        for line in self.metrics().splitlines():
            if line.startswith("grpc_server_handled_total{") and \
                    'grpc_method="%s"' % method in line:
                total += float(line.rsplit(" ", 1)[1])
        return int(total)


class Cluster:
    def __init__(self, members):
        self.members = members

    def __getitem__(self, i):
        return self.members[i]

    @property
    def urls(self):
        return [m.url for m in self.members]

    def client(self, i=0, **kw):
        return self.members[i].client(**kw)

    def wait_healthy(self, timeout=30):
        for m in self.members:
            if m.alive():
                m.wait_healthy(timeout)


class EtcdHarness(Harness):
    """A Harness that also owns etcd members and their tmpfs data dirs."""

    def __enter__(self):
        super().__enter__()
        base = "/dev/shm" if os.path.isdir("/dev/shm") else self.tmp
        self.shm = tempfile.mkdtemp(prefix="wg-etcd-", dir=base)
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            return super().__exit__(exc_type, exc, tb)
        finally:
            shutil.rmtree(self.shm, ignore_errors=True)

    def _member(self, name, ports=None, **kw):
        client, peer = ports or free_ports(2)
        return Member(self, name, os.path.join(self.shm, name), client, peer, **kw)

    def etcd(self, progress_notify="1s", tls=None, extra=(), wait=True):
        """One member (Member); retried on new ports if a port was taken."""
        for attempt in range(3):
            m = self._member("m%d" % attempt, progress_notify=progress_notify, tls=tls, extra=extra)
            m.start()
            if not wait:
                return m
            try:
                m.wait_healthy()
                return m
            except AssertionError:
                if attempt == 2 or "address already in use" not in m.proc.stderr_text():
                    raise
                m.kill()
        raise AssertionError("unreachable")

    def etcd_cluster(self, n=3, progress_notify="1s", extra=()):
        ports = free_ports(2 * n)           # distinct: two members on one port is no cluster
        members = [self._member("c%d" % i, ports=ports[2 * i:2 * i + 2],
                                progress_notify=progress_notify, extra=extra)
                   for i in range(n)]
        spec = ",".join("%s=%s" % (m.name, m.peer_url) for m in members)
        for m in members:
            m.cluster = spec
            m.start()
        c = Cluster(members)
        c.wait_healthy()
        return c

    def tls_files(self, names=("localhost",), ips=("127.0.0.1",)):
        """A CA, a server certificate (SANs from names and ips) and a client
        certificate, made with openssl in the test's directory."""
        d = self.path("tls")
        os.makedirs(d, exist_ok=True)

        def run(*args):
            subprocess.run(["openssl"] + list(args), check=True, capture_output=True, timeout=60)

        ca_key, ca = os.path.join(d, "ca.key"), os.path.join(d, "ca.crt")
        run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", ca_key, "-out", ca, "-days", "2", "-subj", "/CN=waygate test CA")
        out = {"ca": ca}
        for role in ("server", "client"):
            key, csr, crt = (os.path.join(d, role + ext) for ext in (".key", ".csr", ".crt"))
            ext = os.path.join(d, role + ".ext")
            with open(ext, "w") as f:
                if role == "server":
                    sans = ["DNS:%s" % n for n in names] + ["IP:%s" % i for i in ips]
                    # etcd's gateway dials its own listener with this certificate
                    f.write("subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\n"
                            % ",".join(sans))
                else:
                    f.write("extendedKeyUsage=clientAuth\n")
            run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-keyout", key, "-out", csr, "-subj", "/CN=waygate-%s" % role)
            run("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
                "-out", crt, "-days", "2", "-extfile", ext)
            if role == "server":
                out.update(cert=crt, key=key)
            else:
                out.update(client_cert=crt, client_key=key)
        return out

    def waygate_etcd(self, endpoints, prefix="/services/", watch_timeout="10s",
                     backoff=("50ms", "1s"), cache=None, username=None, password=None,
                     tls=None, **kw):
        """waygate with registry.etcd (see EtcdWaygate)."""
        if isinstance(endpoints, (Member,)):
            endpoints = [endpoints.url]
        elif isinstance(endpoints, Cluster):
            endpoints = endpoints.urls
        reg = {"etcd": {"endpoints": list(endpoints), "prefix": prefix,
                        "watch_timeout": watch_timeout,
                        "backoff": {"initial": backoff[0], "max": backoff[1]}}}
        if username:
            reg["etcd"]["username"] = username
            reg["etcd"]["password"] = password
        if tls:
            reg["etcd"]["tls"] = tls
        if cache:
            reg["cache"] = cache
        wg = EtcdWaygate(self, reg, **kw)
        self.waygates.append(wg)
        wg.start()
        return wg


class EtcdWaygate(Waygate):
    def __init__(self, harness, registry, **kw):
        kw.setdefault("instances", {})
        super().__init__(harness, **kw)
        self.registry = registry

    def config_dict(self):
        cfg = super().config_dict()
        cfg["registry"] = self.registry
        return cfg

    def admin(self, path):
        conn = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=5)
        try:
            conn.request("GET", path)
            r = conn.getresponse()
            return r.status, r.read().decode(errors="replace")
        finally:
            conn.close()

    def status(self):
        code, body = self.admin("/status")
        assert code == 200, "/status: %d %s" % (code, body[:200])
        return json.loads(body)

    def registry_status(self):
        return self.status()["registry"]

    def pool(self, service="users"):
        """{id: address} of a service in /status."""
        svc = self.status().get("services", {}).get(service)
        return {i["id"]: i["address"] for i in (svc or {}).get("instances", [])}

    def metric(self, name):
        """The value of an unlabelled waygate metric (0 when absent)."""
        code, body = self.admin("/metrics")
        assert code == 200
        for line in body.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return 0.0

    def wait_instances(self, want, service="users", timeout=5):
        """Waits until the service's {id: address} equals `want`."""
        last = [None]

        def ok():
            try:
                last[0] = self.pool(service)
            except (OSError, http.client.HTTPException) as e:
                last[0] = "admin API: %s" % e       # not answering yet: keep waiting
            return last[0] == want
        try:
            wait_until(ok, slack(timeout), "instances %s" % want, interval=0.02)
        except AssertionError:
            raise AssertionError("instances of %s: want %s, have %s" % (service, want, last[0]))


class TcpCut:
    """A TCP proxy in front of an etcd member whose connections the test can
    cut: `cut()` closes every open connection and refuses new ones (RST);
    `freeze()` makes the member silent without closing anything (bytes are
    held, new connections are accepted and never answered), like a network
    partition; `restore()` forwards again (and resets the connections
    accepted while frozen)."""

    def __init__(self, target_port):
        self.target = target_port
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.url = "http://127.0.0.1:%d" % self.port
        self.open = True
        self.frozen = False
        self.held = []
        self.conns = []
        self.lock = threading.Lock()
        self.stopping = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while not self.stopping:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            if not self.open:
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                c.close()
                continue
            if self.frozen:
                with self.lock:
                    self.held.append(c)
                continue
            try:
                u = socket.create_connection(("127.0.0.1", self.target), timeout=2)
            except OSError:
                c.close()
                continue
            with self.lock:
                self.conns += [c, u]
            for a, b in ((c, u), (u, c)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, a, b):
        try:
            while True:
                d = a.recv(65536)
                if not d:
                    break
                while self.frozen and not self.stopping:
                    time.sleep(0.02)
                b.sendall(d)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self):
        self.open = False
        with self.lock:
            conns, self.conns = self.conns, []
        for s in conns:
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                s.shutdown(socket.SHUT_RDWR)    # wakes the pipe threads blocked in recv
            except OSError:
                pass
            s.close()

    def freeze(self):
        self.frozen = True

    def restore(self):
        self.open = True
        self.frozen = False
        with self.lock:
            held, self.held = self.held, []
        for c in held:
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
            c.close()

    def close(self):
        self.stopping = True
        self.restore()
        self.cut()
        self.sock.close()
