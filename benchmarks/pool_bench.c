/* pool_bench — the control thread's cost of one registry change in a large
 * registry.
 *
 * Not a test: it prints numbers. 100,000 instances in 10,000 services (10
 * each) are published at once (wg_pool_replace_all, as the initial list
 * does), then one service changes 1,000 times (one weight flips): each
 * change is staged, committed and the old snapshot reclaimed, as a watch
 * event does. Times are wall clock on this thread (nothing else runs in
 * the process). Build and run: see benchmarks/README.md. */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "waygate/balance.h"
#include "waygate/config.h"
#include "waygate/pool.h"
#include "waygate/reclaim.h"

#define SERVICES 10000
#define PER_SERVICE 10
#define CHANGES 1000

static struct wg_pool *pool_for(const char *policy, struct wg_reclaim *rc, struct wg_config_ref **ref)
{
    char yaml[256];
    int n = snprintf(yaml, sizeof yaml,
                     "service_defaults: { balance: %s, health_check: { type: none } }\n", policy);
    struct wg_errors errs = { 0 };
    struct wg_config *cfg = wg_config_load_buffer("bench.yaml", yaml, (size_t)n, false, &errs);
    wg_errors_free(&errs);
    struct wg_pool *p = cfg ? wg_pool_new(rc, &wg_balance_policy, NULL, NULL) : NULL;
    if (!p || !(*ref = wg_config_ref_new(cfg)))
        return NULL;
    wg_pool_set_config(p, *ref);
    return p;
}

static int publish_all(struct wg_pool *p)
{
    struct wg_record_set set = { 0 };
    for (int k = 0; k < SERVICES * PER_SERVICE; k++) {
        struct wg_record r = { 0 };
        struct sockaddr_in *sin = (struct sockaddr_in *)&r.addr;
        char id[16], svc[16];
        snprintf(id, sizeof id, "i%06d", k);
        snprintf(svc, sizeof svc, "svc%d", k % SERVICES);
        sin->sin_family = AF_INET;
        sin->sin_port = htons(8080);
        sin->sin_addr.s_addr = htonl(0x0a000000u | (uint32_t)k);
        r.addrlen = sizeof *sin;
        r.service = strdup(svc);
        r.id = strdup(id);
        r.weight = 100;
        if (!r.service || !r.id || !wg_record_set_push(&set, &r))
            return -1;
    }
    wg_record_set_sort(&set);
    uint64_t t0 = wg_now_ns();
    int rc = wg_pool_replace_all(p, &set);
    printf("  publish %d instances in %d services: %.1f ms\n", SERVICES * PER_SERVICE, SERVICES,
           (double)(wg_now_ns() - t0) / 1e6);
    wg_record_set_clear(&set);
    return rc;
}

/* CHANGES times: svc42's records again, with its first weight flipped. */
static void change_one(struct wg_pool *p, struct wg_reclaim *rc)
{
    struct wg_record recs[PER_SERVICE];
    uint64_t worst = 0, sum = 0;
    for (int c = 0; c < CHANGES; c++) {
        const struct wg_pool_service *svc = wg_snapshot_service(wg_pool_current(p), "svc42");
        for (uint32_t m = 0; m < svc->n_members; m++) {
            const struct wg_instance *i = svc->members[m].inst;
            recs[m] = (struct wg_record){ .id = i->id, .weight = 100 };
            recs[m].addrlen = wg_instance_sockaddr(i, &recs[m].addr);
        }
        recs[0].weight = 100 + (uint32_t)(c % 2);
        uint64_t t0 = wg_now_ns();
        wg_pool_stage_service(p, "svc42", recs, svc->n_members);
        wg_pool_commit(p);
        wg_reclaim_poll(rc);
        uint64_t d = wg_now_ns() - t0;
        sum += d;
        worst = d > worst ? d : worst;
    }
    printf("  one service changed: stage + commit + reclaim %.1f us on average, %.1f us at most\n",
           (double)sum / 1e3 / CHANGES, (double)worst / 1e3);
}

/* Arguments: the policies to measure (default: round_robin hash). */
int main(int argc, char **argv)
{
    static const char *const dflt[] = { "round_robin", "hash" };
    const char *const *policies = argc > 1 ? (const char *const *)argv + 1 : dflt;
    int n = argc > 1 ? argc - 1 : 2;
    for (int k = 0; k < n; k++) {
        struct wg_reclaim *rc = wg_reclaim_new();
        struct wg_config_ref *ref = NULL;
        struct wg_pool *p = rc ? pool_for(policies[k], rc, &ref) : NULL;
        printf("%s\n", policies[k]);
        if (!p || publish_all(p) < 0) {
            fprintf(stderr, "cannot set up %s\n", policies[k]);
            return 1;
        }
        change_one(p, rc);
        wg_pool_free(p);
        wg_reclaim_free(rc);
        wg_config_ref_put(ref);
    }
    return 0;
}
