#!/usr/bin/env python3
"""Figures and tables of the trained family (docs/studies/*.md) from its run directories
(studies/family.json's "dir": each run's log.jsonl and result.json) and, for the PTQ studies, a
study's results store.

    /usr/bin/python3 scripts/plot_family.py curves RUNS_DIR OUT.png RUN [RUN...]   training curves
    /usr/bin/python3 scripts/plot_family.py table RUNS_DIR [PATTERN]               final losses (markdown)
    /usr/bin/python3 scripts/plot_family.py critical RUNS_DIR OUT.png PLAN [PLAN...]  val loss vs D per N
    /usr/bin/python3 scripts/plot_family.py ptq STUDY_DB OUT.png                   PTQ dNLL vs N per format
    /usr/bin/python3 scripts/plot_family.py ptqtable STUDY_DB METRIC [FORMAT@METHOD...]  a metric per run and format (markdown)

Curves are the training loss per step smoothed by an exponential moving average (span 20 steps)
with the validation points on top."""
import fnmatch
import json
import os
import sqlite3
import sys


def load(runs_dir, name):
    d = os.path.join(runs_dir, name)
    with open(os.path.join(d, "log.jsonl")) as f:
        log = [json.loads(line) for line in f if line.strip()]
    res = None
    if os.path.exists(os.path.join(d, "result.json")):
        with open(os.path.join(d, "result.json")) as f:
            res = json.load(f)
    return log, res


def parse_name(name):
    # MEMBER-sSTEPS-PLAN-seedSEED, MEMBER = dDIM-lLAYERS
    parts = name.split("-")
    member = "-".join(parts[:2])
    steps = int(parts[2][1:])
    seed = int(parts[-1][4:])
    plan = "-".join(parts[3:-1])
    return member, steps, plan, seed


def curves(runs_dir, out, names):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    for name in names:
        log, _ = load(runs_dir, name)
        ema, xs, ys = None, [], []
        for p in log:
            ema = p["train_loss"] if ema is None else ema + (p["train_loss"] - ema) * 2 / 21
            xs.append(p["step"]), ys.append(ema)
        line, = ax.plot(xs, ys, lw=1.2, label=name)
        vx = [p["step"] for p in log if p.get("val_loss", -1) >= 0]
        vy = [p["val_loss"] for p in log if p.get("val_loss", -1) >= 0]
        ax.plot(vx, vy, "o", color=line.get_color(), ms=4)
    ax.set_xlabel("step (2,048 tokens each)")
    ax.set_ylabel("loss (nats/token); dots: validation")
    ax.set_ylim(top=min(ax.get_ylim()[1], 4.5))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out)


def table(runs_dir, pattern="*"):
    print("| run | N (params) | D (tokens) | val loss | train loss | wall s | tok/s |")
    print("|---|---|---|---|---|---|---|")
    for name in sorted(os.listdir(runs_dir), key=lambda n: (n.split("-")[0], n)):
        if not fnmatch.fnmatchcase(name, pattern):
            continue
        _, res = load(runs_dir, name)
        if res is None:
            continue
        print(f"| {name} | {res['params']:,} | {res['tokens']:,} | {res['val_loss']:.4f} | {res['train_loss']:.4f} | "
              f"{res['seconds']:.0f} | {res['tokens_per_s']:.0f} |")


def critical(runs_dir, out, plans):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = {}
    for name in os.listdir(runs_dir):
        if "." in name:
            continue
        try:
            member, steps, plan, seed = parse_name(name)
        except (ValueError, IndexError):
            continue
        if plan not in plans or seed != 1:
            continue
        _, res = load(runs_dir, name)
        if res is None:
            continue
        rows.setdefault((member, plan), []).append((res["tokens"], res["val_loss"]))
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    styles = ["-", "--", ":", "-."]
    members = sorted({m for m, _ in rows}, key=lambda m: int(m.split("-")[0][1:]))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for (member, plan), pts in sorted(rows.items()):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], styles[plans.index(plan) % 4], marker="o", ms=3,
                color=colors[members.index(member) % len(colors)], label=f"{member} {plan}")
    ax.set_xscale("log")
    ax.set_xlabel("D (training tokens)")
    ax.set_ylabel("validation loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out)


def ptq(db, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    con = sqlite3.connect(db)
    q = """select r.model, r.format, r.method, r.n_params, m.value from runs r join metrics m on m.run_id = r.id
           where r.kind = 'explore' and m.name = 'dnll'"""
    rows = {}
    for model, fmt, method, n, dnll in con.execute(q):
        if fmt not in ("int4/g32", "int3/g32"):
            continue
        member, steps, plan, seed = parse_name(model.split(":", 1)[1])
        rows.setdefault((fmt, member, method), []).append((steps * 2048, dnll))
    fig, axes = plt.subplots(1, 2, figsize=(8.0, 3.6), dpi=100, sharey=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    members = sorted({k[1] for k in rows}, key=lambda m: int(m.split("-")[0][1:]))
    for ax, fmt in zip(axes, ("int4/g32", "int3/g32")):
        for (f, member, method), pts in sorted(rows.items()):
            if f != fmt:
                continue
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "-o" if method == "rtn" else "--s", ms=3,
                    color=colors[members.index(member)], label=f"{member} {method}")
        ax.set_xscale("log")
        ax.set_title(fmt, fontsize=9)
        ax.set_xlabel("D (training tokens)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("NLL increase after PTQ")
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out)


def ptqtable(db, metric, cols):
    con = sqlite3.connect(db)
    q = """select r.model, r.format, r.method, r.n_params, m.value from runs r join metrics m on m.run_id = r.id
           where r.kind = 'explore' and m.name = ?"""
    cells, models = {}, {}
    for model, fmt, method, n, v in con.execute(q, (metric,)):
        key = f"{fmt or 'fp32'}@{method}"
        cells[(model, key)] = v
        models[model] = n
    if not cols:
        cols = sorted({k for _, k in cells})
    print("| run | N | " + " | ".join(cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    def order(m):
        name = m.split(":", 1)[1]
        member, steps, plan, seed = parse_name(name.split(".")[0])
        return (models[m], steps, name)
    for model in sorted(models, key=order):
        vals = [cells.get((model, c)) for c in cols]
        print(f"| {model.split(':', 1)[1]} | {int(models[model]):,} | " +
              " | ".join("" if v is None else f"{v:.4f}" for v in vals) + " |")


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "curves":
        curves(sys.argv[2], sys.argv[3], sys.argv[4:])
    elif cmd == "table":
        table(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "*")
    elif cmd == "critical":
        critical(sys.argv[2], sys.argv[3], sys.argv[4:])
    elif cmd == "ptq":
        ptq(sys.argv[2], sys.argv[3])
    elif cmd == "ptqtable":
        ptqtable(sys.argv[2], sys.argv[3], sys.argv[4:])
    else:
        sys.exit(__doc__)
