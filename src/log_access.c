/* log_access — the access log; see include/waygate/log.h.
 *
 * Data path: wg_access_log() formats into a stack buffer and copies the line
 * into the worker's own ring (single producer). The writer thread (single
 * consumer, serialised with flush and free by io_lock, which no worker ever
 * takes) writes the rings out. Destination changes (start, reload, SIGUSR1)
 * are opened on the control thread and handed to the writer through
 * `pending` under dest_lock, which is never held across I/O. */
#include "waygate/grpc.h"
#include "waygate/log.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stdarg.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/uio.h>
#include <unistd.h>

#define RING_SIZE ((uint64_t)1 << 20)   /* per worker; a power of two */
#define MAX_RINGS 1024
#define WRITER_PERIOD_MS 50
#define FIELD_OUT 384                   /* escaped output per string field */
#define PATH_OUT 4096                   /* escaped output of the path */
#define FORMAT_OFF (-1)

struct wg_worker_log {
    _Alignas(64) _Atomic uint64_t head;     /* bytes produced; the worker only */
    _Atomic uint64_t dropped;               /* the worker only (load + store) */
    _Alignas(64) _Atomic uint64_t tail;     /* bytes consumed; under io_lock */
    char *ring;
    unsigned slot;
};

/* A destination: fd -1 = off; stdout is never closed. */
struct dest {
    int fd;
    bool owned;
};

static _Atomic int format = FORMAT_OFF;     /* FORMAT_OFF or enum wg_access_format */
static _Atomic int kick_fd = -1;            /* eventfd waking the writer */
static _Atomic(struct wg_worker_log *) rings[MAX_RINGS];
static _Atomic unsigned n_rings;
static _Atomic uint64_t dropped_gone;       /* of freed rings, and write errors */
static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;   /* ring registration */
static pthread_mutex_t io_lock = PTHREAD_MUTEX_INITIALIZER;    /* consumers, current */
static pthread_mutex_t dest_lock = PTHREAD_MUTEX_INITIALIZER;  /* pending */
static struct dest current = { -1, false }; /* under io_lock */
static struct dest pending;                 /* under dest_lock */
static bool has_pending;                    /* under dest_lock */
static bool write_failing;                  /* under io_lock: log a failure once */
/* Control thread only. */
static pthread_t writer;
static bool writer_running;
static _Atomic int writer_stop;
static char *dest_path;                     /* the open file's path, or NULL */

/* ---- formatting (pure) ---- */

struct line {
    char *p;
    size_t n, cap;
};

static void put(struct line *l, const char *s, size_t n)
{
    if (n > l->cap - l->n)
        n = l->cap - l->n;
    memcpy(l->p + l->n, s, n);
    l->n += n;
}

static void put_str(struct line *l, const char *s) { put(l, s, strlen(s)); }

__attribute__((format(printf, 2, 3)))
static void put_fmt(struct line *l, const char *fmt, ...)
{
    size_t room = l->cap - l->n + 1;        /* the byte after cap takes the NUL */
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(l->p + l->n, room, fmt, ap);
    va_end(ap);
    if (n > 0)
        l->n += (size_t)n < room ? (size_t)n : room - 1;
}

/* Length (1-4) of the well-formed UTF-8 sequence at s (n bytes left), or 0. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    unsigned c = s[0], cp, min;
    size_t len;
    if (c < 0x80)
        return 1;
    if ((c & 0xe0) == 0xc0)
        len = 2, cp = c & 0x1f, min = 0x80;
    else if ((c & 0xf0) == 0xe0)
        len = 3, cp = c & 0x0f, min = 0x800;
    else if ((c & 0xf8) == 0xf0)
        len = 4, cp = c & 0x07, min = 0x10000;
    else
        return 0;
    if (len > n)
        return 0;
    for (size_t k = 1; k < len; k++) {
        if ((s[k] & 0xc0) != 0x80)
            return 0;
        cp = cp << 6 | (s[k] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

/* The escaped form of the character at s into out (<= 6 bytes); *used is
 * the number of input bytes it stands for. */
