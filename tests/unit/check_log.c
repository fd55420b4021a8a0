/* check_log — the access log: line formats (text, json), escaping, cuts,
 * timestamps, and the per-worker rings end to end through a file. */
#include <check.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "waygate/log.h"

static const struct timespec T0 = { 1795610309, 123456789 };   /* 2026-11-25T12:38:29.123Z */

static struct wg_access_entry tcp_entry(void)
{
    return (struct wg_access_entry){
        .client = "127.0.0.1:40000", .listener = "t", .service = "users", .upstream = "a",
        .reason = "eof", .bytes_in = 4, .bytes_out = 5, .duration_us = 1234567,
        .connect_us = 120, .retries = 1,
    };
}

static struct wg_access_entry http_entry(void)
{
    return (struct wg_access_entry){
        .client = "[::1]:5", .listener = "edge", .service = "web", .upstream = "w1",
        .method = "GET", .path = "/a?b=c", .path_len = 6, .status = 200,
        .request_id = "0123abcd", .request_id_len = 8, .bytes_in = 80, .bytes_out = 1000,
        .duration_us = 5, .connect_us = 0,
    };
}

static const char *fmt(enum wg_access_format f, const struct wg_access_entry *e, char *buf)
{
    size_t n = wg_access_format(f, e, &T0, buf, WG_ACCESS_LINE_MAX);
    ck_assert_uint_lt(n, WG_ACCESS_LINE_MAX);
    ck_assert_int_eq(buf[n - 1], '\n');
    ck_assert_ptr_null(memchr(buf, '\n', n - 1));
    buf[n] = '\0';
    return buf;
}

/* Parses a json line; every line must be one valid object. */
static json_t *parse(const char *line)
{
    json_error_t err;
    json_t *j = json_loads(line, 0, &err);
    ck_assert_msg(j != NULL, "invalid JSON (%s): %s", err.text, line);
    ck_assert(json_is_object(j));
    return j;
}

START_TEST(text_tcp_line)
{
    char buf[WG_ACCESS_LINE_MAX];
    struct wg_access_entry e = tcp_entry();
    ck_assert_str_eq(fmt(WG_ACCESS_TEXT, &e, buf),
                     "2026-11-25T12:38:29.123Z client=127.0.0.1:40000 listener=t service=users "
                     "upstream=a method=- path=- status=- reason=eof bytes_in=4 bytes_out=5 "
                     "duration_ms=1234.567 connect_ms=0.120 retries=1 request_id=-\n");
}
END_TEST

START_TEST(text_http_line)
{
    char buf[WG_ACCESS_LINE_MAX];
    struct wg_access_entry e = http_entry();
    ck_assert_str_eq(fmt(WG_ACCESS_TEXT, &e, buf),
                     "2026-11-25T12:38:29.123Z client=[::1]:5 listener=edge service=web "
                     "upstream=w1 method=GET path=\"/a?b=c\" status=200 reason=- bytes_in=80 "
                     "bytes_out=1000 duration_ms=0.005 connect_ms=0.000 retries=0 "
                     "request_id=0123abcd\n");
}
END_TEST

START_TEST(trace_id_only_when_known)
{
    char buf[WG_ACCESS_LINE_MAX];
    struct wg_access_entry e = http_entry();
    e.trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    ck_assert_ptr_nonnull(strstr(fmt(WG_ACCESS_TEXT, &e, buf),
                                 " request_id=0123abcd trace_id=4bf92f3577b34da6a3ce929d0e0e4736\n"));
    json_t *j = parse(fmt(WG_ACCESS_JSON, &e, buf));
    ck_assert_str_eq(json_string_value(json_object_get(j, "trace_id")), e.trace_id);
    json_decref(j);
}
END_TEST

