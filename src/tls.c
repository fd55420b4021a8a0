/* tls — see include/waygate/tls.h */
#include "waygate/tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <openssl/x509v3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "waygate/errors.h"
#include "waygate/log.h"

/* DESIGN §11: the thread's error queue must be empty before each SSL call;
 * peeking is cheaper than clearing an already empty queue. */
static inline void clear_errors(void)
{
    if (ERR_peek_error())
        ERR_clear_error();
}

/* ---- session ticket keys ----
 * A ring of three keys: [0] encrypts new tickets, [1] and [2] still decrypt
 * (and ask for renewal). Rotation writes the next of four slots and then
 * publishes its index; a slot is rewritten only three rotations later, long
 * after any handshake that loaded it has finished. */
struct ticket_key {
    unsigned char name[16];
    unsigned char aes[32];
    unsigned char hmac[32];
};
struct ticket_ring {
    struct ticket_key k[3];
};
static struct ticket_ring rings[4];
static _Atomic int ring_now = -1;
/* Fetched once (control thread, first rotation) rather than per ticket:
 * EVP_aes_256_cbc() is a legacy object that OpenSSL 3 resolves with a
 * provider fetch on every EVP_EncryptInit_ex, as HAProxy avoids too. */
static EVP_CIPHER *ticket_cipher;
static OSSL_PARAM ticket_mac_params[2];

static void new_key(struct ticket_key *k)
{
    if (RAND_bytes((unsigned char *)k, sizeof *k) != 1)
        wg_error("msg=\"RAND_bytes failed for a ticket key\"");
}

void wg_tls_rotate_ticket_keys(void)
{
    int cur = atomic_load(&ring_now);
    int next = (cur + 1) & 3;
    struct ticket_ring *r = &rings[next];
    if (cur < 0) {
        if (!(ticket_cipher = EVP_CIPHER_fetch(NULL, "AES-256-CBC", NULL)))
            wg_error("msg=\"cannot fetch AES-256-CBC for session tickets\"");
        ticket_mac_params[0] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST,
                                                                (char *)"SHA256", 0);
        ticket_mac_params[1] = OSSL_PARAM_construct_end();
        for (int i = 0; i < 3; i++)
            new_key(&r->k[i]);
    } else {
        r->k[2] = rings[cur].k[1];
        r->k[1] = rings[cur].k[0];
        new_key(&r->k[0]);
    }
    atomic_store(&ring_now, next);
}

static int ticket_cb(SSL *ssl, unsigned char name[16], unsigned char iv[EVP_MAX_IV_LENGTH],
                     EVP_CIPHER_CTX *cctx, EVP_MAC_CTX *hctx, int enc)
{
    int cur = atomic_load(&ring_now);
    if (cur < 0 || !ticket_cipher)
        return 0;
    const struct ticket_ring *r = &rings[cur];
    const struct ticket_key *k = NULL;
    int rc = 1;
    if (enc) {
        k = &r->k[0];
        memcpy(name, k->name, 16);
        if (RAND_bytes(iv, 16) != 1)
            return -1;
    } else {
        for (int i = 0; i < 3 && !k; i++)
            if (memcmp(name, r->k[i].name, 16) == 0) {
                k = &r->k[i];
                /* 2: valid, but issue a fresh ticket. Always in TLS 1.3: its
                 * clients use a ticket once (OpenSSL, browsers), and OpenSSL
                 * sends a new one after a resumption only when asked to. */
                rc = i == 0 && SSL_version(ssl) < TLS1_3_VERSION ? 1 : 2;
            }
        if (!k)
            return 0;                   /* unknown key: full handshake */
    }
    if (!EVP_MAC_init(hctx, k->hmac, sizeof k->hmac, ticket_mac_params))
        return -1;
    if (enc ? !EVP_EncryptInit_ex(cctx, ticket_cipher, NULL, k->aes, iv)
            : !EVP_DecryptInit_ex(cctx, ticket_cipher, NULL, k->aes, iv))
        return -1;
    return rc;
}

/* ---- certificates ---- */

struct cert_ctx {
    SSL_CTX *ctx;
    char **names;                       /* lower-case DNS names, "*.x" kept */
    size_t n_names;
};

