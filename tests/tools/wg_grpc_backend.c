/* wg_grpc_backend — a small gRPC server over h2c (prior knowledge) for
 * waygate's benchmarks and tests: libnghttp2, one thread, epoll, so that the
 * backend is not what a gRPC benchmark measures.
 *
 *   wg_grpc_backend [--listen ADDR] [--ready-fd FD] [--message-size N]
 *                   [--name NAME] [--max-streams N]
 *
 *   --listen ADDR       127.0.0.1:PORT; port 0 lets the kernel choose
 *                       (default 127.0.0.1:0)
 *   --ready-fd FD       once listening, write "ready PORT\n" to FD (default 1)
 *   --message-size N    bytes of the fixed reply message (default 16); its
 *                       bytes are "NAME" repeated
 *   --name NAME         default "grpc"
 *   --max-streams N     SETTINGS_MAX_CONCURRENT_STREAMS (default 100)
 *   --log FILE          append "accept" for every connection accepted,
 *                       "data-max N" for every stream that sent DATA and
 *                       "data-in-max N" for every one that received some
 *                       (N: the largest payload one of its frames carried)
 *   --frame-max N       no DATA frame it sends carries more than N bytes,
 *                       and SETTINGS_MAX_FRAME_SIZE is N (within 16 KiB ..
 *                       16 MiB - 1; default: frames as large as the windows
 *                       and the client's setting allow, nghttp2 alone stops
 *                       at 16 KiB; the setting 1 MiB)
 *   --goaway-after N    on each connection, answer N streams, then send
 *                       GOAWAY (last-stream-id = the N-th) and refuse the
 *                       next one with RST_STREAM REFUSED_STREAM (0 = never)
 *
 * Every request is a POST with any :path. Calls:
 *   /grpc.health.v1.Health/Check   one HealthCheckResponse { status: SERVING }
 *   /wg.Echo/...                   every request DATA byte is sent back as it
 *                                  arrives (the messages keep their framing:
 *                                  unary and all streaming kinds echo), then
 *                                  grpc-status 0 once the request ended
 *   anything else                  unary: once the request ended, the fixed
 *                                  message, framed, then grpc-status 0
 *   A request header "x-grpc-status: N" answers Trailers-Only with
 *   grpc-status N and grpc-message "wg_grpc_backend" instead.
 * Responses carry content-type application/grpc and "x-backend: NAME".
 * The fixed reply's DATA frames are written from where the message is
 * (NGHTTP2_DATA_FLAG_NO_COPY, header and payload in one writev): a 1 MiB
 * reply costs the backend no copy but the kernel's, whatever the frame size,
 * so that the proxy in front, not the backend, decides what a call costs.
 * Only what a partial write left over is copied, to the connection's
 * pending buffer, written before anything else.
 * Echo output waits in a per-stream buffer; the backend reads no more of a
 * stream than its connection window lets the client send (nghttp2's
 * automatic WINDOW_UPDATE as data is received: a test tool, not a proxy).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

enum call { CALL_FIXED, CALL_ECHO, CALL_HEALTH };

struct stream {
    int32_t id;
    enum call call;
    int status;                 /* x-grpc-status, -1 = none */
    bool ended;                 /* the request's END_STREAM arrived */
    bool responded;
    bool trailers_sent;
    unsigned char *out;
    size_t len, off, cap;
    const unsigned char *reply;     /* the fixed reply, sent from where it is: [off, len) */
    size_t data_max, data_in_max;   /* the largest DATA payload sent, received */
};

struct conn {
    int fd;
    nghttp2_session *s;
    bool want_out;              /* EPOLLOUT armed */
    unsigned streams;           /* requests begun */
    int32_t last_id;
    const unsigned char *nc_data;   /* payload of the DATA frame read_body passed uncopied */
    unsigned char *pend;            /* what a partial write left: [pend_off, pend_len) */
    size_t pend_off, pend_len, pend_cap;
};

static const char *name = "grpc";
static unsigned char *fixed;    /* the framed fixed reply */
static size_t fixed_len;
static unsigned max_streams = 100;
static unsigned goaway_after;
static uint32_t frame_max = UINT32_MAX;
static FILE *log_file;
static int ep;

