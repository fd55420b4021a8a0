/* check_etcd_client — the pure parts of the etcd client: base64, the
 * response reader (watch stream framing across arbitrary chunk and read
 * boundaries), JSON message decoding and request bodies. */
#include <check.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "waygate/etcd_client.h"

/* ---- base64 ---- */

START_TEST(base64_round_trip)
{
    static const char *const cases[][2] = {
        { "", "" }, { "f", "Zg==" }, { "fo", "Zm8=" }, { "foo", "Zm9v" },
        { "/services/", "L3NlcnZpY2VzLw==" }, { "foobar", "Zm9vYmFy" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char *enc = wg_base64_encode(cases[i][0], strlen(cases[i][0])), *dec;
        size_t n;
        ck_assert_str_eq(enc, cases[i][1]);
        ck_assert(wg_base64_decode(enc, strlen(enc), &dec, &n));
        ck_assert_uint_eq(n, strlen(cases[i][0]));
        ck_assert(memcmp(dec, cases[i][0], n) == 0);
        free(enc);
        free(dec);
    }
    unsigned char all[256];
    for (int i = 0; i < 256; i++)
        all[i] = (unsigned char)i;
    char *enc = wg_base64_encode(all, sizeof all), *dec;
    size_t n;
    ck_assert(wg_base64_decode(enc, strlen(enc), &dec, &n));
    ck_assert_uint_eq(n, 256);
    ck_assert(memcmp(dec, all, 256) == 0);
    free(enc);
    free(dec);
    static const char *const bad[] = { "Zg=", "Z===", "Zg=a", "Z!==", "====", "Zm9v\n", "Zh==",
                                       "Zm9=" };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        ck_assert_msg(!wg_base64_decode(bad[i], strlen(bad[i]), &dec, &n), "%s", bad[i]);
        ck_assert_ptr_null(dec);
    }
}
END_TEST

/* ---- reader ---- */

struct collected {
    char msgs[16][512];
    size_t n;
};

static bool collect(void *arg, const char *msg, size_t len)
{
    struct collected *c = arg;
    ck_assert_uint_lt(c->n, 16);
    ck_assert_uint_lt(len, 512);
    memcpy(c->msgs[c->n], msg, len);
    c->msgs[c->n++][len] = '\0';
    return true;
}

static const char STREAM[] =
    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    "2e\r\n{\"result\":{\"header\":{\"revision\":\"2\"},\"created\"\r\n"
    "8\r\n:true}}\n\r\n"
    "10\r\n{\"result\":{}}\n{\"\r\n"
    "3\r\na\":\r\n"
    "4\r\n1}\n\n\r\n"
    "0\r\n\r\n";

static void expect_stream(const struct collected *c)
{
    ck_assert_uint_eq(c->n, 3);
    ck_assert_str_eq(c->msgs[0], "{\"result\":{\"header\":{\"revision\":\"2\"},\"created\":true}}");
    ck_assert_str_eq(c->msgs[1], "{\"result\":{}}");
    ck_assert_str_eq(c->msgs[2], "{\"a\":1}");
}

/* Every split of the stream into two reads, and one byte per read. */
START_TEST(stream_any_split)
{
    size_t len = strlen(STREAM);
    for (size_t cut = 0; cut <= len; cut++) {
        struct wg_etcd_reader r;
        struct collected c = { .n = 0 };
        wg_etcd_reader_init(&r, true, 1 << 20);
        enum wg_etcd_read st = wg_etcd_reader_feed(&r, STREAM, cut, collect, &c);
        if (st == WG_ETCD_READ_AGAIN)
            st = wg_etcd_reader_feed(&r, STREAM + cut, len - cut, collect, &c);
        ck_assert_msg(st == WG_ETCD_READ_DONE, "cut %zu: %d %s", cut, st, r.why);
        ck_assert_uint_eq(r.status, 200);
        expect_stream(&c);
        wg_etcd_reader_free(&r);
    }
    struct wg_etcd_reader r;
    struct collected c = { .n = 0 };
    enum wg_etcd_read st = WG_ETCD_READ_AGAIN;
    wg_etcd_reader_init(&r, true, 1 << 20);
    for (size_t i = 0; i < len && st == WG_ETCD_READ_AGAIN; i++)
        st = wg_etcd_reader_feed(&r, STREAM + i, 1, collect, &c);
    ck_assert_int_eq(st, WG_ETCD_READ_DONE);
    expect_stream(&c);
    wg_etcd_reader_free(&r);
}
END_TEST

