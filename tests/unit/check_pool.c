/* check_pool — snapshots, instance identity, draining, reclamation. */
#include "unit_util.h"

#include "waygate/balance.h"
#include "waygate/pool.h"
#include "waygate/reclaim.h"
#include "../../src/registry_map.h"

static const char *CFG = "services:\n  s: { health_check: { type: none } }\n"
                         "  p: { health_check: { type: http } }\n";

struct fixture {
    struct wg_reclaim *rc;
    struct wg_pool *pool;
    struct wg_config_ref *ref;
    int wakes;
};

static void on_wake(void *arg) { ((struct fixture *)arg)->wakes++; }

static void setup(struct fixture *f, const char *yaml)
{
    memset(f, 0, sizeof *f);
    f->rc = wg_reclaim_new();
    f->pool = wg_pool_new(f->rc, &wg_balance_policy, on_wake, f);
    f->ref = wg_config_ref_new(unit_config(yaml));
    wg_pool_set_config(f->pool, f->ref);
}

static void teardown(struct fixture *f)
{
    wg_pool_free(f->pool);
    wg_reclaim_free(f->rc);
    wg_config_ref_put(f->ref);
}

static void publish(struct fixture *f, struct wg_record_set *set)
{
    wg_record_set_sort(set);
    ck_assert_int_eq(wg_pool_replace_all(f->pool, set), 0);
    wg_record_set_clear(set);
}

START_TEST(first_snapshot_only_from_registry)
{
    struct fixture f;
    setup(&f, CFG);
    ck_assert(!wg_pool_has_snapshot(f.pool));      /* config alone is not readiness */
    struct wg_record_set set = { 0 };
    publish(&f, &set);                              /* an empty registry is */
    ck_assert(wg_pool_has_snapshot(f.pool));
    ck_assert_uint_eq(wg_pool_current(f.pool)->generation, 1);
    ck_assert_int_eq(f.wakes, 1);
    teardown(&f);
}
END_TEST

START_TEST(identity_carries_health_over_weight_change)
{
    struct fixture f;
    setup(&f, CFG);
    struct wg_record_set set = { 0 };
    unit_record(&set, "s", "a", "127.0.0.1", 9001, 100);
    unit_record(&set, "s", "b", "127.0.0.1", 9002, 100);
    publish(&f, &set);
    struct wg_snapshot *s1 = wg_pool_current(f.pool);
    const struct wg_pool_service *svc = wg_snapshot_service(s1, "s");
    ck_assert_ptr_nonnull(svc);
    ck_assert_uint_eq(svc->n_members, 2);
    struct wg_instance *a = svc->members[0].inst;
    ck_assert_str_eq(a->id, "a");
    ck_assert_int_eq(wg_instance_health(a), WG_HEALTH_HEALTHY);    /* type none */
    ck_assert_int_eq(atomic_load(&svc->state->healthy), 2);
    atomic_store(&a->requests_total, 42);
    wg_instance_set_health(a, WG_HEALTH_EJECTED);
    /* Weight change: same object, same health, same counters. */
    unit_record(&set, "s", "a", "127.0.0.1", 9001, 300);
    unit_record(&set, "s", "b", "127.0.0.1", 9002, 100);
    publish(&f, &set);
    struct wg_snapshot *s2 = wg_pool_current(f.pool);
    ck_assert_uint_eq(s2->generation, 2);
    svc = wg_snapshot_service(s2, "s");
    ck_assert_ptr_eq(svc->members[0].inst, a);
    ck_assert_uint_eq(svc->members[0].weight, 300);
    ck_assert_uint_eq(svc->total_weight, 400);
    ck_assert_int_eq(wg_instance_health(a), WG_HEALTH_EJECTED);
    ck_assert_uint_eq(atomic_load(&a->requests_total), 42);
    ck_assert_int_eq(atomic_load(&svc->state->healthy), 1);
    teardown(&f);
}
END_TEST