/* *buf holds at least `need` bytes (doubling from `first`): 0, or -1. */
static int reserve(unsigned char **buf, size_t *cap, size_t need, size_t first)
{
    if (need <= *cap)
        return 0;
    size_t n = *cap ? *cap : first;
    while (n < need)
        n *= 2;
    unsigned char *b = realloc(*buf, n);
    if (!b)
        return -1;
    *buf = b;
    *cap = n;
    return 0;
}

static int append(struct stream *st, const void *data, size_t n)
{
    if (st->off && st->off == st->len)
        st->off = st->len = 0;
    if (reserve(&st->out, &st->cap, st->len + n, 4096) < 0)
        return -1;
    memcpy(st->out + st->len, data, n);
    st->len += n;
    return 0;
}

/* Writes what a partial write left, as much as the socket takes. */
static void flush_pending(struct conn *c)
{
    while (c->pend_off < c->pend_len) {
        ssize_t n = send(c->fd, c->pend + c->pend_off, c->pend_len - c->pend_off, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return;             /* EAGAIN: later; an error shows on the next read */
        c->pend_off += (size_t)n;
    }
    c->pend_off = c->pend_len = 0;
}

static int keep_pending(struct conn *c, const struct iovec *iov, int iovcnt, size_t skip)
{
    for (int i = 0; i < iovcnt; i++) {
        size_t from = skip < iov[i].iov_len ? skip : iov[i].iov_len;
        size_t n = iov[i].iov_len - from;
        skip -= from;
        if (!n)                 /* written whole (nothing kept yet: pend may be NULL) */
            continue;
        if (reserve(&c->pend, &c->pend_cap, c->pend_len + n, 65536) < 0)
            return -1;
        memcpy(c->pend + c->pend_len, (const unsigned char *)iov[i].iov_base + from, n);
        c->pend_len += n;
    }
    return 0;
}

/* A DATA frame read_body passed uncopied: its header, padding and payload
 * in one writev, the rest of a partial write kept. */
static int on_send_data(nghttp2_session *s, nghttp2_frame *f, const uint8_t *hd, size_t len,
                        nghttp2_data_source *src, void *arg)
{
    (void)s, (void)src;
    struct conn *c = arg;
    if (c->pend_len)
        return NGHTTP2_ERR_WOULDBLOCK;
    static const unsigned char zeros[256];
    size_t pad = f->data.padlen;
    unsigned char padlen = pad ? (unsigned char)(pad - 1) : 0;
    struct iovec iov[4] = { { (void *)hd, 9 } };
    int n_iov = 1;
    if (pad)
        iov[n_iov++] = (struct iovec){ &padlen, 1 };
    iov[n_iov++] = (struct iovec){ (void *)c->nc_data, len };
    if (pad > 1)
        iov[n_iov++] = (struct iovec){ (void *)zeros, pad - 1 };
    ssize_t n;
    do
        n = writev(c->fd, iov, n_iov);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return errno == EAGAIN ? NGHTTP2_ERR_WOULDBLOCK : NGHTTP2_ERR_CALLBACK_FAILURE;
    return keep_pending(c, iov, n_iov, (size_t)n) == 0 ? 0 : NGHTTP2_ERR_CALLBACK_FAILURE;
}

static ssize_t on_send(nghttp2_session *s, const uint8_t *data, size_t len, int flags, void *arg)
{
    struct conn *c = arg;
    if (c->pend_len)
        return NGHTTP2_ERR_WOULDBLOCK;      /* frames leave in order */
    ssize_t n = send(c->fd, data, len, MSG_NOSIGNAL);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return NGHTTP2_ERR_WOULDBLOCK;
    return n < 0 ? NGHTTP2_ERR_CALLBACK_FAILURE : n;
}

/* DATA frames as large as the peer and --frame-max allow. */
static ssize_t frame_length(nghttp2_session *s, uint8_t type, int32_t id, int32_t conn_window,
                            int32_t stream_window, uint32_t peer_max, void *arg)
{
    (void)s, (void)type, (void)id, (void)arg;
    int64_t n = conn_window < stream_window ? conn_window : stream_window;
    if (n > peer_max)
        n = peer_max;
    return n > frame_max ? (ssize_t)frame_max : (ssize_t)n;
}

#define NV(n, v) { (uint8_t *)(n), (uint8_t *)(v), strlen(n), strlen(v), NGHTTP2_NV_FLAG_NONE }

static ssize_t read_body(nghttp2_session *s, int32_t id, uint8_t *buf, size_t len,
                         uint32_t *flags, nghttp2_data_source *src, void *arg)
{
    struct stream *st = src->ptr;
    size_t n = st->len - st->off;
    if (n > len)
        n = len;
    if (n && st->reply) {       /* on_send_data writes it from where it is */
        ((struct conn *)arg)->nc_data = st->reply + st->off;
        *flags |= NGHTTP2_DATA_FLAG_NO_COPY;
    } else if (n) {
        memcpy(buf, st->out + st->off, n);
    }
    st->off += n;
    if (n > st->data_max)
        st->data_max = n;
    if (st->off == st->len && st->ended) {
        *flags |= NGHTTP2_DATA_FLAG_EOF | NGHTTP2_DATA_FLAG_NO_END_STREAM;
        nghttp2_nv tr[] = { NV("grpc-status", "0") };
        if (nghttp2_submit_trailer(s, id, tr, 1) != 0)
            return NGHTTP2_ERR_CALLBACK_FAILURE;
        st->trailers_sent = true;
        return (ssize_t)n;
    }
    return n ? (ssize_t)n : NGHTTP2_ERR_DEFERRED;
}

static int respond(nghttp2_session *s, struct stream *st)
{
    st->responded = true;
    if (st->status >= 0) {
        char code[16];
        snprintf(code, sizeof code, "%d", st->status);
        nghttp2_nv nv[] = { NV(":status", "200"), NV("content-type", "application/grpc"),
                            NV("x-backend", name), NV("grpc-status", code),
                            NV("grpc-message", "wg_grpc_backend") };
        return nghttp2_submit_response(s, st->id, nv, 5, NULL);
    }
    nghttp2_nv nv[] = { NV(":status", "200"), NV("content-type", "application/grpc"),
                        NV("x-backend", name) };
    nghttp2_data_provider dp = { .source.ptr = st, .read_callback = read_body };
    return nghttp2_submit_response(s, st->id, nv, 3, &dp);
}

static int on_begin_headers(nghttp2_session *s, const nghttp2_frame *f, void *arg)
{
    if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    struct conn *c = arg;
    if (goaway_after && c->streams == goaway_after) {
        if (nghttp2_submit_goaway(s, NGHTTP2_FLAG_NONE, c->last_id, NGHTTP2_NO_ERROR, NULL, 0) ||
            nghttp2_submit_rst_stream(s, NGHTTP2_FLAG_NONE, f->hd.stream_id,
                                      NGHTTP2_REFUSED_STREAM))
            return NGHTTP2_ERR_CALLBACK_FAILURE;
        c->streams++;
        return 0;
    }
    c->streams++;
    c->last_id = f->hd.stream_id;
    struct stream *st = calloc(1, sizeof *st);
    if (!st)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    st->id = f->hd.stream_id;
    st->status = -1;
    return nghttp2_session_set_stream_user_data(s, f->hd.stream_id, st);
}

static int on_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *n, size_t nl,
                     const uint8_t *v, size_t vl, uint8_t flags, void *arg)
{
    struct stream *st = nghttp2_session_get_stream_user_data(s, f->hd.stream_id);
    if (!st || f->hd.type != NGHTTP2_HEADERS)
        return 0;
    if (nl == 5 && memcmp(n, ":path", 5) == 0) {
        if (vl >= 9 && memcmp(v, "/wg.Echo/", 9) == 0)
            st->call = CALL_ECHO;
        else if (vl == 28 && memcmp(v, "/grpc.health.v1.Health/Check", 28) == 0)
            st->call = CALL_HEALTH;
    } else if (nl == 13 && memcmp(n, "x-grpc-status", 13) == 0) {
        st->status = 0;
        for (size_t i = 0; i < vl && i < 3 && v[i] >= '0' && v[i] <= '9'; i++)
            st->status = st->status * 10 + (v[i] - '0');
    }
    return 0;
}

