/* http_route — see include/waygate/http_route.h */
#include "waygate/http_route.h"

#include <string.h>

static char lower(char c) { return c >= 'A' && c <= 'Z' ? (char)(c + 32) : c; }

size_t wg_route_host_normalize(const char *host, size_t len, char out[WG_ROUTE_HOST_MAX + 1])
{
    size_t end = len;

    if (len == 0)
        return 0;
    if (host[0] == '[') {                       /* IP literal: up to ']' */
        const char *close = memchr(host, ']', len);
        if (!close)
            return 0;
        end = (size_t)(close - host) + 1;
        if (end < len && host[end] != ':')
            return 0;
    } else {
        const char *colon = memchr(host, ':', len);
        if (colon)
            end = (size_t)(colon - host);
        if (end > 1 && host[end - 1] == '.')
            end--;
    }
    if (end == 0 || end > WG_ROUTE_HOST_MAX)
        return 0;
    for (size_t i = 0; i < end; i++)
        out[i] = lower(host[i]);
    out[end] = '\0';
    return end;
}

bool wg_route_host_match(const struct wg_route *r, const char *h, size_t n)
{
    if (!r->host)
        return true;
    if (n == 0)
        return false;
    size_t rn = strlen(r->host);
    if (!r->host_wildcard)
        return rn == n && memcmp(r->host, h, n) == 0;
    /* ".x": at least one non-empty label before it; never "x" itself. */
    if (n <= rn || memcmp(h + n - rn, r->host, rn) != 0)
        return false;
    size_t label = n - rn;                      /* bytes before ".x" */
    return h[0] != '.' && h[label - 1] != '.';
}

static bool methods_match(const struct wg_route *r, const char *m, size_t len)
{
    if (r->n_methods == 0)
        return true;
    for (size_t i = 0; i < r->n_methods; i++)
        if (strlen(r->methods[i]) == len && memcmp(r->methods[i], m, len) == 0)
            return true;
    return false;
}

static bool headers_match(const struct wg_route *r, const struct wg_http_parser *p,
                          const char *msg)
{
    for (size_t i = 0; i < r->n_headers; i++) {
        const struct wg_route_header *rh = &r->headers[i];
        size_t nlen = strlen(rh->name), vlen = strlen(rh->value);
        bool found = false;
        for (int k = wg_http_find_header(p, msg, rh->name, nlen, 0); k >= 0 && !found;
             k = wg_http_find_header(p, msg, rh->name, nlen, (unsigned)k + 1)) {
            const struct wg_http_span v = p->headers[k].value;
            found = v.len == vlen && memcmp(msg + v.off, rh->value, vlen) == 0;
        }
        if (!found)
            return false;
    }
    return true;
}

static bool path_match(const struct wg_route *r, const char *path, size_t len)
{
    const char *prefix = r->path_prefix ? r->path_prefix : "/";
    size_t n = strlen(prefix);

    if (len == 0) {                             /* "http://h" means "/" */
        path = "/";
        len = 1;
    }
    return n <= len && memcmp(path, prefix, n) == 0;
}

int wg_route_match(const struct wg_route *routes, size_t n, const struct wg_http_parser *p,
                   const char *msg)
{
    const struct wg_http_message *m = &p->msg;
    char host[WG_ROUTE_HOST_MAX + 1];
    size_t hlen = m->has_host ? wg_route_host_normalize(msg + m->host.off, m->host.len, host) : 0;

    for (size_t i = 0; i < n; i++) {
        const struct wg_route *r = &routes[i];
        if (wg_route_host_match(r, host, hlen) &&
            path_match(r, msg + m->path.off, m->path.len) &&
            methods_match(r, msg + m->method_text.off, m->method_text.len) &&
            headers_match(r, p, msg))
            return (int)i;
    }
    return -1;
}

size_t wg_route_strip(const struct wg_route *r, const char *path, size_t len, bool *add_slash)
{
    size_t skip = 0;

    if (r->strip_prefix && r->path_prefix) {
        skip = strlen(r->path_prefix);
        if (skip > len)
            skip = 0;                           /* not the matched route: keep all */
        else if (skip > 0 && r->path_prefix[skip - 1] == '/')
            skip--;                             /* keep the prefix's own '/' */
    }
    *add_slash = skip == len || path[skip] != '/';
    return skip;
}