START_TEST(address_change_is_new_instance_old_drains)
{
    struct fixture f;
    setup(&f, CFG);
    struct wg_record_set set = { 0 };
    unit_record(&set, "s", "a", "127.0.0.1", 9001, 100);
    publish(&f, &set);
    struct wg_instance *old = wg_snapshot_service(wg_pool_current(f.pool), "s")->members[0].inst;
    wg_instance_ref(old);                           /* as a connection would */
    atomic_fetch_add(&old->active, 1);
    unit_record(&set, "s", "a", "127.0.0.2", 9001, 100);
    publish(&f, &set);
    const struct wg_pool_service *svc = wg_snapshot_service(wg_pool_current(f.pool), "s");
    ck_assert_ptr_ne(svc->members[0].inst, old);
    ck_assert_int_eq(wg_instance_health(old), WG_HEALTH_DRAINING);
    /* Draining is final: probes cannot bring it back. */
    wg_instance_set_health(old, WG_HEALTH_HEALTHY);
    ck_assert_int_eq(wg_instance_health(old), WG_HEALTH_DRAINING);
    ck_assert_int_eq(atomic_load(&svc->state->healthy), 1);
    wg_pool_reclaim(f.pool);                        /* no readers: old snapshots go */
    ck_assert_uint_eq(old->magic, WG_INSTANCE_MAGIC);   /* still ours */
    ck_assert_uint_eq(atomic_load(&old->active), 1);
    wg_instance_unref(old);
    teardown(&f);
}
END_TEST

static void record6(struct wg_record_set *set, const char *id, const char *ip, int port,
                    uint32_t scope)
{
    struct wg_record r = { 0 };
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&r.addr;
    sin6->sin6_family = AF_INET6;
    sin6->sin6_port = htons((uint16_t)port);
    sin6->sin6_scope_id = scope;
    ck_assert_int_eq(inet_pton(AF_INET6, ip, &sin6->sin6_addr), 1);
    r.addrlen = sizeof *sin6;
    r.service = strdup("s");
    r.id = strdup(id);
    r.weight = 100;
    ck_assert(wg_record_set_push(set, &r));
}

/* The compact address (pool.h) gives back the sockaddr it was made from,
 * and it is the instance's identity: same address, same object; another
 * port or scope, another instance. */
START_TEST(compact_address_round_trip_and_identity)
{
    struct fixture f;
    setup(&f, CFG);
    struct wg_record_set set = { 0 };
    record6(&set, "a", "fe80::1:2:3:4", 9001, 3);
    unit_record(&set, "s", "b", "10.1.2.3", 65535, 100);
    publish(&f, &set);
    const struct wg_pool_service *svc = wg_snapshot_service(wg_pool_current(f.pool), "s");
    struct wg_instance *a = svc->members[0].inst, *b = svc->members[1].inst;
    struct sockaddr_storage ss;
    ck_assert_uint_eq(wg_instance_sockaddr(a, &ss), sizeof(struct sockaddr_in6));
    const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)&ss;
    char text[INET6_ADDRSTRLEN];
    ck_assert_uint_eq(in6->sin6_family, AF_INET6);
    ck_assert_uint_eq(ntohs(in6->sin6_port), 9001);
    ck_assert_uint_eq(in6->sin6_scope_id, 3);
    ck_assert_str_eq(inet_ntop(AF_INET6, &in6->sin6_addr, text, sizeof text), "fe80::1:2:3:4");
    ck_assert_str_eq(a->addr_text, "[fe80::1:2:3:4]:9001");
    ck_assert_uint_eq(wg_instance_sockaddr(b, &ss), sizeof(struct sockaddr_in));
    const struct sockaddr_in *in4 = (const struct sockaddr_in *)&ss;
    ck_assert_uint_eq(ntohs(in4->sin_port), 65535);
    ck_assert_str_eq(inet_ntop(AF_INET, &in4->sin_addr, text, sizeof text), "10.1.2.3");
    ck_assert_str_eq(b->addr_text, "10.1.2.3:65535");
    record6(&set, "a", "fe80::1:2:3:4", 9001, 3);
    unit_record(&set, "s", "b", "10.1.2.3", 65535, 100);
    publish(&f, &set);
    svc = wg_snapshot_service(wg_pool_current(f.pool), "s");
    ck_assert_ptr_eq(svc->members[0].inst, a);
    ck_assert_ptr_eq(svc->members[1].inst, b);
    record6(&set, "a", "fe80::1:2:3:4", 9001, 4);
    unit_record(&set, "s", "b", "10.1.2.3", 65534, 100);
    publish(&f, &set);
    svc = wg_snapshot_service(wg_pool_current(f.pool), "s");
    ck_assert_ptr_ne(svc->members[0].inst, a);
    ck_assert_ptr_ne(svc->members[1].inst, b);
    teardown(&f);
}
END_TEST

