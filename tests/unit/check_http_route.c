/* check_http_route — route matching of DESIGN §6, one test per rule.
 *
 * Routes come from a real config (so the config's own normalisation of route
 * hosts is part of what is tested) and requests from the real http parser. */
#include "waygate/http_route.h"

#include "unit_util.h"

#define ROUTES(body)                                                            \
    "registry: { file: /dev/null }\n"                                           \
    "listeners:\n  - name: h\n    listen: 127.0.0.1:8080\n    mode: http\n"     \
    "    routes:\n" body

static struct wg_config *CFG;
static struct wg_http_header H[64];
static struct wg_http_parser P;

static void load(const char *routes_yaml)
{
    if (CFG)
        wg_config_free(CFG);
    CFG = unit_config(routes_yaml);
}

static void teardown(void)
{
    wg_config_free(CFG);
    CFG = NULL;
}

/* Index of the route `req` (a complete head) takes, -1 for none. */
static int route(const char *req)
{
    size_t used;
    wg_http_parser_init_request(&P, H, 64, 0);
    ck_assert_int_eq(wg_http_parse_head(&P, req, strlen(req), &used), WG_HTTP_DONE);
    const struct wg_listener_config *l = &CFG->listeners[0];
    return wg_route_match(l->routes, l->n_routes, &P, req);
}

#define GET_HOST(path, host) "GET " path " HTTP/1.1\r\nHost: " host "\r\n\r\n"

START_TEST(host_exact_case_port_dot)
{
    load(ROUTES("      - { host: API.Example.com, service: a }\n"
                "      - { service: b }\n"));
    ck_assert_int_eq(route(GET_HOST("/", "api.example.com")), 0);
    ck_assert_int_eq(route(GET_HOST("/", "API.EXAMPLE.COM")), 0);
    ck_assert_int_eq(route(GET_HOST("/", "api.example.com:8080")), 0);
    ck_assert_int_eq(route(GET_HOST("/", "api.example.com.")), 0);
    ck_assert_int_eq(route(GET_HOST("/", "api.example.com.:443")), 0);
    ck_assert_int_eq(route(GET_HOST("/", "xapi.example.com")), 1);
    ck_assert_int_eq(route(GET_HOST("/", "api.example.co")), 1);
    ck_assert_int_eq(route(GET_HOST("/", "api.example.com..")), 1);
}
END_TEST

START_TEST(host_route_with_port_and_dot_in_config)
{
    load(ROUTES("      - { host: \"api.example.com.:80\", service: a }\n"));
    ck_assert_int_eq(route(GET_HOST("/", "api.example.com")), 0);
}
END_TEST

START_TEST(host_wildcard)
{
    load(ROUTES("      - { host: \"*.example.com\", service: a }\n"
                "      - { service: b }\n"));
    ck_assert_int_eq(route(GET_HOST("/", "a.example.com")), 0);
    ck_assert_int_eq(route(GET_HOST("/", "a.b.example.com")), 0);
    ck_assert_int_eq(route(GET_HOST("/", "A.Example.COM:81")), 0);
    ck_assert_int_eq(route(GET_HOST("/", "a.example.com.")), 0);
    ck_assert_int_eq(route(GET_HOST("/", "example.com")), 1);        /* never x itself */
    ck_assert_int_eq(route(GET_HOST("/", "xexample.com")), 1);
    ck_assert_int_eq(route(GET_HOST("/", ".example.com")), 1);       /* empty label */
    ck_assert_int_eq(route(GET_HOST("/", "a..example.com")), 1);
    ck_assert_int_eq(route(GET_HOST("/", "example.com.evil")), 1);
}
END_TEST

START_TEST(host_absent_or_absolute_form)
{
    load(ROUTES("      - { host: a.test, service: a }\n"
                "      - { service: b }\n"));
    ck_assert_int_eq(route("GET / HTTP/1.0\r\n\r\n"), 1);             /* no Host: host-less only */
    ck_assert_int_eq(route("GET http://A.test:80/x HTTP/1.1\r\nHost: a.test:80\r\n\r\n"), 0);
    ck_assert_int_eq(route("GET http://a.test/x HTTP/1.0\r\n\r\n"), 0);
}
END_TEST

