/* Shared helpers for the Check suites: configs and records from text. */
#ifndef WAYGATE_UNIT_UTIL_H
#define WAYGATE_UNIT_UTIL_H

#include <arpa/inet.h>
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "waygate/config.h"
#include "waygate/record.h"

static inline struct wg_config *unit_config(const char *yaml)
{
    struct wg_errors errs = { 0 };
    struct wg_config *cfg = wg_config_load_buffer("unit.yaml", yaml, strlen(yaml), false, &errs);
    for (size_t k = 0; k < errs.n; k++)
        fprintf(stderr, "%s\n", errs.lines[k]);
    wg_errors_free(&errs);
    ck_assert_ptr_nonnull(cfg);
    return cfg;
}

/* Push an IPv4 record. */
static inline void unit_record(struct wg_record_set *set, const char *service, const char *id,
                               const char *ip, int port, unsigned weight)
{
    struct wg_record r = { 0 };
    struct sockaddr_in *sin = (struct sockaddr_in *)&r.addr;
    sin->sin_family = AF_INET;
    sin->sin_port = htons((uint16_t)port);
    ck_assert_int_eq(inet_pton(AF_INET, ip, &sin->sin_addr), 1);
    r.addrlen = sizeof *sin;
    r.service = strdup(service);
    r.id = strdup(id);
    r.weight = weight;
    ck_assert(wg_record_set_push(set, &r));
}

static inline int unit_run(Suite *s)
{
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}

#endif
