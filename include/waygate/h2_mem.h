/* h2_mem — the allocator of waygate's nghttp2 sessions (http2.c, upstream_h2.c).
 *
 * nghttp2 allocates per stream, per frame and per header field (about 20
 * malloc/free pairs per proxied call); this serves them from free lists.
 *
 * Promises:
 *  - Blocks up to 2 KiB are rounded up to one of seven size classes (32 B
 *    to 2 KiB); a freed one is kept on the calling thread's list of its
 *    class and served again. No locks: each thread has its own lists (a
 *    block freed on another thread than it came from joins that thread's
 *    lists, which is only a question of where it is kept).
 *  - Bounded: at most WG_H2_MEM_SPARE_BYTES of spares per class and thread;
 *    past that, and for larger blocks, malloc/free. A thread's spares are
 *    freed when it exits (the thread calling exit(): by an atexit handler).
 *  - Under AddressSanitizer a spare block is poisoned until served again.
 */
#ifndef WAYGATE_H2_MEM_H
#define WAYGATE_H2_MEM_H

#include <nghttp2/nghttp2.h>

#define WG_H2_MEM_SPARE_BYTES (32u * 1024u)

/* For nghttp2_session_{client,server}_new3 (nghttp2 copies it). */
nghttp2_mem *wg_h2_mem(void);

#endif
