/* config_listener — `listeners:` entries, their http/tls settings and routes. */
#include "config_parse.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "config_value.h"

#define LF(f) offsetof(struct wg_listener_config, f)
#define RF(f) offsetof(struct wg_route, f)
#define PF(f) offsetof(struct wg_tls_cert_pair, f)
#define DMAX WG_DURATION_MAX_MS

static const char *const mode_names[] = { "tcp", "http", NULL };
static const char *const verify_names[] = { "none", "optional", "required", NULL };

static void p_service_ref(struct cfg_ctx *c, yaml_node_t *v, void *base,
                          const struct cfg_key *k)
{
    const char *t = cfg_text(c, v, k->name);

    if (t && !wg_service_name_ok(t))
        cfg_error(c, v, "%s: invalid service name '%.80s' (non-empty, no '/' or spaces)",
                  k->name, t);
    else if (t)
        cfg_set_str(c, (char **)((char *)base + k->off), t);
}

static void p_name(struct cfg_ctx *c, yaml_node_t *v, void *base, const struct cfg_key *k)
{
    const char *t = cfg_text(c, v, k->name);

    if (t && !*t)
        cfg_error(c, v, "%s: must not be empty", k->name);
    else if (t)
        cfg_set_str(c, &((struct wg_listener_config *)base)->name, t);
}

/* ---- routes ---------------------------------------------------------------- */

static bool strip_port(char *h)
{
    char *colon;

    if (h[0] == '[') {
        char *close = strchr(h, ']');
        if (!close)
            return false;
        colon = close[1] ? close + 1 : NULL;
        if (colon && *colon != ':')
            return false;
    } else {
        colon = strchr(h, ':');
    }
    if (!colon)
        return true;
    if (!colon[1] || strspn(colon + 1, "0123456789") != strlen(colon + 1))
        return false;
    *colon = '\0';
    return true;
}

/* Lower-case, port and trailing dot removed; "*.x" -> ".x" + wildcard. */
static bool host_normalize(char *h, bool *wildcard)
{
    size_t n;
    char *name = h;

    for (char *p = h; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    if (!strip_port(h))
        return false;
    n = strlen(h);
    if (n > 1 && h[n - 1] == '.')
        h[--n] = '\0';
    *wildcard = strncmp(h, "*.", 2) == 0;
    if (*wildcard) {
        memmove(h, h + 1, n);           /* keeps the NUL */
        name = h + 1;
    }
    if (name[0] == '[' && !*wildcard) {
        struct sockaddr_storage ss;
        socklen_t len;
        return wg_ip_literal(name, 0, &ss, &len) && ss.ss_family == AF_INET6;
    }
    return *name && *name != '.' && !strstr(name, "..") &&
           strspn(name, "abcdefghijklmnopqrstuvwxyz0123456789-_.") == strlen(name);
}

static void p_host(struct cfg_ctx *c, yaml_node_t *v, void *base, const struct cfg_key *k)
{
    struct wg_route *r = base;
    const char *t = cfg_text(c, v, k->name);
    char *h;
    bool wildcard;

    if (!t)
        return;
    if (strcmp(t, "*") == 0) {
        free(r->host);
        r->host = NULL;
        r->host_wildcard = false;
        return;
    }
    if (!(h = strdup(t))) {
        wg_yaml_oom(&c->y);
        return;
    }
    if (!host_normalize(h, &wildcard)) {
        cfg_error(c, v, "%s: invalid host (an exact name or *.suffix), got '%.80s'", k->name, t);
        free(h);
        return;
    }
    free(r->host);
    r->host = h;
    r->host_wildcard = wildcard;
}

static void p_path_prefix(struct cfg_ctx *c, yaml_node_t *v, void *base,
                          const struct cfg_key *k)
{
    const char *t = cfg_text(c, v, k->name);

    if (t && t[0] != '/')
        cfg_error(c, v, "%s: must start with '/', got '%.80s'", k->name, t);
    else if (t)
        cfg_set_str(c, &((struct wg_route *)base)->path_prefix, t);
}

static void methods_free(struct wg_route *r)
{
    for (size_t i = 0; i < r->n_methods; i++)
        free(r->methods[i]);
    free(r->methods);
    r->methods = NULL;
    r->n_methods = 0;
}

static void p_methods(struct cfg_ctx *c, yaml_node_t *v, void *base, const struct cfg_key *k)
{
    struct wg_route *r = base;
    size_t n = v->type == YAML_SEQUENCE_NODE ? wg_yaml_seq_len(v) : 0;

    if (v->type != YAML_SEQUENCE_NODE) {
        cfg_error(c, v, "%s: expected a list", k->name);
        return;
    }
    if (n == 0) {
        cfg_error(c, v, "%s: expected at least one method", k->name);
        return;
    }
    methods_free(r);
    if (!(r->methods = calloc(n, sizeof *r->methods))) {
        wg_yaml_oom(&c->y);
        return;
    }
    for (size_t i = 0; i < n && !c->y.aborted; i++) {
        yaml_node_t *item = wg_yaml_seq_item(&c->y, v, i);
        const char *t = item ? cfg_text(c, item, k->name) : NULL;
        if (t && !wg_is_token(t)) {
            cfg_error(c, item, "%s: invalid method '%.80s'", k->name, t);
        } else if (t && !(r->methods[r->n_methods] = strdup(t))) {
            wg_yaml_oom(&c->y);
        } else if (t) {
            for (char *p = r->methods[r->n_methods]; *p; p++)
                *p = (char)toupper((unsigned char)*p);
            r->n_methods++;
        }
    }
}

static bool header_value_ok(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < ' ' && *s != '\t')
            return false;
    return true;
}

