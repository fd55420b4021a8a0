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
#include "registry_map.h"
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
#define LIST_CHUNK 2000             /* values applied per loop turn (~2 ms) */
#define CACHE_AFTER_MS 1000         /* no list by then: serve the cache */

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
    unsigned pages;
    unsigned early;                 /* pages requested before their predecessor's parse */
    uint64_t started_ns;            /* the first page requested */
    uint64_t last_page_ns;          /* the last page read off the socket */
    uint64_t decode_ns;             /* CPU time decoding pages (waygate's share) */
    uint64_t longest_ns;            /* the longest step (a page's parse, a chunk) */
    /* The page being applied, a chunk per loop turn, while etcd serves the
     * next one (list_apply_cb). */
    struct wg_etcd_range_response page;
    bool page_held;
    size_t page_pos;                /* values of `page` applied so far */
    size_t page_prefix;             /* index of the prefix `page` lists */
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
    struct event *list_apply;       /* applies the held page (0 s timer) */
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
    struct rmap_resolver resolver;
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
        rmap_delete(m, kv->key);
        return false;
    }
    if (!(e = rmap_put(m, kv->key, &set)))
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
            rmap_delete(&r->map, ev[i].kv.key);
        else
            apply_value(r, &r->map, w->prefix, &ev[i].kv);
        if (ev[i].kv.mod_revision > w->rev)
            w->rev = ev[i].kv.mod_revision;
    }
    rmap_stage(r->base.pool, &r->map);
    uint64_t generation = wg_pool_commit(r->base.pool);
    uint64_t ns = wg_now_ns() - recv_ns;
    wg_registry_observe_propagation(&r->base.status, ns);
    r->base.status.events_total += n;
    published(r);
    wg_debug("msg=\"etcd watch response applied\" prefix=%s events=%zu revision=%lld "
             "generation=%llu propagation_us=%.1f", w->prefix, n, (long long)w->rev,
             (unsigned long long)generation, ns / 1000.0);
}

/* ---- hostnames ------------------------------------------------------------------------ */

/* A listing's map, where an answer for a key being listed goes. */
static struct keymap *dns_staging(void *arg)
{
    struct etcd_registry *r = arg;

    return r->listing ? &r->list.map : NULL;
}

/* A live record got its address: publish it. */
static void dns_commit(void *arg)
{
    struct etcd_registry *r = arg;

    rmap_stage(r->base.pool, &r->map);
    wg_pool_commit(r->base.pool);
    published(r);
}

static void dns_start(struct etcd_registry *r, struct key_entry *e, struct wg_record_hosts *h)
{
    r->resolver.dns = wg_etcd_client_dns(r->client);
    rmap_resolve(&r->resolver, e, h);
}

/* ---- listing ----------------------------------------------------------------------------- */

static void list_reset(struct listing *l)
{
    if (l->page_held)
        wg_etcd_range_response_free(&l->page);
    rmap_clear(&l->map);
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
    r->list.started_ns = wg_now_ns();
    list_page(r);
}

/* The list is complete: it replaces the pools, watches start after it. */
static void list_done(struct etcd_registry *r)
{
    bool resync = r->synced;

    r->listing = false;
    rmap_clear(&r->map);
    r->map = r->list.map;
    memset(&r->list.map, 0, sizeof r->list.map);
    long instances = rmap_replace_all(r->base.pool, &r->map);
    if (instances < 0)
        wg_error("msg=\"cannot publish the etcd list\"");
    uint64_t now = wg_now_ns();
    for (size_t i = 0; i < r->n_prefixes; i++)
        r->watches[i].rev = r->list.rev;
    r->base.status.revision = r->list.rev;
    if (resync)
        r->base.status.resyncs_total++;
    /* early_requests: pages asked for before the page before them was parsed
     * (all but the first two when etcd's pages have the usual compact shape:
     * the first page pins the revision).
     * list_ms: first request to last page read; publish_ms: last page read
     * to the snapshot published; decode_ms: pages decoded (within list_ms);
     * longest_step_ms: the longest the decoding kept the loop (a page's
     * parse or a chunk of its values). decode and steps in thread CPU time. */
    wg_info("msg=\"etcd list applied\" endpoint=%s revision=%lld keys=%zu instances=%zu "
            "invalid=%u resync=%d pages=%u early_requests=%u list_ms=%.1f decode_ms=%.1f "
            "longest_step_ms=%.1f publish_ms=%.1f",
            wg_etcd_client_endpoint(r->client, r->ep), (long long)r->list.rev, r->map.keys.n,
            instances < 0 ? (size_t)0 : (size_t)instances, r->list.invalid, resync, r->list.pages,
            r->list.early,
            (double)(r->list.last_page_ns - r->list.started_ns) / 1e6,
            (double)r->list.decode_ns / 1e6, (double)r->list.longest_ns / 1e6,
            (double)(now - r->list.last_page_ns) / 1e6);
    r->synced = true;
    r->need_resync = false;
    list_reset(&r->list);
    published(r);
    start_watches(r);
}

