/* registry_zk — instances from Apache ZooKeeper (DESIGN §17).
 *
 * The tree under registry.zookeeper.root:
 *     <root>/<service>/<id>                   data: Curator JSON or a §7 value
 *     <root>/<interface>/providers/<url>      Dubbo (root /dubbo): the name is the URL
 * Layout `auto` tells them apart per node: a child named `providers` of a
 * service directory is Dubbo's providers directory (its siblings
 * `consumers`, `configurators` and `routers` are Dubbo's bookkeeping and
 * skipped); any other child is an instance whose data is decoded by
 * wg_record_decode_zk() (Curator's JSON or any format of §7). `curator`
 * accepts only Curator's JSON, `plain` only §7 values, `dubbo` only the
 * providers directories.
 *
 * Following it, with ZooKeeper's one-shot watches:
 *  - Every directory (root, services, providers) is read with a children
 *    watch; every instance node with a data watch. Each fire re-reads (and
 *    so re-arms) what fired. A directory remembers its last children: the
 *    difference against a new list says which nodes came (read them) and
 *    which went (their records go).
 *  - Each result that changes a record is one pool transaction (one
 *    snapshot), timed into waygate_registry_propagation_seconds from the
 *    moment the client handed the result over.
 *  - On every (re)connect a full re-list runs: the directory memory is
 *    dropped, everything is read again from the root, and when the last
 *    read of that listing has answered, the records it did not see are
 *    deleted and the result replaces the pools in one snapshot. Changes
 *    that arrive meanwhile join the listing. A listing a lost connection
 *    broke waits for the next connect.
 *  - An expired session gets a new handle (wg_zk_reconnect(), on this
 *    thread), whose connect re-lists. Connection loss keeps the pools.
 *  - registry.cache as for etcd: written after publishes, served when
 *    nothing was listed 1 s after the start.
 */
#include "waygate/registry.h"

#include <event2/dns.h>
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "registry_cache.h"
#include "registry_map.h"
#include "waygate/log.h"
#include "waygate/pool.h"
#include "waygate/record.h"
#include "waygate/zk_client.h"

#define CACHE_AFTER_MS 1000
#define RETRY_MS 1000

static const char *const layout_names[] = { "auto", "curator", "dubbo", "plain" };

enum dir_kind { DIR_ROOT, DIR_SERVICE, DIR_PROVIDERS };

struct dir {
    struct hnode h;                 /* h.name: the path */
    enum dir_kind kind;
    char **children;                /* sorted; NULL until the first answer */
    size_t n;
};

struct zk_registry {
    struct wg_registry base;
    struct wg_zk *zk;
    struct wg_zk_options opts;
    char *hosts;
    char *root;                     /* "" = the top */
    enum wg_zk_layout layout;
    struct wg_dubbo_map *dubbo;
    size_t n_dubbo;
    char **tls_services;            /* services that send TLS upstream (sslPort) */
    size_t n_tls;
    bool tls_default;
    struct keymap map;
    struct htable dirs;
    uint64_t epoch;                 /* the current listing */
    bool listing;
    bool broken;                    /* a read of the listing failed */
    size_t pending;                 /* reads of the listing in flight */
    bool synced, cache_tried, was_connected;
    uint64_t listing_invalid;
    struct event *retry, *relist, *cache_timer;
    struct evdns_base *dns;
    struct rmap_resolver resolver;
    char *auth_scheme, *auth_credentials;
    struct wg_registry_cache *cache;
};

static void contact(struct zk_registry *r) { r->base.status.last_contact_ms = wg_now_ms(); }

