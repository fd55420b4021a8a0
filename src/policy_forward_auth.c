/* policy_forward_auth — ask an auth service whether a request may pass
 * (Traefik's forwardAuth, nginx's auth_request).
 *
 * The hook does no I/O: it returns PENDING and the exchange makes the
 * subrequest through its own upstream code (policy.h). This file builds
 * that subrequest's head and reads the auth service's verdict:
 *  - the subrequest: the client's method, its path and query (or `path`),
 *    Host, the `request_headers` fields the client sent (or an earlier
 *    policy set), X-Forwarded-Method/-Proto/-Host/-Uri/-For and the
 *    request id; never a body;
 *  - 2xx: the request goes on; each `copy_headers` field is removed from
 *    it (the client may not forge one) and set from the response;
 *  - anything else is the answer: its status, its end-to-end fields and
 *    its body (exchange.c), counted in waygate_policy_denied_total;
 *  - no answer (no healthy instance, connect errors past the retries, the
 *    timeout, a malformed or oversized response): failure_mode decides,
 *    deny (500, gRPC UNAVAILABLE) by default, or allow.
 */
#include "policy_parse.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "waygate/http.h"
#include "waygate/stats.h"

struct fa_state {
    struct wg_policy_forward_auth pub;  /* first: what the exchange reads */
    struct pp_strlist req_h, copy_h;
    int failure_mode;                   /* 0 deny, 1 allow */
};

#define FF(f) offsetof(struct fa_state, f)
#define FP(f) offsetof(struct fa_state, pub.f)

static const char *const failure_modes[] = { "deny", "allow", NULL };

static const struct cfg_key fa_keys[] = {
    { "service", cfg_p_str, FP(service), 0, 0, NULL },
    { "path", cfg_p_str, FP(path), 0, 0, NULL },
    { "timeout", cfg_p_duration, FP(timeout_ms), 1, 3600 * 1000ULL, NULL },
    { "request_headers", pp_p_strlist, FF(req_h), 0, 0, "token" },
    { "copy_headers", pp_p_strlist, FF(copy_h), 0, 0, "token" },
    { "failure_mode", cfg_p_enum, FF(failure_mode), 0, 0, failure_modes },
    { "max_response_size", cfg_p_size, FP(max_response_size), 0, 1024 * 1024, NULL },
};
static const struct cfg_table fa_table = CFG_TABLE("forward_auth policy", fa_keys);

static void fa_free(void *p)
{
    struct fa_state *s = p;

    if (!s)
        return;
    free(s->pub.service);
    free(s->pub.path);
    pp_strlist_free(&s->req_h);
    pp_strlist_free(&s->copy_h);
    free(s);
}

static bool path_ok(const char *p)
{
    if (p[0] != '/')
        return false;
    for (; *p; p++)
        if ((unsigned char)*p <= 0x20 || *p == 0x7f || *p == '#')
            return false;
    return true;
}

static void *fa_parse(struct cfg_ctx *c, yaml_node_t *block)
{
    struct fa_state *s = calloc(1, sizeof *s);
    struct cfg_seen seen;
    static const char *const def_headers[] = { "Authorization", "Cookie" };

    if (!s) {
        wg_yaml_oom(&c->y);
        return NULL;
    }
    s->pub.timeout_ms = 1000;
    s->pub.max_response_size = 16 * 1024;
    if (!pp_block(c, block, &fa_table, s, &seen, "forward_auth"))
        goto fail;
    if (!s->pub.service || !wg_service_name_ok(s->pub.service)) {
        cfg_error(c, block, "forward_auth: needs 'service', a valid service name");
        goto fail;
    }
    if (s->pub.path && !path_ok(s->pub.path)) {
        cfg_error(c, seen.value[cfg_key_index(&fa_table, "path")],
                  "path: must start with '/' and hold no spaces, controls or '#'");
        goto fail;
    }
    if (!cfg_seen_has(&seen, &fa_table, "request_headers")) {
        s->req_h.v = calloc(2, sizeof *s->req_h.v);
        for (size_t i = 0; s->req_h.v && i < 2; i++)
            if ((s->req_h.v[s->req_h.n] = strdup(def_headers[i])))
                s->req_h.n++;
        if (s->req_h.n != 2) {
            wg_yaml_oom(&c->y);
            goto fail;
        }
    }
    s->pub.allow_on_failure = s->failure_mode == 1;
    cfg_require_service(c, seen.value[cfg_key_index(&fa_table, "service")], "forward_auth",
                        s->pub.service);
    return s;
fail:
    fa_free(s);
    return NULL;
}

static enum wg_policy_verdict fa_request(const void *state, struct wg_policy_req *r)
{
    r->auth = state;
    return WG_POLICY_PENDING;
}

/* ---- the subrequest ---------------------------------------------------- */

struct out {
    char *p;
    size_t n, cap;
};

static void put(struct out *o, const char *s, size_t n)
{
    if (o->p && o->n + n <= o->cap)
        memcpy(o->p + o->n, s, n);
    o->n += n;
}

