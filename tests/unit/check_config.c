/* check_config — the config loader: value grammar, defaults, merging,
 * and one exact "FILE:LINE:COL: message" per bad config. */
#include <check.h>
#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "waygate/config.h"

static struct wg_config *load(const char *yaml, struct wg_errors *errs)
{
    return wg_config_load_buffer("t.yaml", yaml, strlen(yaml), false, errs);
}

static struct wg_config *load_ok(const char *yaml)
{
    struct wg_errors errs = { 0 };
    struct wg_config *cfg = load(yaml, &errs);

    for (size_t i = 0; i < errs.n; i++)
        fprintf(stderr, "unexpected: %s\n", errs.lines[i]);
    ck_assert_uint_eq(errs.n, 0);
    wg_errors_free(&errs);
    ck_assert_ptr_nonnull(cfg);
    return cfg;
}

/* ---- value grammar ------------------------------------------------------- */

static const struct { const char *text; bool ok; uint64_t ms; } durations[] = {
    { "250ms", true, 250 }, { "2s", true, 2000 }, { "1m", true, 60000 },
    { "1h", true, 3600000 }, { "0s", true, 0 }, { "0ms", true, 0 },
    { "8760h", true, 8760ULL * 3600000 }, { "8761h", false, 0 }, { "5", false, 0 },
    { "0", false, 0 }, { "", false, 0 }, { "s", false, 0 }, { "1.5s", false, 0 },
    { "-1s", false, 0 }, { "1 s", false, 0 }, { "1S", false, 0 }, { "1d", false, 0 },
    { "1sec", false, 0 }, { "1m30s", false, 0 }, { "99999999999999999999999s", false, 0 },
};

START_TEST(test_duration_grammar)
{
    uint64_t ms = 12345;
    bool ok = wg_parse_duration(durations[_i].text, &ms);

    ck_assert_msg(ok == durations[_i].ok, "'%s'", durations[_i].text);
    if (ok)
        ck_assert_uint_eq(ms, durations[_i].ms);
}
END_TEST

static const struct { const char *text; bool ok; uint64_t bytes; } sizes[] = {
    { "0", true, 0 }, { "4096", true, 4096 }, { "32k", true, 32768 }, { "32K", true, 32768 },
    { "1m", true, 1048576 }, { "2M", true, 2097152 }, { "1048576m", true, 1ULL << 40 },
    { "1048577m", false, 0 }, { "", false, 0 }, { "k", false, 0 }, { "32kb", false, 0 },
    { "1g", false, 0 }, { "-1", false, 0 }, { "1.5k", false, 0 }, { " 1", false, 0 },
};

START_TEST(test_size_grammar)
{
    uint64_t b = 7;
    bool ok = wg_parse_size(sizes[_i].text, &b);

    ck_assert_msg(ok == sizes[_i].ok, "'%s'", sizes[_i].text);
    if (ok)
        ck_assert_uint_eq(b, sizes[_i].bytes);
}
END_TEST

static const struct { const char *text; const char *canon; int family; int port; } addrs[] = {
    { "127.0.0.1:8080", "127.0.0.1:8080", AF_INET, 8080 },
    { "[::1]:8080", "[::1]:8080", AF_INET6, 8080 },
    { ":8080", ":8080", AF_INET, 8080 },
    { "0.0.0.0:1", "0.0.0.0:1", AF_INET, 1 },
    { "[::]:65535", "[::]:65535", AF_INET6, 65535 },
    { "[0:0:0:0:0:0:0:1]:80", "[::1]:80", AF_INET6, 80 },
    { "127.0.0.1", NULL, 0, 0 }, { "127.0.0.1:0", NULL, 0, 0 },
    { "127.0.0.1:65536", NULL, 0, 0 }, { "::1:80", NULL, 0, 0 }, { "[::1]", NULL, 0, 0 },
    { "localhost:80", NULL, 0, 0 }, { "1.2.3:80", NULL, 0, 0 }, { ":", NULL, 0, 0 },
    { "", NULL, 0, 0 }, { "[::1:80", NULL, 0, 0 }, { "127.0.0.1:http", NULL, 0, 0 },
    { "127.0.0.1:-1", NULL, 0, 0 }, { "[fe80::1%eth0]:80", NULL, 0, 0 },
};

START_TEST(test_addr_grammar)
{
    struct wg_addr a;
    bool ok = wg_parse_addr(addrs[_i].text, &a);

    ck_assert_msg(ok == (addrs[_i].canon != NULL), "'%s'", addrs[_i].text);
    if (!ok)
        return;
    ck_assert_str_eq(a.text, addrs[_i].canon);
    ck_assert_int_eq(a.ss.ss_family, addrs[_i].family);
    if (a.ss.ss_family == AF_INET) {
        ck_assert_uint_eq(a.len, sizeof(struct sockaddr_in));
        ck_assert_int_eq(ntohs(((struct sockaddr_in *)&a.ss)->sin_port), addrs[_i].port);
    } else {
        ck_assert_uint_eq(a.len, sizeof(struct sockaddr_in6));
        ck_assert_int_eq(ntohs(((struct sockaddr_in6 *)&a.ss)->sin6_port), addrs[_i].port);
    }
}
END_TEST

static const struct { const char *text; bool ok; int yes, no; } statuses[] = {
    { "200", true, 200, 201 }, { "200-299,404", true, 404, 300 },
    { "200-299, 404", true, 250, 405 }, { "100-599", true, 599, 600 },
    { "200-399", true, 399, 400 }, { "", false, 0, 0 }, { "200-", false, 0, 0 },
    { "99", false, 0, 0 }, { "600", false, 0, 0 }, { "299-200", false, 0, 0 },
    { "200,,404", false, 0, 0 }, { "abc", false, 0, 0 }, { "200;404", false, 0, 0 },
    { "200,201,202,203,204,205,206,207,208,209,210,211,212,213,214,215,216", false, 0, 0 },
    { "200,201,202,203,204,205,206,207,208,209,210,211,212,213,214,215", true, 215, 216 },
};

START_TEST(test_status_grammar)
{
    struct wg_status_ranges r;
    bool ok = wg_parse_status_ranges(statuses[_i].text, &r);

    ck_assert_msg(ok == statuses[_i].ok, "'%s'", statuses[_i].text);
    if (!ok)
        return;
    ck_assert(wg_status_ranges_match(&r, statuses[_i].yes));
    ck_assert(!wg_status_ranges_match(&r, statuses[_i].no));
}
END_TEST

/* ---- bad configs: exactly one error each, exact text and position --------- */

#define TCP_OK "  - { name: t, listen: 127.0.0.1:7000, mode: tcp, service: s }\n"

