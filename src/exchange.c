/* exchange — see include/waygate/exchange.h
 *
 * Reading order: what a request holds and lets go; passive health; errors
 * we answer ourselves; the access log; the request head (pin, route,
 * policies, the upstream head); the upstream codec (HTTP/1.1): picking and
 * connecting with retries, forwarding the request body, the response head
 * and body; the end of a request; deadlines. */
#include "waygate/grpc.h"
#include "waygate/http_mirror.h"
#include "waygate/exchange.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <strings.h>
#include <sys/socket.h>

#include "waygate/cidr.h"
#include "waygate/grpc.h"
#include "waygate/health.h"
#include "waygate/http_route.h"
#include "waygate/listener.h"
#include "waygate/log.h"
#include "waygate/pool.h"
#include "waygate/stats.h"
#include "waygate/tls.h"
#include "waygate/upstream_h2.h"
#include "waygate/upstream_pool.h"
#include "waygate/worker.h"

#define HP_HEAD_EXTRA 1024              /* room for the fields we add to a head */
#define HP_MAX_INTERIM 16               /* interim (1xx) heads per request, then 502 */

_Static_assert(offsetof(struct wg_exchange, next) == 0, "spare lists link through the first member");

static struct wg_exchange *req_new(struct hp_local *loc)
{
    struct wg_exchange *r = hp_spare_get(&loc->reqs, sizeof *r);
    if (r)
        memset(r, 0, sizeof *r);
    return r;
}

static void req_free(struct hp_local *loc, struct wg_exchange **rp)
{
    if (*rp)
        hp_spare_put(&loc->reqs, *rp);
    *rp = NULL;
}

static void upstream_start(struct wg_downstream *d);
static void upstream_connect_done(struct wg_downstream *d);
/* forward_auth (policy.h; below "the response"): while a subrequest runs,
 * the exchange's upstream fields (svc, pick, inst, up/h2, uout, uin) serve
 * it; what they held for the request itself waits here. */
struct wg_auth_call {
    const struct wg_policy_forward_auth *fa;
    bool active;                        /* the subrequest is in flight */
    bool failed, done, keep;            /* its outcome as the response steps saw it */
    unsigned status;                    /* the auth service's */
    struct wg_pool_service *svc;        /* the request's own service (one reference) */
    struct wg_exchange_settings t;      /* and its settings */
    bool grpc, upgrade;
    uint64_t deadline;                  /* timeout, from the subrequest's start */
    uint64_t start_ns;                  /* its start, for its access-log line */
    struct wg_pstr sub;                 /* its head (in the policy arena), for that line */
    struct hp_head *head;               /* a copy of the request head's parse */
    char *msg;                          /* and of its bytes */
    size_t head_len;
    char *body;                         /* the refusal's body, NUL-terminated */
    size_t body_len, seen;              /* kept; read in all */
};

static bool auth_active(const struct wg_exchange *r) { return r->auth && r->auth->active; }
static bool auth_failed(struct wg_downstream *d);
static void auth_log(struct wg_downstream *d, const char *reason);
static void auth_free(struct wg_downstream *d);

static void upstream_event(struct wg_upconn *u, short what, void *owner)
{
    struct wg_downstream *d = owner;
    d->ops->wake(d);
}

/* The request's client address: the peer, or behind trusted proxies the
 * first untrusted hop of X-Forwarded-For (logs, hash_key, X-Real-IP). */
static const char *client_addr(const struct wg_downstream *d)
{
    return d->r && d->r->client ? d->r->client : d->client_ip;
}

/* "ip:port" or "[v6]:port", as sockaddr.h's wg_sockaddr_text writes it; an
 * address from X-Forwarded-For has no port to show. */
static const char *client_text(const struct wg_downstream *d, char *buf, size_t len)
{
    if (d->r && d->r->client && d->r->client != d->client_ip)
        snprintf(buf, len, "%s", d->r->client);
    else
        snprintf(buf, len, strchr(d->client_ip, ':') ? "[%s]:%u" : "%s:%u", d->client_ip,
                 (unsigned)d->client_port);
    return buf;
}

/* Drop what a request holds: upstream attempt, service, config. */
static void release_instance(struct wg_downstream *d)
{
    if (!d->r->inst)
        return;
    atomic_fetch_sub_explicit(&d->r->inst->active, 1, memory_order_relaxed);
    wg_instance_unref(d->r->inst);
    d->r->inst = NULL;
}

/* Close the attempt's connection or stream; what it put into uin stays. */
static void upstream_drop(struct wg_downstream *d)
{
    if (d->r->up)
        wg_upconn_close(d->r->up);
    d->r->up = NULL;
    if (d->r->h2_on) {
        if (d->r->h2)
            wg_h2_stream_reset(d->r->h2, NGHTTP2_CANCEL);
        d->r->h2 = NULL;
        hp_buf_free(d->loc, &d->r->h2_tail);
        d->r->h2_on = d->r->h2_ended = d->r->h2_closed = d->r->h2_paused = false;
    }
}

static void release_upstream(struct wg_downstream *d)
{
    upstream_drop(d);
    hp_buf_free(d->loc, &d->r->uin);
    hp_rxq_clear(d->loc, &d->r->raw);
    hp_head_free(d->loc, &d->r->rhead);
    d->r->u_eof = d->r->u_shut = false;
}

/* The request is over: let go of everything it holds, and of itself. */
static void release_request(struct wg_downstream *d)
{
    struct wg_exchange *r = d->r;
    if (!r)
        return;
    release_upstream(d);
    release_instance(d);
    auth_free(d);
    hp_buf_free(d->loc, &r->uout);
    hp_buf_free(d->loc, &r->note);
    hp_buf_free(d->loc, &r->trailers);
    wg_mirror_abandon(&r->mirror);      /* a copy whose body never became whole */
    if (r->pol) {
        wg_policy_req_release(r->pol);
        free(r->pol);
    }
    if (r->svc)
        wg_pool_service_unref(r->svc);
    if (r->cfg)
        wg_config_ref_put(r->cfg);
    req_free(d->loc, &d->r);
}

/* ---- passive health (health.h: outlier detection) -------------------- */

static void report_failure(struct wg_downstream *d, enum wg_health_failure why)
{
    if (why == WG_FAIL_CONNECT)
        wg_stats_add(d->w->stats, WG_C_CONNECT_ERRORS, 1);
    if (wg_health_report_failure(d->r->svc, d->r->inst, why))
        wg_info("msg=\"upstream ejected\" service=%s upstream=%s address=%s", d->r->svc->name,
                d->r->inst->id, d->r->inst->addr_text);
}

static void report_success(struct wg_downstream *d) { wg_health_report_success(d->r->inst); }

static void count_status(struct wg_downstream *d, unsigned status)
{
    static const enum wg_counter cls[] = { WG_C_HTTP_1XX, WG_C_HTTP_2XX, WG_C_HTTP_3XX,
                                           WG_C_HTTP_4XX, WG_C_HTTP_5XX };
    wg_stats_add(d->w->stats, WG_C_HTTP_REQUESTS, 1);
    if (status >= 100 && status < 600)
        wg_stats_add(d->w->stats, cls[status / 100 - 1], 1);
}

void wg_exchange_count_status(struct wg_downstream *d, unsigned status) { count_status(d, status); }

/* Answer `status` with a short text body; the request ends with it. `keep`:
 * the connection may carry another request (only when nothing of this
 * request is left unread). */
static void reply(struct wg_downstream *d, unsigned status, const char *body, const char *grpc_text,
                  bool keep);

void wg_exchange_reply(struct wg_downstream *d, unsigned status, const char *body, bool keep)
{
    reply(d, status, body, NULL, keep);
}

/* wg_exchange_reply; a gRPC call reads `grpc_text` as grpc-message (NULL:
 * the status's own, wg_grpc_error_message). */
static void reply(struct wg_downstream *d, unsigned status, const char *body, const char *grpc_text,
                  bool keep)
{
    char text[160];
    const char *trace = d->r->pol && d->r->pol->trace_id[0] ? d->r->pol->trace_id : NULL;
    if (!body || (trace && status >= 500)) {    /* a 5xx of ours names the trace */
        int n = body ? snprintf(text, sizeof text, "%.100s", body)
                     : snprintf(text, sizeof text, "%u %s\n", status, hp_reason(status));
        if (trace && status >= 500)
            snprintf(text + n, sizeof text - (size_t)n, "trace_id=%s\n", trace);
        body = text;
    }
    keep = keep && d->r->req_keep_alive && !atomic_load_explicit(&d->w->draining, memory_order_relaxed);
    bool ok;
    if (d->r->grpc && status >= 400) {   /* Trailers-Only (DESIGN §15) */
        char m[128];
        const char *why = grpc_text ? grpc_text : wg_grpc_error_message((int)status);
        wg_grpc_message_encode(why, strlen(why), m, sizeof m);
        int code = wg_grpc_status_from_http((int)status);
        ok = d->ops->grpc_reply(d, code, m, keep);
        d->r->grpc_code = (int16_t)(code + 1);
    } else {
        ok = d->ops->reply(d, status, body, keep);
    }
    if (!ok) {
        d->dead = true;
        return;
    }
    count_status(d, status);
    d->r->status = status;
    if (status == 408 || status == 504)
        wg_stats_add(d->w->stats, WG_C_HTTP_TIMEOUTS, 1);
    release_upstream(d);
    d->r->final_sent = true;
    d->r->close_after = !keep;
    d->rs = WG_RS_DONE;
    if (d->rq != WG_RQ_IDLE && d->rq != WG_RQ_HEAD)
        d->r->req_body_done = true;
    d->rq = WG_RQ_SENT;
}

static int web_cut(struct wg_downstream *d, enum wg_grpc_status code, const char *m);

/* A gRPC response whose head is out can no longer be an error of ours,
 * and a reset would leave the client a bare INTERNAL: the stream ends
 * with grpc-status `code` and grpc-message "waygate: `why`" after the
 * body bytes already taken (DESIGN §15), the upstream is let go and a
 * request still streaming is reset once they are out (h2_end). An HTTP/2
 * client gets them as trailers; a gRPC-Web client, over either protocol,
 * as the body's trailer frame (web_cut), whether waygate translated the
 * call for an HTTP/2 instance or passed it unchanged to an http1 one, when
 * the cut falls on a message boundary of the body given so far. Inside a
 * message (or a chunk of an http1 instance's body relayed as it came, or
 * a Content-Length body) no frame can be read as the body's end: closing
 * the connection or resetting the stream is the only honest end left.
 * False when the stream is not such a one (gRPC over HTTP/1.1, no head out
 * yet, a gRPC-Web body cut where no frame can go). */
static bool grpc_cut(struct wg_downstream *d, enum wg_grpc_status code, const char *why)
{
    struct wg_exchange *r = d->r;
    if (!r->grpc || (!r->grpc_web && !d->payload_only) || !r->final_sent || d->rs != WG_RS_BODY)
        return false;
    char m[128], text[96];
    snprintf(text, sizeof text, "waygate: %s", why);
    wg_grpc_message_encode(text, strlen(text), m, sizeof m);
    if (r->grpc_web) {
        int w = web_cut(d, code, m);
        if (w <= 0)
            return w == 0;              /* 0: it ended whole meanwhile */
    } else {
        struct hp_buf *t = r->trailers;
        if (!t && !(t = r->trailers = hp_buf_new(d->loc, HP_SMALL)))
            return false;
        int n = snprintf(t->data, t->cap, "grpc-status: %d\r\ngrpc-message: %s\r\n", (int)code, m);
        t->end = n > 0 && (uint32_t)n < t->cap ? (uint32_t)n : 0;
        if (r->uin)                     /* what was not decoded yet goes with the upstream */
            r->uin->scan = r->uin->end = r->uin->fwd;
    }
    upstream_drop(d);
    r->grpc_code = (int16_t)(code + 1);
    r->upstream_keep = false;
    r->close_after = true;              /* HTTP/2: the request side is reset after the end */
    d->rs = WG_RS_DONE;
    return true;
}

/* An upstream failure: answer `status` if the client has seen nothing of
 * the response yet, else end a gRPC stream with the status (grpc_cut) or
 * cut the connection (the response is truncated). */
static void fail_upstream(struct wg_downstream *d, unsigned status)
{
    if (auth_failed(d))                 /* a forward_auth subrequest got no answer */
        return;
    d->end_reason = "upstream_error";
    if (!d->r->final_sent)                 /* interim responses may precede a 502 */
        wg_exchange_reply(d, status, NULL, false);
    else if (!grpc_cut(d, wg_grpc_status_from_http((int)status), "upstream failed mid-stream"))
        d->dead = true;
}

/* ---- the access log (log.h) ------------------------------------------- */

/* Keep what the access log needs of a head that is about to be dropped. */
static bool note_request(struct wg_downstream *d, const struct wg_http_parser *p, const char *msg)
{
    const struct wg_http_message *m = &p->msg;
    struct hp_buf *b = hp_buf_new(d->loc, m->method_text.len + m->target.len + 320);
    if (!b)
        return false;
    memcpy(b->data, msg + m->method_text.off, m->method_text.len);
    memcpy(b->data + m->method_text.len, msg + m->target.off, m->target.len);
    d->r->note_method = (struct wg_http_span){ 0, m->method_text.len };
    d->r->note_target = (struct wg_http_span){ m->method_text.len, m->target.len };
    d->r->note_id = (struct wg_http_span){ 0, 0 };
    b->end = m->method_text.len + m->target.len;
    d->r->note = b;
    d->r->log_pending = true;
    return true;
}

static void note_request_id(struct wg_downstream *d, const char *id, size_t len)
{
    struct hp_buf *b = d->r->note;
    if (!b)
        return;
    len = len < 256 ? len : 256;
    memcpy(b->data + b->end, id, len);
    d->r->note_id = (struct wg_http_span){ b->end, (uint32_t)len };
    b->end += (uint32_t)len;
}

