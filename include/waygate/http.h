/* http — strict, resumable, zero-copy HTTP/1.1 message parser (RFC 9112).
 *
 * Used by the L7 proxy (requests from clients, responses from upstreams), the
 * etcd client (chunked watch streams) and the health prober. Pure C11: no I/O,
 * no libevent, no allocation.
 *
 * Promises:
 *  - Head parsing is a byte-level state machine whose state lives in a
 *    caller-owned struct wg_http_parser. The caller passes the bytes of the
 *    message received so far, always starting at the message's first byte;
 *    the parser resumes at the offset where it stopped and never re-scans
 *    what earlier calls consumed (it only reads back, once, a value's
 *    trailing whitespace and the values of the few fields it interprets).
 *    Between calls the caller may move (compact) the message in memory as
 *    long as bytes [0, len) keep their values: the parser keeps no pointer.
 *  - Nothing is copied: the method, target, path, query, reason phrase and
 *    every header name and value are reported as spans (offset, length)
 *    relative to the message's first byte. Header values are trimmed of
 *    leading and trailing whitespace (OWS). Headers go into a fixed-capacity
 *    array the caller supplies.
 *  - The result never depends on how the input was split between calls: the
 *    same bytes give the same result, the same error status and the same
 *    error offset whether they arrive at once or one byte per call (the fuzz
 *    harnesses check this).
 *  - Every refusal of DESIGN §10 yields WG_HTTP_ERROR with an error status
 *    (400, 414, 431, 501, 505) and a short constant reason. For a request this
 *    is the status to answer before closing. For a response it only classifies
 *    the fault: a proxy answers 502 (or closes if it has forwarded bytes).
 *  - Body framing (none, Content-Length, chunked, until close, tunnel) is
 *    decided per RFC 9112 §6.3 and handed to the resumable body decoder
 *    wg_http_body_*, which tells payload bytes from framing bytes so that a
 *    proxy can forward the encoding unchanged and a client can de-chunk.
 *
 * Strictness choices (where the RFCs leave a choice):
 *  - Line endings: only CRLF. RFC 9112 §2.2 lets a recipient accept a bare LF;
 *    waygate does not, in requests, responses, chunk framing or trailers (400),
 *    because a proxy that accepts what its peer reads differently opens the
 *    door to request smuggling. A bare CR is refused everywhere (400).
 *  - Leading empty lines (CRLF) before a request line are ignored (RFC 9112
 *    §2.2); they count toward the 8 KiB request-line limit. Responses may not
 *    start with an empty line.
 *  - Content-Length: exactly one field line holding 1*DIGIT (leading zeros
 *    allowed) up to 2^63-1. ANY duplicate is refused (400), even an identical
 *    one ("5, 5" or two equal field lines), as nginx does: RFC 9110 §8.6 lets
 *    a recipient reject them, and forwarding a single unambiguous length is
 *    the only safe choice for a proxy that forwards headers unchanged.
 *  - Transfer-Encoding: the only coding accepted is "chunked" (case-
 *    insensitive, OWS around it allowed), exactly once and last, possibly
 *    spread over several field lines. "chunked" not final or repeated, or
 *    no coding at all: 400 (checked first). Any other coding ("gzip,
 *    chunked", "identity", "xchunked"): 501 — waygate decodes none.
 *    Elements that are not a bare token ("chunked x", parameters): 400.
 *    Transfer-Encoding in an HTTP/1.0 message: 400 (RFC 9112 §6.1).
 *    Both Content-Length and Transfer-Encoding: 400, also in responses.
 *  - Request target: visible ASCII only, no '#' (400); non-ASCII bytes must be
 *    percent-encoded (as HAProxy requires by default). Forms: origin ("/p?q"),
 *    absolute ("http://host/p", scheme http or https, no userinfo) and
 *    asterisk ("*", OPTIONS only). CONNECT (authority-form) is answered 501:
 *    a reverse proxy does not open tunnels for clients.
 *  - Host: HTTP/1.1 requests need exactly one; several are refused in any
 *    version (400). Its value may hold only URI host/port characters
 *    (unreserved, sub-delims but ',', '%', ':', '[', ']'); anything else,
 *    including a comma (two Host values joined), is 400.
 *    An absolute-form target's authority must equal Host, compared ASCII
 *    case-insensitively and byte for byte otherwise (no port normalisation).
 *  - Versions: HTTP/1.0 and HTTP/1.1. Any other well-formed "HTTP/d.d"
 *    (HTTP/1.2, HTTP/2.0, HTTP/0.9) and a request line without a version
 *    (HTTP/0.9 style) are 505; anything else ("HTTP/x", "HTTP/1.10",
 *    "http/1.1") is 400.
 *  - Limits: the request (or status) line without its CRLF may be at most
 *    WG_HTTP_MAX_REQUEST_LINE bytes (414; 400 class for a status line). The
 *    header section (field lines and the final CRLF) may be at most the
 *    caller's max_head bytes and the caller's header capacity (431).
 *  - Responses: status 100-999, three digits. The reason phrase may be
 *    absent ("HTTP/1.1 200\r\n"). A 101 to a request that did not ask for an
 *    upgrade is refused (400 class). Content-Length in 1xx/204 responses is
 *    tolerated and ignored (many servers send "Content-Length: 0").
 *  - Chunked bodies: chunk-size is 1 to 16 hex digits and below 2^63; chunk
 *    extensions are validated (token [= token / quoted-string], BWS only where
 *    RFC 9112 §7.1.1 puts it) and ignored; the size line with its extensions
 *    may be at most WG_HTTP_MAX_CHUNK_LINE bytes. Trailer fields are
 *    validated like header fields (and not interpreted); the trailer section
 *    may be at most max_trailer bytes (431). Chunk data must be followed by
 *    CRLF (400).
 *  - Expect: 100-continue and Upgrade are honoured in HTTP/1.1 only
 *    (RFC 9110 §10.1.1, §7.8); other expectations are ignored.
 *  - Connection: each list element must be a token (400 otherwise).
 *  - Field lines: a name must be a non-empty token directly followed by ':'
 *    (whitespace before the colon: 400); a value may hold VCHAR, obs-text,
 *    SP and HTAB, no other CTL, no NUL, no DEL (400); a line starting with
 *    whitespace (obs-fold, or before the first field) is 400.
 *  - Body size limits (413) are the caller's: content_length is known up
 *    front, and wg_http_body counts payload bytes as they pass.
 */
