"""fake_quantize / quantize / dequantize / cast on numpy arrays: the fast kernels against the
scalar _ref kernels (the specification) bit for bit, against an independent exact reference and
the shipped vectors, on any shape and axis; bad input is an exception, never a crash."""
import json
import random

import numpy as np
import pytest

import lowbit
from conftest import bits

NAMED = [n for n, _ in lowbit.formats()]
# Beyond the named ones: each scale kind, rule and rounding of the grammar.
EXTRA = ["int4/g32", "int8/c", "uint4/g64", "e4m3fn/t", "e5m2/g16:bf16", "int4/g32:e4m3", "e3m2/g32:pow2",
         "int4/g32@mse", "e2m1/g32:e8m0@rceil", "nf4/g64@p99.9", "e4m3fn~rtz", "e2m1/g32:e8m0~sr:7",
         "int4/g32~sr", "e5m2~odd", "lut(-1,-0.25,0,0.5,1)/g16", "pow0.5(int4/g32)"]
SPECS = NAMED + EXTRA


def edge_matrix(fmt, cols):
    """Rows of special values: zeros and -0, infinities and NaN, the element's extremes and its
    midpoints (exact ties), values far beyond and far below its range."""
    f = lowbit.Format(fmt)
    special = [0.0, -0.0, np.inf, -np.inf, np.nan, 3.0e38, -3.0e38, 1e-45, -1e-45, 1.0, -1.0]
    m = f.max
    if np.isfinite(m) and m < 3e38:
        special += [m, -m, m * 1.0001, -m * 1.5, f.min_subnormal, f.min_subnormal / 2, -f.min_subnormal / 2]
    if f.element.bits <= 8:
        v = f.values.astype(np.float64)
        special += list(((v[1:] + v[:-1]) / 2).astype(np.float32))
    vals = np.array(special, dtype=np.float32)
    rng = np.random.default_rng(len(fmt))
    rows = [np.resize(vals, cols), np.zeros(cols, np.float32), -np.zeros(cols, np.float32)]
    one_inf = rng.standard_normal(cols).astype(np.float32)
    one_inf[cols // 2] = np.inf
    one_nan = rng.standard_normal(cols).astype(np.float32)
    one_nan[1] = np.nan
    rows += [one_inf, one_nan, rng.permutation(np.resize(vals, cols)).astype(np.float32)]
    return np.stack(rows)


def random_matrix(rows, cols, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, cols)).astype(np.float32)
    x[:, ::7] *= 50  # outlier channels
    x[rows // 2:] = (rng.standard_t(2, (rows - rows // 2, cols)) * 1e-3).astype(np.float32)  # heavy tails, small
    return x


def same_or_same_error(fn_fast, fn_ref):
    """Both succeed with bit-identical results, or both refuse with the same message."""
    try:
        ref = fn_ref()
    except ValueError as e:
        with pytest.raises(ValueError) as e2:
            fn_fast()
        assert str(e2.value) == str(e)
        return None
    fast = fn_fast()
    assert np.array_equal(bits(fast), bits(ref))
    return ref


@pytest.mark.parametrize("spec", SPECS)
def test_fast_equals_reference_bit_for_bit(spec):
    for x in (random_matrix(7, 96, 1), random_matrix(3, 100, 2), random_matrix(64, 1024, 3),
              random_matrix(2, 512, 4), edge_matrix(spec, 256)):
        for axis in (-1, 0):
            same_or_same_error(lambda: lowbit.fake_quantize(x, spec, axis=axis, tensor_id=5),
                               lambda: lowbit.fake_quantize(x, spec, axis=axis, tensor_id=5, reference=True))
        q_ref = same_or_same_error(lambda: lowbit.quantize(x, spec).dequantize(),
                                   lambda: lowbit.quantize(x, spec, reference=True).dequantize())
        if q_ref is not None:  # dequantize(quantize(x)) is fake_quantize(x), bit for bit
            assert np.array_equal(bits(q_ref), bits(lowbit.fake_quantize(x, spec)))


@pytest.mark.parametrize("spec", ["mxfp4", "int4/g32", "e4m3fn/c", "nvfp4", "e2m1/g32:e8m0~sr:3", "e4m3fn/t", "q4_0"])
def test_any_axis_is_the_moved_axis(spec):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 64, 5, 32)).astype(np.float32)
    for axis in range(4):
        moved = np.ascontiguousarray(np.moveaxis(x, axis, -1))
        want = np.moveaxis(lowbit.fake_quantize(moved, spec).reshape(moved.shape), -1, axis)
        if x.shape[axis] % 32 and spec in ("q4_0",):
            continue
        got = lowbit.fake_quantize(x, spec, axis=axis)
        assert got.shape == x.shape
        assert np.array_equal(bits(got), bits(want)), axis
        q = lowbit.quantize(x, spec, axis=axis)
        assert q.shape == x.shape and q.axis == axis
        assert np.array_equal(bits(q.dequantize()), bits(want))


