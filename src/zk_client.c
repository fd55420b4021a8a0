/* zk_client — see include/waygate/zk_client.h.
 *
 * The client's completion thread runs the callbacks below: each one copies
 * what it got into a heap message (malloc only: no lock but the queue's,
 * no I/O but one eventfd write) and returns. The event_base's thread reads
 * the eventfd, takes the whole queue under the mutex, and hands each
 * message of the current handle to the owner.
 */
#include "waygate/zk_client.h"

#include <errno.h>
#include <event2/event.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include <zookeeper/zookeeper.h>

#include "waygate/log.h"
#include "waygate/pool.h"

struct node {
    struct node *next;
    uint64_t gen;
    struct wg_zk_msg m;
};

/* The context of one handle's global watcher (lives until the handle is
 * closed). */
struct handle_ctx {
    struct wg_zk *z;
    uint64_t gen;
};

/* The context of one request. */
struct req {
    struct wg_zk *z;
    uint64_t gen;
    enum wg_zk_kind kind;
    uint64_t tag;
    char *path;
};

struct wg_zk {
    struct event_base *base;
    wg_zk_cb cb;
    void *arg;
    char *hosts;
    unsigned session_timeout_ms;
    char *auth_scheme, *auth_credentials;
    zhandle_t *zh;
    struct handle_ctx *ctx;
    uint64_t gen;
    enum wg_zk_state state;
    int efd;
    struct event *wake;
    pthread_mutex_t lock;
    struct node *head, **tail;      /* under lock */
};

static void msg_free(struct wg_zk_msg *m)
{
    for (size_t i = 0; i < m->n_children; i++)
        free(m->children[i]);
    free(m->children);
    free(m->data);
    free(m->path);
}

/* ---- the client's threads ----------------------------------------------------- */

static void push(struct wg_zk *z, struct node *n)
{
    uint64_t one = 1;

    n->m.recv_ns = wg_now_ns();
    pthread_mutex_lock(&z->lock);
    *z->tail = n;
    z->tail = &n->next;
    pthread_mutex_unlock(&z->lock);
    /* an eventfd counter only fails when it would overflow: it is read */
    if (write(z->efd, &one, sizeof one) < 0 && errno != EAGAIN)
        wg_error("msg=\"zookeeper: cannot wake the control thread\" error=\"%s\"",
                 strerror(errno));
}

static enum wg_zk_state state_of(int s)
{
    if (s == ZOO_CONNECTED_STATE || s == ZOO_READONLY_STATE)
        return WG_ZK_CONNECTED;
    if (s == ZOO_EXPIRED_SESSION_STATE)
        return WG_ZK_EXPIRED;
    if (s == ZOO_AUTH_FAILED_STATE)
        return WG_ZK_AUTH_FAILED;
    return WG_ZK_CONNECTING;
}

static enum wg_zk_event event_of(int type)
{
    return type == ZOO_CREATED_EVENT   ? WG_ZK_EV_CREATED
           : type == ZOO_DELETED_EVENT ? WG_ZK_EV_DELETED
           : type == ZOO_CHANGED_EVENT ? WG_ZK_EV_CHANGED
           : type == ZOO_CHILD_EVENT   ? WG_ZK_EV_CHILD
                                       : WG_ZK_EV_OTHER;
}

static void watcher(zhandle_t *zh, int type, int state, const char *path, void *ctx)
{
    struct handle_ctx *h = ctx;
    struct node *n = calloc(1, sizeof *n);

    if (!n || !(n->m.path = strdup(path ? path : ""))) {
        free(n);
        wg_error("msg=\"zookeeper: out of memory, an event is lost; resyncing\"");
        n = calloc(1, sizeof *n);       /* a session message makes the owner re-list */
        if (!n)
            return;
        type = ZOO_SESSION_EVENT;
        state = ZOO_CONNECTED_STATE;
    }
    n->gen = h->gen;
    if (type == ZOO_SESSION_EVENT) {
        n->m.kind = WG_ZK_SESSION;
        n->m.state = state_of(state);
    } else {
        n->m.kind = WG_ZK_WATCH;
        n->m.event = event_of(type);
    }
    push(h->z, n);
}

