/* check_grpc — the pure gRPC helpers (include/waygate/grpc.h). */
#include <check.h>
#include <string.h>

#include "unit_util.h"

#include "waygate/grpc.h"

#define S(x) x, sizeof x - 1

START_TEST(status_from_http)
{
    ck_assert_int_eq(wg_grpc_status_from_http(404), WG_GRPC_UNIMPLEMENTED);
    ck_assert_int_eq(wg_grpc_status_from_http(503), WG_GRPC_UNAVAILABLE);
    ck_assert_int_eq(wg_grpc_status_from_http(502), WG_GRPC_UNAVAILABLE);
    ck_assert_int_eq(wg_grpc_status_from_http(429), WG_GRPC_UNAVAILABLE);
    ck_assert_int_eq(wg_grpc_status_from_http(504), WG_GRPC_DEADLINE_EXCEEDED);
    ck_assert_int_eq(wg_grpc_status_from_http(408), WG_GRPC_DEADLINE_EXCEEDED);
    ck_assert_int_eq(wg_grpc_status_from_http(413), WG_GRPC_RESOURCE_EXHAUSTED);
    ck_assert_int_eq(wg_grpc_status_from_http(431), WG_GRPC_RESOURCE_EXHAUSTED);
    ck_assert_int_eq(wg_grpc_status_from_http(401), WG_GRPC_UNAUTHENTICATED);
    ck_assert_int_eq(wg_grpc_status_from_http(403), WG_GRPC_PERMISSION_DENIED);
    ck_assert_int_eq(wg_grpc_status_from_http(400), WG_GRPC_INTERNAL);
    ck_assert_int_eq(wg_grpc_status_from_http(500), WG_GRPC_UNKNOWN);
    ck_assert_int_eq(wg_grpc_status_from_http(200), WG_GRPC_UNKNOWN);
    /* RST_STREAM codes (http-grpc-status-mapping.md) */
    ck_assert_int_eq(wg_grpc_status_from_h2_error(0x7), WG_GRPC_UNAVAILABLE);
    ck_assert_int_eq(wg_grpc_status_from_h2_error(0x8), WG_GRPC_CANCELLED);
    ck_assert_int_eq(wg_grpc_status_from_h2_error(0xb), WG_GRPC_RESOURCE_EXHAUSTED);
    ck_assert_int_eq(wg_grpc_status_from_h2_error(0xc), WG_GRPC_PERMISSION_DENIED);
    ck_assert_int_eq(wg_grpc_status_from_h2_error(0x0), WG_GRPC_INTERNAL);
    ck_assert_int_eq(wg_grpc_status_from_h2_error(0x2), WG_GRPC_INTERNAL);
    ck_assert_int_eq(wg_grpc_status_from_h2_error(0xffffffffu), WG_GRPC_INTERNAL);
    ck_assert_str_eq(wg_grpc_status_name(14), "UNAVAILABLE");
    ck_assert_str_eq(wg_grpc_status_name(0), "OK");
    ck_assert_str_eq(wg_grpc_status_name(16), "UNAUTHENTICATED");
    ck_assert_str_eq(wg_grpc_status_name(17), "UNKNOWN");
    ck_assert_str_eq(wg_grpc_status_name(-1), "UNKNOWN");
    ck_assert(wg_grpc_status_is_failure(14) && wg_grpc_status_is_failure(4) &&
              wg_grpc_status_is_failure(13));
    ck_assert(!wg_grpc_status_is_failure(0) && !wg_grpc_status_is_failure(12) &&
              !wg_grpc_status_is_failure(2));
    ck_assert_int_eq(wg_grpc_status_parse(S("0")), 0);
    ck_assert_int_eq(wg_grpc_status_parse(S("14")), 14);
    ck_assert_int_eq(wg_grpc_status_parse(S("")), -1);
    ck_assert_int_eq(wg_grpc_status_parse(S("1a")), -1);
    ck_assert_int_eq(wg_grpc_status_parse(S("-1")), -1);
    ck_assert_int_eq(wg_grpc_status_parse(S("2147483648")), -1);
}
END_TEST

