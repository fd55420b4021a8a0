/* record_json — the etcd value formats of DESIGN §7 (see record.h).
 *
 * Detection, per value: a value whose first non-blank byte is '{' is JSON
 * and its keys decide the format (first match wins):
 *     "nodes"     go-micro Service (one instance per node, id = node id)
 *     "endpoints" Kratos ServiceInstance (the first http:// endpoint, and
 *                 the first grpc:// one beside it or instead of it)
 *     "Addr"      etcd endpoints.Manager (Op must be 0, i.e. Add)
 *     "address"   native
 *     "host"      SkyDNS (priority, weight, ttl and text are ignored)
 * and, before all of them, "serviceType" or "registrationTimeUTC": Apache
 * Curator's ServiceInstance (ZooKeeper, DESIGN §17);
 * anything else is plain "host:port" / "[v6]:port". The key names the
 * service and the instance: a "name" or "id" inside the value is ignored
 * (go-micro nodes keep their own ids, as several share one key).
 */
#include "waygate/record.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <jansson.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config_value.h"

#define HOSTPORT_MAX 300

struct decode {
    const char *service;
    const char *key_id;
    bool allow_hosts;
    bool prefer_ssl;                /* Curator: sslPort before port */
    struct wg_record_set recs;
    struct wg_record_hosts hosts;
    char *why;
    size_t why_len;
};

static const char *const format_names[] = { "native", "plain", "endpoints", "go-micro",
                                            "kratos", "skydns", "curator", "dubbo" };

const char *wg_record_format_name(enum wg_record_format f)
{
    return (unsigned)f < sizeof format_names / sizeof *format_names ? format_names[f] : "?";
}

void wg_record_hosts_clear(struct wg_record_hosts *h)
{
    for (size_t i = 0; i < h->n; i++)
        free(h->v[i].name);
    free(h->v);
    memset(h, 0, sizeof *h);
}

static bool fail(struct decode *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static bool fail(struct decode *d, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(d->why, d->why_len, fmt, ap);
    va_end(ap);
    return false;
}

/* ---- keys -------------------------------------------------------------- */

bool wg_record_key_split(const char *prefix, const char *key, size_t key_len, char **service,
                         char **id, const char **why)
{
    size_t plen = strlen(prefix);
    const char *rest, *slash;
    size_t rlen;

    *service = *id = NULL;
    if (key_len < plen || memcmp(key, prefix, plen) != 0)
        return (*why = "key is outside the prefix"), false;
    if (memchr(key, '\0', key_len))
        return (*why = "key holds a NUL byte"), false;
    rest = key + plen;
    rlen = key_len - plen;
    slash = memchr(rest, '/', rlen);
    if (!slash)
        return (*why = "key is not <prefix><service>/<instance-id>"), false;
    if (slash + 1 == rest + rlen)
        return (*why = "empty instance id in key"), false;
    *service = strndup(rest, (size_t)(slash - rest));
    *id = strndup(slash + 1, (size_t)(rest + rlen - slash - 1));
    if (!*service || !*id || !wg_service_name_ok(*service)) {
        *why = *service && *id ? "invalid service name in key" : "out of memory";
        free(*service);
        free(*id);
        *service = *id = NULL;
        return false;
    }
    return true;
}

/* ---- addresses ----------------------------------------------------------- */

/* RFC 1123 host name: labels of letters, digits and '-', not starting or
 * ending with '-', at most 63 bytes each and 253 in all. */
static bool hostname_ok(const char *s)
{
    size_t n = strlen(s), label = 0;

    if (n == 0 || n > 253)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '.') {
            if (label == 0 || s[i - 1] == '-')
                return false;
            label = 0;
        } else if (isalnum(c) || (c == '-' && label > 0)) {
            if (++label > 63)
                return false;
        } else {
            return false;
        }
    }
    if (s[n - 1] == '-' || s[n - 1] == '.')
        return false;
    /* an all-numeric last label ("10.0.0.300") is a broken IP, not a name */
    const char *last = strrchr(s, '.');
    last = last ? last + 1 : s;
    return strspn(last, "0123456789") != strlen(last);
}

