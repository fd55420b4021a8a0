/* config_value — value grammar (DESIGN §5) and the error list. */
#include "config_value.h"
#include "waygate/sockaddr.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *wg_uint_reason(const char *s, uint64_t max, uint64_t *out)
{
    uint64_t v = 0;

    if (!*s)
        return "expected an integer";
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '9')
            return "expected an integer";
        if (v > (UINT64_MAX - 9) / 10)
            return "number too large";
        v = v * 10 + (uint64_t)(*p - '0');
    }
    if (v > max)
        return "number too large";
    *out = v;
    return NULL;
}

/* Leading decimal digits of s into *v; returns the first non-digit. */
static const char *read_number(const char *s, uint64_t *v, bool *overflow)
{
    *v = 0;
    *overflow = false;
    for (; *s >= '0' && *s <= '9'; s++) {
        if (*v > (UINT64_MAX - 9) / 10)
            *overflow = true;
        else
            *v = *v * 10 + (uint64_t)(*s - '0');
    }
    return s;
}

const char *wg_duration_reason(const char *s, uint64_t *ms)
{
    static const struct { const char *unit; uint64_t ms; } units[] = {
        { "ms", 1 }, { "s", 1000 }, { "m", 60000 }, { "h", 3600000 },
    };
    uint64_t v;
    bool overflow;
    const char *unit = read_number(s, &v, &overflow);

    if (unit == s)
        return "invalid duration (use a number and a unit: 250ms, 2s, 1m, 1h)";
    if (!*unit)
        return "duration needs a unit (ms, s, m, h)";
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
        if (strcmp(unit, units[i].unit) != 0)
            continue;
        if (overflow || v > WG_DURATION_MAX_MS / units[i].ms)
            return "duration too large (max 8760h)";
        *ms = v * units[i].ms;
        return NULL;
    }
    return "invalid duration (use a number and a unit: 250ms, 2s, 1m, 1h)";
}

const char *wg_size_reason(const char *s, uint64_t *bytes)
{
    uint64_t v, mult = 1;
    bool overflow;
    const char *suffix = read_number(s, &v, &overflow);

    if (suffix == s)
        return "invalid size (use bytes or a k/m suffix: 4096, 32k, 1m)";
    if (*suffix == 'k' || *suffix == 'K')
        mult = 1024;
    else if (*suffix == 'm' || *suffix == 'M')
        mult = 1024 * 1024;
    else if (*suffix)
        return "invalid size (use bytes or a k/m suffix: 4096, 32k, 1m)";
    if (*suffix && suffix[1])
        return "invalid size (use bytes or a k/m suffix: 4096, 32k, 1m)";
    if (overflow || v > WG_SIZE_MAX_BYTES / mult)
        return "size too large (max 1048576m)";
    *bytes = v * mult;
    return NULL;
}

bool wg_ip_literal(const char *s, uint16_t port, struct sockaddr_storage *ss,
                   socklen_t *len)
{
    char host[INET6_ADDRSTRLEN + 2];
    size_t n = strlen(s);

    memset(ss, 0, sizeof *ss);
    if (n >= 2 && s[0] == '[' && s[n - 1] == ']') {
        s++;
        n -= 2;
    }
    if (n == 0 || n >= sizeof host)
        return false;
    memcpy(host, s, n);
    host[n] = '\0';
    struct sockaddr_in *in4 = (struct sockaddr_in *)ss;
    if (inet_pton(AF_INET, host, &in4->sin_addr) == 1) {
        in4->sin_family = AF_INET;
        in4->sin_port = htons(port);
        *len = sizeof *in4;
        return true;
    }
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET6, host, &in6->sin6_addr) == 1) {
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons(port);
        *len = sizeof *in6;
        return true;
    }
    return false;
}

/* Split "host:port" / "[v6]:port" / ":port"; host is "" for ":port". */
static const char *split_host_port(const char *s, char *host, size_t hostlen,
                                   uint16_t *port)
{
    const char *colon;
    uint64_t p;

    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (!close)
            return "invalid address (IPv6 needs brackets: [::1]:8080)";
        colon = close + 1;
        if (*colon != ':')
            return "address needs a port (e.g. [::1]:8080)";
    } else {
        colon = strrchr(s, ':');
        if (!colon)
            return "address needs a port (e.g. 127.0.0.1:8080)";
        if (memchr(s, ':', (size_t)(colon - s)))
            return "invalid address (IPv6 needs brackets: [::1]:8080)";
    }
    if ((size_t)(colon - s) >= hostlen)
        return "invalid address";
    memcpy(host, s, (size_t)(colon - s));
    host[colon - s] = '\0';
    if (wg_uint_reason(colon + 1, 65535, &p) || p == 0)
        return "invalid port (1..65535)";
    *port = (uint16_t)p;
    return NULL;
}