/* Once per request, when it is over, before its references go. */
static void log_request(struct wg_downstream *d, const char *reason)
{
    if (!d->r || !d->r->log_pending)
        return;
    d->r->log_pending = false;
    /* Ended while a forward_auth subrequest ran: its line first; the
     * request's own service is the one waiting in the call. */
    const struct wg_auth_call *a = auth_active(d->r) ? d->r->auth : NULL;
    struct wg_pool_service *svc = a ? a->svc : d->r->svc;
    if (a)
        auth_log(d, reason ? reason : "client_closed");
    const char *base = d->r->note ? d->r->note->data : "";
    char client[INET6_ADDRSTRLEN + 8];
    struct wg_access_entry e = {
        .client = wg_access_log_enabled() ? client_text(d, client, sizeof client) : NULL,
        .listener = d->r->lc ? d->r->lc->name : d->l->name,
        .service = svc ? svc->name : NULL,
        .upstream = d->r->inst && !a ? d->r->inst->id : NULL,
        .method = NULL,
        .path = base + d->r->note_target.off,
        .path_len = d->r->note_target.len,
        .request_id = d->r->note_id.len ? base + d->r->note_id.off : NULL,
        .request_id_len = d->r->note_id.len,
        .status = d->r->final_sent ? d->r->status : 0,
        .reason = reason,
        .bytes_in = d->r->req_bytes_in,
        .bytes_out = d->r->req_bytes_out,
        .duration_us = (wg_now_ns() - d->r->req_start_ns) / 1000,
        .connect_us = a ? -1 : d->r->connect_us,    /* (a's are the subrequest's) */
        .retries = !a && d->r->attempts > 1 ? d->r->attempts - 1 : 0,
        .stream_id = d->stream_id,
        .grpc_code = d->r->grpc ? d->r->grpc_code : 0,
        .trace_id = d->r->pol && d->r->pol->trace_id[0] ? d->r->pol->trace_id : NULL,
    };
    char method[32];
    size_t mlen = d->r->note_method.len < sizeof method - 1 ? d->r->note_method.len : sizeof method - 1;
    memcpy(method, base + d->r->note_method.off, mlen);
    method[mlen] = '\0';
    e.method = method;
    wg_access_log(d->w->access_log, &e);
    if (svc)
        wg_service_observe_duration(svc->state, e.duration_us);
    _Static_assert(sizeof d->r->svc->state->grpc_codes / sizeof(uint64_t) == WG_GRPC_CODES,
                   "pool.h: grpc_codes has a slot per gRPC code");
    if (e.grpc_code) {                  /* waygate_grpc_responses_total and the listener's */
        unsigned k = wg_grpc_code_slot(e.grpc_code - 1);
        atomic_fetch_add_explicit(&d->l->grpc[k], 1, memory_order_relaxed);
        if (svc)
            atomic_fetch_add_explicit(&svc->state->grpc_codes[k], 1, memory_order_relaxed);
    }
}

/* ---- the request head ------------------------------------------------- */

const struct wg_exchange_settings wg_exchange_defaults = {
    .header_ms = 10000, .body_ms = 60000, .idle_ms = 60000, .send_ms = 60000,
    .tunnel_ms = 3600000, .max_head = 32768,
};

/* The request's state, with the defaults until a config is pinned. */
static bool request_state(struct wg_downstream *d)
{
    if (d->r)
        return true;
    if (!(d->r = req_new(d->loc))) {
        d->dead = true;
        return false;
    }
    d->r->t = wg_exchange_defaults;
    return true;
}

/* Pin the config current now for the request about to start. */
/* DESIGN §10: is the peer (d->peer) in the listener's trusted_proxies? */
void wg_exchange_trust(struct wg_downstream *d)
{
    const struct wg_cidr_list *tl = wg_listener_trusted(d->r->cfg->cfg, d->r->lc);
    d->r->peer_trusted = tl->n && wg_cidr_match(tl, &d->peer);
}

bool wg_exchange_pin(struct wg_downstream *d)
{
    if (!request_state(d))
        return false;
    struct wg_snapshot *s = wg_pool_current(d->w->pool);
    const struct wg_listener_config *lc = s ? wg_listener_config_in(s->config->cfg, d->l) : NULL;
    if (!lc)
        return false;
    wg_config_ref_get(s->config);
    d->r->cfg = s->config;
    d->r->lc = lc;
    d->r->t.header_ms = lc->http.client_header_timeout_ms;
    d->r->t.body_ms = lc->http.client_body_timeout_ms;
    d->r->t.idle_ms = lc->http.client_idle_timeout_ms;
    d->r->t.send_ms = lc->http.send_timeout_ms;
    d->r->t.tunnel_ms = lc->http.tunnel_idle_timeout_ms;
    d->r->t.allow_underscores = lc->http.allow_underscores;
    d->r->t.max_head = lc->http.max_header_size;
    d->r->t.max_body = lc->http.max_body_size;
    wg_exchange_trust(d);
    return true;
}

/* A request starts with its first byte: its state (the first one's came
 * with the connection), pin, start the header deadline. */
bool wg_exchange_begin(struct wg_downstream *d, uint64_t now)
{
    if (!request_state(d))
        return false;
    if (!d->r->cfg)
        wg_exchange_pin(d);
    d->rq = WG_RQ_HEAD;
    d->r->header_deadline = now + d->r->t.header_ms;
    d->r->method = WG_HTTP_OTHER;
    d->r->http10 = false;
    d->r->req_keep_alive = true;
    d->r->req_upgrade = d->r->req_body_done = d->r->replayable = d->r->close_after = false;
    d->r->fresh_only = d->r->up_reused = d->r->resp_started = d->r->final_sent = d->r->dechunk = false;
    d->r->attempts = d->r->interim = 0;
    d->r->status = 0;
    d->r->client = NULL;
    d->end_reason = NULL;
    d->r->req_start_ns = wg_now_ns();
    d->r->req_bytes_in = d->in ? d->in->end - d->in->scan : 0;
    d->r->req_bytes_out = 0;
    d->r->connect_us = -1;
    d->rs = WG_RS_NONE;
    return true;
}

static bool is_name(const char *base, const struct wg_http_header *h, const char *name, size_t n)
{
    return h->name.len == n && wg_http_name_eq(base + h->name.off, n, name, n);
}

#define IS(h, lit) is_name(msg, (h), lit, sizeof lit - 1)


void wg_hop_tokens(const struct wg_http_parser *p, const char *msg, struct wg_hop_tokens *t)
{
    t->n = 0;
    t->more = false;
    t->p = p;
    for (unsigned i = 0; i < p->msg.nheaders && !t->more; i++) {
        if (p->headers[i].id != WG_HTTP_HDR_CONNECTION)
            continue;
        uint32_t cur = 0;
        struct wg_http_span item;
        while (wg_http_list_next(msg, p->headers[i].value, &cur, &item)) {
            if (t->n == WG_HOP_TOKENS) {
                t->more = true;
                break;
            }
            t->v[t->n++] = item;
        }
    }
}

bool wg_hop_listed(const struct wg_hop_tokens *t, const char *msg, const struct wg_http_header *h)
{
    for (unsigned k = 0; k < t->n; k++)
        if (wg_http_name_eq(msg + t->v[k].off, t->v[k].len, msg + h->name.off, h->name.len))
            return true;
    for (unsigned i = 0; t->more && i < t->p->msg.nheaders; i++) {
        if (t->p->headers[i].id != WG_HTTP_HDR_CONNECTION)
            continue;
        uint32_t cur = 0;
        struct wg_http_span item;
        while (wg_http_list_next(msg, t->p->headers[i].value, &cur, &item))
            if (wg_http_name_eq(msg + item.off, item.len, msg + h->name.off, h->name.len))
                return true;
    }
    return false;
}


static void put_request_line(struct wg_downstream *d, struct hp_out *o, const char *msg,
                             const struct wg_http_message *m)
{
    hp_put_span(o, msg, m->method_text);
    hp_put(o, " ", 1);
    if (m->target_form == WG_HTTP_TARGET_ASTERISK) {
        hp_put(o, "*", 1);
    } else if (d->r->pol && d->r->pol->new_path.n) {   /* a rewrite policy's path */
        hp_put(o, d->r->pol->new_path.p, d->r->pol->new_path.n);
        if (m->has_query) {
            hp_put(o, "?", 1);
            hp_put_span(o, msg, m->query);
        }
    } else {
        bool slash;
        size_t off = wg_route_strip(d->r->route, msg + m->path.off, m->path.len, &slash);
        if (slash)
            hp_put(o, "/", 1);
        hp_put(o, msg + m->path.off + off, m->path.len - off);
        if (m->has_query) {
            hp_put(o, "?", 1);
            hp_put_span(o, msg, m->query);
        }
    }
    hp_puts(o, " HTTP/1.1\r\n");
}

static void put_request_id(struct wg_downstream *d, struct hp_out *o)
{
    static const char hex[] = "0123456789abcdef";
    char id[32];
    uint64_t a = wg_rng_next(&d->w->rng), b = wg_rng_next(&d->w->rng);
    for (int k = 0; k < 16; k++) {
        id[k] = hex[(a >> (4 * k)) & 15];
        id[16 + k] = hex[(b >> (4 * k)) & 15];
    }
    hp_puts(o, "X-Request-Id: ");
    hp_put(o, id, sizeof id);
    note_request_id(d, id, sizeof id);
    hp_puts(o, "\r\n");
}

/* Fields waygate sets itself (DESIGN §10). */
enum hp_own { OWN_NONE, OWN_XFF, OWN_PROTO, OWN_HOST, OWN_REAL_IP, OWN_FORWARDED, OWN_CERT };

static enum hp_own own_field(const char *msg, const struct wg_http_header *h)
{
    if (h->id != WG_HTTP_HDR_OTHER)
        return OWN_NONE;
    switch (h->name.len) {
    case 9:
        return IS(h, "x-real-ip") ? OWN_REAL_IP : IS(h, "forwarded") ? OWN_FORWARDED : OWN_NONE;
    case 15: return IS(h, "x-forwarded-for") ? OWN_XFF : OWN_NONE;
    case 16: return IS(h, "x-forwarded-host") ? OWN_HOST : OWN_NONE;
    case 17: if (IS(h, "x-forwarded-proto")) return OWN_PROTO; break;
    default: break;
    }
    return h->name.len > 14 && wg_http_name_eq(msg + h->name.off, 14, "x-client-cert-", 14)
           ? OWN_CERT : OWN_NONE;
}

/* Behind a trusted peer (DESIGN §10, nginx real_ip_recursive): the client
 * is the first hop of X-Forwarded-For, from the right, that is not in
 * trusted_proxies; all trusted: the leftmost. A hop that is not an address
 * ends the walk at the trusted hop to its right. */
static void resolve_client(struct wg_downstream *d, const struct wg_http_parser *p, const char *msg)
{
    const struct wg_cidr_list *tl = wg_listener_trusted(d->r->cfg->cfg, d->r->lc);
    struct wg_ip ip, found;
    bool have = false;
    for (unsigned i = p->msg.nheaders; i-- > 0;) {
        const struct wg_http_header *h = &p->headers[i];
        if (own_field(msg, h) != OWN_XFF)
            continue;
        const char *v = msg + h->value.off;
        size_t e = h->value.len;
        for (;;) {
            size_t st = e;
            while (st > 0 && v[st - 1] != ',')
                st--;
            size_t a = st, b = e;
            while (a < b && (v[a] == ' ' || v[a] == '\t'))
                a++;
            while (b > a && (v[b - 1] == ' ' || v[b - 1] == '\t'))
                b--;
            if (a < b) {
                if (!wg_ip_parse(v + a, b - a, &ip))
                    goto done;
                found = ip;
                have = true;
                if (!wg_cidr_match(tl, &ip))
                    goto done;
            }
            if (st == 0)
                break;
            e = st - 1;
        }
    }
done:
    if (have && inet_ntop(found.family, found.a, d->r->real_ip, sizeof d->r->real_ip))
        d->r->client = d->r->real_ip;
}

/* A field name with '_' (DESIGN §10): dropped unless http.allow_underscores,
 * and never forwarded when it is an '_' spelling of a field waygate sets or
 * strips itself (CGI-style stacks read X_Forwarded_For as X-Forwarded-For). */
static bool underscored(const char *msg, const struct wg_http_header *h, bool allow)
{
    const char *n = msg + h->name.off;
    if (!memchr(n, '_', h->name.len))
        return false;
    if (!allow)
        return true;
    char d[24];                         /* the '-' spelling of its first bytes */
    size_t len = h->name.len < sizeof d ? h->name.len : sizeof d;
    for (size_t k = 0; k < len; k++)
        d[k] = n[k] == '_' ? '-' : n[k];
    static const struct { const char *s; size_t n; bool prefix; } own[] = {
        { "x-forwarded-", 12, true }, { "x-client-cert-", 14, true }, { "x-real-ip", 9, false },
        { "forwarded", 9, false }, { "x-request-id", 12, false },
    };
    for (size_t k = 0; k < sizeof own / sizeof own[0]; k++)
        if ((own[k].prefix ? h->name.len > own[k].n : h->name.len == own[k].n) &&
            wg_http_name_eq(d, own[k].n, own[k].s, own[k].n))
            return true;
    return false;
}


/* X-Forwarded-For: from a trusted peer the values received, in order, then
 * the peer; from anyone else only the peer (DESIGN §10: replaced). */
static void put_xff(struct wg_downstream *d, struct hp_out *o, const struct wg_http_parser *p,
                    const char *msg, unsigned n_xff)
{
    hp_puts(o, "X-Forwarded-For: ");
    for (unsigned i = 0; n_xff && i < p->msg.nheaders; i++) {
        const struct wg_http_header *h = &p->headers[i];
        if (h->id == WG_HTTP_HDR_OTHER && IS(h, "x-forwarded-for") && h->value.len) {
            hp_put_span(o, msg, h->value);
            hp_put(o, ", ", 2);
        }
    }
    hp_puts(o, d->client_ip);
    hp_puts(o, "\r\nX-Real-IP: ");
    hp_puts(o, client_addr(d));
    hp_put(o, "\r\n", 2);
}

/* Fields a policy added (policy.h): names are tokens, values free of CR/LF. */
static void put_added(struct hp_out *o, const struct wg_policy_head *h)
{
    for (unsigned i = 0; i < h->n_add; i++) {
        hp_put(o, h->add[i].name.p, h->add[i].name.n);
        hp_put(o, ": ", 2);
        hp_put(o, h->add[i].value.p, h->add[i].value.n);
        hp_put(o, "\r\n", 2);
    }
}