static size_t escape_one(bool json, const unsigned char *s, size_t n, char out[8], size_t *used)
{
    static const char hex[] = "0123456789abcdef";
    unsigned c = s[0];
    size_t seq = utf8_seq(s, n);
    *used = seq ? seq : 1;
    if (c == '"' || c == '\\' || c == '\n' || c == '\r' || c == '\t') {
        out[0] = '\\';
        out[1] = c == '\n' ? 'n' : c == '\r' ? 'r' : c == '\t' ? 't' : (char)c;
        return 2;
    }
    if (seq > 1 || (c >= 0x20 && c != 0x7f && seq == 1)) {
        memcpy(out, s, seq);
        return seq;
    }
    if (json && seq == 0) {
        memcpy(out, "\\ufffd", 6);          /* not UTF-8 */
        return 6;
    }
    if (json) {
        memcpy(out, "\\u00", 4);
        out[4] = hex[c >> 4];
        out[5] = hex[c & 15];
        return 6;
    }
    out[0] = '\\';
    out[1] = 'x';
    out[2] = hex[c >> 4];
    out[3] = hex[c & 15];
    return 4;
}

/* Text values stay bare when they are printable ASCII without space, quote,
 * backslash or '='; anything else is quoted. */
static bool text_bare(const unsigned char *s, size_t n)
{
    if (n == 0)
        return false;
    for (size_t k = 0; k < n; k++)
        if (s[k] <= 0x20 || s[k] >= 0x7f || s[k] == '"' || s[k] == '\\' || s[k] == '=')
            return false;
    return true;
}

/* A string value: "-" / null when absent; quoted and escaped as needed; cut
 * with "..." when its escaped form would pass `budget` bytes. */
static void put_value(struct line *l, bool json, const char *str, size_t n, size_t budget)
{
    const unsigned char *s = (const unsigned char *)str;
    if (!s) {
        put_str(l, json ? "null" : "-");
        return;
    }
    bool quote = json || !text_bare(s, n);
    if (quote)
        put(l, "\"", 1);
    size_t out = 0, k = 0;
    while (k < n) {
        char esc[8];
        size_t used, m = escape_one(json, s + k, n - k, esc, &used);
        if (out + m > budget - 3) {
            put(l, "...", 3);
            break;
        }
        put(l, esc, m);
        out += m;
        k += used;
    }
    if (quote)
        put(l, "\"", 1);
}

/* Days since 1970-01-01 -> civil date (H. Hinnant's algorithm): no gmtime_r,
 * whose glibc implementation takes the time zone lock. */
static void civil_date(int64_t days, int64_t *y, unsigned *m, unsigned *d)
{
    days += 719468;
    int64_t era = (days >= 0 ? days : days - 146096) / 146097;
    unsigned doe = (unsigned)(days - era * 146097);
    unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    unsigned mp = (5 * doy + 2) / 153;
    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = (int64_t)yoe + era * 400 + (*m <= 2);
}

static void put_time(struct line *l, const struct timespec *now)
{
    int64_t secs = (int64_t)now->tv_sec, days = secs >= 0 ? secs / 86400 : (secs - 86399) / 86400;
    int64_t rem = secs - days * 86400, y;
    unsigned m, d;
    civil_date(days, &y, &m, &d);
    put_fmt(l, "%04" PRId64 "-%02u-%02uT%02u:%02u:%02u.%03ldZ", y, m, d, (unsigned)(rem / 3600),
            (unsigned)(rem / 60 % 60), (unsigned)(rem % 60), now->tv_nsec / 1000000);
}

/* Microseconds as milliseconds with three decimals; -1: absent. */
static void put_ms(struct line *l, bool json, int64_t us)
{
    if (us < 0)
        put_str(l, json ? "null" : "-");
    else
        put_fmt(l, "%" PRId64 ".%03" PRId64, us / 1000, us % 1000);
}

static void put_status(struct line *l, bool json, unsigned status)
{
    if (status)
        put_fmt(l, "%u", status);
    else
        put_str(l, json ? "null" : "-");
}

/* One "key" + separator, then the value written by the caller. */
static void put_key(struct line *l, bool json, const char *key)
{
    put_str(l, json ? ",\"" : " ");
    put_str(l, key);
    put_str(l, json ? "\":" : "=");
}

static void field_str(struct line *l, bool json, const char *key, const char *value)
{
    put_key(l, json, key);
    put_value(l, json, value, value ? strlen(value) : 0, FIELD_OUT);
}

static void field_u64(struct line *l, bool json, const char *key, uint64_t value)
{
    put_key(l, json, key);
    put_fmt(l, "%" PRIu64, value);
}

static void field_ms(struct line *l, bool json, const char *key, int64_t us)
{
    put_key(l, json, key);
    put_ms(l, json, us);
}

