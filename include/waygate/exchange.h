/* exchange — one proxied HTTP request/response, whatever the client spoke
 * (DESIGN §6, §10, §13, §15).
 *
 * The meeting point of the L7 path (h2o's h2o_req_t, HAProxy's stream over
 * HTX): a downstream codec (http1.c, http2.c) turns client bytes into a
 * request head and body bytes and hands them to the exchange; the exchange
 * does everything else, written once:
 *
 *   route (http_route.h)
 *     -> [policy hook: request head]   exchange.c: policy_request_head()
 *        (forward_auth: a subrequest to the auth service through the same
 *        pick/pool/upstream steps below, the client's body unread, then
 *        the chain goes on or the auth service's answer is the reply)
 *     -> pick an instance (balance.h)
 *     -> upstream (the upstream codec below; keep-alive pools upstream_pool.h)
 *     -> retries (DESIGN §6)
 *     -> forwarded headers (DESIGN §10)
 *     -> [policy hook: response head]  exchange.c: policy_response_head()
 *     -> deadlines (connect, response, upstream idle)
 *     -> access log line and stats.
 *
 * What the codec gives the exchange is an HTTP/1.1 request head as the
 * http.h parser accepted it (struct wg_http_parser + the message bytes):
 * http1.c passes the client's own bytes (zero copy); http2.c writes the
 * decoded HEADERS as an HTTP/1.1 head and parses it with the same parser,
 * so that every §10 rule holds for both protocols. The body comes through
 * d->in with the framing the head declares (http2.c frames DATA as chunked
 * when the client gave no content-length).
 *
 * The exchange answers through struct wg_downstream_ops: it never asks which
 * protocol the client speaks. The upstream side is behind the upstream codec
 * section of exchange.c (HTTP/1.1 over a pooled struct wg_upconn); the slot
 * for an HTTP/2 upstream codec (gRPC issue) is `struct wg_upstream_codec`.
 *
 * Promises:
 *  - Worker thread only, no lock, no blocking call.
 *  - Bounded buffering both ways: at most one block of unforwarded body per
 *    direction; the client side is not read while the upstream has not
 *    taken what was read, and the upstream is not read while the client
 *    has not taken what was read (backpressure).
 *  - Each exchange pins the config current when it begins (its listener's
 *    routes and http settings) and the service version it was routed to;
 *    instance->active counts it while in flight.
 */
#ifndef WAYGATE_EXCHANGE_H
#define WAYGATE_EXCHANGE_H

#include <netinet/in.h>
#include <arpa/inet.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "waygate/balance.h"
#include "waygate/cidr.h"
#include "waygate/grpc.h"
#include "waygate/http.h"
#include "waygate/http_buf.h"
#include "waygate/policy.h"

struct wg_worker;
struct wg_listener;
struct wg_listener_config;
struct wg_config_ref;
struct wg_route;
struct wg_pool_service;
struct wg_instance;
struct wg_upconn;
struct wg_mirror_copy;
struct wg_h2_stream;
struct wg_auth_call;

/* Where the request stands (the downstream's view of one exchange). */
enum wg_rq {
    WG_RQ_IDLE,     /* between requests (or before the first) */
    WG_RQ_HEAD,     /* reading a request head */
    WG_RQ_BODY,     /* forwarding the request body (or waiting for a connection) */
    WG_RQ_SENT,     /* request forwarded whole (or answered by us) */
    WG_RQ_TUNNEL,   /* after a 101: raw bytes both ways (HTTP/1.1 only) */
    WG_RQ_LINGER    /* error sent: read and drop until EOF, then close */
};

enum wg_rs {
    WG_RS_NONE,     /* nothing expected from an upstream */
    WG_RS_HEAD,     /* waiting for the response head */
    WG_RS_BODY,     /* forwarding the response body */
    WG_RS_DONE      /* response complete (ours or the upstream's) */
};

enum wg_deadline {
    WG_DL_NONE, WG_DL_IDLE, WG_DL_HEADER, WG_DL_BODY, WG_DL_CONNECT, WG_DL_RESPONSE,
    WG_DL_UPSTREAM_IDLE, WG_DL_SEND, WG_DL_UPSTREAM_SEND, WG_DL_TUNNEL, WG_DL_LINGER
};

