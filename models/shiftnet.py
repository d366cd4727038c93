"""ImageNet ShiftNets (paper Table 6/7, Fig. 3) and ShiftFaceNet (Table 9).

Every ShiftNet is: a 7x7/s2 stem conv (+ BN + ReLU), four groups of CSC
modules whose first module has stride 2 and down-samples ShuffleNet-style
(3x3/s2 average pool of the input concatenated after a branch that makes
the missing ``out - in`` channels), global average pooling and a
classifier. The interpretations behind the three configurations (and the
evidence: parameter *and* FLOP counts) are written down in docs/MODELS.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
import torch.nn.functional as F

from .modules import CSC

__all__ = ["GroupSpec", "ShiftNetConfig", "ShiftNet", "ShiftFaceNet",
           "SHIFTNET_CONFIGS", "shiftnet", "shiftfacenet"]


@dataclass(frozen=True)
class GroupSpec:
    """One group of CSC modules (a row pair of paper Table 7).

    Attributes
    ----------
    channels : int
        Output channels of every module of the group.
    repeats : int
        Number of modules (the first has stride 2, the others stride 1).
    expansion_first, expansion_rest : float
        E of the stride-2 module and of the stride-1 modules.
    kernel_size : int
        Shift kernel size of the group.
    """

    channels: int
    repeats: int
    expansion_first: float
    expansion_rest: float
    kernel_size: int


@dataclass(frozen=True)
class ShiftNetConfig:
    """A whole ShiftNet: stem width and its four groups."""

    stem_channels: int
    groups: Sequence[GroupSpec]


_A = ShiftNetConfig(32, (
    GroupSpec(64, 5, 4, 4, 5),
    GroupSpec(128, 6, 4, 3, 5),
    GroupSpec(256, 7, 3, 2, 3),
    GroupSpec(512, 3, 2, 1, 3),
))
# B: ShiftNet-A with every width halved (stem included); same depth,
# expansions and kernels. Its MACs (371.0M) equal the paper's 371M.
_B = ShiftNetConfig(16, tuple(
    GroupSpec(g.channels // 2, g.repeats, g.expansion_first,
              g.expansion_rest, g.kernel_size) for g in _A.groups))
# C: B's widths, groups of {1, 4, 4, 3} modules, E = 1, kernel 3.
_C = ShiftNetConfig(16, (
    GroupSpec(32, 1, 1, 1, 3),
    GroupSpec(64, 4, 1, 1, 3),
    GroupSpec(128, 4, 1, 1, 3),
    GroupSpec(256, 3, 1, 1, 3),
))

#: Named configurations of paper Table 7.
SHIFTNET_CONFIGS = {"a": _A, "b": _B, "c": _C}


class ShiftNet(nn.Module):
    """ShiftNet trunk + classifier.

    Parameters
    ----------
    config : ShiftNetConfig
        Stem width and groups.
    num_classes : int
        Classifier outputs (1000 for ImageNet). ``0`` builds the trunk only
        (``forward`` then returns the pooled features).
    in_channels : int
        Image channels.
    kernel_size : int, optional
        Override every group's shift kernel size.
    dilation : int
        Shift dilation used by every module.
    grouping : str
        Offset preset, "grouped" (paper prose, default) or "interleaved".
    """

    def __init__(self, config: ShiftNetConfig, num_classes: int = 1000,
                 in_channels: int = 3, kernel_size: int | None = None,
                 dilation: int = 1, grouping: str = "grouped"):
        super().__init__()
        if num_classes < 0 or in_channels < 1:
            raise ValueError("num_classes must be >= 0 and in_channels >= 1")
        c = config.stem_channels
        self.conv1 = nn.Conv2d(in_channels, c, 7, stride=2, padding=3,
                               bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        groups = []
        for g in config.groups:
            k = g.kernel_size if kernel_size is None else kernel_size
            mods = []
            for i in range(g.repeats):
                mods.append(CSC(c, g.channels, stride=2 if i == 0 else 1,
                                expansion=g.expansion_first if i == 0
                                else g.expansion_rest,
                                kernel_size=k, dilation=dilation,
                                grouping=grouping, shortcut="concat"))
                c = g.channels
            groups.append(nn.Sequential(*mods))
        self.groups = nn.Sequential(*groups)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.features = c
        self.fc = nn.Linear(c, num_classes) if num_classes else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled trunk features, shape [N, features]."""
        x = self.relu(self.bn1(self.conv1(x)))
        return torch.flatten(self.pool(self.groups(x)), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x))


def shiftnet(variant: str, num_classes: int = 1000, in_channels: int = 3,
             kernel_size: int | None = None, dilation: int = 1,
             grouping: str = "grouped") -> ShiftNet:
    """ShiftNet-A, -B or -C (``variant`` in "a", "b", "c")."""
    key = variant.lower()
    if key not in SHIFTNET_CONFIGS:
        raise ValueError(f"unknown ShiftNet variant {variant!r}; valid: "
                         f"{', '.join(sorted(SHIFTNET_CONFIGS))}")
    return ShiftNet(SHIFTNET_CONFIGS[key], num_classes, in_channels,
                    kernel_size, dilation, grouping)


class ShiftFaceNet(nn.Module):
    """ShiftFaceNet (paper Table 9): ShiftNet-C trunk + embedding head.

    The head is Linear(256 -> embedding_dim) followed by BatchNorm1d (it
    folds into the linear layer at export). ``forward`` returns the raw
    embedding so the whole network stays on the accelerator; use
    :meth:`embed` for the L2-normalised vector used for face verification
    (cosine / Euclidean distance, FaceNet-style).

    Parameters
    ----------
    embedding_dim : int
        Embedding size (default 128, as FaceNet).
    in_channels : int
        Image channels.
    dilation : int
        Shift dilation.
    grouping : str
        Offset preset.
    """

    def __init__(self, embedding_dim: int = 128, in_channels: int = 3,
                 dilation: int = 1, grouping: str = "grouped"):
        super().__init__()
        if embedding_dim < 1:
            raise ValueError("embedding_dim must be >= 1")
        self.trunk = ShiftNet(_C, num_classes=0, in_channels=in_channels,
                              dilation=dilation, grouping=grouping)
        self.embedding = nn.Linear(self.trunk.features, embedding_dim)
        self.bn = nn.BatchNorm1d(embedding_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.embedding(self.trunk.forward_features(x)))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised embedding."""
        return F.normalize(self.forward(x), dim=1)


def shiftfacenet(embedding_dim: int = 128, in_channels: int = 3,
                 dilation: int = 1, grouping: str = "grouped") -> ShiftFaceNet:
    """Build :class:`ShiftFaceNet`."""
    return ShiftFaceNet(embedding_dim, in_channels, dilation, grouping)
