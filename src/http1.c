/* http1 — the HTTP/1.1 downstream codec; see include/waygate/http_proxy.h
 *
 * One client connection, one request after the other: the connection's
 * phases before its first request (PROXY header, TLS handshake, ALPN), the
 * request head (parsed in place, zero copy, then handed to the exchange),
 * the response as HTTP/1.1 bytes (heads we build, body bytes straight from
 * the upstream's block), keep-alive and lingering close, the client-side
 * deadlines, and the pump that drives it all from the events.
 *
 * Reading order: the connection; the downstream operations the exchange
 * calls; reading and the TLS handshake; the request head; the end of a
 * request; deadlines; the pump; accept (and the hand-over to HTTP/2). */
#include "waygate/http_proxy.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/event.h>
#include <event2/event_struct.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "waygate/exchange.h"
#include "waygate/http.h"
#include "waygate/http2.h"
#include "waygate/listener.h"
#include "waygate/log.h"
#include "waygate/pool.h"
#include "waygate/proxy_protocol.h"
#include "waygate/stats.h"
#include "waygate/tls.h"
#include "waygate/upstream_pool.h"
#include "waygate/worker.h"

#define HP_MAGIC 0x48707830U
#define HP_ROUNDS 32                    /* pump rounds per event, for fairness */
#define HP_LINGER_MS 30000              /* lingering close after an error: at most this long */
#define HP_LINGER_IDLE_MS 5000          /* ... and this long without a byte (nginx's values) */
#define HP_MAX_LINGER 1024              /* lingering connections per worker; past it, close */

/* One client connection: what outlives its requests. */
struct hp_conn {
    struct wg_downstream ds;            /* first: the exchange's view of the client */
    uint32_t magic;
    int fd;
    struct wg_conn_link link;
    struct hp_head *head;               /* while a request head is parsed */
    struct event ev;                    /* client: EV_READ|EV_WRITE|EV_ET|EV_PERSIST */
    struct event timer;
    bool readable, writable, shut;
    bool hup;                           /* EV_CLOSED seen: read until EOF */
    bool need_proxy;                    /* a PROXY header must come first */
    bool tls_done;                      /* handshake complete */
    bool read_wants_write;              /* SSL_read waits for the socket to be writable */
    bool write_wants_read;              /* SSL_write waits for it to be readable */
    bool h2c;                           /* plain listener with h2c: true: watch for the preface */
    bool handed_over;                   /* the connection went to the HTTP/2 codec */
    SSL *ssl;                           /* TLS listener: the session, NULL when plain */
    struct wg_tls_server *tls_server;   /* one reference during the handshake (SNI) */
    char *cert_subject;                 /* verified client certificate, RFC 4514 */
    struct hp_buf *out;                 /* heads (ours or rewritten) to the client */
    uint64_t armed_ms;                  /* the timer's deadline, 0 when not armed */
    uint64_t idle_deadline, linger_deadline;
    uint64_t linger_until;              /* the lingering close's own end */
};

static void conn_pump(struct hp_conn *c);

static struct hp_conn *conn_of(struct wg_conn_link *l)
{
    return (struct hp_conn *)((char *)l - offsetof(struct hp_conn, link));
}

static struct hp_conn *conn_ds(const struct wg_downstream *d) { return (struct hp_conn *)d; }

static void conn_free(struct hp_conn *c)
{
    if (c->ds.rq == WG_RQ_LINGER)
        c->ds.loc->lingering--;
    wg_exchange_release(&c->ds, c->ds.end_reason ? c->ds.end_reason
                        : c->ds.rq == WG_RQ_TUNNEL ? "tunnel_closed" : "client_closed");
    hp_head_free(c->ds.loc, &c->head);
    event_del(&c->ev);
    event_del(&c->timer);
    if (c->ssl && !c->handed_over) {
        wg_tls_close(c->ssl);
        SSL_free(c->ssl);
    }
    wg_tls_server_unref(c->tls_server);
    if (!c->handed_over) {
        free(c->cert_subject);
        close(c->fd);
        wg_listener_conn_closed();
    }
    hp_buf_free(c->ds.loc, &c->ds.in);
    hp_buf_free(c->ds.loc, &c->out);
    wg_worker_conn_remove(c->ds.w, &c->link);
    c->magic = 0;
    free(c);
}

