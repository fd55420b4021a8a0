/* admin — see include/waygate/admin.h */
#include "waygate/admin.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/http_struct.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "waygate/balance.h"
#include "waygate/fleet.h"
#include "waygate/grpc.h"
#include "waygate/health.h"
#include "waygate/listener.h"
#include "waygate/log.h"
#include "waygate/pool.h"
#include "waygate/registry.h"
#include "waygate/stats.h"
#include "waygate/tls.h"

#define STREAM_AHEAD (64 * 1024)    /* generate this much, then wait for the client */
#define STREAM_BATCH 256            /* items per produce() step */
#define ADMIN_TIMEOUT_S 30          /* read/write timeout of admin connections */
#define ADMIN_MAX_HEADERS (16 * 1024)
#define ADMIN_MAX_BODY 4096

#define CT_JSON "application/json"
#define CT_TEXT "text/plain; charset=utf-8"
#define CT_METRICS "text/plain; version=0.0.4; charset=utf-8"
#define CT_HTML "text/html; charset=utf-8"

/* An evbuffer being filled; `failed` remembers an allocation failure. */
struct out {
    struct evbuffer *buf;
    bool failed;
};

struct stream;
/* Appends the next piece of a streamed reply; returns true when it is done. */
typedef bool (*produce_fn)(struct stream *st, struct out *o);

/* A streamed reply in progress (/status, /metrics). */
struct stream {
    struct wg_admin *admin;
    struct evhttp_request *req;
    struct evhttp_connection *evcon;
    struct wg_snapshot *snap;       /* one reference, or NULL before the first */
    produce_fn produce;
    size_t svc_first, svc_end;      /* services shown: snap->services[first, end) */
    size_t part;                    /* cursor: reply part / metric family */
    size_t svc;                     /* cursor: service */
    uint32_t member;                /* cursor: instance within the service */
    bool opened;                    /* the current part's header is written */
    uint64_t bytes;                 /* sent so far */
    uint64_t longest_ns;            /* the longest step, in control-thread CPU time */
    struct stream *prev, *next;
};

struct wg_admin {
    struct wg_listener *const *const *listeners;   /* control's array, and its size */
    const size_t *n_listeners;
    struct event_base *base;
    struct evhttp *http;
    struct wg_pool *pool;
    const struct wg_registry *registry;
    const struct wg_fleet *fleet;
    const struct wg_health_shared *shared;
    struct stream *streams;         /* in flight, freed with the admin */
    uint64_t started_ms;
    bool ready;
    bool loopback;                  /* bound to a loopback address */
    char listen_text[64];
};

/* ---- output helpers ---- */

static void out_add(struct out *o, const void *p, size_t n)
{
    if (!o->failed && n && evbuffer_add(o->buf, p, n) < 0)
        o->failed = true;
}

static void out_str(struct out *o, const char *s) { out_add(o, s, strlen(s)); }

__attribute__((format(printf, 2, 3)))
static void out_printf(struct out *o, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    if (!o->failed && evbuffer_add_vprintf(o->buf, fmt, ap) < 0)
        o->failed = true;
    va_end(ap);
}

/* Length (1-4) of the well-formed UTF-8 sequence at s, or 0 (RFC 3629: no
 * overlong forms, surrogates or code points above U+10FFFF). */
static size_t utf8_seq(const unsigned char *s)
{
    unsigned c = s[0], cp, min;
    size_t n;
    if (c < 0x80)
        return 1;
    if ((c & 0xe0) == 0xc0)
        n = 2, cp = c & 0x1f, min = 0x80;
    else if ((c & 0xf0) == 0xe0)
        n = 3, cp = c & 0x0f, min = 0x800;
    else if ((c & 0xf8) == 0xf0)
        n = 4, cp = c & 0x07, min = 0x10000;
    else
        return 0;
    for (size_t k = 1; k < n; k++) {
        if ((s[k] & 0xc0) != 0x80)      /* also stops at the terminating NUL */
            return 0;
        cp = cp << 6 | (s[k] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return n;
}

/* A JSON string literal (RFC 8259). */
static void out_json_string(struct out *o, const char *str)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t n;
    out_add(o, "\"", 1);
    while (*s) {
        const unsigned char *run = s;
        while (*s >= 0x20 && *s != '"' && *s != '\\' && (n = utf8_seq(s)) > 0)
            s += n;
        out_add(o, run, (size_t)(s - run));
        if (!*s)
            break;
        if (*s == '"' || *s == '\\')
            out_add(o, *s == '"' ? "\\\"" : "\\\\", 2);
        else if (*s < 0x20)
            out_printf(o, "\\u%04x", *s);
        else
            out_str(o, "\\ufffd");
        s++;
    }
    out_add(o, "\"", 1);
}

/* A Prometheus label value (text format 0.0.4): \ " and newline escaped. */
static void out_label_value(struct out *o, const char *str)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t n;
    while (*s) {
        const unsigned char *run = s;
        while (*s && *s != '"' && *s != '\\' && *s != '\n' && (n = utf8_seq(s)) > 0)
            s += n;
        out_add(o, run, (size_t)(s - run));
        if (!*s)
            break;
        if (*s == '\n')
            out_add(o, "\\n", 2);
        else if (*s == '"' || *s == '\\')
            out_add(o, *s == '"' ? "\\\"" : "\\\\", 2);
        else
            out_str(o, "\xef\xbf\xbd");
        s++;
    }
}

/* ---- plain replies ---- */

static void reply_buffer(struct evhttp_request *req, int code, const char *ctype,
                         struct evbuffer *body)
{
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Content-Type", ctype);
    evhttp_add_header(h, "Cache-Control", "no-store");
    if (evhttp_request_get_command(req) == EVHTTP_REQ_HEAD) {
        /* evhttp would send the body of a HEAD reply: send only its length. */
        char len[24];
        snprintf(len, sizeof len, "%zu", evbuffer_get_length(body));
        evhttp_add_header(h, "Content-Length", len);
        evhttp_send_reply(req, code, NULL, NULL);
        return;
    }
    evhttp_send_reply(req, code, NULL, body);
}

/* Sends `o` (and frees its buffer), or a bare 500 when building it failed. */
static void reply_out(struct evhttp_request *req, int code, const char *ctype, struct out *o)
{
    if (!o->buf || o->failed)
        evhttp_send_error(req, HTTP_INTERNAL, NULL);
    else
        reply_buffer(req, code, ctype, o->buf);
    if (o->buf)
        evbuffer_free(o->buf);
}

static void reply_text(struct evhttp_request *req, int code, const char *text)
{
    struct out o = { evbuffer_new(), false };
    if (o.buf)
        out_str(&o, text);
    reply_out(req, code, CT_TEXT, &o);
}

/* {"error":MSG} or {"error":MSG,KEY:VALUE}. */
static void reply_error(struct evhttp_request *req, int code, const char *msg, const char *key,
                        const char *value)
{
    struct out o = { evbuffer_new(), false };
    if (o.buf) {
        out_str(&o, "{\"error\":");
        out_json_string(&o, msg);
        if (key) {
            out_add(&o, ",", 1);
            out_json_string(&o, key);
            out_add(&o, ":", 1);
            out_json_string(&o, value);
        }
        out_str(&o, "}\n");
    }
    reply_out(req, code, CT_JSON, &o);
}

static void reply_method_not_allowed(struct evhttp_request *req, const char *allow)
{
    evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", allow);
    reply_error(req, HTTP_BADMETHOD, "method not allowed", "allow", allow);
}

/* ---- streamed replies ---- */

static void stream_free(struct stream *st)
{
    if (st->evcon)
        evhttp_connection_set_closecb(st->evcon, NULL, NULL);
    if (st->prev)
        st->prev->next = st->next;
    else
        st->admin->streams = st->next;
    if (st->next)
        st->next->prev = st->prev;
    wg_snapshot_unref(st->snap);
    free(st);
}

/* A stream that never started (not linked, no callbacks). */
static void stream_discard(struct stream *st)
{
    wg_snapshot_unref(st->snap);
    free(st);
}

/* The client went away (or the admin is being freed) mid-reply. When the
 * connection failed, evhttp detached the unfinished request from it and left
 * it to us; otherwise the connection frees it. */
