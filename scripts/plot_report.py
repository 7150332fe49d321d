#!/usr/bin/python3
"""Figures of `lowbit report` from its runs.csv (docs/conventions.md §29: Debian's matplotlib, PNG + SVG).

usage: plot_report.py runs.csv OUTDIR [--fit fit.json]

Writes into OUTDIR, each as .png and .svg:
  ppl_vs_bits   perplexity against bits per weight, one line per format family, a panel per model
  pareto_bits   the Pareto frontier of perplexity against bits per weight
  pareto_mac    the Pareto frontier of perplexity against MAC cost (law/cost.hpp's model)
  exmy_heatmap  E x M of minifloat weights -> perplexity (and of training runs -> loss)
  law_fit       (hook) measured against predicted loss, with residuals: drawn when runs carry a
                `law_prediction` metric or --fit names a JSON with "fitted"/"held_out"/"points"
                lists of {"loss" or "measured", "predicted"}
and figures.json: [{"png", "svg", "caption"}] for the figures drawn.
Every file is written under a temporary name and renamed into place, so a failure (a full disk)
leaves no truncated figure. Exit status 3: matplotlib is not installed (lowbit report then goes on
without figures); any other failure is 1, and lowbit report fails with it.
"""
import csv
import json
import math
import os
import sys

try:
    import matplotlib
except ImportError:
    sys.exit(3)

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

FAMILY_COLORS = {"int": "tab:blue", "fp": "tab:orange", "mx": "tab:green", "nvfp4": "tab:red",
                 "ggml": "tab:purple", "lut": "tab:brown", "pow": "tab:pink", "float": "black",
                 "other": "tab:gray"}
METHOD_MARKERS = {"rtn": "o", "gptq": "^", "awq": "D", "smoothquant": "v", "imatrix": "s",
                  "powerquant": "P", "llmfp4": "X", "none": "o"}
EVAL_KINDS = {"eval", "explore", "quantize"}


def num(s):
    try:
        v = float(s)
    except (TypeError, ValueError):
        return math.nan
    return v


def finite(*vs):
    return all(isinstance(v, float) and math.isfinite(v) for v in vs)


def label(r):
    s = r["format"] or "fp32"
    if r["acts"] or r["kv"]:
        s += "," + (r["acts"] or "-") + ("," + r["kv"] if r["kv"] else "")
    if r["method"] not in ("rtn", "none", ""):
        s += "@" + r["method"]
    return s


