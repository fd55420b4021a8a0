/* config_parse — the table-driven mapping walker of the config loader.
 *
 * A schema is a table of keys; each key names a parse callback and the
 * offset of its field inside the struct being filled (`base`). Nested
 * mappings reuse the same base with their own table, so offsets are always
 * relative to the outermost struct (wg_config, wg_service_config, ...).
 * Callbacks report problems through cfg_error() and leave the field at its
 * previous value (the default, or the service_defaults value being merged
 * over), so one bad key never hides the others.
 */
#ifndef WAYGATE_CONFIG_PARSE_H
#define WAYGATE_CONFIG_PARSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config_yaml.h"
#include "waygate/config.h"

struct cfg_listener_meta {          /* positions kept for cross-checks */
    yaml_node_t *name, *listen, *service;
};

struct cfg_ctx {
    struct wg_yaml y;
    struct wg_config *cfg;
    bool check_files;
    yaml_node_t *defaults_node;     /* service_defaults, applied before services */
    yaml_node_t *services_node;
    yaml_node_t *fleet_node;        /* for the etcd-only cross-check */
    yaml_node_t *consumers_node;    /* the first api_key `registry: true`, likewise */
    struct cfg_listener_meta *meta; /* parallel to cfg->listeners */
    struct cfg_need_service {       /* services a policy needs known (forward_auth) */
        yaml_node_t *at;
        char *name;
    } *need;
    size_t n_need;
};

#define CFG_UNUSED __attribute__((unused))

struct cfg_key;
typedef void cfg_parse_fn(struct cfg_ctx *c, yaml_node_t *v, void *base,
                          const struct cfg_key *k);

struct cfg_key {
    const char *name;               /* first member: see wg_yaml_suggest */
    cfg_parse_fn *parse;
    size_t off;
    uint64_t min, max;              /* numbers, durations (ms), sizes */
    const void *extra;              /* enum names or a nested cfg_table */
};

struct cfg_table {
    const char *what;               /* "listener", "health_check", ... */
    const struct cfg_key *keys;
    size_t n;
};

#define CFG_TABLE(what, keys) { what, keys, sizeof(keys) / sizeof((keys)[0]) }
#define CFG_MAX_KEYS 32

/* Which keys of a table were present, and their nodes. */
struct cfg_seen {
    uint32_t mask;
    yaml_node_t *key[CFG_MAX_KEYS];
    yaml_node_t *value[CFG_MAX_KEYS];
};

#define cfg_error(c, node, ...) wg_yaml_error(&(c)->y, (node)->start_mark, __VA_ARGS__)

/* Apply a mapping node to `base` through table t. A null node is an empty
 * mapping. `what` overrides t->what in "unknown key" messages; `key` names
 * the mapping in "expected a mapping". seen may be NULL. */
void cfg_map(struct cfg_ctx *c, yaml_node_t *node, const struct cfg_table *t, void *base,
             struct cfg_seen *seen, const char *key, const char *what);
/* Index of `name` in t (for seen masks); t must contain it. */
unsigned cfg_key_index(const struct cfg_table *t, const char *name);
bool cfg_seen_has(const struct cfg_seen *s, const struct cfg_table *t, const char *name);

/* Replace *dst with a copy of s; false (reported) when out of memory. */
bool cfg_set_str(struct cfg_ctx *c, char **dst, const char *s);
/* A scalar's text or NULL (reported). */
const char *cfg_text(struct cfg_ctx *c, yaml_node_t *v, const char *key);
/* An integer in [min, max], reported otherwise. */
bool cfg_uint(struct cfg_ctx *c, yaml_node_t *v, const char *key, uint64_t min,
              uint64_t max, uint64_t *out);
bool cfg_duration(struct cfg_ctx *c, yaml_node_t *v, const struct cfg_key *k, uint64_t *ms);
/* Index of the value among NULL-terminated names, or -1 (reported). */
int cfg_enum(struct cfg_ctx *c, yaml_node_t *v, const char *key, const char *const *names);
/* With check_files: "cannot open 'x': <strerror>" unless x is a readable file. */
void cfg_check_file(struct cfg_ctx *c, yaml_node_t *v, const char *path);

cfg_parse_fn cfg_p_cidrs;         /* a list of CIDRs into a struct wg_cidr_list */
cfg_parse_fn cfg_p_str, cfg_p_file, cfg_p_bool, cfg_p_unsigned, cfg_p_u16, cfg_p_u64,
    cfg_p_duration, cfg_p_size, cfg_p_addr, cfg_p_enum, cfg_p_map, cfg_p_status;

/* A service a policy names (mirror): it exists in services[] afterwards. */
void cfg_reference_service(struct cfg_ctx *c, const char *name);
/* The same, and it must be a service the configuration knows (declared
 * under services:, or the service of a listener or route): otherwise
 * "FILE:LINE:COL: KEY: unknown service 'x' (did you mean 'y'?)" at `at`. */
void cfg_require_service(struct cfg_ctx *c, yaml_node_t *at, const char *key, const char *name);

/* A JWKS URL a jwt policy needs fetched (jwks.h); `ca` may be NULL. */
void cfg_jwks_url(struct cfg_ctx *c, const char *url, const char *ca, uint64_t refresh_ms);

/* Remember a file a policy read, so that a change to it reloads. */
void cfg_watch_file(struct cfg_ctx *c, const char *path);

/* policy.c: a `policies:` list into the struct wg_policy_list at k->off. */
cfg_parse_fn cfg_p_policies;

/* config_listener.c: the `listeners:` list and its cleanup. */
cfg_parse_fn cfg_p_listeners;
void cfg_listener_free(struct wg_listener_config *l);

#endif
