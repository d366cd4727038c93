"""Board top: oscillator -> PLL -> engine clock domain -> a pluggable core.

:class:`BoardTop` owns everything board-specific: it requests the board's
oscillator, makes the engine clock with an ``EHXPLLL`` (:mod:`hw.pll`), holds
the engine domain ``sync`` in reset until the PLL locks (asynchronous assert,
synchronous release, then a ``DCCA`` global buffer: the reset reaches every
flip-flop of the engine over a clock network instead of one fabric net that
spans the die, which limited the SoC to 52 MHz), and wires the
board pins a *core* asks for. The core is any ``wiring.Component`` that runs in
the domain ``sync`` (the engine clock) and exposes, as signature members, the
board pins it wants:

* ``leds``: ``Out(n)``, shown on the board's LEDs. When the board has fewer
  LEDs than ``n`` the bits are XOR-folded onto them; the last LED shows the PLL
  lock when the board has at least two.
* ``rx``: ``In(1)`` and ``tx``: ``Out(1)``, the host UART: wired to the board's
  ``uart`` resource (amaranth-boards' ``UARTResource``: its ``rx`` subsignal is
  the FPGA's input, ``tx`` its output, whatever the role; on the ULX3S these are
  the FT231X's TXD (pin M1) and RXD (pin L4)). A board without a ``uart``
  resource raises :class:`NoUART`. ``rx`` goes in unsynchronised (the core's
  UART receiver has its own synchroniser).

The product is :class:`hw.soc.UartSoC` (host link + engine). Two more cores live
here; neither is the product:

* :class:`EngineProbe` -- a *timing and resource probe* of the multiplier array
  (:class:`hw.systolic.SystolicArray`): free-running LFSRs feed random
  activations and weights, tiles of ``tile_cin`` input channels are closed back to back, and
  every output word is XOR-reduced (a registered tree of 4-input XORs) into a
  few LED bits, so synthesis can optimise nothing away. It exists to measure
  Fmax and resource use of the array on the real part.
* :class:`Counter` -- a blinking counter, the smallest design that exercises the
  whole flow (PLL, constraints, report), for tests.
"""

from functools import reduce
from operator import xor

from amaranth.build import ResourceError
from amaranth.hdl import (Cat, ClockDomain, ClockSignal, Const, Elaboratable, Instance, Module, Mux, ResetSignal,
                          Signal)
from amaranth.lib import io, wiring
from amaranth.lib.cdc import AsyncFFSynchronizer
from amaranth.lib.wiring import Out

from .pll import PLL, pll_params

__all__ = ["BoardTop", "EngineProbe", "Counter", "NoUART", "xor_tree"]


class NoUART(ValueError):
    """The core wants UART pins (``rx``/``tx``) and the board has no ``uart`` resource."""


def xor_tree(m, bits, name, *, domain="sync"):
    """Registered XOR reduction of ``bits`` (a list of 1-bit values): 4 inputs per LUT, one register per level.

    Returns the 1-bit result, ``ceil(log4(len(bits)))`` cycles late.
    """
    bits = list(bits)
    if not bits:
        raise ValueError("xor_tree needs at least one bit")
    level = 0
    while len(bits) > 1 or level == 0:
        nxt = []
        for k in range(0, len(bits), 4):
            s = Signal(name=f"{name}_l{level}_{k // 4}")
            m.d[domain] += s.eq(reduce(xor, bits[k:k + 4]))
            nxt.append(s)
        bits, level = nxt, level + 1
    return bits[0]


class _LFSR:
    """Free-running 32-bit Galois LFSR (x^32 + x^22 + x^2 + x + 1)."""

    TAPS = 0x80200003

    def __init__(self, m, seed, name):
        self.state = Signal(32, init=(seed & 0xFFFF_FFFF) or 1, name=name)
        s = self.state
        m.d.sync += s.eq(Mux(s[0], (s >> 1) ^ self.TAPS, s >> 1))


