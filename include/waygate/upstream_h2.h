/* upstream_h2 — HTTP/2 to upstream instances (DESIGN §15): the upstream
 * codec an exchange uses for services whose instances speak h2c or h2
 * (pool.h: wg_instance.protocol).
 *
 * One struct wg_h2_pool per worker holds, per instance, a few connections,
 * each one libnghttp2 client session driven with mem_recv/mem_send on the
 * worker's event_base (no thread, no lock). Many streams share one
 * connection:
 *  - a stream goes on the oldest open connection of its instance with a free
 *    slot: fewer than the peer's SETTINGS_MAX_CONCURRENT_STREAMS (100 until
 *    its SETTINGS arrive) and fewer than `max_streams`; when all are full a
 *    new connection is opened, at most `max_conns` per instance; beyond
 *    that wg_h2_submit() fails with EBUSY (the exchange answers 503 /
 *    UNAVAILABLE, or tries another instance);
 *  - GOAWAY: the connection takes no new stream and closes once its
 *    streams are over; streams above the last-stream-id (and streams reset
 *    with REFUSED_STREAM, or cut before their HEADERS went out) are closed
 *    with `retryable` true: the upstream did not process them;
 *  - idle connections (no stream) are kept per instance up to `max_idle`
 *    (0: a connection closes when its last stream ends), closed after
 *    `idle_timeout_ms`, pinged every `ping_interval_ms` and closed when a
 *    PING is not answered within `ping_timeout_ms`, and closed when their
 *    instance is no longer healthy (health.h generation rule). These and
 *    `connect_timeout_ms` are the service's (struct wg_h2_conn_limits,
 *    given at every submit: the latest one applies to the instance's
 *    idle connections, as the HTTP/1.1 pool takes a service's settings
 *    when it parks a connection); the pool's settings apply when none is
 *    given;
 *  - flow control is end to end: response bytes are consumed (WINDOW_UPDATE)
 *    only as the exchange accepts them (ops->data's return value), or once
 *    it holds the window, as it releases them (wg_h2_stream_release), so an
 *    upstream can put at most `stream_window` bytes per stream into
 *    waygate; the connection's window reopens as soon as bytes are read
 *    (those the exchange did not take wait in the stream's buffer, for that
 *    stream's client alone), so that streams whose clients read nothing
 *    hold their own windows, not the connection's; request bodies go
 *    through a bounded per-stream buffer (WG_H2_BODY_BUF) and a deferred
 *    data provider: wg_h2_stream_write()
 *    takes what fits and ops->writable says when more fits. Over h2c the
 *    buffer's bytes are written from where they are (WG_H2_LEND_MIN): it
 *    is neither moved nor reused until they are out, and one whose stream
 *    ended first goes with the connection until then;
 *  - frame sizes: our SETTINGS_MAX_FRAME_SIZE is the stream window (an
 *    instance may send a reply in frames that large), and a request body
 *    goes in frames up to WG_H2_BODY_BUF where the instance allows them;
 *  - a connection reads into receive buffers (http_buf.h struct hp_rx) and
 *    offers a DATA payload together with the buffer that holds it: the
 *    exchange may keep a count of that buffer and pass the payload on by
 *    reference instead of copying it. Bytes the exchange did not take
 *    wait in the stream's own buffer and are offered without one (NULL):
 *    they are copied. A buffer goes back to the worker's list once the
 *    last count is dropped, connection or not.
 *
 * Lifetimes: the pool holds one reference on every instance it has a
 * connection to. A stream belongs to the exchange that submitted it until
 * ops->closed runs (exactly once; the stream is freed right after it
 * returns) or until the exchange calls wg_h2_stream_reset() (then no
 * callback runs any more). Callbacks run on the worker thread from the
 * pool's own events or from wg_h2_stream_resume_read(); they may call
 * wg_h2_stream_write/end/resume_read/reset on their own stream.
 */
#ifndef WAYGATE_UPSTREAM_H2_H
#define WAYGATE_UPSTREAM_H2_H

