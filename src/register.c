/* register — `waygate register`, see include/waygate/register.h.
 *
 * Three small state machines on one event_base:
 *  - etcd: at most one unary call in flight. etcd_step() looks at what is
 *    wanted (a token, a lease, the key written or deleted, a keep-alive due,
 *    the lease revoked) and starts the first call that is missing; every
 *    answer or failure updates the state and calls advance() again. A
 *    failure waits a backoff and moves to the next endpoint.
 *  - health: a probe (HTTP GET of --health, or a TCP connect to the
 *    instance while a child starts) decides whether the record is wanted.
 *  - lifecycle: running -> (SIGTERM with a child) deregister -> drain ->
 *    child stopping -> stopping (delete, revoke) -> done.
 */
#include "waygate/register.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <jansson.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "config_value.h"
#include "waygate/config.h"
#include "waygate/etcd_client.h"
#include "waygate/http.h"
#include "waygate/log.h"
#include "waygate/record.h"
#include "waygate/zk_client.h"

#define DEFAULT_PREFIX "/services/"
#define DEFAULT_ZK_ROOT "/services"
#define ZK_RETRY_MS 1000                /* a node another session still holds */
#define DEFAULT_TTL_MS 10000
#define DEFAULT_DRAIN_MS 2000
#define DEFAULT_HEALTH_INTERVAL_MS 1000
#define DEFAULT_HEALTH_TIMEOUT_MS 1000
#define HEALTH_FALL 2                   /* failures in a row that deregister */
#define STOP_ETCD_MS 5000               /* how long the way out waits for etcd */
#define PROBE_HEAD_MAX 16384
#define PROBE_HEADERS 64
#define MAX_ENDPOINTS 32

#define USAGE                                                                              \
    "usage: waygate register --etcd URL[,URL] --service NAME --id ID --address HOST:PORT\n" \
    "       waygate register --zookeeper HOST:PORT[,HOST:PORT] [--layout plain|curator]\n"  \
    "                        --service NAME --id ID --address HOST:PORT\n"                 \
    "                        [--prefix /services/] [--weight N] [--metadata k=v ...]\n"      \
    "                        [--ttl 10s] [--health http://HOST:PORT/PATH]\n"                \
    "                        [--health-interval 1s] [--health-timeout 1s] [--drain 2s]\n"   \
    "                        [-c FILE] [-- COMMAND ARGS...]\n"                              \
    "  -c FILE  read registry.etcd (endpoints, prefix, username, password, tls, backoff)\n" \
    "           or registry.zookeeper (servers, root, chroot, auth) from a waygate\n"       \
    "           configuration file; options given here win\n"                              \
    "  ZooKeeper: an ephemeral node <prefix>/<service>/<id> (prefix default /services);\n" \
    "           --ttl is the session timeout\n"

/* ---- options ------------------------------------------------------------------ */

struct options {
    const char *config_path;
    const char *etcd;                   /* --etcd, comma-separated */
    const char *zookeeper;              /* --zookeeper, comma-separated */
    const char *layout;                 /* --layout plain|curator (ZooKeeper) */
    const char *prefix;
    const char *service, *id, *address;
    uint64_t weight;
    json_t *metadata;                   /* object of strings */
    uint64_t ttl_ms, drain_ms, health_interval_ms, health_timeout_ms;
    const char *health;
    char **command;                     /* after "--", NULL-terminated; NULL: none */
};

enum opt_id {
    OPT_CONFIG, OPT_ETCD, OPT_PREFIX, OPT_SERVICE, OPT_ID, OPT_ADDRESS, OPT_WEIGHT,
    OPT_METADATA, OPT_TTL, OPT_HEALTH, OPT_HEALTH_INTERVAL, OPT_HEALTH_TIMEOUT, OPT_DRAIN,
    OPT_ZOOKEEPER, OPT_LAYOUT, OPT_COUNT
};

static const char *const opt_names[OPT_COUNT] = {
    "--config", "--etcd", "--prefix", "--service", "--id", "--address", "--weight",
    "--metadata", "--ttl", "--health", "--health-interval", "--health-timeout", "--drain",
    "--zookeeper", "--layout"
};

static bool fail_text(char *err, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static bool fail_text(char *err, size_t len, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(err, len, fmt, ap);
    va_end(ap);
    return false;
}

static bool set_duration(const char *name, const char *v, uint64_t *ms, char *err, size_t len)
{
    const char *why = wg_duration_reason(v, ms);

    return !why || fail_text(err, len, "%s: %s: '%s'", name, why, v);
}

static bool add_metadata(struct options *o, const char *kv, char *err, size_t len)
{
    const char *eq = strchr(kv, '=');
    char key[256];

    if (!eq || eq == kv || (size_t)(eq - kv) >= sizeof key)
        return fail_text(err, len, "--metadata: expected KEY=VALUE, got '%s'", kv);
    memcpy(key, kv, (size_t)(eq - kv));
    key[eq - kv] = '\0';
    if (json_object_get(o->metadata, key))
        return fail_text(err, len, "--metadata: key '%s' given twice", key);
    if (json_object_set_new(o->metadata, key, json_string(eq + 1)) < 0)
        return fail_text(err, len, "--metadata: '%s' is not valid UTF-8 (or out of memory)", kv);
    return true;
}

static bool set_option(struct options *o, enum opt_id id, const char *v, char *err, size_t len)
{
    const char *why;

    switch (id) {
    case OPT_CONFIG: o->config_path = v; return true;
    case OPT_ETCD: o->etcd = v; return true;
    case OPT_ZOOKEEPER: o->zookeeper = v; return true;
    case OPT_LAYOUT:
        o->layout = v;
        return strcmp(v, "plain") == 0 || strcmp(v, "curator") == 0 ||
               fail_text(err, len, "--layout: expected plain or curator, got '%s'", v);
    case OPT_PREFIX: o->prefix = v; return true;
    case OPT_SERVICE: o->service = v; return true;
    case OPT_ID: o->id = v; return true;
    case OPT_ADDRESS: o->address = v; return true;
    case OPT_HEALTH: o->health = v; return true;
    case OPT_METADATA: return add_metadata(o, v, err, len);
    case OPT_WEIGHT:
        why = wg_uint_reason(v, WG_WEIGHT_MAX, &o->weight);
        return !why || fail_text(err, len, "--weight: %s (0..%d): '%s'", why, WG_WEIGHT_MAX, v);
    case OPT_TTL: return set_duration("--ttl", v, &o->ttl_ms, err, len);
    case OPT_DRAIN: return set_duration("--drain", v, &o->drain_ms, err, len);
    case OPT_HEALTH_INTERVAL:
        return set_duration("--health-interval", v, &o->health_interval_ms, err, len);
    case OPT_HEALTH_TIMEOUT:
        return set_duration("--health-timeout", v, &o->health_timeout_ms, err, len);
    default: return fail_text(err, len, "unknown option");
    }
}

/* "--name", "--name=value" or "-c": the option, and an inline value. */
static int find_option(const char *arg, const char **inline_value)
{
    size_t n = strcspn(arg, "=");

    *inline_value = arg[n] == '=' ? arg + n + 1 : NULL;
    if (strcmp(arg, "-c") == 0)
        return OPT_CONFIG;
    for (int i = 0; i < OPT_COUNT; i++)
        if (strlen(opt_names[i]) == n && strncmp(arg, opt_names[i], n) == 0)
            return i;
    return -1;
}

/* 1: help asked; 0: parsed; -1: error in err. */
static int parse_args(int argc, char **argv, struct options *o, char *err, size_t len)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (strcmp(a, "--") == 0) {
            if (i + 1 >= argc)
                return fail_text(err, len, "'--' must be followed by a command"), -1;
            o->command = &argv[i + 1];
            return 0;
        }
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0)
            return 1;
        int id = find_option(a, &v);
        if (id < 0 && a[0] == '-')
            return fail_text(err, len, "unknown option '%s'", a), -1;
        if (id < 0)
            return fail_text(err, len, "unexpected argument '%s' (a command goes after --)",
                             a), -1;
        if (!v && i + 1 >= argc)
            return fail_text(err, len, "%s needs a value", a), -1;
        if (!set_option(o, (enum opt_id)id, v ? v : argv[++i], err, len))
            return -1;
        while (id == OPT_METADATA && i + 1 < argc && argv[i + 1][0] != '-' &&
               strchr(argv[i + 1], '='))
            if (!add_metadata(o, argv[++i], err, len))
                return -1;
    }
    return 0;
}

