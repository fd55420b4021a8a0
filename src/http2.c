/* http2 — see include/waygate/http2.h
 *
 * Reading order: the connection and its streams; the downstream operations
 * the exchange calls for a stream; nghttp2's callbacks (they only record:
 * all exchange work runs after mem_recv returns, outside nghttp2); the
 * request head a stream becomes; the pump (read, feed, step every stream,
 * send); deadlines and limits; accept. */
#include "waygate/grpc.h"
#include "waygate/h2_mem.h"
#include "waygate/http2.h"

#include <errno.h>
#include <event2/event.h>
#include <event2/event_struct.h>
#include <nghttp2/nghttp2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "waygate/exchange.h"
#include "waygate/http.h"
#include "waygate/listener.h"
#include "waygate/log.h"
#include "waygate/pool.h"
#include "waygate/stats.h"
#include "waygate/tls.h"
#include "waygate/upstream_h2.h"
#include "waygate/worker.h"

#define H2_MAGIC 0x48327830U
#define H2_WINDOW 65535u                /* a stream's receive window (the RFC default) */
#define H2_CONN_WINDOW (1u << 20)       /* the connection's: 16 streams uploading at full window */
#define H2_STAGE_CAP (H2_WINDOW + 1)    /* DATA payload received, not yet in the exchange's block */
#define H2_IN_CAP (H2_WINDOW + 64)      /* the exchange's block: one window, one chunk's framing */
#define H2_MAX_CONTINUATIONS 8
#define H2_ROUNDS 32
#define H2_READ 16384u
#define H2_READS 64              /* reads (TLS records) per pump round */
/* An upstream read's bytes become one DATA frame: with its 9-byte header
 * it fills one 16 KiB TLS record exactly. A 16 KiB read made a
 * 16,393-byte frame, whose last 9 bytes went out alone in a 31-byte record
 * and a write(2) of their own, three times per 64 KiB response. wbuf is
 * HP_WIDE: with a 16 KiB wbuf each full 16 KiB DATA frame (an h2 upstream's)
 * took two writev(2), 16,384 bytes and 9; now up to four frames take one. */
#define H2_FRAME_PAYLOAD (HP_BLOCK - 9)
/* The longest DATA payload nghttp2 asks for (no read_length callback). An
 * h2 upstream's DATA payloads are not cut to H2_FRAME_PAYLOAD: a 16 KiB
 * one would leave as two frames, the second of 9 bytes. */
#define H2_DATA_MAX 16384u
/* What wbuf keeps free before nghttp2 is asked for more: a whole DATA frame
 * send_upstream_data writes (header, payload, padding of at most 256). */
#define H2_NO_COPY_ROOM (9 + H2_DATA_MAX + 256)

struct h2_conn;

/* One stream: the client side of one exchange. */
struct h2_stream {
    struct wg_downstream ds;            /* first: the exchange's view */
    struct h2_conn *c;
    struct h2_stream *prev, *next;
    int32_t id;
    struct hp_buf *fields;              /* the request's regular fields, "name: value\r\n" */
    struct hp_buf *cookie;              /* cookie crumbs, joined with "; " */
    struct hp_buf *trailers;            /* request trailer fields (chunked bodies only) */
    struct hp_buf *stage;               /* DATA payload not yet moved into ds.in */
    struct hp_buf *reply;               /* the body of an answer of ours */
    struct hp_head *head;               /* while the synthesized head is parsed */
    char method[24], scheme[8];
    char *path, *authority, *host;
    uint64_t header_bytes;              /* decoded header list (name + value + 32 each) */
    uint64_t header_deadline;
    uint64_t unconsumed;                /* payload moved into ds.in, not yet consumed */
    bool bad;                           /* a field we refuse (400) */
    bool too_big;                       /* header list over max_header_size (431) */
    bool has_length;                    /* content-length given */
    bool head_ready;                    /* END_HEADERS seen: start the exchange */
    bool started;                       /* the exchange has the request */
    bool end_stream;                    /* the client's END_STREAM */
    bool no_body;                       /* END_STREAM came with the request's HEADERS */
    bool body_ended;                    /* chunked terminator (and trailers) moved */
    bool chunked;                       /* the upstream head says chunked */
    bool submitted;                     /* a final response is submitted */
    bool deferred;                      /* its data provider waits for bytes */
    bool eof_queued;                    /* the provider flagged its last frame */
    bool data_eof;                      /* and that frame's bytes left the exchange's block */
    bool reset;                         /* RST_STREAM sent */
    bool finished;                      /* the exchange ended (wg_exchange_finish) */
    bool sent_end;                      /* our END_STREAM went out */
    bool rst_after_end;                 /* answered before the request ended: reset then */
};

struct h2_conn {
    uint32_t magic;
    int fd;
    SSL *ssl;
    char *cert_subject;
    struct wg_worker *w;
    struct hp_local *loc;
    const struct wg_listener *l;
    struct wg_conn_link link;
    struct event ev, timer;
    nghttp2_session *s;
    struct h2_stream *streams;
    unsigned n_streams;
    bool readable, writable, read_wants_write, write_wants_read, hup, eof;
    bool dead, pumping, again, goaway;
    bool calmed;                        /* ended by an error GOAWAY (conn_calm) */
    bool woken;                         /* ev is activated: the pump runs later this turn */
    struct hp_buf *rbuf;                /* bytes read, not yet fed to nghttp2 */
    struct hp_buf *wbuf;                /* bytes nghttp2 produced, not yet written */
    const uint8_t *pend;                /* mem_send output that did not fit in wbuf */
    size_t pend_len;
    struct wg_h2_lent *lent;            /* DATA payloads written by reference from receive
                                           buffers (h2c, h2_raw: struct wg_h2_lent, its frame
                                           header in wbuf before it), in wbuf order, */
    struct hp_rx **refs;                /* and a count of the buffer of each ([WG_H2_LENT_MAX]
                                           each, one malloc on first use) */
    unsigned nref;
    /* limits (from the config pinned at accept) */
    uint64_t max_header, idle_ms, send_ms, header_ms;
    unsigned max_resets, max_control;
    /* progress and deadlines (ms) */
    uint64_t idle_deadline, blocked_since, armed_ms;
    uint64_t window_start;              /* the current one-second window of the flood counts */
    unsigned resets, control;           /* in it */
    uint64_t ack_credit;                /* DATA bytes we sent that a client's small
                                           WINDOW_UPDATEs may still acknowledge (x2:
                                           the stream's window and the connection's) */
    unsigned continuations;             /* CONTINUATION frames of the current header block */
    uint32_t scan_skip;                 /* the frame pre-scan: payload bytes left to skip */
    uint8_t scan_hd[9], scan_hn;        /* a frame header being collected */
    uint8_t preface_left;               /* client preface bytes not yet scanned past */
    uint64_t block_bytes;               /* header block bytes before END_HEADERS */
    uint16_t client_port;
    char client_ip[INET6_ADDRSTRLEN];
    struct wg_ip peer;
};

static void conn_pump(struct h2_conn *c);
static void stream_free(struct h2_stream *st);
static const struct wg_downstream_ops h2_ops;

static struct h2_conn *conn_of(struct wg_conn_link *l)
{
    return (struct h2_conn *)((char *)l - offsetof(struct h2_conn, link));
}

static struct h2_stream *stream_ds(const struct wg_downstream *d) { return (struct h2_stream *)d; }

static void count_goaway(struct h2_conn *c, uint32_t code)
{
    enum wg_h2_counter k = code == NGHTTP2_NO_ERROR ? WG_H2_GOAWAY_NO_ERROR
                      : code == NGHTTP2_ENHANCE_YOUR_CALM ? WG_H2_GOAWAY_CALM
                      : code == NGHTTP2_COMPRESSION_ERROR ? WG_H2_GOAWAY_COMPRESSION
                      : code == NGHTTP2_PROTOCOL_ERROR || code == NGHTTP2_FLOW_CONTROL_ERROR ||
                        code == NGHTTP2_FRAME_SIZE_ERROR ? WG_H2_GOAWAY_PROTOCOL
                      : WG_H2_GOAWAY_OTHER;
    wg_listener_h2_add(c->l, k, 1);
}

/* End the connection with GOAWAY `code` (sent when the pump flushes). */
static void conn_calm(struct h2_conn *c, uint32_t code, const char *why)
{
    if (c->goaway && code == NGHTTP2_NO_ERROR)
        return;
    wg_info("msg=\"http2 connection ended\" client=%s reason=%s", c->client_ip, why);
    nghttp2_session_terminate_session(c->s, code);
    c->calmed = true;
}

/* Before closing a connection ended by an error GOAWAY: discard what the
 * client sent and nobody read (bounded). A close() with unread input sends
 * a reset and drops the GOAWAY still queued behind it, so a flooding
 * client never learnt why it was cut; with the input drained it gets the
 * GOAWAY, then a FIN. */
