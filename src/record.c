/* record — record sets, address text, and the file registry (DESIGN §5):
 *
 *     users:
 *       - { id: u1, address: 127.0.0.1, port: 9001, weight: 100 }
 *
 * The file parser is self-contained here; the etcd value formats of §7
 * live in their own file. */
#include "waygate/record.h"

#include <arpa/inet.h>
#include <jansson.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "config_value.h"
#include "config_yaml.h"

void wg_record_free(struct wg_record *r)
{
    free(r->service);
    free(r->id);
    free(r->metadata);
    r->service = r->id = r->metadata = NULL;
}

bool wg_record_select(const struct wg_record *r, enum wg_upstream_protocol want, bool tls,
                      const struct sockaddr_storage **addr, socklen_t *addrlen,
                      enum wg_upstream_protocol *protocol)
{
    *addr = &r->addr;
    *addrlen = r->addrlen;
    switch (want) {
    case WG_UPSTREAM_HTTP1:
        *protocol = WG_UPSTREAM_HTTP1;
        return !r->grpc_endpoint;
    case WG_UPSTREAM_H2C:
    case WG_UPSTREAM_H2:
        if (r->grpc_addrlen) {
            *addr = &r->grpc_addr;
            *addrlen = r->grpc_addrlen;
        }
        *protocol = want;
        return true;
    case WG_UPSTREAM_AUTO:
        break;
    }
    *protocol = r->protocol == WG_RECORD_PROTO_HTTP2 ? (tls ? WG_UPSTREAM_H2 : WG_UPSTREAM_H2C)
                                                     : WG_UPSTREAM_HTTP1;
    return true;
}

uint8_t wg_record_protocol_word(const char *s)
{
    static const char *const h2[] = { "grpc", "h2c", "h2", "http2", NULL };
    static const char *const h1[] = { "http", "http1", "http/1.1", NULL };
    for (size_t i = 0; s && h2[i]; i++)
        if (strcasecmp(s, h2[i]) == 0)
            return WG_RECORD_PROTO_HTTP2;
    for (size_t i = 0; s && h1[i]; i++)
        if (strcasecmp(s, h1[i]) == 0)
            return WG_RECORD_PROTO_HTTP1;
    return WG_RECORD_PROTO_UNSET;
}

const char *wg_upstream_protocol_name(enum wg_upstream_protocol p)
{
    static const char *const names[] = { "http1", "h2c", "h2", "auto" };
    return (unsigned)p < 4 ? names[p] : "?";
}

/* Ownership of r's strings passes to the set even on failure (they are
 * freed then); *r is left empty either way. */
bool wg_record_set_push(struct wg_record_set *set, struct wg_record *r)
{
    if (set->n == set->cap) {
        size_t cap = set->cap ? set->cap * 2 : 16;
        struct wg_record *v = realloc(set->v, cap * sizeof *v);
        if (!v) {
            wg_record_free(r);
            return false;
        }
        set->v = v;
        set->cap = cap;
    }
    set->v[set->n++] = *r;
    memset(r, 0, sizeof *r);
    return true;
}

void wg_record_set_clear(struct wg_record_set *set)
{
    for (size_t i = 0; i < set->n; i++)
        wg_record_free(&set->v[i]);
    free(set->v);
    memset(set, 0, sizeof *set);
}

static int record_cmp(const void *a, const void *b)
{
    const struct wg_record *x = a, *y = b;
    int c = strcmp(x->service, y->service);

    return c ? c : strcmp(x->id, y->id);
}

void wg_record_set_sort(struct wg_record_set *set)
{
    if (set->n > 1)
        qsort(set->v, set->n, sizeof *set->v, record_cmp);
}

