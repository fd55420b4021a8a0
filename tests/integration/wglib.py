"""wglib — shared helpers of waygate's integration tests.

Every test builds its world inside one `Harness` (a context manager): the
harness owns a temporary directory and every process the test starts, and on
exit stops exactly those processes, by PID (SIGTERM, a bounded wait, then
SIGKILL), whether the test passed or not. When the test failed, the harness
prints the stderr of every waygate it started.

Every wait is bounded: use `wait_until()` (or a helper built on it), never a
sleep loop without a deadline.

Environment:
  WAYGATE_BUILD      the build directory (waygate, wg_backend, wg_blast); the
                     runner sets it; default <repo>/build
  WAYGATE_SANITIZED  "1" for ASan/UBSan builds: RSS, timing and CPU assertions
                     are skipped (`SANITIZED`), sizes may shrink (`scaled()`),
                     and deadlines grow (`slack()`)
  WAYGATE_KEEP_TMP   "1" keeps a failed test's temporary directory
"""

import collections
import errno
import os
import re
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.path.abspath(os.environ.get("WAYGATE_BUILD") or os.path.join(ROOT, "build"))
SANITIZED = os.environ.get("WAYGATE_SANITIZED") == "1"

KIB = 1024
MIB = 1024 * 1024
GIB = 1024 * MIB


# ---- sizes, deadlines, waiting --------------------------------------------

def scaled(release, sanitized):
    """`release` in a Release build, `sanitized` under ASan/UBSan."""
    return sanitized if SANITIZED else release


def debian_import(name):
    """Imports `name` from a Debian python3-* package: a python3 outside
    Debian's (pyenv here) does not look in Debian's dist-packages, so that
    directory is tried after the interpreter's own path."""
    import importlib
    try:
        return importlib.import_module(name)
    except ImportError:
        if "/usr/lib/python3/dist-packages" not in sys.path:
            sys.path.append("/usr/lib/python3/dist-packages")
        return importlib.import_module(name)


def slack(seconds):
    """A deadline for work waygate does: sanitizers slow it down ~3x."""
    return seconds * 3 if SANITIZED else seconds


def wait_until(predicate, timeout, what, interval=0.02):
    """Calls predicate() until it returns a true value (returned) or `timeout`
    seconds pass (AssertionError naming `what`)."""
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= end:
            raise AssertionError("timed out after %.1fs waiting for %s" % (timeout, what))
        time.sleep(interval)


def tool(name):
    """Path of a binary in the build directory."""
    path = os.path.join(BUILD, name)
    if not os.access(path, os.X_OK):
        raise AssertionError("%s is missing: build first (make build)" % path)
    return path


# Ports handed out by free_port()/free_ports() lately: the kernel may give
# the same ephemeral port to two bind(0) calls once the first socket is
# closed, and a test that asks twice before binding either would get one
# port for two listeners ("already used by admin.listen").
_recent_ports = collections.deque(maxlen=512)


def _bound_fresh():
    """A socket bound to 127.0.0.1:<port> where port was not handed out
    lately; the caller closes it. Returns (socket, port)."""
    for _ in range(64):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        if port not in _recent_ports:
            _recent_ports.append(port)
            return s, port
        s.close()
    raise AssertionError("no fresh free port after 64 tries")


def free_port():
    """A port that was free a moment ago (bind 127.0.0.1:0, close) and that
    no other free_port()/free_ports() call of this process handed out
    lately. Whoever binds it must retry with another one if it was taken
    meanwhile."""
    s, port = _bound_fresh()
    s.close()
    return port


