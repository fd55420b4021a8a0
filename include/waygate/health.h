/* health — the health model of DESIGN §9: active probes, passive outlier
 * ejection, draining and the state machine that joins them.
 *
 * States (pool.h, enum wg_health), kept as atomics on the instance so that a
 * pick reads them directly and a change never needs a new snapshot:
 *
 *   unknown ──first probe passes──▶ healthy ◀──healthy_threshold passes── unhealthy
 *      │                              │  ▲                                  ▲
 *      └──unhealthy_threshold fails───┼──┼──────────────────────────────────┤
 *                                     │  │ ejection over AND a probe passes │
 *       outlier_detection (passive) ──▼  │                                  │
 *                                   ejected ──unhealthy_threshold fails─────┘
 *   any state ──removed from the registry (final) / admin drain──▶ draining
 *
 *  - `type: none`: no probes; an instance is healthy from the start and an
 *    ejected one comes back once its ejection time is over.
 *  - Every transition is logged once, at info level, by the thread that made
 *    it (key=value: service, upstream, from, to, reason).
 *
 * Three parts, three audiences:
 *  1. The data-plane API below (wg_health_report_*, wg_health_conn_*): any
 *     thread, lock-free (relaxed atomics and one compare-and-swap), never
 *     blocks, never allocates. The L4 and L7 proxies call it.
 *  2. The state machine (wg_health_on_probe & co): called by the prober; pure
 *     apart from the instance atomics, so the unit tests drive it directly.
 *  3. The prober (src/health_probe.c): its own thread and event_base. It
 *     learns the instance set from wg_pool_on_publish and probes every
 *     instance of every service whose health_check.type is http or tcp.
 */
#ifndef WAYGATE_HEALTH_H
#define WAYGATE_HEALTH_H

#include <stdbool.h>
#include <stdint.h>

#include "waygate/config.h"
#include "waygate/pool.h"

/* ---- 1. data plane -------------------------------------------------------- */

/* What went wrong with one attempt on an instance. */
enum wg_health_failure {
    WG_FAIL_CONNECT,        /* connect refused, unreachable or timed out */
    WG_FAIL_HTTP_5XX,       /* the upstream answered 500-599 */
    WG_FAIL_TIMEOUT,        /* no response head within response_timeout */
};

/* Outlier detection (outlier_detection in the service's settings):
 *  - Call wg_health_report_failure() once per failed attempt: the L4 proxy on
 *    every failed or timed-out connect; the L7 proxy on a connect failure,
 *    on a 5xx response head from the upstream, on response_timeout, and
 *    on a response the upstream cut short (reset or closed mid-body; for
 *    gRPC only when the status it maps to is UNAVAILABLE / INTERNAL /
 *    DEADLINE_EXCEEDED), and an upstream grpc-status of those three.
 *    `svc` is the service version the request was picked from (settings and
 *    pool size). After `consecutive_failures` failures in a row a healthy
 *    instance is ejected for base_ejection_time x (its number of ejections),
 *    at most max_ejection_time, unless that would put more than
 *    max_ejection_percent of the service's instances in the ejected state
 *    (then it stays in, wg_service_state.ejections_refused counts it).
 *    Returns true when this call ejected the instance.
 *  - Call wg_health_report_success() when an attempt succeeded: the L4 proxy
 *    once connected; the L7 proxy on a response head below 500. It resets
 *    the run of consecutive failures (one relaxed load when already 0). */
bool wg_health_report_failure(const struct wg_pool_service *svc, struct wg_instance *i,
                              enum wg_health_failure why);
void wg_health_report_success(struct wg_instance *i);

/* Pooled idle upstream connections (the L7 proxy's keep-alive pools):
 *  - when a connection goes idle into the pool, remember
 *    gen = wg_health_conn_generation(inst);
 *  - before reusing it, and on the worker's periodic sweep of its pools, close
 *    it unless wg_health_conn_reusable(inst, gen): the instance is healthy
 *    and has not been unhealthy, ejected, drained or removed meanwhile. */
static inline unsigned wg_health_conn_generation(const struct wg_instance *i)
{
    return atomic_load_explicit(&((struct wg_instance *)i)->down_generation,
                                memory_order_relaxed);
}
static inline bool wg_health_conn_reusable(const struct wg_instance *i, unsigned gen)
{
    return wg_instance_health(i) == WG_HEALTH_HEALTHY && wg_health_conn_generation(i) == gen;
}

/* Open connections and in-flight requests (drain_timeout, on_unhealthy).
 * Returns why a connection to `i` opened under settings `cfg` must be closed
 * now, or WG_CUT_NONE. `gen` is wg_health_conn_generation(i) taken when the
 * connection was made: on_unhealthy: close cuts only connections made before
 * the instance went down (a panic-mode connection to an instance that was
 * already down is kept). The L4 proxy checks its connections once a second
 * (the worker tick); the L7 proxy does the same for in-flight requests and
 * upgraded tunnels (an idle pooled connection follows the rule above). */
enum wg_health_cut {
    WG_CUT_NONE,
    WG_CUT_DRAIN_TIMEOUT,   /* draining for longer than drain_timeout (> 0) */
    WG_CUT_UNHEALTHY,       /* on_unhealthy: close and the instance is unhealthy or ejected */
};
enum wg_health_cut wg_health_conn_cut(const struct wg_service_config *cfg,
                                      const struct wg_instance *i, unsigned gen,
                                      uint64_t now_ms);
const char *wg_health_cut_name(enum wg_health_cut c);

/* The body of the HTTP 503 the L7 proxy answers when no instance of the
 * service is routable (all down, or every one at max_connections). */
#define WG_HEALTH_503_BODY "no healthy upstream\n"

