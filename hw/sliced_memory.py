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

On ECP5 (``block_ram="auto"``) a memory with output registers is built from
DP16KD primitives (:mod:`hw.dp16kd`), and the first output register is the
block RAM's own (``REGMODE="OUTREG"``): it cannot be placed away from its
block, and the data leave the block like from a flip-flop instead of 5.8 ns
after the clock (t32's critical path was the route from a block RAM to the
first slice register, placed beside the second). A slice several blocks deep
selects its block after that register, with the block index delayed to match;
further output registers follow the selection. The latency is the same as the
inferred memory's. The read data registers are reset-less in both forms, like
the block RAM's.

With ``registers_follow_en=True`` the output registers load only in cycles when
the port's ``en`` is high, like the read itself: a read port inside a pipeline
that stalls as a whole (the shift unit's ring banks), where ``en`` is the
pipeline's advance.
"""

from __future__ import annotations

from amaranth import Cat, Elaboratable, Instance, Module, Signal
from amaranth.lib.memory import Memory
from amaranth.utils import ceil_log2

from .dp16kd import DATA_WIDTH, DP16KDModel, blocks_deep, dp16kd_ports, words_per_block
from .fanout import register_copies
from .mult import _is_ecp5

__all__ = ["SlicedMemory", "slice_bits_for", "sliced_blocks"]

# the block shapes (words per block of each slice width, blocks per slice) are hw.dp16kd's, the
# same for the primitives built here and for the estimate of hw.soc.estimate_resources


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
        deep = blocks_deep(depth, bits)
        too_deep = bool(max_deep) and deep > max_deep and bits > 1
        key = (too_deep, -(-width // bits) * deep, deep, -bits)
        if best is None or key < best[0]:
            best = (key, bits)
        bits *= 2
    return best[1]


def sliced_blocks(width: int, depth: int, max_deep: int = 0, slice_bits: int | None = None) -> int:
    """Block RAMs of one :class:`SlicedMemory` copy of ``width x depth`` (``max_deep``: :func:`slice_bits_for`;
    ``slice_bits`` where the memory is given its slice width)."""
    bits = slice_bits or slice_bits_for(depth, width, max_deep)
    return -(-width // bits) * blocks_deep(depth, bits)


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

    ``block_ram`` chooses how slices are built: ``"auto"`` (DP16KD primitives with their output
    register on ECP5 when ``output_registers`` >= 1 and the slice is 1, 2, 4, 8, 9, 16 or 18 bits, inferred
    memories otherwise), ``"inferred"`` (always :class:`amaranth.lib.memory.Memory`),
    ``"dp16kd"`` (always the primitive) or ``"model"`` (the primitive's wiring on
    :class:`hw.dp16kd.DP16KDModel`, for Amaranth's simulator).
    """

    BLOCK_RAM_CHOICES = ("auto", "inferred", "dp16kd", "model")

    def __init__(self, *, width: int, depth: int, read_ports: int = 1, slice_bits: int | None = None,
                 name: str = "mem", input_registers: bool = False, output_registers: int | bool = 0,
                 slices_per_copy: int = 4, max_deep: int = 0, block_ram: str = "auto",
                 registers_follow_en: bool = False):
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
        if block_ram not in self.BLOCK_RAM_CHOICES:
            raise ValueError(f"SlicedMemory {name}: block_ram must be one of {self.BLOCK_RAM_CHOICES}, "
                             f"not {block_ram!r}")
        if block_ram in ("dp16kd", "model") and not self._primitive_fits():
            raise ValueError(f"SlicedMemory {name}: DP16KD primitives need output_registers >= 1 and "
                             f"slices of 1, 2, 4, 8, 9, 16 or 18 bits (this one: {self.output_registers}, "
                             f"{self.slice_bits} bits)")
        self.block_ram = block_ram
        if registers_follow_en and input_registers:
            raise ValueError(f"SlicedMemory {name}: registers_follow_en needs input_registers=False "
                             "(the output registers advance with the port's own en)")
        self.registers_follow_en = registers_follow_en

    def _primitive_fits(self) -> bool:
        return self.output_registers >= 1 and self.slice_bits in DATA_WIDTH

    def _primitive(self, platform):
        """None (inferred memories), ``Instance`` or :class:`DP16KDModel`: how this elaboration builds blocks."""
        if self.block_ram == "dp16kd" or (self.block_ram == "auto" and _is_ecp5(platform) and self._primitive_fits()):
            return lambda **kw: Instance("DP16KD", **kw)
        if self.block_ram == "model":
            return DP16KDModel
        return None

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
        primitive = self._primitive(platform)
        for s, lo in enumerate(starts):
            hi = min(lo + self.slice_bits, self.width)
            w_data = self.write.data[lo:hi]
            if self.input_registers:
                w_reg = Signal(hi - lo, name=f"{self.name}_wdata{lo}")
                m.d.sync += w_reg.eq(w_data)
                w_data = w_reg
            if primitive is None:
                slice_data = self._inferred_slice(m, lo, hi, w_ctl[s], w_data, [ctl[s] for ctl in r_ctl])
                stages = self.output_registers
            else:
                slice_data = self._primitive_slice(m, primitive, lo, hi, w_ctl[s], w_data, [ctl[s] for ctl in r_ctl])
                stages = self.output_registers - 1        # the first is the block RAM's own
            for port, ctl, data in zip(self.reads, r_ctl, slice_data):
                for k in range(stages):
                    data_q = Signal(hi - lo, name=f"{port.data.name}_q{k}_{lo}", reset_less=True)
                    with m.If(ctl[s][1] if self.registers_follow_en else 1):
                        m.d.sync += data_q.eq(data)
                    data = data_q
                m.d.comb += port.data[lo:hi].eq(data)
        return m

    def _inferred_slice(self, m, lo, hi, w_ctl, w_data, r_ctls):
        """One slice as an inferred memory: its read ports' data (the cycle after ``en``)."""
        mem = Memory(shape=hi - lo, depth=self.depth, init=[])
        m.submodules[f"{self.name}_{lo}"] = mem
        wr = mem.write_port()
        m.d.comb += [wr.addr.eq(w_ctl[0]), wr.data.eq(w_data), wr.en.eq(w_ctl[1])]
        out = []
        for addr, en in r_ctls:
            rd = mem.read_port(transparent_for=())
            m.d.comb += [rd.addr.eq(addr), rd.en.eq(en)]
            out.append(rd.data)
        return out

    def _primitive_slice(self, m, primitive, lo, hi, w_ctl, w_data, r_ctls):
        """One slice as DP16KD blocks with output registers, one column of blocks per read port.

        Returns each read port's data two cycles after ``en`` (read latch, output register).
        """
        bits = self.slice_bits
        lg_words = ceil_log2(words_per_block(bits))
        deep = blocks_deep(self.depth, bits)
        w_addr, w_en = w_ctl
        w_full = Signal(bits, name=f"{self.name}_wfull{lo}")
        m.d.comb += w_full.eq(w_data)
        out = []
        for r, (r_addr, r_en) in enumerate(r_ctls):
            blocks = []
            for j in range(deep):
                b_data = Signal(bits, name=f"{self.name}_r{r}_{lo}_b{j}")
                b_wen = w_en & (w_addr[lg_words:] == j) if deep > 1 else w_en
                m.submodules[f"{self.name}_r{r}_{lo}_b{j}"] = primitive(**dp16kd_ports(
                    bits=bits, w_addr=w_addr[:lg_words], w_data=w_full, w_en=b_wen,
                    r_addr=r_addr[:lg_words], r_data=b_data, r_en=r_en,
                    r_out_en=r_en if self.registers_follow_en else None))
                blocks.append(b_data[:hi - lo])
            if deep == 1:
                out.append(blocks[0])
                continue
            # the block index follows the data: into the read latch with en, into the output register always
            idx_latch = Signal(range(deep), name=f"{self.name}_r{r}_{lo}_idx0", reset_less=True)
            idx_out = Signal(range(deep), name=f"{self.name}_r{r}_{lo}_idx1", reset_less=True)
            with m.If(r_en):
                m.d.sync += idx_latch.eq(r_addr[lg_words:])
            with m.If(r_en if self.registers_follow_en else 1):
                m.d.sync += idx_out.eq(idx_latch)
            sel = Signal(hi - lo, name=f"{self.name}_r{r}_{lo}_sel")
            with m.Switch(idx_out):
                for j, b in enumerate(blocks):
                    with m.Case(j):
                        m.d.comb += sel.eq(b)
            out.append(sel)
        return out