struct wg_tls_server {
    _Atomic unsigned refs;
    struct cert_ctx *ctxs;              /* [0] is the default */
    size_t n_ctxs;
    struct wg_tls_cert_info *certs;
    size_t n_certs;
};

static void openssl_error(struct wg_errors *errs, const char *file, const char *what)
{
    unsigned long e = ERR_get_error();
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    wg_errors_add(errs, "%s: %s: %s", file, what, e ? buf : strerror(errno));
    ERR_clear_error();
}

static X509 *read_cert(const char *path, struct wg_errors *errs)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        wg_errors_add(errs, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    X509 *x = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    if (!x)
        openssl_error(errs, path, "not a PEM certificate");
    return x;
}

/* The DNS names a certificate is valid for: SAN DNS entries, else the CN. */
static int cert_names(X509 *x, char ***out, size_t *n)
{
    GENERAL_NAMES *san = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
    int count = san ? sk_GENERAL_NAME_num(san) : 0;
    char **v = calloc((size_t)count + 1, sizeof *v);
    size_t k = 0;
    if (!v)
        goto fail;
    for (int i = 0; i < count; i++) {
        const GENERAL_NAME *g = sk_GENERAL_NAME_value(san, i);
        if (g->type != GEN_DNS)
            continue;
        const unsigned char *s = ASN1_STRING_get0_data(g->d.dNSName);
        if (!(v[k] = strndup((const char *)s, (size_t)ASN1_STRING_length(g->d.dNSName))))
            goto fail;
        k++;
    }
    if (k == 0) {
        char cn[256];
        if (X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, cn, sizeof cn) > 0 &&
            !(v[k++] = strdup(cn)))
            goto fail;
    }
    for (size_t i = 0; i < k; i++)
        for (char *p = v[i]; *p; p++)
            *p = (char)((*p >= 'A' && *p <= 'Z') ? *p + 32 : *p);
    GENERAL_NAMES_free(san);
    *out = v;
    *n = k;
    return 0;
fail:
    for (size_t i = 0; v && i < k; i++)
        free(v[i]);
    free(v);
    GENERAL_NAMES_free(san);
    return -1;
}

static bool same_names(const struct cert_ctx *c, char **names, size_t n)
{
    if (c->n_names != n)
        return false;
    for (size_t i = 0; i < n; i++)
        if (strcmp(c->names[i], names[i]) != 0)
            return false;
    return true;
}

/* SNI: exact name first, then a wildcard matching exactly one label. */
static SSL_CTX *select_ctx(const struct wg_tls_server *s, const char *host)
{
    const char *dot = strchr(host, '.');
    for (int pass = 0; pass < 2; pass++)
        for (size_t i = 0; i < s->n_ctxs; i++)
            for (size_t j = 0; j < s->ctxs[i].n_names; j++) {
                const char *n = s->ctxs[i].names[j];
                if (pass == 0 ? strcasecmp(n, host) == 0
                              : (n[0] == '*' && n[1] == '.' && dot && dot != host &&
                                 strcasecmp(n + 1, dot) == 0))
                    return s->ctxs[i].ctx;
            }
    return NULL;
}

static int sni_cb(SSL *ssl, int *alert, void *arg)
{
    const struct wg_tls_server *s = arg;
    const char *host = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    if (!host || !*host)
        return SSL_TLSEXT_ERR_NOACK;
    SSL_CTX *ctx = select_ctx(s, host);
    if (ctx && ctx != SSL_get_SSL_CTX(ssl)) {
        SSL_set_SSL_CTX(ssl, ctx);
        /* SSL_set_SSL_CTX does not carry the verify settings over. */
        SSL_set_verify(ssl, SSL_CTX_get_verify_mode(ctx), NULL);
    }
    return SSL_TLSEXT_ERR_OK;
}

/* The listener's protocols in ALPN wire form, ours first (h2 preferred). */
static const unsigned char alpn_both[] = "\x02h2\x08http/1.1";
static const unsigned char alpn_h2[] = "\x02h2";
static const unsigned char alpn_h1[] = "\x08http/1.1";

