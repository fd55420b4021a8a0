/* http_mirror — see include/waygate/http_mirror.h
 *
 * A copy is one struct wg_mirror_copy: toward an HTTP/1.1 instance its
 * socket (and SSL), one edge-triggered event for everything that socket
 * does, a timer for its whole life, and a buffer holding what is still to be
 * sent: the head, then body bytes as the exchange tees them. The pump
 * (on_event) does the handshake, sends the buffer, and reads and discards
 * the response; a tee only appends and makes the event active, so the
 * exchange never waits on the copy's socket.
 * Toward an h2c/h2 instance the copy is a stream of the worker's HTTP/2
 * pool (upstream_h2.h) instead of a socket: the head goes as the stream's
 * HEADERS at the start, the buffer holds only payload the stream's own
 * bounded buffer did not take yet (flow control), ops->writable pushes
 * more, and ops->data discards the response. */
#include "waygate/http_mirror.h"

#include <errno.h>
#include <event2/event.h>
#include <event2/event_struct.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "waygate/balance.h"
#include "waygate/grpc.h"
#include "waygate/http.h"
#include "waygate/http_buf.h"
#include "waygate/log.h"
#include "waygate/pool.h"
#include "waygate/stats.h"
#include "waygate/tls.h"
#include "waygate/upstream_h2.h"
#include "waygate/worker.h"

#define MIRROR_CHUNK_HEAD 20            /* "<hex>\r\n" of a chunk we frame, and its "\r\n" */
#define MIRROR_FIRST_BODY 4096          /* buffer room for a chunked body at first */

struct wg_mirror_copy {
    struct wg_mirror_copy *prev, *next;
    struct mirror_local *loc;
    struct wg_mirror_copy **owner;      /* the exchange's pointer while it feeds us */
    struct wg_stats_block *stats;       /* the worker's */
    int fd;                             /* -1 for an HTTP/2 copy */
    SSL *ssl;
    bool handshaken, chunked;
    struct wg_h2_stream *h2;            /* an HTTP/2 copy's stream, until it closes */
    bool on_h2, ended;                  /* an HTTP/2 copy; its END_STREAM was given */
    struct wg_http_body dec;            /* de-chunks framed tees for an HTTP/2 copy */
    struct event ev, timer;
    struct wg_instance *inst;           /* one reference */
    char *buf;                          /* [sent, len) still to send */
    size_t len, sent, cap, limit;       /* limit: the head + max_body, cap never above */
    uint64_t body, max_body;            /* body bytes buffered so far (as sent), the bound */
};

struct mirror_local {
    struct wg_mirror_copy *first;
    unsigned in_flight;
};

static pthread_key_t mirror_key;
static pthread_once_t mirror_once = PTHREAD_ONCE_INIT;
static _Thread_local struct mirror_local *mirror_tls;

static void mirror_end(struct wg_mirror_copy *m)
{
    struct mirror_local *loc = m->loc;

    if (m->fd >= 0)
        event_del(&m->ev);
    event_del(&m->timer);
    if (m->h2)                          /* no callback runs for it any more */
        wg_h2_stream_reset(m->h2, NGHTTP2_CANCEL);
    if (m->ssl) {
        wg_tls_close(m->ssl);
        SSL_free(m->ssl);
    }
    if (m->fd >= 0)
        close(m->fd);
    wg_instance_unref(m->inst);
    if (m->prev)
        m->prev->next = m->next;
    else
        loc->first = m->next;
    if (m->next)
        m->next->prev = m->prev;
    loc->in_flight--;
    free(m->buf);
    free(m);
}

/* End a copy; one still fed by its exchange is counted as dropped `why`
 * and the exchange's pointer cleared. */
static void mirror_drop(struct wg_mirror_copy *m, enum wg_counter why)
{
    if (m->owner) {
        *m->owner = NULL;
        m->owner = NULL;
        wg_stats_add(m->stats, why, 1);
    }
    mirror_end(m);
}

static void local_free(void *arg)
{
    struct mirror_local *loc = arg;

    while (loc->first) {
        loc->first->owner = NULL;       /* the worker released its exchanges first */
        mirror_end(loc->first);
    }
    free(loc);
}

static void key_init(void)
{
    if (pthread_key_create(&mirror_key, local_free) != 0)
        wg_error("msg=\"mirror: cannot create the worker key\"");
}

