/* fuzz_record_zk — the ZooKeeper node decoders on arbitrary input:
 * wg_record_decode_dubbo() on the whole input as a provider node name, and
 * wg_record_decode_zk() (Curator or any §7 format; Curator only when the
 * input's size is even) on the whole input as node data. Checks: no crash
 * or leak; all-or-nothing output (exactly one record on success); every
 * record has a service, a non-empty id, an IP address and a weight within
 * bounds; a Dubbo record's id is its address. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "waygate/record.h"
#include "waygate/sockaddr.h"

#define PREFIX "/services/"
#define KEY PREFIX "users/u1"

static void check(bool ok, const struct wg_record_set *set, bool dubbo)
{
    char text[80];

    if (ok != (set->n == 1) || (!ok && set->n))
        abort();
    for (size_t i = 0; i < set->n; i++) {
        const struct wg_record *r = &set->v[i];
        if (!r->id[0] || !r->service[0] || r->weight > WG_WEIGHT_MAX ||
            (r->addr.ss_family != AF_INET && r->addr.ss_family != AF_INET6))
            abort();
        wg_sockaddr_text((const struct sockaddr *)&r->addr, text, sizeof text);
        if (dubbo && strcmp(text, r->id) != 0)
            abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const struct wg_dubbo_map map[] = { { "org.example.Users", "users" } };
    struct wg_record_set set = { 0 };
    enum wg_record_format f;
    char why[256];

    bool ok = wg_record_decode_dubbo((const char *)data, size, map, 1, &set, why, sizeof why);
    check(ok, &set, true);
    wg_record_set_clear(&set);
    ok = wg_record_decode_zk(PREFIX, KEY, sizeof KEY - 1, (const char *)data, size,
                             (size & 1) == 0, (size & 2) != 0, &set, NULL, &f, why, sizeof why);
    check(ok, &set, false);
    if (ok && (size & 1) == 0 && f != WG_FORMAT_CURATOR)
        abort();
    wg_record_set_clear(&set);
    return 0;
}