static int alpn_cb(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                   const unsigned char *in, unsigned int inlen, void *arg)
{
    const unsigned char *ours = arg;
    unsigned char *sel;
    if (SSL_select_next_proto(&sel, outlen, ours, (unsigned)strlen((const char *)ours), in, inlen) !=
        OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK;    /* no overlap: carry on without ALPN */
    *out = sel;
    return SSL_TLSEXT_ERR_OK;
}

/* The session id context of a listener: SHA-256 over its name, its verify
 * mode and the bytes of its client CA file. OpenSSL refuses to resume (fatal
 * internal_error) on a context that verifies peers but has none, and ticket
 * keys are process-wide: with a context per listener and per trust setting,
 * a ticket issued where no client certificate was asked for (or under
 * another CA) gets a full handshake instead of resuming. */
static int set_session_id_context(SSL_CTX *ctx, const struct wg_listener_config *lc,
                                  bool verifies, struct wg_errors *errs)
{
    unsigned char out[SHA256_DIGEST_LENGTH];
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    int rc = -1;
    if (!md || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1) {
        openssl_error(errs, lc->name, "session id context");
        goto out;
    }
    unsigned char mode = verifies ? (unsigned char)lc->tls.verify : 0;
    EVP_DigestUpdate(md, lc->name, strlen(lc->name) + 1);
    EVP_DigestUpdate(md, &mode, 1);
    if (verifies) {
        FILE *f = fopen(lc->tls.client_ca, "rb");
        if (!f) {
            wg_errors_add(errs, "%s: cannot read client CA: %s", lc->tls.client_ca,
                          strerror(errno));
            goto out;
        }
        unsigned char buf[4096];
        size_t n;
        while ((n = fread(buf, 1, sizeof buf, f)) > 0)
            EVP_DigestUpdate(md, buf, n);
        fclose(f);
    }
    unsigned int len = 0;
    if (EVP_DigestFinal_ex(md, out, &len) == 1 &&
        SSL_CTX_set_session_id_context(ctx, out, len) == 1)
        rc = 0;
    else
        openssl_error(errs, lc->name, "session id context");
out:
    EVP_MD_CTX_free(md);
    return rc;
}

/* The server's cipher preference: OpenSSL's default sets, with AES-128-GCM
 * (SHA-256) first, as Mozilla's "intermediate" profile orders them. It is
 * TLS 1.3's mandatory suite, at the strength of the X25519 / P-256 key
 * exchange, and the cheapest full handshake: the transcript hash, HKDF (TLS
 * 1.3) or PRF (TLS 1.2) run on SHA-256, which CPUs accelerate (SHA-NI), where
 * OpenSSL's default order (AES-256-GCM-SHA384 first) hashes everything with
 * SHA-384. Measured: -82k instructions per ECDSA TLS 1.3 full handshake
 * (benchmarks/instructions.py). */
#define SERVER_CIPHERSUITES "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
#define SERVER_CIPHERS "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:DEFAULT"

static SSL_CTX *server_ctx_new(const struct wg_listener_config *lc, bool alpn_http,
                               struct wg_tls_server *s, struct wg_errors *errs)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) {
        openssl_error(errs, lc->name, "SSL_CTX_new");
        return NULL;
    }
    if (SSL_CTX_set_ciphersuites(ctx, SERVER_CIPHERSUITES) != 1 ||
        SSL_CTX_set_cipher_list(ctx, SERVER_CIPHERS) != 1) {
        openssl_error(errs, lc->name, "cipher preference");
        SSL_CTX_free(ctx);
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, lc->tls.min_version == 13 ? TLS1_3_VERSION : TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION |
                                 SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_IGNORE_UNEXPECTED_EOF);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE |
                              SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_num_tickets(ctx, 1);
    SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, ticket_cb);
    SSL_CTX_set_tlsext_servername_callback(ctx, sni_cb);
    SSL_CTX_set_tlsext_servername_arg(ctx, s);
    if (alpn_http)
        SSL_CTX_set_alpn_select_cb(ctx, alpn_cb,
                                   (void *)(lc->http.proto_h2 && lc->http.proto_h1 ? alpn_both
                                            : lc->http.proto_h2 ? alpn_h2 : alpn_h1));
    bool verifies = lc->tls.client_ca && *lc->tls.client_ca && lc->tls.verify != WG_VERIFY_NONE;
    if (set_session_id_context(ctx, lc, verifies, errs) < 0) {
        SSL_CTX_free(ctx);
        return NULL;
    }
    if (verifies) {
        STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(lc->tls.client_ca);
        if (!names || SSL_CTX_load_verify_locations(ctx, lc->tls.client_ca, NULL) != 1) {
            openssl_error(errs, lc->tls.client_ca, "cannot load client CA");
            sk_X509_NAME_pop_free(names, X509_NAME_free);
            SSL_CTX_free(ctx);
            return NULL;
        }
        SSL_CTX_set_client_CA_list(ctx, names);
        int mode = SSL_VERIFY_PEER;
        if (lc->tls.verify == WG_VERIFY_REQUIRED)
            mode |= SSL_VERIFY_FAIL_IF_NO_PEER_CERT;
        SSL_CTX_set_verify(ctx, mode, NULL);
    }
    return ctx;
}