def connectable(port):
    """True when a connection to 127.0.0.1:port is accepted now."""
    s = socket.socket()
    try:
        s.connect(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


class Blackhole:
    """A listener on 127.0.0.1 whose accept queue is full: new SYNs to it
    go unanswered, so a connect to `port` times out (on loopback: outbound
    traffic may be intercepted here, so never leave the machine)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(0)
        self.port = self.sock.getsockname()[1]
        self.fillers = []
        for _ in range(3):
            f = socket.socket()
            f.setblocking(False)
            f.connect_ex(("127.0.0.1", self.port))
            self.fillers.append(f)
        time.sleep(0.2)

    def close(self):
        for f in self.fillers:
            f.close()
        self.sock.close()


def free_ports(n):
    """n distinct ports that were free a moment ago: all n are held at once
    while they are picked, none handed out lately by free_port()."""
    socks = []
    try:
        for _ in range(n):
            socks.append(_bound_fresh())
        return [port for _, port in socks]
    finally:
        for s, _ in socks:
            s.close()


# ---- the deterministic stream (see tests/tools/wg_backend.c) --------------

def pattern(n, seed=1):
    """The first n bytes of the xorshift64 stream shared with wg_backend and
    wg_blast. Pure Python: fine for a few MiB; use wg_blast for more."""
    mask = (1 << 64) - 1
    s = seed or 0x9E3779B97F4A7C15
    out = bytearray()
    for _ in range((n + 7) // 8):
        s ^= (s << 13) & mask
        s ^= s >> 7
        s ^= (s << 17) & mask
        out += s.to_bytes(8, "little")
    return bytes(out[:n])


def fnv1a(data, h=2166136261):
    """FNV-1a 32, as wg_backend reports it (rx_fnv=, fnv=)."""
    for b in data:
        h = ((h ^ b) * 16777619) & 0xFFFFFFFF
    return h


# ---- /proc ------------------------------------------------------------------

def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS for pid %d" % pid)


def cpu_seconds(pid):
    """utime + stime of the whole process (all threads), in seconds."""
    with open("/proc/%d/stat" % pid) as f:
        data = f.read()
    fields = data[data.rindex(")") + 2:].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    ticks = int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def open_fds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


TCP_STATES = {"01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1",
              "05": "FIN_WAIT2", "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT",
              "09": "LAST_ACK", "0A": "LISTEN", "0B": "CLOSING"}


def fd_listing(pid):
    """{fd: what it is}: a TCP socket (IPv4 or IPv6) as "tcp :LOCAL_PORT ->
    :REMOTE_PORT STATE", anything else as its /proc link. For a failure
    message: which descriptors a process holds."""
    def port(addr):                     # "0100007F:1F90" -> 8080
        return int(addr.rsplit(":", 1)[1], 16)
    socks = {}
    for name in ("/proc/%d/net/tcp" % pid, "/proc/%d/net/tcp6" % pid):
        try:
            lines = open(name).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            socks[f[9]] = "tcp :%d -> :%d %s" % (port(f[1]), port(f[2]),
                                                 TCP_STATES.get(f[3], f[3]))
    out = {}
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            link = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except OSError:
            continue
        if link.startswith("socket:["):
            link = socks.get(link[8:-1], link)
        out[int(fd)] = link
    return out


# ---- processes --------------------------------------------------------------

SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                     "WARNING: ThreadSanitizer", "ERROR: ThreadSanitizer")


def sanitizer_report(text):
    """The first line of a sanitizer report in `text`, or None."""
    for line in text.splitlines():
        if any(m in line for m in SANITIZER_MARKERS):
            return line.strip()
    return None


def parse_duration(text):
    """Seconds of a config duration ("250ms", "2s", "1m", "1h")."""
    m = re.fullmatch(r"(\d+)(ms|s|m|h)", str(text))
    if not m:
        raise ValueError("bad duration %r" % text)
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]


class FifoDrain:
    """A thread that empties a FIFO read end (opened O_NONBLOCK) until stop():
    a slow or stuck log reader that starts reading again."""

    def __init__(self, rfd):
        self._rfd = rfd
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._done.is_set():
            try:
                if not os.read(self._rfd, 1 << 16):
                    time.sleep(0.01)
            except BlockingIOError:
                time.sleep(0.01)

    def stop(self):
        self._done.set()
        self._thread.join(timeout=5)


class Proc:
    """A process started by a test. Only `Harness` creates these.

    expect_clean_exit: checked by the harness at the end of the test: if the
    process is still running then, the cleanup's SIGTERM must make it exit 0
    within stop_timeout, and its stderr must hold no sanitizer report.
    Waygate sets it for its processes."""

    def __init__(self, name, argv, stdout_path, stderr_path, pipe_stdout=False,
                 preexec_fn=None, env=None):
        self.name = name
        self.argv = argv
        self.expect_clean_exit = False
        self.stop_timeout = slack(5.0)
        self.stdout_path = stdout_path
        self.stderr_path = stderr_path
        self._stderr = open(stderr_path, "wb")
        self._stdout = None if pipe_stdout else open(stdout_path, "wb")
        self._buf = b""
        self.popen = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if pipe_stdout else self._stdout,
            stderr=self._stderr, preexec_fn=preexec_fn, env=env, close_fds=True)
        self.pid = self.popen.pid

    def alive(self):
        return self.popen.poll() is None

    @property
    def returncode(self):
        return self.popen.poll()

    def read_line(self, timeout):
        """The next stdout line (piped stdout only), without the newline."""
        end = time.monotonic() + timeout
        fd = self.popen.stdout.fileno()
        while b"\n" not in self._buf:
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError("%s: no output line within %.1fs (got %r)"
                                     % (self.name, timeout, self._buf))
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise AssertionError("%s: stdout closed (exit %s) before a line; got %r\n%s"
                                         % (self.name, self.popen.poll(), self._buf,
                                            self.stderr_text()[-2000:]))
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode(errors="replace")

    def wait(self, timeout):
        """Waits for the exit; returns the exit status (negative: signal)."""
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError("%s (pid %d) still running after %.1fs"
                                 % (self.name, self.pid, timeout)) from None

    def signal(self, sig):
        if self.alive():
            self.popen.send_signal(sig)

    def stop(self, timeout=None):
        """SIGTERM, a bounded wait, then SIGKILL. Returns the exit status."""
        if timeout is None:
            timeout = slack(5.0)
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)
        self._close_files()
        return self.popen.returncode

    def kill(self):
        if self.alive():
            self.popen.kill()
            self.popen.wait(timeout=10)
        self._close_files()

    def _close_files(self):
        for f in (self._stderr, self._stdout, self.popen.stdout):
            if f and not f.closed:
                f.close()

    def stderr_text(self):
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def stdout_text(self):
        try:
            with open(self.stdout_path, "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def rss_kib(self):
        return rss_kib(self.pid)

    def cpu_seconds(self):
        return cpu_seconds(self.pid)


class Harness:
    """Owns a test's temporary directory and processes.

        with Harness() as h:
            b = h.backend("name", name="a")
            wg = h.waygate(instances={"users": [b.instance("a")]})
    """

    def __init__(self):
        self.tmp = None
        self.procs = []
        self.waygates = []

    def __enter__(self):
        self.tmp = tempfile.mkdtemp(prefix="wg-test-")
        return self

    def __exit__(self, exc_type, exc, tb):
        problems = []
        for p in reversed(self.procs):
            try:
                was_alive = p.alive()
                rc = p.stop(p.stop_timeout)
                if p.expect_clean_exit and was_alive and rc != 0:
                    problems.append("%s (pid %d) exited with status %s after the cleanup's "
                                    "SIGTERM (want 0 within %.0fs)"
                                    % (p.name, p.pid, rc, p.stop_timeout))
            except Exception as e:      # keep stopping the others
                problems.append("cleanup: %s: %s" % (p.name, e))
        for p in self.procs:
            if p.expect_clean_exit:
                found = sanitizer_report(p.stderr_text())
                if found:
                    problems.append("%s (pid %d) stderr has a sanitizer report: %s"
                                    % (p.name, p.pid, found))
        failed = exc_type is not None or bool(problems)
        if failed:
            for wg in self.waygates:
                wg.dump(sys.stderr)
        if failed and os.environ.get("WAYGATE_KEEP_TMP") == "1":
            print("kept %s" % self.tmp, file=sys.stderr)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)
        if problems and exc_type is None:
            raise AssertionError("\n".join(problems))
        if problems:
            print("\n".join(problems), file=sys.stderr)
        return False

    def path(self, name):
        return os.path.join(self.tmp, name)

    def start(self, name, argv, pipe_stdout=False, preexec_fn=None, env=None):
        p = Proc(name, argv, self.path(name + ".stdout"), self.path(name + ".stderr"),
                 pipe_stdout=pipe_stdout, preexec_fn=preexec_fn, env=env)
        self.procs.append(p)
        return p

    def backend(self, mode="http", name=None, source=None, seed=None, extra=()):
        """Starts a wg_backend on 127.0.0.1:<kernel-chosen port>."""
        name = name or "b%d" % len(self.procs)
        argv = [tool("wg_backend"), "--listen", "127.0.0.1:0", "--name", name,
                "--mode", mode, "--log", self.path(name + ".log")]
        if source is not None:
            argv += ["--source", str(source)]
        if seed is not None:
            argv += ["--seed", str(seed)]
        argv += list(extra)
        proc = self.start("backend-" + name, argv, pipe_stdout=True)
        line = proc.read_line(timeout=10)
        m = re.fullmatch(r"ready (\d+)", line)
        if not m:
            raise AssertionError("wg_backend %s: unexpected first line %r" % (name, line))
        return Backend(self, proc, name, int(m.group(1)))

    def waygate(self, **kw):
        """Writes a config + registry and starts waygate; see `Waygate`."""
        wg = Waygate(self, **kw)
        self.waygates.append(wg)
        wg.start()
        return wg

    def blast(self, port, *args, timeout=120, host="127.0.0.1"):
        """Runs wg_blast to completion; returns (exit status, stdout, stderr)."""
        argv = [tool("wg_blast"), "--connect", "%s:%d" % (host, port),
                "--timeout-ms", str(int(timeout * 1000))] + [str(a) for a in args]
        try:
            cp = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                                timeout=timeout + 10)
        except subprocess.TimeoutExpired:
            raise AssertionError("wg_blast did not finish within %ds" % (timeout + 10)) from None
        return cp.returncode, cp.stdout.decode(errors="replace"), cp.stderr.decode(errors="replace")

    def blast_ok(self, port, *args, timeout=120):
        rc, out, err = self.blast(port, *args, timeout=timeout)
        assert rc == 0, "wg_blast %s: exit %d\nstdout: %s\nstderr: %s" % (
            " ".join(str(a) for a in args), rc, out, err)
        return out


class ThreadedServer:
    """A server written in the test itself, on 127.0.0.1 and a free port:
    every accepted connection goes to self.serve(conn), which the subclass
    defines, in a thread of its own. A subclass sets its own attributes
    before calling this __init__ (connections may arrive at once)."""

    def __init__(self, backlog=16):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(backlog)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(c,), daemon=True).start()

    def instance(self, id):
        return {"id": id, "address": "127.0.0.1", "port": self.port}

    def close(self):
        self.sock.close()


class ServerProcess:
    """A registry server a test runs (an etcd member, a ZooKeeper server):
    `proc` is its current Proc, or None before the first start."""

    proc = None

    def stop(self):
        if self.proc:
            self.proc.stop(timeout=10)

    def kill(self):
        if self.proc:
            self.proc.kill()

    def alive(self):
        return self.proc is not None and self.proc.alive()


class Backend:
    def __init__(self, harness, proc, name, port):
        self.harness = harness
        self.proc = proc
        self.name = name
        self.port = port
        self.log_path = harness.path(name + ".log")

    def instance(self, id=None, weight=100, address="127.0.0.1"):
        """A file-registry entry pointing at this backend."""
        return {"id": id or self.name, "address": address, "port": self.port, "weight": weight}

    def log_lines(self):
        try:
            with open(self.log_path) as f:
                return f.read().splitlines()
        except OSError:
            return []

    def accepts(self):
        return [l for l in self.log_lines() if l.startswith("accept ")]

    def closes(self):
        """[{conn, rx, tx, rx_fnv, reason}] of the connections closed so far."""
        out = []
        for l in self.log_lines():
            if l.startswith("close "):
                out.append(dict(kv.split("=", 1) for kv in l.split()[1:]))
        return out

    def last_accept_id(self):
        """The id (conn=) of the newest accepted connection, or None."""
        acc = self.accepts()
        return acc[-1].split()[1].split("=", 1)[1] if acc else None

    def close_of(self, conn_id):
        """The close record of connection `conn_id`, or None while open."""
        for c in self.closes():
            if c["conn"] == conn_id:
                return c
        return None

    def stop(self):
        return self.proc.stop()

    def kill(self):
        self.proc.kill()


# ---- YAML text ----------------------------------------------------------------

_PLAIN = re.compile(r"[A-Za-z0-9_./@][A-Za-z0-9_./:@-]*")
_RESERVED = {"true", "false", "yes", "no", "on", "off", "null", "y", "n"}


def yaml_scalar(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    s = str(v)
    if _PLAIN.fullmatch(s) and s.lower() not in _RESERVED:
        return s
    s = s.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + re.sub(r"[\x00-\x1f\x7f]", lambda m: "\\x%02x" % ord(m.group()), s) + '"'


def yaml_flow(v):
    if isinstance(v, dict):
        if not v:
            return "{}"
        return "{ " + ", ".join("%s: %s" % (k, yaml_flow(x)) for k, x in v.items()) + " }"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(yaml_flow(x) for x in v) + "]"
    return yaml_scalar(v)


def yaml_block(v, indent=0):
    """Block-style YAML for nested dicts/lists of scalars."""
    pad = " " * indent
    lines = []
    if isinstance(v, dict):
        for k, x in v.items():
            if isinstance(x, dict) and x:
                lines.append("%s%s:" % (pad, k))
                lines.append(yaml_block(x, indent + 2))
            elif isinstance(x, (list, tuple)) and x:
                lines.append("%s%s:" % (pad, k))
                lines.append(yaml_block(x, indent + 2))
            else:
                lines.append("%s%s: %s" % (pad, k, yaml_flow(x)))
    else:
        for x in v:
            if isinstance(x, dict) and x:
                inner = yaml_block(x, indent + 2).split("\n")
                lines.append(pad + "- " + inner[0].lstrip())
                lines.extend(inner[1:])
            else:
                lines.append("%s- %s" % (pad, yaml_flow(x)))
    return "\n".join(lines)


def registry_text(instances):
    """File-registry text (DESIGN §5): {service: [instance dicts]}, one flow
    mapping per instance."""
    lines = []
    for service, items in instances.items():
        if not items:
            lines.append("%s: []" % service)
            continue
        lines.append("%s:" % service)
        for inst in items:
            lines.append("  - " + yaml_flow(inst))
    return "\n".join(lines) + "\n"


def write_atomic(path, text):
    """Write a temporary file next to `path`, then rename it over `path`."""
    tmp = "%s.tmp-%d" % (path, os.getpid())
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, path)


def write_in_place(path, text):
    """Truncate and rewrite `path` (same inode), in one write."""
    with open(path, "w") as f:
        f.write(text)


# ---- waygate ----------------------------------------------------------------------

class Waygate:
    """One waygate process with its config and file registry in the test's
    temporary directory.

    listeners: list of listener dicts; a missing `listen` gets a free port.
               Default: one tcp listener "t" for service "users".
    instances: {service: [instance dicts]} written to the registry file.
    service_defaults, services: merged over the test defaults
               (health_check none, connect_timeout 1s, retries 2).
    top:       other top-level keys (e.g. shutdown_timeout="2s").
    rlimit_nofile: start waygate with RLIMIT_NOFILE soft = hard = this.
    """

    def __init__(self, harness, listeners=None, instances=None, service_defaults=None,
                 services=None, workers=2, rlimit_nofile=None, wait_ready=True, **top):
        self.h = harness
        self.listeners_spec = listeners or [{"name": "t", "mode": "tcp", "service": "users"}]
        self.instances = instances if instances is not None else {"users": []}
        sd = {"health_check": {"type": "none"}, "connect_timeout": "1s", "retries": 2}
        sd.update(service_defaults or {})
        self.service_defaults = sd
        self.services = services
        self.workers = workers
        self.top = dict(top)
        # Short, so that stopping a waygate with open connections at the end
        # of a test does not wait out the 10 s default.
        self.top.setdefault("shutdown_timeout", "2s")
        self.rlimit_nofile = rlimit_nofile
        self.wait_ready = wait_ready
        n = len(harness.waygates)       # several waygates per test: own files
        suffix = "" if n == 0 else "-%d" % n
        self.config_path = harness.path("waygate%s.yaml" % suffix)
        self.registry_path = harness.path("instances%s.yaml" % suffix)
        self.proc_prefix = "waygate%s" % suffix
        self.proc = None
        self.procs = []
        self.ports = {}

    def config_dict(self):
        cfg = {"workers": self.workers}
        cfg.update(self.top)
        cfg.setdefault("admin", {"listen": "127.0.0.1:%d" % self.admin_port})
        cfg["registry"] = {"file": self.registry_path}
        cfg["service_defaults"] = self.service_defaults
        if self.services:
            cfg["services"] = self.services
        listeners = []
        for spec in self.listeners_spec:
            l = dict(spec)
            l.setdefault("listen", "127.0.0.1:%d" % self.ports[l["name"]])
            listeners.append(l)
        cfg["listeners"] = listeners
        return cfg

    def write_config(self):
        with open(self.config_path, "w") as f:
            f.write(yaml_block(self.config_dict()) + "\n")

    def set_instances(self, instances, in_place=False):
        """Rewrites the registry file (rename by default, or in place)."""
        self.instances = instances
        text = registry_text(instances)
        if in_place:
            write_in_place(self.registry_path, text)
        else:
            write_atomic(self.registry_path, text)

    def start(self, attempts=3):
        write_atomic(self.registry_path, registry_text(self.instances))
        for attempt in range(attempts):
            self.admin_port = free_port()
            for spec in self.listeners_spec:
                if "listen" not in spec:
                    self.ports[spec["name"]] = free_port()
                else:
                    self.ports[spec["name"]] = int(spec["listen"].rsplit(":", 1)[1])
            self.write_config()
            preexec = None
            if self.rlimit_nofile:
                n = self.rlimit_nofile
                preexec = lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))
            self.proc = self.h.start("%s.%d" % (self.proc_prefix, len(self.procs)),
                                     [tool("waygate"), "-c", self.config_path],
                                     preexec_fn=preexec)
            self.procs.append(self.proc)
            self.proc.expect_clean_exit = True
            self.proc.stop_timeout = parse_duration(self.top["shutdown_timeout"]) + slack(3)
            if not self.wait_ready:
                return
            try:
                self.wait_listening(timeout=slack(10))
                return
            except AssertionError:
                err = self.proc.stderr_text()
                if not self.proc.alive() and "in use" in err and attempt + 1 < attempts:
                    continue            # a port was taken meanwhile: new ports
                raise

    def wait_listening(self, timeout):
        """Waits until every listener accepts a TCP connection, and the
        admin API when it is the default one (it may open a little after
        the proxy listeners: a test's first /status came too early on a
        loaded box)."""
        ports = dict(self.ports)
        if "admin" not in self.top:
            ports["(admin)"] = self.admin_port

        def ready():
            if not self.proc.alive():
                raise AssertionError("waygate exited with %s during start-up"
                                     % self.proc.returncode)
            for name, port in ports.items():
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                except OSError:
                    return False
            return True
        wait_until(ready, timeout, "waygate listeners %s" % sorted(ports.values()),
                   interval=0.05)

    def port(self, name=None):
        if name is None:
            name = self.listeners_spec[0]["name"]
        return self.ports[name]

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc.alive()

    def rss_kib(self):
        return self.proc.rss_kib()

    def cpu_seconds(self):
        return self.proc.cpu_seconds()

    def stderr_text(self):
        return self.proc.stderr_text()

    def dump(self, out):
        for p in self.procs:
            out.write("---- %s (pid %d, exit %s) stderr ----\n" % (p.name, p.pid, p.returncode))
            text = p.stderr_text()
            out.write(text[-20000:] if text else "(empty)\n")
            if text and not text.endswith("\n"):
                out.write("\n")
        out.write("---- config %s ----\n" % self.config_path)
        try:
            with open(self.config_path) as f:
                out.write(f.read())
        except OSError:
            pass
        out.write("---- registry ----\n" + registry_text(self.instances))


def run_waygate(*args, timeout=20):
    """Runs `waygate ARGS` to completion: (exit status, stdout, stderr)."""
    try:
        cp = subprocess.run([tool("waygate")] + list(args), stdin=subprocess.DEVNULL,
                            capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError("waygate %s did not exit within %ds" % (" ".join(args), timeout)) \
            from None
    return cp.returncode, cp.stdout.decode(errors="replace"), cp.stderr.decode(errors="replace")


# ---- clients -------------------------------------------------------------------------

def connect(port, timeout=5.0, host="127.0.0.1"):
    s = socket.create_connection((host, port), timeout=timeout)
    s.settimeout(timeout)
    return s


def recv_exact(sock, n, timeout=10.0):
    """Exactly n bytes; AssertionError on EOF or timeout."""
    end = time.monotonic() + timeout
    buf = bytearray()
    while len(buf) < n:
        left = end - time.monotonic()
        if left <= 0:
            raise AssertionError("timeout: got %d of %d bytes" % (len(buf), n))
        sock.settimeout(left)
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise AssertionError("EOF after %d of %d bytes" % (len(buf), n))
        buf += chunk
    return bytes(buf)


def recv_until_eof(sock, timeout=10.0, limit=64 * MIB):
    end = time.monotonic() + timeout
    buf = bytearray()
    while True:
        left = end - time.monotonic()
        if left <= 0:
            raise AssertionError("timeout waiting for EOF (got %d bytes)" % len(buf))
        sock.settimeout(left)
        chunk = sock.recv(1 << 20)
        if not chunk:
            return bytes(buf)
        buf += chunk
        if len(buf) > limit:
            raise AssertionError("more than %d bytes before EOF" % limit)


def recv_line(sock, timeout=5.0, limit=4096):
    end = time.monotonic() + timeout
    buf = bytearray()
    while not buf.endswith(b"\n"):
        left = end - time.monotonic()
        if left <= 0:
            raise AssertionError("timeout waiting for a line (got %r)" % bytes(buf))
        sock.settimeout(left)
        chunk = sock.recv(1)
        if not chunk:
            raise AssertionError("EOF before a line (got %r)" % bytes(buf))
        buf += chunk
        if len(buf) > limit:
            raise AssertionError("line longer than %d bytes" % limit)
    return buf[:-1].decode(errors="replace")


def name_via(port, timeout=5.0):
    """Connects, reads the greeting of a name-mode backend, closes. Returns
    the name; raises OSError or AssertionError when not served."""
    with connect(port, timeout) as s:
        return recv_line(s, timeout)


def reset_close(sock):
    """Close with SO_LINGER 0: the peer gets a RST."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()


class NameLoad:
    """Background threads connecting through `port` in a loop, each reading a
    name-mode greeting. Every attempt is recorded as (start time, name or
    None, error text or None)."""

    def __init__(self, port, threads=2, timeout=5.0):
        self.port = port
        self.timeout = timeout
        self.events = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self):
        while not self._stop.is_set():
            t = time.monotonic()
            try:
                name, err = name_via(self.port, self.timeout), None
            except (OSError, AssertionError) as e:
                name, err = None, "%s: %s" % (type(e).__name__, e)
            with self._lock:
                self.events.append((t, name, err))

    def __enter__(self):
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop()
        return False

    def stop(self):
        self._stop.set()
        for t in self._threads:
            t.join(timeout=self.timeout + 5)
            if t.is_alive():
                raise AssertionError("a load thread did not stop")

    def snapshot(self):
        with self._lock:
            return list(self.events)

    def errors(self):
        return [e for e in self.snapshot() if e[2] is not None]

    def names_since(self, t):
        return [n for (ts, n, err) in self.snapshot() if ts >= t and n is not None]

    def first_seen(self, name, since):
        for ts, n, err in self.snapshot():
            if ts >= since and n == name:
                return ts
        return None

    def last_seen(self, name):
        last = None
        for ts, n, err in self.snapshot():
            if n == name:
                last = ts
        return last