START_TEST(kind_only_on_subrequest_lines)
{
    char buf[WG_ACCESS_LINE_MAX];
    struct wg_access_entry e = http_entry();
    ck_assert_ptr_null(strstr(fmt(WG_ACCESS_TEXT, &e, buf), "kind="));
    e.trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    e.kind = "auth";
    ck_assert_ptr_nonnull(strstr(fmt(WG_ACCESS_TEXT, &e, buf),
                                 " trace_id=4bf92f3577b34da6a3ce929d0e0e4736 kind=auth\n"));
    json_t *j = parse(fmt(WG_ACCESS_JSON, &e, buf));
    ck_assert_str_eq(json_string_value(json_object_get(j, "kind")), "auth");
    json_decref(j);
}
END_TEST

START_TEST(json_tcp_line)
{
    char buf[WG_ACCESS_LINE_MAX];
    struct wg_access_entry e = tcp_entry();
    e.connect_us = -1;
    e.upstream = NULL;
    ck_assert_str_eq(fmt(WG_ACCESS_JSON, &e, buf),
                     "{\"time\":\"2026-11-25T12:38:29.123Z\",\"client\":\"127.0.0.1:40000\","
                     "\"listener\":\"t\",\"service\":\"users\",\"upstream\":null,\"method\":null,"
                     "\"path\":null,\"status\":null,\"reason\":\"eof\",\"bytes_in\":4,"
                     "\"bytes_out\":5,\"duration_ms\":1234.567,\"connect_ms\":null,\"retries\":1,"
                     "\"request_id\":null}\n");
    json_decref(parse(buf));
}
END_TEST

START_TEST(json_escapes_everything)
{
    char buf[WG_ACCESS_LINE_MAX];
    static const char path[] = "/q\"\\\n\t\x01\x7f\xc3\xbc\xff\xc3";   /* ends mid-sequence */
    struct wg_access_entry e = http_entry();
    e.path = path;
    e.path_len = sizeof path - 1;
    e.upstream = "id \"x\"";
    json_t *j = parse(fmt(WG_ACCESS_JSON, &e, buf));
    ck_assert_ptr_nonnull(strstr(buf, "\"path\":\"/q\\\"\\\\\\n\\t\\u0001\\u007f\xc3\xbc"
                                      "\\ufffd\\ufffd\""));
    ck_assert_str_eq(json_string_value(json_object_get(j, "upstream")), "id \"x\"");
    ck_assert_str_eq(json_string_value(json_object_get(j, "path")),
                     "/q\"\\\n\t\x01\x7f\xc3\xbc\xef\xbf\xbd\xef\xbf\xbd");
    ck_assert_int_eq(json_integer_value(json_object_get(j, "status")), 200);
    ck_assert(json_is_real(json_object_get(j, "connect_ms")));
    json_decref(j);
}
END_TEST

START_TEST(text_quotes_what_is_not_bare)
{
    char buf[WG_ACCESS_LINE_MAX];
    static const char path[] = "/a b=c\"\x01\xc3\xbc";
    struct wg_access_entry e = http_entry();
    e.path = path;
    e.path_len = sizeof path - 1;
    e.service = "";
    e.reason = "x=y";
    fmt(WG_ACCESS_TEXT, &e, buf);
    ck_assert_ptr_nonnull(strstr(buf, " path=\"/a b=c\\\"\\x01\xc3\xbc\" "));
    ck_assert_ptr_nonnull(strstr(buf, " service=\"\" "));
    ck_assert_ptr_nonnull(strstr(buf, " reason=\"x=y\" "));
}
END_TEST

START_TEST(long_values_are_cut)
{
    char buf[WG_ACCESS_LINE_MAX];
    char *path = malloc(100000), *id = malloc(5000);
    ck_assert(path && id);
    memset(path, '\x01', 100000);          /* the worst case: 6 bytes each in json */
    memset(id, 'i', 4999);
    id[4999] = '\0';
    struct wg_access_entry e = http_entry();
    e.path = path;
    e.path_len = 100000;
    e.client = e.listener = e.service = e.upstream = e.method = e.reason = id;
    e.request_id = id;
    e.request_id_len = 4999;
    for (int f = WG_ACCESS_TEXT; f <= WG_ACCESS_JSON; f++) {
        fmt((enum wg_access_format)f, &e, buf);
        ck_assert_ptr_nonnull(strstr(buf, "...\""));
        ck_assert_ptr_nonnull(strstr(buf, "request_id"));
        ck_assert_uint_lt(strlen(buf), 4096 + 8 * 384 + 512);
        if (f == WG_ACCESS_JSON)
            json_decref(parse(buf));
    }
    free(path);
    free(id);
}
END_TEST

