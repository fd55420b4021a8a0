/* grpc — the pure pieces of gRPC that the proxy exchange and the prober use
 * (DESIGN §15): status mapping, grpc-timeout, the request classifier, the
 * method list of grpc.retry_methods, gRPC-Web's content types, trailer
 * frame and streamed base64, and the two grpc.health.v1 messages.
 *
 * Promises:
 *  - No I/O, no allocation, no libevent, no nghttp2: bytes and numbers in,
 *    numbers and bytes out. Every function is total: any input (any length,
 *    any bytes) gives a defined answer and never reads out of bounds.
 *  - The mapping of waygate's own HTTP errors follows grpc's
 *    doc/http-grpc-status-mapping.md where it names the status; 429 maps to
 *    UNAVAILABLE (a client may retry it, as for 503: waygate answers 429 for
 *    rate limits and concurrency limits, both of which pass); docs/http.md
 *    ("gRPC") lists the whole table.
 */
#ifndef WAYGATE_GRPC_H
#define WAYGATE_GRPC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The status codes of grpc/doc/statuscodes.md. */
enum wg_grpc_status {
    WG_GRPC_OK = 0,
    WG_GRPC_CANCELLED = 1,
    WG_GRPC_UNKNOWN = 2,
    WG_GRPC_INVALID_ARGUMENT = 3,
    WG_GRPC_DEADLINE_EXCEEDED = 4,
    WG_GRPC_NOT_FOUND = 5,
    WG_GRPC_ALREADY_EXISTS = 6,
    WG_GRPC_PERMISSION_DENIED = 7,
    WG_GRPC_RESOURCE_EXHAUSTED = 8,
    WG_GRPC_FAILED_PRECONDITION = 9,
    WG_GRPC_ABORTED = 10,
    WG_GRPC_OUT_OF_RANGE = 11,
    WG_GRPC_UNIMPLEMENTED = 12,
    WG_GRPC_INTERNAL = 13,
    WG_GRPC_UNAVAILABLE = 14,
    WG_GRPC_DATA_LOSS = 15,
    WG_GRPC_UNAUTHENTICATED = 16,
};

/* The upper-case name ("UNAVAILABLE"), or "UNKNOWN" outside 0..16. */
const char *wg_grpc_status_name(int status);

/* Counters by grpc-status (metric label grpc_code) have one slot per code
 * 0..16; a code outside that range counts as UNKNOWN, as gRPC clients
 * read it, so a label never takes more than WG_GRPC_CODES values. */
#define WG_GRPC_CODES 17
static inline unsigned wg_grpc_code_slot(int status)
{
    return status >= 0 && status < WG_GRPC_CODES ? (unsigned)status : WG_GRPC_UNKNOWN;
}

/* The grpc-status of an error waygate itself answers with HTTP `http_status`
 * (DESIGN §13): 400 INTERNAL, 401 UNAUTHENTICATED, 403 PERMISSION_DENIED,
 * 404 UNIMPLEMENTED, 408 DEADLINE_EXCEEDED, 413/431 RESOURCE_EXHAUSTED,
 * 429/502/503 UNAVAILABLE, 504 DEADLINE_EXCEEDED, anything else UNKNOWN
 * (2xx/3xx give UNKNOWN too: they are not errors to map). */
enum wg_grpc_status wg_grpc_status_from_http(int http_status);

/* The status a gRPC client reads from a stream its server reset with
 * HTTP/2 error `code` (RST_STREAM), per http-grpc-status-mapping.md:
 * REFUSED_STREAM UNAVAILABLE, CANCEL CANCELLED, ENHANCE_YOUR_CALM
 * RESOURCE_EXHAUSTED, INADEQUATE_SECURITY PERMISSION_DENIED, every other
 * code (NO_ERROR included: a stream reset before its trailers) INTERNAL. */
enum wg_grpc_status wg_grpc_status_from_h2_error(uint32_t code);

/* grpc-message is percent-encoded (PROTOCOL-HTTP2.md): bytes outside
 * 0x20-0x7E and '%' itself become %XX. Writes at most cap-1 bytes and a NUL
 * into out (cap >= 1), never splitting an escape; returns the length
 * written. */
size_t wg_grpc_message_encode(const char *in, size_t len, char *out, size_t cap);

/* The text of waygate's own error for a gRPC client: "waygate: " and the
 * lower-case reason of HTTP status `http_status` ("no route", "no healthy
 * upstream", "upstream connect failed", "deadline exceeded", "message too
 * large", ...). Static. */
const char *wg_grpc_error_message(int http_status);

/* Does an upstream's grpc-status count as a failure for passive outlier
 * detection (UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL)? */
bool wg_grpc_status_is_failure(int status);

