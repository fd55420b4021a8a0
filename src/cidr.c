/* cidr — see include/waygate/cidr.h */
#include "waygate/cidr.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

static const uint8_t v4_mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };

static void unmap(struct wg_ip *ip)
{
    if (ip->family == AF_INET6 && memcmp(ip->a, v4_mapped, 12) == 0) {
        memmove(ip->a, ip->a + 12, 4);
        memset(ip->a + 4, 0, 12);
        ip->family = AF_INET;
    }
}

static bool text_ip(const char *s, struct wg_ip *out)
{
    memset(out, 0, sizeof *out);
    if (inet_pton(AF_INET, s, out->a) == 1) {
        out->family = AF_INET;
        return true;
    }
    if (inet_pton(AF_INET6, s, out->a) == 1) {
        out->family = AF_INET6;
        return true;
    }
    return false;
}

const char *wg_cidr_parse(const char *s, struct wg_cidr *out)
{
    char addr[64];
    const char *slash = strchr(s, '/');
    size_t n = slash ? (size_t)(slash - s) : strlen(s);
    if (n == 0 || n >= sizeof addr)
        return "expected an address or ADDRESS/BITS";
    memcpy(addr, s, n);
    addr[n] = '\0';
    if (!text_ip(addr, &out->ip))
        return "not an IPv4 or IPv6 address";
    unsigned max = out->ip.family == AF_INET ? 32 : 128, bits = max;
    if (slash) {
        const char *b = slash + 1;
        if (!*b || strlen(b) > 3 || b[strspn(b, "0123456789")] != '\0' || (b[0] == '0' && b[1]))
            return "the prefix length must be a number";
        bits = (unsigned)atoi(b);
        if (bits > max)
            return out->ip.family == AF_INET ? "an IPv4 prefix length is at most 32"
                                             : "an IPv6 prefix length is at most 128";
    }
    for (unsigned k = bits; k < max; k++)
        if (out->ip.a[k / 8] & (0x80u >> (k % 8)))
            return "address bits set past the prefix length";
    out->bits = (uint8_t)bits;
    if (out->ip.family == AF_INET6 && bits >= 96 && memcmp(out->ip.a, v4_mapped, 12) == 0) {
        unmap(&out->ip);                /* ::ffff:10.0.0.0/104 is 10.0.0.0/8 */
        out->bits = (uint8_t)(bits - 96);
    }
    return NULL;
}

bool wg_ip_from_sockaddr(const struct sockaddr *sa, struct wg_ip *out)
{
    memset(out, 0, sizeof *out);
    if (sa->sa_family == AF_INET) {
        out->family = AF_INET;
        memcpy(out->a, &((const struct sockaddr_in *)sa)->sin_addr, 4);
    } else if (sa->sa_family == AF_INET6) {
        out->family = AF_INET6;
        memcpy(out->a, &((const struct sockaddr_in6 *)sa)->sin6_addr, 16);
        unmap(out);
    } else {
        return false;
    }
    return true;
}

bool wg_ip_parse(const char *s, size_t len, struct wg_ip *out)
{
    char t[64];
    if (len == 0 || len >= sizeof t)
        return false;
    if (s[0] == '[') {                  /* [v6] or [v6]:port */
        const char *e = memchr(s, ']', len);
        if (!e || (e + 1 != s + len && e[1] != ':'))
            return false;
        len = (size_t)(e - s - 1);
        s++;
    } else {
        const char *colon = memchr(s, ':', len);
        if (colon && !memchr(colon + 1, ':', len - (size_t)(colon + 1 - s)))
            len = (size_t)(colon - s);  /* v4:port (one colon: not IPv6) */
    }
    memcpy(t, s, len);
    t[len] = '\0';
    if (!text_ip(t, out))
        return false;
    unmap(out);
    return true;
}

bool wg_cidr_match(const struct wg_cidr_list *l, const struct wg_ip *ip)
{
    for (size_t i = 0; i < l->n; i++) {
        const struct wg_cidr *c = &l->v[i];
        if (c->ip.family != ip->family)
            continue;
        unsigned full = c->bits / 8, rest = c->bits % 8;
        if (memcmp(c->ip.a, ip->a, full) != 0)
            continue;
        if (rest && ((c->ip.a[full] ^ ip->a[full]) & (0xffu << (8 - rest)) & 0xffu))
            continue;
        return true;
    }
    return false;
}
