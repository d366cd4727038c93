"""hw/dual_read.py: a table read through both ports of its blocks behaves as one memory, on the DP16KD
model (the primitive's wiring) and as an inferred memory; and it costs Yosys' block count."""

import random

import pytest
from amaranth.sim import Simulator

from hw.dp16kd import ebr_count
from hw.dual_read import DualReadMemory, dual_read_blocks


@pytest.mark.parametrize("width, depth", [(54, 128), (93, 384), (81, 64), (39, 512), (36, 512), (18, 2)])
def test_as_many_blocks_as_yosys_gives_the_inferred_memory(width, depth):
    assert dual_read_blocks(width) == ebr_count(width, depth)


def _run(mem, steps, seed):
    """Random writes, reads and idle cycles; every cycle's ``read.data`` against a model of the port:
    the latch loads the addressed word in a cycle with ``read.en`` and no write, the output register
    loads the latch every cycle (or with the read, ``registers_follow_en``)."""
    rng = random.Random(seed)
    ref = [0] * mem.depth
    latch = out = 0
    checked = 0

    async def bench(ctx):
        nonlocal latch, out, checked
        for step in range(steps):
            # writes in bursts (a table load), reads most of the time, sometimes both (the write wins)
            write = rng.random() < (0.6 if step < steps // 4 else 0.15)
            read = rng.random() < 0.7
            w_addr, w_data = rng.randrange(mem.depth), rng.getrandbits(mem.width)
            r_addr = rng.randrange(mem.depth)
            ctx.set(mem.write.en, write)
            ctx.set(mem.write.addr, w_addr)
            ctx.set(mem.write.data, w_data)
            ctx.set(mem.read.en, read)
            ctx.set(mem.read.addr, r_addr)
            assert ctx.get(mem.read.data) == out, (step, out)
            checked += 1
            await ctx.tick()
            loads = read and not write
            if loads or not mem.registers_follow_en:
                out = latch
            if loads:
                latch = ref[r_addr]
            if write:
                ref[w_addr] = w_data

    sim = Simulator(mem)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return checked


@pytest.mark.parametrize("block_ram", ["model", "inferred"])
@pytest.mark.parametrize("follow", [False, True])
@pytest.mark.parametrize("width, depth", [(54, 128), (93, 384), (18, 4)])
def test_reads_return_what_was_written(block_ram, follow, width, depth):
    mem = DualReadMemory(width=width, depth=depth, name="t", block_ram=block_ram, registers_follow_en=follow)
    checked = _run(mem, 1500, seed=width * 1000 + depth + follow)
    assert checked > 500


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="depth must be 1..512"):
        DualReadMemory(width=8, depth=1024)
    with pytest.raises(ValueError, match="block_ram must be one of"):
        DualReadMemory(width=8, depth=64, block_ram="bram")