static void drain_input(int fd)
{
    char sink[16384];

    for (int k = 0; k < 64; k++)
        if (recv(fd, sink, sizeof sink, MSG_DONTWAIT) <= 0)
            return;
}

static void refs_drop(struct h2_conn *c, unsigned n);

static void conn_free(struct h2_conn *c)
{
    refs_drop(c, c->nref);              /* nothing more is written */
    free(c->lent);
    while (c->streams)
        stream_free(c->streams);
    nghttp2_session_del(c->s);
    event_del(&c->ev);
    event_del(&c->timer);
    if (c->ssl) {
        wg_tls_close(c->ssl);
        SSL_free(c->ssl);
    }
    free(c->cert_subject);
    if (c->calmed)
        drain_input(c->fd);
    close(c->fd);
    hp_buf_free(c->loc, &c->rbuf);
    hp_buf_free(c->loc, &c->wbuf);
    wg_worker_conn_remove(c->w, &c->link);
    wg_listener_conn_closed();
    c->magic = 0;
    free(c);
}

static bool conn_send(struct h2_conn *c);
static void stream_step(struct h2_stream *st);

/* shutdown_timeout: the worker stops (its loop is over). The streams still
 * open are cut by the exchange's rule (wg_exchange_abort): a gRPC one gets
 * its UNAVAILABLE end (Trailers-Only, trailers, a gRPC-Web trailer
 * frame), the others a reset, in a last non-blocking write (best effort:
 * what the socket takes now), then the connection closes. */
static void force_close(struct wg_conn_link *l)
{
    struct h2_conn *c = conn_of(l);
    bool cut = false;
    for (struct h2_stream *st = c->streams; st; st = st->next)
        if (st->started && !st->finished && !st->reset && st->ds.r) {
            wg_exchange_abort(&st->ds, "shutdown", "shutting down (shutdown_timeout)");
            cut = true;
        }
    for (unsigned round = 0; cut && round < 2 && !c->dead; round++) {
        for (struct h2_stream *st = c->streams; st && !c->dead; st = st->next)
            if (st->started)            /* (none starts now) */
                stream_step(st);
        if (!c->dead)
            conn_send(c);
    }
    c->calmed = c->calmed || cut;       /* unread input would turn the close into a reset */
    conn_free(c);
}

/* The worker's 1 s tick: drain (GOAWAY, then close once no stream is
 * left); streams to an instance that must be cut end by the exchange's
 * rule (wg_exchange_cut: a gRPC status, else a reset), sent by the pump. */
static void conn_tick(struct wg_conn_link *l, uint64_t now_ms)
{
    struct h2_conn *c = conn_of(l);
    if (atomic_load_explicit(&c->w->draining, memory_order_relaxed) && !c->goaway) {
        c->goaway = true;
        nghttp2_submit_goaway(c->s, NGHTTP2_FLAG_NONE,
                              nghttp2_session_get_last_proc_stream_id(c->s), NGHTTP2_NO_ERROR,
                              NULL, 0);
    }
    for (struct h2_stream *st = c->streams; st; st = st->next)
        if (!st->finished && !st->reset)
            wg_exchange_cut(&st->ds, now_ms);
    conn_pump(c);
}

/* ---- streams ------------------------------------------------------------ */

static struct h2_stream *stream_new(struct h2_conn *c, int32_t id)
{
    struct h2_stream *st = calloc(1, sizeof *st);
    if (!st)
        return NULL;
    st->c = c;
    st->id = id;
    st->ds.ops = &h2_ops;
    st->ds.w = c->w;
    st->ds.loc = c->loc;
    st->ds.l = c->l;
    st->ds.tls = c->ssl != NULL;
    st->ds.payload_only = true;
    st->ds.client_port = c->client_port;
    st->ds.stream_id = (uint32_t)id;
    st->ds.upstream_read_max = H2_FRAME_PAYLOAD;
    st->ds.proto = "h2";
    st->ds.cert_subject = c->cert_subject;
    st->ds.rq = WG_RQ_IDLE;
    memcpy(st->ds.client_ip, c->client_ip, sizeof st->ds.client_ip);
    st->ds.peer = c->peer;
    st->header_deadline = wg_now_ms() + c->header_ms;
    st->next = c->streams;
    if (c->streams)
        c->streams->prev = st;
    c->streams = st;
    c->n_streams++;
    wg_listener_h2_add(c->l, WG_H2_STREAMS, 1);
    wg_listener_h2_add(c->l, WG_H2_STREAMS_ACTIVE, 1);
    nghttp2_session_set_stream_user_data(c->s, id, st);
    return st;
}

static void stream_free(struct h2_stream *st)
{
    struct h2_conn *c = st->c;
    struct hp_local *loc = c->loc;
    if (!st->finished) {
        wg_exchange_release(&st->ds, st->ds.end_reason ? st->ds.end_reason : "client_reset");
    }
    nghttp2_session_set_stream_user_data(c->s, st->id, NULL);
    /* What the stream received and nobody forwarded still counts against
     * the connection's window: give it back there. */
    size_t held = st->unconsumed + (st->stage ? st->stage->end - st->stage->sent : 0);
    if (held)
        nghttp2_session_consume_connection(c->s, held);
    hp_buf_free(loc, &st->fields);
    hp_buf_free(loc, &st->cookie);
    hp_buf_free(loc, &st->trailers);
    hp_buf_free(loc, &st->stage);
    hp_buf_free(loc, &st->reply);
    hp_buf_free(loc, &st->ds.in);
    hp_head_free(loc, &st->head);
    free(st->path);
    free(st->authority);
    free(st->host);
    if (st->prev)
        st->prev->next = st->next;
    else
        c->streams = st->next;
    if (st->next)
        st->next->prev = st->prev;
    c->n_streams--;
    if (c->n_streams == 0)
        c->idle_deadline = wg_now_ms() + c->idle_ms;
    wg_listener_h2_add(c->l, WG_H2_STREAMS_ACTIVE, (uint64_t)-1);
    free(st);
}

static void stream_reset(struct h2_stream *st, uint32_t code)
{
    if (st->reset)
        return;
    st->reset = true;
    nghttp2_submit_rst_stream(st->c->s, NGHTTP2_FLAG_NONE, st->id, code);
    wg_listener_h2_add(st->c->l, code == NGHTTP2_INTERNAL_ERROR ? WG_H2_RST_SENT_INTERNAL
                                  : code == NGHTTP2_CANCEL ? WG_H2_RST_SENT_CANCEL
                                  : WG_H2_RST_SENT_OTHER, 1);
}

/* Append p[n] to a field buffer, growing it (bounded by the header checks)
 * so that `room` (>= n) bytes fit at its end; p may be NULL when n is 0. */
static bool append_room(struct hp_local *loc, struct hp_buf **bp, const void *p, size_t n,
                        size_t room)
{
    struct hp_buf *b = *bp;
    if (!b || b->end + room > b->cap) {
        uint32_t need = (b ? b->end : 0) + (uint32_t)room;
        struct hp_buf *nb = hp_buf_new(loc, need < HP_SMALL ? HP_SMALL : need * 2);
        if (!nb)
            return false;
        if (b) {
            memcpy(nb->data, b->data, b->end);
            nb->end = b->end;
        }
        hp_buf_free(loc, bp);
        *bp = b = nb;
    }
    if (n)
        memcpy(b->data + b->end, p, n);
    b->end += (uint32_t)n;
    return true;
}

static bool append(struct hp_local *loc, struct hp_buf **bp, const void *p, size_t n)
{
    return append_room(loc, bp, p, n, n);
}

/* Append "name: value\r\n" (one room check, not four appends). */
static bool append_field(struct hp_local *loc, struct hp_buf **bp, const uint8_t *name,
                         size_t nlen, const uint8_t *value, size_t vlen)
{
    size_t n = nlen + 2 + vlen + 2;
    struct hp_buf *b = *bp;
    if ((!b || b->end + n > b->cap) && !append_room(loc, bp, NULL, 0, n))
        return false;
    b = *bp;
    char *o = b->data + b->end;
    memcpy(o, name, nlen);
    o[nlen] = ':';
    o[nlen + 1] = ' ';
    memcpy(o + nlen + 2, value, vlen);
    o[n - 2] = '\r';
    o[n - 1] = '\n';
    b->end += (uint32_t)n;
    return true;
}

/* ---- what the exchange asks of a stream ------------------------------ */

static ssize_t read_reply(nghttp2_session *s, int32_t id, uint8_t *buf, size_t len,
                          uint32_t *flags, nghttp2_data_source *src, void *user)
{
    struct hp_buf *b = src->ptr;
    size_t n = b->end - b->sent < len ? b->end - b->sent : len;
    memcpy(buf, b->data + b->sent, n);
    b->sent += (uint32_t)n;
    if (b->sent == b->end)
        *flags |= NGHTTP2_DATA_FLAG_EOF;
    return (ssize_t)n;
}

