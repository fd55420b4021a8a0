/* check_record — record sets, address text and the file registry parser. */
#include <check.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "waygate/record.h"
#include "waygate/sockaddr.h"

struct parsed {
    struct wg_record_set set;
    struct wg_errors warnings;
    unsigned invalid;
    bool ok;
};

static void parse(struct parsed *p, const char *yaml)
{
    memset(p, 0, sizeof *p);
    p->invalid = 999;
    p->ok = wg_record_parse_file_buffer("reg.yaml", yaml, strlen(yaml), &p->set, &p->warnings,
                                        &p->invalid);
    for (size_t i = 0; i < p->warnings.n; i++)
        fprintf(stderr, "%s\n", p->warnings.lines[i]);
}

static void done(struct parsed *p)
{
    wg_record_set_clear(&p->set);
    wg_errors_free(&p->warnings);
}

static void assert_record(const struct wg_record *r, const char *service, const char *id,
                          const char *addr, uint32_t weight)
{
    char text[80];

    wg_sockaddr_text((const struct sockaddr *)&r->addr, text, sizeof text);
    ck_assert_str_eq(r->service, service);
    ck_assert_str_eq(r->id, id);
    ck_assert_str_eq(text, addr);
    ck_assert_uint_eq(r->weight, weight);
    if (r->addr.ss_family == AF_INET)
        ck_assert_uint_eq(r->addrlen, sizeof(struct sockaddr_in));
    else
        ck_assert_uint_eq(r->addrlen, sizeof(struct sockaddr_in6));
}

START_TEST(test_valid_file)
{
    struct parsed p;

    parse(&p, "users:\n"
              "  - { id: u1, address: 127.0.0.1, port: 9001, weight: 100 }\n"
              "  - { id: u2, address: \"::1\", port: 9002 }\n"
              "  - id: u3\n"
              "    address: \"[fd00::5]\"\n"
              "    port: 65535\n"
              "    weight: 0\n"
              "    metadata: { zone: a, version: 2, empty: ~ }\n"
              "web:\n"
              "  - { id: w/1, address: 10.0.0.5, port: 1, weight: 10000 }\n"
              "idle: []\n"
              "none:\n");
    ck_assert(p.ok);
    ck_assert_uint_eq(p.invalid, 0);
    ck_assert_uint_eq(p.warnings.n, 0);
    ck_assert_uint_eq(p.set.n, 4);
    assert_record(&p.set.v[0], "users", "u1", "127.0.0.1:9001", 100);
    assert_record(&p.set.v[1], "users", "u2", "[::1]:9002", 100);
    assert_record(&p.set.v[2], "users", "u3", "[fd00::5]:65535", 0);
    assert_record(&p.set.v[3], "web", "w/1", "10.0.0.5:1", 10000);
    ck_assert_ptr_null(p.set.v[0].metadata);
    ck_assert_str_eq(p.set.v[2].metadata, "{\"zone\":\"a\",\"version\":\"2\",\"empty\":null}");
    done(&p);
}
END_TEST

START_TEST(test_empty_file)
{
    static const char *const empties[] = { "", "# nothing\n", "---\n", "~\n" };

    for (size_t i = 0; i < 4; i++) {
        struct parsed p;
        parse(&p, empties[i]);
        ck_assert(p.ok);
        ck_assert_uint_eq(p.set.n, 0);
        ck_assert_uint_eq(p.invalid, 0);
        ck_assert_uint_eq(p.warnings.n, 0);
        done(&p);
    }
}
END_TEST