static void arm(struct event *ev, uint64_t ms)
{
    struct timeval tv = { (time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000 };
    evtimer_add(ev, &tv);
}

static char *join(const char *parent, const char *child)
{
    size_t a = strlen(parent), b = strlen(child);
    char *p = malloc(a + b + 2);

    if (p) {
        memcpy(p, parent, a);
        p[a] = '/';
        memcpy(p + a + 1, child, b + 1);
    }
    return p;
}

static const char *zk_path(const struct zk_registry *r, const char *path)
{
    return *path ? path : "/";          /* the top is "/" to ZooKeeper, "" here */
}

static void track_zxid(struct zk_registry *r, const struct wg_zk_stat *st)
{
    int64_t z = st->mzxid > st->pzxid ? st->mzxid : st->pzxid;

    if (z > r->base.status.revision)
        r->base.status.revision = z;
}

static bool prefer_ssl(const struct zk_registry *r, const char *service)
{
    for (size_t i = 0; i < r->n_tls; i++)
        if (strcmp(r->tls_services[i], service) == 0)
            return true;
    return r->tls_default;
}

/* ---- reads ------------------------------------------------------------------------ */

static void read_started(struct zk_registry *r, int rc, const char *path)
{
    if (rc < 0) {
        wg_debug("msg=\"zookeeper read not started\" path=%s", path);
        if (r->listing)
            r->broken = true;
        return;
    }
    if (r->listing)
        r->pending++;
}

static void read_children(struct zk_registry *r, const char *path)
{
    read_started(r, wg_zk_get_children(r->zk, zk_path(r, path), true, r->epoch), path);
}

static void read_data(struct zk_registry *r, const char *path)
{
    read_started(r, wg_zk_get(r->zk, path, true, r->epoch), path);
}

/* ---- directories ------------------------------------------------------------------ */

static struct dir *dir_find(struct zk_registry *r, const char *path)
{
    return (struct dir *)rmap_find(&r->dirs, path);
}

static struct dir *dir_add(struct zk_registry *r, const char *path, enum dir_kind kind)
{
    struct dir *d = dir_find(r, path);

    if (d)
        return d;
    if (!(d = calloc(1, sizeof *d)) || !(d->h.name = strdup(path)) || !rmap_insert(&r->dirs, &d->h)) {
        if (d)
            free(d->h.name);
        free(d);
        wg_error("msg=\"zookeeper: out of memory following a directory\" path=%s", path);
        return NULL;
    }
    d->kind = kind;
    return d;
}

static void dir_free_children(struct dir *d)
{
    for (size_t i = 0; i < d->n; i++)
        free(d->children[i]);
    free(d->children);
    d->children = NULL;
    d->n = 0;
}

/* What a child of `d` is. */
enum child_kind { CHILD_SKIP, CHILD_DIR_SERVICE, CHILD_DIR_PROVIDERS, CHILD_DATA, CHILD_DUBBO };

static enum child_kind child_kind(const struct zk_registry *r, const struct dir *d,
                                  const char *name)
{
    bool dubbo = r->layout == WG_ZK_LAYOUT_DUBBO || r->layout == WG_ZK_LAYOUT_AUTO;

    switch (d->kind) {
    case DIR_ROOT:
        /* ZooKeeper's own /zookeeper (quotas, config) is no service */
        return (!*r->root && strcmp(name, "zookeeper") == 0) ? CHILD_SKIP : CHILD_DIR_SERVICE;
    case DIR_PROVIDERS:
        return CHILD_DUBBO;
    case DIR_SERVICE:
    default:
        if (dubbo && strcmp(name, "providers") == 0)
            return CHILD_DIR_PROVIDERS;
        if (dubbo && (strcmp(name, "consumers") == 0 || strcmp(name, "configurators") == 0 ||
                      strcmp(name, "routers") == 0))
            return CHILD_SKIP;
        return r->layout == WG_ZK_LAYOUT_DUBBO ? CHILD_SKIP : CHILD_DATA;
    }
}

static void dir_remove(struct zk_registry *r, struct dir *d);

/* A child left `d`: its records (or its directory) go. */
static void child_gone(struct zk_registry *r, struct dir *d, const char *name)
{
    char *path = join(d->h.name, name);
    struct dir *sub;

    if (!path)
        return;
    if ((sub = dir_find(r, path)))
        dir_remove(r, sub);
    else
        rmap_delete(&r->map, path);
    free(path);
}

static void dubbo_put(struct zk_registry *r, const char *path, const char *name)
{
    struct wg_record_set set = { 0 };
    char why[256];

    if (!wg_record_decode_dubbo(name, strlen(name), r->dubbo, r->n_dubbo, &set, why, sizeof why)) {
        wg_warn("msg=\"invalid registry record skipped\" path=\"%.300s\" reason=\"%s\"", path, why);
        r->base.status.invalid_records_total++;
        rmap_delete(&r->map, path);
        return;
    }
    struct key_entry *e = rmap_put(&r->map, path, &set);
    if (e)
        e->mark = r->epoch;
    else
        wg_error("msg=\"out of memory applying a registry record\" path=\"%.300s\"", path);
}

/* A child came to `d`: read it. */
static void child_came(struct zk_registry *r, struct dir *d, const char *name)
{
    char *path = join(d->h.name, name);

    if (!path)
        return;
    switch (child_kind(r, d, name)) {
    case CHILD_DIR_SERVICE:
        if (dir_add(r, path, DIR_SERVICE))
            read_children(r, path);
        break;
    case CHILD_DIR_PROVIDERS:
        if (dir_add(r, path, DIR_PROVIDERS))
            read_children(r, path);
        break;
    case CHILD_DATA:
        read_data(r, path);
        break;
    case CHILD_DUBBO:
        dubbo_put(r, path, name);
        break;
    case CHILD_SKIP:
        break;
    }
    free(path);
}

static void dir_remove(struct zk_registry *r, struct dir *d)
{
    for (size_t i = 0; i < d->n; i++)
        child_gone(r, d, d->children[i]);
    dir_free_children(d);
    rmap_remove(&r->dirs, &d->h);
    free(d->h.name);
    free(d);
}

static void dirs_clear(struct zk_registry *r)
{
    for (size_t i = 0; i < r->dirs.cap; i++)
        for (struct hnode *h = r->dirs.b[i], *next; h; h = next) {
            next = h->next;
            dir_free_children((struct dir *)h);
            free(h->name);
            free(h);
        }
    free(r->dirs.b);
    memset(&r->dirs, 0, sizeof r->dirs);
}

static int str_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static bool dir_has(const struct dir *d, const char *name)
{
    return d->children && bsearch(&name, d->children, d->n, sizeof *d->children, str_cmp);
}

/* A new children list of `d` (taken): diff against the last one. */
static void dir_update(struct zk_registry *r, struct dir *d, char **kids, size_t n)
{
    size_t i = 0, j = 0;
    char **old = d->children;
    size_t n_old = d->n;

    if (n)
        qsort(kids, n, sizeof *kids, str_cmp);
    d->children = kids ? kids : calloc(1, sizeof *kids);
    d->n = n;
    if (!d->children) {
        d->children = old;
        d->n = n_old;
        return;
    }
    while (i < n_old || j < n) {
        int c = i == n_old ? 1 : j == n ? -1 : strcmp(old[i], kids[j]);
        if (c < 0)
            child_gone(r, d, old[i++]);
        else if (c > 0)
            child_came(r, d, kids[j++]);
        else
            i++, j++;
    }
    for (i = 0; i < n_old; i++)
        free(old[i]);
    free(old);
}

/* ---- results ------------------------------------------------------------------------ */

static void on_children(struct zk_registry *r, const struct wg_zk_msg *m)
{
    const char *path = strcmp(m->path, "/") == 0 ? "" : m->path;
    struct dir *d = dir_find(r, path);

    if (!d)
        return;                     /* a directory gone (or dropped by a re-list) since */
    if (m->rc == 0) {
        char **kids = m->n_children ? malloc(m->n_children * sizeof *kids) : NULL;
        if (m->n_children && !kids) {
            r->broken = r->listing;
            return;
        }
        /* the message's strings are freed with it: copies */
        for (size_t i = 0; i < m->n_children; i++)
            if (!(kids[i] = strdup(m->children[i]))) {
                while (i)
                    free(kids[--i]);
                free(kids);
                r->broken = r->listing;
                return;
            }
        dir_update(r, d, kids, m->n_children);
        return;
    }
    if (wg_zk_is_nonode(m->rc)) {
        if (d->kind == DIR_ROOT) {
            /* no root yet: what is known goes; an exists watch says when it comes */
            dir_update(r, d, NULL, 0);
            read_started(r, wg_zk_exists(r->zk, zk_path(r, r->root), true, r->epoch), r->root);
        } else {
            dir_remove(r, d);
        }
        return;
    }
    wg_log(wg_zk_is_connection_error(m->rc) ? WG_LOG_DEBUG : WG_LOG_WARN,
           "msg=\"zookeeper children read failed\" path=%s error=\"%s\"", m->path,
           wg_zk_error(m->rc));
    if (r->listing)
        r->broken = true;
}

static void on_data(struct zk_registry *r, const struct wg_zk_msg *m)
{
    char *slash = strrchr(m->path, '/');
    struct dir *d;
    struct wg_record_set set = { 0 };
    struct wg_record_hosts hosts = { 0 };
    enum wg_record_format format;
    char why[256];

    if (wg_zk_is_nonode(m->rc)) {
        rmap_delete(&r->map, m->path);
        return;
    }
    if (m->rc != 0) {
        wg_log(wg_zk_is_connection_error(m->rc) ? WG_LOG_DEBUG : WG_LOG_WARN,
               "msg=\"zookeeper data read failed\" path=%s error=\"%s\"", m->path,
               wg_zk_error(m->rc));
        r->broken = r->listing;
        return;
    }
    if (!slash)
        return;
    *slash = '\0';
    d = dir_find(r, m->path);
    bool listed = d && dir_has(d, slash + 1);
    *slash = '/';
    if (!listed)
        return;                     /* its directory no longer lists it */
    size_t plen = (size_t)(strrchr(d->h.name, '/') - d->h.name) + 1;
    char prefix[plen + 1];
    memcpy(prefix, d->h.name, plen);
    prefix[plen] = '\0';
    const char *service = d->h.name + plen;
    if (r->layout == WG_ZK_LAYOUT_PLAIN ?
            !wg_record_decode_etcd(prefix, m->path, strlen(m->path), m->data ? m->data : "",
                                   m->data_len, &set, &hosts, &format, why, sizeof why) :
            !wg_record_decode_zk(prefix, m->path, strlen(m->path), m->data ? m->data : "",
                                 m->data_len, r->layout == WG_ZK_LAYOUT_CURATOR,
                                 prefer_ssl(r, service), &set, &hosts, &format, why,
                                 sizeof why)) {
        wg_warn("msg=\"invalid registry record skipped\" path=\"%.300s\" reason=\"%s\"", m->path,
                why);
        r->base.status.invalid_records_total++;
        if (r->listing)
            r->listing_invalid++;
        rmap_delete(&r->map, m->path);
        return;
    }
    struct key_entry *e = rmap_put(&r->map, m->path, &set);
    if (e)
        e->mark = r->epoch;
    else
        wg_error("msg=\"out of memory applying a registry record\" path=\"%.300s\"", m->path);
    if (e && hosts.n)
        rmap_resolve(&r->resolver, e, &hosts);     /* routed once resolved */
    wg_record_hosts_clear(&hosts);
    wg_debug("msg=\"zookeeper node applied\" path=%s format=%s", m->path,
             wg_record_format_name(format));
}

/* A node's own delete event: its parent forgets it, so that the next
 * children read sees it as new if it is created again before that read
 * (its data watch fired with the delete; the children diff alone would see
 * no change). */
static void forget_child(struct zk_registry *r, const char *path)
{
    const char *slash = strrchr(path, '/');
    char *parent = slash ? strndup(path, (size_t)(slash - path)) : NULL;
    struct dir *d = parent ? dir_find(r, parent) : NULL;
    const char *name = slash ? slash + 1 : "";
    char **hit = d && d->children ? bsearch(&name, d->children, d->n, sizeof *d->children,
                                            str_cmp) : NULL;

    if (hit) {
        free(*hit);
        memmove(hit, hit + 1, (size_t)(d->children + d->n - hit - 1) * sizeof *hit);
        d->n--;
    }
    free(parent);
}

static void on_watch(struct zk_registry *r, const struct wg_zk_msg *m)
{
    const char *path = strcmp(m->path, "/") == 0 ? "" : m->path;
    struct dir *d = dir_find(r, path);

    switch (m->event) {
    case WG_ZK_EV_CHILD:
        if (d)
            read_children(r, path);
        break;
    case WG_ZK_EV_CHANGED:
        if (!d)
            read_data(r, m->path);
        break;
    case WG_ZK_EV_DELETED:
        if (d && d->kind == DIR_ROOT) {
            read_children(r, path);     /* NONODE: records go, exists watch set */
            break;
        }
        if (d)
            dir_remove(r, d);
        else
            rmap_delete(&r->map, m->path);
        forget_child(r, m->path);
        break;
    case WG_ZK_EV_CREATED:
        if (d && d->kind == DIR_ROOT)
            read_children(r, path);
        break;
    default:
        break;
    }
}

/* ---- publishing ---------------------------------------------------------------------- */

static void published(struct zk_registry *r)
{
    if (r->cache)
        wg_registry_cache_publish(r->cache, wg_pool_published(r->base.pool));
}

static void start_listing(struct zk_registry *r);

static void listing_done(struct zk_registry *r)
{
    bool resync = r->synced;
    size_t gone;

    r->listing = false;
    if (r->broken) {
        r->broken = false;
        if (wg_zk_state(r->zk) == WG_ZK_CONNECTED)
            arm(r->relist, RETRY_MS);       /* a read failed while connected: again */
        return;                             /* else the next connect lists again */
    }
    gone = rmap_sweep(&r->map, r->epoch);
    long instances = rmap_replace_all(r->base.pool, &r->map);
    if (instances < 0)
        wg_error("msg=\"cannot publish the zookeeper list\"");
    if (resync)
        r->base.status.resyncs_total++;
    wg_info("msg=\"zookeeper list applied\" server=%s zxid=%lld nodes=%zu instances=%zu "
            "invalid=%llu gone=%zu resync=%d", r->base.status.server,
            (long long)r->base.status.revision, r->map.keys.n,
            instances < 0 ? (size_t)0 : (size_t)instances,
            (unsigned long long)r->listing_invalid, gone, resync);
    r->synced = true;
    published(r);
}

static void start_listing(struct zk_registry *r)
{
    dirs_clear(r);
    r->epoch++;
    r->listing = true;
    r->broken = false;
    r->pending = 0;
    r->listing_invalid = 0;
    if (dir_add(r, r->root, DIR_ROOT))
        read_children(r, r->root);
    if (r->pending == 0)
        listing_done(r);
}

/* After a message outside a listing: commit what it changed, as one snapshot. */
static void commit_changes(struct zk_registry *r, uint64_t recv_ns)
{
    if (!r->map.dirty)
        return;
    rmap_stage(r->base.pool, &r->map);
    uint64_t generation = wg_pool_commit(r->base.pool);
    uint64_t ns = wg_now_ns() - recv_ns;
    wg_registry_observe_propagation(&r->base.status, ns);
    r->base.status.events_total++;
    published(r);
    wg_debug("msg=\"zookeeper change applied\" zxid=%lld generation=%llu propagation_us=%.1f",
             (long long)r->base.status.revision, (unsigned long long)generation, ns / 1000.0);
}

/* A record's host name resolved: publish it, unless a listing will. */
static void dns_commit(void *arg)
{
    struct zk_registry *r = arg;

    if (r->listing)
        return;
    rmap_stage(r->base.pool, &r->map);
    wg_pool_commit(r->base.pool);
    published(r);
}

/* ---- the session ------------------------------------------------------------------------ */

static void load_cache(struct zk_registry *r)
{
    r->cache_tried = true;
    wg_registry_cache_serve(r->cache, r->base.pool, "zookeeper");
}

static void update_session(struct zk_registry *r)
{
    struct wg_registry_status *st = &r->base.status;

    st->session_state = wg_zk_state_name(wg_zk_state(r->zk));
    st->session_id = wg_zk_session_id(r->zk);
    wg_zk_server(r->zk, st->server, sizeof st->server);
    st->connected = wg_zk_state(r->zk) == WG_ZK_CONNECTED;
}

static void new_session(struct zk_registry *r)
{
    r->listing = false;
    r->broken = false;
    dirs_clear(r);
    if (wg_zk_reconnect(r->zk) < 0)
        arm(r->retry, RETRY_MS);
    update_session(r);
}

static void on_session(struct zk_registry *r, const struct wg_zk_msg *m)
{
    update_session(r);
    switch (m->state) {
    case WG_ZK_CONNECTED:
        contact(r);
        if (r->was_connected)
            r->base.status.reconnects_total++;
        r->was_connected = true;
        wg_info("msg=\"zookeeper connected\" server=%s session=0x%llx", r->base.status.server,
                (unsigned long long)r->base.status.session_id);
        start_listing(r);
        break;
    case WG_ZK_EXPIRED:
        wg_warn("msg=\"zookeeper session expired, opening a new one; keeping the last known "
                "pools\" session=0x%llx", (unsigned long long)r->base.status.session_id);
        new_session(r);
        break;
    case WG_ZK_AUTH_FAILED:
        wg_error("msg=\"zookeeper authentication failed; retrying\" scheme=%s",
                 r->opts.auth_scheme);
        r->listing = false;
        arm(r->retry, RETRY_MS * 5);
        break;
    default:
        wg_warn("msg=\"zookeeper connection lost, keeping the last known pools\"");
        if (r->listing)
            r->broken = true;
        if (!r->synced && !r->cache_tried)
            load_cache(r);
        break;
    }
}

static void on_message(void *arg, const struct wg_zk_msg *m)
{
    struct zk_registry *r = arg;
    bool counted = r->listing && m->tag == r->epoch &&
                   (m->kind == WG_ZK_CHILDREN || m->kind == WG_ZK_DATA || m->kind == WG_ZK_EXISTS);

    if (m->kind != WG_ZK_SESSION)
        contact(r);
    if (m->kind == WG_ZK_CHILDREN || m->kind == WG_ZK_DATA)
        track_zxid(r, &m->stat);
    switch (m->kind) {
    case WG_ZK_SESSION:
        on_session(r, m);
        return;
    case WG_ZK_WATCH:
        on_watch(r, m);
        break;
    case WG_ZK_CHILDREN:
        on_children(r, m);
        break;
    case WG_ZK_DATA:
        on_data(r, m);
        break;
    case WG_ZK_EXISTS:
        if (m->rc == 0 && dir_find(r, r->root))
            read_children(r, r->root);      /* created meanwhile */
        break;
    case WG_ZK_AUTH:
        if (m->rc != 0)
            wg_error("msg=\"zookeeper authentication refused\" error=\"%s\"", wg_zk_error(m->rc));
        break;
    default:
        break;
    }
    if (counted && --r->pending == 0)
        listing_done(r);
    else if (!r->listing)
        commit_changes(r, m->recv_ns);
}

static void retry_cb(evutil_socket_t fd, short what, void *arg)
{
    new_session(arg);
}

static void relist_cb(evutil_socket_t fd, short what, void *arg)
{
    struct zk_registry *r = arg;

    if (wg_zk_state(r->zk) == WG_ZK_CONNECTED && !r->listing)
        start_listing(r);
}

static void cache_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct zk_registry *r = arg;

    if (!r->synced && !r->cache_tried)
        load_cache(r);
}

