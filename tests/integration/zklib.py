"""zklib — real ZooKeeper servers and ensembles for waygate's integration tests.

    with ZkHarness() as h:
        zk = h.zookeeper()                   # one server, free ports, tmpfs data dir
        c = zk.client()                      # a started kazoo client (Debian python3-kazoo)
        c.create("/services/users/a", b"127.0.0.1:9001", makepath=True)
        wg = h.waygate_zk(zk)                # waygate with registry.zookeeper

Servers are Debian's zookeeper 3.8 (`QuorumPeerMain` from /usr/share/java)
run as the test's own processes: a generated zoo.cfg on free 127.0.0.1 ports,
the data dir under /dev/shm (removed at exit), tickTime 200 ms (so sessions
may be as short as 400 ms), the admin server off, and the `srvr`/`ruok`/
`cons` four-letter words allowed. The harness stops exactly the processes it
started, by PID. Every wait is bounded.
"""

import os
import shutil
import socket
import tempfile

from etcdlib import EtcdWaygate
from wglib import Harness, ServerProcess, debian_import, free_ports, slack, wait_until

JAVA = shutil.which("java") or "/usr/bin/java"
JARS = ["zookeeper", "zookeeper-jute", "slf4j-api", "slf4j-simple", "netty-buffer",
        "netty-common", "netty-handler", "netty-transport", "netty-resolver", "netty-codec",
        "netty-transport-native-unix-common", "netty-transport-native-epoll",
        "commons-cli", "commons-io", "jackson-annotations", "jackson-core",
        "jackson-databind", "metrics-core", "snappy-java", "audience-annotations"]
TICK_MS = 200


def classpath():
    found = []
    for j in JARS:
        p = "/usr/share/java/%s.jar" % j
        if os.path.exists(p):
            found.append(p)
    return ":".join(found)


def four_letter(port, word, timeout=2.0):
    """A four-letter-word command's answer ('' when the server is down)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(word.encode())
            out = b""
            while True:
                d = s.recv(65536)
                if not d:
                    break
                out += d
            return out.decode(errors="replace")
    except OSError:
        return ""


class Server(ServerProcess):
    def __init__(self, harness, sid, data_dir, client_port, peer_port, election_port):
        self.h = harness
        self.sid = sid
        self.data_dir = data_dir
        self.client_port = client_port
        self.peer_port = peer_port
        self.election_port = election_port
        self.ensemble = None            # "server.N=..." lines, or None: standalone
        self.proc = None
        self.starts = 0

    @property
    def address(self):
        return "127.0.0.1:%d" % self.client_port

    def write_config(self):
        os.makedirs(self.data_dir, exist_ok=True)
        cfg = os.path.join(self.data_dir, "zoo.cfg")
        lines = ["tickTime=%d" % TICK_MS, "initLimit=50", "syncLimit=25",
                 "dataDir=%s" % self.data_dir, "clientPort=%d" % self.client_port,
                 "clientPortAddress=127.0.0.1", "admin.enableServer=false",
                 "4lw.commands.whitelist=srvr,ruok,cons,mntr,stat",
                 "minSessionTimeout=%d" % (2 * TICK_MS), "maxSessionTimeout=60000",
                 "forceSync=no", "maxClientCnxns=0", "jute.maxbuffer=16777216"]
        if self.ensemble:
            lines += self.ensemble + ["standaloneEnabled=false", "reconfigEnabled=false"]
            with open(os.path.join(self.data_dir, "myid"), "w") as f:
                f.write("%d\n" % self.sid)
        with open(cfg, "w") as f:
            f.write("\n".join(lines) + "\n")
        return cfg

    def start(self):
        self.starts += 1
        cfg = self.write_config()
        argv = [JAVA, "-Xmx256m", "-Xss512k", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
                "-Djute.maxbuffer=16777216", "-Dzookeeper.jmx.log4j.disable=true",
                "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn",
                "-cp", classpath(), "org.apache.zookeeper.server.quorum.QuorumPeerMain", cfg]
        self.proc = self.h.start("zookeeper-%d-%d" % (self.sid, self.starts), argv)
        return self

    def mode(self):
        """'standalone', 'leader', 'follower' or '' (down / not serving)."""
        for line in four_letter(self.client_port, "srvr").splitlines():
            if line.startswith("Mode:"):
                return line.split(":", 1)[1].strip()
        return ""

    def clients(self):
        """The client ports connected to this server (from `cons`)."""
        ports = []
        for line in four_letter(self.client_port, "cons").splitlines():
            line = line.strip()
            if line.startswith("/127.0.0.1:"):
                ports.append(int(line.split(":", 1)[1].split("[", 1)[0]))
        return ports

    def wait_serving(self, timeout=60):
        def ok():
            if not self.alive():
                raise AssertionError("zookeeper %d exited: %s"
                                     % (self.sid, self.proc.stderr_text()[-2000:]))
            return self.mode() in ("standalone", "leader", "follower")
        wait_until(ok, slack(timeout), "zookeeper %d serving" % self.sid, interval=0.1)

    def client(self, **kw):
        return connect_kazoo(self.address, **kw)


def kazoo_client_class():
    """Debian's python3-kazoo."""
    return debian_import("kazoo.client").KazooClient