START_TEST(removed_service_and_unchanged_service_shared)
{
    struct fixture f;
    setup(&f, CFG);
    struct wg_record_set set = { 0 };
    unit_record(&set, "s", "a", "127.0.0.1", 9001, 100);
    unit_record(&set, "t", "x", "127.0.0.1", 9003, 100);
    publish(&f, &set);
    const struct wg_pool_service *t1 = wg_snapshot_service(wg_pool_current(f.pool), "t");
    struct wg_instance *a = wg_snapshot_service(wg_pool_current(f.pool), "s")->members[0].inst;
    wg_instance_ref(a);
    unit_record(&set, "t", "x", "127.0.0.1", 9003, 100);
    publish(&f, &set);
    struct wg_snapshot *s = wg_pool_current(f.pool);
    ck_assert_ptr_null(wg_snapshot_service(s, "s"));
    ck_assert_int_eq(wg_instance_health(a), WG_HEALTH_DRAINING);
    ck_assert_uint_eq(s->n_services, 1);
    /* t was staged with identical records: the same version. */
    ck_assert_ptr_eq(wg_snapshot_service(s, "t"), t1);
    ck_assert(!atomic_load(&t1->retired));
    wg_instance_unref(a);
    teardown(&f);
}
END_TEST

/* One instance changed among 10,000 services: the next snapshot holds the
 * very same objects for the 9,999 others (nothing rebuilt or copied but
 * pointers), and only the changed service's old version is retired. */
START_TEST(one_change_shares_every_other_service)
{
    struct fixture f;
    setup(&f, CFG);
    enum { N = 10000 };
    struct wg_record_set set = { 0 };
    for (int k = 0; k < N; k++) {
        char name[16];
        snprintf(name, sizeof name, "svc%05d", k);
        unit_record(&set, name, "a", "127.0.0.1", 9000 + k % 1000, 100);
    }
    publish(&f, &set);
    struct wg_snapshot *s1 = wg_pool_current(f.pool);
    wg_snapshot_ref(s1);
    struct wg_record one = { 0 };
    struct wg_record_set tmp = { 0 };
    unit_record(&tmp, "svc04242", "a", "127.0.0.1", 9999, 100);
    one = tmp.v[0];
    ck_assert_int_eq(wg_pool_stage_service(f.pool, "svc04242", &one, 1), 0);
    wg_record_set_clear(&tmp);
    ck_assert_uint_eq(wg_pool_commit(f.pool), s1->generation + 1);
    struct wg_snapshot *s2 = wg_pool_current(f.pool);
    ck_assert_uint_eq(s2->n_services, N);
    for (size_t k = 0; k < N; k++) {
        bool changed = strcmp(s1->services[k]->name, "svc04242") == 0;
        if ((s2->services[k] == s1->services[k]) == changed ||
            atomic_load(&s1->services[k]->retired) != changed)
            ck_abort_msg("service %s: shared %d, retired %d", s1->services[k]->name,
                         s2->services[k] == s1->services[k], atomic_load(&s1->services[k]->retired));
    }
    struct sockaddr_storage ss;
    ck_assert_uint_eq(wg_instance_sockaddr(wg_snapshot_service(s2, "svc04242")->members[0].inst, &ss),
                      sizeof(struct sockaddr_in));
    ck_assert_uint_eq(ss.ss_family, AF_INET);
    /* Several staged at once, an addition between two, a removal at each
     * end: merged in name order. */
    unit_record(&tmp, "svc04242x", "a", "127.0.0.1", 9998, 100);
    unit_record(&tmp, "zzz", "a", "127.0.0.1", 9997, 100);
    ck_assert_int_eq(wg_pool_stage_service(f.pool, "zzz", &tmp.v[1], 1), 0);
    ck_assert_int_eq(wg_pool_stage_service(f.pool, "svc00000", NULL, 0), 0);
    ck_assert_int_eq(wg_pool_stage_service(f.pool, "svc04242x", &tmp.v[0], 1), 0);
    ck_assert_int_eq(wg_pool_stage_service(f.pool, "svc09999", NULL, 0), 0);
    wg_record_set_clear(&tmp);
    wg_pool_commit(f.pool);
    struct wg_snapshot *s3 = wg_pool_current(f.pool);
    ck_assert_uint_eq(s3->n_services, N);
    for (size_t k = 1; k < s3->n_services; k++)
        if (strcmp(s3->services[k - 1]->name, s3->services[k]->name) >= 0)
            ck_abort_msg("out of order at %zu: %s, %s", k, s3->services[k - 1]->name,
                         s3->services[k]->name);
    ck_assert_str_eq(s3->services[0]->name, "svc00001");
    ck_assert_str_eq(s3->services[N - 1]->name, "zzz");
    ck_assert_ptr_nonnull(wg_snapshot_service(s3, "svc04242x"));
    ck_assert_ptr_null(wg_snapshot_service(s3, "svc09999"));
    wg_snapshot_unref(s1);
    teardown(&f);
}
END_TEST

