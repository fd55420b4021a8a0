"""HTTP-level health and metrics: consecutive 5xx eject an instance (DESIGN
§9 outlier_detection), and request durations land in the per-service
histogram waygate_request_duration_seconds (DESIGN §12)."""

import json

from wglib import Harness, ThreadedServer, http_request, slack, wait_until


class Always500(ThreadedServer):
    """A minimal HTTP server that answers every request with 500."""

    def __init__(self):
        self.served = 0
        super().__init__(backlog=64)

    def serve(self, conn):
        with conn:
            buf = b""
            try:
                while True:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                    while b"\r\n\r\n" in buf:
                        _, buf = buf.split(b"\r\n\r\n", 1)
                        self.served += 1
                        conn.sendall(b"HTTP/1.1 500 Internal Server Error\r\n"
                                     b"Content-Length: 4\r\n\r\nboom")
            except OSError:
                return


def http_world(h, instances, **services):
    routes = [{"path_prefix": "/", "service": "users"}]
    return h.waygate(listeners=[{"name": "web", "mode": "http", "routes": routes}],
                     instances={"users": instances}, services=services or None)


def status(wg):
    doc = json.loads(http_request(wg.admin_port, path="/status").body)
    return {i["id"]: i for i in doc["services"]["users"]["instances"]}


def test_consecutive_5xx_eject_the_instance():
    with Harness() as h:
        good = h.backend("http", name="good")
        bad = Always500()
        try:
            wg = http_world(h, [good.instance(), {"id": "bad", "address": "127.0.0.1",
                                                  "port": bad.port}],
                            users={"health_check": {"type": "none"},
                                   "outlier_detection": {"consecutive_failures": 3,
                                                         "base_ejection_time": "30s"}})
            codes = [http_request(wg.port(), path="/").status for _ in range(12)]
            assert codes.count(500) == 3, codes        # then the bad one is out
            wait_until(lambda: status(wg)["bad"]["health"] == "ejected", slack(2), "ejection")
            after = [http_request(wg.port(), path="/").status for _ in range(20)]
            assert after == [200] * 20, after
            assert status(wg)["good"]["health"] == "healthy"
        finally:
            bad.close()


def test_request_duration_histogram_per_service():
    with Harness() as h:
        b = h.backend("http", name="a")
        wg = http_world(h, [b.instance()], users={"health_check": {"type": "none"}})
        for _ in range(5):
            assert http_request(wg.port(), path="/slow?ms=30").status == 200
        text = http_request(wg.admin_port, path="/metrics").body.decode()
        series = {}
        for line in text.splitlines():
            if line.startswith("waygate_request_duration_seconds") and 'service="users"' in line:
                series[line.rsplit(" ", 1)[0]] = float(line.rsplit(" ", 1)[1])
        count = series['waygate_request_duration_seconds_count{service="users"}']
        assert count >= 5, series
        assert series['waygate_request_duration_seconds_bucket{service="users",le="0.025"}'] < 5, \
            "30 ms requests counted under 25 ms"
        assert series['waygate_request_duration_seconds_bucket{service="users",le="+Inf"}'] == count
        assert series['waygate_request_duration_seconds_sum{service="users"}'] >= 5 * 0.03
