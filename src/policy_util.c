/* policy_util — config helpers, templates and hashing shared by policies. */
#include "policy_parse.h"

#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "config_value.h"

bool pp_block(struct cfg_ctx *c, yaml_node_t *node, const struct cfg_table *t, void *base,
              struct cfg_seen *seen, const char *name)
{
    unsigned long before = c->y.n_errors;

    if (!node || wg_yaml_is_null(node)) {
        if (seen)
            memset(seen, 0, sizeof *seen);
        return true;
    }
    cfg_map(c, node, t, base, seen, name, t->what);
    return c->y.n_errors == before && !c->y.aborted;
}

void pp_strlist_free(struct pp_strlist *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i]);
    free(l->v);
    l->v = NULL;
    l->n = 0;
}

void pp_strmap_free(struct pp_strmap *m)
{
    for (size_t i = 0; i < m->n; i++) {
        free(m->v[i].k);
        free(m->v[i].v);
    }
    free(m->v);
    m->v = NULL;
    m->n = 0;
}

bool pp_strlist_has(const struct pp_strlist *l, const char *s, size_t n, bool nocase)
{
    for (size_t i = 0; i < l->n; i++)
        if (strlen(l->v[i]) == n &&
            (nocase ? strncasecmp(l->v[i], s, n) == 0 : memcmp(l->v[i], s, n) == 0))
            return true;
    return false;
}

static bool strlist_push(struct cfg_ctx *c, struct pp_strlist *l, const char *s)
{
    char **v = realloc(l->v, (l->n + 1) * sizeof *v);

    if (!v || !(v[l->n] = strdup(s))) {
        if (v)
            l->v = v;
        wg_yaml_oom(&c->y);
        return false;
    }
    l->v = v;
    l->n++;
    return true;
}

void pp_p_strlist(struct cfg_ctx *c, yaml_node_t *v, void *base, const struct cfg_key *k)
{
    struct pp_strlist *l = (struct pp_strlist *)((char *)base + k->off);
    bool tokens = k->extra && strcmp(k->extra, "token") == 0;
    size_t n = v->type == YAML_SEQUENCE_NODE ? wg_yaml_seq_len(v) : 1;

    pp_strlist_free(l);
    if (v->type == YAML_MAPPING_NODE) {
        cfg_error(c, v, "%s: expected a list of strings", k->name);
        return;
    }
    for (size_t i = 0; i < n && !c->y.aborted; i++) {
        yaml_node_t *item = v->type == YAML_SEQUENCE_NODE ? wg_yaml_seq_item(&c->y, v, i) : v;
        const char *s = item ? cfg_text(c, item, k->name) : NULL;
        if (!s)
            continue;
        if (tokens && !wg_is_token(s))
            cfg_error(c, item, "%s: '%.80s' is not a valid name (RFC 9110 token)", k->name, s);
        else if (!*s)
            cfg_error(c, item, "%s: empty string", k->name);
        else if (!strlist_push(c, l, s))
            return;
    }
}

void pp_p_strmap(struct cfg_ctx *c, yaml_node_t *v, void *base, const struct cfg_key *k)
{
    struct pp_strmap *m = (struct pp_strmap *)((char *)base + k->off);
    struct wg_yaml_pairs pairs;

    pp_strmap_free(m);
    if (wg_yaml_is_null(v))
        return;
    if (v->type != YAML_MAPPING_NODE) {
        cfg_error(c, v, "%s: expected a mapping of names to values", k->name);
        return;
    }
    wg_yaml_pairs(&c->y, v, &pairs);
    if (pairs.n && !(m->v = calloc(pairs.n, sizeof *m->v)))
        wg_yaml_oom(&c->y);
    for (size_t i = 0; m->v && i < pairs.n; i++) {
        const char *val = cfg_text(c, pairs.v[i].value, pairs.v[i].name);
        if (!wg_is_token(pairs.v[i].name)) {
            cfg_error(c, pairs.v[i].key, "%s: '%.80s' is not a valid header name", k->name,
                      pairs.v[i].name);
            continue;
        }
        if (!val)
            continue;
        if (!(m->v[m->n].k = strdup(pairs.v[i].name)) || !(m->v[m->n].v = strdup(val))) {
            free(m->v[m->n].k);
            wg_yaml_oom(&c->y);
            break;
        }
        m->n++;
    }
    wg_yaml_pairs_free(&pairs);
}

