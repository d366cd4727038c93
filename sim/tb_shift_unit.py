"""cocotb testbench of ``hw.shift_unit.ShiftUnit`` (driven by ``sim/test_shift_unit.py``).

One build, many run-time configurations: for each one the testbench loads the
compiled table through ``tab``, sets ``cfg``, streams one or two random frames in
with random gaps and takes the output with random back-pressure, and compares
every output word with ``quant.numerics.shift_gather``.

Environment (set by the pytest entry):

``SHIFT_UNIT_PARAMS``   JSON of the ``ShiftUnit`` constructor arguments of the build
``SHIFTFPGA_SEED``      seed of every random choice
``SHIFTFPGA_SHIFT_CONFIGS``  number of random configurations (default 100)
"""

from __future__ import annotations

import json
import math
import os
import random

import cocotb
import torch
from cocotb.triggers import ReadOnly, RisingEdge
from cocotb.utils import get_sim_time

from hw.shift_unit import ShiftUnit
from quant.numerics import shift_gather
from sim.stream import StreamSink, StreamSource, pack_lanes, reset, start_clock, unpack_lanes


# ----------------------------------------------------------------- tables


def interleaved_table(c: int, k: int, dilation: int) -> list[tuple[int, int, int]]:
    """The authors' CIFAR shift: channel c moves by direction c mod k^2; the last C mod k^2 stay."""
    rows, shifted = [], c - c % (k * k)
    for ch in range(c):
        if ch < shifted:
            i = ch % (k * k)
            rows.append((ch, dilation * (i // k - k // 2), dilation * (i % k - k // 2)))
        else:
            rows.append((ch, 0, 0))
    return rows


def grouped_table(c: int, k: int, dilation: int) -> list[tuple[int, int, int]]:
    """The paper's grouping: contiguous blocks of about C / k^2 channels per direction."""
    rows = []
    for ch in range(c):
        i = ch * k * k // c
        rows.append((ch, dilation * (i // k - k // 2), dilation * (i % k - k // 2)))
    return rows


def im2col_table(c_in: int, k: int, interleave: bool) -> list[tuple[int, int, int]]:
    """Shift-im2col of a KxK conv: K*K output channels per input channel (src != j)."""
    taps = [(ky - k // 2, kx - k // 2) for ky in range(k) for kx in range(k)]
    if interleave:          # j = tap * C_in + c
        return [(c, dy, dx) for dy, dx in taps for c in range(c_in)]
    return [(c, dy, dx) for c in range(c_in) for dy, dx in taps]   # j = c * K*K + tap


def random_table(rng: random.Random, c_in: int, c_out: int, radius: int, sparse: bool) -> list[tuple[int, int, int]]:
    """Arbitrary rows; ``sparse`` leaves most channels unshifted (Sparse Shift Layer style)."""
    rows = []
    for _ in range(c_out):
        if sparse and rng.random() < 0.7:
            dy = dx = 0
        else:
            dy, dx = rng.randint(-radius, radius), rng.randint(-radius, radius)
        rows.append((rng.randrange(c_in), dy, dx))
    return rows


def random_config(rng: random.Random, unit: ShiftUnit, index: int) -> dict:
    """One random run-time configuration that fits ``unit`` (corner cases first)."""
    wmax, hmax, cmax, omax, rad = unit.max_width, unit.max_height, unit.max_cin, unit.max_cout, unit.radius
    for _ in range(1000):
        kind = rng.choice(["interleaved", "grouped", "im2col", "random", "sparse", "interleaved", "im2col"])
        shape = rng.choice(["random", "random", "odd", "row", "col", "max", "tiny"])
        if index < 8:   # fixed corner cases first: max size, 1xN, Nx1, 1x1, odd
            shape = ["max", "row", "col", "tiny", "odd", "max", "max", "odd"][index]
            kind = ["interleaved", "interleaved", "interleaved", "random", "im2col", "im2col", "random", "grouped"][index]
        w = {"random": rng.randint(1, wmax), "odd": rng.randrange(1, wmax + 1, 2), "row": wmax if rng.random() < 0.5 else rng.randint(1, wmax),
             "col": 1, "max": wmax, "tiny": 1}[shape]
        h = {"random": rng.randint(1, hmax), "odd": rng.randrange(1, hmax + 1, 2), "row": 1,
             "col": hmax if rng.random() < 0.5 else rng.randint(1, hmax), "max": hmax, "tiny": 1}[shape]
        k, dil = rng.choice([(3, 1), (3, 2), (5, 1), (5, 2)])
        if k // 2 * dil > rad:
            continue
        if kind in ("interleaved", "grouped"):
            c_in = cmax if shape == "max" else rng.randint(1, min(cmax, omax))
            table = (interleaved_table if kind == "interleaved" else grouped_table)(c_in, k, dil)
        elif kind == "im2col":
            kk = rng.choice([3, 5])
            if kk // 2 > rad or kk * kk > omax:
                continue
            c_in = rng.randint(1, min(cmax, omax // (kk * kk)))
            table = im2col_table(c_in, kk, interleave=rng.random() < 0.5)
            k, dil = kk, 1
        else:
            c_in = cmax if shape == "max" else rng.randint(1, cmax)
            c_out = omax if shape == "max" else rng.randint(1, omax)
            table = random_table(rng, c_in, c_out, rad, sparse=(kind == "sparse"))
        r = max(abs(dy) for _, dy, _ in table)
        d = max(abs(dx) for _, _, dx in table)
        beats = math.ceil(c_in / unit.lanes)
        lo, hi = unit.ring_pixels_needed(r * w + d), unit.depth // beats
        if lo > hi:
            continue        # does not fit this unit (program() would refuse it)
        # small rings stress the wrap-around and the input-side flow control
        ring = rng.choice([lo, lo, min(hi, lo + rng.randint(0, 8)), hi, rng.randint(lo, hi)])
        return dict(kind=kind, k=k, dilation=dil, width=w, height=h, c_in=c_in, table=table, ring_pixels=ring,
                    frames=rng.choice([1, 1, 2]), gap_prob=rng.choice([0.0, 0.0, 0.2, 0.5]),
                    stall_prob=rng.choice([0.0, 0.0, 0.3, 0.6]), extremes=rng.random() < 0.5)
    raise RuntimeError("could not draw a configuration that fits the unit")


def random_image(rng: random.Random, h: int, w: int, c: int, lo: int, hi: int, extremes: bool) -> torch.Tensor:
    """Random feature map; with ``extremes`` most values are lo / hi / 0."""
    vals = [rng.choice([lo, hi, 0, rng.randint(lo, hi)]) if extremes else rng.randint(lo, hi) for _ in range(h * w * c)]
    return torch.tensor(vals, dtype=torch.int64).view(h, w, c)


# ----------------------------------------------------------------- driver


async def wait_idle(dut, limit: int = 1000) -> None:
    for _ in range(limit):
        await ReadOnly()
        if not dut.busy.value:
            await RisingEdge(dut.clk)
            return
        await RisingEdge(dut.clk)
    raise AssertionError(f"unit still busy after {limit} cycles")


async def load_program(dut, unit: ShiftUnit, prog) -> None:
    """Write the schedule through ``tab`` (always ready) and set ``cfg``."""
    tab_layout = unit.signature.members["tab"].signature.members["payload"].shape
    data_off = tab_layout["data"].offset
    for addr, word in enumerate(prog.slot_words):
        dut.tab__valid.value = 1
        dut.tab__payload.value = addr | (word << data_off)
        await RisingEdge(dut.clk)
    dut.tab__valid.value = 0
    dut.cfg.value = prog.config_bits
    await RisingEdge(dut.clk)


@cocotb.test()
async def random_configurations(dut):
    """Many random run-time configurations against shift_gather, every word compared."""
    params = json.loads(os.environ["SHIFT_UNIT_PARAMS"])
    seed = int(os.environ["SHIFTFPGA_SEED"])
    count = int(os.environ.get("SHIFTFPGA_SHIFT_CONFIGS", "100"))
    unit = ShiftUnit(**params)
    lanes, bits, signed = unit.lanes, params.get("bits", 8), params.get("signed", True)
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    rng = random.Random(seed)
    dut._log.info("seed %d, %d configurations, unit %s", seed, count, params)

    start_clock(dut.clk)
    dut.i__valid.value = 0
    dut.o__ready.value = 0
    dut.tab__valid.value = 0
    dut.cfg.value = 0
    await reset(dut.clk, dut.rst)

    # Unconfigured (cfg = 0): the unit must stay idle, refuse input and emit nothing.
    dut.i__valid.value = 1
    dut.o__ready.value = 1
    for _ in range(20):
        await ReadOnly()
        assert not dut.busy.value and not dut.i__ready.value and not dut.o__valid.value, "unit not idle with cfg = 0"
        await RisingEdge(dut.clk)
    dut.i__valid.value = 0
    dut.o__ready.value = 0

    total_words = 0
    cycles_start = get_sim_time("ns")
    for index in range(count):
        cfg = random_config(rng, unit, index)
        prog = unit.program(cfg["table"], width=cfg["width"], height=cfg["height"], c_in=cfg["c_in"],
                            ring_pixels=cfg["ring_pixels"])
        table = torch.tensor(cfg["table"], dtype=torch.int64)
        h, w, c_in = cfg["height"], cfg["width"], cfg["c_in"]
        c_out = len(cfg["table"])
        in_beats = math.ceil(c_in / lanes)

        await wait_idle(dut)
        await load_program(dut, unit, prog)

        frames = [random_image(rng, h, w, c_in, lo, hi, cfg["extremes"]) for _ in range(cfg["frames"])]
        words_in = []
        expected = []   # (frame, y, x, beat, lane values)
        for f, img in enumerate(frames):
            ref = shift_gather(img, table)
            for y in range(h):
                for x in range(w):
                    px = img[y, x].tolist() + [0] * (in_beats * lanes - c_in)
                    words_in += [pack_lanes(px[b * lanes:(b + 1) * lanes], bits) for b in range(in_beats)]
                    out = ref[y, x].tolist() + [0] * (prog.out_beats * lanes - c_out)
                    expected += [(f, y, x, b, out[b * lanes:(b + 1) * lanes]) for b in range(prog.out_beats)]

        src = StreamSource(dut.clk, dut.i__valid, dut.i__ready, dut.i__payload, rng, gap_prob=cfg["gap_prob"])
        snk = StreamSink(dut.clk, dut.o__valid, dut.o__ready, dut.o__payload, rng, stall_prob=cfg["stall_prob"])
        sender = cocotb.start_soon(src.send(words_in))
        limit = 50 + 4 * (cfg["ring_pixels"] + unit.max_width) * (in_beats + prog.config["slots"])
        got = await snk.receive(len(expected), timeout_cycles=limit)
        await sender
        await snk.expect_idle(4)

        bad = []
        for (f, y, x, b, exp), word in zip(expected, got):
            vals = unpack_lanes(word, bits, lanes, signed=signed)
            for lane in range(lanes):
                if vals[lane] != exp[lane]:
                    bad.append(f"config {index} frame {f} pixel (y={y}, x={x}) channel {b * lanes + lane}: "
                               f"expected {exp[lane]}, got {vals[lane]}")
        summary = (f"config {index}: {cfg['kind']} k={cfg['k']} dil={cfg['dilation']} {h}x{w}x{c_in} -> {c_out} ch, "
                   f"ring {cfg['ring_pixels']} px, {prog.config['slots']} slots/{prog.out_beats} beats per pixel, "
                   f"{cfg['frames']} frame(s), gaps {cfg['gap_prob']}, stalls {cfg['stall_prob']}")
        if bad:
            dut._log.error("%s\n  table %s\n  %s", summary, cfg["table"], "\n  ".join(bad[:20]))
            raise AssertionError(f"{len(bad)} wrong output words; first: {bad[0]} ({summary}; seed {seed})")
        dut._log.debug(summary)
        total_words += len(expected)
    dut._log.info("%d configurations, %d output beats checked in %.0f cycles", count, total_words,
                  (get_sim_time("ns") - cycles_start) / 10)


@cocotb.test()
async def full_throughput(dut):
    """Without gaps or back-pressure a plain shift streams one beat per cycle, and the
    first output beat is valid 7 cycles after input pixel ``reach`` is complete."""
    params = json.loads(os.environ["SHIFT_UNIT_PARAMS"])
    unit = ShiftUnit(**params)
    rng = random.Random(int(os.environ["SHIFTFPGA_SEED"]) + 1)
    lanes, bits = unit.lanes, params.get("bits", 8)
    h, w, c = unit.max_height, unit.max_width, unit.max_cin
    table = (interleaved_table if c >= 9 else grouped_table)(c, 3, 1)    # reach = W + 1
    prog = unit.program(table, width=w, height=h, c_in=c)
    start_clock(dut.clk)
    dut.i__valid.value = 0
    dut.o__ready.value = 0
    dut.tab__valid.value = 0
    await reset(dut.clk, dut.rst)
    await load_program(dut, unit, prog)
    signed = params.get("signed", True)
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    img = random_image(rng, h, w, c, lo, hi, False)
    beats = math.ceil(c / lanes)
    words = []
    for y in range(h):
        for x in range(w):
            px = img[y, x].tolist() + [0] * (beats * lanes - c)
            words += [pack_lanes(px[b * lanes:(b + 1) * lanes], bits) for b in range(beats)]
    ref = shift_gather(img, torch.tensor(table))
    exp = [pack_lanes((ref[y, x].tolist() + [0] * (beats * lanes - c))[b * lanes:(b + 1) * lanes], bits)
           for y in range(h) for x in range(w) for b in range(prog.out_beats)]

    # Drive both streams by hand, always valid / always ready, and time every transfer.
    in_cycles, out_cycles, got = [], [], []
    dut.o__ready.value = 1
    cycle = 0
    while len(got) < len(exp):
        n = len(in_cycles)
        dut.i__valid.value = int(n < len(words))
        if n < len(words):
            dut.i__payload.value = words[n]
        await ReadOnly()
        if dut.i__valid.value and dut.i__ready.value:
            in_cycles.append(cycle)
        if dut.o__valid.value:
            out_cycles.append(cycle)
            got.append(int(dut.o__payload.value))
        await RisingEdge(dut.clk)
        cycle += 1
        assert cycle < 10 * len(exp), "timeout"
    dut.i__valid.value = 0
    dut.o__ready.value = 0
    assert got == exp, "output differs from shift_gather"
    reach = prog.config["reach"]
    latency = out_cycles[0] - in_cycles[(reach + 1) * beats - 1]
    span = out_cycles[-1] - out_cycles[0] + 1
    dut._log.info("input %d beats in %d cycles; output %d beats in %d cycles; first output %d cycles after "
                  "the last beat of input pixel %d", len(words), in_cycles[-1] - in_cycles[0] + 1, len(exp), span,
                  latency, reach)
    assert span == len(exp), f"output took {span} cycles for {len(exp)} beats (expected one beat per cycle)"
    assert in_cycles[-1] - in_cycles[0] + 1 == len(words), "input was not accepted at one beat per cycle"
    assert latency == 7, f"latency {latency}, documented 7"