#define H2_EXTRA 32                     /* policy fields on one head (policy.h) */

static bool submit(struct h2_stream *st, unsigned status, const nghttp2_nv *extra, size_t n_extra,
                   const nghttp2_data_provider *dp)
{
    nghttp2_nv nv[HP_MAX_HEADERS + 2 + H2_EXTRA];
    if (n_extra + 1 > sizeof nv / sizeof *nv)
        return false;
    char code[3];
    wg_h2_status_digits(code, status);
    nv[0] = (nghttp2_nv){ (uint8_t *)":status", (uint8_t *)code, 7, 3, NGHTTP2_NV_FLAG_NONE };
    memcpy(nv + 1, extra, n_extra * sizeof *nv);
    if (nghttp2_submit_response(st->c->s, st->id, nv, n_extra + 1, dp) != 0)
        return false;
    st->submitted = true;
    return true;
}

/* Policy fields (exchange.h: response edits, then resp_extra) appended to
 * nv, names lower-cased into `names`; the new count. */
static size_t add_extra(const struct wg_exchange *r, nghttp2_nv *nv, size_t n, size_t cap,
                        char *names, size_t names_cap)
{
    const struct wg_policy_field *f[2];
    size_t nf[2], used = 0;

    if (!r)
        return n;
    wg_exchange_extra_fields(r, &f[0], &nf[0], &f[1], &nf[1]);
    for (int k = 0; k < 2; k++)
        for (size_t i = 0; i < nf[k] && n < cap && used + f[k][i].name.n <= names_cap; i++) {
            wg_h2_lower_copy(names + used, f[k][i].name.p, f[k][i].name.n);
            nv[n++] = (nghttp2_nv){ (uint8_t *)names + used, (uint8_t *)f[k][i].value.p,
                                    f[k][i].name.n, f[k][i].value.n, NGHTTP2_NV_FLAG_NONE };
            used += f[k][i].name.n;
        }
    return n;
}


/* An answer of ours: status, content-type, content-length, a short body. A
 * gRPC request refused by a policy gets Trailers-Only (DESIGN §15). */
static bool answer(struct h2_stream *st, unsigned status, const char *body, const char *location,
                   size_t loc_len)
{
    size_t blen = body ? strlen(body) : 0;
    if (st->ds.r && st->ds.r->method == WG_HTTP_HEAD)
        blen = 0;
    char len[24], names[1024], grpc[8];
    snprintf(len, sizeof len, "%zu", blen);
    nghttp2_nv nv[4 + H2_EXTRA];
    size_t n = 0;
    const struct wg_exchange *r = st->ds.r;
    if (r && r->pol && r->pol->is_grpc && r->pol->answer_status == status && !location) {
        snprintf(grpc, sizeof grpc, "%d", (int)wg_grpc_status_from_http((int)status));
        nv[n++] = (nghttp2_nv){ (uint8_t *)"content-type", (uint8_t *)"application/grpc", 12, 16,
                                NGHTTP2_NV_FLAG_NONE };
        nv[n++] = (nghttp2_nv){ (uint8_t *)"grpc-status", (uint8_t *)grpc, 11, strlen(grpc),
                                NGHTTP2_NV_FLAG_NONE };
        char msg[256];
        size_t ml = body ? wg_grpc_message_encode(body, strcspn(body, "\n"), msg, sizeof msg) : 0;
        if (ml)
            nv[n++] = (nghttp2_nv){ (uint8_t *)"grpc-message", (uint8_t *)msg, 12, ml,
                                    NGHTTP2_NV_FLAG_NONE };
        n = add_extra(r, nv, n, sizeof nv / sizeof *nv, names, sizeof names);
        return submit(st, 200, nv, n, NULL) && (st->data_eof = true);
    }
    if (location) {
        nv[n++] = (nghttp2_nv){ (uint8_t *)"location", (uint8_t *)location, 8, loc_len,
                                NGHTTP2_NV_FLAG_NONE };
    } else {
        nv[n++] = (nghttp2_nv){ (uint8_t *)"content-type", (uint8_t *)"text/plain; charset=utf-8",
                                12, 25, NGHTTP2_NV_FLAG_NONE };
    }
    if (status != 204)
        nv[n++] = (nghttp2_nv){ (uint8_t *)"content-length", (uint8_t *)len, 14, strlen(len),
                                NGHTTP2_NV_FLAG_NONE };
    n = add_extra(r, nv, n, sizeof nv / sizeof *nv, names, sizeof names);
    if (!blen || status == 204)
        return submit(st, status, nv, n, NULL) && (st->data_eof = true);
    hp_buf_free(st->c->loc, &st->reply);
    if (!append(st->c->loc, &st->reply, body, blen))
        return false;
    nghttp2_data_provider dp = { .source.ptr = st->reply, .read_callback = read_reply };
    return submit(st, status, nv, n, &dp) && (st->data_eof = true);
}

static bool h2_reply(struct wg_downstream *d, unsigned status, const char *body, bool keep)
{
    struct h2_stream *st = stream_ds(d);
    if (st->submitted) {                /* a response already began: cut the stream */
        d->dead = true;
        return true;
    }
    return answer(st, status, body, NULL, 0);
}

static bool h2_grpc_reply(struct wg_downstream *d, int grpc_status, const char *message, bool keep)
{
    struct h2_stream *st = stream_ds(d);
    if (st->submitted) {                /* a response already began: cut the stream */
        d->dead = true;
        return true;
    }
    char code[12], names[1024];
    snprintf(code, sizeof code, "%d", grpc_status);
    const char *type = wg_grpc_reply_type(d->r->grpc_web, d->r->grpc_web_text);
    nghttp2_nv nv[3 + H2_EXTRA] = {
        { (uint8_t *)"content-type", (uint8_t *)type, 12, strlen(type), NGHTTP2_NV_FLAG_NONE },
        { (uint8_t *)"grpc-status", (uint8_t *)code, 11, strlen(code), NGHTTP2_NV_FLAG_NONE },
        { (uint8_t *)"grpc-message", (uint8_t *)message, 12, strlen(message), NGHTTP2_NV_FLAG_NONE },
    };
    /* CORS: a browser reads the status only with them */
    size_t n = add_extra(d->r, nv, 3, sizeof nv / sizeof *nv, names, sizeof names);
    return submit(st, 200, nv, n, NULL) && (st->data_eof = true);   /* Trailers-Only */
}

static bool h2_redirect(struct wg_downstream *d, const char *location, size_t len, bool keep)
{
    return answer(stream_ds(d), 308, NULL, location, len);
}

/* The upstream's trailer fields as a trailing HEADERS frame; true when
 * submitted. Names lower-cased, hop-by-hop ones (RFC 9110 §6.5.1) dropped. */
static bool submit_trailers(struct h2_stream *st, const struct hp_buf *t)
{
    nghttp2_nv nv[32];
    char names[1024];
    size_t n = 0, used = 0;
    const char *p = t->data, *end = t->data + t->end;
    while (p < end && n < sizeof nv / sizeof *nv) {
        const char *eol = memchr(p, '\r', (size_t)(end - p)), *colon;
        if (!eol || eol == p)
            break;                      /* the final CRLF */
        if (!(colon = memchr(p, ':', (size_t)(eol - p))))
            break;
        size_t nlen = (size_t)(colon - p);
        const char *v = colon + 1;
        while (v < eol && (*v == ' ' || *v == '\t'))
            v++;
        const char *ve = eol;
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
            ve--;
        if (used + nlen > sizeof names)
            break;
        wg_h2_lower_copy(names + used, p, nlen);
        bool hop = (nlen == 10 && memcmp(names + used, "connection", 10) == 0) ||
                   (nlen == 2 && memcmp(names + used, "te", 2) == 0) ||
                   (nlen == 17 && memcmp(names + used, "transfer-encoding", 17) == 0);
        if (!hop)
            nv[n++] = (nghttp2_nv){ (uint8_t *)names + used, (uint8_t *)v, nlen, (size_t)(ve - v),
                                    NGHTTP2_NV_FLAG_NONE };
        used += nlen;
        p = eol + 2;
    }
    return n && nghttp2_submit_trailer(st->c->s, st->id, nv, n) == 0;
}

/* Upstream response payload ready for the client: an HTTP/2 instance's
 * (h2_raw) in the exchange's queue, whose entries one frame may span (a
 * frame the upstream sent lands in two receive buffers when a read ends
 * inside it: one frame of 16 KiB to the client, not two); else the
 * exchange's block d->r->uin [sent, fwd), de-chunked. */
