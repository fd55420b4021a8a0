/* health — the state machine and the data-plane API; see include/waygate/health.h.
 * The prober lives in src/health_probe.c. */
#include "waygate/health.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "waygate/grpc.h"
#include "waygate/log.h"

/* The state the prober reasons about: the visible one, or the one an admin
 * drain keeps underneath. Acquire: a data-plane ejection stores
 * ejected_until_ms before it publishes the state. */
static enum wg_health underlying(const struct wg_instance *i)
{
    int v = atomic_load_explicit(&((struct wg_instance *)i)->health, memory_order_acquire);
    if (v & WG_HEALTH_ADMIN_BIT)
        v >>= WG_HEALTH_SAVED_SHIFT;
    return (enum wg_health)(v & WG_HEALTH_VISIBLE_MASK);
}

static void log_transition(const struct wg_instance *i, enum wg_health from, enum wg_health to,
                           const char *reason)
{
    wg_info("msg=\"health changed\" service=%s upstream=%s address=%s from=%s to=%s reason=\"%s\"",
            i->service->name, i->id, i->addr_text, wg_health_name(from), wg_health_name(to),
            reason);
}

static bool transition(struct wg_instance *i, enum wg_health from, enum wg_health to,
                       const char *reason)
{
    if (!wg_instance_cas_health(i, from, to))
        return false;
    /* Failures counted while it was down (late connects, panic mode) must
     * not eject it on its first failure back. */
    if (to == WG_HEALTH_HEALTHY)
        atomic_store_explicit(&i->consecutive_failures, 0, memory_order_relaxed);
    log_transition(i, from, to, reason);
    return true;
}

/* ---- math ---------------------------------------------------------------- */

uint64_t wg_health_jitter(uint64_t interval_ms, uint64_t random64)
{
    uint64_t tenth = interval_ms / 10;
    uint64_t span = 2 * tenth + 1;              /* [interval - tenth, interval + tenth] */
    uint64_t offset = (uint64_t)(((unsigned __int128)random64 * span) >> 64);
    return interval_ms - tenth + offset;
}

uint64_t wg_health_ejection_ms(const struct wg_service_config *cfg, unsigned n)
{
    uint64_t base = cfg->outlier.base_ejection_time_ms;
    uint64_t cap = cfg->outlier.max_ejection_time_ms ? cfg->outlier.max_ejection_time_ms : UINT64_MAX;
    if (n == 0)
        n = 1;
    if (base > cap / n)
        return cap;
    return base * n < cap ? base * n : cap;
}

bool wg_health_ejection_allowed(unsigned ejected, unsigned members, unsigned max_percent)
{
    return members && ((uint64_t)ejected + 1) * 100 <= (uint64_t)max_percent * members;
}

/* ---- data plane ---------------------------------------------------------- */

static const char *failure_name(enum wg_health_failure why)
{
    switch (why) {
    case WG_FAIL_CONNECT:
        return "connect failures";
    case WG_FAIL_HTTP_5XX:
        return "5xx responses";
    case WG_FAIL_TIMEOUT:
        return "response timeouts";
    }
    return "failures";
}

static bool over_limit(const struct wg_pool_service *svc, int ejected)
{
    unsigned n = ejected > 0 ? (unsigned)ejected : 0;
    return n && !wg_health_ejection_allowed(n - 1, svc->n_members,
                                            svc->cfg->outlier.max_ejection_percent);
}

/* Eject a healthy instance if max_ejection_percent allows it. The count is
 * checked before the compare-and-swap and again after it: two workers
 * ejecting at the same instant cannot both stay ejected over the limit (the
 * later one is put back). */
static bool try_eject(const struct wg_pool_service *svc, struct wg_instance *i, unsigned run,
                      enum wg_health_failure why)
{
    struct wg_service_state *st = i->service;
    int ejected = atomic_load(&st->ejected);
    if (!wg_health_ejection_allowed(ejected > 0 ? (unsigned)ejected : 0, svc->n_members,
                                    svc->cfg->outlier.max_ejection_percent))
        goto refused;
    unsigned nth = atomic_load_explicit(&i->ejections, memory_order_relaxed) + 1;
    uint64_t ms = wg_health_ejection_ms(svc->cfg, nth);
    atomic_store(&i->ejected_until_ms, wg_now_ms() + ms);
    if (!wg_instance_cas_health(i, WG_HEALTH_HEALTHY, WG_HEALTH_EJECTED))
        return false;                           /* someone else changed it first */
    if (over_limit(svc, atomic_load(&st->ejected))) {
        wg_instance_cas_health(i, WG_HEALTH_EJECTED, WG_HEALTH_HEALTHY);
        goto refused;
    }
    atomic_fetch_add(&i->ejections, 1);
    atomic_store_explicit(&i->consecutive_failures, 0, memory_order_relaxed);
    char reason[96];
    snprintf(reason, sizeof reason, "%u consecutive %s, ejection %u for %llums", run,
             failure_name(why), nth, (unsigned long long)ms);
    log_transition(i, WG_HEALTH_HEALTHY, WG_HEALTH_EJECTED, reason);
    return true;
refused:
    atomic_fetch_add_explicit(&st->ejections_refused, 1, memory_order_relaxed);
    return false;
}

