"""Shared machinery of the scenario modules (benchmarks/scenarios/*.py).

An Env owns a temporary directory and the processes started in it (stopped by
PID at close). Configs come from benchmarks/configs/ with @NAME@ placeholders
replaced (plain text substitution, so the files stay valid-looking HAProxy /
nginx / waygate configs that can be read and diffed side by side).

Measurements: wrk (rps, p50, p99, errors), the target's CPU (utime+stime of
the whole process over the run, as a % of one core) and RSS (VmRSS at the end
of the run) from /proc. Every cell is the median of the runs.
"""

import collections
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BENCH = os.path.dirname(HERE)
ROOT = os.path.dirname(BENCH)
CONFIGS = os.path.join(BENCH, "configs")
SMALL_BODY = "x" * 64 + "\n"
BIG_SIZE = 64 * 1024
TARGETS = ("direct", "waygate", "haproxy", "nginx")


def _cpus():
    n = os.cpu_count() or 1
    if os.environ.get("WG_BENCH_PIN", "1") == "0" or n < 2 or not shutil.which("taskset"):
        return None, None
    return str(n - 1), "0-%d" % (n - 2) if n > 2 else "0"


# Same pinning as benchmarks/run: the proxy on the last CPU, load + backend on the others.
PROXY_CPU, LOAD_CPU = _cpus()


def pinned(argv, cpu):
    return ["taskset", "-c", cpu] + argv if cpu else argv


# Ports free_port() handed out lately: the kernel may give the same
# ephemeral port to two bind(0) calls once the first socket is closed, and a
# scenario that asks twice before binding either would get one port for two
# listeners ("already used by admin.listen"; tests/integration/wglib.py
# does the same).
_recent_ports = collections.deque(maxlen=512)


def free_port():
    """A port that was free a moment ago and not handed out lately."""
    for _ in range(64):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _recent_ports:
            _recent_ports.append(port)
            return port
    raise RuntimeError("no fresh free port after 64 tries")


def wait_port(port, timeout=10.0, proc=None):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        data = f.read()
    fields = data[data.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_ticks(spec):
    """(busy, total) clock ticks so far of the CPUs in `spec` ("0", "0-2"; None: all)."""
    want = None
    if spec:
        lo, _, hi = spec.partition("-")
        want = {"cpu%d" % i for i in range(int(lo), int(hi or lo) + 1)}
    busy = total = 0
    with open("/proc/stat") as f:
        for line in f:
            name, *vals = line.split()
            if not name.startswith("cpu") or name == "cpu" or (want and name not in want):
                continue
            v = [int(x) for x in vals[:8]]
            total += sum(v)
            busy += sum(v) - v[3] - v[4]        # less idle and iowait
    return busy, total


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def pct(values, p):
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100.0 * (len(v) - 1))))]


class Ctx:
    """What a scenario is asked to do: build dir, runs, duration, smoke, targets."""

    def __init__(self, build, runs=3, duration=5, smoke=False, targets=TARGETS):
        self.build = os.path.abspath(build)
        self.runs = runs
        self.duration = duration
        self.smoke = smoke
        self.targets = [t for t in TARGETS if t in targets]
        if not shutil.which("haproxy") and "haproxy" in self.targets:
            self.targets.remove("haproxy")


