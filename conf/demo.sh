#!/bin/sh
# make demo: a local etcd, two sample backends each run by `waygate register`
# (registered under a kept-alive lease while /health passes), and waygate
# over conf/waygate-etcd.yaml, in the foreground. Ctrl-C stops everything
# this script started (by PID; etcd last, so that the registrars deregister)
# and removes etcd's data.
# DEMO_REGISTRY=file make demo runs the file-registry demo (conf/waygate.yaml).
set -eu
BUILD=${1:-build}
cd "$(dirname "$0")/.."
ETCD_URL=http://127.0.0.1:23790
pids=""
data=""
etcd_pid=""
cleanup() {
    trap - INT TERM EXIT
    for p in $pids; do kill "$p" 2>/dev/null || true; done
    for p in $pids; do wait "$p" 2>/dev/null || true; done
    if [ -n "$etcd_pid" ]; then kill "$etcd_pid" 2>/dev/null || true; wait "$etcd_pid" 2>/dev/null || true; fi
    [ -n "$data" ] && rm -rf "$data" "$data.log" "$data-register.log"
    echo "demo stopped"
}
trap cleanup INT TERM EXIT

if [ "${DEMO_REGISTRY:-etcd}" = file ]; then
    config=conf/waygate.yaml
    for n in 1 2; do
        "$BUILD/wg_backend" --listen 127.0.0.1:900$n --name d$n --mode http >/dev/null &
        pids="$pids $!"
    done
else
    config=conf/waygate-etcd.yaml
    command -v etcd >/dev/null || { echo "etcd is missing: make deps" >&2; exit 1; }
    base=/dev/shm; [ -d "$base" ] && [ -w "$base" ] || base=${TMPDIR:-/tmp}
    data=$(mktemp -d "$base/waygate-demo-etcd.XXXXXX")
    # Its own session: Ctrl-C reaches the registrars first, and etcd stays up
    # until they have deregistered (cleanup stops it last).
    setsid etcd --name demo --data-dir "$data" --listen-client-urls "$ETCD_URL" \
         --advertise-client-urls "$ETCD_URL" --listen-peer-urls http://127.0.0.1:23800 \
         --initial-advertise-peer-urls http://127.0.0.1:23800 \
         --initial-cluster demo=http://127.0.0.1:23800 --log-level warn --logger zap \
         >"$data.log" 2>&1 &
    etcd_pid=$!
    ctl() { ETCDCTL_API=3 etcdctl --endpoints "$ETCD_URL" "$@"; }
    n=0
    until ctl endpoint health >/dev/null 2>&1; do
        n=$((n + 1))
        [ $n -lt 100 ] || { echo "etcd did not start; see $data.log" >&2; exit 1; }
        sleep 0.1
    done
    for n in 1 2; do
        "$BUILD/waygate" register -c "$config" --service demo --id d$n \
            --address 127.0.0.1:900$n --health http://127.0.0.1:900$n/health --drain 1s \
            -- "$BUILD/wg_backend" --listen 127.0.0.1:900$n --name d$n --mode http \
            >/dev/null 2>>"$data-register.log" &
        pids="$pids $!"
    done
fi

"$BUILD/waygate" -t -c "$config"
"$BUILD/waygate" -c "$config" &
wg=$!
pids="$pids $wg"
sleep 0.5
if [ "$config" = conf/waygate.yaml ]; then
cat <<'TXT'

waygate is running (Ctrl-C stops it and the sample backends).

  Backends d1 (127.0.0.1:9001) and d2 (127.0.0.1:9002) are in conf/instances.yaml.
  TCP listener demo-tcp on 127.0.0.1:7000 balances over them (round robin):

    for i in 1 2 3 4; do curl -s http://127.0.0.1:7000/; echo; done

  Edit conf/instances.yaml (change a weight, delete d2, add an instance):
  waygate picks the change up at once, without a restart or a dropped
  connection. Reload the configuration with:  kill -HUP <waygate pid>

TXT
else
cat <<TXT

waygate is running over etcd (Ctrl-C stops it, etcd and the sample backends).

  etcd: $ETCD_URL. Backends d1 (127.0.0.1:9001) and d2 (127.0.0.1:9002) run
  under \`waygate register\`: each is registered under its own lease (TTL 10 s,
  kept alive) while its /health passes (logs: $data-register.log).
  HTTP listener demo-http on 127.0.0.1:8080 and TCP listener demo-tcp on
  127.0.0.1:7000 balance over them:

    for i in 1 2 3 4; do curl -s http://127.0.0.1:8080/; echo; done
    for i in 1 2 3 4; do curl -s http://127.0.0.1:7000/; echo; done

  Live dashboard: http://127.0.0.1:9901/   metrics: curl -s 127.0.0.1:9901/metrics

  Change the registry and watch waygate follow at once (curl -s 127.0.0.1:9901/status):

    export ETCDCTL_API=3 ETCDCTL_ENDPOINTS=$ETCD_URL
    etcdctl put /services/demo/d3 '{"address":"127.0.0.1","port":9001,"weight":300}'
    etcdctl put /services/demo/d4 127.0.0.1:9002          # plain host:port
    etcdctl put /services/demo/d4 '{"Op":0,"Addr":"127.0.0.1:9002"}'   # endpoints.Manager
    etcdctl del /services/demo/d3
    curl -s '127.0.0.1:9002/control/health?status=503'    # d2 deregisters itself
    curl -s '127.0.0.1:9002/control/health?status=200'    # and comes back
    etcdctl lease list; etcdctl lease revoke <id>         # gone, then back on a new lease

  Every value format is in docs/registry.md.

TXT
fi
echo "waygate pid: $wg"
wait "$wg"
