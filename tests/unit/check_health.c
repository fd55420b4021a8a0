/* check_health — state machine, thresholds, jitter bounds, ejection math and
 * max_ejection_percent (also under concurrent reports), draining is final,
 * the connection-cut rules, and the prober thread against loopback servers
 * (tcp and http probes, keep-alive reuse, snapshot hand-over). */
#include "unit_util.h"

#include <errno.h>
#include <event2/thread.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>

#include "waygate/balance.h"
#include "waygate/health.h"
#include "waygate/log.h"
#include "waygate/pool.h"
#include "waygate/reclaim.h"

static const char *CFG =
    "services:\n"
    "  p:\n"
    "    health_check: { type: http, healthy_threshold: 3, unhealthy_threshold: 2 }\n"
    "    outlier_detection: { consecutive_failures: 3, base_ejection_time: 1s,\n"
    "                         max_ejection_time: 5s, max_ejection_percent: 50 }\n"
    "    drain_timeout: 2s\n"
    "    on_unhealthy: close\n"
    "  n: { health_check: { type: none } }\n";

struct fixture {
    struct wg_reclaim *rc;
    struct wg_pool *pool;
    struct wg_config_ref *ref;
    const struct wg_pool_service *svc;
};

static void setup(struct fixture *f, const char *yaml, const char *service, int n, int port0)
{
    memset(f, 0, sizeof *f);
    f->rc = wg_reclaim_new();
    f->pool = wg_pool_new(f->rc, &wg_balance_policy, NULL, NULL);
    f->ref = wg_config_ref_new(unit_config(yaml));
    wg_pool_set_config(f->pool, f->ref);
    struct wg_record_set set = { 0 };
    for (int k = 0; k < n; k++) {
        char id[16];
        snprintf(id, sizeof id, "i%02d", k);
        unit_record(&set, service, id, "127.0.0.1", port0 + k, 100);
    }
    wg_record_set_sort(&set);
    ck_assert_int_eq(wg_pool_replace_all(f->pool, &set), 0);
    wg_record_set_clear(&set);
    f->svc = wg_snapshot_service(wg_pool_current(f->pool), service);
    ck_assert_ptr_nonnull(f->svc);
}

static void teardown(struct fixture *f)
{
    wg_pool_free(f->pool);
    wg_reclaim_free(f->rc);
    wg_config_ref_put(f->ref);
}

static struct wg_instance *inst(struct fixture *f, int k) { return f->svc->members[k].inst; }

static enum wg_health probe(struct fixture *f, int k, struct wg_health_run *run, bool ok,
                            uint64_t now)
{
    return wg_health_on_probe(inst(f, k), f->svc->cfg, run, ok, ok ? 200 : -ECONNREFUSED, now);
}

/* ---- math ---- */

START_TEST(jitter_bounds)
{
    static const uint64_t intervals[] = { 0, 1, 9, 10, 11, 999, 1000, 1001, 30000, 86400000 };
    struct wg_rng rng;
    wg_rng_seed(&rng, 42);
    for (size_t k = 0; k < sizeof intervals / sizeof intervals[0]; k++) {
        uint64_t iv = intervals[k], lo = iv - iv / 10, hi = iv + iv / 10;
        ck_assert_uint_eq(wg_health_jitter(iv, 0), lo);
        ck_assert_uint_eq(wg_health_jitter(iv, UINT64_MAX), hi);
        uint64_t sum = 0, min = UINT64_MAX, max = 0;
        for (int n = 0; n < 100000; n++) {
            uint64_t d = wg_health_jitter(iv, wg_rng_next(&rng));
            if (d < lo || d > hi)       /* not ck_assert: it logs every call */
                ck_abort_msg("jitter(%llu) = %llu", (unsigned long long)iv, (unsigned long long)d);
            sum += d;
            min = d < min ? d : min;
            max = d > max ? d : max;
        }
        if (iv >= 1000) {       /* uniform: both ends reached, mean in the middle */
            ck_assert_uint_le(min, lo + iv / 1000 + 1);
            ck_assert_uint_ge(max, hi - iv / 1000 - 1);
            double mean = (double)sum / 100000;
            ck_assert(mean > iv * 0.995 && mean < iv * 1.005);
        }
    }
}
END_TEST

