#!/usr/bin/env bash
# QAFT against GPTQ at equal data (docs/training.md §3.5, docs/results.md "Fine-tuning"; a
# background job, not CI): stories15M on the TinyStories sample, weights int4/g32 and int3/g32.
#   - the text is split by documents: the first 10% is the evaluation text, the rest the
#     training text, so nothing evaluated was calibrated on or trained on;
#   - GPTQ: `lowbit quantize` with N calibration tokens (N/256 windows of 256, drawn from the
#     second half of the training text);
#   - QAFT: `lowbit train --init stories15M.bin --plan qat:FMT` on N fine-tuning tokens (N/1024
#     steps of 4 x 256, windows from the first 90% of the training text), from the float
#     weights, from RTN's (--init-weights rtn) and from GPTQ's (--init-weights gptq: N
#     calibration tokens more), exported with `lowbit quantize --method rtn` (exactly the
#     forward's Q(W));
#   - fine-tuning alone (plan fp32, N tokens) as the reference of the QAFT runs: the text teaches
#     the model more than the quantization costs it;
#   - every model evaluated on the first EVAL tokens of the evaluation text.
# Usage: scripts/qaft-vs-gptq.sh [OUT_DIR] [N] [EVAL] [LR] [FORMATS]
#   (defaults: explore-out/qaft, 32768, 16384, 3e-4, "int4/g32 int3/g32")
# Prints one line per run: name, eval mean NLL, perplexity, wall seconds and CPU seconds of the
# step that made the model (quantize or train + export). Finished steps are skipped on a rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-explore-out/qaft}
n=${2:-32768}
eval_tokens=${3:-16384}
lr=${4:-3e-4}
formats=${5:-int4/g32 int3/g32}
data_dir=${LOWBIT_DATA_DIR:-../shared/data}
model=$data_dir/llama2c/stories15M.bin
mkdir -p "$out"
lowbit=$out/lowbit  # a copy: a rebuild during the job must not change the runs
[ -x "$lowbit" ] || { cp build/lowbit "$lowbit.tmp" && mv "$lowbit.tmp" "$lowbit"; }

# Documents are blank-line separated: the first 10% evaluate, the rest train and calibrate.
if [ ! -f "$out/train.txt" ]; then
  awk -v RS= -v ORS='\n\n' -v eval="$out/eval.txt" -v train="$out/train.txt" \
    '{ print > (NR <= 430 ? eval : train) }' "$data_dir/text/tinystories_val_sample.txt"
fi
samples=$((n / 256))
steps=$((n / 1024))

timed() {  # name, command...: runs it once, keeps "wall cpu" in $out/name.time
  local name=$1; shift
  [ -f "$out/$name.time" ] && return 0
  /usr/bin/time -f "%e %U %S" -o "$out/$name.time.tmp" "$@" > "$out/$name.log" 2>&1
  awk '{ printf "%.1f %.1f\n", $1, $2 + $3 }' "$out/$name.time.tmp" > "$out/$name.time" && rm "$out/$name.time.tmp"
}
evaluate() {  # name, eval flags
  local name=$1; shift
  [ -f "$out/$name.eval.json" ] ||
    "$lowbit" eval "$@" --data "$out/eval.txt" --max-tokens "$eval_tokens" --json 2> /dev/null > "$out/$name.eval.json"
  local t="- -"
  [ -f "$out/$name.time" ] && t=$(cat "$out/$name.time")
  python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(f'{sys.argv[2]:24s} NLL {d[\"mean_nll\"]:.4f}  ppl {d[\"ppl\"]:.3f}  wall/cpu s {sys.argv[3]}')" \
    "$out/$name.eval.json" "$name" "$t"
}
qaft() {  # name, format, train flags...: fine-tune, then export the forward's Q(W)
  local name=$1 fmt=$2; shift 2
  timed "$name" bash -c "'$lowbit' train --init '$model' --data '$out/train.txt' --plan qat:$fmt --steps $steps \
    --batch 4 --ctx 256 --lr $lr --eval-every $steps --val-batches 2 --out '$out/$name' --json $* &&
    '$lowbit' quantize --model '$out/$name/model.safetensors' --data '$out/train.txt' --weights $fmt --method rtn \
    -o '$out/$name.safetensors' --force"
  evaluate "$name" --model "$out/$name.safetensors"
}

evaluate fp32 --model "$model"
# Fine-tuning alone (plan fp32, the same tokens): what the text teaches the model besides the
# quantization (the evaluation text's documents start mid-story, after BOS).
timed ft-fp32 "$lowbit" train --init "$model" --data "$out/train.txt" --plan fp32 --steps "$steps" --batch 4 \
  --ctx 256 --lr "$lr" --eval-every "$steps" --val-batches 2 --out "$out/ft-fp32" --json
evaluate ft-fp32 --model "$out/ft-fp32/model.safetensors"
for fmt in $formats; do
  tag=${fmt%%/*}
  timed "rtn-$tag" "$lowbit" quantize --model "$model" --data "$out/train.txt" --weights "$fmt" --method rtn \
    -o "$out/rtn-$tag.safetensors" --force
  evaluate "rtn-$tag" --model "$out/rtn-$tag.safetensors"
  timed "gptq-$tag" "$lowbit" quantize --model "$model" --data "$out/train.txt" --weights "$fmt" --method gptq \
    --calib-samples "$samples" --calib-ctx 256 -o "$out/gptq-$tag.safetensors" --force
  evaluate "gptq-$tag" --model "$out/gptq-$tag.safetensors"
  qaft "qaft-$tag" "$fmt"
  qaft "qaft-rtn-$tag" "$fmt" --init-weights rtn
  qaft "qaft-gptq-$tag" "$fmt" --init-weights gptq --calib-samples "$samples" --calib-ctx 256
done
