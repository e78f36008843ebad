#!/usr/bin/env bash
# What --init-from buys: the demo's fleet recipe, shortened to ROUNDS rounds of 20, from
# scratch and warm-started from SOURCE (e.g. a demo's model-central/), for SEEDS.
# Usage: bench/init_from_bench.sh DATA SOURCE OUTDIR [ROUNDS] [SEEDS...]
set -euo pipefail
data=$1 source=$2 out=$3 rounds=${4:-10}
shift $(( $# < 4 ? $# : 4 ))
seeds=("${@:-0 1 2}")
mkdir -p "$out"
for seed in ${seeds[@]}; do
  for mode in scratch init; do
    extra=()
    [[ $mode == init ]] && extra=(--init-from "$source")
    /usr/bin/time -f "%e %U %S" -o "$out/$mode-$seed.time" \
      uv run --frozen --no-sync fedkb simulate --engine fleet --data "$data" --preset small \
        --rounds "$rounds" --clients-per-round 20 --lr 1.0 --server-lr 0.7 --strategy fedavgm \
        --clip-norm 4 --lr-decay --max-steps 50 --selection-window 3 --reporting-deadline 10 \
        --pace-margin 4 --overselect 1.0 --uplink q8 --devices "$(python3 -c "import json,sys; c=json.load(open('$data/metadata.json'))['counts']; print(c['users'])")" \
        --seed "$seed" "${extra[@]}" --json > "$out/$mode-$seed.json"
  done
done
python3 - "$out" <<'PY'
import json, pathlib, sys
for f in sorted(pathlib.Path(sys.argv[1]).glob("*.json")):
    h = json.loads(f.read_text())["heldout"]
    print(f.stem, h["top1_recall"], h["top3_recall"], h.get("keystroke_savings"),
          (pathlib.Path(sys.argv[1]) / (f.stem + ".time")).read_text().strip())
PY
