/* config_yaml — libyaml documents with positions, bounded aliases, merge keys. */
#include "config_yaml.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define WG_YAML_MAX_FILE (64u << 20)

unsigned long wg_yaml_line(const yaml_node_t *n)
{
    return (unsigned long)n->start_mark.line + 1;
}

static bool already_reported(const struct wg_yaml *y, const char *line)
{
    for (size_t i = y->first_line; y->errs && i < y->errs->n; i++)
        if (strcmp(y->errs->lines[i], line) == 0)
            return true;
    return false;
}

static void add_line(struct wg_yaml *y, yaml_mark_t at, const char *msg)
{
    char line[1400];

    snprintf(line, sizeof line, "%s:%lu:%lu: %s%s", y->file, (unsigned long)at.line + 1,
             (unsigned long)at.column + 1, y->prefix ? y->prefix : "", msg);
    if (!y->errs || already_reported(y, line))
        return;
    wg_errors_add(y->errs, "%s", line);
}

void wg_yaml_error(struct wg_yaml *y, yaml_mark_t at, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    size_t stored = y->errs ? y->errs->n - y->first_line : 0;

    y->n_errors++;
    if (stored > WG_YAML_MAX_ERRORS)
        return;
    if (stored == WG_YAML_MAX_ERRORS) {
        const char *p = y->prefix;
        y->prefix = NULL;
        snprintf(msg, sizeof msg, "too many errors; only the first %d are shown",
                 WG_YAML_MAX_ERRORS);
        add_line(y, at, msg);
        y->prefix = p;
        if (y->abort_on_error_cap)
            y->aborted = true;
        return;
    }
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    add_line(y, at, msg);
}

void wg_yaml_oom(struct wg_yaml *y)
{
    yaml_mark_t none = { 0, 0, 0 };

    if (!y->aborted)
        wg_yaml_error(y, none, "out of memory");
    y->aborted = true;
}

struct error_pos {
    unsigned long line, col;
    size_t index;
    char *text;
};

static int error_pos_cmp(const void *a, const void *b)
{
    const struct error_pos *x = a, *y = b;

    if (x->line != y->line)
        return x->line < y->line ? -1 : 1;
    if (x->col != y->col)
        return x->col < y->col ? -1 : 1;
    return x->index < y->index ? -1 : x->index > y->index;
}

void wg_yaml_sort_errors(struct wg_yaml *y)
{
    size_t n = y->errs ? y->errs->n - y->first_line : 0, skip = strlen(y->file) + 1;
    struct error_pos *v;

    if (n < 2 || !(v = calloc(n, sizeof *v)))
        return;                         /* unsorted is still correct */
    for (size_t i = 0; i < n; i++) {
        char *text = y->errs->lines[y->first_line + i];
        v[i].index = i;
        v[i].text = text;
        if (strlen(text) > skip)
            sscanf(text + skip, "%lu:%lu", &v[i].line, &v[i].col);
    }
    qsort(v, n, sizeof *v, error_pos_cmp);
    for (size_t i = 0; i < n; i++)
        y->errs->lines[y->first_line + i] = v[i].text;
    free(v);
}

/* libyaml reports reader errors (bad UTF-8, control characters) by byte
 * offset only: derive the line and column from the input. */
static yaml_mark_t mark_of_offset(const char *buf, size_t len, size_t off)
{
    yaml_mark_t m = { off, 0, 0 };

    for (size_t i = 0; i < off && i < len; i++) {
        if (buf[i] == '\n') {
            m.line++;
            m.column = 0;
        } else {
            m.column++;
        }
    }
    return m;
}

static void report_parser(struct wg_yaml *y, const yaml_parser_t *p, const char *buf,
                          size_t len)
{
    const char *problem = p->problem ? p->problem : "malformed document";

    if (p->error == YAML_MEMORY_ERROR) {
        wg_yaml_oom(y);
    } else if (p->error == YAML_READER_ERROR) {
        yaml_mark_t m = mark_of_offset(buf, len, p->problem_offset);
        if (p->problem_value != -1)
            wg_yaml_error(y, m, "invalid YAML: %s (0x%02X)", problem, (unsigned)p->problem_value);
        else
            wg_yaml_error(y, m, "invalid YAML: %s", problem);
    } else if (p->context) {
        wg_yaml_error(y, p->problem_mark, "invalid YAML: %s (%s at line %lu)", problem,
                      p->context, (unsigned long)p->context_mark.line + 1);
    } else {
        wg_yaml_error(y, p->problem_mark, "invalid YAML: %s", problem);
    }
}

