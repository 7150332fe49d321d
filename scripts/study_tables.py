#!/usr/bin/python3
"""Markdown tables of a study (docs/studies/README.md) from `lowbit report`'s runs.json.

    scripts/study_tables.py studies-out/NAME/report/runs.json [--sqnr]

Prints one row per quantized run (model, formats, method, bits per weight, MAC cost relative to
INT8 x INT8 (law/cost.hpp's model), perplexity, NLL change and KL against the float model, task
accuracy and FormatSpread when the study scored them, quantization seconds), in the order the
runs were recorded. With --sqnr, the per-layer SQNR analysis runs (kind "sqnr"): the mean SQNR
of weights and activations per layer type over the blocks, the lowest block's, the activations'
excess kurtosis, and the closed-form SQNR on the study's densities.
"""
import json
import math
import re
import sys
from collections import defaultdict


def fmt(v, digits=4):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{digits}f}"


def runs_table(runs):
    runs = [r for r in runs if r["kind"] != "sqnr"]
    tasks = sorted({k[len("task."):-len(".acc")] for r in runs for k in r["metrics"] if k.startswith("task.") and k.endswith(".acc")})
    spreads = sorted({k[len("spread."):] for r in runs for k in r["metrics"] if k.startswith("spread.") and k.count(".") == 1})
    head = ["weights", "acts", "method", "bits/w", "MAC", "ppl", "dNLL", "KL"]
    head += [f"{t} acc" for t in tasks] + [f"spread {s} [worst, best]" for s in spreads] + ["quant s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in runs:
        m = r["metrics"]
        row = [r["canonical"] if r["canonical"] != "fp32" else "fp32", r["acts"] or "-", r["method"],
               fmt(m.get("bits_per_weight"), 2), fmt(r.get("mac_cost"), 3), fmt(r.get("ppl"), 4),
               fmt(m.get("dnll"), 5), fmt(m.get("kl_mean"), 5)]
        for t in tasks:
            row.append(f"{m[f'task.{t}.acc']:.3f} ± {m[f'task.{t}.acc_stderr']:.3f}" if f"task.{t}.acc" in m else "-")
        for s in spreads:
            k = f"spread.{s}"
            row.append(f"{m[k]:.3f} [{m[k + '.worst_acc']:.3f}, {m[k + '.best_acc']:.3f}]" if k in m else "-")
        row.append(fmt(m.get("quantize_seconds"), 1))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def sqnr_tables(runs):
    runs = [r for r in runs if r["kind"] == "sqnr"]
    if not runs:
        return "(no SQNR analysis runs)"
    label = lambda r: f"{r['canonical']},{r['acts'] or '-'}"
    out = []
    # weights: per layer type (blk.N.TYPE.weight)
    for prefix, what, pattern in (("w_sqnr:", "weights", r"blk\.\d+\.(\w+)\.weight"), ("a_sqnr:", "activations", r"blk\.\d+\.(\w+)|(output_norm)")):
        per = defaultdict(dict)
        for r in runs:
            groups = defaultdict(list)
            for k, v in r["metrics"].items():
                if k.startswith(prefix):
                    mt = re.fullmatch(pattern, k[len(prefix):])
                    if mt:
                        groups[mt.group(1) or mt.group(2)].append(v)
            for g, vs in groups.items():
                per[g][label(r)] = (sum(vs) / len(vs), min(vs))
        if not per:
            continue
        cols = [label(r) for r in runs if any(label(r) in per[g] for g in per)]
        out.append(f"SQNR of the {what}, dB: mean over the blocks (lowest block)\n")
        out.append("| layer | " + " | ".join(cols) + " |")
        out.append("|---|" + "---|" * len(cols))
        for g in per:
            out.append(f"| {g} | " + " | ".join(f"{per[g][c][0]:.2f} ({per[g][c][1]:.2f})" if c in per[g] else "-" for c in cols) + " |")
        mean_key = "w_sqnr_mean" if prefix == "w_sqnr:" else "a_sqnr_mean"
        out.append("| **size-weighted mean** | " + " | ".join(fmt(next(r for r in runs if label(r) == c)["metrics"].get(mean_key), 2) for c in cols) + " |")
        out.append("")
    # kurtosis of the activations (format independent: from the first run that has them)
    kr = next((r for r in runs if any(k.startswith("a_kurt:") for k in r["metrics"])), None)
    if kr:
        kurt = defaultdict(list)
        for k, v in kr["metrics"].items():
            if k.startswith("a_kurt:"):
                name = k[len("a_kurt:"):]
                mt = re.fullmatch(r"blk\.\d+\.(\w+)", name)
                kurt[mt.group(1) if mt else name].append(v)
        out.append("Excess kurtosis of the activations (0 = Gaussian, 3 = Laplace): mean over blocks (max)\n")
        out.append("| site | kurtosis |\n|---|---|")
        for g, vs in kurt.items():
            out.append(f"| {g} | {sum(vs) / len(vs):.1f} ({max(vs):.1f}) |")
        out.append("")
    closed = sorted({k for r in runs for k in r["metrics"] if k.startswith("closed_a:")})
    if closed:
        out.append("Closed form (element with optimal clipping on a unit-variance density), dB\n")
        out.append("| element | " + " | ".join(c[len("closed_a:"):] for c in closed) + " |")
        out.append("|---|" + "---|" * len(closed))
        seen = set()
        for r in runs:
            el = r["acts"].split("/")[0] if r["acts"] else r["element"]
            if el in seen:
                continue
            seen.add(el)
            out.append(f"| {el} | " + " | ".join(fmt(r["metrics"].get(c), 2) for c in closed) + " |")
    return "\n".join(out)


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    runs = json.load(open(sys.argv[1]))["runs"]
    print(sqnr_tables(runs) if "--sqnr" in sys.argv[2:] else runs_table(runs))


if __name__ == "__main__":
    main()
