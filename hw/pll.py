"""ECP5 ``EHXPLLL`` wrapper: one output clock from a board oscillator.

Parameter calculation
---------------------
The ECP5 PLL has a reference divider ``CLKI_DIV``, a feedback divider
``CLKFB_DIV`` and an output divider ``CLKOP_DIV``. With the feedback taken from
the primary output (``FEEDBK_PATH = "CLKOP"``, the usual open-toolchain setup)::

    f_pfd = f_in / CLKI_DIV                  3.125 .. 400 MHz
    f_out = f_pfd * CLKFB_DIV                 10   .. 400 MHz   (CLKOP)
    f_vco = f_out * CLKOP_DIV                 400  .. 800 MHz

These relations and limits are those of Project Trellis' ``ecppll`` tool
(``libtrellis/tools/ecppll.cpp``: ``INPUT_MIN/MAX`` 8/400 MHz, ``PFD_MIN/MAX``
3.125/400 MHz, ``VCO_MIN/MAX`` 400/800 MHz, ``OUTPUT_MIN/MAX`` 10/400 MHz), which
derived them from Lattice's Clarity Designer; divider ranges are ``CLKI_DIV``
1..128, ``CLKFB_DIV`` 1..80, ``CLKOP_DIV`` 1..128. :func:`pll_params` searches
the same space as ``ecppll`` (exact rational arithmetic instead of floats):
smallest ``|f_out - target|`` first, then the VCO closest to 600 MHz. Like
``ecppll`` it sets ``CLKOP_CPHASE = CLKOP_DIV // 2`` (Lattice's tools put the
primary output 180 degrees from the VCO phase reference; with CLKOP feedback the
phase has no effect on the output frequency) and the loop-filter attributes
``ICP_CURRENT = 12``, ``LPF_RESISTOR = 8``, ``MFG_ENABLE_FILTEROPAMP = 1``,
``MFG_GMCREF_SEL = 2``.

nextpnr derives the frequency constraint of ``CLKOP`` from the constraint on
the oscillator input and these dividers, so the timing report checks the engine
clock against the frequency the PLL really makes.
"""

from dataclasses import dataclass
from fractions import Fraction

from amaranth.hdl import Const, Instance, Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["PLLParams", "pll_params", "PLL", "PLLError"]

INPUT_MHZ = (Fraction(8), Fraction(400))
PFD_MHZ = (Fraction(25, 8), Fraction(400))
VCO_MHZ = (Fraction(400), Fraction(800))
OUTPUT_MHZ = (Fraction(10), Fraction(400))
CLKI_DIV_MAX = 128
CLKFB_DIV_MAX = 80
CLKOP_DIV_MAX = 128


class PLLError(ValueError):
    """No EHXPLLL setting makes the requested frequency (out of range)."""


@dataclass(frozen=True)
class PLLParams:
    """One ``EHXPLLL`` setting (frequencies in MHz, exact fractions)."""

    f_in: Fraction
    clki_div: int
    clkfb_div: int
    clkop_div: int

    @property
    def f_pfd(self) -> Fraction:
        return self.f_in / self.clki_div

    @property
    def f_out(self) -> Fraction:
        return self.f_pfd * self.clkfb_div

    @property
    def f_vco(self) -> Fraction:
        return self.f_out * self.clkop_div

    @property
    def clkop_cphase(self) -> int:
        return self.clkop_div // 2

    def as_dict(self) -> dict:
        return {
            "f_in_mhz": float(self.f_in), "f_pfd_mhz": float(self.f_pfd),
            "f_vco_mhz": float(self.f_vco), "f_out_mhz": float(self.f_out),
            "CLKI_DIV": self.clki_div, "CLKFB_DIV": self.clkfb_div,
            "CLKOP_DIV": self.clkop_div, "CLKOP_CPHASE": self.clkop_cphase,
        }


def _in_range(x, rng):
    return rng[0] <= x <= rng[1]


