"""CIFAR networks of the paper's Table 5: ShiftResNet, ResNet, reduced ResNets.

All share the authors' skeleton (alvinwan/shiftresnet-cifar, itself Kuang
Liu's pytorch-cifar): conv3x3(in -> w1) + BN + ReLU, three stages of ``n``
blocks at widths (w1, w2, w3) = (16, 32, 64) with strides 1/2/2, global
average pooling, Linear(w3 -> classes); ``depth = 6n + 2``.

* ShiftResNet-D(E): blocks are :class:`~models.modules.CSC` (or SC2) with
  expansion E.
* ResNet-D: blocks are :class:`~models.modules.BasicBlock` with the
  authors' option-B (conv1x1 + BN) projection shortcut.
* ResNet-D module-wise reduced: every block's inner width ``mid = floor(w/r)``
  (the authors' ``--reduction-mode=block``).
* ResNet-D net-wise reduced: every width, the stem's included, is
  ``floor(w*s)`` (the authors' ``--reduction-mode=net``, ``s = 1/sqrt(r)``).

The reduced variants take the expansion E of the ShiftResNet they are
compared with and pick their factor from that ShiftResNet's parameter count
(same depth, classes and input channels), as Table 5 does: module-wise takes
the smallest network with at least that many parameters (what the authors
did), net-wise the nearest one (see docs/MODELS.md).
"""

from __future__ import annotations

from fractions import Fraction
from typing import Callable, Sequence

import torch
from torch import nn

from .modules import CSC, SC2, BasicBlock, conv3x3

__all__ = [
    "CifarResNet",
    "shiftresnet",
    "resnet",
    "resnet_module_reduced",
    "resnet_net_reduced",
    "shiftresnet_params",
    "resnet_params",
    "WIDTHS",
]

WIDTHS = (16, 32, 64)
STRIDES = (1, 2, 2)
SHIFT_MODULES = {"csc": CSC, "sc2": SC2}


def blocks_per_stage(depth: int) -> int:
    """n for a CIFAR ResNet of the given depth (depth = 6n + 2)."""
    if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(f"depth must be 6n+2 (20, 56, 110, ...), got {depth!r}")
    return (depth - 2) // 6


