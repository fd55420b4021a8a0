/* pool — services, instances and the immutable snapshots workers route on.
 *
 * Ownership model (DESIGN §3):
 *  - The control thread alone builds snapshots and publishes them with one
 *    atomic pointer swap; workers read wg_pool_current() inside a callback
 *    and use it until their next quiescent point (reclaim.h).
 *  - A snapshot is refcounted: the published reference is dropped after the
 *    grace period; a connection that keeps anything across callbacks takes
 *    its own snapshot reference (wg_snapshot_ref) while the snapshot is
 *    current for it, i.e. while the published reference still exists.
 *  - Services are refcounted immutable objects shared by consecutive
 *    snapshots when unchanged: a change to one service builds that service
 *    alone (its instances, its policy data such as a Maglev table) and a
 *    snapshot that points at the same objects for every other service: its
 *    name-sorted array is a copy of the last one (8 bytes a service, no
 *    string compare beyond a merge), while the references on services live
 *    in shared chunks (wg_svc_chunk), so a change touches O(change + services
 *    / WG_SVC_CHUNK) reference counts. A service owns one reference on each of its
 *    instances; a connection takes its own (wg_instance_ref).
 *  - Instance identity is (service, id, address:port): the same identity in
 *    the next snapshot is the SAME object, so health, counters and ejection
 *    carry over. Health and counters are atomics: changing them never needs a
 *    new snapshot.
 *  - An instance removed from the registry becomes `draining`: no new work,
 *    its connections finish; it is freed with its last reference. The admin
 *    API can drain an instance too, and undo that (wg_instance_admin_drain);
 *    an admin-drained instance keeps its identity across snapshots.
 */
#ifndef WAYGATE_POOL_H
#define WAYGATE_POOL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "waygate/config.h"
#include "waygate/record.h"

struct wg_reclaim;
struct wg_balance_ops;
struct wg_locality;

enum wg_health {
    WG_HEALTH_UNKNOWN,      /* new, not yet probed: not routed */
    WG_HEALTH_HEALTHY,
    WG_HEALTH_UNHEALTHY,    /* active probes failed */
    WG_HEALTH_EJECTED,      /* passive outlier detection */
    WG_HEALTH_DRAINING,     /* removed or drained: no new work */
};
const char *wg_health_name(enum wg_health h);

/* Upper bounds (seconds) of the request duration histogram's buckets
 * (waygate_request_duration_seconds{service}; +Inf is the count). */
#define WG_DURATION_BUCKETS 11
extern const double wg_duration_le[WG_DURATION_BUCKETS];

/* The instances of one (zone, priority) of a service: healthy count and picks
 * kept exact by the instances that belong to it (an instance's cell is fixed
 * at creation: a record that moves zone or priority is a new instance, like a
 * changed address). Cells live as long as their service state; only the
 * control thread adds them. */
struct wg_locality_cell {
    struct wg_locality_cell *next;
    unsigned priority;              /* 0 = primary, 1.. = backups */
    _Atomic int healthy;
    _Atomic uint64_t picks;         /* waygate_picks_total{service,zone} */
    char zone[WG_ZONE_MAX + 1];     /* "" = no zone */
};

/* State of a service that outlives snapshots (shared by all its versions). */
struct wg_service_state {
    _Atomic unsigned refs;
    _Atomic int healthy;            /* instances currently healthy */
    _Atomic unsigned health_generation; /* +1 after every visible health change of
                                           any of its instances: workers rebuild
                                           their pick structures when it moves */
    _Atomic uint64_t panic_routed;  /* picks made in panic mode */
    _Atomic int ejected;            /* instances currently ejected (health.h) */
    _Atomic uint64_t ejections_refused; /* ejections max_ejection_percent prevented */
    /* Request durations (http): per bucket (not cumulative), count, sum. */
    _Atomic uint64_t duration_buckets[WG_DURATION_BUCKETS];
    _Atomic uint64_t duration_count, duration_sum_us;
    /* gRPC calls by the grpc-status their client got: [WG_GRPC_CODES]
     * (grpc.h, wg_grpc_code_slot; not included here: etcd_client.h has
     * its own WG_GRPC_* names). */
    _Atomic uint64_t grpc_codes[17];
    struct wg_locality_cell *cells;     /* control thread appends; freed with the state */
    char name[];
};

