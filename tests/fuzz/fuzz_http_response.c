/* fuzz_http_response — libFuzzer harness for response heads and bodies.
 *
 * The last input byte picks the request the response answers (GET, HEAD,
 * CONNECT, or an upgrade request), so one corpus covers every no-body and
 * tunnel rule. Interim (1xx) responses are followed by the next response,
 * as a proxy would parse them. Each head is parsed in one call, one byte per
 * call, and in random pieces from fresh heap copies; all three must agree
 * exactly. Completed heads are checked against the framing rules of RFC 9112
 * §6.3 as promised by waygate/http.h, and their bodies are decoded one-shot
 * and byte by byte with the same result. */
#include "waygate/http.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CAP 64
#define CHECK(c) do { if (!(c)) { fprintf(stderr, "%s:%d: check failed: %s\n", \
                                          __FILE__, __LINE__, #c); abort(); } } while (0)

struct context {
    enum wg_http_method method;
    bool upgrade;
    uint32_t max_headers;
    uint32_t max_head;
};

struct outcome {
    enum wg_http_result r;
    size_t consumed;
    int status;
    const char *reason;
    struct wg_http_message msg;
    struct wg_http_header h[CAP];
};

static uint64_t rng;

static uint64_t next_rand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static void start(struct wg_http_parser *p, struct outcome *o, const struct context *c)
{
    wg_http_parser_init_response(p, o->h, c->max_headers, c->max_head, c->method, c->upgrade);
}

static void record(struct outcome *o, const struct wg_http_parser *p, enum wg_http_result r,
                   size_t consumed)
{
    o->r = r;
    o->consumed = consumed;
    o->status = p->err_status;
    o->reason = p->err_reason;
    o->msg = p->msg;
}

static void one_shot(struct outcome *o, const struct context *c, const uint8_t *d, size_t n)
{
    struct wg_http_parser p;
    size_t used = 0;
    start(&p, o, c);
    enum wg_http_result r = wg_http_parse_head(&p, (const char *)d, n, &used);
    record(o, &p, r, used);
}

static void bytewise(struct outcome *o, const struct context *c, const uint8_t *d, size_t n)
{
    struct wg_http_parser p;
    enum wg_http_result r = WG_HTTP_AGAIN;
    size_t used = 0;
    start(&p, o, c);
    for (size_t k = 1; k <= n && r == WG_HTTP_AGAIN; k++) {
        r = wg_http_parse_head(&p, (const char *)d, k, &used);
        if (r == WG_HTTP_AGAIN)
            CHECK(used == k);
    }
    record(o, &p, r, used);
}

static void random_pieces(struct outcome *o, const struct context *c, const uint8_t *d, size_t n)
{
    struct wg_http_parser p;
    enum wg_http_result r = WG_HTTP_AGAIN;
    size_t used = 0, k = 0;
    start(&p, o, c);
    while (r == WG_HTTP_AGAIN && k < n) {
        k += 1 + next_rand() % (n - k < 48 ? n - k : 48);
        char *copy = malloc(k);
        CHECK(copy != NULL);
        memcpy(copy, d, k);
        r = wg_http_parse_head(&p, copy, k, &used);
        free(copy);
    }
    record(o, &p, r, used);
}

static void same(const struct outcome *a, const struct outcome *b)
{
    CHECK(a->r == b->r);
    CHECK(a->consumed == b->consumed);
    CHECK(a->status == b->status);
    CHECK(a->reason == b->reason);
    CHECK(memcmp(&a->msg, &b->msg, sizeof a->msg) == 0);
    CHECK(memcmp(a->h, b->h, a->msg.nheaders * sizeof a->h[0]) == 0);
}