class Env:
    def __init__(self, ctx):
        self.ctx = ctx
        self.tmp = tempfile.mkdtemp(prefix="wg-scn-")
        self.procs = []
        self._certs = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def path(self, name):
        return os.path.join(self.tmp, name)

    def write(self, name, text):
        with open(self.path(name), "w") as f:
            f.write(text)
        return self.path(name)

    def config(self, template, out_name, **subst):
        """benchmarks/configs/<template> with @KEY@ replaced; returns the path."""
        with open(os.path.join(CONFIGS, template)) as f:
            text = f.read()
        subst.setdefault("TMP", self.tmp)
        subst.setdefault("WORKERS", 1)
        for k, v in subst.items():
            text = text.replace("@%s@" % k, str(v))
        left = re.findall(r"@[A-Z0-9_]+@", text)
        if left:
            raise RuntimeError("%s: no value for %s" % (template, ", ".join(sorted(set(left)))))
        return self.write(out_name, text)

    def start(self, name, argv, port=None, cpu=None, env=None):
        log = open(self.path(name + ".log"), "ab")
        p = subprocess.Popen(pinned(argv, cpu), stdout=log, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, cwd=self.tmp, env=env)
        log.close()
        p.wg_name = name
        self.procs.append(p)
        if port is not None and not wait_port(port, proc=p):
            self.stop(p)
            raise RuntimeError("%s did not listen on %d: %s" % (name, port, self.log_tail(name)))
        return p

    def log_tail(self, name, n=600):
        try:
            with open(self.path(name + ".log"), errors="replace") as f:
                return f.read()[-n:]
        except OSError:
            return ""

    def stop(self, p):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if p in self.procs:
            self.procs.remove(p)

    def close(self):
        for p in reversed(list(self.procs)):
            self.stop(p)
        shutil.rmtree(self.tmp, ignore_errors=True)

    # ---- shared pieces ----

    def cert(self, kind="rsa"):
        """One self-signed certificate for every TLS server, RSA-2048 or ECDSA
        P-256 (kind "ecdsa"): (crt, key, pem)."""
        if kind not in self._certs:
            crt, key, pem = (self.path("bench-%s.%s" % (kind, ext)) for ext in ("crt", "key", "pem"))
            newkey = ["-newkey", "rsa:2048"] if kind == "rsa" else [
                "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
            subprocess.run(["openssl", "req", "-x509"] + newkey + ["-nodes",
                            "-keyout", key, "-out", crt, "-days", "2", "-subj", "/CN=bench.test",
                            "-addext", "subjectAltName=DNS:bench.test,IP:127.0.0.1"],
                           check=True, capture_output=True, timeout=60)
            with open(pem, "w") as out:
                for part in (crt, key):
                    with open(part) as f:
                        out.write(f.read())
            self._certs[kind] = (crt, key, pem)
        return self._certs[kind]

    def backend(self, tls_port=None, cert="rsa"):
        """nginx-light on the load CPU: GET / -> 65-byte body, GET /64k -> 64 KiB file,
        keep-alive. tls_port: also a TLS server (the 'direct' target of the TLS scenario)
        with the `cert` kind of certificate."""
        port = free_port()
        with open(self.path("64k.bin"), "wb") as f:
            f.write(b"y" * BIG_SIZE)
        tls = ""
        if tls_port:
            crt, key, _ = self.cert(cert)
            with open(os.path.join(CONFIGS, "backend-tls.snippet")) as f:
                tls = f.read().replace("@TLS_PORT@", str(tls_port)).replace(
                    "@CRT@", crt).replace("@KEY@", key).replace("@TMP@", self.tmp).replace(
                    "@BODY@", SMALL_BODY.replace("\n", "\\n"))
        conf = self.config("backend.conf", "backend.conf", PORT=port,
                           BODY=SMALL_BODY.replace("\n", "\\n"), TLS_SERVER=tls)
        self.start("backend", ["nginx", "-p", self.tmp, "-c", conf], port, LOAD_CPU)
        if tls_port and not wait_port(tls_port):
            raise RuntimeError("backend TLS port did not listen")
        return port

    def waygate(self, template, port, **subst):
        admin = free_port()
        subst.setdefault("ADMIN", admin)
        conf = self.config(template, "waygate-%d.yaml" % port, PORT=port, **subst)
        p = self.start("waygate", [os.path.join(self.ctx.build, "waygate"), "-c", conf], port,
                       PROXY_CPU)
        p.admin_port = subst["ADMIN"]
        return p

    def haproxy(self, template, port, **subst):
        conf = self.config(template, "haproxy-%d.cfg" % port, PORT=port, **subst)
        return self.start("haproxy", ["haproxy", "-db", "-f", conf], port, PROXY_CPU)

    def nginx(self, template, port, **subst):
        conf = self.config(template, "nginx-%d.conf" % port, PORT=port, **subst)
        return self.start("nginx-proxy", ["nginx", "-p", self.tmp, "-c", conf], port, PROXY_CPU)

    def registry(self, backend_port, name="instances.yaml"):
        return self.write(name, "app:\n  - { id: a, address: 127.0.0.1, port: %d }\n"
                          % backend_port)


def nginx_has_stream():
    return os.path.exists("/usr/lib/nginx/modules/ngx_stream_module.so")


# ---- wrk ----

_UNIT = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text):
    m = re.match(r"([\d.]+)(us|ms|s)$", text)
    return float(m.group(1)) * _UNIT[m.group(2)] if m else None


