/* check_balance_sched — the O(log n) pick structures (balance_sched.h)
 * through the real pick path: smoothness, weights, health changes between
 * picks, stale loads, the skip bound, and a 10,000-instance pool. */
#include "unit_util.h"
#include "balance_fixture.h"

#include "waygate/balance.h"
#include "waygate/pool.h"
#include "waygate/reclaim.h"

/* A passing ck_assert writes to Check's pipe: in loops, test first. */
#define REQUIRE(c) \
    do { \
        if (!(c)) \
            ck_abort_msg("%s:%d: %s", __FILE__, __LINE__, #c); \
    } while (0)

static const char *const POLICIES[] = { "round_robin", "least_conn", "random", "p2c", "hash" };

static void setup_policy(struct fixture *f, const char *policy, const char *extra)
{
    char yaml[256];
    snprintf(yaml, sizeof yaml, "services:\n  s: { balance: %s, health_check: { type: none }%s }\n",
             policy, extra);
    setup(f, yaml);
}

static const struct wg_pool_service *publish(struct fixture *f, const unsigned *w, int n)
{
    struct wg_record_set set = { 0 };
    for (int k = 0; k < n; k++) {
        char id[16], ip[32];
        snprintf(id, sizeof id, "i%05d", k);
        snprintf(ip, sizeof ip, "10.%d.%d.%d", (k >> 16) & 255, (k >> 8) & 255, k & 255);
        unit_record(&set, "s", id, ip, 8080, w[k]);
    }
    return publish_set(f, &set);
}

static int pick(struct fixture *f, const struct wg_pool_service *svc, uint64_t key)
{
    struct wg_pick p;
    wg_pick_init(&p, svc, &f->rng, &f->cache);
    p.has_hash = true;
    p.hash = wg_balance_hash_bytes(&key, sizeof key);
    const struct wg_member *m = wg_pick_next(&p);
    return m ? (int)(m - svc->members) : -1;
}

/* Random weight sets: over whole cycles each member gets exactly its weight
 * (to one pick), and a member whose share is under half is never picked
 * twice in a row. */
START_TEST(round_robin_is_smooth_for_any_weights)
{
    struct fixture f;
    setup_policy(&f, "round_robin", "");
    struct wg_rng r;
    wg_rng_seed(&r, 3);
    for (int set = 0; set < 200; set++) {
        unsigned w[12], total = 0;
        int n = 2 + (int)wg_rng_below(&r, 11), counts[12] = { 0 };
        for (int k = 0; k < n; k++)
            total += w[k] = 1 + (unsigned)wg_rng_below(&r, set % 2 ? 20 : 1000);
        const struct wg_pool_service *svc = publish(&f, w, n);
        wg_balance_cache_sweep(&f.cache, wg_pool_current(f.pool));
        int last = -1;
        for (unsigned k = 0; k < 4 * total; k++) {
            int i = pick(&f, svc, k);
            REQUIRE(i >= 0);
            if (i == last && 2 * w[i] < total)
                ck_abort_msg("set %d: member %d (weight %u of %u) picked twice in a row", set, i,
                             w[i], total);
            last = i;
            counts[i]++;
        }
        for (int k = 0; k < n; k++)
            if (counts[k] < 4 * (int)w[k] - 1 || counts[k] > 4 * (int)w[k] + 1)
                ck_abort_msg("set %d: member %d got %d picks, want %u", set, k, counts[k], 4 * w[k]);
    }
    teardown(&f);
}
END_TEST

/* Health flips between picks (down, ejected, admin-drained, back up, into
 * panic and out), members at max_connections: no pick ever lands on an
 * instance that cannot take it, for every policy, over 10,000 instances;
 * and over the picks made while 1 % are down, each weight class gets its
 * share of the routable weight within 1 %. */
START_TEST(no_pick_lands_on_an_unroutable_instance)
{
    struct fixture f;
    setup_policy(&f, POLICIES[_i], ", max_connections: 3, panic_threshold: 40");
    enum { N = 10000 };
    static unsigned w[N];
    for (int k = 0; k < N; k++)
        w[k] = 100u * (1 + (unsigned)k % 5);
    const struct wg_pool_service *svc = publish(&f, w, N);
    struct wg_rng r;
    wg_rng_seed(&r, 11);
    for (int round = 0; round < 200; round++) {
        /* Change the health of ten random instances, then pick. */
        for (int c = 0; c < 10; c++) {
            struct wg_instance *i = svc->members[wg_rng_below(&r, N)].inst;
            switch (wg_rng_below(&r, 5)) {
            case 0: wg_instance_set_health(i, WG_HEALTH_UNHEALTHY); break;
            case 1: wg_instance_set_health(i, WG_HEALTH_EJECTED); break;
            case 2: wg_instance_admin_drain(i, true); break;
            case 3: wg_instance_admin_drain(i, false); break;
            default: wg_instance_set_health(i, WG_HEALTH_HEALTHY); break;
            }
            atomic_store(&i->active, (unsigned)wg_rng_below(&r, 4));
        }
        for (int k = 0; k < 200; k++) {
            int i = pick(&f, svc, (uint64_t)round * 1000 + (uint64_t)k);
            REQUIRE(i >= 0);
            struct wg_instance *inst = svc->members[i].inst;
            REQUIRE(wg_instance_health(inst) == WG_HEALTH_HEALTHY);
            REQUIRE(atomic_load(&inst->active) < 3);
        }
    }
    /* Panic: 70 % down. Picks go to any non-draining instance, never to a
     * draining one; back above the threshold, only healthy ones again. */
    for (int k = 0; k < N; k++) {
        atomic_store(&svc->members[k].inst->active, 0);
        wg_instance_admin_drain(svc->members[k].inst, false);
        wg_instance_set_health(svc->members[k].inst,
                               k % 10 < 7 ? WG_HEALTH_UNHEALTHY : WG_HEALTH_HEALTHY);
    }
    for (int k = 0; k < N; k += 10)
        wg_instance_admin_drain(svc->members[k].inst, true);
    bool unhealthy_seen = false;
    for (int k = 0; k < 20000; k++) {
        int i = pick(&f, svc, (uint64_t)k);
        REQUIRE(i >= 0 && wg_instance_health(svc->members[i].inst) != WG_HEALTH_DRAINING);
        unhealthy_seen |= wg_instance_health(svc->members[i].inst) == WG_HEALTH_UNHEALTHY;
    }
    ck_assert(unhealthy_seen);
    for (int k = 0; k < N; k++)
        if (k % 10 != 0)
            wg_instance_set_health(svc->members[k].inst, WG_HEALTH_HEALTHY);
    for (int k = 0; k < N; k += 100)
        wg_instance_set_health(svc->members[k + 1].inst, WG_HEALTH_UNHEALTHY);
    /* 10 % drained, 1 % unhealthy: 10^6 picks by weight class. */
    uint64_t got[5] = { 0 }, want[5] = { 0 }, total = 0;
    for (int k = 0; k < N; k++)
        if (wg_instance_health(svc->members[k].inst) == WG_HEALTH_HEALTHY) {
            want[k % 5] += w[k];
            total += w[k];
        }
    const int picks = 1000000;
    for (int k = 0; k < picks; k++) {
        int i = pick(&f, svc, (uint64_t)k + 7777777);
        REQUIRE(i >= 0 && wg_instance_health(svc->members[i].inst) == WG_HEALTH_HEALTHY);
        got[i % 5]++;
    }
    for (int c = 0; c < 5; c++) {
        double share = (double)got[c] / picks, expect = (double)want[c] / (double)total;
        ck_assert_msg(share > expect * 0.99 && share < expect * 1.01, "%s: class %d share %.4f, want %.4f",
                      POLICIES[_i], c, share, expect);
    }
    teardown(&f);
}
END_TEST

/* A member added to the routable set (healthy again) gets its share at
 * once; one removed (down) gets nothing from the next pick on. */
START_TEST(members_join_and_leave_between_picks)
{
    struct fixture f;
    setup_policy(&f, POLICIES[_i], "");
    const unsigned w[4] = { 100, 100, 100, 100 };
    const struct wg_pool_service *svc = publish(&f, w, 4);
    wg_instance_set_health(svc->members[3].inst, WG_HEALTH_UNHEALTHY);
    for (int k = 0; k < 300; k++)
        REQUIRE(pick(&f, svc, (uint64_t)k) != 3);
    wg_instance_set_health(svc->members[3].inst, WG_HEALTH_HEALTHY);
    wg_instance_set_health(svc->members[0].inst, WG_HEALTH_EJECTED);
    int counts[4] = { 0 };
    for (int k = 0; k < 3000; k++)
        counts[pick(&f, svc, (uint64_t)k + 1000)]++;
    ck_assert_int_eq(counts[0], 0);
    for (int k = 1; k < 4; k++)
        ck_assert_msg(counts[k] > 850 && counts[k] < 1150, "member %d: %d", k, counts[k]);
    teardown(&f);
}
END_TEST

/* More than WG_SCHED_SKIPS of the best candidates full: the pick still
 * finds the free ones (the exact fallback), and only them. */
START_TEST(many_full_members_fall_back_exactly)
{
    struct fixture f;
    setup_policy(&f, POLICIES[_i], ", max_connections: 1");
    enum { N = 200 };
    unsigned w[N];
    for (int k = 0; k < N; k++)
        w[k] = 100;
    const struct wg_pool_service *svc = publish(&f, w, N);
    for (int k = 0; k < N; k++)
        if (k % 50 != 7)
            atomic_store(&svc->members[k].inst->active, 1);
    int counts[N] = { 0 };
    for (int k = 0; k < 4000; k++) {
        int i = pick(&f, svc, (uint64_t)k);
        REQUIRE(i >= 0 && i % 50 == 7);
        counts[i]++;
    }
    for (int k = 7; k < N; k += 50)
        ck_assert_int_gt(counts[k], 600);
    teardown(&f);
}
END_TEST

/* least_conn holds the loads it read: a member that became less busy is
 * seen within n/2 picks (two re-read per pick), one that became busier as
 * soon as it comes up. */
START_TEST(least_conn_sees_load_changes)
{
    struct fixture f;
    setup_policy(&f, "least_conn", "");
    enum { N = 100 };
    unsigned w[N];
    for (int k = 0; k < N; k++)
        w[k] = 100;
    const struct wg_pool_service *svc = publish(&f, w, N);
    for (int k = 0; k < N; k++)
        atomic_store(&svc->members[k].inst->active, 5);
    for (int k = 0; k < 2 * N; k++)
        pick(&f, svc, 0);
    atomic_store(&svc->members[42].inst->active, 0);
    int seen_at = -1;
    for (int k = 0; k < N / 2 + 1 && seen_at < 0; k++)
        if (pick(&f, svc, 0) == 42)
            seen_at = k;
    ck_assert_int_ge(seen_at, 0);
    for (int k = 0; k < 20; k++)
        ck_assert_int_eq(pick(&f, svc, 0), 42);
    atomic_store(&svc->members[42].inst->active, 9);
    for (int k = 0; k < 200; k++)
        REQUIRE(pick(&f, svc, 0) != 42);
    teardown(&f);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("balance_sched");
    TCase *t = tcase_create("sched");
    tcase_set_timeout(t, 120);
    tcase_add_test(t, round_robin_is_smooth_for_any_weights);
    tcase_add_loop_test(t, no_pick_lands_on_an_unroutable_instance, 0, 5);
    tcase_add_loop_test(t, members_join_and_leave_between_picks, 0, 5);
    tcase_add_loop_test(t, many_full_members_fall_back_exactly, 0, 5);
    tcase_add_test(t, least_conn_sees_load_changes);
    suite_add_tcase(s, t);
    return unit_run(s);
}
