/* control — see include/waygate/control.h */
#include "waygate/consumers.h"
#include "waygate/jwks.h"
#include "waygate/control.h"

#include <errno.h>
#include <event2/event.h>
#include <event2/thread.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "waygate/admin.h"
#include "waygate/fleet.h"
#include "waygate/health.h"
#include "waygate/listener.h"
#include "waygate/log.h"
#include "waygate/pool.h"
#include "waygate/reclaim.h"
#include "waygate/registry.h"
#include "waygate/stats.h"
#include "waygate/http_proxy.h"
#include "waygate/tcp_proxy.h"
#include "waygate/tls.h"
#include "waygate/worker.h"

#define TICK_MS 100

struct control {
    struct event_base *base;
    struct wg_config_ref *config;
    struct wg_reclaim *rc;
    struct wg_pool *pool;
    struct wg_registry *registry;
    struct wg_fleet *fleet;             /* NULL without fleet: */
    struct wg_health_shared *shared;    /* NULL without health_check.shared */
    struct wg_prober *prober;
    struct wg_admin *admin;
    struct wg_worker **workers;
    unsigned n_workers;
    unsigned n_running;
    struct wg_listener **listeners;     /* serving */
    size_t n_listeners;
    struct wg_listener **retired;       /* removed by a reload; freed at exit */
    size_t n_retired;
    struct event *signals[4];
    struct event *tick;
    uint64_t started_ms;
    uint64_t policy_files_stamp;        /* of c->config's policy files, last seen */
    uint64_t policy_files_checked_ms;
    uint64_t tickets_rotated_ms;
    struct event *settle_ev;            /* polls readiness until the first probes are in */
    uint64_t stop_deadline_ms;
    bool ready;
    bool stopping;
    bool forced;
};

/* sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET (a path,
 * or an abstract socket when it starts with '@'). */
static void notify_systemd(const char *msg)
{
    const char *path = getenv("NOTIFY_SOCKET");
    struct sockaddr_un sun = { .sun_family = AF_UNIX };
    if (!path || !*path || strlen(path) >= sizeof sun.sun_path)
        return;
    memcpy(sun.sun_path, path, strlen(path));
    if (sun.sun_path[0] == '@')
        sun.sun_path[0] = '\0';
    socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(path));
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return;
    if (sendto(fd, msg, strlen(msg), MSG_NOSIGNAL, (struct sockaddr *)&sun, len) < 0)
        wg_warn("msg=\"sd_notify failed\" socket=%s error=\"%s\"", path, strerror(errno));
    close(fd);
}

static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
            wg_warn("msg=\"cannot raise RLIMIT_NOFILE\" error=\"%s\"", strerror(errno));
    }
}

static void wake_workers(void *arg)
{
    struct control *c = arg;
    for (unsigned k = 0; k < c->n_workers; k++)
        wg_worker_wake(c->workers[k]);
}

static void become_ready(struct control *c, const char *why)
{
    if (c->ready || c->stopping)
        return;
    c->ready = true;
    for (unsigned k = 0; k < c->n_workers; k++)
        wg_worker_set_accepting(c->workers[k], true);
    wg_admin_set_ready(c->admin, true);
    wg_info("msg=\"ready, accepting connections\" reason=\"%s\" workers=%u listeners=%zu", why,
            c->n_workers, c->n_listeners);
    notify_systemd("READY=1");
}

/* A service is settled when it has a healthy instance, or none of its
 * instances is still waiting for its first probe. Readiness waits for that
 * (bounded by startup_timeout) so that a restarted waygate does not answer
 * 503 for the few milliseconds its first probes take. */
static bool snapshot_settled(const struct wg_snapshot *s)
{
    for (size_t k = 0; k < s->n_services; k++) {
        const struct wg_pool_service *svc = s->services[k];
        if (atomic_load(&svc->state->healthy) > 0)
            continue;
        for (uint32_t m = 0; m < svc->n_members; m++)
            if (wg_instance_health(svc->members[m].inst) == WG_HEALTH_UNKNOWN)
                return false;
    }
    return true;
}