class HttpResponse:
    def __init__(self, status, reason, headers, body):
        self.status = status
        self.reason = reason
        self.headers = headers          # [(name, value)] in order
        self.body = body

    def header(self, name):
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def __repr__(self):
        return "<HttpResponse %d %r %d bytes>" % (self.status, self.headers, len(self.body))


def http_request(port, method="GET", path="/", headers=None, body=b"", timeout=10.0,
                 host="127.0.0.1", raw=None):
    """One request on a fresh connection (Connection: close), parsed strictly
    enough for tests: Content-Length, chunked, or until EOF. `raw` sends bytes
    as they are instead of building a request."""
    with connect(port, timeout, host) as s:
        if raw is None:
            hdrs = [("Host", "%s:%d" % (host, port)), ("Connection", "close")]
            if body:
                hdrs.append(("Content-Length", str(len(body))))
            hdrs += list((headers or {}).items()) if isinstance(headers, dict) else list(headers or [])
            raw = ("%s %s HTTP/1.1\r\n" % (method, path)).encode() + b"".join(
                ("%s: %s\r\n" % (k, v)).encode() for k, v in hdrs) + b"\r\n" + body
        s.sendall(raw)
        return read_http_response(s, timeout, head_only=(method == "HEAD"))


def read_http_response(sock, timeout=10.0, head_only=False):
    end = time.monotonic() + timeout
    buf = bytearray()

    def more():
        left = end - time.monotonic()
        if left <= 0:
            raise AssertionError("timeout reading an HTTP response (got %r)" % bytes(buf[:200]))
        sock.settimeout(left)
        chunk = sock.recv(65536)
        buf.extend(chunk)
        return bool(chunk)

    while True:
        i = buf.find(b"\r\n\r\n")
        if i >= 0:
            break
        if not more():
            raise AssertionError("EOF before a complete response head (got %r)" % bytes(buf))
    head = bytes(buf[:i]).decode("latin-1").split("\r\n")
    del buf[:i + 4]
    m = re.fullmatch(r"HTTP/1\.[01] (\d{3}) ?(.*)", head[0])
    if not m:
        raise AssertionError("bad status line %r" % head[0])
    status = int(m.group(1))
    headers = []
    for line in head[1:]:
        k, _, v = line.partition(":")
        headers.append((k.strip(), v.strip()))
    resp = HttpResponse(status, m.group(2), headers, b"")
    if status in (100, 103):
        return read_http_response(sock, end - time.monotonic(), head_only)
    if head_only or status in (204, 304):
        return resp
    te = resp.header("Transfer-Encoding")
    cl = resp.header("Content-Length")
    if te and te.lower() == "chunked":
        body = bytearray()
        while True:
            while b"\r\n" not in buf:
                if not more():
                    raise AssertionError("EOF inside chunked body")
            line, _, rest = bytes(buf).partition(b"\r\n")
            size = int(line.split(b";")[0], 16)
            buf[:] = rest
            while len(buf) < size + 2:
                if not more():
                    raise AssertionError("EOF inside a chunk")
            body += buf[:size]
            del buf[:size + 2]
            if size == 0:
                break
        resp.body = bytes(body)
    elif cl is not None:
        n = int(cl)
        while len(buf) < n:
            if not more():
                raise AssertionError("EOF after %d of %d body bytes" % (len(buf), n))
        resp.body = bytes(buf[:n])
    else:
        while more():
            pass
        resp.body = bytes(buf)
    return resp