/* The head sent upstream, built in one pass over the parsed fields. */
static bool build_upstream_head(struct wg_downstream *d, const struct wg_http_parser *p,
                                const char *msg, size_t head_len)
{
    const struct wg_http_message *m = &p->msg;
    bool absolute = m->target_form == WG_HTTP_TARGET_ABSOLUTE, has_id = false;
    bool trusted = d->r->peer_trusted, has_proto = false, has_fhost = false;
    unsigned n_xff = 0;
    struct wg_hop_tokens tok;
    struct wg_policy_req *pol = d->r->pol;
    struct hp_out o = hp_out_open(d->loc, &d->r->uout,
                                  head_len + HP_HEAD_EXTRA +
                                      (pol ? wg_policy_head_added_bytes(&pol->req) + pol->new_path.n : 0));

    wg_hop_tokens(p, msg, &tok);
    put_request_line(d, &o, msg, m);
    if (!m->has_host || absolute) {     /* the authority becomes Host */
        hp_puts(&o, "Host: ");
        if (m->has_host)
            hp_put_span(&o, msg, m->host);
        else
            hp_puts(&o, d->l->addr.text);
        hp_put(&o, "\r\n", 2);
    }
    for (unsigned i = 0; i < m->nheaders; i++) {
        const struct wg_http_header *h = &p->headers[i];
        if (wg_hop_by_hop(&tok, msg, h, m->upgrade) || (absolute && h->id == WG_HTTP_HDR_HOST) ||
            (m->underscore && h->id == WG_HTTP_HDR_OTHER &&
             underscored(msg, h, d->r->t.allow_underscores)) ||
            (pol && wg_policy_head_dropped(&pol->req, i)))
            continue;
        switch (own_field(msg, h)) {
        case OWN_NONE:
            break;
        case OWN_XFF:
            n_xff += trusted;
            continue;
        case OWN_PROTO:                 /* a trusted proxy knows the scheme and host */
        case OWN_HOST:
        case OWN_FORWARDED:
            if (!trusted)
                continue;
            has_proto |= own_field(msg, h) == OWN_PROTO;
            has_fhost |= own_field(msg, h) == OWN_HOST;
            break;
        default:                        /* X-Real-IP, X-Client-Cert-*: always ours */
            continue;
        }
        if (h->id == WG_HTTP_HDR_OTHER && IS(h, "x-request-id") && !has_id) {
            has_id = true;
            note_request_id(d, msg + h->value.off, h->value.len);
        }
        wg_put_field(&o, msg, h);
    }
    put_xff(d, &o, p, msg, n_xff);
    if (!has_proto)
        hp_puts(&o, d->tls ? "X-Forwarded-Proto: https\r\n" : "X-Forwarded-Proto: http\r\n");
    if (d->cert_subject) {              /* inbound X-Client-Cert-* were dropped above */
        hp_puts(&o, "X-Client-Cert-Subject: ");
        hp_puts(&o, d->cert_subject);
        hp_put(&o, "\r\n", 2);
    }
    if (m->has_host && !has_fhost) {
        hp_puts(&o, "X-Forwarded-Host: ");
        hp_put_span(&o, msg, m->host);
        hp_put(&o, "\r\n", 2);
    }
    if (pol)
        put_added(&o, &pol->req);
    if (!has_id && pol && pol->request_id.n) {      /* generated before the policies ran */
        hp_puts(&o, "X-Request-Id: ");
        hp_put(&o, pol->request_id.p, pol->request_id.n);
        note_request_id(d, pol->request_id.p, pol->request_id.n);
        hp_put(&o, "\r\n", 2);
    } else if (!has_id) {
        put_request_id(d, &o);
    }
    hp_puts(&o, m->upgrade ? "Connection: upgrade\r\n\r\n" : "\r\n");
    hp_out_close(d->r->uout, &o);
    return !o.full;
}

/* The hash policy's key (hash_key: client_ip, header:NAME or cookie:NAME). */
static bool cookie_value(const struct wg_http_parser *p, const char *msg, const char *name,
                         struct wg_http_span *out)
{
    size_t n = strlen(name);
    for (int k = wg_http_find_header(p, msg, "cookie", 6, 0); k >= 0;
         k = wg_http_find_header(p, msg, "cookie", 6, (unsigned)k + 1)) {
        struct wg_http_span v = p->headers[k].value;
        uint32_t i = 0;
        while (i < v.len) {
            while (i < v.len && (msg[v.off + i] == ' ' || msg[v.off + i] == ';'))
                i++;
            uint32_t s = i;
            while (i < v.len && msg[v.off + i] != ';')
                i++;
            if (i - s > n && msg[v.off + s + n] == '=' && memcmp(msg + v.off + s, name, n) == 0) {
                *out = (struct wg_http_span){ v.off + s + (uint32_t)n + 1, i - s - (uint32_t)n - 1 };
                return true;
            }
        }
    }
    return false;
}

static void pick_key(struct wg_downstream *d, const struct wg_http_parser *p, const char *msg)
{
    const struct wg_service_config *sc = d->r->svc->cfg;
    struct wg_http_span v = { 0, 0 };
    bool found = false;

    if (sc->balance != WG_BALANCE_HASH)
        return;
    if (sc->hash_key == WG_HASH_CLIENT_IP) {
        d->r->pick.has_hash = true;
        const char *ip = client_addr(d);
        d->r->pick.hash = wg_balance_hash_bytes(ip, strlen(ip));
        return;
    }
    if (sc->hash_key == WG_HASH_HEADER) {
        int k = wg_http_find_header(p, msg, sc->hash_name, strlen(sc->hash_name), 0);
        if ((found = k >= 0))
            v = p->headers[k].value;
    } else {
        found = cookie_value(p, msg, sc->hash_name, &v);
    }
    if (found) {
        d->r->pick.has_hash = true;
        d->r->pick.hash = wg_balance_hash_bytes(msg + v.off, v.len);
    }
}

/* A gRPC call (DESIGN §15): its grpc-timeout (capped by grpc.max_timeout)
 * caps the response deadline; a method in grpc.retry_methods may go again
 * after its request reached an upstream, others only when the upstream
 * did not process it. */
static void grpc_settings(struct wg_downstream *d, const struct wg_http_parser *p, const char *msg,
                          const struct wg_service_config *sc)
{
    int i = wg_http_find_header(p, msg, "grpc-timeout", 12, 0);
    uint64_t ms = 0;
    if (i < 0 || !wg_grpc_timeout_parse(msg + p->headers[i].value.off, p->headers[i].value.len, &ms))
        ms = 0;
    d->r->t.response_ms = wg_grpc_deadline_ms(d->r->t.response_ms, ms, sc->grpc.max_timeout_ms);
    d->r->t.retry_non_idempotent =
        wg_grpc_method_listed(sc->grpc.retry_methods, sc->grpc.n_retry_methods,
                              msg + p->msg.path.off, p->msg.path.len);
}

/* A traffic split (route backends:): the service for this request, drawn
 * by weight at random, or by the hash of the sticky key (a request without
 * the key is drawn at random). Each backend service has its own pools. */
static const char *split_pick(struct wg_downstream *d, const struct wg_http_parser *p,
                              const char *msg)
{
    const struct wg_route *r = d->r->route;
    uint64_t point;
    struct wg_http_span v;
    int k;

    if (r->sticky && r->sticky_key == WG_HASH_CLIENT_IP)
        point = wg_balance_hash_bytes(d->client_ip, strlen(d->client_ip));
    else if (r->sticky && r->sticky_key == WG_HASH_HEADER &&
             (k = wg_http_find_header(p, msg, r->sticky_name, strlen(r->sticky_name), 0)) >= 0)
        point = wg_balance_hash_bytes(msg + p->headers[k].value.off, p->headers[k].value.len);
    else if (r->sticky && r->sticky_key == WG_HASH_COOKIE && cookie_value(p, msg, r->sticky_name, &v))
        point = wg_balance_hash_bytes(msg + v.off, v.len);
    else
        point = wg_rng_next(&d->w->rng);
    point %= r->backends_weight;
    for (size_t i = 0; i < r->n_backends; i++) {
        if (point < r->backends[i].weight)
            return r->backends[i].service;
        point -= r->backends[i].weight;
    }
    return r->service;
}

/* Route the request; 0, or the status to answer. */
static unsigned request_route(struct wg_downstream *d, const struct wg_http_parser *p, const char *msg)
{
    const struct wg_http_message *m = &p->msg;
    if (!d->r->lc)
        return 503;
    int r = wg_route_match(d->r->lc->routes, d->r->lc->n_routes, p, msg);
    if (r < 0)
        return 404;
    d->r->route = &d->r->lc->routes[r];
    if (d->r->t.max_body && m->has_content_length && m->content_length > d->r->t.max_body)
        return 413;
    struct wg_snapshot *s = wg_pool_current(d->w->pool);
    const char *name = d->r->route->n_backends ? split_pick(d, p, msg) : d->r->route->service;
    const struct wg_pool_service *svc = s ? wg_snapshot_service(s, name) : NULL;
    if (!svc)
        return 503;
    wg_pool_service_ref((struct wg_pool_service *)svc);
    d->r->svc = (struct wg_pool_service *)svc;
    d->r->t.connect_ms = svc->cfg->connect_timeout_ms;
    d->r->t.response_ms = d->r->route->response_timeout_ms >= 0 ? (uint64_t)d->r->route->response_timeout_ms
                                                          : svc->cfg->response_timeout_ms;
    d->r->t.retries = d->r->route->retries >= 0 ? (unsigned)d->r->route->retries : svc->cfg->retries;
    d->r->t.retry_non_idempotent = d->r->route->retry_non_idempotent >= 0
                                   ? d->r->route->retry_non_idempotent > 0
                                   : svc->cfg->retry_non_idempotent;
    if (d->r->grpc)
        grpc_settings(d, p, msg, svc->cfg);
    wg_pick_init(&d->r->pick, svc, &d->w->rng, NULL);
    pick_key(d, p, msg);
    return 0;
}

/* 308 to the https URL of the request (tls.redirect_http: https). */
static void reply_redirect(struct wg_downstream *d, const struct wg_http_parser *p, const char *msg,
                           bool keep)
{
    const struct wg_http_message *m = &p->msg;
    char host[WG_ROUTE_HOST_MAX + 1];
    size_t hlen = m->has_host ? wg_route_host_normalize(msg + m->host.off, m->host.len, host) : 0;
    if (hlen == 0 || m->target_form == WG_HTTP_TARGET_ASTERISK) {
        wg_exchange_reply(d, 400, NULL, false);
        return;
    }
    struct hp_buf *loc = hp_buf_new(d->loc, (uint32_t)(16 + hlen + m->target.len));
    if (!loc) {
        d->dead = true;
        return;
    }
    struct hp_out o = { loc->data, 0, loc->cap, false };
    hp_puts(&o, "https://");
    hp_put(&o, host, hlen);
    if (m->path.len == 0)
        hp_put(&o, "/", 1);
    hp_put_span(&o, msg, m->path);
    if (m->has_query) {
        hp_put(&o, "?", 1);
        hp_put_span(&o, msg, m->query);
    }
    keep = keep && d->r->req_keep_alive;
    bool ok = d->ops->redirect(d, loc->data, o.n, keep);
    hp_buf_free(d->loc, &loc);
    if (!ok) {
        d->dead = true;
        return;
    }
    count_status(d, 308);
    d->r->status = 308;
    d->r->final_sent = d->r->req_body_done = true;
    d->r->close_after = !keep;
    d->rs = WG_RS_DONE;
    d->rq = WG_RQ_SENT;
}

/* Policy hook point (DESIGN §16): the request head is parsed and routed,
 * nothing was picked or sent yet. The policies of the listener, the
 * service and the route run here, in that order (a refusal answers 401,
 * 403 or 429 and ends the exchange). No policy exists yet: DESIGN §16's
 * issue fills this in; it must stay free of I/O (workers never block). */
static unsigned policy_request_head(struct wg_downstream *d, const struct wg_http_parser *p,
                                    const char *msg)
{
    const struct wg_policy_chain *chain = d->r->route->policies;
    struct wg_policy_req *pol;
    struct wg_pstr ct;
    int k;

    if (!chain)
        return 0;
    if (!(pol = calloc(1, sizeof *pol)))
        return 503;
    d->r->pol = pol;
    wg_policy_req_http1(pol, p, msg);
    if (!wg_policy_head_http1(pol, &pol->req, p, msg))
        return 503;
    pol->client_ip = d->client_ip;
    pol->tls = d->tls;
    pol->worker = d->w->index;
    pol->stats = d->w->stats;
    pol->now_ms = wg_now_ms();
    pol->unix_s = (int64_t)time(NULL);
    pol->is_grpc = wg_policy_head_get(&pol->req, "content-type", 12, &ct) &&
                   wg_grpc_is_grpc(ct.p, ct.n);
    if ((k = wg_http_find_header(p, msg, "x-request-id", 12, 0)) >= 0) {
        pol->request_id = (struct wg_pstr){ msg + p->headers[k].value.off, p->headers[k].value.len };
    } else {                            /* generated now: $request_id and upstream agree */
        static const char hex[] = "0123456789abcdef";
        char *id = wg_policy_alloc(pol, 32);
        uint64_t a = wg_rng_next(&d->w->rng), b = wg_rng_next(&d->w->rng);
        if (!id)
            return 503;
        for (int i = 0; i < 16; i++) {
            id[i] = hex[(a >> (4 * i)) & 15];
            id[16 + i] = hex[(b >> (4 * i)) & 15];
        }
        pol->request_id = (struct wg_pstr){ id, 32 };
    }
    switch (wg_policy_request(chain, pol)) {
    case WG_POLICY_CONTINUE:
    case WG_POLICY_PENDING:             /* pol->auth: a subrequest first */
        return 0;
    default:
        return pol->answer_status;
    }
}

static bool has_body(const struct wg_http_message *m)
{
    return m->framing == WG_HTTP_BODY_CHUNKED ||
           (m->framing == WG_HTTP_BODY_LENGTH && m->content_length > 0);
}

/* After the request hooks (at once, or once a forward_auth subrequest let
 * the request through): the upstream head, a mirror copy, then the
 * upstream, or the answer `status`. */
static void request_proceed(struct wg_downstream *d, const struct wg_http_parser *p,
                            const char *msg, size_t head_len, unsigned status)
{
    const struct wg_http_message *m = &p->msg;
    bool body = has_body(m);

    if (status == 0 && !build_upstream_head(d, p, msg, head_len))
        status = 431;
    if (status == 0 && d->r->pol && d->r->pol->mirror && !m->upgrade &&
        d->r->uout)                     /* a copy, fed by request_body_decode (http_mirror.h) */
        wg_mirror_start(d->w, d->r->pol->mirror, d->r->uout->data, d->r->uout->end,
                        !body ? 0 : m->framing == WG_HTTP_BODY_CHUNKED ? WG_MIRROR_CHUNKED
                                                                       : m->content_length,
                        d->tls, &d->r->mirror);
    if (d->r->pol)
        wg_policy_req_detach(d->r->pol);
    if (status) {
        wg_exchange_reply(d, status, status == 503 ? "no healthy upstream\n" :
                          d->r->pol && d->r->pol->answer_status == status ? d->r->pol->answer_body.p
                                                                          : NULL, !body);
        return;
    }
    wg_http_body_init(&d->r->rq_body, m->framing, m->content_length, 0);
    d->r->req_body_done = !body;
    d->r->replayable = true;
    d->rq = WG_RQ_BODY;
    upstream_start(d);
}

static void auth_begin(struct wg_downstream *d, const struct wg_http_parser *p, const char *msg,
                       size_t head_len);

