/* http_proxy — see include/waygate/http_proxy.h
 *
 * Reading order: buffers and per-worker state; the connection; errors we
 * answer ourselves; the request (head, route, upstream head); picking and
 * connecting with retries; forwarding the request body; the response (head,
 * body); the end of a request (keep-alive or close); timeouts; the pump that
 * drives it all from the events; accept. */
#include "waygate/http_proxy.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/event.h>
#include <event2/event_struct.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include "waygate/balance.h"
#include "waygate/health.h"
#include "waygate/http.h"
#include "waygate/http_route.h"
#include "waygate/listener.h"
#include "waygate/log.h"
#include "waygate/pool.h"
#include "waygate/proxy_protocol.h"
#include "waygate/stats.h"
#include "waygate/tls.h"
#include "waygate/upstream_pool.h"
#include "waygate/worker.h"

#define HP_MAGIC 0x48707830U
#define HP_BLOCK (16u * 1024u)          /* one I/O buffer */
#define HP_SPARE_BLOCKS 64              /* per worker free list (1 MiB): a burst leaves little behind */
#define HP_SMALL (2048u - 32u)          /* a head we build, a log note: 2 KiB with its header */
#define HP_SPARE_SMALL 128              /* (256 KiB) */
#define HP_SPARE_HEADS 16
#define HP_SPARE_REQS 64
#define HP_MAX_HEADERS 128
#define HP_ROUNDS 32                    /* pump rounds per event, for fairness */
#define HP_LINGER_MS 30000              /* lingering close after an error: at most this long */
#define HP_LINGER_IDLE_MS 5000          /* ... and this long without a byte (nginx's values) */
#define HP_MAX_LINGER 1024              /* lingering connections per worker; past it, close */
#define HP_HEAD_EXTRA 1024              /* room for the fields we add to a head */
#define HP_MAX_INTERIM 16               /* interim (1xx) heads per request, then 502 */
#define HP_CONN_TOKENS 16               /* Connection tokens kept; past them, a rescan */

/* ---- buffers -------------------------------------------------------------
 * One block of bytes read from one side: [start, sent) is kept for a replay,
 * [sent, fwd) is ready to be written to the other side, [fwd, scan) was
 * framing the decoder dropped (de-chunking only), [scan, end) is not decoded
 * yet. Heads we build use sent and end only. */
struct hp_buf {
    struct hp_buf *next;
    uint32_t cap;
    uint32_t start, sent, fwd, scan, end;
    char data[];
};
_Static_assert(sizeof(struct hp_buf) == 32, "HP_SMALL makes a 2 KiB block with a 32-byte header");

/* Parser state for one head, held only while that head is being parsed. */
struct hp_head {
    struct hp_head *next;
    struct wg_http_parser p;
    struct wg_http_header h[HP_MAX_HEADERS];
};

/* A worker's free list of equal-sized objects whose first member is the
 * link (hp_buf, hp_head, hp_req): a request in steady state allocates
 * nothing; past `max` spares, objects go back to malloc. */
struct hp_spares {
    void *first;
    unsigned n, max;
};

_Static_assert(offsetof(struct hp_buf, next) == 0 && offsetof(struct hp_head, next) == 0,
               "spare lists link objects through their first member");

static void *spare_get(struct hp_spares *s, size_t size)
{
    void **o = s->first;
    if (!o)
        return malloc(size);
    s->first = *o;
    s->n--;
    return o;
}

static void spare_put(struct hp_spares *s, void *o)
{
    if (s->n >= s->max) {
        free(o);
        return;
    }
    *(void **)o = s->first;
    s->first = o;
    s->n++;
}

static void spares_free(struct hp_spares *s)
{
    while (s->first) {
        void **o = s->first;
        s->first = *o;
        free(o);
    }
    s->n = 0;
}

/* Per worker thread: free lists and the upstream keep-alive pool. */
struct hp_local {
    struct hp_spares bufs[2];           /* free blocks: [0] small, [1] HP_BLOCK */
    struct hp_spares heads, reqs;
    struct wg_upstream_pool *pool;
    unsigned lingering;                 /* connections in RQ_LINGER */
};

static pthread_key_t hp_key;
static pthread_once_t hp_once = PTHREAD_ONCE_INIT;
static _Thread_local struct hp_local *hp_tls;

static void local_free(void *arg)
{
    struct hp_local *loc = arg;
    wg_upstream_pool_free(loc->pool);
    spares_free(&loc->bufs[0]);
    spares_free(&loc->bufs[1]);
    spares_free(&loc->heads);
    spares_free(&loc->reqs);
    free(loc);
}

static void key_init(void)
{
    if (pthread_key_create(&hp_key, local_free) != 0)
        wg_error("msg=\"http: cannot create the worker key\"");
}

static struct hp_local *local_get(struct wg_worker *w)
{
    if (hp_tls)
        return hp_tls;
    pthread_once(&hp_once, key_init);
    struct hp_local *loc = calloc(1, sizeof *loc);
    if (loc) {
        loc->bufs[0].max = HP_SPARE_SMALL;
        loc->bufs[1].max = HP_SPARE_BLOCKS;
        loc->heads.max = HP_SPARE_HEADS;
        loc->reqs.max = HP_SPARE_REQS;
    }
    if (!loc || !(loc->pool = wg_upstream_pool_new(w->base)) ||
        pthread_setspecific(hp_key, loc) != 0) {
        if (loc)
            wg_upstream_pool_free(loc->pool);
        free(loc);
        return NULL;
    }
    hp_tls = loc;
    return loc;
}

/* Two size classes keep free lists: small blocks for the heads we build
 * and the log note (an in-flight request touches little memory), HP_BLOCK
 * for I/O; anything larger (a long head) is allocated to size. */
static int buf_class(uint32_t cap) { return cap == HP_SMALL ? 0 : cap == HP_BLOCK ? 1 : -1; }

static struct hp_buf *buf_new(struct hp_local *loc, uint32_t cap)
{
    cap = cap <= HP_SMALL ? HP_SMALL : cap <= HP_BLOCK ? HP_BLOCK : cap;
    int k = buf_class(cap);
    struct hp_buf *b = k >= 0 ? spare_get(&loc->bufs[k], sizeof *b + cap) : malloc(sizeof *b + cap);
    if (!b)
        return NULL;
    b->cap = cap;
    b->next = NULL;
    b->start = b->sent = b->fwd = b->scan = b->end = 0;
    return b;
}

static void buf_free(struct hp_local *loc, struct hp_buf **bp)
{
    struct hp_buf *b = *bp;
    if (!b)
        return;
    *bp = NULL;
    int k = buf_class(b->cap);
    if (k >= 0)
        spare_put(&loc->bufs[k], b);
    else
        free(b);
}

/* Move the kept bytes to the front to make room at the end. */
static void buf_compact(struct hp_buf *b)
{
    uint32_t d = b->start;
    if (d == 0)
        return;
    memmove(b->data, b->data + d, b->end - d);
    b->start = 0;
    b->sent -= d;
    b->fwd -= d;
    b->scan -= d;
    b->end -= d;
}

/* Room for a read: a drained buffer starts over at its first byte (a
 * streamed body is read whole blocks at a time, not into what is left of
 * the tail); otherwise a full one moves its kept bytes to the front. */
static void buf_make_room(struct hp_buf *b)
{
    if (b->start == b->end)
        b->start = b->sent = b->fwd = b->scan = b->end = 0;
    else if (b->end == b->cap)
        buf_compact(b);
}

/* Bytes wait to be written and less than half the block is free: a read now
 * would fill only the tail, and the stream would go on in a small piece and
 * a large one per block (twice the reads and writes). Write first. */
static bool buf_read_later(const struct hp_buf *b)
{
    return b->sent < b->fwd && b->cap - b->end < b->cap / 2;
}

static struct hp_head *head_new(struct hp_local *loc)
{
    return spare_get(&loc->heads, sizeof(struct hp_head));
}

static void head_free(struct hp_local *loc, struct hp_head **hp)
{
    if (*hp)
        spare_put(&loc->heads, *hp);
    *hp = NULL;
}

/* ---- the connection --------------------------------------------------- */

enum hp_rq {
    RQ_IDLE,        /* between requests (or before the first) */
    RQ_HEAD,        /* reading a request head */
    RQ_BODY,        /* forwarding the request body (or waiting for a connection) */
    RQ_SENT,        /* request forwarded whole (or answered by us) */
    RQ_TUNNEL,      /* after a 101: raw bytes both ways */
    RQ_LINGER       /* error sent: read and drop until EOF, then close */
};

enum hp_rs {
    RS_NONE,        /* nothing expected from an upstream */
    RS_HEAD,        /* waiting for the response head */
    RS_BODY,        /* forwarding the response body */
    RS_DONE         /* response complete (ours or the upstream's) */
};

enum hp_deadline {
    DL_NONE, DL_IDLE, DL_HEADER, DL_BODY, DL_CONNECT, DL_RESPONSE, DL_UPSTREAM_IDLE,
    DL_SEND, DL_UPSTREAM_SEND, DL_TUNNEL, DL_LINGER
};

/* The settings of the request in progress (copied from the pinned config). */
struct hp_settings {
    uint64_t header_ms, body_ms, idle_ms, send_ms, tunnel_ms;
    uint64_t max_head, max_body;
    uint64_t connect_ms, response_ms;
    unsigned retries;
    bool retry_non_idempotent;          /* route, else service (DESIGN §6) */
    bool allow_underscores;             /* http.allow_underscores */
};

/* One request and its upstream attempt. Allocated with the connection (the
 * first request: handshake and PROXY header included) or with the first
 * byte of a later one, freed when the request ends: an idle keep-alive
 * client holds only its struct hp_conn, no request state and no buffer. */
struct hp_req {
    struct hp_req *next;                /* on the worker's free list */
    struct hp_head *head;               /* while RQ_HEAD */
    struct wg_config_ref *cfg;          /* pinned for the request */
    const struct wg_listener_config *lc;
    const struct wg_route *route;
    struct wg_pool_service *svc;        /* one reference while routed */
    struct wg_instance *inst;           /* one reference + one `active` per attempt */
    unsigned inst_gen;                  /* its down_generation when picked (health.h) */
    unsigned attempts;
    enum wg_http_method method;
    unsigned status;
    bool http10, req_keep_alive, req_upgrade, req_body_done, replayable;
    bool close_after;                   /* close the client after this response */
    bool fresh_only;                    /* next attempt on a new connection */
    bool u_eof, u_shut, up_reused, resp_started, final_sent, dechunk;
    bool upstream_keep;                 /* the response leaves the connection reusable */
    bool sent_any;                      /* this attempt wrote request bytes upstream */
    bool peer_trusted;                  /* the peer is in trusted_proxies (DESIGN §10) */
    const char *client;                 /* the client address: c->client_ip or real_ip */
    char real_ip[INET6_ADDRSTRLEN];     /* from X-Forwarded-For, behind a trusted peer */
    unsigned interim;                   /* interim (1xx) heads received */
    bool log_pending;                   /* a request to log when it ends */
    struct hp_settings t;
    struct wg_http_body rq_body;
    /* the upstream */
    struct wg_upconn *up;
    struct hp_buf *uin;                 /* from the upstream */
    struct hp_buf *uout;                /* the rewritten request head */
    struct hp_head *rhead;              /* while a response head is parsed */
    struct wg_http_body rs_body;
    /* deadlines and progress (ms, CLOCK_MONOTONIC) */
    uint64_t header_deadline, connect_deadline, response_deadline, upstream_progress;
    uint64_t up_blocked_since;          /* request bytes wait for the upstream since (0: not) */
    /* the access log's view of the request */
    struct hp_buf *note;                /* method, target, request id as sent */
    struct wg_http_span note_method, note_target, note_id;
    uint64_t req_start_ns, connect_start_ns, req_bytes_in, req_bytes_out;
    int64_t connect_us;
    struct wg_pick pick;                /* last: the tried list is long and mostly unused */
};

