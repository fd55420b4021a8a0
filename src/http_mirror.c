/* http_mirror — see include/waygate/http_mirror.h */
#include "waygate/http_mirror.h"

#include <errno.h>
#include <event2/event.h>
#include <event2/event_struct.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "waygate/balance.h"
#include "waygate/log.h"
#include "waygate/pool.h"
#include "waygate/stats.h"
#include "waygate/worker.h"

struct mirror {
    struct mirror *prev, *next;
    struct mirror_local *loc;
    int fd;
    struct event ev, timer;
    struct wg_instance *inst;           /* one reference */
    size_t len, sent;
    char buf[];                         /* the head */
};

struct mirror_local {
    struct mirror *first;
    unsigned in_flight;
};

static pthread_key_t mirror_key;
static pthread_once_t mirror_once = PTHREAD_ONCE_INIT;
static _Thread_local struct mirror_local *mirror_tls;

static void mirror_end(struct mirror *m)
{
    struct mirror_local *loc = m->loc;

    event_del(&m->ev);
    event_del(&m->timer);
    close(m->fd);
    wg_instance_unref(m->inst);
    if (m->prev)
        m->prev->next = m->next;
    else
        loc->first = m->next;
    if (m->next)
        m->next->prev = m->prev;
    loc->in_flight--;
    free(m);
}

static void local_free(void *arg)
{
    struct mirror_local *loc = arg;

    while (loc->first)
        mirror_end(loc->first);
    free(loc);
}

static void key_init(void)
{
    if (pthread_key_create(&mirror_key, local_free) != 0)
        wg_error("msg=\"mirror: cannot create the worker key\"");
}

static struct mirror_local *local_get(void)
{
    struct mirror_local *loc;

    if (mirror_tls)
        return mirror_tls;
    pthread_once(&mirror_once, key_init);
    if (!(loc = calloc(1, sizeof *loc)))
        return NULL;
    if (pthread_setspecific(mirror_key, loc) != 0) {
        free(loc);
        return NULL;
    }
    return mirror_tls = loc;
}

unsigned wg_mirror_in_flight(void) { return mirror_tls ? mirror_tls->in_flight : 0; }

static void on_timer(evutil_socket_t fd, short what, void *arg) { mirror_end(arg); }

static void on_event(evutil_socket_t fd, short what, void *arg)
{
    struct mirror *m = arg;
    char sink[4096];

    if (what & EV_WRITE) {
        while (m->sent < m->len) {
            ssize_t n = send(m->fd, m->buf + m->sent, m->len - m->sent, MSG_NOSIGNAL);
            if (n < 0 && (errno == EAGAIN || errno == EINTR))
                break;
            if (n <= 0) {
                mirror_end(m);
                return;
            }
            m->sent += (size_t)n;
        }
    }
    if (what & (EV_READ | EV_CLOSED)) {
        for (;;) {                      /* the response is discarded */
            ssize_t n = recv(m->fd, sink, sizeof sink, 0);
            if (n > 0)
                continue;
            if (n < 0 && (errno == EAGAIN || errno == EINTR))
                break;
            mirror_end(m);              /* EOF (Connection: close) or an error */
            return;
        }
    }
}

/* The head with `Connection: close` before its final CRLF. */
static struct mirror *mirror_new(const char *head, size_t len)
{
    static const char close_field[] = "Connection: close\r\n";
    struct mirror *m;

    if (len < 4 || memcmp(head + len - 4, "\r\n\r\n", 4) != 0)
        return NULL;
    if (!(m = calloc(1, sizeof *m + len + sizeof close_field)))
        return NULL;
    memcpy(m->buf, head, len - 2);
    memcpy(m->buf + len - 2, close_field, sizeof close_field - 1);
    memcpy(m->buf + len - 2 + sizeof close_field - 1, "\r\n", 2);
    m->len = len + sizeof close_field - 1;
    return m;
}

bool wg_mirror_send(struct wg_worker *w, const struct wg_policy_mirror *pm, const char *head,
                    size_t len)
{
    struct mirror_local *loc = local_get();
    struct wg_snapshot *snap = wg_pool_current(w->pool);
    const struct wg_pool_service *svc = snap ? wg_snapshot_service(snap, pm->service) : NULL;
    const struct wg_member *mem = NULL;
    struct wg_pick pick;
    struct mirror *m = NULL;
    int one = 1;

    if (!loc || !svc || svc->cfg->tls.enabled || loc->in_flight >= pm->max_in_flight)
        goto skip;
    wg_pick_init(&pick, svc, &w->rng, NULL);
    if (!(mem = wg_pick_next(&pick)) || !(m = mirror_new(head, len)))
        goto skip;
    struct sockaddr_storage ss;
    socklen_t sslen = wg_instance_sockaddr(mem->inst, &ss);
    m->fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (m->fd < 0)
        goto skip;
    setsockopt(m->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(m->fd, (const struct sockaddr *)&ss, sslen) < 0 &&
        errno != EINPROGRESS) {
        close(m->fd);
        goto skip;
    }
    struct timeval tv = { (time_t)(pm->timeout_ms / 1000), (suseconds_t)(pm->timeout_ms % 1000) * 1000 };
    if (event_assign(&m->ev, w->base, m->fd, EV_READ | EV_WRITE | EV_CLOSED | EV_ET | EV_PERSIST,
                     on_event, m) < 0 ||
        evtimer_assign(&m->timer, w->base, on_timer, m) < 0 || event_add(&m->ev, NULL) < 0 ||
        evtimer_add(&m->timer, &tv) < 0) {
        event_del(&m->ev);
        close(m->fd);
        goto skip;
    }
    wg_instance_ref(mem->inst);
    m->inst = mem->inst;
    m->loc = loc;
    m->next = loc->first;
    if (loc->first)
        loc->first->prev = m;
    loc->first = m;
    loc->in_flight++;
    wg_stats_add(w->stats, WG_C_MIRROR_SENT, 1);
    return true;
skip:
    free(m);
    wg_stats_add(w->stats, WG_C_MIRROR_SKIPPED, 1);
    return false;
}
