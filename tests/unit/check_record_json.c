/* check_record_json — the etcd value formats of DESIGN §7 (record.h). */
#include <arpa/inet.h>
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "waygate/record.h"
#include "waygate/sockaddr.h"

#define PREFIX "/services/"

static struct wg_record_set SET;
static struct wg_record_hosts HOSTS;
static char WHY[256];
static enum wg_record_format FMT;

static void reset(void)
{
    wg_record_set_clear(&SET);
    wg_record_hosts_clear(&HOSTS);
    WHY[0] = '\0';
}

static bool decode_at(const char *key, const char *value, bool hosts)
{
    reset();
    return wg_record_decode_etcd(PREFIX, key, strlen(key), value, strlen(value), &SET,
                                 hosts ? &HOSTS : NULL, &FMT, WHY, sizeof WHY);
}

static bool decode(const char *value) { return decode_at(PREFIX "users/k1", value, false); }

static void expect_ok(const char *value, enum wg_record_format f, const char *addr,
                      unsigned weight)
{
    char text[64];
    ck_assert_msg(decode(value), "%s: %s", value, WHY);
    ck_assert_int_eq(FMT, f);
    ck_assert_uint_eq(SET.n, 1);
    ck_assert_str_eq(SET.v[0].service, "users");
    ck_assert_str_eq(SET.v[0].id, "k1");
    wg_sockaddr_text((struct sockaddr *)&SET.v[0].addr, text, sizeof text);
    ck_assert_str_eq(text, addr);
    ck_assert_uint_eq(SET.v[0].weight, weight);
}

static void expect_invalid(const char *value, const char *why_part)
{
    ck_assert_msg(!decode(value), "accepted: %s", value);
    ck_assert_uint_eq(SET.n, 0);
    ck_assert_msg(strstr(WHY, why_part), "%s: reason '%s' lacks '%s'", value, WHY, why_part);
}

START_TEST(native)
{
    expect_ok("{\"address\":\"10.0.0.5\",\"port\":8080,\"weight\":7,"
              "\"metadata\":{\"zone\":\"a\"}}", WG_FORMAT_NATIVE, "10.0.0.5:8080", 7);
    ck_assert_str_eq(SET.v[0].metadata, "{\"zone\":\"a\"}");
    expect_ok("{\"address\":\"fd00::5\",\"port\":\"81\"}", WG_FORMAT_NATIVE, "[fd00::5]:81", 100);
    ck_assert_ptr_null(SET.v[0].metadata);
    expect_ok("{\"address\":\"10.0.0.5:9\",\"weight\":0}", WG_FORMAT_NATIVE, "10.0.0.5:9", 0);
    expect_ok(" {\"name\":\"other\",\"id\":\"x\",\"address\":\"1.2.3.4\",\"port\":1}",
              WG_FORMAT_NATIVE, "1.2.3.4:1", 100);
    expect_invalid("{\"address\":\"10.0.0.5\",\"port\":0}", "port");
    expect_invalid("{\"address\":\"10.0.0.5\",\"port\":65536}", "port");
    expect_invalid("{\"address\":\"10.0.0.5\",\"port\":1,\"weight\":10001}", "weight");
    expect_invalid("{\"address\":\"10.0.0.5\",\"port\":1,\"weight\":-1}", "weight");
    expect_invalid("{\"address\":\"10.0.0.5\",\"port\":1,\"metadata\":[1]}", "metadata");
    expect_invalid("{\"address\":5,\"port\":1}", "address");
    expect_invalid("{\"address\":\"10.0.0.5\"}", "host:port");
}
END_TEST

START_TEST(plain)
{
    expect_ok("10.0.0.5:8080", WG_FORMAT_PLAIN, "10.0.0.5:8080", 100);
    expect_ok("[fd00::5]:8080\n", WG_FORMAT_PLAIN, "[fd00::5]:8080", 100);
    expect_invalid("fd00::5:8080", "host:port");
    expect_invalid("10.0.0.5", "host:port");
    expect_invalid("10.0.0.5:", "host:port");
    expect_invalid("10.0.0.5:99999", "host:port");
    expect_invalid("10.0.0.5:80x", "host:port");
    expect_invalid("", "empty");
    expect_invalid("10.0.0.300:80", "neither");
    expect_invalid("host_name:80", "neither");
    expect_invalid("example.com:80", "host name");
}
END_TEST

