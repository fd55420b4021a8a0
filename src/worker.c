/* worker — see include/waygate/worker.h */
#include "waygate/worker.h"

#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "waygate/http_buf.h"
#include "waygate/listener.h"
#include "waygate/upstream_h2.h"
#include "waygate/log.h"
#include "waygate/pool.h"
#include "waygate/reclaim.h"
#include "waygate/stats.h"

#define PIPE_SIZE (256 * 1024)

struct wg_worker_msg {
    struct wg_worker_msg *next;
    struct wg_acceptor *add;            /* attach and enable like the others */
    struct wg_listener *remove;         /* drop the acceptor of this listener */
};

static void remove_acceptor(struct wg_worker *w, struct wg_listener *l)
{
    for (unsigned k = 0; k < w->n_acceptors; k++) {
        if (wg_acceptor_listener(w->acceptors[k]) != l)
            continue;
        wg_acceptor_free(w->acceptors[k]);
        w->acceptors[k] = w->acceptors[--w->n_acceptors];
        break;
    }
    atomic_fetch_add(&l->detached, 1);
}

/* Messages from the control thread (reload). */
static void worker_mailbox(struct wg_worker *w)
{
    pthread_mutex_lock(&w->mbox_lock);
    struct wg_worker_msg *m = w->mbox;
    w->mbox = NULL;
    pthread_mutex_unlock(&w->mbox_lock);
    while (m) {
        struct wg_worker_msg *next = m->next;
        if (m->add) {
            if (wg_worker_add_acceptor(w, m->add) < 0) {
                wg_error("msg=\"cannot add acceptor\" worker=%u", w->index);
                wg_acceptor_free(m->add);
            } else {
                wg_acceptor_enable(m->add, w->accepting);
            }
        }
        if (m->remove)
            remove_acceptor(w, m->remove);
        free(m);
        m = next;
    }
}

static int post(struct wg_worker *w, struct wg_acceptor *a, struct wg_listener *l)
{
    struct wg_worker_msg *m = calloc(1, sizeof *m);
    if (!m)
        return -1;
    m->add = a;
    m->remove = l;
    pthread_mutex_lock(&w->mbox_lock);
    struct wg_worker_msg **tail = &w->mbox;
    while (*tail)
        tail = &(*tail)->next;
    *tail = m;                          /* in order: a remove never overtakes an add */
    pthread_mutex_unlock(&w->mbox_lock);
    wg_worker_wake(w);
    return 0;
}

int wg_worker_post_acceptor(struct wg_worker *w, struct wg_acceptor *a) { return post(w, a, NULL); }
int wg_worker_post_remove(struct wg_worker *w, struct wg_listener *l) { return post(w, NULL, l); }

static void worker_sync(struct wg_worker *w)
{
    worker_mailbox(w);
    struct wg_snapshot *s = wg_pool_current(w->pool);
    if (s && s->generation != w->generation) {
        w->generation = s->generation;
        wg_balance_cache_sweep(&w->balance, s);
        wg_stats_add(w->stats, WG_C_SNAPSHOT_SWITCHES, 1);
    }
    bool accept = atomic_load(&w->want_accept) && !atomic_load(&w->draining);
    if (accept != w->accepting) {
        w->accepting = accept;
        for (unsigned k = 0; k < w->n_acceptors; k++)
            wg_acceptor_enable(w->acceptors[k], accept);
    }
}

static void wake_cb(evutil_socket_t fd, short what, void *arg) { worker_sync(arg); }
static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
    struct wg_worker *w = arg;
    worker_sync(w);
    uint64_t now = wg_now_ms();
    struct hp_local *loc = hp_local_peek();
    if (loc && loc->h2)
        wg_h2_pool_tick(loc->h2, now);
    for (struct wg_conn_link *l = w->conns.next, *next; l != &w->conns; l = next) {
        next = l->next;                 /* l->tick may free l */
        if (l->tick)
            l->tick(l, now);
    }
}

static void close_all(struct wg_worker *w)
{
    while (w->conns.next != &w->conns) {
        struct wg_conn_link *l = w->conns.next;
        l->force_close(l);
    }
}

static void *worker_main(void *arg)
{
    struct wg_worker *w = arg;
    w->reader = wg_reclaim_register(w->rc);
    if (!w->reader) {
        wg_error("msg=\"too many reclaim readers\" worker=%u", w->index);
        return NULL;
    }
    worker_sync(w);
    while (!atomic_load(&w->stop)) {
        if (atomic_load(&w->draining) && w->n_conns == 0)
            break;
        event_base_loop(w->base, EVLOOP_ONCE);
        wg_reclaim_quiescent(w->reader);
    }
    worker_mailbox(w);                  /* let go of removed listeners (begin_stop) */
    close_all(w);
    wg_balance_cache_free(&w->balance);
    wg_reclaim_unregister(w->rc, w->reader);
    return NULL;
}

