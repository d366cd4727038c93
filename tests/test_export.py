"""Brevitas twin -> integer program -> golden model, against the fake-quant model itself."""

import pytest
import torch

import models
from quant import golden
from quant.export import to_program
from quant.qat import QuantNet, calibrate


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
        gold = _golden_tensors(net, program, x)
        fake = _fake_quant_ints(net, program, x)
        assert set(fake) <= set(gold)
        for tensor, value in fake.items():
            mismatch = (gold[tensor] != value).nonzero()
            assert len(mismatch) == 0, (
                f"{tensor}: {len(mismatch)} words differ, first at {mismatch[0].tolist()}: "
                f"golden {gold[tensor][tuple(mismatch[0])]} brevitas {value[tuple(mismatch[0])]}")
        logits, _ = net(x, return_tensors=True)
        expect = torch.round(logits[0].double() / program.tensors["logits"].scale).long()
        assert torch.equal(gold["logits"].flatten(), expect)


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
