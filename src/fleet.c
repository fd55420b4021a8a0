/* fleet — see include/waygate/fleet.h
 *
 * Two independent loops on the control thread:
 *  - the key: authenticate (when configured), grant a lease, put the
 *    replica's value under it, keep it alive every TTL/3, re-put when the
 *    value changed; a lost lease (keep-alive without TTL, NOT_FOUND) is
 *    granted again and the key re-put;
 *  - the view: range <prefix>replicas/, then watch from the next revision;
 *    any failure re-lists after a backoff.
 */
#include "waygate/fleet.h"

#include <event2/event.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

#include "waygate/etcd_client.h"
#include "waygate/log.h"
#include "waygate/pool.h"
#include "waygate/record.h"

#define GONE_KEEP_MS (10 * 60 * 1000)
#define ZONE_SLOTS 64

/* ---- the live count for other threads ---- */

static struct {
    _Atomic uint64_t hash;              /* 0 = free slot (control thread assigns) */
    _Atomic unsigned n;
} g_zones[ZONE_SLOTS];
static _Atomic unsigned g_total;

static uint64_t zone_hash(const char *zone)
{
    uint64_t h = wg_record_name_hash(zone);
    return h ? h : 1;
}

unsigned wg_fleet_replicas(const char *zone)
{
    unsigned n;
    if (!zone) {
        n = atomic_load_explicit(&g_total, memory_order_relaxed);
        return n ? n : 1;
    }
    uint64_t h = zone_hash(zone);
    for (unsigned k = 0; k < ZONE_SLOTS; k++) {
        uint64_t s = atomic_load_explicit(&g_zones[k].hash, memory_order_relaxed);
        if (!s)
            break;
        if (s == h) {
            n = atomic_load_explicit(&g_zones[k].n, memory_order_relaxed);
            return n ? n : 1;
        }
    }
    return 1;
}

/* ---- state ---- */

enum op { OP_NONE, OP_AUTH, OP_GRANT, OP_PUT, OP_KEEPALIVE, OP_REVOKE };
static const char *const op_names[] = { "none", "authenticate", "lease grant", "put",
                                        "lease keepalive", "lease revoke" };
static const char *const op_paths[] = { "", "/v3/auth/authenticate", "/v3/lease/grant",
                                        "/v3/kv/put", "/v3/lease/keepalive",
                                        "/v3/lease/revoke" };

#define REVOKE_TIMEOUT_MS 1000          /* a stop waits this long at most for etcd */

struct wg_fleet {
    struct event_base *base;
    struct wg_pool *pool;
    struct wg_etcd_client *etcd;
    size_t ep;
    char *user, *password;
    char *name, *prefix, *zone;
    char *key, *key_b64, *watch_prefix;
    uint64_t ttl_ms;
    uint64_t config_hash;
    json_t *listeners;
    uint64_t started_unix_ms;
    /* the key */
    enum op op;
    struct wg_etcd_call *call;
    bool waiting, keepalive_due, registered;
    bool leaving, left;                 /* wg_fleet_leave: revoking; revoked or given up */
    int64_t lease;
    char *put_value;                    /* being written */
    char *value;                        /* last written */
    uint64_t backoff_ms;
    uint64_t last_ok_ms;
    struct event *retry, *tick;
    /* the view */
    struct wg_etcd_call *watch;
    bool listing;
    int64_t revision;
    uint64_t watch_backoff_ms;
    struct event *watch_retry;
    struct wg_fleet_replica *replicas;
    size_t n_replicas, cap_replicas;
    size_t n_live;
};

static uint64_t unix_ms(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (uint64_t)tv.tv_sec * 1000 + (uint64_t)tv.tv_usec / 1000;
}

static void arm_ms(struct event *ev, uint64_t ms)
{
    struct timeval tv = { (time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000 };
    evtimer_add(ev, &tv);
}

static uint64_t call_timeout_ms(const struct wg_fleet *f)
{
    uint64_t t = f->ttl_ms / 3;
    return t < 1000 ? 1000 : t > 5000 ? 5000 : t;
}

/* FNV-1a of the config file: replicas running the same file show the same. */
static uint64_t file_hash(const char *path)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    char buf[8192];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    ssize_t n;
    if (fd < 0)
        return 0;
    while ((n = read(fd, buf, sizeof buf)) > 0)
        for (ssize_t k = 0; k < n; k++)
            h = (h ^ (unsigned char)buf[k]) * 0x100000001b3ULL;
    close(fd);
    return h;
}