def wrk(url, conns, duration, headers=(), env=None, threads=1):
    """{'rps','p50','p99','errors','bytes_per_s'} from one wrk run on the load CPU."""
    argv = ["wrk", "-t%d" % threads, "-c%d" % conns, "-d%ds" % duration, "--latency"]
    for h in headers:
        argv += ["-H", h]
    argv.append(url)
    out = subprocess.run(pinned(argv, LOAD_CPU), capture_output=True, text=True,
                         timeout=duration + 60, env=env).stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not m:
        raise RuntimeError("wrk said: %s" % out[-400:])
    r = {"rps": float(m.group(1))}
    for p in ("50", "99"):
        mm = re.search(r"^\s+%s%%\s+(\S+)" % p, out, re.M)
        r["p" + p] = _ms(mm.group(1)) if mm else None
    bad = 0
    for pat in (r"Non-2xx or 3xx responses:\s+(\d+)",
                r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)"):
        mm = re.search(pat, out)
        if mm:
            bad += sum(int(x) for x in mm.groups())
    r["errors"] = bad
    mm = re.search(r"Transfer/sec:\s+([\d.]+)(B|KB|MB|GB)", out)
    if mm:
        r["bytes_per_s"] = float(mm.group(1)) * {"B": 1, "KB": 1 << 10, "MB": 1 << 20,
                                                 "GB": 1 << 30}[mm.group(2)]
    return r


def h2load_summary(out):
    """h2load's summary: {'rps', 'bytes_per_s', 'errors', 'succeeded'}; errors are
    failed + errored requests (1 when the line is missing)."""
    m = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s, ([\d.]+)(\w+)/s", out)
    if not m:
        raise RuntimeError("h2load said: %s" % out[-400:])
    st = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, "
                   r"(\d+) errored", out)
    unit = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}.get(m.group(3), 1)
    return {"rps": float(m.group(1)), "bytes_per_s": float(m.group(2)) * unit,
            "errors": int(st.group(2)) + int(st.group(3)) if st else 1,
            "succeeded": int(st.group(1)) if st else 0}


def measured(pid, fn):
    """Runs fn() while sampling the process pid: (fn's dict + cpu %, rss MiB, load CPU %)."""
    c0, t0, l0 = cpu_seconds(pid), time.monotonic(), cpu_ticks(LOAD_CPU)
    r = fn()
    c1, t1, l1 = cpu_seconds(pid), time.monotonic(), cpu_ticks(LOAD_CPU)
    r["cpu"] = 100.0 * (c1 - c0) / (t1 - t0)
    # How busy the load CPU(s) were: near 100 % means the load and backend,
    # not the proxy, bounded the rps (the proxy's CPU per request still holds).
    r["load_cpu"] = 100.0 * (l1[0] - l0[0]) / (l1[1] - l0[1]) if l1[1] > l0[1] else None
    r["rss"] = rss_kib(pid) / 1024.0
    if r.get("rps"):
        r["cpu_us"] = (c1 - c0) / (t1 - t0) / r["rps"] * 1e6     # the target's CPU per request
    return r


