/* record — registry values decoded into instance records.
 *
 * Promises:
 *  - A record is plain data (no I/O, no libevent): service, instance id,
 *    IP address + port, weight, optional metadata as a JSON object string.
 *  - Decoders never crash on any input; an invalid value produces a
 *    message and no record, never a partial one.
 *  - The file registry format (DESIGN §5 "File registry") is decoded with
 *    FILE:LINE positions; an invalid entry is reported and skipped, the
 *    others still apply.
 */
#ifndef WAYGATE_RECORD_H
#define WAYGATE_RECORD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "waygate/config.h"

#define WG_WEIGHT_DEFAULT 100
#define WG_WEIGHT_MAX 10000

struct wg_record {
    char *service;
    char *id;
    struct sockaddr_storage addr;
    socklen_t addrlen;
    uint32_t weight;                /* 0 = no new traffic */
    char *metadata;                 /* JSON object text or NULL */
};

struct wg_record_set {
    struct wg_record *v;
    size_t n, cap;
};

/* Takes ownership of the strings in *r (they must be malloc'd). */
bool wg_record_set_push(struct wg_record_set *set, struct wg_record *r);
void wg_record_set_clear(struct wg_record_set *set);
void wg_record_free(struct wg_record *r);
/* Sort by (service, id) so that consumers can diff and group. */
void wg_record_set_sort(struct wg_record_set *set);

/* "127.0.0.1:8080" / "[::1]:8080" for logs and /status. */
void wg_sockaddr_text(const struct sockaddr *sa, char *buf, size_t len);

/* Parse the file registry. Returns false only if the file cannot be read or
 * is not valid YAML at all (the caller keeps its last good pools). Invalid
 * entries are reported in `warnings` ("FILE:LINE:COL: message") and skipped;
 * *invalid counts them. */
bool wg_record_parse_file(const char *path, struct wg_record_set *out,
                          struct wg_errors *warnings, unsigned *invalid);
bool wg_record_parse_file_buffer(const char *name, const char *buf, size_t len,
                                 struct wg_record_set *out, struct wg_errors *warnings,
                                 unsigned *invalid);

#endif
