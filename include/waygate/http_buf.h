/* http_buf — the L7 path's I/O blocks, free lists and head writer.
 *
 * Shared by the downstream codecs (http1.c, http2.c) and the proxy exchange
 * (exchange.c); worker thread only, no lock.
 *
 * Promises:
 *  - A block (struct hp_buf) is 16 KiB of bytes read from one side (or a
 *    2 KiB head waygate builds), taken from the worker's free list when
 *    bytes arrive and given back when drained: in steady state a request
 *    allocates nothing. Past a list's bound, blocks go back to malloc.
 *  - Offsets inside a block: [start, sent) is kept for a replay, [sent, fwd)
 *    is ready to be written to the other side, [fwd, scan) was framing the
 *    decoder dropped (de-chunking only), [scan, end) is not decoded yet.
 *    Heads we build use sent and end only.
 *  - struct hp_out writes a head into a block without overflowing it: a
 *    write that does not fit marks it full, and out_close then adds nothing.
 *  - A receive buffer (struct hp_rx) is counted, and its bytes never move
 *    while anyone holds a count: a payload goes from an HTTP/2 upstream's
 *    read to an HTTP/2 client's write by reference (struct hp_rxq, the
 *    exchange's queue of them). Past HP_RX_LIVE_MAX buffers out, a worker
 *    lends no more: payloads are copied into the queue's one own buffer.
 */
#ifndef WAYGATE_HTTP_BUF_H
#define WAYGATE_HTTP_BUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/types.h>
#include <openssl/ssl.h>
#include <string.h>

#include "waygate/http.h"

#define HP_BLOCK (16u * 1024u)          /* one I/O buffer */
#define HP_SPARE_BLOCKS 64              /* per worker free list (1 MiB): a burst leaves little behind */
#define HP_SMALL (2048u - 32u)          /* a head we build, a log note: 2 KiB with its header */
#define HP_SPARE_SMALL 128              /* (256 KiB) */
#define HP_WIDE (64u * 1024u + 128u)    /* an HTTP/2 stream's window and its framing */
#define HP_SPARE_WIDE 16                /* (1 MiB): glibc consolidates its fastbins on every
                                           free of 64 KiB, so these are kept, not freed */
#define HP_SPARE_HEADS 16
#define HP_SPARE_REQS 64
#define HP_MAX_HEADERS 128

struct hp_buf {
    struct hp_buf *next;
    uint32_t cap;
    uint32_t start, sent, fwd, scan, end;
    char data[];
};

/* Parser state for one head, held only while that head is being parsed. */
_Static_assert(sizeof(struct hp_buf) == 32, "HP_SMALL makes a 2 KiB block with a 32-byte header");

struct hp_head {
    struct hp_head *next;
    struct wg_http_parser p;
    struct wg_http_header h[HP_MAX_HEADERS];
};

/* A worker's free list of equal-sized objects whose first member is the
 * link: past `max` spares, objects go back to malloc. */
struct hp_spares {
    void *first;
    unsigned n, max;
};

struct wg_upstream_pool;
struct wg_h2_pool;
struct event_base;

/* Per worker thread: free lists and the upstream keep-alive pool. */
struct hp_local {
    struct hp_spares bufs[3];           /* free blocks: [0] small, [1] HP_BLOCK, [2] HP_WIDE */
    struct hp_spares heads, reqs;
    struct hp_spares rx;                /* free receive buffers (struct hp_rx) */
    unsigned rx_live;                   /* receive buffers out of that list */
    struct wg_upstream_pool *pool;
    struct wg_h2_pool *h2;              /* HTTP/2 upstreams (upstream_h2.h), made on first use */
    void (*h2_free)(struct wg_h2_pool *);   /* (its maker's: this module does not depend on it) */
    unsigned lingering;                 /* HTTP/1.1 connections in a lingering close */
};

/* The calling worker's state, made on first use (its pools on `base`, the
 * worker's loop); NULL when out of memory. */
struct hp_local *hp_local_get(struct event_base *base);
/* The calling worker's state if it was made, else NULL (never makes it). */
struct hp_local *hp_local_peek(void);

/* Small and on every request's path: inline. */
static inline void *hp_spare_get(struct hp_spares *s, size_t size)
{
    void **o = s->first;
    if (!o)
        return malloc(size);
    s->first = *o;
    s->n--;
    return o;
}

