/* round_robin — smooth weighted round robin in O(log n) per pick.
 *
 * The worker's state is a WF2Q+ scheduler over the service's members
 * (balance_sched.h): each member is picked in proportion to its effective
 * weight (slow start applies at each of its picks), interleaved with the
 * others — a member whose share is under half is never picked twice in a
 * row, and none runs ahead of its share by more than one pick. Members
 * that go down between picks are skipped, and the scheduler is rebuilt
 * when the service's health generation moves. */
#include "balance_sched.h"

static void *rr_state_new(const struct wg_pool_service *svc) { return wg_wrr_new(svc->n_members); }

static void rr_state_free(void *s) { wg_wrr_free(s); }

static const struct wg_member *rr_pick(struct wg_pick *p)
{
    return wg_wrr_pick(p->state, p, p->svc->members, p->svc->n_members);
}

const struct wg_balance_ops wg_balance_round_robin = {
    .name = "round_robin",
    .state_new = rr_state_new,
    .state_free = rr_state_free,
    .pick = rr_pick,
};
