/* upstream_h2 — HTTP/2 upstream connections; see include/waygate/upstream_h2.h.
 *
 * Structure: pool -> per-instance list (struct h2_inst) -> connections
 * (struct h2_conn, one nghttp2 client session each) -> streams. nghttp2 is
 * never freed from inside its own callbacks: a connection that must die
 * while a callback runs is marked and closed when mem_recv/mem_send return
 * (conn_settle). Instances are found by a linear scan of the pool's list;
 * a worker talks HTTP/2 to the instances of a few services, and the scan
 * moves the instance found to the front.
 */
#include "waygate/upstream_h2.h"

#include "waygate/h2_mem.h"

#include <errno.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "waygate/health.h"
#include "waygate/http.h"
#include "waygate/http_buf.h"
#include "waygate/log.h"
#include "waygate/pool.h"
#include "waygate/stats.h"
#include "waygate/tls.h"

#define CONN_MAGIC 0x8201c0aeU
#define STREAM_MAGIC 0x82015eeaU
#define READ_CHUNK (16 * 1024)       /* the least room a recv is given (HP_RX at most:
                                        up to four 16 KiB DATA frames) */
#define TLS_RECORD 16384             /* the largest TLS record's payload */
#define READ_BUFS 16                 /* receive buffers one h2c readv fills (1 MiB) */
#define READ_ROUNDS 32               /* reads per readable event, and at most */
#define READ_EVENT_BYTES (2u << 20)  /* bytes: each stream of the connection gets more
                                        per loop turn */
#define PENDING_MAX (1024 * 1024)
#define SEND_BATCH (64 * 1024)

const struct wg_h2_settings wg_h2_defaults = {
    .max_streams = 100, .max_conns = 8,
    .lim = { .max_idle = 4, .idle_timeout_ms = 60000, .connect_timeout_ms = 1000,
             .ping_interval_ms = 10000, .ping_timeout_ms = 5000 },
    .stream_window = 256 * 1024, .conn_window = 16 * 1024 * 1024,
};

enum conn_state { C_CONNECTING, C_HANDSHAKE, C_OPEN, C_DEAD };

struct h2_conn;

struct wg_h2_stream {
    uint32_t magic;
    struct h2_conn *c;                  /* NULL once nghttp2 closed the stream */
    struct wg_h2_stream *prev, *next;   /* on c's list */
    int32_t id;
    const struct wg_h2_stream_ops *ops;
    void *ctx;
    bool abandoned;                     /* reset by the exchange: no more callbacks */
    bool head_sent, head_seen, closed, delivering, body_end, deferred;
    bool remote_done;                   /* the response's END_STREAM arrived */
    bool want_writable;
    bool hold;                          /* taken bytes reopen the window on release only */
    uint32_t error;
    bool retryable;
    bool has_body;
    uint8_t *wbuf;                      /* request body: [woff, wlen), wcap bytes, grown on
                                           demand up to WG_H2_BODY_BUF (a unary call's message
                                           is small: no 64 KiB malloc per call) */
    size_t wcap;
    size_t woff, wlen;
    unsigned lent;                      /* payloads of wbuf lent to lent_to's writes (up_ref) */
    struct h2_conn *lent_to;
    uint8_t *rbuf;                      /* response body not yet taken: [roff, rlen) */
    size_t roff, rlen, rcap;
    nghttp2_nv *trailers;               /* request trailers (copied), sent after the body */
    size_t n_trailers;
    nghttp2_nv *rtrailers;              /* response trailers waiting for the data */
    size_t n_rtrailers;
    uint8_t *rtrailer_bytes;
};

struct h2_inst;

/* Whose is a request body's DATA payload lent over h2c from the stream's
 * wbuf (struct wg_h2_lent, its frame header in pend before it): `st` is
 * NULL once the stream is freed, `buf` (its wbuf) is then the connection's,
 * freed with its last payload. */
struct up_ref {
    struct wg_h2_stream *st;
    uint8_t *buf;
};

struct h2_conn {
    uint32_t magic;
    struct h2_inst *hi;
    struct h2_conn *prev, *next;
    enum conn_state state;
    int fd;
    SSL *ssl;
    struct event *rev, *wev, *timer;
    struct event *kick;                 /* flush soon: the exchange wrote something */
    nghttp2_session *s;
    unsigned streams;
    uint32_t peer_max;
    bool goaway, in_callback, dying;
    bool want_writable;                 /* some stream's body buffer was drained */
    uint64_t idle_since_ms, ping_sent_ms;
    unsigned gen;                       /* instance down_generation at connect */
    struct wg_h2_stream *list;
    uint8_t *pend;                      /* gathered frames: [pend_off, pend_len) unsent */
    size_t pend_len, pend_off, pend_cap;
    struct wg_h2_lent *lent;            /* payloads lent, in pend order, and whose each is */
    struct up_ref *refs;                /* ([WG_H2_LENT_MAX] each, one malloc on first use) */
    unsigned nref;
    struct hp_rx *rx;                   /* what reads go into (one count of it) */
};

struct h2_inst {
    struct wg_instance *inst;           /* one reference */
    struct h2_inst *next;
    struct h2_conn *conns;
    unsigned n;
    uint32_t peer_max;                  /* the last MAX_CONCURRENT_STREAMS it sent: a new
                                           connection assumes it until its SETTINGS */
    struct wg_h2_conn_limits lim;       /* its service's, as of the latest submit */
};

struct wg_h2_pool {
    struct event_base *base;
    struct hp_local *loc;               /* the worker's (receive buffers) */
    struct wg_h2_settings set;
    struct h2_inst *insts;
    nghttp2_session_callbacks *cb;
    nghttp2_option *opt;
    struct wg_stats_block *stats;       /* the worker's (stats.h WG_C_H2_UP_*), or own */
    struct wg_stats_block *own;         /* a pool made without a worker's block */
};

static void conn_close(struct h2_conn *c, uint32_t error);
static void conn_retire(struct h2_conn *c);
static void conn_settle(struct h2_conn *c);
static void stream_deliver(struct wg_h2_stream *st);

/* ---- streams ---------------------------------------------------------------- */

static void stream_unlink(struct wg_h2_stream *st)
{
    struct h2_conn *c = st->c;
    if (!c)
        return;
    if (st->prev)
        st->prev->next = st->next;
    else
        c->list = st->next;
    if (st->next)
        st->next->prev = st->prev;
    st->prev = st->next = NULL;
    st->c = NULL;
    c->streams--;
    if (!c->streams)
        c->idle_since_ms = wg_now_ms();
}

static void stream_free(struct wg_h2_stream *st)
{
    struct h2_conn *c = st->lent_to;
    for (unsigned i = 0; c && i < c->nref; i++)
        if (c->refs[i].st == st) {      /* still to be written: the connection's now */
            c->refs[i].st = NULL;
            st->wbuf = NULL;
        }
    free(st->wbuf);
    free(st->rbuf);
    free(st->trailers);
    free(st->rtrailers);
    free(st->rtrailer_bytes);
    st->magic = 0;
    free(st);
}

static struct wg_h2_pool *pool_of(const struct h2_conn *c);

static void count(struct wg_h2_pool *p, enum wg_counter c, uint64_t n)
{
    wg_stats_add(p->stats, c, n);
}

/* nghttp2 closed the stream (or the connection died): report once all data
 * was taken; an abandoned stream is just freed. */
static void stream_closed(struct wg_h2_stream *st, uint32_t error, bool retryable)
{
    struct h2_conn *c = st->c;
    if (c && c->s && st->id > 0)
        nghttp2_session_set_stream_user_data(c->s, st->id, NULL);
    if (c)
        count(pool_of(c), WG_C_H2_UP_STREAMS, (uint64_t)-1);
    stream_unlink(st);
    st->closed = true;
    if (!st->error)
        st->error = error;
    st->retryable = st->retryable || retryable;
    if (st->retryable && c)
        count(pool_of(c), WG_C_H2_UP_REFUSED, 1);
    if (st->abandoned) {
        stream_free(st);
        return;
    }
    stream_deliver(st);
}