static size_t payload_ready(const struct wg_exchange *r, size_t *total)
{
    if (r->h2_raw)
        return *total = r->raw.bytes;
    return *total = r->uin ? r->uin->fwd - r->uin->sent : 0;
}

/* The provider of an upstream response's body (payload_ready). Its bytes
 * are not copied here but by send_upstream_data() (NO_COPY), behind the
 * frame header: into wbuf, or over h2c by reference. */
static ssize_t read_upstream(nghttp2_session *s, int32_t id, uint8_t *buf, size_t len,
                             uint32_t *flags, nghttp2_data_source *src, void *user)
{
    struct h2_stream *st = src->ptr;
    struct wg_exchange *r = st->ds.r;
    size_t total = 0, avail = r ? payload_ready(r, &total) : 0, n = avail < len ? avail : len;
    if (n > H2_FRAME_PAYLOAD && !r->h2_raw)
        n = H2_FRAME_PAYLOAD;           /* an h2 upstream's frames pass whole (H2_DATA_MAX) */
    if (n)
        *flags |= NGHTTP2_DATA_FLAG_NO_COPY;
    if (!r || (st->ds.rs == WG_RS_DONE && n == total)) {
        *flags |= NGHTTP2_DATA_FLAG_EOF;
        st->eof_queued = true;
        if (!n)
            st->data_eof = true;
        if (r && r->trailers && submit_trailers(st, r->trailers))
            *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;     /* the trailers end the stream */
        return (ssize_t)n;
    }
    if (n == 0) {
        st->deferred = true;
        return NGHTTP2_ERR_DEFERRED;
    }
    return (ssize_t)n;
}

/* ---- payload lent by reference (h2c: wg_h2_lent) ----------------------- */

/* The first n lent payloads are over (written, or the connection is):
 * their buffers' counts go. */
static void refs_drop(struct h2_conn *c, unsigned n)
{
    if (!n)
        return;
    for (unsigned i = 0; i < n; i++)
        hp_rx_put(c->loc, &c->refs[i]);
    memmove(c->lent, c->lent + n, (c->nref - n) * sizeof *c->lent);
    memmove(c->refs, c->refs + n, (c->nref - n) * sizeof *c->refs);
    c->nref -= n;
}

/* wbuf's bytes with the lent payloads in their places, in one writev
 * (wg_h2_lent_write); what was written moves wbuf's sent on and drops the
 * payloads written whole. The same contract as hp_flush_to. */
static ssize_t flush_lent(struct h2_conn *c, struct hp_buf *w)
{
    if (!c->writable)
        return 0;
    size_t off = w->sent;
    unsigned over;
    ssize_t k = wg_h2_lent_write(c->fd, (const uint8_t *)w->data, &off, w->end, c->lent,
                                 c->nref, &over);
    if (k < 0) {
        if (!hp_transient())
            return -1;
        c->writable = false;
        return 0;
    }
    w->sent = (uint32_t)off;
    refs_drop(c, over);
    if (w->sent < w->end || c->nref)
        c->writable = false;            /* full: the next edge says when */
    return k;
}

/* The frame's `len` payload bytes from the exchange's queue (h2_raw), a
 * piece per entry it spans, behind its header in wbuf: to an h2c client a
 * piece of at least WG_H2_LEND_MIN bytes by reference (the frame keeps a
 * count of the piece's buffer until written, flush_lent), any other
 * copied. */
static int send_queued(struct h2_conn *c, struct hp_rxq *q, const nghttp2_frame *f,
                       const uint8_t *framehd, size_t len)
{
    struct hp_buf *w = c->wbuf;
    size_t pad = f->data.padlen, copied = 0, left = len;
    bool lend = !c->ssl && !pad;
    unsigned lent = 0;
    for (unsigned i = 0; left; i++) {
        size_t have = hp_rxq_at(q, i)->len, k = have < left ? have : left;
        if (lend && k >= WG_H2_LEND_MIN)
            lent++;
        else
            copied += k;
        left -= k;
    }
    if (lent && !c->lent) {
        if (!(c->lent = malloc(WG_H2_LENT_MAX * (sizeof *c->lent + sizeof *c->refs))))
            return NGHTTP2_ERR_CALLBACK_FAILURE;
        c->refs = (struct hp_rx **)(c->lent + WG_H2_LENT_MAX);
    }
    if (!w || w->cap - w->end < 9 + pad + copied || c->nref + lent > WG_H2_LENT_MAX)
        return NGHTTP2_ERR_WOULDBLOCK;
    uint8_t *o = (uint8_t *)w->data + w->end;
    memcpy(o, framehd, 9);
    o += 9;
    if (pad)
        *o++ = (uint8_t)(pad - 1);
    for (left = len; left;) {
        const struct hp_rxq_ent *e = hp_rxq_front(q);
        size_t k = e->len < left ? e->len : left;
        if (lend && k >= WG_H2_LEND_MIN) {
            c->lent[c->nref] = (struct wg_h2_lent){ e->p, (size_t)(o - (uint8_t *)w->data), k };
            hp_rxq_take(c->loc, q, k, &c->refs[c->nref++]);
        } else {
            memcpy(o, e->p, k);
            o += k;
            hp_rxq_take(c->loc, q, k, NULL);
        }
        left -= k;
    }
    if (pad > 1) {
        memset(o, 0, pad - 1);
        o += pad - 1;
    }
    w->end = (uint32_t)(o - (uint8_t *)w->data);
    return 0;
}

/* A DATA frame read_upstream() gave: its header goes into wbuf, and the
 * payload too (conn_send keeps room for a whole frame before it asks for
 * more), or from the exchange's queue (h2_raw, send_queued). */
static int send_upstream_data(nghttp2_session *s, nghttp2_frame *f, const uint8_t *framehd,
                              size_t len, nghttp2_data_source *src, void *user)
{
    struct h2_conn *c = user;
    struct h2_stream *st = src->ptr;
    struct wg_exchange *r = st->ds.r;
    struct hp_buf *w = c->wbuf;
    size_t total = 0;
    if (!r || payload_ready(r, &total) < len)  /* the exchange let go of it: cannot be */
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    if (r->h2_raw) {
        int rv = send_queued(c, &r->raw, f, framehd, len);
        if (rv)
            return rv;
        wg_exchange_raw_taken(&st->ds, len);
    } else {
        if (!w || w->cap - w->end < 9 + f->data.padlen + len)
            return NGHTTP2_ERR_WOULDBLOCK;
        w->end += (uint32_t)wg_h2_data_frame((uint8_t *)w->data + w->end, f, framehd,
                                             (const uint8_t *)r->uin->data + r->uin->sent, len);
        r->uin->sent += (uint32_t)len;
        r->uin->start = r->uin->sent;
    }
    r->req_bytes_out += len;
    st->ds.blocked_since = 0;
    c->again = true;                    /* the exchange may read the upstream again */
    if (st->eof_queued && len == total)
        st->data_eof = true;
    return 0;
}

/* An upstream response head as HEADERS: hop-by-hop and framing fields out,
 * names lower-cased (nghttp2 copies names and values). */
static bool h2_response_head(struct wg_downstream *d, const struct wg_http_parser *p,
                             const char *msg, size_t len, bool final)
{
    struct h2_stream *st = stream_ds(d);
    const struct wg_http_message *m = &p->msg;
    struct wg_hop_tokens tok;
    nghttp2_nv nv[HP_MAX_HEADERS + 1 + H2_EXTRA];
    size_t n = 0;
    char names[4096];
    size_t used = 0;

    wg_hop_tokens(p, msg, &tok);
    for (unsigned i = 0; i < m->nheaders && n < HP_MAX_HEADERS; i++) {
        const struct wg_http_header *h = &p->headers[i];
        if (wg_hop_by_hop(&tok, msg, h, false) || h->id == WG_HTTP_HDR_TRANSFER_ENCODING ||
            h->id == WG_HTTP_HDR_UPGRADE || h->id == WG_HTTP_HDR_HOST ||
            (final && wg_policy_head_dropped(&d->r->resp_edits, i)))
            continue;
        if (used + h->name.len > sizeof names)
            return false;
        wg_h2_lower_copy(names + used, msg + h->name.off, h->name.len);
        nv[n++] = (nghttp2_nv){ (uint8_t *)names + used, (uint8_t *)msg + h->value.off, h->name.len,
                                h->value.len, NGHTTP2_NV_FLAG_NONE };
        used += h->name.len;
    }
    if (!final) {
        char code[3];
        wg_h2_status_digits(code, m->status);
        memmove(nv + 1, nv, n * sizeof *nv);
        nv[0] = (nghttp2_nv){ (uint8_t *)":status", (uint8_t *)code, 7, 3, NGHTTP2_NV_FLAG_NONE };
        return nghttp2_submit_headers(st->c->s, NGHTTP2_FLAG_NONE, st->id, NULL, nv, n + 1, NULL) == 0;
    }
    n = add_extra(d->r, nv, n, sizeof nv / sizeof *nv, names + used, sizeof names - used);
    bool empty = m->framing == WG_HTTP_BODY_NONE ||
                 (m->framing == WG_HTTP_BODY_LENGTH && m->content_length == 0);
    if (empty) {
        st->data_eof = true;
        return submit(st, m->status, nv, n, NULL);
    }
    nghttp2_data_provider dp = { .source.ptr = st, .read_callback = read_upstream };
    return submit(st, m->status, nv, n, &dp);
}

