/* wg_backend — the test backend of waygate's integration tests.
 *
 * One process, one listening socket, one thread, epoll. Every connection has
 * bounded buffers (IN_CAP for request heads, OUT_CAP for output): whatever a
 * mode sends is generated or copied only as fast as the peer reads, so the
 * backend never buffers without bound.
 *
 *   wg_backend [--listen ADDR] [--name NAME] [--mode MODE] [--source N]
 *              [--seed S] [--ready-fd FD] [--log FILE] [--health-status N]
 *
 *   --listen ADDR   127.0.0.1:PORT, [::1]:PORT; port 0 lets the kernel choose
 *                   (default 127.0.0.1:0)
 *   --name NAME     the backend's name (default "backend")
 *   --ready-fd FD   once listening, write "ready PORT\n" to FD (default 1)
 *   --log FILE      append one line per connection event:
 *                     accept conn=ID peer=ADDR
 *                     close conn=ID rx=BYTES tx=BYTES rx_fnv=HEX8 reason=WHY
 *                   (rx_fnv: FNV-1a 32 of every byte received, 8 hex digits,
 *                    or "-" in echo and name modes, which splice(2) the
 *                    bytes without reading them; WHY: done | reset | error |
 *                    timeout)
 *   --seed S        seed of the deterministic byte stream (default 1)
 *   --source N      same as --mode source, sending N bytes
 *   --health-status N  initial status of GET /health (default 200)
 *
 * The deterministic stream (shared with wg_blast and wglib.pattern()):
 * xorshift64 (13, 7, 17) starting from the seed (0 is replaced by
 * 0x9E3779B97F4A7C15); every step's new state is emitted as 8 bytes,
 * little-endian; a stream of N bytes is the first N bytes of that sequence.
 *
 * Modes:
 *   http    HTTP/1.1 (and 1.0) server, keep-alive, pipelining. Every response
 *           carries "X-Backend: NAME" and a Content-Length (or chunked for a
 *           chunked echo). Routes (any method unless stated):
 *             /health             GET: the health status; body "health STATUS"
 *             /control/health?status=N   sets the /health status; 200 "ok"
 *             /bytes?n=N[&seed=S] N bytes of the stream, generated as sent
 *             /echo               the request body back, streamed: same
 *                                 Content-Length, or chunked for a chunked
 *                                 request
 *             /slow?ms=N          waits N ms (a timer, not a sleep), then
 *                                 answers like any other path
 *             /stats              {"accepted":N,"requests":N,"active":N,"served":N}
 *                                 (served: requests other than /health,
 *                                 /stats and /control/health)
 *             /request            body = the request head exactly as received
 *             /status/N           answers status N, body NAME
 *             /close              closes without a response
 *             /reset              resets (RST) without a response
 *             anything else       200, body = NAME (no newline)
 *           Expect: 100-continue is answered with 100 Continue. HEAD gets the
 *           headers of the matching GET. "Connection: close" and HTTP/1.0
 *           without keep-alive close the connection after the response.
 *           Malformed requests get 400 and a close.
 *   echo    TCP echo (splice(2) through a pipe of at most 256 KiB). On the
 *           client's EOF the backend sends what it still has, then
 *           shutdown(SHUT_WR) and closes.
 *   name    writes "NAME\n" on connect, then echo.
 *   source  sends N bytes of the stream, then shutdown(SHUT_WR); reads (and
 *           counts, see --log) whatever the client sends until its EOF.
 *   sink    reads until EOF, then answers "received N fnv=HEX8\n" and closes.
 *
 * SIGTERM / SIGINT: exit 0.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "stream_gen.h"

#define IN_CAP (64 * 1024)
#define OUT_CAP (128 * 1024)
#define LINGER_MS 2000
#define PIPE_CAP (256 * 1024)
#define MAX_EVENTS 256

enum mode { MODE_HTTP, MODE_ECHO, MODE_NAME, MODE_SOURCE, MODE_SINK };

static uint32_t fnv1a(uint32_t h, const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 16777619u;
    }
    return h;
}
#define FNV_INIT 2166136261u

/* ---- global state -------------------------------------------------------- */

static struct {
    enum mode mode;
    const char *name;
    uint64_t source_bytes;
    uint64_t seed;
    int health_status;
    FILE *log;
    int epfd;
    int listen_fd;
    int64_t listen_paused_until;    /* after EMFILE */
    uint64_t next_id;
    uint64_t accepted, requests, active;
    uint64_t served;                /* requests but /health, /stats, /control/health */
    unsigned timers;                /* connections with a deadline */
    struct conn *all;
} g = { .name = "backend", .seed = 1, .health_status = 200, .listen_fd = -1 };

static volatile sig_atomic_t stop_requested;

/* ---- connections ---------------------------------------------------------- */

enum http_state { H_HEAD, H_REQ, H_CLOSING, H_LINGER };
enum body_kind { BODY_NONE, BODY_LENGTH, BODY_CHUNKED };
enum chunk_state { CH_SIZE, CH_DATA, CH_CRLF, CH_TRAILER };

struct http_req {
    int minor;                      /* HTTP/1.minor */
    bool keep_alive;
    bool replied;                   /* a response head is queued */
    bool head;                      /* HEAD: no response body */
    bool echo;                      /* body goes back to the client */
    bool echo_chunked;
    bool reply_pending;             /* /slow: the reply waits for the deadline */
    enum body_kind body;
    enum chunk_state chunk;
    uint64_t body_left;             /* Content-Length left or chunk bytes left */
    bool body_done;
};

