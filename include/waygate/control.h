/* control — the control thread: owns the configuration, the pool, the
 * registry and the workers; handles signals, readiness, reload and the
 * graceful stop.
 *
 * Promises (DESIGN §3, §4):
 *  - evthread_use_pthreads() runs before any event_base exists; SIGPIPE is
 *    ignored; RLIMIT_NOFILE is raised to its hard limit; every signal is
 *    blocked in the workers and handled here only.
 *  - Listeners accept only once the first snapshot exists (registry, cache
 *    or file) or after startup_timeout.
 *  - SIGTERM/SIGINT: stop accepting, let connections finish for up to
 *    shutdown_timeout, then close the rest and return 0.
 *  - SIGHUP: re-read and validate the config; an invalid one is refused
 *    with its errors logged and the old one keeps serving.
 */
#ifndef WAYGATE_CONTROL_H
#define WAYGATE_CONTROL_H

#include "waygate/config.h"

/* Run until stopped; takes ownership of cfg. Returns the exit status. */
int wg_control_run(struct wg_config *cfg);

#endif
