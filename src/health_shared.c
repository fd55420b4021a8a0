/* health_shared — one prober per zone (see part 4 of include/waygate/health.h).
 *
 * Control thread: the election (a txn under the fleet's lease), the watch of
 * <prefix>health/<zone>/ (the prober key and the published states), the
 * table of published states (applied to instances that appear later), and
 * the publisher (a txn of the queued transitions). The prober thread only
 * reads g_following and queues transitions. */
#include "waygate/health.h"

#include <event2/event.h>
#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "waygate/etcd_client.h"
#include "waygate/fleet.h"
#include "waygate/log.h"
#include "waygate/pool.h"
#include "waygate/record.h"

#define TICK_MS 250
#define PUBLISH_BATCH 64                /* puts per transaction (etcd allows 128) */
#define RECONCILE_TICKS 16              /* the prober re-checks what is published: 4 s */

enum role { ROLE_ALONE, ROLE_FOLLOWER, ROLE_PROBER };
static const char *const role_names[] = { "alone", "follower", "prober" };

static _Atomic int g_following;         /* role == ROLE_FOLLOWER */
static _Atomic int g_leading;           /* role == ROLE_PROBER */

struct pending {                        /* a transition to publish */
    char *service, *id, *address;
    enum wg_health state;
};

struct state_entry {                    /* a published state */
    char *key;                          /* "<service>/<id>" */
    char *address;
    enum wg_health state;
};

struct wg_health_shared {
    struct event_base *base;
    struct wg_pool *pool;
    struct wg_fleet *fleet;
    char *name, *prefix, *election_key, *election_b64;
    enum role role;
    int64_t role_lease;                 /* the lease our prober key lives under */
    bool leader_present;                /* a prober key exists (as last seen) */
    char leader[130];
    struct wg_etcd_call *campaign, *watch, *publish;
    size_t ep;                          /* endpoint of the next call (rotates on failures) */
    bool listing;
    int64_t revision;
    struct event *tick, *mail;
    unsigned ticks;
    /* the queue from the prober thread */
    pthread_mutex_t lock;
    struct pending *q;
    size_t n_q, cap_q;
    /* published states */
    struct state_entry *states;
    size_t n_states, cap_states;
    uint32_t *index;                    /* open addressing: 1 + position in states, 0 = free */
    size_t cap_index;                   /* a power of two, > 2 x n_states */
};

static struct wg_health_shared *g_shared;   /* for the prober thread's queue */

bool wg_health_shared_following(void)
{
    return atomic_load_explicit(&g_following, memory_order_relaxed);
}

void wg_health_shared_transition(const char *svc, const struct wg_instance *i, enum wg_health h)
{
    struct wg_health_shared *s = g_shared;
    if (!s || !atomic_load_explicit(&g_leading, memory_order_relaxed))
        return;
    struct pending p = { strdup(svc), strdup(i->id), strdup(i->addr_text), h };
    pthread_mutex_lock(&s->lock);
    bool ok = p.service && p.id && p.address;
    if (ok && s->n_q == s->cap_q) {
        size_t cap = s->cap_q ? s->cap_q * 2 : 64;
        struct pending *v = realloc(s->q, cap * sizeof *v);
        if (v) {
            s->q = v;
            s->cap_q = cap;
        } else {
            ok = false;
        }
    }
    if (ok)
        s->q[s->n_q++] = p;
    pthread_mutex_unlock(&s->lock);
    if (!ok) {
        free(p.service);
        free(p.id);
        free(p.address);
        wg_warn("msg=\"shared health: out of memory, a transition is not published\"");
        return;
    }
    event_active(s->mail, 0, 0);
}

/* ---- the table of published states ---- */

static struct state_entry *state_find(struct wg_health_shared *s, const char *key)
{
    if (!s->cap_index)
        return NULL;
    for (size_t h = wg_record_name_hash(key) & (s->cap_index - 1); s->index[h];
         h = (h + 1) & (s->cap_index - 1))
        if (strcmp(s->states[s->index[h] - 1].key, key) == 0)
            return &s->states[s->index[h] - 1];
    return NULL;
}

