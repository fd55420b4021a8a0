/* balance_sched — see balance_sched.h
 *
 * Virtual times are 64-bit fixed point: a member of weight w advances by
 * WG_SCHED_SCALE / w per pick, the clock of the WF2Q+ scheduler by
 * WG_SCHED_SCALE / (sum of weights). They are compared by the sign of their
 * difference, so they may wrap: every time held is within 2^41 of the clock
 * (one step of a weight-1 member), far from 2^63. The rounding of a step is
 * below 10^-6 of it for weights under 10^6. */
#include "balance_sched.h"

#include <stdlib.h>
#include <string.h>

#define WG_SCHED_SCALE (1ULL << 40)
#define NONE UINT32_MAX

static inline bool before(uint64_t a, uint64_t b) { return (int64_t)(a - b) < 0; }

/* In the structure at all: weight, and healthy (any non-draining state in
 * panic mode). The rest of routability is per pick. */
static bool health_ok(const struct wg_pick *p, const struct wg_member *m)
{
    enum wg_health h = wg_instance_health(m->inst);
    return m->weight && (h == WG_HEALTH_HEALTHY || (p->panic && h != WG_HEALTH_DRAINING));
}

/* How far into its first step a member entering a structure starts: a
 * fixed pseudo-random fraction under half of it (by member index), so that
 * members of one weight do not all come due together (each gets its share
 * to within a pick, and the errors of a class cancel out instead of adding
 * up), and none starts so early that it runs ahead in a burst. */
static uint64_t phase(uint32_t k, uint64_t step)
{
    return step > 1 ? wg_balance_hash_bytes(&k, sizeof k) % (step / 2) : 0;
}

/* The structure must be (re)built for this pick: never built, a health
 * change since, or panic mode started or ended. Stores the generation to
 * build for in *generation. */
static bool must_build(const struct wg_pick *p, bool built, unsigned at, bool panic,
                       unsigned *generation)
{
    *generation = atomic_load_explicit(&p->svc->state->health_generation, memory_order_acquire);
    return !built || *generation != at || p->panic != panic;
}

/* ---- a 4-ary min-heap of (key, member) ----
 * Four children of 16 bytes share a cache line: half the depth of a binary
 * heap for the same misses per level. */

#define ARITY 4

struct ent {
    uint64_t key;
    uint32_t k;
};

struct heap {
    struct ent *v;
    uint32_t n;
};

static inline bool ent_less(struct ent a, struct ent b)
{
    return a.key != b.key ? before(a.key, b.key) : a.k < b.k;
}

/* Raise the entry at i, no higher than `top`. */
static void heap_rise(struct heap *h, uint32_t i, uint32_t top)
{
    struct ent e = h->v[i];
    while (i > top) {
        uint32_t up = (i - 1) / ARITY;
        if (!ent_less(e, h->v[up]))
            break;
        h->v[i] = h->v[up];
        i = up;
    }
    h->v[i] = e;
}

/* Floyd's bottom-up sift: the hole goes down to a leaf along the smaller
 * children (no comparison with the moving entry), which then rises. The
 * entries sifted here (a last leaf, a just-advanced time) belong near the
 * bottom, so this saves a comparison per level. */
static void heap_down(struct heap *h, uint32_t i)
{
    struct ent e = h->v[i];
    uint32_t top = i;
    for (;;) {
        uint32_t c = ARITY * i + 1, end = c + ARITY < h->n ? c + ARITY : h->n;
        if (c >= h->n)
            break;
        for (uint32_t j = c + 1; j < end; j++)
            if (ent_less(h->v[j], h->v[c]))
                c = j;
        h->v[i] = h->v[c];
        i = c;
    }
    h->v[i] = e;
    heap_rise(h, i, top);
}

static void heap_push(struct heap *h, uint64_t key, uint32_t k)
{
    h->v[h->n] = (struct ent){ key, k };
    heap_rise(h, h->n++, 0);
}

static struct ent heap_pop(struct heap *h)
{
    struct ent top = h->v[0];
    if (--h->n) {
        h->v[0] = h->v[h->n];
        heap_down(h, 0);
    }
    return top;
}

static void heap_make(struct heap *h)
{
    for (uint32_t i = h->n / ARITY + 1; i-- > 0;)
        if (i < h->n)
            heap_down(h, i);
}

/* ---- the exact fallback ---- */

const struct wg_member *wg_balance_pick_linear(struct wg_pick *p, const struct wg_member *members,
                                               uint32_t n)
{
    uint64_t total = 0;
    for (uint32_t k = 0; k < n; k++)
        if (wg_balance_routable(p, &members[k]))
            total += wg_balance_weight(p, &members[k]);
    if (!total)
        return NULL;
    uint64_t x = wg_rng_below(p->rng, total);
    const struct wg_member *last = NULL;
    for (uint32_t k = 0; k < n; k++) {
        const struct wg_member *m = &members[k];
        if (!wg_balance_routable(p, m))
            continue;
        uint64_t w = wg_balance_weight(p, m);
        if (x < w)
            return m;
        x -= w;
        last = m;
    }
    return last;        /* other workers' picks changed what is routable */
}