size_t wg_access_format(enum wg_access_format fmt, const struct wg_access_entry *e,
                        const struct timespec *now, char *buf, size_t cap)
{
    bool json = fmt == WG_ACCESS_JSON;
    struct line l = { buf, 0, cap - 2 };    /* room for the newline and vsnprintf's NUL */
    if (json)
        put_str(&l, "{\"time\":\"");
    put_time(&l, now);
    if (json)
        put(&l, "\"", 1);
    field_str(&l, json, "client", e->client);
    field_str(&l, json, "listener", e->listener);
    field_str(&l, json, "service", e->service);
    field_str(&l, json, "upstream", e->upstream);
    field_str(&l, json, "method", e->method);
    put_key(&l, json, "path");
    put_value(&l, json, e->path, e->path_len, PATH_OUT);
    put_key(&l, json, "status");
    put_status(&l, json, e->status);
    field_str(&l, json, "reason", e->reason);
    field_u64(&l, json, "bytes_in", e->bytes_in);
    field_u64(&l, json, "bytes_out", e->bytes_out);
    field_ms(&l, json, "duration_ms", (int64_t)e->duration_us);
    field_ms(&l, json, "connect_ms", e->connect_us);
    field_u64(&l, json, "retries", e->retries);
    put_key(&l, json, "request_id");
    put_value(&l, json, e->request_id, e->request_id_len, FIELD_OUT);
    if (e->stream_id) {                 /* HTTP/2 only: HTTP/1.1 and tcp lines keep their keys */
        field_str(&l, json, "proto", "h2");
        field_u64(&l, json, "stream", e->stream_id);
    }
    if (e->grpc_code > 0)
        field_str(&l, json, "grpc_code", wg_grpc_status_name(e->grpc_code - 1));
    if (e->trace_id)
        field_str(&l, json, "trace_id", e->trace_id);
    if (e->kind)
        field_str(&l, json, "kind", e->kind);
    if (json)
        put(&l, "}", 1);
    buf[l.n++] = '\n';
    return l.n;
}

/* ---- the data path ---- */

static void kick_writer(void)
{
    int fd = atomic_load_explicit(&kick_fd, memory_order_relaxed);
    uint64_t one = 1;
    if (fd >= 0 && write(fd, &one, sizeof one) < 0 && errno != EAGAIN)
        wg_debug("msg=\"access log: cannot wake the writer\" error=\"%s\"", strerror(errno));
}

static void ring_put(struct wg_worker_log *wl, const char *line, size_t n)
{
    uint64_t h = atomic_load_explicit(&wl->head, memory_order_relaxed);
    uint64_t t = atomic_load_explicit(&wl->tail, memory_order_acquire);
    uint64_t used = h - t;
    if (RING_SIZE - used < n) {
        uint64_t d = atomic_load_explicit(&wl->dropped, memory_order_relaxed);
        atomic_store_explicit(&wl->dropped, d + 1, memory_order_relaxed);
        return;
    }
    size_t off = (size_t)(h & (RING_SIZE - 1));
    size_t first = n < RING_SIZE - off ? n : (size_t)(RING_SIZE - off);
    memcpy(wl->ring + off, line, first);
    memcpy(wl->ring, line + first, n - first);
    atomic_store_explicit(&wl->head, h + n, memory_order_release);
    if (used < RING_SIZE / 2 && used + n >= RING_SIZE / 2)
        kick_writer();
}

bool wg_access_log_enabled(void)
{
    return atomic_load_explicit(&format, memory_order_relaxed) != FORMAT_OFF;
}

void wg_access_log(struct wg_worker_log *wl, const struct wg_access_entry *e)
{
    int fmt = atomic_load_explicit(&format, memory_order_relaxed);
    if (fmt == FORMAT_OFF || !wl)
        return;
    char line[WG_ACCESS_LINE_MAX];
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    ring_put(wl, line, wg_access_format((enum wg_access_format)fmt, e, &now, line, sizeof line));
}

/* ---- the consumer side: io_lock held ---- */

static uint64_t count_lines(const char *p, size_t n)
{
    uint64_t lines = 0;
    for (const char *end = p + n; (p = memchr(p, '\n', (size_t)(end - p))); p++)
        lines++;
    return lines;
}

/* writev everything; false on an error (or 1 s without progress on a
 * non-blocking descriptor). */
