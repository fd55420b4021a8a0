/* policy_cors — CORS (Fetch standard): preflights answered by waygate,
 * allowed origins echoed on actual responses, `Vary: Origin` always. */
#include "policy_parse.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct cors_state {
    struct pp_strlist origins, methods, headers, expose;
    bool credentials;
    uint64_t max_age_ms;
    bool any_origin;                    /* "*" listed */
    char *methods_text, *headers_text, *expose_text, max_age_text[24];
};

#define CF(f) offsetof(struct cors_state, f)

static const struct cfg_key cors_keys[] = {
    { "origins", pp_p_strlist, CF(origins), 0, 0, NULL },
    { "methods", pp_p_strlist, CF(methods), 0, 0, "token" },
    { "headers", pp_p_strlist, CF(headers), 0, 0, "token" },
    { "expose_headers", pp_p_strlist, CF(expose), 0, 0, "token" },
    { "credentials", cfg_p_bool, CF(credentials), 0, 0, NULL },
    { "max_age", cfg_p_duration, CF(max_age_ms), 0, 24 * 3600 * 1000ULL, NULL },
};
static const struct cfg_table cors_table = CFG_TABLE("cors policy", cors_keys);

static void cors_free(void *p)
{
    struct cors_state *s = p;

    if (!s)
        return;
    pp_strlist_free(&s->origins);
    pp_strlist_free(&s->methods);
    pp_strlist_free(&s->headers);
    pp_strlist_free(&s->expose);
    free(s->methods_text);
    free(s->headers_text);
    free(s->expose_text);
    free(s);
}

static char *join(const struct pp_strlist *l)
{
    size_t n = 1;
    char *s;

    for (size_t i = 0; i < l->n; i++)
        n += strlen(l->v[i]) + 2;
    if (!(s = malloc(n)))
        return NULL;
    s[0] = 0;
    for (size_t i = 0; i < l->n; i++) {
        if (i)
            strcat(s, ", ");
        strcat(s, l->v[i]);
    }
    return s;
}

static void *cors_parse(struct cfg_ctx *c, yaml_node_t *block)
{
    struct cors_state *s = calloc(1, sizeof *s);
    struct cfg_seen seen;
    static const char *const def_methods[] = { "GET", "HEAD", "POST" };
    unsigned long before = c->y.n_errors;

    if (!s) {
        wg_yaml_oom(&c->y);
        return NULL;
    }
    s->max_age_ms = 0;
    if (!pp_block(c, block, &cors_table, s, &seen, "cors"))
        goto fail;
    if (s->origins.n == 0) {
        cfg_error(c, block, "cors: 'origins' must list at least one origin");
        goto fail;
    }
    for (size_t i = 0; i < s->origins.n; i++) {
        const char *o = s->origins.v[i];
        const char *star = strchr(o, '*');
        if (strcmp(o, "*") == 0)
            s->any_origin = true;
        else if (star && (star[1] != '.' || strchr(star + 1, '*')))
            cfg_error(c, block, "cors: origin '%.80s': a wildcard is '*' or '*.suffix'", o);
    }
    if (s->any_origin && s->credentials) {
        cfg_error(c, block, "cors: credentials: true cannot be used with origin '*' "
                  "(browsers refuse it; list the origins)");
        goto fail;
    }
    if (s->methods.n == 0)
        for (size_t i = 0; i < 3; i++) {
            char **v = realloc(s->methods.v, (s->methods.n + 1) * sizeof *v);
            if (!v || !(v[s->methods.n] = strdup(def_methods[i]))) {
                if (v)
                    s->methods.v = v;
                goto oom;
            }
            s->methods.v = v;
            s->methods.n++;
        }
    if (!(s->methods_text = join(&s->methods)) || !(s->headers_text = join(&s->headers)) ||
        !(s->expose_text = join(&s->expose)))
        goto oom;
    snprintf(s->max_age_text, sizeof s->max_age_text, "%llu",
             (unsigned long long)(s->max_age_ms / 1000));
    if (c->y.n_errors != before)
        goto fail;
    return s;
oom:
    wg_yaml_oom(&c->y);
fail:
    cors_free(s);
    return NULL;
}