static void add_header(struct cfg_ctx *c, struct wg_route *r, const struct wg_yaml_pair *p)
{
    const char *value = cfg_text(c, p->value, p->name);
    struct wg_route_header *h;

    if (!value)
        return;
    if (!wg_is_token(p->name)) {
        cfg_error(c, p->key, "headers: invalid header name '%.80s'", p->name);
        return;
    }
    if (!header_value_ok(value)) {
        cfg_error(c, p->value, "headers: invalid value for '%.80s'", p->name);
        return;
    }
    for (size_t i = 0; i < r->n_headers; i++)
        if (strcasecmp(r->headers[i].name, p->name) == 0) {
            cfg_error(c, p->key, "headers: duplicate header '%.80s'", p->name);
            return;
        }
    h = &r->headers[r->n_headers];
    h->name = strdup(p->name);
    h->value = strdup(value);
    r->n_headers++;
    if (!h->name || !h->value)
        wg_yaml_oom(&c->y);
}

static void p_headers(struct cfg_ctx *c, yaml_node_t *v, void *base, const struct cfg_key *k)
{
    struct wg_route *r = base;
    struct wg_yaml_pairs pairs;

    if (v->type != YAML_MAPPING_NODE) {
        cfg_error(c, v, "%s: expected a mapping", k->name);
        return;
    }
    wg_yaml_pairs(&c->y, v, &pairs);
    if (pairs.n && !(r->headers = calloc(pairs.n, sizeof *r->headers)))
        wg_yaml_oom(&c->y);
    for (size_t i = 0; r->headers && i < pairs.n && !c->y.aborted; i++)
        add_header(c, r, &pairs.v[i]);
    wg_yaml_pairs_free(&pairs);
}

static void p_route_timeout(struct cfg_ctx *c, yaml_node_t *v, void *base,
                            const struct cfg_key *k)
{
    uint64_t ms;

    if (cfg_duration(c, v, k, &ms))
        ((struct wg_route *)base)->response_timeout_ms = (int64_t)ms;
}