START_TEST(endpoints_manager)
{
    expect_ok("{\"Op\":0,\"Addr\":\"10.0.0.5:8080\",\"Metadata\":{\"v\":1}}",
              WG_FORMAT_ENDPOINTS, "10.0.0.5:8080", 100);
    ck_assert_str_eq(SET.v[0].metadata, "{\"v\":1}");
    expect_ok("{\"Addr\":\"[::1]:1\",\"Metadata\":\"text\"}", WG_FORMAT_ENDPOINTS, "[::1]:1",
              100);
    ck_assert_ptr_null(SET.v[0].metadata);
    expect_invalid("{\"Op\":1,\"Addr\":\"10.0.0.5:8080\"}", "Op");
    expect_invalid("{\"Addr\":\"10.0.0.5\"}", "host:port");
}
END_TEST

START_TEST(go_micro)
{
    ck_assert_msg(decode("{\"name\":\"ignored\",\"version\":\"1\",\"nodes\":["
                         "{\"id\":\"u1\",\"address\":\"10.0.0.5:8080\",\"metadata\":{\"a\":\"b\"}},"
                         "{\"id\":\"u2\",\"address\":\"10.0.0.6\",\"port\":9090}]}"), "%s", WHY);
    ck_assert_int_eq(FMT, WG_FORMAT_GO_MICRO);
    ck_assert_uint_eq(SET.n, 2);
    ck_assert_str_eq(SET.v[0].id, "u1");
    ck_assert_str_eq(SET.v[0].service, "users");
    ck_assert_str_eq(SET.v[0].metadata, "{\"a\":\"b\"}");
    ck_assert_str_eq(SET.v[1].id, "u2");
    expect_invalid("{\"nodes\":[]}", "non-empty");
    expect_invalid("{\"nodes\":[{\"id\":\"u1\",\"address\":\"10.0.0.5:1\"},"
                   "{\"id\":\"u1\",\"address\":\"10.0.0.6:1\"}]}", "duplicate");
    expect_invalid("{\"nodes\":[{\"id\":\"u1\",\"address\":\"10.0.0.5:1\"},"
                   "{\"address\":\"10.0.0.6:1\"}]}", "id");
    expect_invalid("{\"nodes\":[{\"id\":\"\",\"address\":\"10.0.0.5:1\"}]}", "empty");
}
END_TEST

START_TEST(kratos)
{
    expect_ok("{\"id\":\"x\",\"name\":\"users\",\"version\":\"v1\",\"metadata\":{\"m\":\"1\"},"
              "\"endpoints\":[\"grpc://10.0.0.5:9000\",\"http://10.0.0.5:8000?isSecure=false\"]}",
              WG_FORMAT_KRATOS, "10.0.0.5:8000", 100);
    ck_assert_str_eq(SET.v[0].metadata, "{\"m\":\"1\"}");
    expect_ok("{\"endpoints\":[\"HTTP://[::1]:80/x\"]}", WG_FORMAT_KRATOS, "[::1]:80", 100);
    expect_invalid("{\"endpoints\":[\"tcp://10.0.0.5:9000\"]}", "no http:// or grpc://");
    expect_invalid("{\"endpoints\":\"http://10.0.0.5:1\"}", "array");
}
END_TEST

static const char *text_of(const struct sockaddr_storage *ss, char *buf, size_t len)
{
    wg_sockaddr_text((const struct sockaddr *)ss, buf, len);
    return buf;
}

