/* wg_blast — a bulk TCP client for waygate's integration tests.
 *
 * Connects to HOST:PORT, sends N bytes of the deterministic stream (see
 * wg_backend.c: xorshift64 13/7/17 from the seed, 8 bytes little-endian per
 * step) from one thread while the main thread reads and verifies the bytes
 * that come back against the same stream. Nothing is held in memory beyond
 * one buffer per direction, so gigabytes cost only time.
 *
 *   wg_blast --connect HOST:PORT [--bytes N | --send N --recv N]
 *            [--seed S] [--recv-seed S] [--shutdown] [--expect-eof]
 *            [--pause-after M --pause-ms T] [--reset-after M]
 *            [--timeout-ms T]
 *
 *   --bytes N        echo check: send N and expect the same N back
 *   --send N         bytes to send (default 0)
 *   --recv N         bytes to receive and verify (default 0)
 *   --seed S         seed of the sent stream (default 1)
 *   --recv-seed S    seed of the expected stream (default: --seed)
 *   --shutdown       shutdown(SHUT_WR) once everything is sent
 *   --expect-eof     after the expected bytes, require EOF (no extra byte)
 *   --pause-after M  after receiving M bytes, stop reading for --pause-ms,
 *                    printing "paused M" (stdout, flushed) when the pause
 *                    starts and "resumed" when it ends
 *   --reset-after M  after receiving M bytes, close with SO_LINGER 0 (RST)
 *                    and exit 0
 *   --timeout-ms T   whole-run deadline (default 60000)
 *   Sizes take k, m, g suffixes (KiB, MiB, GiB).
 *
 * Prints "ok sent=N received=N seconds=S MBps=R" and exits 0 on success.
 * Exit 1: data mismatch, early EOF or unexpected extra data (with a line on
 * stderr saying which); 2: usage or connect error; 3: timeout; 4: a socket
 * error (reset) before everything was received.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "stream_gen.h"

#define BUF_SIZE (256 * 1024)

static struct {
    int fd;
    uint64_t send_bytes, recv_bytes;
    uint64_t seed, recv_seed;
    bool shutdown_after_send, expect_eof;
    uint64_t pause_after, pause_ms;
    bool pause;
    uint64_t reset_after;
    bool reset;
    int64_t deadline;
    _Atomic uint64_t sent;
    _Atomic int send_errno;
    _Atomic bool send_done;
} opt = { .fd = -1, .seed = 1, .pause_ms = 0 };

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The sender: blocking sends of the stream; the socket stays blocking for
 * this thread while the receiver polls. */
static void *sender_main(void *arg)
{
    (void)arg;
    static uint8_t buf[BUF_SIZE];
    struct stream_gen gen;
    gen_init(&gen, opt.seed);
    uint64_t left = opt.send_bytes;
    while (left > 0) {
        size_t n = left < BUF_SIZE ? (size_t)left : BUF_SIZE;
        gen_fill(&gen, buf, n);
        size_t off = 0;
        while (off < n) {
            ssize_t w = send(opt.fd, buf + off, n - off, MSG_NOSIGNAL);
            if (w < 0) {
                if (errno == EINTR)
                    continue;
                atomic_store(&opt.send_errno, errno);
                atomic_store(&opt.send_done, true);
                return NULL;
            }
            off += (size_t)w;
            atomic_fetch_add(&opt.sent, (uint64_t)w);
        }
        left -= n;
    }
    if (opt.shutdown_after_send && shutdown(opt.fd, SHUT_WR) < 0)
        atomic_store(&opt.send_errno, errno);
    atomic_store(&opt.send_done, true);
    return NULL;
}

/* Waits until fd is readable or the deadline passes; false on timeout. */
static bool wait_readable(int64_t until)
{
    for (;;) {
        int64_t left = until - now_ms();
        if (left <= 0)
            return false;
        struct pollfd p = { .fd = opt.fd, .events = POLLIN };
        int r = poll(&p, 1, left > 1000 ? 1000 : (int)left);
        if (r > 0)
            return true;
        if (r < 0 && errno != EINTR)
            return true;            /* let recv report the error */
    }
}

static void fail_timeout(uint64_t received)
{
    fprintf(stderr, "wg_blast: timeout: sent %" PRIu64 " of %" PRIu64 ", received %" PRIu64
            " of %" PRIu64 "\n", atomic_load(&opt.sent), opt.send_bytes, received,
            opt.recv_bytes);
    exit(3);
}