class EngineProbe(wiring.Component):
    """Timing/resource probe of the ``rows x cols`` multiplier array (not the product).

    Parameters
    ----------
    rows, cols : int
        ``P`` x ``Q`` of :class:`hw.systolic.SystolicArray` (``P * Q`` ``MULT18X18D``).
    tile_cin : int
        Input channels per tile (beats between ``last`` flags), >= 1.
    n_leds : int
        Width of ``leds``.

    Members
    -------
    leds : Out(n_leds)
        Toggling XOR reduction of everything the array outputs.

    Raises
    ------
    ValueError
        On a bad parameter (the array's own checks apply too).
    """

    def __init__(self, rows: int, cols: int, *, tile_cin: int = 64, n_leds: int = 8):
        from .systolic import SystolicArray  # imported here: the top works without it
        if not isinstance(tile_cin, int) or tile_cin < 1:
            raise ValueError(f"tile_cin must be a positive integer, not {tile_cin!r}")
        if not isinstance(n_leds, int) or n_leds < 1:
            raise ValueError(f"n_leds must be a positive integer, not {n_leds!r}")
        self._array = SystolicArray(rows, cols)
        self._tile_cin = tile_cin
        super().__init__({"leds": Out(n_leds)})

    rows = property(lambda self: self._array.rows)
    cols = property(lambda self: self._array.cols)
    multipliers = property(lambda self: self._array.rows * self._array.cols)

    def elaborate(self, platform):
        m = Module()
        m.submodules.array = arr = self._array
        P, Q = arr.rows, arr.cols
        ip = arr.i.payload
        accept = Signal()
        m.d.comb += [arr.i.valid.eq(1), accept.eq(arr.i.ready)]

        # stimulus: one free-running LFSR per activation lane, weight lane, and the control bits.
        # Only the tile counter follows the hand-shake: the data are random, so a beat whose
        # payload changes while it waits for ``ready`` is still a random beat, and the probe
        # does not put a fan-out of (P + Q + 1) * 32 clock enables on the array's ``ready``.
        acts = [_LFSR(m, 0x1234_5677 * (p + 1), f"lfsr_act{p}") for p in range(P)]
        wgts = [_LFSR(m, 0x9E37_79B9 * (q + 3), f"lfsr_wgt{q}") for q in range(Q)]
        ctrl = _LFSR(m, 0xC0FF_EE11, "lfsr_ctrl")
        beat = Signal(range(self._tile_cin), name="beat")
        last = Signal()
        m.d.comb += last.eq(beat == self._tile_cin - 1)
        with m.If(accept):
            m.d.sync += beat.eq(Mux(last, 0, beat + 1))
        m.d.comb += [
            *[ip.act[p].eq(acts[p].state[:8]) for p in range(P)],
            *[ip.weight[q].eq(wgts[q].state[:8]) for q in range(Q)],
            ip.act_signed.eq(ctrl.state[0]),
            ip.last.eq(last),
            ip.n_pix.eq(P),
            ip.n_chan.eq(Q),
            ip.tag.eq(ctrl.state[8:8 + len(ip.tag)]),
        ]

        # sink: always ready; capture each output beat, XOR-fold it onto the LEDs
        m.d.comb += arr.o.ready.eq(1)
        out_bits = Cat(arr.o.payload.as_value(), arr.busy)
        cap = Signal(len(out_bits), name="captured")
        with m.If(arr.o.valid):
            m.d.sync += cap.eq(out_bits)
        n = len(self.leds)
        state = Signal(n, name="led_state")
        for j in range(n):
            t = xor_tree(m, [cap[i] for i in range(j, len(cap), n)], f"xor{j}")
            m.d.sync += state[j].eq(state[j] ^ t)
        m.d.comb += self.leds.eq(state)
        return m