/* ---- construction ------------------------------------------------------------------------- */

static int zk_start(struct wg_registry *base)
{
    struct zk_registry *r = (struct zk_registry *)base;
    char err[300];

    if (!(r->retry = evtimer_new(base->base, retry_cb, r)) ||
        !(r->relist = evtimer_new(base->base, relist_cb, r)) ||
        !(r->dns = evdns_base_new(base->base, EVDNS_BASE_INITIALIZE_NAMESERVERS)))
        return -1;
    r->resolver = (struct rmap_resolver){ r->dns, &r->map, NULL, dns_commit, r,
                                          &r->base.status.invalid_records_total, NULL };
    if (r->cache) {
        if (!(r->cache_timer = evtimer_new(base->base, cache_timer_cb, r)))
            return -1;
        arm(r->cache_timer, CACHE_AFTER_MS);
    }
    wg_info("msg=\"zookeeper registry starting\" servers=\"%s\" root=%s layout=%s",
            r->hosts, *r->root ? r->root : "/", layout_names[r->layout]);
    if (!(r->zk = wg_zk_new(base->base, &r->opts, on_message, r, err, sizeof err))) {
        wg_error("msg=\"%s\"", err);
        return -1;
    }
    update_session(r);
    return 0;
}

static void zk_free(struct wg_registry *base)
{
    struct zk_registry *r = (struct zk_registry *)base;

    wg_zk_free(r->zk);
    rmap_resolver_cancel(&r->resolver);
    if (r->dns)
        evdns_base_free(r->dns, 0);
    /* the cancelled lookups are freed by their deferred callbacks: at
     * shutdown one non-blocking pass runs them (a reload: the loop does) */
    if (base->base && !base->in_loop)
        event_base_loop(base->base, EVLOOP_NONBLOCK);
    if (r->retry)
        event_free(r->retry);
    if (r->relist)
        event_free(r->relist);
    if (r->cache_timer)
        event_free(r->cache_timer);
    wg_registry_cache_free(r->cache);
    dirs_clear(r);
    rmap_clear(&r->map);
    for (size_t i = 0; i < r->n_tls; i++)
        free(r->tls_services[i]);
    free(r->tls_services);
    for (size_t i = 0; r->dubbo && i < r->n_dubbo; i++) {
        free((char *)r->dubbo[i].interface);
        free((char *)r->dubbo[i].service);
    }
    free(r->dubbo);
    free(r->auth_scheme);
    free(r->auth_credentials);
    free(r->hosts);
    free(r->root);
    free(r);
}

