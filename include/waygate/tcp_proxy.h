/* tcp_proxy — the L4 relay: client <-> one upstream instance.
 *
 * The path of one connection, top to bottom in src/tcp_proxy.c:
 *   accept (listener) -> resolve the listener's service in the current
 *   snapshot -> pick (balance) -> non-blocking connect with connect_timeout
 *   -> on failure retry another instance (DESIGN §6) -> relay both ways
 *   with splice(2) through a pipe per direction -> half-close forwarded ->
 *   close when both directions are done, on error, or after idle_timeout.
 *
 * Promises:
 *  - Backpressure: at most one pipe (256 KiB) in flight per direction; a
 *    peer that stops reading stops waygate reading the other side. The
 *    relayed bytes never enter user space, so RSS does not grow with them.
 *  - An idle connection holds no pipe and no buffer.
 *  - No byte is retried: once connected, a failure closes both sides.
 *  - The connection pins the service version it started on (its settings)
 *    and holds a reference on its instance (active count, draining).
 */
#ifndef WAYGATE_TCP_PROXY_H
#define WAYGATE_TCP_PROXY_H

#include <sys/socket.h>

struct wg_worker;
struct wg_listener;

void wg_tcp_proxy_accept(struct wg_worker *w, const struct wg_listener *l, int fd,
                         const struct sockaddr *peer, socklen_t peerlen);

#endif