struct conn {
    int fd;
    uint64_t id;
    uint32_t events;                /* registered epoll interest */
    uint8_t *out;
    size_t out_off, out_len;
    uint8_t *in;                    /* http only */
    size_t in_off, in_len;
    bool rd_eof, wr_shut;
    bool replied;                   /* sink: the summary line is queued */
    int pipe_r, pipe_w;             /* echo, name: splice(2) pipe, -1 if none */
    size_t pipe_bytes, pipe_cap;
    bool pipe_full;                 /* the pipe took no more although data waits */
    uint64_t rx, tx;
    uint32_t rx_fnv;
    uint64_t gen_left;              /* stream bytes still to generate */
    struct stream_gen gen;
    int64_t deadline;               /* ms, 0 = none */
    enum http_state hstate;
    struct http_req req;
    struct conn *prev, *next;
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void set_deadline(struct conn *c, int64_t when)
{
    if (c->deadline == 0 && when != 0)
        g.timers++;
    else if (c->deadline != 0 && when == 0)
        g.timers--;
    c->deadline = when;
}

static void conn_close(struct conn *c, const char *reason)
{
    if (g.log) {
        char fnv[16] = "-";         /* spliced bytes never pass through here */
        if (c->pipe_r < 0)
            snprintf(fnv, sizeof fnv, "%08x", c->rx_fnv);
        fprintf(g.log, "close conn=%" PRIu64 " rx=%" PRIu64 " tx=%" PRIu64
                " rx_fnv=%s reason=%s\n", c->id, c->rx, c->tx, fnv, reason);
    }
    set_deadline(c, 0);
    epoll_ctl(g.epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    if (c->pipe_r >= 0) {
        close(c->pipe_r);
        close(c->pipe_w);
    }
    if (c->prev)
        c->prev->next = c->next;
    else
        g.all = c->next;
    if (c->next)
        c->next->prev = c->prev;
    g.active--;
    free(c->out);
    free(c->in);
    free(c);
}

static void conn_reset(struct conn *c)
{
    struct linger lg = { .l_onoff = 1, .l_linger = 0 };
    setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    conn_close(c, "reset");
}

static size_t out_pending(const struct conn *c)
{
    return c->out_len - c->out_off;
}

/* Makes at least `want` bytes of room at the tail when the buffer can hold
 * them (moving pending bytes to the front only then); returns the room. */
static size_t out_make_room(struct conn *c, size_t want)
{
    if (c->out_off == c->out_len) {
        c->out_off = c->out_len = 0;
    } else if (OUT_CAP - c->out_len < want && c->out_off > 0) {
        memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
        c->out_len -= c->out_off;
        c->out_off = 0;
    }
    return OUT_CAP - c->out_len;
}

/* Room for n more output bytes at out + out_len; NULL if there is none. */
static uint8_t *out_reserve(struct conn *c, size_t n)
{
    return out_make_room(c, n) >= n ? c->out + c->out_len : NULL;
}

/* Free output room, compacting only when the tail is short. */
static size_t out_room(struct conn *c)
{
    return out_make_room(c, OUT_CAP / 4);
}

static bool out_append(struct conn *c, const void *p, size_t n)
{
    uint8_t *dst = out_reserve(c, n);
    if (!dst)
        return false;
    memcpy(dst, p, n);
    c->out_len += n;
    return true;
}

/* Returns false when the connection failed (caller closes it). */
static bool flush_out(struct conn *c, bool *progress)
{
    while (out_pending(c) > 0) {
        ssize_t n = send(c->fd, c->out + c->out_off, out_pending(c), MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN)
                return true;
            return false;
        }
        c->out_off += (size_t)n;
        c->tx += (uint64_t)n;
        *progress = true;
    }
    return true;
}

static void fill_stream(struct conn *c, bool *progress)
{
    while (c->gen_left > 0) {
        size_t room = out_room(c);
        if (room == 0)
            return;
        size_t n = room < c->gen_left ? room : (size_t)c->gen_left;
        gen_fill(&c->gen, c->out + c->out_len, n);
        c->out_len += n;
        c->gen_left -= n;
        *progress = true;
    }
}

/* Reads into buf; returns bytes read, 0 on EAGAIN (or no room), -1 on error.
 * Sets rd_eof on EOF. */
static ssize_t read_some(struct conn *c, uint8_t *buf, size_t room)
{
    if (room == 0 || c->rd_eof)
        return 0;
    for (;;) {
        ssize_t n = recv(c->fd, buf, room, 0);
        if (n > 0) {
            c->rx += (uint64_t)n;
            c->rx_fnv = fnv1a(c->rx_fnv, buf, (size_t)n);
            return n;
        }
        if (n == 0) {
            c->rd_eof = true;
            return 0;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN)
            return 0;
        return -1;
    }
}

/* ---- TCP modes ----------------------------------------------------------- */

/* Echo through the connection's pipe: socket -> pipe -> socket with
 * splice(2), so bulk echo costs no user-space copies. At most pipe_cap
 * bytes wait in the pipe (the backpressure bound). The name-mode greeting
 * in `out` is flushed before any echoed byte. Returns false on a socket
 * error. */
static bool splice_echo(struct conn *c, bool *progress)
{
    if (!c->rd_eof && !c->pipe_full && c->pipe_bytes < c->pipe_cap) {
        ssize_t n = splice(c->fd, NULL, c->pipe_w, NULL, c->pipe_cap - c->pipe_bytes,
                           SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        if (n > 0) {
            c->pipe_bytes += (size_t)n;
            c->rx += (uint64_t)n;
            *progress = true;
        } else if (n == 0) {
            c->rd_eof = true;
            *progress = true;
        } else if (errno == EAGAIN) {
            /* Either nothing to read, or the pipe ran out of slots (many
             * small segments): then wait for the pipe to drain instead of
             * spinning on a readable socket. */
            int waiting = 0;
            if (c->pipe_bytes > 0 && ioctl(c->fd, FIONREAD, &waiting) == 0 && waiting > 0)
                c->pipe_full = true;
        } else if (errno != EINTR) {
            return false;
        }
    }
    if (out_pending(c) == 0 && c->pipe_bytes > 0 && !c->wr_shut) {
        ssize_t n = splice(c->pipe_r, NULL, c->fd, NULL, c->pipe_bytes,
                           SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        if (n > 0) {
            c->pipe_bytes -= (size_t)n;
            c->tx += (uint64_t)n;
            c->pipe_full = false;
            *progress = true;
        } else if (n < 0 && errno != EAGAIN && errno != EINTR) {
            return false;
        }
    }
    return true;
}

/* Returns false when the connection is gone. */
static bool pump_tcp(struct conn *c)
{
    static uint8_t discard[64 * 1024];
    bool progress = true;
    while (progress) {
        progress = false;
        if (!c->wr_shut && !flush_out(c, &progress)) {
            conn_close(c, "error");
            return false;
        }
        if (g.mode == MODE_SOURCE)
            fill_stream(c, &progress);
        if (c->pipe_r >= 0) {
            if (!splice_echo(c, &progress)) {
                conn_close(c, "reset");
                return false;
            }
        } else {    /* source, sink: read and count, keep nothing */
            bool was_eof = c->rd_eof;
            ssize_t n = read_some(c, discard, sizeof discard);
            if (n < 0) {
                conn_close(c, "reset");
                return false;
            }
            if (n > 0 || c->rd_eof != was_eof)
                progress = true;
        }

        if (g.mode == MODE_SINK && c->rd_eof && !c->replied) {
            char line[96];
            int len = snprintf(line, sizeof line, "received %" PRIu64 " fnv=%08x\n",
                               c->rx, c->rx_fnv);
            out_append(c, line, (size_t)len);
            c->replied = true;
            progress = true;
        }
        bool sent_all = out_pending(c) == 0 && c->gen_left == 0 && c->pipe_bytes == 0;
        bool done_sending = g.mode == MODE_SOURCE ? sent_all
                          : (c->rd_eof && sent_all && (g.mode != MODE_SINK || c->replied));
        if (!c->wr_shut && done_sending) {
            shutdown(c->fd, SHUT_WR);
            c->wr_shut = true;
            progress = true;
        }
        if (c->wr_shut && c->rd_eof) {
            conn_close(c, "done");
            return false;
        }
    }
    return true;
}

static uint32_t tcp_interest(struct conn *c)
{
    uint32_t ev = 0;
    if (!c->rd_eof) {
        if (c->pipe_r >= 0)
            ev |= !c->pipe_full && c->pipe_bytes < c->pipe_cap ? EPOLLIN : 0;
        else
            ev |= EPOLLIN;
    }
    if (!c->wr_shut && (out_pending(c) > 0 || c->gen_left > 0 || c->pipe_bytes > 0))
        ev |= EPOLLOUT;
    return ev;
}

/* ---- HTTP mode -------------------------------------------------------------- */

static const char *status_text(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 204: return "No Content";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 500: return "Internal Server Error";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default: return "Status";
    }
}

/* Queues a status line + headers; `length` < 0 means chunked. */
static bool queue_head(struct conn *c, int status, int64_t length)
{
    const char *conn_hdr = !c->req.keep_alive ? "Connection: close\r\n"
                         : c->req.minor == 0 ? "Connection: keep-alive\r\n" : "";
    char head[512];
    char len_hdr[64];
    if (length < 0)
        snprintf(len_hdr, sizeof len_hdr, "Transfer-Encoding: chunked\r\n");
    else
        snprintf(len_hdr, sizeof len_hdr, "Content-Length: %" PRId64 "\r\n", length);
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 %d %s\r\nX-Backend: %s\r\nContent-Type: text/plain\r\n%s%s\r\n",
                     status, status_text(status), g.name, len_hdr, conn_hdr);
    if (n < 0 || (size_t)n >= sizeof head || !out_append(c, head, (size_t)n))
        return false;
    c->req.replied = true;
    return true;
}

/* Queues a whole response; false if the output buffer has no room yet. */
static bool queue_response(struct conn *c, int status, const void *body, size_t len)
{
    if (out_room(c) < len + 512)
        return false;
    if (!queue_head(c, status, (int64_t)len))
        return false;
    if (!c->req.head)
        out_append(c, body, len);
    return true;
}

/* Answers 400 (unless this request's response already started: then the
 * connection just closes once the output drained) and closes. */
static void bad_request(struct conn *c)
{
    bool started = c->req.replied;
    c->req.keep_alive = false;
    c->req.head = false;
    c->req.body_done = true;
    c->req.reply_pending = false;
    set_deadline(c, 0);
    c->gen_left = 0;
    if (!started)
        queue_response(c, 400, "bad request\n", 12);
    c->hstate = H_CLOSING;
}

static bool query_u64(const char *query, const char *key, uint64_t *v)
{
    size_t klen = strlen(key);
    const char *p = query;
    while (p && *p) {
        if (strncmp(p, key, klen) == 0 && p[klen] == '=') {
            char *end;
            errno = 0;
            unsigned long long x = strtoull(p + klen + 1, &end, 10);
            if (errno || end == p + klen + 1 || (*end && *end != '&'))
                return false;
            *v = x;
            return true;
        }
        p = strchr(p, '&');
        if (p)
            p++;
    }
    return false;
}

static bool token_in_list(const char *value, size_t len, const char *token)
{
    size_t tlen = strlen(token);
    size_t i = 0;
    while (i < len) {
        while (i < len && (value[i] == ' ' || value[i] == '\t' || value[i] == ','))
            i++;
        size_t start = i;
        while (i < len && value[i] != ',')
            i++;
        size_t end = i;
        while (end > start && (value[end - 1] == ' ' || value[end - 1] == '\t'))
            end--;
        if (end - start == tlen && strncasecmp(value + start, token, tlen) == 0)
            return true;
    }
    return false;
}

/* Finds the end of a request head in [p, p+n): returns the head length
 * (including the blank line) or 0. Accepts CRLF and bare LF. */
static size_t find_head_end(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (p[i] != '\n')
            continue;
        if (i + 1 < n && p[i + 1] == '\n')
            return i + 2;
        if (i + 2 < n && p[i + 1] == '\r' && p[i + 2] == '\n')
            return i + 3;
    }
    return 0;
}