/* What each service protocol picks from a record (record.h). */
static void expect_pick(enum wg_upstream_protocol want, bool tls, bool ok, const char *addr,
                        enum wg_upstream_protocol proto)
{
    const struct sockaddr_storage *a;
    socklen_t len;
    enum wg_upstream_protocol p;
    char text[64];
    ck_assert_int_eq(wg_record_select(&SET.v[0], want, tls, &a, &len, &p), ok);
    if (!ok)
        return;
    ck_assert_str_eq(text_of(a, text, sizeof text), addr);
    ck_assert_int_eq(p, proto);
}

/* Protocol markers: Kratos grpc:// beside or instead of http://, native
 * "protocol", metadata protocol in every format (docs/registry.md). */
START_TEST(protocol_markers)
{
    /* Kratos, both endpoints: http1/auto take http, h2c/h2 take grpc. */
    expect_ok("{\"endpoints\":[\"grpc://10.0.0.5:9000\",\"http://10.0.0.5:8000\"]}",
              WG_FORMAT_KRATOS, "10.0.0.5:8000", 100);
    ck_assert_int_eq(SET.v[0].protocol, WG_RECORD_PROTO_HTTP1);
    ck_assert(!SET.v[0].grpc_endpoint);
    expect_pick(WG_UPSTREAM_HTTP1, false, true, "10.0.0.5:8000", WG_UPSTREAM_HTTP1);
    expect_pick(WG_UPSTREAM_AUTO, false, true, "10.0.0.5:8000", WG_UPSTREAM_HTTP1);
    expect_pick(WG_UPSTREAM_H2C, false, true, "10.0.0.5:9000", WG_UPSTREAM_H2C);
    expect_pick(WG_UPSTREAM_H2, true, true, "10.0.0.5:9000", WG_UPSTREAM_H2);
    /* Kratos, grpc:// only: HTTP/2 under auto (h2 with TLS), refused by http1. */
    expect_ok("{\"endpoints\":[\"grpc://10.0.0.6:9000?isSecure=false\"]}", WG_FORMAT_KRATOS,
              "10.0.0.6:9000", 100);
    ck_assert(SET.v[0].grpc_endpoint);
    ck_assert_int_eq(SET.v[0].protocol, WG_RECORD_PROTO_HTTP2);
    expect_pick(WG_UPSTREAM_HTTP1, false, false, NULL, 0);
    expect_pick(WG_UPSTREAM_AUTO, false, true, "10.0.0.6:9000", WG_UPSTREAM_H2C);
    expect_pick(WG_UPSTREAM_AUTO, true, true, "10.0.0.6:9000", WG_UPSTREAM_H2);
    expect_pick(WG_UPSTREAM_H2C, false, true, "10.0.0.6:9000", WG_UPSTREAM_H2C);
    /* A grpc:// host name beside an http:// endpoint is not taken. */
    expect_ok("{\"endpoints\":[\"http://10.0.0.5:8000\",\"grpc://svc.local:9000\"]}",
              WG_FORMAT_KRATOS, "10.0.0.5:8000", 100);
    ck_assert_uint_eq(SET.v[0].grpc_addrlen, 0);
    expect_pick(WG_UPSTREAM_H2C, false, true, "10.0.0.5:8000", WG_UPSTREAM_H2C);
    /* Native: "protocol" (strict), or metadata protocol (lenient). */
    expect_ok("{\"address\":\"10.0.0.5\",\"port\":9000,\"protocol\":\"grpc\"}",
              WG_FORMAT_NATIVE, "10.0.0.5:9000", 100);
    ck_assert_int_eq(SET.v[0].protocol, WG_RECORD_PROTO_HTTP2);
    expect_pick(WG_UPSTREAM_AUTO, false, true, "10.0.0.5:9000", WG_UPSTREAM_H2C);
    expect_pick(WG_UPSTREAM_HTTP1, false, true, "10.0.0.5:9000", WG_UPSTREAM_HTTP1);
    expect_ok("{\"address\":\"10.0.0.5:9000\",\"metadata\":{\"protocol\":\"H2C\"}}",
              WG_FORMAT_NATIVE, "10.0.0.5:9000", 100);
    ck_assert_int_eq(SET.v[0].protocol, WG_RECORD_PROTO_HTTP2);
    expect_ok("{\"address\":\"10.0.0.5:9000\",\"protocol\":\"http1\","
              "\"metadata\":{\"protocol\":\"grpc\"}}", WG_FORMAT_NATIVE, "10.0.0.5:9000", 100);
    ck_assert_int_eq(SET.v[0].protocol, WG_RECORD_PROTO_HTTP1);   /* the field wins */
    expect_ok("{\"address\":\"10.0.0.5:9000\",\"metadata\":{\"protocol\":\"thrift\"}}",
              WG_FORMAT_NATIVE, "10.0.0.5:9000", 100);
    ck_assert_int_eq(SET.v[0].protocol, WG_RECORD_PROTO_UNSET);
    expect_pick(WG_UPSTREAM_AUTO, true, true, "10.0.0.5:9000", WG_UPSTREAM_HTTP1);
    expect_invalid("{\"address\":\"10.0.0.5:9000\",\"protocol\":\"thrift\"}", "protocol");
    expect_invalid("{\"address\":\"10.0.0.5:9000\",\"protocol\":2}", "protocol");
    /* endpoints.Manager and go-micro: metadata protocol. */
    expect_ok("{\"Op\":0,\"Addr\":\"10.0.0.7:50051\",\"Metadata\":{\"protocol\":\"grpc\"}}",
              WG_FORMAT_ENDPOINTS, "10.0.0.7:50051", 100);
    ck_assert_int_eq(SET.v[0].protocol, WG_RECORD_PROTO_HTTP2);
    expect_ok("{\"Op\":0,\"Addr\":\"10.0.0.7:50051\",\"Metadata\":\"grpc\"}",
              WG_FORMAT_ENDPOINTS, "10.0.0.7:50051", 100);
    ck_assert_int_eq(SET.v[0].protocol, WG_RECORD_PROTO_UNSET);   /* not an object */
    ck_assert(decode("{\"name\":\"users\",\"nodes\":[{\"id\":\"n1\",\"address\":\"10.0.0.8:1\","
                     "\"metadata\":{\"protocol\":\"grpc\"}},{\"id\":\"n2\","
                     "\"address\":\"10.0.0.9:1\"}]}"));
    ck_assert_uint_eq(SET.n, 2);
    ck_assert_int_eq(SET.v[0].protocol, WG_RECORD_PROTO_HTTP2);
    ck_assert_int_eq(SET.v[1].protocol, WG_RECORD_PROTO_UNSET);
    ck_assert_int_eq(wg_record_protocol_word("HTTP/1.1"), WG_RECORD_PROTO_HTTP1);
    ck_assert_int_eq(wg_record_protocol_word(NULL), WG_RECORD_PROTO_UNSET);
    ck_assert_str_eq(wg_upstream_protocol_name(WG_UPSTREAM_H2C), "h2c");
}
END_TEST