#ifndef WAYGATE_HTTP_H
#define WAYGATE_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A request line (or status line) longer than this, CRLF excluded: 414. */
#define WG_HTTP_MAX_REQUEST_LINE 8192u
/* max_head when the caller passes 0, and the largest accepted. */
#define WG_HTTP_DEFAULT_MAX_HEAD (32u * 1024u)
#define WG_HTTP_LIMIT_MAX_HEAD (16u * 1024u * 1024u)
/* A chunk-size line (size and extensions, CRLF excluded) longer: 400. */
#define WG_HTTP_MAX_CHUNK_LINE 4096u
/* max_trailer when the caller passes 0. */
#define WG_HTTP_DEFAULT_MAX_TRAILER (8u * 1024u)

enum wg_http_result {
    WG_HTTP_ERROR = -1,     /* refused: see err_status / err_reason */
    WG_HTTP_AGAIN = 0,      /* need more bytes (or, for bodies, call again) */
    WG_HTTP_DONE = 1        /* head (or body) complete */
};

enum wg_http_method {
    WG_HTTP_OTHER = 0,      /* any other token: passed through */
    WG_HTTP_GET, WG_HTTP_HEAD, WG_HTTP_POST, WG_HTTP_PUT, WG_HTTP_DELETE,
    WG_HTTP_OPTIONS, WG_HTTP_PATCH, WG_HTTP_CONNECT, WG_HTTP_TRACE
};

enum wg_http_target_form {
    WG_HTTP_TARGET_ORIGIN = 0,  /* "/path?query" */
    WG_HTTP_TARGET_ABSOLUTE,    /* "http://authority/path?query" */
    WG_HTTP_TARGET_ASTERISK     /* "*" (OPTIONS) */
};

