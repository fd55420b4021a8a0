/* registry_map — the table of registry keys and the services they fill,
 * shared by the registries that follow a key-value store (etcd, ZooKeeper);
 * private to them.
 *
 * Promises:
 *  - A key holds the records of one value (all of one service); putting a
 *    key replaces them, deleting it removes them. Each change marks its
 *    service dirty; rmap_stage() stages every dirty service into the pool
 *    (its records sorted by id, one per id) and forgets emptied services,
 *    so a caller commits one snapshot for any number of changes.
 *  - Control thread only; no I/O.
 */
#ifndef WAYGATE_REGISTRY_MAP_H
#define WAYGATE_REGISTRY_MAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <netinet/in.h>

#include "waygate/record.h"

struct wg_pool;

struct hnode {
    struct hnode *next;
    uint64_t hash;
    char *name;
};

struct htable {
    struct hnode **b;
    size_t cap, n;
};

struct svc;

/* One instance as the map keeps it: a wg_record without the service (the
 * key's service has it) and with an address sized for IPv4 and IPv6 only
 * (AF_UNSPEC while a host name resolves). 56 bytes, where a wg_record with
 * its service string is ~200: the map holds every registered instance. */
struct rmap_rec {
    char *id;
    char *metadata;
    uint32_t weight;
    socklen_t addrlen;
    struct sockaddr_in6 addr;       /* a sockaddr_in fits at its start */
    uint8_t protocol;               /* record.h: the protocol marker */
    bool grpc_endpoint;
    struct sockaddr_in6 *grpc_addr; /* a Kratos grpc:// beside http://, or NULL */
};

/* The instances one key holds (go-micro: several); a single one is kept
 * inline, and the key after the entry (one allocation). */
struct key_entry {
    struct hnode h;                 /* h.name: the key */
    struct svc *svc;
    struct key_entry *prev, *next;  /* the service's keys */
    struct rmap_rec *recs;          /* &one, or an array for several */
    size_t n;
    uint64_t seq;                   /* changes with every value (DNS answers check it) */
    uint64_t mark;                  /* the owner's (ZooKeeper: the listing that saw it) */
    struct rmap_rec one;
};

struct svc {
    struct hnode h;                 /* h.name: the service */
    struct key_entry *keys;
    size_t n_records;
    bool dirty;
    struct svc *dirty_next;
};

struct keymap {
    struct htable keys, svcs;
    struct svc *dirty;
};

struct hnode *rmap_find(const struct htable *t, const char *name);
void rmap_remove(struct htable *t, struct hnode *n);
void rmap_mark(struct keymap *m, struct svc *s);
/* Replace what `key` holds with `set` (non-empty, all of one service;
 * taken, also on failure). NULL when out of memory. */
struct key_entry *rmap_put(struct keymap *m, const char *key, struct wg_record_set *set);
bool rmap_delete(struct keymap *m, const char *key);
/* Delete every key whose mark is below `mark`; the count deleted. */
size_t rmap_sweep(struct keymap *m, uint64_t mark);
/* Insert a node into a table (name set by the caller). */
bool rmap_insert(struct htable *t, struct hnode *n);
void rmap_clear(struct keymap *m);
/* Stage every dirty service (rmap_put/rmap_delete/rmap_mark). */
void rmap_stage(struct wg_pool *pool, struct keymap *m);
/* The map replaces the pools (a list's result): every service of the map
 * staged (unchanged ones stay as they are), every published service it
 * lacks removed, one commit. One service's records at a time: no copy of
 * every record (1,000,000 instances: ~300 MB) and no sort of them. Returns
 * the usable records published, or -1 when a service could not be staged
 * (it keeps its last pool). */
long rmap_replace_all(struct wg_pool *pool, struct keymap *m);

/* ---- host names (DESIGN §7: resolved asynchronously on the control thread) ----
 *
 * A record whose value named a host has address family AF_UNSPEC (it is
 * not routed) until the answer comes. An answer for a key whose value
 * changed since (seq) is dropped. An answer for a key of the `live` map
 * fills the address and calls commit(arg) (the caller stages and
 * publishes: one snapshot); for a key of the map staging(arg) returns (a
 * listing still running) it only fills the address. A name that does not
 * resolve leaves the record out and counts it in *invalid. */
struct rmap_lookup;
struct evdns_base;
struct rmap_resolver {
    struct evdns_base *dns;
    struct keymap *live;
    struct keymap *(*staging)(void *arg);   /* NULL, or returns NULL: none */
    void (*commit)(void *arg);
    void *arg;
    uint64_t *invalid;
    struct rmap_lookup *lookups;
};
/* Resolve every host of `h` for the records of entry `e`. */
void rmap_resolve(struct rmap_resolver *res, struct key_entry *e, const struct wg_record_hosts *h);
/* Cancel every lookup in flight. Each is freed by its cancel callback,
 * which libevent defers: the loop runs it (a reload), or the caller runs one
 * non-blocking pass of the loop before freeing the base (shutdown). */
void rmap_resolver_cancel(struct rmap_resolver *res);

#endif
