"""etcd registry against a 3-member cluster: the watched member is killed
(waygate moves on, no event lost or applied twice), and the watched member
loses its leader (the watch ends instead of going silent, the pools stay,
waygate catches up once a quorum is back)."""

import threading
import time

from etcdlib import EtcdError, EtcdHarness
from wglib import NameLoad, slack, wait_until

P = "/services/users/"


def test_member_killed_moves_to_another_member():
    with EtcdHarness() as h:
        cluster = h.etcd_cluster(3)
        (a,) = [h.backend("name", name="a")]
        writer = cluster.client(2)
        writer.put(P + "a", "127.0.0.1:%d" % a.port)
        wg = h.waygate_etcd(cluster, backoff=("50ms", "500ms"))
        wg.wait_instances({"a": "127.0.0.1:%d" % a.port})
        wait_until(lambda: wg.registry_status()["connected"], slack(5), "connected")
        events0 = wg.metric("waygate_registry_events_total")
        rev0 = writer.revision()
        puts = [0]
        stop = threading.Event()

        def write():
            # a put that times out during the election may still have been
            # applied: it is retried, and etcd's revisions count the events
            while not stop.is_set() and puts[0] < 400:
                k = puts[0]
                try:
                    writer.put(P + "k%03d" % k, "127.0.0.1:%d" % a.port)
                    puts[0] += 1
                except (EtcdError, OSError):
                    time.sleep(0.1)
                time.sleep(0.005)

        with NameLoad(wg.port(), threads=2) as load:
            t = threading.Thread(target=write)
            t.start()
            wait_until(lambda: puts[0] >= 50, slack(10), "writes before the kill")
            cluster[0].kill()               # the member waygate watches (first endpoint)
            wait_until(lambda: puts[0] >= 150, slack(20), "writes after the kill")
            stop.set()
            t.join(timeout=30)
            want = {"k%03d" % k: "127.0.0.1:%d" % a.port for k in range(puts[0])}
            want["a"] = "127.0.0.1:%d" % a.port
            wg.wait_instances(want, timeout=15)
        assert not load.errors(), load.errors()[:5]
        wait_until(lambda: wg.registry_status()["connected"], slack(10), "connected again")
        events = wg.metric("waygate_registry_events_total") - events0
        revisions = writer.revision() - rev0      # one event per revision here
        assert events == revisions, "events applied %d, revisions %d" % (events, revisions)
        assert wg.metric("waygate_registry_reconnects_total") >= 1
        assert wg.metric("waygate_registry_resyncs_total") == 0


def test_watched_member_loses_its_leader():
    with EtcdHarness() as h:
        cluster = h.etcd_cluster(3)
        a, b = h.backend("name", name="a"), h.backend("name", name="b")
        c0 = cluster.client(0)
        c0.put(P + "a", "127.0.0.1:%d" % a.port)
        # only member 0, and no silence probe within the test: only the
        # hasleader header can end the watch
        wg = h.waygate_etcd([cluster[0].url], watch_timeout="120s", backoff=("50ms", "300ms"))
        wg.wait_instances({"a": "127.0.0.1:%d" % a.port})
        wait_until(lambda: wg.registry_status()["connected"], slack(5), "connected")
        with NameLoad(wg.port(), threads=2) as load:
            cluster[1].stop()
            cluster[2].stop()
            t = time.monotonic()
            wait_until(lambda: not wg.registry_status()["connected"], slack(15),
                       "the watch to end after the leader loss")
            ended = time.monotonic() - t
            time.sleep(1)
            assert wg.pool() == {"a": "127.0.0.1:%d" % a.port}
            cluster[1].start()
            cluster[2].start()
            cluster.wait_healthy()

            def put_b():
                try:
                    cluster.client(1).put(P + "b", "127.0.0.1:%d" % b.port)
                    return True
                except (EtcdError, OSError):
                    return False
            wait_until(put_b, slack(15), "a write once the quorum is back", interval=0.2)
            wg.wait_instances({"a": "127.0.0.1:%d" % a.port, "b": "127.0.0.1:%d" % b.port},
                              timeout=15)
            wait_until(lambda: wg.registry_status()["connected"], slack(10), "connected again")
        assert not load.errors(), load.errors()[:5]
        print("watch ended %.1fs after the other members stopped" % ended)
