/* policy_basic_auth — RFC 7617 Basic credentials checked against an
 * htpasswd file read when the config loads (start, SIGHUP). Hashes:
 * bcrypt ($2y$, $2b$, $2a$), SHA-256/512-crypt ($5$, $6$) and MD5-crypt ($1$)
 * through libxcrypt's crypt_rn (thread-safe, no static buffer), Apache's
 * default $apr1$ MD5 and {SHA} here. A line in another format is a config
 * error at its FILE:LINE. A bcrypt check costs milliseconds of CPU, so
 * each worker remembers the credentials it verified last (a direct-mapped
 * table of keyed hashes of the Authorization value, per policy version);
 * a failed check is never cached. The user name becomes the consumer. */
#include "policy_parse.h"

#include <crypt.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "waygate/stats.h"

struct ba_user {
    char *name;
    char *hash;
};

struct ba_state {
    char *htpasswd, *realm, *consumer_header;
    struct ba_user *v;
    size_t n;
    char *www_auth;
    uint64_t serial;
};

#define BF(f) offsetof(struct ba_state, f)

static const struct cfg_key ba_keys[] = {
    { "htpasswd", cfg_p_str, BF(htpasswd), 0, 0, NULL },
    { "realm", cfg_p_str, BF(realm), 0, 0, NULL },
    { "consumer_header", cfg_p_str, BF(consumer_header), 0, 0, NULL },
};
static const struct cfg_table ba_table = CFG_TABLE("basic_auth policy", ba_keys);

static void ba_free(void *p)
{
    struct ba_state *s = p;

    if (!s)
        return;
    for (size_t i = 0; i < s->n; i++) {
        free(s->v[i].name);
        free(s->v[i].hash);
    }
    free(s->v);
    free(s->htpasswd);
    free(s->realm);
    free(s->consumer_header);
    free(s->www_auth);
    free(s);
}

static bool known_hash(const char *h)
{
    static const char *const prefixes[] = { "$2y$", "$2b$", "$2a$", "$5$", "$6$", "$1$",
                                            "$apr1$", "{SHA}" };

    for (size_t i = 0; i < sizeof prefixes / sizeof prefixes[0]; i++)
        if (strncmp(h, prefixes[i], strlen(prefixes[i])) == 0)
            return true;
    return false;
}

struct file_ctx {
    struct cfg_ctx *c;
    struct ba_state *s;
};

static bool file_line(void *arg, unsigned line, char *user, char *hash)
{
    struct file_ctx *f = arg;
    struct ba_user *v;

    if (!hash || !*user) {
        pp_file_error(f->c, f->s->htpasswd, line, "expected 'user:hash'");
        return true;
    }
    if (!known_hash(hash)) {
        pp_file_error(f->c, f->s->htpasswd, line,
                      "user '%.80s': unsupported hash (use bcrypt $2y$, SHA-crypt $5$/$6$, "
                      "$apr1$, $1$ or {SHA})", user);
        return true;
    }
    if (!(v = realloc(f->s->v, (f->s->n + 1) * sizeof *v)))
        goto oom;
    f->s->v = v;
    if (!(v[f->s->n].name = strdup(user)))
        goto oom;
    if (!(v[f->s->n].hash = strdup(hash))) {
        free(v[f->s->n].name);
        goto oom;
    }
    f->s->n++;
    return true;
oom:
    wg_yaml_oom(&f->c->y);
    return false;
}

static void *ba_parse(struct cfg_ctx *c, yaml_node_t *block)
{
    struct ba_state *s = calloc(1, sizeof *s);
    struct cfg_seen seen;

    if (!s) {
        wg_yaml_oom(&c->y);
        return NULL;
    }
    s->serial = pp_serial();
    if (!pp_block(c, block, &ba_table, s, &seen, "basic_auth"))
        goto fail;
    if (!s->htpasswd) {
        cfg_error(c, block, "basic_auth: missing required key 'htpasswd'");
        goto fail;
    }
    if (!s->realm && !cfg_set_str(c, &s->realm, "waygate"))
        goto fail;
    if (!s->consumer_header && !cfg_set_str(c, &s->consumer_header, "X-Consumer"))
        goto fail;
    if (!wg_is_token(s->consumer_header) || strchr(s->realm, '"') || strchr(s->realm, '\\')) {
        cfg_error(c, block, "basic_auth: consumer_header must be a token and realm may not "
                  "hold '\"' or '\\'");
        goto fail;
    }
    if (!(s->www_auth = malloc(strlen(s->realm) + 40))) {
        wg_yaml_oom(&c->y);
        goto fail;
    }
    sprintf(s->www_auth, "Basic realm=\"%s\", charset=\"UTF-8\"", s->realm);
    struct file_ctx f = { c, s };
    if (!pp_read_lines(c, seen.value[cfg_key_index(&ba_table, "htpasswd")], "htpasswd",
                       s->htpasswd, file_line, &f))
        goto fail;
    return s;
fail:
    ba_free(s);
    return NULL;
}

