"""lowbit.torch (docs/python.md "lowbit.torch"): the straight-through autograd function, QuantLinear's
six operands against the C++ trainer's GEMM path, quantize_model, quantize_weights."""
import copy

import numpy as np
import pytest

import torch  # python3-torch: scripts/install-deps.sh installs it; a missing one fails the suite
from torch import nn

import lowbit  # noqa: E402
import lowbit.torch as lt  # noqa: E402

SPECS = ["mxfp4", "nvfp4", "int4/g32", "int8/c", "e4m3fn", "e4m3/g32", "int4/g32~sr:5"]


def _randn(*shape, seed=0, outliers=False):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(*shape, generator=g)
    if outliers:  # a few large values, so that clipping rules and saturation have work to do
        t.view(-1)[:: 7] *= 40
    return t


# ---- fake_quantize: forward --------------------------------------------------------------------------


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("axis", [-1, 0])
def test_forward_is_reference_bit_for_bit(spec, axis):
    t = _randn(48, 64, seed=1, outliers=True)
    got = lt.fake_quantize(t, spec, axis=axis, tensor_id=3)
    want = lowbit.fake_quantize(t.numpy(), spec, axis=axis, tensor_id=3, reference=True)
    assert got.dtype == torch.float32
    assert np.array_equal(got.numpy(), want)


def test_forward_non_contiguous_and_batched():
    base = _randn(6, 64, 40, seed=2)
    t = base.transpose(1, 2)  # [6, 40, 64], groups along the last axis, not contiguous
    assert not t.is_contiguous()
    got = lt.fake_quantize(t, "mxfp4")
    want = lowbit.fake_quantize(np.ascontiguousarray(t.numpy()), "mxfp4", reference=True)
    assert np.array_equal(got.numpy(), want)
    # The input is untouched and the result is a new tensor.
    assert torch.equal(t, base.transpose(1, 2)) and got.data_ptr() != t.data_ptr()


@pytest.mark.parametrize("spec", ["mxfp4", "nvfp4", "int4/g32", "e4m3fn"])
def test_bfloat16_is_float32_rounded_to_bfloat16(spec):
    t = _randn(16, 96, seed=4, outliers=True).bfloat16().requires_grad_()
    got = lt.fake_quantize(t, spec)
    assert got.dtype == torch.bfloat16
    want = lt.fake_quantize(t.detach().float(), spec).bfloat16()
    assert torch.equal(got, want)
    got.backward(torch.ones_like(got))
    assert t.grad.dtype == torch.bfloat16 and torch.equal(t.grad, torch.ones_like(t))


def test_refuses_integer_tensors_and_unknown_ste():
    with pytest.raises(TypeError):
        lt.fake_quantize(torch.arange(4), "int8/c")
    with pytest.raises(ValueError):
        lt.fake_quantize(torch.ones(4), "int8/c", ste="tanh")
    with pytest.raises(ValueError):
        lt.fake_quantize(torch.ones(4), "mxfp5")


# ---- fake_quantize: the straight-through gradient ----------------------------------------------------


@pytest.mark.parametrize("spec", ["mxfp4", "int4/g32", "e4m3fn"])
def test_identity_ste_passes_the_upstream_gradient(spec):
    t = _randn(32, 64, seed=5, outliers=True).requires_grad_()
    upstream = _randn(32, 64, seed=6)
    lt.fake_quantize(t, spec).backward(upstream)
    assert torch.equal(t.grad, upstream)


@pytest.mark.parametrize("spec,axis", [("mxfp4", -1), ("int4/g32@p90", -1), ("e4m3fn", -1), ("int4/c@mse", 0),
                                       ("nvfp4", 0)])
def test_clipped_ste_is_zero_exactly_outside_clip_bounds(spec, axis):
    t = _randn(64, 64, seed=7, outliers=True)
    if spec == "e4m3fn":
        t = t * 20  # outliers beyond 448
    t.requires_grad_()
    upstream = _randn(64, 64, seed=8)
    lt.fake_quantize(t, spec, axis=axis, ste="clipped").backward(upstream)
    lo, hi = lowbit.clip_bounds(t.detach().numpy(), spec, axis=axis)
    x = t.detach().numpy()
    outside = torch.from_numpy((x < lo) | (x > hi))
    assert 0 < int(outside.sum()) < outside.numel()  # both cases occur
    assert torch.equal(t.grad[outside], torch.zeros(int(outside.sum())))
    assert torch.equal(t.grad[~outside], upstream[~outside])


