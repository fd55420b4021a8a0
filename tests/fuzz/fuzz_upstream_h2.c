/* fuzz_upstream_h2 — libFuzzer harness for the head conversions of
 * upstream_h2.h (the HTTP/2 upstream codec's pure part).
 *
 * First byte even: the rest is an HTTP/1.1 request head; when waygate's
 * parser accepts it, its nv list has the four pseudo headers first, only
 * lower-case names, none of RFC 9113 §8.2.2's connection-specific fields,
 * TE only as "trailers", and every value inside the input.
 * First byte odd: the rest is cut into header fields (names reduced to
 * token characters, values to visible ASCII and spaces, as nghttp2 lets
 * them through from an upstream); the HTTP/1.1 rendering of a response with
 * them and of trailers must parse back with waygate's parser to the same
 * fields (content-length dropped), chunked framing and a complete body. */
#include "waygate/http.h"
#include "waygate/upstream_h2.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(c) do { if (!(c)) { fprintf(stderr, "%s:%d: check failed: %s\n", \
                                          __FILE__, __LINE__, #c); abort(); } } while (0)

static bool is(const nghttp2_nv *v, const char *name)
{
    return v->namelen == strlen(name) && memcmp(v->name, name, v->namelen) == 0;
}

static void request(const char *msg, size_t len)
{
    struct wg_http_header h[64];
    struct wg_http_parser p;
    size_t used;
    wg_http_parser_init_request(&p, h, 64, 0);
    if (wg_http_parse_head(&p, msg, len, &used) != WG_HTTP_DONE)
        return;
    nghttp2_nv nv[80];
    char scratch[16384];
    size_t n = wg_h2_request_nv(&p.msg, h, msg, "http", nv, 80, scratch, sizeof scratch);
    if (!n)
        return;
    CHECK(n >= 4 && is(&nv[0], ":method") && is(&nv[1], ":scheme") &&
          is(&nv[2], ":authority") && is(&nv[3], ":path"));
    for (size_t i = 4; i < n; i++) {
        for (size_t k = 0; k < nv[i].namelen; k++)
            CHECK(!(nv[i].name[k] >= 'A' && nv[i].name[k] <= 'Z') && nv[i].name[k] != ':');
        CHECK(!is(&nv[i], "connection") && !is(&nv[i], "keep-alive") &&
              !is(&nv[i], "proxy-connection") && !is(&nv[i], "transfer-encoding") &&
              !is(&nv[i], "upgrade") && !is(&nv[i], "host"));
        if (is(&nv[i], "te"))
            CHECK(nv[i].valuelen == 8 && strncasecmp((const char *)nv[i].value, "trailers", 8) == 0);
        CHECK((const char *)nv[i].value >= msg && (const char *)nv[i].value + nv[i].valuelen <= msg + len);
    }
}

static void response(const uint8_t *data, size_t len)
{
    static const char token[] = "abcdefghijklmnopqrstuvwxyz0123456789-!#$&'*+.^_`|~";
    char bytes[4096];
    nghttp2_nv nv[32];
    size_t n = 0, used = 0, i = 0;
    while (i + 2 <= len && n < 32) {
        size_t nl = 1 + data[i] % 12, vl = data[i + 1] % 20;
        i += 2;
        if (used + nl + vl > sizeof bytes)
            break;
        char *name = bytes + used, *value = name + nl;
        for (size_t k = 0; k < nl; k++)
            name[k] = token[(i + k < len ? data[i + k] : k) % (sizeof token - 1)];
        for (size_t k = 0; k < vl; k++)
            value[k] = (char)(0x21 + (i + nl + k < len ? data[i + nl + k] : k) % 94);
        if (vl > 2)
            value[vl / 2] = ' ';        /* an inner space, never a leading or trailing one */
        i += nl + vl;
        used += nl + vl;
        nv[n++] = (nghttp2_nv){ (uint8_t *)name, (uint8_t *)value, nl, vl, 0 };
    }
    char out[8192];
    size_t len1 = wg_h2_response_h1(200, nv, n, false, out, sizeof out);
    CHECK(len1);
    size_t k = wg_h2_chunk_head(3, out + len1);
    memcpy(out + len1 + k, "abc\r\n", 5);
    size_t body = len1 + k + 5;
    size_t tl = wg_h2_trailers_h1(nv, n, out + body, sizeof out - body);
    CHECK(tl);
    size_t total = body + tl;
    struct wg_http_header h[64];
    struct wg_http_parser p;
    size_t hl;
    wg_http_parser_init_response(&p, h, 64, 0, WG_HTTP_GET, false);
    enum wg_http_result r = wg_http_parse_head(&p, out, total, &hl);
    /* The head may be refused only for what the parser forbids in any
     * response (a field it treats specially: transfer-encoding, connection
     * tokens, a duplicate content-length...); never for the rendering. */
    if (r != WG_HTTP_DONE)
        return;
    CHECK(hl == len1);
    size_t cl = 0;
    for (size_t j = 0; j < n; j++)
        cl += is(&nv[j], "content-length");
    if (!p.msg.chunked)
        return;                         /* a transfer-encoding field of the input took over */
    CHECK(p.msg.nheaders == n - cl + 1);
    struct wg_http_body b;
    wg_http_body_init(&b, p.msg.framing, 0, 0);
    size_t off = hl, got = 0;
    do {
        struct wg_http_body_step step;
        r = wg_http_body_parse(&b, out + off, total - off, &step);
        got += step.data_len;
        off += step.consumed;
        if (r != WG_HTTP_AGAIN || !step.consumed)
            break;
    } while (off < total);
    if (r == WG_HTTP_DONE)
        CHECK(got == 3 && off == total);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    char *in = malloc(size);
    CHECK(in);
    memcpy(in, data + 1, size - 1);
    if (data[0] % 2 == 0)
        request(in, size - 1);
    else
        response(data + 1, size - 1);
    free(in);
    return 0;
}