/* Where the next page starts, from the page just read (before its values
 * are applied, so that its request goes out first). */
static bool list_advance(struct etcd_registry *r, const struct wg_etcd_range_response *rr)
{
    struct listing *l = &r->list;

    if (l->rev == 0) {
        l->rev = rr->header.revision;
        r->cluster_id = rr->header.cluster_id;
    }
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

/* Apply up to `max` more values of the held page; true when it is done. */
static bool list_apply_some(struct etcd_registry *r, size_t max)
{
    struct listing *l = &r->list;
    uint64_t t0 = wg_thread_cpu_ns();
    size_t end = l->page.n_kvs - l->page_pos > max ? l->page_pos + max : l->page.n_kvs;

    for (; l->page_pos < end; l->page_pos++)
        if (!apply_value(r, &l->map, r->prefixes[l->page_prefix], &l->page.kvs[l->page_pos]))
            l->invalid++;
    uint64_t step = wg_thread_cpu_ns() - t0;
    l->decode_ns += step;
    l->longest_ns = step > l->longest_ns ? step : l->longest_ns;
    if (l->page_pos < l->page.n_kvs)
        return false;
    wg_etcd_range_response_free(&l->page);
    l->page_held = false;
    return true;
}

/* A chunk of the held page per loop turn: the control thread stays
 * responsive, and the next page's request is written meanwhile. After the
 * last page, the list is applied. */
static void list_apply_cb(evutil_socket_t fd, short what, void *arg)
{
    struct etcd_registry *r = arg;
    struct timeval now = { 0, 0 };

    if (!r->listing || !r->list.page_held)
        return;
    if (!list_apply_some(r, LIST_CHUNK))
        evtimer_add(r->list_apply, &now);
    else if (r->list.prefix >= r->n_prefixes)
        list_done(r);
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
    struct listing *l = &r->list;
    struct timeval now = { 0, 0 };
    l->last_page_ns = recv_ns;
    l->pages++;
    /* The next page's request first, from the key this one ends with,
     * before this page is parsed (tens of ms for 10,000 keys) and the rest
     * of the previous one applied: etcd serves it meanwhile. The parse
     * below confirms the key (else the request is cancelled and sent again
     * from the parsed page). The first page also pins the revision. */
    bool early = false;
    char *next;
    size_t next_len;
    if (l->rev && wg_etcd_range_peek_last_key(msg, len, &next, &next_len)) {
        free(l->after);
        l->after = next;
        l->after_len = next_len;
        list_page(r);
        if (!r->unary)
            return false;               /* the session failed */
        early = true;
        l->early++;
    }
    if (l->page_held)                   /* the previous page first, whole */
        list_apply_some(r, SIZE_MAX);
    uint64_t t0 = wg_thread_cpu_ns();
    if (!wg_etcd_parse_range(msg, len, &rr, &why)) {
        session_fail(r, FAIL_ERROR, why);
        return false;
    }
    uint64_t step = wg_thread_cpu_ns() - t0;
    l->decode_ns += step;
    l->longest_ns = step > l->longest_ns ? step : l->longest_ns;
    l->page_prefix = l->prefix;
    const struct wg_etcd_kv *last = rr.n_kvs ? &rr.kvs[rr.n_kvs - 1] : NULL;
    if (early && (!rr.more || !last || last->key_len != l->after_len ||
                  memcmp(last->key, l->after, l->after_len) != 0)) {
        wg_warn("msg=\"etcd range page did not end as its text said, asking again\"");
        wg_etcd_call_cancel(r->unary);
        r->unary = NULL;
        early = false;
    }
    if (!early && !list_advance(r, &rr)) {
        wg_etcd_range_response_free(&rr);
        session_fail(r, FAIL_ERROR, "out of memory");
        return false;
    }
    l->page = rr;
    l->page_held = true;
    l->page_pos = 0;
    if (!early && l->prefix < r->n_prefixes)
        list_page(r);                   /* etcd serves it while this one is applied */
    if (r->unary || l->prefix >= r->n_prefixes)
        evtimer_add(r->list_apply, &now);
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
    r->cache_tried = true;
    wg_registry_cache_serve(r->cache, r->base.pool, "etcd");
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
    if (!(r->list_apply = evtimer_new(base->base, list_apply_cb, r)))
        return -1;
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
    rmap_resolver_cancel(&r->resolver);
    for (size_t i = 0; r->watches && i < r->n_prefixes; i++) {
        watch_stop(&r->watches[i]);
        if (r->watches[i].silence)
            event_free(r->watches[i].silence);
        free(r->watches[i].prefix);
    }
    free(r->watches);
    if (r->retry)
        event_free(r->retry);
    if (r->list_apply)
        event_free(r->list_apply);
    if (r->cache_timer)
        event_free(r->cache_timer);
    wg_registry_cache_free(r->cache);
    rmap_clear(&r->map);
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
    r->resolver = (struct rmap_resolver){ .live = &r->map, .staging = dns_staging,
                                          .commit = dns_commit, .arg = r,
                                          .invalid = &r->base.status.invalid_records_total };
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
