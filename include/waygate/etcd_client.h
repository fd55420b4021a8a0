/* etcd_client — etcd v3 JSON-gateway client (DESIGN §8) on bufferevents.
 *
 * Two layers:
 *  - Pure parts (no I/O, unit-tested and fuzzed): base64, a response
 *    reader that turns the raw bytes of one HTTP/1.1 response (any split)
 *    into messages — the whole body of a unary response, or each
 *    newline-separated JSON message of a chunked watch stream, whose
 *    boundaries need not match chunk boundaries — and decoders of the JSON
 *    messages (int64 fields arrive as strings, zero fields are omitted).
 *  - Calls: one HTTP request on its own connection (http:// or https://
 *    with CA, client certificate and name verification), non-blocking, on
 *    the caller's event_base. Host names of endpoints are resolved with
 *    evdns. Every response is parsed with the project's http module.
 *
 * Promises:
 *  - Nothing blocks the event loop; every call ends with exactly one end
 *    callback unless cancelled first; no callback runs after a cancel.
 *  - A callback may cancel its own call (or any other).
 */
#ifndef WAYGATE_ETCD_CLIENT_H
#define WAYGATE_ETCD_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "waygate/http.h"

struct event_base;
struct evdns_base;

/* ---- base64 (standard alphabet, padded) ---------------------------------- */

/* Encoded text of `len` bytes, NUL-terminated, malloc'd; NULL on OOM. */
char *wg_base64_encode(const void *data, size_t len);
/* Decode into a malloc'd buffer (NUL-terminated for convenience). Returns
 * false on invalid input or OOM. */
bool wg_base64_decode(const char *text, size_t len, char **out, size_t *out_len);

/* ---- response reader (pure) ------------------------------------------------ */

enum wg_etcd_read {
    WG_ETCD_READ_ERROR = -1,    /* malformed or too large: reason in r->why */
    WG_ETCD_READ_AGAIN = 0,     /* need more bytes */
    WG_ETCD_READ_DONE = 1       /* the response ended; later bytes are ignored */
};

/* Called with each message: the body of a unary response (also when empty),
 * or each non-empty line of a stream body (without its '\n'). The bytes are
 * valid during the call only. Return false to stop reading (the feed then
 * returns ERROR with why "stopped"). */
typedef bool (*wg_etcd_message_fn)(void *arg, const char *msg, size_t len);

#define WG_ETCD_HEAD_MAX (32u * 1024u)
#define WG_ETCD_HEADERS_MAX 32

struct wg_etcd_reader {
    bool stream;                    /* split the body on '\n' */
    size_t max_message;
    struct wg_http_parser parser;
    struct wg_http_header headers[WG_ETCD_HEADERS_MAX];
    struct wg_http_body body;
    bool head_done;
    bool done;
    unsigned status;                /* HTTP status once the head is parsed */
    char *head;                     /* the head bytes so far */
    size_t head_len, head_cap;
    char *payload;                  /* de-chunked body bytes not yet delivered */
    size_t payload_len, payload_cap;
    size_t scanned;                 /* payload bytes known to hold no '\n' */
    const char *why;                /* static reason of an ERROR */
};

void wg_etcd_reader_init(struct wg_etcd_reader *r, bool stream, size_t max_message);
void wg_etcd_reader_free(struct wg_etcd_reader *r);
/* Feed the next `len` bytes from the connection. */
enum wg_etcd_read wg_etcd_reader_feed(struct wg_etcd_reader *r, const char *data, size_t len,
                                      wg_etcd_message_fn fn, void *arg);
/* The peer closed: DONE if the response was complete (or runs until
 * close; any last unterminated stream line is delivered), else ERROR. */
enum wg_etcd_read wg_etcd_reader_eof(struct wg_etcd_reader *r, wg_etcd_message_fn fn, void *arg);

/* ---- messages (pure) ---------------------------------------------------------- */

struct wg_etcd_header {
    uint64_t cluster_id;
    uint64_t member_id;
    int64_t revision;
    uint64_t raft_term;
};

struct wg_etcd_kv {
    char *key;                      /* decoded bytes, NUL-terminated */
    size_t key_len;
    char *value;                    /* decoded bytes, NUL-terminated ("" if none) */
    size_t value_len;
    int64_t create_revision, mod_revision, version, lease;
};

struct wg_etcd_event {
    bool deleted;                   /* "type":"DELETE"; a PUT has no type */
    struct wg_etcd_kv kv;
};

struct wg_etcd_watch_response {
    struct wg_etcd_header header;
    int64_t watch_id;
    bool created, canceled, fragment;
    int64_t compact_revision;
    char cancel_reason[160];
    int error_code;                 /* grpc_code of {"error":{...}}, else 0 */
    char error_message[160];
    struct wg_etcd_event *events;
    size_t n_events;
};

struct wg_etcd_range_response {
    struct wg_etcd_header header;
    struct wg_etcd_kv *kvs;
    size_t n_kvs;
    bool more;
    int64_t count;
};

/* Decode one watch stream message. False (with a reason) when it is not a
 * well-formed {"result":...} or {"error":...} message. */
