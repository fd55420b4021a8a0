"""gRPC health checks (issue 17): `health_check: { type: grpc }` calls
grpc.health.v1.Health/Check on a real python3-grpcio server over h2c and
over TLS (ALPN h2), and follows its serving status with the prober's
thresholds; NOT_SERVING, UNIMPLEMENTED, NOT_FOUND and a dead server fail
(docs/health.md, "gRPC probes"); probes reuse one connection."""

import subprocess
import time

from grpclib import GrpcServer, need_grpcio
from test_health import probes, transitions, wait_health
from wglib import Harness, slack
import tlslib


def flip(wg, g, states, health, iid="a"):
    """Sets the server's statuses, waits for the instance's health."""
    g.set_all(states)
    wait_health(wg, "users", iid, health, slack(5))


def grpc_world(h, server, **hc):
    return h.waygate(instances={"users": [server.instance()]},
                     service_defaults=probes("grpc", interval="100ms", timeout="1s", **hc))


def test_grpc_probe_follows_serving_status_h2c():
    if not need_grpcio():
        return
    with Harness() as h:
        g = GrpcServer(h, "a")
        wg = grpc_world(h, g, up=2, down=2)
        wait_health(wg, "users", "a", "healthy", slack(10))
        flip(wg, g, {"": "NOT_SERVING"}, "unhealthy")
        flip(wg, g, {"": "SERVING"}, "healthy")
        flip(wg, g, {"": "SERVICE_UNKNOWN"}, "unhealthy")
        reasons = [r for f, t, r in transitions(wg, "a") if t == "unhealthy"]
        assert len(reasons) == 2, transitions(wg, "a")
        assert "NOT_SERVING" in reasons[0] and "SERVICE_UNKNOWN" in reasons[1], reasons
        calls = g.calls()
        assert len(calls) >= 6 and set(calls) == {"-"}, calls
        # The server dies: transport failures take it out too.
        flip(wg, g, {"": "SERVING"}, "healthy")
        g.proc.kill()
        wait_health(wg, "users", "a", "unhealthy", slack(5))


def test_grpc_probe_named_service_and_call_errors():
    """health_check.service is sent in the request; a server without the
    Health service (UNIMPLEMENTED) or without that name (NOT_FOUND) fails."""
    if not need_grpcio():
        return
    with Harness() as h:
        g = GrpcServer(h, "a", states={"users.Users": "SERVING", "": "NOT_SERVING"})
        wg = grpc_world(h, g, up=1, down=1, service="users.Users")
        wait_health(wg, "users", "a", "healthy", slack(10))
        assert set(g.calls()) == {"users.Users"}, g.calls()
        flip(wg, g, {"users.Users": "UNIMPLEMENTED"}, "unhealthy")
        flip(wg, g, {"users.Users": "SERVING"}, "healthy")
        flip(wg, g, {"": "SERVING"}, "unhealthy")
        reasons = [r for f, t, r in transitions(wg, "a") if t == "unhealthy"]
        assert "grpc-status UNIMPLEMENTED" in reasons[0], reasons
        assert "grpc-status NOT_FOUND" in reasons[1], reasons


def test_grpc_probe_reuses_its_connection():
    """Many probes, few connections: the h2 session stays up across probes
    and through failing answers (a NOT_SERVING reply is no transport error)."""
    if not need_grpcio():
        return
    with Harness() as h:
        g = GrpcServer(h, "a")
        wg = grpc_world(h, g, up=1, down=1)
        wait_health(wg, "users", "a", "healthy", slack(10))
        flip(wg, g, {"": "NOT_SERVING"}, "unhealthy")
        flip(wg, g, {"": "SERVING"}, "healthy")
        n0 = len(g.calls())
        time.sleep(1.0)
        assert len(g.calls()) - n0 >= 4, g.calls()
        est = established_to(g.proc.pid, g.port)
        assert est == 1, "connections to the gRPC server: %d (want 1)" % est


def established_to(pid, port):
    """Established TCP connections accepted on 127.0.0.1:port (ss)."""
    cp = subprocess.run(["ss", "-Htn", "state", "established", "( sport = :%d )" % port],
                        capture_output=True, timeout=10, text=True)
    return len([l for l in cp.stdout.splitlines() if l.strip()])


def test_grpc_probe_over_tls_alpn_h2():
    if not need_grpcio():
        return
    pki = tlslib.shared()
    crt, key = pki.leaf("grpc-up", dns=("grpc.test",), ips=("127.0.0.1",))
    with Harness() as h:
        g = GrpcServer(h, "a", cert=crt, key=key)
        wg = h.waygate(instances={"users": [g.instance()]},
                       service_defaults=dict(probes("grpc", interval="100ms", timeout="1s",
                                                    up=1, down=1),
                                             tls={"enabled": True, "ca": pki.ca}))
        wait_health(wg, "users", "a", "healthy", slack(10))
        flip(wg, g, {"": "NOT_SERVING"}, "unhealthy")
        flip(wg, g, {"": "SERVING"}, "healthy")
        # The name is verified as for traffic: a wrong sni fails the handshake.
    with Harness() as h:
        g = GrpcServer(h, "b", cert=crt, key=key)
        wg = h.waygate(instances={"users": [g.instance()]},
                       service_defaults=dict(probes("grpc", interval="100ms", timeout="1s",
                                                    up=1, down=1),
                                             tls={"enabled": True, "ca": pki.ca,
                                                  "sni": "other.test"}))
        wait_health(wg, "users", "b", "unhealthy", slack(5))
        assert g.calls() == [], g.calls()