/* The services' references live in shared chunks (pool.c): after any mix
 * of replaced, removed and added services, every published service is in
 * exactly one chunk of the snapshot, holds one reference (its chunk's: the
 * old chunks went with the old snapshots), every chunk but the last is full,
 * `changes` lists what the commit changed, and a removed service's version
 * is freed once its last snapshot is reclaimed. */
START_TEST(chunks_hold_each_service_once)
{
    struct fixture f;
    setup(&f, CFG);
    enum { N = 1000 };
    struct wg_record_set set = { 0 };
    char name[16];
    for (int k = 0; k < N; k++) {
        snprintf(name, sizeof name, "svc%05d", k * 2);
        unit_record(&set, name, "a", "127.0.0.1", 9000, 100);
    }
    publish(&f, &set);
    uint32_t rng = 12345;
    for (int round = 0; round < 200; round++) {
        struct wg_snapshot *before = wg_pool_current(f.pool);
        wg_snapshot_ref(before);
        struct wg_instance *gone = NULL;
        int staged = 0;
        for (int op = 0; op < 1 + round % 4; op++) {
            rng = rng * 1103515245u + 12345u;
            int k = (int)((rng >> 8) % (2 * N));
            snprintf(name, sizeof name, "svc%05d", k);
            const struct wg_pool_service *cur = wg_snapshot_service(before, name);
            struct wg_record_set one = { 0 };
            if (cur && (rng & 1)) {             /* removed */
                if (!gone) {
                    gone = cur->members[0].inst;
                    wg_instance_ref(gone);
                }
                ck_assert_int_eq(wg_pool_stage_service(f.pool, name, NULL, 0), 0);
            } else {                            /* added or replaced (another weight) */
                unit_record(&one, name, "a", "127.0.0.1", 9000, 1 + (int)(rng >> 20) % 100);
                ck_assert_int_eq(wg_pool_stage_service(f.pool, name, one.v, 1), 0);
                wg_record_set_clear(&one);
            }
            staged++;
        }
        if (!wg_pool_commit(f.pool)) {          /* nothing changed (same weight) */
            ck_assert_ptr_null(gone);
            wg_snapshot_unref(before);
            continue;
        }
        struct wg_snapshot *s = wg_pool_current(f.pool);
        ck_assert_uint_eq(s->generation, before->generation + 1);
        ck_assert_uint_le(s->n_changes, (size_t)staged);
        for (size_t c = 0; c < s->n_changes; c++) {
            const struct wg_snapshot_change *x = &s->changes[c];
            const char *n = x->new ? x->new->name : x->old->name;
            ck_assert_ptr_eq(x->old, wg_snapshot_service(before, n));
            ck_assert_ptr_eq(x->new, wg_snapshot_service(s, n));
        }
        size_t held = 0;
        for (size_t c = 0; c < s->n_chunks; c++) {
            if (c + 1 < s->n_chunks)
                ck_assert_uint_eq(s->chunks[c]->n, WG_SVC_CHUNK);
            for (uint32_t m = 0; m < s->chunks[c]->n; m++) {
                struct wg_pool_service *v = s->chunks[c]->v[m];
                ck_assert_ptr_eq(v->chunk, s->chunks[c]);
                ck_assert_ptr_eq(wg_snapshot_service(s, v->name), v);
            }
            held += s->chunks[c]->n;
        }
        ck_assert_uint_eq(held, s->n_services);     /* with the above: each once */
        wg_snapshot_unref(before);
        wg_pool_reclaim(f.pool);
        for (size_t k = 0; k < s->n_services; k++)
            ck_assert_uint_eq(atomic_load(&s->services[k]->refs), 1);
        if (gone) {
            ck_assert_uint_eq(atomic_load(&gone->refs), 1);     /* its service version went */
            ck_assert_int_eq(wg_instance_health(gone), WG_HEALTH_DRAINING);
            wg_instance_unref(gone);
        }
    }
    teardown(&f);
}
END_TEST