class Counter(wiring.Component):
    """A free-running counter whose top bits blink the LEDs (flow test only).

    Parameters
    ----------
    width : int
        Counter width; the LEDs show its top ``n_leds`` bits.
    n_leds : int
    """

    def __init__(self, *, width: int = 28, n_leds: int = 8):
        if not isinstance(width, int) or width < n_leds or n_leds < 1:
            raise ValueError(f"need width >= n_leds >= 1, not width={width!r} n_leds={n_leds!r}")
        self._width = width
        super().__init__({"leds": Out(n_leds)})

    def elaborate(self, platform):
        m = Module()
        count = Signal(self._width)
        m.d.sync += count.eq(count + 1)
        m.d.comb += self.leds.eq(count[-len(self.leds):])
        return m


class BoardTop(Elaboratable):
    """Oscillator -> ``EHXPLLL`` -> domain ``sync`` at ``clock_mhz`` -> ``core``.

    Parameters
    ----------
    core : wiring.Component
        Runs in domain ``sync``; see the module docstring for the members it may have.
    clock_mhz : float
        Requested engine clock; the PLL makes the nearest frequency it can
        (:attr:`pll_params` after elaboration, or :func:`hw.pll.pll_params`).
    """

    def __init__(self, core, *, clock_mhz: float):
        if not isinstance(core, wiring.Component):
            raise TypeError(f"core must be a wiring.Component, not {core!r}")
        self._core = core
        self._clock_mhz = clock_mhz
        self.pll_params = None

    core = property(lambda self: self._core)

    def elaborate(self, platform):
        if platform is None:
            raise ValueError("BoardTop needs a board platform (it instantiates the ECP5 PLL)")
        members = self._core.signature.members
        uart = None
        if "rx" in members or "tx" in members:
            try:
                uart = platform.request("uart", 0, dir="-")
            except ResourceError:
                raise NoUART(f"{type(platform).__name__} has no 'uart' resource for the core's "
                             "rx/tx") from None
        m = Module()
        clk_io = platform.request(platform.default_clk, dir="-")
        m.submodules.clk_buf = clk_buf = io.Buffer("i", clk_io)
        self.pll_params = params = pll_params(platform.default_clk_frequency / 1e6, self._clock_mhz)
        m.submodules.pll = pll = PLL(params)
        m.d.comb += pll.clk_in.eq(clk_buf.i)

        m.domains.sync = ClockDomain("sync")
        m.d.comb += ClockSignal("sync").eq(pll.clk_out)
        rst = Signal(init=1)
        m.submodules.rst_sync = AsyncFFSynchronizer(~pll.locked, rst, o_domain="sync")
        m.submodules.rst_buf = Instance("DCCA", i_CLKI=rst, i_CE=Const(1, 1), o_CLKO=ResetSignal("sync"))
        m.submodules.core = core = self._core

        if uart is not None:
            if "rx" in members:
                m.submodules.uart_rx_buf = rx_buf = io.Buffer("i", uart.rx)
                m.d.comb += core.rx.eq(rx_buf.i)
            if "tx" in members:
                m.submodules.uart_tx_buf = tx_buf = io.Buffer("o", uart.tx)
                m.d.comb += tx_buf.o.eq(core.tx)

        if "leds" in members:
            pins = self._led_pins(platform)
            outs = []
            for k, pin in enumerate(pins):
                m.submodules[f"led_buf{k}"] = buf = io.Buffer("o", pin)
                outs.append(buf.o)
            if outs:
                show_lock = len(outs) >= 2
                n = len(outs) - show_lock
                leds = core.leds
                for k in range(n):
                    m.d.comb += outs[k].eq(reduce(xor, [leds[j] for j in range(k, len(leds), n)]))
                if show_lock:
                    m.d.comb += outs[-1].eq(pll.locked)
        return m

    @staticmethod
    def _led_pins(platform):
        pins = []
        k = 0
        while True:
            try:
                pins.append(platform.request("led", k, dir="-"))
            except ResourceError:
                break
            k += 1
        if not pins:
            try:
                rgb = platform.request("rgb_led", 0, dir="-")
                pins = [rgb.r, rgb.g, rgb.b]
            except ResourceError:
                pass
        return pins