static void stream_closed(struct evhttp_connection *evcon, void *arg)
{
    struct stream *st = arg;
    struct evhttp_request *req = st->req;
    st->evcon = NULL;
    stream_free(st);
    if (!evhttp_request_get_connection(req))
        evhttp_request_free(req);
}

static void stream_pump(struct stream *st);

static void stream_sent(struct evhttp_connection *evcon, void *arg) { stream_pump(arg); }

/* Generate up to STREAM_AHEAD bytes and hand them to the connection; the
 * next step runs when the client has taken them (stream_sent). */
static void stream_pump(struct stream *st)
{
    struct evhttp_request *req = st->req;
    struct out o = { evbuffer_new(), false };
    bool done = false;
    uint64_t t0 = wg_thread_cpu_ns();
    while (o.buf && !o.failed && !done && evbuffer_get_length(o.buf) < STREAM_AHEAD)
        done = st->produce(st, &o);
    if (!o.buf || o.failed) {
        struct evhttp_connection *evcon = st->evcon;
        wg_error("msg=\"admin reply aborted: out of memory\" uri=\"%s\"", evhttp_request_get_uri(req));
        if (o.buf)
            evbuffer_free(o.buf);
        stream_free(st);
        evhttp_connection_free(evcon);
        return;
    }
    st->bytes += evbuffer_get_length(o.buf);
    uint64_t step = wg_thread_cpu_ns() - t0;
    st->longest_ns = step > st->longest_ns ? step : st->longest_ns;
    if (done) {
        /* How long the control thread was kept from its loop at most (its
         * own work; time it was preempted by other processes excluded). */
        wg_debug("msg=\"admin reply streamed\" uri=\"%s\" bytes=%llu longest_step_ms=%.3f",
                 evhttp_request_get_uri(req), (unsigned long long)st->bytes,
                 (double)st->longest_ns / 1e6);
        evhttp_send_reply_chunk(req, o.buf);
        stream_free(st);            /* before the end: it may free the connection */
        evhttp_send_reply_end(req);
    } else {
        evhttp_send_reply_chunk_with_cb(req, o.buf, stream_sent, st);
    }
    evbuffer_free(o.buf);
}

static struct stream *stream_new(struct wg_admin *a, struct evhttp_request *req, produce_fn fn)
{
    struct stream *st = calloc(1, sizeof *st);
    if (!st)
        return NULL;
    st->admin = a;
    st->req = req;
    st->evcon = evhttp_request_get_connection(req);
    st->produce = fn;
    st->snap = wg_pool_published(a->pool);
    if (st->snap) {
        wg_snapshot_ref(st->snap);
        st->svc_end = st->snap->n_services;
    }
    return st;
}

/* Send the head of a 200 reply and start streaming `st` (takes it). */
static void stream_start(struct stream *st, const char *ctype)
{
    struct evhttp_request *req = st->req;
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Content-Type", ctype);
    evhttp_add_header(h, "Cache-Control", "no-store");
    if (req->major == 1 && req->minor == 0) {
        /* No chunked encoding in HTTP/1.0: closing the connection ends the
         * reply, so a keep-alive request must not keep it open. */
        evhttp_remove_header(evhttp_request_get_input_headers(req), "Connection");
        evhttp_add_header(h, "Connection", "close");
    }
    evhttp_send_reply_start(req, HTTP_OK, NULL);
    if (evhttp_request_get_command(req) == EVHTTP_REQ_HEAD) {
        stream_discard(st);
        evhttp_send_reply_end(req);
        return;
    }
    st->next = st->admin->streams;
    if (st->next)
        st->next->prev = st;
    st->admin->streams = st;
    evhttp_connection_set_closecb(st->evcon, stream_closed, st);
    stream_pump(st);
}

/* ---- GET /status ---- */

static const struct wg_registry_status *registry_status(const struct wg_admin *a)
{
    static const struct wg_registry_status none = { .source = "none" };
    return a->registry ? &a->registry->status : &none;
}

static void fleet_replica(struct out *o, const struct wg_fleet_replica *r, bool comma)
{
    out_str(o, comma ? ",{\"name\":" : "{\"name\":");
    out_json_string(o, r->name);
    out_str(o, ",\"zone\":");
    out_json_string(o, r->zone);
    out_str(o, ",\"version\":");
    out_json_string(o, r->version);
    out_printf(o, ",\"generation\":%" PRIu64 ",\"self\":%s,\"updated\":%" PRIu64,
               r->generation, r->self ? "true" : "false", r->updated_unix_ms);
    if (r->gone_unix_ms)
        out_printf(o, ",\"gone\":%" PRIu64, r->gone_unix_ms);
    out_str(o, ",\"value\":");
    out_str(o, r->value);               /* JSON as stored (checked when read) */
    out_add(o, "}", 1);
}

/* "fleet":{"name":..,"connected":..,"replicas":[..],"gone":[..],"zones":{..}} */
static void status_fleet(const struct wg_fleet *f, struct out *o)
{
    struct wg_fleet_view v;
    if (!wg_fleet_view(f, &v))
        return;
    out_str(o, ",\"fleet\":{\"name\":");
    out_json_string(o, v.name);
    out_printf(o, ",\"connected\":%s,\"registered\":%s,\"live\":%zu,\"replicas\":[",
               v.connected ? "true" : "false", v.registered ? "true" : "false", v.n_live);
    for (size_t k = 0; k < v.n_live; k++)
        fleet_replica(o, &v.replicas[k], k > 0);
    out_str(o, "],\"gone\":[");
    for (size_t k = 0; k < v.n_gone; k++)
        fleet_replica(o, &v.replicas[v.n_live + k], k > 0);
    out_str(o, "],\"zones\":{");
    for (size_t k = 0, shown = 0; k < v.n_live; k++) {
        bool seen = false;
        for (size_t j = 0; j < k && !seen; j++)
            seen = strcmp(v.replicas[j].zone, v.replicas[k].zone) == 0;
        if (seen)
            continue;
        if (shown++)
            out_add(o, ",", 1);
        out_json_string(o, v.replicas[k].zone);
        out_printf(o, ":%u", wg_fleet_replicas(v.replicas[k].zone));
    }
    out_str(o, "}}");
}

static void status_head(struct stream *st, struct out *o)
{
    const struct wg_registry_status *rs = registry_status(st->admin);
    out_str(o, "{\"version\":");
    out_json_string(o, WAYGATE_VERSION);
    out_printf(o, ",\"generation\":%" PRIu64 ",\"registry\":{\"source\":",
               st->snap ? st->snap->generation : 0);
    out_json_string(o, rs->source ? rs->source : "none");
    out_printf(o, ",\"connected\":%s,\"revision\":%" PRId64,
               rs->connected ? "true" : "false", rs->revision);
    if (rs->session_state) {            /* zookeeper: its session, and zxid = revision */
        out_str(o, ",\"session\":");
        out_json_string(o, rs->session_state);
        out_printf(o, ",\"session_id\":\"0x%" PRIx64 "\",\"zxid\":%" PRId64 ",\"server\":",
                   (uint64_t)rs->session_id, rs->revision);
        out_json_string(o, rs->server);
        out_printf(o, ",\"invalid_records_total\":%" PRIu64, rs->invalid_records_total);
    }
    out_add(o, "}", 1);
    status_fleet(st->admin->fleet, o);
    char who[130];
    const char *role = wg_health_shared_role(st->admin->shared, who, sizeof who);
    if (role) {
        out_str(o, ",\"shared_health\":{\"role\":");
        out_json_string(o, role);
        out_str(o, ",\"prober\":");
        out_json_string(o, who);
        out_add(o, "}", 1);
    }
    out_printf(o, ",\"upstream_h2\":{\"connections\":%" PRIu64 ",\"streams\":%" PRIu64
               ",\"connects\":%" PRIu64 ",\"goaways\":%" PRIu64 ",\"pings\":%" PRIu64
               ",\"ping_failures\":%" PRIu64 ",\"refused\":%" PRIu64 ",\"idle_closed\":%" PRIu64 "}",
               wg_stats_sum(WG_C_H2_UP_CONNECTIONS), wg_stats_sum(WG_C_H2_UP_STREAMS),
               wg_stats_sum(WG_C_H2_UP_CONNECTS), wg_stats_sum(WG_C_H2_UP_GOAWAYS),
               wg_stats_sum(WG_C_H2_UP_PINGS), wg_stats_sum(WG_C_H2_UP_PING_FAILURES),
               wg_stats_sum(WG_C_H2_UP_REFUSED), wg_stats_sum(WG_C_H2_UP_IDLE_CLOSED));
    out_str(o, ",\"services\":{");
}