/* The stream's window reopens by n bytes (while nghttp2 has the stream). */
static void stream_reopen(struct wg_h2_stream *st, size_t n)
{
    if (n && st->c && st->c->s && st->id > 0 && !st->closed)
        nghttp2_session_consume_stream(st->c->s, st->id, n);
}

/* Bytes the exchange took: they reopen the stream's window, unless it
 * holds the window (then wg_h2_stream_release does). The connection's
 * reopened as they were read (on_data). */
static void stream_consume(struct wg_h2_stream *st, size_t n)
{
    if (!st->hold)
        stream_reopen(st, n);
}

/* Offer buffered response bytes, then trailers and the end, in order. */
static void stream_deliver(struct wg_h2_stream *st)
{
    if (st->delivering || st->abandoned)
        return;
    st->delivering = true;
    while (st->roff < st->rlen) {
        size_t n = st->ops->data(st->ctx, st->rbuf + st->roff, st->rlen - st->roff, NULL);
        if (st->abandoned)
            break;
        if (n > st->rlen - st->roff)
            n = st->rlen - st->roff;
        st->roff += n;
        stream_consume(st, n);
        if (!n)
            break;
    }
    if (st->roff == st->rlen)
        st->roff = st->rlen = 0;
    st->delivering = false;
    if (st->abandoned) {
        if (st->closed)
            stream_free(st);
        return;
    }
    if (st->rlen || !st->closed)
        return;
    if (st->n_rtrailers && st->ops->trailers) {
        st->ops->trailers(st->ctx, st->rtrailers, st->n_rtrailers);
        st->n_rtrailers = 0;
    }
    st->ops->closed(st->ctx, st->error, st->retryable && !st->head_seen);
    stream_free(st);
}

/* ---- nghttp2 callbacks -------------------------------------------------------- */

static struct wg_h2_stream *stream_of(nghttp2_session *s, int32_t id)
{
    struct wg_h2_stream *st = nghttp2_session_get_stream_user_data(s, id);
    return st && st->magic == STREAM_MAGIC ? st : NULL;
}

/* Response heads and trailers are collected into one nv array per frame. */
struct nv_collect {
    nghttp2_nv nv[128];
    uint8_t bytes[16384];
    size_t n, used;
    unsigned status;
    bool overflow;
};
static __thread struct nv_collect collect;

static int on_begin_headers(nghttp2_session *s, const nghttp2_frame *f, void *arg)
{
    collect.n = collect.used = 0;
    collect.status = 0;
    collect.overflow = false;
    return 0;
}

static int on_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                     void *arg)
{
    struct nv_collect *k = &collect;
    if (namelen == 7 && memcmp(name, ":status", 7) == 0) {
        unsigned v = 0;
        for (size_t i = 0; i < valuelen; i++)
            v = v * 10 + (unsigned)(value[i] - '0');
        k->status = v;
        return 0;
    }
    if (namelen && name[0] == ':')
        return 0;
    if (k->n == sizeof k->nv / sizeof k->nv[0] || namelen + valuelen > sizeof k->bytes - k->used) {
        k->overflow = true;
        return 0;
    }
    uint8_t *b = k->bytes + k->used;
    memcpy(b, name, namelen);
    memcpy(b + namelen, value, valuelen);
    k->nv[k->n++] = (nghttp2_nv){ b, b + namelen, namelen, valuelen, NGHTTP2_NV_FLAG_NONE };
    k->used += namelen + valuelen;
    return 0;
}

static int keep_trailers(struct wg_h2_stream *st)
{
    struct nv_collect *k = &collect;
    free(st->rtrailers);
    free(st->rtrailer_bytes);
    st->rtrailers = malloc((k->n ? k->n : 1) * sizeof *st->rtrailers);
    st->rtrailer_bytes = malloc(k->used ? k->used : 1);
    if (!st->rtrailers || !st->rtrailer_bytes)
        return -1;
    memcpy(st->rtrailer_bytes, k->bytes, k->used);
    for (size_t i = 0; i < k->n; i++) {
        st->rtrailers[i] = k->nv[i];
        st->rtrailers[i].name = st->rtrailer_bytes + (k->nv[i].name - k->bytes);
        st->rtrailers[i].value = st->rtrailer_bytes + (k->nv[i].value - k->bytes);
    }
    st->n_rtrailers = k->n;
    return 0;
}