START_TEST(message_encoding)
{
    char out[32];
    ck_assert_uint_eq(wg_grpc_message_encode(S("no route"), out, sizeof out), 8);
    ck_assert_str_eq(out, "no route");
    wg_grpc_message_encode(S("100% \xe2\x82\xac\n"), out, sizeof out);
    ck_assert_str_eq(out, "100%25 %E2%82%AC%0A");
    /* Never a split escape: "ab%25" does not fit in 5 bytes + NUL... */
    ck_assert_uint_eq(wg_grpc_message_encode(S("ab%"), out, 5), 2);
    ck_assert_str_eq(out, "ab");
    ck_assert_uint_eq(wg_grpc_message_encode(S("abc"), out, 1), 0);
    ck_assert_str_eq(out, "");
    ck_assert_str_eq(wg_grpc_error_message(404), "waygate: no route");
    ck_assert_str_eq(wg_grpc_error_message(503), "waygate: no healthy upstream");
    ck_assert_str_eq(wg_grpc_error_message(999), "waygate: error");
}
END_TEST

START_TEST(content_type)
{
    ck_assert(wg_grpc_is_grpc(S("application/grpc")));
    ck_assert(wg_grpc_is_grpc(S("application/grpc+proto")));
    ck_assert(wg_grpc_is_grpc(S("Application/GRPC;charset=utf-8")));
    ck_assert(!wg_grpc_is_grpc(S("application/grpc-web")));
    ck_assert(!wg_grpc_is_grpc(S("application/grpc-web+proto")));
    ck_assert(!wg_grpc_is_grpc(S("application/grp")));
    ck_assert(!wg_grpc_is_grpc(S("application/json")));
    ck_assert(!wg_grpc_is_grpc(S("")));
}
END_TEST

