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
 *  - frame: a message never spans past the input. */
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
    switch (data[0] % 4) {
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
