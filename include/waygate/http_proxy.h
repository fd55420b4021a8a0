/* http_proxy — the L7 path of `mode: http` listeners (DESIGN §5, §6, §10,
 * §13, §15): where an accepted connection enters.
 *
 * Three layers (h2o's http1 / http2 / proxy split; HAProxy's muxes):
 *   src/http1.c     the HTTP/1.1 downstream codec: PROXY header, TLS
 *                   handshake, ALPN; request heads parsed in place (http.h);
 *                   responses written as HTTP/1.1; keep-alive, lingering close.
 *                   A connection that negotiated h2 (ALPN) or sent the h2c
 *                   preface (http.h2c: true) goes to ...
 *   src/http2.c     the HTTP/2 downstream codec (http2.h), one exchange per
 *                   stream.
 *   src/exchange.c  one proxy exchange (exchange.h), protocol-neutral:
 *                   route -> policy hooks -> pick (balance.h) -> an idle
 *                   pooled connection or a new one (upstream_pool.h) ->
 *                   forward the rewritten head and the body -> parse the
 *                   response head -> hand it to the codec with its body ->
 *                   retries, deadlines, access log, stats.
 *
 * The promises below hold for both client protocols unless they say
 * HTTP/1.1 (an HTTP/2 stream never tunnels, lingers or keeps alive).
 *
 * Promises:
 *  - Raw non-blocking sockets, edge-triggered, on the worker's event_base;
 *    no lock, no blocking call. Buffers are 16 KiB blocks (2 KiB for the
 *    heads waygate writes) from per-worker free lists, taken when bytes
 *    arrive and given back when drained; a request's state is taken with its
 *    first byte and given back when it ends: an idle keep-alive client holds
 *    only its connection (under 500 bytes; no buffer, no parser, no request
 *    state), an idle pooled upstream connection holds no buffer either.
 *  - Bounded buffering both ways: at most one block of unforwarded body per
 *    direction; a side is not read while the other side has not taken what
 *    was read (backpressure). Body bytes are forwarded as received
 *    (Content-Length or chunked, trailers included), straight from the block
 *    they were read into; only a chunked response to an HTTP/1.0 client is
 *    de-chunked (in place).
 *  - Heads are rewritten in one pass (DESIGN §10): hop-by-hop fields
 *    removed, X-Forwarded-For appended, X-Forwarded-Proto/-Host set,
 *    X-Request-Id generated when absent, X-Client-Cert-* stripped, Host
 *    passed through, absolute-form targets sent in origin form. Request
 *    field names with '_' are dropped unless http.allow_underscores, and
 *    the '_' spellings of the fields waygate sets are dropped always.
 *    Every field a Connection header names is hop-by-hop, however many.
 *  - trusted_proxies (DESIGN §10): from an untrusted peer, inbound
 *    X-Forwarded-*, X-Real-IP and Forwarded are replaced; behind a trusted
 *    one the chain is kept and the client address (X-Real-IP, hash_key
 *    client_ip, access log) is the first untrusted X-Forwarded-For hop from
 *    the right. proxy_protocol listeners close untrusted peers at accept.
 *  - Interim (1xx) heads: at most 16 per request (then 502); the upstream
 *    is not read while one still waits for the client.
 *  - Each request pins the config current when its first byte arrives (its
 *    listener's routes and http settings) and the service version it was
 *    routed to; instance->active counts it while in flight.
 *  - Retries (DESIGN §6) go to instances not yet tried, up to the route's or
 *    service's `retries`: on connect failure or connect_timeout (any
 *    method), and on a reset or EOF before the first response byte when the
 *    body is still held whole and the method is idempotent (or the route or
 *    service sets retry_non_idempotent). A stale pooled connection is retried
 *    for free on a new connection, under the same method rule. Nothing is
 *    retried once a byte reached the client. An upstream connection that saw
 *    its peer's FIN or reset is never pooled.
 *  - Timeouts are deadlines: client_header_timeout from the request's first
 *    byte (408), client_idle_timeout between requests, response_timeout from
 *    the end of the request (504 before any response byte, else close),
 *    connect_timeout per attempt. client_body_timeout, send_timeout (both
 *    toward the client and toward the upstream: 504 before any response
 *    byte) and tunnel_idle_timeout bound a period without progress. A client
 *    reset is seen while its request waits for a non-reading upstream.
 *  - Errors are answered with a short text body (DESIGN §13) and, for
 *    anything malformed, the connection is closed after a lingering close
 *    (at most 30 s, 5 s without a byte; at most 1024 per worker, past that
 *    an immediate close).
 */
#ifndef WAYGATE_HTTP_PROXY_H
#define WAYGATE_HTTP_PROXY_H

#include <sys/socket.h>

struct wg_worker;
struct wg_listener;

void wg_http_proxy_accept(struct wg_worker *w, const struct wg_listener *l, int fd,
                          const struct sockaddr *peer, socklen_t peerlen);

#endif
