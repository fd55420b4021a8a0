#!/bin/sh
# make demo: a local etcd, two sample backends registered in it under a
# lease, and waygate over conf/waygate-etcd.yaml, in the foreground. Ctrl-C
# stops everything this script started (by PID) and removes etcd's data.
# DEMO_REGISTRY=file make demo runs the file-registry demo (conf/waygate.yaml).
set -eu
BUILD=${1:-build}
cd "$(dirname "$0")/.."
ETCD_URL=http://127.0.0.1:23790
pids=""
data=""
cleanup() {
    trap - INT TERM EXIT
    for p in $pids; do kill "$p" 2>/dev/null || true; done
    for p in $pids; do wait "$p" 2>/dev/null || true; done
    [ -n "$data" ] && rm -rf "$data" "$data.log"
    echo "demo stopped"
}
trap cleanup INT TERM EXIT

"$BUILD/wg_backend" --listen 127.0.0.1:9001 --name d1 --mode http >/dev/null &
pids="$pids $!"
"$BUILD/wg_backend" --listen 127.0.0.1:9002 --name d2 --mode http >/dev/null &
pids="$pids $!"

if [ "${DEMO_REGISTRY:-etcd}" = file ]; then
    config=conf/waygate.yaml
else
    config=conf/waygate-etcd.yaml
    command -v etcd >/dev/null || { echo "etcd is missing: make deps" >&2; exit 1; }
    base=/dev/shm; [ -d "$base" ] && [ -w "$base" ] || base=${TMPDIR:-/tmp}
    data=$(mktemp -d "$base/waygate-demo-etcd.XXXXXX")
    etcd --name demo --data-dir "$data" --listen-client-urls "$ETCD_URL" \
         --advertise-client-urls "$ETCD_URL" --listen-peer-urls http://127.0.0.1:23800 \
         --initial-advertise-peer-urls http://127.0.0.1:23800 \
         --initial-cluster demo=http://127.0.0.1:23800 --log-level warn --logger zap \
         >"$data.log" 2>&1 &
    pids="$pids $!"
    ctl() { ETCDCTL_API=3 etcdctl --endpoints "$ETCD_URL" "$@"; }
    n=0
    until ctl endpoint health >/dev/null 2>&1; do
        n=$((n + 1))
        [ $n -lt 100 ] || { echo "etcd did not start; see $data.log" >&2; exit 1; }
        sleep 0.1
    done
    lease=$(ctl lease grant 10 | awk '{print $2}')
    ctl put --lease="$lease" /services/demo/d1 '{"address":"127.0.0.1","port":9001,"weight":100}' >/dev/null
    ctl put --lease="$lease" /services/demo/d2 127.0.0.1:9002 >/dev/null
    ctl lease keep-alive "$lease" >/dev/null 2>&1 &
    pids="$pids $!"
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

  etcd: $ETCD_URL. Backends d1 (127.0.0.1:9001) and d2 (127.0.0.1:9002) are
  registered under lease $lease (TTL 10 s, kept alive by etcdctl).
  TCP listener demo-tcp on 127.0.0.1:7000 balances over them:

    for i in 1 2 3 4; do curl -s http://127.0.0.1:7000/; echo; done

  Change the registry and watch waygate follow at once (curl -s 127.0.0.1:9901/status):

    export ETCDCTL_API=3 ETCDCTL_ENDPOINTS=$ETCD_URL
    etcdctl put /services/demo/d1 '{"address":"127.0.0.1","port":9001,"weight":300}'
    etcdctl put /services/demo/d3 127.0.0.1:9002          # plain host:port
    etcdctl del /services/demo/d2
    etcdctl put /services/demo/d2 '{"Op":0,"Addr":"127.0.0.1:9002"}'   # endpoints.Manager
    etcdctl lease revoke $lease                           # d1 and d2 go at once

  Every value format is in docs/registry.md.

TXT
fi
echo "waygate pid: $wg"
wait "$wg"