static void check_settled(struct control *c)
{
    struct wg_snapshot *s = wg_pool_published(c->pool);
    if (c->ready || !s)
        return;
    if (snapshot_settled(s)) {
        event_del(c->settle_ev);
        become_ready(c, "first snapshot, first probes done");
    } else if (!event_pending(c->settle_ev, EV_TIMEOUT, NULL)) {
        struct timeval tv = { 0, 5000 };
        event_add(c->settle_ev, &tv);
    }
}

static void settle_cb(evutil_socket_t fd, short what, void *arg) { check_settled(arg); }

static void on_publish(void *arg, struct wg_snapshot *s)
{
    struct control *c = arg;
    wg_debug("msg=\"snapshot published\" generation=%llu services=%zu",
             (unsigned long long)s->generation, s->n_services);
    check_settled(c);
}

/* ---- stop ---- */

static int retire_removed(struct control *c, const struct wg_config *cfg);

static void retire_all(struct control *c)
{
    struct wg_config none = { 0 };
    if (retire_removed(c, &none) < 0)
        wg_warn("msg=\"out of memory closing listeners, they close at exit\"");
}

static void begin_stop(struct control *c, const char *sig)
{
    if (c->stopping)
        return;
    c->stopping = true;
    wg_admin_set_ready(c->admin, false);
    uint64_t timeout = c->config->cfg->shutdown_timeout_ms;
    c->stop_deadline_ms = wg_now_ms() + timeout;
    wg_info("msg=\"stopping: draining connections\" signal=%s shutdown_timeout_ms=%llu", sig,
            (unsigned long long)timeout);
    notify_systemd("STOPPING=1");
    /* Close the listening sockets once every worker let go of them, so new
     * connections go to a sibling process (SO_REUSEPORT) or are refused.
     * The removals are posted BEFORE the drain: an idle worker exits as soon
     * as it sees `draining`, and reads its mailbox one last time then. */
    retire_all(c);
    for (unsigned k = 0; k < c->n_workers; k++)
        wg_worker_drain(c->workers[k]);
    wg_fleet_leave(c->fleet);           /* the others drop us now, not after the TTL */
}

static void check_stop(struct control *c)
{
    for (unsigned k = 0; k < c->n_workers; k++) {
        struct wg_worker *w = c->workers[k];
        if (w->started && pthread_tryjoin_np(w->thread, NULL) == 0) {
            w->started = false;
            c->n_running--;
        }
    }
    if (c->n_running == 0) {
        if (wg_fleet_left(c->fleet))    /* the lease revoke: 1 s at most */
            event_base_loopbreak(c->base);
        return;
    }
    if (!c->forced && wg_now_ms() >= c->stop_deadline_ms) {
        c->forced = true;
        wg_warn("msg=\"shutdown_timeout reached, closing remaining connections\" open=%llu",
                (unsigned long long)atomic_load(&wg_stats_open_connections));
        for (unsigned k = 0; k < c->n_workers; k++)
            wg_worker_stop(c->workers[k]);
    }
}

/* ---- reload ---- */

static struct wg_listener *listener_at(struct control *c, const struct wg_addr *a)
{
    for (size_t k = 0; k < c->n_listeners; k++)
        if (strcmp(c->listeners[k]->addr.text, a->text) == 0)
            return c->listeners[k];
    return NULL;
}

static wg_accept_fn handler_for(enum wg_listener_mode mode);

/* Bind the listeners `cfg` adds. All or nothing: on any error the new
 * sockets are closed and the reload is refused. */
static int open_added(struct control *c, const struct wg_config *cfg, struct wg_listener ***out,
                      size_t *n_out)
{
    struct wg_errors errs = { 0 };
    struct wg_listener **v = calloc(cfg->n_listeners ? cfg->n_listeners : 1, sizeof *v);
    size_t n = 0;
    for (size_t k = 0; v && k < cfg->n_listeners; k++) {
        const struct wg_listener_config *lc = &cfg->listeners[k];
        struct wg_listener *old = listener_at(c, &lc->listen);
        if (old) {
            if (old->mode != lc->mode)
                wg_warn("msg=\"listener mode change needs a restart\" listen=%s", lc->listen.text);
            continue;
        }
        wg_accept_fn fn = handler_for(lc->mode);
        struct wg_listener *l = fn ? wg_listener_open(lc, cfg->max_connections, c->n_workers, fn, &errs)
                                   : NULL;
        if (!fn)
            wg_errors_add(&errs, "listener %s: mode not available in this build", lc->name);
        if (l)
            v[n++] = l;
    }
    for (size_t k = 0; k < errs.n; k++)
        wg_error("msg=\"reload refused\" error=\"%s\"", errs.lines[k]);
    bool ok = v && errs.n == 0;
    wg_errors_free(&errs);
    if (!ok) {
        for (size_t k = 0; k < n; k++)
            wg_listener_close(v ? v[k] : NULL);
        free(v);
        return -1;
    }
    *out = v;
    *n_out = n;
    return 0;
}

