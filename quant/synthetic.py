"""Random but valid integer programs, for tests of the golden model, the RTL and the host.

The programs are built directly on the integer grid (no float model involved), so
every feature of the format is exercised: shift gathers with arbitrary tables,
im2col stems, strides, ReLU and signed clamps, residual adds with rescaling,
global pooling and a raw classifier.
"""

from __future__ import annotations

import numpy as np

from . import numerics
from .program import Layer, Pool, Program, Requant, Residual, TensorSpec

__all__ = ["random_program", "im2col_table", "interleaved_table"]


def interleaved_table(channels: int, kernel: int = 3, dilation: int = 1) -> np.ndarray:
    """The authors' interleaved shift (``models.shift.interleaved_offsets``) as (src, dy, dx) rows."""
    from models.shift import interleaved_offsets

    offsets = interleaved_offsets(channels, kernel, dilation).numpy()
    return np.concatenate([np.arange(channels).reshape(-1, 1), offsets], axis=1).astype(np.int64)


def im2col_table(channels: int, kernel: int, dilation: int = 1) -> np.ndarray:
    """Shift-im2col for a KxK convolution: row (ky*K + kx)*C + c gathers channel c at (ky-K//2, kx-K//2)."""
    rows = []
    r = kernel // 2
    for ky in range(kernel):
        for kx in range(kernel):
            for c in range(channels):
                rows.append((c, dilation * (ky - r), dilation * (kx - r)))
    return np.array(rows, dtype=np.int64)


def _requant(rng, c_out, c_in, lo, hi, act_max=255, w_max=127):
    # choose m/2^s so that a typical accumulator lands inside the output range
    typical = max(1.0, np.sqrt(c_in) * act_max * w_max / 4)
    factor = rng.uniform(0.3, 3.0, size=c_out) * (hi - lo + 1) / 2 / typical
    shift = np.full(c_out, 24, dtype=np.int64)
    mult = np.clip(np.round(factor * 2.0**24), 1, (1 << numerics.MULT_BITS) - 1).astype(np.int64)
    return Requant(mult, shift, lo, hi)


def random_program(seed: int = 0, size: int = 8, channels: int = 8, classes: int = 10,
                   in_channels: int = 3, weight_bits: int = 8, mid_signed: bool = False) -> Program:
    """A small network: im2col 3x3 stem, a CSC-like block with a strided projection, pool and classifier.

    ``mid_signed``: the block's expanded tensor is int8 with a signed clamp (no ReLU) instead of
    uint8 after a ReLU.
    """
    rng = np.random.default_rng(seed)
    w_lo, w_hi = numerics.weight_range(weight_bits)

    def weight(c_out, c_in):
        return rng.integers(w_lo, w_hi + 1, size=(c_out, c_in), dtype=np.int64)

    def bias(c_out):
        return rng.integers(-2000, 2001, size=c_out, dtype=np.int64)

    c, mid, half = channels, 2 * channels, -(-size // 2)
    t = {
        "input": TensorSpec("input", (size, size, in_channels), 8, True, 1 / 64),
        "stem": TensorSpec("stem", (size, size, c), 8, False, 1 / 16),
        "mid": TensorSpec("mid", (size, size, mid), 8, mid_signed, 1 / 16),
        "short": TensorSpec("short", (half, half, c), 8, True, 1 / 16),
        "block": TensorSpec("block", (half, half, c), 8, True, 1 / 16),
        "pooled": TensorSpec("pooled", (1, 1, c), 8, True, 1 / 16),
        "logits": TensorSpec("logits", (1, 1, classes), 32, True, 1 / 256),
    }
    stem_gather = im2col_table(in_channels, 3)
    mid_gather = interleaved_table(mid, kernel=int(rng.choice([3, 5])), dilation=int(rng.choice([1, 2])))
    layers = [
        Layer("stem", "input", "stem", weight(c, len(stem_gather)), bias(c), weight_bits, 1, stem_gather,
              _requant(rng, c, len(stem_gather), 0, 255, act_max=127)),
        Layer("expand", "stem", "mid", weight(mid, c), bias(mid), weight_bits, 1, None,
              _requant(rng, mid, c, -128 if mid_signed else 0, 127 if mid_signed else 255)),
        Layer("shortcut", "stem", "short", weight(c, c), bias(c), weight_bits, 2, None,
              _requant(rng, c, c, -128, 127)),
        Layer("project", "mid", "block", weight(c, mid), bias(c), weight_bits, 2, mid_gather,
              _requant(rng, c, mid, 0, 127), Residual("short", int(rng.integers(1, 4)), 1, -128, 127)),
        Layer("pool", "block", "pooled", weight(c, c), bias(c), weight_bits, 1, None,
              _requant(rng, c, c, -128, 127), None, Pool(1, int(np.log2(half * half)) if half & (half - 1) == 0
                                                          else 0, -128, 127)),
        Layer("classifier", "pooled", "logits", weight(classes, c), bias(classes), weight_bits),
    ]
    return Program(model="synthetic", input="input", output="logits", tensors=t, layers=layers,
                   model_args={"seed": seed}, mean=(0.5,) * in_channels, std=(0.25,) * in_channels,
                   meta={"trained": False, "note": "random integer program for tests"}).validate()
