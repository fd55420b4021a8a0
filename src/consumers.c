/* consumers — the api_key consumers of the etcd registry (consumers.h). */
#include "waygate/consumers.h"

#include <event2/event.h>
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "config_value.h"
#include "waygate/config.h"
#include "waygate/etcd_client.h"
#include "waygate/log.h"

#define CALL_TIMEOUT_MS 5000
#define BACKOFF_MAX_MS 2000

struct consumer {
    char *name, *key;
};

static struct {
    struct event_base *base;
    struct wg_etcd_client *etcd;
    struct wg_etcd_call *call;
    struct event *retry;
    char *user, *password;
    size_t ep;
    int64_t revision;                   /* 0: list next */
    enum { IDLE, AUTH, LIST, WATCH } phase;
    uint64_t backoff_ms;
    void (*changed)(void *arg);
    void *arg;
    struct consumer *v;
    size_t n;
} g;

void wg_consumers_each(void (*fn)(void *arg, const char *name, const char *key), void *arg)
{
    for (size_t i = 0; i < g.n; i++)
        fn(arg, g.v[i].name, g.v[i].key);
}

static int consumer_cmp(const void *a, const void *b)
{
    return strcmp(((const struct consumer *)a)->name, ((const struct consumer *)b)->name);
}

static struct consumer *find(const char *name)
{
    struct consumer probe = { (char *)name, NULL };
    return g.n ? bsearch(&probe, g.v, g.n, sizeof *g.v, consumer_cmp) : NULL;
}

static void clear(void)
{
    for (size_t i = 0; i < g.n; i++) {
        free(g.v[i].name);
        free(g.v[i].key);
    }
    free(g.v);
    g.v = NULL;
    g.n = 0;
}

static bool is_hex64(const char *s)
{
    size_t i = 0;
    for (; s[i]; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f') ||
              (s[i] >= 'A' && s[i] <= 'F')))
            return false;
    return i == 64;
}

/* The key a value holds ("sha256:<hex>" or plain), malloc'd; NULL if none. */
static char *value_key(const char *name, const char *value, size_t len)
{
    json_t *root = json_loadb(value, len, 0, NULL);
    const char *plain = json_string_value(json_object_get(root, "key"));
    const char *hex = json_string_value(json_object_get(root, "key_sha256"));
    char *out = NULL;

    if (hex && is_hex64(hex) && (out = malloc(7 + 64 + 1)))
        snprintf(out, 7 + 64 + 1, "sha256:%s", hex);
    else if (!hex && plain && *plain)
        out = strdup(plain);
    else
        wg_warn("msg=\"consumers: value ignored, expected {\\\"key\\\":...} or "
                "{\\\"key_sha256\\\":<64 hex>}\" consumer=%s", name);
    json_decref(root);
    return out;
}

/* The consumer name of a key, or NULL (not directly under the prefix). */
static const char *key_name(const struct wg_etcd_kv *kv)
{
    size_t n = strlen(WG_CONSUMERS_PREFIX);
    if (kv->key_len <= n || memcmp(kv->key, WG_CONSUMERS_PREFIX, n) != 0 ||
        strchr(kv->key + n, '/'))
        return NULL;
    return kv->key + n;
}

/* Set (value != NULL) or delete; true when the set changed. */
static bool put(const char *name, const char *value, size_t len)
{
    struct consumer *c = find(name), *v;
    char *key = value ? value_key(name, value, len) : NULL;

    if (!key) {
        if (!c)
            return false;
        free(c->name);
        free(c->key);
        memmove(c, c + 1, (size_t)(g.v + g.n - (c + 1)) * sizeof *c);
        g.n--;
        return true;
    }
    if (c) {
        bool same = strcmp(c->key, key) == 0;
        free(c->key);
        c->key = key;
        return !same;
    }
    if (!(v = realloc(g.v, (g.n + 1) * sizeof *v)) || !(v[g.n].name = strdup(name))) {
        if (v)
            g.v = v;
        free(key);
        wg_error("msg=\"consumers: out of memory\"");
        return false;
    }
    g.v = v;
    v[g.n++].key = key;
    qsort(g.v, g.n, sizeof *g.v, consumer_cmp);
    return true;
}