static void do_reset(uint64_t received)
{
    struct linger lg = { .l_onoff = 1, .l_linger = 0 };
    setsockopt(opt.fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(opt.fd);
    printf("reset received=%" PRIu64 " sent=%" PRIu64 "\n", received, atomic_load(&opt.sent));
    fflush(stdout);
    _exit(0);
}

/* Receives and verifies; returns the exit status. */
static int receive_and_verify(void)
{
    static uint8_t got[BUF_SIZE], want[BUF_SIZE];
    struct stream_gen gen;
    gen_init(&gen, opt.recv_seed);
    uint64_t received = 0;
    bool paused_done = !opt.pause;
    bool need_eof = opt.expect_eof;
    while (received < opt.recv_bytes || need_eof) {
        if (opt.reset && received >= opt.reset_after)
            do_reset(received);
        if (!paused_done && received >= opt.pause_after) {
            printf("paused %" PRIu64 "\n", received);
            fflush(stdout);
            int64_t until = now_ms() + (int64_t)opt.pause_ms;
            while (now_ms() < until)
                poll(NULL, 0, (int)(until - now_ms()));
            printf("resumed\n");
            fflush(stdout);
            paused_done = true;
        }
        if (!wait_readable(opt.deadline))
            fail_timeout(received);
        /* Read no further than the next checkpoint so pause/reset happen at
         * the byte count asked for. */
        uint64_t limit = received < opt.recv_bytes ? opt.recv_bytes - received : BUF_SIZE;
        if (!paused_done && opt.pause_after > received && opt.pause_after - received < limit)
            limit = opt.pause_after - received;
        if (opt.reset && opt.reset_after > received && opt.reset_after - received < limit)
            limit = opt.reset_after - received;
        size_t want_n = limit < BUF_SIZE ? (size_t)limit : BUF_SIZE;
        ssize_t n = recv(opt.fd, got, want_n, MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            fprintf(stderr, "wg_blast: recv after %" PRIu64 " of %" PRIu64 " bytes: %s\n",
                    received, opt.recv_bytes, strerror(errno));
            return 4;
        }
        if (n == 0) {
            if (received < opt.recv_bytes) {
                fprintf(stderr, "wg_blast: early EOF after %" PRIu64 " of %" PRIu64 " bytes\n",
                        received, opt.recv_bytes);
                return 1;
            }
            need_eof = false;
            break;
        }
        if (received >= opt.recv_bytes) {
            fprintf(stderr, "wg_blast: %zd unexpected bytes after the expected %" PRIu64 "\n",
                    n, opt.recv_bytes);
            return 1;
        }
        gen_fill(&gen, want, (size_t)n);
        if (memcmp(got, want, (size_t)n) != 0) {
            size_t i = 0;
            while (got[i] == want[i])
                i++;
            fprintf(stderr, "wg_blast: mismatch at byte %" PRIu64 ": expected 0x%02x, got 0x%02x\n",
                    received + i, want[i], got[i]);
            return 1;
        }
        received += (uint64_t)n;
    }
    if (opt.reset)
        do_reset(received);
    return 0;
}

static bool parse_size(const char *s, uint64_t *v)
{
    char *end;
    errno = 0;
    if (s[0] == '-')
        return false;
    unsigned long long x = strtoull(s, &end, 10);
    uint64_t mult = 1;
    if (*end == 'k' || *end == 'K') mult = 1024, end++;
    else if (*end == 'm' || *end == 'M') mult = 1024 * 1024, end++;
    else if (*end == 'g' || *end == 'G') mult = 1024ull * 1024 * 1024, end++;
    if (errno || end == s || *end)
        return false;
    *v = (uint64_t)x * mult;
    return true;
}

static int connect_to(const char *spec)
{
    char host[256];
    const char *colon = strrchr(spec, ':');
    if (!colon || (size_t)(colon - spec) >= sizeof host)
        return -1;
    memcpy(host, spec, (size_t)(colon - spec));
    host[colon - spec] = 0;
    char *h = host;
    size_t hl = strlen(h);
    if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') {
        h[hl - 1] = 0;
        h++;
    }
    struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICHOST | AI_NUMERICSERV };
    struct addrinfo *ai;
    if (getaddrinfo(h, colon + 1, &hints, &ai) != 0)
        return -1;
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd >= 0 && connect(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
        int e = errno;
        close(fd);
        fd = -1;
        errno = e;
    }
    freeaddrinfo(ai);
    return fd;
}

