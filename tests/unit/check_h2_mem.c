/* h2_mem: nghttp2's allocator — size classes, reuse, realloc, bounds, and
 * a real session pair on it. */
#include <check.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "waygate/h2_mem.h"

START_TEST(reuses_a_freed_block_of_its_class)
{
    nghttp2_mem *m = wg_h2_mem();
    char *a = m->malloc(100, m->mem_user_data);
    ck_assert_ptr_nonnull(a);
    ck_assert_uint_eq((uintptr_t)a % 16, 0);
    memset(a, 'x', 100);
    m->free(a, m->mem_user_data);
    char *b = m->malloc(128, m->mem_user_data);     /* the same class (65..128) */
    ck_assert_ptr_eq(a, b);
    memset(b, 'y', 128);
    char *c = m->malloc(129, m->mem_user_data);     /* the next one */
    ck_assert_ptr_ne(c, b);
    m->free(b, m->mem_user_data);
    m->free(c, m->mem_user_data);
    m->free(NULL, m->mem_user_data);
    char *big = m->malloc(100000, m->mem_user_data);
    ck_assert_ptr_nonnull(big);
    memset(big, 'z', 100000);
    m->free(big, m->mem_user_data);
    ck_assert_ptr_null(m->malloc(SIZE_MAX - 8, m->mem_user_data));
    ck_assert_ptr_null(m->calloc(SIZE_MAX / 2, 4, m->mem_user_data));
}
END_TEST

START_TEST(calloc_zeroes_a_reused_block)
{
    nghttp2_mem *m = wg_h2_mem();
    char *a = m->malloc(64, m->mem_user_data);
    memset(a, 0xff, 64);
    m->free(a, m->mem_user_data);
    unsigned char *b = m->calloc(8, 8, m->mem_user_data);
    ck_assert_ptr_eq(a, b);
    for (int i = 0; i < 64; i++)
        ck_assert_uint_eq(b[i], 0);
    m->free(b, m->mem_user_data);
}
END_TEST

START_TEST(realloc_keeps_the_bytes)
{
    nghttp2_mem *m = wg_h2_mem();
    char *a = m->realloc(NULL, 20, m->mem_user_data);
    memcpy(a, "0123456789abcdefghi", 20);
    ck_assert_ptr_eq(m->realloc(a, 32, m->mem_user_data), a);   /* fits its class */
    char *b = m->realloc(a, 1000, m->mem_user_data);
    ck_assert_str_eq(b, "0123456789abcdefghi");
    char *c = m->realloc(b, 50000, m->mem_user_data);          /* to malloc's */
    ck_assert_str_eq(c, "0123456789abcdefghi");
    c[49999] = 1;
    char *d = m->realloc(c, 10, m->mem_user_data);             /* stays malloc's */
    ck_assert_int_eq(memcmp(d, "0123456789", 10), 0);
    m->free(d, m->mem_user_data);
}
END_TEST

/* Past WG_H2_MEM_SPARE_BYTES a class keeps no more: a block freed then is
 * not served again. */
START_TEST(spares_are_bounded)
{
    nghttp2_mem *m = wg_h2_mem();
    enum { N = WG_H2_MEM_SPARE_BYTES / 2048 + 4 };
    void *p[N];
    for (int i = 0; i < N; i++)
        ck_assert_ptr_nonnull(p[i] = m->malloc(2048, m->mem_user_data));
    for (int i = 0; i < N; i++)
        m->free(p[i], m->mem_user_data);
    /* the kept ones come back in LIFO order; the last four freed were not kept */
    for (int i = 0; i < N - 4; i++) {
        void *q = m->malloc(2048, m->mem_user_data);
        ck_assert_ptr_eq(q, p[N - 5 - i]);
    }
    for (int i = 0; i < N - 4; i++)
        m->free(p[i], m->mem_user_data);
}
END_TEST

/* Blocks freed on another thread are that thread's spares, freed when it
 * exits (LeakSanitizer would say otherwise under ASan; the main thread's
 * go at exit()). */
