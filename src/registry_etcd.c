/* registry_etcd — instances from etcd v3 (DESIGN §7, §8), matching the
 * guarantees of etcd's clientv3 watch:
 *
 *  - Start (and every resync): a paged range over each prefix, every page
 *    pinned to the revision of the first one (a compacted page restarts the
 *    re-list); the result replaces the pools in one snapshot (the pool diffs
 *    by instance identity); then one watch per prefix from that revision + 1.
 *  - Each watch response (all fragments of it) is one pool transaction: the
 *    services its events touch are staged, then committed once.
 *  - Revision bookkeeping per prefix, as clientv3 does: after events, the
 *    last event's mod_revision; after a progress notification, its header
 *    revision (never the header of a `created` response, which may run
 *    ahead of events still to come). A reconnect resumes at revision + 1, so
 *    no event is lost or applied twice.
 *  - Any failure (connect, TLS, gateway error, stream end, no leader, a
 *    failed silence probe) keeps the pools and reconnects after a jittered
 *    exponential backoff, rotating over the endpoints. Compaction, another
 *    cluster id or a revision going backwards re-lists at once. An
 *    authentication failure re-authenticates once at once.
 *  - Silence is normal (progress notifications are rare by default): after
 *    watch_timeout without a message, a linearizable count_only range goes
 *    to the same member; only its failure reconnects.
 *  - registry.cache: after each publish the snapshot is handed to a writer
 *    thread (registry_cache.c) that writes at most once a second. When the
 *    first attempt fails, or nothing was listed 1 s after the start, the
 *    cache is served until the first list replaces it.
 */
#include "waygate/registry.h"

#include <event2/dns.h>
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "registry_cache.h"
#include "waygate/etcd_client.h"
#include "waygate/log.h"
#include "waygate/pool.h"
#include "waygate/record.h"

/* etcd 3.4 counts every key from a page's start to the range end for each
 * page, so n keys cost n^2 / (2 * PAGE_LIMIT) key visits: 10,000 keeps a
 * 100,000-key list at ~10 pages of ~2 MiB. */
#define PAGE_LIMIT 10000
#define PROBE_MIN_MS 500
#define PROBE_MAX_MS 5000
#define AUTH_TIMEOUT_MS 5000
#define RANGE_TIMEOUT_MS 30000
#define CACHE_AFTER_MS 1000         /* no list by then: serve the cache */

/* ---- key and service tables --------------------------------------------------- */

struct hnode {
    struct hnode *next;
    uint64_t hash;
    char *name;
};

struct htable {
    struct hnode **b;
    size_t cap, n;
};

static struct hnode *ht_find(const struct htable *t, const char *name)
{
    uint64_t h = wg_record_name_hash(name);

    if (!t->cap)
        return NULL;
    for (struct hnode *n = t->b[h & (t->cap - 1)]; n; n = n->next)
        if (n->hash == h && strcmp(n->name, name) == 0)
            return n;
    return NULL;
}

static bool ht_grow(struct htable *t)
{
    size_t cap = t->cap ? t->cap * 2 : 64;
    struct hnode **b = calloc(cap, sizeof *b);

    if (!b)
        return false;
    for (size_t i = 0; i < t->cap; i++)
        for (struct hnode *n = t->b[i], *next; n; n = next) {
            next = n->next;
            n->next = b[n->hash & (cap - 1)];
            b[n->hash & (cap - 1)] = n;
        }
    free(t->b);
    t->b = b;
    t->cap = cap;
    return true;
}

static bool ht_insert(struct htable *t, struct hnode *n)
{
    if (t->n + 1 > t->cap / 2 * 1 + t->cap / 4 && !ht_grow(t))
        return false;
    n->hash = wg_record_name_hash(n->name);
    n->next = t->b[n->hash & (t->cap - 1)];
    t->b[n->hash & (t->cap - 1)] = n;
    t->n++;
    return true;
}

static void ht_remove(struct htable *t, struct hnode *n)
{
    struct hnode **pp = &t->b[n->hash & (t->cap - 1)];

    while (*pp && *pp != n)
        pp = &(*pp)->next;
    if (*pp) {
        *pp = n->next;
        t->n--;
    }
}

struct svc;

/* The instances one etcd key holds (go-micro: several). */
struct key_entry {
    struct hnode h;                 /* h.name: the key */
    struct svc *svc;
    struct key_entry *prev, *next;  /* the service's keys */
    struct wg_record *recs;
    size_t n;
    uint64_t seq;                   /* changes with every value (DNS answers check it) */
};

struct svc {
    struct hnode h;                 /* h.name: the service */
    struct key_entry *keys;
    size_t n_records;
    bool dirty;
    struct svc *dirty_next;
};

struct keymap {
    struct htable keys, svcs;
    struct svc *dirty;
};

/* Values applied so far, on the control thread (identifies a key's value
 * across maps, for DNS answers). */
static uint64_t entry_seq;

static void entry_free_records(struct key_entry *e)
{
    for (size_t i = 0; i < e->n; i++)
        wg_record_free(&e->recs[i]);
    free(e->recs);
    e->recs = NULL;
    e->n = 0;
}

static void svc_mark(struct keymap *m, struct svc *s)
{
    if (s->dirty)
        return;
    s->dirty = true;
    s->dirty_next = m->dirty;
    m->dirty = s;
}

static struct svc *svc_get(struct keymap *m, const char *name)
{
    struct svc *s = (struct svc *)ht_find(&m->svcs, name);

