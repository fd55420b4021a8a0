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
#define HTTP_FUZZ_CAP 64
#include "http_fuzz.h"

struct context {
    enum wg_http_method method;
    bool upgrade;
    uint32_t max_headers;
    uint32_t max_head;
};

static void start_response(struct wg_http_parser *p, struct outcome *o, const void *arg)
{
    const struct context *c = arg;
    wg_http_parser_init_response(p, o->h, c->max_headers, c->max_head, c->method, c->upgrade);
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
    static struct outcome o1;

    for (int msgs = 0; msgs < 8 && n > 0; msgs++) {
        parse_three_ways(&o1, start_response, c, d, n, 48);
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
        {WG_HTTP_GET, false, HTTP_FUZZ_CAP, 0}, {WG_HTTP_HEAD, false, HTTP_FUZZ_CAP, 0},
        {WG_HTTP_CONNECT, false, HTTP_FUZZ_CAP, 0}, {WG_HTTP_GET, true, 3, 80},
    };

    if (size == 0)
        return 0;
    rng_seed(data, size);
    run(&contexts[data[size - 1] % 4], data, size);
    return 0;
}
