/* policy_rate_limit — a token bucket (rate + burst) per key, exact per
 * process without a lock.
 *
 * Each key's bucket is one 64-bit word: the GCRA "theoretical arrival
 * time" (TAT, CLOCK_MONOTONIC ns), updated with compare-and-swap by any
 * worker. A request is allowed when max(TAT, now) + T - now <= burst * T
 * (T = one token's interval), which is exactly a bucket of `burst` tokens
 * refilled at `rate`. Keys live in one open-addressed table of max_keys
 * slots (keyed SipHash, 8-slot probe window). A slot whose TAT is in the
 * past holds a full bucket, the same as no slot, so it is reused freely;
 * when a window holds only live buckets, the one nearest to full (smallest
 * TAT) is evicted, counted in waygate_policy_rate_limit_evictions_total.
 * The error: an evicted key starts again with a full bucket, and two
 * workers replacing the same slot at the same instant may merge two keys'
 * state for one request.
 * scope: fleet divides rate and burst by the fleet's live replicas
 * (fleet.h), read per request: a fleet-wide limit without a shared store,
 * exact when clients spread evenly over the replicas.
 */
#include "policy_parse.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "waygate/fleet.h"
#include "waygate/pool.h"
#include "waygate/stats.h"

#define RL_WINDOW 8

struct rl_slot {
    _Atomic uint64_t key;               /* hash | 1; 0 = empty */
    _Atomic uint64_t tat;
};

struct rl_state {
    uint64_t count, period_ms;          /* rate: count per period */
    unsigned burst;
    unsigned max_keys;
    char *rate_text, *key_text, *scope;
    struct pp_key key;
    uint64_t interval_ns;               /* T */
    uint64_t tolerance_ns;              /* burst * T */
    char limit_text[16];
    bool fleet;                         /* scope: fleet: rate and burst / live replicas */
    uint64_t mask;
    struct rl_slot *slots;
};

#define LF(f) offsetof(struct rl_state, f)

static const struct cfg_key rl_keys[] = {
    { "rate", cfg_p_str, LF(rate_text), 0, 0, NULL },
    { "burst", cfg_p_unsigned, LF(burst), 1, 1000000000, NULL },
    { "key", cfg_p_str, LF(key_text), 0, 0, NULL },
    { "scope", cfg_p_str, LF(scope), 0, 0, NULL },
    { "max_keys", cfg_p_unsigned, LF(max_keys), 16, 1u << 24, NULL },
};
static const struct cfg_table rl_table = CFG_TABLE("rate_limit policy", rl_keys);

static void rl_free(void *p)
{
    struct rl_state *s = p;

    if (!s)
        return;
    free(s->rate_text);
    free(s->key_text);
    free(s->scope);
    free(s->key.arg);
    free(s->slots);
    free(s);
}

/* "100/s", "5/m", "1000/h", "20/100ms": count / duration. */
static bool parse_rate(const char *t, uint64_t *count, uint64_t *period_ms)
{
    const char *slash = strchr(t, '/');
    char num[24];

    if (!slash || slash == t || (size_t)(slash - t) >= sizeof num)
        return false;
    memcpy(num, t, (size_t)(slash - t));
    num[slash - t] = 0;
    const char *unit = slash + 1;
    if (strcmp(unit, "s") == 0)
        unit = "1s";
    else if (strcmp(unit, "m") == 0)
        unit = "1m";
    else if (strcmp(unit, "h") == 0)
        unit = "1h";
    if (!wg_parse_duration(unit, period_ms) || *period_ms == 0)
        return false;
    for (const char *p = num; *p; p++)
        if (*p < '0' || *p > '9')
            return false;
    *count = strtoull(num, NULL, 10);
    return *count > 0 && *count <= 1000000000ULL;
}

static void *rl_parse(struct cfg_ctx *c, yaml_node_t *block)
{
    struct rl_state *s = calloc(1, sizeof *s);
    struct cfg_seen seen;
    yaml_node_t *at;

    if (!s) {
        wg_yaml_oom(&c->y);
        return NULL;
    }
    s->max_keys = 65536;
    if (!pp_block(c, block, &rl_table, s, &seen, "rate_limit"))
        goto fail;
    at = seen.value[cfg_key_index(&rl_table, "rate")];
    if (!s->rate_text) {
        cfg_error(c, block, "rate_limit: missing required key 'rate' (e.g. 100/s)");
        goto fail;
    }
    if (!parse_rate(s->rate_text, &s->count, &s->period_ms)) {
        cfg_error(c, at, "rate: expected COUNT/UNIT (100/s, 5/m, 1000/h, 20/100ms), got '%.80s'",
                  s->rate_text);
        goto fail;
    }
    if (s->scope && strcmp(s->scope, "fleet") == 0) {
        s->fleet = true;
    } else if (s->scope && strcmp(s->scope, "process") != 0) {
        cfg_error(c, seen.value[cfg_key_index(&rl_table, "scope")],
                  "scope: expected process or fleet, got '%.80s'", s->scope);
        goto fail;
    }
    if (s->key_text) {
        if (!pp_key_parse(c, seen.value[cfg_key_index(&rl_table, "key")], "key", &s->key))
            goto fail;
    } else {
        s->key.var = WG_PVAR_CLIENT_IP;
    }
    if (!s->burst)
        s->burst = s->count < 1000000 ? (unsigned)s->count : 1000000;
    s->interval_ns = s->period_ms * 1000000ULL / s->count;
    if (s->interval_ns == 0)
        s->interval_ns = 1;
    s->tolerance_ns = s->interval_ns * s->burst;
    snprintf(s->limit_text, sizeof s->limit_text, "%u", s->burst);
    uint64_t n = 16;
    while (n < s->max_keys)
        n <<= 1;
    s->mask = n - 1;
    if (!(s->slots = calloc(n, sizeof *s->slots))) {
        wg_yaml_oom(&c->y);
        goto fail;
    }
    return s;
fail:
    rl_free(s);
    return NULL;
}