/* ---- templates ---------------------------------------------------------- */

static bool seg_push(struct pp_tmpl *t, bool is_var, enum wg_policy_var var, const char *s,
                     size_t n)
{
    struct pp_tmpl_seg *v = realloc(t->v, (t->n + 1) * sizeof *v);
    char *d = malloc(n + 1);

    if (v)
        t->v = v;
    if (!v || !d) {
        free(d);
        return false;
    }
    memcpy(d, s, n);
    d[n] = 0;
    t->v[t->n++] = (struct pp_tmpl_seg){ is_var, var, d, n };
    return true;
}

static const struct { const char *name; enum wg_policy_var var; } tmpl_vars[] = {
    { "client_ip", WG_PVAR_CLIENT_IP }, { "request_id", WG_PVAR_REQUEST_ID },
    { "host", WG_PVAR_HOST }, { "consumer", WG_PVAR_CONSUMER },
};

static bool var_char(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           ch == '_' || ch == '-';
}

/* A byte an HTTP field value may hold: no CTL but HTAB, no DEL (the
 * parser's rule; a template's text must keep it, an expansion is made to). */
static bool value_byte(unsigned char ch)
{
    return (ch >= 0x20 || ch == '\t') && ch != 0x7f;
}

bool pp_tmpl_compile(struct cfg_ctx *c, yaml_node_t *at, const char *key, const char *s,
                     struct pp_tmpl *out)
{
    size_t lit = 0, i = 0, n = strlen(s);
    char *buf = malloc(n + 1);

    memset(out, 0, sizeof *out);
    if (!buf)
        goto oom;
    for (size_t k = 0; k < n; k++)
        if (!value_byte((unsigned char)s[k])) {
            cfg_error(c, at, "%s: control characters are not allowed in a header value", key);
            free(buf);
            return false;
        }
    while (i < n) {
        if (s[i] != '$') {
            buf[lit++] = s[i++];
            continue;
        }
        if (i + 1 < n && s[i + 1] == '$') {
            buf[lit++] = '$';
            i += 2;
            continue;
        }
        size_t j = i + 1;
        bool jwt = n - j > 4 && memcmp(s + j, "jwt.", 4) == 0;
        if (jwt)
            j += 4;
        size_t start = j;
        while (j < n && var_char(s[j]))
            j++;
        if (j == start) {
            cfg_error(c, at, "%s: '$' must start a variable ($client_ip, $request_id, $host, "
                      "$consumer, $jwt.<claim>) or be written '$$'", key);
            goto fail;
        }
        enum wg_policy_var var = WG_PVAR_CLAIM;
        if (!jwt) {
            size_t k = 0, nv = sizeof tmpl_vars / sizeof tmpl_vars[0];
            while (k < nv && (strlen(tmpl_vars[k].name) != j - start ||
                              memcmp(tmpl_vars[k].name, s + start, j - start) != 0))
                k++;
            if (k == nv) {
                char name[64];
                snprintf(name, sizeof name, "%.*s", (int)(j - start), s + start);
                const char *hint = wg_yaml_suggest(name, tmpl_vars, nv, sizeof tmpl_vars[0]);
                if (hint)
                    cfg_error(c, at, "%s: unknown variable '$%s' (did you mean '$%s'?)", key,
                              name, hint);
                else
                    cfg_error(c, at, "%s: unknown variable '$%s'", key, name);
                goto fail;
            }
            var = tmpl_vars[k].var;
        }
        if ((lit && !seg_push(out, false, 0, buf, lit)) ||
            !seg_push(out, true, var, s + start, j - start))
            goto oom;
        lit = 0;
        i = j;
    }
    if ((lit || out->n == 0) && !seg_push(out, false, 0, buf, lit))
        goto oom;
    out->literal = out->n == 1 && !out->v[0].is_var;
    free(buf);
    return true;
oom:
    wg_yaml_oom(&c->y);
fail:
    free(buf);
    pp_tmpl_free(out);
    return false;
}

