/* fuzz_http_chunked — libFuzzer harness for the chunked body decoder.
 *
 * The input is a chunked body (and whatever follows it). It is decoded
 *  - in one buffer,
 *  - one byte per call (a split at every point),
 *  - in random pieces, each from a fresh heap copy,
 * and the three must agree on result, consumed bytes, error, payload bytes
 * and counters. A second, deliberately simple decoder below works on the
 * whole buffer with plain loops (no state machine); it is the oracle for
 * whether the input is complete, incomplete or invalid, where the body ends
 * and what the payload is. Two trailer limits are tried. */
#include "http_fuzz.h"

#define MAX_IN 65536

struct outcome {
    enum wg_http_result r;
    size_t consumed;
    const char *reason;
    uint64_t chunks, trailers, payload_len;
    uint8_t payload[MAX_IN];
};

/* Feed d[0, n) in pieces of at most `piece` bytes (0: random sizes). */
static void decode(struct outcome *o, const uint8_t *d, size_t n, size_t piece,
                   uint32_t max_trailer)
{
    struct wg_http_body b;
    size_t off = 0;

    wg_http_body_init(&b, WG_HTTP_BODY_CHUNKED, 0, max_trailer);
    o->r = WG_HTTP_AGAIN;
    o->payload_len = 0;
    while (o->r == WG_HTTP_AGAIN && off < n) {
        size_t len = piece ? piece : 1 + next_rand() % 97;
        if (len > n - off)
            len = n - off;
        uint8_t *copy = malloc(len);
        CHECK(copy != NULL);
        memcpy(copy, d + off, len);
        size_t used = 0;
        while (o->r == WG_HTTP_AGAIN && used < len) {
            struct wg_http_body_step st;
            o->r = wg_http_body_parse(&b, (const char *)copy + used, len - used, &st);
            CHECK(st.consumed <= len - used && st.data_off + st.data_len <= st.consumed);
            CHECK(o->r != WG_HTTP_AGAIN || st.consumed > 0);
            memcpy(o->payload + o->payload_len, copy + used + st.data_off, st.data_len);
            o->payload_len += st.data_len;
            used += st.consumed;
        }
        free(copy);
        off += used;
    }
    o->consumed = off;
    o->reason = b.err_reason;
    o->chunks = b.chunks;
    o->trailers = b.trailers;
    CHECK(b.payload == o->payload_len);
    CHECK((o->r == WG_HTTP_ERROR) == (b.err_status != 0));
    CHECK(o->r != WG_HTTP_ERROR || b.err_status == 400 || b.err_status == 431);
}

static void same(const struct outcome *a, const struct outcome *b)
{
    CHECK(a->r == b->r && a->consumed == b->consumed && a->reason == b->reason);
    CHECK(a->chunks == b->chunks && a->trailers == b->trailers);
    CHECK(a->payload_len == b->payload_len);
    CHECK(memcmp(a->payload, b->payload, a->payload_len) == 0);
}

/* ---- the oracle ------------------------------------------------------- */

enum { REF_AGAIN, REF_DONE, REF_ERROR };

static int hexval(uint8_t c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if ((c | 0x20) >= 'a' && (c | 0x20) <= 'f')
        return (c | 0x20) - 'a' + 10;
    return -1;
}

static bool tchar(uint8_t c)
{
    return (c >= '0' && c <= '9') || ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') ||
           (c && strchr("!#$%&'*+-.^_`|~", c));
}

static bool ws(uint8_t c) { return c == ' ' || c == '\t'; }
static bool vchar(uint8_t c) { return (c > 0x20 && c != 0x7f); }

static size_t skip_ws(const uint8_t *d, size_t i, size_t n)
{
    while (i < n && ws(d[i]))
        i++;
    return i;
}

static size_t skip_token(const uint8_t *d, size_t i, size_t n)
{
    while (i < n && tchar(d[i]))
        i++;
    return i;
}

/* After ext-val's '=' and BWS: a token or a quoted-string. Returns the end,
 * 0 when more input is needed, SIZE_MAX when invalid. */
static size_t ref_ext_value(const uint8_t *d, size_t i, size_t n)
{
    if (d[i] != '"') {
        size_t k = skip_token(d, i, n);
        return k == n ? 0 : k == i ? SIZE_MAX : k;
    }
    for (i++; i < n; i++) {
        if (d[i] == '"')
            return i + 1;
        if (d[i] == '\\') {
            if (++i == n)
                return 0;
            if (!vchar(d[i]) && !ws(d[i]))
                return SIZE_MAX;
        } else if (!(vchar(d[i]) || ws(d[i])) || d[i] == '\\') {
            return SIZE_MAX;
        }
    }
    return 0;
}

