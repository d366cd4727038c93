"""hw/sliced_memory.py: how a memory is cut into block-RAM slices, and that the slices behave as one memory."""

import random

import pytest
from amaranth.sim import Simulator

from hw.sliced_memory import SlicedMemory, slice_bits_for, sliced_blocks


@pytest.mark.parametrize("depth, width, bits, blocks", [
    (4096, 128, 4, 32),      # 85F weights before 2026-11-26: one 4096 x 4 block per slice
    (16384, 32, 1, 32),      # one 16384 x 1 block per bit
    (32768, 32, 1, 64),      # deeper than a block: two per bit
    (12288, 128, 4, 96),     # not a power of two: 3 blocks of 4096 x 4 per slice, not 128 x 16384 x 1
    (12288, 32, 4, 24),
    (100, 8, 8, 1),          # shallow: one slice
])
def test_slices_use_the_fewest_block_rams(depth, width, bits, blocks):
    assert slice_bits_for(depth, width) == bits
    assert sliced_blocks(width, depth) == blocks


@pytest.mark.parametrize("depth, width, max_deep, bits, blocks", [
    (9216, 32, 0, 16, 18),      # the 45F's activations with the fewest blocks: 16-bit slices, 9 blocks deep
    (9216, 32, 3, 4, 24),       # at most 3 deep: 4-bit slices of 3 blocks (9216 x 4 = 2.25 blocks)
    (4608, 64, 3, 8, 24),       # the 45F's weights: 8-bit slices of 3 (not 32-bit slices of 9)
    (12288, 128, 3, 4, 96),     # the 85F's weights are 3 deep already
    (65536, 8, 2, 1, 32),       # no width is shallow enough: 1-bit slices (4 deep)
])
def test_slices_at_most_max_deep_blocks_deep(depth, width, max_deep, bits, blocks):
    assert slice_bits_for(depth, width, max_deep) == bits
    assert sliced_blocks(width, depth, max_deep) == blocks


@pytest.mark.parametrize("input_registers, output_registers, block_ram", [
    (False, 0, "inferred"), (True, 0, "inferred"), (True, 1, "inferred"), (True, 2, "inferred"),
    # the DP16KD wiring (hw/dp16kd.py) on its simulation model: the first output register is the block's
    (False, 1, "model"), (True, 2, "model"),
])
def test_a_sliced_memory_reads_back_what_was_written(input_registers, output_registers, block_ram):
    depth, width = 12288, 12             # 4-bit slices, three of them, each 3 blocks deep
    mem = SlicedMemory(width=width, depth=depth, read_ports=2, name="m", input_registers=input_registers,
                       output_registers=output_registers, block_ram=block_ram)
    assert mem.slice_bits == 4
    latency = 1 + input_registers + output_registers
    assert mem.read_latency == latency
    _check_read_back(mem, [4095, 4096, 8191, 8192])


@pytest.mark.parametrize("depth, width, slice_bits", [
    (20000, 3, 1),        # 1-bit slices, two blocks of 16384 x 1 deep (the second partly used)
    (8192, 4, 2),         # one 8192 x 2 block per slice
    (3000, 16, 8),        # 2048 x 9 blocks: two deep, the parity bit unused
    (1024, 40, 16),       # 1024 x 18 blocks (two byte enables), a last slice of 8 bits
    (2500, 54, 18),       # all 18 bits of the 1024 x 18 shape: the channel table's slices, 3 deep
    (3000, 9, 9),         # all 9 bits of 2048 x 9
    (512, 32, 36),        # the 512 x 36 simple-dual-port shape: the tile buffer's banks
    (1000, 104, 36),      # three 36-bit slices (the last 32 bits), two blocks deep: the 85F's pool sums x 8
])
def test_every_dp16kd_shape_reads_back_what_was_written(depth, width, slice_bits):
    mem = SlicedMemory(width=width, depth=depth, read_ports=1, name="m", input_registers=True,
                       output_registers=2, slice_bits=slice_bits, block_ram="model")
    _check_read_back(mem, [2047, 2048, 16383, 16384])


