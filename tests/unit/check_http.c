/* check_http — unit tests of the http module (include/waygate/http.h).
 *
 * Every head parse goes through parse_msg(), which parses the message in one
 * call AND one byte per call (from fresh heap copies, so that the parser can
 * keep no pointer into an old buffer) and asserts that both give the same
 * result, status, reason, offset, message and headers. */
#include "waygate/http.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CAP 100

/* For loops in the helpers: a ck_assert records a mark point on every call,
 * which dominates the suite's time; this costs nothing until it fails. */
#define REQUIRE(c) do { if (!(c)) ck_abort_msg("%s:%d: %s", __FILE__, __LINE__, #c); } while (0)

static struct wg_http_header hdrs[CAP];
static struct wg_http_parser P;
static const char *MSG;     /* the message the spans of P refer to */

struct mode {
    bool response;
    enum wg_http_method req_method;
    bool req_upgrade;
    uint32_t max_headers;
    uint32_t max_head;
};

static const struct mode REQ = {false, WG_HTTP_GET, false, CAP, 0};

static void init(struct wg_http_parser *p, struct wg_http_header *h, const struct mode *m)
{
    if (m->response)
        wg_http_parser_init_response(p, h, m->max_headers, m->max_head, m->req_method,
                                     m->req_upgrade);
    else
        wg_http_parser_init_request(p, h, m->max_headers, m->max_head);
}

static enum wg_http_result parse_bytewise(struct wg_http_parser *p, struct wg_http_header *h,
                                          const struct mode *m, const char *s, size_t len,
                                          size_t *consumed)
{
    enum wg_http_result r = WG_HTTP_AGAIN;

    /* Each call gets a fresh copy of the prefix; for long messages only every
     * 256th does (else the copies are quadratic), the others share one. */
    char *shared = malloc(len + 1);
    REQUIRE(shared != NULL);
    memcpy(shared, s, len);
    init(p, h, m);
    *consumed = 0;
    for (size_t n = 1; n <= len && r == WG_HTTP_AGAIN; n++) {
        bool fresh = len <= 2048 || n % 256 == 0;
        char *copy = fresh ? malloc(n) : shared;
        REQUIRE(copy != NULL);
        if (fresh)
            memcpy(copy, s, n);
        r = wg_http_parse_head(p, copy, n, consumed);
        if (fresh)
            free(copy);
        if (r == WG_HTTP_AGAIN)
            REQUIRE(*consumed == n);
    }
    free(shared);
    return r;
}

/* Parse `len` bytes at `s` both ways; leave the one-shot state in P. */
static enum wg_http_result parse_msg(const struct mode *m, const char *s, size_t len,
                                     size_t *consumed)
{
    static struct wg_http_header h2[CAP];
    struct wg_http_parser p2;
    size_t c1, c2;

    init(&P, hdrs, m);
    MSG = s;
    enum wg_http_result r1 = wg_http_parse_head(&P, s, len, &c1);
    enum wg_http_result r2 = parse_bytewise(&p2, h2, m, s, len, &c2);
    REQUIRE(r1 == r2);
    REQUIRE(c1 == c2);
    REQUIRE(P.err_status == p2.err_status);
    REQUIRE(P.err_reason == p2.err_reason);
    REQUIRE(memcmp(&P.msg, &p2.msg, sizeof P.msg) == 0);
    if (P.msg.nheaders)
        REQUIRE(memcmp(hdrs, h2, P.msg.nheaders * sizeof hdrs[0]) == 0);
    if (consumed)
        *consumed = c1;
    return r1;
}

/* 0: DONE, 1: AGAIN, else the error status. */
static int status_of_n(const struct mode *m, const char *s, size_t len)
{
    enum wg_http_result r = parse_msg(m, s, len, NULL);
    if (r == WG_HTTP_DONE)
        return 0;
    if (r == WG_HTTP_AGAIN)
        return 1;
    ck_assert_ptr_nonnull(P.err_reason);
    return P.err_status;
}

static int status_of(const struct mode *m, const char *s)
{
    return status_of_n(m, s, strlen(s));
}

static int req_status(const char *s)
{
    return status_of(&REQ, s);
}

static int resp_status_for(enum wg_http_method method, bool upgrade, const char *s)
{
    struct mode m = {true, method, upgrade, CAP, 0};
    return status_of(&m, s);
}

static int resp_status(const char *s)
{
    return resp_status_for(WG_HTTP_GET, false, s);
}

static bool span_is(struct wg_http_span sp, const char *text)
{
    return sp.len == strlen(text) && memcmp(MSG + sp.off, text, sp.len) == 0;
}

#define ck_span(sp, text) ck_assert_msg(span_is(sp, text), "span %.*s != %s", \
                                        (int)(sp).len, MSG + (sp).off, text)
/* For literals holding NUL bytes. */
#define REQN(st, lit) ck_assert_int_eq(status_of_n(&REQ, lit, sizeof(lit) - 1), st)
#define REQ_IS(st, s) ck_assert_int_eq(req_status(s), st)
#define RESP_IS(st, s) ck_assert_int_eq(resp_status(s), st)
#define H11(hdrs_text) "GET / HTTP/1.1\r\nHost: a\r\n" hdrs_text "\r\n"

/* ---- request line ----------------------------------------------------- */

START_TEST(test_simple_get)
{
    const char *s = "GET /index.html?x=1&y HTTP/1.1\r\nHost: example.com\r\n"
                    "User-Agent:  curl/8.0 \t\r\nAccept: */*\r\n\r\n";
    size_t n;
    ck_assert_int_eq(parse_msg(&REQ, s, strlen(s), &n), WG_HTTP_DONE);
    ck_assert_uint_eq(n, strlen(s));
    const struct wg_http_message *m = &P.msg;
    ck_assert_int_eq(m->method, WG_HTTP_GET);
    ck_span(m->method_text, "GET");
    ck_span(m->target, "/index.html?x=1&y");
    ck_span(m->path, "/index.html");
    ck_span(m->query, "x=1&y");
    ck_assert(m->has_query);
    ck_assert_int_eq(m->target_form, WG_HTTP_TARGET_ORIGIN);
    ck_assert_uint_eq(m->version, 11);
    ck_assert(m->has_host);
    ck_span(m->host, "example.com");
    ck_assert_uint_eq(m->nheaders, 3);
    ck_span(hdrs[1].name, "User-Agent");
    ck_span(hdrs[1].value, "curl/8.0");
    ck_assert_int_eq(hdrs[0].id, WG_HTTP_HDR_HOST);
    ck_assert_int_eq(hdrs[1].id, WG_HTTP_HDR_OTHER);
    ck_assert(m->keep_alive);
    ck_assert(!m->expect_continue);
    ck_assert(!m->upgrade);
    ck_assert_int_eq(m->framing, WG_HTTP_BODY_NONE);
    ck_assert_ptr_null(P.err_reason);
}
END_TEST

START_TEST(test_incomplete_is_again)
{
    ck_assert_int_eq(req_status("GET / HTTP/1.1\r\nHost: a\r\n"), 1);
    ck_assert_int_eq(req_status("GET / HTTP/1.1\r\nHost: a\r\n\r"), 1);
    ck_assert_int_eq(req_status(""), 1);
    ck_assert_int_eq(req_status("\r\n\r\n"), 1);
}
END_TEST

static const struct { const char *text; enum wg_http_method m; bool idem; } methods[] = {
    {"GET", WG_HTTP_GET, true}, {"HEAD", WG_HTTP_HEAD, true}, {"POST", WG_HTTP_POST, false},
    {"PUT", WG_HTTP_PUT, true}, {"DELETE", WG_HTTP_DELETE, true},
    {"OPTIONS", WG_HTTP_OPTIONS, true}, {"PATCH", WG_HTTP_PATCH, false},
    {"TRACE", WG_HTTP_TRACE, true}, {"PROPFIND", WG_HTTP_OTHER, false},
    {"get", WG_HTTP_OTHER, false}, {"M-SEARCH", WG_HTTP_OTHER, false},
    {"GETS", WG_HTTP_OTHER, false}, {"X", WG_HTTP_OTHER, false},
};

START_TEST(test_methods)
{
    char buf[128];
    snprintf(buf, sizeof buf, "%s / HTTP/1.1\r\nHost: h\r\n\r\n", methods[_i].text);
    REQ_IS(0, buf);
    ck_assert_int_eq(P.msg.method, methods[_i].m);
    ck_span(P.msg.method_text, methods[_i].text);
    ck_assert(wg_http_method_idempotent(P.msg.method) == methods[_i].idem);
    if (methods[_i].m != WG_HTTP_OTHER)
        ck_assert_str_eq(wg_http_method_name(methods[_i].m), methods[_i].text);
}
END_TEST

START_TEST(test_method_rules)
{
    REQ_IS(501, "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n");
    ck_assert(!wg_http_method_idempotent(WG_HTTP_CONNECT));
    ck_assert_str_eq(wg_http_method_name(WG_HTTP_CONNECT), "CONNECT");
    ck_assert_str_eq(wg_http_method_name(WG_HTTP_OTHER), "");
    REQ_IS(400, "G(ET / HTTP/1.1\r\nHost: a\r\n\r\n");
    REQ_IS(400, "GE\x01T / HTTP/1.1\r\nHost: a\r\n\r\n");
    REQ_IS(400, "GET\r\n\r\n");
    REQ_IS(400, "\x80GET / HTTP/1.1\r\nHost: a\r\n\r\n");
}
END_TEST

