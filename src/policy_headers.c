/* policy_headers — request and response `set` / `add` / `remove`, with
 * variables in values (policy_parse.h templates). Order per side: remove,
 * then set (replaces every field of that name), then add. */
#include "policy_parse.h"

#include <stdlib.h>
#include <string.h>

struct hdr_rule {
    char *name;
    size_t len;
    struct pp_tmpl value;
};

struct hdr_side {
    struct pp_strmap set, add;
    struct pp_strlist remove;
    struct hdr_rule *rules;             /* set rules then add rules */
    size_t n_set, n_add;
};

struct hdr_state {
    struct hdr_side req, resp;
};

#define HF(f) offsetof(struct hdr_state, f)

static const struct cfg_key req_keys[] = {
    { "set", pp_p_strmap, HF(req.set), 0, 0, NULL },
    { "add", pp_p_strmap, HF(req.add), 0, 0, NULL },
    { "remove", pp_p_strlist, HF(req.remove), 0, 0, "token" },
};
static const struct cfg_table req_table = CFG_TABLE("headers.request", req_keys);
static const struct cfg_key resp_keys[] = {
    { "set", pp_p_strmap, HF(resp.set), 0, 0, NULL },
    { "add", pp_p_strmap, HF(resp.add), 0, 0, NULL },
    { "remove", pp_p_strlist, HF(resp.remove), 0, 0, "token" },
};
static const struct cfg_table resp_table = CFG_TABLE("headers.response", resp_keys);
static const struct cfg_key hdr_keys[] = {
    { "request", cfg_p_map, 0, 0, 0, &req_table },
    { "response", cfg_p_map, 0, 0, 0, &resp_table },
};
static const struct cfg_table hdr_table = CFG_TABLE("headers policy", hdr_keys);

static void side_free(struct hdr_side *s)
{
    for (size_t i = 0; i < s->n_set + s->n_add; i++) {
        free(s->rules[i].name);
        pp_tmpl_free(&s->rules[i].value);
    }
    free(s->rules);
    pp_strmap_free(&s->set);
    pp_strmap_free(&s->add);
    pp_strlist_free(&s->remove);
}

static void hdr_free(void *p)
{
    struct hdr_state *s = p;

    if (!s)
        return;
    side_free(&s->req);
    side_free(&s->resp);
    free(s);
}

static bool compile_side(struct cfg_ctx *c, yaml_node_t *at, struct hdr_side *s)
{
    size_t n = s->set.n + s->add.n;

    if (n && !(s->rules = calloc(n, sizeof *s->rules))) {
        wg_yaml_oom(&c->y);
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        bool is_set = i < s->set.n;
        const char *k = is_set ? s->set.v[i].k : s->add.v[i - s->set.n].k;
        const char *v = is_set ? s->set.v[i].v : s->add.v[i - s->set.n].v;
        struct hdr_rule *r = &s->rules[i];
        if (!(r->name = strdup(k))) {
            wg_yaml_oom(&c->y);
            return false;
        }
        r->len = strlen(k);
        if (is_set)
            s->n_set++;
        else
            s->n_add++;
        if (!pp_tmpl_compile(c, at, k, v, &r->value))
            return false;
    }
    return true;
}

static void *hdr_parse(struct cfg_ctx *c, yaml_node_t *block)
{
    struct hdr_state *s = calloc(1, sizeof *s);

    if (!s) {
        wg_yaml_oom(&c->y);
        return NULL;
    }
    if (!pp_block(c, block, &hdr_table, s, NULL, "headers") || !compile_side(c, block, &s->req) ||
        !compile_side(c, block, &s->resp)) {
        hdr_free(s);
        return NULL;
    }
    return s;
}

static void apply(const struct hdr_side *s, struct wg_policy_req *r, struct wg_policy_head *h)
{
    for (size_t i = 0; i < s->remove.n; i++)
        wg_policy_head_remove(r, h, s->remove.v[i], strlen(s->remove.v[i]));
    for (size_t i = 0; i < s->n_set + s->n_add; i++) {
        const struct hdr_rule *rule = &s->rules[i];
        struct wg_pstr v;
        if (!pp_tmpl_expand(&rule->value, r, &v))
            continue;
        if (i < s->n_set)
            wg_policy_head_set(r, h, rule->name, rule->len, v.p, v.n);
        else
            wg_policy_head_add(r, h, rule->name, rule->len, v.p, v.n);
    }
}

static enum wg_policy_verdict hdr_request(const void *state, struct wg_policy_req *r)
{
    apply(&((const struct hdr_state *)state)->req, r, &r->req);
    return WG_POLICY_CONTINUE;
}

static void hdr_response(const void *state, struct wg_policy_req *r, unsigned status,
                         struct wg_policy_head *head)
{
    apply(&((const struct hdr_state *)state)->resp, r, head);
}

const struct wg_policy_ops wg_policy_headers = {
    .name = "headers",
    .parse = hdr_parse,
    .free = hdr_free,
    .request = hdr_request,
    .response = hdr_response,
};
