/* log — leveled, one-line, key=value logs.
 *
 * Promises:
 *  - Each message is formatted into one buffer and written with a single
 *    write(2) to stderr, so lines from different threads never interleave.
 *  - Callable from any thread; never takes a lock; never allocates.
 *  - Messages below the current level cost one atomic load.
 */
#ifndef WAYGATE_LOG_H
#define WAYGATE_LOG_H

#include "waygate/config.h"

void wg_log_set_level(enum wg_log_level level);
enum wg_log_level wg_log_level(void);
void wg_log(enum wg_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define wg_debug(...) do { if (wg_log_level() <= WG_LOG_DEBUG) wg_log(WG_LOG_DEBUG, __VA_ARGS__); } while (0)
#define wg_info(...)  wg_log(WG_LOG_INFO, __VA_ARGS__)
#define wg_warn(...)  wg_log(WG_LOG_WARN, __VA_ARGS__)
#define wg_error(...) wg_log(WG_LOG_ERROR, __VA_ARGS__)

#endif
