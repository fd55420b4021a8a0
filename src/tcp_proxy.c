/* tcp_proxy — see include/waygate/tcp_proxy.h */
#include "waygate/tcp_proxy.h"

#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "waygate/balance.h"
#include "waygate/health.h"
#include "waygate/listener.h"
#include "waygate/log.h"
#include "waygate/pool.h"
#include "waygate/proxy_protocol.h"
#include "waygate/sockaddr.h"
#include "waygate/stats.h"
#include "waygate/tls.h"
#include "waygate/worker.h"

#define TCP_CONN_MAGIC 0x7c9c0e11U
#define SPLICE_CHUNK (256 * 1024)
#define TLS_BUF (64 * 1024)             /* per direction, only while data flows */
#define PUMP_BUDGET (4 * 1024 * 1024)   /* per callback, for fairness */

/* One socket of the connection, with its TLS session if any. Its event's
 * flags are recomputed from both directions' needs after every pump. */
struct endpoint {
    int fd;
    SSL *ssl;
    struct event *ev;
    short registered;                   /* EV_READ / EV_WRITE currently added */
};

/* One direction of the relay: src -> pipe (plain) or buffer (TLS) -> dst. */
struct relay_dir {
    struct endpoint *src, *dst;
    int pipe[2];                        /* splice mode; -1 when none held */
    char *buf;                          /* TLS mode; NULL when empty */
    size_t head, tail;                  /* buf[head, tail) pending */
    size_t pending;                     /* bytes in the pipe or the buffer */
    bool eof;                           /* src sent FIN / close_notify */
    bool shut;                          /* FIN forwarded to dst */
    bool src_wants_write;               /* TLS read needs the socket writable */
    bool dst_wants_read;                /* TLS write needs the socket readable */
    enum wg_counter counter;            /* WG_C_BYTES_IN or WG_C_BYTES_OUT */
    uint64_t bytes;                     /* forwarded to dst (access log) */
};

struct tcp_conn {
    uint32_t magic;
    struct wg_conn_link link;
    struct wg_worker *w;
    const struct wg_listener *l;
    struct wg_pool_service *svc;        /* one reference: settings for our lifetime */
    struct wg_pick pick;                /* instances tried so far */
    struct wg_instance *inst;           /* one reference + one `active` while set */
    unsigned inst_gen;                  /* its down_generation when picked (health.h) */
    struct endpoint client, upstream;
    struct relay_dir up;                /* client -> upstream */
    struct relay_dir down;              /* upstream -> client */
    struct event *timer;                /* handshake, connect and idle deadlines */
    SSL_CTX *upstream_tls;              /* the service's, when it wants TLS */
    struct wg_tls_server *tls_server;   /* one reference during the handshake (SNI) */
    uint64_t idle_timeout_ms;
    uint64_t last_active_ms;
    unsigned attempts;
    enum { HANDSHAKE, CONNECTING, UPSTREAM_HANDSHAKE, RELAY } state;
    struct sockaddr_storage peer_addr;  /* the client, for PROXY v2 upstream */
    char peer[64];
    /* for the access log (log.h) */
    uint64_t start_ns, attempt_ns;      /* accepted; the current attempt started */
    int64_t connect_us;                 /* the last attempt's connect time; -1: none */
    const char *end_reason;             /* NULL: told by the state (close_reason) */
};

static void start_connect(struct tcp_conn *c);
static void conn_event(evutil_socket_t fd, short what, void *arg);

