/* check_reclaim — QSBR correctness under concurrency (DESIGN §3).
 * Several reader threads chase a pointer the writer republishes 10^6 times;
 * retired objects are poisoned before being freed, so a reader that could
 * still see one would fail its magic check (and ASan/TSan would report). */
#include <check.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "waygate/reclaim.h"

#define LIVE 0x5a5a5a5aU
#define N_READERS 3
/* 10^6 publishes (DESIGN §3) in the Release and TSan runs; the ASan run of
 * the functional suite does 10^5, as it checks memory, not interleavings. */
#if defined(__SANITIZE_ADDRESS__)
#define PUBLISHES 100000
#else
#define PUBLISHES 1000000
#endif

struct obj {
    uint32_t magic;
    uint64_t value;
    uint64_t check;     /* == ~value */
};

static _Atomic(struct obj *) published;
static _Atomic int stop;
static _Atomic uint64_t bad_reads, total_reads;
static struct wg_reclaim *rc;

static void obj_free(void *p)
{
    struct obj *o = p;
    memset(o, 0xdd, sizeof *o);     /* poison */
    free(o);
}

static struct obj *obj_new(uint64_t v)
{
    struct obj *o = malloc(sizeof *o);
    ck_assert_ptr_nonnull(o);
    o->magic = LIVE;
    o->value = v;
    o->check = ~v;
    return o;
}

static void *reader(void *arg)
{
    struct wg_reclaim_reader *r = wg_reclaim_register(rc);
    uint64_t last = 0;
    while (!atomic_load(&stop)) {
        struct obj *o = atomic_load(&published);
        if (o->magic != LIVE || o->check != ~o->value || o->value < last)
            atomic_fetch_add(&bad_reads, 1);
        last = o->value;
        uint64_t n = atomic_fetch_add_explicit(&total_reads, 1, memory_order_relaxed);
        wg_reclaim_quiescent(r);
        if ((n & 63) == 0)
            sched_yield();      /* 2-core CI boxes: let the writer run */
    }
    wg_reclaim_unregister(rc, r);
    return arg;
}

START_TEST(stress_publish)
{
    const uint64_t publishes = PUBLISHES;
    rc = wg_reclaim_new();
    ck_assert_ptr_nonnull(rc);
    atomic_store(&published, obj_new(0));
    pthread_t t[N_READERS];
    for (int i = 0; i < N_READERS; i++)
        ck_assert_int_eq(pthread_create(&t[i], NULL, reader, NULL), 0);
    size_t max_pending = 0;
    for (uint64_t v = 1; v <= publishes; v++) {
        struct obj *old = atomic_exchange(&published, obj_new(v));
        ck_assert_int_eq(wg_reclaim_retire(rc, old, obj_free), 0);
        size_t pending = wg_reclaim_poll(rc);
        if (pending > max_pending)
            max_pending = pending;
    }
    atomic_store(&stop, 1);
    for (int i = 0; i < N_READERS; i++)
        pthread_join(t[i], NULL);
    /* All readers are gone: everything must be reclaimable now. */
    ck_assert_uint_eq(wg_reclaim_poll(rc), 0);
    ck_assert_uint_eq(atomic_load(&bad_reads), 0);
    ck_assert_uint_gt(atomic_load(&total_reads), 0);
    /* Readers pass quiescent points constantly: the backlog stays bounded
     * by how far the writer can run ahead during one scheduler time slice. */
    ck_assert_uint_lt(max_pending, publishes / 4);
    obj_free(atomic_load(&published));
    wg_reclaim_free(rc);
}
END_TEST

START_TEST(offline_reader_does_not_block)
{
    rc = wg_reclaim_new();
    struct wg_reclaim_reader *r = wg_reclaim_register(rc);
    ck_assert_ptr_nonnull(r);
    ck_assert_int_eq(wg_reclaim_retire(rc, obj_new(1), obj_free), 0);
    ck_assert_uint_eq(wg_reclaim_poll(rc), 1);      /* r has not moved on */
    wg_reclaim_quiescent(r);
    ck_assert_uint_eq(wg_reclaim_poll(rc), 0);
    ck_assert_int_eq(wg_reclaim_retire(rc, obj_new(2), obj_free), 0);
    wg_reclaim_unregister(rc, r);                   /* gone: no longer holds */
    ck_assert_uint_eq(wg_reclaim_poll(rc), 0);
    wg_reclaim_free(rc);
}
END_TEST

START_TEST(free_releases_pending)
{
    rc = wg_reclaim_new();
    struct wg_reclaim_reader *r = wg_reclaim_register(rc);
    for (int i = 0; i < 10; i++)
        wg_reclaim_retire(rc, obj_new((uint64_t)i), obj_free);
    ck_assert_uint_eq(wg_reclaim_pending(rc), 10);
    wg_reclaim_unregister(rc, r);
    wg_reclaim_free(rc);            /* LeakSanitizer checks the rest */
}
END_TEST

int main(void)
{
    Suite *s = suite_create("reclaim");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, offline_reader_does_not_block);
    tcase_add_test(tc, free_releases_pending);
    tcase_add_test(tc, stress_publish);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
