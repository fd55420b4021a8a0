/* etcd_client — see include/waygate/etcd_client.h */
#include "waygate/etcd_client.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <jansson.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config_value.h"
#include "waygate/log.h"
#include "waygate/pool.h"

/* ---- base64 ------------------------------------------------------------------ */

static const char b64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

char *wg_base64_encode(const void *data, size_t len)
{
    const unsigned char *p = data;
    char *out = malloc((len + 2) / 3 * 4 + 1), *o = out;

    if (!out)
        return NULL;
    for (size_t i = 0; i < len; i += 3) {
        unsigned v = (unsigned)p[i] << 16;
        if (i + 1 < len)
            v |= (unsigned)p[i + 1] << 8;
        if (i + 2 < len)
            v |= p[i + 2];
        *o++ = b64_alphabet[(v >> 18) & 63];
        *o++ = b64_alphabet[(v >> 12) & 63];
        *o++ = i + 1 < len ? b64_alphabet[(v >> 6) & 63] : '=';
        *o++ = i + 2 < len ? b64_alphabet[v & 63] : '=';
    }
    *o = '\0';
    return out;
}

static int b64_value(unsigned char c)
{
    const char *p = c ? strchr(b64_alphabet, c) : NULL;

    return p ? (int)(p - b64_alphabet) : -1;
}

bool wg_base64_decode(const char *text, size_t len, char **out, size_t *out_len)
{
    size_t pad = 0, n = 0;
    char *buf;

    *out = NULL;
    if (len % 4)
        return false;
    while (pad < 2 && len > pad && text[len - 1 - pad] == '=')
        pad++;
    if (!(buf = malloc(len / 4 * 3 + 1)))
        return false;
    for (size_t i = 0; i < len; i += 4) {
        unsigned v = 0;
        size_t last = i + 4 == len ? pad : 0;
        for (size_t k = 0; k < 4; k++) {
            int d = k >= 4 - last ? 0 : b64_value((unsigned char)text[i + k]);
            if (d < 0)
                goto fail;
            v = v << 6 | (unsigned)d;
        }
        if ((last == 1 && (v & 0xff)) || (last == 2 && (v & 0xffff)))
            goto fail;              /* non-zero pad bits: not canonical */
        buf[n++] = (char)(v >> 16);
        if (last < 2)
            buf[n++] = (char)(v >> 8);
        if (last < 1)
            buf[n++] = (char)v;
    }
    buf[n] = '\0';
    *out = buf;
    *out_len = n;
    return true;
fail:
    free(buf);
    return false;
}

/* ---- response reader ------------------------------------------------------------ */

#define HEAD_LIMIT (WG_ETCD_HEAD_MAX + WG_HTTP_MAX_REQUEST_LINE + 16)

void wg_etcd_reader_init(struct wg_etcd_reader *r, bool stream, size_t max_message)
{
    memset(r, 0, sizeof *r);
    r->stream = stream;
    r->max_message = max_message;
    wg_http_parser_init_response(&r->parser, r->headers, WG_ETCD_HEADERS_MAX, WG_ETCD_HEAD_MAX,
                                 WG_HTTP_POST, false);
}

void wg_etcd_reader_free(struct wg_etcd_reader *r)
{
    free(r->head);
    free(r->payload);
    r->head = r->payload = NULL;
    r->head_len = r->head_cap = r->payload_len = r->payload_cap = 0;
}

static bool grow(char **buf, size_t *cap, size_t need)
{
    size_t n = *cap ? *cap : 1024;
    char *p;

    if (need <= *cap)
        return true;
    while (n < need)
        n *= 2;
    if (!(p = realloc(*buf, n)))
        return false;
    *buf = p;
    *cap = n;
    return true;
}

static enum wg_etcd_read reader_fail(struct wg_etcd_reader *r, const char *why)
{
    r->why = why;
    return WG_ETCD_READ_ERROR;
}

/* Deliver every complete line of the payload, then keep the rest. */
static enum wg_etcd_read deliver_lines(struct wg_etcd_reader *r, wg_etcd_message_fn fn, void *arg)
{
    size_t start = 0;
    char *nl;

    while ((nl = memchr(r->payload + r->scanned, '\n', r->payload_len - r->scanned))) {
        size_t end = (size_t)(nl - r->payload), len = end - start;
        if (len && r->payload[end - 1] == '\r')
            len--;
        if (len && !fn(arg, r->payload + start, len))
            return reader_fail(r, "stopped");
        start = r->scanned = end + 1;
    }
    memmove(r->payload, r->payload + start, r->payload_len - start);
    r->payload_len -= start;
    r->scanned = r->payload_len;
    if (r->payload_len > r->max_message)
        return reader_fail(r, "stream message too large");
    return WG_ETCD_READ_AGAIN;
}

static enum wg_etcd_read finish_body(struct wg_etcd_reader *r, wg_etcd_message_fn fn, void *arg)
{
    r->done = true;
    if (r->stream && r->payload_len && !fn(arg, r->payload, r->payload_len))
        return reader_fail(r, "stopped");
    if (!r->stream && !fn(arg, r->payload ? r->payload : "", r->payload_len))
        return reader_fail(r, "stopped");
    return WG_ETCD_READ_DONE;
}