uint64_t wg_record_name_hash(const char *s)
{
    uint64_t h = 14695981039346656037ULL;

    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

/* ---- the file registry ------------------------------------------------------ */

/* Ids already seen in one service: open addressing, for large files. */
struct id_table {
    const char **id;
    unsigned long *line;
    size_t cap, n;
};

static size_t id_slot(const struct id_table *t, const char *id)
{
    size_t i = (size_t)wg_record_name_hash(id) & (t->cap - 1);

    while (t->id[i] && strcmp(t->id[i], id) != 0)
        i = (i + 1) & (t->cap - 1);
    return i;
}

static bool id_grow(struct id_table *t)
{
    struct id_table bigger = { NULL, NULL, t->cap ? t->cap * 2 : 64, t->n };

    bigger.id = calloc(bigger.cap, sizeof *bigger.id);
    bigger.line = calloc(bigger.cap, sizeof *bigger.line);
    if (!bigger.id || !bigger.line) {
        free(bigger.id);
        free(bigger.line);
        return false;
    }
    for (size_t i = 0; i < t->cap; i++) {
        if (!t->id[i])
            continue;
        size_t j = id_slot(&bigger, t->id[i]);
        bigger.id[j] = t->id[i];
        bigger.line[j] = t->line[i];
    }
    free(t->id);
    free(t->line);
    *t = bigger;
    return true;
}

/* 0 when `id` is new (and now recorded), else the line of the first. */
static unsigned long id_seen(struct wg_yaml *y, struct id_table *t, const char *id,
                             unsigned long line)
{
    size_t i;

    if ((t->n + 1) * 2 > t->cap && !id_grow(t)) {
        wg_yaml_oom(y);
        return 0;
    }
    i = id_slot(t, id);
    if (t->id[i])
        return t->line[i];
    t->id[i] = id;
    t->line[i] = line;
    t->n++;
    return 0;
}

static void id_table_free(struct id_table *t)
{
    free(t->id);
    free(t->line);
    memset(t, 0, sizeof *t);
}

struct file_parse {
    struct wg_yaml y;
    const char *service;
    struct id_table ids;
    struct wg_record_set *out;
    unsigned invalid;
    char label[128];                /* "instance 'd1'" or "instance #2" */
};

static const char *const instance_keys[] = { "id", "address", "port", "weight", "metadata",
                                             "protocol" };

#define entry_error(fp, node, ...) wg_yaml_error(&(fp)->y, (node)->start_mark, __VA_ARGS__)

static bool node_uint(struct file_parse *fp, yaml_node_t *v, const char *key, uint64_t min,
                      uint64_t max, uint64_t *out)
{
    const char *t = wg_yaml_str(&fp->y, v, key);

    if (!t)
        return false;
    if (wg_uint_reason(t, max, out) && strspn(t, "0123456789") != strlen(t)) {
        entry_error(fp, v, "%s: %s: expected an integer, got '%.80s'", fp->label, key, t);
        return false;
    }
    if (wg_uint_reason(t, max, out) || *out < min) {
        entry_error(fp, v, "%s: %s out of range (%llu..%llu), got '%.80s'", fp->label, key,
                    (unsigned long long)min, (unsigned long long)max, t);
        return false;
    }
    return true;
}

/* metadata: a mapping of names to scalars, kept as a JSON object of
 * strings (plain null -> null); NULL when absent or empty. */
static char *metadata_json(struct file_parse *fp, yaml_node_t *v)
{
    struct wg_yaml_pairs pairs;
    json_t *obj;
    char *text = NULL;

    if (wg_yaml_is_null(v))
        return NULL;
    if (v->type != YAML_MAPPING_NODE) {
        entry_error(fp, v, "%s: metadata: expected a mapping", fp->label);
        return NULL;
    }
    if (!(obj = json_object())) {
        wg_yaml_oom(&fp->y);
        return NULL;
    }
    wg_yaml_pairs(&fp->y, v, &pairs);
    for (size_t i = 0; i < pairs.n; i++) {
        yaml_node_t *val = pairs.v[i].value;
        const char *t = val->type == YAML_SCALAR_NODE ? wg_yaml_str(&fp->y, val, "metadata")
                                                       : NULL;
        if (val->type != YAML_SCALAR_NODE)
            entry_error(fp, val, "%s: metadata value for '%.80s' must be a scalar", fp->label,
                        pairs.v[i].name);
        else if (t && json_object_set_new(obj, pairs.v[i].name,
                                          wg_yaml_is_null(val) ? json_null() : json_string(t)))
            entry_error(fp, val, "%s: metadata value for '%.80s' is not valid UTF-8",
                        fp->label, pairs.v[i].name);
    }
    if (pairs.n && !(text = json_dumps(obj, JSON_COMPACT)))
        wg_yaml_oom(&fp->y);
    wg_yaml_pairs_free(&pairs);
    json_decref(obj);
    return text;
}

static void instance_address(struct file_parse *fp, yaml_node_t *v, struct wg_record *r)
{
    const char *t = wg_yaml_str(&fp->y, v, "address");

    if (t && !wg_ip_literal(t, 0, &r->addr, &r->addrlen))
        entry_error(fp, v,
                    "%s: address '%.80s' is not an IP literal (hostnames are not supported "
                    "in the file registry)", fp->label, t);
}

static void instance_key(struct file_parse *fp, const struct wg_yaml_pair *p,
                         struct wg_record *r, uint64_t *port)
{
    uint64_t n;
    const char *hint;

    if (strcmp(p->name, "id") == 0)
        return;
    if (strcmp(p->name, "address") == 0) {
        instance_address(fp, p->value, r);
    } else if (strcmp(p->name, "port") == 0) {
        node_uint(fp, p->value, "port", 1, 65535, port);
    } else if (strcmp(p->name, "weight") == 0) {
        if (node_uint(fp, p->value, "weight", 0, WG_WEIGHT_MAX, &n))
            r->weight = (uint32_t)n;
    } else if (strcmp(p->name, "metadata") == 0) {
        r->metadata = metadata_json(fp, p->value);
    } else if (strcmp(p->name, "protocol") == 0) {
        const char *t = wg_yaml_str(&fp->y, p->value, "protocol");
        if (t && !(r->protocol = wg_record_protocol_word(t)))
            entry_error(fp, p->value, "%s: protocol must be grpc, h2c, h2, http2, http or http1, "
                        "got '%.80s'", fp->label, t);
    } else if ((hint = wg_yaml_suggest(p->name, instance_keys, 6, sizeof instance_keys[0]))) {
        entry_error(fp, p->key, "%s: unknown key '%.80s' (did you mean '%s'?)", fp->label,
                    p->name, hint);
    } else {
        entry_error(fp, p->key, "%s: unknown key '%.80s'", fp->label, p->name);
    }
}

static const struct wg_yaml_pair *pair_named(const struct wg_yaml_pairs *p, const char *name)
{
    for (size_t i = 0; i < p->n; i++)
        if (strcmp(p->v[i].name, name) == 0)
            return &p->v[i];
    return NULL;
}

/* The id first: it names the instance in every later message. */
static void instance_id(struct file_parse *fp, const struct wg_yaml_pairs *pairs,
                        yaml_node_t *node, struct wg_record *r)
{
    const struct wg_yaml_pair *id = pair_named(pairs, "id");
    const char *t = id ? wg_yaml_str(&fp->y, id->value, "id") : NULL;

    if (!id)
        entry_error(fp, node, "%s: missing required key 'id'", fp->label);
    else if (t && !*t)
        entry_error(fp, id->value, "%s: id must not be empty", fp->label);
    else if (t && !(r->id = strdup(t)))
        wg_yaml_oom(&fp->y);
    if (r->id)
        snprintf(fp->label, sizeof fp->label, "instance '%.100s'", r->id);
}

static void instance_fields(struct file_parse *fp, yaml_node_t *node, struct wg_record *r)
{
    struct wg_yaml_pairs pairs;
    uint64_t port = 0;

    wg_yaml_pairs(&fp->y, node, &pairs);
    instance_id(fp, &pairs, node, r);
    for (size_t i = 0; i < pairs.n && !fp->y.aborted; i++)
        instance_key(fp, &pairs.v[i], r, &port);
    if (!pair_named(&pairs, "address"))
        entry_error(fp, node, "%s: missing required key 'address'", fp->label);
    if (!pair_named(&pairs, "port"))
        entry_error(fp, node, "%s: missing required key 'port'", fp->label);
    if (r->addr.ss_family == AF_INET)
        ((struct sockaddr_in *)&r->addr)->sin_port = htons((uint16_t)port);
    else if (r->addr.ss_family == AF_INET6)
        ((struct sockaddr_in6 *)&r->addr)->sin6_port = htons((uint16_t)port);
    wg_yaml_pairs_free(&pairs);
}

static void parse_instance(struct file_parse *fp, yaml_node_t *node, size_t index)
{
    struct wg_record r;
    unsigned long before = fp->y.n_errors, first;

    memset(&r, 0, sizeof r);
    r.weight = WG_WEIGHT_DEFAULT;
    snprintf(fp->label, sizeof fp->label, "instance #%zu", index + 1);
    if (node->type != YAML_MAPPING_NODE)
        entry_error(fp, node, "%s: expected a mapping", fp->label);
    else
        instance_fields(fp, node, &r);
    if (fp->y.n_errors == before && !fp->y.aborted &&
        (first = id_seen(&fp->y, &fp->ids, r.id, wg_yaml_line(node))))
        entry_error(fp, node, "%s: duplicate id (first at line %lu)", fp->label, first);
    if (fp->y.n_errors == before && !fp->y.aborted && !(r.service = strdup(fp->service)))
        wg_yaml_oom(&fp->y);
    if (fp->y.n_errors != before || fp->y.aborted) {
        wg_record_free(&r);
        fp->invalid++;
    } else if (!wg_record_set_push(fp->out, &r)) {
        wg_yaml_oom(&fp->y);
    }
}

static void parse_service(struct file_parse *fp, const struct wg_yaml_pair *p)
{
    char prefix[320];
    yaml_node_t *list = p->value;

    snprintf(prefix, sizeof prefix, "service '%.255s': ", p->name);
    fp->y.prefix = prefix;
    fp->service = p->name;
    if (!wg_service_name_ok(p->name)) {
        entry_error(fp, p->key, "invalid service name (non-empty, no '/' or spaces)");
        fp->invalid++;
    } else if (list->type != YAML_SEQUENCE_NODE && !wg_yaml_is_null(list)) {
        entry_error(fp, list, "expected a list of instances");
        fp->invalid++;
    } else if (list->type == YAML_SEQUENCE_NODE) {
        for (size_t i = 0; i < wg_yaml_seq_len(list) && !fp->y.aborted; i++) {
            yaml_node_t *item = wg_yaml_seq_item(&fp->y, list, i);
            if (item)
                parse_instance(fp, item, i);
        }
    }
    id_table_free(&fp->ids);
    fp->y.prefix = NULL;
}

static bool parse_root(struct file_parse *fp, yaml_node_t *root)
{
    struct wg_yaml_pairs pairs;

    if (root->type != YAML_MAPPING_NODE) {
        wg_yaml_error(&fp->y, root->start_mark,
                      "expected a mapping of service names to lists of instances");
        return false;
    }
    wg_yaml_pairs(&fp->y, root, &pairs);
    for (size_t i = 0; i < pairs.n && !fp->y.aborted; i++)
        parse_service(fp, &pairs.v[i]);
    wg_yaml_pairs_free(&pairs);
    return !fp->y.aborted;
}

bool wg_record_parse_file_buffer(const char *name, const char *buf, size_t len,
                                 struct wg_record_set *out, struct wg_errors *warnings,
                                 unsigned *invalid)
{
    struct file_parse fp;
    size_t start = out->n;
    enum wg_yaml_status st;
    bool ok;

    memset(&fp, 0, sizeof fp);
    fp.out = out;
    st = wg_yaml_load(&fp.y, name, buf, len, warnings);
    ok = st != WG_YAML_FAILED;
    if (st == WG_YAML_OK)
        ok = parse_root(&fp, wg_yaml_root(&fp.y));
    wg_yaml_sort_errors(&fp.y);
    wg_yaml_close(&fp.y);
    /* A file that could not be walked to its end applies nothing. */
    while (!ok && out->n > start)
        wg_record_free(&out->v[--out->n]);
    if (invalid)
        *invalid = fp.invalid;
    return ok;
}

bool wg_record_parse_file(const char *path, struct wg_record_set *out,
                          struct wg_errors *warnings, unsigned *invalid)
{
    char *buf;
    size_t len;
    bool ok;

    if (invalid)
        *invalid = 0;
    if (!wg_yaml_read_file(path, &buf, &len, warnings))
        return false;
    ok = wg_record_parse_file_buffer(path, buf, len, out, warnings, invalid);
    free(buf);
    return ok;
}