static void h1_flush(struct wg_downstream *d, bool *progress);

/* shutdown_timeout: the worker stops (its loop is over); a request still
 * in progress is cut (logged reason=shutdown) by the exchange's rule
 * (wg_exchange_abort): what it has for the client (a gRPC call's
 * Trailers-Only answer, a gRPC-Web body's trailer frame) goes in one last
 * non-blocking write (what the socket takes now), then the connection
 * closes. */
static void force_close(struct wg_conn_link *l)
{
    struct hp_conn *c = conn_of(l);
    wg_exchange_abort(&c->ds, "shutdown", "shutting down (shutdown_timeout)");
    bool progress = false;
    if (!c->ds.dead && c->ds.r && c->ds.r->final_sent && c->ds.rq != WG_RQ_LINGER)
        h1_flush(&c->ds, &progress);
    conn_free(c);
}

/* The worker's 1 s tick: idle clients go when the worker drains; requests
 * and tunnels to an instance that must be cut (drain_timeout, on_unhealthy:
 * close) end now (health.h) by the exchange's rule (wg_exchange_cut): a
 * gRPC call gets its Trailers-Only answer or a gRPC-Web body its trailer
 * frame, sent by the pump; anything else closes the connection. */
static void conn_tick(struct wg_conn_link *l, uint64_t now_ms)
{
    struct hp_conn *c = conn_of(l);
    if (c->ds.rq == WG_RQ_IDLE && atomic_load_explicit(&c->ds.w->draining, memory_order_relaxed)) {
        conn_free(c);
        return;
    }
    if (wg_exchange_cut(&c->ds, now_ms))
        conn_pump(c);                   /* (frees c when the cut killed it) */
}

/* ---- what the exchange asks of the client side -------------------------- */

/* Policy fields (exchange.h) after a head's own. */
static size_t extra_bytes(const struct wg_exchange *r)
{
    return r->pol ? wg_policy_head_added_bytes(&r->resp_edits) +
                        wg_policy_head_added_bytes(&r->pol->resp_extra) : 0;
}

static void put_extra(struct hp_out *o, const struct wg_exchange *r)
{
    const struct wg_policy_field *f[2];
    size_t n[2];

    wg_exchange_extra_fields(r, &f[0], &n[0], &f[1], &n[1]);
    for (int k = 0; k < 2; k++)
        for (size_t i = 0; i < n[k]; i++) {
            hp_put(o, f[k][i].name.p, f[k][i].name.n);
            hp_put(o, ": ", 2);
            hp_put(o, f[k][i].value.p, f[k][i].value.n);
            hp_put(o, "\r\n", 2);
        }
}

static bool h1_reply(struct wg_downstream *d, unsigned status, const char *body, bool keep)
{
    struct hp_conn *c = conn_ds(d);
    struct hp_out o = hp_out_open(d->loc, &c->out, 256 + strlen(body) + extra_bytes(d->r));
    hp_puts(&o, "HTTP/1.1 ");
    hp_put_u64(&o, status);
    hp_puts(&o, " ");
    hp_puts(&o, hp_reason(status));
    hp_puts(&o, "\r\n");
    put_extra(&o, d->r);                /* CORS, RateLimit-*, WWW-Authenticate */
    if (status == 204) {                /* no body and no Content-Length (RFC 9110 §8.6) */
        body = "";
    } else {
        hp_puts(&o, "Content-Type: text/plain; charset=utf-8\r\nContent-Length: ");
        hp_put_u64(&o, strlen(body));
        hp_puts(&o, "\r\n");
    }
    hp_puts(&o, keep ? (d->r->http10 ? "Connection: keep-alive\r\n\r\n" : "\r\n")
                     : "Connection: close\r\n\r\n");
    if (d->r->method != WG_HTTP_HEAD)
        hp_puts(&o, body);
    hp_out_close(c->out, &o);
    return !o.full;
}