    if (s)
        return s;
    if (!(s = calloc(1, sizeof *s)) || !(s->h.name = strdup(name)) || !ht_insert(&m->svcs, &s->h)) {
        if (s)
            free(s->h.name);
        free(s);
        return NULL;
    }
    return s;
}

static void entry_unlink(struct keymap *m, struct key_entry *e)
{
    struct svc *s = e->svc;

    if (e->prev)
        e->prev->next = e->next;
    else
        s->keys = e->next;
    if (e->next)
        e->next->prev = e->prev;
    s->n_records -= e->n;
    svc_mark(m, s);
    ht_remove(&m->keys, &e->h);
    entry_free_records(e);
    free(e->h.name);
    free(e);
}

static bool keymap_delete(struct keymap *m, const char *key)
{
    struct key_entry *e = (struct key_entry *)ht_find(&m->keys, key);

    if (e)
        entry_unlink(m, e);
    return e != NULL;
}

static struct key_entry *entry_new(struct keymap *m, const char *key, struct svc *s)
{
    struct key_entry *e = calloc(1, sizeof *e);

    if (!e || !(e->h.name = strdup(key)) || !ht_insert(&m->keys, &e->h)) {
        if (e)
            free(e->h.name);
        free(e);
        return NULL;
    }
    e->svc = s;
    e->next = s->keys;
    if (s->keys)
        s->keys->prev = e;
    s->keys = e;
    return e;
}

/* Replace what `key` holds with `set` (all of one service; taken). */
static struct key_entry *keymap_put(struct keymap *m, const char *key, struct wg_record_set *set)
{
    struct key_entry *e = (struct key_entry *)ht_find(&m->keys, key);
    struct svc *s = e ? e->svc : svc_get(m, set->v[0].service);

    if (!e && s)
        e = entry_new(m, key, s);
    if (!e) {
        wg_record_set_clear(set);
        return NULL;
    }
    s->n_records -= e->n;
    entry_free_records(e);
    struct wg_record *fit = realloc(set->v, set->n * sizeof *fit);     /* keep no spare */
    if (fit)
        set->v = fit;
    e->recs = set->v;
    e->n = set->n;
    e->seq = ++entry_seq;
    s->n_records += e->n;
    memset(set, 0, sizeof *set);
    svc_mark(m, s);
    return e;
}

static void keymap_clear(struct keymap *m)
{
    for (size_t i = 0; i < m->keys.cap; i++)
        for (struct hnode *n = m->keys.b[i], *next; n; n = next) {
            struct key_entry *e = (struct key_entry *)n;
            next = n->next;
            entry_free_records(e);
            free(e->h.name);
            free(e);
        }
    for (size_t i = 0; i < m->svcs.cap; i++)
        for (struct hnode *n = m->svcs.b[i], *next; n; n = next) {
            next = n->next;
            free(n->name);
            free(n);
        }
    free(m->keys.b);
    free(m->svcs.b);
    memset(m, 0, sizeof *m);
}

static int rec_id_cmp(const void *a, const void *b)
{
    return strcmp(((const struct wg_record *)a)->id, ((const struct wg_record *)b)->id);
}

/* The service's usable records (shallow copies), sorted by id, one per id
 * (two keys naming the same id: the first in id order wins). */
static size_t svc_collect(const struct svc *s, struct wg_record *out)
{
    size_t n = 0, k = 0;

    for (const struct key_entry *e = s->keys; e; e = e->next)
        for (size_t i = 0; i < e->n; i++)
            if (e->recs[i].addr.ss_family != AF_UNSPEC)
                out[n++] = e->recs[i];
    qsort(out, n, sizeof *out, rec_id_cmp);
    for (size_t i = 0; i < n; i++)
        if (k == 0 || strcmp(out[k - 1].id, out[i].id) != 0)
            out[k++] = out[i];
        else
            wg_warn("msg=\"duplicate instance id, one skipped\" service=%s id=%s", s->h.name,
                    out[i].id);
    return k;
}

/* ---- the registry --------------------------------------------------------------- */

struct watch {
    struct etcd_registry *r;
    char *prefix;
    int64_t rev;                    /* applied up to here: resume at rev + 1 */
    struct wg_etcd_call *call;
    struct wg_etcd_call *probe;
    struct event *silence;
    bool created;
    struct wg_etcd_watch_response frag;     /* events of fragments so far */
};

struct listing {
    struct keymap map;
    size_t prefix;
    int64_t rev;                    /* pinned at the first page */
    char *after;                    /* the next page starts after this key */
    size_t after_len;
    unsigned invalid;
};

enum fail_kind { FAIL_ERROR, FAIL_RESYNC, FAIL_REAUTH };

struct etcd_registry {
    struct wg_registry base;
    struct wg_etcd_client *client;
    char **prefixes;
    size_t n_prefixes;
    char *username, *password;
    uint64_t watch_timeout_ms, backoff_initial_ms, backoff_max_ms;
    size_t ep;                      /* the member in use */
    uint64_t backoff_ms;            /* the next retry delay (before jitter) */
    struct event *retry;
    struct event *cache_timer;
    bool live;                      /* a session is running (no retry pending) */
    bool synced;                    /* a list was applied: watches resume */
    bool need_resync;
    bool reauthed;                  /* re-authenticated since the last success */
    bool cache_tried;
    uint64_t cluster_id;
    struct wg_etcd_call *unary;     /* auth or range page in flight */
    struct listing list;
    bool listing;
    struct watch *watches;
    struct keymap map;
    struct wg_registry_cache *cache;
    struct dns_lookup *lookups;
};

