#!/usr/bin/env bash
# Bytes vs recall (issue 17): the 20x20 fleet recipe once per (seed, encoding), one run at
# a time, each run's --json report and its /usr/bin/time -v CPU seconds kept in OUT.
# Usage: bench/run_compression_fleet.sh OUT "0 1 2 3 4" "float32 q8 q4 q2" [STOP_EPOCH]
# Encodings: float32, q8, q4, q2, with "+rotate" and/or "+f16" (float16 downlink).
# EXTRA (environment): flags appended to the recipe's (argparse keeps the last value),
# e.g. EXTRA="--selection-window 3 --reporting-deadline 30 --speedup 60" on a loaded VM.
set -u
out=$1; seeds=$2; encs=$3; stop=${4:-0}
mkdir -p "$out"
for seed in $seeds; do
  for enc in $encs; do
    if [ "$stop" != 0 ] && [ "$(date +%s)" -ge "$stop" ]; then echo "stop time reached"; exit 0; fi
    name="${enc}-s${seed}"
    [ -s "$out/$name.json" ] && continue
    flags="--uplink ${enc%%+*}"
    case "$enc" in *+rotate*) flags="$flags --rotate";; esac
    case "$enc" in *+f16*) flags="$flags --downlink float16";; esac
    echo "$(date -u +%T) $name" >> "$out/log"
    /usr/bin/time -v uv run --frozen --no-sync fedkb simulate --engine fleet \
      --data runs/demo/data --preset small --rounds 20 --clients-per-round 20 --json \
      --lr 1.0 --strategy fedavgm --server-lr 0.7 --clip-norm 4 --devices 1419 \
      --speedup 300 --selection-window 1 --reporting-deadline 10 --overselect 1.0 \
      --pace-margin 2 --seed "$seed" $flags ${EXTRA:-} > "$out/$name.json" 2> "$out/$name.err"
  done
done