static inline void hp_spare_put(struct hp_spares *s, void *o)
{
    if (s->n >= s->max) {
        free(o);
        return;
    }
    *(void **)o = s->first;
    s->first = o;
    s->n++;
}

/* Three size classes keep free lists: small blocks for the heads we build
 * and the log note, HP_BLOCK for I/O, HP_WIDE for what holds an HTTP/2
 * stream's 64 KiB window (a request body's blocks); anything else (a long
 * head) is allocated to size. */
static inline int hp_buf_class(uint32_t cap)
{
    return cap == HP_SMALL ? 0 : cap == HP_BLOCK ? 1 : cap == HP_WIDE ? 2 : -1;
}

/* A block of at least `cap` bytes, empty; NULL when out of memory. */
static inline struct hp_buf *hp_buf_new(struct hp_local *loc, uint32_t cap)
{
    cap = cap <= HP_SMALL ? HP_SMALL : cap <= HP_BLOCK ? HP_BLOCK
        : cap > HP_WIDE - 4096 && cap <= HP_WIDE ? HP_WIDE : cap;
    int k = hp_buf_class(cap);
    struct hp_buf *b = k >= 0 ? hp_spare_get(&loc->bufs[k], sizeof *b + cap) : malloc(sizeof *b + cap);
    if (!b)
        return NULL;
    b->cap = cap;
    b->next = NULL;
    b->start = b->sent = b->fwd = b->scan = b->end = 0;
    return b;
}

/* Give *bp back (NULL is fine) and clear it. */
static inline void hp_buf_free(struct hp_local *loc, struct hp_buf **bp)
{
    struct hp_buf *b = *bp;
    if (!b)
        return;
    *bp = NULL;
    int k = hp_buf_class(b->cap);
    if (k >= 0)
        hp_spare_put(&loc->bufs[k], b);
    else
        free(b);
}

/* Move the kept bytes to the front to make room at the end. */
static inline void hp_buf_compact(struct hp_buf *b)
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
static inline void hp_buf_make_room(struct hp_buf *b)
{
    if (b->start == b->end)
        b->start = b->sent = b->fwd = b->scan = b->end = 0;
    else if (b->end == b->cap)
        hp_buf_compact(b);
}

/* Bytes wait to be written and less than half the block is free: a read now
 * would fill only the tail, and the stream would go on in a small piece and
 * a large one per block (twice the reads and writes). Write first. */
static inline bool hp_buf_read_later(const struct hp_buf *b)
{
    return b->sent < b->fwd && b->cap - b->end < b->cap / 2;
}

static inline struct hp_head *hp_head_new(struct hp_local *loc)
{
    return hp_spare_get(&loc->heads, sizeof(struct hp_head));
}

static inline void hp_head_free(struct hp_local *loc, struct hp_head **hp)
{
    if (*hp)
        hp_spare_put(&loc->heads, *hp);
    *hp = NULL;
}

/* ---- receive buffers lent by reference ----
 * An HTTP/2 upstream connection reads into a struct hp_rx, and a DATA
 * payload in it goes on to an HTTP/2 client by reference, not copied: an
 * entry of the exchange's queue (struct hp_rxq), then a payload of the
 * client's writev (or its TLS record, copied once into the write buffer).
 * Every holder keeps one count; the last hp_rx_put gives the buffer back.
 * Bytes already in a buffer never move, so a reader appends after them.
 * loc->rx_live counts the buffers out: past HP_RX_LIVE_MAX an upstream
 * offers its payloads for copying instead (a slow client pins one
 * buffer per entry it keeps: this bounds what a worker's pin). */
#define HP_RX (64u * 1024u)
#define HP_SPARE_RX 128                 /* (8 MiB) */
#define HP_RX_LIVE_MAX 1024             /* (64 MiB a worker) */

struct hp_rx {
    struct hp_rx *next;                 /* the free list's link */
    uint32_t refs;
    uint32_t len;                       /* bytes in data */
    uint8_t data[HP_RX];
};

/* A buffer of one count, empty; NULL when out of memory. */
static inline struct hp_rx *hp_rx_new(struct hp_local *loc)
{
    struct hp_rx *rx = hp_spare_get(&loc->rx, sizeof *rx);
    if (!rx)
        return NULL;
    rx->next = NULL;
    rx->refs = 1;
    rx->len = 0;
    loc->rx_live++;
    return rx;
}

