/* pool — see include/waygate/pool.h */
#include "waygate/pool.h"

#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "waygate/log.h"
#include "waygate/reclaim.h"
#include "waygate/sockaddr.h"

struct staged {
    char *name;
    struct wg_pool_service *svc;        /* NULL: remove the service */
};

struct publish_hook {
    void (*cb)(void *arg, struct wg_snapshot *s);
    void *arg;
};

/* Index of the staged services by name: open addressing over slots holding
 * index + 1 into wg_pool.staged (0 = free); a power of two, at most half
 * full. */
struct staged_index {
    uint32_t *slot;
    size_t cap;
};

struct wg_pool {
    struct wg_reclaim *rc;
    const struct wg_pool_policy *policy;
    void (*wake)(void *);
    void *wake_arg;
    _Atomic(struct wg_snapshot *) current;
    struct wg_config_ref *config;
    uint64_t generation;
    uint64_t serial;
    struct staged *staged;
    size_t n_staged, cap_staged;
    struct staged_index index;
    bool config_changed;
    struct publish_hook hooks[4];
    unsigned n_hooks;
};

const char *wg_health_name(enum wg_health h)
{
    static const char *const names[] = { "unknown", "healthy", "unhealthy", "ejected", "draining" };
    return (unsigned)h < 5 ? names[h] : "?";
}

uint64_t wg_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t wg_now_ms(void) { return wg_now_ns() / 1000000u; }

uint64_t wg_thread_cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- config references ---- */

struct wg_config_ref *wg_config_ref_new(struct wg_config *cfg)
{
    struct wg_config_ref *r = malloc(sizeof *r);
    if (!r)
        return NULL;
    atomic_init(&r->refs, 1);
    r->cfg = cfg;
    r->ext = NULL;
    r->ext_free = NULL;
    return r;
}

void wg_config_ref_get(struct wg_config_ref *r) { atomic_fetch_add(&r->refs, 1); }

void wg_config_ref_put(struct wg_config_ref *r)
{
    if (r && atomic_fetch_sub(&r->refs, 1) == 1) {
        if (r->ext_free)
            r->ext_free(r->ext);
        wg_config_free(r->cfg);
        free(r);
    }
}

/* ---- service state and instances ---- */

static struct wg_service_state *state_new(const char *name)
{
    size_t len = strlen(name);
    struct wg_service_state *s = calloc(1, sizeof *s + len + 1);
    if (!s)
        return NULL;
    atomic_init(&s->refs, 1);
    atomic_init(&s->healthy, 0);
    atomic_init(&s->panic_routed, 0);
    atomic_init(&s->ejected, 0);
    atomic_init(&s->ejections_refused, 0);
    memcpy(s->name, name, len + 1);
    return s;
}

const double wg_duration_le[WG_DURATION_BUCKETS] = { 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                                     0.5,   1,    2.5,   5,    10 };

void wg_service_observe_duration(struct wg_service_state *s, uint64_t us)
{
    int k = 0;
    while (k < WG_DURATION_BUCKETS && (double)us > wg_duration_le[k] * 1e6)
        k++;
    if (k < WG_DURATION_BUCKETS)
        atomic_fetch_add_explicit(&s->duration_buckets[k], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&s->duration_count, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&s->duration_sum_us, us, memory_order_relaxed);
}

static void state_unref(struct wg_service_state *s)
{
    if (!s || atomic_fetch_sub(&s->refs, 1) != 1)
        return;
    while (s->cells) {
        struct wg_locality_cell *c = s->cells;
        s->cells = c->next;
        free(c);
    }
    free(s);
}

/* The cell of (zone, priority), created on first use (control thread). */
static struct wg_locality_cell *state_cell(struct wg_service_state *s, const char *zone,
                                           unsigned priority)
{
    struct wg_locality_cell **at = &s->cells;

    for (; *at; at = &(*at)->next)
        if ((*at)->priority == priority && strcmp((*at)->zone, zone) == 0)
            return *at;
    struct wg_locality_cell *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->priority = priority;
    snprintf(c->zone, sizeof c->zone, "%s", zone);
    *at = c;                            /* readers reach cells only through instances */
    return c;
}

void wg_instance_ref(struct wg_instance *i) { atomic_fetch_add_explicit(&i->refs, 1, memory_order_relaxed); }

void wg_instance_unref(struct wg_instance *i)
{
    if (!i || atomic_fetch_sub_explicit(&i->refs, 1, memory_order_acq_rel) != 1)
        return;
    if (wg_instance_health(i) == WG_HEALTH_HEALTHY) {
        atomic_fetch_sub(&i->service->healthy, 1);
        atomic_fetch_sub(&i->cell->healthy, 1);
    }
    if (wg_instance_health(i) == WG_HEALTH_EJECTED)
        atomic_fetch_sub(&i->service->ejected, 1);
    i->magic = 0;
    state_unref(i->service);
    free(i);
}

