/* check_balance_policies — least_conn, random, p2c and hash over many picks. */
#include "unit_util.h"
#include "balance_fixture.h"

#include "waygate/balance.h"
#include "waygate/pool.h"
#include "waygate/reclaim.h"

/* A passing ck_assert writes to Check's pipe: in loops of 100,000 picks,
 * test the condition and call Check only when it fails. */
#define REQUIRE(c) \
    do { \
        if (!(c)) \
            ck_abort_msg("%s:%d: %s", __FILE__, __LINE__, #c); \
    } while (0)

#define PICKS 100000
#define KEYS 100000
#define NOW_MS 1000000000ULL        /* a fixed clock for slow start */


static void setup_policy(struct fixture *f, const char *policy)
{
    char yaml[256];
    snprintf(yaml, sizeof yaml, "services:\n  s: { balance: %s, health_check: { type: none } }\n",
             policy);
    setup(f, yaml);
}


/* Instances "i000".."i<n-1>" (member index == number), ports 9000+number;
 * `ids` (optional) names the numbers to publish. */
static const struct wg_pool_service *publish_ids(struct fixture *f, const unsigned *w,
                                                 const int *ids, int n)
{
    struct wg_record_set set = { 0 };
    for (int k = 0; k < n; k++) {
        char id[16];
        int num = ids ? ids[k] : k;
        snprintf(id, sizeof id, "i%03d", num % 1000);
        unit_record(&set, "s", id, "127.0.0.1", 9000 + num, w[k]);
    }
    return publish_set(f, &set);
}

static const struct wg_pool_service *publish_weights(struct fixture *f, const unsigned *w, int n)
{
    return publish_ids(f, w, NULL, n);
}

static int member_number(const struct wg_member *m) { return m ? atoi(m->inst->id + 1) : -1; }

/* One pick, with a key hash when `keyed`. Returns the member index or -1. */
static int pick_key(struct fixture *f, const struct wg_pool_service *svc, bool keyed,
                    uint64_t hash)
{
    struct wg_pick p;
    wg_pick_init(&p, svc, &f->rng, &f->cache);
    p.has_hash = keyed;
    p.hash = hash;
    const struct wg_member *m = wg_pick_next(&p);
    if (m)
        REQUIRE(m >= svc->members && m < svc->members + svc->n_members);
    return m ? (int)(m - svc->members) : -1;
}

/* A pick that must succeed, to index counters with. */
static int must(int index)
{
    REQUIRE(index >= 0);
    return index;
}

static int pick_index(struct fixture *f, const struct wg_pool_service *svc)
{
    return pick_key(f, svc, false, 0);
}

/* The hash of key number k: keys are hashed by the caller, as proxies do. */
static uint64_t key_hash(uint32_t k)
{
    return wg_balance_hash_bytes(&k, sizeof k);
}

static void assert_shares(const int *counts, const unsigned *w, int n, int picks, double tol)
{
    uint64_t total = 0;
    for (int k = 0; k < n; k++)
        total += w[k];
    for (int k = 0; k < n; k++) {
        double share = (double)counts[k] / picks, want = (double)w[k] / (double)total;
        ck_assert_msg(share > want - tol && share < want + tol,
                      "instance %d share %.4f, want %.4f", k, share, want);
    }
}

/* Picks with each pick released at once: `active` stays 0 everywhere. */
static void check_idle_shares(const char *policy)
{
    struct fixture f;
    setup_policy(&f, policy);
    const unsigned w[4] = { 100, 200, 300, 400 };
    const struct wg_pool_service *svc = publish_weights(&f, w, 4);
    int counts[4] = { 0 };
    for (int k = 0; k < PICKS; k++) {
        int i = pick_index(&f, svc);
        REQUIRE(i >= 0);
        atomic_fetch_add(&svc->members[i].inst->active, 1);
        counts[i]++;
        atomic_fetch_sub(&svc->members[i].inst->active, 1);
    }
    assert_shares(counts, w, 4, PICKS, 0.02);
    teardown(&f);
}

/* Steady load: 100 connections open, each closed 100 picks after it opened. */
static void check_loaded_shares(const char *policy)
{
    struct fixture f;
    setup_policy(&f, policy);
    const unsigned w[4] = { 100, 200, 300, 400 };
    const struct wg_pool_service *svc = publish_weights(&f, w, 4);
    int counts[4] = { 0 }, open[100];
    for (int k = 0; k < PICKS + 100; k++) {
        if (k >= 100)
            atomic_fetch_sub(&svc->members[open[k % 100]].inst->active, 1);
        int i = pick_index(&f, svc);
        REQUIRE(i >= 0);
        atomic_fetch_add(&svc->members[i].inst->active, 1);
        open[k % 100] = i;
        if (k >= 100)
            counts[i]++;
    }
    assert_shares(counts, w, 4, PICKS, 0.02);
    teardown(&f);
}

/* ---- every policy ---- */

static const char *const POLICIES[] = { "least_conn", "random", "p2c", "hash" };

START_TEST(ops_table_maps_every_policy)
{
    ck_assert_str_eq(wg_balance_ops_for(WG_BALANCE_ROUND_ROBIN)->name, "round_robin");
    ck_assert_str_eq(wg_balance_ops_for(WG_BALANCE_LEAST_CONN)->name, "least_conn");
    ck_assert_str_eq(wg_balance_ops_for(WG_BALANCE_RANDOM)->name, "random");
    ck_assert_str_eq(wg_balance_ops_for(WG_BALANCE_P2C)->name, "p2c");
    ck_assert_str_eq(wg_balance_ops_for(WG_BALANCE_HASH)->name, "hash");
    struct fixture f;
    setup_policy(&f, POLICIES[_i]);
    const unsigned w[1] = { 1 };
    const struct wg_pool_service *svc = publish_weights(&f, w, 1);
    ck_assert_str_eq(svc->balance->name, POLICIES[_i]);
    teardown(&f);
}
END_TEST

START_TEST(skips_unroutable)
{
    struct fixture f;
    char yaml[256];
    snprintf(yaml, sizeof yaml,
             "services:\n  s: { balance: %s, max_connections: 2, health_check: { type: none } }\n",
             POLICIES[_i]);
    setup(&f, yaml);
    const unsigned w[5] = { 100, 100, 100, 0, 100 };
    const struct wg_pool_service *svc = publish_weights(&f, w, 5);
    wg_instance_set_health(svc->members[0].inst, WG_HEALTH_UNHEALTHY);
    atomic_store(&svc->members[1].inst->active, 2);        /* at max_connections */
    wg_instance_set_health(svc->members[4].inst, WG_HEALTH_EJECTED);
    for (uint32_t k = 0; k < 2000; k++)                    /* weight 0 (3) never */
        REQUIRE(pick_key(&f, svc, k % 2, key_hash(k)) == 2);
    wg_instance_set_health(svc->members[2].inst, WG_HEALTH_DRAINING);
    ck_assert_int_eq(pick_key(&f, svc, false, 0), -1);
    ck_assert_int_eq(pick_key(&f, svc, true, key_hash(1)), -1);
    teardown(&f);
}
END_TEST

START_TEST(retries_never_repeat_an_instance)
{
    struct fixture f;
    setup_policy(&f, POLICIES[_i]);
    const unsigned w[3] = { 100, 200, 300 };
    const struct wg_pool_service *svc = publish_weights(&f, w, 3);
    for (uint32_t key = 0; key < 200; key++) {
        struct wg_pick p;
        wg_pick_init(&p, svc, &f.rng, &f.cache);
        p.has_hash = key % 2;
        p.hash = key_hash(key);
        const struct wg_member *a = wg_pick_next(&p), *b = wg_pick_next(&p),
                               *c = wg_pick_next(&p);
        REQUIRE(a && b && c && a != b && b != c && a != c);
        REQUIRE(wg_pick_next(&p) == NULL);
    }
    teardown(&f);
}
END_TEST

START_TEST(panic_mode_routes_to_unhealthy)
{
    struct fixture f;
    char yaml[256];
    snprintf(yaml, sizeof yaml,
             "services:\n  s: { balance: %s, panic_threshold: 50, health_check: { type: none } }\n",
             POLICIES[_i]);
    setup(&f, yaml);
    const unsigned w[4] = { 100, 100, 100, 100 };
    const struct wg_pool_service *svc = publish_weights(&f, w, 4);
    for (int k = 0; k < 3; k++)
        wg_instance_set_health(svc->members[k].inst, WG_HEALTH_UNHEALTHY);
    int seen[4] = { 0 };
    for (uint32_t k = 0; k < 4000; k++)
        seen[must(pick_key(&f, svc, k % 2, key_hash(k)))]++;
    for (int k = 0; k < 4; k++)
        ck_assert_int_gt(seen[k], 500);
    teardown(&f);
}
END_TEST

/* Picks on one service version: shares of keyless and keyed picks (not
 * interleaved: the round robin of ties would alias with the alternation). */
static void check_version_shares(struct fixture *f, const struct wg_pool_service *svc,
                                 const unsigned *w, int n)
{
    int counts[8] = { 0 }, keyed[8] = { 0 };
    for (uint32_t k = 0; k < 60000; k++)
        counts[must(pick_key(f, svc, false, 0))]++;
    for (uint32_t k = 0; k < 60000; k++)
        keyed[must(pick_key(f, svc, true, key_hash(k)))]++;
    assert_shares(counts, w, n, 60000, 0.02);
    assert_shares(keyed, w, n, 60000, 0.02);
}

/* New service versions in the middle of a run, growing then shrinking: the
 * worker state is rebuilt for each (a stale, smaller state would be indexed
 * out of bounds, which the sanitizer run catches) and the new weights hold
 * at once, with or without the worker sweeping its cache first. */
START_TEST(new_version_mid_run)
{
    struct fixture f;
    setup_policy(&f, POLICIES[_i]);
    const unsigned w1[2] = { 100, 300 };
    const struct wg_pool_service *v1 = publish_weights(&f, w1, 2);
    check_version_shares(&f, v1, w1, 2);
    const unsigned w2[6] = { 100, 100, 200, 200, 300, 300 };
    const struct wg_pool_service *v2 = publish_weights(&f, w2, 6);
    ck_assert_ptr_ne(v1, v2);
    check_version_shares(&f, v2, w2, 6);
    const int ids[2] = { 4, 5 };                /* members 4, 5 become 0, 1 */
    const struct wg_pool_service *v3 = publish_ids(&f, w1, ids, 2);
    wg_balance_cache_sweep(&f.cache, wg_pool_current(f.pool));
    ck_assert_uint_eq(f.cache.used, 0);            /* v1's and v2's states released */
    check_version_shares(&f, v3, w1, 2);
    teardown(&f);
}
END_TEST

/* ---- least_conn ---- */

START_TEST(least_conn_idle_shares_follow_weights) { check_idle_shares("least_conn"); }
END_TEST

START_TEST(least_conn_loaded_shares_follow_weights) { check_loaded_shares("least_conn"); }
END_TEST

START_TEST(least_conn_prefers_least_loaded)
{
    struct fixture f;
    setup_policy(&f, "least_conn");
    const unsigned w[4] = { 100, 100, 100, 100 };
    const struct wg_pool_service *svc = publish_weights(&f, w, 4);
    const unsigned active[4] = { 5, 0, 3, 2 };
    for (int k = 0; k < 4; k++)
        atomic_store(&svc->members[k].inst->active, active[k]);
    for (int k = 0; k < 100; k++)
        REQUIRE(pick_index(&f, svc) == 1);
    /* Holding every pick: the counts stay level (max - min <= 1). */
    for (int k = 0; k < 4; k++)
        atomic_store(&svc->members[k].inst->active, 0);
    for (int k = 0; k < 400; k++) {
        atomic_fetch_add(&svc->members[must(pick_index(&f, svc))].inst->active, 1);
        unsigned lo = ~0u, hi = 0;
        for (int j = 0; j < 4; j++) {
            unsigned a = atomic_load(&svc->members[j].inst->active);
            lo = a < lo ? a : lo;
            hi = a > hi ? a : hi;
        }
        REQUIRE(hi - lo <= 1);
    }
    teardown(&f);
}
END_TEST

START_TEST(least_conn_compares_active_per_weight)
{
    struct fixture f;
    setup_policy(&f, "least_conn");
    const unsigned w[2] = { 100, 300 };
    const struct wg_pool_service *svc = publish_weights(&f, w, 2);
    atomic_store(&svc->members[0].inst->active, 2);        /* 2/100 > 5/300 */
    atomic_store(&svc->members[1].inst->active, 5);
    ck_assert_int_eq(pick_index(&f, svc), 1);
    atomic_store(&svc->members[1].inst->active, 7);        /* 2/100 < 7/300 */
    ck_assert_int_eq(pick_index(&f, svc), 0);
    atomic_store(&svc->members[1].inst->active, 6);        /* equal: WRR between both */
    int counts[2] = { 0 };
    for (int k = 0; k < 400; k++)
        counts[must(pick_index(&f, svc))]++;
    ck_assert_int_le(abs(counts[0] - 100), 1);     /* to a pick: where each starts */
    ck_assert_int_eq(counts[0] + counts[1], 400);
    teardown(&f);
}
END_TEST

START_TEST(least_conn_ties_alternate)
{
    struct fixture f;
    setup_policy(&f, "least_conn");
    const unsigned w[3] = { 1, 1, 1 };
    const struct wg_pool_service *svc = publish_weights(&f, w, 3);
    int last = -1;
    for (int k = 0; k < 300; k++) {
        int i = pick_index(&f, svc);
        REQUIRE(i != last);
        last = i;
    }
    teardown(&f);
}
END_TEST

/* One picks with the fixed clock; instance 0 became healthy at NOW_MS (10%
 * of its weight), instance 1 long ago (full weight). */
static int pick_at_fixed_clock(struct fixture *f, const struct wg_pool_service *svc)
{
    struct wg_pick p;
    wg_pick_init(&p, svc, &f->rng, &f->cache);
    p.now_ms = NOW_MS;
    const struct wg_member *m = wg_pick_next(&p);
    return m ? (int)(m - svc->members) : -1;
}

static const struct wg_pool_service *publish_one_warming(struct fixture *f, const char *policy)
{
    char yaml[256];
    snprintf(yaml, sizeof yaml,
             "services:\n  s: { balance: %s, slow_start: 10s, health_check: { type: none } }\n",
             policy);
    setup(f, yaml);
    const unsigned w[2] = { 100, 100 };
    const struct wg_pool_service *svc = publish_weights(f, w, 2);
    atomic_store(&svc->members[0].inst->healthy_since_ms, NOW_MS);
    atomic_store(&svc->members[1].inst->healthy_since_ms, NOW_MS - 60000);
    return svc;
}

START_TEST(least_conn_slow_start_uses_effective_weight)
{
    struct fixture f;
    const struct wg_pool_service *svc = publish_one_warming(&f, "least_conn");
    /* 1 active on 10 effective weight is busier than 5 on 100. */
    atomic_store(&svc->members[0].inst->active, 1);
    atomic_store(&svc->members[1].inst->active, 5);
    ck_assert_int_eq(pick_at_fixed_clock(&f, svc), 1);
    /* Idle: the warming instance gets 10 / 110 of the picks. */
    atomic_store(&svc->members[0].inst->active, 0);
    atomic_store(&svc->members[1].inst->active, 0);
    int counts[2] = { 0 };
    for (int k = 0; k < PICKS; k++)
        counts[must(pick_at_fixed_clock(&f, svc))]++;
    const unsigned eff[2] = { 10, 100 };
    assert_shares(counts, eff, 2, PICKS, 0.02);
    /* Warm: the same load now goes to the less busy per weight. */
    atomic_store(&svc->members[0].inst->healthy_since_ms, NOW_MS - 10000);
    atomic_store(&svc->members[0].inst->active, 1);
    atomic_store(&svc->members[1].inst->active, 5);
    ck_assert_int_eq(pick_at_fixed_clock(&f, svc), 0);
    teardown(&f);
}
END_TEST

/* ---- random ---- */

START_TEST(random_shares_follow_weights) { check_idle_shares("random"); }
END_TEST

START_TEST(random_slow_start_shares)
{
    struct fixture f;
    const struct wg_pool_service *svc = publish_one_warming(&f, "random");
    int counts[2] = { 0 };
    for (int k = 0; k < PICKS; k++)
        counts[must(pick_at_fixed_clock(&f, svc))]++;
    const unsigned eff[2] = { 10, 100 };
    assert_shares(counts, eff, 2, PICKS, 0.02);
    teardown(&f);
}
END_TEST

/* Most of the weight unroutable: the exact fallback keeps proportions. */
START_TEST(random_mostly_unroutable_keeps_weights)
{
    struct fixture f;
    setup_policy(&f, "random");
    unsigned w[20];
    for (int k = 0; k < 20; k++)
        w[k] = 1000;
    w[18] = 100;
    w[19] = 300;
    const struct wg_pool_service *svc = publish_weights(&f, w, 20);
    for (int k = 0; k < 18; k++)
        wg_instance_set_health(svc->members[k].inst, WG_HEALTH_UNHEALTHY);
    int counts[20] = { 0 };
    for (int k = 0; k < PICKS; k++)
        counts[must(pick_index(&f, svc))]++;
    const unsigned live[2] = { 100, 300 };
    assert_shares(counts + 18, live, 2, PICKS, 0.02);
    teardown(&f);
}
END_TEST

/* ---- p2c ---- */

START_TEST(p2c_idle_shares_follow_weights) { check_idle_shares("p2c"); }
END_TEST

START_TEST(p2c_loaded_shares_follow_weights) { check_loaded_shares("p2c"); }
END_TEST

/* Instance k has k active: of two distinct draws the lighter wins, so k gets
 * 2 (9 - k) / 90 of the picks and the busiest none at all. */
START_TEST(p2c_prefers_less_loaded)
{
    struct fixture f;
    setup_policy(&f, "p2c");
    unsigned w[10];
    for (int k = 0; k < 10; k++)
        w[k] = 100;
    const struct wg_pool_service *svc = publish_weights(&f, w, 10);
    for (int k = 0; k < 10; k++)
        atomic_store(&svc->members[k].inst->active, (unsigned)k);
    int counts[10] = { 0 };
    for (int k = 0; k < PICKS; k++)
        counts[must(pick_index(&f, svc))]++;
    ck_assert_int_eq(counts[9], 0);
    for (int k = 0; k < 10; k++) {
        double share = (double)counts[k] / PICKS, want = 2.0 * (9 - k) / 90;
        ck_assert_msg(share > want - 0.02 && share < want + 0.02, "%d: %.4f", k, share);
    }
    teardown(&f);
}
END_TEST

START_TEST(p2c_single_routable)
{
    struct fixture f;
    setup_policy(&f, "p2c");
    const unsigned w[3] = { 100, 100, 100 };
    const struct wg_pool_service *svc = publish_weights(&f, w, 3);
    wg_instance_set_health(svc->members[0].inst, WG_HEALTH_UNHEALTHY);
    wg_instance_set_health(svc->members[2].inst, WG_HEALTH_UNHEALTHY);
    atomic_store(&svc->members[1].inst->active, 1000);
    for (int k = 0; k < 100; k++)
        REQUIRE(pick_index(&f, svc) == 1);
    teardown(&f);
}
END_TEST

/* ---- hash ---- */

static const char *const HASH = "services:\n  s: { balance: hash, health_check: { type: none } }\n";

START_TEST(hash_is_sticky)
{
    struct fixture f, g;                        /* two workers, two caches */
    setup(&f, HASH);
    const unsigned w[10] = { 100, 100, 100, 100, 100, 100, 100, 100, 100, 100 };
    const struct wg_pool_service *svc = publish_weights(&f, w, 10);
    setup(&g, HASH);
    wg_rng_seed(&g.rng, 4242);
    const struct wg_pool_service *svc2 = publish_weights(&g, w, 10);
    for (uint32_t k = 0; k < 10000; k++) {
        int a = pick_key(&f, svc, true, key_hash(k));
        REQUIRE(pick_key(&f, svc, true, key_hash(k)) == a);
        REQUIRE(pick_key(&g, svc2, true, key_hash(k)) == a);   /* another proxy */
    }
    teardown(&g);
    teardown(&f);
}
END_TEST

/* Keys of an instance that is down, or already tried (a retry), go to the
 * next slot's member: the same one either way and every time, spread over
 * all the others; no other key moves. */
START_TEST(hash_next_candidate_is_deterministic)
{
    struct fixture f;
    setup(&f, HASH);
    const unsigned w[10] = { 100, 100, 100, 100, 100, 100, 100, 100, 100, 100 };
    const struct wg_pool_service *svc = publish_weights(&f, w, 10);
    static int home[KEYS], moved[KEYS];
    for (uint32_t k = 0; k < KEYS; k++)
        home[k] = must(pick_key(&f, svc, true, key_hash(k)));
    for (uint32_t k = 0; k < KEYS; k++) {       /* a retry after the first failed */
        struct wg_pick p;
        wg_pick_init(&p, svc, &f.rng, &f.cache);
        p.has_hash = true;
        p.hash = key_hash(k);
        const struct wg_member *first = wg_pick_next(&p), *retry = wg_pick_next(&p);
        REQUIRE(first && retry && first - svc->members == home[k]);
        moved[k] = home[k] == 3 ? (int)(retry - svc->members) : home[k];
    }
    wg_instance_set_health(svc->members[3].inst, WG_HEALTH_UNHEALTHY);
    int to[10] = { 0 }, on3 = 0;
    for (uint32_t k = 0; k < KEYS; k++) {
        int now = must(pick_key(&f, svc, true, key_hash(k)));
        REQUIRE(now == moved[k]);
        REQUIRE(now != 3);
        if (home[k] != 3)
            REQUIRE(now == home[k]);
        if (home[k] == 3) {
            to[now]++;
            on3++;
        }
    }
    for (int k = 0; k < 10; k++)                /* about on3 / 9 each */
        ck_assert_msg(k == 3 || (to[k] > on3 / 18 && to[k] < on3 / 4), "%d got %d of %d", k,
                      to[k], on3);
    teardown(&f);
}
END_TEST

/* Nearly everything down: past the bounded slot probe, the scan of the
 * members still finds the survivors, deterministically. */
START_TEST(hash_mostly_down_finds_survivors)
{
    struct fixture f;
    setup(&f, HASH);
    unsigned w[200];
    for (int k = 0; k < 200; k++)
        w[k] = 100;
    const struct wg_pool_service *svc = publish_weights(&f, w, 200);
    for (int k = 0; k < 200; k++)
        if (k != 17 && k != 150)
            wg_instance_set_health(svc->members[k].inst, WG_HEALTH_UNHEALTHY);
    int seen[200] = { 0 };
    for (uint32_t k = 0; k < 20000; k++) {
        int i = must(pick_key(&f, svc, true, key_hash(k)));
        REQUIRE(i == 17 || i == 150);
        REQUIRE(pick_key(&f, svc, true, key_hash(k)) == i);
        seen[i]++;
    }
    ck_assert_int_gt(seen[17], 2000);
    ck_assert_int_gt(seen[150], 2000);
    teardown(&f);
}
END_TEST

static void map_keys(struct fixture *f, const struct wg_pool_service *svc, int *where)
{
    for (uint32_t k = 0; k < KEYS; k++)
        where[k] = member_number(&svc->members[must(pick_key(f, svc, true, key_hash(k)))]);
}

START_TEST(hash_removal_moves_only_its_keys)
{
    struct fixture f;
    setup(&f, HASH);
    const unsigned w[10] = { 100, 100, 100, 100, 100, 100, 100, 100, 100, 100 };
    static int before[KEYS], after[KEYS];
    map_keys(&f, publish_weights(&f, w, 10), before);
    const int ids[9] = { 0, 1, 2, 4, 5, 6, 7, 8, 9 };
    map_keys(&f, publish_ids(&f, w, ids, 9), after);
    int others = 0, others_moved = 0;
    for (int k = 0; k < KEYS; k++) {
        REQUIRE(after[k] != 3);
        if (before[k] == 3)
            continue;
        others++;
        others_moved += after[k] != before[k];
    }
    double share = (double)others_moved / others;
    fprintf(stderr, "hash: removing 1 of 10 moved %.4f of the other keys\n", share);
    ck_assert_msg(share <= 0.05, "moved %.4f", share);
    teardown(&f);
}
END_TEST

START_TEST(hash_addition_moves_one_share)
{
    struct fixture f;
    setup(&f, HASH);
    const unsigned w[11] = { 100, 100, 100, 100, 100, 100, 100, 100, 100, 100, 100 };
    static int before[KEYS], after[KEYS];
    map_keys(&f, publish_weights(&f, w, 10), before);
    map_keys(&f, publish_weights(&f, w, 11), after);
    int moved = 0, to_new = 0;
    for (int k = 0; k < KEYS; k++) {
        moved += after[k] != before[k];
        to_new += after[k] == 10;
    }
    double share = (double)moved / KEYS;
    fprintf(stderr, "hash: adding an 11th moved %.4f of the keys (%.4f to it)\n", share,
            (double)to_new / KEYS);
    ck_assert_msg(share > 1.0 / 11 - 0.02 && share < 1.0 / 11 + 0.02, "moved %.4f", share);
    teardown(&f);
}
END_TEST

START_TEST(hash_honours_weights)
{
    struct fixture f;
    setup(&f, HASH);
    const unsigned w[3] = { 100, 200, 300 };
    const struct wg_pool_service *svc = publish_weights(&f, w, 3);
    int counts[3] = { 0 };
    for (int k = 0; k < KEYS; k++)
        counts[must(pick_key(&f, svc, true, wg_rng_next(&f.rng)))]++;
    assert_shares(counts, w, 3, KEYS, 0.02);
    teardown(&f);
}
END_TEST

/* Without a key: smooth weighted round robin (5:1:1: the light two once
 * in every 7 picks, the heavy one never more than 3 in a row). */
START_TEST(hash_without_key_round_robins)
{
    struct fixture f;
    setup(&f, HASH);
    const unsigned w[3] = { 5, 1, 1 };
    const struct wg_pool_service *svc = publish_weights(&f, w, 3);
    int run = 0, counts[3] = { 0 };
    for (int k = 0; k < 70; k++) {
        int i = must(pick_index(&f, svc));
        run = i == 0 ? run + 1 : 0;
        ck_assert_int_le(run, 3);
        counts[i]++;
        if (k % 7 == 6)
            ck_assert(counts[1] == (k + 1) / 7 && counts[2] == (k + 1) / 7);
    }
    teardown(&f);
}
END_TEST

START_TEST(hash_bytes_is_stable_and_mixes)
{
    /* Pinned: changing these values moves every sticky key on upgrade. */
    const unsigned char doc_ip[4] = { 192, 0, 2, 1 };
    const char *long_key = "session=0123456789abcdef0123456789abcdef";
    ck_assert_uint_eq(wg_balance_hash_bytes(NULL, 0), 0xa445107a0fe626c3ULL);
    ck_assert_uint_eq(wg_balance_hash_bytes("a", 1), 0xf2693a09f42a7b1cULL);
    ck_assert_uint_eq(wg_balance_hash_bytes("10.0.0.1", 8), 0xbc6a6ef97f50dc5eULL);
    ck_assert_uint_eq(wg_balance_hash_bytes(doc_ip, 4), 0x071fb4358612443aULL);
    ck_assert_uint_eq(wg_balance_hash_bytes(long_key, strlen(long_key)), 0x651c8fb1ee8f162cULL);
    ck_assert_uint_ne(wg_balance_hash_bytes("a", 1), wg_balance_hash_bytes("a\0", 2));
    /* Sequential IPv4 addresses spread evenly over 16 buckets. */
    int buckets[16] = { 0 };
    for (uint32_t ip = 0x0a000000; ip < 0x0a000000 + 160000; ip++) {
        unsigned char b[4] = { ip >> 24, ip >> 16, ip >> 8, ip };
        buckets[wg_balance_hash_bytes(b, 4) >> 60]++;
    }
    for (int k = 0; k < 16; k++)
        ck_assert_msg(buckets[k] > 9500 && buckets[k] < 10500, "bucket %d: %d", k, buckets[k]);
    /* One flipped input bit flips about half the output bits. */
    uint64_t flipped = 0, trials = 0;
    for (uint32_t len = 1; len <= 40; len++)
        for (uint32_t bit = 0; bit < len * 8; bit++, trials++) {
            unsigned char buf[40] = { 0 };
            uint64_t h0 = wg_balance_hash_bytes(buf, len);
            buf[bit / 8] ^= (unsigned char)(1u << (bit % 8));
            flipped += (uint64_t)__builtin_popcountll(h0 ^ wg_balance_hash_bytes(buf, len));
        }
    double mean = (double)flipped / (double)trials;
    ck_assert_msg(mean > 31 && mean < 33, "mean flipped bits %.2f", mean);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("balance_policies");
    TCase *all = tcase_create("every_policy");
    tcase_set_timeout(all, 60);
    tcase_add_loop_test(all, ops_table_maps_every_policy, 0, 4);
    tcase_add_loop_test(all, skips_unroutable, 0, 4);
    tcase_add_loop_test(all, retries_never_repeat_an_instance, 0, 4);
    tcase_add_loop_test(all, panic_mode_routes_to_unhealthy, 0, 4);
    tcase_add_loop_test(all, new_version_mid_run, 0, 4);
    suite_add_tcase(s, all);
    TCase *lc = tcase_create("least_conn");
    tcase_set_timeout(lc, 60);
    tcase_add_test(lc, least_conn_idle_shares_follow_weights);
    tcase_add_test(lc, least_conn_loaded_shares_follow_weights);
    tcase_add_test(lc, least_conn_prefers_least_loaded);
    tcase_add_test(lc, least_conn_compares_active_per_weight);
    tcase_add_test(lc, least_conn_ties_alternate);
    tcase_add_test(lc, least_conn_slow_start_uses_effective_weight);
    suite_add_tcase(s, lc);
    TCase *rnd = tcase_create("random_p2c");
    tcase_set_timeout(rnd, 60);
    tcase_add_test(rnd, random_shares_follow_weights);
    tcase_add_test(rnd, random_slow_start_shares);
    tcase_add_test(rnd, random_mostly_unroutable_keeps_weights);
    tcase_add_test(rnd, p2c_idle_shares_follow_weights);
    tcase_add_test(rnd, p2c_loaded_shares_follow_weights);
    tcase_add_test(rnd, p2c_prefers_less_loaded);
    tcase_add_test(rnd, p2c_single_routable);
    suite_add_tcase(s, rnd);
    TCase *h = tcase_create("hash");
    tcase_set_timeout(h, 60);
    tcase_add_test(h, hash_is_sticky);
    tcase_add_test(h, hash_next_candidate_is_deterministic);
    tcase_add_test(h, hash_mostly_down_finds_survivors);
    tcase_add_test(h, hash_removal_moves_only_its_keys);
    tcase_add_test(h, hash_addition_moves_one_share);
    tcase_add_test(h, hash_honours_weights);
    tcase_add_test(h, hash_without_key_round_robins);
    tcase_add_test(h, hash_bytes_is_stable_and_mixes);
    suite_add_tcase(s, h);
    return unit_run(s);
}
