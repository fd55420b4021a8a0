/* http — strict, resumable, zero-copy HTTP/1.1 parser. See waygate/http.h.
 *
 * Shape (after nginx's ngx_http_parse.c): one state byte in the caller's
 * struct, a loop over the input that switches on it, and table-driven fast
 * scans inside the states where most bytes are spent (target, field name,
 * field value) so that the switch runs once per token, not once per byte.
 *
 * Limits are enforced by capping the end of the input a section may scan:
 * the parser stops exactly at the first byte past a limit, so a limit error
 * happens at the same offset however the input is split. */
#include "waygate/http.h"

#include <string.h>

/* Character classes, one bit each in wg_http_ctype (generated table). */
enum {
    WG_HTTP_C_TCHAR = 0x01,     /* token character (RFC 9110 §5.6.2) */
    WG_HTTP_C_VCHAR = 0x02,     /* field-vchar: VCHAR / obs-text */
    WG_HTTP_C_URI = 0x04,       /* request-target byte: VCHAR except '#' */
    WG_HTTP_C_HOST = 0x08,      /* uri-host / port / IP-literal byte */
    WG_HTTP_C_WS = 0x10,        /* SP / HTAB */
    WG_HTTP_C_SCHEME = 0x20,    /* ALPHA / DIGIT / '+' / '-' / '.' */
    WG_HTTP_C_QDTEXT = 0x40,    /* quoted-string text byte */
    WG_HTTP_C_PATH = 0x80       /* target byte that is not '?' either */
};

static const uint8_t wg_http_ctype[256] = {
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x50, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x50, 0xcf, 0x86, 0x43, 0xcf, 0xcf, 0xcf, 0xcf, 0xce, 0xce, 0xcf, 0xef, 0xc6, 0xef, 0xef, 0xc6,
    0xef, 0xef, 0xef, 0xef, 0xef, 0xef, 0xef, 0xef, 0xef, 0xef, 0xce, 0xce, 0xc6, 0xce, 0xc6, 0x46,
    0xc6, 0xef, 0xef, 0xef, 0xef, 0xef, 0xef, 0xef, 0xef, 0xef, 0xef, 0xef, 0xef, 0xef, 0xef, 0xef,
    0xef, 0xef, 0xef, 0xef, 0xef, 0xef, 0xef, 0xef, 0xef, 0xef, 0xef, 0xce, 0x86, 0xce, 0xc7, 0xcf,
    0xc7, 0xef, 0xef, 0xef, 0xef, 0xef, 0xef, 0xef, 0xef, 0xef, 0xef, 0xef, 0xef, 0xef, 0xef, 0xef,
    0xef, 0xef, 0xef, 0xef, 0xef, 0xef, 0xef, 0xef, 0xef, 0xef, 0xef, 0xc6, 0xc7, 0xc6, 0xcf, 0x00,
    0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42,
    0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42,
    0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42,
    0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42,
    0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42,
    0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42,
    0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42,
    0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42,
};
static const uint8_t wg_http_hexval[256] = {
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xff, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xff, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
};
static const uint8_t wg_http_lower[256] = {
    0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f,
    0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f,
    0x20, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28, 0x29, 0x2a, 0x2b, 0x2c, 0x2d, 0x2e, 0x2f,
    0x30, 0x31, 0x32, 0x33, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3a, 0x3b, 0x3c, 0x3d, 0x3e, 0x3f,
    0x40, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x6b, 0x6c, 0x6d, 0x6e, 0x6f,
    0x70, 0x71, 0x72, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a, 0x5b, 0x5c, 0x5d, 0x5e, 0x5f,
    0x60, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x6b, 0x6c, 0x6d, 0x6e, 0x6f,
    0x70, 0x71, 0x72, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a, 0x7b, 0x7c, 0x7d, 0x7e, 0x7f,
    0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8a, 0x8b, 0x8c, 0x8d, 0x8e, 0x8f,
    0x90, 0x91, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9a, 0x9b, 0x9c, 0x9d, 0x9e, 0x9f,
    0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xab, 0xac, 0xad, 0xae, 0xaf,
    0xb0, 0xb1, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba, 0xbb, 0xbc, 0xbd, 0xbe, 0xbf,
    0xc0, 0xc1, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xcb, 0xcc, 0xcd, 0xce, 0xcf,
    0xd0, 0xd1, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda, 0xdb, 0xdc, 0xdd, 0xde, 0xdf,
    0xe0, 0xe1, 0xe2, 0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8, 0xe9, 0xea, 0xeb, 0xec, 0xed, 0xee, 0xef,
    0xf0, 0xf1, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa, 0xfb, 0xfc, 0xfd, 0xfe, 0xff,
};

#define WG_HTTP_IS(c, cls) (wg_http_ctype[(unsigned char)(c)] & (cls))
#define WG_HTTP_INT64_MAX UINT64_C(0x7fffffffffffffff)

/* Word-at-a-time tests (portable SWAR): is there, among the 8 bytes of x, a
 * byte below n (n <= 0x80), a byte equal to b, a byte >= 0x7f? Each answer
 * is exact as a yes/no (borrows and carries only spread upward from a byte
 * that already answers yes), which is all the fast scans need. */
#define WG_HTTP_ONES UINT64_C(0x0101010101010101)
#define WG_HTTP_HIGHS UINT64_C(0x8080808080808080)
#define WG_HTTP_HAS_LESS(x, n) (((x) - WG_HTTP_ONES * (n)) & ~(x) & WG_HTTP_HIGHS)
#define WG_HTTP_HAS_BYTE(x, b) WG_HTTP_HAS_LESS((x) ^ (WG_HTTP_ONES * (b)), 1)
#define WG_HTTP_HAS_HIGH(x) (((x) | ((x) + WG_HTTP_ONES)) & WG_HTTP_HIGHS)

enum wg_http_state {
    /* request line */
    WG_HTTP_S_RL_START, WG_HTTP_S_RL_START_LF, WG_HTTP_S_RL_METHOD, WG_HTTP_S_RL_TARGET,
    WG_HTTP_S_RL_ASTERISK, WG_HTTP_S_RL_SCHEME, WG_HTTP_S_RL_SLASH1, WG_HTTP_S_RL_SLASH2,
    WG_HTTP_S_RL_AUTHORITY, WG_HTTP_S_RL_PATH, WG_HTTP_S_RL_QUERY, WG_HTTP_S_RL_09_LF,
    WG_HTTP_S_RL_VERSION, WG_HTTP_S_RL_VERSION_END, WG_HTTP_S_RL_LF,
    /* status line */
    WG_HTTP_S_SL_VERSION, WG_HTTP_S_SL_SP, WG_HTTP_S_SL_CODE, WG_HTTP_S_SL_AFTER_CODE,
    WG_HTTP_S_SL_REASON, WG_HTTP_S_SL_LF,
    /* header section */
    WG_HTTP_S_F_LINE, WG_HTTP_S_F_NAME, WG_HTTP_S_F_OWS, WG_HTTP_S_F_VALUE,
    WG_HTTP_S_F_VALUE_LF, WG_HTTP_S_F_END_LF,
    WG_HTTP_S_DONE, WG_HTTP_S_ERROR
};

/* Sub-parsers return this: the section ended (state moved on), the input
 * (or the section's limit) ended, or the message was refused. */
enum { WG_HTTP_STEP_ERROR = -1, WG_HTTP_STEP_END = 0, WG_HTTP_STEP_NEXT = 1 };

/* ---- small helpers ---------------------------------------------------- */

/* `s` equals the lowercase literal `lit` of length n, ignoring ASCII case. */
static bool wg_http_ieq(const unsigned char *s, const char *lit, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (wg_http_lower[s[i]] != (unsigned char)lit[i])
            return false;
    return true;
}

static bool wg_http_span_ieq(const unsigned char *base, struct wg_http_span s, const char *lit)
{
    size_t n = strlen(lit);
    return s.len == n && wg_http_ieq(base + s.off, lit, n);
}

static bool wg_http_all(const unsigned char *s, uint32_t n, uint8_t cls)
{
    for (uint32_t i = 0; i < n; i++)
        if (!WG_HTTP_IS(s[i], cls))
            return false;
    return true;
}

