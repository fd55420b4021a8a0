/* http_mirror — fire-and-forget copies of requests (the mirror policy,
 * DESIGN §16), fed by the exchange and never waited for.
 *
 * Promises:
 *  - Worker thread only, no lock, no blocking call: a copy goes to an
 *    instance picked by the mirror service's own balance policy and health.
 *    Toward an HTTP/1.1 instance it is a new non-blocking connection on the
 *    worker's event_base, over TLS when the service has `tls.enabled`, with
 *    the client context, SNI and verification the exchange uses toward that
 *    service (tls.h). Toward an h2c/h2 instance it is a stream of the
 *    worker's HTTP/2 upstream pool (upstream_h2.h, shared with the
 *    exchange; h2 with the service's TLS settings and ALPN h2).
 *  - The copy is the head the real upstream got, then the request body as
 *    the exchange forwards it (wg_mirror_tee). HTTP/1.1: with
 *    `Connection: close`, framed for HTTP/1.1 whatever the client and the
 *    real upstream speak: as the head says, Content-Length or chunked.
 *    HTTP/2: the head as fields (wg_h2_request_nv, `te: trailers` for
 *    gRPC), the payload in DATA frames (a chunked body de-chunked). Upgrades
 *    are not copied; trailers of a body the exchange de-chunks (toward an
 *    HTTP/2 upstream), and any trailers toward an HTTP/2 copy, are not
 *    either.
 *  - The body goes into the copy's own buffer, at most the policy's
 *    max_body bytes as the copy sends them (chunk framing included toward
 *    HTTP/1.1, the payload toward HTTP/2): a body over it drops the copy, at
 *    its head when the Content-Length says so, else when the body grows past
 *    it. An HTTP/2 copy's buffer holds only what the stream's own bounded
 *    buffer (WG_H2_BODY_BUF) did not take yet: a mirror whose flow-control
 *    window stays shut holds at most max_body plus that per copy. The real
 *    request is never bounded, delayed or failed by a copy: the tee copies
 *    bytes and schedules the copy's send on the loop, it does no I/O itself.
 *  - The copy's buffer is freed as soon as the whole request was sent (to
 *    the socket, or into the stream); the response is read and discarded;
 *    the connection is closed at its EOF, the stream left at its end, or
 *    either closed (the stream reset, CANCEL) `timeout` after the copy
 *    started, whichever comes first.
 *  - At most max_in_flight copies per worker are open (those still fed by
 *    their exchange included).
 *  - Counted per worker, every chosen request once: sent
 *    (waygate_mirror_sent_total) when the whole request was handed to the
 *    copy; skipped (waygate_mirror_skipped_total) when none was started
 *    (max_in_flight reached, no routable instance, no memory or socket, an
 *    HTTP/2 instance whose pool connections are all full); dropped
 *    (waygate_mirror_dropped_total{reason}) when one was begun but its body
 *    never became whole: max_body, aborted (the real request ended first:
 *    client gone, upstream failure, refusal), failed (the copy's own
 *    connection or stream failed, closed or timed out first).
 *  - Copies still open when the worker thread ends are closed then; the
 *    worker has released its exchanges (wg_mirror_abandon) before.
 */
#ifndef WAYGATE_HTTP_MIRROR_H
#define WAYGATE_HTTP_MIRROR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "waygate/policy.h"

struct wg_worker;
struct wg_mirror_copy;

#define WG_MIRROR_CHUNKED UINT64_MAX    /* wg_mirror_start's body: chunked, length unknown */

/* Start a copy of the request whose upstream head is `head` (complete,
 * ending in CRLF CRLF) to the mirror service of `m` in the worker's current
 * snapshot. `body`: 0 (none), the Content-Length, or WG_MIRROR_CHUNKED.
 * `https`: the client came over TLS (an HTTP/2 copy's :scheme).
 * A copy that waits for its body is put in *owner (else *owner = NULL): the
 * exchange feeds it with wg_mirror_tee and lets go of it with
 * wg_mirror_abandon; a copy that ends first clears *owner itself, so
 * *owner is never left dangling. true when a copy is under way. */
bool wg_mirror_start(struct wg_worker *w, const struct wg_policy_mirror *m, const char *head,
                     size_t len, uint64_t body, bool https, struct wg_mirror_copy **owner);

/* Body bytes the exchange forwards to the real upstream, in order, each
 * once. `framed`: they are the HTTP/1.1 body as the head frames it
 * (chunk sizes and terminator included); else the payload only, which the
 * copy frames itself. `last`: the body is whole with them; the copy then
 * goes on alone. *cp becomes NULL when the copy is whole or dropped. */
void wg_mirror_tee(struct wg_mirror_copy **cp, const char *p, size_t n, bool framed, bool last);

/* The request ends before its body was whole: drop the copy (counted as
 * aborted). No-op when *cp is NULL; *cp is NULL after. */
void wg_mirror_abandon(struct wg_mirror_copy **cp);

/* Copies open now on the calling worker (tests). */
unsigned wg_mirror_in_flight(void);

#endif
