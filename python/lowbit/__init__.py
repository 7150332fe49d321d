"""lowbit: bit-exact low-precision number formats, fast quantization kernels, models and jobs.

The compiled half is ``lowbit._core``; this package re-exports it. ``lowbit.torch`` (imported on
its own) adds PyTorch autograd functions and layers. See docs/python.md.
"""
from ._core import (  # noqa: F401
    Element,
    Error,
    Format,
    Model,
    OperandQuantizer,
    QuantizedTensor,
    Tokenizer,
    clip_bounds,
    data_dir,
    default_data_dir,
    dequantize,
    evaluate,
    fake_quantize,
    formats,
    load_model,
    load_tokenizer,
    quantize,
    quantize_model,
    runs,
    set_threads,
    threads,
    tokenizer_for,
    train,
)

__all__ = [
    "Element", "Error", "Format", "OperandQuantizer", "QuantizedTensor", "cast", "clip_bounds",
    "dequantize", "fake_quantize", "formats", "quantize", "set_threads", "threads",
    # models and jobs (docs/python.md "Models and jobs")
    "Model", "Tokenizer", "data_dir", "evaluate", "load_model", "load_tokenizer", "quantize_model",
    "runs", "tokenizer_for", "train",
]


def cast(x, spec):
    """Rounds every value of ``x`` (float32) onto an element format without a scale, as a cast to
    that number type would (e.g. ``cast(x, "e4m3fn")``). Formats with scales are refused: use
    :func:`fake_quantize` for them."""
    fmt = spec if isinstance(spec, Format) else Format(spec)
    if fmt.granularity != "none":
        raise ValueError(
            f"cast takes an element format without a scale; '{fmt.name}' has {fmt.granularity} "
            "scales: use lowbit.fake_quantize")
    return fake_quantize(x, fmt)

