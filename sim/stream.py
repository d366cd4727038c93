"""Small cocotb helpers for valid/ready streams (``amaranth.lib.stream`` ports).

An Amaranth stream member ``i`` appears in the Verilog as ``i__valid``,
``i__ready`` and ``i__payload`` (the payload flattened to one vector, first
field / element in the least significant bits). These helpers drive and check
such ports from a cocotb testbench:

* :class:`StreamSource` sends words, holding ``valid`` off for random gaps;
* :class:`StreamSink` takes words, dropping ``ready`` at random (back-pressure);
* :func:`pack_lanes` / :func:`unpack_lanes` convert between a list of lane values
  and the flat payload integer of an ``ArrayLayout``;
* :func:`start_clock` / :func:`reset` for the Amaranth ``sync`` domain.

Handshake sampling: both helpers decide whether a transfer happens in the
``ReadOnly`` phase of a cycle (all combinational logic settled, including a
``ready`` that depends on ``valid``) and move on after the following rising
edge, which is exactly when the DUT registers the transfer. Both take a seeded
``random.Random`` so that a run reproduces from its seed.

Example::

    src = StreamSource(dut.clk, dut.i__valid, dut.i__ready, dut.i__payload, rng, gap_prob=0.3)
    snk = StreamSink(dut.clk, dut.o__valid, dut.o__ready, dut.o__payload, rng, stall_prob=0.3)
    cocotb.start_soon(src.send(words))
    got = await snk.receive(len(expected))
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge

__all__ = ["StreamSource", "StreamSink", "pack_lanes", "unpack_lanes", "start_clock", "reset"]


def pack_lanes(values: Sequence[int], width: int) -> int:
    """Pack lane values (signed or unsigned) into one payload integer, lane 0 in the LSBs."""
    mask = (1 << width) - 1
    word = 0
    for i, v in enumerate(values):
        word |= (int(v) & mask) << (i * width)
    return word


def unpack_lanes(word: int, width: int, lanes: int, signed: bool = True) -> list[int]:
    """Split a payload integer into ``lanes`` values of ``width`` bits (lane 0 = LSBs)."""
    mask = (1 << width) - 1
    out = []
    for i in range(lanes):
        v = (word >> (i * width)) & mask
        if signed and v >> (width - 1):
            v -= 1 << width
        out.append(v)
    return out


def start_clock(clk, period_ns: float = 10) -> None:
    """Start a free-running clock on ``clk``."""
    cocotb.start_soon(Clock(clk, period_ns, unit="ns").start())


async def reset(clk, rst, cycles: int = 2) -> None:
    """Hold the synchronous reset ``rst`` high for ``cycles`` rising edges of ``clk``."""
    rst.value = 1
    for _ in range(cycles):
        await RisingEdge(clk)
    rst.value = 0


class StreamSource:
    """Drive words into a valid/ready stream, with seeded random gaps on ``valid``.

    Parameters
    ----------
    clk, valid, ready, payload
        The clock and the stream's signal handles.
    rng : random.Random
        Source of the gaps.
    gap_prob : float
        Probability, before each word, of idling for a random 1..``max_gap`` cycles.
    max_gap : int
        Longest idle run.
    """

    def __init__(self, clk, valid, ready, payload, rng: random.Random, *, gap_prob: float = 0.0, max_gap: int = 3):
        if not 0.0 <= gap_prob < 1.0:
            raise ValueError(f"gap_prob must be in [0, 1), not {gap_prob!r}")
        if max_gap < 1:
            raise ValueError(f"max_gap must be at least 1, not {max_gap!r}")
        self.clk, self.valid, self.ready, self.payload = clk, valid, ready, payload
        self.rng, self.gap_prob, self.max_gap = rng, gap_prob, max_gap
        self.sent = 0
        valid.value = 0

    async def send(self, words: Iterable[int]) -> None:
        """Send every word in order; returns after the last one was accepted.

        Must be awaited (or started) right after a rising edge / at time 0.
        """
        for word in words:
            if self.gap_prob and self.rng.random() < self.gap_prob:
                self.valid.value = 0
                for _ in range(self.rng.randint(1, self.max_gap)):
                    await RisingEdge(self.clk)
            self.valid.value = 1
            self.payload.value = int(word)
            while True:
                await ReadOnly()
                fire = bool(self.ready.value)
                await RisingEdge(self.clk)
                if fire:
                    break
            self.sent += 1
        self.valid.value = 0


class StreamSink:
    """Accept words from a valid/ready stream, with seeded random back-pressure on ``ready``.

    Parameters
    ----------
    clk, valid, ready, payload
        The clock and the stream's signal handles.
    rng : random.Random
        Source of the stalls.
    stall_prob : float
        Probability that ``ready`` is low in a given cycle.
    """

    def __init__(self, clk, valid, ready, payload, rng: random.Random, *, stall_prob: float = 0.0):
        if not 0.0 <= stall_prob < 1.0:
            raise ValueError(f"stall_prob must be in [0, 1), not {stall_prob!r}")
        self.clk, self.valid, self.ready, self.payload = clk, valid, ready, payload
        self.rng, self.stall_prob = rng, stall_prob
        ready.value = 0

    async def receive(self, count: int, *, timeout_cycles: int | None = None) -> list[int]:
        """Collect exactly ``count`` words (as unsigned ints) and drop ``ready`` afterwards.

        Raises
        ------
        AssertionError
            If ``timeout_cycles`` pass without a new word (the DUT hangs or lost words).
        """
        words: list[int] = []
        idle = 0
        while len(words) < count:
            ready = not (self.stall_prob and self.rng.random() < self.stall_prob)
            self.ready.value = int(ready)
            await ReadOnly()
            if ready and self.valid.value:
                words.append(int(self.payload.value))
                idle = 0
            else:
                idle += 1
                if timeout_cycles is not None and idle > timeout_cycles:
                    raise AssertionError(
                        f"stream stalled: {len(words)} of {count} words received, none for {idle} cycles"
                    )
            await RisingEdge(self.clk)
        self.ready.value = 0
        return words

    async def expect_idle(self, cycles: int) -> None:
        """Check that no extra word is offered for ``cycles`` cycles (``ready`` held high)."""
        self.ready.value = 1
        for i in range(cycles):
            await ReadOnly()
            if self.valid.value:
                raise AssertionError(f"unexpected extra word {int(self.payload.value):#x} {i} cycles after the last one")
            await RisingEdge(self.clk)
        self.ready.value = 0