/* ---- WF2Q+ smooth weighted round robin ---- */

struct wg_wrr {
    uint32_t n;
    bool built, panic;
    unsigned generation;
    uint64_t vtime;                 /* the virtual clock */
    uint64_t total;                 /* sum of w[] */
    uint32_t last;                  /* member of the last pick, NONE = none */
    struct heap eligible;           /* start <= vtime, keyed by finish */
    struct heap pending;            /* start > vtime, keyed by start */
    uint64_t *start, *finish;
    uint32_t *w;                    /* weight of the current step; 0 = not held */
};

struct wg_wrr *wg_wrr_new(uint32_t n)
{
    size_t m = n ? n : 1;
    struct wg_wrr *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->n = n;
    s->last = NONE;
    s->eligible.v = malloc(m * sizeof(struct ent));
    s->pending.v = malloc(m * sizeof(struct ent));
    s->start = calloc(m, sizeof *s->start);
    s->finish = calloc(m, sizeof *s->finish);
    s->w = calloc(m, sizeof *s->w);
    if (!s->eligible.v || !s->pending.v || !s->start || !s->finish || !s->w) {
        wg_wrr_free(s);
        return NULL;
    }
    return s;
}

void wg_wrr_free(struct wg_wrr *s)
{
    if (!s)
        return;
    free(s->eligible.v);
    free(s->pending.v);
    free(s->start);
    free(s->finish);
    free(s->w);
    free(s);
}

/* Members held before keep their times; members that (re)enter start now. */
static void wrr_build(struct wg_wrr *s, struct wg_pick *p, const struct wg_member *members,
                      unsigned generation)
{
    s->eligible.n = s->pending.n = 0;
    s->total = 0;
    for (uint32_t k = 0; k < s->n; k++) {
        const struct wg_member *m = &members[k];
        if (!health_ok(p, m)) {
            s->w[k] = 0;
            continue;
        }
        uint32_t w = wg_balance_weight(p, m);
        if (!s->built || !s->w[k]) {
            s->start[k] = s->vtime - phase(k, WG_SCHED_SCALE / w);
            s->finish[k] = s->start[k] + WG_SCHED_SCALE / w;
        }
        s->w[k] = w;
        s->total += w;
        if (before(s->vtime, s->start[k]))
            s->pending.v[s->pending.n++] = (struct ent){ s->start[k], k };
        else
            s->eligible.v[s->eligible.n++] = (struct ent){ s->finish[k], k };
    }
    heap_make(&s->eligible);
    heap_make(&s->pending);
    s->built = true;
    s->panic = p->panic;
    s->generation = generation;
}

const struct wg_member *wg_wrr_pick(struct wg_wrr *s, struct wg_pick *p,
                                    const struct wg_member *members, uint32_t n)
{
    if (!s || s->n != n)
        return wg_balance_pick_linear(p, members, n);
    unsigned generation;
    if (must_build(p, s->built, s->generation, s->panic, &generation))
        wrr_build(s, p, members, generation);
    uint32_t skipped[WG_SCHED_SKIPS], n_skipped = 0, k = 0;
    const struct wg_member *got = NULL;
    bool held = false;              /* the last pick's member, set aside */
    uint32_t prev = s->last;
    for (;;) {
        while (s->pending.n && !before(s->vtime, s->pending.v[0].key)) {
            uint32_t j = heap_pop(&s->pending).k;
            heap_push(&s->eligible, s->finish[j], j);
        }
        if (!s->eligible.n) {
            if (!s->pending.n)
                break;
            s->vtime = s->pending.v[0].key;     /* nothing eligible: jump */
            continue;
        }
        k = s->eligible.v[0].k;
        if (!wg_balance_routable(p, &members[k])) {
            if (n_skipped == WG_SCHED_SKIPS)
                break;
            skipped[n_skipped++] = heap_pop(&s->eligible).k;
            continue;
        }
        /* A member under half the weight never follows itself: it waits
         * one pick while any other member can go (taking the next member
         * early by a jump of the clock if need be). */
        if (k == prev && !held && 2 * (uint64_t)s->w[k] < s->total) {
            heap_pop(&s->eligible);
            held = true;
            continue;
        }
        got = &members[k];
        break;
    }
    bool at_top = got != NULL;      /* else only the held member can go */
    if (!got && held) {
        k = prev;
        got = &members[k];
        held = false;
    }
    if (got) {
        uint32_t w = wg_balance_weight(p, got);
        s->total += (uint64_t)w - s->w[k];
        s->w[k] = w;
        s->start[k] = s->finish[k];
        s->finish[k] = s->start[k] + WG_SCHED_SCALE / w;
        s->vtime += WG_SCHED_SCALE / s->total;
        s->last = k;
        if (at_top && before(s->vtime, s->start[k])) {
            heap_pop(&s->eligible);
            heap_push(&s->pending, s->start[k], k);
        } else if (at_top) {
            s->eligible.v[0].key = s->finish[k];
            heap_down(&s->eligible, 0);
        } else if (before(s->vtime, s->start[k])) {
            heap_push(&s->pending, s->start[k], k);
        } else {
            heap_push(&s->eligible, s->finish[k], k);
        }
    }
    if (held)
        heap_push(&s->eligible, s->finish[prev], prev);
    for (uint32_t j = 0; j < n_skipped; j++)
        heap_push(&s->eligible, s->finish[skipped[j]], skipped[j]);
    if (!got && n_skipped == WG_SCHED_SKIPS)
        return wg_balance_pick_linear(p, members, n);
    return got;
}