static void session_fail(struct etcd_registry *r, enum fail_kind kind, const char *why);
static void start_probe(struct watch *w);
static void start_watches(struct etcd_registry *r);
static void start_list(struct etcd_registry *r);
static void published(struct etcd_registry *r);

static void contact(struct etcd_registry *r)
{
    r->base.status.last_contact_ms = wg_now_ms();
}

static uint64_t jitter(uint64_t ms)
{
    return ms / 2 + (ms > 1 ? (uint64_t)random() % (ms / 2 + 1) : 0);
}

static void arm(struct event *ev, uint64_t ms)
{
    struct timeval tv = { (time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000 };
    evtimer_add(ev, &tv);
}

static void observe_propagation(struct wg_registry_status *st, uint64_t ns)
{
    st->propagation_count++;
    st->propagation_sum_ns += ns;
    for (int i = 0; i < WG_REGISTRY_PROPAGATION_BUCKETS; i++)
        if ((double)ns <= wg_registry_propagation_le[i] * 1e9)
            st->propagation_buckets[i]++;
}

/* Stage every service the map marked dirty. */
static void stage_dirty(struct etcd_registry *r, struct keymap *m)
{
    while (m->dirty) {
        struct svc *s = m->dirty;
        struct wg_record *recs = malloc((s->n_records ? s->n_records : 1) * sizeof *recs);
        m->dirty = s->dirty_next;
        s->dirty = false;
        size_t n = recs ? svc_collect(s, recs) : 0;
        if (!recs || wg_pool_stage_service(r->base.pool, s->h.name, recs, n) < 0)
            wg_error("msg=\"cannot stage service, keeping its last pool\" service=%s", s->h.name);
        free(recs);
        if (!s->keys) {
            ht_remove(&m->svcs, &s->h);
            free(s->h.name);
            free(s);
        }
    }
}

/* Every usable record of the map (shallow), sorted by service and id. */
static bool map_records(const struct keymap *m, struct wg_record_set *all)
{
    size_t total = 0, n = 0;

    for (size_t i = 0; i < m->svcs.cap; i++)
        for (struct hnode *h = m->svcs.b[i]; h; h = h->next)
            total += ((struct svc *)h)->n_records;
    memset(all, 0, sizeof *all);
    if (!(all->v = malloc((total ? total : 1) * sizeof *all->v)))
        return false;
    for (size_t i = 0; i < m->svcs.cap; i++)
        for (struct hnode *h = m->svcs.b[i]; h; h = h->next)
            n += svc_collect((struct svc *)h, all->v + n);
    all->n = all->cap = n;
    wg_record_set_sort(all);
    return true;
}

/* ---- applying values ---------------------------------------------------------------- */

static void dns_start(struct etcd_registry *r, struct key_entry *e, struct wg_record_hosts *h);

/* Put (or, for an invalid value, delete) one key. Returns false if the
 * value was invalid. */
static bool apply_value(struct etcd_registry *r, struct keymap *m, const char *prefix,
                        const struct wg_etcd_kv *kv)
{
    struct wg_record_set set = { 0 };
    struct wg_record_hosts hosts = { 0 };
    char why[256];
    struct key_entry *e;

    if (!wg_record_decode_etcd(prefix, kv->key, kv->key_len, kv->value, kv->value_len, &set,
                               &hosts, NULL, why, sizeof why)) {
        wg_warn("msg=\"invalid registry record skipped\" key=\"%.200s\" reason=\"%s\"", kv->key,
                why);
        r->base.status.invalid_records_total++;
        keymap_delete(m, kv->key);
        return false;
    }
    if (!(e = keymap_put(m, kv->key, &set)))
        wg_error("msg=\"out of memory applying a registry record\" key=\"%.200s\"", kv->key);
    else if (hosts.n)
        dns_start(r, e, &hosts);
    wg_record_hosts_clear(&hosts);
    return true;
}

static void apply_events(struct watch *w, const struct wg_etcd_event *ev, size_t n,
                         uint64_t recv_ns)
{
    struct etcd_registry *r = w->r;

    for (size_t i = 0; i < n; i++) {
        if (memchr(ev[i].kv.key, '\0', ev[i].kv.key_len))
            r->base.status.invalid_records_total++;     /* never stored */
        else if (ev[i].deleted)
            keymap_delete(&r->map, ev[i].kv.key);
        else
            apply_value(r, &r->map, w->prefix, &ev[i].kv);
        if (ev[i].kv.mod_revision > w->rev)
            w->rev = ev[i].kv.mod_revision;
    }
    stage_dirty(r, &r->map);
    uint64_t generation = wg_pool_commit(r->base.pool);
    uint64_t ns = wg_now_ns() - recv_ns;
    observe_propagation(&r->base.status, ns);
    r->base.status.events_total += n;
    published(r);
    wg_debug("msg=\"etcd watch response applied\" prefix=%s events=%zu revision=%lld "
             "generation=%llu propagation_us=%.1f", w->prefix, n, (long long)w->rev,
             (unsigned long long)generation, ns / 1000.0);
}

/* ---- hostnames ------------------------------------------------------------------------ */

struct dns_lookup {
    struct etcd_registry *r;
    struct dns_lookup *next;
    bool linked;
    struct evdns_getaddrinfo_request *req;
    char *key;
    uint64_t seq;
    size_t index;
    uint16_t port;
};

static void dns_unlink(struct dns_lookup *d)
{
    for (struct dns_lookup **pp = &d->r->lookups; d->linked && *pp; pp = &(*pp)->next)
        if (*pp == d) {
            *pp = d->next;
            break;
        }
    free(d->key);
    free(d);
}

/* Fill the record's address from the answer, or drop the record. */
static void dns_answer(struct dns_lookup *d, struct key_entry *e, int err, struct evutil_addrinfo *ai)
{
    struct etcd_registry *r = d->r;
    struct wg_record *rec = &e->recs[d->index];

    for (struct evutil_addrinfo *p = ai; p; p = p->ai_next)
        if (p->ai_family == AF_INET) {
            ai = p;                 /* IPv4 first, like getaddrinfo's usual order */
            break;
        }
    if (err || !ai || ai->ai_addrlen > sizeof rec->addr) {
        wg_warn("msg=\"invalid registry record skipped: host name does not resolve\" key=\"%.200s\" "
                "id=%s error=\"%s\"", d->key, rec->id, err ? evutil_gai_strerror(err) : "no address");
        r->base.status.invalid_records_total++;
        return;
    }
    memcpy(&rec->addr, ai->ai_addr, ai->ai_addrlen);
    rec->addrlen = (socklen_t)ai->ai_addrlen;
    if (rec->addr.ss_family == AF_INET)
        ((struct sockaddr_in *)&rec->addr)->sin_port = htons(d->port);
    else
        ((struct sockaddr_in6 *)&rec->addr)->sin6_port = htons(d->port);
    if (ht_find(&r->map.keys, d->key) != &e->h)
        return;                     /* in a list still running: published with it */
    svc_mark(&r->map, e->svc);
    stage_dirty(r, &r->map);
    wg_pool_commit(r->base.pool);
    published(r);
}

static void dns_cb(int err, struct evutil_addrinfo *ai, void *arg)
{
    struct dns_lookup *d = arg;
    struct key_entry *e;

    if (err == EVUTIL_EAI_CANCEL) {
        dns_unlink(d);
        return;
    }
    e = (struct key_entry *)ht_find(&d->r->map.keys, d->key);
    if ((!e || e->seq != d->seq) && d->r->listing)
        e = (struct key_entry *)ht_find(&d->r->list.map.keys, d->key);
    if (e && e->seq == d->seq && d->index < e->n)
        dns_answer(d, e, err, ai);
    if (ai)
        evutil_freeaddrinfo(ai);
    dns_unlink(d);
}

static void dns_start(struct etcd_registry *r, struct key_entry *e, struct wg_record_hosts *h)
{
    struct evutil_addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM };

    for (size_t i = 0; i < h->n; i++) {
        struct dns_lookup *d = calloc(1, sizeof *d);
        if (!d || !(d->key = strdup(e->h.name))) {
            free(d);
            wg_error("msg=\"out of memory resolving a host name\" key=\"%.200s\"", e->h.name);
            continue;
        }
        d->r = r;
        d->seq = e->seq;
        d->index = h->v[i].index;
        d->port = h->v[i].port;
        /* may answer (and free d) before returning: link d only after */
        struct evdns_getaddrinfo_request *req =
            evdns_getaddrinfo(wg_etcd_client_dns(r->client), h->v[i].name, NULL, &hints, dns_cb, d);
        if (req) {
            d->req = req;
            d->linked = true;
            d->next = r->lookups;
            r->lookups = d;
        }
    }
}

