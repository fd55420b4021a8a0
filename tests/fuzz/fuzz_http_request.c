/* fuzz_http_request — libFuzzer harness for request heads and their bodies.
 *
 * For each input and two parser configurations (roomy, and tight limits so
 * that 431 paths are reached), up to 8 pipelined messages are parsed:
 *  - in one call,
 *  - one byte per call (a split at every point),
 *  - in pseudo-random pieces, each call from a fresh heap copy of the prefix
 *    (ASan catches a parser that keeps a pointer into an old buffer);
 * and the three must agree exactly (result, status, reason, offset, message,
 * headers). Completed heads are checked against invariants that restate the
 * strictness promises of waygate/http.h; their bodies are decoded one-shot
 * and byte by byte, which must agree too; and where wg_http_split_head (an
 * h2 upstream's built head) takes a head the parser took, both agree. */
#define HTTP_FUZZ_CAP 100
#include "http_fuzz.h"

struct config {
    uint32_t max_headers;
    uint32_t max_head;
};

static void start_request(struct wg_http_parser *p, struct outcome *o, const void *arg)
{
    const struct config *c = arg;
    wg_http_parser_init_request(p, o->h, c->max_headers, c->max_head);
}

static bool in_head(struct wg_http_span s, size_t head)
{
    return (size_t)s.off + s.len <= head;
}

static bool is_token(const uint8_t *s, size_t n)
{
    static const char extra[] = "!#$%&'*+-.^_`|~";
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || ((s[i] | 0x20) >= 'a' && (s[i] | 0x20) <= 'z') ||
              (s[i] && strchr(extra, s[i]))))
            return false;
    return n > 0;
}

/* The id a field name must have been given. */
static enum wg_http_hdr id_of(const uint8_t *name, size_t n)
{
    static const char *const names[] = {
        [WG_HTTP_HDR_HOST] = "host", [WG_HTTP_HDR_CONTENT_LENGTH] = "content-length",
        [WG_HTTP_HDR_TRANSFER_ENCODING] = "transfer-encoding",
        [WG_HTTP_HDR_CONNECTION] = "connection", [WG_HTTP_HDR_UPGRADE] = "upgrade",
        [WG_HTTP_HDR_EXPECT] = "expect", [WG_HTTP_HDR_KEEP_ALIVE] = "keep-alive",
        [WG_HTTP_HDR_PROXY_CONNECTION] = "proxy-connection", [WG_HTTP_HDR_TE] = "te",
        [WG_HTTP_HDR_TRAILER] = "trailer",
    };
    for (unsigned id = 1; id < sizeof names / sizeof names[0]; id++)
        if (wg_http_name_eq((const char *)name, n, names[id], strlen(names[id])))
            return (enum wg_http_hdr)id;
    return WG_HTTP_HDR_OTHER;
}

/* A completed head keeps the promises of waygate/http.h. */
static void check_head(const struct outcome *o, const uint8_t *d)
{
    const struct wg_http_message *m = &o->msg;
    size_t head = o->consumed;
    unsigned hosts = 0, lengths = 0;

    CHECK(head >= 4 && memcmp(d + head - 4, "\r\n\r\n", 4) == 0);
    for (size_t i = 0; i < head; i++) {         /* only CRLF line endings */
        if (d[i] == '\n')
            CHECK(i > 0 && d[i - 1] == '\r');
        if (d[i] == '\r')
            CHECK(i + 1 < head && d[i + 1] == '\n');
    }
    CHECK(m->version == 10 || m->version == 11);
    CHECK(m->method != WG_HTTP_CONNECT);
    CHECK(is_token(d + m->method_text.off, m->method_text.len));
    CHECK(in_head(m->target, head) && m->target.len > 0);
    for (uint32_t i = 0; i < m->target.len; i++)
        CHECK(d[m->target.off + i] > 0x20 && d[m->target.off + i] < 0x7f &&
              d[m->target.off + i] != '#');
    CHECK(in_head(m->path, head) && in_head(m->query, head));
    if (m->target_form == WG_HTTP_TARGET_ORIGIN)
        CHECK(d[m->path.off] == '/' && m->path.off == m->target.off);
    if (m->target_form == WG_HTTP_TARGET_ABSOLUTE)
        CHECK(m->authority.len > 0 && m->has_host &&
              wg_http_name_eq((const char *)d + m->host.off, m->host.len,
                              (const char *)d + m->authority.off, m->authority.len));
    if (m->target_form == WG_HTTP_TARGET_ASTERISK)
        CHECK(m->method == WG_HTTP_OPTIONS && m->target.len == 1);
    for (unsigned i = 0; i < m->nheaders; i++) {
        const struct wg_http_header *h = &o->h[i];
        CHECK(in_head(h->name, head) && in_head(h->value, head));
        CHECK(is_token(d + h->name.off, h->name.len));
        CHECK(d[h->name.off + h->name.len] == ':');
        for (uint32_t k = 0; k < h->value.len; k++) {
            uint8_t c = d[h->value.off + k];
            CHECK(c == '\t' || (c >= 0x20 && c != 0x7f));
        }
        if (h->value.len)
            CHECK(d[h->value.off] != ' ' && d[h->value.off] != '\t' &&
                  d[h->value.off + h->value.len - 1] != ' ' &&
                  d[h->value.off + h->value.len - 1] != '\t');
        hosts += h->id == WG_HTTP_HDR_HOST;
        lengths += h->id == WG_HTTP_HDR_CONTENT_LENGTH;
        CHECK(id_of(d + h->name.off, h->name.len) == h->id);
    }
    CHECK(hosts <= 1 && lengths <= 1);
    CHECK(m->version == 10 || hosts == 1);
    CHECK(!(m->has_content_length && m->has_transfer_encoding));
    CHECK(!m->has_transfer_encoding || (m->chunked && m->version == 11));
    CHECK(m->framing == (m->chunked ? WG_HTTP_BODY_CHUNKED : m->has_content_length
                         ? WG_HTTP_BODY_LENGTH : WG_HTTP_BODY_NONE));
    CHECK(m->content_length <= UINT64_C(0x7fffffffffffffff));
    CHECK(m->keep_alive == (m->version == 11 ? !m->conn_close
                                             : m->conn_keep_alive && !m->conn_close));
    CHECK(!m->upgrade || (m->version == 11 && m->conn_upgrade));
    CHECK(!m->expect_continue || m->version == 11);
}