class CifarResNet(nn.Module):
    """The CIFAR ResNet skeleton shared by every Table 5 model.

    Parameters
    ----------
    make_block : callable
        ``make_block(stage, in_channels, out_channels, stride) -> nn.Module``.
    n : int
        Blocks per stage.
    widths : sequence of 3 ints
        Stage widths; the stem outputs ``widths[0]`` channels.
    num_classes : int
        Classifier outputs.
    in_channels : int
        Image channels.
    """

    def __init__(self, make_block: Callable[[int, int, int, int], nn.Module],
                 n: int, widths: Sequence[int] = WIDTHS,
                 num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        if num_classes < 1 or in_channels < 1:
            raise ValueError("num_classes and in_channels must be >= 1")
        self.conv1 = conv3x3(in_channels, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        cin = widths[0]
        stages = []
        for s, (w, stride) in enumerate(zip(widths, STRIDES)):
            blocks = []
            for i in range(n):
                blocks.append(make_block(s, cin, w, stride if i == 0 else 1))
                cin = w
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(torch.flatten(self.pool(x), 1))


def shiftresnet(depth: int, expansion: float = 1, num_classes: int = 10,
                in_channels: int = 3, kernel_size: int = 3, dilation: int = 1,
                grouping: str = "interleaved", module: str = "csc") -> CifarResNet:
    """ShiftResNet-depth with expansion E (paper Table 5, authors' code).

    Parameters
    ----------
    depth : int
        20, 56 or 110 (any 6n+2).
    expansion : float
        E; each module's middle width is ``int(E * out_channels)``.
    num_classes, in_channels : int
        Classifier outputs and image channels.
    kernel_size, dilation : int
        Shift neighbourhood and dilation.
    grouping : str
        "interleaved" (authors' code, default) or "grouped" (paper prose).
    module : str
        "csc" (default) or "sc2".

    Returns
    -------
    CifarResNet
    """
    if module not in SHIFT_MODULES:
        raise ValueError(f"module must be one of {sorted(SHIFT_MODULES)}, "
                         f"got {module!r}")
    cls = SHIFT_MODULES[module]

    def make(stage, cin, cout, stride):
        return cls(cin, cout, stride, expansion=expansion,
                   kernel_size=kernel_size, dilation=dilation,
                   grouping=grouping, shortcut="projection")

    net = CifarResNet(make, blocks_per_stage(depth), WIDTHS, num_classes,
                      in_channels)
    net.expansion = expansion
    return net


def resnet(depth: int, num_classes: int = 10, in_channels: int = 3,
           widths: Sequence[int] = WIDTHS,
           mids: Sequence[int] | None = None) -> CifarResNet:
    """ResNet-depth baseline (BasicBlock, option-B projection shortcut).

    Parameters
    ----------
    depth : int
        20, 56 or 110 (any 6n+2).
    num_classes, in_channels : int
        Classifier outputs and image channels.
    widths : sequence of 3 ints
        Stage widths (net-wise reduction changes these).
    mids : sequence of 3 ints, optional
        Inner width of the blocks of each stage (module-wise reduction);
        equal to ``widths`` by default.
    """
    mids = tuple(widths) if mids is None else tuple(mids)

    def make(stage, cin, cout, stride):
        return BasicBlock(cin, cout, stride, mid_channels=mids[stage])

    net = CifarResNet(make, blocks_per_stage(depth), widths, num_classes,
                      in_channels)
    net.widths, net.mids = tuple(widths), mids
    return net


# ---------------------------------------------------------------------------
# Closed-form parameter counts (used to pick reduction factors quickly; the
# tests check them against the built models).

def _skeleton_params(n, widths, block, num_classes, in_channels):
    w1 = widths[0]
    total = in_channels * 9 * w1 + 2 * w1  # stem conv + BN
    cin = w1
    for s, (w, stride) in enumerate(zip(widths, STRIDES)):
        for i in range(n):
            st = stride if i == 0 else 1
            total += block(s, cin, w)
            if st != 1 or cin != w:
                total += cin * w + 2 * w  # projection conv + BN
            cin = w
    return total + cin * num_classes + num_classes


def shiftresnet_params(depth: int, expansion: float = 1,
                       num_classes: int = 10, in_channels: int = 3) -> int:
    """Parameter count of :func:`shiftresnet` (BN affine included)."""
    def block(s, cin, w):
        mid = int(expansion * w)
        return cin * mid + 2 * mid + mid * w + 2 * w
    return _skeleton_params(blocks_per_stage(depth), WIDTHS, block,
                            num_classes, in_channels)


def resnet_params(depth: int, num_classes: int = 10, in_channels: int = 3,
                  widths: Sequence[int] = WIDTHS,
                  mids: Sequence[int] | None = None) -> int:
    """Parameter count of :func:`resnet` (BN affine included)."""
    mids = tuple(widths) if mids is None else tuple(mids)

    def block(s, cin, w):
        m = mids[s]
        return cin * 9 * m + 2 * m + m * 9 * w + 2 * w
    return _skeleton_params(blocks_per_stage(depth), widths, block,
                            num_classes, in_channels)


def _floor_scaled(widths, factor: Fraction):
    return tuple(max(1, (w * factor.numerator) // factor.denominator)
                 for w in widths)


def _round_scaled(widths, factor: Fraction):
    # nearest integer, halves up (exact: Fractions, no float surprises)
    return tuple(max(1, int(w * factor + Fraction(1, 2))) for w in widths)


def _candidates():
    # Multipliers up to 4x on a grid of half steps of every width: this
    # contains every point where floor(w * f) or round(w * f) changes.
    return sorted({Fraction(m, 2 * w) for w in WIDTHS
                   for m in range(1, 8 * w + 1)})


def _closest_factor(count: Callable[[Fraction], int], target: int) -> Fraction:
    """Factor whose count is closest to target (ties -> smaller factor)."""
    return min(_candidates(), key=lambda f: (abs(count(f) - target), f))


def _smallest_factor_at_least(count: Callable[[Fraction], int],
                              target: int) -> Fraction:
    """Factor with the smallest count that is still >= target."""
    ok = [f for f in _candidates() if count(f) >= target]
    if not ok:
        raise ValueError(f"no reduced ResNet reaches {target:,} parameters "
                         f"(inner widths are limited to 4x the stage width)")
    return min(ok, key=lambda f: (count(f), f))


def resnet_module_reduced(depth: int, expansion: float = 1,
                          num_classes: int = 10, in_channels: int = 3,
                          reduction: float | None = None) -> CifarResNet:
    """ResNet with every block's inner width reduced ("module-wise", Table 5).

    ``mid = floor(w / r)`` per stage, as the authors' ``--reduction-mode=block``.

    Parameters
    ----------
    depth : int
        20, 56 or 110.
    expansion : float
        E of the ShiftResNet-depth whose parameter budget to match.
    num_classes, in_channels : int
        Classifier outputs and image channels.
    reduction : float, optional
        Explicit r. When omitted, r gives the smallest network whose
        parameter count is at least that of ShiftResNet-depth(E) (same
        classes/channels). This rule reproduces the authors' recorded
        choices: r = 8, i.e. reductions 7.2 / 7.6 / 7.8 for ResNet-20/56/110
        at E = 1, and r = 2.8 (96,206 params) for ResNet-20 at E = 3.
    """
    if reduction is None:
        target = shiftresnet_params(depth, expansion, num_classes, in_channels)
        keep = _smallest_factor_at_least(
            lambda f: resnet_params(depth, num_classes, in_channels,
                                    mids=_floor_scaled(WIDTHS, f)), target)
    else:
        if not reduction > 0:
            raise ValueError(f"reduction must be > 0, got {reduction!r}")
        keep = 1 / Fraction(reduction).limit_denominator(10 ** 6)
    net = resnet(depth, num_classes, in_channels,
                 mids=_floor_scaled(WIDTHS, keep))
    net.reduction = float(1 / keep)
    net.expansion = expansion
    return net


def resnet_net_reduced(depth: int, expansion: float = 1,
                       num_classes: int = 10, in_channels: int = 3,
                       scale: float | None = None) -> CifarResNet:
    """ResNet with all widths scaled ("net-wise", Table 5).

    Widths (stem included) are ``round(w * s)``. (The authors'
    ``--reduction-mode=net`` uses ``floor(w / sqrt(r))``; rounding reaches
    every Table 5 budget within 2%, flooring misses two of them by 2.3% and
    2.8%.)

    Parameters
    ----------
    depth : int
        20, 56 or 110.
    expansion : float
        E of the ShiftResNet-depth whose parameter budget to match.
    num_classes, in_channels : int
        Classifier outputs and image channels.
    scale : float, optional
        Explicit width multiplier s; when omitted it is chosen so the
        parameter count is nearest to ShiftResNet-depth(E)'s.
    """
    if scale is None:
        target = shiftresnet_params(depth, expansion, num_classes, in_channels)
        s = _closest_factor(
            lambda f: resnet_params(depth, num_classes, in_channels,
                                    widths=_round_scaled(WIDTHS, f)), target)
    else:
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale!r}")
        s = Fraction(scale).limit_denominator(10 ** 6)
    widths = _round_scaled(WIDTHS, s)
    net = resnet(depth, num_classes, in_channels, widths=widths)
    net.scale = float(s)
    net.expansion = expansion
    return net