static int add_pair(struct wg_tls_server *s, const struct wg_listener_config *lc,
                    const struct wg_tls_cert_pair *pair, bool alpn_http, struct wg_errors *errs)
{
    X509 *x = read_cert(pair->cert, errs);
    char **names = NULL;                /* freed below unless a new context took them */
    size_t n = 0;
    int rc = -1;
    if (!x || cert_names(x, &names, &n) < 0)
        goto fail;
    struct wg_tls_cert_info *info = &s->certs[s->n_certs];
    const ASN1_TIME *na = X509_get0_notAfter(x);
    struct tm tm;
    info->not_after = ASN1_TIME_to_tm(na, &tm) == 1 ? (int64_t)timegm(&tm) : 0;
    if (!(info->path = strdup(pair->cert)))
        goto fail;
    s->n_certs++;
    if (info->not_after && info->not_after < (int64_t)time(NULL))
        wg_warn("msg=\"certificate expired\" listener=%s cert=%s", lc->name, pair->cert);
    struct cert_ctx *cc = NULL;
    for (size_t i = 0; i < s->n_ctxs && !cc; i++)
        if (same_names(&s->ctxs[i], names, n))
            cc = &s->ctxs[i];           /* same names, another key type */
    if (!cc) {
        cc = &s->ctxs[s->n_ctxs];
        if (!(cc->ctx = server_ctx_new(lc, alpn_http, s, errs)))
            goto fail;
        cc->names = names;
        cc->n_names = n;
        names = NULL;
        s->n_ctxs++;
    }
    if (SSL_CTX_use_certificate_chain_file(cc->ctx, pair->cert) != 1) {
        openssl_error(errs, pair->cert, "cannot load certificate chain");
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(cc->ctx, pair->key, SSL_FILETYPE_PEM) != 1) {
        if (ERR_GET_REASON(ERR_peek_last_error()) == X509_R_KEY_VALUES_MISMATCH) {
            wg_errors_add(errs, "%s: private key does not match certificate %s", pair->key,
                          pair->cert);
            ERR_clear_error();
        } else {
            openssl_error(errs, pair->key, "cannot load private key");
        }
        goto fail;
    }
    if (SSL_CTX_check_private_key(cc->ctx) != 1) {
        wg_errors_add(errs, "%s: private key does not match certificate %s", pair->key, pair->cert);
        ERR_clear_error();
        goto fail;
    }
    rc = 0;
fail:
    for (size_t i = 0; names && i < n; i++)
        free(names[i]);
    free(names);
    X509_free(x);
    return rc;
}

static void server_free(struct wg_tls_server *s)
{
    for (size_t i = 0; i < s->n_ctxs; i++) {
        SSL_CTX_free(s->ctxs[i].ctx);
        for (size_t j = 0; j < s->ctxs[i].n_names; j++)
            free(s->ctxs[i].names[j]);
        free(s->ctxs[i].names);
    }
    for (size_t i = 0; i < s->n_certs; i++)
        free(s->certs[i].path);
    free(s->ctxs);
    free(s->certs);
    free(s);
}