/* ---- Apache MD5 ($apr1$) --------------------------------------------------- */

static const char itoa64[] = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

static void to64(char **p, unsigned long v, int n)
{
    while (n-- > 0) {
        *(*p)++ = itoa64[v & 0x3f];
        v >>= 6;
    }
}

static bool md5(const void *a, size_t an, const void *b, size_t bn, const void *c, size_t cn,
                unsigned char out[16])
{
    EVP_MD_CTX *x = EVP_MD_CTX_new();
    bool ok = x && EVP_DigestInit_ex(x, EVP_md5(), NULL) && EVP_DigestUpdate(x, a, an) &&
              EVP_DigestUpdate(x, b, bn) && EVP_DigestUpdate(x, c, cn) &&
              EVP_DigestFinal_ex(x, out, NULL);

    EVP_MD_CTX_free(x);
    return ok;
}

/* The $apr1$ hash of pw with the salt of `setting` into out[64]. */
static bool apr1(const char *pw, size_t pn, const char *setting, char *out)
{
    const char *salt = setting + 6, *end = strchr(salt, '$');
    size_t sn = end ? (size_t)(end - salt) : strlen(salt);
    unsigned char fin[16];
    EVP_MD_CTX *x = EVP_MD_CTX_new();
    bool ok;

    if (sn > 8)
        sn = 8;
    if (!x || !md5(pw, pn, salt, sn, pw, pn, fin))
        goto fail;
    ok = EVP_DigestInit_ex(x, EVP_md5(), NULL) && EVP_DigestUpdate(x, pw, pn) &&
         EVP_DigestUpdate(x, "$apr1$", 6) && EVP_DigestUpdate(x, salt, sn);
    for (size_t i = pn; ok && i > 0; i -= i > 16 ? 16 : i)
        ok = EVP_DigestUpdate(x, fin, i > 16 ? 16 : i);
    memset(fin, 0, sizeof fin);
    for (size_t i = pn; ok && i; i >>= 1)
        ok = EVP_DigestUpdate(x, i & 1 ? (const void *)fin : (const void *)pw, 1);
    if (!ok || !EVP_DigestFinal_ex(x, fin, NULL))
        goto fail;
    for (int i = 0; i < 1000; i++) {
        unsigned char a[16];
        memcpy(a, fin, 16);
        const void *p1 = i & 1 ? (const void *)pw : (const void *)a;
        size_t n1 = i & 1 ? pn : 16;
        const void *p3 = i & 1 ? (const void *)a : (const void *)pw;
        size_t n3 = i & 1 ? 16 : pn;
        if (!EVP_DigestInit_ex(x, EVP_md5(), NULL) || !EVP_DigestUpdate(x, p1, n1) ||
            (i % 3 && !EVP_DigestUpdate(x, salt, sn)) || (i % 7 && !EVP_DigestUpdate(x, pw, pn)) ||
            !EVP_DigestUpdate(x, p3, n3) || !EVP_DigestFinal_ex(x, fin, NULL))
            goto fail;
    }
    EVP_MD_CTX_free(x);
    char *p = out + sprintf(out, "$apr1$%.*s$", (int)sn, salt);
    to64(&p, ((unsigned long)fin[0] << 16) | ((unsigned long)fin[6] << 8) | fin[12], 4);
    to64(&p, ((unsigned long)fin[1] << 16) | ((unsigned long)fin[7] << 8) | fin[13], 4);
    to64(&p, ((unsigned long)fin[2] << 16) | ((unsigned long)fin[8] << 8) | fin[14], 4);
    to64(&p, ((unsigned long)fin[3] << 16) | ((unsigned long)fin[9] << 8) | fin[15], 4);
    to64(&p, ((unsigned long)fin[4] << 16) | ((unsigned long)fin[10] << 8) | fin[5], 4);
    to64(&p, fin[11], 2);
    *p = 0;
    return true;
fail:
    EVP_MD_CTX_free(x);
    return false;
}

