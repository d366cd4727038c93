"""Brevitas twin -> integer program -> golden model, against the fake-quant model itself."""

import pytest
import torch

import models
from quant import golden
from quant.export import to_program
from quant.qat import QuantNet, calibrate, fold_bn


def _calibrated(name, bits, scaling, seed=0, **kwargs):
    torch.manual_seed(seed)
    model = models.get(name, **kwargs)
    net = QuantNet(model, bits, scaling)
    g = torch.Generator().manual_seed(seed)
    calibrate(net, [torch.randn(8, 3, 32, 32, generator=g) for _ in range(2)])
    return net.eval()


def _golden_tensors(net, program, x):
    q_in = torch.floor(x[0].permute(1, 2, 0).double() / program.tensors["input"].scale + 0.5).clamp(-128, 127)
    return golden.run(program, q_in.long())


def _fake_quant_ints(net, program, x):
    _, tensors = net(x, return_tensors=True)
    out = {}
    for name, value in tensors.items():
        if name == program.output:
            continue
        hwc = value[0].permute(1, 2, 0)
        out[name] = torch.round(hwc.double() / program.tensors[name].scale).long()
    return out


@pytest.mark.parametrize("name,kwargs,bits", [
    ("shiftresnet20", {"expansion": 1}, "w8a8"),
    ("shiftresnet20", {"expansion": 3}, "w4a4"),
    ("resnet20", {}, "w8a8"),
])
def test_golden_equals_brevitas_bit_for_bit_with_po2_scales(name, kwargs, bits):
    """With power-of-two scales and no BN the quantisers allow exactness: every word must match."""
    net = _calibrated(name, bits, "po2", **kwargs)
    for p in net.graph.passes:
        p.bn = None  # a BN gain would make the requantisation factor non-dyadic
        if p.conv.bias is not None:
            torch.nn.init.zeros_(p.conv.bias)
    program = to_program(net, model=name, model_args=kwargs)
    for seed in range(2):
        x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(100 + seed))
        gold = _assert_golden_equals_brevitas(net, program, x)
        logits, _ = net(x, return_tensors=True)
        expect = torch.round(logits[0].double() / program.tensors["logits"].scale).long()
        assert torch.equal(gold["logits"].flatten(), expect)


def _assert_golden_equals_brevitas(net, program, x):
    """Every word of every tensor the Brevitas twin exposes equals the golden model's; returns
    the golden tensors."""
    gold = _golden_tensors(net, program, x)
    fake = _fake_quant_ints(net, program, x)
    assert set(fake) <= set(gold)
    for tensor, value in fake.items():
        mismatch = (gold[tensor] != value).nonzero()
        assert len(mismatch) == 0, (
            f"{tensor}: {len(mismatch)} words differ, first at {mismatch[0].tolist()}: "
            f"golden {gold[tensor][tuple(mismatch[0])]} brevitas {value[tuple(mismatch[0])]}")
    return gold


def test_float_scales_with_bn_agree_closely():
    """With real scales and folded BN the golden model approximates the twin (measured, not assumed)."""
    net = _calibrated("shiftresnet20", "w8a8", "float", expansion=1)
    for m in net.modules():  # non-trivial BN statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(-1.5, 1.5)
    calibrate(net, [torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(5))])
    program = to_program(net, model="shiftresnet20", model_args={"expansion": 1})
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    gold = _golden_tensors(net, program, x)
    fake = _fake_quant_ints(net, program, x)
    for tensor, value in fake.items():
        diff = (gold[tensor] - value).abs()
        # off-by-one LSB from multiplier/bias rounding may appear and propagate a little
        assert diff.float().mean() < 0.05, tensor
    assert (diff.max() <= 4)


