"""The ECP5 block RAM (DP16KD) as one write and one read port, with its own output register.

Yosys maps an inferred memory to DP16KD blocks with ``REGMODE="NOREG"``: the read
data leave the block about 5.8 ns after the clock edge (nextpnr's figure for
speed grade 6), and in the 85F and 45F builds that clock-to-out plus the route
to the next register was the critical path again and again (t28, t29, t32, t14).
The block has an output register of its own (``REGMODE="OUTREG"``), behind which
the data leave it like from any flip-flop: one DP16KD with its data straight
into a register reaches 145 MHz without it and 443 MHz with it
(``python bench/bram_outreg.py``). Yosys cannot absorb a register into that
slot, so :func:`dp16kd_ports` wires the primitive by hand and
:class:`hw.sliced_memory.SlicedMemory` instantiates it on ECP5.

:class:`DP16KDModel` is the same block for Amaranth's simulator, written from
the primitive's documented behaviour and from the pin conventions of yosys'
own DP16KD mapping (``share/lattice/brams_map_16kd.v``), so that the tests
check the wiring (which address pins, which data pins, which enables) and not
only a behavioural stand-in.

The subset used and modelled: both ports in the same shape (``DATA_WIDTH`` 1, 2,
4, 9 or 18; the widest true-dual-port shape), chip selects tied off
(``CSDECODE="0b000"``), no resets, ``WRITEMODE="NORMAL"``. A port writes in a
cycle with ``CE`` and ``WE`` high and reads (loads its read latch) with ``CE``
high and ``WE`` low; during a write its latch holds. Its output register
(``REGMODE="OUTREG"``) loads the latch in every cycle its ``OCE`` is high.
:func:`dp16kd_ports` wires port A to write and port B to read, with port B's
output register always enabled (``OCEB=1``) or enabled with the read
(``OCEB=CEB``, a pipeline that stalls as a whole): read data then appear two
cycles after a read with ``CEB`` high, like a synchronous read port followed by
a register. :mod:`hw.dual_read` uses both ports for reading and for writing.

:func:`ebr_count` and :func:`inferred_blocks` say how many blocks Yosys gives an
inferred memory, and whether it prefers LUT RAM.
"""

from __future__ import annotations

from amaranth import Cat, ClockSignal, Const, Elaboratable, Module, Signal
from amaranth.lib.memory import Memory

__all__ = ["DP16KD_BITS", "DATA_WIDTH", "SHAPE_WORDS", "PDP_WORDS", "words_per_block", "blocks_deep", "dp16kd_ports",
           "DP16KDModel", "ebr_count", "inferred_blocks", "in_block_ram"]

#: bits of one block (the 9- and 18-bit shapes add a parity bit per byte, unused here)
DP16KD_BITS = 16384

#: the block's ``DATA_WIDTH`` for each slice width it stores: 8- and 16-bit slices use the
#: 9- and 18-bit shapes, leaving their parity bits unused; 9- and 18-bit slices use them all.
#: 36 is the simple-dual-port shape (512 x 36: port A writes 36 bits, port B reads them), which
#: only a slice width of 36 asks for (never chosen by hw.sliced_memory.slice_bits_for)
DATA_WIDTH = {1: 1, 2: 2, 4: 4, 8: 9, 9: 9, 16: 18, 18: 18, 36: 36}

#: address pins below the word address in each shape (the word address sits in AD13..ADn)
_ADDR_LSB = {1: 0, 2: 1, 4: 2, 9: 3, 18: 4, 36: 5}
#: words of each true-dual-port shape (``DATA_WIDTH``: words)
SHAPE_WORDS = {1: 16384, 2: 8192, 4: 4096, 9: 2048, 18: 1024}
#: words of the 36-bit simple-dual-port shape
PDP_WORDS = 512


#: the block shapes of an inferred memory with one write and one read port: the 512 x 36
#: simple-dual-port shape and the true-dual-port ones
_EBR_SHAPES = ((36, 512), *SHAPE_WORDS.items())