#include <nghttp2/nghttp2.h>
#include <openssl/ssl.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "waygate/http_buf.h"

struct event_base;
struct wg_instance;
struct wg_http_message;
struct wg_http_header;

#define WG_H2_BODY_BUF (64 * 1024)      /* request body bytes a stream holds */
/* Both codecs write a plain-text (h2c) DATA payload of at least this many
 * bytes by reference, from the buffer it is in, in the writev of the frame
 * headers (http2.c: the response to a client, upstream_h2.c: a request
 * body): no copy into the write buffer. A smaller one costs less copied
 * than as an iovec of its own (the exchange's payload queue keeps to the
 * same bound: http_buf.h). */
#define WG_H2_LEND_MIN HP_LEND_MIN
#define WG_H2_LENT_MAX 32               /* payloads a connection holds lent at once */

/* What a service asks of the connections to its instances (its
 * connect_timeout and upstream.max_idle / idle_timeout / ping_*). */
struct wg_h2_conn_limits {
    unsigned max_idle;                  /* idle connections kept per instance */
    uint64_t idle_timeout_ms;
    uint64_t connect_timeout_ms;        /* TCP connect and TLS handshake */
    uint64_t ping_interval_ms;          /* idle liveness; 0 = no pings */
    uint64_t ping_timeout_ms;
};

/* A service's: its connect_timeout and upstream.max_idle / idle_timeout /
 * ping_interval / ping_timeout (the exchange's and the mirror's streams). */
struct wg_service_config;
struct wg_h2_conn_limits wg_h2_service_limits(const struct wg_service_config *sc);

struct wg_h2_settings {
    unsigned max_streams;               /* per connection, our own cap (default 100) */
    unsigned max_conns;                 /* per instance (default 8) */
    struct wg_h2_conn_limits lim;       /* when a submit gives none */
    uint32_t stream_window;             /* our SETTINGS_INITIAL_WINDOW_SIZE */
    uint32_t conn_window;               /* our connection window */
};
extern const struct wg_h2_settings wg_h2_defaults;

/* What a stream reports to its exchange. `ctx` is the submit's ctx. */
struct hp_rx;

struct wg_h2_stream_ops {
    /* The final response head: :status and the other fields (no pseudo
     * headers). end_stream: nothing follows (a Trailers-Only gRPC answer
     * has its grpc-status here). Interim (1xx) heads are not reported. */
    void (*head)(void *ctx, unsigned status, const nghttp2_nv *nv, size_t n, bool end_stream);
    /* Response body bytes; returns how many the exchange took (0..len).
     * The rest is offered again after wg_h2_stream_resume_read(). rx (may
     * be NULL) holds [p, p + len): a callback may keep a count of it
     * (http_buf.h) and the bytes with it instead of copying them. */
    size_t (*data)(void *ctx, const uint8_t *p, size_t len, struct hp_rx *rx);
    /* Trailers, after all data was taken. */
    void (*trailers)(void *ctx, const nghttp2_nv *nv, size_t n);
    /* The stream is over, after everything above was delivered: error 0 =
     * complete (the response's END_STREAM arrived); else an HTTP/2 error
     * code (RST_STREAM; one with NO_ERROR before the response ended is
     * NGHTTP2_INTERNAL_ERROR; GOAWAY, connection failure:
     * NGHTTP2_CONNECT_ERROR, timeout: NGHTTP2_CANCEL). retryable:
     * the upstream did not process the request (see the top). */
    void (*closed)(void *ctx, uint32_t error, bool retryable);
    /* The request body buffer has room again. */
    void (*writable)(void *ctx);
};

struct wg_h2_pool;
struct wg_h2_stream;

struct wg_stats_block;

/* stats: the worker's counter block (stats.h): the pool counts into its
 * WG_C_H2_UP_* counters, which /metrics sums over the workers; NULL: a
 * block of the pool's own (tests). */
struct wg_h2_pool *wg_h2_pool_new(struct event_base *base, const struct wg_h2_settings *set,
                                  struct wg_stats_block *stats);