static const struct { const char *yaml, *error; } bad[] = {
    /* top level and YAML itself */
    { "", "t.yaml:1:1: empty configuration (expected a mapping of settings)" },
    { "# only a comment\n", "t.yaml:1:1: empty configuration (expected a mapping of settings)" },
    { "- a\n- b\n", "t.yaml:1:1: expected a mapping of settings at the top level" },
    { "workers: [1\n",
      "t.yaml:2:1: invalid YAML: did not find expected ',' or ']' "
      "(while parsing a flow sequence at line 1)" },
    { "workers: 1\n\tuser: x\n",
      "t.yaml:2:1: invalid YAML: found a tab character that violates indentation "
      "(while scanning a plain scalar at line 1)" },
    { "user: a\xff\n", "t.yaml:1:8: invalid YAML: invalid leading UTF-8 octet (0xFF)" },
    { "user: \"\\0\"\n", "t.yaml:1:7: user: NUL characters are not allowed" },
    { "workers: 1\n---\nworkers: 2\n", "t.yaml:2:1: only one YAML document is allowed" },
    { "user: *nope\n", "t.yaml:1:7: invalid YAML: found undefined alias" },
    { "workers: 1\nworkers: 2\n", "t.yaml:2:1: duplicate key 'workers' (first at line 1)" },
    { "listners: []\n",
      "t.yaml:1:1: unknown key 'listners' in the top level (did you mean 'listeners'?)" },
    { "frobnicate: 1\n", "t.yaml:1:1: unknown key 'frobnicate' in the top level" },
    { "? [a]\n: 1\n", "t.yaml:1:3: mapping keys must be strings" },
    { "<<: 5\n", "t.yaml:1:5: merge key '<<' expects a mapping or a list of mappings" },
    /* scalars */
    { "workers: 2000\n", "t.yaml:1:10: workers: out of range (0..1024), got '2000'" },
    { "workers: many\n", "t.yaml:1:10: workers: expected auto or an integer, got 'many'" },
    { "max_connections: 0\n",
      "t.yaml:1:18: max_connections: out of range (1..10000000), got '0'" },
    { "user: [x]\n", "t.yaml:1:7: user: expected a string" },
    { "log: [a]\n", "t.yaml:1:6: log: expected a mapping" },
    { "listeners: {}\n", "t.yaml:1:12: listeners: expected a list" },
    { "shutdown_timeout: 5\n",
      "t.yaml:1:19: shutdown_timeout: duration needs a unit (ms, s, m, h), got '5'" },
    { "shutdown_timeout: 5x\n",
      "t.yaml:1:19: shutdown_timeout: invalid duration (use a number and a unit: 250ms, 2s, "
      "1m, 1h), got '5x'" },
    { "startup_timeout: 9000h\n",
      "t.yaml:1:18: startup_timeout: duration too large (max 8760h), got '9000h'" },
    { "log: { level: loud }\n",
      "t.yaml:1:15: level: invalid value 'loud' (expected debug|info|warn|error)" },
    { "log:\n  access_format: xml\n",
      "t.yaml:2:18: access_format: invalid value 'xml' (expected text|json)" },
    { "log: { access_log: \"\" }\n", "t.yaml:1:20: access_log: expected a path, stdout or off" },
    { "log: { lvl: info }\n", "t.yaml:1:8: unknown key 'lvl' in log" },
    /* admin */
    { "admin: { allow_remote: yes }\n",
      "t.yaml:1:24: allow_remote: expected a boolean (true or false), got 'yes'" },
    { "admin: { listen: \"0.0.0.0:9901\" }\n",
      "t.yaml:1:18: listen: 0.0.0.0:9901 is not a loopback address; set "
      "admin.allow_remote: true to expose the admin API" },
    { "admin: { listen: \":9901\" }\n",
      "t.yaml:1:18: listen: :9901 is not a loopback address; set admin.allow_remote: true "
      "to expose the admin API" },
    /* registry */
    { "registry: { file: a.yaml, etcd: {} }\n",
      "t.yaml:1:27: registry: etcd and file are mutually exclusive" },
    { "registry:\n  etcd: {}\n  file: a.yaml\n",
      "t.yaml:3:3: registry: etcd and file are mutually exclusive" },
    { "registry:\n  zookeeper: {}\n  etcd: {}\n",
      "t.yaml:3:3: registry: etcd and zookeeper are mutually exclusive" },
    { "registry: { zookeeper: { servers: [127.0.0.1:2181], rot: /x } }\n",
      "t.yaml:1:53: unknown key 'rot' in registry.zookeeper (did you mean 'root'?)" },
    { "registry: { zookeeper: { servers: [\"127.0.0.1\"] } }\n",
      "t.yaml:1:36: servers: invalid ZooKeeper server (expected HOST:PORT), got '127.0.0.1'" },
    { "registry: { zookeeper: { servers: [] } }\n",
      "t.yaml:1:35: servers: expected at least one value" },
    { "registry: { zookeeper: { root: services } }\n",
      "t.yaml:1:32: root: expected an absolute ZooKeeper path (/a/b, no trailing '/'), got "
      "'services'" },
    { "registry: { zookeeper: { root: /services/ } }\n",
      "t.yaml:1:32: root: expected an absolute ZooKeeper path (/a/b, no trailing '/'), got "
      "'/services/'" },
    { "registry: { zookeeper: { chroot: a//b } }\n",
      "t.yaml:1:34: chroot: expected an absolute ZooKeeper path (/a/b, no trailing '/'), got "
      "'a//b'" },
    { "registry: { zookeeper: { layout: curater } }\n",
      "t.yaml:1:34: layout: invalid value 'curater' (expected auto|curator|dubbo|plain)" },
    { "registry: { zookeeper: { session_timeout: 10 } }\n",
      "t.yaml:1:43: session_timeout: duration needs a unit (ms, s, m, h), got '10'" },
    { "registry: { zookeeper: { auth: { scheme: sasl, credentials: a } } }\n",
      "t.yaml:1:32: auth: scheme 'sasl' is not supported (digest is)" },
    { "registry: { zookeeper: { auth: { scheme: digest, credentials: nocolon } } }\n",
      "t.yaml:1:32: auth: digest credentials are \"USER:PASSWORD\"" },
    { "registry: { zookeeper: { dubbo_services: { org.example.A: \"a b\" } } }\n",
      "t.yaml:1:59: org.example.A: 'a b' is not a service name" },
    { "registry: { file: \"\" }\n", "t.yaml:1:19: file: expected a path" },
    { "registry: { etcd: { endpoints: [\"etcd://h:2379\"] } }\n",
      "t.yaml:1:33: endpoints: invalid etcd endpoint (expected http://HOST:PORT or "
      "https://HOST:PORT), got 'etcd://h:2379'" },
    { "registry: { etcd: { endpoints: [\"http://h\"] } }\n",
      "t.yaml:1:33: endpoints: invalid etcd endpoint (expected http://HOST:PORT or "
      "https://HOST:PORT), got 'http://h'" },
    { "registry: { etcd: { endpoints: \"http://h:1\" } }\n",
      "t.yaml:1:32: endpoints: expected a list" },
    { "registry: { etcd: { prefix: [] } }\n", "t.yaml:1:29: prefix: expected at least one value" },
    { "registry: { etcd: { prefix: [\"/a/\", \"\"] } }\n",
      "t.yaml:1:37: prefix: a prefix must not be empty, got ''" },
    { "registry: { etcd: { backoff: { initial: 10s, max: 5s } } }\n",
      "t.yaml:1:30: backoff: initial exceeds max" },
    { "registry: { etcd: { password: p } }\n", "t.yaml:1:31: password: needs a username" },
    { "registry: { etcd: { watch_timeout: 0s } }\n",
      "t.yaml:1:36: watch_timeout: must be at least 1ms, got '0s'" },
    { "registry: { etcd: { tsl: {} } }\n",
      "t.yaml:1:21: unknown key 'tsl' in registry.etcd (did you mean 'tls'?)" },
    /* services */
    { "service_defaults: { retries: 11 }\n", "t.yaml:1:30: retries: out of range (0..10), got '11'" },
    { "service_defaults: { panic_threshold: 101 }\n",
      "t.yaml:1:38: panic_threshold: out of range (0..100), got '101'" },
    { "service_defaults: { retries: two }\n",
      "t.yaml:1:30: retries: expected an integer, got 'two'" },
    { "service_defaults: { balance: rr }\n",
      "t.yaml:1:30: balance: invalid value 'rr' (expected "
      "round_robin|least_conn|random|p2c|hash)" },
    { "service_defaults: { hash_key: ip }\n",
      "t.yaml:1:31: hash_key: expected client_ip, header:NAME or cookie:NAME, got 'ip'" },
    { "service_defaults: { hash_key: \"header:\" }\n",
      "t.yaml:1:31: hash_key: expected client_ip, header:NAME or cookie:NAME, got 'header:'" },
    { "service_defaults: { on_unhealthy: drop }\n",
      "t.yaml:1:35: on_unhealthy: invalid value 'drop' (expected keep|close)" },
    { "service_defaults:\n  health_check: { type: udp }\n",
      "t.yaml:2:25: type: invalid value 'udp' (expected http|tcp|none|grpc)" },
    { "service_defaults:\n  upstream: { protocol: http2 }\n",
      "t.yaml:2:25: protocol: invalid value 'http2' (expected http1|h2c|h2|auto)" },
    { "services:\n  s:\n    upstream: { protocol: h2 }\n",
      "t.yaml:3:5: upstream: protocol h2 is HTTP/2 over TLS and needs tls.enabled: true "
      "(HTTP/2 without TLS is h2c)" },
    { "service_defaults:\n  grpc: { retry_methods: [/a.B/C, a.B/C] }\n",
      "t.yaml:2:35: retry_methods: expected \"/package.Service/Method\" or "
      "\"/package.Service/*\", got 'a.B/C'" },
    { "service_defaults:\n  grpc: { retry_methods: /a.B/C }\n",
      "t.yaml:2:26: retry_methods: expected a list" },
    { "service_defaults:\n  upstream: { ping_timeout: 0s }\n",
      "t.yaml:2:29: ping_timeout: must be at least 1ms, got '0s'" },
    { "service_defaults:\n  grpc: { max_timeout: 5 }\n",
      "t.yaml:2:24: max_timeout: duration needs a unit (ms, s, m, h), got '5'" },
    { "service_defaults:\n  grpc: { retry_method: [] }\n",
      "t.yaml:2:11: unknown key 'retry_method' in grpc (did you mean 'retry_methods'?)" },
    { "service_defaults:\n  health_check: { path: health }\n",
      "t.yaml:2:25: path: must start with '/', got 'health'" },
    { "service_defaults:\n  health_check: { healthy_threshold: 0 }\n",
      "t.yaml:2:38: healthy_threshold: out of range (1..1000), got '0'" },
    { "service_defaults:\n  health_check: { interval: 0ms }\n",
      "t.yaml:2:29: interval: must be at least 1ms, got '0ms'" },
    { "service_defaults:\n  health_check: { expected_status: \"200-\" }\n",
      "t.yaml:2:36: expected_status: invalid status list (use codes and ranges: "
      "200-299,404), got '200-'" },
    { "service_defaults:\n  health_check: { expected_status: 700 }\n",
      "t.yaml:2:36: expected_status: status code out of range (100..599), got '700'" },
    { "service_defaults:\n  health_check: { expected_status: \"299-200\" }\n",
      "t.yaml:2:36: expected_status: status range start exceeds its end, got '299-200'" },
    { "service_defaults:\n  health_check: { port: 65536 }\n",
      "t.yaml:2:25: port: out of range (0..65535), got '65536'" },
    { "service_defaults:\n  health_check: { intervl: 1s }\n",
      "t.yaml:2:19: unknown key 'intervl' in health_check (did you mean 'interval'?)" },
    { "service_defaults:\n  outlier_detection: { max_ejection_percent: 101 }\n",
      "t.yaml:2:46: max_ejection_percent: out of range (0..100), got '101'" },
    { "service_defaults:\n  outlier_detection: { base_ejection_time: 10m, max_ejection_time: 1m }\n",
      "t.yaml:2:3: outlier_detection: base_ejection_time exceeds max_ejection_time" },
    { "service_defaults:\n  tls: { cert: c.pem }\n",
      "t.yaml:2:3: tls: cert and key must be set together" },
    { "service_defaults:\n  upstream: []\n", "t.yaml:2:13: upstream: expected a mapping" },
    { "services:\n  users: { balanse: hash }\n",
      "t.yaml:2:12: unknown key 'balanse' in service 'users' (did you mean 'balance'?)" },
    { "services:\n  users: 5\n", "t.yaml:2:10: users: expected a mapping" },
    { "services:\n  a/b: {}\n",
      "t.yaml:2:3: invalid service name 'a/b' (non-empty, no '/' or spaces)" },
    { "services:\n  a: {}\n  a: {}\n", "t.yaml:3:3: duplicate key 'a' (first at line 2)" },
    { "services: [a]\n", "t.yaml:1:11: services: expected a mapping" },
    /* listeners */
    { "listeners: [5]\n", "t.yaml:1:13: listeners: expected a mapping" },
    { "listeners:\n  - { name: t, lisen: 127.0.0.1:7000, listen: 127.0.0.1:7000, mode: tcp, "
      "service: s }\n",
      "t.yaml:2:16: unknown key 'lisen' in listener (did you mean 'listen'?)" },
    { "listeners:\n  - { name: t, listen: 127.0.0.1:7000, service: s }\n",
      "t.yaml:2:5: missing required key 'mode' in listener" },
    { "listeners:\n  - { listen: 127.0.0.1:7000, mode: tcp, service: s }\n",
      "t.yaml:2:5: missing required key 'name' in listener" },
    { "listeners:\n  - { name: t, listen: 127.0.0.1:7000, mode: tcp }\n",
      "t.yaml:2:5: missing required key 'service' in tcp listener" },
    { "listeners:\n  - { name: t, listen: 127.0.0.1:7000, mode: http }\n",
      "t.yaml:2:5: missing required key 'routes' in http listener" },
    { "listeners:\n  - { name: t, listen: 127.0.0.1:7000, mode: http, routes: [] }\n",
      "t.yaml:2:52: missing required key 'routes' in http listener" },
    { "listeners:\n  - { name: t, listen: 127.0.0.1:7000, mode: udp, service: s }\n",
      "t.yaml:2:46: mode: invalid value 'udp' (expected tcp|http)" },
    { "listeners:\n  - { name: \"\", listen: 127.0.0.1:7000, mode: tcp, service: s }\n",
      "t.yaml:2:13: name: must not be empty" },
    { "listeners:\n  - { name: t, listen: localhost:7000, mode: tcp, service: s }\n",
      "t.yaml:2:24: listen: host must be an IP literal (e.g. 127.0.0.1:8080, [::1]:8080, "
      ":8080), got 'localhost:7000'" },
    { "listeners:\n  - { name: t, listen: 127.0.0.1, mode: tcp, service: s }\n",
      "t.yaml:2:24: listen: address needs a port (e.g. 127.0.0.1:8080), got '127.0.0.1'" },
    { "listeners:\n  - { name: t, listen: \"127.0.0.1:0\", mode: tcp, service: s }\n",
      "t.yaml:2:24: listen: invalid port (1..65535), got '127.0.0.1:0'" },
    { "listeners:\n  - { name: t, listen: \"::1:80\", mode: tcp, service: s }\n",
      "t.yaml:2:24: listen: invalid address (IPv6 needs brackets: [::1]:8080), got '::1:80'" },
    { "listeners:\n  - { name: t, listen: 127.0.0.1:7000, mode: tcp, service: a/b }\n",
      "t.yaml:2:60: service: invalid service name 'a/b' (non-empty, no '/' or spaces)" },
    { "listeners:\n" TCP_OK "  - { name: t, listen: 127.0.0.1:7001, mode: tcp, service: s }\n",
      "t.yaml:3:13: name: duplicate listener name 't' (first at line 2)" },
    { "listeners:\n" TCP_OK "  - { name: u, listen: 127.0.0.1:7000, mode: tcp, service: s }\n",
      "t.yaml:3:24: listen: 127.0.0.1:7000 is already used by listener 't' (line 2)" },
    { "listeners:\n  - { name: t, listen: 127.0.0.1:9901, mode: tcp, service: s }\n",
      "t.yaml:2:24: listen: 127.0.0.1:9901 is already used by admin.listen" },
    { "listeners:\n  - { name: t, listen: 127.0.0.1:7000, mode: tcp, service: s, "
      "routes: [] }\n",
      "t.yaml:2:63: routes: only http listeners have routes" },
    { "listeners:\n  - { name: t, listen: 127.0.0.1:7000, mode: tcp, service: s, "
      "http: {} }\n",
      "t.yaml:2:63: http: only http listeners have http settings" },
    { "listeners:\n  - { name: t, listen: 127.0.0.1:7000, mode: http, service: s, "
      "routes: [{ service: s }] }\n",
      "t.yaml:2:52: service: http listeners use routes, not service" },
    { "listeners:\n  - { name: t, listen: 127.0.0.1:7000, mode: http, idle_timeout: 1m, "
      "routes: [{ service: s }] }\n",
      "t.yaml:2:52: idle_timeout: only for tcp listeners (see http.client_idle_timeout)" },
    { "listeners:\n  - { name: t, listen: 127.0.0.1:7000, mode: tcp, service: s, "
      "idle_timeout: 10 }\n",
      "t.yaml:2:77: idle_timeout: duration needs a unit (ms, s, m, h), got '10'" },
    { "services: { s: { hash_key: \"cookie:sid\" } }\nlisteners:\n" TCP_OK,
      "t.yaml:3:60: service: service 's' uses hash_key 'cookie:sid', which needs an http "
      "listener" },
    { "service_defaults: { hash_key: \"header:X-User\" }\nlisteners:\n" TCP_OK,
      "t.yaml:3:60: service: service 's' uses hash_key 'header:X-User', which needs an http "
      "listener" },
    /* listener http and tls */
    { "listeners:\n  - name: h\n    listen: 127.0.0.1:8080\n    mode: http\n"
      "    http: { max_header_size: 32q }\n    routes: [{ service: s }]\n",
      "t.yaml:5:30: max_header_size: invalid size (use bytes or a k/m suffix: 4096, 32k, 1m), "
      "got '32q'" },
    { "listeners:\n  - name: h\n    listen: 127.0.0.1:8080\n    mode: http\n"
      "    http: { max_header_size: 100 }\n    routes: [{ service: s }]\n",
      "t.yaml:5:30: max_header_size: out of range (1024..16777216 bytes), got '100'" },
    { "listeners:\n  - name: h\n    listen: 127.0.0.1:8080\n    mode: http\n"
      "    tls: { min_version: \"1.1\" }\n    routes: [{ service: s }]\n",
      "t.yaml:5:25: min_version: expected \"1.2\" or \"1.3\", got '1.1'" },
    { "listeners:\n  - name: h\n    listen: 127.0.0.1:8080\n    mode: http\n"
      "    tls: { verify: always }\n    routes: [{ service: s }]\n",
      "t.yaml:5:20: verify: invalid value 'always' (expected none|optional|required)" },
    { "listeners:\n  - name: h\n    listen: 127.0.0.1:8080\n    mode: http\n"
      "    tls: { verify: required }\n    routes: [{ service: s }]\n",
      "t.yaml:5:20: verify: client verification needs certificates" },
    { "listeners:\n  - name: h\n    listen: 127.0.0.1:8080\n    mode: http\n"
      "    tls: { certificates: [{ cert: c, key: k }], verify: required }\n"
      "    routes: [{ service: s }]\n",
      "t.yaml:5:57: verify: 'required' needs client_ca" },
    { "listeners:\n  - name: h\n    listen: 127.0.0.1:8080\n    mode: http\n"
      "    tls: { certificates: [{ cert: c }] }\n    routes: [{ service: s }]\n",
      "t.yaml:5:27: missing required key 'key' in certificate" },
    { "listeners:\n  - name: h\n    listen: 127.0.0.1:8080\n    mode: http\n"
      "    tls: { redirect_http: http }\n    routes: [{ service: s }]\n",
      "t.yaml:5:27: redirect_http: expected \"\" or \"https\", got 'http'" },
    { "listeners:\n  - name: h\n    listen: 127.0.0.1:8080\n    mode: http\n"
      "    tls: { certificates: [{ cert: c, key: k }], redirect_http: https }\n"
      "    routes: [{ service: s }]\n",
      "t.yaml:5:64: redirect_http: only for a listener without certificates" },
    /* HTTP/2 (DESIGN §15) */
    { "listeners:\n  - name: h\n    listen: 127.0.0.1:8080\n    mode: http\n"
      "    http: { protocols: [h2, h3] }\n    routes: [{ service: s }]\n",
      "t.yaml:5:29: protocols: invalid value 'h3' (expected h2|http1)" },
    { "listeners:\n  - name: h\n    listen: 127.0.0.1:8080\n    mode: http\n"
      "    http: { protocols: [http1, http1] }\n    routes: [{ service: s }]\n",
      "t.yaml:5:32: protocols: 'http1' listed twice" },
    { "listeners:\n  - name: h\n    listen: 127.0.0.1:8080\n    mode: http\n"
      "    http: { protocols: [] }\n    routes: [{ service: s }]\n",
      "t.yaml:5:24: protocols: expected a list of h2, http1" },
    { "listeners:\n  - name: h\n    listen: 127.0.0.1:8080\n    mode: http\n"
      "    http: { max_concurrent_streams: 0 }\n    routes: [{ service: s }]\n",
      "t.yaml:5:37: max_concurrent_streams: out of range (1..100000), got '0'" },
    { "listeners:\n  - name: h\n    listen: 127.0.0.1:8080\n    mode: http\n"
      "    http: { tcp_notsent_lowat: 65m }\n    routes: [{ service: s }]\n",
      "t.yaml:5:32: tcp_notsent_lowat: out of range (0..67108864 bytes), got '65m'" },
    { "listeners:\n  - name: h\n    listen: 127.0.0.1:8080\n    mode: http\n"
      "    http: { h2_max_reset_per_second: 5 }\n    routes: [{ service: s }]\n",
      "t.yaml:5:13: unknown key 'h2_max_reset_per_second' in listener http (did you mean 'h2_max_resets_per_second'?)" },
    /* routes */
    { "listeners:\n  - name: h\n    listen: 127.0.0.1:8080\n    mode: http\n"
      "    routes: [{ path_prefix: / }]\n",
      "t.yaml:5:14: missing required key 'service' in route" },
    { "listeners:\n  - name: h\n    listen: 127.0.0.1:8080\n    mode: http\n"
      "    routes: [{ service: s, path_prefix: api }]\n",
      "t.yaml:5:41: path_prefix: must start with '/', got 'api'" },
    { "listeners:\n  - name: h\n    listen: 127.0.0.1:8080\n    mode: http\n"
      "    routes: [{ service: s, host: \"a b\" }]\n",
      "t.yaml:5:34: host: invalid host (an exact name or *.suffix), got 'a b'" },
    { "listeners:\n  - name: h\n    listen: 127.0.0.1:8080\n    mode: http\n"
      "    routes: [{ service: s, host: \"a.*.com\" }]\n",
      "t.yaml:5:34: host: invalid host (an exact name or *.suffix), got 'a.*.com'" },
    { "listeners:\n  - name: h\n    listen: 127.0.0.1:8080\n    mode: http\n"
      "    routes: [{ service: s, methods: GET }]\n",
      "t.yaml:5:37: methods: expected a list" },
    { "listeners:\n  - name: h\n    listen: 127.0.0.1:8080\n    mode: http\n"
      "    routes: [{ service: s, methods: [\"GE T\"] }]\n",
      "t.yaml:5:38: methods: invalid method 'GE T'" },
    { "listeners:\n  - name: h\n    listen: 127.0.0.1:8080\n    mode: http\n"
      "    routes: [{ service: s, headers: { \"X A\": b } }]\n",
      "t.yaml:5:39: headers: invalid header name 'X A'" },
    { "listeners:\n  - name: h\n    listen: 127.0.0.1:8080\n    mode: http\n"
      "    routes: [{ service: s, headers: { X-A: a, x-a: b } }]\n",
      "t.yaml:5:47: headers: duplicate header 'x-a'" },
    { "listeners:\n  - name: h\n    listen: 127.0.0.1:8080\n    mode: http\n"
      "    routes: [{ service: s, retries: 11 }]\n",
      "t.yaml:5:37: retries: out of range (0..10), got '11'" },
    { "listeners:\n  - name: h\n    listen: 127.0.0.1:8080\n    mode: http\n"
      "    routes: [{ service: s, strip_prefix: 1 }]\n",
      "t.yaml:5:42: strip_prefix: expected a boolean (true or false), got '1'" },
    { "listeners:\n  - name: h\n    listen: 127.0.0.1:8080\n    mode: http\n"
      "    routes: [{ service: s, servce: t }]\n",
      "t.yaml:5:28: unknown key 'servce' in route (did you mean 'service'?)" },
    /* zones and the fleet (DESIGN §18) */
    { "zone: \"a b\"\n",
      "t.yaml:1:7: zone: expected at most 63 letters, digits, '.', '_' or '-', got 'a b'" },
    { "services:\n  s: { locality: { mode: prefer } }\n",
      "t.yaml:2:6: locality: mode prefer needs this replica's zone (top-level zone: or "
      "WAYGATE_ZONE)" },
    { "zone: a\nservices:\n  s: { locality: { mode: near } }\n",
      "t.yaml:3:26: mode: invalid value 'near' (expected off|prefer|strict)" },
    { "zone: a\nservices:\n  s: { locality: { overprovisioning: 0.9 } }\n",
      "t.yaml:3:38: overprovisioning: expected a factor from 1.0 to 10 (at most two decimals), "
      "got '0.9'" },
    { "zone: a\nservices:\n  s: { locality: { overprovisioning: 1.405 } }\n",
      "t.yaml:3:38: overprovisioning: expected a factor from 1.0 to 10 (at most two decimals), "
      "got '1.405'" },
    { "zone: a\nservices:\n  s: { locality: { min_instance: 2 } }\n",
      "t.yaml:3:20: unknown key 'min_instance' in locality (did you mean 'min_instances'?)" },
    { "fleet: { name: r1 }\n", "t.yaml:1:8: fleet: needs the etcd registry (registry.etcd)" },
    { "registry: { etcd: {} }\nfleet: { name: \"a/b\" }\n",
      "t.yaml:2:16: name: expected a replica id (1..128 bytes, no '/' or spaces), got 'a/b'" },
    { "registry: { etcd: {} }\nfleet: { prefix: /w }\n",
      "t.yaml:2:18: prefix: expected a key prefix ending in '/', got '/w'" },
    { "registry: { etcd: {} }\nfleet: { ttl: 1s }\n",
      "t.yaml:2:15: ttl: must be at least 2000ms, got '1s'" },
    { "services:\n  s: { health_check: { shared: true } }\n",
      "t.yaml:2:6: health_check: shared: true needs fleet: (and the etcd registry)" },
    /* aliases */
    { "a: &a [x, x, x, x, x, x, x, x, x, x]\n", "t.yaml:1:1: unknown key 'a' in the top level" },
};

