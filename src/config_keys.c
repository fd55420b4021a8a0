/* config_keys — the mapping walker and the typed key callbacks. */
#include "config_parse.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config_value.h"

#define FIELD(base, k, type) ((type *)((char *)(base) + (k)->off))

bool cfg_set_str(struct cfg_ctx *c, char **dst, const char *s)
{
    char *copy = strdup(s);

    if (!copy) {
        wg_yaml_oom(&c->y);
        return false;
    }
    free(*dst);
    *dst = copy;
    return true;
}

const char *cfg_text(struct cfg_ctx *c, yaml_node_t *v, const char *key)
{
    return wg_yaml_str(&c->y, v, key);
}

unsigned cfg_key_index(const struct cfg_table *t, const char *name)
{
    unsigned i = 0;

    while (i < t->n && strcmp(t->keys[i].name, name) != 0)
        i++;
    return i;
}

bool cfg_seen_has(const struct cfg_seen *s, const struct cfg_table *t, const char *name)
{
    unsigned i = cfg_key_index(t, name);

    return i < t->n && (s->mask & (1u << i));
}

static void unknown_key(struct cfg_ctx *c, const struct wg_yaml_pair *p,
                        const struct cfg_table *t, const char *what)
{
    const char *hint = wg_yaml_suggest(p->name, t->keys, t->n, sizeof t->keys[0]);

    if (hint)
        cfg_error(c, p->key, "unknown key '%.80s' in %s (did you mean '%s'?)", p->name, what,
                  hint);
    else
        cfg_error(c, p->key, "unknown key '%.80s' in %s", p->name, what);
}

void cfg_map(struct cfg_ctx *c, yaml_node_t *node, const struct cfg_table *t, void *base,
             struct cfg_seen *seen, const char *key, const char *what)
{
    struct wg_yaml_pairs pairs;

    if (seen)
        memset(seen, 0, sizeof *seen);
    if (!node || wg_yaml_is_null(node))
        return;
    if (node->type != YAML_MAPPING_NODE) {
        cfg_error(c, node, "%s: expected a mapping", key);
        return;
    }
    wg_yaml_pairs(&c->y, node, &pairs);
    for (size_t i = 0; i < pairs.n && !c->y.aborted; i++) {
        unsigned k = cfg_key_index(t, pairs.v[i].name);
        if (k == t->n) {
            unknown_key(c, &pairs.v[i], t, what ? what : t->what);
            continue;
        }
        if (seen && k < CFG_MAX_KEYS) {
            seen->mask |= 1u << k;
            seen->key[k] = pairs.v[i].key;
            seen->value[k] = pairs.v[i].value;
        }
        t->keys[k].parse(c, pairs.v[i].value, base, &t->keys[k]);
    }
    wg_yaml_pairs_free(&pairs);
}

void cfg_p_map(struct cfg_ctx *c, yaml_node_t *v, void *base, const struct cfg_key *k)
{
    cfg_map(c, v, k->extra, base, NULL, k->name, NULL);
}

void cfg_p_str(struct cfg_ctx *c, yaml_node_t *v, void *base, const struct cfg_key *k)
{
    const char *s = cfg_text(c, v, k->name);

    if (s)
        cfg_set_str(c, FIELD(base, k, char *), s);
}

void cfg_check_file(struct cfg_ctx *c, yaml_node_t *v, const char *path)
{
    struct stat st;
    int fd, err = 0;

    if (!c->check_files || !*path)
        return;
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        err = errno;
    else if (fstat(fd, &st) != 0)
        err = errno;
    else if (S_ISDIR(st.st_mode))
        err = EISDIR;
    if (fd >= 0)
        close(fd);
    if (err)
        cfg_error(c, v, "cannot open '%.200s': %s", path, strerror(err));
}

void cfg_p_file(struct cfg_ctx *c, yaml_node_t *v, void *base, const struct cfg_key *k)
{
    const char *s = cfg_text(c, v, k->name);

    if (s && cfg_set_str(c, FIELD(base, k, char *), s))
        cfg_check_file(c, v, s);
}

void cfg_p_bool(struct cfg_ctx *c, yaml_node_t *v, void *base, const struct cfg_key *k)
{
    const char *s = v->type == YAML_SCALAR_NODE ? (const char *)v->data.scalar.value : NULL;

    if (s && (!strcmp(s, "true") || !strcmp(s, "True") || !strcmp(s, "TRUE")))
        *FIELD(base, k, bool) = true;
    else if (s && (!strcmp(s, "false") || !strcmp(s, "False") || !strcmp(s, "FALSE")))
        *FIELD(base, k, bool) = false;
    else if (s)
        cfg_error(c, v, "%s: expected a boolean (true or false), got '%.80s'", k->name, s);
    else
        cfg_error(c, v, "%s: expected a boolean (true or false)", k->name);
}

bool cfg_uint(struct cfg_ctx *c, yaml_node_t *v, const char *key, uint64_t min,
              uint64_t max, uint64_t *out)
{
    const char *s = v->type == YAML_SCALAR_NODE ? (const char *)v->data.scalar.value : NULL;
    uint64_t n;
    const char *why;

    if (!s) {
        cfg_error(c, v, "%s: expected an integer", key);
        return false;
    }
    why = wg_uint_reason(s, UINT64_MAX, &n);
    if (why && strcmp(why, "expected an integer") == 0) {
        cfg_error(c, v, "%s: expected an integer, got '%.80s'", key, s);
        return false;
    }
    if (why || n < min || n > max) {
        cfg_error(c, v, "%s: out of range (%llu..%llu), got '%.80s'", key,
                  (unsigned long long)min, (unsigned long long)max, s);
        return false;
    }
    *out = n;
    return true;
}

