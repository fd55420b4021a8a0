/* least_conn — the member with the fewest active connections (tcp) or
 * in-flight requests (http) relative to its effective weight.
 *
 * `active` is an atomic shared by all workers, read relaxed: a pick may be
 * off by the few picks other workers make at the same moment, which is the
 * usual price of lock-free least-connections and evens out at once.
 *
 * Ties are broken by smooth weighted round robin among the tied members
 * (nginx's least_conn does the same). A plain rotating start index would
 * give every idle member the same share whatever its weight, and idle is
 * the common case for a lightly loaded service; the smooth WRR scores also
 * rotate, so equal members still alternate. Scores and the scratch list of
 * tied members are per worker, sized for one service version. */
#include <stdlib.h>

#include "waygate/balance.h"

struct lc_tie {
    uint32_t k;                     /* member index */
    uint32_t w;                     /* its effective weight */
};

struct lc_state {
    uint32_t n;
    struct lc_tie *ties;            /* scratch, n entries */
    int64_t score[];                /* smooth WRR among ties, one per member */
};

static void *lc_state_new(const struct wg_pool_service *svc)
{
    struct lc_state *s = calloc(1, sizeof *s + svc->n_members * sizeof s->score[0]);
    if (!s)
        return NULL;
    s->n = svc->n_members;
    s->ties = calloc(svc->n_members ? svc->n_members : 1, sizeof s->ties[0]);
    if (!s->ties) {
        free(s);
        return NULL;
    }
    return s;
}

static void lc_state_free(void *state)
{
    struct lc_state *s = state;
    if (s)
        free(s->ties);
    free(s);
}

/* Smooth WRR over the tied members (nginx's algorithm, see round_robin). */
static uint32_t lc_break_tie(struct lc_state *st, uint32_t n_ties)
{
    int64_t total = 0;
    uint32_t best = 0;
    for (uint32_t t = 0; t < n_ties; t++) {
        const struct lc_tie *e = &st->ties[t];
        st->score[e->k] += e->w;
        total += e->w;
        if (st->score[e->k] > st->score[st->ties[best].k])
            best = t;
    }
    st->score[st->ties[best].k] -= total;
    return st->ties[best].k;
}

static const struct wg_member *lc_pick(struct wg_pick *p)
{
    const struct wg_pool_service *svc = p->svc;
    struct lc_state *st = p->state;
    const struct wg_member *best = NULL;
    uint64_t best_active = 0, best_w = 1;
    uint32_t n_ties = 0;
    for (uint32_t k = 0; k < svc->n_members; k++) {
        const struct wg_member *m = &svc->members[k];
        uint64_t active = atomic_load_explicit(&m->inst->active, memory_order_relaxed);
        /* Effective weight <= static weight: already busier than the best
         * on its full weight means busier still on its effective one. */
        if (best && active * best_w > best_active * m->weight)
            continue;
        if (!wg_balance_routable(p, m))
            continue;
        uint64_t w = wg_balance_weight(p, m);
        /* active/w < best_active/best_w, without division (fits: 32 x 32 bits) */
        if (!best || active * best_w < best_active * w) {
            best = m;
            best_active = active;
            best_w = w;
            n_ties = 0;
        } else if (active * best_w != best_active * w) {
            continue;
        }
        if (st)                         /* no state (out of memory): first best */
            st->ties[n_ties++] = (struct lc_tie){ k, (uint32_t)w };
    }
    if (n_ties < 2)
        return best;
    return &svc->members[lc_break_tie(st, n_ties)];
}

const struct wg_balance_ops wg_balance_least_conn = {
    .name = "least_conn",
    .state_new = lc_state_new,
    .state_free = lc_state_free,
    .pick = lc_pick,
};