/* The head is complete: check, route, rewrite, then start the upstream. */
void wg_exchange_head(struct wg_downstream *d, const struct wg_http_parser *p, size_t head_len)
{
    struct hp_buf *b = d->in;
    const struct wg_http_message *m = &p->msg;
    const char *msg = b->data + b->start;
    unsigned status = 0;

    d->r->method = m->method;
    d->r->http10 = m->version == 10;
    d->r->req_keep_alive = m->keep_alive;
    d->r->req_upgrade = m->upgrade;
    d->r->dechunk = d->payload_only;
    int ct = wg_http_find_header(p, msg, "content-type", 12, 0);
    d->r->grpc = ct >= 0 && wg_grpc_is_grpc(msg + p->headers[ct].value.off, p->headers[ct].value.len);
    char web[64];
    d->r->grpc_web_text = false;
    d->r->grpc_web = ct >= 0 && !d->r->grpc &&
                     wg_grpc_web_to_grpc(msg + p->headers[ct].value.off, p->headers[ct].value.len,
                                         web, sizeof web, &d->r->grpc_web_text) > 0;
    d->r->grpc |= d->r->grpc_web;
    d->r->web_dec = (struct wg_b64_dec){ 0 };
    if (!note_request(d, p, msg)) {
        d->dead = true;
        return;
    }
    if (d->r->peer_trusted)
        resolve_client(d, p, msg);
    if (d->r->lc && d->r->lc->tls.redirect_http && strcmp(d->r->lc->tls.redirect_http, "https") == 0)
        reply_redirect(d, p, msg, !has_body(m));
    else if ((status = request_route(d, p, msg)) == 0)
        status = policy_request_head(d, p, msg);
    b->start += (uint32_t)head_len;
    b->sent = b->fwd = b->scan = b->start;
    d->client_progress = wg_now_ms();
    if (d->rq != WG_RQ_HEAD || d->dead) {   /* redirected (or out of memory) */
        if (d->r->pol)
            wg_policy_req_detach(d->r->pol);
        return;
    }
    if (status == 0 && d->r->pol && d->r->pol->auth)
        auth_begin(d, p, msg, head_len);   /* its verdict calls request_proceed */
    else
        request_proceed(d, p, msg, head_len, status);
}

/* The parser refused the head (its status), or it timed out (408): keep
 * what was parsed for the log, answer, and close after. */
void wg_exchange_bad_head(struct wg_downstream *d, const struct wg_http_parser *p, unsigned status)
{
    if (p) {
        d->r->method = p->msg.method;
        d->r->http10 = p->msg.version == 10;
        if (d->in)
            note_request(d, p, d->in->data + d->in->start);
    }
    wg_exchange_reply(d, status, NULL, false);
}

/* ---- the upstream codec: HTTP/1.1 -----------------------------------------
 * Everything below up to "the end of a request" speaks HTTP/1.1 to the
 * instance over a struct wg_upconn from the keep-alive pool. An HTTP/2
 * upstream codec (DESIGN §15, the gRPC issue) takes this place behind the
 * same four entry points: upstream_start (pick, connect or reuse),
 * request_body_step (send), response_head_step / response_body_step
 * (receive into d->r->uin, de-chunked when d->r->dechunk), and
 * request_end's pooling. */

/* Read from the upstream into d->r->uin; bytes read (0: none now, see u_eof). */
static ssize_t h2_pull(struct wg_downstream *d);

static ssize_t upstream_read(struct wg_downstream *d)
{
    struct wg_upconn *u = d->r->up;
    if (!u)
        return h2_pull(d);
    ssize_t n = hp_side_read_max(d->loc, &d->r->uin, u->fd, u->ssl, &u->readable,
                                 &u->read_wants_write, u->hup, &d->r->u_eof, d->upstream_read_max);
    if (n < 0) {
        d->dead = true;
        return 0;
    }
    if (n > 0)
        d->r->upstream_progress = wg_now_ms();
    return n;
}

/* ---- picking and connecting (DESIGN §6) ------------------------------- */

/* Send the request again from its first byte (a retry). */
static void rewind_request(struct wg_downstream *d)
{
    if (d->r->uout)
        d->r->uout->sent = 0;
    if (d->in)
        d->in->sent = d->in->start;
    if (d->rq == WG_RQ_SENT)
        d->rq = WG_RQ_BODY;                /* it goes out again from its first byte */
    d->rs = WG_RS_NONE;
}

/* DESIGN §6: may the request go out again? Its bytes must still be kept,
 * and once some of them reached an upstream (which may have acted on
 * them), only an idempotent method goes again, unless the route or service
 * sets retry_non_idempotent. */
static bool may_replay(const struct wg_downstream *d)
{
    return d->r->replayable && (!d->r->sent_any || wg_http_method_idempotent(d->r->method) ||
                                d->r->t.retry_non_idempotent);
}

/* This attempt failed: the next untried instance, or `status`. */
static void retry_or_fail(struct wg_downstream *d, unsigned status)
{
    release_upstream(d);
    release_instance(d);
    if (d->r->attempts > d->r->t.retries || !may_replay(d)) {
        wg_info("msg=\"upstream attempts failed\" listener=%s service=%s client=%s attempts=%u "
                "status=%u", d->r->lc ? d->r->lc->name : d->l->name, d->r->svc->name, d->client_ip,
                d->r->attempts, status);
        fail_upstream(d, status);
        return;
    }
    rewind_request(d);
    upstream_start(d);                  /* counts a retry if it finds an instance */
}

static void connect_failed(struct wg_downstream *d, int err)
{
    report_failure(d, WG_FAIL_CONNECT);
    wg_debug("msg=\"upstream connect failed\" service=%s upstream=%s address=%s error=\"%s\"",
             d->r->svc->name, d->r->inst->id, d->r->inst->addr_text, err ? strerror(err) : "timeout");
    retry_or_fail(d, 502);
}

/* The connection is usable: the request may flow, a response may come. */
static void upstream_ready(struct wg_downstream *d)
{
    d->rs = WG_RS_HEAD;                    /* its parser comes with the first bytes */
    d->r->upstream_progress = wg_now_ms();
    d->r->connect_us = d->r->up_reused ? 0 : (int64_t)((wg_now_ns() - d->r->connect_start_ns) / 1000);
    if (d->r->req_body_done && d->rq == WG_RQ_BODY)
        d->r->response_deadline = d->r->upstream_progress + d->r->t.response_ms;
}

/* A connection to d->r->inst for this attempt: pooled, unless a stale pooled
 * one just failed, else new. */
static void h2_attach(struct wg_downstream *d);

static void upstream_attach(struct wg_downstream *d)
{
    if (d->r->inst->protocol != WG_UPSTREAM_HTTP1) {
        h2_attach(d);
        return;
    }
    /* A request that a stale pooled connection would only cost a free
     * retry (upstream_lost: no body left to stream, replayable) takes one
     * without the recv(MSG_PEEK): one system call of ~3 per request. */
    bool free_retry = d->r->req_body_done && d->r->replayable &&
                      (wg_http_method_idempotent(d->r->method) || d->r->t.retry_non_idempotent);
    struct wg_upconn *u = d->r->fresh_only ? NULL
                        : wg_upstream_pool_get(d->loc->pool, d->r->inst, d, upstream_event,
                                               !free_retry);
    d->r->up_reused = u != NULL;
    d->r->fresh_only = false;
    d->r->sent_any = false;
    d->r->up_blocked_since = 0;
    if (u) {
        wg_stats_add(d->w->stats, WG_C_HTTP_UPSTREAM_REUSED, 1);
    } else {
        int rc = wg_upconn_open(d->loc->pool, d->r->inst, d, upstream_event, &u);
        if (rc < 0) {
            connect_failed(d, -rc);
            return;
        }
        u->writable = !u->connecting;
    }
    d->r->up = u;
    d->r->connect_start_ns = wg_now_ns();
    d->r->connect_deadline = wg_now_ms() + d->r->t.connect_ms;
    if (u->connecting)
        return;
    if (d->r->up_reused)
        upstream_ready(d);
    else
        upstream_connect_done(d);       /* connected at once: TLS may follow */
}

static void upstream_start(struct wg_downstream *d)
{
    if (d->r->fresh_only && d->r->inst) {     /* free retry: same instance, new connection */
        upstream_attach(d);
        return;
    }
    wg_balance_cache_bind(&d->w->balance, &d->r->pick);
    const struct wg_member *m = wg_pick_next(&d->r->pick);
    if (!m) {
        wg_stats_add(d->w->stats, WG_C_NO_UPSTREAM, 1);
        if (auth_failed(d))
            return;
        if (d->r->attempts)
            fail_upstream(d, 502);
        else if (!d->r->final_sent)
            wg_exchange_reply(d, 503, "no healthy upstream\n", false);
        else
            d->dead = true;
        return;
    }
    if (d->r->attempts)
        wg_stats_add(d->w->stats, WG_C_RETRIES, 1);
    struct wg_instance *i = m->inst;
    wg_instance_ref(i);
    atomic_fetch_add_explicit(&i->active, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&i->requests_total, 1, memory_order_relaxed);
    d->r->inst = i;
    d->r->inst_gen = wg_health_conn_generation(i);
    d->r->attempts++;
    upstream_attach(d);
}

/* The service's TLS handshake, still counted as connecting (connect_timeout
 * bounds both); a failure is a failed attempt, retried elsewhere. */
static void upstream_tls_step(struct wg_downstream *d)
{
    struct wg_upconn *u = d->r->up;
    enum wg_tls_io r = wg_tls_handshake(u->ssl);
    if (r == WG_TLS_OK) {
        u->tls_pending = u->connecting = false;
        upstream_ready(d);
    } else if (r == WG_TLS_WANT_READ) {
        u->readable = false;
    } else if (r == WG_TLS_WANT_WRITE) {
        u->writable = false;
    } else {
        wg_tls_upstream_failed(d->w->stats, d->r->svc->name, d->r->inst->id);
        connect_failed(d, EPROTO);
    }
}

/* EV_WRITE on a connecting socket: connected, or this attempt failed; then
 * TLS when the service wants it. */
static void upstream_connect_done(struct wg_downstream *d)
{
    struct wg_upconn *u = d->r->up;
    if (u->tls_pending) {
        upstream_tls_step(d);
        return;
    }
    int err = wg_upconn_connect_result(u);
    if (err) {
        connect_failed(d, err);
        return;
    }
    SSL_CTX *ctx = wg_tls_set_service(d->r->svc->config->ext, d->r->svc->config->cfg, d->r->svc->cfg);
    if (!ctx) {
        upstream_ready(d);
        return;
    }
    const struct wg_service_config *sc = d->r->svc->cfg;
    struct sockaddr_storage ss;
    wg_instance_sockaddr(d->r->inst, &ss);
    u->ssl = wg_tls_upstream_ssl(ctx, u->fd, sc->tls.sni, sc->tls.verify,
                                 (const struct sockaddr *)&ss);
    if (!u->ssl) {
        connect_failed(d, ENOMEM);
        return;
    }
    u->tls_pending = u->connecting = true;
    upstream_tls_step(d);
}

/* The upstream broke (EOF, reset, write error) before its response began:
 * a stale pooled connection is retried for free, anything else counts as
 * an attempt (DESIGN §6). */
static void upstream_lost(struct wg_downstream *d)
{
    bool stale = d->r->up_reused && (!d->r->uin || d->r->uin->end == 0);
    if (stale)
        wg_stats_add(d->w->stats, WG_C_HTTP_UPSTREAM_STALE, 1);
    if (stale && may_replay(d)) {
        release_upstream(d);
        rewind_request(d);
        d->r->fresh_only = true;
        upstream_start(d);
        return;
    }
    if (!stale)                         /* a pooled connection that died is not the instance's fault */
        report_failure(d, WG_FAIL_HTTP_5XX);
    retry_or_fail(d, 502);
}

/* ---- forwarding the request ------------------------------------------ */

/* The first response byte arrived: the request can no longer be replayed,
 * so what was kept for that is let go. */
static void response_begins(struct wg_downstream *d)
{
    d->r->resp_started = true;
    d->r->replayable = false;
    if (d->in)
        d->in->start = d->in->sent;
    if (d->r->uout && d->r->uout->sent == d->r->uout->end)
        hp_buf_free(d->loc, &d->r->uout);
}

static void request_body_error(struct wg_downstream *d, unsigned status)
{
    if (d->r->final_sent)
        d->dead = true;
    else
        wg_exchange_reply(d, status, NULL, false);
}

/* Make room in d->in for more body: kept replay bytes go first. */
static void in_make_room(struct wg_downstream *d)
{
    struct hp_buf *b = d->in;
    if (!b || b->end < b->cap)
        return;
    if (b->start < b->sent) {
        d->r->replayable = false;
        b->start = b->sent;
    }
    hp_buf_compact(b);
}

/* Decode the request body in d->in, HTTP/1.1 and HTTP/2 upstreams alike:
 * what it marks for forwarding ([fwd before, fwd after), de-chunked when
 * `dechunk`) is teed into the mirror copy (http_mirror.h), never waited for. */
static enum wg_http_result request_body_decode(struct wg_downstream *d, struct hp_buf *b,
                                               bool dechunk)
{
    uint32_t from = b->fwd;
    enum wg_http_result r = hp_body_decode(&d->r->rq_body, b, dechunk);
    if (d->r->mirror && r != WG_HTTP_ERROR)
        wg_mirror_tee(&d->r->mirror, b->data + from, b->fwd - from, !dechunk, r == WG_HTTP_DONE);
    return r;
}

/* ---- the upstream codec: HTTP/2 (DESIGN §15) ---------------------------
 * For h2c/h2 instances the attempt is a stream of the worker's wg_h2_pool
 * (upstream_h2.h) instead of a struct wg_upconn. The stream's callbacks
 * render the response as HTTP/1.1 into d->r->uin (a chunked head, chunks,
 * the last chunk with the trailers), so that the response steps above and
 * below parse and forward it as they do an HTTP/1.1 upstream's bytes. For
 * a client that takes payload only (HTTP/2) the chunks are left out
 * (h2_raw): the payload goes as it is into the queue r->raw, by reference
 * to the stream's receive buffer where it can (h2_on_raw), the body is
 * framed by the stream's end and the trailers go to r->trailers directly.
 * Callbacks only fill buffers and set flags; the pump acts on them. */

#define H2_CHUNK_OVERHEAD 24            /* "<hex>\r\n" and "\r\n" around a chunk */
#define H2_FREE_RETRIES 3               /* unprocessed streams sent again, per request */

static void h2_wake(struct wg_downstream *d)
{
    if (!d->r->h2_calling)              /* else the pump that called in sees h2_new */
        d->ops->wake(d);
}

static struct hp_buf *h2_room(struct wg_downstream *d, size_t need)
{
    struct hp_buf *b = d->r->uin;
    if (!b && !(b = d->r->uin = hp_buf_new(d->loc, HP_WIDE)))
        return NULL;
    if (b->cap - b->end < need)
        hp_buf_make_room(b);
    if (b->cap - b->end < need && b->start > 0)
        hp_buf_compact(b);
    return b->cap - b->end < need ? NULL : b;
}

