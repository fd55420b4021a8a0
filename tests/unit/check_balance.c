/* check_balance — policy behaviour over many picks. */
#include "unit_util.h"
#include "balance_fixture.h"

#include "waygate/balance.h"
#include "waygate/pool.h"
#include "waygate/reclaim.h"



static const struct wg_pool_service *publish_weights(struct fixture *f, const unsigned *w, int n)
{
    struct wg_record_set set = { 0 };
    for (int k = 0; k < n; k++) {
        char id[16];
        snprintf(id, sizeof id, "i%d", k);
        unit_record(&set, "s", id, "127.0.0.1", 9000 + k, w[k]);
    }
    return publish_set(f, &set);
}

static int pick_index(struct fixture *f, const struct wg_pool_service *svc)
{
    struct wg_pick p;
    wg_pick_init(&p, svc, &f->rng, &f->cache);
    const struct wg_member *m = wg_pick_next(&p);
    return m ? (int)(m - svc->members) : -1;
}

static const char *RR = "services:\n  s: { balance: round_robin, health_check: { type: none } }\n";

START_TEST(rr_shares_follow_weights)
{
    struct fixture f;
    setup(&f, RR);
    const unsigned w[4] = { 100, 200, 300, 400 };
    const struct wg_pool_service *svc = publish_weights(&f, w, 4);
    int counts[4] = { 0 };
    const int picks = 100000;
    for (int k = 0; k < picks; k++)
        counts[pick_index(&f, svc)]++;
    for (int k = 0; k < 4; k++) {
        double share = (double)counts[k] / picks, want = w[k] / 1000.0;
        ck_assert_msg(share > want - 0.02 && share < want + 0.02, "instance %d share %.3f", k, share);
    }
    teardown(&f);
}
END_TEST

START_TEST(rr_is_smooth)
{
    struct fixture f;
    setup(&f, RR);
    const unsigned w[3] = { 5, 1, 1 };
    const struct wg_pool_service *svc = publish_weights(&f, w, 3);
    /* 5:1:1 interleaved (a a b a a c a, say): a never more than 3 in a row
     * (5 a's between 2 others, cyclically), b and c once in every 7. */
    int run = 0, counts[3] = { 0 };
    for (int k = 0; k < 70; k++) {
        int i = pick_index(&f, svc);
        run = i == 0 ? run + 1 : 0;
        ck_assert_int_le(run, 3);
        counts[i]++;
        if (k % 7 == 6)
            ck_assert(counts[1] == (k + 1) / 7 && counts[2] == (k + 1) / 7);
    }
    const unsigned eq[3] = { 1, 1, 1 };
    svc = publish_weights(&f, eq, 3);
    int last = -1;
    for (int k = 0; k < 300; k++) {
        int i = pick_index(&f, svc);
        ck_assert_int_ne(i, last);
        last = i;
    }
    teardown(&f);
}
END_TEST

START_TEST(rr_skips_unroutable)
{
    struct fixture f;
    setup(&f, "services:\n  s: { max_connections: 2, health_check: { type: none } }\n");
    const unsigned w[4] = { 100, 100, 100, 0 };
    const struct wg_pool_service *svc = publish_weights(&f, w, 4);
    wg_instance_set_health(svc->members[0].inst, WG_HEALTH_UNHEALTHY);
    atomic_store(&svc->members[1].inst->active, 2);        /* at max_connections */
    for (int k = 0; k < 1000; k++)
        ck_assert_int_eq(pick_index(&f, svc), 2);           /* weight 0 never */
    wg_instance_set_health(svc->members[2].inst, WG_HEALTH_EJECTED);
    ck_assert_int_eq(pick_index(&f, svc), -1);
    teardown(&f);
}
END_TEST

START_TEST(retries_never_repeat_an_instance)
{
    struct fixture f;
    setup(&f, RR);
    const unsigned w[3] = { 100, 100, 100 };
    const struct wg_pool_service *svc = publish_weights(&f, w, 3);
    struct wg_pick p;
    wg_pick_init(&p, svc, &f.rng, &f.cache);
    const struct wg_member *a = wg_pick_next(&p), *b = wg_pick_next(&p), *c = wg_pick_next(&p);
    ck_assert(a && b && c && a != b && b != c && a != c);
    ck_assert_ptr_null(wg_pick_next(&p));
    teardown(&f);
}
END_TEST