def curl(*args, timeout=30):
    """Runs curl -sS ARGS: (exit status, stdout bytes, stderr text)."""
    try:
        cp = subprocess.run(["curl", "-sS", "--max-time", str(timeout)] + [str(a) for a in args],
                            stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout + 5)
    except subprocess.TimeoutExpired:
        raise AssertionError("curl did not exit within %ds" % (timeout + 5)) from None
    return cp.returncode, cp.stdout, cp.stderr.decode(errors="replace")


def is_errno(e, *codes):
    return isinstance(e, OSError) and e.errno in codes



class BrowserPage:
    """A page for headless Chromium, served by a Python server on an origin
    of its own (http://127.0.0.1:P, `origin`), so that what it fetches from
    waygate is cross-origin. dom(h, html) serves `html`, lets Chromium load
    and run it (--dump-dom) and returns the DOM text; None when Chromium is
    not installed (the test then says why and returns). A context manager:
    the server stops on exit."""

    def __init__(self):
        import http.server

        page = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = page.html.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.html = ""
        self.chromium = shutil.which("chromium")
        self.srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()
        self.origin = "http://127.0.0.1:%d" % self.srv.server_address[1]

    def dom(self, h, html, budget_ms=5000):
        if not self.chromium:
            return None
        self.html = html
        cp = subprocess.run([self.chromium, "--headless", "--no-sandbox", "--disable-gpu",
                             "--disable-background-networking", "--disable-dev-shm-usage",
                             "--user-data-dir=" + h.path("chromium"),
                             "--virtual-time-budget=%d" % budget_ms, "--dump-dom",
                             self.origin + "/"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=slack(90))
        self.stderr = cp.stderr.decode(errors="replace")
        return cp.stdout.decode(errors="replace")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.srv.shutdown()
        self.srv.server_close()
