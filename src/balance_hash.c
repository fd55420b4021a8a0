/* hash — consistent hashing with a weighted Maglev table.
 *
 * Why Maglev and not a ring of virtual nodes: a lookup is one multiply and
 * one array load (a ring is a binary search over 100+ points per member);
 * each member owns its share of the table to within one slot, so weights
 * hold to a fraction of a percent (a ring needs thousands of points per
 * member to get within 2%); and the next slots after a key are a
 * pseudo-random sequence of members, so the keys of a member that is down
 * spread over all the others instead of piling onto one ring neighbour.
 * The price is a small extra movement when the member set changes (about
 * 1% of the other members' keys for one member of 10 removed, at 400 slots
 * per member) and the table's
 * memory: 4 bytes a slot, 16 KiB for services of up to 40 members, built
 * once per service version on the control thread and immutable afterwards.
 *
 * Table size: the first prime after the smallest of 4096 x 4^k that holds
 * 100 x (members with weight > 0): 4099, 16411, 65537, 262147, ... Prime
 * so that every skip walks the whole table; in steps of 4 so that adding or
 * removing members rarely changes the size (a new size moves every key).
 * The floor is small because a registry of 10,000 small services holds
 * 10,000 tables and a change rebuilds one: at the former floor of 65,537
 * slots that was 2.6 GB and 4 ms per change; at 4,099, 160 MB and 0.2 ms.
 *
 * Weighted population: each member gets a quota of slots proportional to
 * its weight (to within one slot); members take turns claiming their next
 * preferred free slot (Maglev's round robin) until their quota is used. Static weights only: slow start does not apply to hashing, since
 * shifting keys while an instance warms up would defeat stickiness.
 *
 * A key whose member cannot take it (unhealthy, at max_connections, or
 * already tried by this request) moves to the member of the next slot,
 * then the one after: deterministic, so every worker and every proxy with
 * the same instances agrees. Without a key (no client address, no such
 * header) the pick is smooth weighted round robin; the worker state is the
 * round robin's own. */
#include <stdlib.h>
#include <string.h>

#include "waygate/balance.h"

/* ---- the key hash (wyhash's mixing; little-endian reads everywhere) ---- */

#define HASH_K0 0xa0761d6478bd642fULL
#define HASH_K1 0xe7037ed1a0b428dbULL
#define HASH_K2 0x8ebc6af09c88c6e3ULL

static inline uint64_t mum(uint64_t a, uint64_t b)
{
    __uint128_t r = (__uint128_t)a * b;
    return (uint64_t)r ^ (uint64_t)(r >> 64);
}

static inline uint64_t load_le(const unsigned char *p, size_t n)
{
    uint64_t v = 0;
    for (size_t k = 0; k < n; k++)
        v |= (uint64_t)p[k] << (8 * k);
    return v;
}

uint64_t wg_balance_hash_bytes(const void *data, size_t len)
{
    const unsigned char *p = data;
    uint64_t seed = mum(HASH_K0, HASH_K2), a = 0, b = 0;
    if (len > 16) {
        size_t n = len;
        for (; n > 16; n -= 16, p += 16)
            seed = mum(load_le(p, 8) ^ HASH_K1, load_le(p + 8, 8) ^ seed);
        a = load_le(p + n - 16, 8);     /* the last 16 bytes, overlapping */
        b = load_le(p + n - 8, 8);
    } else if (len > 0) {
        size_t n = len < 8 ? len : 8;
        a = load_le(p, n);
        b = load_le(p + n, len - n);
    }
    return mum(HASH_K1 ^ len, mum(a ^ HASH_K1, b ^ seed));
}

/* ---- the Maglev table (control thread) ---- */

#define HASH_MIN_TABLE 4096u
#define HASH_SLOTS_PER_MEMBER 100u
#define HASH_MAX_TABLE (1u << 24)   /* 64 MiB; > 167,000 members get < 100 slots each */
#define HASH_PROBES 64u             /* next slots tried before a scan of the members */

struct maglev {
    uint32_t size;                  /* prime, or 0 when no member has weight */
    uint32_t slot[];                /* member index */
};

struct maglev_build {               /* one per member with weight > 0 */
    uint32_t member;
    uint32_t pos, skip;             /* next preferred slot; step through the table */
    uint64_t quota;                 /* slots still to claim */
};

static bool is_prime(uint32_t n)
{
    if (n < 2)
        return false;
    for (uint32_t d = 2; (uint64_t)d * d <= n; d++)
        if (n % d == 0)
            return false;
    return true;
}

static uint32_t table_size(uint32_t weighted)
{
    uint64_t want = (uint64_t)weighted * HASH_SLOTS_PER_MEMBER;
    uint32_t n = HASH_MIN_TABLE;
    while (n < want && n < HASH_MAX_TABLE)
        n *= 4;
    while (!is_prime(n))
        n++;
    return n;
}