static struct timeval tv_ms(uint64_t ms)
{
    return (struct timeval){ (time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000 };
}

static bool transient(void) { return errno == EAGAIN || errno == EINTR; }

/* ---- teardown ---- */

static void dir_release(struct tcp_conn *c, struct relay_dir *d)
{
    free(d->buf);
    d->buf = NULL;
    if (d->pipe[0] < 0)
        return;
    if (d->pending == 0) {
        wg_worker_pipe_put(c->w, d->pipe);
    } else {
        close(d->pipe[0]);
        close(d->pipe[1]);
        d->pipe[0] = d->pipe[1] = -1;
    }
}

static void endpoint_close(struct endpoint *e)
{
    if (e->ev)
        event_free(e->ev);
    e->ev = NULL;
    if (e->ssl) {
        wg_tls_close(e->ssl);
        SSL_free(e->ssl);
        e->ssl = NULL;
    }
    if (e->fd >= 0)
        close(e->fd);
    e->fd = -1;
    e->registered = 0;
}

static void release_instance(struct tcp_conn *c)
{
    if (!c->inst)
        return;
    atomic_fetch_sub_explicit(&c->inst->active, 1, memory_order_relaxed);
    wg_instance_unref(c->inst);
    c->inst = NULL;
}

static void drop_tls_server(struct tcp_conn *c)
{
    wg_tls_server_unref(c->tls_server);
    c->tls_server = NULL;
}

/* A read from or a write to `e` failed (errno): when the peer reset the
 * connection (ECONNRESET, EPIPE), the access log says which side did
 * (client_reset, upstream_reset); any other failure stays "error". Over
 * TLS errno may not be the failure's, so it is not looked at. */
static void io_failed(struct tcp_conn *c, const struct endpoint *e)
{
    if (!c->end_reason && !e->ssl && (errno == ECONNRESET || errno == EPIPE))
        c->end_reason = e == &c->client ? "client_reset" : "upstream_reset";
}

/* How the connection ended, for the access log. */
static const char *close_reason(const struct tcp_conn *c)
{
    if (c->end_reason)
        return c->end_reason;
    if (c->state == HANDSHAKE)
        return "tls_handshake_failed";
    if (c->state != RELAY)
        return "connect_failed";
    return c->up.shut && c->down.shut ? "eof" : "error";
}

static void access_log(const struct tcp_conn *c)
{
    struct wg_access_entry e = {
        .client = c->peer,
        .listener = c->l->name,
        .service = c->svc ? c->svc->name : NULL,
        .upstream = c->inst ? c->inst->id : NULL,
        .reason = close_reason(c),
        .bytes_in = c->up.bytes,
        .bytes_out = c->down.bytes,
        .duration_us = (wg_now_ns() - c->start_ns) / 1000,
        .connect_us = c->connect_us,
        .retries = c->attempts > 1 ? c->attempts - 1 : 0,
    };
    wg_access_log(c->w->access_log, &e);
}

static void conn_close(struct tcp_conn *c)
{
    access_log(c);
    drop_tls_server(c);
    dir_release(c, &c->up);
    dir_release(c, &c->down);
    if (c->timer)
        event_free(c->timer);
    endpoint_close(&c->client);
    endpoint_close(&c->upstream);
    release_instance(c);
    wg_pool_service_unref(c->svc);
    wg_worker_conn_remove(c->w, &c->link);
    wg_listener_conn_closed();
    c->magic = 0;
    free(c);
}

static void force_close(struct wg_conn_link *l)
{
    struct tcp_conn *c = (struct tcp_conn *)((char *)l - offsetof(struct tcp_conn, link));
    c->end_reason = "shutdown";
    conn_close(c);
}

/* The worker's 1 s tick: drain_timeout and on_unhealthy: close (health.h). */
static void health_tick(struct wg_conn_link *l, uint64_t now_ms)
{
    struct tcp_conn *c = (struct tcp_conn *)((char *)l - offsetof(struct tcp_conn, link));
    if (!c->inst)
        return;
    enum wg_health_cut cut = wg_health_conn_cut(c->svc->cfg, c->inst, c->inst_gen, now_ms);
    if (cut == WG_CUT_NONE)
        return;
    wg_debug("msg=\"connection closed\" reason=%s listener=%s service=%s upstream=%s client=%s "
            "health=%s", wg_health_cut_name(cut), c->l->name, c->svc->name, c->inst->id, c->peer,
            wg_health_name(wg_instance_health(c->inst)));
    c->end_reason = wg_health_cut_name(cut);
    conn_close(c);
}

/* ---- events ---- */

/* (Re)register `e` for `want` if it changed. */
static void endpoint_want(struct tcp_conn *c, struct endpoint *e, short want)
{
    if (want == e->registered || !e->ev)
        return;
    event_del(e->ev);
    e->registered = want;
    if (!want)
        return;
    event_assign(e->ev, c->w->base, e->fd, want | EV_PERSIST, conn_event, c);
    event_add(e->ev, NULL);
}

static short dir_needs_src(const struct relay_dir *d)
{
    return (short)((!d->eof && d->pending == 0 ? EV_READ : 0) | (d->src_wants_write ? EV_WRITE : 0));
}

static short dir_needs_dst(const struct relay_dir *d)
{
    return (short)((d->pending ? EV_WRITE : 0) | (d->dst_wants_read ? EV_READ : 0));
}

static void update_interest(struct tcp_conn *c)
{
    endpoint_want(c, &c->client, dir_needs_src(&c->up) | dir_needs_dst(&c->down));
    endpoint_want(c, &c->upstream, dir_needs_src(&c->down) | dir_needs_dst(&c->up));
}

static void arm_timer(struct tcp_conn *c, uint64_t ms)
{
    struct timeval tv = tv_ms(ms);
    event_add(c->timer, &tv);
}

/* ---- relay: splice for plain sockets ---- */

static int pump_splice(struct tcp_conn *c, struct relay_dir *d)
{
    size_t budget = PUMP_BUDGET;
    bool progress = true;
    while (progress && budget) {
        progress = false;
        if (!d->eof) {
            if (d->pipe[0] < 0 && wg_worker_pipe_get(c->w, d->pipe) < 0)
                return -1;
            ssize_t n = splice(d->src->fd, NULL, d->pipe[1], NULL, SPLICE_CHUNK,
                               SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
            if (n > 0) {
                d->pending += (size_t)n;
                progress = true;
            } else if (n == 0) {
                d->eof = true;
            } else if (!transient()) {
                io_failed(c, d->src);
                return -1;
            }
        }
        if (d->pending) {
            ssize_t n = splice(d->pipe[0], NULL, d->dst->fd, NULL, d->pending,
                               SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
            if (n > 0) {
                d->pending -= (size_t)n;
                budget = (size_t)n >= budget ? 0 : budget - (size_t)n;
                wg_stats_add(c->w->stats, d->counter, (uint64_t)n);
                d->bytes += (uint64_t)n;
                progress = true;
            } else if (n < 0 && !transient()) {
                io_failed(c, d->dst);
                return -1;
            } else {
                break;                  /* dst is full: wait for it */
            }
        }
    }
    if (d->pending == 0 && d->pipe[0] >= 0)
        wg_worker_pipe_put(c->w, d->pipe);      /* idle connections hold no pipe */
    return 0;
}

/* ---- relay: a bounded buffer when either side speaks TLS ---- */

static enum wg_tls_io ep_read(struct endpoint *e, char *buf, size_t len, size_t *n)
{
    if (e->ssl)
        return wg_tls_read(e->ssl, buf, len, n);
    ssize_t r = read(e->fd, buf, len);
    if (r > 0) {
        *n = (size_t)r;
        return WG_TLS_OK;
    }
    if (r == 0)
        return WG_TLS_EOF;
    return transient() ? WG_TLS_WANT_READ : WG_TLS_ERROR;
}

static enum wg_tls_io ep_write(struct endpoint *e, const char *buf, size_t len, size_t *n)
{
    if (e->ssl)
        return wg_tls_write(e->ssl, buf, len, n);
    ssize_t r = send(e->fd, buf, len, MSG_NOSIGNAL);
    if (r >= 0) {
        *n = (size_t)r;
        return WG_TLS_OK;
    }
    return transient() ? WG_TLS_WANT_WRITE : WG_TLS_ERROR;
}

static int fill(struct tcp_conn *c, struct relay_dir *d, bool *progress)
{
    if (d->eof || d->tail == TLS_BUF)
        return 0;
    if (!d->buf && !(d->buf = malloc(TLS_BUF)))
        return -1;
    size_t n = 0;
    enum wg_tls_io r = ep_read(d->src, d->buf + d->tail, TLS_BUF - d->tail, &n);
    d->src_wants_write = r == WG_TLS_WANT_WRITE;
    if (r == WG_TLS_OK) {
        d->tail += n;
        *progress = true;
    } else if (r == WG_TLS_EOF) {
        d->eof = true;
    } else if (r == WG_TLS_ERROR) {
        io_failed(c, d->src);
        return -1;
    }
    return 0;
}

static int flush(struct tcp_conn *c, struct relay_dir *d, bool *progress)
{
    if (d->head == d->tail)
        return 0;
    size_t n = 0;
    enum wg_tls_io r = ep_write(d->dst, d->buf + d->head, d->tail - d->head, &n);
    d->dst_wants_read = r == WG_TLS_WANT_READ;
    if (r == WG_TLS_ERROR)
        io_failed(c, d->dst);
    if (r == WG_TLS_ERROR || r == WG_TLS_EOF)
        return -1;
    if (r == WG_TLS_OK) {
        d->head += n;
        wg_stats_add(c->w->stats, d->counter, n);
        d->bytes += n;
        *progress = true;
    }
    return 0;
}

static int pump_buffered(struct tcp_conn *c, struct relay_dir *d)
{
    size_t budget = PUMP_BUDGET;
    bool progress = true;
    /* Past the budget, still empty the record OpenSSL has decrypted: no
     * socket event would ever announce those bytes (DESIGN §11). */
    while (progress && (budget || (d->src->ssl && SSL_pending(d->src->ssl) > 0))) {
        progress = false;
        size_t before = d->head;
        if (fill(c, d, &progress) < 0 || flush(c, d, &progress) < 0)
            return -1;
        budget = d->head - before >= budget ? 0 : budget - (d->head - before);
        if (d->head == d->tail) {
            d->head = d->tail = 0;
            /* SSL may hold decrypted bytes the socket will not signal again:
             * the loop reads on while there is progress, which drains them. */
        } else if (d->dst_wants_read || !progress) {
            break;
        }
    }
    d->pending = d->tail - d->head;
    if (!d->pending && d->buf) {
        free(d->buf);                   /* idle connections hold no buffer */
        d->buf = NULL;
    }
    return 0;
}

static void forward_shutdown(struct relay_dir *d)
{
    if (!d->eof || d->pending || d->shut)
        return;
    d->shut = true;
    if (d->dst->ssl)
        wg_tls_close(d->dst->ssl);      /* close_notify, then the TCP FIN */
    shutdown(d->dst->fd, SHUT_WR);
}

static int pump(struct tcp_conn *c, struct relay_dir *d)
{
    bool buffered = c->client.ssl || c->upstream.ssl;
    if ((buffered ? pump_buffered(c, d) : pump_splice(c, d)) < 0)
        return -1;
    forward_shutdown(d);
    return 0;
}

static void relay(struct tcp_conn *c, struct endpoint *e, short what)
{
    /* Directions that read from or write to `e`, and their TLS inversions. */
    struct relay_dir *from = e == &c->client ? &c->up : &c->down;
    struct relay_dir *to = e == &c->client ? &c->down : &c->up;
    bool readable = what & EV_READ, writable = what & EV_WRITE;
    if (((readable || (writable && from->src_wants_write)) && pump(c, from) < 0) ||
        ((writable || (readable && to->dst_wants_read)) && pump(c, to) < 0) ||
        (c->up.shut && c->down.shut)) {
        conn_close(c);
        return;
    }
    c->last_active_ms = wg_now_ms();
    update_interest(c);
}

/* ---- timers ---- */

static void timer_cb(evutil_socket_t fd, short what, void *arg);

static void handshake_failed(struct tcp_conn *c, enum wg_counter why)
{
    wg_stats_add(c->w->stats, why, 1);
    wg_debug("msg=\"tls handshake failed\" listener=%s client=%s reason=%s", c->l->name, c->peer,
             why == WG_C_TLS_FAIL_TIMEOUT ? "timeout" : wg_tls_error_reason());
    c->end_reason = why == WG_C_TLS_FAIL_TIMEOUT ? "tls_handshake_timeout" : "tls_handshake_failed";
    conn_close(c);
}

/* ---- connect and retry ---- */

static void attempt_failed(struct tcp_conn *c, int err)
{
    struct wg_instance *i = c->inst;
    wg_stats_add(c->w->stats, WG_C_CONNECT_ERRORS, 1);
    atomic_fetch_add_explicit(&i->connect_failures, 1, memory_order_relaxed);
    if (err != ENOMEM)
        wg_health_report_failure(c->svc, i, WG_FAIL_CONNECT);
    wg_debug("msg=\"upstream connect failed\" listener=%s service=%s upstream=%s address=%s "
             "error=\"%s\"", c->l->name, c->svc->name, i->id, i->addr_text,
             err ? strerror(err) : "timeout");
    endpoint_close(&c->upstream);
    release_instance(c);
    if (c->attempts > c->svc->cfg->retries) {
        wg_info("msg=\"all connect attempts failed\" listener=%s service=%s client=%s attempts=%u",
                c->l->name, c->svc->name, c->peer, c->attempts);
        conn_close(c);
        return;
    }
    wg_stats_add(c->w->stats, WG_C_RETRIES, 1);
    start_connect(c);
}

static void start_relay(struct tcp_conn *c)
{
    c->state = RELAY;
    wg_health_report_success(c->inst);
    c->last_active_ms = wg_now_ms();
    event_del(c->timer);
    arm_timer(c, c->idle_timeout_ms);
    /* The client may have sent bytes (or FIN) while we were connecting. */
    relay(c, &c->client, EV_READ);
}

static void upstream_handshake(struct tcp_conn *c)
{
    enum wg_tls_io r = wg_tls_handshake(c->upstream.ssl);
    if (r == WG_TLS_OK) {
        start_relay(c);
    } else if (r == WG_TLS_WANT_READ || r == WG_TLS_WANT_WRITE) {
        endpoint_want(c, &c->upstream, r == WG_TLS_WANT_READ ? EV_READ : EV_WRITE);
    } else {
        wg_tls_upstream_failed(c->w->stats, c->svc->name, c->inst->id);
        attempt_failed(c, EPROTO);
    }
}

/* PROXY protocol v2 header (a binary prefix, before any TLS) telling the
 * instance who the client is. */
static int send_proxy_v2(struct tcp_conn *c)
{
    struct sockaddr_storage local;
    socklen_t len = sizeof local;
    uint8_t h[WG_PROXY_V2_MAX];
    if (getsockname(c->client.fd, (struct sockaddr *)&local, &len) < 0)
        return -1;
    size_t n = wg_proxy_v2_encode((struct sockaddr *)&c->peer_addr, (struct sockaddr *)&local, h);
    /* A fresh connection's send buffer always takes these few bytes. */
    return send(c->upstream.fd, h, n, MSG_NOSIGNAL) == (ssize_t)n ? 0 : -1;
}

static void connected(struct tcp_conn *c)
{
    c->connect_us = (int64_t)((wg_now_ns() - c->attempt_ns) / 1000);
    if (c->svc->cfg->proxy_protocol && send_proxy_v2(c) < 0) {
        attempt_failed(c, errno ? errno : EIO);
        return;
    }
    if (!c->upstream_tls) {
        start_relay(c);
        return;
    }
    const struct wg_service_config *sc = c->svc->cfg;
    struct sockaddr_storage ss;
    wg_instance_sockaddr(c->inst, &ss);
    c->upstream.ssl = wg_tls_upstream_ssl(c->upstream_tls, c->upstream.fd, sc->tls.sni,
                                          sc->tls.verify, (struct sockaddr *)&ss);
    if (!c->upstream.ssl) {
        attempt_failed(c, ENOMEM);
        return;
    }
    c->state = UPSTREAM_HANDSHAKE;
    upstream_handshake(c);
}

static void connect_done(struct tcp_conn *c)
{
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(c->upstream.fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
        err = errno;
    if (err) {
        attempt_failed(c, err);
        return;
    }
    endpoint_want(c, &c->upstream, 0);
    connected(c);
}

static void start_connect(struct tcp_conn *c)
{
    wg_balance_cache_bind(&c->w->balance, &c->pick);   /* its state may have been swept */
    const struct wg_member *m = wg_pick_next(&c->pick);
    if (!m) {
        wg_stats_add(c->w->stats, WG_C_NO_UPSTREAM, 1);
        if (c->attempts == 0)
            wg_info("msg=\"no routable instance\" listener=%s service=%s client=%s", c->l->name,
                    c->svc->name, c->peer);
        c->end_reason = c->attempts ? "connect_failed" : "no_upstream";
        conn_close(c);
        return;
    }
    struct wg_instance *i = m->inst;
    wg_instance_ref(i);
    atomic_fetch_add_explicit(&i->active, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&i->requests_total, 1, memory_order_relaxed);
    c->inst = i;
    c->inst_gen = wg_health_conn_generation(i);
    c->attempts++;
    c->attempt_ns = wg_now_ns();
    c->connect_us = -1;
    c->state = CONNECTING;
    struct sockaddr_storage ss;
    socklen_t sslen = wg_instance_sockaddr(i, &ss);
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        /* Out of descriptors: not the instance's fault, nothing to retry. */
        wg_warn("msg=\"cannot create upstream socket\" error=\"%s\"", strerror(errno));
        conn_close(c);
        return;
    }
    c->upstream = (struct endpoint){ .fd = fd };
    c->upstream.ev = event_new(c->w->base, fd, 0, conn_event, c);
    if (!c->upstream.ev) {
        attempt_failed(c, ENOMEM);
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&ss, sslen) == 0) {
        connected(c);
        return;
    }
    if (errno != EINPROGRESS) {
        attempt_failed(c, errno);
        return;
    }
    endpoint_want(c, &c->upstream, EV_WRITE);
    event_del(c->timer);
    arm_timer(c, c->svc->cfg->connect_timeout_ms);
}

/* ---- the client's TLS handshake ---- */

static void client_handshake(struct tcp_conn *c)
{
    enum wg_tls_io r = wg_tls_handshake(c->client.ssl);
    if (r == WG_TLS_WANT_READ || r == WG_TLS_WANT_WRITE) {
        endpoint_want(c, &c->client, r == WG_TLS_WANT_READ ? EV_READ : EV_WRITE);
        return;
    }
    if (r != WG_TLS_OK) {
        handshake_failed(c, wg_tls_failure_counter());
        return;
    }
    drop_tls_server(c);
    wg_stats_add(c->w->stats, WG_C_TLS_HANDSHAKES, 1);
    if (SSL_session_reused(c->client.ssl))
        wg_stats_add(c->w->stats, WG_C_TLS_RESUMED, 1);
    endpoint_want(c, &c->client, 0);
    start_connect(c);
}

/* ---- dispatch ---- */

static void conn_event(evutil_socket_t fd, short what, void *arg)
{
    struct tcp_conn *c = arg;
    struct endpoint *e = fd == c->client.fd ? &c->client : &c->upstream;
    switch (c->state) {
    case HANDSHAKE:
        client_handshake(c);
        break;
    case CONNECTING:
        connect_done(c);
        break;
    case UPSTREAM_HANDSHAKE:
        upstream_handshake(c);
        break;
    case RELAY:
        relay(c, e, what);
        break;
    }
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct tcp_conn *c = arg;
    if (c->state == HANDSHAKE) {
        handshake_failed(c, WG_C_TLS_FAIL_TIMEOUT);
        return;
    }
    if (c->state != RELAY) {
        attempt_failed(c, 0);           /* connect (or upstream TLS) timed out */
        return;
    }
    uint64_t now = wg_now_ms(), idle = c->idle_timeout_ms;
    if (now - c->last_active_ms >= idle) {
        wg_stats_add(c->w->stats, WG_C_IDLE_TIMEOUTS, 1);
        c->end_reason = "idle_timeout";
        conn_close(c);
        return;
    }
    arm_timer(c, idle - (now - c->last_active_ms));
}

/* ---- entry point ---- */

/* hash_key client_ip: the address bytes, not the port. */
static void hash_client_ip(struct wg_pick *p, const struct sockaddr *peer)
{
    if (peer->sa_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)peer;
        p->hash = wg_balance_hash_bytes(&sin->sin_addr, sizeof sin->sin_addr);
        p->has_hash = true;
    } else if (peer->sa_family == AF_INET6) {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)peer;
        const uint8_t *a = sin6->sin6_addr.s6_addr;
        bool mapped = IN6_IS_ADDR_V4MAPPED(&sin6->sin6_addr);   /* same key as plain IPv4 */
        p->hash = mapped ? wg_balance_hash_bytes(a + 12, 4) : wg_balance_hash_bytes(a, 16);
        p->has_hash = true;
    }
}

