"""Residual modules built from the shift operation, and the plain baseline.

* :class:`CSC` -- the paper's Conv-Shift-Conv module, as in the authors'
  CIFAR code: 1x1 conv -> BN -> ReLU -> shift -> 1x1 conv (stride) -> BN ->
  ReLU, plus a shortcut, no ReLU after the add.
* :class:`SC2` -- the paper's Shift-Conv-Shift-Conv variant: the same
  module with a shift in front of *each* 1x1 convolution.
* :class:`BasicBlock` -- ResNet's two-3x3-conv block (the baseline).

Both shift modules support two shortcut styles:

``"projection"`` (authors' CIFAR code)
    identity, or conv1x1(stride) + BN when the stride or the channel count
    changes; branch and shortcut are added.
``"concat"`` (ShiftNet, paper Fig. 3, ShuffleNet-style)
    on a stride-2 module the shortcut is a 3x3/s2 average pool (padding 1)
    of the input and is *concatenated* after the branch, so the branch only
    produces ``out_channels - in_channels`` channels; otherwise identity add.
"""

from __future__ import annotations

import torch
from torch import nn

from .shift import Shift

__all__ = ["CSC", "SC2", "BasicBlock", "conv1x1", "conv3x3"]

SHORTCUTS = ("projection", "concat")


def conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution without bias (BN follows)."""
    return nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False)


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution, padding 1, without bias (BN follows)."""
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1,
                     bias=False)


def _check_positive(**kw) -> None:
    for k, v in kw.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{k} must be a positive int, got {v!r}")


class _ShiftModule(nn.Module):
    """Common body of :class:`CSC` and :class:`SC2`.

    Parameters
    ----------
    in_channels, out_channels : int
        Module input / output channels.
    stride : int
        1 or 2; it sits in the second 1x1 conv, so every shift runs at the
        input resolution (as in the authors' code).
    expansion : float
        E; the middle width is ``int(E * branch_out)`` where ``branch_out``
        is ``out_channels`` (or ``out_channels - in_channels`` for a
        down-sampling "concat" module).
    kernel_size, dilation : int
        Shift neighbourhood (odd k) and its dilation.
    grouping : str
        Offset preset, "interleaved" (authors' code) or "grouped" (paper).
    shortcut : str
        "projection" or "concat" (see module docstring).
    """

    pre_shift = False  # SC2 adds a shift before the first 1x1 conv

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1,
                 expansion: float = 1.0, kernel_size: int = 3,
                 dilation: int = 1, grouping: str = "interleaved",
                 shortcut: str = "projection"):
        super().__init__()
        _check_positive(in_channels=in_channels, out_channels=out_channels)
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride!r}")
        if not expansion > 0:
            raise ValueError(f"expansion must be > 0, got {expansion!r}")
        if shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut must be one of {SHORTCUTS}, "
                             f"got {shortcut!r}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.stride, self.expansion = stride, expansion
        self.concat = shortcut == "concat" and stride != 1 \
            and out_channels != in_channels
        if self.concat and out_channels < in_channels:
            raise ValueError("a concat down-sampling module needs "
                             "out_channels > in_channels")
        branch_out = out_channels - in_channels if self.concat else out_channels
        mid = int(expansion * branch_out)
        if mid < 1:
            raise ValueError(f"expansion {expansion} gives no middle channels")
        self.mid_channels = mid

        if self.pre_shift:
            self.shift1 = Shift.preset(grouping, in_channels, kernel_size,
                                       dilation)
        self.conv1 = conv1x1(in_channels, mid)
        self.bn1 = nn.BatchNorm2d(mid)
        self.relu1 = nn.ReLU(inplace=True)
        self.shift2 = Shift.preset(grouping, mid, kernel_size, dilation)
        self.conv2 = conv1x1(mid, branch_out, stride)
        self.bn2 = nn.BatchNorm2d(branch_out)
        self.relu2 = nn.ReLU(inplace=True)

        if shortcut == "projection":
            if stride != 1 or in_channels != out_channels:
                self.shortcut = nn.Sequential(
                    conv1x1(in_channels, out_channels, stride),
                    nn.BatchNorm2d(out_channels))
            else:
                self.shortcut = nn.Identity()
        else:
            if stride != 1:
                # Same output size as the strided 1x1 conv for any H, W.
                self.shortcut = nn.AvgPool2d(3, stride=2, padding=1)
            elif in_channels != out_channels:
                raise ValueError("a stride-1 concat module needs "
                                 "in_channels == out_channels")
            else:
                self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.shift1(x) if self.pre_shift else x
        y = self.relu1(self.bn1(self.conv1(y)))
        y = self.relu2(self.bn2(self.conv2(self.shift2(y))))
        s = self.shortcut(x)
        if self.concat:
            return torch.cat([y, s], dim=1)
        return y + s  # no ReLU after the add (authors' code)


class CSC(_ShiftModule):
    """Conv-Shift-Conv residual module (paper Sec. 3, authors' CIFAR code).

    ``x -> relu(bn1(conv1x1(x))) -> shift -> relu(bn2(conv1x1_s(.)))``,
    then ``+ shortcut(x)`` (or concatenation with an average-pooled input for
    ``shortcut="concat"`` down-sampling). See :class:`_ShiftModule` for the
    parameters.
    """


class SC2(_ShiftModule):
    """Shift-Conv-Shift-Conv residual module (the paper's SC^2 variant).

    Identical to :class:`CSC` except that the input is shifted before the
    first 1x1 convolution as well: ``shift -> conv1x1 -> BN -> ReLU ->
    shift -> conv1x1(stride) -> BN -> ReLU`` (+ shortcut). Both shifts use
    the same kernel size, dilation and grouping preset; the parameter count
    equals CSC's. See :class:`_ShiftModule` for the parameters.
    """

    pre_shift = True


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs) with the authors' option-B shortcut.

    ``relu(bn2(conv3x3(relu(bn1(conv3x3_s(x))))) + shortcut(x))``, where the
    shortcut is conv1x1(stride) + BN when the stride or the width changes.

    Parameters
    ----------
    in_channels, out_channels : int
        Block input / output channels.
    stride : int
        Stride of the first 3x3 conv.
    mid_channels : int, optional
        Inner width (output of the first conv); ``out_channels`` by default.
        The "module-wise" reduced ResNets of Table 5 shrink only this.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1,
                 mid_channels: int | None = None):
        super().__init__()
        mid = out_channels if mid_channels is None else mid_channels
        _check_positive(in_channels=in_channels, out_channels=out_channels,
                        mid_channels=mid)
        self.mid_channels = mid
        self.conv1 = conv3x3(in_channels, mid, stride)
        self.bn1 = nn.BatchNorm2d(mid)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(mid, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                conv1x1(in_channels, out_channels, stride),
                nn.BatchNorm2d(out_channels))
        else:
            self.shortcut = nn.Identity()
        self.relu2 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu1(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu2(y + self.shortcut(x))