def combine(samples):
    """Median of every numeric key; errors summed."""
    out = {}
    for k in samples[0]:
        vals = [s.get(k) for s in samples]
        if k == "errors":
            out[k] = sum(v or 0 for v in vals)
        elif all(isinstance(v, (int, float)) or v is None for v in vals):
            out[k] = median(vals)
        else:
            out[k] = vals[0]
    out["n"] = len(samples)
    return out


# ---- tables ----

def fmt(v, spec="%.0f"):
    return "n/a" if v is None else spec % v


def ratio(a, b):
    return "%.2f" % (a / b) if a is not None and b else "-"


def table(rows, cols, key, note_na=None):
    """rows: [(target, variant, dict or None)]; cols: [(header, dict key, format)].
    Ratio columns are of `key` to haproxy's and to direct's of the same variant."""
    hdr = ["target", "variant"] + [c[0] for c in cols] + ["%s / haproxy" % key, "%s / direct" % key]
    lines = ["| " + " | ".join(hdr) + " |", "|" + "---|" * len(hdr)]
    base = {(t, v): d for t, v, d in rows}
    for t, v, d in rows:
        if d is None:
            lines.append("| %s | %s | %s |" % (t, v, " | ".join(["n/a"] * (len(cols) + 2))))
            continue
        h = base.get(("haproxy", v))
        dr = base.get(("direct", v))
        cells = [fmt(d.get(k), f) for _, k, f in cols]
        cells.append(ratio(d.get(key), h.get(key) if h else None))
        cells.append(ratio(d.get(key), dr.get(key) if dr else None))
        lines.append("| %s | %s | %s |" % (t, v, " | ".join(cells)))
    return "\n".join(lines)


WRK_COLS = [("rps", "rps", "%.0f"), ("p50 ms", "p50", "%.2f"), ("p99 ms", "p99", "%.2f"),
            ("CPU %", "cpu", "%.0f"), ("CPU us/req", "cpu_us", "%.0f"), ("RSS MiB", "rss", "%.1f"),
            ("errors", "errors", "%d")]


def errors_of(rows):
    """Errors of all rows; a target that could not be measured (None) counts as one."""
    return sum(1 if d is None else d.get("errors", 0) or 0 for _, _, d in rows)


# ---- the L7 matrix shared by l7_newconn, l7_64k and tls ----

def start_target(env, target, kind, backend_port, tls_direct_port=None, clients=10000,
                 cert="rsa", workers=1):
    """Starts `target` for config family `kind` ("http" or "tls", with the
    `cert` kind of certificate: "rsa" or "ecdsa"), sized for
    `clients` client connections at once; returns (url base, process
    measured for CPU/RSS, process to stop or None); `workers`: waygate's."""
    subst = {"BACKEND": backend_port, "MAXCONN": clients + 500,
             "WORKER_CONNECTIONS": max(19000, clients + 9000), "NOFILE": max(20000, clients + 10000)}
    tls = kind in ("tls", "h2tls")
    scheme = "https" if tls else "http"
    if tls:
        crt, key, pem = env.cert(cert)
        subst.update(CRT=crt, KEY=key, PEM=pem)
    if target == "direct":
        port = tls_direct_port if tls else backend_port
        be = [p for p in env.procs if p.wg_name == "backend"][0]
        return "%s://127.0.0.1:%d" % (scheme, port), be, None
    port = free_port()
    if target == "waygate":
        p = env.waygate("%s.waygate.yaml" % kind, port, REG=env.registry(backend_port),
                        WORKERS=workers, **subst)
    elif target == "haproxy":
        p = env.haproxy("%s.haproxy.cfg" % kind, port, **subst)
    else:
        p = env.nginx("%s.nginx.conf" % kind, port, **subst)
    return "%s://127.0.0.1:%d" % (scheme, port), p, p