static bool port_text(const char *s, uint16_t *port)
{
    uint64_t v;

    if (wg_uint_reason(s, 65535, &v) || v == 0)
        return false;
    *port = (uint16_t)v;
    return true;
}

/* "10.0.0.5:80", "[fd00::5]:80", "host.example:80" -> host text + port. */
static bool split_hostport(const char *s, char *host, size_t host_len, uint16_t *port)
{
    const char *colon;
    size_t n;

    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (!close || close[1] != ':')
            return false;
        colon = close + 1;
        n = (size_t)(close + 1 - s);
    } else {
        colon = strrchr(s, ':');
        if (!colon || memchr(s, ':', (size_t)(colon - s)))
            return false;       /* a bare IPv6 address needs brackets */
        n = (size_t)(colon - s);
    }
    if (n == 0 || n >= host_len)
        return false;
    memcpy(host, s, n);
    host[n] = '\0';
    return port_text(colon + 1, port);
}

/* Fill r->addr from an IP literal, or record `host` for resolution. */
static bool set_address(struct decode *d, struct wg_record *r, const char *host, uint16_t port)
{
    struct wg_record_hosts *h = &d->hosts;

    if (wg_ip_literal(host, port, &r->addr, &r->addrlen))
        return true;
    if (host[0] == '[' || !hostname_ok(host))
        return fail(d, "address '%.80s' is neither an IP literal nor a host name", host);
    if (!d->allow_hosts)
        return fail(d, "address '%.80s' is a host name (not resolved here)", host);
    if (h->n == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 4;
        struct wg_record_host *v = realloc(h->v, cap * sizeof *v);
        if (!v)
            return fail(d, "out of memory");
        h->v = v;
        h->cap = cap;
    }
    if (!(h->v[h->n].name = strdup(host)))
        return fail(d, "out of memory");
    h->v[h->n].index = d->recs.n;
    h->v[h->n].port = port;
    h->n++;
    memset(&r->addr, 0, sizeof r->addr);
    r->addrlen = 0;
    return true;
}

/* ---- JSON fields ------------------------------------------------------------ */

static bool json_port(struct decode *d, json_t *v, uint16_t *port)
{
    if (json_is_integer(v) && json_integer_value(v) >= 1 && json_integer_value(v) <= 65535) {
        *port = (uint16_t)json_integer_value(v);
        return true;
    }
    if (json_is_string(v) && port_text(json_string_value(v), port))
        return true;
    return fail(d, "port must be an integer 1..65535");
}

static bool json_weight(struct decode *d, json_t *v, uint32_t *weight)
{
    if (!v || json_is_null(v))
        return true;
    if (!json_is_integer(v) || json_integer_value(v) < 0 ||
        json_integer_value(v) > WG_WEIGHT_MAX)
        return fail(d, "weight must be an integer 0..%d", WG_WEIGHT_MAX);
    *weight = (uint32_t)json_integer_value(v);
    return true;
}

/* metadata: an object is kept as compact JSON text; absent/null: none. */
static bool json_metadata(struct decode *d, json_t *v, bool strict, char **out)
{
    *out = NULL;
    if (!v || json_is_null(v) || (json_is_object(v) && json_object_size(v) == 0))
        return true;
    if (!json_is_object(v))
        return strict ? fail(d, "metadata must be an object") : true;
    if (!(*out = json_dumps(v, JSON_COMPACT | JSON_SORT_KEYS)))
        return fail(d, "out of memory");
    return true;
}

/* Native JSON may carry zone and priority next to the address: they are
 * kept in the metadata object (where every other format has them), the
 * top-level value winning. */