/* Closes every connection; open streams get ops->closed(CANCEL, false). */
void wg_h2_pool_free(struct wg_h2_pool *p);
/* The worker's pool, loc->h2, made on first use with the default settings
 * (and freed with loc when the worker ends); NULL when out of memory. */
struct wg_h2_pool *wg_h2_pool_local(struct hp_local *loc, struct event_base *base,
                                    struct wg_stats_block *stats);

/* Start a request to `inst`: `nv` holds the pseudo headers (:method,
 * :scheme, :authority, :path) first, then the fields (copied now).
 * has_body: a body follows through wg_h2_stream_write/end; else the
 * HEADERS end the stream. tls: NULL for h2c, else the service's client
 * context (ALPN h2 is required; sni/verify as for HTTP/1.1 upstreams).
 * lim: the service's limits (NULL: the pool's), kept for the instance.
 * Returns the stream, or NULL with *err = EBUSY (every connection full and
 * max_conns reached), ENOMEM, or another errno of socket/connect. */
struct wg_h2_stream *wg_h2_submit(struct wg_h2_pool *p, struct wg_instance *inst,
                                  SSL_CTX *tls, const char *sni, bool verify,
                                  const struct wg_h2_conn_limits *lim,
                                  const nghttp2_nv *nv, size_t n, bool has_body,
                                  const struct wg_h2_stream_ops *ops, void *ctx, int *err);
/* Request body bytes: returns how many were taken (up to the room in the
 * stream's buffer); 0 means full: wait for ops->writable. */
size_t wg_h2_stream_write(struct wg_h2_stream *s, const uint8_t *p, size_t len);
/* The request body ended; trailers (may be NULL/0) are sent after it. */
int wg_h2_stream_end(struct wg_h2_stream *s, const nghttp2_nv *trailers, size_t n);
/* The exchange can take response bytes again: offer what is buffered. */
void wg_h2_stream_resume_read(struct wg_h2_stream *s);
/* From now on the bytes ops->data takes reopen the stream's window only
 * as wg_h2_stream_release() lets go of them: the exchange keeps them in a
 * queue until an HTTP/2 client's codec takes them, and the stream holds at
 * most one window in all, in its buffer and that queue together. */
void wg_h2_stream_hold_window(struct wg_h2_stream *s);
void wg_h2_stream_release(struct wg_h2_stream *s, size_t n);
/* Abandon the stream (RST_STREAM `error`, e.g. NGHTTP2_CANCEL); no
 * callback runs for it afterwards. */
void wg_h2_stream_reset(struct wg_h2_stream *s, uint32_t error);
/* The stream's HTTP/2 id (for logs); 0 while not assigned. */
int32_t wg_h2_stream_id(const struct wg_h2_stream *s);

/* The worker's periodic tick: idle timeouts, pings, unhealthy instances. */
void wg_h2_pool_tick(struct wg_h2_pool *p, uint64_t now_ms);

struct wg_h2_pool_stats {
    uint64_t connections;               /* open now */
    uint64_t streams;                   /* open now */
    uint64_t connects;                  /* connections opened, total */
    uint64_t goaways;                   /* GOAWAYs received */
    uint64_t pings;                     /* PINGs sent */
    uint64_t ping_failures;             /* connections closed for an unanswered PING */
    uint64_t refused;                   /* streams closed retryable */
    uint64_t idle_closed;               /* idle connections closed: max_idle, idle_timeout */
};
/* The pool's counters as its block holds them (relaxed atomic loads: any
 * thread may read a block; a worker has one pool, so its block's values
 * are its pool's). */
void wg_h2_pool_stats(const struct wg_h2_pool *p, struct wg_h2_pool_stats *out);

/* ---- heads between the exchange (HTTP/1.1 semantics) and HTTP/2 ----------
 * The exchange works on HTTP/1.1 heads (exchange.h on the HTTP/2 branch:
 * the downstream codecs hand it one, and it rewrites it for the upstream).
 * These pure functions carry such heads to and from an HTTP/2 upstream. */