static bool write_all(int fd, struct iovec *iov, int cnt)
{
    while (cnt > 0) {
        ssize_t w = writev(fd, iov, cnt);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno == EAGAIN && poll(&(struct pollfd){ fd, POLLOUT, 0 }, 1, 1000) > 0)
            continue;
        if (w < 0)
            return false;
        size_t left = (size_t)w;
        for (; cnt > 0 && left >= iov->iov_len; iov++, cnt--)
            left -= iov->iov_len;
        if (cnt > 0) {
            iov->iov_base = (char *)iov->iov_base + left;
            iov->iov_len -= left;
        }
    }
    return true;
}

static void write_result(bool ok, uint64_t lost_lines)
{
    if (ok) {
        if (write_failing)
            wg_info("msg=\"access log writable again\"");
        write_failing = false;
        return;
    }
    atomic_fetch_add_explicit(&dropped_gone, lost_lines, memory_order_relaxed);
    if (!write_failing)
        wg_error("msg=\"cannot write the access log, lines dropped\" error=\"%s\"", strerror(errno));
    write_failing = true;
}

static void drain_ring(struct wg_worker_log *wl)
{
    uint64_t t = atomic_load_explicit(&wl->tail, memory_order_relaxed);
    uint64_t h = atomic_load_explicit(&wl->head, memory_order_acquire);
    if (h == t)
        return;
    size_t off = (size_t)(t & (RING_SIZE - 1)), n = (size_t)(h - t);
    size_t first = n < RING_SIZE - off ? n : (size_t)(RING_SIZE - off);
    struct iovec iov[2] = { { wl->ring + off, first }, { wl->ring, n - first } };
    if (current.fd >= 0 && !write_all(current.fd, iov, n > first ? 2 : 1))
        write_result(false, count_lines(wl->ring + off, first) + count_lines(wl->ring, n - first));
    else if (current.fd >= 0)
        write_result(true, 0);
    atomic_store_explicit(&wl->tail, h, memory_order_release);
}

static void drain_all(void)
{
    /* No destination yet, but lines are being made: one is on its way. */
    if (current.fd < 0 && atomic_load(&format) != FORMAT_OFF)
        return;
    unsigned n = atomic_load_explicit(&n_rings, memory_order_acquire);
    for (unsigned k = 0; k < n; k++) {
        struct wg_worker_log *wl = atomic_load_explicit(&rings[k], memory_order_acquire);
        if (wl)
            drain_ring(wl);
    }
}

static void dest_close(struct dest *d)
{
    if (d->owned && d->fd >= 0 && close(d->fd) < 0)
        wg_warn("msg=\"closing the access log failed\" error=\"%s\"", strerror(errno));
    *d = (struct dest){ -1, false };
}

/* Switch to a handed-over destination; what the rings hold goes to the old. */
static void apply_pending(void)
{
    pthread_mutex_lock(&dest_lock);
    bool have = has_pending;
    struct dest next = pending;
    has_pending = false;
    pthread_mutex_unlock(&dest_lock);
    if (!have)
        return;
    if (current.fd >= 0)
        drain_all();
    dest_close(&current);
    current = next;
}

static void write_out(void)
{
    pthread_mutex_lock(&io_lock);
    apply_pending();
    drain_all();
    pthread_mutex_unlock(&io_lock);
}

static void *writer_main(void *arg)
{
    int fd = atomic_load(&kick_fd);
    while (!atomic_load(&writer_stop)) {
        uint64_t v;
        if (poll(&(struct pollfd){ fd, POLLIN, 0 }, 1, WRITER_PERIOD_MS) > 0 &&
            read(fd, &v, sizeof v) < 0 && errno != EAGAIN)
            wg_warn("msg=\"access log writer: eventfd read failed\" error=\"%s\"", strerror(errno));
        write_out();
    }
    return NULL;
}

/* ---- life cycle: control thread ---- */

struct wg_worker_log *wg_worker_log_new(void)
{
    struct wg_worker_log *wl = NULL;
    if (posix_memalign((void **)&wl, 64, sizeof *wl) != 0)
        return NULL;
    memset(wl, 0, sizeof *wl);
    if (!(wl->ring = malloc(RING_SIZE)))
        goto fail;
    pthread_mutex_lock(&reg_lock);
    unsigned n = atomic_load(&n_rings), k = 0;
    while (k < n && atomic_load(&rings[k]))
        k++;
    if (k < MAX_RINGS) {
        wl->slot = k;
        atomic_store_explicit(&rings[k], wl, memory_order_release);
        if (k == n)
            atomic_store_explicit(&n_rings, n + 1, memory_order_release);
    }
    pthread_mutex_unlock(&reg_lock);
    if (k >= MAX_RINGS)
        goto fail;
    return wl;
fail:
    free(wl->ring);
    free(wl);
    return NULL;
}