START_TEST(test_request_line_whitespace)
{
    REQ_IS(400, "GET  / HTTP/1.1\r\nHost: a\r\n\r\n");
    REQ_IS(400, "GET /  HTTP/1.1\r\nHost: a\r\n\r\n");
    REQ_IS(400, "GET / HTTP/1.1 \r\nHost: a\r\n\r\n");
    REQ_IS(400, " GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    REQ_IS(400, "GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n");
    REQ_IS(400, "GET /\tHTTP/1.1\r\nHost: a\r\n\r\n");
    REQ_IS(400, "GET / HTTP/1.1\t\r\nHost: a\r\n\r\n");
    REQ_IS(400, "GET /a b HTTP/1.1\r\nHost: a\r\n\r\n");
}
END_TEST

static char *long_request(size_t line_len)
{
    /* "GET /aaa... HTTP/1.1" of exactly line_len bytes */
    size_t target = line_len - strlen("GET  HTTP/1.1");
    char *s = malloc(line_len + 64);
    ck_assert_ptr_nonnull(s);
    strcpy(s, "GET /");
    memset(s + 5, 'a', target - 1);
    strcpy(s + 4 + target, " HTTP/1.1\r\nHost: a\r\n\r\n");
    ck_assert_uint_eq(strstr(s, "\r\n") - s, line_len);
    return s;
}

START_TEST(test_request_line_limit)
{
    char *ok = long_request(WG_HTTP_MAX_REQUEST_LINE);
    char *bad = long_request(WG_HTTP_MAX_REQUEST_LINE + 1);
    REQ_IS(0, ok);
    ck_assert_uint_eq(P.msg.target.len, WG_HTTP_MAX_REQUEST_LINE - 13);
    REQ_IS(414, bad);
    ck_assert_str_eq(P.err_reason, "request line too long");
    memset(bad + 5, 'a', WG_HTTP_MAX_REQUEST_LINE + 10);   /* no CRLF: refused at the cap */
    bad[WG_HTTP_MAX_REQUEST_LINE + 15] = '\0';
    REQ_IS(414, bad);
    ck_assert_uint_eq(P.pos, WG_HTTP_MAX_REQUEST_LINE + 2);
    free(ok);
    free(bad);
}
END_TEST

START_TEST(test_leading_empty_lines)
{
    size_t n;
    const char *s = "\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n";
    ck_assert_int_eq(parse_msg(&REQ, s, strlen(s), &n), WG_HTTP_DONE);
    ck_span(P.msg.method_text, "GET");
    ck_assert_uint_eq(P.msg.method_text.off, 4);
    REQ_IS(400, "\nGET / HTTP/1.1\r\nHost: a\r\n\r\n");
    REQ_IS(400, "\rGET / HTTP/1.1\r\nHost: a\r\n\r\n");
}
END_TEST

START_TEST(test_versions)
{
    REQ_IS(0, "GET / HTTP/1.0\r\n\r\n");
    ck_assert_uint_eq(P.msg.version, 10);
    ck_assert(!P.msg.keep_alive);
    REQ_IS(505, "GET / HTTP/2.0\r\nHost: a\r\n\r\n");
    ck_assert_str_eq(P.err_reason, "unsupported HTTP version");
    REQ_IS(505, "GET / HTTP/1.2\r\nHost: a\r\n\r\n");
    REQ_IS(505, "GET / HTTP/0.9\r\nHost: a\r\n\r\n");
    REQ_IS(505, "GET / HTTP/3.0\r\nHost: a\r\n\r\n");
    REQ_IS(505, "GET /\r\n");
    REQ_IS(505, "GET /index.html?q\r\n");
    REQ_IS(400, "GET / HTTP/x\r\nHost: a\r\n\r\n");
    REQ_IS(400, "GET / HTTP/1.x\r\nHost: a\r\n\r\n");
    REQ_IS(400, "GET / HTTP/1.10\r\nHost: a\r\n\r\n");
    REQ_IS(400, "GET / HTTP/11.1\r\nHost: a\r\n\r\n");
    REQ_IS(400, "GET / HTTP/1\r\nHost: a\r\n\r\n");
    REQ_IS(400, "GET / http/1.1\r\nHost: a\r\n\r\n");
    REQ_IS(400, "GET / HTTPS/1.1\r\nHost: a\r\n\r\n");
    REQ_IS(400, "GET / HTTP/1.1x\r\nHost: a\r\n\r\n");
    REQ_IS(400, "GET /\rX");
}
END_TEST

START_TEST(test_target_chars)
{
    REQ_IS(400, "GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n");
    ck_assert_str_eq(P.err_reason, "fragment in request target");
    REQ_IS(400, "GET /a?b#frag HTTP/1.1\r\nHost: a\r\n\r\n");
    REQ_IS(400, "GET /a\x01 HTTP/1.1\r\nHost: a\r\n\r\n");
    REQ_IS(400, "GET /\x7f HTTP/1.1\r\nHost: a\r\n\r\n");
    REQ_IS(400, "GET /caf\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n");
    REQN(400, "GET /a\0b HTTP/1.1\r\nHost: a\r\n\r\n");
    REQ_IS(400, "GET index.html HTTP/1.1\r\nHost: a\r\n\r\n");
    REQ_IS(400, "GET ?a HTTP/1.1\r\nHost: a\r\n\r\n");
    REQ_IS(0, "GET /a%20b?x=%7B|}^[]\"`<>\\ HTTP/1.1\r\nHost: a\r\n\r\n");
    ck_span(P.msg.path, "/a%20b");
    REQ_IS(0, "GET /p?a?b HTTP/1.1\r\nHost: a\r\n\r\n");
    ck_span(P.msg.path, "/p");
    ck_span(P.msg.query, "a?b");
    REQ_IS(0, "GET /p? HTTP/1.1\r\nHost: a\r\n\r\n");
    ck_assert(P.msg.has_query);
    ck_assert_uint_eq(P.msg.query.len, 0);
}
END_TEST

START_TEST(test_asterisk_form)
{
    REQ_IS(0, "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n");
    ck_assert_int_eq(P.msg.target_form, WG_HTTP_TARGET_ASTERISK);
    ck_span(P.msg.target, "*");
    ck_assert_uint_eq(P.msg.path.len, 0);
    REQ_IS(400, "GET * HTTP/1.1\r\nHost: a\r\n\r\n");
    REQ_IS(400, "OPTIONS *x HTTP/1.1\r\nHost: a\r\n\r\n");
}
END_TEST

START_TEST(test_absolute_form)
{
    REQ_IS(0, "GET http://example.com:8080/a/b?c=d HTTP/1.1\r\nHost: example.com:8080\r\n\r\n");
    const struct wg_http_message *m = &P.msg;
    ck_assert_int_eq(m->target_form, WG_HTTP_TARGET_ABSOLUTE);
    ck_span(m->target, "http://example.com:8080/a/b?c=d");
    ck_span(m->authority, "example.com:8080");
    ck_span(m->path, "/a/b");
    ck_span(m->query, "c=d");
    ck_span(m->host, "example.com:8080");
    REQ_IS(0, "GET HTTPS://Example.COM HTTP/1.1\r\nHost: example.com\r\n\r\n");
    ck_span(P.msg.authority, "Example.COM");
    ck_assert_uint_eq(P.msg.path.len, 0);
    ck_assert(!P.msg.has_query);
    REQ_IS(0, "GET http://h?q HTTP/1.1\r\nHost: h\r\n\r\n");
    ck_assert_uint_eq(P.msg.path.len, 0);
    ck_span(P.msg.query, "q");
    REQ_IS(0, "GET http://[::1]:80/ HTTP/1.1\r\nHost: [::1]:80\r\n\r\n");
    /* HTTP/1.0 without Host: the authority is the host */
    REQ_IS(0, "GET http://legacy.test/x HTTP/1.0\r\n\r\n");
    ck_span(P.msg.host, "legacy.test");
    ck_assert(P.msg.has_host);
}
END_TEST

START_TEST(test_absolute_form_refused)
{
    REQ_IS(400, "GET http://evil.test/ HTTP/1.1\r\nHost: good.test\r\n\r\n");
    ck_assert_str_eq(P.err_reason, "Host header differs from target authority");
    REQ_IS(400, "GET http://a.test:80/ HTTP/1.1\r\nHost: a.test\r\n\r\n");
    REQ_IS(400, "GET http://a.test/ HTTP/1.1\r\n\r\n");
    REQ_IS(400, "GET http://user@a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n");
    ck_assert_str_eq(P.err_reason, "userinfo in request target");
    REQ_IS(400, "GET ftp://a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n");
    REQ_IS(400, "GET http:/a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n");
    REQ_IS(400, "GET http:///x HTTP/1.1\r\nHost: a.test\r\n\r\n");
    REQ_IS(400, "GET http://a b/ HTTP/1.1\r\nHost: a.test\r\n\r\n");
    REQ_IS(400, "GET http://a.test#x HTTP/1.1\r\nHost: a.test\r\n\r\n");
    REQ_IS(400, "GET http+x://a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n");
}
END_TEST

/* ---- header fields ---------------------------------------------------- */

START_TEST(test_field_syntax)
{
    REQ_IS(400, "GET / HTTP/1.1\r\nHost : a\r\n\r\n");
    ck_assert_str_eq(P.err_reason, "whitespace before colon");
    REQ_IS(400, "GET / HTTP/1.1\r\nHost\t: a\r\n\r\n");
    REQ_IS(400, "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n");
    ck_assert_str_eq(P.err_reason, "obs-fold in header section");
    REQ_IS(400, "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n\tc\r\n\r\n");
    REQ_IS(400, "GET / HTTP/1.1\r\n Host: a\r\n\r\n");
    ck_assert_str_eq(P.err_reason, "whitespace before the first header field");
    REQ_IS(400, "GET / HTTP/1.1\r\nHost: a\r\nX(A): b\r\n\r\n");
    REQ_IS(400, "GET / HTTP/1.1\r\nHost: a\r\nX@A: b\r\n\r\n");
    REQ_IS(400, "GET / HTTP/1.1\r\nHost: a\r\nX\xc3\xa9: b\r\n\r\n");
    REQ_IS(400, "GET / HTTP/1.1\r\nHost: a\r\n: b\r\n\r\n");
    ck_assert_str_eq(P.err_reason, "empty header field name");
    REQ_IS(400, "GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n");
    ck_assert_str_eq(P.err_reason, "header field without colon");
    REQ_IS(400, "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x01\r\n\r\n");
    ck_assert_str_eq(P.err_reason, "control character in header field value");
    REQN(400, "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\0c\r\n\r\n");
    REQN(400, "GET / HTTP/1.1\r\nHost: a\r\nX-A: \0\r\n\r\n");
    REQ_IS(400, "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x7f\r\n\r\n");
    REQ_IS(400, "GET / HTTP/1.1\r\nHost: a\r\nX-A: \x1b[0m\r\n\r\n");
}
END_TEST

START_TEST(test_underscore_names_flagged)
{
    /* msg.underscore: a request field name holds '_' (http_proxy drops them) */
    ck_assert_int_eq(req_status("GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: b\r\n\r\n"), 0);
    ck_assert(!P.msg.underscore);
    ck_assert_int_eq(req_status("GET / HTTP/1.1\r\nHost: a\r\nX_Client_Cert_Subject: x\r\n\r\n"), 0);
    ck_assert(P.msg.underscore);
    ck_assert_int_eq(req_status("GET / HTTP/1.1\r\nHost: a\r\nAbcdefghijklmnop_q: x\r\n\r\n"), 0);
    ck_assert(P.msg.underscore);                        /* past the first 8-byte word */
    ck_assert_int_eq(req_status("GET / HTTP/1.1\r\nHost: a\r\nX: under_score\r\n\r\n"), 0);
    ck_assert(!P.msg.underscore);                       /* in a value: not a name */
    ck_assert_int_eq(resp_status("HTTP/1.1 200 OK\r\nX_Y: 1\r\nContent-Length: 0\r\n\r\n"), 0);
    ck_assert(!P.msg.underscore);                       /* responses are not filtered */
}
END_TEST

START_TEST(test_field_values)
{
    REQ_IS(0, "GET / HTTP/1.1\r\nHost: a\r\nX-Tab:\tv\tw\t\r\nX-Empty:\r\nX-Blank:  \t \r\n"
              "X-Obs: caf\xc3\xa9\r\nX-Quote: \"a, b\"\r\n\r\n");
    ck_assert_uint_eq(P.msg.nheaders, 6);
    ck_span(hdrs[1].value, "v\tw");
    ck_span(hdrs[2].value, "");
    ck_span(hdrs[3].value, "");
    ck_span(hdrs[4].value, "caf\xc3\xa9");
    ck_span(hdrs[5].value, "\"a, b\"");
    ck_span(hdrs[5].name, "X-Quote");
}
END_TEST

START_TEST(test_line_endings)
{
    /* bare LF is refused everywhere (documented choice), bare CR too */
    REQ_IS(400, "GET / HTTP/1.1\nHost: a\r\n\r\n");
    REQ_IS(400, "GET / HTTP/1.1\r\nHost: a\n\r\n");
    ck_assert_str_eq(P.err_reason, "bare LF");
    REQ_IS(400, "GET / HTTP/1.1\r\nHost: a\r\n\n");
    REQ_IS(400, "GET / HTTP/1.1\r\nHost:\n\r\n");
    REQ_IS(400, "GET / HTTP/1.1\r\nHost: a\r\nX: b\rc\r\n\r\n");
    ck_assert_str_eq(P.err_reason, "bare CR");
    REQ_IS(400, "GET / HTTP/1.1\rHost: a\r\n\r\n");
    REQ_IS(400, "GET / HTTP/1.1\r\nHost: a\r\n\rX");
    REQ_IS(400, "GET / HTTP/1.1\r\nHost: a\r\r\n\r\n");
    REQ_IS(400, "GET / HTTP/1.1\r\nHost:\r\r\n\r\n");
}
END_TEST

START_TEST(test_host_rules)
{
    REQ_IS(400, "GET / HTTP/1.1\r\n\r\n");
    ck_assert_str_eq(P.err_reason, "missing Host header");
    REQ_IS(400, "GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n");
    ck_assert_str_eq(P.err_reason, "several Host header fields");
    REQ_IS(400, "GET / HTTP/1.1\r\nHost: a\r\nhOST: b\r\n\r\n");
    REQ_IS(400, "GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n");
    REQ_IS(400, "GET / HTTP/1.1\r\nHost: a b\r\n\r\n");
    ck_assert_str_eq(P.err_reason, "invalid Host header");
    REQ_IS(400, "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n");
    REQ_IS(400, "GET / HTTP/1.1\r\nHost: a@b\r\n\r\n");
    REQ_IS(400, "GET / HTTP/1.1\r\nHost: a,b\r\nX: y\r\n\r\n");
    REQ_IS(0, "GET / HTTP/1.0\r\n\r\n");
    ck_assert(!P.msg.has_host);
    REQ_IS(0, "GET / HTTP/1.1\r\nHOST:  [fe80::1%25eth0]:8080 \r\n\r\n");
    ck_span(P.msg.host, "[fe80::1%25eth0]:8080");
    REQ_IS(0, "GET / HTTP/1.1\r\nHost:\r\n\r\n");
    ck_assert(P.msg.has_host);
    ck_assert_uint_eq(P.msg.host.len, 0);
}
END_TEST

START_TEST(test_content_length)
{
    REQ_IS(0, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello");
    ck_assert(P.msg.has_content_length);
    ck_assert_uint_eq(P.msg.content_length, 5);
    ck_assert_int_eq(P.msg.framing, WG_HTTP_BODY_LENGTH);
    REQ_IS(0, "POST / HTTP/1.1\r\nHost: a\r\ncontent-length:\t007 \r\n\r\n");
    ck_assert_uint_eq(P.msg.content_length, 7);
    REQ_IS(0, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n");
    ck_assert_int_eq(P.msg.framing, WG_HTTP_BODY_LENGTH);
    ck_assert_uint_eq(P.msg.content_length, 0);
    REQ_IS(0, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 9223372036854775807\r\n\r\n");
    ck_assert_uint_eq(P.msg.content_length, UINT64_C(9223372036854775807));
    REQ_IS(400, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 9223372036854775808\r\n\r\n");
    ck_assert_str_eq(P.err_reason, "Content-Length too large");
    REQ_IS(400, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n");
    REQ_IS(0, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 000000000000000000000000001\r\n\r\n");
    ck_assert_uint_eq(P.msg.content_length, 1);
}
END_TEST

static const char *const bad_lengths[] = {
    "+5", "-5", "0x5", "5 5", "", "5,", "5, 5", ",5", "5;", "1e3", "5.0", "\"5\"", "٥", "five",
    "5\x01", "0x",
};

START_TEST(test_content_length_malformed)
{
    char buf[160];
    snprintf(buf, sizeof buf, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %s\r\n\r\n",
             bad_lengths[_i]);
    REQ_IS(400, buf);
}
END_TEST

START_TEST(test_content_length_duplicates)
{
    /* documented choice: every duplicate is refused, even an identical one */
    REQ_IS(400, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n");
    ck_assert_str_eq(P.err_reason, "several Content-Length header fields");
    REQ_IS(400, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n");
    REQ_IS(400, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n");
    ck_assert_str_eq(P.err_reason, "invalid Content-Length");
}
END_TEST

START_TEST(test_transfer_encoding_ok)
{
    static const char *const ok[] = {
        "chunked", "Chunked", "CHUNKED", "\tchunked", "chunked ", "  chunked\t ", ", chunked",
        "chunked,", " , chunked , ",
    };
    char buf[160];
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        snprintf(buf, sizeof buf, "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: %s\r\n\r\n",
                 ok[i]);
        REQ_IS(0, buf);
        ck_assert(P.msg.chunked);
        ck_assert(P.msg.has_transfer_encoding);
        ck_assert_int_eq(P.msg.framing, WG_HTTP_BODY_CHUNKED);
    }
}
END_TEST

static const struct { const char *te; int status; } bad_te[] = {
    {"xchunked", 501}, {"chunkedx", 501}, {"gzip, chunked", 501}, {"identity", 501},
    {"gzip", 501}, {"deflate,chunked", 501}, {"chunked, gzip", 400},
    {"chunked, chunked", 400}, {"chunked,chunked", 400}, {"", 400}, {",", 400},
    {"chunked x", 400}, {"chunked;q=1", 400}, {"\"chunked\"", 400}, {"chunked\x0b", 400},
    {"chunked\x01", 400}, {"ch unked", 400}, {"chunked;", 400}, {"chunked, gzip, chunked", 400},
};

START_TEST(test_transfer_encoding_refused)
{
    char buf[160];
    snprintf(buf, sizeof buf, "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: %s\r\n\r\n",
             bad_te[_i].te);
    ck_assert_msg(req_status(buf) == bad_te[_i].status, "TE '%s': got %d (%s)", bad_te[_i].te,
                  P.err_status, P.err_reason ? P.err_reason : "");
}
END_TEST

START_TEST(test_transfer_encoding_rules)
{
    REQ_IS(400, "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
                "Transfer-Encoding: identity\r\n\r\n");
    ck_assert_str_eq(P.err_reason, "chunked is not the final transfer coding");
    REQ_IS(400, "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
                "Transfer-Encoding: chunked\r\n\r\n");
    REQ_IS(501, "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n"
                "Transfer-Encoding: chunked\r\n\r\n");
    REQ_IS(400, "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n");
    ck_assert_str_eq(P.err_reason, "Transfer-Encoding in an HTTP/1.0 message");
    REQ_IS(400, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
                "Transfer-Encoding: chunked\r\n\r\n");
    ck_assert_str_eq(P.err_reason, "both Content-Length and Transfer-Encoding");
    REQ_IS(400, "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
                "Content-Length: 5\r\n\r\n");
    REQ_IS(400, "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n"
                "Content-Length: 5\r\n\r\n");
}
END_TEST

START_TEST(test_header_limits)
{
    char buf[4096];
    size_t n = (size_t)snprintf(buf, sizeof buf, "GET / HTTP/1.1\r\n");
    for (int i = 0; i < CAP; i++)
        n += (size_t)snprintf(buf + n, sizeof buf - n, "%s: %d\r\n", i ? "X-N" : "Host", i);
    strcpy(buf + n, "\r\n");
    REQ_IS(0, buf);
    ck_assert_uint_eq(P.msg.nheaders, CAP);
    strcpy(buf + n, "X-Extra: 1\r\n\r\n");
    REQ_IS(431, buf);
    ck_assert_str_eq(P.err_reason, "too many header fields");

    struct mode none = {false, WG_HTTP_GET, false, 0, 0};
    ck_assert_int_eq(status_of(&none, "GET / HTTP/1.0\r\n\r\n"), 0);
    ck_assert_int_eq(status_of(&none, "GET / HTTP/1.0\r\nX: y\r\n\r\n"), 431);
}
END_TEST

START_TEST(test_header_section_size)
{
    /* header section = "Host: a\r\n" (9) + "X: <v>\r\n" + "\r\n" */
    struct mode small = {false, WG_HTTP_GET, false, CAP, 64};
    char buf[256], v[128];
    memset(v, 'v', sizeof v);
    v[64 - 9 - 2 - 5] = '\0';
    snprintf(buf, sizeof buf, "GET / HTTP/1.1\r\nHost: a\r\nX: %s\r\n\r\n", v);
    ck_assert_int_eq(status_of(&small, buf), 0);
    v[64 - 9 - 2 - 5] = 'v';
    v[64 - 9 - 2 - 4] = '\0';
    snprintf(buf, sizeof buf, "GET / HTTP/1.1\r\nHost: a\r\nX: %s\r\n\r\n", v);
    ck_assert_int_eq(status_of(&small, buf), 431);
    ck_assert_str_eq(P.err_reason, "header section too large");
    ck_assert_uint_eq(P.pos, 16 + 64);
    /* an endless header is refused at the limit, not when it ends */
    ck_assert_int_eq(status_of(&small, "GET / HTTP/1.1\r\nX: vvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvv"
                                       "vvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvv"), 431);
}
END_TEST

START_TEST(test_default_max_head)
{
    /* max_head 0 means WG_HTTP_DEFAULT_MAX_HEAD; above the limit it is clamped */
    struct wg_http_parser q;
    wg_http_parser_init_request(&q, hdrs, CAP, 0);
    ck_assert_uint_eq(q.max_head, WG_HTTP_DEFAULT_MAX_HEAD);
    wg_http_parser_init_request(&q, hdrs, CAP, UINT32_MAX);
    ck_assert_uint_eq(q.max_head, WG_HTTP_LIMIT_MAX_HEAD);
    wg_http_parser_init_request(&q, NULL, CAP, 0);
    ck_assert_uint_eq(q.max_headers, 0);

    size_t fixed = strlen("Host: a\r\nX: \r\n\r\n");
    size_t vlen = WG_HTTP_DEFAULT_MAX_HEAD - fixed;
    char *s = malloc(vlen + 64);
    ck_assert_ptr_nonnull(s);
    int n = sprintf(s, "GET / HTTP/1.1\r\nHost: a\r\nX: ");
    memset(s + n, 'v', vlen);
    strcpy(s + n + vlen, "\r\n\r\n");
    REQ_IS(0, s);
    memset(s + n, 'v', vlen + 1);
    strcpy(s + n + vlen + 1, "\r\n\r\n");
    REQ_IS(431, s);
    free(s);
}
END_TEST

START_TEST(test_shorter_buffer_is_harmless)
{
    /* a caller bug (passing fewer bytes than before) neither crashes nor rewinds */
    const char *s = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    size_t n;
    init(&P, hdrs, &REQ);
    ck_assert_int_eq(wg_http_parse_head(&P, s, 20, &n), WG_HTTP_AGAIN);
    ck_assert_uint_eq(n, 20);
    ck_assert_int_eq(wg_http_parse_head(&P, s, 10, &n), WG_HTTP_AGAIN);
    ck_assert_uint_eq(n, 20);
    ck_assert_int_eq(wg_http_parse_head(&P, s, strlen(s), &n), WG_HTTP_DONE);
    ck_assert_uint_eq(n, strlen(s));
}
END_TEST

/* ---- connection semantics --------------------------------------------- */

START_TEST(test_keep_alive)
{
    REQ_IS(0, "GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    ck_assert(P.msg.keep_alive);
    REQ_IS(0, "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    ck_assert(!P.msg.keep_alive);
    ck_assert(P.msg.conn_close);
    REQ_IS(0, "GET / HTTP/1.1\r\nHost: a\r\nConnection: Keep-Alive, CLOSE\r\n\r\n");
    ck_assert(!P.msg.keep_alive);
    REQ_IS(0, "GET / HTTP/1.0\r\n\r\n");
    ck_assert(!P.msg.keep_alive);
    REQ_IS(0, "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    ck_assert(P.msg.keep_alive);
    ck_assert(P.msg.conn_keep_alive);
    REQ_IS(0, "GET / HTTP/1.0\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n");
    ck_assert(!P.msg.keep_alive);
    REQ_IS(0, "GET / HTTP/1.1\r\nHost: a\r\nConnection: closed, x-close\r\n\r\n");
    ck_assert(P.msg.keep_alive);
    REQ_IS(400, "GET / HTTP/1.1\r\nHost: a\r\nConnection: a b\r\n\r\n");
    ck_assert_str_eq(P.err_reason, "invalid Connection header");
    REQ_IS(400, "GET / HTTP/1.1\r\nHost: a\r\nConnection: \"close\"\r\n\r\n");
}
END_TEST

START_TEST(test_expect_continue)
{
    REQ_IS(0, "PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n");
    ck_assert(P.msg.expect_continue);
    REQ_IS(0, "PUT / HTTP/1.1\r\nHost: a\r\nExpect: foo, 100-Continue\r\n\r\n");
    ck_assert(P.msg.expect_continue);
    REQ_IS(0, "PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-continuex\r\n\r\n");
    ck_assert(!P.msg.expect_continue);
    REQ_IS(0, "PUT / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n");
    ck_assert(!P.msg.expect_continue);
}
END_TEST

START_TEST(test_upgrade_request)
{
    REQ_IS(0, "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\n"
              "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n");
    ck_assert(P.msg.upgrade);
    ck_assert(P.msg.conn_upgrade);
    ck_assert_int_eq(hdrs[2].id, WG_HTTP_HDR_UPGRADE);
    REQ_IS(0, "GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n");
    ck_assert(!P.msg.upgrade);
    REQ_IS(0, "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\n\r\n");
    ck_assert(!P.msg.upgrade);
    REQ_IS(0, "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade:\r\n\r\n");
    ck_assert(!P.msg.upgrade);
    REQ_IS(0, "GET /ws HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n");
    ck_assert(!P.msg.upgrade);
}
END_TEST

/* ---- helpers ---------------------------------------------------------- */

START_TEST(test_header_ids_and_find)
{
    const char *s = "GET / HTTP/1.1\r\nhost: a\r\nCONTENT-LENGTH: 0\r\nConnection: close, X-Hop\r\n"
                    "Keep-Alive: 5\r\nProxy-Connection: x\r\nTE: trailers\r\nTrailer: X\r\n"
                    "X-Hop: 1\r\nExpect: x\r\nx-hop: 2\r\n\r\n";
    REQ_IS(0, s);
    static const enum wg_http_hdr ids[] = {
        WG_HTTP_HDR_HOST, WG_HTTP_HDR_CONTENT_LENGTH, WG_HTTP_HDR_CONNECTION,
        WG_HTTP_HDR_KEEP_ALIVE, WG_HTTP_HDR_PROXY_CONNECTION, WG_HTTP_HDR_TE,
        WG_HTTP_HDR_TRAILER, WG_HTTP_HDR_OTHER, WG_HTTP_HDR_EXPECT, WG_HTTP_HDR_OTHER,
    };
    ck_assert_uint_eq(P.msg.nheaders, 10);
    for (unsigned i = 0; i < 10; i++)
        ck_assert_int_eq(hdrs[i].id, ids[i]);
    ck_assert_int_eq(wg_http_find_header(&P, MSG, "X-HOP", 5, 0), 7);
    ck_assert_int_eq(wg_http_find_header(&P, MSG, "X-HOP", 5, 8), 9);
    ck_assert_int_eq(wg_http_find_header(&P, MSG, "X-HOP", 5, 10), -1);
    ck_assert_int_eq(wg_http_find_header(&P, MSG, "x-ho", 4, 0), -1);
    ck_assert_int_eq(wg_http_find_header(&P, MSG, "Host", 4, 0), 0);

    /* the proxy strips the fields Connection names */
    struct wg_http_span t;
    uint32_t c = 0;
    ck_assert(wg_http_list_next(MSG, hdrs[2].value, &c, &t));
    ck_span(t, "close");
    ck_assert(wg_http_list_next(MSG, hdrs[2].value, &c, &t));
    ck_span(t, "X-Hop");
    ck_assert_int_eq(wg_http_find_header(&P, MSG, MSG + t.off, t.len, 0), 7);
    ck_assert(!wg_http_list_next(MSG, hdrs[2].value, &c, &t));
}
END_TEST

START_TEST(test_list_and_name_helpers)
{
    const char *v = " ,a , b\t,,\tc d ,";
    struct wg_http_span list = {0, (uint32_t)strlen(v)}, t;
    uint32_t c = 0;
    MSG = v;
    ck_assert(wg_http_list_next(v, list, &c, &t));
    ck_span(t, "a");
    ck_assert(wg_http_list_next(v, list, &c, &t));
    ck_span(t, "b");
    ck_assert(wg_http_list_next(v, list, &c, &t));
    ck_span(t, "c d");
    ck_assert(!wg_http_list_next(v, list, &c, &t));
    ck_assert(!wg_http_list_next(v, list, &c, &t));
    c = 0;
    ck_assert(!wg_http_list_next(v, (struct wg_http_span){0, 0}, &c, &t));
    ck_assert(wg_http_name_eq("Content-Type", 12, "content-TYPE", 12));
    ck_assert(!wg_http_name_eq("Content-Type", 12, "content-TYPX", 12));
    ck_assert(!wg_http_name_eq("a", 1, "ab", 2));
    ck_assert(!wg_http_name_eq("\r", 1, "-", 1));
    ck_assert(!wg_http_name_eq("@", 1, "`", 1));
    ck_assert(wg_http_name_eq("", 0, "", 0));
}
END_TEST

/* ---- pipelining and reuse --------------------------------------------- */

START_TEST(test_pipelined)
{
    const char *s = "GET /one HTTP/1.1\r\nHost: a\r\n\r\n"
                    "POST /two HTTP/1.1\r\nHost: b\r\nContent-Length: 3\r\n\r\nabc"
                    "GET /three HTTP/1.1\r\nHost: c\r\n\r\n";
    size_t n, off = 0;
    ck_assert_int_eq(parse_msg(&REQ, s, strlen(s), &n), WG_HTTP_DONE);
    ck_assert_uint_eq(n, strlen("GET /one HTTP/1.1\r\nHost: a\r\n\r\n"));
    ck_span(P.msg.path, "/one");
    off += n;

    MSG = s + off;
    wg_http_parser_reset(&P);
    ck_assert_int_eq(wg_http_parse_head(&P, s + off, strlen(s + off), &n), WG_HTTP_DONE);
    ck_span(P.msg.path, "/two");
    ck_span(P.msg.host, "b");
    ck_assert_uint_eq(P.msg.content_length, 3);
    off += n;

    struct wg_http_body b;
    struct wg_http_body_step st;
    wg_http_body_init(&b, P.msg.framing, P.msg.content_length, 0);
    ck_assert_int_eq(wg_http_body_parse(&b, s + off, strlen(s + off), &st), WG_HTTP_DONE);
    ck_assert_uint_eq(st.consumed, 3);
    ck_assert_uint_eq(st.data_off, 0);
    ck_assert_uint_eq(st.data_len, 3);
    off += st.consumed;

    MSG = s + off;
    wg_http_parser_reset(&P);
    ck_assert_int_eq(wg_http_parse_head(&P, s + off, strlen(s + off), &n), WG_HTTP_DONE);
    ck_span(P.msg.path, "/three");
    ck_assert_uint_eq(off + n, strlen(s));
    /* reset keeps the configuration */
    ck_assert_ptr_eq(P.headers, hdrs);
    ck_assert_uint_eq(P.max_headers, CAP);
}
END_TEST

START_TEST(test_error_is_sticky)
{
    size_t n;
    const char *s = "GET / HTTP/1.1\r\nHost : a\r\n\r\n";
    init(&P, hdrs, &REQ);
    ck_assert_int_eq(wg_http_parse_head(&P, s, strlen(s), &n), WG_HTTP_ERROR);
    ck_assert_uint_eq(n, 20);
    ck_assert_int_eq(wg_http_parse_head(&P, s, strlen(s), &n), WG_HTTP_ERROR);
    ck_assert_uint_eq(n, 20);
    ck_assert_int_eq(P.err_status, 400);
    /* DONE is sticky too, and NULL consumed is fine */
    s = "GET / HTTP/1.1\r\nHost: a\r\n\r\nGET";
    init(&P, hdrs, &REQ);
    ck_assert_int_eq(wg_http_parse_head(&P, s, strlen(s), NULL), WG_HTTP_DONE);
    ck_assert_int_eq(wg_http_parse_head(&P, s, strlen(s), &n), WG_HTTP_DONE);
    ck_assert_uint_eq(n, strlen(s) - 3);
}
END_TEST

/* Split a message at every point into two calls, the second from a new
 * buffer: same result as one-shot. */
START_TEST(test_split_everywhere)
{
    const char *s = "POST http://h.test:81/a/b?c=%20d HTTP/1.1\r\nHost: H.test:81\r\n"
                    "Transfer-Encoding: chunked\r\nConnection: keep-alive, Upgrade\r\n"
                    "Upgrade: h2c\r\nExpect: 100-continue\r\nX-Y:\t z \t\r\n\r\n";
    size_t len = strlen(s), n;
    ck_assert_int_eq(parse_msg(&REQ, s, len, &n), WG_HTTP_DONE);
    struct wg_http_message want = P.msg;
    for (size_t cut = 0; cut <= len; cut++) {
        struct wg_http_parser q;
        wg_http_parser_init_request(&q, hdrs, CAP, 0);
        char *a = strndup(s, cut);
        ck_assert_int_eq(wg_http_parse_head(&q, a, cut, &n), cut == len ? WG_HTTP_DONE
                                                                        : WG_HTTP_AGAIN);
        free(a);
        a = strdup(s);
        ck_assert_int_eq(wg_http_parse_head(&q, a, len, &n), WG_HTTP_DONE);
        free(a);
        ck_assert_mem_eq(&q.msg, &want, sizeof want);
    }
    ck_assert(want.chunked && want.upgrade && want.expect_continue && want.keep_alive);
}
END_TEST

/* ---- request smuggling corpus ----------------------------------------- */

static const struct { const char *name; const char *req; int status; } smuggling[] = {
    {"CL.TE", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 13\r\n"
              "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nSMUGGLED", 400},
    {"TE.CL", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
              "Content-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n", 400},
    {"TE.TE xchunked", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", 501},
    {"TE.TE space before colon", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n"
                                 "Content-Length: 3\r\n\r\n", 400},
    {"TE.TE tab OWS is fine", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\tchunked\r\n\r\n", 0},
    {"TE.TE chunked+identity", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
                               "Transfer-Encoding: identity\r\n\r\n", 400},
    {"TE.TE identity+chunked", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n"
                               "Transfer-Encoding: chunked\r\n\r\n", 501},
    {"TE.TE obs-fold", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n chunked\r\n\r\n", 400},
    {"TE.TE vertical tab", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\x0b" "chunked\r\n\r\n",
     400},
    {"TE.TE quoted", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \"chunked\"\r\n\r\n", 400},
    {"TE.TE trailing junk", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked x\r\n\r\n",
     400},
    {"TE.TE name junk", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding\x01: chunked\r\n\r\n", 400},
    {"TE.TE X- prefix", "POST / HTTP/1.1\r\nHost: a\r\nX-Transfer-Encoding: chunked\r\n"
                        "Content-Length: 0\r\n\r\n", 0},
    {"TE.TE bare LF", "POST / HTTP/1.1\r\nHost: a\r\nFoo: bar\nTransfer-Encoding: chunked\r\n\r\n",
     400},
    {"TE.TE bare CR", "POST / HTTP/1.1\r\nHost: a\r\nFoo: bar\rTransfer-Encoding: chunked\r\n\r\n",
     400},
    {"TE in HTTP/1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400},
    {"CL duplicate", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 30\r\n\r\n",
     400},
    {"CL identical duplicate", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
                               "Content-Length: 3\r\n\r\n", 400},
    {"CL list", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\n", 400},
    {"CL plus", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n", 400},
    {"CL hex", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\n", 400},
    {"CL space inside", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5 5\r\n\r\n", 400},
    {"CL overflow", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551621\r\n\r\n",
     400},
    {"CL space before colon", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length : 5\r\n\r\n", 400},
    {"CL obs-fold", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n 5\r\n\r\n", 400},
    {"Host duplicate", "GET / HTTP/1.1\r\nHost: a\r\nHost: evil\r\n\r\n", 400},
    {"Host missing", "GET / HTTP/1.1\r\nX-Host: a\r\n\r\n", 400},
    {"Host with space before colon", "GET / HTTP/1.1\r\nHost : evil\r\nHost: a\r\n\r\n", 400},
    {"absolute-form mismatch", "GET http://evil/ HTTP/1.1\r\nHost: a\r\n\r\n", 400},
    {"request line bare LF", "GET / HTTP/1.1\nHost: a\r\n\r\n", 400},
    {"end of head bare LF", "GET / HTTP/1.1\r\nHost: a\r\n\n", 400},
    {"end of head bare CR", "GET / HTTP/1.1\r\nHost: a\r\n\r\r\n", 400},
    {"NUL in value", "GET / HTTP/1.1\r\nHost: a\r\nX: \x00\r\n\r\n", 400},
};

START_TEST(test_smuggling)
{
    const char *r = smuggling[_i].req;
    /* the NUL case needs its real length: stop at the end of the head */
    size_t len = strlen(r);
    if (strcmp(smuggling[_i].name, "NUL in value") == 0)
        len = 33;
    int got = status_of_n(&REQ, r, len);
    ck_assert_msg(got == smuggling[_i].status, "%s: got %d (%s)", smuggling[_i].name, got,
                  P.err_reason ? P.err_reason : "");
}
END_TEST

/* ---- responses -------------------------------------------------------- */

START_TEST(test_response_basic)
{
    RESP_IS(0, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nServer: x\r\n\r\nhello");
    ck_assert_uint_eq(P.msg.status, 200);
    ck_span(P.msg.reason, "OK");
    ck_assert_uint_eq(P.msg.version, 11);
    ck_assert_int_eq(P.msg.framing, WG_HTTP_BODY_LENGTH);
    ck_assert_uint_eq(P.msg.content_length, 5);
    ck_assert(P.msg.keep_alive);
    ck_assert(!P.msg.has_host);
    RESP_IS(0, "HTTP/1.1 404 Not Found Here\t!\xff\r\nContent-Length: 0\r\n\r\n");
    ck_span(P.msg.reason, "Not Found Here\t!\xff");
    RESP_IS(0, "HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n");
    ck_assert_uint_eq(P.msg.reason.len, 0);
    RESP_IS(0, "HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n");
    ck_assert_uint_eq(P.msg.reason.len, 0);
    RESP_IS(0, "HTTP/1.1 999 X\r\nContent-Length: 0\r\n\r\n");
    ck_assert_uint_eq(P.msg.status, 999);
    RESP_IS(0, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
    ck_assert_int_eq(P.msg.framing, WG_HTTP_BODY_CHUNKED);
    /* no Host needed in responses */
    RESP_IS(0, "HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n");
    ck_assert(!P.msg.keep_alive);
    RESP_IS(0, "HTTP/1.0 200 OK\r\nContent-Length: 1\r\nConnection: keep-alive\r\n\r\n");
    ck_assert(P.msg.keep_alive);
    RESP_IS(0, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\n");
    ck_assert(!P.msg.keep_alive);
}
END_TEST

START_TEST(test_response_malformed)
{
    RESP_IS(400, "HTTP/1.1 20 OK\r\n\r\n");
    RESP_IS(400, "HTTP/1.1 2000 OK\r\n\r\n");
    RESP_IS(400, "HTTP/1.1 099 OK\r\n\r\n");
    RESP_IS(400, "HTTP/1.1 2x0 OK\r\n\r\n");
    RESP_IS(400, "HTTP/1.1  200 OK\r\n\r\n");
    RESP_IS(400, "HTTP/1.1 200 O\x01K\r\n\r\n");
    ck_assert_str_eq(P.err_reason, "invalid character in reason phrase");
    RESP_IS(400, "HTTP/1.1 200 OK\n\r\n");
    RESP_IS(400, "HTTP/1.1 200 OK\r\nX: y\n\r\n");
    RESP_IS(400, "HTTP/1.1 200 OK\r\nX: y\r\n z\r\n\r\n");
    RESP_IS(400, "HTTP/1.1 200 OK\r\nX : y\r\n\r\n");
    RESP_IS(400, "\r\nHTTP/1.1 200 OK\r\n\r\n");
    RESP_IS(400, "HTTP/x 200 OK\r\n\r\n");
    RESP_IS(400, "ICY 200 OK\r\n\r\n");
    RESP_IS(505, "HTTP/2.0 200 OK\r\n\r\n");
    RESP_IS(505, "HTTP/1.2 200 OK\r\n\r\n");
    RESP_IS(400, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n");
    RESP_IS(400, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n");
    RESP_IS(501, "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n");
    RESP_IS(400, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n");
    RESP_IS(400, "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
    RESP_IS(400, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n");
    ck_assert_str_eq(P.err_reason, "101 response to a request without upgrade");
}
END_TEST

START_TEST(test_response_status_line_limit)
{
    char *s = malloc(WG_HTTP_MAX_REQUEST_LINE + 64);
    ck_assert_ptr_nonnull(s);
    strcpy(s, "HTTP/1.1 200 ");
    memset(s + 13, 'r', WG_HTTP_MAX_REQUEST_LINE - 13);
    strcpy(s + WG_HTTP_MAX_REQUEST_LINE, "\r\n\r\n");
    RESP_IS(0, s);
    strcpy(s + WG_HTTP_MAX_REQUEST_LINE, "r\r\n\r\n");
    RESP_IS(400, s);
    ck_assert_str_eq(P.err_reason, "status line too long");
    free(s);
}
END_TEST

START_TEST(test_response_no_body)
{
    const char *cl = "HTTP/1.1 200 OK\r\nContent-Length: 42\r\n\r\n";
    ck_assert_int_eq(resp_status_for(WG_HTTP_HEAD, false, cl), 0);
    ck_assert_int_eq(P.msg.framing, WG_HTTP_BODY_NONE);
    ck_assert_uint_eq(P.msg.content_length, 42);
    ck_assert(P.msg.keep_alive);
    ck_assert_int_eq(resp_status_for(WG_HTTP_HEAD, false,
                     "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"), 0);
    ck_assert_int_eq(P.msg.framing, WG_HTTP_BODY_NONE);
    RESP_IS(0, "HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n");
    ck_assert_int_eq(P.msg.framing, WG_HTTP_BODY_NONE);
    RESP_IS(0, "HTTP/1.1 204 No Content\r\n\r\n");
    ck_assert_int_eq(P.msg.framing, WG_HTTP_BODY_NONE);
    ck_assert(P.msg.keep_alive);
    RESP_IS(0, "HTTP/1.1 304 Not Modified\r\nContent-Length: 1234\r\n\r\n");
    ck_assert_int_eq(P.msg.framing, WG_HTTP_BODY_NONE);
    ck_assert(P.msg.keep_alive);
}
END_TEST

START_TEST(test_response_interim)
{
    const char *s = "HTTP/1.1 100 Continue\r\n\r\n"
                    "HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
                    "HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok";
    size_t n, off = 0;
    struct mode m = {true, WG_HTTP_POST, false, CAP, 0};
    ck_assert_int_eq(parse_msg(&m, s, strlen(s), &n), WG_HTTP_DONE);
    ck_assert(P.msg.interim);
    ck_assert_uint_eq(P.msg.status, 100);
    ck_assert_int_eq(P.msg.framing, WG_HTTP_BODY_NONE);
    off += n;
    wg_http_parser_reset(&P);
    MSG = s + off;
    ck_assert_int_eq(wg_http_parse_head(&P, s + off, strlen(s + off), &n), WG_HTTP_DONE);
    ck_assert(P.msg.interim);
    ck_assert_uint_eq(P.msg.status, 103);
    ck_span(hdrs[0].value, "</s.css>; rel=preload");
    off += n;
    wg_http_parser_reset(&P);
    ck_assert_int_eq(wg_http_parse_head(&P, s + off, strlen(s + off), &n), WG_HTTP_DONE);
    ck_assert(!P.msg.interim);
    ck_assert_uint_eq(P.msg.status, 201);
    ck_assert_int_eq(P.msg.framing, WG_HTTP_BODY_LENGTH);
    ck_assert_uint_eq(off + n + 2, strlen(s));
}
END_TEST

START_TEST(test_response_until_close_and_tunnels)
{
    RESP_IS(0, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n");
    ck_assert_int_eq(P.msg.framing, WG_HTTP_BODY_UNTIL_CLOSE);
    ck_assert(!P.msg.keep_alive);
    RESP_IS(0, "HTTP/1.0 200 OK\r\n\r\n");
    ck_assert_int_eq(P.msg.framing, WG_HTTP_BODY_UNTIL_CLOSE);

    ck_assert_int_eq(resp_status_for(WG_HTTP_GET, true, "HTTP/1.1 101 Switching Protocols\r\n"
                     "Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n"), 0);
    ck_assert_int_eq(P.msg.framing, WG_HTTP_BODY_TUNNEL);
    ck_assert(P.msg.upgrade);
    ck_assert(!P.msg.keep_alive);
    ck_assert(!P.msg.interim);
    /* an upgrade request may be answered normally */
    ck_assert_int_eq(resp_status_for(WG_HTTP_GET, true,
                     "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"), 0);
    ck_assert(!P.msg.upgrade);
    ck_assert_int_eq(P.msg.framing, WG_HTTP_BODY_LENGTH);

    ck_assert_int_eq(resp_status_for(WG_HTTP_CONNECT, false,
                     "HTTP/1.1 200 Connection Established\r\n\r\n"), 0);
    ck_assert_int_eq(P.msg.framing, WG_HTTP_BODY_TUNNEL);
    ck_assert_int_eq(resp_status_for(WG_HTTP_CONNECT, false,
                     "HTTP/1.1 407 Auth\r\nContent-Length: 0\r\n\r\n"), 0);
    ck_assert_int_eq(P.msg.framing, WG_HTTP_BODY_LENGTH);
}
END_TEST

/* ---- bodies ----------------------------------------------------------- */

struct body_result {
    enum wg_http_result r;
    size_t consumed;            /* body bytes, or the error offset */
    int status;
    const char *reason;
    char payload[4096];
    size_t payload_len;
    struct wg_http_body b;
};

/* Feed `in` in pieces ending at the offsets in cuts[] (then the rest). */
static void decode(struct body_result *res, enum wg_http_framing f, uint64_t cl,
                   uint32_t max_trailer, const char *in, size_t len, const size_t *cuts,
                   size_t ncuts)
{
    size_t off = 0, piece_end;
    memset(res, 0, sizeof *res);
    wg_http_body_init(&res->b, f, cl, max_trailer);
    res->r = WG_HTTP_AGAIN;
    for (size_t k = 0; k <= ncuts && res->r == WG_HTTP_AGAIN; k++) {
        piece_end = k < ncuts ? cuts[k] : len;
        char *piece = malloc(piece_end - off + 1);      /* a fresh buffer per read */
        REQUIRE(piece != NULL);
        memcpy(piece, in + off, piece_end - off);
        size_t poff = 0, plen = piece_end - off;
        while (res->r == WG_HTTP_AGAIN && (poff < plen || plen == 0)) {
            struct wg_http_body_step st;
            res->r = wg_http_body_parse(&res->b, piece + poff, plen - poff, &st);
            REQUIRE(st.consumed <= plen - poff);
            REQUIRE(st.data_off + st.data_len <= st.consumed);
            REQUIRE(res->payload_len + st.data_len <= sizeof res->payload);
            memcpy(res->payload + res->payload_len, piece + poff + st.data_off, st.data_len);
            res->payload_len += st.data_len;
            poff += st.consumed;
            if (plen == 0 || (res->r == WG_HTTP_AGAIN && st.consumed == 0))
                break;
        }
        free(piece);
        off += poff;
        if (res->r == WG_HTTP_AGAIN)
            REQUIRE(off == piece_end);
    }
    res->consumed = off;
    res->status = res->b.err_status;
    res->reason = res->b.err_reason;
}

static void same_result(const struct body_result *a, const struct body_result *b)
{
    REQUIRE(a->r == b->r);
    REQUIRE(a->consumed == b->consumed);
    REQUIRE(a->status == b->status);
    REQUIRE(a->reason == b->reason);
    REQUIRE(a->payload_len == b->payload_len);
    REQUIRE(memcmp(a->payload, b->payload, a->payload_len) == 0);
    REQUIRE(a->b.chunks == b->b.chunks);
    REQUIRE(a->b.trailers == b->b.trailers);
    REQUIRE(a->b.payload == b->b.payload);
}

/* One-shot, every two-piece split, and one byte at a time agree. */
static void decode_all_ways(struct body_result *res, enum wg_http_framing f, uint64_t cl,
                            uint32_t max_trailer, const char *in, size_t len)
{
    static struct body_result other;
    static size_t cuts[4096];
    decode(res, f, cl, max_trailer, in, len, NULL, 0);
    for (size_t cut = 0; cut <= len; cut++) {
        decode(&other, f, cl, max_trailer, in, len, &cut, 1);
        same_result(res, &other);
    }
    REQUIRE(len < sizeof cuts / sizeof cuts[0]);
    for (size_t i = 0; i < len; i++)
        cuts[i] = i + 1;
    decode(&other, f, cl, max_trailer, in, len, cuts, len);
    same_result(res, &other);
}

static int chunked_status(const char *in)
{
    static struct body_result res;
    decode_all_ways(&res, WG_HTTP_BODY_CHUNKED, 0, 0, in, strlen(in));
    return res.r == WG_HTTP_DONE ? 0 : res.r == WG_HTTP_AGAIN ? 1 : res.status;
}

START_TEST(test_body_length)
{
    static struct body_result res;
    const char *in = "0123456789NEXT";
    decode_all_ways(&res, WG_HTTP_BODY_LENGTH, 10, 0, in, strlen(in));
    ck_assert_int_eq(res.r, WG_HTTP_DONE);
    ck_assert_uint_eq(res.consumed, 10);
    ck_assert_uint_eq(res.payload_len, 10);
    ck_assert_mem_eq(res.payload, in, 10);
    decode_all_ways(&res, WG_HTTP_BODY_LENGTH, 0, 0, in, strlen(in));
    ck_assert_int_eq(res.r, WG_HTTP_DONE);
    ck_assert_uint_eq(res.consumed, 0);
    decode_all_ways(&res, WG_HTTP_BODY_NONE, 0, 0, in, strlen(in));
    ck_assert_int_eq(res.r, WG_HTTP_DONE);
    ck_assert_uint_eq(res.consumed, 0);
    decode(&res, WG_HTTP_BODY_LENGTH, 20, 0, in, strlen(in), NULL, 0);
    ck_assert_int_eq(res.r, WG_HTTP_AGAIN);
    ck_assert_uint_eq(res.consumed, 14);
    ck_assert_int_eq(wg_http_body_eof(&res.b), WG_HTTP_ERROR);
    ck_assert_str_eq(res.b.err_reason, "truncated body");
}
END_TEST

START_TEST(test_body_until_close)
{
    static struct body_result res;
    const char *in = "anything\r\n0\r\n\r\ngoes";
    decode_all_ways(&res, WG_HTTP_BODY_UNTIL_CLOSE, 0, 0, in, strlen(in));
    ck_assert_int_eq(res.r, WG_HTTP_AGAIN);
    ck_assert_uint_eq(res.payload_len, strlen(in));
    ck_assert_int_eq(wg_http_body_eof(&res.b), WG_HTTP_DONE);
    decode(&res, WG_HTTP_BODY_TUNNEL, 0, 0, in, strlen(in), NULL, 0);
    ck_assert_int_eq(res.r, WG_HTTP_AGAIN);
    ck_assert_uint_eq(res.payload_len, strlen(in));
    ck_assert_int_eq(wg_http_body_eof(&res.b), WG_HTTP_DONE);
}
END_TEST

START_TEST(test_body_chunked)
{
    static struct body_result res;
    const char *in = "5\r\nhello\r\n"
                     "1A;name=value;quoted=\"a \\\"b\\\" ;c\"\r\nabcdefghijklmnopqrstuvwxyz\r\n"
                     "4 ; ext \t;x\r\n\r\n\r\n\r\n"
                     "0000000000000001;a=b ;c\r\n!\r\n"
                     "0;last\r\nX-Checksum: abc\r\nX-Empty:\r\nX-Obs: \xe2\x9c\x93\r\n\r\n"
                     "GET / HTTP/1.1\r\n";
    decode_all_ways(&res, WG_HTTP_BODY_CHUNKED, 0, 0, in, strlen(in));
    ck_assert_int_eq(res.r, WG_HTTP_DONE);
    ck_assert_uint_eq(res.consumed, strlen(in) - strlen("GET / HTTP/1.1\r\n"));
    ck_assert_uint_eq(res.payload_len, 5 + 26 + 4 + 1);
    ck_assert_mem_eq(res.payload, "helloabcdefghijklmnopqrstuvwxyz\r\n\r\n!", 36);
    ck_assert_uint_eq(res.b.chunks, 4);
    ck_assert_uint_eq(res.b.trailers, 3);
    ck_assert_uint_eq(res.b.payload, 36);
    ck_assert_int_eq(wg_http_body_eof(&res.b), WG_HTTP_DONE);

    ck_assert_int_eq(chunked_status("0\r\n\r\n"), 0);
    ck_assert_int_eq(chunked_status("000\r\n\r\n"), 0);
    ck_assert_int_eq(chunked_status("7fffffffffffffff\r\n"), 1);
    ck_assert_int_eq(chunked_status("7FFFFFFFFFFFFFFF;x\r\n"), 1);
    ck_assert_int_eq(chunked_status("5\r\nhel"), 1);
    ck_assert_int_eq(chunked_status("5\r\nhello\r"), 1);
    ck_assert_int_eq(chunked_status("0\r\nX: y\r\n"), 1);
}
END_TEST

/* Where a relay may end a body with bytes of its own (a cut's trailer
 * frame): chunked between two chunks (de-chunked: before the last chunk),
 * until close always, a Content-Length never. */
START_TEST(test_body_endable)
{
    static const struct { const char *in; bool raw, dechunked; } chunked[] = {
        { "", true, true },                       { "5", false, true },
        { "5\r\n", false, true },                 { "5\r\nhel", false, true },
        { "5\r\nhello", false, true },            { "5\r\nhello\r", false, true },
        { "5\r\nhello\r\n", true, true },         { "5\r\nhello\r\n3;x=y\r\nabc\r\n", true, true },
        { "5\r\nhello\r\n0\r\n", false, false },  { "5\r\nhello\r\n0\r\n\r\n", false, false },
    };
    for (size_t i = 0; i < sizeof chunked / sizeof *chunked; i++) {
        struct wg_http_body b;
        struct wg_http_body_step st;
        wg_http_body_init(&b, WG_HTTP_BODY_CHUNKED, 0, 0);
        const char *p = chunked[i].in;
        size_t left = strlen(p);
        while (left && wg_http_body_parse(&b, p, left, &st) == WG_HTTP_AGAIN && st.consumed) {
            p += st.consumed;
            left -= st.consumed;
        }
        ck_assert_msg(wg_http_body_endable(&b, false) == chunked[i].raw, "%s", chunked[i].in);
        ck_assert_msg(wg_http_body_endable(&b, true) == chunked[i].dechunked, "%s", chunked[i].in);
    }
    struct wg_http_body b;
    struct wg_http_body_step st;
    wg_http_body_init(&b, WG_HTTP_BODY_UNTIL_CLOSE, 0, 0);
    ck_assert(wg_http_body_endable(&b, false));
    wg_http_body_parse(&b, "abc", 3, &st);
    ck_assert(wg_http_body_endable(&b, false) && wg_http_body_endable(&b, true));
    wg_http_body_init(&b, WG_HTTP_BODY_LENGTH, 10, 0);
    ck_assert(!wg_http_body_endable(&b, false) && !wg_http_body_endable(&b, true));
    wg_http_body_parse(&b, "abc", 3, &st);
    ck_assert(!wg_http_body_endable(&b, false) && !wg_http_body_endable(&b, true));
}
END_TEST

START_TEST(test_body_chunked_etcd_stream)
{
    /* chunk boundaries are not message boundaries: the client joins the runs */
    static struct body_result res;
    const char *in = "10\r\n{\"result\":{\"head\r\n"
                     "c\r\ner\":{}}}\n{\"r\r\n"
                     "b\r\nesult\":{}}\n\r\n";
    decode_all_ways(&res, WG_HTTP_BODY_CHUNKED, 0, 0, in, strlen(in));
    ck_assert_int_eq(res.r, WG_HTTP_AGAIN);
    ck_assert_uint_eq(res.consumed, strlen(in));
    const char *want = "{\"result\":{\"header\":{}}}\n{\"result\":{}}\n";
    ck_assert_uint_eq(res.payload_len, strlen(want));
    ck_assert_mem_eq(res.payload, want, strlen(want));
    ck_assert_int_eq(wg_http_body_eof(&res.b), WG_HTTP_ERROR);
}
END_TEST

static const struct { const char *in; int status; const char *reason; } bad_chunks[] = {
    {"g\r\n", 400, "invalid chunk size"},
    {"\r\n", 400, "invalid chunk size"},
    {"-5\r\n", 400, "invalid chunk size"},
    {"+5\r\n", 400, "invalid chunk size"},
    {"0x5\r\n", 400, "invalid chunk size"},
    {" 5\r\n", 400, "invalid chunk size"},
    {"5 5\r\n", 400, "invalid chunk extension"},
    {"5 \r\n", 400, "invalid chunk extension"},
    {"5\n", 400, "bare LF"},
    {"\n", 400, "bare LF"},
    {"5\rx", 400, "bare CR"},
    {"8000000000000000\r\n", 400, "chunk size too large"},
    {"ffffffffffffffff\r\n", 400, "chunk size too large"},
    {"00000000000000005\r\n", 400, "chunk size too large"},
    {"10000000000000000\r\n", 400, "chunk size too large"},
    {"5\r\nhelloX", 400, "missing CRLF after chunk data"},
    {"5\r\nhello\n", 400, "missing CRLF after chunk data"},
    {"5\r\nhello\r\r", 400, "missing CRLF after chunk data"},
    {"5\r\nhello\r\n\r\n", 400, "invalid chunk size"},
    {"5;\r\n", 400, "invalid chunk extension"},
    {"5;=x\r\n", 400, "invalid chunk extension"},
    {"5;a=\r\n", 400, "invalid chunk extension"},
    {"5;a b\r\n", 400, "invalid chunk extension"},
    {"5;a=b c\r\n", 400, "invalid chunk extension"},
    {"5;a=\"b\r\n", 400, "invalid chunk extension"},
    {"5;a=\"b\"c\r\n", 400, "invalid chunk extension"},
    {"5;a\n", 400, "bare LF"},
    {"5;a=\x01\r\n", 400, "invalid chunk extension"},
    {"5;a=\"\\\x01\"\r\n", 400, "invalid chunk extension"},
    {"0\r\nX : y\r\n\r\n", 400, "whitespace before colon"},
    {"0\r\nX: y\r\n z\r\n\r\n", 400, "obs-fold in trailer section"},
    {"0\r\n X: y\r\n\r\n", 400, "obs-fold in trailer section"},
    {"0\r\nX: y\n\r\n", 400, "bare LF"},
    {"0\r\nX: y\r\n\n", 400, "bare LF"},
    {"0\r\nX: y\r\n\rx", 400, "bare CR"},
    {"0\r\nX: \x7f\r\n\r\n", 400, "control character in trailer field value"},
    {"0\r\n(X): y\r\n\r\n", 400, "invalid character in trailer field name"},
    {"0\r\nX\r\n\r\n", 400, "invalid character in trailer field name"},
    {"0\r\n\n", 400, "bare LF"},
};

START_TEST(test_body_chunked_refused)
{
    static struct body_result res;
    const char *in = bad_chunks[_i].in;
    decode_all_ways(&res, WG_HTTP_BODY_CHUNKED, 0, 0, in, strlen(in));
    ck_assert_msg(res.r == WG_HTTP_ERROR && res.status == bad_chunks[_i].status &&
                  strcmp(res.reason, bad_chunks[_i].reason) == 0,
                  "'%s': r=%d status=%d reason=%s", in, res.r, res.status,
                  res.reason ? res.reason : "-");
    ck_assert_int_eq(wg_http_body_eof(&res.b), WG_HTTP_ERROR);
    /* an error is sticky */
    struct wg_http_body_step st;
    ck_assert_int_eq(wg_http_body_parse(&res.b, "0\r\n\r\n", 5, &st), WG_HTTP_ERROR);
    ck_assert_uint_eq(st.consumed, 0);
}
END_TEST

START_TEST(test_body_chunked_limits)
{
    static struct body_result res;
    static char in[8192];
    /* size line with extensions: exactly the limit is fine, one more is not */
    memset(in, 0, sizeof in);
    strcpy(in, "1;e=");
    memset(in + 4, 'v', WG_HTTP_MAX_CHUNK_LINE - 4);
    strcpy(in + WG_HTTP_MAX_CHUNK_LINE, "\r\nx\r\n0\r\n\r\n");
    decode(&res, WG_HTTP_BODY_CHUNKED, 0, 0, in, strlen(in), NULL, 0);
    ck_assert_int_eq(res.r, WG_HTTP_DONE);
    strcpy(in + WG_HTTP_MAX_CHUNK_LINE, "v\r\nx\r\n0\r\n\r\n");
    decode(&res, WG_HTTP_BODY_CHUNKED, 0, 0, in, strlen(in), NULL, 0);
    ck_assert_int_eq(res.r, WG_HTTP_ERROR);
    ck_assert_str_eq(res.reason, "chunk size line too long");
    ck_assert_uint_eq(res.consumed, WG_HTTP_MAX_CHUNK_LINE);

    /* trailer section "X: <25 bytes>\r\n\r\n" is exactly max_trailer (32) */
    const char *fits = "0\r\nX: 0123456789012345678901234\r\n\r\n";
    const char *over = "0\r\nX: 01234567890123456789012345\r\n\r\n";
    decode_all_ways(&res, WG_HTTP_BODY_CHUNKED, 0, 32, fits, strlen(fits));
    ck_assert_int_eq(res.r, WG_HTTP_DONE);
    ck_assert_uint_eq(res.consumed, strlen(fits));
    decode_all_ways(&res, WG_HTTP_BODY_CHUNKED, 0, 32, over, strlen(over));
    ck_assert_int_eq(res.r, WG_HTTP_ERROR);
    ck_assert_int_eq(res.status, 431);
    ck_assert_uint_eq(res.consumed, 3 + 32);
}
END_TEST

/* wg_http_split_head reads what wg_http_parse_head reads from a head of
 * the shape the exchange builds, and refuses other shapes and the limits. */
static const char *const built_heads[] = {
    ("POST /bench.Bench/Unary HTTP/1.1\r\ncontent-type: application/grpc\r\nHost: api.test\r\n"
     "user-agent: grpc-c/1\r\nX-Forwarded-For: 127.0.0.1\r\nX-Real-IP: 127.0.0.1\r\n"
     "X-Forwarded-Proto: http\r\nX-Request-Id: 0123abcd\r\nTE: trailers\r\nx-empty:\r\n"
     "x-ows: \t a b \t\r\nContent-Length: 21\r\n\r\n"),
    ("GET /a/b?c=d&e HTTP/1.1\r\nHost: h:8080\r\nConnection: upgrade\r\nUpgrade: websocket\r\n"
     "Keep-Alive: 5\r\nProxy-Connection: x\r\nTransfer-Encoding: chunked\r\n\r\n"),
    "OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n",
    "PROPFIND /? HTTP/1.1\r\nHost: \r\nExpect: x\r\nTrailer: t\r\n\r\n",
};

static bool spans_eq(struct wg_http_span a, struct wg_http_span b)
{
    return a.off == b.off && a.len == b.len;
}

START_TEST(test_split_built_head)
{
    const char *s = built_heads[_i];
    static struct wg_http_header h1[CAP], h2[CAP];
    struct wg_http_parser a, b;
    size_t used;
    wg_http_parser_init_request(&a, h1, CAP, 0);
    wg_http_parser_init_request(&b, h2, CAP, 0);
    ck_assert_int_eq(wg_http_parse_head(&a, s, strlen(s), &used), WG_HTTP_DONE);
    ck_assert(wg_http_split_head(&b, s, strlen(s)));
    const struct wg_http_message *x = &a.msg, *y = &b.msg;
    ck_assert_uint_eq(x->version, y->version);
    ck_assert_int_eq(x->method, y->method);
    ck_assert(spans_eq(x->method_text, y->method_text) && spans_eq(x->target, y->target));
    ck_assert_int_eq(x->target_form, y->target_form);
    ck_assert(spans_eq(x->path, y->path));
    ck_assert_int_eq(x->has_query, y->has_query);
    if (x->has_query)
        ck_assert(spans_eq(x->query, y->query));
    ck_assert_int_eq(x->has_host, y->has_host);
    if (x->has_host)
        ck_assert(spans_eq(x->host, y->host));
    ck_assert_uint_eq(x->nheaders, y->nheaders);
    for (unsigned i = 0; i < x->nheaders; i++) {
        ck_assert(spans_eq(h1[i].name, h2[i].name) && spans_eq(h1[i].value, h2[i].value));
        ck_assert_int_eq(h1[i].id, h2[i].id);
    }
}
END_TEST

START_TEST(test_split_refuses)
{
    static const char *const bad[] = {
        "", "GET / HTTP/1.1\r\n", "GET / HTTP/1.1\r\nHost: a\r\n", "GET / HTTP/1.0\r\n\r\n",
        "GET http://a/ HTTP/1.1\r\n\r\n", "GET  HTTP/1.1\r\n\r\n", " / HTTP/1.1\r\n\r\n",
        "GET / HTTP/1.1\n\r\n", "GET / HTTP/1.1\r\nHost a\r\n\r\n",
        "GET / HTTP/1.1\r\n: a\r\n\r\n", "GET / HTTP/1.1\r\nA: b\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n",
    };
    static struct wg_http_header h[CAP];
    struct wg_http_parser p;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        wg_http_parser_init_request(&p, h, CAP, 0);
        ck_assert_msg(!wg_http_split_head(&p, bad[i], strlen(bad[i])), "%zu", i);
    }
    const char *two = "GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\n\r\n";
    wg_http_parser_init_request(&p, h, 1, 0);           /* one field more than max_headers */
    ck_assert(!wg_http_split_head(&p, two, strlen(two)));
    wg_http_parser_init_request(&p, h, 2, 12);          /* a 12-byte section, 14 given */
    ck_assert(!wg_http_split_head(&p, two, strlen(two)));
    wg_http_parser_init_request(&p, h, 2, 14);
    ck_assert(wg_http_split_head(&p, two, strlen(two)));
    ck_assert_uint_eq(p.msg.nheaders, 2);
    ck_assert(!p.msg.has_host);         /* no Host: split, and wg_h2_request_nv refuses it */
}
END_TEST

/* A byte the parser refuses in the target or in a field value (a policy's
 * doing: a head waygate built) is refused by the split too, in the
 * word-at-a-time part of each scan and in its tail; every other byte
 * passes both. */
START_TEST(test_split_refuses_bad_bytes)
{
    static struct wg_http_header h1[CAP], h2[CAP];
    static const char *const where[] = {
        "GET /a%cb HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET /abcdefghijklmnop%cqrstuvwxyz0123456789?q=1 HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET /p?abcdefghijklmnopqrst%c HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\r\nX-A: a%cb\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\r\nX-A: abcdefghijklmnopqrstuvwxyz%c0123456789 ok\r\n\r\n",
        "GET / HTTP/1.1\r\nX-A: abcdefghijklmnopq%c\r\nHost: x\r\n\r\n",
    };
    for (size_t w = 0; w < sizeof where / sizeof *where; w++) {
        for (unsigned c = 1; c < 256; c++) {
            char msg[160];
            int n = snprintf(msg, sizeof msg, where[w], c);
            struct wg_http_parser p, q;
            size_t used;
            wg_http_parser_init_request(&p, h1, CAP, 0);
            wg_http_parser_init_request(&q, h2, CAP, 0);
            bool parsed = wg_http_parse_head(&p, msg, (size_t)n, &used) == WG_HTTP_DONE &&
                          used == (size_t)n;
            bool split = wg_http_split_head(&q, msg, (size_t)n);
            ck_assert_msg(parsed == split, "where %zu byte 0x%02x: parsed %d split %d", w, c,
                          parsed, split);
        }
    }
}
END_TEST

START_TEST(test_body_from_parsed_head)
{
    /* a proxy forwards the chunked encoding unchanged: consumed covers it */
    const char *s = "POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                    "4;x=y\r\nWiki\r\n0\r\nT: v\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n";
    size_t n;
    ck_assert_int_eq(parse_msg(&REQ, s, strlen(s), &n), WG_HTTP_DONE);
    static struct body_result res;
    decode_all_ways(&res, P.msg.framing, P.msg.content_length, 0, s + n, strlen(s + n));
    ck_assert_int_eq(res.r, WG_HTTP_DONE);
    ck_assert_uint_eq(res.consumed, strlen("4;x=y\r\nWiki\r\n0\r\nT: v\r\n\r\n"));
    ck_assert_mem_eq(res.payload, "Wiki", 4);
    ck_assert_uint_eq(res.payload_len, 4);
    wg_http_parser_reset(&P);
    MSG = s + n + res.consumed;
    ck_assert_int_eq(wg_http_parse_head(&P, MSG, strlen(MSG), &n), WG_HTTP_DONE);
    ck_assert_int_eq(P.msg.method, WG_HTTP_GET);
}
END_TEST

/* ---- suite ------------------------------------------------------------ */

#define N(a) ((int)(sizeof(a) / sizeof((a)[0])))

static Suite *http_suite(void)
{
    Suite *s = suite_create("http");
    TCase *t = tcase_create("request_line");
    tcase_set_timeout(t, 60);
    tcase_add_test(t, test_simple_get);
    tcase_add_test(t, test_incomplete_is_again);
    tcase_add_loop_test(t, test_methods, 0, N(methods));
    tcase_add_test(t, test_method_rules);
    tcase_add_test(t, test_request_line_whitespace);
    tcase_add_test(t, test_request_line_limit);
    tcase_add_test(t, test_leading_empty_lines);
    tcase_add_test(t, test_versions);
    tcase_add_test(t, test_target_chars);
    tcase_add_test(t, test_asterisk_form);
    tcase_add_test(t, test_absolute_form);
    tcase_add_test(t, test_absolute_form_refused);
    suite_add_tcase(s, t);

    t = tcase_create("fields");
    tcase_set_timeout(t, 60);
    tcase_add_test(t, test_field_syntax);
    tcase_add_test(t, test_underscore_names_flagged);
    tcase_add_test(t, test_field_values);
    tcase_add_test(t, test_line_endings);
    tcase_add_test(t, test_host_rules);
    tcase_add_test(t, test_content_length);
    tcase_add_loop_test(t, test_content_length_malformed, 0, N(bad_lengths));
    tcase_add_test(t, test_content_length_duplicates);
    tcase_add_test(t, test_transfer_encoding_ok);
    tcase_add_loop_test(t, test_transfer_encoding_refused, 0, N(bad_te));
    tcase_add_test(t, test_transfer_encoding_rules);
    tcase_add_test(t, test_header_limits);
    tcase_add_test(t, test_header_section_size);
    tcase_add_test(t, test_default_max_head);
    tcase_add_test(t, test_shorter_buffer_is_harmless);
    tcase_add_test(t, test_keep_alive);
    tcase_add_test(t, test_expect_continue);
    tcase_add_test(t, test_upgrade_request);
    tcase_add_test(t, test_header_ids_and_find);
    tcase_add_test(t, test_list_and_name_helpers);
    tcase_add_test(t, test_pipelined);
    tcase_add_test(t, test_error_is_sticky);
    tcase_add_test(t, test_split_everywhere);
    tcase_add_loop_test(t, test_smuggling, 0, N(smuggling));
    tcase_add_loop_test(t, test_split_built_head, 0, N(built_heads));
    tcase_add_test(t, test_split_refuses);
    tcase_add_test(t, test_split_refuses_bad_bytes);
    suite_add_tcase(s, t);

    t = tcase_create("responses");
    tcase_set_timeout(t, 60);
    tcase_add_test(t, test_response_basic);
    tcase_add_test(t, test_response_malformed);
    tcase_add_test(t, test_response_status_line_limit);
    tcase_add_test(t, test_response_no_body);
    tcase_add_test(t, test_response_interim);
    tcase_add_test(t, test_response_until_close_and_tunnels);
    suite_add_tcase(s, t);

    t = tcase_create("bodies");
    tcase_set_timeout(t, 60);
    tcase_add_test(t, test_body_length);
    tcase_add_test(t, test_body_until_close);
    tcase_add_test(t, test_body_chunked);
    tcase_add_test(t, test_body_chunked_etcd_stream);
    tcase_add_test(t, test_body_endable);
    tcase_add_loop_test(t, test_body_chunked_refused, 0, N(bad_chunks));
    tcase_add_test(t, test_body_chunked_limits);
    tcase_add_test(t, test_body_from_parsed_head);
    suite_add_tcase(s, t);
    return s;
}

int main(void)
{
    SRunner *r = srunner_create(http_suite());
    srunner_run_all(r, CK_NORMAL);
    int failed = srunner_ntests_failed(r);
    srunner_free(r);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
