/* check_balance_locality — the zone/priority plan (pure math) and picks
 * through locality groups on a real pool. */
#include "unit_util.h"
#include "balance_fixture.h"

#include "waygate/balance.h"
#include "waygate/pool.h"

#define PPM WG_LOCALITY_PPM

static void plan(const struct wg_locality_input *in, unsigned n, enum wg_locality_mode mode,
                 uint32_t *out, bool want_any)
{
    ck_assert_int_eq(wg_locality_plan(in, n, mode, 140, 3, out), want_any);
}

/* Within 0.01 % of the exact share (integer rounding). */
static void ck_share(uint32_t got, uint32_t want)
{
    int64_t d = (int64_t)got - (int64_t)want;
    ck_assert_msg(d >= -100 && d <= 100, "share %u, want %u", (unsigned)got, (unsigned)want);
}

START_TEST(prefer_stays_local_while_overprovisioned)
{
    struct wg_locality_input in[2] = { { 0, true, 4, 4 }, { 0, false, 4, 4 } };
    uint32_t out[2];
    plan(in, 2, WG_LOCALITY_PREFER, out, true);
    ck_share(out[0], PPM);
    ck_share(out[1], 0);
    in[0].healthy = 3;                  /* 3/4 x 1.4 = 105 % */
    plan(in, 2, WG_LOCALITY_PREFER, out, true);
    ck_share(out[0], PPM);
    in[0].healthy = 2;                  /* 70 % stays, 30 % spills */
    plan(in, 2, WG_LOCALITY_PREFER, out, true);
    ck_share(out[0], 700000);
    ck_share(out[1], 300000);
    in[0].healthy = 1;
    plan(in, 2, WG_LOCALITY_PREFER, out, true);
    ck_share(out[0], 350000);
    ck_share(out[1], 650000);
    in[0].healthy = 0;
    plan(in, 2, WG_LOCALITY_PREFER, out, true);
    ck_share(out[0], 0);
    ck_share(out[1], PPM);
}
END_TEST

START_TEST(spill_follows_remote_healthy_counts)
{
    /* local 1/4 healthy keeps 35 %; 65 % goes 3:1 to zones b and c. */
    struct wg_locality_input in[3] = { { 0, true, 4, 1 }, { 0, false, 4, 3 }, { 0, false, 4, 1 } };
    uint32_t out[3];
    plan(in, 3, WG_LOCALITY_PREFER, out, true);
    ck_share(out[0], 350000);
    ck_share(out[1], 487500);
    ck_share(out[2], 162500);
    /* No healthy remote: the local zone keeps everything it can serve. */
    in[1].healthy = in[2].healthy = 0;
    plan(in, 3, WG_LOCALITY_PREFER, out, true);
    ck_share(out[0], PPM);
}
END_TEST

START_TEST(strict_never_leaves)
{
    struct wg_locality_input in[2] = { { 0, true, 4, 1 }, { 0, false, 4, 4 } };
    uint32_t out[2];
    plan(in, 2, WG_LOCALITY_STRICT, out, true);
    ck_share(out[0], PPM);
    ck_share(out[1], 0);
    in[0].healthy = 0;
    plan(in, 2, WG_LOCALITY_STRICT, out, false);
    ck_share(out[1], 0);
}
END_TEST

START_TEST(min_instances_turns_preference_off)
{
    /* A local zone of 2 (< min_instances 3) is one zone among others. */
    struct wg_locality_input in[2] = { { 0, true, 2, 2 }, { 0, false, 6, 6 } };
    uint32_t out[2];
    plan(in, 2, WG_LOCALITY_PREFER, out, true);
    ck_share(out[0], 250000);
    ck_share(out[1], 750000);
}
END_TEST

START_TEST(priorities_take_only_what_level0_cannot_carry)
{
    /* Level 0: 2/4 healthy -> 70 %; level 1 (fully healthy) gets 30 %. */
    struct wg_locality_input in[2] = { { 0, false, 4, 2 }, { 1, false, 4, 4 } };
    uint32_t out[2];
    plan(in, 2, WG_LOCALITY_OFF, out, true);
    ck_share(out[0], 700000);
    ck_share(out[1], 300000);
    in[0].healthy = 4;
    plan(in, 2, WG_LOCALITY_OFF, out, true);
    ck_share(out[0], PPM);
    ck_share(out[1], 0);
    /* Both levels weak: 35 % + 35 % normalised to 50/50. */
    in[0].healthy = 1;
    in[1].healthy = 1;
    plan(in, 2, WG_LOCALITY_OFF, out, true);
    ck_share(out[0], 500000);
    ck_share(out[1], 500000);
    in[0].healthy = in[1].healthy = 0;
    plan(in, 2, WG_LOCALITY_OFF, out, false);
}
END_TEST

