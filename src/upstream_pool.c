/* upstream_pool — see include/waygate/upstream_pool.h */
#include "waygate/upstream_pool.h"

#include "waygate/health.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUCKETS 256                     /* power of two */
#define SWEEP_MS 1000

/* The idle connections of one instance on this worker. */
struct wg_upstream_idle {
    struct wg_instance *inst;
    struct wg_upconn *head, *tail;      /* most recent first */
    unsigned n;
    struct wg_upstream_idle *next;      /* bucket chain */
};

struct wg_upstream_pool {
    struct event_base *base;
    struct event sweep;
    bool sweeping;
    unsigned idle;
    struct wg_upstream_idle *buckets[BUCKETS];
};

static size_t bucket_of(const struct wg_instance *i)
{
    uintptr_t v = (uintptr_t)i;
    return (size_t)((v >> 4) ^ (v >> 12)) & (BUCKETS - 1);
}

static struct wg_upstream_idle **list_slot(struct wg_upstream_pool *p, const struct wg_instance *i)
{
    struct wg_upstream_idle **s = &p->buckets[bucket_of(i)];
    while (*s && (*s)->inst != i)
        s = &(*s)->next;
    return s;
}

/* ---- idle list membership ---- */

static void idle_unlink(struct wg_upstream_pool *p, struct wg_upconn *u)
{
    struct wg_upstream_idle *l = u->idle;
    if (u->prev)
        u->prev->next = u->next;
    else
        l->head = u->next;
    if (u->next)
        u->next->prev = u->prev;
    else
        l->tail = u->prev;
    u->prev = u->next = NULL;
    u->idle = NULL;
    p->idle--;
    if (--l->n == 0) {
        struct wg_upstream_idle **s = list_slot(p, l->inst);
        *s = l->next;
        free(l);
    }
}

static void upconn_free(struct wg_upconn *u)
{
    event_del(&u->ev);
    if (u->ssl) {
        wg_tls_close(u->ssl);
        SSL_free(u->ssl);
    }
    close(u->fd);
    wg_instance_unref(u->inst);
    free(u);
}

void wg_upconn_close(struct wg_upconn *u)
{
    if (u->idle)
        idle_unlink(u->pool, u);
    upconn_free(u);
}

/* ---- events ---- */

static void upconn_event(evutil_socket_t fd, short what, void *arg)
{
    struct wg_upconn *u = arg;
    if (what & EV_READ) {
        u->readable = true;
        if (u->write_wants_read)        /* TLS: a write waited for this edge */
            u->writable = true;
        u->write_wants_read = false;
    }
    if (what & EV_WRITE) {
        u->writable = true;
        if (u->read_wants_write)
            u->readable = true;
        u->read_wants_write = false;
    }
    if (what & EV_CLOSED)
        u->readable = u->hup = true;
    if (u->owner) {
        u->on_event(u, what, u->owner);
        return;
    }
    /* Idle: the peer closed, reset, or sent bytes nobody asked for. */
    if (what & (EV_READ | EV_CLOSED))
        wg_upconn_close(u);
}

static void sweep_arm(struct wg_upstream_pool *p)
{
    if (p->sweeping || p->idle == 0)
        return;
    struct timeval tv = { SWEEP_MS / 1000, (SWEEP_MS % 1000) * 1000 };
    p->sweeping = event_add(&p->sweep, &tv) == 0;
}

static bool reusable(const struct wg_upconn *u, uint64_t now)
{
    return wg_health_conn_reusable(u->inst, u->health_gen) && now < u->idle_until_ms;
}

/* Nothing came from the peer since the connection was parked: no FIN, no
 * reset, no stray byte. The event state says so for what epoll reported;
 * one MSG_PEEK catches what arrived since (a FIN in flight while the loop
 * served other events), so that a request is not sent into a dead
 * connection and then unable to be replayed (DESIGN §6). */