static void status_instance(struct out *o, const struct wg_member *m, bool comma)
{
    const struct wg_instance *i = m->inst;
    out_str(o, comma ? ",{\"id\":" : "{\"id\":");
    out_json_string(o, i->id);
    out_str(o, ",\"address\":");
    out_json_string(o, i->addr_text);
    out_printf(o, ",\"protocol\":\"%s\"", wg_upstream_protocol_name(i->protocol));
    out_str(o, ",\"zone\":");
    out_json_string(o, i->cell->zone);
    out_printf(o, ",\"priority\":%u,\"weight\":%" PRIu32 ",\"health\":\"%s\","
               "\"active_connections\":%u,\"requests_total\":%" PRIu64 "}",
               i->cell->priority, m->weight, wg_health_name(wg_instance_health(i)),
               atomic_load_explicit(&((struct wg_instance *)i)->active, memory_order_relaxed),
               atomic_load_explicit(&((struct wg_instance *)i)->requests_total,
                                    memory_order_relaxed));
}

static const char *const locality_mode_names[] = { "off", "prefer", "strict" };

/* "locality":{"mode":..,"zone":..,"groups":[..],"zones":{"a":0.7,..}}: the
 * share of new traffic each group and zone gets right now. */
static void status_locality(struct out *o, const struct wg_pool_service *s)
{
    struct wg_locality_share sh[WG_LOCALITY_MAX_GROUPS];
    unsigned n = wg_locality_shares(s, sh, WG_LOCALITY_MAX_GROUPS);
    out_str(o, ",\"locality\":{\"mode\":");
    out_json_string(o, locality_mode_names[s->cfg->locality.mode]);
    out_str(o, ",\"zone\":");
    out_json_string(o, s->config->cfg->zone);
    out_str(o, ",\"groups\":[");
    for (unsigned k = 0; k < n; k++) {
        out_str(o, k ? ",{\"zone\":" : "{\"zone\":");
        out_json_string(o, sh[k].zone);
        out_printf(o, ",\"priority\":%u,\"local\":%s,\"instances\":%u,\"healthy\":%u,"
                   "\"share\":%.4f}", sh[k].priority, sh[k].local ? "true" : "false",
                   sh[k].total, sh[k].healthy, (double)sh[k].load_ppm / WG_LOCALITY_PPM);
    }
    out_str(o, "],\"zones\":{");
    for (unsigned k = 0, shown = 0; k < n; k++) {
        bool seen = false;
        for (unsigned j = 0; j < k && !seen; j++)
            seen = strcmp(sh[j].zone, sh[k].zone) == 0;
        if (seen)
            continue;
        uint64_t sum = 0;
        for (unsigned j = k; j < n; j++)
            if (strcmp(sh[j].zone, sh[k].zone) == 0)
                sum += sh[j].load_ppm;
        if (shown++)
            out_add(o, ",", 1);
        out_json_string(o, sh[k].zone);
        out_printf(o, ":%.4f", (double)sum / WG_LOCALITY_PPM);
    }
    out_str(o, "}}");
}

static bool status_produce(struct stream *st, struct out *o)
{
    if (st->part == 0) {
        status_head(st, o);
        st->part = 1;
        st->svc = st->svc_first;
        return false;
    }
    if (st->svc >= st->svc_end) {
        out_str(o, "}}\n");
        return true;
    }
    const struct wg_pool_service *s = st->snap->services[st->svc];
    if (!st->opened) {
        if (st->svc > st->svc_first)
            out_add(o, ",", 1);
        out_json_string(o, s->name);
        out_str(o, ":{\"balance\":");
        out_json_string(o, s->balance ? s->balance->name : "none");
        status_locality(o, s);
        out_str(o, ",\"instances\":[");
        st->opened = true;
    }
    uint32_t end = s->n_members - st->member > STREAM_BATCH ? st->member + STREAM_BATCH
                                                             : s->n_members;
    for (; st->member < end; st->member++)
        status_instance(o, &s->members[st->member], st->member > 0);
    if (st->member == s->n_members) {
        out_str(o, "]}");
        st->svc++;
        st->member = 0;
        st->opened = false;
    }
    return false;
}

/* Index of service `name` in the snapshot (sorted by name), or -1:
 * O(log services). */
static long snapshot_index(const struct wg_snapshot *s, const char *name)
{
    size_t lo = 0, hi = s ? s->n_services : 0;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strcmp(s->services[mid]->name, name);
        if (c == 0)
            return (long)mid;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return -1;
}

static void serve_status(struct wg_admin *a, struct evhttp_request *req)
{
    struct evkeyvalq query = { 0 };
    const char *q = evhttp_uri_get_query(evhttp_request_get_evhttp_uri(req));
    if (q && evhttp_parse_query_str(q, &query) < 0) {
        reply_error(req, HTTP_BADREQUEST, "malformed query", NULL, NULL);
        return;
    }
    const char *service = evhttp_find_header(&query, "service");
    struct stream *st = stream_new(a, req, status_produce);
    if (!st) {
        evhttp_clear_headers(&query);
        evhttp_send_error(req, HTTP_INTERNAL, NULL);
        return;
    }
    if (service) {
        long k = snapshot_index(st->snap, service);
        if (k < 0) {
            reply_error(req, HTTP_NOTFOUND, "unknown service", "service", service);
            evhttp_clear_headers(&query);
            stream_discard(st);
            return;
        }
        st->svc_first = (size_t)k;
        st->svc_end = (size_t)k + 1;
    }
    evhttp_clear_headers(&query);
    stream_start(st, CT_JSON);
}

/* ---- GET /metrics ---- */

