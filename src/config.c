/* config — YAML -> struct wg_config (DESIGN §5): defaults, top-level keys,
 * registry, services merged over service_defaults, cross-checks. Listeners
 * and routes live in config_listener.c, the walker in config_keys.c. */
#include "config_parse.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include "config_value.h"
#include "waygate/grpc.h"

#define CF(f) offsetof(struct wg_config, f)
#define SF(f) offsetof(struct wg_service_config, f)
#define DMAX WG_DURATION_MAX_MS

static const char *const level_names[] = { "debug", "info", "warn", "error", NULL };
static const char *const format_names[] = { "text", "json", NULL };
static const char *const balance_names[] = { "round_robin", "least_conn", "random", "p2c",
                                             "hash", NULL };
static const char *const health_names[] = { "http", "tcp", "none", "grpc", NULL };
static const char *const protocol_names[] = { "http1", "h2c", "h2", "auto", NULL };
static const char *const unhealthy_names[] = { "keep", "close", NULL };
static const char *const zk_layout_names[] = { "auto", "curator", "dubbo", "plain", NULL };
static const char *const locality_names[] = { "off", "prefer", "strict", NULL };

/* ---- services ---------------------------------------------------------- */

static void p_hash_key(struct cfg_ctx *c, yaml_node_t *v, void *base, const struct cfg_key *k)
{
    struct wg_service_config *s = base;
    const char *t = cfg_text(c, v, k->name);
    enum wg_hash_key kind = WG_HASH_HEADER;
    const char *name = NULL;

    if (!t)
        return;
    if (strcmp(t, "client_ip") == 0) {
        free(s->hash_name);
        s->hash_name = NULL;
        s->hash_key = WG_HASH_CLIENT_IP;
        return;
    }
    if (strncmp(t, "header:", 7) == 0)
        name = t + 7;
    else if (strncmp(t, "cookie:", 7) == 0)
        name = t + 7, kind = WG_HASH_COOKIE;
    if (!name || !wg_is_token(name)) {
        cfg_error(c, v, "%s: expected client_ip, header:NAME or cookie:NAME, got '%.80s'",
                  k->name, t);
        return;
    }
    if (cfg_set_str(c, &s->hash_name, name))
        s->hash_key = kind;
}

static void p_hc_type(struct cfg_ctx *c, yaml_node_t *v, void *base, const struct cfg_key *k)
{
    struct wg_service_config *s = base;
    int i = cfg_enum(c, v, k->name, health_names);

    if (i < 0)
        return;
    s->health_check.type = (enum wg_health_type)i;
    s->health_check.type_set = true;
}

static void p_hc_path(struct cfg_ctx *c, yaml_node_t *v, void *base, const struct cfg_key *k)
{
    const char *t = cfg_text(c, v, k->name);

    if (t && t[0] != '/')
        cfg_error(c, v, "%s: must start with '/', got '%.80s'", k->name, t);
    else if (t)
        cfg_set_str(c, &((struct wg_service_config *)base)->health_check.path, t);
}

static void p_on_unhealthy(struct cfg_ctx *c, yaml_node_t *v, void *base,
                           const struct cfg_key *k)
{
    int i = cfg_enum(c, v, k->name, unhealthy_names);

    if (i >= 0)
        ((struct wg_service_config *)base)->on_unhealthy_close = i == 1;
}

static void methods_free(struct wg_service_config *s)
{
    for (size_t i = 0; i < s->grpc.n_retry_methods; i++)
        free(s->grpc.retry_methods[i]);
    free(s->grpc.retry_methods);
    s->grpc.retry_methods = NULL;
    s->grpc.n_retry_methods = 0;
}

/* grpc.retry_methods: a list (replaces the defaults' list, §5) of
 * "/pkg.Service/Method" or "/pkg.Service/" + "*". */
static void p_retry_methods(struct cfg_ctx *c, yaml_node_t *v, void *base,
                            const struct cfg_key *k)
{
    struct wg_service_config *s = base;
    size_t n = v->type == YAML_SEQUENCE_NODE ? wg_yaml_seq_len(v) : 0;

    if (v->type != YAML_SEQUENCE_NODE) {
        cfg_error(c, v, "%s: expected a list", k->name);
        return;
    }
    methods_free(s);
    if (n && !(s->grpc.retry_methods = calloc(n, sizeof *s->grpc.retry_methods))) {
        wg_yaml_oom(&c->y);
        return;
    }
    for (size_t i = 0; i < n && !c->y.aborted; i++) {
        yaml_node_t *item = wg_yaml_seq_item(&c->y, v, i);
        const char *t = item ? cfg_text(c, item, k->name) : NULL;
        if (t && !wg_grpc_method_entry_ok(t))
            cfg_error(c, item, "%s: expected \"/package.Service/Method\" or "
                      "\"/package.Service/*\", got '%.80s'", k->name, t);
        else if (t && !(s->grpc.retry_methods[s->grpc.n_retry_methods++] = strdup(t)))
            wg_yaml_oom(&c->y);
    }
}

static const struct cfg_key grpc_keys[] = {
    { "max_timeout", cfg_p_duration, SF(grpc.max_timeout_ms), 0, DMAX, NULL },
    { "retry_methods", p_retry_methods, 0, 0, 0, NULL },
};
static const struct cfg_table grpc_table = CFG_TABLE("grpc", grpc_keys);

static const struct cfg_key upstream_keys[] = {
    { "max_idle", cfg_p_unsigned, SF(upstream.max_idle), 0, 65536, NULL },
    { "idle_timeout", cfg_p_duration, SF(upstream.idle_timeout_ms), 1, DMAX, NULL },
    { "protocol", cfg_p_enum, SF(upstream.protocol), 0, 0, protocol_names },
    { "ping_interval", cfg_p_duration, SF(upstream.ping_interval_ms), 0, DMAX, NULL },
    { "ping_timeout", cfg_p_duration, SF(upstream.ping_timeout_ms), 1, DMAX, NULL },
};
static const struct cfg_table upstream_table = CFG_TABLE("upstream", upstream_keys);

static const struct cfg_key health_keys[] = {
    { "type", p_hc_type, 0, 0, 0, NULL },
    { "path", p_hc_path, 0, 0, 0, NULL },
    { "service", cfg_p_str, SF(health_check.service), 0, 0, NULL },
    { "host", cfg_p_str, SF(health_check.host), 0, 0, NULL },
    { "port", cfg_p_u16, SF(health_check.port), 0, 65535, NULL },
    { "interval", cfg_p_duration, SF(health_check.interval_ms), 1, DMAX, NULL },
    { "timeout", cfg_p_duration, SF(health_check.timeout_ms), 1, DMAX, NULL },
    { "healthy_threshold", cfg_p_unsigned, SF(health_check.healthy_threshold), 1, 1000, NULL },
    { "unhealthy_threshold", cfg_p_unsigned, SF(health_check.unhealthy_threshold), 1, 1000,
      NULL },
    { "expected_status", cfg_p_status, SF(health_check.expected_status), 0, 0, NULL },
    { "shared", cfg_p_bool, SF(health_check.shared), 0, 0, NULL },
};
static const struct cfg_table health_table = CFG_TABLE("health_check", health_keys);

static const struct cfg_key outlier_keys[] = {
    { "consecutive_failures", cfg_p_unsigned, SF(outlier.consecutive_failures), 1, 100000,
      NULL },
    { "base_ejection_time", cfg_p_duration, SF(outlier.base_ejection_time_ms), 1, DMAX, NULL },
    { "max_ejection_time", cfg_p_duration, SF(outlier.max_ejection_time_ms), 1, DMAX, NULL },
    { "max_ejection_percent", cfg_p_unsigned, SF(outlier.max_ejection_percent), 0, 100, NULL },
};
static const struct cfg_table outlier_table = CFG_TABLE("outlier_detection", outlier_keys);