START_TEST(test_bad_config)
{
    struct wg_errors errs = { 0 };
    struct wg_config *cfg = load(bad[_i].yaml, &errs);
    bool same = errs.n == 1 && strcmp(errs.lines[0], bad[_i].error) == 0;

    if (!same) {
        fprintf(stderr, "case %d:\n%s\nwant: %s\n", _i, bad[_i].yaml, bad[_i].error);
        for (size_t i = 0; i < errs.n; i++)
            fprintf(stderr, "got:  %s\n", errs.lines[i]);
    }
    ck_assert_ptr_null(cfg);
    ck_assert(same);
    wg_errors_free(&errs);
}
END_TEST

/* Several errors in one pass, in document order. */
START_TEST(test_collects_all_errors)
{
    static const char yaml[] =
        "workers: 2000\n"                                       /* 1 */
        "log: { level: loud }\n"                                /* 2 */
        "service_defaults:\n"                                   /* 3 */
        "  health_check: { interval: 5, path: health }\n"       /* 4 */
        "listeners:\n"                                          /* 5 */
        "  - name: a\n"                                         /* 6 */
        "    lisen: 1.2.3.4:80\n"                               /* 7 */
        "    mode: tcp\n"                                       /* 8 */
        "    service: users\n"                                  /* 9 */
        "workers: 3\n";                                         /* 10 */
    static const char *const want[] = {
        "t.yaml:1:10: workers: out of range (0..1024), got '2000'",
        "t.yaml:2:15: level: invalid value 'loud' (expected debug|info|warn|error)",
        "t.yaml:4:29: interval: duration needs a unit (ms, s, m, h), got '5'",
        "t.yaml:4:38: path: must start with '/', got 'health'",
        "t.yaml:6:5: missing required key 'listen' in listener",
        "t.yaml:7:5: unknown key 'lisen' in listener (did you mean 'listen'?)",
        "t.yaml:10:1: duplicate key 'workers' (first at line 1)",
    };
    struct wg_errors errs = { 0 };

    ck_assert_ptr_null(load(yaml, &errs));
    for (size_t i = 0; i < errs.n; i++)
        fprintf(stderr, "%s\n", errs.lines[i]);
    ck_assert_uint_eq(errs.n, sizeof want / sizeof want[0]);
    for (size_t i = 0; i < errs.n; i++)
        ck_assert_str_eq(errs.lines[i], want[i]);
    wg_errors_free(&errs);
}
END_TEST

