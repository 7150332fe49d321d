"""lowbit.Format, lowbit.formats(): the spec grammar's objects against published values."""
import pickle
import subprocess

import numpy as np
import pytest

import lowbit


def test_named_formats_parse_and_print_canonically():
    names = [n for n, _ in lowbit.formats()]
    for must in ("mxfp4", "mxfp8", "mxfp6_e2m3", "mxint8", "nvfp4", "nf4", "q4_0", "q8_0", "q4_k", "q6_k",
                 "q4_1", "q5_0", "q5_1", "q2_k", "q3_k", "q5_k",
                 "e4m3fn", "e5m2", "bf16", "fp16"):
        assert must in names
    for name in names:
        f = lowbit.Format(name)
        assert lowbit.Format(f.name) == f, name  # the canonical spelling reads back to the same format
        assert pickle.loads(pickle.dumps(f)) == f


@pytest.mark.parametrize("spec,maximum,min_subnormal,bits", [
    ("e4m3fn", 448.0, 2.0**-9, 8),      # OCP FP8 E4M3
    ("e5m2", 57344.0, 2.0**-16, 8),     # OCP FP8 E5M2
    ("e4m3fnuz", 240.0, 2.0**-10, 8),   # bias 8
    ("e3m2", 28.0, 2.0**-4, 6),         # OCP MX FP6
    ("e2m3", 7.5, 2.0**-3, 6),
    ("e2m1", 6.0, 0.5, 4),              # OCP MX FP4
    ("fp16", 65504.0, 2.0**-24, 16),
    ("bf16", 3.3895313892515355e38, 2.0**-133, 16),
    ("int8", 127.0, 1.0, 8),
])
def test_element_limits_are_the_published_ones(spec, maximum, min_subnormal, bits):
    f = lowbit.Format(spec)
    assert f.max == maximum
    assert f.min_subnormal == min_subnormal
    assert f.element.bits == bits
    assert f.granularity == "none" and f.group is None and f.scale is None


def test_block_formats_describe_their_layout():
    mx = lowbit.Format("mxfp4")
    assert (mx.element.kind, mx.element.ebits, mx.element.mbits, mx.element.variant) == ("minifloat", 2, 1, "finite")
    assert (mx.granularity, mx.group, mx.scale) == ("group", 32, "e8m0")
    assert mx.bits_per_element == 4 + 8 / 32
    g = lowbit.Format("int4/g128")
    assert (g.element.kind, g.group, g.scale, g.bits_per_element) == ("int", 128, "fp32", 4 + 32 / 128)
    assert lowbit.Format("nvfp4").bits_per_element == 4 + 8 / 16
    e = lowbit.Format("e4m3fn").element
    assert (e.ebits, e.mbits, e.bias, e.variant) == (4, 3, 7, "fn")


def test_fp4_values_and_codebook():
    f = lowbit.Format("e2m1")
    pos = [0, 0.5, 1, 1.5, 2, 3, 4, 6]
    assert f.values.tolist() == sorted(set([-v for v in pos] + pos))
    book = f.codebook
    assert book.shape == (16,)
    assert book[:8].tolist() == pos and book[8:].tolist() == [-v for v in pos]  # sign bit is the top bit


def test_e4m3fn_codebook_has_one_nan_per_sign_and_no_inf():
    book = lowbit.Format("e4m3fn").codebook
    assert np.isnan(book).sum() == 2 and np.isnan(book[0x7F]) and np.isnan(book[0xFF])
    assert not np.isinf(book).any()
    assert book[0x7E] == 448.0 and book[0x01] == 2.0**-9


def test_nf4_table_is_qlora_s():
    # QLoRA's NF4 code book (Dettmers et al. 2023, appendix E), as printed. lowbit's entries are the
    # float32 of the double-precision formula (docs/formats.md §1.4); two differ from the printed
    # float32 values by one ulp.
    published = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                 -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                 0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                 0.7229568362236023, 1.0]
    np.testing.assert_allclose(lowbit.Format("nf4").element.table, published, rtol=0, atol=1.2e-7)


def test_bad_spec_raises_the_clis_message(cli):
    with pytest.raises(ValueError) as e:
        lowbit.Format("mxfp5")
    assert isinstance(e.value, lowbit.Error)
    assert "did you mean 'mxfp4'" in str(e.value)
    r = subprocess.run([cli, "info", "mxfp5"], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip() == "lowbit: " + str(e.value)


@pytest.mark.parametrize("bad", ["", "e9m9", "int0", "int4/g0", "int4/g32:", "pow(pow(int4))", "e4m3(bias=nan)",
                                 "e2m1/g32~sr:", "lut()", "int4/gx", "nvfp4/g16"])
def test_bad_specs_are_value_errors(bad):
    with pytest.raises(ValueError):
        lowbit.Format(bad)


def test_wrong_types_are_type_errors():
    with pytest.raises(TypeError):
        lowbit.Format(4)
    with pytest.raises(TypeError):
        lowbit.fake_quantize(np.zeros(4, np.float32), 4)
    with pytest.raises(TypeError):
        lowbit.Format("mxfp4").with_seed(-1)


def test_codebook_of_wide_elements_is_refused():
    with pytest.raises(ValueError):
        lowbit.Format("fp32").codebook
