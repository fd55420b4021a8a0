/* check_proxy_protocol — PROXY protocol v1/v2 parsing: valid headers of
 * every kind, every strict refusal, and byte-at-a-time resumption. */
#include "waygate/proxy_protocol.h"

#include <arpa/inet.h>
#include <check.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

static const uint8_t SIG[12] = { 0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49,
                                 0x54, 0x0a };

/* Parse `len` bytes whole, and every prefix (must be AGAIN, or the same
 * ERROR as the whole). Returns the whole result. */
static enum wg_proxy_result parse(const void *buf, size_t len, struct wg_proxy_info *info,
                                  size_t *used)
{
    enum wg_proxy_result whole = wg_proxy_parse(buf, len, info, used);
    for (size_t n = 0; n < len; n++) {
        struct wg_proxy_info tmp;
        size_t u;
        uint8_t *copy = malloc(n ? n : 1);
        ck_assert_ptr_nonnull(copy);
        memcpy(copy, buf, n);
        enum wg_proxy_result r = wg_proxy_parse(copy, n, &tmp, &u);
        free(copy);
        if (whole != WG_PROXY_ERROR || r != WG_PROXY_ERROR)
            ck_assert_msg(r == WG_PROXY_AGAIN || (r == WG_PROXY_DONE && whole == WG_PROXY_DONE &&
                                                  u <= n),
                          "prefix of %zu bytes gave %d (whole %d)", n, r, whole);
    }
    return whole;
}

static void want_v4(const struct sockaddr_storage *ss, const char *ip, int port)
{
    const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;
    char text[INET_ADDRSTRLEN];
    ck_assert_int_eq(sin->sin_family, AF_INET);
    ck_assert_ptr_nonnull(inet_ntop(AF_INET, &sin->sin_addr, text, sizeof text));
    ck_assert_str_eq(text, ip);
    ck_assert_int_eq(ntohs(sin->sin_port), port);
}

static void want_v6(const struct sockaddr_storage *ss, const char *ip, int port)
{
    const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;
    char text[INET6_ADDRSTRLEN];
    ck_assert_int_eq(sin6->sin6_family, AF_INET6);
    ck_assert_ptr_nonnull(inet_ntop(AF_INET6, &sin6->sin6_addr, text, sizeof text));
    ck_assert_str_eq(text, ip);
    ck_assert_int_eq(ntohs(sin6->sin6_port), port);
}

START_TEST(v1_tcp4_and_tcp6)
{
    struct wg_proxy_info pi;
    size_t used;
    const char *h = "PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\nGET /";
    ck_assert_int_eq(parse(h, strlen(h), &pi, &used), WG_PROXY_DONE);
    ck_assert_uint_eq(used, strlen(h) - 5);
    ck_assert_int_eq(pi.version, 1);
    ck_assert(!pi.local);
    want_v4(&pi.src, "192.0.2.1", 56324);
    want_v4(&pi.dst, "198.51.100.2", 443);
    h = "PROXY TCP6 2001:db8::1 ::1 0 65535\r\n";
    ck_assert_int_eq(parse(h, strlen(h), &pi, &used), WG_PROXY_DONE);
    want_v6(&pi.src, "2001:db8::1", 0);
    want_v6(&pi.dst, "::1", 65535);
    h = "PROXY UNKNOWN\r\n";
    ck_assert_int_eq(parse(h, strlen(h), &pi, &used), WG_PROXY_DONE);
    ck_assert(pi.local);
    h = "PROXY UNKNOWN ffff:f::1 ffff::2 1 2\r\n";
    ck_assert_int_eq(parse(h, strlen(h), &pi, &used), WG_PROXY_DONE);
    ck_assert(pi.local);
}
END_TEST