/* Parse a grpc-status value: 1-2 ASCII digits, 0..16 not required (an
 * upstream may send any code; "2147483648" does not fit and is refused).
 * Returns -1 when `v` is not a decimal number below 1000. */
int wg_grpc_status_parse(const char *v, size_t len);

/* Is this request gRPC? `content-type` is application/grpc, exactly or
 * followed by '+' (application/grpc+proto) or ';' (parameters), ASCII case
 * insensitive. gRPC-Web (application/grpc-web*) is NOT gRPC here. */
bool wg_grpc_is_grpc(const char *content_type, size_t len);

/* gRPC-Web (PROTOCOL-WEB.md): is `ct` application/grpc-web (binary) or
 * application/grpc-web-text (base64), exactly or followed by '+'
 * (application/grpc-web-text+proto) or ';'? When it is and out[cap] holds
 * it, writes the content-type the gRPC upstream gets (the same without
 * "-web" / "-web-text": application/grpc+proto), sets *text (the base64
 * form) and returns its length; else 0 (*text untouched). */
size_t wg_grpc_web_to_grpc(const char *ct, size_t len, char *out, size_t cap, bool *text);
/* The reverse, for the response head: application/grpc[+x][;p] becomes
 * application/grpc-web[+x][;p], or application/grpc-web-text[+x][;p] when
 * `text`; 0 when `ct` is not gRPC or out is short. */
size_t wg_grpc_to_grpc_web(const char *ct, size_t len, bool text, char *out, size_t cap);
/* The content-type of waygate's own Trailers-Only answer to a gRPC call,
 * a gRPC-Web one (`web`) or a gRPC-Web-text one (`web` and `text`). */
static inline const char *wg_grpc_reply_type(bool web, bool text)
{
    return !web ? "application/grpc" : text ? "application/grpc-web-text" : "application/grpc-web";
}

/* A header field for wg_grpc_web_trailers (the layout of nghttp2_nv's first
 * four members is not assumed). */
struct wg_grpc_field {
    const uint8_t *name, *value;
    size_t namelen, valuelen;
};
/* gRPC-Web trailers as the body's last frame: flag byte 0x80, a 4-byte
 * big-endian length, then "name: value\r\n" per field (names lower-case,
 * as HTTP/2 gives them). Returns the frame's length, or 0 when it does not
 * fit into out[cap]. */
size_t wg_grpc_web_trailers(const struct wg_grpc_field *f, size_t n, uint8_t *out, size_t cap);

/* Where a stream of length-prefixed messages stands (flag byte, 4-byte
 * big-endian length, payload: PROTOCOL-HTTP2.md's Length-Prefixed-Message),
 * fed its bytes in order, split anywhere: a gRPC-Web response cut by
 * waygate can take a trailer frame of its own only between two messages,
 * and not after the one its upstream sent (`trailer`). */
struct wg_grpc_frames {
    uint32_t left;                      /* payload bytes of the current message still due */
    uint32_t len;                       /* the length being read */
    uint8_t head;                       /* bytes of the current 5-byte prefix seen (0..4) */
    bool trailer;                       /* a gRPC-Web trailer frame (flag 0x80) began */
};
void wg_grpc_frames_feed(struct wg_grpc_frames *s, const uint8_t *p, size_t n);
/* Between two messages (or before the first)? */
static inline bool wg_grpc_frames_between(const struct wg_grpc_frames *s)
{
    return s->head == 0 && s->left == 0;
}

/* ---- base64 of application/grpc-web-text -------------------------------
 * RFC 4648 §4 (standard alphabet, '=' padding), streamed: the state between
 * calls is a few bytes, and any split of the input into calls gives the
 * same output. A gRPC-Web-text body may be several padded chunks one after
 * the other ("AAAAAAE=gAAAAA8="): the decoder takes that, the encoder may
 * end a chunk with padding (wg_b64_encode_end) and go on with the next. */
struct wg_b64_enc {
    uint8_t held[3];                    /* 0..2 bytes of a group not complete yet */
    uint8_t n;
};
/* The chars wg_b64_encode writes for `len` more bytes. */
static inline size_t wg_b64_encoded_len(const struct wg_b64_enc *e, size_t len)
{
    return (e->n + len) / 3 * 4;
}
/* The most input bytes whose chars fit into `room` now (0 when not even
 * one group's do). */
static inline size_t wg_b64_encode_fits(const struct wg_b64_enc *e, size_t room)
{
    size_t in = room / 4 * 3;
    return in > e->n ? in - e->n : 0;
}
/* Encode in[len] after the bytes held from earlier calls: 4 chars per
 * complete 3-byte group into out (wg_b64_encoded_len of them), the 0..2
 * bytes left over held for the next call. Returns the chars written. */
