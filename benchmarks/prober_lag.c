/* prober_lag — does probing N instances every interval delay the control
 * thread (registry updates, admin answers) and how late do probes start?
 *
 *   prober_lag --ports P1,P2,... [--instances 10000] [--interval-ms 1000]
 *              [--seconds 20] [--type http|tcp] [--no-prober]
 *
 * The pool holds N instances of one service spread over the given backend
 * ports (wg_backend in http mode); the prober runs in its own thread exactly
 * as in waygate. The main thread plays the control thread: an event loop with
 * a 10 ms timer whose lateness is its lag, and once a second a registry
 * update (one instance added or removed, staged and committed like the file
 * and etcd registries do) whose commit time is measured, as is the time until
 * the added instance is healthy (a registration's first probe round trip).
 *
 * Output: one line per second, then a summary line starting "summary" over
 * the second half of the run (the steady state after the start-up burst).
 * Built and run by benchmarks/prober_lag.sh.
 */
#include <arpa/inet.h>
#include <event2/event.h>
#include <event2/thread.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "waygate/health.h"
#include "waygate/log.h"
#include "waygate/pool.h"
#include "waygate/reclaim.h"

#define TICK_US 10000

struct bench {
    struct event_base *base;
    struct wg_pool *pool;
    struct wg_reclaim *rc;
    struct wg_prober *prober;
    int ports[64];
    int n_ports;
    unsigned instances;
    unsigned seconds, elapsed;
    bool extra;                         /* the extra instance is registered */
    uint64_t extra_added_us;
    uint64_t tick_due_us;
    /* per second */
    uint64_t lag_max_us, lag_sum_us, lag_n;
    /* whole run */
    uint64_t all_lag_max_us, all_lag_sum_us, all_lag_n;
    uint64_t commit_max_us, commit_sum_us, commit_n;
    uint64_t reg_max_us, reg_sum_us, reg_n;
    uint64_t probe_lag_max_us, probes0;
    struct wg_prober_stats first;
    uint64_t cpu_first_us;
    uint64_t prev_lag_sum_us, prev_lag_count;   /* per-second means */
};

static uint64_t now_us(void) { return wg_now_ns() / 1000; }

/* CPU time of the whole process (all threads), microseconds. */
static uint64_t cpu_us(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (uint64_t)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000u +
           (uint64_t)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

static void push(struct wg_record_set *set, const char *id, int port)
{
    struct wg_record r = { 0 };
    struct sockaddr_in *sin = (struct sockaddr_in *)&r.addr;
    sin->sin_family = AF_INET;
    sin->sin_port = htons((uint16_t)port);
    inet_pton(AF_INET, "127.0.0.1", &sin->sin_addr);
    r.addrlen = sizeof *sin;
    r.service = strdup("bench");
    r.id = strdup(id);
    r.weight = 100;
    if (!r.service || !r.id || !wg_record_set_push(set, &r)) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
}

/* Stage the whole service (N instances, plus "zz-extra" when b->extra). */
static void publish(struct bench *b)
{
    struct wg_record_set set = { 0 };
    char id[32];
    for (unsigned k = 0; k < b->instances; k++) {
        snprintf(id, sizeof id, "i%06u", k);
        push(&set, id, b->ports[k % b->n_ports]);
    }
    if (b->extra)
        push(&set, "zz-extra", b->ports[0]);
    wg_record_set_sort(&set);
    uint64_t t0 = now_us();
    wg_pool_replace_all(b->pool, &set);
    uint64_t took = now_us() - t0;
    wg_record_set_clear(&set);
    b->commit_max_us = took > b->commit_max_us ? took : b->commit_max_us;
    b->commit_sum_us += took;
    b->commit_n++;
}

static struct wg_instance *extra_instance(struct bench *b)
{
    const struct wg_pool_service *s = wg_snapshot_service(wg_pool_published(b->pool), "bench");
    return s && s->n_members > b->instances ? s->members[s->n_members - 1].inst : NULL;
}

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
    struct bench *b = arg;
    uint64_t now = now_us(), lag = now > b->tick_due_us ? now - b->tick_due_us : 0;
    b->tick_due_us = now + TICK_US;
    b->lag_max_us = lag > b->lag_max_us ? lag : b->lag_max_us;
    b->lag_sum_us += lag;
    b->lag_n++;
    struct wg_instance *x = b->extra ? extra_instance(b) : NULL;
    if (x && b->extra_added_us && wg_instance_health(x) == WG_HEALTH_HEALTHY) {
        uint64_t took = now - b->extra_added_us;
        b->reg_max_us = took > b->reg_max_us ? took : b->reg_max_us;
        b->reg_sum_us += took;
        b->reg_n++;
        b->extra_added_us = 0;
    }
    wg_pool_reclaim(b->pool);
}