/* gRPC-Web content types both ways (binary form only) and the trailer frame. */
START_TEST(grpc_web)
{
    char out[64];
    bool text = true;
    size_t n = wg_grpc_web_to_grpc(S("application/grpc-web"), out, sizeof out, &text);
    ck_assert_uint_eq(n, 16);
    ck_assert(memcmp(out, "application/grpc", 16) == 0 && !text);
    n = wg_grpc_web_to_grpc(S("Application/gRPC-Web+proto"), out, sizeof out, &text);
    ck_assert_uint_eq(n, 22);
    ck_assert(memcmp(out, "application/grpc+proto", 22) == 0);
    ck_assert_uint_eq(wg_grpc_web_to_grpc(S("application/grpc-web;x=1"), out, sizeof out, &text),
                      20);
    ck_assert_uint_eq(wg_grpc_web_to_grpc(S("application/grpc"), out, sizeof out, &text), 0);
    ck_assert_uint_eq(wg_grpc_web_to_grpc(S("application/grpc-webx"), out, sizeof out, &text), 0);
    ck_assert_uint_eq(wg_grpc_web_to_grpc(S("application/grpc-web+proto"), out, 21, &text), 0);
    ck_assert(!text);
    /* the base64 form */
    n = wg_grpc_web_to_grpc(S("application/grpc-web-text"), out, sizeof out, &text);
    ck_assert_uint_eq(n, 16);
    ck_assert(memcmp(out, "application/grpc", 16) == 0 && text);
    text = false;
    n = wg_grpc_web_to_grpc(S("application/GRPC-WEB-TEXT+proto"), out, sizeof out, &text);
    ck_assert_uint_eq(n, 22);
    ck_assert(memcmp(out, "application/grpc+proto", 22) == 0 && text);
    text = false;
    ck_assert_uint_eq(wg_grpc_web_to_grpc(S("application/grpc-web-text; charset=x"), out,
                                          sizeof out, &text), 27);
    ck_assert(memcmp(out, "application/grpc; charset=x", 27) == 0 && text);
    text = false;
    ck_assert_uint_eq(wg_grpc_web_to_grpc(S("application/grpc-web-textx"), out, sizeof out, &text), 0);
    ck_assert_uint_eq(wg_grpc_web_to_grpc(S("application/grpc-web-tex"), out, sizeof out, &text), 0);
    ck_assert_uint_eq(wg_grpc_web_to_grpc(S("application/grpc-web-text+proto"), out, 21, &text), 0);
    ck_assert(!text);
    n = wg_grpc_to_grpc_web(S("application/grpc+proto"), false, out, sizeof out);
    ck_assert_uint_eq(n, 26);
    ck_assert(memcmp(out, "application/grpc-web+proto", 26) == 0);
    n = wg_grpc_to_grpc_web(S("application/grpc+proto"), true, out, sizeof out);
    ck_assert_uint_eq(n, 31);
    ck_assert(memcmp(out, "application/grpc-web-text+proto", 31) == 0);
    ck_assert_uint_eq(wg_grpc_to_grpc_web(S("application/grpc"), true, out, 25), 25);
    ck_assert_uint_eq(wg_grpc_to_grpc_web(S("application/grpc"), true, out, 24), 0);
    ck_assert_uint_eq(wg_grpc_to_grpc_web(S("application/grpc"), false, out, 19), 0);
    ck_assert_uint_eq(wg_grpc_to_grpc_web(S("text/plain"), false, out, sizeof out), 0);
    ck_assert_str_eq(wg_grpc_reply_type(false, false), "application/grpc");
    ck_assert_str_eq(wg_grpc_reply_type(true, false), "application/grpc-web");
    ck_assert_str_eq(wg_grpc_reply_type(true, true), "application/grpc-web-text");
    struct wg_grpc_field f[2] = {
        { (const uint8_t *)"grpc-status", (const uint8_t *)"0", 11, 1 },
        { (const uint8_t *)"grpc-message", (const uint8_t *)"", 12, 0 },
    };
    uint8_t frame[64];
    static const uint8_t want[] = "\x80\0\0\0\x20grpc-status: 0\r\ngrpc-message: \r\n";
    n = wg_grpc_web_trailers(f, 2, frame, sizeof frame);
    ck_assert_uint_eq(n, sizeof want - 1);
    ck_assert(memcmp(frame, want, n) == 0);
    ck_assert_uint_eq(wg_grpc_web_trailers(f, 2, frame, n - 1), 0);
    ck_assert_uint_eq(wg_grpc_web_trailers(NULL, 0, frame, 4), 0);
    ck_assert_uint_eq(wg_grpc_web_trailers(NULL, 0, frame, 5), 5);
}
END_TEST

START_TEST(timeout)
{
    uint64_t ms = 0;
    ck_assert(wg_grpc_timeout_parse(S("1H"), &ms) && ms == 3600000);
    ck_assert(wg_grpc_timeout_parse(S("2M"), &ms) && ms == 120000);
    ck_assert(wg_grpc_timeout_parse(S("3S"), &ms) && ms == 3000);
    ck_assert(wg_grpc_timeout_parse(S("250m"), &ms) && ms == 250);
    ck_assert(wg_grpc_timeout_parse(S("1500u"), &ms) && ms == 2);      /* rounded up */
    ck_assert(wg_grpc_timeout_parse(S("1n"), &ms) && ms == 1);         /* never 0 */
    ck_assert(wg_grpc_timeout_parse(S("0m"), &ms) && ms == 1);
    ck_assert(wg_grpc_timeout_parse(S("99999999H"), &ms) && ms == 99999999ULL * 3600000);
    ck_assert(wg_grpc_timeout_parse(S("00000005S"), &ms) && ms == 5000);
    ck_assert(!wg_grpc_timeout_parse(S("100000000m"), &ms));            /* 9 digits */
    ck_assert(!wg_grpc_timeout_parse(S("m"), &ms));
    ck_assert(!wg_grpc_timeout_parse(S(""), &ms));
    ck_assert(!wg_grpc_timeout_parse(S("10"), &ms));
    ck_assert(!wg_grpc_timeout_parse(S("10s"), &ms));                   /* units are case sensitive */
    ck_assert(!wg_grpc_timeout_parse(S("1 S"), &ms));
    ck_assert(!wg_grpc_timeout_parse(S("-1S"), &ms));
    ck_assert(!wg_grpc_timeout_parse(S("+1S"), &ms));
    ck_assert(!wg_grpc_timeout_parse(S("1SS"), &ms));
    ck_assert_uint_eq(wg_grpc_deadline_ms(30000, 0, 0), 30000);
    ck_assert_uint_eq(wg_grpc_deadline_ms(30000, 200, 0), 200);
    ck_assert_uint_eq(wg_grpc_deadline_ms(30000, 60000, 0), 30000);
    ck_assert_uint_eq(wg_grpc_deadline_ms(30000, 20000, 5000), 5000);
    ck_assert_uint_eq(wg_grpc_deadline_ms(3000, 20000, 5000), 3000);
    ck_assert_uint_eq(wg_grpc_deadline_ms(0, 700, 0), 700);
}
END_TEST

