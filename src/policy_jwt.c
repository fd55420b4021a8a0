/* policy_jwt — JSON Web Tokens (RFC 7519) verified with OpenSSL 3's EVP
 * API (not Debian's libjwt 1.10: it has no JWKS, no kid lookup, no
 * PS256/EdDSA and allocates per check).
 *
 *  - Algorithms: RS256/384/512, PS256/384/512, ES256/384, EdDSA (Ed25519),
 *    HS256/384/512. The key decides: RS and PS only with RSA keys, ES256
 *    only with P-256, ES384 with P-384, EdDSA with Ed25519, HS only with a
 *    `secret` (or a JWKS "oct" key). So `alg: none` and the RS256 -> HS256
 *    confusion (a public key used as an HMAC secret) never verify; a JWKS
 *    key's own "alg" must match too. `algorithms:` narrows the list.
 *  - Keys: `keys: FILE`, a PEM file (public keys or certificates, kid-less)
 *    or a JWKS JSON file, read when the config loads, or an https:// JWKS
 *    URL fetched by the control thread (jwks.h; refreshed, refetched when a
 *    kid is unknown). A token's `kid` selects a key with that kid; without
 *    a kid every key of the right type is tried.
 *  - Claims: exp and nbf with `leeway`, `issuer` (iss equal), `audience`
 *    (aud equal or containing it), `required_claims` present. A `crit`
 *    header is refused (no extension is understood).
 *  - The token comes from `token:` sources tried in order: bearer (the
 *    Authorization header), header:NAME, cookie:NAME, query:NAME.
 *  - forward_claims: { claim: Header }: the headers are removed from the
 *    client's request first, then set from the verified claims (strings as
 *    is, other values as JSON). The `consumer_claim` (default sub) becomes
 *    the consumer.
 *  - Each worker caches tokens it verified (1024 slots, direct-mapped by a
 *    hash of the signature bytes, the whole token checked byte for byte on
 *    a hit), so a token seen again costs one hash, one compare and its
 *    exp/nbf check.
 */
#include "policy_parse.h"

#include <jansson.h>
#include <openssl/bio.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "waygate/balance.h"
#include "waygate/jwks.h"
#include "waygate/stats.h"

enum jwt_alg { ALG_RS256, ALG_RS384, ALG_RS512, ALG_PS256, ALG_PS384, ALG_PS512, ALG_ES256,
               ALG_ES384, ALG_EDDSA, ALG_HS256, ALG_HS384, ALG_HS512, ALG__N };
static const char *const alg_names[ALG__N] = { "RS256", "RS384", "RS512", "PS256", "PS384",
                                              "PS512", "ES256", "ES384", "EdDSA", "HS256",
                                              "HS384", "HS512" };

enum key_kind { KEY_RSA, KEY_P256, KEY_P384, KEY_ED25519, KEY_SECRET };

struct jwt_key {
    enum key_kind kind;
    char *kid;                          /* NULL: none */
    int alg;                            /* -1: any of its kind */
    EVP_PKEY *pkey;
    unsigned char *secret;
    size_t secret_len;
};

enum src_kind { SRC_BEARER, SRC_HEADER, SRC_COOKIE, SRC_QUERY };
struct jwt_src {
    enum src_kind kind;
    char *name;
    size_t len;
};

struct jwt_state {
    char *keys_path, *keys_ca, *secret, *issuer, *consumer_claim;
    uint64_t refresh_ms;
    bool remote;                        /* keys from a JWKS URL (jwks.h) */
    struct pp_strlist audience, required, algorithms, token;
    struct pp_strmap forward;
    uint64_t leeway_ms;
    struct jwt_key *keys;
    size_t n_keys;
    struct jwt_src *src;
    size_t n_src;
    bool alg_ok[ALG__N];
    uint64_t serial;
};

#define JF(f) offsetof(struct jwt_state, f)