static bool origin_allowed(const struct cors_state *s, struct wg_pstr o)
{
    if (s->any_origin)
        return true;
    for (size_t i = 0; i < s->origins.n; i++) {
        const char *p = s->origins.v[i], *star = strchr(p, '*');
        if (!star) {
            if (strlen(p) == o.n && strncasecmp(p, o.p, o.n) == 0)
                return true;
            continue;
        }
        size_t pre = (size_t)(star - p), suf = strlen(star + 1);
        struct wg_pstr h = o;            /* "*.x" without a scheme: any scheme */
        const char *sep = strstr(p, "://") ? NULL : memchr(o.p, ':', o.n);
        if (sep && (size_t)(o.p + o.n - sep) > 3 && memcmp(sep, "://", 3) == 0)
            h = (struct wg_pstr){ sep + 3, (size_t)(o.p + o.n - sep - 3) };
        if (h.n > pre + suf && strncasecmp(h.p, p, pre) == 0 &&
            strncasecmp(h.p + h.n - suf, star + 1, suf) == 0 &&
            memchr(h.p + pre, '/', h.n - pre - suf) == NULL)
            return true;
    }
    return false;
}

/* Every name of a comma-separated Access-Control-Request-Headers is allowed. */
static bool headers_allowed(const struct cors_state *s, struct wg_pstr v)
{
    size_t i = 0;

    while (i < v.n) {
        while (i < v.n && (v.p[i] == ' ' || v.p[i] == ',' || v.p[i] == '\t'))
            i++;
        size_t start = i;
        while (i < v.n && v.p[i] != ',' && v.p[i] != ' ' && v.p[i] != '\t')
            i++;
        if (i > start && !pp_strlist_has(&s->headers, v.p + start, i - start, true))
            return false;
    }
    return true;
}

#define ADD(r, name, val, vn) wg_policy_head_add(r, &(r)->resp_extra, name, sizeof name - 1, val, vn)

static void allow_origin(const struct cors_state *s, struct wg_policy_req *r, struct wg_pstr o)
{
    if (s->any_origin)
        ADD(r, "Access-Control-Allow-Origin", "*", 1);
    else
        ADD(r, "Access-Control-Allow-Origin", o.p, o.n);
    if (s->credentials)
        ADD(r, "Access-Control-Allow-Credentials", "true", 4);
}

static enum wg_policy_verdict cors_request(const void *state, struct wg_policy_req *r)
{
    const struct cors_state *s = state;
    struct wg_pstr origin, method, hdrs;
    bool preflight;

    if (!s->any_origin)
        ADD(r, "Vary", "Origin", 6);
    if (!wg_policy_head_get(&r->req, "origin", 6, &origin))
        return WG_POLICY_CONTINUE;
    preflight = r->method.n == 7 && memcmp(r->method.p, "OPTIONS", 7) == 0 &&
                wg_policy_head_get(&r->req, "access-control-request-method", 29, &method);
    if (!origin_allowed(s, origin))
        return preflight ? wg_policy_answer(r, 403, "CORS origin not allowed\n")
                         : WG_POLICY_CONTINUE;
    if (!preflight) {
        allow_origin(s, r, origin);
        if (s->expose.n)
            ADD(r, "Access-Control-Expose-Headers", s->expose_text, strlen(s->expose_text));
        return WG_POLICY_CONTINUE;
    }
    if (!pp_strlist_has(&s->methods, method.p, method.n, false))
        return wg_policy_answer(r, 403, "CORS method not allowed\n");
    if (wg_policy_head_get(&r->req, "access-control-request-headers", 30, &hdrs) &&
        !headers_allowed(s, hdrs))
        return wg_policy_answer(r, 403, "CORS header not allowed\n");
    allow_origin(s, r, origin);
    ADD(r, "Access-Control-Allow-Methods", s->methods_text, strlen(s->methods_text));
    if (s->headers.n)
        ADD(r, "Access-Control-Allow-Headers", s->headers_text, strlen(s->headers_text));
    if (s->max_age_ms)
        ADD(r, "Access-Control-Max-Age", s->max_age_text, strlen(s->max_age_text));
    return wg_policy_answer(r, 204, NULL);
}

/* waygate's answer replaces the upstream's own CORS fields. */
static void cors_response(const void *state, struct wg_policy_req *r, unsigned status,
                          struct wg_policy_head *head)
{
    struct wg_pstr v;

    if (!wg_policy_head_get(&r->resp_extra, "access-control-allow-origin", 27, &v))
        return;
    wg_policy_head_remove(r, head, "access-control-allow-origin", 27);
    wg_policy_head_remove(r, head, "access-control-allow-credentials", 32);
}

const struct wg_policy_ops wg_policy_cors = {
    .name = "cors",
    .parse = cors_parse,
    .free = cors_free,
    .request = cors_request,
    .response = cors_response,
};
