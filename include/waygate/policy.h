/* policy — gateway policies behind one ops table (DESIGN §16).
 *
 * Promises:
 *  - A policy is one file (src/policy_<name>.c) and one entry in the table
 *    of policy.c; nothing else changes to add one.
 *  - Configuration: `policies:` lists on a listener, on service_defaults /
 *    services (a service's list replaces the defaults' list, as lists do in
 *    DESIGN §5) and on routes. Each entry is a one-key mapping
 *    `{ <name>: { ...block... } }`; the policy parses its block with the
 *    config walker (positioned FILE:LINE:COL errors, "did you mean").
 *  - Parsing runs on the control thread (start, SIGHUP) and builds the
 *    policy's immutable state there: files it names (PEM keys, JWKS,
 *    htpasswd, key lists) are read at that moment. The result is owned by
 *    the config and freed with it; workers only read it.
 *  - The effective chain of a route is computed once per config: the
 *    listener's entries whose kind the service and route lists do not name,
 *    then the service's entries whose kind the route does not name, then
 *    the route's own entries. A route whose chain is empty has
 *    route->policies == NULL and pays nothing.
 *  - Hooks run on the worker, never block, never lock, do no I/O. The only
 *    mutable shared state (rate-limit buckets) is updated with atomics.
 *
 * The request view (struct wg_policy_req) is protocol-neutral: the exchange
 * fills it with pointers into its codec's buffers (method, path, query,
 * authority, one wg_policy_field per received field line) — no header is
 * copied. Policies never write into those bytes; they record edits (fields
 * dropped, fields added, a new path) that the exchange applies while it
 * writes the upstream head, and, for the response, edits applied while it
 * writes the client head. Added bytes live in the view's arena, which the
 * exchange frees with wg_policy_req_release() when the request ends.
 *
 * How the exchange drives it (src/exchange.c, at its two hook points, for
 * both codecs: http2.c hands the exchange an HTTP/1.1 head too):
 *   after routing, if route->policies != NULL:
 *     r = calloc; fill method/path/query/authority (wg_policy_req_http1 for
 *     an HTTP/1 head), r->req (wg_policy_head_http1), client_ip, tls,
 *     worker, stats, now_ms, unix_s, is_grpc, and the request id the
 *     upstream will get (generate it now if absent);
 *     if wg_policy_request(route->policies, r) == WG_POLICY_ANSWER:
 *       answer r->answer_status with r->answer_body and the fields of
 *       r->resp_extra (gRPC: Trailers-Only with grpc.h's
 *       wg_grpc_status_from_http(status)); the request goes no further;
 *     else write the upstream head: the path is r->new_path when set (then
 *       without strip_prefix), received fields i with
 *       wg_policy_head_dropped(&r->req, i) are left out, r->req.add are
 *       appended; send a copy when r->mirror (http_mirror.h);
 *     wg_policy_req_detach(r) before the codec's request buffer is reused;
 *   on the final response head: if route->policies->has_response, view it
 *     (wg_policy_head_http1 into a local head), wg_policy_response(r,
 *     status, &head), write it without the dropped fields, then head.add,
 *     then r->resp_extra; answers of the exchange's own (502...) carry
 *     r->resp_extra too, and a 5xx names r->trace_id;
 *   the access line gets r->trace_id; wg_policy_req_release(r) at the end.
 *
 * forward_auth is the one hook that needs I/O, and it does none itself: it
 * returns PENDING with r->auth set. The exchange then keeps a copy of the
 * request head (wg_policy_req_rebase), does not read the client's body,
 * sends wg_forward_auth_head() to the auth service through its own
 * upstream code (pick, pool, connect, retries, health, HTTP/1.1 or HTTP/2),
 * hands the response head to wg_forward_auth_response() and reads the body
 * (bounded); let through: wg_policy_resume(r) and on as above; refused: it
 * answers the auth service's status and body; no answer in time: the
 * failure mode decides.
 */
#ifndef WAYGATE_POLICY_H
#define WAYGATE_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct wg_stats_block;