static int wg_http_fail(struct wg_http_parser *p, uint32_t off, int status, const char *reason)
{
    p->err_status = status;
    p->err_reason = reason;
    p->pos = off;
    p->state = WG_HTTP_S_ERROR;
    return WG_HTTP_STEP_ERROR;
}

/* ---- setup ------------------------------------------------------------ */

static void wg_http_parser_setup(struct wg_http_parser *p, struct wg_http_header *headers,
                                 uint32_t max_headers, uint32_t max_head, bool response)
{
    memset(p, 0, sizeof *p);
    p->headers = headers;
    p->max_headers = headers ? max_headers : 0;
    if (max_head == 0)
        max_head = WG_HTTP_DEFAULT_MAX_HEAD;
    p->max_head = max_head > WG_HTTP_LIMIT_MAX_HEAD ? WG_HTTP_LIMIT_MAX_HEAD : max_head;
    p->response = response;
    p->state = response ? WG_HTTP_S_SL_VERSION : WG_HTTP_S_RL_START;
}

void wg_http_parser_init_request(struct wg_http_parser *p, struct wg_http_header *headers,
                                 uint32_t max_headers, uint32_t max_head)
{
    wg_http_parser_setup(p, headers, max_headers, max_head, false);
}

void wg_http_parser_init_response(struct wg_http_parser *p, struct wg_http_header *headers,
                                  uint32_t max_headers, uint32_t max_head,
                                  enum wg_http_method req_method, bool req_upgrade)
{
    wg_http_parser_setup(p, headers, max_headers, max_head, true);
    p->req_method = req_method;
    p->req_upgrade = req_upgrade;
}

void wg_http_parser_reset(struct wg_http_parser *p)
{
    struct wg_http_parser cfg = *p;

    wg_http_parser_setup(p, cfg.headers, cfg.max_headers, cfg.max_head, cfg.response);
    p->req_method = cfg.req_method;
    p->req_upgrade = cfg.req_upgrade;
}

/* ---- request line ----------------------------------------------------- */

static enum wg_http_method wg_http_method_lookup(const unsigned char *s, uint32_t n)
{
#define WG_HTTP_M(lit, m) if (memcmp(s, lit, n) == 0) return m
    switch (n) {            /* methods are case-sensitive (RFC 9110 §9.1) */
    case 3: WG_HTTP_M("GET", WG_HTTP_GET); WG_HTTP_M("PUT", WG_HTTP_PUT); break;
    case 4: WG_HTTP_M("HEAD", WG_HTTP_HEAD); WG_HTTP_M("POST", WG_HTTP_POST); break;
    case 5: WG_HTTP_M("PATCH", WG_HTTP_PATCH); WG_HTTP_M("TRACE", WG_HTTP_TRACE); break;
    case 6: WG_HTTP_M("DELETE", WG_HTTP_DELETE); break;
    case 7: WG_HTTP_M("OPTIONS", WG_HTTP_OPTIONS); WG_HTTP_M("CONNECT", WG_HTTP_CONNECT); break;
    default: break;
    }
#undef WG_HTTP_M
    return WG_HTTP_OTHER;
}

/* One byte of "HTTP/d.d"; msg.version collects major * 10 + minor. */
static bool wg_http_version_byte(struct wg_http_parser *p, unsigned char c)
{
    switch (p->vpos) {
    case 5:
        if (c < '0' || c > '9')
            return false;
        p->msg.version = (unsigned)(c - '0') * 10;
        return true;
    case 6:
        return c == '.';
    case 7:
        if (c < '0' || c > '9')
            return false;
        p->msg.version += (unsigned)(c - '0');
        return true;
    default:
        return c == (unsigned char)"HTTP/"[p->vpos];
    }
}

/* The start of the request line: leading empty lines and the method. */
static int wg_http_method(struct wg_http_parser *p, const unsigned char *base,
                          const unsigned char *end)
{
    const unsigned char *s = base + p->pos;
    struct wg_http_message *m = &p->msg;

    for (; s < end; s++) {
        uint32_t off = (uint32_t)(s - base);
        unsigned char c = *s;

        if (p->state == WG_HTTP_S_RL_START_LF) {
            if (c != '\n')
                return wg_http_fail(p, off, 400, "bare CR");
            p->state = WG_HTTP_S_RL_START;
        } else if (p->state == WG_HTTP_S_RL_START) {
            if (c == '\r') {
                p->state = WG_HTTP_S_RL_START_LF;
                continue;
            }
            if (!WG_HTTP_IS(c, WG_HTTP_C_TCHAR))
                return wg_http_fail(p, off, 400, c == '\n' ? "bare LF"
                                    : WG_HTTP_IS(c, WG_HTTP_C_WS) ? "whitespace before method"
                                    : "invalid character in method");
            m->method_text.off = off;
            p->state = WG_HTTP_S_RL_METHOD;
        } else {
            while (s < end && WG_HTTP_IS(*s, WG_HTTP_C_TCHAR))
                s++;
            if (s == end)
                break;
            off = (uint32_t)(s - base);
            if (*s != ' ')
                return wg_http_fail(p, off, 400, "invalid character in method");
            m->method_text.len = off - m->method_text.off;
            m->method = wg_http_method_lookup(base + m->method_text.off, m->method_text.len);
            if (m->method == WG_HTTP_CONNECT)
                return wg_http_fail(p, off, 501, "CONNECT is not supported");
            p->state = WG_HTTP_S_RL_TARGET;
            p->pos = off + 1;
            return WG_HTTP_STEP_NEXT;
        }
    }
    p->pos = (uint32_t)(s - base);
    return WG_HTTP_STEP_END;
}

/* The target ends at `off` (a SP, or the CR of an HTTP/0.9 line). */
static void wg_http_target_end(struct wg_http_parser *p, uint32_t off)
{
    struct wg_http_message *m = &p->msg;

    m->target.len = off - m->target.off;
    if (m->has_query)
        m->query.len = off - m->query.off;
    else if (m->target_form != WG_HTTP_TARGET_ASTERISK)
        m->path.len = off - m->path.off;
    p->state = WG_HTTP_S_RL_VERSION;
    p->vpos = 0;
}

/* The path or query ended at '?', SP or CR (anything else is refused). */
static int wg_http_path_delim(struct wg_http_parser *p, uint32_t off, unsigned char c)
{
    struct wg_http_message *m = &p->msg;

    if (c == '?' && !m->has_query) {
        m->path.len = off - m->path.off;
        m->has_query = true;
        m->query.off = off + 1;
        p->state = WG_HTTP_S_RL_QUERY;
        return WG_HTTP_STEP_END;
    }
    if (c == ' ') {
        wg_http_target_end(p, off);
        return WG_HTTP_STEP_NEXT;
    }
    if (c == '\r') {
        wg_http_target_end(p, off);
        p->state = WG_HTTP_S_RL_09_LF;
        return WG_HTTP_STEP_NEXT;
    }
    return wg_http_fail(p, off, 400, c == '#' ? "fragment in request target"
                        : "invalid character in request target");
}

/* The authority of an absolute-form target ended at `c`. */
static int wg_http_authority_end(struct wg_http_parser *p, uint32_t off, unsigned char c)
{
    struct wg_http_message *m = &p->msg;

    if (c == '@')
        return wg_http_fail(p, off, 400, "userinfo in request target");
    if (c != '/' && c != '?' && c != ' ')
        return wg_http_fail(p, off, 400, "invalid character in request target");
    m->authority.len = off - m->authority.off;
    if (m->authority.len == 0)
        return wg_http_fail(p, off, 400, "empty authority in request target");
    m->path.off = off;
    if (c == '/') {
        p->state = WG_HTTP_S_RL_PATH;
        return WG_HTTP_STEP_END;
    }
    return wg_http_path_delim(p, off, c);
}

