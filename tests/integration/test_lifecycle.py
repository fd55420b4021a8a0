"""Lifecycle (DESIGN §3, §4): hitless SIGHUP reloads, refused bad reloads,
listeners added and removed by a reload, sd_notify, one owner per address."""

import os
import signal
import socket
import time

from wglib import (Harness, NameLoad, connect, name_via, recv_exact, run_waygate, slack,
                   wait_until, write_atomic, yaml_block, free_port)


def reload(wg, edit=None):
    """Rewrites the config through `edit(cfg_dict)` and sends SIGHUP."""
    cfg = wg.config_dict()
    if edit:
        edit(cfg)
    write_atomic(wg.config_path, yaml_block(cfg) + "\n")
    wg.proc.signal(signal.SIGHUP)
    return cfg


def log_count(wg, text):
    return wg.stderr_text().count(text)


def test_twenty_reloads_under_load_no_error():
    with Harness() as h:
        a, b = h.backend("name", name="a"), h.backend("name", name="b")
        wg = h.waygate(instances={"users": [a.instance(), b.instance()]})
        with NameLoad(wg.port(), threads=2) as load:
            for k in range(20):
                reload(wg, lambda c: c["service_defaults"].update(retries=k % 3))
                wait_until(lambda: log_count(wg, "configuration reloaded") == k + 1,
                           slack(5), "reload %d to be applied" % (k + 1))
            time.sleep(0.2)
        assert not load.errors(), load.errors()[:5]
        assert len(load.snapshot()) > 50
        assert set(load.names_since(0)) == {"a", "b"}


def test_bad_reload_keeps_old_config_serving():
    with Harness() as h:
        a = h.backend("name", name="a")
        wg = h.waygate(instances={"users": [a.instance()]})
        with open(wg.config_path, "a") as f:
            f.write("bogus_key: 1\n")
        wg.proc.signal(signal.SIGHUP)
        wait_until(lambda: "reload refused" in wg.stderr_text(), slack(5), "the refusal")
        err = wg.stderr_text()
        assert "waygate.yaml:" in err and "unknown key 'bogus_key'" in err, err
        assert name_via(wg.port()) == "a"
        assert wg.alive()


def test_reload_adds_and_removes_listeners_hitlessly():
    with Harness() as h:
        a, b = h.backend("echo", name="a"), h.backend("name", name="b")
        wg = h.waygate(instances={"users": [a.instance()], "other": [b.instance()]})
        old_port = wg.port()
        with connect(old_port) as held:         # lives through the removal
            held.sendall(b"x")
            assert recv_exact(held, 1) == b"x"
            new_port = free_port()

            def edit(cfg):
                cfg["listeners"] = [{"name": "n", "mode": "tcp", "service": "other",
                                     "listen": "127.0.0.1:%d" % new_port}]
            reload(wg, edit)
            wait_until(lambda: "listener added" in wg.stderr_text(), slack(5), "listener added")
            assert name_via(new_port) == "b"

            def refused():
                try:
                    socket.create_connection(("127.0.0.1", old_port), timeout=0.5).close()
                    return False
                except OSError:
                    return True
            wait_until(refused, slack(5), "the removed listener to stop accepting")
            held.sendall(b"still here")
            assert recv_exact(held, 10) == b"still here", "held connection cut by the reload"
        assert wg.alive()


def test_reload_switches_tcp_service_for_new_connections():
    with Harness() as h:
        a, b = h.backend("name", name="a"), h.backend("name", name="b")
        wg = h.waygate(instances={"users": [a.instance()], "other": [b.instance()]})
        assert name_via(wg.port()) == "a"
        reload(wg, lambda c: c["listeners"][0].update(service="other"))
        wait_until(lambda: name_via(wg.port()) == "b", slack(5), "the new service")


def test_second_process_on_same_address_refused():
    with Harness() as h:
        a = h.backend("name", name="a")
        wg = h.waygate(instances={"users": [a.instance()]})
        rc, out, err = run_waygate("-c", wg.config_path, timeout=slack(10))
        assert rc != 0, "a second waygate started on the same address"
        assert "Address already in use" in err, err
        assert name_via(wg.port()) == "a"


def test_sd_notify_ready_reloading_stopping():
    with Harness() as h:
        a = h.backend("name", name="a")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        abstract = "@waygate-test-%d" % os.getpid()
        sock.bind("\0" + abstract[1:])
        sock.settimeout(slack(10))
        try:
            port = free_port()
            cfg = h.path("notify.yaml")
            reg = h.path("notify-instances.yaml")
            write_atomic(reg, "users:\n  - { id: a, address: 127.0.0.1, port: %d }\n" % a.port)
            text = ("workers: 1\nadmin: { listen: 127.0.0.1:%d }\nregistry: { file: %s }\n"
                    "service_defaults: { health_check: { type: none } }\n"
                    "listeners:\n  - { name: t, mode: tcp, service: users, listen: 127.0.0.1:%d }\n"
                    % (free_port(), reg, port))
            write_atomic(cfg, text)
            env = dict(os.environ, NOTIFY_SOCKET=abstract)
            from wglib import tool
            p = h.start("waygate-notify", [tool("waygate"), "-c", cfg], env=env)
            assert sock.recv(256) == b"READY=1"
            assert name_via(port) == "a"        # READY means serving
            p.signal(signal.SIGHUP)
            msg = sock.recv(256)
            assert msg.startswith(b"RELOADING=1\nMONOTONIC_USEC="), msg
            assert sock.recv(256) == b"READY=1"
            p.signal(signal.SIGTERM)
            assert sock.recv(256) == b"STOPPING=1"
            assert p.wait(timeout=slack(10)) == 0
        finally:
            sock.close()


def test_reload_with_a_new_registry_source_reconnects():
    with Harness() as h:
        a, b = h.backend("name", name="a"), h.backend("name", name="b")
        wg = h.waygate(instances={"users": [a.instance()]})
        other = h.path("other-instances.yaml")
        write_atomic(other, "users:\n  - { id: b, address: 127.0.0.1, port: %d }\n" % b.port)
        assert name_via(wg.port()) == "a"
        reload(wg, lambda c: c["registry"].update(file=other))
        wait_until(lambda: "registry settings changed, reconnected" in wg.stderr_text(),
                   slack(5), "the registry switch")
        wait_until(lambda: name_via(wg.port()) == "b", slack(5), "the new source's instances")
        # The new source is watched: edit it, and the change applies.
        write_atomic(other, "users:\n  - { id: a, address: 127.0.0.1, port: %d }\n" % a.port)
        wait_until(lambda: name_via(wg.port()) == "a", slack(5), "an edit of the new source")