struct wg_pstr {
    const char *p;
    size_t n;
};

struct wg_policy_field {
    struct wg_pstr name, value;
};

/* A header block as policies see it: the received fields (read-only, in the
 * codec's buffer), a drop mark per received field, and added fields. */
struct wg_policy_head {
    const struct wg_policy_field *in;
    unsigned n_in;
    uint8_t *drop;                      /* NULL until a field is removed */
    struct wg_policy_field *add;        /* in the arena */
    unsigned n_add, cap_add;
};

struct wg_policy_arena_block;

/* What the mirror policy asks of the exchange (immutable, in its state). */
struct wg_policy_mirror {
    char *service;
    unsigned percent;                   /* of requests copied */
    unsigned max_in_flight;             /* copies open at once, per worker */
    uint64_t timeout_ms;                /* a copy's whole life */
    uint64_t max_body;                  /* bytes of body a copy carries at most */
};

/* What the forward_auth policy asks of the exchange (immutable, in its
 * state; the header lists stay private to policy_forward_auth.c). */
struct wg_policy_forward_auth {
    char *service;                      /* the auth service (discovered, balanced) */
    char *path;                         /* NULL: the request's own path and query */
    uint64_t timeout_ms;                /* the whole subrequest */
    uint64_t max_response_size;         /* body bytes of the auth response kept */
    bool allow_on_failure;              /* failure_mode: allow */
};

/* A request hook's verdict. PENDING (forward_auth only): the hook set
 * r->auth; the exchange makes that subrequest, then calls
 * wg_forward_auth_response() and, when it let the request through,
 * wg_policy_resume() for the rest of the chain. */
enum wg_policy_verdict { WG_POLICY_CONTINUE = 0, WG_POLICY_ANSWER = 1, WG_POLICY_PENDING = 2 };

#define WG_POLICY_TRACE_ID_LEN 32

struct wg_policy_req {
    /* ---- filled by the exchange before wg_policy_request() ---- */
    struct wg_pstr method, path, query, authority;  /* path: raw, before '?' */
    bool has_query;
    bool is_grpc;                       /* content-type application/grpc* */
    bool tls;                           /* the client spoke TLS */
    const char *client_ip;              /* NUL-terminated text of the client */
    struct wg_pstr request_id;          /* the X-Request-Id the upstream will see */
    struct wg_policy_head req;          /* request fields */
    unsigned worker;                    /* index of the worker running it */
    struct wg_stats_block *stats;       /* the worker's counters, or NULL */
    uint64_t now_ms;                    /* CLOCK_MONOTONIC */
    int64_t unix_s;                     /* CLOCK_REALTIME seconds (token times) */
    /* ---- written by policies ---- */
    struct wg_pstr new_path;            /* rewrite: path to send (n == 0: unchanged) */
    struct wg_pstr consumer;            /* api_key / basic_auth / jwt sub: who calls */
    void *claims;                       /* jwt: the verified payload (json_t *) */
    char trace_id[WG_POLICY_TRACE_ID_LEN + 1];  /* "" when none */
    /* mirror: send a copy of this request there (the exchange does it,
     * http_mirror.h), NULL: no copy. */
    const struct wg_policy_mirror *mirror;
    /* forward_auth: the subrequest to make before the chain goes on (set
     * with a PENDING verdict, cleared by wg_forward_auth_response()). */
    const struct wg_policy_forward_auth *auth;
    /* Added to the response the client gets, whoever answers (CORS,
     * RateLimit-*): the exchange writes them with the final head. */
    struct wg_policy_head resp_extra;
    /* The answer when a hook returns WG_POLICY_ANSWER. Its fields are
     * resp_extra (added above) plus whatever the hook adds there. */
    unsigned answer_status;
    struct wg_pstr answer_body;
    /* ---- private ---- */
    const struct wg_policy_chain *chain;
    size_t resume_at;                   /* the chain entry after a PENDING one */
    struct wg_policy_arena_block *arena;
};

struct wg_policy;
struct cfg_ctx;
typedef struct yaml_node_s yaml_node_t;

