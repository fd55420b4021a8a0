/* jwks — JWKS documents fetched over HTTPS for the jwt policy
 * (`keys: https://...`), on the control thread.
 *
 * Promises:
 *  - Control thread only (the config loader and the control loop run
 *    there); workers never call this module, except wg_jwks_note_unknown_kid
 *    (one relaxed atomic add).
 *  - The cache maps a URL to the last document fetched from it (a JSON
 *    text), kept across reloads. The config loader builds the jwt state from
 *    it: before the first successful fetch a URL has no keys and every token
 *    is refused (401).
 *  - wg_jwks_tick fetches every URL the current config names (cfg->jwks_urls)
 *    when it has never been fetched, every `refresh` (jwt.refresh, default
 *    5m; 10s while it has never succeeded), and at once when a worker saw a
 *    token whose kid no key has, at most once per 10 s. A fetch is an HTTPS
 *    GET (certificate chain and name verified: jwt.keys_ca, else the system
 *    store), bounded by 5 s and 1 MiB. When a fetched document differs from
 *    the cached one, `changed` runs (the control thread reloads the config).
 *  - A failed fetch is logged and changes nothing: the last keys stay.
 */
#ifndef WAYGATE_JWKS_H
#define WAYGATE_JWKS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct event_base;
struct wg_config;

/* The cached document of `url`, or NULL (not fetched yet). */
const char *wg_jwks_cached(const char *url, size_t *len);
/* Start the fetches that are due (see above). */
void wg_jwks_tick(struct event_base *base, const struct wg_config *cfg,
                  void (*changed)(void *arg), void *arg);
/* Worker: a token named a kid that no key has. */
void wg_jwks_note_unknown_kid(void);
/* Free the cache and stop fetches in flight (at exit). */
void wg_jwks_shutdown(void);

#endif