START_TEST(skydns)
{
    expect_ok("{\"host\":\"10.0.0.5\",\"port\":8080,\"priority\":10,\"weight\":3,\"ttl\":30}",
              WG_FORMAT_SKYDNS, "10.0.0.5:8080", 100);
    expect_invalid("{\"host\":\"10.0.0.5\"}", "port");
}
END_TEST

START_TEST(bad_json)
{
    expect_invalid("{", "JSON");
    expect_invalid("{\"address\":\"1.2.3.4\",\"address\":\"1.2.3.5\",\"port\":1}", "JSON");
    expect_invalid("{\"foo\":1}", "unknown");
    expect_invalid("[1]", "host:port");
    expect_invalid("{\"host\":\"a\\u0000b\",\"port\":1}", "JSON");
}
END_TEST

START_TEST(keys)
{
    char *svc, *id;
    const char *why;
    ck_assert(wg_record_key_split(PREFIX, PREFIX "users/a/b", strlen(PREFIX "users/a/b"), &svc,
                                  &id, &why));
    ck_assert_str_eq(svc, "users");
    ck_assert_str_eq(id, "a/b");
    free(svc);
    free(id);
    ck_assert(!wg_record_key_split(PREFIX, "/other/users/a", 14, &svc, &id, &why));
    ck_assert(!wg_record_key_split(PREFIX, PREFIX "users", strlen(PREFIX "users"), &svc, &id,
                                   &why));
    ck_assert(!wg_record_key_split(PREFIX, PREFIX "users/", strlen(PREFIX "users/"), &svc, &id,
                                   &why));
    ck_assert(!wg_record_key_split(PREFIX, PREFIX "/a", strlen(PREFIX "/a"), &svc, &id, &why));
    ck_assert(!wg_record_key_split(PREFIX, PREFIX "us ers/a", strlen(PREFIX "us ers/a"), &svc,
                                   &id, &why));
    ck_assert(!wg_record_key_split(PREFIX, PREFIX "u\0/a", 13, &svc, &id, &why));
    ck_assert(!decode_at("/x/users/k1", "10.0.0.5:1", false));
    ck_assert(strstr(WHY, "prefix"));
}
END_TEST

