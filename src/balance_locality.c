/* balance_locality — zones and priorities above the policies (see the
 * locality part of include/waygate/balance.h and docs/balancing.md). */
#include <stdlib.h>
#include <string.h>

#include "waygate/balance.h"
#include "waygate/log.h"

struct wg_locality_group {
    struct wg_pool_service svc;         /* members: a subset of the parent's */
    unsigned priority;
    const char *zone;                   /* "" when zones are ignored */
    bool local;
    struct wg_locality_cell **cells;    /* the cells its members belong to */
    unsigned n_cells;
    uint32_t filled;                    /* members copied so far (build) */
};

struct wg_locality {
    enum wg_locality_mode mode;
    unsigned overprovisioning, min_instances;
    struct wg_locality_group *groups;   /* priority, local first, zone */
    unsigned n_groups;
};

/* ---- the plan (pure) ---- */

static uint64_t health_ppm(unsigned healthy, unsigned total, unsigned op)
{
    if (!total || !healthy)
        return 0;
    uint64_t h = (uint64_t)healthy * op * (WG_LOCALITY_PPM / 100) / total;
    return h > WG_LOCALITY_PPM ? WG_LOCALITY_PPM : h;
}

/* Split `load` over the groups [a, b) of one level (candidates only). */
static void split_level(const struct wg_locality_input *in, const bool *cand, unsigned a,
                        unsigned b, enum wg_locality_mode mode, unsigned op, unsigned min_inst,
                        uint64_t load, uint32_t *out)
{
    uint64_t healthy = 0, remote = 0;
    int local = -1;
    for (unsigned i = a; i < b; i++) {
        if (!cand[i])
            continue;
        healthy += in[i].healthy;
        if (in[i].local && local < 0)
            local = (int)i;
        else
            remote += in[i].healthy;
    }
    if (!healthy)
        return;
    if (mode == WG_LOCALITY_PREFER && local >= 0 && in[local].total >= min_inst &&
        in[local].healthy) {
        uint64_t keep = remote ? load * health_ppm(in[local].healthy, in[local].total, op) /
                                     WG_LOCALITY_PPM
                               : load;
        out[local] = (uint32_t)keep;
        for (unsigned i = a; i < b && remote; i++)
            if (cand[i] && (int)i != local)
                out[i] = (uint32_t)((load - keep) * in[i].healthy / remote);
        return;
    }
    for (unsigned i = a; i < b; i++)
        if (cand[i])
            out[i] = (uint32_t)(load * in[i].healthy / healthy);
}

bool wg_locality_plan(const struct wg_locality_input *in, unsigned n, enum wg_locality_mode mode,
                      unsigned op, unsigned min_inst, uint32_t *out)
{
    bool cand[WG_LOCALITY_MAX_GROUPS];
    uint64_t level_health[WG_LOCALITY_MAX_GROUPS], sum = 0;
    unsigned start[WG_LOCALITY_MAX_GROUPS + 1], levels = 0;

    if (n > WG_LOCALITY_MAX_GROUPS)
        n = WG_LOCALITY_MAX_GROUPS;
    memset(out, 0, n * sizeof *out);
    for (unsigned i = 0; i < n; i++) {
        cand[i] = mode != WG_LOCALITY_STRICT || in[i].local;
        if (i == 0 || in[i].priority != in[i - 1].priority)
            start[levels++] = i;
    }
    start[levels] = n;
    for (unsigned l = 0; l < levels; l++) {
        unsigned total = 0, healthy = 0;
        for (unsigned i = start[l]; i < start[l + 1]; i++)
            if (cand[i]) {
                total += in[i].total;
                healthy += in[i].healthy > in[i].total ? in[i].total : in[i].healthy;
            }
        level_health[l] = health_ppm(healthy, total, op);
        sum += level_health[l];
    }
    if (!sum)
        return false;
    uint64_t left = WG_LOCALITY_PPM;
    for (unsigned l = 0; l < levels; l++) {
        uint64_t load;
        if (sum < WG_LOCALITY_PPM) {
            load = level_health[l] * WG_LOCALITY_PPM / sum;
        } else {
            load = level_health[l] < left ? level_health[l] : left;
            left -= load;
        }
        if (load)
            split_level(in, cand, start[l], start[l + 1], mode, op, min_inst, load, out);
    }
    return true;
}

/* ---- groups ---- */