/* Each bad entry sits between two good ones: it alone is skipped. */
static const struct { const char *entry, *warning; } bad_entries[] = {
    { "{ id: b, address: 127.0.0.1, port: 2, protocol: thrift }",
      "reg.yaml:3:53: service 'svc': instance 'b': protocol must be grpc, h2c, h2, http2, http or http1, "
      "got 'thrift'" },
    { "{ id: b, address: 127.0.0.1, port: 2, protocl: grpc }",
      "reg.yaml:3:43: service 'svc': instance 'b': unknown key 'protocl' (did you mean 'protocol'?)" },
    { "{ address: 127.0.0.1, port: 1 }",
      "reg.yaml:3:5: service 'svc': instance #2: missing required key 'id'" },
    { "{ id: \"\", address: 127.0.0.1, port: 1 }",
      "reg.yaml:3:11: service 'svc': instance #2: id must not be empty" },
    { "{ id: x, port: 1 }",
      "reg.yaml:3:5: service 'svc': instance 'x': missing required key 'address'" },
    { "{ id: x, address: 127.0.0.1 }",
      "reg.yaml:3:5: service 'svc': instance 'x': missing required key 'port'" },
    { "{ id: x, address: db.local, port: 1 }",
      "reg.yaml:3:23: service 'svc': instance 'x': address 'db.local' is not an IP literal "
      "(hostnames are not supported in the file registry)" },
    { "{ id: x, address: \"127.0.0.1:80\", port: 1 }",
      "reg.yaml:3:23: service 'svc': instance 'x': address '127.0.0.1:80' is not an IP "
      "literal (hostnames are not supported in the file registry)" },
    { "{ id: x, address: 127.0.0.1, port: 0 }",
      "reg.yaml:3:40: service 'svc': instance 'x': port out of range (1..65535), got '0'" },
    { "{ id: x, address: 127.0.0.1, port: 65536 }",
      "reg.yaml:3:40: service 'svc': instance 'x': port out of range (1..65535), got '65536'" },
    { "{ id: x, address: 127.0.0.1, port: http }",
      "reg.yaml:3:40: service 'svc': instance 'x': port: expected an integer, got 'http'" },
    { "{ id: x, address: 127.0.0.1, port: 1, weight: 10001 }",
      "reg.yaml:3:51: service 'svc': instance 'x': weight out of range (0..10000), "
      "got '10001'" },
    { "{ id: x, address: 127.0.0.1, port: 1, weight: -1 }",
      "reg.yaml:3:51: service 'svc': instance 'x': weight: expected an integer, got '-1'" },
    { "{ id: x, address: 127.0.0.1, port: 1, wieght: 5 }",
      "reg.yaml:3:43: service 'svc': instance 'x': unknown key 'wieght' (did you mean "
      "'weight'?)" },
    { "{ id: x, address: 127.0.0.1, port: 1, zone: a }",
      "reg.yaml:3:43: service 'svc': instance 'x': unknown key 'zone'" },
    { "{ id: x, address: 127.0.0.1, port: 1, metadata: [a] }",
      "reg.yaml:3:53: service 'svc': instance 'x': metadata: expected a mapping" },
    { "{ id: x, address: 127.0.0.1, port: 1, metadata: { a: [1] } }",
      "reg.yaml:3:58: service 'svc': instance 'x': metadata value for 'a' must be a scalar" },
    { "{ id: x, address: 127.0.0.1, port: 1, port: 2 }",
      "reg.yaml:3:43: service 'svc': duplicate key 'port' (first at line 3)" },
    { "{ id: [x], address: 127.0.0.1, port: 1 }",
      "reg.yaml:3:11: service 'svc': id: expected a string" },
    { "just-a-string", "reg.yaml:3:5: service 'svc': instance #2: expected a mapping" },
    { "{ id: a, address: 127.0.0.1, port: 2 }",
      "reg.yaml:3:5: service 'svc': instance 'a': duplicate id (first at line 2)" },
};

START_TEST(test_invalid_next_to_valid)
{
    char yaml[512];
    struct parsed p;

    snprintf(yaml, sizeof yaml,
             "svc:\n"
             "  - { id: a, address: 127.0.0.1, port: 1 }\n"
             "  - %s\n"
             "  - { id: c, address: 127.0.0.1, port: 3 }\n", bad_entries[_i].entry);
    parse(&p, yaml);
    ck_assert(p.ok);
    ck_assert_uint_eq(p.invalid, 1);
    ck_assert_uint_eq(p.warnings.n, 1);
    ck_assert_str_eq(p.warnings.lines[0], bad_entries[_i].warning);
    ck_assert_uint_eq(p.set.n, 2);
    assert_record(&p.set.v[0], "svc", "a", "127.0.0.1:1", 100);
    assert_record(&p.set.v[1], "svc", "c", "127.0.0.1:3", 100);
    done(&p);
}
END_TEST

/* protocol: the file registry's protocol marker (docs/registry.md). */
START_TEST(test_protocol_key)
{
    struct parsed p;
    parse(&p, "svc:\n"
              "  - { id: a, address: 127.0.0.1, port: 1, protocol: grpc }\n"
              "  - { id: b, address: 127.0.0.1, port: 2, protocol: http1 }\n"
              "  - { id: c, address: 127.0.0.1, port: 3 }\n");
    ck_assert(p.ok);
    ck_assert_uint_eq(p.invalid, 0);
    ck_assert_uint_eq(p.set.n, 3);
    ck_assert_int_eq(p.set.v[0].protocol, WG_RECORD_PROTO_HTTP2);
    ck_assert_int_eq(p.set.v[1].protocol, WG_RECORD_PROTO_HTTP1);
    ck_assert_int_eq(p.set.v[2].protocol, WG_RECORD_PROTO_UNSET);
    done(&p);
}
END_TEST