static void p_route_retries(struct cfg_ctx *c, yaml_node_t *v, void *base,
                            const struct cfg_key *k)
{
    uint64_t n;

    if (cfg_uint(c, v, k->name, k->min, k->max, &n))
        ((struct wg_route *)base)->retries = (int)n;
}

static void p_route_retry_ni(struct cfg_ctx *c, yaml_node_t *v, void *base,
                             const struct cfg_key *k)
{
    bool b = false;
    struct cfg_key local = *k;

    local.off = 0;
    cfg_p_bool(c, v, &b, &local);
    ((struct wg_route *)base)->retry_non_idempotent = b;
}

/* backends: [ { service, weight } ] — a traffic split (DESIGN §16). */
#define BF(f) offsetof(struct wg_route_backend, f)
static const struct cfg_key backend_keys[] = {
    { "service", p_service_ref, BF(service), 0, 0, NULL },
    { "weight", cfg_p_unsigned, BF(weight), 0, 1000000, NULL },
};
static const struct cfg_table backend_table = CFG_TABLE("backend", backend_keys);

static void p_backends(struct cfg_ctx *c, yaml_node_t *v, void *base, const struct cfg_key *k)
{
    struct wg_route *r = base;
    size_t n = v->type == YAML_SEQUENCE_NODE ? wg_yaml_seq_len(v) : 0;
    struct cfg_seen seen;

    if (v->type != YAML_SEQUENCE_NODE || n == 0) {
        cfg_error(c, v, "%s: expected a non-empty list of { service, weight }", k->name);
        return;
    }
    if (!(r->backends = calloc(n, sizeof *r->backends))) {
        wg_yaml_oom(&c->y);
        return;
    }
    for (size_t i = 0; i < n && !c->y.aborted; i++) {
        yaml_node_t *item = wg_yaml_seq_item(&c->y, v, i);
        struct wg_route_backend *b = &r->backends[r->n_backends];
        if (!item)
            continue;
        b->weight = 1;
        cfg_map(c, item, &backend_table, b, &seen, "backend", NULL);
        if (!b->service) {
            if (item->type == YAML_MAPPING_NODE)
                cfg_error(c, item, "missing required key 'service' in backend");
            continue;
        }
        r->backends_weight += b->weight;
        r->n_backends++;
    }
    if (r->n_backends && r->backends_weight == 0)
        cfg_error(c, v, "%s: every weight is 0: no backend would get traffic", k->name);
}

static void p_sticky(struct cfg_ctx *c, yaml_node_t *v, void *base, const struct cfg_key *k)
{
    struct wg_route *r = base;
    const char *t = cfg_text(c, v, k->name), *name = NULL;

    if (!t)
        return;
    r->sticky = true;
    if (strcmp(t, "client_ip") == 0) {
        r->sticky_key = WG_HASH_CLIENT_IP;
        return;
    }
    if (strncmp(t, "header:", 7) == 0)
        name = t + 7, r->sticky_key = WG_HASH_HEADER;
    else if (strncmp(t, "cookie:", 7) == 0)
        name = t + 7, r->sticky_key = WG_HASH_COOKIE;
    if (!name || !wg_is_token(name))
        cfg_error(c, v, "%s: expected client_ip, header:NAME or cookie:NAME, got '%.80s'",
                  k->name, t);
    else
        cfg_set_str(c, &r->sticky_name, name);
}

static const struct cfg_key route_keys[] = {
    { "host", p_host, 0, 0, 0, NULL },
    { "path_prefix", p_path_prefix, 0, 0, 0, NULL },
    { "methods", p_methods, 0, 0, 0, NULL },
    { "headers", p_headers, 0, 0, 0, NULL },
    { "service", p_service_ref, RF(service), 0, 0, NULL },
    { "strip_prefix", cfg_p_bool, RF(strip_prefix), 0, 0, NULL },
    { "response_timeout", p_route_timeout, 0, 1, DMAX, NULL },
    { "retries", p_route_retries, 0, 0, 10, NULL },
    { "retry_non_idempotent", p_route_retry_ni, 0, 0, 0, NULL },
    { "policies", cfg_p_policies, RF(policy_list), 0, 0, NULL },
    { "backends", p_backends, 0, 0, 0, NULL },
    { "sticky", p_sticky, 0, 0, 0, NULL },
};
static const struct cfg_table route_table = CFG_TABLE("route", route_keys);