/* ---- addresses, the record, the health URL ------------------------------------------ */

/* "host:port" or "[v6]:port" (n bytes) into host (no brackets) and port 1..65535. */
static bool split_hostport(const char *s, size_t n, char *host, size_t host_len, uint16_t *port)
{
    const char *colon = n ? memrchr(s, ':', n) : NULL, *h = s;
    char digits[8];
    size_t hl, dl;
    uint64_t p;

    if (!colon || colon == s)
        return false;
    hl = (size_t)(colon - s);
    dl = n - hl - 1;
    if (s[0] == '[') {
        if (hl < 3 || s[hl - 1] != ']')
            return false;
        h = s + 1;
        hl -= 2;
    } else if (memchr(s, ':', hl) || memchr(s, ']', hl)) {
        return false;                   /* a bare IPv6 address needs brackets */
    }
    if (hl >= host_len || dl == 0 || dl >= sizeof digits)
        return false;
    memcpy(digits, colon + 1, dl);
    digits[dl] = '\0';
    if (wg_uint_reason(digits, 65535, &p) || p == 0)
        return false;
    memcpy(host, h, hl);
    host[hl] = '\0';
    *port = (uint16_t)p;
    return true;
}

struct health_url {
    char host[256];
    uint16_t port;
    char authority[300];                /* Host header */
    const char *path;
};

/* http://HOST[:PORT][/PATH]; only plain http (a local check). */
static bool parse_health_url(const char *url, struct health_url *u, char *err, size_t len)
{
    const char *rest = url + 7;
    size_t n;

    if (strncmp(url, "http://", 7) != 0)
        return fail_text(err, len, "--health: expected http://HOST:PORT/PATH, got '%s'", url);
    n = strcspn(rest, "/?#");
    u->path = rest[n] == '/' ? rest + n : "/";
    if (n == 0 || n >= sizeof u->authority || (rest[n] && rest[n] != '/'))
        return fail_text(err, len, "--health: expected http://HOST:PORT/PATH, got '%s'", url);
    memcpy(u->authority, rest, n);
    u->authority[n] = '\0';
    if (split_hostport(rest, n, u->host, sizeof u->host, &u->port))
        return true;
    u->port = 80;                       /* no port: the host alone */
    if (rest[0] == '[' && rest[n - 1] == ']' && n - 2 < sizeof u->host) {
        memcpy(u->host, rest + 1, n - 2);
        u->host[n - 2] = '\0';
        return true;
    }
    if (memchr(rest, ':', n) || memchr(rest, '[', n) || memchr(rest, ']', n) ||
        n >= sizeof u->host)
        return fail_text(err, len, "--health: bad host or port in '%s'", url);
    memcpy(u->host, rest, n);
    u->host[n] = '\0';
    return true;
}