static int group_cmp(const void *a, const void *b)
{
    const struct wg_locality_group *x = a, *y = b;
    if (x->priority != y->priority)
        return x->priority < y->priority ? -1 : 1;
    if (x->local != y->local)
        return x->local ? -1 : 1;
    return strcmp(x->zone, y->zone);
}

void wg_locality_free(struct wg_locality *l)
{
    if (!l)
        return;
    for (unsigned k = 0; k < l->n_groups; k++) {
        struct wg_locality_group *g = &l->groups[k];
        if (g->svc.balance_shared && g->svc.balance->shared_free)
            g->svc.balance->shared_free(g->svc.balance_shared);
        free(g->svc.members);
        free(g->cells);
    }
    free(l->groups);
    free(l);
}

static struct wg_locality_group *group_for(struct wg_locality *l, unsigned priority,
                                           const char *zone)
{
    for (unsigned k = 0; k < l->n_groups; k++)
        if (l->groups[k].priority == priority && strcmp(l->groups[k].zone, zone) == 0)
            return &l->groups[k];
    if (l->n_groups == WG_LOCALITY_MAX_GROUPS)
        return NULL;
    struct wg_locality_group *g = &l->groups[l->n_groups++];
    g->priority = priority;
    g->zone = zone;
    return g;
}

static bool add_cell(struct wg_locality_group *g, struct wg_locality_cell *c)
{
    for (unsigned k = 0; k < g->n_cells; k++)
        if (g->cells[k] == c)
            return true;
    struct wg_locality_cell **v = realloc(g->cells, (g->n_cells + 1) * sizeof *v);
    if (!v)
        return false;
    v[g->n_cells++] = c;
    g->cells = v;
    return true;
}

int wg_locality_build(struct wg_pool_service *s, const char *local_zone)
{
    enum wg_locality_mode mode = s->cfg->locality.mode;
    bool backups = false;
    for (uint32_t k = 0; k < s->n_members && !backups; k++)
        backups = s->members[k].inst->cell->priority > 0;
    if (mode == WG_LOCALITY_OFF && !backups)
        return 0;
    struct wg_locality *l = calloc(1, sizeof *l);
    if (!l || !(l->groups = calloc(WG_LOCALITY_MAX_GROUPS, sizeof *l->groups)))
        goto oom;
    l->mode = mode;
    l->overprovisioning = s->cfg->locality.overprovisioning;
    l->min_instances = s->cfg->locality.min_instances;
    /* Count, then fill (members stay in id order inside each group). */
    for (int pass = 0; pass < 2; pass++)
        for (uint32_t k = 0; k < s->n_members; k++) {
            struct wg_locality_cell *c = s->members[k].inst->cell;
            struct wg_locality_group *g = group_for(l, c->priority,
                                                    mode == WG_LOCALITY_OFF ? "" : c->zone);
            if (!g) {
                wg_warn("msg=\"more than %d zone/priority groups, locality off\" service=%s",
                        WG_LOCALITY_MAX_GROUPS, s->name);
                wg_locality_free(l);
                return 0;
            }
            if (pass == 0) {
                g->svc.n_members++;
                continue;
            }
            if (!g->svc.members &&
                !(g->svc.members = calloc(g->svc.n_members, sizeof *g->svc.members)))
                goto oom;
            g->svc.members[g->filled++] = s->members[k];
            g->svc.total_weight += s->members[k].weight;
            if (!add_cell(g, c))
                goto oom;
        }
    for (unsigned k = 0; k < l->n_groups; k++) {
        struct wg_locality_group *g = &l->groups[k];
        g->local = mode != WG_LOCALITY_OFF && *local_zone && strcmp(g->zone, local_zone) == 0;
    }
    if (l->n_groups == 1 && (mode != WG_LOCALITY_STRICT || l->groups[0].local)) {
        wg_locality_free(l);
        return 0;
    }
    qsort(l->groups, l->n_groups, sizeof *l->groups, group_cmp);
    for (unsigned k = 0; k < l->n_groups; k++) {
        struct wg_pool_service *g = &l->groups[k].svc;
        g->serial = s->serial ^ ((uint64_t)(k + 1) * 0x9e3779b97f4a7c15ULL);
        g->name = s->name;
        g->state = s->state;
        g->cfg = s->cfg;
        g->config = s->config;
        g->balance = s->balance;
        g->parent = s;
        if (g->balance->shared_new && !(g->balance_shared = g->balance->shared_new(g)))
            goto oom;
    }
    s->locality = l;
    return 0;
oom:
    wg_locality_free(l);
    return -1;
}