/* First byte of the target: which form it has. */
static int wg_http_target_start(struct wg_http_parser *p, uint32_t off, unsigned char c)
{
    struct wg_http_message *m = &p->msg;

    m->target.off = off;
    if (c == '/') {
        m->path.off = off;
        p->state = WG_HTTP_S_RL_PATH;
    } else if (c == '*') {
        m->target_form = WG_HTTP_TARGET_ASTERISK;
        m->path.off = off + 1;
        p->state = WG_HTTP_S_RL_ASTERISK;
    } else if ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') {
        m->target_form = WG_HTTP_TARGET_ABSOLUTE;
        p->state = WG_HTTP_S_RL_SCHEME;
    } else {
        return wg_http_fail(p, off, 400, WG_HTTP_IS(c, WG_HTTP_C_WS)
                            ? "extra whitespace in request line" : "invalid request target");
    }
    return WG_HTTP_STEP_END;
}

static int wg_http_target_byte(struct wg_http_parser *p, const unsigned char *base,
                               uint32_t off, unsigned char c)
{
    struct wg_http_message *m = &p->msg;

    switch (p->state) {
    case WG_HTTP_S_RL_TARGET:
        return wg_http_target_start(p, off, c);
    case WG_HTTP_S_RL_ASTERISK:
        if (c != ' ')
            return wg_http_fail(p, off, 400, "invalid request target");
        if (m->method != WG_HTTP_OPTIONS)
            return wg_http_fail(p, off, 400, "asterisk-form target outside OPTIONS");
        wg_http_target_end(p, off);
        return WG_HTTP_STEP_NEXT;
    case WG_HTTP_S_RL_SCHEME:
        if (c != ':')
            return wg_http_fail(p, off, 400, "invalid request target");
        if (!wg_http_span_ieq(base, (struct wg_http_span){m->target.off, off - m->target.off},
                              "http") &&
            !wg_http_span_ieq(base, (struct wg_http_span){m->target.off, off - m->target.off},
                              "https"))
            return wg_http_fail(p, off, 400, "unsupported scheme in request target");
        p->state = WG_HTTP_S_RL_SLASH1;
        return WG_HTTP_STEP_END;
    case WG_HTTP_S_RL_SLASH1:
    case WG_HTTP_S_RL_SLASH2:
        if (c != '/')
            return wg_http_fail(p, off, 400, "invalid request target");
        p->state++;
        m->authority.off = off + 1;
        return WG_HTTP_STEP_END;
    case WG_HTTP_S_RL_AUTHORITY:
        return wg_http_authority_end(p, off, c);
    default: /* PATH or QUERY */
        return wg_http_path_delim(p, off, c);
    }
}

/* Skip whole words of target bytes (VCHAR but '#', and but '?' in a path);
 * the byte loop after it finds the exact stop. */
static const unsigned char *wg_http_skip_target8(const unsigned char *s,
                                                 const unsigned char *end, bool path)
{
    uint64_t qmark = path ? WG_HTTP_ONES * '?' : WG_HTTP_ONES * '#';

    while (end - s >= 8) {
        uint64_t x;
        memcpy(&x, s, sizeof x);
        if (WG_HTTP_HAS_LESS(x, 0x21) | WG_HTTP_HAS_HIGH(x) | WG_HTTP_HAS_BYTE(x, '#') |
            WG_HTTP_HAS_LESS(x ^ qmark, 1))
            break;
        s += 8;
    }
    return s;
}

/* Fast-scan class of each target state; 0: every byte goes to the switch. */
static uint8_t wg_http_target_class(uint8_t state)
{
    switch (state) {
    case WG_HTTP_S_RL_PATH: return WG_HTTP_C_PATH;
    case WG_HTTP_S_RL_QUERY: return WG_HTTP_C_URI;
    case WG_HTTP_S_RL_AUTHORITY: return WG_HTTP_C_HOST;
    case WG_HTTP_S_RL_SCHEME: return WG_HTTP_C_SCHEME;
    default: return 0;
    }
}

static int wg_http_target(struct wg_http_parser *p, const unsigned char *base,
                          const unsigned char *end)
{
    const unsigned char *s = base + p->pos;

    while (s < end) {
        uint8_t cls = wg_http_target_class(p->state);

        if (cls == WG_HTTP_C_PATH || cls == WG_HTTP_C_URI)
            s = wg_http_skip_target8(s, end, cls == WG_HTTP_C_PATH);
        if (cls) {
            while (s < end && WG_HTTP_IS(*s, cls))
                s++;
            if (s == end)
                break;
        }
        int rc = wg_http_target_byte(p, base, (uint32_t)(s - base), *s);
        if (rc != WG_HTTP_STEP_END) {
            if (rc == WG_HTTP_STEP_NEXT)
                p->pos = (uint32_t)(s - base) + 1;
            return rc;
        }
        s++;
    }
    p->pos = (uint32_t)(s - base);
    return WG_HTTP_STEP_END;
}

/* "HTTP/d.d" CRLF after the target, or the LF of an HTTP/0.9 line. */
static int wg_http_request_version(struct wg_http_parser *p, const unsigned char *base,
                                   const unsigned char *end)
{
    const unsigned char *s = base + p->pos;

    /* the usual case in one comparison; the bytes decide exactly as below */
    if (p->state == WG_HTTP_S_RL_VERSION && p->vpos == 0 && end - s >= 10 &&
        memcmp(s, "HTTP/1.", 7) == 0 && (s[7] == '1' || s[7] == '0') &&
        s[8] == '\r' && s[9] == '\n') {
        p->msg.version = 10 + (unsigned)(s[7] - '0');
        p->state = WG_HTTP_S_F_LINE;
        p->head_start = p->pos = (uint32_t)(s - base) + 10;
        return WG_HTTP_STEP_NEXT;
    }
    for (; s < end; s++) {
        uint32_t off = (uint32_t)(s - base);
        unsigned char c = *s;

        switch (p->state) {
        case WG_HTTP_S_RL_09_LF:
            if (c != '\n')
                return wg_http_fail(p, off, 400, "bare CR");
            return wg_http_fail(p, off, 505, "HTTP/0.9 request");
        case WG_HTTP_S_RL_VERSION:
            if (!wg_http_version_byte(p, c))
                return wg_http_fail(p, off, 400, p->vpos == 0 && WG_HTTP_IS(c, WG_HTTP_C_WS)
                                    ? "extra whitespace in request line" : "invalid HTTP version");
            if (++p->vpos == 8)
                p->state = WG_HTTP_S_RL_VERSION_END;
            break;
        case WG_HTTP_S_RL_VERSION_END:
            if (c != '\r')
                return wg_http_fail(p, off, 400, WG_HTTP_IS(c, WG_HTTP_C_WS)
                                    ? "extra whitespace in request line" : "invalid HTTP version");
            p->state = WG_HTTP_S_RL_LF;
            break;
        default: /* RL_LF */
            if (c != '\n')
                return wg_http_fail(p, off, 400, "bare CR");
            if (p->msg.version != 10 && p->msg.version != 11)
                return wg_http_fail(p, off, 505, "unsupported HTTP version");
            p->state = WG_HTTP_S_F_LINE;
            p->head_start = p->pos = off + 1;
            return WG_HTTP_STEP_NEXT;
        }
    }
    p->pos = (uint32_t)(s - base);
    return WG_HTTP_STEP_END;
}

/* ---- status line ------------------------------------------------------ */

static int wg_http_status_byte(struct wg_http_parser *p, uint32_t off, unsigned char c)
{
    struct wg_http_message *m = &p->msg;

    switch (p->state) {
    case WG_HTTP_S_SL_VERSION:
        if (!wg_http_version_byte(p, c))
            return wg_http_fail(p, off, 400, "invalid status line");
        if (++p->vpos == 8)
            p->state = WG_HTTP_S_SL_SP;
        return WG_HTTP_STEP_END;
    case WG_HTTP_S_SL_SP:
        if (c != ' ')
            return wg_http_fail(p, off, 400, "invalid status line");
        p->state = WG_HTTP_S_SL_CODE;
        p->vpos = 0;
        return WG_HTTP_STEP_END;
    case WG_HTTP_S_SL_CODE:
        if (c < '0' || c > '9' || (p->vpos == 0 && c == '0'))
            return wg_http_fail(p, off, 400, "invalid status code");
        m->status = m->status * 10 + (unsigned)(c - '0');
        if (++p->vpos == 3)
            p->state = WG_HTTP_S_SL_AFTER_CODE;
        return WG_HTTP_STEP_END;
    case WG_HTTP_S_SL_AFTER_CODE:
        m->reason.off = off + (c == ' ');
        if (c == ' ')
            p->state = WG_HTTP_S_SL_REASON;
        else if (c == '\r')
            p->state = WG_HTTP_S_SL_LF;
        else
            return wg_http_fail(p, off, 400, "invalid status code");
        return WG_HTTP_STEP_END;
    case WG_HTTP_S_SL_REASON:
        if (c != '\r')
            return wg_http_fail(p, off, 400, "invalid character in reason phrase");
        m->reason.len = off - m->reason.off;
        p->state = WG_HTTP_S_SL_LF;
        return WG_HTTP_STEP_END;
    default: /* SL_LF */
        if (c != '\n')
            return wg_http_fail(p, off, 400, "bare CR");
        if (m->version != 10 && m->version != 11)
            return wg_http_fail(p, off, 505, "unsupported HTTP version");
        p->state = WG_HTTP_S_F_LINE;
        p->head_start = off + 1;
        return WG_HTTP_STEP_NEXT;
    }
}

