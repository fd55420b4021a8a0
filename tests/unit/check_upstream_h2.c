/* check_upstream_h2 — the HTTP/2 upstream codec (upstream_h2.h) against the
 * real C gRPC test backend (tests/tools/wg_grpc_backend, an nghttp2 server
 * in its own process): multiplexing under the peer's
 * MAX_CONCURRENT_STREAMS, the per-instance connection cap, GOAWAY and the
 * retryable streams above last-stream-id, flow control both ways, resets,
 * PING liveness of idle connections. */
#include "unit_util.h"

#include <errno.h>
#include <event2/event.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include "waygate/http.h"
#include "waygate/http_buf.h"
#include "waygate/balance.h"
#include "waygate/pool.h"
#include "waygate/reclaim.h"
#include "waygate/tls.h"
#include "waygate/upstream_h2.h"

#ifndef WG_GRPC_BACKEND
#error "WG_GRPC_BACKEND: the path of wg_grpc_backend"
#endif

struct world {
    pid_t backend;
    struct event_base *base;
    struct wg_reclaim *rc;
    struct wg_pool *pool;
    struct wg_config_ref *ref;
    struct wg_instance *inst;
    struct wg_h2_pool *h2;
};

/* An event base, a pool with one instance g/a at 127.0.0.1:port, an h2 pool. */
static void world_pool(struct world *w, unsigned port, const struct wg_h2_settings *set)
{
    w->base = event_base_new();
    w->rc = wg_reclaim_new();
    w->pool = wg_pool_new(w->rc, &wg_balance_policy, NULL, NULL);
    w->ref = wg_config_ref_new(unit_config("services:\n  g: { health_check: { type: none } }\n"));
    wg_pool_set_config(w->pool, w->ref);
    struct wg_record_set rs = { 0 };
    unit_record(&rs, "g", "a", "127.0.0.1", (int)port, 100);
    ck_assert_int_eq(wg_pool_replace_all(w->pool, &rs), 0);
    wg_record_set_clear(&rs);
    w->inst = wg_snapshot_service(wg_pool_current(w->pool), "g")->members[0].inst;
    w->h2 = wg_h2_pool_new(w->base, set, NULL);
    ck_assert_ptr_nonnull(w->h2);
}

