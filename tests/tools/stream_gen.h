/* stream_gen.h — the deterministic byte stream shared by the test tools
 * (wg_backend serves it, wg_blast sends and checks it) and by
 * tests/integration/wglib.py pattern(): xorshift64 from `seed`, each state
 * stored little-endian, 8 bytes at a time. Header-only: each tool is one
 * executable of its own. */
#ifndef WG_TEST_STREAM_GEN_H
#define WG_TEST_STREAM_GEN_H

#include <stddef.h>
#include <stdint.h>

struct stream_gen {
    uint64_t s;
    uint8_t blk[8];
    unsigned pos;   /* next byte of blk; 8 = exhausted */
};

static inline void gen_init(struct stream_gen *gen, uint64_t seed)
{
    gen->s = seed ? seed : 0x9E3779B97F4A7C15ull;
    gen->pos = 8;
}

static inline uint64_t gen_step(struct stream_gen *gen)
{
    uint64_t s = gen->s;
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    gen->s = s;
    return s;
}

static inline void store_le64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static inline void gen_fill(struct stream_gen *gen, uint8_t *dst, size_t n)
{
    while (n > 0) {
        if (gen->pos == 8) {
            if (n >= 8) {
                store_le64(dst, gen_step(gen));
                dst += 8;
                n -= 8;
                continue;
            }
            store_le64(gen->blk, gen_step(gen));
            gen->pos = 0;
        }
        *dst++ = gen->blk[gen->pos++];
        n--;
    }
}

#endif