/* A second document in the stream is refused rather than ignored. */
static enum wg_yaml_status check_single(struct wg_yaml *y, yaml_parser_t *p, const char *buf,
                                        size_t len)
{
    yaml_document_t next;
    enum wg_yaml_status st = WG_YAML_OK;

    if (!yaml_parser_load(p, &next)) {
        report_parser(y, p, buf, len);
        return WG_YAML_FAILED;
    }
    yaml_node_t *root = yaml_document_get_root_node(&next);
    if (root) {
        wg_yaml_error(y, next.start_mark, "only one YAML document is allowed");
        st = WG_YAML_FAILED;
    }
    yaml_document_delete(&next);
    return st;
}

/* libyaml's scanner costs O(depth) per token inside flow collections, so
 * "[[[[..." is quadratic: a first event pass refuses deep nesting early,
 * before the document is built. It also reports syntax errors. */
static bool check_nesting(struct wg_yaml *y, const char *buf, size_t len)
{
    yaml_parser_t p;
    yaml_event_t ev;
    unsigned depth = 0;
    bool ok = true, end = false;

    if (!yaml_parser_initialize(&p)) {
        wg_yaml_oom(y);
        return false;
    }
    yaml_parser_set_input_string(&p, (const unsigned char *)buf, len);
    yaml_parser_set_encoding(&p, YAML_UTF8_ENCODING);
    while (ok && !end) {
        if (!yaml_parser_parse(&p, &ev)) {
            report_parser(y, &p, buf, len);
            ok = false;
            break;
        }
        if (ev.type == YAML_SEQUENCE_START_EVENT || ev.type == YAML_MAPPING_START_EVENT) {
            if (++depth > WG_YAML_MAX_DEPTH) {
                wg_yaml_error(y, ev.start_mark, "nesting too deep (max %d levels)",
                              WG_YAML_MAX_DEPTH);
                ok = false;
            }
        } else if (ev.type == YAML_SEQUENCE_END_EVENT || ev.type == YAML_MAPPING_END_EVENT) {
            depth--;
        }
        end = ev.type == YAML_STREAM_END_EVENT;
        yaml_event_delete(&ev);
    }
    yaml_parser_delete(&p);
    return ok;
}

enum wg_yaml_status wg_yaml_load(struct wg_yaml *y, const char *file, const char *buf,
                                 size_t len, struct wg_errors *errs)
{
    yaml_parser_t p;
    enum wg_yaml_status st;

    memset(y, 0, sizeof *y);
    y->file = file;
    y->errs = errs;
    y->first_line = errs ? errs->n : 0;
    if (!check_nesting(y, buf, len))
        return WG_YAML_FAILED;
    if (!yaml_parser_initialize(&p)) {
        wg_yaml_oom(y);
        return WG_YAML_FAILED;
    }
    yaml_parser_set_input_string(&p, (const unsigned char *)buf, len);
    yaml_parser_set_encoding(&p, YAML_UTF8_ENCODING);
    if (!yaml_parser_load(&p, &y->doc)) {
        report_parser(y, &p, buf, len);
        st = WG_YAML_FAILED;
        goto done;
    }
    y->loaded = true;
    y->budget = (unsigned long)(y->doc.nodes.top - y->doc.nodes.start) + WG_YAML_MAX_EXPANSION;
    yaml_node_t *root = yaml_document_get_root_node(&y->doc);
    st = root && !wg_yaml_is_null(root) ? WG_YAML_OK : WG_YAML_EMPTY;
    if (root && check_single(y, &p, buf, len) == WG_YAML_FAILED)
        st = WG_YAML_FAILED;
done:
    yaml_parser_delete(&p);
    return st;
}

void wg_yaml_close(struct wg_yaml *y)
{
    if (y->loaded)
        yaml_document_delete(&y->doc);
    y->loaded = false;
}

yaml_node_t *wg_yaml_root(struct wg_yaml *y)
{
    return y->loaded ? yaml_document_get_root_node(&y->doc) : NULL;
}