/* overprovisioning: a factor 1.0..10 with at most two decimals, kept in percent. */
static void p_overprovisioning(struct cfg_ctx *c, yaml_node_t *v, void *base,
                               const struct cfg_key *k)
{
    const char *t = v->type == YAML_SCALAR_NODE ? (const char *)v->data.scalar.value : NULL;
    unsigned whole = 0, frac = 0, digits = 0;
    const char *s = t;

    while (s && *s >= '0' && *s <= '9' && whole < 1000)
        whole = whole * 10 + (unsigned)(*s++ - '0');
    if (s && s != t && *s == '.')
        for (s++; *s >= '0' && *s <= '9' && digits < 3; digits++)
            frac = frac * 10 + (unsigned)(*s++ - '0');
    if (digits == 1)
        frac *= 10;
    if (!s || s == t || *s || digits > 2 || whole * 100 + frac < 100 || whole * 100 + frac > 1000) {
        cfg_error(c, v, "%s: expected a factor from 1.0 to 10 (at most two decimals), got '%.80s'",
                  k->name, t ? t : "");
        return;
    }
    ((struct wg_service_config *)base)->locality.overprovisioning = whole * 100 + frac;
}

static const struct cfg_key locality_keys[] = {
    { "mode", cfg_p_enum, SF(locality.mode), 0, 0, locality_names },
    { "overprovisioning", p_overprovisioning, 0, 0, 0, NULL },
    { "min_instances", cfg_p_unsigned, SF(locality.min_instances), 0, 100000, NULL },
};
static const struct cfg_table locality_table = CFG_TABLE("locality", locality_keys);

static const struct cfg_key service_tls_keys[] = {
    { "enabled", cfg_p_bool, SF(tls.enabled), 0, 0, NULL },
    { "ca", cfg_p_file, SF(tls.ca), 0, 0, NULL },
    { "cert", cfg_p_file, SF(tls.cert), 0, 0, NULL },
    { "key", cfg_p_file, SF(tls.key), 0, 0, NULL },
    { "verify", cfg_p_bool, SF(tls.verify), 0, 0, NULL },
    { "sni", cfg_p_str, SF(tls.sni), 0, 0, NULL },
};
static const struct cfg_table service_tls_table = CFG_TABLE("tls", service_tls_keys);

static const struct cfg_key service_keys[] = {
    { "balance", cfg_p_enum, SF(balance), 0, 0, balance_names },
    { "hash_key", p_hash_key, 0, 0, 0, NULL },
    { "slow_start", cfg_p_duration, SF(slow_start_ms), 0, DMAX, NULL },
    { "connect_timeout", cfg_p_duration, SF(connect_timeout_ms), 1, DMAX, NULL },
    { "response_timeout", cfg_p_duration, SF(response_timeout_ms), 1, DMAX, NULL },
    { "retries", cfg_p_unsigned, SF(retries), 0, 10, NULL },
    { "retry_non_idempotent", cfg_p_bool, SF(retry_non_idempotent), 0, 0, NULL },
    { "panic_threshold", cfg_p_unsigned, SF(panic_threshold), 0, 100, NULL },
    { "max_connections", cfg_p_unsigned, SF(max_connections), 0, 1000000, NULL },
    { "drain_timeout", cfg_p_duration, SF(drain_timeout_ms), 0, DMAX, NULL },
    { "on_unhealthy", p_on_unhealthy, 0, 0, 0, NULL },
    { "upstream", cfg_p_map, 0, 0, 0, &upstream_table },
    { "grpc", cfg_p_map, 0, 0, 0, &grpc_table },
    { "health_check", cfg_p_map, 0, 0, 0, &health_table },
    { "outlier_detection", cfg_p_map, 0, 0, 0, &outlier_table },
    { "locality", cfg_p_map, 0, 0, 0, &locality_table },
    { "tls", cfg_p_map, 0, 0, 0, &service_tls_table },
    { "proxy_protocol", cfg_p_bool, SF(proxy_protocol), 0, 0, NULL },
    { "policies", cfg_p_policies, SF(policies), 0, 0, NULL },
};
static const struct cfg_table service_table = CFG_TABLE("service", service_keys);

static bool service_defaults_init(struct cfg_ctx *c, struct wg_service_config *s)
{
    memset(s, 0, sizeof *s);
    s->balance = WG_BALANCE_ROUND_ROBIN;
    s->hash_key = WG_HASH_CLIENT_IP;
    s->connect_timeout_ms = 1000;
    s->response_timeout_ms = 30000;
    s->retries = 2;
    s->upstream.max_idle = 64;
    s->upstream.idle_timeout_ms = 60000;
    s->upstream.ping_interval_ms = 10000;
    s->upstream.ping_timeout_ms = 5000;
    s->health_check.type = WG_HEALTH_HTTP;
    s->health_check.interval_ms = 1000;
    s->health_check.timeout_ms = 500;
    s->health_check.healthy_threshold = 2;
    s->health_check.unhealthy_threshold = 2;
    s->health_check.expected_status.n = 1;
    s->health_check.expected_status.r[0].lo = 200;
    s->health_check.expected_status.r[0].hi = 399;
    s->outlier.consecutive_failures = 5;
    s->outlier.base_ejection_time_ms = 30000;
    s->outlier.max_ejection_time_ms = 300000;
    s->outlier.max_ejection_percent = 50;
    s->locality.mode = WG_LOCALITY_OFF;
    s->locality.overprovisioning = 140;
    s->locality.min_instances = 3;
    s->tls.verify = true;
    return cfg_set_str(c, &s->health_check.path, "/health") &&
           cfg_set_str(c, &s->health_check.host, "") &&
           cfg_set_str(c, &s->health_check.service, "") && cfg_set_str(c, &s->tls.ca, "") &&
           cfg_set_str(c, &s->tls.cert, "") && cfg_set_str(c, &s->tls.key, "") &&
           cfg_set_str(c, &s->tls.sni, "");
}

static void service_free(struct wg_service_config *s)
{
    free(s->name);
    free(s->hash_name);
    free(s->health_check.path);
    free(s->health_check.host);
    free(s->health_check.service);
    methods_free(s);
    free(s->tls.ca);
    free(s->tls.cert);
    free(s->tls.key);
    free(s->tls.sni);
    wg_policy_list_free(&s->policies);
}

static bool dup_str(struct cfg_ctx *c, char **dst, const char *src)
{
    if (src && !(*dst = strdup(src))) {
        wg_yaml_oom(&c->y);
        return false;
    }
    return true;
}

/* A deep copy of src named `name`. On failure dst owns only what was
 * copied (the rest is NULL), so service_free() stays safe. */
