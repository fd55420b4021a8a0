/* policy_rewrite — the path sent upstream: a prefix replaced, or a PCRE2
 * regular expression (JIT-compiled at load) substituted with $N captures.
 * It works on the raw path as received (before '?'; the query is kept);
 * when it changes the path, the route's strip_prefix is not applied. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "policy_parse.h"

#include <pcre2.h>
#include <stdlib.h>
#include <string.h>

struct rw_state {
    char *prefix, *regex, *replace;
    pcre2_code *re;
    bool jit;
    size_t prefix_len, replace_len;
};

#define RF(f) offsetof(struct rw_state, f)

static const struct cfg_key rw_keys[] = {
    { "prefix", cfg_p_str, RF(prefix), 0, 0, NULL },
    { "regex", cfg_p_str, RF(regex), 0, 0, NULL },
    { "replace", cfg_p_str, RF(replace), 0, 0, NULL },
};
static const struct cfg_table rw_table = CFG_TABLE("rewrite policy", rw_keys);

static void rw_free(void *p)
{
    struct rw_state *s = p;

    if (!s)
        return;
    free(s->prefix);
    free(s->regex);
    free(s->replace);
    pcre2_code_free(s->re);
    free(s);
}

/* Highest $N / ${N} the replacement names. */
static unsigned max_group(const char *r)
{
    unsigned max = 0;

    for (const char *p = r; *p; p++) {
        if (*p != '$')
            continue;
        if (p[1] == '$') {
            p++;
            continue;
        }
        const char *q = p + 1 + (p[1] == '{');
        unsigned n = 0;
        while (*q >= '0' && *q <= '9' && n < 1000)
            n = n * 10 + (unsigned)(*q++ - '0');
        if (n > max)
            max = n;
    }
    return max;
}

static void *rw_parse(struct cfg_ctx *c, yaml_node_t *block)
{
    struct rw_state *s = calloc(1, sizeof *s);
    struct cfg_seen seen;
    int err;
    PCRE2_SIZE off;
    uint32_t groups = 0;

    if (!s) {
        wg_yaml_oom(&c->y);
        return NULL;
    }
    if (!pp_block(c, block, &rw_table, s, &seen, "rewrite"))
        goto fail;
    if (!s->replace || (!s->prefix == !s->regex)) {
        cfg_error(c, block, "rewrite: needs 'replace' and exactly one of 'prefix' or 'regex'");
        goto fail;
    }
    s->replace_len = strlen(s->replace);
    for (const char *p = s->replace; *p; p++)
        if ((unsigned char)*p <= 0x20 || (unsigned char)*p >= 0x7f || *p == '#' || *p == '?') {
            cfg_error(c, block, "rewrite: replace may hold only visible ASCII path characters "
                      "(no space, '?' or '#')");
            goto fail;
        }
    if (s->prefix) {
        if (s->prefix[0] != '/' || s->replace[0] != '/') {
            cfg_error(c, block, "rewrite: prefix and replace must start with '/'");
            goto fail;
        }
        s->prefix_len = strlen(s->prefix);
        return s;
    }
    s->re = pcre2_compile((PCRE2_SPTR)s->regex, PCRE2_ZERO_TERMINATED, 0, &err, &off, NULL);
    if (!s->re) {
        PCRE2_UCHAR msg[160];
        pcre2_get_error_message(err, msg, sizeof msg);
        cfg_error(c, block, "rewrite: regex at offset %zu: %s", (size_t)off, (char *)msg);
        goto fail;
    }
    pcre2_pattern_info(s->re, PCRE2_INFO_CAPTURECOUNT, &groups);
    if (max_group(s->replace) > groups) {
        cfg_error(c, block, "rewrite: replace names $%u but the regex has %u capture group(s)",
                  max_group(s->replace), groups);
        goto fail;
    }
    s->jit = pcre2_jit_compile(s->re, PCRE2_JIT_COMPLETE) == 0;
    return s;
fail:
    rw_free(s);
    return NULL;
}

static enum wg_policy_verdict rw_request(const void *state, struct wg_policy_req *r)
{
    const struct rw_state *s = state;
    struct wg_pstr in = r->new_path.n ? r->new_path : r->path;
    char *out;

    if (s->prefix) {
        if (in.n < s->prefix_len || memcmp(in.p, s->prefix, s->prefix_len) != 0)
            return WG_POLICY_CONTINUE;
        if (!(out = wg_policy_alloc(r, s->replace_len + in.n - s->prefix_len + 1)))
            return wg_policy_answer(r, 500, "out of memory\n");
        memcpy(out, s->replace, s->replace_len);
        memcpy(out + s->replace_len, in.p + s->prefix_len, in.n - s->prefix_len);
        r->new_path = (struct wg_pstr){ out, s->replace_len + in.n - s->prefix_len };
        return WG_POLICY_CONTINUE;
    }
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(s->re, NULL);
    if (!md)
        return wg_policy_answer(r, 500, "out of memory\n");
    PCRE2_SIZE cap = in.n + s->replace_len * 4 + 64, len = cap;
    int rc = PCRE2_ERROR_NOMEMORY;
    for (int attempt = 0; attempt < 2 && rc == PCRE2_ERROR_NOMEMORY; attempt++) {
        if (!(out = wg_policy_alloc(r, cap + 1)))
            break;
        len = cap;
        rc = pcre2_substitute(s->re, (PCRE2_SPTR)in.p, in.n, 0,
                              PCRE2_SUBSTITUTE_OVERFLOW_LENGTH,
                              md, NULL, (PCRE2_SPTR)s->replace, s->replace_len,
                              (PCRE2_UCHAR *)out, &len);
        cap = len;
    }
    pcre2_match_data_free(md);
    if (rc < 0)
        return wg_policy_answer(r, 500, "rewrite failed\n");
    if (rc == 0)
        return WG_POLICY_CONTINUE;      /* no match: unchanged */
    if (len == 0 || out[0] != '/') {    /* keep an origin-form target */
        memmove(out + 1, out, len);
        out[0] = '/';
        len++;
    }
    r->new_path = (struct wg_pstr){ out, len };
    return WG_POLICY_CONTINUE;
}

const struct wg_policy_ops wg_policy_rewrite = {
    .name = "rewrite",
    .parse = rw_parse,
    .free = rw_free,
    .request = rw_request,
};