def connect_kazoo(hosts, timeout=30, **kw):
    KazooClient = kazoo_client_class()
    c = KazooClient(hosts=hosts, timeout=kw.pop("session_timeout", 10), **kw)
    c.start(timeout=slack(timeout))
    return c


class Ensemble:
    def __init__(self, servers):
        self.servers = servers

    def __getitem__(self, i):
        return self.servers[i]

    @property
    def addresses(self):
        return [s.address for s in self.servers]

    def client(self, **kw):
        return connect_kazoo(",".join(self.addresses), **kw)

    def wait_serving(self, timeout=60):
        for s in self.servers:
            if s.alive():
                s.wait_serving(timeout)


class ZkHarness(Harness):
    """A Harness that also owns ZooKeeper servers, their tmpfs data dirs and
    the kazoo clients it made (stopped at exit)."""

    def __enter__(self):
        super().__enter__()
        base = "/dev/shm" if os.path.isdir("/dev/shm") else self.tmp
        self.shm = tempfile.mkdtemp(prefix="wg-zk-", dir=base)
        self.kazoos = []
        return self

    def __exit__(self, exc_type, exc, tb):
        for c in self.kazoos:
            try:
                c.stop()
                c.close()
            except Exception:
                pass
        try:
            return super().__exit__(exc_type, exc, tb)
        finally:
            shutil.rmtree(self.shm, ignore_errors=True)

    def kazoo(self, target, **kw):
        """A started kazoo client of a Server or an Ensemble (stopped at exit)."""
        c = target.client(**kw)
        self.kazoos.append(c)
        return c

    def zookeeper(self):
        """One standalone server (Server); retried on new ports if a port was taken."""
        for attempt in range(3):
            ports = free_ports(3)
            s = Server(self, attempt + 1, os.path.join(self.shm, "s%d" % attempt), *ports)
            s.start()
            try:
                s.wait_serving()
                return s
            except AssertionError:
                if attempt == 2 or "Address already in use" not in s.proc.stderr_text():
                    raise
                s.kill()
        raise AssertionError("unreachable")

    def zookeeper_ensemble(self, n=3):
        ports = free_ports(3 * n)
        servers = [Server(self, i + 1, os.path.join(self.shm, "e%d" % i), *ports[3 * i:3 * i + 3])
                   for i in range(n)]
        spec = ["server.%d=127.0.0.1:%d:%d" % (s.sid, s.peer_port, s.election_port)
                for s in servers]
        for s in servers:
            s.ensemble = spec
            s.start()
        e = Ensemble(servers)
        e.wait_serving()
        return e

    def waygate_zk(self, target, root="/services", layout="auto", session_timeout="10s",
                   cache=None, auth=None, chroot=None, dubbo_services=None, **kw):
        """waygate with registry.zookeeper (an EtcdWaygate: the same /status helpers)."""
        servers = target.addresses if isinstance(target, Ensemble) else \
            [target.address] if isinstance(target, Server) else list(target)
        z = {"servers": servers, "root": root, "layout": layout,
             "session_timeout": session_timeout}
        if auth:
            z["auth"] = auth
        if chroot:
            z["chroot"] = chroot
        if dubbo_services:
            z["dubbo_services"] = dubbo_services
        reg = {"zookeeper": z}
        if cache:
            reg["cache"] = cache
        wg = EtcdWaygate(self, reg, **kw)
        self.waygates.append(wg)
        wg.start()
        return wg


def listing(client, root="/services"):
    """{service: sorted ids} as ZooKeeper itself lists root/<service>/<id>."""
    out = {}
    if not client.exists(root):
        return out
    for svc in client.get_children(root):
        ids = client.get_children("%s/%s" % (root, svc))
        if ids:
            out[svc] = sorted(ids)
    return out