/* Removed listeners stop accepting on every worker; their sockets close once
 * all workers let go (tick), their connections finish on their own. */
static int retire_removed(struct control *c, const struct wg_config *cfg)
{
    size_t keep = 0;
    struct wg_listener **r = realloc(c->retired, (c->n_retired + c->n_listeners + 1) * sizeof *r);
    if (!r)
        return -1;
    c->retired = r;
    for (size_t k = 0; k < c->n_listeners; k++) {
        struct wg_listener *l = c->listeners[k];
        if (wg_listener_config_in(cfg, l)) {
            c->listeners[keep++] = l;
            continue;
        }
        if (!c->stopping)
            wg_info("msg=\"listener removed, draining\" listener=%s listen=%s", l->name,
                    l->addr.text);
        for (unsigned w = 0; w < c->n_workers; w++)
            if (wg_worker_post_remove(c->workers[w], l) < 0)
                atomic_fetch_add(&l->detached, 1);
        c->retired[c->n_retired++] = l;
    }
    c->n_listeners = keep;
    return 0;
}

static int add_opened(struct control *c, struct wg_listener **added, size_t n)
{
    struct wg_listener **v = realloc(c->listeners, (c->n_listeners + n + 1) * sizeof *v);
    if (!v)
        return -1;
    c->listeners = v;
    for (size_t k = 0; k < n; k++) {
        struct wg_listener *l = added[k];
        c->listeners[c->n_listeners++] = l;
        for (unsigned w = 0; w < c->n_workers; w++) {
            struct wg_acceptor *a = wg_acceptor_new(l, l->fds[w]);
            if (!a || wg_worker_post_acceptor(c->workers[w], a) < 0)
                wg_acceptor_free(a);
        }
        wg_info("msg=\"listener added\" listener=%s listen=%s", l->name, l->addr.text);
    }
    return 0;
}

static void close_detached(struct control *c)
{
    for (size_t k = 0; k < c->n_retired; k++) {
        struct wg_listener *l = c->retired[k];
        if (l->n_fds && atomic_load(&l->detached) >= c->n_workers)
            wg_listener_close_sockets(l);
    }
}

/* A config with what is built from it once: its TLS contexts (certificates
 * are read here, on the control thread, never on a worker). Takes cfg. */
static struct wg_config_ref *config_ref_build(struct wg_config *cfg, struct wg_errors *errs)
{
    struct wg_config_ref *ref = wg_config_ref_new(cfg);
    if (!ref) {
        wg_config_free(cfg);
        wg_errors_add(errs, "out of memory");
        return NULL;
    }
    if (!(ref->ext = wg_tls_set_new(cfg, errs))) {
        wg_config_ref_put(ref);
        return NULL;
    }
    ref->ext_free = wg_tls_set_free;
    return ref;
}

static bool str_eq(const char *a, const char *b) { return strcmp(a ? a : "", b ? b : "") == 0; }

static bool strv_eq(char *const *a, size_t na, char *const *b, size_t nb)
{
    if (na != nb)
        return false;
    for (size_t k = 0; k < na; k++)
        if (!str_eq(a[k], b[k]))
            return false;
    return true;
}