struct wg_tls_server *wg_tls_server_new(const struct wg_listener_config *lc, bool alpn_http,
                                        struct wg_errors *errs)
{
    if (atomic_load(&ring_now) < 0)
        wg_tls_rotate_ticket_keys();
    size_t n = lc->tls.n_certificates;
    struct wg_tls_server *s = calloc(1, sizeof *s);
    if (!s || !n || !(s->ctxs = calloc(n, sizeof *s->ctxs)) || !(s->certs = calloc(n, sizeof *s->certs))) {
        wg_errors_add(errs, "listener %s: %s", lc->name, n ? "out of memory" : "no certificates");
        goto fail;
    }
    atomic_init(&s->refs, 1);
    for (size_t i = 0; i < n; i++)
        if (add_pair(s, lc, &lc->tls.certificates[i], alpn_http, errs) < 0)
            goto fail;
    return s;
fail:
    if (s)
        server_free(s);
    return NULL;
}

void wg_tls_server_ref(struct wg_tls_server *s) { atomic_fetch_add(&s->refs, 1); }

void wg_tls_server_unref(struct wg_tls_server *s)
{
    if (s && atomic_fetch_sub(&s->refs, 1) == 1)
        server_free(s);
}

SSL *wg_tls_server_ssl(struct wg_tls_server *s, int fd)
{
    clear_errors();
    SSL *ssl = SSL_new(s->ctxs[0].ctx);
    if (!ssl)
        return NULL;
    if (SSL_set_fd(ssl, fd) != 1) {
        SSL_free(ssl);
        return NULL;
    }
    SSL_set_accept_state(ssl);
    return ssl;
}

size_t wg_tls_server_certs(const struct wg_tls_server *s, const struct wg_tls_cert_info **out)
{
    *out = s->certs;
    return s->n_certs;
}

bool wg_tls_check_pair(const char *cert, const char *key, char *err, size_t errlen)
{
    struct wg_listener_config lc = { .name = "check" };
    struct wg_tls_cert_pair pair = { (char *)cert, (char *)key };
    lc.tls.certificates = &pair;
    lc.tls.n_certificates = 1;
    lc.tls.min_version = 12;
    struct wg_errors errs = { 0 };
    struct wg_tls_server *s = wg_tls_server_new(&lc, false, &errs);
    bool ok = s != NULL;
    if (!ok)
        snprintf(err, errlen, "%s", errs.n ? errs.lines[0] : "cannot load");
    wg_tls_server_unref(s);
    wg_errors_free(&errs);
    return ok;
}

bool wg_tls_client_subject(SSL *ssl, char *buf, size_t len)
{
    if (SSL_get_verify_result(ssl) != X509_V_OK)
        return false;
    X509 *peer = SSL_get0_peer_certificate(ssl);
    if (!peer)
        return false;
    BIO *b = BIO_new(BIO_s_mem());
    if (!b)
        return false;
    X509_NAME_print_ex(b, X509_get_subject_name(peer), 0, XN_FLAG_RFC2253 & ~ASN1_STRFLGS_ESC_MSB);
    int n = BIO_read(b, buf, (int)len - 1);
    BIO_free(b);
    if (n <= 0)
        return false;
    buf[n] = '\0';
    /* A header value must not carry CR/LF/NUL whatever the certificate says. */
    for (int i = 0; i < n; i++)
        if ((unsigned char)buf[i] < 0x20 || buf[i] == 0x7f)
            buf[i] = '?';
    return true;
}

/* ---- client side ---- */

SSL_CTX *wg_tls_client_ctx_new(const char *ca, const char *cert, const char *key, bool verify,
                               struct wg_errors *errs)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) {
        openssl_error(errs, "tls", "SSL_CTX_new");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION |
                                 SSL_OP_IGNORE_UNEXPECTED_EOF);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE |
                              SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    int ok = (ca && *ca) ? SSL_CTX_load_verify_locations(ctx, ca, NULL)
                         : SSL_CTX_set_default_verify_paths(ctx);
    if (ok != 1) {
        openssl_error(errs, ca && *ca ? ca : "system store", "cannot load CA");
        goto fail;
    }
    if (cert && *cert) {
        if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
            openssl_error(errs, cert, "cannot load certificate chain");
            goto fail;
        }
        if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1 ||
            SSL_CTX_check_private_key(ctx) != 1) {
            openssl_error(errs, key, "private key missing or not matching the certificate");
            goto fail;
        }
    }
    SSL_CTX_set_verify(ctx, verify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, NULL);
    return ctx;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