/* Record one request's duration (any worker; relaxed atomics). */
void wg_service_observe_duration(struct wg_service_state *s, uint64_t us);

#define WG_INSTANCE_MAGIC 0x1257a9ceU

/* An instance's address, compact: 24 bytes where a sockaddr_storage is 128
 * (100,000 instances: 10 MiB). wg_instance_sockaddr() builds the sockaddr
 * to connect to. */
struct wg_inst_addr {
    uint16_t family;                    /* AF_INET or AF_INET6 */
    uint16_t port;                      /* network byte order */
    uint32_t scope_id;                  /* AF_INET6 */
    uint8_t ip[16];                     /* the first 4 for AF_INET */
};

struct wg_instance {
    uint32_t magic;
    _Atomic unsigned refs;
    struct wg_service_state *service;   /* one reference */
    struct wg_locality_cell *cell;      /* its zone and priority (owned by `service`) */
    struct wg_inst_addr addr;           /* see wg_instance_sockaddr() */
    char addr_text[64];                 /* 127.0.0.1:80 / [::1]:80 */
    uint8_t protocol;                   /* enum wg_upstream_protocol (not auto): what
                                           the data plane speaks to it; part of its
                                           identity (a change makes a new instance) */
    _Atomic int health;                 /* read with wg_instance_health(): the low
                                           byte is the enum wg_health, higher bits
                                           hold an admin drain (see below) */
    _Atomic int admin_drained;          /* 1 while drained through the admin API
                                           (mirror for readers; `health` decides) */
    _Atomic unsigned active;            /* open connections / in-flight requests */
    _Atomic unsigned consecutive_failures;
    _Atomic unsigned ejections;
    _Atomic uint64_t ejected_until_ms;
    _Atomic uint64_t healthy_since_ms;  /* for slow start */
    _Atomic uint64_t requests_total;    /* connections (tcp) or requests (http) */
    _Atomic uint64_t connect_failures;
    _Atomic uint64_t bytes_in, bytes_out;
    void *health_private;               /* owned by the health module (control side) */
    /* Health bookkeeping (health.h). */
    _Atomic unsigned down_generation;   /* +1 at every change to unhealthy, ejected
                                           or draining: pooled idle connections
                                           remember it and are closed on change */
    _Atomic uint64_t draining_since_ms; /* when it started draining; 0 = not */
    _Atomic uint64_t probes_passed, probes_failed;
    _Atomic uint64_t last_probe_ms;     /* CLOCK_MONOTONIC ms of the last result */
    _Atomic int last_probe_result;      /* HTTP status, 0 = tcp pass, -errno = failure */
    _Atomic int shared_health;          /* health_check.shared: the state the zone's
                                           prober published last (health.h); 0 = none */
    char id[];                          /* in the same allocation (8 bytes less, and no
                                           malloc chunk of its own) */
};

/* Writes i's address as a sockaddr into *ss (zeroed first); returns its
 * length, 0 for an address family other than IPv4 and IPv6. Any thread. */
socklen_t wg_instance_sockaddr(const struct wg_instance *i, struct sockaddr_storage *ss);

/* What a member's record said beyond inst's address (record.h), kept so
 * that a reload can pick again under new settings. NULL for most. */
struct wg_member_record {
    uint8_t protocol;                   /* enum wg_record_protocol */
    bool grpc_endpoint;
    socklen_t addrlen, grpc_addrlen;
    struct sockaddr_storage addr, grpc_addr;
};

struct wg_member {
    struct wg_instance *inst;
    uint32_t weight;                    /* 0 = no new traffic */
    char *metadata;                     /* JSON text or NULL */
    struct wg_member_record *record;    /* set when the record had a protocol marker */
};

