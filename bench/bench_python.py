#!/usr/bin/env python3
"""What the Python front ends cost (docs/python.md): medians measured in one run.

    PYTHONPATH=build/python /usr/bin/python3 bench/bench_python.py [--json OUT.json]

1. lowbit.fake_quantize on a 64 MiB float32 array from Python against the C++ kernel on the same
   buffer (lowbit._core.time_fake_quantize, timed in C++) and memcpy; GB/s count bytes read plus
   bytes written, as bench/bench_quantize.cpp does.
2. lowbit.torch.fake_quantize against the same quantization written in plain PyTorch ops on the
   same tensor: MXFP4 as microxcaling (mx/mx_ops.py) does it, INT4/g32 as absmax / 7, round,
   clamp; the speed ratio and the number of elements that disagree with lowbit.
3. Training: a small causal transformer with the six GEMM operands of every linear in
   E4M3 / E5M2 groups of 32 (lowbit.torch.quantize_model) against float32, tokens/s, steps
   alternated.
"""
import argparse
import json
import math
import statistics
import time

import numpy as np
import torch
from torch import nn

import lowbit
import lowbit.torch as lt

KERNEL_SPECS = ["mxfp4", "int4/g32", "e4m3fn/c", "nvfp4"]
TRAIN_PLAN = "x=e4m3/g32;w=e4m3/g32;dy=e5m2/g32;w_bwd=e4m3/g32;dy_w=e5m2/g32;x_bwd=e4m3/g32"


def median_seconds(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# ---- 2. the same quantizations in plain PyTorch ----------------------------------------------------------


def mxfp4_microxcaling(x: torch.Tensor, ties_to_even: bool = False) -> torch.Tensor:
    """MXFP4 of x [..., K*32] along the last axis as microxcaling's _quantize_mx does it
    (scale_bits 8, elem E2M1 with ebits 2, mbits 3 counting sign and implicit bit, emax 2,
    max_norm 6, round "nearest" = half away from zero, block size 32). ties_to_even: round
    half to even instead (lowbit's rule, docs/conventions.md §30)."""
    g = x.reshape(-1, 32)
    amax = g.abs().amax(dim=1, keepdim=True)
    # _shared_exponents: floor(log2(amax)), an all-zero block as the smallest normal's exponent.
    shared = torch.floor(torch.log2(amax + torch.finfo(torch.float32).tiny * (amax == 0)))
    shared = shared - 2  # - emax of E2M1
    shared = torch.where(shared > 127, torch.full_like(shared, float("nan")), shared.clamp(min=-127))
    a = g / torch.exp2(shared)
    # _quantize_elemwise_core: private exponent clamped at min_exp = 0, 1 fraction bit.
    private = torch.floor(torch.log2(a.abs() + (a == 0))).clamp(min=0)
    scaled = a / torch.exp2(private) * 2
    scaled = torch.round(scaled) if ties_to_even else torch.sign(scaled) * torch.floor(scaled.abs() + 0.5)
    a = (scaled / 2 * torch.exp2(private)).clamp(-6, 6)
    return (a * torch.exp2(shared)).reshape(x.shape)


def int4_g32_absmax(x: torch.Tensor) -> torch.Tensor:
    """Symmetric INT4 in groups of 32: s = amax / 7, round(x / s) to even, clamp to [-7, 7], times s
    (docs/conventions.md §5-6: a true division, levels -7..7)."""
    g = x.reshape(-1, 32)
    s = g.abs().amax(dim=1, keepdim=True) / 7
    s = torch.where(s == 0, torch.ones_like(s), s)
    return (torch.round(g / s).clamp(-7, 7) * s).reshape(x.shape)


def disagreements(a: torch.Tensor, b: torch.Tensor) -> int:
    same = (a == b) | (torch.isnan(a) & torch.isnan(b))
    return int((~same).sum())


# ---- 3. a small causal transformer ---------------------------------------------------------------------------


class Block(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.proj = nn.Linear(d, d, bias=False)
        self.up = nn.Linear(d, 4 * d, bias=False)
        self.down = nn.Linear(4 * d, d, bias=False)

    def forward(self, x):  # x [batch, seq, d]
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(d // self.heads)
        att = att.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)
        x = x + self.proj((att @ v).transpose(1, 2).reshape(b, t, d))
        return x + self.down(nn.functional.gelu(self.up(self.norm2(x))))


class TinyTransformer(nn.Module):
    def __init__(self, vocab=256, d=128, layers=2, heads=4, ctx=128):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.zeros(ctx, d))
        self.blocks = nn.Sequential(*[Block(d, heads) for _ in range(layers)])
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)

    def forward(self, tokens):
        return self.head(self.norm(self.blocks(self.embed(tokens) + self.pos[: tokens.shape[1]])))