START_TEST(ejection_time_grows_and_caps)
{
    struct wg_service_config c = { 0 };
    c.outlier.base_ejection_time_ms = 30000;
    c.outlier.max_ejection_time_ms = 300000;
    ck_assert_uint_eq(wg_health_ejection_ms(&c, 1), 30000);
    ck_assert_uint_eq(wg_health_ejection_ms(&c, 3), 90000);
    ck_assert_uint_eq(wg_health_ejection_ms(&c, 10), 300000);
    ck_assert_uint_eq(wg_health_ejection_ms(&c, 11), 300000);
    ck_assert_uint_eq(wg_health_ejection_ms(&c, 4000000000u), 300000);   /* no overflow */
    c.outlier.base_ejection_time_ms = UINT64_MAX / 2;
    ck_assert_uint_eq(wg_health_ejection_ms(&c, 7), 300000);
}
END_TEST

START_TEST(ejection_percent_math)
{
    ck_assert(wg_health_ejection_allowed(0, 2, 50));    /* 1 of 2 = 50% */
    ck_assert(!wg_health_ejection_allowed(1, 2, 50));
    ck_assert(!wg_health_ejection_allowed(0, 1, 50));   /* never the only instance */
    ck_assert(wg_health_ejection_allowed(0, 1, 100));
    ck_assert(!wg_health_ejection_allowed(0, 10, 0));
    ck_assert(wg_health_ejection_allowed(2, 10, 30));
    ck_assert(!wg_health_ejection_allowed(3, 10, 30));
    ck_assert(!wg_health_ejection_allowed(0, 0, 100));
}
END_TEST

/* ---- state machine ---- */

START_TEST(first_pass_makes_unknown_healthy)
{
    struct fixture f;
    setup(&f, CFG, "p", 2, 9000);
    struct wg_health_run r0 = { 0 }, r1 = { 0 };
    ck_assert_int_eq(wg_instance_health(inst(&f, 0)), WG_HEALTH_UNKNOWN);
    ck_assert_int_eq(probe(&f, 0, &r0, true, 1), WG_HEALTH_HEALTHY);       /* one round trip */
    ck_assert_int_eq(atomic_load(&f.svc->state->healthy), 1);
    ck_assert_int_eq(probe(&f, 1, &r1, false, 1), WG_HEALTH_UNKNOWN);      /* 1 of 2 fails */
    ck_assert_int_eq(probe(&f, 1, &r1, false, 2), WG_HEALTH_UNHEALTHY);
    ck_assert_uint_eq(atomic_load(&inst(&f, 1)->probes_failed), 2);
    ck_assert_int_eq(atomic_load(&inst(&f, 1)->last_probe_result), -ECONNREFUSED);
    ck_assert_uint_eq(atomic_load(&inst(&f, 0)->probes_passed), 1);
    teardown(&f);
}
END_TEST

START_TEST(thresholds_both_ways)
{
    struct fixture f;
    setup(&f, CFG, "p", 1, 9000);
    struct wg_health_run r = { 0 };
    probe(&f, 0, &r, true, 1);
    ck_assert_int_eq(probe(&f, 0, &r, false, 2), WG_HEALTH_HEALTHY);
    ck_assert_int_eq(probe(&f, 0, &r, true, 3), WG_HEALTH_HEALTHY);        /* run broken */
    ck_assert_int_eq(probe(&f, 0, &r, false, 4), WG_HEALTH_HEALTHY);
    ck_assert_int_eq(probe(&f, 0, &r, false, 5), WG_HEALTH_UNHEALTHY);     /* 2 in a row */
    ck_assert_int_eq(atomic_load(&f.svc->state->healthy), 0);
    unsigned gen = wg_health_conn_generation(inst(&f, 0));
    ck_assert_int_eq(probe(&f, 0, &r, true, 6), WG_HEALTH_UNHEALTHY);
    ck_assert_int_eq(probe(&f, 0, &r, true, 7), WG_HEALTH_UNHEALTHY);
    ck_assert_int_eq(probe(&f, 0, &r, false, 8), WG_HEALTH_UNHEALTHY);     /* run broken */
    ck_assert_int_eq(probe(&f, 0, &r, true, 9), WG_HEALTH_UNHEALTHY);
    ck_assert_int_eq(probe(&f, 0, &r, true, 10), WG_HEALTH_UNHEALTHY);
    ck_assert_int_eq(probe(&f, 0, &r, true, 11), WG_HEALTH_HEALTHY);       /* 3 in a row */
    ck_assert_int_eq(atomic_load(&f.svc->state->healthy), 1);
    ck_assert_uint_eq(wg_health_conn_generation(inst(&f, 0)), gen);        /* up: no bump */
    teardown(&f);
}
END_TEST

