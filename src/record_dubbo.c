/* record_dubbo — Apache Dubbo provider URLs (see record.h).
 *
 * Dubbo's ZooKeeper registry names each provider node after its URL,
 * percent-encoded as one path segment:
 *   /dubbo/org.example.Users/providers/dubbo%3A%2F%2F10.0.0.5%3A20880%2F...
 * The URL is decoded once; its query values stay as Dubbo wrote them (they
 * are compared, not decoded again). Only what routing needs is read: the
 * address, the interface, weight, disabled/enabled and side; a few names go
 * into the metadata.
 */
#include "waygate/record.h"
#include "waygate/sockaddr.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "config_value.h"

#define DUBBO_URL_MAX 8192

static bool fail(char *why, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static bool fail(char *why, size_t len, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(why, len, fmt, ap);
    va_end(ap);
    return false;
}

static int hex(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Percent-decoding into out (NUL-terminated); false on a bad escape, a NUL
 * byte or an overlong name. */
static bool url_decode(const char *s, size_t n, char *out, size_t out_len)
{
    size_t k = 0;

    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '%') {
            int hi = i + 2 < n ? hex(s[i + 1]) : -1, lo = i + 2 < n ? hex(s[i + 2]) : -1;
            if (hi < 0 || lo < 0)
                return false;
            c = (char)(hi * 16 + lo);
            i += 2;
        }
        if (c == '\0' || k + 1 >= out_len)
            return false;
        out[k++] = c;
    }
    out[k] = '\0';
    return true;
}

/* The value of query parameter `name` (NUL-terminated copy), or NULL. */
static const char *param(const char *query, const char *name, char *buf, size_t len)
{
    size_t nl = strlen(name);

    for (const char *p = query; p && *p;) {
        size_t seg = strcspn(p, "&");
        if (seg > nl && strncmp(p, name, nl) == 0 && p[nl] == '=') {
            size_t vl = seg - nl - 1;
            if (vl >= len)
                return NULL;
            memcpy(buf, p + nl + 1, vl);
            buf[vl] = '\0';
            return buf;
        }
        p += seg;
        if (*p == '&')
            p++;
    }
    return NULL;
}

/* "10.0.0.5:20880" or "[fd00::5]:20880" (n bytes) into an address. */
static bool authority_addr(const char *s, size_t n, struct wg_record *r)
{
    const char *end = s + n, *host = s, *colon;
    char text[64], digits[8];
    size_t hl, dl;
    uint64_t port;

    if (n && s[0] == '[') {
        const char *close = memchr(s, ']', n);
        if (!close || close + 1 >= end || close[1] != ':')
            return false;
        host = s + 1;
        hl = (size_t)(close - host);
        colon = close + 1;
    } else {
        colon = n ? memrchr(s, ':', n) : NULL;
        if (!colon || memchr(s, ':', (size_t)(colon - s)))
            return false;
        hl = (size_t)(colon - s);
    }
    dl = (size_t)(end - colon - 1);
    if (hl == 0 || hl >= sizeof text || dl == 0 || dl >= sizeof digits)
        return false;
    memcpy(text, host, hl);
    text[hl] = '\0';
    memcpy(digits, colon + 1, dl);
    digits[dl] = '\0';
    if (wg_uint_reason(digits, 65535, &port) || port == 0)
        return false;
    return wg_ip_literal(text, (uint16_t)port, &r->addr, &r->addrlen);
}

static bool truthy(const char *v, const char *want)
{
    return v && strcasecmp(v, want) == 0;
}

/* {"protocol","application","version","group"}, those given. */
static char *dubbo_metadata(const char *protocol, const char *query)
{
    static const char *const names[] = { "application", "version", "group" };
    json_t *md = json_object();
    char buf[256];
    char *text = NULL;

    if (!md || json_object_set_new(md, "protocol", json_string(protocol)) < 0)
        goto out;
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        const char *v = param(query, names[i], buf, sizeof buf);
        json_t *s = v && *v ? json_string(v) : NULL;     /* NULL too when not UTF-8 */
        if (s && json_object_set_new(md, names[i], s) < 0)
            goto out;
    }
    text = json_dumps(md, JSON_COMPACT | JSON_SORT_KEYS);
