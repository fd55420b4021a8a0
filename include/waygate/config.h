/* config — YAML configuration -> immutable struct wg_config.
 *
 * Promises:
 *  - wg_config_load() parses and validates the WHOLE schema of DESIGN §5 and
 *    either returns a complete config (every default filled in, every service
 *    referenced by a listener or route present in services[]) or NULL.
 *  - Every problem found is appended to `errs` as one line
 *    "FILE:LINE:COL: message" (1-based), as many as can be found in one pass.
 *  - A returned config is never modified; it is shared read-only by all
 *    threads through snapshots and freed with wg_config_free() by whoever
 *    drops the last snapshot reference to it.
 *  - Durations are milliseconds, sizes bytes.
 *  - String fields are never NULL unless documented ("" when unset).
 *  - YAML anchors, aliases and merge keys (<<) are supported; alias
 *    expansion and nesting are bounded (docs/configuration.md).
 */
#ifndef WAYGATE_CONFIG_H
#define WAYGATE_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "waygate/cidr.h"
#include "waygate/errors.h"
#include "waygate/policy.h"

/* A socket address as written in the config. `text` keeps the canonical
 * form: "127.0.0.1:8080", "[::1]:8080", ":8080" (all interfaces). */
struct wg_addr {
    struct sockaddr_storage ss;
    socklen_t len;
    char text[64];
};

enum wg_balance { WG_BALANCE_ROUND_ROBIN, WG_BALANCE_LEAST_CONN, WG_BALANCE_RANDOM,
                  WG_BALANCE_P2C, WG_BALANCE_HASH };
enum wg_hash_key { WG_HASH_CLIENT_IP, WG_HASH_HEADER, WG_HASH_COOKIE };
enum wg_health_type { WG_HEALTH_HTTP, WG_HEALTH_TCP, WG_HEALTH_NONE, WG_HEALTH_GRPC };
/* upstream.protocol (DESIGN §15): what waygate speaks to the service's
 * instances. auto: what each instance's registry record says (record.h:
 * wg_record.protocol), HTTP/1.1 when it says nothing. */
enum wg_upstream_protocol { WG_UPSTREAM_HTTP1, WG_UPSTREAM_H2C, WG_UPSTREAM_H2,
                            WG_UPSTREAM_AUTO };
enum wg_listener_mode { WG_MODE_TCP, WG_MODE_HTTP };
enum wg_log_level { WG_LOG_DEBUG, WG_LOG_INFO, WG_LOG_WARN, WG_LOG_ERROR };
enum wg_access_format { WG_ACCESS_TEXT, WG_ACCESS_JSON };
enum wg_tls_verify { WG_VERIFY_NONE, WG_VERIFY_OPTIONAL, WG_VERIFY_REQUIRED };
enum wg_registry_kind { WG_REGISTRY_NONE, WG_REGISTRY_ETCD, WG_REGISTRY_FILE, WG_REGISTRY_ZOOKEEPER };
enum wg_zk_layout { WG_ZK_LAYOUT_AUTO, WG_ZK_LAYOUT_CURATOR, WG_ZK_LAYOUT_DUBBO, WG_ZK_LAYOUT_PLAIN };
enum wg_locality_mode { WG_LOCALITY_OFF, WG_LOCALITY_PREFER, WG_LOCALITY_STRICT };

#define WG_ZONE_MAX 63              /* bytes of a zone name (replica or instance) */

/* expected_status: "200-299,404" or a single integer. */
#define WG_STATUS_RANGES_MAX 16
struct wg_status_ranges {
    unsigned n;
    struct { uint16_t lo, hi; } r[WG_STATUS_RANGES_MAX];
};
bool wg_status_ranges_match(const struct wg_status_ranges *s, int status);