/* Drop the count *p holds (NULL is fine) and clear it. */
static inline void hp_rx_put(struct hp_local *loc, struct hp_rx **p)
{
    struct hp_rx *rx = *p;
    *p = NULL;
    if (!rx || --rx->refs)
        return;
    loc->rx_live--;
    hp_spare_put(&loc->rx, rx);
}

/* Does [p, p + n) lie in rx's bytes? */
static inline bool hp_rx_holds(const struct hp_rx *rx, const uint8_t *p, size_t n)
{
    uintptr_t a = (uintptr_t)p, b = rx ? (uintptr_t)rx->data : 0;
    return rx && a >= b && n <= rx->len && a - b <= rx->len - n;
}

/* A response body's payload on its way to an HTTP/2 client, in order:
 * ranges of receive buffers, each entry holding one count of its buffer.
 * A payload of at least HP_LEND_MIN bytes (the writers' bound) offered with
 * the buffer that holds it is referred to, and so is one of any length
 * that continues the last entry in the same buffer (the rest of a frame
 * nghttp2 gave in two pieces: one entry, one count); any other is copied
 * into `own`, the queue's buffer, which starts over once nothing refers to
 * it (a shorter payload costs less copied than as a writev entry and a
 * pinned buffer). At most HP_RXQ_BYTES wait (give or take one offer): past
 * that, and when the entries or `own` are full, the queue takes nothing
 * (hp_rxq_room says when it does again). HP_RXQ_BYTES is an upstream
 * stream's window, so that a reply waits here rather than copied into the
 * upstream stream's buffer; an entry pins at most one buffer, a stream at
 * most HP_RXQ_MAX (the worker's HP_RX_LIVE_MAX bounds them all). */
#define HP_RXQ_MAX 16
#define HP_RXQ_BYTES (256u * 1024u)
#define HP_LEND_MIN 4096u               /* (= WG_H2_LEND_MIN, the writers' bound) */

struct hp_rxq_ent {
    const uint8_t *p;
    uint32_t len;
    struct hp_rx *rx;
};

struct hp_rxq {
    struct hp_rxq_ent e[HP_RXQ_MAX];    /* a ring: e[head], then n - 1 after it */
    uint8_t head, n;
    uint32_t bytes;                     /* in all entries */
    struct hp_rx *own;
};

/* Take [p, p + len) (rx: the buffer holding it, NULL if none): returns
 * how many bytes were taken (all, some when `own` fills, or none). */
size_t hp_rxq_put(struct hp_local *loc, struct hp_rxq *q, const uint8_t *p, size_t len,
                  struct hp_rx *rx);
/* Could the queue take bytes again? */
bool hp_rxq_room(const struct hp_rxq *q);
/* The i-th entry (NULL past the last); 0 is the first. */
static inline const struct hp_rxq_ent *hp_rxq_at(const struct hp_rxq *q, unsigned i)
{
    return i < q->n ? &q->e[(q->head + i) % HP_RXQ_MAX] : NULL;
}
static inline const struct hp_rxq_ent *hp_rxq_front(const struct hp_rxq *q)
{
    return hp_rxq_at(q, 0);
}
/* The first n bytes (all of them in the first entry) are gone; with
 * `keep`, the caller gets a count of their buffer. */
void hp_rxq_take(struct hp_local *loc, struct hp_rxq *q, size_t n, struct hp_rx **keep);
/* Drop every entry and `own`. */
void hp_rxq_clear(struct hp_local *loc, struct hp_rxq *q);

/* ---- writing heads ---- */
struct hp_out {
    char *p;
    size_t n, cap;
    bool full;
};

static inline void hp_put(struct hp_out *o, const char *s, size_t n)
{
    if (o->n + n > o->cap) {
        o->full = true;
        return;
    }
    memcpy(o->p + o->n, s, n);
    o->n += n;
}

static inline void hp_puts(struct hp_out *o, const char *s) { hp_put(o, s, strlen(s)); }

static inline void hp_put_span(struct hp_out *o, const char *base, struct wg_http_span s)
{
    hp_put(o, base + s.off, s.len);
}

void hp_put_u64(struct hp_out *o, uint64_t v);
/* Room for `need` more bytes after the pending bytes of *bp (a head buffer
 * that may still hold unsent heads); o.full when out of memory. */
struct hp_out hp_out_open(struct hp_local *loc, struct hp_buf **bp, size_t need);
static inline void hp_out_close(struct hp_buf *b, const struct hp_out *o)
{
    if (b && !o->full)
        b->end += (uint32_t)o->n;
}