/* Last probe results by value (status, 0 tcp pass, -errno), when not all pass. */
static void print_results(const struct wg_pool_service *s)
{
    int vals[8], counts[8], n = 0;
    for (uint32_t k = 0; s && k < s->n_members; k++) {
        int v = atomic_load(&s->members[k].inst->last_probe_result), j = 0;
        while (j < n && vals[j] != v)
            j++;
        if (j == n && n < 8)
            vals[n] = v, counts[n++] = 0;
        if (j < n)
            counts[j]++;
    }
    if (n == 1 && (vals[0] == 200 || vals[0] == 0))
        return;
    printf("  last results:");
    for (int j = 0; j < n; j++)
        printf(" %d:%s=%d", vals[j], vals[j] < 0 ? strerror(-vals[j]) : "", counts[j]);
    printf("\n");
}

static void second_cb(evutil_socket_t fd, short what, void *arg)
{
    struct bench *b = arg;
    struct wg_prober_stats st = { 0 };
    if (b->prober)
        wg_prober_stats(b->prober, &st);
    const struct wg_pool_service *s = wg_snapshot_service(wg_pool_published(b->pool), "bench");
    int healthy = s ? atomic_load(&s->state->healthy) : 0;
    printf("t=%us healthy=%d probes=%llu failed=%llu connects=%llu open=%llu "
           "probe_lag_mean_us=%llu probe_lag_max_us=%llu control_lag_mean_us=%llu "
           "control_lag_max_us=%llu\n", b->elapsed, healthy,
           (unsigned long long)st.probes, (unsigned long long)st.failed,
           (unsigned long long)st.connects, (unsigned long long)st.open_connections,
           (unsigned long long)(st.lag_count - b->prev_lag_count
                                    ? (st.lag_sum_us - b->prev_lag_sum_us) /
                                          (st.lag_count - b->prev_lag_count) : 0),
           (unsigned long long)st.lag_max_us,
           (unsigned long long)(b->lag_n ? b->lag_sum_us / b->lag_n : 0),
           (unsigned long long)b->lag_max_us);
    print_results(s);
    fflush(stdout);
    b->prev_lag_sum_us = st.lag_sum_us;
    b->prev_lag_count = st.lag_count;
    unsigned warm = b->seconds / 2;     /* the second half is the steady state */
    if (b->elapsed == warm) {
        b->first = st;
        b->cpu_first_us = cpu_us();
        b->commit_max_us = b->commit_sum_us = b->commit_n = 0;
        b->reg_max_us = b->reg_sum_us = b->reg_n = 0;
    }
    if (b->elapsed > warm) {
        b->probe_lag_max_us = st.lag_max_us > b->probe_lag_max_us ? st.lag_max_us
                                                                  : b->probe_lag_max_us;
        b->all_lag_max_us = b->lag_max_us > b->all_lag_max_us ? b->lag_max_us : b->all_lag_max_us;
        b->all_lag_sum_us += b->lag_sum_us;
        b->all_lag_n += b->lag_n;
    }
    b->lag_max_us = b->lag_sum_us = b->lag_n = 0;
    if (++b->elapsed >= b->seconds) {
        struct wg_prober_stats end = st;
        double secs = b->seconds - b->seconds / 2 - 1;
        printf("summary instances=%u prober=%s probes_per_s=%.0f connects_after_start=%llu "
               "probe_lag_mean_us=%llu probe_lag_max_us=%llu control_lag_mean_us=%llu "
               "control_lag_max_us=%llu commit_mean_us=%llu commit_max_us=%llu "
               "registration_to_healthy_mean_ms=%.1f registration_to_healthy_max_ms=%.1f "
               "cpu_percent=%.1f deferred=%llu\n",
               b->instances, b->prober ? "on" : "off",
               (end.probes - b->first.probes) / secs,
               (unsigned long long)(end.connects - b->first.connects),
               (unsigned long long)(end.lag_count - b->first.lag_count
                                        ? (end.lag_sum_us - b->first.lag_sum_us) /
                                              (end.lag_count - b->first.lag_count) : 0),
               (unsigned long long)b->probe_lag_max_us,
               (unsigned long long)(b->all_lag_n ? b->all_lag_sum_us / b->all_lag_n : 0),
               (unsigned long long)b->all_lag_max_us,
               (unsigned long long)(b->commit_n ? b->commit_sum_us / b->commit_n : 0),
               (unsigned long long)b->commit_max_us,
               b->reg_n ? b->reg_sum_us / 1000.0 / b->reg_n : -1.0,
               b->reg_n ? b->reg_max_us / 1000.0 : -1.0,
               (cpu_us() - b->cpu_first_us) / 1e4 / secs,
               (unsigned long long)(end.deferred - b->first.deferred));
        event_base_loopbreak(b->base);
        return;
    }
    /* A registry update: toggle the extra instance. */
    b->extra = !b->extra;
    publish(b);
    b->extra_added_us = b->extra ? now_us() : 0;
}

