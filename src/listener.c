/* listener — see include/waygate/listener.h */
#include "waygate/listener.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "waygate/errors.h"
#include "waygate/grpc.h"
#include "waygate/stats.h"

#define BACKLOG 4096

static int socket_for(const struct wg_addr *a, bool reuseport)
{
    int fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0)
        goto fail;
    if (a->ss.ss_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    if (bind(fd, (const struct sockaddr *)&a->ss, a->len) < 0)
        goto fail;
    return fd;
fail: {
    int saved = errno;
    close(fd);
    errno = saved;
    return -1;
}
}

struct wg_listener *wg_listener_open(const struct wg_listener_config *cfg, uint64_t max_conns,
                                     unsigned n_workers, wg_accept_fn on_accept,
                                     struct wg_errors *errs)
{
    struct wg_listener *l = calloc(1, sizeof *l);
    if (!l || !(l->fds = calloc(n_workers, sizeof *l->fds)) || !(l->name = strdup(cfg->name)) ||
        !(l->h2 = calloc(WG_H2__COUNT, sizeof *l->h2)) ||
        !(l->grpc = calloc(WG_GRPC_CODES, sizeof *l->grpc))) {
        wg_errors_add(errs, "listener %s: out of memory", cfg->name);
        goto fail;
    }
    l->addr = cfg->listen;
    l->mode = cfg->mode;
    l->max_connections = max_conns;
    l->on_accept = on_accept;
    /* Someone else on this address? A plain bind tells without sharing. */
    int probe = socket_for(&l->addr, false);
    if (probe < 0) {
        wg_errors_add(errs, "listener %s: cannot bind %s: %s", cfg->name, l->addr.text,
                      strerror(errno));
        goto fail;
    }
    close(probe);
    for (unsigned k = 0; k < n_workers; k++) {
        int fd = socket_for(&l->addr, true);
        if (fd < 0 || listen(fd, BACKLOG) < 0) {
            wg_errors_add(errs, "listener %s: cannot listen on %s: %s", cfg->name, l->addr.text,
                          strerror(errno));
            if (fd >= 0)
                close(fd);
            goto fail;
        }
        l->fds[l->n_fds++] = fd;
    }
    return l;
fail:
    wg_listener_close(l);
    return NULL;
}

void wg_listener_close_sockets(struct wg_listener *l)
{
    for (unsigned k = 0; k < l->n_fds; k++)
        if (l->fds[k] >= 0)
            close(l->fds[k]);
    l->n_fds = 0;
}

void wg_listener_close(struct wg_listener *l)
{
    if (!l)
        return;
    wg_listener_close_sockets(l);
    free(l->fds);
    free(l->h2);
    free(l->grpc);
    free(l->name);
    free(l);
}

const struct wg_listener_config *wg_listener_config_in(const struct wg_config *cfg,
                                                       const struct wg_listener *l)
{
    for (size_t k = 0; k < cfg->n_listeners; k++)
        if (strcmp(cfg->listeners[k].listen.text, l->addr.text) == 0)
            return &cfg->listeners[k];
    return NULL;
}

void wg_listener_conn_closed(void) { atomic_fetch_sub(&wg_stats_open_connections, 1); }
