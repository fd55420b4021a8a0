/* http_buf — see include/waygate/http_buf.h */
#include "waygate/http_buf.h"

#include <errno.h>
#include <event2/event.h>
#include <pthread.h>
#include <stdio.h>
#include <sys/uio.h>
#include <unistd.h>

#include "waygate/log.h"
#include "waygate/tls.h"
#include "waygate/upstream_pool.h"

bool hp_transient(void) { return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR; }

static void spares_free(struct hp_spares *s)
{
    while (s->first) {
        void **o = s->first;
        s->first = *o;
        free(o);
    }
    s->n = 0;
}

static pthread_key_t hp_key;
static pthread_once_t hp_once = PTHREAD_ONCE_INIT;
static _Thread_local struct hp_local *hp_tls;

static void local_free(void *arg)
{
    struct hp_local *loc = arg;
    if (loc->h2)
        loc->h2_free(loc->h2);
    wg_upstream_pool_free(loc->pool);
    spares_free(&loc->bufs[0]);
    spares_free(&loc->bufs[1]);
    spares_free(&loc->bufs[2]);
    spares_free(&loc->heads);
    spares_free(&loc->reqs);
    spares_free(&loc->rx);
    free(loc);
}

static void key_init(void)
{
    if (pthread_key_create(&hp_key, local_free) != 0)
        wg_error("msg=\"http: cannot create the worker key\"");
}

struct hp_local *hp_local_peek(void) { return hp_tls; }

struct hp_local *hp_local_get(struct event_base *base)
{
    if (hp_tls)
        return hp_tls;
    pthread_once(&hp_once, key_init);
    struct hp_local *loc = calloc(1, sizeof *loc);
    if (loc) {
        loc->bufs[0].max = HP_SPARE_SMALL;
        loc->bufs[1].max = HP_SPARE_BLOCKS;
        loc->bufs[2].max = HP_SPARE_WIDE;
        loc->heads.max = HP_SPARE_HEADS;
        loc->reqs.max = HP_SPARE_REQS;
        loc->rx.max = HP_SPARE_RX;
    }
    if (!loc || !(loc->pool = wg_upstream_pool_new(base)) ||
        pthread_setspecific(hp_key, loc) != 0) {
        if (loc)
            wg_upstream_pool_free(loc->pool);
        free(loc);
        return NULL;
    }
    hp_tls = loc;
    return loc;
}

/* ---- the payload queue (struct hp_rxq) ---- */

static struct hp_rxq_ent *rxq_last(struct hp_rxq *q)
{
    return q->n ? &q->e[(q->head + q->n - 1) % HP_RXQ_MAX] : NULL;
}

static struct hp_rxq_ent *rxq_push(struct hp_rxq *q, const uint8_t *p, size_t len,
                                   struct hp_rx *rx)
{
    struct hp_rxq_ent *e = &q->e[(q->head + q->n++) % HP_RXQ_MAX];
    rx->refs++;
    *e = (struct hp_rxq_ent){ p, (uint32_t)len, rx };
    q->bytes += (uint32_t)len;
    return e;
}

/* Own's room: from its first byte again once nothing refers to it. */
static size_t own_room(const struct hp_rxq *q)
{
    const struct hp_rx *o = q->own;
    return !o || o->refs == 1 ? HP_RX : HP_RX - o->len;
}

bool hp_rxq_room(const struct hp_rxq *q)
{
    return q->bytes < HP_RXQ_BYTES && q->n < HP_RXQ_MAX && own_room(q) > 0;
}

size_t hp_rxq_put(struct hp_local *loc, struct hp_rxq *q, const uint8_t *p, size_t len,
                  struct hp_rx *rx)
{
    if (!len || q->bytes >= HP_RXQ_BYTES)
        return 0;
    struct hp_rxq_ent *e = rxq_last(q);
    if (e && rx && e->rx == rx && e->p + e->len == p && hp_rx_holds(rx, p, len)) {
        e->len += (uint32_t)len;        /* the rest of the same frame: one count */
        q->bytes += (uint32_t)len;
        return len;
    }
    if (len >= HP_LEND_MIN && hp_rx_holds(rx, p, len)) {
        if (q->n == HP_RXQ_MAX)
            return 0;
        rxq_push(q, p, len, rx);
        return len;
    }
    if (!q->own && !(q->own = hp_rx_new(loc)))
        return 0;
    struct hp_rx *o = q->own;
    if (o->refs == 1)
        o->len = 0;
    size_t n = HP_RX - o->len < len ? HP_RX - o->len : len;
    bool joins = e && e->rx == o && e->p + e->len == o->data + o->len;
    if (!n || (!joins && q->n == HP_RXQ_MAX))
        return 0;
    memcpy(o->data + o->len, p, n);
    if (joins) {
        e->len += (uint32_t)n;
        q->bytes += (uint32_t)n;
    } else {
        rxq_push(q, o->data + o->len, n, o);
    }
    o->len += (uint32_t)n;
    return n;
}

void hp_rxq_take(struct hp_local *loc, struct hp_rxq *q, size_t n, struct hp_rx **keep)
{
    struct hp_rxq_ent *e = &q->e[q->head];
    if (!q->n || n > e->len)
        abort();                        /* a caller's bug: it takes what it was shown */
    q->bytes -= (uint32_t)n;
    if (n < e->len) {
        e->p += n;
        e->len -= (uint32_t)n;
        if (keep)
            (*keep = e->rx)->refs++;
        return;
    }
    if (keep)
        *keep = e->rx;                  /* the entry's count goes with the bytes */
    else
        hp_rx_put(loc, &e->rx);
    e->rx = NULL;
    q->head = (uint8_t)((q->head + 1) % HP_RXQ_MAX);
    q->n--;
}