static const struct cfg_key jwt_keys[] = {
    { "keys", cfg_p_str, JF(keys_path), 0, 0, NULL },
    { "keys_ca", cfg_p_file, JF(keys_ca), 0, 0, NULL },
    { "refresh", cfg_p_duration, JF(refresh_ms), 1000, 24 * 3600 * 1000ULL, NULL },
    { "secret", cfg_p_str, JF(secret), 0, 0, NULL },
    { "issuer", cfg_p_str, JF(issuer), 0, 0, NULL },
    { "audience", pp_p_strlist, JF(audience), 0, 0, NULL },
    { "leeway", cfg_p_duration, JF(leeway_ms), 0, 24 * 3600 * 1000ULL, NULL },
    { "required_claims", pp_p_strlist, JF(required), 0, 0, NULL },
    { "algorithms", pp_p_strlist, JF(algorithms), 0, 0, NULL },
    { "token", pp_p_strlist, JF(token), 0, 0, NULL },
    { "forward_claims", pp_p_strmap, JF(forward), 0, 0, NULL },
    { "consumer_claim", cfg_p_str, JF(consumer_claim), 0, 0, NULL },
};
static const struct cfg_table jwt_table = CFG_TABLE("jwt policy", jwt_keys);

static void key_free(struct jwt_key *k)
{
    free(k->kid);
    EVP_PKEY_free(k->pkey);
    if (k->secret)
        OPENSSL_clear_free(k->secret, k->secret_len);
}

static void jwt_free(void *p)
{
    struct jwt_state *s = p;

    if (!s)
        return;
    for (size_t i = 0; i < s->n_keys; i++)
        key_free(&s->keys[i]);
    free(s->keys);
    for (size_t i = 0; i < s->n_src; i++)
        free(s->src[i].name);
    free(s->src);
    free(s->keys_path);
    free(s->keys_ca);
    if (s->secret)
        OPENSSL_clear_free(s->secret, strlen(s->secret));
    free(s->issuer);
    free(s->consumer_claim);
    pp_strlist_free(&s->audience);
    pp_strlist_free(&s->required);
    pp_strlist_free(&s->algorithms);
    pp_strlist_free(&s->token);
    pp_strmap_free(&s->forward);
    free(s);
}

/* ---- base64url ------------------------------------------------------------ */

/* Decode unpadded base64url into out (capacity >= n * 3 / 4 + 3). -1: bad. */
static signed char b64_map[256];
static pthread_once_t b64_once = PTHREAD_ONCE_INIT;

static void b64_init(void)
{
    const char *a = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

    memset(b64_map, -1, sizeof b64_map);
    for (int i = 0; i < 64; i++)
        b64_map[(unsigned char)a[i]] = (signed char)i;
}

static long b64url_decode(const char *in, size_t n, unsigned char *out)
{
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    signed char *map = b64_map;

    pthread_once(&b64_once, b64_init);
    if (n % 4 == 1)
        return -1;
    for (size_t i = 0; i < n; i++) {
        int v = map[(unsigned char)in[i]];
        if (v < 0)
            return -1;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(acc >> bits);
        }
    }
    if (bits && (acc & ((1u << bits) - 1)))
        return -1;                      /* non-canonical trailing bits */
    return (long)o;
}

/* ---- keys ------------------------------------------------------------------- */

static enum key_kind pkey_kind(EVP_PKEY *k, bool *ok)
{
    char group[32];
    size_t gl;

    *ok = true;
    if (EVP_PKEY_is_a(k, "RSA") || EVP_PKEY_is_a(k, "RSA-PSS"))
        return KEY_RSA;
    if (EVP_PKEY_is_a(k, "ED25519"))
        return KEY_ED25519;
    if (EVP_PKEY_is_a(k, "EC") &&
        EVP_PKEY_get_utf8_string_param(k, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof group, &gl)) {
        if (strcmp(group, "prime256v1") == 0 || strcmp(group, "P-256") == 0)
            return KEY_P256;
        if (strcmp(group, "secp384r1") == 0 || strcmp(group, "P-384") == 0)
            return KEY_P384;
    }
    *ok = false;
    return KEY_RSA;
}

static bool push_key(struct jwt_state *s, struct jwt_key k)
{
    struct jwt_key *v = realloc(s->keys, (s->n_keys + 1) * sizeof *v);

    if (!v)
        return false;
    s->keys = v;
    v[s->n_keys++] = k;
    return true;
}