/* "HTTP/1.x ddd" followed by SP or CR, at once; the bytes decide exactly as
 * wg_http_status_byte() would, which handles every other case. */
static void wg_http_status_fast(struct wg_http_parser *p, const unsigned char *base,
                                const unsigned char *s, const unsigned char *end)
{
    struct wg_http_message *m = &p->msg;

    if (end - s < 13 || memcmp(s, "HTTP/1.", 7) != 0 || (s[7] != '0' && s[7] != '1') ||
        s[8] != ' ' || s[9] < '1' || s[9] > '9' || s[10] < '0' || s[10] > '9' ||
        s[11] < '0' || s[11] > '9' || (s[12] != ' ' && s[12] != '\r'))
        return;
    m->version = 10 + (unsigned)(s[7] - '0');
    m->status = (unsigned)(s[9] - '0') * 100 + (unsigned)(s[10] - '0') * 10 +
                (unsigned)(s[11] - '0');
    m->reason.off = (uint32_t)(s - base) + (s[12] == ' ' ? 13 : 12);
    p->state = s[12] == ' ' ? WG_HTTP_S_SL_REASON : WG_HTTP_S_SL_LF;
    p->pos = (uint32_t)(s - base) + 13;
}

static int wg_http_status_line(struct wg_http_parser *p, const unsigned char *base,
                               const unsigned char *end)
{
    const unsigned char *s;

    if (p->pos == 0 && p->state == WG_HTTP_S_SL_VERSION)
        wg_http_status_fast(p, base, base, end);
    s = base + p->pos;
    while (s < end) {
        if (p->state == WG_HTTP_S_SL_REASON) {
            while (s < end && WG_HTTP_IS(*s, WG_HTTP_C_VCHAR | WG_HTTP_C_WS))
                s++;
            if (s == end)
                break;
        }
        int rc = wg_http_status_byte(p, (uint32_t)(s - base), *s);
        if (rc != WG_HTTP_STEP_END) {
            if (rc == WG_HTTP_STEP_NEXT)
                p->pos = (uint32_t)(s - base) + 1;
            return rc;
        }
        s++;
    }
    p->pos = (uint32_t)(s - base);
    return WG_HTTP_STEP_END;
}

/* ---- header fields: what the parser itself interprets ----------------- */

static enum wg_http_hdr wg_http_hdr_lookup(const unsigned char *s, uint32_t n)
{
#define WG_HTTP_H(lit, id) if (wg_http_ieq(s, lit, n)) return id
    switch (n) {
    case 2: WG_HTTP_H("te", WG_HTTP_HDR_TE); break;
    case 4: WG_HTTP_H("host", WG_HTTP_HDR_HOST); break;
    case 6: WG_HTTP_H("expect", WG_HTTP_HDR_EXPECT); break;
    case 7: WG_HTTP_H("upgrade", WG_HTTP_HDR_UPGRADE);
            WG_HTTP_H("trailer", WG_HTTP_HDR_TRAILER); break;
    case 10: WG_HTTP_H("connection", WG_HTTP_HDR_CONNECTION);
             WG_HTTP_H("keep-alive", WG_HTTP_HDR_KEEP_ALIVE); break;
    case 14: WG_HTTP_H("content-length", WG_HTTP_HDR_CONTENT_LENGTH); break;
    case 16: WG_HTTP_H("proxy-connection", WG_HTTP_HDR_PROXY_CONNECTION); break;
    case 17: WG_HTTP_H("transfer-encoding", WG_HTTP_HDR_TRANSFER_ENCODING); break;
    default: break;
    }
#undef WG_HTTP_H
    return WG_HTTP_HDR_OTHER;
}

static int wg_http_content_length(struct wg_http_parser *p, const unsigned char *v,
                                  uint32_t len, uint32_t off)
{
    uint64_t n = 0;

    if (p->msg.has_content_length)
        return wg_http_fail(p, off, 400, "several Content-Length header fields");
    if (len == 0)
        return wg_http_fail(p, off, 400, "invalid Content-Length");
    for (uint32_t i = 0; i < len; i++) {
        unsigned d = (unsigned)v[i] - '0';
        if (d > 9)
            return wg_http_fail(p, off, 400, "invalid Content-Length");
        if (n > (WG_HTTP_INT64_MAX - d) / 10)
            return wg_http_fail(p, off, 400, "Content-Length too large");
        n = n * 10 + d;
    }
    p->msg.has_content_length = true;
    p->msg.content_length = n;
    return WG_HTTP_STEP_END;
}

/* Collect the codings; the verdict waits for the end of the head because
 * codings may be spread over several field lines. */
static int wg_http_transfer_encoding(struct wg_http_parser *p, const unsigned char *base,
                                     struct wg_http_span value, uint32_t off)
{
    struct wg_http_span item;
    uint32_t cursor = 0;

    p->msg.has_transfer_encoding = true;
    while (wg_http_list_next((const char *)base, value, &cursor, &item)) {
        if (!wg_http_all(base + item.off, item.len, WG_HTTP_C_TCHAR))
            return wg_http_fail(p, off, 400, "invalid Transfer-Encoding");
        bool chunked = wg_http_span_ieq(base, item, "chunked");
        if (p->te_last_chunked)
            p->te_chunked_nonfinal = true;
        p->te_last_chunked = chunked;
        p->te_unknown |= !chunked;
        p->te_codings++;
    }
    return WG_HTTP_STEP_END;
}

static int wg_http_connection(struct wg_http_parser *p, const unsigned char *base,
                              struct wg_http_span value, uint32_t off)
{
    struct wg_http_message *m = &p->msg;
    struct wg_http_span item;
    uint32_t cursor = 0;

    while (wg_http_list_next((const char *)base, value, &cursor, &item)) {
        if (!wg_http_all(base + item.off, item.len, WG_HTTP_C_TCHAR))
            return wg_http_fail(p, off, 400, "invalid Connection header");
        m->conn_close |= wg_http_span_ieq(base, item, "close");
        m->conn_keep_alive |= wg_http_span_ieq(base, item, "keep-alive");
        m->conn_upgrade |= wg_http_span_ieq(base, item, "upgrade");
    }
    return WG_HTTP_STEP_END;
}

/* A complete field line is in p->headers[nheaders]: record and interpret. */
/* A '_' in a field name: eight bytes at a time (names are short; a call to
 * memchr per field cost more than the test). */
static bool wg_http_has_underscore(const unsigned char *s, uint32_t n)
{
    for (; n >= 8; s += 8, n -= 8) {
        uint64_t x;
        memcpy(&x, s, sizeof x);
        if (WG_HTTP_HAS_BYTE(x, '_'))
            return true;
    }
    while (n--)
        if (*s++ == '_')
            return true;
    return false;
}