static bool check_password(const char *hash, const char *pw, size_t pn)
{
    size_t hn = strlen(hash);

    if (strncmp(hash, "{SHA}", 5) == 0) {
        unsigned char d[SHA_DIGEST_LENGTH];
        unsigned char b64[32];
        SHA1((const unsigned char *)pw, pn, d);
        int n = EVP_EncodeBlock(b64, d, sizeof d);
        return (size_t)n == hn - 5 && pp_ct_equal(b64, hash + 5, (size_t)n);
    }
    if (strncmp(hash, "$apr1$", 6) == 0) {
        char out[64];
        return hn < sizeof out && apr1(pw, pn, hash, out) && strlen(out) == hn &&
               pp_ct_equal(out, hash, hn);
    }
    if (memchr(pw, 0, pn))
        return false;
    char *p = strndup(pw, pn);
    struct crypt_data *cd = calloc(1, sizeof *cd);
    bool ok = false;
    if (p && cd) {
        const char *h = crypt_rn(p, hash, cd, sizeof *cd);
        ok = h && strlen(h) == hn && pp_ct_equal(h, hash, hn);
    }
    if (p)
        explicit_bzero(p, pn);
    free(p);
    free(cd);
    return ok;
}

/* ---- per-worker cache of verified credentials ------------------------------- */

#define BA_CACHE 256
struct ba_cache_entry {
    uint64_t serial, hash;
};
static _Thread_local struct ba_cache_entry ba_cache[BA_CACHE];

static enum wg_policy_verdict refuse(const struct ba_state *s, struct wg_policy_req *r)
{
    return wg_policy_deny(r, 401, s->www_auth, "authentication required\n");
}

static enum wg_policy_verdict ba_request(const void *state, struct wg_policy_req *r)
{
    const struct ba_state *s = state;
    struct wg_pstr v;
    unsigned char dec[768];
    int n;

    wg_policy_head_remove(r, &r->req, s->consumer_header, strlen(s->consumer_header));
    if (!wg_policy_head_get(&r->req, "authorization", 13, &v) || v.n < 7 ||
        strncasecmp(v.p, "basic ", 6) != 0)
        return refuse(s, r);
    struct wg_pstr b64 = { v.p + 6, v.n - 6 };
    while (b64.n && *b64.p == ' ') {
        b64.p++;
        b64.n--;
    }
    if (b64.n == 0 || b64.n % 4 || b64.n > 1000)
        return refuse(s, r);
    n = EVP_DecodeBlock(dec, (const unsigned char *)b64.p, (int)b64.n);
    if (n < 0)
        return refuse(s, r);
    n -= (b64.p[b64.n - 1] == '=') + (b64.p[b64.n - 2] == '=');
    char *colon = memchr(dec, ':', (size_t)n);
    if (!colon)
        return refuse(s, r);
    size_t un = (size_t)(colon - (char *)dec), pn = (size_t)n - un - 1;
    const struct ba_user *u = NULL;
    for (size_t i = 0; i < s->n && !u; i++)
        if (strlen(s->v[i].name) == un && memcmp(s->v[i].name, dec, un) == 0)
            u = &s->v[i];
    uint64_t h = pp_keyed_hash(dec, (size_t)n);
    struct ba_cache_entry *ce = &ba_cache[h % BA_CACHE];
    bool ok = u && ((ce->serial == s->serial && ce->hash == h) ||
                    check_password(u->hash, colon + 1, pn));
    explicit_bzero(dec, sizeof dec);
    if (!ok)
        return refuse(s, r);
    *ce = (struct ba_cache_entry){ s->serial, h };
    r->consumer = (struct wg_pstr){ u->name, un };
    wg_policy_head_remove(r, &r->req, "authorization", 13);
    wg_policy_head_add(r, &r->req, s->consumer_header, strlen(s->consumer_header), u->name, un);
    return WG_POLICY_CONTINUE;
}

const struct wg_policy_ops wg_policy_basic_auth = {
    .name = "basic_auth",
    .parse = ba_parse,
    .free = ba_free,
    .request = ba_request,
};
