#!/usr/bin/env bash
# The README's Results tables: a model at its defaults along the user's path (evaluate.py
# makes each case as `reconstruct.py --ct` makes a patient's), held-out phantoms 90000..,
# against the mean training CT.
#
#   bash eval/results.sh [MODEL [OUT]]      # default: models/ldm-tiny into runs/results
#
# About 30 minutes on a 2-core CPU (the whole-body phantoms are built once and cached).
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-models/ldm-tiny}
OUT=${2:-runs/results}
PY=${PYTHON:-python}
mkdir -p "$OUT"
run() {  # run NAME ARGS...: one evaluation into OUT/NAME, its log beside it
  local name=$1; shift
  echo "== $name"
  "$PY" eval/evaluate.py --model "ldm=$MODEL" --baseline mean-ct --no-lpips --fid-net none \
    --no-progress --batch-size 5 --out "$OUT/$name" "$@" > "$OUT/$name.log" 2>&1 \
    || { echo "$name failed: see $OUT/$name.log" >&2; exit 1; }
  grep -A3 "^| method" "$OUT/$name/table.md" || true
}
run lumbar --phantoms 10 --region lumbar
run thoracic --phantoms 6 --region thoracic
run radiograph --phantoms 6 --region lumbar --xray-style radiograph
run move --phantoms 6 --region lumbar --move 14 8
run metal --phantoms 6 --region lumbar --phantom-option metal=true
echo "wrote $OUT"
