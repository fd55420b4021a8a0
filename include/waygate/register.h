/* register — `waygate register`, the provider side of discovery (DESIGN §4).
 *
 *   waygate register --etcd URL[,URL] [--prefix /services/] --service NAME
 *                    --id ID --address HOST:PORT [--weight N]
 *                    [--metadata k=v ...] [--ttl 10s]
 *                    [--health http://HOST:PORT/PATH] [--drain 2s]
 *                    [-c FILE] [-- COMMAND ARGS...]
 *
 * Writes the native JSON record (DESIGN §7) at <prefix><service>/<id> under
 * an etcd lease and keeps the lease alive; deregisters on the way out.
 * Everything runs on one event_base with the etcd_client module (endpoint
 * rotation with backoff, re-authentication, TLS); see docs/register.md.
 *
 * Promises:
 *  - The lease is kept alive at a third of the TTL etcd GRANTED (which may
 *    be larger than the one asked for). Failed calls are retried on the next
 *    endpoint after a jittered exponential backoff capped at that third, so
 *    an outage or a member failover shorter than the TTL loses nothing.
 *  - A keep-alive answer without TTL, or "lease not found", means the lease
 *    is gone (etcd lost its data, or it expired during a partition): a new
 *    lease is granted and the record written again under it.
 *  - With --health the record exists only while the health URL answers
 *    200-399 (one pass registers, two failures in a row deregister; the
 *    lease is kept meanwhile).
 *  - With a COMMAND: the command runs as a child in its own process group
 *    (it gets SIGTERM if the registrar dies); the record is written once the
 *    health check (or else a TCP connect to HOST:PORT) passes; SIGTERM and
 *    SIGINT deregister first, wait --drain, then are forwarded; other
 *    signals (HUP, QUIT, USR1, USR2, WINCH) are forwarded at once; the exit
 *    status is the child's (128 + N if killed by signal N).
 *  - Without a COMMAND, SIGTERM/SIGINT delete the key, revoke the lease and
 *    exit 0. Waiting for etcd on the way out is bounded (5 s); a second
 *    SIGTERM/SIGINT stops waiting. After SIGKILL the lease simply expires.
 *  - Usage errors exit 2 with a message naming the argument; an unusable
 *    configuration file exits 1.
 */
#ifndef WAYGATE_REGISTER_H
#define WAYGATE_REGISTER_H

/* Runs the registrar; argv[0] is "register". Returns the process's exit
 * status. Installs its own signal handlers; call it once, from main. */
int wg_register_main(int argc, char **argv);

#endif