/* One client connection: what outlives its requests. */
struct hp_conn {
    uint32_t magic;
    int fd;
    struct wg_conn_link link;
    struct wg_worker *w;
    struct hp_local *loc;
    const struct wg_listener *l;
    struct hp_req *r;                   /* the request in progress, NULL between requests */
    struct event ev;                    /* client: EV_READ|EV_WRITE|EV_ET|EV_PERSIST */
    struct event timer;
    enum hp_rq rq;
    enum hp_rs rs;
    bool readable, writable, eof, shut;
    bool hup;                           /* EV_CLOSED seen: read until EOF */
    bool check_reset;                   /* an event while the request waits for the upstream */
    bool need_proxy;                    /* a PROXY header must come first */
    bool tls_done;                      /* handshake complete */
    bool read_wants_write;              /* SSL_read waits for the socket to be writable */
    bool write_wants_read;              /* SSL_write waits for it to be readable */
    bool dead;
    uint16_t client_port;               /* with client_ip: the client, for the access log */
    SSL *ssl;                           /* TLS listener: the session, NULL when plain */
    struct wg_tls_server *tls_server;   /* one reference during the handshake (SNI) */
    char *cert_subject;                 /* verified client certificate, RFC 4514 */
    const char *end_reason;             /* why it ended early, NULL: complete */
    struct hp_buf *in;                  /* from the client */
    struct hp_buf *out;                 /* heads (ours or rewritten) to the client */
    uint64_t blocked_since;             /* output to the client waits since (0: not) */
    uint64_t armed_ms;                  /* the timer's deadline, 0 when not armed */
    uint64_t idle_deadline, linger_deadline, client_progress;
    uint64_t linger_until;              /* the lingering close's own end */
    char client_ip[INET6_ADDRSTRLEN];   /* the peer (or what its PROXY header says) */
    struct wg_ip peer;                  /* the same, for trusted_proxies */
};

_Static_assert(offsetof(struct hp_req, next) == 0, "spare lists link through the first member");

static struct hp_req *req_new(struct hp_local *loc)
{
    struct hp_req *r = spare_get(&loc->reqs, sizeof *r);
    if (r)
        memset(r, 0, sizeof *r);
    return r;
}

static void req_free(struct hp_local *loc, struct hp_req **rp)
{
    if (*rp)
        spare_put(&loc->reqs, *rp);
    *rp = NULL;
}

static void conn_pump(struct hp_conn *c);
static void upstream_start(struct hp_conn *c);
static void upstream_connect_done(struct hp_conn *c);
static void upstream_event(struct wg_upconn *u, short what, void *owner);

static bool transient(void) { return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR; }

static struct hp_conn *conn_of(struct wg_conn_link *l)
{
    return (struct hp_conn *)((char *)l - offsetof(struct hp_conn, link));
}

/* The request's client address: the peer, or behind trusted proxies the
 * first untrusted hop of X-Forwarded-For (logs, hash_key, X-Real-IP). */
static const char *client_addr(const struct hp_conn *c)
{
    return c->r && c->r->client ? c->r->client : c->client_ip;
}

/* "ip:port" or "[v6]:port", as record.h's wg_sockaddr_text writes it; an
 * address from X-Forwarded-For has no port to show. */
static const char *client_text(const struct hp_conn *c, char *buf, size_t len)
{
    if (c->r && c->r->client && c->r->client != c->client_ip)
        snprintf(buf, len, "%s", c->r->client);
    else
        snprintf(buf, len, strchr(c->client_ip, ':') ? "[%s]:%u" : "%s:%u", c->client_ip,
                 (unsigned)c->client_port);
    return buf;
}

/* Drop what a request holds: upstream attempt, service, config. */
static void release_instance(struct hp_conn *c)
{
    if (!c->r->inst)
        return;
    atomic_fetch_sub_explicit(&c->r->inst->active, 1, memory_order_relaxed);
    wg_instance_unref(c->r->inst);
    c->r->inst = NULL;
}

static void release_upstream(struct hp_conn *c)
{
    if (c->r->up)
        wg_upconn_close(c->r->up);
    c->r->up = NULL;
    buf_free(c->loc, &c->r->uin);
    head_free(c->loc, &c->r->rhead);
    c->r->u_eof = c->r->u_shut = false;
}

/* The request is over: let go of everything it holds, and of itself. */
static void release_request(struct hp_conn *c)
{
    struct hp_req *r = c->r;
    if (!r)
        return;
    release_upstream(c);
    release_instance(c);
    buf_free(c->loc, &r->uout);
    buf_free(c->loc, &r->note);
    head_free(c->loc, &r->head);
    if (r->svc)
        wg_pool_service_unref(r->svc);
    if (r->cfg)
        wg_config_ref_put(r->cfg);
    req_free(c->loc, &c->r);
}

static void log_request(struct hp_conn *c, const char *reason);

static void conn_free(struct hp_conn *c)
{
    if (c->rq == RQ_LINGER)
        c->loc->lingering--;
    log_request(c, c->end_reason ? c->end_reason
                 : c->rq == RQ_TUNNEL ? "tunnel_closed" : "client_closed");
    release_request(c);
    event_del(&c->ev);
    event_del(&c->timer);
    if (c->ssl) {
        wg_tls_close(c->ssl);
        SSL_free(c->ssl);
    }
    wg_tls_server_unref(c->tls_server);
    free(c->cert_subject);
    close(c->fd);
    buf_free(c->loc, &c->in);
    buf_free(c->loc, &c->out);
    wg_worker_conn_remove(c->w, &c->link);
    wg_listener_conn_closed();
    c->magic = 0;
    free(c);
}

static void force_close(struct wg_conn_link *l) { conn_free(conn_of(l)); }

/* The worker's 1 s tick: idle clients go when the worker drains; requests
 * and tunnels to an instance that must be cut (drain_timeout, on_unhealthy:
 * close) end now (health.h). */
static void conn_tick(struct wg_conn_link *l, uint64_t now_ms)
{
    struct hp_conn *c = conn_of(l);
    if (c->rq == RQ_IDLE && atomic_load_explicit(&c->w->draining, memory_order_relaxed)) {
        conn_free(c);
        return;
    }
    if (!c->r || !c->r->inst || !c->r->svc)
        return;
    enum wg_health_cut cut = wg_health_conn_cut(c->r->svc->cfg, c->r->inst, c->r->inst_gen, now_ms);
    if (cut == WG_CUT_NONE)
        return;
    c->end_reason = wg_health_cut_name(cut);
    conn_free(c);
}

/* Mark for closing; the pump frees it when the current event is done. */
static void conn_kill(struct hp_conn *c) { c->dead = true; }

/* ---- passive health (health.h: outlier detection) -------------------- */

static void report_failure(struct hp_conn *c, enum wg_health_failure why)
{
    if (why == WG_FAIL_CONNECT)
        wg_stats_add(c->w->stats, WG_C_CONNECT_ERRORS, 1);
    if (wg_health_report_failure(c->r->svc, c->r->inst, why))
        wg_info("msg=\"upstream ejected\" service=%s upstream=%s address=%s", c->r->svc->name,
                c->r->inst->id, c->r->inst->addr_text);
}

static void report_success(struct hp_conn *c) { wg_health_report_success(c->r->inst); }

/* ---- writing heads ---------------------------------------------------- */

struct hp_out {
    char *p;
    size_t n, cap;
    bool full;
};

static void put(struct hp_out *o, const char *s, size_t n)
{
    if (o->n + n > o->cap) {
        o->full = true;
        return;
    }
    memcpy(o->p + o->n, s, n);
    o->n += n;
}

static void puts_(struct hp_out *o, const char *s) { put(o, s, strlen(s)); }

static void put_span(struct hp_out *o, const char *base, struct wg_http_span s)
{
    put(o, base + s.off, s.len);
}

static void put_u64(struct hp_out *o, uint64_t v)
{
    char tmp[24];
    size_t n = sizeof tmp;
    do {
        tmp[--n] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    put(o, tmp + n, sizeof tmp - n);
}

/* Room for `need` more bytes after the pending bytes of *bp (a head buffer
 * that may still hold unsent heads); NULL when out of memory. */
static struct hp_out out_open(struct hp_local *loc, struct hp_buf **bp, size_t need)
{
    struct hp_buf *b = *bp;
    if (b && b->sent == b->end)
        b->sent = b->end = 0;
    if (b && b->end + need > b->cap) {
        struct hp_buf *nb = buf_new(loc, (uint32_t)(b->end - b->sent + need));
        if (nb) {
            nb->end = b->end - b->sent;
            memcpy(nb->data, b->data + b->sent, nb->end);
        }
        buf_free(loc, bp);
        *bp = b = nb;
    } else if (!b) {
        *bp = b = buf_new(loc, (uint32_t)need);
    }
    if (!b)
        return (struct hp_out){ NULL, 0, 0, true };
    return (struct hp_out){ b->data + b->end, 0, b->cap - b->end, false };
}

static void out_close(struct hp_buf *b, const struct hp_out *o)
{
    if (b && !o->full)
        b->end += (uint32_t)o->n;
}

/* ---- errors we answer ourselves (DESIGN §13) -------------------------- */

static const char *reason_of(unsigned status)
{
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 408: return "Request Timeout";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 431: return "Request Header Fields Too Large";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return "Error";
    }
}

static void count_status(struct hp_conn *c, unsigned status)
{
    static const enum wg_counter cls[] = { WG_C_HTTP_1XX, WG_C_HTTP_2XX, WG_C_HTTP_3XX,
                                           WG_C_HTTP_4XX, WG_C_HTTP_5XX };
    wg_stats_add(c->w->stats, WG_C_HTTP_REQUESTS, 1);
    if (status >= 100 && status < 600)
        wg_stats_add(c->w->stats, cls[status / 100 - 1], 1);
}

/* Answer `status` with a short text body; the request ends with it. `keep`:
 * the connection may carry another request (only when nothing of this
 * request is left unread). */