/* ---- picking ---- */

static unsigned group_healthy(const struct wg_locality_group *g)
{
    int h = 0;
    for (unsigned k = 0; k < g->n_cells; k++)
        h += atomic_load_explicit(&g->cells[k]->healthy, memory_order_relaxed);
    if (h < 0)
        return 0;
    return (unsigned)h > g->svc.n_members ? g->svc.n_members : (unsigned)h;
}

static void plan_of(const struct wg_locality *l, struct wg_locality_input *in, uint32_t *load,
                    bool *any)
{
    for (unsigned k = 0; k < l->n_groups; k++) {
        in[k].priority = l->groups[k].priority;
        in[k].local = l->groups[k].local;
        in[k].total = l->groups[k].svc.n_members;
        in[k].healthy = group_healthy(&l->groups[k]);
    }
    *any = wg_locality_plan(in, l->n_groups, l->mode, l->overprovisioning, l->min_instances,
                            load);
}

static const struct wg_member *pick_in(struct wg_pick *p, const struct wg_locality_group *g,
                                       unsigned healthy, bool allow_panic)
{
    const struct wg_pool_service *root = p->svc;
    unsigned threshold = root->cfg->panic_threshold;
    p->panic = allow_panic && threshold &&
               (uint64_t)healthy * 100 < (uint64_t)threshold * g->svc.n_members;
    p->svc = &g->svc;
    p->state = NULL;
    if (p->cache)
        wg_balance_cache_bind(p->cache, p);
    const struct wg_member *m = g->svc.balance->pick(p);
    p->svc = root;
    p->state = NULL;
    return m;
}

const struct wg_member *wg_locality_pick(struct wg_pick *p)
{
    const struct wg_locality *l = p->svc->locality;
    struct wg_locality_input in[WG_LOCALITY_MAX_GROUPS];
    uint32_t load[WG_LOCALITY_MAX_GROUPS];
    bool any;
    unsigned chosen = l->n_groups;
    const struct wg_member *m;

    plan_of(l, in, load, &any);
    if (any) {
        uint64_t sum = 0;
        for (unsigned k = 0; k < l->n_groups; k++)
            sum += load[k];
        uint64_t r = wg_rng_below(p->rng, sum ? sum : 1);
        for (chosen = 0; chosen + 1 < l->n_groups && r >= load[chosen]; chosen++)
            r -= load[chosen];
        if ((m = pick_in(p, &l->groups[chosen], in[chosen].healthy, true)))
            return m;
    }
    /* Fallbacks: other candidates' healthy members, then the panic rule. */
    for (int pass = 0; pass < 2; pass++)
        for (unsigned k = 0; k < l->n_groups; k++) {
            if (k == chosen || (l->mode == WG_LOCALITY_STRICT && !l->groups[k].local))
                continue;
            if ((m = pick_in(p, &l->groups[k], in[k].healthy, pass == 1)))
                return m;
        }
    p->panic = false;
    return NULL;
}

unsigned wg_locality_shares(const struct wg_pool_service *svc, struct wg_locality_share *out,
                            unsigned max)
{
    const struct wg_locality *l = svc->locality;
    struct wg_locality_input in[WG_LOCALITY_MAX_GROUPS];
    uint32_t load[WG_LOCALITY_MAX_GROUPS];
    bool any;

    if (!max)
        return 0;
    if (!l) {
        int h = atomic_load_explicit(&svc->state->healthy, memory_order_relaxed);
        /* One group: every member shares a zone unless zones are ignored. */
        const struct wg_locality_cell *c = svc->n_members ? svc->members[0].inst->cell : NULL;
        bool zones = c && svc->cfg->locality.mode != WG_LOCALITY_OFF;
        out[0] = (struct wg_locality_share){
            .zone = zones ? c->zone : "",
            .priority = c ? c->priority : 0,
            .local = zones && strcmp(c->zone, svc->config->cfg->zone) == 0,
            .total = svc->n_members,
            .healthy = h < 0 ? 0 : (unsigned)h,
            .load_ppm = h > 0 ? WG_LOCALITY_PPM : 0,
        };
        return 1;
    }
    plan_of(l, in, load, &any);
    unsigned n = l->n_groups < max ? l->n_groups : max;
    for (unsigned k = 0; k < n; k++)
        out[k] = (struct wg_locality_share){ l->groups[k].zone, l->groups[k].priority,
                                             l->groups[k].local, in[k].total, in[k].healthy,
                                             load[k] };
    return n;
}