static void route_free(struct wg_route *r)
{
    free(r->host);
    free(r->path_prefix);
    methods_free(r);
    for (size_t i = 0; i < r->n_headers; i++) {
        free(r->headers[i].name);
        free(r->headers[i].value);
    }
    free(r->headers);
    free(r->service);
    for (size_t i = 0; i < r->n_backends; i++)
        free(r->backends[i].service);
    free(r->backends);
    free(r->sticky_name);
    wg_policy_list_free(&r->policy_list);
    wg_policy_chain_free(r->policies);
}

static void parse_route(struct cfg_ctx *c, struct wg_listener_config *l, yaml_node_t *node)
{
    struct wg_route *v = realloc(l->routes, (l->n_routes + 1) * sizeof *v), *r;
    struct cfg_seen seen;

    if (!v) {
        wg_yaml_oom(&c->y);
        return;
    }
    l->routes = v;
    r = &v[l->n_routes++];
    memset(r, 0, sizeof *r);
    r->response_timeout_ms = -1;
    r->retries = -1;
    r->retry_non_idempotent = -1;
    r->line = (unsigned)wg_yaml_line(node);
    if (!cfg_set_str(c, &r->path_prefix, "/"))
        return;
    if (node->type != YAML_MAPPING_NODE) {
        cfg_error(c, node, "route: expected a mapping");
        return;
    }
    cfg_map(c, node, &route_table, r, &seen, "route", NULL);
    bool has_service = cfg_seen_has(&seen, &route_table, "service");
    if (cfg_seen_has(&seen, &route_table, "backends")) {
        if (has_service)
            cfg_error(c, seen.key[cfg_key_index(&route_table, "backends")],
                      "backends: a route names either service or backends, not both");
        else if (r->n_backends)
            cfg_set_str(c, &r->service, r->backends[0].service);
    } else if (!has_service) {
        cfg_error(c, node, "missing required key 'service' in route");
    }
    if (cfg_seen_has(&seen, &route_table, "sticky") && !cfg_seen_has(&seen, &route_table, "backends"))
        cfg_error(c, seen.key[cfg_key_index(&route_table, "sticky")],
                  "sticky: only a route with backends is split");
}

static void p_routes(struct cfg_ctx *c, yaml_node_t *v, void *base, const struct cfg_key *k)
{
    struct wg_listener_config *l = base;

    if (wg_yaml_is_null(v))
        return;
    if (v->type != YAML_SEQUENCE_NODE) {
        cfg_error(c, v, "%s: expected a list", k->name);
        return;
    }
    for (size_t i = 0; i < wg_yaml_seq_len(v) && !c->y.aborted; i++) {
        yaml_node_t *item = wg_yaml_seq_item(&c->y, v, i);
        if (item)
            parse_route(c, l, item);
    }
}

/* ---- tls -------------------------------------------------------------------- */

static const struct cfg_key cert_keys[] = {
    { "cert", cfg_p_file, PF(cert), 0, 0, NULL },
    { "key", cfg_p_file, PF(key), 0, 0, NULL },
};
static const struct cfg_table cert_table = CFG_TABLE("certificate", cert_keys);