bool wg_etcd_parse_watch(const char *msg, size_t len, struct wg_etcd_watch_response *out,
                         const char **why);
void wg_etcd_watch_response_free(struct wg_etcd_watch_response *w);
/* A progress notification: no events, not created/canceled, not a fragment. */
bool wg_etcd_watch_is_progress(const struct wg_etcd_watch_response *w);

bool wg_etcd_parse_range(const char *msg, size_t len, struct wg_etcd_range_response *out,
                         const char **why);
void wg_etcd_range_response_free(struct wg_etcd_range_response *r);
/* The key a range page ends with when the page says "more":true, found
 * without parsing it (keys and values are base64, which holds no quote, so
 * the last `"key":"` is the last kv's): what the next page's request needs,
 * sent before the page is parsed. Decoded into a malloc'd *key. false when
 * the page does not say more or the text is not that compact shape (then
 * parse it first); wg_etcd_parse_range stays the authority. */
bool wg_etcd_range_peek_last_key(const char *msg, size_t len, char **key, size_t *key_len);

/* The error of a plain request's body, {"error":"...","code":N}: the code
 * (0 when the body is not such an error); message into msg[msg_len]. */
int wg_etcd_parse_error(const char *body, size_t len, char *msg, size_t msg_len);
/* {"header":...,"token":"..."} of /v3/auth/authenticate: malloc'd token. */
char *wg_etcd_parse_token(const char *body, size_t len);

/* Request bodies (malloc'd JSON text, NULL on OOM). `limit`/`revision` 0 =
 * unset. The range covers every key with the given prefix. */
char *wg_etcd_range_request(const char *prefix, const char *from_key, size_t from_len,
                            int64_t revision, int64_t limit, bool count_only);
char *wg_etcd_watch_request(const char *prefix, int64_t start_revision);
char *wg_etcd_auth_request(const char *user, const char *password);

/* The gRPC code of a plain call's answer (0: success; -1: an HTTP error
 * without one), its message into text[len]. Plain errors are
 * {"error":"...","code":N}; errors inside a stream (lease keep-alive) are
 * {"error":{"grpc_code":N,...}}. */
typedef struct json_t json_t;
int wg_etcd_answer_code(json_t *root, unsigned status, char *text, size_t len);
/* A positive int64 given as a JSON string (or number): lease IDs, TTLs. */
bool wg_etcd_json_positive(json_t *v, int64_t *out);

/* gRPC codes the client cares about. */
#define WG_GRPC_OUT_OF_RANGE 11     /* range at a compacted revision */
#define WG_GRPC_UNAVAILABLE 14
#define WG_GRPC_UNAUTHENTICATED 16

/* ---- endpoints and calls -------------------------------------------------------- */

struct wg_etcd_tls {
    const char *ca, *cert, *key;    /* "" or NULL when unset */
    const char *server_name;        /* "" = the endpoint's host */
};

struct wg_etcd_client;
struct wg_etcd_call;

/* Endpoints are "http://host:port" or "https://host:port". Returns NULL
 * with a message in err[err_len] on a bad endpoint or TLS file. */
struct wg_etcd_client *wg_etcd_client_new(struct event_base *base, char *const *endpoints,
                                          size_t n, const struct wg_etcd_tls *tls, char *err,
                                          size_t err_len);
void wg_etcd_client_free(struct wg_etcd_client *c);
size_t wg_etcd_client_endpoints(const struct wg_etcd_client *c);
const char *wg_etcd_client_endpoint(const struct wg_etcd_client *c, size_t i);
/* The Authorization token sent with every later call (NULL: none). */
int wg_etcd_client_set_token(struct wg_etcd_client *c, const char *token);
bool wg_etcd_client_has_token(const struct wg_etcd_client *c);
struct evdns_base *wg_etcd_client_dns(struct wg_etcd_client *c);

struct wg_etcd_call_ops {
    /* Each message (see wg_etcd_message_fn); `recv_ns` is wg_now_ns() when
     * the bytes that completed it were read. Unary calls get exactly one,
     * with the HTTP status, before `end`. Return false to stop the call
     * (then `end` still runs unless the callback cancelled it). */
    bool (*message)(void *arg, struct wg_etcd_call *call, unsigned http_status,
                    const char *msg, size_t len, uint64_t recv_ns);
    /* The call is over: `ok` when the response was complete; else `why`
     * says what failed (connect, TLS, timeout, malformed, closed). The call
     * is freed after this returns. */
    void (*end)(void *arg, struct wg_etcd_call *call, bool ok, const char *why);
};

/* POST `path` with JSON `body` to endpoint `ep`. stream: a watch (messages
 * per line, no deadline); else a unary call that must finish within
 * timeout_ms. Returns NULL only when out of memory. */
struct wg_etcd_call *wg_etcd_call_start(struct wg_etcd_client *c, size_t ep, const char *path,
                                        const char *body, bool stream, uint64_t timeout_ms,
                                        const struct wg_etcd_call_ops *ops, void *arg);
/* Close the call's connection; no callback runs after this. NULL ignored. */
void wg_etcd_call_cancel(struct wg_etcd_call *call);

#endif