static const char *load_pem(struct jwt_state *s, const char *buf, size_t len)
{
    BIO *b = BIO_new_mem_buf(buf, (int)len);
    const char *why = NULL;
    size_t before = s->n_keys;

    if (!b)
        return "out of memory";
    for (;;) {
        char *name = NULL, *header = NULL;
        unsigned char *data = NULL;
        long dl;
        if (!PEM_read_bio(b, &name, &header, &data, &dl))
            break;
        const unsigned char *p = data;
        EVP_PKEY *k = NULL;
        if (strcmp(name, "PUBLIC KEY") == 0)
            k = d2i_PUBKEY(NULL, &p, dl);
        else if (strcmp(name, "CERTIFICATE") == 0) {
            X509 *x = d2i_X509(NULL, &p, dl);
            k = x ? X509_get_pubkey(x) : NULL;
            X509_free(x);
        } else if (strcmp(name, "RSA PUBLIC KEY") == 0) {
            k = d2i_PublicKey(EVP_PKEY_RSA, NULL, &p, dl);
        } else {
            why = strstr(name, "PRIVATE") ? "holds a private key: give waygate only public keys"
                                          : "holds a PEM block that is not a public key";
        }
        OPENSSL_free(name);
        OPENSSL_free(header);
        OPENSSL_free(data);
        if (why)
            break;
        bool ok;
        enum key_kind kind = k ? pkey_kind(k, &ok) : KEY_RSA;
        if (!k || !ok) {
            EVP_PKEY_free(k);
            why = "holds a key that is not RSA, EC P-256/P-384 or Ed25519";
            break;
        }
        if (!push_key(s, (struct jwt_key){ kind, NULL, -1, k, NULL, 0 })) {
            EVP_PKEY_free(k);
            why = "out of memory";
            break;
        }
    }
    BIO_free(b);
    if (!why && s->n_keys == before)
        why = "holds no PEM public key or certificate";
    return why;
}

/* A base64url JWK member into a fresh buffer. */
static unsigned char *jwk_bytes(json_t *jwk, const char *member, size_t *n)
{
    const char *t = json_string_value(json_object_get(jwk, member));
    size_t tl = t ? strlen(t) : 0;
    unsigned char *out;
    long got;

    if (!t || !tl || tl > 16384 || !(out = malloc(tl)))
        return NULL;
    if ((got = b64url_decode(t, tl, out)) <= 0) {
        free(out);
        return NULL;
    }
    *n = (size_t)got;
    return out;
}

static EVP_PKEY *jwk_rsa(json_t *jwk)
{
    size_t nn, en;
    unsigned char *n = jwk_bytes(jwk, "n", &nn), *e = jwk_bytes(jwk, "e", &en);
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    BIGNUM *bn = n ? BN_bin2bn(n, (int)nn, NULL) : NULL, *be = e ? BN_bin2bn(e, (int)en, NULL) : NULL;
    OSSL_PARAM *params = NULL;
    EVP_PKEY_CTX *ctx = NULL;
    EVP_PKEY *k = NULL;

    if (bld && bn && be && OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn) &&
        OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, be) &&
        (params = OSSL_PARAM_BLD_to_param(bld)) && (ctx = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL)) &&
        EVP_PKEY_fromdata_init(ctx) > 0)
        if (EVP_PKEY_fromdata(ctx, &k, EVP_PKEY_PUBLIC_KEY, params) <= 0)
            k = NULL;
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
    BN_free(bn);
    BN_free(be);
    free(n);
    free(e);
    return k;
}

static EVP_PKEY *jwk_ec(json_t *jwk, const char *group, size_t coord)
{
    size_t xn = 0, yn = 0;
    unsigned char *x = jwk_bytes(jwk, "x", &xn), *y = jwk_bytes(jwk, "y", &yn);
    unsigned char pt[1 + 2 * 66];
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    OSSL_PARAM *params = NULL;
    EVP_PKEY_CTX *ctx = NULL;
    EVP_PKEY *k = NULL;

    if (x && y && xn == coord && yn == coord) {
        pt[0] = 4;
        memcpy(pt + 1, x, coord);
        memcpy(pt + 1 + coord, y, coord);
        if (bld && OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, group, 0) &&
            OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, pt, 1 + 2 * coord) &&
            (params = OSSL_PARAM_BLD_to_param(bld)) &&
            (ctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL)) && EVP_PKEY_fromdata_init(ctx) > 0)
            if (EVP_PKEY_fromdata(ctx, &k, EVP_PKEY_PUBLIC_KEY, params) <= 0)
                k = NULL;
    }
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
    free(x);
    free(y);
    return k;
}

static int alg_index(const char *name)
{
    for (int i = 0; name && i < ALG__N; i++)
        if (strcmp(alg_names[i], name) == 0)
            return i;
    return -1;
}