static void h2_flush(struct wg_downstream *d, bool *progress)
{
    struct h2_stream *st = stream_ds(d);
    size_t total = 0;
    if (d->r)
        payload_ready(d->r, &total);
    bool pending = total > 0;
    if (st->deferred && (pending || d->rs == WG_RS_DONE)) {
        st->deferred = false;
        nghttp2_session_resume_data(st->c->s, st->id);
        *progress = true;
    }
    if (pending && !d->blocked_since)
        d->blocked_since = wg_now_ms();
    else if (!pending)
        d->blocked_since = 0;
}

static bool h2_flushed(const struct wg_downstream *d)
{
    const struct h2_stream *st = (const struct h2_stream *)d;
    return st->data_eof;
}

static bool h2_head_pending(const struct wg_downstream *d) { return false; }

/* A client that leaves resets the stream (or closes the connection):
 * on_stream_close ends the exchange, so there is nothing to look at here. */
static bool h2_gone(struct wg_downstream *d) { return false; }

/* Move staged DATA payload into the exchange's block, as one chunk when
 * the upstream head is chunked; then the terminator (and trailers) once
 * the client ended the stream. Bytes moved. */
static ssize_t h2_read(struct wg_downstream *d)
{
    struct h2_stream *st = stream_ds(d);
    struct hp_buf *b = d->in, *sg = st->stage;
    if (!b)
        return 0;
    hp_buf_make_room(b);
    size_t avail = sg ? sg->end - sg->sent : 0, room = b->cap - b->end;
    size_t frame = st->chunked ? 24 : 0;
    if (avail && room < frame + 1 && d->r && d->r->replayable && b->start < b->sent) {
        d->r->replayable = false;       /* no room left to keep the body for a retry */
        b->start = b->sent;
        hp_buf_compact(b);
        room = b->cap - b->end;
    } else if (avail && room < b->cap / 2) {
        hp_buf_compact(b);
        room = b->cap - b->end;
    }
    ssize_t moved = 0;
    if (avail && room > frame) {
        size_t n = avail < room - frame ? avail : room - frame;
        if (st->chunked)
            b->end += (uint32_t)snprintf(b->data + b->end, 20, "%zx\r\n", n);
        memcpy(b->data + b->end, sg->data + sg->sent, n);
        b->end += (uint32_t)n;
        if (st->chunked) {
            memcpy(b->data + b->end, "\r\n", 2);
            b->end += 2;
        }
        sg->sent += (uint32_t)n;
        if (sg->sent == sg->end)
            sg->sent = sg->end = 0;
        st->unconsumed += n;
        moved = (ssize_t)n;
    }
    if (st->end_stream && !st->body_ended && (!sg || sg->sent == sg->end) && st->chunked) {
        size_t tl = st->trailers ? st->trailers->end : 0;
        if (b->cap - b->end >= 7 + tl) {
            memcpy(b->data + b->end, "0\r\n", 3);
            b->end += 3;
            if (tl)
                memcpy(b->data + b->end, st->trailers->data, tl);
            b->end += (uint32_t)tl;
            memcpy(b->data + b->end, "\r\n", 2);
            b->end += 2;
            st->body_ended = true;
            moved += 5;
        }
    }
    if (moved > 0) {
        d->client_progress = wg_now_ms();
        if (d->r)
            d->r->req_bytes_in += (uint64_t)moved;
    }
    return moved;
}

static void h2_end(struct wg_downstream *d)
{
    struct h2_stream *st = stream_ds(d);
    uint64_t idle_ms;
    wg_exchange_finish(d, &idle_ms);    /* the connection stays: streams do not close it */
    st->finished = true;
    d->rq = WG_RQ_IDLE;
    if (!st->end_stream) {              /* answered before the request ended: stop it, */
        st->rst_after_end = true;       /* once the answer is out (RFC 9113 §8.1): a
                                           RST_STREAM queued now would overtake it */
        if (st->sent_end)
            stream_reset(st, NGHTTP2_NO_ERROR);
    }
}

static void h2_shutdown(struct wg_downstream *d) {}

/* An upstream event: pump the connection once at the end of this loop
 * turn, not now. The upstream events of one turn (often one per stream,
 * e.g. 10 responses of -m10) then leave in one mem_send and one write:
 * one TLS record and one syscall, not one per stream. libevent runs an
 * event activated during its dispatch in the same pass, after the ones
 * already active. */
static void h2_wake(struct wg_downstream *d)
{
    struct h2_conn *c = stream_ds(d)->c;
    if (c->pumping)
        c->again = true;                /* an upstream event inside our own loop */
    else if (!c->woken) {
        c->woken = true;
        event_active(&c->ev, EV_TIMEOUT, 0);
    }
}

static const struct wg_downstream_ops h2_ops = {
    .reply = h2_reply,
    .redirect = h2_redirect,
    .response_head = h2_response_head,
    .flush = h2_flush,
    .flushed = h2_flushed,
    .head_pending = h2_head_pending,
    .gone = h2_gone,
    .read = h2_read,
    .end = h2_end,
    .shutdown = h2_shutdown,
    .wake = h2_wake,
    .grpc_reply = h2_grpc_reply,
};

/* ---- nghttp2's callbacks: record, never run an exchange ---------------- */

/* One more frame of a flood class in this second: false over the limit. */
static bool flood_ok(struct h2_conn *c, unsigned *counter, unsigned limit)
{
    uint64_t now = wg_now_ms();
    if (now - c->window_start >= 1000) {
        c->window_start = now;
        c->resets = c->control = 0;
    }
    return ++*counter <= limit;
}

static int on_begin_frame(nghttp2_session *s, const nghttp2_frame_hd *hd, void *user)
{
    struct h2_conn *c = user;
    if (hd->type == NGHTTP2_HEADERS) {
        c->continuations = 0;
        c->block_bytes = hd->length;
    } else if (hd->type == NGHTTP2_CONTINUATION) {
        c->block_bytes += hd->length;
        if (++c->continuations > H2_MAX_CONTINUATIONS || c->block_bytes > 2 * c->max_header + 16384) {
            conn_calm(c, NGHTTP2_ENHANCE_YOUR_CALM, "continuation_flood");
            return NGHTTP2_ERR_CALLBACK_FAILURE;
        }
    }
    return 0;
}

static int on_begin_headers(nghttp2_session *s, const nghttp2_frame *f, void *user)
{
    struct h2_conn *c = user;
    if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    if (c->goaway)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    if (!stream_new(c, f->hd.stream_id))
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    return 0;
}

static char *dup_n(const uint8_t *p, size_t n)
{
    char *s = malloc(n + 1);
    if (s) {
        memcpy(s, p, n);
        s[n] = '\0';
    }
    return s;
}

static int on_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name, size_t nlen,
                     const uint8_t *value, size_t vlen, uint8_t flags, void *user)
{
    struct h2_conn *c = user;
    struct h2_stream *st = nghttp2_session_get_stream_user_data(s, f->hd.stream_id);
    if (!st || f->hd.type != NGHTTP2_HEADERS)
        return 0;
    st->header_bytes += nlen + vlen + 32;
    if (st->header_bytes > c->max_header)
        st->too_big = true;
    if (st->too_big || st->bad)
        return 0;                       /* decoded (HPACK state), not kept */
    if (f->headers.cat != NGHTTP2_HCAT_REQUEST) {    /* trailers */
        if (nlen && name[0] != ':' &&
            !append_field(c->loc, &st->trailers, name, nlen, value, vlen))
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        return 0;
    }
    if (nlen && name[0] == ':') {
        if (nlen == 7 && memcmp(name, ":method", 7) == 0 && vlen < sizeof st->method) {
            memcpy(st->method, value, vlen);
            st->method[vlen] = '\0';
        } else if (nlen == 7 && memcmp(name, ":scheme", 7) == 0 && vlen < sizeof st->scheme) {
            memcpy(st->scheme, value, vlen);
            st->scheme[vlen] = '\0';
        } else if (nlen == 5 && memcmp(name, ":path", 5) == 0) {
            st->path = dup_n(value, vlen);
        } else if (nlen == 10 && memcmp(name, ":authority", 10) == 0) {
            st->authority = dup_n(value, vlen);
        } else {
            st->bad = true;
        }
        return 0;
    }
    if (nlen == 6 && memcmp(name, "cookie", 6) == 0) {
        bool more = st->cookie != NULL;
        if (!((!more || append(c->loc, &st->cookie, "; ", 2)) &&
              append(c->loc, &st->cookie, value, vlen)))
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        return 0;
    }
    if (nlen == 4 && memcmp(name, "host", 4) == 0) {
        if (st->host)
            st->bad = true;
        st->host = dup_n(value, vlen);
        return 0;
    }
    if (nlen == 2 && memcmp(name, "te", 2) == 0)
        return 0;                       /* "trailers" (nghttp2 refused any other): hop-by-hop */
    if (nlen == 14 && memcmp(name, "content-length", 14) == 0)
        st->has_length = true;
    if (!append_field(c->loc, &st->fields, name, nlen, value, vlen))
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    return 0;
}