static void usage(void)
{
    fprintf(stderr, "usage: wg_blast --connect HOST:PORT [--bytes N | --send N --recv N]\n"
                    "                [--seed S] [--recv-seed S] [--shutdown] [--expect-eof]\n"
                    "                [--pause-after M --pause-ms T] [--reset-after M]\n"
                    "                [--timeout-ms T]\n");
}

int main(int argc, char **argv)
{
    const char *target = NULL;
    bool recv_seed_set = false;
    uint64_t timeout_ms = 60000;
    static const struct option opts[] = {
        { "connect", required_argument, NULL, 'c' },
        { "bytes", required_argument, NULL, 'b' },
        { "send", required_argument, NULL, 's' },
        { "recv", required_argument, NULL, 'r' },
        { "seed", required_argument, NULL, 'S' },
        { "recv-seed", required_argument, NULL, 'R' },
        { "shutdown", no_argument, NULL, 'w' },
        { "expect-eof", no_argument, NULL, 'e' },
        { "pause-after", required_argument, NULL, 'p' },
        { "pause-ms", required_argument, NULL, 'P' },
        { "reset-after", required_argument, NULL, 'x' },
        { "timeout-ms", required_argument, NULL, 't' },
        { NULL, 0, NULL, 0 },
    };
    int o;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        bool ok = true;
        switch (o) {
        case 'c': target = optarg; break;
        case 'b':
            ok = parse_size(optarg, &opt.send_bytes);
            opt.recv_bytes = opt.send_bytes;
            break;
        case 's': ok = parse_size(optarg, &opt.send_bytes); break;
        case 'r': ok = parse_size(optarg, &opt.recv_bytes); break;
        case 'S': ok = parse_size(optarg, &opt.seed); break;
        case 'R': ok = parse_size(optarg, &opt.recv_seed); recv_seed_set = true; break;
        case 'w': opt.shutdown_after_send = true; break;
        case 'e': opt.expect_eof = true; break;
        case 'p': ok = parse_size(optarg, &opt.pause_after); opt.pause = true; break;
        case 'P': ok = parse_size(optarg, &opt.pause_ms); break;
        case 'x': ok = parse_size(optarg, &opt.reset_after); opt.reset = true; break;
        case 't': ok = parse_size(optarg, &timeout_ms); break;
        default: ok = false; break;
        }
        if (!ok) {
            usage();
            return 2;
        }
    }
    if (!target || optind != argc || (opt.pause && opt.pause_ms == 0)) {
        usage();
        return 2;
    }
    if (!recv_seed_set)
        opt.recv_seed = opt.seed;
    signal(SIGPIPE, SIG_IGN);

    opt.fd = connect_to(target);
    if (opt.fd < 0) {
        fprintf(stderr, "wg_blast: connect %s: %s\n", target, strerror(errno));
        return 2;
    }
    int one = 1;
    setsockopt(opt.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    opt.deadline = now_ms() + (int64_t)timeout_ms;
    double t0 = now_s();

    pthread_t sender;
    if (pthread_create(&sender, NULL, sender_main, NULL) != 0) {
        fprintf(stderr, "wg_blast: pthread_create failed\n");
        return 2;
    }
    int rc = receive_and_verify();
    if (rc != 0)
        return rc;              /* the sender may be blocked: do not join */
    /* Everything expected arrived: the sender must finish too. */
    while (!atomic_load(&opt.send_done)) {
        if (now_ms() >= opt.deadline)
            fail_timeout(opt.recv_bytes);
        poll(NULL, 0, 5);
    }
    pthread_join(sender, NULL);
    int serr = atomic_load(&opt.send_errno);
    if (serr) {
        fprintf(stderr, "wg_blast: send after %" PRIu64 " of %" PRIu64 " bytes: %s\n",
                atomic_load(&opt.sent), opt.send_bytes, strerror(serr));
        return 4;
    }
    double secs = now_s() - t0;
    uint64_t moved = opt.send_bytes > opt.recv_bytes ? opt.send_bytes : opt.recv_bytes;
    printf("ok sent=%" PRIu64 " received=%" PRIu64 " seconds=%.3f MBps=%.1f\n",
           atomic_load(&opt.sent), opt.recv_bytes, secs,
           secs > 0 ? (double)moved / secs / 1e6 : 0.0);
    close(opt.fd);
    return 0;
}