/* ---- listing ----------------------------------------------------------------------------- */

static void list_reset(struct listing *l)
{
    keymap_clear(&l->map);
    free(l->after);
    memset(l, 0, sizeof *l);
}

static const struct wg_etcd_call_ops list_ops;

static void list_page(struct etcd_registry *r)
{
    struct listing *l = &r->list;
    char *from = NULL, *body;

    if (l->after && (from = malloc(l->after_len + 1))) {
        memcpy(from, l->after, l->after_len);
        from[l->after_len] = '\0';      /* the first key after `after` */
    }
    body = (l->after && !from) ? NULL
                               : wg_etcd_range_request(r->prefixes[l->prefix], from,
                                                       from ? l->after_len + 1 : 0, l->rev,
                                                       PAGE_LIMIT, false);
    free(from);
    r->unary = body ? wg_etcd_call_start(r->client, r->ep, "/v3/kv/range", body, false,
                                         RANGE_TIMEOUT_MS, &list_ops, r)
                    : NULL;
    free(body);
    if (!r->unary)
        session_fail(r, FAIL_ERROR, "out of memory");
}

static void start_list(struct etcd_registry *r)
{
    list_reset(&r->list);
    r->listing = true;
    list_page(r);
}

/* The list is complete: it replaces the pools, watches start after it. */
static void list_done(struct etcd_registry *r)
{
    struct wg_record_set all;
    bool resync = r->synced;

    r->listing = false;
    keymap_clear(&r->map);
    r->map = r->list.map;
    memset(&r->list.map, 0, sizeof r->list.map);
    while (r->map.dirty) {
        r->map.dirty->dirty = false;
        r->map.dirty = r->map.dirty->dirty_next;
    }
    if (!map_records(&r->map, &all) || wg_pool_replace_all(r->base.pool, &all) < 0)
        wg_error("msg=\"cannot publish the etcd list\"");
    free(all.v);
    for (size_t i = 0; i < r->n_prefixes; i++)
        r->watches[i].rev = r->list.rev;
    r->base.status.revision = r->list.rev;
    if (resync)
        r->base.status.resyncs_total++;
    wg_info("msg=\"etcd list applied\" endpoint=%s revision=%lld keys=%zu instances=%zu "
            "invalid=%u resync=%d", wg_etcd_client_endpoint(r->client, r->ep),
            (long long)r->list.rev, r->map.keys.n, all.n, r->list.invalid, resync);
    r->synced = true;
    r->need_resync = false;
    list_reset(&r->list);
    published(r);
    start_watches(r);
}