static void parse_cert(struct cfg_ctx *c, struct wg_listener_config *l, yaml_node_t *node)
{
    struct wg_tls_cert_pair *v, *p;
    struct cfg_seen seen;

    v = realloc(l->tls.certificates, (l->tls.n_certificates + 1) * sizeof *v);
    if (!v) {
        wg_yaml_oom(&c->y);
        return;
    }
    l->tls.certificates = v;
    p = &v[l->tls.n_certificates++];
    p->cert = p->key = NULL;
    if (!cfg_set_str(c, &p->cert, "") || !cfg_set_str(c, &p->key, ""))
        return;
    if (node->type != YAML_MAPPING_NODE) {
        cfg_error(c, node, "certificates: expected a mapping");
        return;
    }
    cfg_map(c, node, &cert_table, p, &seen, "certificate", NULL);
    if (!cfg_seen_has(&seen, &cert_table, "cert"))
        cfg_error(c, node, "missing required key 'cert' in certificate");
    if (!cfg_seen_has(&seen, &cert_table, "key"))
        cfg_error(c, node, "missing required key 'key' in certificate");
}

static void p_certificates(struct cfg_ctx *c, yaml_node_t *v, void *base,
                           const struct cfg_key *k)
{
    struct wg_listener_config *l = base;

    if (v->type != YAML_SEQUENCE_NODE) {
        cfg_error(c, v, "%s: expected a list", k->name);
        return;
    }
    if (wg_yaml_seq_len(v) == 0)
        cfg_error(c, v, "%s: expected at least one certificate", k->name);
    for (size_t i = 0; i < wg_yaml_seq_len(v) && !c->y.aborted; i++) {
        yaml_node_t *item = wg_yaml_seq_item(&c->y, v, i);
        if (item)
            parse_cert(c, l, item);
    }
}

static void p_min_version(struct cfg_ctx *c, yaml_node_t *v, void *base,
                          const struct cfg_key *k)
{
    struct wg_listener_config *l = base;
    const char *t = cfg_text(c, v, k->name);

    if (!t)
        return;
    if (strcmp(t, "1.2") == 0)
        l->tls.min_version = 12;
    else if (strcmp(t, "1.3") == 0)
        l->tls.min_version = 13;
    else
        cfg_error(c, v, "%s: expected \"1.2\" or \"1.3\", got '%.80s'", k->name, t);
}

static void p_redirect(struct cfg_ctx *c, yaml_node_t *v, void *base, const struct cfg_key *k)
{
    const char *t = cfg_text(c, v, k->name);

    if (t && *t && strcmp(t, "https") != 0)
        cfg_error(c, v, "%s: expected \"\" or \"https\", got '%.80s'", k->name, t);
    else if (t)
        cfg_set_str(c, &((struct wg_listener_config *)base)->tls.redirect_http, t);
}

static const struct cfg_key ltls_keys[] = {
    { "certificates", p_certificates, 0, 0, 0, NULL },
    { "min_version", p_min_version, 0, 0, 0, NULL },
    { "handshake_timeout", cfg_p_duration, LF(tls.handshake_timeout_ms), 1, DMAX, NULL },
    { "client_ca", cfg_p_file, LF(tls.client_ca), 0, 0, NULL },
    { "verify", cfg_p_enum, LF(tls.verify), 0, 0, verify_names },
    { "redirect_http", p_redirect, 0, 0, 0, NULL },
};
static const struct cfg_table ltls_table = CFG_TABLE("listener tls", ltls_keys);

static void p_listener_tls(struct cfg_ctx *c, yaml_node_t *v, void *base,
                           const struct cfg_key *k)
{
    struct wg_listener_config *l = base;
    struct cfg_seen seen;
    unsigned verify = cfg_key_index(&ltls_table, "verify");
    unsigned redirect = cfg_key_index(&ltls_table, "redirect_http");

    cfg_map(c, v, &ltls_table, l, &seen, k->name, NULL);
    l->tls.enabled = l->tls.n_certificates > 0;
    if (l->tls.verify != WG_VERIFY_NONE && !l->tls.enabled)
        cfg_error(c, seen.value[verify], "verify: client verification needs certificates");
    else if (l->tls.verify != WG_VERIFY_NONE && !*l->tls.client_ca)
        cfg_error(c, seen.value[verify], "verify: '%s' needs client_ca",
                  verify_names[l->tls.verify]);
    if (*l->tls.redirect_http && l->tls.enabled)
        cfg_error(c, seen.value[redirect],
                  "redirect_http: only for a listener without certificates");
}