START_TEST(v1_refusals)
{
    static const char *const bad[] = {
        "GET / HTTP/1.1\r\n",
        "proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",             /* bare LF */
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r\n",
        "PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",          /* double space */
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
        "PROXY TCP4 ::1 5.6.7.8 1 2\r\n",               /* family mismatch */
        "PROXY TCP6 1.2.3.4 ::1 1 2\r\n",
        "PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",          /* leading zero */
        "PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",
        "PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
        "PROXY UNKNOWNX\r\n",
        "PROXY \r\n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct wg_proxy_info pi;
        size_t used;
        ck_assert_msg(parse(bad[i], strlen(bad[i]), &pi, &used) == WG_PROXY_ERROR, "accepted %s",
                      bad[i]);
    }
    char longline[200] = "PROXY TCP6 ";
    memset(longline + 11, 'a', 120);
    strcpy(longline + 131, "\r\n");
    struct wg_proxy_info pi;
    size_t used;
    ck_assert_int_eq(wg_proxy_parse((const uint8_t *)longline, strlen(longline), &pi, &used),
                     WG_PROXY_ERROR);
    ck_assert_int_eq(wg_proxy_parse((const uint8_t *)longline, 107, &pi, &used), WG_PROXY_ERROR);
    ck_assert_int_eq(wg_proxy_parse((const uint8_t *)longline, 106, &pi, &used), WG_PROXY_AGAIN);
}
END_TEST

static size_t v2(uint8_t *out, uint8_t ver_cmd, uint8_t fam, const uint8_t *addr, size_t alen,
                 size_t tlv)
{
    memcpy(out, SIG, 12);
    out[12] = ver_cmd;
    out[13] = fam;
    out[14] = (uint8_t)((alen + tlv) >> 8);
    out[15] = (uint8_t)(alen + tlv);
    memcpy(out + 16, addr, alen);
    memset(out + 16 + alen, 0x04, tlv);
    return 16 + alen + tlv;
}

START_TEST(v2_proxy_local_and_tlvs)
{
    uint8_t buf[4096], a4[12] = { 10, 0, 0, 1, 10, 0, 0, 2, 0x1f, 0x90, 0x01, 0xbb };
    uint8_t a6[36] = { 0 };
    struct wg_proxy_info pi;
    size_t used, n = v2(buf, 0x21, 0x11, a4, sizeof a4, 0);
    ck_assert_int_eq(parse(buf, n, &pi, &used), WG_PROXY_DONE);
    ck_assert_uint_eq(used, 28);
    ck_assert_int_eq(pi.version, 2);
    want_v4(&pi.src, "10.0.0.1", 8080);
    want_v4(&pi.dst, "10.0.0.2", 443);
    n = v2(buf, 0x21, 0x11, a4, sizeof a4, 100);        /* TLVs skipped */
    ck_assert_int_eq(parse(buf, n, &pi, &used), WG_PROXY_DONE);
    ck_assert_uint_eq(used, 128);
    a6[15] = 1;
    a6[31] = 2;
    a6[33] = 80;
    a6[35] = 81;
    n = v2(buf, 0x21, 0x21, a6, sizeof a6, 0);
    ck_assert_int_eq(parse(buf, n, &pi, &used), WG_PROXY_DONE);
    want_v6(&pi.src, "::1", 80);
    want_v6(&pi.dst, "::2", 81);
    n = v2(buf, 0x20, 0x00, a4, 0, 0);                  /* LOCAL (health checks) */
    ck_assert_int_eq(parse(buf, n, &pi, &used), WG_PROXY_DONE);
    ck_assert(pi.local);
    ck_assert_uint_eq(used, 16);
    n = v2(buf, 0x20, 0x11, a4, sizeof a4, 0);          /* LOCAL with addresses: ignored */
    ck_assert_int_eq(parse(buf, n, &pi, &used), WG_PROXY_DONE);
    ck_assert(pi.local);
}
END_TEST

START_TEST(v2_refusals)
{
    uint8_t buf[8192], a4[12] = { 0 };
    struct wg_proxy_info pi;
    size_t used, n;
    n = v2(buf, 0x11, 0x11, a4, sizeof a4, 0);          /* version 1 in a v2 frame */
    ck_assert_int_eq(parse(buf, n, &pi, &used), WG_PROXY_ERROR);
    n = v2(buf, 0x22, 0x11, a4, sizeof a4, 0);          /* command 2 */
    ck_assert_int_eq(parse(buf, n, &pi, &used), WG_PROXY_ERROR);
    n = v2(buf, 0x21, 0x12, a4, sizeof a4, 0);          /* UDP */
    ck_assert_int_eq(parse(buf, n, &pi, &used), WG_PROXY_ERROR);
    n = v2(buf, 0x21, 0x31, a4, sizeof a4, 0);          /* unix */
    ck_assert_int_eq(parse(buf, n, &pi, &used), WG_PROXY_ERROR);
    n = v2(buf, 0x21, 0x11, a4, 8, 0);                  /* address block too short */
    ck_assert_int_eq(parse(buf, n, &pi, &used), WG_PROXY_ERROR);
    n = v2(buf, 0x21, 0x21, a4, 12, 0);
    ck_assert_int_eq(parse(buf, n, &pi, &used), WG_PROXY_ERROR);
    n = v2(buf, 0x21, 0x11, a4, sizeof a4, 4000);       /* over WG_PROXY_MAX */
    ck_assert_int_eq(wg_proxy_parse(buf, 16, &pi, &used), WG_PROXY_ERROR);
    memcpy(buf, SIG, 12);
    buf[5] = 'X';                                       /* broken signature */
    ck_assert_int_eq(wg_proxy_parse(buf, 16, &pi, &used), WG_PROXY_ERROR);
    ck_assert_int_eq(wg_proxy_parse(SIG, 5, &pi, &used), WG_PROXY_AGAIN);
}
END_TEST