START_TEST(test_errors_append_to_existing_list)
{
    struct wg_errors errs = { 0 };

    wg_errors_add(&errs, "earlier %d", 1);
    ck_assert_ptr_null(load("workers: x\n", &errs));
    ck_assert_uint_eq(errs.n, 2);
    ck_assert_str_eq(errs.lines[0], "earlier 1");
    ck_assert_str_eq(errs.lines[1], "t.yaml:1:10: workers: expected auto or an integer, got 'x'");
    wg_errors_free(&errs);
}
END_TEST

/* Classic nested-list laughs: only what the schema walks is visited. */
START_TEST(test_billion_laughs_refused)
{
    static const char yaml[] =
        "x-lol:\n"
        "  a: &a [x, x, x, x, x, x, x, x, x, x]\n"
        "  b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
        "  c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\n"
        "  d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
        "  e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\n"
        "  f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\n"
        "  g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]\n"
        "registry: { etcd: { prefix: *g } }\n";
    struct wg_errors errs = { 0 };

    ck_assert_ptr_null(load(yaml, &errs));
    ck_assert_uint_eq(errs.n, 2);
    ck_assert_str_eq(errs.lines[0], "t.yaml:1:1: unknown key 'x-lol' in the top level");
    ck_assert_str_eq(errs.lines[1], "t.yaml:7:6: prefix: expected a string");
    wg_errors_free(&errs);
}
END_TEST

START_TEST(test_alias_expansion_bound)
{
    /* services: 7 levels of 10-way merges = 10^7 nodes if expanded. */
    static const char yaml[] =
        "services:\n"
        "  s0: &l0 { retries: 1 }\n"
        "  s1: &l1 { <<: [*l0, *l0, *l0, *l0, *l0, *l0, *l0, *l0, *l0, *l0] }\n"
        "  s2: &l2 { <<: [*l1, *l1, *l1, *l1, *l1, *l1, *l1, *l1, *l1, *l1] }\n"
        "  s3: &l3 { <<: [*l2, *l2, *l2, *l2, *l2, *l2, *l2, *l2, *l2, *l2] }\n"
        "  s4: &l4 { <<: [*l3, *l3, *l3, *l3, *l3, *l3, *l3, *l3, *l3, *l3] }\n"
        "  s5: &l5 { <<: [*l4, *l4, *l4, *l4, *l4, *l4, *l4, *l4, *l4, *l4] }\n"
        "  s6: &l6 { <<: [*l5, *l5, *l5, *l5, *l5, *l5, *l5, *l5, *l5, *l5] }\n"
        "  s7: { <<: [*l6, *l6, *l6, *l6, *l6, *l6, *l6, *l6, *l6, *l6] }\n";
    struct wg_errors errs = { 0 };

    ck_assert_ptr_null(load(yaml, &errs));
    ck_assert_uint_eq(errs.n, 1);
    ck_assert_ptr_nonnull(strstr(errs.lines[0], "too many nodes after alias expansion"));
    wg_errors_free(&errs);
}
END_TEST

