/* registry_cache — registry.cache: the last-known pools on disk (private to
 * the registries).
 *
 * Promises:
 *  - wg_registry_cache_publish() only takes a snapshot reference and wakes
 *    the writer thread: the file is written off the event loop, at most once
 *    a second (the latest snapshot wins), atomically (temp file, fsync,
 *    rename, fsync of the directory).
 *  - The file is in the file-registry format (DESIGN §5), so it can also be
 *    read by hand or served with registry.file.
 */
#ifndef WAYGATE_REGISTRY_CACHE_H
#define WAYGATE_REGISTRY_CACHE_H

#include <stdbool.h>

#include "waygate/record.h"

struct wg_pool;
struct wg_snapshot;
struct wg_registry_cache;

/* NULL when out of memory or the thread cannot start (logged). */
struct wg_registry_cache *wg_registry_cache_new(const char *path);
/* Queue `s` (the snapshot just published; a reference is taken). */
void wg_registry_cache_publish(struct wg_registry_cache *c, struct wg_snapshot *s);
/* Read the cache: false when absent or unreadable (logged). */
bool wg_registry_cache_load(struct wg_registry_cache *c, struct wg_record_set *out);
/* Load the cache (NULL: none) and publish it as the pools, for a registry
 * whose source did not answer at start; logs what it did, naming `source`. */
void wg_registry_cache_serve(struct wg_registry_cache *c, struct wg_pool *pool,
                             const char *source);
/* Write what is queued, stop the thread, free. NULL ignored. */
void wg_registry_cache_free(struct wg_registry_cache *c);

#endif