START_TEST(priorities_then_zones)
{
    /* P0 local a: 0/4, P0 b: 4/4 -> level 0 health 70 % (all to b);
     * P1 a: 4/4 takes the remaining 30 %. */
    struct wg_locality_input in[3] = { { 0, true, 4, 0 }, { 0, false, 4, 4 }, { 1, true, 4, 4 } };
    uint32_t out[3];
    plan(in, 3, WG_LOCALITY_PREFER, out, true);
    ck_share(out[0], 0);
    ck_share(out[1], 700000);
    ck_share(out[2], 300000);
}
END_TEST

/* ---- picks on a pool ---- */

static void push_zoned(struct wg_record_set *set, const char *id, int port, const char *zone,
                       unsigned priority)
{
    unit_record(set, "s", id, "127.0.0.1", port, 100);
    char md[128];
    snprintf(md, sizeof md, "{\"priority\":%u,\"zone\":\"%s\"}", priority, zone);
    set->v[set->n - 1].metadata = strdup(md);
}

static const struct wg_pool_service *publish_zones(struct fixture *f, unsigned per_zone)
{
    struct wg_record_set set = { 0 };
    for (unsigned k = 0; k < per_zone; k++) {
        char id[16];
        snprintf(id, sizeof id, "a%u", k);
        push_zoned(&set, id, 9000 + (int)k, "za", 0);
        snprintf(id, sizeof id, "b%u", k);
        push_zoned(&set, id, 9100 + (int)k, "zb", 0);
    }
    wg_record_set_sort(&set);
    wg_pool_replace_all(f->pool, &set);
    wg_record_set_clear(&set);
    return wg_snapshot_service(wg_pool_current(f->pool), "s");
}

static double local_share(struct fixture *f, const struct wg_pool_service *svc, int picks,
                          int *none)
{
    int local = 0;
    *none = 0;
    for (int k = 0; k < picks; k++) {
        struct wg_pick p;
        wg_pick_init(&p, svc, &f->rng, &f->cache);
        const struct wg_member *m = wg_pick_next(&p);
        if (!m)
            (*none)++;
        else if (strcmp(m->inst->cell->zone, "za") == 0)
            local++;
    }
    return (double)local / picks;
}

static void set_health(const struct wg_pool_service *svc, const char *id, enum wg_health h)
{
    for (uint32_t k = 0; k < svc->n_members; k++)
        if (strcmp(svc->members[k].inst->id, id) == 0)
            wg_instance_set_health(svc->members[k].inst, h);
}

static const char *PREFER =
    "zone: za\n"
    "services:\n"
    "  s: { balance: BALANCE, health_check: { type: none }, locality: { mode: prefer } }\n";

static void prefer_with(const char *balance)
{
    struct fixture f;
    char yaml[512];
    const char *at = strstr(PREFER, "BALANCE");
    snprintf(yaml, sizeof yaml, "%.*s%s%s", (int)(at - PREFER), PREFER, balance, at + 7);
    setup(&f, yaml);
    const struct wg_pool_service *svc = publish_zones(&f, 4);
    ck_assert_ptr_nonnull(svc->locality);
    int none;
    const int n = 20000;
    ck_assert(local_share(&f, svc, n, &none) == 1.0);
    set_health(svc, "a0", WG_HEALTH_UNHEALTHY);
    ck_assert(local_share(&f, svc, n, &none) == 1.0);
    set_health(svc, "a1", WG_HEALTH_UNHEALTHY);
    double s = local_share(&f, svc, n, &none);
    ck_assert_msg(s > 0.68 && s < 0.72, "%s: local share %.3f, want 0.70", balance, s);
    set_health(svc, "a2", WG_HEALTH_UNHEALTHY);
    s = local_share(&f, svc, n, &none);
    ck_assert_msg(s > 0.33 && s < 0.37, "%s: local share %.3f, want 0.35", balance, s);
    set_health(svc, "a3", WG_HEALTH_UNHEALTHY);
    ck_assert(local_share(&f, svc, n, &none) == 0.0);
    ck_assert_int_eq(none, 0);
    /* Back to healthy: back home, no new snapshot needed. */
    for (int k = 0; k < 4; k++) {
        char id[8];
        snprintf(id, sizeof id, "a%d", k);
        set_health(svc, id, WG_HEALTH_HEALTHY);
    }
    ck_assert(local_share(&f, svc, n, &none) == 1.0);
    teardown(&f);
}

START_TEST(prefer_picks_every_policy)
{
    prefer_with("round_robin");
    prefer_with("least_conn");
    prefer_with("random");
    prefer_with("p2c");
    prefer_with("hash");
}
END_TEST