def check_get(url, path, size=None):
    import ssl
    import urllib.request
    ctx = ssl._create_unverified_context() if url.startswith("https") else None
    with urllib.request.urlopen(url + path, timeout=5, context=ctx) as r:
        body = r.read()
    if r.status != 200 or (size is not None and len(body) != size):
        raise RuntimeError("%s%s answered %d with %d bytes" % (url, path, r.status, len(body)))


def l7_matrix(ctx, kind, variants, log, cert="rsa"):
    """variants: [(label, path, wrk kwargs, expected body size)]. Every target
    runs every variant ctx.runs times, back to back. Returns rows for table()."""
    rows = []
    with Env(ctx) as env:
        tls_direct = free_port() if kind == "tls" else None
        backend_port = env.backend(tls_port=tls_direct, cert=cert)
        for target in ctx.targets:
            try:
                url, measured_proc, own = start_target(env, target, kind, backend_port, tls_direct,
                                                       cert=cert)
            except RuntimeError as e:
                log("  %s: %s" % (target, e))
                rows += [(target, v[0], None) for v in variants]
                continue
            try:
                check_get(url, variants[0][1], variants[0][3])
            except Exception as e:          # a target that does not serve: n/a, not the scenario
                log("  %s: does not serve %s%s: %s" % (target, url, variants[0][1], e))
                rows += [(target, v[0], None) for v in variants]
                if own:
                    env.stop(own)
                continue
            try:
                if not ctx.smoke:
                    wrk(url + variants[0][1], conns=10, duration=1)        # warm up
                for label, path, kw, _ in variants:
                    kw = dict(kw)
                    runner = kw.pop("runner", None)     # another client than wrk
                    samples = [measured(measured_proc.pid,
                                        lambda: runner(url, path, ctx.duration) if runner else
                                        wrk(url + path, duration=ctx.duration, **kw))
                               for _ in range(ctx.runs)]
                    d = combine(samples)
                    rows.append((target, label, d))
                    log("  %-8s %-22s %9.0f rps  p50 %6.2f  p99 %7.2f ms  cpu %3.0f%%  rss %6.1f MiB%s"
                        % (target, label, d["rps"], d["p50"] or 0, d["p99"] or 0, d["cpu"],
                           d["rss"], "  errors %d" % d["errors"] if d["errors"] else ""))
            finally:
                if own:
                    env.stop(own)
    # keep the table grouped by variant
    order = {v[0]: i for i, v in enumerate(variants)}
    rows.sort(key=lambda r: order[r[1]])
    return rows


# ---- full TLS handshakes, a fixed number ----

def full_handshakes(port, n, version="1.3", sni=None, path="/"):
    """n connections one after another to 127.0.0.1:port, each a full TLS
    handshake (a new session every time: no ticket or session id offered, as
    `openssl s_time -new`), one `GET path HTTP/1.0` and the response read to
    EOF. version "1.2" or "1.3" (both ends of the client's range). Returns the
    number that got a 200. A fixed count, unlike s_time's fixed time, so
    counters read around it (callgrind, perf stat) divide exactly."""
    import ssl
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    v = ssl.TLSVersion.TLSv1_3 if version == "1.3" else ssl.TLSVersion.TLSv1_2
    ctx.minimum_version = ctx.maximum_version = v
    req = ("GET %s HTTP/1.0\r\nHost: bench.test\r\n\r\n" % path).encode()
    ok = 0
    for _ in range(n):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=60) as raw:
                with ctx.wrap_socket(raw, server_hostname=sni) as s:
                    s.sendall(req)
                    data = b"".join(iter(lambda: s.recv(65536), b""))     # to EOF
            if data.startswith(b"HTTP/1.") and data[9:12] == b"200":
                ok += 1
        except (OSError, ssl.SSLError):
            pass
    return ok