static bool h1_grpc_reply(struct wg_downstream *d, int grpc_status, const char *message, bool keep)
{
    struct hp_conn *c = conn_ds(d);
    struct hp_out o = hp_out_open(d->loc, &c->out, 256 + strlen(message) + extra_bytes(d->r));
    hp_puts(&o, "HTTP/1.1 200 OK\r\n");
    put_extra(&o, d->r);                /* CORS: a browser reads the status only with them */
    hp_puts(&o, "Content-Type: ");
    hp_puts(&o, wg_grpc_reply_type(d->r->grpc_web, d->r->grpc_web_text));
    hp_puts(&o, "\r\ngrpc-status: ");
    hp_put_u64(&o, (uint64_t)grpc_status);
    hp_puts(&o, "\r\ngrpc-message: ");
    hp_puts(&o, message);
    hp_puts(&o, keep ? "\r\nContent-Length: 0\r\n\r\n" : "\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    hp_out_close(c->out, &o);
    return !o.full;
}

static bool h1_redirect(struct wg_downstream *d, const char *location, size_t len, bool keep)
{
    struct hp_conn *c = conn_ds(d);
    struct hp_out o = hp_out_open(d->loc, &c->out, 256 + len);
    hp_puts(&o, "HTTP/1.1 308 Permanent Redirect\r\nLocation: ");
    hp_put(&o, location, len);
    hp_puts(&o, "\r\nContent-Length: 0\r\n");
    hp_puts(&o, keep ? (d->r->http10 ? "Connection: keep-alive\r\n\r\n" : "\r\n")
                     : "Connection: close\r\n\r\n");
    hp_out_close(c->out, &o);
    return !o.full;
}

/* The response head as the client gets it: hop-by-hop fields out, our
 * Connection in. Interim (1xx) heads go through the same filter. */
static bool h1_response_head(struct wg_downstream *d, const struct wg_http_parser *p,
                             const char *msg, size_t head_len, bool final)
{
    struct hp_conn *c = conn_ds(d);
    const struct wg_http_message *m = &p->msg;
    bool upgrade = m->status == 101;
    struct wg_hop_tokens tok;
    struct hp_out o = hp_out_open(d->loc, &c->out, head_len + 64 + (final ? extra_bytes(d->r) : 0));

    wg_hop_tokens(p, msg, &tok);
    hp_puts(&o, "HTTP/1.1 ");
    hp_put_u64(&o, m->status);
    hp_put(&o, " ", 1);
    hp_put_span(&o, msg, m->reason);
    hp_put(&o, "\r\n", 2);
    for (unsigned i = 0; i < m->nheaders; i++) {
        const struct wg_http_header *h = &p->headers[i];
        if (wg_hop_by_hop(&tok, msg, h, upgrade) ||
            (d->r->dechunk && h->id == WG_HTTP_HDR_TRANSFER_ENCODING) ||
            (final && wg_policy_head_dropped(&d->r->resp_edits, i)))
            continue;
        wg_put_field(&o, msg, h);
    }
    if (final)
        put_extra(&o, d->r);
    if (upgrade)
        hp_puts(&o, "Connection: upgrade\r\n");
    else if (final && d->r->close_after)
        hp_puts(&o, "Connection: close\r\n");
    else if (final && d->r->http10)
        hp_puts(&o, "Connection: keep-alive\r\n");
    hp_put(&o, "\r\n", 2);
    hp_out_close(c->out, &o);
    return !o.full;
}

/* Everything for the client (heads, then body bytes) in one writev. */
static void h1_flush(struct wg_downstream *d, bool *progress)
{
    struct hp_conn *c = conn_ds(d);
    struct hp_buf *body = d->r->uin;
    ssize_t n = c->ssl ? hp_tls_flush(c->ssl, &c->writable, &c->write_wants_read, c->out, body)
                       : hp_flush_to(c->fd, &c->writable, c->out, body);
    if (n < 0) {
        d->dead = true;
        return;
    }
    bool pending = (c->out && c->out->sent < c->out->end) || (body && body->sent < body->fwd);
    if (n > 0) {
        *progress = true;
        d->r->req_bytes_out += (uint64_t)n;
        wg_stats_add(d->w->stats, WG_C_BYTES_OUT, (uint64_t)n);
        if (body)
            body->start = body->sent;
    }
    if (!pending) {
        d->blocked_since = 0;
        if (c->out)
            hp_buf_free(d->loc, &c->out);
    } else if (n > 0 || !d->blocked_since) {
        d->blocked_since = wg_now_ms();
    }
}

static bool h1_flushed(const struct wg_downstream *d)
{
    const struct hp_conn *c = (const struct hp_conn *)d;
    return (!c->out || c->out->sent == c->out->end) &&
           (!d->r->uin || d->r->uin->sent == d->r->uin->fwd);
}

static bool h1_head_pending(const struct wg_downstream *d)
{
    const struct hp_conn *c = (const struct hp_conn *)d;
    return c->out && c->out->sent < c->out->end;
}

/* A reset is seen on the socket (one getsockopt, only for an event that
 * came while the request waits for the upstream), not in a read that
 * backpressure holds back. A FIN waits behind the unread bytes and is left
 * to the send deadline. */
static bool h1_gone(struct wg_downstream *d)
{
    int err = 0;
    socklen_t len = sizeof err;
    return getsockopt(conn_ds(d)->fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err != 0;
}

/* Read from the client into d->in; bytes read (0: none now, see d->eof). */
static ssize_t h1_read(struct wg_downstream *d)
{
    struct hp_conn *c = conn_ds(d);
    ssize_t n = hp_side_read(d->loc, &d->in, c->fd, c->ssl, &c->readable, &c->read_wants_write,
                             c->hup, &d->eof);
    if (n < 0) {
        d->dead = true;
        return 0;
    }
    if (n > 0) {
        d->client_progress = wg_now_ms();
        if (d->r)
            d->r->req_bytes_in += (uint64_t)n;
        wg_stats_add(d->w->stats, WG_C_BYTES_IN, (uint64_t)n);
    }
    return n;
}

/* After an error or a "close": stop sending, drain what the client still
 * sends for a moment so that it reads our answer before any reset. */
static void linger_start(struct hp_conn *c)
{
    if (c->ssl)
        wg_tls_close(c->ssl);           /* close_notify before the FIN */
    shutdown(c->fd, SHUT_WR);
    c->shut = true;
    if (c->ds.loc->lingering >= HP_MAX_LINGER) {
        c->ds.dead = true;              /* the bound: a flood of errors cannot pin memory */
        return;
    }
    c->ds.loc->lingering++;
    c->ds.rq = WG_RQ_LINGER;
    c->linger_until = wg_now_ms() + HP_LINGER_MS;
    c->linger_deadline = wg_now_ms() + HP_LINGER_IDLE_MS;
    hp_buf_free(c->ds.loc, &c->ds.in);
    hp_buf_free(c->ds.loc, &c->out);
}

static void linger_step(struct hp_conn *c, bool *progress)
{
    char sink[4096];
    for (int k = 0; k < 16 && c->readable; k++) {
        ssize_t n = c->ssl ? hp_tls_read(c->ssl, &c->read_wants_write, sink, sizeof sink)
                           : read(c->fd, sink, sizeof sink);
        if (n > 0) {
            uint64_t idle = wg_now_ms() + HP_LINGER_IDLE_MS;
            c->linger_deadline = idle < c->linger_until ? idle : c->linger_until;
            continue;
        }
        if (n == 0 || !hp_transient()) {
            c->ds.dead = true;
            return;
        }
        c->readable = false;
    }
    *progress |= c->readable;           /* more to drop: another round */
}

/* The response reached the client whole: keep-alive, or close. */
static void h1_end(struct wg_downstream *d)
{
    struct hp_conn *c = conn_ds(d);
    uint64_t idle_ms;
    enum wg_finish f = wg_exchange_finish(d, &idle_ms);
    if (f == WG_FINISH_CLOSE) {
        d->dead = true;
        return;
    }
    if (f == WG_FINISH_LINGER) {
        linger_start(c);
        return;
    }
    d->rq = WG_RQ_IDLE;
    c->idle_deadline = wg_now_ms() + idle_ms;
    if (d->in && d->in->scan == d->in->end && d->in->start == d->in->end)
        hp_buf_free(d->loc, &d->in);    /* an idle client holds no buffer */
    else if (d->in)
        d->in->start = d->in->sent = d->in->fwd = d->in->scan;
}

static void h1_shutdown(struct wg_downstream *d)
{
    struct hp_conn *c = conn_ds(d);
    if (c->shut)
        return;
    if (c->ssl)
        wg_tls_close(c->ssl);
    shutdown(c->fd, SHUT_WR);
    c->shut = true;
}

static void h1_wake(struct wg_downstream *d) { conn_pump(conn_ds(d)); }

static const struct wg_downstream_ops h1_ops = {
    .reply = h1_reply,
    .redirect = h1_redirect,
    .response_head = h1_response_head,
    .flush = h1_flush,
    .flushed = h1_flushed,
    .head_pending = h1_head_pending,
    .gone = h1_gone,
    .read = h1_read,
    .end = h1_end,
    .shutdown = h1_shutdown,
    .wake = h1_wake,
    .grpc_reply = h1_grpc_reply,
};

/* ---- before the first request ------------------------------------------ */

static void set_client(struct hp_conn *c, const struct sockaddr *sa);

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
        wg_stats_add(c->ds.w->stats, wg_tls_failure_counter(), 1);
        wg_debug("msg=\"tls handshake failed\" client=%s reason=%s", c->ds.client_ip,
                 wg_tls_error_reason());
        c->ds.end_reason = "tls_handshake_failed";
        c->ds.dead = true;
        return;
    }
    c->tls_done = true;
    wg_tls_server_unref(c->tls_server);
    c->tls_server = NULL;
    wg_stats_add(c->ds.w->stats, WG_C_TLS_HANDSHAKES, 1);
    if (SSL_session_reused(c->ssl))
        wg_stats_add(c->ds.w->stats, WG_C_TLS_RESUMED, 1);
    char subject[400];
    if (wg_tls_client_subject(c->ssl, subject, sizeof subject))
        c->ds.cert_subject = c->cert_subject = strdup(subject);
    if (c->ds.r->lc)
        c->ds.r->t.header_ms = c->ds.r->lc->http.client_header_timeout_ms;
    c->idle_deadline = wg_now_ms() + c->ds.r->t.header_ms;   /* now the first request's head */
    *progress = true;
}

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
        wg_debug("msg=\"invalid PROXY protocol header\" client=%s", c->ds.client_ip);
        c->ds.dead = true;
        return;
    }
    c->need_proxy = false;
    if (!pi.local) {                    /* the client it names is the peer from now on */
        set_client(c, (const struct sockaddr *)&pi.src);
        wg_exchange_trust(&c->ds);
    }
    *progress = true;
}