START_TEST(test_bad_services_skipped)
{
    struct parsed p;

    parse(&p, "a/b:\n  - { id: x, address: 127.0.0.1, port: 1 }\n"
              "scalar: 5\n"
              "good:\n  - { id: g, address: 127.0.0.1, port: 7 }\n"
              "good: []\n");
    ck_assert(p.ok);
    ck_assert_uint_eq(p.invalid, 2);
    ck_assert_uint_eq(p.warnings.n, 3);
    ck_assert_str_eq(p.warnings.lines[0],
                     "reg.yaml:1:1: service 'a/b': invalid service name (non-empty, no '/' or "
                     "spaces)");
    ck_assert_str_eq(p.warnings.lines[1],
                     "reg.yaml:3:9: service 'scalar': expected a list of instances");
    ck_assert_str_eq(p.warnings.lines[2], "reg.yaml:6:1: duplicate key 'good' (first at line 4)");
    ck_assert_uint_eq(p.set.n, 1);
    assert_record(&p.set.v[0], "good", "g", "127.0.0.1:7", 100);
    done(&p);
}
END_TEST

START_TEST(test_same_id_in_two_services)
{
    struct parsed p;

    parse(&p, "a: [{ id: x, address: 127.0.0.1, port: 1 }]\n"
              "b: [{ id: x, address: 127.0.0.1, port: 1 }]\n");
    ck_assert(p.ok);
    ck_assert_uint_eq(p.set.n, 2);
    ck_assert_uint_eq(p.invalid, 0);
    done(&p);
}
END_TEST

START_TEST(test_many_instances_and_duplicates)
{
    size_t cap = 5000 * 64, used = 0;
    char *yaml = malloc(cap);
    struct parsed p;

    ck_assert_ptr_nonnull(yaml);
    used += (size_t)snprintf(yaml + used, cap - used, "big:\n");
    for (int i = 0; i < 4000; i++)
        used += (size_t)snprintf(yaml + used, cap - used,
                                 "  - { id: i%d, address: 10.0.%d.%d, port: %d }\n", i % 3000,
                                 i / 256, i % 256, 1000 + i);
    parse(&p, yaml);
    ck_assert(p.ok);
    ck_assert_uint_eq(p.set.n, 3000);
    ck_assert_uint_eq(p.invalid, 1000);
    ck_assert_uint_eq(p.warnings.n, 101);           /* capped, still counted */
    ck_assert_str_eq(p.warnings.lines[0],
                     "reg.yaml:3002:5: service 'big': instance 'i0': duplicate id (first at "
                     "line 2)");
    done(&p);
    free(yaml);
}
END_TEST

START_TEST(test_unusable_files)
{
    static const struct { const char *yaml, *warning; } cases[] = {
        { "- a\n- b\n",
          "reg.yaml:1:1: expected a mapping of service names to lists of instances" },
        { "just text\n",
          "reg.yaml:1:1: expected a mapping of service names to lists of instances" },
        { "a: [1\n", "reg.yaml:2:1: invalid YAML: did not find expected ',' or ']' (while "
                     "parsing a flow sequence at line 1)" },
        { "a: \xc3\x28\n", "reg.yaml:1:5: invalid YAML: invalid trailing UTF-8 octet (0x28)" },
        { "a: []\n---\nb: []\n", "reg.yaml:2:1: only one YAML document is allowed" },
    };

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct parsed p;
        parse(&p, cases[i].yaml);
        ck_assert(!p.ok);
        ck_assert_uint_eq(p.set.n, 0);
        ck_assert_uint_eq(p.warnings.n, 1);
        ck_assert_str_eq(p.warnings.lines[0], cases[i].warning);
        done(&p);
    }
}
END_TEST

/* A walk cut short by the alias bound applies nothing, even the entries
 * read before it. */
START_TEST(test_alias_bound_applies_nothing)
{
    static const char yaml[] =
        "ok: [{ id: a, address: 127.0.0.1, port: 1 }]\n"
        "x:\n"
        "  - &m0 { id: a, address: 127.0.0.1, port: 1 }\n"
        "  - &m1 { <<: [*m0, *m0, *m0, *m0, *m0, *m0, *m0, *m0, *m0, *m0], id: b }\n"
        "  - &m2 { <<: [*m1, *m1, *m1, *m1, *m1, *m1, *m1, *m1, *m1, *m1], id: c }\n"
        "  - &m3 { <<: [*m2, *m2, *m2, *m2, *m2, *m2, *m2, *m2, *m2, *m2], id: d }\n"
        "  - &m4 { <<: [*m3, *m3, *m3, *m3, *m3, *m3, *m3, *m3, *m3, *m3], id: e }\n"
        "  - &m5 { <<: [*m4, *m4, *m4, *m4, *m4, *m4, *m4, *m4, *m4, *m4], id: f }\n"
        "  - &m6 { <<: [*m5, *m5, *m5, *m5, *m5, *m5, *m5, *m5, *m5, *m5], id: g }\n";
    struct parsed p;

    parse(&p, yaml);
    ck_assert(!p.ok);
    ck_assert_uint_eq(p.set.n, 0);
    ck_assert_uint_ge(p.warnings.n, 1);
    done(&p);
}
END_TEST

