/* policy_trace — W3C Trace Context: a valid `traceparent` passes through
 * (with its `tracestate`); an absent or invalid one is replaced by a new
 * one when `generate` is on (sampled flag set for sample_percent of them;
 * an invalid parent's tracestate is dropped). The trace id is kept in the
 * request view for the access log and waygate's own error bodies. */
#include "policy_parse.h"

#include <openssl/rand.h>
#include <stdlib.h>
#include <string.h>

struct trace_state {
    bool generate;
    unsigned sample_percent;
};

#define TF(f) offsetof(struct trace_state, f)

static const struct cfg_key trace_keys[] = {
    { "generate", cfg_p_bool, TF(generate), 0, 0, NULL },
    { "sample_percent", cfg_p_unsigned, TF(sample_percent), 0, 100, NULL },
};
static const struct cfg_table trace_table = CFG_TABLE("trace policy", trace_keys);

static void *trace_parse(struct cfg_ctx *c, yaml_node_t *block)
{
    struct trace_state *s = calloc(1, sizeof *s);

    if (!s) {
        wg_yaml_oom(&c->y);
        return NULL;
    }
    s->generate = true;
    s->sample_percent = 100;
    if (!pp_block(c, block, &trace_table, s, NULL, "trace")) {
        free(s);
        return NULL;
    }
    return s;
}

static void trace_free(void *s) { free(s); }

static bool lhex(const char *p, size_t n, bool nonzero)
{
    bool any = false;

    for (size_t i = 0; i < n; i++) {
        char ch = p[i];
        if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f')))
            return false;
        any |= ch != '0';
    }
    return any || !nonzero;
}

/* version-traceid-parentid-flags; a future version may append fields. */
static bool traceparent_ok(struct wg_pstr v)
{
    if (v.n < 55 || v.p[2] != '-' || v.p[35] != '-' || v.p[52] != '-')
        return false;
    if (!lhex(v.p, 2, false) || memcmp(v.p, "ff", 2) == 0 || !lhex(v.p + 3, 32, true) ||
        !lhex(v.p + 36, 16, true) || !lhex(v.p + 53, 2, false))
        return false;
    if (memcmp(v.p, "00", 2) == 0)
        return v.n == 55;
    return v.n == 55 || v.p[55] == '-';
}

static void hex(char *out, const unsigned char *in, size_t n)
{
    static const char digits[] = "0123456789abcdef";

    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 15];
    }
}

static enum wg_policy_verdict trace_request(const void *state, struct wg_policy_req *r)
{
    const struct trace_state *s = state;
    struct wg_pstr v;
    unsigned char rnd[25];
    char tp[55];

    if (wg_policy_head_get(&r->req, "traceparent", 11, &v) && traceparent_ok(v)) {
        memcpy(r->trace_id, v.p + 3, 32);
        r->trace_id[32] = 0;
        return WG_POLICY_CONTINUE;
    }
    if (!s->generate)
        return WG_POLICY_CONTINUE;
    if (RAND_bytes(rnd, sizeof rnd) != 1)
        return WG_POLICY_CONTINUE;
    rnd[0] |= 1;                        /* never all zero */
    rnd[16] |= 1;
    bool sampled = s->sample_percent >= 100 ||
                   (s->sample_percent && (((unsigned)rnd[24] << 8 | rnd[23]) % 10000) <
                                             s->sample_percent * 100u);
    memcpy(tp, "00-", 3);
    hex(tp + 3, rnd, 16);
    tp[35] = '-';
    hex(tp + 36, rnd + 16, 8);
    memcpy(tp + 52, sampled ? "-01" : "-00", 3);
    memcpy(r->trace_id, tp + 3, 32);
    r->trace_id[32] = 0;
    wg_policy_head_remove(r, &r->req, "tracestate", 10);
    wg_policy_head_set(r, &r->req, "traceparent", 11, tp, sizeof tp);
    return WG_POLICY_CONTINUE;
}

const struct wg_policy_ops wg_policy_trace = {
    .name = "trace",
    .parse = trace_parse,
    .free = trace_free,
    .request = trace_request,
};
