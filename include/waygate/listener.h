/* listener — listening sockets.
 *
 * Promises:
 *  - wg_listener_open() binds one socket per worker with SO_REUSEPORT, so
 *    the kernel spreads connections over workers; before that it checks
 *    with a plain bind (no SO_REUSEPORT) that no other process holds the
 *    address, instead of silently sharing its traffic.
 *  - It knows nothing of workers: each worker accepts on its own socket of
 *    the listener (worker.h: wg_acceptor_*) and hands connections to the
 *    listener's on_accept.
 */
#ifndef WAYGATE_LISTENER_H
#define WAYGATE_LISTENER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include "waygate/config.h"

struct wg_worker;
struct wg_listener;

/* HTTP/2 counters of one listener (admin: label `listener`), every worker
 * adding to the same atomics with a relaxed add. */
enum wg_h2_counter {
    WG_H2_CONNECTIONS,          /* client connections that speak HTTP/2 */
    WG_H2_STREAMS,              /* streams opened by clients */
    WG_H2_STREAMS_ACTIVE,       /* open now (a gauge: +1 / -1) */
    WG_H2_RST_RECV,             /* RST_STREAM frames received */
    WG_H2_RST_SENT_INTERNAL,    /* RST_STREAM sent: the exchange gave up (INTERNAL_ERROR) */
    WG_H2_RST_SENT_CANCEL,      /* RST_STREAM sent: a header timeout (CANCEL) */
    WG_H2_RST_SENT_OTHER,       /* RST_STREAM sent: NO_ERROR after an early answer, flow control */
    WG_H2_GOAWAY_NO_ERROR,      /* GOAWAY sent: drain, idle */
    WG_H2_GOAWAY_CALM,          /* GOAWAY sent: ENHANCE_YOUR_CALM (floods, rapid reset) */
    WG_H2_GOAWAY_COMPRESSION,   /* GOAWAY sent: COMPRESSION_ERROR (HPACK) */
    WG_H2_GOAWAY_PROTOCOL,      /* GOAWAY sent: PROTOCOL / FLOW_CONTROL / FRAME_SIZE error */
    WG_H2_GOAWAY_OTHER,         /* GOAWAY sent: any other code */
    WG_H2__COUNT
};

/* Called on the worker that accepted `fd`; takes ownership of fd. */
typedef void (*wg_accept_fn)(struct wg_worker *w, const struct wg_listener *l, int fd,
                             const struct sockaddr *peer, socklen_t peerlen);

/* A bound address. Its identity is its address: a reload keeps the sockets
 * of an unchanged address and never re-binds them. Everything else a
 * listener does (service, routes, timeouts) is read per connection or per
 * request from the current snapshot's config (wg_listener_config_in), so a
 * reload changes it for new work without touching the sockets. */
struct wg_listener {
    char *name;                     /* at bind time, for logs */
    struct wg_addr addr;
    enum wg_listener_mode mode;
    uint64_t max_connections;       /* the global limit */
    wg_accept_fn on_accept;
    int *fds;                       /* one per worker */
    unsigned n_fds;
    _Atomic unsigned detached;      /* workers that dropped it after removal */
    _Atomic uint64_t accepted;      /* connections accepted (all workers) */
    _Atomic uint64_t rejected;      /* of which closed at once: max_connections */
    _Atomic uint64_t *h2;           /* [WG_H2__COUNT]; writable through a const listener */
    _Atomic uint64_t *grpc;         /* [WG_GRPC_CODES]: gRPC calls by the grpc-status
                                       their client got (wg_grpc_code_slot), routed or not */
};

static inline void wg_listener_h2_add(const struct wg_listener *l, enum wg_h2_counter k,
                                      uint64_t n)
{
    atomic_fetch_add_explicit(&l->h2[k], n, memory_order_relaxed);
}

/* This listener's settings in `cfg` (matched by address), or NULL when the
 * config no longer has it. */
const struct wg_listener_config *wg_listener_config_in(const struct wg_config *cfg,
                                                       const struct wg_listener *l);
/* Close the sockets (after every worker detached); the struct stays valid
 * for connections that still point at it until wg_listener_close(). */
void wg_listener_close_sockets(struct wg_listener *l);

/* Bind `n_workers` sockets for `cfg`. Errors are "listener NAME: ..." */
struct wg_listener *wg_listener_open(const struct wg_listener_config *cfg, uint64_t max_conns,
                                     unsigned n_workers, wg_accept_fn on_accept,
                                     struct wg_errors *errs);
void wg_listener_close(struct wg_listener *l);

/* Global open-connection accounting (max_connections). */
void wg_listener_conn_closed(void);

#endif