/* ---- listeners ---------------------------------------------------------------- */

/* protocols: [h2, http1] — at least one, no repeats. */
static void p_protocols(struct cfg_ctx *c, yaml_node_t *v, void *base, const struct cfg_key *k)
{
    static const char *const names[] = { "h2", "http1", NULL };
    struct wg_listener_config *l = base;
    size_t n = v->type == YAML_SEQUENCE_NODE ? wg_yaml_seq_len(v) : 0;

    if (v->type != YAML_SEQUENCE_NODE || n == 0) {
        cfg_error(c, v, "%s: expected a list of h2, http1", k->name);
        return;
    }
    l->http.proto_h1 = l->http.proto_h2 = false;
    for (size_t i = 0; i < n && !c->y.aborted; i++) {
        yaml_node_t *item = wg_yaml_seq_item(&c->y, v, i);
        int e = item ? cfg_enum(c, item, k->name, names) : -1;
        bool *slot = e == 0 ? &l->http.proto_h2 : e == 1 ? &l->http.proto_h1 : NULL;
        if (slot && *slot)
            cfg_error(c, item, "%s: '%s' listed twice", k->name, names[e]);
        else if (slot)
            *slot = true;
    }
}

static const struct cfg_key http_keys[] = {
    { "protocols", p_protocols, 0, 0, 0, NULL },
    { "h2c", cfg_p_bool, LF(http.h2c), 0, 0, NULL },
    { "max_concurrent_streams", cfg_p_unsigned, LF(http.max_concurrent_streams), 1, 100000, NULL },
    { "h2_max_resets_per_second", cfg_p_unsigned, LF(http.h2_max_resets), 1, 1000000, NULL },
    { "h2_max_control_frames_per_second", cfg_p_unsigned, LF(http.h2_max_control_frames), 1,
      1000000, NULL },
    { "max_header_size", cfg_p_size, LF(http.max_header_size), 1024, 16 << 20, NULL },
    { "max_body_size", cfg_p_size, LF(http.max_body_size), 0, WG_SIZE_MAX_BYTES, NULL },
    { "client_header_timeout", cfg_p_duration, LF(http.client_header_timeout_ms), 1, DMAX,
      NULL },
    { "client_body_timeout", cfg_p_duration, LF(http.client_body_timeout_ms), 1, DMAX, NULL },
    { "client_idle_timeout", cfg_p_duration, LF(http.client_idle_timeout_ms), 1, DMAX, NULL },
    { "send_timeout", cfg_p_duration, LF(http.send_timeout_ms), 1, DMAX, NULL },
    { "tunnel_idle_timeout", cfg_p_duration, LF(http.tunnel_idle_timeout_ms), 1, DMAX, NULL },
    { "allow_underscores", cfg_p_bool, LF(http.allow_underscores), 0, 0, NULL },
    { "tcp_notsent_lowat", cfg_p_size, LF(http.tcp_notsent_lowat), 0, 64 << 20, NULL },
};
static const struct cfg_table http_table = CFG_TABLE("listener http", http_keys);

