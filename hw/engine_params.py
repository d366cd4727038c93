"""Build-time parameters of the engine, its memory map and its layer descriptor.

Everything the host needs to compile a program for a particular bitstream is
here, shared by the gateware (:mod:`hw.engine`) and the host compiler
(:mod:`host.compile`), so the two can never disagree:

* :class:`EngineParams` — array size, lanes, memory depths, shift-unit limits.
  The device reports them in its CSR block (:meth:`EngineParams.to_words`), so the
  host compiles for the engine it is actually talking to.
* :data:`Region` — the bus memory map (word addresses, region in bits 24..27).
* :func:`descriptor_layout` — one layer's descriptor as an Amaranth
  ``StructLayout``; the host packs it with ``layout.const(...)`` and the
  sequencer reads it back field by field.

docs/ENGINE.md explains the data flow these parameters size.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from amaranth.hdl import unsigned
from amaranth.lib import data
from amaranth.utils import bits_for, ceil_log2

__all__ = ["EngineParams", "Region", "Csr", "ENGINE_ID", "ENGINE_VERSION", "DESC_WORDS",
           "descriptor_layout", "region_addr", "parts_for"]

#: ``"SFEN"``: identification word at CSR 0.
ENGINE_ID = 0x5346454E
#: Version of the memory map / descriptor format (bump on any change).
ENGINE_VERSION = 3
#: 32-bit words per layer descriptor in the descriptor memory.
DESC_WORDS = 32


class Region:
    """Bus regions: bits 24..27 of the 32-bit word address select one."""

    CSR = 0
    DESC = 1      # layer descriptors, DESC_WORDS words each
    SCHED = 2     # shift-unit schedule slots (wide)
    TABLE = 3     # output-stage per-channel entries (m, s, bias)
    WEIGHT = 4    # weight words, Q int8 lanes each
    ACT = 5       # activation words, L int8/uint8 lanes each
    LOGITS = 6    # raw 32-bit outputs, L lanes per entry
    COUNTERS = 7  # per layer: cycles, array beats


class Csr:
    """Word offsets inside the CSR region."""

    ID = 0
    VERSION = 1
    PARAMS = 2        # EngineParams.to_words(), PARAMS .. PARAMS + len - 1
    CONTROL = 32      # write N (1..max_layers): run layers 0..N-1
    STATUS = 33       # bit 0 busy, bit 1 done since the last start, bits 16..: current layer
    TOTAL_CYCLES = 34  # cycles of the last run, start to done
    RUNS = 35          # completed runs since reset


def region_addr(region: int, offset: int = 0) -> int:
    """Bus word address of ``offset`` in ``region``."""
    return (region << 24) | offset


def parts_for(width: int) -> int:
    """32-bit bus words per memory entry of ``width`` bits (rounded up to a power of two)."""
    return 1 << ceil_log2(max(1, math.ceil(width / 32)))


@dataclass(frozen=True)
class EngineParams:
    """What one bitstream can run.

    Attributes
    ----------
    rows, cols : int
        ``P`` pixels x ``Q`` output channels of the multiplier array.
    lanes : int
        ``L``: bytes per activation word, channels per shift-unit beat and per
        output-stage beat. A power of two dividing ``cols``.
    act_words, weight_words : int
        Depth of the activation memory (words of ``L`` bytes) and of the weight
        memory (words of ``Q`` bytes).
    max_layers : int
        Descriptors the descriptor memory holds.
    sched_words, table_words : int
        Shift-schedule slots and output-stage channel entries for the whole program.
    logit_words : int
        Entries (``L`` raw 32-bit values each) of the logits memory.
    max_width, max_height, max_cin, max_gather, radius : int
        Shift-unit limits: image size, input channels, gathered channels
        (``C_gather``, also the longest tile), largest ``|dy|``/``|dx|``.
    max_cout : int
        Output channels of a layer (the output stage's table size, a power of two).
    slice_depth : int
        The most block RAMs deep a bit slice of the activation and weight memories may
        be (:func:`hw.sliced_memory.slice_bits_for`): more blocks in a narrower slice
        buy a smaller read multiplexer behind them. 0: as few blocks as possible.
    """

    rows: int = 8
    cols: int = 16
    lanes: int = 16
    act_words: int = 32768
    weight_words: int = 16384
    max_layers: int = 64
    sched_words: int = 2048
    table_words: int = 4096
    logit_words: int = 64
    max_width: int = 64
    max_height: int = 64
    max_cin: int = 512
    max_gather: int = 512
    radius: int = 2
    max_cout: int = 512
    slice_depth: int = 0

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            may_be_zero = f.name in ("radius", "slice_depth")
            if not isinstance(v, int) or v < (0 if may_be_zero else 1):
                kind = "a non-negative" if may_be_zero else "a positive"
                raise ValueError(f"EngineParams.{f.name} must be {kind} integer, not {v!r}")
        if self.lanes & (self.lanes - 1) or self.cols % self.lanes:
            raise ValueError(f"lanes ({self.lanes}) must be a power of two dividing cols ({self.cols})")
        if self.max_cout & (self.max_cout - 1) or self.max_cout < self.lanes:
            raise ValueError(f"max_cout ({self.max_cout}) must be a power of two >= lanes")
        for name in ("act_words", "weight_words", "sched_words", "table_words", "logit_words"):
            if getattr(self, name) > 1 << 24:
                raise ValueError(f"{name} exceeds a bus region (2**24 words)")

    # the words the device reports at Csr.PARAMS
    def to_words(self) -> list[int]:
        return [getattr(self, f.name) for f in fields(self)]

    @classmethod
    def from_words(cls, words) -> "EngineParams":
        names = [f.name for f in fields(cls)]
        if len(words) < len(names):
            raise ValueError("too few parameter words")
        return cls(**dict(zip(names, (int(w) for w in words))))

    @classmethod
    def n_words(cls) -> int:
        return len(fields(cls))

    def as_dict(self) -> dict:
        return asdict(self)

    # derived sizes
    @property
    def gather_words(self) -> int:
        """Tile-buffer words per pixel: ``ceil(max_gather / L)``."""
        return math.ceil(self.max_gather / self.lanes)

    @property
    def max_groups(self) -> int:
        return math.ceil(self.max_cout / self.cols)

    @property
    def max_out_pixels(self) -> int:
        return self.max_width * self.max_height

    def shift_unit_kwargs(self) -> dict:
        """Arguments of the engine's :class:`hw.shift_unit.ShiftUnit` (bytes move unsigned)."""
        return dict(lanes=self.lanes, max_width=self.max_width, max_height=self.max_height,
                    max_cin=self.max_cin, max_cout=self.max_gather, radius=self.radius,
                    signed=False, max_slots=self.max_gather)

    def shift_unit(self, *, for_host: bool = False, block_ram: str = "auto"):
        """The engine's shift unit; ``for_host=True`` for an instance that only compiles tables
        (``block_ram``: how its ring banks build block RAMs, :class:`hw.sliced_memory.SlicedMemory`)."""
        from .shift_unit import ShiftUnit

        unit = ShiftUnit(**self.shift_unit_kwargs(), block_ram=block_ram)
        if for_host:
            unit._MustUse__silence = True    # never elaborated: no "created but never used" warning
        return unit


def descriptor_layout(params: EngineParams, shift_cfg_layout) -> data.StructLayout:
    """One layer's descriptor (``DESC_WORDS`` x 32 bits, little-endian field packing)."""
    from .output_stage import ConfigLayout

    act_addr = unsigned(max(1, ceil_log2(params.act_words)))
    pix = unsigned(bits_for(params.max_out_pixels))
    chans = unsigned(bits_for(max(params.max_cout, params.max_gather)))
    layout = data.StructLayout({
        "act_signed": 1,           # the input tensor is int8 (else uint8)
        "res_signed": 1,           # the residual tensor is int8 (else uint8)
        "stride_log2": 2,          # 0, 1, 2: stride 1, 2, 4
        "in_base": act_addr,       # input tensor, activation word address
        "out_base": act_addr,      # output tensor (activation or logits word address)
        "res_base": act_addr,      # residual tensor
        "rd_skip": act_addr,       # reader: words skipped after each pixel read ((s-1) * in_beats when strided)
        "rd_row_skip": act_addr,   # reader: words skipped after each row read
        "out_words": unsigned(bits_for(math.ceil(params.max_cout / params.lanes))),  # words per output pixel
        "c_gather": chans,         # tile length (input channels of the 1x1 after the gather)
        "c_out": chans,
        "groups": unsigned(bits_for(params.max_groups)),   # ceil(c_out / Q)
        "out_pixels": pix,         # pixels of the strided output map (before any pool)
        "w_base": unsigned(max(1, ceil_log2(params.weight_words))),
        "sched_base": unsigned(max(1, ceil_log2(params.sched_words))),
        "table_base": unsigned(max(1, ceil_log2(params.table_words))),
        "out_beats": unsigned(bits_for(2 * params.max_out_pixels * math.ceil(params.max_cout / params.lanes))),
        "table_len": chans,        # output-stage entries to load (c_out, plus the expand half's when fused)
        "shift": shift_cfg_layout,
        "out": ConfigLayout,
        # ---- a fused CSC pass (docs/ENGINE.md): the fields above describe its reduce half (shift +
        # 1x1 + residual, reading the mid ring at in_base), these its expand half (1x1 from the block
        # input into the ring); all 0 for an ordinary pass, with ring_end = act_words
        "fused": 1,
        "ring_end": unsigned(bits_for(params.act_words)),   # the reader wraps from here to in_base
        "ring_pixels": pix,        # mid pixels the ring holds (a multiple of rows)
        "a_in_base": act_addr,     # block input tensor
        "a_in_words": unsigned(bits_for(params.act_words)),  # its words (pixels * a_in_beats)
        "a_in_beats": unsigned(bits_for(params.gather_words)),  # its words per pixel
        "a_act_signed": 1,
        "a_c_gather": chans,       # input channels of the expand 1x1
        "a_c_out": chans,          # mid channels
        "a_groups": unsigned(bits_for(params.max_groups)),
        "a_pixels": pix,           # pixels of the block input (= of the mid map)
        "a_w_base": unsigned(max(1, ceil_log2(params.weight_words))),
        "a_table_off": chans,      # output-stage entry of mid channel 0 (a multiple of lanes)
        "a_tile_words": unsigned(bits_for(params.rows * math.ceil(params.max_cout / params.lanes))),
        "a_out_beats": unsigned(bits_for(params.max_out_pixels * math.ceil(params.max_cout / params.lanes))),
    })
    if layout.size > 32 * DESC_WORDS:
        raise ValueError(f"descriptor needs {layout.size} bits, more than {DESC_WORDS} words")
    return layout
