/* registry_map — see registry_map.h. */
#include "registry_map.h"

#include <arpa/inet.h>
#include <event2/dns.h>
#include <event2/util.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "waygate/log.h"
#include "waygate/pool.h"

/* ---- key and service tables --------------------------------------------------- */

struct hnode *rmap_find(const struct htable *t, const char *name)
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

bool rmap_insert(struct htable *t, struct hnode *n)
{
    if (t->n + 1 > t->cap / 2 * 1 + t->cap / 4 && !ht_grow(t))
        return false;
    n->hash = wg_record_name_hash(n->name);
    n->next = t->b[n->hash & (t->cap - 1)];
    t->b[n->hash & (t->cap - 1)] = n;
    t->n++;
    return true;
}

void rmap_remove(struct htable *t, struct hnode *n)
{
    struct hnode **pp = &t->b[n->hash & (t->cap - 1)];

    while (*pp && *pp != n)
        pp = &(*pp)->next;
    if (*pp) {
        *pp = n->next;
        t->n--;
    }
}



/* Values applied so far, on the control thread (identifies a key's value
 * across maps, for DNS answers). */
static uint64_t entry_seq;

static void entry_free_records(struct key_entry *e)
{
    for (size_t i = 0; i < e->n; i++) {
        free(e->recs[i].id);
        free(e->recs[i].metadata);
        free(e->recs[i].grpc_addr);
    }
    if (e->recs != &e->one)
        free(e->recs);
    e->recs = NULL;
    e->n = 0;
}

void rmap_mark(struct keymap *m, struct svc *s)
{
    if (s->dirty)
        return;
    s->dirty = true;
    s->dirty_next = m->dirty;
    m->dirty = s;
}

static struct svc *svc_get(struct keymap *m, const char *name)
{
    struct svc *s = (struct svc *)rmap_find(&m->svcs, name);

    if (s)
        return s;
    if (!(s = calloc(1, sizeof *s)) || !(s->h.name = strdup(name)) || !rmap_insert(&m->svcs, &s->h)) {
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
    rmap_mark(m, s);
    rmap_remove(&m->keys, &e->h);
    entry_free_records(e);
    free(e);
}

bool rmap_delete(struct keymap *m, const char *key)
{
    struct key_entry *e = (struct key_entry *)rmap_find(&m->keys, key);

    if (e)
        entry_unlink(m, e);
    return e != NULL;
}

static struct key_entry *entry_new(struct keymap *m, const char *key, struct svc *s)
{
    size_t len = strlen(key);
    struct key_entry *e = calloc(1, sizeof *e + len + 1);