static const struct cfg_key listener_keys[] = {
    { "name", p_name, 0, 0, 0, NULL },
    { "listen", cfg_p_addr, LF(listen), 0, 0, NULL },
    { "mode", cfg_p_enum, LF(mode), 0, 0, mode_names },
    { "service", p_service_ref, LF(service), 0, 0, NULL },
    { "proxy_protocol", cfg_p_bool, LF(proxy_protocol), 0, 0, NULL },
    { "trusted_proxies", cfg_p_cidrs, LF(trusted_proxies), 0, 0, NULL },
    { "idle_timeout", cfg_p_duration, LF(idle_timeout_ms), 1, DMAX, NULL },
    { "http", cfg_p_map, 0, 0, 0, &http_table },
    { "tls", p_listener_tls, 0, 0, 0, NULL },
    { "routes", p_routes, 0, 0, 0, NULL },
    { "policies", cfg_p_policies, LF(policies), 0, 0, NULL },
};
static const struct cfg_table listener_table = CFG_TABLE("listener", listener_keys);

void cfg_listener_free(struct wg_listener_config *l)
{
    free(l->name);
    free(l->service);
    for (size_t i = 0; i < l->tls.n_certificates; i++) {
        free(l->tls.certificates[i].cert);
        free(l->tls.certificates[i].key);
    }
    free(l->tls.certificates);
    free(l->tls.client_ca);
    free(l->tls.redirect_http);
    free(l->trusted_proxies.v);
    for (size_t i = 0; i < l->n_routes; i++)
        route_free(&l->routes[i]);
    free(l->routes);
    wg_policy_list_free(&l->policies);
}

static bool listener_init(struct cfg_ctx *c, struct wg_listener_config *l)
{
    memset(l, 0, sizeof *l);
    l->idle_timeout_ms = 3600000;
    l->http.max_header_size = 32 * 1024;
    l->http.client_header_timeout_ms = 10000;
    l->http.client_body_timeout_ms = 60000;
    l->http.client_idle_timeout_ms = 60000;
    l->http.send_timeout_ms = 60000;
    l->http.tunnel_idle_timeout_ms = 3600000;
    l->http.proto_h1 = l->http.proto_h2 = true;
    l->http.max_concurrent_streams = 100;
    l->http.h2_max_resets = 100;
    l->http.h2_max_control_frames = 1000;
    l->http.tcp_notsent_lowat = 128 * 1024;
    l->tls.min_version = 12;
    l->tls.handshake_timeout_ms = 10000;
    l->tls.verify = WG_VERIFY_NONE;
    return cfg_set_str(c, &l->name, "") && cfg_set_str(c, &l->tls.client_ca, "") &&
           cfg_set_str(c, &l->tls.redirect_http, "");
}

/* Appends a listener (and its meta slot) owned by the config. */
static struct wg_listener_config *listener_add(struct cfg_ctx *c)
{
    struct wg_config *cfg = c->cfg;
    size_t n = cfg->n_listeners + 1;
    struct wg_listener_config *v = realloc(cfg->listeners, n * sizeof *v);
    struct cfg_listener_meta *m;

    if (v)
        cfg->listeners = v;
    m = v ? realloc(c->meta, n * sizeof *m) : NULL;
    if (!m) {
        wg_yaml_oom(&c->y);
        return NULL;
    }
    c->meta = m;
    memset(&m[n - 1], 0, sizeof *m);
    cfg->n_listeners = n;
    return listener_init(c, &v[n - 1]) ? &v[n - 1] : NULL;
}

static void check_mode(struct cfg_ctx *c, const struct wg_listener_config *l,
                       yaml_node_t *node, const struct cfg_seen *seen)
{
#define HAS(name) cfg_seen_has(seen, &listener_table, name)
#define AT(name) seen->key[cfg_key_index(&listener_table, name)]
    if (l->mode == WG_MODE_TCP) {
        if (!HAS("service"))
            cfg_error(c, node, "missing required key 'service' in tcp listener");
        if (HAS("routes"))
            cfg_error(c, AT("routes"), "routes: only http listeners have routes");
        if (HAS("policies"))
            cfg_error(c, AT("policies"), "policies: only http listeners have policies");
        if (HAS("http"))
            cfg_error(c, AT("http"), "http: only http listeners have http settings");
        if (*l->tls.redirect_http)
            cfg_error(c, AT("tls"), "tls: redirect_http is only for http listeners");
        return;
    }
    if (!HAS("routes") || l->n_routes == 0)
        cfg_error(c, HAS("routes") ? AT("routes") : node,
                  "missing required key 'routes' in http listener");
    if (HAS("service"))
        cfg_error(c, AT("service"), "service: http listeners use routes, not service");
    if (HAS("idle_timeout"))
        cfg_error(c, AT("idle_timeout"),
                  "idle_timeout: only for tcp listeners (see http.client_idle_timeout)");
#undef HAS
#undef AT
}

