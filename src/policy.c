/* policy — the ops table, chains, the request view's edits and the
 * `policies:` config lists. */
#include "waygate/policy.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "config_parse.h"
#include "waygate/http.h"
#include "waygate/stats.h"

static const struct wg_policy_ops *const policy_table[] = {
    &wg_policy_jwt,     &wg_policy_api_key, &wg_policy_basic_auth, &wg_policy_rate_limit,
    &wg_policy_cors,    &wg_policy_headers, &wg_policy_rewrite,    &wg_policy_trace,
    &wg_policy_mirror,  &wg_policy_forward_auth,
};
#define N_POLICIES (sizeof policy_table / sizeof policy_table[0])


const struct wg_policy_ops *wg_policy_ops_find(const char *name)
{
    for (size_t i = 0; i < N_POLICIES; i++)
        if (strcmp(policy_table[i]->name, name) == 0)
            return policy_table[i];
    return NULL;
}

struct wg_policy *wg_policy_get(struct wg_policy *p)
{
    p->refs++;
    return p;
}

void wg_policy_put(struct wg_policy *p)
{
    if (!p || --p->refs)
        return;
    if (p->ops->free)
        p->ops->free(p->state);
    free(p);
}

void wg_policy_list_free(struct wg_policy_list *l)
{
    for (size_t i = 0; i < l->n; i++)
        wg_policy_put(l->v[i]);
    free(l->v);
    l->v = NULL;
    l->n = 0;
}

bool wg_policy_list_copy(struct wg_policy_list *dst, const struct wg_policy_list *src)
{
    dst->v = NULL;
    dst->n = 0;
    if (!src->n)
        return true;
    if (!(dst->v = malloc(src->n * sizeof *dst->v)))
        return false;
    for (size_t i = 0; i < src->n; i++)
        dst->v[i] = wg_policy_get(src->v[i]);
    dst->n = src->n;
    return true;
}

static bool list_names(const struct wg_policy_list *l, const struct wg_policy_ops *ops)
{
    for (size_t i = 0; l && i < l->n; i++)
        if (l->v[i]->ops == ops)
            return true;
    return false;
}

struct wg_policy_chain *wg_policy_chain_build(const struct wg_policy_list *listener,
                                              const struct wg_policy_list *service,
                                              const struct wg_policy_list *route, bool *oom)
{
    size_t cap = (listener ? listener->n : 0) + (service ? service->n : 0) + (route ? route->n : 0);
    struct wg_policy_chain *c;

    *oom = false;
    if (!cap)
        return NULL;
    if (!(c = calloc(1, sizeof *c + cap * sizeof c->v[0]))) {
        *oom = true;
        return NULL;
    }
    for (size_t i = 0; listener && i < listener->n; i++)
        if (!list_names(service, listener->v[i]->ops) && !list_names(route, listener->v[i]->ops))
            c->v[c->n++] = listener->v[i];
    for (size_t i = 0; service && i < service->n; i++)
        if (!list_names(route, service->v[i]->ops))
            c->v[c->n++] = service->v[i];
    for (size_t i = 0; route && i < route->n; i++)
        c->v[c->n++] = route->v[i];
    for (size_t i = 0; i < c->n; i++)
        c->has_response |= c->v[i]->ops->response != NULL;
    return c;
}

void wg_policy_chain_free(struct wg_policy_chain *c) { free(c); }

bool wg_policy_chain_has(const struct wg_policy_chain *c, const char *name)
{
    for (size_t i = 0; c && i < c->n; i++)
        if (strcmp(c->v[i]->ops->name, name) == 0)
            return true;
    return false;
}

/* ---- worker side ---------------------------------------------------------- */

static enum wg_policy_verdict run_from(struct wg_policy_req *r, size_t i)
{
    const struct wg_policy_chain *c = r->chain;

    for (; c && i < c->n; i++) {
        const struct wg_policy *p = c->v[i];
        enum wg_policy_verdict v = p->ops->request ? p->ops->request(p->state, r)
                                                   : WG_POLICY_CONTINUE;
        if (v != WG_POLICY_CONTINUE) {
            r->resume_at = i + 1;
            return v;
        }
    }
    return WG_POLICY_CONTINUE;
}

enum wg_policy_verdict wg_policy_request(const struct wg_policy_chain *c, struct wg_policy_req *r)
{
    r->chain = c;
    return run_from(r, 0);
}

enum wg_policy_verdict wg_policy_resume(struct wg_policy_req *r) { return run_from(r, r->resume_at); }