struct parsed_head {
    char method[16];
    char path[1024];
    char query[1024];
    int minor;
    bool has_length, chunked, te_other, conn_close, conn_keep, expect_continue;
    uint64_t length;
};

static bool parse_head(const char *h, size_t len, struct parsed_head *ph)
{
    memset(ph, 0, sizeof *ph);
    const char *end = h + len;
    const char *eol = memchr(h, '\n', len);
    if (!eol)
        return false;
    const char *sp1 = memchr(h, ' ', (size_t)(eol - h));
    if (!sp1 || sp1 == h || (size_t)(sp1 - h) >= sizeof ph->method)
        return false;
    memcpy(ph->method, h, (size_t)(sp1 - h));
    const char *target = sp1 + 1;
    const char *sp2 = memchr(target, ' ', (size_t)(eol - target));
    if (!sp2 || sp2 == target)
        return false;
    const char *ver = sp2 + 1;
    size_t vlen = (size_t)(eol - ver);
    if (vlen > 0 && ver[vlen - 1] == '\r')
        vlen--;
    if (vlen != 8 || strncmp(ver, "HTTP/1.", 7) != 0 || (ver[7] != '0' && ver[7] != '1'))
        return false;
    ph->minor = ver[7] - '0';
    if (*target != '/') {           /* absolute-form: keep the path */
        const char *scheme = memchr(target, '/', (size_t)(sp2 - target));
        if (!scheme || scheme + 1 >= sp2 || scheme[1] != '/')
            return false;
        const char *path = memchr(scheme + 2, '/', (size_t)(sp2 - scheme - 2));
        target = path ? path : sp2;
    }
    const char *q = memchr(target, '?', (size_t)(sp2 - target));
    const char *path_end = q ? q : sp2;
    if ((size_t)(path_end - target) >= sizeof ph->path)
        return false;
    memcpy(ph->path, target, (size_t)(path_end - target));
    if (ph->path[0] == 0)
        strcpy(ph->path, "/");
    if (q) {
        if ((size_t)(sp2 - q - 1) >= sizeof ph->query)
            return false;
        memcpy(ph->query, q + 1, (size_t)(sp2 - q - 1));
    }

    for (const char *line = eol + 1; line < end;) {
        const char *lend = memchr(line, '\n', (size_t)(end - line));
        if (!lend)
            return false;
        size_t llen = (size_t)(lend - line);
        if (llen > 0 && line[llen - 1] == '\r')
            llen--;
        if (llen == 0)
            break;
        const char *colon = memchr(line, ':', llen);
        if (!colon || colon == line || colon[-1] == ' ' || colon[-1] == '\t')
            return false;
        size_t nlen = (size_t)(colon - line);
        const char *v = colon + 1;
        const char *vend = line + llen;
        while (v < vend && (*v == ' ' || *v == '\t'))
            v++;
        while (vend > v && (vend[-1] == ' ' || vend[-1] == '\t'))
            vend--;
        size_t vl = (size_t)(vend - v);
        if (nlen == 14 && strncasecmp(line, "content-length", 14) == 0) {
            uint64_t x = 0;
            if (vl == 0 || vl > 18)
                return false;
            for (size_t i = 0; i < vl; i++) {
                if (v[i] < '0' || v[i] > '9')
                    return false;
                x = x * 10 + (uint64_t)(v[i] - '0');
            }
            if (ph->has_length && ph->length != x)
                return false;
            ph->has_length = true;
            ph->length = x;
        } else if (nlen == 17 && strncasecmp(line, "transfer-encoding", 17) == 0) {
            if (vl == 7 && strncasecmp(v, "chunked", 7) == 0)
                ph->chunked = true;
            else
                ph->te_other = true;
        } else if (nlen == 10 && strncasecmp(line, "connection", 10) == 0) {
            if (token_in_list(v, vl, "close"))
                ph->conn_close = true;
            if (token_in_list(v, vl, "keep-alive"))
                ph->conn_keep = true;
        } else if (nlen == 6 && strncasecmp(line, "expect", 6) == 0) {
            if (vl == 12 && strncasecmp(v, "100-continue", 12) == 0)
                ph->expect_continue = true;
        }
        line = lend + 1;
    }
    if (ph->te_other || (ph->chunked && ph->has_length))
        return false;
    return true;
}

