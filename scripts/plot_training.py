#!/usr/bin/python3
"""Validation-loss curves of lowbit train runs (docs/conventions.md §29: Debian matplotlib, PNG + SVG).

Usage: plot_training.py RUNS_DIR [OUT_PREFIX]
RUNS_DIR holds one directory per run with log.jsonl (and result.json when finished). Writes
OUT_PREFIX.png/.svg (default RUNS_DIR/curves), a table OUT_PREFIX.csv and OUT_PREFIX.md with the
final validation loss of each run and its gap to fp32.
"""
import csv
import json
import os
import sys

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt


def load(run_dir):
    steps, vals = [], []
    path = os.path.join(run_dir, "log.jsonl")
    with open(path) as f:
        for number, line in enumerate(f, 1):
            try:
                d = json.loads(line)
            except ValueError:
                # A line torn by a killed run (or an edit): said and skipped, the lines after it kept.
                print(f"plot_training: {path}:{number}: not a JSON line; skipped", file=sys.stderr)
                continue
            if not isinstance(d, dict):
                print(f"plot_training: {path}:{number}: not a JSON object; skipped", file=sys.stderr)
                continue
            if "val_loss" in d:
                steps.append(d["step"])
                vals.append(d["val_loss"])
    result = None
    rp = os.path.join(run_dir, "result.json")
    if os.path.exists(rp):
        with open(rp) as f:
            result = json.load(f)
    return steps, vals, result


def main():
    root = sys.argv[1]
    prefix = sys.argv[2] if len(sys.argv) > 2 else os.path.join(root, "curves")
    runs = {}
    for name in sorted(os.listdir(root)):
        d = os.path.join(root, name)
        if os.path.isdir(d) and os.path.exists(os.path.join(d, "log.jsonl")):
            runs[name] = load(d)
    if not runs:
        sys.exit(f"plot_training: no runs with log.jsonl under {root}")
    base = runs.get("fp32")
    base_final = base[1][-1] if base and base[1] else None

    # The seed-to-seed spread of fp32 (runs fp32, fp32-seed2, ...) as a band on the gap panels.
    seeds = [v for n, (_, v, _) in runs.items() if (n == "fp32" or n.startswith("fp32-seed")) and v]
    base_steps = base[0] if base else []

    def gap(steps, vals):
        ref = dict(zip(base_steps, base[1])) if base else {}
        pts = [(s, v - ref[s]) for s, v in zip(steps, vals) if s in ref]
        return [p[0] for p in pts], [p[1] for p in pts]

    def band(ax):
        if len(seeds) < 2:
            return
        n = min(len(v) for v in seeds)
        lo = [min(v[i] for v in seeds) - base[1][i] for i in range(n)]
        hi = [max(v[i] for v in seeds) - base[1][i] for i in range(n)]
        ax.fill_between(base_steps[:n], lo, hi, color="0.85", label=f"fp32, {len(seeds)} seeds")

    block = lambda n: (n.endswith("-c") or n in ("e4m3-g32", "e2m1-g32", "int8-g32", "int4-g32")
                       or n.startswith("flex"))
    panels = [("validation loss: sun2025 targets (P2, P4, P6)", lambda n: n == "fp32" or block(n), False),
              ("gap to fp32: sun2025 targets, block 32 (solid) / channel (dashed)", block, True),
              ("gap to fp32: exponent vs mantissa (sun2025 targets; all-*: all six operands)",
               lambda n: n in ("e2m3-g32", "e3m2-g32", "e3m4-g32", "e4m3-g32", "e5m2-g32") or n.startswith("all-"),
               True)]
    fig, axes = plt.subplots(1, len(panels), figsize=(19, 5.8))
    for ax, (title, keep, as_gap) in zip(axes, panels):
        if as_gap:
            band(ax)
            ax.axhline(0, color="black", linewidth=1)
        for name, (steps, vals, _) in runs.items():
            if not keep(name) or not vals:
                continue
            xs, ys = gap(steps, vals) if as_gap else (steps, vals)
            style = "--" if name.endswith("-c") or name.startswith("all-") else "-"
            ax.plot(xs, ys, style, label=name, linewidth=2.2 if name == "fp32" else 1.3,
                    color="black" if name == "fp32" else None)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        ax.set_ylabel("val loss - fp32 val loss (nats/byte)" if as_gap else "validation loss (nats/byte)")
    all_final = [v[-1] for _, v, _ in runs.values() if v]
    lo = min(all_final)
    axes[0].set_ylim(lo - 0.1, lo + 1.2)
    fig.suptitle("lowbit train: ~0.84M-parameter Llama on tinyshakespeare (bytes), 600 steps x 1024 tokens")
    fig.tight_layout()
    for ext in ("png", "svg"):
        fig.savefig(f"{prefix}.{ext}", dpi=110)

    rows = []
    for name, (steps, vals, result) in runs.items():
        final = vals[-1] if vals else float("nan")
        rows.append({"run": name, "plan": result["plan"] if result else "", "steps": steps[-1] if steps else 0,
                     "val_loss": final,
                     "gap_to_fp32": final - base_final if base_final is not None else float("nan"),
                     "tokens_per_s": result["tokens_per_s"] if result else float("nan"),
                     "finished": result is not None})
    rows.sort(key=lambda r: r["val_loss"])
    with open(f"{prefix}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        w.writeheader()
        w.writerows(rows)
    with open(f"{prefix}.md", "w") as f:
        f.write("| run | plan | steps | val loss | gap to fp32 | tok/s |\n|---|---|---:|---:|---:|---:|\n")
        for r in rows:
            f.write(f"| {r['run']} | {r['plan']} | {r['steps']} | {r['val_loss']:.4f} | "
                    f"{r['gap_to_fp32']:+.4f} | {r['tokens_per_s']:.0f} |\n")
    print(open(f"{prefix}.md").read())


if __name__ == "__main__":
    main()
