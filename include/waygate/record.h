/* record — registry values decoded into instance records.
 *
 * Promises:
 *  - A record is plain data (no I/O, no libevent): service, instance id,
 *    IP address + port, weight, optional metadata as a JSON object string.
 *  - Decoders never crash on any input; an invalid value produces a
 *    message and no record, never a partial one.
 *  - The file registry format (DESIGN §5 "File registry") is decoded with
 *    FILE:LINE positions; an invalid entry is reported and skipped, the
 *    others still apply.
 */
#ifndef WAYGATE_RECORD_H
#define WAYGATE_RECORD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "waygate/config.h"

#define WG_WEIGHT_DEFAULT 100
#define WG_WEIGHT_MAX 10000

/* What a record says its instance speaks (docs/registry.md, "Protocol
 * markers"): a Kratos grpc:// endpoint, "protocol":"grpc" in a native value,
 * or metadata protocol grpc|h2c|h2|http2 (HTTP/2) or http|http1 (HTTP/1.1).
 * Only services with upstream.protocol auto follow it. */
enum wg_record_protocol {
    WG_RECORD_PROTO_UNSET = 0,      /* the record says nothing */
    WG_RECORD_PROTO_HTTP1,
    WG_RECORD_PROTO_HTTP2,
};

struct wg_record {
    char *service;
    char *id;
    struct sockaddr_storage addr;
    socklen_t addrlen;
    uint32_t weight;                /* 0 = no new traffic */
    char *metadata;                 /* JSON object text or NULL */
    uint8_t protocol;               /* enum wg_record_protocol */
    bool grpc_endpoint;             /* addr is a Kratos grpc:// endpoint (no http:// one) */
    /* Kratos values with both: addr is the http:// endpoint, this the
     * grpc:// one (an IP literal; 0 = none). */
    socklen_t grpc_addrlen;
    struct sockaddr_storage grpc_addr;
};

/* The address and protocol an instance of a service with upstream.protocol
 * `want` (and tls.enabled `tls`) gets from record `r`:
 *  - http1: r->addr over HTTP/1.1; false when r->addr is a Kratos grpc://
 *    endpoint (a Kratos value without an http:// endpoint, as before);
 *  - h2c / h2: the grpc:// endpoint when the record has both, else r->addr;
 *  - auto: r->addr; HTTP/2 (h2 with tls, else h2c) when the record says so,
 *    else HTTP/1.1.
 * *addr points into r. */
bool wg_record_select(const struct wg_record *r, enum wg_upstream_protocol want, bool tls,
                      const struct sockaddr_storage **addr, socklen_t *addrlen,
                      enum wg_upstream_protocol *protocol);
const char *wg_upstream_protocol_name(enum wg_upstream_protocol p);
/* A protocol word (case-insensitive): grpc, h2c, h2, http2 -> HTTP2; http,
 * http1, http/1.1 -> HTTP1; anything else (and NULL) -> UNSET. */
uint8_t wg_record_protocol_word(const char *s);

struct wg_record_set {
    struct wg_record *v;
    size_t n, cap;
};

/* Takes ownership of the strings in *r (they must be malloc'd), also on
 * failure (then they are freed); *r is left zeroed either way. */
bool wg_record_set_push(struct wg_record_set *set, struct wg_record *r);
void wg_record_set_clear(struct wg_record_set *set);
void wg_record_free(struct wg_record *r);
/* Sort by (service, id) so that consumers can diff and group. */
void wg_record_set_sort(struct wg_record_set *set);

/* FNV-1a of a service name or an instance id, for the tables the
 * registries keep of them. */
uint64_t wg_record_name_hash(const char *s);

/* An instance's zone and priority from its metadata JSON object (DESIGN
 * §18): "zone" a string of at most WG_ZONE_MAX bytes, "priority" an integer
 * 0..WG_PRIORITY_MAX or a string of one (go-micro and Kratos metadata are
 * string maps); for Curator records, which keep the service's data in
 * "payload", payload.zone or payload.metadata.zone (Spring Cloud). Anything
 * else, or no metadata, gives zone "" / priority 0. */
#define WG_PRIORITY_MAX 15
void wg_record_locality(const char *metadata, char zone[WG_ZONE_MAX + 1], unsigned *priority);

/* Parse the file registry. Returns false only if the file cannot be read or
 * is not valid YAML at all (the caller keeps its last good pools). Invalid
 * entries are reported in `warnings` ("FILE:LINE:COL: message") and skipped;
 * *invalid counts them. Records are appended to `out`; on false nothing is
 * appended. A top level that is not a mapping, or aliases beyond the
 * expansion bound, also give false. An empty file is zero services. */
bool wg_record_parse_file(const char *path, struct wg_record_set *out,
                          struct wg_errors *warnings, unsigned *invalid);
bool wg_record_parse_file_buffer(const char *name, const char *buf, size_t len,
                                 struct wg_record_set *out, struct wg_errors *warnings,
                                 unsigned *invalid);

/* ---- registry values (DESIGN §7), decoded in record_json.c ----------------
 *
 * A key <prefix><service>/<instance-id> holds one value in one of the formats
 * below, detected per value. The key names the service and (except go-micro,
 * whose nodes carry their own ids) the instance: names inside the value are
 * ignored. Addresses are IP literals or hostnames; a hostname is reported in
 * `hosts` for the caller to resolve (its record has address family
 * AF_UNSPEC until then), or refused when `hosts` is NULL. */