/* The native JSON record of DESIGN §7 (malloc'd). */
static char *record_value(const struct options *o, const char *host, uint16_t port)
{
    json_t *v = json_pack("{sssIsI}", "address", host, "port", (json_int_t)port, "weight",
                          (json_int_t)o->weight);
    char *text;

    if (v && json_object_size(o->metadata) &&
        json_object_set(v, "metadata", o->metadata) < 0) {
        json_decref(v);
        return NULL;
    }
    text = v ? json_dumps(v, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    json_decref(v);
    return text;
}

/* Decode what will be written with the registry's own decoder, so that a
 * record waygate would skip is refused here. */
static bool record_check(const char *prefix, const char *key, const char *value, char *err,
                         size_t len)
{
    struct wg_record_set set = { 0 };
    struct wg_record_hosts hosts = { 0 };
    enum wg_record_format format;
    char why[300];
    bool ok = wg_record_decode_etcd(prefix, key, strlen(key), value, strlen(value), &set,
                                    &hosts, &format, why, sizeof why);

    wg_record_set_clear(&set);
    wg_record_hosts_clear(&hosts);
    return ok || fail_text(err, len, "the record for %s would be refused by waygate: %s", key,
                           why);
}

/* ---- the registrar -------------------------------------------------------------------- */

enum op { OP_NONE, OP_AUTH, OP_GRANT, OP_PUT, OP_KEEPALIVE, OP_DELETE, OP_REVOKE };

static const char *const op_names[] = { "none", "authenticate", "lease grant", "put",
                                        "lease keepalive", "delete", "lease revoke" };
static const char *const op_paths[] = { "", "/v3/auth/authenticate", "/v3/lease/grant",
                                        "/v3/kv/put", "/v3/lease/keepalive",
                                        "/v3/kv/deleterange", "/v3/lease/revoke" };

enum phase {
    PH_STARTING,                        /* child started, waiting for its first pass */
    PH_RUNNING,
    PH_DEREGISTER,                      /* SIGTERM/SIGINT: delete the key first */
    PH_DRAIN,                           /* then wait --drain */
    PH_CHILD_STOPPING,                  /* signal forwarded, waiting for the exit */
    PH_STOPPING                         /* delete, revoke, exit */
};

struct registrar;

struct probe {
    struct registrar *r;
    const char *host;
    uint16_t port;
    char *request;                      /* NULL: a TCP connect is the check */
    struct bufferevent *bev;            /* a check in flight */
    struct event *timer;                /* its timeout, or the next check */
    struct wg_http_parser parser;
    struct wg_http_header headers[PROBE_HEADERS];
    char head[PROBE_HEAD_MAX];
    size_t head_len;
    unsigned fails;
    bool enabled;
};

struct registrar {
    struct options *o;
    struct wg_config *cfg;
    struct event_base *base;
    struct wg_etcd_client *etcd;
    /* ZooKeeper mode (--zookeeper, or -c with registry.zookeeper) */
    bool zk_mode;
    struct wg_zk *zk;
    struct wg_zk_options zk_opts;
    char *zk_hosts;
    char **zk_parents;                  /* persistent directories to make, top first */
    size_t n_zk_parents;
    unsigned zk_inflight;               /* requests sent, answers not yet in */
    bool zk_connected;
    struct evdns_base *dns;             /* ZooKeeper mode's own resolver (health URL) */
    char *endpoints[MAX_ENDPOINTS];
    size_t n_endpoints;
    const char *user, *password;        /* NULL: no authentication */
    uint64_t backoff_initial_ms, backoff_max_ms, backoff_ms;
    char *key, *value;
    char *key_b64, *value_b64;
    char address_host[256];
    uint16_t address_port;
    struct health_url health;
    size_t ep;
    /* etcd state */
    struct wg_etcd_call *call;
    enum op op;                         /* of `call` */
    int64_t lease;                      /* 0: none */
    uint64_t ttl_s;                     /* granted */
    bool registered;                    /* the key is written under `lease` */
    bool keepalive_due;
    bool waiting;                       /* a backoff runs: no call before it ends */
    bool reauthed;
    struct event *retry, *keepalive;
    /* health and lifecycle */
    struct probe probe;
    bool healthy;
    enum phase phase;
    bool drain_needed;                  /* the key was visible when SIGTERM came */
    int stop_signal;
    struct event *deadline, *drain;
    struct event *signals[8];
    size_t n_signals;
    pid_t child;
    int exit_status;
    bool done;
};

static void advance(struct registrar *r);
static void zk_step(struct registrar *r);

static const char *endpoint_now(const struct registrar *r)
{
    return wg_etcd_client_endpoint(r->etcd, r->ep);
}

static void arm_ms(struct event *ev, uint64_t ms)
{
    struct timeval tv = { (time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000 };

    if (evtimer_add(ev, &tv) < 0)
        wg_error("msg=\"cannot arm a timer\"");
}

static uint64_t ttl_ms(const struct registrar *r)
{
    return r->ttl_s ? r->ttl_s * 1000 : r->o->ttl_ms;
}

static void finish(struct registrar *r)
{
    if (r->done)
        return;
    r->done = true;
    wg_etcd_call_cancel(r->call);
    r->call = NULL;
    event_base_loopbreak(r->base);
}

/* ---- etcd calls -------------------------------------------------------------------------- */

static char *dump_and_free(json_t *o)
{
    char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;

    json_decref(o);
    return text;
}

static char *op_body(const struct registrar *r, enum op op)
{
    char id[24], ttl[24];

    snprintf(id, sizeof id, "%lld", (long long)r->lease);
    snprintf(ttl, sizeof ttl, "%llu", (unsigned long long)((r->o->ttl_ms + 999) / 1000));
    switch (op) {
    case OP_AUTH:
        return wg_etcd_auth_request(r->user, r->password);
    case OP_GRANT:
        return dump_and_free(json_pack("{ss}", "TTL", ttl));
    case OP_PUT:
        return dump_and_free(json_pack("{ssssss}", "key", r->key_b64, "value", r->value_b64,
                                       "lease", id));
    case OP_DELETE:
        return dump_and_free(json_pack("{ss}", "key", r->key_b64));
    case OP_KEEPALIVE:
    case OP_REVOKE:
        return dump_and_free(json_pack("{ss}", "ID", id));
    default:
        return NULL;
    }
}

/* Unary deadline: a third of the TTL (1..5 s), so that one hung member
 * cannot make the lease expire. */
static uint64_t call_timeout_ms(const struct registrar *r)
{
    uint64_t t = ttl_ms(r) / 3;

    return t < 1000 ? 1000 : t > 5000 ? 5000 : t;
}

static void op_failed(struct registrar *r, enum op op, const char *why)
{
    uint64_t cap = ttl_ms(r) / 3, delay;

    if (cap > r->backoff_max_ms)
        cap = r->backoff_max_ms;
    if (cap < r->backoff_initial_ms)
        cap = r->backoff_initial_ms;
    delay = r->backoff_ms / 2 + (uint64_t)random() % (r->backoff_ms / 2 + 1);
    r->backoff_ms = r->backoff_ms * 2 > cap ? cap : r->backoff_ms * 2;
    r->ep = (r->ep + 1) % wg_etcd_client_endpoints(r->etcd);
    wg_warn("msg=\"etcd call failed, retrying\" call=\"%s\" reason=\"%s\" service=%s id=%s "
            "next_endpoint=%s retry_ms=%llu", op_names[op], why, r->o->service, r->o->id,
            endpoint_now(r), (unsigned long long)delay);
    r->waiting = true;
    arm_ms(r->retry, delay);
}

static bool op_message(void *arg, struct wg_etcd_call *call, unsigned status, const char *msg,
                       size_t len, uint64_t recv_ns);
static void op_end(void *arg, struct wg_etcd_call *call, bool ok, const char *why);
static const struct wg_etcd_call_ops op_ops = { op_message, op_end };

static void op_start(struct registrar *r, enum op op)
{
    char *body = op_body(r, op);

    r->op = op;
    r->call = body ? wg_etcd_call_start(r->etcd, r->ep, op_paths[op], body, false,
                                        call_timeout_ms(r), &op_ops, r)
                   : NULL;
    free(body);
    if (!r->call) {
        r->op = OP_NONE;
        op_failed(r, op, "out of memory");
        return;
    }
    wg_debug("msg=\"etcd call\" call=\"%s\" endpoint=%s", op_names[op], endpoint_now(r));
}

/* The one call the state asks for next, if any. */
static void etcd_step(struct registrar *r)
{
    bool want = r->phase == PH_RUNNING && r->healthy;

    if (r->phase == PH_STOPPING && !r->lease)
        finish(r);                      /* nothing to undo (a grant in flight expires) */
    if (r->call || r->waiting || r->done)
        return;
    if (r->user && !wg_etcd_client_has_token(r->etcd))
        op_start(r, OP_AUTH);
    else if (r->registered && !want)
        op_start(r, OP_DELETE);
    else if (r->phase == PH_STOPPING)
        op_start(r, OP_REVOKE);
    else if (!r->lease)
        op_start(r, OP_GRANT);
    else if (want && !r->registered)
        op_start(r, OP_PUT);
    else if (r->keepalive_due)
        op_start(r, OP_KEEPALIVE);
}

static void lease_lost(struct registrar *r, const char *why)
{
    wg_warn("msg=\"lease lost, granting a new one\" reason=\"%s\" service=%s id=%s lease=%llx",
            why, r->o->service, r->o->id, (unsigned long long)r->lease);
    r->lease = 0;
    r->ttl_s = 0;
    r->registered = false;
    r->keepalive_due = false;
    evtimer_del(r->keepalive);
}

static bool answer_auth(struct registrar *r, json_t *root)
{
    json_t *tok = json_object_get(root, "token");

    if (!json_is_string(tok) || !json_string_length(tok) ||
        wg_etcd_client_set_token(r->etcd, json_string_value(tok)) < 0)
        return false;
    wg_info("msg=\"etcd authenticated\" endpoint=%s user=%s", endpoint_now(r), r->user);
    return true;
}

static bool answer_grant(struct registrar *r, json_t *root)
{
    int64_t id, ttl;

    if (!wg_etcd_json_positive(json_object_get(root, "ID"), &id) ||
        !wg_etcd_json_positive(json_object_get(root, "TTL"), &ttl))
        return false;
    r->lease = id;
    r->ttl_s = (uint64_t)ttl;
    r->registered = false;
    r->keepalive_due = false;
    arm_ms(r->keepalive, ttl_ms(r) / 3);
    wg_info("msg=\"lease granted\" service=%s id=%s lease=%llx ttl_s=%lld keepalive_ms=%llu "
            "endpoint=%s", r->o->service, r->o->id, (unsigned long long)id, (long long)ttl,
            (unsigned long long)(ttl_ms(r) / 3), endpoint_now(r));
    return true;
}

/* {"result":{"ID":...,"TTL":...}}: no TTL means the lease is gone. */
static bool answer_keepalive(struct registrar *r, json_t *root)
{
    json_t *res = json_object_get(root, "result");
    int64_t ttl;

    if (!json_is_object(res))
        return false;
    if (!wg_etcd_json_positive(json_object_get(res, "TTL"), &ttl)) {
        lease_lost(r, "keep-alive answered without TTL");
        return true;
    }
    r->ttl_s = (uint64_t)ttl;
    r->keepalive_due = false;
    arm_ms(r->keepalive, ttl_ms(r) / 3);
    return true;
}

static bool answer_ok(struct registrar *r, enum op op, json_t *root)
{
    switch (op) {
    case OP_AUTH:
        return answer_auth(r, root);
    case OP_GRANT:
        return answer_grant(r, root);
    case OP_KEEPALIVE:
        return answer_keepalive(r, root);
    case OP_PUT:
        r->registered = true;
        wg_info("msg=\"registered\" service=%s id=%s key=%s value=%s lease=%llx endpoint=%s",
                r->o->service, r->o->id, r->key, r->value, (unsigned long long)r->lease,
                endpoint_now(r));
        return true;
    case OP_DELETE:
        r->registered = false;
        wg_info("msg=\"deregistered\" service=%s id=%s key=%s", r->o->service, r->o->id, r->key);
        return true;
    case OP_REVOKE:
        wg_info("msg=\"lease revoked\" service=%s id=%s lease=%llx", r->o->service, r->o->id,
                (unsigned long long)r->lease);
        r->lease = 0;
        r->registered = false;
        evtimer_del(r->keepalive);
        return true;
    default:
        return false;
    }
}

/* An error answer: re-authenticate once, a lost lease, or a retry. */
static void answer_error(struct registrar *r, enum op op, int code, const char *text)
{
    char why[300];

    snprintf(why, sizeof why, "code %d: %s", code, text);
    if (code == WG_GRPC_UNAUTHENTICATED && r->user && !r->reauthed) {
        wg_info("msg=\"etcd token refused, authenticating again\" reason=\"%s\"", why);
        r->reauthed = true;
        wg_etcd_client_set_token(r->etcd, NULL);
    } else if (code == 5 && (op == OP_PUT || op == OP_KEEPALIVE)) {
        lease_lost(r, why);             /* NOT_FOUND: "requested lease not found" */
    } else if (code == 5 && op == OP_REVOKE) {
        answer_ok(r, OP_REVOKE, NULL);
    } else {
        if (code == WG_GRPC_UNAUTHENTICATED)
            wg_etcd_client_set_token(r->etcd, NULL);
        op_failed(r, op, why);
        return;
    }
    advance(r);
}

static bool op_message(void *arg, struct wg_etcd_call *call, unsigned status, const char *msg,
                       size_t len, uint64_t recv_ns)
{
    struct registrar *r = arg;
    enum op op = r->op;
    json_t *root = json_loadb(msg, len, JSON_DISABLE_EOF_CHECK, NULL);
    char text[200];
    int code = root ? wg_etcd_answer_code(root, status, text, sizeof text) : -1;

    r->call = NULL;
    r->op = OP_NONE;
    if (!root) {
        snprintf(text, sizeof text, "HTTP %u, not JSON", status);
        op_failed(r, op, text);
    } else if (code) {
        answer_error(r, op, code, text);
    } else if (!answer_ok(r, op, root)) {
        op_failed(r, op, "malformed answer");
    } else {
        if (op != OP_AUTH) {            /* a token alone proves little */
            r->backoff_ms = r->backoff_initial_ms;
            r->reauthed = false;
        }
        advance(r);
    }
    json_decref(root);
    return false;
}

static void op_end(void *arg, struct wg_etcd_call *call, bool ok, const char *why)
{
    struct registrar *r = arg;
    enum op op = r->op;

    if (r->call != call)
        return;                         /* answered: handled in op_message */
    r->call = NULL;
    r->op = OP_NONE;
    op_failed(r, op, why ? why : "no answer");
}

static void retry_cb(evutil_socket_t fd, short what, void *arg)
{
    struct registrar *r = arg;

    r->waiting = false;
    advance(r);
}

static void keepalive_cb(evutil_socket_t fd, short what, void *arg)
{
    struct registrar *r = arg;

    r->keepalive_due = true;
    advance(r);
}

/* ---- ZooKeeper ------------------------------------------------------------------------------
 *
 * The node is ephemeral: it lives as long as the session. zk_step() sends
 * what the state asks for once the session is connected: the persistent
 * parents then the node (pipelined: ZooKeeper answers in order), or its
 * delete. An expired session takes the node with it: a new handle is
 * opened and the node created again. A node that already exists belongs to
 * another session (a registrar that died, until its session expires, or a
 * duplicate --id): waited for. */

static void zk_retry_cb(evutil_socket_t fd, short what, void *arg)
{
    struct registrar *r = arg;

    r->waiting = false;
    if (!r->zk_connected && wg_zk_state(r->zk) != WG_ZK_CONNECTING && wg_zk_reconnect(r->zk) < 0)
        arm_ms(r->retry, ZK_RETRY_MS);
    advance(r);
}

static void zk_send(struct registrar *r, int rc, enum op op)
{
    if (rc < 0) {
        wg_warn("msg=\"zookeeper request not sent, retrying\" call=\"%s\" service=%s id=%s",
                op_names[op], r->o->service, r->o->id);
        r->waiting = true;
        arm_ms(r->retry, ZK_RETRY_MS);
        return;
    }
    r->zk_inflight++;
    r->op = op;
}

static void zk_step(struct registrar *r)
{
    bool want = r->phase == PH_RUNNING && r->healthy;

    if (r->phase == PH_STOPPING && !r->registered && !r->zk_inflight)
        finish(r);
    if (r->done || !r->zk_connected || r->zk_inflight || r->waiting)
        return;
    if (r->registered && (!want || r->phase == PH_STOPPING)) {
        zk_send(r, wg_zk_delete(r->zk, r->key, 0), OP_DELETE);
    } else if (want && !r->registered) {
        for (size_t i = 0; i < r->n_zk_parents; i++)
            if (wg_zk_create(r->zk, r->zk_parents[i], NULL, 0, false, 1) == 0)
                r->zk_inflight++;
        zk_send(r, wg_zk_create(r->zk, r->key, r->value, strlen(r->value), true, 2), OP_PUT);
    }
}

static void zk_created(struct registrar *r, const struct wg_zk_msg *m)
{
    if (m->tag == 1) {                  /* a parent: there already is fine */
        if (m->rc && !wg_zk_is_node_exists(m->rc))
            wg_warn("msg=\"zookeeper: cannot create a parent\" path=%s error=\"%s\"", m->path,
                    wg_zk_error(m->rc));
        return;
    }
    r->op = OP_NONE;
    if (m->rc == 0) {
        r->registered = true;
        wg_info("msg=\"registered\" service=%s id=%s node=%s value=%s session=0x%llx",
                r->o->service, r->o->id, r->key, r->value,
                (unsigned long long)wg_zk_session_id(r->zk));
        return;
    }
    if (wg_zk_is_node_exists(m->rc)) {
        /* ours, if an earlier create succeeded but its answer was lost with
         * the connection: whose it is says the node's ephemeral owner */
        if (wg_zk_exists(r->zk, r->key, false, 3) == 0) {
            r->zk_inflight++;
            r->op = OP_PUT;             /* still registering, as far as SIGTERM is concerned */
            return;
        }
    } else {
        wg_warn("msg=\"zookeeper create failed, retrying\" node=%s error=\"%s\"", r->key,
                wg_zk_error(m->rc));
    }
    r->waiting = true;
    arm_ms(r->retry, ZK_RETRY_MS);
}

/* The owner of a node that already existed. */
static void zk_owner(struct registrar *r, const struct wg_zk_msg *m)
{
    r->op = OP_NONE;
    if (m->rc == 0 && m->stat.ephemeral_owner == wg_zk_session_id(r->zk)) {
        r->registered = true;
        wg_info("msg=\"registered (the node this session created earlier)\" service=%s id=%s "
                "node=%s", r->o->service, r->o->id, r->key);
        return;
    }
    if (m->rc == 0)
        wg_warn("msg=\"the node exists under another session; waiting for it to go\" node=%s "
                "owner=0x%llx service=%s id=%s", r->key,
                (unsigned long long)m->stat.ephemeral_owner, r->o->service, r->o->id);
    r->waiting = true;
    arm_ms(r->retry, ZK_RETRY_MS);
}

static void zk_session(struct registrar *r, enum wg_zk_state st)
{
    char server[64];

    r->zk_connected = st == WG_ZK_CONNECTED;
    if (st == WG_ZK_CONNECTED) {
        wg_zk_server(r->zk, server, sizeof server);
        wg_info("msg=\"zookeeper connected\" server=%s session=0x%llx", server,
                (unsigned long long)wg_zk_session_id(r->zk));
    } else if (st == WG_ZK_EXPIRED || st == WG_ZK_AUTH_FAILED) {
        wg_warn("msg=\"zookeeper session %s; its node is gone, opening a new session\" "
                "service=%s id=%s", st == WG_ZK_EXPIRED ? "expired" : "refused authentication",
                r->o->service, r->o->id);
        r->registered = false;
        r->zk_inflight = 0;
        r->op = OP_NONE;
        if (wg_zk_reconnect(r->zk) < 0) {
            r->waiting = true;
            arm_ms(r->retry, ZK_RETRY_MS);
        }
    } else {
        wg_warn("msg=\"zookeeper connection lost; the node stays while the session lives\" "
                "service=%s id=%s", r->o->service, r->o->id);
    }
}

static void zk_message(void *arg, const struct wg_zk_msg *m)
{
    struct registrar *r = arg;

    switch (m->kind) {
    case WG_ZK_SESSION:
        zk_session(r, m->state);
        break;
    case WG_ZK_CREATE:
        r->zk_inflight--;
        zk_created(r, m);
        break;
    case WG_ZK_EXISTS:
        r->zk_inflight--;
        zk_owner(r, m);
        break;
    case WG_ZK_DELETE:
        r->zk_inflight--;
        r->op = OP_NONE;
        if (m->rc == 0 || wg_zk_is_nonode(m->rc)) {
            r->registered = false;
            wg_info("msg=\"deregistered\" service=%s id=%s node=%s", r->o->service, r->o->id,
                    r->key);
        } else {
            wg_warn("msg=\"zookeeper delete failed, retrying\" node=%s error=\"%s\"", r->key,
                    wg_zk_error(m->rc));
            r->waiting = true;
            arm_ms(r->retry, ZK_RETRY_MS);
        }
        break;
    default:
        break;
    }
    advance(r);
}

/* ---- health ------------------------------------------------------------------------------ */

static void health_verdict(struct registrar *r, bool pass, const char *why);

static void probe_close(struct probe *p)
{
    if (p->bev) {
        bufferevent_free(p->bev);
        p->bev = NULL;
    }
}

/* One check is over: report it, then schedule the next one. */
static void probe_done(struct probe *p, bool pass, const char *why)
{
    struct registrar *r = p->r;

    probe_close(p);
    if (p->enabled)
        arm_ms(p->timer, r->o->health_interval_ms);
    health_verdict(r, pass, why);
}

static void probe_read_cb(struct bufferevent *bev, void *arg)
{
    struct probe *p = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    int n = evbuffer_remove(in, p->head + p->head_len, sizeof p->head - p->head_len);
    enum wg_http_result res;
    char why[64];

    if (n < 0) {
        probe_done(p, false, "read failed");
        return;
    }
    p->head_len += (size_t)n;
    res = wg_http_parse_head(&p->parser, p->head, p->head_len, NULL);
    if (res == WG_HTTP_ERROR) {
        probe_done(p, false, p->parser.err_reason ? p->parser.err_reason : "bad response");
    } else if (res == WG_HTTP_DONE) {
        unsigned status = p->parser.msg.status;
        snprintf(why, sizeof why, "HTTP %u", status);
        probe_done(p, status >= 200 && status <= 399, why);
    } else if (p->head_len == sizeof p->head) {
        probe_done(p, false, "response head too large");
    }
}

static void probe_event_cb(struct bufferevent *bev, short what, void *arg)
{
    struct probe *p = arg;
    int dns = bufferevent_socket_get_dns_error(bev);
    int err = EVUTIL_SOCKET_ERROR();

    if (what & BEV_EVENT_CONNECTED) {
        if (!p->request)
            probe_done(p, true, "port open");
        return;
    }
    if (what & BEV_EVENT_EOF)
        probe_done(p, false, "closed before a response");
    else if (what & BEV_EVENT_ERROR)
        probe_done(p, false, dns ? evutil_gai_strerror(dns)
                             : err ? evutil_socket_error_to_string(err)
                                   : "connection failed");
}

static void probe_start(struct probe *p)
{
    struct registrar *r = p->r;
    struct bufferevent *bev =
        bufferevent_socket_new(r->base, -1, BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);

    if (!bev) {
        probe_done(p, false, "out of memory");
        return;
    }
    p->bev = bev;
    p->head_len = 0;
    wg_http_parser_init_response(&p->parser, p->headers, PROBE_HEADERS, PROBE_HEAD_MAX,
                                 WG_HTTP_GET, false);
    bufferevent_setcb(bev, probe_read_cb, NULL, probe_event_cb, p);
    arm_ms(p->timer, r->o->health_timeout_ms);
    if (bufferevent_enable(bev, EV_READ | EV_WRITE) < 0 ||
        (p->request && evbuffer_add(bufferevent_get_output(bev), p->request,
                                    strlen(p->request)) < 0)) {
        probe_done(p, false, "out of memory");
        return;
    }
    /* the failure of a connect reported at once arrives through the event
     * callback, which may already have freed the bufferevent */
    if (bufferevent_socket_connect_hostname(bev, r->dns, AF_UNSPEC, p->host,
                                            p->port) < 0 && p->bev == bev)
        probe_done(p, false, "cannot connect");
}

static void probe_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct probe *p = arg;

    if (p->bev)
        probe_done(p, false, "timeout");
    else if (p->enabled)
        probe_start(p);
}

static bool probe_init(struct registrar *r)
{
    struct probe *p = &r->probe;
    const struct health_url *u = &r->health;
    const char *fmt = "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: waygate-register\r\n"
                      "Accept: */*\r\nConnection: close\r\n\r\n";

    p->r = r;
    if (!(p->timer = evtimer_new(r->base, probe_timer_cb, p)))
        return false;
    if (!r->o->health) {
        p->host = r->address_host;
        p->port = r->address_port;
        return true;
    }
    p->host = u->host;
    p->port = u->port;
    size_t n = (size_t)snprintf(NULL, 0, fmt, u->path, u->authority) + 1;
    if (!(p->request = malloc(n)))
        return false;
    snprintf(p->request, n, fmt, u->path, u->authority);
    return true;
}

static void health_verdict(struct registrar *r, bool pass, const char *why)
{
    struct probe *p = &r->probe;
    const char *what = r->o->health ? r->o->health : "the instance's port";

    if (pass) {
        if (!r->healthy)
            wg_info("msg=\"health check passes\" service=%s id=%s check=%s result=\"%s\"",
                    r->o->service, r->o->id, what, why);
        p->fails = 0;
        r->healthy = true;
        if (!r->o->health)
            p->enabled = false;         /* the port only gates the first registration */
        if (r->phase == PH_STARTING)
            r->phase = PH_RUNNING;
    } else {
        p->fails++;
        if (r->healthy && p->fails >= HEALTH_FALL) {
            wg_warn("msg=\"health check fails, deregistering\" service=%s id=%s check=%s "
                    "result=\"%s\" fails=%u", r->o->service, r->o->id, what, why, p->fails);
            r->healthy = false;
        } else if (!r->healthy && p->fails == 1) {
            wg_info("msg=\"waiting for the health check\" service=%s id=%s check=%s "
                    "result=\"%s\"", r->o->service, r->o->id, what, why);
        }
    }
    advance(r);
}

/* ---- lifecycle ------------------------------------------------------------------------------- */

static void forward(struct registrar *r, int sig)
{
    if (!r->child)
        return;
    wg_info("msg=\"forwarding signal\" signal=%s pid=%ld", strsignal(sig), (long)r->child);
    if (kill(-r->child, sig) < 0 && kill(r->child, sig) < 0)
        wg_warn("msg=\"cannot signal the child\" pid=%ld error=\"%s\"", (long)r->child,
                strerror(errno));
}

static void start_drain(struct registrar *r)
{
    uint64_t ms = r->drain_needed ? r->o->drain_ms : 0;

    evtimer_del(r->deadline);
    r->phase = PH_DRAIN;
    wg_info("msg=\"draining before stopping the child\" service=%s id=%s drain_ms=%llu",
            r->o->service, r->o->id, (unsigned long long)ms);
    arm_ms(r->drain, ms);
}

static void start_stopping(struct registrar *r)
{
    r->phase = PH_STOPPING;
    evtimer_del(r->drain);
    arm_ms(r->deadline, STOP_ETCD_MS);
}

static void advance(struct registrar *r)
{
    if (r->done)
        return;
    if (r->phase == PH_DEREGISTER && !r->registered && r->op != OP_PUT)
        start_drain(r);
    if (r->zk_mode)
        zk_step(r);
    else
        etcd_step(r);
}

static void drain_cb(evutil_socket_t fd, short what, void *arg)
{
    struct registrar *r = arg;

    r->phase = PH_CHILD_STOPPING;
    forward(r, r->stop_signal);
}

static void deadline_cb(evutil_socket_t fd, short what, void *arg)
{
    struct registrar *r = arg;

    if (r->phase == PH_DEREGISTER) {
        wg_warn("msg=\"etcd did not confirm the delete in time; the record goes when its "
                "lease expires\" service=%s id=%s", r->o->service, r->o->id);
        start_drain(r);
    } else if (r->phase == PH_STOPPING) {
        wg_warn("msg=\"etcd did not answer in time; the record goes when its lease expires\" "
                "service=%s id=%s registered=%d lease=%llx", r->o->service, r->o->id,
                r->registered, (unsigned long long)r->lease);
        finish(r);
    }
}

static void on_stop_signal(struct registrar *r, int sig)
{
    switch (r->phase) {
    case PH_STARTING:
    case PH_RUNNING:
        wg_info("msg=\"stopping\" signal=%s service=%s id=%s", strsignal(sig), r->o->service,
                r->o->id);
        if (!r->child) {
            start_stopping(r);
            break;
        }
        r->stop_signal = sig;
        r->drain_needed = r->registered || r->op == OP_PUT;
        r->phase = PH_DEREGISTER;
        arm_ms(r->deadline, STOP_ETCD_MS);
        break;
    case PH_DEREGISTER:
    case PH_DRAIN:                      /* asked twice: stop waiting */
        evtimer_del(r->deadline);
        evtimer_del(r->drain);
        r->phase = PH_CHILD_STOPPING;
        /* fall through */
    case PH_CHILD_STOPPING:
        forward(r, sig);
        break;
    case PH_STOPPING:
        wg_warn("msg=\"asked again: exiting without waiting for etcd\"");
        finish(r);
        break;
    }
    advance(r);
}

static void child_exited(struct registrar *r, int status)
{
    if (WIFEXITED(status))
        r->exit_status = WEXITSTATUS(status);
    else if (WIFSIGNALED(status))
        r->exit_status = 128 + WTERMSIG(status);
    wg_log(r->phase == PH_CHILD_STOPPING ? WG_LOG_INFO : WG_LOG_WARN,
           "msg=\"child exited\" pid=%ld status=%d service=%s id=%s", (long)r->child,
           r->exit_status, r->o->service, r->o->id);
    r->child = 0;
    r->probe.enabled = false;
    evtimer_del(r->probe.timer);
    probe_close(&r->probe);
    start_stopping(r);
}

static void signal_cb(evutil_socket_t sig, short what, void *arg)
{
    struct registrar *r = arg;
    int status;

    if (sig == SIGCHLD) {
        while (r->child && waitpid(r->child, &status, WNOHANG) == r->child)
            child_exited(r, status);
        advance(r);
    } else if (sig == SIGTERM || sig == SIGINT) {
        on_stop_signal(r, (int)sig);
    } else if (r->child) {
        forward(r, (int)sig);
    } else {
        wg_info("msg=\"signal ignored\" signal=%s", strsignal((int)sig));
    }
}

static const int handled_signals[] = { SIGTERM, SIGINT, SIGCHLD, SIGHUP, SIGQUIT, SIGUSR1,
                                       SIGUSR2, SIGWINCH };
#define N_HANDLED (sizeof handled_signals / sizeof *handled_signals)

static bool signals_init(struct registrar *r)
{
    for (size_t i = 0; i < N_HANDLED; i++) {
        struct event *ev = evsignal_new(r->base, handled_signals[i], signal_cb, r);
        if (!ev || evsignal_add(ev, NULL) < 0) {
            if (ev)
                event_free(ev);
            return false;
        }
        r->signals[r->n_signals++] = ev;
    }
    return true;
}

/* In the child: default dispositions (a signal before exec must not run
 * the registrar's handler, which would wake the parent's loop), then exec. */
static void child_exec(char **cmd, pid_t parent, const sigset_t *mask)
{
    for (size_t i = 0; i < N_HANDLED; i++)
        signal(handled_signals[i], SIG_DFL);
    signal(SIGPIPE, SIG_DFL);
    setpgid(0, 0);
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent)
        _exit(128 + SIGTERM);
    sigprocmask(SIG_SETMASK, mask, NULL);
    execvp(cmd[0], cmd);
    dprintf(2, "waygate register: cannot run %s: %s\n", cmd[0], strerror(errno));
    _exit(127);
}