static int on_data_chunk(nghttp2_session *s, uint8_t flags, int32_t id, const uint8_t *data,
                         size_t len, void *user)
{
    struct h2_conn *c = user;
    struct h2_stream *st = nghttp2_session_get_stream_user_data(s, id);
    if (!st || st->finished) {          /* nobody wants it: give the window back */
        nghttp2_session_consume(s, id, len);
        return 0;
    }
    if (!st->stage && !(st->stage = hp_buf_new(c->loc, H2_STAGE_CAP)))
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    struct hp_buf *sg = st->stage;
    if (sg->cap - sg->end < len)
        hp_buf_compact(sg);             /* (sent is the kept start here) */
    if (sg->cap - sg->end < len) {      /* beyond the window we gave: a flow-control error */
        stream_reset(st, NGHTTP2_FLOW_CONTROL_ERROR);
        return 0;
    }
    memcpy(sg->data + sg->end, data, len);
    sg->end += (uint32_t)len;
    return 0;
}

static int on_frame_recv(nghttp2_session *s, const nghttp2_frame *f, void *user)
{
    struct h2_conn *c = user;
    struct h2_stream *st = f->hd.stream_id ? nghttp2_session_get_stream_user_data(s, f->hd.stream_id)
                                           : NULL;
    bool control = false;
    switch (f->hd.type) {
    case NGHTTP2_HEADERS:
        if (st && f->headers.cat == NGHTTP2_HCAT_REQUEST) {
            st->head_ready = true;
            st->no_body = f->hd.flags & NGHTTP2_FLAG_END_STREAM;
        }
        if (st && (f->hd.flags & NGHTTP2_FLAG_END_STREAM))
            st->end_stream = true;
        c->continuations = 0;
        c->block_bytes = 0;
        break;
    case NGHTTP2_DATA:                  /* empty ones were counted by flood_scan */
        if (st && (f->hd.flags & NGHTTP2_FLAG_END_STREAM))
            st->end_stream = true;
        break;
    case NGHTTP2_RST_STREAM:
        wg_listener_h2_add(c->l, WG_H2_RST_RECV, 1);
        if (!flood_ok(c, &c->resets, c->max_resets)) {
            conn_calm(c, NGHTTP2_ENHANCE_YOUR_CALM, "rapid_reset");
            return NGHTTP2_ERR_CALLBACK_FAILURE;
        }
        break;
    case NGHTTP2_SETTINGS:
    case NGHTTP2_PING:
        control = !(f->hd.flags & NGHTTP2_FLAG_ACK);
        break;
    case NGHTTP2_WINDOW_UPDATE: {       /* a client acking our DATA opens by whole frames */
        /* A small update that acknowledges DATA we sent is flow control at
         * work (a gRPC client acks each few-byte reply: thousands a second);
         * one beyond what we sent is the flood. */
        uint64_t inc = (uint64_t)f->window_update.window_size_increment;
        if (inc >= 1024)
            break;
        if (inc <= c->ack_credit)
            c->ack_credit -= inc;
        else
            control = true;
        break;
    }
    case NGHTTP2_PRIORITY:
        control = true;
        break;
    default:
        break;
    }
    if (control && !flood_ok(c, &c->control, c->max_control)) {
        conn_calm(c, NGHTTP2_ENHANCE_YOUR_CALM, "control_flood");
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    c->again = true;
    return 0;
}

static int on_stream_close(nghttp2_session *s, int32_t id, uint32_t code, void *user)
{
    struct h2_stream *st = nghttp2_session_get_stream_user_data(s, id);
    if (st && !st->finished && st->data_eof && st->ds.r && st->ds.rs == WG_RS_DONE) {
        uint64_t idle_ms;               /* the last DATA went out: a complete exchange */
        wg_exchange_finish(&st->ds, &idle_ms);  /* (pools its upstream connection) */
        st->finished = true;
    }
    if (st) {
        if (!st->finished && !st->ds.end_reason)
            st->ds.end_reason = code == NGHTTP2_NO_ERROR ? "client_closed" : "client_reset";
        stream_free(st);
    }
    return 0;
}

static int on_frame_send(nghttp2_session *s, const nghttp2_frame *f, void *user)
{
    struct h2_conn *c = user;
    if (f->hd.type == NGHTTP2_DATA)
        c->ack_credit += 2 * (uint64_t)f->hd.length;
    if ((f->hd.type == NGHTTP2_HEADERS || f->hd.type == NGHTTP2_DATA) &&
        (f->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
        struct h2_stream *st = nghttp2_session_get_stream_user_data(s, f->hd.stream_id);
        if (st) {
            st->sent_end = true;
            if (st->rst_after_end)
                stream_reset(st, NGHTTP2_NO_ERROR);
        }
    }
    if (f->hd.type == NGHTTP2_GOAWAY) {
        count_goaway(c, f->goaway.error_code);
        c->goaway = true;
    }
    return 0;
}

/* ---- the request head a stream becomes ----------------------------------- */

/* "METHOD PATH HTTP/1.1\r\nHost: AUTHORITY\r\n<fields>cookie: ...\r\n
 * [Transfer-Encoding: chunked\r\n]\r\n" into ds.in, parsed by http.h. */
static void stream_start(struct h2_stream *st)
{
    struct wg_downstream *d = &st->ds;
    struct h2_conn *c = st->c;
    st->head_ready = false;
    st->started = true;
    if (!wg_exchange_begin(d, wg_now_ms()))
        return;
    if (st->too_big || st->bad || !st->path || !st->method[0] ||
        (st->host && st->authority && strcmp(st->host, st->authority) != 0)) {
        unsigned status = st->too_big ? 431 : 400;
        wg_debug("msg=\"bad request\" client=%s proto=h2 stream=%d status=%u", c->client_ip,
                 st->id, status);
        d->r->req_keep_alive = true;
        wg_exchange_reply(d, status, NULL, true);
        return;
    }
    const char *authority = st->authority ? st->authority : st->host;
    size_t flen = st->fields ? st->fields->end : 0, clen = st->cookie ? st->cookie->end : 0;
    size_t need = strlen(st->method) + strlen(st->path) + (authority ? strlen(authority) : 0) +
                  flen + clen + 96;
    st->chunked = !st->no_body && !st->has_length;  /* (DATA and END_STREAM may be in already) */
    uint32_t body_cap = st->no_body ? 0 : H2_IN_CAP;       /* a GET's head fits a spare block */
    uint32_t cap = (uint32_t)(need > body_cap ? need : body_cap);
    if (!(d->in = hp_buf_new(c->loc, cap)) || !(st->head = hp_head_new(c->loc))) {
        d->dead = true;
        return;
    }
    struct hp_out o = { d->in->data, 0, d->in->cap, false };
    hp_puts(&o, st->method);
    hp_put(&o, " ", 1);
    hp_puts(&o, st->path);
    hp_puts(&o, " HTTP/1.1\r\n");
    if (authority) {
        hp_puts(&o, "Host: ");
        hp_puts(&o, authority);
        hp_put(&o, "\r\n", 2);
    }
    if (flen)
        hp_put(&o, st->fields->data, flen);
    if (clen) {
        hp_puts(&o, "cookie: ");
        hp_put(&o, st->cookie->data, clen);
        hp_put(&o, "\r\n", 2);
    }
    if (st->chunked)
        hp_puts(&o, "Transfer-Encoding: chunked\r\n");
    hp_put(&o, "\r\n", 2);
    d->in->end = (uint32_t)o.n;
    hp_buf_free(c->loc, &st->fields);
    hp_buf_free(c->loc, &st->cookie);
    wg_http_parser_init_request(&st->head->p, st->head->h, HP_MAX_HEADERS,
                                (uint32_t)d->r->t.max_head + 1024);
    size_t used = 0;
    enum wg_http_result r = o.full ? WG_HTTP_ERROR
                          : wg_http_parse_head(&st->head->p, d->in->data, d->in->end, &used);
    d->in->scan = d->in->end;
    if (r == WG_HTTP_DONE) {
        d->r->req_bytes_in = st->header_bytes;
        wg_exchange_head(d, &st->head->p, used);
    } else {
        unsigned status = r == WG_HTTP_ERROR && st->head->p.err_status ? (unsigned)st->head->p.err_status
                                                                       : 400;
        wg_debug("msg=\"bad request\" client=%s proto=h2 stream=%d status=%u reason=\"%s\"",
                 c->client_ip, st->id, status,
                 st->head->p.err_reason ? st->head->p.err_reason : "head");
        d->r->req_keep_alive = true;
        wg_exchange_bad_head(d, &st->head->p, status);
    }
    hp_head_free(c->loc, &st->head);
}

/* ---- the pump ------------------------------------------------------------ */

/* One stream: start its exchange, step it, give back the window the
 * upstream took, reset it when the exchange gave up. */
static void stream_step(struct h2_stream *st)
{
    struct wg_downstream *d = &st->ds;
    if (st->finished || st->reset)
        return;
    if (st->head_ready && !st->started)
        stream_start(st);
    if (!st->started)
        return;
    bool progress = true;
    for (unsigned round = 0; progress && !d->dead && d->r && round < H2_ROUNDS; round++) {
        progress = false;
        size_t before = d->in ? d->in->end - d->in->sent : 0;
        wg_exchange_step(d, &progress);
        if (d->dead || !d->in)
            break;
        size_t after = d->in->end - d->in->sent;
        size_t flushed = before > after ? before - after : 0;
        size_t give = st->unconsumed < flushed || after == 0 ? st->unconsumed : flushed;
        if (give) {                     /* the upstream took these: reopen the window */
            nghttp2_session_consume(st->c->s, st->id, give);
            st->unconsumed -= give;
        }
    }
    if (d->dead && !st->finished) {
        wg_exchange_release(d, d->end_reason ? d->end_reason : "upstream_error");
        st->finished = true;
        stream_reset(st, NGHTTP2_INTERNAL_ERROR);
    }
}

/* Empty DATA frames (no END_STREAM) count as control frames. nghttp2
 * drops DATA for a closed stream without a callback, so this looks at the
 * frame headers itself, before nghttp2 sees the bytes. */
static bool flood_scan(struct h2_conn *c, const uint8_t *p, size_t n)
{
    size_t i = c->preface_left < n ? c->preface_left : n;
    c->preface_left -= (uint8_t)i;
    while (i < n) {
        if (c->scan_skip) {
            size_t k = n - i < c->scan_skip ? n - i : c->scan_skip;
            c->scan_skip -= (uint32_t)k;
            i += k;
            continue;
        }
        c->scan_hd[c->scan_hn++] = p[i++];
        if (c->scan_hn < 9)
            continue;
        c->scan_hn = 0;
        c->scan_skip = (uint32_t)c->scan_hd[0] << 16 | (uint32_t)c->scan_hd[1] << 8 | c->scan_hd[2];
        if (c->scan_hd[3] == NGHTTP2_DATA && c->scan_skip == 0 &&
            !(c->scan_hd[4] & NGHTTP2_FLAG_END_STREAM) && !flood_ok(c, &c->control, c->max_control)) {
            conn_calm(c, NGHTTP2_ENHANCE_YOUR_CALM, "empty_data_flood");
            return false;
        }
    }
    return true;
}

/* Feed what was read to nghttp2; false: the session is over. */
static bool conn_recv(struct h2_conn *c)
{
    struct hp_buf *b = c->rbuf;
    if (!b || b->sent == b->end)
        return true;
    if (!flood_scan(c, (const uint8_t *)b->data + b->sent, b->end - b->sent)) {
        hp_buf_free(c->loc, &c->rbuf);
        c->eof = true;
        return false;
    }
    ssize_t n = nghttp2_session_mem_recv(c->s, (const uint8_t *)b->data + b->sent, b->end - b->sent);
    if (n < 0) {
        if (n != NGHTTP2_ERR_CALLBACK_FAILURE)
            wg_debug("msg=\"http2 session error\" client=%s error=\"%s\"", c->client_ip,
                     nghttp2_strerror((int)n));
        if (n == NGHTTP2_ERR_FLOODED)
            conn_calm(c, NGHTTP2_ENHANCE_YOUR_CALM, "flood");
        else if (n != NGHTTP2_ERR_CALLBACK_FAILURE)
            conn_calm(c, NGHTTP2_PROTOCOL_ERROR, "protocol_error");
        hp_buf_free(c->loc, &c->rbuf);
        c->eof = true;                  /* read nothing more; send the GOAWAY, close */
        return false;
    }
    b->sent += (uint32_t)n;
    if (b->sent == b->end)
        hp_buf_free(c->loc, &c->rbuf);
    return true;
}

static bool conn_read(struct h2_conn *c)
{
    if (c->eof || !c->readable)
        return false;
    if (c->rbuf && c->rbuf->sent < c->rbuf->end)
        return false;                   /* fed partly: nghttp2 paused (it never does here) */
    bool eof = false;
    ssize_t n = 0;
    /* 64 KiB a pump round (the buffer goes back once fed): an upload's
     * DATA in a quarter of the reads a 16 KiB block took. */
    if (!c->rbuf && !(c->rbuf = hp_buf_new(c->loc, HP_WIDE))) {
        c->dead = true;
        return false;
    }
    /* TLS: one SSL_read gives one record, and clients often send a frame
     * per record: read on until OpenSSL wants the socket (read_ahead gives
     * it many records per read(2)) or the block is full, so that one
     * mem_recv sees them all and the streams they start go out together. */
    for (unsigned i = 0; i < H2_READS && c->readable && !eof; i++) {
        ssize_t k = hp_side_read(c->loc, &c->rbuf, c->fd, c->ssl, &c->readable,
                                 &c->read_wants_write, c->hup, &eof);
        if (k < 0) {
            c->dead = true;
            return false;
        }
        if (k == 0)
            break;
        n += k;
    }
    if (eof)
        c->eof = true;
    if (n > 0) {
        wg_stats_add(c->w->stats, WG_C_BYTES_IN, (uint64_t)n);
        c->rbuf->fwd = c->rbuf->end;
    } else if (c->rbuf && c->rbuf->sent == c->rbuf->end) {
        hp_buf_free(c->loc, &c->rbuf);  /* nothing came: an idle connection holds none */
    }
    return n > 0;
}

/* Collect nghttp2's output into wbuf and write it; false when nothing moved. */
static bool conn_send(struct h2_conn *c)
{
    bool moved = false;
    for (;;) {
        if (!c->wbuf && !(c->wbuf = hp_buf_new(c->loc, HP_WIDE))) {
            c->dead = true;
            return false;
        }
        struct hp_buf *b = c->wbuf;
        if (b->sent == b->end && !c->nref)
            b->sent = b->end = 0;
        while (b->end < b->cap) {
            if (!c->pend_len) {
                if (b->cap - b->end < H2_NO_COPY_ROOM)
                    break;
                ssize_t n = nghttp2_session_mem_send(c->s, &c->pend);
                if (n < 0) {
                    c->dead = true;
                    return false;
                }
                c->pend_len = (size_t)n;
                if (n == 0)
                    break;
            }
            size_t k = c->pend_len < b->cap - b->end ? c->pend_len : b->cap - b->end;
            memcpy(b->data + b->end, c->pend, k);
            b->end += (uint32_t)k;
            c->pend += k;
            c->pend_len -= k;
        }
        if (b->sent == b->end && !c->nref)
            break;
        b->fwd = b->end;
        ssize_t w = c->ssl ? hp_tls_flush(c->ssl, &c->writable, &c->write_wants_read, NULL, b)
                  : c->nref ? flush_lent(c, b) : hp_flush_to(c->fd, &c->writable, NULL, b);
        if (w < 0) {
            c->dead = true;
            return false;
        }
        if (w > 0) {
            moved = true;
            wg_stats_add(c->w->stats, WG_C_BYTES_OUT, (uint64_t)w);
            c->blocked_since = 0;
        }
        if (b->sent < b->end || c->nref) {     /* the socket is full */
            if (!c->blocked_since)
                c->blocked_since = wg_now_ms();
            break;
        }
    }
    if (c->wbuf && c->wbuf->sent == c->wbuf->end && !c->pend_len && !c->nref)
        hp_buf_free(c->loc, &c->wbuf);
    return moved;
}

static void conn_timer_update(struct h2_conn *c);

static void conn_pump(struct h2_conn *c)
{
    if (c->pumping) {                   /* an upstream event inside our own loop */
        c->again = true;
        return;
    }
    c->pumping = true;
    for (unsigned round = 0; round < H2_ROUNDS && !c->dead; round++) {
        c->again = false;
        bool read = conn_read(c);
        if (!c->dead)
            conn_recv(c);
        for (struct h2_stream *st = c->streams; st && !c->dead; st = st->next)
            stream_step(st);
        bool sent = !c->dead && conn_send(c);
        if (!read && !sent && !c->again)
            break;
    }
    c->pumping = false;
    if (!c->dead && !nghttp2_session_want_read(c->s) && !nghttp2_session_want_write(c->s) &&
        !c->wbuf)
        c->dead = true;                 /* GOAWAY out, or both sides done */
    if (!c->dead && c->eof && !c->wbuf && !nghttp2_session_want_write(c->s))
        c->dead = true;                 /* the client left and we said all */
    if (!c->dead && c->goaway && c->n_streams == 0 && !c->wbuf && !nghttp2_session_want_write(c->s))
        c->dead = true;                 /* drained */
    if (c->dead) {
        conn_free(c);
        return;
    }
    if ((c->again || (c->readable && !c->eof)) && !c->woken) {
        c->woken = true;
        event_active(&c->ev, EV_TIMEOUT, 0);    /* budget spent: continue later */
    }
    conn_timer_update(c);
}

/* ---- deadlines ------------------------------------------------------------ */

static uint64_t conn_deadline(struct h2_conn *c)
{
    uint64_t t = UINT64_MAX;
    if (c->n_streams == 0)
        t = c->idle_deadline;
    if (c->blocked_since && c->blocked_since + c->send_ms < t)
        t = c->blocked_since + c->send_ms;
    for (struct h2_stream *st = c->streams; st; st = st->next) {
        enum wg_deadline kind;
        uint64_t s = !st->started ? st->header_deadline
                   : st->finished || st->reset ? UINT64_MAX : wg_exchange_deadline(&st->ds, &kind);
        if (s < t)
            t = s;
    }
    return t;
}

static void conn_timer_update(struct h2_conn *c)
{
    hp_timer_arm(&c->timer, &c->armed_ms, conn_deadline(c));
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct h2_conn *c = arg;
    uint64_t now = wg_now_ms();
    c->armed_ms = 0;
    if (c->n_streams == 0 && c->idle_deadline <= now && !c->goaway) {
        wg_stats_add(c->w->stats, WG_C_IDLE_TIMEOUTS, 1);
        c->goaway = true;
        nghttp2_submit_goaway(c->s, NGHTTP2_FLAG_NONE,
                              nghttp2_session_get_last_proc_stream_id(c->s), NGHTTP2_NO_ERROR,
                              NULL, 0);
    }
    if (c->blocked_since && c->blocked_since + c->send_ms <= now) {
        wg_stats_add(c->w->stats, WG_C_HTTP_TIMEOUTS, 1);
        wg_info("msg=\"http2 connection ended\" client=%s reason=send_timeout", c->client_ip);
        c->dead = true;
        conn_free(c);
        return;
    }
    for (struct h2_stream *st = c->streams; st; st = st->next) {
        if (st->finished || st->reset)
            continue;
        if (!st->started) {
            if (st->header_deadline <= now) {
                wg_stats_add(c->w->stats, WG_C_HTTP_TIMEOUTS, 1);
                stream_reset(st, NGHTTP2_CANCEL);
            }
            continue;
        }
        enum wg_deadline kind;
        if (wg_exchange_deadline(&st->ds, &kind) <= now) {
            wg_exchange_timeout(&st->ds, kind);
            if (kind == WG_DL_SEND)
                wg_info("msg=\"http2 stream reset\" client=%s stream=%d reason=send_timeout",
                        c->client_ip, st->id);
        }
    }
    conn_pump(c);
}

static void client_event(evutil_socket_t fd, short what, void *arg)
{
    struct h2_conn *c = arg;
    c->woken = false;
    hp_edges(what, &c->readable, &c->writable, &c->read_wants_write, &c->write_wants_read, &c->hup);
    conn_pump(c);
}

/* ---- accept -------------------------------------------------------------- */

/* The session copies them: made for each new session, freed right after. */
static nghttp2_session_callbacks *callbacks(void)
{
    nghttp2_session_callbacks *cbs;
    if (nghttp2_session_callbacks_new(&cbs) != 0)
        return NULL;
    nghttp2_session_callbacks_set_on_begin_frame_callback(cbs, on_begin_frame);
    nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data_chunk);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame_recv);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_stream_close);
    nghttp2_session_callbacks_set_on_frame_send_callback(cbs, on_frame_send);
    nghttp2_session_callbacks_set_send_data_callback(cbs, send_upstream_data);
    return cbs;
}

