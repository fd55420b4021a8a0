/* errors — a list of error lines, shared by every module that reports more
 * than one problem at once (config, listener, tls, admin, control).
 *
 * Promises:
 *  - wg_errors_add() appends one formatted line; out of memory loses that
 *    line, never the ones before it. A NULL list is ignored.
 *  - wg_errors_free() frees every line and leaves an empty, reusable list.
 *  - A zero-initialised struct wg_errors is an empty list.
 */
#ifndef WAYGATE_ERRORS_H
#define WAYGATE_ERRORS_H

#include <stddef.h>

/* A list of error lines, each "FILE:LINE:COL: message" where a place is known. */
struct wg_errors {
    char **lines;
    size_t n, cap;
};
void wg_errors_add(struct wg_errors *e, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void wg_errors_free(struct wg_errors *e);

#endif