/* The child leads its own process group, so a terminal's Ctrl-C reaches
 * the registrar only (which deregisters first, then forwards); it gets
 * SIGTERM if the registrar dies. */
static bool child_start(struct registrar *r)
{
    char **cmd = r->o->command;
    pid_t parent = getpid(), pid;
    sigset_t all, old;

    sigfillset(&all);
    sigprocmask(SIG_SETMASK, &all, &old);
    if ((pid = fork()) == 0)
        child_exec(cmd, parent, &old);
    sigprocmask(SIG_SETMASK, &old, NULL);
    if (pid < 0) {
        wg_error("msg=\"cannot fork\" error=\"%s\"", strerror(errno));
        return false;
    }
    setpgid(pid, pid);                  /* also here: no race with the first signal */
    r->child = pid;
    wg_info("msg=\"child started\" pid=%ld command=%s", (long)pid, cmd[0]);
    return true;
}

/* ---- set-up ---------------------------------------------------------------------------------- */

static bool split_endpoints(struct registrar *r, const char *list, char *err, size_t len)
{
    for (const char *p = list;;) {
        size_t n = strcspn(p, ",");
        if (n == 0)
            return fail_text(err, len, "--etcd: empty endpoint in '%s'", list);
        if (r->n_endpoints == MAX_ENDPOINTS)
            return fail_text(err, len, "--etcd: more than %d endpoints", MAX_ENDPOINTS);
        if (!(r->endpoints[r->n_endpoints++] = strndup(p, n)))
            return fail_text(err, len, "out of memory");
        if (!p[n])
            return true;
        p += n + 1;
    }
}

