/* balance_bench — ns per pick per policy on 1,000 to 100,000 instances.
 *
 * Not a test: it prints numbers. One thread, the worker's real pick path
 * (wg_pick_init with the worker's state cache, then wg_pick_next), idle,
 * loaded, and loaded with 1 % of the instances unhealthy; then the shares of
 * 10^6 picks per weight class against the weights. Build and run: see
 * benchmarks/README.md. */
#include <arpa/inet.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "waygate/balance.h"
#include "waygate/config.h"
#include "waygate/pool.h"
#include "waygate/reclaim.h"

#define RUN_NS 300000000ULL         /* per measurement, in thread CPU time */

struct bench {
    struct wg_reclaim *rc;
    struct wg_pool *pool;
    struct wg_config_ref *ref;
    struct wg_balance_cache cache;
    struct wg_rng rng;
    const struct wg_pool_service *svc;
    int instances;
};

/* CPU time of this thread: other processes on the machine do not count. */
static uint64_t cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int bench_config(struct bench *b, const char *policy)
{
    char yaml[256];
    int n = snprintf(yaml, sizeof yaml,
                     "services:\n  s: { balance: %s, health_check: { type: none } }\n", policy);
    struct wg_errors errs = { 0 };
    struct wg_config *cfg = wg_config_load_buffer("bench.yaml", yaml, (size_t)n, false, &errs);
    for (size_t k = 0; k < errs.n; k++)
        fprintf(stderr, "%s\n", errs.lines[k]);
    wg_errors_free(&errs);
    if (!cfg || !(b->ref = wg_config_ref_new(cfg)))
        return -1;
    wg_pool_set_config(b->pool, b->ref);
    return 0;
}

/* b->instances instances 10.x.y.z:8080, weights 100..500. */
static int bench_instances(struct bench *b)
{
    struct wg_record_set set = { 0 };
    for (int k = 0; k < b->instances; k++) {
        struct wg_record r = { 0 };
        struct sockaddr_in *sin = (struct sockaddr_in *)&r.addr;
        char id[16];
        snprintf(id, sizeof id, "i%06d", k);
        sin->sin_family = AF_INET;
        sin->sin_port = htons(8080);
        sin->sin_addr.s_addr = htonl(0x0a000000u | (uint32_t)k);
        r.addrlen = sizeof *sin;
        r.service = strdup("s");
        r.id = strdup(id);
        r.weight = 100u * (1 + (unsigned)k % 5);
        if (!r.service || !r.id || !wg_record_set_push(&set, &r))
            return -1;
    }
    wg_record_set_sort(&set);
    uint64_t t0 = cpu_ns();
    int rc = wg_pool_replace_all(b->pool, &set);
    uint64_t t1 = cpu_ns();
    wg_record_set_clear(&set);
    b->svc = wg_snapshot_service(wg_pool_current(b->pool), "s");
    printf("  publish (incl. shared_new): %.2f ms\n", (double)(t1 - t0) / 1e6);
    return rc < 0 || !b->svc ? -1 : 0;
}

static int bench_open(struct bench *b, const char *policy, int instances)
{
    memset(b, 0, sizeof *b);
    b->instances = instances;
    wg_rng_seed(&b->rng, 1);
    b->rc = wg_reclaim_new();
    b->pool = b->rc ? wg_pool_new(b->rc, NULL, NULL) : NULL;
    if (!b->pool || bench_config(b, policy) < 0)
        return -1;
    return bench_instances(b);
}

static void bench_close(struct bench *b)
{
    wg_balance_cache_free(&b->cache);
    if (b->pool)
        wg_pool_free(b->pool);
    if (b->rc)
        wg_reclaim_free(b->rc);
    if (b->ref)
        wg_config_ref_put(b->ref);
}

/* Picks until RUN_NS has passed; each keyed by a client IPv4 address
 * hashed the way the tcp proxy does. Returns picks per second. */
static double bench_run(struct bench *b, bool keyed)
{
    uint64_t picks = 0, t0 = cpu_ns(), elapsed, misses = 0;
    uint32_t client = 0xc0a80000u;
    do {
        for (int k = 0; k < 4096; k++, client += 7919) {
            struct wg_pick p;
            wg_pick_init(&p, b->svc, &b->rng, &b->cache);
            if (keyed) {
                unsigned char ip[4] = { client >> 24, client >> 16, client >> 8, client };
                p.has_hash = true;
                p.hash = wg_balance_hash_bytes(ip, sizeof ip);
            }
            misses += wg_pick_next(&p) == NULL;
        }
        picks += 4096;
        elapsed = cpu_ns() - t0;
    } while (elapsed < RUN_NS);
    if (misses)
        fprintf(stderr, "  %" PRIu64 " picks found nothing\n", misses);
    return (double)picks * 1e9 / (double)elapsed;
}