static struct tcp_conn *conn_new(struct wg_worker *w, const struct wg_listener *l, int fd,
                                 const struct sockaddr *peer)
{
    struct tcp_conn *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->magic = TCP_CONN_MAGIC;
    c->w = w;
    c->l = l;
    c->client = (struct endpoint){ .fd = fd };
    c->upstream = (struct endpoint){ .fd = -1 };
    c->up = (struct relay_dir){ .src = &c->client, .dst = &c->upstream, .pipe = { -1, -1 },
                                .counter = WG_C_BYTES_IN };
    c->down = (struct relay_dir){ .src = &c->upstream, .dst = &c->client, .pipe = { -1, -1 },
                                  .counter = WG_C_BYTES_OUT };
    c->link.force_close = force_close;
    c->link.tick = health_tick;
    c->start_ns = wg_now_ns();
    c->connect_us = -1;
    c->client.ev = event_new(w->base, fd, 0, conn_event, c);
    c->timer = evtimer_new(w->base, timer_cb, c);
    if (!c->client.ev || !c->timer) {
        if (c->client.ev)
            event_free(c->client.ev);
        if (c->timer)
            event_free(c->timer);
        free(c);
        return NULL;
    }
    wg_sockaddr_text(peer, c->peer, sizeof c->peer);
    memcpy(&c->peer_addr, peer, peer->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                                            : sizeof(struct sockaddr_in));
    return c;
}

