#!/bin/bash
# Packed inference (docs/results.md "Packed inference"): decode tokens/s and peak RSS of
# `lowbit generate` (float32, simulated, --packed with float or integer activations) next to
# llama.cpp's llama-bench (-p 0 -n 128) on the same GGUF files, one thread each, runs alternating,
# three rounds; prints one line per run: label tokens/s peak-RSS-KiB. Summarise with medians.
# llama.cpp is not built here: LLAMA_BIN names a directory holding a prebuilt llama-bench (runs of
# it are skipped when absent). The files are made in WORK (default /tmp/lowbit-packed).
# Usage: scripts/packed-decode.sh  (LOWBIT=build/lowbit DATA=../shared/data LLAMA_BIN=... WORK=...)
set -u
L=$(realpath ${LOWBIT:-build/lowbit}); D=$(realpath ${DATA:-../shared/data}); B=${LLAMA_BIN:-}
W=${WORK:-/tmp/lowbit-packed}
mkdir -p $W && cd $W
export OMP_NUM_THREADS=1
S15="--model $D/llama2c/stories15M.bin --tokenizer $D/llama2c/tok32000.bin"
for f in q8_0 q4_0 mxfp4; do
  [ -f s15m-$f.gguf ] || $L quantize $S15 --data $D/text/tinystories_val_sample.txt --weights $f --method rtn \
    -o s15m-$f.gguf >/dev/null 2>&1
done
# The 110M Llama shape with the byte vocabulary (85.2M parameters): llama.cpp reads its tokenizer.
[ -f syn85m.gguf ] || $L synth --arch llama --dim 768 --layers 12 --heads 12 --ctx 512 --seed 1 -o syn85m.gguf >/dev/null
for f in q8_0 q4_0; do
  [ -f syn85m-$f.gguf ] || $L quantize --model syn85m.gguf --data $D/text/tinystories_val_sample.txt --weights $f \
    --method rtn --calib-samples 1 -o syn85m-$f.gguf >/dev/null 2>&1
done
lb() {  # label, generate's arguments
  local label=$1; shift
  /usr/bin/time -v nice -n 5 $L generate "$@" --greedy --max-tokens 129 > /dev/null 2> $W/lb.err
  echo "$label $(grep -o '[0-9.]* tokens/s' $W/lb.err | head -1 | cut -d' ' -f1) $(grep 'Maximum resident' $W/lb.err | awk '{print $6}')"
}
ll() {  # label, GGUF file
  [ -x "$B/llama-bench" ] || return 0
  /usr/bin/time -v nice -n 5 $B/llama-bench -m "$2" -p 0 -n 128 -t 1 -r 1 -o csv > $W/ll.out 2> $W/ll.err
  echo "$1 $(tail -1 $W/ll.out | awk -F, '{print $(NF-1)}' | tr -d '"') $(grep 'Maximum resident' $W/ll.err | awk '{print $6}')"
}
for rep in 1 2 3; do
  lb s15m-lowbit-f32 $S15
  ll s15m-llama-q8_0 s15m-q8_0.gguf
  lb s15m-lowbit-q8_0-packed --model s15m-q8_0.gguf --packed
  lb s15m-lowbit-q8_0-packed-q8acts --model s15m-q8_0.gguf --packed --acts q8_0
  ll s15m-llama-q4_0 s15m-q4_0.gguf
  lb s15m-lowbit-q4_0-packed --model s15m-q4_0.gguf --packed
  lb s15m-lowbit-q4_0-packed-q8acts --model s15m-q4_0.gguf --packed --acts q8_0
  lb s15m-lowbit-q4_0-simulated --model s15m-q4_0.gguf
  lb s15m-lowbit-mxfp4-packed --model s15m-mxfp4.gguf --packed
  lb s15m-lowbit-int4g32-packed $S15 --weights int4/g32 --packed
  lb s15m-lowbit-nvfp4-packed $S15 --weights nvfp4 --packed
  lb s15m-lowbit-int8c-packed-int8acts $S15 --weights int8/c --acts int8/c --packed
  lb syn85m-lowbit-f32 --model syn85m.gguf
  ll syn85m-llama-f32 syn85m.gguf
  ll syn85m-llama-q8_0 syn85m-q8_0.gguf
  lb syn85m-lowbit-q8_0-packed --model syn85m-q8_0.gguf --packed
  lb syn85m-lowbit-q8_0-packed-q8acts --model syn85m-q8_0.gguf --packed --acts q8_0
  ll syn85m-llama-q4_0 syn85m-q4_0.gguf
  lb syn85m-lowbit-q4_0-packed --model syn85m-q4_0.gguf --packed
  lb syn85m-lowbit-q4_0-packed-q8acts --model syn85m-q4_0.gguf --packed --acts q8_0
  lb syn85m-lowbit-q4_0-simulated --model syn85m-q4_0.gguf
  lb syn85m-lowbit-mxfp4-packed --model syn85m.gguf --weights mxfp4 --packed
  lb syn85m-lowbit-nvfp4-packed --model syn85m.gguf --weights nvfp4 --packed
  lb syn85m-lowbit-int4g32-packed-q8acts --model syn85m.gguf --weights int4/g32 --acts q8_0 --packed
  lb syn85m-lowbit-int8c-packed-int8acts --model syn85m.gguf --weights int8/c --acts int8/c --packed
done