START_TEST(host_ipv6_literal)
{
    load(ROUTES("      - { host: \"[::1]\", service: a }\n"
                "      - { service: b }\n"));
    ck_assert_int_eq(route(GET_HOST("/", "[::1]:8080")), 0);
    ck_assert_int_eq(route(GET_HOST("/", "[::1]")), 0);
    ck_assert_int_eq(route(GET_HOST("/", "[::2]")), 1);
}
END_TEST

START_TEST(host_normalize_edges)
{
    char out[WG_ROUTE_HOST_MAX + 1];
    ck_assert_uint_eq(wg_route_host_normalize("", 0, out), 0);
    ck_assert_uint_eq(wg_route_host_normalize(":80", 3, out), 0);
    ck_assert_uint_eq(wg_route_host_normalize("[::1", 4, out), 0);
    ck_assert_uint_eq(wg_route_host_normalize("[::1]x", 6, out), 0);
    ck_assert_uint_eq(wg_route_host_normalize("A.B.:1", 6, out), 3);
    ck_assert_str_eq(out, "a.b");
    char big[300];
    memset(big, 'a', sizeof big);
    ck_assert_uint_eq(wg_route_host_normalize(big, 256, out), 0);
    ck_assert_uint_eq(wg_route_host_normalize(big, 255, out), 255);
}
END_TEST

START_TEST(path_prefix_bytes)
{
    load(ROUTES("      - { path_prefix: /users/, service: a }\n"
                "      - { path_prefix: /img, service: b }\n"
                "      - { service: c }\n"));
    ck_assert_int_eq(route(GET_HOST("/users/42", "h")), 0);
    ck_assert_int_eq(route(GET_HOST("/users/", "h")), 0);
    ck_assert_int_eq(route(GET_HOST("/users", "h")), 2);
    ck_assert_int_eq(route(GET_HOST("/Users/1", "h")), 2);           /* case-sensitive */
    ck_assert_int_eq(route(GET_HOST("/%75sers/1", "h")), 2);         /* no decoding */
    ck_assert_int_eq(route(GET_HOST("/./users/1", "h")), 2);         /* no normalisation */
    ck_assert_int_eq(route(GET_HOST("/x?/users/", "h")), 2);         /* query ignored */
    ck_assert_int_eq(route(GET_HOST("/imgs/a.png", "h")), 1);        /* a byte prefix */
    ck_assert_int_eq(route(GET_HOST("/img?x", "h")), 1);
    ck_assert_int_eq(route("GET http://h HTTP/1.1\r\nHost: h\r\n\r\n"), 2);   /* "" is "/" */
}
END_TEST

START_TEST(methods_narrow)
{
    load(ROUTES("      - { methods: [get, HEAD], service: a }\n"
                "      - { service: b }\n"));
    ck_assert_int_eq(route("GET / HTTP/1.1\r\nHost: h\r\n\r\n"), 0);
    ck_assert_int_eq(route("HEAD / HTTP/1.1\r\nHost: h\r\n\r\n"), 0);
    ck_assert_int_eq(route("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n"), 1);
    ck_assert_int_eq(route("get / HTTP/1.1\r\nHost: h\r\n\r\n"), 1);   /* methods are case-sensitive */
    ck_assert_int_eq(route("GETX / HTTP/1.1\r\nHost: h\r\n\r\n"), 1);
}
END_TEST

START_TEST(headers_exact_values)
{
    load(ROUTES("      - { headers: { X-Canary: \"1\", X-Zone: eu }, service: a }\n"
                "      - { service: b }\n"));
    ck_assert_int_eq(route("GET / HTTP/1.1\r\nHost: h\r\nx-canary: 1\r\nX-ZONE:  eu \r\n\r\n"), 0);
    ck_assert_int_eq(route("GET / HTTP/1.1\r\nHost: h\r\nX-Canary: 1\r\n\r\n"), 1);
    ck_assert_int_eq(route("GET / HTTP/1.1\r\nHost: h\r\nX-Canary: 1\r\nX-Zone: EU\r\n\r\n"), 1);
    ck_assert_int_eq(route("GET / HTTP/1.1\r\nHost: h\r\nX-Canary: 10\r\nX-Zone: eu\r\n\r\n"), 1);
    ck_assert_int_eq(route("GET / HTTP/1.1\r\nHost: h\r\nX-Canary: 1, 2\r\nX-Zone: eu\r\n\r\n"), 1);
    /* any field line of that name may carry the value */
    ck_assert_int_eq(route("GET / HTTP/1.1\r\nHost: h\r\nX-Canary: 0\r\nX-Canary: 1\r\n"
                           "X-Zone: eu\r\n\r\n"), 0);
}
END_TEST