/* Moves the healthy and ejected counts for a visible transition from `old`
 * to `h`; a change to a down state bumps down_generation (health.h). */
static void count_transition(struct wg_instance *i, int old, int h)
{
    if (old == WG_HEALTH_HEALTHY) {
        atomic_fetch_sub(&i->service->healthy, 1);
        atomic_fetch_sub(&i->cell->healthy, 1);
    }
    if (old == WG_HEALTH_EJECTED)
        atomic_fetch_sub(&i->service->ejected, 1);
    if (old == WG_HEALTH_DRAINING)
        atomic_store(&i->draining_since_ms, 0);
    if (h == WG_HEALTH_HEALTHY) {
        atomic_fetch_add(&i->service->healthy, 1);
        atomic_fetch_add(&i->cell->healthy, 1);
        atomic_store(&i->healthy_since_ms, wg_now_ms());
    }
    if (h == WG_HEALTH_EJECTED)
        atomic_fetch_add(&i->service->ejected, 1);
    if (h == WG_HEALTH_DRAINING)
        atomic_store(&i->draining_since_ms, wg_now_ms());
    if (h == WG_HEALTH_UNHEALTHY || h == WG_HEALTH_EJECTED || h == WG_HEALTH_DRAINING)
        atomic_fetch_add(&i->down_generation, 1);
    /* After the state itself: a worker that sees the new generation sees
     * the new state when it rebuilds (balance.h). */
    atomic_fetch_add_explicit(&i->service->health_generation, 1, memory_order_release);
}

enum wg_health wg_instance_set_health(struct wg_instance *i, enum wg_health h)
{
    int old = atomic_load(&i->health), next;
    do {
        if (old & WG_HEALTH_ADMIN_BIT)      /* visible state stays draining */
            next = h == WG_HEALTH_DRAINING ? WG_HEALTH_DRAINING
                   : WG_HEALTH_DRAINING | WG_HEALTH_ADMIN_BIT | ((int)h << WG_HEALTH_SAVED_SHIFT);
        else if (old == (int)h || old == WG_HEALTH_DRAINING)
            return (enum wg_health)old;
        else
            next = (int)h;
    } while (!atomic_compare_exchange_weak(&i->health, &old, next));
    if (old & WG_HEALTH_ADMIN_BIT) {
        if (next == WG_HEALTH_DRAINING)
            atomic_store(&i->admin_drained, 0);
        return WG_HEALTH_DRAINING;
    }
    count_transition(i, old, (int)h);
    return (enum wg_health)old;
}

bool wg_instance_admin_drain(struct wg_instance *i, bool drain)
{
    int old = atomic_load(&i->health), next;
    do {
        if (old == WG_HEALTH_DRAINING)      /* removed from the registry: final */
            return drain;
        if (drain == !!(old & WG_HEALTH_ADMIN_BIT))
            return true;
        next = drain ? WG_HEALTH_DRAINING | WG_HEALTH_ADMIN_BIT | (old << WG_HEALTH_SAVED_SHIFT)
                     : (old >> WG_HEALTH_SAVED_SHIFT) & WG_HEALTH_VISIBLE_MASK;
    } while (!atomic_compare_exchange_weak(&i->health, &old, next));
    atomic_store(&i->admin_drained, drain ? 1 : 0);
    if (drain)
        count_transition(i, old, WG_HEALTH_DRAINING);
    else
        count_transition(i, WG_HEALTH_DRAINING, next);
    return true;
}

bool wg_instance_cas_health(struct wg_instance *i, enum wg_health from, enum wg_health to)
{
    int old = atomic_load(&i->health), next;
    if (to == WG_HEALTH_DRAINING || from == to)
        return false;
    do {
        if (old == WG_HEALTH_DRAINING)      /* removed from the registry: final */
            return false;
        if (old & WG_HEALTH_ADMIN_BIT) {
            if (((old >> WG_HEALTH_SAVED_SHIFT) & WG_HEALTH_VISIBLE_MASK) != (int)from)
                return false;
            next = WG_HEALTH_DRAINING | WG_HEALTH_ADMIN_BIT | ((int)to << WG_HEALTH_SAVED_SHIFT);
        } else {
            if (old != (int)from)
                return false;
            next = (int)to;
        }
    } while (!atomic_compare_exchange_weak(&i->health, &old, next));
    if (!(old & WG_HEALTH_ADMIN_BIT))
        count_transition(i, old, (int)to);
    return true;
}

