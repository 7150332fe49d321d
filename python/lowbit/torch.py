"""lowbit.torch: PyTorch autograd functions and layers over lowbit's kernels (docs/python.md).

- :func:`fake_quantize`: Q(t) in any lowbit format as an autograd function with a straight-through
  gradient (identity, or clipped: zero outside the representable range of the element's group).
- :class:`QuantLinear` and :func:`quantize_model`: linear layers whose six GEMM operands are
  quantized by a training plan, with the grammar, grouping and stochastic-rounding streams of
  ``lowbit train --plan`` (docs/training.md).
- :func:`quantize_weights`: weight-only post-training quantization of a model's ``nn.Linear``
  layers by RTN, GPTQ or AWQ through the C++ per-layer algorithms (docs/ptq.md §4).

Tensors cross to the kernels as zero-copy numpy views when they are float32 on the CPU; anything
else (bfloat16, float16, another device) is converted to a float32 CPU tensor first and the result
converted back, so a bfloat16 tensor is quantized in float32 and the result rounded to bfloat16.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Dict, Iterable, List, Mapping, Optional, Union

import numpy as np
import torch
from torch import nn

from . import _core
from ._core import Format, OperandQuantizer

__all__ = [
    "OPERANDS", "LayerReport", "QuantLinear", "TrainingQuantizer", "fake_quantize", "quantize_model",
    "quantize_weights", "set_step",
]

# The six GEMM operands of a linear layer (docs/training.md; Sun et al.'s P1..P6):
#   forward  Y  = Q1(X) Q2(W)^T        x, w
#   dX       dX = Q3(dY) Q4(W)         dy, w_bwd
#   dW       dW = Q5(dY)^T Q6(X)       dy_w, x_bwd
OPERANDS = ("x", "w", "dy", "w_bwd", "dy_w", "x_bwd")

Spec = Union[str, Format]


def _numpy_view(t: torch.Tensor) -> np.ndarray:
    """t as a float32 numpy array: a view of t's memory (any strides) when t is a float32 CPU
    tensor, else a converted copy."""
    t = t.detach()
    if t.device.type != "cpu" or t.dtype != torch.float32:
        t = t.to(device="cpu", dtype=torch.float32)
    return t.numpy()


def _numpy_matrix(t: torch.Tensor, cols: int) -> np.ndarray:
    """t [..., cols] as a C-contiguous float32 numpy matrix [rows, cols] (a view when it can be)."""
    return _numpy_view(t.detach().reshape(-1, cols).contiguous())


def _like(a: np.ndarray, t: torch.Tensor) -> torch.Tensor:
    """The float32 array a as a tensor of t's dtype and device (zero-copy for float32 CPU)."""
    r = torch.from_numpy(a)
    if t.device.type != "cpu" or t.dtype != torch.float32:
        r = r.to(device=t.device, dtype=t.dtype)
    return r


def _check_floating(t: torch.Tensor, what: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(t).__name__} (numpy arrays: lowbit.fake_quantize)")
    if not t.is_floating_point():
        raise TypeError(f"{what} must be a floating-point tensor, got {t.dtype}")


# ---- fake quantization with a straight-through gradient -------------------------------------------


class _FakeQuantize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t, spec, axis, tensor_id, clipped):
        x = _numpy_view(t)
        y = _core.fake_quantize(x, spec, axis=axis, tensor_id=tensor_id)
        ctx.clipped = clipped
        if clipped:
            # The quantizer clips what lies outside its group's [lo, hi]; NaN compares False and
            # gets no gradient either.
            lo, hi = _core.clip_bounds(x, spec, axis=axis, tensor_id=tensor_id)
            inside = torch.from_numpy((x >= lo) & (x <= hi)).to(t.device)
            ctx.save_for_backward(inside)
        return _like(y, t)

    @staticmethod
    def backward(ctx, grad):
        if ctx.clipped:
            (inside,) = ctx.saved_tensors
            grad = torch.where(inside, grad, torch.zeros((), dtype=grad.dtype, device=grad.device))
        return grad, None, None, None, None