static struct mirror_local *local_get(void)
{
    struct mirror_local *loc;

    if (mirror_tls)
        return mirror_tls;
    pthread_once(&mirror_once, key_init);
    if (!(loc = calloc(1, sizeof *loc)))
        return NULL;
    if (pthread_setspecific(mirror_key, loc) != 0) {
        free(loc);
        return NULL;
    }
    return mirror_tls = loc;
}

unsigned wg_mirror_in_flight(void) { return mirror_tls ? mirror_tls->in_flight : 0; }

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    mirror_drop(arg, WG_C_MIRROR_DROP_FAILED);
}

/* Send what the buffer holds; false when the connection failed. The buffer
 * goes once the whole request is out. */
static bool mirror_flush(struct wg_mirror_copy *m)
{
    while (m->sent < m->len) {
        size_t n = 0;
        if (m->ssl) {
            enum wg_tls_io r = wg_tls_write(m->ssl, m->buf + m->sent, m->len - m->sent, &n);
            if (r == WG_TLS_WANT_READ || r == WG_TLS_WANT_WRITE)
                return true;
            if (r != WG_TLS_OK)
                return false;
        } else {
            ssize_t k = send(m->fd, m->buf + m->sent, m->len - m->sent, MSG_NOSIGNAL);
            if (k < 0 && (errno == EAGAIN || errno == EINTR))
                return true;
            if (k <= 0)
                return false;
            n = (size_t)k;
        }
        m->sent += n;
    }
    m->len = m->sent = 0;
    if (!m->owner) {                    /* whole and sent */
        free(m->buf);
        m->buf = NULL;
        m->cap = 0;
    }
    return true;
}

/* Read and discard the response; false at its EOF or an error. */
static bool mirror_discard(struct wg_mirror_copy *m)
{
    char sink[4096];

    for (;;) {
        if (m->ssl) {
            size_t n = 0;
            enum wg_tls_io r = wg_tls_read(m->ssl, sink, sizeof sink, &n);
            if (r == WG_TLS_WANT_READ || r == WG_TLS_WANT_WRITE)
                return true;
            if (r != WG_TLS_OK)
                return false;
        } else {
            ssize_t n = recv(m->fd, sink, sizeof sink, 0);
            if (n < 0 && (errno == EAGAIN || errno == EINTR))
                return true;
            if (n <= 0)
                return false;           /* EOF (Connection: close) or an error */
        }
    }
}

/* Every edge of the socket, and the tee's wake-up: try everything that may
 * have become possible (edge-triggered: each step runs until it would block). */
static void on_event(evutil_socket_t fd, short what, void *arg)
{
    struct wg_mirror_copy *m = arg;

    if (m->ssl && !m->handshaken) {
        enum wg_tls_io r = wg_tls_handshake(m->ssl);
        if (r == WG_TLS_WANT_READ || r == WG_TLS_WANT_WRITE)
            return;
        if (r != WG_TLS_OK) {
            wg_tls_upstream_failed(m->stats, m->inst->service->name, m->inst->id);
            mirror_drop(m, WG_C_MIRROR_DROP_FAILED);
            return;
        }
        m->handshaken = true;
    }
    if (!mirror_flush(m) || !mirror_discard(m))
        mirror_drop(m, WG_C_MIRROR_DROP_FAILED);
}

/* Room for `need` more bytes in the buffer, whose unsent part never holds
 * more than the head and max_body. */
static bool mirror_room(struct wg_mirror_copy *m, size_t need)
{
    if (m->cap - m->len >= need)
        return true;
    if (m->sent) {
        memmove(m->buf, m->buf + m->sent, m->len - m->sent);
        m->len -= m->sent;
        m->sent = 0;
        if (m->cap - m->len >= need)
            return true;
    }
    size_t cap = m->cap * 2 < m->limit ? m->cap * 2 : m->limit;
    if (cap < m->len + need)
        cap = m->len + need;
    char *b = realloc(m->buf, cap);
    if (!b)
        return false;
    m->buf = b;
    m->cap = cap;
    return true;
}

static void mirror_append(struct wg_mirror_copy *m, const void *p, size_t n)
{
    memcpy(m->buf + m->len, p, n);
    m->len += n;
}

/* ---- HTTP/2 copies ------------------------------------------------------ */

/* Hand the stream what the buffer holds, as much as its buffer takes (the
 * rest waits for ops->writable); once the body is whole and handed over,
 * END_STREAM and the buffer goes. */