START_TEST(retry_methods)
{
    char *m[] = { "/users.Users/Get", "/catalog.Catalog/*" };
    ck_assert(wg_grpc_method_listed(m, 2, S("/users.Users/Get")));
    ck_assert(!wg_grpc_method_listed(m, 2, S("/users.Users/GetX")));
    ck_assert(!wg_grpc_method_listed(m, 2, S("/users.Users/Ge")));
    ck_assert(!wg_grpc_method_listed(m, 2, S("/users.Users/Create")));
    ck_assert(wg_grpc_method_listed(m, 2, S("/catalog.Catalog/List")));
    ck_assert(!wg_grpc_method_listed(m, 2, S("/catalog.Catalog/")));
    ck_assert(!wg_grpc_method_listed(m, 2, S("/catalog.Catalog/a/b")));
    ck_assert(!wg_grpc_method_listed(m, 2, S("/catalog.CatalogX/List")));
    ck_assert(!wg_grpc_method_listed(m, 0, S("/users.Users/Get")));
    ck_assert(wg_grpc_method_entry_ok("/a.B/C"));
    ck_assert(wg_grpc_method_entry_ok("/a.B/*"));
    ck_assert(!wg_grpc_method_entry_ok("a.B/C"));
    ck_assert(!wg_grpc_method_entry_ok("/a.B/"));
    ck_assert(!wg_grpc_method_entry_ok("//C"));
    ck_assert(!wg_grpc_method_entry_ok("/a.B/C/D"));
    ck_assert(!wg_grpc_method_entry_ok("/a.B/C*"));
    ck_assert(!wg_grpc_method_entry_ok("/a.B/C D"));
    ck_assert(!wg_grpc_method_entry_ok("/a.B"));
}
END_TEST

START_TEST(health_request)
{
    uint8_t out[64];
    /* Empty service: a zero-length message (proto3 omits the default). */
    ck_assert_uint_eq(wg_grpc_health_request("", 0, out, sizeof out), 5);
    ck_assert(memcmp(out, "\0\0\0\0\0", 5) == 0);
    /* "users": 0a 05 'users', framed with length 7. */
    ck_assert_uint_eq(wg_grpc_health_request(S("users"), out, sizeof out), 12);
    ck_assert(memcmp(out, "\0\0\0\0\x07\x0a\x05users", 12) == 0);
    ck_assert_uint_eq(wg_grpc_health_request(S("users"), out, 11), 0);
    /* A 200-byte name: the length is a two-byte varint (c8 01). */
    char big[200];
    memset(big, 'x', sizeof big);
    ck_assert_uint_eq(wg_grpc_health_request(big, sizeof big, out, sizeof out), 0);
    uint8_t large[256];
    ck_assert_uint_eq(wg_grpc_health_request(big, sizeof big, large, sizeof large), 5 + 203);
    ck_assert(large[5] == 0x0a && large[6] == 0xc8 && large[7] == 0x01 && large[4] == 203);
}
END_TEST