/* The settings of the request in progress (copied from the pinned config). */
struct wg_exchange_settings {
    uint64_t header_ms, body_ms, idle_ms, send_ms, tunnel_ms;
    uint64_t max_head, max_body;
    uint64_t connect_ms, response_ms;
    unsigned retries;
    bool retry_non_idempotent;          /* route, else service (DESIGN §6) */
    bool allow_underscores;             /* http.allow_underscores */
};

/* Defaults of DESIGN §5 for a connection accepted before any config. */
extern const struct wg_exchange_settings wg_exchange_defaults;

struct wg_downstream;

/* One request and its upstream attempt (freed when the request ends). */
struct wg_exchange {
    struct wg_exchange *next;           /* on the worker's free list */
    struct wg_config_ref *cfg;          /* pinned for the request */
    const struct wg_listener_config *lc;
    const struct wg_route *route;
    struct wg_pool_service *svc;        /* one reference while routed */
    struct wg_instance *inst;           /* one reference + one `active` per attempt */
    unsigned inst_gen;                  /* its down_generation when picked (health.h) */
    unsigned attempts;
    enum wg_http_method method;
    unsigned status;
    bool http10, req_keep_alive, req_upgrade, req_body_done, replayable;
    bool close_after;                   /* close the client after this response */
    bool fresh_only;                    /* next attempt on a new connection */
    bool u_eof, u_shut, up_reused, resp_started, final_sent, dechunk;
    bool upstream_keep;                 /* the response leaves the connection reusable */
    bool sent_any;                      /* this attempt wrote request bytes upstream */
    bool peer_trusted;                  /* the peer is in trusted_proxies (DESIGN §10) */
    const char *client;                 /* the client address: d->client_ip or real_ip */
    char real_ip[INET6_ADDRSTRLEN];     /* from X-Forwarded-For, behind a trusted peer */
    unsigned interim;                   /* interim (1xx) heads received */
    bool log_pending;                   /* a request to log when it ends */
    struct wg_exchange_settings t;
    struct wg_http_body rq_body;
    /* the upstream */
    struct wg_upconn *up;
    struct wg_h2_stream *h2;            /* the attempt's HTTP/2 stream (upstream_h2.h) */
    struct hp_buf *h2_tail;             /* its rendered end (trailers, last chunk) to go into uin */
    bool h2_on;                         /* this attempt speaks HTTP/2 (h2c/h2 instance) */
    bool h2_raw;                        /* its payload goes into raw unframed (the client takes
                                           payload only, HTTP/2): the stream's end ends the body */
    bool h2_ended, h2_closed, h2_retryable, h2_calling, h2_paused, grpc;
    bool grpc_web;                      /* gRPC-Web: grpc is set too; translated to gRPC for
                                           HTTP/2 instances (docs/http.md) */
    bool grpc_web_text;                 /* ... in its base64 form (grpc_web is set too): the
                                           request body decoded, the response encoded */
    uint8_t h2_free;                    /* free retries after GOAWAY / REFUSED_STREAM */
    uint32_t h2_error;                  /* the stream's close code */
    uint32_t h2_new;                    /* bytes put into uin (or raw) since the last pull */
    int16_t grpc_code;                  /* gRPC: grpc-status + 1 the client got; 0 = none */
    struct wg_b64_dec web_dec;          /* gRPC-Web-text to an HTTP/2 instance: the request
                                           body's base64 state */
    struct wg_grpc_frames web_frames;   /* gRPC-Web: where the response's messages stand (a
                                           cut's trailer frame goes between two), counted as
                                           an HTTP/2 instance's are framed, or as an http1
                                           instance's (passed unchanged) are decoded */
    struct wg_b64_dec web_rdec;         /* ... the latter's base64 state, for -text */
    bool web_lost;                      /* ... whose base64 was not (no trailer frame then) */
    struct hp_buf *uin;                 /* from the upstream; [sent, fwd) for the client */
    struct hp_rxq raw;                  /* h2_raw: the body's payload for the client's codec,
                                           which takes it from the front (by reference over
                                           h2c, http_buf.h); uin then holds the head only */
    struct hp_buf *uout;                /* the rewritten request head */
    struct hp_head *rhead;              /* while a response head is parsed */
    struct hp_buf *trailers;            /* the response's trailer section (payload_only
                                           clients): "name: value\r\n"..., final CRLF */
    struct wg_http_body rs_body;
    /* deadlines and progress (ms, CLOCK_MONOTONIC) */
    uint64_t header_deadline, connect_deadline, response_deadline, upstream_progress;
    uint64_t up_blocked_since;          /* request bytes wait for the upstream since (0: not) */
    /* the access log's view of the request */
    struct hp_buf *note;                /* method, target, request id as sent */
    struct wg_http_span note_method, note_target, note_id;
    uint64_t req_start_ns, connect_start_ns, req_bytes_in, req_bytes_out;
    int64_t connect_us;
    /* gateway policies (policy.h): the route's chain's view of the request,
     * NULL on routes without policies; the response edits of the final head */
    struct wg_policy_req *pol;
    struct wg_policy_head resp_edits;
    struct wg_auth_call *auth;          /* a forward_auth subrequest (exchange.c) */
    struct wg_mirror_copy *mirror;      /* a mirror copy fed its body (http_mirror.h) */
    struct wg_pick pick;                /* last: the tried list is long and mostly unused */
};