static const char *load_jwk(struct jwt_state *s, json_t *jwk)
{
    const char *kty = json_string_value(json_object_get(jwk, "kty"));
    const char *crv = json_string_value(json_object_get(jwk, "crv"));
    const char *kid = json_string_value(json_object_get(jwk, "kid"));
    const char *use = json_string_value(json_object_get(jwk, "use"));
    const char *alg = json_string_value(json_object_get(jwk, "alg"));
    struct jwt_key k = { KEY_RSA, NULL, -1, NULL, NULL, 0 };

    if (!kty)
        return "a key without \"kty\"";
    if (use && strcmp(use, "sig") != 0)
        return NULL;                    /* an encryption key: not ours */
    if (alg && (k.alg = alg_index(alg)) < 0)
        return "a key with an unknown \"alg\"";
    if (strcmp(kty, "RSA") == 0) {
        k.kind = KEY_RSA;
        k.pkey = jwk_rsa(jwk);
    } else if (strcmp(kty, "EC") == 0 && crv && strcmp(crv, "P-256") == 0) {
        k.kind = KEY_P256;
        k.pkey = jwk_ec(jwk, "P-256", 32);
    } else if (strcmp(kty, "EC") == 0 && crv && strcmp(crv, "P-384") == 0) {
        k.kind = KEY_P384;
        k.pkey = jwk_ec(jwk, "P-384", 48);
    } else if (strcmp(kty, "OKP") == 0 && crv && strcmp(crv, "Ed25519") == 0) {
        size_t xn = 0;
        unsigned char *x = jwk_bytes(jwk, "x", &xn);
        k.kind = KEY_ED25519;
        k.pkey = x && xn == 32 ? EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, x, xn) : NULL;
        free(x);
    } else if (strcmp(kty, "oct") == 0) {
        k.kind = KEY_SECRET;
        if (!(k.secret = jwk_bytes(jwk, "k", &k.secret_len)))
            return "an oct key without a valid \"k\"";
    } else {
        return "a key type other than RSA, EC P-256/P-384, OKP Ed25519 or oct";
    }
    if (k.kind != KEY_SECRET && !k.pkey)
        return "a key whose parameters do not make a valid public key";
    if (kid && !(k.kid = strdup(kid))) {
        key_free(&k);
        return "out of memory";
    }
    if (!push_key(s, k)) {
        key_free(&k);
        return "out of memory";
    }
    return NULL;
}

static const char *load_jwks(struct jwt_state *s, const char *buf, size_t len)
{
    json_error_t err;
    json_t *doc = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &err), *keys, *jwk;
    const char *why = NULL;
    size_t i;

    if (!doc)
        return "is not valid JSON";
    keys = json_object_get(doc, "keys");
    if (!json_is_array(keys))
        why = "is not a JWKS (no \"keys\" array)";
    json_array_foreach(keys, i, jwk) {
        if (why)
            break;
        why = json_is_object(jwk) ? load_jwk(s, jwk) : "a key that is not an object";
    }
    if (!why && s->n_keys == 0)
        why = "holds no signature key";
    json_decref(doc);
    return why;
}

static bool src_parse(struct cfg_ctx *c, yaml_node_t *at, struct jwt_state *s)
{
    static const char *const def = "bearer";
    size_t n = s->token.n ? s->token.n : 1;

    if (!(s->src = calloc(n, sizeof *s->src))) {
        wg_yaml_oom(&c->y);
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        const char *t = s->token.n ? s->token.v[i] : def, *arg = strchr(t, ':');
        struct jwt_src *d = &s->src[s->n_src];
        if (strcmp(t, "bearer") == 0)
            d->kind = SRC_BEARER;
        else if (arg && strncmp(t, "header:", 7) == 0 && wg_is_token(arg + 1))
            d->kind = SRC_HEADER;
        else if (arg && strncmp(t, "cookie:", 7) == 0 && wg_is_token(arg + 1))
            d->kind = SRC_COOKIE;
        else if (arg && strncmp(t, "query:", 6) == 0 && arg[1])
            d->kind = SRC_QUERY;
        else {
            cfg_error(c, at, "token: expected bearer, header:NAME, cookie:NAME or query:NAME, "
                      "got '%.80s'", t);
            return false;
        }
        if (d->kind != SRC_BEARER) {
            if (!(d->name = strdup(arg + 1))) {
                wg_yaml_oom(&c->y);
                return false;
            }
            d->len = strlen(d->name);
        }
        s->n_src++;
    }
    return true;
}