/* The nv list of request head `m` (fields h[0..m->nheaders), bytes in
 * `msg`) for wg_h2_submit(): :method, :scheme `scheme`, :authority = Host,
 * :path = the origin-form target (absolute-form: path and query), then the
 * fields with lower-cased names (into scratch[scratch_cap]), without Host
 * and the connection-specific ones (RFC 9113 §8.2.2: Connection,
 * Keep-Alive, Proxy-Connection, Transfer-Encoding, Upgrade, and TE unless
 * it is "trailers"). Returns the number of entries, or 0 when nv[cap] or
 * scratch is too small or the head has no Host. Values point into msg. */
size_t wg_h2_request_nv(const struct wg_http_message *m, const struct wg_http_header *h,
                        const char *msg, const char *scheme, nghttp2_nv *nv, size_t cap,
                        char *scratch, size_t scratch_cap);

/* An HTTP/2 response head as an HTTP/1.1 one the exchange parses:
 * "HTTP/1.1 <status> <reason>" and the fields (content-length dropped),
 * framed with "transfer-encoding: chunked" so that data and trailers
 * follow as chunks (wg_h2_chunk_head, wg_h2_trailers_h1), or with
 * "content-length: 0" when end_stream (a Trailers-Only answer: its
 * grpc-status stays in the head). Returns the length written into out[cap],
 * or 0 when it does not fit. */
size_t wg_h2_response_h1(unsigned status, const nghttp2_nv *nv, size_t n, bool end_stream,
                         char *out, size_t cap);
/* to[n] = from[n] with ASCII A-Z lower-cased (HTTP/2 field names, both
 * codecs); other bytes unchanged. */
void wg_h2_lower_copy(char *to, const char *from, size_t n);
/* status % 1000 as three digits, no NUL (":status", a status line). */
void wg_h2_status_digits(char out[3], unsigned status);
/* A DATA frame nghttp2 hands a send_data callback (NGHTTP2_DATA_FLAG_NO_COPY,
 * both codecs): its 9-byte header `framehd`, the pad length byte, `len`
 * payload bytes from `data` and the padding, into out, which has room for
 * 9 + f->data.padlen + len bytes. Returns the bytes written. */
size_t wg_h2_data_frame(uint8_t *out, const nghttp2_frame *f, const uint8_t *framehd,
                        const uint8_t *data, size_t len);
/* A DATA payload lent (WG_H2_LEND_MIN): written from where it is, in the
 * writev of the frame bytes around it, before the frame byte at `at`. */
struct wg_h2_lent {
    const uint8_t *p;
    size_t at, len;
};
/* One writev (plain text; both codecs) of the frame bytes frames[*off,
 * end) with the n (<= WG_H2_LENT_MAX) lent payloads l[] in their places
 * (`at` within [*off, end] and not descending: pieces of one payload share
 * theirs): *off and the payloads move past what was written (one written
 * in part keeps its rest). Returns the bytes written, or -1 with errno
 * (EAGAIN: the socket takes nothing now; EINVAL: n is over
 * WG_H2_LENT_MAX); *over: how many of l[] are wholly out (the caller lets
 * them go). */
ssize_t wg_h2_lent_write(int fd, const uint8_t *frames, size_t *off, size_t end,
                         struct wg_h2_lent *l, unsigned n, unsigned *over);
/* "<hex len>\r\n" before a chunk of `len` bytes (len > 0); the chunk is
 * followed by "\r\n". out needs 20 bytes; returns the length. */
size_t wg_h2_chunk_head(size_t len, char *out);
/* The last chunk with trailers: "0\r\n", the fields, "\r\n". Returns
 * the length written into out[cap], or 0 when it does not fit. */
size_t wg_h2_trailers_h1(const nghttp2_nv *nv, size_t n, char *out, size_t cap);
/* The same without the "0\r\n" line: a trailer section as the exchange
 * keeps one for a client that takes payload only (exchange.h: trailers). */
size_t wg_h2_trailer_section(const nghttp2_nv *nv, size_t n, char *out, size_t cap);

#endif