static void copy_stat(struct wg_zk_stat *out, const struct Stat *st)
{
    if (!st)
        return;
    out->czxid = st->czxid;
    out->mzxid = st->mzxid;
    out->pzxid = st->pzxid;
    out->ephemeral_owner = st->ephemeralOwner;
    out->num_children = st->numChildren;
    out->version = st->version;
}

/* The message of a request's result (takes req). On out of memory the
 * result becomes ZSYSTEMERROR, which the owner treats as a failed call. */
static struct node *result(int rc, const void *data)
{
    struct req *q = (struct req *)data;
    struct node *n = calloc(1, sizeof *n);

    if (!n) {                           /* nothing to report it with: the owner's timers retry */
        free(q->path);
        free(q);
        return NULL;
    }
    n->gen = q->gen;
    n->m.kind = q->kind;
    n->m.rc = rc;
    n->m.tag = q->tag;
    n->m.path = q->path;
    return n;
}

static void finish_result(const void *data, struct node *n)
{
    struct req *q = (struct req *)data;
    struct wg_zk *z = q->z;

    free(q);
    push(z, n);
}

static void children_done(int rc, const struct String_vector *v, const struct Stat *st,
                          const void *data)
{
    struct node *n = result(rc, data);

    if (!n)
        return;
    if (rc == ZOK && v && v->count > 0) {
        n->m.children = calloc((size_t)v->count, sizeof *n->m.children);
        for (int32_t i = 0; n->m.children && i < v->count; i++)
            if (!(n->m.children[n->m.n_children++] = strdup(v->data[i])))
                n->m.rc = ZSYSTEMERROR;
        if (!n->m.children)
            n->m.rc = ZSYSTEMERROR;
    }
    copy_stat(&n->m.stat, st);
    finish_result(data, n);
}

static void data_done(int rc, const char *value, int len, const struct Stat *st,
                      const void *data)
{
    struct node *n = result(rc, data);

    if (!n)
        return;
    if (rc == ZOK && value && len >= 0) {
        if ((n->m.data = malloc((size_t)len + 1))) {
            memcpy(n->m.data, value, (size_t)len);
            n->m.data[len] = '\0';
            n->m.data_len = (size_t)len;
        } else {
            n->m.rc = ZSYSTEMERROR;
        }
    }
    copy_stat(&n->m.stat, st);
    finish_result(data, n);
}

static void stat_done(int rc, const struct Stat *st, const void *data)
{
    struct node *n = result(rc, data);

    if (!n)
        return;
    copy_stat(&n->m.stat, st);
    finish_result(data, n);
}

static void string_done(int rc, const char *value, const void *data)
{
    struct node *n = result(rc, data);

    if (!n)
        return;
    finish_result(data, n);
}

static void void_done(int rc, const void *data)
{
    string_done(rc, NULL, data);
}

/* ---- the event_base's thread ---------------------------------------------------- */

static void drain(evutil_socket_t fd, short what, void *arg)
{
    struct wg_zk *z = arg;
    struct node *list;
    uint64_t count;

    if (read(z->efd, &count, sizeof count) < 0 && errno != EAGAIN)
        wg_error("msg=\"zookeeper: eventfd read failed\" error=\"%s\"", strerror(errno));
    pthread_mutex_lock(&z->lock);
    list = z->head;
    z->head = NULL;
    z->tail = &z->head;
    pthread_mutex_unlock(&z->lock);
    while (list) {
        struct node *n = list;
        list = n->next;
        if (n->gen == z->gen && z->zh) {
            if (n->m.kind == WG_ZK_SESSION)
                z->state = n->m.state;
            z->cb(z->arg, &n->m);
        }
        msg_free(&n->m);
        free(n);
    }
}