START_TEST(health_decode)
{
    ck_assert_int_eq(wg_grpc_health_decode((const uint8_t *)"", 0), WG_SERVING_UNKNOWN);
    ck_assert_int_eq(wg_grpc_health_decode((const uint8_t *)"\x08\x01", 2), WG_SERVING_SERVING);
    ck_assert_int_eq(wg_grpc_health_decode((const uint8_t *)"\x08\x02", 2), WG_SERVING_NOT_SERVING);
    ck_assert_int_eq(wg_grpc_health_decode((const uint8_t *)"\x08\x03", 2),
                     WG_SERVING_SERVICE_UNKNOWN);
    /* Last field 1 wins; unknown fields of every wire type are skipped. */
    ck_assert_int_eq(wg_grpc_health_decode((const uint8_t *)"\x08\x02\x08\x01", 4), 1);
    ck_assert_int_eq(wg_grpc_health_decode((const uint8_t *)"\x12\x02hi\x08\x01", 6), 1);
    ck_assert_int_eq(wg_grpc_health_decode((const uint8_t *)"\x19" "12345678" "\x08\x01", 11), 1);
    ck_assert_int_eq(wg_grpc_health_decode((const uint8_t *)"\x1d" "1234" "\x08\x01", 7), 1);
    ck_assert_int_eq(wg_grpc_health_decode((const uint8_t *)"\x08\x81\x01", 3), 129);
    /* Malformed: truncated varint, a length past the end, field 0, a group,
     * status as a string, an 11-byte varint, a negative enum. */
    ck_assert_int_eq(wg_grpc_health_decode((const uint8_t *)"\x08", 1), -1);
    ck_assert_int_eq(wg_grpc_health_decode((const uint8_t *)"\x08\x80", 2), -1);
    ck_assert_int_eq(wg_grpc_health_decode((const uint8_t *)"\x12\x05hi", 4), -1);
    ck_assert_int_eq(wg_grpc_health_decode((const uint8_t *)"\x00\x01", 2), -1);
    ck_assert_int_eq(wg_grpc_health_decode((const uint8_t *)"\x0b\x0c", 2), -1);
    ck_assert_int_eq(wg_grpc_health_decode((const uint8_t *)"\x0a\x01x", 3), -1);
    ck_assert_int_eq(wg_grpc_health_decode(
        (const uint8_t *)"\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", 12), -1);
    ck_assert_int_eq(wg_grpc_health_decode(
        (const uint8_t *)"\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", 11), -1);
    ck_assert_int_eq(wg_grpc_health_decode((const uint8_t *)"\x19" "1234", 5), -1);
}
END_TEST

START_TEST(frames)
{
    const uint8_t *msg;
    size_t ml, used;
    const uint8_t two[] = { 0, 0, 0, 0, 2, 0x08, 0x01, 0, 0, 0, 0, 0 };
    ck_assert_int_eq(wg_grpc_frame(two, 4, 100, &msg, &ml, &used), 0);
    ck_assert_int_eq(wg_grpc_frame(two, 6, 100, &msg, &ml, &used), 0);
    ck_assert_int_eq(wg_grpc_frame(two, sizeof two, 100, &msg, &ml, &used), 1);
    ck_assert(ml == 2 && used == 7 && msg == two + 5);
    ck_assert_int_eq(wg_grpc_frame(two + used, sizeof two - used, 100, &msg, &ml, &used), 1);
    ck_assert(ml == 0 && used == 5);
    ck_assert_int_eq(wg_grpc_frame(two, sizeof two, 1, &msg, &ml, &used), -1);
    const uint8_t compressed[] = { 1, 0, 0, 0, 0 };
    ck_assert_int_eq(wg_grpc_frame(compressed, 5, 100, &msg, &ml, &used), -1);
    const uint8_t huge[] = { 0, 0xff, 0xff, 0xff, 0xff };
    ck_assert_int_eq(wg_grpc_frame(huge, 5, 1 << 20, &msg, &ml, &used), -1);
}
END_TEST

