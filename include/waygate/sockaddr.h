/* sockaddr — socket addresses as text, for logs, instance identities and
 * the Host of health probes.
 *
 * Promises:
 *  - wg_sockaddr_text() writes "ip:port" (IPv4) or "[ip]:port" (IPv6),
 *    "(family N)" for anything else; always NUL-terminated, truncated to
 *    `len`; nothing is written when len is 0. No allocation, thread-safe.
 */
#ifndef WAYGATE_SOCKADDR_H
#define WAYGATE_SOCKADDR_H

#include <stddef.h>
#include <sys/socket.h>

void wg_sockaddr_text(const struct sockaddr *sa, char *buf, size_t len);

#endif
