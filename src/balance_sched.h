/* balance_sched — the worker-local pick structures behind round_robin and
 * least_conn, in O(log n) per pick (internal to the balance module).
 *
 * Each structure works over ONE member array: a service's `members`, or any
 * group of them (a zone x priority group, say) held as its own array of
 * struct wg_member. A policy that picks within groups keeps one structure
 * per group; the structure never looks at p->svc->members itself, only at
 * the array it is given (the same array, in the same order, at every pick).
 *
 * Health arrives as atomics, not as new snapshots (pool.h). So that the
 * structures stay correct:
 *  - Every candidate is checked with wg_balance_routable() before it is
 *    returned: no pick lands on an unhealthy, draining or full instance.
 *  - A structure holds the members that were routable by health (healthy,
 *    or not draining in panic mode) with weight > 0 when it was built, and
 *    is rebuilt, O(n), when the service's health_generation moves or the
 *    pick's panic decision differs from the build's.
 *  - A candidate that is not routable for this pick (at max_connections,
 *    tried already, or gone down since the generation was read) is set
 *    aside and put back unchanged after the pick; after WG_SCHED_SKIPS such
 *    candidates the pick falls back to an exact linear draw
 *    (wg_balance_pick_linear), so a pick is O(log n) while fewer than that
 *    many of the best candidates are unusable, and O(n) only beyond.
 */
#ifndef WAYGATE_BALANCE_SCHED_H
#define WAYGATE_BALANCE_SCHED_H

#include "waygate/balance.h"

#define WG_SCHED_SKIPS 32

/* Smooth weighted round robin: WF2Q+ (worst-case fair weighted fair
 * queueing). Each member has a virtual start and finish time; a member is
 * eligible once its start is not after the virtual clock, and the eligible
 * member with the earliest finish is picked. Its share over any window is
 * within one pick of its weight's share, and a member whose share is under
 * half is never picked twice in a row. */
struct wg_wrr;
struct wg_wrr *wg_wrr_new(uint32_t n);
void wg_wrr_free(struct wg_wrr *s);
const struct wg_member *wg_wrr_pick(struct wg_wrr *s, struct wg_pick *p,
                                    const struct wg_member *members, uint32_t n);

/* Least active per unit of effective weight: an indexed min-heap ordered by
 * active/weight, then (ties) by an earliest-deadline-first clock advanced by
 * 1/weight at each pick, so idle and tied members share by weight.
 * `active` is an atomic every worker changes, so the heap holds what this
 * worker last saw: the candidate on top is re-read before it is used (a
 * member busier than seen moves down at once), its own picks count +1 at
 * once, and two members per pick are re-read in turn, so a member that got
 * less busy is seen within n/2 picks. */
struct wg_lc;
struct wg_lc *wg_lc_new(uint32_t n);
void wg_lc_free(struct wg_lc *s);
const struct wg_member *wg_lc_pick(struct wg_lc *s, struct wg_pick *p,
                                   const struct wg_member *members, uint32_t n);

/* An exact weighted random draw over the routable members of `members`
 * (effective weights), O(n): the fallback of every policy. NULL when none. */
const struct wg_member *wg_balance_pick_linear(struct wg_pick *p, const struct wg_member *members,
                                               uint32_t n);

#endif
