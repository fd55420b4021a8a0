#!/bin/sh
# prober_lag.sh — 10,000 instances probed every second: the control thread's
# lag and the prober's lag (see benchmarks/prober_lag.c).
#
#   benchmarks/prober_lag.sh [BUILD_DIR] [INSTANCES] [SECONDS] [TYPE]
#
# Defaults: build, 10000, 20, http. Needs a built tree (make build): links
# BUILD_DIR/libwaygate_core.a and starts BUILD_DIR/wg_backend. Runs the same
# load twice, without and with the prober, and prints both summary lines:
# the control thread's lag must not change, probes must start on time, and
# the connections opened after start-up must stay near zero (keep-alive: no
# ephemeral-port churn).
set -eu
BUILD=${1:-build}
N=${2:-10000}
SECS=${3:-20}
TYPE=${4:-http}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$(mktemp -d /tmp/prober-lag.XXXXXX)
trap 'for p in $PIDS; do kill "$p" 2>/dev/null || true; done; rm -rf "$OUT"' EXIT INT TERM
PIDS=""

cc -O2 -std=gnu11 -D_GNU_SOURCE -DWAYGATE_VERSION='"bench"' -I"$ROOT/include" \
   "$ROOT/benchmarks/prober_lag.c" "$ROOT/$BUILD/libwaygate_core.a" \
   $(pkg-config --cflags --libs libevent libevent_pthreads libevent_openssl yaml-0.1 jansson openssl) \
   -lpthread -lm -o "$OUT/prober_lag"

PORTS=""
for k in 1 2 3 4; do
    "$ROOT/$BUILD/wg_backend" --listen 127.0.0.1:0 --name "b$k" --mode http >"$OUT/b$k.out" 2>&1 &
    PIDS="$PIDS $!"
done
for k in 1 2 3 4; do
    for _ in $(seq 50); do grep -q ready "$OUT/b$k.out" 2>/dev/null && break; sleep 0.1; done
    PORTS="$PORTS${PORTS:+,}$(awk '/ready/ {print $2}' "$OUT/b$k.out")"
done

echo "# baseline: control thread without the prober"
"$OUT/prober_lag" --ports "$PORTS" --instances "$N" --seconds "$SECS" --type "$TYPE" --no-prober \
    | grep '^summary'
echo "# with the prober: $N instances, $TYPE probes every 1s +-10%"
"$OUT/prober_lag" --ports "$PORTS" --instances "$N" --seconds "$SECS" --type "$TYPE"