static bool service_copy(struct cfg_ctx *c, struct wg_service_config *dst,
                         const struct wg_service_config *src, const char *name)
{
    *dst = *src;
    dst->name = dst->hash_name = dst->health_check.path = dst->health_check.host = NULL;
    dst->tls.ca = dst->tls.cert = dst->tls.key = dst->tls.sni = NULL;
    dst->policies = (struct wg_policy_list){ NULL, 0 };   /* owned by src until copied */
    dst->health_check.service = NULL;
    dst->grpc.retry_methods = NULL;
    dst->grpc.n_retry_methods = 0;
    if (src->grpc.n_retry_methods) {
        if (!(dst->grpc.retry_methods = calloc(src->grpc.n_retry_methods, sizeof(char *)))) {
            wg_yaml_oom(&c->y);
            return false;
        }
        for (size_t i = 0; i < src->grpc.n_retry_methods; i++, dst->grpc.n_retry_methods++)
            if (!dup_str(c, &dst->grpc.retry_methods[i], src->grpc.retry_methods[i]))
                return false;
    }
    if (!wg_policy_list_copy(&dst->policies, &src->policies)) {
        wg_yaml_oom(&c->y);
        return false;
    }
    return dup_str(c, &dst->name, name) && dup_str(c, &dst->hash_name, src->hash_name) &&
           dup_str(c, &dst->health_check.service, src->health_check.service) &&
           dup_str(c, &dst->health_check.path, src->health_check.path) &&
           dup_str(c, &dst->health_check.host, src->health_check.host) &&
           dup_str(c, &dst->tls.ca, src->tls.ca) && dup_str(c, &dst->tls.cert, src->tls.cert) &&
           dup_str(c, &dst->tls.key, src->tls.key) && dup_str(c, &dst->tls.sni, src->tls.sni);
}

static struct wg_service_config *service_add(struct cfg_ctx *c, const char *name)
{
    struct wg_config *cfg = c->cfg;
    struct wg_service_config *v, *s;

    v = realloc(cfg->services, (cfg->n_services + 1) * sizeof *v);
    if (!v) {
        wg_yaml_oom(&c->y);
        return NULL;
    }
    cfg->services = v;
    s = &v[cfg->n_services];
    if (!service_copy(c, s, &cfg->service_defaults, name)) {
        service_free(s);
        return NULL;
    }
    cfg->n_services++;
    return s;
}

static struct wg_service_config *service_find(struct wg_config *cfg, const char *name)
{
    for (size_t i = 0; i < cfg->n_services; i++)
        if (strcmp(cfg->services[i].name, name) == 0)
            return &cfg->services[i];
    return NULL;
}

static void service_check(struct cfg_ctx *c, const struct wg_service_config *s,
                          yaml_node_t *node)
{
    if (!node)
        return;
    if (!*s->tls.cert != !*s->tls.key)
        cfg_error(c, node, "tls: cert and key must be set together");
    if (s->outlier.base_ejection_time_ms > s->outlier.max_ejection_time_ms)
        cfg_error(c, node, "outlier_detection: base_ejection_time exceeds max_ejection_time");
    if (s->locality.mode != WG_LOCALITY_OFF && !*c->cfg->zone)
        cfg_error(c, node, "locality: mode %s needs this replica's zone (top-level zone: or "
                  "WAYGATE_ZONE)", locality_names[s->locality.mode]);
    if (s->health_check.shared && !c->cfg->fleet.enabled)
        cfg_error(c, node, "health_check: shared: true needs fleet: (and the etcd registry)");
    if (s->health_check.service && strlen(s->health_check.service) > 255)
        cfg_error(c, node, "health_check: service is longer than 255 bytes");
    if (s->upstream.protocol == WG_UPSTREAM_H2 && !s->tls.enabled)
        cfg_error(c, node, "upstream: protocol h2 is HTTP/2 over TLS and needs tls.enabled: "
                  "true (HTTP/2 without TLS is h2c)");
}

static void parse_service(struct cfg_ctx *c, const struct wg_yaml_pair *p)
{
    char what[320];
    struct wg_service_config *s;

    if (!wg_service_name_ok(p->name)) {
        cfg_error(c, p->key, "invalid service name '%.80s' (non-empty, no '/' or spaces)",
                  p->name);
        return;
    }
    s = service_add(c, p->name);
    if (!s)
        return;
    snprintf(what, sizeof what, "service '%.255s'", p->name);
    cfg_map(c, p->value, &service_table, s, NULL, p->name, what);
    service_check(c, s, p->value);
}

/* service_defaults first, whatever the order in the file: services merge
 * over it key by key (nested mappings included). */
static void parse_services(struct cfg_ctx *c)
{
    struct wg_config *cfg = c->cfg;
    yaml_node_t *node = c->services_node;
    struct wg_yaml_pairs pairs;

    cfg_map(c, c->defaults_node, &service_table, &cfg->service_defaults, NULL,
            "service_defaults", "service_defaults");
    service_check(c, &cfg->service_defaults, c->defaults_node);
    if (!node || wg_yaml_is_null(node) || c->y.aborted)
        return;
    if (node->type != YAML_MAPPING_NODE) {
        cfg_error(c, node, "services: expected a mapping");
        return;
    }
    wg_yaml_pairs(&c->y, node, &pairs);
    for (size_t i = 0; i < pairs.n && !c->y.aborted; i++)
        parse_service(c, &pairs.v[i]);
    wg_yaml_pairs_free(&pairs);
}

/* ---- top level, log, admin, registry ------------------------------------ */

static void p_access_log(struct cfg_ctx *c, yaml_node_t *v, void *base,
                         const struct cfg_key *k)
{
    const char *t = cfg_text(c, v, k->name);

    if (t && !*t)
        cfg_error(c, v, "%s: expected a path, stdout or off", k->name);
    else if (t)
        cfg_set_str(c, &((struct wg_config *)base)->log.access_log, t);
}

static const struct cfg_key log_keys[] = {
    { "level", cfg_p_enum, CF(log.level), 0, 0, level_names },
    { "access_log", p_access_log, 0, 0, 0, NULL },
    { "access_format", cfg_p_enum, CF(log.access_format), 0, 0, format_names },
};
static const struct cfg_table log_table = CFG_TABLE("log", log_keys);

static const struct cfg_key admin_keys[] = {
    { "listen", cfg_p_addr, CF(admin.listen), 0, 0, NULL },
    { "allow_remote", cfg_p_bool, CF(admin.allow_remote), 0, 0, NULL },
};
static const struct cfg_table admin_table = CFG_TABLE("admin", admin_keys);

static void p_admin(struct cfg_ctx *c, yaml_node_t *v, void *base, const struct cfg_key *k)
{
    struct wg_config *cfg = base;
    struct cfg_seen seen;
    unsigned listen = cfg_key_index(&admin_table, "listen");

    cfg_map(c, v, &admin_table, cfg, &seen, k->name, NULL);
    if ((seen.mask & (1u << listen)) && !cfg->admin.allow_remote &&
        !wg_addr_is_loopback(&cfg->admin.listen))
        cfg_error(c, seen.value[listen],
                  "listen: %s is not a loopback address; set admin.allow_remote: true "
                  "to expose the admin API", cfg->admin.listen.text);
}

/* "http://HOST:PORT" or "https://HOST:PORT", HOST a name, IPv4 or [IPv6]. */
static bool endpoint_ok(const char *s)
{
    const char *host, *end;
    uint64_t port;

    if (strncmp(s, "http://", 7) == 0)
        host = s + 7;
    else if (strncmp(s, "https://", 8) == 0)
        host = s + 8;
    else
        return false;
    if (*host == '[') {
        end = strchr(host, ']');
        if (!end || end == host + 1)
            return false;
        end++;
    } else {
        end = host + strspn(host, "abcdefghijklmnopqrstuvwxyz"
                                  "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_");
        if (end == host)
            return false;
    }
    if (*end != ':')
        return false;
    char digits[8];
    size_t n = strcspn(end + 1, "/");
    if (n == 0 || n >= sizeof digits || (end[1 + n] && strcmp(end + 1 + n, "/") != 0))
        return false;
    memcpy(digits, end + 1, n);
    digits[n] = '\0';
    return !wg_uint_reason(digits, 65535, &port) && port > 0;
}

