/* health_probe — the prober thread; see include/waygate/health.h.
 *
 * One thread, one event_base, one `struct probe` per probed instance. The control
 * thread hands every published snapshot over through a one-slot mailbox (a
 * mutex held for a pointer swap, then event_active); the prober diffs it
 * against its table by instance identity (the pointer: the same identity is
 * the same object, pool.h) and keeps one snapshot reference for as long as it
 * uses the settings of its services.
 *
 * A probe: http — GET <path> on a keep-alive connection (opened on first use,
 * reopened when the instance closed it; a failure on a reused connection
 * before any byte of the response is retried once on a fresh one), parsed
 * with the http module's response parser; tcp — a connect, then a close with
 * RST; grpc — grpc.health.v1.Health/Check over HTTP/2 (h2c, or TLS with
 * ALPN h2 when the service's upstream TLS is enabled) on a kept-alive
 * connection that carries one libnghttp2 client session, driven with
 * mem_recv/mem_send from this loop; one stream per probe. Sockets the
 * prober closes itself are closed with RST (SO_LINGER 0) so
 * that no TIME_WAIT is left behind: 10,000 instances at 1 s do not exhaust
 * ephemeral ports.
 *
 * Services with `type: none` have no probes (a probe and its timer are ~300
 * bytes: 30 MiB at 100,000 instances): their new instances are made healthy
 * when the snapshot is taken over, and one sweep timer, every shortest
 * interval of those services, applies wg_health_without_probes to all their
 * members (ends passive ejections; O(their members) per sweep).
 */
#include "waygate/health.h"

#include <errno.h>
#include <event2/event.h>
#include <nghttp2/nghttp2.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "waygate/balance.h"
#include "waygate/grpc.h"
#include "waygate/http.h"
#include "waygate/log.h"
#include "waygate/tls.h"
#include "waygate/record.h"
#include "waygate/sockaddr.h"

#define PROBE_MAGIC 0x9a0be511U
#define PROBE_HEAD_MAX 8192             /* response head bytes kept */
#define PROBE_HEADERS 64
#define PROBE_REQUEST_MAX 2048
#define PROBE_BODY_MAX (1024 * 1024)    /* larger bodies: close instead of draining */
#define BURST_AT_ONCE 64                /* new instances probed at once; more: spread */
#define STATS_LOG_MS 10000
#define MAX_CONNECTING 256              /* connects in progress at once; more wait */
#define IO_FREELIST 128                 /* spare probe_io kept for reuse */
#define SLOT_US 8000                    /* probe start times are rounded up to this */
#define H2_RESPONSE_MAX 512             /* a HealthCheckResponse is 7 bytes framed */
#define H2_REQUEST_MAX 512
#define H2_PENDING_MAX (64 * 1024)      /* mem_send output the socket did not take yet */
#define H2_READ 16384

/* A grpc probe's HTTP/2 connection state (kept with the connection). */
struct probe_h2 {
    nghttp2_session *session;
    int32_t stream;                     /* the running probe's stream, or 0 */
    bool done;                          /* that stream closed: a verdict is due */
    uint32_t close_error;               /* its RST_STREAM / GOAWAY error code */
    int status;                         /* :status, 0 = none yet */
    int grpc_status;                    /* -1 = none yet */
    size_t resp_len;
    bool overflow;
    size_t req_len, req_off;
    uint8_t resp[H2_RESPONSE_MAX];
    uint8_t req[H2_REQUEST_MAX];
    uint8_t *pend;                      /* unsent mem_send bytes */
    size_t pend_len, pend_off;
};

/* State of one probe while it runs (http only). */
struct probe_io {
    struct wg_http_parser parser;
    struct wg_http_body body;
    struct wg_http_header headers[PROBE_HEADERS];
    size_t len;                         /* bytes in buf */
    size_t req_len, sent;
    char req[PROBE_REQUEST_MAX];
    char buf[PROBE_HEAD_MAX];
};

struct probe {
    uint32_t magic;
    struct wg_prober *pr;
    struct wg_instance *inst;           /* one reference */
    const struct wg_pool_service *svc;  /* in pr->snap */
    struct wg_health_run run;
    struct event *timer;                /* next probe, or the running probe's timeout */
    struct event *rev;                  /* connection readable (persistent) */
    struct event *wev;                  /* connect done / request writable */
    int fd;                             /* -1, or an open (keep-alive) connection */
    SSL *ssl;                           /* services with tls.enabled: kept with fd */
    bool handshaking;                   /* TLS handshake in progress */
    bool in_flight;
    bool reused;                        /* this probe runs on a kept-alive connection */
    bool got_bytes;                     /* some of the response arrived */
    bool connecting;                    /* counted in pr->connecting */
    bool waiting;                       /* queued for a connect slot */
    struct probe *wait_prev, *wait_next;
    uint64_t due_us;                    /* when the probe should start */
    uint64_t started_ms;
    uint64_t seen;                      /* generation of the last snapshot holding it */
    struct probe_io *x;
    struct probe_h2 *h2;                /* type grpc: with the connection */
};

struct wg_prober {
    struct wg_pool *pool;
    pthread_t thread;
    bool started;
    struct event_base *base;
    struct event *mail_ev;
    struct event *stats_ev;
    pthread_mutex_t lock;
    struct wg_snapshot *pending;        /* under lock */
    _Atomic int stop;
    /* prober thread only */
    struct wg_snapshot *snap;
    size_t n_set;                       /* probes: one per instance of `snap` */
    struct wg_rng rng;
    uint64_t emfile_warned_ms;
    unsigned connecting;                /* probes waiting for a connect */
    struct probe *wait_head, *wait_tail;    /* probes waiting for a connect slot */
    struct event *kick_ev;              /* starts waiting probes */
    struct event *sweep_ev;             /* type none services (see the top) */
    uint64_t sweep_ms;                  /* its period while pending */
    struct probe_io *io_free[IO_FREELIST];
    unsigned n_io_free;
    /* counters */
    _Atomic uint64_t probes, passed, failed, connects, instances, open_conns, snapshots;
    _Atomic uint64_t lag_max_us, lag_sum_us, lag_count, deferred;
};

static void probe_schedule(struct probe *p, uint64_t delay_ms);
static void probe_finish(struct probe *p, bool passed, int result);
static void probe_connect(struct probe *p);
static void h2_free(struct probe *p);