static bool is_ip(const char *s)
{
    unsigned char buf[16];
    return inet_pton(AF_INET, s, buf) == 1 || inet_pton(AF_INET6, s, buf) == 1;
}

SSL *wg_tls_client_ssl(SSL_CTX *ctx, int fd, const char *sni, const char *host, bool verify)
{
    ERR_clear_error();
    SSL *ssl = SSL_new(ctx);
    if (!ssl || SSL_set_fd(ssl, fd) != 1)
        goto fail;
    const char *name = sni && *sni ? sni : host;
    if (name && *name && !is_ip(name) && SSL_set_tlsext_host_name(ssl, name) != 1)
        goto fail;
    if (verify && name && *name) {
        X509_VERIFY_PARAM *vp = SSL_get0_param(ssl);
        int ok = is_ip(name) ? X509_VERIFY_PARAM_set1_ip_asc(vp, name) : SSL_set1_host(ssl, name);
        if (ok != 1)
            goto fail;
    }
    SSL_set_connect_state(ssl);
    return ssl;
fail:
    SSL_free(ssl);
    return NULL;
}

SSL *wg_tls_upstream_ssl(SSL_CTX *ctx, int fd, const char *sni, bool verify,
                         const struct sockaddr *addr)
{
    char ip[INET6_ADDRSTRLEN] = "";
    const void *a = addr->sa_family == AF_INET
                        ? (const void *)&((const struct sockaddr_in *)addr)->sin_addr
                        : (const void *)&((const struct sockaddr_in6 *)addr)->sin6_addr;
    if (!inet_ntop(addr->sa_family, a, ip, sizeof ip))
        ip[0] = '\0';
    return wg_tls_client_ssl(ctx, fd, sni, ip, verify);
}

/* ---- I/O ---- */

static __thread const char *last_reason = "none";

const char *wg_tls_error_reason(void) { return last_reason; }

enum wg_counter wg_tls_failure_counter(void)
{
    if (strcmp(last_reason, "certificate") == 0)
        return WG_C_TLS_FAIL_CERTIFICATE;
    if (strncmp(last_reason, "protocol", 8) == 0)   /* protocol, protocol_version */
        return WG_C_TLS_FAIL_PROTOCOL;
    return WG_C_TLS_FAIL_OTHER;
}

void wg_tls_upstream_failed(struct wg_stats_block *stats, const char *service,
                            const char *upstream)
{
    wg_stats_add(stats, WG_C_UPSTREAM_TLS_FAILURES, 1);
    wg_info("msg=\"upstream tls handshake failed\" service=%s upstream=%s reason=%s", service,
            upstream, last_reason);
}

static enum wg_tls_io map_error(SSL *ssl, int ret)
{
    int e = SSL_get_error(ssl, ret);
    switch (e) {
    case SSL_ERROR_WANT_READ:
        return WG_TLS_WANT_READ;
    case SSL_ERROR_WANT_WRITE:
        return WG_TLS_WANT_WRITE;
    case SSL_ERROR_ZERO_RETURN:
        return WG_TLS_EOF;
    case SSL_ERROR_SYSCALL:
        if (errno == EAGAIN || errno == EINTR)
            return WG_TLS_WANT_READ;
        last_reason = errno ? "network" : "eof";
        ERR_clear_error();
        return ret == 0 ? WG_TLS_EOF : WG_TLS_ERROR;
    default: {
        unsigned long err = ERR_peek_error();
        int lib = ERR_GET_LIB(err), reason = ERR_GET_REASON(err);
        if (reason == SSL_R_UNSUPPORTED_PROTOCOL || reason == SSL_R_WRONG_VERSION_NUMBER)
            last_reason = "protocol_version";
        else if (reason == SSL_R_CERTIFICATE_VERIFY_FAILED ||
                 reason == SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE || lib == ERR_LIB_X509)
            last_reason = "certificate";
        else if (reason == SSL_R_NO_SHARED_CIPHER)
            last_reason = "no_shared_cipher";
        else
            last_reason = "protocol";
        ERR_clear_error();
        return WG_TLS_ERROR;
    }
    }
}