static bool list_apply_page(struct etcd_registry *r, const struct wg_etcd_range_response *rr)
{
    struct listing *l = &r->list;

    if (l->rev == 0) {
        l->rev = rr->header.revision;
        r->cluster_id = rr->header.cluster_id;
    }
    for (size_t i = 0; i < rr->n_kvs; i++)
        if (!apply_value(r, &l->map, r->prefixes[l->prefix], &rr->kvs[i]))
            l->invalid++;
    free(l->after);
    l->after = NULL;
    if (rr->more && rr->n_kvs) {
        const struct wg_etcd_kv *last = &rr->kvs[rr->n_kvs - 1];
        if (!(l->after = malloc(last->key_len + 1)))
            return false;
        memcpy(l->after, last->key, last->key_len);
        l->after_len = last->key_len;
    } else {
        l->prefix++;
    }
    return true;
}

/* An error body of a plain request: re-list, re-authenticate or fail. */
static void unary_error(struct etcd_registry *r, unsigned status, const char *body, size_t len,
                        const char *what)
{
    char msg[200], why[300];
    int code = wg_etcd_parse_error(body, len, msg, sizeof msg);

    snprintf(why, sizeof why, "%s: HTTP %u code %d %s", what, status, code, msg);
    if (code == WG_GRPC_OUT_OF_RANGE && r->listing) {
        wg_info("msg=\"etcd list hit a compacted revision, restarting it\" endpoint=%s",
                wg_etcd_client_endpoint(r->client, r->ep));
        start_list(r);
    } else if (code == WG_GRPC_UNAUTHENTICATED) {
        session_fail(r, FAIL_REAUTH, why);
    } else {
        session_fail(r, FAIL_ERROR, why);
    }
}

static bool list_message(void *arg, struct wg_etcd_call *call, unsigned status, const char *msg,
                         size_t len, uint64_t recv_ns)
{
    struct etcd_registry *r = arg;
    struct wg_etcd_range_response rr;
    const char *why;

    r->unary = NULL;
    if (status != 200) {
        unary_error(r, status, msg, len, "range");
        return false;
    }
    contact(r);
    if (!wg_etcd_parse_range(msg, len, &rr, &why)) {
        session_fail(r, FAIL_ERROR, why);
        return false;
    }
    bool ok = list_apply_page(r, &rr);
    wg_etcd_range_response_free(&rr);
    if (!ok)
        session_fail(r, FAIL_ERROR, "out of memory");
    else if (r->list.prefix < r->n_prefixes)
        list_page(r);
    else
        list_done(r);
    return false;
}

static void unary_end(void *arg, struct wg_etcd_call *call, bool ok, const char *why)
{
    struct etcd_registry *r = arg;

    if (r->unary == call) {
        r->unary = NULL;
        session_fail(r, FAIL_ERROR, why ? why : "no response");
    }
}

static const struct wg_etcd_call_ops list_ops = { list_message, unary_end };

/* ---- authentication ----------------------------------------------------------------------- */

static void session_continue(struct etcd_registry *r)
{
    if (!r->synced || r->need_resync)
        start_list(r);
    else
        start_watches(r);
}

static bool auth_message(void *arg, struct wg_etcd_call *call, unsigned status, const char *msg,
                         size_t len, uint64_t recv_ns)
{
    struct etcd_registry *r = arg;
    char *token;

    r->unary = NULL;
    if (status != 200) {
        char err[200], why[300];
        int code = wg_etcd_parse_error(msg, len, err, sizeof err);
        snprintf(why, sizeof why, "authenticate: HTTP %u code %d %s", status, code, err);
        session_fail(r, FAIL_ERROR, why);
        return false;
    }
    contact(r);
    token = wg_etcd_parse_token(msg, len);
    if (!token || wg_etcd_client_set_token(r->client, token) < 0) {
        free(token);
        session_fail(r, FAIL_ERROR, "authenticate: no token in the answer");
        return false;
    }
    free(token);
    wg_info("msg=\"etcd authenticated\" endpoint=%s user=%s",
            wg_etcd_client_endpoint(r->client, r->ep), r->username);
    session_continue(r);
    return false;
}

static const struct wg_etcd_call_ops auth_ops = { auth_message, unary_end };

static void start_auth(struct etcd_registry *r)
{
    char *body = wg_etcd_auth_request(r->username, r->password);

    r->unary = body ? wg_etcd_call_start(r->client, r->ep, "/v3/auth/authenticate", body, false,
                                         AUTH_TIMEOUT_MS, &auth_ops, r)
                    : NULL;
    free(body);
    if (!r->unary)
        session_fail(r, FAIL_ERROR, "out of memory");
}

/* ---- watches ------------------------------------------------------------------------------ */

static void watch_stop(struct watch *w)
{
    wg_etcd_call_cancel(w->call);
    wg_etcd_call_cancel(w->probe);
    w->call = w->probe = NULL;
    w->created = false;
    if (w->silence)
        evtimer_del(w->silence);
    wg_etcd_watch_response_free(&w->frag);
}