static enum wg_etcd_read feed_body(struct wg_etcd_reader *r, const char *buf, size_t len,
                                   wg_etcd_message_fn fn, void *arg)
{
    while (len) {
        struct wg_http_body_step st;
        enum wg_http_result res = wg_http_body_parse(&r->body, buf, len, &st);
        if (res == WG_HTTP_ERROR)
            return reader_fail(r, r->body.err_reason ? r->body.err_reason : "bad body");
        if (st.data_len) {
            if (r->payload_len + st.data_len > r->max_message + 1 ||
                !grow(&r->payload, &r->payload_cap, r->payload_len + st.data_len + 1))
                return reader_fail(r, "response too large");
            memcpy(r->payload + r->payload_len, buf + st.data_off, st.data_len);
            r->payload_len += st.data_len;
            if (r->stream && deliver_lines(r, fn, arg) == WG_ETCD_READ_ERROR)
                return WG_ETCD_READ_ERROR;
        }
        if (res == WG_HTTP_DONE)
            return finish_body(r, fn, arg);
        buf += st.consumed;
        len -= st.consumed;
    }
    return WG_ETCD_READ_AGAIN;
}

/* Head complete: set up the body decoder. Returns the body bytes' offset. */
static enum wg_etcd_read start_body(struct wg_etcd_reader *r, wg_etcd_message_fn fn, void *arg)
{
    const struct wg_http_message *m = &r->parser.msg;

    r->head_done = true;
    r->status = m->status;
    if (m->interim || m->framing == WG_HTTP_BODY_TUNNEL)
        return reader_fail(r, "unexpected interim or upgrade response");
    wg_http_body_init(&r->body, m->framing, m->content_length, 0);
    if (m->framing == WG_HTTP_BODY_NONE)
        return finish_body(r, fn, arg);
    return WG_ETCD_READ_AGAIN;
}

enum wg_etcd_read wg_etcd_reader_feed(struct wg_etcd_reader *r, const char *data, size_t len,
                                      wg_etcd_message_fn fn, void *arg)
{
    size_t take, consumed;
    enum wg_http_result res;
    enum wg_etcd_read st;

    if (r->why)
        return WG_ETCD_READ_ERROR;
    if (r->done)
        return WG_ETCD_READ_DONE;
    if (r->head_done)
        return feed_body(r, data, len, fn, arg);
    take = len < HEAD_LIMIT - r->head_len ? len : HEAD_LIMIT - r->head_len;
    if (!grow(&r->head, &r->head_cap, r->head_len + take + 1))
        return reader_fail(r, "out of memory");
    memcpy(r->head + r->head_len, data, take);
    r->head_len += take;
    res = wg_http_parse_head(&r->parser, r->head, r->head_len, &consumed);
    if (res == WG_HTTP_ERROR)
        return reader_fail(r, r->parser.err_reason ? r->parser.err_reason : "bad response head");
    if (res == WG_HTTP_AGAIN)
        return take < len ? reader_fail(r, "response head too large") : WG_ETCD_READ_AGAIN;
    if ((st = start_body(r, fn, arg)) != WG_ETCD_READ_AGAIN)
        return st;
    st = feed_body(r, r->head + consumed, r->head_len - consumed, fn, arg);
    if (st != WG_ETCD_READ_AGAIN)
        return st;
    return feed_body(r, data + take, len - take, fn, arg);
}

enum wg_etcd_read wg_etcd_reader_eof(struct wg_etcd_reader *r, wg_etcd_message_fn fn, void *arg)
{
    if (r->why)
        return WG_ETCD_READ_ERROR;
    if (r->done)
        return WG_ETCD_READ_DONE;
    if (!r->head_done)
        return reader_fail(r, "connection closed before a response");
    if (wg_http_body_eof(&r->body) != WG_HTTP_DONE)
        return reader_fail(r, "connection closed inside the response");
    return finish_body(r, fn, arg);
}

/* ---- JSON messages ---------------------------------------------------------------- */

/* int64 fields arrive as strings (or numbers); absent means 0. */
static bool json_i64(json_t *v, int64_t *out)
{
    char *end;

    *out = 0;
    if (!v)
        return true;
    if (json_is_integer(v)) {
        *out = json_integer_value(v);
        return true;
    }
    if (!json_is_string(v) || !json_string_length(v))
        return false;
    errno = 0;
    long long n = strtoll(json_string_value(v), &end, 10);
    if (errno || *end)
        return false;
    *out = n;
    return true;
}

static bool json_u64(json_t *v, uint64_t *out)
{
    char *end;

    *out = 0;
    if (!v)
        return true;
    if (json_is_integer(v) && json_integer_value(v) >= 0) {
        *out = (uint64_t)json_integer_value(v);
        return true;
    }
    if (!json_is_string(v) || !json_string_length(v) || json_string_value(v)[0] == '-')
        return false;
    errno = 0;
    unsigned long long n = strtoull(json_string_value(v), &end, 10);
    if (errno || *end)
        return false;
    *out = n;
    return true;
}

