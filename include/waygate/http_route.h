/* http_route — which route of an http listener a request takes (DESIGN §6).
 *
 * Pure: no I/O, no allocation, no global state. Works on a request head the
 * http parser has accepted (spans into the message bytes), so the proxy and
 * the unit tests feed it exactly the same thing.
 *
 * Promises:
 *  - Routes are tried in order; the first whose every condition holds wins.
 *  - host: the request's Host (or absolute-form authority) is normalised
 *    ASCII-lower-case, with its port and one trailing dot removed; an exact
 *    route host must equal it; a wildcard route "*.x" (stored as ".x" with
 *    host_wildcard) matches one or more labels before ".x", never "x"
 *    itself. A route without host matches any request, with Host or not;
 *    a route with a host never matches a request without one.
 *  - path_prefix: a byte prefix of the raw path (before '?'), no decoding,
 *    no normalisation, case-sensitive. An empty path (absolute form without
 *    a path) is "/".
 *  - methods: the request method text equals one of them (case-sensitive,
 *    as methods are; the config stores them upper-case).
 *  - headers: for each route header, some field line with that name
 *    (case-insensitive) carries exactly that value (OWS-trimmed, case-
 *    sensitive).
 *  - strip_prefix: the matched prefix is removed from the path and the rest
 *    always starts with '/'.
 */
#ifndef WAYGATE_HTTP_ROUTE_H
#define WAYGATE_HTTP_ROUTE_H

#include <stdbool.h>
#include <stddef.h>

#include "waygate/config.h"
#include "waygate/http.h"

/* Longest host name a route can match (RFC 1035 names, IPv6 literals). */
#define WG_ROUTE_HOST_MAX 255

/* Normalise a Host value into `out` (lower-case, port and one trailing dot
 * removed). Returns the length, or 0 when the value is empty, malformed
 * ("[::1" without its bracket) or longer than WG_ROUTE_HOST_MAX. */
size_t wg_route_host_normalize(const char *host, size_t len, char out[WG_ROUTE_HOST_MAX + 1]);

/* Does the normalised host `h` (length n) match route `r`'s host rule? */
bool wg_route_host_match(const struct wg_route *r, const char *h, size_t n);

/* Index of the first of the `n` routes the parsed request head matches, or
 * -1 (the proxy answers 404). `p` has returned DONE on `msg`. */
int wg_route_match(const struct wg_route *routes, size_t n, const struct wg_http_parser *p,
                   const char *msg);

/* The upstream path of a request that took route `r`: the bytes of the raw
 * path from the returned offset on, preceded by '/' when *add_slash is set.
 * Without strip_prefix the offset is 0 (and an empty path gets its '/'). */
size_t wg_route_strip(const struct wg_route *r, const char *path, size_t len, bool *add_slash);

#endif
