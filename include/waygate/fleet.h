/* fleet — this replica as a member of a fleet of waygates sharing one etcd
 * (DESIGN §18, docs/operations.md "The fleet").
 *
 * Promises:
 *  - With `fleet:` configured (etcd registry only), the replica keeps the key
 *    <fleet.prefix>replicas/<fleet.name> under its own lease (TTL fleet.ttl,
 *    kept alive every TTL/3) holding JSON: name, zone, version, generation,
 *    config (FNV-1a of the config file), listeners, started (Unix ms) and a
 *    few gauges (services, instances, healthy). The value is
 *    re-written only when it changed, at most once per TTL/3: a fleet of N
 *    replicas costs etcd N/(TTL/3) keep-alives a second, not N puts.
 *  - It watches <prefix>replicas/ and keeps the live set (a SIGKILLed
 *    replica drops when etcd expires its lease, within its TTL). Lost
 *    replicas are remembered for 10 minutes with the time they dropped.
 *  - Everything runs on the control thread's event_base with its own etcd
 *    connections; nothing blocks. etcd unreachable: the last live set is
 *    kept (and shown as stale); the key comes back with a new lease.
 *  - wg_fleet_replicas() is the one function for other threads.
 */
#ifndef WAYGATE_FLEET_H
#define WAYGATE_FLEET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "waygate/config.h"

struct event_base;
struct wg_pool;
struct wg_fleet;

/* Live replicas of the fleet in `zone` ("" = replicas without a zone; NULL
 * = all zones), as last seen in etcd. Any thread, lock-free (relaxed
 * atomics), never blocks. Never 0: a replica counts itself even before its
 * first answer from etcd, and without `fleet:` the fleet is this replica
 * alone (1). A rate limit with `scope: fleet` divides its rate by this. */
unsigned wg_fleet_replicas(const char *zone);

/* NULL without `fleet:` (no error) or when out of memory / bad endpoints
 * (logged). Starts at once. */
struct wg_fleet *wg_fleet_new(struct event_base *base, const struct wg_config *cfg,
                              struct wg_pool *pool);
/* A reload: the new listeners and config digest are published. A changed
 * name, prefix, ttl or etcd endpoints needs a restart (warned). */
void wg_fleet_set_config(struct wg_fleet *f, const struct wg_config *cfg);
/* A graceful stop (SIGTERM): leave the fleet at once. Keep-alives and puts
 * stop, and the lease is revoked: the key (and a shared-health prober key
 * under the lease) goes now, so the others drop this replica and another
 * takes over probing at once instead of after the TTL. The view goes on
 * until the free. An etcd answer to a call cancelled here is never seen.
 * NULL ignored. */
void wg_fleet_leave(struct wg_fleet *f);
/* True once the revoke was answered or given up (etcd unreachable: within
 * 1 s), and without a fleet (NULL). The control loop waits for it. */
bool wg_fleet_left(const struct wg_fleet *f);
/* Frees; never blocks. A lease not revoked by wg_fleet_leave (an error at
 * start-up) expires after its TTL. NULL ignored. */
void wg_fleet_free(struct wg_fleet *f);

/* ---- for /status, /metrics and the dashboard (control thread) ---- */

struct wg_fleet_replica {
    char *name, *zone, *version;
    char *value;                        /* the JSON value as stored */
    uint64_t generation;
    uint64_t updated_unix_ms;           /* when this replica saw the value change */
    uint64_t gone_unix_ms;              /* 0 = live; else when its key went */
    bool self;
};

struct wg_fleet_view {
    const char *name, *prefix;
    bool connected;                     /* the last etcd call succeeded */
    bool registered;                    /* our key is written under a live lease */
    int64_t lease;
    const struct wg_fleet_replica *replicas;    /* live first, by name; then gone */
    size_t n_live, n_gone;
};
/* false without a fleet (f NULL). Valid until the next event loop turn. */
bool wg_fleet_view(const struct wg_fleet *f, struct wg_fleet_view *out);

/* Shared etcd access for the shared-health module (health_shared.c). */
struct wg_etcd_client;
struct wg_etcd_client *wg_fleet_etcd(struct wg_fleet *f);
/* The replica's lease (0 while it has none) and whether etcd answered within
 * the last TTL. */
int64_t wg_fleet_lease(const struct wg_fleet *f);
bool wg_fleet_connected(const struct wg_fleet *f);

#endif