static void tcp_accept(struct wg_worker *w, const struct wg_listener *l, int fd,
                       const struct sockaddr *peer);

/* ---- PROXY protocol from the client (listener proxy_protocol: true) ----
 * The header is taken off the socket before anything else happens; then the
 * connection starts as if just accepted from the address it names. */

#define PROXY_HEADER_TIMEOUT_MS 10000

struct proxy_wait {
    struct wg_conn_link link;
    struct wg_worker *w;
    const struct wg_listener *l;
    int fd;
    struct event *ev;
    struct sockaddr_storage peer;
};

static void proxy_wait_free(struct proxy_wait *p, bool close_fd)
{
    event_free(p->ev);
    wg_worker_conn_remove(p->w, &p->link);
    if (close_fd) {
        close(p->fd);
        wg_listener_conn_closed();
    }
    free(p);
}

static void proxy_wait_force_close(struct wg_conn_link *l)
{
    proxy_wait_free((struct proxy_wait *)((char *)l - offsetof(struct proxy_wait, link)), true);
}

static void proxy_header_cb(evutil_socket_t fd, short what, void *arg)
{
    struct proxy_wait *p = arg;
    struct wg_proxy_info pi;
    enum wg_proxy_result r = what & EV_TIMEOUT ? WG_PROXY_ERROR : wg_proxy_read(p->fd, &pi);
    if (r == WG_PROXY_AGAIN)
        return;                         /* EV_PERSIST: the timeout still runs */
    if (r == WG_PROXY_ERROR) {
        char client[64];
        wg_sockaddr_text((struct sockaddr *)&p->peer, client, sizeof client);
        wg_access_log(p->w->access_log, &(struct wg_access_entry){
            .client = client, .listener = p->l->name,
            .reason = what & EV_TIMEOUT ? "proxy_protocol_timeout" : "proxy_protocol_invalid",
            .connect_us = -1 });
        proxy_wait_free(p, true);
        return;
    }
    struct wg_worker *w = p->w;
    const struct wg_listener *l = p->l;
    struct sockaddr_storage peer = pi.local ? p->peer : pi.src;
    proxy_wait_free(p, false);
    tcp_accept(w, l, fd, (struct sockaddr *)&peer);
}