static bool json_flag(json_t *o, const char *name)
{
    return json_is_true(json_object_get(o, name));
}

static bool parse_header(json_t *h, struct wg_etcd_header *out)
{
    int64_t rev;

    memset(out, 0, sizeof *out);
    if (!h)
        return true;
    if (!json_is_object(h) || !json_u64(json_object_get(h, "cluster_id"), &out->cluster_id) ||
        !json_u64(json_object_get(h, "member_id"), &out->member_id) ||
        !json_i64(json_object_get(h, "revision"), &rev) ||
        !json_u64(json_object_get(h, "raft_term"), &out->raft_term))
        return false;
    out->revision = rev;
    return true;
}

static bool b64_field(json_t *o, const char *name, bool required, char **out, size_t *len)
{
    json_t *v = json_object_get(o, name);

    if (!v) {
        *out = required ? NULL : strdup("");
        *len = 0;
        return *out != NULL;
    }
    return json_is_string(v) &&
           wg_base64_decode(json_string_value(v), json_string_length(v), out, len);
}

static void kv_free(struct wg_etcd_kv *kv)
{
    free(kv->key);
    free(kv->value);
    kv->key = kv->value = NULL;
}

static bool parse_kv(json_t *o, struct wg_etcd_kv *kv)
{
    memset(kv, 0, sizeof *kv);
    if (!json_is_object(o) || !b64_field(o, "key", true, &kv->key, &kv->key_len) ||
        !b64_field(o, "value", false, &kv->value, &kv->value_len) ||
        !json_i64(json_object_get(o, "create_revision"), &kv->create_revision) ||
        !json_i64(json_object_get(o, "mod_revision"), &kv->mod_revision) ||
        !json_i64(json_object_get(o, "version"), &kv->version) ||
        !json_i64(json_object_get(o, "lease"), &kv->lease)) {
        kv_free(kv);
        return false;
    }
    return true;
}

static bool parse_event(json_t *e, struct wg_etcd_event *ev)
{
    json_t *type = json_object_get(e, "type");

    if (!json_is_object(e))
        return false;
    if (type && !json_is_string(type))
        return false;
    ev->deleted = type && strcmp(json_string_value(type), "DELETE") == 0;
    if (type && !ev->deleted && strcmp(json_string_value(type), "PUT") != 0)
        return false;
    return parse_kv(json_object_get(e, "kv"), &ev->kv);
}

static bool parse_events(json_t *arr, struct wg_etcd_watch_response *w)
{
    if (!arr)
        return true;
    if (!json_is_array(arr))
        return false;
    if (json_array_size(arr) && !(w->events = calloc(json_array_size(arr), sizeof *w->events)))
        return false;
    for (size_t i = 0; i < json_array_size(arr); i++) {
        if (!parse_event(json_array_get(arr, i), &w->events[i]))
            return false;
        w->n_events++;
    }
    return true;
}

static void copy_text(char *dst, size_t len, json_t *v)
{
    snprintf(dst, len, "%s", json_is_string(v) ? json_string_value(v) : "");
}

static bool parse_watch_error(json_t *e, struct wg_etcd_watch_response *w)
{
    json_t *code = json_object_get(e, "grpc_code");

    if (!json_is_object(e) || !json_is_integer(code) || json_integer_value(code) <= 0)
        return false;
    w->error_code = (int)json_integer_value(code);
    copy_text(w->error_message, sizeof w->error_message, json_object_get(e, "message"));
    return true;
}

static bool parse_watch_result(json_t *r, struct wg_etcd_watch_response *w)
{
    if (!json_is_object(r) || !parse_header(json_object_get(r, "header"), &w->header) ||
        !json_i64(json_object_get(r, "watch_id"), &w->watch_id) ||
        !json_i64(json_object_get(r, "compact_revision"), &w->compact_revision))
        return false;
    w->created = json_flag(r, "created");
    w->canceled = json_flag(r, "canceled");
    w->fragment = json_flag(r, "fragment");
    copy_text(w->cancel_reason, sizeof w->cancel_reason, json_object_get(r, "cancel_reason"));
    return parse_events(json_object_get(r, "events"), w);
}

bool wg_etcd_parse_watch(const char *msg, size_t len, struct wg_etcd_watch_response *out,
                         const char **why)
{
    json_t *root = json_loadb(msg, len, 0, NULL), *v;
    bool ok;

    memset(out, 0, sizeof *out);
    if (!root || !json_is_object(root))
        ok = false;
    else if ((v = json_object_get(root, "error")))
        ok = parse_watch_error(v, out);
    else
        ok = parse_watch_result(json_object_get(root, "result"), out);
    json_decref(root);
    if (!ok) {
        wg_etcd_watch_response_free(out);
        *why = "malformed watch message";
    }
    return ok;
}

