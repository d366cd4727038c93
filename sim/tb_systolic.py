"""cocotb testbench of ``hw.systolic.SystolicArray`` against ``quant.numerics.conv1x1_acc``.

Configuration comes from the environment (set by ``sim/test_systolic.py``):
``TB_ARRAY`` (JSON: the constructor arguments of the array under test),
``TB_CONFIGS`` (number of random layer configurations), ``SHIFTFPGA_SEED``.

Each configuration is a random 1x1 layer (C_in, C_out and pixel count chosen
so that most are *not* multiples of P and Q, plus fixed corner cases), tiled
the way a feeder would (pixel tiles inside output-channel tiles), sent with
random gaps on ``i`` and drained with random back-pressure on ``o``. Every
output word is compared with the golden accumulators, and a mismatch names the
configuration, pixel, channel, expected and received values.
"""

from __future__ import annotations

import json
import os
import random

import cocotb
import torch
from cocotb.triggers import RisingEdge
from amaranth.hdl import Shape
from amaranth.lib import data

from quant.numerics import conv1x1_acc, weight_range
from sim.stream import StreamSink, StreamSource, reset, start_clock

__all__ = ["pack", "unpack"]


# ---- payload helpers (shared with tb_output_stage) -------------------------

def pack(layout, value) -> int:
    """Flatten ``value`` (dict for a struct, list for an array, int otherwise) into ``layout``'s bits."""
    if isinstance(layout, data.StructLayout):
        word = 0
        for name, field in layout:
            if name in value:
                word |= pack(field.shape, value[name]) << field.offset
        return word
    if isinstance(layout, data.ArrayLayout):
        ew = _size(layout.elem_shape)
        word = 0
        for i, v in enumerate(value):
            word |= pack(layout.elem_shape, v) << (i * ew)
        return word
    return int(value) & ((1 << _size(layout)) - 1)


def unpack(layout, word: int):
    """Inverse of :func:`pack`: a dict / list / int (signed shapes sign-extended)."""
    if isinstance(layout, data.StructLayout):
        return {name: unpack(field.shape, (word >> field.offset) & ((1 << _size(field.shape)) - 1))
                for name, field in layout}
    if isinstance(layout, data.ArrayLayout):
        ew = _size(layout.elem_shape)
        return [unpack(layout.elem_shape, (word >> (i * ew)) & ((1 << ew) - 1)) for i in range(layout.length)]
    shape = Shape.cast(layout)
    word &= (1 << shape.width) - 1
    if shape.signed and word >> (shape.width - 1):
        word -= 1 << shape.width
    return word


def _size(shape) -> int:
    if isinstance(shape, data.Layout):
        return shape.size
    return Shape.cast(shape).width


# ---- stimulus --------------------------------------------------------------

def _random_layer(rng: random.Random, idx: int, P: int, Q: int, wbits: int, max_cin: int):
    """One layer: (c_in, c_out, n_pixels, act_signed, x [n, c_in], w [c_out, c_in])."""
    corners = [
        # (c_in, c_out, npix): single channel, exact multiples, one over, one under
        (1, 1, 1), (1, Q, P), (P + 3, Q, P), (2 * P + 5, 2 * Q, 2 * P),
        (7, Q + 1, P + 1), (3, 2 * Q - 1, 3 * P - 1), (max_cin, 1, 1),
    ]
    if idx < len(corners):
        c_in, c_out, npix = corners[idx]
    else:
        c_in = rng.choice([rng.randint(1, 8), rng.randint(1, 40), rng.randint(P, 3 * P + 7)])
        c_out = rng.randint(1, 3 * Q + 2)
        npix = rng.randint(1, 3 * P + 2)
    c_in = min(c_in, max_cin)
    act_signed = rng.random() < 0.5
    lo_a, hi_a = (-128, 127) if act_signed else (0, 255)
    wlo, whi = weight_range(wbits)
    style = idx % 4 if idx >= len(corners) else 1
    if idx == len(corners) - 1:  # max_cin channels of 255 * +-w_max: the accumulator's exact bound
        act_signed = False
        s = rng.choice([1, -1])
        x = [[255] * c_in for _ in range(npix)]
        w = [[s * whi] * c_in for _ in range(c_out)]
    elif style == 1:  # extremes only: the largest accumulators
        x = [[rng.choice([lo_a, hi_a]) for _ in range(c_in)] for _ in range(npix)]
        s = rng.choice([1, -1])
        w = [[s * rng.choice([whi, whi, wlo]) for _ in range(c_in)] for _ in range(c_out)]
    else:
        x = [[rng.randint(lo_a, hi_a) for _ in range(c_in)] for _ in range(npix)]
        w = [[rng.randint(wlo, whi) for _ in range(c_in)] for _ in range(c_out)]
    return c_in, c_out, npix, act_signed, x, w


def _tiles(P: int, Q: int, c_out: int, npix: int):
    """Feeder order: output-channel tiles outside, pixel tiles inside."""
    for co in range(0, c_out, Q):
        for px in range(0, npix, P):
            yield co, px, min(P, npix - px), min(Q, c_out - co)


