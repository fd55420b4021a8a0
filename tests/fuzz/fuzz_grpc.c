/* fuzz_grpc — libFuzzer harness for the pure gRPC helpers (waygate/grpc.h).
 *
 * The first byte picks what the rest is fed to; every function must give a
 * defined answer on a heap copy of exactly the input (ASan catches any read
 * past it) and keep its promises:
 *  - health_decode: -1 or a status >= 0; a message that decodes keeps its
 *    answer when a valid unknown field (field 2, a string) is prepended;
 *  - a health request for any service name frames back to a message whose
 *    field 1 is that name;
 *  - grpc-timeout: an accepted value is >= 1 ms and its text is 2..9 bytes;
 *  - frame: a message never spans past the input;
 *  - base64 (first byte 4 or 5 mod 6, grpc-web-text): text cut into calls
 *    anywhere decodes as it does whole, in place as into another buffer, and
 *    what decodes whole encodes back to bytes that decode the same; any bytes
 *    encoded in pieces decode back to themselves. */
#include "waygate/grpc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(c) do { if (!(c)) { fprintf(stderr, "%s:%d: check failed: %s\n", \
                                          __FILE__, __LINE__, #c); abort(); } } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t *in = malloc(size - 1 ? size - 1 : 1);
    CHECK(in);
    memcpy(in, data + 1, size - 1);
    size_t n = size - 1;
    switch (data[0] % 6 >= 4 ? data[0] % 6 : data[0] % 4) {
    case 0: {
        int64_t st = wg_grpc_health_decode(in, n);
        CHECK(st >= -1);
        if (st >= 0 && n < 100) {
            uint8_t pre[110] = { 0x12, 0x01, 'x' };
            memcpy(pre + 3, in, n);
            CHECK(wg_grpc_health_decode(pre, n + 3) == st);
        }
        break;
    }
    case 1: {
        uint8_t out[300];
        size_t w = wg_grpc_health_request((const char *)in, n, out, sizeof out);
        CHECK(w == 0 || (w >= 5 && w <= sizeof out));
        if (w) {
            const uint8_t *msg;
            size_t ml, used;
            CHECK(wg_grpc_frame(out, w, 1 << 20, &msg, &ml, &used) == 1 && used == w);
            if (n) {
                CHECK(msg[0] == 0x0a);
                CHECK(ml >= n && memcmp(msg + ml - n, in, n) == 0);
                /* Field 1 as a string is no valid HealthCheckResponse. */
                CHECK(wg_grpc_health_decode(msg, ml) == -1);
            } else {
                CHECK(ml == 0);
            }
        }
        break;
    }
    case 2: {
        uint64_t ms = 0;
        if (wg_grpc_timeout_parse((const char *)in, n, &ms))
            CHECK(ms >= 1 && n >= 2 && n <= 9);
        (void)wg_grpc_is_grpc((const char *)in, n);
        int st = wg_grpc_status_parse((const char *)in, n);
        CHECK(st >= -1 && st < 1000);
        char enc[64];
        size_t el = wg_grpc_message_encode((const char *)in, n, enc, sizeof enc);
        CHECK(el < sizeof enc && enc[el] == '\0' && strlen(enc) == el);
        for (size_t i = 0; i < el; i++)
            CHECK(enc[i] >= 0x20 && enc[i] <= 0x7e);
        break;
    }
    case 4: {                           /* base64 text, cut at in[0] and in[1] */
        size_t a = n ? in[0] % (n + 1) : 0, b = n > 1 ? a + in[1] % (n - a + 1) : a;
        uint8_t *one = malloc(n + 1), *cut = malloc(n + 1);
        char *again = malloc(n / 3 * 4 + 8);
        CHECK(one && cut && again);
        struct wg_b64_dec s1 = { 0 }, s2 = { 0 };
        size_t l1, k = 0, l;
        bool ok1 = wg_b64_decode(&s1, (const char *)in, n, one, &l1);
        bool ok2 = true;
        const size_t at[4] = { 0, a, b, n };
        memcpy(cut, in, n);             /* decoded in place, in three calls */
        for (int i = 0; i < 3 && ok2; i++) {
            ok2 = wg_b64_decode(&s2, (const char *)cut + at[i], at[i + 1] - at[i], cut + k, &l);
            k += ok2 ? l : 0;
        }
        CHECK(ok1 == ok2);
        if (ok1) {
            CHECK(l1 == k && l1 <= n && memcmp(one, cut, k) == 0);
            CHECK(wg_b64_decode_done(&s1) == wg_b64_decode_done(&s2));
        }
        if (ok1 && wg_b64_decode_done(&s1)) {
            struct wg_b64_enc e = { 0 };
            size_t t = wg_b64_encode(&e, one, l1, again);
            t += wg_b64_encode_end(&e, again + t);
            CHECK(t == (l1 + 2) / 3 * 4);
            struct wg_b64_dec s3 = { 0 };
            CHECK(wg_b64_decode(&s3, again, t, cut, &l) && wg_b64_decode_done(&s3));
            CHECK(l == l1 && memcmp(cut, one, l) == 0);
        }
        free(one);
        free(cut);
        free(again);
        break;
    }
    case 5: {                           /* any bytes, encoded in pieces of in[0] */
        size_t step = n ? in[0] % 7 + 1 : 1, t = 0, l;
        char *text = malloc((n / step + 1) * 4 + n / 3 * 4 + 8);
        uint8_t *back = malloc(n + 1);
        CHECK(text && back);
        struct wg_b64_enc e = { 0 };
        for (size_t off = 0; off < n; off += step) {
            size_t m = n - off < step ? n - off : step;
            size_t want = wg_b64_encoded_len(&e, m);
            CHECK(wg_b64_encode(&e, in + off, m, text + t) == want);
            t += want;
            if (in[off] & 1)            /* sometimes a padded chunk ends here */
                t += wg_b64_encode_end(&e, text + t);
        }
        t += wg_b64_encode_end(&e, text + t);
        struct wg_b64_dec s = { 0 };
        CHECK(wg_b64_decode(&s, text, t, back, &l) && wg_b64_decode_done(&s));
        CHECK(l == n && memcmp(back, in, n) == 0);
        free(text);
        free(back);
        break;
    }
    default: {
        const uint8_t *msg;
        size_t ml, used, off = 0;
        int r;
        while ((r = wg_grpc_frame(in + off, n - off, 1 << 16, &msg, &ml, &used)) == 1) {
            CHECK(used >= 5 && used <= n - off && msg + ml == in + off + used);
            off += used;
        }
        CHECK(r == 0 || r == -1);
        break;
    }
    }
    free(in);
    return 0;
}
