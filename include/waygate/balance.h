/* balance — load-balancing policies behind one ops table.
 *
 * Promises:
 *  - A policy is one file (src/balance_<policy>.c) and one entry in the
 *    table of wg_balance_ops_for(); nothing else changes to add one.
 *  - Policies do no I/O, take no lock and never block. Shared data a policy
 *    needs (a hash ring, say) is built once per service version on the
 *    control thread (shared_new) and is immutable afterwards. Mutable state
 *    (smooth-WRR current weights, say) is per worker (state_new), rebuilt
 *    when the worker first picks from a new service version: never indexed
 *    into a stale member array.
 *  - A pick honours weights and returns only a routable member (see
 *    wg_balance_routable), or NULL when there is none.
 *  - Every policy picks in O(log n) or better, amortised. round_robin and
 *    least_conn keep worker-local heaps (src/balance_sched.h) that work over
 *    one member array each: a policy that picks within groups of a service's
 *    members (zone x priority) keeps one per group, built in state_new.
 *  - Health changes do not publish a new version: a worker's state notices
 *    them through the service's health_generation (pool.h) and rebuilds;
 *    between a change and the rebuild, every candidate is still checked with
 *    wg_balance_routable() before it is returned.
 *
 * The ops table shape is stable: shared_new/shared_free (control thread,
 * per version), state_new/state_free (worker, per version), pick. The call
 * sites (tcp_proxy, http_proxy) do wg_pick_init, wg_balance_cache_bind and
 * wg_pick_next only, whatever the policy.
 */
#ifndef WAYGATE_BALANCE_H
#define WAYGATE_BALANCE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "waygate/pool.h"

/* Per-worker PRNG (xoshiro256**); never rand(). */
struct wg_rng {
    uint64_t s[4];
};
void wg_rng_seed(struct wg_rng *r, uint64_t seed);
uint64_t wg_rng_next(struct wg_rng *r);
/* Uniform in [0, bound). */
uint64_t wg_rng_below(struct wg_rng *r, uint64_t bound);

#define WG_MAX_TRIES 16

struct wg_pick {
    const struct wg_pool_service *svc;
    void *state;                        /* the worker's state for svc (may be NULL) */
    struct wg_rng *rng;
    uint64_t now_ms;
    bool panic;                         /* route to every non-draining member */
    bool has_hash;
    uint64_t hash;                      /* hash policy: key hash */
    unsigned n_tried;                   /* instances already tried for this request */
    struct wg_instance *tried[WG_MAX_TRIES];
};

struct wg_balance_ops {
    const char *name;
    /* Control thread, once per service version; may be NULL. */
    void *(*shared_new)(const struct wg_pool_service *svc);
    void (*shared_free)(void *shared);
    /* Worker thread, first pick on a service version; may be NULL. */
    void *(*state_new)(const struct wg_pool_service *svc);
    void (*state_free)(void *state);
    /* The member to use, or NULL when nothing is routable. */
    const struct wg_member *(*pick)(struct wg_pick *p);
};

const struct wg_balance_ops *wg_balance_ops_for(enum wg_balance policy);

/* Can `m` take new work for this pick: healthy (any non-draining state in
 * panic mode), weight > 0, under max_connections, not tried already. */
bool wg_balance_routable(const struct wg_pick *p, const struct wg_member *m);
/* Effective weight with slow start applied. */
uint32_t wg_balance_weight(const struct wg_pick *p, const struct wg_member *m);

/* A worker's per-service policy states, keyed by service version. */
struct wg_balance_cache {
    struct wg_balance_cache_entry *v;
    size_t cap;
    size_t used;
};
/* Fill p->state for p->svc (creating it when the version is new). */
void wg_balance_cache_bind(struct wg_balance_cache *c, struct wg_pick *p);
/* Release states of service versions that a snapshot up to `snap` replaced
 * or removed (call when the worker first sees a new generation; NULL
 * releases everything). O(states held), no lookup by name: a publish that
 * changed one service costs a worker no more than a pass over its states. */
void wg_balance_cache_sweep(struct wg_balance_cache *c, const struct wg_snapshot *snap);
void wg_balance_cache_free(struct wg_balance_cache *c);

/* Prepare a pick on a service: panic mode decision and bookkeeping. */
void wg_pick_init(struct wg_pick *p, const struct wg_pool_service *svc, struct wg_rng *rng,
                  struct wg_balance_cache *cache);
/* Pick and remember the instance as tried. NULL: nothing left. */
const struct wg_member *wg_pick_next(struct wg_pick *p);

/* A fast, well-mixed 64-bit hash (wyhash-style multiply-fold), identical on
 * every platform and release: proxies route the same key to the same
 * instance, and sticky keys survive an upgrade. Not keyed: do not use it to
 * index tables an attacker can fill. `data` may be NULL when len is 0. */
uint64_t wg_balance_hash_bytes(const void *data, size_t len);

extern const struct wg_balance_ops wg_balance_round_robin;
extern const struct wg_balance_ops wg_balance_least_conn;
extern const struct wg_balance_ops wg_balance_random;
extern const struct wg_balance_ops wg_balance_p2c;
extern const struct wg_balance_ops wg_balance_hash;

#endif