/* Anything that changes where or how instances are read. */
static bool registry_changed(const __typeof__(((struct wg_config *)0)->registry) *a,
                             const __typeof__(((struct wg_config *)0)->registry) *b)
{
    const __typeof__(a->etcd) *x = &a->etcd, *y = &b->etcd;
    const __typeof__(a->zookeeper) *z = &a->zookeeper, *w = &b->zookeeper;
    if (!strv_eq(z->servers, z->n_servers, w->servers, w->n_servers) || !str_eq(z->root, w->root) ||
        z->layout != w->layout || z->session_timeout_ms != w->session_timeout_ms ||
        !str_eq(z->auth.scheme, w->auth.scheme) ||
        !str_eq(z->auth.credentials, w->auth.credentials) || !str_eq(z->chroot, w->chroot) ||
        !strv_eq(z->dubbo_interfaces, z->n_dubbo, w->dubbo_interfaces, w->n_dubbo) ||
        !strv_eq(z->dubbo_services, z->n_dubbo, w->dubbo_services, w->n_dubbo))
        return true;
    return a->kind != b->kind || !str_eq(a->file, b->file) || !str_eq(a->cache, b->cache) ||
           !strv_eq(x->endpoints, x->n_endpoints, y->endpoints, y->n_endpoints) ||
           !strv_eq(x->prefixes, x->n_prefixes, y->prefixes, y->n_prefixes) ||
           !str_eq(x->username, y->username) || !str_eq(x->password, y->password) ||
           !str_eq(x->tls.ca, y->tls.ca) || !str_eq(x->tls.cert, y->tls.cert) ||
           !str_eq(x->tls.key, y->tls.key) || !str_eq(x->tls.server_name, y->tls.server_name) ||
           x->watch_timeout_ms != y->watch_timeout_ms ||
           x->backoff_initial_ms != y->backoff_initial_ms || x->backoff_max_ms != y->backoff_max_ms;
}

/* A changed registry section: a new registry replaces the old one. The
 * pools stay as they are until the new source's first complete read
 * replaces them (as after a restart, without the restart). */
static void switch_registry(struct control *c, const struct wg_config *cfg)
{
    struct wg_registry *r = wg_registry_new(cfg, c->base, c->pool);
    if (!r) {
        wg_error("msg=\"new registry settings could not be applied, keeping the old source\"");
        return;
    }
    wg_registry_retire(c->registry);        /* in a callback of c->base */
    c->registry = r;
    wg_admin_set_registry(c->admin, r);
    if (wg_registry_start(r) < 0)
        wg_error("msg=\"the new registry did not start\"");
    wg_info("msg=\"registry settings changed, reconnected\" source=%s", r->status.source);
}

static void reload(struct control *c);

/* The registry's api_key consumers changed (consumers.h): rebuild. */
static void consumers_changed(void *arg)
{
    struct control *c = arg;
    if (!c->stopping) {
        wg_info("msg=\"api_key consumers changed, reloading\"");
        reload(c);
    }
}

static void reload(struct control *c)
{
    const char *path = c->config->cfg->path;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    char msg[96];
    snprintf(msg, sizeof msg, "RELOADING=1\nMONOTONIC_USEC=%llu",
             (unsigned long long)now.tv_sec * 1000000ULL + (unsigned long long)now.tv_nsec / 1000);
    notify_systemd(msg);
    struct wg_errors errs = { 0 };
    struct wg_config *cfg = wg_config_load(path, &errs);
    struct wg_config_ref *ref = cfg ? config_ref_build(cfg, &errs) : NULL;
    if (!ref) {
        for (size_t k = 0; k < errs.n; k++)
            wg_error("msg=\"reload refused\" error=\"%s\"", errs.lines[k]);
        wg_errors_free(&errs);
        notify_systemd("READY=1");
        return;
    }
    wg_errors_free(&errs);
    const struct wg_config *old = c->config->cfg;
    if (cfg->workers != old->workers)
        wg_warn("msg=\"workers changed: needs a restart\" old=%u new=%u", old->workers, cfg->workers);
    bool new_registry = registry_changed(&old->registry, &cfg->registry);
    struct wg_listener **added = NULL;
    size_t n_added = 0;
    if (open_added(c, cfg, &added, &n_added) < 0) {
        wg_config_ref_put(ref);
        wg_error("msg=\"reload refused, old configuration keeps serving\" file=%s", path);
        notify_systemd("READY=1");
        return;
    }
    wg_log_set_level(cfg->log.level);
    if (wg_access_log_open(cfg) < 0)
        wg_error("msg=\"reload: the access log keeps its previous destination and format\"");
    /* New settings first: a new listener finds itself in the snapshot. */
    wg_pool_set_config(c->pool, ref);
    wg_config_ref_put(c->config);
    c->config = ref;
    if (add_opened(c, added, n_added) < 0 || retire_removed(c, cfg) < 0)
        wg_error("msg=\"reload: out of memory changing listeners\"");
    free(added);
    if (new_registry)
        switch_registry(c, cfg);
    wg_fleet_set_config(c->fleet, cfg);
    wg_consumers_sync(c->base, cfg, consumers_changed, c);
    struct wg_snapshot *snap = wg_pool_published(c->pool);
    c->policy_files_stamp = wg_config_policy_files_stamp(cfg);
    wg_info("msg=\"configuration reloaded\" file=%s generation=%llu", path,
            (unsigned long long)(snap ? snap->generation : 0));
    notify_systemd("READY=1");
}

