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


class GrpcServer:
    """grpc_server.py on 127.0.0.1:<port>; set(service, status) rewrites its
    control file (read on every call)."""

    def __init__(self, harness, name, states=None, cert=None, key=None):
        self.h = harness
        self.name = name
        self.control = harness.path("%s.control" % name)
        self.set_all(states or {"": "SERVING"})
        argv = [SYSTEM_PYTHON, os.path.join(HERE, "grpc_server.py"), "--control", self.control]
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
