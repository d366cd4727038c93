"""Register copies that synthesis keeps apart: fan-out trees for wide broadcasts.

A value that drives many far-apart loads (an activation broadcast along a row
of DSPs) is limited by the route from one flip-flop to all of them. Several
registered copies, each near its share of the loads, cut that route; but
yosys merges flip-flops with the same input (``opt_merge``) whatever the
attributes of their output wires. On ECP5 the copies are therefore
``TRELLIS_FF`` primitives, which yosys passes through untouched; anywhere else
(simulation, other FPGAs) they are ordinary registers, with the same one cycle
of latency.
"""

from __future__ import annotations

from amaranth import ClockSignal, Const, Instance, Module, Signal, Value

from .mult import _is_ecp5

__all__ = ["register_copies"]


def register_copies(m: Module, platform, value: Value, n: int, name: str, domain: str = "sync") -> list[Signal]:
    """``n`` registers of ``value`` (one cycle later), kept as separate flip-flops on ECP5."""
    copies = []
    for k in range(n):
        copy = Signal.like(value, name=f"{name}_copy{k}")
        if _is_ecp5(platform):
            bits = Value.cast(value)
            for b in range(len(bits)):
                m.submodules[f"{name}_copy{k}_ff{b}"] = Instance(
                    "TRELLIS_FF",
                    p_GSR="DISABLED", p_CEMUX="1", p_CLKMUX="CLK", p_LSRMUX="LSR",
                    p_REGSET="RESET", p_SRMODE="LSR_OVER_CE",
                    i_CLK=ClockSignal(domain), i_CE=Const(1, 1), i_LSR=Const(0, 1),
                    i_DI=bits[b], o_Q=copy[b],
                )
        else:
            m.d[domain] += copy.eq(value)
        copies.append(copy)
    return copies
