"""Style-transfer image transformation networks (paper Sec. 5, Fig. 5).

``johnson-style`` is the image transformation network of Johnson et al.
(ECCV 2016, supplementary Table 1): c9s1-32, d64, d128, five residual
blocks of 128 channels, u64, u32, c9s1-3, batch normalisation after every
conv but the last, and a tanh output (Johnson scale it to [0, 255]; we keep
[-1, 1]).

``shift-style`` is the paper's shift version: the first and last 9x9
convolutions stay, every other convolution (kernel 3) becomes a shift
followed by a 1x1 convolution with the same stride; the fractionally
strided up-sampling convolutions become nearest-neighbour x2 up-sampling,
shift and 1x1 convolution.
"""

from __future__ import annotations

import torch
from torch import nn

from .shift import Shift

__all__ = ["StyleNet", "johnson_style", "shift_style"]


def _conv(cin, cout, k, stride=1, bias=False):
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=bias)


class _Spatial(nn.Module):
    """A KxK (or shift + 1x1) convolution, BN and optional ReLU."""

    def __init__(self, cin, cout, stride=1, up=False, relu=True, use_shift=False,
                 dilation=1, grouping="grouped"):
        super().__init__()
        layers = []
        if use_shift:
            if up:
                layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
            layers += [Shift.preset(grouping, cin, 3, dilation),
                       _conv(cin, cout, 1, stride)]
        elif up:
            layers.append(nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1,
                                             output_padding=1, bias=False))
        else:
            layers.append(_conv(cin, cout, 3, stride))
        layers.append(nn.BatchNorm2d(cout))
        if relu:
            layers.append(nn.ReLU(inplace=True))
        self.body = nn.Sequential(*layers)

    def forward(self, x):
        return self.body(x)


class _Residual(nn.Module):
    """Johnson's residual block: two (shift+1x1 or 3x3) convs, no final ReLU."""

    def __init__(self, c, **kw):
        super().__init__()
        self.a = _Spatial(c, c, **kw)
        self.b = _Spatial(c, c, relu=False, **kw)

    def forward(self, x):
        return x + self.b(self.a(x))


class StyleNet(nn.Module):
    """Image transformation network (output has the input's height/width).

    Parameters
    ----------
    use_shift : bool
        False: Johnson et al.'s network; True: the shift version.
    in_channels : int
        Image channels (also the output channels).
    dilation : int
        Shift dilation (shift version only).
    grouping : str
        Offset preset (shift version only).
    """

    def __init__(self, use_shift: bool = False, in_channels: int = 3,
                 dilation: int = 1, grouping: str = "grouped"):
        super().__init__()
        kw = dict(use_shift=use_shift, dilation=dilation, grouping=grouping)
        self.head = nn.Sequential(_conv(in_channels, 32, 9),
                                  nn.BatchNorm2d(32), nn.ReLU(inplace=True))
        self.down = nn.Sequential(_Spatial(32, 64, stride=2, **kw),
                                  _Spatial(64, 128, stride=2, **kw))
        self.res = nn.Sequential(*[_Residual(128, **kw) for _ in range(5)])
        self.up = nn.Sequential(_Spatial(128, 64, up=True, **kw),
                                _Spatial(64, 32, up=True, **kw))
        self.tail = _conv(32, in_channels, 9, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.res(self.down(self.head(x)))
        return torch.tanh(self.tail(self.up(x)))


def johnson_style(in_channels: int = 3) -> StyleNet:
    """Johnson et al.'s image transformation network."""
    return StyleNet(False, in_channels)


def shift_style(in_channels: int = 3, dilation: int = 1,
                grouping: str = "grouped") -> StyleNet:
    """The shift-based image transformation network of the paper."""
    return StyleNet(True, in_channels, dilation, grouping)