/* ---- connections ---------------------------------------------------------- */

/* ---- connect slots: at most MAX_CONNECTING connects in progress ---- */

static void wait_push(struct probe *p)
{
    struct wg_prober *pr = p->pr;
    p->waiting = true;
    p->wait_next = NULL;
    p->wait_prev = pr->wait_tail;
    if (pr->wait_tail)
        pr->wait_tail->wait_next = p;
    else
        pr->wait_head = p;
    pr->wait_tail = p;
}

static void wait_remove(struct probe *p)
{
    struct wg_prober *pr = p->pr;
    if (!p->waiting)
        return;
    if (p->wait_prev)
        p->wait_prev->wait_next = p->wait_next;
    else
        pr->wait_head = p->wait_next;
    if (p->wait_next)
        p->wait_next->wait_prev = p->wait_prev;
    else
        pr->wait_tail = p->wait_prev;
    p->waiting = false;
    p->wait_prev = p->wait_next = NULL;
}

/* A slot freed: start waiting probes from their own callback (kick_cb), not
 * from deep inside the code that freed it. */
static void connect_over(struct probe *p)
{
    if (!p->connecting)
        return;
    p->connecting = false;
    p->pr->connecting--;
    if (p->pr->wait_head)
        event_active(p->pr->kick_ev, 0, 0);
}

static void conn_close(struct probe *p, bool reset)
{
    connect_over(p);
    if (p->rev)
        event_free(p->rev);
    if (p->wev)
        event_free(p->wev);
    p->rev = p->wev = NULL;
    if (p->ssl) {
        if (!reset)
            wg_tls_close(p->ssl);
        SSL_free(p->ssl);
        p->ssl = NULL;
    }
    p->handshaking = false;
    h2_free(p);
    if (p->fd < 0)
        return;
    if (reset) {
        struct linger lg = { 1, 0 };
        setsockopt(p->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    }
    close(p->fd);
    p->fd = -1;
    atomic_fetch_sub_explicit(&p->pr->open_conns, 1, memory_order_relaxed);
}

static const struct wg_service_config *cfg_of(const struct probe *p) { return p->svc->cfg; }

static socklen_t probe_addr(const struct probe *p, struct sockaddr_storage *ss)
{
    socklen_t len = wg_instance_sockaddr(p->inst, ss);
    uint16_t port = cfg_of(p)->health_check.port;
    if (!port)
        return len;
    if (ss->ss_family == AF_INET6)
        ((struct sockaddr_in6 *)ss)->sin6_port = htons(port);
    else
        ((struct sockaddr_in *)ss)->sin_port = htons(port);
    return len;
}

/* Host header / :authority of probes: health_check.host, else the probed
 * address. */
static void probe_host(const struct probe *p, char *host, size_t len)
{
    const struct wg_service_config *cfg = cfg_of(p);
    if (cfg->health_check.host && *cfg->health_check.host) {
        snprintf(host, len, "%s", cfg->health_check.host);
    } else {
        struct sockaddr_storage ss;
        probe_addr(p, &ss);
        wg_sockaddr_text((const struct sockaddr *)&ss, host, len);
    }
}

static int build_request(struct probe *p)
{
    const struct wg_service_config *cfg = cfg_of(p);
    char host[80];
    probe_host(p, host, sizeof host);
    const char *path = cfg->health_check.path && *cfg->health_check.path ? cfg->health_check.path : "/";
    int n = snprintf(p->x->req, sizeof p->x->req,
                     "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: waygate-health/%s\r\n"
                     "Accept: */*\r\n\r\n", path, host, WAYGATE_VERSION);
    if (n < 0 || (size_t)n >= sizeof p->x->req)
        return -1;
    p->x->req_len = (size_t)n;
    p->x->sent = 0;
    return 0;
}

/* ---- http ------------------------------------------------------------------ */

/* Probe buffers are reused: at 10,000 probes a second, malloc/free of ~12 KiB
 * each would grow and trim the heap all the time. */
static struct probe_io *io_get(struct wg_prober *pr)
{
    return pr->n_io_free ? pr->io_free[--pr->n_io_free] : malloc(sizeof(struct probe_io));
}

static void io_put(struct probe *p)
{
    struct wg_prober *pr = p->pr;
    if (p->x && pr->n_io_free < IO_FREELIST)
        pr->io_free[pr->n_io_free++] = p->x;
    else
        free(p->x);
    p->x = NULL;
}

static void io_reset(struct probe_io *x)
{
    wg_http_parser_init_response(&x->parser, x->headers, PROBE_HEADERS, PROBE_HEAD_MAX,
                                 WG_HTTP_GET, false);
    x->len = 0;
    x->sent = 0;
}

/* A failure: on a reused connection before any response byte it is the
 * instance closing an idle keep-alive connection, not a verdict: retry once
 * on a fresh connection. */
static void probe_fail(struct probe *p, int err)
{
    if (p->reused && !p->got_bytes && (err == ECONNRESET || err == EPIPE)) {
        conn_close(p, true);
        p->reused = false;
        if (p->x)
            io_reset(p->x);
        probe_connect(p);
        return;
    }
    probe_finish(p, false, -err);
}

/* TLS I/O with send(2)/recv(2) results: >0, 0 (EOF), -1 + errno (EAGAIN:
 * wait; a read that needs writability arms the write event). */
static ssize_t tls_send(struct probe *p, const char *buf, size_t len)
{
    size_t n = 0;
    enum wg_tls_io r = wg_tls_write(p->ssl, buf, len, &n);
    if (r == WG_TLS_OK)
        return (ssize_t)n;
    errno = r == WG_TLS_WANT_WRITE || r == WG_TLS_WANT_READ ? EAGAIN : EPIPE;
    return -1;
}

static ssize_t tls_recv(struct probe *p, char *buf, size_t len)
{
    size_t n = 0;
    enum wg_tls_io r = wg_tls_read(p->ssl, buf, len, &n);
    if (r == WG_TLS_OK)
        return (ssize_t)n;
    if (r == WG_TLS_EOF)
        return 0;
    if (r == WG_TLS_WANT_WRITE)
        event_add(p->wev, NULL);
    errno = r == WG_TLS_WANT_READ || r == WG_TLS_WANT_WRITE ? EAGAIN : ECONNRESET;
    return -1;
}

static void send_request(struct probe *p);

/* The TLS handshake of a new probe connection (chain and name verified as
 * for traffic); then the request. */
static void handshake_step(struct probe *p)
{
    enum wg_tls_io r = wg_tls_handshake(p->ssl);
    if (r == WG_TLS_WANT_READ)
        return;                         /* the persistent read event fires */
    if (r == WG_TLS_WANT_WRITE) {
        if (event_add(p->wev, NULL) < 0)
            probe_fail(p, ENOMEM);
        return;
    }
    if (r != WG_TLS_OK) {
        conn_close(p, true);
        probe_finish(p, false, -EPROTO);
        return;
    }
    p->handshaking = false;
    if (cfg_of(p)->health_check.type == WG_HEALTH_GRPC) {
        const unsigned char *proto = NULL;
        unsigned len = 0;
        SSL_get0_alpn_selected(p->ssl, &proto, &len);
        if (len != 2 || memcmp(proto, "h2", 2) != 0) {
            conn_close(p, true);
            probe_finish(p, false, -EPROTO);    /* the instance does not speak h2 */
            return;
        }
    }
    send_request(p);
}

/* ---- grpc: Health/Check over HTTP/2 ------------------------------------------ */

static void h2_free(struct probe *p)
{
    if (!p->h2)
        return;
    nghttp2_session_del(p->h2->session);
    free(p->h2->pend);
    free(p->h2);
    p->h2 = NULL;
}

static int h2_on_header(nghttp2_session *s, const nghttp2_frame *frame, const uint8_t *name,
                        size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                        void *arg)
{
    struct probe_h2 *h = ((struct probe *)arg)->h2;
    if (frame->hd.type != NGHTTP2_HEADERS || frame->hd.stream_id != h->stream)
        return 0;
    if (namelen == 7 && memcmp(name, ":status", 7) == 0) {
        int st = 0;
        for (size_t i = 0; i < valuelen && i < 3; i++)
            st = st * 10 + (value[i] - '0');
        h->status = valuelen == 3 ? st : -1;
    } else if (namelen == 11 && memcmp(name, "grpc-status", 11) == 0) {
        h->grpc_status = wg_grpc_status_parse((const char *)value, valuelen);
        if (h->grpc_status < 0)
            h->grpc_status = WG_GRPC_UNKNOWN;       /* present but garbled */
    }
    return 0;
}

static int h2_on_data(nghttp2_session *s, uint8_t flags, int32_t stream_id, const uint8_t *data,
                      size_t len, void *arg)
{
    struct probe_h2 *h = ((struct probe *)arg)->h2;
    if (stream_id != h->stream)
        return 0;
    if (len > sizeof h->resp - h->resp_len) {
        h->overflow = true;
        return 0;
    }
    memcpy(h->resp + h->resp_len, data, len);
    h->resp_len += len;
    return 0;
}

static int h2_on_close(nghttp2_session *s, int32_t stream_id, uint32_t error_code, void *arg)
{
    struct probe_h2 *h = ((struct probe *)arg)->h2;
    if (stream_id == h->stream) {
        h->done = true;
        h->close_error = error_code;
    }
    return 0;
}

static ssize_t h2_read_body(nghttp2_session *s, int32_t stream_id, uint8_t *buf, size_t len,
                            uint32_t *flags, nghttp2_data_source *src, void *arg)
{
    struct probe_h2 *h = ((struct probe *)arg)->h2;
    size_t n = h->req_len - h->req_off;
    if (n > len)
        n = len;
    memcpy(buf, h->req + h->req_off, n);
    h->req_off += n;
    if (h->req_off == h->req_len)
        *flags |= NGHTTP2_DATA_FLAG_EOF;
    return (ssize_t)n;
}

/* A session for a new connection: our SETTINGS (no push, a small window:
 * the replies are tiny) go out with the first request. */
static int h2_open(struct probe *p)
{
    nghttp2_session_callbacks *cb;
    if (!(p->h2 = calloc(1, sizeof *p->h2)) || nghttp2_session_callbacks_new(&cb) != 0)
        return -1;
    nghttp2_session_callbacks_set_on_header_callback(cb, h2_on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, h2_on_data);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, h2_on_close);
    int rc = nghttp2_session_client_new(&p->h2->session, cb, p);
    nghttp2_session_callbacks_del(cb);
    if (rc != 0)
        return -1;
    nghttp2_settings_entry iv[] = { { NGHTTP2_SETTINGS_ENABLE_PUSH, 0 },
                                    { NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 65535 } };
    return nghttp2_submit_settings(p->h2->session, NGHTTP2_FLAG_NONE, iv, 2) == 0 ? 0 : -1;
}