static void h2_push(struct wg_mirror_copy *m)
{
    while (m->sent < m->len) {
        size_t n = wg_h2_stream_write(m->h2, (const uint8_t *)m->buf + m->sent, m->len - m->sent);
        if (!n)
            return;
        m->sent += n;
    }
    m->len = m->sent = 0;
    if (!m->owner && !m->ended) {       /* whole and handed over */
        m->ended = true;
        wg_h2_stream_end(m->h2, NULL, 0);
        free(m->buf);
        m->buf = NULL;
        m->cap = 0;
    }
}

static void h2_head(void *ctx, unsigned status, const nghttp2_nv *nv, size_t n, bool end) {}

static size_t h2_data(void *ctx, const uint8_t *p, size_t len, struct hp_rx *rx)
{
    return len;                         /* discarded */
}

static void h2_closed(void *ctx, uint32_t error, bool retryable)
{
    struct wg_mirror_copy *m = ctx;

    m->h2 = NULL;                       /* freed when we return */
    mirror_drop(m, WG_C_MIRROR_DROP_FAILED);
}

static void h2_writable(void *ctx) { h2_push(ctx); }

static const struct wg_h2_stream_ops mirror_h2_ops = {
    .head = h2_head, .data = h2_data, .closed = h2_closed, .writable = h2_writable,
};

/* Payload for the stream: straight into its buffer when nothing waits
 * ahead, the rest into ours; false when the copy was dropped. */
static bool h2_take(struct wg_mirror_copy *m, const char *p, size_t n)
{
    size_t k = 0;

    if (m->body + n > m->max_body) {
        mirror_drop(m, WG_C_MIRROR_DROP_MAX_BODY);
        return false;
    }
    m->body += n;
    if (m->sent == m->len)
        k = wg_h2_stream_write(m->h2, (const uint8_t *)p, n);
    if (k == n)
        return true;
    if (!mirror_room(m, n - k)) {
        mirror_drop(m, WG_C_MIRROR_DROP_FAILED);
        return false;
    }
    mirror_append(m, p + k, n - k);
    return true;
}

/* wg_mirror_tee for an HTTP/2 copy: payload only (a framed chunked body is
 * de-chunked here; its trailers are not copied). */
static void h2_tee(struct wg_mirror_copy **cp, const char *p, size_t n, bool framed, bool last)
{
    struct wg_mirror_copy *m = *cp;

    if (framed && m->chunked) {
        while (n) {
            struct wg_http_body_step st;
            enum wg_http_result r = wg_http_body_parse(&m->dec, p, n, &st);
            if (r == WG_HTTP_ERROR) {
                mirror_drop(m, WG_C_MIRROR_DROP_FAILED);
                return;
            }
            if (st.data_len && !h2_take(m, p + st.data_off, st.data_len))
                return;
            p += st.consumed;
            n -= st.consumed;
            if (r == WG_HTTP_DONE || !st.consumed)
                break;
        }
    } else if (!h2_take(m, p, n)) {
        return;
    }
    if (last) {                         /* whole: it goes on alone */
        *cp = NULL;
        m->owner = NULL;
        wg_stats_add(m->stats, WG_C_MIRROR_SENT, 1);
        h2_push(m);
    }
}

/* The copy's stream to `inst` in the worker's HTTP/2 pool: the head as
 * HTTP/2 fields (as the exchange sends a request to such an instance),
 * `te: trailers` again for gRPC. */