/* ---- events ---- */

static void signal_cb(evutil_socket_t sig, short what, void *arg)
{
    struct control *c = arg;
    switch (sig) {
    case SIGTERM:
        begin_stop(c, "SIGTERM");
        break;
    case SIGINT:
        begin_stop(c, "SIGINT");
        break;
    case SIGHUP:
        if (c->stopping)                /* its listeners would bind again */
            wg_warn("msg=\"SIGHUP ignored: stopping, no reload\"");
        else
            reload(c);
        break;
    case SIGUSR1:
        wg_access_log_reopen();         /* leveled logs go to stderr: nothing to reopen */
        break;
    }
}

#define TICKET_ROTATION_MS (3600 * 1000)
#define POLICY_FILES_CHECK_MS 1000

/* A JWKS document changed (jwks.h): the jwt policies are built anew. */
static void jwks_changed(void *arg) { reload(arg); }

/* A file a policy read (htpasswd, keys) changed: reload as SIGHUP does. A
 * refused reload is not retried until the files change again. */
static void check_policy_files(struct control *c)
{
    uint64_t now = wg_now_ms(), stamp;

    if (c->stopping || !c->config->cfg->n_policy_files ||
        now - c->policy_files_checked_ms < POLICY_FILES_CHECK_MS)
        return;
    c->policy_files_checked_ms = now;
    stamp = wg_config_policy_files_stamp(c->config->cfg);
    if (stamp == c->policy_files_stamp)
        return;
    c->policy_files_stamp = stamp;
    wg_info("msg=\"a policy file changed, reloading\"");
    reload(c);
    c->policy_files_stamp = wg_config_policy_files_stamp(c->config->cfg);
}

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
    struct control *c = arg;
    if (wg_now_ms() - c->tickets_rotated_ms >= TICKET_ROTATION_MS) {
        wg_tls_rotate_ticket_keys();
        c->tickets_rotated_ms = wg_now_ms();
    }
    wg_pool_reclaim(c->pool);
    check_policy_files(c);
    if (!c->stopping)
        wg_jwks_tick(c->base, c->config->cfg, jwks_changed, c);
    if (!c->ready && wg_now_ms() - c->started_ms >= c->config->cfg->startup_timeout_ms)
        become_ready(c, "startup_timeout");
    close_detached(c);
    if (c->stopping)
        check_stop(c);
}

/* ---- start-up ---- */

static unsigned worker_count(const struct wg_config *cfg)
{
    if (cfg->workers)
        return cfg->workers;
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (unsigned)n : 1;
}

static wg_accept_fn handler_for(enum wg_listener_mode mode)
{
    return mode == WG_MODE_TCP ? wg_tcp_proxy_accept
         : mode == WG_MODE_HTTP ? wg_http_proxy_accept : NULL;
}

static int open_listeners(struct control *c)
{
    const struct wg_config *cfg = c->config->cfg;
    struct wg_errors errs = { 0 };
    c->listeners = calloc(cfg->n_listeners ? cfg->n_listeners : 1, sizeof *c->listeners);
    if (!c->listeners)
        return -1;
    for (size_t k = 0; k < cfg->n_listeners; k++) {
        const struct wg_listener_config *lc = &cfg->listeners[k];
        wg_accept_fn fn = handler_for(lc->mode);
        if (!fn) {
            wg_errors_add(&errs, "listener %s: mode http is not available in this build", lc->name);
            continue;
        }
        struct wg_listener *l = wg_listener_open(lc, cfg->max_connections, c->n_workers, fn, &errs);
        if (l)
            c->listeners[c->n_listeners++] = l;
    }
    for (size_t k = 0; k < errs.n; k++)
        wg_error("msg=\"%s\"", errs.lines[k]);
    int rc = errs.n ? -1 : 0;
    wg_errors_free(&errs);
    return rc;
}

