"""The SoC: host link + engine. One core for the real board and for its simulated twin.

:class:`EngineSoC` is the link engine (:class:`hw.link.LinkEngine`: framed
requests in, replies out, CRC, resync) in front of the engine's bus
(:class:`hw.engine.Engine`). Its byte side is a pair of 8-bit streams:

* on the **simulated board** (:func:`simulated_board`) the streams are the
  top-level ports that the Verilator C++ main feeds from a TCP socket, one byte
  per clock at most (there is no UART to slow the simulation down);
* on a **real board** :class:`UartSoC` puts the engine behind
  :class:`hw.link.HostLink` (UART at 3 Mbaud on the ULX3S's FT231X + link engine).

``SIM_PARAMS`` is the engine configuration of the simulated board: an 8x16
array with 16 lanes and memories large enough for ShiftResNet-20 E=6 at 32x32.
"""

from __future__ import annotations

from amaranth import Cat, Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from .dp16kd import ebr_count, inferred_blocks
from .engine import Engine, sched_is_sliced
from .engine_params import EngineParams
from .link import HostLink, LinkEngine

__all__ = ["EngineSoC", "UartSoC", "SIM_PARAMS", "simulated_board", "SOC_PARAMS", "SOC_CLOCK_MHZ", "SOC_SEED", "SOC_ROUTER",
           "REDUCED_SOC_PARAMS", "estimate_resources", "ebr_count"]

#: The simulated board's engine (the default a new user gets from ``python host/run.py``).
SIM_PARAMS = EngineParams(rows=8, cols=16, lanes=16, act_words=16384, weight_words=16384, max_layers=64,
                          sched_words=2048, table_words=4096, logit_words=64, max_width=32, max_height=32,
                          max_cin=512, max_gather=512, radius=2, max_cout=512)