/* Write what the session has to send; what the socket does not take waits
 * in pend (bounded) for writability. Returns 0, or -errno. */
static int h2_flush(struct probe *p)
{
    struct probe_h2 *h = p->h2;
    for (;;) {
        if (h->pend_off == h->pend_len) {
            const uint8_t *data;
            ssize_t n = nghttp2_session_mem_send(h->session, &data);
            if (n < 0)
                return -EPROTO;
            if (n == 0)
                return 0;
            if ((size_t)n > H2_PENDING_MAX)
                return -EMSGSIZE;
            uint8_t *b = realloc(h->pend, (size_t)n);
            if (!b)
                return -ENOMEM;
            memcpy(b, data, (size_t)n);
            h->pend = b;
            h->pend_len = (size_t)n;
            h->pend_off = 0;
        }
        size_t left = h->pend_len - h->pend_off;
        ssize_t w = p->ssl ? tls_send(p, (const char *)h->pend + h->pend_off, left)
                           : send(p->fd, h->pend + h->pend_off, left, MSG_NOSIGNAL);
        if (w > 0) {
            h->pend_off += (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno == EAGAIN)
            return event_add(p->wev, NULL) < 0 ? -ENOMEM : 0;
        return w < 0 ? -errno : -EPIPE;
    }
}

static void h2_submit(struct probe *p)
{
    const struct wg_service_config *cfg = cfg_of(p);
    if (!p->h2 && h2_open(p) < 0) {
        probe_finish(p, false, -ENOMEM);
        return;
    }
    struct probe_h2 *h = p->h2;
    const char *svc = cfg->health_check.service ? cfg->health_check.service : "";
    h->req_len = wg_grpc_health_request(svc, strlen(svc), h->req, sizeof h->req);
    if (!h->req_len) {
        probe_finish(p, false, -ENAMETOOLONG);
        return;
    }
    char host[256];
    probe_host(p, host, sizeof host);
    const char *scheme = p->ssl ? "https" : "http";
#define NV(n, v) { (uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, strlen(v), \
                   NGHTTP2_NV_FLAG_NO_COPY_NAME }
    nghttp2_nv nv[] = {
        NV(":method", "POST"), NV(":scheme", scheme), NV(":path", WG_GRPC_HEALTH_PATH),
        NV(":authority", host), NV("content-type", "application/grpc"), NV("te", "trailers"),
        NV("user-agent", "waygate-health/" WAYGATE_VERSION),
    };
#undef NV
    nghttp2_data_provider dp = { .read_callback = h2_read_body };
    h->req_off = 0;
    h->status = 0;
    h->grpc_status = -1;
    h->resp_len = 0;
    h->overflow = false;
    h->done = false;
    h->close_error = 0;
    h->stream = nghttp2_submit_request(h->session, NULL, nv, sizeof nv / sizeof nv[0], &dp, p);
    if (h->stream < 0) {
        /* The session refuses new streams (GOAWAY received, ids used up):
         * not the instance's verdict on a kept-alive connection. */
        h->stream = 0;
        probe_fail(p, ECONNRESET);
        return;
    }
    int rc = h2_flush(p);
    if (rc < 0)
        probe_fail(p, -rc);
}