/* Queues the reply of an ordinary (non-echo, non-stream) route. */
static bool queue_plain_reply(struct conn *c, int status)
{
    return queue_response(c, status, g.name, strlen(g.name));
}

/* Handles one complete request head at in[in_off, in_off+hlen).
 * Returns false when the connection was closed. */
static bool start_request(struct conn *c, size_t hlen)
{
    struct parsed_head ph;
    const char *h = (const char *)c->in + c->in_off;
    memset(&c->req, 0, sizeof c->req);
    c->req.keep_alive = true;
    g.requests++;
    if (!parse_head(h, hlen, &ph)) {
        c->in_off += hlen;
        bad_request(c);
        return true;
    }
    struct http_req *r = &c->req;
    r->minor = ph.minor;
    r->keep_alive = ph.minor == 1 ? !ph.conn_close : (ph.conn_keep && !ph.conn_close);
    r->head = strcmp(ph.method, "HEAD") == 0;
    if (ph.chunked) {
        r->body = BODY_CHUNKED;
        r->chunk = CH_SIZE;
    } else if (ph.has_length && ph.length > 0) {
        r->body = BODY_LENGTH;
        r->body_left = ph.length;
    } else {
        r->body_done = true;
    }
    c->hstate = H_REQ;
    if (strcmp(ph.path, "/health") != 0 && strcmp(ph.path, "/stats") != 0 &&
        strcmp(ph.path, "/control/health") != 0)
        g.served++;

    if (strcmp(ph.path, "/reset") == 0) {
        conn_reset(c);
        return false;
    }
    if (strcmp(ph.path, "/close") == 0) {
        conn_close(c, "done");
        return false;
    }
    if (ph.expect_continue && !r->body_done)
        out_append(c, "HTTP/1.1 100 Continue\r\n\r\n", 25);

    uint64_t v;
    bool ok = true;
    if (strcmp(ph.path, "/echo") == 0) {
        r->echo = !r->head;
        if (r->body == BODY_CHUNKED && ph.minor == 1) {
            r->echo_chunked = true;
            ok = queue_head(c, 200, -1);
        } else if (r->body == BODY_CHUNKED) {
            r->echo = false;        /* HTTP/1.0 cannot receive chunked */
            ok = queue_head(c, 200, 0);
        } else {
            ok = queue_head(c, 200, r->body == BODY_LENGTH ? (int64_t)r->body_left : 0);
        }
    } else if (strcmp(ph.path, "/bytes") == 0) {
        if (!query_u64(ph.query, "n", &v)) {
            c->in_off += hlen;
            bad_request(c);
            return true;
        }
        uint64_t seed = g.seed;
        query_u64(ph.query, "seed", &seed);
        ok = queue_head(c, 200, (int64_t)v);
        gen_init(&c->gen, seed);
        c->gen_left = r->head ? 0 : v;
    } else if (strcmp(ph.path, "/slow") == 0) {
        if (!query_u64(ph.query, "ms", &v)) {
            c->in_off += hlen;
            bad_request(c);
            return true;
        }
        r->reply_pending = true;
        set_deadline(c, now_ms() + (int64_t)v);
    } else if (strcmp(ph.path, "/health") == 0) {
        char body[32];
        int n = snprintf(body, sizeof body, "health %d", g.health_status);
        ok = queue_response(c, g.health_status, body, (size_t)n);
    } else if (strcmp(ph.path, "/control/health") == 0) {
        if (!query_u64(ph.query, "status", &v) || v < 100 || v > 599) {
            c->in_off += hlen;
            bad_request(c);
            return true;
        }
        g.health_status = (int)v;
        ok = queue_response(c, 200, "ok", 2);
    } else if (strcmp(ph.path, "/stats") == 0) {
        char body[200];
        int n = snprintf(body, sizeof body,
                         "{\"accepted\":%" PRIu64 ",\"requests\":%" PRIu64 ",\"active\":%" PRIu64
                         ",\"served\":%" PRIu64 "}",
                         g.accepted, g.requests, g.active, g.served);
        ok = queue_response(c, 200, body, (size_t)n);
    } else if (strcmp(ph.path, "/request") == 0) {
        ok = queue_response(c, 200, h, hlen);
    } else if (strncmp(ph.path, "/status/", 8) == 0) {
        char *end;
        long st = strtol(ph.path + 8, &end, 10);
        if (*end || st < 200 || st > 599) {
            c->in_off += hlen;
            bad_request(c);
            return true;
        }
        ok = queue_plain_reply(c, (int)st);
    } else {
        ok = queue_plain_reply(c, 200);
    }
    c->in_off += hlen;
    if (!ok) {                      /* cannot happen: the head waits for room */
        conn_close(c, "error");
        return false;
    }
    return true;
}