/* Index states[n_states - 1] (growing the index when half full). */
static bool index_add(struct wg_health_shared *s)
{
    if (s->n_states * 2 > s->cap_index) {
        size_t cap = s->cap_index ? s->cap_index * 2 : 128;
        uint32_t *v = calloc(cap, sizeof *v);
        if (!v)
            return false;
        free(s->index);
        s->index = v;
        s->cap_index = cap;
        for (size_t k = 0; k + 1 < s->n_states; k++) {
            size_t h = wg_record_name_hash(s->states[k].key) & (cap - 1);
            while (v[h])
                h = (h + 1) & (cap - 1);
            v[h] = (uint32_t)k + 1;
        }
    }
    size_t h = wg_record_name_hash(s->states[s->n_states - 1].key) & (s->cap_index - 1);
    while (s->index[h])
        h = (h + 1) & (s->cap_index - 1);
    s->index[h] = (uint32_t)s->n_states;
    return true;
}

/* The instance <service>/<id> of the published snapshot at `address`. */
static struct wg_instance *instance_of(struct wg_health_shared *s, const char *key,
                                       const char *address)
{
    struct wg_snapshot *snap = wg_pool_published(s->pool);
    const char *slash = strchr(key, '/');
    if (!snap || !slash)
        return NULL;
    char svc[256];
    size_t n = (size_t)(slash - key);
    if (n >= sizeof svc)
        return NULL;
    memcpy(svc, key, n);
    svc[n] = '\0';
    const struct wg_pool_service *ps = wg_snapshot_service(snap, svc);
    if (!ps || !ps->cfg->health_check.shared)
        return NULL;
    uint32_t lo = 0, hi = ps->n_members;    /* members are sorted by id */
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        int c = strcmp(ps->members[mid].inst->id, slash + 1);
        if (c == 0)
            return strcmp(ps->members[mid].inst->addr_text, address) == 0 ? ps->members[mid].inst
                                                                          : NULL;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

static void apply_entry(struct wg_health_shared *s, const struct state_entry *e)
{
    struct wg_instance *i = instance_of(s, e->key, e->address);
    if (!i)
        return;
    if (s->role == ROLE_FOLLOWER)
        wg_health_apply_shared(i, e->state, wg_now_ms());
    else
        atomic_store_explicit(&i->shared_health, (int)e->state, memory_order_relaxed);
}

static void state_put(struct wg_health_shared *s, const char *key, const char *value, size_t len)
{
    json_t *o = json_loadb(value, len, 0, NULL);
    const char *st = json_string_value(json_object_get(o, "state"));
    const char *addr = json_string_value(json_object_get(o, "address"));
    enum wg_health h = st && !strcmp(st, "healthy")     ? WG_HEALTH_HEALTHY
                       : st && !strcmp(st, "unhealthy") ? WG_HEALTH_UNHEALTHY
                                                        : WG_HEALTH_UNKNOWN;
    if (h == WG_HEALTH_UNKNOWN || !addr) {
        json_decref(o);
        return;
    }
    struct state_entry *e = state_find(s, key);
    char *a = strdup(addr);
    json_decref(o);
    if (!a)
        return;
    if (!e) {
        if (s->n_states == s->cap_states) {
            size_t cap = s->cap_states ? s->cap_states * 2 : 64;
            struct state_entry *v = realloc(s->states, cap * sizeof *v);
            if (!v) {
                free(a);
                return;
            }
            s->states = v;
            s->cap_states = cap;
        }
        e = &s->states[s->n_states];
        if (!(e->key = strdup(key))) {
            free(a);
            return;
        }
        s->n_states++;
        if (!index_add(s)) {
            free(e->key);
            free(a);
            s->n_states--;
            return;
        }
    } else {
        free(e->address);
    }
    e->address = a;
    e->state = h;
    apply_entry(s, e);
}

/* A new snapshot: instances that appeared (still unknown) get the states
 * published already: one index look-up each, in the services the snapshot
 * changed (a hook sees every publish, so the changes since the last one). */
static void on_publish(void *arg, struct wg_snapshot *snap)
{
    struct wg_health_shared *s = arg;
    char key[512];
    if (!s->n_states)
        return;
    for (size_t k = 0; k < snap->n_changes; k++) {
        const struct wg_pool_service *ps = snap->changes[k].new;
        if (!ps || !ps->cfg->health_check.shared)
            continue;
        for (uint32_t m = 0; m < ps->n_members; m++) {
            struct wg_instance *i = ps->members[m].inst;
            if (wg_instance_health(i) != WG_HEALTH_UNKNOWN ||
                (size_t)snprintf(key, sizeof key, "%s/%s", ps->name, i->id) >= sizeof key)
                continue;
            const struct state_entry *e = state_find(s, key);
            if (e)
                apply_entry(s, e);
        }
    }
}

/* The prober: queue every shared instance whose state differs from what is
 * published (on election: transitions made before it were not published;
 * then every few seconds: a failed publish is retried this way). */
static void reconcile(struct wg_health_shared *s)
{
    struct wg_snapshot *snap = wg_pool_published(s->pool);
    char key[512];
    size_t queued = 0;
    for (size_t k = 0; snap && k < snap->n_services; k++) {
        const struct wg_pool_service *ps = snap->services[k];
        if (!ps->cfg->health_check.shared)
            continue;
        for (uint32_t m = 0; m < ps->n_members; m++) {
            struct wg_instance *i = ps->members[m].inst;
            enum wg_health h = wg_instance_health(i);
            if ((h != WG_HEALTH_HEALTHY && h != WG_HEALTH_UNHEALTHY) ||
                (size_t)snprintf(key, sizeof key, "%s/%s", ps->name, i->id) >= sizeof key)
                continue;
            const struct state_entry *e = state_find(s, key);
            if (e && e->state == h && strcmp(e->address, i->addr_text) == 0)
                continue;
            wg_health_shared_transition(ps->name, i, h);
            queued++;
        }
    }
    if (queued)
        wg_info("msg=\"shared health: publishing states that differ\" count=%zu", queued);
}

/* ---- roles ---- */

static void set_role(struct wg_health_shared *s, enum role r, const char *why)
{
    if (s->role == r)
        return;
    wg_info("msg=\"shared health: role changed\" from=%s to=%s reason=\"%s\" zone_prefix=%s",
            role_names[s->role], role_names[r], why, s->prefix);
    s->role = r;
    atomic_store(&g_leading, r == ROLE_PROBER);
    atomic_store(&g_following, r == ROLE_FOLLOWER);
    if (r == ROLE_FOLLOWER)             /* catch up with what was published */
        for (size_t k = 0; k < s->n_states; k++)
            apply_entry(s, &s->states[k]);
}

static void next_endpoint(struct wg_health_shared *s)
{
    s->ep = (s->ep + 1) % wg_etcd_client_endpoints(wg_fleet_etcd(s->fleet));
}

static void publish_next(struct wg_health_shared *s);

static char *b64(const char *t) { return wg_base64_encode(t, strlen(t)); }

static bool campaign_message(void *arg, struct wg_etcd_call *call, unsigned status,
                             const char *msg, size_t len, uint64_t recv_ns)
{
    struct wg_health_shared *s = arg;
    if (s->campaign != call)
        return false;
    s->campaign = NULL;
    json_t *o = json_loadb(msg, len, JSON_DISABLE_EOF_CHECK, NULL);
    json_t *ok = json_object_get(o, "succeeded");
    if (status == 200 && o && !json_object_get(o, "error")) {
        if (json_is_true(ok)) {
            s->role_lease = wg_fleet_lease(s->fleet);
            s->leader_present = true;
            snprintf(s->leader, sizeof s->leader, "%s", s->name);
            set_role(s, ROLE_PROBER, "elected");
            reconcile(s);
            publish_next(s);
        } else {
            s->leader_present = true;
            set_role(s, ROLE_FOLLOWER, "another replica probes");
        }
    }
    json_decref(o);
    return false;
}

static void campaign_end(void *arg, struct wg_etcd_call *call, bool ok, const char *why)
{
    struct wg_health_shared *s = arg;
    if (s->campaign == call) {
        s->campaign = NULL;
        next_endpoint(s);
    }
}

static const struct wg_etcd_call_ops campaign_ops = { campaign_message, campaign_end };

/* The etcd election recipe: create the prober key under our lease only if
 * it does not exist (create_revision == 0). */
static void campaign(struct wg_health_shared *s)
{
    int64_t lease = wg_fleet_lease(s->fleet);
    if (s->campaign || !lease)          /* one at a time; never a key without a lease */
        return;                         /* (lease 0: it would outlive us, nobody could take over) */
    char id[24], value[200];
    snprintf(id, sizeof id, "%lld", (long long)lease);
    snprintf(value, sizeof value, "{\"name\":\"%s\"}", s->name);
    char *v = b64(value);
    json_t *o = v ? json_pack("{s[{sssssi}]s[{s{ssssss}}]}", "compare", "key", s->election_b64,
                              "target", "CREATE", "create_revision", 0, "success",
                              "request_put", "key", s->election_b64, "value", v, "lease", id)
                  : NULL;
    char *body = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    free(v);
    if (body)
        s->campaign = wg_etcd_call_start(wg_fleet_etcd(s->fleet), s->ep, "/v3/kv/txn", body, false,
                                         2000, &campaign_ops, s);
    free(body);
}

/* ---- the watch ---- */

static void watch_start(struct wg_health_shared *s);

static void watch_failed(struct wg_health_shared *s)
{
    next_endpoint(s);
    wg_etcd_call_cancel(s->watch);
    s->watch = NULL;
    s->listing = false;
    s->revision = 0;                    /* the tick lists again */
}

static void on_kv(struct wg_health_shared *s, const struct wg_etcd_kv *kv, bool deleted)
{
    size_t n = strlen(s->prefix);
    if (kv->key_len <= n || memcmp(kv->key, s->prefix, n) != 0 || strlen(kv->key) != kv->key_len)
        return;
    const char *rest = kv->key + n;
    if (strcmp(kv->key, s->election_key) == 0) {
        s->leader_present = !deleted;
        json_t *o = deleted ? NULL : json_loadb(kv->value, kv->value_len, 0, NULL);
        const char *who = json_string_value(json_object_get(o, "name"));
        snprintf(s->leader, sizeof s->leader, "%s", who ? who : "");
        json_decref(o);
        if (deleted && s->role != ROLE_ALONE) {
            if (s->role == ROLE_PROBER)
                set_role(s, ROLE_ALONE, "prober key gone");
            campaign(s);                /* take over at once */
        }
        return;
    }
    if (!deleted && strchr(rest, '/'))
        state_put(s, rest, kv->value, kv->value_len);
}

static bool watch_message(void *arg, struct wg_etcd_call *call, unsigned status,
                          const char *msg, size_t len, uint64_t recv_ns)
{
    struct wg_health_shared *s = arg;
    const char *why = NULL;
    if (s->watch != call)
        return false;
    if (s->listing) {
        struct wg_etcd_range_response r;
        s->listing = false;
        s->watch = NULL;
        if (status != 200 || !wg_etcd_parse_range(msg, len, &r, &why))
            return false;
        s->leader_present = false;
        for (size_t k = 0; k < r.n_kvs; k++)
            on_kv(s, &r.kvs[k], false);
        s->revision = r.header.revision;
        wg_etcd_range_response_free(&r);
        watch_start(s);
        return false;
    }
    struct wg_etcd_watch_response w;
    if (!wg_etcd_parse_watch(msg, len, &w, &why)) {
        watch_failed(s);
        return false;
    }
    if (w.error_code || w.canceled) {
        wg_etcd_watch_response_free(&w);
        watch_failed(s);
        return false;
    }
    for (size_t k = 0; k < w.n_events; k++)
        on_kv(s, &w.events[k].kv, w.events[k].deleted);
    wg_etcd_watch_response_free(&w);
    return true;
}

static void watch_end(void *arg, struct wg_etcd_call *call, bool ok, const char *why)
{
    struct wg_health_shared *s = arg;
    if (s->watch != call)
        return;
    s->watch = NULL;
    s->listing = false;
    s->revision = 0;
    next_endpoint(s);
}

static const struct wg_etcd_call_ops watch_ops = { watch_message, watch_end };

static void watch_start(struct wg_health_shared *s)
{
    s->listing = s->revision == 0;
    char *body = s->listing ? wg_etcd_range_request(s->prefix, NULL, 0, 0, 0, false)
                            : wg_etcd_watch_request(s->prefix, s->revision + 1);
    if (body)
        s->watch = wg_etcd_call_start(wg_fleet_etcd(s->fleet), s->ep,
                                      s->listing ? "/v3/kv/range" : "/v3/watch", body,
                                      !s->listing, 3000, &watch_ops, s);
    free(body);
}

/* ---- publishing ---- */

static bool publish_message(void *arg, struct wg_etcd_call *call, unsigned status,
                            const char *msg, size_t len, uint64_t recv_ns)
{
    struct wg_health_shared *s = arg;
    if (s->publish != call)
        return false;
    s->publish = NULL;
    if (status != 200)
        wg_warn("msg=\"shared health: publishing failed\" http_status=%u", status);
    publish_next(s);
    return false;
}

static void publish_end(void *arg, struct wg_etcd_call *call, bool ok, const char *why)
{
    struct wg_health_shared *s = arg;
    if (s->publish != call)
        return;
    s->publish = NULL;
    wg_warn("msg=\"shared health: publishing failed\" reason=\"%s\"", why ? why : "?");
}

static const struct wg_etcd_call_ops publish_ops = { publish_message, publish_end };

/* One txn with up to PUBLISH_BATCH queued transitions (latest per key
 * wins: etcd applies the puts in order). */
static void publish_next(struct wg_health_shared *s)
{
    if (s->publish || s->role != ROLE_PROBER)
        return;
    pthread_mutex_lock(&s->lock);
    size_t n = s->n_q < PUBLISH_BATCH ? s->n_q : PUBLISH_BATCH;
    struct pending batch[PUBLISH_BATCH];
    if (n) {
        memcpy(batch, s->q, n * sizeof *batch);
        memmove(s->q, s->q + n, (s->n_q - n) * sizeof *s->q);
        s->n_q -= n;
    }
    pthread_mutex_unlock(&s->lock);
    if (!n)
        return;
    json_t *ops = json_array();
    for (size_t k = 0; k < n; k++) {
        size_t klen = strlen(s->prefix) + strlen(batch[k].service) + strlen(batch[k].id) + 2;
        char *key = malloc(klen);
        json_t *v = json_pack("{ssssss}", "state", wg_health_name(batch[k].state), "address",
                              batch[k].address, "by", s->name);
        char *vt = v ? json_dumps(v, JSON_COMPACT) : NULL;
        if (key) {
            snprintf(key, klen, "%s%s/%s", s->prefix, batch[k].service, batch[k].id);
            char *kb = b64(key), *vb = vt ? b64(vt) : NULL;
            if (ops && kb && vb)
                json_array_append_new(ops, json_pack("{s{ssss}}", "request_put", "key", kb,
                                                     "value", vb));
            free(kb);
            free(vb);
        }
        free(key);
        free(vt);
        json_decref(v);
        free(batch[k].service);
        free(batch[k].id);
        free(batch[k].address);
    }
    json_t *o = ops ? json_pack("{so}", "success", ops) : NULL;
    char *body = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (body)
        s->publish = wg_etcd_call_start(wg_fleet_etcd(s->fleet), s->ep, "/v3/kv/txn", body, false,
                                        2000, &publish_ops, s);
    free(body);
}

static void mail_cb(evutil_socket_t fd, short what, void *arg) { publish_next(arg); }

/* ---- the tick: which role now ---- */

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
    struct wg_health_shared *s = arg;
    int64_t lease = wg_fleet_lease(s->fleet);
    if (!wg_fleet_connected(s->fleet) || !lease) {
        set_role(s, ROLE_ALONE, "etcd not reachable: probing alone");
        s->leader_present = false;
        wg_etcd_call_cancel(s->watch);      /* re-list when etcd is back */
        s->watch = NULL;
        s->revision = 0;
        return;
    }
    if (s->role == ROLE_PROBER && lease != s->role_lease)
        set_role(s, ROLE_ALONE, "the fleet lease changed");
    if (!s->watch)
        watch_start(s);
    else if (!s->listing && !s->campaign && s->role != ROLE_PROBER &&
             (!s->leader_present || s->role == ROLE_ALONE))
        campaign(s);
    if (s->role == ROLE_PROBER && ++s->ticks % RECONCILE_TICKS == 0 && !s->publish)
        reconcile(s);
    publish_next(s);
}