static void make_healthy(struct fixture *f, int n)
{
    for (int k = 0; k < n; k++)
        ck_assert(wg_instance_cas_health(inst(f, k), WG_HEALTH_UNKNOWN, WG_HEALTH_HEALTHY));
}

START_TEST(passive_ejection_and_percent)
{
    struct fixture f;
    setup(&f, CFG, "p", 4, 9000);
    make_healthy(&f, 4);
    struct wg_instance *a = inst(&f, 0), *b = inst(&f, 1), *c = inst(&f, 2);
    unsigned gen = wg_health_conn_generation(a);
    ck_assert(wg_health_conn_reusable(a, gen));
    uint64_t before = wg_now_ms();
    ck_assert(!wg_health_report_failure(f.svc, a, WG_FAIL_CONNECT));
    ck_assert(!wg_health_report_failure(f.svc, a, WG_FAIL_HTTP_5XX));
    ck_assert(wg_health_report_failure(f.svc, a, WG_FAIL_TIMEOUT));
    ck_assert_int_eq(wg_instance_health(a), WG_HEALTH_EJECTED);
    ck_assert_int_eq(atomic_load(&f.svc->state->ejected), 1);
    ck_assert_int_eq(atomic_load(&f.svc->state->healthy), 3);
    ck_assert_uint_eq(atomic_load(&a->ejections), 1);
    uint64_t until = atomic_load(&a->ejected_until_ms);
    ck_assert(until >= before + 1000 && until <= wg_now_ms() + 1000);
    ck_assert(!wg_health_conn_reusable(a, gen));
    /* A success resets the run. */
    wg_health_report_failure(f.svc, b, WG_FAIL_CONNECT);
    wg_health_report_failure(f.svc, b, WG_FAIL_CONNECT);
    wg_health_report_success(b);
    ck_assert(!wg_health_report_failure(f.svc, b, WG_FAIL_CONNECT));
    ck_assert(!wg_health_report_failure(f.svc, b, WG_FAIL_CONNECT));
    ck_assert(wg_health_report_failure(f.svc, b, WG_FAIL_CONNECT));       /* 2 of 4 = 50% */
    for (int k = 0; k < 10; k++)
        ck_assert(!wg_health_report_failure(f.svc, c, WG_FAIL_CONNECT));  /* 3 of 4: refused */
    ck_assert_int_eq(wg_instance_health(c), WG_HEALTH_HEALTHY);
    ck_assert_uint_ge(atomic_load(&f.svc->state->ejections_refused), 8);
    ck_assert_int_eq(atomic_load(&f.svc->state->ejected), 2);
    /* Back: only after the ejection AND a passing probe. */
    struct wg_health_run r = { 0 };
    ck_assert_int_eq(wg_health_on_probe(a, f.svc->cfg, &r, true, 200, until - 1), WG_HEALTH_EJECTED);
    ck_assert_int_eq(wg_health_on_probe(a, f.svc->cfg, &r, true, 200, until), WG_HEALTH_HEALTHY);
    ck_assert_int_eq(atomic_load(&f.svc->state->ejected), 1);
    /* A slot is free again: c's next failure ejects it. */
    ck_assert(wg_health_report_failure(f.svc, c, WG_FAIL_CONNECT));
    /* Failures reported while down do not count once it is back. */
    wg_health_report_failure(f.svc, a, WG_FAIL_CONNECT);       /* a is healthy: 1 */
    wg_instance_cas_health(a, WG_HEALTH_HEALTHY, WG_HEALTH_UNHEALTHY);
    for (int k = 0; k < 5; k++)
        wg_health_report_failure(f.svc, a, WG_FAIL_CONNECT);
    struct wg_health_run r2 = { 0 };
    for (int k = 0; k < 3; k++)
        wg_health_on_probe(a, f.svc->cfg, &r2, true, 200, wg_now_ms());
    ck_assert_int_eq(wg_instance_health(a), WG_HEALTH_HEALTHY);
    ck_assert_uint_eq(atomic_load(&a->consecutive_failures), 0);
    teardown(&f);
}
END_TEST