def test_clipped_ste_on_hand_made_values():
    # e4m3fn is a plain cast: the range is [-448, 448]; 460 still rounds to 448 but lies outside.
    t = torch.tensor([500.0, -1000.0, 448.0, -448.0, 10.0, 0.001, 460.0], requires_grad=True)
    lt.fake_quantize(t, "e4m3fn", ste="clipped").backward(torch.ones(7))
    assert t.grad.tolist() == [0, 0, 1, 1, 1, 1, 0]
    # int8/c with the max rule: the scale is amax / 127, every value is representable.
    t = torch.tensor([[1.0, -2.0, 0.5, 0.25]], requires_grad=True)
    lt.fake_quantize(t, "int8/c", ste="clipped").backward(torch.ones(1, 4))
    assert t.grad.tolist() == [[1, 1, 1, 1]]
    # int8/c@p50: the scale covers the median |x| (0.75), 1 and -2 are clipped.
    t = torch.tensor([[1.0, -2.0, 0.5, 0.25]], requires_grad=True)
    y = lt.fake_quantize(t, "int8/c@p50", ste="clipped")
    y.backward(torch.ones(1, 4))
    assert y.detach()[0, :2].tolist() == [0.75, -0.75]
    assert t.grad.tolist() == [[0, 0, 1, 1]]
    # MXFP4 block with amax 7: scale 2^0, 7 saturates to 6 (docs/formats.md §1.2).
    t = torch.tensor([7.0] + [1.0] * 31, requires_grad=True)
    lt.fake_quantize(t, "mxfp4", ste="clipped").backward(torch.ones(32))
    assert t.grad[0] == 0 and torch.all(t.grad[1:] == 1)


# ---- QuantLinear: the six operands are the trainer's -------------------------------------------------

PLANS = [
    "mxfp4",
    "nvfp4",
    "fp8",
    "sun2025:e4m3/g32",
    "x=int8/c;w=int4/g32",
    "x=e4m3/g32;w=e4m3/g32;dy=e5m2/g32~sr;w_bwd=e4m3/g32;dy_w=e5m2/g32~sr;x_bwd=e4m3/g32;axis=din",
    "x=int8/g32;w=int4/g32~sr;dy=int8/g32~sr;w_bwd=int8/c;dy_w=e5m2/g32~sr;x_bwd=int8/g32",
    "qat:int4/g32",
    "flex16+5",  # stateful (Autoflex): both quantizers start from the same state
    "shiftquant:int4",
]


def _oracle(plan, seed, linear, step, x, w, dy):
    return lowbit.OperandQuantizer(plan, seed)._trainer_operands(linear, step, x, w, dy)