def train_steps(args):
    torch.manual_seed(0)
    base = TinyTransformer(d=args.dim, layers=args.layers, ctx=args.ctx)
    models = {"float32": base}
    quantized = TinyTransformer(d=args.dim, layers=args.layers, ctx=args.ctx)
    quantized.load_state_dict(base.state_dict())
    models[TRAIN_PLAN] = lt.quantize_model(quantized, TRAIN_PLAN)
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-3) for k, m in models.items()}
    g = torch.Generator().manual_seed(1)
    times = {k: [] for k in models}
    losses = {k: [] for k in models}
    for i in range(args.steps + 1):
        tokens = torch.randint(0, 256, (args.batch, args.ctx + 1), generator=g)
        for k, m in models.items():  # alternated, so that both see the same machine load
            t0 = time.perf_counter()
            logits = m(tokens[:, :-1])
            loss = nn.functional.cross_entropy(logits.reshape(-1, 256), tokens[:, 1:].reshape(-1))
            opts[k].zero_grad()
            loss.backward()
            opts[k].step()
            if i > 0:  # the first step warms up allocators and caches
                times[k].append(time.perf_counter() - t0)
                losses[k].append(loss.item())
    tokens_per_step = args.batch * args.ctx
    return {k: {"tokens_per_s": tokens_per_step / statistics.median(v), "final_loss": losses[k][-1]}
            for k, v in times.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=64, help="size of the array in MiB (default 64)")
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--torch-repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20, help="training steps per model")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--json", help="write the results as JSON here")
    args = ap.parse_args()
    result = {"threads": {"lowbit": lowbit.threads(), "torch": torch.get_num_threads()}}
    print(f"threads: lowbit {lowbit.threads()}, torch {torch.get_num_threads()}")

    cols = 4096
    rows = args.mib * 2**20 // 4 // cols
    x = np.random.default_rng(0).standard_normal((rows, cols), dtype=np.float32)
    moved = 2 * x.nbytes  # read + write
    out = np.empty_like(x)

    print(f"\n1. fake_quantize of a {args.mib} MiB float32 array [{rows}, {cols}] (GB/s of bytes read + written)")
    print(f"{'format':<10} {'python GB/s':>11} {'C++ GB/s':>9} {'memcpy GB/s':>11} {'C++/python time':>15}")
    result["fake_quantize"] = {}
    for spec in KERNEL_SPECS:
        # Interleaved: one Python call, then one C++-timed kernel call and memcpy, repeated, so
        # that the machine's drift (it is shared) falls on both alike; medians of each.
        py_t, k_t, c_t = [], [], []
        lowbit.fake_quantize(x, spec, out=out)  # warm-up: out's pages, the format's tables
        for _ in range(args.repeats):
            py_t.append(median_seconds(lambda: lowbit.fake_quantize(x, spec, out=out), 1))
            cpp = lowbit._core.time_fake_quantize(x, spec, 1)
            k_t.append(cpp["kernel_seconds"])
            c_t.append(cpp["memcpy_seconds"])
        py, k, c = statistics.median(py_t), statistics.median(k_t), statistics.median(c_t)
        print(f"{spec:<10} {moved / py / 1e9:>11.2f} {moved / k / 1e9:>9.2f} {moved / c / 1e9:>11.2f} {k / py:>15.3f}")
        result["fake_quantize"][spec] = {"python_s": py, "kernel_s": k, "memcpy_s": c, "ratio": k / py}

    print("\n2. lowbit.torch.fake_quantize against plain PyTorch ops on the same tensor")
    print(f"{'format':<10} {'lowbit s':>9} {'torch ops s':>11} {'speedup':>8} {'disagree':>9}  torch ops")
    t = torch.from_numpy(x)
    result["torch_ops"] = {}
    for spec, fn, what in [("mxfp4", mxfp4_microxcaling, "microxcaling, round half away from zero"),
                           ("int4/g32", int4_g32_absmax, "absmax / 7, round half to even, clamp")]:
        ours = lt.fake_quantize(t, spec)
        theirs = fn(t)
        wrong = disagreements(ours, theirs)
        a = median_seconds(lambda: lt.fake_quantize(t, spec), args.torch_repeats)
        b = median_seconds(lambda: fn(t), args.torch_repeats)
        print(f"{spec:<10} {a:>9.3f} {b:>11.3f} {b / a:>7.1f}x {wrong:>9}  {what}")
        result["torch_ops"][spec] = {"lowbit_s": a, "torch_s": b, "speedup": b / a, "disagreements": wrong,
                                     "elements": t.numel()}
        result["torch_ops"][spec]["disagreements_ties_to_even"] = None
        if spec == "mxfp4":  # are the disagreements the ties? then the even variant agrees
            wrong_even = disagreements(ours, mxfp4_microxcaling(t, ties_to_even=True))
            result["torch_ops"][spec]["disagreements_ties_to_even"] = wrong_even
            print(f"{'':<10} {'':>9} {'':>11} {'':>8} {wrong_even:>9}  microxcaling with ties to even")
        del ours, theirs

    print(f"\n3. training: transformer dim {args.dim}, {args.layers} layers, ctx {args.ctx}, batch {args.batch}, "
          f"{args.steps} steps each, alternated")
    train = train_steps(args)
    base = train["float32"]["tokens_per_s"]
    for plan, r in train.items():
        print(f"{plan:<80} {r['tokens_per_s']:>8.0f} tokens/s  {r['tokens_per_s'] / base:.3f}x  "
              f"(last loss {r['final_loss']:.3f})")
    result["training"] = train
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