void wg_etcd_watch_response_free(struct wg_etcd_watch_response *w)
{
    for (size_t i = 0; i < w->n_events; i++)
        kv_free(&w->events[i].kv);
    free(w->events);
    w->events = NULL;
    w->n_events = 0;
}

bool wg_etcd_watch_is_progress(const struct wg_etcd_watch_response *w)
{
    return !w->error_code && !w->n_events && !w->created && !w->canceled && !w->fragment &&
           !w->compact_revision;
}

static bool parse_kvs(json_t *arr, struct wg_etcd_range_response *r)
{
    if (!arr)
        return true;
    if (!json_is_array(arr))
        return false;
    if (json_array_size(arr) && !(r->kvs = calloc(json_array_size(arr), sizeof *r->kvs)))
        return false;
    for (size_t i = 0; i < json_array_size(arr); i++) {
        if (!parse_kv(json_array_get(arr, i), &r->kvs[i]))
            return false;
        r->n_kvs++;
    }
    return true;
}

bool wg_etcd_range_peek_last_key(const char *msg, size_t len, char **key, size_t *key_len)
{
    static const char more[] = "\"more\":true", tag[] = "\"key\":\"";
    const size_t tag_len = sizeof tag - 1;
    size_t tail = len < 256 ? len : 256;      /* "more" follows the kvs, then "count" */
    if (!memmem(msg + len - tail, tail, more, sizeof more - 1))
        return false;
    for (size_t at = len; at >= tag_len; at--) {
        if (memcmp(msg + at - tag_len, tag, tag_len) != 0)
            continue;
        const char *start = msg + at, *end = memchr(start, '"', len - at);
        return end && wg_base64_decode(start, (size_t)(end - start), key, key_len);
    }
    return false;
}

bool wg_etcd_parse_range(const char *msg, size_t len, struct wg_etcd_range_response *out,
                         const char **why)
{
    json_t *root = json_loadb(msg, len, 0, NULL);
    bool ok;

    memset(out, 0, sizeof *out);
    ok = root && json_is_object(root) && json_object_get(root, "header") &&
         parse_header(json_object_get(root, "header"), &out->header) &&
         json_i64(json_object_get(root, "count"), &out->count) &&
         parse_kvs(json_object_get(root, "kvs"), out);
    if (ok)
        out->more = json_flag(root, "more");
    json_decref(root);
    if (!ok) {
        wg_etcd_range_response_free(out);
        *why = "malformed range response";
    }
    return ok;
}

void wg_etcd_range_response_free(struct wg_etcd_range_response *r)
{
    for (size_t i = 0; i < r->n_kvs; i++)
        kv_free(&r->kvs[i]);
    free(r->kvs);
    r->kvs = NULL;
    r->n_kvs = 0;
}

int wg_etcd_parse_error(const char *body, size_t len, char *msg, size_t msg_len)
{
    json_t *root = json_loadb(body, len, 0, NULL);
    json_t *code = root ? json_object_get(root, "code") : NULL;
    int n = 0;

    if (msg_len)
        msg[0] = '\0';
    if (json_is_integer(code) && json_integer_value(code) > 0 &&
        json_integer_value(code) < 1000) {
        n = (int)json_integer_value(code);
        json_t *text = json_object_get(root, "error");
        copy_text(msg, msg_len, json_is_string(text) ? text : json_object_get(root, "message"));
    }
    json_decref(root);
    return n;
}

char *wg_etcd_parse_token(const char *body, size_t len)
{
    json_t *root = json_loadb(body, len, 0, NULL);
    json_t *tok = root ? json_object_get(root, "token") : NULL;
    char *out = json_is_string(tok) && json_string_length(tok) ? strdup(json_string_value(tok))
                                                               : NULL;
    json_decref(root);
    return out;
}

/* ---- request bodies ------------------------------------------------------------------ */

/* The end of the range of every key starting with `prefix`. */
static char *prefix_end_b64(const char *prefix)
{
    size_t n = strlen(prefix);
    char end[1024];

    if (n == 0 || n > sizeof end)
        return wg_base64_encode("\0", 1);
    memcpy(end, prefix, n);
    while (n && (unsigned char)end[n - 1] == 0xff)
        n--;
    if (n == 0)
        return wg_base64_encode("\0", 1);
    end[n - 1]++;
    return wg_base64_encode(end, n);
}

static char *dump_and_free(json_t *o)
{
    char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;

    json_decref(o);
    return text;
}

static char *i64_text(int64_t v, char buf[24])
{
    snprintf(buf, 24, "%lld", (long long)v);
    return buf;
}

char *wg_etcd_range_request(const char *prefix, const char *from_key, size_t from_len,
                            int64_t revision, int64_t limit, bool count_only)
{
    char *key = from_key ? wg_base64_encode(from_key, from_len)
                         : wg_base64_encode(prefix, strlen(prefix));
    char *end = prefix_end_b64(prefix), nb[24];
    json_t *o = key && end ? json_pack("{ssss}", "key", key, "range_end", end) : NULL;

    if (o && revision)
        json_object_set_new(o, "revision", json_string(i64_text(revision, nb)));
    if (o && limit)
        json_object_set_new(o, "limit", json_string(i64_text(limit, nb)));
    if (o && count_only)
        json_object_set_new(o, "count_only", json_true());
    free(key);
    free(end);
    return dump_and_free(o);
}