def test_strided_input_and_out():
    rng = np.random.default_rng(1)
    big = rng.standard_normal((40, 200)).astype(np.float32)
    x = big[::3, 10:170]  # not contiguous
    want = lowbit.fake_quantize(np.ascontiguousarray(x), "mxfp4")
    assert np.array_equal(bits(lowbit.fake_quantize(x, "mxfp4")), bits(want))
    out = np.empty_like(want)
    assert lowbit.fake_quantize(x, "mxfp4", out=out) is not None
    assert np.array_equal(bits(out), bits(want))
    strided_out = np.zeros((x.shape[0], 2 * x.shape[1]), np.float32)[:, ::2]
    lowbit.fake_quantize(x, "mxfp4", out=strided_out)
    assert np.array_equal(bits(strided_out), bits(want))
    y = np.ascontiguousarray(x)
    lowbit.fake_quantize(y, "mxfp4", out=y)  # in place
    assert np.array_equal(bits(y), bits(want))


def test_zero_d_and_empty():
    assert lowbit.fake_quantize(np.float32(3.3), "e2m1").item() == 3.0
    assert lowbit.fake_quantize(np.array(3.3, np.float32), "e2m1").shape == ()
    assert lowbit.fake_quantize(np.zeros((0, 32), np.float32), "mxfp4").shape == (0, 32)


def test_shipped_vectors(data_dir):
    """Outputs of an independent exact implementation (data/vectors/README.md)."""
    n = 0
    for line in open(data_dir / "vectors" / "formats.jsonl"):
        d = json.loads(line)
        x = np.array(d["inputs"], np.float32)
        want = np.array([np.nan if v is None else v for v in d["outputs"]], np.float32)
        got = lowbit.fake_quantize(x, d["format"])
        np.testing.assert_array_equal(got, want, err_msg=d["format"])
        n += 1
    assert n >= 10


ELEMENTS = ["e4m3fn", "e5m2", "e4m3fnuz", "e5m2fnuz", "e3m2", "e2m3", "e2m1", "int8", "int4", "e3m4", "e2m2"]


def nearest_even_reference(x, fmt):
    """Round to nearest, ties to the even code, saturating (docs/conventions.md §3), computed in
    float64 from the element's code book alone."""
    book = fmt.codebook.astype(np.float64)
    codes = np.arange(len(book))
    finite = np.isfinite(book) & (book >= fmt.min) & (book <= fmt.max)
    vals, cs = book[finite], codes[finite]
    order = np.lexsort((cs, vals))
    vals, cs = vals[order], cs[order]
    out = np.empty(x.shape, np.float32)
    for i, v in enumerate(x.astype(np.float64)):
        if np.isnan(v):
            out[i] = np.nan
            continue
        d = np.abs(vals - v)
        best = d.min()
        cand = np.nonzero(d == best)[0]
        if len(cand) > 1:  # a tie (or +0/-0): the even code among the nearest values
            nz = [c for c in cand if vals[c] != 0 or True]
            evens = [c for c in nz if cs[c] % 2 == 0]
            pick = evens[0] if evens else nz[0]
        else:
            pick = cand[0]
        out[i] = vals[pick]
    return out


