"""Brevitas quantisation-aware twin of a float model, shaped like the integer program.

``prepare(model, "w8a8")`` lowers the float model to engine passes
(``quant.lower``), swaps every convolution for a Brevitas ``QuantConv2d`` /
``QuantLinear`` *in place* (so the checkpoint holds one copy of each weight) and
puts one activation quantiser on every tensor of the program. The quantisers sit
exactly where the integer program rounds, with the same rounding rule (half up,
NUMERICS.md section 2), so the exporter can read the scales off this module and
the golden model reproduces it (bit for bit where the scales are powers of two):

* each pass output is quantised once (unsigned after a ReLU, signed otherwise);
* a projection shortcut is quantised with the quantiser of the block output it
  is added to, so the residual add is a plain integer add;
* the branch of a residual pass is quantised with the output's quantiser before
  the add (NUMERICS.md section 6), the sum once more (a clamp);
* the global pool shares the quantiser of the tensor it pools.

The first layer (stem) and the classifier keep 8-bit weights, the input tensor
8-bit activations; the classifier uses a per-tensor weight scale so that its
raw integer logits order classes like the real logits do.

``fold_bn(net)`` turns a trained twin into the *BN-folded* twin for the last
fine-tuning stage (docs/TRAINING.md): every BatchNorm is merged into its
convolution's weights and bias, and the bias is quantised on the accumulator
grid (``s_in * s_w[c]``, round half up) exactly as the exporter does. With
power-of-two scales that twin computes, in float32, exactly what the integer
program computes (tests/test_export.py).
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from .lower import Graph, Pass, apply_pass, lower

__all__ = ["BITS", "QuantNet", "prepare", "calibrate", "fold_bn", "accumulator_bias", "RoundHalfUpSte",
           "BIAS_LIMIT"]

#: bits name -> (weight bits, activation bits)
BITS = {"w8a8": (8, 8), "w4a4": (4, 4)}
SCALINGS = ("float", "po2")


class RoundHalfUpSte(nn.Module):
    """``floor(x + 1/2)`` with a straight-through gradient: the rounding rule of NUMERICS.md."""

    def __init__(self):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + (torch.floor(x + 0.5) - x).detach()


#: Largest magnitude of an integer bias (NUMERICS.md section 1: |bias| < 2**30).
BIAS_LIMIT = (1 << 30) - 1


def accumulator_bias(bias: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
    """A real bias as integers on the accumulator grid: ``floor(bias / unit + 1/2)`` in float64.

    ``unit = s_in * s_w[c]`` is the real value of one accumulator step. The
    exporter (``quant.export``) and the BN-folded twin both round with this
    function, so they always agree on every bias word. The result is a float64
    tensor holding integers (gradient straight through, see ``RoundHalfUpSte``).
    """
    return RoundHalfUpSte()(bias.double() / unit.double())


class _AccumulatorBias:
    """Mixin for a Brevitas layer whose float bias is added on the accumulator grid.

    The layer's ``forward(x, input_scale)`` takes the real scale of its
    (already quantised) input; the bias then becomes
    ``clamp(accumulator_bias(b, s_in * s_w[c])) * s_in * s_w[c]``, the value of
    the integer bias the exporter writes. Without ``input_scale`` (for example
    during calibration, when the activation quantisers are off) the bias is
    added as a float.
    """

    _acc_input_scale = None

    def forward(self, x, input_scale=None):
        self._acc_input_scale = input_scale
        try:
            return super().forward(x)
        finally:
            self._acc_input_scale = None

    def inner_forward_impl(self, x, quant_weight, quant_bias):
        s_in = self._acc_input_scale
        w_scale = getattr(quant_weight, "scale", None)
        if quant_bias is not None and s_in is not None and w_scale is not None:
            unit = (s_in.detach().double() * w_scale.detach().double()).flatten()
            unit = unit.expand(quant_bias.shape[0]) if unit.numel() == 1 else unit
            q = accumulator_bias(quant_bias, unit).clamp(-BIAS_LIMIT, BIAS_LIMIT)
            quant_bias = (q * unit).to(quant_bias.dtype)
        return super().inner_forward_impl(x, quant_weight, quant_bias)


def _acc_bias_classes():
    from brevitas.nn import QuantConv2d, QuantLinear

    global _ACC_CLASSES
    if _ACC_CLASSES is None:
        conv = type("AccBiasQuantConv2d", (_AccumulatorBias, QuantConv2d),
                    {"__doc__": "QuantConv2d with its bias on the accumulator grid (quant.qat.fold_bn)."})
        linear = type("AccBiasQuantLinear", (_AccumulatorBias, QuantLinear),
                      {"__doc__": "QuantLinear with its bias on the accumulator grid (quant.qat.fold_bn)."})
        _ACC_CLASSES = conv, linear
    return _ACC_CLASSES


_ACC_CLASSES = None


def _quantizers(scaling: str):
    """Brevitas quantiser classes (weight per-channel, weight per-tensor, signed act, unsigned act)."""
    from brevitas.quant import fixed_point as fp
    from brevitas.quant import scaled_int as si

    if scaling == "float":
        bases = (si.Int8WeightPerChannelFloat, si.Int8WeightPerTensorFloat,
                 si.Int8ActPerTensorFloat, si.Uint8ActPerTensorFloat)
    else:
        bases = (fp.Int8WeightPerChannelFixedPoint, fp.Int8WeightPerTensorFixedPoint,
                 fp.Int8ActPerTensorFixedPoint, fp.Uint8ActPerTensorFixedPoint)
    # activations round half up, like the integer datapath
    signed = type("SignedAct", (bases[2],), {"float_to_int_impl": RoundHalfUpSte})
    unsigned = type("UnsignedAct", (bases[3],), {"float_to_int_impl": RoundHalfUpSte})
    return bases[0], bases[1], signed, unsigned


def _key(tensor: str) -> str:
    return tensor.replace(".", "_")


def _replace_module(root: nn.Module, old: nn.Module, new: nn.Module) -> None:
    for parent in root.modules():
        for name, child in parent.named_children():
            if child is old:
                setattr(parent, name, new)
                return
    raise KeyError("module to replace not found in the model")


class QuantNet(nn.Module):
    """The fake-quantised twin (see module docstring).

    Parameters
    ----------
    model : nn.Module
        A float model from ``models`` (it is modified in place: its convolutions
        become Brevitas layers initialised from the float weights).
    bits : str
        ``"w8a8"`` or ``"w4a4"``.
    scaling : str
        ``"float"`` (learned real scales; best accuracy) or ``"po2"`` (powers of
        two: the golden model then matches bit for bit, see tests).
    """

    def __init__(self, model: nn.Module, bits: str = "w8a8", scaling: str = "float"):
        super().__init__()
        from brevitas.nn import QuantConv2d, QuantIdentity, QuantLinear

        if bits not in BITS:
            raise ValueError(f"bits must be one of {sorted(BITS)}, not {bits!r}")
        if scaling not in SCALINGS:
            raise ValueError(f"scaling must be one of {SCALINGS}, not {scaling!r}")
        self.bits, self.scaling = bits, scaling
        self.bn_folded = False
        w_bits, a_bits = BITS[bits]
        self.weight_bits, self.act_bits = w_bits, a_bits
        per_channel, per_tensor, signed_act, unsigned_act = _quantizers(scaling)
        self._weight_quant = per_channel, per_tensor

        self.model = model
        self.graph: Graph = lower(model)
        passes = self.graph.passes

        # which quantiser each tensor uses: shortcuts share the block output's
        shares = {p.residual: p.output for p in passes if p.residual and p.residual.endswith(".shortcut")}
        self.quantiser_of = {t: shares.get(t, t) for t in self.graph.tensors}
        self.quantiser_of[self.graph.output] = None  # raw logits

        acts = {}
        for tensor, owner in self.quantiser_of.items():
            if owner is None or _key(owner) in acts:
                continue
            is_input = owner == self.graph.input
            signed = self.graph.signed(owner)
            acts[_key(owner)] = QuantIdentity(act_quant=signed_act if signed else unsigned_act,
                                              bit_width=8 if is_input else a_bits, return_quant_tensor=False)
        self.acts = nn.ModuleDict(acts)

        for p in passes:
            old = p.conv
            new = self._quant_layer(p, QuantConv2d, QuantLinear, bias=old.bias is not None)
            with torch.no_grad():
                new.weight.copy_(old.weight)
                if old.bias is not None:
                    new.bias.copy_(old.bias)
            _replace_module(model, old, new)
            p.conv = new

    def _quant_layer(self, p: Pass, conv_cls, linear_cls, bias: bool) -> nn.Module:
        """A Brevitas layer with the geometry of ``p.conv`` and the pass's weight quantiser."""
        per_channel, per_tensor = self._weight_quant
        old = p.conv
        first_or_last = p is self.graph.passes[0] or isinstance(old, nn.Linear)
        bits_here = 8 if first_or_last else self.weight_bits
        if isinstance(old, nn.Linear):
            return linear_cls(old.in_features, old.out_features, bias=bias,
                              weight_quant=per_tensor, weight_bit_width=bits_here)
        return conv_cls(old.in_channels, old.out_channels, old.kernel_size, stride=old.stride,
                        padding=old.padding, bias=bias, weight_quant=per_channel, weight_bit_width=bits_here)

    def act_for(self, tensor: str) -> nn.Module | None:
        owner = self.quantiser_of[tensor]
        return None if owner is None else self.acts[_key(owner)]

    def scale_of(self, tensor: str) -> float:
        """The real scale of a program tensor (its quantiser's scale)."""
        return float(self.act_for(tensor).act_quant.scale().detach())

    def forward(self, x: torch.Tensor, return_tensors: bool = False):
        g = self.graph
        tensors = {g.input: self.act_for(g.input)(x)}
        for p in g.passes:
            act = self.act_for(p.output)
            res = tensors[p.residual] if p.residual else None
            conv = None
            if isinstance(p.conv, _AccumulatorBias):  # BN folded: the bias needs the input's scale
                s_in = self.act_for(p.input).act_quant.scale()
                conv = functools.partial(p.conv, input_scale=s_in)
            y = apply_pass(p, tensors[p.input], res, conv=conv, branch_act=act, act=act)
            if p.pool and act is not None:
                y = act(y)
            tensors[p.output] = y
        logits = torch.flatten(tensors[g.output], 1)
        return (logits, tensors) if return_tensors else logits


