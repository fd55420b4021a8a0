/* registry — where instances come from: a file, etcd or ZooKeeper, behind
 * one interface (a new source is one file: ops + a constructor here).
 *
 * Promises:
 *  - A registry runs on the control thread's event_base and publishes every
 *    change it sees into the pool (pool.h) as one new snapshot per change.
 *  - It never drops the last known pools because its source went away or
 *    turned invalid: only a successful read of the source replaces them.
 *  - Its status (source, connected, revision, counters) is readable on the
 *    control thread at any time for /status and /metrics.
 */
#ifndef WAYGATE_REGISTRY_H
#define WAYGATE_REGISTRY_H

#include <stdbool.h>
#include <stdint.h>

#include "waygate/config.h"

struct event_base;
struct wg_pool;
struct wg_registry;

struct wg_registry_status {
    const char *source;             /* "file", "etcd", "zookeeper", "none" */
    bool connected;                 /* file: last read succeeded */
    int64_t revision;               /* etcd revision; zookeeper: the highest zxid seen;
                                     * file: reload count */
    /* zookeeper: the session's state ("connected", "connecting",
     * "expired", "auth_failed"; NULL for other sources), its id, and the
     * server it talks to ("" when none) */
    const char *session_state;
    int64_t session_id;
    char server[64];
    uint64_t events_total;          /* changes applied */
    uint64_t reconnects_total;
    uint64_t resyncs_total;
    uint64_t invalid_records_total;
    uint64_t last_contact_ms;       /* wg_now_ms() of the last good read */
    /* etcd: time from reading a watch response off the socket to the commit
     * of its snapshot returning, as a Prometheus histogram
     * (waygate_registry_propagation_seconds): propagation_buckets[i] counts
     * the observations <= wg_registry_propagation_le[i] seconds (cumulative,
     * like Prometheus buckets); +Inf is propagation_count. */
    uint64_t propagation_count;
    uint64_t propagation_sum_ns;
#define WG_REGISTRY_PROPAGATION_BUCKETS 12
    uint64_t propagation_buckets[WG_REGISTRY_PROPAGATION_BUCKETS];
};

/* Upper bounds (seconds) of the propagation histogram's buckets. */
extern const double wg_registry_propagation_le[WG_REGISTRY_PROPAGATION_BUCKETS];
/* Count one propagation of `ns` nanoseconds in the histogram. */
void wg_registry_observe_propagation(struct wg_registry_status *st, uint64_t ns);

struct wg_registry_ops {
    const char *name;
    int (*start)(struct wg_registry *r);
    void (*free)(struct wg_registry *r);
};

struct wg_registry {
    const struct wg_registry_ops *ops;
    struct event_base *base;
    struct wg_pool *pool;
    struct wg_registry_status status;
    bool in_loop;                   /* being freed from a callback of `base` */
};

/* Create the registry the config names (none, file or etcd). */
struct wg_registry *wg_registry_new(const struct wg_config *cfg, struct event_base *base,
                                    struct wg_pool *pool);
/* Start watching; the first successful read publishes the first snapshot. */
int wg_registry_start(struct wg_registry *r);
/* Free outside the loop (at shutdown): pending deferred callbacks of the
 * registry's connections are run first, so that the base can be freed. */
void wg_registry_free(struct wg_registry *r);
/* Free from a callback of the registry's own loop (a reload replacing it):
 * the loop runs those callbacks itself once the current one returns. */
void wg_registry_retire(struct wg_registry *r);

/* Implementations. */
struct wg_registry *wg_registry_file_new(const char *path, struct event_base *base,
                                         struct wg_pool *pool);
struct wg_registry *wg_registry_none_new(struct event_base *base, struct wg_pool *pool);
/* registry.etcd (and registry.cache); NULL with the reason logged. */
struct wg_registry *wg_registry_etcd_new(const struct wg_config *cfg, struct event_base *base,
                                         struct wg_pool *pool);
/* registry.zookeeper (and registry.cache); NULL with the reason logged. */
struct wg_registry *wg_registry_zk_new(const struct wg_config *cfg, struct event_base *base,
                                       struct wg_pool *pool);

#endif
