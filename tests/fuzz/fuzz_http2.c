/* fuzz_http2 — libFuzzer harness for the HTTP/2 downstream codec.
 *
 * Each input is what a client sends after the connection preface: frames
 * fed to a fresh session of an h2c connection (src/http2.c) on one end of a
 * socketpair, on a worker-like event loop, with the real exchange behind it
 * (routes, the HTTP/1.1 upstream codec, the keep-alive pool) and a stub
 * upstream in the same process that answers every request with a chunked
 * body. The loop runs until the codec has nothing left to do; then the
 * client side closes and the connection must go away: every frame sequence
 * ends with no connection left (no leak, no use after free: ASan/UBSan in
 * the fuzz build), whatever it did on the way. */
#include <arpa/inet.h>
#include <errno.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "waygate/config.h"
#include "waygate/grpc.h"
#include "waygate/http2.h"
#include "waygate/listener.h"
#include "waygate/log.h"
#include "waygate/pool.h"
#include "waygate/reclaim.h"
#include "waygate/record.h"
#include "waygate/stats.h"
#include "waygate/worker.h"

#define CHECK(c) do { if (!(c)) { fprintf(stderr, "%s:%d: check failed: %s\n", \
                                          __FILE__, __LINE__, #c); abort(); } } while (0)

static struct wg_worker w;
static struct wg_listener listener;
static _Atomic uint64_t listener_h2[WG_H2__COUNT];
static _Atomic uint64_t listener_grpc[WG_GRPC_CODES];
static struct event *accept_ev;

static const char RESPONSE[] = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                               "X-Backend: stub\r\n\r\n5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n";

/* The stub upstream: read what comes, answer each read once, close on EOF. */
static void stub_read(evutil_socket_t fd, short what, void *arg)
{
    struct event *ev = *(struct event **)arg;
    char buf[16384];
    ssize_t n = read(fd, buf, sizeof buf);
    if (n > 0 && memmem(buf, (size_t)n, "\r\n\r\n", 4)) {
        if (write(fd, RESPONSE, sizeof RESPONSE - 1) < 0)
            n = 0;
    }
    if (n == 0 || (n < 0 && errno != EAGAIN)) {
        event_free(ev);
        free(arg);
        close(fd);
    }
}

static void stub_accept(evutil_socket_t lfd, short what, void *arg)
{
    int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0)
        return;
    struct event **slot = malloc(sizeof *slot);
    CHECK(slot);
    *slot = event_new(w.base, fd, EV_READ | EV_PERSIST, stub_read, slot);
    CHECK(*slot && event_add(*slot, NULL) == 0);
}

static void setup(void)
{
    wg_log_set_level(WG_LOG_ERROR);
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t alen = sizeof a;
    CHECK(lfd >= 0 && bind(lfd, (struct sockaddr *)&a, sizeof a) == 0 && listen(lfd, 64) == 0 &&
          getsockname(lfd, (struct sockaddr *)&a, &alen) == 0);

    char yaml[1024];
    snprintf(yaml, sizeof yaml,
             "log: { access_log: \"off\" }\n"
             "service_defaults: { health_check: { type: none }, retries: 1 }\n"
             "services: { users: {} }\n"
             "listeners:\n"
             "  - { name: h2, listen: 127.0.0.1:1, mode: http,\n"
             "      http: { h2c: true, max_header_size: 4k, client_header_timeout: 1s },\n"
             "      routes: [ { path_prefix: /, service: users } ] }\n");
    struct wg_errors errs = { 0 };
    struct wg_config *cfg = wg_config_load_buffer("fuzz.yaml", yaml, strlen(yaml), false, &errs);
    CHECK(cfg);
    struct wg_reclaim *rc = wg_reclaim_new();
    w.pool = wg_pool_new(rc, &wg_balance_policy, NULL, NULL);
    wg_pool_set_config(w.pool, wg_config_ref_new(cfg));
    struct wg_record r = { 0 };
    memcpy(&r.addr, &a, sizeof a);
    r.addrlen = sizeof a;
    r.service = strdup("users");
    r.id = strdup("stub");
    r.weight = 100;
    struct wg_record_set set = { 0 };
    CHECK(wg_record_set_push(&set, &r));
    CHECK(wg_pool_replace_all(w.pool, &set) == 0);
    wg_record_set_clear(&set);

    w.base = event_base_new();
    w.stats = wg_stats_block_new();
    w.conns.next = w.conns.prev = &w.conns;
    wg_rng_seed(&w.rng, 1);
    listener.name = "h2";
    listener.addr = cfg->listeners[0].listen;
    listener.mode = WG_MODE_HTTP;
    listener.h2 = listener_h2;
    listener.grpc = listener_grpc;
    accept_ev = event_new(w.base, lfd, EV_READ | EV_PERSIST, stub_accept, NULL);
    CHECK(accept_ev && event_add(accept_ev, NULL) == 0);
}

/* Run the loop until nothing is pending (bounded). */
static void settle(int rounds)
{
    for (int k = 0; k < rounds; k++)
        event_base_loop(w.base, EVLOOP_NONBLOCK);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;
    if (!ready) {
        setup();
        ready = 1;
    }
    int sv[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) == 0);
    int big = 1 << 20;
    setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
    static const char preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    size_t n = sizeof preface - 1 + size;
    char *in = malloc(n ? n : 1);
    CHECK(in);
    memcpy(in, preface, sizeof preface - 1);
    memcpy(in + sizeof preface - 1, data, size);
    struct wg_http2_client cl = { .fd = sv[0], .client_port = 1 };
    strcpy(cl.client_ip, "127.0.0.1");
    if (wg_http2_accept(&w, &listener, &cl, in, n) != 0)
        close(sv[0]);
    free(in);
    char sink[65536];
    for (int k = 0; k < 50 && w.n_conns; k++) {
        settle(4);
        while (read(sv[1], sink, sizeof sink) > 0)
            ;
        usleep(100);
    }
    close(sv[1]);                       /* the client leaves: the connection must go */
    for (int k = 0; k < 200 && w.n_conns; k++) {
        settle(2);
        usleep(100);
    }
    CHECK(w.n_conns == 0);              /* EOF ends the connection, streams or not */
    return 0;
}