static void all_created(struct etcd_registry *r)
{
    for (size_t i = 0; i < r->n_prefixes; i++)
        if (!r->watches[i].created)
            return;
    r->base.status.connected = true;
    r->backoff_ms = r->backoff_initial_ms;
    r->reauthed = false;
    wg_info("msg=\"etcd watching\" endpoint=%s revision=%lld prefixes=%zu",
            wg_etcd_client_endpoint(r->client, r->ep), (long long)r->base.status.revision,
            r->n_prefixes);
}

static void track_revision(struct etcd_registry *r)
{
    int64_t rev = r->watches[0].rev;

    for (size_t i = 1; i < r->n_prefixes; i++)
        if (r->watches[i].rev < rev)
            rev = r->watches[i].rev;
    r->base.status.revision = rev;
}

/* Move the fragments' events and this last one's into one response. */
static bool join_fragments(struct watch *w, struct wg_etcd_watch_response *m)
{
    struct wg_etcd_watch_response *f = &w->frag;
    size_t n = f->n_events + m->n_events;
    struct wg_etcd_event *v;

    if (!f->n_events)
        return true;
    if (!(v = realloc(f->events, (n ? n : 1) * sizeof *v)))
        return false;
    memcpy(v + f->n_events, m->events, m->n_events * sizeof *v);
    free(m->events);
    m->events = v;
    m->n_events = n;
    f->events = NULL;
    f->n_events = 0;
    return true;
}

static bool keep_fragment(struct watch *w, struct wg_etcd_watch_response *m)
{
    bool ok = join_fragments(w, m);

    if (ok) {
        w->frag.events = m->events;
        w->frag.n_events = m->n_events;
        m->events = NULL;
        m->n_events = 0;
    }
    return ok;
}

/* Problems a message reveals: returns false after failing the session. */
static bool watch_check(struct watch *w, const struct wg_etcd_watch_response *m)
{
    struct etcd_registry *r = w->r;
    char why[400];

    if (m->error_code) {
        snprintf(why, sizeof why, "watch error: grpc code %d %s", m->error_code, m->error_message);
        session_fail(r, m->error_code == WG_GRPC_UNAUTHENTICATED ? FAIL_REAUTH : FAIL_ERROR, why);
        return false;
    }
    if (m->header.cluster_id && r->cluster_id && m->header.cluster_id != r->cluster_id) {
        session_fail(r, FAIL_RESYNC, "the endpoint belongs to another cluster");
        return false;
    }
    if (m->header.revision && m->header.revision < w->rev)
        start_probe(w);     /* a lagging member, or a cluster that went back? */
    if (m->canceled) {
        bool auth = strstr(m->cancel_reason, "auth") || strstr(m->cancel_reason, "permission");
        snprintf(why, sizeof why, "watch canceled: compact_revision=%lld reason=\"%s\"",
                 (long long)m->compact_revision, m->cancel_reason);
        session_fail(r, m->compact_revision ? FAIL_RESYNC : auth ? FAIL_REAUTH : FAIL_ERROR, why);
        return false;
    }
    return true;
}

static void watch_handle(struct watch *w, struct wg_etcd_watch_response *m, uint64_t recv_ns)
{
    struct etcd_registry *r = w->r;

    if (!watch_check(w, m))
        return;
    contact(r);
    arm(w->silence, r->watch_timeout_ms);
    if (m->created && !w->created) {
        w->created = true;
        all_created(r);
    }
    if (m->fragment) {
        if (!keep_fragment(w, m))
            session_fail(r, FAIL_ERROR, "out of memory");
        return;
    }
    if (!join_fragments(w, m)) {
        session_fail(r, FAIL_ERROR, "out of memory");
        return;
    }
    if (m->n_events)
        apply_events(w, m->events, m->n_events, recv_ns);
    else if (wg_etcd_watch_is_progress(m) && m->header.revision > w->rev)
        w->rev = m->header.revision;
    track_revision(r);
}

static bool watch_message(void *arg, struct wg_etcd_call *call, unsigned status, const char *msg,
                          size_t len, uint64_t recv_ns)
{
    struct watch *w = arg;
    struct wg_etcd_watch_response m;
    const char *why;

    if (status != 200) {
        unary_error(w->r, status, msg, len, "watch");
        return false;
    }
    if (!wg_etcd_parse_watch(msg, len, &m, &why)) {
        session_fail(w->r, FAIL_ERROR, why);
        return false;
    }
    watch_handle(w, &m, recv_ns);
    wg_etcd_watch_response_free(&m);
    return w->call == call;
}

static void watch_end(void *arg, struct wg_etcd_call *call, bool ok, const char *why)
{
    struct watch *w = arg;

    if (w->call == call) {
        w->call = NULL;
        session_fail(w->r, FAIL_ERROR, why ? why : "watch stream ended");
    }
}

static const struct wg_etcd_call_ops watch_ops = { watch_message, watch_end };

static void start_watches(struct etcd_registry *r)
{
    for (size_t i = 0; i < r->n_prefixes && r->live; i++) {
        struct watch *w = &r->watches[i];
        char *body = wg_etcd_watch_request(w->prefix, w->rev + 1);
        w->call = body ? wg_etcd_call_start(r->client, r->ep, "/v3/watch", body, true, 0,
                                            &watch_ops, w)
                       : NULL;
        free(body);
        if (!w->call) {
            session_fail(r, FAIL_ERROR, "out of memory");
            return;
        }
        arm(w->silence, r->watch_timeout_ms);
    }
}

