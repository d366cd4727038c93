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

from .engine import Engine
from .engine_params import EngineParams
from .link import HostLink, LinkEngine

__all__ = ["EngineSoC", "UartSoC", "SIM_PARAMS", "simulated_board"]

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


def simulated_board(params: EngineParams = SIM_PARAMS, *, progress=None):
    """The simulated board (a context manager, :class:`sim.board.SimulatedBoard`) running :class:`EngineSoC`."""
    from sim.board import SimulatedBoard

    name = f"engine_{params.rows}x{params.cols}_l{params.lanes}"
    return SimulatedBoard(EngineSoC(params), name=name, progress=progress, source_key=_source_key(params))


def _source_key(params: EngineParams) -> str:
    """Digest of what the SoC's Verilog is generated from: every ``hw/*.py``, the numerics, the params, Amaranth."""
    import hashlib
    from importlib.metadata import version
    from pathlib import Path

    here = Path(__file__).resolve().parent
    h = hashlib.sha256(repr((params, version("amaranth"))).encode())
    for path in sorted([*here.glob("*.py"), here.parent / "quant" / "numerics.py"]):
        h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()
