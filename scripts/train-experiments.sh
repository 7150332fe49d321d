#!/usr/bin/env bash
# Low-precision training experiments of issue 5 (a background job, not CI):
#   curves  : a ~0.84M-parameter Llama (dim 128, 4 layers) on tinyshakespeare (bytes) under fp32,
#             sun2025 targets (P2, P4, P6) in E4M3 / E2M1 / INT8 / INT4 with blocks of 32 and
#             per channel, flex16+5, and the exponent-vs-mantissa pairs E2M3/E3M2, E3M4/E4M3/E5M2
#   grid    : 3 model sizes x 2 token budgets x 3 formats for the scaling-law fits
#   speed   : tokens/s of fp32 training vs all six operands fake-quantized (dim 256, 4 layers,
#             ctx 128, batch 16), measured in one run
# Usage: scripts/train-experiments.sh curves|formats|grid|speed [OUT_DIR] [JOBS]
# Each run writes OUT_DIR/<name>/{log.jsonl,result.json,model.safetensors}; runs already finished
# are skipped, so a killed job resumes. Plots: scripts/plot_training.py OUT_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-curves}
out=${2:-explore-out/train-$what}
mkdir -p "$out"
jobs=${3:-2}
# a copy of the binary: a rebuild during a long job must not change the runs
lowbit=$out/lowbit
cp build/lowbit "$lowbit.tmp" && mv "$lowbit.tmp" "$lowbit"
data=${LOWBIT_DATA_DIR:-../shared/data}/text/tinyshakespeare.txt


run() {  # name, then lowbit train flags
  local name=$1; shift
  local dir="$out/$name"
  [ -f "$dir/result.json" ] && return 0
  local resume=""
  [ -f "$dir/checkpoint.safetensors" ] && resume="--resume"
  # one OpenMP thread per run: parallel runs share the cores without spinning
  OMP_NUM_THREADS=1 "$lowbit" train --data "$data" --tokenizer bytes "$@" --out "$dir" $resume --json \
    2> "$dir.stderr" | tail -1 > "$dir.result.tmp" && mv "$dir.result.tmp" "$dir/result.json"
  echo "$name: $(cat "$dir/result.json")"
}
export -f run
export out lowbit data

case "$what" in
  curves)
    common="--dim 128 --layers 4 --heads 4 --ctx 64 --batch 16 --steps 600 --lr 3e-3 --seed 1 --eval-every 50"
    {
      echo "fp32 --plan fp32"
      for f in e4m3 e2m1 int8 int4; do
        echo "$f-g32 --plan sun2025:$f/g32"
        echo "$f-c --plan sun2025:$f/c"
      done
      echo "flex16+5 --plan flex16+5"
      echo "flex16+8 --plan flex16+8"   # the same mantissas with an 8-bit exponent range
      for f in e2m3 e3m2 e3m4 e5m2; do echo "$f-g32 --plan sun2025:$f/g32"; done
    } | while read -r name flags; do echo "$name $flags $common"; done |
      xargs -P "$jobs" -L 1 bash -c 'run "$@"' _
    ;;
  formats)
    # Exponent vs mantissa bits with every operand quantized (P1..P6 at blocks of 32: gradients
    # and activations need range), and fp32 under two more seeds for the seed-to-seed spread.
    common="--dim 128 --layers 4 --heads 4 --ctx 64 --batch 16 --steps 600 --lr 3e-3 --eval-every 50"
    {
      for f in e2m3 e3m2 e3m4 e4m3 e5m2; do
        echo "all-$f-g32 --seed 1 --plan x=$f/g32;w=$f/g32;dy=$f/g32;w_bwd=$f/g32;dy_w=$f/g32;x_bwd=$f/g32"
      done
      echo "fp32-seed2 --seed 2 --plan fp32"
      echo "fp32-seed3 --seed 3 --plan fp32"
    } | while read -r name flags; do echo "$name $flags $common"; done |
      xargs -P "$jobs" -L 1 bash -c 'run "$@"' _
    ;;
  grid)
    # N: dim 48/64/96/128 (4 layers); D: 300, 900 and 1800 steps of 1024 tokens; formats: fp32 and the
    # sun2025 targets in e4m3/g32 and e2m1/g32.
    {
      for dim in 48 64 96 128; do
        for steps in 300 900 1800; do
          for plan in fp32 sun2025:e4m3/g32 sun2025:e2m1/g32; do
            name="d$dim-s$steps-${plan//[:\/]/_}"
            echo "$name --dim $dim --layers 4 --heads 4 --ctx 64 --batch 16 --steps $steps --lr 3e-3 --seed 1 --plan $plan --db $out/runs.db"
          done
        done
      done
    } | xargs -P "$jobs" -L 1 bash -c 'run "$@"' _
    ;;
  speed)
    # fp32 and all six operands fake-quantized, alternating 3 times on the same machine state;
    # prints each tokens/s and the median ratio.
    quant="x=e4m3/g32;w=e4m3/g32;dy=e5m2/g32;w_bwd=e4m3/g32;dy_w=e5m2/g32;x_bwd=e4m3/g32"
    for rep in 1 2 3; do
      for plan in fp32 "$quant"; do
        "$lowbit" train --data "$data" --tokenizer bytes --dim 256 --layers 4 --heads 4 --ctx 128 --batch 16 \
          --steps 60 --eval-every 1000 --val-batches 1 --plan "$plan" --json 2>/dev/null | tail -1
      done
    done | python3 -c '
import json, sys, statistics
rows = [json.loads(l) for l in sys.stdin]
f = [r["tokens_per_s"] for r in rows if r["plan"] == "fp32"]
q = [r["tokens_per_s"] for r in rows if r["plan"] != "fp32"]
for a, b in zip(f, q): print(f"fp32 {a:.0f} tok/s  six operands quantized {b:.0f} tok/s  ratio {a / b:.3f}")
print(f"median overhead of fake-quantizing all six operands: {100 * (statistics.median(a / b for a, b in zip(f, q)) - 1):.1f}%")'
    ;;
  *) echo "usage: $0 curves|formats|grid|speed [OUT_DIR] [JOBS]" >&2; exit 2 ;;
esac
