#!/usr/bin/env bash
# `make demo`: the main job — `lowbit explore` on stories260K and the TinyStories sample (weight
# formats, W8A8, an FP8 KV cache: bits/weight, perplexity, KL; CSV, JSON and a PNG plot), greedy
# generation, then a short tour of the format engine on shipped data.
set -euo pipefail
LOWBIT=${1:-build/lowbit}
DATA=${LOWBIT_DATA:-$(cd "$(dirname "$0")/.." && pwd)/../shared/data}
OUT=${DEMO_OUT:-demo-out}
export LOWBIT_DATA_DIR="$DATA"
echo "== lowbit explore: stories260K on the TinyStories sample (first ${DEMO_TOKENS:=65536} tokens)"
"$LOWBIT" explore --model "$DATA/llama2c/stories260K.bin" --data "$DATA/text/tinystories_val_sample.txt" \
  --max-tokens "$DEMO_TOKENS" -o "$OUT"
echo; echo "== lowbit generate --greedy (stories260K from BOS; llama2.c's published sample)"
"$LOWBIT" generate --model "$DATA/llama2c/stories260K.bin" --tokenizer "$DATA/llama2c/tok512.bin" --greedy --max-tokens 60
echo; echo "== the same with int4/g32 weights"
"$LOWBIT" generate --model "$DATA/llama2c/stories260K.bin" --tokenizer "$DATA/llama2c/tok512.bin" --greedy --max-tokens 60 --weights int4/g32
echo; echo "== lowbit cast: one row, groups of consecutive values"
echo "\$ lowbit cast e2m1 2.5 -1.75 7 nan -inf"; "$LOWBIT" cast e2m1 2.5 -1.75 7 nan -inf
echo "\$ lowbit cast mxfp4 --codes 7 0.7 -3 0.2"; "$LOWBIT" cast mxfp4 --codes 7 0.7 -3 0.2
if [ -f "$DATA/vectors/formats.jsonl" ]; then
  echo; echo "== the shipped reference vectors (independent exact implementation) through lowbit cast"
  python3 - "$LOWBIT" "$DATA/vectors/formats.jsonl" <<'PY'
import json, struct, subprocess, sys
lowbit, path = sys.argv[1], sys.argv[2]
f32 = lambda v: struct.unpack("f", struct.pack("f", float(v)))[0]  # lowbit prints shortest float32 decimals
for line in open(path):
    d = json.loads(line)
    out = subprocess.run([lowbit, "cast", d["format"]], input=" ".join(repr(float(v)) for v in d["inputs"]),
                         capture_output=True, text=True, check=True).stdout.split()
    ok = sum(f32(a) == f32(b) for a, b in zip(out, d["outputs"]))
    print(f"  {d['format']:<12} {ok}/{len(d['outputs'])} values equal")
PY
fi
echo; echo "== lowbit analyze (SQNR with optimal clipping, docs/analysis.md §5.1)"
"$LOWBIT" analyze int8 e4m3fn e5m2 int4 e2m1 e3m2 e2m3 nf4 --dist gaussian --dist student-t:3
echo; echo "== lowbit bench (16 MiB, 1 thread)"
"$LOWBIT" bench int8/c e4m3fn/c mxfp4 nvfp4 q8_0 --mib 16 --reps 5
echo; echo "== lowbit train: a 2-layer Llama on tinyshakespeare (bytes), fp32 and the sun2025 targets in e2m1/g32"
for plan in fp32 sun2025:e2m1/g32; do
  rm -rf "$OUT/train-${plan//[:\/]/_}"  # a fresh run each demo (train refuses to overwrite a checkpoint)
  "$LOWBIT" train --data "$DATA/text/tinyshakespeare.txt" --tokenizer bytes --dim 64 --layers 2 --heads 4 \
    --ctx 64 --batch 16 --steps 150 --lr 3e-3 --seed 1 --plan "$plan" --out "$OUT/train-${plan//[:\/]/_}"
done
