/* check_record_zk — ZooKeeper node data: Curator ServiceInstance JSON and
 * Dubbo provider URLs (record.h, DESIGN §17). */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "waygate/record.h"
#include "waygate/sockaddr.h"

#define PREFIX "/services/"
#define KEY PREFIX "users/u1"

static struct wg_record_set SET;
static char WHY[256];
static enum wg_record_format FMT;

static void reset(void)
{
    wg_record_set_clear(&SET);
    WHY[0] = '\0';
}

static bool curator(const char *value, bool only, bool ssl)
{
    reset();
    return wg_record_decode_zk(PREFIX, KEY, strlen(KEY), value, strlen(value), only, ssl, &SET,
                               NULL, &FMT, WHY, sizeof WHY);
}

static const char *addr(size_t i)
{
    static char text[64];
    wg_sockaddr_text((struct sockaddr *)&SET.v[i].addr, text, sizeof text);
    return text;
}

/* What Curator 5's JsonInstanceSerializer writes (ServiceDiscoveryBuilder
 * with a payload class). */
#define CURATOR_FULL                                                                        \
    "{\"name\":\"users\",\"id\":\"9f2c\",\"address\":\"10.0.0.5\",\"port\":8080,"          \
    "\"sslPort\":8443,\"payload\":{\"@class\":\"org.example.Details\",\"zone\":\"a\"},"   \
    "\"registrationTimeUTC\":1700000000000,\"serviceType\":\"DYNAMIC\","                  \
    "\"uriSpec\":{\"parts\":[{\"value\":\"http\",\"variable\":false},"                      \
    "{\"value\":\"://\",\"variable\":false},{\"value\":\"address\",\"variable\":true},"   \
    "{\"value\":\":\",\"variable\":false},{\"value\":\"port\",\"variable\":true}]}}"

START_TEST(curator_instance)
{
    ck_assert_msg(curator(CURATOR_FULL, false, false), "%s", WHY);
    ck_assert_int_eq(FMT, WG_FORMAT_CURATOR);
    ck_assert_uint_eq(SET.n, 1);
    ck_assert_str_eq(SET.v[0].service, "users");
    ck_assert_str_eq(SET.v[0].id, "u1");         /* the key wins over "id" */
    ck_assert_str_eq(addr(0), "10.0.0.5:8080");
    ck_assert_uint_eq(SET.v[0].weight, 100);
    ck_assert_str_eq(SET.v[0].metadata,
                     "{\"payload\":{\"@class\":\"org.example.Details\",\"zone\":\"a\"},"
                     "\"serviceType\":\"DYNAMIC\",\"sslPort\":8443,"
                     "\"uriSpec\":\"http://{address}:{port}\"}");
    /* the service sends TLS upstream: sslPort */
    ck_assert_msg(curator(CURATOR_FULL, true, true), "%s", WHY);
    ck_assert_str_eq(addr(0), "10.0.0.5:8443");
    /* sslPort only */
    ck_assert(curator("{\"address\":\"fd00::5\",\"port\":null,\"sslPort\":9443,"
                      "\"serviceType\":\"STATIC\",\"payload\":null}", true, false));
    ck_assert_str_eq(addr(0), "[fd00::5]:9443");
    ck_assert_str_eq(SET.v[0].metadata, "{\"serviceType\":\"STATIC\",\"sslPort\":9443}");
    /* enabled:false: no new traffic */
    ck_assert(curator("{\"address\":\"10.0.0.6\",\"port\":81,\"serviceType\":\"PERMANENT\","
                      "\"enabled\":false}", true, false));
    ck_assert_uint_eq(SET.v[0].weight, 0);
    /* a host name goes to the caller's resolver (or is refused without one, below) */
    struct wg_record_hosts hosts = { 0 };
    const char *named = "{\"address\":\"users.example\",\"port\":81,\"serviceType\":\"STATIC\"}";
    reset();
    ck_assert(wg_record_decode_zk(PREFIX, KEY, strlen(KEY), named, strlen(named), true, false, &SET,
                                  &hosts, &FMT, WHY, sizeof WHY));
    ck_assert_uint_eq(SET.n, 1);
    ck_assert_uint_eq(hosts.n, 1);
    ck_assert_str_eq(hosts.v[0].name, "users.example");
    ck_assert_uint_eq(hosts.v[0].port, 81);
    wg_record_hosts_clear(&hosts);
    /* registrationTimeUTC alone marks Curator too */
    ck_assert(curator("{\"address\":\"10.0.0.7\",\"port\":82,\"registrationTimeUTC\":1}", true,
                      false));
    ck_assert_int_eq(FMT, WG_FORMAT_CURATOR);
}
END_TEST

