/* config_value — the value grammar of DESIGN §5 (durations, sizes,
 * addresses, status lists, integers), with a reason for every refusal.
 * Private to the config and record modules; the public bool-returning
 * wrappers are declared in waygate/config.h.
 *
 * Every function returns NULL on success, or a static English reason
 * ("duration needs a unit (ms, s, m, h)") that callers place after the key
 * name and before the offending value.
 */
#ifndef WAYGATE_CONFIG_VALUE_H
#define WAYGATE_CONFIG_VALUE_H

#include <stdbool.h>
#include <stdint.h>

#include "waygate/config.h"

#define WG_DURATION_MAX_MS (365ULL * 24 * 3600 * 1000)   /* 8760h */
#define WG_SIZE_MAX_BYTES (1ULL << 40)                    /* 1 TiB */

const char *wg_duration_reason(const char *s, uint64_t *ms);
const char *wg_size_reason(const char *s, uint64_t *bytes);
const char *wg_addr_reason(const char *s, struct wg_addr *out);
const char *wg_status_reason(const char *s, struct wg_status_ranges *out);

/* Decimal digits only (no sign, no spaces), at most `max`. */
const char *wg_uint_reason(const char *s, uint64_t max, uint64_t *out);

/* An IP literal without port ("10.0.0.5", "::1" or "[::1]") into *ss with
 * `port`; false for anything else, hostnames included. */
bool wg_ip_literal(const char *s, uint16_t port, struct sockaddr_storage *ss,
                   socklen_t *len);

/* 127.0.0.0/8, ::1 and ::ffff:127.0.0.0/104. */
bool wg_addr_is_loopback(const struct wg_addr *a);
/* Same family, address and port. */
bool wg_addr_same(const struct wg_addr *a, const struct wg_addr *b);

/* A service name: non-empty, at most 255 bytes, no '/', spaces or
 * control characters (it is one etcd key segment). */
bool wg_service_name_ok(const char *s);

/* RFC 9110 token characters (header names, methods). */
bool wg_is_token(const char *s);

#endif