/* Where the member prefers to be: its address is what holds sessions and
 * caches, and it survives a re-registration under a new id (a new lease). */
static void member_permutation(struct maglev_build *b, const struct wg_member *m, uint32_t size)
{
    const struct wg_instance *i = m->inst;
    uint64_t h = wg_balance_hash_bytes(i->addr_text, strlen(i->addr_text));
    b->pos = (uint32_t)(h % size);
    b->skip = (uint32_t)(mum(h, HASH_K2) % (size - 1)) + 1;
}

/* Quotas by cumulative rounding: each within one slot of weight x size /
 * total, and they add up to exactly `size`. Members left with no slot (a
 * weight under 1/size of the total) are dropped. Returns how many remain. */
static uint32_t assign_quotas(struct maglev_build *b, uint32_t n, uint32_t size, uint64_t total)
{
    uint64_t cum = 0, given = 0;
    uint32_t kept = 0;
    for (uint32_t k = 0; k < n; k++) {
        cum += b[k].quota;                      /* quota holds the weight here */
        uint64_t upto = (uint64_t)(((__uint128_t)cum * size) / total);
        b[k].quota = upto - given;
        given = upto;
        if (b[k].quota)
            b[kept++] = b[k];
    }
    return kept;
}

/* Maglev's round robin: each member in turn claims its next preferred free
 * slot, until its quota is used. */
static void populate(struct maglev *t, struct maglev_build *b, uint32_t live)
{
    uint32_t size = t->size;
    memset(t->slot, 0xff, (size_t)size * sizeof t->slot[0]);
    while (live) {
        uint32_t keep = 0;
        for (uint32_t k = 0; k < live; k++) {
            struct maglev_build *e = &b[k];
            while (t->slot[e->pos] != UINT32_MAX)
                if ((e->pos += e->skip) >= size)
                    e->pos -= size;
            t->slot[e->pos] = e->member;
            if (--e->quota)
                b[keep++] = *e;         /* members with quota left, in order */
        }
        live = keep;
    }
}

static void *hash_shared_new(const struct wg_pool_service *svc)
{
    uint32_t weighted = 0;
    uint64_t total = 0;
    for (uint32_t k = 0; k < svc->n_members; k++) {
        weighted += svc->members[k].weight > 0;
        total += svc->members[k].weight;
    }
    uint32_t size = weighted ? table_size(weighted) : 0;
    struct maglev *t = malloc(sizeof *t + (size_t)size * sizeof t->slot[0]);
    struct maglev_build *b = weighted ? calloc(weighted, sizeof *b) : NULL;
    if (!t || (weighted && !b))
        goto fail;
    t->size = size;
    uint32_t n = 0;
    for (uint32_t k = 0; k < svc->n_members; k++) {
        if (!svc->members[k].weight)
            continue;
        b[n].member = k;
        b[n].quota = svc->members[k].weight;
        member_permutation(&b[n++], &svc->members[k], size);
    }
    if (n)
        populate(t, b, assign_quotas(b, n, size, total));
    free(b);
    return t;
fail:
    free(b);
    free(t);
    return NULL;
}

static void hash_shared_free(void *shared) { free(shared); }

/* ---- picks (workers) ---- */

static void *hash_state_new(const struct wg_pool_service *svc)
{
    return wg_balance_round_robin.state_new(svc);
}

static void hash_state_free(void *state) { wg_balance_round_robin.state_free(state); }

/* After HASH_PROBES slots of members that cannot take the key (most of the
 * service down), scan the members after the key's own: still deterministic,
 * and bounded by the member count instead of the table size. */
static const struct wg_member *scan_after(struct wg_pick *p, uint32_t first)
{
    const struct wg_pool_service *svc = p->svc;
    for (uint32_t k = 1; k <= svc->n_members; k++) {
        const struct wg_member *m = &svc->members[(first + k) % svc->n_members];
        if (wg_balance_routable(p, m))
            return m;
    }
    return NULL;
}

static const struct wg_member *hash_pick(struct wg_pick *p)
{
    if (!p->has_hash)
        return wg_balance_round_robin.pick(p);
    const struct maglev *t = p->svc->balance_shared;
    if (!t || !t->size)
        return NULL;
    uint32_t s = (uint32_t)(((__uint128_t)p->hash * t->size) >> 64);
    uint32_t first = t->slot[s];
    for (uint32_t k = 0; k < HASH_PROBES; k++) {
        const struct wg_member *m = &p->svc->members[t->slot[s]];
        if (wg_balance_routable(p, m))
            return m;
        if (++s == t->size)
            s = 0;
    }
    return scan_after(p, first);
}

const struct wg_balance_ops wg_balance_hash = {
    .name = "hash",
    .shared_new = hash_shared_new,
    .shared_free = hash_shared_free,
    .state_new = hash_state_new,
    .state_free = hash_state_free,
    .pick = hash_pick,
};