static const char *load_keys(struct cfg_ctx *c, yaml_node_t *at, struct jwt_state *s)
{
    size_t len;
    char *buf;
    const char *why;

    if (strncmp(s->keys_path, "http://", 7) == 0)
        return "a JWKS URL must be https://";
    if (strncmp(s->keys_path, "https://", 8) == 0) {
        const char *doc = wg_jwks_cached(s->keys_path, &len);
        s->remote = true;
        cfg_jwks_url(c, s->keys_path, s->keys_ca, s->refresh_ms);
        return doc ? load_jwks(s, doc, len) : NULL;     /* none yet: refused until fetched */
    }
    if (!c->check_files)
        return NULL;
    if (!(buf = pp_read_file(c, at, "keys", s->keys_path, &len)))
        return "";
    size_t i = 0;
    while (i < len && (buf[i] == ' ' || buf[i] == '\n' || buf[i] == '\r' || buf[i] == '\t'))
        i++;
    why = i < len && buf[i] == '{' ? load_jwks(s, buf, len) : load_pem(s, buf, len);
    free(buf);
    return why;
}

static void *jwt_parse(struct cfg_ctx *c, yaml_node_t *block)
{
    struct jwt_state *s = calloc(1, sizeof *s);
    struct cfg_seen seen;
    const char *why;

    if (!s) {
        wg_yaml_oom(&c->y);
        return NULL;
    }
    s->serial = pp_serial();
    s->refresh_ms = 300000;
    if (!pp_block(c, block, &jwt_table, s, &seen, "jwt"))
        goto fail;
    if (!s->keys_path && !s->secret) {
        cfg_error(c, block, "jwt: needs 'keys' (a PEM or JWKS file) or 'secret' (HS256)");
        goto fail;
    }
    if (s->secret && strlen(s->secret) < 32) {
        cfg_error(c, seen.value[cfg_key_index(&jwt_table, "secret")],
                  "secret: an HMAC secret needs at least 32 bytes");
        goto fail;
    }
    if (s->keys_path && (why = load_keys(c, seen.value[cfg_key_index(&jwt_table, "keys")], s))) {
        if (*why)
            cfg_error(c, seen.value[cfg_key_index(&jwt_table, "keys")], "keys: '%.200s' %s",
                      s->keys_path, why);
        goto fail;
    }
    if (s->secret) {
        struct jwt_key k = { KEY_SECRET, NULL, -1, NULL, NULL, strlen(s->secret) };
        if (!(k.secret = OPENSSL_memdup(s->secret, k.secret_len)) || !push_key(s, k)) {
            OPENSSL_free(k.secret);
            wg_yaml_oom(&c->y);
            goto fail;
        }
    }
    for (int i = 0; i < ALG__N; i++)
        s->alg_ok[i] = s->algorithms.n == 0;
    for (size_t i = 0; i < s->algorithms.n; i++) {
        int a = alg_index(s->algorithms.v[i]);
        if (a < 0) {
            const char *hint = wg_yaml_suggest(s->algorithms.v[i], alg_names, ALG__N,
                                               sizeof alg_names[0]);
            cfg_error(c, seen.value[cfg_key_index(&jwt_table, "algorithms")],
                      "algorithms: unknown algorithm '%.40s'%s%s%s", s->algorithms.v[i],
                      hint ? " (did you mean '" : "", hint ? hint : "", hint ? "'?)" : "");
            goto fail;
        }
        s->alg_ok[a] = true;
    }
    if (!src_parse(c, seen.value[cfg_key_index(&jwt_table, "token")], s))
        goto fail;
    if (!s->consumer_claim && !cfg_set_str(c, &s->consumer_claim, "sub"))
        goto fail;
    return s;
fail:
    jwt_free(s);
    return NULL;
}

/* ---- verification ------------------------------------------------------------ */

static bool kind_fits(enum key_kind k, int alg)
{
    switch (alg) {
    case ALG_RS256: case ALG_RS384: case ALG_RS512:
    case ALG_PS256: case ALG_PS384: case ALG_PS512: return k == KEY_RSA;
    case ALG_ES256: return k == KEY_P256;
    case ALG_ES384: return k == KEY_P384;
    case ALG_EDDSA: return k == KEY_ED25519;
    default: return k == KEY_SECRET;
    }
}