/* Finds '\n' in the unread input; returns its offset from in_off or -1. */
static ssize_t find_lf(struct conn *c)
{
    const uint8_t *p = memchr(c->in + c->in_off, '\n', c->in_len - c->in_off);
    return p ? p - (c->in + c->in_off) : -1;
}

/* Consumes request body bytes (echoing or discarding). Returns false on a
 * malformed body (the caller answers 400). */
static bool consume_body(struct conn *c, bool *progress)
{
    struct http_req *r = &c->req;
    while (!r->body_done) {
        size_t avail = c->in_len - c->in_off;
        if (r->body == BODY_LENGTH || (r->body == BODY_CHUNKED && r->chunk == CH_DATA)) {
            size_t n = avail < r->body_left ? avail : (size_t)r->body_left;
            if (r->echo) {
                size_t room = out_room(c);
                size_t frame = r->echo_chunked ? 32 : 0;
                room = room > frame ? room - frame : 0;
                if (n > room)
                    n = room;
            }
            if (n == 0)
                return true;
            if (r->echo && r->echo_chunked) {
                char sz[24];
                int l = snprintf(sz, sizeof sz, "%zx\r\n", n);
                out_append(c, sz, (size_t)l);
                out_append(c, c->in + c->in_off, n);
                out_append(c, "\r\n", 2);
            } else if (r->echo) {
                out_append(c, c->in + c->in_off, n);
            }
            c->in_off += n;
            r->body_left -= n;
            *progress = true;
            if (r->body_left == 0) {
                if (r->body == BODY_LENGTH)
                    r->body_done = true;
                else
                    r->chunk = CH_CRLF;
            }
            continue;
        }
        /* chunked framing */
        if (r->chunk == CH_CRLF) {
            if (avail == 0)
                return true;
            const uint8_t *p = c->in + c->in_off;
            if (p[0] == '\n') {
                c->in_off += 1;
            } else if (p[0] == '\r') {
                if (avail < 2)
                    return true;
                if (p[1] != '\n')
                    return false;
                c->in_off += 2;
            } else {
                return false;
            }
            r->chunk = CH_SIZE;
            *progress = true;
            continue;
        }
        ssize_t lf = find_lf(c);
        if (lf < 0)
            return !(c->in_off == 0 && c->in_len == IN_CAP);
        const char *line = (const char *)c->in + c->in_off;
        if (r->chunk == CH_SIZE) {
            uint64_t size = 0;
            ssize_t i = 0;
            for (; i < lf; i++) {
                char ch = line[i];
                int d = ch >= '0' && ch <= '9' ? ch - '0'
                      : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10
                      : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10 : -1;
                if (d < 0)
                    break;
                if (size >> 58)
                    return false;
                size = size * 16 + (uint64_t)d;
            }
            if (i == 0 || (i < lf && line[i] != ';' && line[i] != '\r'))
                return false;
            c->in_off += (size_t)lf + 1;
            if (size == 0) {
                r->chunk = CH_TRAILER;
            } else {
                r->chunk = CH_DATA;
                r->body_left = size;
            }
            *progress = true;
            continue;
        }
        /* CH_TRAILER: skip trailer fields up to the empty line */
        bool empty = lf == 0 || (lf == 1 && line[0] == '\r');
        if (empty && r->echo && r->echo_chunked) {
            if (!out_append(c, "0\r\n\r\n", 5))
                return true;        /* no room yet: retry later */
        }
        c->in_off += (size_t)lf + 1;
        if (empty)
            r->body_done = true;
        *progress = true;
    }
    return true;
}