static bool h2_submit(struct wg_mirror_copy *m, struct wg_worker *w,
                      const struct wg_pool_service *svc, struct wg_instance *inst,
                      const char *head, size_t len, bool https, bool has_body)
{
    struct hp_local *loc = hp_local_get(w->base);
    nghttp2_nv nv[HP_MAX_HEADERS + 8];
    char scratch[HP_BLOCK];
    struct wg_http_header h[HP_MAX_HEADERS];
    struct wg_http_parser p;
    size_t used = 0, n = 0;
    int err = 0;

    if (!loc || !wg_h2_pool_local(loc, w->base, w->stats))
        return false;
    wg_http_parser_init_request(&p, h, HP_MAX_HEADERS, 0);
    if (wg_http_parse_head(&p, head, len, &used) == WG_HTTP_DONE)
        n = wg_h2_request_nv(&p.msg, h, head, https ? "https" : "http", nv, HP_MAX_HEADERS + 6,
                             scratch, sizeof scratch);
    if (!n)
        return false;
    for (size_t i = 0; i < n; i++)
        if (nv[i].namelen == 12 && memcmp(nv[i].name, "content-type", 12) == 0 &&
            wg_grpc_is_grpc((const char *)nv[i].value, nv[i].valuelen)) {
            nv[n++] = (nghttp2_nv){ (uint8_t *)"te", (uint8_t *)"trailers", 2, 8,
                                    NGHTTP2_NV_FLAG_NONE };
            break;
        }
    const struct wg_service_config *sc = svc->cfg;
    SSL_CTX *ctx = inst->protocol == WG_UPSTREAM_H2
                       ? wg_tls_set_service(svc->config->ext, svc->config->cfg, sc) : NULL;
    const struct wg_h2_conn_limits lim = wg_h2_service_limits(sc);
    m->h2 = wg_h2_submit(loc->h2, inst, ctx, sc->tls.sni, sc->tls.verify, &lim, nv, n, has_body,
                         &mirror_h2_ops, m, &err);
    return m->h2 != NULL;
}

/* ---- the tee ------------------------------------------------------------- */

void wg_mirror_tee(struct wg_mirror_copy **cp, const char *p, size_t n, bool framed, bool last)
{
    struct wg_mirror_copy *m = *cp;
    if (m->on_h2) {
        h2_tee(cp, p, n, framed, last);
        return;
    }
    bool frame = m->chunked && !framed;
    char size[MIRROR_CHUNK_HEAD];
    size_t head = frame && n ? (size_t)snprintf(size, sizeof size, "%zx\r\n", n) : 0;
    size_t add = n + (head ? head + 2 : 0) + (frame && last ? 5 : 0);

    if (m->body + add > m->max_body) {
        mirror_drop(m, WG_C_MIRROR_DROP_MAX_BODY);
        return;
    }
    if (!mirror_room(m, add)) {
        mirror_drop(m, WG_C_MIRROR_DROP_FAILED);
        return;
    }
    if (head)
        mirror_append(m, size, head);
    mirror_append(m, p, n);
    if (head)
        mirror_append(m, "\r\n", 2);
    if (frame && last)
        mirror_append(m, "0\r\n\r\n", 5);
    m->body += add;
    if (last) {                         /* whole: it goes on alone */
        *cp = NULL;
        m->owner = NULL;
        wg_stats_add(m->stats, WG_C_MIRROR_SENT, 1);
    }
    if (add)
        event_active(&m->ev, EV_WRITE, 0);
}

void wg_mirror_abandon(struct wg_mirror_copy **cp)
{
    if (*cp)
        mirror_drop(*cp, WG_C_MIRROR_DROP_ABORTED);
}

/* The copy of the head, with `Connection: close` before its final CRLF, in
 * a buffer with room for `room` body bytes. */
static struct wg_mirror_copy *mirror_new(const char *head, size_t len, size_t room)
{
    static const char close_field[] = "Connection: close\r\n\r\n";
    struct wg_mirror_copy *m;

    if (len < 4 || memcmp(head + len - 4, "\r\n\r\n", 4) != 0 || !(m = calloc(1, sizeof *m)))
        return NULL;
    m->fd = -1;
    m->cap = len - 2 + sizeof close_field - 1 + room;
    if (!(m->buf = malloc(m->cap))) {
        free(m);
        return NULL;
    }
    mirror_append(m, head, len - 2);
    mirror_append(m, close_field, sizeof close_field - 1);
    return m;
}

/* The copy's connection (and SSL) to `inst`; false when it cannot start. */
static bool mirror_connect(struct wg_mirror_copy *m, const struct wg_pool_service *svc,
                           struct wg_instance *inst)
{
    struct sockaddr_storage ss;
    socklen_t sslen = wg_instance_sockaddr(inst, &ss);
    SSL_CTX *ctx = wg_tls_set_service(svc->config->ext, svc->config->cfg, svc->cfg);
    int one = 1;

    m->fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (m->fd < 0)
        return false;
    setsockopt(m->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(m->fd, (const struct sockaddr *)&ss, sslen) < 0 && errno != EINPROGRESS)
        return false;
    if (ctx && !(m->ssl = wg_tls_upstream_ssl(ctx, m->fd, svc->cfg->tls.sni, svc->cfg->tls.verify,
                                              (const struct sockaddr *)&ss)))
        return false;
    return true;
}