/* What a downstream codec does for the exchanges it carries. Every
 * function runs on the worker thread, inside the codec's own pump (never
 * re-entering it), with `d` the downstream of the exchange. */
struct wg_downstream_ops {
    /* Write the status line/HEADERS of an answer waygate makes itself
     * (DESIGN §13): `body` is a short text (NULL: "<status> <reason>").
     * `keep`: the client connection may carry another request. false: out
     * of memory (the exchange then kills the downstream). */
    bool (*reply)(struct wg_downstream *d, unsigned status, const char *body, bool keep);
    /* Write waygate's own error to a gRPC request as Trailers-Only (DESIGN
     * §15): HTTP 200, content-type application/grpc, grpc-status
     * `grpc_status`, grpc-message `message` (already percent-encoded), no
     * body (HTTP/2: one HEADERS with END_STREAM). false: out of memory. */
    bool (*grpc_reply)(struct wg_downstream *d, int grpc_status, const char *message, bool keep);
    /* Write a 308 redirect to `location` (tls.redirect_http). */
    bool (*redirect)(struct wg_downstream *d, const char *location, size_t len, bool keep);
    /* Write an upstream response head (`final`: not 1xx); `p`/`msg` as the
     * http.h parser accepted it, hop-by-hop fields still in. */
    bool (*response_head)(struct wg_downstream *d, const struct wg_http_parser *p, const char *msg,
                          size_t len, bool final);
    /* Write what is ready for the client: heads, then x->uin [sent, fwd);
     * set *progress when something went out. */
    void (*flush)(struct wg_downstream *d, bool *progress);
    /* Nothing written is pending any more. */
    bool (*flushed)(const struct wg_downstream *d);
    /* A head written earlier (an interim one) is still on its way: the
     * upstream is not read faster than the client drains. */
    bool (*head_pending)(const struct wg_downstream *d);
    /* The client went away while its request waits for the upstream (which
     * is not reading it, so neither are we): true kills the downstream. */
    bool (*gone)(struct wg_downstream *d);
    /* Read more request body into d->in (its room made); bytes read, 0
     * when none now (then d->eof may say the client finished). */
    ssize_t (*read)(struct wg_downstream *d);
    /* The response went out whole: end the request (keep-alive or close). */
    void (*end)(struct wg_downstream *d);
    /* The upstream half-closed a tunnel: forward it (HTTP/1.1 only). */
    void (*shutdown)(struct wg_downstream *d);
    /* An upstream event for this downstream's exchange: run its pump. */
    void (*wake)(struct wg_downstream *d);
};

/* The client side of one exchange: a whole HTTP/1.1 connection (one
 * request after the other), or one HTTP/2 stream. Embedded in the codec's
 * own struct. */