/* The compact form of a sockaddr (zeroed first, so that memcmp compares). */
static void inst_addr_set(struct wg_inst_addr *a, const struct sockaddr_storage *ss,
                          socklen_t len)
{
    memset(a, 0, sizeof *a);
    a->family = ss->ss_family;
    if (ss->ss_family == AF_INET && len >= sizeof(struct sockaddr_in)) {
        const struct sockaddr_in *in4 = (const struct sockaddr_in *)ss;
        a->port = in4->sin_port;
        memcpy(a->ip, &in4->sin_addr, 4);
    } else if (ss->ss_family == AF_INET6 && len >= sizeof(struct sockaddr_in6)) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)ss;
        a->port = in6->sin6_port;
        a->scope_id = in6->sin6_scope_id;
        memcpy(a->ip, &in6->sin6_addr, 16);
    }
}

socklen_t wg_instance_sockaddr(const struct wg_instance *i, struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof *ss);
    ss->ss_family = i->addr.family;
    if (i->addr.family == AF_INET) {
        struct sockaddr_in *in4 = (struct sockaddr_in *)ss;
        in4->sin_port = i->addr.port;
        memcpy(&in4->sin_addr, i->addr.ip, 4);
        return sizeof *in4;
    }
    if (i->addr.family == AF_INET6) {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
        in6->sin6_port = i->addr.port;
        in6->sin6_scope_id = i->addr.scope_id;
        memcpy(&in6->sin6_addr, i->addr.ip, 16);
        return sizeof *in6;
    }
    return 0;
}

static struct wg_instance *instance_new(struct wg_service_state *st, struct wg_locality_cell *cell,
                                        const struct wg_record *r,
                                        const struct sockaddr_storage *addr, socklen_t addrlen,
                                        enum wg_upstream_protocol protocol,
                                        const struct wg_service_config *cfg)
{
    size_t idlen = strlen(r->id);
    struct wg_instance *i = calloc(1, sizeof *i + idlen + 1);
    if (!i)
        return NULL;
    memcpy(i->id, r->id, idlen + 1);
    i->magic = WG_INSTANCE_MAGIC;
    atomic_init(&i->refs, 1);
    atomic_fetch_add(&st->refs, 1);
    i->service = st;
    i->cell = cell;
    inst_addr_set(&i->addr, addr, addrlen);
    i->protocol = (uint8_t)protocol;
    wg_sockaddr_text((const struct sockaddr *)addr, i->addr_text, sizeof i->addr_text);
    atomic_init(&i->health, WG_HEALTH_UNKNOWN);
    /* Without active probing an instance is routable from the start (§9). */
    if (cfg->health_check.type == WG_HEALTH_NONE)
        wg_instance_set_health(i, WG_HEALTH_HEALTHY);
    return i;
}

/* ---- service versions ---- */

static void service_unref(struct wg_pool_service *s)
{
    if (!s || atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) != 1)
        return;
    if (s->policy)
        s->policy->release(s);
    for (uint32_t k = 0; k < s->n_members; k++) {
        free(s->members[k].metadata);
        free(s->members[k].record);
        wg_instance_unref(s->members[k].inst);
    }
    free(s->members);
    state_unref(s->state);
    wg_config_ref_put(s->config);
    free(s);
}

/* A locality group is owned by its parent: references go to the parent. */
void wg_pool_service_ref(struct wg_pool_service *s)
{
    atomic_fetch_add(&(s->parent ? (struct wg_pool_service *)s->parent : s)->refs, 1);
}

void wg_pool_service_unref(struct wg_pool_service *s)
{
    service_unref(s && s->parent ? (struct wg_pool_service *)s->parent : s);
}