/* An HTTP/2 copy: no head in the buffer (it goes as HEADERS), room for
 * `room` payload bytes. */
static struct wg_mirror_copy *mirror_new_h2(size_t room)
{
    struct wg_mirror_copy *m = calloc(1, sizeof *m);

    if (!m)
        return NULL;
    m->fd = -1;
    m->on_h2 = true;
    if (room && !(m->buf = malloc(room))) {
        free(m);
        return NULL;
    }
    m->cap = room;
    return m;
}

bool wg_mirror_start(struct wg_worker *w, const struct wg_policy_mirror *pm, const char *head,
                     size_t len, uint64_t body, bool https, struct wg_mirror_copy **owner)
{
    struct mirror_local *loc = local_get();
    struct wg_snapshot *snap = wg_pool_current(w->pool);
    const struct wg_pool_service *svc = snap ? wg_snapshot_service(snap, pm->service) : NULL;
    const struct wg_member *mem = NULL;
    struct wg_pick pick;
    struct wg_mirror_copy *m = NULL;

    *owner = NULL;
    if (body && body != WG_MIRROR_CHUNKED && body > pm->max_body) {
        wg_stats_add(w->stats, WG_C_MIRROR_DROP_MAX_BODY, 1);
        return false;
    }
    if (!loc || !svc || loc->in_flight >= pm->max_in_flight)
        goto skip;
    wg_pick_init(&pick, svc, &w->rng, NULL);
    if (!(mem = wg_pick_next(&pick)))
        goto skip;
    bool h2 = mem->inst->protocol == WG_UPSTREAM_H2C || mem->inst->protocol == WG_UPSTREAM_H2;
    if (!h2 && mem->inst->protocol != WG_UPSTREAM_HTTP1)
        goto skip;
    size_t room = body == WG_MIRROR_CHUNKED ? (pm->max_body < MIRROR_FIRST_BODY ? pm->max_body
                                                                                : MIRROR_FIRST_BODY)
                                            : (size_t)body;
    if (!(m = h2 ? mirror_new_h2(0) : mirror_new(head, len, room)))
        goto skip;
    struct timeval tv = { (time_t)(pm->timeout_ms / 1000), (suseconds_t)(pm->timeout_ms % 1000) * 1000 };
    if (evtimer_assign(&m->timer, w->base, on_timer, m) < 0)
        goto fail;
    if (h2) {                           /* the stream's events are the pool's */
        if (!h2_submit(m, w, svc, mem->inst, head, len, https, body != 0))
            goto fail;
        wg_http_body_init(&m->dec, body == WG_MIRROR_CHUNKED ? WG_HTTP_BODY_CHUNKED
                                                             : WG_HTTP_BODY_LENGTH, body, 0);
        m->ended = !body;
        if (evtimer_add(&m->timer, &tv) < 0) {
            wg_h2_stream_reset(m->h2, NGHTTP2_CANCEL);
            goto fail;
        }
    } else {
        if (!mirror_connect(m, svc, mem->inst))
            goto fail;
        if (event_assign(&m->ev, w->base, m->fd,
                         EV_READ | EV_WRITE | EV_CLOSED | EV_ET | EV_PERSIST, on_event, m) < 0 ||
            event_add(&m->ev, NULL) < 0)
            goto fail;
        if (evtimer_add(&m->timer, &tv) < 0) {
            event_del(&m->ev);
            goto fail;
        }
    }
    wg_instance_ref(mem->inst);
    m->inst = mem->inst;
    m->loc = loc;
    m->stats = w->stats;
    m->chunked = body == WG_MIRROR_CHUNKED;
    m->max_body = pm->max_body;
    m->limit = m->len + (size_t)pm->max_body;
    m->next = loc->first;
    if (loc->first)
        loc->first->prev = m;
    loc->first = m;
    loc->in_flight++;
    if (body) {
        m->owner = owner;
        *owner = m;
    } else {
        wg_stats_add(w->stats, WG_C_MIRROR_SENT, 1);
    }
    return true;
fail:
    if (m->ssl)
        SSL_free(m->ssl);
    if (m->fd >= 0)
        close(m->fd);
    free(m->buf);
    free(m);
skip:
    wg_stats_add(w->stats, WG_C_MIRROR_SKIPPED, 1);
    return false;
}