/* gRPC-Web-text (application/grpc-web-text) to an HTTP/2 instance: the
 * request body is base64 (grpc.h), decoded in place as it comes; the
 * response's messages and trailer frame are encoded as they come. All of
 * it runs only for such calls (r->grpc_web_text). */

/* Decode the base64 that request_body_decode just marked, [from, fwd), in
 * place: fwd moves back to the end of the bytes, the rest joins the gap
 * (hp_buf_drop_gap). False on bad base64, or a body that ends inside a
 * 4-char group. */
static bool h2_text_decode(struct wg_exchange *r, struct hp_buf *b, uint32_t from, bool done)
{
    size_t n;
    if (!wg_b64_decode(&r->web_dec, b->data + from, b->fwd - from, (uint8_t *)b->data + from, &n))
        return false;
    b->fwd = from + (uint32_t)n;
    return !done || wg_b64_decode_done(&r->web_dec);
}

/* Response bytes from the stream as base64 in one chunk of uin: whole
 * 3-byte groups when the block is short of room (the rest is offered
 * again), else all of them, the last group padded: a message must not wait
 * for the next one's bytes to be readable, and no byte is held between
 * calls (trailers and the end have nothing to flush). */
static size_t h2_on_text(struct wg_downstream *d, const uint8_t *p, size_t len)
{
    struct wg_exchange *r = d->r;
    struct hp_buf *b = h2_room(d, H2_CHUNK_OVERHEAD + 8);
    if (!b) {
        r->h2_paused = true;
        return 0;
    }
    struct wg_b64_enc e = { 0 };
    size_t n = wg_b64_encode_fits(&e, b->cap - b->end - H2_CHUNK_OVERHEAD - 4);
    if (n >= len)
        n = len;
    else
        r->h2_paused = true;
    wg_grpc_frames_feed(&r->web_frames, p, n);
    size_t chars = wg_b64_encoded_len(&e, n) + (n % 3 ? 4 : 0);
    if (chars) {
        char *out = b->data + b->end;
        out += wg_h2_chunk_head(chars, out);
        out += wg_b64_encode(&e, p, n, out);
        out += wg_b64_encode_end(&e, out);
        memcpy(out, "\r\n", 2);
        out += 2;
        r->h2_new += (uint32_t)(out - (b->data + b->end));
        b->end = (uint32_t)(out - b->data);
    }
    h2_wake(d);
    return n;
}

/* The trailer frame in base64, a padded chunk of its own, into out[cap]:
 * its length, 0 if it does not fit. */
static size_t h2_text_frame(const struct wg_grpc_field *f, size_t n, char *out, size_t cap)
{
    uint8_t frame[HP_BLOCK / 4 * 3];
    size_t fits = cap / 4 * 3;          /* its last group padded */
    size_t len = cap < 8 ? 0 : wg_grpc_web_trailers(f, n, frame, fits < sizeof frame ? fits
                                                                                  : sizeof frame);
    struct wg_b64_enc e = { 0 };
    size_t k = len ? wg_b64_encode(&e, frame, len, out) : 0;
    return len ? k + wg_b64_encode_end(&e, out + k) : 0;
}

/* The upstream's grpc-status (in trailers, or a Trailers-Only head). */
static void h2_grpc_status(struct wg_downstream *d, const nghttp2_nv *nv, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (nv[i].namelen == 11 && memcmp(nv[i].name, "grpc-status", 11) == 0) {
            int code = wg_grpc_status_parse((const char *)nv[i].value, nv[i].valuelen);
            if (code >= 0 && code < 1000)
                d->r->grpc_code = (int16_t)(code + 1);
            return;
        }
    }
}

static bool nv_is_content_type(const nghttp2_nv *f)
{
    return f->namelen == 12 && memcmp(f->name, "content-type", 12) == 0;
}

static void h2_on_head(void *ctx, unsigned status, const nghttp2_nv *nv, size_t n, bool end_stream)
{
    struct wg_downstream *d = ctx;
    if (end_stream && d->r->grpc)
        h2_grpc_status(d, nv, n);
    nghttp2_nv web[128];                /* gRPC-Web: the content type with -web again */
    char ct[64];
    for (size_t i = 0, k; d->r->grpc_web && n <= 128 && i < n; i++) {
        if (nv_is_content_type(&nv[i]) &&
            (k = wg_grpc_to_grpc_web((const char *)nv[i].value, nv[i].valuelen,
                                     d->r->grpc_web_text, ct, sizeof ct))) {
            memcpy(web, nv, n * sizeof *nv);
            web[i].value = (uint8_t *)ct;
            web[i].valuelen = k;
            nv = web;
            break;
        }
    }
    /* An HTTP/2 client takes the payload as it comes: no HTTP/1.1 chunks
     * to frame here and strip again (gRPC-Web's trailers are a chunk; an
     * auth subrequest's body is read as HTTP/1.1). */
    d->r->h2_raw = d->payload_only && !d->r->grpc_web && !auth_active(d->r);
    if (d->r->h2_raw)                   /* the queue and the stream share one window */
        wg_h2_stream_hold_window(d->r->h2);
    d->r->web_frames = (struct wg_grpc_frames){ 0 };   /* the body starts after this head */
    struct hp_buf *b = h2_room(d, 256);
    size_t len = b ? wg_h2_response_h1(status, nv, n, end_stream, b->data + b->end, b->cap - b->end)
                   : 0;
    if (!len) {                         /* a head over 16 KiB, or no memory */
        wg_h2_stream_reset(d->r->h2, NGHTTP2_INTERNAL_ERROR);
        d->r->h2 = NULL;
        d->r->h2_closed = true;
        d->r->h2_error = NGHTTP2_INTERNAL_ERROR;
        h2_wake(d);
        return;
    }
    b->end += (uint32_t)len;
    d->r->h2_new += (uint32_t)len;
    h2_wake(d);
}

/* Payload for a client that takes it as is (h2_raw): into the queue
 * r->raw, where the client's codec takes it (http_buf.h struct hp_rxq):
 * by reference when it came in a receive buffer the stream offers with it,
 * else copied. A full queue pauses the stream; the rest waits in the
 * stream (upstream_h2.h) until hp_rxq_room. */
static size_t h2_on_raw(struct wg_downstream *d, const uint8_t *p, size_t len, struct hp_rx *rx)
{
    size_t n = hp_rxq_put(d->loc, &d->r->raw, p, len, rx);
    d->r->h2_new += (uint32_t)n;
    if (n < len)
        d->r->h2_paused = true;
    if (n)
        h2_wake(d);
    return n;
}

void wg_exchange_raw_taken(struct wg_downstream *d, size_t n)
{
    if (d->r->h2)
        wg_h2_stream_release(d->r->h2, n);
}

static size_t h2_on_data(void *ctx, const uint8_t *p, size_t len, struct hp_rx *rx)
{
    struct wg_downstream *d = ctx;
    struct hp_buf *b = d->r->uin;
    if (d->r->h2_raw)
        return h2_on_raw(d, p, len, rx);
    if (b && hp_buf_read_later(b)) {
        d->r->h2_paused = true;
        return 0;
    }
    if (d->r->grpc_web_text)
        return h2_on_text(d, p, len);
    if (!(b = h2_room(d, H2_CHUNK_OVERHEAD + 1))) {
        d->r->h2_paused = true;
        return 0;
    }
    size_t n = b->cap - b->end - H2_CHUNK_OVERHEAD;
    if (n > len)
        n = len;
    if (d->r->grpc_web)
        wg_grpc_frames_feed(&d->r->web_frames, p, n);
    uint32_t was = b->end;
    b->end += (uint32_t)wg_h2_chunk_head(n, b->data + b->end);
    memcpy(b->data + b->end, p, n);
    b->end += (uint32_t)n;
    memcpy(b->data + b->end, "\r\n", 2);
    b->end += 2;
    d->r->h2_new += b->end - was;
    if (n < len)
        d->r->h2_paused = true;
    h2_wake(d);
    return n;
}

/* gRPC-Web: the trailers as the body's last frame (0x80), one chunk, then
 * the plain last chunk (gRPC-Web-text: the frame in base64, a padded chunk
 * of its own after the data's last one). Returns the length written into
 * t, 0 if too big. */
static size_t h2_web_trailers(struct wg_exchange *r, const nghttp2_nv *nv, size_t n,
                              struct hp_buf *t)
{
    struct wg_grpc_field f[128];
    if (n > 128 || t->cap < 64)
        return 0;
    for (size_t i = 0; i < n; i++)
        f[i] = (struct wg_grpc_field){ nv[i].name, nv[i].value, nv[i].namelen, nv[i].valuelen };
    char head[20];
    size_t room = t->cap - 20 - 7;      /* chunk head, "\r\n0\r\n\r\n" */
    size_t len = r->grpc_web_text ? h2_text_frame(f, n, t->data + 20, room)
                                  : wg_grpc_web_trailers(f, n, (uint8_t *)t->data + 20, room);
    if (!len)
        return 0;
    size_t h = wg_h2_chunk_head(len, head);
    memmove(t->data + h, t->data + 20, len);
    memcpy(t->data, head, h);
    memcpy(t->data + h + len, "\r\n0\r\n\r\n", 7);
    return h + len + 7;
}

/* Room for `need` more bytes at the end of uin, past its size class if
 * it must (a cut's trailer frame behind a block the client has not taken
 * yet); NULL when out of memory. */
static struct hp_buf *uin_room(struct wg_downstream *d, size_t need)
{
    struct hp_buf *b = h2_room(d, need), *o = d->r->uin;
    if (b || !o)
        return b;
    if (!(b = hp_buf_new(d->loc, o->end - o->start + (uint32_t)need)))
        return NULL;
    memcpy(b->data, o->data + o->start, o->end - o->start);
    b->sent = o->sent - o->start;
    b->fwd = o->fwd - o->start;
    b->scan = o->scan - o->start;
    b->end = o->end - o->start;
    hp_buf_free(d->loc, &d->r->uin);
    return d->r->uin = b;
}

/* A gRPC-Web response an http1 instance sends (passed unchanged): each
 * payload run as it is decoded for the client, counted into web_frames
 * (base64-decoded first for -text; bad base64 gives the count up). */
static void web_seen(void *ctx, const char *p, size_t n)
{
    struct wg_exchange *r = ctx;
    uint8_t out[256];                   /* k chars never decode to more than k bytes */
    if (!r->grpc_web_text) {
        wg_grpc_frames_feed(&r->web_frames, (const uint8_t *)p, n);
        return;
    }
    while (n && !r->web_lost) {
        size_t k = n < sizeof out ? n : sizeof out, got;
        r->web_lost = !wg_b64_decode(&r->web_rdec, p, k, out, &got);
        wg_grpc_frames_feed(&r->web_frames, out, r->web_lost ? 0 : got);
        p += k;
        n -= k;
    }
}

/* The response body's undecoded bytes in uin, decoded for the client (an
 * http1 instance's gRPC-Web counted on the way, web_seen). */
static enum wg_http_result response_decode(struct wg_exchange *r, struct hp_buf *b)
{
    bool count = r->grpc_web && !r->h2_on;
    return hp_body_decode_seen(&r->rs_body, b, r->dechunk, count ? web_seen : NULL, r);
}

/* grpc_cut for gRPC-Web: the trailer frame (grpc-status `code`,
 * grpc-message `m`, in base64 for -text) as the body's last bytes after
 * everything the upstream gave, then the body's end (the last chunk for a
 * chunked client). Only where the client can read it as the last frame:
 * the bytes given end between two messages (counted in web_frames: as an
 * HTTP/2 instance's are framed by waygate, as an http1 instance's are
 * decoded), before any trailer frame of the upstream's, on a base64 group
 * boundary for -text, and where the body's framing lets it end
 * (wg_http_body_endable: a chunked body between two chunks, or de-chunked,
 * or one until close; never a Content-Length). Else -1, and the caller
 * resets the stream or closes the connection (a frame inside a message
 * would be read as its bytes). 0: that body ended whole on its own
 * meanwhile (rs is DONE), 1: cut. */
static int web_cut(struct wg_downstream *d, enum wg_grpc_status code, const char *m)
{
    struct wg_exchange *r = d->r;
    struct hp_buf *b = r->uin;
    if (r->h2_raw)
        return -1;
    if (b && b->scan < b->end) {        /* what the upstream gave goes too */
        enum wg_http_result res = response_decode(r, b);
        hp_buf_drop_gap(b);
        if (res == WG_HTTP_DONE) {
            d->rs = WG_RS_DONE;
            return 0;
        }
        if (res == WG_HTTP_ERROR)
            return -1;
    }
    if (!wg_grpc_frames_between(&r->web_frames) || r->web_frames.trailer || r->web_lost ||
        !wg_b64_decode_done(&r->web_rdec) || !wg_http_body_endable(&r->rs_body, r->dechunk))
        return -1;
    bool chunked = !r->dechunk && r->rs_body.framing == WG_HTTP_BODY_CHUNKED;
    char st[12], frame[320];
    snprintf(st, sizeof st, "%d", (int)code);
    const struct wg_grpc_field f[2] = {
        { (const uint8_t *)"grpc-status", (const uint8_t *)st, 11, strlen(st) },
        { (const uint8_t *)"grpc-message", (const uint8_t *)m, 12, strlen(m) },
    };
    size_t len = r->grpc_web_text ? h2_text_frame(f, 2, frame, sizeof frame)
                                  : wg_grpc_web_trailers(f, 2, (uint8_t *)frame, sizeof frame);
    if (!len || !(b = uin_room(d, len + H2_CHUNK_OVERHEAD + 5)))
        return -1;
    char *w = b->data + b->end;
    if (chunked)
        w += wg_h2_chunk_head(len, w);
    memcpy(w, frame, len);
    w += len;
    if (chunked) {
        memcpy(w, "\r\n0\r\n\r\n", 7);
        w += 7;
    }
    b->end = b->scan = b->fwd = (uint32_t)(w - b->data);
    return 1;
}

static void h2_on_trailers(void *ctx, const nghttp2_nv *nv, size_t n)
{
    struct wg_downstream *d = ctx;
    struct hp_buf *t = d->r->h2_tail;
    if (d->r->grpc) {                   /* passive outlier detection counts it like a 5xx */
        h2_grpc_status(d, nv, n);
        if (d->r->grpc_code && wg_grpc_status_is_failure(d->r->grpc_code - 1))
            report_failure(d, WG_FAIL_HTTP_5XX);
    }
    if (!t && !(t = d->r->h2_tail = hp_buf_new(d->loc, HP_BLOCK)))
        return;                         /* closed() then finds no tail: truncated */
    size_t len = d->r->grpc_web ? h2_web_trailers(d->r, nv, n, t)
                 : d->r->h2_raw ? wg_h2_trailer_section(nv, n, t->data, t->cap)
                                : wg_h2_trailers_h1(nv, n, t->data, t->cap);
    if (!len)
        hp_buf_free(d->loc, &d->r->h2_tail);
    else
        t->end = (uint32_t)len;
}