/* A list's result replaces the pools service by service (registry_map's
 * rmap_replace_all): the map's services published, an unchanged one kept
 * as the same object, a published one the map lacks removed (its instance
 * draining), an empty map service dropped. */
START_TEST(map_replaces_all_services)
{
    struct fixture f;
    setup(&f, CFG);
    struct keymap m = { 0 };
    struct wg_record_set set = { 0 };
    unit_record(&set, "s", "a", "127.0.0.1", 9001, 100);
    rmap_put(&m, "/k/s/a", &set);
    unit_record(&set, "gone", "g", "127.0.0.1", 9002, 100);
    rmap_put(&m, "/k/gone/g", &set);
    ck_assert_int_eq(rmap_replace_all(f.pool, &m), 2);
    struct wg_snapshot *s1 = wg_pool_current(f.pool);
    ck_assert_uint_eq(s1->n_services, 2);
    const struct wg_pool_service *kept = wg_snapshot_service(s1, "s");
    struct wg_instance *g = wg_snapshot_service(s1, "gone")->members[0].inst;
    wg_instance_ref(g);
    rmap_clear(&m);
    unit_record(&set, "s", "a", "127.0.0.1", 9001, 100);        /* the same */
    rmap_put(&m, "/k/s/a", &set);
    unit_record(&set, "new", "n", "127.0.0.1", 9003, 100);
    rmap_put(&m, "/k/new/n", &set);
    unit_record(&set, "empty", "e", "127.0.0.1", 9004, 100);
    rmap_put(&m, "/k/empty/e", &set);
    rmap_delete(&m, "/k/empty/e");                              /* a service with no key */
    ck_assert_int_eq(rmap_replace_all(f.pool, &m), 2);
    struct wg_snapshot *s2 = wg_pool_current(f.pool);
    ck_assert_uint_eq(s2->n_services, 2);
    ck_assert_ptr_eq(wg_snapshot_service(s2, "s"), kept);
    ck_assert_ptr_nonnull(wg_snapshot_service(s2, "new"));
    ck_assert_ptr_null(wg_snapshot_service(s2, "gone"));
    ck_assert_ptr_null(wg_snapshot_service(s2, "empty"));
    ck_assert_ptr_null(m.dirty);
    ck_assert_int_eq(wg_instance_health(g), WG_HEALTH_DRAINING);
    wg_instance_unref(g);
    rmap_clear(&m);
    teardown(&f);
}
END_TEST

START_TEST(probed_service_starts_unknown)
{
    struct fixture f;
    setup(&f, CFG);
    struct wg_record_set set = { 0 };
    unit_record(&set, "p", "a", "127.0.0.1", 9001, 100);
    publish(&f, &set);
    const struct wg_pool_service *svc = wg_snapshot_service(wg_pool_current(f.pool), "p");
    ck_assert_int_eq(wg_instance_health(svc->members[0].inst), WG_HEALTH_UNKNOWN);
    ck_assert_int_eq(atomic_load(&svc->state->healthy), 0);
    wg_instance_set_health(svc->members[0].inst, WG_HEALTH_HEALTHY);
    ck_assert_int_eq(atomic_load(&svc->state->healthy), 1);
    teardown(&f);
}
END_TEST

START_TEST(reclaim_waits_for_reader)
{
    struct fixture f;
    setup(&f, CFG);
    struct wg_reclaim_reader *r = wg_reclaim_register(f.rc);
    struct wg_record_set set = { 0 };
    unit_record(&set, "s", "a", "127.0.0.1", 9001, 100);
    publish(&f, &set);
    struct wg_snapshot *held = wg_pool_current(f.pool);     /* reader holds it */
    unit_record(&set, "s", "a", "127.0.0.1", 9001, 50);
    publish(&f, &set);
    ck_assert_uint_eq(wg_pool_reclaim(f.pool), 1);
    ck_assert_uint_eq(held->magic, WG_SNAPSHOT_MAGIC);
    wg_reclaim_quiescent(r);
    ck_assert_uint_eq(wg_pool_reclaim(f.pool), 0);
    wg_reclaim_unregister(f.rc, r);
    teardown(&f);
}
END_TEST

