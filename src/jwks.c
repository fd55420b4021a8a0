/* jwks — see include/waygate/jwks.h */
#include "waygate/jwks.h"

#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/http.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "waygate/config.h"
#include "waygate/log.h"
#include "waygate/pool.h"

#define JWKS_MAX (1u << 20)
#define JWKS_TIMEOUT_S 5
#define JWKS_RETRY_MS 10000             /* never fetched yet, or the kid refetch bound */

struct jwks_entry {
    struct jwks_entry *next;
    char *url;
    char *doc;                          /* NULL: never fetched */
    size_t len;
    uint64_t last_try_ms, last_ok_ms;
    struct jwks_fetch *in_flight;
};

struct jwks_fetch {
    struct jwks_entry *e;
    struct evhttp_connection *conn;
    struct evhttp_uri *uri;
    SSL_CTX *ctx;
    void (*changed)(void *);
    void *arg;
};

static struct jwks_entry *entries;
static struct evdns_base *dns;          /* hostnames resolve without blocking */
static _Atomic uint64_t unknown_kids;
static uint64_t unknown_kids_seen, kid_refetch_ms;

void wg_jwks_note_unknown_kid(void)
{
    atomic_fetch_add_explicit(&unknown_kids, 1, memory_order_relaxed);
}

static struct jwks_entry *entry(const char *url, bool create)
{
    struct jwks_entry *e;

    for (e = entries; e; e = e->next)
        if (strcmp(e->url, url) == 0)
            return e;
    if (!create || !(e = calloc(1, sizeof *e)))
        return NULL;
    if (!(e->url = strdup(url))) {
        free(e);
        return NULL;
    }
    e->next = entries;
    return entries = e;
}

const char *wg_jwks_cached(const char *url, size_t *len)
{
    struct jwks_entry *e = entry(url, false);

    if (!e || !e->doc)
        return NULL;
    *len = e->len;
    return e->doc;
}

static void fetch_free(struct jwks_fetch *f)
{
    if (f->e)
        f->e->in_flight = NULL;
    if (f->conn)
        evhttp_connection_free(f->conn);
    if (f->uri)
        evhttp_uri_free(f->uri);
    SSL_CTX_free(f->ctx);
    free(f);
}

static void fetch_free_later(evutil_socket_t fd, short what, void *arg) { fetch_free(arg); }

static void fetch_done(struct evhttp_request *req, void *arg)
{
    struct jwks_fetch *f = arg;
    struct jwks_entry *e = f->e;
    int code = req ? evhttp_request_get_response_code(req) : 0;
    struct evbuffer *in = req ? evhttp_request_get_input_buffer(req) : NULL;
    size_t n = in ? evbuffer_get_length(in) : 0;
    bool changed = false;

    if (code != 200 || n == 0 || n > JWKS_MAX) {
        wg_warn("msg=\"JWKS fetch failed, the last keys stay\" url=\"%s\" status=%d bytes=%zu",
                e->url, code, n);
    } else {
        char *doc = malloc(n + 1);
        if (doc) {
            evbuffer_copyout(in, doc, n);
            doc[n] = 0;
            changed = !e->doc || e->len != n || memcmp(e->doc, doc, n) != 0;
            free(e->doc);
            e->doc = doc;
            e->len = n;
            e->last_ok_ms = wg_now_ms();
            if (changed)
                wg_info("msg=\"JWKS fetched, keys changed\" url=\"%s\" bytes=%zu", e->url, n);
        }
    }
    void (*cb)(void *) = f->changed;
    void *cb_arg = f->arg;
    /* the connection may not be freed inside its own callback: defer */
    f->e = NULL;
    e->in_flight = NULL;
    evhttp_connection_set_closecb(f->conn, NULL, NULL);
    struct event_base *base = evhttp_connection_get_base(f->conn);
    if (event_base_once(base, -1, EV_TIMEOUT, fetch_free_later, f, &(struct timeval){ 0, 0 }) < 0)
        wg_warn("msg=\"JWKS: cannot schedule a connection close\"");
    if (changed)
        cb(cb_arg);
}

