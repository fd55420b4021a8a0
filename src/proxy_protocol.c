/* proxy_protocol — see include/waygate/proxy_protocol.h */
#include "waygate/proxy_protocol.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

static const uint8_t v2_sig[12] = { 0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49,
                                    0x54, 0x0a };

/* ---- v1 ---- */

/* A port: 1-5 digits, no leading zero (but "0"), at most 65535. */
static bool v1_port(const char *s, size_t n, uint16_t *out)
{
    unsigned v = 0;
    if (n == 0 || n > 5 || (n > 1 && s[0] == '0'))
        return false;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (unsigned)(s[i] - '0');
    }
    if (v > 65535)
        return false;
    *out = (uint16_t)v;
    return true;
}

static bool v1_addr(int family, const char *s, size_t n, uint16_t port,
                    struct sockaddr_storage *ss, socklen_t *len)
{
    char text[INET6_ADDRSTRLEN];
    if (n == 0 || n >= sizeof text)
        return false;
    memcpy(text, s, n);
    text[n] = '\0';
    memset(ss, 0, sizeof *ss);
    if (family == AF_INET) {
        struct sockaddr_in *sin = (struct sockaddr_in *)ss;
        sin->sin_family = AF_INET;
        sin->sin_port = htons(port);
        *len = sizeof *sin;
        return inet_pton(AF_INET, text, &sin->sin_addr) == 1;
    }
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
    sin6->sin6_family = AF_INET6;
    sin6->sin6_port = htons(port);
    *len = sizeof *sin6;
    return inet_pton(AF_INET6, text, &sin6->sin6_addr) == 1;
}

/* The line without "PROXY " and CRLF: "TCP4 SRC DST SPORT DPORT". */
static bool v1_fields(const char *s, size_t n, struct wg_proxy_info *info)
{
    const char *f[5];
    size_t flen[5], k = 0, start = 0;
    for (size_t i = 0; i <= n; i++) {
        if (i < n && s[i] != ' ')
            continue;
        if (k == 5 || i == start)
            return false;               /* too many fields, or a double space */
        f[k] = s + start;
        flen[k++] = i - start;
        start = i + 1;
    }
    if (k != 5)
        return false;
    int family = flen[0] == 4 && memcmp(f[0], "TCP4", 4) == 0 ? AF_INET
               : flen[0] == 4 && memcmp(f[0], "TCP6", 4) == 0 ? AF_INET6 : 0;
    uint16_t sport, dport;
    return family && v1_port(f[3], flen[3], &sport) && v1_port(f[4], flen[4], &dport) &&
           v1_addr(family, f[1], flen[1], sport, &info->src, &info->src_len) &&
           v1_addr(family, f[2], flen[2], dport, &info->dst, &info->dst_len);
}

static enum wg_proxy_result v1_parse(const uint8_t *buf, size_t len, struct wg_proxy_info *info,
                                     size_t *consumed)
{
    const char *s = (const char *)buf;
    size_t lim = len < WG_PROXY_V1_MAX ? len : WG_PROXY_V1_MAX;
    size_t end = 0;
    while (end < lim && s[end] != '\r' && s[end] != '\n')
        end++;
    if (end == lim)                     /* no line end yet */
        return len >= WG_PROXY_V1_MAX ? WG_PROXY_ERROR : WG_PROXY_AGAIN;
    if (s[end] == '\n')
        return WG_PROXY_ERROR;          /* bare LF */
    if (end + 1 >= len)
        return end + 2 > WG_PROXY_V1_MAX ? WG_PROXY_ERROR : WG_PROXY_AGAIN;
    if (s[end + 1] != '\n')
        return WG_PROXY_ERROR;
    info->version = 1;
    if (end >= 13 && memcmp(s + 6, "UNKNOWN", 7) == 0 && (end == 13 || s[13] == ' ')) {
        info->local = true;
    } else if (!v1_fields(s + 6, end - 6, info)) {
        return WG_PROXY_ERROR;
    }
    *consumed = end + 2;
    return WG_PROXY_DONE;
}

/* ---- v2 ---- */

static void v2_addr4(const uint8_t *a, const uint8_t *port, struct sockaddr_storage *ss,
                     socklen_t *len)
{
    struct sockaddr_in *sin = (struct sockaddr_in *)ss;
    memset(ss, 0, sizeof *ss);
    sin->sin_family = AF_INET;
    memcpy(&sin->sin_addr, a, 4);
    memcpy(&sin->sin_port, port, 2);    /* both in network order */
    *len = sizeof *sin;
}

static void v2_addr6(const uint8_t *a, const uint8_t *port, struct sockaddr_storage *ss,
                     socklen_t *len)
{
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
    memset(ss, 0, sizeof *ss);
    sin6->sin6_family = AF_INET6;
    memcpy(&sin6->sin6_addr, a, 16);
    memcpy(&sin6->sin6_port, port, 2);
    *len = sizeof *sin6;
}