static void parse_args(struct bench *b, int argc, char **argv, int *type_tcp, int *no_prober,
                       unsigned *interval)
{
    static const struct option opts[] = {
        { "ports", required_argument, NULL, 'p' }, { "instances", required_argument, NULL, 'n' },
        { "interval-ms", required_argument, NULL, 'i' }, { "seconds", required_argument, NULL, 's' },
        { "type", required_argument, NULL, 't' }, { "no-prober", no_argument, NULL, 'x' },
        { NULL, 0, NULL, 0 } };
    int o;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (o == 'p') {
            for (char *tok = strtok(optarg, ","); tok && b->n_ports < 64; tok = strtok(NULL, ","))
                b->ports[b->n_ports++] = atoi(tok);
        } else if (o == 'n') {
            b->instances = (unsigned)atoi(optarg);
        } else if (o == 'i') {
            *interval = (unsigned)atoi(optarg);
        } else if (o == 's') {
            b->seconds = (unsigned)atoi(optarg);
        } else if (o == 't') {
            *type_tcp = strcmp(optarg, "tcp") == 0;
        } else if (o == 'x') {
            *no_prober = 1;
        } else {
            exit(2);
        }
    }
    if (!b->n_ports || b->seconds < 5) {
        fprintf(stderr, "usage: prober_lag --ports P1,P2 [--instances N] [--interval-ms MS] "
                        "[--seconds S>=5] [--type http|tcp] [--no-prober]\n");
        exit(2);
    }
}

int main(int argc, char **argv)
{
    struct bench b = { .instances = 10000, .seconds = 20 };
    int type_tcp = 0, no_prober = 0;
    unsigned interval = 1000;
    parse_args(&b, argc, argv, &type_tcp, &no_prober, &interval);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    evthread_use_pthreads();
    wg_log_set_level(WG_LOG_WARN);
    char yaml[256];
    snprintf(yaml, sizeof yaml, "services:\n  bench: { health_check: { type: %s, interval: %ums,"
             " timeout: 500ms } }\n", type_tcp ? "tcp" : "http", interval);
    struct wg_errors errs = { 0 };
    struct wg_config *cfg = wg_config_load_buffer("bench.yaml", yaml, strlen(yaml), false, &errs);
    struct wg_config_ref *ref = cfg ? wg_config_ref_new(cfg) : NULL;
    b.base = event_base_new();
    b.rc = wg_reclaim_new();
    b.pool = b.rc ? wg_pool_new(b.rc, NULL, NULL) : NULL;
    if (!ref || !b.base || !b.pool) {
        fprintf(stderr, "cannot set up\n");
        return 1;
    }
    wg_pool_set_config(b.pool, ref);
    b.prober = no_prober ? NULL : wg_prober_new(b.pool);
    publish(&b);
    struct event *tick = event_new(b.base, -1, EV_PERSIST, tick_cb, &b);
    struct event *second = event_new(b.base, -1, EV_PERSIST, second_cb, &b);
    struct timeval tv_tick = { 0, TICK_US }, tv_second = { 1, 0 };
    b.tick_due_us = now_us() + TICK_US;
    event_add(tick, &tv_tick);
    event_add(second, &tv_second);
    event_base_dispatch(b.base);
    event_free(tick);
    event_free(second);
    wg_prober_free(b.prober);
    wg_pool_free(b.pool);
    wg_reclaim_free(b.rc);
    wg_config_ref_put(ref);
    event_base_free(b.base);
    return 0;
}