static json_t *listeners_json(const struct wg_config *cfg)
{
    json_t *a = json_array();
    for (size_t k = 0; a && k < cfg->n_listeners; k++)
        json_array_append_new(a, json_pack("{ssss}", "name", cfg->listeners[k].name, "listen",
                                           cfg->listeners[k].listen.text));
    return a;
}

/* The value this replica should have in etcd now. */
static char *current_value(const struct wg_fleet *f)
{
    struct wg_snapshot *s = wg_pool_published(f->pool);
    uint64_t instances = 0, healthy = 0;
    for (size_t k = 0; s && k < s->n_services; k++) {
        int h = atomic_load_explicit(&s->services[k]->state->healthy, memory_order_relaxed);
        instances += s->services[k]->n_members;
        healthy += h > 0 ? (uint64_t)h : 0;
    }
    char hash[20];
    snprintf(hash, sizeof hash, "%016llx", (unsigned long long)f->config_hash);
    json_t *o = json_pack("{sssssssIsssOsIs{sIsIsI}}", "name", f->name, "zone", f->zone,
                          "version", WAYGATE_VERSION, "generation",
                          (json_int_t)(s ? s->generation : 0), "config", hash, "listeners",
                          f->listeners, "started", (json_int_t)f->started_unix_ms, "gauges",
                          "services", (json_int_t)(s ? s->n_services : 0), "instances",
                          (json_int_t)instances, "healthy", (json_int_t)healthy);
    char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    return text;
}

/* ---- the live count ---- */

static void publish_counts(struct wg_fleet *f)
{
    unsigned counts[ZONE_SLOTS] = { 0 };
    for (size_t k = 0; k < f->n_live; k++) {
        uint64_t h = zone_hash(f->replicas[k].zone);
        for (unsigned z = 0; z < ZONE_SLOTS; z++) {
            uint64_t s = atomic_load(&g_zones[z].hash);
            if (!s)
                atomic_store(&g_zones[z].hash, s = h);
            if (s == h) {
                counts[z]++;
                break;
            }
        }
    }
    for (unsigned z = 0; z < ZONE_SLOTS; z++)
        atomic_store_explicit(&g_zones[z].n, counts[z], memory_order_relaxed);
    atomic_store_explicit(&g_total, (unsigned)f->n_live, memory_order_relaxed);
}

/* ---- the replica table: live ones first (by name), then gone ones ---- */

static void replica_clear(struct wg_fleet_replica *r)
{
    free(r->name);
    free(r->zone);
    free(r->version);
    free(r->value);
}

static int replica_cmp(const void *a, const void *b)
{
    const struct wg_fleet_replica *x = a, *y = b;
    if (!x->gone_unix_ms != !y->gone_unix_ms)
        return x->gone_unix_ms ? 1 : -1;
    return strcmp(x->name, y->name);
}

static void table_sort(struct wg_fleet *f)
{
    uint64_t now = unix_ms();
    size_t w = 0;
    for (size_t k = 0; k < f->n_replicas; k++) {
        struct wg_fleet_replica *r = &f->replicas[k];
        if (r->gone_unix_ms && now - r->gone_unix_ms > GONE_KEEP_MS) {
            replica_clear(r);
            continue;
        }
        f->replicas[w++] = *r;
    }
    f->n_replicas = w;
    if (f->n_replicas > 1)
        qsort(f->replicas, f->n_replicas, sizeof *f->replicas, replica_cmp);
    f->n_live = 0;
    while (f->n_live < f->n_replicas && !f->replicas[f->n_live].gone_unix_ms)
        f->n_live++;
    publish_counts(f);
}

static struct wg_fleet_replica *table_find(struct wg_fleet *f, const char *name)
{
    for (size_t k = 0; k < f->n_replicas; k++)
        if (strcmp(f->replicas[k].name, name) == 0)
            return &f->replicas[k];
    return NULL;
}

static char *json_str_dup(json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    return strdup(json_is_string(v) ? json_string_value(v) : "");
}

/* A put of replicas/<name>: insert or replace (an undecodable value is still
 * a live replica, shown with empty fields). */