/* How the body that follows the head is delimited (RFC 9112 §6.3). */
enum wg_http_framing {
    WG_HTTP_BODY_NONE = 0,      /* no body at all */
    WG_HTTP_BODY_LENGTH,        /* content_length bytes (possibly 0) */
    WG_HTTP_BODY_CHUNKED,       /* chunked coding, ends with the last chunk */
    WG_HTTP_BODY_UNTIL_CLOSE,   /* response without length: ends at EOF */
    WG_HTTP_BODY_TUNNEL         /* 101 to an upgrade, 2xx to CONNECT: raw bytes */
};

/* Headers the parser itself interprets or that are hop-by-hop. */
enum wg_http_hdr {
    WG_HTTP_HDR_OTHER = 0,
    WG_HTTP_HDR_HOST, WG_HTTP_HDR_CONTENT_LENGTH, WG_HTTP_HDR_TRANSFER_ENCODING,
    WG_HTTP_HDR_CONNECTION, WG_HTTP_HDR_UPGRADE, WG_HTTP_HDR_EXPECT,
    WG_HTTP_HDR_KEEP_ALIVE, WG_HTTP_HDR_PROXY_CONNECTION, WG_HTTP_HDR_TE,
    WG_HTTP_HDR_TRAILER
};

/* Bytes [off, off + len) of the message (head spans) or of a buffer. */
struct wg_http_span {
    uint32_t off;
    uint32_t len;
};

struct wg_http_header {
    struct wg_http_span name;   /* as received (case preserved) */
    struct wg_http_span value;  /* OWS trimmed; may be empty */
    enum wg_http_hdr id;
};

/* What the head says. Valid once wg_http_parse_head() returned DONE; the
 * fields filled so far are meaningful after an ERROR too (for logs). */
struct wg_http_message {
    unsigned version;                   /* 10 (HTTP/1.0) or 11 (HTTP/1.1) */
    /* request line (request mode) */
    enum wg_http_method method;
    struct wg_http_span method_text;
    struct wg_http_span target;         /* raw request-target */
    enum wg_http_target_form target_form;
    struct wg_http_span authority;      /* absolute-form only */
    struct wg_http_span path;           /* before '?'; empty for "http://h" and "*" */
    struct wg_http_span query;          /* after '?' (excluded) */
    bool has_query;                     /* a '?' was present (query may be empty) */
    /* status line (response mode) */
    unsigned status;                    /* 100-999 */
    struct wg_http_span reason;         /* may be empty */
    /* header section */
    unsigned nheaders;                  /* entries used in the caller's array */
    bool has_host;
    struct wg_http_span host;           /* Host value, else an absolute-form authority */
    bool has_content_length;
    uint64_t content_length;
    bool has_transfer_encoding;
    bool chunked;                       /* Transfer-Encoding: chunked accepted */
    bool conn_close;                    /* Connection tokens seen */
    bool conn_keep_alive;
    bool conn_upgrade;
    bool keep_alive;                    /* the connection may carry another message */
    bool expect_continue;               /* request: Expect: 100-continue (HTTP/1.1) */
    bool upgrade;                       /* request: Connection: upgrade + Upgrade (HTTP/1.1);
                                           response: 101 to such a request */
    bool interim;                       /* response 1xx other than 101: a final
                                           response follows (wg_http_parser_reset) */
    bool underscore;                    /* request: some field name contains '_' (a
                                           proxy that drops such names checks each
                                           only then) */
    enum wg_http_framing framing;
};

/* Parser state. Initialise with wg_http_parser_init_request() or
 * wg_http_parser_init_response(); read `msg`, `err_status` and `err_reason`;
 * treat the rest as private. */
struct wg_http_parser {
    struct wg_http_message msg;
    int err_status;                     /* 0, or 400 / 414 / 431 / 501 / 505 */
    const char *err_reason;             /* static text, NULL when no error */
    /* configuration */
    struct wg_http_header *headers;
    uint32_t max_headers;
    uint32_t max_head;
    bool response;
    enum wg_http_method req_method;     /* response mode: the request's method */
    bool req_upgrade;                   /* response mode: the request asked to upgrade */
    /* progress */
    uint8_t state;
    uint8_t vpos;                       /* position inside "HTTP/d.d" */
    uint32_t pos;                       /* bytes of the message consumed */
    uint32_t head_start;                /* first byte of the header section */
    uint8_t host_count;
    bool upgrade_field;                 /* a non-empty Upgrade field was seen */
    bool expect_continue;               /* Expect: 100-continue seen (any version) */
    bool te_last_chunked;
    bool te_chunked_nonfinal;
    bool te_unknown;
    unsigned te_codings;
};