START_TEST(panic_mode_routes_to_all)
{
    struct fixture f;
    setup(&f, "services:\n  s: { panic_threshold: 50, health_check: { type: none } }\n");
    const unsigned w[4] = { 100, 100, 100, 100 };
    const struct wg_pool_service *svc = publish_weights(&f, w, 4);
    for (int k = 0; k < 3; k++)
        wg_instance_set_health(svc->members[k].inst, WG_HEALTH_UNHEALTHY);
    int seen[4] = { 0 };
    for (int k = 0; k < 400; k++)
        seen[pick_index(&f, svc)]++;
    for (int k = 0; k < 4; k++)
        ck_assert_int_gt(seen[k], 50);
    ck_assert_uint_ge(atomic_load(&svc->state->panic_routed), 400);
    /* Above the threshold: only healthy ones. */
    wg_instance_set_health(svc->members[0].inst, WG_HEALTH_HEALTHY);
    for (int k = 0; k < 100; k++) {
        int i = pick_index(&f, svc);
        ck_assert(i == 0 || i == 3);
    }
    teardown(&f);
}
END_TEST

START_TEST(slow_start_ramps)
{
    struct fixture f;
    setup(&f, "services:\n  s: { slow_start: 10s, health_check: { type: none } }\n");
    const unsigned w[1] = { 100 };
    const struct wg_pool_service *svc = publish_weights(&f, w, 1);
    struct wg_pick p;
    wg_pick_init(&p, svc, &f.rng, NULL);
    uint64_t since = atomic_load(&svc->members[0].inst->healthy_since_ms);
    p.now_ms = since;
    ck_assert_uint_eq(wg_balance_weight(&p, &svc->members[0]), 10);
    p.now_ms = since + 5000;
    ck_assert_uint_eq(wg_balance_weight(&p, &svc->members[0]), 55);
    p.now_ms = since + 10000;
    ck_assert_uint_eq(wg_balance_weight(&p, &svc->members[0]), 100);
    teardown(&f);
}
END_TEST

START_TEST(new_version_mid_run_rebuilds_state)
{
    struct fixture f;
    setup(&f, RR);
    const unsigned w3[3] = { 100, 100, 100 };
    const struct wg_pool_service *v1 = publish_weights(&f, w3, 3);
    for (int k = 0; k < 1000; k++)
        pick_index(&f, v1);
    const unsigned w2[2] = { 100, 300 };        /* fewer members: old state would overflow */
    const struct wg_pool_service *v2 = publish_weights(&f, w2, 2);
    wg_balance_cache_sweep(&f.cache, wg_pool_current(f.pool));
    int counts[2] = { 0 };
    for (int k = 0; k < 4000; k++)
        counts[pick_index(&f, v2)]++;
    ck_assert_int_eq(counts[0], 1000);
    ck_assert_int_eq(counts[1], 3000);
    teardown(&f);
}
END_TEST

START_TEST(rng_below_is_uniform)
{
    struct wg_rng r;
    wg_rng_seed(&r, 7);
    int counts[10] = { 0 };
    for (int k = 0; k < 100000; k++)
        counts[wg_rng_below(&r, 10)]++;
    for (int k = 0; k < 10; k++)
        ck_assert(counts[k] > 9500 && counts[k] < 10500);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("balance");
    TCase *tc = tcase_create("round_robin");
    tcase_add_test(tc, rr_shares_follow_weights);
    tcase_add_test(tc, rr_is_smooth);
    tcase_add_test(tc, rr_skips_unroutable);
    tcase_add_test(tc, retries_never_repeat_an_instance);
    tcase_add_test(tc, panic_mode_routes_to_all);
    tcase_add_test(tc, slow_start_ramps);
    tcase_add_test(tc, new_version_mid_run_rebuilds_state);
    tcase_add_test(tc, rng_below_is_uniform);
    suite_add_tcase(s, tc);
    return unit_run(s);
}