/* The message boundaries of a stream, whatever its split into calls. */
START_TEST(frames_feed)
{
    /* an empty message, one of 3 bytes, one of 0x0100 bytes cut short */
    uint8_t s[5 + 5 + 3 + 5 + 256];
    memset(s, 0x80, sizeof s);
    memcpy(s, (const uint8_t[]){ 0, 0, 0, 0, 0, 0x80, 0, 0, 0, 3 }, 10);
    memcpy(s + 13, (const uint8_t[]){ 0, 0, 0, 1, 0 }, 5);
    const size_t ends[] = { 0, 5, 13, sizeof s };
    for (size_t cut = 0; cut <= sizeof s; cut++) {
        for (size_t len = 0; len <= sizeof s; len++) {
            struct wg_grpc_frames f = { 0 };
            size_t a = cut < len ? cut : len;
            wg_grpc_frames_feed(&f, s, a);
            wg_grpc_frames_feed(&f, s + a, len - a);
            bool at = false;
            for (size_t i = 0; i < sizeof ends / sizeof *ends; i++)
                at |= ends[i] == len;
            ck_assert_msg(wg_grpc_frames_between(&f) == at, "cut %zu len %zu", cut, len);
        }
    }
    struct wg_grpc_frames f = { 0 };    /* the largest length */
    wg_grpc_frames_feed(&f, (const uint8_t[]){ 0, 0xff, 0xff, 0xff, 0xff }, 5);
    ck_assert_uint_eq(f.left, 0xffffffffu);
}
END_TEST

/* A gRPC-Web trailer frame (flag 0x80) is noted once its flag byte is in;
 * 0x80 bytes inside a message or its length are not flags. */
START_TEST(frames_trailer)
{
    const uint8_t s[] = { 0, 0, 0, 0, 2, 0x80, 0x80, 1, 0, 0, 0, 0x80, 0x80, 0, 0, 0, 0 };
    for (size_t cut = 0; cut <= sizeof s; cut++) {
        struct wg_grpc_frames f = { 0 };
        wg_grpc_frames_feed(&f, s, cut);
        ck_assert_msg(!f.trailer, "cut %zu", cut);
    }
    const uint8_t t[] = { 0, 0, 0, 0, 1, 'x', 0x80, 0, 0, 0, 1, 'y' };
    for (size_t cut = 0; cut <= sizeof t; cut++) {
        struct wg_grpc_frames f = { 0 };
        wg_grpc_frames_feed(&f, t, cut);
        ck_assert_msg(f.trailer == (cut > 6), "cut %zu", cut);
        ck_assert_msg(wg_grpc_frames_between(&f) == (cut == 0 || cut == 6 || cut == 12), "cut %zu",
                      cut);
    }
}
END_TEST

/* ---- base64 (application/grpc-web-text) ---- */

static const struct { const char *bin, *text; } rfc4648[] = {
    { "", "" }, { "f", "Zg==" }, { "fo", "Zm8=" }, { "foo", "Zm9v" }, { "foob", "Zm9vYg==" },
    { "fooba", "Zm9vYmE=" }, { "foobar", "Zm9vYmFy" },
};

/* Encode in[len] in calls cut at a and b (a <= b <= len), then end. */
static size_t enc3(const uint8_t *in, size_t len, size_t a, size_t b, char *out)
{
    struct wg_b64_enc e = { 0 };
    size_t k = 0;
    k += wg_b64_encode(&e, in, a, out + k);
    ck_assert_uint_le(e.n, 2);
    k += wg_b64_encode(&e, in + a, b - a, out + k);
    k += wg_b64_encode(&e, in + b, len - b, out + k);
    k += wg_b64_encode_end(&e, out + k);
    ck_assert_uint_eq(e.n, 0);
    return k;
}

/* Decode text[len] in calls cut at a and b; -1 when refused. */
static long dec3(const char *text, size_t len, size_t a, size_t b, uint8_t *out, bool *done)
{
    struct wg_b64_dec s = { 0 };
    size_t k = 0, n;
    const size_t cut[4] = { 0, a, b, len };
    for (int i = 0; i < 3; i++) {
        if (!wg_b64_decode(&s, text + cut[i], cut[i + 1] - cut[i], out + k, &n))
            return -1;
        k += n;
    }
    *done = wg_b64_decode_done(&s);
    return (long)k;
}