static const struct wg_registry_ops zk_ops = { "zookeeper", zk_start, zk_free };

/* "h1:p1,h2:p2" + chroot */
static char *hosts_text(const typeof(((struct wg_config *)0)->registry.zookeeper) *z)
{
    size_t n = strlen(z->chroot) + 1;
    char *s;

    for (size_t i = 0; i < z->n_servers; i++)
        n += strlen(z->servers[i]) + 1;
    if (!(s = malloc(n)))
        return NULL;
    s[0] = '\0';
    for (size_t i = 0; i < z->n_servers; i++) {
        if (i)
            strcat(s, ",");
        strcat(s, z->servers[i]);
    }
    strcat(s, z->chroot);
    return s;
}

static bool copy_tls(struct zk_registry *r, const struct wg_config *cfg)
{
    r->tls_default = cfg->service_defaults.tls.enabled;
    if (!(r->tls_services = calloc(cfg->n_services + 1, sizeof *r->tls_services)))
        return false;
    for (size_t i = 0; i < cfg->n_services; i++)
        if (cfg->services[i].tls.enabled &&
            !(r->tls_services[r->n_tls++] = strdup(cfg->services[i].name)))
            return false;
    return true;
}

struct wg_registry *wg_registry_zk_new(const struct wg_config *cfg, struct event_base *base,
                                       struct wg_pool *pool)
{
    const typeof(cfg->registry.zookeeper) *z = &cfg->registry.zookeeper;
    struct zk_registry *r = calloc(1, sizeof *r);

