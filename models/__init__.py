"""Float PyTorch models of shiftfpga: the shift op, its modules, networks.

Typical use::

    import models
    net = models.get("shiftresnet20", expansion=3)
    models.names()                # every registered model
    models.entry("shiftnet-c").input_shape   # (3, 224, 224)

See docs/MODELS.md for the definitions and the paper figures they match.
"""

from .shift import (GROUPINGS, Shift, check_offsets, grouped_offsets,
                    interleaved_offsets, shift)
from .modules import CSC, SC2, BasicBlock
from .registry import REGISTRY, ModelEntry, entry, get, names, register

__all__ = [
    "shift", "Shift", "interleaved_offsets", "grouped_offsets",
    "check_offsets", "GROUPINGS", "CSC", "SC2", "BasicBlock",
    "get", "names", "entry", "register", "ModelEntry", "REGISTRY",
]