/* ---- life cycle ---- */

struct wg_health_shared *wg_health_shared_new(struct event_base *base, const struct wg_config *cfg,
                                              struct wg_pool *pool, struct wg_fleet *fleet)
{
    bool any = cfg->service_defaults.health_check.shared;
    for (size_t k = 0; k < cfg->n_services && !any; k++)
        any = cfg->services[k].health_check.shared;
    if (!any || !fleet)
        return NULL;
    struct wg_health_shared *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->base = base;
    s->pool = pool;
    s->fleet = fleet;
    pthread_mutex_init(&s->lock, NULL);
    size_t n = strlen(cfg->fleet.prefix) + strlen("health/") + strlen(cfg->zone) + 16;
    s->prefix = malloc(n);
    s->election_key = malloc(n);
    s->name = strdup(cfg->fleet.name);
    s->tick = event_new(base, -1, EV_PERSIST, tick_cb, s);
    s->mail = event_new(base, -1, 0, mail_cb, s);
    if (!s->prefix || !s->election_key || !s->name || !s->tick || !s->mail) {
        wg_health_shared_free(s);
        return NULL;
    }
    snprintf(s->prefix, n, "%shealth/%s/", cfg->fleet.prefix, cfg->zone);
    snprintf(s->election_key, n, "%s_prober", s->prefix);
    if (!(s->election_b64 = b64(s->election_key))) {
        wg_health_shared_free(s);
        return NULL;
    }
    g_shared = s;
    wg_pool_on_publish(pool, on_publish, s);
    struct timeval tv = { 0, TICK_MS * 1000 };
    event_add(s->tick, &tv);
    wg_info("msg=\"shared health: on\" prefix=%s", s->prefix);
    return s;
}

void wg_health_shared_free(struct wg_health_shared *s)
{
    if (!s)
        return;
    atomic_store(&g_leading, 0);
    atomic_store(&g_following, 0);
    g_shared = NULL;
    wg_etcd_call_cancel(s->campaign);
    wg_etcd_call_cancel(s->watch);
    wg_etcd_call_cancel(s->publish);
    if (s->tick)
        event_free(s->tick);
    if (s->mail)
        event_free(s->mail);
    for (size_t k = 0; k < s->n_q; k++) {
        free(s->q[k].service);
        free(s->q[k].id);
        free(s->q[k].address);
    }
    free(s->q);
    for (size_t k = 0; k < s->n_states; k++) {
        free(s->states[k].key);
        free(s->states[k].address);
    }
    free(s->states);
    free(s->index);
    pthread_mutex_destroy(&s->lock);
    free(s->prefix);
    free(s->election_key);
    free(s->election_b64);
    free(s->name);
    free(s);
}

const char *wg_health_shared_role(const struct wg_health_shared *s, char *who, size_t len)
{
    if (!s)
        return NULL;
    snprintf(who, len, "%s", s->leader_present ? s->leader : "");
    return role_names[s->role];
}