    if (!r)
        return NULL;
    r->base.ops = &zk_ops;
    r->base.base = base;
    r->base.pool = pool;
    r->base.status.source = "zookeeper";
    r->base.status.session_state = "connecting";
    r->layout = z->layout;
    if (!(r->hosts = hosts_text(z)) || !(r->root = strdup(z->root)) || !copy_tls(r, cfg) ||
        !(r->dubbo = calloc(z->n_dubbo + 1, sizeof *r->dubbo)) ||
        !(r->auth_scheme = strdup(z->auth.scheme)) ||
        !(r->auth_credentials = strdup(z->auth.credentials)))
        goto fail;
    for (; r->n_dubbo < z->n_dubbo; r->n_dubbo++) {
        struct wg_dubbo_map *d = &r->dubbo[r->n_dubbo];
        d->interface = strdup(z->dubbo_interfaces[r->n_dubbo]);
        d->service = strdup(z->dubbo_services[r->n_dubbo]);
        if (!d->interface || !d->service) {
            r->n_dubbo++;
            goto fail;
        }
    }
    r->opts = (struct wg_zk_options){ r->hosts, (unsigned)z->session_timeout_ms,
                                      r->auth_scheme, r->auth_credentials };
    if (cfg->registry.cache && *cfg->registry.cache &&
        !(r->cache = wg_registry_cache_new(cfg->registry.cache)))
        goto fail;
    return &r->base;
fail:
    zk_free(&r->base);
    return NULL;
}