START_TEST(config_change_keeps_instances)
{
    struct fixture f;
    setup(&f, CFG);
    struct wg_record_set set = { 0 };
    unit_record(&set, "s", "a", "127.0.0.1", 9001, 100);
    publish(&f, &set);
    struct wg_instance *a = wg_snapshot_service(wg_pool_current(f.pool), "s")->members[0].inst;
    struct wg_config_ref *ref2 = wg_config_ref_new(unit_config(
        "services:\n  s: { retries: 5, health_check: { type: none } }\n"));
    wg_pool_set_config(f.pool, ref2);
    const struct wg_pool_service *svc = wg_snapshot_service(wg_pool_current(f.pool), "s");
    ck_assert_uint_eq(svc->cfg->retries, 5);
    ck_assert_ptr_eq(svc->members[0].inst, a);
    ck_assert_uint_eq(wg_pool_current(f.pool)->generation, 2);
    wg_config_ref_put(ref2);
    teardown(&f);
}
END_TEST

static struct wg_record kratos_both(const char *id)
{
    struct wg_record_set set = { 0 };
    unit_record(&set, "g", id, "127.0.0.1", 8000, 100);
    struct wg_record r = set.v[0];
    memset(&set.v[0], 0, sizeof set.v[0]);
    wg_record_set_clear(&set);
    r.protocol = WG_RECORD_PROTO_HTTP1;
    struct sockaddr_in *g = (struct sockaddr_in *)&r.grpc_addr;
    g->sin_family = AF_INET;
    g->sin_port = htons(9000);
    g->sin_addr.s_addr = htonl(0x7f000001);
    r.grpc_addrlen = sizeof *g;
    return r;
}

/* upstream.protocol picks address and protocol per record; the instance
 * keeps the protocol; a reload to another protocol picks again from the
 * record as it came (a new instance: the identity changed). */
START_TEST(protocol_picks_address_and_reload_picks_again)
{
    struct fixture f;
    setup(&f, "services:\n  g: { upstream: { protocol: h2c }, health_check: { type: none } }\n"
              "  a: { upstream: { protocol: auto }, health_check: { type: none } }\n");
    struct wg_record_set set = { 0 };
    struct wg_record r = kratos_both("k");
    ck_assert(wg_record_set_push(&set, &r));
    unit_record(&set, "a", "n", "127.0.0.1", 7000, 100);
    set.v[1].protocol = WG_RECORD_PROTO_HTTP2;
    unit_record(&set, "a", "p", "127.0.0.1", 7001, 100);
    publish(&f, &set);
    const struct wg_pool_service *g = wg_snapshot_service(wg_pool_current(f.pool), "g");
    const struct wg_pool_service *a = wg_snapshot_service(wg_pool_current(f.pool), "a");
    ck_assert_str_eq(g->members[0].inst->addr_text, "127.0.0.1:9000");
    ck_assert_int_eq(g->members[0].inst->protocol, WG_UPSTREAM_H2C);
    ck_assert_int_eq(a->members[0].inst->protocol, WG_UPSTREAM_H2C);
    ck_assert_int_eq(a->members[1].inst->protocol, WG_UPSTREAM_HTTP1);
    struct wg_instance *old = g->members[0].inst, *an = a->members[0].inst;
    struct wg_config_ref *ref2 = wg_config_ref_new(unit_config(
        "services:\n  g: { health_check: { type: none } }\n"
        "  a: { upstream: { protocol: auto }, health_check: { type: none },"
        " tls: { enabled: true, verify: false } }\n"));
    wg_pool_set_config(f.pool, ref2);
    g = wg_snapshot_service(wg_pool_current(f.pool), "g");
    a = wg_snapshot_service(wg_pool_current(f.pool), "a");
    ck_assert_str_eq(g->members[0].inst->addr_text, "127.0.0.1:8000");   /* http1: http:// */
    ck_assert_int_eq(g->members[0].inst->protocol, WG_UPSTREAM_HTTP1);
    ck_assert_ptr_ne(g->members[0].inst, old);
    ck_assert_int_eq(wg_instance_health(old), WG_HEALTH_DRAINING);
    ck_assert_int_eq(a->members[0].inst->protocol, WG_UPSTREAM_H2);      /* same marker, TLS */
    ck_assert_ptr_ne(a->members[0].inst, an);
    /* Back to h2c: the grpc:// endpoint again, from the kept record. */
    wg_pool_set_config(f.pool, f.ref);
    g = wg_snapshot_service(wg_pool_current(f.pool), "g");
    ck_assert_str_eq(g->members[0].inst->addr_text, "127.0.0.1:9000");
    wg_config_ref_put(ref2);
    teardown(&f);
}
END_TEST

