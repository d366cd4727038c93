"""RTL cosimulation of the output-stationary array (``hw.systolic``) against ``quant.numerics``.

One Verilator build per array shape; inside it ``SHIFTFPGA_TB_CONFIGS`` (default
120) random layer configurations run back to back (run-time configuration).
Reproduce a failure with the seed it prints: ``SHIFTFPGA_SEED=<n> pytest sim/test_systolic.py``.
"""

import os

import pytest

from hw.systolic import SystolicArray
from sim.harness import run_cocotb

ARRAYS = {
    # P x Q not powers of two, two lanes per output beat, int8 weights
    "int8_5x6": dict(rows=5, cols=6, weight_bits=8, out_lanes=3, tag_width=12),
    # int4 weights, one pixel per output beat
    "int4_3x4": dict(rows=3, cols=4, weight_bits=4, out_lanes=4, tag_width=8),
    # a small max_cin: accumulators of 21 bits (24 * 255 * 127 < 2**20), filled to their bound
    "int8_4x4_cin24": dict(rows=4, cols=4, weight_bits=8, out_lanes=4, tag_width=8, max_cin=24),
}


@pytest.mark.sim
@pytest.mark.parametrize("name", list(ARRAYS))
def test_systolic(name):
    arr = ARRAYS[name]
    run_cocotb(
        SystolicArray(**arr),
        test_module="tb_systolic",
        build_name=f"systolic_{name}",
        env={"TB_ARRAY": arr, "TB_CONFIGS": os.environ.get("SHIFTFPGA_TB_CONFIGS", "120")},
    )


# ---- the multiplier primitive (hw.mult): quick checks, no Verilator -----------

def test_mult_behavioural_latency_and_enable():
    """Multiplier / WideMultiplier: exact products, LATENCY cycles late, frozen while ``en`` is low."""
    import random

    from amaranth.sim import Simulator

    from hw.mult import Multiplier, WideMultiplier

    for dut, a_w, b_w in ((Multiplier(9, 8), 9, 8), (WideMultiplier(33, 17), 33, 17), (WideMultiplier(26, 17), 26, 17)):
        rng = random.Random(1)
        lim_a, lim_b = 1 << (a_w - 1), 1 << (b_w - 1)
        ops = [(-lim_a, -lim_b), (lim_a - 1, lim_b - 1), (-lim_a, lim_b - 1)] + \
              [(rng.randrange(-lim_a, lim_a), rng.randrange(-lim_b, lim_b)) for _ in range(60)]
        enables = [rng.random() < 0.7 for _ in ops]

        async def bench(ctx, dut=dut, ops=ops, enables=enables):
            pipe = []  # products of the enabled cycles, oldest first
            for (a, b), en in zip(ops, enables):
                ctx.set(dut.a, a)
                ctx.set(dut.b, b)
                ctx.set(dut.en, en)
                if en:
                    pipe.append(a * b)
                await ctx.tick()
                if en and len(pipe) >= dut.LATENCY:
                    # after the k-th enabled edge the output is the product presented at edge k - LATENCY + 1
                    assert ctx.get(dut.p) == pipe[-dut.LATENCY], (type(dut).__name__, len(pipe))

        sim = Simulator(dut)
        sim.add_clock(1e-8)
        sim.add_testbench(bench)
        sim.run()


def test_mult_ecp5_instance():
    """On an ECP5 platform the multiplier is a MULT18X18D with input and output registers on CLK0."""
    pytest.importorskip("amaranth_boards")
    from amaranth.back import rtlil
    from amaranth_boards.ulx3s import ULX3S_85F_Platform

    text = rtlil.convert(SystolicArray(2, 3, tag_width=1), name="top", platform=ULX3S_85F_Platform())
    cells = text.count("cell \\MULT18X18D ")
    assert cells == 6, f"expected 6 MULT18X18D cells, found {cells}"
    for param in ("REG_INPUTA_CLK", "REG_INPUTB_CLK", "REG_OUTPUT_CLK"):
        assert text.count(f'parameter \\{param} "CLK0"') == 6, param
    assert "SRIA0" not in text, "cascade inputs must stay unconnected (nextpnr cannot route GND to them)"
