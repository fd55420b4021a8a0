/* policy_api_key — a key in a header (default X-API-Key) or a query
 * parameter names a consumer. Keys come from the config (`keys:` as a
 * mapping consumer: key) or a file (`keys: PATH`, one `consumer: key` line
 * each). Only SHA-256 digests are kept in memory (a file may give
 * `consumer: sha256:<hex>` to hold no plain key at all); a presented key
 * is hashed and looked up among the digests, so a match never depends on
 * how many leading bytes of a secret agree. The key is removed from the
 * upstream request; the consumer name is sent in `consumer_header`
 * (default X-Consumer; a client's own copy is always dropped) and is the
 * `consumer` rate-limit key. With `registry: true` the consumers of the
 * etcd registry (consumers.h, /waygate/consumers/<name>) are added to the
 * table each time the config is built; a change there rebuilds it. */
#include "policy_parse.h"

#include <openssl/evp.h>
#include <openssl/sha.h>
#include <stdlib.h>
#include <string.h>

#include "waygate/consumers.h"
#include "waygate/log.h"
#include "waygate/stats.h"

struct ak_entry {
    unsigned char digest[SHA256_DIGEST_LENGTH];
    char *consumer;
};

struct ak_state {
    char *header, *query, *consumer_header, *file;
    struct pp_strmap inline_keys;
    bool registry;
    struct ak_entry *v;
    size_t n;
    size_t header_len, query_len, consumer_header_len;
    char *www_auth;
};

#define AF(f) offsetof(struct ak_state, f)

static void p_keys(struct cfg_ctx *c, yaml_node_t *v, void *base, const struct cfg_key *k)
{
    struct ak_state *s = base;

    if (v->type == YAML_SCALAR_NODE) {
        const char *t = cfg_text(c, v, k->name);
        if (t && !*t)
            cfg_error(c, v, "keys: expected a file path or a mapping consumer: key");
        else if (t)
            cfg_set_str(c, &s->file, t);
        return;
    }
    pp_p_strmap(c, v, base, k);
}

static const struct cfg_key ak_keys[] = {
    { "header", cfg_p_str, AF(header), 0, 0, NULL },
    { "query", cfg_p_str, AF(query), 0, 0, NULL },
    { "keys", p_keys, AF(inline_keys), 0, 0, NULL },
    { "consumer_header", cfg_p_str, AF(consumer_header), 0, 0, NULL },
    { "registry", cfg_p_bool, AF(registry), 0, 0, NULL },
};
static const struct cfg_table ak_table = CFG_TABLE("api_key policy", ak_keys);

static void ak_free(void *p)
{
    struct ak_state *s = p;

    if (!s)
        return;
    for (size_t i = 0; i < s->n; i++)
        free(s->v[i].consumer);
    free(s->v);
    free(s->header);
    free(s->query);
    free(s->consumer_header);
    free(s->file);
    free(s->www_auth);
    pp_strmap_free(&s->inline_keys);
    free(s);
}

static int digest_cmp(const void *a, const void *b)
{
    return memcmp(((const struct ak_entry *)a)->digest, ((const struct ak_entry *)b)->digest,
                  SHA256_DIGEST_LENGTH);
}

static bool unhex(const char *h, unsigned char *out, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        int v = 0;
        for (int k = 0; k < 2; k++) {
            char ch = h[2 * i + k];
            int d = ch >= '0' && ch <= '9' ? ch - '0' : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 :
                    ch >= 'A' && ch <= 'F' ? ch - 'A' + 10 : -1;
            if (d < 0)
                return false;
            v = v * 16 + d;
        }
        out[i] = (unsigned char)v;
    }
    return h[2 * n] == 0;
}

/* Add consumer -> key (or "sha256:<hex>"); false with a reason. */
static const char *add_key(struct ak_state *s, const char *consumer, const char *key)
{
    struct ak_entry *v, *e;

    if (!*consumer || !wg_is_token(consumer))
        return "a consumer name must be a token (letters, digits, -_.)";
    if (!*key)
        return "empty key";
    if (!(v = realloc(s->v, (s->n + 1) * sizeof *v)))
        return "out of memory";
    s->v = v;
    e = &v[s->n];
    if (strncmp(key, "sha256:", 7) == 0) {
        if (!unhex(key + 7, e->digest, SHA256_DIGEST_LENGTH))
            return "sha256: needs 64 hex digits";
    } else {
        SHA256((const unsigned char *)key, strlen(key), e->digest);
    }
    if (!(e->consumer = strdup(consumer)))
        return "out of memory";
    s->n++;
    return NULL;
}

struct file_ctx {
    struct cfg_ctx *c;
    struct ak_state *s;
};

