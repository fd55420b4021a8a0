/* grpc — see include/waygate/grpc.h. */
#include "waygate/grpc.h"

#include <string.h>

static const char *const status_names[] = {
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
    "UNAUTHENTICATED",
};

const char *wg_grpc_status_name(int status)
{
    return status >= 0 && status <= WG_GRPC_UNAUTHENTICATED ? status_names[status] : "UNKNOWN";
}

enum wg_grpc_status wg_grpc_status_from_http(int http_status)
{
    switch (http_status) {
    case 400: return WG_GRPC_INTERNAL;
    case 401: return WG_GRPC_UNAUTHENTICATED;
    case 403: return WG_GRPC_PERMISSION_DENIED;
    case 404: return WG_GRPC_UNIMPLEMENTED;
    case 408: return WG_GRPC_DEADLINE_EXCEEDED;
    case 413: return WG_GRPC_RESOURCE_EXHAUSTED;
    case 431: return WG_GRPC_RESOURCE_EXHAUSTED;
    case 429: return WG_GRPC_UNAVAILABLE;
    case 502: return WG_GRPC_UNAVAILABLE;
    case 503: return WG_GRPC_UNAVAILABLE;
    case 504: return WG_GRPC_DEADLINE_EXCEEDED;
    default: return WG_GRPC_UNKNOWN;
    }
}

size_t wg_grpc_message_encode(const char *in, size_t len, char *out, size_t cap)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)in[i];
        bool plain = c >= 0x20 && c <= 0x7e && c != '%';
        size_t need = plain ? 1 : 3;
        if (n + need >= cap)
            break;
        if (plain) {
            out[n++] = (char)c;
        } else {
            out[n++] = '%';
            out[n++] = hex[c >> 4];
            out[n++] = hex[c & 15];
        }
    }
    out[n] = '\0';
    return n;
}

enum wg_grpc_status wg_grpc_status_from_h2_error(uint32_t code)
{
    switch (code) {
    case 0x7: return WG_GRPC_UNAVAILABLE;               /* REFUSED_STREAM */
    case 0x8: return WG_GRPC_CANCELLED;                 /* CANCEL */
    case 0xb: return WG_GRPC_RESOURCE_EXHAUSTED;        /* ENHANCE_YOUR_CALM */
    case 0xc: return WG_GRPC_PERMISSION_DENIED;         /* INADEQUATE_SECURITY */
    default: return WG_GRPC_INTERNAL;
    }
}

const char *wg_grpc_error_message(int http_status)
{
    switch (http_status) {
    case 400: return "waygate: malformed request";
    case 401: return "waygate: unauthenticated";
    case 403: return "waygate: permission denied";
    case 404: return "waygate: no route";
    case 408: return "waygate: request timed out";
    case 413: return "waygate: message too large";
    case 429: return "waygate: too many requests";
    case 431: return "waygate: headers too large";
    case 502: return "waygate: upstream connect failed";
    case 503: return "waygate: no healthy upstream";
    case 504: return "waygate: deadline exceeded";
    default: return "waygate: error";
    }
}

bool wg_grpc_status_is_failure(int status)
{
    return status == WG_GRPC_UNAVAILABLE || status == WG_GRPC_DEADLINE_EXCEEDED ||
           status == WG_GRPC_INTERNAL;
}

int wg_grpc_status_parse(const char *v, size_t len)
{
    if (len == 0 || len > 3)
        return -1;
    int n = 0;
    for (size_t i = 0; i < len; i++) {
        if (v[i] < '0' || v[i] > '9')
            return -1;
        n = n * 10 + (v[i] - '0');
    }
    return n;
}

static char lower(char c) { return c >= 'A' && c <= 'Z' ? (char)(c + 32) : c; }

bool wg_grpc_is_grpc(const char *ct, size_t len)
{
    static const char want[] = "application/grpc";
    size_t n = sizeof want - 1;
    if (len < n)
        return false;
    for (size_t i = 0; i < n; i++)
        if (lower(ct[i]) != want[i])
            return false;
    return len == n || ct[n] == '+' || ct[n] == ';';
}