size_t wg_b64_encode(struct wg_b64_enc *e, const uint8_t *in, size_t len, char *out);
/* End a padded chunk: the held bytes as one last group, one byte as two
 * chars and "==", two as three chars and "=" (e.g. "QQ==", "QUI="); 0 or
 * 4 chars into out; e starts over. */
size_t wg_b64_encode_end(struct wg_b64_enc *e, char *out);

struct wg_b64_dec {
    uint32_t bits;                      /* the last nbits (< 8) of the input not output yet */
    uint8_t nbits;
    uint8_t quad;                       /* chars of the current 4-char group seen */
    bool pad;                           /* a group "xx=" waits for its second '=' */
};
/* Decode in[len] into out, continuing from *s: *out_len bytes written.
 * out may be in itself (decoding in place): the byte written never passes
 * the char read. False on any byte outside the alphabet (whitespace
 * included), '=' anywhere but the end of a group ("x=", "=" alone), or a
 * char after "xx=" other than '='; the state is then void. */
bool wg_b64_decode(struct wg_b64_dec *s, const char *in, size_t len, uint8_t *out, size_t *out_len);
/* At the end of the input: did it end on a group boundary (every chunk
 * complete, "xx" or "xx=" left over is not)? */
static inline bool wg_b64_decode_done(const struct wg_b64_dec *s)
{
    return s->quad == 0;
}

/* grpc-timeout (PROTOCOL-HTTP2.md): 1..8 ASCII digits and one unit of
 * H M S m u n. On success *ms is the value in milliseconds, rounded UP
 * (1n -> 1 ms: a deadline never becomes 0 = none), and true is returned.
 * Anything else (empty, 9 digits, no unit, spaces, a sign) is false; the
 * caller then ignores the header, as grpc servers do. */
bool wg_grpc_timeout_parse(const char *v, size_t len, uint64_t *ms);

/* The response deadline of a gRPC stream: the route's/service's
 * response_timeout_ms capped by the client's grpc-timeout (`client_ms`, 0 =
 * absent), which is itself first capped by grpc.max_timeout (`max_ms`, 0 =
 * no cap). */
uint64_t wg_grpc_deadline_ms(uint64_t response_timeout_ms, uint64_t client_ms, uint64_t max_ms);

/* grpc.retry_methods: is `path` (":path", "/pkg.Service/Method") listed?
 * Entries are exact paths, or "/pkg.Service/" then "*" for every method of a
 * service. `methods` holds n NUL-terminated entries. */
bool wg_grpc_method_listed(char *const *methods, size_t n, const char *path, size_t len);

/* Is `entry` a valid grpc.retry_methods entry ("/svc/Method" or "/svc/" then "*",
 * svc and Method non-empty, no further '/', printable ASCII)? */
bool wg_grpc_method_entry_ok(const char *entry);

/* ---- grpc.health.v1 ------------------------------------------------------
 * HealthCheckRequest { string service = 1; }
 * HealthCheckResponse { enum ServingStatus status = 1; }
 *   UNKNOWN 0, SERVING 1, NOT_SERVING 2, SERVICE_UNKNOWN 3 */
enum wg_grpc_serving {
    WG_SERVING_UNKNOWN = 0,
    WG_SERVING_SERVING = 1,
    WG_SERVING_NOT_SERVING = 2,
    WG_SERVING_SERVICE_UNKNOWN = 3,
};

#define WG_GRPC_HEALTH_PATH "/grpc.health.v1.Health/Check"
#define WG_GRPC_FRAME_HEADER 5          /* compressed flag + 4-byte big-endian length */

/* Write one length-prefixed gRPC message carrying a HealthCheckRequest for
 * `service` (len bytes; may be empty) into out[cap]. Returns the bytes
 * written, or 0 when cap is too small. */
size_t wg_grpc_health_request(const char *service, size_t len, uint8_t *out, size_t cap);

/* Decode a HealthCheckResponse message body (no frame header): field 1 as a
 * varint, unknown fields skipped per the wire format, the last field 1 wins
 * (protobuf merge rule); absent -> UNKNOWN (proto3 default). Returns the
 * status (which may be a value beyond SERVICE_UNKNOWN), or -1 when the bytes
 * are not a valid message. */
int64_t wg_grpc_health_decode(const uint8_t *msg, size_t len);

/* Take one length-prefixed message from a gRPC body `buf[len]`. Returns 1
 * with *msg, *msg_len set and *used the bytes it spans, 0 when more bytes
 * are needed, -1 when the frame is compressed (the prober does not ask for
 * compression) or longer than max_len. */
int wg_grpc_frame(const uint8_t *buf, size_t len, size_t max_len, const uint8_t **msg,
                  size_t *msg_len, size_t *used);

#endif