/* The verdict of a closed stream (docs/health.md, "gRPC probes"): pass only
 * on HTTP 200, grpc-status 0 and a HealthCheckResponse saying SERVING.
 * result: the serving status (0-3) of a completed call; 1000 + grpc-status
 * when the call failed; the HTTP status when it was not 200; -errno for
 * transport errors. */
static void h2_verdict(struct probe *p)
{
    struct probe_h2 *h = p->h2;
    h->stream = 0;
    if (h->status == 0) {
        /* Refused before any response (REFUSED_STREAM, or a GOAWAY below
         * its id): the server did not look at it. On a kept-alive
         * connection it gets one more try on a fresh one (probe_fail),
         * whatever other frames (that GOAWAY) came meanwhile. */
        bool refused = h->close_error == NGHTTP2_REFUSED_STREAM ||
                       h->close_error == NGHTTP2_NO_ERROR;
        if (refused)
            p->got_bytes = false;
        probe_fail(p, refused ? ECONNRESET : EPROTO);
        return;
    }
    if (h->status != 200) {
        probe_finish(p, false, h->status);
        return;
    }
    if (h->grpc_status < 0 || h->close_error) {
        probe_finish(p, false, -EPROTO);
        return;
    }
    if (h->grpc_status != WG_GRPC_OK) {
        probe_finish(p, false, 1000 + h->grpc_status);
        return;
    }
    const uint8_t *msg;
    size_t ml, used;
    int64_t serving = -1;
    if (!h->overflow && wg_grpc_frame(h->resp, h->resp_len, sizeof h->resp, &msg, &ml, &used) == 1 &&
        used == h->resp_len)
        serving = wg_grpc_health_decode(msg, ml);
    if (serving < 0) {
        probe_finish(p, false, -EPROTO);
        return;
    }
    probe_finish(p, serving == WG_SERVING_SERVING, serving > 999 ? 999 : (int)serving);
}

/* Bytes from a grpc probe connection, during a probe or while it idles
 * (SETTINGS, PING, WINDOW_UPDATE, GOAWAY may come at any time). */
static void h2_read(struct probe *p)
{
    uint8_t buf[H2_READ];
    for (int rounds = 0; rounds < 16; rounds++) {
        ssize_t n = p->ssl ? tls_recv(p, (char *)buf, sizeof buf) : recv(p->fd, buf, sizeof buf, 0);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            break;
        if (n <= 0) {
            int err = n == 0 ? ECONNRESET : errno;
            bool in_flight = p->in_flight;
            conn_close(p, n < 0);
            if (in_flight)
                probe_fail(p, err);
            return;
        }
        p->got_bytes = p->got_bytes || p->in_flight;
        if (nghttp2_session_mem_recv(p->h2->session, buf, (size_t)n) != n) {
            bool in_flight = p->in_flight;
            conn_close(p, true);
            if (in_flight)
                probe_finish(p, false, -EPROTO);
            return;
        }
        if (!p->ssl || SSL_pending(p->ssl) == 0)
            if ((size_t)n < sizeof buf)
                break;
    }
    int rc = h2_flush(p);
    if (rc == 0 && p->in_flight && p->h2->done) {
        h2_verdict(p);
        return;                         /* probe_finish decided about the connection */
    }
    if (rc < 0 || (!nghttp2_session_want_read(p->h2->session) &&
                   !nghttp2_session_want_write(p->h2->session))) {
        bool in_flight = p->in_flight;
        conn_close(p, rc < 0);          /* a GOAWAY ended the session */
        if (in_flight)
            probe_fail(p, rc < 0 ? -rc : ECONNRESET);
    }
}

static void send_request(struct probe *p)
{
    if (cfg_of(p)->health_check.type == WG_HEALTH_GRPC) {
        h2_submit(p);
        return;
    }
    struct probe_io *x = p->x;
    while (x->sent < x->req_len) {
        ssize_t n = p->ssl ? tls_send(p, x->req + x->sent, x->req_len - x->sent)
                           : send(p->fd, x->req + x->sent, x->req_len - x->sent, MSG_NOSIGNAL);
        if (n > 0) {
            x->sent += (size_t)n;
        } else if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            if (errno == EINTR)
                continue;
            if (event_add(p->wev, NULL) < 0)
                probe_fail(p, ENOMEM);
            return;
        } else {
            probe_fail(p, n < 0 ? errno : EPIPE);
            return;
        }
    }
}

/* The head is complete: the verdict is its status. Keep the connection when
 * the rest of a small body is already here; else close it. */