size_t wg_grpc_web_to_grpc(const char *ct, size_t len, char *out, size_t cap, bool *text)
{
    static const char want[] = "application/grpc-web-text";
    size_t n = 20;                      /* "application/grpc-web" */
    if (len < n)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (lower(ct[i]) != want[i])
            return 0;
    bool b64 = len >= n + 5;
    for (size_t i = n; b64 && i < n + 5; i++)
        b64 = lower(ct[i]) == want[i];
    if (b64)
        n += 5;                         /* "-text" */
    if (len > n && ct[n] != '+' && ct[n] != ';')
        return 0;
    size_t out_len = 16 + (len - n);    /* "application/grpc" and the rest */
    if (out_len > cap)
        return 0;
    memcpy(out, "application/grpc", 16);
    memcpy(out + 16, ct + n, len - n);
    *text = b64;
    return out_len;
}

size_t wg_grpc_to_grpc_web(const char *ct, size_t len, bool text, char *out, size_t cap)
{
    size_t head = text ? 25 : 20;       /* "application/grpc-web[-text]" */
    if (!wg_grpc_is_grpc(ct, len) || len - 16 + head > cap)
        return 0;
    memcpy(out, "application/grpc-web-text", head);
    memcpy(out + head, ct + 16, len - 16);
    return len - 16 + head;
}

size_t wg_grpc_web_trailers(const struct wg_grpc_field *f, size_t n, uint8_t *out, size_t cap)
{
    size_t len = 5;
    for (size_t i = 0; i < n; i++) {
        size_t k = f[i].namelen + f[i].valuelen + 4;
        if (k > cap || len > cap - k)
            return 0;
        memcpy(out + len, f[i].name, f[i].namelen);
        len += f[i].namelen;
        memcpy(out + len, ": ", 2);
        memcpy(out + len + 2, f[i].value, f[i].valuelen);
        len += 2 + f[i].valuelen;
        memcpy(out + len, "\r\n", 2);
        len += 2;
    }
    if (len > cap || len - 5 > 0xffffffffu)
        return 0;
    uint32_t body = (uint32_t)(len - 5);
    out[0] = 0x80;
    out[1] = (uint8_t)(body >> 24);
    out[2] = (uint8_t)(body >> 16);
    out[3] = (uint8_t)(body >> 8);
    out[4] = (uint8_t)body;
    return len;
}

void wg_grpc_frames_feed(struct wg_grpc_frames *s, const uint8_t *p, size_t n)
{
    while (n) {
        if (s->left) {
            size_t k = n < s->left ? n : s->left;
            s->left -= (uint32_t)k;
            p += k;
            n -= k;
            continue;
        }
        if (s->head) {                  /* a length byte (the flag byte is byte 0) */
            s->len = s->len << 8 | *p;
        } else {
            s->len = 0;
            s->trailer |= (*p & 0x80) != 0;
        }
        p++;
        n--;
        if (++s->head == 5) {
            s->head = 0;
            s->left = s->len;
        }
    }
}