START_TEST(unary_body)
{
    static const char RESP[] = "HTTP/1.1 400 Bad Request\r\nContent-Length: 27\r\n\r\n"
                               "{\"error\":\"x\",\"code\":11}\n   ";
    struct wg_etcd_reader r;
    struct collected c = { .n = 0 };
    wg_etcd_reader_init(&r, false, 1 << 20);
    ck_assert_int_eq(wg_etcd_reader_feed(&r, RESP, 20, collect, &c), WG_ETCD_READ_AGAIN);
    ck_assert_int_eq(wg_etcd_reader_feed(&r, RESP + 20, strlen(RESP) - 20, collect, &c),
                     WG_ETCD_READ_DONE);
    ck_assert_uint_eq(r.status, 400);
    ck_assert_uint_eq(c.n, 1);
    ck_assert_int_eq(wg_etcd_parse_error(c.msgs[0], strlen(c.msgs[0]), c.msgs[1], 100), 11);
    ck_assert_str_eq(c.msgs[1], "x");
    wg_etcd_reader_free(&r);
}
END_TEST

START_TEST(reader_errors)
{
    static const char *const bad[] = {
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        "HTTP/1.1 200 OK\nContent-Length: 1\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        struct wg_etcd_reader r;
        struct collected c = { .n = 0 };
        wg_etcd_reader_init(&r, true, 1 << 20);
        ck_assert_int_eq(wg_etcd_reader_feed(&r, bad[i], strlen(bad[i]), collect, &c),
                         WG_ETCD_READ_ERROR);
        ck_assert_ptr_nonnull(r.why);
        wg_etcd_reader_free(&r);
    }
    /* truncated by the peer */
    struct wg_etcd_reader r;
    struct collected c = { .n = 0 };
    const char *t = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab";
    wg_etcd_reader_init(&r, true, 1 << 20);
    ck_assert_int_eq(wg_etcd_reader_feed(&r, t, strlen(t), collect, &c), WG_ETCD_READ_AGAIN);
    ck_assert_int_eq(wg_etcd_reader_eof(&r, collect, &c), WG_ETCD_READ_ERROR);
    wg_etcd_reader_free(&r);
    /* a message over the limit */
    const char *big = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n20\r\n"
                      "0123456789012345678901234567890\n\r\n";
    wg_etcd_reader_init(&r, true, 16);
    ck_assert_int_eq(wg_etcd_reader_feed(&r, big, strlen(big), collect, &c), WG_ETCD_READ_ERROR);
    wg_etcd_reader_free(&r);
}
END_TEST

/* ---- messages ---- */

START_TEST(watch_events)
{
    const char *m =
        "{\"result\":{\"header\":{\"cluster_id\":\"324952591200643719\",\"member_id\":\"1\","
        "\"revision\":\"4\",\"raft_term\":\"2\"},\"events\":["
        "{\"kv\":{\"key\":\"L3NlcnZpY2VzL3VzZXJzL2I=\",\"create_revision\":\"3\","
        "\"mod_revision\":\"3\",\"version\":\"1\",\"value\":\"MTAuMC4wLjI6ODA=\"}},"
        "{\"type\":\"DELETE\",\"kv\":{\"key\":\"L3NlcnZpY2VzL3VzZXJzL2E=\",\"mod_revision\":\"4\"},"
        "\"prev_kv\":{\"key\":\"L3NlcnZpY2VzL3VzZXJzL2E=\",\"value\":\"eA==\"}}]}}";
    struct wg_etcd_watch_response w;
    const char *why;
    ck_assert(wg_etcd_parse_watch(m, strlen(m), &w, &why));
    ck_assert_uint_eq(w.header.cluster_id, 324952591200643719ULL);
    ck_assert_int_eq(w.header.revision, 4);
    ck_assert_uint_eq(w.n_events, 2);
    ck_assert(!w.events[0].deleted);
    ck_assert_str_eq(w.events[0].kv.key, "/services/users/b");
    ck_assert_str_eq(w.events[0].kv.value, "10.0.0.2:80");
    ck_assert_int_eq(w.events[0].kv.mod_revision, 3);
    ck_assert(w.events[1].deleted);
    ck_assert_str_eq(w.events[1].kv.value, "");
    ck_assert(!wg_etcd_watch_is_progress(&w));
    wg_etcd_watch_response_free(&w);
}
END_TEST

