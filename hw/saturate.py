"""Clamping a wide value to narrow bounds, and a right shift followed by such a clamp, in pieces.

The output stage's requantisation is ``clamp(v >> s, lo, hi)`` with ``v`` about 50 bits
wide and 9-bit bounds. Done as written, that is a 50-bit barrel shifter followed by
two 50-bit comparisons: the 45F's t33 and the 85F's t52 builds had their latest paths
there. Only a narrow result can survive the clamp, so the pieces here work on the
narrow part and a single "fits" flag instead:

* ``v`` fits a ``w``-bit signed value when its bits from ``w - 1`` up all equal its
  sign; then the clamp is a ``w``-bit comparison, else the result is ``lo`` (``v``
  negative) or ``hi``;
* ``v >> s`` (arithmetic) fits ``w`` bits when the bits of ``v`` from ``s + w - 1``
  up all equal the sign, which a thermometer mask decoded from ``s`` selects (a
  register, decoded a cycle before ``v`` arrives: the shift amounts come from a
  table entry or a static configuration, both known early), and its low ``w``
  bits are a ``w``-wide window of ``v`` at offset ``s``.

So a shift-and-clamp takes two register stages with short logic in each: stage A
(:func:`shift_parts`) the window, the fits test and the sign; stage B
(:func:`clamp_parts`) the narrow comparisons.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Mux, Value

__all__ = ["bound_width", "clamp", "clamp_parts", "shift_mask", "shift_parts"]


def bound_width(lo, hi) -> int:
    """Bits of a signed value that holds every value of both bounds."""
    return max(len(b) + (not b.shape().signed) for b in (Value.cast(lo), Value.cast(hi)))


def clamp_parts(narrow, fits, negative, lo, hi) -> Value:
    """``clamp(v, lo, hi)`` (``lo <= hi``) of a value given as its low bits ``narrow`` (signed,
    ``bound_width(lo, hi)`` wide), whether it ``fits`` that width, and its sign ``negative``."""
    below = Mux(fits, narrow < lo, negative)
    above = Mux(fits, narrow > hi, ~negative)
    return Mux(below, lo, Mux(above, hi, narrow))


def clamp(v, lo, hi) -> Value:
    """``v`` limited to ``[lo, hi]`` (``lo <= hi``), with only a narrow comparison for a wide ``v``
    (a ~45-bit comparison with the bounds was the 45F's critical path, t24)."""
    v, lo, hi = Value.cast(v), Value.cast(lo), Value.cast(hi)
    w = bound_width(lo, hi)
    if len(v) <= w or not v.shape().signed:
        return Mux(v < lo, lo, Mux(v > hi, hi, v))
    top = v[w - 1:]
    return clamp_parts(v[:w].as_signed(), top.all() | ~top.any(), v[-1], lo, hi)


def shift_mask(s, v_width: int, w: int) -> Value:
    """The ``v_width``-bit mask of the bits of ``v`` that must equal its sign for ``v >> s`` to fit
    ``w`` signed bits: bit ``i`` is set when ``i >= s + w - 1``. Register it beside ``v``."""
    s = Value.cast(s)
    return Cat(*(s + (w - 1) <= i for i in range(v_width)))


def shift_parts(v, s, mask, w: int) -> tuple[Value, Value, Value]:
    """``(narrow, fits, negative)`` of ``v >> s`` (arithmetic) for :func:`clamp_parts`, with
    ``mask = shift_mask(s, len(v), w)``."""
    v = Value.cast(v)
    assert v.shape().signed and len(Value.cast(mask)) == len(v)
    s = Value.cast(s)
    sign = v[-1]
    # v with copies of its sign above it, so that the window exists at every value of s
    extended = Cat(v, sign.replicate(max(w, (1 << len(s)) - 1 + w - len(v))))
    narrow = extended.bit_select(s, w).as_signed()
    differs = (v ^ sign.replicate(len(v))) & mask
    return narrow, ~differs.any(), sign