static bool file_line(void *arg, unsigned line, char *consumer, char *key)
{
    struct file_ctx *f = arg;
    const char *why = key ? add_key(f->s, consumer, key) : "expected 'consumer: key'";

    if (why)
        pp_file_error(f->c, f->s->file, line, "%s", why);
    return true;
}

/* A consumer of the registry (consumers.h): a bad one is logged and left
 * out, as the registry is not the config file. */
static void registry_key(void *arg, const char *consumer, const char *key)
{
    const char *why = add_key(arg, consumer, key);

    if (why)
        wg_warn("msg=\"api_key: registry consumer ignored\" consumer=%s reason=\"%s\"", consumer,
                why);
}

static void *ak_parse(struct cfg_ctx *c, yaml_node_t *block)
{
    struct ak_state *s = calloc(1, sizeof *s);
    struct cfg_seen seen;
    const char *why;

    if (!s) {
        wg_yaml_oom(&c->y);
        return NULL;
    }
    if (!pp_block(c, block, &ak_table, s, &seen, "api_key"))
        goto fail;
    if (s->registry) {
        c->cfg->consumers_registry = true;
        if (!c->consumers_node)
            c->consumers_node = seen.value[cfg_key_index(&ak_table, "registry")];
    }
    if (!s->file && !s->inline_keys.n && !s->registry) {
        cfg_error(c, block, "api_key: missing required key 'keys' (a file or consumer: key) "
                  "or registry: true");
        goto fail;
    }
    if (!s->header && !s->query && !cfg_set_str(c, &s->header, "X-API-Key"))
        goto fail;
    if (!s->consumer_header && !cfg_set_str(c, &s->consumer_header, "X-Consumer"))
        goto fail;
    if ((s->header && !wg_is_token(s->header)) || !wg_is_token(s->consumer_header)) {
        cfg_error(c, block, "api_key: header names must be tokens");
        goto fail;
    }
    for (size_t i = 0; i < s->inline_keys.n; i++)
        if ((why = add_key(s, s->inline_keys.v[i].k, s->inline_keys.v[i].v))) {
            cfg_error(c, seen.value[cfg_key_index(&ak_table, "keys")], "keys: %s: %s",
                      s->inline_keys.v[i].k, why);
            goto fail;
        }
    struct file_ctx f = { c, s };
    if (s->file && !pp_read_lines(c, seen.value[cfg_key_index(&ak_table, "keys")], "keys",
                                  s->file, file_line, &f))
        goto fail;
    if (s->registry)
        wg_consumers_each(registry_key, s);
    if (s->n > 1)
        qsort(s->v, s->n, sizeof *s->v, digest_cmp);
    s->header_len = s->header ? strlen(s->header) : 0;
    s->query_len = s->query ? strlen(s->query) : 0;
    s->consumer_header_len = strlen(s->consumer_header);
    size_t wl = 40 + s->header_len + s->query_len;
    if (!(s->www_auth = malloc(wl)))
        goto oom;
    snprintf(s->www_auth, wl, "ApiKey %s=\"%s\"", s->header ? "header" : "query",
             s->header ? s->header : s->query);
    return s;
oom:
    wg_yaml_oom(&c->y);
fail:
    ak_free(s);
    return NULL;
}

static enum wg_policy_verdict refuse(const struct ak_state *s, struct wg_policy_req *r)
{
    return wg_policy_deny(r, 401, s->www_auth, "invalid or missing API key\n");
}

static enum wg_policy_verdict ak_request(const void *state, struct wg_policy_req *r)
{
    const struct ak_state *s = state;
    struct wg_pstr key;
    struct ak_entry probe, *e;

    wg_policy_head_remove(r, &r->req, s->consumer_header, s->consumer_header_len);
    if (!(s->header && wg_policy_head_get(&r->req, s->header, s->header_len, &key)) &&
        !(s->query && wg_policy_query_param(r, s->query, s->query_len, &key)))
        return refuse(s, r);
    SHA256((const unsigned char *)key.p, key.n, probe.digest);
    e = s->n ? bsearch(&probe, s->v, s->n, sizeof *s->v, digest_cmp) : NULL;
    if (!e)
        return refuse(s, r);
    if (s->header)
        wg_policy_head_remove(r, &r->req, s->header, s->header_len);
    r->consumer = (struct wg_pstr){ e->consumer, strlen(e->consumer) };
    wg_policy_head_add(r, &r->req, s->consumer_header, s->consumer_header_len, r->consumer.p,
                       r->consumer.n);
    return WG_POLICY_CONTINUE;
}

const struct wg_policy_ops wg_policy_api_key = {
    .name = "api_key",
    .parse = ak_parse,
    .free = ak_free,
    .request = ak_request,
};
