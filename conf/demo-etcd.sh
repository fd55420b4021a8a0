#!/bin/sh
# The demo with etcd as the registry: a single etcd member (data on tmpfs),
# waygate watching it, and the two sample backends each run by
# `waygate register ... -- wg_backend ...`, which registers them under a
# lease once they answer /health and deregisters them before they stop.
# Ctrl-C stops everything this script started (by PID).
#     conf/demo-etcd.sh [BUILD_DIR]
set -eu
BUILD=${1:-build}
cd "$(dirname "$0")/.."
ETCD_PORT=${ETCD_PORT:-23790}
ETCD_PEER_PORT=${ETCD_PEER_PORT:-23800}
ETCD_URL=http://127.0.0.1:$ETCD_PORT
tmp=$(mktemp -d "${TMPDIR:-/tmp}/waygate-demo.XXXXXX")
data=$(mktemp -d /dev/shm/waygate-demo-etcd.XXXXXX 2>/dev/null || mktemp -d)
pids=""
cleanup() {
    trap - INT TERM EXIT
    # registrars first: each deregisters, drains and stops its backend
    for p in $pids; do kill "$p" 2>/dev/null || true; done
    for p in $pids; do wait "$p" 2>/dev/null || true; done
    [ -n "${etcd_pid:-}" ] && kill "$etcd_pid" 2>/dev/null && wait "$etcd_pid" 2>/dev/null || true
    rm -rf "$tmp" "$data"
    echo "demo stopped"
}
trap cleanup INT TERM EXIT

etcd --name demo --data-dir "$data" \
    --listen-client-urls "$ETCD_URL" --advertise-client-urls "$ETCD_URL" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "demo=http://127.0.0.1:$ETCD_PEER_PORT" \
    --unsafe-no-fsync --log-level warn >"$tmp/etcd.log" 2>&1 &
etcd_pid=$!
i=0
until curl -sf "$ETCD_URL/health" >/dev/null 2>&1; do
    i=$((i + 1))
    if [ "$i" -gt 100 ]; then echo "etcd did not start, see $tmp/etcd.log"; cat "$tmp/etcd.log"; exit 1; fi
    sleep 0.1
done

cat >"$tmp/waygate.yaml" <<YAML
admin: { listen: 127.0.0.1:9901 }
registry:
  etcd:
    endpoints: [$ETCD_URL]
    prefix: /services/
services:
  demo: { balance: round_robin }
listeners:
  - { name: demo-tcp, listen: 127.0.0.1:7000, mode: tcp, service: demo }
YAML
"$BUILD/waygate" -t -c "$tmp/waygate.yaml"

for n in 1 2; do
    "$BUILD/waygate" register -c "$tmp/waygate.yaml" --service demo --id "d$n" \
        --address "127.0.0.1:900$n" --ttl 5s --drain 1s \
        --health "http://127.0.0.1:900$n/health" --health-interval 500ms \
        -- "$BUILD/wg_backend" --listen "127.0.0.1:900$n" --name "d$n" --mode http >/dev/null &
    pids="$pids $!"
done
"$BUILD/waygate" -c "$tmp/waygate.yaml" &
wg=$!
pids="$wg $pids"
sleep 1
cat <<TXT

waygate is running with etcd ($ETCD_URL) as its registry (Ctrl-C stops it all).

  d1 and d2 registered themselves with \`waygate register\` (leases, TTL 5s):

    etcdctl --endpoints $ETCD_URL get --prefix /services/
    for i in 1 2 3 4; do curl -s http://127.0.0.1:7000/; echo; done

  Mark d2 unhealthy and watch it leave the registry (and come back):

    curl -s 'http://127.0.0.1:9002/control/health?status=503'
    curl -s 'http://127.0.0.1:9002/control/health?status=200'

  Status: curl -s http://127.0.0.1:9901/status

TXT
echo "waygate pid: $wg"
wait "$wg"
