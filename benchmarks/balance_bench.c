/* balance_bench — picks per second per policy on 1,000 instances.
 *
 * Not a test: it prints numbers. One thread, the worker's real pick path
 * (wg_pick_init with the worker's state cache, then wg_pick_next), with and
 * without load on the instances. Build and run: see benchmarks/README.md. */
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

#define INSTANCES 1000
#define RUN_NS 500000000ULL         /* per measurement, in thread CPU time */

struct bench {
    struct wg_reclaim *rc;
    struct wg_pool *pool;
    struct wg_config_ref *ref;
    struct wg_balance_cache cache;
    struct wg_rng rng;
    const struct wg_pool_service *svc;
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

/* 1,000 instances 10.0.x.y:8080, weights 100..500. */
static int bench_instances(struct bench *b)
{
    struct wg_record_set set = { 0 };
    for (int k = 0; k < INSTANCES; k++) {
        struct wg_record r = { 0 };
        struct sockaddr_in *sin = (struct sockaddr_in *)&r.addr;
        char id[16];
        snprintf(id, sizeof id, "i%04d", k);
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

static int bench_open(struct bench *b, const char *policy)
{
    memset(b, 0, sizeof *b);
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

/* Arguments: the policies to measure (default: all). */
int main(int argc, char **argv)
{
    static const char *const all[] = { "round_robin", "least_conn", "random", "p2c", "hash" };
    const char *const *policies = argc > 1 ? (const char *const *)argv + 1 : all;
    size_t n = argc > 1 ? (size_t)argc - 1 : sizeof all / sizeof all[0];
    printf("%d instances, weights 100..500, one thread\n", INSTANCES);
    for (size_t i = 0; i < n; i++) {
        struct bench b;
        printf("%s\n", policies[i]);
        if (bench_open(&b, policies[i]) < 0) {
            fprintf(stderr, "cannot set up %s\n", policies[i]);
            bench_close(&b);
            return 1;
        }
        for (int loaded = 0; loaded <= 1; loaded++) {
            set_load(&b, loaded);
            double rate = bench_run(&b, strcmp(policies[i], "hash") == 0);
            printf("  %-6s %12.0f picks/s  %8.1f ns/pick\n", loaded ? "loaded" : "idle", rate,
                   1e9 / rate);
        }
        set_load(&b, false);
        bench_close(&b);
    }
    return 0;
}