START_TEST(second_ejection_is_longer_and_failing_ejected_goes_unhealthy)
{
    struct fixture f;
    setup(&f, CFG, "p", 2, 9000);
    make_healthy(&f, 2);
    struct wg_instance *a = inst(&f, 0);
    for (int n = 1; n <= 3; n++) {
        for (int k = 0; k < 3; k++)
            wg_health_report_failure(f.svc, a, WG_FAIL_CONNECT);
        ck_assert_int_eq(wg_instance_health(a), WG_HEALTH_EJECTED);
        uint64_t left = atomic_load(&a->ejected_until_ms) - wg_now_ms();
        ck_assert(left <= 1000u * n && left + 50 >= 1000u * n);
        struct wg_health_run r = { 0 };
        wg_health_on_probe(a, f.svc->cfg, &r, true, 200, atomic_load(&a->ejected_until_ms));
        ck_assert_int_eq(wg_instance_health(a), WG_HEALTH_HEALTHY);
    }
    for (int k = 0; k < 3; k++)
        wg_health_report_failure(f.svc, a, WG_FAIL_CONNECT);
    struct wg_health_run r = { 0 };
    ck_assert_int_eq(wg_health_on_probe(a, f.svc->cfg, &r, false, -ETIMEDOUT, 0), WG_HEALTH_EJECTED);
    ck_assert_int_eq(wg_health_on_probe(a, f.svc->cfg, &r, false, -ETIMEDOUT, 0), WG_HEALTH_UNHEALTHY);
    ck_assert_int_eq(atomic_load(&f.svc->state->ejected), 0);
    teardown(&f);
}
END_TEST

START_TEST(draining_is_final)
{
    struct fixture f;
    setup(&f, CFG, "p", 2, 9000);
    make_healthy(&f, 2);
    struct wg_instance *a = inst(&f, 0);
    wg_instance_set_health(a, WG_HEALTH_DRAINING);
    ck_assert_int_eq(atomic_load(&f.svc->state->healthy), 1);
    struct wg_health_run r = { 0 };
    for (int k = 0; k < 5; k++)
        ck_assert_int_eq(probe(&f, 0, &r, true, 1), WG_HEALTH_DRAINING);
    ck_assert(!wg_instance_cas_health(a, WG_HEALTH_DRAINING, WG_HEALTH_HEALTHY));
    ck_assert(!wg_instance_cas_health(a, WG_HEALTH_HEALTHY, WG_HEALTH_EJECTED));
    for (int k = 0; k < 5; k++)
        ck_assert(!wg_health_report_failure(f.svc, a, WG_FAIL_CONNECT));
    ck_assert_int_eq(wg_health_without_probes(a, UINT64_MAX), WG_HEALTH_DRAINING);
    ck_assert_int_eq(wg_instance_health(a), WG_HEALTH_DRAINING);
    ck_assert_int_eq(atomic_load(&f.svc->state->healthy), 1);
    ck_assert_int_eq(atomic_load(&f.svc->state->ejected), 0);
    teardown(&f);
}
END_TEST

START_TEST(admin_drain_keeps_probing_underneath)
{
    struct fixture f;
    setup(&f, CFG, "p", 1, 9000);
    make_healthy(&f, 1);
    struct wg_instance *a = inst(&f, 0);
    ck_assert(wg_instance_admin_drain(a, true));
    ck_assert(atomic_load(&a->draining_since_ms) > 0);
    struct wg_health_run r = { 0 };
    probe(&f, 0, &r, false, 1);
    ck_assert_int_eq(probe(&f, 0, &r, false, 2), WG_HEALTH_DRAINING);       /* visible */
    ck_assert(wg_instance_admin_drain(a, false));
    ck_assert_int_eq(wg_instance_health(a), WG_HEALTH_UNHEALTHY);          /* underneath */
    ck_assert_uint_eq(atomic_load(&a->draining_since_ms), 0);
    ck_assert_int_eq(atomic_load(&f.svc->state->healthy), 0);
    teardown(&f);
}
END_TEST