/* Endpoints, prefix, auth and backoff: the options, else the file's
 * registry.etcd, else defaults. */
static bool etcd_settings(struct registrar *r, char *err, size_t len)
{
    const typeof(r->cfg->registry.etcd) *e = r->cfg ? &r->cfg->registry.etcd : NULL;

    if (r->o->etcd)
        return split_endpoints(r, r->o->etcd, err, len);
    if (!e || !e->n_endpoints)
        return fail_text(err, len, "no etcd endpoints: pass --etcd URL[,URL] or -c FILE with "
                                   "registry.etcd");
    for (size_t i = 0; i < e->n_endpoints && i < MAX_ENDPOINTS; i++)
        if (!(r->endpoints[r->n_endpoints++] = strdup(e->endpoints[i])))
            return fail_text(err, len, "out of memory");
    return true;
}

static void file_settings(struct registrar *r)
{
    const typeof(r->cfg->registry.etcd) *e = r->cfg ? &r->cfg->registry.etcd : NULL;

    r->backoff_initial_ms = e && e->backoff_initial_ms ? e->backoff_initial_ms : 50;
    r->backoff_max_ms = e && e->backoff_max_ms ? e->backoff_max_ms : 5000;
    if (e && e->username && *e->username) {
        r->user = e->username;
        r->password = e->password ? e->password : "";
    }
    if (!r->o->prefix && !r->zk_mode)
        r->o->prefix = e && e->n_prefixes ? e->prefixes[0] : DEFAULT_PREFIX;
}