START_TEST(test_recursive_merge_refused)
{
    struct wg_errors errs = { 0 };

    ck_assert_ptr_null(load("services:\n  a: &a { <<: *a }\n", &errs));
    ck_assert_uint_ge(errs.n, 1);
    wg_errors_free(&errs);
}
END_TEST

/* Deep flow nesting is quadratic in libyaml: refused before the document. */
START_TEST(test_deep_nesting_refused)
{
    size_t depth = 100000;
    char *yaml = malloc(2 * depth + 8);
    struct wg_errors errs = { 0 };

    ck_assert_ptr_nonnull(yaml);
    memcpy(yaml, "a: ", 3);
    memset(yaml + 3, '[', depth);
    memset(yaml + 3 + depth, ']', depth);
    strcpy(yaml + 3 + 2 * depth, "\n");
    ck_assert_ptr_null(load(yaml, &errs));
    ck_assert_uint_eq(errs.n, 1);
    ck_assert_str_eq(errs.lines[0], "t.yaml:1:67: nesting too deep (max 64 levels)");
    wg_errors_free(&errs);
    free(yaml);
}
END_TEST

START_TEST(test_too_many_errors_capped)
{
    char yaml[40000] = "";
    struct wg_errors errs = { 0 };

    for (int i = 0; i < 300; i++)
        snprintf(yaml + strlen(yaml), sizeof yaml - strlen(yaml), "bogus%d: 1\n", i);
    ck_assert_ptr_null(load(yaml, &errs));
    ck_assert_uint_eq(errs.n, 101);
    ck_assert_str_eq(errs.lines[100],
                     "t.yaml:101:1: too many errors; only the first 100 are shown");
    wg_errors_free(&errs);
}
END_TEST

/* ---- files named by the config (check_files) ------------------------------ */

static char tmpdir[64];

