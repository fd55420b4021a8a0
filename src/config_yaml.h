/* config_yaml — a libyaml document walked safely, shared by the config
 * loader and the file registry parser. Private to those two modules.
 *
 * Promises:
 *  - Errors are "FILE:LINE:COL: <prefix><message>", 1-based, appended to the
 *    caller's wg_errors; an identical line is stored once per load, at most
 *    WG_YAML_MAX_ERRORS lines are stored, every problem is counted.
 *  - Aliases are followed but every node visit is counted: a walk that
 *    visits more than WG_YAML_MAX_EXPANSION nodes beyond the document's own
 *    (billion laughs) reports one error and sets `aborted`; nothing is
 *    visited after that.
 *  - Merge keys (`<<: *base`, `<<: [*a, *b]`) are supported in every
 *    mapping: explicit keys win, then earlier merge sources; nesting is
 *    bounded by WG_YAML_MAX_DEPTH.
 *  - Duplicate explicit keys are errors at the second occurrence.
 *  - Collections nest at most WG_YAML_MAX_DEPTH levels (libyaml's scanner
 *    is quadratic in flow nesting; deeper files are refused up front).
 */
#ifndef WAYGATE_CONFIG_YAML_H
#define WAYGATE_CONFIG_YAML_H

#include <stdbool.h>
#include <stddef.h>
#include <yaml.h>

#include "waygate/config.h"

#define WG_YAML_MAX_EXPANSION 100000
#define WG_YAML_MAX_DEPTH 64
#define WG_YAML_MAX_ERRORS 100

struct wg_yaml {
    const char *file;
    struct wg_errors *errs;
    yaml_document_t doc;
    bool loaded;                    /* doc must be deleted */
    bool aborted;                   /* budget exceeded, out of memory or too many errors */
    bool abort_on_error_cap;        /* config: stop at WG_YAML_MAX_ERRORS */
    unsigned long visits, budget;
    unsigned long n_errors;         /* problems found, stored or not */
    size_t first_line;              /* errs->n when the load started */
    const char *prefix;             /* prepended to messages ("service 'x': ") */
};

enum wg_yaml_status { WG_YAML_OK, WG_YAML_EMPTY, WG_YAML_FAILED };

/* Parse one YAML document from memory. FAILED: the error is reported and
 * nothing needs closing except via wg_yaml_close (always safe). EMPTY: no
 * document, or a document that is a plain null scalar. */
enum wg_yaml_status wg_yaml_load(struct wg_yaml *y, const char *file, const char *buf,
                                 size_t len, struct wg_errors *errs);
void wg_yaml_close(struct wg_yaml *y);
yaml_node_t *wg_yaml_root(struct wg_yaml *y);

/* Read a whole file (at most 64 MiB); reports "cannot open" itself. */
bool wg_yaml_read_file(const char *path, char **buf, size_t *len, struct wg_errors *errs);

void wg_yaml_error(struct wg_yaml *y, yaml_mark_t at, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void wg_yaml_oom(struct wg_yaml *y);
/* Order this load's lines by position (stable), for readable output. */
void wg_yaml_sort_errors(struct wg_yaml *y);

/* Counted access to a child node; NULL once aborted. */
yaml_node_t *wg_yaml_node(struct wg_yaml *y, int index, yaml_mark_t from);
size_t wg_yaml_seq_len(const yaml_node_t *seq);
yaml_node_t *wg_yaml_seq_item(struct wg_yaml *y, yaml_node_t *seq, size_t i);

bool wg_yaml_is_null(const yaml_node_t *n);     /* plain "", ~, null */
bool wg_yaml_is_scalar(const yaml_node_t *n);
/* The text of a scalar (plain null -> ""), or NULL after reporting
 * "KEY: expected a string" or "KEY: NUL characters are not allowed". */
const char *wg_yaml_str(struct wg_yaml *y, yaml_node_t *n, const char *key);

struct wg_yaml_pair {
    const char *name;
    yaml_node_t *key, *value;
};
struct wg_yaml_pairs {
    struct wg_yaml_pair *v;
    size_t n, cap;
};
/* The effective pairs of a mapping node (merge keys expanded, duplicates
 * and non-string keys reported and dropped). Free with wg_yaml_pairs_free. */
void wg_yaml_pairs(struct wg_yaml *y, yaml_node_t *map, struct wg_yaml_pairs *out);
void wg_yaml_pairs_free(struct wg_yaml_pairs *p);

/* The closest name (edit distance <= 2, <= 1 for short names) among n
 * records of `stride` bytes whose first member is a `const char *`. */
const char *wg_yaml_suggest(const char *name, const void *records, size_t n, size_t stride);

/* 1-based line of a node, for "first at line N". */
unsigned long wg_yaml_line(const yaml_node_t *n);

#endif
