"""8N1 UART receiver and transmitter with ``amaranth.lib.stream`` interfaces.

Both blocks run from one clock with an integer *divisor* (clock cycles per bit), fixed at build
time by :func:`uart_divisor` from the clock frequency and the baud rate. The divisor is rounded to
the nearest integer and rejected when the resulting baud rate is off by 2 % or more: a receiver
samples the stop bit 9.5 bit-times after the start edge, so the two ends together may drift by less
than half a bit over that span (about 5 %), and the other end of the wire gets its share of it too.

At 3 Mbaud (the FT231X maximum on the ULX3S) the usual engine clocks give:

=========  =======  =========
clock      divisor  error
=========  =======  =========
48 MHz     16       0 %
50 MHz     17       -1.96 %
60 MHz     20       0 %
75 MHz     25       0 %
80 MHz     27       -1.23 %
92.86 MHz  31       -0.15 %
103.1 MHz  34       +1.10 %
=========  =======  =========

so a PLL output that is a multiple of 3 MHz is the comfortable choice.

Receiver
--------
The ``rx`` pin passes a 2-flop synchroniser. A falling edge starts a byte; the
start bit is checked again half a bit later (a shorter low pulse is a glitch and
is ignored), then each data bit is sampled once in its middle, LSB first, and
the stop bit in its middle. A low stop bit is a *framing error*: the byte is
dropped, ``frame_error`` pulses for one cycle and the receiver waits for the
line to go high (a break) before it looks for the next start bit. The receiver
is ready for the next start edge right after the middle of the stop bit, so a
sender whose bits are a little shorter than ours never loses a byte.

The received byte waits in an output register until the stream takes it. A byte
that completes while the previous one is still waiting is dropped and
``overrun`` pulses for one cycle.

Transmitter
-----------
A 10-bit shift register (start bit, 8 data bits LSB first, stop bit) drives the
``tx`` pin straight from a flip-flop (no glitches). ``i.ready`` is high while
the line is idle and in the last cycle of a stop bit, so back-to-back bytes go
out without a gap.
"""


from amaranth import Cat, Const, Module, Mux, Signal
from amaranth.lib import cdc, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["MIN_DIVISOR", "uart_divisor", "UARTReceiver", "UARTTransmitter"]

#: Fewest clock cycles per bit the receiver supports (mid-bit sampling needs room).
MIN_DIVISOR = 4


def uart_divisor(clk_freq: float, baud: float, *, max_error: float = 0.02) -> int:
    """Clock cycles per bit for ``baud`` at ``clk_freq``, rounded to the nearest integer.

    Parameters
    ----------
    clk_freq : float
        Clock frequency in Hz.
    baud : float
        Baud rate in bit/s.
    max_error : float
        Largest accepted relative baud-rate error (exclusive), 2 % by default.

    Returns
    -------
    int
        The divisor, at least :data:`MIN_DIVISOR`.

    Raises
    ------
    ValueError
        If a frequency is not positive, the clock is too slow for the baud rate
        (fewer than :data:`MIN_DIVISOR` cycles per bit), or the rounded divisor
        misses the baud rate by ``max_error`` or more.
    """
    if not clk_freq > 0:
        raise ValueError(f"Clock frequency must be positive, not {clk_freq!r}")
    if not baud > 0:
        raise ValueError(f"Baud rate must be positive, not {baud!r}")
    divisor = max(1, round(clk_freq / baud))
    if divisor < MIN_DIVISOR:
        raise ValueError(
            f"Clock {clk_freq / 1e6:g} MHz is too slow for {baud:g} baud: "
            f"{clk_freq / baud:.2f} cycles per bit, at least {MIN_DIVISOR} needed"
        )
    error = (clk_freq / divisor - baud) / baud
    if abs(error) >= max_error:
        raise ValueError(
            f"Baud rate {baud:g} at {clk_freq / 1e6:g} MHz: divisor {divisor} gives "
            f"{clk_freq / divisor:.0f} baud, {error * 100:+.2f} % off (limit {max_error * 100:g} %)"
        )
    return divisor


class _UARTBase(wiring.Component):
    def __init__(self, signature, clk_freq, baud):
        self._divisor = uart_divisor(clk_freq, baud)
        self._clk_freq = clk_freq
        self._baud = baud
        super().__init__(signature)

    @property
    def divisor(self) -> int:
        """Clock cycles per bit."""
        return self._divisor

    @property
    def baud_error(self) -> float:
        """Relative error of the real baud rate (``clk_freq / divisor``) against the requested one."""
        return (self._clk_freq / self._divisor - self._baud) / self._baud