struct wg_downstream {
    const struct wg_downstream_ops *ops;
    struct wg_worker *w;
    struct hp_local *loc;
    const struct wg_listener *l;
    struct wg_exchange *r;              /* the request in progress, NULL between requests */
    enum wg_rq rq;
    enum wg_rs rs;
    bool eof;                           /* the client sends nothing more (EOF / END_STREAM) */
    bool dead;                          /* to be closed (reset) when the pump returns */
    bool tls;                           /* the client came over TLS */
    bool payload_only;                  /* the client takes de-chunked payload (HTTP/2) */
    bool check_reset;                   /* an event came while the request waits upstream */
    uint16_t client_port;
    uint32_t stream_id;                 /* HTTP/2 stream, 0 for HTTP/1.1 */
    uint32_t upstream_read_max;         /* bytes per upstream read, 0: a block's room
                                           (HTTP/2: what one DATA frame carries) */
    const char *proto;                  /* "http/1.1" or "h2", for the access log */
    const char *cert_subject;           /* verified client certificate, RFC 4514, or NULL */
    const char *end_reason;             /* why it ended early, NULL: complete */
    struct hp_buf *in;                  /* from the client: the head, then the body */
    uint64_t client_progress;           /* last byte from the client (ms) */
    uint64_t blocked_since;             /* output to the client waits since (0: not) */
    char client_ip[INET6_ADDRSTRLEN];   /* the peer (or what its PROXY header says) */
    struct wg_ip peer;                  /* the same, for trusted_proxies */
};

/* ---- head helpers the codecs share ---- */

/* Field names a Connection header lists (hop-by-hop by declaration). The
 * first WG_HOP_TOKENS are kept; a head that lists more is rare and slow:
 * wg_hop_by_hop() then scans its Connection fields again, so that no listed
 * name is ever forwarded however many there are. */
#define WG_HOP_TOKENS 16
struct wg_hop_tokens {
    struct wg_http_span v[WG_HOP_TOKENS];
    unsigned n;
    bool more;                          /* tokens past the kept ones */
    const struct wg_http_parser *p;
};
void wg_hop_tokens(const struct wg_http_parser *p, const char *msg, struct wg_hop_tokens *t);
/* Is field h one of the names t holds (case-insensitive)? */
bool wg_hop_listed(const struct wg_hop_tokens *t, const char *msg, const struct wg_http_header *h);

/* Hop-by-hop (DESIGN §10): never forwarded, except the Upgrade field of an
 * upgrade. Framing fields stay even when Connection names them. (Inline:
 * it runs for every field of every head, both ways.) */
static inline bool wg_hop_by_hop(const struct wg_hop_tokens *t, const char *msg,
                                 const struct wg_http_header *h, bool upgrade)
{
    switch (h->id) {
    case WG_HTTP_HDR_CONNECTION: case WG_HTTP_HDR_KEEP_ALIVE:
    case WG_HTTP_HDR_PROXY_CONNECTION: case WG_HTTP_HDR_TE: case WG_HTTP_HDR_TRAILER:
        return true;
    case WG_HTTP_HDR_UPGRADE:
        return !upgrade;
    case WG_HTTP_HDR_OTHER:
        return t->n && wg_hop_listed(t, msg, h);
    default:
        return false;
    }
}

/* "Name: value\r\n" */
static inline void wg_put_field(struct hp_out *o, const char *msg, const struct wg_http_header *h)
{
    hp_put_span(o, msg, h->name);
    hp_put(o, ": ", 2);
    hp_put_span(o, msg, h->value);
    hp_put(o, "\r\n", 2);
}

/* The fields policies add to what the client gets (the response head's
 * edits, then resp_extra), as "Name: value" pairs; a codec writes them after
 * the head's own fields, leaving out received field i when
 * wg_policy_head_dropped(&r->resp_edits, i). n == 0 without policies. */
static inline size_t wg_exchange_extra_fields(const struct wg_exchange *r,
                                              const struct wg_policy_field **a, size_t *na,
                                              const struct wg_policy_field **b, size_t *nb)
{
    *a = r->resp_edits.add;
    *na = r->resp_edits.n_add;
    *b = r->pol ? r->pol->resp_extra.add : NULL;
    *nb = r->pol ? r->pol->resp_extra.n_add : 0;
    return *na + *nb;
}