const char *wg_addr_reason(const char *s, struct wg_addr *out)
{
    char host[INET6_ADDRSTRLEN + 4];
    uint16_t port;
    struct wg_addr a;
    const char *why = split_host_port(s, host, sizeof host, &port);

    if (why)
        return why;
    memset(&a, 0, sizeof a);
    if (!host[0]) {
        /* ":8080": all IPv4 interfaces; "[::]:8080" asks for IPv6. */
        struct sockaddr_in *in4 = (struct sockaddr_in *)&a.ss;
        in4->sin_family = AF_INET;
        in4->sin_addr.s_addr = htonl(INADDR_ANY);
        in4->sin_port = htons(port);
        a.len = sizeof *in4;
        snprintf(a.text, sizeof a.text, ":%u", (unsigned)port);
    } else if (wg_ip_literal(host, port, &a.ss, &a.len)) {
        wg_sockaddr_text((struct sockaddr *)&a.ss, a.text, sizeof a.text);
    } else {
        return "host must be an IP literal (e.g. 127.0.0.1:8080, [::1]:8080, :8080)";
    }
    *out = a;
    return NULL;
}

const char *wg_status_reason(const char *s, struct wg_status_ranges *out)
{
    struct wg_status_ranges r = { 0 };
    const char *p = s;

    for (;;) {
        uint64_t lo, hi;
        bool overflow;
        while (*p == ' ')
            p++;
        const char *end = read_number(p, &lo, &overflow);
        if (end == p)
            return "invalid status list (use codes and ranges: 200-299,404)";
        p = end;
        hi = lo;
        if (*p == '-') {
            end = read_number(++p, &hi, &overflow);
            if (end == p)
                return "invalid status list (use codes and ranges: 200-299,404)";
            p = end;
        }
        if (overflow || lo < 100 || lo > 599 || hi < 100 || hi > 599)
            return "status code out of range (100..599)";
        if (lo > hi)
            return "status range start exceeds its end";
        if (r.n == WG_STATUS_RANGES_MAX)
            return "too many status ranges (max 16)";
        r.r[r.n].lo = (uint16_t)lo;
        r.r[r.n].hi = (uint16_t)hi;
        r.n++;
        while (*p == ' ')
            p++;
        if (!*p)
            break;
        if (*p++ != ',')
            return "invalid status list (use codes and ranges: 200-299,404)";
    }
    *out = r;
    return NULL;
}

bool wg_parse_duration(const char *s, uint64_t *ms)
{
    return s && !wg_duration_reason(s, ms);
}

bool wg_parse_size(const char *s, uint64_t *bytes)
{
    return s && !wg_size_reason(s, bytes);
}

bool wg_parse_addr(const char *s, struct wg_addr *out)
{
    return s && !wg_addr_reason(s, out);
}

bool wg_parse_status_ranges(const char *s, struct wg_status_ranges *out)
{
    return s && !wg_status_reason(s, out);
}

bool wg_status_ranges_match(const struct wg_status_ranges *s, int status)
{
    for (unsigned i = 0; i < s->n; i++)
        if (status >= s->r[i].lo && status <= s->r[i].hi)
            return true;
    return false;
}

bool wg_addr_is_loopback(const struct wg_addr *a)
{
    if (a->ss.ss_family == AF_INET) {
        const struct sockaddr_in *in4 = (const struct sockaddr_in *)&a->ss;
        return (ntohl(in4->sin_addr.s_addr) >> 24) == 127;
    }
    if (a->ss.ss_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)&a->ss;
        const uint8_t *b = in6->sin6_addr.s6_addr;
        if (IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr))
            return true;
        return IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr) && b[12] == 127;
    }
    return false;
}

bool wg_addr_same(const struct wg_addr *a, const struct wg_addr *b)
{
    if (a->ss.ss_family != b->ss.ss_family)
        return false;
    if (a->ss.ss_family == AF_INET) {
        const struct sockaddr_in *x = (const struct sockaddr_in *)&a->ss;
        const struct sockaddr_in *y = (const struct sockaddr_in *)&b->ss;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    if (a->ss.ss_family == AF_INET6) {
        const struct sockaddr_in6 *x = (const struct sockaddr_in6 *)&a->ss;
        const struct sockaddr_in6 *y = (const struct sockaddr_in6 *)&b->ss;
        return x->sin6_port == y->sin6_port &&
               memcmp(&x->sin6_addr, &y->sin6_addr, sizeof x->sin6_addr) == 0;
    }
    return false;
}

bool wg_is_token(const char *s)
{
    static const char extra[] = "!#$%&'*+-.^_`|~";

    if (!*s)
        return false;
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        bool alnum = (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') ||
                     (ch >= 'A' && ch <= 'Z');
        if (!alnum && !strchr(extra, ch))
            return false;
    }
    return true;
}

bool wg_service_name_ok(const char *s)
{
    if (!*s || strlen(s) > 255)
        return false;
    for (; *s; s++)
        if ((unsigned char)*s <= ' ' || *s == '/' || *s == 0x7f)
            return false;
    return true;
}