static void puts_(struct out *o, const char *s) { put(o, s, strlen(s)); }

static void put_field(struct out *o, struct wg_pstr name, struct wg_pstr value)
{
    put(o, name.p, name.n);
    put(o, ": ", 2);
    put(o, value.p, value.n);
    put(o, "\r\n", 2);
}

static void put_uri(struct out *o, const struct wg_policy_req *r)
{
    put(o, r->path.p, r->path.n);
    if (r->has_query) {
        put(o, "?", 1);
        put(o, r->query.p, r->query.n);
    }
}

static void write_head(const struct fa_state *s, const struct wg_policy_req *r, struct out *o)
{
    const struct wg_policy_head *h = &r->req;

    put(o, r->method.p, r->method.n);
    put(o, " ", 1);
    if (s->pub.path)
        puts_(o, s->pub.path);
    else
        put_uri(o, r);
    puts_(o, " HTTP/1.1\r\nHost: ");
    if (r->authority.n)
        put(o, r->authority.p, r->authority.n);
    else
        puts_(o, s->pub.service);
    put(o, "\r\n", 2);
    for (unsigned i = 0; i < h->n_in; i++)
        if (!wg_policy_head_dropped(h, i) &&
            pp_strlist_has(&s->req_h, h->in[i].name.p, h->in[i].name.n, true))
            put_field(o, h->in[i].name, h->in[i].value);
    for (unsigned i = 0; i < h->n_add; i++)
        if (pp_strlist_has(&s->req_h, h->add[i].name.p, h->add[i].name.n, true))
            put_field(o, h->add[i].name, h->add[i].value);
    puts_(o, "X-Forwarded-Method: ");
    put(o, r->method.p, r->method.n);
    puts_(o, r->tls ? "\r\nX-Forwarded-Proto: https" : "\r\nX-Forwarded-Proto: http");
    if (r->authority.n) {
        puts_(o, "\r\nX-Forwarded-Host: ");
        put(o, r->authority.p, r->authority.n);
    }
    puts_(o, "\r\nX-Forwarded-Uri: ");
    put_uri(o, r);
    puts_(o, "\r\nX-Forwarded-For: ");
    puts_(o, r->client_ip ? r->client_ip : "");
    if (r->request_id.n) {
        puts_(o, "\r\nX-Request-Id: ");
        put(o, r->request_id.p, r->request_id.n);
    }
    puts_(o, "\r\n\r\n");
}

bool wg_forward_auth_head(const struct wg_policy_forward_auth *fa, struct wg_policy_req *r,
                          struct wg_pstr *out)
{
    const struct fa_state *s = (const struct fa_state *)fa;
    struct out o = { NULL, 0, 0 };

    write_head(s, r, &o);               /* measure, then write */
    o.cap = o.n;
    o.n = 0;
    if (!(o.p = wg_policy_alloc(r, o.cap)))
        return false;
    write_head(s, r, &o);
    *out = (struct wg_pstr){ o.p, o.n };
    return true;
}

/* ---- the verdict ------------------------------------------------------- */

/* Fields of the auth response that describe its own message or hop, not
 * the refusal: never passed to the client (the exchange writes its own). */
static bool own_field(struct wg_pstr n)
{
    static const char *const skip[] = {
        "connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
        "upgrade", "content-length", "content-type", "date", "server",
    };
    for (size_t i = 0; i < sizeof skip / sizeof skip[0]; i++)
        if (wg_http_name_eq(n.p, n.n, skip[i], strlen(skip[i])))
            return true;
    return false;
}

bool wg_forward_auth_response(const struct wg_policy_forward_auth *fa, struct wg_policy_req *r,
                              unsigned status, const struct wg_policy_head *h)
{
    const struct fa_state *s = (const struct fa_state *)fa;

    r->auth = NULL;
    if (status >= 200 && status < 300) {
        for (size_t k = 0; k < s->copy_h.n; k++) {
            const char *name = s->copy_h.v[k];
            size_t nn = strlen(name);
            wg_policy_head_remove(r, &r->req, name, nn);
            for (unsigned i = 0; i < h->n_in; i++)
                if (wg_http_name_eq(h->in[i].name.p, h->in[i].name.n, name, nn))
                    wg_policy_head_add(r, &r->req, name, nn, h->in[i].value.p, h->in[i].value.n);
        }
        return true;
    }
    for (unsigned i = 0; i < h->n_in; i++)
        if (!own_field(h->in[i].name))
            wg_policy_head_add(r, &r->resp_extra, h->in[i].name.p, h->in[i].name.n,
                               h->in[i].value.p, h->in[i].value.n);
    if (r->stats)
        wg_stats_add(r->stats, WG_C_POLICY_DENIED, 1);
    return false;
}

const struct wg_policy_ops wg_policy_forward_auth = {
    .name = "forward_auth",
    .parse = fa_parse,
    .free = fa_free,
    .request = fa_request,
};
