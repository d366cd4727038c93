"""A wide, deep memory stored as bit slices, one slice per block-RAM column.

A ``width x depth`` :class:`amaranth.lib.memory.Memory` that is deeper than one
ECP5 block RAM (DP16KD: 16 Kbit, 1024 x 18 ... 16384 x 1) is mapped by yosys to
a grid of blocks in their widest shape, ``depth / 1024`` blocks deep, whose read
data pass through a ``depth / 1024``-to-1 word multiplexer: several LUT levels
and long routes between the block RAM's output and the next register (the
activation memory of the 85F engine, 32768 words, needs a 32:1 multiplexer).

:class:`SlicedMemory` stores the same bits as ``width / slice_bits`` memories
of ``slice_bits`` bits each, with ``slice_bits`` chosen so that one slice of the
whole depth fills a block RAM in a narrow shape (16384 x 1, 8192 x 2, 4096 x 4,
2048 x 8): the same number of block RAMs, but each output bit comes from at most
``ceil(depth * slice_bits / 16384)`` blocks (2 for 32768 words), so the read
multiplexer is one LUT or none.

Ports behave like those of ``Memory``: a write port (``addr``, ``data``,
``en``) and synchronous, non-transparent read ports (``addr``, ``data``,
``en``; ``data`` updates the cycle after ``en``).

With ``input_registers=True`` every port's address, enable and write data pass
through a register first, replicated: one copy of the address and enable per
``slices_per_copy`` slices (:func:`hw.fanout.register_copies`, so synthesis
keeps the copies apart and the placer puts each next to its block RAMs). One
flip-flop driving the address pins of 128 block RAMs spread over the 85F cost
a 17 ns route. The price is one cycle: a write lands one cycle later, and read
data updates two cycles after ``en``.

With ``output_registers=n`` every slice's read data (after its block RAMs and
their depth multiplexer, if any) pass through ``n`` registers in a row (``True``
is one): a block RAM's read data leave it about 5.6 ns after the clock edge
(DP16KD without its own output register), too late to cross the die to a FIFO
or a multiplexer in the same cycle. With one register, nextpnr still placed it
at the consumer's end of the die in the 85F builds (t28, t29: a 6.85 ns route
from the block RAM, the critical path); with two, the block RAM's late data
need only reach the first, and the long way is split between two register
stages. Each register is another cycle: read data update ``read_latency =
1 + input_registers + output_registers`` cycles after ``en``.
"""

from __future__ import annotations

from amaranth import Cat, Elaboratable, Module, Signal
from amaranth.lib.memory import Memory
from amaranth.utils import ceil_log2

from .fanout import register_copies

__all__ = ["SlicedMemory", "slice_bits_for", "sliced_blocks"]

#: bits of one ECP5 DP16KD block RAM (the 18-bit shapes add parity bits that narrow shapes lack)
BLOCK_BITS = 16384