    if (!e)
        return NULL;
    e->h.name = (char *)(e + 1);
    memcpy(e->h.name, key, len + 1);
    if (!rmap_insert(&m->keys, &e->h)) {
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
struct key_entry *rmap_put(struct keymap *m, const char *key, struct wg_record_set *set)
{
    struct key_entry *e = (struct key_entry *)rmap_find(&m->keys, key);
    struct svc *s = e ? e->svc : svc_get(m, set->v[0].service);

    if (!e && s)
        e = entry_new(m, key, s);
    if (!e) {
        wg_record_set_clear(set);
        return NULL;
    }
    s->n_records -= e->n;
    entry_free_records(e);
    struct rmap_rec *v = set->n == 1 ? &e->one : malloc(set->n * sizeof *v);
    if (!v) {
        wg_record_set_clear(set);
        rmap_mark(m, s);
        return NULL;
    }
    for (size_t i = 0; i < set->n; i++) {
        struct wg_record *r = &set->v[i];
        v[i] = (struct rmap_rec){ r->id, r->metadata, r->weight, 0, { 0 }, r->protocol,
                                  r->grpc_endpoint, NULL };
        if (r->addr.ss_family != AF_UNSPEC && r->addrlen <= sizeof v[i].addr) {
            memcpy(&v[i].addr, &r->addr, r->addrlen);
            v[i].addrlen = r->addrlen;
        }
        /* Rare (Kratos values with both endpoints): out of memory only
         * loses the alternative, the http:// endpoint stays. */
        if (r->grpc_addrlen && r->grpc_addrlen <= sizeof *v[i].grpc_addr &&
            (v[i].grpc_addr = calloc(1, sizeof *v[i].grpc_addr)))
            memcpy(v[i].grpc_addr, &r->grpc_addr, r->grpc_addrlen);
        r->id = r->metadata = NULL;     /* taken */
    }
    e->recs = v;
    e->n = set->n;
    e->seq = ++entry_seq;
    s->n_records += e->n;
    wg_record_set_clear(set);
    rmap_mark(m, s);
    return e;
}

void rmap_clear(struct keymap *m)
{
    for (size_t i = 0; i < m->keys.cap; i++)
        for (struct hnode *n = m->keys.b[i], *next; n; n = next) {
            struct key_entry *e = (struct key_entry *)n;
            next = n->next;
            entry_free_records(e);
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
        for (size_t i = 0; i < e->n; i++) {
            const struct rmap_rec *kr = &e->recs[i];
            if (kr->addr.sin6_family == AF_UNSPEC)
                continue;
            out[n] = (struct wg_record){ .service = s->h.name, .id = kr->id, .addrlen = kr->addrlen,
                                         .weight = kr->weight, .metadata = kr->metadata,
                                         .protocol = kr->protocol,
                                         .grpc_endpoint = kr->grpc_endpoint };
            if (kr->grpc_addr) {
                socklen_t gl = kr->grpc_addr->sin6_family == AF_INET6
                                   ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
                memcpy(&out[n].grpc_addr, kr->grpc_addr, gl);
                out[n].grpc_addrlen = gl;
            }
            memcpy(&out[n++].addr, &kr->addr, kr->addrlen);
        }
    if (n > 1)
        qsort(out, n, sizeof *out, rec_id_cmp);
    for (size_t i = 0; i < n; i++)
        if (k == 0 || strcmp(out[k - 1].id, out[i].id) != 0)
            out[k++] = out[i];
        else
            wg_warn("msg=\"duplicate instance id, one skipped\" service=%s id=%s", s->h.name,
                    out[i].id);
    return k;
}

/* Stage one service's usable records; the count, -1 when it failed. */
static long svc_stage(struct wg_pool *pool, struct svc *s)
{
    struct wg_record *recs = malloc((s->n_records ? s->n_records : 1) * sizeof *recs);
    size_t n = recs ? svc_collect(s, recs) : 0;
    long rc = (long)n;
    if (!recs || wg_pool_stage_service(pool, s->h.name, recs, n) < 0) {
        wg_error("msg=\"cannot stage service, keeping its last pool\" service=%s", s->h.name);
        rc = -1;
    }
    free(recs);
    return rc;
}

static void svc_free(struct keymap *m, struct svc *s)
{
    rmap_remove(&m->svcs, &s->h);
    free(s->h.name);
    free(s);
}

/* Stage every service the map marked dirty. */
void rmap_stage(struct wg_pool *pool, struct keymap *m)
{
    while (m->dirty) {
        struct svc *s = m->dirty;
        m->dirty = s->dirty_next;
        s->dirty = false;
        svc_stage(pool, s);
        if (!s->keys)
            svc_free(m, s);
    }
}

long rmap_replace_all(struct wg_pool *pool, struct keymap *m)
{
    long total = 0;
    bool failed = false;
    for (; m->dirty; m->dirty = m->dirty->dirty_next)
        m->dirty->dirty = false;
    for (size_t i = 0; i < m->svcs.cap; i++)
        for (struct hnode *h = m->svcs.b[i], *next; h; h = next) {
            struct svc *s = (struct svc *)h;
            next = h->next;
            long n = s->keys ? svc_stage(pool, s) : 0;
            failed |= n < 0;
            total += n > 0 ? n : 0;
            if (!s->keys)
                svc_free(m, s);
        }
    const struct wg_snapshot *cur = wg_pool_published(pool);
    for (size_t k = 0; cur && k < cur->n_services; k++)
        if (!rmap_find(&m->svcs, cur->services[k]->name) &&
            wg_pool_stage_service(pool, cur->services[k]->name, NULL, 0) < 0)
            failed = true;
    wg_pool_commit(pool);
    return failed ? -1 : total;
}

size_t rmap_sweep(struct keymap *m, uint64_t mark)
{
    size_t n = 0;

    for (size_t i = 0; i < m->keys.cap; i++)
        for (struct hnode *h = m->keys.b[i], *next; h; h = next) {
            next = h->next;
            if (((struct key_entry *)h)->mark < mark) {
                entry_unlink(m, (struct key_entry *)h);
                n++;
            }
        }
    return n;
}

/* ---- host names --------------------------------------------------------------------------- */

struct rmap_lookup {
    struct rmap_resolver *r;
    struct rmap_lookup *next;
    bool linked;
    struct evdns_getaddrinfo_request *req;
    char *key;
    uint64_t seq;
    size_t index;
    uint16_t port;
};

static void dns_unlink(struct rmap_lookup *d)
{
    for (struct rmap_lookup **pp = d->linked ? &d->r->lookups : NULL; pp && *pp;
         pp = &(*pp)->next)
        if (*pp == d) {
            *pp = d->next;
            break;
        }
    free(d->key);
    free(d);
}

/* Fill the record's address from the answer, or drop the record. */
static void dns_answer(struct rmap_lookup *d, struct key_entry *e, int err, struct evutil_addrinfo *ai)
{
    struct rmap_resolver *r = d->r;
    struct rmap_rec *rec = &e->recs[d->index];

    for (struct evutil_addrinfo *p = ai; p; p = p->ai_next)
        if (p->ai_family == AF_INET) {
            ai = p;                 /* IPv4 first, like getaddrinfo's usual order */
            break;
        }
    if (err || !ai || ai->ai_addrlen > sizeof rec->addr) {
        wg_warn("msg=\"invalid registry record skipped: host name does not resolve\" key=\"%.200s\" "
                "id=%s error=\"%s\"", d->key, rec->id, err ? evutil_gai_strerror(err) : "no address");
        if (r->invalid)
            (*r->invalid)++;
        return;
    }
    memcpy(&rec->addr, ai->ai_addr, ai->ai_addrlen);
    rec->addrlen = (socklen_t)ai->ai_addrlen;
    if (rec->addr.sin6_family == AF_INET)
        ((struct sockaddr_in *)&rec->addr)->sin_port = htons(d->port);
    else
        rec->addr.sin6_port = htons(d->port);
    if (rmap_find(&r->live->keys, d->key) != &e->h)
        return;                     /* in a list still running: published with it */
    rmap_mark(r->live, e->svc);
    r->commit(r->arg);
}

static void dns_cb(int err, struct evutil_addrinfo *ai, void *arg)
{
    struct rmap_lookup *d = arg;
    struct key_entry *e;

    if (err == EVUTIL_EAI_CANCEL) {
        dns_unlink(d);
        return;
    }
    struct keymap *staging = d->r->staging ? d->r->staging(d->r->arg) : NULL;
    e = (struct key_entry *)rmap_find(&d->r->live->keys, d->key);
    if ((!e || e->seq != d->seq) && staging)
        e = (struct key_entry *)rmap_find(&staging->keys, d->key);
    if (e && e->seq == d->seq && d->index < e->n)
        dns_answer(d, e, err, ai);
    if (ai)
        evutil_freeaddrinfo(ai);
    dns_unlink(d);
}

void rmap_resolve(struct rmap_resolver *r, struct key_entry *e, const struct wg_record_hosts *h)
{
    struct evutil_addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM };

    for (size_t i = 0; i < h->n; i++) {
        struct rmap_lookup *d = calloc(1, sizeof *d);
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
            evdns_getaddrinfo(r->dns, h->v[i].name, NULL, &hints, dns_cb, d);
        if (req) {
            d->req = req;
            d->linked = true;
            d->next = r->lookups;
            r->lookups = d;
        }
    }
}

void rmap_resolver_cancel(struct rmap_resolver *r)
{
    while (r->lookups) {
        struct rmap_lookup *d = r->lookups;
        r->lookups = d->next;
        /* libevent answers a cancel with a deferred callback (dns_cb,
         * EVUTIL_EAI_CANCEL), which frees d: run by the loop after a reload
         * replaced the registry, or by the caller's last pass at shutdown.
         * Freeing d here made that callback a use after free (ASan, a reload
         * while a host name was being resolved). */
        d->linked = false;
        d->r = NULL;
        evdns_getaddrinfo_cancel(d->req);
    }
}