static void head_done(struct probe *p, size_t head_len)
{
    struct probe_io *x = p->x;
    const struct wg_http_message *m = &x->parser.msg;
    int status = (int)m->status;
    bool passed = wg_status_ranges_match(&cfg_of(p)->health_check.expected_status, status);
    bool keep = m->keep_alive && m->framing != WG_HTTP_BODY_UNTIL_CLOSE &&
                m->framing != WG_HTTP_BODY_TUNNEL;
    if (keep && m->framing != WG_HTTP_BODY_NONE) {
        wg_http_body_init(&x->body, m->framing, m->content_length, 0);
        size_t off = head_len;
        enum wg_http_result r;
        struct wg_http_body_step step;
        do {
            r = wg_http_body_parse(&x->body, x->buf + off, x->len - off, &step);
            off += step.consumed;
        } while (r == WG_HTTP_AGAIN && step.consumed > 0 && off < x->len);
        keep = r == WG_HTTP_DONE && off == x->len;
    } else if (keep) {
        keep = head_len == x->len;      /* nothing unexpected after the head */
    }
    if (!keep)
        conn_close(p, true);
    probe_finish(p, passed, status);
}

static void parse_response(struct probe *p)
{
    struct probe_io *x = p->x;
    size_t used = 0;
    for (;;) {
        enum wg_http_result r = wg_http_parse_head(&x->parser, x->buf, x->len, &used);
        if (r == WG_HTTP_AGAIN) {
            if (x->len == sizeof x->buf)
                probe_finish(p, false, -EMSGSIZE);
            return;
        }
        if (r == WG_HTTP_ERROR) {
            conn_close(p, true);
            probe_finish(p, false, -EPROTO);
            return;
        }
        if (!x->parser.msg.interim)
            break;
        memmove(x->buf, x->buf + used, x->len - used);   /* 1xx: the final response follows */
        x->len -= used;
        wg_http_parser_reset(&x->parser);
    }
    head_done(p, used);
}

static void read_cb(evutil_socket_t fd, short what, void *arg)
{
    struct probe *p = arg;
    if (p->h2 && !p->handshaking) {
        h2_read(p);
        return;
    }
    if (!p->in_flight) {                /* an idle kept-alive connection: closed or junk */
        conn_close(p, false);
        return;
    }
    if (p->handshaking) {
        handshake_step(p);
        return;
    }
    struct probe_io *x = p->x;
    ssize_t n = p->ssl ? tls_recv(p, x->buf + x->len, sizeof x->buf - x->len)
                       : recv(fd, x->buf + x->len, sizeof x->buf - x->len, 0);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        int err = n == 0 ? ECONNRESET : errno;
        conn_close(p, n < 0);
        probe_fail(p, err);
        return;
    }
    p->got_bytes = true;
    x->len += (size_t)n;
    parse_response(p);
    /* TLS may hold decrypted bytes the socket will not signal again. */
    if (p->ssl && p->in_flight && p->x == x && SSL_pending(p->ssl) > 0 && x->len < sizeof x->buf)
        read_cb(fd, what, arg);
}

static void write_cb(evutil_socket_t fd, short what, void *arg)
{
    struct probe *p = arg;
    if (p->handshaking) {
        handshake_step(p);
    } else if (p->h2) {
        int rc = h2_flush(p);
        if (rc < 0) {
            bool in_flight = p->in_flight;
            conn_close(p, true);
            if (in_flight)
                probe_fail(p, -rc);
        }
    } else {
        send_request(p);
    }
}

/* ---- probe lifecycle ---------------------------------------------------------- */

static void connected(struct probe *p)
{
    if (cfg_of(p)->health_check.type == WG_HEALTH_TCP) {
        conn_close(p, true);
        probe_finish(p, true, 0);
        return;
    }
    if (p->wev)
        event_free(p->wev);
    p->rev = event_new(p->pr->base, p->fd, EV_READ | EV_PERSIST, read_cb, p);
    p->wev = event_new(p->pr->base, p->fd, EV_WRITE, write_cb, p);
    if (!p->rev || !p->wev || event_add(p->rev, NULL) < 0) {
        conn_close(p, true);
        probe_finish(p, false, -ENOMEM);
        return;
    }
    const struct wg_config_ref *cr = p->svc->config;
    SSL_CTX *ctx = wg_tls_set_service(cr->ext, cr->cfg, cfg_of(p));
    if (ctx) {
        const struct wg_service_config *sc = cfg_of(p);
        struct sockaddr_storage ss;
        probe_addr(p, &ss);
        if (!(p->ssl = wg_tls_upstream_ssl(ctx, p->fd, sc->tls.sni, sc->tls.verify,
                                           (struct sockaddr *)&ss))) {
            conn_close(p, true);
            probe_finish(p, false, -ENOMEM);
            return;
        }
        if (sc->health_check.type == WG_HEALTH_GRPC &&
            SSL_set_alpn_protos(p->ssl, (const unsigned char *)"\x02h2", 3) != 0) {
            conn_close(p, true);
            probe_finish(p, false, -ENOMEM);
            return;
        }
        p->handshaking = true;
        handshake_step(p);
        return;
    }
    send_request(p);
}

static void connect_cb(evutil_socket_t fd, short what, void *arg)
{
    struct probe *p = arg;
    connect_over(p);
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
        err = errno;
    if (err) {
        conn_close(p, true);
        probe_finish(p, false, -err);
        return;
    }
    connected(p);
}

/* Out of descriptors is not the instance's fault: no verdict, try later. */
static void no_socket(struct probe *p, int err)
{
    uint64_t now = wg_now_ms();
    if (now - p->pr->emfile_warned_ms >= 60000 || !p->pr->emfile_warned_ms) {
        p->pr->emfile_warned_ms = now;
        wg_warn("msg=\"prober cannot open a socket, probes skipped\" error=\"%s\"", strerror(err));
    }
    p->in_flight = false;
    io_put(p);
    probe_schedule(p, wg_health_jitter(cfg_of(p)->health_check.interval_ms, wg_rng_next(&p->pr->rng)));
}

static void probe_connect(struct probe *p)
{
    struct sockaddr_storage ss;
    socklen_t sslen = probe_addr(p, &ss);
    p->fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (p->fd < 0) {
        no_socket(p, errno);
        return;
    }
    atomic_fetch_add_explicit(&p->pr->open_conns, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&p->pr->connects, 1, memory_order_relaxed);
    int one = 1;
    setsockopt(p->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(p->fd, (struct sockaddr *)&ss, sslen) == 0) {
        connected(p);
        return;
    }
    if (errno != EINPROGRESS) {
        int err = errno;
        conn_close(p, true);
        probe_finish(p, false, -err);
        return;
    }
    p->wev = event_new(p->pr->base, p->fd, EV_WRITE, connect_cb, p);
    if (!p->wev || event_add(p->wev, NULL) < 0) {
        conn_close(p, true);
        probe_finish(p, false, -ENOMEM);
        return;
    }
    p->connecting = true;
    p->pr->connecting++;
}