static int on_data(nghttp2_session *s, uint8_t flags, int32_t id, const uint8_t *data,
                   size_t len, void *arg)
{
    struct stream *st = nghttp2_session_get_stream_user_data(s, id);
    if (!st || st->call != CALL_ECHO || st->status >= 0)
        return 0;
    if (append(st, data, len) < 0)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    if (st->responded)
        nghttp2_session_resume_data(s, id);     /* INVALID_ARGUMENT: not deferred, fine */
    return 0;
}

static int on_frame(nghttp2_session *s, const nghttp2_frame *f, void *arg)
{
    struct stream *st = nghttp2_session_get_stream_user_data(s, f->hd.stream_id);
    if (!st || (f->hd.type != NGHTTP2_HEADERS && f->hd.type != NGHTTP2_DATA))
        return 0;
    if (f->hd.type == NGHTTP2_DATA && f->hd.length > st->data_in_max)
        st->data_in_max = f->hd.length;
    bool end = f->hd.flags & NGHTTP2_FLAG_END_STREAM;
    if (f->hd.type == NGHTTP2_HEADERS && (st->call == CALL_ECHO || st->status >= 0) &&
        !st->responded && respond(s, st) != 0)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    if (!end)
        return 0;
    st->ended = true;
    if (st->responded) {
        if (st->status < 0 && !st->trailers_sent)
            nghttp2_session_resume_data(s, st->id);
        return 0;
    }
    if (st->call == CALL_HEALTH) {
        static const unsigned char serving[] = { 0, 0, 0, 0, 2, 0x08, 0x01 };
        if (append(st, serving, sizeof serving) < 0)
            return NGHTTP2_ERR_CALLBACK_FAILURE;
    } else {                    /* not copied per call: a 1 MiB reply would cost the
                                   backend a malloc, page faults and a copy each time */
        st->reply = fixed;
        st->off = 0;
        st->len = fixed_len;
    }
    return respond(s, st) == 0 ? 0 : NGHTTP2_ERR_CALLBACK_FAILURE;
}