static void proxy_wait_start(struct wg_worker *w, const struct wg_listener *l, int fd,
                             const struct sockaddr *peer, socklen_t peerlen)
{
    struct proxy_wait *p = calloc(1, sizeof *p);
    struct timeval tv = tv_ms(PROXY_HEADER_TIMEOUT_MS);
    /* Edge-triggered: the header is peeked, not consumed, so a level-triggered
     * event would fire again at once for a partial header (a busy loop). */
    if (!p || !(p->ev = event_new(w->base, fd, EV_READ | EV_PERSIST | EV_ET, proxy_header_cb, p)) ||
        event_add(p->ev, &tv) < 0) {
        if (p && p->ev)
            event_free(p->ev);
        free(p);
        close(fd);
        wg_listener_conn_closed();
        return;
    }
    p->w = w;
    p->l = l;
    p->fd = fd;
    memcpy(&p->peer, peer, peerlen < sizeof p->peer ? peerlen : sizeof p->peer);
    p->link.force_close = proxy_wait_force_close;
    wg_worker_conn_add(w, &p->link);
}

static bool peer_trusted(const struct wg_config *cfg, const struct wg_listener_config *lc,
                         const struct sockaddr *peer)
{
    const struct wg_cidr_list *tl = wg_listener_trusted(cfg, lc);
    struct wg_ip ip;
    return tl->n && wg_ip_from_sockaddr(peer, &ip) && wg_cidr_match(tl, &ip);
}

