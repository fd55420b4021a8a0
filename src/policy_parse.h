/* policy_parse — what the policy modules share: their config blocks
 * (string lists, string maps, value templates, key specs) and the
 * constant-time comparisons. Private to src/policy*.c.
 */
#ifndef WAYGATE_POLICY_PARSE_H
#define WAYGATE_POLICY_PARSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config_parse.h"
#include "config_value.h"
#include "waygate/policy.h"

struct pp_strlist {
    char **v;
    size_t n;
};
struct pp_strmap {
    struct { char *k, *v; } *v;
    size_t n;
};

/* Apply `node` to base through t. `name` is the policy (for messages).
 * Returns false when this block added any error. */
bool pp_block(struct cfg_ctx *c, yaml_node_t *node, const struct cfg_table *t, void *base,
              struct cfg_seen *seen, const char *name);
/* A list of strings (a single scalar is a list of one) into the pp_strlist
 * at k->off. With k->extra == "token": every item must be a token. */
cfg_parse_fn pp_p_strlist;
/* A mapping of names (tokens) to strings into the pp_strmap at k->off. */
cfg_parse_fn pp_p_strmap;
void pp_strlist_free(struct pp_strlist *l);
void pp_strmap_free(struct pp_strmap *m);
bool pp_strlist_has(const struct pp_strlist *l, const char *s, size_t n, bool nocase);

/* A header value with variables: "$client_ip", "$request_id", "$host",
 * "$consumer", "$jwt.<claim>"; "$$" is a literal '$'. */
struct pp_tmpl_seg {
    bool is_var;
    enum wg_policy_var var;
    char *text;                     /* literal, or the claim name */
    size_t len;
};
struct pp_tmpl {
    struct pp_tmpl_seg *v;
    size_t n;
    bool literal;                   /* no variable: v[0] is the whole value */
};
/* Compile; on error reports at `at` and returns false. */
bool pp_tmpl_compile(struct cfg_ctx *c, yaml_node_t *at, const char *key, const char *s,
                     struct pp_tmpl *out);
void pp_tmpl_free(struct pp_tmpl *t);
/* Expand into the request's arena; an absent variable expands to "". */
bool pp_tmpl_expand(const struct pp_tmpl *t, struct wg_policy_req *r, struct wg_pstr *out);

/* A key spec: client_ip | header:NAME | claim:NAME | consumer | route. */
struct pp_key {
    enum wg_policy_var var;
    char *arg;                      /* header or claim name, else NULL */
};
bool pp_key_parse(struct cfg_ctx *c, yaml_node_t *v, const char *key, struct pp_key *out);

/* Compare without a data-dependent early exit. */
bool pp_ct_equal(const void *a, const void *b, size_t n);

/* Read a whole file (at most 16 MiB) for a policy, NUL-terminated; reports
 * "KEY: cannot read 'PATH': reason" at v. */
char *pp_read_file(struct cfg_ctx *c, yaml_node_t *v, const char *key, const char *path,
                   size_t *len);

/* An error in a file a policy reads: "PATH:LINE:1: message". */
void pp_file_error(struct cfg_ctx *c, const char *path, unsigned line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Each "name:value" line of buf (comments '#' and blank lines skipped):
 * cb gets the name (trailing blanks cut) and the value (leading blanks cut),
 * or value NULL when the line has no ':'. cb returns false to stop. */
bool pp_each_line(char *buf, bool (*cb)(void *arg, unsigned line, char *name, char *value),
                  void *arg);

/* Read `path` and hand its lines to cb (pp_each_line); cb reports bad
 * lines with pp_file_error. Without file checking (fuzzing, unit loads
 * from memory) nothing is read and this is true. false when the file could
 * not be read or a line was reported. */
bool pp_read_lines(struct cfg_ctx *c, yaml_node_t *at, const char *key, const char *path,
                   bool (*cb)(void *arg, unsigned line, char *name, char *value), void *arg);

/* A process-unique number (per-thread caches key on it, never on addresses). */
uint64_t pp_serial(void);

/* SipHash-2-4 with a per-process random key (tables an attacker can fill). */
uint64_t pp_keyed_hash(const void *data, size_t len);

#endif