def test_the_primitive_is_refused_where_it_does_not_fit():
    with pytest.raises(ValueError, match="output_registers >= 1"):
        SlicedMemory(width=8, depth=64, output_registers=0, block_ram="dp16kd")
    with pytest.raises(ValueError, match="18 bits"):
        SlicedMemory(width=64, depth=64, output_registers=1, slice_bits=32, block_ram="model")
    with pytest.raises(ValueError, match="block_ram must be one of"):
        SlicedMemory(width=8, depth=64, block_ram="bram")


def test_read_data_hold_while_the_read_enable_is_low():
    """A read port's data keep the last enabled read's word however long ``en`` stays low."""
    for block_ram in ("inferred", "model"):
        mem = SlicedMemory(width=8, depth=4096, read_ports=1, name="m", output_registers=1, slice_bits=8,
                           block_ram=block_ram)
        (rd,) = mem.reads

        async def bench(ctx):
            for a, v in ((5, 0x5A), (3000, 0xA5)):      # two blocks of 2048 x 9
                ctx.set(mem.write.addr, a)
                ctx.set(mem.write.data, v)
                ctx.set(mem.write.en, 1)
                await ctx.tick()
            ctx.set(mem.write.en, 0)
            ctx.set(rd.addr, 5)
            ctx.set(rd.en, 1)
            await ctx.tick()
            ctx.set(rd.addr, 3000)         # not enabled: neither its word nor its block may be read
            ctx.set(rd.en, 0)
            for _ in range(5):
                await ctx.tick()
                assert ctx.get(rd.data) == 0x5A, block_ram

        sim = Simulator(mem)
        sim.add_clock(1e-6)
        sim.add_testbench(bench)
        sim.run()


def _check_read_back(mem, edges):
    """Random writes, then back-to-back reads on every port: each word exactly ``read_latency`` cycles later."""
    depth, width, latency = mem.depth, mem.width, mem.read_latency
    rng = random.Random(5)
    model = {}

    async def bench(ctx):
        addrs = [rng.randrange(depth) for _ in range(60)] + [0, depth - 1] + [a for a in edges if a < depth]
        for a in addrs:
            v = rng.getrandbits(width)
            ctx.set(mem.write.addr, a)
            ctx.set(mem.write.data, v)
            ctx.set(mem.write.en, 1)
            await ctx.tick()
            model[a] = v
        ctx.set(mem.write.en, 0)
        await ctx.tick().repeat(2)
        # one read per port and cycle, back to back: each word appears exactly `latency` cycles
        # after its request (so a wrong latency reads a neighbour's word)
        requests = [(a, rng.choice(addrs)) for a in addrs]
        for cycle in range(len(requests) + latency):
            if cycle < len(requests):
                for port, addr in zip(mem.reads, requests[cycle]):
                    ctx.set(port.addr, addr)
                    ctx.set(port.en, 1)
            if cycle >= latency:
                for k, port in enumerate(mem.reads):
                    addr = requests[cycle - latency][k]
                    assert ctx.get(port.data) == model[addr], f"port {k} address {addr} (cycle {cycle})"
            await ctx.tick()

    sim = Simulator(mem)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()


def test_negative_register_stages_or_depth_are_refused():
    from hw.engine_params import EngineParams

    with pytest.raises(ValueError, match="must not be negative"):
        SlicedMemory(width=8, depth=64, output_registers=-1)
    with pytest.raises(ValueError, match="must not be negative"):
        SlicedMemory(width=8, depth=64, max_deep=-1)
    with pytest.raises(ValueError, match="slice_depth must be a non-negative integer"):
        EngineParams(slice_depth=-1)