static void family_head(struct out *o, const char *name, const char *type, const char *help)
{
    out_printf(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void metric_u64(struct out *o, const char *name, const char *type, const char *help,
                       uint64_t v)
{
    family_head(o, name, type, help);
    out_printf(o, "%s %" PRIu64 "\n", name, v);
}

static const struct {
    enum wg_counter c;
    const char *name, *help;
} counters[] = {
    { WG_C_CONN_ACCEPTED, "waygate_connections_accepted_total",
      "Client connections accepted on all listeners." },
    { WG_C_CONN_REJECTED_LIMIT, "waygate_connections_rejected_total",
      "Client connections closed at once because the global max_connections was reached." },
    { WG_C_ACCEPT_PAUSED, "waygate_accept_paused_total",
      "Times accepting paused because descriptors or buffers ran out (EMFILE, ENFILE, ENOBUFS)." },
    { WG_C_CONNECT_ERRORS, "waygate_upstream_connect_errors_total",
      "Upstream connection attempts that failed or timed out." },
    { WG_C_RETRIES, "waygate_retries_total", "Upstream attempts after the first one." },
    { WG_C_NO_UPSTREAM, "waygate_no_upstream_total",
      "Connections or requests that found no routable instance." },
    { WG_C_BYTES_IN, "waygate_bytes_in_total", "Bytes received from clients." },
    { WG_C_BYTES_OUT, "waygate_bytes_out_total", "Bytes sent to clients." },
    { WG_C_IDLE_TIMEOUTS, "waygate_idle_timeouts_total",
      "Connections closed because no byte moved for idle_timeout." },
    { WG_C_SNAPSHOT_SWITCHES, "waygate_snapshot_switches_total",
      "Times a worker started routing on a newer snapshot." },
    { WG_C_HTTP_REQUESTS, "waygate_http_requests_total",
      "HTTP requests answered, by waygate or by an upstream." },
    { WG_C_HTTP_UPSTREAM_REUSED, "waygate_http_upstream_reused_total",
      "HTTP requests sent on a pooled keep-alive upstream connection." },
    { WG_C_HTTP_UPSTREAM_STALE, "waygate_http_upstream_stale_total",
      "Pooled upstream connections found closed when reused (retried for free)." },
    { WG_C_PROXY_UNTRUSTED, "waygate_proxy_protocol_untrusted_total",
      "Connections to proxy_protocol listeners closed because the peer is not in trusted_proxies." },
    { WG_C_HTTP_TIMEOUTS, "waygate_http_timeouts_total",
      "HTTP requests ended by a timeout (408, 504, or a close)." },
    { WG_C_TLS_HANDSHAKES, "waygate_tls_handshakes_total",
      "TLS handshakes with clients that completed." },
    { WG_C_TLS_RESUMED, "waygate_tls_resumed_total",
      "Completed client TLS handshakes that resumed a session (ticket)." },
    { WG_C_UPSTREAM_TLS_FAILURES, "waygate_upstream_tls_failures_total",
      "TLS handshakes with upstream instances that failed (verification, protocol, network)." },
    { WG_C_POLICY_DENIED, "waygate_policy_denied_total",
      "Requests refused by an authentication policy (jwt, api_key, basic_auth: 401/403)." },
    { WG_C_POLICY_RATE_LIMITED, "waygate_policy_rate_limited_total",
      "Requests refused by a rate_limit policy (429)." },
    { WG_C_POLICY_RL_EVICTIONS, "waygate_policy_rate_limit_evictions_total",
      "Live rate-limit buckets evicted because a key table was full (max_keys)." },
    { WG_C_MIRROR_SENT, "waygate_mirror_sent_total",
      "Request copies sent by a mirror policy (fire-and-forget)." },
    { WG_C_MIRROR_SKIPPED, "waygate_mirror_skipped_total",
      "Request copies a mirror policy skipped (in-flight bound, no routable HTTP/1.1 instance, error)." },
    { WG_C_H2_UP_CONNECTS, "waygate_upstream_h2_connects_total",
      "HTTP/2 upstream connections opened (h2c and h2 instances)." },
    { WG_C_H2_UP_GOAWAYS, "waygate_upstream_h2_goaways_total",
      "GOAWAY frames received on HTTP/2 upstream connections." },
    { WG_C_H2_UP_PINGS, "waygate_upstream_h2_pings_total",
      "PINGs sent on idle HTTP/2 upstream connections (upstream.ping_interval)." },
    { WG_C_H2_UP_PING_FAILURES, "waygate_upstream_h2_ping_failures_total",
      "HTTP/2 upstream connections closed because a PING went unanswered (upstream.ping_timeout)." },
    { WG_C_H2_UP_REFUSED, "waygate_upstream_h2_refused_total",
      "HTTP/2 upstream streams the upstream did not process (GOAWAY last-stream-id, REFUSED_STREAM)." },
    { WG_C_H2_UP_IDLE_CLOSED, "waygate_upstream_h2_idle_closed_total",
      "Idle HTTP/2 upstream connections closed (upstream.max_idle, upstream.idle_timeout)." },
};

/* The gauges among the per-worker counters (stats.h): +1 / -1 each. */
static const struct {
    enum wg_counter c;
    const char *name, *help;
} gauges[] = {
    { WG_C_H2_UP_CONNECTIONS, "waygate_upstream_h2_connections",
      "HTTP/2 upstream connections open now, all workers." },
    { WG_C_H2_UP_STREAMS, "waygate_upstream_h2_streams",
      "HTTP/2 upstream streams open now, all workers." },
};

static const struct {
    enum wg_counter c;
    const char *reason;
} mirror_drops[] = {
    { WG_C_MIRROR_DROP_MAX_BODY, "max_body" },
    { WG_C_MIRROR_DROP_ABORTED, "aborted" },
    { WG_C_MIRROR_DROP_FAILED, "failed" },
};

static const struct {
    enum wg_counter c;
    const char *reason;
} tls_failures[] = {
    { WG_C_TLS_FAIL_PROTOCOL, "protocol" },
    { WG_C_TLS_FAIL_CERTIFICATE, "certificate" },
    { WG_C_TLS_FAIL_TIMEOUT, "timeout" },
    { WG_C_TLS_FAIL_OTHER, "other" },
};

static const struct {
    enum wg_counter c;
    const char *code;
} response_classes[] = {
    { WG_C_HTTP_1XX, "1xx" }, { WG_C_HTTP_2XX, "2xx" }, { WG_C_HTTP_3XX, "3xx" },
    { WG_C_HTTP_4XX, "4xx" }, { WG_C_HTTP_5XX, "5xx" },
};

static void metrics_process(struct stream *st, struct out *o)
{
    family_head(o, "waygate_build_info", "gauge", "Always 1; the version label names the build.");
    out_str(o, "waygate_build_info{version=\"");
    out_label_value(o, WAYGATE_VERSION);
    out_str(o, "\"} 1\n");
    metric_u64(o, "waygate_ready", "gauge",
               "1 while /ready answers 200 (serving), 0 before that and while stopping.",
               st->admin->ready);
    metric_u64(o, "waygate_snapshot_generation", "gauge",
               "Generation of the published snapshot (0: none yet).",
               st->snap ? st->snap->generation : 0);
    metric_u64(o, "waygate_connections_open", "gauge", "Client connections open now.",
               atomic_load(&wg_stats_open_connections));
    for (size_t k = 0; k < sizeof counters / sizeof counters[0]; k++)
        metric_u64(o, counters[k].name, "counter", counters[k].help, wg_stats_sum(counters[k].c));
    for (size_t k = 0; k < sizeof gauges / sizeof gauges[0]; k++)
        metric_u64(o, gauges[k].name, "gauge", gauges[k].help, wg_stats_sum(gauges[k].c));
    family_head(o, "waygate_http_responses_total", "counter",
                "HTTP responses sent to clients, by status class (101 counts as 1xx).");
    for (size_t k = 0; k < sizeof response_classes / sizeof response_classes[0]; k++)
        out_printf(o, "waygate_http_responses_total{code=\"%s\"} %" PRIu64 "\n",
                   response_classes[k].code, wg_stats_sum(response_classes[k].c));
    family_head(o, "waygate_mirror_dropped_total", "counter",
                "Request copies a mirror policy began and dropped before their body was whole, "
                "by reason.");
    for (size_t k = 0; k < sizeof mirror_drops / sizeof mirror_drops[0]; k++)
        out_printf(o, "waygate_mirror_dropped_total{reason=\"%s\"} %" PRIu64 "\n",
                   mirror_drops[k].reason, wg_stats_sum(mirror_drops[k].c));
}

/* Expiry of every edge certificate of the snapshot's configuration. */
static void metrics_certificates(struct stream *st, struct out *o)
{
    const struct wg_config_ref *ref = st->snap ? st->snap->config : NULL;
    const struct wg_tls_set *set = ref ? ref->ext : NULL;
    bool head = false;
    for (size_t k = 0; set && k < set->n_listeners && k < ref->cfg->n_listeners; k++) {
        const struct wg_tls_cert_info *certs;
        size_t n = set->listeners[k] ? wg_tls_server_certs(set->listeners[k], &certs) : 0;
        for (size_t c = 0; c < n; c++) {
            if (!head)
                family_head(o, "waygate_tls_cert_not_after_seconds", "gauge",
                            "Expiry (notAfter, Unix seconds) of each listener certificate.");
            head = true;
            out_str(o, "waygate_tls_cert_not_after_seconds{listener=\"");
            out_label_value(o, ref->cfg->listeners[k].name);
            out_str(o, "\",cert=\"");
            out_label_value(o, certs[c].path);
            out_printf(o, "\"} %" PRId64 "\n", certs[c].not_after);
        }
    }
}

static void metrics_tls(struct stream *st, struct out *o)
{
    family_head(o, "waygate_tls_handshake_failures_total", "counter",
                "TLS handshakes with clients that failed, by reason.");
    for (size_t k = 0; k < sizeof tls_failures / sizeof tls_failures[0]; k++)
        out_printf(o, "waygate_tls_handshake_failures_total{reason=\"%s\"} %" PRIu64 "\n",
                   tls_failures[k].reason, wg_stats_sum(tls_failures[k].c));
    metrics_certificates(st, o);
    metric_u64(o, "waygate_access_log_dropped_total", "counter",
               "Access log lines dropped: a worker's buffer was full (slow disk) or a write failed.",
               wg_access_log_dropped());
}

/* Per listener (label `listener`): atomics on the listener, all workers. */
static void metrics_listeners(struct stream *st, struct out *o)
{
    const struct wg_admin *a = st->admin;
    size_t n = a->n_listeners ? *a->n_listeners : 0;
    static const char *const names[2] = { "waygate_listener_connections_accepted_total",
                                          "waygate_listener_connections_rejected_total" };
    static const char *const helps[2] = {
        "Client connections accepted by the listener.",
        "Of those, closed at once because max_connections was reached." };
    for (int f = 0; f < 2; f++) {
        family_head(o, names[f], "counter", helps[f]);
        for (size_t k = 0; k < n; k++) {
            const struct wg_listener *l = (*a->listeners)[k];
            out_printf(o, "%s{listener=\"", names[f]);
            out_label_value(o, l->name);
            out_printf(o, "\"} %llu\n", (unsigned long long)atomic_load_explicit(
                f == 0 ? &l->accepted : &l->rejected, memory_order_relaxed));
        }
    }
}

/* waygate_listener_grpc_responses_total{listener,grpc_code}: gRPC calls
 * by the grpc-status their client got, routed or not (no route:
 * UNIMPLEMENTED); only codes seen so far, at most WG_GRPC_CODES each. */
static void metrics_listener_grpc(struct stream *st, struct out *o)
{
    const struct wg_admin *a = st->admin;
    size_t n = a->n_listeners ? *a->n_listeners : 0;
    family_head(o, "waygate_listener_grpc_responses_total", "counter",
                "gRPC calls answered on the listener, by the grpc-status the client got "
                "(from the upstream or waygate's own Trailers-Only errors).");
    for (size_t k = 0; k < n; k++) {
        const struct wg_listener *l = (*a->listeners)[k];
        for (int c = 0; c < WG_GRPC_CODES; c++) {
            uint64_t v = atomic_load_explicit(&l->grpc[c], memory_order_relaxed);
            if (!v)
                continue;
            out_str(o, "waygate_listener_grpc_responses_total{listener=\"");
            out_label_value(o, l->name);
            out_printf(o, "\",grpc_code=\"%s\"} %llu\n", wg_grpc_status_name(c),
                       (unsigned long long)v);
        }
    }
}

/* HTTP/2 families per listener (listener.h: h2): one row per counter, the
 * reason families first by listener, then by reason. */
static const struct {
    const char *name, *type, *help;
} h2_families[] = {
    { "waygate_http2_connections_total", "counter",
      "Client connections that speak HTTP/2 (ALPN h2, or h2c with prior knowledge)." },
    { "waygate_http2_streams_total", "counter", "HTTP/2 streams opened by clients." },
    { "waygate_http2_streams_active", "gauge", "HTTP/2 streams open now." },
    { "waygate_http2_resets_received_total", "counter", "RST_STREAM frames received from clients." },
    { "waygate_http2_resets_sent_total", "counter", "RST_STREAM frames sent to clients, by reason." },
    { "waygate_http2_goaways_sent_total", "counter", "GOAWAY frames sent to clients, by error code." },
};

static const struct {
    enum wg_h2_counter c;
    unsigned family;                    /* index in h2_families */
    const char *reason;                 /* NULL: no reason label */
} h2_counters[] = {
    { WG_H2_CONNECTIONS, 0, NULL },
    { WG_H2_STREAMS, 1, NULL },
    { WG_H2_STREAMS_ACTIVE, 2, NULL },
    { WG_H2_RST_RECV, 3, NULL },
    { WG_H2_RST_SENT_INTERNAL, 4, "internal_error" },
    { WG_H2_RST_SENT_CANCEL, 4, "cancel" },
    { WG_H2_RST_SENT_OTHER, 4, "other" },
    { WG_H2_GOAWAY_NO_ERROR, 5, "no_error" },
    { WG_H2_GOAWAY_CALM, 5, "enhance_your_calm" },
    { WG_H2_GOAWAY_COMPRESSION, 5, "compression_error" },
    { WG_H2_GOAWAY_PROTOCOL, 5, "protocol_error" },
    { WG_H2_GOAWAY_OTHER, 5, "other" },
};

static void metrics_http2(struct stream *st, struct out *o)
{
    const struct wg_admin *a = st->admin;
    size_t n = a->n_listeners ? *a->n_listeners : 0;
    for (unsigned f = 0; f < sizeof h2_families / sizeof h2_families[0]; f++) {
        family_head(o, h2_families[f].name, h2_families[f].type, h2_families[f].help);
        for (size_t k = 0; k < n; k++) {
            const struct wg_listener *l = (*a->listeners)[k];
            if (l->mode != WG_MODE_HTTP)
                continue;
            for (size_t c = 0; c < sizeof h2_counters / sizeof h2_counters[0]; c++) {
                if (h2_counters[c].family != f)
                    continue;
                out_printf(o, "%s{listener=\"", h2_families[f].name);
                out_label_value(o, l->name);
                if (h2_counters[c].reason)
                    out_printf(o, "\",reason=\"%s", h2_counters[c].reason);
                out_printf(o, "\"} %llu\n", (unsigned long long)atomic_load_explicit(
                               &l->h2[h2_counters[c].c], memory_order_relaxed));
            }
        }
    }
}

/* waygate_request_duration_seconds{service}: a histogram per service
 * (http requests, first byte of the request to the end of the response). */
/* One step (STREAM_BATCH services); true when the family is complete. */
static bool metrics_durations(struct stream *st, struct out *o)
{
    const struct wg_snapshot *s = st->snap;
    if (!st->opened) {
        family_head(o, "waygate_request_duration_seconds", "histogram",
                    "HTTP request duration, from the request's first byte to the end of its "
                    "response, per service.");
        st->opened = true;
    }
    for (unsigned n = 0; s && n < STREAM_BATCH && st->svc < st->svc_end; n++, st->svc++) {
        struct wg_service_state *ss = s->services[st->svc]->state;
        uint64_t cum = 0;
        for (int b = 0; b <= WG_DURATION_BUCKETS; b++) {
            out_str(o, "waygate_request_duration_seconds_bucket{service=\"");
            out_label_value(o, ss->name);
            if (b < WG_DURATION_BUCKETS) {
                cum += atomic_load_explicit(&ss->duration_buckets[b], memory_order_relaxed);
                out_printf(o, "\",le=\"%g\"} %llu\n", wg_duration_le[b], (unsigned long long)cum);
            } else {
                out_printf(o, "\",le=\"+Inf\"} %llu\n", (unsigned long long)atomic_load_explicit(
                               &ss->duration_count, memory_order_relaxed));
            }
        }
        out_str(o, "waygate_request_duration_seconds_sum{service=\"");
        out_label_value(o, ss->name);
        out_printf(o, "\"} %.6f\n", (double)atomic_load(&ss->duration_sum_us) / 1e6);
        out_str(o, "waygate_request_duration_seconds_count{service=\"");
        out_label_value(o, ss->name);
        out_printf(o, "\"} %llu\n", (unsigned long long)atomic_load(&ss->duration_count));
    }
    return !s || st->svc >= st->svc_end;
}

/* waygate_grpc_responses_total{service,grpc_code}: one step (STREAM_BATCH
 * services) like metrics_durations; only codes seen so far. */
static bool metrics_grpc_codes(struct stream *st, struct out *o)
{
    const struct wg_snapshot *s = st->snap;
    if (!st->opened) {
        family_head(o, "waygate_grpc_responses_total", "counter",
                    "gRPC calls routed to the service, by the grpc-status the client got "
                    "(from the upstream or waygate's own Trailers-Only errors).");
        st->opened = true;
    }
    for (unsigned n = 0; s && n < STREAM_BATCH && st->svc < st->svc_end; n++, st->svc++) {
        const struct wg_service_state *ss = s->services[st->svc]->state;
        for (int c = 0; c < WG_GRPC_CODES; c++) {
            uint64_t v = atomic_load_explicit(&ss->grpc_codes[c], memory_order_relaxed);
            if (!v)
                continue;
            out_str(o, "waygate_grpc_responses_total{service=\"");
            out_label_value(o, ss->name);
            out_printf(o, "\",grpc_code=\"%s\"} %llu\n", wg_grpc_status_name(c),
                       (unsigned long long)v);
        }
    }
    return !s || st->svc >= st->svc_end;
}

/* waygate_picks_total{service,zone}: picks summed over the zone's cells. */
static void metrics_picks(struct stream *st, struct out *o)
{
    const struct wg_snapshot *s = st->snap;
    family_head(o, "waygate_picks_total", "counter",
                "Instances picked for new work, per service and instance zone.");
    for (size_t k = 0; s && k < s->n_services; k++) {
        if (!s->services[k]->locality)
            continue;                   /* one group: picks are not counted */
        const struct wg_service_state *ss = s->services[k]->state;
        for (const struct wg_locality_cell *c = ss->cells; c; c = c->next) {
            bool seen = false;
            for (const struct wg_locality_cell *d = ss->cells; d != c && !seen; d = d->next)
                seen = strcmp(d->zone, c->zone) == 0;
            if (seen)
                continue;
            uint64_t n = 0;
            for (const struct wg_locality_cell *d = c; d; d = d->next)
                if (strcmp(d->zone, c->zone) == 0)
                    n += atomic_load_explicit(&((struct wg_locality_cell *)d)->picks,
                                              memory_order_relaxed);
            out_str(o, "waygate_picks_total{service=\"");
            out_label_value(o, ss->name);
            out_str(o, "\",zone=\"");
            out_label_value(o, c->zone);
            out_printf(o, "\"} %llu\n", (unsigned long long)n);
        }
    }
}

/* waygate_fleet_replicas{zone}, waygate_fleet_connected. */
static void metrics_fleet(struct stream *st, struct out *o)
{
    struct wg_fleet_view v;
    if (!wg_fleet_view(st->admin->fleet, &v))
        return;
    family_head(o, "waygate_fleet_replicas", "gauge",
                "Live waygate replicas in etcd (fleet:), per replica zone.");
    for (size_t k = 0; k < v.n_live; k++) {
        bool seen = false;
        for (size_t j = 0; j < k && !seen; j++)
            seen = strcmp(v.replicas[j].zone, v.replicas[k].zone) == 0;
        if (seen)
            continue;
        out_str(o, "waygate_fleet_replicas{zone=\"");
        out_label_value(o, v.replicas[k].zone);
        out_printf(o, "\"} %u\n", wg_fleet_replicas(v.replicas[k].zone));
    }
    metric_u64(o, "waygate_fleet_connected", "gauge",
               "1 when etcd answered the fleet within its TTL.", v.connected);
}

static void metrics_registry(struct stream *st, struct out *o)
{
    const struct wg_registry_status *rs = registry_status(st->admin);
    uint64_t now = wg_now_ms();
    uint64_t since = rs->last_contact_ms ? rs->last_contact_ms : st->admin->started_ms;
    family_head(o, "waygate_registry_info", "gauge",
                "Always 1; the source label names the registry (file, etcd, zookeeper, none).");
    out_str(o, "waygate_registry_info{source=\"");
    out_label_value(o, rs->source ? rs->source : "none");
    out_str(o, "\"} 1\n");
    metric_u64(o, "waygate_registry_connected", "gauge",
               "1 when the registry is reachable (file: its last read succeeded).", rs->connected);
    metric_u64(o, "waygate_registry_revision", "gauge",
               "Registry revision (etcd) or number of successful reads (file).",
               rs->revision > 0 ? (uint64_t)rs->revision : 0);
    metric_u64(o, "waygate_registry_events_total", "counter", "Registry changes applied.",
               rs->events_total);
    metric_u64(o, "waygate_registry_reconnects_total", "counter",
               "Reconnections to the registry.", rs->reconnects_total);
    metric_u64(o, "waygate_registry_resyncs_total", "counter",
               "Full re-reads of the registry after a lost watch or compaction.", rs->resyncs_total);
    metric_u64(o, "waygate_registry_invalid_records_total", "counter",
               "Registry values skipped because they could not be decoded.",
               rs->invalid_records_total);
    family_head(o, "waygate_registry_last_contact_seconds", "gauge",
                "Seconds since the last successful registry read (since start if none yet).");
    out_printf(o, "waygate_registry_last_contact_seconds %.3f\n",
               now > since ? (double)(now - since) / 1000.0 : 0.0);
    family_head(o, "waygate_registry_propagation_seconds", "histogram",
                "From a registry change read off the socket to the snapshot published "
                "to every worker.");
    for (int k = 0; k < WG_REGISTRY_PROPAGATION_BUCKETS; k++)
        out_printf(o, "waygate_registry_propagation_seconds_bucket{le=\"%g\"} %llu\n",
                   wg_registry_propagation_le[k], (unsigned long long)rs->propagation_buckets[k]);
    out_printf(o, "waygate_registry_propagation_seconds_bucket{le=\"+Inf\"} %llu\n",
               (unsigned long long)rs->propagation_count);
    out_printf(o, "waygate_registry_propagation_seconds_sum %.9f\n",
               (double)rs->propagation_sum_ns / 1e9);
    out_printf(o, "waygate_registry_propagation_seconds_count %llu\n",
               (unsigned long long)rs->propagation_count);
}

/* Per-service and per-instance families: one value per service or member. */
struct family {
    const char *name, *type, *help;
    uint64_t (*value)(const struct wg_pool_service *s, const struct wg_member *m);
};

static uint64_t v_instances(const struct wg_pool_service *s, const struct wg_member *m)
{
    return s->n_members;
}
static uint64_t v_healthy(const struct wg_pool_service *s, const struct wg_member *m)
{
    int n = atomic_load_explicit(&s->state->healthy, memory_order_relaxed);
    return n > 0 ? (uint64_t)n : 0;
}
static uint64_t v_panic(const struct wg_pool_service *s, const struct wg_member *m)
{
    return atomic_load_explicit(&s->state->panic_routed, memory_order_relaxed);
}
static uint64_t v_ejected(const struct wg_pool_service *s, const struct wg_member *m)
{
    int n = atomic_load_explicit(&s->state->ejected, memory_order_relaxed);
    return n > 0 ? (uint64_t)n : 0;
}
static uint64_t v_refused(const struct wg_pool_service *s, const struct wg_member *m)
{
    return atomic_load_explicit(&s->state->ejections_refused, memory_order_relaxed);
}
static uint64_t v_ejections(const struct wg_pool_service *s, const struct wg_member *m)
{
    return atomic_load_explicit(&m->inst->ejections, memory_order_relaxed);
}
static uint64_t v_probes_passed(const struct wg_pool_service *s, const struct wg_member *m)
{
    return atomic_load_explicit(&m->inst->probes_passed, memory_order_relaxed);
}
static uint64_t v_probes_failed(const struct wg_pool_service *s, const struct wg_member *m)
{
    return atomic_load_explicit(&m->inst->probes_failed, memory_order_relaxed);
}
static uint64_t v_requests(const struct wg_pool_service *s, const struct wg_member *m)
{
    return atomic_load_explicit(&m->inst->requests_total, memory_order_relaxed);
}
static uint64_t v_active(const struct wg_pool_service *s, const struct wg_member *m)
{
    return atomic_load_explicit(&m->inst->active, memory_order_relaxed);
}
static uint64_t v_failures(const struct wg_pool_service *s, const struct wg_member *m)
{
    return atomic_load_explicit(&m->inst->connect_failures, memory_order_relaxed);
}
static uint64_t v_weight(const struct wg_pool_service *s, const struct wg_member *m)
{
    return m->weight;
}
static uint64_t v_is_healthy(const struct wg_pool_service *s, const struct wg_member *m)
{
    return wg_instance_health(m->inst) == WG_HEALTH_HEALTHY;
}

static const struct family service_families[] = {
    { "waygate_service_instances", "gauge", "Instances the registry lists for the service.",
      v_instances },
    { "waygate_service_healthy_instances", "gauge", "Instances of the service that are healthy.",
      v_healthy },
    { "waygate_service_ejected_instances", "gauge",
      "Instances of the service ejected by passive outlier detection.", v_ejected },
    { "waygate_panic_routed_total", "counter",
      "Picks made in panic mode (healthy share below panic_threshold).", v_panic },
    { "waygate_ejections_refused_total", "counter",
      "Ejections not made because max_ejection_percent was reached.", v_refused },
};
#define N_SERVICE_FAMILIES (sizeof service_families / sizeof service_families[0])

/* value NULL: the state set waygate_instance_state. */
static const struct family instance_families[] = {
    { "waygate_upstream_requests_total", "counter",
      "Connections (tcp) or requests (http) routed to the instance.", v_requests },
    { "waygate_upstream_active", "gauge",
      "Open connections or in-flight requests on the instance.", v_active },
    { "waygate_upstream_connect_failures_total", "counter",
      "Connection attempts to the instance that failed or timed out.", v_failures },
    { "waygate_upstream_weight", "gauge", "Weight of the instance (0: no new traffic).",
      v_weight },
    { "waygate_upstream_ejections_total", "counter",
      "Times passive outlier detection ejected the instance.", v_ejections },
    { "waygate_upstream_probes_passed_total", "counter", "Active health probes that passed.",
      v_probes_passed },
    { "waygate_upstream_probes_failed_total", "counter", "Active health probes that failed.",
      v_probes_failed },
    { "waygate_instance_healthy", "gauge", "1 when the instance is healthy, else 0.",
      v_is_healthy },
    { "waygate_instance_state", "gauge",
      "1 for the instance's current health state, 0 for the others.", NULL },
};
#define N_INSTANCE_FAMILIES (sizeof instance_families / sizeof instance_families[0])

static void out_series(struct out *o, const char *name, const struct wg_pool_service *s,
                       const struct wg_member *m)
{
    out_str(o, name);
    out_str(o, "{service=\"");
    out_label_value(o, s->name);
    if (m) {
        out_str(o, "\",upstream=\"");
        out_label_value(o, m->inst->id);
    }
    out_add(o, "\"", 1);
}

static void metrics_sample(struct out *o, const struct family *f, const struct wg_pool_service *s,
                           const struct wg_member *m)
{
    if (f->value) {
        out_series(o, f->name, s, m);
        out_printf(o, "} %" PRIu64 "\n", f->value(s, m));
        return;
    }
    enum wg_health now = wg_instance_health(m->inst);
    for (int h = WG_HEALTH_UNKNOWN; h <= WG_HEALTH_DRAINING; h++) {
        out_series(o, f->name, s, m);
        out_printf(o, ",state=\"%s\"} %d\n", wg_health_name((enum wg_health)h), h == (int)now);
    }
}

/* One step of a per-service family; true when the family is complete. */
static bool metrics_services(struct stream *st, struct out *o, const struct family *f)
{
    if (!st->opened) {
        family_head(o, f->name, f->type, f->help);
        st->opened = true;
    }
    for (unsigned n = 0; n < STREAM_BATCH && st->svc < st->svc_end; n++, st->svc++)
        metrics_sample(o, f, st->snap->services[st->svc], NULL);
    return st->svc >= st->svc_end;
}

/* One step of a per-instance family; true when the family is complete. */
static bool metrics_instances(struct stream *st, struct out *o, const struct family *f)
{
    if (!st->opened) {
        family_head(o, f->name, f->type, f->help);
        st->opened = true;
    }
    for (unsigned n = 0; n < STREAM_BATCH && st->svc < st->svc_end; n++) {
        const struct wg_pool_service *s = st->snap->services[st->svc];
        if (st->member < s->n_members)
            metrics_sample(o, f, s, &s->members[st->member++]);
        if (st->member >= s->n_members) {
            st->svc++;
            st->member = 0;
        }
    }
    return st->svc >= st->svc_end;
}

static bool metrics_produce(struct stream *st, struct out *o)
{
    size_t f = st->part;
    bool family_done;
    if (f == 0) {
        metrics_process(st, o);
        metrics_tls(st, o);
        metrics_listeners(st, o);
        metrics_http2(st, o);
        metrics_listener_grpc(st, o);
        metrics_picks(st, o);
        metrics_fleet(st, o);
        metrics_registry(st, o);
        st->part++;
        return false;
    }
    f--;
    if (f == 0)                         /* per service, resumable like the rest */
        family_done = metrics_durations(st, o);
    else if (f == 1)
        family_done = metrics_grpc_codes(st, o);
    else if ((f -= 2) < N_SERVICE_FAMILIES)
        family_done = metrics_services(st, o, &service_families[f]);
    else if (f - N_SERVICE_FAMILIES < N_INSTANCE_FAMILIES)
        family_done = metrics_instances(st, o, &instance_families[f - N_SERVICE_FAMILIES]);
    else
        return true;
    if (family_done) {
        st->part++;
        st->svc = st->svc_first;
        st->member = 0;
        st->opened = false;
    }
    return false;
}

static void serve_metrics(struct wg_admin *a, struct evhttp_request *req)
{
    struct stream *st = stream_new(a, req, metrics_produce);
    if (!st) {
        evhttp_send_error(req, HTTP_INTERNAL, NULL);
        return;
    }
    stream_start(st, CT_METRICS);
}

/* ---- POST /services/NAME/instances/ID/{drain,enable} ---- */

/* Cross-site requests from a browser carry an Origin that is not this
 * server; on a loopback admin, a Host that is not an address or localhost
 * means DNS rebinding. Both are refused for actions. */
static bool action_allowed(const struct wg_admin *a, struct evhttp_request *req)
{
    struct evkeyvalq *in = evhttp_request_get_input_headers(req);
    const char *host = evhttp_find_header(in, "Host");
    const char *origin = evhttp_find_header(in, "Origin");
    if (origin && (!host || strncmp(origin, "http://", 7) || strcasecmp(origin + 7, host)))
        return false;
    if (!a->loopback || !host)
        return true;
    char name[256];
    size_t n = strcspn(host, host[0] == '[' ? "]" : ":");
    if (n >= sizeof name)
        return false;
    memcpy(name, host + (host[0] == '['), n - (host[0] == '['));
    name[n - (host[0] == '[')] = '\0';
    struct in6_addr any;
    return strcasecmp(name, "localhost") == 0 || inet_pton(AF_INET, name, &any) == 1 ||
           inet_pton(AF_INET6, name, &any) == 1;
}

/* Percent-decode one path segment; NULL (with *oom) when out of memory or
 * when it decodes to something holding a NUL byte. */
static char *decode_segment(const char *start, size_t len, bool *oom)
{
    char *raw = strndup(start, len), *dec = NULL;
    size_t dec_len = 0;
    if (raw)
        dec = evhttp_uridecode(raw, 0, &dec_len);
    free(raw);
    if (!dec) {
        *oom = true;
        return NULL;
    }
    if (strlen(dec) != dec_len) {
        free(dec);
        return NULL;
    }
    return dec;
}

/* Split "NAME/instances/ID/ACTION" (decoded per segment; ID may hold '/').
 * Returns 1, 0 when the path has not that shape, -1 when out of memory. */
static int parse_action_path(const char *rest, char **service, char **id, bool *drain)
{
    const char *slash = strchr(rest, '/');
    const char *last = strrchr(rest, '/');
    bool oom = false;
    if (!slash || slash == rest || strncmp(slash, "/instances/", 11) || last <= slash + 11)
        return 0;
    if (strcmp(last, "/drain") == 0)
        *drain = true;
    else if (strcmp(last, "/enable") == 0)
        *drain = false;
    else
        return 0;
    *service = decode_segment(rest, (size_t)(slash - rest), &oom);
    *id = decode_segment(slash + 11, (size_t)(last - (slash + 11)), &oom);
    if (*service && *id)
        return 1;
    free(*service);
    free(*id);
    *service = *id = NULL;
    return oom ? -1 : 0;
}

static void action_reply(struct evhttp_request *req, const char *service,
                         const struct wg_instance *i)
{
    struct out o = { evbuffer_new(), false };
    if (o.buf) {
        out_str(&o, "{\"service\":");
        out_json_string(&o, service);
        out_str(&o, ",\"id\":");
        out_json_string(&o, i->id);
        out_str(&o, ",\"address\":");
        out_json_string(&o, i->addr_text);
        out_printf(&o, ",\"health\":\"%s\",\"admin_drained\":%s}\n",
                   wg_health_name(wg_instance_health(i)),
                   atomic_load(&((struct wg_instance *)i)->admin_drained) ? "true" : "false");
    }
    reply_out(req, HTTP_OK, CT_JSON, &o);
}

static void act_on(struct wg_admin *a, struct evhttp_request *req, const char *service,
                   const char *id, bool drain)
{
    const struct wg_snapshot *snap = wg_pool_published(a->pool);
    const struct wg_pool_service *svc = snap ? wg_snapshot_service(snap, service) : NULL;
    if (!svc) {
        reply_error(req, HTTP_NOTFOUND, "unknown service", "service", service);
        return;
    }
    struct wg_instance *inst = NULL;
    for (uint32_t k = 0; k < svc->n_members && !inst; k++)
        if (strcmp(svc->members[k].inst->id, id) == 0)
            inst = svc->members[k].inst;
    if (!inst) {
        reply_error(req, HTTP_NOTFOUND, "unknown instance", "id", id);
        return;
    }
    if (!wg_instance_admin_drain(inst, drain)) {
        reply_error(req, 409, "removed from the registry: stays draining", "id", id);
        return;
    }
    wg_info("msg=\"instance %s by admin\" service=%s id=%s address=%s health=%s",
            drain ? "drained" : "enabled", service, id, inst->addr_text,
            wg_health_name(wg_instance_health(inst)));
    action_reply(req, service, inst);
}

static void serve_action(struct wg_admin *a, struct evhttp_request *req, const char *rest)
{
    char *service = NULL, *id = NULL;
    bool drain = false;
    int parsed = parse_action_path(rest, &service, &id, &drain);
    if (parsed < 0)
        evhttp_send_error(req, HTTP_INTERNAL, NULL);
    else if (parsed == 0)
        reply_error(req, HTTP_NOTFOUND, "not found", NULL, NULL);
    else if (evhttp_request_get_command(req) != EVHTTP_REQ_POST)
        reply_method_not_allowed(req, "POST");
    else if (!action_allowed(a, req))
        reply_error(req, 403, "cross-origin request refused", NULL, NULL);
    else
        act_on(a, req, service, id, drain);
    free(service);
    free(id);
}

/* ---- small pages and dispatch ---- */

static void serve_ready(struct wg_admin *a, struct evhttp_request *req)
{
    if (a->ready)
        reply_text(req, HTTP_OK, "ready\n");
    else
        reply_text(req, HTTP_SERVUNAVAIL, "not ready\n");
}

static void serve_live(struct wg_admin *a, struct evhttp_request *req)
{
    reply_text(req, HTTP_OK, "live\n");
}

static void serve_dashboard(struct wg_admin *a, struct evhttp_request *req)
{
    struct evbuffer *b = evbuffer_new();
    if (!b || evbuffer_add_reference(b, wg_admin_dashboard_html, wg_admin_dashboard_html_len,
                                     NULL, NULL) < 0) {
        if (b)
            evbuffer_free(b);
        evhttp_send_error(req, HTTP_INTERNAL, NULL);
        return;
    }
    reply_buffer(req, HTTP_OK, CT_HTML, b);
    evbuffer_free(b);
}

static const struct {
    const char *path;
    void (*serve)(struct wg_admin *a, struct evhttp_request *req);
} pages[] = {
    { "/", serve_dashboard },    { "/status", serve_status }, { "/metrics", serve_metrics },
    { "/ready", serve_ready },   { "/live", serve_live },
};

static void on_request(struct evhttp_request *req, void *arg)
{
    struct wg_admin *a = arg;
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    enum evhttp_cmd_type method = evhttp_request_get_command(req);
    if (!path || !*path)
        path = "/";
    for (size_t k = 0; k < sizeof pages / sizeof pages[0]; k++) {
        if (strcmp(path, pages[k].path))
            continue;
        if (method != EVHTTP_REQ_GET && method != EVHTTP_REQ_HEAD)
            reply_method_not_allowed(req, "GET, HEAD");
        else
            pages[k].serve(a, req);
        return;
    }
    if (strncmp(path, "/services/", 10) == 0)
        serve_action(a, req, path + 10);
    else
        reply_error(req, HTTP_NOTFOUND, "not found", NULL, NULL);
}

/* ---- life cycle ---- */

static bool is_loopback(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET)
        return (ntohl(((const struct sockaddr_in *)ss)->sin_addr.s_addr) >> 24) == 127;
    if (ss->ss_family == AF_INET6)
        return IN6_IS_ADDR_LOOPBACK(&((const struct sockaddr_in6 *)ss)->sin6_addr);
    return false;
}

static int admin_bind(struct wg_admin *a, const struct wg_addr *listen, struct wg_errors *errs)
{
    struct evconnlistener *l = evconnlistener_new_bind(
        a->base, NULL, NULL, LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC,
        128, (const struct sockaddr *)&listen->ss, (int)listen->len);
    if (!l) {
        wg_errors_add(errs, "admin.listen %s: %s", listen->text,
                      errno ? strerror(errno) : "cannot listen");
        return -1;
    }
    if (!evhttp_bind_listener(a->http, l)) {
        evconnlistener_free(l);
        wg_errors_add(errs, "admin.listen %s: out of memory", listen->text);
        return -1;
    }
    return 0;
}

struct wg_admin *wg_admin_new(struct event_base *base, const struct wg_config *cfg,
                              struct wg_pool *pool, struct wg_errors *errs)
{
    struct wg_admin *a = calloc(1, sizeof *a);
    if (!a || !(a->http = evhttp_new(base))) {
        wg_errors_add(errs, "admin.listen %s: out of memory", cfg->admin.listen.text);
        free(a);
        return NULL;
    }
    a->base = base;
    a->pool = pool;
    a->started_ms = wg_now_ms();
    a->loopback = is_loopback(&cfg->admin.listen.ss);
    snprintf(a->listen_text, sizeof a->listen_text, "%s", cfg->admin.listen.text);
    evhttp_set_allowed_methods(a->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
                                            EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
                                            EVHTTP_REQ_OPTIONS | EVHTTP_REQ_TRACE |
                                            EVHTTP_REQ_CONNECT | EVHTTP_REQ_PATCH);
    evhttp_set_timeout(a->http, ADMIN_TIMEOUT_S);
    evhttp_set_max_headers_size(a->http, ADMIN_MAX_HEADERS);
    evhttp_set_max_body_size(a->http, ADMIN_MAX_BODY);
    evhttp_set_gencb(a->http, on_request, a);
    if (admin_bind(a, &cfg->admin.listen, errs) < 0) {
        wg_admin_free(a);
        return NULL;
    }
    wg_info("msg=\"admin API listening\" address=%s", a->listen_text);
    return a;
}

void wg_admin_set_registry(struct wg_admin *a, const struct wg_registry *registry)
{
    a->registry = registry;
}

void wg_admin_set_fleet(struct wg_admin *a, const struct wg_fleet *fleet,
                        const struct wg_health_shared *shared)
{
    a->fleet = fleet;
    a->shared = shared;
}

void wg_admin_set_listeners(struct wg_admin *a, struct wg_listener *const *const *listeners,
                            const size_t *n)
{
    a->listeners = listeners;
    a->n_listeners = n;
}

void wg_admin_set_ready(struct wg_admin *a, bool ready) { a->ready = ready; }

void wg_admin_free(struct wg_admin *a)
{
    if (!a)
        return;
    evhttp_free(a->http);           /* closes connections: stream_closed() runs */
    while (a->streams) {            /* any whose connection could not report */
        a->streams->evcon = NULL;
        stream_free(a->streams);
    }
    free(a);
}