static bool native_metadata(struct decode *d, json_t *o, char **out)
{
    json_t *zone = json_object_get(o, "zone"), *prio = json_object_get(o, "priority");
    json_t *md = json_object_get(o, "metadata"), *copy;

    if (!zone && !prio)
        return json_metadata(d, md, true, out);
    if (md && !json_is_null(md) && !json_is_object(md))
        return fail(d, "metadata must be an object");
    if (zone && !json_is_string(zone))
        return fail(d, "zone must be a string");
    if (prio && !(json_is_integer(prio) && json_integer_value(prio) >= 0 &&
                  json_integer_value(prio) <= WG_PRIORITY_MAX))
        return fail(d, "priority must be an integer 0..%d", WG_PRIORITY_MAX);
    copy = json_is_object(md) ? json_copy(md) : json_object();
    if (!copy || (zone && json_object_set(copy, "zone", zone) != 0) ||
        (prio && json_object_set(copy, "priority", prio) != 0)) {
        json_decref(copy);
        return fail(d, "out of memory");
    }
    bool ok = json_metadata(d, copy, true, out);
    json_decref(copy);
    return ok;
}

void wg_record_locality(const char *metadata, char zone[WG_ZONE_MAX + 1], unsigned *priority)
{
    zone[0] = '\0';
    *priority = 0;
    if (!metadata || (!strstr(metadata, "\"zone\"") && !strstr(metadata, "\"priority\"")))
        return;
    json_t *o = json_loads(metadata, 0, NULL);
    /* Curator keeps the service's own data in "payload": Spring Cloud
     * writes {"payload":{"metadata":{"zone":..}}}, others {"payload":{"zone":..}}. */
    json_t *pl = json_object_get(o, "payload"), *plm = json_object_get(pl, "metadata");
    json_t *src = json_object_get(o, "zone") || json_object_get(o, "priority") ? o
                  : json_object_get(pl, "zone") || json_object_get(pl, "priority") ? pl
                  : plm;
    json_t *z = json_object_get(src, "zone"), *p = json_object_get(src, "priority");
    if (json_is_string(z) && json_string_length(z) <= WG_ZONE_MAX &&
        !memchr(json_string_value(z), '\0', json_string_length(z)))
        memcpy(zone, json_string_value(z), json_string_length(z) + 1);
    if (json_is_integer(p) && json_integer_value(p) >= 0 &&
        json_integer_value(p) <= WG_PRIORITY_MAX)
        *priority = (unsigned)json_integer_value(p);
    else if (json_is_string(p)) {
        const char *t = json_string_value(p);
        if (t[0] >= '0' && t[0] <= '9' && (!t[1] || (t[1] >= '0' && t[1] <= '9' && !t[2]))) {
            unsigned n = (unsigned)atoi(t);
            *priority = n <= WG_PRIORITY_MAX ? n : 0;
        }
    }
    json_decref(o);
}

static const char *json_text(json_t *obj, const char *name)
{
    json_t *v = json_object_get(obj, name);

    return json_is_string(v) ? json_string_value(v) : NULL;
}

/* metadata.protocol, when metadata is an object holding a known word; any
 * other metadata says nothing (it is free-form in every format). */
static uint8_t metadata_protocol(json_t *md)
{
    json_t *v = json_is_object(md) ? json_object_get(md, "protocol") : NULL;
    return json_is_string(v) ? wg_record_protocol_word(json_string_value(v)) : WG_RECORD_PROTO_UNSET;
}

/* Mark the record just appended. */
static bool mark_last(struct decode *d, bool ok, uint8_t protocol)
{
    if (ok && d->recs.n)
        d->recs.v[d->recs.n - 1].protocol = protocol;
    return ok;
}

/* Append one record (takes `metadata`). */
static bool add_record(struct decode *d, const char *id, const char *host, uint16_t port,
                       uint32_t weight, char *metadata)
{
    struct wg_record r;

    memset(&r, 0, sizeof r);
    r.weight = weight;
    r.metadata = metadata;
    if (!id[0]) {
        free(metadata);
        return fail(d, "empty instance id");
    }
    for (size_t i = 0; i < d->recs.n; i++)
        if (strcmp(d->recs.v[i].id, id) == 0) {
            free(metadata);
            return fail(d, "duplicate instance id '%.80s'", id);
        }
    if (!set_address(d, &r, host, port)) {
        free(metadata);
        return false;
    }
    r.service = strdup(d->service);
    r.id = strdup(id);
    if (!r.service || !r.id) {
        wg_record_free(&r);
        return fail(d, "out of memory");
    }
    return wg_record_set_push(&d->recs, &r) || fail(d, "out of memory");
}

