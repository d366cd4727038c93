"""A table read whole in one cycle behind the block RAMs' output registers, at no extra block.

Yosys stores a memory up to 512 words deep and 36 bits wide in one DP16KD in
its 512 x 36 simple-dual-port shape, without the block's output register: the
read data leave the block about 5.8 ns after the clock edge, and the route from
there to the register behind it was the critical path of 85F t46 (the output
stage's channel tables) and 45F t28 (the shift unit's schedule). Behind the
output register the same data leave like from a flip-flop, but
:class:`hw.sliced_memory.SlicedMemory` reaches it only in the 18-bit
true-dual-port shape: half the bits per block, twice the blocks.

:class:`DualReadMemory` keeps the block count of the 36-bit shape by reading
with both ports: each block holds 36-bit words as pairs of 18-bit words, the
low half at word ``2a`` (port A), the high half at ``2a + 1`` (port B), so one
read of both ports returns all 36 bits, each half through its port's output
register. A write takes both ports (the same pair, both halves) for its
cycle. That is the price: **no read in a cycle with a write** (the read
latches hold), which suits tables that are written only while their reader is
idle (the output stage's channel tables, the shift unit's schedule, the
engine's schedule region, written by the host while the engine is stopped).

Ports: ``write`` (``addr``, ``data``, ``en``) and ``read`` (``addr``, ``en``,
``data``). ``read.data`` is the word read with ``en`` two cycles before:
``read_latency = 2`` (the block's read latch, then its output register). With
``registers_follow_en`` the output register loads only in cycles with
``read.en``, like the latch: a read port inside a pipeline that stalls as a
whole. At most 512 words.

Built from DP16KD primitives on ECP5 (``block_ram="auto"``, or ``"dp16kd"``),
on :class:`hw.dp16kd.DP16KDModel` for Amaranth's simulator (``"model"``), or
elsewhere as an inferred memory with a register behind its read port
(``"inferred"``), which behaves the same.
"""

from __future__ import annotations

from amaranth import Cat, ClockSignal, Const, Elaboratable, Instance, Module, Mux, Signal
from amaranth.lib.memory import Memory
from amaranth.utils import ceil_log2

from .dp16kd import PDP_WORDS, DP16KDModel
from .mult import _is_ecp5

__all__ = ["DualReadMemory", "dual_read_blocks", "MAX_DEPTH"]

#: words of one block as pairs of 18-bit words
MAX_DEPTH = PDP_WORDS
_HALF = 18


def dual_read_blocks(width: int) -> int:
    """Blocks of a :class:`DualReadMemory` ``width`` bits wide (any depth up to 512): the same as
    Yosys' 512 x 36 mapping."""
    return -(-width // (2 * _HALF))


class _Port:
    def __init__(self, name: str, depth: int, width: int):
        self.addr = Signal(max(1, ceil_log2(depth)), name=f"{name}_addr")
        self.data = Signal(width, name=f"{name}_data")
        self.en = Signal(name=f"{name}_en")


class DualReadMemory(Elaboratable):
    """``width`` x ``depth`` table, one write port, one read port with ``read_latency`` 2 (see the module
    docstring; a write and a read in the same cycle: the write wins, the read is lost)."""

    BLOCK_RAM_CHOICES = ("auto", "inferred", "dp16kd", "model")
    read_latency = 2

    def __init__(self, *, width: int, depth: int, name: str = "mem", block_ram: str = "auto",
                 registers_follow_en: bool = False):
        if not 1 <= depth <= MAX_DEPTH:
            raise ValueError(f"DualReadMemory {name}: depth must be 1..{MAX_DEPTH}, not {depth}")
        if block_ram not in self.BLOCK_RAM_CHOICES:
            raise ValueError(f"DualReadMemory {name}: block_ram must be one of {self.BLOCK_RAM_CHOICES}, "
                             f"not {block_ram!r}")
        self.width, self.depth, self.name = width, depth, name
        self.block_ram = block_ram
        self.registers_follow_en = registers_follow_en
        self.write = _Port(f"{name}_w", depth, width)
        self.read = _Port(f"{name}_r", depth, width)

    def elaborate(self, platform):
        m = Module()
        w, r = self.write, self.read
        read_en = Signal(name=f"{self.name}_read_en")
        m.d.comb += read_en.eq(r.en & ~w.en)          # a write takes the ports for its cycle
        out_en = read_en if self.registers_follow_en else Const(1, 1)
        if self.block_ram == "model":
            primitive = DP16KDModel
        elif self.block_ram == "dp16kd" or (self.block_ram == "auto" and _is_ecp5(platform)):
            primitive = lambda **kw: Instance("DP16KD", **kw)         # noqa: E731
        else:
            mem = m.submodules.mem = Memory(shape=self.width, depth=self.depth, init=[])
            wr, rd = mem.write_port(), mem.read_port(transparent_for=())
            data = Signal(self.width, name=f"{self.name}_data_q", reset_less=True)
            m.d.comb += [wr.addr.eq(w.addr), wr.data.eq(w.data), wr.en.eq(w.en),
                         rd.addr.eq(r.addr), rd.en.eq(read_en)]
            with m.If(out_en):
                m.d.sync += data.eq(rd.data)
            m.d.comb += r.data.eq(data)
            return m

        addr = Signal.like(w.addr, name=f"{self.name}_addr")
        m.d.comb += addr.eq(Mux(w.en, w.addr, r.addr))
        ce = Signal(name=f"{self.name}_ce")
        m.d.comb += ce.eq(w.en | r.en)
        w_data = Cat(w.data, Const(0, 2 * _HALF * dual_read_blocks(self.width) - self.width))
        r_data = Signal(2 * _HALF * dual_read_blocks(self.width), name=f"{self.name}_r_full")
        m.d.comb += r.data.eq(r_data[:self.width])
        for j in range(dual_read_blocks(self.width)):
            kw = {
                "p_DATA_WIDTH_A": _HALF, "p_DATA_WIDTH_B": _HALF,
                "p_REGMODE_A": "OUTREG", "p_REGMODE_B": "OUTREG",
                "p_CSDECODE_A": "0b000", "p_CSDECODE_B": "0b000",
                "p_WRITEMODE_A": "NORMAL", "p_WRITEMODE_B": "NORMAL",
                "p_RESETMODE": "SYNC", "p_ASYNC_RESET_RELEASE": "SYNC", "p_GSR": "DISABLED",
            }
            for half, port in enumerate("AB"):
                lo = (2 * j + half) * _HALF
                kw.update({f"i_CLK{port}": ClockSignal("sync"), f"i_CE{port}": ce, f"i_WE{port}": w.en,
                           f"i_OCE{port}": out_en, f"i_RST{port}": Const(0, 1)})
                for k in range(3):
                    kw[f"i_CS{port}{k}"] = Const(0, 1)
                # the 18-bit shape: byte enables on AD1..AD0, AD3..AD2 unused, the word address on
                # AD13..AD4, here {addr, half}
                word = Cat(Const(half, 1), addr)
                for pin in range(14):
                    if pin < 2:
                        kw[f"i_AD{port}{pin}"] = Const(1, 1)
                    elif pin < 4 or pin - 4 >= len(word):
                        kw[f"i_AD{port}{pin}"] = Const(0, 1)
                    else:
                        kw[f"i_AD{port}{pin}"] = word[pin - 4]
                for pin in range(_HALF):
                    kw[f"i_DI{port}{pin}"] = w_data[lo + pin]
                    kw[f"o_DO{port}{pin}"] = r_data[lo + pin]
            m.submodules[f"{self.name}_b{j}"] = primitive(**kw)
        return m