static SSL_CTX *client_ctx(const char *ca)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());

    if (!ctx)
        return NULL;
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    if ((*ca ? SSL_CTX_load_verify_locations(ctx, ca, NULL) : SSL_CTX_set_default_verify_paths(ctx)) != 1) {
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

static void fetch_start(struct event_base *base, struct jwks_entry *e, const char *ca,
                        void (*changed)(void *), void *arg)
{
    struct jwks_fetch *f = calloc(1, sizeof *f);
    SSL *ssl = NULL;
    struct bufferevent *bev = NULL;
    struct evhttp_request *req;
    const char *host, *path;
    char target[2048];

    e->last_try_ms = wg_now_ms();
    if (!f || !(f->uri = evhttp_uri_parse(e->url)) || !(host = evhttp_uri_get_host(f->uri)) ||
        !(f->ctx = client_ctx(ca)) || !(ssl = SSL_new(f->ctx)))
        goto fail;
    struct in6_addr ip;
    bool literal = inet_pton(AF_INET, host, &ip) == 1 || inet_pton(AF_INET6, host, &ip) == 1;
    if (literal ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host) != 1
                : (SSL_set_tlsext_host_name(ssl, host) != 1 || SSL_set1_host(ssl, host) != 1))
        goto fail;
    int port = evhttp_uri_get_port(f->uri);
    path = evhttp_uri_get_path(f->uri);
    const char *q = evhttp_uri_get_query(f->uri);
    snprintf(target, sizeof target, "%s%s%s", path && *path ? path : "/", q ? "?" : "", q ? q : "");
    bev = bufferevent_openssl_socket_new(base, -1, ssl, BUFFEREVENT_SSL_CONNECTING,
                                         BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
    ssl = NULL;                         /* owned by bev */
    if (!bev)
        goto fail;
    bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
    if (!literal && !dns && !(dns = evdns_base_new(base, EVDNS_BASE_INITIALIZE_NAMESERVERS)))
        goto fail;
    f->conn = evhttp_connection_base_bufferevent_new(base, literal ? NULL : dns, bev, host,
                                                     port > 0 ? port : 443);
    if (!f->conn)
        goto fail;
    bev = NULL;
    evhttp_connection_set_timeout(f->conn, JWKS_TIMEOUT_S);
    evhttp_connection_set_max_body_size(f->conn, JWKS_MAX);
    f->e = e;
    f->changed = changed;
    f->arg = arg;
    if (!(req = evhttp_request_new(fetch_done, f)))
        goto fail;
    evhttp_add_header(evhttp_request_get_output_headers(req), "Host", host);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Accept", "application/json");
    if (evhttp_make_request(f->conn, req, EVHTTP_REQ_GET, target) != 0)
        goto fail;                      /* req is freed by evhttp on failure */
    e->in_flight = f;
    return;
fail:
    wg_warn("msg=\"JWKS fetch could not start\" url=\"%s\"", e->url);
    if (ssl)
        SSL_free(ssl);
    if (bev)
        bufferevent_free(bev);
    if (f) {
        f->e = NULL;
        fetch_free(f);
    }
}

void wg_jwks_tick(struct event_base *base, const struct wg_config *cfg,
                  void (*changed)(void *arg), void *arg)
{
    uint64_t now = wg_now_ms();
    uint64_t kids = atomic_load_explicit(&unknown_kids, memory_order_relaxed);
    bool kid_refetch = kids != unknown_kids_seen && now - kid_refetch_ms >= JWKS_RETRY_MS;

    if (kid_refetch) {
        unknown_kids_seen = kids;
        kid_refetch_ms = now;
    }
    for (size_t i = 0; i < cfg->n_jwks_urls; i++) {
        const struct wg_jwks_url *u = &cfg->jwks_urls[i];
        struct jwks_entry *e = entry(u->url, true);
        if (!e || e->in_flight)
            continue;
        uint64_t every = e->doc ? u->refresh_ms : JWKS_RETRY_MS;
        if (e->last_try_ms == 0 || now - e->last_try_ms >= every || kid_refetch)
            fetch_start(base, e, u->ca, changed, arg);
    }
}

void wg_jwks_shutdown(void)
{
    while (entries) {
        struct jwks_entry *e = entries;
        entries = e->next;
        if (e->in_flight)
            fetch_free(e->in_flight);
        free(e->url);
        free(e->doc);
        free(e);
    }
    if (dns)
        evdns_base_free(dns, 0);
    dns = NULL;
}
