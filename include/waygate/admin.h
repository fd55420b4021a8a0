/* admin — the admin API (DESIGN §12): /status, /metrics, /ready, /live,
 * drain/enable actions and the HTML dashboard, served with libevent's evhttp
 * on the control thread's event_base.
 *
 * Promises:
 *  - Every function here runs on the control thread, and so do all the
 *    callbacks: the admin reads the published snapshot (wg_pool_published),
 *    the atomics on instances and services, the summed per-worker counters
 *    (wg_stats_sum) and the registry status. It never sends anything to a
 *    worker and never waits on the data plane.
 *  - /status and /metrics are streamed: at most ~64 KiB is generated ahead of
 *    what the client has read, whatever the number of instances, so a slow
 *    or huge scrape costs bounded memory. A streamed reply pins the snapshot
 *    it started with (one reference) until it ends or its client goes away,
 *    so one reply is one consistent list of services and instances; health
 *    and counters are read live as the reply is written.
 *  - Strings from the registry (service names, instance ids) are escaped
 *    for JSON and for Prometheus label values; bytes that are not UTF-8 are
 *    replaced with U+FFFD.
 *  - POST /services/NAME/instances/ID/drain and .../enable act on the
 *    instance of the published snapshot with wg_instance_admin_drain()
 *    (pool.h); the data plane sees the change on its next pick.
 *  - The admin keeps no pointer into the configuration it was created from
 *    (a reload may free it).
 */
#ifndef WAYGATE_ADMIN_H
#define WAYGATE_ADMIN_H

#include <stdbool.h>
#include <stddef.h>

#include "waygate/config.h"

struct event_base;
struct wg_admin;
struct wg_pool;
struct wg_registry;

/* Bind cfg->admin.listen (the config already refused a non-loopback address
 * without allow_remote) and serve on `base`. Call it before dropping
 * privileges. Returns NULL with one line in `errs` ("admin.listen ADDR:
 * REASON") when the address cannot be bound or memory runs out. Until
 * wg_admin_set_ready(true), /ready answers 503. */
struct wg_admin *wg_admin_new(struct event_base *base, const struct wg_config *cfg,
                              struct wg_pool *pool, struct wg_errors *errs);

/* The registry whose status /status and /metrics show (it is created after
 * the admin binds). NULL, the default, shows source "none", disconnected.
 * `registry` must outlive the admin or be replaced first. */
void wg_admin_set_registry(struct wg_admin *a, const struct wg_registry *registry);

/* The fleet whose live set /status, /metrics and the dashboard show, and
 * the shared-health role (NULL: none, the default). Both must outlive the
 * admin or be replaced first. */
struct wg_fleet;
struct wg_health_shared;
void wg_admin_set_fleet(struct wg_admin *a, const struct wg_fleet *fleet,
                        const struct wg_health_shared *shared);

/* The control thread's serving listeners (read at each scrape, on the
 * control thread: the array may change with reloads). */
struct wg_listener;
void wg_admin_set_listeners(struct wg_admin *a, struct wg_listener *const *const *listeners,
                            const size_t *n);

/* /ready answers 200 "ready" when true, 503 "not ready" when false: true once
 * the listeners accept, false again when the graceful stop begins. */
void wg_admin_set_ready(struct wg_admin *a, bool ready);

/* Close the admin socket and every admin connection, ending streamed replies
 * and releasing the snapshots they pinned. Call before freeing the pool and
 * the event_base. NULL is ignored. */
void wg_admin_free(struct wg_admin *a);

/* The dashboard served at GET / (admin_dashboard.c): one self-contained
 * HTML page that polls /status every second. */
extern const char wg_admin_dashboard_html[];
extern const size_t wg_admin_dashboard_html_len;

#endif
