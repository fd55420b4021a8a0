/* http_fuzz.h — what the HTTP fuzz harnesses share (header-only: each
 * harness is one executable of its own).
 *
 *  - CHECK(): abort with the failed condition, for libFuzzer to report.
 *  - A xorshift64 stream seeded from the input (rng_seed), so that the
 *    pieces an input is cut into are the same on every run of that input.
 *  - With HTTP_FUZZ_CAP defined (header slots): parsing one head three ways
 *    (one call, one byte per call, pseudo-random pieces each from a fresh
 *    heap copy so that ASan catches a parser keeping a pointer into an old
 *    buffer) and same(), which demands the three outcomes agree exactly:
 *    parse_three_ways() does both. */
#ifndef WG_HTTP_FUZZ_H
#define WG_HTTP_FUZZ_H

#include "waygate/http.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(c) do { if (!(c)) { fprintf(stderr, "%s:%d: check failed: %s\n", \
                                          __FILE__, __LINE__, #c); abort(); } } while (0)

static uint64_t rng;

static inline uint64_t next_rand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static inline void rng_seed(const uint8_t *data, size_t size)
{
    rng = 0x9e3779b97f4a7c15ull ^ size;
    for (size_t i = 0; i < size && i < 64; i++)
        rng = (rng ^ data[i]) * 0x100000001b3ull;
    if (rng == 0)
        rng = 1;
}

#ifdef HTTP_FUZZ_CAP

struct outcome {
    enum wg_http_result r;
    size_t consumed;
    int status;
    const char *reason;
    struct wg_http_message msg;
    struct wg_http_header h[HTTP_FUZZ_CAP];
};

/* Initialises *p for one head (a request or a response parser), headers in o->h. */
typedef void (*head_start)(struct wg_http_parser *p, struct outcome *o, const void *arg);

static inline void record(struct outcome *o, const struct wg_http_parser *p,
                          enum wg_http_result r, size_t consumed)
{
    o->r = r;
    o->consumed = consumed;
    o->status = p->err_status;
    o->reason = p->err_reason;
    o->msg = p->msg;
}

static inline void one_shot(struct outcome *o, head_start start, const void *arg,
                            const uint8_t *d, size_t n)
{
    struct wg_http_parser p;
    size_t used = 0;
    start(&p, o, arg);
    enum wg_http_result r = wg_http_parse_head(&p, (const char *)d, n, &used);
    record(o, &p, r, used);
}

static inline void bytewise(struct outcome *o, head_start start, const void *arg,
                            const uint8_t *d, size_t n)
{
    struct wg_http_parser p;
    enum wg_http_result r = WG_HTTP_AGAIN;
    size_t used = 0;
    start(&p, o, arg);
    for (size_t k = 1; k <= n && r == WG_HTTP_AGAIN; k++) {
        r = wg_http_parse_head(&p, (const char *)d, k, &used);
        if (r == WG_HTTP_AGAIN)
            CHECK(used == k);
    }
    record(o, &p, r, used);
}

/* Pieces of 1..max_piece bytes, each call on a fresh copy of the prefix. */
static inline void random_pieces(struct outcome *o, head_start start, const void *arg,
                                 const uint8_t *d, size_t n, size_t max_piece)
{
    struct wg_http_parser p;
    enum wg_http_result r = WG_HTTP_AGAIN;
    size_t used = 0, k = 0;
    start(&p, o, arg);
    while (r == WG_HTTP_AGAIN && k < n) {
        k += 1 + next_rand() % (n - k < max_piece ? n - k : max_piece);
        char *copy = malloc(k);
        CHECK(copy != NULL);
        memcpy(copy, d, k);
        r = wg_http_parse_head(&p, copy, k, &used);
        free(copy);
    }
    record(o, &p, r, used);
}

static inline void same(const struct outcome *a, const struct outcome *b)
{
    CHECK(a->r == b->r);
    CHECK(a->consumed == b->consumed);
    CHECK(a->status == b->status);
    CHECK(a->reason == b->reason);
    CHECK(memcmp(&a->msg, &b->msg, sizeof a->msg) == 0);
    CHECK(memcmp(a->h, b->h, a->msg.nheaders * sizeof a->h[0]) == 0);
}

/* One head parsed the three ways; they must agree. *o is the one-shot outcome. */
static inline void parse_three_ways(struct outcome *o, head_start start, const void *arg,
                                    const uint8_t *d, size_t n, size_t max_piece)
{
    static struct outcome bytes, pieces;    /* large: not on the stack */
    one_shot(o, start, arg, d, n);
    bytewise(&bytes, start, arg, d, n);
    same(o, &bytes);
    random_pieces(&pieces, start, arg, d, n, max_piece);
    same(o, &pieces);
}

#endif /* HTTP_FUZZ_CAP */
#endif