static void log_line(const char *message)
{
    wg_warn("msg=\"zookeeper client\" text=\"%.400s\"", message);
}

static void close_handle(struct wg_zk *z)
{
    if (!z->zh)
        return;
    int rc = zookeeper_close(z->zh);      /* joins the client's threads */
    if (rc != ZOK)
        wg_debug("msg=\"zookeeper close\" result=\"%s\"", zerror(rc));
    z->zh = NULL;
    free(z->ctx);
    z->ctx = NULL;
    z->state = WG_ZK_CLOSED;
}

static int open_handle(struct wg_zk *z)
{
    struct handle_ctx *h = calloc(1, sizeof *h);

    if (!h)
        return -1;
    h->z = z;
    h->gen = ++z->gen;
    z->zh = zookeeper_init2(z->hosts, watcher, (int)z->session_timeout_ms, NULL, h, 0, log_line);
    if (!z->zh) {
        wg_warn("msg=\"zookeeper: cannot create a handle\" hosts=\"%s\" error=\"%s\"", z->hosts,
                strerror(errno));
        free(h);
        return -1;
    }
    z->ctx = h;
    z->state = WG_ZK_CONNECTING;
    if (z->auth_scheme && *z->auth_scheme) {
        struct req *q = calloc(1, sizeof *q);
        int rc;
        if (!q)
            return -1;
        *q = (struct req){ z, h->gen, WG_ZK_AUTH, 0, NULL };
        rc = zoo_add_auth(z->zh, z->auth_scheme, z->auth_credentials,
                          (int)strlen(z->auth_credentials), void_done, q);
        if (rc != ZOK) {
            free(q);
            wg_error("msg=\"zookeeper: cannot add authentication\" scheme=%s error=\"%s\"",
                     z->auth_scheme, zerror(rc));
        }
    }
    return 0;
}

