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
"""

from __future__ import annotations

import torch
from torch import nn

from .lower import Graph, Pass, apply_pass, lower

__all__ = ["BITS", "QuantNet", "prepare", "calibrate", "RoundHalfUpSte"]

#: bits name -> (weight bits, activation bits)
BITS = {"w8a8": (8, 8), "w4a4": (4, 4)}
SCALINGS = ("float", "po2")


class RoundHalfUpSte(nn.Module):
    """``floor(x + 1/2)`` with a straight-through gradient: the rounding rule of NUMERICS.md."""

    def __init__(self):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + (torch.floor(x + 0.5) - x).detach()


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
        w_bits, a_bits = BITS[bits]
        self.weight_bits, self.act_bits = w_bits, a_bits
        per_channel, per_tensor, signed_act, unsigned_act = _quantizers(scaling)

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
            first_or_last = p is passes[0] or isinstance(p.conv, nn.Linear)
            bits_here = 8 if first_or_last else w_bits
            old = p.conv
            if isinstance(old, nn.Linear):
                new = QuantLinear(old.in_features, old.out_features, bias=old.bias is not None,
                                  weight_quant=per_tensor, weight_bit_width=bits_here)
            else:
                new = QuantConv2d(old.in_channels, old.out_channels, old.kernel_size, stride=old.stride,
                                  padding=old.padding, bias=old.bias is not None,
                                  weight_quant=per_channel, weight_bit_width=bits_here)
            with torch.no_grad():
                new.weight.copy_(old.weight)
                if old.bias is not None:
                    new.bias.copy_(old.bias)
            _replace_module(model, old, new)
            p.conv = new

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
            y = apply_pass(p, tensors[p.input], res, branch_act=act, act=act)
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