static void finish_slow_reply(struct conn *c)
{
    if (!c->req.reply_pending || c->deadline == 0 || now_ms() < c->deadline)
        return;
    if (queue_plain_reply(c, 200)) {
        c->req.reply_pending = false;
        set_deadline(c, 0);
    }
}

/* Returns false when the connection is gone. */
static bool pump_http(struct conn *c)
{
    bool progress = true;
    while (progress) {
        progress = false;
        if (!c->wr_shut && !flush_out(c, &progress)) {
            conn_close(c, "error");
            return false;
        }
        fill_stream(c, &progress);

        /* read */
        if (c->in_off == c->in_len) {
            c->in_off = c->in_len = 0;
        } else if (c->in_len == IN_CAP && c->in_off > 0) {
            memmove(c->in, c->in + c->in_off, c->in_len - c->in_off);
            c->in_len -= c->in_off;
            c->in_off = 0;
        }
        bool was_eof = c->rd_eof;
        ssize_t n = read_some(c, c->in + c->in_len, IN_CAP - c->in_len);
        if (n < 0) {
            conn_close(c, "reset");
            return false;
        }
        if (n > 0) {
            if (c->hstate == H_LINGER)
                c->in_off = c->in_len = 0;      /* discard */
            else
                c->in_len += (size_t)n;
            progress = true;
        }
        if (c->rd_eof != was_eof)
            progress = true;

        switch (c->hstate) {
        case H_HEAD: {
            size_t avail = c->in_len - c->in_off;
            size_t hlen = find_head_end(c->in + c->in_off, avail);
            if (hlen == 0) {
                if (avail == IN_CAP) {
                    bad_request(c);
                    progress = true;
                } else if (c->rd_eof && out_pending(c) == 0) {
                    conn_close(c, "done");
                    return false;
                }
                break;
            }
            if (out_room(c) < hlen + 1024)
                break;              /* wait until earlier replies drain */
            if (!start_request(c, hlen))
                return false;
            progress = true;
            break;
        }
        case H_REQ:
            finish_slow_reply(c);
            if (!consume_body(c, &progress)) {
                bad_request(c);
                progress = true;
                break;
            }
            if (c->req.body_done && !c->req.reply_pending && c->gen_left == 0) {
                c->hstate = c->req.keep_alive ? H_HEAD : H_CLOSING;
                progress = true;
            } else if (c->rd_eof && !c->req.body_done) {
                conn_close(c, "done");  /* truncated body: nothing to answer */
                return false;
            }
            break;
        case H_CLOSING:
            if (out_pending(c) == 0 && c->gen_left == 0) {
                shutdown(c->fd, SHUT_WR);
                c->wr_shut = true;
                c->hstate = H_LINGER;
                c->in_off = c->in_len = 0;
                set_deadline(c, now_ms() + LINGER_MS);
                progress = true;
            }
            break;
        case H_LINGER:
            if (c->rd_eof) {
                conn_close(c, "done");
                return false;
            }
            break;
        }
    }
    return true;
}

static uint32_t http_interest(struct conn *c)
{
    uint32_t ev = 0;
    if (!c->rd_eof) {
        bool room = c->in_len < IN_CAP || c->in_off > 0;
        if (c->hstate == H_LINGER || room)
            ev |= EPOLLIN;
    }
    if (!c->wr_shut && (out_pending(c) > 0 || c->gen_left > 0))
        ev |= EPOLLOUT;
    return ev;
}

/* ---- loop ------------------------------------------------------------------- */

static void update_interest(struct conn *c)
{
    uint32_t ev = g.mode == MODE_HTTP ? http_interest(c) : tcp_interest(c);
    if (ev == c->events)
        return;
    struct epoll_event e = { .events = ev, .data.ptr = c };
    epoll_ctl(g.epfd, EPOLL_CTL_MOD, c->fd, &e);
    c->events = ev;
}