struct wg_zk *wg_zk_new(struct event_base *base, const struct wg_zk_options *o, wg_zk_cb cb,
                        void *arg, char *err, size_t err_len)
{
    struct wg_zk *z = calloc(1, sizeof *z);

    if (!z) {
        snprintf(err, err_len, "out of memory");
        return NULL;
    }
    z->base = base;
    z->cb = cb;
    z->arg = arg;
    z->efd = -1;
    z->tail = &z->head;
    z->session_timeout_ms = o->session_timeout_ms;
    pthread_mutex_init(&z->lock, NULL);
    zoo_set_debug_level(ZOO_LOG_LEVEL_ERROR);
    if (!(z->hosts = strdup(o->hosts)) ||
        !(z->auth_scheme = strdup(o->auth_scheme ? o->auth_scheme : "")) ||
        !(z->auth_credentials = strdup(o->auth_credentials ? o->auth_credentials : ""))) {
        snprintf(err, err_len, "out of memory");
        goto fail;
    }
    if ((z->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0 ||
        !(z->wake = event_new(base, z->efd, EV_READ | EV_PERSIST, drain, z)) ||
        event_add(z->wake, NULL) < 0) {
        snprintf(err, err_len, "zookeeper: cannot make the wake-up eventfd: %s", strerror(errno));
        goto fail;
    }
    if (open_handle(z) < 0) {
        snprintf(err, err_len, "zookeeper: cannot create a client for '%s'", o->hosts);
        goto fail;
    }
    return z;
fail:
    wg_zk_free(z);
    return NULL;
}

int wg_zk_reconnect(struct wg_zk *z)
{
    close_handle(z);
    return open_handle(z);
}

void wg_zk_free(struct wg_zk *z)
{
    if (!z)
        return;
    close_handle(z);
    z->gen++;
    while (z->head) {                   /* the closed handle's last messages */
        struct node *n = z->head;
        z->head = n->next;
        msg_free(&n->m);
        free(n);
    }
    if (z->wake)
        event_free(z->wake);
    if (z->efd >= 0)
        close(z->efd);
    pthread_mutex_destroy(&z->lock);
    free(z->hosts);
    free(z->auth_scheme);
    free(z->auth_credentials);
    free(z);
}

static struct req *req_new(struct wg_zk *z, enum wg_zk_kind kind, const char *path, uint64_t tag)
{
    struct req *q = z->zh ? calloc(1, sizeof *q) : NULL;

    if (!q)
        return NULL;
    *q = (struct req){ z, z->gen, kind, tag, strdup(path) };
    if (!q->path) {
        free(q);
        return NULL;
    }
    return q;
}

static int started(struct req *q, int rc)
{
    if (rc == ZOK)
        return 0;
    wg_debug("msg=\"zookeeper request not queued\" path=%s error=\"%s\"", q->path, zerror(rc));
    free(q->path);
    free(q);
    return -1;
}

int wg_zk_get_children(struct wg_zk *z, const char *path, bool watch, uint64_t tag)
{
    struct req *q = req_new(z, WG_ZK_CHILDREN, path, tag);

    return q ? started(q, zoo_aget_children2(z->zh, path, watch, children_done, q)) : -1;
}

int wg_zk_get(struct wg_zk *z, const char *path, bool watch, uint64_t tag)
{
    struct req *q = req_new(z, WG_ZK_DATA, path, tag);

    return q ? started(q, zoo_aget(z->zh, path, watch, data_done, q)) : -1;
}

int wg_zk_exists(struct wg_zk *z, const char *path, bool watch, uint64_t tag)
{
    struct req *q = req_new(z, WG_ZK_EXISTS, path, tag);

    return q ? started(q, zoo_aexists(z->zh, path, watch, stat_done, q)) : -1;
}

int wg_zk_create(struct wg_zk *z, const char *path, const char *data, size_t len,
                 bool ephemeral, uint64_t tag)
{
    struct req *q = req_new(z, WG_ZK_CREATE, path, tag);

    return q ? started(q, zoo_acreate(z->zh, path, data, data ? (int)len : -1,
                                      &ZOO_OPEN_ACL_UNSAFE, ephemeral ? ZOO_EPHEMERAL : 0,
                                      string_done, q))
             : -1;
}

int wg_zk_delete(struct wg_zk *z, const char *path, uint64_t tag)
{
    struct req *q = req_new(z, WG_ZK_DELETE, path, tag);

    return q ? started(q, zoo_adelete(z->zh, path, -1, void_done, q)) : -1;
}

enum wg_zk_state wg_zk_state(const struct wg_zk *z) { return z->state; }

const char *wg_zk_state_name(enum wg_zk_state s)
{
    static const char *const names[] = { "connecting", "connected", "expired", "auth_failed",
                                         "closed" };
    return (unsigned)s < sizeof names / sizeof *names ? names[s] : "?";
}

int64_t wg_zk_session_id(const struct wg_zk *z)
{
    const clientid_t *id = z->zh ? zoo_client_id(z->zh) : NULL;

    return id ? id->client_id : 0;
}

void wg_zk_server(const struct wg_zk *z, char *buf, size_t len)
{
    const char *s = z->zh && z->state == WG_ZK_CONNECTED ? zoo_get_current_server(z->zh) : NULL;

    snprintf(buf, len, "%s", s ? s : "");
}

uint64_t wg_zk_generation(const struct wg_zk *z) { return z->gen; }

const char *wg_zk_error(int rc) { return zerror(rc); }

bool wg_zk_is_nonode(int rc) { return rc == ZNONODE; }

bool wg_zk_is_node_exists(int rc) { return rc == ZNODEEXISTS; }

bool wg_zk_is_connection_error(int rc)
{
    return rc == ZCONNECTIONLOSS || rc == ZSESSIONEXPIRED || rc == ZCLOSING ||
           rc == ZOPERATIONTIMEOUT || rc == ZINVALIDSTATE || rc == ZSESSIONMOVED;
}