/* ---- 2. state machine (prober thread) ----------------------------------- */

/* The prober's memory of one instance between probes. */
struct wg_health_run {
    unsigned passes;        /* consecutive passing probes */
    unsigned fails;         /* consecutive failing probes */
};

/* Apply one active probe result to `i` under settings `cfg` at `now_ms`
 * (result: HTTP status, 0 for a tcp pass, -errno for a failure; kept for
 * /status). Transitions: unknown -> healthy on the first pass (§9: a new
 * instance is routed after one probe round trip), unknown/healthy ->
 * unhealthy after unhealthy_threshold fails, unhealthy -> healthy after
 * healthy_threshold passes, ejected -> healthy on a pass once ejected_until
 * is over, ejected -> unhealthy after unhealthy_threshold fails. Returns the
 * visible state afterwards. */
enum wg_health wg_health_on_probe(struct wg_instance *i, const struct wg_service_config *cfg,
                                  struct wg_health_run *run, bool passed, int result,
                                  uint64_t now_ms);

/* For services without probes (type: none): make `i` healthy if it is
 * unknown or unhealthy (a reload switched the type), or if its ejection is
 * over. Returns the visible state afterwards. */
enum wg_health wg_health_without_probes(struct wg_instance *i, uint64_t now_ms);

/* The delay before the next probe: interval_ms +-10%, uniform, from a random
 * 64-bit value. Always within [interval - interval/10, interval + interval/10]. */
uint64_t wg_health_jitter(uint64_t interval_ms, uint64_t random64);

/* Ejection length for the n-th ejection (n >= 1): base x n, at most max. */
uint64_t wg_health_ejection_ms(const struct wg_service_config *cfg, unsigned n);

/* May one more of `members` instances be ejected while `ejected` are? */
bool wg_health_ejection_allowed(unsigned ejected, unsigned members, unsigned max_percent);

/* Apply the state the zone's elected prober published for `i` (shared
 * health, health_shared.c) as if this replica had probed: healthy moves
 * unknown/unhealthy to healthy, and an ejected instance whose ejection is
 * over (passive detection stays local); unhealthy moves unknown, healthy
 * and ejected to unhealthy. Any thread. Returns true on a change (logged
 * as a "health changed" with reason "shared by the zone's prober"). */
bool wg_health_apply_shared(struct wg_instance *i, enum wg_health published, uint64_t now_ms);

/* ---- 3. the prober -------------------------------------------------------- */

struct wg_prober;

/* Counters of the prober, readable from any thread (admin, benchmarks). */
struct wg_prober_stats {
    uint64_t probes;            /* probes completed */
    uint64_t passed, failed;
    uint64_t connects;          /* connections opened (keep-alive keeps this low) */
    uint64_t instances;         /* instances in the probe table */
    uint64_t open_connections;  /* probe sockets open now */
    uint64_t snapshots;         /* snapshots taken over from the control thread */
    uint64_t lag_max_us;        /* worst lateness of a probe start, since the last read */
    uint64_t lag_sum_us;        /* sum of lateness, with lag_count: the mean */
    uint64_t lag_count;
    uint64_t deferred;          /* probe starts postponed: too many connects in progress */
};

/* Create the prober thread and hook it on `pool` (wg_pool_on_publish; also
 * takes the snapshot published already, if any). Control thread, after
 * evthread_use_pthreads(). NULL on failure. The prober must be freed before
 * the pool, and once nothing publishes any more. */
struct wg_prober *wg_prober_new(struct wg_pool *pool);
/* Stop and join the thread, close every probe connection, drop every
 * reference. Control thread. NULL is ignored. */
void wg_prober_free(struct wg_prober *p);
/* Any thread. lag_max_us is reset by each call. */
void wg_prober_stats(struct wg_prober *p, struct wg_prober_stats *out);

/* ---- 4. shared health (health_check.shared, DESIGN §18) ---------------------
 *
 * Per zone one replica of the fleet probes the services with `shared: true`
 * and publishes each state change under
 *     <fleet.prefix>health/<zone>/<service>/<instance id>  {"state","address","by"}
 * (only transitions; no lease, so a successor starts from them). It is
 * elected with the etcd recipe: a transaction creating
 *     <fleet.prefix>health/<zone>/_prober   (compare create_revision == 0)
 * under the replica's fleet lease; that key is the prober's heartbeat: it
 * vanishes within the lease TTL when the prober dies, and every replica of
 * the zone, watching the prefix, campaigns at once. The others skip their
 * probes of shared services and apply the published states
 * (wg_health_apply_shared). A replica whose etcd answers stop (the fleet
 * not connected) probes by itself until they come back.
 * Everything runs on the control thread but the two calls below. */
struct wg_health_shared;
struct wg_fleet;
struct event_base;
/* NULL when no service has shared: true (or without a fleet). */
struct wg_health_shared *wg_health_shared_new(struct event_base *base, const struct wg_config *cfg,
                                              struct wg_pool *pool, struct wg_fleet *fleet);
void wg_health_shared_free(struct wg_health_shared *s);
/* For /status: "prober" (elected), "follower", "alone" (probing itself), or
 * NULL without shared health; the elected replica's name into who[len]. */
const char *wg_health_shared_role(const struct wg_health_shared *s, char *who, size_t len);

/* Prober thread: skip the probe of an instance of a shared service now? */
bool wg_health_shared_following(void);
/* Prober thread: a probe moved `i` (service `svc`) to `h`; published when
 * this replica is the zone's prober. Never blocks (a mutex-guarded queue
 * handed to the control thread). */
void wg_health_shared_transition(const char *svc, const struct wg_instance *i, enum wg_health h);

#endif