/* Pumps a connection and refreshes its interest; false if it is gone. */
static bool conn_run(struct conn *c)
{
    bool alive = g.mode == MODE_HTTP ? pump_http(c) : pump_tcp(c);
    if (alive)
        update_interest(c);
    return alive;
}

static void accept_all(void)
{
    for (;;) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        int fd = accept4(g.listen_fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                fprintf(stderr, "wg_backend: accept: %s (pausing 100ms)\n", strerror(errno));
                g.listen_paused_until = now_ms() + 100;
                struct epoll_event e = { .events = 0, .data.ptr = NULL };
                epoll_ctl(g.epfd, EPOLL_CTL_MOD, g.listen_fd, &e);
            }
            return;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct conn *c = calloc(1, sizeof *c);
        uint8_t *out = malloc(OUT_CAP);
        uint8_t *in = g.mode == MODE_HTTP ? malloc(IN_CAP) : NULL;
        if (!c || !out || (g.mode == MODE_HTTP && !in)) {
            free(c);
            free(out);
            free(in);
            close(fd);
            continue;
        }
        c->fd = fd;
        c->pipe_r = c->pipe_w = -1;
        if (g.mode == MODE_ECHO || g.mode == MODE_NAME) {
            int p[2];
            if (pipe2(p, O_NONBLOCK | O_CLOEXEC) < 0) {
                fprintf(stderr, "wg_backend: pipe: %s\n", strerror(errno));
                free(c);
                free(out);
                free(in);
                close(fd);
                continue;
            }
            c->pipe_r = p[0];
            c->pipe_w = p[1];
            int size = fcntl(p[1], F_SETPIPE_SZ, PIPE_CAP);
            if (size < 0)
                size = fcntl(p[1], F_GETPIPE_SZ);
            c->pipe_cap = size > 0 ? (size_t)size : 65536;
        }
        c->id = ++g.next_id;
        c->out = out;
        c->in = in;
        c->rx_fnv = FNV_INIT;
        g.accepted++;
        g.active++;
        c->next = g.all;
        if (g.all)
            g.all->prev = c;
        g.all = c;
        if (g.log) {
            char host[INET6_ADDRSTRLEN] = "?";
            unsigned port = 0;
            if (ss.ss_family == AF_INET) {
                struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
                inet_ntop(AF_INET, &sin->sin_addr, host, sizeof host);
                port = ntohs(sin->sin_port);
            } else if (ss.ss_family == AF_INET6) {
                struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
                inet_ntop(AF_INET6, &sin6->sin6_addr, host, sizeof host);
                port = ntohs(sin6->sin6_port);
            }
            fprintf(g.log, "accept conn=%" PRIu64 " peer=%s:%u\n", c->id, host, port);
        }
        if (g.mode == MODE_NAME) {
            char line[256];
            int n = snprintf(line, sizeof line, "%s\n", g.name);
            out_append(c, line, (size_t)n);
        } else if (g.mode == MODE_SOURCE) {
            gen_init(&c->gen, g.seed);
            c->gen_left = g.source_bytes;
        }
        struct epoll_event e = { .events = 0, .data.ptr = c };
        if (epoll_ctl(g.epfd, EPOLL_CTL_ADD, fd, &e) < 0) {
            conn_close(c, "error");
            continue;
        }
        conn_run(c);
    }
}

/* Fires due deadlines; returns the epoll timeout in ms (-1 = none). */
static int run_timers(void)
{
    int64_t now = now_ms();
    int64_t next = -1;
    if (g.listen_paused_until) {
        if (now >= g.listen_paused_until) {
            g.listen_paused_until = 0;
            struct epoll_event e = { .events = EPOLLIN, .data.ptr = NULL };
            epoll_ctl(g.epfd, EPOLL_CTL_MOD, g.listen_fd, &e);
        } else {
            next = g.listen_paused_until;
        }
    }
    if (g.timers > 0) {
        struct conn *c = g.all;
        while (c) {
            struct conn *nx = c->next;
            if (c->deadline && c->deadline <= now) {
                if (c->hstate == H_LINGER) {
                    conn_close(c, "timeout");
                } else {
                    conn_run(c);    /* a /slow reply is due */
                }
            } else if (c->deadline && (next < 0 || c->deadline < next)) {
                next = c->deadline;
            }
            c = nx;
        }
    }
    if (next < 0)
        return -1;
    return next > now ? (int)(next - now) : 0;
}

static void on_signal(int sig)
{
    (void)sig;
    stop_requested = 1;
}

static int listen_on(const char *spec)
{
    char host[128];
    const char *colon = strrchr(spec, ':');
    if (!colon || (size_t)(colon - spec) >= sizeof host)
        return -1;
    memcpy(host, spec, (size_t)(colon - spec));
    host[colon - spec] = 0;
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end || port < 0 || port > 65535)
        return -1;
    struct sockaddr_storage ss;
    socklen_t sl;
    memset(&ss, 0, sizeof ss);
    if (host[0] == '[') {
        size_t hl = strlen(host);
        if (hl < 2 || host[hl - 1] != ']')
            return -1;
        host[hl - 1] = 0;
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons((uint16_t)port);
        if (inet_pton(AF_INET6, host + 1, &sin6->sin6_addr) != 1)
            return -1;
        sl = sizeof *sin6;
    } else {
        struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
        sin->sin_family = AF_INET;
        sin->sin_port = htons((uint16_t)port);
        if (host[0] == 0)
            sin->sin_addr.s_addr = htonl(INADDR_ANY);
        else if (inet_pton(AF_INET, host, &sin->sin_addr) != 1)
            return -1;
        sl = sizeof *sin;
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&ss, sl) < 0 || listen(fd, 4096) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static int bound_port(int fd)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) < 0)
        return -1;
    if (ss.ss_family == AF_INET6)
        return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