static int on_close(nghttp2_session *s, int32_t id, uint32_t code, void *arg)
{
    struct stream *st = nghttp2_session_get_stream_user_data(s, id);
    if (st) {
        if (log_file && st->data_max)
            fprintf(log_file, "data-max %zu\n", st->data_max);
        if (log_file && st->data_in_max)
            fprintf(log_file, "data-in-max %zu\n", st->data_in_max);
        if (log_file)
            fflush(log_file);
        free(st->out);
        free(st);
        nghttp2_session_set_stream_user_data(s, id, NULL);
    }
    return 0;
}

static void conn_free(struct conn *c)
{
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    nghttp2_session_del(c->s);
    free(c->pend);
    free(c);
}

static void conn_arm(struct conn *c)
{
    bool want = c->pend_len || nghttp2_session_want_write(c->s);
    if (want == c->want_out)
        return;
    struct epoll_event ev = { .events = EPOLLIN | (want ? EPOLLOUT : 0), .data.ptr = c };
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
    c->want_out = want;
}

static void conn_new(int lfd)
{
    int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0)
        return;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (log_file) {
        fputs("accept\n", log_file);
        fflush(log_file);
    }
    struct conn *c = calloc(1, sizeof *c);
    nghttp2_session_callbacks *cb;
    if (!c || nghttp2_session_callbacks_new(&cb) != 0) {
        free(c);
        close(fd);
        return;
    }
    c->fd = fd;
    nghttp2_session_callbacks_set_send_callback(cb, on_send);
    nghttp2_session_callbacks_set_send_data_callback(cb, on_send_data);
    nghttp2_session_callbacks_set_on_begin_headers_callback(cb, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_close);
    nghttp2_session_callbacks_set_data_source_read_length_callback(cb, frame_length);
    int rc = nghttp2_session_server_new(&c->s, cb, c);
    nghttp2_session_callbacks_del(cb);
    uint32_t frame_setting = frame_max == UINT32_MAX ? 1u << 20
                             : frame_max < 16384 ? 16384 : frame_max > 16777215 ? 16777215 : frame_max;
    nghttp2_settings_entry iv[] = { { NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, max_streams },
                                    { NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 1 << 20 },
                                    { NGHTTP2_SETTINGS_MAX_FRAME_SIZE, frame_setting } };
    struct epoll_event ev = { .events = EPOLLIN, .data.ptr = c };
    if (rc != 0 || nghttp2_submit_settings(c->s, NGHTTP2_FLAG_NONE, iv, 3) != 0 ||
        nghttp2_session_set_local_window_size(c->s, NGHTTP2_FLAG_NONE, 0, 1 << 24) != 0 ||
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0 || nghttp2_session_send(c->s) != 0) {
        if (c->s)
            nghttp2_session_del(c->s);
        close(fd);
        free(c);
        return;
    }
    conn_arm(c);
}