static bool peer_quiet(const struct wg_upconn *u)
{
    char b;
    if (u->hup)
        return false;
    ssize_t n = recv(u->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

static void sweep_cb(evutil_socket_t fd, short what, void *arg)
{
    struct wg_upstream_pool *p = arg;
    uint64_t now = wg_now_ms();
    p->sweeping = false;
    for (size_t b = 0; b < BUCKETS; b++) {
        struct wg_upstream_idle *l = p->buckets[b];
        while (l) {
            struct wg_upstream_idle *next = l->next;    /* l may be freed below */
            struct wg_upconn *u = l->tail, *prev;
            for (; u; u = prev) {
                prev = u->prev;
                if (!reusable(u, now))
                    wg_upconn_close(u);
            }
            l = next;
        }
    }
    sweep_arm(p);
}

/* ---- pool ---- */

struct wg_upstream_pool *wg_upstream_pool_new(struct event_base *base)
{
    struct wg_upstream_pool *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->base = base;
    if (evtimer_assign(&p->sweep, base, sweep_cb, p) < 0) {
        free(p);
        return NULL;
    }
    return p;
}

void wg_upstream_pool_free(struct wg_upstream_pool *p)
{
    if (!p)
        return;
    for (size_t b = 0; b < BUCKETS; b++)
        while (p->buckets[b])
            wg_upconn_close(p->buckets[b]->head);
    event_del(&p->sweep);
    free(p);
}

unsigned wg_upstream_pool_idle(const struct wg_upstream_pool *p) { return p->idle; }

int wg_upconn_open(struct wg_upstream_pool *p, struct wg_instance *inst, void *owner,
                   wg_upconn_fn on_event, struct wg_upconn **out)
{
    int err = ENOMEM, one = 1;
    struct wg_upconn *u = calloc(1, sizeof *u);
    if (!u)
        return -err;
    struct sockaddr_storage ss;
    socklen_t sslen = wg_instance_sockaddr(inst, &ss);
    u->fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (u->fd < 0) {
        err = errno;
        goto fail;
    }
    setsockopt(u->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(u->fd, (const struct sockaddr *)&ss, sslen) < 0) {
        if (errno != EINPROGRESS) {
            err = errno;
            goto fail;
        }
        u->connecting = true;
    }
    if (event_assign(&u->ev, p->base, u->fd, EV_READ | EV_WRITE | EV_CLOSED | EV_ET | EV_PERSIST,
                     upconn_event, u) < 0 || event_add(&u->ev, NULL) < 0)
        goto fail;
    wg_instance_ref(inst);
    u->inst = inst;
    u->pool = p;
    u->owner = owner;
    u->on_event = on_event;
    u->requests = 1;
    *out = u;
    return 0;
fail:
    if (u->fd >= 0)
        close(u->fd);
    free(u);
    return -err;
}

int wg_upconn_connect_result(struct wg_upconn *u)
{
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(u->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
        err = errno;
    if (err == 0)
        u->connecting = false;
    return err;
}

struct wg_upconn *wg_upstream_pool_get(struct wg_upstream_pool *p, struct wg_instance *inst,
                                       void *owner, wg_upconn_fn on_event, bool peek)
{
    struct wg_upstream_idle *l = *list_slot(p, inst);
    uint64_t now = l ? wg_now_ms() : 0;
    while (l) {
        struct wg_upconn *u = l->head;
        bool last = l->n == 1;
        idle_unlink(p, u);              /* may free l when it was the last */
        if (reusable(u, now) && !u->hup && (!peek || peer_quiet(u))) {
            u->owner = owner;
            u->on_event = on_event;
            u->requests++;
            return u;
        }
        upconn_free(u);
        if (last)
            break;
    }
    return NULL;
}

void wg_upstream_pool_put(struct wg_upconn *u, unsigned max_idle, uint64_t idle_timeout_ms)
{
    struct wg_upstream_pool *p = u->pool;
    struct wg_upstream_idle **s = list_slot(p, u->inst), *l = *s;
    if (max_idle == 0 || idle_timeout_ms == 0 || u->hup ||
        wg_instance_health(u->inst) != WG_HEALTH_HEALTHY)
        goto close;
    if (!l) {
        if (!(l = calloc(1, sizeof *l)))
            goto close;
        l->inst = u->inst;
        *s = l;
    }
    while (l->n >= max_idle) {          /* the oldest go first */
        bool last = l->n == 1;
        wg_upconn_close(l->tail);
        if (last) {                     /* l is gone: start a new list */
            if (!(l = calloc(1, sizeof *l)))
                goto close;
            l->inst = u->inst;
            *list_slot(p, u->inst) = l;
        }
    }
    u->owner = NULL;
    u->on_event = NULL;
    u->idle_until_ms = wg_now_ms() + idle_timeout_ms;
    u->health_gen = wg_health_conn_generation(u->inst);
    u->idle = l;
    u->prev = NULL;
    u->next = l->head;
    if (l->head)
        l->head->prev = u;
    else
        l->tail = u;
    l->head = u;
    l->n++;
    p->idle++;
    sweep_arm(p);
    return;
close:
    upconn_free(u);
}
