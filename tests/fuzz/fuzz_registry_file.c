/* fuzz_registry_file — the file registry parser on arbitrary bytes: no
 * crash, no leak; every record is complete; a failed parse adds nothing. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "waygate/record.h"
#include "waygate/sockaddr.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct wg_record_set set = { 0 };
    struct wg_errors warnings = { 0 };
    unsigned invalid = 0;
    bool ok = wg_record_parse_file_buffer("fuzz.yaml", (const char *)data, size, &set,
                                          &warnings, &invalid);

    if (!ok && (set.n != 0 || warnings.n == 0))
        abort();
    for (size_t i = 0; i < set.n; i++) {
        const struct wg_record *r = &set.v[i];
        char text[80];
        if (!r->service || !r->id || !*r->id || r->weight > WG_WEIGHT_MAX)
            abort();
        if (r->addr.ss_family != AF_INET && r->addr.ss_family != AF_INET6)
            abort();
        wg_sockaddr_text((const struct sockaddr *)&r->addr, text, sizeof text);
    }
    wg_record_set_sort(&set);
    wg_record_set_clear(&set);
    wg_errors_free(&warnings);
    return 0;
}