static void check_unique(struct cfg_ctx *c, size_t index)
{
    const struct wg_config *cfg = c->cfg;
    const struct wg_listener_config *l = &cfg->listeners[index];
    const struct cfg_listener_meta *m = &c->meta[index];

    for (size_t i = 0; i < index; i++) {
        const struct wg_listener_config *o = &cfg->listeners[i];
        if (m->name && *l->name && c->meta[i].name && strcmp(o->name, l->name) == 0)
            cfg_error(c, m->name, "name: duplicate listener name '%.80s' (first at line %lu)",
                      l->name, wg_yaml_line(c->meta[i].name));
        if (m->listen && c->meta[i].listen && wg_addr_same(&o->listen, &l->listen))
            cfg_error(c, m->listen, "listen: %s is already used by listener '%.80s' (line %lu)",
                      l->listen.text, o->name, wg_yaml_line(c->meta[i].listen));
    }
}

static bool mode_valid(const struct cfg_seen *seen)
{
    yaml_node_t *v = seen->value[cfg_key_index(&listener_table, "mode")];
    const char *t = v && v->type == YAML_SCALAR_NODE ? (const char *)v->data.scalar.value : "";

    return cfg_seen_has(seen, &listener_table, "mode") &&
           (strcmp(t, "tcp") == 0 || strcmp(t, "http") == 0);
}

static void parse_listener(struct cfg_ctx *c, yaml_node_t *node)
{
    struct wg_listener_config *l = listener_add(c);
    struct cfg_listener_meta *m;
    struct cfg_seen seen;
    static const char *const required[] = { "name", "listen", "mode" };

    if (!l)
        return;
    if (node->type != YAML_MAPPING_NODE) {
        cfg_error(c, node, "listeners: expected a mapping");
        return;
    }
    cfg_map(c, node, &listener_table, l, &seen, "listener", NULL);
    for (size_t i = 0; i < 3; i++)
        if (!cfg_seen_has(&seen, &listener_table, required[i]))
            cfg_error(c, node, "missing required key '%s' in listener", required[i]);
    m = &c->meta[c->cfg->n_listeners - 1];
    /* Positions only for values that parsed, for the cross-checks. */
    if (*l->name)
        m->name = seen.value[cfg_key_index(&listener_table, "name")];
    if (l->listen.len)
        m->listen = seen.value[cfg_key_index(&listener_table, "listen")];
    if (l->service)
        m->service = seen.value[cfg_key_index(&listener_table, "service")];
    if (mode_valid(&seen))
        check_mode(c, l, node, &seen);
    check_unique(c, c->cfg->n_listeners - 1);
}

void cfg_p_listeners(struct cfg_ctx *c, yaml_node_t *v, CFG_UNUSED void *base,
                     const struct cfg_key *k)
{
    if (wg_yaml_is_null(v))
        return;
    if (v->type != YAML_SEQUENCE_NODE) {
        cfg_error(c, v, "%s: expected a list", k->name);
        return;
    }
    for (size_t i = 0; i < wg_yaml_seq_len(v) && !c->y.aborted; i++) {
        yaml_node_t *item = wg_yaml_seq_item(&c->y, v, i);
        if (item)
            parse_listener(c, item);
    }
}