@cocotb.test()
async def systolic_random_layers(dut):
    arr = json.loads(os.environ["TB_ARRAY"])
    n_cfg = int(os.environ.get("TB_CONFIGS", "100"))
    seed = int(os.environ["SHIFTFPGA_SEED"])
    rng = random.Random(seed)
    dut._log.info(f"seed={seed} array={arr} configurations={n_cfg}")

    from hw.systolic import SystolicArray
    ref = SystolicArray(**arr)
    P, Q, L, wbits = ref.rows, ref.cols, ref.out_lanes, ref.weight_bits
    il, ol = ref.input_layout, ref.output_layout
    max_cin = min(ref.max_cin, 300)  # the longest corner-case tile we simulate

    start_clock(dut.clk)
    await reset(dut.clk, dut.rst)

    total_words = 0
    for idx in range(n_cfg):
        c_in, c_out, npix, act_signed, x, w = _random_layer(rng, idx, P, Q, wbits, max_cin)
        acc = conv1x1_acc(torch.tensor(x).view(1, npix, c_in), torch.tensor(w))[0]  # [npix, c_out]
        beats, expected = [], []
        for t, (co, px, n_pix, n_chan) in enumerate(_tiles(P, Q, c_out, npix)):
            tag = (idx * 131 + t) & ((1 << ref.tag_width) - 1)
            for ci in range(c_in):
                act = [x[px + p][ci] if p < n_pix else rng.randint(0, 255) for p in range(P)]
                wt = [w[co + q][ci] if q < n_chan else rng.randint(*weight_range(wbits)) for q in range(Q)]
                last = ci == c_in - 1
                beats.append(pack(il, {
                    "act": act, "act_signed": int(act_signed), "weight": wt, "last": int(last),
                    # n_pix / n_chan / tag are only read on `last`: garbage elsewhere
                    "n_pix": n_pix if last else rng.randint(0, P), "n_chan": n_chan if last else rng.randint(0, Q),
                    "tag": tag if last else rng.getrandbits(max(ref.tag_width, 1)),
                }))
            groups = [g for g in range(Q // L) if g * L < n_chan]
            for p in range(n_pix):
                for g in groups:
                    expected.append({
                        "acc": [int(acc[px + p, co + g * L + k]) if g * L + k < n_chan else None for k in range(L)],
                        "pixel": p, "chan": g * L,
                        "mask": sum(1 << k for k in range(L) if g * L + k < n_chan),
                        "last": int(p == n_pix - 1 and g == groups[-1]), "tag": tag,
                        "where": (px + p, co + g * L),
                    })
        gap = rng.choice([0.0, 0.2, 0.5])
        stall = rng.choice([0.0, 0.3, 0.6])
        src = StreamSource(dut.clk, dut.i__valid, dut.i__ready, dut.i__payload, rng, gap_prob=gap)
        snk = StreamSink(dut.clk, dut.o__valid, dut.o__ready, dut.o__payload, rng, stall_prob=stall)
        task = cocotb.start_soon(src.send(beats))
        got = await snk.receive(len(expected), timeout_cycles=2000)
        await task
        for n, (e, word) in enumerate(zip(expected, got)):
            g = unpack(ol, word)
            for k in range(L):
                if e["acc"][k] is not None and g["acc"][k] != e["acc"][k]:
                    raise AssertionError(
                        f"config {idx} (C_in={c_in} C_out={c_out} pixels={npix} signed={act_signed}): "
                        f"pixel {e['where'][0]} channel {e['where'][1] + k}: expected {e['acc'][k]}, got {g['acc'][k]}"
                    )
            for f in ("pixel", "chan", "mask", "last", "tag"):
                if g[f] != e[f]:
                    raise AssertionError(
                        f"config {idx} (C_in={c_in} C_out={c_out} pixels={npix}): word {n} "
                        f"(pixel {e['where'][0]}, channel {e['where'][1]}): field {f} expected {e[f]}, got {g[f]}"
                    )
        total_words += len(expected)
    await snk.expect_idle(10)
    dut._log.info(f"{n_cfg} configurations, {total_words} output words checked")


@cocotb.test()
async def systolic_back_to_back(dut):
    """No gaps, no back-pressure: with C_in >= P + LATENCY a new beat is accepted every cycle."""
    arr = json.loads(os.environ["TB_ARRAY"])
    from hw.systolic import SystolicArray
    ref = SystolicArray(**arr)
    P, Q, L = ref.rows, ref.cols, ref.out_lanes
    il = ref.input_layout
    start_clock(dut.clk)
    await reset(dut.clk, dut.rst)
    c_in = (P * Q // L) + ref.LATENCY
    tiles = 6
    beats = [pack(il, {"act": [1] * P, "act_signed": 0, "weight": [1] * Q, "last": int(ci == c_in - 1),
                       "n_pix": P, "n_chan": Q, "tag": t}) for t in range(tiles) for ci in range(c_in)]
    src = StreamSource(dut.clk, dut.i__valid, dut.i__ready, dut.i__payload, random.Random(0))
    snk = StreamSink(dut.clk, dut.o__valid, dut.o__ready, dut.o__payload, random.Random(0))
    cocotb.start_soon(snk.receive(tiles * P * Q // L))
    await RisingEdge(dut.clk)
    start = cocotb.utils.get_sim_time("ns")
    await src.send(beats)
    cycles = round((cocotb.utils.get_sim_time("ns") - start) / 10)
    dut._log.info(f"{len(beats)} beats accepted in {cycles} cycles")
    assert cycles <= len(beats) + 1, f"{len(beats)} beats took {cycles} cycles: the array stalled"