char *wg_etcd_watch_request(const char *prefix, int64_t start_revision)
{
    char *key = wg_base64_encode(prefix, strlen(prefix)), *end = prefix_end_b64(prefix), nb[24];
    json_t *o = key && end ? json_pack("{s{sssssssbsbsb}}", "create_request", "key", key,
                                       "range_end", end, "start_revision",
                                       i64_text(start_revision, nb), "prev_kv", 1,
                                       "progress_notify", 1, "fragment", 1)
                           : NULL;
    free(key);
    free(end);
    return dump_and_free(o);
}

char *wg_etcd_auth_request(const char *user, const char *password)
{
    return dump_and_free(json_pack("{ssss}", "name", user, "password", password));
}

/* ---- client ----------------------------------------------------------------------------- */

struct endpoint {
    char *url;
    bool tls;
    char *host;                     /* without brackets */
    uint16_t port;
    char authority[300];            /* Host header */
    struct sockaddr_storage ss;     /* when host is an IP literal */
    socklen_t sslen;
};

/* An idle keep-alive connection left by a unary call, per endpoint. */
struct idle_conn {
    struct wg_etcd_client *c;
    struct bufferevent *bev;
};

struct wg_etcd_client {
    struct event_base *base;
    struct evdns_base *dns;
    struct endpoint *eps;
    struct idle_conn *idle;         /* one per endpoint */
    size_t n;
    SSL_CTX *ssl_ctx;
    char *server_name;
    char *token;
};

static bool endpoint_parse(const char *url, struct endpoint *ep, char *err, size_t err_len)
{
    const char *rest;
    char host[260];
    uint16_t port;

    memset(ep, 0, sizeof *ep);
    if (strncmp(url, "http://", 7) == 0)
        rest = url + 7;
    else if (strncmp(url, "https://", 8) == 0)
        rest = url + 8, ep->tls = true;
    else
        return snprintf(err, err_len, "etcd endpoint %s: needs http:// or https://", url), false;
    size_t n = strcspn(rest, "/");
    const char *colon = n ? memrchr(rest, ':', n) : NULL;
    uint64_t p;
    if (!colon || colon == rest || (size_t)(colon - rest) >= sizeof host ||
        (rest[n] != '\0' && strcmp(rest + n, "/") != 0))
        return snprintf(err, err_len, "etcd endpoint %s: expected scheme://host:port", url), false;
    char portbuf[8];
    size_t plen = (size_t)(rest + n - colon - 1);
    if (plen == 0 || plen >= sizeof portbuf)
        return snprintf(err, err_len, "etcd endpoint %s: bad port", url), false;
    memcpy(portbuf, colon + 1, plen);
    portbuf[plen] = '\0';
    if (wg_uint_reason(portbuf, 65535, &p) || !p)
        return snprintf(err, err_len, "etcd endpoint %s: bad port", url), false;
    port = (uint16_t)p;
    size_t hlen = (size_t)(colon - rest);
    memcpy(host, rest, hlen);
    host[hlen] = '\0';
    snprintf(ep->authority, sizeof ep->authority, "%s:%u", host, port);
    if (host[0] == '[' && host[hlen - 1] == ']') {
        memmove(host, host + 1, hlen - 2);
        host[hlen - 2] = '\0';
    }
    ep->port = port;
    if (wg_ip_literal(host, port, &ep->ss, &ep->sslen) == false)
        ep->sslen = 0;
    ep->url = strdup(url);
    ep->host = strdup(host);
    return (ep->url && ep->host) || (snprintf(err, err_len, "out of memory"), false);
}

static void ssl_error_text(char *err, size_t err_len, const char *what, const char *file)
{
    unsigned long e = ERR_get_error();
    char buf[256];

    ERR_error_string_n(e, buf, sizeof buf);
    snprintf(err, err_len, "etcd tls: %s %s: %s", what, file ? file : "", e ? buf : "failed");
    ERR_clear_error();
}

static bool set(const char *s) { return s && *s; }

static SSL_CTX *tls_context(const struct wg_etcd_tls *tls, char *err, size_t err_len)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());

    if (!ctx)
        return ssl_error_text(err, err_len, "context", NULL), NULL;
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION);
    if (set(tls->ca) ? SSL_CTX_load_verify_locations(ctx, tls->ca, NULL) != 1
                     : SSL_CTX_set_default_verify_paths(ctx) != 1) {
        ssl_error_text(err, err_len, "ca", tls->ca);
        goto fail;
    }
    if (set(tls->cert) && SSL_CTX_use_certificate_chain_file(ctx, tls->cert) != 1) {
        ssl_error_text(err, err_len, "cert", tls->cert);
        goto fail;
    }
    if (set(tls->key) && (SSL_CTX_use_PrivateKey_file(ctx, tls->key, SSL_FILETYPE_PEM) != 1 ||
                          SSL_CTX_check_private_key(ctx) != 1)) {
        ssl_error_text(err, err_len, "key", tls->key);
        goto fail;
    }
    return ctx;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