static void usage(FILE *f)
{
    fprintf(f, "usage: wg_backend [--listen ADDR] [--name NAME] [--mode http|echo|name|source|sink]\n"
               "                  [--source N] [--seed S] [--ready-fd FD] [--log FILE]\n"
               "                  [--health-status N]\n"
               "See the comment at the top of tests/tools/wg_backend.c.\n");
}

static bool parse_u64(const char *s, uint64_t *v)
{
    char *end;
    errno = 0;
    unsigned long long x = strtoull(s, &end, 10);
    uint64_t mult = 1;
    if (*end == 'k' || *end == 'K') mult = 1024, end++;
    else if (*end == 'm' || *end == 'M') mult = 1024 * 1024, end++;
    else if (*end == 'g' || *end == 'G') mult = 1024ull * 1024 * 1024, end++;
    if (errno || end == s || *end || s[0] == '-')
        return false;
    *v = (uint64_t)x * mult;
    return true;
}

int main(int argc, char **argv)
{
    const char *listen_spec = "127.0.0.1:0";
    const char *log_path = NULL;
    int ready_fd = 1;
    static const struct option opts[] = {
        { "listen", required_argument, NULL, 'l' },
        { "name", required_argument, NULL, 'n' },
        { "mode", required_argument, NULL, 'm' },
        { "source", required_argument, NULL, 's' },
        { "seed", required_argument, NULL, 'S' },
        { "ready-fd", required_argument, NULL, 'r' },
        { "log", required_argument, NULL, 'L' },
        { "health-status", required_argument, NULL, 'H' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    int opt;
    uint64_t v;
    while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (opt) {
        case 'l': listen_spec = optarg; break;
        case 'n': g.name = optarg; break;
        case 'm':
            if (strcmp(optarg, "http") == 0) g.mode = MODE_HTTP;
            else if (strcmp(optarg, "echo") == 0) g.mode = MODE_ECHO;
            else if (strcmp(optarg, "name") == 0) g.mode = MODE_NAME;
            else if (strcmp(optarg, "source") == 0) g.mode = MODE_SOURCE;
            else if (strcmp(optarg, "sink") == 0) g.mode = MODE_SINK;
            else { usage(stderr); return 2; }
            break;
        case 's':
            if (!parse_u64(optarg, &g.source_bytes)) { usage(stderr); return 2; }
            g.mode = MODE_SOURCE;
            break;
        case 'S':
            if (!parse_u64(optarg, &g.seed)) { usage(stderr); return 2; }
            break;
        case 'r':
            if (!parse_u64(optarg, &v) || v > 1024) { usage(stderr); return 2; }
            ready_fd = (int)v;
            break;
        case 'L': log_path = optarg; break;
        case 'H':
            if (!parse_u64(optarg, &v) || v < 100 || v > 599) { usage(stderr); return 2; }
            g.health_status = (int)v;
            break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind != argc) {
        usage(stderr);
        return 2;
    }
    if (strlen(g.name) > 200) {
        fprintf(stderr, "wg_backend: name too long\n");
        return 2;
    }

    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    /* SIGTERM/SIGINT are delivered only inside epoll_pwait, so a stop
     * request can never slip in between the flag check and the wait. */
    sigset_t blocked, wait_mask;
    sigemptyset(&blocked);
    sigaddset(&blocked, SIGTERM);
    sigaddset(&blocked, SIGINT);
    sigprocmask(SIG_BLOCK, &blocked, &wait_mask);
    sigdelset(&wait_mask, SIGTERM);
    sigdelset(&wait_mask, SIGINT);

    if (log_path) {
        g.log = fopen(log_path, "a");
        if (!g.log) {
            fprintf(stderr, "wg_backend: %s: %s\n", log_path, strerror(errno));
            return 1;
        }
        setvbuf(g.log, NULL, _IOLBF, 0);
    }
    g.listen_fd = listen_on(listen_spec);
    if (g.listen_fd < 0) {
        fprintf(stderr, "wg_backend: cannot listen on %s: %s\n", listen_spec, strerror(errno));
        return 1;
    }
    g.epfd = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event le = { .events = EPOLLIN, .data.ptr = NULL };
    if (g.epfd < 0 || epoll_ctl(g.epfd, EPOLL_CTL_ADD, g.listen_fd, &le) < 0) {
        fprintf(stderr, "wg_backend: epoll: %s\n", strerror(errno));
        return 1;
    }
    char ready[32];
    int rl_len = snprintf(ready, sizeof ready, "ready %d\n", bound_port(g.listen_fd));
    if (write(ready_fd, ready, (size_t)rl_len) != rl_len) {
        fprintf(stderr, "wg_backend: cannot write the ready line: %s\n", strerror(errno));
        return 1;
    }
    if (ready_fd != 1 && ready_fd != 2)
        close(ready_fd);

    struct epoll_event evs[MAX_EVENTS];
    while (!stop_requested) {
        int timeout = run_timers();
        int n = epoll_pwait(g.epfd, evs, MAX_EVENTS, timeout, &wait_mask);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            fprintf(stderr, "wg_backend: epoll_wait: %s\n", strerror(errno));
            return 1;
        }
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (!c) {
                accept_all();
                continue;
            }
            if (evs[i].events & EPOLLERR) {
                conn_close(c, "reset");
                continue;
            }
            if (!conn_run(c))
                continue;
            /* HUP: the peer is gone both ways (or reset); nothing more can be
             * sent and what could be read has been read. */
            if (evs[i].events & EPOLLHUP)
                conn_close(c, c->rd_eof ? "done" : "reset");
        }
    }
    if (g.log)
        fflush(g.log);
    return 0;
}
