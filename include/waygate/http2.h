/* http2 — the HTTP/2 downstream codec (DESIGN §15), over libnghttp2.
 *
 * A client connection that negotiated "h2" by ALPN on a TLS listener, or
 * sent the HTTP/2 preface on a plain listener with `http.h2c: true` (prior
 * knowledge only: the HTTP/1.1 `Upgrade: h2c` dance is not offered, as
 * HAProxy does not), is handed over by the HTTP/1.1 codec (http1.c) after
 * the PROXY header and the TLS handshake; every stream then becomes one
 * proxy exchange (exchange.h), the same as an HTTP/1.1 request.
 *
 * Promises:
 *  - nghttp2 is driven with nghttp2_session_mem_recv / mem_send on the
 *    worker's own loop: no thread, no lock, no blocking call.
 *  - Request mapping: :method, :path and :authority (the Host for routing;
 *    a Host header that disagrees is a 400) become an HTTP/1.1 request head
 *    checked by the same http.h parser as HTTP/1.1 clients' heads, so every
 *    DESIGN §10 rule holds. Cookie crumbs are joined with "; " (RFC 9113
 *    §8.2.3). Connection-specific fields and TE other than "trailers" are a
 *    stream error (nghttp2's RFC 9113 §8.2.2 checks). A body without
 *    content-length goes upstream chunked; request trailers follow it.
 *  - Flow control is end to end: no automatic WINDOW_UPDATE; a stream's
 *    window reopens (nghttp2_session_consume) only for bytes the upstream
 *    accepted, so a stream buffers at most one window (64 KiB) of request
 *    body. Response bodies go out through deferred data providers that read
 *    the upstream's block and resume when the exchange has read more: at
 *    most one block per stream, the upstream is not read while the client's
 *    window is closed.
 *  - Responses: hop-by-hop fields dropped, names lower-cased, a chunked
 *    body de-chunked into DATA frames, its trailer fields a trailing
 *    HEADERS frame (nghttp2_submit_trailer) that ends the stream.
 *  - Limits (http: keys, safe defaults): max_concurrent_streams (100);
 *    the decoded header list of a request over max_header_size is a 431;
 *    more than 8 CONTINUATION frames or 2 x max_header_size of header
 *    block bytes before END_HEADERS, more than h2_max_resets_per_second
 *    client RST_STREAMs, or more than h2_max_control_frames_per_second
 *    SETTINGS / PING / WINDOW_UPDATE / PRIORITY / empty DATA frames end
 *    the connection with GOAWAY ENHANCE_YOUR_CALM; a HPACK table-size update
 *    above our 4 KiB SETTINGS_HEADER_TABLE_SIZE is a COMPRESSION_ERROR, and
 *    our encoder's table stays at 4 KiB whatever the client allows. A
 *    stream whose response cannot move for send_timeout (zero window) is
 *    reset; a connection whose socket does not drain for send_timeout is
 *    closed. Other connections never notice.
 *  - Drain (SIGTERM): GOAWAY with the last stream id; streams in flight
 *    finish (within shutdown_timeout); the connection closes when none is
 *    left. Idle connections close after client_idle_timeout with GOAWAY.
 */
#ifndef WAYGATE_HTTP2_H
#define WAYGATE_HTTP2_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/ssl.h>
#include <stddef.h>
#include <stdint.h>

#include "waygate/cidr.h"

struct wg_worker;
struct wg_listener;

/* What the HTTP/1.1 codec hands over. */
struct wg_http2_client {
    int fd;
    SSL *ssl;                           /* NULL: h2c */
    char *cert_subject;                 /* malloc'ed or NULL; owned by the codec on success */
    uint16_t client_port;
    char client_ip[INET6_ADDRSTRLEN];
    struct wg_ip peer;                  /* for trusted_proxies */
};

/* Take the connection over (worker thread): `pre` holds the bytes already
 * read from the client (the preface, for h2c). 0: the fd, the SSL, the
 * subject and the connection's max_connections slot are the codec's now;
 * -1: nothing was taken (out of memory). */
int wg_http2_accept(struct wg_worker *w, const struct wg_listener *l,
                    const struct wg_http2_client *cl, const char *pre, size_t pre_len);

#endif
