#!/usr/bin/env bash
# The GPU check: everything x2ct needs measured on a GPU, in one run of at most 8 minutes
# on one H100/H200, into one markdown table (issue 15).
#
#   bash eval/gpu_check.sh            # on a CUDA machine, from the repository root
#   bash eval/gpu_check.sh --cpu      # the same parts at tiny sizes on the CPU (the tests
#                                     # run this, so the script cannot rot)
#
# Parts, most important first, each under its own time limit and all under one budget
# (GPU_CHECK_BUDGET seconds, default 470; a part that fails or runs out of time is a row
# saying so, and the rest still run):
#   tests      the `gpu` tests and the kernel tests, compiled (tests/test_kernels*.py)
#   projector  2 x 256^2 rays through 256^3, fp32 and bf16, forward and forward+backward,
#              x2ct Triton beside nanodrr's fused Triton kernel (and the torch paths)
#   recon_base base 128^3 at 1 mm (kl-base-1mm + base), DDIM 25 steps, no projection
#              guidance, untrained weights, fp32 and bf16: seconds and peak memory
#   train_base base training steps at batch 1, 2, 4 (bf16 through Accelerate): the latent
#              stage without and with the Triton projection loss, the autoencoder on 64^3
#              crops: samples/s, peak memory, memory per further sample
#   recon_tiny tiny 64^3 at 2 mm, as recon_base
#   train_2gpu the latent stage on two GPUs (accelerate launch --multi_gpu), when
#              `nvidia-smi -L` lists two or more
# Output: GPU_CHECK_OUT (default runs/gpu_check)/table.md, printed at the end; one JSON and
# one log per part beside it.
set -uo pipefail

MODE=gpu
if [[ "${1:-}" == "--cpu" ]]; then MODE=cpu; elif [[ $# -gt 0 ]]; then
  echo "usage: bash eval/gpu_check.sh [--cpu]" >&2; exit 2
fi
PY=${PYTHON:-python}
OUT=${GPU_CHECK_OUT:-runs/gpu_check}
BUDGET=${GPU_CHECK_BUDGET:-470}
mkdir -p "$OUT"
rm -f "$OUT"/*.json "$OUT"/*.log "$OUT/status.txt" "$OUT/table.md"
START=$SECONDS

if ! "$PY" -c "import x2ct, nanodrr" 2>/dev/null; then  # a fresh machine: torch is there
  echo "== installing x2ct (pip install -e .[test])"
  "$PY" -m pip install -q -e ".[test]" > "$OUT/install.log" 2>&1 \
    || { echo "pip install failed: see $OUT/install.log" >&2; exit 1; }
fi
if [[ $MODE == gpu ]] && ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
  echo "no CUDA device: run 'bash eval/gpu_check.sh --cpu' for the CPU rehearsal" >&2; exit 1
fi
GPUS=0
if [[ $MODE == gpu ]]; then GPUS=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU'); fi

# part NAME LIMIT_S COMMAND...: run under min(LIMIT_S, what is left of the budget), log to
# $OUT/NAME.log, record "NAME exit-status seconds" in $OUT/status.txt
part() {
  local name=$1 limit=$2; shift 2
  local left=$(( BUDGET - (SECONDS - START) ))
  (( left < limit )) && limit=$left
  if (( limit < 10 )); then
    echo "$name skipped 0" >> "$OUT/status.txt"; echo "== $name: skipped (budget spent)"; return
  fi
  echo "== $name (at most ${limit} s)"
  local t0=$SECONDS
  timeout --kill-after=5 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name $rc $(( SECONDS - t0 ))" >> "$OUT/status.txt"
  (( rc != 0 )) && echo "   exit $rc: see $OUT/$name.log"
}
BENCH=("$PY" eval/benchmark.py)  # (timeout runs programs, not shell functions)

if [[ $MODE == gpu ]]; then
  # the GPU-marked tests, then the kernel files whole (their GPU tests once, not twice)
  part tests 200 bash -c "'$PY' -m pytest -q -p no:cacheprovider -m gpu tests \
    --ignore=tests/test_kernels.py --ignore=tests/test_kernels_compiled.py \
    && '$PY' -m pytest -q -p no:cacheprovider tests/test_kernels.py tests/test_kernels_compiled.py"
  part projector 80 "${BENCH[@]}" projector --size 256 --detector 256 --device cuda \
    --dtypes float32 bfloat16 --reps 10 --json "$OUT/projector.json"
  part recon_base 60 "${BENCH[@]}" reconstruct --config base --ae-config kl-base-1mm --shape 128 \
    --samplers ddim --steps 25 --precision fp32 bf16 --reps 3 --device cuda \
    --json "$OUT/recon_base.json"
  part train_base 110 "${BENCH[@]}" train --config base --ae-config kl-base-1mm --shape 128 --crop 64 \
    --batch-sizes 1 2 4 --projections off triton --precision bf16 --accelerate --reps 3 \
    --device cuda --json "$OUT/train_base.json"
  part recon_tiny 40 "${BENCH[@]}" reconstruct --config tiny --ae-config kl-tiny --shape 64 \
    --samplers ddim --steps 25 --precision fp32 bf16 --reps 3 --device cuda \
    --json "$OUT/recon_tiny.json"
  if (( GPUS >= 2 )); then
    part train_2gpu 60 "$PY" -m accelerate.commands.launch --multi_gpu --num_processes 2 \
      eval/benchmark.py train --config base --ae-config kl-base-1mm --shape 128 \
      --stages latent --batch-sizes 2 --projections triton --precision bf16 --accelerate \
      --reps 3 --device cuda --json "$OUT/train_2gpu.json"
  fi
else  # the CPU rehearsal: every command and flag above, tiny sizes; one wide time limit (it
      # checks commands, not speed, and a shared CPU may be slow)
  CPU_LIMIT=600
  part tests $CPU_LIMIT "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/test_kernels.py \
    tests/test_kernels_compiled.py
  part projector $CPU_LIMIT "${BENCH[@]}" projector --size 16 --detector 8 --device cpu \
    --dtypes float32 --reps 1 --json "$OUT/projector.json"
  part recon_base $CPU_LIMIT "${BENCH[@]}" reconstruct --config base --ae-config kl-base-1mm \
    --shape 32 --samplers ddim --steps 1 --precision fp32 --device cpu --json "$OUT/recon_base.json"
  # (one batch size: a CPU's peak memory cannot give the per-sample slope anyway)
  part train_base $CPU_LIMIT "${BENCH[@]}" train --config base --ae-config kl-base-1mm \
    --shape 32 --crop 16 --batch-sizes 1 --projections torch --precision fp32 --accelerate \
    --reps 1 --device cpu --json "$OUT/train_base.json"
  part recon_tiny $CPU_LIMIT "${BENCH[@]}" reconstruct --config tiny --ae-config kl-tiny \
    --shape 16 --samplers ddim --steps 2 --precision fp32 --device cpu --json "$OUT/recon_tiny.json"
  part train_2gpu $CPU_LIMIT "$PY" -m accelerate.commands.launch --cpu --num_processes 1 \
    eval/benchmark.py train --config tiny --ae-config kl-tiny --shape 16 --stages latent \
    --batch-sizes 2 --projections off --accelerate --reps 1 --device cpu \
    --json "$OUT/train_2gpu.json"
fi

"$PY" eval/gpu_report.py "$OUT" --mode "$MODE" --gpus "$GPUS" > "$OUT/table.md.tmp" \
  && mv "$OUT/table.md.tmp" "$OUT/table.md" && cat "$OUT/table.md"
echo "(gpu check: $(( SECONDS - START )) s; $OUT/table.md)"
