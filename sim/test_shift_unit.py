"""Tests of the shift unit: its table compiler (pure Python) and the RTL (cocotb).

``pytest sim/test_shift_unit.py`` builds the unit once with Verilator and runs
``SHIFTFPGA_SHIFT_CONFIGS`` (default 100) random run-time configurations in that
one simulation (``sim/tb_shift_unit.py``). ``SHIFTFPGA_SEED=<n>`` reproduces a run.
"""

from __future__ import annotations

import json
import math
import os
import random

import pytest
import torch
from amaranth.lib import data

from hw.shift_unit import ShiftUnit, bank_map, plan_slots
from quant.numerics import shift_gather
from sim.harness import run_cocotb
from sim.tb_shift_unit import grouped_table, im2col_table, interleaved_table, random_table

#: The build the cosimulation uses: 4 lanes (C_in up to 3 beats per pixel, C not
#: a multiple of the lanes), radius 4 (5x5 at dilation 2), im2col up to 5x5x3.
PARAMS = dict(lanes=4, max_width=16, max_height=12, max_cin=12, max_cout=80, radius=4)


def emulate(unit: ShiftUnit, prog, img: torch.Tensor) -> torch.Tensor:
    """Run the packed schedule words the way the RTL does (ring addressing, bank
    reads, bounds checks, lane capture) on an [H, W, C_in] image -> [H, W, C_out padded]."""
    cfg = prog.config
    h, w, lanes = cfg["height"], cfg["width"], unit.lanes
    beats, ring = cfg["in_beats"], cfg["ring_words"]
    c_in = img.shape[2]
    banks = [dict() for _ in range(lanes)]
    for q in range(h * w):
        px = img[q // w, q % w].tolist() + [0] * (beats * lanes - c_in)
        for t in range(beats):
            for k in range(lanes):
                banks[k][(q * beats + t) % ring] = px[t * lanes + cfg["bank_lane"][k]]
    # decode the packed words once: per slot ([(off, dy, dx)] per bank, [(cap, zero, sel)] per lane, last)
    slots = []
    for word in prog.slot_words:
        s = data.Const(unit.slot_layout, word)
        slots.append(([(s.bank[k].off, s.bank[k].dy, s.bank[k].dx) for k in range(lanes)],
                      [(s.lane[n].cap, s.lane[n].zero, s.lane[n].sel) for n in range(lanes)], s.last))
    out = torch.zeros(h, w, prog.out_beats * lanes, dtype=torch.int64)
    for p in range(h * w):
        y, x, base = p // w, p % w, (p * beats) % ring
        beat, lanes_out = 0, [None] * lanes
        for bank_fields, lane_fields, last in slots:
            vals = []
            for k, (off, dy, dx) in enumerate(bank_fields):
                inside = 0 <= y + dy < h and 0 <= x + dx < w
                vals.append(banks[k][(base + off) % ring] if inside else 0)
            for lane, (cap, zero, sel) in enumerate(lane_fields):
                if cap:
                    lanes_out[lane] = 0 if zero else vals[sel]
            if last:
                assert None not in lanes_out, "a lane of the beat was never captured"
                out[y, x, beat * lanes:(beat + 1) * lanes] = torch.tensor(lanes_out)
                beat, lanes_out = beat + 1, [None] * lanes
        assert beat == prog.out_beats
    return out


def _tables(rng):
    yield "interleaved 3x3", 10, interleaved_table(10, 3, 1)
    yield "interleaved 5x5 d2", 12, interleaved_table(12, 5, 2)
    yield "grouped 3x3 d2", 9, grouped_table(9, 3, 2)
    yield "im2col 3x3", 3, im2col_table(3, 3, interleave=False)
    yield "im2col 5x5 interleaved", 3, im2col_table(3, 5, interleave=True)
    yield "random", 7, random_table(rng, 7, 33, 4, sparse=False)
    yield "sparse", 12, random_table(rng, 12, 80, 4, sparse=True)


@pytest.mark.parametrize("lanes", [1, 3, 4])
def test_program_matches_shift_gather(lanes):
    """The compiled schedule, executed like the RTL executes it, is shift_gather."""
    rng = random.Random(1)
    unit = ShiftUnit(**{**PARAMS, "lanes": lanes})
    for name, c_in, table in _tables(rng):
        for h, w in [(5, 7), (1, 9), (8, 1), (1, 1)]:
            prog = unit.program(table, width=w, height=h, c_in=c_in)
            img = torch.randint(-128, 128, (h, w, c_in))
            ref = shift_gather(img, torch.tensor(table))
            got = emulate(unit, prog, img)
            assert torch.equal(got[:, :, :len(table)], ref), f"{name} {h}x{w} lanes={lanes}"
            assert not got[:, :, len(table):].any(), "padding lanes must be 0"


def test_plain_shift_is_conflict_free():
    """src = j never collides in a bank: one slot per output beat."""
    for lanes in (1, 2, 4, 8):
        for c in (1, 5, 16, 37):
            slots = plan_slots(interleaved_table(c, 3, 1), lanes)
            assert len(slots) == math.ceil(c / lanes)
            assert all(s.last for s in slots)


def test_im2col_slot_count():
    """im2col: bank conflicts cost slots; bank copies and tap-major order avoid them."""
    # without copies all 9 taps of channel 0 hit bank 0: one slot per output channel
    slots = plan_slots(im2col_table(1, 3, interleave=False), 4)
    assert len(slots) == 9
    assert [s.last for s in slots] == [False, False, False, True] * 2 + [True]
    # with copies (c_in < lanes) every bank holds channel 0: one slot per beat
    assert bank_map(1, 4) == [0, 0, 0, 0]
    assert len(plan_slots(im2col_table(1, 3, interleave=False), 4, c_in=1)) == 3
    # RGB at 8 lanes: banks hold channels 0,1,2,0,1,2,0,1
    assert bank_map(3, 8) == [0, 1, 2, 0, 1, 2, 0, 1]
    assert len(plan_slots(im2col_table(3, 3, interleave=True), 8, c_in=3)) == 6
    # tap-major im2col of C_in >= lanes is conflict-free; channel-major is not
    assert len(plan_slots(im2col_table(4, 3, interleave=True), 4, c_in=4)) == 9
    assert len(plan_slots(im2col_table(16, 3, interleave=True), 8, c_in=16)) == 18
    assert len(plan_slots(im2col_table(16, 3, interleave=False), 8, c_in=16)) == 112


def test_shared_reads():
    """Lanes asking for the same word share one read."""
    slots = plan_slots([(0, 1, 1)] * 4, 4)
    assert len(slots) == 1 and slots[0].lanes == (("bank", 0),) * 4


def test_program_rejects_bad_layers():
    unit = ShiftUnit(**PARAMS)
    with pytest.raises(ValueError, match="source channel"):
        unit.program([(3, 0, 0)], width=4, height=4, c_in=3)
    with pytest.raises(ValueError, match="radius"):
        unit.program([(0, 5, 0)], width=4, height=4, c_in=1)
    with pytest.raises(ValueError, match="width"):
        unit.program([(0, 0, 0)], width=17, height=4, c_in=1)
    with pytest.raises(ValueError, match="c_in"):
        unit.program([(0, 0, 0)], width=4, height=4, c_in=13)
    with pytest.raises(ValueError, match="rows"):
        unit.program([(0, 0, 0)] * 81, width=4, height=4, c_in=1)
    with pytest.raises(ValueError, match="does not fit"):
        unit.program([(0, 4, 4)], width=16, height=4, c_in=1, ring_pixels=100)
    with pytest.raises(ValueError, match="exceeds depth"):
        unit.program([(0, 0, 0)], width=4, height=4, c_in=12, ring_pixels=200)


def test_constructor_validation():
    with pytest.raises(ValueError, match="lanes"):
        ShiftUnit(**{**PARAMS, "lanes": 0})
    with pytest.raises(ValueError, match="radius"):
        ShiftUnit(**{**PARAMS, "radius": -1})
    with pytest.raises(ValueError, match="depth"):
        ShiftUnit(**{**PARAMS, "depth": 1})
    with pytest.raises(ValueError, match="max_slots"):
        ShiftUnit(**{**PARAMS, "max_slots": 2})


@pytest.mark.sim
def test_shift_unit_rtl():
    """Verilator cosimulation: 100+ random configurations, every output word checked.

    The ring banks and the schedule are built on the DP16KD simulation model (``hw.dp16kd``), as
    they are wired on ECP5; the slow builds below use inferred memories."""
    params = dict(PARAMS, block_ram="model")
    run_cocotb(
        ShiftUnit(**params),
        test_module="tb_shift_unit",
        build_name="shift_unit",
        env={
            "SHIFT_UNIT_PARAMS": json.dumps(params),
            "SHIFTFPGA_SHIFT_CONFIGS": os.environ.get("SHIFTFPGA_SHIFT_CONFIGS", "100"),
        },
    )


@pytest.mark.sim
@pytest.mark.slow
@pytest.mark.parametrize("params", [
    dict(lanes=1, max_width=12, max_height=9, max_cin=5, max_cout=30, radius=3),
    dict(lanes=3, max_width=13, max_height=7, max_cin=8, max_cout=60, radius=4, signed=False),
], ids=["lanes1", "lanes3_uint8"])
def test_shift_unit_rtl_other_builds(params, request):
    """Further builds: a single lane, and a non-power-of-two lane count with uint8 data.

    Two more Verilator builds (about a minute each), so only with ``-m slow``.
    """
    if "slow" not in (request.config.option.markexpr or ""):
        pytest.skip("two extra Verilator builds: run with -m slow")
    run_cocotb(
        ShiftUnit(**params),
        test_module="tb_shift_unit",
        build_name=f"shift_unit_l{params['lanes']}",
        env={
            "SHIFT_UNIT_PARAMS": json.dumps(params),
            "SHIFTFPGA_SHIFT_CONFIGS": os.environ.get("SHIFTFPGA_SHIFT_CONFIGS", "40"),
        },
    )