static void table_put(struct wg_fleet *f, const char *name, const char *value, size_t len)
{
    struct wg_fleet_replica *r = table_find(f, name);
    if (!r) {
        if (f->n_replicas == f->cap_replicas) {
            size_t cap = f->cap_replicas ? f->cap_replicas * 2 : 16;
            struct wg_fleet_replica *v = realloc(f->replicas, cap * sizeof *v);
            if (!v)
                return;
            f->replicas = v;
            f->cap_replicas = cap;
        }
        r = &f->replicas[f->n_replicas++];
        memset(r, 0, sizeof *r);
    } else {
        replica_clear(r);
        memset(r, 0, sizeof *r);
    }
    json_t *o = json_loadb(value, len, 0, NULL);
    json_t *gen = json_object_get(o, "generation");
    r->name = strdup(name);
    r->zone = json_str_dup(o, "zone");
    r->version = json_str_dup(o, "version");
    r->value = json_is_object(o) ? strndup(value, len) : strdup("{}");
    r->generation = json_is_integer(gen) ? (uint64_t)json_integer_value(gen) : 0;
    r->self = strcmp(name, f->name) == 0;
    r->updated_unix_ms = unix_ms();
    json_decref(o);
    if (!r->name || !r->zone || !r->version || !r->value) {
        replica_clear(r);
        *r = f->replicas[--f->n_replicas];
    }
}

static void table_gone(struct wg_fleet *f, const char *name)
{
    struct wg_fleet_replica *r = table_find(f, name);
    if (r && !r->gone_unix_ms) {
        r->gone_unix_ms = unix_ms();
        wg_info("msg=\"fleet replica gone\" replica=%s zone=%s", r->name, r->zone);
    }
}

/* The replica name of a key under watch_prefix, or NULL. */
static const char *key_name(const struct wg_fleet *f, const struct wg_etcd_kv *kv)
{
    size_t n = strlen(f->watch_prefix);
    if (kv->key_len <= n || memcmp(kv->key, f->watch_prefix, n) != 0 ||
        memchr(kv->key + n, '/', kv->key_len - n) || strlen(kv->key) != kv->key_len)
        return NULL;
    return kv->key + n;
}

/* ---- the key ---- */

static void advance(struct wg_fleet *f);

static char *dump_and_free(json_t *o)
{
    char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    return text;
}

static char *op_body(struct wg_fleet *f, enum op op)
{
    char id[24], ttl[24];
    snprintf(id, sizeof id, "%lld", (long long)f->lease);
    snprintf(ttl, sizeof ttl, "%llu", (unsigned long long)((f->ttl_ms + 999) / 1000));
    switch (op) {
    case OP_AUTH:
        return wg_etcd_auth_request(f->user, f->password);
    case OP_GRANT:
        return dump_and_free(json_pack("{ss}", "TTL", ttl));
    case OP_PUT: {
        char *v = wg_base64_encode(f->put_value, strlen(f->put_value));
        char *body = v ? dump_and_free(json_pack("{ssssss}", "key", f->key_b64, "value", v,
                                                 "lease", id))
                       : NULL;
        free(v);
        return body;
    }
    case OP_KEEPALIVE:
    case OP_REVOKE:
        return dump_and_free(json_pack("{ss}", "ID", id));
    default:
        return NULL;
    }
}

static void op_failed(struct wg_fleet *f, enum op op, const char *why)
{
    if (f->leaving) {                   /* no retry: the process is stopping */
        wg_warn("msg=\"fleet: the lease could not be revoked, it expires after its TTL\" "
                "reason=\"%s\" lease=%llx ttl_ms=%llu", why, (unsigned long long)f->lease,
                (unsigned long long)f->ttl_ms);
        f->left = true;
        return;
    }
    uint64_t cap = f->ttl_ms / 3, delay;
    delay = f->backoff_ms / 2 + (uint64_t)random() % (f->backoff_ms / 2 + 1);
    f->backoff_ms = f->backoff_ms * 2 > cap ? cap : f->backoff_ms * 2;
    f->ep = (f->ep + 1) % wg_etcd_client_endpoints(f->etcd);
    wg_warn("msg=\"fleet: etcd call failed, retrying\" call=\"%s\" reason=\"%s\" "
            "next_endpoint=%s retry_ms=%llu", op_names[op], why,
            wg_etcd_client_endpoint(f->etcd, f->ep), (unsigned long long)delay);
    f->waiting = true;
    arm_ms(f->retry, delay);
}