bool wg_health_report_failure(const struct wg_pool_service *svc, struct wg_instance *i,
                              enum wg_health_failure why)
{
    unsigned run = atomic_fetch_add_explicit(&i->consecutive_failures, 1, memory_order_relaxed) + 1;
    unsigned limit = svc->cfg->outlier.consecutive_failures;
    if (!limit || run < limit || wg_instance_health(i) != WG_HEALTH_HEALTHY)
        return false;
    return try_eject(svc, i, run, why);
}

void wg_health_report_success(struct wg_instance *i)
{
    if (atomic_load_explicit(&i->consecutive_failures, memory_order_relaxed))
        atomic_store_explicit(&i->consecutive_failures, 0, memory_order_relaxed);
}

enum wg_health_cut wg_health_conn_cut(const struct wg_service_config *cfg,
                                      const struct wg_instance *i, unsigned gen, uint64_t now_ms)
{
    enum wg_health h = wg_instance_health(i);
    if (h == WG_HEALTH_DRAINING) {
        uint64_t since = atomic_load_explicit(&((struct wg_instance *)i)->draining_since_ms,
                                              memory_order_relaxed);
        if (cfg->drain_timeout_ms && since && now_ms - since >= cfg->drain_timeout_ms)
            return WG_CUT_DRAIN_TIMEOUT;
        return WG_CUT_NONE;
    }
    if (cfg->on_unhealthy_close && (h == WG_HEALTH_UNHEALTHY || h == WG_HEALTH_EJECTED) &&
        wg_health_conn_generation(i) != gen)
        return WG_CUT_UNHEALTHY;
    return WG_CUT_NONE;
}

const char *wg_health_cut_name(enum wg_health_cut c)
{
    switch (c) {
    case WG_CUT_DRAIN_TIMEOUT:
        return "drain_timeout";
    case WG_CUT_UNHEALTHY:
        return "on_unhealthy";
    case WG_CUT_NONE:
        break;
    }
    return "none";
}

/* ---- state machine --------------------------------------------------------- */

static const char *const serving_names[] = { "UNKNOWN", "SERVING", "NOT_SERVING",
                                             "SERVICE_UNKNOWN" };

/* "3 probes failed (last: status 500)"; n == 0 omits the count. grpc
 * probes (health_probe.c) report a serving status 0-999, 1000 + the
 * grpc-status of a failed call, or an HTTP status 100-599 from another
 * range: "(last: NOT_SERVING)", "(last: grpc-status UNIMPLEMENTED)". */
static void describe(char *buf, size_t len, const char *what, unsigned n, int result, bool grpc)
{
    char count[16] = "";
    if (n)
        snprintf(count, sizeof count, "%u ", n);
    if (grpc && result >= 1000)
        snprintf(buf, len, "%s%s (last: grpc-status %s)", count, what,
                 wg_grpc_status_name(result - 1000));
    else if (grpc && result >= 0 && result < 4)
        snprintf(buf, len, "%s%s (last: %s)", count, what, serving_names[result]);
    else if (grpc && result >= 0 && result < 100)
        snprintf(buf, len, "%s%s (last: serving status %d)", count, what, result);
    else if (result > 0)
        snprintf(buf, len, "%s%s (last: status %d)", count, what, result);
    else if (result < 0)
        snprintf(buf, len, "%s%s (last: %s)", count, what, strerror(-result));
    else
        snprintf(buf, len, "%s%s", count, what);
}

static void record_result(struct wg_instance *i, bool passed, int result, uint64_t now_ms)
{
    atomic_fetch_add_explicit(passed ? &i->probes_passed : &i->probes_failed, 1,
                              memory_order_relaxed);
    atomic_store_explicit(&i->last_probe_result, result, memory_order_relaxed);
    atomic_store_explicit(&i->last_probe_ms, now_ms, memory_order_relaxed);
}