/* A "host:port" string with an optional weight and metadata. */
static bool add_hostport(struct decode *d, const char *id, const char *hostport,
                         uint32_t weight, char *metadata)
{
    char host[HOSTPORT_MAX];
    uint16_t port;

    if (!split_hostport(hostport, host, sizeof host, &port)) {
        free(metadata);
        return fail(d, "address '%.80s' is not host:port or [v6]:port", hostport);
    }
    return add_record(d, id, host, port, weight, metadata);
}

/* ---- formats ------------------------------------------------------------------ */

/* {"address":"10.0.0.5","port":8080,...}; address may be host:port when
 * there is no port field. */
static bool decode_native(struct decode *d, json_t *o)
{
    const char *address = json_text(o, "address");
    json_t *port_v = json_object_get(o, "port");
    uint32_t weight = WG_WEIGHT_DEFAULT;
    uint16_t port;
    char *md;

    json_t *proto_v = json_object_get(o, "protocol");
    uint8_t proto = metadata_protocol(json_object_get(o, "metadata"));

    if (!address)
        return fail(d, "native: address must be a string");
    if (proto_v && !json_is_null(proto_v)) {
        /* The value's own field is strict, unlike free-form metadata. */
        proto = json_is_string(proto_v) ? wg_record_protocol_word(json_string_value(proto_v))
                                        : WG_RECORD_PROTO_UNSET;
        if (proto == WG_RECORD_PROTO_UNSET)
            return fail(d, "native: protocol must be grpc, h2c, h2, http2, http or http1");
    }
    if (!json_weight(d, json_object_get(o, "weight"), &weight) || !native_metadata(d, o, &md))
        return false;
    if (!port_v)
        return mark_last(d, add_hostport(d, d->key_id, address, weight, md), proto);
    if (!json_port(d, port_v, &port)) {
        free(md);
        return false;
    }
    return mark_last(d, add_record(d, d->key_id, address, port, weight, md), proto);
}

static bool decode_skydns(struct decode *d, json_t *o)
{
    const char *host = json_text(o, "host");
    uint16_t port;

    if (!host)
        return fail(d, "skydns: host must be a string");
    if (!json_port(d, json_object_get(o, "port"), &port))
        return false;
    return add_record(d, d->key_id, host, port, WG_WEIGHT_DEFAULT, NULL);
}

static bool decode_endpoints(struct decode *d, json_t *o)
{
    const char *addr = json_text(o, "Addr");
    json_t *op = json_object_get(o, "Op");
    char *md;

    if (!addr)
        return fail(d, "endpoints: Addr must be a string");
    if (op && !(json_is_integer(op) && json_integer_value(op) == 0))
        return fail(d, "endpoints: Op must be 0 (Add)");
    if (!json_metadata(d, json_object_get(o, "Metadata"), false, &md))
        return false;
    return mark_last(d, add_hostport(d, d->key_id, addr, WG_WEIGHT_DEFAULT, md),
                     metadata_protocol(json_object_get(o, "Metadata")));
}

/* One go-micro node: {"id","address":"h:p","metadata"} (v2+), or
 * {"id","address":"h","port":N} (v1). */
static bool decode_micro_node(struct decode *d, json_t *node)
{
    const char *id = json_text(node, "id"), *address = json_text(node, "address");
    json_t *port_v = json_object_get(node, "port");
    uint16_t port;
    char *md;

    if (!json_is_object(node) || !id || !address)
        return fail(d, "go-micro: each node needs a string id and address");
    uint8_t proto = metadata_protocol(json_object_get(node, "metadata"));
    if (!json_metadata(d, json_object_get(node, "metadata"), false, &md))
        return false;
    if (!port_v || (json_is_integer(port_v) && json_integer_value(port_v) == 0))
        return mark_last(d, add_hostport(d, id, address, WG_WEIGHT_DEFAULT, md), proto);
    if (!json_port(d, port_v, &port)) {
        free(md);
        return false;
    }
    return mark_last(d, add_record(d, id, address, port, WG_WEIGHT_DEFAULT, md), proto);
}