static void h2_on_closed(void *ctx, uint32_t error, bool retryable)
{
    struct wg_downstream *d = ctx;
    d->r->h2 = NULL;                    /* freed when this returns */
    d->r->h2_closed = true;
    d->r->h2_paused = false;            /* every byte was taken (a pause set by the last
                                           data call would keep the tail out for good) */
    d->r->h2_error = error;
    d->r->h2_retryable = retryable;
    if (!error && !d->r->h2_tail && !d->r->h2_raw) {   /* no trailers: the plain last chunk */
        struct hp_buf *t = d->r->h2_tail = hp_buf_new(d->loc, HP_SMALL);
        if (t)
            t->end = (uint32_t)wg_h2_trailers_h1(NULL, 0, t->data, t->cap);
        else
            d->r->h2_error = NGHTTP2_INTERNAL_ERROR;
    }
    h2_wake(d);
}

static void h2_on_writable(void *ctx) { h2_wake(ctx); }

static const struct wg_h2_stream_ops h2_ops = {
    .head = h2_on_head,
    .data = h2_on_data,
    .trailers = h2_on_trailers,
    .closed = h2_on_closed,
    .writable = h2_on_writable,
};

/* What the stream's callbacks put into uin since the last call (the
 * response steps' upstream_read); a stream that ended moves its tail in,
 * one that failed shows as the upstream's EOF (u_eof), one the upstream
 * did not process goes again for free. */
static ssize_t h2_pull(struct wg_downstream *d)
{
    struct wg_exchange *r = d->r;
    if (r->h2_paused && r->h2 &&
        (r->h2_raw ? hp_rxq_room(&r->raw) : !r->uin || !hp_buf_read_later(r->uin))) {
        r->h2_paused = false;
        r->h2_calling = true;
        wg_h2_stream_resume_read(r->h2);
        r->h2_calling = false;
    }
    if (r->h2_closed && !r->h2_paused && r->h2_raw && !r->h2_error) {
        if (r->h2_tail) {               /* the trailers go as they are */
            hp_buf_free(d->loc, &r->trailers);
            r->trailers = r->h2_tail;
            r->h2_tail = NULL;
        }
        if (!r->h2_new)                 /* every byte is in: the stream's end ends the body */
            r->u_eof = true;
    } else if (r->h2_closed && !r->h2_paused && r->h2_tail && !r->h2_raw) {
        struct hp_buf *t = r->h2_tail, *b = h2_room(d, t->end);
        if (b) {
            memcpy(b->data + b->end, t->data, t->end);
            b->end += t->end;
            r->h2_new += t->end;
            hp_buf_free(d->loc, &r->h2_tail);
        }
    }
    ssize_t n = r->h2_new;
    r->h2_new = 0;
    if (n > 0) {
        r->upstream_progress = wg_now_ms();
        return n;
    }
    if (r->h2_closed && r->h2_error && !r->u_eof) {
        if (r->h2_retryable && !r->resp_started && r->h2_error == NGHTTP2_CONNECT_ERROR) {
            connect_failed(d, ECONNREFUSED);
            return 0;
        }
        if (r->h2_retryable && !r->resp_started && r->h2_free < H2_FREE_RETRIES && r->replayable) {
            r->h2_free++;                /* GOAWAY / REFUSED_STREAM: not processed */
            wg_stats_add(d->w->stats, WG_C_HTTP_UPSTREAM_STALE, 1);
            release_upstream(d);
            rewind_request(d);
            r->fresh_only = true;
            upstream_start(d);
            return 0;
        }
        wg_debug("msg=\"upstream stream failed\" service=%s upstream=%s error=%u", r->svc->name,
                 r->inst->id, (unsigned)r->h2_error);
        r->u_eof = true;
    }
    return 0;
}

/* Start this attempt's stream: the rewritten head (d->r->uout) as HTTP/2
 * fields; `te: trailers` again for gRPC (dropped as hop-by-hop). */
static void h2_attach(struct wg_downstream *d)
{
    struct wg_exchange *r = d->r;
    struct hp_buf *o = r->uout;
    nghttp2_nv nv[HP_MAX_HEADERS + 8];
    char scratch[HP_BLOCK];
    struct wg_http_header h[HP_MAX_HEADERS];
    struct wg_http_parser p;
    size_t n = 0;
    r->fresh_only = false;
    r->sent_any = false;
    r->up_blocked_since = 0;
    if (!wg_h2_pool_local(d->loc, d->w->base, d->w->stats)) {
        fail_upstream(d, 503);
        return;
    }
    wg_http_parser_init_request(&p, h, HP_MAX_HEADERS, 0);
    if (o && wg_http_split_head(&p, o->data, o->end))    /* built by build_upstream_head */
        n = wg_h2_request_nv(&p.msg, h, o->data, d->tls ? "https" : "http", nv, HP_MAX_HEADERS + 6,
                             scratch, sizeof scratch);
    if (!n) {
        fail_upstream(d, 502);
        return;
    }
    if (r->grpc)
        nv[n++] = (nghttp2_nv){ (uint8_t *)"te", (uint8_t *)"trailers", 2, 8, NGHTTP2_NV_FLAG_NONE };
    char ct[64];                        /* gRPC-Web: application/grpc[+proto] upstream */
    bool text;
    for (size_t i = 0, k; r->grpc_web && i < n; i++) {
        if (nv_is_content_type(&nv[i]) &&
            (k = wg_grpc_web_to_grpc((const char *)nv[i].value, nv[i].valuelen, ct, sizeof ct,
                                     &text))) {
            nv[i].value = (uint8_t *)ct;
            nv[i].valuelen = k;
        } else if (r->grpc_web_text && nv[i].namelen == 14 &&
                   memcmp(nv[i].name, "content-length", 14) == 0) {
            nv[i--] = nv[--n];          /* the base64 length: the decoded body is shorter */
        }
    }
    SSL_CTX *ctx = NULL;
    const struct wg_service_config *sc = r->svc->cfg;
    if (r->inst->protocol == WG_UPSTREAM_H2)
        ctx = wg_tls_set_service(r->svc->config->ext, r->svc->config->cfg, sc);
    bool has_body = !r->req_body_done;
    int err = 0;
    r->h2_on = true;
    r->h2_ended = !has_body;
    r->connect_start_ns = wg_now_ns();
    const struct wg_h2_conn_limits lim = wg_h2_service_limits(sc);
    r->h2 = wg_h2_submit(d->loc->h2, r->inst, ctx, sc->tls.sni, sc->tls.verify, &lim, nv, n,
                         has_body, &h2_ops, d, &err);
    if (!r->h2) {
        r->h2_on = false;
        if (err == EBUSY)
            retry_or_fail(d, 503);
        else
            connect_failed(d, err);
        return;
    }
    o->sent = o->end;
    r->sent_any = true;
    r->up_reused = true;                /* connect time: the pool's, not this request's */
    upstream_ready(d);
}

/* Request body client -> stream: de-chunked (HTTP/2 frames the payload),
 * only what the stream's buffer takes, then END_STREAM. */
static void h2_request_body_step(struct wg_downstream *d, bool *progress)
{
    struct wg_exchange *r = d->r;
    struct hp_buf *b = d->in;
    if (!r->h2)
        return;                         /* closed: the response side tells */
    if (b && b->scan < b->end && !r->req_body_done) {
        uint32_t from = b->fwd;
        enum wg_http_result res = request_body_decode(d, b, true);
        bool text_ok = !r->grpc_web_text || res == WG_HTTP_ERROR ||
                       h2_text_decode(r, b, from, res == WG_HTTP_DONE);
        hp_buf_drop_gap(b);
        if (res == WG_HTTP_ERROR || !text_ok) {
            request_body_error(d, text_ok ? (unsigned)r->rq_body.err_status : 400);
            return;
        }
        r->req_body_done = res == WG_HTTP_DONE;
        if (r->t.max_body && r->rq_body.payload > r->t.max_body) {
            request_body_error(d, 413);
            return;
        }
    }
    if (b && b->sent < b->fwd) {
        size_t n = wg_h2_stream_write(r->h2, (const uint8_t *)b->data + b->sent, b->fwd - b->sent);
        b->sent += (uint32_t)n;
        *progress |= n > 0;
        if (!r->replayable)
            b->start = b->sent;
    }
    bool flushed = !b || b->sent == b->fwd;
    if (r->req_body_done && flushed) {
        if (!r->h2_ended && wg_h2_stream_end(r->h2, NULL, 0) == 0)
            r->h2_ended = true;
        if (r->h2_ended && d->rq == WG_RQ_BODY) {
            d->rq = WG_RQ_SENT;
            r->response_deadline = wg_now_ms() + r->t.response_ms;
            *progress = true;
        }
        return;
    }
    if (!flushed || d->eof)
        return;                         /* ops->writable wakes us */
    in_make_room(d);
    if (d->ops->read(d) > 0)
        *progress = true;
    else if (d->eof && !r->req_body_done)
        d->dead = true;                 /* the client gave up mid-body */
}

/* Request body (or tunnel bytes) client -> upstream, with backpressure:
 * the client is read only into the room the upstream has made. */
static void request_body_step(struct wg_downstream *d, bool *progress)
{
    struct wg_upconn *u = d->r->up;
    struct hp_buf *b = d->in;
    if (!u) {
        if (d->r->h2_on)
            h2_request_body_step(d, progress);
        return;
    }
    if (u->connecting || d->r->u_shut)
        return;
    if (b && b->scan < b->end && !d->r->req_body_done) {
        enum wg_http_result r = request_body_decode(d, b, false);
        if (r == WG_HTTP_ERROR) {
            request_body_error(d, (unsigned)d->r->rq_body.err_status);
            return;
        }
        d->r->req_body_done = r == WG_HTTP_DONE;
        if (d->r->t.max_body && d->r->rq_body.payload > d->r->t.max_body) {
            request_body_error(d, 413);
            return;
        }
    }
    ssize_t n = u->ssl ? hp_tls_flush(u->ssl, &u->writable, &u->write_wants_read, d->r->uout, b)
                       : hp_flush_to(u->fd, &u->writable, d->r->uout, b);
    if (n < 0) {
        if (d->r->resp_started) {          /* it answered early and stopped reading */
            d->r->req_body_done = d->r->close_after = true;
            d->r->u_shut = true;
            return;
        }
        upstream_lost(d);
        return;
    }
    *progress |= n > 0;
    d->r->sent_any |= n > 0;
    if (b && !d->r->replayable)
        b->start = b->sent;
    bool flushed = (!d->r->uout || d->r->uout->sent == d->r->uout->end) && (!b || b->sent == b->fwd);
    if (flushed)                        /* the send deadline (WG_DL_UPSTREAM_SEND) */
        d->r->up_blocked_since = 0;
    else if (n > 0 || !d->r->up_blocked_since)
        d->r->up_blocked_since = wg_now_ms();
    if (!flushed && d->check_reset && d->rq == WG_RQ_BODY && d->ops->gone(d)) {
        d->end_reason = "client_closed";
        d->dead = true;
        return;
    }
    d->check_reset = false;
    if (d->r->req_body_done && flushed) {
        if (d->rq == WG_RQ_BODY) {
            d->rq = WG_RQ_SENT;
            d->r->response_deadline = wg_now_ms() + d->r->t.response_ms;
            *progress = true;
        }
        return;
    }
    if (d->rq == WG_RQ_TUNNEL && d->eof && flushed) {
        if (u->ssl)
            wg_tls_close(u->ssl);
        shutdown(u->fd, SHUT_WR);       /* forward the client's half-close */
        d->r->u_shut = true;
        *progress = true;
        return;
    }
    if (d->r->req_body_done || d->eof)
        return;
    in_make_room(d);
    if (d->ops->read(d) > 0)
        *progress = true;
    else if (d->eof && d->rq == WG_RQ_BODY)
        d->dead = true;                   /* the client gave up mid-body */
    else if (d->eof)
        *progress = true;
}

/* ---- the response ----------------------------------------------------- */

/* Policy hook point (DESIGN §16): a final response head from the upstream,
 * before the client sees it (headers policy: response set/remove; cors).
 * No policy exists yet: DESIGN §16's issue fills this in. */
static void policy_response_head(struct wg_downstream *d, const struct wg_http_parser *p,
                                 const char *msg)
{
    struct wg_policy_req *pol = d->r->pol;

    d->r->resp_edits = (struct wg_policy_head){ 0 };
    if (!pol || !pol->chain || !pol->chain->has_response ||
        !wg_policy_head_http1(pol, &d->r->resp_edits, p, msg))
        return;
    wg_policy_response(pol, p->msg.status, &d->r->resp_edits);
}

/* A final response head: decide both connections' fate, forward it. */
static void auth_head(struct wg_downstream *d, const struct wg_http_parser *p, const char *msg);

static void response_final(struct wg_downstream *d, const struct wg_http_parser *p, const char *msg,
                           size_t used)
{
    const struct wg_http_message *m = &p->msg;
    bool upgrade = m->status == 101;
    bool draining = atomic_load_explicit(&d->w->draining, memory_order_relaxed);

    if (auth_active(d->r)) {            /* the auth service's verdict, not for the client */
        auth_head(d, p, msg);
        return;
    }
    d->r->status = m->status;
    if (m->status >= 500 || (d->r->grpc_code && wg_grpc_status_is_failure(d->r->grpc_code - 1)))
        report_failure(d, WG_FAIL_HTTP_5XX);    /* a Trailers-Only gRPC failure too */
    else
        report_success(d);
    bool dechunk10 = d->r->http10 && m->framing == WG_HTTP_BODY_CHUNKED;
    d->r->dechunk = dechunk10 || d->payload_only;
    d->r->upstream_keep = m->keep_alive && !upgrade && !d->r->req_upgrade &&
                       m->framing != WG_HTTP_BODY_UNTIL_CLOSE;
    d->r->close_after = !upgrade && (!d->r->req_keep_alive || d->rq != WG_RQ_SENT || dechunk10 ||
                                  m->framing == WG_HTTP_BODY_UNTIL_CLOSE || draining);
    policy_response_head(d, p, msg);
    if (!d->ops->response_head(d, p, msg, used, true)) {
        fail_upstream(d, 502);
        return;
    }
    wg_http_body_init(&d->r->rs_body, d->r->h2_raw ? WG_HTTP_BODY_UNTIL_CLOSE : m->framing,
                      m->content_length, 0);
    if (!d->r->h2_on) {                 /* (an HTTP/2 instance's count began at its head) */
        d->r->web_frames = (struct wg_grpc_frames){ 0 };
        d->r->web_rdec = (struct wg_b64_dec){ 0 };
        d->r->web_lost = false;
    }
    d->r->final_sent = true;
    count_status(d, m->status);
    d->rs = WG_RS_BODY;
    if (!upgrade && (m->framing == WG_HTTP_BODY_NONE ||
                     (m->framing == WG_HTTP_BODY_LENGTH && m->content_length == 0)))
        d->rs = WG_RS_DONE;                /* HEAD, 204, 304, empty: nothing to wait for */
    if (upgrade) {
        d->rq = WG_RQ_TUNNEL;
        d->r->req_body_done = false;
        wg_http_body_init(&d->r->rq_body, WG_HTTP_BODY_TUNNEL, 0, 0);
    }
}

