/* cidr — address ranges for trusted_proxies (DESIGN §10).
 *
 * Promises:
 *  - wg_cidr_parse() accepts "A.B.C.D/N" (N 0-32), "IPV6/N" (N 0-128) and a
 *    bare address (a /32 or /128); bits past the prefix must be zero (so
 *    "10.0.0.1/8" is refused: the writer meant something else). On a refusal
 *    it says why in a static string.
 *  - Matching is pure and allocation-free; an IPv4-mapped IPv6 address
 *    (::ffff:A.B.C.D, what a [::] listener sees from an IPv4 client) matches
 *    as the IPv4 address it carries.
 *  - wg_ip_parse() reads one hop of an X-Forwarded-For list: an IPv4 or IPv6
 *    address, optionally "[v6]", "[v6]:port" or "v4:port".
 */
#ifndef WAYGATE_CIDR_H
#define WAYGATE_CIDR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct wg_ip {
    uint8_t family;                     /* AF_INET or AF_INET6 */
    uint8_t a[16];                      /* network order; IPv4 in the first 4 bytes */
};

struct wg_cidr {
    struct wg_ip ip;
    uint8_t bits;
};

struct wg_cidr_list {
    struct wg_cidr *v;
    size_t n;
    bool set;                           /* written in the file (a listener's overrides) */
};

/* NULL and *out set, or the reason the text is not a range. */
const char *wg_cidr_parse(const char *s, struct wg_cidr *out);
/* false when not an IP socket address. IPv4-mapped IPv6 becomes IPv4. */
bool wg_ip_from_sockaddr(const struct sockaddr *sa, struct wg_ip *out);
/* One X-Forwarded-For hop (see above); false when it is not an address. */
bool wg_ip_parse(const char *s, size_t len, struct wg_ip *out);
bool wg_cidr_match(const struct wg_cidr_list *l, const struct wg_ip *ip);

#endif