def prepare(model: nn.Module, bits: str, scaling: str = "float") -> nn.Module:
    """The model to train for ``bits`` ("float" returns the model itself)."""
    if bits == "float":
        return model
    return QuantNet(model, bits, scaling)


@torch.no_grad()
def calibrate(net: QuantNet, batches) -> QuantNet:
    """Post-training calibration of the activation scales from a few float batches (no weight update)."""
    from brevitas.graph.calibrate import calibration_mode

    was_training = net.training
    net.eval()
    with calibration_mode(net):
        for x in batches:
            net(x)
    net.train(was_training)
    return net


@torch.no_grad()
def fold_bn(net: QuantNet) -> QuantNet:
    """Merge every BatchNorm into its convolution; put every bias on the accumulator grid (in place).

    For a pass with BatchNorm (eval statistics), ``gain = gamma / sqrt(var + eps)``:

        W'[c] = gain[c] * W[c]          b'[c] = gain[c] * (b[c] - mean[c]) + beta[c]

    ``p.bn`` becomes None (the BatchNorm module of the float model an
    ``nn.Identity``) and every layer, the classifier included, is rebuilt as a
    Brevitas layer whose bias is quantised like the exporter's
    (``accumulator_bias``: integer, scale ``s_in * s_w[c]``, round half up, at
    most ``BIAS_LIMIT``). The weight quantisers are those of the twin; their
    scales are weight statistics, so they follow the folded weights (the BN gain
    is absorbed into the per-channel scale). The activation quantisers are kept.

    With ``scaling="po2"`` the folded twin equals the exported integer program
    bit for bit (every requantisation factor is then a power of two). Returns
    ``net``, marked ``net.bn_folded = True``; folding twice is an error.
    """
    if net.bn_folded:
        raise ValueError("the BatchNorm layers of this QuantNet are folded already")
    conv_cls, linear_cls = _acc_bias_classes()
    for p in net.graph.passes:
        old = p.conv
        weight = old.weight.detach().double()
        c_out = weight.shape[0]
        bias = (old.bias.detach().double() if old.bias is not None
                else torch.zeros(c_out, dtype=torch.float64, device=weight.device))
        if p.bn is not None:
            bn = p.bn
            gain = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
            bias = gain * (bias - bn.running_mean.double()) + bn.bias.detach().double()
            weight = weight * gain.view(-1, *([1] * (weight.dim() - 1)))
            _replace_module(net.model, bn, nn.Identity())
            p.bn = None
        new = net._quant_layer(p, conv_cls, linear_cls, bias=True).to(old.weight.device)
        new.weight.copy_(weight.to(old.weight.dtype))
        new.bias.copy_(bias.to(old.weight.dtype))
        new.train(old.training)
        _replace_module(net.model, old, new)
        p.conv = new
    net.bn_folded = True
    return net
