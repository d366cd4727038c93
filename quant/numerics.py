"""Integer primitives of the shift-network accelerator: the arithmetic contract.

Every function here is the executable form of one rule in ``docs/NUMERICS.md``.
The golden model (``quant.golden``) is built from these primitives and nothing
else, the exporter computes the constants they consume, and the RTL testbenches
in ``sim/`` compare every output word of the hardware with them.

Conventions
-----------
* Tensors are ``torch.int64`` (wide enough that no intermediate can overflow:
  see the accumulator-width proof in NUMERICS.md) holding integer values.
* Feature maps are HWC (one image, channels last), as the hardware streams them.
* One rounding rule everywhere: *round half up*, ``(v * m + 2**(s-1)) >> s``
  with an arithmetic (floor) shift; for ``s == 0`` nothing is added.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "ACC_BITS",
    "MULT_BITS",
    "SHIFT_MAX",
    "act_range",
    "weight_range",
    "shift_gather",
    "conv1x1_acc",
    "round_shift",
    "requantize",
    "residual_add",
    "global_avgpool",
    "quantize_multiplier",
]

#: Accumulator width in bits (signed). NUMERICS.md proves it cannot overflow.
ACC_BITS = 32
#: Width of a requantisation multiplier (unsigned, 1 .. 2**MULT_BITS - 1).
MULT_BITS = 16
#: Largest requantisation right shift.
SHIFT_MAX = 47


def act_range(bits: int, signed: bool) -> tuple[int, int]:
    """Inclusive integer range of an activation tensor of ``bits`` bits."""
    if signed:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def weight_range(bits: int) -> tuple[int, int]:
    """Inclusive range of a symmetric ("narrow") weight of ``bits`` bits."""
    hi = (1 << (bits - 1)) - 1
    return -hi, hi


def _int64(t) -> torch.Tensor:
    t = torch.as_tensor(t)
    if t.dtype.is_floating_point or t.dtype == torch.bool:
        raise TypeError(f"integer tensor expected, got {t.dtype}")
    return t.to(torch.int64)


def shift_gather(x, table) -> torch.Tensor:
    """Per-channel shift with zero fill, generalised to a channel gather.

    ``out[y, x, j] = in[y + dy[j], x + dx[j], src[j]]`` and 0 where the source
    pixel lies outside the image. ``table`` is an integer array ``[C_out, 3]``
    of rows ``(src, dy, dx)``. A plain shift layer has ``src[j] = j``; the
    shift-im2col of a KxK convolution has K*K rows per input channel.

    Parameters
    ----------
    x : int tensor [H, W, C] or a batch [N, H, W, C]
    table : int tensor [C_out, 3]
    """
    x = _int64(x)
    table = _int64(table)
    if x.dim() not in (3, 4):
        raise ValueError(f"feature map must be [H, W, C] or [N, H, W, C], got shape {tuple(x.shape)}")
    if table.dim() != 2 or table.shape[1] != 3:
        raise ValueError(f"shift table must be [C_out, 3], got shape {tuple(table.shape)}")
    batched = x.dim() == 4
    if not batched:
        x = x.unsqueeze(0)
    n, h, w, c = x.shape
    src, dy, dx = table[:, 0], table[:, 1], table[:, 2]
    if len(src) and (src.min() < 0 or src.max() >= c):
        raise ValueError(f"shift table names a source channel outside 0..{c - 1}")
    ys = torch.arange(h).view(h, 1, 1) + dy.view(1, 1, -1)  # [H, 1, C_out]
    xs = torch.arange(w).view(1, w, 1) + dx.view(1, 1, -1)  # [1, W, C_out]
    inside = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
    vals = x[:, ys.clamp(0, h - 1), xs.clamp(0, w - 1), src.view(1, 1, -1)]
    out = torch.where(inside, vals, torch.zeros((), dtype=torch.int64))
    return out if batched else out[0]


def conv1x1_acc(x, weight, bias=None, stride: int = 1) -> torch.Tensor:
    """Accumulators of a 1x1 convolution: ``acc[y,x,o] = b[o] + sum_i w[o,i] * in[s*y, s*x, i]``.

    The dot products run as a float64 matrix product, which is exact here:
    every product and partial sum is an integer below 2**31 (section 4 of
    NUMERICS.md), far inside float64's 53-bit mantissa.

    Parameters
    ----------
    x : int tensor [H, W, C_in] or a batch [N, H, W, C_in]
    weight : int tensor [C_out, C_in]
    bias : int tensor [C_out] or None
    stride : output pixel (y, x) reads input pixel (stride*y, stride*x)
    """
    x = _int64(x)[..., ::stride, ::stride, :]
    weight = _int64(weight)
    if weight.dim() != 2 or weight.shape[1] != x.shape[-1]:
        raise ValueError(
            f"weight [C_out, C_in] = {tuple(weight.shape)} does not match {x.shape[-1]} input channels"
        )
    acc = torch.matmul(x.double(), weight.double().T).to(torch.int64)
    if bias is not None:
        acc = acc + _int64(bias)
    return acc


def round_shift(v, shift) -> torch.Tensor:
    """``v / 2**shift`` rounded half up: ``(v + 2**(shift-1)) >> shift`` (no add when shift is 0)."""
    v = _int64(v)
    shift = _int64(shift)
    half = torch.where(shift > 0, torch.ones_like(shift) << (shift - 1).clamp(min=0), torch.zeros_like(shift))
    return (v + half) >> shift


def requantize(acc, multiplier, shift, lo: int, hi: int) -> torch.Tensor:
    """Per-channel requantisation: ``clamp(round_shift(acc * m[c], s[c]), lo, hi)``.

    ``multiplier`` and ``shift`` broadcast over the last (channel) axis. ReLU is
    ``lo = 0``; the clamp is the only saturation in the datapath.
    """
    return round_shift(_int64(acc) * _int64(multiplier), shift).clamp(lo, hi)


def residual_add(y, residual, multiplier: int, shift: int, lo: int, hi: int) -> torch.Tensor:
    """Fused residual add: ``clamp(y + round_shift(r * m, s), lo, hi)``.

    ``y`` is already on the output grid (requantised and clamped by its own
    branch); the residual is rescaled onto that grid with one per-tensor
    multiplier and shift (``m = 1, s = 0`` when the two scales are equal).
    """
    return (_int64(y) + round_shift(_int64(residual) * multiplier, torch.tensor(shift))).clamp(lo, hi)


def global_avgpool(x, multiplier: int, shift: int, lo: int, hi: int) -> torch.Tensor:
    """Global average pool of an [(N,) H, W, C] map: ``clamp(round_shift(sum_yx * m, s), lo, hi)`` -> [(N,) C].

    ``m / 2**s`` carries both the ``1 / (H*W)`` and any change of scale.
    """
    total = _int64(x).sum(dim=(-3, -2))
    return requantize(total, multiplier, torch.tensor(shift), lo, hi)


def quantize_multiplier(factor: float) -> tuple[int, int]:
    """Represent a positive real factor as ``m / 2**s`` (NUMERICS.md section 5).

    ``s`` is the largest shift ``<= SHIFT_MAX`` for which ``m = round(factor * 2**s)``
    still fits in ``MULT_BITS`` unsigned bits, so the relative error is at most
    ``2**-MULT_BITS``. Powers of two (and any factor with a short binary
    expansion) are represented exactly.
    """
    if not factor > 0 or factor != factor or factor == float("inf"):
        raise ValueError(f"requantisation factor must be a positive finite number, not {factor!r}")
    limit = (1 << MULT_BITS) - 1
    for shift in range(SHIFT_MAX, -1, -1):
        m = math.floor(factor * 2.0**shift + 0.5)
        if m <= limit:
            if m == 0:
                raise ValueError(f"requantisation factor {factor:.3e} is below 2**-{SHIFT_MAX + 1}")
            return m, shift
    raise ValueError(f"requantisation factor {factor:.3e} is too large (at most {limit})")