/* ---- least active per weight: an indexed heap ----
 * Entries carry their keys (no indirection while sifting): the load is
 * active x 2^32 / weight, which orders exactly as active / weight does for
 * weights up to 65,536 and keeps equal ratios equal (2/100 and 6/300). */

struct lent {
    uint64_t load;
    uint64_t deadline;              /* tie-break: earliest first */
    uint32_t k;
};

struct wg_lc {
    uint32_t n;
    bool built, panic;
    unsigned generation;
    uint32_t size;                  /* members in the heap */
    uint32_t cursor;                /* next member to re-read */
    uint64_t clock;                 /* deadline of the last pick */
    struct lent *heap;
    uint32_t *pos;                  /* heap position of each member, NONE = not held */
    uint32_t *active;               /* as last read */
    uint32_t *w;                    /* effective weight as last read */
};

static inline bool lc_less(const struct lent *a, const struct lent *b)
{
    if (a->load != b->load)
        return a->load < b->load;
    if (a->deadline != b->deadline)
        return before(a->deadline, b->deadline);
    return a->k < b->k;
}

static inline uint64_t lc_load(uint32_t active, uint32_t w)
{
    return ((uint64_t)active << 32) / w;
}

static inline void lc_place(struct wg_lc *s, uint32_t i, struct lent e)
{
    s->heap[i] = e;
    s->pos[e.k] = i;
}

static void lc_up(struct wg_lc *s, uint32_t i)
{
    struct lent e = s->heap[i];
    while (i) {
        uint32_t up = (i - 1) / ARITY;
        if (!lc_less(&e, &s->heap[up]))
            break;
        lc_place(s, i, s->heap[up]);
        i = up;
    }
    lc_place(s, i, e);
}

static void lc_down(struct wg_lc *s, uint32_t i)
{
    struct lent e = s->heap[i];
    for (;;) {
        uint32_t c = ARITY * i + 1, end = c + ARITY < s->size ? c + ARITY : s->size;
        if (c >= s->size)
            break;
        for (uint32_t j = c + 1; j < end; j++)
            if (lc_less(&s->heap[j], &s->heap[c]))
                c = j;
        if (!lc_less(&s->heap[c], &e))
            break;
        lc_place(s, i, s->heap[c]);
        i = c;
    }
    lc_place(s, i, e);
}

static void lc_fix(struct wg_lc *s, uint32_t k)
{
    uint32_t i = s->pos[k];
    lc_up(s, i);
    if (s->pos[k] == i)
        lc_down(s, i);
}

static struct lent lc_remove_top(struct wg_lc *s)
{
    struct lent top = s->heap[0];
    s->pos[top.k] = NONE;
    if (--s->size) {
        lc_place(s, 0, s->heap[s->size]);
        lc_down(s, 0);
    }
    return top;
}

static void lc_insert(struct wg_lc *s, struct lent e)
{
    lc_place(s, s->size, e);
    lc_up(s, s->size++);
}

struct wg_lc *wg_lc_new(uint32_t n)
{
    size_t m = n ? n : 1;
    struct wg_lc *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->n = n;
    s->heap = malloc(m * sizeof *s->heap);
    s->pos = malloc(m * sizeof *s->pos);
    s->active = calloc(m, sizeof *s->active);
    s->w = calloc(m, sizeof *s->w);
    if (!s->heap || !s->pos || !s->active || !s->w) {
        wg_lc_free(s);
        return NULL;
    }
    for (uint32_t k = 0; k < n; k++)
        s->pos[k] = NONE;
    return s;
}

void wg_lc_free(struct wg_lc *s)
{
    if (!s)
        return;
    free(s->heap);
    free(s->pos);
    free(s->active);
    free(s->w);
    free(s);
}

