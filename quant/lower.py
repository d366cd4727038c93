"""Lowering: a float model from ``models`` -> a graph of engine passes (still float).

Each :class:`Pass` is one pass of the engine as docs/NUMERICS.md section 8
describes it: [shift] -> conv (1x1, or KxK which the exporter turns into
shift-im2col + 1x1) -> BN -> [ReLU] -> [+ residual] -> [ReLU] -> [global pool].
The passes reference the float model's own modules, so

* ``run_float(graph, x)`` reproduces ``model(x)`` (tested),
* ``quant.qat`` wraps the same passes with Brevitas quantisers for QAT/PTQ,
* ``quant.export`` turns each pass into one integer ``program.Layer``.

Supported today: the CIFAR ResNet family of ``models.cifar`` (ShiftResNet with
CSC or SC2 modules and projection shortcuts, and the ResNet baselines).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Pass", "Graph", "LoweringError", "lower", "run_float"]


class LoweringError(ValueError):
    """The model contains a structure the engine (program format v1) cannot run."""


@dataclass(eq=False)
class Pass:
    """One engine pass over float tensors (see module docstring)."""

    name: str
    input: str
    output: str
    conv: nn.Module  # nn.Conv2d (1x1 or KxK, groups=1) or nn.Linear
    bn: nn.BatchNorm2d | None = None
    shift: nn.Module | None = None  # models.shift.Shift applied before the conv
    relu: bool = False  # ReLU on the branch, before the residual add
    residual: str | None = None
    relu_after_add: bool = False
    pool: bool = False

    @property
    def signed_output(self) -> bool:
        """Whether the pass's output can be negative (decides the output tensor's type)."""
        if self.relu_after_add:
            return False
        if self.residual is not None:
            return True
        return not self.relu


@dataclass
class Graph:
    """Passes in execution order over named tensors; ``input`` is the image."""

    passes: list[Pass]
    input: str = "input"
    output: str = "logits"
    tensors: list[str] = field(default_factory=list)

    def signed(self, tensor: str) -> bool:
        if tensor == self.input:
            return True
        return next(p for p in self.passes if p.output == tensor).signed_output


def _check_conv(conv: nn.Conv2d, where: str) -> None:
    if not isinstance(conv, nn.Conv2d):
        raise LoweringError(f"{where}: expected a Conv2d, found {type(conv).__name__}")
    k = conv.kernel_size[0]
    if conv.groups != 1 or conv.kernel_size[0] != conv.kernel_size[1] or k % 2 == 0:
        raise LoweringError(f"{where}: only dense convolutions with odd square kernels are supported")
    if conv.padding != (k // 2, k // 2) or conv.padding_mode != "zeros":
        raise LoweringError(f"{where}: a {k}x{k} convolution must use zero 'same' padding {k // 2}")
    if conv.stride[0] != conv.stride[1]:
        raise LoweringError(f"{where}: stride must be equal in both directions")


def _lower_block(block: nn.Module, name: str, src: str, passes: list[Pass]) -> str:
    """Append the passes of one residual block; return the name of its output tensor."""
    from models.modules import BasicBlock, _ShiftModule  # the float model's building blocks

    out = f"{name}.out"
    if isinstance(block, _ShiftModule):
        if block.concat:
            raise LoweringError(f"{name}: concat shortcuts (ShiftNet down-sampling) are not in program format v1")
        if isinstance(block.shortcut, nn.Identity):
            residual = src
        elif isinstance(block.shortcut, nn.Sequential) and isinstance(block.shortcut[0], nn.Conv2d):
            residual = f"{name}.shortcut"
            _check_conv(block.shortcut[0], f"{name}.shortcut")
            passes.append(Pass(f"{name}.shortcut", src, residual, block.shortcut[0], block.shortcut[1]))
        else:
            raise LoweringError(f"{name}: unsupported shortcut {type(block.shortcut).__name__}")
        mid = f"{name}.mid"
        _check_conv(block.conv1, f"{name}.conv1")
        _check_conv(block.conv2, f"{name}.conv2")
        passes.append(Pass(f"{name}.conv1", src, mid, block.conv1, block.bn1,
                           shift=getattr(block, "shift1", None) if block.pre_shift else None, relu=True))
        passes.append(Pass(f"{name}.conv2", mid, out, block.conv2, block.bn2, shift=block.shift2, relu=True,
                           residual=residual))
        return out
    if isinstance(block, BasicBlock):
        if isinstance(block.shortcut, nn.Identity):
            residual = src
        else:
            residual = f"{name}.shortcut"
            _check_conv(block.shortcut[0], f"{name}.shortcut")
            passes.append(Pass(f"{name}.shortcut", src, residual, block.shortcut[0], block.shortcut[1]))
        mid = f"{name}.mid"
        _check_conv(block.conv1, f"{name}.conv1")
        _check_conv(block.conv2, f"{name}.conv2")
        passes.append(Pass(f"{name}.conv1", src, mid, block.conv1, block.bn1, relu=True))
        passes.append(Pass(f"{name}.conv2", mid, out, block.conv2, block.bn2, residual=residual,
                           relu_after_add=True))
        return out
    raise LoweringError(f"{name}: unsupported block {type(block).__name__}")


def lower(model: nn.Module) -> Graph:
    """The engine passes of a float model (modules are shared, not copied)."""
    from models.cifar import CifarResNet

    if not isinstance(model, CifarResNet):
        raise LoweringError(
            f"{type(model).__name__} cannot be lowered yet: program format v1 covers the CIFAR ResNet family "
            "(shiftresnet*/resnet*)"
        )
    passes: list[Pass] = []
    _check_conv(model.conv1, "stem")
    passes.append(Pass("stem", "input", "stem", model.conv1, model.bn1, relu=True))
    tensor = "stem"
    for s, stage in enumerate((model.layer1, model.layer2, model.layer3), start=1):
        for b, block in enumerate(stage):
            tensor = _lower_block(block, f"layer{s}.{b}", tensor, passes)
    # the global average pool is fused into the pass that produces its input
    last = passes[-1]
    last.pool = True
    last.output = "pooled"
    passes.append(Pass("classifier", "pooled", "logits", model.linear))
    tensors = ["input"] + [p.output for p in passes]
    return Graph(passes, "input", "logits", tensors)


def apply_pass(p: Pass, x: torch.Tensor, residual: torch.Tensor | None, conv=None, act=None,
               branch_act=None) -> torch.Tensor:
    """Float (or fake-quant) forward of one pass on an NCHW batch.

    ``conv`` overrides the pass's convolution (the QAT twin), ``branch_act`` is
    applied to the branch before a residual add and ``act`` to the pass result
    (before pooling); both default to identity.
    """
    conv = p.conv if conv is None else conv
    if p.shift is not None:
        x = p.shift(x)
    if isinstance(p.conv, nn.Linear):
        y = conv(torch.flatten(x, 1))[:, :, None, None]
    else:
        y = conv(x)
    if p.bn is not None:
        y = p.bn(y)
    if p.relu:
        y = F.relu(y)
    if residual is not None:
        if branch_act is not None:
            y = branch_act(y)
        y = y + residual
        if p.relu_after_add:
            y = F.relu(y)
    if act is not None:
        y = act(y)
    if p.pool:
        y = y.mean(dim=(2, 3), keepdim=True)
    return y


def run_float(graph: Graph, x: torch.Tensor) -> torch.Tensor:
    """Execute the passes in float; equals the model's own forward (logits [N, classes])."""
    tensors = {graph.input: x}
    for p in graph.passes:
        res = tensors[p.residual] if p.residual else None
        tensors[p.output] = apply_pass(p, tensors[p.input], res)
    return torch.flatten(tensors[graph.output], 1)