@pytest.mark.parametrize("spec", ELEMENTS)
def test_cast_is_nearest_value_ties_to_even(spec):
    f = lowbit.Format(spec)
    v = f.values.astype(np.float64)
    rng = np.random.default_rng(3)
    x = np.concatenate([(v[1:] + v[:-1]) / 2, v, rng.uniform(v[0] * 1.2, v[-1] * 1.2, 2000),
                        rng.standard_normal(500) * f.min_normal]).astype(np.float32)
    got = lowbit.cast(x, spec)
    np.testing.assert_array_equal(got, nearest_even_reference(x, f))


@pytest.mark.parametrize("spec", ELEMENTS + ["fp16", "bf16", "lut(-1,-0.25,0,0.5,1)"])
def test_every_code_casts_to_itself(spec):
    f = lowbit.Format(spec)
    book = f.codebook
    finite = book[np.isfinite(book) & (book >= f.min) & (book <= f.max)]  # int8's spare code -128 is not a value
    assert np.array_equal(bits(lowbit.cast(finite, spec)), bits(finite))
    q = lowbit.quantize(finite, spec)
    assert np.array_equal(bits(q.dequantize()), bits(finite))


def test_fp16_and_bf16_casts_match_numpy_and_truncation():
    rng = np.random.default_rng(4)
    x = (rng.standard_normal(100000) * np.exp(rng.uniform(-20, 20, 100000))).astype(np.float32)
    x = x[np.abs(x) < 65504]  # numpy overflows to inf; lowbit saturates (docs/conventions.md §3)
    np.testing.assert_array_equal(lowbit.cast(x, "fp16"), x.astype(np.float16).astype(np.float32))
    # bf16 RNE by integer arithmetic on the float32 bits.
    u = x.view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16 << 16).astype(np.uint32).view(np.float32)
    np.testing.assert_array_equal(lowbit.cast(x, "bf16"), r)


def test_packed_codes_layout():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 64)).astype(np.float32)
    q = lowbit.quantize(x, "int4/g32")
    codes = q.unpacked_codes()
    assert codes.shape == (3, 64) and codes.dtype == np.uint8
    packed = q.codes
    assert packed.shape == (3, 32) and not packed.flags.writeable
    # element j of a row at bits [4j, 4j+4), least significant bit first
    assert np.array_equal(packed & 0xF, codes[:, 0::2]) and np.array_equal(packed >> 4, codes[:, 1::2])
    # int4 codes are two's complement: value = signed code * the group's scale
    signed = codes.astype(np.int32)
    signed[signed >= 8] -= 16
    scales = q.scales.reshape(3, 2)
    np.testing.assert_array_equal(q.dequantize(), (signed * np.repeat(scales, 32, axis=1)).astype(np.float32))
    parts = q.parts("blk.0.ffn_up.weight")
    assert set(parts) == {"blk.0.ffn_up.weight.codes", "blk.0.ffn_up.weight.scales"}
    assert set(lowbit.quantize(x, "uint4/g32").parts("w")) == {"w.codes", "w.scales", "w.zero_points"}
    n = lowbit.quantize(rng.standard_normal((2, 256)).astype(np.float32) * 1000, "nvfp4")
    assert "w.tensor_scale" in n.parts("w") and n.parts("w")["w.tensor_scale"][0] == n.tensor_scale
    k = lowbit.quantize(rng.standard_normal((2, 256)).astype(np.float32), "q4_k")
    assert k.super_scales is not None and k.super_scales.size == 4  # (d, dmin) per super-block


