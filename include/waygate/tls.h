/* tls — OpenSSL 3 contexts and non-blocking TLS I/O (DESIGN §11).
 *
 * Promises:
 *  - Server contexts (one set per TLS listener) are built on the control
 *    thread from the config, then only read: any number of worker threads
 *    may create connections from them. A set is refcounted; each SSL holds
 *    its own reference on its SSL_CTX, so a reload swaps sets while old
 *    connections finish on the old certificates.
 *  - Certificates are chosen by SNI against each certificate's SAN DNS names
 *    (or CN when it has none): exact match first, then a wildcard covering
 *    exactly one label; no SNI or no match: the first certificate. An ECDSA
 *    and an RSA certificate with the same names share one context, and
 *    OpenSSL picks the one the client supports.
 *  - Secure defaults: TLS 1.2+ (min_version), no renegotiation, no
 *    compression, server cipher preference with AES-128-GCM first (Mozilla
 *    intermediate order, OpenSSL's default set); session resumption by stateless
 *    tickets whose keys rotate in-process (no locked session cache). A
 *    ticket resumes only on the listener that issued it, under the same
 *    verify mode and client CA (a per-listener session id context), with
 *    or without client certificates; dirty shutdown (no close_notify) is a
 *    normal end of stream.
 *  - Every I/O call clears the thread's error queue first and maps OpenSSL's
 *    results to WANT_READ / WANT_WRITE / EOF / ERROR.
 *  - Client contexts (upstreams, etcd) verify the chain AND the name:
 *    SSL_set1_host for names, the IP address for IP literals.
 */
#ifndef WAYGATE_TLS_H
#define WAYGATE_TLS_H

#include <openssl/ssl.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

#include "waygate/config.h"
#include "waygate/stats.h"

enum wg_tls_io { WG_TLS_OK, WG_TLS_WANT_READ, WG_TLS_WANT_WRITE, WG_TLS_EOF, WG_TLS_ERROR };

/* ---- server side ---- */

struct wg_tls_cert_info {
    char *path;
    int64_t not_after;          /* seconds since the epoch */
};

struct wg_tls_server;

/* Build the contexts of a TLS listener; NULL with "FILE: message" errors
 * (unreadable files, a key that does not match its certificate). An expired
 * certificate is only a warning (logged). `alpn_http` offers http/1.1. */
struct wg_tls_server *wg_tls_server_new(const struct wg_listener_config *lc, bool alpn_http,
                                        struct wg_errors *errs);
void wg_tls_server_ref(struct wg_tls_server *s);
void wg_tls_server_unref(struct wg_tls_server *s);
/* A new server-side SSL on `fd` (accept state), or NULL. */
SSL *wg_tls_server_ssl(struct wg_tls_server *s, int fd);
size_t wg_tls_server_certs(const struct wg_tls_server *s, const struct wg_tls_cert_info **out);

/* ALPN chose "h2" for this (completed) handshake. Server contexts of http
 * listeners offer the listener's http.protocols, h2 first. */
bool wg_tls_alpn_h2(SSL *ssl);

/* Check that `key` matches `cert` (used by the config check). Returns false
 * and writes a message into err. */
bool wg_tls_check_pair(const char *cert, const char *key, char *err, size_t errlen);

/* Rotate the session-ticket keys (control thread, periodically). Tickets
 * made with the previous two keys stay valid and get renewed. */
void wg_tls_rotate_ticket_keys(void);

/* The verified client certificate's subject (RFC 4514 text), or false when
 * there is no verified client certificate. */
bool wg_tls_client_subject(SSL *ssl, char *buf, size_t len);

/* ---- client side ---- */

/* ca "" = the system store; cert/key "" = no client certificate. */
SSL_CTX *wg_tls_client_ctx_new(const char *ca, const char *cert, const char *key, bool verify,
                               struct wg_errors *errs);
/* A client SSL on `fd`: SNI (`sni`, or `host` when it is a name) and name
 * verification against `sni` or else `host` (a name or an IP literal). */
SSL *wg_tls_client_ssl(SSL_CTX *ctx, int fd, const char *sni, const char *host, bool verify);

/* ---- everything a config needs, built once per config ---- */

struct wg_tls_set {
    size_t n_listeners;
    struct wg_tls_server **listeners;   /* by listener index; NULL: plain */
    size_t n_services;
    SSL_CTX **services;                 /* by service index, [n] = defaults; NULL: plain */
};
/* Build the contexts of every TLS listener and TLS upstream of `cfg`.
 * Returns NULL with errors; a config without TLS gives an empty set. */
struct wg_tls_set *wg_tls_set_new(const struct wg_config *cfg, struct wg_errors *errs);
void wg_tls_set_free(void *set);
struct wg_tls_server *wg_tls_set_listener(const struct wg_tls_set *set, const struct wg_config *cfg,
                                          const struct wg_listener_config *lc);
SSL_CTX *wg_tls_set_service(const struct wg_tls_set *set, const struct wg_config *cfg,
                            const struct wg_service_config *sc);

/* A client SSL to an upstream instance at `addr`: SNI `sni` when set, and
 * verification of `sni`, else of the instance's IP address. */
SSL *wg_tls_upstream_ssl(SSL_CTX *ctx, int fd, const char *sni, bool verify,
                         const struct sockaddr *addr);

/* ---- non-blocking I/O ---- */

enum wg_tls_io wg_tls_handshake(SSL *ssl);
enum wg_tls_io wg_tls_read(SSL *ssl, void *buf, size_t len, size_t *n);
enum wg_tls_io wg_tls_write(SSL *ssl, const void *buf, size_t len, size_t *n);
/* Send close_notify once, without waiting; then SSL_free is safe. */
void wg_tls_close(SSL *ssl);
/* Why the last failed handshake failed, short and static ("protocol",
 * "certificate", "timeout", ...), for metrics. */
const char *wg_tls_error_reason(void);
/* The failure counter of that reason: WG_C_TLS_FAIL_PROTOCOL, _CERTIFICATE
 * or _OTHER (the edge's handshakes, tcp and http alike). */
enum wg_counter wg_tls_failure_counter(void);
/* An upstream handshake failed (tcp and http alike): count and log it. */
void wg_tls_upstream_failed(struct wg_stats_block *stats, const char *service,
                            const char *upstream);

#endif
