"""Tile feeder (hw/tile_feeder.py) alone: beat order, weights and throughput.

The engine tests (test_engine.py) check every stored word, but a feeder that
delivers the right beats at a lower rate passes them; here the feeder runs one
plain 1x1 layer into an always-ready sink, behind the engine's weight memory
(``hw.sliced_memory.SlicedMemory`` with input registers and two output
registers: four cycles of read latency), and must hand over a tile's beats back to back (one per cycle, after
the first) with the right bytes and weight words.
"""

from __future__ import annotations

import random

from amaranth import Module
from amaranth.sim import Simulator

from hw.engine import Engine
from hw.engine_params import EngineParams
from hw.sliced_memory import SlicedMemory
from hw.systolic import SystolicArray
from hw.tile_feeder import TileFeeder

P, Q, L = 2, 4, 2
C_IN, C_OUT, PIXELS = 10, 8, 6          # 3 tiles of 2 pixels, 2 channel groups each
PARAMS = EngineParams(rows=P, cols=Q, lanes=L, act_words=256, weight_words=64, max_layers=4, sched_words=64,
                      table_words=64, logit_words=4, max_width=8, max_height=8, max_cin=16, max_gather=16,
                      radius=1, max_cout=16)


def test_feeder_beats_are_back_to_back_with_their_weights():
    rng = random.Random(5)
    pixels = [[rng.randrange(256) for _ in range(C_IN)] for _ in range(PIXELS)]
    groups = C_OUT // Q
    weights = [rng.randrange(1 << (8 * Q)) for _ in range(groups * C_IN)]
    w_base = 7

    array = SystolicArray(P, Q, out_lanes=L, tag_width=16, max_cin=PARAMS.max_gather)
    array._MustUse__silence = True          # only its input layout is needed
    feeder = TileFeeder(PARAMS, array.input_layout)
    m = Module()
    m.submodules.feeder = feeder
    # the weight memory the engine builds (registered inputs, the block RAMs' read, registered
    # data), loaded through its write port before the layer starts
    wmem = m.submodules.wmem = SlicedMemory(width=8 * Q, depth=PARAMS.weight_words, name="weight",
                                            input_registers=True,
                                            output_registers=Engine.MEMORY_OUTPUT_REGISTERS)
    assert wmem.read_latency == TileFeeder.WEIGHT_READ_LATENCY
    (rd,) = wmem.reads
    m.d.comb += [rd.addr.eq(feeder.w_addr), rd.en.eq(feeder.w_en), feeder.w_data.eq(rd.data)]

    c = feeder.cfg
    sim = Simulator(m)
    sim.add_clock(1e-6)
    words = -(-C_IN // L)
    beats = []

    async def source(ctx):
        for i, w in enumerate(weights):
            ctx.set(wmem.write.addr, w_base + i)
            ctx.set(wmem.write.data, w)
            ctx.set(wmem.write.en, 1)
            await ctx.tick()
        ctx.set(wmem.write.en, 0)
        await ctx.tick().repeat(2)          # the last write passes the input register
        ctx.set(c.width, PIXELS)
        ctx.set(c.height, 1)
        ctx.set(c.g_words, words)
        ctx.set(c.c_gather, C_IN)
        ctx.set(c.c_out, C_OUT)
        ctx.set(c.groups, groups)
        ctx.set(c.out_pixels, PIXELS)
        ctx.set(c.w_base, w_base)
        ctx.set(feeder.start, 1)
        await ctx.tick()
        ctx.set(feeder.start, 0)
        for px in pixels:
            for w in range(words):
                chunk = px[w * L:(w + 1) * L] + [0] * (L - len(px[w * L:(w + 1) * L]))
                ctx.set(feeder.i.payload, chunk)
                ctx.set(feeder.i.valid, 1)
                await ctx.tick().until(feeder.i.ready)
        ctx.set(feeder.i.valid, 0)

    async def sink(ctx):
        ctx.set(feeder.o.ready, 1)
        cycle = 0
        while len(beats) < (PIXELS // P) * groups * C_IN:
            await ctx.tick()
            cycle += 1
            if ctx.get(feeder.o.valid):
                op = feeder.o.payload
                beats.append((cycle, [ctx.get(op.act[k]) for k in range(P)], ctx.get(op.weight.as_value()),
                              ctx.get(op.last)))

    sim.add_testbench(source)
    sim.add_testbench(sink, background=True)
    sim.run_until(1e-3)

    n = 0
    for tile in range(PIXELS // P):
        for g in range(groups):
            for ci in range(C_IN):
                cycle, acts, weight, last = beats[n]
                assert acts == [pixels[tile * P + k][ci] for k in range(P)], (tile, g, ci)
                assert weight == weights[g * C_IN + ci], (tile, g, ci)
                assert last == (ci == C_IN - 1)
                n += 1
    # the array is fed without gaps once the first beat is there (the pixels arrive faster than a
    # tile is replayed: 5 words per pixel, 2 pixels per tile, 20 beats per tile)
    cycles = [b[0] for b in beats]
    assert cycles[-1] - cycles[0] == len(beats) - 1, [y - x for x, y in zip(cycles, cycles[1:]) if y - x != 1]