@pytest.mark.parametrize("plan", PLANS)
@pytest.mark.parametrize("shape", [(40, 64, 48), (2, 32, 96, 32)])  # n = 40 is no multiple of 32
def test_quant_linear_operands_equal_the_trainers(plan, shape):
    *lead, n_in, n_out = shape
    torch.manual_seed(11)
    layer = lt.QuantLinear(n_in, n_out, plan=plan, seed=9, linear=5)
    layer.record_operands = True
    lt.set_step(layer, 7)
    x = (torch.randn(*lead, n_in) * 3).requires_grad_()
    dy = torch.randn(*lead, n_out)
    y = layer(x)
    assert layer.quantizer.current_step == 7 and layer.quantizer.step == 8
    y.backward(dy)
    x2, w, dy2 = x.detach().reshape(-1, n_in).numpy(), layer.weight.detach().numpy(), dy.reshape(-1, n_out).numpy()
    want = _oracle(plan, 9, 5, 7, x2, w, dy2)
    for op in lt.OPERANDS:
        assert np.array_equal(layer.recorded[op], want[op]), op
    # The GEMMs are float32 GEMMs of those operands (torch's and OpenBLAS's summation may differ).
    b = layer.bias.detach().numpy()
    np.testing.assert_allclose(y.detach().reshape(-1, n_out).numpy(), want["y"] + b, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(x.grad.reshape(-1, n_in).numpy(), want["dx"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer.weight.grad.numpy(), want["dw"], rtol=1e-5, atol=1e-4)
    assert torch.equal(layer.bias.grad, dy.reshape(-1, n_out).sum(0))


def test_stochastic_rounding_is_keyed_by_step_and_linear():
    plan = "mxfp4"  # dy and dy_w with stochastic rounding
    torch.manual_seed(12)
    layer = lt.QuantLinear(64, 64, plan=plan, seed=1, linear=3)
    layer.record_operands = True
    x, dy = torch.randn(64, 64, requires_grad=True), torch.randn(64, 64)
    layer(x).backward(dy)  # step 0
    first = dict(layer.recorded)
    layer(x).backward(dy)  # step 1
    args = (x.detach().numpy(), layer.weight.detach().numpy(), dy.numpy())
    assert np.array_equal(first["dy"], _oracle(plan, 1, 3, 0, *args)["dy"])
    assert np.array_equal(layer.recorded["dy"], _oracle(plan, 1, 3, 1, *args)["dy"])
    assert not np.array_equal(first["dy"], layer.recorded["dy"])
    assert not np.array_equal(first["dy"], _oracle(plan, 1, 4, 0, *args)["dy"])
    assert np.array_equal(first["x"], layer.recorded["x"])  # round to nearest: no key


def test_quant_linear_bfloat16_computes_in_float32():
    torch.manual_seed(13)
    layer = lt.QuantLinear(64, 32, plan="mxfp4", dtype=torch.bfloat16)
    ref = lt.QuantLinear(64, 32, plan="mxfp4")
    with torch.no_grad():
        ref.weight.copy_(layer.weight.float())
        ref.bias.copy_(layer.bias.float())
    x = torch.randn(40, 64).bfloat16().requires_grad_()
    xf = x.detach().float().requires_grad_()
    y, yf = layer(x), ref(xf)
    assert y.dtype == torch.bfloat16 and torch.equal(y, yf.bfloat16())
    dy = torch.randn(40, 32).bfloat16()
    y.backward(dy)
    yf.backward(dy.float())
    assert layer.weight.grad.dtype == torch.bfloat16
    assert torch.equal(layer.weight.grad, ref.weight.grad.bfloat16())
    assert torch.equal(x.grad, xf.grad.bfloat16())


# ---- quantize_model --------------------------------------------------------------------------------------


class _Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.up = nn.Linear(d, 2 * d)
        self.down = nn.Linear(2 * d, d, bias=False)

    def forward(self, x):
        return x + self.down(torch.relu(self.up(x)))


class _Net(nn.Module):
    def __init__(self, d_in=16, d=32, classes=4):
        super().__init__()
        self.embed = nn.Linear(d_in, d)
        self.blocks = nn.Sequential(_Block(d), _Block(d))
        self.head = nn.Linear(d, classes)

    def forward(self, x):
        return self.head(self.blocks(self.embed(x)))


def test_quantize_model_swaps_every_linear_in_order():
    net = _Net()
    names = [n for n, m in net.named_modules() if isinstance(m, nn.Linear)]
    params = {n: p for n, p in net.named_parameters()}
    lt.quantize_model(net, "mxfp4", seed=2)
    swapped = {n: m for n, m in net.named_modules() if isinstance(m, lt.QuantLinear)}
    assert list(swapped) == names and len(names) == 6
    assert [m.linear for m in swapped.values()] == list(range(6))
    assert all(p is params[n] for n, p in net.named_parameters())  # the same Parameter objects
    tq = net.lowbit_quantizer
    assert all(m.quantizer is tq for m in swapped.values())
    x = torch.randn(8, 16)
    net(x)
    net(x)
    assert (tq.current_step, tq.step) == (1, 2)
    net.eval()
    net(x)  # eval forwards do not advance
    assert (tq.current_step, tq.step) == (1, 2)
    lt.set_step(net.train(), 100)
    net(x)
    assert tq.current_step == 100


def test_a_quantized_model_deep_copies_with_its_step():
    net = lt.quantize_model(_Net(), "mxfp4")
    lt.set_step(net, 5)
    twin = copy.deepcopy(net)
    tq = twin.lowbit_quantizer
    assert tq is not net.lowbit_quantizer and tq.step == 5
    assert all(m.quantizer is tq for m in twin.modules() if isinstance(m, lt.QuantLinear))
    x = torch.randn(8, 16)
    assert torch.equal(net(x), twin(x)) and tq.step == 6  # the copy's hook steps the copy's quantizer
    with pytest.raises(TypeError):
        copy.deepcopy(lt.quantize_model(_Net(), "flex16+5"))


def test_eval_mode_freezes_stateful_quantizers():
    net = lt.quantize_model(_Net(), "flex16+5")  # Autoflex keeps a history of maxima per tensor
    state = net.lowbit_quantizer.quantizer.state
    x = torch.randn(8, 16)
    net(x)
    after_train = state()
    net.eval()
    net(x * 5)
    assert state() == after_train
    net.train()
    net(x * 5)
    assert state() != after_train


def test_quantize_model_with_a_linear_mapping():
    net = _Net()
    lt.quantize_model(net, "fp8", linears={"blocks.0.up": 7, "head": 42})
    assert isinstance(net.blocks[0].up, lt.QuantLinear) and net.blocks[0].up.linear == 7
    assert isinstance(net.head, lt.QuantLinear) and net.head.linear == 42
    assert type(net.embed) is nn.Linear and type(net.blocks[1].down) is nn.Linear
    with pytest.raises(ValueError):
        lt.quantize_model(_Net(), "fp8", linears={"nope": 0})


def _train(net, steps=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randn(16, 4, generator=g)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(steps):
        x = torch.randn(64, 16, generator=g)
        loss = nn.functional.cross_entropy(net(x), (x @ teacher).argmax(1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_a_tiny_model_trains_under_mxfp4():
    torch.manual_seed(14)
    net = lt.quantize_model(_Net(), "mxfp4")
    losses = _train(net)
    assert np.isfinite(losses).all()
    assert np.mean(losses[-10:]) < 0.6 * np.mean(losses[:5])
    assert net.lowbit_quantizer.step == 60


# ---- quantize_weights ---------------------------------------------------------------------------------------


def _calibration(seed=15, batches=4):
    g = torch.Generator().manual_seed(seed)
    # Correlated inputs with uneven channel scales: what GPTQ and AWQ exploit.
    mix = torch.randn(16, 16, generator=g) * torch.linspace(0.1, 3, 16)
    return [torch.randn(64, 16, generator=g) @ mix for _ in range(batches)]


def _captured_inputs(net, batches):
    xs = {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: xs.setdefault(n, []).append(i[0].reshape(-1, i[0].shape[-1])))
             for n, m in net.named_modules() if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for b in batches:
            net(b)
    for h in hooks:
        h.remove()
    return {n: torch.cat(v).double().numpy() for n, v in xs.items()}


def test_quantize_weights_rtn_is_fake_quantize():
    torch.manual_seed(16)
    net = _Net()
    before = {n: m.weight.detach().clone() for n, m in net.named_modules() if isinstance(m, nn.Linear)}
    report = lt.quantize_weights(net, "int4/g32", "rtn")
    assert list(report) == list(before)
    for n, m in net.named_modules():
        if isinstance(m, nn.Linear):
            assert np.array_equal(m.weight.detach().numpy(), lowbit.fake_quantize(before[n].numpy(), "int4/g32"))


@pytest.mark.parametrize("spec", ["int4/g32", "int3/c", "mxfp4"])
def test_gptq_output_error_is_at_most_rtns(spec):
    torch.manual_seed(17)
    float_net = _Net()
    batches = _calibration()
    xs = _captured_inputs(float_net, batches)
    nets = {}
    for method in ("rtn", "gptq", "awq"):
        nets[method] = _Net()
        nets[method].load_state_dict(float_net.state_dict())
        report = lt.quantize_weights(nets[method], spec, method, calibration=batches)
    errors = {}
    for method, net in nets.items():
        errors[method] = {}
        for n, m in net.named_modules():
            if isinstance(m, nn.Linear):
                w = dict(float_net.named_modules())[n].weight.detach().double().numpy()
                d = w - m.weight.detach().double().numpy()
                errors[method][n] = float(((xs[n] @ d.T) ** 2).sum())
    for n in errors["rtn"]:
        assert errors["gptq"][n] <= errors["rtn"][n] * (1 + 1e-6), n
        assert errors["awq"][n] <= errors["rtn"][n] * 1.01, n
    assert sum(errors["gptq"].values()) < 0.9 * sum(errors["rtn"].values())
    # The report's errors (through the Hessian) are the same quantity.
    for n, r in report.items():
        assert r.rows == 256 and r.method == "awq"
        np.testing.assert_allclose(r.output_error, errors["awq"][n], rtol=1e-3)
        np.testing.assert_allclose(r.rtn_output_error, errors["rtn"][n], rtol=1e-3)


def test_quantize_weights_sequential_and_callable_calibration():
    torch.manual_seed(18)
    net = _Net()
    batches = _calibration(batches=2)
    report = lt.quantize_weights(net, "int4/g32", "gptq", calibration=lambda model: [model(b) for b in batches],
                                 sequential=True, layers=["embed", "head"])
    assert list(report) == ["embed", "head"]
    assert all(r.output_error <= r.rtn_output_error * (1 + 1e-6) for r in report.values())
    with pytest.raises(ValueError):
        lt.quantize_weights(net, "int4/g32", "gptq")  # no calibration