bool wg_yaml_read_file(const char *path, char **buf, size_t *len, struct wg_errors *errs)
{
    FILE *f = fopen(path, "rb");
    struct stat st;
    char *data = NULL;
    int err = ENOMEM;

    if (!f) {
        err = errno;
        goto fail;
    }
    if (fstat(fileno(f), &st) != 0 || S_ISDIR(st.st_mode)) {
        err = S_ISDIR(st.st_mode) ? EISDIR : errno;
        goto fail;
    }
    if (st.st_size > (off_t)WG_YAML_MAX_FILE) {
        err = EFBIG;
        goto fail;
    }
    data = malloc((size_t)st.st_size + 1);
    if (!data)
        goto fail;
    size_t n = fread(data, 1, (size_t)st.st_size + 1, f);
    if (ferror(f) || n > (size_t)st.st_size) {
        err = ferror(f) ? EIO : EFBIG;      /* grew while reading */
        goto fail;
    }
    fclose(f);
    data[n] = '\0';
    *buf = data;
    *len = n;
    return true;
fail:
    wg_errors_add(errs, "%s:1:1: cannot open '%s': %s", path, path, strerror(err));
    free(data);
    if (f)
        fclose(f);
    return false;
}

yaml_node_t *wg_yaml_node(struct wg_yaml *y, int index, yaml_mark_t from)
{
    if (y->aborted)
        return NULL;
    if (++y->visits > y->budget) {
        wg_yaml_error(y, from, "too many nodes after alias expansion (limit %d)",
                      WG_YAML_MAX_EXPANSION);
        y->aborted = true;
        return NULL;
    }
    return yaml_document_get_node(&y->doc, index);
}

size_t wg_yaml_seq_len(const yaml_node_t *seq)
{
    return (size_t)(seq->data.sequence.items.top - seq->data.sequence.items.start);
}

yaml_node_t *wg_yaml_seq_item(struct wg_yaml *y, yaml_node_t *seq, size_t i)
{
    return wg_yaml_node(y, seq->data.sequence.items.start[i], seq->start_mark);
}

bool wg_yaml_is_scalar(const yaml_node_t *n)
{
    return n->type == YAML_SCALAR_NODE;
}