/* ---- called by the downstream codecs ---- */

/* A request starts with its first byte: its state, pinned config, the
 * header deadline. false: out of memory (d->dead is set). */
bool wg_exchange_begin(struct wg_downstream *d, uint64_t now_ms);
/* Pin the config current now (false: none yet). */
bool wg_exchange_pin(struct wg_downstream *d);
/* (Re)compute whether d->peer is a trusted proxy (after a PROXY header). */
void wg_exchange_trust(struct wg_downstream *d);
/* The head is complete at the front of d->in (head_len bytes, parsed by
 * `p`): route, rewrite, start the upstream. d->in->start moves past it. */
void wg_exchange_head(struct wg_downstream *d, const struct wg_http_parser *p, size_t head_len);
/* The head was refused by the parser (status from it) or timed out (408):
 * log what was parsed, answer, end. */
void wg_exchange_bad_head(struct wg_downstream *d, const struct wg_http_parser *p, unsigned status);
/* Every step of the exchange that can progress now: connect, forward the
 * request body, read and forward the response, end. */
void wg_exchange_step(struct wg_downstream *d, bool *progress);
/* The earliest deadline of the exchange (connect, response, upstream idle,
 * body, send, tunnel), UINT64_MAX when none. The downstream adds its own
 * (idle, header, linger). */
uint64_t wg_exchange_deadline(const struct wg_downstream *d, enum wg_deadline *kind);
/* That deadline passed. */
void wg_exchange_timeout(struct wg_downstream *d, enum wg_deadline kind);
/* Answer `status` ourselves (DESIGN §13); the request ends with it. */
void wg_exchange_reply(struct wg_downstream *d, unsigned status, const char *body, bool keep);
/* The response went out whole: the upstream connection is pooled when it
 * may carry another request, and everything the request held let go. What
 * the client connection does next; *idle_ms: its client_idle_timeout. */
enum wg_finish {
    WG_FINISH_KEEP,     /* wait for another request */
    WG_FINISH_CLOSE,    /* close now (the client asked to, and said all) */
    WG_FINISH_LINGER    /* stop sending, drain what the client still sends, close */
};
enum wg_finish wg_exchange_finish(struct wg_downstream *d, uint64_t *idle_ms);
/* Log (once) and let go of the request in progress, if any. */
void wg_exchange_release(struct wg_downstream *d, const char *reason);
/* Cut the request in progress now, `reason` for the access log
 * (d->end_reason), `message` for a gRPC client. The rule for both codecs
 * (DESIGN §15): a gRPC call ends with grpc-status UNAVAILABLE,
 * grpc-message "waygate: <message>", the upstream let go and the codec
 * sending it on its next pump: as a Trailers-Only answer (ops->grpc_reply)
 * when no byte of the response went out yet (a forward_auth subrequest
 * still in flight is such a case: it ends first, its access-log line with
 * `reason`, its connection or stream let go); else after the body bytes
 * already taken, as trailers (HTTP/2) or, for gRPC-Web over either
 * protocol, a trailer frame ending the body (translated or passed
 * unchanged to an http1 instance, when the cut falls between two messages
 * of the body given and that body can still end: exchange.c, grpc_cut);
 * and one whose response is
 * already whole goes on to its end. Any other request gets d->dead (the
 * codec resets the stream or closes the connection). No request: nothing
 * happens. */
void wg_exchange_abort(struct wg_downstream *d, const char *reason, const char *message);
/* The worker's 1 s tick (drain_timeout, on_unhealthy: close, health.h):
 * when the request's instance (during a forward_auth subrequest, the auth
 * service's) must be cut now, wg_exchange_abort() it (reason
 * "drain_timeout" / "on_unhealthy") and return true. */
bool wg_exchange_cut(struct wg_downstream *d, uint64_t now_ms);
/* The client's codec took n bytes from the front of d->r->raw (h2_raw):
 * the upstream stream's window reopens by them (upstream_h2.h). */
void wg_exchange_raw_taken(struct wg_downstream *d, size_t n);
/* Count an answered request of `status` (stats.h). */
void wg_exchange_count_status(struct wg_downstream *d, unsigned status);

#endif