class EngineSoC(wiring.Component):
    """Link engine + engine, byte streams outside.

    Members
    -------
    rx : In(stream.Signature(8))
        Request bytes from the host.
    tx : Out(stream.Signature(8))
        Reply bytes to the host.
    busy : Out(1)
        The engine is running a program or the link is inside a frame.
    leds : Out(8)
        bit 0 engine busy, bit 1 last run done, bit 2 link busy.
    """

    def __init__(self, params: EngineParams = SIM_PARAMS, *, timeout_cycles: int = 50_000,
                 max_words: int = 256):
        self.params = params
        self._timeout_cycles = timeout_cycles
        self._max_words = max_words
        super().__init__({
            "rx": In(stream.Signature(8)),
            "tx": Out(stream.Signature(8)),
            "busy": Out(1),
            "leds": Out(8),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.link = link = LinkEngine(max_words=self._max_words, timeout_cycles=self._timeout_cycles)
        m.submodules.engine = engine = Engine(self.params)
        wiring.connect(m, link.bus, engine.bus)
        wiring.connect(m, wiring.flipped(self.rx), link.rx)
        wiring.connect(m, link.tx, wiring.flipped(self.tx))
        m.d.comb += [
            link.rx_error.eq(0),
            # the simulated board clocks only while busy or bytes move: the link's
            # inter-byte timeout must keep running while a frame is half received
            self.busy.eq(engine.busy | link.busy),
            self.leds.eq(Cat(engine.busy, engine.done, link.busy)),
        ]
        return m


class UartSoC(wiring.Component):
    """The engine behind :class:`hw.link.HostLink` (UART + link engine): what a board top instantiates.

    Members: ``rx`` (In(1), from the host's USB-UART), ``tx`` (Out(1)), ``leds`` (Out(8)).
    """

    def __init__(self, params: EngineParams, *, clk_freq: float, baud: float = 3_000_000):
        self.params = params
        self._clk_freq, self._baud = clk_freq, baud
        super().__init__({"rx": In(1, init=1), "tx": Out(1, init=1), "leds": Out(8)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.link = link = HostLink(clk_freq=self._clk_freq, baud=self._baud)
        m.submodules.engine = engine = Engine(self.params)
        wiring.connect(m, link.bus, engine.bus)
        m.d.comb += [link.rx.eq(self.rx), self.tx.eq(link.tx),
                     self.leds.eq(Cat(engine.busy, engine.done, link.busy))]
        return m


def simulated_board(params: EngineParams = SIM_PARAMS, *, progress=None, **board_options):
    """The simulated board (a context manager, :class:`sim.board.SimulatedBoard`) running :class:`EngineSoC`.

    ``board_options`` go to :class:`~sim.board.SimulatedBoard` (``port``, ``idle_exit``, ...).
    """
    from sim.board import SimulatedBoard

    name = f"engine_{params.rows}x{params.cols}_l{params.lanes}"
    return SimulatedBoard(EngineSoC(params), name=name, progress=progress, source_key=_source_key(params),
                          **board_options)


def _source_key(params: EngineParams) -> str:
    """Digest of what the SoC's Verilog is generated from: every ``hw/`` source, the numerics, the params, Amaranth.

    All of ``hw/*.py``, not only the modules loaded now: some are imported only while the SoC is
    elaborated (``hw.shift_unit``, from ``EngineParams.shift_unit``), and a key without them kept
    a stale simulated board after a change to the shift unit.
    """
    import hashlib
    from importlib.metadata import version
    from pathlib import Path

    h = hashlib.sha256(repr((params, version("amaranth"))).encode())
    here = Path(__file__).resolve().parent
    sources = sorted(here.glob("*.py")) + [here.parent / "quant" / "numerics.py"]
    for path in sources:
        h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------- real boards

#: ``MULT18X18D`` used by the engine besides the ``rows x cols`` array: the output stage's ``5 * lanes``
#: and one for the output path's address (output pixel x words per pixel).
OUTPUT_STAGE_MULTS_PER_LANE = 5
ADDRESS_MULTS = 1

#: Engine configuration of the SoC per ECP5 part (``python -m hw.build --core soc``). Sized so that
#: the multipliers (``rows * cols + 5 * lanes + 1``) and the block RAMs (:func:`estimate_resources`)
#: fit the part with some margin; docs/BUILD.md has the arithmetic and what each one can run.
SOC_PARAMS = {
    # 149 of 156 MULT18X18D; ShiftResNet-20 E=1..6 at 32x32, with fused CSC passes (E=6: all 12288
    # activation words, 11387 weight words, 2474 table entries, 384 mid channels)
    "LFE5U-85F": EngineParams(rows=8, cols=16, lanes=4, act_words=12288, weight_words=12288, max_layers=32,
                              sched_words=1024, table_words=3072, logit_words=16, max_width=32, max_height=32,
                              max_cin=384, max_gather=384, radius=1, max_cout=512),
    # 69 of 72; ShiftResNet-20 E=1 at 32x32 with fused CSC passes (8720 activation words, 4214 weight
    # words; E=2 at 32x32 would need about 12288 activation and 8192 weight words: 110 EBR of 108).
    # max_cout 128: the output stage holds a fused stage-3 pass's 64 + 64 table entries (13 passes)
    # slice_depth 3: the big memories in slices at most 3 block RAMs deep (98 EBR instead of 80; with
    # the fewest blocks they were 9 deep, and their 9:1 read multiplexer limited 45F t13 to 77.27 MHz)
    "LFE5U-45F": EngineParams(rows=6, cols=8, lanes=4, act_words=9216, weight_words=4608, max_layers=32,
                              sched_words=512, table_words=2048, logit_words=16, max_width=32, max_height=32,
                              max_cin=64, max_gather=64, radius=1, max_cout=128, slice_depth=3),
    # 27 of 28; ShiftResNet-20 E=1 at 16x16
    "LFE5U-25F": EngineParams(rows=4, cols=4, lanes=2, act_words=10240, weight_words=8704, max_layers=32,
                              sched_words=512, table_words=1024, logit_words=16, max_width=16, max_height=16,
                              max_cin=64, max_gather=64, radius=1, max_cout=64),
}
SOC_PARAMS["LFE5U-12F"] = SOC_PARAMS["LFE5U-25F"]   # the same die: 28 MULT18X18D, 56 DP16KD

#: Default engine clock of the SoC per part (MHz asked of the PLL; ``--clock`` overrides), each a
#: clock whose build met timing and that makes 3 Mbaud within 2 %. The 85F SoC built at 100 MHz
#: (exactly: 25 MHz x 4, VCO 600 MHz; 33 cycles per UART bit, +1.01 %) met timing with Fmax
#: 103.56 MHz (docs/BUILD.md, t52: block RAMs read behind their own output registers, registered
#: host writes and sequencer addresses; before it 93 MHz, t46: 95.27 MHz; 84 MHz, t39: 88.68 MHz;
#: 70 MHz, t31: 70.14 MHz; 62.5 MHz, t29: 66.15 MHz; 60 MHz, t25: 65.87 MHz; 54.17 MHz, t24 s2:
#: 56.00 MHz; 45 MHz, t19: 52.24 MHz).
#: The 45F SoC at 103 MHz (the PLL makes 103.125, x33/8; 34 cycles per bit) met timing with Fmax
#: 110.25 MHz (docs/BUILD.md, 45F t34, seed 3, the same engine as t52; before it t28: 107.03 MHz;
#: 96 MHz, t23: 97.93 MHz; 80 MHz, t14: 81.36 MHz; 75 MHz, t8: 76.52 MHz; 66 MHz, t7: 71.83 MHz).
#: The smaller parts were not measured; they keep 36 MHz (35.71 MHz, x10/7, 12 cycles per bit, -0.8 %).
SOC_CLOCK_MHZ = {"LFE5U-85F": 100.0, "LFE5U-45F": 103.0, "LFE5U-25F": 36.0, "LFE5U-12F": 36.0}

#: nextpnr seed of ``python -m hw.build`` for a part's default SoC (others: 1): the seed it was
#: measured to route with at its default clock (85F: t52, 103.56 MHz; 45F: t34, 110.25 MHz;
#: docs/BUILD.md). nextpnr is deterministic for a given design, seed and thread count, so the
#: default build reproduces the measured one.
SOC_SEED = {"LFE5U-85F": 2, "LFE5U-45F": 3}

#: nextpnr router of ``python -m hw.build`` for a part's default SoC (others: router2). router2
#: diverged on both SoCs (45F t1, t2; 85F t22 s2, s3 and earlier runs), router1 routed every
#: build it was given: the 45F (t3-t28, 3-15 minutes of routing) and the 85F (t23-t45,
#: 7-27 minutes of routing, most of them beside other builds; docs/BUILD.md).
SOC_ROUTER = {"LFE5U-85F": "router1", "LFE5U-45F": "router1"}

#: A tiny SoC (``--core soc --reduced``): a quick check of the whole flow, not a useful engine.
REDUCED_SOC_PARAMS = EngineParams(rows=2, cols=2, lanes=2, act_words=512, weight_words=512, max_layers=4,
                                  sched_words=64, table_words=64, logit_words=4, max_width=8, max_height=8,
                                  max_cin=16, max_gather=16, radius=1, max_cout=16)


def estimate_resources(params: EngineParams, *, max_words: int = 256) -> dict:
    """Multipliers and block RAMs of :class:`UartSoC` with ``params``, before synthesis.

    Returns ``{"MULT18X18D": n, "DP16KD": n, "memories": {name: {"width", "depth", "copies", "DP16KD"}}}``.
    A memory read through two ports is stored twice (one write and one read port per
    copy): the activation memory (the sequential reader and the residual read). Memories
    that Yosys puts into LUT RAM (see :func:`hw.dp16kd.inferred_blocks`; also the FIFOs, not listed) count 0.
    For the 85F configuration this is exactly what ``synth_ecp5`` (Yosys 0.70) maps
    (docs/BUILD.md gives the figures of the last build); for tiny
    configurations it is an upper bound (Yosys builds narrow multiplies from LUTs).
    """
    from .engine_params import DESC_WORDS
    from .output_stage import OutputStage, TableEntry
    from .tile_feeder import TILE_SLOTS, tile_words

    p = params
    unit = p.shift_unit(for_host=True)
    pool_bits = OutputStage(p.lanes, max_channels=p.max_cout, max_pool_pixels=p.max_out_pixels).pool_bits
    slot = unit.slot_layout.size
    mems = {  # name: (width, depth, copies)
        "act": (8 * p.lanes, p.act_words, 2),
        "weight": (8 * p.cols, p.weight_words, 1),
        "desc": (32, p.max_layers * DESC_WORDS, 1),
        "sched": (slot, p.sched_words, 1),
        "table": (TableEntry.size, p.table_words, 1),
        "logits": (32 * p.lanes, p.logit_words, 1),
        "counters": (32, 2 * p.max_layers, 1),
        "shift_ring": (unit.elem_shape.width, unit.depth, p.lanes),
        "shift_sched": (slot, unit.max_slots, 1),
        "tile_buffer": (8 * p.lanes, TILE_SLOTS * tile_words(p), p.rows),
        "link_buffer": (32, max_words, 1),
        # the output stage's per-channel tables (one per lane) and pool sums (all lanes in one word)
        "stage_table": (TableEntry.size, p.max_cout // p.lanes, p.lanes),
        "pool_sums": (pool_bits * p.lanes, p.max_cout // p.lanes, 1),
    }
    from .sliced_memory import sliced_blocks

    # hw.sliced_memory.SlicedMemory: bit slices, see sliced_blocks (descriptors 16 bits, tables and,
    # from 1024 words on, schedules 18: hw.engine.sched_is_sliced)
    sliced = {"act": (p.slice_depth, None), "weight": (p.slice_depth, None), "desc": (0, 16),
              "table": (0, 18), "shift_ring": (0, None)}
    if sched_is_sliced(p):
        sliced["sched"] = (0, 18)
    out = {}
    for name, (w, d, copies) in mems.items():
        if name in sliced:
            blocks = sliced_blocks(w, d, *sliced[name])
        else:
            blocks = inferred_blocks(w, d)
        out[name] = {"width": w, "depth": d, "copies": copies, "DP16KD": blocks * copies}
    return {
        "MULT18X18D": p.rows * p.cols + OUTPUT_STAGE_MULTS_PER_LANE * p.lanes + ADDRESS_MULTS,
        "DP16KD": sum(v["DP16KD"] for v in out.values()),
        "memories": out,
    }