static void lease_lost(struct wg_fleet *f, const char *why)
{
    wg_warn("msg=\"fleet: lease lost, granting a new one\" reason=\"%s\" lease=%llx", why,
            (unsigned long long)f->lease);
    f->lease = 0;
    f->registered = false;
    f->keepalive_due = false;
}

/* Returns false on a malformed answer. */
static bool answer_ok(struct wg_fleet *f, enum op op, json_t *root)
{
    int64_t id, ttl;
    json_t *res;
    switch (op) {
    case OP_AUTH: {
        json_t *tok = json_object_get(root, "token");
        return json_is_string(tok) && json_string_length(tok) &&
               wg_etcd_client_set_token(f->etcd, json_string_value(tok)) == 0;
    }
    case OP_GRANT:
        if (!wg_etcd_json_positive(json_object_get(root, "ID"), &id) ||
            !wg_etcd_json_positive(json_object_get(root, "TTL"), &ttl))
            return false;
        f->lease = id;
        f->registered = false;
        wg_info("msg=\"fleet: lease granted\" lease=%llx ttl_s=%lld", (unsigned long long)id,
                (long long)ttl);
        return true;
    case OP_PUT:
        if (!f->registered)
            wg_info("msg=\"fleet: registered\" key=%s lease=%llx", f->key,
                    (unsigned long long)f->lease);
        f->registered = true;
        free(f->value);
        f->value = f->put_value;
        f->put_value = NULL;
        return true;
    case OP_KEEPALIVE:
        res = json_object_get(root, "result");
        if (!json_is_object(res))
            return false;
        if (!wg_etcd_json_positive(json_object_get(res, "TTL"), &ttl))
            lease_lost(f, "keep-alive answered without TTL");
        f->keepalive_due = false;
        return true;
    default:
        return false;
    }
}

static bool op_message(void *arg, struct wg_etcd_call *call, unsigned status, const char *msg,
                       size_t len, uint64_t recv_ns)
{
    struct wg_fleet *f = arg;
    enum op op = f->op;
    if (f->call != call)
        return false;
    json_t *root = json_loadb(msg, len, JSON_DISABLE_EOF_CHECK, NULL);
    char text[200], why[260];
    int code = root ? wg_etcd_answer_code(root, status, text, sizeof text) : -1;
    f->call = NULL;
    f->op = OP_NONE;
    if (op == OP_REVOKE && root && (code == 0 || code == 5)) {     /* 5: expired already */
        wg_info("msg=\"fleet: left, lease revoked\" key=%s lease=%llx", f->key,
                (unsigned long long)f->lease);
        f->left = true;
    } else if (op == OP_REVOKE) {
        snprintf(why, sizeof why, "code %d: %s", code, root ? text : "not JSON");
        op_failed(f, op, why);
    } else if (!root) {
        op_failed(f, op, "not JSON");
    } else if (code == 5 && (op == OP_PUT || op == OP_KEEPALIVE)) {
        lease_lost(f, "lease not found");
        advance(f);
    } else if (code == WG_GRPC_UNAUTHENTICATED) {
        wg_etcd_client_set_token(f->etcd, NULL);
        op_failed(f, op, "token refused");
    } else if (code) {
        snprintf(why, sizeof why, "code %d: %s", code, text);
        op_failed(f, op, why);
    } else if (!answer_ok(f, op, root)) {
        op_failed(f, op, "malformed answer");
    } else {
        f->backoff_ms = 100;
        f->last_ok_ms = wg_now_ms();
        advance(f);
    }
    json_decref(root);
    return false;
}

static void op_end(void *arg, struct wg_etcd_call *call, bool ok, const char *why)
{
    struct wg_fleet *f = arg;
    enum op op = f->op;
    if (f->call != call)
        return;
    f->call = NULL;
    f->op = OP_NONE;
    op_failed(f, op, why ? why : "no answer");
}

static const struct wg_etcd_call_ops op_ops = { op_message, op_end };