enum wg_tls_io wg_tls_handshake(SSL *ssl)
{
    clear_errors();
    int r = SSL_do_handshake(ssl);
    return r == 1 ? WG_TLS_OK : map_error(ssl, r);
}

enum wg_tls_io wg_tls_read(SSL *ssl, void *buf, size_t len, size_t *n)
{
    clear_errors();
    int r = SSL_read_ex(ssl, buf, len, n);
    return r == 1 ? WG_TLS_OK : map_error(ssl, r);
}

enum wg_tls_io wg_tls_write(SSL *ssl, const void *buf, size_t len, size_t *n)
{
    clear_errors();
    int r = SSL_write_ex(ssl, buf, len, n);
    return r == 1 ? WG_TLS_OK : map_error(ssl, r);
}

void wg_tls_close(SSL *ssl)
{
    if (!ssl)
        return;
    clear_errors();
    if (SSL_is_init_finished(ssl))
        SSL_shutdown(ssl);              /* one close_notify, no waiting */
    clear_errors();
}

/* ---- per-config set ---- */

void wg_tls_set_free(void *p)
{
    struct wg_tls_set *set = p;
    if (!set)
        return;
    for (size_t i = 0; i < set->n_listeners; i++)
        wg_tls_server_unref(set->listeners[i]);
    for (size_t i = 0; i <= set->n_services && set->services; i++)
        SSL_CTX_free(set->services[i]);
    free(set->listeners);
    free(set->services);
    free(set);
}

static SSL_CTX *service_ctx(const struct wg_service_config *sc, struct wg_errors *errs)
{
    if (!sc->tls.enabled)
        return NULL;
    return wg_tls_client_ctx_new(sc->tls.ca, sc->tls.cert, sc->tls.key, sc->tls.verify, errs);
}

struct wg_tls_set *wg_tls_set_new(const struct wg_config *cfg, struct wg_errors *errs)
{
    size_t before = errs->n;
    struct wg_tls_set *set = calloc(1, sizeof *set);
    if (!set)
        return NULL;
    set->n_listeners = cfg->n_listeners;
    set->n_services = cfg->n_services;
    set->listeners = calloc(cfg->n_listeners + 1, sizeof *set->listeners);
    set->services = calloc(cfg->n_services + 1, sizeof *set->services);
    if (!set->listeners || !set->services) {
        wg_tls_set_free(set);
        return NULL;
    }
    for (size_t i = 0; i < cfg->n_listeners; i++) {
        const struct wg_listener_config *lc = &cfg->listeners[i];
        if (lc->tls.enabled)
            set->listeners[i] = wg_tls_server_new(lc, lc->mode == WG_MODE_HTTP, errs);
    }
    for (size_t i = 0; i < cfg->n_services; i++)
        set->services[i] = service_ctx(&cfg->services[i], errs);
    set->services[cfg->n_services] = service_ctx(&cfg->service_defaults, errs);
    if (errs->n > before) {
        wg_tls_set_free(set);
        return NULL;
    }
    return set;
}

struct wg_tls_server *wg_tls_set_listener(const struct wg_tls_set *set, const struct wg_config *cfg,
                                          const struct wg_listener_config *lc)
{
    size_t i = (size_t)(lc - cfg->listeners);
    return set && i < set->n_listeners ? set->listeners[i] : NULL;
}

SSL_CTX *wg_tls_set_service(const struct wg_tls_set *set, const struct wg_config *cfg,
                            const struct wg_service_config *sc)
{
    if (!set)
        return NULL;
    if (sc == &cfg->service_defaults)
        return set->services[set->n_services];
    size_t i = (size_t)(sc - cfg->services);
    return i < set->n_services ? set->services[i] : NULL;
}

bool wg_tls_alpn_h2(SSL *ssl)
{
    const unsigned char *p = NULL;
    unsigned n = 0;
    SSL_get0_alpn_selected(ssl, &p, &n);
    return n == 2 && p[0] == 'h' && p[1] == '2';
}