def test_on_ecp5_the_slices_are_dp16kd_blocks_with_their_output_register():
    """``block_ram="auto"`` instantiates DP16KD (REGMODE_B OUTREG) for an ECP5 platform, one column per read port."""
    from amaranth.back import rtlil
    from amaranth_boards.ulx3s import ULX3S_85F_Platform

    def cells(platform, **kw):
        mem = SlicedMemory(width=12, depth=12288, read_ports=2, name="m", input_registers=True, **kw)
        text = rtlil.convert(mem, platform=platform, ports=[mem.write.addr, mem.write.data, mem.write.en])
        return text.count("cell \\DP16KD "), text.count('parameter \\REGMODE_B "OUTREG"')

    # 3 slices of 4 bits, 3 blocks deep, one copy per read port
    assert cells(ULX3S_85F_Platform(), output_registers=2) == (18, 18)
    assert cells(None, output_registers=2) == (0, 0)                     # simulation: inferred memories
    assert cells(ULX3S_85F_Platform(), output_registers=0) == (0, 0)     # no register to absorb
    assert cells(ULX3S_85F_Platform(), output_registers=1, block_ram="inferred") == (0, 0)


@pytest.mark.parametrize("block_ram", ["inferred", "model"])
def test_registers_that_follow_en_stall_with_the_read(block_ram):
    """``registers_follow_en``: the read and the output register advance together, only when ``en`` is high."""
    depth = 5000                                    # 8-bit slices of 2048 x 9: three blocks deep
    mem = SlicedMemory(width=8, depth=depth, read_ports=1, name="m", output_registers=1, slice_bits=8,
                       registers_follow_en=True, block_ram=block_ram)
    (rd,) = mem.reads
    rng = random.Random(7)
    content = {a: rng.getrandbits(8) for a in range(0, depth, 7)}

    async def bench(ctx):
        for a, v in content.items():
            ctx.set(mem.write.addr, a)
            ctx.set(mem.write.data, v)
            ctx.set(mem.write.en, 1)
            await ctx.tick()
        ctx.set(mem.write.en, 0)
        latch = out = None
        for cycle in range(300):
            a, en = rng.choice(list(content)), rng.random() < 0.5
            ctx.set(rd.addr, a)
            ctx.set(rd.en, en)
            await ctx.tick()
            if en:
                latch, out = content[a], latch
            if out is not None:
                assert ctx.get(rd.data) == out, f"cycle {cycle}"

    sim = Simulator(mem)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    with pytest.raises(ValueError, match="registers_follow_en needs input_registers=False"):
        SlicedMemory(width=8, depth=64, input_registers=True, output_registers=1, registers_follow_en=True)


@pytest.mark.parametrize("output_register, latency", [(False, 1), (True, 2)])
def test_a_dp16kd_reads_one_cycle_later_with_its_output_register(output_register, latency):
    """hw.dp16kd on its own (as bench/bram_outreg.py wires it): NOREG data the cycle after the read, OUTREG one later."""
    from amaranth import Module, Signal

    from hw.dp16kd import DP16KDModel, dp16kd_ports

    m = Module()
    w_addr, w_data, w_en = Signal(10), Signal(18), Signal()
    r_addr, r_data = Signal(10), Signal(18)
    m.submodules.ram = DP16KDModel(**dp16kd_ports(bits=18, w_addr=w_addr, w_data=w_data, w_en=w_en,
                                                  r_addr=r_addr, r_data=r_data, r_en=1,
                                                  output_register=output_register))
    words = {a: (a * 2654435761) % (1 << 18) for a in range(0, 1024, 37)}

    async def bench(ctx):
        for a, v in words.items():
            ctx.set(w_addr, a)
            ctx.set(w_data, v)
            ctx.set(w_en, 1)
            await ctx.tick()
        ctx.set(w_en, 0)
        order = list(words)
        for cycle in range(len(order) + latency - 1):
            if cycle < len(order):
                ctx.set(r_addr, order[cycle])
            await ctx.tick()
            if cycle + 1 >= latency:
                assert ctx.get(r_data) == words[order[cycle + 1 - latency]], f"cycle {cycle}"

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