static enum wg_proxy_result v2_parse(const uint8_t *buf, size_t len, struct wg_proxy_info *info,
                                     size_t *consumed)
{
    if (len < 16)
        return WG_PROXY_AGAIN;
    uint8_t ver = buf[12] >> 4, cmd = buf[12] & 0x0f, fam = buf[13];
    size_t body = (size_t)buf[14] << 8 | buf[15];
    if (ver != 2 || cmd > 1 || 16 + body > WG_PROXY_MAX)
        return WG_PROXY_ERROR;
    size_t need = fam == 0x11 ? 12 : fam == 0x21 ? 36 : 0;
    if ((cmd == 1 && fam != 0x00 && fam != 0x11 && fam != 0x21) || body < need)
        return WG_PROXY_ERROR;
    if (len < 16 + body)
        return WG_PROXY_AGAIN;
    const uint8_t *a = buf + 16;
    info->version = 2;
    info->local = cmd == 0 || fam == 0x00;
    if (!info->local && fam == 0x11) {
        v2_addr4(a, a + 8, &info->src, &info->src_len);
        v2_addr4(a + 4, a + 10, &info->dst, &info->dst_len);
    } else if (!info->local) {
        v2_addr6(a, a + 32, &info->src, &info->src_len);
        v2_addr6(a + 16, a + 34, &info->dst, &info->dst_len);
    }
    *consumed = 16 + body;
    return WG_PROXY_DONE;
}

enum wg_proxy_result wg_proxy_parse(const uint8_t *buf, size_t len, struct wg_proxy_info *info,
                                    size_t *consumed)
{
    memset(info, 0, sizeof *info);
    *consumed = 0;
    size_t n = len < sizeof v2_sig ? len : sizeof v2_sig;
    if (len > 0 && memcmp(buf, v2_sig, n) == 0)
        return n < sizeof v2_sig ? WG_PROXY_AGAIN : v2_parse(buf, len, info, consumed);
    n = len < 6 ? len : 6;
    if (memcmp(buf, "PROXY ", n) != 0)
        return WG_PROXY_ERROR;
    return n < 6 ? WG_PROXY_AGAIN : v1_parse(buf, len, info, consumed);
}

enum wg_proxy_result wg_proxy_read(int fd, struct wg_proxy_info *info)
{
    uint8_t buf[WG_PROXY_MAX];
    size_t used;
    ssize_t n = recv(fd, buf, sizeof buf, MSG_PEEK);
    if (n <= 0)
        return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
               ? WG_PROXY_AGAIN : WG_PROXY_ERROR;
    enum wg_proxy_result r = wg_proxy_parse(buf, (size_t)n, info, &used);
    if (r == WG_PROXY_AGAIN && (size_t)n == sizeof buf)
        r = WG_PROXY_ERROR;
    if (r != WG_PROXY_DONE)
        return r;
    return recv(fd, buf, used, 0) == (ssize_t)used ? WG_PROXY_DONE : WG_PROXY_ERROR;
}

/* ---- encoding (tcp listeners send PROXY v2 to services that ask for it) ---- */

/* The IPv4 address of `sa` (also of an IPv4-mapped IPv6 one) into a[4]. */
static bool ipv4_of(const struct sockaddr *sa, uint8_t a[4], uint8_t port[2])
{
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)sa;
        memcpy(a, &sin->sin_addr, 4);
        memcpy(port, &sin->sin_port, 2);
        return true;
    }
    const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)sa;
    if (sa->sa_family != AF_INET6 || !IN6_IS_ADDR_V4MAPPED(&sin6->sin6_addr))
        return false;
    memcpy(a, sin6->sin6_addr.s6_addr + 12, 4);
    memcpy(port, &sin6->sin6_port, 2);
    return true;
}

size_t wg_proxy_v2_encode(const struct sockaddr *src, const struct sockaddr *dst,
                          uint8_t out[WG_PROXY_V2_MAX])
{
    static const uint8_t sig[12] = { 0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                     0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A };
    memcpy(out, sig, 12);
    out[12] = 0x21;                     /* v2, PROXY */
    size_t n = 0;
    uint8_t *a = out + 16;
    if (ipv4_of(src, a, a + 8) && ipv4_of(dst, a + 4, a + 10)) {
        out[13] = 0x11;                 /* TCP over IPv4 */
        n = 12;
    } else if (src->sa_family == AF_INET6 && dst->sa_family == AF_INET6) {
        const struct sockaddr_in6 *s = (const void *)src, *d = (const void *)dst;
        out[13] = 0x21;                 /* TCP over IPv6 */
        memcpy(a, &s->sin6_addr, 16);
        memcpy(a + 16, &d->sin6_addr, 16);
        memcpy(a + 32, &s->sin6_port, 2);
        memcpy(a + 34, &d->sin6_port, 2);
        n = 36;
    } else {
        out[12] = 0x20;                 /* v2, LOCAL: nothing to tell */
        out[13] = 0x00;
    }
    out[14] = (uint8_t)(n >> 8);
    out[15] = (uint8_t)n;
    return 16 + n;
}
