/* registry — see include/waygate/registry.h */
#include "waygate/registry.h"

#include <stdlib.h>

#include "waygate/log.h"
#include "waygate/pool.h"

struct wg_registry *wg_registry_new(const struct wg_config *cfg, struct event_base *base,
                                    struct wg_pool *pool)
{
    switch (cfg->registry.kind) {
    case WG_REGISTRY_FILE:
        return wg_registry_file_new(cfg->registry.file, base, pool);
    case WG_REGISTRY_ETCD:
        return wg_registry_etcd_new(cfg, base, pool);
    case WG_REGISTRY_ZOOKEEPER:
        return wg_registry_zk_new(cfg, base, pool);
    case WG_REGISTRY_NONE:
    default:
        return wg_registry_none_new(base, pool);
    }
}

const double wg_registry_propagation_le[WG_REGISTRY_PROPAGATION_BUCKETS] = {
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0
};

void wg_registry_observe_propagation(struct wg_registry_status *st, uint64_t ns)
{
    st->propagation_count++;
    st->propagation_sum_ns += ns;
    for (int i = 0; i < WG_REGISTRY_PROPAGATION_BUCKETS; i++)
        if ((double)ns <= wg_registry_propagation_le[i] * 1e9)
            st->propagation_buckets[i]++;
}

int wg_registry_start(struct wg_registry *r) { return r->ops->start(r); }

void wg_registry_free(struct wg_registry *r)
{
    if (r)
        r->ops->free(r);
}

void wg_registry_retire(struct wg_registry *r)
{
    if (r) {
        r->in_loop = true;
        r->ops->free(r);
    }
}

/* ---- no registry: one empty snapshot, so that the proxy is ready ---- */

static int none_start(struct wg_registry *r)
{
    wg_pool_commit(r->pool);
    r->status.connected = true;
    r->status.last_contact_ms = wg_now_ms();
    return 0;
}

static void none_free(struct wg_registry *r) { free(r); }

static const struct wg_registry_ops none_ops = { "none", none_start, none_free };

struct wg_registry *wg_registry_none_new(struct event_base *base, struct wg_pool *pool)
{
    struct wg_registry *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->ops = &none_ops;
    r->base = base;
    r->pool = pool;
    r->status.source = "none";
    return r;
}