START_TEST(hostnames)
{
    ck_assert_msg(decode_at(PREFIX "web/w1", "backend-1.example.internal:8080", true), "%s", WHY);
    ck_assert_uint_eq(SET.n, 1);
    ck_assert_uint_eq(HOSTS.n, 1);
    ck_assert_uint_eq(HOSTS.v[0].index, 0);
    ck_assert_str_eq(HOSTS.v[0].name, "backend-1.example.internal");
    ck_assert_uint_eq(HOSTS.v[0].port, 8080);
    ck_assert_int_eq(SET.v[0].addr.ss_family, AF_UNSPEC);
    ck_assert(decode_at(PREFIX "web/w1",
                        "{\"nodes\":[{\"id\":\"a\",\"address\":\"10.0.0.1:1\"},"
                        "{\"id\":\"b\",\"address\":\"localhost:2\"}]}", true));
    ck_assert_uint_eq(HOSTS.n, 1);
    ck_assert_uint_eq(HOSTS.v[0].index, 1);
    ck_assert(!decode_at(PREFIX "web/w1", "-bad-.example:80", true));
    ck_assert(!decode_at(PREFIX "web/w1", "a..b:80", true));
}
END_TEST

/* Decoding appends: earlier records and host indexes stay right. */
START_TEST(appends)
{
    reset();
    ck_assert(wg_record_decode_etcd(PREFIX, PREFIX "a/1", 13, "1.1.1.1:1", 9, &SET, &HOSTS, NULL,
                                    WHY, sizeof WHY));
    ck_assert(!wg_record_decode_etcd(PREFIX, PREFIX "a/2", 13, "x", 1, &SET, &HOSTS, NULL, WHY,
                                     sizeof WHY));
    ck_assert(wg_record_decode_etcd(PREFIX, PREFIX "a/3", 13, "h.example:2", 11, &SET, &HOSTS,
                                    NULL, WHY, sizeof WHY));
    ck_assert_uint_eq(SET.n, 2);
    ck_assert_uint_eq(HOSTS.n, 1);
    ck_assert_uint_eq(HOSTS.v[0].index, 1);
    ck_assert_str_eq(SET.v[1].id, "3");
    reset();
}
END_TEST

int main(void)
{
    Suite *s = suite_create("record_json");
    TCase *tc = tcase_create("formats");
    tcase_add_test(tc, native);
    tcase_add_test(tc, plain);
    tcase_add_test(tc, endpoints_manager);
    tcase_add_test(tc, go_micro);
    tcase_add_test(tc, kratos);
    tcase_add_test(tc, protocol_markers);
    tcase_add_test(tc, skydns);
    tcase_add_test(tc, bad_json);
    tcase_add_test(tc, keys);
    tcase_add_test(tc, hostnames);
    tcase_add_test(tc, appends);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    reset();
    srunner_free(sr);
    return failed ? 1 : 0;
}