static void make_tmpdir(void)
{
    strcpy(tmpdir, "/tmp/wg-check-config-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static void remove_tmpdir(void)
{
    char cmd[128];

    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    ck_assert_int_eq(system(cmd), 0);
}

static void touch(const char *name)
{
    char path[256];
    FILE *f;

    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs("x\n", f);
    fclose(f);
}

static void expect_file_error(const char *fmt, const char *want_fmt)
{
    char yaml[1024], want[1024];
    struct wg_errors errs = { 0 };
    struct wg_config *cfg;

    snprintf(yaml, sizeof yaml, fmt, tmpdir, tmpdir, tmpdir);
    snprintf(want, sizeof want, want_fmt, tmpdir, tmpdir, tmpdir);
    cfg = wg_config_load_buffer("t.yaml", yaml, strlen(yaml), true, &errs);
    for (size_t i = 0; i < errs.n; i++)
        fprintf(stderr, "%s\n", errs.lines[i]);
    ck_assert_ptr_null(cfg);
    ck_assert_uint_eq(errs.n, 1);
    ck_assert_str_eq(errs.lines[0], want);
    wg_errors_free(&errs);
}

START_TEST(test_missing_files)
{
    make_tmpdir();
    touch("instances.yaml");
    touch("a.crt");
    expect_file_error("registry: { file: %s/nope.yaml }\n",
                      "t.yaml:1:19: cannot open '%s/nope.yaml': No such file or directory");
    expect_file_error("registry: { file: %s }\n", "t.yaml:1:19: cannot open '%s': Is a directory");
    expect_file_error("registry: { etcd: { tls: { ca: %s/ca.pem } } }\n",
                      "t.yaml:1:32: cannot open '%s/ca.pem': No such file or directory");
    expect_file_error("service_defaults:\n  tls: { key: %s/a.key, cert: %s/a.crt }\n",
                      "t.yaml:2:15: cannot open '%s/a.key': No such file or directory");
    expect_file_error("listeners:\n  - name: h\n    listen: 127.0.0.1:8443\n    mode: http\n"
                      "    tls: { certificates: [{ key: %s/b.key, cert: %s/a.crt }] }\n"
                      "    routes: [{ service: s }]\n",
                      "t.yaml:5:34: cannot open '%s/b.key': No such file or directory");
    remove_tmpdir();
}
END_TEST

START_TEST(test_existing_files_pass)
{
    char yaml[1024];
    struct wg_errors errs = { 0 };
    struct wg_config *cfg;

    make_tmpdir();
    touch("instances.yaml");
    touch("a.crt");
    touch("a.key");
    snprintf(yaml, sizeof yaml,
             "registry: { file: %s/instances.yaml }\n"
             "listeners:\n  - name: h\n    listen: 127.0.0.1:8443\n    mode: http\n"
             "    tls: { certificates: [{ cert: %s/a.crt, key: %s/a.key }] }\n"
             "    routes: [{ service: s }]\n", tmpdir, tmpdir, tmpdir);
    cfg = wg_config_load_buffer("t.yaml", yaml, strlen(yaml), true, &errs);
    ck_assert_uint_eq(errs.n, 0);
    ck_assert_ptr_nonnull(cfg);
    ck_assert_int_eq(cfg->registry.kind, WG_REGISTRY_FILE);
    ck_assert(cfg->listeners[0].tls.enabled);
    wg_config_free(cfg);
    remove_tmpdir();
}
END_TEST

START_TEST(test_load_missing_config_file)
{
    struct wg_errors errs = { 0 };

    ck_assert_ptr_null(wg_config_load("/nonexistent/waygate.yaml", &errs));
    ck_assert_uint_eq(errs.n, 1);
    ck_assert_str_eq(errs.lines[0], "/nonexistent/waygate.yaml:1:1: cannot open "
                                    "'/nonexistent/waygate.yaml': No such file or directory");
    wg_errors_free(&errs);
}
END_TEST

/* ---- good configs ------------------------------------------------------------ */

static void assert_service_defaults(const struct wg_service_config *s)
{
    ck_assert_int_eq(s->balance, WG_BALANCE_ROUND_ROBIN);
    ck_assert_int_eq(s->hash_key, WG_HASH_CLIENT_IP);
    ck_assert_ptr_null(s->hash_name);
    ck_assert_uint_eq(s->slow_start_ms, 0);
    ck_assert_uint_eq(s->connect_timeout_ms, 1000);
    ck_assert_uint_eq(s->response_timeout_ms, 30000);
    ck_assert_uint_eq(s->retries, 2);
    ck_assert_uint_eq(s->panic_threshold, 0);
    ck_assert_uint_eq(s->max_connections, 0);
    ck_assert_uint_eq(s->drain_timeout_ms, 0);
    ck_assert(!s->on_unhealthy_close);
    ck_assert_uint_eq(s->upstream.max_idle, 64);
    ck_assert_uint_eq(s->upstream.idle_timeout_ms, 60000);
    ck_assert_uint_eq(s->upstream.ping_interval_ms, 10000);
    ck_assert_uint_eq(s->upstream.ping_timeout_ms, 5000);
    ck_assert_str_eq(s->health_check.path, "/health");
    ck_assert_str_eq(s->health_check.host, "");
    ck_assert_uint_eq(s->health_check.port, 0);
    ck_assert_uint_eq(s->health_check.interval_ms, 1000);
    ck_assert_uint_eq(s->health_check.timeout_ms, 500);
    ck_assert_uint_eq(s->health_check.healthy_threshold, 2);
    ck_assert_uint_eq(s->health_check.unhealthy_threshold, 2);
    ck_assert_uint_eq(s->health_check.expected_status.n, 1);
    ck_assert(wg_status_ranges_match(&s->health_check.expected_status, 200));
    ck_assert(wg_status_ranges_match(&s->health_check.expected_status, 399));
    ck_assert(!wg_status_ranges_match(&s->health_check.expected_status, 400));
    ck_assert_uint_eq(s->outlier.consecutive_failures, 5);
    ck_assert_uint_eq(s->outlier.base_ejection_time_ms, 30000);
    ck_assert_uint_eq(s->outlier.max_ejection_time_ms, 300000);
    ck_assert_uint_eq(s->outlier.max_ejection_percent, 50);
    ck_assert(!s->tls.enabled);
    ck_assert(s->tls.verify);
    ck_assert_str_eq(s->tls.ca, "");
    ck_assert_str_eq(s->tls.cert, "");
    ck_assert_str_eq(s->tls.key, "");
    ck_assert_str_eq(s->tls.sni, "");
    ck_assert(!s->proxy_protocol);
}

START_TEST(test_defaults)
{
    struct wg_config *cfg = load_ok("{}\n");

    ck_assert_str_eq(cfg->path, "t.yaml");
    ck_assert_uint_eq(cfg->workers, 0);
    ck_assert_str_eq(cfg->user, "");
    ck_assert_uint_eq(cfg->max_connections, 100000);
    ck_assert_uint_eq(cfg->startup_timeout_ms, 5000);
    ck_assert_uint_eq(cfg->shutdown_timeout_ms, 10000);
    ck_assert_int_eq(cfg->log.level, WG_LOG_INFO);
    ck_assert_str_eq(cfg->log.access_log, "stdout");
    ck_assert_int_eq(cfg->log.access_format, WG_ACCESS_TEXT);
    ck_assert_str_eq(cfg->admin.listen.text, "127.0.0.1:9901");
    ck_assert(!cfg->admin.allow_remote);
    ck_assert_int_eq(cfg->registry.kind, WG_REGISTRY_NONE);
    ck_assert_uint_eq(cfg->registry.etcd.n_endpoints, 1);
    ck_assert_str_eq(cfg->registry.etcd.endpoints[0], "http://127.0.0.1:2379");
    ck_assert_uint_eq(cfg->registry.etcd.n_prefixes, 1);
    ck_assert_str_eq(cfg->registry.etcd.prefixes[0], "/services/");
    ck_assert_str_eq(cfg->registry.etcd.username, "");
    ck_assert_str_eq(cfg->registry.etcd.password, "");
    ck_assert_str_eq(cfg->registry.etcd.tls.ca, "");
    ck_assert_str_eq(cfg->registry.etcd.tls.server_name, "");
    ck_assert_uint_eq(cfg->registry.etcd.watch_timeout_ms, 10000);
    ck_assert_uint_eq(cfg->registry.etcd.backoff_initial_ms, 50);
    ck_assert_uint_eq(cfg->registry.etcd.backoff_max_ms, 5000);
    ck_assert_str_eq(cfg->registry.file, "");
    ck_assert_str_eq(cfg->registry.cache, "");
    ck_assert_ptr_null(cfg->service_defaults.name);
    ck_assert_int_eq(cfg->service_defaults.health_check.type, WG_HEALTH_HTTP);
    ck_assert(!cfg->service_defaults.health_check.type_set);
    assert_service_defaults(&cfg->service_defaults);
    ck_assert_uint_eq(cfg->n_services, 0);
    ck_assert_uint_eq(cfg->n_listeners, 0);
    ck_assert_ptr_eq(wg_config_service(cfg, "anything"), &cfg->service_defaults);
    wg_config_free(cfg);
}
END_TEST

START_TEST(test_fleet_and_locality)
{
    struct wg_config *cfg = load_ok(
        "zone: eu-1\n"
        "registry: { etcd: {} }\n"
        "fleet: { name: r1, prefix: /wg/, ttl: 5s }\n"
        "services:\n"
        "  s: { locality: { mode: strict, overprovisioning: 2.5, min_instances: 1 },\n"
        "       health_check: { shared: true } }\n"
        "  t: { locality: { overprovisioning: 1 } }\n");
    ck_assert_str_eq(cfg->zone, "eu-1");
    ck_assert(cfg->fleet.enabled);
    ck_assert_str_eq(cfg->fleet.name, "r1");
    ck_assert_str_eq(cfg->fleet.prefix, "/wg/");
    ck_assert_uint_eq(cfg->fleet.ttl_ms, 5000);
    const struct wg_service_config *s = wg_config_service(cfg, "s");
    ck_assert_int_eq(s->locality.mode, WG_LOCALITY_STRICT);
    ck_assert_uint_eq(s->locality.overprovisioning, 250);
    ck_assert_uint_eq(s->locality.min_instances, 1);
    ck_assert(s->health_check.shared);
    const struct wg_service_config *t = wg_config_service(cfg, "t");
    ck_assert_int_eq(t->locality.mode, WG_LOCALITY_OFF);
    ck_assert_uint_eq(t->locality.overprovisioning, 100);
    ck_assert_uint_eq(t->locality.min_instances, 3);
    ck_assert(!t->health_check.shared);
    wg_config_free(cfg);
    /* Defaults; WAYGATE_ZONE when the file sets no zone. */
    setenv("WAYGATE_ZONE", "z9", 1);
    cfg = load_ok("{}\n");
    ck_assert_str_eq(cfg->zone, "z9");
    ck_assert(!cfg->fleet.enabled);
    ck_assert_str_eq(cfg->fleet.prefix, "/waygate/");
    ck_assert_uint_eq(cfg->fleet.ttl_ms, 10000);
    ck_assert(*cfg->fleet.name);
    ck_assert_uint_eq(cfg->service_defaults.locality.overprovisioning, 140);
    wg_config_free(cfg);
    cfg = load_ok("zone: z1\n");
    ck_assert_str_eq(cfg->zone, "z1");
    wg_config_free(cfg);
    unsetenv("WAYGATE_ZONE");
}
END_TEST

START_TEST(test_listener_defaults)
{
    struct wg_config *cfg = load_ok(
        "listeners:\n"
        "  - { name: t, listen: 127.0.0.1:7000, mode: tcp, service: s }\n"
        "  - { name: h, listen: \"[::1]:8080\", mode: http, routes: [{ service: w }] }\n");
    const struct wg_listener_config *t = &cfg->listeners[0], *h = &cfg->listeners[1];

    ck_assert_uint_eq(cfg->n_listeners, 2);
    ck_assert_str_eq(t->name, "t");
    ck_assert_str_eq(t->listen.text, "127.0.0.1:7000");
    ck_assert_int_eq(t->mode, WG_MODE_TCP);
    ck_assert_str_eq(t->service, "s");
    ck_assert(!t->proxy_protocol);
    ck_assert_uint_eq(t->idle_timeout_ms, 3600000);
    ck_assert_int_eq(h->mode, WG_MODE_HTTP);
    ck_assert_ptr_null(h->service);
    ck_assert_int_eq(h->listen.ss.ss_family, AF_INET6);
    ck_assert_uint_eq(h->http.max_header_size, 32768);
    ck_assert_uint_eq(h->http.max_body_size, 0);
    ck_assert_uint_eq(h->http.client_header_timeout_ms, 10000);
    ck_assert_uint_eq(h->http.client_body_timeout_ms, 60000);
    ck_assert_uint_eq(h->http.client_idle_timeout_ms, 60000);
    ck_assert_uint_eq(h->http.send_timeout_ms, 60000);
    ck_assert_uint_eq(h->http.tunnel_idle_timeout_ms, 3600000);
    ck_assert(!h->tls.enabled);
    ck_assert_uint_eq(h->tls.n_certificates, 0);
    ck_assert_int_eq(h->tls.min_version, 12);
    ck_assert_uint_eq(h->tls.handshake_timeout_ms, 10000);
    ck_assert_str_eq(h->tls.client_ca, "");
    ck_assert_int_eq(h->tls.verify, WG_VERIFY_NONE);
    ck_assert_str_eq(h->tls.redirect_http, "");
    ck_assert_uint_eq(h->n_routes, 1);
    ck_assert_ptr_null(h->routes[0].host);
    ck_assert(!h->routes[0].host_wildcard);
    ck_assert_str_eq(h->routes[0].path_prefix, "/");
    ck_assert_uint_eq(h->routes[0].n_methods, 0);
    ck_assert_uint_eq(h->routes[0].n_headers, 0);
    ck_assert_str_eq(h->routes[0].service, "w");
    ck_assert(!h->routes[0].strip_prefix);
    ck_assert_int_eq(h->routes[0].response_timeout_ms, -1);
    ck_assert_int_eq(h->routes[0].retries, -1);
    ck_assert_uint_eq(h->routes[0].line, 3);
    /* Referenced services exist with the defaults, sorted by name. */
    ck_assert_uint_eq(cfg->n_services, 2);
    ck_assert_str_eq(cfg->services[0].name, "s");
    ck_assert_str_eq(cfg->services[1].name, "w");
    assert_service_defaults(&cfg->services[0]);
    ck_assert_int_eq(cfg->services[0].health_check.type, WG_HEALTH_TCP);
    ck_assert_int_eq(cfg->services[1].health_check.type, WG_HEALTH_HTTP);
    ck_assert(!cfg->services[0].health_check.type_set);
    wg_config_free(cfg);
}
END_TEST

START_TEST(test_values_parsed)
{
    struct wg_config *cfg = load_ok(
        "workers: 4\n"
        "user: nobody\n"
        "max_connections: 500\n"
        "startup_timeout: 250ms\n"
        "shutdown_timeout: 1m\n"
        "log: { level: debug, access_log: /var/log/wg.log, access_format: json }\n"
        "admin: { listen: \"0.0.0.0:9000\", allow_remote: true }\n"
        "registry:\n"
        "  etcd:\n"
        "    endpoints: [\"https://10.0.0.1:2379\", \"http://etcd-2.local:2379/\", "
        "\"http://[fd00::1]:2379\"]\n"
        "    prefix: [/a/, /b/]\n"
        "    username: root\n"
        "    password: secret\n"
        "    tls: { server_name: etcd.local }\n"
        "    watch_timeout: 3s\n"
        "    backoff: { initial: 10ms, max: 1s }\n"
        "  cache: /var/cache/wg.json\n");

    ck_assert_uint_eq(cfg->workers, 4);
    ck_assert_str_eq(cfg->user, "nobody");
    ck_assert_uint_eq(cfg->max_connections, 500);
    ck_assert_uint_eq(cfg->startup_timeout_ms, 250);
    ck_assert_uint_eq(cfg->shutdown_timeout_ms, 60000);
    ck_assert_int_eq(cfg->log.level, WG_LOG_DEBUG);
    ck_assert_str_eq(cfg->log.access_log, "/var/log/wg.log");
    ck_assert_int_eq(cfg->log.access_format, WG_ACCESS_JSON);
    ck_assert_str_eq(cfg->admin.listen.text, "0.0.0.0:9000");
    ck_assert(cfg->admin.allow_remote);
    ck_assert_int_eq(cfg->registry.kind, WG_REGISTRY_ETCD);
    ck_assert_uint_eq(cfg->registry.etcd.n_endpoints, 3);
    ck_assert_str_eq(cfg->registry.etcd.endpoints[0], "https://10.0.0.1:2379");
    ck_assert_str_eq(cfg->registry.etcd.endpoints[2], "http://[fd00::1]:2379");
    ck_assert_uint_eq(cfg->registry.etcd.n_prefixes, 2);
    ck_assert_str_eq(cfg->registry.etcd.prefixes[1], "/b/");
    ck_assert_str_eq(cfg->registry.etcd.username, "root");
    ck_assert_str_eq(cfg->registry.etcd.password, "secret");
    ck_assert_str_eq(cfg->registry.etcd.tls.server_name, "etcd.local");
    ck_assert_uint_eq(cfg->registry.etcd.watch_timeout_ms, 3000);
    ck_assert_uint_eq(cfg->registry.etcd.backoff_initial_ms, 10);
    ck_assert_uint_eq(cfg->registry.etcd.backoff_max_ms, 1000);
    ck_assert_str_eq(cfg->registry.cache, "/var/cache/wg.json");
    wg_config_free(cfg);
}
END_TEST

START_TEST(test_prefix_scalar_and_workers_auto)
{
    struct wg_config *cfg = load_ok("workers: auto\nregistry: { etcd: { prefix: /micro/ } }\n");

    ck_assert_uint_eq(cfg->workers, 0);
    ck_assert_uint_eq(cfg->registry.etcd.n_prefixes, 1);
    ck_assert_str_eq(cfg->registry.etcd.prefixes[0], "/micro/");
    ck_assert_str_eq(cfg->registry.etcd.endpoints[0], "http://127.0.0.1:2379");
    wg_config_free(cfg);
}
END_TEST

START_TEST(test_services_merge_over_defaults)
{
    struct wg_config *cfg = load_ok(
        "services:\n"
        "  users:\n"
        "    balance: least_conn\n"
        "    health_check: { timeout: 1s, expected_status: \"200-299,404\" }\n"
        "    tls: { sni: users.internal }\n"
        "  web: { hash_key: \"cookie:sid\", balance: hash }\n"
        "  plain:\n"
        "service_defaults:\n"
        "  retries: 1\n"
        "  hash_key: \"header:X-Tenant\"\n"
        "  health_check: { path: /healthz, interval: 2s, type: tcp }\n"
        "  tls: { enabled: true, verify: false }\n"
        "  upstream: { max_idle: 8 }\n");
    const struct wg_service_config *u = wg_config_service(cfg, "users");
    const struct wg_service_config *w = wg_config_service(cfg, "web");
    const struct wg_service_config *p = wg_config_service(cfg, "plain");

    ck_assert_uint_eq(cfg->n_services, 3);
    ck_assert_str_eq(cfg->services[0].name, "plain");
    ck_assert_str_eq(cfg->services[1].name, "users");
    ck_assert_str_eq(cfg->services[2].name, "web");
    ck_assert_str_eq(u->name, "users");
    ck_assert_int_eq(u->balance, WG_BALANCE_LEAST_CONN);
    ck_assert_uint_eq(u->retries, 1);
    ck_assert_int_eq(u->hash_key, WG_HASH_HEADER);
    ck_assert_str_eq(u->hash_name, "X-Tenant");
    ck_assert_str_eq(u->health_check.path, "/healthz");      /* deep merge */
    ck_assert_uint_eq(u->health_check.interval_ms, 2000);
    ck_assert_uint_eq(u->health_check.timeout_ms, 1000);
    ck_assert_int_eq(u->health_check.type, WG_HEALTH_TCP);
    ck_assert(u->health_check.type_set);
    ck_assert_uint_eq(u->health_check.expected_status.n, 2);
    ck_assert(wg_status_ranges_match(&u->health_check.expected_status, 404));
    ck_assert(!wg_status_ranges_match(&u->health_check.expected_status, 302));
    ck_assert(u->tls.enabled);
    ck_assert(!u->tls.verify);
    ck_assert_str_eq(u->tls.sni, "users.internal");
    ck_assert_uint_eq(u->upstream.max_idle, 8);
    ck_assert_uint_eq(u->upstream.idle_timeout_ms, 60000);
    ck_assert_int_eq(w->hash_key, WG_HASH_COOKIE);
    ck_assert_str_eq(w->hash_name, "sid");
    ck_assert_int_eq(w->balance, WG_BALANCE_HASH);
    ck_assert_str_eq(p->name, "plain");
    ck_assert_uint_eq(p->retries, 1);
    ck_assert_str_eq(p->hash_name, "X-Tenant");
    ck_assert_str_eq(cfg->service_defaults.tls.sni, "");      /* defaults untouched */
    ck_assert_ptr_eq(wg_config_service(cfg, "other"), &cfg->service_defaults);
    ck_assert_ptr_eq(wg_config_service(cfg, NULL), &cfg->service_defaults);
    wg_config_free(cfg);
}
END_TEST

/* upstream.protocol, grpc.* and health_check type grpc; grpc lists
 * replace the defaults' list (§5), the defaults stay untouched. */
START_TEST(test_grpc_keys)
{
    struct wg_config *cfg = load_ok(
        "service_defaults:\n"
        "  upstream: { protocol: auto }\n"
        "  grpc: { max_timeout: 20s, retry_methods: [/a.A/Get, \"/a.A/*\"] }\n"
        "services:\n"
        "  g:\n"
        "    upstream: { protocol: h2c, ping_interval: 0s, ping_timeout: 250ms }\n"
        "    health_check: { type: grpc, service: users.Users }\n"
        "    grpc: { retry_methods: [/b.B/List] }\n"
        "  t:\n"
        "    upstream: { protocol: h2 }\n"
        "    tls: { enabled: true }\n"
        "  plain: {}\n");
    const struct wg_service_config *g = wg_config_service(cfg, "g");
    const struct wg_service_config *t = wg_config_service(cfg, "t");
    const struct wg_service_config *p = wg_config_service(cfg, "plain");

    ck_assert_int_eq(g->upstream.protocol, WG_UPSTREAM_H2C);
    ck_assert_uint_eq(g->upstream.ping_interval_ms, 0);
    ck_assert_uint_eq(g->upstream.ping_timeout_ms, 250);
    ck_assert_int_eq(t->upstream.protocol, WG_UPSTREAM_H2);
    ck_assert_int_eq(p->upstream.protocol, WG_UPSTREAM_AUTO);
    ck_assert_int_eq(g->health_check.type, WG_HEALTH_GRPC);
    ck_assert_str_eq(g->health_check.service, "users.Users");
    ck_assert_str_eq(p->health_check.service, "");
    ck_assert_uint_eq(g->grpc.max_timeout_ms, 20000);
    ck_assert_uint_eq(g->grpc.n_retry_methods, 1);
    ck_assert_str_eq(g->grpc.retry_methods[0], "/b.B/List");
    ck_assert_uint_eq(p->grpc.n_retry_methods, 2);
    ck_assert_str_eq(p->grpc.retry_methods[1], "/a.A/*");
    ck_assert_uint_eq(cfg->service_defaults.grpc.n_retry_methods, 2);
    wg_config_free(cfg);
    /* Defaults: http1, no cap, no list. */
    cfg = load_ok("services: { s: {} }\n");
    ck_assert_int_eq(wg_config_service(cfg, "s")->upstream.protocol, WG_UPSTREAM_HTTP1);
    ck_assert_uint_eq(wg_config_service(cfg, "s")->grpc.max_timeout_ms, 0);
    ck_assert_uint_eq(wg_config_service(cfg, "s")->grpc.n_retry_methods, 0);
    wg_config_free(cfg);
    /* A HealthCheckRequest.service over 255 bytes is refused. */
    char yaml[512];
    snprintf(yaml, sizeof yaml, "services:\n  s:\n    health_check: { type: grpc, service: %0300d }\n", 0);
    struct wg_errors errs = { 0 };
    ck_assert_ptr_null(load(yaml, &errs));
    ck_assert_uint_eq(errs.n, 1);
    ck_assert_str_eq(errs.lines[0], "t.yaml:3:5: health_check: service is longer than 255 bytes");
    wg_errors_free(&errs);
}
END_TEST

START_TEST(test_client_ip_overrides_header_hash)
{
    struct wg_config *cfg = load_ok(
        "service_defaults: { hash_key: \"header:X-A\" }\n"
        "services: { t: { hash_key: client_ip } }\n"
        "listeners:\n  - { name: t, listen: 127.0.0.1:7000, mode: tcp, service: t }\n");

    ck_assert_int_eq(wg_config_service(cfg, "t")->hash_key, WG_HASH_CLIENT_IP);
    ck_assert_ptr_null(wg_config_service(cfg, "t")->hash_name);
    wg_config_free(cfg);
}
END_TEST

START_TEST(test_health_type_resolution)
{
    struct wg_config *cfg = load_ok(
        "services:\n"
        "  forced: { health_check: { type: none } }\n"
        "listeners:\n"
        "  - { name: a, listen: 127.0.0.1:7000, mode: tcp, service: tcponly }\n"
        "  - { name: b, listen: 127.0.0.1:7001, mode: tcp, service: both }\n"
        "  - { name: c, listen: 127.0.0.1:7002, mode: tcp, service: forced }\n"
        "  - name: h\n"
        "    listen: 127.0.0.1:8080\n"
        "    mode: http\n"
        "    routes: [{ service: both }, { service: httponly }, { service: forced }]\n");

    ck_assert_uint_eq(cfg->n_services, 4);
    ck_assert_int_eq(wg_config_service(cfg, "tcponly")->health_check.type, WG_HEALTH_TCP);
    ck_assert_int_eq(wg_config_service(cfg, "both")->health_check.type, WG_HEALTH_HTTP);
    ck_assert_int_eq(wg_config_service(cfg, "httponly")->health_check.type, WG_HEALTH_HTTP);
    ck_assert_int_eq(wg_config_service(cfg, "forced")->health_check.type, WG_HEALTH_NONE);
    ck_assert(wg_config_service(cfg, "forced")->health_check.type_set);
    ck_assert(!wg_config_service(cfg, "both")->health_check.type_set);
    wg_config_free(cfg);
}
END_TEST

START_TEST(test_routes)
{
    struct wg_config *cfg = load_ok(
        "listeners:\n"
        "  - name: edge\n"
        "    listen: \":8443\"\n"
        "    mode: http\n"
        "    proxy_protocol: true\n"
        "    http: { max_header_size: 64k, max_body_size: 1m, client_header_timeout: 5s }\n"
        "    routes:\n"
        "      - { host: API.Example.COM., path_prefix: /users/, service: users, "
        "strip_prefix: true }\n"
        "      - { host: \"*.Example.com:8443\", methods: [get, HEAD], service: web }\n"
        "      - { path_prefix: /, headers: { X-Canary: \"1\", X-Empty: }, service: canary }\n"
        "      - { path_prefix: /, service: web, response_timeout: 5s, retries: 0 }\n"
        "      - { host: \"[::1]:8443\", service: web }\n"
        "      - { host: \"*\", service: web }\n");
    const struct wg_listener_config *l = &cfg->listeners[0];
    const struct wg_route *r = l->routes;

    ck_assert_str_eq(l->listen.text, ":8443");
    ck_assert(l->proxy_protocol);
    ck_assert_uint_eq(l->http.max_header_size, 65536);
    ck_assert_uint_eq(l->http.max_body_size, 1048576);
    ck_assert_uint_eq(l->http.client_header_timeout_ms, 5000);
    ck_assert_uint_eq(l->n_routes, 6);
    ck_assert_str_eq(r[0].host, "api.example.com");
    ck_assert(!r[0].host_wildcard);
    ck_assert_str_eq(r[0].path_prefix, "/users/");
    ck_assert(r[0].strip_prefix);
    ck_assert_uint_eq(r[0].line, 8);
    ck_assert_str_eq(r[1].host, ".example.com");
    ck_assert(r[1].host_wildcard);
    ck_assert_uint_eq(r[1].n_methods, 2);
    ck_assert_str_eq(r[1].methods[0], "GET");
    ck_assert_str_eq(r[1].methods[1], "HEAD");
    ck_assert_uint_eq(r[2].n_headers, 2);
    ck_assert_str_eq(r[2].headers[0].name, "X-Canary");
    ck_assert_str_eq(r[2].headers[0].value, "1");
    ck_assert_str_eq(r[2].headers[1].value, "");
    ck_assert_int_eq(r[3].response_timeout_ms, 5000);
    ck_assert_int_eq(r[3].retries, 0);
    ck_assert_int_eq(r[2].retries, -1);
    ck_assert_str_eq(r[4].host, "[::1]");
    ck_assert_ptr_null(r[5].host);
    ck_assert_uint_eq(cfg->n_services, 3);
    wg_config_free(cfg);
}
END_TEST

START_TEST(test_listener_tls)
{
    struct wg_config *cfg = load_ok(
        "listeners:\n"
        "  - name: edge\n"
        "    listen: 127.0.0.1:8443\n"
        "    mode: http\n"
        "    tls:\n"
        "      certificates:\n"
        "        - { cert: a.crt, key: a.key }\n"
        "        - { cert: b.crt, key: b.key }\n"
        "      min_version: \"1.3\"\n"
        "      handshake_timeout: 3s\n"
        "      client_ca: ca.pem\n"
        "      verify: optional\n"
        "    routes: [{ service: s }]\n"
        "  - name: plain\n"
        "    listen: 127.0.0.1:8080\n"
        "    mode: http\n"
        "    tls: { redirect_http: https, min_version: 1.2 }\n"
        "    routes: [{ service: s }]\n");
    const struct wg_listener_config *l = &cfg->listeners[0];

    ck_assert(l->tls.enabled);
    ck_assert_uint_eq(l->tls.n_certificates, 2);
    ck_assert_str_eq(l->tls.certificates[1].cert, "b.crt");
    ck_assert_str_eq(l->tls.certificates[1].key, "b.key");
    ck_assert_int_eq(l->tls.min_version, 13);
    ck_assert_uint_eq(l->tls.handshake_timeout_ms, 3000);
    ck_assert_str_eq(l->tls.client_ca, "ca.pem");
    ck_assert_int_eq(l->tls.verify, WG_VERIFY_OPTIONAL);
    ck_assert(!cfg->listeners[1].tls.enabled);
    ck_assert_str_eq(cfg->listeners[1].tls.redirect_http, "https");
    ck_assert_int_eq(cfg->listeners[1].tls.min_version, 12);
    wg_config_free(cfg);
}
END_TEST

START_TEST(test_aliases_and_merge_keys)
{
    struct wg_config *cfg = load_ok(
        "service_defaults: &base\n"
        "  retries: 3\n"
        "  health_check: &hc { path: /ping, interval: 3s }\n"
        "services:\n"
        "  a: { <<: *base, balance: p2c }\n"
        "  b:\n"
        "    <<: [{ retries: 5 }, { retries: 7, slow_start: 10s }]\n"
        "    health_check: { <<: *hc, timeout: 2s }\n"
        "  \"<<\": { retries: 9 }\n");
    const struct wg_service_config *a = wg_config_service(cfg, "a");
    const struct wg_service_config *b = wg_config_service(cfg, "b");

    ck_assert_int_eq(a->balance, WG_BALANCE_P2C);
    ck_assert_uint_eq(a->retries, 3);
    ck_assert_uint_eq(b->retries, 5);              /* the first source wins */
    ck_assert_uint_eq(b->slow_start_ms, 10000);
    ck_assert_str_eq(b->health_check.path, "/ping");
    ck_assert_uint_eq(b->health_check.timeout_ms, 2000);
    ck_assert_uint_eq(wg_config_service(cfg, "<<")->retries, 9);   /* quoted: a name */
    wg_config_free(cfg);
}
END_TEST

START_TEST(test_explicit_key_beats_merge)
{
    struct wg_config *cfg = load_ok("services:\n  a: { retries: 1, <<: { retries: 4 } }\n");

    ck_assert_uint_eq(wg_config_service(cfg, "a")->retries, 1);
    wg_config_free(cfg);
}
END_TEST

/* The shipped example must pass the same check as `waygate -t`. */
START_TEST(test_example_config)
{
    char root[PATH_MAX], cwd[PATH_MAX];
    const char *self = __FILE__, *tail = strstr(self, "tests/unit/check_config.c");
    struct wg_errors errs = { 0 };
    struct wg_config *cfg;

    ck_assert_ptr_nonnull(tail);
    snprintf(root, sizeof root, "%.*s", (int)(tail - self), self);
    ck_assert_ptr_nonnull(getcwd(cwd, sizeof cwd));
    ck_assert_int_eq(chdir(root[0] ? root : "."), 0);
    cfg = wg_config_load("conf/waygate.yaml", &errs);
    ck_assert_int_eq(chdir(cwd), 0);
    for (size_t i = 0; i < errs.n; i++)
        fprintf(stderr, "%s\n", errs.lines[i]);
    ck_assert_uint_eq(errs.n, 0);
    ck_assert_ptr_nonnull(cfg);
    ck_assert_int_eq(cfg->registry.kind, WG_REGISTRY_FILE);
    ck_assert_str_eq(cfg->registry.file, "conf/instances.yaml");
    ck_assert_uint_eq(cfg->n_listeners, 2);
    ck_assert_str_eq(cfg->listeners[0].name, "demo-tcp");
    ck_assert_str_eq(cfg->listeners[0].listen.text, "127.0.0.1:7000");
    ck_assert_str_eq(cfg->listeners[1].name, "demo-http");
    ck_assert_str_eq(cfg->listeners[1].listen.text, "127.0.0.1:8080");
    ck_assert_uint_eq(cfg->n_services, 1);
    ck_assert_str_eq(cfg->services[0].name, "demo");
    ck_assert_int_eq(cfg->services[0].health_check.type, WG_HEALTH_HTTP);
    assert_service_defaults(&cfg->services[0]);
    ck_assert_str_eq(cfg->admin.listen.text, "127.0.0.1:9901");
    wg_config_free(cfg);
}
END_TEST

static Suite *config_suite(void)
{
    Suite *s = suite_create("config");
    TCase *grammar = tcase_create("grammar"), *errors = tcase_create("errors");
    TCase *good = tcase_create("good");

    tcase_add_loop_test(grammar, test_duration_grammar, 0, sizeof durations / sizeof durations[0]);
    tcase_add_loop_test(grammar, test_size_grammar, 0, sizeof sizes / sizeof sizes[0]);
    tcase_add_loop_test(grammar, test_addr_grammar, 0, sizeof addrs / sizeof addrs[0]);
    tcase_add_loop_test(grammar, test_status_grammar, 0, sizeof statuses / sizeof statuses[0]);
    tcase_add_loop_test(errors, test_bad_config, 0, sizeof bad / sizeof bad[0]);
    tcase_add_test(errors, test_fleet_and_locality);
    tcase_add_test(errors, test_collects_all_errors);
    tcase_add_test(errors, test_errors_append_to_existing_list);
    tcase_add_test(errors, test_billion_laughs_refused);
    tcase_add_test(errors, test_alias_expansion_bound);
    tcase_add_test(errors, test_recursive_merge_refused);
    tcase_add_test(errors, test_deep_nesting_refused);
    tcase_add_test(errors, test_too_many_errors_capped);
    tcase_add_test(errors, test_missing_files);
    tcase_add_test(errors, test_existing_files_pass);
    tcase_add_test(errors, test_load_missing_config_file);
    tcase_add_test(good, test_defaults);
    tcase_add_test(good, test_listener_defaults);
    tcase_add_test(good, test_values_parsed);
    tcase_add_test(good, test_prefix_scalar_and_workers_auto);
    tcase_add_test(good, test_services_merge_over_defaults);
    tcase_add_test(good, test_client_ip_overrides_header_hash);
    tcase_add_test(good, test_grpc_keys);
    tcase_add_test(good, test_health_type_resolution);
    tcase_add_test(good, test_routes);
    tcase_add_test(good, test_listener_tls);
    tcase_add_test(good, test_aliases_and_merge_keys);
    tcase_add_test(good, test_explicit_key_beats_merge);
    tcase_add_test(good, test_example_config);
    suite_add_tcase(s, grammar);
    suite_add_tcase(s, errors);
    suite_add_tcase(s, good);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(config_suite());
    int failed;

    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