START_TEST(no_probes_type_none)
{
    struct fixture f;
    setup(&f, CFG, "n", 2, 9000);
    struct wg_instance *a = inst(&f, 0);
    ck_assert_int_eq(wg_instance_health(a), WG_HEALTH_HEALTHY);            /* from the start */
    wg_instance_cas_health(a, WG_HEALTH_HEALTHY, WG_HEALTH_UNHEALTHY);     /* a reload */
    ck_assert_int_eq(wg_health_without_probes(a, 0), WG_HEALTH_HEALTHY);
    for (int k = 0; k < 5; k++)
        wg_health_report_failure(f.svc, a, WG_FAIL_CONNECT);
    ck_assert_int_eq(wg_instance_health(a), WG_HEALTH_EJECTED);
    uint64_t until = atomic_load(&a->ejected_until_ms);
    ck_assert_int_eq(wg_health_without_probes(a, until - 1), WG_HEALTH_EJECTED);
    ck_assert_int_eq(wg_health_without_probes(a, until), WG_HEALTH_HEALTHY);
    teardown(&f);
}
END_TEST

START_TEST(connection_cut_rules)
{
    struct fixture f;
    setup(&f, CFG, "p", 2, 9000);
    make_healthy(&f, 2);
    const struct wg_service_config *cfg = f.svc->cfg;
    struct wg_instance *a = inst(&f, 0), *b = inst(&f, 1);
    unsigned ga = wg_health_conn_generation(a), gb = wg_health_conn_generation(b);
    uint64_t now = wg_now_ms();
    ck_assert_int_eq(wg_health_conn_cut(cfg, a, ga, now), WG_CUT_NONE);
    wg_instance_set_health(a, WG_HEALTH_DRAINING);                          /* removed */
    uint64_t since = atomic_load(&a->draining_since_ms);
    ck_assert_int_eq(wg_health_conn_cut(cfg, a, ga, since + 1999), WG_CUT_NONE);
    ck_assert_int_eq(wg_health_conn_cut(cfg, a, ga, since + 2000), WG_CUT_DRAIN_TIMEOUT);
    struct wg_service_config never = *cfg;
    never.drain_timeout_ms = 0;
    ck_assert_int_eq(wg_health_conn_cut(&never, a, ga, UINT64_MAX), WG_CUT_NONE);
    /* on_unhealthy: close cuts what was opened before the instance went down. */
    wg_instance_cas_health(b, WG_HEALTH_HEALTHY, WG_HEALTH_UNHEALTHY);
    ck_assert_int_eq(wg_health_conn_cut(cfg, b, gb, now), WG_CUT_UNHEALTHY);
    unsigned panic_gen = wg_health_conn_generation(b);                     /* panic-mode pick */
    ck_assert_int_eq(wg_health_conn_cut(cfg, b, panic_gen, now), WG_CUT_NONE);
    struct wg_service_config keep = *cfg;
    keep.on_unhealthy_close = false;
    ck_assert_int_eq(wg_health_conn_cut(&keep, b, gb, now), WG_CUT_NONE);
    teardown(&f);
}
END_TEST

/* Many workers report failures on many instances at once: never more than
 * max_ejection_percent ejected, and the count matches the states. */
struct race {
    struct fixture *f;
    int first;
    pthread_barrier_t *go;
};

static void *race_thread(void *arg)
{
    struct race *r = arg;
    pthread_barrier_wait(r->go);
    for (int round = 0; round < 3; round++)
        for (int k = 0; k < 10; k++)
            wg_health_report_failure(r->f->svc, inst(r->f, (r->first + k) % 10), WG_FAIL_CONNECT);
    return NULL;
}

START_TEST(max_ejection_percent_under_races)
{
    struct fixture f;
    setup(&f, "services:\n  p: { outlier_detection: { consecutive_failures: 1,"
              " max_ejection_percent: 30 } }\n", "p", 10, 9000);
    wg_log_set_level(WG_LOG_WARN);             /* thousands of ejections */
    for (int round = 0; round < 100; round++) {
        for (int k = 0; k < 10; k++) {
            struct wg_instance *i = inst(&f, k);
            wg_instance_cas_health(i, WG_HEALTH_EJECTED, WG_HEALTH_HEALTHY);
            wg_instance_cas_health(i, WG_HEALTH_UNKNOWN, WG_HEALTH_HEALTHY);
        }
        pthread_barrier_t go;
        pthread_barrier_init(&go, NULL, 8);
        pthread_t t[8];
        struct race r[8];
        for (int k = 0; k < 8; k++) {
            r[k] = (struct race){ &f, k, &go };
            pthread_create(&t[k], NULL, race_thread, &r[k]);
        }
        for (int k = 0; k < 8; k++)
            pthread_join(t[k], NULL);
        pthread_barrier_destroy(&go);
        int ejected = 0;
        for (int k = 0; k < 10; k++)
            ejected += wg_instance_health(inst(&f, k)) == WG_HEALTH_EJECTED;
        ck_assert_int_le(ejected, 3);
        ck_assert_int_ge(ejected, 1);
        ck_assert_int_eq(atomic_load(&f.svc->state->ejected), ejected);
        ck_assert_int_eq(atomic_load(&f.svc->state->healthy), 10 - ejected);
    }
    teardown(&f);
}
END_TEST