static int wg_http_field_done(struct wg_http_parser *p, const unsigned char *base, uint32_t off)
{
    struct wg_http_message *m = &p->msg;
    struct wg_http_header *h = &p->headers[m->nheaders++];
    struct wg_http_span item;
    uint32_t cursor = 0;

    h->id = wg_http_hdr_lookup(base + h->name.off, h->name.len);
    if (h->id == WG_HTTP_HDR_OTHER && !p->response && !m->underscore)
        m->underscore = wg_http_has_underscore(base + h->name.off, h->name.len);
    switch (h->id) {
    case WG_HTTP_HDR_HOST:
        if (++p->host_count > 1)
            return wg_http_fail(p, off, 400, "several Host header fields");
        if (!wg_http_all(base + h->value.off, h->value.len, WG_HTTP_C_HOST))
            return wg_http_fail(p, off, 400, "invalid Host header");
        m->has_host = true;
        m->host = h->value;
        break;
    case WG_HTTP_HDR_CONTENT_LENGTH:
        return wg_http_content_length(p, base + h->value.off, h->value.len, off);
    case WG_HTTP_HDR_TRANSFER_ENCODING:
        return wg_http_transfer_encoding(p, base, h->value, off);
    case WG_HTTP_HDR_CONNECTION:
        return wg_http_connection(p, base, h->value, off);
    case WG_HTTP_HDR_UPGRADE:
        p->upgrade_field |= h->value.len > 0;
        break;
    case WG_HTTP_HDR_EXPECT:
        while (wg_http_list_next((const char *)base, h->value, &cursor, &item))
            p->expect_continue |= wg_http_span_ieq(base, item, "100-continue");
        break;
    default:
        break;
    }
    return WG_HTTP_STEP_END;
}

/* ---- header section: the byte-level machine --------------------------- */

/* Why the first byte of a field line is refused. */
static int wg_http_bad_line_start(struct wg_http_parser *p, uint32_t off, unsigned char c)
{
    if (WG_HTTP_IS(c, WG_HTTP_C_WS))
        return wg_http_fail(p, off, 400, p->msg.nheaders ? "obs-fold in header section"
                            : "whitespace before the first header field");
    return wg_http_fail(p, off, 400, c == '\n' ? "bare LF" : c == ':' ? "empty header field name"
                        : "invalid character in header field name");
}

/* Skip field-value bytes (field-vchar, SP, HTAB): whole words while they
 * hold no CTL (HTAB included, rare) and no DEL, then bytes up to the end of
 * the word that stopped it. Returns the first byte that is none of them. */
static const unsigned char *wg_http_skip_value(const unsigned char *s, const unsigned char *end)
{
    for (;;) {
        while (end - s >= 8) {
            uint64_t x;
            memcpy(&x, s, sizeof x);
            if (WG_HTTP_HAS_LESS(x, 0x20) | WG_HTTP_HAS_BYTE(x, 0x7f))
                break;
            s += 8;
        }
        const unsigned char *stop = end - s > 8 ? s + 8 : end;
        while (s < stop && WG_HTTP_IS(*s, WG_HTTP_C_VCHAR | WG_HTTP_C_WS))
            s++;
        if (s < stop || s == end)
            return s;
    }
}

static int wg_http_finish(struct wg_http_parser *p, const unsigned char *base, uint32_t off);

/* The value ends before the CR at `cr`, trailing OWS excluded. The caller
 * passes the message from its first byte, so looking back is allowed; the
 * value starts after the leading OWS, so the trim stops there. */
static void wg_http_value_end(struct wg_http_header *h, const unsigned char *base, uint32_t cr)
{
    while (cr > h->value.off && WG_HTTP_IS(base[cr - 1], WG_HTTP_C_WS))
        cr--;
    h->value.len = cr - h->value.off;
}

/* Field lines up to the empty line. The switch only resumes a line cut by
 * the end of the input; a complete line falls through name, OWS, value and
 * CRLF without going back to a dispatcher. */
static int wg_http_fields(struct wg_http_parser *p, const unsigned char *base,
                          const unsigned char *end)
{
#define WG_HTTP_OFF(x) ((uint32_t)((x) - base))
#define WG_HTTP_CUR (&p->headers[p->msg.nheaders])
#define WG_HTTP_NEED(st) do { if (s == end) { p->state = (st); goto out; } } while (0)
    const unsigned char *s = base + p->pos;

    switch (p->state) {
    case WG_HTTP_S_F_NAME: goto name;
    case WG_HTTP_S_F_OWS: goto ows;
    case WG_HTTP_S_F_VALUE: goto value;
    case WG_HTTP_S_F_VALUE_LF: goto value_lf;
    case WG_HTTP_S_F_END_LF: goto end_lf;
    default: break;
    }
line:
    WG_HTTP_NEED(WG_HTTP_S_F_LINE);
    if (*s == '\r') {
        s++;
        goto end_lf;
    }
    if (!WG_HTTP_IS(*s, WG_HTTP_C_TCHAR))
        return wg_http_bad_line_start(p, WG_HTTP_OFF(s), *s);
    if (p->msg.nheaders >= p->max_headers)
        return wg_http_fail(p, WG_HTTP_OFF(s), 431, "too many header fields");
    WG_HTTP_CUR->name.off = WG_HTTP_OFF(s);
name:
    while (s < end && WG_HTTP_IS(*s, WG_HTTP_C_TCHAR))
        s++;
    WG_HTTP_NEED(WG_HTTP_S_F_NAME);
    if (*s != ':')
        return wg_http_fail(p, WG_HTTP_OFF(s), 400, WG_HTTP_IS(*s, WG_HTTP_C_WS)
                            ? "whitespace before colon" : (*s == '\r' || *s == '\n')
                            ? "header field without colon"
                            : "invalid character in header field name");
    WG_HTTP_CUR->name.len = WG_HTTP_OFF(s) - WG_HTTP_CUR->name.off;
    s++;
ows:
    while (s < end && WG_HTTP_IS(*s, WG_HTTP_C_WS))
        s++;
    WG_HTTP_NEED(WG_HTTP_S_F_OWS);
    WG_HTTP_CUR->value.off = WG_HTTP_OFF(s);
value:
    s = wg_http_skip_value(s, end);
    WG_HTTP_NEED(WG_HTTP_S_F_VALUE);
    if (*s != '\r')
        return wg_http_fail(p, WG_HTTP_OFF(s), 400, *s == '\n' ? "bare LF"
                            : "control character in header field value");
    wg_http_value_end(WG_HTTP_CUR, base, WG_HTTP_OFF(s));
    s++;
value_lf:
    WG_HTTP_NEED(WG_HTTP_S_F_VALUE_LF);
    if (*s != '\n')
        return wg_http_fail(p, WG_HTTP_OFF(s), 400, "bare CR");
    if (wg_http_field_done(p, base, WG_HTTP_OFF(s)) < 0)
        return WG_HTTP_STEP_ERROR;
    s++;
    goto line;
end_lf:
    WG_HTTP_NEED(WG_HTTP_S_F_END_LF);
    if (*s != '\n')
        return wg_http_fail(p, WG_HTTP_OFF(s), 400, "bare CR");
    if (wg_http_finish(p, base, WG_HTTP_OFF(s)) < 0)
        return WG_HTTP_STEP_ERROR;
    p->state = WG_HTTP_S_DONE;
    p->pos = WG_HTTP_OFF(s) + 1;
    return WG_HTTP_STEP_NEXT;
out:
    p->pos = WG_HTTP_OFF(s);
    return WG_HTTP_STEP_END;
#undef WG_HTTP_NEED
#undef WG_HTTP_CUR
#undef WG_HTTP_OFF
}

/* ---- end of head: framing and connection semantics -------------------- */

/* Transfer-Encoding verdict (RFC 9112 §6.1, DESIGN §10). */
static int wg_http_finish_te(struct wg_http_parser *p, uint32_t off)
{
    struct wg_http_message *m = &p->msg;

    if (m->version == 10)
        return wg_http_fail(p, off, 400, "Transfer-Encoding in an HTTP/1.0 message");
    if (m->has_content_length)
        return wg_http_fail(p, off, 400, "both Content-Length and Transfer-Encoding");
    if (p->te_codings == 0)
        return wg_http_fail(p, off, 400, "empty Transfer-Encoding");
    if (p->te_chunked_nonfinal)
        return wg_http_fail(p, off, 400, "chunked is not the final transfer coding");
    if (p->te_unknown)
        return wg_http_fail(p, off, 501, "unsupported transfer coding");
    m->chunked = true;
    return WG_HTTP_STEP_END;
}