def test_mxfp4_scales_are_powers_of_two_from_the_block_max():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((4, 128)).astype(np.float32)
    q = lowbit.quantize(x, "mxfp4")
    amax = np.abs(x).reshape(4, 4, 32).max(axis=2).ravel()
    # OCP MX: X = 2^(floor(log2(amax)) - emax_elem), emax_elem = 2 for E2M1
    np.testing.assert_array_equal(q.scales, np.exp2(np.floor(np.log2(amax)) - 2).astype(np.float32))


def test_cast_refuses_scaled_formats():
    with pytest.raises(ValueError, match="fake_quantize"):
        lowbit.cast(np.zeros(4, np.float32), "mxfp4")


@pytest.mark.parametrize("bad,exc", [
    (lambda: lowbit.fake_quantize(np.zeros(4), "int8"), TypeError),              # float64
    (lambda: lowbit.fake_quantize([1.0, 2.0], "int8"), TypeError),               # a list
    (lambda: lowbit.fake_quantize(np.zeros(4, np.int32), "int8"), TypeError),
    (lambda: lowbit.fake_quantize(np.zeros(4, np.float32), "int8", axis=1), ValueError),
    (lambda: lowbit.fake_quantize(np.zeros(4, np.float32), "int8", axis=1.5), TypeError),
    (lambda: lowbit.fake_quantize(np.zeros(4, np.float32), "int8", out=np.zeros(5, np.float32)), ValueError),
    (lambda: lowbit.fake_quantize(np.zeros(4, np.float32), "int8", out=np.zeros(4)), TypeError),
    (lambda: lowbit.fake_quantize(np.zeros(4, np.float32), "int8", tensor_id=-1), TypeError),
    (lambda: lowbit.quantize(np.zeros((0, 4), np.float32), "int8"), ValueError),
    (lambda: lowbit.set_threads(0), ValueError),
])
def test_bad_arguments_raise(bad, exc):
    with pytest.raises(exc):
        bad()


def test_read_only_out_is_refused():
    out = np.zeros(4, np.float32)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        lowbit.fake_quantize(np.ones(4, np.float32), "int8", out=out)


TOKENS = ["int", "uint", "e", "m", "fn", "fnuz", "finite", "ieee", "/", "g", "c", "t", ":", "e8m0", "pow2", "fp32",
          "e4m3", "@", "mse", "p", "ocp", "~", "sr", "rne", "odd", "nf4", "lut(", ")", ",", "pow", "(", "bias=",
          "-", ".", "0", "1", "2", "3", "4", "8", "16", "32", "99", "nan", "inf", "mxfp4", "nvfp4", "q4_k", "+"]


def test_fuzzed_specs_and_shapes_never_crash():
    """Random token strings as specs and random shapes and axes: every call returns an array of
    the input's shape or raises ValueError / TypeError."""
    rnd = random.Random(1234)
    rng = np.random.default_rng(1234)
    ok = refused = 0
    for _ in range(3000):
        spec = "".join(rnd.choice(TOKENS) for _ in range(rnd.randint(1, 8)))
        if rnd.random() < 0.3:
            spec = rnd.choice(SPECS)
            if rnd.random() < 0.5:  # a mutation of a valid spec
                i = rnd.randrange(len(spec) + 1)
                spec = spec[:i] + rnd.choice(TOKENS) + spec[i:]
        shape = tuple(rnd.randint(0, 9) if rnd.random() < 0.2 else rnd.randint(1, 70) for _ in range(rnd.randint(0, 3)))
        x = (rng.standard_normal(shape) * 10.0 ** rnd.randint(-40, 30)).astype(np.float32)
        if x.size and rnd.random() < 0.2:
            x.ravel()[rnd.randrange(x.size)] = rnd.choice([np.nan, np.inf, -np.inf])
        axis = rnd.randint(-4, 3)
        try:
            y = (lowbit.fake_quantize if rnd.random() < 0.7 else lambda a, s, axis: lowbit.quantize(a, s, axis=axis).dequantize())(x, spec, axis=axis)
            assert y.shape == x.shape and y.dtype == np.float32
            ok += 1
        except (ValueError, TypeError):
            refused += 1
    assert ok > 100 and refused > 100