static bool client_endpoints(struct wg_etcd_client *c, char *const *endpoints, size_t n,
                             char *err, size_t err_len)
{
    if (!(c->eps = calloc(n ? n : 1, sizeof *c->eps)) ||
        !(c->idle = calloc(n ? n : 1, sizeof *c->idle)))
        return snprintf(err, err_len, "out of memory"), false;
    for (; c->n < n; c->n++)
        if (!endpoint_parse(endpoints[c->n], &c->eps[c->n], err, err_len)) {
            free(c->eps[c->n].url);
            free(c->eps[c->n].host);
            return false;
        }
    return n > 0 || (snprintf(err, err_len, "no etcd endpoints"), false);
}

struct wg_etcd_client *wg_etcd_client_new(struct event_base *base, char *const *endpoints,
                                          size_t n, const struct wg_etcd_tls *tls, char *err,
                                          size_t err_len)
{
    struct wg_etcd_client *c = calloc(1, sizeof *c);
    bool any_tls = false;

    if (!c)
        return snprintf(err, err_len, "out of memory"), NULL;
    c->base = base;
    if (!client_endpoints(c, endpoints, n, err, err_len))
        goto fail;
    for (size_t i = 0; i < c->n; i++)
        any_tls |= c->eps[i].tls;
    if (any_tls && !(c->ssl_ctx = tls_context(tls, err, err_len)))
        goto fail;
    if (tls && set(tls->server_name) && !(c->server_name = strdup(tls->server_name)))
        goto fail;
    if (!(c->dns = evdns_base_new(base, EVDNS_BASE_INITIALIZE_NAMESERVERS |
                                            EVDNS_BASE_DISABLE_WHEN_INACTIVE)) &&
        !(c->dns = evdns_base_new(base, 0))) {
        snprintf(err, err_len, "cannot create a DNS resolver");
        goto fail;
    }
    return c;
fail:
    wg_etcd_client_free(c);
    return NULL;
}

void wg_etcd_client_free(struct wg_etcd_client *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->n; i++) {
        free(c->eps[i].url);
        free(c->eps[i].host);
        if (c->idle && c->idle[i].bev)
            bufferevent_free(c->idle[i].bev);
    }
    free(c->eps);
    free(c->idle);
    if (c->ssl_ctx)
        SSL_CTX_free(c->ssl_ctx);
    if (c->dns)
        evdns_base_free(c->dns, 0);
    free(c->server_name);
    free(c->token);
    free(c);
}

size_t wg_etcd_client_endpoints(const struct wg_etcd_client *c) { return c->n; }

const char *wg_etcd_client_endpoint(const struct wg_etcd_client *c, size_t i)
{
    return c->eps[i % c->n].url;
}

int wg_etcd_client_set_token(struct wg_etcd_client *c, const char *token)
{
    char *t = token ? strdup(token) : NULL;

    if (token && !t)
        return -1;
    free(c->token);
    c->token = t;
    return 0;
}

bool wg_etcd_client_has_token(const struct wg_etcd_client *c) { return c->token != NULL; }

struct evdns_base *wg_etcd_client_dns(struct wg_etcd_client *c) { return c->dns; }

/* ---- calls -------------------------------------------------------------------------------- */

#define MAX_UNARY (256u * 1024u * 1024u)
#define MAX_STREAM_MESSAGE (64u * 1024u * 1024u)

struct wg_etcd_call {
    struct wg_etcd_client *c;
    const struct endpoint *ep;
    struct bufferevent *bev;
    struct event *deadline;
    struct wg_etcd_reader reader;
    const struct wg_etcd_call_ops *ops;
    void *arg;
    uint64_t recv_ns;
    unsigned depth;                 /* callbacks running on the stack */
    bool over;                      /* ended or cancelled: no more callbacks */
    bool connect_failed;
    bool stream;
    bool reused;                    /* on an idle keep-alive connection */
    bool retried;                   /* reused, failed, sent again on a new one */
    char *path, *body;              /* unary: kept to retry on a fresh connection */
};

static int call_open(struct wg_etcd_call *call);

static void call_free(struct wg_etcd_call *call)
{
    if (call->bev)
        bufferevent_free(call->bev);
    if (call->deadline)
        event_free(call->deadline);
    wg_etcd_reader_free(&call->reader);
    free(call->path);
    free(call->body);
    free(call);
}

static void call_release(struct wg_etcd_call *call)
{
    if (call->over && call->depth == 0)
        call_free(call);
}

static void idle_close(struct idle_conn *ic)
{
    bufferevent_free(ic->bev);
    ic->bev = NULL;
}

