/* worker_accept — the worker's accept loop on its copy of each listener's
 * socket (worker.h: wg_acceptor_*). */
#include "waygate/worker.h"

#include <errno.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "waygate/listener.h"
#include "waygate/log.h"
#include "waygate/pool.h"
#include "waygate/stats.h"

#define ACCEPT_BATCH 64
#define PAUSE_MS 100

struct wg_acceptor {
    struct wg_listener *l;
    struct wg_worker *w;
    int fd;
    struct event *ev;
    struct event *pause_ev;
    bool enabled;
    bool paused;
};

static void update_event(struct wg_acceptor *a)
{
    if (a->enabled && !a->paused)
        event_add(a->ev, NULL);
    else
        event_del(a->ev);
}

static void pause_done(evutil_socket_t fd, short what, void *arg)
{
    struct wg_acceptor *a = arg;
    a->paused = false;
    update_event(a);
}

static void pause_accepting(struct wg_acceptor *a, int err)
{
    wg_stats_add(a->w->stats, WG_C_ACCEPT_PAUSED, 1);
    wg_worker_pipe_flush(a->w);
    wg_warn("msg=\"accept paused\" listener=%s error=\"%s\" pause_ms=%d", a->l->name,
            strerror(err), PAUSE_MS);
    a->paused = true;
    update_event(a);
    struct timeval tv = { 0, PAUSE_MS * 1000 };
    event_add(a->pause_ev, &tv);
}

static void accept_cb(evutil_socket_t lfd, short what, void *arg)
{
    struct wg_acceptor *a = arg;
    for (int k = 0; k < ACCEPT_BATCH; k++) {
        struct sockaddr_storage peer;
        socklen_t len = sizeof peer;
        int fd = accept4(lfd, (struct sockaddr *)&peer, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)
                pause_accepting(a, errno);
            else if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
                wg_warn("msg=\"accept failed\" listener=%s error=\"%s\"", a->l->name, strerror(errno));
            return;
        }
        wg_stats_add(a->w->stats, WG_C_CONN_ACCEPTED, 1);
        atomic_fetch_add_explicit(&a->l->accepted, 1, memory_order_relaxed);
        /* The global limit is reloadable: the current config's, not the one
         * this listener was bound with. */
        struct wg_snapshot *snap = wg_pool_current(a->w->pool);
        uint64_t max = snap ? snap->config->cfg->max_connections : a->l->max_connections;
        uint64_t open = atomic_fetch_add(&wg_stats_open_connections, 1);
        if (max && open >= max) {
            wg_stats_add(a->w->stats, WG_C_CONN_REJECTED_LIMIT, 1);
            atomic_fetch_add_explicit(&a->l->rejected, 1, memory_order_relaxed);
            atomic_fetch_sub(&wg_stats_open_connections, 1);
            close(fd);
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        a->l->on_accept(a->w, a->l, fd, (struct sockaddr *)&peer, len);
    }
}

struct wg_acceptor *wg_acceptor_new(struct wg_listener *l, int fd)
{
    struct wg_acceptor *a = calloc(1, sizeof *a);
    if (!a)
        return NULL;
    a->l = l;
    a->fd = fd;
    return a;
}

struct wg_listener *wg_acceptor_listener(const struct wg_acceptor *a) { return a->l; }

int wg_acceptor_attach(struct wg_acceptor *a, struct wg_worker *w)
{
    a->w = w;
    a->ev = event_new(w->base, a->fd, EV_READ | EV_PERSIST, accept_cb, a);
    a->pause_ev = evtimer_new(w->base, pause_done, a);
    return a->ev && a->pause_ev ? 0 : -1;
}

void wg_acceptor_enable(struct wg_acceptor *a, bool on)
{
    a->enabled = on;
    if (a->ev)
        update_event(a);
}

void wg_acceptor_free(struct wg_acceptor *a)
{
    if (!a)
        return;
    if (a->ev)
        event_free(a->ev);
    if (a->pause_ev)
        event_free(a->pause_ev);
    free(a);
}