START_TEST(first_match_wins_and_no_match)
{
    load(ROUTES("      - { host: api.example.com, path_prefix: /users/, service: users }\n"
                "      - { host: \"*.example.com\", path_prefix: /, methods: [GET], service: web }\n"
                "      - { path_prefix: /, headers: { X-Canary: \"1\" }, service: canary }\n"));
    ck_assert_int_eq(route(GET_HOST("/users/1", "api.example.com")), 0);
    ck_assert_int_eq(route(GET_HOST("/other", "api.example.com")), 1);
    ck_assert_int_eq(route(GET_HOST("/", "other.test")), -1);
    ck_assert_int_eq(route("POST / HTTP/1.1\r\nHost: a.example.com\r\nContent-Length: 0\r\n\r\n"),
                     -1);
    ck_assert_int_eq(route("GET / HTTP/1.1\r\nHost: other.test\r\nX-Canary: 1\r\n\r\n"), 2);
}
END_TEST

static void strip_case(const char *prefix_yaml, const char *path, const char *want)
{
    char yaml[256];
    snprintf(yaml, sizeof yaml, "      - { path_prefix: %s, strip_prefix: true, service: a }\n",
             prefix_yaml);
    char full[1024];
    snprintf(full, sizeof full, ROUTES("%s"), yaml);
    load(full);
    const struct wg_route *r = &CFG->listeners[0].routes[0];
    bool slash;
    size_t off = wg_route_strip(r, path, strlen(path), &slash);
    char got[256];
    snprintf(got, sizeof got, "%s%s", slash ? "/" : "", path + off);
    ck_assert_msg(strcmp(got, want) == 0, "prefix %s path %s: got %s want %s", prefix_yaml, path,
                  got, want);
}

START_TEST(strip_prefix_keeps_slash)
{
    strip_case("/users/", "/users/42", "/42");
    strip_case("/users/", "/users/", "/");
    strip_case("/users", "/users/42", "/42");
    strip_case("/users", "/users", "/");
    strip_case("/users", "/usersX", "/X");
    strip_case("/", "/a/b", "/a/b");
    strip_case("/a/b/", "/a/b/c/d", "/c/d");
}
END_TEST

START_TEST(no_strip_without_flag)
{
    load(ROUTES("      - { path_prefix: /users/, service: a }\n"));
    bool slash;
    ck_assert_uint_eq(wg_route_strip(&CFG->listeners[0].routes[0], "/users/1", 8, &slash), 0);
    ck_assert(!slash);
    ck_assert_uint_eq(wg_route_strip(&CFG->listeners[0].routes[0], "", 0, &slash), 0);
    ck_assert(slash);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("http_route");
    TCase *t = tcase_create("match");
    tcase_add_checked_fixture(t, NULL, teardown);
    tcase_add_test(t, host_exact_case_port_dot);
    tcase_add_test(t, host_route_with_port_and_dot_in_config);
    tcase_add_test(t, host_wildcard);
    tcase_add_test(t, host_absent_or_absolute_form);
    tcase_add_test(t, host_ipv6_literal);
    tcase_add_test(t, host_normalize_edges);
    tcase_add_test(t, path_prefix_bytes);
    tcase_add_test(t, methods_narrow);
    tcase_add_test(t, headers_exact_values);
    tcase_add_test(t, first_match_wins_and_no_match);
    tcase_add_test(t, strip_prefix_keeps_slash);
    tcase_add_test(t, no_strip_without_flag);
    suite_add_tcase(s, t);
    return unit_run(s);
}
