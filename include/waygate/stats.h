/* stats — per-worker counters, summed on read.
 *
 * Promises:
 *  - The data plane increments counters in its own worker's block with a
 *    relaxed atomic add: no lock, no shared cache line between workers.
 *  - Readers (admin, tests) sum all registered blocks at any time; a sum
 *    is never torn per counter, though counters are not a consistent cut.
 *  - Per-instance counters live as atomics on the instance (pool.h), the
 *    per-listener ones (connections, HTTP/2) on the listener (listener.h).
 */
#ifndef WAYGATE_STATS_H
#define WAYGATE_STATS_H

#include <stdatomic.h>
#include <stdint.h>

enum wg_counter {
    WG_C_CONN_ACCEPTED,         /* client connections accepted */
    WG_C_CONN_REJECTED_LIMIT,   /* closed at once: global max_connections */
    WG_C_ACCEPT_PAUSED,         /* accept paused on EMFILE/ENFILE/ENOBUFS */
    WG_C_CONNECT_ERRORS,        /* upstream connects that failed or timed out */
    WG_C_RETRIES,               /* attempts after the first */
    WG_C_NO_UPSTREAM,           /* nothing routable (tcp close / http 503) */
    WG_C_BYTES_IN,              /* from clients */
    WG_C_BYTES_OUT,             /* to clients */
    WG_C_IDLE_TIMEOUTS,
    WG_C_SNAPSHOT_SWITCHES,     /* a worker saw a new generation */
    WG_C_HTTP_REQUESTS,         /* http requests answered (by waygate or an upstream) */
    WG_C_HTTP_1XX,              /* final status class of those answers (101 counts 1xx) */
    WG_C_HTTP_2XX,
    WG_C_HTTP_3XX,
    WG_C_HTTP_4XX,
    WG_C_HTTP_5XX,
    WG_C_HTTP_UPSTREAM_REUSED,  /* requests sent on a pooled keep-alive connection */
    WG_C_HTTP_UPSTREAM_STALE,   /* pooled connections found closed: free retry */
    WG_C_HTTP_TIMEOUTS,         /* 408, 504 and closes on http timeouts */
    WG_C_TLS_HANDSHAKES,        /* completed server-side handshakes */
    WG_C_TLS_RESUMED,           /* of which resumed with a session ticket */
    WG_C_TLS_FAIL_PROTOCOL,     /* failed: version or protocol error */
    WG_C_TLS_FAIL_CERTIFICATE,  /* failed: client certificate missing or invalid */
    WG_C_TLS_FAIL_TIMEOUT,      /* closed at handshake_timeout */
    WG_C_TLS_FAIL_OTHER,        /* failed: network error, peer closed */
    WG_C_UPSTREAM_TLS_FAILURES, /* upstream handshakes that failed (verification...) */
    WG_C_PROXY_UNTRUSTED,       /* proxy_protocol listeners: peer outside trusted_proxies */
    WG_C_POLICY_DENIED,         /* requests refused by an auth policy (401/403) */
    WG_C_POLICY_RATE_LIMITED,   /* requests refused by rate_limit (429) */
    WG_C_POLICY_RL_EVICTIONS,   /* live rate-limit buckets evicted (key table full) */
    WG_C_MIRROR_SENT,           /* mirror copies sent (http_mirror.h) */
    WG_C_MIRROR_SKIPPED,        /* mirror copies skipped: in-flight bound, no instance */
    WG_C_MIRROR_DROP_MAX_BODY,  /* mirror copies dropped: body over max_body */
    WG_C_MIRROR_DROP_ABORTED,   /* dropped: the real request ended before its body */
    WG_C_MIRROR_DROP_FAILED,    /* dropped: the copy's connection failed mid-body */
    /* the worker's HTTP/2 upstream pool (upstream_h2.h wg_h2_pool_stats);
     * the first two are gauges: +1 and (uint64_t)-1, so each worker's
     * value is its own count and the sum wraps back to the total */
    WG_C_H2_UP_CONNECTIONS,     /* connections open now */
    WG_C_H2_UP_STREAMS,         /* streams open now */
    WG_C_H2_UP_CONNECTS,        /* connections opened */
    WG_C_H2_UP_GOAWAYS,         /* GOAWAYs received */
    WG_C_H2_UP_PINGS,           /* PINGs sent to idle connections */
    WG_C_H2_UP_PING_FAILURES,   /* connections closed for an unanswered PING */
    WG_C_H2_UP_REFUSED,         /* streams closed retryable (GOAWAY, REFUSED_STREAM) */
    WG_C_H2_UP_IDLE_CLOSED,     /* idle connections closed: max_idle, idle_timeout */
    WG_C__COUNT
};

struct wg_stats_block {
    _Alignas(64) _Atomic uint64_t c[WG_C__COUNT];
};

/* Register a block for the calling worker (control thread, at start). */
struct wg_stats_block *wg_stats_block_new(void);
void wg_stats_reset_all(void);      /* frees every block (at exit) */

static inline void wg_stats_add(struct wg_stats_block *b, enum wg_counter c, uint64_t n)
{
    atomic_fetch_add_explicit(&b->c[c], n, memory_order_relaxed);
}

uint64_t wg_stats_sum(enum wg_counter c);
const char *wg_counter_name(enum wg_counter c);

/* Connections open right now across all workers (global max_connections). */
extern _Atomic uint64_t wg_stats_open_connections;

#endif