/* A Kratos value with only grpc:// is skipped by an http1 service. */
START_TEST(grpc_only_record_skipped_by_http1)
{
    struct fixture f;
    setup(&f, CFG);
    struct wg_record_set set = { 0 };
    unit_record(&set, "s", "a", "127.0.0.1", 9000, 100);
    set.v[0].grpc_endpoint = true;
    set.v[0].protocol = WG_RECORD_PROTO_HTTP2;
    unit_record(&set, "s", "b", "127.0.0.1", 9001, 100);
    publish(&f, &set);
    const struct wg_pool_service *svc = wg_snapshot_service(wg_pool_current(f.pool), "s");
    ck_assert_uint_eq(svc->n_members, 1);
    ck_assert_str_eq(svc->members[0].inst->id, "b");
    teardown(&f);
}
END_TEST

START_TEST(admin_drain_is_undoable_and_keeps_counts)
{
    struct fixture f;
    setup(&f, CFG);
    struct wg_record_set set = { 0 };
    unit_record(&set, "s", "a", "127.0.0.1", 9001, 100);
    publish(&f, &set);
    const struct wg_pool_service *svc = wg_snapshot_service(wg_pool_current(f.pool), "s");
    struct wg_instance *a = svc->members[0].inst;
    ck_assert(wg_instance_admin_drain(a, true));
    ck_assert_int_eq(wg_instance_health(a), WG_HEALTH_DRAINING);
    ck_assert_int_eq(atomic_load(&svc->state->healthy), 0);
    /* A probe result while drained changes what enable restores, not what
     * readers see. */
    wg_instance_set_health(a, WG_HEALTH_UNHEALTHY);
    ck_assert_int_eq(wg_instance_health(a), WG_HEALTH_DRAINING);
    ck_assert(wg_instance_admin_drain(a, false));
    ck_assert_int_eq(wg_instance_health(a), WG_HEALTH_UNHEALTHY);
    wg_instance_set_health(a, WG_HEALTH_HEALTHY);
    ck_assert_int_eq(atomic_load(&svc->state->healthy), 1);
    /* Drained, then removed from the registry: enable cannot bring it back. */
    ck_assert(wg_instance_admin_drain(a, true));
    wg_instance_ref(a);
    struct wg_record_set none = { 0 };
    publish(&f, &none);
    ck_assert(!wg_instance_admin_drain(a, false));
    ck_assert_int_eq(wg_instance_health(a), WG_HEALTH_DRAINING);
    wg_instance_unref(a);
    teardown(&f);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("pool");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, first_snapshot_only_from_registry);
    tcase_add_test(tc, identity_carries_health_over_weight_change);
    tcase_add_test(tc, address_change_is_new_instance_old_drains);
    tcase_add_test(tc, compact_address_round_trip_and_identity);
    tcase_add_test(tc, removed_service_and_unchanged_service_shared);
    tcase_add_test(tc, one_change_shares_every_other_service);
    tcase_add_test(tc, chunks_hold_each_service_once);
    tcase_add_test(tc, map_replaces_all_services);
    tcase_add_test(tc, probed_service_starts_unknown);
    tcase_add_test(tc, reclaim_waits_for_reader);
    tcase_add_test(tc, config_change_keeps_instances);
    tcase_add_test(tc, protocol_picks_address_and_reload_picks_again);
    tcase_add_test(tc, grpc_only_record_skipped_by_http1);
    tcase_add_test(tc, admin_drain_is_undoable_and_keeps_counts);
    suite_add_tcase(s, tc);
    return unit_run(s);
}