def fake_quantize(t: torch.Tensor, spec: Spec, *, axis: int = -1, tensor_id: int = 0,
                  ste: str = "identity") -> torch.Tensor:
    """dequantize(quantize(t)) in format ``spec``, groups along ``axis``, as an autograd function.

    The gradient is the straight-through estimator's (Bengio et al. 2013): ``ste="identity"`` passes
    the upstream gradient unchanged; ``ste="clipped"`` zeroes it where t lies outside the range its
    group can represent (:func:`lowbit.clip_bounds`), as the clipped STE of PACT / LSQ-style QAT.
    The forward equals ``lowbit.fake_quantize(t.numpy(), spec, axis=axis, tensor_id=tensor_id)`` bit
    for bit; bfloat16 (and other floating) tensors are quantized in float32 and the result rounded
    to their dtype. Any shape and strides; other devices round-trip through the CPU.
    """
    _check_floating(t, "t")
    if ste not in ("identity", "clipped"):
        raise ValueError(f"ste must be 'identity' or 'clipped', got {ste!r}")
    return _FakeQuantize.apply(t, spec, axis, tensor_id, ste == "clipped")


# ---- training: six quantized GEMM operands per linear layer ---------------------------------------


class TrainingQuantizer:
    """One training plan's quantizer, shared by the :class:`QuantLinear` layers of a model.

    Wraps :class:`lowbit.OperandQuantizer` (the C++ trainer's own), so the formats, the grouping of
    each operand along its GEMM's reduction axis and the stochastic-rounding streams, keyed by
    (seed, step, linear, operand), are those of ``lowbit train --plan PLAN --seed SEED``.

    ``step`` is the step the next training-mode forward of the hooked module uses; each such
    forward takes it as ``current_step`` and advances it by one (the trainer's steps count from 0).
    Set ``step`` to resume. Eval-mode forwards use ``current_step`` and freeze stateful quantizers
    (Autoflex): they quantize with the current state without updating it.
    """

    def __init__(self, plan: str, seed: int = 0):
        self.quantizer = OperandQuantizer(plan, seed)
        self.plan = plan
        self.seed = seed
        self.step = 0
        self.current_step = 0
        self._on = {op: self.quantizer.quantizes(op) for op in OPERANDS}
        self._frozen = False

    def quantizes(self, operand: str) -> bool:
        return self._on[operand]

    @property
    def operands(self) -> Dict[str, Optional[str]]:
        """operand -> canonical format (None: float32)."""
        return self.quantizer.operands

    def set_frozen(self, frozen: bool) -> None:
        if frozen != self._frozen:
            self.quantizer.set_frozen(frozen)
            self._frozen = frozen

    def quantize(self, operand: str, linear: int, step: int, matrix: torch.Tensor) -> torch.Tensor:
        """The operand as its GEMM reads it, in the tensor's own layout (X [n, in], W [out, in],
        dY [n, out]); float32 CPU in, float32 CPU out; the tensor itself when not quantized."""
        if not self._on[operand]:
            return matrix
        return torch.from_numpy(self.quantizer.quantize(operand, linear, step, _numpy_view(matrix)))

    def _pre_forward(self, module: nn.Module, inputs) -> None:
        self.set_frozen(not module.training)
        if module.training:
            self.current_step = self.step
            self.step += 1

    # copy.deepcopy and pickle (a model holding QuantLinear layers): the plan, seed and steps; a
    # stateful quantizer's state (Autoflex) has no way back into C++ from here, so it is refused.
    def __getstate__(self):
        if self.quantizer.state() != "null":
            raise TypeError(f"a TrainingQuantizer of the stateful plan {self.plan!r} cannot be copied or pickled")
        return {"plan": self.plan, "seed": self.seed, "step": self.step, "current_step": self.current_step,
                "frozen": self._frozen}

    def __setstate__(self, state):
        self.__init__(state["plan"], state["seed"])
        self.step, self.current_step = state["step"], state["current_step"]
        self.set_frozen(state["frozen"])

    def __repr__(self) -> str:
        return f"lowbit.torch.TrainingQuantizer({self.plan!r}, seed={self.seed}, step={self.step})"


def _float32_cpu(t: torch.Tensor) -> torch.Tensor:
    if t.device.type != "cpu" or t.dtype != torch.float32:
        t = t.to(device="cpu", dtype=torch.float32)
    return t