void wg_tcp_proxy_accept(struct wg_worker *w, const struct wg_listener *l, int fd,
                         const struct sockaddr *peer, socklen_t peerlen)
{
    struct wg_snapshot *snap = wg_pool_current(w->pool);
    const struct wg_listener_config *lc = snap ? wg_listener_config_in(snap->config->cfg, l) : NULL;
    if (lc && lc->proxy_protocol && !peer_trusted(snap->config->cfg, lc, peer)) {
        char client[64];                /* DESIGN §10: a PROXY header only from trusted_proxies */
        wg_sockaddr_text(peer, client, sizeof client);
        wg_stats_add(w->stats, WG_C_PROXY_UNTRUSTED, 1);
        wg_access_log(w->access_log, &(struct wg_access_entry){
            .client = client, .listener = l->name, .reason = "proxy_protocol_untrusted",
            .connect_us = -1 });
        close(fd);
        wg_listener_conn_closed();
    } else if (lc && lc->proxy_protocol) {
        proxy_wait_start(w, l, fd, peer, peerlen);
    } else {
        tcp_accept(w, l, fd, peer);
    }
}

static void tcp_accept(struct wg_worker *w, const struct wg_listener *l, int fd,
                       const struct sockaddr *peer)
{
    struct wg_snapshot *snap = wg_pool_current(w->pool);
    const struct wg_config *cfg = snap ? snap->config->cfg : NULL;
    const struct wg_listener_config *lc = cfg ? wg_listener_config_in(cfg, l) : NULL;
    const struct wg_pool_service *svc = lc ? wg_snapshot_service(snap, lc->service) : NULL;
    struct tcp_conn *c = svc ? conn_new(w, l, fd, peer) : NULL;
    if (!c) {
        char client[64];
        wg_sockaddr_text(peer, client, sizeof client);
        wg_access_log(w->access_log, &(struct wg_access_entry){
            .client = client, .listener = l->name, .reason = svc ? "out_of_memory" : "no_upstream",
            .connect_us = -1 });
        wg_stats_add(w->stats, WG_C_NO_UPSTREAM, 1);
        close(fd);
        wg_listener_conn_closed();
        return;
    }
    /* The snapshot is current: its services hold a reference we can add to.
     * The service version pins its config, hence the TLS contexts below. */
    wg_pool_service_ref((struct wg_pool_service *)svc);
    c->svc = (struct wg_pool_service *)svc;
    c->idle_timeout_ms = lc->idle_timeout_ms;
    c->upstream_tls = wg_tls_set_service(svc->config->ext, svc->config->cfg, svc->cfg);
    wg_worker_conn_add(w, &c->link);
    wg_pick_init(&c->pick, svc, &w->rng, NULL);
    if (svc->cfg->balance == WG_BALANCE_HASH)   /* tcp knows only the client address */
        hash_client_ip(&c->pick, peer);
    struct wg_tls_server *tls = wg_tls_set_listener(snap->config->ext, cfg, lc);
    if (!tls) {
        start_connect(c);
        return;
    }
    c->state = HANDSHAKE;
    wg_tls_server_ref(tls);             /* its config may go while we shake hands */
    c->tls_server = tls;
    if (!(c->client.ssl = wg_tls_server_ssl(tls, fd))) {
        handshake_failed(c, WG_C_TLS_FAIL_OTHER);
        return;
    }
    arm_timer(c, lc->tls.handshake_timeout_ms);
    client_handshake(c);
}