/* Before dropping privileges, like the listeners; failing to bind is fatal. */
static int open_admin(struct control *c)
{
    struct wg_errors errs = { 0 };
    c->admin = wg_admin_new(c->base, c->config->cfg, c->pool, &errs);
    for (size_t k = 0; k < errs.n; k++)
        wg_error("msg=\"cannot start the admin API\" error=\"%s\"", errs.lines[k]);
    wg_errors_free(&errs);
    return c->admin ? 0 : -1;
}

static int start_workers(struct control *c)
{
    c->workers = calloc(c->n_workers, sizeof *c->workers);
    if (!c->workers)
        return -1;
    for (unsigned k = 0; k < c->n_workers; k++) {
        struct wg_worker *w = wg_worker_new(k, c->pool, c->rc);
        if (!w)
            return -1;
        c->workers[k] = w;
        for (size_t i = 0; i < c->n_listeners; i++) {
            struct wg_acceptor *a = wg_acceptor_new(c->listeners[i], c->listeners[i]->fds[k]);
            if (!a || wg_worker_add_acceptor(w, a) < 0) {
                wg_acceptor_free(a);
                return -1;
            }
        }
    }
    for (unsigned k = 0; k < c->n_workers; k++) {
        if (wg_worker_start(c->workers[k]) < 0)
            return -1;
        c->n_running++;
    }
    return 0;
}

static int drop_privileges(const char *user)
{
    if (!user || !*user)
        return 0;
    struct passwd *pw = getpwnam(user);
    if (!pw) {
        wg_error("msg=\"unknown user\" user=%s", user);
        return -1;
    }
    if (setgroups(0, NULL) < 0 || setgid(pw->pw_gid) < 0 || setuid(pw->pw_uid) < 0) {
        wg_error("msg=\"cannot drop privileges\" user=%s error=\"%s\"", user, strerror(errno));
        return -1;
    }
    wg_info("msg=\"privileges dropped\" user=%s", user);
    return 0;
}

static const int handled_signals[4] = { SIGTERM, SIGINT, SIGHUP, SIGUSR1 };

/* Blocked from the start until their handlers exist: the listeners are
 * bound (connectable) before that, and a SIGTERM or SIGHUP arriving then
 * must wait for its handler, not kill the process by its default action. */
static void mask_handled_signals(int how)
{
    sigset_t set;
    sigemptyset(&set);
    for (int k = 0; k < 4; k++)
        sigaddset(&set, handled_signals[k]);
    pthread_sigmask(how, &set, NULL);
}

static int setup_events(struct control *c)
{
    for (int k = 0; k < 4; k++) {
        c->signals[k] = evsignal_new(c->base, handled_signals[k], signal_cb, c);
        if (!c->signals[k] || event_add(c->signals[k], NULL) < 0)
            return -1;
    }
    mask_handled_signals(SIG_UNBLOCK);
    c->settle_ev = evtimer_new(c->base, settle_cb, c);
    if (!c->settle_ev)
        return -1;
    c->tick = event_new(c->base, -1, EV_PERSIST, tick_cb, c);
    struct timeval tv = { 0, TICK_MS * 1000 };
    return c->tick && event_add(c->tick, &tv) == 0 ? 0 : -1;
}

/* The control thread's own events go first: the etcd registry's free (and
 * the pass below) runs the loop once more, and a tick or signal callback
 * then would read the workers freed here (the 100 ms tick was due whenever
 * the teardown before the registry took longer than that: a use after free
 * that crashed one shutdown in a few hundred). */
static void free_own_events(struct control *c)
{
    mask_handled_signals(SIG_BLOCK);        /* a second SIGTERM now waits, not kills */
    for (int k = 0; k < 4; k++)
        if (c->signals[k])
            event_free(c->signals[k]);
    memset(c->signals, 0, sizeof c->signals);
    if (c->tick)
        event_free(c->tick);
    if (c->settle_ev)
        event_free(c->settle_ev);
    c->tick = c->settle_ev = NULL;
}