static int on_frame_recv(nghttp2_session *s, const nghttp2_frame *f, void *arg)
{
    struct h2_conn *c = arg;
    switch (f->hd.type) {
    case NGHTTP2_SETTINGS:
        if (!(f->hd.flags & NGHTTP2_FLAG_ACK))
            c->hi->peer_max = c->peer_max = nghttp2_session_get_remote_settings(s,
                              NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
        return 0;
    case NGHTTP2_GOAWAY:
        c->goaway = true;
        count(pool_of(c), WG_C_H2_UP_GOAWAYS, 1);
        return 0;
    case NGHTTP2_PING:
        if (f->hd.flags & NGHTTP2_FLAG_ACK)
            c->ping_sent_ms = 0;
        return 0;
    case NGHTTP2_HEADERS:
        break;
    case NGHTTP2_DATA: {
        struct wg_h2_stream *st = stream_of(s, f->hd.stream_id);
        if (st && (f->hd.flags & NGHTTP2_FLAG_END_STREAM))
            st->remote_done = true;
        return 0;
    }
    default:
        return 0;
    }
    struct wg_h2_stream *st = stream_of(s, f->hd.stream_id);
    if (!st || st->abandoned)
        return 0;
    bool end = f->hd.flags & NGHTTP2_FLAG_END_STREAM;
    if (end)
        st->remote_done = true;
    if (collect.overflow) {
        nghttp2_submit_rst_stream(s, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_INTERNAL_ERROR);
        return 0;
    }
    if (!st->head_seen) {
        if (collect.status < 200)
            return 0;                   /* interim */
        st->head_seen = true;
        st->ops->head(st->ctx, collect.status, collect.nv, collect.n, end);
        return 0;
    }
    if (keep_trailers(st) < 0)
        nghttp2_submit_rst_stream(s, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_INTERNAL_ERROR);
    return 0;
}

static int on_data(nghttp2_session *s, uint8_t flags, int32_t id, const uint8_t *data,
                   size_t len, void *arg)
{
    struct wg_h2_stream *st = stream_of(s, id);
    if (!st || st->abandoned) {
        nghttp2_session_consume(s, id, len);
        return 0;
    }
    /* The connection's window reopens by every byte as it is read; what
     * the exchange does not take waits in rbuf for this stream's client
     * alone. Streams whose clients read nothing then hold at most a stream
     * window each and never the connection's, which their upstream
     * connection's other streams (other clients' calls) need. */
    nghttp2_session_consume_connection(s, len);
    /* Nothing waits ahead of these bytes: offer them straight from
     * nghttp2's input (the connection's receive buffer, which the exchange
     * may keep a count of: not while the worker's buffers out are over
     * their bound), so that only what the exchange leaves is copied. */
    bool offered = st->roff == st->rlen && !st->delivering;
    if (offered) {
        struct h2_conn *c = st->c;
        struct hp_rx *rx = c->rx && pool_of(c)->loc->rx_live <= HP_RX_LIVE_MAX ? c->rx : NULL;
        st->delivering = true;
        size_t n = st->ops->data(st->ctx, data, len, hp_rx_holds(rx, data, len) ? rx : NULL);
        st->delivering = false;
        if (n > len)
            n = len;
        if (st->abandoned) {            /* reset from the callback: give the window back */
            nghttp2_session_consume_stream(s, id, len);
            return 0;
        }
        stream_consume(st, n);
        data += n;
        len -= n;
        if (!len)
            return 0;
    }
    /* The peer respects our window, so rbuf never holds more than it. */
    if (st->rlen + len > st->rcap) {
        size_t cap = st->rcap ? st->rcap : 1024;   /* a unary reply: a small malloc */
        while (cap < st->rlen + len)
            cap *= 2;
        uint8_t *b = realloc(st->rbuf, cap);
        if (!b)
            return NGHTTP2_ERR_CALLBACK_FAILURE;
        st->rbuf = b;
        st->rcap = cap;
    }
    memcpy(st->rbuf + st->rlen, data, len);
    st->rlen += len;
    if (!offered)                       /* (else the exchange just paused the stream) */
        stream_deliver(st);
    return 0;
}

static int on_frame_send(nghttp2_session *s, const nghttp2_frame *f, void *arg)
{
    if (f->hd.type == NGHTTP2_HEADERS) {
        struct wg_h2_stream *st = stream_of(s, f->hd.stream_id);
        if (st)
            st->head_sent = true;
    }
    return 0;
}

static int on_stream_close(nghttp2_session *s, int32_t id, uint32_t error, void *arg)
{
    struct wg_h2_stream *st = stream_of(s, id);
    if (!st)
        return 0;
    if (!error && !st->remote_done)     /* RST_STREAM NO_ERROR before the response ended: */
        error = NGHTTP2_INTERNAL_ERROR; /* cut short, not complete */
    stream_closed(st, error, error == NGHTTP2_REFUSED_STREAM || !st->head_sent);
    return 0;
}

/* The request body's provider: the stream's buffer [woff, wlen). Its bytes
 * are copied by send_body(), straight into the connection's gathered
 * frames behind the frame header (NO_COPY): one copy, not two. */
static ssize_t read_body(nghttp2_session *s, int32_t id, uint8_t *buf, size_t len,
                         uint32_t *flags, nghttp2_data_source *src, void *arg)
{
    struct wg_h2_stream *st = src->ptr;
    size_t n = st->wlen - st->woff;
    if (n > len)
        n = len;
    if (n)
        *flags |= NGHTTP2_DATA_FLAG_NO_COPY;
    if (st->woff + n == st->wlen && st->body_end) {
        *flags |= NGHTTP2_DATA_FLAG_EOF;
        if (st->n_trailers) {
            *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
            if (nghttp2_submit_trailer(s, id, st->trailers, st->n_trailers) != 0)
                return NGHTTP2_ERR_CALLBACK_FAILURE;
        }
        return (ssize_t)n;
    }
    if (!n) {
        st->deferred = true;
        return NGHTTP2_ERR_DEFERRED;
    }
    return (ssize_t)n;
}

/* A request body's DATA frames are as large as the instance, the windows
 * and the stream's buffer allow (nghttp2 alone stops at 16 KiB): a body
 * that arrives in 16 KiB frames goes on in frames of what gathered in the
 * buffer meanwhile, up to WG_H2_BODY_BUF. The price is nghttp2's frame
 * buffer, grown to that once per connection (the payload itself is
 * NO_COPY). */
static ssize_t body_frame_length(nghttp2_session *s, uint8_t type, int32_t id,
                                 int32_t conn_window, int32_t stream_window, uint32_t peer_max,
                                 void *arg)
{
    int64_t n = conn_window < stream_window ? conn_window : stream_window;
    if (n > peer_max)
        n = peer_max;
    return n > WG_H2_BODY_BUF ? WG_H2_BODY_BUF : (ssize_t)n;
}

static int pend_reserve(struct h2_conn *c, size_t n);

/* A DATA frame read_body() gave (within the same mem_send): copied into
 * the gathered frames, or over h2c lent from wbuf (struct up_ref). */
static int send_body(nghttp2_session *s, nghttp2_frame *f, const uint8_t *framehd, size_t len,
                     nghttp2_data_source *src, void *arg)
{
    struct h2_conn *c = arg;
    struct wg_h2_stream *st = src->ptr;
    size_t pad = f->data.padlen;
    if (st->wlen - st->woff < len)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    if (!c->ssl && !pad && len >= WG_H2_LEND_MIN) {
        if (!c->lent) {
            if (!(c->lent = malloc(WG_H2_LENT_MAX * (sizeof *c->lent + sizeof *c->refs))))
                return NGHTTP2_ERR_CALLBACK_FAILURE;
            c->refs = (struct up_ref *)(c->lent + WG_H2_LENT_MAX);
        }
        if (c->nref == WG_H2_LENT_MAX)
            return NGHTTP2_ERR_WOULDBLOCK;
        if (pend_reserve(c, 9) != 0)
            return NGHTTP2_ERR_CALLBACK_FAILURE;
        memcpy(c->pend + c->pend_len, framehd, 9);
        c->pend_len += 9;
        c->lent[c->nref] = (struct wg_h2_lent){ st->wbuf + st->woff, c->pend_len, len };
        c->refs[c->nref++] = (struct up_ref){ st, st->wbuf };
        st->lent++;
        st->lent_to = c;
        st->woff += len;                /* room again once written (refs_done) */
        return 0;
    }
    if (pend_reserve(c, 9 + pad + len) != 0)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    c->pend_len += wg_h2_data_frame(c->pend + c->pend_len, f, framehd, st->wbuf + st->woff, len);
    st->woff += len;
    if (st->woff == st->wlen && !st->lent)
        st->woff = st->wlen = 0;
    st->want_writable = true;           /* room again: tell the exchange after the flush */
    c->want_writable = true;
    return 0;
}

/* The first n refs are over (written, or the connection is gone): a
 * stream's wbuf with nothing lent any more may be reused (and the
 * exchange told there is room); an orphan buffer goes with its last ref. */
static void refs_done(struct h2_conn *c, unsigned n)
{
    for (unsigned i = 0; i < n; i++) {
        struct up_ref *f = &c->refs[i];
        struct wg_h2_stream *st = f->st;
        if (st) {
            if (--st->lent)
                continue;
            st->lent_to = NULL;
            if (st->woff == st->wlen)
                st->woff = st->wlen = 0;
            st->want_writable = true;
            c->want_writable = true;
            continue;
        }
        bool last = true;
        for (unsigned j = i + 1; j < c->nref && last; j++)
            last = c->refs[j].buf != f->buf;
        if (last)
            free(f->buf);
    }
    if (n) {
        memmove(c->lent, c->lent + n, (c->nref - n) * sizeof *c->lent);
        memmove(c->refs, c->refs + n, (c->nref - n) * sizeof *c->refs);
    }
    c->nref -= n;
}

/* The gathered frames with the lent payloads in their places, in one
 * writev (plain text only); the same contract as io_send. */
static int send_lent(struct h2_conn *c, size_t *done)
{
    unsigned over;
    ssize_t k = wg_h2_lent_write(c->fd, c->pend, &c->pend_off, c->pend_len, c->lent, c->nref, &over);
    if (k < 0) {
        *done = 0;
        return errno == EAGAIN || errno == EINTR ? EAGAIN : errno;
    }
    *done = (size_t)k;
    refs_done(c, over);
    return 0;
}

/* ---- connections ---------------------------------------------------------------- */

static struct wg_h2_pool *pool_of_hi(const struct h2_inst *hi);
static struct wg_h2_pool *pool_of(const struct h2_conn *c) { return pool_of_hi(c->hi); }

/* h2_inst is allocated inside a block that starts with the pool pointer. */
struct h2_inst_block {
    struct wg_h2_pool *pool;
    struct h2_inst hi;
};
static struct wg_h2_pool *pool_of_hi(const struct h2_inst *hi)
{
    return ((const struct h2_inst_block *)((const char *)hi -
                                           offsetof(struct h2_inst_block, hi)))->pool;
}

static int io_send(struct h2_conn *c, const uint8_t *p, size_t len, size_t *done)
{
    if (c->ssl) {
        enum wg_tls_io r = wg_tls_write(c->ssl, p, len, done);
        if (r == WG_TLS_OK)
            return 0;
        *done = 0;
        return r == WG_TLS_WANT_WRITE || r == WG_TLS_WANT_READ ? EAGAIN : EPIPE;
    }
    ssize_t n = send(c->fd, p, len, MSG_NOSIGNAL);
    if (n >= 0) {
        *done = (size_t)n;
        return 0;
    }
    *done = 0;
    return errno == EAGAIN || errno == EINTR ? EAGAIN : errno;
}

/* Room for n more gathered bytes. */
static int pend_reserve(struct h2_conn *c, size_t n)
{
    if (c->pend_len + n <= c->pend_cap)
        return 0;
    size_t cap = c->pend_len + n;
    if (cap < SEND_BATCH)
        cap = SEND_BATCH;
    uint8_t *b = realloc(c->pend, cap);
    if (!b)
        return ENOMEM;
    c->pend = b;
    c->pend_cap = cap;
    return 0;
}

/* Write what the session has; the rest waits for writability. The frames
 * nghttp2 serialises one at a time are gathered (up to SEND_BATCH) and
 * written with one send(): a unary call's HEADERS and DATA, and every
 * stream's frames submitted in the same loop turn, leave together. */
static int conn_flush(struct h2_conn *c)
{
    if (c->state != C_OPEN)
        return 0;
    for (;;) {
        if (c->pend_off == c->pend_len && !c->nref) {
            c->pend_off = c->pend_len = 0;
            while (c->pend_len < SEND_BATCH && c->nref < WG_H2_LENT_MAX) {
                const uint8_t *data;
                c->in_callback = true;
                ssize_t n = nghttp2_session_mem_send(c->s, &data);
                c->in_callback = false;
                if (n < 0)
                    return EPROTO;
                if (n == 0)
                    break;
                if ((size_t)n > PENDING_MAX)
                    return EMSGSIZE;
                if (pend_reserve(c, (size_t)n) != 0)
                    return ENOMEM;
                memcpy(c->pend + c->pend_len, data, (size_t)n);
                c->pend_len += (size_t)n;
            }
            if (!c->pend_len && !c->nref)
                break;
        }
        size_t done;
        int err;
        if (c->nref)                    /* (moves pend_off itself) */
            err = send_lent(c, &done);
        else if (!(err = io_send(c, c->pend + c->pend_off, c->pend_len - c->pend_off, &done)))
            c->pend_off += done;
        if (err == EAGAIN) {
            event_add(c->wev, NULL);
            break;
        }
        if (err)
            return err;
    }
    /* Body buffers drained: tell their exchanges (outside nghttp2); the
     * streams are walked only when one was (a connection has up to
     * max_streams of them, and this runs on every flush). */
    if (!c->want_writable)
        return 0;
    c->want_writable = false;
    for (struct wg_h2_stream *st = c->list, *next; st; st = next) {
        next = st->next;
        if (st->want_writable && !st->abandoned && st->ops->writable) {
            st->want_writable = false;
            st->ops->writable(st->ctx);
        }
    }
    return 0;
}

/* After nghttp2 ran: close a connection that is over. */
static void conn_settle(struct h2_conn *c)
{
    if (c->in_callback)
        return;                         /* the caller of nghttp2 settles afterwards */
    if (c->dying) {
        conn_close(c, NGHTTP2_INTERNAL_ERROR);
        return;
    }
    int err = conn_flush(c);
    if (err) {
        conn_close(c, NGHTTP2_CONNECT_ERROR);
        return;
    }
    if (c->state == C_OPEN && !nghttp2_session_want_read(c->s) &&
        !nghttp2_session_want_write(c->s))
        conn_close(c, NGHTTP2_NO_ERROR);
    else if (c->state == C_OPEN && !c->streams && (c->goaway || !c->hi->lim.max_idle)) {
        if (!c->goaway)                 /* max_idle 0: none is kept */
            count(pool_of(c), WG_C_H2_UP_IDLE_CLOSED, 1);
        conn_retire(c);
    }
}

/* The buffer the next read goes into: the connection's, from its first
 * byte once nobody else counts it, after its bytes while it has room
 * (what others count never moves), else a new one. */
static struct hp_rx *read_room(struct h2_conn *c)
{
    struct hp_local *loc = pool_of(c)->loc;
    struct hp_rx *rx = c->rx;
    if (rx && rx->refs == 1)
        rx->len = 0;
    else if (!rx || HP_RX - rx->len < READ_CHUNK) {
        hp_rx_put(loc, &c->rx);
        rx = c->rx = hp_rx_new(loc);
    }
    return rx;
}

/* n bytes just read after rx's bytes, which c->rx is (on_data tells by it
 * whether a payload can be lent): nghttp2's. 1 while c reads on, 0 once
 * it is dying (conn_settle closes it), -1 once it is closed (gone). */
static int feed(struct h2_conn *c, struct hp_rx *rx, size_t n)
{
    uint8_t *buf = rx->data + rx->len;
    rx->len += (uint32_t)n;
    c->in_callback = true;
    ssize_t used = nghttp2_session_mem_recv(c->s, buf, n);
    c->in_callback = false;
    if (used < 0 || (size_t)used != n) {
        conn_close(c, NGHTTP2_PROTOCOL_ERROR);
        return -1;
    }
    return !c->dying;
}

static void rx_put_all(struct hp_local *loc, struct hp_rx **rx, unsigned n)
{
    for (unsigned i = 0; i < n; i++)
        hp_rx_put(loc, &rx[i]);
}

/* Reads until the socket is drained, READ_ROUNDS reads or READ_EVENT_BYTES.
 * Over h2c, once a read filled all its room, the next one is given
 * READ_BUFS buffers in one readv: a bulk reply comes in fewer, larger
 * reads, and the kernel sends the instance fewer window-opening ACKs, each
 * of which wakes it (1 MiB replies: 24 system calls a call became 8). nghttp2
 * takes each buffer's bytes in turn, so that a payload it gives lies in
 * one buffer (c->rx). */
static void conn_read(struct h2_conn *c)
{
    struct hp_local *loc = pool_of(c)->loc;
    bool wide = false;
    size_t got = 0;
    for (int rounds = 0; rounds < READ_ROUNDS && got < READ_EVENT_BYTES; rounds++) {
        struct hp_rx *rx = read_room(c), *more[READ_BUFS - 1] = { 0 };
        unsigned nmore = 0;
        if (!rx) {
            conn_close(c, NGHTTP2_INTERNAL_ERROR);
            return;
        }
        size_t room = HP_RX - rx->len, n = 0;
        int err = 0;
        if (c->ssl) {
            enum wg_tls_io r = wg_tls_read(c->ssl, rx->data + rx->len, room, &n);
            if (r == WG_TLS_WANT_READ)
                break;
            if (r == WG_TLS_WANT_WRITE) {
                event_add(c->wev, NULL);
                break;
            }
            if (r != WG_TLS_OK)
                err = ECONNRESET;
        } else {
            struct iovec iov[READ_BUFS] = { { rx->data + rx->len, room } };
            for (; wide && nmore < READ_BUFS - 1 && (more[nmore] = hp_rx_new(loc)); nmore++)
                iov[nmore + 1] = (struct iovec){ more[nmore]->data, HP_RX };
            ssize_t k = readv(c->fd, iov, (int)(1 + nmore));
            if (k < 0 && (errno == EAGAIN || errno == EINTR)) {
                rx_put_all(loc, more, nmore);
                break;
            }
            if (k <= 0)
                err = ECONNRESET;
            else
                n = (size_t)k;
        }
        if (err) {
            rx_put_all(loc, more, nmore);
            conn_close(c, NGHTTP2_CONNECT_ERROR);
            return;
        }
        /* A short read means the socket is drained; SSL_read returns one
         * record at most, so over TLS only a short record says so. */
        size_t asked = room + nmore * (size_t)HP_RX;
        bool drained = n < (c->ssl ? TLS_RECORD : asked) && !(c->ssl && SSL_pending(c->ssl) > 0);
        wide = !c->ssl && n == asked;
        got += n;
        int on = feed(c, rx, n < room ? n : room);
        unsigned used = 0;
        for (size_t left = n > room ? n - room : 0; on > 0 && left; used++) {
            size_t k = left < HP_RX ? left : HP_RX;
            hp_rx_put(loc, &c->rx);     /* (what others count of it stays theirs) */
            c->rx = more[used];
            on = feed(c, c->rx, k);
            left -= k;
        }
        rx_put_all(loc, more + used, nmore - used);
        if (on < 0)
            return;
        if (!on || drained)
            break;
    }
    conn_settle(c);
}

static void handshake(struct h2_conn *c)
{
    enum wg_tls_io r = wg_tls_handshake(c->ssl);
    if (r == WG_TLS_WANT_READ)
        return;
    if (r == WG_TLS_WANT_WRITE) {
        event_add(c->wev, NULL);
        return;
    }
    const unsigned char *proto = NULL;
    unsigned len = 0;
    if (r == WG_TLS_OK)
        SSL_get0_alpn_selected(c->ssl, &proto, &len);
    if (r != WG_TLS_OK || len != 2 || memcmp(proto, "h2", 2) != 0) {
        wg_warn("msg=\"h2 upstream handshake failed\" upstream=%s address=%s reason=%s",
                c->hi->inst->id, c->hi->inst->addr_text, r == WG_TLS_OK ? "no ALPN h2" : "tls");
        atomic_fetch_add_explicit(&c->hi->inst->connect_failures, 1, memory_order_relaxed);
        conn_close(c, NGHTTP2_CONNECT_ERROR);
        return;
    }
    c->state = C_OPEN;
    event_del(c->timer);
    conn_settle(c);
}

static void on_read(evutil_socket_t fd, short what, void *arg)
{
    struct h2_conn *c = arg;
    if (c->state == C_HANDSHAKE)
        handshake(c);
    else if (c->state == C_OPEN)
        conn_read(c);
}

static void on_write(evutil_socket_t fd, short what, void *arg)
{
    struct h2_conn *c = arg;
    if (c->state == C_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
            err = errno;
        if (err) {
            atomic_fetch_add_explicit(&c->hi->inst->connect_failures, 1, memory_order_relaxed);
            conn_close(c, NGHTTP2_CONNECT_ERROR);
            return;
        }
        if (event_add(c->rev, NULL) < 0) {
            conn_close(c, NGHTTP2_INTERNAL_ERROR);
            return;
        }
        if (c->ssl) {
            c->state = C_HANDSHAKE;
            handshake(c);
            return;
        }
        c->state = C_OPEN;
        event_del(c->timer);
        conn_settle(c);
        return;
    }
    if (c->state == C_HANDSHAKE)
        handshake(c);
    else if (c->state == C_OPEN)
        conn_settle(c);
}

/* The exchange's writes (submit, body, resets, window updates) are flushed
 * from the loop, never from inside the call: a callback they caused would
 * otherwise run in the middle of the exchange's own code. */
static void on_kick(evutil_socket_t fd, short what, void *arg)
{
    struct h2_conn *c = arg;
    if (c->state == C_OPEN)
        conn_settle(c);
}

static void conn_kick(struct h2_conn *c)
{
    if (c && c->kick && !event_pending(c->kick, EV_TIMEOUT, NULL))
        event_active(c->kick, EV_TIMEOUT, 0);
}

/* The connect or the handshake took longer than connect_timeout: a failed
 * connect, like a refused one (not an unprocessed stream to send again). */
static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    struct h2_conn *c = arg;
    atomic_fetch_add_explicit(&c->hi->inst->connect_failures, 1, memory_order_relaxed);
    conn_close(c, NGHTTP2_CONNECT_ERROR);
}