def write_atomically(path, write):
    """write(tmp) into path's temporary twin, then rename it onto path; the twin is removed on failure."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save(fig, outdir, name, caption, figures):
    write_atomically(os.path.join(outdir, name + ".png"), lambda p: fig.savefig(p, dpi=110, format="png"))
    write_atomically(os.path.join(outdir, name + ".svg"), lambda p: fig.savefig(p, format="svg"))
    plt.close(fig)
    figures.append({"png": name + ".png", "svg": name + ".svg", "caption": caption})


def panels(n):
    cols = min(n, 2)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(7.5 * cols, 5 * rows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat


def eval_runs_by_model(rows):
    """Runs that measured perplexity, grouped by model (and by their token count, as runs with
    another evaluation set are not comparable: the largest group of each model is kept)."""
    groups = {}
    for r in rows:
        if r["kind"] in EVAL_KINDS and finite(r["ppl"], r["bits_per_weight"]):
            groups.setdefault(r["model"], {}).setdefault(r["tokens"], []).append(r)
    out = {}
    for model, by_tokens in sorted(groups.items()):
        out[model] = max(by_tokens.values(), key=len)
    return out


def float_reference(runs):
    for r in runs:
        if r["family"] == "float" and r["bits"] == 32 and not r["acts"] and not r["kv"]:
            return r["ppl"]
    bases = [r["metric_base_ppl"] for r in runs if finite(r.get("metric_base_ppl", math.nan))]
    return bases[0] if bases else None


def y_cap(values, ref):
    """Top of the perplexity axis: runs far worse than the float model (3-bit integers, E3M0)
    would squash the interesting range, so they are drawn clipped at the top edge."""
    vals = sorted(v for v in values if finite(v))
    if not vals:
        return None
    cap = ref * 1.5 if ref else vals[int(0.9 * (len(vals) - 1))] * 1.2
    return cap if vals[-1] > cap else None


def clip_points(ax, runs, key, cap):
    """Runs above the cap: a hollow triangle on the top edge, labelled with their perplexity."""
    k = 0
    for r in runs:
        if r["ppl"] > cap and finite(r[key]):
            ax.plot(r[key], cap, "^", ms=7, mfc="none", color=FAMILY_COLORS.get(r["family"], "tab:gray"),
                    clip_on=False)
            ax.annotate(f"{label(r)} {r['ppl']:.3g}", (r[key], cap), textcoords="offset points",
                        xytext=(4, -10 - 8 * (k % 3)), fontsize=6, color="dimgray")
            k += 1


def ppl_vs_bits(by_model, outdir, figures):
    if not by_model:
        return
    fig, axes = panels(len(by_model))
    for ax, (model, runs) in zip(axes, by_model.items()):
        fams = sorted({r["family"] for r in runs})
        for fam in fams:
            color = FAMILY_COLORS.get(fam, "tab:gray")
            # The family's line: weight-only round-to-nearest, best perplexity at each bit width.
            best = {}
            for r in runs:
                if r["family"] == fam and r["method"] in ("rtn", "none") and not r["acts"] and not r["kv"]:
                    b = round(r["bits_per_weight"], 4)
                    if b not in best or r["ppl"] < best[b]:
                        best[b] = r["ppl"]
            if len(best) > 1:
                xs = sorted(best)
                ax.plot(xs, [best[x] for x in xs], "-", color=color, alpha=0.6, lw=1.2)
            for r in runs:
                if r["family"] != fam:
                    continue
                hollow = bool(r["acts"] or r["kv"])
                ax.plot(r["bits_per_weight"], r["ppl"], METHOD_MARKERS.get(r["method"], "o"), ms=6,
                        color=color, mfc="none" if hollow else color)
            ax.plot([], [], "-o", color=color, label=fam)
        ref = float_reference(runs)
        if ref:
            ax.axhline(ref, color="black", ls=":", lw=1)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        cap = y_cap([r["ppl"] for r in runs], ref)
        if cap:
            ax.set_ylim(top=cap)
            clip_points(ax, runs, "bits_per_weight", cap)
        ax.set_xlabel("bits per linear weight (element + scales)")
        ax.set_ylabel("perplexity")
        ax.set_title(f"{model} ({runs[0]['tokens']:.0f} tokens)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, title="family (o RTN, ^ GPTQ, D AWQ; hollow: +acts/KV)", title_fontsize=7)
    fig.tight_layout()
    save(fig, outdir, "ppl_vs_bits", "Perplexity against bits per weight per format family "
         "(lines: weight-only RTN; dotted: float model)", figures)


def pareto(points):
    """Indices of the points no other point beats in both x and y (lower is better for both)."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    front, best = [], math.inf
    for i in order:
        if points[i][1] < best:
            front.append(i)
            best = points[i][1]
    return front