static void teardown(struct control *c)
{
    free_own_events(c);
    wg_admin_free(c->admin);
    for (unsigned k = 0; c->workers && k < c->n_workers; k++) {
        if (!c->workers[k])
            continue;
        wg_worker_stop(c->workers[k]);
        wg_worker_join(c->workers[k]);
    }
    for (unsigned k = 0; c->workers && k < c->n_workers; k++)
        wg_worker_free(c->workers[k]);
    free(c->workers);
    c->workers = NULL;                      /* wake_workers (a publish) sees none */
    c->n_workers = 0;
    wg_access_log_close();                  /* the workers' lines are written out */
    wg_registry_free(c->registry);
    wg_prober_free(c->prober);              /* nothing publishes any more */
    wg_health_shared_free(c->shared);       /* after the prober: it queues transitions */
    wg_fleet_free(c->fleet);
    wg_consumers_shutdown();                /* its etcd calls, like the fleet's */
    /* Bufferevents freed above (shared health's and the fleet's etcd calls)
     * may still have a deferred callback queued, which holds a reference:
     * one non-blocking pass runs those before the base is freed (the
     * registry does the same for its own). Nothing of ours is left on it. */
    if (c->base)
        event_base_loop(c->base, EVLOOP_NONBLOCK);
    for (size_t k = 0; k < c->n_listeners; k++)
        wg_listener_close(c->listeners[k]);
    free(c->listeners);
    for (size_t k = 0; k < c->n_retired; k++)
        wg_listener_close(c->retired[k]);
    free(c->retired);
    wg_pool_free(c->pool);
    wg_reclaim_free(c->rc);
    wg_config_ref_put(c->config);
    wg_jwks_shutdown();
    if (c->base)
        event_base_free(c->base);
    wg_stats_reset_all();
    libevent_global_shutdown();
}

int wg_control_run(struct wg_config *cfg)
{
    struct control ctl = { 0 }, *c = &ctl;
    int status = 1;
    signal(SIGPIPE, SIG_IGN);
    mask_handled_signals(SIG_BLOCK);
    raise_nofile();
    wg_log_set_level(cfg->log.level);
    c->started_ms = c->tickets_rotated_ms = wg_now_ms();
    c->policy_files_stamp = wg_config_policy_files_stamp(cfg);
    struct wg_errors errs = { 0 };
    if (evthread_use_pthreads() < 0 || !(c->config = config_ref_build(cfg, &errs))) {
        for (size_t k = 0; k < errs.n; k++)
            wg_error("msg=\"%s\"", errs.lines[k]);
        wg_errors_free(&errs);
        wg_error("msg=\"cannot initialise\"");
        return 1;
    }
    c->n_workers = worker_count(cfg);
    if (!(c->base = event_base_new()) || !(c->rc = wg_reclaim_new()) ||
        !(c->pool = wg_pool_new(c->rc, &wg_balance_policy, wake_workers, c)))
        goto out;
    wg_pool_on_publish(c->pool, on_publish, c);
    wg_pool_set_config(c->pool, c->config);
    if (open_listeners(c) < 0 || open_admin(c) < 0 ||
        wg_access_log_open(cfg) < 0 || drop_privileges(cfg->user) < 0 ||
        start_workers(c) < 0 || setup_events(c) < 0 || !(c->prober = wg_prober_new(c->pool)))
        goto out;
    c->registry = wg_registry_new(cfg, c->base, c->pool);
    if (!c->registry)
        goto out;
    wg_admin_set_registry(c->admin, c->registry);
    wg_admin_set_listeners(c->admin, (struct wg_listener *const *const *)&c->listeners,
                           &c->n_listeners);
    if (wg_registry_start(c->registry) < 0)
        goto out;
    c->fleet = wg_fleet_new(c->base, cfg, c->pool);
    wg_consumers_sync(c->base, cfg, consumers_changed, c);
    c->shared = wg_health_shared_new(c->base, cfg, c->pool, c->fleet);
    wg_admin_set_fleet(c->admin, c->fleet, c->shared);
    wg_info("msg=\"waygate started\" version=%s config=%s workers=%u", WAYGATE_VERSION, cfg->path,
            c->n_workers);
    event_base_dispatch(c->base);
    status = 0;
    wg_info("msg=\"stopped\"");
out:
    teardown(c);
    return status;
}
