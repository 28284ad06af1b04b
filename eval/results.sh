#!/usr/bin/env bash
# The README's Results tables: a model at its defaults along the user's path (evaluate.py
# makes each case as `reconstruct.py --ct` makes a patient's), held-out phantoms 90000..,
# against the mean training CT.
#
#   bash eval/results.sh [MODEL [OUT [PART...]]]   # default: models/ldm-tiny into
#                                                  # runs/results, every part
#
# Parts: lumbar (10 phantoms), thoracic, radiograph (8-bit PNG files read back), dicom (the
# same radiographs as 12-bit DX DICOM files, the geometry from their tags), move (the
# field 14 mm and 8 degrees off the spine), metal (pedicle screws and rods), crop (each CT
# cut to 136 mm around its spine, the tightest crop that holds the field, as spine CT crops
# are: X-rays through the crop alone); 6 phantoms each but lumbar. Each builds its phantoms
# and the mean CT's anew, so parts may run side by side.
#
# Most of the time goes to building whole-body phantoms (single-threaded): on a 2-core CPU
# two instances with different parts and OMP_NUM_THREADS=1 finish sooner than one. Two cases a
# call: with the model's 16 samples that is 32 volumes decoded at once.
#
# The radiograph, dicom, move and crop parts score the lumbar part's first 6 phantoms another
# way; their targets are differences on the same cases, printed at the end when the lumbar
# part is in OUT (after side-by-side instances: python -m x2ct.eval.paired OUT).
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-models/ldm-tiny}
OUT=${2:-runs/results}
PARTS=("${@:3}")
(( ${#PARTS[@]} )) || PARTS=(lumbar thoracic radiograph dicom move metal crop)
PY=${PYTHON:-python}
mkdir -p "$OUT"
run() {  # run NAME ARGS...: one evaluation into OUT/NAME, its log beside it
  local name=$1; shift
  echo "== $name"
  "$PY" eval/evaluate.py --model "ldm=$MODEL" --baseline mean-ct --no-lpips --fid-net none \
    --no-progress --batch-size 2 --out "$OUT/$name" "$@" > "$OUT/$name.log" 2>&1 \
    || { echo "$name failed: see $OUT/$name.log" >&2; exit 1; }
  grep -A3 "^| method" "$OUT/$name/table.md" || true
}
for part in "${PARTS[@]}"; do
  case $part in
    lumbar) run lumbar --phantoms 10 --region lumbar ;;
    thoracic) run thoracic --phantoms 6 --region thoracic ;;
    radiograph) run radiograph --phantoms 6 --region lumbar --xray-style radiograph ;;
    dicom) run dicom --phantoms 6 --region lumbar --xray-style radiograph \
      --radiograph-format dicom ;;
    move) run move --phantoms 6 --region lumbar --move 14 8 ;;
    metal) run metal --phantoms 6 --region lumbar --phantom-option metal=true ;;
    crop) run crop --phantoms 6 --region lumbar --crop-mm 136 ;;
    *) echo "unknown part $part (lumbar thoracic radiograph dicom move metal crop)" >&2; exit 2 ;;
  esac
done
if [[ -f "$OUT/lumbar/cases.csv" ]]; then
  echo "== the same phantoms: radiograph PNG and DICOM files, a moved field and a cropped CT vs ideal DRRs in place"
  "$PY" -m x2ct.eval.paired "$OUT"
fi
echo "wrote $OUT"