static void record_lag(struct wg_prober *pr, uint64_t due_us)
{
    uint64_t now_us = wg_now_ns() / 1000;
    uint64_t lag = now_us > due_us ? now_us - due_us : 0;
    uint64_t max = atomic_load_explicit(&pr->lag_max_us, memory_order_relaxed);
    while (lag > max && !atomic_compare_exchange_weak(&pr->lag_max_us, &max, lag))
        ;
    atomic_fetch_add_explicit(&pr->lag_sum_us, lag, memory_order_relaxed);
    atomic_fetch_add_explicit(&pr->lag_count, 1, memory_order_relaxed);
}

static void probe_start(struct probe *p)
{
    const struct wg_service_config *cfg = cfg_of(p);
    bool reuse = p->fd >= 0 && p->rev && !p->handshaking &&
                 (cfg->health_check.type == WG_HEALTH_HTTP ||
                  (cfg->health_check.type == WG_HEALTH_GRPC && p->h2));
    if (!reuse && cfg->health_check.type != WG_HEALTH_NONE &&
        p->pr->connecting >= MAX_CONNECTING) {
        /* Not a verdict: the prober itself is the bottleneck. Wait for a
         * slot rather than let hundreds of connects time out together. */
        atomic_fetch_add_explicit(&p->pr->deferred, 1, memory_order_relaxed);
        wait_push(p);
        return;
    }
    uint64_t now = wg_now_ms();
    record_lag(p->pr, p->due_us);       /* waiting for a slot counts as lateness */
    p->started_ms = now;
    if (cfg->health_check.shared && cfg->health_check.type != WG_HEALTH_NONE &&
        wg_health_shared_following()) {
        /* The zone's prober probes; its states arrive through etcd. An
         * ejection here is over once its time is and the state is healthy. */
        conn_close(p, true);
        int pub = atomic_load_explicit(&p->inst->shared_health, memory_order_relaxed);
        if (pub)
            wg_health_apply_shared(p->inst, (enum wg_health)pub, now);
        probe_schedule(p, wg_health_jitter(cfg->health_check.interval_ms, wg_rng_next(&p->pr->rng)));
        return;
    }
    p->in_flight = true;
    p->got_bytes = false;
    struct timeval tv = { (time_t)(cfg->health_check.timeout_ms / 1000),
                          (suseconds_t)(cfg->health_check.timeout_ms % 1000) * 1000 };
    event_add(p->timer, &tv);
    if (cfg->health_check.type == WG_HEALTH_HTTP) {
        if (!p->x && !(p->x = io_get(p->pr))) {
            probe_finish(p, false, -ENOMEM);
            return;
        }
        io_reset(p->x);
        if (build_request(p) < 0) {
            probe_finish(p, false, -ENAMETOOLONG);
            return;
        }
        if (reuse) {
            p->reused = true;
            send_request(p);
            return;
        }
    }
    if (cfg->health_check.type == WG_HEALTH_GRPC && reuse) {
        p->reused = true;
        h2_submit(p);
        return;
    }
    conn_close(p, true);
    p->reused = false;
    probe_connect(p);
}

