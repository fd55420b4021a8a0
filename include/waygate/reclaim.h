/* reclaim — quiescent-state-based reclamation (QSBR) of published objects.
 *
 * Readers (worker threads) load a published pointer and use it freely until
 * their next quiescent point; they never lock and never write shared state
 * except their own `seen` epoch. A writer (the control thread) retires an
 * object after unpublishing it; the object is freed only once every
 * registered reader has passed a quiescent point after the retirement.
 *
 * Promises and rules:
 *  - wg_reclaim_quiescent() is called by a reader at the end of each event
 *    loop iteration, when it holds no pointer to a retired object except
 *    through a reference count it took itself (DESIGN §3 rule 3).
 *  - A reader that may sleep for long must be woken by the writer after a
 *    retire (the worker module does this with event_active), so retired
 *    objects are freed in bounded time.
 *  - retire/poll are called by ONE writer thread at a time.
 *  - Reader registration is rare (thread start/stop) and takes a mutex.
 */
#ifndef WAYGATE_RECLAIM_H
#define WAYGATE_RECLAIM_H

#include <stddef.h>
#include <stdint.h>

struct wg_reclaim;
struct wg_reclaim_reader;

struct wg_reclaim *wg_reclaim_new(void);
/* Frees every object still retired, whatever the readers (at exit). */
void wg_reclaim_free(struct wg_reclaim *rc);

struct wg_reclaim_reader *wg_reclaim_register(struct wg_reclaim *rc);
void wg_reclaim_unregister(struct wg_reclaim *rc, struct wg_reclaim_reader *r);
void wg_reclaim_quiescent(struct wg_reclaim_reader *r);

/* Writer: hand over an unpublished object; free_fn(obj) runs later, on the
 * writer's thread, from wg_reclaim_poll(). Returns 0, or -1 on ENOMEM (the
 * object is then freed only after a synchronous wait for all readers). */
int wg_reclaim_retire(struct wg_reclaim *rc, void *obj, void (*free_fn)(void *));
/* Writer: free every retired object all readers have moved past.
 * Returns the number still pending. */
size_t wg_reclaim_poll(struct wg_reclaim *rc);
size_t wg_reclaim_pending(const struct wg_reclaim *rc);

#endif