struct wg_policy_ops {
    const char *name;                   /* first member: did-you-mean lookups */
    /* Control thread: parse `block` (any YAML node) and build the state.
     * Report errors with positions; return NULL on any error. */
    void *(*parse)(struct cfg_ctx *c, yaml_node_t *block);
    void (*free)(void *state);
    /* Worker: request head (after routing) and response head. Either may be
     * NULL. request: CONTINUE, or ANSWER with answer_status set. */
    enum wg_policy_verdict (*request)(const void *state, struct wg_policy_req *r);
    /* `status` is the response's; edit `head`; may not answer. */
    void (*response)(const void *state, struct wg_policy_req *r, unsigned status,
                     struct wg_policy_head *head);
};

/* One configured policy (refcounted: service_defaults' entries are shared
 * by every service that inherits them). */
struct wg_policy {
    const struct wg_policy_ops *ops;
    void *state;
    unsigned refs;                      /* control thread only */
    unsigned line;
};

struct wg_policy_list {
    struct wg_policy **v;
    size_t n;
};

/* The effective chain of one route. */
struct wg_policy_chain {
    size_t n;
    bool has_response;                  /* some entry has a response hook */
    const struct wg_policy *v[];
};

/* ---- config side (control thread) ---- */
const struct wg_policy_ops *wg_policy_ops_find(const char *name);
void wg_policy_put(struct wg_policy *p);
struct wg_policy *wg_policy_get(struct wg_policy *p);
void wg_policy_list_free(struct wg_policy_list *l);
/* Copy (taking references); false on ENOMEM. */
bool wg_policy_list_copy(struct wg_policy_list *dst, const struct wg_policy_list *src);
/* NULL when all three are empty; sets *oom on ENOMEM. */
struct wg_policy_chain *wg_policy_chain_build(const struct wg_policy_list *listener,
                                              const struct wg_policy_list *service,
                                              const struct wg_policy_list *route, bool *oom);
void wg_policy_chain_free(struct wg_policy_chain *c);
/* Does the chain hold a policy of this kind? */
bool wg_policy_chain_has(const struct wg_policy_chain *c, const char *name);

/* ---- worker side ---- */
/* Run the request hooks in order; stops at the first ANSWER or PENDING. */
enum wg_policy_verdict wg_policy_request(const struct wg_policy_chain *c, struct wg_policy_req *r);
/* After a PENDING verdict whose subrequest let the request through: run
 * the hooks after that entry, as wg_policy_request() does. */
enum wg_policy_verdict wg_policy_resume(struct wg_policy_req *r);
/* Run the response hooks on the response head about to go to the client. */
void wg_policy_response(struct wg_policy_req *r, unsigned status, struct wg_policy_head *head);
/* Free the arena and the claims (the view itself is the caller's). */
void wg_policy_req_release(struct wg_policy_req *r);

/* ---- exchange side: building the view from a codec, writing edits ---- */
struct wg_http_parser;
/* Point `h` at the fields of an HTTP/1 head the parser accepted (msg: its
 * first byte); the field array comes from the arena. false on ENOMEM. */
bool wg_policy_head_http1(struct wg_policy_req *r, struct wg_policy_head *h,
                          const struct wg_http_parser *p, const char *msg);
/* The request line's parts and the Host of an HTTP/1 request head. */
void wg_policy_req_http1(struct wg_policy_req *r, const struct wg_http_parser *p, const char *msg);
/* After the request hooks: forget every pointer into the codec's request
 * buffer (authority and request id are copied into the arena), so the
 * response hooks may run after that buffer was reused. */
void wg_policy_req_detach(struct wg_policy_req *r);
/* The request head's bytes moved from `from` (len bytes) to `to` (the
 * exchange keeps a copy while a forward_auth subrequest runs): every view
 * pointer into them follows. */
void wg_policy_req_rebase(struct wg_policy_req *r, const char *from, size_t len, const char *to);
/* Bytes the added fields of `h` take as "Name: value\r\n" lines. */
size_t wg_policy_head_added_bytes(const struct wg_policy_head *h);