static const EVP_MD *alg_md(int alg)
{
    switch (alg) {
    case ALG_RS256: case ALG_PS256: case ALG_ES256: case ALG_HS256: return EVP_sha256();
    case ALG_RS384: case ALG_PS384: case ALG_ES384: case ALG_HS384: return EVP_sha384();
    case ALG_EDDSA: return NULL;
    default: return EVP_sha512();
    }
}

/* JWS ECDSA signatures are r || s; OpenSSL wants DER. */
static int ecdsa_der(const unsigned char *sig, size_t n, unsigned char *der, size_t cap)
{
    ECDSA_SIG *es = ECDSA_SIG_new();
    BIGNUM *r = BN_bin2bn(sig, (int)(n / 2), NULL), *s = BN_bin2bn(sig + n / 2, (int)(n / 2), NULL);
    int len = -1;

    if (es && r && s && ECDSA_SIG_set0(es, r, s)) {
        r = s = NULL;
        if (i2d_ECDSA_SIG(es, NULL) <= (int)cap) {
            unsigned char *p = der;
            len = i2d_ECDSA_SIG(es, &p);
        }
    }
    BN_free(r);
    BN_free(s);
    ECDSA_SIG_free(es);
    return len;
}

static bool verify_with(const struct jwt_key *k, int alg, const char *input, size_t in_len,
                        const unsigned char *sig, size_t sig_len)
{
    const EVP_MD *md = alg_md(alg);
    unsigned char der[160];
    bool ok = false;

    if (k->kind == KEY_SECRET) {
        unsigned char mac[EVP_MAX_MD_SIZE];
        unsigned int ml = 0;
        return HMAC(md, k->secret, (int)k->secret_len, (const unsigned char *)input, in_len, mac,
                    &ml) &&
               ml == sig_len && CRYPTO_memcmp(mac, sig, ml) == 0;
    }
    if (alg == ALG_ES256 || alg == ALG_ES384) {
        size_t want = alg == ALG_ES256 ? 64 : 96;
        int dl = sig_len == want ? ecdsa_der(sig, sig_len, der, sizeof der) : -1;
        if (dl < 0)
            return false;
        sig = der;
        sig_len = (size_t)dl;
    }
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pctx = NULL;
    if (ctx && EVP_DigestVerifyInit(ctx, &pctx, md, NULL, k->pkey) == 1) {
        bool pss = alg == ALG_PS256 || alg == ALG_PS384 || alg == ALG_PS512;
        if (!pss || (EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) > 0 &&
                     EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) > 0))
            ok = EVP_DigestVerify(ctx, sig, sig_len, (const unsigned char *)input, in_len) == 1;
    }
    EVP_MD_CTX_free(ctx);
    return ok;
}

#define JWT_MAX 8192

struct cache_entry {
    uint64_t serial, hash;
    int64_t exp, nbf;                   /* INT64_MAX / INT64_MIN: absent */
    json_t *claims;
    char *token;
    size_t len;
};
#define JWT_CACHE 1024

static pthread_key_t cache_key;
static pthread_once_t cache_once = PTHREAD_ONCE_INIT;

static void cache_free(void *p)
{
    struct cache_entry *c = p;

    for (size_t i = 0; c && i < JWT_CACHE; i++) {
        json_decref(c[i].claims);
        free(c[i].token);
    }
    free(c);
}

static void cache_init(void) { pthread_key_create(&cache_key, cache_free); }

static struct cache_entry *cache_get(void)
{
    struct cache_entry *c;

    pthread_once(&cache_once, cache_init);
    if (!(c = pthread_getspecific(cache_key))) {
        c = calloc(JWT_CACHE, sizeof *c);
        if (c && pthread_setspecific(cache_key, c) != 0) {
            free(c);
            c = NULL;
        }
    }
    return c;
}

static bool claim_time(json_t *claims, const char *name, int64_t *out, int64_t absent)
{
    json_t *v = json_object_get(claims, name);

    *out = absent;
    if (!v)
        return true;
    if (json_is_integer(v))
        *out = (int64_t)json_integer_value(v);
    else if (json_is_real(v))
        *out = (int64_t)json_real_value(v);
    else
        return false;
    return true;
}

