"""gRPC helpers for the tests: a real python3-grpcio server (grpc_server.py,
run by /usr/bin/python3, where Debian installs python3-grpcio)."""

import os
import re
import subprocess

SYSTEM_PYTHON = "/usr/bin/python3"
HERE = os.path.dirname(os.path.abspath(__file__))


def grpcio_available():
    """True when Debian's python3-grpcio is importable by /usr/bin/python3;
    tests that need it print why and return otherwise."""
    if not os.path.exists(SYSTEM_PYTHON):
        return False
    cp = subprocess.run([SYSTEM_PYTHON, "-c", "import grpc"], capture_output=True, timeout=30)
    return cp.returncode == 0


def need_grpcio():
    """grpcio_available(), saying why the test returns when it is not."""
    if grpcio_available():
        return True
    print("python3-grpcio not installed for /usr/bin/python3: test skipped")
    return False


class GrpcServer:
    """grpc_server.py on 127.0.0.1:<port>; set(service, status) rewrites its
    control file (read on every call)."""

    def __init__(self, harness, name, states=None, cert=None, key=None):
        self.h = harness
        self.name = name
        self.control = harness.path("%s.control" % name)
        self.set_all(states or {"": "SERVING"})
        argv = [SYSTEM_PYTHON, os.path.join(HERE, "grpc_server.py"), "--control", self.control,
                "--name", name]
        if cert:
            argv += ["--cert", cert, "--key", key]
        self.proc = harness.start("grpc-" + name, argv, pipe_stdout=True)
        line = self.proc.read_line(timeout=30)
        m = re.fullmatch(r"ready (\d+)", line)
        if not m:
            raise AssertionError("grpc_server %s: unexpected first line %r (stderr: %s)"
                                 % (name, line, self.proc.stderr_text()))
        self.port = int(m.group(1))

    def set_all(self, states):
        tmp = self.control + ".tmp"
        with open(tmp, "w") as f:
            for svc, st in states.items():
                f.write("%s %s\n" % (svc or "-", st))
        os.rename(tmp, self.control)

    def calls(self):
        try:
            with open(self.control + ".calls") as f:
                return [l.strip() for l in f]
        except FileNotFoundError:
            return []

    def instance(self, id=None, weight=100):
        return {"id": id or self.name, "address": "127.0.0.1", "port": self.port,
                "weight": weight}

    def echo_calls(self):
        """The wg.Echo methods called so far, in order ("Down", "Chat", ...)."""
        try:
            with open(self.control + ".echo") as f:
                return [l.strip() for l in f]
        except FileNotFoundError:
            return []

    def down_sent(self):
        """Messages its /wg.Echo/Down handed to grpcio so far."""
        try:
            with open(self.control + ".down") as f:
                return int(f.read().strip() or 0)
        except FileNotFoundError:
            return 0


def client_argv(target, kind, path, size, count=1, metadata=(), timeout=10.0, tls_ca=None,
                interval_ms=0, read_delay_ms=0, announce=False):
    argv = [SYSTEM_PYTHON, os.path.join(HERE, "grpc_client.py"), target, kind, path, str(size),
            "--count", str(count), "--timeout", str(timeout)]
    for k, v in metadata:
        argv += ["--metadata", "%s=%s" % (k, v)]
    if tls_ca:
        argv += ["--tls-ca", tls_ca]
    if interval_ms:
        argv += ["--interval-ms", str(interval_ms)]
    if read_delay_ms:
        argv += ["--read-delay-ms", str(read_delay_ms)]
    if announce:
        argv.append("--announce")
    return argv


class GrpcCall:
    """grpc_client.py running in the background (arguments: client_argv's);
    result() waits for it and returns its JSON result."""

    def __init__(self, target, kind, path, size, wait=60, **kw):
        self.wait = wait
        self.proc = subprocess.Popen(client_argv(target, kind, path, size, **kw),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def result(self):
        import json
        try:
            out, err = self.proc.communicate(timeout=self.wait)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            raise
        if self.proc.returncode != 0 or not out.strip():
            raise AssertionError("grpc_client failed (%d): %s" % (self.proc.returncode,
                                                                 err[-2000:]))
        return json.loads(out.strip().splitlines()[-1])


def grpc_call(target, kind, path, size, wait=60, **kw):
    """Runs grpc_client.py (arguments: client_argv's); returns its JSON result."""
    return GrpcCall(target, kind, path, size, wait=wait, **kw).result()


class GrpcStream:
    """grpc_client.py started through the harness (stopped by PID at the
    end) with --announce: wait_reply() returns once its first reply
    arrived (the test then acts mid-call), result() waits for its JSON."""

    def __init__(self, harness, target, kind, path, size, **kw):
        self.proc = harness.start("grpc-call-%s" % kind,
                                  client_argv(target, kind, path, size, announce=True, **kw),
                                  pipe_stdout=True)

    def wait_reply(self, timeout):
        line = self.proc.read_line(timeout)
        if line != "reply":
            raise AssertionError("grpc_client: %r before its first reply" % line)

    def result(self, timeout):
        import json
        line = self.proc.read_line(timeout)
        self.proc.wait(timeout)
        return json.loads(line)


class GrpcBackend:
    """tests/tools/wg_grpc_backend (the C gRPC test backend) on 127.0.0.1."""

    def __init__(self, harness, name="grpc", message_size=16, max_streams=100, extra=()):
        from wglib import tool
        self.log = harness.path("grpc-backend-%s.log" % name)
        argv = [tool("wg_grpc_backend"), "--name", name, "--message-size", str(message_size),
                "--max-streams", str(max_streams), "--log", self.log] + list(extra)
        self.name = name
        self.proc = harness.start("grpc-backend-" + name, argv, pipe_stdout=True)
        line = self.proc.read_line(timeout=10)
        m = re.fullmatch(r"ready (\d+)", line)
        if not m:
            raise AssertionError("wg_grpc_backend: unexpected first line %r" % line)
        self.port = int(m.group(1))

    def instance(self, id=None, weight=100):
        return {"id": id or self.name, "address": "127.0.0.1", "port": self.port,
                "weight": weight}

    def accepted(self):
        """Connections the backend accepted so far (its --log)."""
        with open(self.log) as f:
            return sum(1 for line in f if line.strip() == "accept")