static int wg_http_finish_request(struct wg_http_parser *p, const unsigned char *base,
                                  uint32_t off)
{
    struct wg_http_message *m = &p->msg;

    if (m->target_form == WG_HTTP_TARGET_ABSOLUTE) {
        if (!m->has_host) {
            m->has_host = true;
            m->host = m->authority;
        } else if (!wg_http_name_eq((const char *)base + m->host.off, m->host.len,
                                    (const char *)base + m->authority.off, m->authority.len)) {
            return wg_http_fail(p, off, 400, "Host header differs from target authority");
        }
    }
    if (m->version == 11) {     /* HTTP/1.0 recipients ignore both (RFC 9110 §10.1.1, §7.8) */
        m->expect_continue = p->expect_continue;
        m->upgrade = m->conn_upgrade && p->upgrade_field;
    }
    m->framing = m->chunked ? WG_HTTP_BODY_CHUNKED
               : m->has_content_length ? WG_HTTP_BODY_LENGTH : WG_HTTP_BODY_NONE;
    return WG_HTTP_STEP_END;
}

/* RFC 9112 §6.3, in its order: no-body statuses and HEAD, tunnels, then
 * the framing headers, then until close. */
static int wg_http_finish_response(struct wg_http_parser *p, uint32_t off)
{
    struct wg_http_message *m = &p->msg;
    unsigned st = m->status;

    if (st == 101) {
        if (!p->req_upgrade)
            return wg_http_fail(p, off, 400, "101 response to a request without upgrade");
        m->upgrade = true;
        m->framing = WG_HTTP_BODY_TUNNEL;
    } else if (st < 200) {
        m->interim = true;
        m->framing = WG_HTTP_BODY_NONE;
    } else if (p->req_method == WG_HTTP_HEAD || st == 204 || st == 304) {
        m->framing = WG_HTTP_BODY_NONE;
    } else if (p->req_method == WG_HTTP_CONNECT && st < 300) {
        m->framing = WG_HTTP_BODY_TUNNEL;
    } else if (m->chunked) {
        m->framing = WG_HTTP_BODY_CHUNKED;
    } else if (m->has_content_length) {
        m->framing = WG_HTTP_BODY_LENGTH;
    } else {
        m->framing = WG_HTTP_BODY_UNTIL_CLOSE;
    }
    if (m->framing == WG_HTTP_BODY_TUNNEL || m->framing == WG_HTTP_BODY_UNTIL_CLOSE)
        m->keep_alive = false;
    return WG_HTTP_STEP_END;
}

static int wg_http_finish(struct wg_http_parser *p, const unsigned char *base, uint32_t off)
{
    struct wg_http_message *m = &p->msg;

    if (!p->response && m->version == 11 && !m->has_host)
        return wg_http_fail(p, off, 400, "missing Host header");
    if (m->has_transfer_encoding && wg_http_finish_te(p, off) < 0)
        return WG_HTTP_STEP_ERROR;
    m->keep_alive = m->version == 11 ? !m->conn_close : m->conn_keep_alive && !m->conn_close;
    if (p->response)
        return wg_http_finish_response(p, off);
    return wg_http_finish_request(p, base, off);
}

/* ---- the head parser -------------------------------------------------- */

/* Offset past which the current section may not scan. */
static uint32_t wg_http_section_cap(const struct wg_http_parser *p)
{
    if (p->state < WG_HTTP_S_F_LINE)    /* start line: content + CRLF */
        return WG_HTTP_MAX_REQUEST_LINE + 2;
    return p->head_start + p->max_head;
}

static int wg_http_over_limit(struct wg_http_parser *p)
{
    if (p->state >= WG_HTTP_S_F_LINE)
        return wg_http_fail(p, p->pos, 431, "header section too large");
    if (p->response)
        return wg_http_fail(p, p->pos, 400, "status line too long");
    return wg_http_fail(p, p->pos, 414, "request line too long");
}

static int wg_http_head_step(struct wg_http_parser *p, const unsigned char *base,
                             const unsigned char *end)
{
    if (p->state <= WG_HTTP_S_RL_METHOD)
        return wg_http_method(p, base, end);
    if (p->state <= WG_HTTP_S_RL_QUERY)
        return wg_http_target(p, base, end);
    if (p->state <= WG_HTTP_S_RL_LF)
        return wg_http_request_version(p, base, end);
    if (p->state <= WG_HTTP_S_SL_LF)
        return wg_http_status_line(p, base, end);
    return wg_http_fields(p, base, end);
}

enum wg_http_result wg_http_parse_head(struct wg_http_parser *p, const char *msg, size_t len,
                                       size_t *consumed)
{
    const unsigned char *base = (const unsigned char *)msg;
    enum wg_http_result res = WG_HTTP_AGAIN;

    while (p->state != WG_HTTP_S_DONE && p->state != WG_HTTP_S_ERROR) {
        uint32_t cap = wg_http_section_cap(p);
        size_t lim = len < cap ? len : cap;

        if (lim < p->pos)       /* the caller passed less than before */
            lim = p->pos;
        int rc = wg_http_head_step(p, base, base + lim);
        if (rc == WG_HTTP_STEP_END) {
            if (lim < len)
                wg_http_over_limit(p);
            break;
        }
    }
    if (p->state == WG_HTTP_S_DONE)
        res = WG_HTTP_DONE;
    else if (p->state == WG_HTTP_S_ERROR)
        res = WG_HTTP_ERROR;
    if (consumed)
        *consumed = p->pos;
    return res;
}

/* ---- heads waygate built itself ---------------------------------------- */

bool wg_http_split_head(struct wg_http_parser *p, const char *msg, size_t len)
{
    const unsigned char *s = (const unsigned char *)msg, *end = s + len;
    struct wg_http_message *m = &p->msg;
    const unsigned char *eol = memchr(s, '\n', len), *sp;

    if (p->response || p->state != WG_HTTP_S_RL_START || len > UINT32_MAX || !eol ||
        eol - s < 13 || eol[-1] != '\r' || memcmp(eol - 10, " HTTP/1.1", 9) != 0 ||
        !(sp = memchr(s, ' ', (size_t)(eol - 10 - s))) || sp == s || sp + 1 == eol - 10)
        return false;
    m->version = 11;
    m->method_text = (struct wg_http_span){ 0, (uint32_t)(sp - s) };
    m->method = wg_http_method_lookup(s, m->method_text.len);
    m->target = (struct wg_http_span){ (uint32_t)(sp + 1 - s), (uint32_t)(eol - 10 - sp - 1) };
    const unsigned char *c = wg_http_skip_target8(sp + 1, eol - 10, false);
    while (c < eol - 10 && WG_HTTP_IS(*c, WG_HTTP_C_URI))
        c++;
    if (c != eol - 10)                  /* a byte the parser refuses in a target */
        return false;
    if (m->target.len == 1 && sp[1] == '*') {
        m->target_form = WG_HTTP_TARGET_ASTERISK;
        m->path = (struct wg_http_span){ m->target.off + 1, 0 };
    } else if (sp[1] == '/') {
        const unsigned char *t = sp + 1, *q = memchr(t, '?', m->target.len);
        m->target_form = WG_HTTP_TARGET_ORIGIN;
        m->path = (struct wg_http_span){ m->target.off, (uint32_t)((q ? q : eol - 10) - t) };
        if ((m->has_query = q != NULL))
            m->query = (struct wg_http_span){ (uint32_t)(q + 1 - s), (uint32_t)(eol - 10 - q - 1) };
    } else {
        return false;
    }
    p->head_start = (uint32_t)(eol + 1 - s);
    for (const unsigned char *l = eol + 1;; l = eol + 1) {
        if (end - l >= 2 && l[0] == '\r' && l[1] == '\n') {
            p->pos = (uint32_t)(l + 2 - s);
            if (p->pos - p->head_start > p->max_head)
                return false;
            p->state = WG_HTTP_S_DONE;
            return true;
        }
        const unsigned char *colon;
        if (!(eol = memchr(l, '\n', (size_t)(end - l))) || eol - l < 3 || eol[-1] != '\r' ||
            !(colon = memchr(l, ':', (size_t)(eol - 1 - l))) || colon == l ||
            m->nheaders == p->max_headers)
            return false;
        struct wg_http_header *h = &p->headers[m->nheaders++];
        const unsigned char *v = colon + 1, *ve = eol - 1;
        if (wg_http_skip_value(v, ve) != ve)    /* a CTL (HTAB aside) or DEL in the value */
            return false;
        while (v < ve && (*v == ' ' || *v == '\t'))
            v++;
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
            ve--;
        h->name = (struct wg_http_span){ (uint32_t)(l - s), (uint32_t)(colon - l) };
        h->value = (struct wg_http_span){ (uint32_t)(v - s), (uint32_t)(ve - v) };
        h->id = wg_http_hdr_lookup(l, h->name.len);
        if (h->id == WG_HTTP_HDR_HOST) {
            if (++p->host_count > 1)
                return false;
            m->has_host = true;
            m->host = h->value;
        }
    }
}