static void op_start(struct wg_fleet *f, enum op op)
{
    if (op == OP_PUT && !f->put_value && !(f->put_value = current_value(f))) {
        op_failed(f, op, "out of memory");
        return;
    }
    char *body = op_body(f, op);
    f->op = op;
    f->call = body ? wg_etcd_call_start(f->etcd, f->ep, op_paths[op], body, false,
                                        call_timeout_ms(f), &op_ops, f)
                   : NULL;
    free(body);
    if (!f->call) {
        f->op = OP_NONE;
        op_failed(f, op, "out of memory");
    }
}

static void advance(struct wg_fleet *f)
{
    if (f->call || f->waiting || f->leaving)
        return;
    if (f->user && !wg_etcd_client_has_token(f->etcd))
        op_start(f, OP_AUTH);
    else if (!f->lease)
        op_start(f, OP_GRANT);
    else if (!f->registered || f->put_value)
        op_start(f, OP_PUT);
    else if (f->keepalive_due)
        op_start(f, OP_KEEPALIVE);
}

static void retry_cb(evutil_socket_t fd, short what, void *arg)
{
    struct wg_fleet *f = arg;
    f->waiting = false;
    advance(f);
}

/* Every TTL/3: a keep-alive, and the value again if it changed. */
static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
    struct wg_fleet *f = arg;
    f->keepalive_due = true;
    if (f->registered && !f->put_value) {
        char *v = current_value(f);
        if (v && f->value && strcmp(v, f->value) != 0)
            f->put_value = v;
        else
            free(v);
    }
    table_sort(f);                      /* forget long-gone replicas */
    advance(f);
}

/* ---- the view ---- */

static void view_start(struct wg_fleet *f);

static void view_failed(struct wg_fleet *f, const char *why)
{
    wg_etcd_call_cancel(f->watch);
    f->watch = NULL;
    uint64_t delay = f->watch_backoff_ms;
    f->watch_backoff_ms = f->watch_backoff_ms * 2 > 2000 ? 2000 : f->watch_backoff_ms * 2;
    f->ep = (f->ep + 1) % wg_etcd_client_endpoints(f->etcd);
    wg_warn("msg=\"fleet: watch failed, listing again\" reason=\"%s\" retry_ms=%llu", why,
            (unsigned long long)delay);
    arm_ms(f->watch_retry, delay);
}

static bool list_message(struct wg_fleet *f, unsigned status, const char *msg, size_t len)
{
    struct wg_etcd_range_response r;
    const char *why = NULL;
    if (status != 200 || !wg_etcd_parse_range(msg, len, &r, &why)) {
        view_failed(f, why ? why : "range refused");
        return false;
    }
    uint64_t now = unix_ms();
    for (size_t k = 0; k < f->n_replicas; k++)     /* not listed: gone */
        f->replicas[k].gone_unix_ms = f->replicas[k].gone_unix_ms ? f->replicas[k].gone_unix_ms
                                                                  : now;
    for (size_t k = 0; k < r.n_kvs; k++) {
        const char *name = key_name(f, &r.kvs[k]);
        if (name)
            table_put(f, name, r.kvs[k].value, r.kvs[k].value_len);
    }
    f->revision = r.header.revision;
    wg_etcd_range_response_free(&r);
    table_sort(f);
    f->last_ok_ms = wg_now_ms();
    return true;
}

static bool watch_message(struct wg_fleet *f, const char *msg, size_t len)
{
    struct wg_etcd_watch_response w;
    const char *why = NULL;
    if (!wg_etcd_parse_watch(msg, len, &w, &why)) {
        view_failed(f, why ? why : "malformed watch message");
        return false;
    }
    if (w.error_code || w.canceled) {
        view_failed(f, w.error_code ? "watch error" : "watch canceled");
        wg_etcd_watch_response_free(&w);
        return false;
    }
    for (size_t k = 0; k < w.n_events; k++) {
        const char *name = key_name(f, &w.events[k].kv);
        if (!name)
            continue;
        if (w.events[k].deleted)
            table_gone(f, name);
        else
            table_put(f, name, w.events[k].kv.value, w.events[k].kv.value_len);
    }
    if (w.header.revision > f->revision)
        f->revision = w.header.revision;
    if (w.n_events)
        table_sort(f);
    f->watch_backoff_ms = 50;
    wg_etcd_watch_response_free(&w);
    return true;
}