START_TEST(watch_control_messages)
{
    struct wg_etcd_watch_response w;
    const char *why;
    const char *created = "{\"result\":{\"header\":{\"revision\":\"9\"},\"created\":true}}";
    ck_assert(wg_etcd_parse_watch(created, strlen(created), &w, &why));
    ck_assert(w.created && !wg_etcd_watch_is_progress(&w));
    wg_etcd_watch_response_free(&w);
    const char *progress = "{\"result\":{\"header\":{\"revision\":\"12\"}}}";
    ck_assert(wg_etcd_parse_watch(progress, strlen(progress), &w, &why));
    ck_assert(wg_etcd_watch_is_progress(&w));
    ck_assert_int_eq(w.header.revision, 12);
    wg_etcd_watch_response_free(&w);
    const char *compacted = "{\"result\":{\"header\":{\"revision\":\"20\"},\"canceled\":true,"
                            "\"compact_revision\":\"15\",\"cancel_reason\":\"compacted\"}}";
    ck_assert(wg_etcd_parse_watch(compacted, strlen(compacted), &w, &why));
    ck_assert(w.canceled);
    ck_assert_int_eq(w.compact_revision, 15);
    ck_assert_str_eq(w.cancel_reason, "compacted");
    wg_etcd_watch_response_free(&w);
    const char *err = "{\"error\":{\"grpc_code\":14,\"http_code\":503,"
                      "\"message\":\"etcdserver: no leader\",\"http_status\":\"Unavailable\"}}";
    ck_assert(wg_etcd_parse_watch(err, strlen(err), &w, &why));
    ck_assert_int_eq(w.error_code, 14);
    ck_assert_str_eq(w.error_message, "etcdserver: no leader");
    wg_etcd_watch_response_free(&w);
    const char *frag = "{\"result\":{\"header\":{\"revision\":\"3\"},\"fragment\":true,"
                       "\"events\":[{\"kv\":{\"key\":\"YQ==\"}}]}}";
    ck_assert(wg_etcd_parse_watch(frag, strlen(frag), &w, &why));
    ck_assert(w.fragment);
    ck_assert_uint_eq(w.n_events, 1);
    wg_etcd_watch_response_free(&w);
    static const char *const bad[] = {
        "", "[]", "{}", "{\"result\":5}", "{\"result\":{\"header\":{\"revision\":\"x\"}}}",
        "{\"result\":{\"events\":[{\"kv\":{\"key\":\"!!\"}}]}}",
        "{\"result\":{\"events\":[{\"type\":\"BOGUS\",\"kv\":{\"key\":\"YQ==\"}}]}}",
        "{\"result\":{\"events\":[{\"kv\":{}}]}}", "{\"error\":{\"grpc_code\":\"14\"}}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        ck_assert_msg(!wg_etcd_parse_watch(bad[i], strlen(bad[i]), &w, &why), "%s", bad[i]);
        ck_assert_uint_eq(w.n_events, 0);
    }
}
END_TEST

/* The next page's start read off a page's text before it is parsed: the
 * last kv's key when the page says more, nothing otherwise. */
START_TEST(range_peek_last_key)
{
    const char *m = "{\"header\":{\"cluster_id\":\"7\",\"revision\":\"4\"},\"kvs\":["
                    "{\"key\":\"YQ==\",\"mod_revision\":\"3\",\"value\":\"Yg==\"},"
                    "{\"key\":\"L3MvYWI=\",\"mod_revision\":\"4\",\"value\":\"Yg==\"}],"
                    "\"more\":true,\"count\":\"3\"}";
    char *key = NULL;
    size_t len = 0;
    ck_assert(wg_etcd_range_peek_last_key(m, strlen(m), &key, &len));
    ck_assert_str_eq(key, "/s/ab");
    ck_assert_uint_eq(len, 5);
    free(key);
    const char *last = "{\"header\":{\"revision\":\"4\"},\"kvs\":[{\"key\":\"YQ==\"}],\"count\":\"1\"}";
    ck_assert(!wg_etcd_range_peek_last_key(last, strlen(last), &key, &len));
    const char *spaced = "{\"kvs\": [{\"key\": \"YQ==\"}], \"more\": true}";
    ck_assert(!wg_etcd_range_peek_last_key(spaced, strlen(spaced), &key, &len));
    const char *cut = "{\"kvs\":[{\"key\":\"YQ==";
    ck_assert(!wg_etcd_range_peek_last_key(cut, strlen(cut), &key, &len));
    const char *nokeys = "{\"more\":true}";
    ck_assert(!wg_etcd_range_peek_last_key(nokeys, strlen(nokeys), &key, &len));
}
END_TEST

