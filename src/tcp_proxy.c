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
#include "waygate/listener.h"
#include "waygate/log.h"
#include "waygate/pool.h"
#include "waygate/stats.h"
#include "waygate/worker.h"

#define TCP_CONN_MAGIC 0x7c9c0e11U
#define SPLICE_CHUNK (256 * 1024)
#define PUMP_BUDGET (4 * 1024 * 1024)   /* per callback, for fairness */

/* One direction of the relay: src -> pipe -> dst. */
struct relay_dir {
    int src, dst;
    struct event *rd;               /* src readable */
    struct event *wr;               /* dst writable */
    int pipe[2];                    /* -1 when none held */
    size_t pending;                 /* bytes in the pipe */
    bool eof;                       /* src sent FIN */
    bool shut;                      /* FIN forwarded to dst */
    bool reading, writing;          /* event registered */
    enum wg_counter counter;        /* WG_C_BYTES_IN or WG_C_BYTES_OUT */
};

struct tcp_conn {
    uint32_t magic;
    struct wg_conn_link link;
    struct wg_worker *w;
    const struct wg_listener *l;
    struct wg_pool_service *svc;    /* one reference: settings for our lifetime */
    struct wg_pick pick;            /* instances tried so far */
    struct wg_instance *inst;       /* one reference + one `active` while set */
    int cfd, ufd;
    struct relay_dir up;            /* client -> upstream */
    struct relay_dir down;          /* upstream -> client */
    struct event *timer;            /* idle timeout */
    uint64_t idle_timeout_ms;       /* the listener's, when accepted */
    uint64_t last_active_ms;
    unsigned attempts;
    bool connected;
    char peer[64];
};

static void start_connect(struct tcp_conn *c);

/* ---- teardown ---- */

