"""`waygate -t -c FILE` (check a config) and `waygate -V` (DESIGN §4, §5)."""

import os
import re
import tempfile

from wglib import run_waygate

ERROR_LINE = re.compile(r"^(?P<file>.+?):(?P<line>\d+):(?P<col>\d+): (?P<msg>.+)$")


def write(dirname, name, text):
    path = os.path.join(dirname, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def good_config(d):
    reg = write(d, "instances.yaml",
                "users:\n  - { id: u1, address: 127.0.0.1, port: 9001, weight: 100 }\n")
    return (
        "workers: 2\n"
        "registry: { file: %s }\n"
        "service_defaults: { health_check: { type: none }, connect_timeout: 1s, retries: 2 }\n"
        "listeners:\n"
        "  - { name: t, listen: 127.0.0.1:17001, mode: tcp, service: users }\n" % reg)


def errors_of(stderr, path):
    """Parsed "FILE:LINE:COL: message" lines of stderr for FILE == path."""
    out = []
    for line in stderr.splitlines():
        m = ERROR_LINE.match(line)
        if m and m.group("file") == path:
            out.append((int(m.group("line")), int(m.group("col")), m.group("msg")))
    return out


def check(path):
    return run_waygate("-t", "-c", path)


def test_check_good_config():
    with tempfile.TemporaryDirectory(prefix="wg-test-") as d:
        path = write(d, "waygate.yaml", good_config(d))
        rc, out, err = check(path)
        assert rc == 0, "exit %d\nstdout: %s\nstderr: %s" % (rc, out, err)
        assert out.strip() == "%s: configuration ok" % path, repr(out)


def test_check_bad_config_reports_every_error_with_position():
    text = (
        "workers: 2\n"                                   # 1
        "registry: { file: %s }\n"                       # 2
        "service_defaults:\n"                            # 3
        "  health_check: { type: none }\n"               # 4
        "  connect_timeout: 1\n"                         # 5  no unit
        "  retries: 2\n"                                 # 6
        "listeners:\n"                                   # 7
        "  - name: t\n"                                  # 8
        "    listen: 127.0.0.1:17002\n"                  # 9
        "    mode: tcp\n"                                # 10
        "    service: users\n"                           # 11
        "    idel_timeout: 1h\n")                        # 12 typo
    with tempfile.TemporaryDirectory(prefix="wg-test-") as d:
        reg = write(d, "instances.yaml", "users: []\n")
        path = write(d, "waygate.yaml", text % reg)
        rc, out, err = check(path)
        assert rc == 1, "exit %d\nstdout: %s\nstderr: %s" % (rc, out, err)
        assert "configuration ok" not in out
        errs = errors_of(err, path)
        assert errs, "no FILE:LINE:COL error on stderr:\n%s" % err

        unknown = [e for e in errs if e[0] == 12]
        assert unknown, "no error at line 12 (unknown key idel_timeout): %s" % errs
        line, col, msg = unknown[0]
        assert col == 5, "unknown key reported at column %d, want 5: %s" % (col, msg)
        assert "idel_timeout" in msg and "did you mean" in msg and "idle_timeout" in msg, msg

        duration = [e for e in errs if e[0] == 5]
        assert duration, "no error at line 5 (duration without a unit): %s" % errs
        line, col, msg = duration[0]
        assert col in (3, 20), "bad duration reported at column %d (key 3, value 20): %s" % (
            col, msg)
        assert "connect_timeout" in msg or "duration" in msg.lower(), msg


def expect_error_at(text, lines, col=None, words=()):
    """Checking `text` (REG = an existing registry file) fails with an error
    at one of `lines` (and column `col`) whose message has every word."""
    with tempfile.TemporaryDirectory(prefix="wg-test-") as d:
        reg = write(d, "instances.yaml", "users: []\n")
        path = write(d, "waygate.yaml", text.replace("REG", reg))
        rc, out, err = check(path)
        assert rc == 1, "exit %d for:\n%s\nstdout: %s\nstderr: %s" % (rc, text, out, err)
        errs = errors_of(err, path)
        hits = [e for e in errs if e[0] in lines and (col is None or e[1] == col)]
        assert hits, "want an error at line %s column %s%s, got %s\nstderr: %s" % (
            "/".join(map(str, lines)), col or "*", " with " + str(words) if words else "",
            errs, err)
        msg = hits[0][2]
        for w in words:
            assert w in msg, "%r not in %r" % (w, msg)


def test_check_duplicate_key():
    expect_error_at(
        "workers: 2\n"
        "registry: { file: REG }\n"
        "service_defaults: { health_check: { type: none } }\n"
        "listeners:\n"
        "  - { name: t, listen: 127.0.0.1:17003, mode: tcp, service: users }\n"
        "workers: 3\n", lines=(6,), col=1, words=("workers",))


def test_check_etcd_and_file_registry_together():
    # Where exactly this points is the implementation's choice: the registry
    # key or either child (lines 1-3).
    expect_error_at(
        "registry:\n"
        "  etcd: { endpoints: [http://127.0.0.1:2379] }\n"
        "  file: REG\n"
        "listeners:\n"
        "  - { name: t, listen: 127.0.0.1:17004, mode: tcp, service: users }\n",
        lines=(1, 2, 3))


def test_check_hash_key_header_on_tcp_service():
    expect_error_at(
        "registry: { file: REG }\n"
        "services:\n"
        "  users: { balance: hash, hash_key: \"header:X-User\" }\n"
        "listeners:\n"
        "  - { name: t, listen: 127.0.0.1:17005, mode: tcp, service: users }\n",
        lines=(3, 5))


def test_check_missing_registry_file():
    with tempfile.TemporaryDirectory(prefix="wg-test-") as d:
        missing = os.path.join(d, "nope.yaml")
        path = write(d, "waygate.yaml",
                     "registry: { file: %s }\n"
                     "listeners:\n"
                     "  - { name: t, listen: 127.0.0.1:17006, mode: tcp, service: users }\n"
                     % missing)
        rc, out, err = check(path)
        assert rc == 1, "a config naming a missing registry file passed: exit %d\n%s%s" % (
            rc, out, err)
        assert errors_of(err, path), "no FILE:LINE:COL error:\n%s" % err
        assert "nope.yaml" in err, err


def test_version():
    rc, out, err = run_waygate("-V")
    assert rc == 0, "exit %d: %s %s" % (rc, out, err)
    assert re.search(r"\b\d+\.\d+\.\d+\b", out), "no version in %r" % out


def test_check_trusted_proxies():
    base = ("registry: { file: REG }\n"
            "service_defaults: { health_check: { type: none } }\n"
            "trusted_proxies:\n"                        # 3
            "  - %s\n"                                  # 4
            "listeners:\n"
            "  - { name: t, listen: 127.0.0.1:17001, mode: tcp, service: users,\n"
            "      trusted_proxies: %s }\n")            # 7
    ok = ["10.0.0.0/8", "[]"], ["192.0.2.1", "[\"2001:db8::/32\", \"::ffff:10.0.0.0/104\"]"]
    for top, lst in ok:
        with tempfile.TemporaryDirectory(prefix="wg-test-") as d:
            reg = write(d, "instances.yaml", "users: []\n")
            path = write(d, "waygate.yaml", (base % (top, lst)).replace("REG", reg))
            rc, out, err = check(path)
            assert rc == 0, (top, lst, err)
    expect_error_at(base % ("10.0.0.1/8", "[]"), [4], 5, ("trusted_proxies", "10.0.0.1/8",
                                                          "past the prefix"))
    expect_error_at(base % ("300.1.1.1", "[]"), [4], 5, ("not an IPv4 or IPv6 address",))
    expect_error_at(base % ("::1/129", "[]"), [4], 5, ("at most 128",))
    expect_error_at(base % ("10.0.0.0/x", "[]"), [4], 5, ("prefix length",))
    expect_error_at(base % ("10.0.0.0/8", "10.0.0.0/8"), [7], None, ("expected a list",))
    expect_error_at(base % ("10.0.0.0/8", "[\"fe80::/10\", \"1.2.3/24\"]"), [7], None,
                    ("1.2.3/24",))