bool wg_yaml_is_null(const yaml_node_t *n)
{
    const char *s = (const char *)n->data.scalar.value;

    if (n->type != YAML_SCALAR_NODE || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return false;
    return !*s || !strcmp(s, "~") || !strcmp(s, "null") || !strcmp(s, "Null") ||
           !strcmp(s, "NULL");
}

const char *wg_yaml_str(struct wg_yaml *y, yaml_node_t *n, const char *key)
{
    if (n->type != YAML_SCALAR_NODE) {
        wg_yaml_error(y, n->start_mark, "%s: expected a string", key);
        return NULL;
    }
    if (wg_yaml_is_null(n))
        return "";
    if (strlen((const char *)n->data.scalar.value) != n->data.scalar.length) {
        wg_yaml_error(y, n->start_mark, "%s: NUL characters are not allowed", key);
        return NULL;
    }
    return (const char *)n->data.scalar.value;
}

static const struct wg_yaml_pair *pairs_find(const struct wg_yaml_pairs *p, const char *name)
{
    for (size_t i = 0; i < p->n; i++)
        if (strcmp(p->v[i].name, name) == 0)
            return &p->v[i];
    return NULL;
}

static bool pairs_push(struct wg_yaml *y, struct wg_yaml_pairs *p, const char *name,
                       yaml_node_t *key, yaml_node_t *value)
{
    if (p->n == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 16;
        struct wg_yaml_pair *v = realloc(p->v, cap * sizeof *v);
        if (!v) {
            wg_yaml_oom(y);
            return false;
        }
        p->v = v;
        p->cap = cap;
    }
    p->v[p->n++] = (struct wg_yaml_pair){ name, key, value };
    return true;
}

static bool is_merge_key(const yaml_node_t *k)
{
    return k->type == YAML_SCALAR_NODE && k->data.scalar.style == YAML_PLAIN_SCALAR_STYLE &&
           strcmp((const char *)k->data.scalar.value, "<<") == 0;
}

static void collect(struct wg_yaml *y, yaml_node_t *map, struct wg_yaml_pairs *out,
                    bool merged, unsigned depth);

/* `<<: *a` or `<<: [*a, *b]`: keys not yet present are added. */
static void merge_from(struct wg_yaml *y, yaml_node_t *src, struct wg_yaml_pairs *out,
                       unsigned depth)
{
    if (depth > WG_YAML_MAX_DEPTH) {
        wg_yaml_error(y, src->start_mark, "merge keys nested too deeply (max %d)",
                      WG_YAML_MAX_DEPTH);
        y->aborted = true;
        return;
    }
    if (src->type == YAML_MAPPING_NODE) {
        collect(y, src, out, true, depth);
        return;
    }
    if (src->type != YAML_SEQUENCE_NODE) {
        wg_yaml_error(y, src->start_mark,
                      "merge key '<<' expects a mapping or a list of mappings");
        return;
    }
    for (size_t i = 0; i < wg_yaml_seq_len(src) && !y->aborted; i++) {
        yaml_node_t *item = wg_yaml_seq_item(y, src, i);
        if (item && item->type != YAML_MAPPING_NODE)
            wg_yaml_error(y, item->start_mark,
                          "merge key '<<' expects a mapping or a list of mappings");
        else if (item)
            collect(y, item, out, true, depth);
    }
}

static void collect_explicit(struct wg_yaml *y, yaml_node_t *k, yaml_node_t *v,
                             struct wg_yaml_pairs *out, bool merged)
{
    const char *name;
    const struct wg_yaml_pair *first;

    if (k->type != YAML_SCALAR_NODE ||
        strlen((const char *)k->data.scalar.value) != k->data.scalar.length) {
        if (!merged)
            wg_yaml_error(y, k->start_mark, "mapping keys must be strings");
        return;
    }
    name = (const char *)k->data.scalar.value;
    first = pairs_find(out, name);
    if (first && !merged)
        wg_yaml_error(y, k->start_mark, "duplicate key '%s' (first at line %lu)", name,
                      wg_yaml_line(first->key));
    else if (!first)
        pairs_push(y, out, name, k, v);
}

static void collect(struct wg_yaml *y, yaml_node_t *map, struct wg_yaml_pairs *out,
                    bool merged, unsigned depth)
{
    yaml_node_pair_t *p;
    bool has_merge = false;

    for (p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
        yaml_node_t *k = wg_yaml_node(y, p->key, map->start_mark);
        yaml_node_t *v = wg_yaml_node(y, p->value, map->start_mark);
        if (!k || !v)
            return;
        if (is_merge_key(k))
            has_merge = true;
        else
            collect_explicit(y, k, v, out, merged);
    }
    /* Second pass over nodes already counted above: uncounted access. */
    for (p = map->data.mapping.pairs.start; has_merge && p < map->data.mapping.pairs.top; p++) {
        yaml_node_t *k = yaml_document_get_node(&y->doc, p->key);
        yaml_node_t *v = yaml_document_get_node(&y->doc, p->value);
        if (y->aborted)
            return;
        if (k && v && is_merge_key(k))
            merge_from(y, v, out, depth + 1);
    }
}

void wg_yaml_pairs(struct wg_yaml *y, yaml_node_t *map, struct wg_yaml_pairs *out)
{
    memset(out, 0, sizeof *out);
    collect(y, map, out, false, 0);
}

void wg_yaml_pairs_free(struct wg_yaml_pairs *p)
{
    free(p->v);
    memset(p, 0, sizeof *p);
}

/* Optimal string alignment distance: an adjacent transposition ("tsl" for
 * "tls") costs one edit, like a substitution. */
static unsigned edit_distance(const char *a, const char *b)
{
    unsigned d[3][65], la = (unsigned)strlen(a), lb = (unsigned)strlen(b);

    if (la > 64 || lb > 64)
        return 99;
    for (unsigned j = 0; j <= lb; j++)
        d[0][j] = j;
    for (unsigned i = 1; i <= la; i++) {
        unsigned *row = d[i % 3], *up = d[(i - 1) % 3], *up2 = d[(i + 1) % 3];
        row[0] = i;
        for (unsigned j = 1; j <= lb; j++) {
            unsigned best = up[j - 1] + (a[i - 1] != b[j - 1]);
            if (up[j] + 1 < best)
                best = up[j] + 1;
            if (row[j - 1] + 1 < best)
                best = row[j - 1] + 1;
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] &&
                up2[j - 2] + 1 < best)
                best = up2[j - 2] + 1;
            row[j] = best;
        }
    }
    return d[la % 3][lb];
}

const char *wg_yaml_suggest(const char *name, const void *records, size_t n, size_t stride)
{
    unsigned limit = strlen(name) <= 3 ? 1 : 2, best = limit + 1;
    const char *found = NULL;

    for (size_t i = 0; i < n; i++) {
        const char *cand = *(const char *const *)((const char *)records + i * stride);
        unsigned d = edit_distance(name, cand);
        if (d < best) {
            best = d;
            found = cand;
        }
    }
    return found;
}