/* An open connection that is no longer wanted: GOAWAY NO_ERROR, then close. */
static void conn_retire(struct h2_conn *c)
{
    if (c->in_callback) {
        c->dying = true;
        return;
    }
    nghttp2_submit_goaway(c->s, NGHTTP2_FLAG_NONE, 0, NGHTTP2_NO_ERROR, NULL, 0);
    conn_flush(c);
    conn_close(c, NGHTTP2_NO_ERROR);
}

/* Close now: every stream still open is closed (retryable when its HEADERS
 * never left). Safe only outside nghttp2's callbacks. */
static void conn_close(struct h2_conn *c, uint32_t error)
{
    if (c->in_callback) {
        c->dying = true;
        return;
    }
    struct h2_inst *hi = c->hi;
    struct wg_h2_pool *p = pool_of(c);
    c->state = C_DEAD;                  /* a retry from a closed callback goes elsewhere */
    while (c->list) {
        struct wg_h2_stream *st = c->list;
        stream_closed(st, error ? error : NGHTTP2_CONNECT_ERROR, !st->head_sent);
    }
    if (c->prev)
        c->prev->next = c->next;
    else
        hi->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    hi->n--;
    count(p, WG_C_H2_UP_CONNECTIONS, (uint64_t)-1);
    if (c->rev)
        event_free(c->rev);
    if (c->wev)
        event_free(c->wev);
    if (c->timer)
        event_free(c->timer);
    if (c->kick)
        event_free(c->kick);
    if (c->ssl) {
        wg_tls_close(c->ssl);
        SSL_free(c->ssl);
    }
    if (c->fd >= 0)
        close(c->fd);
    nghttp2_session_del(c->s);
    hp_rx_put(p->loc, &c->rx);         /* (what others count of it stays theirs) */
    for (unsigned i = 0; i < c->nref; i++) {    /* nothing more is written */
        struct up_ref *f = &c->refs[i];
        if (f->st) {                    /* a stream's own wbuf: it frees it */
            f->st->lent = 0;
            f->st->lent_to = NULL;
            f->st = NULL;
            f->buf = NULL;
        }
    }
    refs_done(c, c->nref);              /* frees the orphans' */
    free(c->lent);
    free(c->pend);
    c->magic = 0;
    free(c);
}

