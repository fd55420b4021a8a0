/* p2c — power of two random choices on active requests, weighted (Envoy's
 * LEAST_REQUEST shape): draw two distinct routable members at random by
 * effective weight, keep the one with fewer active requests per unit of
 * weight; on a tie keep the first draw, so idle members share by weight.
 *
 * The draws are the random policy's (same prefix sums, built by the same
 * shared_new): the second draw runs with the first member marked as tried,
 * which makes the two distinct without a retry loop. With one routable
 * member, that member. No per-worker state. */
#include "waygate/balance.h"

static void *p2c_shared_new(const struct wg_pool_service *svc)
{
    return wg_balance_random.shared_new(svc);
}

static void p2c_shared_free(void *shared) { wg_balance_random.shared_free(shared); }

static const struct wg_member *p2c_pick(struct wg_pick *p)
{
    const struct wg_member *a = wg_balance_random.pick(p);
    if (!a || p->n_tried >= WG_MAX_TRIES)
        return a;
    p->tried[p->n_tried++] = a->inst;
    const struct wg_member *b = wg_balance_random.pick(p);
    p->n_tried--;
    if (!b)
        return a;
    uint64_t wa = wg_balance_weight(p, a), wb = wg_balance_weight(p, b);
    uint64_t ra = atomic_load_explicit(&a->inst->active, memory_order_relaxed);
    uint64_t rb = atomic_load_explicit(&b->inst->active, memory_order_relaxed);
    return rb * wa < ra * wb ? b : a;   /* rb/wb < ra/wa */
}

const struct wg_balance_ops wg_balance_p2c = {
    .name = "p2c",
    .shared_new = p2c_shared_new,
    .shared_free = p2c_shared_free,
    .pick = p2c_pick,
};
