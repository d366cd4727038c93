"""A register slice for a stream whose ``ready`` must not reach back combinationally.

``SkidBuffer`` sits between a producer and a consumer: its ``i.ready`` is a
register (there is room for one more beat), so the consumer's ``ready`` logic
ends at the slice's registers instead of running on into the producer (a FIFO's
level, a memory's read credits). Two registers of payload: the output register
and a spare that catches the beat accepted in the cycle the consumer stops.
One beat per cycle in steady state; one cycle of latency.
"""

from __future__ import annotations

from amaranth import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["SkidBuffer"]


class SkidBuffer(wiring.Component):
    """Stream register slice with a registered ``i.ready``.

    Parameters
    ----------
    shape : shape-castable
        The payload.

    Members
    -------
    i : In(stream.Signature(shape))
    o : Out(stream.Signature(shape))
    busy : Out(1)
        A beat is held (in the output register or the spare).
    """

    def __init__(self, shape):
        super().__init__({
            "i": In(stream.Signature(shape)),
            "o": Out(stream.Signature(shape)),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        spare = Signal.like(self.i.payload)
        spare_valid = Signal()
        m.d.comb += [self.i.ready.eq(~spare_valid), self.busy.eq(self.o.valid | spare_valid)]
        take = self.i.valid & self.i.ready
        give = self.o.valid & self.o.ready
        with m.If(~self.o.valid | give):
            # the output register is free after this cycle: the spare's beat first, else the new one
            with m.If(spare_valid):
                # (no beat is taken meanwhile: ready is low while the spare is full)
                m.d.sync += [self.o.payload.eq(spare), spare_valid.eq(0)]
            with m.Else():
                m.d.sync += [self.o.payload.eq(self.i.payload), self.o.valid.eq(take)]
        with m.Elif(take):
            m.d.sync += [spare.eq(self.i.payload), spare_valid.eq(1)]
        return m