out:
    json_decref(md);
    return text;
}

static const char *map_service(const char *interface, const struct wg_dubbo_map *map, size_t n)
{
    for (size_t i = 0; map && i < n; i++)
        if (strcmp(map[i].interface, interface) == 0)
            return map[i].service;
    return interface;
}

bool wg_record_decode_dubbo(const char *name, size_t name_len, const struct wg_dubbo_map *map,
                            size_t n_map, struct wg_record_set *out, char *why, size_t why_len)
{
    char *url = malloc(DUBBO_URL_MAX), *path_iface = NULL;
    char iface_buf[512], value[64];
    const char *protocol, *rest, *query, *iface, *service, *v;
    struct wg_record r;
    size_t auth_len;
    uint64_t weight = WG_WEIGHT_DEFAULT;
    bool ok = false;

    memset(&r, 0, sizeof r);
    if (!url)
        return fail(why, why_len, "out of memory");
    if (!url_decode(name, name_len, url, DUBBO_URL_MAX)) {
        fail(why, why_len, "dubbo: node name is not a percent-encoded URL");
        goto out;
    }
    if (strncasecmp(url, "dubbo://", 8) == 0)
        protocol = "dubbo", rest = url + 8;
    else if (strncasecmp(url, "tri://", 6) == 0)
        protocol = "tri", rest = url + 6;
    else {
        fail(why, why_len, "dubbo: not a dubbo:// or tri:// URL: '%.60s'", url);
        goto out;
    }
    query = strchr(rest, '?');
    query = query ? query + 1 : "";
    auth_len = strcspn(rest, "/?#");
    for (const char *at = memchr(rest, '@', auth_len); at; at = memchr(rest, '@', auth_len)) {
        auth_len -= (size_t)(at + 1 - rest);        /* user:password@ */
        rest = at + 1;
    }
    if (!authority_addr(rest, auth_len, &r)) {
        fail(why, why_len, "dubbo: address '%.*s' is not IP:PORT", (int)(auth_len > 80 ? 80 : auth_len),
             rest);
        goto out;
    }
    if (rest[auth_len] == '/') {
        size_t pl = strcspn(rest + auth_len + 1, "?#");
        path_iface = strndup(rest + auth_len + 1, pl);
    }
    iface = param(query, "interface", iface_buf, sizeof iface_buf);
    if (!iface || !*iface)
        iface = path_iface;
    if (!iface || !*iface) {
        fail(why, why_len, "dubbo: no interface (neither interface= nor a path)");
        goto out;
    }
    service = map_service(iface, map, n_map);
    if (!wg_service_name_ok(service)) {
        fail(why, why_len, "dubbo: '%.80s' is not a service name", service);
        goto out;
    }
    if ((v = param(query, "side", value, sizeof value)) && !truthy(v, "provider")) {
        fail(why, why_len, "dubbo: side=%.20s is not a provider", v);
        goto out;
    }
    if ((v = param(query, "weight", value, sizeof value)) &&
        wg_uint_reason(v, WG_WEIGHT_MAX, &weight)) {
        fail(why, why_len, "dubbo: weight must be an integer 0..%d, got '%.20s'", WG_WEIGHT_MAX, v);
        goto out;
    }
    if (truthy(param(query, "disabled", value, sizeof value), "true") ||
        truthy(param(query, "enabled", value, sizeof value), "false"))
        weight = 0;
    r.weight = (uint32_t)weight;
    char id[80];
    wg_sockaddr_text((struct sockaddr *)&r.addr, id, sizeof id);
    r.service = strdup(service);
    r.id = strdup(id);
    r.metadata = dubbo_metadata(protocol, query);
    if (!r.service || !r.id || !r.metadata) {
        wg_record_free(&r);
        fail(why, why_len, "out of memory");
        goto out;
    }
    ok = wg_record_set_push(out, &r) || fail(why, why_len, "out of memory");
out:
    free(path_iface);
    free(url);
    return ok;
}