static int session_new(struct h2_conn *c)
{
    nghttp2_option *opt;
    nghttp2_session_callbacks *cbs = callbacks();
    if (!cbs)
        return -1;
    if (nghttp2_option_new(&opt) != 0) {
        nghttp2_session_callbacks_del(cbs);
        return -1;
    }
    nghttp2_option_set_no_auto_window_update(opt, 1);
    nghttp2_option_set_max_deflate_dynamic_table_size(opt, 4096);
    nghttp2_option_set_max_continuations(opt, H2_MAX_CONTINUATIONS * 4);    /* ours first */
    nghttp2_option_set_stream_reset_rate_limit(opt, (uint64_t)c->max_resets * 4, c->max_resets * 4);
    int rc = nghttp2_session_server_new3(&c->s, cbs, c, opt, wg_h2_mem());
    nghttp2_option_del(opt);
    nghttp2_session_callbacks_del(cbs);
    return rc == 0 ? 0 : -1;
}

int wg_http2_accept(struct wg_worker *w, const struct wg_listener *l,
                    const struct wg_http2_client *cl, const char *pre, size_t pre_len)
{
    struct hp_local *loc = hp_local_get(w->base);
    struct h2_conn *c = loc ? calloc(1, sizeof *c) : NULL;
    struct wg_snapshot *snap = wg_pool_current(w->pool);
    const struct wg_listener_config *lc = snap ? wg_listener_config_in(snap->config->cfg, l) : NULL;
    if (!c || !lc)
        goto fail;
    c->w = w;
    c->loc = loc;
    c->l = l;
    c->fd = cl->fd;
    c->ssl = cl->ssl;
    if (c->ssl)
        SSL_set_read_ahead(c->ssl, 1);  /* many small records per read(2) (conn_read) */
    c->client_port = cl->client_port;
    memcpy(c->client_ip, cl->client_ip, sizeof c->client_ip);
    c->peer = cl->peer;
    c->max_header = lc->http.max_header_size;
    c->idle_ms = lc->http.client_idle_timeout_ms;
    c->send_ms = lc->http.send_timeout_ms;
    c->header_ms = lc->http.client_header_timeout_ms;
    c->max_resets = lc->http.h2_max_resets;
    c->max_control = lc->http.h2_max_control_frames;
    c->writable = true;
    c->readable = true;
    c->preface_left = 24;
    if (session_new(c) < 0)
        goto fail;
    nghttp2_settings_entry set[] = {
        { NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, lc->http.max_concurrent_streams },
        { NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, H2_WINDOW },
        { NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, (uint32_t)lc->http.max_header_size },
        { NGHTTP2_SETTINGS_HEADER_TABLE_SIZE, 4096 },
    };
    if (nghttp2_submit_settings(c->s, NGHTTP2_FLAG_NONE, set, sizeof set / sizeof *set) != 0 ||
        nghttp2_session_set_local_window_size(c->s, NGHTTP2_FLAG_NONE, 0, H2_CONN_WINDOW) != 0)
        goto fail;
    if (pre_len) {
        if (!(c->rbuf = hp_buf_new(loc, pre_len > HP_BLOCK ? (uint32_t)pre_len : HP_BLOCK)))
            goto fail;
        memcpy(c->rbuf->data, pre, pre_len);
        c->rbuf->end = (uint32_t)pre_len;
    }
    if (event_assign(&c->ev, w->base, c->fd, EV_READ | EV_WRITE | EV_CLOSED | EV_ET | EV_PERSIST,
                     client_event, c) < 0 ||
        evtimer_assign(&c->timer, w->base, timer_cb, c) < 0 || event_add(&c->ev, NULL) < 0)
        goto fail;
    c->magic = H2_MAGIC;
    c->cert_subject = cl->cert_subject;
    c->link.force_close = force_close;
    c->link.tick = conn_tick;
    c->idle_deadline = wg_now_ms() + c->idle_ms;
    c->window_start = wg_now_ms();
    wg_worker_conn_add(w, &c->link);
    wg_listener_h2_add(l, WG_H2_CONNECTIONS, 1);
    conn_pump(c);
    return 0;
fail:
    if (c) {
        if (c->s)
            nghttp2_session_del(c->s);
        hp_buf_free(loc, &c->rbuf);
        free(c);
    }
    return -1;
}
