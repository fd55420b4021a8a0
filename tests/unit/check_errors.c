/* errors and sockaddr: the two small modules listener, tls, tcp_proxy, pool
 * and the prober use without reaching into config or record. */
#include <arpa/inet.h>
#include <check.h>
#include <netinet/in.h>
#include <string.h>

#include "waygate/errors.h"
#include "waygate/sockaddr.h"
#include "unit_util.h"

START_TEST(errors_list)
{
    struct wg_errors e = { 0 };
    for (int k = 0; k < 20; k++)
        wg_errors_add(&e, "f.yaml:%d:1: bad %s", k + 1, "key");
    ck_assert_uint_eq(e.n, 20);
    ck_assert_str_eq(e.lines[0], "f.yaml:1:1: bad key");
    ck_assert_str_eq(e.lines[19], "f.yaml:20:1: bad key");
    wg_errors_free(&e);
    ck_assert_uint_eq(e.n, 0);
    ck_assert_ptr_null(e.lines);
    wg_errors_add(&e, "again");                 /* reusable after free */
    ck_assert_str_eq(e.lines[0], "again");
    wg_errors_free(&e);
    wg_errors_add(NULL, "ignored");
    wg_errors_free(NULL);
}
END_TEST

START_TEST(sockaddr_forms)
{
    struct sockaddr_in in4 = { .sin_family = AF_INET, .sin_port = htons(8080) };
    struct sockaddr_in6 in6 = { .sin6_family = AF_INET6, .sin6_port = htons(443) };
    struct sockaddr un = { .sa_family = AF_UNIX };
    char buf[64];

    inet_pton(AF_INET, "127.0.0.1", &in4.sin_addr);
    inet_pton(AF_INET6, "::1", &in6.sin6_addr);
    wg_sockaddr_text((struct sockaddr *)&in4, buf, sizeof buf);
    ck_assert_str_eq(buf, "127.0.0.1:8080");
    wg_sockaddr_text((struct sockaddr *)&in6, buf, sizeof buf);
    ck_assert_str_eq(buf, "[::1]:443");
    wg_sockaddr_text(&un, buf, sizeof buf);
    ck_assert_str_eq(buf, "(family 1)");
    wg_sockaddr_text((struct sockaddr *)&in4, buf, 6);
    ck_assert_str_eq(buf, "127.0");
    buf[0] = 'x';
    wg_sockaddr_text((struct sockaddr *)&in4, buf, 0);
    ck_assert_int_eq(buf[0], 'x');
}
END_TEST

int main(void)
{
    Suite *s = suite_create("errors");
    TCase *t = tcase_create("errors");
    tcase_add_test(t, errors_list);
    tcase_add_test(t, sockaddr_forms);
    suite_add_tcase(s, t);
    return unit_run(s);
}
