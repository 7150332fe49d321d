#!/usr/bin/env bash
# Runs every libFuzzer harness of fuzz/ (docs/robustness.md "Fuzzing") for SECONDS each, from seed
# corpora made by make_seeds; the corpora grow in BUILD/fuzz-corpus/<target> between runs.
# A finding (crash, sanitizer report, oracle failure, timeout) fails with the reproducer's path.
#   scripts/fuzz.sh BUILD SECONDS [DATA_DIR] [TARGET...]
# FUZZ_PARALLEL=1 runs the harnesses at the same time (SECONDS of wall clock for all of them,
# sharing the cores) instead of one after another.
set -euo pipefail
build=$1 seconds=$2 data=${3:-../shared/data}
shift $(( $# >= 3 ? 3 : 2 ))
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(spec safetensors gguf llama2c model)
seeds=$build/fuzz-seeds
rm -rf "$seeds"
"$build/make_seeds" "$data" "$seeds"
mkdir -p "$build/fuzz-findings"

run_one() {
  local t=$1 corpus=$build/fuzz-corpus/$1 log=$build/fuzz-findings/$1.log max_len
  mkdir -p "$corpus"
  # -max_len: specs are short; files a few KB (the seeds); rss/timeout guard against blow-ups.
  max_len=$([ "$t" = spec ] && echo 256 || echo 16384)
  if ! "$build/fuzz_$t" "$corpus" "$seeds/$t" -max_total_time="$seconds" -max_len="$max_len" \
       -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$build/fuzz-findings/$t-" \
       > "$log" 2>&1; then
    tail -40 "$log"
    echo "fuzz_$t: FINDING (reproducer in $build/fuzz-findings/, log $log)" >&2
    return 1
  fi
  local execs rate
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
  rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
  echo "fuzz_$t: ${seconds}s, $execs executions ($rate/s), corpus $(ls "$corpus" | wc -l) files, no finding"
}

if [ "${FUZZ_PARALLEL:-0}" = 1 ]; then
  pids=()
  for t in "${targets[@]}"; do run_one "$t" & pids+=($!); done
  status=0
  for p in "${pids[@]}"; do wait "$p" || status=1; done
  exit $status
fi
for t in "${targets[@]}"; do run_one "$t" || exit 1; done
