/* zk_client — Apache ZooKeeper's C client (libzookeeper_mt) on an event_base.
 *
 * The C client runs its own I/O and completion threads and calls back on
 * the completion thread. This module keeps that thread out of waygate:
 *
 * Promises:
 *  - Every watch event, session event and request result is copied into a
 *    message in the client's callback, which only appends it to a queue
 *    under a mutex and writes an eventfd; it never blocks otherwise and
 *    never calls back into waygate. The owner's callback runs on the
 *    event_base's thread (the control thread), in the order ZooKeeper
 *    delivered them (one completion thread: events and results of one
 *    session are totally ordered, as ZooKeeper guarantees).
 *  - Requests are started from the event_base's thread only. Each handle
 *    has a generation; messages of a handle closed since are dropped, so
 *    the owner never sees a result of an expired session.
 *  - zookeeper_close() runs only on the event_base's thread (in
 *    wg_zk_reconnect() and wg_zk_free()), never in a callback.
 *  - Watches are ZooKeeper's one-shot watches on the handle's global
 *    watcher: the owner re-arms them by asking again (get with watch).
 */
#ifndef WAYGATE_ZK_CLIENT_H
#define WAYGATE_ZK_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct event_base;
struct wg_zk;

enum wg_zk_kind {
    WG_ZK_SESSION,          /* state changed: state */
    WG_ZK_WATCH,            /* a watch fired: type, path */
    WG_ZK_CHILDREN,         /* get_children result: rc, path, children, stat */
    WG_ZK_DATA,             /* get result: rc, path, data, stat */
    WG_ZK_CREATE,           /* create result: rc, path */
    WG_ZK_DELETE,           /* delete result: rc, path */
    WG_ZK_AUTH,             /* add_auth result: rc */
    WG_ZK_EXISTS            /* exists result: rc, path, stat */
};

enum wg_zk_state {
    WG_ZK_CONNECTING, WG_ZK_CONNECTED, WG_ZK_EXPIRED, WG_ZK_AUTH_FAILED, WG_ZK_CLOSED
};

enum wg_zk_event { WG_ZK_EV_CREATED, WG_ZK_EV_DELETED, WG_ZK_EV_CHANGED, WG_ZK_EV_CHILD,
                   WG_ZK_EV_OTHER };

struct wg_zk_stat {
    int64_t czxid, mzxid, pzxid;
    int64_t ephemeral_owner;
    int32_t num_children;
    int32_t version;
};

struct wg_zk_msg {
    enum wg_zk_kind kind;
    int rc;                         /* ZOK (0) or a ZooKeeper error code */
    enum wg_zk_state state;         /* WG_ZK_SESSION */
    enum wg_zk_event event;         /* WG_ZK_WATCH */
    char *path;                     /* the request's or the watch's path */
    uint64_t tag;                   /* the request's tag */
    char **children;
    size_t n_children;
    char *data;                     /* NUL-terminated copy; NULL: no data */
    size_t data_len;
    struct wg_zk_stat stat;
    uint64_t recv_ns;               /* wg_now_ns() when the client handed it over */
};

/* Runs on the event_base's thread; `m` is freed after it returns. */
typedef void (*wg_zk_cb)(void *arg, const struct wg_zk_msg *m);

struct wg_zk_options {
    const char *hosts;              /* "h1:p1,h2:p2[/chroot]" */
    unsigned session_timeout_ms;
    const char *auth_scheme;        /* NULL or "": none */
    const char *auth_credentials;
};

/* Opens the first handle (it connects in the background). NULL with a
 * reason in err. */
struct wg_zk *wg_zk_new(struct event_base *base, const struct wg_zk_options *o, wg_zk_cb cb,
                        void *arg, char *err, size_t err_len);
/* Closes the handle and opens a new one (after an expired session): the
 * old handle's messages are dropped from now on. 0, or -1 when the new
 * handle cannot be made (retry later). */
int wg_zk_reconnect(struct wg_zk *z);
void wg_zk_free(struct wg_zk *z);

/* Asynchronous requests; the result arrives as a message with `tag`.
 * -1 when the request could not be queued (no handle, out of memory). */
int wg_zk_get_children(struct wg_zk *z, const char *path, bool watch, uint64_t tag);
int wg_zk_get(struct wg_zk *z, const char *path, bool watch, uint64_t tag);
/* A watch set by exists() on a missing node fires WG_ZK_EV_CREATED. */
int wg_zk_exists(struct wg_zk *z, const char *path, bool watch, uint64_t tag);
int wg_zk_create(struct wg_zk *z, const char *path, const char *data, size_t len,
                 bool ephemeral, uint64_t tag);
int wg_zk_delete(struct wg_zk *z, const char *path, uint64_t tag);

/* The handle's session: state, id (0 before the first connect), the server
 * it talks to ("" when none), handles opened so far. */
enum wg_zk_state wg_zk_state(const struct wg_zk *z);
const char *wg_zk_state_name(enum wg_zk_state s);
int64_t wg_zk_session_id(const struct wg_zk *z);
void wg_zk_server(const struct wg_zk *z, char *buf, size_t len);
uint64_t wg_zk_generation(const struct wg_zk *z);
const char *wg_zk_error(int rc);
bool wg_zk_is_nonode(int rc);
bool wg_zk_is_node_exists(int rc);
/* The connection or session went (the read is not the node's fault). */
bool wg_zk_is_connection_error(int rc);

#endif