static bool aud_ok(const struct jwt_state *s, json_t *aud)
{
    size_t i;
    json_t *a;

    if (!s->audience.n)
        return true;
    if (json_is_string(aud))
        return pp_strlist_has(&s->audience, json_string_value(aud), json_string_length(aud), false);
    json_array_foreach(aud, i, a)
        if (json_is_string(a) &&
            pp_strlist_has(&s->audience, json_string_value(a), json_string_length(a), false))
            return true;
    return false;
}

/* Verify a token; claims on success (a new reference), or NULL with *why. */
static json_t *verify(const struct jwt_state *s, const char *tok, size_t n, int64_t *exp,
                      int64_t *nbf, const char **why)
{
    const char *d1 = memchr(tok, '.', n), *d2 = d1 ? memchr(d1 + 1, '.', n - (size_t)(d1 + 1 - tok)) : NULL;
    unsigned char hbuf[JWT_MAX], pbuf[JWT_MAX], sig[1024];
    long hl, pl, sl;
    json_t *hdr = NULL, *claims = NULL;
    json_error_t err;

    *why = "malformed token";
    if (!d1 || !d2 || memchr(d2 + 1, '.', n - (size_t)(d2 + 1 - tok)) ||
        (size_t)(n - (size_t)(d2 + 1 - tok)) > sizeof sig * 4 / 3)
        return NULL;
    if ((hl = b64url_decode(tok, (size_t)(d1 - tok), hbuf)) < 0 ||
        (pl = b64url_decode(d1 + 1, (size_t)(d2 - d1 - 1), pbuf)) < 0 ||
        (sl = b64url_decode(d2 + 1, n - (size_t)(d2 + 1 - tok), sig)) <= 0)
        return NULL;
    if (!(hdr = json_loadb((char *)hbuf, (size_t)hl, JSON_REJECT_DUPLICATES, &err)) ||
        !json_is_object(hdr))
        goto out;
    const char *alg_name = json_string_value(json_object_get(hdr, "alg"));
    const char *kid = json_string_value(json_object_get(hdr, "kid"));
    int alg = alg_index(alg_name);
    if (json_object_get(hdr, "crit")) {
        *why = "unsupported critical header";
        goto out;
    }
    if (alg < 0 || !s->alg_ok[alg]) {
        *why = "algorithm not allowed";
        goto out;
    }
    bool verified = false, any = false;
    for (size_t i = 0; i < s->n_keys && !verified; i++) {
        const struct jwt_key *k = &s->keys[i];
        if (!kind_fits(k->kind, alg) || (k->alg >= 0 && k->alg != alg) ||
            (kid && k->kid && strcmp(kid, k->kid) != 0))
            continue;
        any = true;
        verified = verify_with(k, alg, tok, (size_t)(d2 - tok), sig, (size_t)sl);
    }
    if (!verified) {
        *why = any ? "bad signature" : "no key for this token";
        if (!any && s->remote && s->n_keys)
            wg_jwks_note_unknown_kid();     /* rotated keys: the control thread refetches */
        goto out;
    }
    *why = "malformed claims";
    if (!(claims = json_loadb((char *)pbuf, (size_t)pl, JSON_REJECT_DUPLICATES, &err)) ||
        !json_is_object(claims) || !claim_time(claims, "exp", exp, INT64_MAX) ||
        !claim_time(claims, "nbf", nbf, INT64_MIN))
        goto bad;
    if (s->issuer) {
        const char *iss = json_string_value(json_object_get(claims, "iss"));
        if (!iss || strcmp(iss, s->issuer) != 0) {
            *why = "wrong issuer";
            goto bad;
        }
    }
    if (!aud_ok(s, json_object_get(claims, "aud"))) {
        *why = "wrong audience";
        goto bad;
    }
    for (size_t i = 0; i < s->required.n; i++)
        if (!json_object_get(claims, s->required.v[i])) {
            *why = "a required claim is missing";
            goto bad;
        }
    json_decref(hdr);
    return claims;
bad:
    json_decref(claims);
    claims = NULL;
out:
    json_decref(hdr);
    return NULL;
}

/* ---- the hook --------------------------------------------------------------- */