static void *other(void *arg)
{
    nghttp2_mem *m = wg_h2_mem();
    m->free(arg, m->mem_user_data);
    void *q = m->malloc(200, m->mem_user_data);
    m->free(q, m->mem_user_data);       /* a spare again: freed at this thread's exit */
    return q == arg ? q : NULL;
}

START_TEST(another_thread_keeps_its_own)
{
    nghttp2_mem *m = wg_h2_mem();
    void *a = m->malloc(200, m->mem_user_data), *res = NULL;
    pthread_t t;
    ck_assert_int_eq(pthread_create(&t, NULL, other, a), 0);
    ck_assert_int_eq(pthread_join(t, &res), 0);
    ck_assert_ptr_eq(res, a);           /* served again there */
}
END_TEST

/* A client and a server session on it exchange a request and a response. */
static ssize_t to_buf(nghttp2_session *s, const uint8_t *data, size_t len, int flags, void *ud)
{
    (void)s, (void)flags;
    struct { uint8_t b[4096]; size_t n; } *o = ud;
    ck_assert_uint_le(o->n + len, sizeof o->b);
    memcpy(o->b + o->n, data, len);
    o->n += len;
    return (ssize_t)len;
}

static int got_headers;
static int on_frame(nghttp2_session *s, const nghttp2_frame *f, void *ud)
{
    (void)s, (void)ud;
    got_headers += f->hd.type == NGHTTP2_HEADERS;
    return 0;
}

START_TEST(sessions_run_on_it)
{
    struct { uint8_t b[4096]; size_t n; } out = { .n = 0 };
    nghttp2_session_callbacks *cb;
    nghttp2_session *cli, *srv;
    ck_assert_int_eq(nghttp2_session_callbacks_new(&cb), 0);
    nghttp2_session_callbacks_set_send_callback(cb, to_buf);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame);
    ck_assert_int_eq(nghttp2_session_client_new3(&cli, cb, &out, NULL, wg_h2_mem()), 0);
    ck_assert_int_eq(nghttp2_session_server_new3(&srv, cb, &out, NULL, wg_h2_mem()), 0);
    nghttp2_nv nv[] = {
        { (uint8_t *)":method", (uint8_t *)"GET", 7, 3, 0 },
        { (uint8_t *)":scheme", (uint8_t *)"http", 7, 4, 0 },
        { (uint8_t *)":authority", (uint8_t *)"a", 10, 1, 0 },
        { (uint8_t *)":path", (uint8_t *)"/x", 5, 2, 0 },
        { (uint8_t *)"x-long", (uint8_t *)"0123456789012345678901234567890123456789", 6, 40, 0 },
    };
    for (int round = 0; round < 50; round++) {
        ck_assert_int_eq(nghttp2_submit_settings(cli, 0, NULL, 0), 0);
        ck_assert_int_gt(nghttp2_submit_request(cli, NULL, nv, 5, NULL, NULL), 0);
        out.n = 0;
        ck_assert_int_eq(nghttp2_session_send(cli), 0);
        ck_assert_int_eq(nghttp2_session_mem_recv(srv, out.b, out.n), (ssize_t)out.n);
    }
    ck_assert_int_eq(got_headers, 50);
    nghttp2_session_del(cli);
    nghttp2_session_del(srv);
    nghttp2_session_callbacks_del(cb);
}
END_TEST

static Suite *h2_mem_suite(void)
{
    Suite *s = suite_create("h2_mem");
    TCase *t = tcase_create("core");
    tcase_add_test(t, reuses_a_freed_block_of_its_class);
    tcase_add_test(t, calloc_zeroes_a_reused_block);
    tcase_add_test(t, realloc_keeps_the_bytes);
    tcase_add_test(t, spares_are_bounded);
    tcase_add_test(t, another_thread_keeps_its_own);
    tcase_add_test(t, sessions_run_on_it);
    suite_add_tcase(s, t);
    return s;
}

int main(void)
{
    SRunner *r = srunner_create(h2_mem_suite());
    srunner_run_all(r, CK_NORMAL);
    int failed = srunner_ntests_failed(r);
    srunner_free(r);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