enum wg_record_format {
    WG_FORMAT_NATIVE,       /* {"address":"10.0.0.5","port":8080,"weight":100,"metadata":{}} */
    WG_FORMAT_PLAIN,        /* 10.0.0.5:8080 or [fd00::5]:8080 */
    WG_FORMAT_ENDPOINTS,    /* etcd endpoints.Manager {"Op":0,"Addr":"10.0.0.5:8080"} */
    WG_FORMAT_GO_MICRO,     /* {"name":"users","nodes":[{"id":"u1","address":"..."}]} */
    WG_FORMAT_KRATOS,       /* {"id":"u1","endpoints":["http://10.0.0.5:8000",
                               "grpc://10.0.0.5:9000"]} */
    WG_FORMAT_SKYDNS,       /* {"host":"10.0.0.5","port":8080} */
    WG_FORMAT_CURATOR,      /* Apache Curator ServiceInstance (below) */
    WG_FORMAT_DUBBO         /* Apache Dubbo provider URL (below) */
};
const char *wg_record_format_name(enum wg_record_format f);

/* A hostname to resolve for record `index` of the output set. */
struct wg_record_host {
    size_t index;
    char *name;
    uint16_t port;
};
struct wg_record_hosts {
    struct wg_record_host *v;
    size_t n, cap;
};
void wg_record_hosts_clear(struct wg_record_hosts *h);

/* Split `key` (key_len bytes, any bytes) under `prefix` into a service (the
 * first segment, wg_service_name_ok) and an instance id (the rest, non-empty,
 * may hold '/'). Returns false with a static reason in *why. */
bool wg_record_key_split(const char *prefix, const char *key, size_t key_len, char **service,
                         char **id, const char **why);

/* Decode one etcd value stored at `key`. On success appends every instance
 * of the value to `out` (go-micro: one per node; never zero), hostnames to
 * `hosts`, sets *format and returns true. On failure appends nothing and
 * writes a one-line reason into why[why_len]. Never crashes on any input. */
bool wg_record_decode_etcd(const char *prefix, const char *key, size_t key_len,
                           const char *value, size_t value_len, struct wg_record_set *out,
                           struct wg_record_hosts *hosts, enum wg_record_format *format,
                           char *why, size_t why_len);

/* ---- ZooKeeper node data (DESIGN §17), decoded in record_json.c --------------
 *
 * Apache Curator's ServiceDiscovery writes a ServiceInstance as JSON:
 *   {"name":"users","id":"u1","address":"10.0.0.5","port":8080,"sslPort":null,
 *    "payload":{"@class":"...",...},"registrationTimeUTC":1700000000000,
 *    "serviceType":"DYNAMIC","uriSpec":{"parts":[...]},"enabled":true}
 * A JSON object with "serviceType" or "registrationTimeUTC" is Curator's;
 * wg_record_decode_etcd() detects it too (any JSON format of §7 may sit in a
 * ZooKeeper node). The key names the service and the id, as for etcd. The
 * port is "port", or "sslPort" when `prefer_ssl` (the service sends TLS
 * upstream) and one is given, or "sslPort" when "port" is null. serviceType
 * must be DYNAMIC, DYNAMIC_SEQUENTIAL, STATIC or PERMANENT; "enabled":false
 * gives weight 0 (no new traffic). Metadata: {"serviceType", "sslPort",
 * "payload" (as written, @class included), "uriSpec" (its parts joined,
 * variables as {name})}.
 *
 * wg_record_decode_zk() decodes the data of the node at `key` like
 * wg_record_decode_etcd() (any format of §7, or Curator's; hostnames into
 * `hosts`, or refused when it is NULL), or only Curator's when
 * `curator_only` (registry.zookeeper.layout: curator). */
bool wg_record_decode_zk(const char *prefix, const char *key, size_t key_len,
                         const char *value, size_t value_len, bool curator_only,
                         bool prefer_ssl, struct wg_record_set *out,
                         struct wg_record_hosts *hosts, enum wg_record_format *format,
                         char *why, size_t why_len);

/* A Dubbo provider: the name of a node under /dubbo/<interface>/providers/
 * is a URL-encoded (percent-encoded) URL
 *   dubbo://10.0.0.5:20880/org.example.Users?interface=org.example.Users&weight=50&...
 * (or tri://). `name` is the node name as stored (name_len bytes). The
 * service is the `interface` parameter (else the URL path), mapped through
 * `map` (n_map pairs {interface, service}; NULL: none) when it is there;
 * the id is "HOST:PORT" (HOST an IP literal, as Dubbo writes); weight=N
 * (0..10000, default 100); disabled=true or enabled=false give weight 0;
 * side=consumer is refused. Metadata: {"protocol","application","version",
 * "group"} where given. On success appends one record; on failure nothing,
 * with a one-line reason. Never crashes on any input. */
struct wg_dubbo_map {
    const char *interface, *service;
};
bool wg_record_decode_dubbo(const char *name, size_t name_len, const struct wg_dubbo_map *map,
                            size_t n_map, struct wg_record_set *out, char *why, size_t why_len);

#endif