struct wg_service_config {
    char *name;                     /* NULL for service_defaults */
    enum wg_balance balance;
    enum wg_hash_key hash_key;
    char *hash_name;                /* header or cookie name; NULL for client_ip */
    uint64_t slow_start_ms;
    uint64_t connect_timeout_ms;
    uint64_t response_timeout_ms;
    unsigned retries;
    bool retry_non_idempotent;      /* retry POST, PATCH, ... after bytes reached an upstream */
    unsigned panic_threshold;       /* percent, 0 = off */
    unsigned max_connections;       /* per instance, 0 = unlimited */
    uint64_t drain_timeout_ms;      /* 0 = never */
    bool on_unhealthy_close;        /* on_unhealthy: close */
    struct {
        unsigned max_idle;
        uint64_t idle_timeout_ms;
        enum wg_upstream_protocol protocol;  /* h2 needs tls.enabled */
        uint64_t ping_interval_ms;  /* HTTP/2: PING an idle connection this often; 0 = never */
        uint64_t ping_timeout_ms;   /* HTTP/2: unanswered this long -> closed */
    } upstream;
    struct {
        uint64_t max_timeout_ms;    /* caps a client's grpc-timeout; 0 = no cap */
        char **retry_methods;       /* "/pkg.Svc/Method" or "/pkg.Svc/" + "*" */
        size_t n_retry_methods;
    } grpc;
    struct {
        enum wg_health_type type;   /* resolved: tcp when used only by tcp listeners and unset */
        bool type_set;              /* written explicitly in the file */
        char *path;
        char *service;              /* type grpc: HealthCheckRequest.service ("" = server) */
        char *host;                 /* "" -> the instance address */
        uint16_t port;              /* 0 -> the instance's port */
        uint64_t interval_ms;
        uint64_t timeout_ms;
        unsigned healthy_threshold;
        unsigned unhealthy_threshold;
        struct wg_status_ranges expected_status;
        bool shared;                /* one elected prober per zone (fleet, DESIGN §18) */
    } health_check;
    struct {                        /* zones and priorities (docs/balancing.md) */
        enum wg_locality_mode mode;
        unsigned overprovisioning;  /* percent: 140 = 1.4 */
        unsigned min_instances;     /* prefer: a level smaller than this ignores zones */
    } locality;
    struct {
        unsigned consecutive_failures;
        uint64_t base_ejection_time_ms;
        uint64_t max_ejection_time_ms;
        unsigned max_ejection_percent;
    } outlier;
    struct {
        bool enabled;
        char *ca, *cert, *key;      /* "" when unset */
        bool verify;
        char *sni;
    } tls;
    bool proxy_protocol;            /* send PROXY v2 upstream (tcp mode) */
    struct wg_policy_list policies; /* http routes to this service (policy.h) */
};

struct wg_route_header {
    char *name;
    char *value;
};

/* One service of a traffic split (route `backends:`). */
struct wg_route_backend {
    char *service;
    uint32_t weight;                /* 0 = no traffic */
};

struct wg_route {
    char *host;                     /* NULL = any; lower-case, no port, no trailing dot */
    bool host_wildcard;             /* "*.x": host holds ".x" */
    char *path_prefix;              /* "/" when unset */
    char **methods;                 /* NULL/0 = any */
    size_t n_methods;
    struct wg_route_header *headers;
    size_t n_headers;
    char *service;                  /* with backends: the first backend's (its policies apply) */
    struct wg_route_backend *backends;  /* traffic split; NULL/0 = service only */
    size_t n_backends;
    uint64_t backends_weight;       /* sum of the weights, > 0 */
    bool sticky;                    /* split by a key's hash, not at random */
    enum wg_hash_key sticky_key;
    char *sticky_name;              /* header or cookie name */
    bool strip_prefix;
    int64_t response_timeout_ms;    /* -1 = the service's */
    int retries;                    /* -1 = the service's */
    int8_t retry_non_idempotent;    /* -1 = the service's, else 0 / 1 */
    unsigned line;                  /* for logs */
    struct wg_policy_list policy_list;  /* the route's own `policies:` */
    struct wg_policy_chain *policies;   /* effective chain (policy.h); NULL = none */
};

struct wg_tls_cert_pair {
    char *cert;
    char *key;
};

struct wg_listener_config {
    char *name;
    struct wg_addr listen;
    enum wg_listener_mode mode;
    char *service;                  /* tcp mode: the service; NULL in http mode */
    bool proxy_protocol;            /* accept PROXY v1/v2 (from trusted_proxies only) */
    struct wg_cidr_list trusted_proxies;  /* .set: overrides the top level's */
    uint64_t idle_timeout_ms;       /* tcp mode */
    struct {
        uint64_t max_header_size;
        uint64_t max_body_size;     /* 0 = unlimited */
        uint64_t client_header_timeout_ms;
        uint64_t client_body_timeout_ms;
        uint64_t client_idle_timeout_ms;
        uint64_t send_timeout_ms;
        uint64_t tunnel_idle_timeout_ms;
        bool allow_underscores;     /* forward field names containing '_' */
        bool proto_h1, proto_h2;    /* protocols: [h2, http1] (TLS listeners: ALPN) */
        bool h2c;                   /* plain listener: HTTP/2 with prior knowledge */
        unsigned max_concurrent_streams;    /* HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS */
        unsigned h2_max_resets;     /* client RST_STREAMs per second per connection */
        unsigned h2_max_control_frames;     /* SETTINGS/PING/WINDOW_UPDATE/PRIORITY/empty
                                               DATA per second per connection */
        uint64_t tcp_notsent_lowat; /* client sockets' TCP_NOTSENT_LOWAT; 0 = the kernel's */
    } http;
    struct {
        bool enabled;               /* certificates present */
        struct wg_tls_cert_pair *certificates;
        size_t n_certificates;
        int min_version;            /* 12 or 13 */
        uint64_t handshake_timeout_ms;
        char *client_ca;
        enum wg_tls_verify verify;
        char *redirect_http;        /* "" or "https" */
    } tls;
    struct wg_route *routes;        /* http mode */
    size_t n_routes;
    struct wg_policy_list policies; /* applied to every route (policy.h) */
};