static bool decode_micro(struct decode *d, json_t *o)
{
    json_t *nodes = json_object_get(o, "nodes");

    if (!json_is_array(nodes) || json_array_size(nodes) == 0)
        return fail(d, "go-micro: nodes must be a non-empty array");
    for (size_t i = 0; i < json_array_size(nodes); i++)
        if (!decode_micro_node(d, json_array_get(nodes, i)))
            return false;
    return true;
}

/* The host:port of a Kratos endpoint "SCHEME://host:port[/...][?...]", or
 * NULL when `e` does not use `scheme` ("http://", "grpc://"). */
static const char *kratos_hostport(const char *e, const char *scheme, char *out, size_t len,
                                   bool *too_long)
{
    size_t sl = strlen(scheme);
    if (!e || strncasecmp(e, scheme, sl) != 0)
        return NULL;
    size_t n = strcspn(e + sl, "/?#");
    if (n >= len) {
        *too_long = true;
        return NULL;
    }
    memcpy(out, e + sl, n);
    out[n] = '\0';
    return out;
}

/* Kratos: the first http:// endpoint (HTTP/1.1), and the first grpc://
 * one beside it (r->grpc_addr, an IP literal; a host name there is
 * ignored); without an http:// endpoint the grpc:// one is the address
 * (HTTP/2, r->grpc_endpoint). */
static bool decode_kratos(struct decode *d, json_t *o)
{
    json_t *eps = json_object_get(o, "endpoints");
    char http[HOSTPORT_MAX], grpc[HOSTPORT_MAX];
    const char *h = NULL, *g = NULL;
    bool too_long = false;
    char *md;

    if (!json_is_array(eps))
        return fail(d, "kratos: endpoints must be an array");
    for (size_t i = 0; i < json_array_size(eps); i++) {
        const char *e = json_string_value(json_array_get(eps, i));
        if (!h)
            h = kratos_hostport(e, "http://", http, sizeof http, &too_long);
        if (!g)
            g = kratos_hostport(e, "grpc://", grpc, sizeof grpc, &too_long);
        if (too_long)
            return fail(d, "kratos: endpoint too long");
    }
    if (!h && !g)
        return fail(d, "kratos: no http:// or grpc:// endpoint");
    if (!json_metadata(d, json_object_get(o, "metadata"), false, &md))
        return false;
    if (!add_hostport(d, d->key_id, h ? h : g, WG_WEIGHT_DEFAULT, md))
        return false;
    struct wg_record *r = &d->recs.v[d->recs.n - 1];
    r->protocol = h ? WG_RECORD_PROTO_HTTP1 : WG_RECORD_PROTO_HTTP2;
    r->grpc_endpoint = !h;
    char host[HOSTPORT_MAX];
    uint16_t port;
    if (h && g && split_hostport(g, host, sizeof host, &port) &&
        !wg_ip_literal(host, port, &r->grpc_addr, &r->grpc_addrlen))
        r->grpc_addrlen = 0;
    return true;
}

/* Curator's UriSpec {"parts":[{"value":"http","variable":false},...]} as
 * one string, variables as {name}. NULL when absent or not that shape. */
static char *curator_uri_spec(json_t *spec)
{
    json_t *parts = json_object_get(spec, "parts");
    char buf[512];
    size_t n = 0;

    if (!json_is_array(parts))
        return NULL;
    for (size_t i = 0; i < json_array_size(parts); i++) {
        json_t *p = json_array_get(parts, i);
        const char *v = json_text(p, "value");
        bool var = json_is_true(json_object_get(p, "variable"));
        int k = v ? snprintf(buf + n, sizeof buf - n, var ? "{%s}" : "%s", v) : 0;
        if (k < 0 || (size_t)k >= sizeof buf - n)
            return NULL;
        n += (size_t)k;
    }
    return strdup(buf);
}

static bool curator_port(json_t *v, uint16_t *port)
{
    if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > 65535)
        return false;
    *port = (uint16_t)json_integer_value(v);
    return true;
}

