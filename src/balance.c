/* balance — see include/waygate/balance.h */
#include "waygate/balance.h"

#include <stdlib.h>
#include <string.h>

/* ---- xoshiro256** seeded by splitmix64 ---- */

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

void wg_rng_seed(struct wg_rng *r, uint64_t seed)
{
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&seed);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t wg_rng_next(struct wg_rng *r)
{
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

uint64_t wg_rng_below(struct wg_rng *r, uint64_t bound)
{
    if (bound <= 1)
        return 0;
    /* Lemire's nearly divisionless method, with rejection for exactness. */
    uint64_t threshold = -bound % bound;
    for (;;) {
        __uint128_t m = (__uint128_t)wg_rng_next(r) * bound;
        if ((uint64_t)m >= threshold)
            return (uint64_t)(m >> 64);
    }
}

/* ---- routability ---- */

bool wg_balance_routable(const struct wg_pick *p, const struct wg_member *m)
{
    struct wg_instance *i = m->inst;
    enum wg_health h = wg_instance_health(i);
    if (h == WG_HEALTH_DRAINING || (h != WG_HEALTH_HEALTHY && !p->panic) || m->weight == 0)
        return false;
    unsigned max = p->svc->cfg->max_connections;
    if (max && atomic_load_explicit(&i->active, memory_order_relaxed) >= max)
        return false;
    for (unsigned k = 0; k < p->n_tried; k++)
        if (p->tried[k] == i)
            return false;
    return true;
}

uint32_t wg_balance_weight(const struct wg_pick *p, const struct wg_member *m)
{
    uint64_t window = p->svc->cfg->slow_start_ms;
    if (!window)
        return m->weight;
    uint64_t since = atomic_load_explicit(&m->inst->healthy_since_ms, memory_order_relaxed);
    uint64_t age = p->now_ms > since ? p->now_ms - since : 0;
    if (age >= window)
        return m->weight;
    /* Linear ramp from 10% to 100% over the window. */
    uint64_t w = (uint64_t)m->weight * (10 + 90 * age / window) / 100;
    return w ? (uint32_t)w : 1;
}

/* ---- per-worker state cache ---- */

struct wg_balance_cache_entry {
    struct wg_pool_service *svc;        /* one reference; NULL = free slot */
    void *state;
};

static void entry_release(struct wg_balance_cache_entry *e)
{
    if (e->state && e->svc->balance->state_free)
        e->svc->balance->state_free(e->state);
    wg_pool_service_unref(e->svc);
    e->svc = NULL;
    e->state = NULL;
}

void wg_balance_cache_free(struct wg_balance_cache *c)
{
    for (size_t k = 0; k < c->cap; k++)
        if (c->v[k].svc)
            entry_release(&c->v[k]);
    free(c->v);
    memset(c, 0, sizeof *c);
}

static int cache_grow(struct wg_balance_cache *c)
{
    size_t cap = c->cap ? c->cap * 2 : 16;
    struct wg_balance_cache_entry *v = calloc(cap, sizeof *v);
    if (!v)
        return -1;
    for (size_t k = 0; k < c->cap; k++) {
        if (!c->v[k].svc)
            continue;
        size_t h = c->v[k].svc->serial & (cap - 1);
        while (v[h].svc)
            h = (h + 1) & (cap - 1);
        v[h] = c->v[k];
    }
    free(c->v);
    c->v = v;
    c->cap = cap;
    return 0;
}

void wg_balance_cache_sweep(struct wg_balance_cache *c, const struct wg_snapshot *snap)
{
    size_t cap = c->cap;
    struct wg_balance_cache_entry *old = c->v;
    if (!c->used)
        return;
    struct wg_balance_cache_entry *v = calloc(cap, sizeof *v);
    if (!v)
        return;
    c->v = v;
    c->used = 0;
    for (size_t k = 0; k < cap; k++) {
        if (!old[k].svc)
            continue;
        const struct wg_pool_service *root = old[k].svc->parent ? old[k].svc->parent : old[k].svc;
        if (!snap || atomic_load_explicit(&root->retired, memory_order_relaxed)) {
            entry_release(&old[k]);
            continue;
        }
        size_t h = old[k].svc->serial & (cap - 1);
        while (v[h].svc)
            h = (h + 1) & (cap - 1);
        v[h] = old[k];
        c->used++;
    }
    free(old);
}

void wg_balance_cache_bind(struct wg_balance_cache *c, struct wg_pick *p)
{
    const struct wg_balance_ops *ops = p->svc->balance;
    p->state = NULL;
    p->cache = c;
    if (!ops->state_new || p->svc->locality)   /* groups bind their own (locality) */
        return;
    if (c->cap) {
        size_t h = p->svc->serial & (c->cap - 1);
        for (; c->v[h].svc; h = (h + 1) & (c->cap - 1))
            if (c->v[h].svc == p->svc) {
                p->state = c->v[h].state;
                return;
            }
    }
    if ((c->used + 1) * 2 > c->cap && cache_grow(c) < 0)
        return;
    void *state = ops->state_new(p->svc);
    if (!state)
        return;
    size_t h = p->svc->serial & (c->cap - 1);
    while (c->v[h].svc)
        h = (h + 1) & (c->cap - 1);
    wg_pool_service_ref((struct wg_pool_service *)p->svc);
    c->v[h] = (struct wg_balance_cache_entry){ (struct wg_pool_service *)p->svc, state };
    c->used++;
    p->state = state;
}

void wg_pick_init(struct wg_pick *p, const struct wg_pool_service *svc, struct wg_rng *rng,
                  struct wg_balance_cache *cache)
{
    memset(p, 0, sizeof *p);
    p->svc = svc;
    p->rng = rng;
    p->now_ms = svc->cfg->slow_start_ms ? wg_now_ms() : 0;
    unsigned threshold = svc->cfg->panic_threshold;
    if (threshold && svc->n_members) {
        int healthy = atomic_load_explicit(&svc->state->healthy, memory_order_relaxed);
        p->panic = (uint64_t)(healthy < 0 ? 0 : healthy) * 100 < (uint64_t)threshold * svc->n_members;
    }
    if (cache)
        wg_balance_cache_bind(cache, p);
}

const struct wg_member *wg_pick_next(struct wg_pick *p)
{
    if (p->n_tried >= WG_MAX_TRIES)
        return NULL;
    const struct wg_locality *groups = p->svc->locality;
    const struct wg_member *m = groups ? wg_locality_pick(p) : p->svc->balance->pick(p);
    if (m) {
        p->tried[p->n_tried++] = m->inst;
        /* Per zone only where there is more than one group to choose from: a
         * shared counter on every pick of every service cost 25-170 ns at
         * 10,000 instances (one cache line all workers write). */
        if (groups)
            atomic_fetch_add_explicit(&m->inst->cell->picks, 1, memory_order_relaxed);
        if (p->panic)
            atomic_fetch_add_explicit(&p->svc->state->panic_routed, 1, memory_order_relaxed);
    }
    return m;
}

const struct wg_balance_ops *wg_balance_ops_for(enum wg_balance policy)
{
    switch (policy) {
    case WG_BALANCE_LEAST_CONN:
        return &wg_balance_least_conn;
    case WG_BALANCE_RANDOM:
        return &wg_balance_random;
    case WG_BALANCE_P2C:
        return &wg_balance_p2c;
    case WG_BALANCE_HASH:
        return &wg_balance_hash;
    case WG_BALANCE_ROUND_ROBIN:
    default:
        return &wg_balance_round_robin;
    }
}

static int policy_build(struct wg_pool_service *s, const char *local_zone)
{
    s->balance = wg_balance_ops_for(s->cfg->balance);
    if (s->balance->shared_new && !(s->balance_shared = s->balance->shared_new(s)))
        return -1;
    return wg_locality_build(s, local_zone);
}

static void policy_release(struct wg_pool_service *s)
{
    if (s->balance && s->balance->shared_free && s->balance_shared)
        s->balance->shared_free(s->balance_shared);
    wg_locality_free(s->locality);
}

const struct wg_pool_policy wg_balance_policy = { policy_build, policy_release };
