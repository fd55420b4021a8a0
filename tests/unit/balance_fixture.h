/* A pool with one configuration and a balance cache, for the policy suites
 * (check_balance.c, check_balance_policies.c). */
#ifndef WAYGATE_BALANCE_FIXTURE_H
#define WAYGATE_BALANCE_FIXTURE_H

#include "unit_util.h"

#include "waygate/balance.h"
#include "waygate/pool.h"
#include "waygate/reclaim.h"

struct fixture {
    struct wg_reclaim *rc;
    struct wg_pool *pool;
    struct wg_config_ref *ref;
    struct wg_balance_cache cache;
    struct wg_rng rng;
};

static inline void setup(struct fixture *f, const char *yaml)
{
    memset(f, 0, sizeof *f);
    f->rc = wg_reclaim_new();
    f->pool = wg_pool_new(f->rc, &wg_balance_policy, NULL, NULL);
    f->ref = wg_config_ref_new(unit_config(yaml));
    wg_pool_set_config(f->pool, f->ref);
    wg_rng_seed(&f->rng, 42);
}

/* Publish `set` (sorted here, cleared after) as the whole registry; the
 * version of service "s" it holds. */
static inline const struct wg_pool_service *publish_set(struct fixture *f, struct wg_record_set *set)
{
    wg_record_set_sort(set);
    wg_pool_replace_all(f->pool, set);
    wg_record_set_clear(set);
    const struct wg_pool_service *svc = wg_snapshot_service(wg_pool_current(f->pool), "s");
    ck_assert_ptr_nonnull(svc);
    return svc;
}

static inline void teardown(struct fixture *f)
{
    wg_balance_cache_free(&f->cache);
    wg_pool_free(f->pool);
    wg_reclaim_free(f->rc);
    wg_config_ref_put(f->ref);
}

#endif