/* ZooKeeper: hosts, session timeout (--ttl), root (--prefix) and auth from
 * the options, else the file's registry.zookeeper, else defaults. */
static bool zk_settings(struct registrar *r, char *err, size_t len)
{
    const typeof(r->cfg->registry.zookeeper) *z = r->cfg ? &r->cfg->registry.zookeeper : NULL;
    bool from_file = z && r->cfg->registry.kind == WG_REGISTRY_ZOOKEEPER;
    size_t n = 1;

    if (r->o->zookeeper) {
        r->zk_hosts = strdup(r->o->zookeeper);
    } else {
        for (size_t i = 0; i < z->n_servers; i++)
            n += strlen(z->servers[i]) + 1;
        n += strlen(z->chroot);
        if ((r->zk_hosts = calloc(1, n))) {
            for (size_t i = 0; i < z->n_servers; i++)
                strcat(strcat(r->zk_hosts, i ? "," : ""), z->servers[i]);
            strcat(r->zk_hosts, z->chroot);
        }
    }
    if (!r->zk_hosts)
        return fail_text(err, len, "out of memory");
    if (!r->zk_hosts[0] || strspn(r->zk_hosts, ",") == strlen(r->zk_hosts))
        return fail_text(err, len, "--zookeeper: expected HOST:PORT[,HOST:PORT]");
    r->zk_opts = (struct wg_zk_options){ r->zk_hosts, (unsigned)r->o->ttl_ms,
                                         from_file ? z->auth.scheme : NULL,
                                         from_file ? z->auth.credentials : NULL };
    if (!r->o->prefix)
        r->o->prefix = from_file ? z->root : DEFAULT_ZK_ROOT;
    if (r->o->layout && strcmp(r->o->layout, "curator") == 0 && r->o->weight != WG_WEIGHT_DEFAULT)
        return fail_text(err, len, "--weight: a Curator ServiceInstance has no weight "
                                   "(use --layout plain)");
    return true;
}