def pareto_figure(by_model, key, xlabel, name, caption, outdir, figures, logx=True):
    usable = {m: [r for r in runs if finite(r[key])] for m, runs in by_model.items()}
    usable = {m: runs for m, runs in usable.items() if runs}
    if not usable:
        return
    fig, axes = panels(len(usable))
    for ax, (model, runs) in zip(axes, usable.items()):
        pts = [(r[key], r["ppl"]) for r in runs]
        for r in runs:
            ax.plot(r[key], r["ppl"], METHOD_MARKERS.get(r["method"], "o"), ms=5,
                    color=FAMILY_COLORS.get(r["family"], "tab:gray"), alpha=0.35)
        front = pareto(pts)
        fx = [pts[i][0] for i in front]
        fy = [pts[i][1] for i in front]
        ax.step(fx, fy, where="post", color="black", lw=1.5, label="Pareto frontier")
        for k, i in enumerate(front):
            r = runs[i]
            ax.plot(pts[i][0], pts[i][1], METHOD_MARKERS.get(r["method"], "o"), ms=7,
                    color=FAMILY_COLORS.get(r["family"], "tab:gray"))
            # Frontier points crowd near the float model: stagger their labels.
            ax.annotate(f"{label(r)} {r['ppl']:.3f}", pts[i], textcoords="offset points",
                        xytext=(6, 6 + 10 * (k % 4)), fontsize=7,
                        arrowprops={"arrowstyle": "-", "color": "lightgray", "lw": 0.5})
        if logx:
            ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        cap = y_cap([r["ppl"] for r in runs], float_reference(runs))
        if cap:
            ax.set_ylim(top=cap)
            clip_points(ax, runs, key, cap)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("perplexity")
        ax.set_title(model)
        ax.grid(True, which="both", alpha=0.3)
        for fam in sorted({r["family"] for r in runs}):
            ax.plot([], [], "o", color=FAMILY_COLORS.get(fam, "tab:gray"), label=fam)
        ax.legend(fontsize=8)
    fig.tight_layout()
    save(fig, outdir, name, caption, figures)


def heatmap_panel(ax, cells, title, cbar_label, fig):
    es = sorted({e for e, _ in cells})
    ms = sorted({m for _, m in cells})
    grid = [[cells.get((e, m), math.nan) for m in ms] for e in es]
    # Colour range: the best cell to 1.3x the median, so one bad layout (E3M0) does not flatten
    # the rest; worse cells saturate and their number says how bad.
    vals = sorted(v for row in grid for v in row if math.isfinite(v))
    vmax = min(vals[-1], vals[len(vals) // 2] * 1.3) if vals else None
    im = ax.imshow(grid, origin="lower", cmap="viridis_r", aspect="auto", vmin=vals[0] if vals else None, vmax=vmax)
    ax.set_xticks(range(len(ms)), [str(m) for m in ms])
    ax.set_yticks(range(len(es)), [str(e) for e in es])
    ax.set_xlabel("mantissa bits M")
    ax.set_ylabel("exponent bits E")
    mid = (vals[0] + vmax) / 2 if vals else 0
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            if math.isfinite(v):
                ax.text(j, i, f"{v:.3g}\nE{es[i]}M{ms[j]}", ha="center", va="center", fontsize=7,
                        color="white" if v > mid else "black")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, label=cbar_label + " (saturates at 1.3x the median)")


def exmy_heatmap(rows, by_model, outdir, figures):
    panels_todo = []
    # PTQ/eval runs: minifloat weights (not the 16/32-bit floats), weight-only RTN, best over
    # block sizes and scale formats, for the model with the most such runs.
    best_model, best_cells = None, {}
    for model, runs in by_model.items():
        cells = {}
        for r in runs:
            if (r["exp_bits"] > 0 and r["bits"] < 16 and r["method"] in ("rtn", "none")
                    and not r["acts"] and not r["kv"] and r["family"] in ("fp", "mx", "nvfp4")):
                k = (int(r["exp_bits"]), int(r["man_bits"]))
                cells[k] = min(cells.get(k, math.inf), r["ppl"])
        if len(cells) > len(best_cells):
            best_model, best_cells = model, cells
    if best_cells:
        panels_todo.append((best_cells, f"{best_model}: E x M of the weights -> perplexity\n"
                            "(weight-only RTN, best over block sizes)", "perplexity"))
    # Training runs: E x M of the training format -> validation loss (lowest over N, D).
    train = {}
    for r in rows:
        if r["kind"] == "train" and r["exp_bits"] > 0 and r["bits"] < 16 and finite(r["loss"]):
            k = (int(r["exp_bits"]), int(r["man_bits"]))
            train[k] = min(train.get(k, math.inf), r["loss"])
    if train:
        panels_todo.append((train, "training runs: E x M -> validation loss (lowest)", "loss"))
    if not panels_todo:
        return
    fig, axes = plt.subplots(1, len(panels_todo), figsize=(7 * len(panels_todo), 5), squeeze=False)
    for ax, (cells, title, cb) in zip(axes[0], panels_todo):
        heatmap_panel(ax, cells, title, cb, fig)
    fig.tight_layout()
    save(fig, outdir, "exmy_heatmap", "ExMy heatmap: exponent x mantissa bits -> perplexity (and loss)", figures)


def law_fit(rows, fit_path, outdir, figures):
    """HOOK for the scaling-law fits (lowbit fit): measured against predicted loss."""
    groups = []
    pred = [(r["loss"], r["metric_law_prediction"]) for r in rows
            if finite(r.get("metric_law_prediction", math.nan), r["loss"])]
    if pred:
        groups.append(("runs (law_prediction)", pred, "tab:blue"))
    title = "law fit"
    if fit_path:
        with open(fit_path) as f:
            fit = json.load(f)
        title = f"law fit: {fit.get('law', '?')}" + (f"\n{fit['formula']}" if "formula" in fit else "")
        for key, color in (("points", "tab:blue"), ("fitted", "tab:blue"), ("held_out", "tab:red")):
            pts = []
            for p in fit.get(key, []) or []:
                m = p.get("measured", p.get("loss"))
                if m is not None and p.get("predicted") is not None:
                    pts.append((float(m), float(p["predicted"])))
            if pts:
                groups.append((key.replace("_", "-"), pts, color))
    if not groups:
        return
    fig, (ax, rx) = plt.subplots(1, 2, figsize=(12, 5))
    allv = [v for _, pts, _ in groups for p in pts for v in p]
    lo, hi = min(allv), max(allv)
    ax.plot([lo, hi], [lo, hi], "k:", lw=1)
    for name, pts, color in groups:
        ax.plot([p[1] for p in pts], [p[0] for p in pts], "o", color=color, label=f"{name} ({len(pts)})")
        rx.plot([p[1] for p in pts], [p[0] - p[1] for p in pts], "o", color=color, label=name)
    rx.axhline(0, color="black", lw=1)
    ax.set_xlabel("predicted loss")
    ax.set_ylabel("measured loss")
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=8)
    rx.set_xlabel("predicted loss")
    rx.set_ylabel("measured - predicted")
    rx.set_title("residuals")
    for a in (ax, rx):
        a.grid(True, alpha=0.3)
    fig.tight_layout()
    save(fig, outdir, "law_fit", "Scaling-law fit: measured against predicted loss, and residuals", figures)