/* ---- silence probe ------------------------------------------------------------------------ */

/* The probe is a linearizable read: its revision is the cluster's, so one
 * below what was applied means the cluster went back (a restore). */
static bool probe_message(void *arg, struct wg_etcd_call *call, unsigned status, const char *msg,
                          size_t len, uint64_t recv_ns)
{
    struct watch *w = arg;
    struct wg_etcd_range_response rr;
    const char *why;
    char text[200];

    w->probe = NULL;
    if (status != 200) {
        unary_error(w->r, status, msg, len, "silence probe");
        return false;
    }
    if (!wg_etcd_parse_range(msg, len, &rr, &why)) {
        session_fail(w->r, FAIL_ERROR, why);
        return false;
    }
    wg_etcd_range_response_free(&rr);
    if (rr.header.revision < w->rev) {
        snprintf(text, sizeof text, "revision went backwards (%lld < %lld)",
                 (long long)rr.header.revision, (long long)w->rev);
        session_fail(w->r, FAIL_RESYNC, text);
        return false;
    }
    contact(w->r);
    wg_debug("msg=\"etcd silence probe answered\" prefix=%s", w->prefix);
    arm(w->silence, w->r->watch_timeout_ms);
    return false;
}

static void probe_end(void *arg, struct wg_etcd_call *call, bool ok, const char *why)
{
    struct watch *w = arg;
    char text[300];

    if (w->probe == call) {
        w->probe = NULL;
        snprintf(text, sizeof text, "silence probe failed: %s", why ? why : "no answer");
        session_fail(w->r, FAIL_ERROR, text);
    }
}

static const struct wg_etcd_call_ops probe_ops = { probe_message, probe_end };

static void start_probe(struct watch *w)
{
    struct etcd_registry *r = w->r;
    uint64_t timeout = r->watch_timeout_ms;
    char *body;

    if (w->probe || !w->call)
        return;
    timeout = timeout < PROBE_MIN_MS ? PROBE_MIN_MS : timeout > PROBE_MAX_MS ? PROBE_MAX_MS
                                                                              : timeout;
    body = wg_etcd_range_request(w->prefix, NULL, 0, 0, 0, true);
    w->probe = body ? wg_etcd_call_start(r->client, r->ep, "/v3/kv/range", body, false, timeout,
                                         &probe_ops, w)
                    : NULL;
    free(body);
    if (!w->probe)
        session_fail(r, FAIL_ERROR, "out of memory");
}

static void silence_cb(evutil_socket_t fd, short what, void *arg) { start_probe(arg); }

/* ---- sessions ------------------------------------------------------------------------------ */

static void load_cache(struct etcd_registry *r)
{
    struct wg_record_set set = { 0 };

    r->cache_tried = true;
    if (!r->cache || !wg_registry_cache_load(r->cache, &set))
        return;
    if (wg_pool_replace_all(r->base.pool, &set) < 0)
        wg_error("msg=\"cannot publish the registry cache\"");
    else
        wg_warn("msg=\"etcd unreachable: serving the registry cache until it answers\" "
                "instances=%zu", set.n);
    wg_record_set_clear(&set);
}

static void cache_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct etcd_registry *r = arg;

    if (!r->synced && !r->cache_tried)
        load_cache(r);
}

static void session_fail(struct etcd_registry *r, enum fail_kind kind, const char *why)
{
    uint64_t delay = 0;

    if (!r->live)
        return;
    r->live = false;
    wg_etcd_call_cancel(r->unary);
    r->unary = NULL;
    r->listing = false;
    list_reset(&r->list);
    for (size_t i = 0; i < r->n_prefixes; i++)
        watch_stop(&r->watches[i]);
    r->base.status.connected = false;
    if (kind == FAIL_RESYNC) {
        r->need_resync = true;
        r->cluster_id = 0;
    } else if (kind == FAIL_REAUTH && r->username && !r->reauthed) {
        r->reauthed = true;
        wg_etcd_client_set_token(r->client, NULL);
    } else {
        r->base.status.reconnects_total++;
        r->ep = (r->ep + 1) % wg_etcd_client_endpoints(r->client);
        delay = jitter(r->backoff_ms);
        r->backoff_ms = r->backoff_ms * 2 > r->backoff_max_ms ? r->backoff_max_ms
                                                              : r->backoff_ms * 2;
        if (kind == FAIL_REAUTH)
            wg_etcd_client_set_token(r->client, NULL);
    }
    wg_warn("msg=\"etcd session ended, keeping the last known pools\" reason=\"%s\" "
            "next_endpoint=%s retry_ms=%llu", why, wg_etcd_client_endpoint(r->client, r->ep),
            (unsigned long long)delay);
    if (!r->synced && !r->cache_tried)
        load_cache(r);
    arm(r->retry, delay);
}

static void session_start(evutil_socket_t fd, short what, void *arg)
{
    struct etcd_registry *r = arg;

    r->live = true;
    if (r->username && !wg_etcd_client_has_token(r->client))
        start_auth(r);
    else
        session_continue(r);
}

static void published(struct etcd_registry *r)
{
    if (r->cache)
        wg_registry_cache_publish(r->cache, wg_pool_published(r->base.pool));
}

/* ---- construction ----------------------------------------------------------------------------- */