static void curator_invalid(const char *value, const char *why_part)
{
    ck_assert_msg(!curator(value, false, false), "accepted: %s", value);
    ck_assert_uint_eq(SET.n, 0);
    ck_assert_msg(strstr(WHY, why_part), "%s: reason '%s' lacks '%s'", value, WHY, why_part);
}

START_TEST(curator_invalid_values)
{
    curator_invalid("{\"serviceType\":\"DYNAMIC\",\"port\":80}", "address must be a string");
    curator_invalid("{\"serviceType\":\"DYNAMIC\",\"address\":\"10.0.0.5\"}",
                    "neither port nor sslPort");
    curator_invalid("{\"serviceType\":\"DYNAMIC\",\"address\":\"10.0.0.5\",\"port\":0}",
                    "port must be null or an integer");
    curator_invalid("{\"serviceType\":\"DYNAMIC\",\"address\":\"10.0.0.5\",\"port\":80,"
                    "\"sslPort\":\"x\"}", "sslPort must be null");
    curator_invalid("{\"serviceType\":\"ODD\",\"address\":\"10.0.0.5\",\"port\":80}",
                    "unknown serviceType");
    curator_invalid("{\"serviceType\":7,\"address\":\"10.0.0.5\",\"port\":80}",
                    "serviceType must be a string");
    curator_invalid("{\"serviceType\":\"DYNAMIC\",\"address\":\"10.0.0.5\",\"port\":80,"
                    "\"enabled\":\"no\"}", "enabled must be true or false");
    curator_invalid("{\"serviceType\":\"DYNAMIC\",\"address\":\"users.example\",\"port\":80}",
                    "host name");
    /* layout: curator refuses the other formats */
    ck_assert(!curator("{\"address\":\"10.0.0.5\",\"port\":80}", true, false));
    ck_assert_msg(strstr(WHY, "not a Curator ServiceInstance (native format)"), "%s", WHY);
    ck_assert(!curator("10.0.0.5:80", true, false));
    /* ... which auto and plain take */
    ck_assert(curator("10.0.0.5:80", false, false));
    ck_assert_int_eq(FMT, WG_FORMAT_PLAIN);
}
END_TEST

/* ---- Dubbo ---- */

static bool dubbo(const char *name, const struct wg_dubbo_map *map, size_t n)
{
    reset();
    return wg_record_decode_dubbo(name, strlen(name), map, n, &SET, WHY, sizeof WHY);
}

/* What Dubbo 3's ZookeeperRegistry writes under providers/ (URL.encode). */
#define DUBBO_URL                                                                           \
    "dubbo%3A%2F%2F10.0.0.5%3A20880%2Forg.example.Users%3Fanyhost%3Dtrue%26application%3D" \
    "users-app%26deprecated%3Dfalse%26dubbo%3D2.0.2%26interface%3Dorg.example.Users%26"    \
    "methods%3Dget%2Cput%26side%3Dprovider%26version%3D1.0.0%26timestamp%3D1700000000000"