/* ---- body decoder ----------------------------------------------------- */

enum wg_http_body_state {
    WG_HTTP_B_DATA,             /* length / until close */
    /* chunk-size line */
    WG_HTTP_B_SIZE_START, WG_HTTP_B_SIZE, WG_HTTP_B_BWS_SEMI, WG_HTTP_B_EXT_BWS,
    WG_HTTP_B_EXT_NAME, WG_HTTP_B_EXT_NAME_BWS, WG_HTTP_B_EXT_VAL_BWS, WG_HTTP_B_EXT_TOKEN,
    WG_HTTP_B_EXT_QUOTED, WG_HTTP_B_EXT_QUOTED_ESC, WG_HTTP_B_EXT_AFTER_QUOTED,
    WG_HTTP_B_SIZE_LF,
    /* chunk data and its CRLF */
    WG_HTTP_B_CHUNK_DATA, WG_HTTP_B_DATA_CR, WG_HTTP_B_DATA_LF,
    /* trailer section */
    WG_HTTP_B_TR_LINE, WG_HTTP_B_TR_NAME, WG_HTTP_B_TR_VALUE, WG_HTTP_B_TR_VALUE_LF,
    WG_HTTP_B_END_LF,
    WG_HTTP_B_DONE, WG_HTTP_B_ERROR
};

void wg_http_body_init(struct wg_http_body *b, enum wg_http_framing framing,
                       uint64_t content_length, uint32_t max_trailer)
{
    memset(b, 0, sizeof *b);
    b->framing = framing;
    b->max_trailer = max_trailer ? max_trailer : WG_HTTP_DEFAULT_MAX_TRAILER;
    if (framing == WG_HTTP_BODY_CHUNKED)
        b->state = WG_HTTP_B_SIZE_START;
    else if (framing == WG_HTTP_BODY_NONE ||
             (framing == WG_HTTP_BODY_LENGTH && content_length == 0))
        b->state = WG_HTTP_B_DONE;
    else
        b->state = WG_HTTP_B_DATA;
    b->remaining = content_length;
}

static enum wg_http_result wg_http_body_fail(struct wg_http_body *b, int status,
                                             const char *reason)
{
    b->state = WG_HTTP_B_ERROR;
    b->err_status = status;
    b->err_reason = reason;
    return WG_HTTP_ERROR;
}

/* Size-line bytes after the digits: BWS ';' ext-name [BWS '=' BWS ext-val]
 * (RFC 9112 §7.1.1). Extensions are validated, then ignored. */
static bool wg_http_chunk_ext(struct wg_http_body *b, unsigned char c)
{
    bool ws = WG_HTTP_IS(c, WG_HTTP_C_WS), tchar = WG_HTTP_IS(c, WG_HTTP_C_TCHAR);
    uint8_t s = b->state;

    if (c == '\r' && (s == WG_HTTP_B_SIZE || s == WG_HTTP_B_EXT_NAME ||
                      s == WG_HTTP_B_EXT_TOKEN || s == WG_HTTP_B_EXT_AFTER_QUOTED))
        s = WG_HTTP_B_SIZE_LF;
    else if (c == ';' && s != WG_HTTP_B_EXT_BWS && s != WG_HTTP_B_EXT_VAL_BWS &&
             s != WG_HTTP_B_EXT_QUOTED && s != WG_HTTP_B_EXT_QUOTED_ESC)
        s = WG_HTTP_B_EXT_BWS;
    else if (s == WG_HTTP_B_EXT_QUOTED)
        s = c == '"' ? WG_HTTP_B_EXT_AFTER_QUOTED : c == '\\' ? WG_HTTP_B_EXT_QUOTED_ESC
          : WG_HTTP_IS(c, WG_HTTP_C_QDTEXT) ? s : WG_HTTP_B_ERROR;
    else if (s == WG_HTTP_B_EXT_QUOTED_ESC)
        s = WG_HTTP_IS(c, WG_HTTP_C_VCHAR | WG_HTTP_C_WS) ? WG_HTTP_B_EXT_QUOTED : WG_HTTP_B_ERROR;
    else if (ws)
        s = s == WG_HTTP_B_EXT_NAME ? WG_HTTP_B_EXT_NAME_BWS
          : (s == WG_HTTP_B_SIZE || s == WG_HTTP_B_EXT_TOKEN || s == WG_HTTP_B_EXT_AFTER_QUOTED)
          ? WG_HTTP_B_BWS_SEMI : s;     /* BWS states stay */
    else if (c == '=' && (s == WG_HTTP_B_EXT_NAME || s == WG_HTTP_B_EXT_NAME_BWS))
        s = WG_HTTP_B_EXT_VAL_BWS;
    else if (c == '"' && s == WG_HTTP_B_EXT_VAL_BWS)
        s = WG_HTTP_B_EXT_QUOTED;
    else if (tchar && (s == WG_HTTP_B_EXT_BWS || s == WG_HTTP_B_EXT_NAME))
        s = WG_HTTP_B_EXT_NAME;
    else if (tchar && (s == WG_HTTP_B_EXT_VAL_BWS || s == WG_HTTP_B_EXT_TOKEN))
        s = WG_HTTP_B_EXT_TOKEN;
    else
        s = WG_HTTP_B_ERROR;
    if (s == WG_HTTP_B_ERROR)
        return false;
    b->state = s;
    return true;
}

static enum wg_http_result wg_http_chunk_size(struct wg_http_body *b, unsigned char c)
{
    uint8_t h = wg_http_hexval[c];

    if (c != '\r' && ++b->line_len > WG_HTTP_MAX_CHUNK_LINE)
        return wg_http_body_fail(b, 400, "chunk size line too long");
    if (b->state == WG_HTTP_B_SIZE_START) {
        if (h == 0xff)
            return wg_http_body_fail(b, 400, c == '\n' ? "bare LF" : "invalid chunk size");
        b->remaining = h;
        b->digits = 1;
        b->state = WG_HTTP_B_SIZE;
        return WG_HTTP_AGAIN;
    }
    if (b->state == WG_HTTP_B_SIZE && h != 0xff) {
        if (++b->digits > 16 || b->remaining >> 59)     /* keep the size below 2^63 */
            return wg_http_body_fail(b, 400, "chunk size too large");
        b->remaining = b->remaining << 4 | h;
        return WG_HTTP_AGAIN;
    }
    if (!wg_http_chunk_ext(b, c))
        return wg_http_body_fail(b, 400, c == '\n' ? "bare LF"
                                 : b->state == WG_HTTP_B_SIZE ? "invalid chunk size"
                                 : "invalid chunk extension");
    return WG_HTTP_AGAIN;
}

