#!/usr/bin/env bash
# `make demo`: the main job of the format engine on shipped data — the named formats, a format's
# value table, casts, the SQNR analysis of METHODS 5.1, and a short throughput benchmark.
set -euo pipefail
LOWBIT=${1:-build/lowbit}
DATA=${LOWBIT_DATA:-$(cd "$(dirname "$0")/.." && pwd)/../shared/data}
echo "== lowbit formats"; "$LOWBIT" formats
echo; echo "== lowbit info e4m3fn (OCP FP8 E4M3)"; "$LOWBIT" info e4m3fn | sed -n "1,16p"
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
echo; echo "== lowbit analyze (SQNR with optimal clipping, METHODS 5.1)"
"$LOWBIT" analyze int8 e4m3fn e5m2 int4 e2m1 e3m2 e2m3 nf4 --dist gaussian --dist laplace --dist student-t:3
echo; echo "== lowbit bench (16 MiB, 1 thread)"
"$LOWBIT" bench int8/c e4m3fn/c mxfp4 nvfp4 q8_0 --mib 16 --reps 5