/* Curator's ServiceInstance JSON (what ServiceDiscovery.registerService
 * writes); metadata goes into the payload, a map as Curator's Jackson
 * serializer types it. */
static char *curator_value(const struct options *o, const char *host, uint16_t port)
{
    json_t *payload = json_null(), *v;
    struct timespec now;
    char *text;

    clock_gettime(CLOCK_REALTIME, &now);
    if (json_object_size(o->metadata)) {
        payload = json_deep_copy(o->metadata);
        if (payload)
            json_object_set_new(payload, "@class", json_string("java.util.LinkedHashMap"));
    }
    v = json_pack("{sssssssIsnsosIss}", "name", o->service, "id", o->id, "address", host,
                  "port", (json_int_t)port, "sslPort", "payload", payload,
                  "registrationTimeUTC",
                  (json_int_t)now.tv_sec * 1000 + now.tv_nsec / 1000000, "serviceType",
                  "DYNAMIC");
    text = v ? json_dumps(v, JSON_COMPACT) : NULL;
    json_decref(v);
    return text;
}

/* The node's path, value (checked with the registry's decoder) and parents. */
static bool zk_record(struct registrar *r, char *err, size_t len)
{
    const struct options *o = r->o;
    bool curator = o->layout && strcmp(o->layout, "curator") == 0;
    size_t rl = strlen(o->prefix);
    struct wg_record_set set = { 0 };
    char why[300];

    while (rl && o->prefix[rl - 1] == '/')
        rl--;
    if (o->prefix[0] != '/' && rl)
        return fail_text(err, len, "--prefix: a ZooKeeper path starts with '/', got '%s'",
                         o->prefix);
    if (strchr(o->id, '/'))
        return fail_text(err, len, "--id: a ZooKeeper node name has no '/', got '%s'", o->id);
    size_t n = rl + strlen(o->service) + strlen(o->id) + 3;
    if (!(r->key = malloc(n)) || !(r->zk_parents = calloc(32, sizeof *r->zk_parents)))
        return fail_text(err, len, "out of memory");
    snprintf(r->key, n, "%.*s/%s/%s", (int)rl, o->prefix, o->service, o->id);
    r->value = curator ? curator_value(o, r->address_host, r->address_port)
                       : record_value(o, r->address_host, r->address_port);
    if (!r->value)
        return fail_text(err, len, "out of memory");
    char prefix[rl + 2];
    snprintf(prefix, sizeof prefix, "%.*s/", (int)rl, o->prefix);
    bool ok = wg_record_decode_zk(prefix, r->key, strlen(r->key), r->value, strlen(r->value),
                                  curator, false, &set, NULL, NULL, why, sizeof why);
    wg_record_set_clear(&set);
    if (!ok)
        return fail_text(err, len, "the node %s would be refused by waygate: %s", r->key, why);
    /* every directory above the node, top first */
    for (char *slash = strchr(r->key + 1, '/'); slash; slash = strchr(slash + 1, '/')) {
        if (r->n_zk_parents == 32)
            return fail_text(err, len, "--prefix: too deep");
        if (!(r->zk_parents[r->n_zk_parents++] = strndup(r->key, (size_t)(slash - r->key))))
            return fail_text(err, len, "out of memory");
    }
    return true;
}

static bool required(const struct options *o, char *err, size_t len)
{
    if (!o->service || !o->id || !o->address)
        return fail_text(err, len, "missing %s", !o->service ? "--service NAME"
                                                 : !o->id    ? "--id ID"
                                                             : "--address HOST:PORT");
    if (!wg_service_name_ok(o->service))
        return fail_text(err, len, "--service: '%s' is not a service name (no '/', spaces or "
                                   "control characters)", o->service);
    if (!o->id[0])
        return fail_text(err, len, "--id: empty");
    if (o->ttl_ms < 1000)
        return fail_text(err, len, "--ttl: at least 1s (etcd leases count whole seconds)");
    if (!o->health_interval_ms || !o->health_timeout_ms)
        return fail_text(err, len, "--health-interval and --health-timeout must be above 0");
    return true;
}