/* RFC 9112 §6.3 as waygate/http.h promises it. */
static void check_head(const struct outcome *o, const struct context *c, const uint8_t *d)
{
    const struct wg_http_message *m = &o->msg;
    unsigned st = m->status;
    enum wg_http_framing want;

    CHECK(o->consumed >= 4 && memcmp(d + o->consumed - 4, "\r\n\r\n", 4) == 0);
    for (size_t i = 0; i < o->consumed; i++) {
        if (d[i] == '\n')
            CHECK(i > 0 && d[i - 1] == '\r');
        if (d[i] == '\r')
            CHECK(d[i + 1] == '\n');
    }
    CHECK(memcmp(d, "HTTP/1.", 7) == 0 && (m->version == 10 || m->version == 11));
    CHECK(st >= 100 && st <= 999);
    CHECK(d[9] - '0' == (int)(st / 100) && d[10] - '0' == (int)(st / 10 % 10) &&
          d[11] - '0' == (int)(st % 10));
    CHECK(m->reason.off + m->reason.len <= o->consumed);
    CHECK(!(m->has_content_length && m->has_transfer_encoding));
    CHECK(!m->has_transfer_encoding || m->chunked);
    if (st == 101)
        want = WG_HTTP_BODY_TUNNEL;
    else if (st < 200 || c->method == WG_HTTP_HEAD || st == 204 || st == 304)
        want = WG_HTTP_BODY_NONE;
    else if (c->method == WG_HTTP_CONNECT && st < 300)
        want = WG_HTTP_BODY_TUNNEL;
    else
        want = m->chunked ? WG_HTTP_BODY_CHUNKED : m->has_content_length ? WG_HTTP_BODY_LENGTH
                                                                        : WG_HTTP_BODY_UNTIL_CLOSE;
    CHECK(m->framing == want);
    CHECK(st != 101 || (c->upgrade && m->upgrade));
    CHECK(m->interim == (st < 200 && st != 101));
    if (want == WG_HTTP_BODY_TUNNEL || want == WG_HTTP_BODY_UNTIL_CLOSE)
        CHECK(!m->keep_alive);
    else
        CHECK(m->keep_alive == (m->version == 11 ? !m->conn_close
                                                 : m->conn_keep_alive && !m->conn_close));
    for (unsigned i = 0; i < m->nheaders; i++)
        CHECK(o->h[i].name.len > 0 && d[o->h[i].name.off + o->h[i].name.len] == ':');
}

static void body(const struct wg_http_message *m, const uint8_t *d, size_t n)
{
    struct wg_http_body a, b;
    struct wg_http_body_step st;
    enum wg_http_result ra = WG_HTTP_AGAIN, rb = WG_HTTP_AGAIN;
    size_t off = 0, offb = 0;

    wg_http_body_init(&a, m->framing, m->content_length, 0);
    wg_http_body_init(&b, m->framing, m->content_length, 0);
    while (ra == WG_HTTP_AGAIN && off < n) {
        ra = wg_http_body_parse(&a, (const char *)d + off, n - off, &st);
        CHECK(st.consumed <= n - off && st.data_off + st.data_len <= st.consumed);
        CHECK(ra != WG_HTTP_AGAIN || st.consumed > 0);
        off += st.consumed;
    }
    for (size_t k = 0; k < n && rb == WG_HTTP_AGAIN; k++) {
        rb = wg_http_body_parse(&b, (const char *)d + k, 1, &st);
        offb += st.consumed;
    }
    CHECK(ra == rb && off == offb && a.err_reason == b.err_reason && a.payload == b.payload);
    if (m->framing == WG_HTTP_BODY_UNTIL_CLOSE || m->framing == WG_HTTP_BODY_TUNNEL)
        CHECK(ra == WG_HTTP_AGAIN && off == n && wg_http_body_eof(&a) == WG_HTTP_DONE);
}

static void run(const struct context *c, const uint8_t *d, size_t n)
{
    static struct outcome o1, o2, o3;

    for (int msgs = 0; msgs < 8 && n > 0; msgs++) {
        one_shot(&o1, c, d, n);
        bytewise(&o2, c, d, n);
        same(&o1, &o2);
        random_pieces(&o3, c, d, n);
        same(&o1, &o3);
        if (o1.r == WG_HTTP_ERROR)
            CHECK(o1.reason && (o1.status == 400 || o1.status == 431 || o1.status == 501 ||
                                o1.status == 505));
        if (o1.r != WG_HTTP_DONE)
            return;
        check_head(&o1, c, d);
        d += o1.consumed;
        n -= o1.consumed;
        if (!o1.msg.interim) {
            body(&o1.msg, d, n);
            return;
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const struct context contexts[] = {
        {WG_HTTP_GET, false, CAP, 0}, {WG_HTTP_HEAD, false, CAP, 0},
        {WG_HTTP_CONNECT, false, CAP, 0}, {WG_HTTP_GET, true, 3, 80},
    };

    if (size == 0)
        return 0;
    rng = 0x9e3779b97f4a7c15ull ^ size;
    for (size_t i = 0; i < size && i < 64; i++)
        rng = (rng ^ data[i]) * 0x100000001b3ull;
    if (rng == 0)
        rng = 1;
    run(&contexts[data[size - 1] % 4], data, size);
    return 0;
}