static struct rl_slot *slot_for(const struct rl_state *s, uint64_t h, uint64_t now,
                                struct wg_policy_req *r)
{
    struct rl_slot *victim = NULL;
    uint64_t victim_tat = UINT64_MAX;

    for (unsigned i = 0; i < RL_WINDOW; i++) {
        struct rl_slot *sl = &s->slots[(h + i) & s->mask];
        uint64_t k = atomic_load_explicit(&sl->key, memory_order_acquire);
        if (k == h)
            return sl;
        if (k == 0) {
            if (atomic_compare_exchange_strong(&sl->key, &k, h))
                return sl;
            if (k == h)
                return sl;
        }
        uint64_t tat = atomic_load_explicit(&sl->tat, memory_order_relaxed);
        if (tat < victim_tat) {
            victim_tat = tat;
            victim = sl;
        }
    }
    uint64_t old = atomic_load_explicit(&victim->key, memory_order_relaxed);
    if (victim_tat > now && r->stats)
        wg_stats_add(r->stats, WG_C_POLICY_RL_EVICTIONS, 1);
    if (atomic_compare_exchange_strong(&victim->key, &old, h))
        atomic_store_explicit(&victim->tat, 0, memory_order_relaxed);
    return victim;
}

/* Decimal text of v into buf (>= 21 bytes); no printf on the request path. */
static void put_u64(char *buf, size_t n, uint64_t v)
{
    char tmp[24];
    size_t k = 0;

    do {
        tmp[k++] = (char)('0' + v % 10);
        v /= 10;
    } while (v && k < sizeof tmp);
    for (size_t i = 0; i < k && i + 1 < n; i++)
        buf[i] = tmp[k - 1 - i];
    buf[k < n ? k : n - 1] = 0;
}

static enum wg_policy_verdict rl_request(const void *state, struct wg_policy_req *r)
{
    const struct rl_state *s = state;
    struct wg_pstr k;
    uint64_t now = wg_now_ns(), tat, next;
    bool allowed;
    char remaining[24], reset[24], limit[24];
    /* scope: fleet: this replica's share, rate / N and burst / N (at least
     * one token), N the fleet's live replicas (fleet.h; 1 without fleet:) */
    uint64_t n = s->fleet ? wg_fleet_replicas(NULL) : 1;
    uint64_t interval = s->interval_ns * n;
    uint64_t tolerance = s->tolerance_ns > interval ? s->tolerance_ns : interval;

    if (!wg_policy_var_get(r, s->key.var, s->key.arg, &k))
        k = (struct wg_pstr){ "", 0 };
    struct rl_slot *sl = slot_for(s, pp_keyed_hash(k.p, k.n) | 1, now, r);
    tat = atomic_load_explicit(&sl->tat, memory_order_relaxed);
    do {
        next = (tat > now ? tat : now) + interval;
        allowed = next - now <= tolerance;
    } while (allowed && !atomic_compare_exchange_weak(&sl->tat, &tat, next));
    if (!allowed)
        next = tat > now ? tat : now;
    /* tokens left after this request, and seconds until the bucket is full */
    uint64_t used = next > now ? next - now : 0;
    put_u64(remaining, sizeof remaining,
            used >= tolerance ? 0 : (tolerance - used) / interval);
    put_u64(reset, sizeof reset, (used + 999999999ULL) / 1000000000ULL);
    if (n > 1)
        put_u64(limit, sizeof limit, tolerance / interval);
    const char *lt = n > 1 ? limit : s->limit_text;
    wg_policy_head_add(r, &r->resp_extra, "RateLimit-Limit", 15, lt, strlen(lt));
    wg_policy_head_add(r, &r->resp_extra, "RateLimit-Remaining", 19, remaining,
                       strlen(remaining));
    wg_policy_head_add(r, &r->resp_extra, "RateLimit-Reset", 15, reset, strlen(reset));
    if (allowed)
        return WG_POLICY_CONTINUE;
    /* one token is back when TAT - now drops to tolerance - T */
    uint64_t wait = used + interval - tolerance;
    char retry[24];
    put_u64(retry, sizeof retry, (wait + 999999999ULL) / 1000000000ULL);
    wg_policy_head_add(r, &r->resp_extra, "Retry-After", 11, retry, strlen(retry));
    if (r->stats)
        wg_stats_add(r->stats, WG_C_POLICY_RATE_LIMITED, 1);
    return wg_policy_answer(r, 429, "rate limit exceeded\n");
}

const struct wg_policy_ops wg_policy_rate_limit = {
    .name = "rate_limit",
    .parse = rl_parse,
    .free = rl_free,
    .request = rl_request,
};