START_TEST(base64_vectors)
{
    for (size_t i = 0; i < sizeof rfc4648 / sizeof *rfc4648; i++) {
        const char *bin = rfc4648[i].bin, *text = rfc4648[i].text;
        size_t bl = strlen(bin), tl = strlen(text);
        char out[16];
        uint8_t back[16];
        bool done;
        struct wg_b64_enc e = { 0 };
        ck_assert_uint_eq(wg_b64_encoded_len(&e, bl), bl / 3 * 4);
        ck_assert_uint_eq(enc3((const uint8_t *)bin, bl, 0, bl, out), tl);
        ck_assert(memcmp(out, text, tl) == 0);
        ck_assert_int_eq(dec3(text, tl, 0, tl, back, &done), (long)bl);
        ck_assert(done && memcmp(back, bin, bl) == 0);
    }
    /* padded chunks one after the other, as grpc-web clients send them */
    static const char chunks[] = "Zg==Zm8=Zm9vZm9vYg==";
    uint8_t out[32];
    bool done;
    ck_assert_int_eq(dec3(S(chunks), 0, 0, out, &done), 10);
    ck_assert(done && memcmp(out, "ffofoofoob", 10) == 0);
    /* sizing: what fits, what it writes */
    struct wg_b64_enc e = { .held = { 1, 2 }, .n = 2 };
    ck_assert_uint_eq(wg_b64_encode_fits(&e, 3), 0);
    ck_assert_uint_eq(wg_b64_encode_fits(&e, 4), 1);
    ck_assert_uint_eq(wg_b64_encode_fits(&e, 11), 4);
    ck_assert_uint_eq(wg_b64_encoded_len(&e, 1), 4);
    ck_assert_uint_eq(wg_b64_encoded_len(&e, 0), 0);
    char four[4];
    ck_assert_uint_eq(wg_b64_encode(&e, NULL, 0, four), 0);
    ck_assert_uint_eq(wg_b64_encode_end(&e, four), 4);
    ck_assert(memcmp(four, "AQI=", 4) == 0);
    ck_assert_uint_eq(wg_b64_encode_end(&e, four), 0);
}
END_TEST

/* Every cut of the input into three calls gives the same text; decoding it
 * at every cut (and in place) gives the bytes back. */
START_TEST(base64_every_boundary)
{
    uint8_t bin[40];
    for (size_t i = 0; i < sizeof bin; i++)
        bin[i] = (uint8_t)(i * 37 + 11);
    for (size_t len = 0; len <= sizeof bin; len++) {
        char whole[64];
        size_t tl = enc3(bin, len, 0, len, whole);
        ck_assert_uint_eq(tl, (len + 2) / 3 * 4);
        for (size_t a = 0; a <= len; a++)
            for (size_t b = a; b <= len; b++) {
                char text[64];
                ck_assert_uint_eq(enc3(bin, len, a, b, text), tl);
                ck_assert(memcmp(text, whole, tl) == 0);
            }
        for (size_t a = 0; a <= tl; a++)
            for (size_t b = a; b <= tl; b++) {
                uint8_t out[64];
                bool done;
                ck_assert_int_eq(dec3(whole, tl, a, b, out, &done), (long)len);
                ck_assert(done && memcmp(out, bin, len) == 0);
                char place[64];         /* in place: out is the text itself */
                memcpy(place, whole, tl);
                ck_assert_int_eq(dec3(place, tl, a, b, (uint8_t *)place, &done), (long)len);
                ck_assert(done && memcmp(place, bin, len) == 0);
            }
    }
}
END_TEST