def ebr_count(width: int, depth: int) -> int:
    """``DP16KD`` blocks for one ``width x depth`` memory with one write and one read port."""
    return min(-(-width // w) * -(-depth // d) for w, d in _EBR_SHAPES)


def inferred_blocks(width: int, depth: int) -> int:
    """``DP16KD`` of one inferred memory, 0 where Yosys' ``memory_libmap`` prefers LUT RAM.

    Its costs (``share/lattice/{brams_16kd,lutrams_trellis}.txt``): 128 per ``DP16KD``,
    4 per ``TRELLIS_DPR16X4`` (16 words x 4 bits), plus the read multiplexer of a LUT RAM
    deeper than 16 words, counted here as one LUT per bit and extra 16 words. A tie goes to
    the block RAM. (Calibrated on what Yosys 0.70 maps for the 85F and the reduced SoC.)
    """
    ebr = ebr_count(width, depth)
    chunks = -(-depth // 16)
    lut = 4 * chunks * -(-width // 4) + (chunks - 1) * width
    return ebr if 128 * ebr <= lut else 0


def words_per_block(bits: int) -> int:
    """Words of ``bits`` bits one block holds (16384 / ``bits``; 2048 of 9 bits, 1024 of 18; 512 of
    32 bits, the simple-dual-port shape that inferred memories may use)."""
    if bits == 36:
        return PDP_WORDS
    return SHAPE_WORDS[DATA_WIDTH[bits]] if bits in DATA_WIDTH else DP16KD_BITS // bits


def blocks_deep(depth: int, bits: int) -> int:
    """Blocks one ``bits``-wide slice of ``depth`` words takes."""
    return -(-depth // words_per_block(bits))


def dp16kd_ports(*, bits: int, w_addr, w_data, w_en, r_addr, r_data, r_en,
                 output_register: bool = True, r_out_en=None, domain: str = "sync") -> dict:
    """Keyword arguments for ``Instance("DP16KD", **kw)`` (or :class:`DP16KDModel`).

    ``w_addr``/``r_addr`` are word addresses (up to ``16384 / bits`` words; 512 for 36 bits),
    ``w_data`` and ``r_data`` ``bits`` wide (``r_data`` is driven by the block). ``r_out_en``
    enables the output register (``OCEB``; always when None).

    36 bits is the simple-dual-port shape as Yosys' own ``$__PDPW16KD_`` mapping wires it: the
    word is ``{DIB, DIA}`` and ``{DOB, DOA}``, ``ADA3..ADA0`` enable its four 9-bit bytes, the
    addresses sit on ``AD13..AD5``. Its read data leave through both halves' output registers
    (``REGMODE_A`` and ``REGMODE_B``, as Lattice's tools configure a registered ``PDPW16KD``),
    both enabled by ``r_out_en``.
    """
    if bits not in DATA_WIDTH:
        raise ValueError(f"a DP16KD port stores 1, 2, 4, 8, 9, 16, 18 or 36 bits per word, not {bits}")
    width = DATA_WIDTH[bits]
    lsb = _ADDR_LSB[width]
    wide = width == 36
    out_en = Const(1, 1) if r_out_en is None else r_out_en
    regmode = "OUTREG" if output_register else "NOREG"
    kw = {
        "p_DATA_WIDTH_A": width, "p_DATA_WIDTH_B": width,
        "p_REGMODE_A": regmode if wide else "NOREG", "p_REGMODE_B": regmode,
        "p_CSDECODE_A": "0b000", "p_CSDECODE_B": "0b000",
        "p_WRITEMODE_A": "NORMAL", "p_WRITEMODE_B": "NORMAL",
        "p_RESETMODE": "SYNC", "p_ASYNC_RESET_RELEASE": "SYNC", "p_GSR": "DISABLED",
        "i_CLKA": ClockSignal(domain), "i_CLKB": ClockSignal(domain),
        "i_CEA": w_en, "i_WEA": w_en, "i_OCEA": out_en if wide else Const(1, 1), "i_RSTA": Const(0, 1),
        "i_CEB": r_en, "i_WEB": Const(0, 1), "i_OCEB": out_en,
        "i_RSTB": Const(0, 1),
    }
    for port in "AB":
        for k in range(3):
            kw[f"i_CS{port}{k}"] = Const(0, 1)
    for port, addr in (("A", w_addr), ("B", r_addr)):
        for pin in range(14):
            if pin >= lsb:
                bit = pin - lsb
                kw[f"i_AD{port}{pin}"] = addr[bit] if bit < len(addr) else Const(0, 1)
            elif (width == 18 and pin < 2) or (wide and port == "A" and pin < 4):
                kw[f"i_AD{port}{pin}"] = Const(1, 1)      # the 18- and 36-bit shapes' byte enables
            else:
                kw[f"i_AD{port}{pin}"] = Const(0, 1)
    for pin in range(18):
        kw[f"i_DIA{pin}"] = w_data[pin] if pin < bits else Const(0, 1)
        kw[f"i_DIB{pin}"] = w_data[18 + pin] if wide else Const(0, 1)
    if wide:
        for pin in range(18):
            kw[f"o_DOA{pin}"] = r_data[pin]
            kw[f"o_DOB{pin}"] = r_data[18 + pin]
    else:
        for pin in range(bits):
            kw[f"o_DOB{pin}"] = r_data[pin]
    return kw


class DP16KDModel(Elaboratable):
    """A DP16KD for Amaranth's simulator, configured by keywords like :func:`dp16kd_ports`' own.

    It interprets the pins of each port: the word address from ``AD13..ADn``, ``CE & WE`` writes
    ``DI`` (with the 18-bit shape's byte enables on ``AD1..AD0``), ``CE & ~WE`` loads the read
    latch, and with ``REGMODE="OUTREG"`` the output register loads the latch every cycle ``OCE``
    is high; ``DO`` is the register or the latch. Only the subset of the module docstring is
    accepted.
    """

    def __init__(self, **kw):
        width = kw["p_DATA_WIDTH_A"]
        if kw["p_DATA_WIDTH_B"] != width or width not in _ADDR_LSB:
            raise ValueError("DP16KDModel: both ports in one of the shapes 1, 2, 4, 9, 18")
        for port in "AB":
            if kw[f"p_CSDECODE_{port}"] != "0b000" or kw.get(f"p_WRITEMODE_{port}", "NORMAL") != "NORMAL":
                raise ValueError("DP16KDModel: chip selects decoded as 0b000, WRITEMODE NORMAL")
            if kw[f"p_REGMODE_{port}"] not in ("NOREG", "OUTREG"):
                raise ValueError("DP16KDModel: REGMODE NOREG or OUTREG")
        self.kw = kw
        self.width = width

    def elaborate(self, platform):
        m = Module()
        kw, width = self.kw, self.width
        lsb = _ADDR_LSB[width]
        domain = kw["i_CLKB"].domain
        if kw["i_CLKA"].domain != domain:
            raise ValueError("DP16KDModel: both ports in one clock domain")
        def pins(name, count):
            return Cat(*(kw[f"{name}{k}"] for k in range(count)))

        if width == 36:
            return self._elaborate_pdp(m, domain, pins)
        mem = m.submodules.mem = Memory(shape=width, depth=SHAPE_WORDS[width], init=[])
        for port in "AB":
            wr = mem.write_port(domain=domain, granularity=9 if width == 18 else None)
            rd = mem.read_port(domain=domain, transparent_for=())
            addr = pins(f"i_AD{port}", 14)[lsb:]
            enabled = kw[f"i_CE{port}"] & ~kw[f"i_RST{port}"] & (pins(f"i_CS{port}", 3) == 0)
            write = enabled & kw[f"i_WE{port}"]
            if width == 18:
                write = Cat(write & kw[f"i_AD{port}0"], write & kw[f"i_AD{port}1"])
            m.d.comb += [wr.addr.eq(addr), wr.data.eq(pins(f"i_DI{port}", width)), wr.en.eq(write),
                         rd.addr.eq(addr), rd.en.eq(enabled & ~kw[f"i_WE{port}"])]
            out = rd.data
            if kw[f"p_REGMODE_{port}"] == "OUTREG":
                reg = Signal(width, reset_less=True, name=f"outreg_{port.lower()}")
                with m.If(kw[f"i_OCE{port}"]):
                    m.d[domain] += reg.eq(rd.data)
                out = reg
            for pin in range(width):
                name = f"o_DO{port}{pin}"
                if name in kw:
                    m.d.comb += kw[name].eq(out[pin])
        return m

    def _elaborate_pdp(self, m, domain, pins):
        """The 36-bit simple-dual-port shape: port A writes ``{DIB, DIA}`` (bytes enabled by
        ``ADA3..ADA0``), port B reads into ``{DOB, DOA}``; each half has its port's output register."""
        kw = self.kw
        if not (isinstance(kw["i_WEB"], Const) and kw["i_WEB"].value == 0):
            raise ValueError("DP16KDModel: in the 36-bit shape only port A writes")
        mem = m.submodules.mem = Memory(shape=36, depth=PDP_WORDS, init=[])
        wr = mem.write_port(domain=domain, granularity=9)
        rd = mem.read_port(domain=domain, transparent_for=())
        write = kw["i_CEA"] & kw["i_WEA"] & ~kw["i_RSTA"] & (pins("i_CSA", 3) == 0)
        m.d.comb += [
            wr.addr.eq(pins("i_ADA", 14)[5:]),
            wr.data.eq(Cat(pins("i_DIA", 18), pins("i_DIB", 18))),
            wr.en.eq(Cat(*(write & kw[f"i_ADA{k}"] for k in range(4)))),
            rd.addr.eq(pins("i_ADB", 14)[5:]),
            rd.en.eq(kw["i_CEB"] & ~kw["i_RSTB"] & (pins("i_CSB", 3) == 0)),
        ]
        for half, port in enumerate("AB"):
            out = rd.data[18 * half:18 * half + 18]
            if kw[f"p_REGMODE_{port}"] == "OUTREG":
                reg = Signal(18, reset_less=True, name=f"outreg_{port.lower()}")
                with m.If(kw[f"i_OCE{port}"]):
                    m.d[domain] += reg.eq(out)
                out = reg
            for pin in range(18):
                if f"o_DO{port}{pin}" in kw:
                    m.d.comb += kw[f"o_DO{port}{pin}"].eq(out[pin])
        return m


def in_block_ram(width: int, depth: int) -> bool:
    """Whether a ``width x depth`` table goes into block RAM in the 512 x 36 shape: Yosys would map
    it to blocks (:func:`inferred_blocks`) and it is at most :data:`PDP_WORDS` deep. The engine's
    tables that qualify are built from primitives behind the blocks' output registers
    (:mod:`hw.dual_read`, or ``SlicedMemory`` slices of 36 bits); the others stay inferred."""
    return depth <= PDP_WORDS and inferred_blocks(width, depth) > 0