static void reply(struct hp_conn *c, unsigned status, const char *body, bool keep)
{
    char text[64];
    if (!body) {
        snprintf(text, sizeof text, "%u %s\n", status, reason_of(status));
        body = text;
    }
    keep = keep && c->r->req_keep_alive && !atomic_load_explicit(&c->w->draining, memory_order_relaxed);
    struct hp_out o = out_open(c->loc, &c->out, 256 + strlen(body));
    puts_(&o, "HTTP/1.1 ");
    put_u64(&o, status);
    puts_(&o, " ");
    puts_(&o, reason_of(status));
    puts_(&o, "\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ");
    put_u64(&o, strlen(body));
    puts_(&o, keep ? (c->r->http10 ? "\r\nConnection: keep-alive\r\n\r\n" : "\r\n\r\n")
                   : "\r\nConnection: close\r\n\r\n");
    if (c->r->method != WG_HTTP_HEAD)
        puts_(&o, body);
    out_close(c->out, &o);
    if (o.full) {
        conn_kill(c);
        return;
    }
    count_status(c, status);
    c->r->status = status;
    if (status == 408 || status == 504)
        wg_stats_add(c->w->stats, WG_C_HTTP_TIMEOUTS, 1);
    release_upstream(c);
    c->r->final_sent = true;
    c->r->close_after = !keep;
    c->rs = RS_DONE;
    if (c->rq != RQ_IDLE && c->rq != RQ_HEAD)
        c->r->req_body_done = true;
    c->rq = RQ_SENT;
}

/* An upstream failure: answer `status` if the client has seen nothing of
 * the response yet, else cut the connection (the response is truncated). */
static void fail_upstream(struct hp_conn *c, unsigned status)
{
    c->end_reason = "upstream_error";
    if (c->r->final_sent)                  /* interim responses may precede a 502 */
        conn_kill(c);
    else
        reply(c, status, NULL, false);
}

/* ---- the access log (log.h) ------------------------------------------- */

/* Keep what the access log needs of a head that is about to be dropped. */
static bool note_request(struct hp_conn *c, const struct wg_http_parser *p, const char *msg)
{
    const struct wg_http_message *m = &p->msg;
    struct hp_buf *b = buf_new(c->loc, m->method_text.len + m->target.len + 320);
    if (!b)
        return false;
    memcpy(b->data, msg + m->method_text.off, m->method_text.len);
    memcpy(b->data + m->method_text.len, msg + m->target.off, m->target.len);
    c->r->note_method = (struct wg_http_span){ 0, m->method_text.len };
    c->r->note_target = (struct wg_http_span){ m->method_text.len, m->target.len };
    c->r->note_id = (struct wg_http_span){ 0, 0 };
    b->end = m->method_text.len + m->target.len;
    c->r->note = b;
    c->r->log_pending = true;
    return true;
}

static void note_request_id(struct hp_conn *c, const char *id, size_t len)
{
    struct hp_buf *b = c->r->note;
    if (!b)
        return;
    len = len < 256 ? len : 256;
    memcpy(b->data + b->end, id, len);
    c->r->note_id = (struct wg_http_span){ b->end, (uint32_t)len };
    b->end += (uint32_t)len;
}

/* Once per request, when it is over, before its references go. */
static void log_request(struct hp_conn *c, const char *reason)
{
    if (!c->r || !c->r->log_pending)
        return;
    c->r->log_pending = false;
    const char *base = c->r->note ? c->r->note->data : "";
    char client[INET6_ADDRSTRLEN + 8];
    struct wg_access_entry e = {
        .client = wg_access_log_enabled() ? client_text(c, client, sizeof client) : NULL,
        .listener = c->r->lc ? c->r->lc->name : c->l->name,
        .service = c->r->svc ? c->r->svc->name : NULL,
        .upstream = c->r->inst ? c->r->inst->id : NULL,
        .method = NULL,
        .path = base + c->r->note_target.off,
        .path_len = c->r->note_target.len,
        .request_id = c->r->note_id.len ? base + c->r->note_id.off : NULL,
        .request_id_len = c->r->note_id.len,
        .status = c->r->final_sent ? c->r->status : 0,
        .reason = reason,
        .bytes_in = c->r->req_bytes_in,
        .bytes_out = c->r->req_bytes_out,
        .duration_us = (wg_now_ns() - c->r->req_start_ns) / 1000,
        .connect_us = c->r->connect_us,
        .retries = c->r->attempts > 1 ? c->r->attempts - 1 : 0,
    };
    char method[32];
    size_t mlen = c->r->note_method.len < sizeof method - 1 ? c->r->note_method.len : sizeof method - 1;
    memcpy(method, base + c->r->note_method.off, mlen);
    method[mlen] = '\0';
    e.method = method;
    wg_access_log(c->w->access_log, &e);
    if (c->r->svc)
        wg_service_observe_duration(c->r->svc->state, e.duration_us);
}

/* ---- the request head ------------------------------------------------- */

/* Defaults of DESIGN §5 for a connection accepted before any config. */
static const struct hp_settings hp_defaults = {
    .header_ms = 10000, .body_ms = 60000, .idle_ms = 60000, .send_ms = 60000,
    .tunnel_ms = 3600000, .max_head = 32768,
};

/* Pin the config current now for the request about to start. */
static bool request_pin(struct hp_conn *c)
{
    struct wg_snapshot *s = wg_pool_current(c->w->pool);
    const struct wg_listener_config *lc = s ? wg_listener_config_in(s->config->cfg, c->l) : NULL;
    if (!lc)
        return false;
    wg_config_ref_get(s->config);
    c->r->cfg = s->config;
    c->r->lc = lc;
    c->r->t.header_ms = lc->http.client_header_timeout_ms;
    c->r->t.body_ms = lc->http.client_body_timeout_ms;
    c->r->t.idle_ms = lc->http.client_idle_timeout_ms;
    c->r->t.send_ms = lc->http.send_timeout_ms;
    c->r->t.tunnel_ms = lc->http.tunnel_idle_timeout_ms;
    c->r->t.allow_underscores = lc->http.allow_underscores;
    c->r->t.max_head = lc->http.max_header_size;
    c->r->t.max_body = lc->http.max_body_size;
    const struct wg_cidr_list *tl = wg_listener_trusted(s->config->cfg, lc);
    c->r->peer_trusted = tl->n && wg_cidr_match(tl, &c->peer);
    return true;
}

/* A request starts with its first byte: its state (the first one's came
 * with the connection), pin, start the header deadline. */
static bool request_begin(struct hp_conn *c, uint64_t now)
{
    if (!c->r) {
        if (!(c->r = req_new(c->loc))) {
            conn_kill(c);
            return false;
        }
        c->r->t = hp_defaults;          /* until a config is pinned */
    }
    if (!c->r->cfg)
        request_pin(c);
    c->rq = RQ_HEAD;
    c->r->header_deadline = now + c->r->t.header_ms;
    c->r->method = WG_HTTP_OTHER;
    c->r->http10 = false;
    c->r->req_keep_alive = true;
    c->r->req_upgrade = c->r->req_body_done = c->r->replayable = c->r->close_after = false;
    c->r->fresh_only = c->r->up_reused = c->r->resp_started = c->r->final_sent = c->r->dechunk = false;
    c->r->attempts = c->r->interim = 0;
    c->r->status = 0;
    c->r->client = NULL;
    c->end_reason = NULL;
    c->r->req_start_ns = wg_now_ns();
    c->r->req_bytes_in = c->in ? c->in->end - c->in->scan : 0;
    c->r->req_bytes_out = 0;
    c->r->connect_us = -1;
    c->rs = RS_NONE;
    return true;
}

static bool is_name(const char *base, const struct wg_http_header *h, const char *name, size_t n)
{
    return h->name.len == n && wg_http_name_eq(base + h->name.off, n, name, n);
}

#define IS(h, lit) is_name(msg, (h), lit, sizeof lit - 1)

/* Field names a Connection header lists (hop-by-hop by declaration). The
 * first HP_CONN_TOKENS are kept; a head that lists more is rare and slow:
 * listed() then scans its Connection fields again, so that no listed name
 * is ever forwarded however many there are. */
struct hp_conn_tokens {
    struct wg_http_span v[HP_CONN_TOKENS];
    unsigned n;
    bool more;                          /* tokens past the kept ones */
    const struct wg_http_parser *p;
};

static void connection_tokens(const struct wg_http_parser *p, const char *msg,
                              struct hp_conn_tokens *t)
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
            if (t->n == HP_CONN_TOKENS) {
                t->more = true;
                break;
            }
            t->v[t->n++] = item;
        }
    }
}

static bool listed(const struct hp_conn_tokens *t, const char *msg, const struct wg_http_header *h)
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

/* Hop-by-hop (DESIGN §10): never forwarded, except the Upgrade field of an
 * upgrade. Framing fields stay even when Connection names them. */
static bool hop_by_hop(const struct hp_conn_tokens *t, const char *msg,
                       const struct wg_http_header *h, bool upgrade)
{
    switch (h->id) {
    case WG_HTTP_HDR_CONNECTION: case WG_HTTP_HDR_KEEP_ALIVE:
    case WG_HTTP_HDR_PROXY_CONNECTION: case WG_HTTP_HDR_TE: case WG_HTTP_HDR_TRAILER:
        return true;
    case WG_HTTP_HDR_UPGRADE:
        return !upgrade;
    case WG_HTTP_HDR_OTHER:
        return t->n && listed(t, msg, h);
    default:
        return false;
    }
}

static void put_request_line(struct hp_conn *c, struct hp_out *o, const char *msg,
                             const struct wg_http_message *m)
{
    put_span(o, msg, m->method_text);
    put(o, " ", 1);
    if (m->target_form == WG_HTTP_TARGET_ASTERISK) {
        put(o, "*", 1);
    } else {
        bool slash;
        size_t off = wg_route_strip(c->r->route, msg + m->path.off, m->path.len, &slash);
        if (slash)
            put(o, "/", 1);
        put(o, msg + m->path.off + off, m->path.len - off);
        if (m->has_query) {
            put(o, "?", 1);
            put_span(o, msg, m->query);
        }
    }
    puts_(o, " HTTP/1.1\r\n");
}