/* ---- the prober against loopback servers ---- */

static int listen_any(int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&sin, sizeof sin), 0);
    ck_assert_int_eq(listen(fd, 1024), 0);
    socklen_t len = sizeof sin;
    getsockname(fd, (struct sockaddr *)&sin, &len);
    *port = ntohs(sin.sin_port);
    return fd;
}

/* A keep-alive HTTP server answering every request head with `status`. */
struct mini_http {
    int lfd, port;
    _Atomic int status, accepts, requests, stop;
    pthread_t thread;
};

static void mini_answer(struct mini_http *m, int fd, char *buf, size_t *len)
{
    char *end;
    while ((end = memmem(buf, *len, "\r\n\r\n", 4))) {
        size_t used = (size_t)(end + 4 - buf);
        char resp[128];
        int n = snprintf(resp, sizeof resp, "HTTP/1.1 %d X\r\nContent-Length: 2\r\n\r\nok",
                         atomic_load(&m->status));
        ck_assert_int_eq(send(fd, resp, (size_t)n, MSG_NOSIGNAL), n);
        atomic_fetch_add(&m->requests, 1);
        memmove(buf, buf + used, *len - used);
        *len -= used;
    }
}

static void *mini_main(void *arg)
{
    struct mini_http *m = arg;
    struct pollfd p[17] = { { .fd = m->lfd, .events = POLLIN } };
    char bufs[16][1024];
    size_t lens[16] = { 0 };
    int n = 1;
    while (!atomic_load(&m->stop)) {
        if (poll(p, (nfds_t)n, 20) <= 0)
            continue;
        if ((p[0].revents & POLLIN) && n < 17) {
            p[n] = (struct pollfd){ .fd = accept(m->lfd, NULL, NULL), .events = POLLIN };
            lens[n - 1] = 0;
            atomic_fetch_add(&m->accepts, 1);
            n++;
        }
        for (int k = 1; k < n; k++) {
            if (!p[k].revents)
                continue;
            ssize_t r = recv(p[k].fd, bufs[k - 1] + lens[k - 1], sizeof bufs[0] - lens[k - 1], 0);
            if (r <= 0) {
                close(p[k].fd);
                p[k] = p[n - 1];
                memcpy(bufs[k - 1], bufs[n - 2], lens[n - 2]);
                lens[k - 1] = lens[n - 2];
                n--;
                k--;
                continue;
            }
            lens[k - 1] += (size_t)r;
            mini_answer(m, p[k].fd, bufs[k - 1], &lens[k - 1]);
        }
    }
    for (int k = 1; k < n; k++)
        close(p[k].fd);
    return NULL;
}

static bool wait_health(struct wg_instance *i, enum wg_health h, int ms)
{
    for (int t = 0; t < ms; t += 10) {
        if (wg_instance_health(i) == h)
            return true;
        usleep(10000);
    }
    return wg_instance_health(i) == h;
}

