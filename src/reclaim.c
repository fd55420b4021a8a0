/* reclaim — see include/waygate/reclaim.h
 *
 * One global epoch counter. Retiring an object bumps the epoch and tags the
 * object with the new value e. A reader's quiescent point copies the global
 * epoch into its own slot. The object is safe to free once every reader's
 * slot is >= e: each such reader observed the epoch bump, which happened
 * after the object was unpublished, so it can no longer reach the object.
 * All epoch operations are sequentially consistent.
 */
#include "waygate/reclaim.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>

#define MAX_READERS 1024                /* >= the most workers a config allows (1024) */
#define OFFLINE UINT64_MAX

struct wg_reclaim_reader {
    _Alignas(64) _Atomic uint64_t seen;
    struct wg_reclaim *rc;
    int in_use;
};

struct retired {
    void *obj;
    void (*free_fn)(void *);
    uint64_t epoch;
    struct retired *next;
};

struct wg_reclaim {
    _Atomic uint64_t epoch;
    pthread_mutex_t lock;               /* reader registration only */
    struct wg_reclaim_reader readers[MAX_READERS];
    _Atomic unsigned n_readers;         /* high-water mark of used slots */
    struct retired *head, *tail;        /* oldest first; writer only */
    size_t pending;
};

struct wg_reclaim *wg_reclaim_new(void)
{
    struct wg_reclaim *rc = calloc(1, sizeof *rc);
    if (!rc)
        return NULL;
    atomic_init(&rc->epoch, 1);
    pthread_mutex_init(&rc->lock, NULL);
    for (int i = 0; i < MAX_READERS; i++)
        atomic_init(&rc->readers[i].seen, OFFLINE);
    return rc;
}

void wg_reclaim_free(struct wg_reclaim *rc)
{
    if (!rc)
        return;
    for (struct retired *r = rc->head, *next; r; r = next) {
        next = r->next;
        r->free_fn(r->obj);
        free(r);
    }
    pthread_mutex_destroy(&rc->lock);
    free(rc);
}

struct wg_reclaim_reader *wg_reclaim_register(struct wg_reclaim *rc)
{
    struct wg_reclaim_reader *found = NULL;
    pthread_mutex_lock(&rc->lock);
    for (unsigned i = 0; i < MAX_READERS; i++) {
        struct wg_reclaim_reader *r = &rc->readers[i];
        if (r->in_use)
            continue;
        r->in_use = 1;
        r->rc = rc;
        atomic_store(&r->seen, atomic_load(&rc->epoch));
        if (i >= atomic_load(&rc->n_readers))
            atomic_store(&rc->n_readers, i + 1);
        found = r;
        break;
    }
    pthread_mutex_unlock(&rc->lock);
    return found;
}

void wg_reclaim_unregister(struct wg_reclaim *rc, struct wg_reclaim_reader *r)
{
    if (!r)
        return;
    pthread_mutex_lock(&rc->lock);
    atomic_store(&r->seen, OFFLINE);
    r->in_use = 0;
    pthread_mutex_unlock(&rc->lock);
}

void wg_reclaim_quiescent(struct wg_reclaim_reader *r)
{
    atomic_store(&r->seen, atomic_load(&r->rc->epoch));
}

static uint64_t min_seen(struct wg_reclaim *rc)
{
    uint64_t min = OFFLINE;
    unsigned n = atomic_load(&rc->n_readers);
    for (unsigned i = 0; i < n; i++) {
        uint64_t s = atomic_load(&rc->readers[i].seen);
        if (s < min)
            min = s;
    }
    return min;
}

int wg_reclaim_retire(struct wg_reclaim *rc, void *obj, void (*free_fn)(void *))
{
    uint64_t e = atomic_fetch_add(&rc->epoch, 1) + 1;
    struct retired *r = malloc(sizeof *r);
    if (!r) {
        /* No memory to defer: wait until every reader has moved past. */
        while (min_seen(rc) < e)
            sched_yield();
        free_fn(obj);
        return -1;
    }
    *r = (struct retired){ .obj = obj, .free_fn = free_fn, .epoch = e };
    if (rc->tail)
        rc->tail->next = r;
    else
        rc->head = r;
    rc->tail = r;
    rc->pending++;
    return 0;
}

size_t wg_reclaim_poll(struct wg_reclaim *rc)
{
    if (!rc->head)
        return 0;
    uint64_t min = min_seen(rc);
    while (rc->head && rc->head->epoch <= min) {
        struct retired *r = rc->head;
        rc->head = r->next;
        if (!rc->head)
            rc->tail = NULL;
        rc->pending--;
        r->free_fn(r->obj);
        free(r);
    }
    return rc->pending;
}

size_t wg_reclaim_pending(const struct wg_reclaim *rc) { return rc->pending; }