def main(argv):
    if len(argv) not in (3, 5) or (len(argv) == 5 and argv[3] != "--fit"):
        sys.exit(__doc__)
    csv_path, outdir = argv[1], argv[2]
    fit_path = argv[4] if len(argv) == 5 else None
    with open(csv_path, newline="") as f:
        raw = list(csv.DictReader(f))
    rows = []
    for r in raw:
        for k in list(r):
            if k in ("n_params", "tokens", "exp_bits", "man_bits", "bits", "block", "bits_per_weight",
                     "mac_cost", "loss", "ppl") or k.startswith("metric_"):
                r[k] = num(r[k])
        rows.append(r)
    figures = []
    by_model = eval_runs_by_model(rows)
    ppl_vs_bits(by_model, outdir, figures)
    pareto_figure(by_model, "bits_per_weight", "bits per linear weight (element + scales)", "pareto_bits",
                  "Pareto frontier: perplexity against bits per weight", outdir, figures)
    pareto_figure(by_model, "mac_cost", "MAC cost relative to INT8 x INT8 (our model, law/cost.hpp)", "pareto_mac",
                  "Pareto frontier: perplexity against MAC cost (weight x activation operands)", outdir, figures)
    exmy_heatmap(rows, by_model, outdir, figures)
    law_fit(rows, fit_path, outdir, figures)
    def write_list(path):
        with open(path, "w") as f:
            json.dump(figures, f, indent=1)

    write_atomically(os.path.join(outdir, "figures.json"), write_list)


if __name__ == "__main__":
    main(sys.argv)
