#!/usr/bin/python3
"""Perplexity against bits per weight from `lowbit explore`'s CSV (docs/conventions.md §29).

usage: plot_explore.py explore.csv out.png   (also writes out.svg)
Exit status 3: matplotlib is not installed (lowbit explore then goes on without a plot); any
other failure (a full disk, a bad CSV) is 1, and lowbit explore fails with it.
"""
import csv
import sys

try:
    import matplotlib
except ImportError:
    sys.exit(3)

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(csv_path, png_path):
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, r in enumerate(rows):
        bits, ppl, err = float(r["bits_per_weight"]), float(r["ppl"]), float(r["ppl_stderr"])
        weight_only = not r["acts"] and not r["kv"]
        marker = {"rtn": "o", "gptq": "^", "awq": "D", "smoothquant": "v"}.get(r.get("method", "rtn"), "o")
        ax.errorbar(bits, ppl, yerr=err, fmt=marker if weight_only else "s",
                    color="tab:blue" if weight_only else "tab:red", capsize=3)
        ax.annotate(r["row"], (bits, ppl), textcoords="offset points", xytext=(6, 10 * (i % 3) - 10), fontsize=8)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("bits per linear weight (element + scales)")
    ax.set_ylabel("perplexity")
    ax.set_title("weights only (blue: o RTN, ^ GPTQ, D AWQ), with activations / KV (red)")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    fig.savefig(png_path.rsplit(".", 1)[0] + ".svg")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