/* Memory that lives as long as the request (NULL on ENOMEM). */
void *wg_policy_alloc(struct wg_policy_req *r, size_t n);
char *wg_policy_strdup(struct wg_policy_req *r, const char *s, size_t n);

/* Head edits. Names compare ASCII case-insensitively. get: the first value
 * still visible (received and not dropped, else added), or false. */
bool wg_policy_head_get(const struct wg_policy_head *h, const char *name, size_t n,
                        struct wg_pstr *value);
/* Drop every field of that name (received and added). */
void wg_policy_head_remove(struct wg_policy_req *r, struct wg_policy_head *h, const char *name,
                           size_t n);
/* Append a field (both strings copied into the arena). false on ENOMEM. */
bool wg_policy_head_add(struct wg_policy_req *r, struct wg_policy_head *h, const char *name,
                        size_t nn, const char *value, size_t vn);
/* remove + add. */
bool wg_policy_head_set(struct wg_policy_req *r, struct wg_policy_head *h, const char *name,
                        size_t nn, const char *value, size_t vn);
/* Is received field i dropped? */
static inline bool wg_policy_head_dropped(const struct wg_policy_head *h, unsigned i)
{
    return h->drop && h->drop[i];
}

/* Answer the request: status, a short body (static or arena memory). */
enum wg_policy_verdict wg_policy_answer(struct wg_policy_req *r, unsigned status,
                                        const char *body);

/* An authentication refusal: counted (waygate_policy_denied_total), with a
 * WWW-Authenticate challenge (may be NULL) added to the answer. */
enum wg_policy_verdict wg_policy_deny(struct wg_policy_req *r, unsigned status,
                                      const char *challenge, const char *body);

/* ---- forward_auth: what the exchange asks of the policy ---- */
/* The subrequest's HTTP/1.1 head (request line, Host, the chosen request
 * fields, X-Forwarded-Method/-Proto/-Host/-Uri/-For, X-Request-Id; no
 * body), in the arena; the scheme is r->tls's. false on ENOMEM. */
bool wg_forward_auth_head(const struct wg_policy_forward_auth *fa, struct wg_policy_req *r,
                          struct wg_pstr *out);
/* The auth service answered `status` with head `h` (its fields): 2xx
 * replaces the copy_headers fields of the request with the response's and
 * returns true (let through); anything else adds the response's end-to-end
 * fields to r->resp_extra for the answer, counts a denial and returns
 * false. Clears r->auth either way. */
bool wg_forward_auth_response(const struct wg_policy_forward_auth *fa, struct wg_policy_req *r,
                              unsigned status, const struct wg_policy_head *h);

/* The raw (undecoded) value of query parameter `name`, or false. */
bool wg_policy_query_param(const struct wg_policy_req *r, const char *name, size_t n,
                           struct wg_pstr *out);
/* The value of cookie `name` in the visible Cookie fields, or false. */
bool wg_policy_cookie(const struct wg_policy_req *r, const char *name, size_t n,
                      struct wg_pstr *out);

/* A named value a policy can key on or substitute (`$client_ip`,
 * `$request_id`, `$host`, `$consumer`, `$jwt.<claim>`; for keys
 * `client_ip`, `header:N`, `claim:N`, `consumer`, `route`). */
enum wg_policy_var { WG_PVAR_CLIENT_IP, WG_PVAR_REQUEST_ID, WG_PVAR_HOST, WG_PVAR_CONSUMER,
                     WG_PVAR_CLAIM, WG_PVAR_HEADER, WG_PVAR_ROUTE };
/* The value (false when absent). Claims that are not strings are written
 * as JSON text into the arena. */
bool wg_policy_var_get(struct wg_policy_req *r, enum wg_policy_var v, const char *arg,
                       struct wg_pstr *out);

extern const struct wg_policy_ops wg_policy_jwt, wg_policy_api_key, wg_policy_basic_auth,
    wg_policy_rate_limit, wg_policy_cors, wg_policy_headers, wg_policy_rewrite,
    wg_policy_trace, wg_policy_mirror, wg_policy_forward_auth;

#endif
