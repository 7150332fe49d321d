#!/bin/bash
# Prefill eval of stories15M next to llama.cpp (docs/results.md "Prefill eval of stories15M next to
# llama.cpp"): the same F32 GGUF file, the same text, windows of 256 over the first 2048 tokens;
# lowbit's printed forward speed against llama-perplexity's "prompt eval" tokens per second, at 1
# and 2 threads, runs alternating, ROUNDS rounds (default 3). Prints one line per run:
#   threads tool tokens/s
# llama.cpp is not built here: LLAMA_BIN names a directory holding a prebuilt llama-perplexity.
# Usage: LLAMA_BIN=... scripts/eval-vs-llamacpp.sh  (LOWBIT=build/lowbit DATA=../shared/data WORK=...)
set -eu
L=$(realpath ${LOWBIT:-build/lowbit}); D=$(realpath ${DATA:-../shared/data}); B=${LLAMA_BIN:?LLAMA_BIN: a directory with llama-perplexity}
W=${WORK:-/tmp/lowbit-evalcmp}; ROUNDS=${ROUNDS:-3}
T=$D/text/tinystories_val_sample.txt
mkdir -p $W
[ -f $W/s15.gguf ] || $L quantize --model $D/llama2c/stories15M.bin --tokenizer $D/llama2c/tok32000.bin --data $T \
  --weights fp32 --method rtn -o $W/s15.gguf > /dev/null 2>&1
for rep in $(seq $ROUNDS); do
  for t in 1 2; do
    s=$(OMP_NUM_THREADS=$t $L eval --model $W/s15.gguf --data $T --max-tokens 2048 --ctx 256 2>&1 |
        awk '/^speed/ {print $2, $4}')
    echo "$t lowbit ${s% *} (${s#* } GFLOP/s)"
    p=$($B/llama-perplexity -m $W/s15.gguf -f $T -c 256 --chunks 8 -b 256 -t $t 2>&1 |
        grep -o 'prompt eval time.*' | grep -o '[0-9.]* tokens per second' | cut -d' ' -f1)
    echo "$t llama.cpp $p"
  done
done