class _QuantLinearFunction(torch.autograd.Function):
    """Y = Q1(X) Q2(W)^T + b; dX = Q3(dY) Q4(W); dW = Q5(dY)^T Q6(X); db = sum dY (float32)."""

    @staticmethod
    def forward(ctx, x, weight, bias, tq: TrainingQuantizer, linear: int, step: int, record):
        out_features, in_features = weight.shape
        x2 = _float32_cpu(x.detach().reshape(-1, in_features)).contiguous()  # [n, in]
        w = _float32_cpu(weight.detach()).contiguous()                        # [out, in]
        xq = tq.quantize("x", linear, step, x2)
        wq = tq.quantize("w", linear, step, w)
        y = xq @ wq.t()
        if bias is not None:
            y += _float32_cpu(bias.detach())
        if record is not None:
            record["x"], record["w"] = xq.numpy().copy(), wq.numpy().copy()
            record["y"] = y.numpy().copy()
        ctx.save_for_backward(x2, w)
        ctx.tq, ctx.linear, ctx.step, ctx.record = tq, linear, step, record
        ctx.x_meta = (x.shape, x.dtype, x.device)
        ctx.w_meta = (weight.dtype, weight.device)
        ctx.has_bias = bias is not None
        ctx.b_meta = (bias.dtype, bias.device) if bias is not None else None
        return y.reshape(*x.shape[:-1], out_features).to(device=x.device, dtype=x.dtype)

    @staticmethod
    def backward(ctx, grad_y):
        x2, w = ctx.saved_tensors
        tq, linear, step, record = ctx.tq, ctx.linear, ctx.step, ctx.record
        out_features, in_features = w.shape
        dy = _float32_cpu(grad_y.reshape(-1, out_features)).contiguous()  # [n, out]
        need_x, need_w, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        dx = dw = db = None
        # The trainer's order (src/engine/decoder.hpp quantized_gemms): dX's operands, then dW's;
        # it matters to stateful quantizers only.
        if need_x or record is not None:
            dyq = tq.quantize("dy", linear, step, dy)
            wq4 = tq.quantize("w_bwd", linear, step, w)
            if record is not None:
                record["dy"], record["w_bwd"] = dyq.numpy().copy(), wq4.numpy().copy()
            if need_x:
                shape, dtype, device = ctx.x_meta
                dx = (dyq @ wq4).reshape(shape).to(device=device, dtype=dtype)
        if need_w or record is not None:
            xq6 = tq.quantize("x_bwd", linear, step, x2)
            dyq5 = tq.quantize("dy_w", linear, step, dy)
            if record is not None:
                record["x_bwd"], record["dy_w"] = xq6.numpy().copy(), dyq5.numpy().copy()
            if need_w:
                dtype, device = ctx.w_meta
                dw = (dyq5.t() @ xq6).to(device=device, dtype=dtype)
        if ctx.has_bias and need_b:
            dtype, device = ctx.b_meta
            db = dy.sum(0).to(device=device, dtype=dtype)
        return dx, dw, db, None, None, None, None