def _random_bn(net, seed):
    """Non-trivial BN statistics and affine parameters (negative gains included)."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
            m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) * 3.0 - 1.5)
            m.bias.data.copy_(torch.rand(n, generator=g) * 0.6 - 0.3)


@pytest.mark.parametrize("name,kwargs,bits", [
    ("shiftresnet20", {"expansion": 1}, "w8a8"),
    ("shiftresnet20", {"expansion": 3}, "w4a4"),
    ("resnet20", {}, "w8a8"),
])
def test_bn_folded_twin_equals_golden_bit_for_bit(name, kwargs, bits):
    """fold_bn: with BN (random statistics) folded into po2 weights and an accumulator-grid bias, the
    Brevitas twin *is* the integer program: every word of every tensor and every logit match."""
    net = _calibrated(name, bits, "po2", **kwargs)
    _random_bn(net, seed=3)
    with torch.no_grad():  # a non-zero classifier bias too (its rounding must match as well)
        net.graph.passes[-1].conv.bias.uniform_(-0.5, 0.5, generator=torch.Generator().manual_seed(4))
    calibrate(net, [torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(5))])
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    before = net(x)
    fold_bn(net)
    net.eval()
    assert all(p.bn is None for p in net.graph.passes)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert torch.allclose(net(x), before, atol=0.5)  # the same function, up to weight re-quantisation
    program = to_program(net, model=name, model_args=kwargs)
    assert any((layer.bias != 0).any() for layer in program.layers)
    for i in range(len(x)):
        xi = x[i:i + 1]
        gold = _assert_golden_equals_brevitas(net, program, xi)
        logits, _ = net(xi, return_tensors=True)
        scaled = logits[0].double() / program.tensors["logits"].scale
        assert torch.equal(scaled, torch.round(scaled))  # the twin's logits lie on the accumulator grid
        assert torch.equal(gold["logits"].flatten(), scaled.long())


def test_fold_bn_bias_rounds_like_the_exporter():
    """The twin's bias is exactly the exporter's integer bias times the accumulator step (ties round up)."""
    net = _calibrated("shiftresnet20", "w8a8", "po2", expansion=1)
    fold_bn(net)
    net.eval()
    p = net.graph.passes[1]
    s_in = net.act_for(p.input).act_quant.scale()
    unit = (s_in.double() * p.conv.quant_weight().scale.double().flatten())
    with torch.no_grad():  # exact ties (k + 1/2) and values just below them
        k = torch.arange(p.conv.out_channels, dtype=torch.float64) - 8
        p.conv.bias.copy_(((k + 0.5) * unit).float())
        p.conv.bias[::2] = torch.nextafter(p.conv.bias[::2], torch.tensor(-1e30))
    program = to_program(net, model="shiftresnet20", model_args={"expansion": 1})
    expect = torch.floor(p.conv.bias.double() / unit + 0.5)
    assert torch.equal(torch.from_numpy(program.layers[1].bias).double(), expect)
    assert (expect[1::2] == k[1::2] + 1).all() and (expect[::2] == k[::2]).all()
    # the twin adds that same integer bias: a zero input leaves only the bias in the accumulator
    y = p.conv(torch.zeros(1, p.conv.in_channels, 4, 4), input_scale=s_in)
    assert torch.equal((y[0, :, 0, 0].double() / unit), expect)
    with pytest.raises(ValueError, match="folded already"):
        fold_bn(net)


def test_negative_bn_gain_flips_weights():
    net = _calibrated("shiftresnet20", "w8a8", "float", expansion=1)
    bn = net.graph.passes[1].bn
    bn.weight.data[:] = -bn.weight.data.abs() - 0.1
    program = to_program(net, model="shiftresnet20", model_args={"expansion": 1})
    assert (program.layers[1].requant.multiplier > 0).all()


def test_export_cli_untrained_and_errors(tmp_path):
    import subprocess
    import sys

    from quant import program

    out = tmp_path / "u.shiftprog"
    ok = subprocess.run([sys.executable, "-m", "quant.export", "--untrained", "shiftresnet20", "--expansion", "1",
                         "-o", str(out)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    p = program.load(out)
    assert p.meta["trained"] is False and p.model_args == {"expansion": 1}
    assert len(p.layers) == 1 + 9 * 2 + 2 + 1  # stem, 9 CSC blocks, 2 projection shortcuts, classifier
    for argv in (["--untrained", "nope"], ["--untrained", "shiftnet-c"], [str(tmp_path / "missing.pt")]):
        bad = subprocess.run([sys.executable, "-m", "quant.export", *argv, "-o", str(tmp_path / "x")],
                             capture_output=True, text=True)
        assert bad.returncode == 2, bad.stderr
        assert bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr
