"""TCP listener: weighted round robin, file-registry changes, retries.

Backends run in name mode (each connection first receives "NAME\\n"), so
every client connection tells which instance waygate picked.
"""

import collections
import time

from wglib import Harness, NameLoad, name_via, slack, wait_until


def names_of(port, n):
    return [name_via(port) for _ in range(n)]


def start_named(h, weights):
    """One name-mode backend per weight; returns (backends, instances)."""
    backends = [h.backend("name", name="i%d" % k) for k in range(len(weights))]
    instances = [b.instance(weight=w) for b, w in zip(backends, weights)]
    return backends, instances


def assert_share(counts, weights, tolerance):
    total = sum(counts.values())
    wsum = sum(weights.values())
    for name, w in weights.items():
        share = counts.get(name, 0) / total
        want = w / wsum
        assert abs(share - want) <= tolerance, \
            "instance %s got %d of %d (%.3f), want %.3f +- %.2f; all: %s" % (
                name, counts.get(name, 0), total, share, want, tolerance, dict(counts))


def test_round_robin_spread_by_weight():
    with Harness() as h:
        backends, instances = start_named(h, [100, 200, 300])
        wg = h.waygate(instances={"users": instances})
        names = names_of(wg.port(), 600)
        counts = collections.Counter(names)
        assert_share(counts, {"i0": 100, "i1": 200, "i2": 300}, 0.03)


def test_round_robin_is_smooth():
    """Weights 1:1:1: no instance gets three connections in a row (smooth
    WRR, also when each of the 2 workers keeps its own position)."""
    with Harness() as h:
        backends, instances = start_named(h, [100, 100, 100])
        wg = h.waygate(instances={"users": instances})
        names = names_of(wg.port(), 300)
        for k in range(len(names) - 2):
            assert not (names[k] == names[k + 1] == names[k + 2]), \
                "three in a row at %d: %s" % (k, names[max(0, k - 6):k + 9])
        counts = collections.Counter(names)
        assert_share(counts, {"i0": 1, "i1": 1, "i2": 1}, 0.05)


def registry_edit(in_place):
    """Adds then removes an instance by rewriting the registry file while
    connections flow: the new one is used within 2 s, the removed one gets
    no new connections once the change applied, no client sees an error."""
    with Harness() as h:
        (a, b, c), _ = start_named(h, [100, 100, 100])
        wg = h.waygate(instances={"users": [a.instance(), b.instance()]})
        with NameLoad(wg.port(), threads=2) as load:
            wait_until(lambda: len(load.names_since(0)) >= 20, slack(5), "initial traffic")

            t_add = time.monotonic()
            wg.set_instances({"users": [a.instance(), b.instance(), c.instance()]},
                             in_place=in_place)
            seen = wait_until(lambda: load.first_seen(c.name, t_add), 5, "the added instance")
            assert seen - t_add <= 2.0, "added instance first used %.2fs after the edit" % (
                seen - t_add)

            t_remove = time.monotonic()
            wg.set_instances({"users": [b.instance(), c.instance()]}, in_place=in_place)
            # Allow 2 s for the change, then watch at least 1 s more traffic.
            wait_until(lambda: time.monotonic() >= t_remove + 3.0 and
                       len(load.names_since(t_remove + 2.0)) >= 20, 10,
                       "traffic after the removal")
            late = [n for n in load.names_since(t_remove + 2.0) if n == a.name]
            assert not late, "removed instance still got %d new connections after 2s" % len(late)
            last_a = load.last_seen(a.name)
            assert last_a is not None and last_a - t_remove <= 2.0, \
                "removed instance last used %.2fs after the edit" % (last_a - t_remove)
            assert load.names_since(t_remove + 2.0), "no traffic after the removal"
        errors = load.errors()
        assert not errors, "%d client errors, first: %s" % (len(errors), errors[:3])
        assert wg.alive()


def test_registry_edit_by_rename():
    registry_edit(in_place=False)


def test_registry_edit_in_place():
    registry_edit(in_place=True)


def test_weight_change_under_load():
    """Weights change (and one goes to 0 = no new traffic) while 4 clients
    connect in a loop: no errors, and the new weights apply."""
    with Harness() as h:
        (a, b, c), instances = start_named(h, [100, 100, 100])
        wg = h.waygate(instances={"users": instances})
        with NameLoad(wg.port(), threads=4) as load:
            wait_until(lambda: len(load.names_since(0)) >= 50, slack(5), "initial traffic")
            t_change = time.monotonic()
            wg.set_instances({"users": [a.instance(weight=300), b.instance(weight=100),
                                        c.instance(weight=0)]})
            wait_until(lambda: len(load.names_since(t_change + 2.0)) >= 200, slack(15),
                       "traffic after the weight change")
            t_back = time.monotonic()
            wg.set_instances({"users": [a.instance(weight=100), b.instance(weight=100),
                                        c.instance(weight=100)]}, in_place=True)
            wait_until(lambda: load.first_seen(c.name, t_back), 5, "weight 0 -> 100 applied")
        # Count the window between the two changes, from 2 s after the first.
        window = [n for (ts, n, err) in load.snapshot()
                  if t_change + 2.0 <= ts < t_back and n is not None]
        counts = collections.Counter(window)
        assert counts.get(c.name, 0) == 0, \
            "weight-0 instance got %d new connections: %s" % (counts.get(c.name, 0), dict(counts))
        assert_share(counts, {a.name: 300, b.name: 100}, 0.08)
        errors = load.errors()
        assert not errors, "%d client errors, first: %s" % (len(errors), errors[:3])


def test_killed_backend_is_skipped_by_retry():
    """A backend that is gone (connect refused) costs the client nothing:
    waygate retries the next instance (retries: 2)."""
    with Harness() as h:
        (a, b, c), instances = start_named(h, [100, 100, 100])
        wg = h.waygate(instances={"users": instances})
        assert set(names_of(wg.port(), 30)) == {"i0", "i1", "i2"}
        b.kill()
        names = []
        for k in range(90):
            try:
                names.append(name_via(wg.port()))
            except (OSError, AssertionError) as e:
                raise AssertionError("connection %d after the kill failed: %s: %s"
                                     % (k, type(e).__name__, e)) from None
        counts = collections.Counter(names)
        assert counts.get(b.name, 0) == 0, dict(counts)
        assert counts.get(a.name, 0) >= 20 and counts.get(c.name, 0) >= 20, dict(counts)
        assert wg.alive()
