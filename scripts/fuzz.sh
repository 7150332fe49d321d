#!/usr/bin/env bash
# Runs every libFuzzer harness of fuzz/ (docs/robustness.md "Fuzzing") for SECONDS each, from seed
# corpora made by make_seeds; the corpora grow in BUILD/fuzz-corpus/<target> between runs.
# A finding (crash, sanitizer report, oracle failure, timeout) stops with the reproducer's path.
#   scripts/fuzz.sh BUILD SECONDS [DATA_DIR] [TARGET...]
set -euo pipefail
build=$1 seconds=$2 data=${3:-../shared/data}
shift $(( $# >= 3 ? 3 : 2 ))
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(spec safetensors gguf llama2c model)
seeds=$build/fuzz-seeds
rm -rf "$seeds"
"$build/make_seeds" "$data" "$seeds"
mkdir -p "$build/fuzz-findings"
for t in "${targets[@]}"; do
  corpus=$build/fuzz-corpus/$t
  mkdir -p "$corpus"
  log=$build/fuzz-findings/$t.log
  # -max_len: specs are short; files a few KB (the seeds); rss/timeout guard against blow-ups.
  max_len=$([ "$t" = spec ] && echo 256 || echo 16384)
  if ! "$build/fuzz_$t" "$corpus" "$seeds/$t" -max_total_time="$seconds" -max_len="$max_len" \
       -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$build/fuzz-findings/$t-" \
       > "$log" 2>&1; then
    tail -40 "$log"
    echo "fuzz_$t: FINDING (reproducer in $build/fuzz-findings/, log $log)" >&2
    exit 1
  fi
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
  rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
  echo "fuzz_$t: ${seconds}s, $execs executions ($rate/s), corpus $(ls "$corpus" | wc -l) files, no finding"
done