/* One version of a service: immutable once published. */
struct wg_pool_service {
    _Atomic unsigned refs;
    uint64_t serial;                    /* unique per version (balance caches key on it) */
    const char *name;                   /* == state->name */
    struct wg_service_state *state;
    const struct wg_service_config *cfg;    /* owned by `config` below */
    struct wg_config_ref *config;
    const struct wg_pool_policy *policy;    /* built balance, balance_shared, locality */
    const struct wg_balance_ops *balance;
    void *balance_shared;               /* policy data built at publish, or NULL */
    struct wg_member *members;          /* sorted by id */
    uint32_t n_members;
    uint64_t total_weight;
    _Atomic bool retired;               /* a later snapshot replaced or removed it
                                           (set before that snapshot is published) */
    /* Zones and priorities (balance.h): the groups picks choose between, or
     * NULL when the service has one group. A group is itself a service
     * version over a subset of `members` whose `parent` is this one; it is
     * owned by the parent, and references to it go to the parent. */
    struct wg_locality *locality;
    const struct wg_pool_service *parent;
    /* Control thread only: the chunk of the published snapshot holding this
     * version's reference (pool.c), NULL once a staged change replaces it. */
    struct wg_svc_chunk *chunk;
};

/* A refcounted, immutable configuration. */
struct wg_config_ref {
    _Atomic unsigned refs;
    struct wg_config *cfg;
    /* What was built from cfg on the control thread (TLS contexts); freed
     * with it through ext_free. */
    void *ext;
    void (*ext_free)(void *ext);
};
struct wg_config_ref *wg_config_ref_new(struct wg_config *cfg);  /* takes cfg */
void wg_config_ref_get(struct wg_config_ref *r);
void wg_config_ref_put(struct wg_config_ref *r);

#define WG_SNAPSHOT_MAGIC 0x5a4b5407U

/* What a snapshot changed against the one published just before it
 * (generation - 1): `old` NULL for an added service, `new` NULL for a
 * removed one. `old` is only valid while that predecessor is. */
struct wg_snapshot_change {
    const struct wg_pool_service *old, *new;
};

/* A chunk of up to WG_SVC_CHUNK service references (in no order), shared
 * by consecutive snapshots (see `chunks` below); immutable once published
 * but for its refcount. */
#define WG_SVC_CHUNK 128
struct wg_svc_chunk {
    _Atomic unsigned refs;
    uint32_t n;
    bool touched;                       /* control thread, while publishing */
    struct wg_pool_service *v[WG_SVC_CHUNK];
};

struct wg_snapshot {
    uint32_t magic;
    _Atomic unsigned refs;
    uint64_t generation;
    uint64_t created_ns;                /* CLOCK_MONOTONIC at publish */
    struct wg_config_ref *config;
    struct wg_pool_service **services;  /* sorted by name */
    size_t n_services;
    /* The services' references, in shared chunks of up to WG_SVC_CHUNK
     * (pool.c): a snapshot that changes one service takes one reference per
     * chunk and rebuilds the one or two chunks the change touched, instead
     * of one reference per service (10,000 services: 10,000 atomic adds on
     * as many cache lines at publish, and as many subtractions at reclaim). */
    struct wg_svc_chunk **chunks;
    size_t n_chunks;
    /* The change from generation - 1 (a reader that saw that snapshot needs
     * to look at these alone), in name order. */
    const struct wg_snapshot_change *changes;
    size_t n_changes;
};

struct wg_pool;

/* What the balancing policies keep per service version; balance.h gives it
 * (wg_balance_policy), so that the pool knows no policy itself. */
struct wg_pool_policy {
    /* Once the version's members are complete: set balance, balance_shared
     * and locality. -1: out of memory. */
    int (*build)(struct wg_pool_service *s, const char *local_zone);
    /* Free what build set, also after a build that failed half-way. */
    void (*release)(struct wg_pool_service *s);
};

/* `policy` builds every service version (never NULL). `wake` is called on
 * the control thread after every publish so that idle readers pass a
 * quiescent point (reclaim.h) and see the new snapshot. */
struct wg_pool *wg_pool_new(struct wg_reclaim *rc, const struct wg_pool_policy *policy,
                            void (*wake)(void *), void *wake_arg);
void wg_pool_free(struct wg_pool *p);

/* --- control thread --- */
/* Install a configuration (takes a reference on `config`). Every service is
 * rebuilt with its new settings; instances keep their identity. Publishes. */
void wg_pool_set_config(struct wg_pool *p, struct wg_config_ref *config);
/* Stage the complete instance list of one service (records sorted by id,
 * all of that service; n == 0 removes the service). Nothing is visible to
 * workers until wg_pool_commit(). */