class UARTReceiver(_UARTBase):
    """8N1 UART receiver.

    Parameters
    ----------
    clk_freq : float
        Frequency of the ``sync`` clock in Hz.
    baud : float
        Baud rate in bit/s.

    Members
    -------
    rx : In(1)
        The serial line (asynchronous; idles high).
    o : Out(stream.Signature(8))
        Received bytes.
    frame_error : Out(1)
        One-cycle pulse: a byte with a low stop bit was dropped.
    overrun : Out(1)
        One-cycle pulse: a byte was dropped because ``o`` still held the previous one.

    Raises
    ------
    ValueError
        If :func:`uart_divisor` rejects the clock/baud pair.
    """

    rx: In(1, init=1)
    o: Out(stream.Signature(8))
    frame_error: Out(1)
    overrun: Out(1)

    def __init__(self, *, clk_freq, baud):
        super().__init__(None, clk_freq, baud)

    def elaborate(self, platform):
        m = Module()
        div = self._divisor

        rx = Signal(init=1)
        m.submodules.sync = cdc.FFSynchronizer(self.rx, rx, init=1)

        timer = Signal(range(div))
        bit = Signal(range(9))
        shreg = Signal(8)
        data = Signal(8)
        valid = Signal()
        m.d.comb += [self.o.payload.eq(data), self.o.valid.eq(valid)]
        with m.If(self.o.ready):
            m.d.sync += valid.eq(0)

        with m.If(timer != 0):
            m.d.sync += timer.eq(timer - 1)

        with m.FSM():
            with m.State("IDLE"):
                with m.If(~rx):
                    # The edge happened during the last cycle: the middle of the
                    # start bit is about div/2 cycles away.
                    m.d.sync += timer.eq(div // 2 - 1)
                    m.next = "START"
            with m.State("START"):
                with m.If(timer == 0):
                    with m.If(rx):
                        m.next = "IDLE"  # glitch, not a start bit
                    with m.Else():
                        m.d.sync += [timer.eq(div - 1), bit.eq(0)]
                        m.next = "DATA"
            with m.State("DATA"):
                with m.If(timer == 0):
                    m.d.sync += [shreg.eq(Cat(shreg[1:], rx)), timer.eq(div - 1), bit.eq(bit + 1)]
                    with m.If(bit == 7):
                        m.next = "STOP"
            with m.State("STOP"):
                with m.If(timer == 0):
                    with m.If(rx):
                        with m.If(valid & ~self.o.ready):
                            m.d.comb += self.overrun.eq(1)
                        with m.Else():
                            m.d.sync += [data.eq(shreg), valid.eq(1)]
                        m.next = "IDLE"
                    with m.Else():
                        m.d.comb += self.frame_error.eq(1)
                        m.next = "BREAK"
            with m.State("BREAK"):
                with m.If(rx):
                    m.next = "IDLE"
        return m


class UARTTransmitter(_UARTBase):
    """8N1 UART transmitter.

    Parameters
    ----------
    clk_freq : float
        Frequency of the ``sync`` clock in Hz.
    baud : float
        Baud rate in bit/s.

    Members
    -------
    i : In(stream.Signature(8))
        Bytes to send.
    tx : Out(1)
        The serial line (idles high, driven from a flip-flop).
    busy : Out(1)
        High while a byte is on the line.

    Raises
    ------
    ValueError
        If :func:`uart_divisor` rejects the clock/baud pair.
    """

    i: In(stream.Signature(8))
    tx: Out(1, init=1)
    busy: Out(1)

    def __init__(self, *, clk_freq, baud):
        super().__init__(None, clk_freq, baud)

    def elaborate(self, platform):
        m = Module()
        div = self._divisor

        shreg = Signal(10, init=0x3FF)  # bit 0 is on the line
        timer = Signal(range(div))
        bits = Signal(range(11))
        tick = Signal()
        m.d.comb += [
            self.tx.eq(shreg[0]),
            self.busy.eq(bits != 0),
            tick.eq(timer == 0),
            self.i.ready.eq((bits == 0) | ((bits == 1) & tick)),
        ]
        with m.If(bits != 0):
            m.d.sync += timer.eq(Mux(tick, div - 1, timer - 1))
            with m.If(tick):
                m.d.sync += [shreg.eq(Cat(shreg[1:], Const(1, 1))), bits.eq(bits - 1)]
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [
                shreg.eq(Cat(Const(0, 1), self.i.payload, Const(1, 1))),
                bits.eq(10),
                timer.eq(div - 1),
            ]
        return m

