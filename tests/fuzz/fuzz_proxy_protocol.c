/* fuzz_proxy_protocol — libFuzzer harness for the PROXY protocol parser.
 *
 * For each input: the whole-buffer result, and the result of every prefix,
 * must agree with the promises of waygate/proxy_protocol.h: a prefix of an
 * accepted header is AGAIN, never ERROR; a header is never longer than the
 * input nor than WG_PROXY_MAX; an accepted non-local header carries
 * addresses of one family; parsing a heap copy of exactly the header gives
 * the same answer (ASan catches any read past it). */
#include "waygate/proxy_protocol.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(c) do { if (!(c)) { fprintf(stderr, "%s:%d: check failed: %s\n", \
                                          __FILE__, __LINE__, #c); abort(); } } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct wg_proxy_info info, again;
    size_t used, used2;
    enum wg_proxy_result r = wg_proxy_parse(data, size, &info, &used);

    if (r == WG_PROXY_DONE) {
        CHECK(used > 0 && used <= size && used <= WG_PROXY_MAX);
        CHECK(info.version == 1 || info.version == 2);
        if (!info.local) {
            CHECK(info.src.ss_family == info.dst.ss_family);
            CHECK(info.src_len == info.dst_len && info.src_len > 0);
        }
        uint8_t *copy = malloc(used);
        CHECK(copy);
        memcpy(copy, data, used);
        CHECK(wg_proxy_parse(copy, used, &again, &used2) == WG_PROXY_DONE && used2 == used);
        CHECK(memcmp(&info, &again, sizeof info) == 0);
        free(copy);
    }
    size_t limit = size < 256 ? size : 256;
    for (size_t n = 0; n < limit; n++) {
        enum wg_proxy_result p = wg_proxy_parse(data, n, &again, &used2);
        if (r == WG_PROXY_DONE && n < used)
            CHECK(p == WG_PROXY_AGAIN);
        if (r == WG_PROXY_AGAIN)
            CHECK(p == WG_PROXY_AGAIN);
        if (p == WG_PROXY_DONE)
            CHECK(r == WG_PROXY_DONE && used2 == used);
    }
    return 0;
}
