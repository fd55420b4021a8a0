/* proxy_protocol — the PROXY protocol header (HAProxy's spec, v1 and v2)
 * that a trusted L4 balancer sends first on a connection to tell the real
 * client address. Listeners with `proxy_protocol: true` (tcp and http)
 * require it; anything else on such a listener is refused (the connection is
 * closed without a word). Only peers in trusted_proxies may send one: the
 * listeners close any other peer at accept, before this module reads.
 *
 * Promises:
 *  - wg_proxy_parse() is pure (bytes in, result out; no allocation) and
 *    resumable in the simplest way: call it again with more bytes from the
 *    same start. It never reads past the header it reports.
 *  - v1: "PROXY TCP4|TCP6 SRC DST SPORT DPORT\r\n" with single spaces,
 *    addresses of the stated family (inet_pton), ports 0-65535 without
 *    leading zeros, at most 107 bytes; "PROXY UNKNOWN ...\r\n" is accepted
 *    as local. Anything else: error.
 *  - v2: the 12-byte signature, version 2, command LOCAL (local) or PROXY;
 *    families TCP over IPv4 or IPv6 (UNSPEC is local; UDP and unix sockets
 *    are refused); the address block must fit the stated length; TLVs are
 *    skipped. Headers longer than WG_PROXY_MAX bytes are refused.
 *  - wg_proxy_read() takes the header off a non-blocking socket without
 *    consuming a byte after it (MSG_PEEK, then a read of exactly its length),
 *    so the rest of the stream stays in the socket for whoever reads next.
 */
#ifndef WAYGATE_PROXY_PROTOCOL_H
#define WAYGATE_PROXY_PROTOCOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define WG_PROXY_V1_MAX 107
#define WG_PROXY_MAX (16 + 2048)

enum wg_proxy_result {
    WG_PROXY_ERROR = -1,    /* not a valid PROXY header */
    WG_PROXY_AGAIN = 0,     /* a valid prefix: need more bytes */
    WG_PROXY_DONE = 1
};

struct wg_proxy_info {
    int version;                        /* 1 or 2 */
    bool local;                         /* LOCAL / UNKNOWN / UNSPEC: use the socket's addresses */
    struct sockaddr_storage src, dst;   /* set unless local */
    socklen_t src_len, dst_len;
};

/* Parse a PROXY header at buf[0, len). DONE: *consumed = its length and
 * *info is filled in. AGAIN: buf is a valid prefix. ERROR: refused. */
enum wg_proxy_result wg_proxy_parse(const uint8_t *buf, size_t len, struct wg_proxy_info *info,
                                    size_t *consumed);

/* Encode a PROXY v2 header (PROXY command, TCP) for a connection from `src`
 * to `dst` into out (at most WG_PROXY_V2_MAX bytes); returns its length.
 * IPv4-mapped IPv6 addresses are sent as IPv4; addresses of different
 * families (or not IP) give a LOCAL header without addresses. */
#define WG_PROXY_V2_MAX 52
size_t wg_proxy_v2_encode(const struct sockaddr *src, const struct sockaddr *dst,
                          uint8_t out[WG_PROXY_V2_MAX]);

/* Take a PROXY header off `fd` (non-blocking): DONE (consumed from the
 * socket), AGAIN (incomplete: wait for readability), ERROR (invalid, EOF or
 * a socket error). */
enum wg_proxy_result wg_proxy_read(int fd, struct wg_proxy_info *info);

#endif
