/* policy_mirror — mark `percent` of the requests for a fire-and-forget copy
 * to another service. The policy does no I/O: the exchange starts the copy
 * (http_mirror.h) once the upstream head is built and tees the request body
 * into it as it forwards it, never waiting for it.
 * The share is drawn from a keyed hash of the request id, so it is even
 * whatever the clients send. */
#include "policy_parse.h"

#include <stdlib.h>
#include <string.h>

#define MF(f) offsetof(struct wg_policy_mirror, f)

static const struct cfg_key mirror_keys[] = {
    { "service", cfg_p_str, MF(service), 0, 0, NULL },
    { "percent", cfg_p_unsigned, MF(percent), 0, 100, NULL },
    { "max_in_flight", cfg_p_unsigned, MF(max_in_flight), 1, 100000, NULL },
    { "timeout", cfg_p_duration, MF(timeout_ms), 1, 3600 * 1000ULL, NULL },
    { "max_body", cfg_p_size, MF(max_body), 0, 64ULL << 20, NULL },
};
static const struct cfg_table mirror_table = CFG_TABLE("mirror policy", mirror_keys);

static void mirror_free(void *p)
{
    struct wg_policy_mirror *m = p;

    if (m)
        free(m->service);
    free(m);
}

static void *mirror_parse(struct cfg_ctx *c, yaml_node_t *block)
{
    struct wg_policy_mirror *m = calloc(1, sizeof *m);

    if (!m) {
        wg_yaml_oom(&c->y);
        return NULL;
    }
    m->percent = 100;
    m->max_in_flight = 64;
    m->timeout_ms = 2000;
    m->max_body = 64 * 1024;
    if (!pp_block(c, block, &mirror_table, m, NULL, "mirror"))
        goto fail;
    if (!m->service || !wg_service_name_ok(m->service)) {
        cfg_error(c, block, "mirror: needs 'service', a valid service name");
        goto fail;
    }
    cfg_reference_service(c, m->service);
    return m;
fail:
    mirror_free(m);
    return NULL;
}

static enum wg_policy_verdict mirror_request(const void *state, struct wg_policy_req *r)
{
    const struct wg_policy_mirror *m = state;

    if (m->percent >= 100 ||
        pp_keyed_hash(r->request_id.p, r->request_id.n) % 10000 < m->percent * 100u)
        r->mirror = m;
    return WG_POLICY_CONTINUE;
}

const struct wg_policy_ops wg_policy_mirror = {
    .name = "mirror",
    .parse = mirror_parse,
    .free = mirror_free,
    .request = mirror_request,
};