static uint32_t read_active(const struct wg_member *m)
{
    return atomic_load_explicit(&m->inst->active, memory_order_relaxed);
}

static void lc_build(struct wg_lc *s, struct wg_pick *p, const struct wg_member *members,
                     unsigned generation)
{
    /* Deadlines of the members held stay; the heap is rebuilt in place. */
    uint32_t size = 0;
    for (uint32_t i = 0; i < s->size; i++) {
        struct lent e = s->heap[i];
        s->pos[e.k] = NONE;
        if (health_ok(p, &members[e.k]))
            s->heap[size++] = e;
    }
    for (uint32_t i = 0; i < size; i++)
        s->pos[s->heap[i].k] = i;
    for (uint32_t k = 0; k < s->n; k++) {
        const struct wg_member *m = &members[k];
        if (!health_ok(p, m))
            continue;
        s->active[k] = read_active(m);
        s->w[k] = wg_balance_weight(p, m);
        struct lent e = { lc_load(s->active[k], s->w[k]), 0, k };
        if (s->pos[k] == NONE) {
            e.deadline = s->clock + phase(k, WG_SCHED_SCALE / s->w[k]);
            s->pos[k] = size;
            s->heap[size++] = e;
        } else {
            e.deadline = s->heap[s->pos[k]].deadline;
            s->heap[s->pos[k]] = e;
        }
    }
    s->size = size;
    for (uint32_t i = s->size / ARITY + 1; i-- > 0;)
        if (i < s->size)
            lc_down(s, i);
    s->built = true;
    s->panic = p->panic;
    s->generation = generation;
}

/* Re-read member k (held); true when its place may have changed. A
 * deadline far behind the clock (a member busy for long) is brought to the
 * clock, so that times stay comparable. */
static bool lc_refresh(struct wg_lc *s, struct wg_pick *p, const struct wg_member *m, uint32_t k)
{
    uint32_t a = read_active(m), w = wg_balance_weight(p, m);
    struct lent *e = &s->heap[s->pos[k]];
    bool lagging = (int64_t)(s->clock - e->deadline) > (int64_t)(WG_SCHED_SCALE << 10);
    if (a == s->active[k] && w == s->w[k] && !lagging)
        return false;
    s->active[k] = a;
    s->w[k] = w;
    e->load = lc_load(a, w);
    if (lagging)
        e->deadline = s->clock;
    lc_fix(s, k);
    return true;
}

/* Exact least active per weight over the routable members, O(n). */
static const struct wg_member *lc_linear(struct wg_pick *p, const struct wg_member *members,
                                         uint32_t n)
{
    const struct wg_member *best = NULL;
    uint64_t best_active = 0, best_w = 1;
    for (uint32_t k = 0; k < n; k++) {
        const struct wg_member *m = &members[k];
        if (!wg_balance_routable(p, m))
            continue;
        uint64_t a = read_active(m), w = wg_balance_weight(p, m);
        if (!best || a * best_w < best_active * w) {
            best = m;
            best_active = a;
            best_w = w;
        }
    }
    return best;
}

const struct wg_member *wg_lc_pick(struct wg_lc *s, struct wg_pick *p,
                                   const struct wg_member *members, uint32_t n)
{
    if (!s || s->n != n)
        return lc_linear(p, members, n);
    unsigned generation;
    if (must_build(p, s->built, s->generation, s->panic, &generation))
        lc_build(s, p, members, generation);
    if (!s->size)
        return NULL;
    for (int r = 0; r < 2; r++) {
        uint32_t k = s->cursor;
        s->cursor = k + 1 < n ? k + 1 : 0;
        if (s->pos[k] != NONE)
            lc_refresh(s, p, &members[k], k);
    }
    struct lent skipped[WG_SCHED_SKIPS];
    uint32_t n_skipped = 0, rereads = 0, k = 0;
    const struct wg_member *got = NULL;
    while (s->size) {
        k = s->heap[0].k;
        /* Busier than seen (other workers' picks): it moves down; bounded,
         * after which the top is taken as it stands. */
        if (rereads < WG_SCHED_SKIPS && lc_refresh(s, p, &members[k], k) && s->heap[0].k != k) {
            rereads++;
            continue;
        }
        if (wg_balance_routable(p, &members[k])) {
            got = &members[k];
            break;
        }
        if (n_skipped == WG_SCHED_SKIPS)
            break;
        skipped[n_skipped++] = lc_remove_top(s);
    }
    if (got) {
        s->clock = s->heap[0].deadline;
        s->heap[0].deadline += WG_SCHED_SCALE / s->w[k];
        lc_down(s, 0);
    }
    for (uint32_t j = 0; j < n_skipped; j++)
        lc_insert(s, skipped[j]);
    if (!got && n_skipped == WG_SCHED_SKIPS)
        return lc_linear(p, members, n);
    return got;
}