/* The state a probe result leads to from `h`, or `h` itself. */
static enum wg_health next_state(const struct wg_instance *i, const struct wg_service_config *cfg,
                                 const struct wg_health_run *run, bool passed, enum wg_health h,
                                 uint64_t now_ms)
{
    unsigned up = cfg->health_check.healthy_threshold ? cfg->health_check.healthy_threshold : 1;
    unsigned down = cfg->health_check.unhealthy_threshold ? cfg->health_check.unhealthy_threshold : 1;
    switch (h) {
    case WG_HEALTH_UNKNOWN:
        return passed ? WG_HEALTH_HEALTHY : run->fails >= down ? WG_HEALTH_UNHEALTHY : h;
    case WG_HEALTH_HEALTHY:
        return !passed && run->fails >= down ? WG_HEALTH_UNHEALTHY : h;
    case WG_HEALTH_UNHEALTHY:
        return passed && run->passes >= up ? WG_HEALTH_HEALTHY : h;
    case WG_HEALTH_EJECTED:
        if (passed)
            return now_ms >= atomic_load(&((struct wg_instance *)i)->ejected_until_ms)
                       ? WG_HEALTH_HEALTHY : h;
        return run->fails >= down ? WG_HEALTH_UNHEALTHY : h;
    case WG_HEALTH_DRAINING:
        break;
    }
    return h;
}

enum wg_health wg_health_on_probe(struct wg_instance *i, const struct wg_service_config *cfg,
                                  struct wg_health_run *run, bool passed, int result,
                                  uint64_t now_ms)
{
    record_result(i, passed, result, now_ms);
    if (passed) {
        run->passes++;
        run->fails = 0;
    } else {
        run->fails++;
        run->passes = 0;
    }
    enum wg_health h = underlying(i);
    enum wg_health to = next_state(i, cfg, run, passed, h, now_ms);
    if (to != h) {
        char reason[160];
        if (h == WG_HEALTH_UNKNOWN && passed)
            describe(reason, sizeof reason, "first probe passed", 0, result, cfg->health_check.type == WG_HEALTH_GRPC);
        else if (h == WG_HEALTH_EJECTED && passed)
            describe(reason, sizeof reason, "ejection over, probe passed", 0, result, cfg->health_check.type == WG_HEALTH_GRPC);
        else if (passed)
            describe(reason, sizeof reason, "probes passed", run->passes, result, cfg->health_check.type == WG_HEALTH_GRPC);
        else
            describe(reason, sizeof reason, "probes failed", run->fails, result, cfg->health_check.type == WG_HEALTH_GRPC);
        if (transition(i, h, to, reason))
            h = to;
    }
    return wg_instance_health(i) == WG_HEALTH_DRAINING ? WG_HEALTH_DRAINING : h;
}

enum wg_health wg_health_without_probes(struct wg_instance *i, uint64_t now_ms)
{
    enum wg_health h = underlying(i);
    if (h == WG_HEALTH_UNKNOWN || h == WG_HEALTH_UNHEALTHY) {
        if (transition(i, h, WG_HEALTH_HEALTHY, "health_check type none"))
            h = WG_HEALTH_HEALTHY;
    } else if (h == WG_HEALTH_EJECTED && now_ms >= atomic_load(&i->ejected_until_ms)) {
        if (transition(i, h, WG_HEALTH_HEALTHY, "ejection over (no probes)"))
            h = WG_HEALTH_HEALTHY;
    }
    return wg_instance_health(i) == WG_HEALTH_DRAINING ? WG_HEALTH_DRAINING : h;
}

bool wg_health_apply_shared(struct wg_instance *i, enum wg_health published, uint64_t now_ms)
{
    enum wg_health h = underlying(i);
    static const char reason[] = "shared by the zone's prober";
    atomic_store_explicit(&i->shared_health, (int)published, memory_order_relaxed);
    if (published == WG_HEALTH_HEALTHY) {
        if (h == WG_HEALTH_EJECTED &&
            atomic_load_explicit(&i->ejected_until_ms, memory_order_relaxed) > now_ms)
            return false;           /* passive detection stays local */
        if (h == WG_HEALTH_UNKNOWN || h == WG_HEALTH_UNHEALTHY || h == WG_HEALTH_EJECTED)
            return transition(i, h, WG_HEALTH_HEALTHY, reason);
    } else if (published == WG_HEALTH_UNHEALTHY) {
        if (h == WG_HEALTH_UNKNOWN || h == WG_HEALTH_HEALTHY || h == WG_HEALTH_EJECTED)
            return transition(i, h, WG_HEALTH_UNHEALTHY, reason);
    }
    return false;
}