void wg_worker_log_free(struct wg_worker_log *wl)
{
    if (!wl)
        return;
    pthread_mutex_lock(&io_lock);
    apply_pending();
    drain_ring(wl);
    pthread_mutex_lock(&reg_lock);
    atomic_store(&rings[wl->slot], NULL);
    atomic_fetch_add(&dropped_gone, atomic_load(&wl->dropped));
    pthread_mutex_unlock(&reg_lock);
    pthread_mutex_unlock(&io_lock);
    free(wl->ring);
    free(wl);
}

static int start_writer(void)
{
    if (writer_running)
        return 0;
    int fd = atomic_load(&kick_fd);
    if (fd < 0 && (fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0) {
        wg_error("msg=\"access log: cannot create an eventfd\" error=\"%s\"", strerror(errno));
        return -1;
    }
    atomic_store(&kick_fd, fd);
    sigset_t all, old;                  /* signals belong to the control thread */
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int rc = pthread_create(&writer, NULL, writer_main, NULL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        wg_error("msg=\"access log: cannot start the writer thread\" error=\"%s\"", strerror(rc));
        return -1;
    }
    writer_running = true;
    return 0;
}

static int open_file(const char *path, struct dest *d)
{
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
        wg_error("msg=\"cannot open the access log\" path=\"%s\" error=\"%s\"", path,
                 strerror(errno));
        return -1;
    }
    *d = (struct dest){ fd, true };
    return 0;
}

/* Give the writer its next destination (replacing one not taken yet). */
static void hand_over(struct dest d)
{
    pthread_mutex_lock(&dest_lock);
    if (has_pending)
        dest_close(&pending);
    pending = d;
    has_pending = true;
    pthread_mutex_unlock(&dest_lock);
    kick_writer();
}

int wg_access_log_open(const struct wg_config *cfg)
{
    const char *where = cfg->log.access_log;
    struct dest d = { -1, false };
    char *path = NULL;
    if (strcmp(where, "stdout") == 0) {
        d.fd = STDOUT_FILENO;
    } else if (strcmp(where, "off") != 0) {
        if (open_file(where, &d) < 0)
            return -1;
        if (!(path = strdup(where))) {
            wg_error("msg=\"access log: out of memory\"");
            goto fail;
        }
    }
    if (d.fd >= 0 && start_writer() < 0)
        goto fail;
    hand_over(d);
    free(dest_path);
    dest_path = path;
    atomic_store(&format, d.fd >= 0 ? (int)cfg->log.access_format : FORMAT_OFF);
    return 0;
fail:
    dest_close(&d);
    free(path);
    return -1;
}

void wg_access_log_reopen(void)
{
    struct dest d;
    if (!dest_path) {
        wg_info("msg=\"SIGUSR1: no access log file to reopen\"");
        return;
    }
    if (open_file(dest_path, &d) < 0)
        return;                         /* logged; the old file stays in use */
    hand_over(d);
    wg_info("msg=\"access log reopened\" path=\"%s\"", dest_path);
}

void wg_access_log_flush(void) { write_out(); }

void wg_access_log_close(void)
{
    if (writer_running) {
        atomic_store(&writer_stop, 1);
        kick_writer();
        pthread_join(writer, NULL);
        writer_running = false;
        atomic_store(&writer_stop, 0);
    }
    write_out();
    pthread_mutex_lock(&io_lock);
    dest_close(&current);
    pthread_mutex_unlock(&io_lock);
    atomic_store(&format, FORMAT_OFF);
    int fd = atomic_exchange(&kick_fd, -1);
    if (fd >= 0)
        close(fd);
    free(dest_path);
    dest_path = NULL;
}

uint64_t wg_access_log_dropped(void)
{
    uint64_t sum = atomic_load_explicit(&dropped_gone, memory_order_relaxed);
    unsigned n = atomic_load_explicit(&n_rings, memory_order_acquire);
    for (unsigned k = 0; k < n; k++) {
        struct wg_worker_log *wl = atomic_load_explicit(&rings[k], memory_order_acquire);
        if (wl)
            sum += atomic_load_explicit(&wl->dropped, memory_order_relaxed);
    }
    return sum;
}