/* An idle connection that reads anything or closes is dropped. */
static void idle_read_cb(struct bufferevent *bev, void *arg) { idle_close(arg); }
static void idle_event_cb(struct bufferevent *bev, short what, void *arg) { idle_close(arg); }

/* A complete unary response on a keep-alive connection: keep it for the
 * next unary call to the same endpoint. */
static bool call_park(struct wg_etcd_call *call)
{
    struct idle_conn *ic = &call->c->idle[call->ep - call->c->eps];

    if (call->stream || !call->reader.done || !call->reader.parser.msg.keep_alive ||
        evbuffer_get_length(bufferevent_get_input(call->bev)))
        return false;
    if (ic->bev)
        idle_close(ic);
    ic->c = call->c;
    ic->bev = call->bev;
    call->bev = NULL;
    bufferevent_setcb(ic->bev, idle_read_cb, NULL, idle_event_cb, ic);
    return true;
}

/* End the call once: the end callback, then the call is freed. */
static void call_end(struct wg_etcd_call *call, bool ok, const char *why)
{
    if (call->over)
        return;
    call->over = true;
    if (call->bev && !call_park(call)) {
        bufferevent_free(call->bev);
        call->bev = NULL;
    }
    call->depth++;
    call->ops->end(call->arg, call, ok, why);
    call->depth--;
}

void wg_etcd_call_cancel(struct wg_etcd_call *call)
{
    if (!call)
        return;
    call->over = true;
    call_release(call);
}

static bool call_message(void *arg, const char *msg, size_t len)
{
    struct wg_etcd_call *call = arg;
    bool more;

    if (call->over)
        return false;
    more = call->ops->message(call->arg, call, call->reader.status, msg, len, call->recv_ns);
    return more && !call->over;
}

static void call_read_cb(struct bufferevent *bev, void *arg)
{
    struct wg_etcd_call *call = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    enum wg_etcd_read st = WG_ETCD_READ_AGAIN;
    size_t n;

    call->recv_ns = wg_now_ns();
    call->depth++;
    while (st == WG_ETCD_READ_AGAIN && !call->over && (n = evbuffer_get_contiguous_space(in))) {
        const char *p = (const char *)evbuffer_pullup(in, (ev_ssize_t)n);
        st = wg_etcd_reader_feed(&call->reader, p, n, call_message, call);
        if (!call->over)
            evbuffer_drain(in, n);
    }
    if (st == WG_ETCD_READ_DONE)
        call_end(call, true, NULL);
    else if (st == WG_ETCD_READ_ERROR)
        call_end(call, false, call->reader.why);
    call->depth--;
    call_release(call);
}

static const char *bev_error_text(struct bufferevent *bev, char *buf, size_t len)
{
    unsigned long e;
    int dns = bufferevent_socket_get_dns_error(bev);

    if (dns)
        return evutil_gai_strerror(dns);
    if ((e = bufferevent_get_openssl_error(bev))) {
        ERR_error_string_n(e, buf, len);
        while (bufferevent_get_openssl_error(bev))
            ;
        return buf;
    }
    return errno ? strerror(errno) : "connection error";
}

static void call_event_cb(struct bufferevent *bev, short what, void *arg)
{
    struct wg_etcd_call *call = arg;
    char buf[256];

    if (what & BEV_EVENT_CONNECTED) {
        int one = 1;
        setsockopt(bufferevent_getfd(bev), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        return;
    }
    if (call->reused && !call->reader.head_len && !call->over) {
        /* the server closed the idle connection meanwhile: once more, fresh */
        call->reused = false;
        call->retried = true;
        bufferevent_free(call->bev);
        call->bev = NULL;
        if (call_open(call) == 0)
            return;
        what = BEV_EVENT_EOF;       /* out of memory: end with the reader's view */
    }
    call->depth++;
    if (what & BEV_EVENT_EOF) {
        enum wg_etcd_read st = wg_etcd_reader_eof(&call->reader, call_message, call);
        call_end(call, st == WG_ETCD_READ_DONE, call->reader.why);
    } else if (what & (BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT)) {
        call_end(call, false, what & BEV_EVENT_TIMEOUT ? "timeout"
                                                        : bev_error_text(bev, buf, sizeof buf));
    }
    call->depth--;
    call_release(call);
}

static void call_deadline_cb(evutil_socket_t fd, short what, void *arg)
{
    struct wg_etcd_call *call = arg;

    call->depth++;
    call_end(call, false, call->connect_failed ? "connect failed" : "timeout");
    call->depth--;
    call_release(call);
}

static SSL *call_ssl(struct wg_etcd_call *call)
{
    const char *name = call->c->server_name ? call->c->server_name : call->ep->host;
    struct sockaddr_storage ss;
    socklen_t len;
    SSL *ssl = SSL_new(call->c->ssl_ctx);

    if (!ssl)
        return NULL;
    if (wg_ip_literal(name, 0, &ss, &len)) {
        if (X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), name) != 1)
            goto fail;
    } else if (SSL_set_tlsext_host_name(ssl, name) != 1 || SSL_set1_host(ssl, name) != 1) {
        goto fail;
    }
    return ssl;
