#!/usr/bin/env python3
"""Fake-quantizes one heavy-tailed tensor in a few formats with lowbit.torch and plots the
histograms of the quantization error (docs/python.md "lowbit.torch").

    PYTHONPATH=build/python /usr/bin/python3 examples/fake_quantize_histogram.py [--out DIR]

Writes DIR/fake_quantize_histogram.png (default ./examples-out) and prints each format's bits per
element and signal-to-quantization-noise ratio.
"""
import argparse
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import lowbit  # noqa: E402
import lowbit.torch as lt  # noqa: E402

FORMATS = ["int4/g32", "mxfp4", "nvfp4", "e4m3/g32", "int8/c"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="examples-out", help="output directory (default ./examples-out)")
    ap.add_argument("--rows", type=int, default=1024)
    ap.add_argument("--cols", type=int, default=1024)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)

    # A weight-like tensor: Student-t rows (heavy tails, as LLM weights and activations have).
    torch.manual_seed(0)
    t = torch.distributions.StudentT(torch.tensor(4.0)).sample((args.rows, args.cols)) * 0.02

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    axes[0].hist(t.flatten().numpy(), bins=200, color="0.5", log=True)
    axes[0].set_title(f"input: {args.rows} x {args.cols}, Student-t(4) x 0.02")
    axes[0].set_xlabel("value")
    signal = float((t.double() ** 2).mean())
    errors = {spec: (lt.fake_quantize(t, spec) - t).flatten().numpy() for spec in FORMATS}
    span = max(float(np.abs(e).max()) for e in errors.values())
    print(f"{'format':<12} {'bits/elem':>9} {'SQNR dB':>8}")
    for spec, err in errors.items():
        sqnr = 10 * np.log10(signal / float((err.astype(np.float64) ** 2).mean()))
        bits = lowbit.Format(spec).bits_per_element
        print(f"{spec:<12} {bits:>9.3f} {sqnr:>8.2f}")
        axes[1].hist(err, bins=400, range=(-span, span), histtype="step", log=True,
                     label=f"{spec} ({bits:.2f} b, {sqnr:.1f} dB)")
    axes[1].set_title("error Q(x) - x")
    axes[1].set_xlabel("error")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    path = os.path.join(args.out, "fake_quantize_histogram.png")
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
