#!/bin/sh
# make demo: two sample backends + waygate over conf/waygate.yaml, in the
# foreground; Ctrl-C stops everything this script started (by PID).
set -eu
BUILD=${1:-build}
cd "$(dirname "$0")/.."
pids=""
cleanup() {
    trap - INT TERM EXIT
    for p in $pids; do kill "$p" 2>/dev/null || true; done
    for p in $pids; do wait "$p" 2>/dev/null || true; done
    echo "demo stopped"
}
trap cleanup INT TERM EXIT

"$BUILD/wg_backend" --listen 127.0.0.1:9001 --name d1 --mode http >/dev/null &
pids="$pids $!"
"$BUILD/wg_backend" --listen 127.0.0.1:9002 --name d2 --mode http >/dev/null &
pids="$pids $!"
"$BUILD/waygate" -t -c conf/waygate.yaml
"$BUILD/waygate" -c conf/waygate.yaml &
wg=$!
pids="$pids $wg"
sleep 0.5
cat <<'TXT'

waygate is running (Ctrl-C stops it and the sample backends).

  Backends d1 (127.0.0.1:9001) and d2 (127.0.0.1:9002) are in conf/instances.yaml.
  TCP listener demo-tcp on 127.0.0.1:7000 balances over them (round robin):

    for i in 1 2 3 4; do curl -s http://127.0.0.1:7000/; echo; done

  Edit conf/instances.yaml (change a weight, delete d2, add an instance):
  waygate picks the change up at once, without a restart or a dropped
  connection. Reload the configuration with:  kill -HUP <waygate pid>

TXT
echo "waygate pid: $wg"
wait "$wg"
