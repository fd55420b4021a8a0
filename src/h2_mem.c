/* h2_mem — see include/waygate/h2_mem.h */
#include "waygate/h2_mem.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define POISON(p, n) ASAN_POISON_MEMORY_REGION(p, n)
#define UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
#else
#define POISON(p, n) ((void)(p), (void)(n))
#define UNPOISON(p, n) ((void)(p), (void)(n))
#endif

#define MIN_SHIFT 5                     /* the smallest class: 32 bytes */
#define NCLASS 7                        /* ... the largest: 2 KiB */
#define MAX_SMALL ((size_t)1 << (MIN_SHIFT + NCLASS - 1))
#define BIG 0xffu                       /* a block above MAX_SMALL: malloc's */

/* Before every block; keeps malloc's 16-byte alignment. */
struct hdr {
    struct hdr *next;                   /* while a spare */
    uint32_t cls;
    uint32_t pad;
};
_Static_assert(sizeof(struct hdr) == 16, "the header keeps 16-byte alignment");

struct lists {
    struct hdr *first[NCLASS];
    uint32_t n[NCLASS];
    bool armed;                         /* the exit destructor is registered */
};

static _Thread_local struct lists tl;
static pthread_key_t key;
static pthread_once_t once = PTHREAD_ONCE_INIT;
static bool key_ok;

static size_t class_size(unsigned c) { return (size_t)1 << (c + MIN_SHIFT); }

static unsigned class_of(size_t size)
{
    if (size > MAX_SMALL)
        return BIG;
    if (size <= class_size(0))
        return 0;
    return (unsigned)(64 - __builtin_clzll((unsigned long long)(size - 1))) - MIN_SHIFT;
}

/* At thread exit. A block freed later (another key's destructor) arms the
 * lists again, and POSIX then runs this once more. */
static void drain(void *arg)
{
    (void)arg;
    for (unsigned c = 0; c < NCLASS; c++) {
        while (tl.first[c]) {
            struct hdr *h = tl.first[c];
            UNPOISON(h + 1, class_size(c));
            tl.first[c] = h->next;
            free(h);
        }
        tl.n[c] = 0;
    }
    tl.armed = false;
}

/* exit() runs no key destructor for the thread calling it. */
static void drain_at_exit(void) { drain(NULL); }

static void make_key(void)
{
    key_ok = pthread_key_create(&key, drain) == 0 && atexit(drain_at_exit) == 0;
}

static bool arm(void)
{
    if (tl.armed)
        return true;
    if (pthread_once(&once, make_key) != 0 || !key_ok || pthread_setspecific(key, &tl) != 0)
        return false;
    return tl.armed = true;
}

static void *mem_malloc(size_t size, void *ud)
{
    (void)ud;
    unsigned c = class_of(size);
    struct hdr *h = c == BIG ? NULL : tl.first[c];
    if (h) {
        UNPOISON(h + 1, class_size(c));
        tl.first[c] = h->next;
        tl.n[c]--;
    } else {
        size_t n = c == BIG ? size : class_size(c);
        if (n > SIZE_MAX - sizeof *h || !(h = malloc(sizeof *h + n)))
            return NULL;
        h->cls = c;
    }
    return h + 1;
}

static void mem_free(void *p, void *ud)
{
    (void)ud;
    if (!p)
        return;
    struct hdr *h = (struct hdr *)p - 1;
    unsigned c = h->cls;
    if (c == BIG || (size_t)tl.n[c] * class_size(c) >= WG_H2_MEM_SPARE_BYTES || !arm()) {
        free(h);
        return;
    }
    h->next = tl.first[c];
    tl.first[c] = h;
    tl.n[c]++;
    POISON(p, class_size(c));
}

static void *mem_calloc(size_t n, size_t size, void *ud)
{
    if (size && n > SIZE_MAX / size)
        return NULL;
    void *p = mem_malloc(n * size, ud);
    if (p)
        memset(p, 0, n * size);
    return p;
}

static void *mem_realloc(void *p, size_t size, void *ud)
{
    if (!p)
        return mem_malloc(size, ud);
    struct hdr *h = (struct hdr *)p - 1;
    if (h->cls == BIG) {                /* stays malloc's, whatever the size */
        if (size > SIZE_MAX - sizeof *h || !(h = realloc(h, sizeof *h + size)))
            return NULL;
        return h + 1;
    }
    if (size <= class_size(h->cls))
        return p;
    void *q = mem_malloc(size, ud);
    if (q) {
        memcpy(q, p, class_size(h->cls));
        mem_free(p, ud);
    }
    return q;
}

static nghttp2_mem mem = { NULL, mem_malloc, mem_free, mem_calloc, mem_realloc };

nghttp2_mem *wg_h2_mem(void) { return &mem; }