void cfg_p_unsigned(struct cfg_ctx *c, yaml_node_t *v, void *base, const struct cfg_key *k)
{
    uint64_t n;

    if (cfg_uint(c, v, k->name, k->min, k->max, &n))
        *FIELD(base, k, unsigned) = (unsigned)n;
}

void cfg_p_u16(struct cfg_ctx *c, yaml_node_t *v, void *base, const struct cfg_key *k)
{
    uint64_t n;

    if (cfg_uint(c, v, k->name, k->min, k->max, &n))
        *FIELD(base, k, uint16_t) = (uint16_t)n;
}

void cfg_p_u64(struct cfg_ctx *c, yaml_node_t *v, void *base, const struct cfg_key *k)
{
    uint64_t n;

    if (cfg_uint(c, v, k->name, k->min, k->max, &n))
        *FIELD(base, k, uint64_t) = n;
}

bool cfg_duration(struct cfg_ctx *c, yaml_node_t *v, const struct cfg_key *k, uint64_t *ms)
{
    const char *s = v->type == YAML_SCALAR_NODE ? (const char *)v->data.scalar.value : NULL;
    const char *why;
    uint64_t n;

    if (!s) {
        cfg_error(c, v, "%s: expected a duration (250ms, 2s, 1m, 1h)", k->name);
        return false;
    }
    why = wg_duration_reason(s, &n);
    if (why) {
        cfg_error(c, v, "%s: %s, got '%.80s'", k->name, why, s);
        return false;
    }
    if (n < k->min) {
        cfg_error(c, v, "%s: must be at least %llums, got '%.80s'", k->name,
                  (unsigned long long)k->min, s);
        return false;
    }
    *ms = n;
    return true;
}

void cfg_p_duration(struct cfg_ctx *c, yaml_node_t *v, void *base, const struct cfg_key *k)
{
    uint64_t ms;

    if (cfg_duration(c, v, k, &ms))
        *FIELD(base, k, uint64_t) = ms;
}

void cfg_p_size(struct cfg_ctx *c, yaml_node_t *v, void *base, const struct cfg_key *k)
{
    const char *s = v->type == YAML_SCALAR_NODE ? (const char *)v->data.scalar.value : NULL;
    const char *why;
    uint64_t n;

    if (!s) {
        cfg_error(c, v, "%s: expected a size (4096, 32k, 1m)", k->name);
        return;
    }
    why = wg_size_reason(s, &n);
    if (why)
        cfg_error(c, v, "%s: %s, got '%.80s'", k->name, why, s);
    else if (n < k->min || n > k->max)
        cfg_error(c, v, "%s: out of range (%llu..%llu bytes), got '%.80s'", k->name,
                  (unsigned long long)k->min, (unsigned long long)k->max, s);
    else
        *FIELD(base, k, uint64_t) = n;
}

void cfg_p_addr(struct cfg_ctx *c, yaml_node_t *v, void *base, const struct cfg_key *k)
{
    const char *s = cfg_text(c, v, k->name);
    const char *why;

    if (!s)
        return;
    why = wg_addr_reason(s, FIELD(base, k, struct wg_addr));
    if (why)
        cfg_error(c, v, "%s: %s, got '%.80s'", k->name, why, s);
}

int cfg_enum(struct cfg_ctx *c, yaml_node_t *v, const char *key, const char *const *names)
{
    const char *s = cfg_text(c, v, key);
    char list[256] = "";
    size_t used = 0;

    if (!s)
        return -1;
    for (int i = 0; names[i]; i++)
        if (strcmp(s, names[i]) == 0)
            return i;
    for (int i = 0; names[i] && used < sizeof list; i++)
        used += (size_t)snprintf(list + used, sizeof list - used, "%s%s", i ? "|" : "",
                                 names[i]);
    cfg_error(c, v, "%s: invalid value '%.80s' (expected %s)", key, s, list);
    return -1;
}

void cfg_p_enum(struct cfg_ctx *c, yaml_node_t *v, void *base, const struct cfg_key *k)
{
    int i = cfg_enum(c, v, k->name, k->extra);

    if (i >= 0)
        *FIELD(base, k, int) = i;
}

void cfg_p_status(struct cfg_ctx *c, yaml_node_t *v, void *base, const struct cfg_key *k)
{
    const char *s = cfg_text(c, v, k->name);
    const char *why;

    if (!s)
        return;
    why = wg_status_reason(s, FIELD(base, k, struct wg_status_ranges));
    if (why)
        cfg_error(c, v, "%s: %s, got '%.80s'", k->name, why, s);
}

void cfg_p_cidrs(struct cfg_ctx *c, yaml_node_t *v, void *base, const struct cfg_key *k)
{
    struct wg_cidr_list *l = FIELD(base, k, struct wg_cidr_list);
    size_t n = v->type == YAML_SEQUENCE_NODE ? wg_yaml_seq_len(v) : 0;

    if (v->type != YAML_SEQUENCE_NODE) {
        cfg_error(c, v, "%s: expected a list of addresses or CIDR ranges", k->name);
        return;
    }
    free(l->v);
    l->v = NULL;
    l->n = 0;
    l->set = true;
    if (n == 0)
        return;
    if (!(l->v = calloc(n, sizeof *l->v))) {
        wg_yaml_oom(&c->y);
        return;
    }
    for (size_t i = 0; i < n && !c->y.aborted; i++) {
        yaml_node_t *item = wg_yaml_seq_item(&c->y, v, i);
        const char *t = item ? cfg_text(c, item, k->name) : NULL;
        const char *why = t ? wg_cidr_parse(t, &l->v[l->n]) : NULL;
        if (why)
            cfg_error(c, item, "%s: '%.80s': %s", k->name, t, why);
        else if (t)
            l->n++;
    }
}