/* Prepare `p` to parse one request head. `headers` (capacity max_headers,
 * may be 0) receives the field lines; one more is 431. max_head bounds the
 * header section in bytes (0: WG_HTTP_DEFAULT_MAX_HEAD; values above
 * WG_HTTP_LIMIT_MAX_HEAD are clamped to it). */
void wg_http_parser_init_request(struct wg_http_parser *p, struct wg_http_header *headers,
                                 uint32_t max_headers, uint32_t max_head);

/* Prepare `p` to parse the response to a request whose method was
 * `req_method` (HEAD: no body; CONNECT: a 2xx is a tunnel) and which asked
 * for a protocol upgrade or not (`req_upgrade`: then a 101 is a tunnel, else
 * a 101 is refused). Other arguments as for requests. */
void wg_http_parser_init_response(struct wg_http_parser *p, struct wg_http_header *headers,
                                  uint32_t max_headers, uint32_t max_head,
                                  enum wg_http_method req_method, bool req_upgrade);

/* Forget the parsed message and keep the configuration: for the next
 * pipelined request on a connection, or for the final response after an
 * interim (1xx) one. Offsets then count from the next message's first byte. */
void wg_http_parser_reset(struct wg_http_parser *p);

/* Parse the head of a message. `msg` points at the message's first byte and
 * `len` bytes are available from there (the same prefix as in earlier calls,
 * plus what arrived since, possibly at another address). Returns:
 *  DONE  — the head is complete; *consumed = its length (the body or the
 *          next message starts at msg + *consumed); p->msg is filled in.
 *  AGAIN — every byte was consumed (*consumed = len); call again with more.
 *  ERROR — refused; p->err_status / p->err_reason say why and *consumed is
 *          the offset of the offending byte (for a field refused for its
 *          meaning, the LF ending it; for the head as a whole, its last
 *          LF). Further calls return ERROR.
 * `len` must not be less than in the previous call (if it is, nothing more
 * is parsed).
 * `consumed` may be NULL. */
enum wg_http_result wg_http_parse_head(struct wg_http_parser *p, const char *msg, size_t len,
                                       size_t *consumed);

/* Split a request head waygate built itself (exchange.c's upstream head:
 * well-formed by construction) into p->msg and p->headers without the
 * parser's checks: "METHOD SP target SP HTTP/1.1" with an origin-form or
 * "*" target, then "Name: value" lines, each ending in CRLF, and an empty
 * line; msg[len] holds the head and nothing else. Fills version, method,
 * method_text, target, target_form, path, query, has_query, nheaders,
 * has_host, host and each field's name, value (OWS trimmed) and id, as
 * wg_http_parse_head() would; the other fields stay as
 * wg_http_parser_init_request() left them. `p` must be freshly
 * initialised for a request. Returns false (p->msg then meaningless) when
 * the head is not of that shape, has more fields than max_headers, a
 * header section longer than max_head, or more than one Host, and where
 * the parser would refuse a byte of the target (a CTL, SP, DEL, '#',
 * obs-text) or of a field value (a CTL but HTAB, DEL): those two scans go
 * a word at a time, as the parser's own; names and the request line's
 * structure are trusted as built. */
bool wg_http_split_head(struct wg_http_parser *p, const char *msg, size_t len);

/* Resumable body decoder for the framing of a parsed head. Private fields
 * except the counters and the error. */
