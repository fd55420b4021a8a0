/* upstream_pool — per-worker, per-instance keep-alive connections to upstreams.
 *
 * An upstream connection (struct wg_upconn) is one TCP connection to one
 * instance. Its descriptor is registered once, edge-triggered, for reading
 * and writing, for its whole life: moving it between a request and the idle
 * pool changes only its `owner`, never the epoll set.
 *
 * Promises:
 *  - Worker thread only; no lock. One wg_upstream_pool per worker.
 *  - An idle connection holds no buffer: only its descriptor, its event and
 *    a reference on its instance.
 *  - At most max_idle idle connections per instance per worker (the
 *    service's upstream.max_idle at the time the connection is parked); an
 *    idle connection is closed after upstream.idle_timeout (checked by a
 *    sweep at most every second, so within a second of it), when its
 *    instance is no longer healthy (draining, unhealthy, ejected: checked on
 *    reuse and by the sweep, with health.h's wg_health_conn_reusable: also
 *    when it went down and came back meanwhile), and when its peer closes
 *    it or sends anything while idle (seen as soon as the event arrives).
 *  - A connection whose peer's FIN or reset was already seen (u->hup) is
 *    never parked; taking one for a caller that asks (`peek`) checks with
 *    one recv(MSG_PEEK) that nothing arrived since it was parked (a FIN
 *    that epoll has not reported yet).
 *  - wg_upstream_pool_get() returns the most recently parked connection
 *    (warm, least likely to have been closed by the peer's own timer).
 *  - A connection handed out may still turn out stale (the peer's FIN was
 *    in flight): the caller treats EOF or a reset before the first response
 *    byte on a reused connection as a free retry (DESIGN §6).
 */
#ifndef WAYGATE_UPSTREAM_POOL_H
#define WAYGATE_UPSTREAM_POOL_H

#include <event2/event.h>
#include <event2/event_struct.h>
#include <stdbool.h>
#include <stdint.h>

#include "waygate/pool.h"
#include "waygate/tls.h"

struct wg_upconn;
struct wg_upstream_pool;
struct wg_upstream_idle;

/* Runs on the owner's behalf for every event of a connection in use;
 * `what` holds EV_READ / EV_WRITE as epoll reported them. */
typedef void (*wg_upconn_fn)(struct wg_upconn *u, short what, void *owner);

struct wg_upconn {
    int fd;
    struct event ev;                    /* EV_READ|EV_WRITE|EV_CLOSED|EV_ET|EV_PERSIST */
    struct wg_instance *inst;           /* one reference for the connection's life */
    struct wg_upstream_pool *pool;
    void *owner;                        /* NULL while idle in the pool */
    wg_upconn_fn on_event;
    bool readable, writable;            /* edge-triggered readiness not yet consumed */
    bool hup;                           /* the peer's FIN is pending (EV_CLOSED) */
    bool connecting;                    /* connect (and TLS handshake) not yet complete */
    SSL *ssl;                           /* TLS to the instance, kept while pooled */
    bool tls_pending;                   /* TCP is up, the TLS handshake is not */
    bool read_wants_write;              /* SSL_read waits for writability */
    bool write_wants_read;              /* SSL_write waits for readability */
    unsigned requests;                  /* requests it carried (reuse count + 1) */
    uint64_t idle_until_ms;             /* while idle */
    unsigned health_gen;                /* wg_health_conn_generation() when parked */
    struct wg_upconn *prev, *next;      /* idle list, most recent first */
    struct wg_upstream_idle *idle;      /* the list it is on, or NULL */
};

struct wg_upstream_pool *wg_upstream_pool_new(struct event_base *base);
/* Closes every idle connection. Connections in use must be closed first. */
void wg_upstream_pool_free(struct wg_upstream_pool *p);

/* Open a non-blocking connection to `inst` for `owner`; 0 with *out set
 * (u->connecting tells whether the connect is still in progress: wait for
 * EV_WRITE then call wg_upconn_connect_result), or -errno. */
int wg_upconn_open(struct wg_upstream_pool *p, struct wg_instance *inst, void *owner,
                   wg_upconn_fn on_event, struct wg_upconn **out);
/* After EV_WRITE on a connecting connection: 0 when connected, else the
 * connect's errno. */
int wg_upconn_connect_result(struct wg_upconn *u);
/* Close and free a connection in use (owner's error path or end). */
void wg_upconn_close(struct wg_upconn *u);

/* An idle connection to `inst`, now owned by `owner`, or NULL. `peek`:
 * one recv(MSG_PEEK) first (for a request a stale connection would fail,
 * not retry for free; the others save the system call). */
struct wg_upconn *wg_upstream_pool_get(struct wg_upstream_pool *p, struct wg_instance *inst,
                                       void *owner, wg_upconn_fn on_event, bool peek);
/* Park a connection whose last response was complete and left it open; it
 * is closed instead when over max_idle (0: no pooling) or its instance is
 * not healthy. */
void wg_upstream_pool_put(struct wg_upconn *u, unsigned max_idle, uint64_t idle_timeout_ms);

/* Idle connections held right now (tests, metrics). */
unsigned wg_upstream_pool_idle(const struct wg_upstream_pool *p);

#endif