START_TEST(strict_picks_nothing_remote)
{
    struct fixture f;
    setup(&f, "zone: za\nservices:\n  s: { health_check: { type: none }, locality: { mode: strict } }\n");
    const struct wg_pool_service *svc = publish_zones(&f, 2);
    int none;
    ck_assert(local_share(&f, svc, 1000, &none) == 1.0);
    set_health(svc, "a0", WG_HEALTH_UNHEALTHY);
    set_health(svc, "a1", WG_HEALTH_UNHEALTHY);
    local_share(&f, svc, 1000, &none);
    ck_assert_int_eq(none, 1000);
    teardown(&f);
}
END_TEST

START_TEST(retries_fall_back_to_other_zones)
{
    struct fixture f;
    setup(&f, "zone: za\nservices:\n  s: { health_check: { type: none }, locality: { mode: prefer } }\n");
    const struct wg_pool_service *svc = publish_zones(&f, 3);
    struct wg_pick p;
    wg_pick_init(&p, svc, &f.rng, &f.cache);
    int local = 0, remote = 0;
    for (int k = 0; k < 6; k++) {
        const struct wg_member *m = wg_pick_next(&p);
        ck_assert_ptr_nonnull(m);
        if (strcmp(m->inst->cell->zone, "za") == 0) {
            ck_assert_int_eq(remote, 0);    /* the local zone first */
            local++;
        } else {
            remote++;
        }
    }
    ck_assert_int_eq(local, 3);
    ck_assert_int_eq(remote, 3);
    ck_assert_ptr_null(wg_pick_next(&p));
    teardown(&f);
}
END_TEST

START_TEST(zone_change_is_a_new_instance)
{
    struct fixture f;
    setup(&f, "zone: za\nservices:\n  s: { health_check: { type: none }, locality: { mode: prefer } }\n");
    const struct wg_pool_service *svc = publish_zones(&f, 3);
    struct wg_instance *a0 = svc->members[0].inst;
    ck_assert_str_eq(a0->id, "a0");
    ck_assert_int_eq(atomic_load(&a0->cell->healthy), 3);
    struct wg_record_set set = { 0 };
    push_zoned(&set, "a0", 9000, "zb", 0);
    wg_pool_replace_all(f.pool, &set);
    wg_record_set_clear(&set);
    svc = wg_snapshot_service(wg_pool_current(f.pool), "s");
    ck_assert_ptr_ne(svc->members[0].inst, a0);
    ck_assert_str_eq(svc->members[0].inst->cell->zone, "zb");
    ck_assert_int_eq(wg_instance_health(a0), WG_HEALTH_DRAINING);
    teardown(&f);
}
END_TEST

START_TEST(locality_of_metadata)
{
    char zone[WG_ZONE_MAX + 1];
    unsigned prio;
    wg_record_locality("{\"zone\":\"eu-1a\",\"priority\":2}", zone, &prio);
    ck_assert_str_eq(zone, "eu-1a");
    ck_assert_uint_eq(prio, 2);
    wg_record_locality("{\"priority\":\"1\",\"zone\":\"b\"}", zone, &prio);   /* string maps */
    ck_assert_str_eq(zone, "b");
    ck_assert_uint_eq(prio, 1);
    wg_record_locality("{\"priority\":99,\"zone\":7}", zone, &prio);
    ck_assert_str_eq(zone, "");
    ck_assert_uint_eq(prio, 0);
    wg_record_locality("{\"payload\":{\"metadata\":{\"zone\":\"c\",\"priority\":\"3\"}}}", zone,
                       &prio);                                             /* Curator, Spring */
    ck_assert_str_eq(zone, "c");
    ck_assert_uint_eq(prio, 3);
    wg_record_locality("{\"payload\":{\"zone\":\"d\"},\"serviceType\":\"DYNAMIC\"}", zone, &prio);
    ck_assert_str_eq(zone, "d");
    wg_record_locality("{\"zone\":", zone, &prio);
    ck_assert_str_eq(zone, "");
    wg_record_locality(NULL, zone, &prio);
    ck_assert_str_eq(zone, "");
}
END_TEST

int main(void)
{
    Suite *s = suite_create("balance_locality");
    TCase *tc = tcase_create("plan");
    tcase_add_test(tc, prefer_stays_local_while_overprovisioned);
    tcase_add_test(tc, spill_follows_remote_healthy_counts);
    tcase_add_test(tc, strict_never_leaves);
    tcase_add_test(tc, min_instances_turns_preference_off);
    tcase_add_test(tc, priorities_take_only_what_level0_cannot_carry);
    tcase_add_test(tc, priorities_then_zones);
    tcase_add_test(tc, locality_of_metadata);
    suite_add_tcase(s, tc);
    TCase *tp = tcase_create("picks");
    tcase_set_timeout(tp, 60);
    tcase_add_test(tp, prefer_picks_every_policy);
    tcase_add_test(tp, strict_picks_nothing_remote);
    tcase_add_test(tp, retries_fall_back_to_other_zones);
    tcase_add_test(tp, zone_change_is_a_new_instance);
    suite_add_tcase(s, tp);
    return unit_run(s);
}