/* Metadata of a Curator instance: serviceType, sslPort, payload, uriSpec. */
static bool curator_metadata(struct decode *d, json_t *o, char **out)
{
    json_t *md = json_object(), *payload = json_object_get(o, "payload");
    const char *type = json_text(o, "serviceType");
    json_t *ssl = json_object_get(o, "sslPort");
    char *spec = curator_uri_spec(json_object_get(o, "uriSpec"));
    bool ok = md != NULL;

    if (ok && type)
        ok = json_object_set_new(md, "serviceType", json_string(type)) == 0;
    if (ok && json_is_integer(ssl))
        ok = json_object_set(md, "sslPort", ssl) == 0;
    if (ok && payload && !json_is_null(payload))
        ok = json_object_set(md, "payload", payload) == 0;
    if (ok && spec)
        ok = json_object_set_new(md, "uriSpec", json_string(spec)) == 0;
    free(spec);
    *out = NULL;
    if (ok && json_object_size(md))
        ok = (*out = json_dumps(md, JSON_COMPACT | JSON_SORT_KEYS)) != NULL;
    json_decref(md);
    return ok || fail(d, "out of memory");
}

static bool decode_curator(struct decode *d, json_t *o)
{
    static const char *const types[] = { "DYNAMIC", "DYNAMIC_SEQUENTIAL", "STATIC", "PERMANENT" };
    const char *address = json_text(o, "address"), *type = json_text(o, "serviceType");
    json_t *port_v = json_object_get(o, "port"), *ssl_v = json_object_get(o, "sslPort");
    json_t *enabled = json_object_get(o, "enabled");
    uint16_t port = 0, ssl = 0;
    bool has_port, has_ssl, known = false;
    char *md;

    if (!address)
        return fail(d, "curator: address must be a string");
    if (port_v && !json_is_null(port_v) && !curator_port(port_v, &port))
        return fail(d, "curator: port must be null or an integer 1..65535");
    if (ssl_v && !json_is_null(ssl_v) && !curator_port(ssl_v, &ssl))
        return fail(d, "curator: sslPort must be null or an integer 1..65535");
    has_port = port != 0;
    has_ssl = ssl != 0;
    if (!has_port && !has_ssl)
        return fail(d, "curator: neither port nor sslPort is set");
    if (json_object_get(o, "serviceType") && !type)
        return fail(d, "curator: serviceType must be a string");
    for (size_t i = 0; type && i < sizeof types / sizeof *types; i++)
        known |= strcmp(type, types[i]) == 0;
    if (type && !known)
        return fail(d, "curator: unknown serviceType '%.40s'", type);
    if (enabled && !json_is_boolean(enabled))
        return fail(d, "curator: enabled must be true or false");
    if (!curator_metadata(d, o, &md))
        return false;
    return add_record(d, d->key_id, address,
                      (has_ssl && (d->prefer_ssl || !has_port)) ? ssl : port,
                      json_is_false(enabled) ? 0 : WG_WEIGHT_DEFAULT, md);
}

static bool is_curator(json_t *o)
{
    return json_object_get(o, "serviceType") || json_object_get(o, "registrationTimeUTC");
}

static bool decode_json(struct decode *d, const char *value, size_t len,
                        enum wg_record_format *format)
{
    json_error_t err;
    json_t *o = json_loadb(value, len, JSON_REJECT_DUPLICATES, &err);
    bool ok;

    if (!o)
        return fail(d, "not valid JSON: %.80s", err.text);
    if (!json_is_object(o))
        ok = fail(d, "JSON value is not an object");
    else if (is_curator(o))
        ok = (*format = WG_FORMAT_CURATOR, decode_curator(d, o));
    else if (json_object_get(o, "nodes"))
        ok = (*format = WG_FORMAT_GO_MICRO, decode_micro(d, o));
    else if (json_object_get(o, "endpoints"))
        ok = (*format = WG_FORMAT_KRATOS, decode_kratos(d, o));
    else if (json_object_get(o, "Addr"))
        ok = (*format = WG_FORMAT_ENDPOINTS, decode_endpoints(d, o));
    else if (json_object_get(o, "address"))
        ok = (*format = WG_FORMAT_NATIVE, decode_native(d, o));
    else if (json_object_get(o, "host"))
        ok = (*format = WG_FORMAT_SKYDNS, decode_skydns(d, o));
    else
        ok = fail(d, "unknown JSON format (no address, host, Addr, nodes or endpoints)");
    json_decref(o);
    return ok;
}

