/* worker — one data-plane thread with its own event_base.
 *
 * Promises:
 *  - A worker runs its loop one iteration at a time and reports a quiescent
 *    point (reclaim.h) after each; the control thread wakes it after every
 *    publish (wg_worker_wake), so retired snapshots are freed within one
 *    loop iteration, and at worst after the 1 s housekeeping tick.
 *  - A worker never blocks and never takes a lock on the request path; all
 *    its connections live on its own event_base.
 *  - Control -> worker requests (start accepting, drain, stop) are flags
 *    plus a wake; the worker acts on them in its own thread.
 *  - Accepting (wg_acceptor_*, src/worker_accept.c) never spins: on
 *    EMFILE/ENFILE/ENOBUFS/ENOMEM the acceptor pauses for 100 ms and counts
 *    WG_C_ACCEPT_PAUSED. Connections over the global max_connections are
 *    accepted and closed at once (counted WG_C_CONN_REJECTED_LIMIT).
 *    Accepted sockets are non-blocking, close-on-exec, TCP_NODELAY, and are
 *    handed to the listener's on_accept on the accepting worker.
 */
#ifndef WAYGATE_WORKER_H
#define WAYGATE_WORKER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "waygate/balance.h"

struct event;
struct event_base;
struct wg_pool;
struct wg_reclaim;
struct wg_reclaim_reader;
struct wg_stats_block;
struct wg_worker_log;
struct wg_acceptor;

/* A connection a worker owns; linked so that drain and forced stop can
 * reach every one of them. */
struct wg_conn_link {
    struct wg_conn_link *prev, *next;
    /* Close at once (forced stop); must unlink and free the connection. */
    void (*force_close)(struct wg_conn_link *l);
    /* Optional (NULL: none): called on the 1 s housekeeping tick with the
     * monotonic time, e.g. to apply drain_timeout and on_unhealthy (health.h);
     * it may close (unlink and free) the connection. */
    void (*tick)(struct wg_conn_link *l, uint64_t now_ms);
};

/* Spare pipes for splice(2), so idle connections hold none. */
#define WG_PIPE_CACHE 8
struct wg_pipe_cache {
    int fds[WG_PIPE_CACHE][2];
    unsigned n;
};

struct wg_worker_msg;
struct wg_listener;

struct wg_worker {
    unsigned index;
    pthread_t thread;
    bool started;
    struct event_base *base;
    struct event *wake_ev;
    struct event *tick_ev;
    struct wg_pool *pool;
    struct wg_reclaim *rc;
    struct wg_reclaim_reader *reader;
    struct wg_stats_block *stats;
    struct wg_worker_log *access_log;   /* this worker's access log ring (log.h) */
    struct wg_balance_cache balance;
    struct wg_rng rng;
    struct wg_pipe_cache pipes;
    uint64_t generation;                /* last snapshot generation seen */
    struct wg_acceptor **acceptors;
    unsigned n_acceptors;
    bool accepting;                     /* worker-local view of want_accept */
    struct wg_conn_link conns;          /* list head */
    unsigned n_conns;
    pthread_mutex_t mbox_lock;          /* control -> worker messages (not the data path) */
    struct wg_worker_msg *mbox;
    _Atomic int want_accept;
    _Atomic int draining;               /* stop accepting, exit when idle */
    _Atomic int stop;                   /* close everything and exit */
};

/* One worker's accept state for one listener (listener.h). */
struct wg_acceptor *wg_acceptor_new(struct wg_listener *l, int fd);
struct wg_listener *wg_acceptor_listener(const struct wg_acceptor *a);
/* Worker thread: attach to the worker's base (not accepting yet). */
int wg_acceptor_attach(struct wg_acceptor *a, struct wg_worker *w);
void wg_acceptor_enable(struct wg_acceptor *a, bool on);
void wg_acceptor_free(struct wg_acceptor *a);

struct wg_worker *wg_worker_new(unsigned index, struct wg_pool *pool, struct wg_reclaim *rc);
/* Before start: take one listening socket (SO_REUSEPORT copy) to accept on. */
int wg_worker_add_acceptor(struct wg_worker *w, struct wg_acceptor *a);
int wg_worker_start(struct wg_worker *w);
/* Any thread. */
void wg_worker_wake(struct wg_worker *w);
void wg_worker_set_accepting(struct wg_worker *w, bool on);
void wg_worker_drain(struct wg_worker *w);
void wg_worker_stop(struct wg_worker *w);
/* Control thread, while running (reload): hand a new acceptor over; or make
 * the worker drop its acceptor of `l` and then increment l->detached. */
int wg_worker_post_acceptor(struct wg_worker *w, struct wg_acceptor *a);
int wg_worker_post_remove(struct wg_worker *w, struct wg_listener *l);
/* Control thread: wait for the thread, then free everything it owned. */
void wg_worker_join(struct wg_worker *w);
void wg_worker_free(struct wg_worker *w);

/* --- worker thread only --- */
void wg_worker_conn_add(struct wg_worker *w, struct wg_conn_link *l);
void wg_worker_conn_remove(struct wg_worker *w, struct wg_conn_link *l);
/* A pipe pair for splice, from the cache or new; -1 on failure. */
int wg_worker_pipe_get(struct wg_worker *w, int fds[2]);
/* Give back an EMPTY pipe. */
void wg_worker_pipe_put(struct wg_worker *w, int fds[2]);
/* Close the cached pipes (descriptors are short: give them to connections). */
void wg_worker_pipe_flush(struct wg_worker *w);

#endif