int wg_pool_stage_service(struct wg_pool *p, const char *service,
                          const struct wg_record *recs, size_t n);
/* Replace everything with `all` (sorted by service, id): services not in it
 * are removed. Commits. */
int wg_pool_replace_all(struct wg_pool *p, const struct wg_record_set *all);
/* Publish one new snapshot with every staged change (no-op if none).
 * Returns the new generation, or 0 when nothing changed. */
uint64_t wg_pool_commit(struct wg_pool *p);
/* Free snapshots all workers have moved past. Call periodically. */
size_t wg_pool_reclaim(struct wg_pool *p);
/* The snapshot the control thread published last (control thread only). */
struct wg_snapshot *wg_pool_published(struct wg_pool *p);
bool wg_pool_has_snapshot(struct wg_pool *p);
/* Called after each publish with the new snapshot (health prober, admin). */
void wg_pool_on_publish(struct wg_pool *p, void (*cb)(void *arg, struct wg_snapshot *s), void *arg);

/* --- any thread --- */
/* The current snapshot: valid until the caller's next quiescent point. */
struct wg_snapshot *wg_pool_current(struct wg_pool *p);
void wg_snapshot_ref(struct wg_snapshot *s);
void wg_snapshot_unref(struct wg_snapshot *s);
const struct wg_pool_service *wg_snapshot_service(const struct wg_snapshot *s, const char *name);

/* Take/drop a reference on a service version (only while it is reachable
 * from a snapshot the caller may read, or already referenced). */
void wg_pool_service_ref(struct wg_pool_service *s);
void wg_pool_service_unref(struct wg_pool_service *s);

void wg_instance_ref(struct wg_instance *i);
void wg_instance_unref(struct wg_instance *i);
/* Change health, keeping the service's healthy count exact. Returns the
 * previous state. Any thread. Setting WG_HEALTH_DRAINING means "removed from
 * the registry" and is final. While an instance is drained by the admin its
 * visible state stays draining and `h` is only remembered: enabling it again
 * restores the latest state set meanwhile. */
enum wg_health wg_instance_set_health(struct wg_instance *i, enum wg_health h);

/* Admin drain (drain = true) or undo (false); any thread, idempotent.
 * Draining makes the visible state draining (no new work; open connections
 * finish) and remembers the state underneath; undoing restores it (a restored
 * healthy state restarts slow start). The healthy count stays exact. Returns
 * false only when asked to undo the drain of an instance removed from the
 * registry, which stays draining for good; true otherwise. */
bool wg_instance_admin_drain(struct wg_instance *i, bool drain);

/* Conditional change: from `from` to `to` only if the state is `from` right
 * now (compare-and-swap), keeping the healthy and ejected counts exact. While
 * the admin drains the instance, the remembered state is compared and
 * replaced instead. Never changes a removed instance; `to` must not be
 * draining. Any thread. Returns true when the change was made. */
bool wg_instance_cas_health(struct wg_instance *i, enum wg_health from, enum wg_health to);

/* Layout of the `health` word: the low byte is what readers see; while an
 * admin drain is in force WG_HEALTH_ADMIN_BIT is set, the low byte is
 * draining and the next byte holds the state to restore. */
#define WG_HEALTH_VISIBLE_MASK 0xff
#define WG_HEALTH_SAVED_SHIFT 8
#define WG_HEALTH_ADMIN_BIT (1 << 16)

static inline enum wg_health wg_instance_health(const struct wg_instance *i)
{
    int v = atomic_load_explicit(&((struct wg_instance *)i)->health, memory_order_relaxed);
    return (enum wg_health)(v & WG_HEALTH_VISIBLE_MASK);
}
/* Removed from the registry (draining, not merely drained by the admin). */
static inline bool wg_instance_removed(const struct wg_instance *i)
{
    int v = atomic_load_explicit(&((struct wg_instance *)i)->health, memory_order_relaxed);
    return v == WG_HEALTH_DRAINING;
}

uint64_t wg_now_ms(void);       /* CLOCK_MONOTONIC in milliseconds */
uint64_t wg_now_ns(void);
uint64_t wg_thread_cpu_ns(void); /* CPU time of the calling thread (preemption excluded) */

#endif
