/* fuzz_etcd_messages — the etcd client's pure parsers on arbitrary bytes:
 * the response reader (fed whole, and again split at a point chosen by the
 * input: both must deliver the same messages and end the same way), and
 * every message decoder on each delivered message. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "waygate/etcd_client.h"

struct digest {
    uint64_t hash;
    size_t n;
};

static void decode_all(const char *msg, size_t len)
{
    struct wg_etcd_watch_response w;
    struct wg_etcd_range_response r;
    const char *why;
    char text[64], *tok, *out;
    size_t n;

    if (wg_etcd_parse_watch(msg, len, &w, &why))
        wg_etcd_watch_response_free(&w);
    if (wg_etcd_parse_range(msg, len, &r, &why))
        wg_etcd_range_response_free(&r);
    if (wg_etcd_range_peek_last_key(msg, len, &out, &n))
        free(out);
    wg_etcd_parse_error(msg, len, text, sizeof text);
    free(wg_etcd_parse_token(msg, len));
    if (wg_base64_decode(msg, len, &out, &n)) {
        tok = wg_base64_encode(out, n);
        if (!tok || strlen(tok) != len || memcmp(tok, msg, len) != 0)
            abort();        /* canonical input must round-trip */
        free(tok);
        free(out);
    }
}

static bool on_message(void *arg, const char *msg, size_t len)
{
    struct digest *d = arg;

    for (size_t i = 0; i < len; i++)
        d->hash = (d->hash ^ (unsigned char)msg[i]) * 1099511628211ULL;
    d->hash = (d->hash ^ 0x100) * 1099511628211ULL;
    d->n++;
    decode_all(msg, len);
    return true;
}

static enum wg_etcd_read run(const uint8_t *data, size_t size, size_t cut, bool stream,
                             struct digest *d)
{
    struct wg_etcd_reader r;
    enum wg_etcd_read st;

    wg_etcd_reader_init(&r, stream, 4096);
    st = wg_etcd_reader_feed(&r, (const char *)data, cut, on_message, d);
    if (st == WG_ETCD_READ_AGAIN)
        st = wg_etcd_reader_feed(&r, (const char *)data + cut, size - cut, on_message, d);
    if (st == WG_ETCD_READ_AGAIN)
        st = wg_etcd_reader_eof(&r, on_message, d);
    wg_etcd_reader_free(&r);
    return st;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct digest a = { 14695981039346656037ULL, 0 }, b = a;
    bool stream = size && (data[0] & 1);
    size_t cut = size ? data[size - 1] % (size + 1) : 0;

    decode_all((const char *)data, size);
    enum wg_etcd_read x = run(data, size, size, stream, &a);
    enum wg_etcd_read y = run(data, size, cut, stream, &b);
    if (x != y || a.hash != b.hash || a.n != b.n)
        abort();
    return 0;
}