/* Trailer section: field lines validated like header fields, then CRLF. */
static enum wg_http_result wg_http_trailer(struct wg_http_body *b, unsigned char c)
{
    if (++b->trailer_len > b->max_trailer)
        return wg_http_body_fail(b, 431, "trailer section too large");
    switch (b->state) {
    case WG_HTTP_B_TR_LINE:
        if (c == '\r')
            b->state = WG_HTTP_B_END_LF;
        else if (WG_HTTP_IS(c, WG_HTTP_C_TCHAR))
            b->state = WG_HTTP_B_TR_NAME, b->trailers++;
        else
            return wg_http_body_fail(b, 400, c == '\n' ? "bare LF"
                                     : WG_HTTP_IS(c, WG_HTTP_C_WS) ? "obs-fold in trailer section"
                                     : "invalid character in trailer field name");
        return WG_HTTP_AGAIN;
    case WG_HTTP_B_TR_NAME:
        if (c == ':')
            b->state = WG_HTTP_B_TR_VALUE;
        else if (!WG_HTTP_IS(c, WG_HTTP_C_TCHAR))
            return wg_http_body_fail(b, 400, WG_HTTP_IS(c, WG_HTTP_C_WS)
                                     ? "whitespace before colon"
                                     : "invalid character in trailer field name");
        return WG_HTTP_AGAIN;
    case WG_HTTP_B_TR_VALUE:
        if (c == '\r')
            b->state = WG_HTTP_B_TR_VALUE_LF;
        else if (!WG_HTTP_IS(c, WG_HTTP_C_VCHAR | WG_HTTP_C_WS))
            return wg_http_body_fail(b, 400, c == '\n' ? "bare LF"
                                     : "control character in trailer field value");
        return WG_HTTP_AGAIN;
    case WG_HTTP_B_TR_VALUE_LF:
        if (c != '\n')
            return wg_http_body_fail(b, 400, "bare CR");
        b->state = WG_HTTP_B_TR_LINE;
        return WG_HTTP_AGAIN;
    default: /* END_LF */
        if (c != '\n')
            return wg_http_body_fail(b, 400, "bare CR");
        b->state = WG_HTTP_B_DONE;
        return WG_HTTP_DONE;
    }
}

/* Framing bytes between chunks: the size line's LF and the data's CRLF. */
static enum wg_http_result wg_http_chunk_framing(struct wg_http_body *b, unsigned char c)
{
    if (b->state == WG_HTTP_B_SIZE_LF) {
        if (c != '\n')
            return wg_http_body_fail(b, 400, "bare CR");
        b->line_len = 0;
        if (b->remaining == 0) {
            b->state = WG_HTTP_B_TR_LINE;
        } else {
            b->chunks++;
            b->state = WG_HTTP_B_CHUNK_DATA;
        }
    } else if (b->state == WG_HTTP_B_DATA_CR && c == '\r') {
        b->state = WG_HTTP_B_DATA_LF;
    } else if (b->state == WG_HTTP_B_DATA_LF && c == '\n') {
        b->state = WG_HTTP_B_SIZE_START;
    } else {
        return wg_http_body_fail(b, 400, "missing CRLF after chunk data");
    }
    return WG_HTTP_AGAIN;
}

static enum wg_http_result wg_http_chunked(struct wg_http_body *b, const unsigned char *buf,
                                           size_t len, struct wg_http_body_step *step)
{
    const unsigned char *s = buf, *end = buf + len;
    enum wg_http_result rc = WG_HTTP_AGAIN;

    while (s < end && rc == WG_HTTP_AGAIN) {
        if (b->state == WG_HTTP_B_CHUNK_DATA) {
            size_t avail = (size_t)(end - s);
            size_t n = b->remaining < avail ? (size_t)b->remaining : avail;
            step->data_off = (size_t)(s - buf);
            step->data_len = n;
            b->remaining -= n;
            b->payload += n;
            if (b->remaining == 0)
                b->state = WG_HTTP_B_DATA_CR;
            s += n;
            break;              /* one payload run per call */
        }
        if (b->state < WG_HTTP_B_SIZE_LF)
            rc = wg_http_chunk_size(b, *s);
        else if (b->state < WG_HTTP_B_TR_LINE)
            rc = wg_http_chunk_framing(b, *s);
        else
            rc = wg_http_trailer(b, *s);
        if (rc != WG_HTTP_ERROR)
            s++;
    }
    step->consumed = (size_t)(s - buf);
    return rc;
}

enum wg_http_result wg_http_body_parse(struct wg_http_body *b, const char *buf, size_t len,
                                       struct wg_http_body_step *step)
{
    step->consumed = step->data_off = step->data_len = 0;
    if (b->state == WG_HTTP_B_DONE)
        return WG_HTTP_DONE;
    if (b->state == WG_HTTP_B_ERROR)
        return WG_HTTP_ERROR;
    if (b->state != WG_HTTP_B_DATA)
        return wg_http_chunked(b, (const unsigned char *)buf, len, step);
    size_t n = len;
    if (b->framing == WG_HTTP_BODY_LENGTH && b->remaining < n)
        n = (size_t)b->remaining;
    step->data_len = step->consumed = n;
    b->payload += n;
    if (b->framing != WG_HTTP_BODY_LENGTH)
        return WG_HTTP_AGAIN;
    b->remaining -= n;
    if (b->remaining > 0)
        return WG_HTTP_AGAIN;
    b->state = WG_HTTP_B_DONE;
    return WG_HTTP_DONE;
}

enum wg_http_result wg_http_body_eof(struct wg_http_body *b)
{
    if (b->state == WG_HTTP_B_DONE)
        return WG_HTTP_DONE;
    if (b->state == WG_HTTP_B_DATA && b->framing != WG_HTTP_BODY_LENGTH) {
        b->state = WG_HTTP_B_DONE;
        return WG_HTTP_DONE;
    }
    if (b->state != WG_HTTP_B_ERROR)
        wg_http_body_fail(b, 400, "truncated body");
    return WG_HTTP_ERROR;
}

bool wg_http_body_endable(const struct wg_http_body *b, bool dechunk)
{
    if (b->framing == WG_HTTP_BODY_CHUNKED)
        return dechunk ? b->state < WG_HTTP_B_TR_LINE : b->state == WG_HTTP_B_SIZE_START;
    return b->framing == WG_HTTP_BODY_UNTIL_CLOSE && b->state == WG_HTTP_B_DATA;
}

/* ---- helpers for callers ---------------------------------------------- */

const char *wg_http_method_name(enum wg_http_method m)
{
    static const char *const names[] = {
        [WG_HTTP_OTHER] = "", [WG_HTTP_GET] = "GET", [WG_HTTP_HEAD] = "HEAD",
        [WG_HTTP_POST] = "POST", [WG_HTTP_PUT] = "PUT", [WG_HTTP_DELETE] = "DELETE",
        [WG_HTTP_OPTIONS] = "OPTIONS", [WG_HTTP_PATCH] = "PATCH",
        [WG_HTTP_CONNECT] = "CONNECT", [WG_HTTP_TRACE] = "TRACE",
    };
    if ((unsigned)m >= sizeof names / sizeof names[0])
        return "";
    return names[m];
}

bool wg_http_method_idempotent(enum wg_http_method m)
{
    return m == WG_HTTP_GET || m == WG_HTTP_HEAD || m == WG_HTTP_PUT || m == WG_HTTP_DELETE ||
           m == WG_HTTP_OPTIONS || m == WG_HTTP_TRACE;
}

bool wg_http_name_eq(const char *a, size_t alen, const char *b, size_t blen)
{
    if (alen != blen)
        return false;
    for (size_t i = 0; i < alen; i++)
        if (wg_http_lower[(unsigned char)a[i]] != wg_http_lower[(unsigned char)b[i]])
            return false;
    return true;
}

int wg_http_find_header(const struct wg_http_parser *p, const char *msg, const char *name,
                        size_t name_len, unsigned from)
{
    for (unsigned i = from; i < p->msg.nheaders; i++) {
        const struct wg_http_header *h = &p->headers[i];
        if (wg_http_name_eq(msg + h->name.off, h->name.len, name, name_len))
            return (int)i;
    }
    return -1;
}

bool wg_http_list_next(const char *base, struct wg_http_span list, uint32_t *cursor,
                       struct wg_http_span *item)
{
    const unsigned char *s = (const unsigned char *)base + list.off;
    uint32_t i = *cursor;

    while (i < list.len) {
        while (i < list.len && (s[i] == ',' || WG_HTTP_IS(s[i], WG_HTTP_C_WS)))
            i++;
        uint32_t start = i, last = i;
        while (i < list.len && s[i] != ',') {
            if (!WG_HTTP_IS(s[i], WG_HTTP_C_WS))
                last = i + 1;
            i++;
        }
        if (last > start) {
            *cursor = i;
            item->off = list.off + start;
            item->len = last - start;
            return true;
        }
    }
    *cursor = i;
    return false;
}