def pll_params(f_in_mhz, f_out_mhz) -> PLLParams:
    """Best ``EHXPLLL`` dividers for ``f_out_mhz`` from ``f_in_mhz`` (see module docstring).

    Raises
    ------
    PLLError
        If the input or output frequency is outside the PLL's range.
    """
    f_in = Fraction(f_in_mhz).limit_denominator(10**6)
    target = Fraction(f_out_mhz).limit_denominator(10**6)
    if not _in_range(f_in, INPUT_MHZ):
        raise PLLError(f"PLL input {float(f_in):g} MHz is outside "
                       f"{float(INPUT_MHZ[0]):g}..{float(INPUT_MHZ[1]):g} MHz")
    if not _in_range(target, OUTPUT_MHZ):
        raise PLLError(f"PLL output {float(target):g} MHz is outside "
                       f"{float(OUTPUT_MHZ[0]):g}..{float(OUTPUT_MHZ[1]):g} MHz")
    best, best_key = None, None
    for clki in range(1, CLKI_DIV_MAX + 1):
        pfd = f_in / clki
        if not _in_range(pfd, PFD_MHZ):
            continue
        for clkfb in range(1, CLKFB_DIV_MAX + 1):
            out = pfd * clkfb
            if not _in_range(out, OUTPUT_MHZ):
                continue
            # CLKOP_DIV values that put the VCO in range; pick the one nearest 600 MHz
            lo = max(1, -(-VCO_MHZ[0] // out))
            hi = min(CLKOP_DIV_MAX, VCO_MHZ[1] // out)
            if lo > hi:
                continue
            op = min(range(int(lo), int(hi) + 1), key=lambda d: abs(out * d - 600))
            key = (abs(out - target), abs(out * op - 600), clki)
            if best_key is None or key < best_key:
                best, best_key = PLLParams(f_in, clki, clkfb, op), key
    if best is None:  # pragma: no cover - every in-range output has a setting
        raise PLLError(f"no EHXPLLL setting makes {float(target):g} MHz from {float(f_in):g} MHz")
    return best


class PLL(wiring.Component):
    """One ``EHXPLLL`` with CLKOP feedback.

    Parameters
    ----------
    params : PLLParams
        The dividers, from :func:`pll_params`.

    Members
    -------
    clk_in : In(1)
        Reference clock (the board oscillator, from its input buffer).
    clk_out : Out(1)
        ``CLKOP``, ``params.f_out`` MHz.
    locked : Out(1)
        The PLL's ``LOCK`` output (asynchronous to both clocks).
    """

    clk_in: In(1)
    clk_out: Out(1)
    locked: Out(1)

    def __init__(self, params: PLLParams):
        if not isinstance(params, PLLParams):
            raise TypeError(f"params must be a PLLParams, not {params!r}")
        self._params = params
        super().__init__()

    params = property(lambda self: self._params)

    def elaborate(self, platform):
        m = Module()
        p = self._params
        m.submodules.pll = Instance(
            "EHXPLLL",
            a_ICP_CURRENT="12",
            a_LPF_RESISTOR="8",
            a_MFG_ENABLE_FILTEROPAMP="1",
            a_MFG_GMCREF_SEL="2",
            a_FREQUENCY_PIN_CLKI=f"{float(p.f_in):g}",
            a_FREQUENCY_PIN_CLKOP=f"{float(p.f_out):g}",
            p_PLLRST_ENA="DISABLED",
            p_INTFB_WAKE="DISABLED",
            p_STDBY_ENABLE="DISABLED",
            p_DPHASE_SOURCE="DISABLED",
            p_OUTDIVIDER_MUXA="DIVA",
            p_OUTDIVIDER_MUXB="DIVB",
            p_OUTDIVIDER_MUXC="DIVC",
            p_OUTDIVIDER_MUXD="DIVD",
            p_CLKI_DIV=p.clki_div,
            p_CLKFB_DIV=p.clkfb_div,
            p_CLKOP_ENABLE="ENABLED",
            p_CLKOP_DIV=p.clkop_div,
            p_CLKOP_CPHASE=p.clkop_cphase,
            p_CLKOP_FPHASE=0,
            p_FEEDBK_PATH="CLKOP",
            i_CLKI=self.clk_in,
            i_CLKFB=self.clk_out,
            i_RST=Const(0, 1),
            i_STDBY=Const(0, 1),
            i_PHASESEL0=Const(0, 1),
            i_PHASESEL1=Const(0, 1),
            i_PHASEDIR=Const(1, 1),
            i_PHASESTEP=Const(1, 1),
            i_PHASELOADREG=Const(1, 1),
            i_PLLWAKESYNC=Const(0, 1),
            i_ENCLKOP=Const(0, 1),
            o_CLKOP=self.clk_out,
            o_LOCK=self.locked,
        )
        return m