static void arm(uint64_t ms)
{
    struct timeval tv = { (time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000 };
    evtimer_add(g.retry, &tv);
}

static void failed(const char *why)
{
    wg_etcd_call_cancel(g.call);
    g.call = NULL;
    g.phase = IDLE;
    g.revision = 0;                     /* list again: deletions may have been missed */
    g.ep = (g.ep + 1) % wg_etcd_client_endpoints(g.etcd);
    wg_warn("msg=\"consumers: watch failed, listing again\" reason=\"%s\" retry_ms=%llu", why,
            (unsigned long long)g.backoff_ms);
    arm(g.backoff_ms);
    g.backoff_ms = g.backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : g.backoff_ms * 2;
}

static void start(void);

static bool on_list(unsigned status, const char *msg, size_t len)
{
    struct wg_etcd_range_response r;
    const char *why = NULL;
    bool changed = false;

    if (status != 200 || !wg_etcd_parse_range(msg, len, &r, &why)) {
        failed(why ? why : "range refused");
        return false;
    }
    for (size_t i = 0; i < g.n;) {      /* not listed: gone */
        bool listed = false;
        for (size_t k = 0; k < r.n_kvs && !listed; k++) {
            const char *name = key_name(&r.kvs[k]);
            listed = name && strcmp(name, g.v[i].name) == 0;
        }
        if (listed)
            i++;
        else
            changed |= put(g.v[i].name, NULL, 0);
    }
    for (size_t k = 0; k < r.n_kvs; k++) {
        const char *name = key_name(&r.kvs[k]);
        if (name && wg_is_token(name))
            changed |= put(name, r.kvs[k].value, r.kvs[k].value_len);
    }
    g.revision = r.header.revision;
    wg_etcd_range_response_free(&r);
    wg_info("msg=\"consumers listed\" consumers=%zu revision=%lld", g.n, (long long)g.revision);
    if (changed && g.changed)
        g.changed(g.arg);
    return true;
}

static bool on_watch(const char *msg, size_t len)
{
    struct wg_etcd_watch_response w;
    const char *why = NULL;
    bool changed = false;

    if (!wg_etcd_parse_watch(msg, len, &w, &why)) {
        failed(why ? why : "malformed watch message");
        return false;
    }
    if (w.error_code || w.canceled) {
        const char *why2 = w.error_code ? "watch error" : "watch canceled";
        wg_etcd_watch_response_free(&w);
        failed(why2);
        return false;
    }
    for (size_t k = 0; k < w.n_events; k++) {
        const char *name = key_name(&w.events[k].kv);
        if (name && wg_is_token(name))
            changed |= put(name, w.events[k].deleted ? NULL : w.events[k].kv.value,
                           w.events[k].kv.value_len);
    }
    if (w.header.revision > g.revision)
        g.revision = w.header.revision;
    g.backoff_ms = 50;
    wg_etcd_watch_response_free(&w);
    if (changed && g.changed)
        g.changed(g.arg);               /* may re-enter wg_consumers_sync: g.call stays */
    return true;
}

static bool on_message(void *arg, struct wg_etcd_call *call, unsigned status, const char *msg,
                       size_t len, uint64_t recv_ns)
{
    (void)arg;
    (void)recv_ns;
    if (g.call != call)
        return false;
    if (g.phase == AUTH) {
        char *token = status == 200 ? wg_etcd_parse_token(msg, len) : NULL;
        g.call = NULL;                  /* the unary call ends by itself */
        g.phase = IDLE;
        if (!token || wg_etcd_client_set_token(g.etcd, token) != 0)
            failed("authentication refused");
        else
            start();
        free(token);
        return false;
    }
    if (g.phase == LIST) {
        g.call = NULL;
        g.phase = IDLE;
        if (on_list(status, msg, len))
            start();
        return false;
    }
    return on_watch(msg, len) && g.call == call;   /* a reload may have stopped us */
}

static void on_end(void *arg, struct wg_etcd_call *call, bool ok, const char *why)
{
    (void)arg;
    (void)ok;
    if (g.call != call)
        return;
    g.call = NULL;
    failed(why ? why : "watch ended");
}

static const struct wg_etcd_call_ops call_ops = { on_message, on_end };

/* Authenticate when a user is configured and no token is held, else list
 * when there is no revision yet, else watch from the next one. */
static void start(void)
{
    char *body;
    const char *path;

    if (g.user && !wg_etcd_client_has_token(g.etcd)) {
        g.phase = AUTH;
        path = "/v3/auth/authenticate";
        body = wg_etcd_auth_request(g.user, g.password);
    } else if (!g.revision) {
        g.phase = LIST;
        path = "/v3/kv/range";
        body = wg_etcd_range_request(WG_CONSUMERS_PREFIX, NULL, 0, 0, 0, false);
    } else {
        g.phase = WATCH;
        path = "/v3/watch";
        body = wg_etcd_watch_request(WG_CONSUMERS_PREFIX, g.revision + 1);
    }
    g.call = body ? wg_etcd_call_start(g.etcd, g.ep, path, body, g.phase == WATCH,
                                       CALL_TIMEOUT_MS, &call_ops, NULL)
                  : NULL;
    free(body);
    if (!g.call)
        failed("out of memory");
}

static void retry_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    if (g.etcd && !g.call)
        start();
}

static void stop(void)
{
    wg_etcd_call_cancel(g.call);
    g.call = NULL;
    if (g.retry)
        event_free(g.retry);
    g.retry = NULL;
    wg_etcd_client_free(g.etcd);
    g.etcd = NULL;
    free(g.user);
    free(g.password);
    g.user = g.password = NULL;
    g.phase = IDLE;
    g.revision = 0;
}

void wg_consumers_sync(struct event_base *base, const struct wg_config *cfg,
                       void (*changed)(void *arg), void *arg)
{
    bool want = cfg->consumers_registry && cfg->registry.kind == WG_REGISTRY_ETCD;
    char err[256] = "";

    g.changed = changed;
    g.arg = arg;
    if (!want) {
        if (g.etcd) {
            stop();
            clear();
        }
        return;
    }
    if (g.etcd)
        return;
    struct wg_etcd_tls tls = { cfg->registry.etcd.tls.ca, cfg->registry.etcd.tls.cert,
                               cfg->registry.etcd.tls.key, cfg->registry.etcd.tls.server_name };
    g.base = base;
    g.backoff_ms = 50;
    g.etcd = wg_etcd_client_new(base, cfg->registry.etcd.endpoints,
                                cfg->registry.etcd.n_endpoints, &tls, err, sizeof err);
    g.retry = evtimer_new(base, retry_cb, NULL);
    if (*cfg->registry.etcd.username) {
        g.user = strdup(cfg->registry.etcd.username);
        g.password = strdup(cfg->registry.etcd.password);
    }
    if (!g.etcd || !g.retry || (*cfg->registry.etcd.username && (!g.user || !g.password))) {
        wg_error("msg=\"consumers: cannot start\" reason=\"%s\"", err[0] ? err : "out of memory");
        stop();
        return;
    }
    start();
}

void wg_consumers_shutdown(void)
{
    stop();
    clear();
}