static void probe_finish(struct probe *p, bool passed, int result)
{
    struct wg_prober *pr = p->pr;
    uint64_t now = wg_now_ms();
    p->in_flight = false;
    io_put(p);
    /* A grpc answer that fails (NOT_SERVING, an error status) still came on
     * a sound connection: keep it for the next probe. */
    if (!passed && !(p->h2 && result >= 0))
        conn_close(p, true);
    else if (p->wev)
        event_del(p->wev);
    atomic_fetch_add_explicit(&pr->probes, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(passed ? &pr->passed : &pr->failed, 1, memory_order_relaxed);
    enum wg_health before = wg_instance_health(p->inst);
    enum wg_health after = wg_health_on_probe(p->inst, cfg_of(p), &p->run, passed, result, now);
    if (cfg_of(p)->health_check.shared && after != before &&
        (after == WG_HEALTH_HEALTHY || after == WG_HEALTH_UNHEALTHY))
        wg_health_shared_transition(p->svc->name, p->inst, after);
    uint64_t next = p->started_ms + wg_health_jitter(cfg_of(p)->health_check.interval_ms,
                                                     wg_rng_next(&pr->rng));
    probe_schedule(p, next > now ? next - now : 0);
}

static void kick_cb(evutil_socket_t fd, short what, void *arg)
{
    struct wg_prober *pr = arg;
    while (pr->wait_head && pr->connecting < MAX_CONNECTING) {
        struct probe *p = pr->wait_head;
        wait_remove(p);
        probe_start(p);
    }
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct probe *p = arg;
    if (p->in_flight) {
        conn_close(p, true);
        probe_finish(p, false, -ETIMEDOUT);
    } else {
        probe_start(p);
    }
}

/* Due times are rounded up to SLOT_US so that probes due close together
 * start in one loop iteration: one wake-up for ~100 probes at 10,000/s
 * instead of one each (the +-10% jitter dwarfs the rounding). */
static void probe_schedule(struct probe *p, uint64_t delay_ms)
{
    uint64_t now = wg_now_ns() / 1000, due = now + delay_ms * 1000;
    if (delay_ms)
        due = (due + SLOT_US - 1) / SLOT_US * SLOT_US;
    p->due_us = due;
    uint64_t us = due - now;
    struct timeval tv = { (time_t)(us / 1000000), (suseconds_t)(us % 1000000) };
    event_add(p->timer, &tv);
}

/* ---- the probe set --------------------------------------------------------------- */

/* inst->health_private points at the instance's probe (prober thread only):
 * the same identity is the same object, so the diff needs no lookup table. */
static struct probe *probe_new(struct wg_prober *pr, struct wg_instance *inst)
{
    struct probe *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->magic = PROBE_MAGIC;
    p->pr = pr;
    p->fd = -1;
    p->timer = evtimer_new(pr->base, timer_cb, p);
    if (!p->timer) {
        free(p);
        return NULL;
    }
    wg_instance_ref(inst);
    p->inst = inst;
    inst->health_private = p;
    return p;
}

static bool probed(const struct wg_pool_service *svc)
{
    return svc->cfg->health_check.type != WG_HEALTH_NONE;
}

/* Arm the sweep to fire within interval_ms unless it fires sooner already. */
static void sweep_arm(struct wg_prober *pr, uint64_t interval_ms)
{
    if (event_pending(pr->sweep_ev, EV_TIMEOUT, NULL) && pr->sweep_ms <= interval_ms)
        return;
    pr->sweep_ms = interval_ms;
    struct timeval tv = { (time_t)(interval_ms / 1000), (suseconds_t)(interval_ms % 1000) * 1000 };
    event_add(pr->sweep_ev, &tv);
}

static void sweep_cb(evutil_socket_t fd, short what, void *arg)
{
    struct wg_prober *pr = arg;
    uint64_t now = wg_now_ms(), next = 0;
    for (size_t k = 0; pr->snap && k < pr->snap->n_services; k++) {
        const struct wg_pool_service *svc = pr->snap->services[k];
        if (probed(svc))
            continue;
        /* Only ejections end here (adopt made the rest healthy): a service
         * with none costs no member look-up (was: every instance, every
         * interval). */
        for (uint32_t m = 0; atomic_load(&svc->state->ejected) > 0 && m < svc->n_members; m++)
            wg_health_without_probes(svc->members[m].inst, now);
        uint64_t iv = svc->cfg->health_check.interval_ms;
        if (!next || iv < next)
            next = iv;
    }
    if (next)
        sweep_arm(pr, next);
}

static void probe_free(struct probe *p)
{
    wait_remove(p);
    conn_close(p, true);
    event_free(p->timer);
    free(p->x);
    p->inst->health_private = NULL;
    wg_instance_unref(p->inst);
    p->magic = 0;
    free(p);
}

/* A service whose version differs between two snapshots: old or new is
 * NULL when it was added or removed. */
struct change {
    const struct wg_pool_service *old, *new;
};

/* The services of `b` that are not the same objects in `a` (both sorted by
 * name; `a` may be NULL): O(services), no member looked at. */
static size_t diff_services(const struct wg_snapshot *a, const struct wg_snapshot *b,
                            struct change *out)
{
    size_t i = 0, j = 0, n = 0, na = a ? a->n_services : 0;
    while (i < na || j < b->n_services) {
        if (i < na && j < b->n_services && a->services[i] == b->services[j]) {
            i++, j++;                   /* the common case: no compare */
            continue;
        }
        int c = i == na ? 1 : j == b->n_services ? -1
                                                 : strcmp(a->services[i]->name, b->services[j]->name);
        if (c < 0)
            out[n++] = (struct change){ a->services[i++], NULL };
        else if (c > 0)
            out[n++] = (struct change){ NULL, b->services[j++] };
        else if (a->services[i] != b->services[j])
            out[n++] = (struct change){ a->services[i++], b->services[j++] };
        else
            i++, j++;
    }
    return n;
}

/* Pass 1: a probe for every new instance of the changed services (svc
 * still NULL marks them new). Returns the number of new probes, or -1 when
 * memory ran out (the new ones are freed again). */
static long create_new(struct wg_prober *pr, const struct change *ch, size_t n_ch)
{
    long n = 0;
    for (size_t c = 0; c < n_ch; c++)
        for (uint32_t m = 0; ch[c].new && probed(ch[c].new) && m < ch[c].new->n_members; m++) {
            struct wg_instance *inst = ch[c].new->members[m].inst;
            if (inst->health_private)
                continue;
            if (!probe_new(pr, inst))
                goto fail;
            n++;
        }
    return n;
fail:
    for (size_t c = 0; c < n_ch; c++)
        for (uint32_t m = 0; ch[c].new && m < ch[c].new->n_members; m++) {
            struct probe *p = ch[c].new->members[m].inst->health_private;
            if (p && !p->svc)
                probe_free(p);
        }
    return -1;
}

/* Take over snapshot `s` (its reference included): new instances are probed
 * at once (a large batch is spread over one interval), known ones keep their
 * state and connection, the others are dropped. Only the services that are
 * not the same objects as in the snapshot held so far are looked at: one
 * changed service among 10,000 costs its own members, not everyone's. */
static void adopt(struct wg_prober *pr, struct wg_snapshot *s)
{
    /* The snapshot right after the one held: its own list of changes
     * (O(change)); else (snapshots skipped, the first one) the diff. */
    bool next = pr->snap && pr->snap->generation + 1 == s->generation;
    size_t cap = next ? s->n_changes : (pr->snap ? pr->snap->n_services : 0) + s->n_services;
    struct change *ch = malloc((cap ? cap : 1) * sizeof *ch);
    size_t n_ch = 0;
    if (ch && next)
        for (size_t k = 0; k < s->n_changes; k++)
            ch[n_ch++] = (struct change){ s->changes[k].old, s->changes[k].new };
    else if (ch)
        n_ch = diff_services(pr->snap, s, ch);
    long fresh = ch ? create_new(pr, ch, n_ch) : -1;
    if (fresh < 0) {
        wg_error("msg=\"prober out of memory, snapshot skipped\" generation=%llu",
                 (unsigned long long)s->generation);
        free(ch);
        wg_snapshot_unref(s);
        return;
    }
    uint64_t gen = s->generation, now = wg_now_ms();
    size_t freed = 0;
    for (size_t c = 0; c < n_ch; c++) {
        const struct wg_pool_service *svc = ch[c].new;
        if (svc && !probed(svc)) {      /* its old probes, if any, are freed below */
            for (uint32_t m = 0; m < svc->n_members; m++)
                wg_health_without_probes(svc->members[m].inst, now);
            sweep_arm(pr, svc->cfg->health_check.interval_ms);
            continue;
        }
        for (uint32_t m = 0; svc && m < svc->n_members; m++) {
            struct probe *p = svc->members[m].inst->health_private;
            bool is_new = !p->svc;
            p->svc = svc;
            p->seen = gen;
            uint64_t iv = svc->cfg->health_check.interval_ms;
            if (is_new)
                probe_schedule(p, fresh > BURST_AT_ONCE && iv ? wg_rng_below(&pr->rng, iv) : 0);
        }
    }
    for (size_t c = 0; c < n_ch; c++)
        for (uint32_t m = 0; ch[c].old && m < ch[c].old->n_members; m++) {
            struct probe *p = ch[c].old->members[m].inst->health_private;
            if (p && p->seen != gen) {          /* in no service any more */
                probe_free(p);
                freed++;
            }
        }
    free(ch);
    pr->n_set += (size_t)fresh - freed;
    atomic_store(&pr->instances, pr->n_set);
    atomic_fetch_add(&pr->snapshots, 1);
    wg_snapshot_unref(pr->snap);
    pr->snap = s;
}

/* ---- the thread and the mailbox -------------------------------------------------- */

/* Control thread, after each publish: hand the snapshot over. */
static void on_publish(void *arg, struct wg_snapshot *s)
{
    struct wg_prober *pr = arg;
    wg_snapshot_ref(s);                     /* s is current: its refcount is not zero */
    pthread_mutex_lock(&pr->lock);
    struct wg_snapshot *old = pr->pending;
    pr->pending = s;
    pthread_mutex_unlock(&pr->lock);
    wg_snapshot_unref(old);                 /* superseded before the prober saw it */
    event_active(pr->mail_ev, 0, 0);
}

static void mail_cb(evutil_socket_t fd, short what, void *arg)
{
    struct wg_prober *pr = arg;
    if (atomic_load(&pr->stop)) {
        event_base_loopbreak(pr->base);
        return;
    }
    pthread_mutex_lock(&pr->lock);
    struct wg_snapshot *s = pr->pending;
    pr->pending = NULL;
    pthread_mutex_unlock(&pr->lock);
    if (s)
        adopt(pr, s);
}

static void stats_cb(evutil_socket_t fd, short what, void *arg)
{
    struct wg_prober *pr = arg;
    uint64_t count = atomic_load(&pr->lag_count), sum = atomic_load(&pr->lag_sum_us);
    wg_debug("msg=\"prober\" instances=%llu open_connections=%llu probes=%llu failed=%llu "
             "connects=%llu lag_mean_us=%llu lag_max_us=%llu",
             (unsigned long long)atomic_load(&pr->instances),
             (unsigned long long)atomic_load(&pr->open_conns),
             (unsigned long long)atomic_load(&pr->probes),
             (unsigned long long)atomic_load(&pr->failed),
             (unsigned long long)atomic_load(&pr->connects),
             (unsigned long long)(count ? sum / count : 0),
             (unsigned long long)atomic_load(&pr->lag_max_us));
}

static void *prober_main(void *arg)
{
    struct wg_prober *pr = arg;
    event_base_loop(pr->base, EVLOOP_NO_EXIT_ON_EMPTY);
    return NULL;
}

static int prober_start(struct wg_prober *pr)
{
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);     /* signals belong to the control thread */
    int rc = pthread_create(&pr->thread, NULL, prober_main, pr);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        wg_error("msg=\"cannot start the prober thread\" error=\"%s\"", strerror(rc));
        return -1;
    }
    pr->started = true;
    return 0;
}