/* Decode the body one-shot and byte by byte; returns its length or -1. */
static long body(const struct wg_http_message *m, const uint8_t *d, size_t n)
{
    struct wg_http_body a, b;
    struct wg_http_body_step st;
    enum wg_http_result ra = WG_HTTP_AGAIN, rb = WG_HTTP_AGAIN;
    size_t off = 0, offb = 0;
    uint64_t sum = 0;

    wg_http_body_init(&a, m->framing, m->content_length, 0);
    wg_http_body_init(&b, m->framing, m->content_length, 0);
    while (ra == WG_HTTP_AGAIN && off < n) {
        ra = wg_http_body_parse(&a, (const char *)d + off, n - off, &st);
        CHECK(st.consumed <= n - off && st.data_off + st.data_len <= st.consumed);
        CHECK(ra != WG_HTTP_AGAIN || st.consumed > 0);
        sum += st.data_len;
        off += st.consumed;
    }
    CHECK(sum == a.payload);
    for (size_t k = 0; k < n && rb == WG_HTTP_AGAIN; k++) {
        rb = wg_http_body_parse(&b, (const char *)d + k, 1, &st);
        offb += st.consumed;
    }
    CHECK(ra == rb && off == offb && a.err_reason == b.err_reason && a.payload == b.payload);
    return ra == WG_HTTP_DONE ? (long)off : -1;
}

/* A head the parser took, split as an h2 upstream's built head is
 * (wg_http_split_head): where the split takes it too, it must find what
 * the parser found (it refuses shapes it does not know, never reads them
 * otherwise). */
static void check_split(const struct outcome *o, const struct config *c, const uint8_t *d)
{
    static struct outcome s;
    struct wg_http_parser p;
    start_request(&p, &s, c);
    if (!wg_http_split_head(&p, (const char *)d, o->consumed))
        return;
    const struct wg_http_message *a = &o->msg, *b = &p.msg;
    CHECK(a->version == b->version && a->method == b->method && a->nheaders == b->nheaders);
    CHECK(a->target.off == b->target.off && a->target.len == b->target.len);
    CHECK(a->path.off == b->path.off && a->path.len == b->path.len);
    CHECK(a->has_query == b->has_query && a->query.len == b->query.len);
    CHECK(!a->has_query || a->query.off == b->query.off);
    for (unsigned i = 0; i < a->nheaders; i++) {
        const struct wg_http_header *x = &o->h[i], *y = &s.h[i];
        CHECK(x->name.off == y->name.off && x->name.len == y->name.len && x->id == y->id);
        CHECK(x->value.off == y->value.off && x->value.len == y->value.len);
    }
}

static void run(const struct config *c, const uint8_t *d, size_t n)
{
    static struct outcome o1;

    for (int msgs = 0; msgs < 8 && n > 0; msgs++) {
        parse_three_ways(&o1, start_request, c, d, n, 64);
        if (o1.r == WG_HTTP_ERROR)
            CHECK(o1.reason && (o1.status == 400 || o1.status == 414 || o1.status == 431 ||
                                o1.status == 501 || o1.status == 505));
        if (o1.r != WG_HTTP_DONE)
            return;
        check_head(&o1, d);
        check_split(&o1, c, d);
        d += o1.consumed;
        n -= o1.consumed;
        long used = body(&o1.msg, d, n);
        if (used < 0)
            return;
        d += used;
        n -= (size_t)used;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const struct config configs[] = {{HTTP_FUZZ_CAP, 0}, {4, 96}};

    rng_seed(data, size);
    for (size_t i = 0; i < sizeof configs / sizeof configs[0]; i++)
        run(&configs[i], data, size);
    return 0;
}
