/* errors — the error list (errors.h). */
#include "waygate/errors.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

void wg_errors_add(struct wg_errors *e, const char *fmt, ...)
{
    va_list ap;
    char *line = NULL;
    int n;

    if (!e)
        return;
    va_start(ap, fmt);
    n = vasprintf(&line, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;                         /* out of memory: the line is lost */
    if (e->n == e->cap) {
        size_t cap = e->cap ? e->cap * 2 : 8;
        char **lines = realloc(e->lines, cap * sizeof *lines);
        if (!lines) {
            free(line);
            return;
        }
        e->lines = lines;
        e->cap = cap;
    }
    e->lines[e->n++] = line;
}

void wg_errors_free(struct wg_errors *e)
{
    if (!e)
        return;
    for (size_t i = 0; i < e->n; i++)
        free(e->lines[i]);
    free(e->lines);
    e->lines = NULL;
    e->n = e->cap = 0;
}