void pp_tmpl_free(struct pp_tmpl *t)
{
    for (size_t i = 0; i < t->n; i++)
        free(t->v[i].text);
    free(t->v);
    t->v = NULL;
    t->n = 0;
}

bool pp_tmpl_expand(const struct pp_tmpl *t, struct wg_policy_req *r, struct wg_pstr *out)
{
    struct wg_pstr parts[16];
    size_t total = 0, n = t->n < 16 ? t->n : 16;
    char *d;

    if (t->literal) {
        *out = (struct wg_pstr){ t->v[0].text, t->v[0].len };
        return true;
    }
    for (size_t i = 0; i < n; i++) {
        if (!t->v[i].is_var)
            parts[i] = (struct wg_pstr){ t->v[i].text, t->v[i].len };
        else if (!wg_policy_var_get(r, t->v[i].var, t->v[i].text, &parts[i]))
            parts[i] = (struct wg_pstr){ "", 0 };
        total += parts[i].n;
    }
    if (!(d = wg_policy_alloc(r, total + 1)))
        return false;
    total = 0;
    for (size_t i = 0; i < n; i++) {
        /* a claim's text may hold anything: keep the head well-formed */
        for (size_t k = 0; k < parts[i].n; k++) {
            unsigned char ch = (unsigned char)parts[i].p[k];
            d[total++] = value_byte(ch) ? (char)ch : ' ';
        }
    }
    d[total] = 0;
    *out = (struct wg_pstr){ d, total };
    return true;
}

bool pp_key_parse(struct cfg_ctx *c, yaml_node_t *v, const char *key, struct pp_key *out)
{
    const char *s = cfg_text(c, v, key);

    out->arg = NULL;
    if (!s)
        return false;
    if (strcmp(s, "client_ip") == 0)
        out->var = WG_PVAR_CLIENT_IP;
    else if (strcmp(s, "consumer") == 0)
        out->var = WG_PVAR_CONSUMER;
    else if (strcmp(s, "route") == 0)
        out->var = WG_PVAR_ROUTE;
    else if (strncmp(s, "header:", 7) == 0 && wg_is_token(s + 7))
        out->var = WG_PVAR_HEADER;
    else if (strncmp(s, "claim:", 6) == 0 && s[6])
        out->var = WG_PVAR_CLAIM;
    else {
        cfg_error(c, v, "%s: expected client_ip, header:NAME, claim:NAME, consumer or route, "
                  "got '%.80s'", key, s);
        return false;
    }
    if (out->var == WG_PVAR_HEADER || out->var == WG_PVAR_CLAIM) {
        if (!(out->arg = strdup(strchr(s, ':') + 1))) {
            wg_yaml_oom(&c->y);
            return false;
        }
    }
    return true;
}

bool pp_ct_equal(const void *a, const void *b, size_t n) { return CRYPTO_memcmp(a, b, n) == 0; }

char *pp_read_file(struct cfg_ctx *c, yaml_node_t *v, const char *key, const char *path,
                   size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t n = 0, cap = 0;

    cfg_watch_file(c, path);            /* watched even when unreadable now */
    if (!f) {
        cfg_error(c, v, "%s: cannot read '%.200s': %s", key, path, strerror(errno));
        return NULL;
    }
    for (;;) {
        if (cap - n < 4096) {
            char *nb = cap >= (16u << 20) ? NULL : realloc(buf, cap ? cap * 2 : 8192);
            if (!nb) {
                cfg_error(c, v, "%s: '%.200s' is larger than 16 MiB", key, path);
                free(buf);
                fclose(f);
                return NULL;
            }
            buf = nb;
            cap = cap ? cap * 2 : 8192;
        }
        size_t got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
        if (got == 0)
            break;
    }
    if (ferror(f)) {
        cfg_error(c, v, "%s: cannot read '%.200s': %s", key, path, strerror(errno));
        free(buf);
        fclose(f);
        return NULL;
    }
    fclose(f);
    buf[n] = 0;
    *len = n;
    return buf;
}