struct wg_config {
    char *path;
    unsigned workers;               /* 0 = auto (one per CPU) */
    char *user;
    uint64_t max_connections;
    uint64_t startup_timeout_ms;
    uint64_t shutdown_timeout_ms;
    struct wg_cidr_list trusted_proxies;  /* DESIGN §10; empty: trust nobody */
    struct {
        enum wg_log_level level;
        char *access_log;           /* "stdout", "off" or a path */
        enum wg_access_format access_format;
    } log;
    struct {
        struct wg_addr listen;
        bool allow_remote;
    } admin;
    struct {
        enum wg_registry_kind kind;
        struct {
            char **endpoints;
            size_t n_endpoints;
            char **prefixes;
            size_t n_prefixes;
            char *username, *password;
            struct { char *ca, *cert, *key, *server_name; } tls;
            uint64_t watch_timeout_ms;
            uint64_t backoff_initial_ms, backoff_max_ms;
        } etcd;
        struct {
            char **servers;         /* "HOST:PORT" */
            size_t n_servers;
            char *root;             /* "/services": no trailing '/' ("" = the top) */
            enum wg_zk_layout layout;
            uint64_t session_timeout_ms;
            struct { char *scheme, *credentials; } auth;    /* "" = none */
            char *chroot;           /* "" or "/path" */
            char **dubbo_interfaces, **dubbo_services;      /* dubbo_services: mapping */
            size_t n_dubbo;
        } zookeeper;
        char *file;
        char *cache;                /* "" = none */
    } registry;
    char *zone;                     /* this replica's zone ("" = none; WAYGATE_ZONE) */
    struct {
        bool enabled;               /* `fleet:` present (etcd registry only) */
        char *name;                 /* replica id; default the host name */
        char *prefix;               /* "/waygate/" */
        uint64_t ttl_ms;            /* lease TTL of the replica and prober keys */
    } fleet;
    struct wg_service_config service_defaults;
    struct wg_service_config *services;   /* declared + referenced, sorted by name */
    size_t n_services;
    struct wg_listener_config *listeners;
    size_t n_listeners;
    char **policy_services;         /* services policies name (mirror) */
    size_t n_policy_services;
    struct wg_jwks_url { char *url, *ca; uint64_t refresh_ms; } *jwks_urls;
    size_t n_jwks_urls;             /* JWKS documents jwt policies fetch (jwks.h) */
    char **policy_files;            /* files policies read (keys, htpasswd): a change
                                       to one reloads the config (control.c) */
    size_t n_policy_files;
    bool consumers_registry;        /* an api_key policy has registry: true (consumers.h) */
};

/* Load and validate a config file. Returns NULL and fills errs on any error. */
struct wg_config *wg_config_load(const char *path, struct wg_errors *errs);
/* Same from memory; `name` is used as FILE in messages. Named files (TLS,
 * registry.file) are checked for existence only if check_files is true. */
struct wg_config *wg_config_load_buffer(const char *name, const char *buf, size_t len,
                                        bool check_files, struct wg_errors *errs);
void wg_config_free(struct wg_config *cfg);

/* The settings of a service: declared, or service_defaults (name-less) when
 * the registry knows a service the config does not. Never NULL. */
const struct wg_service_config *wg_config_service(const struct wg_config *cfg,
                                                  const char *name);

/* The trusted_proxies of a listener: its own when it sets them, else the
 * top level's. */
const struct wg_cidr_list *wg_listener_trusted(const struct wg_config *cfg,
                                               const struct wg_listener_config *lc);
/* A fingerprint of the policy files' identity, size and mtime (0 when
 * there are none); a different value means one of them changed. */
uint64_t wg_config_policy_files_stamp(const struct wg_config *cfg);

/* Value grammar helpers (exported for the unit tests and for `register`).
 * Return false on a malformed value. */
bool wg_parse_duration(const char *s, uint64_t *ms);
bool wg_parse_size(const char *s, uint64_t *bytes);
bool wg_parse_addr(const char *s, struct wg_addr *out);   /* requires a port */
bool wg_parse_status_ranges(const char *s, struct wg_status_ranges *out);

#endif