static void world_up(struct world *w, const char *const *args, const struct wg_h2_settings *set)
{
    int fds[2];
    memset(w, 0, sizeof *w);
    ck_assert_int_eq(pipe(fds), 0);
    const char *argv[16] = { WG_GRPC_BACKEND, "--ready-fd", "3", "--message-size", "10" };
    int n = 5;
    for (; args && *args && n < 14; args++)
        argv[n++] = *args;
    argv[n] = NULL;
    w->backend = fork();
    ck_assert_int_ge(w->backend, 0);
    if (w->backend == 0) {
        dup2(fds[1], 3);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    close(fds[1]);
    char line[64] = "";
    ssize_t k = read(fds[0], line, sizeof line - 1);
    close(fds[0]);
    ck_assert_int_gt(k, 0);
    unsigned port = 0;
    ck_assert_int_eq(sscanf(line, "ready %u", &port), 1);
    world_pool(w, port, set);
}

static void world_down(struct world *w)
{
    wg_h2_pool_free(w->h2);
    kill(w->backend, SIGKILL);
    waitpid(w->backend, NULL, 0);
    wg_pool_free(w->pool);
    wg_reclaim_free(w->rc);
    wg_config_ref_put(w->ref);
    event_base_free(w->base);
}

/* One exchange's view of its stream. */
struct call {
    struct wg_h2_stream *s;
    unsigned status;
    bool head, end_in_head, closed, retryable, paused;
    uint32_t error;
    size_t got, max_offer;
    char grpc_status[8];
    const uint8_t *body;                /* to send */
    size_t body_len, body_off;
    unsigned writable;
    bool keep;                          /* keep offered bytes: by a count of their buffer */
    struct piece { const uint8_t *p; size_t len; struct hp_rx *rx; } *pieces;
    size_t n_pieces, by_ref;
};

static void c_head(void *ctx, unsigned status, const nghttp2_nv *nv, size_t n, bool end)
{
    struct call *c = ctx;
    c->head = true;
    c->status = status;
    c->end_in_head = end;
}

static size_t c_data(void *ctx, const uint8_t *p, size_t len, struct hp_rx *rx)
{
    struct call *c = ctx;
    if (len > c->max_offer)
        c->max_offer = len;
    if (c->paused)
        return 0;
    c->got += len;
    if (c->keep) {                      /* as the exchange's queue does (struct hp_rxq) */
        c->pieces = realloc(c->pieces, (c->n_pieces + 1) * sizeof *c->pieces);
        struct piece *k = &c->pieces[c->n_pieces++];
        *k = (struct piece){ p, len, rx };
        ck_assert(!rx || hp_rx_holds(rx, p, len));
        if (rx) {
            rx->refs++;
            c->by_ref += len;
        } else {
            k->p = memcpy(malloc(len), p, len);
        }
    }
    return len;
}

static void c_trailers(void *ctx, const nghttp2_nv *nv, size_t n)
{
    struct call *c = ctx;
    for (size_t i = 0; i < n; i++)
        if (nv[i].namelen == 11 && memcmp(nv[i].name, "grpc-status", 11) == 0)
            snprintf(c->grpc_status, sizeof c->grpc_status, "%.*s", (int)nv[i].valuelen,
                     nv[i].value);
}

static void c_closed(void *ctx, uint32_t error, bool retryable)
{
    struct call *c = ctx;
    ck_assert(!c->closed);
    c->closed = true;
    c->error = error;
    c->retryable = retryable;
    c->s = NULL;
}

static void pump(struct call *c)
{
    while (c->s && c->body && c->body_off < c->body_len) {
        size_t n = wg_h2_stream_write(c->s, c->body + c->body_off, c->body_len - c->body_off);
        if (!n)
            return;
        c->body_off += n;
    }
    if (c->s && c->body && c->body_off == c->body_len) {
        c->body = NULL;
        ck_assert_int_eq(wg_h2_stream_end(c->s, NULL, 0), 0);
    }
}

static void c_writable(void *ctx)
{
    struct call *c = ctx;
    c->writable++;
    pump(c);
}

static const struct wg_h2_stream_ops OPS = { c_head, c_data, c_trailers, c_closed, c_writable };

#define NV(n, v) { (uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, sizeof(v) - 1, 0 }

static const struct wg_h2_conn_limits *call_lim;     /* the service's, for call_start */

static struct wg_h2_stream *call_start(struct world *w, struct call *c, const char *path,
                                       const uint8_t *body, size_t len, int *err)
{
    nghttp2_nv nv[] = { NV(":method", "POST"), NV(":scheme", "http"),
                        NV(":authority", "g"), { (uint8_t *)":path", (uint8_t *)path, 5,
                                                 strlen(path), 0 },
                        NV("content-type", "application/grpc"), NV("te", "trailers") };
    memset(c, 0, sizeof *c);
    c->body = body;
    c->body_len = len;
    int e = 0;
    c->s = wg_h2_submit(w->h2, w->inst, NULL, NULL, false, call_lim, nv, 6, true, &OPS, c,
                        err ? err : &e);
    if (c->s && body)
        pump(c);
    return c->s;
}

static const uint8_t EMPTY_MSG[5] = { 0 };

/* Run the loop until done(arg) or `ms` pass. */
static bool run_until(struct world *w, bool (*done)(void *), void *arg, unsigned ms)
{
    uint64_t end = wg_now_ms() + ms;
    while (!done(arg) && wg_now_ms() < end) {
        struct timeval tv = { 0, 10000 };
        event_base_loopexit(w->base, &tv);
        event_base_loop(w->base, EVLOOP_ONCE);
    }
    return done(arg);
}

struct calls { struct call *v; size_t n; };
static bool all_closed(void *arg)
{
    struct calls *cs = arg;
    for (size_t i = 0; i < cs->n; i++)
        if (!cs->v[i].closed)
            return false;
    return true;
}
static bool has_head(void *arg) { return ((struct call *)arg)->head; }
static bool never(void *arg) { return false; }

START_TEST(unary_calls_share_one_connection)
{
    struct world w;
    world_up(&w, NULL, NULL);
    static struct call c[50];
    for (int i = 0; i < 50; i++)
        ck_assert_ptr_nonnull(call_start(&w, &c[i], "/bench.B/Call", EMPTY_MSG, 5, NULL));
    struct calls cs = { c, 50 };
    ck_assert(run_until(&w, all_closed, &cs, 5000));
    for (int i = 0; i < 50; i++) {
        ck_assert_uint_eq(c[i].status, 200);
        ck_assert_uint_eq(c[i].got, 15);            /* 5-byte prefix + 10 */
        ck_assert_str_eq(c[i].grpc_status, "0");
        ck_assert_uint_eq(c[i].error, 0);
    }
    struct wg_h2_pool_stats st;
    wg_h2_pool_stats(w.h2, &st);
    ck_assert_uint_eq(st.connects, 1);
    ck_assert_uint_eq(st.streams, 0);
    ck_assert_uint_eq(st.connections, 1);           /* kept for the next stream */
    /* Trailers-Only: the status in the head, the end right after. */
    nghttp2_nv nv[] = { NV(":method", "POST"), NV(":scheme", "http"), NV(":authority", "g"),
                        NV(":path", "/x.Y/Z"), NV("x-grpc-status", "14") };
    struct call t = { 0 };
    int err = 0;
    t.s = wg_h2_submit(w.h2, w.inst, NULL, NULL, false, NULL, nv, 5, false, &OPS, &t, &err);
    ck_assert_ptr_nonnull(t.s);
    struct calls one = { &t, 1 };
    ck_assert(run_until(&w, all_closed, &one, 5000));
    ck_assert(t.end_in_head && t.status == 200 && t.got == 0 && t.error == 0);
    wg_h2_pool_stats(w.h2, &st);
    ck_assert_uint_eq(st.connects, 1);
    world_down(&w);
}
END_TEST

/* The peer's MAX_CONCURRENT_STREAMS (2) bounds each connection; more
 * streams open more connections, up to max_conns, then EBUSY. */
START_TEST(streams_bounded_by_peer_settings_then_cap)
{
    struct world w;
    const char *args[] = { "--max-streams", "2", NULL };
    struct wg_h2_settings set = wg_h2_defaults;
    set.max_conns = 3;
    world_up(&w, args, &set);
    static struct call c[7];
    /* Open streams (echo, body not ended): the first learns the SETTINGS. */
    ck_assert_ptr_nonnull(call_start(&w, &c[0], "/wg.Echo/Hold", NULL, 0, NULL));
    ck_assert(run_until(&w, has_head, &c[0], 5000));
    for (int i = 1; i < 6; i++)
        ck_assert_ptr_nonnull(call_start(&w, &c[i], "/wg.Echo/Hold", NULL, 0, NULL));
    struct wg_h2_pool_stats st;
    wg_h2_pool_stats(w.h2, &st);
    ck_assert_uint_eq(st.connections, 3);
    ck_assert_uint_eq(st.streams, 6);
    int err = 0;
    ck_assert_ptr_null(call_start(&w, &c[6], "/wg.Echo/Hold", NULL, 0, &err));
    ck_assert_int_eq(err, EBUSY);
    for (int i = 0; i < 6; i++)
        ck_assert_int_eq(wg_h2_stream_end(c[i].s, NULL, 0), 0);
    struct calls cs = { c, 6 };
    ck_assert(run_until(&w, all_closed, &cs, 5000));
    for (int i = 0; i < 6; i++)
        ck_assert_msg(c[i].status == 200 && c[i].error == 0 && !c[i].retryable,
                      "stream %d: status %u error %u retryable %d", i, c[i].status, c[i].error,
                      c[i].retryable);
    world_down(&w);
}
END_TEST

/* GOAWAY after 3 streams: the 4th was not processed (REFUSED_STREAM):
 * retryable; the connection closes; the next stream gets a new one. */
START_TEST(goaway_refuses_unprocessed_streams)
{
    struct world w;
    const char *args[] = { "--goaway-after", "3", NULL };
    world_up(&w, args, NULL);
    static struct call c[5];
    for (int i = 0; i < 3; i++)
        ck_assert_ptr_nonnull(call_start(&w, &c[i], "/bench.B/Call", EMPTY_MSG, 5, NULL));
    struct calls cs = { c, 3 };
    ck_assert(run_until(&w, all_closed, &cs, 5000));
    int err = 0;
    ck_assert_msg(call_start(&w, &c[3], "/bench.B/Call", EMPTY_MSG, 5, &err), "err %d", err);
    struct calls c3 = { &c[3], 1 };
    ck_assert(run_until(&w, all_closed, &c3, 5000));
    ck_assert(!c[3].head);
    ck_assert(c[3].retryable);
    ck_assert_uint_eq(c[3].error, NGHTTP2_REFUSED_STREAM);
    struct wg_h2_pool_stats st;
    wg_h2_pool_stats(w.h2, &st);
    ck_assert_uint_eq(st.goaways, 1);
    ck_assert_uint_eq(st.refused, 1);
    ck_assert_uint_eq(st.connections, 0);
    ck_assert_ptr_nonnull(call_start(&w, &c[4], "/bench.B/Call", EMPTY_MSG, 5, NULL));
    struct calls c4 = { &c[4], 1 };
    ck_assert(run_until(&w, all_closed, &c4, 5000));
    ck_assert(c[4].status == 200 && c[4].error == 0);
    wg_h2_pool_stats(w.h2, &st);
    ck_assert_uint_eq(st.connects, 2);
    world_down(&w);
}
END_TEST

/* 2 MiB echoed: the request body goes through the bounded buffer (writable
 * callbacks), and while the exchange takes nothing the upstream can put at
 * most one stream window into waygate. */
/* One gRPC message of len - 5 bytes, framed, its bytes varying (malloc'd). */
static uint8_t *big_message(size_t len)
{
    uint8_t *body = malloc(len);
    ck_assert_ptr_nonnull(body);
    for (size_t i = 0; i < len; i++)
        body[i] = (uint8_t)(i * 13 + (i >> 12));
    size_t m = len - 5;
    body[0] = 0;
    body[1] = (uint8_t)(m >> 24), body[2] = (uint8_t)(m >> 16), body[3] = (uint8_t)(m >> 8);
    body[4] = (uint8_t)m;
    return body;
}

START_TEST(flow_control_both_ways)
{
    struct world w;
    struct wg_h2_settings set = wg_h2_defaults;
    set.stream_window = 64 * 1024;
    world_up(&w, NULL, &set);
    size_t len = 2u << 20;
    uint8_t *body = big_message(len);
    struct call c;
    ck_assert_ptr_nonnull(call_start(&w, &c, "/wg.Echo/Big", body, len, NULL));
    c.paused = true;
    ck_assert(!run_until(&w, never, NULL, 500));
    ck_assert(c.head && !c.closed);
    ck_assert_uint_le(c.max_offer, 64 * 1024);      /* never more than the window */
    ck_assert_uint_gt(c.writable, 0);               /* through the bounded buffer */
    c.paused = false;
    wg_h2_stream_resume_read(c.s);
    struct calls cs = { &c, 1 };
    ck_assert(run_until(&w, all_closed, &cs, 10000));
    ck_assert_uint_eq(c.got, len);
    ck_assert_str_eq(c.grpc_status, "0");
    free(body);
    world_down(&w);
}
END_TEST

/* The pieces c kept are `want`'s len bytes, in order; their counts and
 * copies are given back. */
static void pieces_are(struct hp_local *loc, struct call *c, const uint8_t *want, size_t len)
{
    size_t at = 0;
    for (size_t i = 0; i < c->n_pieces; i++) {
        struct piece *k = &c->pieces[i];
        ck_assert(at + k->len <= len && memcmp(k->p, want + at, k->len) == 0);
        at += k->len;
        if (k->rx)
            hp_rx_put(loc, &k->rx);
        else
            free((void *)k->p);
    }
    ck_assert_uint_eq(at, len);
    free(c->pieces);
    c->pieces = NULL;
}

/* A reply's payloads come with the receive buffer that holds them, and
 * a buffer someone keeps a count of is never read into again where its
 * bytes are: a 2 MiB echo kept by reference to the end is byte-exact, and
 * every buffer goes back once the counts are dropped. */
START_TEST(payloads_kept_by_reference_stay_intact)
{
    struct world w;
    world_up(&w, NULL, NULL);
    struct hp_local *loc = hp_local_peek();
    ck_assert_ptr_nonnull(loc);
    unsigned live = loc->rx_live;
    size_t len = 2u << 20;
    uint8_t *body = big_message(len);
    struct call c;
    ck_assert_ptr_nonnull(call_start(&w, &c, "/wg.Echo/Big", body, len, NULL));
    c.keep = true;
    struct calls cs = { &c, 1 };
    ck_assert(run_until(&w, all_closed, &cs, 10000));
    ck_assert_uint_eq(c.got, len);
    ck_assert_uint_gt(c.by_ref, len / 2);   /* most of it came in a buffer of its own */
    ck_assert_uint_gt(loc->rx_live, live);  /* ... which the counts still hold */
    pieces_are(loc, &c, body, len);
    world_down(&w);                     /* the connection's own buffer goes too */
    ck_assert_uint_eq(loc->rx_live, live);
    free(body);
}
END_TEST

/* Every readv of this process (the h2 upstream's reads) goes through here:
 * the most bytes one returned. */
static size_t readv_most;

ssize_t readv(int fd, const struct iovec *iov, int n)
{
    ssize_t k = syscall(SYS_readv, fd, iov, n);
    if (k > 0 && (size_t)k > readv_most)
        readv_most = (size_t)k;
    return k;
}

static bool closed_one(void *arg) { return ((struct call *)arg)->closed; }

/* A call for the backend's fixed reply whose pieces c keeps (by a count
 * of their buffer); *live: the worker's buffers out before it. */
static struct hp_local *kept_call(struct world *w, struct call *c, unsigned *live)
{
    struct hp_local *loc = hp_local_peek();
    ck_assert_ptr_nonnull(loc);
    *live = loc->rx_live;
    ck_assert_ptr_nonnull(call_start(w, c, "/bench.Bench/Unary", EMPTY_MSG, 5, NULL));
    c->keep = true;
    return loc;
}

/* The backend's fixed reply of len bytes, framed: "grpc" repeated. */
static uint8_t *fixed_reply(size_t len)
{
    uint8_t *want = malloc(5 + len);
    ck_assert_ptr_nonnull(want);
    want[0] = 0;
    want[1] = (uint8_t)(len >> 24), want[2] = (uint8_t)(len >> 16), want[3] = (uint8_t)(len >> 8);
    want[4] = (uint8_t)len;
    for (size_t i = 0; i < len; i++)
        want[5 + i] = (uint8_t)"grpc"[i % 4];
    return want;
}

/* A bulk reply waiting in the socket is read more than a receive buffer at
 * a time (a read that filled its buffer is followed by one readv into
 * several), and what each buffer holds is still lent whole and in order:
 * a 2 MiB reply, read after the instance had a stream window's worth
 * waiting, is byte-exact and came in reads larger than HP_RX. */
START_TEST(bulk_replies_read_several_buffers_at_once)
{
    struct world w;
    const char *args[] = { "--message-size", "2097152", NULL };
    world_up(&w, args, NULL);
    unsigned live;
    struct call c;
    struct hp_local *loc = kept_call(&w, &c, &live);
    ck_assert(run_until(&w, has_head, &c, 5000));
    usleep(300 * 1000);                 /* a stream window (256 KiB) waits in the socket */
    readv_most = 0;
    ck_assert(run_until(&w, closed_one, &c, 10000));
    ck_assert_str_eq(c.grpc_status, "0");
    size_t len = 5 + (2u << 20);
    ck_assert_uint_eq(c.got, len);
    ck_assert_uint_gt(readv_most, HP_RX);
    ck_assert_uint_gt(c.by_ref, len / 2);
    uint8_t *want = fixed_reply(2u << 20);
    pieces_are(loc, &c, want, len);
    free(want);
    world_down(&w);
    ck_assert_uint_eq(loc->rx_live, live);
}
END_TEST

/* Frames larger than 16 KiB both ways. The upstream may send DATA
 * frames as large as a stream window (SETTINGS_MAX_FRAME_SIZE): the
 * backend, which sends frames as large as it is allowed, sends a 1 MiB
 * reply in frames of the whole window, and the reply, lent piece by
 * piece out of receive buffers smaller than one frame, is byte-exact.
 * A request body goes in frames as large as the stream's buffer
 * (WG_H2_BODY_BUF) when the instance allows them: a 1 MiB echo arrives
 * in frames larger than 16 KiB and comes back byte-exact. */
START_TEST(frames_as_large_as_allowed)
{
    char log[] = "/tmp/wg-h2frames-XXXXXX";
    int fd = mkstemp(log);
    ck_assert_int_ge(fd, 0);
    close(fd);
    struct world w;
    const char *args[] = { "--message-size", "1048576", "--log", log, NULL };
    world_up(&w, args, NULL);
    unsigned live;
    struct call c;
    struct hp_local *loc = kept_call(&w, &c, &live);
    ck_assert(run_until(&w, closed_one, &c, 10000));
    ck_assert_str_eq(c.grpc_status, "0");
    size_t len = 5 + (1u << 20);
    ck_assert_uint_eq(c.got, len);
    uint8_t *want = fixed_reply(1u << 20);
    pieces_are(loc, &c, want, len);
    free(want);
    uint8_t *body = big_message(1u << 20);
    struct call e;
    ck_assert_ptr_nonnull(call_start(&w, &e, "/wg.Echo/Big", body, 1u << 20, NULL));
    e.keep = true;
    ck_assert(run_until(&w, closed_one, &e, 10000));
    ck_assert_str_eq(e.grpc_status, "0");
    pieces_are(loc, &e, body, 1u << 20);
    free(body);
    world_down(&w);
    ck_assert_uint_eq(loc->rx_live, live);
    FILE *f = fopen(log, "r");
    ck_assert_ptr_nonnull(f);
    size_t out = 0, in = 0, k;
    char line[64];
    while (fgets(line, sizeof line, f)) {
        if (sscanf(line, "data-max %zu", &k) == 1 && k > out)
            out = k;
        if (sscanf(line, "data-in-max %zu", &k) == 1 && k > in)
            in = k;
    }
    fclose(f);
    unlink(log);
    ck_assert_uint_eq(out, wg_h2_defaults.stream_window);      /* not 16 KiB */
    ck_assert_uint_gt(out, HP_RX);                             /* a frame spans buffers */
    ck_assert_uint_gt(in, 16384);
    ck_assert_uint_le(in, WG_H2_BODY_BUF);
}
END_TEST

/* The exchange's payload queue: a payload in a receive buffer of its own
 * is referred to (the same bytes, one more count); a short one, or one
 * without a buffer, is copied into the queue's own buffer, joined to the
 * entry before it when that is own's too; the queue takes nothing past
 * its entries or HP_RXQ_BYTES; a take in part keeps the rest, a whole one
 * hands the entry's count over; clear gives every count back. */
START_TEST(payload_queue_refers_copies_and_counts)
{
    struct event_base *base = event_base_new();
    struct hp_local *loc = hp_local_get(base);
    ck_assert_ptr_nonnull(loc);
    unsigned live = loc->rx_live;
    struct hp_rx *rx = hp_rx_new(loc);
    ck_assert_ptr_nonnull(rx);
    for (unsigned i = 0; i < HP_RX; i++)
        rx->data[i] = (uint8_t)(i * 3);
    rx->len = HP_RX;
    struct hp_rxq q;
    memset(&q, 0, sizeof q);
    /* referred to: the same bytes, a count */
    ck_assert_uint_eq(hp_rxq_put(loc, &q, rx->data, 8192, rx), 8192);
    ck_assert_ptr_eq(hp_rxq_front(&q)->p, rx->data);
    ck_assert_uint_eq(rx->refs, 2);
    /* the rest of it, however short, in the same buffer: the same entry, no count more */
    ck_assert_uint_eq(hp_rxq_put(loc, &q, rx->data + 8192, 9, rx), 9);
    ck_assert_uint_eq(hp_rxq_put(loc, &q, rx->data + 8201, 4096, rx), 4096);
    ck_assert_uint_eq(q.n, 1);
    ck_assert_uint_eq(hp_rxq_front(&q)->len, 8192 + 9 + 4096);
    ck_assert_uint_eq(rx->refs, 2);
    ck_assert_ptr_null(q.own);
    hp_rxq_take(loc, &q, 4096, NULL);   /* a take in part leaves the join intact */
    ck_assert_uint_eq(hp_rxq_put(loc, &q, rx->data + 12297, 3, rx), 3);
    ck_assert_uint_eq(hp_rxq_front(&q)->len, 8192 + 9 + 3);
    hp_rxq_clear(loc, &q);
    ck_assert_uint_eq(rx->refs, 1);
    ck_assert_uint_eq(hp_rxq_put(loc, &q, rx->data, 8192, rx), 8192);
    /* short, not next to the last entry: copied into own, and the next short one joins that entry */
    ck_assert_uint_eq(hp_rxq_put(loc, &q, rx->data + 9000, 100, rx), 100);
    ck_assert_uint_eq(hp_rxq_put(loc, &q, rx->data + 9100, 50, NULL), 50);
    ck_assert_uint_eq(q.n, 2);
    ck_assert_uint_eq(q.bytes, 8342);
    ck_assert_ptr_nonnull(q.own);
    ck_assert_uint_eq(q.own->refs, 2);
    ck_assert(memcmp(q.e[1].p, rx->data + 9000, 150) == 0);
    /* not in the buffer it came with: copied */
    uint8_t outside[5000];
    memset(outside, 7, sizeof outside);
    ck_assert_uint_eq(hp_rxq_put(loc, &q, outside, sizeof outside, rx), sizeof outside);
    ck_assert_ptr_eq(q.e[1].p + 150, q.own->data + 150);
    ck_assert_uint_eq(q.n, 2);
    /* the entries fill up (pieces that overlap, none next to the one before) */
    ck_assert_uint_le(16384 + HP_RXQ_MAX * 1800 + 4096, HP_RX);
    for (unsigned i = 0; q.n < HP_RXQ_MAX; i++)
        ck_assert_uint_eq(hp_rxq_put(loc, &q, rx->data + 16384 + i * 1800, 4096, rx), 4096);
    ck_assert(!hp_rxq_room(&q));
    ck_assert_uint_eq(hp_rxq_put(loc, &q, rx->data, 4096, rx), 0);
    /* a take in part keeps the entry; the caller's count is one more */
    struct hp_rx *kept = NULL;
    hp_rxq_take(loc, &q, 4096, &kept);
    ck_assert_ptr_eq(kept, rx);
    ck_assert_ptr_eq(hp_rxq_front(&q)->p, rx->data + 4096);
    hp_rx_put(loc, &kept);
    /* a whole take hands the entry's count over */
    unsigned refs = rx->refs;
    hp_rxq_take(loc, &q, 4096, &kept);
    ck_assert_ptr_eq(kept, rx);
    ck_assert_uint_eq(rx->refs, refs);
    ck_assert_uint_eq(q.n, HP_RXQ_MAX - 1);
    hp_rx_put(loc, &kept);
    /* own starts over once nobody refers to it */
    hp_rxq_take(loc, &q, q.e[q.head].len, NULL);
    ck_assert_uint_eq(q.own->refs, 1);
    ck_assert_uint_eq(hp_rxq_put(loc, &q, outside, 10, NULL), 10);
    ck_assert_ptr_eq(q.e[(q.head + q.n - 1) % HP_RXQ_MAX].p, q.own->data);
    /* no more than HP_RXQ_BYTES wait */
    hp_rxq_clear(loc, &q);
    ck_assert_uint_eq(rx->refs, 1);
    ck_assert_uint_le(HP_RXQ_BYTES / (HP_RX / 4), HP_RXQ_MAX);
    for (unsigned i = 0; i < HP_RXQ_BYTES / (HP_RX / 4); i++)
        ck_assert_uint_eq(hp_rxq_put(loc, &q, rx->data, HP_RX / 4, rx), HP_RX / 4);
    ck_assert_uint_eq(q.bytes, HP_RXQ_BYTES);
    ck_assert(!hp_rxq_room(&q));
    ck_assert_uint_eq(hp_rxq_put(loc, &q, rx->data, 5000, rx), 0);
    hp_rxq_clear(loc, &q);
    ck_assert_uint_eq(rx->refs, 1);
    hp_rx_put(loc, &rx);
    ck_assert_uint_eq(loc->rx_live, live);
    event_base_free(base);
}
END_TEST

/* Fields are copied at submit, NO_COPY flags or not (the exchange's head
 * lives on its stack): the buffer is overwritten before the HEADERS go
 * out, and the backend still sees x-grpc-status 14 (Trailers-Only). */
START_TEST(submit_copies_no_copy_fields)
{
    struct world w;
    world_up(&w, NULL, NULL);
    char buf[] = ":methodPOST:schemehttp:authorityg:path/x.Y/Zx-grpc-status14";
    const uint8_t *b = (const uint8_t *)buf;
    const uint8_t f = NGHTTP2_NV_FLAG_NO_COPY_NAME | NGHTTP2_NV_FLAG_NO_COPY_VALUE;
    nghttp2_nv nv[] = { { (uint8_t *)b, (uint8_t *)b + 7, 7, 4, f },
                        { (uint8_t *)b + 11, (uint8_t *)b + 18, 7, 4, f },
                        { (uint8_t *)b + 22, (uint8_t *)b + 32, 10, 1, f },
                        { (uint8_t *)b + 33, (uint8_t *)b + 38, 5, 6, f },
                        { (uint8_t *)b + 44, (uint8_t *)b + 57, 13, 2, f } };
    struct call t = { 0 };
    int err = 0;
    t.s = wg_h2_submit(w.h2, w.inst, NULL, NULL, false, NULL, nv, 5, false, &OPS, &t, &err);
    ck_assert_ptr_nonnull(t.s);
    memset(buf, 'z', sizeof buf - 1);
    struct calls one = { &t, 1 };
    ck_assert(run_until(&w, all_closed, &one, 5000));
    ck_assert_msg(t.end_in_head && t.status == 200 && t.error == 0, "status %u error %u",
                  t.status, t.error);
    world_down(&w);
}
END_TEST

/* The limits a submit gives (the service's) replace the pool's for the
 * instance: max_idle 0 keeps no idle connection; idle_timeout closes one. */
START_TEST(service_limits_replace_the_pools)
{
    struct world w;
    world_up(&w, NULL, NULL);
    struct wg_h2_conn_limits none = wg_h2_defaults.lim, brief = wg_h2_defaults.lim;
    none.max_idle = 0;
    brief.idle_timeout_ms = 500;
    struct call c;
    struct calls one = { &c, 1 };
    struct wg_h2_pool_stats st;
    call_lim = &none;
    ck_assert_ptr_nonnull(call_start(&w, &c, "/bench.B/Call", EMPTY_MSG, 5, NULL));
    ck_assert(run_until(&w, all_closed, &one, 5000));
    ck_assert(c.status == 200 && c.error == 0);
    wg_h2_pool_stats(w.h2, &st);
    ck_assert_uint_eq(st.connections, 0);
    ck_assert_uint_eq(st.idle_closed, 1);
    call_lim = &brief;
    ck_assert_ptr_nonnull(call_start(&w, &c, "/bench.B/Call", EMPTY_MSG, 5, NULL));
    ck_assert(run_until(&w, all_closed, &one, 5000));
    wg_h2_pool_tick(w.h2, wg_now_ms() + 100);
    wg_h2_pool_stats(w.h2, &st);
    ck_assert_uint_eq(st.connections, 1);           /* the defaults' 60 s would keep it too */
    wg_h2_pool_tick(w.h2, wg_now_ms() + 600);
    wg_h2_pool_stats(w.h2, &st);
    ck_assert_uint_eq(st.connections, 0);
    ck_assert_uint_eq(st.idle_closed, 2);
    ck_assert_uint_eq(st.connects, 2);
    call_lim = NULL;
    world_down(&w);
}
END_TEST

/* A reset stream gets no callback; the connection stays usable. */
START_TEST(reset_and_ping_liveness)
{
    struct world w;
    struct wg_h2_settings set = wg_h2_defaults;
    set.lim.ping_interval_ms = 1000;
    set.lim.ping_timeout_ms = 1000;
    world_up(&w, NULL, &set);
    struct call c;
    ck_assert_ptr_nonnull(call_start(&w, &c, "/wg.Echo/X", NULL, 0, NULL));
    ck_assert(run_until(&w, has_head, &c, 5000));
    wg_h2_stream_reset(c.s, NGHTTP2_CANCEL);
    ck_assert(!run_until(&w, never, NULL, 200));
    ck_assert(!c.closed);
    struct wg_h2_pool_stats st;
    wg_h2_pool_stats(w.h2, &st);
    ck_assert_uint_eq(st.streams, 0);
    ck_assert_msg(st.connections == 1, "connections %llu connects %llu", 
                  (unsigned long long)st.connections, (unsigned long long)st.connects);
    /* Idle for a ping interval: a PING, answered. */
    wg_h2_pool_tick(w.h2, wg_now_ms() + 1500);
    ck_assert(!run_until(&w, never, NULL, 200));
    wg_h2_pool_tick(w.h2, wg_now_ms() + 1600);      /* answered: no failure */
    wg_h2_pool_stats(w.h2, &st);
    ck_assert_uint_ge(st.pings, 1);
    ck_assert_uint_eq(st.ping_failures, 0);
    ck_assert_uint_eq(st.connections, 1);
    /* A frozen upstream does not answer: closed after ping_timeout. */
    kill(w.backend, SIGSTOP);
    uint64_t t = wg_now_ms() + 5000;
    wg_h2_pool_tick(w.h2, t);                       /* ping */
    ck_assert(!run_until(&w, never, NULL, 100));
    wg_h2_pool_tick(w.h2, t + 1200);                /* unanswered */
    wg_h2_pool_stats(w.h2, &st);
    ck_assert_uint_eq(st.ping_failures, 1);
    ck_assert_uint_eq(st.connections, 0);
    kill(w.backend, SIGCONT);
    world_down(&w);
}
END_TEST

/* TLS with ALPN h2 against a real gRPC server (python3-grpcio's C core,
 * tests/integration/grpc_server.py): the Health/Check call returns SERVING
 * in one DATA frame and grpc-status 0 in the trailers. Skipped (with a
 * note) where /usr/bin/python3 has no grpcio. */
START_TEST(tls_alpn_h2_to_grpcio)
{
    if (system("/usr/bin/python3 -c 'import grpc' 2>/dev/null") != 0) {
        fprintf(stderr, "python3-grpcio missing for /usr/bin/python3: tls test skipped\n");
        return;
    }
    char dir[] = "/tmp/wg-h2tls-XXXXXX", cmd[1024], path[256];
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(cmd, sizeof cmd, "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 "
             "-nodes -keyout %s/k.pem -out %s/c.pem -days 1 -subj /CN=127.0.0.1 "
             "-addext subjectAltName=IP:127.0.0.1 >/dev/null 2>&1 && printf -- '- SERVING\\n' > %s/ctl",
             dir, dir, dir);
    ck_assert_int_eq(system(cmd), 0);
    int fds[2];
    ck_assert_int_eq(pipe(fds), 0);
    pid_t pid = fork();
    if (pid == 0) {
        char crt[300], key[300], ctl[300];
        snprintf(crt, sizeof crt, "%s/c.pem", dir);
        snprintf(key, sizeof key, "%s/k.pem", dir);
        snprintf(ctl, sizeof ctl, "%s/ctl", dir);
        dup2(fds[1], 1);
        execl("/usr/bin/python3", "/usr/bin/python3", WG_GRPC_SERVER_PY, "--control", ctl, "--cert", crt,
              "--key", key, (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    char line[64] = "";
    ssize_t k = read(fds[0], line, sizeof line - 1);
    close(fds[0]);
    unsigned port = 0;
    ck_assert_msg(k > 0 && sscanf(line, "ready %u", &port) == 1, "grpc_server: '%s'", line);
    struct world w;
    memset(&w, 0, sizeof w);
    w.backend = pid;
    world_pool(&w, port, NULL);
    snprintf(path, sizeof path, "%s/c.pem", dir);
    struct wg_errors errs = { 0 };
    SSL_CTX *ctx = wg_tls_client_ctx_new(path, "", "", true, &errs);
    ck_assert_ptr_nonnull(ctx);
    static const uint8_t req[] = { 0, 0, 0, 0, 0 };
    nghttp2_nv nv[] = { NV(":method", "POST"), NV(":scheme", "https"),
                        NV(":authority", "127.0.0.1"), NV(":path", "/grpc.health.v1.Health/Check"),
                        NV("content-type", "application/grpc"), NV("te", "trailers") };
    struct call c = { 0 };
    c.body = req;
    c.body_len = sizeof req;
    int err = 0;
    c.s = wg_h2_submit(w.h2, w.inst, ctx, NULL, true, NULL, nv, 6, true, &OPS, &c, &err);
    ck_assert_ptr_nonnull(c.s);
    pump(&c);
    struct calls one = { &c, 1 };
    ck_assert(run_until(&w, all_closed, &one, 15000));
    ck_assert_uint_eq(c.status, 200);
    ck_assert_uint_eq(c.got, 7);                    /* 5 + 08 01 (SERVING) */
    ck_assert_str_eq(c.grpc_status, "0");
    ck_assert_uint_eq(c.error, 0);
    SSL_CTX_free(ctx);
    world_down(&w);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    ck_assert_int_eq(system(cmd), 0);
}
END_TEST

static bool nv_has(const nghttp2_nv *nv, size_t n, const char *name, const char *value)
{
    for (size_t i = 0; i < n; i++)
        if (nv[i].namelen == strlen(name) && memcmp(nv[i].name, name, nv[i].namelen) == 0 &&
            nv[i].valuelen == strlen(value) && memcmp(nv[i].value, value, nv[i].valuelen) == 0)
            return true;
    return false;
}

static bool nv_named(const nghttp2_nv *nv, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (nv[i].namelen == strlen(name) && memcmp(nv[i].name, name, nv[i].namelen) == 0)
            return true;
    return false;
}

/* An HTTP/1.1 request head (as the exchange rewrites it) to nv: pseudo
 * headers, lower-cased names, connection-specific fields dropped, TE only
 * as trailers. */
START_TEST(request_head_to_nv)
{
    static const char head[] =
        "POST /users.Users/Get?x=1 HTTP/1.1\r\nHost: api.test\r\nContent-Type: application/grpc\r\n"
        "TE: trailers\r\nConnection: keep-alive\r\nKeep-Alive: 5\r\nX-Request-Id: r1\r\n"
        "Transfer-Encoding: chunked\r\n\r\n";
    struct wg_http_header h[16];
    struct wg_http_parser p;
    size_t used;
    wg_http_parser_init_request(&p, h, 16, 0);
    ck_assert_int_eq(wg_http_parse_head(&p, head, sizeof head - 1, &used), WG_HTTP_DONE);
    nghttp2_nv nv[16];
    char scratch[256];
    size_t n = wg_h2_request_nv(&p.msg, h, head, "http", nv, 16, scratch, sizeof scratch);
    ck_assert_uint_eq(n, 7);
    ck_assert(nv_has(nv, n, ":method", "POST") && nv_has(nv, n, ":scheme", "http"));
    ck_assert(nv_has(nv, n, ":authority", "api.test"));
    ck_assert(nv_has(nv, n, ":path", "/users.Users/Get?x=1"));
    ck_assert(nv_has(nv, n, "content-type", "application/grpc"));
    ck_assert(nv_has(nv, n, "te", "trailers") && nv_has(nv, n, "x-request-id", "r1"));
    ck_assert(!nv_named(nv, n, "connection") && !nv_named(nv, n, "keep-alive") &&
              !nv_named(nv, n, "transfer-encoding") && !nv_named(nv, n, "host"));
    ck_assert_uint_eq(wg_h2_request_nv(&p.msg, h, head, "http", nv, 5, scratch, sizeof scratch), 0);
    ck_assert_uint_eq(wg_h2_request_nv(&p.msg, h, head, "http", nv, 16, scratch, 8), 0);
    /* Absolute form: :path from the path and query; TE other than trailers goes. */
    static const char abs[] = "GET http://api.test/a?b HTTP/1.1\r\nHost: api.test\r\nTE: gzip\r\n\r\n";
    wg_http_parser_init_request(&p, h, 16, 0);
    ck_assert_int_eq(wg_http_parse_head(&p, abs, sizeof abs - 1, &used), WG_HTTP_DONE);
    n = wg_h2_request_nv(&p.msg, h, abs, "https", nv, 16, scratch, sizeof scratch);
    ck_assert_uint_eq(n, 4);
    ck_assert(nv_has(nv, n, ":path", "/a?b") && !nv_named(nv, n, "te"));
}
END_TEST

/* Field names are lower-cased byte for byte (eight at a time inside):
 * every byte value but ':', CR and LF, at every offset of an 8-byte word,
 * split by wg_http_split_head as exchange.c's h2_attach does. */
START_TEST(request_nv_lowercases_every_byte)
{
    static char head[4096];
    size_t len = (size_t)snprintf(head, sizeof head, "GET / HTTP/1.1\r\nHost: h\r\n");
    for (unsigned shift = 0; shift < 8; shift++) {
        memset(head + len, 'Q', shift);             /* moves the bytes across the word */
        len += shift;
        for (unsigned c = 1; c < 256; c++)
            if (c != ':' && c != '\r' && c != '\n' && c != ' ')
                head[len++] = (char)c;
        memcpy(head + len, ": v\r\n", 5);
        len += 5;
    }
    memcpy(head + len, "\r\n", 2);
    len += 2;
    struct wg_http_header h[16];
    struct wg_http_parser p;
    wg_http_parser_init_request(&p, h, 16, 0);
    ck_assert(wg_http_split_head(&p, head, len));
    nghttp2_nv nv[16];
    static char scratch[4096];
    size_t n = wg_h2_request_nv(&p.msg, h, head, "http", nv, 16, scratch, sizeof scratch);
    ck_assert_uint_eq(n, 4 + 8);
    for (unsigned i = 0; i < 8; i++) {
        const struct wg_http_header *f = &h[1 + i];
        ck_assert_uint_eq(nv[4 + i].namelen, f->name.len);
        for (uint32_t k = 0; k < f->name.len; k++) {
            unsigned char c = (unsigned char)head[f->name.off + k];
            unsigned char want = c >= 'A' && c <= 'Z' ? (unsigned char)(c + 32) : c;
            ck_assert_uint_eq(nv[4 + i].name[k], want);
        }
    }
}
END_TEST

/* An HTTP/2 response rendered as HTTP/1.1 parses back with waygate's own
 * parser: status, fields, chunked data, trailers; Trailers-Only as a head
 * with content-length 0. */
START_TEST(response_h2_to_h1_round_trip)
{
    nghttp2_nv nv[] = { NV("content-type", "application/grpc"), NV("content-length", "12"),
                        NV("x-backend", "b") };
    char out[512];
    size_t len = wg_h2_response_h1(200, nv, 3, false, out, sizeof out);
    ck_assert_uint_gt(len, 0);
    size_t k = wg_h2_chunk_head(7, out + len);
    len += k;
    memcpy(out + len, "\0\0\0\0\x02\x08\x01\r\n", 9);
    len += 9;
    nghttp2_nv tr[] = { NV("grpc-status", "0"), NV("grpc-message", "ok") };
    k = wg_h2_trailers_h1(tr, 2, out + len, sizeof out - len);
    ck_assert_uint_gt(k, 0);
    len += k;
    struct wg_http_header h[16];
    struct wg_http_parser p;
    size_t used;
    wg_http_parser_init_response(&p, h, 16, 0, WG_HTTP_POST, false);
    ck_assert_int_eq(wg_http_parse_head(&p, out, len, &used), WG_HTTP_DONE);
    ck_assert_uint_eq(p.msg.status, 200);
    ck_assert(p.msg.chunked && !p.msg.has_content_length);
    ck_assert_uint_eq(p.msg.nheaders, 3);        /* content-type, x-backend, transfer-encoding */
    struct wg_http_body b;
    wg_http_body_init(&b, p.msg.framing, 0, 0);
    size_t off = used, data = 0;
    enum wg_http_result r;
    do {
        struct wg_http_body_step step;
        r = wg_http_body_parse(&b, out + off, len - off, &step);
        data += step.data_len;
        off += step.consumed;
    } while (r == WG_HTTP_AGAIN && off < len);
    ck_assert_int_eq(r, WG_HTTP_DONE);
    ck_assert_uint_eq(data, 7);
    ck_assert_uint_eq(off, len);
    ck_assert(memmem(out, len, "grpc-status: 0\r\n", 16));
    /* Trailers-Only */
    nghttp2_nv only[] = { NV("grpc-status", "14"), NV("grpc-message", "down") };
    len = wg_h2_response_h1(200, only, 2, true, out, sizeof out);
    wg_http_parser_init_response(&p, h, 16, 0, WG_HTTP_POST, false);
    ck_assert_int_eq(wg_http_parse_head(&p, out, len, &used), WG_HTTP_DONE);
    ck_assert(p.msg.has_content_length && p.msg.content_length == 0 && used == len);
    ck_assert_uint_eq(wg_h2_response_h1(200, only, 2, true, out, 20), 0);
    ck_assert_uint_eq(wg_h2_trailers_h1(tr, 2, out, 10), 0);
    /* the trailer section alone: the last chunk without its "0\r\n" */
    char last[128], sect[128];
    size_t kl = wg_h2_trailers_h1(tr, 2, last, sizeof last);
    ck_assert_uint_eq(wg_h2_trailer_section(tr, 2, sect, sizeof sect), kl - 3);
    ck_assert(memcmp(last, "0\r\n", 3) == 0 && memcmp(last + 3, sect, kl - 3) == 0);
    ck_assert_uint_eq(wg_h2_trailer_section(tr, 2, sect, 10), 0);
    /* a NO_COPY DATA frame: header, pad length byte, payload, zero padding */
    nghttp2_frame f = { 0 };
    const uint8_t hd[9] = { 0, 0, 9, 0, 0x08, 0, 0, 0, 1 }, payload[5] = "hello";
    uint8_t fr[32];
    memset(fr, 0xee, sizeof fr);
    ck_assert_uint_eq(wg_h2_data_frame(fr, &f, hd, payload, 5), 14);
    ck_assert(memcmp(fr, hd, 9) == 0 && memcmp(fr + 9, "hello", 5) == 0 && fr[14] == 0xee);
    f.data.padlen = 4;                  /* the length byte (3) and 3 zero bytes */
    ck_assert_uint_eq(wg_h2_data_frame(fr, &f, hd, payload, 5), 18);
    ck_assert(fr[9] == 3 && memcmp(fr + 10, "hello", 5) == 0);
    ck_assert(fr[15] == 0 && fr[16] == 0 && fr[17] == 0 && fr[18] == 0xee);
    /* the status line: three digits, an empty reason */
    static const unsigned codes[] = { 100, 204, 404, 503, 999 };
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
        char want[64];
        snprintf(want, sizeof want, "HTTP/1.1 %03u \r\ncontent-length: 0\r\n\r\n", codes[i]);
        len = wg_h2_response_h1(codes[i], NULL, 0, true, out, sizeof out);
        ck_assert_uint_eq(len, strlen(want));
        ck_assert_int_eq(memcmp(out, want, len), 0);
    }
}
END_TEST

/* Frame bytes with payloads lent between them: a non-blocking socket
 * pair with small buffers makes most writes short, and whatever the cut,
 * the reader sees every byte once, in order; *over counts the payloads
 * wholly out, and the caller drops them, as the codecs do. */
START_TEST(lent_write_keeps_the_order_through_short_writes)
{
    int sv[2];
    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    int small = 4096;
    setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
    setsockopt(sv[1], SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    enum { N = 40, PAY = 5000 };
    static uint8_t frames[N * 9 + 7], pays[N][PAY], want[sizeof frames + sizeof pays], got[sizeof want];
    struct wg_h2_lent l[N];
    size_t w = 0, end = 0;
    for (unsigned i = 0; i < N; i++) {  /* 9 frame bytes, a payload, 9, a payload, ..., 7 */
        for (unsigned j = 0; j < 9; j++)
            want[w++] = frames[end++] = (uint8_t)(i * 9 + j);
        for (unsigned j = 0; j < PAY; j++)
            want[w++] = pays[i][j] = (uint8_t)(i * 31 + j * 7 + 1);
        l[i] = (struct wg_h2_lent){ pays[i], end, i % 3 ? PAY : PAY - 1000 };
        if (i % 3 == 0) {               /* a payload lent in part already */
            l[i].p += 1000;
            memmove(want + w - PAY, want + w - PAY + 1000, PAY - 1000);
            w -= 1000;
        }
    }
    for (unsigned j = 0; j < 7; j++)
        want[w++] = frames[end++] = 0xf0;
    size_t off = 0, have = 0, writes = 0, shorts = 0;
    unsigned n = N, first = 0;
    while ((off < end || n) && writes < 100000) {
        unsigned over = 0, k = n < WG_H2_LENT_MAX ? n : WG_H2_LENT_MAX;
        size_t before = off;
        ssize_t r = wg_h2_lent_write(sv[0], frames, &off, k == n ? end : l[first + k].at, l + first,
                                     k, &over);
        ck_assert(r >= 0 || errno == EAGAIN);
        writes++;
        if (r > 0 && (over < k || off < (k == n ? end : l[first + k].at)))
            shorts++;
        ck_assert(off >= before && over <= k);
        first += over;
        n -= over;
        ssize_t m;
        while ((m = read(sv[1], got + have, sizeof got - have)) > 0)
            have += (size_t)m;
    }
    ssize_t m;
    while ((m = read(sv[1], got + have, sizeof got - have)) > 0)
        have += (size_t)m;
    ck_assert_uint_eq(have, w);
    ck_assert(memcmp(got, want, w) == 0);
    ck_assert_uint_gt(shorts, 5);       /* the short writes this is about happened */
    close(sv[0]);
    close(sv[1]);
}
END_TEST

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    Suite *s = suite_create("upstream_h2");
    TCase *t = tcase_create("backend");
    tcase_set_timeout(t, 60);
    tcase_add_test(t, unary_calls_share_one_connection);
    tcase_add_test(t, streams_bounded_by_peer_settings_then_cap);
    tcase_add_test(t, goaway_refuses_unprocessed_streams);
    tcase_add_test(t, flow_control_both_ways);
    tcase_add_test(t, payloads_kept_by_reference_stay_intact);
    tcase_add_test(t, bulk_replies_read_several_buffers_at_once);
    tcase_add_test(t, frames_as_large_as_allowed);
    tcase_add_test(t, reset_and_ping_liveness);
    tcase_add_test(t, service_limits_replace_the_pools);
    tcase_add_test(t, submit_copies_no_copy_fields);
    tcase_add_test(t, tls_alpn_h2_to_grpcio);
    suite_add_tcase(s, t);
    TCase *heads = tcase_create("heads");
    tcase_add_test(heads, request_head_to_nv);
    tcase_add_test(heads, request_nv_lowercases_every_byte);
    tcase_add_test(heads, response_h2_to_h1_round_trip);
    tcase_add_test(heads, lent_write_keeps_the_order_through_short_writes);
    tcase_add_test(heads, payload_queue_refers_copies_and_counts);
    suite_add_tcase(s, heads);
    return unit_run(s);
}