/* Padded chunks of every length pair, cut anywhere, decode to both parts. */
START_TEST(base64_chunks)
{
    uint8_t bin[12];
    for (size_t i = 0; i < sizeof bin; i++)
        bin[i] = (uint8_t)(0xF0 ^ (i * 29));
    for (size_t n1 = 0; n1 <= 6; n1++)
        for (size_t n2 = 0; n1 + n2 <= sizeof bin; n2++) {
            char text[32];
            size_t tl = enc3(bin, n1, 0, n1, text);
            tl += enc3(bin + n1, n2, 0, n2, text + tl);
            for (size_t a = 0; a <= tl; a++) {
                uint8_t out[32];
                bool done;
                ck_assert_int_eq(dec3(text, tl, a, a, out, &done), (long)(n1 + n2));
                ck_assert(done && memcmp(out, bin, n1 + n2) == 0);
                /* cut short: nothing refused, but not done unless on a group's end */
                ck_assert_int_ge(dec3(text, a, a / 2, a, out, &done), 0);
                ck_assert(done == (a % 4 == 0));
            }
        }
}
END_TEST

START_TEST(base64_garbage)
{
    static const char good[] = "Zm9vYmFyZg==Zm8=";
    uint8_t out[32];
    bool done;
    /* any byte outside the alphabet, at any position, is refused wherever the calls are cut */
    for (int c = 0; c < 256; c++) {
        bool alpha = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                     c == '+' || c == '/' || c == '=';
        if (alpha)
            continue;
        for (size_t at = 0; at < sizeof good; at++) {
            char bad[sizeof good + 1];
            memcpy(bad, good, at);
            bad[at] = (char)c;
            memcpy(bad + at + 1, good + at, sizeof good - 1 - at);
            for (size_t a = 0; a <= sizeof good; a += 3)
                ck_assert_int_eq(dec3(bad, sizeof good, a < at ? a : at, at + 1, out, &done), -1);
        }
    }
    /* '=' where no padding may be */
    static const char *const refused[] = {
        "=", "====", "Z===", "Zg=x", "Zg=Zm9v", "Zm9v=", "Zm9vZ=", "Zg===", "Zm8==",
        "Zm9v\r\n", " Zm9v", "Zm9v-_",
    };
    for (size_t i = 0; i < sizeof refused / sizeof *refused; i++) {
        size_t len = strlen(refused[i]);
        ck_assert_msg(dec3(refused[i], len, 0, len, out, &done) == -1, "%s", refused[i]);
    }
    ck_assert_int_eq(dec3("Zm9vYmFy", 9, 0, 9, out, &done), -1);    /* its NUL */
    /* incomplete at the end: not refused while it may go on, not done */
    static const char *const open[] = { "Z", "Zg", "Zg=", "Zm9", "Zm9vZ", "Zm9=v" };
    for (size_t i = 0; i < sizeof open / sizeof *open; i++) {
        size_t len = strlen(open[i]);
        ck_assert_int_ge(dec3(open[i], len, 0, len, out, &done), 0);
        ck_assert_msg(!done, "%s", open[i]);
    }
    /* trailing bits of a padded group are not checked (RFC 4648 §3.5 allows either) */
    ck_assert_int_eq(dec3("Zh==", 4, 0, 4, out, &done), 1);
    ck_assert(done && out[0] == 'f');
}
END_TEST

int main(void)
{
    Suite *s = suite_create("grpc");
    TCase *t = tcase_create("pure");
    tcase_add_test(t, status_from_http);
    tcase_add_test(t, content_type);
    tcase_add_test(t, grpc_web);
    tcase_add_test(t, message_encoding);
    tcase_add_test(t, timeout);
    tcase_add_test(t, retry_methods);
    tcase_add_test(t, health_request);
    tcase_add_test(t, health_decode);
    tcase_add_test(t, frames);
    tcase_add_test(t, frames_feed);
    tcase_add_test(t, frames_trailer);
    tcase_add_test(t, base64_vectors);
    tcase_add_test(t, base64_every_boundary);
    tcase_add_test(t, base64_chunks);
    tcase_add_test(t, base64_garbage);
    suite_add_tcase(s, t);
    return unit_run(s);
}