/* The connection goes to the HTTP/2 codec: ALPN chose h2, or a plain
 * listener with h2c: true saw the client preface. The bytes read so far
 * (the preface) go with it. */
static void hand_over_h2(struct hp_conn *c)
{
    struct wg_http2_client cl = {
        .fd = c->fd, .ssl = c->ssl, .cert_subject = c->cert_subject,
        .client_port = c->ds.client_port, .peer = c->ds.peer,
    };
    memcpy(cl.client_ip, c->ds.client_ip, sizeof cl.client_ip);
    const char *pre = c->ds.in ? c->ds.in->data + c->ds.in->start : NULL;
    size_t pre_len = c->ds.in ? c->ds.in->end - c->ds.in->start : 0;
    event_del(&c->ev);
    event_del(&c->timer);
    if (wg_http2_accept(c->ds.w, c->ds.l, &cl, pre, pre_len) == 0) {
        c->handed_over = true;          /* fd, ssl, subject and the slot are the codec's now */
        c->ds.r->log_pending = false;
    }
    c->ds.end_reason = "http2";
    c->ds.dead = true;
}

/* ---- the request head ----------------------------------------------------- */

static bool h2c_preface(const struct hp_buf *b)
{
    static const char pri[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    size_t n = b->end - b->start, k = n < sizeof pri - 1 ? n : sizeof pri - 1;
    return memcmp(b->data + b->start, pri, k) == 0;
}

static void request_head_step(struct hp_conn *c, bool *progress)
{
    struct wg_downstream *d = &c->ds;
    struct hp_buf *b = d->in;
    if (c->need_proxy) {
        proxy_header_step(c, progress);
        return;
    }
    if (c->ssl && !c->tls_done) {
        tls_handshake_step(c, progress);
        if (c->tls_done && wg_tls_alpn_h2(c->ssl))
            hand_over_h2(c);
        return;
    }
    if (!b || b->scan == b->end) {      /* nothing new to parse: read */
        if (h1_read(d) <= 0) {
            if (d->eof)
                d->dead = true;         /* EOF before or inside a head: close quietly */
            else if (d->rq == WG_RQ_IDLE && d->in && d->in->start == d->in->end)
                hp_buf_free(d->loc, &d->in);
            return;
        }
        *progress = true;
        b = d->in;
    }
    if (c->h2c) {                       /* only the first request can be the preface */
        if (h2c_preface(b)) {
            if (b->end - b->start >= 24)
                hand_over_h2(c);
            else
                b->scan = b->end;       /* a prefix of it: wait for the rest */
            return;
        }
        c->h2c = false;
    }
    if (d->rq == WG_RQ_IDLE && !wg_exchange_begin(d, wg_now_ms()))
        return;
    if (!c->head) {
        if (!(c->head = hp_head_new(d->loc))) {
            d->dead = true;
            return;
        }
        wg_http_parser_init_request(&c->head->p, c->head->h, HP_MAX_HEADERS,
                                    (uint32_t)d->r->t.max_head);
    }
    size_t used;
    enum wg_http_result r = wg_http_parse_head(&c->head->p, b->data + b->start,
                                               b->end - b->start, &used);
    b->scan = b->end;
    *progress = true;
    if (r == WG_HTTP_DONE) {
        wg_exchange_head(d, &c->head->p, used);
        hp_head_free(d->loc, &c->head);
    } else if (r == WG_HTTP_ERROR) {
        unsigned status = (unsigned)c->head->p.err_status;
        wg_debug("msg=\"bad request\" client=%s status=%u reason=\"%s\"", d->client_ip,
                 status, c->head->p.err_reason);
        wg_exchange_bad_head(d, &c->head->p, status);
        hp_head_free(d->loc, &c->head);
    } else if (b->end == b->cap && b->start == 0) {
        uint32_t cap = WG_HTTP_MAX_REQUEST_LINE + 3 + (uint32_t)d->r->t.max_head;
        struct hp_buf *nb = b->cap < cap ? hp_buf_new(d->loc, cap) : NULL;
        if (!nb) {
            d->dead = true;
            return;
        }
        memcpy(nb->data, b->data, b->end);
        nb->end = nb->scan = b->end;
        hp_buf_free(d->loc, &d->in);
        d->in = nb;
    }
}

static void request_step(struct hp_conn *c, bool *progress)
{
    switch (c->ds.rq) {
    case WG_RQ_IDLE:
    case WG_RQ_HEAD:
        request_head_step(c, progress);
        break;
    case WG_RQ_LINGER:
        linger_step(c, progress);
        break;
    default:                            /* the exchange's */
        break;
    }
}

/* ---- deadlines (DESIGN §6) -------------------------------------------- */

static uint64_t next_deadline(const struct hp_conn *c, enum wg_deadline *kind)
{
    switch (c->ds.rq) {
    case WG_RQ_IDLE: *kind = WG_DL_IDLE; return c->idle_deadline;
    case WG_RQ_HEAD: *kind = WG_DL_HEADER; return c->ds.r->header_deadline;
    case WG_RQ_LINGER: *kind = WG_DL_LINGER; return c->linger_deadline;
    default: return wg_exchange_deadline(&c->ds, kind);
    }
}

static void on_timeout(struct hp_conn *c, enum wg_deadline kind)
{
    struct wg_downstream *d = &c->ds;
    switch (kind) {
    case WG_DL_HEADER:
        wg_stats_add(d->w->stats, WG_C_HTTP_TIMEOUTS, 1);
        d->end_reason = "timeout";
        wg_exchange_bad_head(d, c->head && d->in ? &c->head->p : NULL, 408);
        hp_head_free(d->loc, &c->head);
        break;
    case WG_DL_IDLE:
        if (c->ssl && !c->tls_done) {   /* handshake_timeout */
            wg_stats_add(d->w->stats, WG_C_TLS_FAIL_TIMEOUT, 1);
            wg_stats_add(d->w->stats, WG_C_HTTP_TIMEOUTS, 1);
            d->end_reason = "tls_handshake_timeout";
        } else {
            wg_stats_add(d->w->stats, WG_C_IDLE_TIMEOUTS, 1);
        }
        d->dead = true;
        break;
    case WG_DL_LINGER:
        d->dead = true;
        break;
    default:
        wg_exchange_timeout(d, kind);
        break;
    }
}

static void timer_update(struct hp_conn *c)
{
    enum wg_deadline kind;
    hp_timer_arm(&c->timer, &c->armed_ms, next_deadline(c, &kind));
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct hp_conn *c = arg;
    enum wg_deadline kind;
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
    for (unsigned round = 0; progress && !c->ds.dead && round < HP_ROUNDS; round++) {
        progress = false;
        request_step(c, &progress);
        if (!c->ds.dead)
            wg_exchange_step(&c->ds, &progress);
    }
    if (c->ds.dead) {
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
    hp_edges(what, &c->readable, &c->writable, &c->read_wants_write, &c->write_wants_read, &c->hup);
    if (c->ds.r && c->ds.r->up_blocked_since)  /* a reset says nothing else while we do not read */
        c->ds.check_reset = true;
    conn_pump(c);
}

/* ---- accept ----------------------------------------------------------- */

/* The client's address as text (X-Forwarded-For, logs) and its port. */
static void set_client(struct hp_conn *c, const struct sockaddr *sa)
{
    const void *a = NULL;
    c->ds.client_port = 0;
    if (sa->sa_family == AF_INET) {
        a = &((const struct sockaddr_in *)sa)->sin_addr;
        c->ds.client_port = ntohs(((const struct sockaddr_in *)sa)->sin_port);
    } else if (sa->sa_family == AF_INET6) {
        a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
        c->ds.client_port = ntohs(((const struct sockaddr_in6 *)sa)->sin6_port);
    }
    if (!a || !inet_ntop(sa->sa_family, a, c->ds.client_ip, sizeof c->ds.client_ip))
        snprintf(c->ds.client_ip, sizeof c->ds.client_ip, "unknown");
    if (!wg_ip_from_sockaddr(sa, &c->ds.peer))
        memset(&c->ds.peer, 0, sizeof c->ds.peer);
}

/* A TLS listener: the session, and the handshake deadline. */
static void tls_accept(struct hp_conn *c, int fd)
{
    struct wg_exchange *r = c->ds.r;
    struct wg_tls_server *tls = wg_tls_set_listener(r->cfg->ext, r->cfg->cfg, r->lc);
    if (!tls)
        return;
    wg_tls_server_ref(tls);             /* its config may go while we shake hands */
    c->tls_server = tls;
    if (!(c->ssl = wg_tls_server_ssl(tls, fd))) {
        c->ds.end_reason = "tls_failed";
        c->ds.dead = true;
        return;
    }
    c->ds.tls = true;
    r->t.header_ms = r->lc->tls.handshake_timeout_ms;   /* until the handshake is done */
}

void wg_http_proxy_accept(struct wg_worker *w, const struct wg_listener *l, int fd,
                          const struct sockaddr *peer, socklen_t peerlen)
{
    struct hp_local *loc = hp_local_get(w->base);
    struct hp_conn *c = loc ? calloc(1, sizeof *c) : NULL;
    if (c) {
        c->ds.ops = &h1_ops;
        c->ds.w = w;
        c->ds.loc = loc;
        c->ds.l = l;
        c->ds.proto = "http/1.1";
    }
    if (c && !wg_exchange_pin(&c->ds) && !c->ds.r) {
        free(c);
        c = NULL;
    }
    if (!c || event_assign(&c->ev, w->base, fd, EV_READ | EV_WRITE | EV_CLOSED | EV_ET | EV_PERSIST,
                           client_event, c) < 0 ||
        evtimer_assign(&c->timer, w->base, timer_cb, c) < 0 || event_add(&c->ev, NULL) < 0) {
        if (c)
            wg_exchange_release(&c->ds, NULL);
        free(c);
        close(fd);
        wg_listener_conn_closed();
        return;
    }
    c->magic = HP_MAGIC;
    c->fd = fd;
    c->link.force_close = force_close;
    c->link.tick = conn_tick;
    set_client(c, peer);
    if (c->ds.r->cfg)                   /* pinned before the peer was known */
        wg_exchange_trust(&c->ds);
    wg_worker_conn_add(w, &c->link);
    c->ds.rq = WG_RQ_IDLE;
    if (!c->ds.r->cfg) {                /* no snapshot yet (startup_timeout) */
        c->ds.r->req_keep_alive = false;
        wg_exchange_reply(&c->ds, 503, "no configuration yet\n", false);
    } else if (c->ds.r->lc->proxy_protocol && !c->ds.r->peer_trusted) {
        wg_stats_add(w->stats, WG_C_PROXY_UNTRUSTED, 1);     /* DESIGN §10 */
        wg_debug("msg=\"PROXY protocol from an untrusted peer\" listener=%s client=%s",
                 c->ds.r->lc->name, c->ds.client_ip);
        c->ds.dead = true;
    } else {
        int lowat = (int)c->ds.r->lc->http.tcp_notsent_lowat;
        if (lowat)          /* what waits unsent in the kernel: docs/configuration.md */
            setsockopt(fd, IPPROTO_TCP, TCP_NOTSENT_LOWAT, &lowat, sizeof lowat);
        c->need_proxy = c->ds.r->lc->proxy_protocol;
        c->h2c = c->ds.r->lc->http.h2c && !c->ds.r->lc->tls.enabled;
        tls_accept(c, fd);
    }
    c->idle_deadline = wg_now_ms() + c->ds.r->t.header_ms;   /* the first request's head */
    conn_pump(c);
}