static const struct wg_member *find_member(const struct wg_pool_service *s, const char *id)
{
    size_t lo = 0, hi = s ? s->n_members : 0;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strcmp(s->members[mid].inst->id, id);
        if (c == 0)
            return &s->members[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

static bool same_identity(const struct wg_instance *i, const struct sockaddr_storage *addr,
                          socklen_t addrlen, enum wg_upstream_protocol protocol)
{
    struct wg_inst_addr a;
    inst_addr_set(&a, addr, addrlen);
    return memcmp(&i->addr, &a, sizeof a) == 0 && i->protocol == (uint8_t)protocol;
}

/* A copy of what the record said beyond the plain address, or NULL when it
 * said nothing more. false when out of memory. */
static bool member_record(struct wg_member *m, const struct wg_record *r)
{
    if (!r->protocol && !r->grpc_endpoint && !r->grpc_addrlen)
        return true;
    if (!(m->record = calloc(1, sizeof *m->record)))
        return false;
    m->record->protocol = r->protocol;
    m->record->grpc_endpoint = r->grpc_endpoint;
    m->record->addrlen = r->addrlen;
    memcpy(&m->record->addr, &r->addr, r->addrlen);
    m->record->grpc_addrlen = r->grpc_addrlen;
    memcpy(&m->record->grpc_addr, &r->grpc_addr, r->grpc_addrlen);
    return true;
}

/* Build a new version of a service from records sorted by id, reusing the
 * instances of `prev` that keep their identity. */
static struct wg_pool_service *service_build(struct wg_pool *p, const char *name,
                                             const struct wg_pool_service *prev,
                                             const struct wg_record *recs, size_t n)
{
    struct wg_pool_service *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    atomic_init(&s->refs, 1);
    s->serial = ++p->serial;
    s->state = prev ? prev->state : state_new(name);
    if (!s->state)
        goto fail;
    if (prev)
        atomic_fetch_add(&s->state->refs, 1);
    s->name = s->state->name;
    wg_config_ref_get(p->config);
    s->config = p->config;
    s->cfg = wg_config_service(p->config->cfg, name);
    s->members = n ? calloc(n, sizeof *s->members) : NULL;
    if (n && !s->members)
        goto fail;
    for (size_t k = 0; k < n; k++) {
        const struct wg_record *r = &recs[k];
        if (s->n_members && strcmp(s->members[s->n_members - 1].inst->id, r->id) == 0) {
            wg_warn("msg=\"duplicate instance id, first kept\" service=%s id=%s", name, r->id);
            continue;
        }
        const struct sockaddr_storage *addr;
        socklen_t addrlen;
        enum wg_upstream_protocol proto;
        if (!wg_record_select(r, s->cfg->upstream.protocol, s->cfg->tls.enabled, &addr, &addrlen,
                              &proto)) {
            wg_warn("msg=\"instance skipped: its record offers only a grpc:// endpoint and the "
                    "service's upstream.protocol is http1\" service=%s id=%s", name, r->id);
            continue;
        }
        const struct wg_member *old = find_member(prev, r->id);
        struct wg_instance *inst;
        char zone[WG_ZONE_MAX + 1];
        unsigned priority;
        wg_record_locality(r->metadata, zone, &priority);
        struct wg_locality_cell *cell = state_cell(s->state, zone, priority);
        if (!cell)
            goto fail;
        if (old && same_identity(old->inst, addr, addrlen, proto) && old->inst->cell == cell &&
            !wg_instance_removed(old->inst)) {
            inst = old->inst;
            wg_instance_ref(inst);
        } else if (!(inst = instance_new(s->state, cell, r, addr, addrlen, proto, s->cfg))) {
            goto fail;
        }
        struct wg_member *m = &s->members[s->n_members++];
        m->inst = inst;
        m->weight = r->weight;
        m->metadata = r->metadata ? strdup(r->metadata) : NULL;
        if (!member_record(m, r))
            goto fail;
        s->total_weight += r->weight;
    }
    s->policy = p->policy;
    if (s->policy->build(s, p->config->cfg->zone) < 0)
        goto fail;
    return s;
fail:
    wg_error("msg=\"out of memory building service\" service=%s", name);
    service_unref(s);
    return NULL;
}

/* Instances of `old` that `new` no longer holds start draining. */
static void drain_removed(const struct wg_pool_service *old, const struct wg_pool_service *new)
{
    if (!old)
        return;
    for (uint32_t k = 0; k < old->n_members; k++) {
        struct wg_instance *i = old->members[k].inst;
        const struct wg_member *m = find_member(new, i->id);
        if (m && m->inst == i)
            continue;
        if (wg_instance_set_health(i, WG_HEALTH_DRAINING) != WG_HEALTH_DRAINING)
            wg_info("msg=\"instance removed, draining\" service=%s id=%s address=%s",
                    old->name, i->id, i->addr_text);
    }
}

/* ---- snapshots ---- */

/* A snapshot's references on its services are held by chunks of up to
 * WG_SVC_CHUNK services (in no order), shared by consecutive snapshots: a
 * snapshot references each of its chunks. Publishing a change rebuilds the
 * chunks that held a replaced or removed version, and the last chunk, which
 * takes the new versions: every chunk but the last one is full, so one
 * changed service among 10,000 costs ~80 chunk references and up to two
 * chunks of 128 service references, where a reference per service cost
 * 10,000 atomic adds (and as many subtractions at reclaim) on as many
 * scattered cache lines. */
static void chunk_unref(struct wg_svc_chunk *c)
{
    if (!c || atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) != 1)
        return;
    for (uint32_t k = 0; k < c->n; k++)
        service_unref(c->v[k]);
    free(c);
}

static void snapshot_free(struct wg_snapshot *s)
{
    for (size_t k = 0; k < s->n_chunks; k++)
        chunk_unref(s->chunks[k]);
    free(s->chunks);
    free(s->services);
    free((void *)s->changes);
    wg_config_ref_put(s->config);
    s->magic = 0;
    free(s);
}

void wg_snapshot_ref(struct wg_snapshot *s) { atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed); }