static void conn_io(struct conn *c, uint32_t events)
{
    if (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
        unsigned char buf[65536];
        for (;;) {
            ssize_t n = recv(c->fd, buf, sizeof buf, 0);
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0 && errno == EAGAIN)
                break;
            if (n <= 0 || nghttp2_session_mem_recv(c->s, buf, (size_t)n) != n) {
                conn_free(c);
                return;
            }
            if ((size_t)n < sizeof buf)
                break;
        }
    }
    if (c->pend_len)
        flush_pending(c);
    if (nghttp2_session_send(c->s) != 0 || (!c->pend_len && !nghttp2_session_want_read(c->s) &&
                                            !nghttp2_session_want_write(c->s))) {
        conn_free(c);
        return;
    }
    conn_arm(c);
}

static int listen_on(const char *spec, unsigned short *port)
{
    char host[64];
    const char *colon = strrchr(spec, ':');
    if (!colon || (size_t)(colon - spec) >= sizeof host)
        return -1;
    memcpy(host, spec, (size_t)(colon - spec));
    host[colon - spec] = '\0';
    struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(colon + 1)) };
    if (inet_pton(AF_INET, host, &sin.sin_addr) != 1)
        return -1;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    socklen_t len = sizeof sin;
    if (fd < 0 || bind(fd, (struct sockaddr *)&sin, sizeof sin) < 0 || listen(fd, 1024) < 0 ||
        getsockname(fd, (struct sockaddr *)&sin, &len) < 0)
        return -1;
    *port = ntohs(sin.sin_port);
    return fd;
}

int main(int argc, char **argv)
{
    const char *listen_spec = "127.0.0.1:0";
    int ready_fd = 1;
    size_t msg = 16;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--listen") == 0)
            listen_spec = argv[i + 1];
        else if (strcmp(argv[i], "--ready-fd") == 0)
            ready_fd = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--message-size") == 0)
            msg = strtoul(argv[i + 1], NULL, 10);
        else if (strcmp(argv[i], "--name") == 0)
            name = argv[i + 1];
        else if (strcmp(argv[i], "--max-streams") == 0)
            max_streams = (unsigned)strtoul(argv[i + 1], NULL, 10);
        else if (strcmp(argv[i], "--log") == 0) {
            if (!(log_file = fopen(argv[i + 1], "a"))) {
                fprintf(stderr, "wg_grpc_backend: cannot open %s\n", argv[i + 1]);
                return 1;
            }
        } else if (strcmp(argv[i], "--frame-max") == 0)
            frame_max = (uint32_t)strtoul(argv[i + 1], NULL, 10);
        else if (strcmp(argv[i], "--goaway-after") == 0)
            goaway_after = (unsigned)strtoul(argv[i + 1], NULL, 10);
        else {
            fprintf(stderr, "wg_grpc_backend: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    if (msg > (64u << 20) || !*name || !frame_max) {
        fprintf(stderr, "wg_grpc_backend: --message-size at most 64 MiB, --name not empty, "
                        "--frame-max at least 1\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    fixed_len = 5 + msg;
    if (!(fixed = malloc(fixed_len)))
        return 1;
    fixed[0] = 0;
    fixed[1] = (unsigned char)(msg >> 24);
    fixed[2] = (unsigned char)(msg >> 16);
    fixed[3] = (unsigned char)(msg >> 8);
    fixed[4] = (unsigned char)msg;
    for (size_t i = 0, nl = strlen(name); i < msg; i++)
        fixed[5 + i] = (unsigned char)name[i % nl];
    unsigned short port;
    int lfd = listen_on(listen_spec, &port);
    if (lfd < 0) {
        fprintf(stderr, "wg_grpc_backend: cannot listen on %s: %s\n", listen_spec, strerror(errno));
        return 1;
    }
    ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event lev = { .events = EPOLLIN, .data.ptr = NULL };
    if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &lev) < 0)
        return 1;
    dprintf(ready_fd, "ready %u\n", port);
    for (;;) {
        struct epoll_event evs[64];
        int n = epoll_wait(ep, evs, 64, -1);
        for (int i = 0; i < n; i++) {
            if (!evs[i].data.ptr)
                conn_new(lfd);
            else
                conn_io(evs[i].data.ptr, evs[i].events);
        }
    }
}