/* Key, value (checked with the registry's decoder) and their base64. */
static bool build_record(struct registrar *r, char *err, size_t len)
{
    const struct options *o = r->o;
    const char *prefix = o->prefix, *slash = "";
    size_t n;

    if (!split_hostport(o->address, strlen(o->address), r->address_host,
                        sizeof r->address_host, &r->address_port))
        return fail_text(err, len, "--address: expected HOST:PORT or [V6]:PORT with a port "
                                   "1..65535, got '%s'", o->address);
    if (r->zk_mode)
        return zk_record(r, err, len) &&
               (!o->health || parse_health_url(o->health, &r->health, err, len));
    if (!prefix[0] || prefix[strlen(prefix) - 1] != '/')
        slash = "/";
    n = strlen(prefix) + strlen(slash) + strlen(o->service) + strlen(o->id) + 2;
    if (!(r->key = malloc(n)) ||
        !(r->value = record_value(o, r->address_host, r->address_port)))
        return fail_text(err, len, "out of memory");
    snprintf(r->key, n, "%s%s%s/%s", prefix, slash, o->service, o->id);
    char full_prefix[1024];
    snprintf(full_prefix, sizeof full_prefix, "%s%s", prefix, slash);
    if (!record_check(full_prefix, r->key, r->value, err, len))
        return false;
    if (!(r->key_b64 = wg_base64_encode(r->key, strlen(r->key))) ||
        !(r->value_b64 = wg_base64_encode(r->value, strlen(r->value))))
        return fail_text(err, len, "out of memory");
    return !o->health || parse_health_url(o->health, &r->health, err, len);
}

static bool load_config(struct registrar *r)
{
    struct wg_errors errs = { 0 };

    if (!r->o->config_path)
        return true;
    r->cfg = wg_config_load(r->o->config_path, &errs);
    for (size_t k = 0; k < errs.n; k++)
        fprintf(stderr, "%s\n", errs.lines[k]);
    wg_errors_free(&errs);
    return r->cfg != NULL;
}

static bool runtime_init(struct registrar *r)
{
    const typeof(r->cfg->registry.etcd) *e = r->cfg ? &r->cfg->registry.etcd : NULL;
    struct wg_etcd_tls tls = { 0 };
    char err[300];

    if (e)
        tls = (struct wg_etcd_tls){ e->tls.ca, e->tls.cert, e->tls.key, e->tls.server_name };
    if (!(r->base = event_base_new()))
        return false;
    if (r->zk_mode) {
        if (!(r->dns = evdns_base_new(r->base, EVDNS_BASE_INITIALIZE_NAMESERVERS)) ||
            !(r->zk = wg_zk_new(r->base, &r->zk_opts, zk_message, r, err, sizeof err))) {
            fprintf(stderr, "waygate register: %s\n", r->dns ? err : "cannot make a resolver");
            return false;
        }
    } else if (!(r->etcd = wg_etcd_client_new(r->base, r->endpoints, r->n_endpoints, &tls, err,
                                              sizeof err))) {
        fprintf(stderr, "waygate register: %s\n", err);
        return false;
    } else {
        r->dns = wg_etcd_client_dns(r->etcd);
    }
    if (!(r->retry = evtimer_new(r->base, r->zk_mode ? zk_retry_cb : retry_cb, r)) ||
        !(r->keepalive = evtimer_new(r->base, keepalive_cb, r)) ||
        !(r->deadline = evtimer_new(r->base, deadline_cb, r)) ||
        !(r->drain = evtimer_new(r->base, drain_cb, r)) || !probe_init(r) || !signals_init(r))
        return false;
    r->backoff_ms = r->backoff_initial_ms;
    return true;
}

static void runtime_free(struct registrar *r)
{
    struct event *evs[] = { r->retry, r->keepalive, r->deadline, r->drain, r->probe.timer };

    wg_etcd_call_cancel(r->call);
    probe_close(&r->probe);
    free(r->probe.request);
    for (size_t i = 0; i < sizeof evs / sizeof *evs; i++)
        if (evs[i])
            event_free(evs[i]);
    for (size_t i = 0; i < r->n_signals; i++)
        event_free(r->signals[i]);
    /* a freed bufferevent whose deferred callback is still queued (a refused
     * connect) keeps a reference until that callback runs: run them */
    if (r->base)
        event_base_loop(r->base, EVLOOP_NONBLOCK);
    wg_etcd_client_free(r->etcd);
    wg_zk_free(r->zk);                  /* closing the session drops the node, too */
    if (r->zk_mode && r->dns)
        evdns_base_free(r->dns, 0);
    if (r->base)
        event_base_free(r->base);
    for (size_t i = 0; i < r->n_zk_parents; i++)
        free(r->zk_parents[i]);
    free(r->zk_parents);
    free(r->zk_hosts);
    for (size_t i = 0; i < r->n_endpoints; i++)
        free(r->endpoints[i]);
    free(r->key);
    free(r->value);
    free(r->key_b64);
    free(r->value_b64);
    wg_config_free(r->cfg);
}

static int run(struct registrar *r)
{
    signal(SIGPIPE, SIG_IGN);
    srandom((unsigned)getpid() ^ (unsigned)time(NULL));     /* registrars retry out of step */
    if (!runtime_init(r))
        return 1;
    r->phase = r->o->command ? PH_STARTING : PH_RUNNING;
    r->healthy = !r->o->health && !r->o->command;
    if (r->o->command && !child_start(r))
        return 1;
    if (r->o->health || r->o->command) {
        r->probe.enabled = true;
        arm_ms(r->probe.timer, 0);
    }
    wg_info("msg=\"registering\" service=%s id=%s key=%s registry=%s first=%s ttl_ms=%llu",
            r->o->service, r->o->id, r->key, r->zk_mode ? "zookeeper" : "etcd",
            r->zk_mode ? r->zk_hosts : r->endpoints[0], (unsigned long long)r->o->ttl_ms);
    advance(r);
    if (event_base_dispatch(r->base) < 0)
        return 1;
    if (r->child) {                     /* the loop ended before the child: do not orphan it */
        forward(r, SIGTERM);
        waitpid(r->child, NULL, 0);
    }
    return r->exit_status;
}

static int usage_error(const char *msg)
{
    fprintf(stderr, "waygate register: %s\n(waygate register --help shows the usage)\n", msg);
    return 2;
}

int wg_register_main(int argc, char **argv)
{
    struct options o = { .weight = WG_WEIGHT_DEFAULT, .ttl_ms = DEFAULT_TTL_MS,
                         .drain_ms = DEFAULT_DRAIN_MS,
                         .health_interval_ms = DEFAULT_HEALTH_INTERVAL_MS,
                         .health_timeout_ms = DEFAULT_HEALTH_TIMEOUT_MS };
    struct registrar r = { .o = &o };
    char err[512];
    int rc, parsed;

    if (!(o.metadata = json_object()))
        return 1;
    parsed = parse_args(argc, argv, &o, err, sizeof err);
    if (parsed == 1) {
        fputs(USAGE, stdout);
        rc = 0;
    } else if (parsed < 0 || !required(&o, err, sizeof err)) {
        rc = usage_error(err);
    } else if (!load_config(&r)) {
        rc = 1;
    } else {
        r.zk_mode = o.zookeeper || (!o.etcd && r.cfg && r.cfg->registry.kind == WG_REGISTRY_ZOOKEEPER);
        file_settings(&r);
        if (o.zookeeper && o.etcd)
            rc = usage_error("--etcd and --zookeeper are mutually exclusive");
        else if (o.layout && !r.zk_mode)
            rc = usage_error("--layout: only with --zookeeper");
        else
            rc = (r.zk_mode ? zk_settings(&r, err, sizeof err)
                            : etcd_settings(&r, err, sizeof err)) &&
                         build_record(&r, err, sizeof err)
                     ? run(&r)
                     : usage_error(err);
    }
    runtime_free(&r);
    json_decref(o.metadata);
    return rc;
}
