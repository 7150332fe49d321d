#!/bin/bash
# Threads under load (docs/results.md): stories15M eval, GPTQ and a small training run with the
# default team, one thread, and a fixed team of 2 with libgomp's default spin, beside 2 busy processes.
# Usage: scripts/threads-under-load.sh  (LOWBIT=build/lowbit DATA=../shared/data)
L=${LOWBIT:-build/lowbit}; D=${DATA:-../shared/data}
yes > /dev/null & Y1=$!; yes > /dev/null & Y2=$!
trap 'kill $Y1 $Y2 2>/dev/null' EXIT
sleep 1
run() { # label env...
  local label=$1; shift
  for kind in eval gptq train; do
    case $kind in
      eval) out=$(env "$@" $L eval --model $D/llama2c/stories15M.bin --tokenizer $D/llama2c/tok32000.bin --data $D/text/tinystories_val_sample.txt --ctx 256 --max-tokens 1024 --json 2>/dev/null | python3 -c 'import json,sys; print("%.0f tok/s" % json.load(sys.stdin)["tokens_per_second"])');;
      gptq) rm -rf ${TMPDIR:-/tmp}/lowbit-lb; mkdir -p ${TMPDIR:-/tmp}/lowbit-lb; s=$(date +%s.%N); env "$@" $L quantize --model $D/llama2c/stories15M.bin --tokenizer $D/llama2c/tok32000.bin --data $D/text/tinystories_val_sample.txt --weights int4/g32 --method gptq --calib-samples 8 --calib-ctx 128 -o ${TMPDIR:-/tmp}/lowbit-lb/q.safetensors >/dev/null 2>&1; e=$(date +%s.%N); out=$(python3 -c "print('%.1f s' % ($e-$s))");;
      train) rm -rf ${TMPDIR:-/tmp}/lowbit-lbt; s=$(date +%s.%N); env "$@" $L train --dim 128 --layers 4 --heads 4 --ctx 128 --batch 8 --steps 30 --val-batches 2 -o ${TMPDIR:-/tmp}/lowbit-lbt >/dev/null 2>&1; e=$(date +%s.%N); out=$(python3 -c "print('%.0f tok/s' % (30*8*128/($e-$s)))");;
    esac
    echo "$label $kind $out"
  done
}
for rep in 1 2; do
  run default X=1
  run one OMP_NUM_THREADS=1
  run fixed2 OMP_NUM_THREADS=2 LOWBIT_THREADS_FOLLOW_LOAD=0 GOMP_SPINCOUNT=300000
done