static const char b64_chars[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static void b64_group(const uint8_t *in, char *out)
{
    out[0] = b64_chars[in[0] >> 2];
    out[1] = b64_chars[((in[0] & 3) << 4) | (in[1] >> 4)];
    out[2] = b64_chars[((in[1] & 15) << 2) | (in[2] >> 6)];
    out[3] = b64_chars[in[2] & 63];
}

size_t wg_b64_encode(struct wg_b64_enc *e, const uint8_t *in, size_t len, char *out)
{
    size_t i = 0, w = 0;
    if (e->n) {                         /* complete the group held */
        while (e->n < 3 && i < len)
            e->held[e->n++] = in[i++];
        if (e->n < 3)
            return 0;
        b64_group(e->held, out);
        w = 4;
        e->n = 0;
    }
    for (; len - i >= 3; i += 3, w += 4)
        b64_group(in + i, out + w);
    while (i < len)
        e->held[e->n++] = in[i++];
    return w;
}

size_t wg_b64_encode_end(struct wg_b64_enc *e, char *out)
{
    if (!e->n)
        return 0;
    uint8_t g[3] = { e->held[0], e->n > 1 ? e->held[1] : 0, 0 };
    b64_group(g, out);
    out[3] = '=';
    if (e->n == 1)
        out[2] = '=';
    e->n = 0;
    return 4;
}

/* The value of a base64 char, B64_PAD for '=', B64_BAD for the rest. */
enum { B64_BAD = 64, B64_PAD = 65 };
static uint8_t b64_value(uint8_t c)
{
    if (c >= 'A' && c <= 'Z')
        return (uint8_t)(c - 'A');
    if (c >= 'a' && c <= 'z')
        return (uint8_t)(c - 'a' + 26);
    if (c >= '0' && c <= '9')
        return (uint8_t)(c - '0' + 52);
    return c == '+' ? 62 : c == '/' ? 63 : c == '=' ? B64_PAD : B64_BAD;
}

bool wg_b64_decode(struct wg_b64_dec *s, const char *in, size_t len, uint8_t *out, size_t *out_len)
{
    /* Each char adds 6 bits and a byte goes out as soon as 8 are in, so
     * fewer than 8 bits wait: after i chars at most (7 + 6i) / 8 <= i
     * bytes are out, and writing in place never overtakes the reading. */
    uint32_t bits = s->bits;
    unsigned nbits = s->nbits, quad = s->quad;
    bool pad = s->pad;
    size_t w = 0;
    *out_len = 0;
    for (size_t i = 0; i < len; i++) {
        uint8_t v = b64_value((uint8_t)in[i]);
        if (v < 64 && !pad) {
            bits = (bits << 6) | v;
            nbits += 6;
            if (nbits >= 8) {
                nbits -= 8;
                out[w++] = (uint8_t)(bits >> nbits);
                bits &= (1u << nbits) - 1;
            }
            quad = (quad + 1) & 3;
        } else if (v == B64_PAD && quad >= 2) {
            pad = quad == 2;            /* "xx=": one more '=' to come */
            quad = pad ? 3 : 0;
            if (!pad)                   /* the group is done: its spare bits go */
                bits = nbits = 0;
        } else {
            return false;
        }
    }
    s->bits = bits;
    s->nbits = (uint8_t)nbits;
    s->quad = (uint8_t)quad;
    s->pad = pad;
    *out_len = w;
    return true;
}

bool wg_grpc_timeout_parse(const char *v, size_t len, uint64_t *ms)
{
    if (len < 2 || len > 9)
        return false;
    uint64_t n = 0;
    for (size_t i = 0; i + 1 < len; i++) {
        if (v[i] < '0' || v[i] > '9')
            return false;
        n = n * 10 + (uint64_t)(v[i] - '0');
    }
    /* n < 10^8: every product below fits in 64 bits. */
    uint64_t out;
    switch (v[len - 1]) {
    case 'H': out = n * 3600000; break;
    case 'M': out = n * 60000; break;
    case 'S': out = n * 1000; break;
    case 'm': out = n; break;
    case 'u': out = (n + 999) / 1000; break;
    case 'n': out = (n + 999999) / 1000000; break;
    default: return false;
    }
    *ms = out ? out : 1;
    return true;
}

uint64_t wg_grpc_deadline_ms(uint64_t response_timeout_ms, uint64_t client_ms, uint64_t max_ms)
{
    if (client_ms && max_ms && client_ms > max_ms)
        client_ms = max_ms;
    if (client_ms && (!response_timeout_ms || client_ms < response_timeout_ms))
        return client_ms;
    return response_timeout_ms;
}

bool wg_grpc_method_entry_ok(const char *e)
{
    if (e[0] != '/')
        return false;
    const char *slash = strchr(e + 1, '/');
    if (!slash || slash == e + 1 || !slash[1] || strchr(slash + 1, '/'))
        return false;
    for (const char *q = e; *q; q++)
        if (*q <= ' ' || *q > '~')
            return false;
    return !strchr(slash + 1, '*') || strcmp(slash + 1, "*") == 0;
}

bool wg_grpc_method_listed(char *const *methods, size_t n, const char *path, size_t len)
{
    for (size_t i = 0; i < n; i++) {
        const char *m = methods[i];
        size_t ml = strlen(m);
        if (ml >= 2 && m[ml - 1] == '*' && m[ml - 2] == '/') {
            /* "/svc/" then "*": the prefix "/svc/" and a method name without '/'. */
            if (len > ml - 1 && memcmp(path, m, ml - 1) == 0 &&
                !memchr(path + ml - 1, '/', len - (ml - 1)))
                return true;
        } else if (ml == len && memcmp(m, path, len) == 0) {
            return true;
        }
    }
    return false;
}

/* ---- protobuf, the two messages of grpc.health.v1 ---------------------- */

static size_t put_varint(uint8_t *out, uint64_t v)
{
    size_t n = 0;
    while (v >= 0x80) {
        out[n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    out[n++] = (uint8_t)v;
    return n;
}

/* Returns bytes read, 0 on truncation or a varint over 10 bytes. */
static size_t get_varint(const uint8_t *p, size_t len, uint64_t *v)
{
    uint64_t r = 0;
    for (size_t i = 0; i < len && i < 10; i++) {
        r |= (uint64_t)(p[i] & 0x7f) << (7 * i);
        if (!(p[i] & 0x80)) {
            *v = r;
            return i + 1;
        }
    }
    return 0;
}

size_t wg_grpc_health_request(const char *service, size_t len, uint8_t *out, size_t cap)
{
    uint8_t lenbuf[10];
    size_t lv = put_varint(lenbuf, len);
    size_t body = len ? 1 + lv + len : 0;       /* proto3: an empty string is not sent */
    if (len > UINT32_MAX / 2 || cap < WG_GRPC_FRAME_HEADER + body)
        return 0;
    out[0] = 0;
    out[1] = (uint8_t)(body >> 24);
    out[2] = (uint8_t)(body >> 16);
    out[3] = (uint8_t)(body >> 8);
    out[4] = (uint8_t)body;
    if (len) {
        out[5] = 0x0a;                          /* field 1, wire type 2 */
        memcpy(out + 6, lenbuf, lv);
        memcpy(out + 6 + lv, service, len);
    }
    return WG_GRPC_FRAME_HEADER + body;
}

int64_t wg_grpc_health_decode(const uint8_t *msg, size_t len)
{
    int64_t status = WG_SERVING_UNKNOWN;
    size_t off = 0;
    while (off < len) {
        uint64_t key, v;
        size_t n = get_varint(msg + off, len - off, &key);
        if (!n || key >> 3 == 0)
            return -1;
        off += n;
        switch (key & 7) {
        case 0:                                 /* varint */
            if (!(n = get_varint(msg + off, len - off, &v)))
                return -1;
            off += n;
            if (key >> 3 == 1)
                status = (int64_t)(int32_t)(uint32_t)v;     /* enums are int32 */
            break;
        case 1:                                 /* 64-bit */
            if (len - off < 8)
                return -1;
            off += 8;
            break;
        case 2:                                 /* length-delimited */
            if (!(n = get_varint(msg + off, len - off, &v)) || v > len - off - n)
                return -1;
            if (key >> 3 == 1)
                return -1;                      /* status is not a string */
            off += n + (size_t)v;
            break;
        case 5:                                 /* 32-bit */
            if (len - off < 4)
                return -1;
            off += 4;
            break;
        default:                                /* groups (3, 4) and 6, 7 */
            return -1;
        }
    }
    return status < 0 ? -1 : status;
}

int wg_grpc_frame(const uint8_t *buf, size_t len, size_t max_len, const uint8_t **msg,
                  size_t *msg_len, size_t *used)
{
    if (len < WG_GRPC_FRAME_HEADER)
        return 0;
    if (buf[0] != 0)
        return -1;
    size_t n = (size_t)buf[1] << 24 | (size_t)buf[2] << 16 | (size_t)buf[3] << 8 | buf[4];
    if (n > max_len)
        return -1;
    if (len - WG_GRPC_FRAME_HEADER < n)
        return 0;
    *msg = buf + WG_GRPC_FRAME_HEADER;
    *msg_len = n;
    *used = WG_GRPC_FRAME_HEADER + n;
    return 1;
}
