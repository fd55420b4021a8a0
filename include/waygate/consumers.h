/* consumers — api_key consumers kept in the etcd registry
 * (`api_key: { registry: true }`, docs/policies.md, docs/registry.md).
 *
 * Promises:
 *  - Control thread only. The watch runs on the control thread's
 *    event_base with its own etcd connection (registry.etcd endpoints, TLS,
 *    username/password) when the config has an api_key policy with
 *    `registry: true` and the etcd registry; nothing blocks.
 *  - It lists WG_CONSUMERS_PREFIX, then watches it from the next revision
 *    (on a failed watch: backoff up to 2 s, the next endpoint, listed again).
 *    The cache maps a consumer name (the key's last segment) to its key:
 *    value {"key":"<plain>"} or {"key_sha256":"<64 hex>"}. A value that is
 *    neither is logged and left out.
 *  - When the set changed, `changed` runs once per etcd message (the
 *    control thread reloads the config: the api_key state is rebuilt from
 *    the cache and published to the workers with the config snapshot, so
 *    workers read an immutable table and never lock). etcd unreachable: the
 *    last set stays. Before the first listing the set is empty (every key
 *    is refused, 401).
 */
#ifndef WAYGATE_CONSUMERS_H
#define WAYGATE_CONSUMERS_H

#include <stdbool.h>
#include <stddef.h>

#define WG_CONSUMERS_PREFIX "/waygate/consumers/"

struct event_base;
struct wg_config;

/* Call fn for every cached consumer (sorted by name); key is the plain key
 * or "sha256:<hex>". */
void wg_consumers_each(void (*fn)(void *arg, const char *name, const char *key), void *arg);
/* Start the watch when `cfg` wants it and it does not run yet; stop it when
 * `cfg` no longer wants it (start-up and every reload). */
void wg_consumers_sync(struct event_base *base, const struct wg_config *cfg,
                       void (*changed)(void *arg), void *arg);
/* Stop the watch and free the cache (at exit, before the base). */
void wg_consumers_shutdown(void);

#endif