void hp_rxq_clear(struct hp_local *loc, struct hp_rxq *q)
{
    while (q->n)
        hp_rxq_take(loc, q, q->e[q->head].len, NULL);
    hp_rx_put(loc, &q->own);
    q->head = 0;
}

void hp_put_u64(struct hp_out *o, uint64_t v)
{
    char tmp[24];
    size_t n = sizeof tmp;
    do {
        tmp[--n] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    hp_put(o, tmp + n, sizeof tmp - n);
}

/* Room for `need` more bytes after the pending bytes of *bp (a head buffer
 * that may still hold unsent heads); NULL when out of memory. */
struct hp_out hp_out_open(struct hp_local *loc, struct hp_buf **bp, size_t need)
{
    struct hp_buf *b = *bp;
    if (b && b->sent == b->end)
        b->sent = b->end = 0;
    if (b && b->end + need > b->cap) {
        struct hp_buf *nb = hp_buf_new(loc, (uint32_t)(b->end - b->sent + need));
        if (nb) {
            nb->end = b->end - b->sent;
            memcpy(nb->data, b->data + b->sent, nb->end);
        }
        hp_buf_free(loc, bp);
        *bp = b = nb;
    } else if (!b) {
        *bp = b = hp_buf_new(loc, (uint32_t)need);
    }
    if (!b)
        return (struct hp_out){ NULL, 0, 0, true };
    return (struct hp_out){ b->data + b->end, 0, b->cap - b->end, false };
}

const char *hp_reason(unsigned status)
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
/* ---- TLS on the client side (TLS listeners) ----------------------------
 * The same contract as read(2)/writev(2) for the callers: >0 bytes, 0 EOF,
 * -1 with errno EAGAIN when the socket must become ready. A read that needs
 * the socket writable (or a write that needs it readable) is remembered so
 * that client_event turns the other edge into a retry. */
ssize_t hp_tls_read(SSL *ssl, bool *read_wants_write, char *buf, size_t len)
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

ssize_t hp_tls_flush(SSL *ssl, bool *writable, bool *write_wants_read, struct hp_buf *head,
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

/* One read from one side into *bp (a block taken when missing): >0 bytes,
 * 0 nothing now (*readable cleared once drained, *eof set at EOF or on an
 * error), -1 out of memory. */
ssize_t hp_side_read_max(struct hp_local *loc, struct hp_buf **bp, int fd, SSL *ssl,
                         bool *readable, bool *read_wants_write, bool hup, bool *eof, size_t max)
{
    if (!*readable || *eof)
        return 0;
    if (!*bp && !(*bp = hp_buf_new(loc, HP_BLOCK)))
        return -1;
    struct hp_buf *b = *bp;
    if (hp_buf_read_later(b))
        return 0;
    hp_buf_make_room(b);
    size_t space = b->cap - b->end;
    if (max && space > max)
        space = max;
    if (space == 0)
        return 0;
    ssize_t n = ssl ? hp_tls_read(ssl, read_wants_write, b->data + b->end, space)
                    : read(fd, b->data + b->end, space);
    if (n > 0) {
        b->end += (uint32_t)n;
        if ((size_t)n < space && !hup && !ssl)
            *readable = false;          /* drained: the next edge says when (TLS: its
                                           own buffer may hold more, read until WANT_READ) */
        return n;
    }
    *readable = false;
    if (n == 0 || !hp_transient())
        *eof = true;
    return 0;
}

/* Write the pending head bytes of `head`, then the ready body bytes of
 * `body`, in one writev. Returns bytes written (0 when the socket is full,
 * which clears *writable), or -1 on a broken connection. */
ssize_t hp_flush_to(int fd, bool *writable, struct hp_buf *head, struct hp_buf *body)
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
        if (!hp_transient())
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
enum wg_http_result hp_body_decode_seen(struct wg_http_body *d, struct hp_buf *b, bool dechunk,
                                        void (*seen)(void *ctx, const char *p, size_t n),
                                        void *ctx)
{
    enum wg_http_result r = WG_HTTP_AGAIN;
    while (b->scan < b->end && r == WG_HTTP_AGAIN) {
        struct wg_http_body_step st;
        r = wg_http_body_parse(d, b->data + b->scan, b->end - b->scan, &st);
        if (r == WG_HTTP_ERROR)
            break;
        if (seen && st.data_len)
            seen(ctx, b->data + b->scan + st.data_off, st.data_len);
        if (dechunk && st.data_len && b->fwd != b->scan + st.data_off)
            memmove(b->data + b->fwd, b->data + b->scan + st.data_off, st.data_len);
        b->fwd += (uint32_t)(dechunk ? st.data_len : st.consumed);
        b->scan += (uint32_t)st.consumed;
        if (st.consumed == 0)
            break;
    }
    return r;
}

_Static_assert(EV_READ == 0x02 && EV_WRITE == 0x04 && EV_CLOSED == 0x80, "hp_edges' event bits");

void hp_timer_arm(struct event *timer, uint64_t *armed_ms, uint64_t deadline)
{
    uint64_t now = wg_now_ms();
    if (deadline == UINT64_MAX || (*armed_ms && *armed_ms <= deadline))
        return;
    uint64_t left = deadline > now ? deadline - now : 0;
    struct timeval tv = { (time_t)(left / 1000), (suseconds_t)(left % 1000) * 1000 };
    if (evtimer_add(timer, &tv) == 0)
        *armed_ms = deadline;
}