START_TEST(dubbo_url)
{
    ck_assert_msg(dubbo(DUBBO_URL, NULL, 0), "%s", WHY);
    ck_assert_uint_eq(SET.n, 1);
    ck_assert_str_eq(SET.v[0].service, "org.example.Users");
    ck_assert_str_eq(SET.v[0].id, "10.0.0.5:20880");
    ck_assert_str_eq(addr(0), "10.0.0.5:20880");
    ck_assert_uint_eq(SET.v[0].weight, 100);
    ck_assert_str_eq(SET.v[0].metadata,
                     "{\"application\":\"users-app\",\"protocol\":\"dubbo\",\"version\":\"1.0.0\"}");
    /* a configured mapping names the service */
    struct wg_dubbo_map map[] = { { "org.example.Other", "other" }, { "org.example.Users", "users" } };
    ck_assert(dubbo(DUBBO_URL, map, 2));
    ck_assert_str_eq(SET.v[0].service, "users");
    /* tri://, IPv6, weight, no interface= (the path names it) */
    ck_assert_msg(dubbo("tri%3A%2F%2F%5Bfd00%3A%3A5%5D%3A50051%2Forg.example.Grpc%3Fweight%3D40",
                        NULL, 0), "%s", WHY);
    ck_assert_str_eq(SET.v[0].service, "org.example.Grpc");
    ck_assert_str_eq(addr(0), "[fd00::5]:50051");
    ck_assert_uint_eq(SET.v[0].weight, 40);
    ck_assert_str_eq(SET.v[0].metadata, "{\"protocol\":\"tri\"}");
    /* disabled=true and enabled=false: no new traffic */
    ck_assert(dubbo("dubbo://10.0.0.5:20880/a.B?disabled=true", NULL, 0));
    ck_assert_uint_eq(SET.v[0].weight, 0);
    ck_assert(dubbo("dubbo://10.0.0.5:20880/a.B?weight=5&enabled=false", NULL, 0));
    ck_assert_uint_eq(SET.v[0].weight, 0);
    ck_assert(dubbo("dubbo://10.0.0.5:20880/a.B?enabled=true&disabled=false", NULL, 0));
    ck_assert_uint_eq(SET.v[0].weight, 100);
}
END_TEST

static void dubbo_invalid(const char *name, const char *why_part)
{
    ck_assert_msg(!dubbo(name, NULL, 0), "accepted: %s", name);
    ck_assert_uint_eq(SET.n, 0);
    ck_assert_msg(strstr(WHY, why_part), "%s: reason '%s' lacks '%s'", name, WHY, why_part);
}

START_TEST(dubbo_invalid_urls)
{
    dubbo_invalid("http%3A%2F%2F10.0.0.5%3A80%2Fa", "not a dubbo:// or tri:// URL");
    dubbo_invalid("dubbo%3A%2F%2F10.0.0.5%3A20880%2Fa%3Fside%3Dconsumer", "not a provider");
    dubbo_invalid("dubbo://10.0.0.5/a.B", "is not IP:PORT");
    dubbo_invalid("dubbo://10.0.0.5:0/a.B", "is not IP:PORT");
    dubbo_invalid("dubbo://host.example:20880/a.B", "is not IP:PORT");
    dubbo_invalid("dubbo://[fd00::5:20880/a.B", "is not IP:PORT");
    dubbo_invalid("dubbo://10.0.0.5:20880", "no interface");
    dubbo_invalid("dubbo://10.0.0.5:20880/a.B?weight=x", "weight must be an integer");
    dubbo_invalid("dubbo://10.0.0.5:20880/a.B?weight=10001", "weight must be an integer");
    dubbo_invalid("dubbo%3A%2F%2F10.0.0.5%3A20880%2Fa%2", "not a percent-encoded URL");
    dubbo_invalid("dubbo%3A%2F%2F10.0.0.5%3A20880%2Fa%00b", "not a percent-encoded URL");
    dubbo_invalid("dubbo://10.0.0.5:20880/a b", "is not a service name");
    dubbo_invalid("", "not a dubbo:// or tri:// URL");
}
END_TEST

int main(void)
{
    Suite *s = suite_create("record_zk");
    TCase *t = tcase_create("all");
    int failed;

    tcase_add_test(t, curator_instance);
    tcase_add_test(t, curator_invalid_values);
    tcase_add_test(t, dubbo_url);
    tcase_add_test(t, dubbo_invalid_urls);
    suite_add_tcase(s, t);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    reset();
    return failed ? 1 : 0;
}
