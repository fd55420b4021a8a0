/* registry_file — instances from a YAML file, re-read when it changes.
 *
 * Change detection: inotify on the file's DIRECTORY (so that an editor's or
 * a deploy tool's write-temp-then-rename is seen, and a file that appears
 * later is picked up), reacting to close-after-write, rename-in, create and
 * delete; plus a 1 s stat() poll (inode, size, mtime) as a fallback where
 * inotify is unavailable or events were lost. Events are debounced by
 * 20 ms. A read that fails or is not valid YAML keeps the last good pools.
 */
#include "waygate/registry.h"

#include <errno.h>
#include <event2/event.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include "waygate/log.h"
#include "waygate/pool.h"
#include "waygate/record.h"

#define POLL_MS 1000
#define DEBOUNCE_MS 20

struct file_registry {
    struct wg_registry base;        /* first: the generic part */
    char *path;
    char *dir;
    const char *name;               /* basename, inside `dir` */
    int inotify_fd;
    struct event *inotify_ev;
    struct event *poll_ev;
    struct event *debounce_ev;
    struct stat last;               /* of the last read attempt */
    bool have_last;
    struct stat poll_stat;          /* a change the poll saw, waiting to settle */
    bool poll_have, poll_seen;
    bool ever_loaded;
};

static bool stat_changed(struct file_registry *f)
{
    struct stat st;
    if (stat(f->path, &st) < 0) {
        bool changed = f->have_last;
        f->have_last = false;
        return changed;
    }
    bool changed = !f->have_last || st.st_ino != f->last.st_ino || st.st_size != f->last.st_size ||
                   st.st_mtim.tv_sec != f->last.st_mtim.tv_sec ||
                   st.st_mtim.tv_nsec != f->last.st_mtim.tv_nsec;
    f->last = st;
    f->have_last = true;
    return changed;
}

static void file_reload(struct file_registry *f)
{
    f->poll_seen = false;
    struct wg_record_set set = { 0 };
    struct wg_errors warnings = { 0 };
    unsigned invalid = 0;
    stat_changed(f);
    bool ok = wg_record_parse_file(f->path, &set, &warnings, &invalid);
    for (size_t k = 0; k < warnings.n; k++)
        wg_warn("msg=\"invalid registry record skipped\" where=\"%s\"", warnings.lines[k]);
    f->base.status.invalid_records_total += invalid;
    if (!ok) {
        f->base.status.connected = false;
        wg_warn("msg=\"registry file unreadable, keeping last known pools\" file=%s", f->path);
    } else {
        wg_record_set_sort(&set);
        wg_pool_replace_all(f->base.pool, &set);
        f->base.status.connected = true;
        f->base.status.revision++;
        f->base.status.events_total++;
        f->base.status.last_contact_ms = wg_now_ms();
        wg_info("msg=\"registry file loaded\" file=%s instances=%zu invalid=%u", f->path, set.n,
                invalid);
        f->ever_loaded = true;
    }
    wg_record_set_clear(&set);
    wg_errors_free(&warnings);
}

static void debounce_cb(evutil_socket_t fd, short what, void *arg) { file_reload(arg); }

static void schedule_reload(struct file_registry *f)
{
    struct timeval tv = { 0, DEBOUNCE_MS * 1000 };
    event_add(f->debounce_ev, &tv);
}

static void inotify_cb(evutil_socket_t fd, short what, void *arg)
{
    struct file_registry *f = arg;
    char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
    bool relevant = false;
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n <= 0)
            break;
        for (char *p = buf; p < buf + n;) {
            struct inotify_event *ev = (struct inotify_event *)p;
            if (ev->mask & IN_Q_OVERFLOW || (ev->len && strcmp(ev->name, f->name) == 0))
                relevant = true;
            p += sizeof *ev + ev->len;
        }
    }
    if (relevant)
        schedule_reload(f);
}

/* The poll only catches what inotify missed (or all changes where inotify is
 * unavailable). A writer rewriting the file in place may be half-way through
 * when we look, so a change the poll sees is trusted only once the file has
 * stayed the same for a whole poll interval. */
static void poll_cb(evutil_socket_t fd, short what, void *arg)
{
    struct file_registry *f = arg;
    struct stat before = f->last;
    bool had = f->have_last;
    if (!stat_changed(f) && !(!f->ever_loaded && f->have_last))
        return;
    struct stat now = f->last;
    bool have = f->have_last;
    bool stable = f->poll_seen && have == f->poll_have && (!have ||
                  (now.st_ino == f->poll_stat.st_ino && now.st_size == f->poll_stat.st_size &&
                   now.st_mtim.tv_sec == f->poll_stat.st_mtim.tv_sec &&
                   now.st_mtim.tv_nsec == f->poll_stat.st_mtim.tv_nsec));
    if (stable) {
        f->poll_seen = false;
        schedule_reload(f);
        return;
    }
    /* Not yet: remember what we saw, and look again at the next poll. */
    f->poll_seen = true;
    f->poll_stat = now;
    f->poll_have = have;
    f->last = before;
    f->have_last = had;
}

static int file_start(struct wg_registry *r)
{
    struct file_registry *f = (struct file_registry *)r;
    f->inotify_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (f->inotify_fd >= 0 &&
        inotify_add_watch(f->inotify_fd, f->dir,
                          IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_MOVED_FROM) < 0) {
        wg_warn("msg=\"inotify unavailable, polling\" dir=%s error=\"%s\"", f->dir, strerror(errno));
        close(f->inotify_fd);
        f->inotify_fd = -1;
    }
    if (f->inotify_fd >= 0) {
        f->inotify_ev = event_new(r->base, f->inotify_fd, EV_READ | EV_PERSIST, inotify_cb, f);
        if (!f->inotify_ev || event_add(f->inotify_ev, NULL) < 0)
            return -1;
    }
    f->poll_ev = event_new(r->base, -1, EV_PERSIST, poll_cb, f);
    f->debounce_ev = evtimer_new(r->base, debounce_cb, f);
    struct timeval tv = { POLL_MS / 1000, (POLL_MS % 1000) * 1000 };
    if (!f->poll_ev || !f->debounce_ev || event_add(f->poll_ev, &tv) < 0)
        return -1;
    file_reload(f);
    return 0;
}

static void file_free(struct wg_registry *r)
{
    struct file_registry *f = (struct file_registry *)r;
    if (f->inotify_ev)
        event_free(f->inotify_ev);
    if (f->poll_ev)
        event_free(f->poll_ev);
    if (f->debounce_ev)
        event_free(f->debounce_ev);
    if (f->inotify_fd >= 0)
        close(f->inotify_fd);
    free(f->path);
    free(f->dir);
    free(f);
}

static const struct wg_registry_ops file_ops = { "file", file_start, file_free };

struct wg_registry *wg_registry_file_new(const char *path, struct event_base *base,
                                         struct wg_pool *pool)
{
    struct file_registry *f = calloc(1, sizeof *f);
    if (!f)
        return NULL;
    f->inotify_fd = -1;
    f->path = strdup(path);
    char *tmp = strdup(path);
    if (!f->path || !tmp)
        goto fail;
    f->dir = strdup(dirname(tmp));
    free(tmp);
    if (!f->dir)
        goto fail;
    const char *slash = strrchr(f->path, '/');
    f->name = slash ? slash + 1 : f->path;
    f->base.ops = &file_ops;
    f->base.base = base;
    f->base.pool = pool;
    f->base.status.source = "file";
    return &f->base;
fail:
    file_free(&f->base);
    return NULL;
}
