/* random — weighted random choice with the worker's own PRNG.
 *
 * The fast path draws from the static weights with a binary search over
 * their prefix sums (built once per service version) and accepts the draw
 * when the member is routable, with probability effective/static weight
 * (slow start). That rejection keeps the choice exactly proportional to the
 * effective weights of the routable members. After a few rejected draws
 * (most of the weight unroutable) one linear pass draws exactly instead
 * (wg_balance_pick_linear).
 * No per-worker state. */
#include <stdlib.h>

#include "balance_sched.h"

#define RANDOM_DRAWS 8

struct random_shared {
    uint32_t n;
    uint64_t total;                 /* sum of static weights */
    uint64_t upto[];                /* upto[k]: weights of members 0..k */
};

static void *random_shared_new(const struct wg_pool_service *svc)
{
    struct random_shared *r = malloc(sizeof *r + svc->n_members * sizeof r->upto[0]);
    if (!r)
        return NULL;
    r->n = svc->n_members;
    r->total = 0;
    for (uint32_t k = 0; k < svc->n_members; k++)
        r->upto[k] = r->total += svc->members[k].weight;
    return r;
}

static void random_shared_free(void *shared) { free(shared); }

/* The first member whose prefix sum exceeds x (x < total). Branch-free
 * halving (the answer stays in [lo, lo + len - 1]): the draws are random,
 * so a branching search would mispredict at every step. */
static uint32_t member_at(const struct random_shared *r, uint64_t x)
{
    uint32_t lo = 0, len = r->n;
    while (len > 1) {
        uint32_t half = len / 2;
        lo = r->upto[lo + half - 1] <= x ? lo + half : lo;
        len -= half;
    }
    return lo;
}

static const struct wg_member *random_pick(struct wg_pick *p)
{
    const struct random_shared *r = p->svc->balance_shared;
    for (int d = 0; r && r->total && d < RANDOM_DRAWS; d++) {
        const struct wg_member *m = &p->svc->members[member_at(r, wg_rng_below(p->rng, r->total))];
        if (!wg_balance_routable(p, m))
            continue;
        uint32_t w = wg_balance_weight(p, m);
        if (w >= m->weight || wg_rng_below(p->rng, m->weight) < w)
            return m;
    }
    return wg_balance_pick_linear(p, p->svc->members, p->svc->n_members);
}

const struct wg_balance_ops wg_balance_random = {
    .name = "random",
    .shared_new = random_shared_new,
    .shared_free = random_shared_free,
    .pick = random_pick,
};
