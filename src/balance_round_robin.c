/* round_robin — smooth weighted round robin (nginx's algorithm).
 *
 * Each pick adds every routable member's effective weight to its running
 * score, takes the highest score and subtracts the total from it. Over one
 * cycle each member is picked in proportion to its weight, interleaved (no
 * burst to the heaviest). Scores are per worker, one per member. */
#include <stdlib.h>

#include "waygate/balance.h"

struct rr_state {
    uint32_t n;
    int64_t score[];
};

static void *rr_state_new(const struct wg_pool_service *svc)
{
    struct rr_state *s = calloc(1, sizeof *s + svc->n_members * sizeof s->score[0]);
    if (s)
        s->n = svc->n_members;
    return s;
}

static void rr_state_free(void *s) { free(s); }

static const struct wg_member *rr_pick(struct wg_pick *p)
{
    const struct wg_pool_service *svc = p->svc;
    struct rr_state *st = p->state;
    const struct wg_member *best = NULL;
    int64_t total = 0, best_score = 0;
    uint32_t best_k = 0;
    for (uint32_t k = 0; k < svc->n_members; k++) {
        const struct wg_member *m = &svc->members[k];
        if (!wg_balance_routable(p, m))
            continue;
        int64_t w = wg_balance_weight(p, m);
        total += w;
        if (!st)                        /* no state (out of memory): first routable */
            return m;
        st->score[k] += w;
        if (!best || st->score[k] > best_score) {
            best = m;
            best_score = st->score[k];
            best_k = k;
        }
    }
    if (best)
        st->score[best_k] -= total;
    return best;
}

const struct wg_balance_ops wg_balance_round_robin = {
    .name = "round_robin",
    .state_new = rr_state_new,
    .state_free = rr_state_free,
    .pick = rr_pick,
};