static bool prefix_ok(const char *s)
{
    return *s != '\0';
}

static void str_list_free(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

/* Build a new list from a sequence (or, if scalar_ok, one scalar); replace
 * *out only when every item is valid. */
static void str_list(struct cfg_ctx *c, yaml_node_t *v, const char *key, bool scalar_ok,
                     bool (*ok)(const char *), const char *why, char ***out, size_t *n_out)
{
    size_t n = v->type == YAML_SEQUENCE_NODE ? wg_yaml_seq_len(v) : 1, got = 0;
    unsigned long before = c->y.n_errors;
    char **list;

    if (v->type != YAML_SEQUENCE_NODE && !(scalar_ok && v->type == YAML_SCALAR_NODE)) {
        cfg_error(c, v, "%s: expected a list", key);
        return;
    }
    if (n == 0) {
        cfg_error(c, v, "%s: expected at least one value", key);
        return;
    }
    if (!(list = calloc(n, sizeof *list))) {
        wg_yaml_oom(&c->y);
        return;
    }
    for (size_t i = 0; i < n && !c->y.aborted; i++) {
        yaml_node_t *item = v->type == YAML_SEQUENCE_NODE ? wg_yaml_seq_item(&c->y, v, i) : v;
        const char *t = item ? cfg_text(c, item, key) : NULL;
        if (t && !ok(t))
            cfg_error(c, item, "%s: %s, got '%.80s'", key, why, t);
        else if (t && !(list[got++] = strdup(t)))
            wg_yaml_oom(&c->y);
    }
    if (c->y.n_errors != before || c->y.aborted) {
        str_list_free(list, got);
        return;
    }
    str_list_free(*out, *n_out);
    *out = list;
    *n_out = got;
}

static void p_endpoints(struct cfg_ctx *c, yaml_node_t *v, void *base, const struct cfg_key *k)
{
    struct wg_config *cfg = base;

    str_list(c, v, k->name, false, endpoint_ok,
             "invalid etcd endpoint (expected http://HOST:PORT or https://HOST:PORT)",
             &cfg->registry.etcd.endpoints, &cfg->registry.etcd.n_endpoints);
}

static void p_prefix(struct cfg_ctx *c, yaml_node_t *v, void *base, const struct cfg_key *k)
{
    struct wg_config *cfg = base;

    str_list(c, v, k->name, true, prefix_ok, "a prefix must not be empty",
             &cfg->registry.etcd.prefixes, &cfg->registry.etcd.n_prefixes);
}

static const struct cfg_key backoff_keys[] = {
    { "initial", cfg_p_duration, CF(registry.etcd.backoff_initial_ms), 1, DMAX, NULL },
    { "max", cfg_p_duration, CF(registry.etcd.backoff_max_ms), 1, DMAX, NULL },
};
static const struct cfg_table backoff_table = CFG_TABLE("backoff", backoff_keys);

static const struct cfg_key etcd_tls_keys[] = {
    { "ca", cfg_p_file, CF(registry.etcd.tls.ca), 0, 0, NULL },
    { "cert", cfg_p_file, CF(registry.etcd.tls.cert), 0, 0, NULL },
    { "key", cfg_p_file, CF(registry.etcd.tls.key), 0, 0, NULL },
    { "server_name", cfg_p_str, CF(registry.etcd.tls.server_name), 0, 0, NULL },
};
static const struct cfg_table etcd_tls_table = CFG_TABLE("tls", etcd_tls_keys);

static const struct cfg_key etcd_keys[] = {
    { "endpoints", p_endpoints, 0, 0, 0, NULL },
    { "prefix", p_prefix, 0, 0, 0, NULL },
    { "username", cfg_p_str, CF(registry.etcd.username), 0, 0, NULL },
    { "password", cfg_p_str, CF(registry.etcd.password), 0, 0, NULL },
    { "tls", cfg_p_map, 0, 0, 0, &etcd_tls_table },
    { "watch_timeout", cfg_p_duration, CF(registry.etcd.watch_timeout_ms), 1, DMAX, NULL },
    { "backoff", cfg_p_map, 0, 0, 0, &backoff_table },
};
static const struct cfg_table etcd_table = CFG_TABLE("registry.etcd", etcd_keys);

static void p_etcd(struct cfg_ctx *c, yaml_node_t *v, void *base, const struct cfg_key *k)
{
    struct wg_config *cfg = base;
    struct cfg_seen seen;

    cfg->registry.kind = WG_REGISTRY_ETCD;
    cfg_map(c, v, &etcd_table, cfg, &seen, k->name, NULL);
    if (cfg_seen_has(&seen, &etcd_table, "backoff") &&
        cfg->registry.etcd.backoff_initial_ms > cfg->registry.etcd.backoff_max_ms)
        cfg_error(c, seen.value[cfg_key_index(&etcd_table, "backoff")],
                  "backoff: initial exceeds max");
    if (!*cfg->registry.etcd.tls.cert != !*cfg->registry.etcd.tls.key)
        cfg_error(c, seen.value[cfg_key_index(&etcd_table, "tls")],
                  "tls: cert and key must be set together");
    if (*cfg->registry.etcd.password && !*cfg->registry.etcd.username)
        cfg_error(c, seen.value[cfg_key_index(&etcd_table, "password")],
                  "password: needs a username");
}

static void p_registry_file(struct cfg_ctx *c, yaml_node_t *v, void *base,
                            const struct cfg_key *k)
{
    struct wg_config *cfg = base;
    const char *t = cfg_text(c, v, k->name);

    if (!t)
        return;
    if (!*t) {
        cfg_error(c, v, "%s: expected a path", k->name);
        return;
    }
    cfg->registry.kind = WG_REGISTRY_FILE;
    if (cfg_set_str(c, &cfg->registry.file, t))
        cfg_check_file(c, v, t);
}

/* ---- registry.zookeeper ---- */

/* "HOST:PORT" or "[V6]:PORT", HOST a name or an IP literal. */
static bool zk_server_ok(const char *s)
{
    char buf[300];
    int n = snprintf(buf, sizeof buf, "http://%s", s);

    return n > 0 && (size_t)n < sizeof buf && strchr(s, '/') == NULL && endpoint_ok(buf);
}

static void p_zk_servers(struct cfg_ctx *c, yaml_node_t *v, void *base, const struct cfg_key *k)
{
    struct wg_config *cfg = base;

    str_list(c, v, k->name, true, zk_server_ok, "invalid ZooKeeper server (expected HOST:PORT)",
             &cfg->registry.zookeeper.servers, &cfg->registry.zookeeper.n_servers);
}

/* A ZooKeeper path: "/" followed by non-empty segments, no trailing "/";
 * "/" alone is "" (the top). */
static bool zk_path_ok(const char *s, bool empty_ok)
{
    size_t n = strlen(s);

    if (n == 0)
        return empty_ok;
    if (s[0] != '/' || strstr(s, "//") || (n > 1 && s[n - 1] == '/'))
        return false;
    for (const char *p = s; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            return false;
    return !strstr(s, "/./") && !strstr(s, "/../") && strcmp(s + n - (n >= 2 ? 2 : n), "/.") &&
           (n < 3 || strcmp(s + n - 3, "/.."));
}

static void p_zk_path(struct cfg_ctx *c, yaml_node_t *v, char **dst, const char *key, bool empty_ok)
{
    const char *t = cfg_text(c, v, key);

    if (!t)
        return;
    if (strcmp(t, "/") == 0 && !empty_ok)
        t = "";                         /* root: / is the top */
    else if (!zk_path_ok(t, empty_ok))
        return (void)cfg_error(c, v, "%s: expected an absolute ZooKeeper path (/a/b, no trailing "
                                     "'/'), got '%.80s'", key, t);
    cfg_set_str(c, dst, t);
}

static void p_zk_root(struct cfg_ctx *c, yaml_node_t *v, void *base, const struct cfg_key *k)
{
    p_zk_path(c, v, &((struct wg_config *)base)->registry.zookeeper.root, k->name, false);
}

static void p_zk_chroot(struct cfg_ctx *c, yaml_node_t *v, void *base, const struct cfg_key *k)
{
    p_zk_path(c, v, &((struct wg_config *)base)->registry.zookeeper.chroot, k->name, true);
}

/* dubbo_services: { INTERFACE: SERVICE, ... } */
static void p_zk_dubbo(struct cfg_ctx *c, yaml_node_t *v, void *base, const struct cfg_key *k)
{
    typeof(((struct wg_config *)0)->registry.zookeeper) *z =
        &((struct wg_config *)base)->registry.zookeeper;
    struct wg_yaml_pairs pairs;

    if (v->type != YAML_MAPPING_NODE) {
        cfg_error(c, v, "%s: expected a mapping of Dubbo interfaces to service names", k->name);
        return;
    }
    wg_yaml_pairs(&c->y, v, &pairs);
    str_list_free(z->dubbo_interfaces, z->n_dubbo);
    str_list_free(z->dubbo_services, z->n_dubbo);
    z->n_dubbo = 0;
    z->dubbo_interfaces = calloc(pairs.n + 1, sizeof *z->dubbo_interfaces);
    z->dubbo_services = calloc(pairs.n + 1, sizeof *z->dubbo_services);
    if (!z->dubbo_interfaces || !z->dubbo_services)
        wg_yaml_oom(&c->y);
    for (size_t i = 0; z->dubbo_services && z->dubbo_interfaces && i < pairs.n; i++) {
        const char *t = cfg_text(c, pairs.v[i].value, pairs.v[i].name);
        if (!t)
            continue;
        if (!wg_service_name_ok(t)) {
            cfg_error(c, pairs.v[i].value, "%s: '%.80s' is not a service name", pairs.v[i].name, t);
            continue;
        }
        z->dubbo_interfaces[z->n_dubbo] = strdup(pairs.v[i].name);
        z->dubbo_services[z->n_dubbo] = strdup(t);
        if (!z->dubbo_interfaces[z->n_dubbo] || !z->dubbo_services[z->n_dubbo]) {
            free(z->dubbo_interfaces[z->n_dubbo]);
            free(z->dubbo_services[z->n_dubbo]);
            wg_yaml_oom(&c->y);
            break;
        }
        z->n_dubbo++;
    }
    wg_yaml_pairs_free(&pairs);
}

static const struct cfg_key zk_auth_keys[] = {
    { "scheme", cfg_p_str, CF(registry.zookeeper.auth.scheme), 0, 0, NULL },
    { "credentials", cfg_p_str, CF(registry.zookeeper.auth.credentials), 0, 0, NULL },
};
static const struct cfg_table zk_auth_table = CFG_TABLE("auth", zk_auth_keys);

static const struct cfg_key zk_keys[] = {
    { "servers", p_zk_servers, 0, 0, 0, NULL },
    { "root", p_zk_root, 0, 0, 0, NULL },
    { "layout", cfg_p_enum, CF(registry.zookeeper.layout), 0, 0, zk_layout_names },
    { "session_timeout", cfg_p_duration, CF(registry.zookeeper.session_timeout_ms), 100,
      3600000, NULL },
    { "auth", cfg_p_map, 0, 0, 0, &zk_auth_table },
    { "chroot", p_zk_chroot, 0, 0, 0, NULL },
    { "dubbo_services", p_zk_dubbo, 0, 0, 0, NULL },
};
static const struct cfg_table zk_table = CFG_TABLE("registry.zookeeper", zk_keys);

static void p_zookeeper(struct cfg_ctx *c, yaml_node_t *v, void *base, const struct cfg_key *k)
{
    struct wg_config *cfg = base;
    typeof(cfg->registry.zookeeper) *z = &cfg->registry.zookeeper;
    struct cfg_seen seen;

    cfg->registry.kind = WG_REGISTRY_ZOOKEEPER;
    cfg_map(c, v, &zk_table, cfg, &seen, k->name, NULL);
    if (!cfg_seen_has(&seen, &zk_table, "auth"))
        return;
    yaml_node_t *auth = seen.value[cfg_key_index(&zk_table, "auth")];
    if (*z->auth.scheme && strcmp(z->auth.scheme, "digest") != 0)
        cfg_error(c, auth, "auth: scheme '%.40s' is not supported (digest is)", z->auth.scheme);
    else if (*z->auth.scheme && !strchr(z->auth.credentials, ':'))
        cfg_error(c, auth, "auth: digest credentials are \"USER:PASSWORD\"");
    else if (!*z->auth.scheme && *z->auth.credentials)
        cfg_error(c, auth, "auth: credentials need a scheme (digest)");
}

static const struct cfg_key registry_keys[] = {
    { "etcd", p_etcd, 0, 0, 0, NULL },
    { "file", p_registry_file, 0, 0, 0, NULL },
    { "zookeeper", p_zookeeper, 0, 0, 0, NULL },
    { "cache", cfg_p_str, CF(registry.cache), 0, 0, NULL },
};
static const struct cfg_table registry_table = CFG_TABLE("registry", registry_keys);

static void p_registry(struct cfg_ctx *c, yaml_node_t *v, void *base, const struct cfg_key *k)
{
    struct cfg_seen seen;
    static const char *const sources[] = { "etcd", "file", "zookeeper" };
    int first = -1;

    cfg_map(c, v, &registry_table, base, &seen, k->name, NULL);
    /* one source: a second one is an error at whichever comes later in the file */
    for (int i = 0; i < 3; i++) {
        unsigned ix = cfg_key_index(&registry_table, sources[i]);
        if (!(seen.mask & (1u << ix)))
            continue;
        if (first < 0) {
            first = i;
            continue;
        }
        yaml_node_t *a = seen.key[cfg_key_index(&registry_table, sources[first])], *b = seen.key[ix];
        cfg_error(c, a->start_mark.index > b->start_mark.index ? a : b,
                  "registry: %s and %s are mutually exclusive", sources[first], sources[i]);
    }
}

static void p_workers(struct cfg_ctx *c, yaml_node_t *v, void *base, const struct cfg_key *k)
{
    struct wg_config *cfg = base;
    const char *t = v->type == YAML_SCALAR_NODE ? (const char *)v->data.scalar.value : NULL;
    uint64_t n;

    if (t && strcmp(t, "auto") == 0)
        cfg->workers = 0;
    else if (t && *t && strspn(t, "0123456789") == strlen(t)) {
        if (cfg_uint(c, v, k->name, k->min, k->max, &n))
            cfg->workers = (unsigned)n;
    } else if (t)
        cfg_error(c, v, "%s: expected auto or an integer, got '%.80s'", k->name, t);
    else
        cfg_error(c, v, "%s: expected auto or an integer", k->name);
}

static bool zone_ok(const char *z)
{
    size_t n = strlen(z);

    return n <= WG_ZONE_MAX && strspn(z, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                         "0123456789._-") == n;
}

static void p_zone(struct cfg_ctx *c, yaml_node_t *v, void *base, const struct cfg_key *k)
{
    const char *t = cfg_text(c, v, k->name);

    if (t && !zone_ok(t))
        cfg_error(c, v, "%s: expected at most %d letters, digits, '.', '_' or '-', got '%.80s'",
                  k->name, WG_ZONE_MAX, t);
    else if (t)
        cfg_set_str(c, &((struct wg_config *)base)->zone, t);
}

static void p_fleet_name(struct cfg_ctx *c, yaml_node_t *v, void *base, const struct cfg_key *k)
{
    const char *t = cfg_text(c, v, k->name);

    if (t && (!*t || !wg_service_name_ok(t) || strlen(t) > 128))
        cfg_error(c, v, "%s: expected a replica id (1..128 bytes, no '/' or spaces), got "
                  "'%.80s'", k->name, t);
    else if (t)
        cfg_set_str(c, &((struct wg_config *)base)->fleet.name, t);
}

static void p_fleet_prefix(struct cfg_ctx *c, yaml_node_t *v, void *base,
                           const struct cfg_key *k)
{
    const char *t = cfg_text(c, v, k->name);

    if (t && (!*t || t[strlen(t) - 1] != '/'))
        cfg_error(c, v, "%s: expected a key prefix ending in '/', got '%.80s'", k->name, t);
    else if (t)
        cfg_set_str(c, &((struct wg_config *)base)->fleet.prefix, t);
}

static const struct cfg_key fleet_keys[] = {
    { "name", p_fleet_name, 0, 0, 0, NULL },
    { "prefix", p_fleet_prefix, 0, 0, 0, NULL },
    { "ttl", cfg_p_duration, CF(fleet.ttl_ms), 2000, 3600000, NULL },
};
static const struct cfg_table fleet_table = CFG_TABLE("fleet", fleet_keys);

static void p_fleet(struct cfg_ctx *c, yaml_node_t *v, void *base, const struct cfg_key *k)
{
    struct wg_config *cfg = base;

    cfg->fleet.enabled = true;
    c->fleet_node = v;
    cfg_map(c, v, &fleet_table, cfg, NULL, k->name, NULL);
}

static void p_defer_defaults(struct cfg_ctx *c, yaml_node_t *v, CFG_UNUSED void *base,
                             CFG_UNUSED const struct cfg_key *k)
{
    c->defaults_node = v;
}

static void p_defer_services(struct cfg_ctx *c, yaml_node_t *v, CFG_UNUSED void *base,
                             CFG_UNUSED const struct cfg_key *k)
{
    c->services_node = v;
}

static const struct cfg_key top_keys[] = {
    { "workers", p_workers, 0, 0, 1024, NULL },
    { "user", cfg_p_str, CF(user), 0, 0, NULL },
    { "max_connections", cfg_p_u64, CF(max_connections), 1, 10000000, NULL },
    { "startup_timeout", cfg_p_duration, CF(startup_timeout_ms), 0, DMAX, NULL },
    { "shutdown_timeout", cfg_p_duration, CF(shutdown_timeout_ms), 0, DMAX, NULL },
    { "trusted_proxies", cfg_p_cidrs, CF(trusted_proxies), 0, 0, NULL },
    { "log", cfg_p_map, 0, 0, 0, &log_table },
    { "admin", p_admin, 0, 0, 0, NULL },
    { "registry", p_registry, 0, 0, 0, NULL },
    { "zone", p_zone, 0, 0, 0, NULL },
    { "fleet", p_fleet, 0, 0, 0, NULL },
    { "service_defaults", p_defer_defaults, 0, 0, 0, NULL },
    { "services", p_defer_services, 0, 0, 0, NULL },
    { "listeners", cfg_p_listeners, 0, 0, 0, NULL },
};
static const struct cfg_table top_table = CFG_TABLE("the top level", top_keys);

/* ---- cross-checks once everything is read -------------------------------- */

static int service_cmp(const void *a, const void *b)
{
    return strcmp(((const struct wg_service_config *)a)->name,
                  ((const struct wg_service_config *)b)->name);
}

static bool named_by_listeners(const struct wg_config *cfg, const char *name)
{
    for (size_t i = 0; i < cfg->n_listeners; i++) {
        const struct wg_listener_config *l = &cfg->listeners[i];
        if (l->service && strcmp(l->service, name) == 0)
            return true;
        for (size_t r = 0; r < l->n_routes; r++) {
            if (l->routes[r].service && strcmp(l->routes[r].service, name) == 0)
                return true;
            for (size_t b = 0; b < l->routes[r].n_backends; b++)
                if (strcmp(l->routes[r].backends[b].service, name) == 0)
                    return true;
        }
    }
    return false;
}

/* Services a policy requires (cfg_require_service) are known: declared,
 * or named by a listener or route (before those are added). */
static void check_required(struct cfg_ctx *c)
{
    struct wg_config *cfg = c->cfg;

    for (size_t i = 0; i < c->n_need; i++) {
        const char *key = c->need[i].name, *name = key + strlen(key) + 1;
        if (service_find(cfg, name) || named_by_listeners(cfg, name))
            continue;
        const char *hint = cfg->n_services ? wg_yaml_suggest(name, cfg->services, cfg->n_services,
                                                             sizeof *cfg->services) : NULL;
        if (hint)
            cfg_error(c, c->need[i].at, "%s: unknown service '%.80s' (did you mean '%s'?)", key,
                      name, hint);
        else
            cfg_error(c, c->need[i].at, "%s: unknown service '%.80s' (declare it under services:)",
                      key, name);
    }
}

/* Every service a tcp listener or a route names exists in services[]. */
static void add_referenced(struct cfg_ctx *c)
{
    struct wg_config *cfg = c->cfg;

    for (size_t i = 0; i < cfg->n_listeners && !c->y.aborted; i++) {
        struct wg_listener_config *l = &cfg->listeners[i];
        if (l->service && !service_find(cfg, l->service))
            service_add(c, l->service);
        for (size_t r = 0; r < l->n_routes && !c->y.aborted; r++) {
            if (l->routes[r].service && !service_find(cfg, l->routes[r].service))
                service_add(c, l->routes[r].service);
            for (size_t b = 0; b < l->routes[r].n_backends && !c->y.aborted; b++)
                if (!service_find(cfg, l->routes[r].backends[b].service))
                    service_add(c, l->routes[r].backends[b].service);
        }
    }
    for (size_t i = 0; i < cfg->n_policy_services && !c->y.aborted; i++) {
        if (!service_find(cfg, cfg->policy_services[i]))
            service_add(c, cfg->policy_services[i]);
    }
}

static const char *const hash_kind_names[] = { "client_ip", "header", "cookie" };

/* health_check.type defaults to tcp for services used only by tcp
 * listeners; header/cookie hashing needs HTTP. */
static void check_usage(struct cfg_ctx *c)
{
    struct wg_config *cfg = c->cfg;
    unsigned char *use = calloc(cfg->n_services + 1, 1);   /* bit 0 tcp, bit 1 http */

    if (!use) {
        wg_yaml_oom(&c->y);
        return;
    }
    for (size_t i = 0; i < cfg->n_listeners; i++) {
        struct wg_listener_config *l = &cfg->listeners[i];
        const struct wg_service_config *s = l->service ? wg_config_service(cfg, l->service) : NULL;
        if (s && s->name) {
            use[s - cfg->services] |= 1;
            if (s->hash_key != WG_HASH_CLIENT_IP && c->meta[i].service)
                cfg_error(c, c->meta[i].service,
                          "service: service '%s' uses hash_key '%s:%s', which needs an http "
                          "listener", s->name, hash_kind_names[s->hash_key], s->hash_name);
        }
        for (size_t r = 0; r < l->n_routes; r++) {
            s = l->routes[r].service ? wg_config_service(cfg, l->routes[r].service) : NULL;
            if (s && s->name)
                use[s - cfg->services] |= 2;
            for (size_t b = 0; b < l->routes[r].n_backends; b++) {
                s = wg_config_service(cfg, l->routes[r].backends[b].service);
                if (s->name)
                    use[s - cfg->services] |= 2;
            }
        }
    }
    for (size_t i = 0; i < cfg->n_services; i++)
        if (!cfg->services[i].health_check.type_set)
            cfg->services[i].health_check.type = use[i] == 1 ? WG_HEALTH_TCP : WG_HEALTH_HTTP;
    free(use);
}

static void check_admin_collision(struct cfg_ctx *c)
{
    struct wg_config *cfg = c->cfg;

    for (size_t i = 0; i < cfg->n_listeners; i++)
        if (c->meta[i].listen && wg_addr_same(&cfg->listeners[i].listen, &cfg->admin.listen))
            cfg_error(c, c->meta[i].listen, "listen: %s is already used by admin.listen",
                      cfg->listeners[i].listen.text);
}

/* Each http route's effective policy chain: listener, service, route. */
static void build_chains(struct cfg_ctx *c)
{
    struct wg_config *cfg = c->cfg;

    for (size_t i = 0; i < cfg->n_listeners; i++) {
        struct wg_listener_config *l = &cfg->listeners[i];
        for (size_t j = 0; l->mode == WG_MODE_HTTP && j < l->n_routes; j++) {
            struct wg_route *r = &l->routes[j];
            const struct wg_service_config *s = wg_config_service(cfg, r->service);
            bool oom;
            r->policies = wg_policy_chain_build(&l->policies, &s->policies, &r->policy_list, &oom);
            if (oom) {
                wg_yaml_oom(&c->y);
                return;
            }
        }
    }
}

static void parse_root(struct cfg_ctx *c, yaml_node_t *root)
{
    struct wg_config *cfg = c->cfg;

    if (root->type != YAML_MAPPING_NODE) {
        cfg_error(c, root, "expected a mapping of settings at the top level");
        return;
    }
    cfg_map(c, root, &top_table, cfg, NULL, "configuration", NULL);
    if (cfg->fleet.enabled && cfg->registry.kind != WG_REGISTRY_ETCD && c->fleet_node)
        cfg_error(c, c->fleet_node, "fleet: needs the etcd registry (registry.etcd)");
    if (!c->y.aborted)
        parse_services(c);
    if (!c->y.aborted)
        check_required(c);
    if (!c->y.aborted)
        add_referenced(c);
    if (!c->y.aborted && cfg->consumers_registry && cfg->registry.kind != WG_REGISTRY_ETCD)
        cfg_error(c, c->consumers_node,
                  "api_key: registry: true needs the etcd registry (registry.etcd)");
    if (c->y.aborted)
        return;
    if (cfg->n_services > 1)
        qsort(cfg->services, cfg->n_services, sizeof *cfg->services, service_cmp);
    check_usage(c);
    check_admin_collision(c);
    build_chains(c);
}

/* ---- construction, loading, freeing -------------------------------------- */

static bool config_defaults(struct cfg_ctx *c, struct wg_config *cfg, const char *path)
{
    static const char *const endpoint = "http://127.0.0.1:2379", *const prefix = "/services/";
    const char *env_zone = getenv("WAYGATE_ZONE");
    char host[256] = "waygate";

    cfg->max_connections = 100000;
    cfg->startup_timeout_ms = 5000;
    cfg->shutdown_timeout_ms = 10000;
    cfg->log.level = WG_LOG_INFO;
    cfg->log.access_format = WG_ACCESS_TEXT;
    wg_parse_addr("127.0.0.1:9901", &cfg->admin.listen);
    cfg->registry.kind = WG_REGISTRY_NONE;
    cfg->registry.etcd.watch_timeout_ms = 10000;
    cfg->registry.etcd.backoff_initial_ms = 50;
    cfg->registry.etcd.backoff_max_ms = 5000;
    cfg->fleet.ttl_ms = 10000;
    if (gethostname(host, sizeof host - 1) != 0 || !host[0] || !wg_service_name_ok(host))
        strcpy(host, "waygate");
    cfg->registry.etcd.endpoints = calloc(1, sizeof(char *));
    cfg->registry.etcd.prefixes = calloc(1, sizeof(char *));
    if (!cfg->registry.etcd.endpoints || !cfg->registry.etcd.prefixes) {
        wg_yaml_oom(&c->y);
        return false;
    }
    if (!cfg_set_str(c, &cfg->registry.etcd.endpoints[0], endpoint))
        return false;
    cfg->registry.etcd.n_endpoints = 1;
    if (!cfg_set_str(c, &cfg->registry.etcd.prefixes[0], prefix))
        return false;
    cfg->registry.etcd.n_prefixes = 1;
    cfg->registry.zookeeper.layout = WG_ZK_LAYOUT_AUTO;
    cfg->registry.zookeeper.session_timeout_ms = 10000;
    if (!(cfg->registry.zookeeper.servers = calloc(1, sizeof(char *))) ||
        !cfg_set_str(c, &cfg->registry.zookeeper.servers[0], "127.0.0.1:2181"))
        return false;
    cfg->registry.zookeeper.n_servers = 1;
    return cfg_set_str(c, &cfg->registry.zookeeper.root, "/services") &&
           cfg_set_str(c, &cfg->registry.zookeeper.chroot, "") &&
           cfg_set_str(c, &cfg->registry.zookeeper.auth.scheme, "") &&
           cfg_set_str(c, &cfg->registry.zookeeper.auth.credentials, "") &&
           cfg_set_str(c, &cfg->path, path) && cfg_set_str(c, &cfg->user, "") &&
           cfg_set_str(c, &cfg->log.access_log, "stdout") &&
           cfg_set_str(c, &cfg->registry.etcd.username, "") &&
           cfg_set_str(c, &cfg->registry.etcd.password, "") &&
           cfg_set_str(c, &cfg->registry.etcd.tls.ca, "") &&
           cfg_set_str(c, &cfg->registry.etcd.tls.cert, "") &&
           cfg_set_str(c, &cfg->registry.etcd.tls.key, "") &&
           cfg_set_str(c, &cfg->registry.etcd.tls.server_name, "") &&
           cfg_set_str(c, &cfg->registry.file, "") && cfg_set_str(c, &cfg->registry.cache, "") &&
           cfg_set_str(c, &cfg->zone, env_zone && zone_ok(env_zone) ? env_zone : "") &&
           cfg_set_str(c, &cfg->fleet.name, host) &&
           cfg_set_str(c, &cfg->fleet.prefix, "/waygate/") &&
           service_defaults_init(c, &cfg->service_defaults);
}

struct wg_config *wg_config_load_buffer(const char *name, const char *buf, size_t len,
                                        bool check_files, struct wg_errors *errs)
{
    struct cfg_ctx c;
    enum wg_yaml_status st;
    yaml_mark_t start = { 0, 0, 0 };

    memset(&c, 0, sizeof c);
    c.check_files = check_files;
    st = wg_yaml_load(&c.y, name, buf, len, errs);
    c.y.abort_on_error_cap = true;
    if (st == WG_YAML_EMPTY)
        wg_yaml_error(&c.y, start, "empty configuration (expected a mapping of settings)");
    if (st == WG_YAML_OK && !(c.cfg = calloc(1, sizeof *c.cfg)))
        wg_yaml_oom(&c.y);
    if (c.cfg && config_defaults(&c, c.cfg, name))
        parse_root(&c, wg_yaml_root(&c.y));
    free(c.meta);
    for (size_t i = 0; i < c.n_need; i++)
        free(c.need[i].name);
    free(c.need);
    wg_yaml_sort_errors(&c.y);
    wg_yaml_close(&c.y);
    if (c.y.n_errors == 0)
        return c.cfg;
    wg_config_free(c.cfg);
    return NULL;
}

struct wg_config *wg_config_load(const char *path, struct wg_errors *errs)
{
    char *buf;
    size_t len;
    struct wg_config *cfg;

    if (!wg_yaml_read_file(path, &buf, &len, errs))
        return NULL;
    cfg = wg_config_load_buffer(path, buf, len, true, errs);
    free(buf);
    return cfg;
}

void wg_config_free(struct wg_config *cfg)
{
    if (!cfg)
        return;
    free(cfg->path);
    free(cfg->user);
    free(cfg->trusted_proxies.v);
    free(cfg->log.access_log);
    str_list_free(cfg->registry.etcd.endpoints, cfg->registry.etcd.n_endpoints);
    str_list_free(cfg->registry.etcd.prefixes, cfg->registry.etcd.n_prefixes);
    free(cfg->registry.etcd.username);
    free(cfg->registry.etcd.password);
    free(cfg->registry.etcd.tls.ca);
    free(cfg->registry.etcd.tls.cert);
    free(cfg->registry.etcd.tls.key);
    free(cfg->registry.etcd.tls.server_name);
    free(cfg->registry.file);
    free(cfg->registry.cache);
    str_list_free(cfg->registry.zookeeper.servers, cfg->registry.zookeeper.n_servers);
    str_list_free(cfg->registry.zookeeper.dubbo_interfaces, cfg->registry.zookeeper.n_dubbo);
    str_list_free(cfg->registry.zookeeper.dubbo_services, cfg->registry.zookeeper.n_dubbo);
    free(cfg->registry.zookeeper.root);
    free(cfg->registry.zookeeper.chroot);
    free(cfg->registry.zookeeper.auth.scheme);
    free(cfg->registry.zookeeper.auth.credentials);
    free(cfg->zone);
    free(cfg->fleet.name);
    free(cfg->fleet.prefix);
    service_free(&cfg->service_defaults);
    for (size_t i = 0; i < cfg->n_services; i++)
        service_free(&cfg->services[i]);
    free(cfg->services);
    for (size_t i = 0; i < cfg->n_listeners; i++)
        cfg_listener_free(&cfg->listeners[i]);
    free(cfg->listeners);
    str_list_free(cfg->policy_files, cfg->n_policy_files);
    str_list_free(cfg->policy_services, cfg->n_policy_services);
    for (size_t i = 0; i < cfg->n_jwks_urls; i++) {
        free(cfg->jwks_urls[i].url);
        free(cfg->jwks_urls[i].ca);
    }
    free(cfg->jwks_urls);
    free(cfg);
}

const struct wg_cidr_list *wg_listener_trusted(const struct wg_config *cfg,
                                               const struct wg_listener_config *lc)
{
    return lc->trusted_proxies.set ? &lc->trusted_proxies : &cfg->trusted_proxies;
}

static void str_set_add(struct cfg_ctx *c, char ***list, size_t *n, const char *s)
{
    char **v;

    for (size_t i = 0; i < *n; i++)
        if (strcmp((*list)[i], s) == 0)
            return;
    if (!(v = realloc(*list, (*n + 1) * sizeof *v))) {
        wg_yaml_oom(&c->y);
        return;
    }
    *list = v;
    if (!(v[*n] = strdup(s))) {
        wg_yaml_oom(&c->y);
        return;
    }
    (*n)++;
}

void cfg_watch_file(struct cfg_ctx *c, const char *path)
{
    str_set_add(c, &c->cfg->policy_files, &c->cfg->n_policy_files, path);
}

void cfg_jwks_url(struct cfg_ctx *c, const char *url, const char *ca, uint64_t refresh_ms)
{
    struct wg_config *cfg = c->cfg;
    struct wg_jwks_url *v;

    for (size_t i = 0; i < cfg->n_jwks_urls; i++)
        if (strcmp(cfg->jwks_urls[i].url, url) == 0) {
            if (refresh_ms < cfg->jwks_urls[i].refresh_ms)
                cfg->jwks_urls[i].refresh_ms = refresh_ms;
            return;
        }
    if (!(v = realloc(cfg->jwks_urls, (cfg->n_jwks_urls + 1) * sizeof *v))) {
        wg_yaml_oom(&c->y);
        return;
    }
    cfg->jwks_urls = v;
    v[cfg->n_jwks_urls] = (struct wg_jwks_url){ strdup(url), strdup(ca ? ca : ""), refresh_ms };
    if (!v[cfg->n_jwks_urls].url || !v[cfg->n_jwks_urls].ca) {
        free(v[cfg->n_jwks_urls].url);
        free(v[cfg->n_jwks_urls].ca);
        wg_yaml_oom(&c->y);
        return;
    }
    cfg->n_jwks_urls++;
}

void cfg_reference_service(struct cfg_ctx *c, const char *name)
{
    str_set_add(c, &c->cfg->policy_services, &c->cfg->n_policy_services, name);
}

void cfg_require_service(struct cfg_ctx *c, yaml_node_t *at, const char *key, const char *name)
{
    struct cfg_need_service *v = realloc(c->need, (c->n_need + 1) * sizeof *v);
    char *n = v ? malloc(strlen(key) + 1 + strlen(name) + 1) : NULL;

    if (v)
        c->need = v;
    if (!n) {
        wg_yaml_oom(&c->y);
        return;
    }
    strcpy(n, key);                     /* "key\0name" */
    strcpy(n + strlen(key) + 1, name);
    c->need[c->n_need++] = (struct cfg_need_service){ at, n };
    cfg_reference_service(c, name);
}

uint64_t wg_config_policy_files_stamp(const struct wg_config *cfg)
{
    uint64_t h = cfg->n_policy_files ? 0xcbf29ce484222325ULL : 0;

    for (size_t i = 0; i < cfg->n_policy_files; i++) {
        struct stat st;
        uint64_t v[4] = { 0, 0, 0, 0 };
        if (stat(cfg->policy_files[i], &st) == 0) {
            v[0] = (uint64_t)st.st_ino;
            v[1] = (uint64_t)st.st_size;
            v[2] = (uint64_t)st.st_mtim.tv_sec;
            v[3] = (uint64_t)st.st_mtim.tv_nsec;
        }
        const unsigned char *b = (const unsigned char *)v;
        for (size_t k = 0; k < sizeof v; k++)
            h = (h ^ b[k]) * 0x100000001b3ULL;          /* FNV-1a */
    }
    return h;
}

static int service_key_cmp(const void *key, const void *elem)
{
    return strcmp(key, ((const struct wg_service_config *)elem)->name);
}

const struct wg_service_config *wg_config_service(const struct wg_config *cfg,
                                                  const char *name)
{
    const struct wg_service_config *s = NULL;

    if (name && cfg->n_services)
        s = bsearch(name, cfg->services, cfg->n_services, sizeof *cfg->services,
                    service_key_cmp);
    return s ? s : &cfg->service_defaults;
}