fail:
    SSL_free(ssl);
    return NULL;
}

static struct bufferevent *call_bev(struct wg_etcd_call *call)
{
    int opts = BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS;
    struct bufferevent *bev;
    SSL *ssl;

    if (!call->ep->tls)
        return bufferevent_socket_new(call->c->base, -1, opts);
    if (!(ssl = call_ssl(call)))
        return NULL;
    bev = bufferevent_openssl_socket_new(call->c->base, -1, ssl, BUFFEREVENT_SSL_CONNECTING,
                                         opts);
    if (!bev) {
        SSL_free(ssl);
        return NULL;
    }
    bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
    return bev;
}

static int call_write_request(struct wg_etcd_call *call)
{
    struct evbuffer *out = bufferevent_get_output(call->bev);
    size_t len = strlen(call->body);

    if (evbuffer_add_printf(out,
                            "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                            "Content-Length: %zu\r\nGrpc-Metadata-hasleader: true\r\n",
                            call->path, call->ep->authority, len) < 0)
        return -1;
    if (call->c->token && evbuffer_add_printf(out, "Authorization: %s\r\n", call->c->token) < 0)
        return -1;
    return evbuffer_add(out, "\r\n", 2) == 0 && evbuffer_add(out, call->body, len) == 0 ? 0 : -1;
}

static int call_connect(struct wg_etcd_call *call)
{
    const struct endpoint *ep = call->ep;

    if (ep->sslen)
        return bufferevent_socket_connect(call->bev, (struct sockaddr *)&ep->ss, (int)ep->sslen);
    return bufferevent_socket_connect_hostname(call->bev, call->c->dns, AF_UNSPEC, ep->host,
                                               ep->port);
}

/* Put the request on a connection: the endpoint's idle keep-alive one for
 * a unary call (not on a retry), else a new one. -1 when out of memory; a
 * failed connect is reported from the loop like any connection failure. */
static int call_open(struct wg_etcd_call *call)
{
    struct idle_conn *ic = &call->c->idle[call->ep - call->c->eps];
    struct timeval now = { 0, 0 };

    if (!call->stream && !call->retried && ic->bev) {
        call->bev = ic->bev;
        ic->bev = NULL;
        call->reused = true;
    } else if (!(call->bev = call_bev(call))) {
        return -1;
    }
    bufferevent_setcb(call->bev, call_read_cb, NULL, call_event_cb, call);
    if (call_write_request(call) < 0 || bufferevent_enable(call->bev, EV_READ | EV_WRITE) < 0)
        return -1;
    if (call->reused || call_connect(call) == 0)
        return 0;
    call->connect_failed = true;
    return evtimer_add(call->deadline, &now);
}

struct wg_etcd_call *wg_etcd_call_start(struct wg_etcd_client *c, size_t ep, const char *path,
                                        const char *body, bool stream, uint64_t timeout_ms,
                                        const struct wg_etcd_call_ops *ops, void *arg)
{
    struct wg_etcd_call *call = calloc(1, sizeof *call);
    struct timeval tv = { (time_t)(timeout_ms / 1000), (suseconds_t)(timeout_ms % 1000) * 1000 };

    if (!call)
        return NULL;
    call->c = c;
    call->ep = &c->eps[ep % c->n];
    call->ops = ops;
    call->arg = arg;
    call->stream = stream;
    wg_etcd_reader_init(&call->reader, stream, stream ? MAX_STREAM_MESSAGE : MAX_UNARY);
    if (!(call->path = strdup(path)) || !(call->body = strdup(body)) ||
        !(call->deadline = evtimer_new(c->base, call_deadline_cb, call)))
        goto fail;
    if (!stream && evtimer_add(call->deadline, &tv) < 0)
        goto fail;
    if (call_open(call) < 0)
        goto fail;
    return call;
fail:
    call_free(call);
    return NULL;
}

/* ---- answers of plain calls (register, fleet) ---- */

int wg_etcd_answer_code(json_t *root, unsigned status, char *text, size_t len)
{
    json_t *e = json_object_get(root, "error");
    json_t *code = json_is_object(e) ? json_object_get(e, "grpc_code")
                                     : json_object_get(root, "code");
    json_t *m = json_is_object(e) ? json_object_get(e, "message") : e;

    snprintf(text, len, "%s", json_is_string(m) ? json_string_value(m) : "");
    if (!e && status == 200)
        return 0;
    if (json_is_integer(code) && json_integer_value(code) > 0)
        return (int)json_integer_value(code);
    if (!text[0])
        snprintf(text, len, "HTTP %u", status);
    return -1;
}

bool wg_etcd_json_positive(json_t *v, int64_t *out)
{
    char *end;

    *out = 0;
    if (json_is_integer(v)) {
        *out = json_integer_value(v);
    } else if (json_is_string(v) && json_string_length(v)) {
        errno = 0;
        long long n = strtoll(json_string_value(v), &end, 10);
        if (errno || *end)
            return false;
        *out = n;
    }
    return *out > 0;
}
