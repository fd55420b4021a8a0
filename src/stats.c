/* stats — see include/waygate/stats.h */
#include "waygate/stats.h"

#include <pthread.h>
#include <stdlib.h>

#define MAX_BLOCKS 1024

static struct wg_stats_block *blocks[MAX_BLOCKS];
static _Atomic unsigned n_blocks;
static pthread_mutex_t blocks_lock = PTHREAD_MUTEX_INITIALIZER; /* registration only */
_Atomic uint64_t wg_stats_open_connections;

static const char *const names[WG_C__COUNT] = {
    [WG_C_CONN_ACCEPTED] = "connections_accepted",
    [WG_C_CONN_REJECTED_LIMIT] = "connections_rejected_limit",
    [WG_C_ACCEPT_PAUSED] = "accept_paused",
    [WG_C_CONNECT_ERRORS] = "connect_errors",
    [WG_C_RETRIES] = "retries",
    [WG_C_NO_UPSTREAM] = "no_upstream",
    [WG_C_BYTES_IN] = "bytes_in",
    [WG_C_BYTES_OUT] = "bytes_out",
    [WG_C_IDLE_TIMEOUTS] = "idle_timeouts",
    [WG_C_SNAPSHOT_SWITCHES] = "snapshot_switches",
    [WG_C_TLS_HANDSHAKES] = "tls_handshakes",
    [WG_C_TLS_RESUMED] = "tls_resumed",
    [WG_C_TLS_FAIL_PROTOCOL] = "tls_fail_protocol",
    [WG_C_TLS_FAIL_CERTIFICATE] = "tls_fail_certificate",
    [WG_C_TLS_FAIL_TIMEOUT] = "tls_fail_timeout",
    [WG_C_TLS_FAIL_OTHER] = "tls_fail_other",
    [WG_C_UPSTREAM_TLS_FAILURES] = "upstream_tls_failures",
    [WG_C_HTTP_REQUESTS] = "http_requests",
    [WG_C_HTTP_1XX] = "http_responses_1xx",
    [WG_C_HTTP_2XX] = "http_responses_2xx",
    [WG_C_HTTP_3XX] = "http_responses_3xx",
    [WG_C_HTTP_4XX] = "http_responses_4xx",
    [WG_C_HTTP_5XX] = "http_responses_5xx",
    [WG_C_HTTP_UPSTREAM_REUSED] = "http_upstream_reused",
    [WG_C_HTTP_UPSTREAM_STALE] = "http_upstream_stale",
    [WG_C_HTTP_TIMEOUTS] = "http_timeouts",
    [WG_C_PROXY_UNTRUSTED] = "proxy_protocol_untrusted",
    [WG_C_POLICY_DENIED] = "policy_denied",
    [WG_C_POLICY_RATE_LIMITED] = "policy_rate_limited",
    [WG_C_POLICY_RL_EVICTIONS] = "policy_rate_limit_evictions",
    [WG_C_MIRROR_SENT] = "mirror_sent",
    [WG_C_MIRROR_SKIPPED] = "mirror_skipped",
    [WG_C_MIRROR_DROP_MAX_BODY] = "mirror_dropped_max_body",
    [WG_C_MIRROR_DROP_ABORTED] = "mirror_dropped_aborted",
    [WG_C_MIRROR_DROP_FAILED] = "mirror_dropped_failed",
    [WG_C_H2_UP_CONNECTIONS] = "upstream_h2_connections",
    [WG_C_H2_UP_STREAMS] = "upstream_h2_streams",
    [WG_C_H2_UP_CONNECTS] = "upstream_h2_connects",
    [WG_C_H2_UP_GOAWAYS] = "upstream_h2_goaways",
    [WG_C_H2_UP_PINGS] = "upstream_h2_pings",
    [WG_C_H2_UP_PING_FAILURES] = "upstream_h2_ping_failures",
    [WG_C_H2_UP_REFUSED] = "upstream_h2_refused",
    [WG_C_H2_UP_IDLE_CLOSED] = "upstream_h2_idle_closed",
};

struct wg_stats_block *wg_stats_block_new(void)
{
    struct wg_stats_block *b = NULL;
    pthread_mutex_lock(&blocks_lock);
    unsigned n = atomic_load(&n_blocks);
    if (n < MAX_BLOCKS && posix_memalign((void **)&b, 64, sizeof *b) == 0) {
        for (int i = 0; i < WG_C__COUNT; i++)
            atomic_init(&b->c[i], 0);
        blocks[n] = b;
        atomic_store(&n_blocks, n + 1);
    }
    pthread_mutex_unlock(&blocks_lock);
    return b;
}

void wg_stats_reset_all(void)
{
    pthread_mutex_lock(&blocks_lock);
    unsigned n = atomic_load(&n_blocks);
    for (unsigned i = 0; i < n; i++) {
        free(blocks[i]);
        blocks[i] = NULL;
    }
    atomic_store(&n_blocks, 0);
    pthread_mutex_unlock(&blocks_lock);
}

uint64_t wg_stats_sum(enum wg_counter c)
{
    uint64_t sum = 0;
    unsigned n = atomic_load(&n_blocks);
    for (unsigned i = 0; i < n; i++)
        sum += atomic_load_explicit(&blocks[i]->c[c], memory_order_relaxed);
    return sum;
}

const char *wg_counter_name(enum wg_counter c) { return c < WG_C__COUNT ? names[c] : "?"; }