void wg_policy_response(struct wg_policy_req *r, unsigned status, struct wg_policy_head *head)
{
    const struct wg_policy_chain *c = r->chain;

    for (size_t i = 0; c && i < c->n; i++) {
        const struct wg_policy *p = c->v[i];
        if (p->ops->response)
            p->ops->response(p->state, r, status, head);
    }
}

struct wg_policy_arena_block {
    struct wg_policy_arena_block *next;
    size_t used, cap;
    _Alignas(16) char data[];
};

#define ARENA_BLOCK 4096

void *wg_policy_alloc(struct wg_policy_req *r, size_t n)
{
    struct wg_policy_arena_block *b = r->arena;

    n = (n + 15) & ~(size_t)15;
    if (!b || b->cap - b->used < n) {
        size_t cap = n > ARENA_BLOCK ? n : ARENA_BLOCK;
        if (!(b = malloc(sizeof *b + cap)))
            return NULL;
        b->cap = cap;
        b->used = 0;
        b->next = r->arena;
        r->arena = b;
    }
    b->used += n;
    return b->data + b->used - n;
}

char *wg_policy_strdup(struct wg_policy_req *r, const char *s, size_t n)
{
    char *d = wg_policy_alloc(r, n + 1);

    if (d) {
        memcpy(d, s, n);
        d[n] = 0;
    }
    return d;
}

void wg_policy_req_release(struct wg_policy_req *r)
{
    while (r->arena) {
        struct wg_policy_arena_block *n = r->arena->next;
        free(r->arena);
        r->arena = n;
    }
    if (r->claims)
        json_decref(r->claims);
    r->claims = NULL;
}

bool wg_policy_head_http1(struct wg_policy_req *r, struct wg_policy_head *h,
                          const struct wg_http_parser *p, const char *msg)
{
    unsigned n = p->msg.nheaders;
    struct wg_policy_field *f = n ? wg_policy_alloc(r, n * sizeof *f) : NULL;

    if (n && !f)
        return false;
    for (unsigned i = 0; i < n; i++) {
        const struct wg_http_header *x = &p->headers[i];
        f[i] = (struct wg_policy_field){ { msg + x->name.off, x->name.len },
                                         { msg + x->value.off, x->value.len } };
    }
    *h = (struct wg_policy_head){ f, n, NULL, NULL, 0, 0 };
    return true;
}

static struct wg_pstr span(const char *msg, struct wg_http_span s)
{
    return (struct wg_pstr){ msg + s.off, s.len };
}

void wg_policy_req_http1(struct wg_policy_req *r, const struct wg_http_parser *p, const char *msg)
{
    const struct wg_http_message *m = &p->msg;

    r->method = span(msg, m->method_text);
    r->path = m->path.len ? span(msg, m->path) : (struct wg_pstr){ "/", 1 };
    r->query = span(msg, m->query);
    r->has_query = m->has_query;
    r->authority = m->has_host ? span(msg, m->host) : (struct wg_pstr){ "", 0 };
}

static struct wg_pstr keep(struct wg_policy_req *r, struct wg_pstr s)
{
    char *d = s.n ? wg_policy_strdup(r, s.p, s.n) : NULL;

    return d ? (struct wg_pstr){ d, s.n } : (struct wg_pstr){ "", 0 };
}

void wg_policy_req_detach(struct wg_policy_req *r)
{
    r->authority = keep(r, r->authority);
    r->request_id = keep(r, r->request_id);
    r->method = r->path = r->query = (struct wg_pstr){ "", 0 };
    r->has_query = false;
    r->req.in = NULL;
    r->req.n_in = 0;
    r->req.drop = NULL;
}

static void rebase(struct wg_pstr *s, const char *from, size_t len, const char *to)
{
    if (s->p && s->p >= from && s->p < from + len)
        s->p = to + (s->p - from);
}

void wg_policy_req_rebase(struct wg_policy_req *r, const char *from, size_t len, const char *to)
{
    struct wg_policy_field *f = (struct wg_policy_field *)r->req.in;   /* arena memory */

    rebase(&r->method, from, len, to);
    rebase(&r->path, from, len, to);
    rebase(&r->query, from, len, to);
    rebase(&r->authority, from, len, to);
    rebase(&r->request_id, from, len, to);
    rebase(&r->consumer, from, len, to);
    rebase(&r->new_path, from, len, to);
    for (unsigned i = 0; i < r->req.n_in; i++) {
        rebase(&f[i].name, from, len, to);
        rebase(&f[i].value, from, len, to);
    }
}

size_t wg_policy_head_added_bytes(const struct wg_policy_head *h)
{
    size_t n = 0;

    for (unsigned i = 0; i < h->n_add; i++)
        n += h->add[i].name.n + h->add[i].value.n + 4;
    return n;
}