/* ---- SipHash-2-4 ------------------------------------------------------------ */

static uint64_t sip_k0, sip_k1;
static pthread_once_t sip_once = PTHREAD_ONCE_INIT;

static void sip_init(void)
{
    unsigned char k[16];

    if (RAND_bytes(k, sizeof k) != 1)
        memset(k, 0x5a, sizeof k);
    memcpy(&sip_k0, k, 8);
    memcpy(&sip_k1, k + 8, 8);
}

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                                           \
    do {                                                                                   \
        v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32);                          \
        v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2;                                             \
        v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0;                                             \
        v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32);                          \
    } while (0)

uint64_t pp_keyed_hash(const void *data, size_t len)
{
    const unsigned char *p = data;
    uint64_t v0, v1, v2, v3, m, b = (uint64_t)len << 56;
    size_t i;

    pthread_once(&sip_once, sip_init);
    v0 = 0x736f6d6570736575ULL ^ sip_k0;
    v1 = 0x646f72616e646f6dULL ^ sip_k1;
    v2 = 0x6c7967656e657261ULL ^ sip_k0;
    v3 = 0x7465646279746573ULL ^ sip_k1;
    for (i = 0; i + 8 <= len; i += 8) {
        memcpy(&m, p + i, 8);
        v3 ^= m;
        SIPROUND;
        SIPROUND;
        v0 ^= m;
    }
    for (size_t k = 0; i + k < len; k++)
        b |= (uint64_t)p[i + k] << (8 * k);
    v3 ^= b;
    SIPROUND;
    SIPROUND;
    v0 ^= b;
    v2 ^= 0xff;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

void pp_file_error(struct cfg_ctx *c, const char *path, unsigned line, const char *fmt, ...)
{
    char msg[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    c->y.n_errors++;
    if (c->y.errs)
        wg_errors_add(c->y.errs, "%.300s:%u:1: %s", path, line, msg);
}

bool pp_each_line(char *buf, bool (*cb)(void *arg, unsigned line, char *name, char *value),
                  void *arg)
{
    unsigned line = 0;

    for (char *p = buf; p && *p;) {
        char *nl = strchr(p, '\n'), *value;
        if (nl)
            *nl = 0;
        line++;
        size_t n = strlen(p);
        while (n && (p[n - 1] == '\r' || p[n - 1] == ' ' || p[n - 1] == '\t'))
            p[--n] = 0;
        while (*p == ' ' || *p == '\t')
            p++;
        if ((value = strchr(p, ':'))) {
            char *e = value;
            *value++ = 0;
            while (e > p && (e[-1] == ' ' || e[-1] == '\t'))
                *--e = 0;
            while (*value == ' ' || *value == '\t')
                value++;
        }
        if (*p != '#' && (*p || value) && !cb(arg, line, p, value))
            return false;
        p = nl ? nl + 1 : NULL;
    }
    return true;
}

bool pp_read_lines(struct cfg_ctx *c, yaml_node_t *at, const char *key, const char *path,
                   bool (*cb)(void *arg, unsigned line, char *name, char *value), void *arg)
{
    unsigned long before = c->y.n_errors;
    size_t len;
    char *buf;

    if (!c->check_files)
        return true;
    if (!(buf = pp_read_file(c, at, key, path, &len)))
        return false;
    pp_each_line(buf, cb, arg);
    free(buf);
    return c->y.n_errors == before;
}

uint64_t pp_serial(void)
{
    static _Atomic uint64_t next = 1;

    return atomic_fetch_add(&next, 1);
}
