"""Registry of every model, so tools can say ``models.get("shiftnet-c")``.

Each entry records its builder, its default input shape (C, H, W), the
keyword arguments it accepts (with defaults) and a one-line description.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Dict, Tuple

from torch import nn

from . import cifar, shiftnet, style

__all__ = ["ModelEntry", "get", "names", "entry", "register", "REGISTRY"]


@dataclass(frozen=True)
class ModelEntry:
    """One registered model.

    Attributes
    ----------
    name : str
        Registry name.
    builder : callable
        ``builder(**kwargs) -> nn.Module``.
    input_shape : tuple of int
        Default input (C, H, W) without the batch dimension.
    kwargs : dict
        Accepted keyword arguments and their defaults.
    description : str
        One line for listings.
    """

    name: str
    builder: Callable[..., nn.Module]
    input_shape: Tuple[int, int, int]
    kwargs: Dict[str, Any] = field(default_factory=dict)
    description: str = ""

    def build(self, **kwargs) -> nn.Module:
        """Build the model; unknown keyword arguments raise ValueError."""
        bad = sorted(set(kwargs) - set(self.kwargs))
        if bad:
            valid = ", ".join(sorted(self.kwargs)) or "none"
            raise ValueError(f"model {self.name!r} does not accept "
                             f"{', '.join(bad)}; accepted: {valid}")
        return self.builder(**{**self.kwargs, **kwargs})

    def input_shape_for(self, **kwargs) -> Tuple[int, int, int]:
        """Default input shape, with ``in_channels`` applied if given."""
        c, h, w = self.input_shape
        return (kwargs.get("in_channels", c), h, w)


REGISTRY: Dict[str, ModelEntry] = {}


def register(entry: ModelEntry) -> ModelEntry:
    """Add an entry (names must be unique)."""
    if entry.name in REGISTRY:
        raise ValueError(f"model {entry.name!r} is already registered")
    REGISTRY[entry.name] = entry
    return entry


def names() -> list[str]:
    """All registered model names, sorted."""
    return sorted(REGISTRY)


def entry(name: str) -> ModelEntry:
    """The entry of ``name``; ValueError listing valid names if unknown."""
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown model {name!r}; valid names: "
                         f"{', '.join(names())}") from None


def get(name: str, **kwargs) -> nn.Module:
    """Build the registered model ``name`` with ``kwargs``.

    Examples
    --------
    >>> import models
    >>> net = models.get("shiftresnet20", expansion=3)
    """
    return entry(name).build(**kwargs)


# ---------------------------------------------------------------------------

CIFAR = (3, 32, 32)
IMAGENET = (3, 224, 224)
_cls10 = dict(num_classes=10, in_channels=3)
_shift = dict(kernel_size=3, dilation=1, grouping="interleaved")

for _d in (20, 56, 110):
    register(ModelEntry(
        f"shiftresnet{_d}", partial(cifar.shiftresnet, _d), CIFAR,
        dict(expansion=1, **_cls10, **_shift, module="csc"),
        f"ShiftResNet-{_d} (CSC modules, expansion E), CIFAR"))
    register(ModelEntry(
        f"resnet{_d}", partial(cifar.resnet, _d), CIFAR, dict(_cls10),
        f"ResNet-{_d} baseline (BasicBlock, conv1x1+BN shortcut), CIFAR"))
    register(ModelEntry(
        f"resnet{_d}-module", partial(cifar.resnet_module_reduced, _d), CIFAR,
        dict(expansion=1, **_cls10, reduction=None),
        f"ResNet-{_d} with block inner widths reduced to the "
        f"ShiftResNet-{_d}(E) budget (Table 5 module-wise)"))
    register(ModelEntry(
        f"resnet{_d}-net", partial(cifar.resnet_net_reduced, _d), CIFAR,
        dict(expansion=1, **_cls10, scale=None),
        f"ResNet-{_d} with all widths scaled to the ShiftResNet-{_d}(E) "
        f"budget (Table 5 net-wise)"))

for _v in "abc":
    register(ModelEntry(
        f"shiftnet-{_v}", partial(shiftnet.shiftnet, _v), IMAGENET,
        dict(num_classes=1000, in_channels=3, kernel_size=None, dilation=1,
             grouping="grouped"),
        f"ShiftNet-{_v.upper()} (paper Table 7), ImageNet"))

register(ModelEntry(
    "shiftfacenet", shiftnet.shiftfacenet, (3, 112, 112),
    dict(embedding_dim=128, in_channels=3, dilation=1, grouping="grouped"),
    "ShiftFaceNet: ShiftNet-C trunk + embedding head (paper Table 9)"))
register(ModelEntry(
    "johnson-style", style.johnson_style, (3, 256, 256),
    dict(in_channels=3),
    "Johnson et al. style-transfer image transformation network"))
register(ModelEntry(
    "shift-style", style.shift_style, (3, 256, 256),
    dict(in_channels=3, dilation=1, grouping="grouped"),
    "Style-transfer network with shift + 1x1 for every inner conv"))