static void dir_release(struct tcp_conn *c, struct relay_dir *d)
{
    if (d->rd)
        event_free(d->rd);
    if (d->wr)
        event_free(d->wr);
    d->rd = d->wr = NULL;
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

static void release_instance(struct tcp_conn *c)
{
    if (!c->inst)
        return;
    atomic_fetch_sub_explicit(&c->inst->active, 1, memory_order_relaxed);
    wg_instance_unref(c->inst);
    c->inst = NULL;
}

static void conn_close(struct tcp_conn *c)
{
    dir_release(c, &c->up);
    dir_release(c, &c->down);
    if (c->timer)
        event_free(c->timer);
    if (c->cfd >= 0)
        close(c->cfd);
    if (c->ufd >= 0)
        close(c->ufd);
    release_instance(c);
    wg_pool_service_unref(c->svc);
    wg_worker_conn_remove(c->w, &c->link);
    wg_listener_conn_closed();
    c->magic = 0;
    free(c);
}

static void force_close(struct wg_conn_link *l)
{
    conn_close((struct tcp_conn *)((char *)l - offsetof(struct tcp_conn, link)));
}

/* ---- relay ---- */

static void dir_interest(struct relay_dir *d)
{
    bool want_read = !d->eof && d->pending == 0;
    bool want_write = d->pending > 0;
    if (want_read != d->reading) {
        d->reading = want_read;
        want_read ? event_add(d->rd, NULL) : event_del(d->rd);
    }
    if (want_write != d->writing) {
        d->writing = want_write;
        want_write ? event_add(d->wr, NULL) : event_del(d->wr);
    }
}

static bool transient(void) { return errno == EAGAIN || errno == EINTR; }

/* Move what can be moved without blocking. Returns -1 when the connection
 * must close (an error on either socket). */
static int pump(struct tcp_conn *c, struct relay_dir *d)
{
    size_t budget = PUMP_BUDGET;
    bool progress = true;
    while (progress && budget) {
        progress = false;
        if (!d->eof) {
            if (d->pipe[0] < 0 && wg_worker_pipe_get(c->w, d->pipe) < 0)
                return -1;
            ssize_t n = splice(d->src, NULL, d->pipe[1], NULL, SPLICE_CHUNK,
                               SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
            if (n > 0) {
                d->pending += (size_t)n;
                progress = true;
            } else if (n == 0) {
                d->eof = true;
            } else if (!transient()) {
                return -1;
            }
        }
        if (d->pending) {
            ssize_t n = splice(d->pipe[0], NULL, d->dst, NULL, d->pending,
                               SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
            if (n > 0) {
                d->pending -= (size_t)n;
                budget = (size_t)n >= budget ? 0 : budget - (size_t)n;
                wg_stats_add(c->w->stats, d->counter, (uint64_t)n);
                progress = true;
            } else if (n < 0 && !transient()) {
                return -1;
            } else {
                break;                  /* dst is full: wait for it */
            }
        }
    }
    if (d->pending == 0 && d->pipe[0] >= 0)
        wg_worker_pipe_put(c->w, d->pipe);      /* idle connections hold no pipe */
    if (d->eof && d->pending == 0 && !d->shut) {
        d->shut = true;
        shutdown(d->dst, SHUT_WR);              /* forward the half-close */
    }
    dir_interest(d);
    c->last_active_ms = wg_now_ms();
    return 0;
}

static void relay(struct tcp_conn *c, struct relay_dir *d)
{
    if (pump(c, d) < 0 || (c->up.shut && c->down.shut))
        conn_close(c);
}

/* Client readable or upstream writable. */
static void up_ready(evutil_socket_t fd, short what, void *arg)
{
    struct tcp_conn *c = arg;
    relay(c, &c->up);
}

/* Upstream readable or client writable. */
static void down_ready(evutil_socket_t fd, short what, void *arg)
{
    struct tcp_conn *c = arg;
    relay(c, &c->down);
}

static void idle_cb(evutil_socket_t fd, short what, void *arg)
{
    struct tcp_conn *c = arg;
    uint64_t now = wg_now_ms(), idle = c->idle_timeout_ms;
    if (now - c->last_active_ms >= idle) {
        wg_stats_add(c->w->stats, WG_C_IDLE_TIMEOUTS, 1);
        conn_close(c);
        return;
    }
    uint64_t left = idle - (now - c->last_active_ms);
    struct timeval tv = { (time_t)(left / 1000), (suseconds_t)(left % 1000) * 1000 };
    event_add(c->timer, &tv);
}

/* ---- connect and retry ---- */

static void attempt_failed(struct tcp_conn *c, int err)
{
    struct wg_instance *i = c->inst;
    wg_stats_add(c->w->stats, WG_C_CONNECT_ERRORS, 1);
    atomic_fetch_add_explicit(&i->connect_failures, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&i->consecutive_failures, 1, memory_order_relaxed);
    wg_debug("msg=\"upstream connect failed\" listener=%s service=%s upstream=%s address=%s "
             "error=\"%s\"", c->l->name, c->svc->name, i->id, i->addr_text,
             err ? strerror(err) : "timeout");
    if (c->up.wr) {
        event_free(c->up.wr);
        c->up.wr = NULL;
    }
    close(c->ufd);
    c->ufd = -1;
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

static void connected(struct tcp_conn *c)
{
    struct event_base *base = c->w->base;
    c->connected = true;
    atomic_store_explicit(&c->inst->consecutive_failures, 0, memory_order_relaxed);
    event_free(c->up.wr);
    c->up = (struct relay_dir){ .src = c->cfd, .dst = c->ufd, .pipe = { -1, -1 },
                                .counter = WG_C_BYTES_IN };
    c->down = (struct relay_dir){ .src = c->ufd, .dst = c->cfd, .pipe = { -1, -1 },
                                  .counter = WG_C_BYTES_OUT };
    c->up.rd = event_new(base, c->cfd, EV_READ | EV_PERSIST, up_ready, c);
    c->up.wr = event_new(base, c->ufd, EV_WRITE | EV_PERSIST, up_ready, c);
    c->down.rd = event_new(base, c->ufd, EV_READ | EV_PERSIST, down_ready, c);
    c->down.wr = event_new(base, c->cfd, EV_WRITE | EV_PERSIST, down_ready, c);
    c->timer = evtimer_new(base, idle_cb, c);
    if (!c->up.rd || !c->up.wr || !c->down.rd || !c->down.wr || !c->timer) {
        conn_close(c);
        return;
    }
    c->last_active_ms = wg_now_ms();
    uint64_t idle = c->idle_timeout_ms;
    struct timeval tv = { (time_t)(idle / 1000), (suseconds_t)(idle % 1000) * 1000 };
    event_add(c->timer, &tv);
    dir_interest(&c->down);
    /* The client may have sent bytes (or FIN) while we were connecting. */
    relay(c, &c->up);
}

static void connect_done(evutil_socket_t fd, short what, void *arg)
{
    struct tcp_conn *c = arg;
    int err = 0;
    socklen_t len = sizeof err;
    if (what & EV_TIMEOUT)
        err = ETIMEDOUT;
    else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
        err = errno;
    if (err)
        attempt_failed(c, err == ETIMEDOUT ? 0 : err);
    else
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
        conn_close(c);
        return;
    }
    struct wg_instance *i = m->inst;
    wg_instance_ref(i);
    atomic_fetch_add_explicit(&i->active, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&i->requests_total, 1, memory_order_relaxed);
    c->inst = i;
    c->attempts++;
    c->ufd = socket(i->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->ufd < 0) {
        /* Out of descriptors: not the instance's fault, nothing to retry. */
        wg_warn("msg=\"cannot create upstream socket\" error=\"%s\"", strerror(errno));
        conn_close(c);
        return;
    }
    int one = 1;
    setsockopt(c->ufd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(c->ufd, (struct sockaddr *)&i->addr, i->addrlen) == 0) {
        c->up.wr = event_new(c->w->base, c->ufd, EV_WRITE, connect_done, c);
        connected(c);
        return;
    }
    if (errno != EINPROGRESS) {
        attempt_failed(c, errno);
        return;
    }
    uint64_t t = c->svc->cfg->connect_timeout_ms;
    struct timeval tv = { (time_t)(t / 1000), (suseconds_t)(t % 1000) * 1000 };
    c->up.wr = event_new(c->w->base, c->ufd, EV_WRITE, connect_done, c);
    if (!c->up.wr || event_add(c->up.wr, &tv) < 0)
        attempt_failed(c, ENOMEM);
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
        p->hash = wg_balance_hash_bytes(&sin6->sin6_addr, sizeof sin6->sin6_addr);
        p->has_hash = true;
    }
}

void wg_tcp_proxy_accept(struct wg_worker *w, const struct wg_listener *l, int fd,
                         const struct sockaddr *peer, socklen_t peerlen)
{
    struct wg_snapshot *snap = wg_pool_current(w->pool);
    const struct wg_listener_config *lc = snap ? wg_listener_config_in(snap->config->cfg, l) : NULL;
    const struct wg_pool_service *svc = lc ? wg_snapshot_service(snap, lc->service) : NULL;
    struct tcp_conn *c = svc ? calloc(1, sizeof *c) : NULL;
    if (!c) {
        wg_stats_add(w->stats, WG_C_NO_UPSTREAM, 1);
        close(fd);
        wg_listener_conn_closed();
        return;
    }
    c->magic = TCP_CONN_MAGIC;
    c->w = w;
    c->l = l;
    c->cfd = fd;
    c->ufd = -1;
    c->idle_timeout_ms = lc->idle_timeout_ms;
    c->up.pipe[0] = c->up.pipe[1] = c->down.pipe[0] = c->down.pipe[1] = -1;
    c->link.force_close = force_close;
    wg_sockaddr_text(peer, c->peer, sizeof c->peer);
    /* The snapshot is current: its services hold a reference we can add to. */
    wg_pool_service_ref((struct wg_pool_service *)svc);
    c->svc = (struct wg_pool_service *)svc;
    wg_worker_conn_add(w, &c->link);
    wg_pick_init(&c->pick, svc, &w->rng, NULL);
    if (svc->cfg->balance == WG_BALANCE_HASH)   /* tcp knows only the client address */
        hash_client_ip(&c->pick, peer);
    start_connect(c);
}