void wg_snapshot_unref(struct wg_snapshot *s)
{
    if (s && atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) == 1)
        snapshot_free(s);
}

static void snapshot_unref_cb(void *s) { wg_snapshot_unref(s); }

const struct wg_pool_service *wg_snapshot_service(const struct wg_snapshot *s, const char *name)
{
    size_t lo = 0, hi = s->n_services;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strcmp(s->services[mid]->name, name);
        if (c == 0)
            return s->services[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

struct wg_snapshot *wg_pool_current(struct wg_pool *p)
{
    return atomic_load_explicit(&p->current, memory_order_acquire);
}

struct wg_snapshot *wg_pool_published(struct wg_pool *p) { return atomic_load(&p->current); }
bool wg_pool_has_snapshot(struct wg_pool *p) { return atomic_load(&p->current) != NULL; }

/* ---- the pool ---- */

struct wg_pool *wg_pool_new(struct wg_reclaim *rc, const struct wg_pool_policy *policy,
                            void (*wake)(void *), void *wake_arg)
{
    struct wg_pool *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->rc = rc;
    p->policy = policy;
    p->wake = wake;
    p->wake_arg = wake_arg;
    atomic_init(&p->current, NULL);
    return p;
}

static void staged_clear(struct wg_pool *p)
{
    /* The slots the staged names took, not the whole index: after the
     * initial list it has room for every service (10,000: 128 KiB), and a
     * watch event stages one. Every occupied slot is a staged name's, so
     * emptying the run from each name's home slot empties the index. */
    size_t mask = p->index.cap - 1;
    for (size_t k = 0; p->index.slot && k < p->n_staged; k++)
        for (size_t h = wg_record_name_hash(p->staged[k].name) & mask; p->index.slot[h];
             h = (h + 1) & mask)
            p->index.slot[h] = 0;
    for (size_t k = 0; k < p->n_staged; k++) {
        free(p->staged[k].name);
        service_unref(p->staged[k].svc);
    }
    p->n_staged = 0;
}

void wg_pool_free(struct wg_pool *p)
{
    if (!p)
        return;
    staged_clear(p);
    free(p->staged);
    free(p->index.slot);
    struct wg_snapshot *s = atomic_exchange(&p->current, NULL);
    if (s)
        wg_snapshot_unref(s);
    wg_config_ref_put(p->config);
    free(p);
}

void wg_pool_on_publish(struct wg_pool *p, void (*cb)(void *, struct wg_snapshot *), void *arg)
{
    if (p->n_hooks < sizeof p->hooks / sizeof p->hooks[0])
        p->hooks[p->n_hooks++] = (struct publish_hook){ cb, arg };
}

static struct staged *staged_find(struct wg_pool *p, const char *name)
{
    if (!p->n_staged)
        return NULL;
    size_t mask = p->index.cap - 1;
    for (size_t h = wg_record_name_hash(name) & mask; p->index.slot[h]; h = (h + 1) & mask) {
        struct staged *st = &p->staged[p->index.slot[h] - 1];
        if (strcmp(st->name, name) == 0)
            return st;
    }
    return NULL;
}

/* Index staged[k]; grows the index (and re-indexes) when half full. */
static int staged_index_add(struct wg_pool *p, size_t k)
{
    if ((p->n_staged + 1) * 2 > p->index.cap) {
        size_t cap = p->index.cap ? p->index.cap * 2 : 64;
        uint32_t *slot = calloc(cap, sizeof *slot);
        if (!slot)
            return -1;
        free(p->index.slot);
        p->index.slot = slot;
        p->index.cap = cap;
        for (size_t j = 0; j < p->n_staged; j++)
            if (j != k && staged_index_add(p, j) < 0)
                return -1;
    }
    size_t mask = p->index.cap - 1, h = wg_record_name_hash(p->staged[k].name) & mask;
    while (p->index.slot[h])
        h = (h + 1) & mask;
    p->index.slot[h] = (uint32_t)k + 1;
    return 0;
}

/* The latest version of a service: staged if any, else published. */
static const struct wg_pool_service *latest(struct wg_pool *p, const char *name)
{
    struct staged *st = staged_find(p, name);
    if (st)
        return st->svc;
    struct wg_snapshot *cur = atomic_load(&p->current);
    return cur ? wg_snapshot_service(cur, name) : NULL;
}

/* Would record `r` give member `m` of a service under `cfg` again: the
 * same address and protocol, and the same record beyond the address? */
static bool same_pick(const struct wg_member *m, const struct wg_record *r,
                      const struct wg_service_config *cfg)
{
    const struct sockaddr_storage *addr;
    socklen_t addrlen;
    enum wg_upstream_protocol proto;
    if (!wg_record_select(r, cfg->upstream.protocol, cfg->tls.enabled, &addr, &addrlen, &proto) ||
        !same_identity(m->inst, addr, addrlen, proto))
        return false;
    const struct wg_member_record *mr = m->record;
    if (!mr)
        return !r->protocol && !r->grpc_endpoint && !r->grpc_addrlen;
    return mr->protocol == r->protocol && mr->grpc_endpoint == r->grpc_endpoint &&
           mr->addrlen == r->addrlen && memcmp(&mr->addr, &r->addr, r->addrlen) == 0 &&
           mr->grpc_addrlen == r->grpc_addrlen &&
           memcmp(&mr->grpc_addr, &r->grpc_addr, r->grpc_addrlen) == 0;
}

/* `recs` (sorted by id) are exactly what `svc` holds, on the current config. */
static bool same_records(const struct wg_pool *p, const struct wg_pool_service *svc,
                         const struct wg_record *recs, size_t n)
{
    if (svc->config != p->config || svc->n_members != n)
        return false;
    for (size_t k = 0; k < n; k++) {
        const struct wg_member *m = &svc->members[k];
        const char *a = m->metadata, *b = recs[k].metadata;
        if (m->weight != recs[k].weight || strcmp(m->inst->id, recs[k].id) != 0 ||
            !same_pick(m, &recs[k], svc->cfg) || wg_instance_removed(m->inst) ||
            (a || b ? !a || !b || strcmp(a, b) != 0 : false))
            return false;
    }
    return true;
}

int wg_pool_stage_service(struct wg_pool *p, const char *service,
                          const struct wg_record *recs, size_t n)
{
    if (!p->config)
        return -1;
    const struct wg_pool_service *prev = latest(p, service);
    if (!prev && n == 0)
        return 0;
    /* Unchanged (a re-list, say): the published version stays, with the
     * workers' states and the policy data built for it. */
    if (prev && n && !staged_find(p, service) && same_records(p, prev, recs, n))
        return 0;
    struct wg_pool_service *svc = NULL;
    if (n && !(svc = service_build(p, service, prev, recs, n)))
        return -1;
    struct staged *st = staged_find(p, service);
    if (!st) {
        if (p->n_staged == p->cap_staged) {
            size_t cap = p->cap_staged ? p->cap_staged * 2 : 16;
            struct staged *v = realloc(p->staged, cap * sizeof *v);
            if (!v)
                goto fail;
            p->staged = v;
            p->cap_staged = cap;
        }
        st = &p->staged[p->n_staged];
        if (!(st->name = strdup(service)))
            goto fail;
        st->svc = NULL;
        if (staged_index_add(p, p->n_staged) < 0) {
            free(st->name);
            goto fail;
        }
        p->n_staged++;
    }
    service_unref(st->svc);
    st->svc = svc;
    return 0;
fail:
    service_unref(svc);
    return -1;
}

static int cmp_staged(const void *a, const void *b)
{
    return strcmp(((const struct staged *)a)->name, ((const struct staged *)b)->name);
}

/* The chunks of `s` (whose services and changes are set; `cur` is the
 * published snapshot or NULL): cur's chunks that hold no replaced version,
 * one more reference each, then the services of the others that stay and
 * the new versions packed into new chunks. -1 when out of memory (nothing
 * changed). */
static int snapshot_chunks(struct wg_snapshot *s, const struct wg_snapshot *cur)
{
    size_t n_cur = cur ? cur->n_chunks : 0, loose = 0, kept = n_cur;
    for (size_t k = 0; k < s->n_changes; k++) {
        const struct wg_pool_service *old = s->changes[k].old;
        if (old && !old->chunk->touched) {
            old->chunk->touched = true;
            kept--;
        }
        loose += s->changes[k].new != NULL;
    }
    struct wg_svc_chunk *last = n_cur ? cur->chunks[n_cur - 1] : NULL;
    if (last && !last->touched && last->n < WG_SVC_CHUNK && s->n_changes) {
        last->touched = true;           /* repacked with what changed: only the */
        kept--;                         /* last chunk is ever partial */
    }
    for (size_t k = 0; k < n_cur; k++)
        if (cur->chunks[k]->touched)
            loose += cur->chunks[k]->n;     /* less the leaving ones, below */
    for (size_t k = 0; k < s->n_changes; k++)
        loose -= s->changes[k].old != NULL;
    size_t fresh = (loose + WG_SVC_CHUNK - 1) / WG_SVC_CHUNK;
    s->chunks = malloc((kept + fresh ? kept + fresh : 1) * sizeof *s->chunks);
    for (size_t k = 0; s->chunks && k < fresh; k++)
        if (!(s->chunks[kept + k] = malloc(sizeof **s->chunks))) {
            while (k--)
                free(s->chunks[kept + k]);
            free(s->chunks);
            s->chunks = NULL;
        }
    if (!s->chunks) {
        for (size_t k = 0; k < n_cur; k++)
            cur->chunks[k]->touched = false;
        return -1;
    }
    for (size_t k = 0; k < fresh; k++) {
        atomic_init(&s->chunks[kept + k]->refs, 1);
        s->chunks[kept + k]->n = 0;
        s->chunks[kept + k]->touched = false;
    }
    /* The leaving versions: out of their chunk (one that stays in cur). */
    for (size_t k = 0; k < s->n_changes; k++)
        if (s->changes[k].old)
            ((struct wg_pool_service *)s->changes[k].old)->chunk = NULL;
    size_t at = kept;
#define PACK(svc)                                                                           \
    do {                                                                                    \
        struct wg_svc_chunk *c_ = s->chunks[at];                                            \
        wg_pool_service_ref(svc);                                                           \
        (svc)->chunk = c_;                                                                  \
        c_->v[c_->n++] = (svc);                                                             \
        if (c_->n == WG_SVC_CHUNK)                                                          \
            at++;                                                                           \
    } while (0)
    s->n_chunks = 0;
    for (size_t k = 0; k < n_cur; k++) {
        struct wg_svc_chunk *c = cur->chunks[k];
        if (!c->touched) {
            atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
            s->chunks[s->n_chunks++] = c;
            continue;
        }
        c->touched = false;
        for (uint32_t m = 0; m < c->n; m++)
            if (c->v[m]->chunk == c)        /* not leaving */
                PACK(c->v[m]);
    }
    for (size_t k = 0; k < s->n_changes; k++)
        if (s->changes[k].new)
            PACK((struct wg_pool_service *)s->changes[k].new);
#undef PACK
    s->n_chunks = kept + fresh;
    return 0;
}

/* The next list of services: the published ones merged with the staged
 * ones (both in name order), O(services + staged x log staged) pointer
 * copies, no reference per service (snapshot_chunks). Unchanged services
 * are the same objects, shared with `cur`. Sorts p->staged (the index is
 * stale afterwards: only commit calls this, and clears both). */
static struct wg_snapshot *snapshot_next(struct wg_pool *p, struct wg_snapshot *cur)
{
    struct wg_snapshot *s = calloc(1, sizeof *s);
    size_t n_cur = cur ? cur->n_services : 0, cap = n_cur + p->n_staged;
    struct wg_snapshot_change *ch = NULL;
    if (!s || !(s->services = malloc((cap ? cap : 1) * sizeof *s->services)) ||
        !(ch = malloc((p->n_staged ? p->n_staged : 1) * sizeof *ch))) {
        if (s)
            free(s->services);
        free(s);
        return NULL;
    }
    s->magic = WG_SNAPSHOT_MAGIC;
    atomic_init(&s->refs, 1);
    if (p->n_staged > 1)
        qsort(p->staged, p->n_staged, sizeof *p->staged, cmp_staged);
    size_t i = 0;
    for (size_t j = 0; j <= p->n_staged; j++) {
        /* The published services before staged[j] (all that remain after
         * the last), found by binary search: O(staged x log services)
         * compares, whatever the number of services. */
        size_t end = n_cur;
        if (j < p->n_staged) {
            size_t lo = i, hi = n_cur;
            while (lo < hi) {
                size_t mid = (lo + hi) / 2;
                if (strcmp(cur->services[mid]->name, p->staged[j].name) < 0)
                    lo = mid + 1;
                else
                    hi = mid;
            }
            end = lo;
        }
        if (end > i)
            memcpy(s->services + s->n_services, cur->services + i, (end - i) * sizeof *s->services);
        s->n_services += end - i;
        i = end;
        if (j == p->n_staged)
            break;
        const struct wg_pool_service *old = NULL;
        if (i < n_cur && strcmp(cur->services[i]->name, p->staged[j].name) == 0)
            old = cur->services[i++];       /* replaced (or removed) */
        struct wg_pool_service *svc = p->staged[j].svc;
        if (svc)
            s->services[s->n_services++] = svc;
        if (old || svc)
            ch[s->n_changes++] = (struct wg_snapshot_change){ old, svc };
    }
    s->changes = ch;
    if (snapshot_chunks(s, cur) < 0) {
        free(s->services);
        free(ch);
        free(s);
        return NULL;
    }
    wg_config_ref_get(p->config);
    s->config = p->config;
    return s;
}

uint64_t wg_pool_commit(struct wg_pool *p)
{
    struct wg_snapshot *cur = atomic_load(&p->current);
    if (!p->n_staged && !p->config_changed && cur)
        return 0;
    struct wg_snapshot *s = snapshot_next(p, cur);
    if (!s) {
        wg_error("msg=\"out of memory publishing snapshot\"");
        staged_clear(p);
        return 0;
    }
    for (size_t k = 0; k < s->n_changes; k++)  /* before the publish: workers sweep */
        if (s->changes[k].old)                    /* their states by it */
            atomic_store_explicit(&((struct wg_pool_service *)s->changes[k].old)->retired, true,
                                  memory_order_relaxed);
    staged_clear(p);
    p->config_changed = false;
    s->generation = ++p->generation;
    s->created_ns = wg_now_ns();
    atomic_store_explicit(&p->current, s, memory_order_release);
    /* Removed instances start draining only once the snapshot that replaces
     * them is out: marked before, a worker still reading the old snapshot
     * found its one instance draining and the one that replaces it not yet
     * there ("no routable instance" for a put b + delete a). */
    for (size_t k = 0; k < s->n_changes; k++)
        drain_removed(s->changes[k].old, s->changes[k].new);
    if (cur)
        wg_reclaim_retire(p->rc, cur, snapshot_unref_cb);
    for (unsigned k = 0; k < p->n_hooks; k++)
        p->hooks[k].cb(p->hooks[k].arg, s);
    if (p->wake)
        p->wake(p->wake_arg);
    return s->generation;
}

void wg_pool_set_config(struct wg_pool *p, struct wg_config_ref *config)
{
    wg_config_ref_get(config);
    wg_config_ref_put(p->config);
    p->config = config;
    /* Before the first snapshot only the registry may publish (readiness). */
    struct wg_snapshot *cur = atomic_load(&p->current);
    if (!cur)
        return;
    p->config_changed = true;
    /* Rebuild every service on the new settings, same records. */
    for (size_t k = 0; cur && k < cur->n_services; k++) {
        const struct wg_pool_service *svc = cur->services[k];
        if (staged_find(p, svc->name))
            continue;
        struct wg_record *recs = calloc(svc->n_members ? svc->n_members : 1, sizeof *recs);
        if (!recs)
            continue;
        for (uint32_t m = 0; m < svc->n_members; m++) {
            struct wg_instance *i = svc->members[m].inst;
            recs[m].id = i->id;
            recs[m].addrlen = wg_instance_sockaddr(i, &recs[m].addr);
            recs[m].weight = svc->members[m].weight;
            recs[m].metadata = svc->members[m].metadata;
            const struct wg_member_record *mr = svc->members[m].record;
            if (mr) {                   /* the record as it came: pick again */
                memcpy(&recs[m].addr, &mr->addr, mr->addrlen);
                recs[m].addrlen = mr->addrlen;
                recs[m].protocol = mr->protocol;
                recs[m].grpc_endpoint = mr->grpc_endpoint;
                memcpy(&recs[m].grpc_addr, &mr->grpc_addr, mr->grpc_addrlen);
                recs[m].grpc_addrlen = mr->grpc_addrlen;
            }
        }
        wg_pool_stage_service(p, svc->name, recs, svc->n_members);
        free(recs);
    }
    wg_pool_commit(p);
}

/* `all` is sorted by service: binary search. */
static bool records_have_service(const struct wg_record_set *all, const char *name)
{
    size_t lo = 0, hi = all->n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strcmp(all->v[mid].service, name);
        if (c == 0)
            return true;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return false;
}

int wg_pool_replace_all(struct wg_pool *p, const struct wg_record_set *all)
{
    int rc = 0;
    size_t k = 0;
    while (k < all->n) {
        size_t end = k + 1;
        while (end < all->n && strcmp(all->v[end].service, all->v[k].service) == 0)
            end++;
        if (wg_pool_stage_service(p, all->v[k].service, &all->v[k], end - k) < 0)
            rc = -1;
        k = end;
    }
    /* Services that are gone. */
    struct wg_snapshot *cur = atomic_load(&p->current);
    for (size_t s = 0; cur && s < cur->n_services; s++) {
        const char *name = cur->services[s]->name;
        if (!records_have_service(all, name) && wg_pool_stage_service(p, name, NULL, 0) < 0)
            rc = -1;
    }
    wg_pool_commit(p);
    return rc;
}

size_t wg_pool_reclaim(struct wg_pool *p) { return wg_reclaim_poll(p->rc); }
