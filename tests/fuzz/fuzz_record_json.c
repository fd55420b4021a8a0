/* fuzz_record_json — wg_record_decode_etcd() on arbitrary values and keys.
 * Input: the first line is the key (after the fixed prefix), the rest the
 * value. Checks: no crash or leak; all-or-nothing output; every record has
 * the key's service, a non-empty id and an address or a pending host. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "waygate/record.h"

#define PREFIX "/services/"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *nl = memchr(data, '\n', size);
    size_t klen = nl ? (size_t)(nl - (const char *)data) : 0;
    char key[512];
    char why[256];
    struct wg_record_set set = { 0 };
    struct wg_record_hosts hosts = { 0 };
    enum wg_record_format f;

    if (klen + sizeof PREFIX > sizeof key)
        return 0;
    memcpy(key, PREFIX, sizeof PREFIX - 1);
    memcpy(key + sizeof PREFIX - 1, data, klen);
    const char *value = nl ? nl + 1 : (const char *)data;
    size_t vlen = size - (size_t)(value - (const char *)data);
    bool ok = wg_record_decode_etcd(PREFIX, key, sizeof PREFIX - 1 + klen, value, vlen, &set,
                                    (size & 1) ? &hosts : NULL, &f, why, sizeof why);
    if (ok != (set.n > 0))
        abort();
    for (size_t i = 0; i < set.n; i++) {
        if (!set.v[i].id[0] || !set.v[i].service[0])
            abort();
        if (set.v[i].addr.ss_family == AF_UNSPEC) {
            bool pending = false;
            for (size_t k = 0; k < hosts.n; k++)
                pending |= hosts.v[k].index == i;
            if (!pending)
                abort();
        }
    }
    wg_record_set_clear(&set);
    wg_record_hosts_clear(&hosts);
    return 0;
}