static struct sockaddr_storage ss_of(const char *ip, int port)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    if (strchr(ip, ':')) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)port);
        ck_assert_int_eq(inet_pton(AF_INET6, ip, &s6->sin6_addr), 1);
    } else {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
        s4->sin_family = AF_INET;
        s4->sin_port = htons((uint16_t)port);
        ck_assert_int_eq(inet_pton(AF_INET, ip, &s4->sin_addr), 1);
    }
    return ss;
}

/* What waygate sends upstream, read back by waygate's own parser. */
START_TEST(v2_encode_round_trips)
{
    static const struct { const char *src, *dst, *want_src; int family; } cases[] = {
        { "192.0.2.7", "198.51.100.1", "192.0.2.7", AF_INET },
        { "2001:db8::7", "2001:db8::1", "2001:db8::7", AF_INET6 },
        { "::ffff:192.0.2.9", "::ffff:127.0.0.1", "192.0.2.9", AF_INET },   /* mapped */
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        struct sockaddr_storage src = ss_of(cases[k].src, 40000 + (int)k);
        struct sockaddr_storage dst = ss_of(cases[k].dst, 443);
        uint8_t h[WG_PROXY_V2_MAX];
        size_t n = wg_proxy_v2_encode((struct sockaddr *)&src, (struct sockaddr *)&dst, h);
        struct wg_proxy_info pi;
        size_t used = 0;
        ck_assert_int_eq(wg_proxy_parse(h, n, &pi, &used), WG_PROXY_DONE);
        ck_assert_uint_eq(used, n);
        ck_assert(!pi.local && pi.version == 2);
        ck_assert_int_eq(pi.src.ss_family, cases[k].family);
        char text[64];
        const void *a = pi.src.ss_family == AF_INET
                            ? (const void *)&((struct sockaddr_in *)&pi.src)->sin_addr
                            : (const void *)&((struct sockaddr_in6 *)&pi.src)->sin6_addr;
        ck_assert_ptr_nonnull(inet_ntop(pi.src.ss_family, a, text, sizeof text));
        ck_assert_str_eq(text, cases[k].want_src);
        uint16_t port = pi.src.ss_family == AF_INET ? ((struct sockaddr_in *)&pi.src)->sin_port
                                                    : ((struct sockaddr_in6 *)&pi.src)->sin6_port;
        ck_assert_int_eq(ntohs(port), 40000 + (int)k);
    }
    /* Mixed families: LOCAL, no address. */
    struct sockaddr_storage v4 = ss_of("192.0.2.7", 1), v6 = ss_of("2001:db8::1", 2);
    uint8_t h[WG_PROXY_V2_MAX];
    size_t n = wg_proxy_v2_encode((struct sockaddr *)&v6, (struct sockaddr *)&v4, h);
    struct wg_proxy_info pi;
    size_t used = 0;
    ck_assert_uint_eq(n, 16);
    ck_assert_int_eq(wg_proxy_parse(h, n, &pi, &used), WG_PROXY_DONE);
    ck_assert(pi.local);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("proxy_protocol");
    TCase *t = tcase_create("parse");
    tcase_add_test(t, v1_tcp4_and_tcp6);
    tcase_add_test(t, v1_refusals);
    tcase_add_test(t, v2_proxy_local_and_tlvs);
    tcase_add_test(t, v2_refusals);
    tcase_add_test(t, v2_encode_round_trips);
    suite_add_tcase(s, t);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