static bool decode_plain(struct decode *d, const char *value, size_t len)
{
    char text[HOSTPORT_MAX];

    while (len && isspace((unsigned char)value[len - 1]))
        len--;
    if (len == 0)
        return fail(d, "empty value");
    if (len >= sizeof text || memchr(value, '\0', len))
        return fail(d, "value is not host:port");
    memcpy(text, value, len);
    text[len] = '\0';
    return add_hostport(d, d->key_id, text, WG_WEIGHT_DEFAULT, NULL);
}

/* Move the decoded records and hosts to the caller's sets, all or none. */
static bool hand_over(struct decode *d, struct wg_record_set *out, struct wg_record_hosts *hosts)
{
    size_t base = out->n;

    if (hosts && hosts->cap - hosts->n < d->hosts.n) {
        size_t cap = hosts->n + d->hosts.n + 4;
        struct wg_record_host *v = realloc(hosts->v, cap * sizeof *v);
        if (!v)
            return fail(d, "out of memory");
        hosts->v = v;
        hosts->cap = cap;
    }
    for (size_t i = 0; i < d->recs.n; i++) {
        if (!wg_record_set_push(out, &d->recs.v[i])) {
            while (out->n > base)
                wg_record_free(&out->v[--out->n]);
            return fail(d, "out of memory");
        }
    }
    d->recs.n = 0;
    for (size_t i = 0; i < d->hosts.n; i++) {
        hosts->v[hosts->n] = d->hosts.v[i];
        hosts->v[hosts->n++].index += base;
    }
    d->hosts.n = 0;
    return true;
}

/* Key split, then the value decoded by `body` (NULL: detect the format). */
static bool decode_value(struct decode *d, const char *prefix, const char *key, size_t key_len,
                         const char *value, size_t value_len, bool curator_only,
                         struct wg_record_set *out, struct wg_record_hosts *hosts,
                         enum wg_record_format *format)
{
    char *service = NULL, *id = NULL;
    const char *key_why;
    enum wg_record_format f = WG_FORMAT_PLAIN;
    size_t skip = 0;
    bool ok;

    d->allow_hosts = hosts != NULL;
    if (!wg_record_key_split(prefix, key, key_len, &service, &id, &key_why))
        return fail(d, "%s", key_why);
    d->service = service;
    d->key_id = id;
    while (skip < value_len && isspace((unsigned char)value[skip]))
        skip++;
    if (skip < value_len && value[skip] == '{')
        ok = decode_json(d, value, value_len, &f);
    else
        ok = decode_plain(d, value + skip, value_len - skip);
    if (ok && curator_only && f != WG_FORMAT_CURATOR) {
        ok = fail(d, "not a Curator ServiceInstance (%s format)", wg_record_format_name(f));
        wg_record_set_clear(&d->recs);
    }
    ok = ok && hand_over(d, out, hosts);
    if (ok && format)
        *format = f;
    wg_record_set_clear(&d->recs);
    wg_record_hosts_clear(&d->hosts);
    free(service);
    free(id);
    return ok;
}

bool wg_record_decode_etcd(const char *prefix, const char *key, size_t key_len,
                           const char *value, size_t value_len, struct wg_record_set *out,
                           struct wg_record_hosts *hosts, enum wg_record_format *format,
                           char *why, size_t why_len)
{
    return wg_record_decode_zk(prefix, key, key_len, value, value_len, false, false, out, hosts,
                               format, why, why_len);
}

bool wg_record_decode_zk(const char *prefix, const char *key, size_t key_len,
                         const char *value, size_t value_len, bool curator_only,
                         bool prefer_ssl, struct wg_record_set *out,
                         struct wg_record_hosts *hosts, enum wg_record_format *format,
                         char *why, size_t why_len)
{
    struct decode d;

    memset(&d, 0, sizeof d);
    d.why = why;
    d.why_len = why_len;
    d.prefer_ssl = prefer_ssl;
    return decode_value(&d, prefix, key, key_len, value, value_len, curator_only, out, hosts,
                        format);
}