static bool same_name(struct wg_pstr a, const char *b, size_t n)
{
    return wg_http_name_eq(a.p, a.n, b, n);
}

bool wg_policy_head_get(const struct wg_policy_head *h, const char *name, size_t n,
                        struct wg_pstr *value)
{
    for (unsigned i = 0; i < h->n_in; i++)
        if (!wg_policy_head_dropped(h, i) && same_name(h->in[i].name, name, n)) {
            *value = h->in[i].value;
            return true;
        }
    for (unsigned i = 0; i < h->n_add; i++)
        if (same_name(h->add[i].name, name, n)) {
            *value = h->add[i].value;
            return true;
        }
    return false;
}

void wg_policy_head_remove(struct wg_policy_req *r, struct wg_policy_head *h, const char *name,
                           size_t n)
{
    unsigned k = 0;

    for (unsigned i = 0; i < h->n_in; i++) {
        if (!same_name(h->in[i].name, name, n))
            continue;
        if (!h->drop) {
            if (!(h->drop = wg_policy_alloc(r, h->n_in)))
                return;
            memset(h->drop, 0, h->n_in);
        }
        h->drop[i] = 1;
    }
    for (unsigned i = 0; i < h->n_add; i++)
        if (!same_name(h->add[i].name, name, n))
            h->add[k++] = h->add[i];
    h->n_add = k;
}

bool wg_policy_head_add(struct wg_policy_req *r, struct wg_policy_head *h, const char *name,
                        size_t nn, const char *value, size_t vn)
{
    char *ns, *vs;

    if (h->n_add == h->cap_add) {
        unsigned cap = h->cap_add ? h->cap_add * 2 : 8;
        struct wg_policy_field *v = wg_policy_alloc(r, cap * sizeof *v);
        if (!v)
            return false;
        if (h->n_add)
            memcpy(v, h->add, h->n_add * sizeof *v);
        h->add = v;
        h->cap_add = cap;
    }
    if (!(ns = wg_policy_strdup(r, name, nn)) || !(vs = wg_policy_strdup(r, value, vn)))
        return false;
    h->add[h->n_add++] = (struct wg_policy_field){ { ns, nn }, { vs, vn } };
    return true;
}

bool wg_policy_head_set(struct wg_policy_req *r, struct wg_policy_head *h, const char *name,
                        size_t nn, const char *value, size_t vn)
{
    wg_policy_head_remove(r, h, name, nn);
    return wg_policy_head_add(r, h, name, nn, value, vn);
}

enum wg_policy_verdict wg_policy_answer(struct wg_policy_req *r, unsigned status,
                                        const char *body)
{
    r->answer_status = status;
    r->answer_body = (struct wg_pstr){ body, body ? strlen(body) : 0 };
    return WG_POLICY_ANSWER;
}

enum wg_policy_verdict wg_policy_deny(struct wg_policy_req *r, unsigned status,
                                      const char *challenge, const char *body)
{
    if (r->stats)
        wg_stats_add(r->stats, WG_C_POLICY_DENIED, 1);
    if (challenge)
        wg_policy_head_add(r, &r->resp_extra, "WWW-Authenticate", 16, challenge,
                           strlen(challenge));
    return wg_policy_answer(r, status, body);
}

/* `name=value` among `sep`-separated items of v (spaces before an item skipped). */
static bool item_value(struct wg_pstr v, char sep, const char *name, size_t n, struct wg_pstr *out)
{
    size_t i = 0;

    while (i < v.n) {
        while (i < v.n && (v.p[i] == ' ' || v.p[i] == sep))
            i++;
        size_t st = i;
        while (i < v.n && v.p[i] != sep)
            i++;
        if (i - st > n && v.p[st + n] == '=' && memcmp(v.p + st, name, n) == 0) {
            *out = (struct wg_pstr){ v.p + st + n + 1, i - st - n - 1 };
            return true;
        }
    }
    return false;
}

bool wg_policy_query_param(const struct wg_policy_req *r, const char *name, size_t n,
                           struct wg_pstr *out)
{
    return r->has_query && item_value(r->query, '&', name, n, out);
}

bool wg_policy_cookie(const struct wg_policy_req *r, const char *name, size_t n,
                      struct wg_pstr *out)
{
    const struct wg_policy_head *h = &r->req;

    for (unsigned f = 0; f < h->n_in; f++)
        if (!wg_policy_head_dropped(h, f) && same_name(h->in[f].name, "cookie", 6) &&
            item_value(h->in[f].value, ';', name, n, out))
            return true;
    return false;
}

