/* least_conn — the member with the fewest active connections (tcp) or
 * in-flight requests (http) relative to its effective weight, in O(log n)
 * per pick.
 *
 * `active` is an atomic shared by all workers, read relaxed: a pick may be
 * off by the few picks other workers make at the same moment, which is the
 * usual price of lock-free least-connections and evens out at once.
 *
 * The worker's state is an indexed heap over the members (balance_sched.h)
 * holding the `active` it last read: the candidate on top is re-read before
 * it is used, and two members are re-read at every pick in turn, so a
 * member that became less busy is seen within n/2 picks. Ties are broken
 * earliest-deadline-first on a clock each member advances by 1/weight when
 * picked: tied (idle) members share by weight, and equal ones alternate. */
#include "balance_sched.h"

static void *lc_state_new(const struct wg_pool_service *svc) { return wg_lc_new(svc->n_members); }

static void lc_state_free(void *state) { wg_lc_free(state); }

static const struct wg_member *lc_pick(struct wg_pick *p)
{
    return wg_lc_pick(p->state, p, p->svc->members, p->svc->n_members);
}

const struct wg_balance_ops wg_balance_least_conn = {
    .name = "least_conn",
    .state_new = lc_state_new,
    .state_free = lc_state_free,
    .pick = lc_pick,
};