START_TEST(range_and_auth)
{
    const char *m = "{\"header\":{\"cluster_id\":\"7\",\"revision\":\"4\"},\"kvs\":["
                    "{\"key\":\"YQ==\",\"mod_revision\":\"3\",\"value\":\"Yg==\"}],"
                    "\"more\":true,\"count\":\"2\"}";
    struct wg_etcd_range_response r;
    const char *why;
    ck_assert(wg_etcd_parse_range(m, strlen(m), &r, &why));
    ck_assert_int_eq(r.header.revision, 4);
    ck_assert_uint_eq(r.header.cluster_id, 7);
    ck_assert(r.more);
    ck_assert_int_eq(r.count, 2);
    ck_assert_uint_eq(r.n_kvs, 1);
    ck_assert_str_eq(r.kvs[0].key, "a");
    ck_assert_str_eq(r.kvs[0].value, "b");
    wg_etcd_range_response_free(&r);
    const char *empty = "{\"header\":{\"revision\":\"4\"}}";
    ck_assert(wg_etcd_parse_range(empty, strlen(empty), &r, &why));
    ck_assert_uint_eq(r.n_kvs, 0);
    ck_assert(!r.more);
    ck_assert(!wg_etcd_parse_range("{}", 2, &r, &why));
    const char *tm = "{\"header\":{},\"token\":\"abc.12\"}";
    char *tok = wg_etcd_parse_token(tm, strlen(tm));
    ck_assert_str_eq(tok, "abc.12");
    free(tok);
    ck_assert_ptr_null(wg_etcd_parse_token("{}", 2));
    char msg[64];
    ck_assert_int_eq(wg_etcd_parse_error("not json", 8, msg, sizeof msg), 0);
}
END_TEST

START_TEST(request_bodies)
{
    char *b = wg_etcd_range_request("/services/", NULL, 0, 7, 1000, false);
    json_t *j = json_loads(b, 0, NULL);
    ck_assert_str_eq(json_string_value(json_object_get(j, "key")), "L3NlcnZpY2VzLw==");
    ck_assert_str_eq(json_string_value(json_object_get(j, "range_end")), "L3NlcnZpY2VzMA==");
    ck_assert_str_eq(json_string_value(json_object_get(j, "revision")), "7");
    ck_assert_str_eq(json_string_value(json_object_get(j, "limit")), "1000");
    ck_assert_ptr_null(json_object_get(j, "count_only"));
    json_decref(j);
    free(b);
    b = wg_etcd_range_request("/s/", "/s/a\0", 5, 0, 0, true);
    j = json_loads(b, 0, NULL);
    ck_assert_str_eq(json_string_value(json_object_get(j, "key")), "L3MvYQA=");
    ck_assert(json_is_true(json_object_get(j, "count_only")));
    json_decref(j);
    free(b);
    b = wg_etcd_watch_request("/services/", 42);
    j = json_loads(b, 0, NULL);
    json_t *c = json_object_get(j, "create_request");
    ck_assert_str_eq(json_string_value(json_object_get(c, "start_revision")), "42");
    ck_assert(json_is_true(json_object_get(c, "prev_kv")));
    ck_assert(json_is_true(json_object_get(c, "progress_notify")));
    ck_assert(json_is_true(json_object_get(c, "fragment")));
    json_decref(j);
    free(b);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("etcd_client");
    TCase *tc = tcase_create("pure");
    tcase_add_test(tc, base64_round_trip);
    tcase_add_test(tc, stream_any_split);
    tcase_add_test(tc, unary_body);
    tcase_add_test(tc, reader_errors);
    tcase_add_test(tc, watch_events);
    tcase_add_test(tc, watch_control_messages);
    tcase_add_test(tc, range_and_auth);
    tcase_add_test(tc, range_peek_last_key);
    tcase_add_test(tc, request_bodies);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