START_TEST(prober_tcp_and_http)
{
    evthread_use_pthreads();
    struct mini_http m = { .status = 200 };
    m.lfd = listen_any(&m.port);
    pthread_create(&m.thread, NULL, mini_main, &m);
    int closed_port, tmp = listen_any(&closed_port);
    close(tmp);                                         /* nothing listens there */
    int tcp_port, tcp_fd = listen_any(&tcp_port);       /* listens, never accepts */
    char yaml[512];
    snprintf(yaml, sizeof yaml,
             "services:\n"
             "  h: { health_check: { type: http, interval: 100ms, timeout: 300ms,\n"
             "                       healthy_threshold: 1, unhealthy_threshold: 1 } }\n"
             "  t: { health_check: { type: tcp, interval: 100ms, port: %d } }\n", tcp_port);
    struct fixture f;
    memset(&f, 0, sizeof f);
    f.rc = wg_reclaim_new();
    f.pool = wg_pool_new(f.rc, &wg_balance_policy, NULL, NULL);
    f.ref = wg_config_ref_new(unit_config(yaml));
    wg_pool_set_config(f.pool, f.ref);
    struct wg_prober *pr = wg_prober_new(f.pool);
    ck_assert_ptr_nonnull(pr);
    struct wg_record_set set = { 0 };
    unit_record(&set, "h", "up", "127.0.0.1", m.port, 100);
    unit_record(&set, "h", "down", "127.0.0.1", closed_port, 100);
    unit_record(&set, "t", "probe-port", "127.0.0.1", closed_port, 100);  /* port: overrides */
    wg_record_set_sort(&set);
    ck_assert_int_eq(wg_pool_replace_all(f.pool, &set), 0);
    const struct wg_pool_service *h = wg_snapshot_service(wg_pool_current(f.pool), "h");
    const struct wg_pool_service *t = wg_snapshot_service(wg_pool_current(f.pool), "t");
    struct wg_instance *down = h->members[0].inst, *up = h->members[1].inst;
    ck_assert_str_eq(up->id, "up");
    ck_assert(wait_health(up, WG_HEALTH_HEALTHY, 2000));
    ck_assert(wait_health(down, WG_HEALTH_UNHEALTHY, 2000));
    ck_assert(wait_health(t->members[0].inst, WG_HEALTH_HEALTHY, 2000));
    /* Keep-alive: several probes, one connection. */
    uint64_t seen = atomic_load(&up->probes_passed);
    while (atomic_load(&up->probes_passed) < seen + 4)
        usleep(10000);
    ck_assert_int_eq(atomic_load(&m.accepts), 1);
    ck_assert_int_ge(atomic_load(&m.requests), 5);
    /* Status switch: out after one 500 (threshold 1), back after one 200. */
    atomic_store(&m.status, 500);
    ck_assert(wait_health(up, WG_HEALTH_UNHEALTHY, 2000));
    ck_assert_int_eq(atomic_load(&up->last_probe_result), 500);
    atomic_store(&m.status, 200);
    ck_assert(wait_health(up, WG_HEALTH_HEALTHY, 2000));
    /* A new snapshot without `down`: the prober drops it. */
    wg_record_set_clear(&set);
    unit_record(&set, "h", "up", "127.0.0.1", m.port, 50);
    wg_record_set_sort(&set);
    ck_assert_int_eq(wg_pool_replace_all(f.pool, &set), 0);
    wg_record_set_clear(&set);
    struct wg_prober_stats st;
    for (int k = 0; k < 200; k++) {
        wg_prober_stats(pr, &st);
        if (st.instances == 1)
            break;
        usleep(10000);
    }
    ck_assert_uint_eq(st.instances, 1);
    ck_assert_uint_ge(st.snapshots, 2);
    ck_assert_int_eq(wg_instance_health(up), WG_HEALTH_HEALTHY);           /* identity kept */
    wg_prober_free(pr);
    atomic_store(&m.stop, 1);
    pthread_join(m.thread, NULL);
    close(m.lfd);
    close(tcp_fd);
    teardown(&f);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("health");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, jitter_bounds);
    tcase_add_test(tc, ejection_time_grows_and_caps);
    tcase_add_test(tc, ejection_percent_math);
    tcase_add_test(tc, first_pass_makes_unknown_healthy);
    tcase_add_test(tc, thresholds_both_ways);
    tcase_add_test(tc, passive_ejection_and_percent);
    tcase_add_test(tc, second_ejection_is_longer_and_failing_ejected_goes_unhealthy);
    tcase_add_test(tc, draining_is_final);
    tcase_add_test(tc, admin_drain_keeps_probing_underneath);
    tcase_add_test(tc, no_probes_type_none);
    tcase_add_test(tc, connection_cut_rules);
    tcase_add_test(tc, max_ejection_percent_under_races);
    tcase_add_test(tc, prober_tcp_and_http);
    suite_add_tcase(s, tc);
    return unit_run(s);
}