static void response_head_step(struct wg_downstream *d, bool *progress)
{
    struct hp_buf *b = d->r->uin;
    if (d->ops->head_pending(d))
        return;                         /* an interim head still goes to the client: the
                                           upstream is not read faster than it drains */
    if (!b || b->scan == b->end) {
        if (upstream_read(d) > 0) {
            *progress = true;
            if (!d->r->resp_started)
                response_begins(d);
        } else if (d->r->u_eof && (!d->r->uin || d->r->uin->end == d->r->uin->start)) {
            upstream_lost(d);
            *progress = true;
            return;
        } else if (d->r->u_eof) {
            report_failure(d, WG_FAIL_HTTP_5XX);   /* a truncated head */
            fail_upstream(d, 502);
            return;
        }
        if (d->dead || !(b = d->r->uin) || b->scan == b->end)
            return;
    }
    if (!d->r->rhead) {                 /* held only while a head is parsed */
        if (!(d->r->rhead = hp_head_new(d->loc))) {
            d->dead = true;
            return;
        }
        wg_http_parser_init_response(&d->r->rhead->p, d->r->rhead->h, HP_MAX_HEADERS, 0,
                                     d->r->method, d->r->req_upgrade);
    }
    size_t used;
    enum wg_http_result r = wg_http_parse_head(&d->r->rhead->p, b->data + b->start,
                                               b->end - b->start, &used);
    b->scan = b->end;
    *progress = true;
    if (r == WG_HTTP_AGAIN) {
        if (b->end == b->cap && b->start == 0)  /* a head over 16 KiB */
            fail_upstream(d, 502);
        return;
    }
    if (r == WG_HTTP_ERROR) {
        wg_info("msg=\"malformed upstream response\" service=%s upstream=%s reason=\"%s\"",
                d->r->svc->name, d->r->inst->id, d->r->rhead->p.err_reason);
        report_failure(d, WG_FAIL_HTTP_5XX);
        fail_upstream(d, 502);
        return;
    }
    const char *msg = b->data + b->start;
    if (d->r->rhead->p.msg.interim && ++d->r->interim > HP_MAX_INTERIM) {
        wg_info("msg=\"too many interim responses\" service=%s upstream=%s", d->r->svc->name,
                d->r->inst->id);
        report_failure(d, WG_FAIL_HTTP_5XX);
        fail_upstream(d, 502);
        return;
    }
    if (d->r->rhead->p.msg.interim) {      /* 100, 103: forwarded, the final one follows */
        if (!d->r->http10 && !auth_active(d->r) &&
            !d->ops->response_head(d, &d->r->rhead->p, msg, used, false)) {
            d->dead = true;
            return;
        }
        wg_http_parser_reset(&d->r->rhead->p);
    } else {
        response_final(d, &d->r->rhead->p, msg, used);
        hp_head_free(d->loc, &d->r->rhead);
    }
    b->start += (uint32_t)used;
    b->sent = b->fwd = b->scan = b->start;
}

/* A de-chunked response drops its trailer section with the framing; a
 * client that takes payload only (HTTP/2) gets the trailer fields as
 * their own HEADERS, so their bytes are kept as they pass (the decoder
 * checked them, at most max_trailer). */
static bool keep_trailers(struct wg_downstream *d, const char *p, size_t n)
{
    struct hp_buf *t = d->r->trailers;
    if (!t && !(t = d->r->trailers = hp_buf_new(d->loc, WG_HTTP_DEFAULT_MAX_TRAILER)))
        return false;
    if (t->end + n > t->cap)
        return false;
    memcpy(t->data + t->end, p, n);
    t->end += (uint32_t)n;
    return true;
}

/* The upstream ended the response mid-body (reset, connection lost): a
 * failure of the instance for passive outlier detection, like a 5xx head;
 * a gRPC stream ends with the status its client would read from such an
 * end (grpc's http-grpc-status-mapping.md: RST_STREAM CANCEL is
 * CANCELLED, REFUSED_STREAM UNAVAILABLE, ...; a lost connection is
 * UNAVAILABLE), counted only when that status is a failure. */
static void upstream_cut(struct wg_downstream *d)
{
    uint32_t err = d->r->h2_on && d->r->h2_error != NGHTTP2_CONNECT_ERROR ? d->r->h2_error : 0;
    enum wg_grpc_status code = err ? wg_grpc_status_from_h2_error(err) : WG_GRPC_UNAVAILABLE;
    if (!d->r->grpc || wg_grpc_status_is_failure(code))
        report_failure(d, WG_FAIL_HTTP_5XX);
    d->end_reason = "upstream_error";
    if (!grpc_cut(d, code, err ? "upstream reset the stream" : "upstream connection lost"))
        d->dead = true;
}

/* Response body (or tunnel bytes) upstream -> client, with backpressure:
 * the upstream is read only into the room the client has made. */
static void response_body_step(struct wg_downstream *d, bool *progress)
{
    struct hp_buf *b = d->r->uin;
    if (b && b->scan < b->end) {
        uint32_t tl = d->r->rs_body.trailer_len;
        enum wg_http_result r = response_decode(d->r, b);
        if (d->payload_only && d->r->rs_body.trailer_len > tl && r != WG_HTTP_ERROR &&
            !keep_trailers(d, b->data + b->scan - (d->r->rs_body.trailer_len - tl),
                           d->r->rs_body.trailer_len - tl)) {
            d->dead = true;
            return;
        }
        if (r == WG_HTTP_ERROR) {
            wg_info("msg=\"malformed upstream body\" service=%s upstream=%s reason=\"%s\"",
                    d->r->svc->name, d->r->inst->id, d->r->rs_body.err_reason);
            if (!grpc_cut(d, WG_GRPC_INTERNAL, "malformed upstream response"))
                d->dead = true;
            return;
        }
        hp_buf_drop_gap(b);             /* (the trailers were kept above) */
        if (r == WG_HTTP_DONE) {
            d->rs = WG_RS_DONE;
            d->r->upstream_keep &= b->scan == b->end;  /* nothing may follow a response */
            *progress = true;
            return;
        }
    }
    if ((d->r->up || d->r->h2_on) && upstream_read(d) > 0) {
        *progress = true;
        return;
    }
    if (!d->r->u_eof)
        return;
    struct wg_http_body end = d->r->rs_body;    /* (a cut's trailer frame looks at it as it was) */
    if (wg_http_body_eof(&end) != WG_HTTP_DONE || (d->r->h2_on && d->r->h2_error)) {
        wg_info("msg=\"upstream closed mid-body\" service=%s upstream=%s", d->r->svc->name,
                d->r->inst->id);
        upstream_cut(d);
        return;
    }
    d->r->upstream_keep = false;
    d->rs = WG_RS_DONE;
    *progress = true;
}

/* ---- forward_auth: a subrequest through the upstream code (policy.h) ---
 * The forward_auth hook answered PENDING. The exchange keeps a copy of the
 * request head, leaves the client's body unread (its flow control holds
 * the client), and runs the subrequest as an attempt of its own: pick over
 * the auth service's healthy instances, its pools (HTTP/1.1 or HTTP/2),
 * connect and retries, passive health, all as for a request. The response
 * steps hand its head to auth_head() and its body to auth_body_step()
 * instead of the client; auth_finish() puts the request's own service
 * back, then goes on with the chain, or answers. */

/* Start the subrequest r->pol->auth asks for. */
static void auth_start(struct wg_downstream *d)
{
    struct wg_exchange *r = d->r;
    struct wg_auth_call *a = r->auth;
    const struct wg_policy_forward_auth *fa = r->pol->auth;
    struct wg_snapshot *s = wg_pool_current(d->w->pool);
    const struct wg_pool_service *svc = s ? wg_snapshot_service(s, fa->service) : NULL;
    struct wg_pstr head;

    a->fa = fa;
    a->failed = a->done = a->keep = false;
    a->status = 0;
    a->body_len = a->seen = 0;
    a->svc = r->svc;
    a->t = r->t;
    a->grpc = r->grpc;
    a->upgrade = r->req_upgrade;
    a->deadline = wg_now_ms() + fa->timeout_ms;
    a->start_ns = wg_now_ns();
    a->active = true;
    hp_buf_free(d->loc, &r->uout);
    bool ok = svc && wg_forward_auth_head(fa, r->pol, &head);
    a->sub = ok ? head : (struct wg_pstr){ NULL, 0 };
    if (ok) {
        struct hp_out o = hp_out_open(d->loc, &r->uout, head.n);
        hp_put(&o, head.p, head.n);
        hp_out_close(r->uout, &o);
        ok = r->uout && !o.full;
    }
    if (!ok) {                          /* no such service now, or no memory */
        r->svc = NULL;                  /* nothing to give back in auth_finish */
        auth_failed(d);
        return;
    }
    wg_pool_service_ref((struct wg_pool_service *)svc);
    r->svc = (struct wg_pool_service *)svc;
    r->t.connect_ms = svc->cfg->connect_timeout_ms < fa->timeout_ms ? svc->cfg->connect_timeout_ms
                                                                     : fa->timeout_ms;
    r->t.response_ms = fa->timeout_ms;
    r->t.retries = svc->cfg->retries;
    r->t.retry_non_idempotent = true;   /* the subrequest has no body and asks only */
    r->grpc = r->req_upgrade = false;
    r->attempts = 0;
    wg_pick_init(&r->pick, svc, &d->w->rng, NULL);
    r->req_body_done = r->replayable = true;
    d->rq = WG_RQ_BODY;
    d->rs = WG_RS_NONE;
    upstream_start(d);
}

/* The request head's bytes and parse outlive the codec's buffers. */
static void auth_begin(struct wg_downstream *d, const struct wg_http_parser *p, const char *msg,
                       size_t head_len)
{
    struct wg_auth_call *a = calloc(1, sizeof *a);
    struct hp_head *h = a ? hp_head_new(d->loc) : NULL;
    char *copy = h ? malloc(head_len) : NULL;

    if (!copy) {
        if (h)
            hp_head_free(d->loc, &h);
        free(a);
        request_proceed(d, p, msg, head_len, 503);
        return;
    }
    memcpy(copy, msg, head_len);
    h->p = *p;
    h->p.headers = h->h;
    memcpy(h->h, p->headers, p->msg.nheaders * sizeof *h->h);
    *a = (struct wg_auth_call){ .head = h, .msg = copy, .head_len = head_len };
    wg_policy_req_rebase(d->r->pol, msg, head_len, copy);
    d->r->auth = a;
    auth_start(d);
}

static void auth_free(struct wg_downstream *d)
{
    struct wg_auth_call *a = d->r->auth;

    if (!a)
        return;
    if (a->active && a->svc)            /* released mid-call: the request's service too */
        wg_pool_service_unref(a->svc);
    hp_head_free(d->loc, &a->head);
    free(a->msg);
    free(a->body);
    free(a);
    d->r->auth = NULL;
}

enum auth_outcome { AUTH_ALLOW, AUTH_DENY, AUTH_FAIL };

/* The subrequest's own access-log line (kind=auth), once it is over: the
 * auth service and instance, the subrequest's method and target, the auth
 * service's status, its own duration, connect time and retries; client,
 * listener, request id (the X-Request-Id the auth service got) and trace
 * id as the request's line has them. */
static void auth_log(struct wg_downstream *d, const char *reason)
{
    struct wg_exchange *r = d->r;
    const struct wg_auth_call *a = r->auth;
    const char *h = a->sub.p;           /* "METHOD TARGET HTTP/1.1\r\n..." */
    const char *sp1 = h ? memchr(h, ' ', a->sub.n) : NULL;
    const char *sp2 = sp1 ? memchr(sp1 + 1, ' ', a->sub.n - (size_t)(sp1 + 1 - h)) : NULL;
    const struct wg_pstr *id = &r->pol->request_id;
    char client[INET6_ADDRSTRLEN + 8], method[32];

    if (!wg_access_log_enabled())
        return;
    size_t mlen = sp2 ? (size_t)(sp1 - h) : 0;
    mlen = mlen < sizeof method - 1 ? mlen : sizeof method - 1;
    memcpy(method, h ? h : "", mlen);
    method[mlen] = '\0';
    wg_access_log(d->w->access_log, &(struct wg_access_entry){
        .client = client_text(d, client, sizeof client),
        .listener = r->lc ? r->lc->name : d->l->name,
        .service = a->fa->service,
        .upstream = r->inst ? r->inst->id : NULL,
        .method = mlen ? method : NULL,
        .path = sp2 ? sp1 + 1 : NULL,
        .path_len = sp2 ? (size_t)(sp2 - sp1 - 1) : 0,
        .request_id = id->n ? id->p : NULL,
        .request_id_len = id->n,
        .status = a->status,
        .reason = reason,
        .duration_us = (wg_now_ns() - a->start_ns) / 1000,
        .connect_us = r->connect_us,
        .retries = r->attempts > 1 ? r->attempts - 1 : 0,
        .trace_id = r->pol->trace_id[0] ? r->pol->trace_id : NULL,
        .kind = "auth",
    });
}

/* The subrequest is over (its line logged with `reason`): its connection
 * or stream is let go, and the request gets its own service, settings and
 * gRPC-ness back, as if no byte of a response had come (none went out). */
static void auth_end(struct wg_downstream *d, const char *reason)
{
    struct wg_exchange *r = d->r;
    struct wg_auth_call *a = r->auth;

    auth_log(d, reason);
    release_upstream(d);
    release_instance(d);
    hp_buf_free(d->loc, &r->uout);
    if (r->svc)
        wg_pool_service_unref(r->svc);
    r->svc = a->svc;
    r->t = a->t;
    r->grpc = a->grpc;
    r->req_upgrade = a->upgrade;
    a->active = false;
    r->attempts = r->interim = 0;
    r->status = 0;
    r->resp_started = r->final_sent = r->up_reused = r->fresh_only = r->sent_any = false;
    r->h2_free = 0;
    r->grpc_code = 0;
    r->connect_us = -1;
    r->response_deadline = 0;
    d->rs = WG_RS_NONE;
    wg_pick_init(&r->pick, r->svc, &d->w->rng, NULL);
}