START_TEST(test_parse_file_from_disk)
{
    char path[] = "/tmp/wg-check-record-XXXXXX";
    int fd = mkstemp(path);
    static const char text[] = "demo:\n  - { id: d1, address: 127.0.0.1, port: 9001 }\n";
    struct wg_record_set set = { 0 };
    struct wg_errors w = { 0 };
    unsigned invalid = 7;

    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, text, sizeof text - 1), (int)(sizeof text - 1));
    close(fd);
    ck_assert(wg_record_parse_file(path, &set, &w, &invalid));
    ck_assert_uint_eq(set.n, 1);
    ck_assert_uint_eq(invalid, 0);
    assert_record(&set.v[0], "demo", "d1", "127.0.0.1:9001", 100);
    wg_record_set_clear(&set);
    unlink(path);
    ck_assert(!wg_record_parse_file(path, &set, &w, &invalid));
    ck_assert_uint_eq(w.n, 1);
    ck_assert_ptr_nonnull(strstr(w.lines[0], ":1:1: cannot open '"));
    ck_assert_ptr_nonnull(strstr(w.lines[0], "': No such file or directory"));
    wg_errors_free(&w);
}
END_TEST

START_TEST(test_set_sort_push_clear)
{
    struct wg_record_set set = { 0 };
    static const char *const keys[][2] = {
        { "b", "2" }, { "a", "9" }, { "b", "1" }, { "a", "10" },
    };

    for (size_t i = 0; i < 4; i++) {
        struct wg_record r = { 0 };
        r.service = strdup(keys[i][0]);
        r.id = strdup(keys[i][1]);
        r.metadata = strdup("{}");
        ck_assert(wg_record_set_push(&set, &r));
        ck_assert_ptr_null(r.service);              /* moved */
        wg_record_free(&r);                         /* safe on the moved-from record */
    }
    wg_record_set_sort(&set);
    ck_assert_str_eq(set.v[0].service, "a");
    ck_assert_str_eq(set.v[0].id, "10");
    ck_assert_str_eq(set.v[1].id, "9");
    ck_assert_str_eq(set.v[2].id, "1");
    ck_assert_str_eq(set.v[3].id, "2");
    wg_record_set_clear(&set);
    ck_assert_uint_eq(set.n, 0);
    ck_assert_ptr_null(set.v);
    wg_record_set_sort(&set);
}
END_TEST

START_TEST(test_sockaddr_text)
{
    struct sockaddr_storage ss;
    struct sockaddr_in *in4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
    char buf[64], tiny[6];

    memset(&ss, 0, sizeof ss);
    in4->sin_family = AF_INET;
    in4->sin_port = htons(8080);
    inet_pton(AF_INET, "10.1.2.3", &in4->sin_addr);
    wg_sockaddr_text((struct sockaddr *)&ss, buf, sizeof buf);
    ck_assert_str_eq(buf, "10.1.2.3:8080");
    wg_sockaddr_text((struct sockaddr *)&ss, tiny, sizeof tiny);
    ck_assert_str_eq(tiny, "10.1.");
    memset(&ss, 0, sizeof ss);
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons(443);
    inet_pton(AF_INET6, "fd00:0::5", &in6->sin6_addr);
    wg_sockaddr_text((struct sockaddr *)&ss, buf, sizeof buf);
    ck_assert_str_eq(buf, "[fd00::5]:443");
    ss.ss_family = AF_UNIX;
    wg_sockaddr_text((struct sockaddr *)&ss, buf, sizeof buf);
    ck_assert_str_eq(buf, "(family 1)");
}
END_TEST

static Suite *record_suite(void)
{
    Suite *s = suite_create("record");
    TCase *file = tcase_create("file"), *set = tcase_create("set");

    tcase_add_test(file, test_valid_file);
    tcase_add_test(file, test_empty_file);
    tcase_add_loop_test(file, test_invalid_next_to_valid, 0,
                        sizeof bad_entries / sizeof bad_entries[0]);
    tcase_add_test(file, test_bad_services_skipped);
    tcase_add_test(file, test_protocol_key);
    tcase_add_test(file, test_same_id_in_two_services);
    tcase_add_test(file, test_many_instances_and_duplicates);
    tcase_add_test(file, test_unusable_files);
    tcase_add_test(file, test_alias_bound_applies_nothing);
    tcase_add_test(file, test_parse_file_from_disk);
    tcase_add_test(set, test_set_sort_push_clear);
    tcase_add_test(set, test_sockaddr_text);
    suite_add_tcase(s, file);
    suite_add_tcase(s, set);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(record_suite());
    int failed;

    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