static bool view_message(void *arg, struct wg_etcd_call *call, unsigned status, const char *msg,
                         size_t len, uint64_t recv_ns)
{
    struct wg_fleet *f = arg;
    if (f->watch != call)
        return false;
    if (f->listing) {
        f->listing = false;
        f->watch = NULL;                /* the range call ends by itself */
        if (list_message(f, status, msg, len))
            view_start(f);
        return false;
    }
    return watch_message(f, msg, len);
}

static void view_end(void *arg, struct wg_etcd_call *call, bool ok, const char *why)
{
    struct wg_fleet *f = arg;
    if (f->watch != call)
        return;
    f->watch = NULL;
    f->listing = false;
    view_failed(f, why ? why : "watch ended");
}

static const struct wg_etcd_call_ops view_ops = { view_message, view_end };

/* List when there is no revision yet, else watch from the next one. */
static void view_start(struct wg_fleet *f)
{
    char *body;
    if (f->user && !wg_etcd_client_has_token(f->etcd)) {
        view_failed(f, "waiting for a token");
        return;
    }
    f->listing = f->revision == 0;
    body = f->listing ? wg_etcd_range_request(f->watch_prefix, NULL, 0, 0, 0, false)
                      : wg_etcd_watch_request(f->watch_prefix, f->revision + 1);
    f->watch = body ? wg_etcd_call_start(f->etcd, f->ep, f->listing ? "/v3/kv/range"
                                                                    : "/v3/watch",
                                         body, !f->listing, call_timeout_ms(f), &view_ops, f)
                    : NULL;
    free(body);
    if (!f->watch)
        view_failed(f, "out of memory");
}

static void watch_retry_cb(evutil_socket_t fd, short what, void *arg)
{
    struct wg_fleet *f = arg;
    f->revision = 0;                    /* re-list: deletions may have been missed */
    view_start(f);
}

/* ---- life cycle ---- */

struct wg_fleet *wg_fleet_new(struct event_base *base, const struct wg_config *cfg,
                              struct wg_pool *pool)
{
    if (!cfg->fleet.enabled || cfg->registry.kind != WG_REGISTRY_ETCD)
        return NULL;
    char err[256] = "";
    struct wg_etcd_tls tls = { cfg->registry.etcd.tls.ca, cfg->registry.etcd.tls.cert,
                               cfg->registry.etcd.tls.key, cfg->registry.etcd.tls.server_name };
    struct wg_fleet *f = calloc(1, sizeof *f);
    if (!f)
        return NULL;
    f->base = base;
    f->pool = pool;
    f->ttl_ms = cfg->fleet.ttl_ms;
    f->backoff_ms = 100;
    f->watch_backoff_ms = 50;
    f->started_unix_ms = unix_ms();
    f->config_hash = file_hash(cfg->path);
    f->etcd = wg_etcd_client_new(base, cfg->registry.etcd.endpoints,
                                 cfg->registry.etcd.n_endpoints, &tls, err, sizeof err);
    size_t klen = strlen(cfg->fleet.prefix) + strlen("replicas/") + strlen(cfg->fleet.name) + 1;
    f->name = strdup(cfg->fleet.name);
    f->prefix = strdup(cfg->fleet.prefix);
    f->zone = strdup(cfg->zone);
    f->key = malloc(klen);
    f->watch_prefix = malloc(klen);
    f->listeners = listeners_json(cfg);
    if (*cfg->registry.etcd.username) {
        f->user = strdup(cfg->registry.etcd.username);
        f->password = strdup(cfg->registry.etcd.password);
    }
    f->retry = evtimer_new(base, retry_cb, f);
    f->tick = event_new(base, -1, EV_PERSIST, tick_cb, f);
    f->watch_retry = evtimer_new(base, watch_retry_cb, f);
    if (!f->etcd || !f->name || !f->prefix || !f->zone || !f->key || !f->watch_prefix ||
        !f->listeners || !f->retry || !f->tick || !f->watch_retry ||
        (*cfg->registry.etcd.username && (!f->user || !f->password))) {
        wg_error("msg=\"fleet: cannot start\" reason=\"%s\"", err[0] ? err : "out of memory");
        wg_fleet_free(f);
        return NULL;
    }
    snprintf(f->watch_prefix, klen, "%sreplicas/", cfg->fleet.prefix);
    snprintf(f->key, klen, "%s%s", f->watch_prefix, cfg->fleet.name);
    if (!(f->key_b64 = wg_base64_encode(f->key, strlen(f->key)))) {
        wg_fleet_free(f);
        return NULL;
    }
    atomic_store(&g_total, 1);
    struct timeval tv = { (time_t)(f->ttl_ms / 3000), (suseconds_t)(f->ttl_ms / 3 % 1000) * 1000 };
    event_add(f->tick, &tv);
    wg_info("msg=\"fleet: joining\" key=%s zone=%s ttl_ms=%llu", f->key, f->zone,
            (unsigned long long)f->ttl_ms);
    advance(f);
    view_start(f);
    return f;
}