static void set_load(struct bench *b, bool loaded)
{
    struct wg_rng r;
    wg_rng_seed(&r, 7);
    for (uint32_t k = 0; k < b->svc->n_members; k++)
        atomic_store(&b->svc->members[k].inst->active, loaded ? (unsigned)wg_rng_below(&r, 64) : 0);
}

/* Every 100th instance unhealthy (or all healthy again). */
static void set_unhealthy(struct bench *b, bool some)
{
    for (uint32_t k = 0; k < b->svc->n_members; k += 100)
        wg_instance_set_health(b->svc->members[k].inst, some ? WG_HEALTH_UNHEALTHY : WG_HEALTH_HEALTHY);
}

/* 10^6 picks, idle (each released at once), with 1 % unhealthy: the
 * share of each weight class (100..500) against its share of the routable
 * weight. Prints the largest relative error; a pick of an unhealthy
 * instance is counted and reported. */
static void bench_shares(struct bench *b)
{
    uint64_t got[5] = { 0 }, want[5] = { 0 }, total = 0, bad = 0;
    const int picks = 1000000;
    for (uint32_t k = 0; k < b->svc->n_members; k++) {
        if (wg_instance_health(b->svc->members[k].inst) != WG_HEALTH_HEALTHY)
            continue;
        want[k % 5] += b->svc->members[k].weight;
        total += b->svc->members[k].weight;
    }
    uint32_t client = 0xc0a80000u;
    for (int k = 0; k < picks; k++, client += 7919) {
        struct wg_pick p;
        wg_pick_init(&p, b->svc, &b->rng, &b->cache);
        unsigned char ip[4] = { client >> 24, client >> 16, client >> 8, client };
        p.has_hash = true;
        p.hash = wg_balance_hash_bytes(ip, sizeof ip);
        const struct wg_member *m = wg_pick_next(&p);
        if (!m || wg_instance_health(m->inst) != WG_HEALTH_HEALTHY) {
            bad++;
            continue;
        }
        got[(m - b->svc->members) % 5]++;
    }
    double worst = 0;
    for (int c = 0; c < 5; c++) {
        double share = (double)got[c] / picks, w = (double)want[c] / (double)total;
        double err = share > w ? share / w - 1 : 1 - share / w;
        worst = err > worst ? err : worst;
    }
    printf("  shares of 10^6 picks per weight class: worst %.2f %% off the weights%s", worst * 100,
           bad ? "" : "\n");
    if (bad)
        printf(", %" PRIu64 " picks unhealthy or none\n", bad);
}

/* Arguments: [-n INSTANCES[,INSTANCES...]] [POLICY...] (default: 1000,10000,
 * 100000 and every policy). */
int main(int argc, char **argv)
{
    static const char *const all[] = { "round_robin", "least_conn", "random", "p2c", "hash" };
    int sizes[8] = { 1000, 10000, 100000 }, n_sizes = 3, a = 1;
    if (argc > 2 && strcmp(argv[1], "-n") == 0) {
        n_sizes = 0;
        for (char *t = strtok(argv[2], ","); t && n_sizes < 8; t = strtok(NULL, ","))
            if (atoi(t) > 0)
                sizes[n_sizes++] = atoi(t);
        a = 3;
    }
    const char *const *policies = argc > a ? (const char *const *)argv + a : all;
    size_t n = argc > a ? (size_t)(argc - a) : sizeof all / sizeof all[0];
    for (int z = 0; z < n_sizes; z++) {
        printf("%d instances, weights 100..500, one thread\n", sizes[z]);
        for (size_t i = 0; i < n; i++) {
            struct bench b;
            printf("%s\n", policies[i]);
            if (bench_open(&b, policies[i], sizes[z]) < 0) {
                fprintf(stderr, "cannot set up %s\n", policies[i]);
                bench_close(&b);
                return 1;
            }
            static const char *const modes[] = { "idle", "loaded", "loaded, 1 % unhealthy" };
            for (int mode = 0; mode < 3; mode++) {
                set_load(&b, mode > 0);
                set_unhealthy(&b, mode == 2);
                double rate = bench_run(&b, strcmp(policies[i], "hash") == 0);
                printf("  %-22s %12.0f picks/s  %8.1f ns/pick\n", modes[mode], rate, 1e9 / rate);
            }
            set_load(&b, false);
            bench_shares(&b);
            set_unhealthy(&b, false);
            bench_close(&b);
        }
    }
    return 0;
}
