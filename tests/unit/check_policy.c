/* check_policy — the gateway policies (DESIGN §16) on real keys and files:
 * tokens signed by the openssl command line, htpasswd files made by
 * htpasswd(1) and openssl passwd, configs loaded from files with every
 * error positioned. */
#include <check.h>
#include <jansson.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "waygate/config.h"
#include "waygate/policy.h"
#include "waygate/stats.h"
#include "unit_util.h"

static char dir[64];

static const char *path(const char *name)
{
    static char buf[8][256];
    static int k;
    char *p = buf[k++ % 8];
    snprintf(p, 256, "%s/%s", dir, name);
    return p;
}

static void sh(const char *fmt, ...)
{
    char cmd[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    ck_assert_msg(system(cmd) == 0, "%s", cmd);
}

static void write_file(const char *name, const char *text)
{
    FILE *f = fopen(path(name), "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
}

static char *read_all(const char *p, size_t *n)
{
    FILE *f = fopen(p, "rb");
    ck_assert_ptr_nonnull(f);
    char *buf = malloc(65536);
    *n = fread(buf, 1, 65535, f);
    buf[*n] = 0;
    fclose(f);
    return buf;
}

static void keys_setup(void)
{
    snprintf(dir, sizeof dir, "/tmp/wg-check-policy-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
    sh("cd %s && openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out rsa.key 2>/dev/null"
       " && openssl pkey -in rsa.key -pubout -out rsa.pub"
       " && openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out rsa2.key 2>/dev/null"
       " && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ec.key"
       " && openssl pkey -in ec.key -pubout -out ec.pub"
       " && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-384 -out ec384.key"
       " && openssl pkey -in ec384.key -pubout -out ec384.pub"
       " && openssl genpkey -algorithm ed25519 -out ed.key"
       " && openssl pkey -in ed.key -pubout -out ed.pub"
       " && cat rsa.pub ec.pub ec384.pub ed.pub > all.pub", dir);
}

static void keys_teardown(void) { sh("rm -rf %s", dir); }

/* ---- tokens ---------------------------------------------------------------- */

static char *b64url(const unsigned char *d, size_t n)
{
    char *out = malloc(n * 4 / 3 + 8);
    int len = EVP_EncodeBlock((unsigned char *)out, d, (int)n);
    while (len && out[len - 1] == '=')
        len--;
    out[len] = 0;
    for (char *p = out; *p; p++)
        *p = *p == '+' ? '-' : *p == '/' ? '_' : *p;
    return out;
}

/* A token: header {"alg":alg[,"kid":kid]} . payload, signed with `key` by
 * the openssl command (or HMAC with `key` as the secret for HS*). */
static char *token(const char *alg, const char *kid, const char *key, const char *payload)
{
    char hdr[256], in[8192];
    snprintf(hdr, sizeof hdr, kid ? "{\"alg\":\"%s\",\"typ\":\"JWT\",\"kid\":\"%s\"}"
                                  : "{\"alg\":\"%s\",\"typ\":\"JWT\"}", alg, kid);
    char *h = b64url((const unsigned char *)hdr, strlen(hdr));
    char *p = b64url((const unsigned char *)payload, strlen(payload));
    snprintf(in, sizeof in, "%s.%s", h, p);
    write_file("input", in);
    const char *bits = strstr(alg, "384") ? "384" : strstr(alg, "512") ? "512" : "256";
    if (strcmp(alg, "none") == 0)
        write_file("sig", "");
    else if (alg[0] == 'R')
        sh("openssl dgst -sha%s -sign %s -out %s %s", bits, key, path("sig"), path("input"));
    else if (alg[0] == 'P')
        sh("openssl dgst -sha%s -sigopt rsa_padding_mode:pss -sigopt rsa_pss_saltlen:digest "
           "-sign %s -out %s %s", bits, key, path("sig"), path("input"));
    else if (alg[0] == 'E' && alg[1] == 'S')
        sh("openssl dgst -sha%s -sign %s -out %s %s", bits, key, path("sig"), path("input"));
    else if (alg[0] == 'E')
        sh("openssl pkeyutl -sign -rawin -inkey %s -in %s -out %s", key, path("input"),
           path("sig"));
    else
        sh("openssl dgst -sha%s -mac HMAC -macopt hexkey:$(printf %%s '%s' | od -An -v -tx1 | "
           "tr -d ' \\n') -binary -out %s %s", bits, key, path("sig"), path("input"));
    size_t sn;
    char *sig = read_all(path("sig"), &sn);
    unsigned char raw[256];
    const unsigned char *sp = (const unsigned char *)sig;
    if (alg[0] == 'E' && alg[1] == 'S') {       /* DER -> r || s */
        size_t half = bits[0] == '2' ? 32 : 48;
        ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &sp, (long)sn);
        ck_assert_ptr_nonnull(es);
        BN_bn2binpad(ECDSA_SIG_get0_r(es), raw, (int)half);
        BN_bn2binpad(ECDSA_SIG_get0_s(es), raw + half, (int)half);
        ECDSA_SIG_free(es);
        memcpy(sig, raw, 2 * half);
        sn = 2 * half;
    }
    char *s = b64url((const unsigned char *)sig, sn);
    char *tok = malloc(strlen(in) + strlen(s) + 2);
    sprintf(tok, "%s.%s", in, s);
    free(h);
    free(p);
    free(sig);
    free(s);
    return tok;
}

/* ---- configs and requests ---------------------------------------------------- */

static struct wg_config *cfg_try(const char *yaml, struct wg_errors *errs)
{
    write_file("t.yaml", yaml);
    return wg_config_load(path("t.yaml"), errs);
}

static struct wg_config *cfg_ok(const char *fmt, ...)
{
    char yaml[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(yaml, sizeof yaml, fmt, ap);
    va_end(ap);
    struct wg_errors errs = { 0 };
    struct wg_config *cfg = cfg_try(yaml, &errs);
    for (size_t i = 0; i < errs.n; i++)
        fprintf(stderr, "unexpected: %s\n", errs.lines[i]);
    ck_assert_uint_eq(errs.n, 0);
    ck_assert_ptr_nonnull(cfg);
    wg_errors_free(&errs);
    return cfg;
}

/* The one error a bad config gives, with its position after the file name. */
static void cfg_bad(const char *yaml, const char *want)
{
    struct wg_errors errs = { 0 };
    struct wg_config *cfg = cfg_try(yaml, &errs);
    ck_assert_ptr_null(cfg);
    ck_assert_uint_ge(errs.n, 1);
    const char *line = errs.lines[0] + strlen(path("t.yaml"));
    ck_assert_msg(strstr(errs.lines[0], want) != NULL, "got '%s', want '%s'", errs.lines[0], want);
    ck_assert_msg(line[0] == ':', "no position: %s", errs.lines[0]);
    wg_errors_free(&errs);
}

#define HEAD "listeners:\n  - name: web\n    listen: 127.0.0.1:1\n    mode: http\n"
/* One route whose policies are the flow list `pol`. */
#define ROUTE(pol) HEAD "    routes:\n      - path_prefix: /\n        service: api\n        policies: " pol "\n"

struct req {
    struct wg_policy_req r;
    struct wg_policy_field f[32];
    struct wg_config *cfg;
};

static void req_init(struct req *q, struct wg_config *cfg, const char *method, const char *target,
                     const char *const *headers)
{
    memset(q, 0, sizeof *q);
    q->cfg = cfg;
    const char *qm = strchr(target, '?');
    q->r.method = (struct wg_pstr){ method, strlen(method) };
    q->r.path = (struct wg_pstr){ target, qm ? (size_t)(qm - target) : strlen(target) };
    if (qm) {
        q->r.has_query = true;
        q->r.query = (struct wg_pstr){ qm + 1, strlen(qm + 1) };
    }
    q->r.authority = (struct wg_pstr){ "api.test", 8 };
    q->r.client_ip = "192.0.2.7";
    q->r.request_id = (struct wg_pstr){ "rid-1", 5 };
    q->r.unix_s = time(NULL);
    unsigned n = 0;
    for (; headers && headers[n]; n++) {
        const char *colon = strchr(headers[n], ':');
        q->f[n].name = (struct wg_pstr){ headers[n], (size_t)(colon - headers[n]) };
        q->f[n].value = (struct wg_pstr){ colon + 2, strlen(colon + 2) };
    }
    q->r.req = (struct wg_policy_head){ q->f, n, NULL, NULL, 0, 0 };
}

static const struct wg_policy_chain *chain(struct wg_config *cfg, size_t route)
{
    return cfg->listeners[0].routes[route].policies;
}

static enum wg_policy_verdict run(struct req *q)
{
    return wg_policy_request(chain(q->cfg, 0), &q->r);
}

static void req_done(struct req *q)
{
    wg_policy_req_release(&q->r);
    wg_config_free(q->cfg);
}

/* The visible value of a request field ("" when absent: NULL). */
static const char *get(struct wg_policy_head *h, const char *name)
{
    static char buf[4][1024];
    static int k;
    struct wg_pstr v;
    if (!wg_policy_head_get(h, name, strlen(name), &v))
        return NULL;
    char *b = buf[k++ % 4];
    snprintf(b, 1024, "%.*s", (int)v.n, v.p);
    return b;
}

static enum wg_policy_verdict one(const char *yaml, const char *method, const char *target,
                                  const char *const *headers, unsigned *status)
{
    struct req q;
    req_init(&q, cfg_ok("%s", yaml), method, target, headers);
    enum wg_policy_verdict v = run(&q);
    *status = v == WG_POLICY_ANSWER ? q.r.answer_status : 0;
    req_done(&q);
    return v;
}

/* ---- config errors ---------------------------------------------------------- */

START_TEST(test_config_errors)
{
    cfg_bad(ROUTE("[ { jwtt: {} } ]"), ":8:23: unknown policy 'jwtt' (did you mean 'jwt'?)");
    cfg_bad(ROUTE("[ { forward_auth: { service: auht } } ]") "services:\n  auth: {}\n",
            ":8:48: forward_auth: unknown service 'auht' (did you mean 'auth'?)");
    cfg_bad(ROUTE("[ { forward_auth: { service: nowhere } } ]"),
            ":8:48: forward_auth: unknown service 'nowhere' (declare it under services:)");
    cfg_bad(ROUTE("[ { forward_auth: { path: /check } } ]"), "forward_auth: needs 'service'");
    cfg_bad(ROUTE("[ { forward_auth: { service: api, path: check } } ]"),
            ":8:59: path: must start with '/'");
    cfg_bad(ROUTE("[ { forward_auth: { service: api, failure_mode: open } } ]"),
            "failure_mode: invalid value 'open' (expected deny|allow)");
    cfg_bad(ROUTE("[ { forward_auth: { service: api, copy_header: [X-User] } } ]"),
            "unknown key 'copy_header' in forward_auth policy (did you mean 'copy_headers'?)");
    cfg_bad(ROUTE("[ { forward_auth: { service: api, request_headers: ['a b'] } } ]"),
            "'a b' is not a valid name");
    cfg_bad(ROUTE("[ { forward_auth: { service: api, max_response_size: 2m } } ]"),
            "max_response_size: out of range");
    cfg_bad(ROUTE("[ { mirror: { percent: 10 } } ]"), "mirror: needs 'service'");
    cfg_bad(ROUTE("[ { mirror: { service: s, percent: 101 } } ]"), "percent");
    cfg_bad(ROUTE("[ { mirror: { service: s, max_body: 65m } } ]"),
            "max_body: out of range (0..67108864 bytes), got '65m'");
    cfg_bad(ROUTE("[ { mirror: { service: s, max_bdy: 1k } } ]"),
            "unknown key 'max_bdy' in mirror policy (did you mean 'max_body'?)");
    cfg_bad(ROUTE("[ { rate_limit: { rate: 10/s, scope: fleets } } ]"),
            ":8:56: scope: expected process or fleet, got 'fleets'");
    cfg_bad(ROUTE("[ { rate_limit: { rate: 10 } } ]"), ":8:43: rate: expected COUNT/UNIT");
    cfg_bad(ROUTE("[ { rate_limit: { rate: 1/s, key: ip } } ]"),
            "key: expected client_ip, header:NAME, claim:NAME, consumer or route");
    cfg_bad(ROUTE("[ { rate_limit: { rat: 1/s } } ]"),
            ":8:37: unknown key 'rat' in rate_limit policy (did you mean 'rate'?)");
    cfg_bad(ROUTE("[ { cors: { origins: ['*'], credentials: true } } ]"),
            "credentials: true cannot be used with origin '*'");
    cfg_bad(ROUTE("[ { rewrite: { regex: '^/(a', replace: /x } } ]"), "rewrite: regex at offset");
    cfg_bad(ROUTE("[ { rewrite: { regex: '^/(a)$', replace: /x/$2 } } ]"),
            "replace names $2 but the regex has 1 capture group(s)");
    cfg_bad(ROUTE("[ { headers: { request: { set: { X-A: $clientip } } } } ]"),
            "unknown variable '$clientip' (did you mean '$client_ip'?)");
    cfg_bad(ROUTE("[ { headers: { request: { remove: ['bad name'] } } } ]"),
            "'bad name' is not a valid name");
    cfg_bad(ROUTE("[ { headers: { request: { set: { X-A: \"a\\x01b\" } } } } ]"),
            "control characters are not allowed in a header value");
    cfg_bad(ROUTE("[ { headers: { response: { add: { X-A: \"$client_ip\\x1b\" } } } } ]"),
            "control characters are not allowed in a header value");
    wg_config_free(cfg_ok(ROUTE("[ { headers: { request: { set: { X-A: \"a\\tb \\xe9\" } } } } ]")));
    cfg_bad(ROUTE("[ { jwt: { issuer: x } } ]"), "jwt: needs 'keys'");
    cfg_bad(ROUTE("[ { jwt: { keys: http://id.test/jwks } } ]"), "a JWKS URL must be https://");
    cfg_bad(ROUTE("[ { jwt: { secret: short } } ]"), "at least 32 bytes");
    cfg_bad(ROUTE("[ { jwt: { secret: 0123456789abcdef0123456789abcdef, algorithms: [HS265] } } ]"),
            "unknown algorithm 'HS265' (did you mean 'HS256'?)");
    cfg_bad(ROUTE("[ { api_key: { registry: true } } ]"),
            ":8:44: api_key: registry: true needs the etcd registry");
    cfg_bad(ROUTE("[ { api_key: { header: X-Key } } ]"),
            "api_key: missing required key 'keys' (a file or consumer: key) or registry: true");
    cfg_bad(ROUTE("[ { basic_auth: { htpasswd: /nonexistent/x } } ]"),
            "htpasswd: cannot read '/nonexistent/x'");
    cfg_bad(ROUTE("[ { jwt: {}, cors: {} } ]"), "one policy per entry");
    cfg_bad("listeners:\n  - name: t\n    listen: 127.0.0.1:1\n    mode: tcp\n    service: a\n"
            "    policies: [ { trace: {} } ]\n", ":6:5: policies: only http listeners");
}
END_TEST

/* forward_auth: PENDING, the subrequest's head, both verdicts, the chain
 * going on after a 2xx, and the view following a moved head. */
START_TEST(test_forward_auth)
{
    static const char *const hs[] = { "Authorization: Bearer t", "X-User: forged", "Cookie: a=1",
                                      "X-Other: 1", NULL };
    const char *yaml = ROUTE("[ { forward_auth: { service: api, copy_headers: [X-User] } },"
                             " { headers: { request: { set: { X-After: yes } } } } ]");
    struct req q;
    struct wg_pstr head;

    req_init(&q, cfg_ok("%s", yaml), "POST", "/p?x=1", hs);
    ck_assert_int_eq(run(&q), WG_POLICY_PENDING);
    ck_assert_ptr_nonnull(q.r.auth);
    ck_assert_ptr_null(get(&q.r.req, "X-After"));     /* the chain waits */
    ck_assert(wg_forward_auth_head(q.r.auth, &q.r, &head));
    const char *want = "POST /p?x=1 HTTP/1.1\r\nHost: api.test\r\nAuthorization: Bearer t\r\n"
                       "Cookie: a=1\r\nX-Forwarded-Method: POST\r\nX-Forwarded-Proto: http\r\n"
                       "X-Forwarded-Host: api.test\r\nX-Forwarded-Uri: /p?x=1\r\n"
                       "X-Forwarded-For: 192.0.2.7\r\nX-Request-Id: rid-1\r\n\r\n";
    ck_assert_int_eq(head.n, strlen(want));
    ck_assert(memcmp(head.p, want, head.n) == 0);
    struct wg_policy_field rf[] = { { { "x-user", 6 }, { "alice", 5 } },
                                    { { "Content-Length", 14 }, { "0", 1 } } };
    struct wg_policy_head rh = { rf, 2, NULL, NULL, 0, 0 };
    ck_assert(wg_forward_auth_response(q.r.auth, &q.r, 204, &rh));
    ck_assert_ptr_null(q.r.auth);
    ck_assert_str_eq(get(&q.r.req, "X-User"), "alice");   /* the forged one is gone */
    ck_assert_int_eq(wg_policy_resume(&q.r), WG_POLICY_CONTINUE);
    ck_assert_str_eq(get(&q.r.req, "X-After"), "yes");
    req_done(&q);

    /* a refusal: the auth service's fields for the answer, not its framing */
    yaml = ROUTE("[ { forward_auth: { service: api, path: /check, request_headers: [X-Other] } } ]");
    req_init(&q, cfg_ok("%s", yaml), "GET", "/p", hs);
    ck_assert_int_eq(run(&q), WG_POLICY_PENDING);
    ck_assert(wg_forward_auth_head(q.r.auth, &q.r, &head));
    want = "GET /check HTTP/1.1\r\nHost: api.test\r\nX-Other: 1\r\nX-Forwarded-Method: GET\r\n";
    ck_assert(head.n > strlen(want) && memcmp(head.p, want, strlen(want)) == 0);
    struct wg_policy_field df[] = { { { "WWW-Authenticate", 16 }, { "Bearer", 6 } },
                                    { { "Content-Type", 12 }, { "text/html", 9 } },
                                    { { "Connection", 10 }, { "close", 5 } } };
    struct wg_policy_head dh = { df, 3, NULL, NULL, 0, 0 };
    ck_assert(!wg_forward_auth_response(q.r.auth, &q.r, 401, &dh));
    ck_assert_str_eq(get(&q.r.resp_extra, "WWW-Authenticate"), "Bearer");
    ck_assert_ptr_null(get(&q.r.resp_extra, "Content-Type"));
    ck_assert_ptr_null(get(&q.r.resp_extra, "Connection"));
    req_done(&q);

    /* the head moved (the exchange's copy): the view follows it */
    char buf[] = "GET /m HTTP/1.1\r\nAuthorization: Bearer z\r\n", copy[sizeof buf];
    req_init(&q, cfg_ok("%s", yaml), "GET", "/p", NULL);
    struct wg_policy_field f = { { buf + 17, 13 }, { buf + 32, 8 } };
    q.r.path = (struct wg_pstr){ buf + 4, 2 };
    q.r.req = (struct wg_policy_head){ &f, 1, NULL, NULL, 0, 0 };
    memcpy(copy, buf, sizeof buf);
    wg_policy_req_rebase(&q.r, buf, sizeof buf, copy);
    memset(buf, 'x', sizeof buf - 1);
    ck_assert_str_eq(get(&q.r.req, "Authorization"), "Bearer z");
    ck_assert(q.r.path.p == copy + 4);
    ck_assert(q.r.authority.p[0] == 'a');             /* not in the head: left alone */
    req_done(&q);
}
END_TEST

START_TEST(test_file_errors_positioned)
{
    char yaml[1024];
    write_file("htpasswd", "alice:$apr1$abc$def\n# comment\nbob:plain\n");
    snprintf(yaml, sizeof yaml, ROUTE("[ { basic_auth: { htpasswd: %s } } ]"), path("htpasswd"));
    struct wg_errors errs = { 0 };
    ck_assert_ptr_null(cfg_try(yaml, &errs));
    ck_assert_uint_eq(errs.n, 1);
    char want[512];
    snprintf(want, sizeof want, "%s:3:1: user 'bob': unsupported hash", path("htpasswd"));
    ck_assert_msg(strncmp(errs.lines[0], want, strlen(want)) == 0, "%s", errs.lines[0]);
    wg_errors_free(&errs);
    write_file("keys", "alice: k1\nnot a line\n");
    snprintf(yaml, sizeof yaml, ROUTE("[ { api_key: { keys: %s } } ]"), path("keys"));
    ck_assert_ptr_null(cfg_try(yaml, &errs));
    snprintf(want, sizeof want, "%s:2:1: expected 'consumer: key'", path("keys"));
    ck_assert_msg(strncmp(errs.lines[0], want, strlen(want)) == 0, "%s", errs.lines[0]);
    wg_errors_free(&errs);
    write_file("priv.pem", "");
    sh("cp %s %s", path("rsa.key"), path("priv.pem"));
    snprintf(yaml, sizeof yaml, ROUTE("[ { jwt: { keys: %s } } ]"), path("priv.pem"));
    ck_assert_ptr_null(cfg_try(yaml, &errs));
    ck_assert_ptr_nonnull(strstr(errs.lines[0], "holds a private key"));
    wg_errors_free(&errs);
}
END_TEST

START_TEST(test_policy_files_watched)
{
    char yaml[1024];
    sh("cd %s && htpasswd -cbB ht2 a pw 2>/dev/null", dir);
    snprintf(yaml, sizeof yaml, ROUTE("[ { basic_auth: { htpasswd: %s } }, { api_key: { keys: { x: y } } } ]"),
             path("ht2"));
    struct wg_config *cfg = cfg_ok("%s", yaml);
    ck_assert_uint_eq(cfg->n_policy_files, 1);
    ck_assert_str_eq(cfg->policy_files[0], path("ht2"));
    uint64_t before = wg_config_policy_files_stamp(cfg);
    ck_assert_uint_eq(before, wg_config_policy_files_stamp(cfg));
    sh("cd %s && htpasswd -bB ht2 b pw2 2>/dev/null", dir);
    ck_assert_uint_ne(before, wg_config_policy_files_stamp(cfg));
    wg_config_free(cfg);
}
END_TEST

START_TEST(test_mirror_share)
{
    struct wg_config *cfg = cfg_ok(ROUTE("[ { mirror: { service: shadow, percent: 30 } } ]"));
    ck_assert_str_eq(wg_config_service(cfg, "shadow")->name, "shadow");   /* referenced */
    unsigned marked = 0;
    for (int i = 0; i < 2000; i++) {
        char id[32];
        snprintf(id, sizeof id, "req-%d", i);
        struct req q;
        req_init(&q, NULL, "GET", "/", NULL);
        q.r.request_id = (struct wg_pstr){ id, strlen(id) };
        ck_assert_int_eq(wg_policy_request(chain(cfg, 0), &q.r), WG_POLICY_CONTINUE);
        if (q.r.mirror) {
            ck_assert_str_eq(q.r.mirror->service, "shadow");
            ck_assert_uint_eq(q.r.mirror->max_in_flight, 64);
            ck_assert_uint_eq(q.r.mirror->max_body, 64 * 1024);
            marked++;
        }
        wg_policy_req_release(&q.r);
    }
    ck_assert_uint_ge(marked, 500);     /* 600 expected; binomial sd ~20 */
    ck_assert_uint_le(marked, 700);
    wg_config_free(cfg);
}
END_TEST

/* ---- traffic split ------------------------------------------------------------ */

START_TEST(test_split_config)
{
    struct wg_config *cfg = cfg_ok(HEAD "    routes:\n      - path_prefix: /\n"
                                   "        backends: [ { service: web, weight: 95 }, { service: web-v2, weight: 5 } ]\n"
                                   "        sticky: cookie:uid\n");
    const struct wg_route *r = &cfg->listeners[0].routes[0];
    ck_assert_uint_eq(r->n_backends, 2);
    ck_assert_str_eq(r->service, "web");
    ck_assert_str_eq(r->backends[1].service, "web-v2");
    ck_assert_uint_eq(r->backends_weight, 100);
    ck_assert(r->sticky && r->sticky_key == WG_HASH_COOKIE);
    ck_assert_str_eq(r->sticky_name, "uid");
    ck_assert_str_eq(wg_config_service(cfg, "web-v2")->name, "web-v2");   /* referenced */
    wg_config_free(cfg);
    cfg_bad(HEAD "    routes:\n      - path_prefix: /\n        service: a\n"
            "        backends: [ { service: b } ]\n",
            ":8:9: backends: a route names either service or backends, not both");
    cfg_bad(HEAD "    routes:\n      - path_prefix: /\n"
            "        backends: [ { service: a, weight: 0 } ]\n", "every weight is 0");
    cfg_bad(HEAD "    routes:\n      - path_prefix: /\n        backends: [ { service: a, wieght: 2 } ]\n",
            "unknown key 'wieght' in backend (did you mean 'weight'?)");
    cfg_bad(HEAD "    routes:\n      - path_prefix: /\n        service: a\n        sticky: client_ip\n",
            ":8:9: sticky: only a route with backends is split");
    cfg_bad(HEAD "    routes:\n      - path_prefix: /\n        backends: [ { service: a } ]\n"
            "        sticky: ip\n", "sticky: expected client_ip, header:NAME or cookie:NAME");
}
END_TEST

/* ---- chains ----------------------------------------------------------------- */

START_TEST(test_chain_merge)
{
    struct wg_config *cfg = cfg_ok(
        "service_defaults:\n  policies: [ { trace: {} }, { headers: {} } ]\n"
        "services:\n  other: { policies: [ { cors: { origins: [https://a.test] } } ] }\n"
        HEAD "    policies: [ { rate_limit: { rate: 1/s } }, { cors: { origins: [https://l.test] } } ]\n"
        "    routes:\n"
        "      - { path_prefix: /a, service: api, policies: [ { headers: {} } ] }\n"
        "      - { path_prefix: /b, service: other }\n");
    const struct wg_policy_chain *a = chain(cfg, 0), *b = chain(cfg, 1);
    /* route a: listener rate_limit + cors, defaults' trace (headers overridden), route headers */
    ck_assert_uint_eq(a->n, 4);
    ck_assert_str_eq(a->v[0]->ops->name, "rate_limit");
    ck_assert_str_eq(a->v[1]->ops->name, "cors");
    ck_assert_str_eq(a->v[2]->ops->name, "trace");
    ck_assert_str_eq(a->v[3]->ops->name, "headers");
    ck_assert(a->has_response);
    /* route b: the service's list replaced the defaults'; its cors beats the listener's */
    ck_assert_uint_eq(b->n, 2);
    ck_assert_str_eq(b->v[0]->ops->name, "rate_limit");
    ck_assert_str_eq(b->v[1]->ops->name, "cors");
    ck_assert_ptr_ne(b->v[1], a->v[1]);
    wg_config_free(cfg);
    cfg = cfg_ok(HEAD "    routes:\n      - { path_prefix: /, service: api }\n");
    ck_assert_ptr_null(chain(cfg, 0));
    wg_config_free(cfg);
}
END_TEST

/* ---- headers, rewrite, trace ---------------------------------------------------- */

START_TEST(test_headers)
{
    struct req q;
    const char *h[] = { "X-Debug: 1", "X-Keep: a", "x-debug: 2", NULL };
    req_init(&q, cfg_ok(ROUTE("[ { headers: { request: { set: { X-Gw: 'ip=$client_ip id=$request_id "
                              "h=$host $$5' }, add: { X-Keep: b }, remove: [X-Debug] }, "
                              "response: { set: { X-Frame-Options: DENY }, remove: [Server] } } } ]")),
             "GET", "/", h);
    ck_assert_int_eq(run(&q), WG_POLICY_CONTINUE);
    ck_assert_ptr_null(get(&q.r.req, "x-debug"));
    ck_assert(q.r.req.drop[0] && q.r.req.drop[2] && !q.r.req.drop[1]);
    ck_assert_str_eq(get(&q.r.req, "X-Gw"), "ip=192.0.2.7 id=rid-1 h=api.test $5");
    ck_assert_str_eq(get(&q.r.req, "X-Keep"), "a");
    ck_assert_uint_eq(q.r.req.n_add, 2);
    struct wg_policy_field rf[] = { { { "Server", 6 }, { "up", 2 } },
                                    { { "X-Frame-Options", 15 }, { "ALLOW", 5 } } };
    struct wg_policy_head resp = { rf, 2, NULL, NULL, 0, 0 };
    wg_policy_response(&q.r, 200, &resp);
    ck_assert_ptr_null(get(&resp, "server"));
    ck_assert_str_eq(get(&resp, "x-frame-options"), "DENY");
    req_done(&q);
}
END_TEST

START_TEST(test_rewrite)
{
    struct req q;
    req_init(&q, cfg_ok(ROUTE("[ { rewrite: { regex: '^/api/v(\\d+)/(.*)$', replace: '/v$1/x/$2' } } ]")),
             "GET", "/api/v12/users/7?q=1", NULL);
    ck_assert_int_eq(run(&q), WG_POLICY_CONTINUE);
    ck_assert_uint_eq(q.r.new_path.n, strlen("/v12/x/users/7"));
    ck_assert(memcmp(q.r.new_path.p, "/v12/x/users/7", q.r.new_path.n) == 0);
    req_done(&q);
    req_init(&q, cfg_ok(ROUTE("[ { rewrite: { regex: '^/api/v(\\d+)/(.*)$', replace: '/v$1/x/$2' } } ]")),
             "GET", "/other", NULL);
    ck_assert_int_eq(run(&q), WG_POLICY_CONTINUE);
    ck_assert_uint_eq(q.r.new_path.n, 0);
    req_done(&q);
    req_init(&q, cfg_ok(ROUTE("[ { rewrite: { prefix: /old/, replace: /new/ } } ]")), "GET",
             "/old/a/b", NULL);
    run(&q);
    ck_assert(q.r.new_path.n == 8 && memcmp(q.r.new_path.p, "/new/a/b", 8) == 0);
    req_done(&q);
}
END_TEST

START_TEST(test_trace)
{
    struct req q;
    const char *good[] = { "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                           "tracestate: a=b", NULL };
    req_init(&q, cfg_ok(ROUTE("[ { trace: { generate: true } } ]")), "GET", "/", good);
    run(&q);
    ck_assert_str_eq(q.r.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
    ck_assert_uint_eq(q.r.req.n_add, 0);
    req_done(&q);
    const char *bad[] = { "traceparent: 00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                          "tracestate: a=b", NULL };
    req_init(&q, cfg_ok(ROUTE("[ { trace: { generate: true, sample_percent: 0 } } ]")), "GET", "/",
             bad);
    run(&q);
    const char *tp = get(&q.r.req, "traceparent");
    ck_assert_uint_eq(strlen(tp), 55);
    ck_assert(strncmp(tp, "00-", 3) == 0 && strcmp(tp + 52, "-00") == 0);
    ck_assert(strncmp(tp + 3, q.r.trace_id, 32) == 0);
    ck_assert_ptr_null(get(&q.r.req, "tracestate"));
    req_done(&q);
    req_init(&q, cfg_ok(ROUTE("[ { trace: { generate: false } } ]")), "GET", "/", NULL);
    run(&q);
    ck_assert_str_eq(q.r.trace_id, "");
    ck_assert_ptr_null(get(&q.r.req, "traceparent"));
    req_done(&q);
}
END_TEST

/* ---- cors ------------------------------------------------------------------------- */

#define CORS ROUTE("[ { cors: { origins: [https://app.test, '*.corp.test'], methods: [GET, PUT], " \
                   "headers: [Authorization, X-Req], credentials: true, max_age: 10m } } ]")

START_TEST(test_cors)
{
    struct req q;
    const char *pre[] = { "Origin: https://app.test", "Access-Control-Request-Method: PUT",
                          "Access-Control-Request-Headers: authorization, x-req", NULL };
    req_init(&q, cfg_ok(CORS), "OPTIONS", "/x", pre);
    ck_assert_int_eq(run(&q), WG_POLICY_ANSWER);
    ck_assert_uint_eq(q.r.answer_status, 204);
    ck_assert_str_eq(get(&q.r.resp_extra, "access-control-allow-origin"), "https://app.test");
    ck_assert_str_eq(get(&q.r.resp_extra, "access-control-allow-methods"), "GET, PUT");
    ck_assert_str_eq(get(&q.r.resp_extra, "access-control-allow-headers"), "Authorization, X-Req");
    ck_assert_str_eq(get(&q.r.resp_extra, "access-control-allow-credentials"), "true");
    ck_assert_str_eq(get(&q.r.resp_extra, "access-control-max-age"), "600");
    ck_assert_str_eq(get(&q.r.resp_extra, "vary"), "Origin");
    req_done(&q);
    unsigned st;
    const char *evil[] = { "Origin: https://evil.test", "Access-Control-Request-Method: GET", NULL };
    ck_assert_int_eq(one(CORS, "OPTIONS", "/", evil, &st), WG_POLICY_ANSWER);
    ck_assert_uint_eq(st, 403);
    const char *meth[] = { "Origin: https://app.test", "Access-Control-Request-Method: DELETE", NULL };
    ck_assert_int_eq(one(CORS, "OPTIONS", "/", meth, &st), WG_POLICY_ANSWER);
    ck_assert_uint_eq(st, 403);
    const char *hdr[] = { "Origin: https://app.test", "Access-Control-Request-Method: GET",
                          "Access-Control-Request-Headers: X-Other", NULL };
    ck_assert_int_eq(one(CORS, "OPTIONS", "/", hdr, &st), WG_POLICY_ANSWER);
    ck_assert_uint_eq(st, 403);
    /* an actual request from a wildcard origin continues with the fields */
    const char *wild[] = { "Origin: https://a.b.corp.test", NULL };
    req_init(&q, cfg_ok(CORS), "GET", "/", wild);
    ck_assert_int_eq(run(&q), WG_POLICY_CONTINUE);
    ck_assert_str_eq(get(&q.r.resp_extra, "access-control-allow-origin"), "https://a.b.corp.test");
    struct wg_policy_field rf[] = { { { "Access-Control-Allow-Origin", 27 }, { "*", 1 } } };
    struct wg_policy_head resp = { rf, 1, NULL, NULL, 0, 0 };
    wg_policy_response(&q.r, 200, &resp);
    ck_assert_ptr_null(get(&resp, "access-control-allow-origin"));
    req_done(&q);
    /* "corp.test" itself is not "*.corp.test"; no ACAO then, Vary still */
    const char *bare[] = { "Origin: https://corp.test", NULL };
    req_init(&q, cfg_ok(CORS), "GET", "/", bare);
    ck_assert_int_eq(run(&q), WG_POLICY_CONTINUE);
    ck_assert_ptr_null(get(&q.r.resp_extra, "access-control-allow-origin"));
    ck_assert_str_eq(get(&q.r.resp_extra, "vary"), "Origin");
    req_done(&q);
}
END_TEST

/* ---- rate limit ----------------------------------------------------------------------- */

START_TEST(test_rate_limit)
{
    struct wg_config *cfg = cfg_ok(ROUTE("[ { rate_limit: { rate: 1/m, burst: 3, key: header:X-User } } ]"));
    const char *alice[] = { "X-User: alice", NULL }, *bob[] = { "X-User: bob", NULL };
    for (int i = 0; i < 4; i++) {
        struct req q;
        req_init(&q, NULL, "GET", "/", alice);
        enum wg_policy_verdict v = wg_policy_request(chain(cfg, 0), &q.r);
        ck_assert_int_eq(v, i < 3 ? WG_POLICY_CONTINUE : WG_POLICY_ANSWER);
        char want[4];
        snprintf(want, sizeof want, "%d", i < 3 ? 2 - i : 0);
        ck_assert_str_eq(get(&q.r.resp_extra, "ratelimit-remaining"), want);
        ck_assert_str_eq(get(&q.r.resp_extra, "ratelimit-limit"), "3");
        if (i == 3) {
            ck_assert_uint_eq(q.r.answer_status, 429);
            int retry = atoi(get(&q.r.resp_extra, "retry-after"));
            ck_assert_int_ge(retry, 59);    /* one token a minute */
            ck_assert_int_le(retry, 60);
            ck_assert_int_ge(atoi(get(&q.r.resp_extra, "ratelimit-reset")), 179);
        }
        wg_policy_req_release(&q.r);
    }
    struct req q;
    req_init(&q, NULL, "GET", "/", bob);
    ck_assert_int_eq(wg_policy_request(chain(cfg, 0), &q.r), WG_POLICY_CONTINUE);
    wg_policy_req_release(&q.r);
    wg_config_free(cfg);
}
END_TEST

START_TEST(test_rate_limit_refill_and_eviction)
{
    struct wg_config *cfg = cfg_ok(ROUTE("[ { rate_limit: { rate: 20/s, burst: 1, max_keys: 16 } } ]"));
    struct req q;
    req_init(&q, NULL, "GET", "/", NULL);
    ck_assert_int_eq(wg_policy_request(chain(cfg, 0), &q.r), WG_POLICY_CONTINUE);
    wg_policy_req_release(&q.r);
    req_init(&q, NULL, "GET", "/", NULL);
    ck_assert_int_eq(wg_policy_request(chain(cfg, 0), &q.r), WG_POLICY_ANSWER);
    wg_policy_req_release(&q.r);
    usleep(120 * 1000);                 /* 50 ms per token */
    req_init(&q, NULL, "GET", "/", NULL);
    ck_assert_int_eq(wg_policy_request(chain(cfg, 0), &q.r), WG_POLICY_CONTINUE);
    wg_policy_req_release(&q.r);
    /* 200 distinct clients into a 16-slot table: buckets are evicted, counted */
    struct wg_stats_block *stats = wg_stats_block_new();
    for (int i = 0; i < 200; i++) {
        char ip[32];
        snprintf(ip, sizeof ip, "10.0.%d.%d", i / 250, i % 250);
        req_init(&q, NULL, "GET", "/", NULL);
        q.r.client_ip = ip;
        q.r.stats = stats;
        ck_assert_int_eq(wg_policy_request(chain(cfg, 0), &q.r), WG_POLICY_CONTINUE);
        wg_policy_req_release(&q.r);
    }
    ck_assert_uint_gt(wg_stats_sum(WG_C_POLICY_RL_EVICTIONS), 100);
    wg_config_free(cfg);
}
END_TEST

/* ---- api_key, basic_auth ----------------------------------------------------------------- */

START_TEST(test_api_key)
{
    char yaml[1024];
    unsigned st;
    /* "k-bob" given as its SHA-256 */
    sh("printf 'alice: k-alice\\n# c\\nbob: sha256:%%s\\n' $(printf k-bob | sha256sum | cut -c1-64) > %s",
       path("keys"));
    snprintf(yaml, sizeof yaml, ROUTE("[ { api_key: { keys: %s } } ]"), path("keys"));
    struct req q;
    const char *ok[] = { "X-API-Key: k-bob", "X-Consumer: root", NULL };
    req_init(&q, cfg_ok("%s", yaml), "GET", "/", ok);
    ck_assert_int_eq(run(&q), WG_POLICY_CONTINUE);
    ck_assert_str_eq(get(&q.r.req, "x-consumer"), "bob");
    ck_assert_ptr_null(get(&q.r.req, "x-api-key"));
    ck_assert(q.r.consumer.n == 3 && memcmp(q.r.consumer.p, "bob", 3) == 0);
    req_done(&q);
    const char *alice[] = { "X-API-Key: k-alice", NULL }, *bad[] = { "X-API-Key: k-alicf", NULL };
    ck_assert_int_eq(one(yaml, "GET", "/", alice, &st), WG_POLICY_CONTINUE);
    ck_assert_int_eq(one(yaml, "GET", "/", bad, &st), WG_POLICY_ANSWER);
    ck_assert_uint_eq(st, 401);
    ck_assert_int_eq(one(yaml, "GET", "/", NULL, &st), WG_POLICY_ANSWER);
    /* inline keys, a query parameter */
    const char *inl = ROUTE("[ { api_key: { query: key, keys: { carol: s3cret } } } ]");
    ck_assert_int_eq(one(inl, "GET", "/x?a=1&key=s3cret", NULL, &st), WG_POLICY_CONTINUE);
    ck_assert_int_eq(one(inl, "GET", "/x?key=s3cre", NULL, &st), WG_POLICY_ANSWER);
    /* registry: true with the etcd registry: accepted, the watch is asked
     * for; no consumer listed yet, so every key is refused */
    const char *reg = "registry: { etcd: { endpoints: [ 'http://127.0.0.1:1' ] } }\n"
                      ROUTE("[ { api_key: { registry: true } } ]");
    struct wg_config *rc = cfg_ok("%s", reg);
    ck_assert(rc->consumers_registry);
    wg_config_free(rc);
    ck_assert_int_eq(one(reg, "GET", "/", alice, &st), WG_POLICY_ANSWER);
    ck_assert_uint_eq(st, 401);
}
END_TEST

static unsigned basic(const char *yaml, const char *user_pw)
{
    char hdr[256];
    unsigned char enc[200];
    EVP_EncodeBlock(enc, (const unsigned char *)user_pw, (int)strlen(user_pw));
    snprintf(hdr, sizeof hdr, "Authorization: Basic %s", enc);
    const char *h[] = { hdr, NULL };
    unsigned st;
    one(yaml, "GET", "/", h, &st);
    return st;
}

START_TEST(test_basic_auth)
{
    char yaml[1024];
    sh("cd %s && htpasswd -cbB ht bcrypt pw-b 2>/dev/null && htpasswd -bm ht md5 pw-m 2>/dev/null"
       " && htpasswd -bs ht sha1 pw-s 2>/dev/null && printf 'sha512:%%s\\n' \"$(openssl passwd -6 pw-6)\" >> ht"
       " && printf 'sha256:%%s\\n' \"$(openssl passwd -5 pw-5)\" >> ht", dir);
    snprintf(yaml, sizeof yaml, ROUTE("[ { basic_auth: { htpasswd: %s, realm: api } } ]"), path("ht"));
    ck_assert_uint_eq(basic(yaml, "bcrypt:pw-b"), 0);
    ck_assert_uint_eq(basic(yaml, "md5:pw-m"), 0);
    ck_assert_uint_eq(basic(yaml, "sha1:pw-s"), 0);
    ck_assert_uint_eq(basic(yaml, "sha512:pw-6"), 0);
    ck_assert_uint_eq(basic(yaml, "sha256:pw-5"), 0);
    ck_assert_uint_eq(basic(yaml, "bcrypt:pw-x"), 401);
    ck_assert_uint_eq(basic(yaml, "md5:pw-b"), 401);
    ck_assert_uint_eq(basic(yaml, "nobody:pw-b"), 401);
    ck_assert_uint_eq(basic(yaml, "bcrypt"), 401);
    struct req q;
    req_init(&q, cfg_ok("%s", yaml), "GET", "/", NULL);
    ck_assert_int_eq(run(&q), WG_POLICY_ANSWER);
    ck_assert_str_eq(get(&q.r.resp_extra, "www-authenticate"), "Basic realm=\"api\", charset=\"UTF-8\"");
    req_done(&q);
}
END_TEST

/* ---- jwt -------------------------------------------------------------------------------- */

static unsigned jwt_status(const char *yaml, const char *tok, int64_t shift_s)
{
    char hdr[9000];
    snprintf(hdr, sizeof hdr, "Authorization: Bearer %s", tok);
    const char *h[] = { hdr, NULL };
    struct req q;
    req_init(&q, cfg_ok("%s", yaml), "GET", "/", h);
    q.r.unix_s += shift_s;
    enum wg_policy_verdict v = run(&q);
    unsigned st = v == WG_POLICY_ANSWER ? q.r.answer_status : 0;
    req_done(&q);
    return st;
}

static char *claims(const char *extra)
{
    static char buf[1024];
    long now = (long)time(NULL);
    snprintf(buf, sizeof buf, "{\"sub\":\"u-1\",\"iss\":\"https://id.test\",\"aud\":[\"x\",\"api\"],"
             "\"exp\":%ld,\"nbf\":%ld%s}", now + 300, now - 10, extra);
    return buf;
}

START_TEST(test_jwt_algorithms)
{
    char yaml[1024];
    snprintf(yaml, sizeof yaml, ROUTE("[ { jwt: { keys: %s, issuer: 'https://id.test', audience: api } } ]"),
             path("all.pub"));
    static const struct { const char *alg, *key; } ok[] = {
        { "RS256", "rsa.key" }, { "RS384", "rsa.key" }, { "RS512", "rsa.key" },
        { "PS256", "rsa.key" }, { "ES256", "ec.key" },  { "ES384", "ec384.key" },
        { "EdDSA", "ed.key" },
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        char *t = token(ok[i].alg, NULL, path(ok[i].key), claims(""));
        ck_assert_msg(jwt_status(yaml, t, 0) == 0, "%s", ok[i].alg);
        /* one flipped signature byte */
        size_t n = strlen(t);
        t[n - 3] = t[n - 3] == 'A' ? 'B' : 'A';
        ck_assert_msg(jwt_status(yaml, t, 0) == 401, "%s tampered", ok[i].alg);
        free(t);
    }
    /* a key the config does not hold; ES256 signed by P-384 is refused by key type */
    char *t = token("RS256", NULL, path("rsa2.key"), claims(""));
    ck_assert_uint_eq(jwt_status(yaml, t, 0), 401);
    free(t);
    /* alg none, and RS256's public key used as an HS256 secret */
    t = token("none", NULL, NULL, claims(""));
    ck_assert_uint_eq(jwt_status(yaml, t, 0), 401);
    free(t);
    size_t pn;
    char *pub = read_all(path("rsa.pub"), &pn);
    t = token("HS256", NULL, pub, claims(""));
    ck_assert_uint_eq(jwt_status(yaml, t, 0), 401);
    free(t);
    free(pub);
    /* HS256 with a configured secret */
    const char *hs = ROUTE("[ { jwt: { secret: 0123456789abcdef0123456789abcdef } } ]");
    t = token("HS256", NULL, "0123456789abcdef0123456789abcdef", claims(""));
    ck_assert_uint_eq(jwt_status(hs, t, 0), 0);
    free(t);
    t = token("HS256", NULL, "0123456789abcdef0123456789abcdeX", claims(""));
    ck_assert_uint_eq(jwt_status(hs, t, 0), 401);
    free(t);
    /* algorithms: narrows */
    snprintf(yaml, sizeof yaml, ROUTE("[ { jwt: { keys: %s, algorithms: [ES256] } } ]"), path("all.pub"));
    t = token("RS256", NULL, path("rsa.key"), claims(""));
    ck_assert_uint_eq(jwt_status(yaml, t, 0), 401);
    free(t);
}
END_TEST

START_TEST(test_jwt_claims)
{
    char yaml[1024];
    snprintf(yaml, sizeof yaml, ROUTE("[ { jwt: { keys: %s, issuer: 'https://id.test', audience: api, "
             "leeway: 30s, required_claims: [sub] } } ]"), path("ec.pub"));
    char *t = token("ES256", NULL, path("ec.key"), claims(""));
    ck_assert_uint_eq(jwt_status(yaml, t, 0), 0);
    ck_assert_uint_eq(jwt_status(yaml, t, 320), 0);       /* within the leeway */
    ck_assert_uint_eq(jwt_status(yaml, t, 340), 401);     /* expired (cached or not) */
    ck_assert_uint_eq(jwt_status(yaml, t, -45), 401);     /* nbf - leeway not reached */
    free(t);
    long now = (long)time(NULL);
    char p[512];
    snprintf(p, sizeof p, "{\"sub\":\"u\",\"iss\":\"https://other\",\"aud\":\"api\",\"exp\":%ld}", now + 60);
    t = token("ES256", NULL, path("ec.key"), p);
    ck_assert_uint_eq(jwt_status(yaml, t, 0), 401);
    free(t);
    snprintf(p, sizeof p, "{\"sub\":\"u\",\"iss\":\"https://id.test\",\"aud\":\"web\",\"exp\":%ld}", now + 60);
    t = token("ES256", NULL, path("ec.key"), p);
    ck_assert_uint_eq(jwt_status(yaml, t, 0), 401);
    free(t);
    snprintf(p, sizeof p, "{\"iss\":\"https://id.test\",\"aud\":\"api\",\"exp\":%ld}", now + 60);
    t = token("ES256", NULL, path("ec.key"), p);
    ck_assert_uint_eq(jwt_status(yaml, t, 0), 401);
    free(t);
    ck_assert_uint_eq(jwt_status(yaml, "abc.def", 0), 401);
    ck_assert_uint_eq(jwt_status(yaml, "a.b.c.d", 0), 401);
    ck_assert_uint_eq(jwt_status(yaml, "!!.??.**", 0), 401);
}
END_TEST

START_TEST(test_jwt_url_before_fetch)
{
    /* a URL nothing was fetched from yet: accepted, named for the control
     * thread, and every token refused until the keys come */
    struct wg_config *cfg = cfg_ok(ROUTE("[ { jwt: { keys: 'https://127.0.0.1:1/jwks', refresh: 1m } } ]"));
    ck_assert_uint_eq(cfg->n_jwks_urls, 1);
    ck_assert_str_eq(cfg->jwks_urls[0].url, "https://127.0.0.1:1/jwks");
    ck_assert_uint_eq(cfg->jwks_urls[0].refresh_ms, 60000);
    wg_config_free(cfg);
    char yaml[512];
    snprintf(yaml, sizeof yaml, "%s", ROUTE("[ { jwt: { keys: 'https://127.0.0.1:1/jwks' } } ]"));
    char *t = token("RS256", NULL, path("rsa.key"), claims(""));
    ck_assert_uint_eq(jwt_status(yaml, t, 0), 401);
    free(t);
}
END_TEST

/* A JWKS built from the PEM keys: RSA under kid "r1", EC under "e1". */
static void write_jwks(void)
{
    FILE *f = fopen(path("rsa.pub"), "r");
    EVP_PKEY *rsa = PEM_read_PUBKEY(f, NULL, NULL, NULL);
    fclose(f);
    f = fopen(path("ec.pub"), "r");
    EVP_PKEY *ec = PEM_read_PUBKEY(f, NULL, NULL, NULL);
    fclose(f);
    BIGNUM *n = NULL, *e = NULL;
    EVP_PKEY_get_bn_param(rsa, OSSL_PKEY_PARAM_RSA_N, &n);
    EVP_PKEY_get_bn_param(rsa, OSSL_PKEY_PARAM_RSA_E, &e);
    unsigned char nb[512], eb[8], pt[65];
    int nl = BN_bn2bin(n, nb), el = BN_bn2bin(e, eb);
    size_t ptl = 0;
    EVP_PKEY_get_octet_string_param(ec, OSSL_PKEY_PARAM_PUB_KEY, pt, sizeof pt, &ptl);
    ck_assert_uint_eq(ptl, 65);
    char *ns = b64url(nb, (size_t)nl), *es = b64url(eb, (size_t)el), *xs = b64url(pt + 1, 32),
         *ys = b64url(pt + 33, 32);
    f = fopen(path("jwks.json"), "w");
    fprintf(f, "{\"keys\":[{\"kty\":\"RSA\",\"kid\":\"r1\",\"alg\":\"RS256\",\"n\":\"%s\",\"e\":\"%s\"},"
               "{\"kty\":\"EC\",\"kid\":\"e1\",\"crv\":\"P-256\",\"x\":\"%s\",\"y\":\"%s\"},"
               "{\"kty\":\"RSA\",\"use\":\"enc\",\"n\":\"AQAB\",\"e\":\"AQAB\"}]}", ns, es, xs, ys);
    fclose(f);
    free(ns);
    free(es);
    free(xs);
    free(ys);
    BN_free(n);
    BN_free(e);
    EVP_PKEY_free(rsa);
    EVP_PKEY_free(ec);
}

START_TEST(test_jwt_jwks_and_forwarding)
{
    char yaml[1024];
    write_jwks();
    snprintf(yaml, sizeof yaml, ROUTE("[ { jwt: { keys: %s, token: [cookie:session, query:access_token, "
             "bearer], forward_claims: { sub: X-User, aud: X-Aud } } } ]"), path("jwks.json"));
    char *t = token("RS256", "r1", path("rsa.key"), claims(""));
    ck_assert_uint_eq(jwt_status(yaml, t, 0), 0);
    free(t);
    t = token("ES256", "e1", path("ec.key"), claims(""));
    ck_assert_uint_eq(jwt_status(yaml, t, 0), 0);
    free(t);
    t = token("RS256", "e1", path("rsa.key"), claims(""));     /* kid of another key */
    ck_assert_uint_eq(jwt_status(yaml, t, 0), 401);
    free(t);
    t = token("RS256", "nope", path("rsa.key"), claims(""));
    ck_assert_uint_eq(jwt_status(yaml, t, 0), 401);
    free(t);
    t = token("RS384", "r1", path("rsa.key"), claims(""));     /* the JWK says alg RS256 */
    ck_assert_uint_eq(jwt_status(yaml, t, 0), 401);
    free(t);
    /* from a cookie: claims forwarded, the client's copies dropped */
    t = token("ES256", "e1", path("ec.key"), claims(""));
    char cookie[4096];
    snprintf(cookie, sizeof cookie, "Cookie: a=1; session=%s; b=2", t);
    const char *h[] = { cookie, "X-User: admin", NULL };
    struct req q;
    req_init(&q, cfg_ok("%s", yaml), "GET", "/", h);
    ck_assert_int_eq(run(&q), WG_POLICY_CONTINUE);
    ck_assert_str_eq(get(&q.r.req, "x-user"), "u-1");
    ck_assert_str_eq(get(&q.r.req, "x-aud"), "[\"x\",\"api\"]");
    ck_assert(q.r.consumer.n == 3 && memcmp(q.r.consumer.p, "u-1", 3) == 0);
    struct wg_pstr v;
    ck_assert(wg_policy_var_get(&q.r, WG_PVAR_CLAIM, "iss", &v));
    req_done(&q);
    /* from the query */
    char target[4096];
    snprintf(target, sizeof target, "/x?access_token=%s", t);
    req_init(&q, cfg_ok("%s", yaml), "GET", target, NULL);
    ck_assert_int_eq(run(&q), WG_POLICY_CONTINUE);
    req_done(&q);
    free(t);
    /* no token at all: 401 with a bare Bearer challenge */
    req_init(&q, cfg_ok("%s", yaml), "GET", "/", NULL);
    ck_assert_int_eq(run(&q), WG_POLICY_ANSWER);
    ck_assert_str_eq(get(&q.r.resp_extra, "www-authenticate"), "Bearer realm=\"waygate\"");
    req_done(&q);
}
END_TEST


int main(void)
{
    Suite *s = suite_create("policy");
    TCase *t = tcase_create("policy");
    tcase_set_timeout(t, 120);
    tcase_add_unchecked_fixture(t, keys_setup, keys_teardown);
    tcase_add_test(t, test_config_errors);
    tcase_add_test(t, test_file_errors_positioned);
    tcase_add_test(t, test_forward_auth);
    tcase_add_test(t, test_policy_files_watched);
    tcase_add_test(t, test_split_config);
    tcase_add_test(t, test_mirror_share);
    tcase_add_test(t, test_chain_merge);
    tcase_add_test(t, test_headers);
    tcase_add_test(t, test_rewrite);
    tcase_add_test(t, test_trace);
    tcase_add_test(t, test_cors);
    tcase_add_test(t, test_rate_limit);
    tcase_add_test(t, test_rate_limit_refill_and_eviction);
    tcase_add_test(t, test_api_key);
    tcase_add_test(t, test_basic_auth);
    tcase_add_test(t, test_jwt_algorithms);
    tcase_add_test(t, test_jwt_claims);
    tcase_add_test(t, test_jwt_jwks_and_forwarding);
    tcase_add_test(t, test_jwt_url_before_fetch);
    suite_add_tcase(s, t);
    return unit_run(s);
}
