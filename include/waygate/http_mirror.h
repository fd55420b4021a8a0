/* http_mirror — fire-and-forget copies of requests (the mirror policy,
 * DESIGN §16), sent by the exchange and never waited for.
 *
 * Promises:
 *  - Worker thread only, no lock, no blocking call: a copy is a new
 *    non-blocking connection on the worker's event_base to an instance
 *    picked by the mirror service's own balance policy and health.
 *  - The copy is the head the real upstream got, with `Connection: close`;
 *    only requests without a body are copied (a body would have to be held
 *    or teed; both would delay or bound the real request). Upgrades are not
 *    copied. The response is read and discarded; the connection is closed
 *    at its EOF or after the policy's timeout, whichever comes first.
 *  - At most max_in_flight copies per worker are open; a copy beyond that,
 *    or without a routable instance, is skipped and counted
 *    (waygate_mirror_skipped_total); sent copies are counted too
 *    (waygate_mirror_sent_total). Nothing of this touches the real request.
 *  - Copies still open when the worker thread ends are closed then.
 *  - Plain TCP only: a mirror service with `tls.enabled` is skipped.
 */
#ifndef WAYGATE_HTTP_MIRROR_H
#define WAYGATE_HTTP_MIRROR_H

#include <stdbool.h>
#include <stddef.h>

#include "waygate/policy.h"

struct wg_worker;

/* Copy `head` (a complete request head, ending in CRLF CRLF, no body) to
 * the mirror service of `m` in the worker's current snapshot. true when a
 * copy went out. */
bool wg_mirror_send(struct wg_worker *w, const struct wg_policy_mirror *m, const char *head,
                    size_t len);

/* Copies open now on the calling worker (tests). */
unsigned wg_mirror_in_flight(void);

#endif