bool wg_policy_var_get(struct wg_policy_req *r, enum wg_policy_var v, const char *arg,
                       struct wg_pstr *out)
{
    json_t *c;

    switch (v) {
    case WG_PVAR_CLIENT_IP:
        *out = (struct wg_pstr){ r->client_ip, r->client_ip ? strlen(r->client_ip) : 0 };
        return r->client_ip != NULL;
    case WG_PVAR_REQUEST_ID:
        *out = r->request_id;
        return r->request_id.n > 0;
    case WG_PVAR_HOST:
        *out = r->authority;
        return r->authority.n > 0;
    case WG_PVAR_CONSUMER:
        *out = r->consumer;
        return r->consumer.n > 0;
    case WG_PVAR_HEADER:
        return wg_policy_head_get(&r->req, arg, strlen(arg), out);
    case WG_PVAR_ROUTE:
        *out = (struct wg_pstr){ "route", 5 };
        return true;
    case WG_PVAR_CLAIM:
        if (!r->claims || !(c = json_object_get(r->claims, arg)))
            return false;
        if (json_is_string(c)) {
            *out = (struct wg_pstr){ json_string_value(c), json_string_length(c) };
            return true;
        }
        {
            char *s = json_dumps(c, JSON_COMPACT | JSON_ENCODE_ANY);
            char *d = s ? wg_policy_strdup(r, s, strlen(s)) : NULL;
            free(s);
            if (!d)
                return false;
            *out = (struct wg_pstr){ d, strlen(d) };
            return true;
        }
    }
    return false;
}

/* ---- the `policies:` lists (config) ----------------------------------------- */

static const char *suggest(const char *name)
{
    const char *names[N_POLICIES];

    for (size_t i = 0; i < N_POLICIES; i++)
        names[i] = policy_table[i]->name;
    return wg_yaml_suggest(name, names, N_POLICIES, sizeof names[0]);
}

static void parse_entry(struct cfg_ctx *c, struct wg_policy_list *l, yaml_node_t *item)
{
    struct wg_yaml_pairs pairs;
    const struct wg_policy_ops *ops;
    struct wg_policy **v, *p;
    void *state;

    if (item->type != YAML_MAPPING_NODE) {
        cfg_error(c, item, "policies: each entry is a mapping { <policy>: { ... } }");
        return;
    }
    wg_yaml_pairs(&c->y, item, &pairs);
    if (pairs.n != 1) {
        if (pairs.n > 1)
            cfg_error(c, pairs.v[1].key,
                      "policies: one policy per entry (write '- %.40s: ...' as its own item)",
                      pairs.v[1].name);
        else
            cfg_error(c, item, "policies: empty entry");
        wg_yaml_pairs_free(&pairs);
        return;
    }
    ops = wg_policy_ops_find(pairs.v[0].name);
    if (!ops) {
        const char *hint = suggest(pairs.v[0].name);
        if (hint && strcmp(hint, pairs.v[0].name) != 0)
            cfg_error(c, pairs.v[0].key, "unknown policy '%.80s' (did you mean '%s'?)",
                      pairs.v[0].name, hint);
        else
            cfg_error(c, pairs.v[0].key, "unknown policy '%.80s'", pairs.v[0].name);
        goto out;
    }
    state = ops->parse(c, pairs.v[0].value);
    if (!state)
        goto out;
    v = realloc(l->v, (l->n + 1) * sizeof *v);
    p = v ? calloc(1, sizeof *p) : NULL;
    if (v)
        l->v = v;
    if (!p) {
        ops->free(state);
        wg_yaml_oom(&c->y);
        goto out;
    }
    *p = (struct wg_policy){ ops, state, 1, (unsigned)wg_yaml_line(item) };
    l->v[l->n++] = p;
out:
    wg_yaml_pairs_free(&pairs);
}

void cfg_p_policies(struct cfg_ctx *c, yaml_node_t *v, void *base, const struct cfg_key *k)
{
    struct wg_policy_list *l = (struct wg_policy_list *)((char *)base + k->off);

    wg_policy_list_free(l);             /* a list replaces the inherited one */
    if (wg_yaml_is_null(v))
        return;
    if (v->type != YAML_SEQUENCE_NODE) {
        cfg_error(c, v, "%s: expected a list of policies", k->name);
        return;
    }
    for (size_t i = 0, n = wg_yaml_seq_len(v); i < n && !c->y.aborted; i++) {
        yaml_node_t *item = wg_yaml_seq_item(&c->y, v, i);
        if (item)
            parse_entry(c, l, item);
    }
}