void wg_fleet_set_config(struct wg_fleet *f, const struct wg_config *cfg)
{
    if (!f)
        return;
    if (!cfg->fleet.enabled || strcmp(cfg->fleet.name, f->name) != 0 ||
        strcmp(cfg->fleet.prefix, f->prefix) != 0 || cfg->fleet.ttl_ms != f->ttl_ms ||
        strcmp(cfg->zone, f->zone) != 0)
        wg_warn("msg=\"fleet: name, prefix, ttl or zone changed: needs a restart\"");
    json_t *l = listeners_json(cfg);
    if (l) {
        json_decref(f->listeners);
        f->listeners = l;
    }
    f->config_hash = file_hash(cfg->path);
}

void wg_fleet_leave(struct wg_fleet *f)
{
    if (!f || f->leaving)
        return;
    f->leaving = true;
    /* Whatever was under way is dropped: an answer to it would start the
     * next step. A put that etcd applies anyway is under the lease revoked
     * here (or fails on a revoked one); a lease granted meanwhile holds no
     * key and expires. */
    wg_etcd_call_cancel(f->call);
    f->call = NULL;
    f->op = OP_NONE;
    evtimer_del(f->retry);
    event_del(f->tick);
    f->waiting = false;
    f->registered = false;              /* wg_fleet_lease: 0, shared health steps down */
    if (!f->lease) {
        f->left = true;
        return;
    }
    char *body = op_body(f, OP_REVOKE);
    f->op = OP_REVOKE;
    f->call = body ? wg_etcd_call_start(f->etcd, f->ep, op_paths[OP_REVOKE], body, false,
                                        REVOKE_TIMEOUT_MS, &op_ops, f)
                   : NULL;
    free(body);
    if (!f->call) {
        f->op = OP_NONE;
        op_failed(f, OP_REVOKE, "out of memory");
    }
}

bool wg_fleet_left(const struct wg_fleet *f) { return !f || f->left; }

void wg_fleet_free(struct wg_fleet *f)
{
    if (!f)
        return;
    wg_etcd_call_cancel(f->call);
    wg_etcd_call_cancel(f->watch);
    if (f->retry)
        event_free(f->retry);
    if (f->tick)
        event_free(f->tick);
    if (f->watch_retry)
        event_free(f->watch_retry);
    wg_etcd_client_free(f->etcd);
    for (size_t k = 0; k < f->n_replicas; k++)
        replica_clear(&f->replicas[k]);
    free(f->replicas);
    json_decref(f->listeners);
    free(f->user);
    free(f->password);
    free(f->name);
    free(f->prefix);
    free(f->zone);
    free(f->key);
    free(f->key_b64);
    free(f->watch_prefix);
    free(f->put_value);
    free(f->value);
    free(f);
}

bool wg_fleet_view(const struct wg_fleet *f, struct wg_fleet_view *out)
{
    if (!f)
        return false;
    *out = (struct wg_fleet_view){
        .name = f->name,
        .prefix = f->prefix,
        .connected = wg_fleet_connected(f),
        .registered = f->registered && f->lease,
        .lease = f->lease,
        .replicas = f->replicas,
        .n_live = f->n_live,
        .n_gone = f->n_replicas - f->n_live,
    };
    return true;
}

struct wg_etcd_client *wg_fleet_etcd(struct wg_fleet *f) { return f ? f->etcd : NULL; }
int64_t wg_fleet_lease(const struct wg_fleet *f) { return f && f->registered ? f->lease : 0; }

bool wg_fleet_connected(const struct wg_fleet *f)
{
    return f && f->last_ok_ms && wg_now_ms() - f->last_ok_ms < f->ttl_ms;
}