struct wg_http_body {
    enum wg_http_framing framing;
    uint8_t state;
    uint8_t digits;                     /* hex digits of the chunk size so far */
    uint64_t remaining;                 /* bytes left (length) or left in this chunk */
    uint32_t line_len;                  /* bytes of the current chunk-size line */
    uint32_t trailer_len;               /* bytes of the trailer section so far */
    uint32_t max_trailer;
    uint64_t payload;                   /* payload (de-chunked) bytes seen so far */
    uint64_t chunks;                    /* chunks with data seen so far */
    uint32_t trailers;                  /* trailer fields seen */
    int err_status;                     /* 0 or 400 / 431 */
    const char *err_reason;
};

/* What one wg_http_body_parse() call found in its buffer. */
struct wg_http_body_step {
    size_t consumed;    /* bytes of the buffer that belong to this body */
    size_t data_off;    /* payload bytes: buf[data_off, data_off + data_len) */
    size_t data_len;
};

/* Prepare `b` for a body framed as `framing` (usually p->msg.framing) of
 * `content_length` bytes for WG_HTTP_BODY_LENGTH. A tunnel is decoded like
 * an until-close body (all bytes are data). max_trailer bounds the chunked
 * trailer section (0: WG_HTTP_DEFAULT_MAX_TRAILER). */
void wg_http_body_init(struct wg_http_body *b, enum wg_http_framing framing,
                       uint64_t content_length, uint32_t max_trailer);

/* Decode `len` bytes of body that follow what earlier calls consumed. Each
 * call consumes framing bytes and at most ONE run of payload bytes, which it
 * reports in `step` (data_len 0 if none). Returns:
 *  DONE  — the body is complete (with the data run of this call, if any);
 *          bytes past step->consumed belong to the next message. Later
 *          calls: DONE, nothing consumed.
 *  AGAIN — step->consumed bytes were used; if fewer than `len`, call again
 *          with the rest (a payload run ended the call), else more input is
 *          needed.
 *  ERROR — b->err_status / b->err_reason; step->consumed is the offset of
 *          the offending byte.
 * A proxy forwards buf[0, consumed) unchanged; a client collects the data
 * runs to de-chunk. */
enum wg_http_result wg_http_body_parse(struct wg_http_body *b, const char *buf, size_t len,
                                       struct wg_http_body_step *step);

/* The peer closed the connection: DONE if the body is complete or runs
 * until close, else ERROR (truncated body; err_reason set). */
enum wg_http_result wg_http_body_eof(struct wg_http_body *b);

/* May a relay end body `b` itself after the bytes parsed so far, with
 * bytes of its own then the body's end (a cut's last word)? A chunked body
 * between two chunks, or, its payload relayed unframed (`dechunk`),
 * anywhere before its last chunk; one that runs until close: yes. One of a
 * Content-Length (the receiver counts it), or done: no. */
bool wg_http_body_endable(const struct wg_http_body *b, bool dechunk);

/* Canonical text of a method ("GET", ...; "" for WG_HTTP_OTHER). */
const char *wg_http_method_name(enum wg_http_method m);

/* RFC 9110 §9.2.2: GET, HEAD, PUT, DELETE, OPTIONS and TRACE. OTHER is not
 * assumed idempotent. */
bool wg_http_method_idempotent(enum wg_http_method m);

/* ASCII case-insensitive equality of two field names (or any two strings). */
bool wg_http_name_eq(const char *a, size_t alen, const char *b, size_t blen);

/* Index of the first header at index >= `from` whose name equals `name`
 * (case-insensitive) in a parsed message, or -1. `msg` is the message base
 * the spans refer to. */
int wg_http_find_header(const struct wg_http_parser *p, const char *msg, const char *name,
                        size_t name_len, unsigned from);

/* Iterate the elements of a comma-separated list value (Connection,
 * Transfer-Encoding, Expect, ...): start with *cursor = 0; each true return
 * sets *item to the next element, OWS-trimmed, relative to the same base as
 * `list`; empty elements are skipped. Splits at every comma (quoted strings
 * are not special), which is right for token lists. Typical use, stripping
 * the fields a Connection header names:
 *     uint32_t c = 0; struct wg_http_span t;
 *     while (wg_http_list_next(msg, h->value, &c, &t)) ...                  */
bool wg_http_list_next(const char *base, struct wg_http_span list, uint32_t *cursor,
                       struct wg_http_span *item);

#endif