/* The subrequest's verdict: its chain goes on, or the answer goes out. */
static void auth_finish(struct wg_downstream *d, enum auth_outcome how)
{
    struct wg_exchange *r = d->r;
    struct wg_auth_call *a = r->auth;
    const struct wg_http_parser *p = &a->head->p;
    bool body = has_body(&p->msg);
    unsigned status = 0;

    auth_end(d, how != AUTH_FAIL               ? NULL
                : wg_now_ms() >= a->deadline ? "timeout"
                                             : "upstream_error");
    pick_key(d, p, a->msg);
    if (how == AUTH_FAIL && !a->fa->allow_on_failure) {
        wg_info("msg=\"forward_auth failed\" service=%s client=%s", a->fa->service, d->client_ip);
        r->pol->auth = NULL;
        wg_exchange_reply(d, r->grpc ? 503 : 500, "authorization service unavailable\n", !body);
        auth_free(d);
        return;
    }
    if (how == AUTH_DENY) {
        wg_exchange_reply(d, a->status, a->body ? a->body : "", !body);
        auth_free(d);
        return;
    }
    if (d->ops->gone(d)) {              /* the client reset meanwhile: nothing to send for */
        d->end_reason = "client_closed";
        d->dead = true;
        return;
    }
    if (how == AUTH_FAIL) {             /* failure_mode allow: still no forged copy_headers */
        struct wg_policy_head none = { 0 };
        wg_forward_auth_response(a->fa, r->pol, 200, &none);
    }
    switch (wg_policy_resume(r->pol)) {
    case WG_POLICY_PENDING:             /* another forward_auth further down the chain */
        auth_start(d);
        return;
    case WG_POLICY_ANSWER:
        status = r->pol->answer_status;
        break;
    default:
        break;
    }
    request_proceed(d, p, a->msg, a->head_len, status);
    auth_free(d);
}

/* No answer from the auth service (no instance, the attempts failed, the
 * timeout): true when a subrequest was running, then failure_mode decides. */
static bool auth_failed(struct wg_downstream *d)
{
    if (!d->r || !auth_active(d->r))
        return false;
    auth_finish(d, AUTH_FAIL);
    return true;
}

/* The auth service's final head (response_final). Deciding waits for the
 * body step: this runs inside the head step, which still uses uin. */
static void auth_head(struct wg_downstream *d, const struct wg_http_parser *p, const char *msg)
{
    const struct wg_http_message *m = &p->msg;
    struct wg_auth_call *a = d->r->auth;
    struct wg_policy_head h;

    d->rs = WG_RS_BODY;
    a->status = m->status;
    if (m->status >= 500)
        report_failure(d, WG_FAIL_HTTP_5XX);
    else
        report_success(d);
    if (m->status < 200 || !wg_policy_head_http1(d->r->pol, &h, p, msg)) {
        a->failed = true;               /* a 101 for a request that asked no upgrade */
        return;
    }
    bool allow = wg_forward_auth_response(a->fa, d->r->pol, m->status, &h);
    a->keep = m->keep_alive && m->framing != WG_HTTP_BODY_UNTIL_CLOSE;
    a->done = m->framing == WG_HTTP_BODY_NONE ||
              (m->framing == WG_HTTP_BODY_LENGTH && m->content_length == 0);
    wg_http_body_init(&d->r->rs_body, m->framing, m->content_length, 0);
    if (!allow && !a->done && !(a->body = malloc(a->fa->max_response_size + 1)))
        a->failed = true;
}

/* The auth response's body: de-chunked, kept for a refusal (at most
 * max_response_size, more is a failure), dropped for a 2xx; then the
 * connection goes back to its pool and auth_finish() decides. */
static void auth_body_step(struct wg_downstream *d, bool *progress)
{
    struct wg_auth_call *a = d->r->auth;
    bool allow = a->status >= 200 && a->status < 300;

    while (!a->failed && !a->done) {
        struct hp_buf *b = d->r->uin;
        if (b && b->scan < b->end) {
            enum wg_http_result res = hp_body_decode(&d->r->rs_body, b, true);
            if (b->scan > b->fwd) {     /* drop the framing the payload left behind */
                memmove(b->data + b->fwd, b->data + b->scan, b->end - b->scan);
                b->end -= b->scan - b->fwd;
                b->scan = b->fwd;
            }
            size_t n = b->fwd - b->sent;
            a->seen += n;
            if (a->seen > a->fa->max_response_size) {
                a->failed = !allow;     /* a 2xx lets through whatever its body */
                a->done = allow;
                a->keep = false;
                break;
            }
            if (a->body) {
                memcpy(a->body + a->body_len, b->data + b->sent, n);
                a->body_len += n;
            }
            b->start = b->sent = b->fwd;
            if (res == WG_HTTP_ERROR) {
                a->failed = true;
                break;
            }
            if (res == WG_HTTP_DONE) {
                a->done = true;
                a->keep &= b->scan == b->end;
                break;
            }
        }
        if (upstream_read(d) > 0) {
            *progress = true;
            continue;
        }
        if (d->dead || !auth_active(d->r))
            return;
        if (!d->r->u_eof)
            return;                     /* more later */
        a->keep = false;
        if (wg_http_body_eof(&d->r->rs_body) == WG_HTTP_DONE)
            a->done = true;
        else
            a->failed = true;
    }
    *progress = true;
    if (a->failed) {
        auth_finish(d, AUTH_FAIL);
        return;
    }
    if (a->body)
        a->body[a->body_len] = '\0';
    if (a->keep && d->r->up && !d->r->u_eof && !d->r->up->hup &&
        (!d->r->uin || d->r->uin->scan == d->r->uin->end)) {
        wg_upstream_pool_put(d->r->up, d->r->svc->cfg->upstream.max_idle,
                             d->r->svc->cfg->upstream.idle_timeout_ms);
        d->r->up = NULL;
    }
    auth_finish(d, allow ? AUTH_ALLOW : AUTH_DENY);
}

/* Everything for the client (heads, then body bytes) in one writev. */
/* The response reached the client whole: pool the upstream connection if
 * it may carry another request, let go of the request; tell the downstream
 * what becomes of the client connection. */
enum wg_finish wg_exchange_finish(struct wg_downstream *d, uint64_t *idle_ms)
{
    log_request(d, d->end_reason);
    bool reuse = d->r->up && d->r->upstream_keep && d->rq == WG_RQ_SENT && !d->r->u_eof &&
                 !d->r->up->hup && (!d->r->uin || d->r->uin->scan == d->r->uin->end);
    if (reuse) {
        wg_upstream_pool_put(d->r->up, d->r->svc->cfg->upstream.max_idle,
                             d->r->svc->cfg->upstream.idle_timeout_ms);
        d->r->up = NULL;
    }
    bool close_after = d->r->close_after;
    /* The client asked to close and sent nothing past its request: it has
     * nothing more to say, so close now (no lingering read for its FIN). */
    bool asked = !d->r->req_keep_alive && d->rq == WG_RQ_SENT &&
                 (!d->in || d->in->scan == d->in->end);
    *idle_ms = d->r->t.idle_ms;
    release_request(d);
    d->rs = WG_RS_NONE;
    if (close_after && asked)
        return WG_FINISH_CLOSE;
    return close_after ? WG_FINISH_LINGER : WG_FINISH_KEEP;
}

void wg_exchange_release(struct wg_downstream *d, const char *reason)
{
    log_request(d, reason);
    release_request(d);
}

void wg_exchange_abort(struct wg_downstream *d, const char *reason, const char *message)
{
    struct wg_exchange *r = d->r;
    if (!r)
        return;
    if (r->grpc && (d->payload_only || r->grpc_web) && r->final_sent && d->rs == WG_RS_DONE)
        return;                         /* its end (trailers, trailer frame) is on its way */
    d->end_reason = reason;
    if (auth_active(r))                 /* nothing of the auth service's answer is out */
        auth_end(d, reason);
    if (r->grpc && !r->final_sent && (d->rq == WG_RQ_BODY || d->rq == WG_RQ_SENT)) {
        char text[96];                  /* no byte of the response out yet: Trailers-Only */
        snprintf(text, sizeof text, "waygate: %s", message);
        reply(d, 503, NULL, text, false);
        return;
    }
    if (!grpc_cut(d, WG_GRPC_UNAVAILABLE, message))
        d->dead = true;
}

bool wg_exchange_cut(struct wg_downstream *d, uint64_t now_ms)
{
    if (!d->r || !d->r->inst || !d->r->svc)
        return false;
    enum wg_health_cut cut = wg_health_conn_cut(d->r->svc->cfg, d->r->inst, d->r->inst_gen, now_ms);
    if (cut == WG_CUT_NONE)
        return false;
    wg_exchange_abort(d, wg_health_cut_name(cut),
                      cut == WG_CUT_DRAIN_TIMEOUT ? "upstream drained (drain_timeout)"
                                                  : "upstream unhealthy (on_unhealthy: close)");
    return true;
}

static void response_step(struct wg_downstream *d, bool *progress)
{
    if (!d->r)                          /* idle, or lingering: nothing to send */
        return;
    if (d->rs == WG_RS_HEAD && (d->r->up ? !d->r->up->connecting : d->r->h2_on))
        response_head_step(d, progress);
    if (auth_active(d->r)) {            /* nothing of it goes to the client */
        if (d->rs == WG_RS_BODY && !d->dead)
            auth_body_step(d, progress);
        return;
    }
    if (d->rs == WG_RS_BODY && !d->dead)   /* the body bytes read with the head go out with it */
        response_body_step(d, progress);
    if (d->dead)
        return;
    d->ops->flush(d, progress);
    if (d->dead || d->rs != WG_RS_DONE || !d->ops->flushed(d))
        return;
    if (d->rq == WG_RQ_TUNNEL) {
        d->ops->shutdown(d);            /* forward the upstream's half-close */
        if (d->r->u_shut)
            d->dead = true;
        return;
    }
    if (d->rq == WG_RQ_SENT || (d->rq == WG_RQ_BODY && d->r->close_after)) {
        d->ops->end(d);
        *progress = true;
    }
}

void wg_exchange_step(struct wg_downstream *d, bool *progress)
{
    if (d->r && d->r->up && d->r->up->connecting &&
        (d->r->up->writable || (d->r->up->tls_pending && d->r->up->readable)))
        upstream_connect_done(d);
    if (!d->dead && (d->rq == WG_RQ_BODY || d->rq == WG_RQ_TUNNEL))
        request_body_step(d, progress);
    if (!d->dead)
        response_step(d, progress);
}

/* ---- deadlines (DESIGN §6) -------------------------------------------- */

uint64_t wg_exchange_deadline(const struct wg_downstream *d, enum wg_deadline *kind)
{
    uint64_t t = UINT64_MAX;
    const struct hp_buf *b = d->in;
    *kind = WG_DL_NONE;
    if (!d->r)                          /* idle or lingering: no request, no upstream */
        return t;
    /* A gRPC stream whose response head is out is judged like a tunnel
     * (DESIGN §15): idle when neither side moved for tunnel_idle_timeout,
     * whichever side streams (no client_body_timeout, no response_timeout) */
    bool grpc_stream = d->r->grpc && d->r->final_sent;
#define CANDIDATE(v, k) do { if ((v) < t) { t = (v); *kind = (k); } } while (0)
    if (auth_active(d->r)) {            /* forward_auth: its own timeout bounds it all */
        CANDIDATE(d->r->auth->deadline, WG_DL_RESPONSE);
        if (d->r->up && d->r->up->connecting)
            CANDIDATE(d->r->connect_deadline, WG_DL_CONNECT);
        return t;
    }
    if (d->rq == WG_RQ_BODY && !grpc_stream) {  /* waiting for the client, not the upstream */
        if ((d->r->up ? !d->r->up->connecting : d->r->h2_on) && !d->r->req_body_done &&
            (!b || b->sent == b->fwd))
            CANDIDATE(d->client_progress + d->r->t.body_ms, WG_DL_BODY);
    } else if (d->rq == WG_RQ_TUNNEL) {
        CANDIDATE((d->client_progress > d->r->upstream_progress ? d->client_progress
                                                                : d->r->upstream_progress) +
                  d->r->t.tunnel_ms, WG_DL_TUNNEL);
    }
    if (d->r->up && d->r->up->connecting)
        CANDIDATE(d->r->connect_deadline, WG_DL_CONNECT);
    if (d->rs == WG_RS_HEAD && d->rq == WG_RQ_SENT &&
        (d->r->up ? !d->r->up->connecting : d->r->h2_on))
        CANDIDATE(d->r->response_deadline, WG_DL_RESPONSE);
    if (d->rs == WG_RS_BODY && d->rq != WG_RQ_TUNNEL && !d->blocked_since && (d->r->up || d->r->h2_on)) {
        uint64_t last = d->r->upstream_progress;
        if (grpc_stream && d->client_progress > last)
            last = d->client_progress;
        CANDIDATE(last + (grpc_stream ? d->r->t.tunnel_ms : d->r->t.response_ms), WG_DL_UPSTREAM_IDLE);
    }
    if (d->blocked_since)
        CANDIDATE(d->blocked_since + d->r->t.send_ms, WG_DL_SEND);
    /* The upstream does not read the request; once its final response
     * streams, that response's own deadlines judge it instead. */
    if (d->r->up_blocked_since && d->rq == WG_RQ_BODY && d->r->up && !d->r->final_sent)
        CANDIDATE(d->r->up_blocked_since + d->r->t.send_ms, WG_DL_UPSTREAM_SEND);
#undef CANDIDATE
    return t;
}

void wg_exchange_timeout(struct wg_downstream *d, enum wg_deadline kind)
{
    wg_stats_add(d->w->stats, WG_C_HTTP_TIMEOUTS, 1);
    if (kind == WG_DL_CONNECT && auth_active(d->r)) {
        connect_failed(d, 0);           /* the next auth instance, within the timeout */
        return;
    }
    if (auth_failed(d))
        return;
    d->end_reason = "timeout";
    switch (kind) {
    case WG_DL_BODY:
        request_body_error(d, 408);
        break;
    case WG_DL_CONNECT:
        connect_failed(d, 0);
        break;
    case WG_DL_RESPONSE:
        report_failure(d, WG_FAIL_TIMEOUT);
        fail_upstream(d, 504);
        break;
    case WG_DL_UPSTREAM_SEND:           /* the upstream stopped reading the request */
        wg_info("msg=\"upstream stopped reading the request\" service=%s upstream=%s",
                d->r->svc->name, d->r->inst->id);
        report_failure(d, WG_FAIL_TIMEOUT);
        fail_upstream(d, 504);
        break;
    case WG_DL_UPSTREAM_IDLE:           /* a gRPC client reads the status */
        if (!grpc_cut(d, WG_GRPC_DEADLINE_EXCEEDED, "stream idle past tunnel_idle_timeout"))
            d->dead = true;
        break;
    default:                            /* send, tunnel */
        d->dead = true;
        break;
    }
}
