/* cidr: trusted_proxies ranges and X-Forwarded-For hops (DESIGN §10). */
#include <arpa/inet.h>
#include <check.h>
#include <netinet/in.h>
#include <string.h>

#include "waygate/cidr.h"

static bool in(const char *range, const char *hop)
{
    struct wg_cidr c;
    struct wg_ip ip;
    ck_assert_ptr_null(wg_cidr_parse(range, &c));
    ck_assert_msg(wg_ip_parse(hop, strlen(hop), &ip), "hop %s", hop);
    struct wg_cidr_list l = { &c, 1, true };
    return wg_cidr_match(&l, &ip);
}

START_TEST(ranges_match)
{
    ck_assert(in("10.0.0.0/8", "10.255.1.2"));
    ck_assert(!in("10.0.0.0/8", "11.0.0.1"));
    ck_assert(in("192.0.2.128/25", "192.0.2.200"));
    ck_assert(!in("192.0.2.128/25", "192.0.2.100"));
    ck_assert(in("192.0.2.7", "192.0.2.7:8080"));
    ck_assert(!in("192.0.2.7", "192.0.2.8"));
    ck_assert(in("0.0.0.0/0", "203.0.113.1"));
    ck_assert(!in("0.0.0.0/0", "2001:db8::1"));
    ck_assert(in("2001:db8::/32", "[2001:db8:ffff::1]:443"));
    ck_assert(!in("2001:db8::/33", "2001:db8:8000::1"));
    ck_assert(in("10.0.0.0/8", "::ffff:10.1.1.1"));          /* mapped: as IPv4 */
    ck_assert(in("::ffff:10.0.0.0/104", "10.2.3.4"));
    ck_assert(in("::/0", "::1"));
}
END_TEST

START_TEST(refusals)
{
    static const char *bad[] = { "", "/8", "10.0.0.1/8", "10.0.0.0/33", "10.0.0.0/", "10.0.0.0/08",
                                 "10.0.0.0/-1", "::1/129", "1.2.3/24", "host.example", "10.0.0.0/8x" };
    struct wg_cidr c;
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++)
        ck_assert_msg(wg_cidr_parse(bad[k], &c) != NULL, "accepted '%s'", bad[k]);
    struct wg_ip ip;
    static const char *hops[] = { "unknown", "[::1", "[::1]x", "1.2.3.4:5:6x", "" };
    for (size_t k = 0; k < sizeof hops / sizeof hops[0]; k++)
        ck_assert_msg(!wg_ip_parse(hops[k], strlen(hops[k]), &ip), "hop '%s'", hops[k]);
}
END_TEST

START_TEST(sockaddr_unmapped)
{
    struct sockaddr_in6 s6 = { .sin6_family = AF_INET6 };
    inet_pton(AF_INET6, "::ffff:192.0.2.9", &s6.sin6_addr);
    struct wg_ip ip;
    ck_assert(wg_ip_from_sockaddr((struct sockaddr *)&s6, &ip));
    ck_assert_int_eq(ip.family, AF_INET);
    ck_assert_int_eq(ip.a[0], 192);
    ck_assert_int_eq(ip.a[3], 9);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("cidr");
    TCase *t = tcase_create("cidr");
    tcase_add_test(t, ranges_match);
    tcase_add_test(t, refusals);
    tcase_add_test(t, sockaddr_unmapped);
    suite_add_tcase(s, t);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