/* The SETTINGS_MAX_FRAME_SIZE we send: the stream window, within the
 * RFC's range. No DATA frame can be larger than the window anyway, and
 * every frame costs nghttp2 and the exchange the same whatever its
 * size: a peer that sends DATA as large as this allows sends a 1 MiB
 * reply in 4 frames at the default window, not 64 (the benchmark's
 * backend does: 40 % fewer instructions a 1 MiB call). Nothing is
 * buffered per frame: nghttp2 hands a payload over in pieces, each
 * lying in one receive buffer (conn_read). */
static uint32_t frame_max(uint32_t window)
{
    return window < 16384 ? 16384 : window > 16777215 ? 16777215 : window;
}

static struct h2_conn *conn_open(struct wg_h2_pool *p, struct h2_inst *hi, SSL_CTX *tls,
                                 const char *sni, bool verify, int *err)
{
    struct h2_conn *c = calloc(1, sizeof *c);
    if (!c) {
        *err = ENOMEM;
        return NULL;
    }
    c->magic = CONN_MAGIC;
    c->hi = hi;
    c->fd = -1;
    c->peer_max = hi->peer_max;
    c->gen = wg_health_conn_generation(hi->inst);
    c->idle_since_ms = wg_now_ms();
    c->next = hi->conns;
    if (hi->conns)
        hi->conns->prev = c;
    hi->conns = c;
    hi->n++;
    count(p, WG_C_H2_UP_CONNECTIONS, 1);
    count(p, WG_C_H2_UP_CONNECTS, 1);
    const struct wg_instance *inst = hi->inst;
    nghttp2_settings_entry iv[] = {
        { NGHTTP2_SETTINGS_ENABLE_PUSH, 0 },
        { NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, p->set.stream_window },
        { NGHTTP2_SETTINGS_MAX_FRAME_SIZE, frame_max(p->set.stream_window) },
    };
    if (nghttp2_session_client_new3(&c->s, p->cb, c, p->opt, wg_h2_mem()) != 0 ||
        nghttp2_submit_settings(c->s, NGHTTP2_FLAG_NONE, iv, 3) != 0 ||
        nghttp2_session_set_local_window_size(c->s, NGHTTP2_FLAG_NONE, 0, (int32_t)p->set.conn_window) != 0) {
        *err = ENOMEM;
        goto fail;
    }
    struct sockaddr_storage ss;
    socklen_t sslen = wg_instance_sockaddr(inst, &ss);
    c->fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        *err = errno;
        goto fail;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->rev = event_new(p->base, c->fd, EV_READ | EV_PERSIST, on_read, c);
    c->wev = event_new(p->base, c->fd, EV_WRITE, on_write, c);
    c->timer = evtimer_new(p->base, on_timer, c);
    c->kick = event_new(p->base, -1, 0, on_kick, c);
    if (!c->rev || !c->wev || !c->timer || !c->kick) {
        *err = ENOMEM;
        goto fail;
    }
    if (tls && (!(c->ssl = wg_tls_upstream_ssl(tls, c->fd, sni, verify,
                                                (const struct sockaddr *)&ss)) ||
                SSL_set_alpn_protos(c->ssl, (const unsigned char *)"\x02h2", 3) != 0)) {
        *err = ENOMEM;
        goto fail;
    }
    if (connect(c->fd, (const struct sockaddr *)&ss, sslen) < 0 &&
        errno != EINPROGRESS) {
        *err = errno;
        goto fail;
    }
    uint64_t ms = hi->lim.connect_timeout_ms;
    struct timeval tv = { (time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000 };
    if (event_add(c->wev, NULL) < 0 || event_add(c->timer, &tv) < 0) {
        *err = ENOMEM;
        goto fail;
    }
    c->state = C_CONNECTING;
    return c;
fail:
    conn_close(c, NGHTTP2_CONNECT_ERROR);
    return NULL;
}

/* ---- the pool ---------------------------------------------------------------------- */

struct wg_h2_conn_limits wg_h2_service_limits(const struct wg_service_config *sc)
{
    return (struct wg_h2_conn_limits){
        .max_idle = sc->upstream.max_idle, .idle_timeout_ms = sc->upstream.idle_timeout_ms,
        .connect_timeout_ms = sc->connect_timeout_ms,
        .ping_interval_ms = sc->upstream.ping_interval_ms,
        .ping_timeout_ms = sc->upstream.ping_timeout_ms,
    };
}

struct wg_h2_pool *wg_h2_pool_local(struct hp_local *loc, struct event_base *base,
                                    struct wg_stats_block *stats)
{
    if (!loc->h2 && (loc->h2 = wg_h2_pool_new(base, &wg_h2_defaults, stats)))
        loc->h2_free = wg_h2_pool_free;
    return loc->h2;
}

struct wg_h2_pool *wg_h2_pool_new(struct event_base *base, const struct wg_h2_settings *set,
                                  struct wg_stats_block *stats)
{
    struct wg_h2_pool *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->base = base;
    p->loc = hp_local_get(base);
    p->set = set ? *set : wg_h2_defaults;
    if (!stats && posix_memalign((void **)&p->own, 64, sizeof *p->own) == 0) {
        for (int i = 0; i < WG_C__COUNT; i++)
            atomic_init(&p->own->c[i], 0);
        stats = p->own;
    }
    p->stats = stats;
    if (!stats || !p->loc || nghttp2_session_callbacks_new(&p->cb) != 0 || nghttp2_option_new(&p->opt) != 0) {
        wg_h2_pool_free(p);
        return NULL;
    }
    nghttp2_option_set_no_auto_window_update(p->opt, 1);
    nghttp2_option_set_peer_max_concurrent_streams(p->opt, 100);
    nghttp2_session_callbacks_set_on_begin_headers_callback(p->cb, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(p->cb, on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(p->cb, on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(p->cb, on_data);
    nghttp2_session_callbacks_set_on_frame_send_callback(p->cb, on_frame_send);
    nghttp2_session_callbacks_set_on_stream_close_callback(p->cb, on_stream_close);
    nghttp2_session_callbacks_set_send_data_callback(p->cb, send_body);
    nghttp2_session_callbacks_set_data_source_read_length_callback(p->cb, body_frame_length);
    return p;
}

static void inst_drop(struct wg_h2_pool *p, struct h2_inst **link)
{
    struct h2_inst *hi = *link;
    *link = hi->next;
    wg_instance_unref(hi->inst);
    free((char *)hi - offsetof(struct h2_inst_block, hi));
}

void wg_h2_pool_free(struct wg_h2_pool *p)
{
    if (!p)
        return;
    while (p->insts) {
        while (p->insts->conns)
            conn_close(p->insts->conns, NGHTTP2_CANCEL);
        inst_drop(p, &p->insts);
    }
    if (p->cb)
        nghttp2_session_callbacks_del(p->cb);
    if (p->opt)
        nghttp2_option_del(p->opt);
    free(p->own);
    free(p);
}

static struct h2_inst *inst_find(struct wg_h2_pool *p, struct wg_instance *inst, bool create)
{
    for (struct h2_inst **link = &p->insts; *link; link = &(*link)->next) {
        struct h2_inst *hi = *link;
        if (hi->inst != inst)
            continue;
        *link = hi->next;               /* to the front */
        hi->next = p->insts;
        p->insts = hi;
        return hi;
    }
    if (!create)
        return NULL;
    struct h2_inst_block *b = calloc(1, sizeof *b);
    if (!b)
        return NULL;
    b->pool = p;
    wg_instance_ref(inst);
    b->hi.inst = inst;
    b->hi.peer_max = 100;
    b->hi.lim = p->set.lim;
    b->hi.next = p->insts;
    p->insts = &b->hi;
    return &b->hi;
}

static bool conn_has_room(const struct wg_h2_pool *p, const struct h2_conn *c)
{
    unsigned cap = c->peer_max < p->set.max_streams ? c->peer_max : p->set.max_streams;
    return c->state != C_DEAD && !c->goaway && !c->dying && c->streams < cap &&
           nghttp2_session_check_request_allowed(c->s);
}

struct wg_h2_stream *wg_h2_submit(struct wg_h2_pool *p, struct wg_instance *inst,
                                  SSL_CTX *tls, const char *sni, bool verify,
                                  const struct wg_h2_conn_limits *lim,
                                  const nghttp2_nv *nv, size_t n, bool has_body,
                                  const struct wg_h2_stream_ops *ops, void *ctx, int *err)
{
    struct h2_inst *hi = inst_find(p, inst, true);
    if (!hi) {
        *err = ENOMEM;
        return NULL;
    }
    if (lim)
        hi->lim = *lim;
    struct h2_conn *c = NULL;
    for (struct h2_conn *k = hi->conns; k; k = k->next)
        if (conn_has_room(p, k))
            c = k;                      /* the list is newest first: the oldest wins */
    if (!c) {
        if (hi->n >= p->set.max_conns) {
            *err = EBUSY;
            return NULL;
        }
        if (!(c = conn_open(p, hi, tls, sni, verify, err)))
            return NULL;
    }
    struct wg_h2_stream *st = calloc(1, sizeof *st);
    if (!st) {
        *err = ENOMEM;
        return NULL;
    }
    st->magic = STREAM_MAGIC;
    st->has_body = has_body;
    st->ops = ops;
    st->ctx = ctx;
    nghttp2_data_provider dp = { .source.ptr = st, .read_callback = read_body };
    /* nghttp2 keeps NO_COPY names and values by reference until the HEADERS
     * go out, which is later (conn_kick): the caller's buffers (a head on
     * its stack) are gone by then. The fields are copied now, as promised. */
    nghttp2_nv local[64], *own = n <= 64 ? local : malloc(n * sizeof *own);
    if (!own) {
        stream_free(st);
        *err = ENOMEM;
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        own[i] = nv[i];
        own[i].flags &= (uint8_t)~(NGHTTP2_NV_FLAG_NO_COPY_NAME | NGHTTP2_NV_FLAG_NO_COPY_VALUE);
    }
    st->id = nghttp2_submit_request(c->s, NULL, own, n, has_body ? &dp : NULL, st);
    if (own != local)
        free(own);
    if (st->id < 0) {
        *err = st->id == NGHTTP2_ERR_NOMEM ? ENOMEM : EBUSY;
        stream_free(st);
        return NULL;
    }
    st->c = c;
    st->next = c->list;
    if (c->list)
        c->list->prev = st;
    c->list = st;
    c->streams++;
    c->ping_sent_ms = 0;
    count(p, WG_C_H2_UP_STREAMS, 1);
    conn_kick(c);
    return st;
}

size_t wg_h2_stream_write(struct wg_h2_stream *st, const uint8_t *data, size_t len)
{
    if (!st->has_body || st->body_end || st->closed)
        return 0;
    if (st->woff && st->woff == st->wlen && !st->lent)
        st->woff = st->wlen = 0;
    if (st->woff && !st->lent) {        /* compact: room at the end */
        memmove(st->wbuf, st->wbuf + st->woff, st->wlen - st->woff);
        st->wlen -= st->woff;
        st->woff = 0;
    }
    size_t room = (st->lent ? st->wcap : WG_H2_BODY_BUF) - st->wlen;   /* lent: not moved */
    if (len > room)
        len = room;
    if (st->wlen + len > st->wcap) {
        size_t cap = st->wcap ? st->wcap : 1024;
        while (cap < st->wlen + len)
            cap *= 2;
        if (cap > WG_H2_BODY_BUF)
            cap = WG_H2_BODY_BUF;
        uint8_t *b = realloc(st->wbuf, cap);
        if (b) {
            st->wbuf = b;
            st->wcap = cap;
        } else {
            len = st->wcap - st->wlen;  /* out of memory: what fits */
        }
    }
    if (len)
        memcpy(st->wbuf + st->wlen, data, len);
    st->wlen += len;
    if (len && st->c && st->deferred) {
        st->deferred = false;
        nghttp2_session_resume_data(st->c->s, st->id);
        conn_kick(st->c);
    }
    return len;
}

int wg_h2_stream_end(struct wg_h2_stream *st, const nghttp2_nv *trailers, size_t n)
{
    if (!st->has_body || st->body_end)
        return -1;
    st->body_end = true;
    if (n) {
        size_t bytes = 0;
        for (size_t i = 0; i < n; i++)
            bytes += trailers[i].namelen + trailers[i].valuelen;
        uint8_t *b = malloc(n * sizeof(nghttp2_nv) + bytes);
        if (!b)
            return -1;
        nghttp2_nv *v = (nghttp2_nv *)b;
        uint8_t *q = b + n * sizeof(nghttp2_nv);
        for (size_t i = 0; i < n; i++) {
            v[i] = trailers[i];
            v[i].name = memcpy(q, trailers[i].name, trailers[i].namelen);
            q += trailers[i].namelen;
            v[i].value = memcpy(q, trailers[i].value, trailers[i].valuelen);
            q += trailers[i].valuelen;
            v[i].flags = NGHTTP2_NV_FLAG_NONE;
        }
        st->trailers = v;
        st->n_trailers = n;
    }
    if (st->c && st->deferred) {
        st->deferred = false;
        nghttp2_session_resume_data(st->c->s, st->id);
        conn_kick(st->c);
    }
    return 0;
}

void wg_h2_stream_resume_read(struct wg_h2_stream *st)
{
    struct h2_conn *c = st->c;
    stream_deliver(st);                 /* may free st */
    if (c && c->magic == CONN_MAGIC)
        conn_kick(c);                   /* the WINDOW_UPDATEs of what was taken */
}

void wg_h2_stream_hold_window(struct wg_h2_stream *st)
{
    st->hold = true;
}

void wg_h2_stream_release(struct wg_h2_stream *st, size_t n)
{
    if (!st->hold)
        return;
    stream_reopen(st, n);
    conn_kick(st->c);                   /* the WINDOW_UPDATE */
}

void wg_h2_stream_reset(struct wg_h2_stream *st, uint32_t error)
{
    st->abandoned = true;
    if (st->closed) {
        if (!st->delivering)
            stream_free(st);
        return;
    }
    struct h2_conn *c = st->c;
    /* Bytes buffered but never taken: the connection's window had them
     * back when they were buffered, the stream's ends with the reset. */
    st->roff = st->rlen = 0;
    nghttp2_submit_rst_stream(c->s, NGHTTP2_FLAG_NONE, st->id, error);
    conn_kick(c);                       /* on_stream_close frees it */
}

int32_t wg_h2_stream_id(const struct wg_h2_stream *st) { return st->id > 0 ? st->id : 0; }

/* Idle connections: at most max_idle per instance, idle_timeout, PINGs,
 * and none to an instance that went down since the connection was made. */
void wg_h2_pool_tick(struct wg_h2_pool *p, uint64_t now_ms)
{
    for (struct h2_inst **link = &p->insts; *link;) {
        struct h2_inst *hi = *link;
        unsigned idle = 0;
        for (struct h2_conn *c = hi->conns, *next; c; c = next) {
            next = c->next;
            if (c->streams || c->state != C_OPEN)
                continue;
            const struct wg_h2_conn_limits *lim = &hi->lim;
            bool spare = ++idle > lim->max_idle || now_ms - c->idle_since_ms >= lim->idle_timeout_ms;
            bool close = spare || !wg_health_conn_reusable(hi->inst, c->gen);
            if (!close && c->ping_sent_ms && now_ms - c->ping_sent_ms >= lim->ping_timeout_ms) {
                count(p, WG_C_H2_UP_PING_FAILURES, 1);
                close = true;
            }
            if (close) {
                idle--;
                if (spare)
                    count(p, WG_C_H2_UP_IDLE_CLOSED, 1);
                conn_retire(c);
                continue;
            }
            if (lim->ping_interval_ms && !c->ping_sent_ms &&
                now_ms - c->idle_since_ms >= lim->ping_interval_ms) {
                c->ping_sent_ms = now_ms ? now_ms : 1;
                c->idle_since_ms = now_ms;  /* next ping one interval later */
                count(p, WG_C_H2_UP_PINGS, 1);
                nghttp2_submit_ping(c->s, NGHTTP2_FLAG_NONE, NULL);
                conn_settle(c);
            }
        }
        if (!hi->conns)
            inst_drop(p, link);         /* releases the instance reference */
        else
            link = &hi->next;
    }
}

void wg_h2_pool_stats(const struct wg_h2_pool *p, struct wg_h2_pool_stats *out)
{
    const struct wg_stats_block *b = p->stats;
#define GET(k) atomic_load_explicit(&b->c[k], memory_order_relaxed)
    *out = (struct wg_h2_pool_stats){
        .connections = GET(WG_C_H2_UP_CONNECTIONS), .streams = GET(WG_C_H2_UP_STREAMS),
        .connects = GET(WG_C_H2_UP_CONNECTS), .goaways = GET(WG_C_H2_UP_GOAWAYS),
        .pings = GET(WG_C_H2_UP_PINGS), .ping_failures = GET(WG_C_H2_UP_PING_FAILURES),
        .refused = GET(WG_C_H2_UP_REFUSED), .idle_closed = GET(WG_C_H2_UP_IDLE_CLOSED),
    };
#undef GET
}

/* ---- heads ------------------------------------------------------------------------ */

static bool span_is(const char *msg, struct wg_http_span sp, const char *lower)
{
    size_t n = strlen(lower);
    if (sp.len != n)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = msg[sp.off + i];
        if ((c >= 'A' && c <= 'Z' ? (char)(c + 32) : c) != lower[i])
            return false;
    }
    return true;
}

/* ASCII A-Z of `8 bytes` as a-z, other bytes unchanged. */
static uint64_t lower8(uint64_t x)
{
    const uint64_t high = 0x8080808080808080ull;
    uint64_t h7 = x & ~high;
    uint64_t upper = ((h7 + 0x3f3f3f3f3f3f3f3full) ^ (h7 + 0x2525252525252525ull)) & ~x & high;
    return x | upper >> 2;              /* bit 7 of each byte in A-Z, moved to bit 5 */
}

/* Eight bytes at a time; from n >= 8 on, the last word overlaps the one
 * before (lower-casing is idempotent). */
void wg_h2_lower_copy(char *to, const char *from, size_t n)
{
    size_t k = 0;
    uint64_t w;
    if (n >= 8) {
        for (; k + 8 <= n; k += 8) {
            memcpy(&w, from + k, 8);
            w = lower8(w);
            memcpy(to + k, &w, 8);
        }
        if (k < n) {
            memcpy(&w, from + n - 8, 8);
            w = lower8(w);
            memcpy(to + n - 8, &w, 8);
        }
        return;
    }
    for (; k < n; k++) {
        char c = from[k];
        to[k] = c >= 'A' && c <= 'Z' ? (char)(c + 32) : c;
    }
}

static nghttp2_nv nv_of(const char *name, size_t nl, const char *value, size_t vl)
{
    return (nghttp2_nv){ (uint8_t *)name, (uint8_t *)value, nl, vl,
                         NGHTTP2_NV_FLAG_NO_COPY_NAME | NGHTTP2_NV_FLAG_NO_COPY_VALUE };
}

size_t wg_h2_request_nv(const struct wg_http_message *m, const struct wg_http_header *h,
                        const char *msg, const char *scheme, nghttp2_nv *nv, size_t cap,
                        char *scratch, size_t scratch_cap)
{
    if (cap < 4 || !m->has_host)
        return 0;
    size_t n = 0, used = 0;
    const char *method = msg + m->method_text.off;
    nv[n++] = nv_of(":method", 7, method, m->method_text.len);
    nv[n++] = nv_of(":scheme", 7, scheme, strlen(scheme));
    nv[n++] = nv_of(":authority", 10, msg + m->host.off, m->host.len);
    if (m->target_form == WG_HTTP_TARGET_ABSOLUTE) {
        /* path and query are adjacent in the target: one span from path */
        size_t len = m->path.len + (m->has_query ? 1 + m->query.len : 0);
        if (!m->path.len)
            nv[n++] = nv_of(":path", 5, "/", 1);
        else
            nv[n++] = nv_of(":path", 5, msg + m->path.off, len);
    } else {
        nv[n++] = nv_of(":path", 5, msg + m->target.off, m->target.len);
    }
    for (unsigned i = 0; i < m->nheaders; i++) {
        const struct wg_http_header *f = &h[i];
        switch (f->id) {
        case WG_HTTP_HDR_HOST: case WG_HTTP_HDR_CONNECTION: case WG_HTTP_HDR_KEEP_ALIVE:
        case WG_HTTP_HDR_PROXY_CONNECTION: case WG_HTTP_HDR_TRANSFER_ENCODING:
        case WG_HTTP_HDR_UPGRADE:
            continue;
        case WG_HTTP_HDR_TE:
            if (!span_is(msg, f->value, "trailers"))
                continue;
            break;
        default:
            break;
        }
        if (n == cap || f->name.len > scratch_cap - used)
            return 0;
        char *name = scratch + used;
        wg_h2_lower_copy(name, msg + f->name.off, f->name.len);
        used += f->name.len;
        nv[n++] = nv_of(name, f->name.len, msg + f->value.off, f->value.len);
    }
    return n;
}

static bool put(char *out, size_t cap, size_t *len, const void *p, size_t n)
{
    if (n > cap - *len)
        return false;
    memcpy(out + *len, p, n);
    *len += n;
    return true;
}

static bool put_fields(const nghttp2_nv *nv, size_t n, char *out, size_t cap, size_t *len,
                       bool drop_length)
{
    for (size_t i = 0; i < n; i++) {
        if (drop_length && nv[i].namelen == 14 && memcmp(nv[i].name, "content-length", 14) == 0)
            continue;
        if (!put(out, cap, len, nv[i].name, nv[i].namelen) || !put(out, cap, len, ": ", 2) ||
            !put(out, cap, len, nv[i].value, nv[i].valuelen) || !put(out, cap, len, "\r\n", 2))
            return false;
    }
    return true;
}

size_t wg_h2_response_h1(unsigned status, const nghttp2_nv *nv, size_t n, bool end_stream,
                         char *out, size_t cap)
{
    char line[] = "HTTP/1.1 000 \r\n";  /* the status as three digits (no snprintf per call) */
    size_t len = 0;
    wg_h2_status_digits(line + 9, status);
    const char *framing = end_stream ? "content-length: 0\r\n\r\n"
                                     : "transfer-encoding: chunked\r\n\r\n";
    if (!put(out, cap, &len, line, sizeof line - 1) || !put_fields(nv, n, out, cap, &len, true) ||
        !put(out, cap, &len, framing, strlen(framing)))
        return 0;
    return len;
}

/* (Not snprintf: its format machinery was 3 % of the instructions of a
 * small h2c request.) */
void wg_h2_status_digits(char out[3], unsigned status)
{
    status %= 1000;
    out[0] = (char)('0' + status / 100);
    out[1] = (char)('0' + status / 10 % 10);
    out[2] = (char)('0' + status % 10);
}

ssize_t wg_h2_lent_write(int fd, const uint8_t *frames, size_t *off, size_t end,
                         struct wg_h2_lent *l, unsigned n, unsigned *over)
{
    struct iovec iov[2 * WG_H2_LENT_MAX + 1];
    int k = 0;
    size_t pos = *off;
    *over = 0;
    if (n > WG_H2_LENT_MAX) {           /* (the frame bytes past the last would go too soon) */
        errno = EINVAL;
        return -1;
    }
    for (unsigned i = 0; i < n; i++) {
        if (l[i].at > pos) {
            iov[k++] = (struct iovec){ (void *)(frames + pos), l[i].at - pos };
            pos = l[i].at;
        }
        iov[k++] = (struct iovec){ (void *)l[i].p, l[i].len };
    }
    if (end > pos)
        iov[k++] = (struct iovec){ (void *)(frames + pos), end - pos };
    ssize_t w = writev(fd, iov, k);
    if (w < 0)
        return -1;
    size_t left = (size_t)w;
    unsigned i = 0;
    for (; i < n && left; i++) {
        size_t m = l[i].at - *off < left ? l[i].at - *off : left;
        *off += m;
        left -= m;
        m = l[i].len < left ? l[i].len : left;
        l[i].p += m;
        l[i].len -= m;
        left -= m;
        if (l[i].len)
            break;
    }
    *off += left;                       /* the frame bytes after the last payload */
    *over = i;
    return w;
}

size_t wg_h2_data_frame(uint8_t *out, const nghttp2_frame *f, const uint8_t *framehd,
                        const uint8_t *data, size_t len)
{
    size_t pad = f->data.padlen;
    uint8_t *o = out;
    memcpy(o, framehd, 9);
    o += 9;
    if (pad)
        *o++ = (uint8_t)(pad - 1);
    memcpy(o, data, len);
    o += len;
    if (pad > 1) {
        memset(o, 0, pad - 1);
        o += pad - 1;
    }
    return (size_t)(o - out);
}

size_t wg_h2_chunk_head(size_t n, char *out)
{
    int k = snprintf(out, 20, "%zx\r\n", n);
    return k > 0 ? (size_t)k : 0;
}

size_t wg_h2_trailer_section(const nghttp2_nv *nv, size_t n, char *out, size_t cap)
{
    size_t len = 0;
    if (!put_fields(nv, n, out, cap, &len, false) || !put(out, cap, &len, "\r\n", 2))
        return 0;
    return len;
}

size_t wg_h2_trailers_h1(const nghttp2_nv *nv, size_t n, char *out, size_t cap)
{
    size_t len = 0;
    if (!put(out, cap, &len, "0\r\n", 3))
        return 0;
    size_t k = wg_h2_trailer_section(nv, n, out + len, cap - len);
    return k ? len + k : 0;
}