struct wg_worker *wg_worker_new(unsigned index, struct wg_pool *pool, struct wg_reclaim *rc)
{
    struct wg_worker *w = calloc(1, sizeof *w);
    if (!w)
        return NULL;
    w->index = index;
    w->pool = pool;
    w->rc = rc;
    w->conns.next = w->conns.prev = &w->conns;
    pthread_mutex_init(&w->mbox_lock, NULL);
    wg_rng_seed(&w->rng, wg_now_ns() ^ ((uint64_t)index << 48) ^ (uint64_t)getpid());
    /* No EVENT_BASE_FLAG_PRECISE_TIMER: with it, libevent's epoll backend
     * arms a timerfd (timerfd_settime) before every epoll_wait, one more
     * syscall per loop iteration (5 per TLS handshake); without it the
     * timeout is epoll_wait's own, in milliseconds, as every deadline of
     * the data path is (CLOCK_MONOTONIC either way: the coarse clock ticks
     * 4 ms here, too slow for libevent to pick it). */
    w->base = event_base_new();
    if (!w->base)
        goto fail;
    w->stats = wg_stats_block_new();
    w->access_log = wg_worker_log_new();
    w->wake_ev = event_new(w->base, -1, 0, wake_cb, w);
    w->tick_ev = event_new(w->base, -1, EV_PERSIST, tick_cb, w);
    struct timeval one_second = { 1, 0 };
    if (!w->stats || !w->access_log || !w->wake_ev || !w->tick_ev ||
        event_add(w->tick_ev, &one_second) < 0)
        goto fail;
    return w;
fail:
    wg_worker_free(w);
    return NULL;
}

int wg_worker_add_acceptor(struct wg_worker *w, struct wg_acceptor *a)
{
    struct wg_acceptor **v = realloc(w->acceptors, (w->n_acceptors + 1) * sizeof *v);
    if (!v)
        return -1;
    w->acceptors = v;
    if (wg_acceptor_attach(a, w) < 0)
        return -1;
    w->acceptors[w->n_acceptors++] = a;
    return 0;
}

int wg_worker_start(struct wg_worker *w)
{
    /* Signals belong to the control thread: block them all here. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int rc = pthread_create(&w->thread, NULL, worker_main, w);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        wg_error("msg=\"cannot start worker\" worker=%u error=\"%s\"", w->index, strerror(rc));
        return -1;
    }
    w->started = true;
    return 0;
}

void wg_worker_wake(struct wg_worker *w) { event_active(w->wake_ev, 0, 0); }

void wg_worker_set_accepting(struct wg_worker *w, bool on)
{
    atomic_store(&w->want_accept, on);
    wg_worker_wake(w);
}

void wg_worker_drain(struct wg_worker *w)
{
    atomic_store(&w->draining, 1);
    wg_worker_wake(w);
}

void wg_worker_stop(struct wg_worker *w)
{
    atomic_store(&w->stop, 1);
    event_base_loopbreak(w->base);
    wg_worker_wake(w);
}

void wg_worker_join(struct wg_worker *w)
{
    if (w->started) {
        pthread_join(w->thread, NULL);
        w->started = false;
    }
}

void wg_worker_free(struct wg_worker *w)
{
    if (!w)
        return;
    worker_mailbox(w);                  /* undelivered messages: their acceptors too */
    for (unsigned k = 0; k < w->n_acceptors; k++)
        wg_acceptor_free(w->acceptors[k]);
    free(w->acceptors);
    pthread_mutex_destroy(&w->mbox_lock);
    wg_worker_log_free(w->access_log);
    for (unsigned k = 0; k < w->pipes.n; k++) {
        close(w->pipes.fds[k][0]);
        close(w->pipes.fds[k][1]);
    }
    if (w->wake_ev)
        event_free(w->wake_ev);
    if (w->tick_ev)
        event_free(w->tick_ev);
    if (w->base)
        event_base_free(w->base);
    free(w);
}

void wg_worker_conn_add(struct wg_worker *w, struct wg_conn_link *l)
{
    l->next = w->conns.next;
    l->prev = &w->conns;
    w->conns.next->prev = l;
    w->conns.next = l;
    w->n_conns++;
}

void wg_worker_conn_remove(struct wg_worker *w, struct wg_conn_link *l)
{
    l->prev->next = l->next;
    l->next->prev = l->prev;
    l->next = l->prev = l;
    w->n_conns--;
    if (w->n_conns == 0 && atomic_load(&w->draining))
        event_base_loopbreak(w->base);
}

int wg_worker_pipe_get(struct wg_worker *w, int fds[2])
{
    if (w->pipes.n) {
        w->pipes.n--;
        fds[0] = w->pipes.fds[w->pipes.n][0];
        fds[1] = w->pipes.fds[w->pipes.n][1];
        return 0;
    }
    if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) < 0)
        return -1;
    fcntl(fds[1], F_SETPIPE_SZ, PIPE_SIZE);     /* best effort: default 64 KiB */
    return 0;
}

void wg_worker_pipe_flush(struct wg_worker *w)
{
    while (w->pipes.n) {
        w->pipes.n--;
        close(w->pipes.fds[w->pipes.n][0]);
        close(w->pipes.fds[w->pipes.n][1]);
    }
}

void wg_worker_pipe_put(struct wg_worker *w, int fds[2])
{
    if (w->pipes.n < WG_PIPE_CACHE) {
        w->pipes.fds[w->pipes.n][0] = fds[0];
        w->pipes.fds[w->pipes.n][1] = fds[1];
        w->pipes.n++;
    } else {
        close(fds[0]);
        close(fds[1]);
    }
    fds[0] = fds[1] = -1;
}
