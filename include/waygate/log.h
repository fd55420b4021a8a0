/* log — leveled, one-line, key=value logs; and the access log (below).
 *
 * Promises:
 *  - Each message is formatted into one buffer and written with a single
 *    write(2) to stderr, so lines from different threads never interleave.
 *  - Callable from any thread; never takes a lock; never allocates.
 *  - Messages below the current level cost one atomic load.
 */
#ifndef WAYGATE_LOG_H
#define WAYGATE_LOG_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "waygate/config.h"

void wg_log_set_level(enum wg_log_level level);
enum wg_log_level wg_log_level(void);
void wg_log(enum wg_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define wg_debug(...) do { if (wg_log_level() <= WG_LOG_DEBUG) wg_log(WG_LOG_DEBUG, __VA_ARGS__); } while (0)
#define wg_info(...)  wg_log(WG_LOG_INFO, __VA_ARGS__)
#define wg_warn(...)  wg_log(WG_LOG_WARN, __VA_ARGS__)
#define wg_error(...) wg_log(WG_LOG_ERROR, __VA_ARGS__)

/* ---- access log (src/log_access.c) ----
 *
 * One line per HTTP request and per TCP connection, written to
 * log.access_log (a path, "stdout" or "off") in log.access_format (text or
 * json; docs/operations.md "Access log" shows both).
 *
 * Promises:
 *  - Workers never block on it and take no lock: each worker formats its
 *    lines into its OWN ring (struct wg_worker_log, 1 MiB), a single-producer
 *    single-consumer byte ring whose head only the worker moves and whose
 *    tail only the writer moves (acquire/release atomics). A writer thread
 *    drains every ring to the file at least every 50 ms, and at once when a
 *    ring is half full (an eventfd kick: one non-blocking write(2)).
 *  - A slow or full disk blocks only the writer thread: a line that does not
 *    fit in its worker's ring is dropped and counted
 *    (wg_access_log_dropped(), waygate_access_log_dropped_total). Lines that
 *    a failed write(2) loses are counted there too.
 *  - Lines are whole: a ring holds only complete lines, and the single
 *    writer writes a ring's pending lines out completely (partial writes
 *    continued) before it touches another ring, so lines never interleave.
 *  - With access_log: off, wg_access_log() returns after one atomic load.
 */

/* What is known about one HTTP request or one TCP connection when it ends.
 * Every pointer is read during the wg_access_log() call only. A NULL string
 * is written "-" (text) or null (json). Strings are escaped; overlong ones
 * are cut where their escaped form passes 4 KiB (the path) or 384 bytes
 * (the others), and end in "...". */
struct wg_access_entry {
    const char *client;         /* "IP:port" of the client ([v6]:port) */
    const char *listener;       /* the listener's name */
    const char *service;        /* NULL: not routed */
    const char *upstream;       /* the instance id; NULL: no instance reached */
    const char *method;         /* http: "GET"...; tcp: NULL */
    const char *path;           /* http: the request target as received; tcp: NULL */
    size_t path_len;            /* bytes of `path` (it need not be NUL-terminated) */
    const char *request_id;     /* http: X-Request-Id sent upstream; tcp: NULL */
    size_t request_id_len;
    unsigned status;            /* http: the status sent to the client; 0: none (tcp,
                                 * or the client went away before any response) */
    const char *reason;         /* how it ended: tcp "eof", "idle_timeout"...; http
                                 * NULL after a complete response, else e.g.
                                 * "client_closed", "timeout" (below) */
    uint64_t bytes_in;          /* from the client (body and head bytes for http) */
    uint64_t bytes_out;         /* to the client */
    uint64_t duration_us;       /* accept (tcp) or first request byte (http) to the end */
    int64_t connect_us;         /* upstream connect of the last attempt; 0: a pooled
                                 * connection was reused; -1: no connection made */
    unsigned retries;           /* upstream attempts after the first */
    uint32_t stream_id;         /* HTTP/2 stream id (the line ends "proto=h2 stream=N");
                                 * 0: HTTP/1.1 or tcp (no such keys) */
    int grpc_code;              /* gRPC calls: the grpc-status the client got + 1 (key
                                 * grpc_code, its name); 0: not gRPC or none (no key),
                                 * so a zero-initialised entry has none */
    const char *trace_id;       /* http: the W3C trace id (trace policy); NULL: the
                                 * field is left out of the line */
    const char *kind;           /* NULL: a request's or connection's line (no such
                                 * key); "auth": a forward_auth subrequest's own
                                 * line (key kind, last) */
};

/* Per-worker handle (struct wg_worker.access_log). wg_worker_log_new() and
 * wg_worker_log_free() run on the control thread (worker init and free);
 * free writes out what the ring still holds. */
struct wg_worker_log;
struct wg_worker_log *wg_worker_log_new(void);
void wg_worker_log_free(struct wg_worker_log *wl);

/* Worker thread, `wl` its own handle: format `e` with the current format and
 * append the line to the ring, or drop and count it when the ring is full.
 * Never blocks, never locks, never allocates.
 *
 * The HTTP proxy calls it exactly once per request, when the request is over
 * (its last response byte handed to the client socket, or it ended early:
 * an error answered, a timeout, a close by either side), after the status is
 * known and BEFORE the request's references (service, instance, config,
 * head buffer holding the path) are dropped, i.e. before release_request():
 *     wg_access_log(c->w->access_log, &(struct wg_access_entry){
 *         .client = "IP:port", .listener = c->l->name,
 *         .service = c->svc ? c->svc->name : NULL,
 *         .upstream = c->inst ? c->inst->id : NULL,
 *         .method = wg_http_method_name(c->method),
 *         .path = <target bytes>, .path_len = <its length>,
 *         .request_id = <X-Request-Id sent>, .request_id_len = <its length>,
 *         .status = <status sent, 0 if none>, .reason = NULL or e.g.
 *             "client_closed", "timeout", "upstream_error" (documented in
 *             docs/operations.md "Access log"),
 *         .bytes_in = <this request's bytes from the client>,
 *         .bytes_out = <this response's bytes to the client>,
 *         .duration_us = <first request byte to now>,
 *         .connect_us = <last attempt's connect; 0 reused; -1 none>,
 *         .retries = c->attempts > 1 ? c->attempts - 1 : 0 });
 * A request answered without an upstream (404 no route, 503, 400...) is
 * logged too, with its status and NULL upstream. The TCP proxy calls it once
 * per accepted connection, when it closes. */
void wg_access_log(struct wg_worker_log *wl, const struct wg_access_entry *e);

/* Whether access lines are written at all (one atomic load): a caller may
 * skip building what only the line needs. */
bool wg_access_log_enabled(void);

/* Control thread. Apply cfg->log.access_log and access_format: open the
 * file (O_APPEND, created 0644) and start the writer thread on first use.
 * On failure (the file cannot be opened) returns -1 after logging why, and
 * the previous destination stays in use. Call at start and on every reload. */
int wg_access_log_open(const struct wg_config *cfg);
/* Control thread (SIGUSR1): reopen the file by its path, e.g. after
 * logrotate renamed it; lines already buffered go to the new file. */
void wg_access_log_reopen(void);
/* Any thread but a worker: write out every ring now (waits for the disk). */
void wg_access_log_flush(void);
/* Control thread, after the workers stopped: flush, stop the writer thread,
 * close the file. wg_access_log_open() may start it again. */
void wg_access_log_close(void);
/* Control thread: lines dropped (ring full or write error) since start,
 * all workers. */
uint64_t wg_access_log_dropped(void);

/* The line for `e` at wall-clock time `now` in format `fmt`, newline
 * included, into buf (cap >= WG_ACCESS_LINE_MAX). Returns its length. Pure:
 * exported for the unit tests. */
#define WG_ACCESS_LINE_MAX 8192
size_t wg_access_format(enum wg_access_format fmt, const struct wg_access_entry *e,
                        const struct timespec *now, char *buf, size_t cap);

#endif