def slice_bits_for(depth: int, width: int, max_deep: int = 0) -> int:
    """The power-of-two slice width (at most ``width``) that stores the memory in the fewest block RAMs.

    With ``max_deep`` (> 0), among the slice widths whose slice is at most ``max_deep`` blocks deep
    (1 bit if none is): a smaller read multiplexer behind the blocks, at the price of more blocks.

    A slice of ``b`` bits needs ``ceil(depth * b / 16384)`` blocks (in the ``16384/b x b`` shape);
    ties go to the slice with fewer blocks per bit (the smaller read multiplexer), then the wider.
    For a power-of-two depth this is the widest slice whose whole depth fits one block RAM (or 1
    bit for deeper memories); a depth like 12288 takes 4-bit slices of 3 blocks each (1-bit slices
    would leave a quarter of every block empty).
    """
    best = None
    bits = 1
    while bits <= max(1, width):
        deep = -(-depth * bits // BLOCK_BITS)
        too_deep = bool(max_deep) and deep > max_deep and bits > 1
        key = (too_deep, -(-width // bits) * deep, deep, -bits)
        if best is None or key < best[0]:
            best = (key, bits)
        bits *= 2
    return best[1]


def sliced_blocks(width: int, depth: int, max_deep: int = 0) -> int:
    """Block RAMs of one :class:`SlicedMemory` copy of ``width x depth`` (``max_deep``: :func:`slice_bits_for`)."""
    bits = slice_bits_for(depth, width, max_deep)
    return -(-width // bits) * -(-depth * bits // BLOCK_BITS)


class _Port:
    def __init__(self, name: str, depth: int, width: int):
        self.addr = Signal(ceil_log2(depth), name=f"{name}_addr")
        self.data = Signal(width, name=f"{name}_data")
        self.en = Signal(name=f"{name}_en")


class SlicedMemory(Elaboratable):
    """``width`` x ``depth`` memory with one write port and ``read_ports`` read ports.

    Attributes
    ----------
    write : port with ``addr``, ``data``, ``en``
    reads : list of ports with ``addr``, ``data`` (out), ``en``
    slice_bits : int
        Bits per slice memory (:func:`slice_bits_for` unless given).
    """

    def __init__(self, *, width: int, depth: int, read_ports: int = 1, slice_bits: int | None = None,
                 name: str = "mem", input_registers: bool = False, output_registers: int | bool = 0,
                 slices_per_copy: int = 4, max_deep: int = 0):
        self.width, self.depth = width, depth
        self.input_registers = input_registers
        self.output_registers = int(output_registers)      # register stages behind each slice's read data
        if self.output_registers < 0 or max_deep < 0:
            raise ValueError(f"SlicedMemory {name}: output_registers and max_deep must not be negative")
        #: cycles from a read port's ``en`` to its ``data``
        self.read_latency = 1 + int(input_registers) + self.output_registers
        self.slices_per_copy = slices_per_copy
        self.slice_bits = slice_bits or slice_bits_for(depth, width, max_deep)
        self.name = name
        self.write = _Port(f"{name}_w", depth, width)
        self.reads = [_Port(f"{name}_r{i}", depth, width) for i in range(read_ports)]

    def elaborate(self, platform):
        m = Module()
        starts = list(range(0, self.width, self.slice_bits))
        n_copies = -(-len(starts) // self.slices_per_copy)

        def control(port, name):
            """(addr, en) per slice: the port's own, or registered copies shared by groups."""
            if not self.input_registers:
                return [(port.addr, port.en)] * len(starts)
            copies = register_copies(m, platform, Cat(port.addr, port.en), n_copies, name)
            return [(c[:len(port.addr)], c[len(port.addr)]) for c in copies
                    for _ in range(self.slices_per_copy)][:len(starts)]

        w_ctl = control(self.write, f"{self.name}_w")
        r_ctl = [control(port, f"{self.name}_r{i}") for i, port in enumerate(self.reads)]
        for s, lo in enumerate(starts):
            hi = min(lo + self.slice_bits, self.width)
            mem = Memory(shape=hi - lo, depth=self.depth, init=[])
            m.submodules[f"{self.name}_{lo}"] = mem
            wr = mem.write_port()
            w_data = self.write.data[lo:hi]
            if self.input_registers:
                w_reg = Signal(hi - lo, name=f"{self.name}_wdata{lo}")
                m.d.sync += w_reg.eq(w_data)
                w_data = w_reg
            m.d.comb += [wr.addr.eq(w_ctl[s][0]), wr.data.eq(w_data), wr.en.eq(w_ctl[s][1])]
            for port, ctl in zip(self.reads, r_ctl):
                rd = mem.read_port(transparent_for=())
                m.d.comb += [rd.addr.eq(ctl[s][0]), rd.en.eq(ctl[s][1])]
                data = rd.data
                for k in range(self.output_registers):
                    data_q = Signal(hi - lo, name=f"{port.data.name}_q{k}_{lo}")
                    m.d.sync += data_q.eq(data)
                    data = data_q
                m.d.comb += port.data[lo:hi].eq(data)
        return m
