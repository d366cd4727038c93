"""RTL cosimulation of the output stage (``hw.output_stage``) against ``quant.numerics``.

One Verilator build; inside it ``SHIFTFPGA_TB_CONFIGS`` (default 150) random layer
configurations (modes QUANT / RAW / POOL, residual on/off, random clamps and
tables) run back to back. Reproduce a failure with the seed it prints:
``SHIFTFPGA_SEED=<n> pytest sim/test_output_stage.py``.
"""

import os
import random

import pytest
from amaranth import Module, Signal, signed
from amaranth.sim import Simulator

from hw.output_stage import OutputStage, _clamp
from sim.harness import run_cocotb

STAGE = dict(lanes=4, max_channels=64, max_pool_pixels=4096, fifo_depth=32)
#: the 85F's table depth (128 entries per lane), which goes into block RAM read through both ports
#: (hw.dual_read), here on the DP16KD simulation model
STAGE_BLOCK_RAM = dict(STAGE, max_channels=512, block_ram="model")


@pytest.mark.sim
@pytest.mark.parametrize("name, stage", [("l4", STAGE), ("l4_bram", STAGE_BLOCK_RAM)])
def test_output_stage(name, stage):
    run_cocotb(
        OutputStage(**stage),
        test_module="tb_output_stage",
        build_name=f"output_stage_{name}",
        env={"TB_STAGE": stage, "TB_CONFIGS": os.environ.get("SHIFTFPGA_TB_CONFIGS", "150")},
    )


@pytest.mark.parametrize("v_bits, bound_bits", [(45, 9), (20, 9), (9, 9), (12, 4)])
def test_clamp_of_a_wide_value_equals_min_max(v_bits, bound_bits):
    """``_clamp`` splits a wide comparison into a fits-the-bounds test and a narrow one; every
    value near the bounds' range, near the fits boundary and at random must still clamp as
    min(max(v, lo), hi)."""
    rng = random.Random(v_bits * 100 + bound_bits)
    v, lo, hi = Signal(signed(v_bits)), Signal(signed(bound_bits)), Signal(signed(bound_bits))
    out = Signal(signed(bound_bits))
    m = Module()
    m.d.comb += out.eq(_clamp(v, lo, hi))
    vmin, vmax = -(1 << (v_bits - 1)), (1 << (v_bits - 1)) - 1
    bmin, bmax = -(1 << (bound_bits - 1)), (1 << (bound_bits - 1)) - 1
    edges = {vmin, vmax, 0, -1, 1}
    for e in (bmin, bmax, 1 << (bound_bits - 1), -(1 << (bound_bits - 1)) - 1, 1 << bound_bits, -(1 << bound_bits)):
        edges.update(x for x in (e - 1, e, e + 1) if vmin <= x <= vmax)
    cases = []
    for _ in range(60):
        a, b = sorted((rng.randint(bmin, bmax), rng.randint(bmin, bmax)))
        for x in list(edges) + [rng.randint(vmin, vmax) for _ in range(10)] + [rng.randint(bmin - 3, bmax + 3)]:
            if vmin <= x <= vmax:
                cases.append((x, a, b))
    sim = Simulator(m)

    async def check(ctx):
        for x, a, b in cases:
            ctx.set(v, x)
            ctx.set(lo, a)
            ctx.set(hi, b)
            assert ctx.get(out) == min(max(x, a), b), (x, a, b)

    sim.add_testbench(check)
    sim.run()
