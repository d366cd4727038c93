"""``hw.saturate``: the clamp and the shift-then-clamp in pieces equal min/max of the whole value."""

import random

import pytest
from amaranth import Cat, Module, Signal, signed, unsigned
from amaranth.sim import Simulator

from hw.saturate import clamp, clamp_parts, shift_mask, shift_parts


def _edges(v_bits, bound_bits):
    """Values near the bounds' range, near the fits boundary and at the ends of ``v``'s range."""
    vmin, vmax = -(1 << (v_bits - 1)), (1 << (v_bits - 1)) - 1
    bmin, bmax = -(1 << (bound_bits - 1)), (1 << (bound_bits - 1)) - 1
    edges = {vmin, vmax, 0, -1, 1}
    for e in (bmin, bmax, 1 << (bound_bits - 1), -(1 << (bound_bits - 1)) - 1, 1 << bound_bits, -(1 << bound_bits)):
        edges.update(x for x in (e - 1, e, e + 1) if vmin <= x <= vmax)
    return sorted(edges), (vmin, vmax), (bmin, bmax)


def _run(m, check):
    sim = Simulator(m)
    sim.add_testbench(check)
    sim.run()


@pytest.mark.parametrize("v_bits, bound_bits", [(45, 9), (20, 9), (9, 9), (12, 4)])
def test_clamp_of_a_wide_value_equals_min_max(v_bits, bound_bits):
    """``clamp`` splits a wide comparison into a fits-the-bounds test and a narrow one; every
    value near the bounds' range, near the fits boundary and at random must still clamp as
    min(max(v, lo), hi)."""
    rng = random.Random(v_bits * 100 + bound_bits)
    v, lo, hi = Signal(signed(v_bits)), Signal(signed(bound_bits)), Signal(signed(bound_bits))
    out = Signal(signed(bound_bits))
    m = Module()
    m.d.comb += out.eq(clamp(v, lo, hi))
    edges, (vmin, vmax), (bmin, bmax) = _edges(v_bits, bound_bits)
    cases = []
    for _ in range(60):
        a, b = sorted((rng.randint(bmin, bmax), rng.randint(bmin, bmax)))
        for x in edges + [rng.randint(vmin, vmax) for _ in range(10)] + [rng.randint(bmin - 3, bmax + 3)]:
            if vmin <= x <= vmax:
                cases.append((x, a, b))

    async def check(ctx):
        for x, a, b in cases:
            ctx.set(v, x)
            ctx.set(lo, a)
            ctx.set(hi, b)
            assert ctx.get(out) == min(max(x, a), b), (x, a, b)

    _run(m, check)


@pytest.mark.parametrize("v_bits, s_bits, bound_bits", [(51, 6, 9), (27, 6, 11), (12, 3, 4), (8, 4, 9)])
def test_shift_then_clamp_in_two_stages_equals_min_max(v_bits, s_bits, bound_bits):
    """``shift_parts`` (with ``shift_mask`` of the same shift) then ``clamp_parts`` is
    min(max(v >> s, lo), hi) for every shift of ``s``'s range, including shifts past ``v``'s
    width, with values at the edges of the fits test after the shift."""
    rng = random.Random(v_bits * 1000 + s_bits * 10 + bound_bits)
    v, s = Signal(signed(v_bits)), Signal(unsigned(s_bits))
    lo, hi = Signal(signed(bound_bits)), Signal(signed(bound_bits))
    mask = Signal(v_bits)
    narrow, fits, negative = Signal(signed(bound_bits)), Signal(), Signal()
    out = Signal(signed(bound_bits))
    m = Module()
    m.d.comb += [mask.eq(shift_mask(s, v_bits, bound_bits)),
                 Cat(narrow, fits, negative).eq(Cat(*shift_parts(v, s, mask, bound_bits))),
                 out.eq(clamp_parts(narrow, fits, negative, lo, hi))]
    edges, (vmin, vmax), (bmin, bmax) = _edges(v_bits, bound_bits)
    cases = []
    for shift in range(1 << s_bits):
        # edges of the shifted value's range, scaled back up to v, and a few below each
        scaled = {max(vmin, min(vmax, (e << shift) + d)) for e in edges for d in (-1, 0, 1)}
        for _ in range(4):
            a, b = sorted((rng.randint(bmin, bmax), rng.randint(bmin, bmax)))
            for x in sorted(scaled) + [rng.randint(vmin, vmax) for _ in range(10)]:
                cases.append((x, shift, a, b))

    async def check(ctx):
        for x, shift, a, b in cases:
            ctx.set(v, x)
            ctx.set(s, shift)
            ctx.set(lo, a)
            ctx.set(hi, b)
            assert ctx.get(out) == min(max(x >> shift, a), b), (x, shift, a, b)

    _run(m, check)
