#!/bin/bash
# Secure against plain q8 20x20 fleet runs, alternating per seed so both see the same
# background load: bench/run_secagg_fleet.sh OUT_DIR SEED... (results OUT_DIR/{secagg,plain}-S.json,
# /usr/bin/time's "wall user system" in .time, a log with the load at each start and end).
# SPEEDUP / DEADLINE / ROUNDS override the brief's settings for a loaded machine. NAME and
# FLAGS (default: secagg, --secagg) run another mode against plain, e.g. NAME=dp
# FLAGS="--dp fedavg --dp-noise 1 --dp-clip 4 --dp-noise-cohort 1000". BASE and BASE_FLAGS
# (default: plain, none) change the mode it runs against.
set -u
out=$1; shift
mkdir -p "$out"
NAME=${NAME:-secagg}
BASE=${BASE:-plain}
for S in "$@"; do
  for MODE in "$NAME" "$BASE"; do
    EXTRA="${BASE_FLAGS:-}"; [ "$MODE" = "$NAME" ] && EXTRA="${FLAGS:---secagg}"
    echo "$(date +%T) start $MODE seed $S load $(cut -d' ' -f1 /proc/loadavg)" >> "$out/log.txt"
    /usr/bin/time -f "%e %U %S" -o "$out/$MODE-$S.time" nice -n 10 uv run --frozen --no-sync \
      fedkb simulate --engine fleet --data "${DATA:-runs/demo/data}" --preset small \
      --rounds "${ROUNDS:-20}" --clients-per-round 20 --json --lr 1.0 --strategy fedavgm \
      --server-lr 0.7 --clip-norm 4 --devices 1419 --speedup "${SPEEDUP:-60}" \
      --selection-window 3 --reporting-deadline "${DEADLINE:-30}" --overselect 1.0 \
      --pace-margin 2 --uplink q8 $EXTRA --seed "$S" > "$out/$MODE-$S.json" 2> "$out/$MODE-$S.err"
    echo "$(date +%T) end $MODE seed $S rc $? load $(cut -d' ' -f1 /proc/loadavg)" >> "$out/log.txt"
  done
done