/* Size line from d[i] (view ends at n): sets *end to its CR. */
static int ref_size_line(const uint8_t *d, size_t i, size_t n, uint64_t *size, size_t *end)
{
    size_t k = i;
    for (*size = 0; k < n && hexval(d[k]) >= 0; k++) {
        if (k - i == 16 || (*size >> 59))
            return REF_ERROR;
        *size = *size << 4 | (uint64_t)hexval(d[k]);
    }
    if (k == n)
        return REF_AGAIN;
    if (k == i)
        return REF_ERROR;
    for (;;) {                          /* *( BWS ";" BWS name [ BWS "=" BWS value ] ) */
        size_t j = skip_ws(d, k, n);
        if (j == n)
            return REF_AGAIN;
        if (d[j] == '\r' && j == k)
            break;
        if (d[j] != ';')
            return REF_ERROR;
        j = skip_ws(d, j + 1, n);
        k = skip_token(d, j, n);
        if (k == n)
            return REF_AGAIN;
        if (k == j)
            return REF_ERROR;
        j = skip_ws(d, k, n);
        if (j == n)
            return REF_AGAIN;
        if (d[j] != '=')
            continue;
        j = skip_ws(d, j + 1, n);
        if (j == n)
            return REF_AGAIN;
        k = ref_ext_value(d, j, n);
        if (k == 0)
            return REF_AGAIN;
        if (k == SIZE_MAX)
            return REF_ERROR;
    }
    *end = k;
    return REF_DONE;
}

/* Trailer section from d[i] (view ends at n): sets *end past its final CRLF. */
static int ref_trailers(const uint8_t *d, size_t i, size_t n, size_t *end)
{
    for (;;) {
        if (i == n)
            return REF_AGAIN;
        if (d[i] == '\r') {
            if (i + 1 == n)
                return REF_AGAIN;
            if (d[i + 1] != '\n')
                return REF_ERROR;
            *end = i + 2;
            return REF_DONE;
        }
        size_t k = skip_token(d, i, n);
        if (k == n)
            return REF_AGAIN;
        if (k == i || d[k] != ':')
            return REF_ERROR;
        for (k++; k < n && (vchar(d[k]) || ws(d[k])); k++)
            ;
        if (k == n || (d[k] == '\r' && k + 1 == n))
            return REF_AGAIN;
        if (d[k] != '\r' || d[k + 1] != '\n')
            return REF_ERROR;
        i = k + 2;
    }
}

/* A limit caps the view: needing a byte past it is an error, not AGAIN. */
static int capped(int r, size_t view, size_t n)
{
    return r == REF_AGAIN && view < n ? REF_ERROR : r;
}

static int reference(const uint8_t *d, size_t n, uint32_t max_trailer, uint8_t *payload,
                     size_t *plen, size_t *consumed)
{
    size_t i = 0, end = 0;
    uint64_t size;

    *plen = 0;
    for (;;) {
        size_t view = n - i > WG_HTTP_MAX_CHUNK_LINE ? i + WG_HTTP_MAX_CHUNK_LINE + 1 : n;
        int r = capped(ref_size_line(d, i, view, &size, &end), view, n);
        if (r != REF_DONE)
            return r;
        if (end + 1 == n)
            return REF_AGAIN;
        if (d[end + 1] != '\n')
            return REF_ERROR;
        i = end + 2;
        if (size == 0)
            break;
        uint64_t take = n - i < size ? n - i : size;
        memcpy(payload + *plen, d + i, (size_t)take);
        *plen += (size_t)take;
        i += (size_t)take;
        if (take < size || i == n || (d[i] == '\r' && i + 1 == n))
            return REF_AGAIN;
        if (d[i] != '\r' || d[i + 1] != '\n')
            return REF_ERROR;
        i += 2;
    }
    size_t view = n - i > max_trailer ? i + max_trailer : n;
    int r = capped(ref_trailers(d, i, view, &end), view, n);
    *consumed = end;
    return r;
}

/* ---- the harness ------------------------------------------------------ */

static void run(const uint8_t *d, size_t n, uint32_t max_trailer)
{
    static struct outcome whole, bytes, pieces;
    static uint8_t ref_payload[MAX_IN];
    size_t ref_len, ref_consumed = 0;

    decode(&whole, d, n, n ? n : 1, max_trailer);
    decode(&bytes, d, n, 1, max_trailer);
    same(&whole, &bytes);
    decode(&pieces, d, n, 0, max_trailer);
    same(&whole, &pieces);

    int r = reference(d, n, max_trailer ? max_trailer : WG_HTTP_DEFAULT_MAX_TRAILER,
                      ref_payload, &ref_len, &ref_consumed);
    CHECK(r == (whole.r == WG_HTTP_DONE ? REF_DONE : whole.r == WG_HTTP_AGAIN ? REF_AGAIN
                                                                            : REF_ERROR));
    if (r == REF_ERROR)
        return;
    CHECK(ref_len == whole.payload_len && memcmp(ref_payload, whole.payload, ref_len) == 0);
    if (r == REF_DONE)
        CHECK(ref_consumed == whole.consumed);
    else
        CHECK(whole.consumed == n);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > MAX_IN)
        return 0;
    rng_seed(data, size);
    run(data, size, 0);
    run(data, size, 24);
    return 0;
}