/* Decode the undecoded bytes of `b` with body decoder `d`: raw mode leaves
 * them in place as ready; de-chunk mode moves only payload runs down to
 * `fwd`, leaving the framing they came in behind as a gap [fwd, scan).
 * `seen` (NULL: none) is shown each payload run first, in order, whatever
 * the mode: a relay that follows what the payload says (exchange.c counts
 * a gRPC-Web body's messages so). */
enum wg_http_result hp_body_decode_seen(struct wg_http_body *d, struct hp_buf *b, bool dechunk,
                                        void (*seen)(void *ctx, const char *p, size_t n),
                                        void *ctx);
static inline enum wg_http_result hp_body_decode(struct wg_http_body *d, struct hp_buf *b,
                                                 bool dechunk)
{
    return hp_body_decode_seen(d, b, dechunk, NULL, NULL);
}

/* Close the gap de-chunking left: the undecoded bytes [scan, end) move
 * down to fwd. Without it the gap only grows while the block is never
 * drained whole (each chunk adds its "<hex>\r\n" and "\r\n"; compaction
 * keeps it), until no chunk fits any more and the stream stalls. */
static inline void hp_buf_drop_gap(struct hp_buf *b)
{
    if (b->scan <= b->fwd)
        return;
    memmove(b->data + b->fwd, b->data + b->scan, b->end - b->scan);
    b->end -= b->scan - b->fwd;
    b->scan = b->fwd;
}

/* Reason phrase of the statuses waygate answers itself. */
const char *hp_reason(unsigned status);

/* ---- non-blocking I/O on one side (client or upstream) ----
 * The same contract for TLS and plain sockets: >0 bytes, 0 EOF, -1 with
 * errno EAGAIN when the socket must become ready. A TLS read that needs the
 * socket writable (or a write that needs it readable) is remembered in
 * *read_wants_write / *write_wants_read so that the event handler turns the
 * other edge into a retry. */
bool hp_transient(void);
ssize_t hp_tls_read(SSL *ssl, bool *read_wants_write, char *buf, size_t len);
/* Write the pending head bytes of `head` [sent, end), then the ready body
 * bytes of `body` [sent, fwd): one writev (plain) or one TLS record for a
 * head with the first body bytes. Bytes written (0 when the socket is full,
 * which clears *writable), or -1 on a broken connection. */
ssize_t hp_flush_to(int fd, bool *writable, struct hp_buf *head, struct hp_buf *body);
ssize_t hp_tls_flush(SSL *ssl, bool *writable, bool *write_wants_read, struct hp_buf *head,
                     struct hp_buf *body);
/* One read into *bp (a block taken when missing): >0 bytes, 0 nothing now
 * (*readable cleared once drained, *eof set at EOF or on an error), -1 out
 * of memory. At most `max` bytes when not 0. */
ssize_t hp_side_read_max(struct hp_local *loc, struct hp_buf **bp, int fd, SSL *ssl, bool *readable,
                         bool *read_wants_write, bool hup, bool *eof, size_t max);
static inline ssize_t hp_side_read(struct hp_local *loc, struct hp_buf **bp, int fd, SSL *ssl,
                                   bool *readable, bool *read_wants_write, bool hup, bool *eof)
{
    return hp_side_read_max(loc, bp, fd, ssl, readable, read_wants_write, hup, eof, 0);
}

/* An edge-triggered event on a side (client or upstream socket): what it
 * makes ready. A TLS read waiting for writability (or a write waiting for
 * readability) is retried on the other edge; EV_CLOSED means read to EOF. */
static inline void hp_edges(short what, bool *readable, bool *writable, bool *read_wants_write,
                            bool *write_wants_read, bool *hup)
{
    if (what & 0x02) {                  /* EV_READ */
        *readable = true;
        if (*write_wants_read)
            *writable = true;
        *write_wants_read = false;
    }
    if (what & 0x04) {                  /* EV_WRITE */
        *writable = true;
        if (*read_wants_write)
            *readable = true;
        *read_wants_write = false;
    }
    if (what & 0x80)                    /* EV_CLOSED */
        *readable = *hup = true;
}

struct event;
/* Arm `timer` for `deadline` (ms, CLOCK_MONOTONIC) unless none (UINT64_MAX)
 * or the one armed (*armed_ms) fires first. */
void hp_timer_arm(struct event *timer, uint64_t *armed_ms, uint64_t deadline);

#endif