START_TEST(timestamps)
{
    static const struct { time_t t; long ns; const char *want; } cases[] = {
        { 0, 0, "1970-01-01T00:00:00.000Z" },
        { 1709251199, 999999999, "2024-02-29T23:59:59.999Z" },
        { 951868800, 1000000, "2000-03-01T00:00:00.001Z" },
        { -1, 0, "1969-12-31T23:59:59.000Z" },
        { 4102444800, 0, "2100-01-01T00:00:00.000Z" },
    };
    char buf[WG_ACCESS_LINE_MAX];
    struct wg_access_entry e = tcp_entry();
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        struct timespec ts = { cases[k].t, cases[k].ns };
        wg_access_format(WG_ACCESS_TEXT, &e, &ts, buf, sizeof buf);
        ck_assert_msg(strncmp(buf, cases[k].want, strlen(cases[k].want)) == 0, "%s != %s",
                      buf, cases[k].want);
    }
}
END_TEST

static size_t count_lines(const char *path, int *json_lines)
{
    FILE *f = fopen(path, "r");
    ck_assert_ptr_nonnull(f);
    char line[WG_ACCESS_LINE_MAX];
    size_t n = 0;
    *json_lines = 0;
    while (fgets(line, sizeof line, f)) {
        ck_assert_int_eq(line[strlen(line) - 1], '\n');
        if (line[0] == '{') {
            json_decref(parse(line));
            (*json_lines)++;
        }
        n++;
    }
    fclose(f);
    return n;
}

/* Lines from several rings reach the file whole; every line is written or
 * counted as dropped; off writes nothing. */
START_TEST(rings_to_file)
{
    char path[] = "/tmp/check_log_XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    close(fd);
    struct wg_config cfg = { 0 };
    cfg.log.access_log = path;
    cfg.log.access_format = WG_ACCESS_JSON;
    struct wg_worker_log *a = wg_worker_log_new(), *b = wg_worker_log_new();
    ck_assert(a && b);
    struct wg_access_entry e = http_entry();
    wg_access_log(a, &e);                   /* no destination yet: nothing */
    ck_assert_int_eq(wg_access_log_open(&cfg), 0);
    uint64_t dropped = wg_access_log_dropped();
    for (int k = 0; k < 20000; k++)
        wg_access_log(k % 2 ? a : b, &e);
    wg_access_log_flush();
    int json_lines;
    size_t written = count_lines(path, &json_lines);
    ck_assert_uint_eq(written + (wg_access_log_dropped() - dropped), 20000);
    ck_assert_int_eq(json_lines, (int)written);
    cfg.log.access_log = "off";
    ck_assert_int_eq(wg_access_log_open(&cfg), 0);
    wg_access_log(a, &e);
    wg_worker_log_free(a);
    wg_worker_log_free(b);
    wg_access_log_close();
    ck_assert_uint_eq(count_lines(path, &json_lines), written);
    cfg.log.access_log = "/nonexistent-dir/x.log";
    ck_assert_int_eq(wg_access_log_open(&cfg), -1);
    unlink(path);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("log");
    TCase *tc = tcase_create("access");
    tcase_add_test(tc, trace_id_only_when_known);
    tcase_add_test(tc, kind_only_on_subrequest_lines);
    tcase_add_test(tc, text_tcp_line);
    tcase_add_test(tc, text_http_line);
    tcase_add_test(tc, json_tcp_line);
    tcase_add_test(tc, json_escapes_everything);
    tcase_add_test(tc, text_quotes_what_is_not_bare);
    tcase_add_test(tc, long_values_are_cut);
    tcase_add_test(tc, timestamps);
    tcase_add_test(tc, rings_to_file);
    tcase_set_timeout(tc, 60);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