static int etcd_start(struct wg_registry *base)
{
    struct etcd_registry *r = (struct etcd_registry *)base;

    r->backoff_ms = r->backoff_initial_ms;
    if (!(r->retry = evtimer_new(base->base, session_start, r)))
        return -1;
    if (r->cache) {
        if (!(r->cache_timer = evtimer_new(base->base, cache_timer_cb, r)))
            return -1;
        arm(r->cache_timer, CACHE_AFTER_MS);     /* etcd reachable but slow to answer */
    }
    for (size_t i = 0; i < r->n_prefixes; i++)
        if (!(r->watches[i].silence = evtimer_new(base->base, silence_cb, &r->watches[i])))
            return -1;
    wg_info("msg=\"etcd registry starting\" endpoints=%zu first=%s prefixes=%zu",
            wg_etcd_client_endpoints(r->client), wg_etcd_client_endpoint(r->client, 0),
            r->n_prefixes);
    arm(r->retry, 0);
    return 0;
}

static void etcd_free(struct wg_registry *base)
{
    struct etcd_registry *r = (struct etcd_registry *)base;

    wg_etcd_call_cancel(r->unary);
    list_reset(&r->list);
    while (r->lookups) {
        struct dns_lookup *d = r->lookups;
        r->lookups = d->next;
        /* the cancel's callback is deferred to a loop that no longer runs */
        evdns_getaddrinfo_cancel(d->req);
        free(d->key);
        free(d);
    }
    for (size_t i = 0; r->watches && i < r->n_prefixes; i++) {
        watch_stop(&r->watches[i]);
        if (r->watches[i].silence)
            event_free(r->watches[i].silence);
        free(r->watches[i].prefix);
    }
    free(r->watches);
    if (r->retry)
        event_free(r->retry);
    if (r->cache_timer)
        event_free(r->cache_timer);
    wg_registry_cache_free(r->cache);
    keymap_clear(&r->map);
    wg_etcd_client_free(r->client);
    /* A bufferevent freed above may still have a deferred callback queued
     * (libevent defers a refused connect's error), which holds a reference
     * on it: one non-blocking pass of the loop runs those, so that the
     * bufferevents are really freed before the base is. Retired from inside
     * the running loop (a reload), the loop runs them once the current
     * callback returns; libevent refuses a nested pass (and said so on
     * stderr: "reentrant invocation"). */
    if (base->base && !base->in_loop)
        event_base_loop(base->base, EVLOOP_NONBLOCK);
    for (size_t i = 0; i < r->n_prefixes; i++)
        free(r->prefixes[i]);
    free(r->prefixes);
    free(r->username);
    free(r->password);
    free(r);
}

static const struct wg_registry_ops etcd_ops = { "etcd", etcd_start, etcd_free };

/* "/services" means "/services/": keys are <prefix><service>/<id>, and a
 * prefix without its '/' would also match "/services-old/...". */
static char *prefix_dir(const char *prefix)
{
    size_t n = strlen(prefix);
    char *p = malloc(n + 2);

    if (!p)
        return NULL;
    memcpy(p, prefix, n + 1);
    if (n && prefix[n - 1] != '/') {
        p[n] = '/';
        p[n + 1] = '\0';
        wg_info("msg=\"etcd prefix taken as a directory\" prefix=%s watched=%s", prefix, p);
    }
    return p;
}

static bool copy_settings(struct etcd_registry *r, const struct wg_config *cfg)
{
    const typeof(cfg->registry.etcd) *e = &cfg->registry.etcd;

    r->watch_timeout_ms = e->watch_timeout_ms ? e->watch_timeout_ms : 10000;
    r->backoff_initial_ms = e->backoff_initial_ms ? e->backoff_initial_ms : 50;
    r->backoff_max_ms = e->backoff_max_ms ? e->backoff_max_ms : 5000;
    if (e->username && *e->username &&
        (!(r->username = strdup(e->username)) || !(r->password = strdup(e->password ? e->password : ""))))
        return false;
    r->n_prefixes = e->n_prefixes;
    if (!(r->prefixes = calloc(e->n_prefixes ? e->n_prefixes : 1, sizeof *r->prefixes)) ||
        !(r->watches = calloc(e->n_prefixes ? e->n_prefixes : 1, sizeof *r->watches)))
        return false;
    for (size_t i = 0; i < e->n_prefixes; i++) {
        r->watches[i].r = r;
        if (!(r->prefixes[i] = prefix_dir(e->prefixes[i])) ||
            !(r->watches[i].prefix = strdup(r->prefixes[i])))
            return false;
    }
    return true;
}

struct wg_registry *wg_registry_etcd_new(const struct wg_config *cfg, struct event_base *base,
                                         struct wg_pool *pool)
{
    struct etcd_registry *r = calloc(1, sizeof *r);
    const typeof(cfg->registry.etcd) *e = &cfg->registry.etcd;
    struct wg_etcd_tls tls = { e->tls.ca, e->tls.cert, e->tls.key, e->tls.server_name };
    char err[300];

    if (!r)
        return NULL;
    r->base.ops = &etcd_ops;
    r->base.base = base;
    r->base.pool = pool;
    r->base.status.source = "etcd";
    if (!copy_settings(r, cfg))
        goto fail;
    if (!(r->client = wg_etcd_client_new(base, e->endpoints, e->n_endpoints, &tls, err,
                                         sizeof err))) {
        wg_error("msg=\"%s\"", err);
        goto fail;
    }
    if (cfg->registry.cache && *cfg->registry.cache &&
        !(r->cache = wg_registry_cache_new(cfg->registry.cache)))
        goto fail;
    return &r->base;
fail:
    etcd_free(&r->base);
    return NULL;
}