class QuantLinear(nn.Linear):
    """``nn.Linear`` whose six GEMM operands are quantized by a training plan (``lowbit train
    --plan`` grammar: ``mxfp4``, ``nvfp4``, ``fp8``, ``sun2025:e4m3/g32``, ``qat:FMT``,
    ``x=..;w=..;dy=..;w_bwd=..;dy_w=..;x_bwd=..[;axis=din]``, ...).

    Forward Y = Q1(X) Q2(W)^T + b and backward dX = Q3(dY) Q4(W), dW = Q5(dY)^T Q6(X), db = sum dY,
    each operand grouped along its own GEMM's reduction axis (or its feature axis with axis=din).
    Inputs [..., in] are flattened to X [n, in]. The GEMMs run in float32 whatever the parameters'
    dtype (bfloat16 models: the results are rounded to bfloat16). ``linear`` is the layer's index
    in the stochastic-rounding key (seed, step, linear, operand).

    Either pass ``plan`` (the layer then owns a :class:`TrainingQuantizer` whose step advances at
    each of its own training-mode forwards) or ``quantizer``, shared with other layers and stepped
    by the module it was hooked to (:func:`quantize_model`).

    ``record_operands = True`` keeps the six quantized operands of the last forward/backward (as
    the GEMMs read them, numpy float32 in the tensors' layouts) in ``recorded``.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, plan: Optional[str] = None,
                 quantizer: Optional[TrainingQuantizer] = None, linear: int = 0, seed: int = 0,
                 device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        if (plan is None) == (quantizer is None):
            raise ValueError("QuantLinear takes a plan or a shared TrainingQuantizer (one of them)")
        if quantizer is None:
            quantizer = TrainingQuantizer(plan, seed)
            self.register_forward_pre_hook(quantizer._pre_forward)
        self.quantizer = quantizer
        self.linear = int(linear)
        self.record_operands = False
        self.recorded: Dict[str, np.ndarray] = {}

    @classmethod
    def from_linear(cls, layer: nn.Linear, quantizer: TrainingQuantizer, linear: int) -> "QuantLinear":
        """A QuantLinear over ``layer``'s own parameters (the same Parameter objects, so an
        optimizer built before the swap still updates them)."""
        q = cls(layer.in_features, layer.out_features, layer.bias is not None, quantizer=quantizer, linear=linear,
                device="meta")
        q.weight = layer.weight
        q.bias = layer.bias
        q.train(layer.training)
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        record = None
        if self.record_operands:
            self.recorded = {}
            record = self.recorded
        return _QuantLinearFunction.apply(x, self.weight, self.bias, self.quantizer, self.linear,
                                          self.quantizer.current_step, record)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, plan={self.quantizer.plan!r}, linear={self.linear}"


def _swappable_linears(module: nn.Module):
    """(parent, attribute, qualified name, layer) for every nn.Linear under module, in registration
    order, each layer once. nn.MultiheadAttention's out_proj is left out: attention reads its weight
    directly, never calling its forward."""
    seen = set()
    found = []

    def walk(parent: nn.Module, prefix: str):
        for attr, child in parent._modules.items():
            if child is None:
                continue
            name = f"{prefix}{attr}"
            if isinstance(child, nn.Linear) and not isinstance(child, QuantLinear):
                if id(child) not in seen and not isinstance(parent, nn.MultiheadAttention):
                    seen.add(id(child))
                    found.append((parent, attr, name, child))
                continue
            walk(child, name + ".")

    walk(module, "")
    return found


def quantize_model(module: nn.Module, plan: str, *, seed: int = 0,
                   linears: Optional[Mapping[str, int]] = None) -> nn.Module:
    """Swaps the ``nn.Linear`` layers of ``module`` for :class:`QuantLinear` layers sharing one
    :class:`TrainingQuantizer` of ``plan`` (``lowbit train --plan`` grammar) and ``seed``.

    Linear indices (the ``linear`` of the stochastic-rounding key) are 0, 1, 2, ... in the order
    the layers were registered, unless ``linears`` maps qualified module names (as
    ``module.named_modules()`` gives them) to indices; then only those layers are swapped. A
    forward pre-hook on ``module`` advances the step once per training-mode forward and freezes
    stateful quantizers in eval mode. The parameters stay the same objects. Returns ``module``
    (an ``nn.Linear`` passed as the module itself is returned as a new QuantLinear), with the
    quantizer as ``module.lowbit_quantizer``.
    """
    tq = TrainingQuantizer(plan, seed)
    if isinstance(module, nn.Linear) and not isinstance(module, QuantLinear):
        index = 0
        if linears is not None:
            if set(linears) - {""}:
                raise ValueError(f"no nn.Linear named {sorted(set(linears) - {''})} in the module")
            index = linears.get("", 0)
        q = QuantLinear.from_linear(module, tq, index)
        q.register_forward_pre_hook(tq._pre_forward)
        q.lowbit_quantizer = tq
        return q
    found = _swappable_linears(module)
    if linears is not None:
        names = {name for _, _, name, _ in found}
        missing = sorted(set(linears) - names)
        if missing:
            raise ValueError(f"no nn.Linear named {missing} in the module (linears: {sorted(names)})")
        found = [f for f in found if f[2] in linears]
    swapped = {}
    for i, (parent, attr, name, layer) in enumerate(found):
        index = linears[name] if linears is not None else i
        swapped[name] = QuantLinear.from_linear(layer, tq, index)
        setattr(parent, attr, swapped[name])
    # A layer registered under several names (tied modules) becomes one QuantLinear everywhere.
    by_id = {id(layer): swapped[name] for _, _, name, layer in found}
    for parent in module.modules():
        for attr, child in list(parent._modules.items()):
            if child is not None and id(child) in by_id:
                setattr(parent, attr, by_id[id(child)])
    module.register_forward_pre_hook(tq._pre_forward)
    module.lowbit_quantizer = tq
    return module


def set_step(module: nn.Module, step: int) -> None:
    """The step the next training-mode forward of a :func:`quantize_model` module (or a QuantLinear)
    uses; later forwards count up from it."""
    tq = getattr(module, "lowbit_quantizer", None) or getattr(module, "quantizer", None)
    if not isinstance(tq, TrainingQuantizer):
        raise ValueError("the module has no lowbit quantizer (quantize_model or QuantLinear)")
    tq.step = int(step)


# ---- weight-only post-training quantization --------------------------------------------------------


@dataclasses.dataclass
class LayerReport:
    """One layer's result of :func:`quantize_weights`. Errors are ||X W^T - X Q^T||_F^2 summed over
    the calibration rows X (float64, through GPTQ's Hessian: (n/2) sum_r d_r^T H d_r with
    d_r = w_r - q_r); None without calibration."""

    name: str
    method: str
    format: str
    in_features: int
    out_features: int
    rows: int = 0                              # calibration rows (tokens) seen
    output_error: Optional[float] = None       # of the quantized weight
    rtn_output_error: Optional[float] = None   # of plain RTN in the same format, for comparison
    relative_error: Optional[float] = None     # output_error / ||X W^T||_F^2
    gptq_loss: Optional[float] = None          # GPTQ's own sum of column losses (gptq.py's "error")
    awq_ratio: Optional[float] = None          # AWQ's chosen exponent r of s = s_x^r
    awq_scales: Optional[np.ndarray] = None    # AWQ's s [in] (folded into the weight, see quantize_weights)


def _run_calibration(module: nn.Module, calibration) -> None:
    if callable(calibration):
        calibration(module)
        return
    for batch in calibration:
        if isinstance(batch, Mapping):
            module(**batch)
        elif isinstance(batch, (tuple, list)):
            module(*batch)
        else:
            module(batch)


def _output_error(h: np.ndarray, rows: int, w: np.ndarray, q: np.ndarray) -> float:
    # ||X D^T||^2 = sum_r d_r^T (X^T X) d_r with X^T X = (n/2) H.
    d = w.astype(np.float64) - q.astype(np.float64)
    return float(0.5 * rows * np.einsum("ri,ij,rj->", d, h, d, optimize=True))


class _Capture:
    """A forward hook keeping one linear's calibration inputs: GPTQ's Hessian (accumulated in C++)
    and, for AWQ, the rows themselves."""

    def __init__(self, in_features: int, keep_rows: bool):
        self.hessian = _core.ptq.HessianAccumulator(in_features)
        self.rows: Optional[List[np.ndarray]] = [] if keep_rows else None
        self.in_features = in_features

    def __call__(self, layer, inputs, output):
        x = _numpy_matrix(inputs[0], self.in_features)
        self.hessian.add(x)
        if self.rows is not None:
            self.rows.append(x.copy())


def quantize_weights(module: nn.Module, spec: Spec, method: str = "rtn", calibration=None, *,
                     layers: Optional[Iterable[str]] = None, sequential: bool = False,
                     percdamp: float = 0.01, block_size: int = 128, act_order: bool = False,
                     static_groups: bool = False, awq_grid: int = 20, awq_clip: bool = True,
                     tensor_id: int = 0) -> Dict[str, LayerReport]:
    """Weight-only post-training quantization of ``module``'s ``nn.Linear`` weights in ``spec``,
    in place, by the C++ per-layer algorithms of docs/ptq.md §4 (groups along ``in``, the
    reduction axis):

    - ``"rtn"``: round to nearest, ``lowbit.fake_quantize(W, spec)`` (calibration optional: it
      only fills the report's errors);
    - ``"gptq"``: GPTQ (Frantar et al. 2023) with the Hessian of each layer's calibration inputs,
      accumulated in C++ by forward hooks (``percdamp``, ``block_size``, ``act_order``,
      ``static_groups`` as gptq.py);
    - ``"awq"``: AWQ's per-channel scale search and clipping search (Lin et al. 2024; ``awq_grid``,
      ``awq_clip``). The layer's input scaling diag(s)^-1 is folded into its weight,
      W' = Q(W diag(s)) diag(s)^-1, which gives the outputs of the scaled layer but is no longer a
      value grid of the format; ``report[name].awq_scales`` is s for folding into the previous op.

    ``calibration``: a callable run as ``calibration(module)``, or an iterable of batches, each
    passed as ``module(batch)`` (tuples as ``module(*batch)``, mappings as ``module(**batch)``); it
    runs under ``torch.no_grad()`` in eval mode. By default all layers' inputs are captured in one
    pass of the float model; ``sequential=True`` runs the calibration once per layer, after the
    earlier layers are quantized (GPTQ's sequential order). ``layers``: the qualified names to
    quantize (default every nn.Linear). The algorithms run in float32; bfloat16 weights receive the
    result rounded to bfloat16. Returns {name: LayerReport} in layer order.
    """
    if method not in ("rtn", "gptq", "awq"):
        raise ValueError(f"method must be 'rtn', 'gptq' or 'awq', got {method!r}")
    if method != "rtn" and calibration is None:
        raise ValueError(f"{method} needs calibration inputs (a callable or an iterable of batches)")
    fmt = spec if isinstance(spec, Format) else Format(spec)
    targets = [(name, layer) for _, _, name, layer in _swappable_linears(module)]
    if isinstance(module, nn.Linear):
        targets = [("", module)]
    if layers is not None:
        wanted = list(layers)
        names = {n for n, _ in targets}
        missing = [n for n in wanted if n not in names]
        if missing:
            raise ValueError(f"no nn.Linear named {missing} in the module (linears: {sorted(names)})")
        targets = [(n, l) for n, l in targets if n in wanted]

    def capture(selected):
        captures = {name: _Capture(layer.in_features, method == "awq") for name, layer in selected}
        handles = [layer.register_forward_hook(captures[name]) for name, layer in selected]
        was_training = module.training
        module.eval()
        try:
            with torch.no_grad():
                _run_calibration(module, calibration)
        finally:
            for h in handles:
                h.remove()
            module.train(was_training)
        return captures

    report: Dict[str, LayerReport] = {}
    captures = capture(targets) if calibration is not None and not sequential else {}
    for name, layer in targets:
        if calibration is not None and sequential:
            captures = capture([(name, layer)])
        cap = captures.get(name)
        w = _numpy_matrix(layer.weight, layer.in_features)
        r = LayerReport(name=name, method=method, format=fmt.name, in_features=layer.in_features,
                        out_features=layer.out_features)
        rtn = _core.fake_quantize(w, fmt, tensor_id=tensor_id)
        if method == "rtn":
            q = rtn
        else:
            if cap is None or cap.hessian.count == 0:
                raise ValueError(f"the calibration never ran layer '{name}'")
            if method == "gptq":
                g = _core.ptq.gptq_quantize(w, cap.hessian.matrix(), fmt, percdamp=percdamp, block_size=block_size,
                                            act_order=act_order, static_groups=static_groups,
                                            tensor_id=tensor_id)
                q, r.gptq_loss = g["weights"], g["loss"]
            else:
                x = np.concatenate(cap.rows, axis=0)
                a = _core.ptq.awq_quantize(x, [w], fmt, n_grid=awq_grid, clip=awq_clip, tensor_id=tensor_id)
                s = a["scales"]
                q = (a["weights"][0] / s[None, :]).astype(np.float32)
                r.awq_ratio, r.awq_scales = a["ratio"], s
        if cap is not None and cap.hessian.count > 0:
            h = cap.hessian.matrix()
            r.rows = cap.hessian.count
            r.output_error = _output_error(h, r.rows, w, q)
            r.rtn_output_error = _output_error(h, r.rows, w, rtn)
            ref = _output_error(h, r.rows, w, np.zeros_like(w))
            r.relative_error = r.output_error / ref if ref > 0 else math.nan
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(q).reshape(layer.weight.shape))
        report[name] = r
    return report