static void put_request_id(struct hp_conn *c, struct hp_out *o)
{
    static const char hex[] = "0123456789abcdef";
    char id[32];
    uint64_t a = wg_rng_next(&c->w->rng), b = wg_rng_next(&c->w->rng);
    for (int k = 0; k < 16; k++) {
        id[k] = hex[(a >> (4 * k)) & 15];
        id[16 + k] = hex[(b >> (4 * k)) & 15];
    }
    puts_(o, "X-Request-Id: ");
    put(o, id, sizeof id);
    note_request_id(c, id, sizeof id);
    puts_(o, "\r\n");
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
static void resolve_client(struct hp_conn *c, const struct wg_http_parser *p, const char *msg)
{
    const struct wg_cidr_list *tl = wg_listener_trusted(c->r->cfg->cfg, c->r->lc);
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
    if (have && inet_ntop(found.family, found.a, c->r->real_ip, sizeof c->r->real_ip))
        c->r->client = c->r->real_ip;
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

static void put_field(struct hp_out *o, const char *msg, const struct wg_http_header *h)
{
    put_span(o, msg, h->name);
    put(o, ": ", 2);
    put_span(o, msg, h->value);
    put(o, "\r\n", 2);
}

/* X-Forwarded-For: from a trusted peer the values received, in order, then
 * the peer; from anyone else only the peer (DESIGN §10: replaced). */
static void put_xff(struct hp_conn *c, struct hp_out *o, const struct wg_http_parser *p,
                    const char *msg, unsigned n_xff)
{
    puts_(o, "X-Forwarded-For: ");
    for (unsigned i = 0; n_xff && i < p->msg.nheaders; i++) {
        const struct wg_http_header *h = &p->headers[i];
        if (h->id == WG_HTTP_HDR_OTHER && IS(h, "x-forwarded-for") && h->value.len) {
            put_span(o, msg, h->value);
            put(o, ", ", 2);
        }
    }
    puts_(o, c->client_ip);
    puts_(o, "\r\nX-Real-IP: ");
    puts_(o, client_addr(c));
    put(o, "\r\n", 2);
}

/* The head sent upstream, built in one pass over the parsed fields. */
static bool build_upstream_head(struct hp_conn *c, const struct wg_http_parser *p,
                                const char *msg, size_t head_len)
{
    const struct wg_http_message *m = &p->msg;
    bool absolute = m->target_form == WG_HTTP_TARGET_ABSOLUTE, has_id = false;
    bool trusted = c->r->peer_trusted, has_proto = false, has_fhost = false;
    unsigned n_xff = 0;
    struct hp_conn_tokens tok;
    struct hp_out o = out_open(c->loc, &c->r->uout, head_len + HP_HEAD_EXTRA);

    connection_tokens(p, msg, &tok);
    put_request_line(c, &o, msg, m);
    if (!m->has_host || absolute) {     /* the authority becomes Host */
        puts_(&o, "Host: ");
        if (m->has_host)
            put_span(&o, msg, m->host);
        else
            puts_(&o, c->l->addr.text);
        put(&o, "\r\n", 2);
    }
    for (unsigned i = 0; i < m->nheaders; i++) {
        const struct wg_http_header *h = &p->headers[i];
        if (hop_by_hop(&tok, msg, h, m->upgrade) || (absolute && h->id == WG_HTTP_HDR_HOST) ||
            (m->underscore && h->id == WG_HTTP_HDR_OTHER &&
             underscored(msg, h, c->r->t.allow_underscores)))
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
            note_request_id(c, msg + h->value.off, h->value.len);
        }
        put_field(&o, msg, h);
    }
    put_xff(c, &o, p, msg, n_xff);
    if (!has_proto)
        puts_(&o, c->ssl ? "X-Forwarded-Proto: https\r\n" : "X-Forwarded-Proto: http\r\n");
    if (c->cert_subject) {              /* inbound X-Client-Cert-* were dropped above */
        puts_(&o, "X-Client-Cert-Subject: ");
        puts_(&o, c->cert_subject);
        put(&o, "\r\n", 2);
    }
    if (m->has_host && !has_fhost) {
        puts_(&o, "X-Forwarded-Host: ");
        put_span(&o, msg, m->host);
        put(&o, "\r\n", 2);
    }
    if (!has_id)
        put_request_id(c, &o);
    puts_(&o, m->upgrade ? "Connection: upgrade\r\n\r\n" : "\r\n");
    out_close(c->r->uout, &o);
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

static void pick_key(struct hp_conn *c, const struct wg_http_parser *p, const char *msg)
{
    const struct wg_service_config *sc = c->r->svc->cfg;
    struct wg_http_span v = { 0, 0 };
    bool found = false;

    if (sc->balance != WG_BALANCE_HASH)
        return;
    if (sc->hash_key == WG_HASH_CLIENT_IP) {
        c->r->pick.has_hash = true;
        const char *ip = client_addr(c);
        c->r->pick.hash = wg_balance_hash_bytes(ip, strlen(ip));
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
        c->r->pick.has_hash = true;
        c->r->pick.hash = wg_balance_hash_bytes(msg + v.off, v.len);
    }
}

/* Route the request; 0, or the status to answer. */
static unsigned request_route(struct hp_conn *c, const struct wg_http_parser *p, const char *msg)
{
    const struct wg_http_message *m = &p->msg;
    if (!c->r->lc)
        return 503;
    int r = wg_route_match(c->r->lc->routes, c->r->lc->n_routes, p, msg);
    if (r < 0)
        return 404;
    c->r->route = &c->r->lc->routes[r];
    if (c->r->t.max_body && m->has_content_length && m->content_length > c->r->t.max_body)
        return 413;
    struct wg_snapshot *s = wg_pool_current(c->w->pool);
    const struct wg_pool_service *svc = s ? wg_snapshot_service(s, c->r->route->service) : NULL;
    if (!svc)
        return 503;
    wg_pool_service_ref((struct wg_pool_service *)svc);
    c->r->svc = (struct wg_pool_service *)svc;
    c->r->t.connect_ms = svc->cfg->connect_timeout_ms;
    c->r->t.response_ms = c->r->route->response_timeout_ms >= 0 ? (uint64_t)c->r->route->response_timeout_ms
                                                          : svc->cfg->response_timeout_ms;
    c->r->t.retries = c->r->route->retries >= 0 ? (unsigned)c->r->route->retries : svc->cfg->retries;
    c->r->t.retry_non_idempotent = c->r->route->retry_non_idempotent >= 0
                                   ? c->r->route->retry_non_idempotent > 0
                                   : svc->cfg->retry_non_idempotent;
    wg_pick_init(&c->r->pick, svc, &c->w->rng, NULL);
    pick_key(c, p, msg);
    return 0;
}

/* 308 to the https URL of the request (tls.redirect_http: https). */
static void reply_redirect(struct hp_conn *c, const struct wg_http_parser *p, const char *msg,
                           bool keep)
{
    const struct wg_http_message *m = &p->msg;
    char host[WG_ROUTE_HOST_MAX + 1];
    size_t hlen = m->has_host ? wg_route_host_normalize(msg + m->host.off, m->host.len, host) : 0;
    if (hlen == 0 || m->target_form == WG_HTTP_TARGET_ASTERISK) {
        reply(c, 400, NULL, false);
        return;
    }
    struct hp_out o = out_open(c->loc, &c->out, 256 + hlen + m->target.len);
    puts_(&o, "HTTP/1.1 308 Permanent Redirect\r\nLocation: https://");
    put(&o, host, hlen);
    if (m->path.len == 0)
        put(&o, "/", 1);
    put_span(&o, msg, m->path);
    if (m->has_query) {
        put(&o, "?", 1);
        put_span(&o, msg, m->query);
    }
    puts_(&o, "\r\nContent-Length: 0\r\n");
    keep = keep && c->r->req_keep_alive;
    puts_(&o, keep ? (c->r->http10 ? "Connection: keep-alive\r\n\r\n" : "\r\n")
                   : "Connection: close\r\n\r\n");
    out_close(c->out, &o);
    if (o.full) {
        conn_kill(c);
        return;
    }
    count_status(c, 308);
    c->r->status = 308;
    c->r->final_sent = c->r->req_body_done = true;
    c->r->close_after = !keep;
    c->rs = RS_DONE;
    c->rq = RQ_SENT;
}

/* The head is complete: check, route, rewrite, then start the upstream. */
static void request_head_done(struct hp_conn *c, size_t head_len)
{
    struct hp_buf *b = c->in;
    const struct wg_http_parser *p = &c->r->head->p;
    const struct wg_http_message *m = &p->msg;
    const char *msg = b->data + b->start;
    bool body = m->framing == WG_HTTP_BODY_CHUNKED ||
                (m->framing == WG_HTTP_BODY_LENGTH && m->content_length > 0);
    enum wg_http_framing framing = m->framing;
    uint64_t length = m->content_length;
    unsigned status;

    c->r->method = m->method;
    c->r->http10 = m->version == 10;
    c->r->req_keep_alive = m->keep_alive;
    c->r->req_upgrade = m->upgrade;
    if (!note_request(c, p, msg)) {
        conn_kill(c);
        return;
    }
    if (c->r->peer_trusted)
        resolve_client(c, p, msg);
    if (c->r->lc && c->r->lc->tls.redirect_http && strcmp(c->r->lc->tls.redirect_http, "https") == 0) {
        reply_redirect(c, p, msg, !body);
        status = 0;
    } else if ((status = request_route(c, p, msg)) == 0 && !build_upstream_head(c, p, msg, head_len)) {
        status = 431;
    }
    head_free(c->loc, &c->r->head);
    b->start += (uint32_t)head_len;
    b->sent = b->fwd = b->scan = b->start;
    c->client_progress = wg_now_ms();
    if (status)
        reply(c, status, status == 503 ? "no healthy upstream\n" : NULL, !body);
    if (c->rq != RQ_HEAD)
        return;
    wg_http_body_init(&c->r->rq_body, framing, length, 0);
    c->r->req_body_done = !body;
    c->r->replayable = true;
    c->rq = RQ_BODY;
    upstream_start(c);
}

/* ---- reading ---------------------------------------------------------- */

/* ---- TLS on the client side (TLS listeners) ----------------------------
 * The same contract as read(2)/writev(2) for the callers: >0 bytes, 0 EOF,
 * -1 with errno EAGAIN when the socket must become ready. A read that needs
 * the socket writable (or a write that needs it readable) is remembered so
 * that client_event turns the other edge into a retry. */
static ssize_t tls_read(SSL *ssl, bool *read_wants_write, char *buf, size_t len)
{
    size_t n = 0;
    switch (wg_tls_read(ssl, buf, len, &n)) {
    case WG_TLS_OK:
        return (ssize_t)n;
    case WG_TLS_EOF:
        return 0;
    case WG_TLS_WANT_WRITE:
        *read_wants_write = true;
        /* fall through */
    case WG_TLS_WANT_READ:
        errno = EAGAIN;
        return -1;
    default:
        errno = ECONNRESET;
        return -1;
    }
}

/* Write the head then the body bytes, as flush_to() does with writev. A
 * pending head goes out in ONE TLS record with the first body bytes (copied
 * together, up to 16 KiB): a small response costs one record and one write,
 * not two. The length of a write retried after WANT_* never shrinks (pending
 * bytes only grow), as OpenSSL requires. */
#define HP_TLS_RECORD 16384
static _Thread_local char tls_coalesce[HP_TLS_RECORD];

static enum wg_tls_io tls_write_head(SSL *ssl, struct hp_buf *head, struct hp_buf *body,
                                     ssize_t *total)
{
    size_t hlen = head->end - head->sent, blen = body ? body->fwd - body->sent : 0;
    size_t take = hlen + blen < HP_TLS_RECORD ? hlen + blen : HP_TLS_RECORD;
    size_t from_head = hlen < take ? hlen : take;
    memcpy(tls_coalesce, head->data + head->sent, from_head);
    if (take > from_head)
        memcpy(tls_coalesce + from_head, body->data + body->sent, take - from_head);
    size_t n = 0;
    enum wg_tls_io r = wg_tls_write(ssl, tls_coalesce, take, &n);
    if (r == WG_TLS_OK) {
        size_t h = n < hlen ? n : hlen;
        head->sent += (uint32_t)h;
        if (n > h)
            body->sent += (uint32_t)(n - h);
        *total += (ssize_t)n;
    }
    return r;
}

static ssize_t tls_flush(SSL *ssl, bool *writable, bool *write_wants_read, struct hp_buf *head,
                         struct hp_buf *body)
{
    ssize_t total = 0;
    while (*writable && ((head && head->sent < head->end) || (body && body->sent < body->fwd))) {
        enum wg_tls_io r;
        if (head && head->sent < head->end) {
            r = tls_write_head(ssl, head, body, &total);
        } else {
            size_t n = 0;
            r = wg_tls_write(ssl, body->data + body->sent, body->fwd - body->sent, &n);
            if (r == WG_TLS_OK) {
                body->sent += (uint32_t)n;
                total += (ssize_t)n;
            }
        }
        if (r == WG_TLS_OK)
            continue;
        if (r != WG_TLS_WANT_WRITE && r != WG_TLS_WANT_READ)
            return -1;
        *write_wants_read = r == WG_TLS_WANT_READ;
        *writable = false;
    }
    return total;
}

/* The TLS handshake, before the first request (after a PROXY header). */
static void tls_handshake_step(struct hp_conn *c, bool *progress)
{
    enum wg_tls_io r = wg_tls_handshake(c->ssl);
    if (r == WG_TLS_WANT_READ || r == WG_TLS_WANT_WRITE) {
        if (r == WG_TLS_WANT_READ)
            c->readable = false;
        else
            c->writable = false;
        return;
    }
    if (r != WG_TLS_OK) {
        wg_stats_add(c->w->stats, wg_tls_failure_counter(), 1);
        wg_debug("msg=\"tls handshake failed\" client=%s reason=%s", c->client_ip,
                 wg_tls_error_reason());
        c->end_reason = "tls_handshake_failed";
        conn_kill(c);
        return;
    }
    c->tls_done = true;
    wg_tls_server_unref(c->tls_server);
    c->tls_server = NULL;
    wg_stats_add(c->w->stats, WG_C_TLS_HANDSHAKES, 1);
    if (SSL_session_reused(c->ssl))
        wg_stats_add(c->w->stats, WG_C_TLS_RESUMED, 1);
    char subject[400];
    if (wg_tls_client_subject(c->ssl, subject, sizeof subject))
        c->cert_subject = strdup(subject);
    if (c->r->lc)
        c->r->t.header_ms = c->r->lc->http.client_header_timeout_ms;
    c->idle_deadline = wg_now_ms() + c->r->t.header_ms;   /* now the first request's head */
    *progress = true;
}

/* One read from one side into *bp (a block taken when missing): >0 bytes,
 * 0 nothing now (*readable cleared once drained, *eof set at EOF or on an
 * error), -1 out of memory. */
static ssize_t side_read(struct hp_local *loc, struct hp_buf **bp, int fd, SSL *ssl,
                         bool *readable, bool *read_wants_write, bool hup, bool *eof)
{
    if (!*readable || *eof)
        return 0;
    if (!*bp && !(*bp = buf_new(loc, HP_BLOCK)))
        return -1;
    struct hp_buf *b = *bp;
    if (buf_read_later(b))
        return 0;
    buf_make_room(b);
    size_t space = b->cap - b->end;
    if (space == 0)
        return 0;
    ssize_t n = ssl ? tls_read(ssl, read_wants_write, b->data + b->end, space)
                    : read(fd, b->data + b->end, space);
    if (n > 0) {
        b->end += (uint32_t)n;
        if ((size_t)n < space && !hup && !ssl)
            *readable = false;          /* drained: the next edge says when (TLS: its
                                           own buffer may hold more, read until WANT_READ) */
        return n;
    }
    *readable = false;
    if (n == 0 || !transient())
        *eof = true;
    return 0;
}

/* Read from the client into c->in; bytes read (0: none now, see c->eof). */
static ssize_t client_read(struct hp_conn *c)
{
    ssize_t n = side_read(c->loc, &c->in, c->fd, c->ssl, &c->readable, &c->read_wants_write,
                          c->hup, &c->eof);
    if (n < 0) {
        conn_kill(c);
        return 0;
    }
    if (n > 0) {
        c->client_progress = wg_now_ms();
        if (c->r)
            c->r->req_bytes_in += (uint64_t)n;
        wg_stats_add(c->w->stats, WG_C_BYTES_IN, (uint64_t)n);
    }
    return n;
}

/* Read from the upstream into c->r->uin; bytes read (0: none now, see u_eof). */
static ssize_t upstream_read(struct hp_conn *c)
{
    struct wg_upconn *u = c->r->up;
    ssize_t n = side_read(c->loc, &c->r->uin, u->fd, u->ssl, &u->readable, &u->read_wants_write,
                          u->hup, &c->r->u_eof);
    if (n < 0) {
        conn_kill(c);
        return 0;
    }
    if (n > 0)
        c->r->upstream_progress = wg_now_ms();
    return n;
}

/* Write the pending head bytes of `head`, then the ready body bytes of
 * `body`, in one writev. Returns bytes written (0 when the socket is full,
 * which clears *writable), or -1 on a broken connection. */
static ssize_t flush_to(int fd, bool *writable, struct hp_buf *head, struct hp_buf *body)
{
    struct iovec iov[2];
    int n = 0;
    size_t hlen = head ? head->end - head->sent : 0, blen = body ? body->fwd - body->sent : 0;
    if (hlen)
        iov[n++] = (struct iovec){ head->data + head->sent, hlen };
    if (blen)
        iov[n++] = (struct iovec){ body->data + body->sent, blen };
    if (n == 0 || !*writable)
        return 0;
    ssize_t w = writev(fd, iov, n);
    if (w < 0) {
        if (!transient())
            return -1;
        *writable = false;
        return 0;
    }
    size_t k = (size_t)w, h = k < hlen ? k : hlen;
    if (hlen)
        head->sent += (uint32_t)h;
    if (k > h)
        body->sent += (uint32_t)(k - h);
    if (k < hlen + blen)
        *writable = false;              /* full: the next edge says when */
    return w;
}

/* Decode the undecoded bytes of `b`: raw mode leaves them in place as
 * ready; de-chunk mode moves only payload runs down to `fwd`. */
static enum wg_http_result body_decode(struct wg_http_body *d, struct hp_buf *b, bool dechunk)
{
    enum wg_http_result r = WG_HTTP_AGAIN;
    while (b->scan < b->end && r == WG_HTTP_AGAIN) {
        struct wg_http_body_step st;
        r = wg_http_body_parse(d, b->data + b->scan, b->end - b->scan, &st);
        if (r == WG_HTTP_ERROR)
            break;
        if (dechunk && st.data_len)
            memmove(b->data + b->fwd, b->data + b->scan + st.data_off, st.data_len);
        b->fwd += (uint32_t)(dechunk ? st.data_len : st.consumed);
        b->scan += (uint32_t)st.consumed;
        if (st.consumed == 0)
            break;
    }
    return r;
}

/* ---- picking and connecting (DESIGN §6) ------------------------------- */

/* Send the request again from its first byte (a retry). */
static void rewind_request(struct hp_conn *c)
{
    if (c->r->uout)
        c->r->uout->sent = 0;
    if (c->in)
        c->in->sent = c->in->start;
    if (c->rq == RQ_SENT)
        c->rq = RQ_BODY;                /* it goes out again from its first byte */
    c->rs = RS_NONE;
}

/* DESIGN §6: may the request go out again? Its bytes must still be kept,
 * and once some of them reached an upstream (which may have acted on
 * them), only an idempotent method goes again, unless the route or service
 * sets retry_non_idempotent. */
static bool may_replay(const struct hp_conn *c)
{
    return c->r->replayable && (!c->r->sent_any || wg_http_method_idempotent(c->r->method) ||
                                c->r->t.retry_non_idempotent);
}

/* This attempt failed: the next untried instance, or `status`. */
static void retry_or_fail(struct hp_conn *c, unsigned status)
{
    release_upstream(c);
    release_instance(c);
    if (c->r->attempts > c->r->t.retries || !may_replay(c)) {
        wg_info("msg=\"upstream attempts failed\" listener=%s service=%s client=%s attempts=%u "
                "status=%u", c->r->lc ? c->r->lc->name : c->l->name, c->r->svc->name, c->client_ip,
                c->r->attempts, status);
        fail_upstream(c, status);
        return;
    }
    rewind_request(c);
    upstream_start(c);                  /* counts a retry if it finds an instance */
}

static void connect_failed(struct hp_conn *c, int err)
{
    report_failure(c, WG_FAIL_CONNECT);
    wg_debug("msg=\"upstream connect failed\" service=%s upstream=%s address=%s error=\"%s\"",
             c->r->svc->name, c->r->inst->id, c->r->inst->addr_text, err ? strerror(err) : "timeout");
    retry_or_fail(c, 502);
}

/* The connection is usable: the request may flow, a response may come. */
static void upstream_ready(struct hp_conn *c)
{
    c->rs = RS_HEAD;                    /* its parser comes with the first bytes */
    c->r->upstream_progress = wg_now_ms();
    c->r->connect_us = c->r->up_reused ? 0 : (int64_t)((wg_now_ns() - c->r->connect_start_ns) / 1000);
    if (c->r->req_body_done && c->rq == RQ_BODY)
        c->r->response_deadline = c->r->upstream_progress + c->r->t.response_ms;
}

/* A connection to c->r->inst for this attempt: pooled, unless a stale pooled
 * one just failed, else new. */
static void upstream_attach(struct hp_conn *c)
{
    struct wg_upconn *u = c->r->fresh_only ? NULL
                        : wg_upstream_pool_get(c->loc->pool, c->r->inst, c, upstream_event);
    c->r->up_reused = u != NULL;
    c->r->fresh_only = false;
    c->r->sent_any = false;
    c->r->up_blocked_since = 0;
    if (u) {
        wg_stats_add(c->w->stats, WG_C_HTTP_UPSTREAM_REUSED, 1);
    } else {
        int rc = wg_upconn_open(c->loc->pool, c->r->inst, c, upstream_event, &u);
        if (rc < 0) {
            connect_failed(c, -rc);
            return;
        }
        u->writable = !u->connecting;
    }
    c->r->up = u;
    c->r->connect_start_ns = wg_now_ns();
    c->r->connect_deadline = wg_now_ms() + c->r->t.connect_ms;
    if (u->connecting)
        return;
    if (c->r->up_reused)
        upstream_ready(c);
    else
        upstream_connect_done(c);       /* connected at once: TLS may follow */
}

static void upstream_start(struct hp_conn *c)
{
    if (c->r->fresh_only && c->r->inst) {     /* free retry: same instance, new connection */
        upstream_attach(c);
        return;
    }
    wg_balance_cache_bind(&c->w->balance, &c->r->pick);
    const struct wg_member *m = wg_pick_next(&c->r->pick);
    if (!m) {
        wg_stats_add(c->w->stats, WG_C_NO_UPSTREAM, 1);
        if (c->r->attempts)
            fail_upstream(c, 502);
        else if (!c->r->final_sent)
            reply(c, 503, "no healthy upstream\n", false);
        else
            conn_kill(c);
        return;
    }
    if (c->r->attempts)
        wg_stats_add(c->w->stats, WG_C_RETRIES, 1);
    struct wg_instance *i = m->inst;
    wg_instance_ref(i);
    atomic_fetch_add_explicit(&i->active, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&i->requests_total, 1, memory_order_relaxed);
    c->r->inst = i;
    c->r->inst_gen = wg_health_conn_generation(i);
    c->r->attempts++;
    upstream_attach(c);
}

/* The service's TLS handshake, still counted as connecting (connect_timeout
 * bounds both); a failure is a failed attempt, retried elsewhere. */
static void upstream_tls_step(struct hp_conn *c)
{
    struct wg_upconn *u = c->r->up;
    enum wg_tls_io r = wg_tls_handshake(u->ssl);
    if (r == WG_TLS_OK) {
        u->tls_pending = u->connecting = false;
        upstream_ready(c);
    } else if (r == WG_TLS_WANT_READ) {
        u->readable = false;
    } else if (r == WG_TLS_WANT_WRITE) {
        u->writable = false;
    } else {
        wg_tls_upstream_failed(c->w->stats, c->r->svc->name, c->r->inst->id);
        connect_failed(c, EPROTO);
    }
}

/* EV_WRITE on a connecting socket: connected, or this attempt failed; then
 * TLS when the service wants it. */
static void upstream_connect_done(struct hp_conn *c)
{
    struct wg_upconn *u = c->r->up;
    if (u->tls_pending) {
        upstream_tls_step(c);
        return;
    }
    int err = wg_upconn_connect_result(u);
    if (err) {
        connect_failed(c, err);
        return;
    }
    SSL_CTX *ctx = wg_tls_set_service(c->r->svc->config->ext, c->r->svc->config->cfg, c->r->svc->cfg);
    if (!ctx) {
        upstream_ready(c);
        return;
    }
    const struct wg_service_config *sc = c->r->svc->cfg;
    u->ssl = wg_tls_upstream_ssl(ctx, u->fd, sc->tls.sni, sc->tls.verify,
                                 (const struct sockaddr *)&c->r->inst->addr);
    if (!u->ssl) {
        connect_failed(c, ENOMEM);
        return;
    }
    u->tls_pending = u->connecting = true;
    upstream_tls_step(c);
}

/* The upstream broke (EOF, reset, write error) before its response began:
 * a stale pooled connection is retried for free, anything else counts as
 * an attempt (DESIGN §6). */
static void upstream_lost(struct hp_conn *c)
{
    bool stale = c->r->up_reused && (!c->r->uin || c->r->uin->end == 0);
    if (stale)
        wg_stats_add(c->w->stats, WG_C_HTTP_UPSTREAM_STALE, 1);
    if (stale && may_replay(c)) {
        release_upstream(c);
        rewind_request(c);
        c->r->fresh_only = true;
        upstream_start(c);
        return;
    }
    if (!stale)                         /* a pooled connection that died is not the instance's fault */
        report_failure(c, WG_FAIL_HTTP_5XX);
    retry_or_fail(c, 502);
}

/* ---- forwarding the request ------------------------------------------ */

/* The first response byte arrived: the request can no longer be replayed,
 * so what was kept for that is let go. */
static void response_begins(struct hp_conn *c)
{
    c->r->resp_started = true;
    c->r->replayable = false;
    if (c->in)
        c->in->start = c->in->sent;
    if (c->r->uout && c->r->uout->sent == c->r->uout->end)
        buf_free(c->loc, &c->r->uout);
}

static void request_body_error(struct hp_conn *c, unsigned status)
{
    if (c->r->final_sent)
        conn_kill(c);
    else
        reply(c, status, NULL, false);
}

/* Make room in c->in for more body: kept replay bytes go first. */
static void in_make_room(struct hp_conn *c)
{
    struct hp_buf *b = c->in;
    if (!b || b->end < b->cap)
        return;
    if (b->start < b->sent) {
        c->r->replayable = false;
        b->start = b->sent;
    }
    buf_compact(b);
}

/* The client went away while its request waits for the upstream (which is
 * not reading it, so neither are we): a reset is seen on the socket (one
 * getsockopt, only for an event that came in that state), not in a read
 * that backpressure holds back. A FIN waits behind the unread bytes and is
 * left to the send deadline. */
static bool client_reset(struct hp_conn *c)
{
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0 || err == 0)
        return false;
    c->end_reason = "client_closed";
    conn_kill(c);
    return true;
}

/* Request body (or tunnel bytes) client -> upstream, with backpressure:
 * the client is read only into the room the upstream has made. */
static void request_body_step(struct hp_conn *c, bool *progress)
{
    struct wg_upconn *u = c->r->up;
    struct hp_buf *b = c->in;
    if (!u || u->connecting || c->r->u_shut)
        return;
    if (b && b->scan < b->end && !c->r->req_body_done) {
        enum wg_http_result r = body_decode(&c->r->rq_body, b, false);
        if (r == WG_HTTP_ERROR) {
            request_body_error(c, (unsigned)c->r->rq_body.err_status);
            return;
        }
        c->r->req_body_done = r == WG_HTTP_DONE;
        if (c->r->t.max_body && c->r->rq_body.payload > c->r->t.max_body) {
            request_body_error(c, 413);
            return;
        }
    }
    ssize_t n = u->ssl ? tls_flush(u->ssl, &u->writable, &u->write_wants_read, c->r->uout, b)
                       : flush_to(u->fd, &u->writable, c->r->uout, b);
    if (n < 0) {
        if (c->r->resp_started) {          /* it answered early and stopped reading */
            c->r->req_body_done = c->r->close_after = true;
            c->r->u_shut = true;
            return;
        }
        upstream_lost(c);
        return;
    }
    *progress |= n > 0;
    c->r->sent_any |= n > 0;
    if (b && !c->r->replayable)
        b->start = b->sent;
    bool flushed = (!c->r->uout || c->r->uout->sent == c->r->uout->end) && (!b || b->sent == b->fwd);
    if (flushed)                        /* the send deadline (DL_UPSTREAM_SEND) */
        c->r->up_blocked_since = 0;
    else if (n > 0 || !c->r->up_blocked_since)
        c->r->up_blocked_since = wg_now_ms();
    if (!flushed && c->check_reset && c->rq == RQ_BODY && client_reset(c))
        return;
    c->check_reset = false;
    if (c->r->req_body_done && flushed) {
        if (c->rq == RQ_BODY) {
            c->rq = RQ_SENT;
            c->r->response_deadline = wg_now_ms() + c->r->t.response_ms;
            *progress = true;
        }
        return;
    }
    if (c->rq == RQ_TUNNEL && c->eof && flushed) {
        if (u->ssl)
            wg_tls_close(u->ssl);
        shutdown(u->fd, SHUT_WR);       /* forward the client's half-close */
        c->r->u_shut = true;
        *progress = true;
        return;
    }
    if (c->r->req_body_done || c->eof)
        return;
    in_make_room(c);
    if (client_read(c) > 0)
        *progress = true;
    else if (c->eof && c->rq == RQ_BODY)
        conn_kill(c);                   /* the client gave up mid-body */
    else if (c->eof)
        *progress = true;
}

/* ---- the response ----------------------------------------------------- */

/* The response head as the client gets it: hop-by-hop fields out, our
 * Connection in. Interim (1xx) heads go through the same filter. */
static bool build_client_head(struct hp_conn *c, const struct wg_http_parser *p,
                              const char *msg, size_t head_len, bool final)
{
    const struct wg_http_message *m = &p->msg;
    bool upgrade = m->status == 101;
    struct hp_conn_tokens tok;
    struct hp_out o = out_open(c->loc, &c->out, head_len + 64);

    connection_tokens(p, msg, &tok);
    puts_(&o, "HTTP/1.1 ");
    put_u64(&o, m->status);
    put(&o, " ", 1);
    put_span(&o, msg, m->reason);
    put(&o, "\r\n", 2);
    for (unsigned i = 0; i < m->nheaders; i++) {
        const struct wg_http_header *h = &p->headers[i];
        if (hop_by_hop(&tok, msg, h, upgrade) ||
            (c->r->dechunk && h->id == WG_HTTP_HDR_TRANSFER_ENCODING))
            continue;
        put_field(&o, msg, h);
    }
    if (upgrade)
        puts_(&o, "Connection: upgrade\r\n");
    else if (final && c->r->close_after)
        puts_(&o, "Connection: close\r\n");
    else if (final && c->r->http10)
        puts_(&o, "Connection: keep-alive\r\n");
    put(&o, "\r\n", 2);
    out_close(c->out, &o);
    return !o.full;
}

/* A final response head: decide both connections' fate, forward it. */
static void response_final(struct hp_conn *c, const struct wg_http_parser *p, const char *msg,
                           size_t used)
{
    const struct wg_http_message *m = &p->msg;
    bool upgrade = m->status == 101;
    bool draining = atomic_load_explicit(&c->w->draining, memory_order_relaxed);

    c->r->status = m->status;
    if (m->status >= 500)
        report_failure(c, WG_FAIL_HTTP_5XX);
    else
        report_success(c);
    c->r->dechunk = c->r->http10 && m->framing == WG_HTTP_BODY_CHUNKED;
    c->r->upstream_keep = m->keep_alive && !upgrade && !c->r->req_upgrade &&
                       m->framing != WG_HTTP_BODY_UNTIL_CLOSE;
    c->r->close_after = !upgrade && (!c->r->req_keep_alive || c->rq != RQ_SENT || c->r->dechunk ||
                                  m->framing == WG_HTTP_BODY_UNTIL_CLOSE || draining);
    if (!build_client_head(c, p, msg, used, true)) {
        fail_upstream(c, 502);
        return;
    }
    wg_http_body_init(&c->r->rs_body, m->framing, m->content_length, 0);
    c->r->final_sent = true;
    count_status(c, m->status);
    c->rs = RS_BODY;
    if (!upgrade && (m->framing == WG_HTTP_BODY_NONE ||
                     (m->framing == WG_HTTP_BODY_LENGTH && m->content_length == 0)))
        c->rs = RS_DONE;                /* HEAD, 204, 304, empty: nothing to wait for */
    if (upgrade) {
        c->rq = RQ_TUNNEL;
        c->r->req_body_done = false;
        wg_http_body_init(&c->r->rq_body, WG_HTTP_BODY_TUNNEL, 0, 0);
    }
}

static void response_head_step(struct hp_conn *c, bool *progress)
{
    struct hp_buf *b = c->r->uin;
    if (c->out && c->out->sent < c->out->end)
        return;                         /* an interim head still goes to the client: the
                                           upstream is not read faster than it drains */
    if (!b || b->scan == b->end) {
        if (upstream_read(c) > 0) {
            *progress = true;
            if (!c->r->resp_started)
                response_begins(c);
        } else if (c->r->u_eof && (!c->r->uin || c->r->uin->end == c->r->uin->start)) {
            upstream_lost(c);
            *progress = true;
            return;
        } else if (c->r->u_eof) {
            report_failure(c, WG_FAIL_HTTP_5XX);   /* a truncated head */
            fail_upstream(c, 502);
            return;
        }
        if (c->dead || !(b = c->r->uin) || b->scan == b->end)
            return;
    }
    if (!c->r->rhead) {                 /* held only while a head is parsed */
        if (!(c->r->rhead = head_new(c->loc))) {
            conn_kill(c);
            return;
        }
        wg_http_parser_init_response(&c->r->rhead->p, c->r->rhead->h, HP_MAX_HEADERS, 0,
                                     c->r->method, c->r->req_upgrade);
    }
    size_t used;
    enum wg_http_result r = wg_http_parse_head(&c->r->rhead->p, b->data + b->start,
                                               b->end - b->start, &used);
    b->scan = b->end;
    *progress = true;
    if (r == WG_HTTP_AGAIN) {
        if (b->end == b->cap && b->start == 0)  /* a head over 16 KiB */
            fail_upstream(c, 502);
        return;
    }
    if (r == WG_HTTP_ERROR) {
        wg_info("msg=\"malformed upstream response\" service=%s upstream=%s reason=\"%s\"",
                c->r->svc->name, c->r->inst->id, c->r->rhead->p.err_reason);
        report_failure(c, WG_FAIL_HTTP_5XX);
        fail_upstream(c, 502);
        return;
    }
    const char *msg = b->data + b->start;
    if (c->r->rhead->p.msg.interim && ++c->r->interim > HP_MAX_INTERIM) {
        wg_info("msg=\"too many interim responses\" service=%s upstream=%s", c->r->svc->name,
                c->r->inst->id);
        report_failure(c, WG_FAIL_HTTP_5XX);
        fail_upstream(c, 502);
        return;
    }
    if (c->r->rhead->p.msg.interim) {      /* 100, 103: forwarded, the final one follows */
        if (!c->r->http10 && !build_client_head(c, &c->r->rhead->p, msg, used, false)) {
            conn_kill(c);
            return;
        }
        wg_http_parser_reset(&c->r->rhead->p);
    } else {
        response_final(c, &c->r->rhead->p, msg, used);
        head_free(c->loc, &c->r->rhead);
    }
    b->start += (uint32_t)used;
    b->sent = b->fwd = b->scan = b->start;
}

/* Response body (or tunnel bytes) upstream -> client, with backpressure:
 * the upstream is read only into the room the client has made. */
static void response_body_step(struct hp_conn *c, bool *progress)
{
    struct hp_buf *b = c->r->uin;
    if (b && b->scan < b->end) {
        enum wg_http_result r = body_decode(&c->r->rs_body, b, c->r->dechunk);
        if (r == WG_HTTP_ERROR) {
            wg_info("msg=\"malformed upstream body\" service=%s upstream=%s reason=\"%s\"",
                    c->r->svc->name, c->r->inst->id, c->r->rs_body.err_reason);
            conn_kill(c);
            return;
        }
        if (r == WG_HTTP_DONE) {
            c->rs = RS_DONE;
            c->r->upstream_keep &= b->scan == b->end;  /* nothing may follow a response */
            *progress = true;
            return;
        }
    }
    if (c->r->up && upstream_read(c) > 0) {
        *progress = true;
        return;
    }
    if (!c->r->u_eof)
        return;
    if (wg_http_body_eof(&c->r->rs_body) != WG_HTTP_DONE) {
        wg_info("msg=\"upstream closed mid-body\" service=%s upstream=%s", c->r->svc->name,
                c->r->inst->id);
        conn_kill(c);
        return;
    }
    c->r->upstream_keep = false;
    c->rs = RS_DONE;
    *progress = true;
}

/* Everything for the client (heads, then body bytes) in one writev. */
static void client_flush(struct hp_conn *c, bool *progress)
{
    uint64_t now;
    ssize_t n = c->ssl ? tls_flush(c->ssl, &c->writable, &c->write_wants_read, c->out, c->r->uin)
                     : flush_to(c->fd, &c->writable, c->out, c->r->uin);
    if (n < 0) {
        conn_kill(c);
        return;
    }
    bool pending = (c->out && c->out->sent < c->out->end) || (c->r->uin && c->r->uin->sent < c->r->uin->fwd);
    if (n > 0) {
        *progress = true;
        c->r->req_bytes_out += (uint64_t)n;
        wg_stats_add(c->w->stats, WG_C_BYTES_OUT, (uint64_t)n);
        if (c->r->uin)
            c->r->uin->start = c->r->uin->sent;
    }
    if (!pending) {
        c->blocked_since = 0;
        if (c->out)
            buf_free(c->loc, &c->out);
    } else if (n > 0 || !c->blocked_since) {
        now = wg_now_ms();
        c->blocked_since = now;
    }
}

static bool client_flushed(const struct hp_conn *c)
{
    return (!c->out || c->out->sent == c->out->end) && (!c->r->uin || c->r->uin->sent == c->r->uin->fwd);
}

/* ---- the end of a request --------------------------------------------- */

/* After an error or a "close": stop sending, drain what the client still
 * sends for a moment so that it reads our answer before any reset. */
static void linger_start(struct hp_conn *c)
{
    if (c->ssl)
        wg_tls_close(c->ssl);           /* close_notify before the FIN */
    shutdown(c->fd, SHUT_WR);
    c->shut = true;
    if (c->loc->lingering >= HP_MAX_LINGER) {
        conn_kill(c);                   /* the bound: a flood of errors cannot pin memory */
        return;
    }
    c->loc->lingering++;
    c->rq = RQ_LINGER;
    c->linger_until = wg_now_ms() + HP_LINGER_MS;
    c->linger_deadline = wg_now_ms() + HP_LINGER_IDLE_MS;
    buf_free(c->loc, &c->in);
    buf_free(c->loc, &c->out);
}

static void linger_step(struct hp_conn *c, bool *progress)
{
    char sink[4096];
    for (int k = 0; k < 16 && c->readable; k++) {
        ssize_t n = c->ssl ? tls_read(c->ssl, &c->read_wants_write, sink, sizeof sink)
                         : read(c->fd, sink, sizeof sink);
        if (n > 0) {
            uint64_t idle = wg_now_ms() + HP_LINGER_IDLE_MS;
            c->linger_deadline = idle < c->linger_until ? idle : c->linger_until;
            continue;
        }
        if (n == 0 || !transient()) {
            conn_kill(c);
            return;
        }
        c->readable = false;
    }
    *progress |= c->readable;           /* more to drop: another round */
}

/* The response reached the client whole: pool the upstream connection if
 * it may carry another request, let go of the request, go idle or close. */
static void request_end(struct hp_conn *c)
{
    log_request(c, c->end_reason);
    bool reuse = c->r->up && c->r->upstream_keep && c->rq == RQ_SENT && !c->r->u_eof &&
                 !c->r->up->hup && (!c->r->uin || c->r->uin->scan == c->r->uin->end);
    if (reuse) {
        wg_upstream_pool_put(c->r->up, c->r->svc->cfg->upstream.max_idle,
                             c->r->svc->cfg->upstream.idle_timeout_ms);
        c->r->up = NULL;
    }
    bool close_after = c->r->close_after;
    /* The client asked to close and sent nothing past its request: it has
     * nothing more to say, so close now (no lingering read for its FIN). */
    bool asked = !c->r->req_keep_alive && c->rq == RQ_SENT &&
                 (!c->in || c->in->scan == c->in->end);
    uint64_t idle_ms = c->r->t.idle_ms;
    release_request(c);
    c->rs = RS_NONE;
    if (close_after && asked) {
        conn_kill(c);
        return;
    }
    if (close_after) {
        linger_start(c);
        return;
    }
    c->rq = RQ_IDLE;
    c->idle_deadline = wg_now_ms() + idle_ms;
    if (c->in && c->in->scan == c->in->end && c->in->start == c->in->end)
        buf_free(c->loc, &c->in);       /* an idle client holds no buffer */
    else if (c->in)
        c->in->start = c->in->sent = c->in->fwd = c->in->scan;
}

static void response_step(struct hp_conn *c, bool *progress)
{
    if (!c->r)                          /* idle, or lingering: nothing to send */
        return;
    if (c->rs == RS_HEAD && c->r->up && !c->r->up->connecting)
        response_head_step(c, progress);
    if (c->rs == RS_BODY && !c->dead)   /* the body bytes read with the head go out with it */
        response_body_step(c, progress);
    if (c->dead)
        return;
    client_flush(c, progress);
    if (c->dead || c->rs != RS_DONE || !client_flushed(c))
        return;
    if (c->rq == RQ_TUNNEL) {
        if (!c->shut) {
            if (c->ssl)
                wg_tls_close(c->ssl);
            shutdown(c->fd, SHUT_WR);   /* forward the upstream's half-close */
            c->shut = true;
        }
        if (c->r->u_shut)
            conn_kill(c);
        return;
    }
    if (c->rq == RQ_SENT || (c->rq == RQ_BODY && c->r->close_after)) {
        request_end(c);
        *progress = true;
    }
}

/* ---- the request side, driven by the pump ---------------------------- */

static void set_client(struct hp_conn *c, const struct sockaddr *sa);

/* proxy_protocol: true — the real client address comes first (v1 or v2). */
static void proxy_header_step(struct hp_conn *c, bool *progress)
{
    struct wg_proxy_info pi;
    enum wg_proxy_result r = c->readable ? wg_proxy_read(c->fd, &pi) : WG_PROXY_AGAIN;
    if (r == WG_PROXY_AGAIN) {
        c->readable = false;
        return;
    }
    if (r == WG_PROXY_ERROR) {
        wg_debug("msg=\"invalid PROXY protocol header\" client=%s", c->client_ip);
        conn_kill(c);
        return;
    }
    c->need_proxy = false;
    if (!pi.local) {                    /* the client it names is the peer from now on */
        set_client(c, (const struct sockaddr *)&pi.src);
        const struct wg_cidr_list *tl = wg_listener_trusted(c->r->cfg->cfg, c->r->lc);
        c->r->peer_trusted = tl->n && wg_cidr_match(tl, &c->peer);
    }
    *progress = true;
}

static void request_head_step(struct hp_conn *c, bool *progress)
{
    struct hp_buf *b = c->in;
    if (c->need_proxy) {
        proxy_header_step(c, progress);
        return;
    }
    if (c->ssl && !c->tls_done) {
        tls_handshake_step(c, progress);
        return;
    }
    if (!b || b->scan == b->end) {      /* nothing new to parse: read */
        if (client_read(c) <= 0) {
            if (c->eof)
                conn_kill(c);           /* EOF before or inside a head: close quietly */
            else if (c->rq == RQ_IDLE && c->in && c->in->start == c->in->end)
                buf_free(c->loc, &c->in);
            return;
        }
        *progress = true;
        b = c->in;
    }
    if (c->rq == RQ_IDLE)
        if (!request_begin(c, wg_now_ms()))
            return;
    if (!c->r->head) {
        if (!(c->r->head = head_new(c->loc))) {
            conn_kill(c);
            return;
        }
        wg_http_parser_init_request(&c->r->head->p, c->r->head->h, HP_MAX_HEADERS,
                                    (uint32_t)c->r->t.max_head);
    }
    size_t used;
    enum wg_http_result r = wg_http_parse_head(&c->r->head->p, b->data + b->start,
                                               b->end - b->start, &used);
    b->scan = b->end;
    *progress = true;
    if (r == WG_HTTP_DONE) {
        request_head_done(c, used);
    } else if (r == WG_HTTP_ERROR) {
        unsigned status = (unsigned)c->r->head->p.err_status;
        c->r->method = c->r->head->p.msg.method;
        c->r->http10 = c->r->head->p.msg.version == 10;
        wg_debug("msg=\"bad request\" client=%s status=%u reason=\"%s\"", c->client_ip,
                 status, c->r->head->p.err_reason);
        note_request(c, &c->r->head->p, b->data + b->start);  /* what was parsed, for the log */
        head_free(c->loc, &c->r->head);
        reply(c, status, NULL, false);
    } else if (b->end == b->cap && b->start == 0) {
        uint32_t cap = WG_HTTP_MAX_REQUEST_LINE + 3 + (uint32_t)c->r->t.max_head;
        struct hp_buf *nb = b->cap < cap ? buf_new(c->loc, cap) : NULL;
        if (!nb) {
            conn_kill(c);
            return;
        }
        memcpy(nb->data, b->data, b->end);
        nb->end = nb->scan = b->end;
        buf_free(c->loc, &c->in);
        c->in = nb;
    }
}

static void request_step(struct hp_conn *c, bool *progress)
{
    switch (c->rq) {
    case RQ_IDLE:
    case RQ_HEAD:
        request_head_step(c, progress);
        break;
    case RQ_BODY:
    case RQ_TUNNEL:
        request_body_step(c, progress);
        break;
    case RQ_LINGER:
        linger_step(c, progress);
        break;
    case RQ_SENT:
        break;
    }
}

/* ---- timeouts (DESIGN §6: deadlines) ---------------------------------- */

static uint64_t next_deadline(const struct hp_conn *c, enum hp_deadline *kind)
{
    uint64_t d = UINT64_MAX;
    const struct hp_buf *b = c->in;
    *kind = DL_NONE;
#define CANDIDATE(t, k) do { if ((t) < d) { d = (t); *kind = (k); } } while (0)
    switch (c->rq) {
    case RQ_IDLE: CANDIDATE(c->idle_deadline, DL_IDLE); break;
    case RQ_HEAD: CANDIDATE(c->r->header_deadline, DL_HEADER); break;
    case RQ_BODY:                       /* waiting for the client, not for the upstream */
        if (c->r->up && !c->r->up->connecting && !c->r->req_body_done && (!b || b->sent == b->fwd))
            CANDIDATE(c->client_progress + c->r->t.body_ms, DL_BODY);
        break;
    case RQ_TUNNEL:
        CANDIDATE((c->client_progress > c->r->upstream_progress ? c->client_progress
                                                             : c->r->upstream_progress) +
                  c->r->t.tunnel_ms, DL_TUNNEL);
        break;
    case RQ_LINGER: CANDIDATE(c->linger_deadline, DL_LINGER); break;
    case RQ_SENT: break;
    }
    if (!c->r)                          /* idle or lingering: no request, no upstream */
        return d;
    if (c->r->up && c->r->up->connecting)
        CANDIDATE(c->r->connect_deadline, DL_CONNECT);
    if (c->rs == RS_HEAD && c->rq == RQ_SENT && c->r->up && !c->r->up->connecting)
        CANDIDATE(c->r->response_deadline, DL_RESPONSE);
    if (c->rs == RS_BODY && c->rq != RQ_TUNNEL && !c->blocked_since && c->r->up)
        CANDIDATE(c->r->upstream_progress + c->r->t.response_ms, DL_UPSTREAM_IDLE);
    if (c->blocked_since)
        CANDIDATE(c->blocked_since + c->r->t.send_ms, DL_SEND);
    /* The upstream does not read the request; once its final response
     * streams, that response's own deadlines judge it instead. */
    if (c->r->up_blocked_since && c->rq == RQ_BODY && c->r->up && !c->r->final_sent)
        CANDIDATE(c->r->up_blocked_since + c->r->t.send_ms, DL_UPSTREAM_SEND);
#undef CANDIDATE
    return d;
}

static void on_timeout(struct hp_conn *c, enum hp_deadline kind)
{
    if (kind != DL_IDLE && kind != DL_LINGER) {
        wg_stats_add(c->w->stats, WG_C_HTTP_TIMEOUTS, 1);
        c->end_reason = "timeout";
    }
    switch (kind) {
    case DL_HEADER:
        if (c->r->head && c->in)
            note_request(c, &c->r->head->p, c->in->data + c->in->start);
        head_free(c->loc, &c->r->head);
        reply(c, 408, NULL, false);
        break;
    case DL_BODY:
        request_body_error(c, 408);
        break;
    case DL_CONNECT:
        connect_failed(c, 0);
        break;
    case DL_RESPONSE:
        report_failure(c, WG_FAIL_TIMEOUT);
        fail_upstream(c, 504);
        break;
    case DL_UPSTREAM_SEND:              /* the upstream stopped reading the request */
        wg_info("msg=\"upstream stopped reading the request\" service=%s upstream=%s",
                c->r->svc->name, c->r->inst->id);
        report_failure(c, WG_FAIL_TIMEOUT);
        fail_upstream(c, 504);
        break;
    case DL_IDLE:
        if (c->ssl && !c->tls_done) {   /* handshake_timeout */
            wg_stats_add(c->w->stats, WG_C_TLS_FAIL_TIMEOUT, 1);
            c->end_reason = "tls_handshake_timeout";
        } else {
            wg_stats_add(c->w->stats, WG_C_IDLE_TIMEOUTS, 1);
        }
        conn_kill(c);
        break;
    default:                            /* upstream idle, send, tunnel, linger */
        conn_kill(c);
        break;
    }
}

static void timer_update(struct hp_conn *c)
{
    enum hp_deadline kind;
    uint64_t d = next_deadline(c, &kind), now = wg_now_ms();
    if (d == UINT64_MAX || (c->armed_ms && c->armed_ms <= d))
        return;                         /* none, or the armed one fires first */
    uint64_t left = d > now ? d - now : 0;
    struct timeval tv = { (time_t)(left / 1000), (suseconds_t)(left % 1000) * 1000 };
    if (evtimer_add(&c->timer, &tv) == 0)
        c->armed_ms = d;
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct hp_conn *c = arg;
    enum hp_deadline kind;
    c->armed_ms = 0;
    uint64_t d = next_deadline(c, &kind);
    if (d <= wg_now_ms())
        on_timeout(c, kind);
    conn_pump(c);
}

/* ---- the pump --------------------------------------------------------- */

/* Make every step that can progress without blocking; bounded per event so
 * that one busy connection does not starve the others. */
static void conn_pump(struct hp_conn *c)
{
    bool progress = true;
    for (unsigned round = 0; progress && !c->dead && round < HP_ROUNDS; round++) {
        progress = false;
        if (c->r && c->r->up && c->r->up->connecting &&
            (c->r->up->writable || (c->r->up->tls_pending && c->r->up->readable)))
            upstream_connect_done(c);
        if (!c->dead)
            request_step(c, &progress);
        if (!c->dead)
            response_step(c, &progress);
    }
    if (c->dead) {
        conn_free(c);
        return;
    }
    if (progress)
        event_active(&c->ev, EV_TIMEOUT, 0);    /* budget spent: continue later */
    timer_update(c);
}

static void client_event(evutil_socket_t fd, short what, void *arg)
{
    struct hp_conn *c = arg;
    if (what & EV_READ) {
        c->readable = true;
        if (c->write_wants_read)        /* TLS: a write was waiting for this edge */
            c->writable = true;
        c->write_wants_read = false;
    }
    if (what & EV_WRITE) {
        c->writable = true;
        if (c->read_wants_write)
            c->readable = true;
        c->read_wants_write = false;
    }
    if (what & EV_CLOSED)
        c->readable = c->hup = true;
    if (c->r && c->r->up_blocked_since)   /* a reset says nothing else while we do not read */
        c->check_reset = true;
    conn_pump(c);
}

static void upstream_event(struct wg_upconn *u, short what, void *owner) { conn_pump(owner); }

/* ---- accept ----------------------------------------------------------- */

/* The client's address as text (X-Forwarded-For, logs) and its port. */
static void set_client(struct hp_conn *c, const struct sockaddr *sa)
{
    const void *a = NULL;
    c->client_port = 0;
    if (sa->sa_family == AF_INET) {
        a = &((const struct sockaddr_in *)sa)->sin_addr;
        c->client_port = ntohs(((const struct sockaddr_in *)sa)->sin_port);
    } else if (sa->sa_family == AF_INET6) {
        a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
        c->client_port = ntohs(((const struct sockaddr_in6 *)sa)->sin6_port);
    }
    if (!a || !inet_ntop(sa->sa_family, a, c->client_ip, sizeof c->client_ip))
        snprintf(c->client_ip, sizeof c->client_ip, "unknown");
    if (!wg_ip_from_sockaddr(sa, &c->peer))
        memset(&c->peer, 0, sizeof c->peer);
}

/* A TLS listener: the session, and the handshake deadline. */
static void tls_accept(struct hp_conn *c, int fd)
{
    struct wg_tls_server *tls = wg_tls_set_listener(c->r->cfg->ext, c->r->cfg->cfg, c->r->lc);
    if (!tls)
        return;
    wg_tls_server_ref(tls);             /* its config may go while we shake hands */
    c->tls_server = tls;
    if (!(c->ssl = wg_tls_server_ssl(tls, fd))) {
        c->end_reason = "tls_failed";
        conn_kill(c);
        return;
    }
    c->r->t.header_ms = c->r->lc->tls.handshake_timeout_ms;   /* until the handshake is done */
}

void wg_http_proxy_accept(struct wg_worker *w, const struct wg_listener *l, int fd,
                          const struct sockaddr *peer, socklen_t peerlen)
{
    struct hp_local *loc = local_get(w);
    struct hp_conn *c = loc ? calloc(1, sizeof *c) : NULL;
    if (c && !(c->r = req_new(loc))) {
        free(c);
        c = NULL;
    }
    if (!c || event_assign(&c->ev, w->base, fd, EV_READ | EV_WRITE | EV_CLOSED | EV_ET | EV_PERSIST,
                           client_event, c) < 0 ||
        evtimer_assign(&c->timer, w->base, timer_cb, c) < 0 || event_add(&c->ev, NULL) < 0) {
        if (c)
            req_free(loc, &c->r);
        free(c);
        close(fd);
        wg_listener_conn_closed();
        return;
    }
    c->magic = HP_MAGIC;
    c->w = w;
    c->loc = loc;
    c->l = l;
    c->fd = fd;
    c->link.force_close = force_close;
    c->link.tick = conn_tick;
    c->r->t = hp_defaults;
    set_client(c, peer);
    wg_worker_conn_add(w, &c->link);
    c->rq = RQ_IDLE;
    if (!request_pin(c)) {              /* no snapshot yet (startup_timeout) */
        c->r->req_keep_alive = false;
        reply(c, 503, "no configuration yet\n", false);
    } else if (c->r->lc->proxy_protocol && !c->r->peer_trusted) {
        wg_stats_add(w->stats, WG_C_PROXY_UNTRUSTED, 1);     /* DESIGN §10 */
        wg_debug("msg=\"PROXY protocol from an untrusted peer\" listener=%s client=%s",
                 c->r->lc->name, c->client_ip);
        conn_kill(c);
    } else {
        c->need_proxy = c->r->lc->proxy_protocol;
        tls_accept(c, fd);
    }
    c->idle_deadline = wg_now_ms() + c->r->t.header_ms;   /* the first request's head */
    conn_pump(c);
}