struct wg_prober *wg_prober_new(struct wg_pool *pool)
{
    struct wg_prober *pr = calloc(1, sizeof *pr);
    if (!pr)
        return NULL;
    pr->pool = pool;
    pthread_mutex_init(&pr->lock, NULL);
    wg_rng_seed(&pr->rng, wg_now_ns() ^ (uint64_t)getpid() << 32);
    struct event_config *ec = event_config_new();
    if (!ec)
        goto fail;
    event_config_set_flag(ec, EVENT_BASE_FLAG_PRECISE_TIMER);
    pr->base = event_base_new_with_config(ec);
    event_config_free(ec);
    if (!pr->base)
        goto fail;
    pr->mail_ev = event_new(pr->base, -1, 0, mail_cb, pr);
    pr->kick_ev = event_new(pr->base, -1, 0, kick_cb, pr);
    pr->sweep_ev = evtimer_new(pr->base, sweep_cb, pr);
    pr->stats_ev = event_new(pr->base, -1, EV_PERSIST, stats_cb, pr);
    struct timeval tv = { STATS_LOG_MS / 1000, 0 };
    if (!pr->mail_ev || !pr->kick_ev || !pr->sweep_ev || !pr->stats_ev || event_add(pr->stats_ev, &tv) < 0 || prober_start(pr) < 0)
        goto fail;
    wg_pool_on_publish(pool, on_publish, pr);
    struct wg_snapshot *cur = wg_pool_published(pool);
    if (cur)
        on_publish(pr, cur);
    return pr;
fail:
    wg_error("msg=\"cannot create the prober\"");
    wg_prober_free(pr);
    return NULL;
}

void wg_prober_free(struct wg_prober *pr)
{
    if (!pr)
        return;
    if (pr->started) {
        atomic_store(&pr->stop, 1);
        event_active(pr->mail_ev, 0, 0);
        pthread_join(pr->thread, NULL);
    }
    for (size_t k = 0; pr->snap && k < pr->snap->n_services; k++)   /* the probed ones */
        for (uint32_t m = 0; m < pr->snap->services[k]->n_members; m++)
            if (pr->snap->services[k]->members[m].inst->health_private)
                probe_free(pr->snap->services[k]->members[m].inst->health_private);
    while (pr->n_io_free)
        free(pr->io_free[--pr->n_io_free]);
    wg_snapshot_unref(pr->snap);
    wg_snapshot_unref(pr->pending);
    if (pr->mail_ev)
        event_free(pr->mail_ev);
    if (pr->stats_ev)
        event_free(pr->stats_ev);
    if (pr->kick_ev)
        event_free(pr->kick_ev);
    if (pr->sweep_ev)
        event_free(pr->sweep_ev);
    if (pr->base)
        event_base_free(pr->base);
    pthread_mutex_destroy(&pr->lock);
    free(pr);
}

void wg_prober_stats(struct wg_prober *pr, struct wg_prober_stats *out)
{
    out->probes = atomic_load(&pr->probes);
    out->passed = atomic_load(&pr->passed);
    out->failed = atomic_load(&pr->failed);
    out->connects = atomic_load(&pr->connects);
    out->instances = atomic_load(&pr->instances);
    out->open_connections = atomic_load(&pr->open_conns);
    out->snapshots = atomic_load(&pr->snapshots);
    out->lag_max_us = atomic_exchange(&pr->lag_max_us, 0);
    out->lag_sum_us = atomic_load(&pr->lag_sum_us);
    out->lag_count = atomic_load(&pr->lag_count);
    out->deferred = atomic_load(&pr->deferred);
}