static bool find_token(const struct jwt_state *s, struct wg_policy_req *r, struct wg_pstr *t)
{
    for (size_t i = 0; i < s->n_src; i++) {
        const struct jwt_src *src = &s->src[i];
        switch (src->kind) {
        case SRC_BEARER:
            if (wg_policy_head_get(&r->req, "authorization", 13, t) && t->n > 7 &&
                strncasecmp(t->p, "bearer ", 7) == 0) {
                t->p += 7;
                t->n -= 7;
                while (t->n && *t->p == ' ') {
                    t->p++;
                    t->n--;
                }
                return t->n > 0;
            }
            break;
        case SRC_HEADER:
            if (wg_policy_head_get(&r->req, src->name, src->len, t) && t->n)
                return true;
            break;
        case SRC_COOKIE:
            if (wg_policy_cookie(r, src->name, src->len, t) && t->n)
                return true;
            break;
        case SRC_QUERY:
            if (wg_policy_query_param(r, src->name, src->len, t) && t->n)
                return true;
            break;
        }
    }
    return false;
}

static enum wg_policy_verdict refuse(struct wg_policy_req *r, const char *why)
{
    char buf[160];

    if (why)
        snprintf(buf, sizeof buf, "Bearer realm=\"waygate\", error=\"invalid_token\", "
                 "error_description=\"%s\"", why);
    return wg_policy_deny(r, 401, why ? buf : "Bearer realm=\"waygate\"",
                          why ? "invalid token\n" : "token required\n");
}

static enum wg_policy_verdict jwt_request(const void *state, struct wg_policy_req *r)
{
    const struct jwt_state *s = state;
    struct wg_pstr t;
    struct cache_entry *cache = cache_get(), *ce = NULL;
    int64_t exp, nbf, leeway = (int64_t)(s->leeway_ms / 1000);
    json_t *claims = NULL;
    const char *why;

    for (size_t i = 0; i < s->forward.n; i++)
        wg_policy_head_remove(r, &r->req, s->forward.v[i].v, strlen(s->forward.v[i].v));
    if (!find_token(s, r, &t))
        return refuse(r, NULL);
    if (t.n > JWT_MAX)
        return refuse(r, "token too long");
    /* the slot: a fast hash of the signature bytes; a hit is the whole token
     * compared byte for byte, so a collision only costs a verification */
    const char *sig = memrchr(t.p, '.', t.n);
    size_t sig_n = sig ? t.n - (size_t)(sig + 1 - t.p) : t.n;
    uint64_t h = wg_balance_hash_bytes(sig ? sig + 1 : t.p, sig_n);
    if (cache) {
        ce = &cache[h % JWT_CACHE];
        if (ce->serial == s->serial && ce->hash == h && ce->len == t.n &&
            memcmp(ce->token, t.p, t.n) == 0) {
            claims = json_incref(ce->claims);
            exp = ce->exp;
            nbf = ce->nbf;
        }
    }
    if (!claims) {
        if (!(claims = verify(s, t.p, t.n, &exp, &nbf, &why)))
            return refuse(r, why);
        char *copy = ce ? malloc(t.n) : NULL;
        if (copy) {
            memcpy(copy, t.p, t.n);
            json_decref(ce->claims);
            free(ce->token);
            *ce = (struct cache_entry){ s->serial, h, exp, nbf, json_incref(claims), copy, t.n };
        }
    }
    if (exp != INT64_MAX && r->unix_s > exp + leeway) {
        json_decref(claims);
        return refuse(r, "token expired");
    }
    if (nbf != INT64_MIN && r->unix_s + leeway < nbf) {
        json_decref(claims);
        return refuse(r, "token not yet valid");
    }
    json_decref(r->claims);
    r->claims = claims;
    struct wg_pstr v;
    if (wg_policy_var_get(r, WG_PVAR_CLAIM, s->consumer_claim, &v))
        r->consumer = v;
    for (size_t i = 0; i < s->forward.n; i++)
        if (wg_policy_var_get(r, WG_PVAR_CLAIM, s->forward.v[i].k, &v)) {
            struct wg_pstr clean;
            struct pp_tmpl lit = { &(struct pp_tmpl_seg){ true, WG_PVAR_CLAIM,
                                                         s->forward.v[i].k,
                                                         strlen(s->forward.v[i].k) }, 1, false };
            if (pp_tmpl_expand(&lit, r, &clean))
                wg_policy_head_set(r, &r->req, s->forward.v[i].v, strlen(s->forward.v[i].v),
                                   clean.p, clean.n);
        }
    return WG_POLICY_CONTINUE;
}

const struct wg_policy_ops wg_policy_jwt = {
    .name = "jwt",
    .parse = jwt_parse,
    .free = jwt_free,
    .request = jwt_request,
};
