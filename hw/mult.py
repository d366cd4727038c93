"""Signed multipliers with the ECP5 DSP's register stages.

Two components, both with a fixed latency and no hand-shake (the blocks that use
them carry a valid bit alongside, see ``hw.systolic`` and ``hw.output_stage``):

* :class:`Multiplier` -- one signed ``a * b`` of at most 18 x 18 bits. On a
  Lattice ECP5 platform it is one ``MULT18X18D`` primitive with its input (A, B)
  and output (P) registers enabled, which is what lets a multiplier close timing
  at 145-184 MHz on a speed-grade 6 part (a multiplier that yosys infers from a
  bare ``*`` has no registers in the DSP and reaches about 100 MHz). Anywhere
  else (simulation, Verilog for cocotb, other FPGAs) it is the behavioural model
  of the same two register stages.
* :class:`WideMultiplier` -- a signed ``a * b`` where ``a`` is wider than 18 bits
  (the 33-bit ``accumulator + bias`` of the requantiser): ``a`` is cut into 17-bit
  limbs, each limb goes through a :class:`Multiplier`, and one more register
  stage sums the shifted partial products.

Latency, in both forms: operands presented in cycle ``t`` (and ``en`` high in
cycles ``t`` and ``t + 1``) give the product in cycle ``t + 2`` for
:class:`Multiplier` (``LATENCY = 2``) and ``t + 3`` for :class:`WideMultiplier`
(``LATENCY = 3``).

The ``MULT18X18D`` port and parameter names are those of the cell library that
yosys ships for ECP5 (``techlibs/ecp5/cells_bb.v``, also what nextpnr-ecp5
packs): ports ``A0..A17``, ``B0..B17``, ``C0..C17``, ``SIGNEDA``, ``SIGNEDB``,
``SOURCEA``, ``SOURCEB``, ``CLK0..3``, ``CE0..3``, ``RST0..3``, ``SRIA*``,
``SRIB*``, outputs ``P0..P35``; parameters ``REG_INPUTA_CLK``,
``REG_INPUTB_CLK``, ``REG_OUTPUT_CLK`` (``"NONE"`` or ``"CLK0".."CLK3"``), the
matching ``*_CE`` / ``*_RST`` selectors, ``RESETMODE``, ``GSR``...
"""

from amaranth.hdl import Cat, ClockSignal, Const, Instance, Module, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["Multiplier", "WideMultiplier", "DSP_WIDTH"]

#: Operand width of one ECP5 ``MULT18X18D`` (signed).
DSP_WIDTH = 18


def _is_ecp5(platform) -> bool:
    if platform is None:
        return False
    try:
        from amaranth.vendor import LatticeECP5Platform
    except ImportError:  # pragma: no cover - amaranth without vendor support
        return False
    return isinstance(platform, LatticeECP5Platform)


class Multiplier(wiring.Component):
    """Registered signed multiplier ``p = a * b`` (one ECP5 ``MULT18X18D``).

    Parameters
    ----------
    a_width : int
        Width of the signed operand ``a``, 2..18.
    b_width : int
        Width of the signed operand ``b``, 2..18.
    domain : str
        Clock domain of the register stages (default ``"sync"``).

    Members
    -------
    a : In(signed(a_width))
    b : In(signed(b_width))
    en : In(1), init 1
        Clock enable of both register stages (the DSP's ``CE0``). Leave it
        unconnected for a multiplier that never stalls.
    p : Out(signed(a_width + b_width))
        ``a * b`` of two enabled cycles ago.

    Raises
    ------
    ValueError
        If an operand width is outside 2..18.
    """

    LATENCY = 2

    def __init__(self, a_width: int, b_width: int, *, domain: str = "sync"):
        for name, w in (("a_width", a_width), ("b_width", b_width)):
            if not isinstance(w, int) or not 2 <= w <= DSP_WIDTH:
                raise ValueError(f"{name} must be an integer in 2..{DSP_WIDTH}, not {w!r}")
        self._a_width = a_width
        self._b_width = b_width
        self._domain = domain
        super().__init__({
            "a": In(signed(a_width)),
            "b": In(signed(b_width)),
            "en": In(1, init=1),
            "p": Out(signed(a_width + b_width)),
        })

    @property
    def a_width(self) -> int:
        return self._a_width

    @property
    def b_width(self) -> int:
        return self._b_width

    def elaborate(self, platform):
        m = Module()
        if _is_ecp5(platform):
            self._elaborate_ecp5(m)
        else:
            a_r = Signal.like(self.a)
            b_r = Signal.like(self.b)
            p_r = Signal.like(self.p)
            with m.If(self.en):
                m.d[self._domain] += [a_r.eq(self.a), b_r.eq(self.b), p_r.eq(a_r * b_r)]
            m.d.comb += self.p.eq(p_r)
        return m

    def _elaborate_ecp5(self, m):
        a18 = Signal(signed(DSP_WIDTH))
        b18 = Signal(signed(DSP_WIDTH))
        p36 = Signal(signed(2 * DSP_WIDTH))
        m.d.comb += [a18.eq(self.a), b18.eq(self.b)]  # sign-extended to 18 bits
        # Only A, B, P, the signedness pins and the CLK0/CE0/RST0 set are connected.
        # C, the cascade inputs SRIA/SRIB and the unused CLK1-3/CE1-3/RST1-3 stay
        # unconnected: SRIA/SRIB have no route from the fabric, so tying them to 0
        # makes nextpnr fail to route its GND net (YosysHQ/nextpnr#208).
        ports = {}
        for i in range(DSP_WIDTH):
            ports[f"i_A{i}"] = a18[i]
            ports[f"i_B{i}"] = b18[i]
        for i in range(2 * DSP_WIDTH):
            ports[f"o_P{i}"] = p36[i]
        ports["i_CLK0"] = ClockSignal(self._domain)
        ports["i_CE0"] = self.en
        ports["i_RST0"] = Const(0, 1)
        m.submodules.dsp = Instance(
            "MULT18X18D",
            p_REG_INPUTA_CLK="CLK0",
            p_REG_INPUTA_CE="CE0",
            p_REG_INPUTA_RST="RST0",
            p_REG_INPUTB_CLK="CLK0",
            p_REG_INPUTB_CE="CE0",
            p_REG_INPUTB_RST="RST0",
            p_REG_INPUTC_CLK="NONE",
            p_REG_PIPELINE_CLK="NONE",
            p_REG_OUTPUT_CLK="CLK0",
            p_REG_OUTPUT_CE="CE0",
            p_REG_OUTPUT_RST="RST0",
            p_CLK0_DIV="ENABLED",
            p_CLK1_DIV="ENABLED",
            p_CLK2_DIV="ENABLED",
            p_CLK3_DIV="ENABLED",
            p_HIGHSPEED_CLK="NONE",
            p_GSR="DISABLED",
            p_CAS_MATCH_REG="FALSE",
            p_SOURCEB_MODE="B_SHIFT",
            p_MULT_BYPASS="DISABLED",
            p_RESETMODE="SYNC",
            i_SIGNEDA=Const(1, 1),
            i_SIGNEDB=Const(1, 1),
            i_SOURCEA=Const(0, 1),
            i_SOURCEB=Const(0, 1),
            **ports,
        )
        m.d.comb += self.p.eq(p36)


class WideMultiplier(wiring.Component):
    """Registered signed multiplier for a wide ``a``: ``p = a * b``, ``a`` cut into 17-bit limbs.

    ``a = sum_i limb_i * 2**(17 i)``; the low limbs are unsigned 17-bit values
    (zero-extended to the DSP's 18 signed bits), the top limb is signed. Each
    limb is multiplied by ``b`` in its own :class:`Multiplier`; a fabric register
    stage adds the shifted partial products.

    Parameters
    ----------
    a_width : int
        Width of the signed operand ``a``, 2..72.
    b_width : int
        Width of the signed operand ``b``, 2..18.
    domain : str
        Clock domain (default ``"sync"``).

    Members
    -------
    a : In(signed(a_width))
    b : In(signed(b_width))
    en : In(1), init 1
        Clock enable of all three register stages.
    p : Out(signed(a_width + b_width))
        ``a * b`` of three enabled cycles ago.

    Raises
    ------
    ValueError
        If an operand width is out of range.
    """

    LATENCY = 3
    LIMB = DSP_WIDTH - 1

    def __init__(self, a_width: int, b_width: int, *, domain: str = "sync"):
        if not isinstance(a_width, int) or not 2 <= a_width <= 4 * self.LIMB + 4:
            raise ValueError(f"a_width must be an integer in 2..{4 * self.LIMB + 4}, not {a_width!r}")
        if not isinstance(b_width, int) or not 2 <= b_width <= DSP_WIDTH:
            raise ValueError(f"b_width must be an integer in 2..{DSP_WIDTH}, not {b_width!r}")
        self._a_width = a_width
        self._b_width = b_width
        self._domain = domain
        super().__init__({
            "a": In(signed(a_width)),
            "b": In(signed(b_width)),
            "en": In(1, init=1),
            "p": Out(signed(a_width + b_width)),
        })

    @property
    def n_limbs(self) -> int:
        """Number of ``MULT18X18D`` this multiplier uses."""
        if self._a_width <= DSP_WIDTH:
            return 1
        return -(-(self._a_width - 1) // self.LIMB)

    def elaborate(self, platform):
        m = Module()
        n = self.n_limbs
        partial = []
        for i in range(n):
            lo = i * self.LIMB
            if i == n - 1:
                width = self._a_width - lo  # top limb keeps the sign
                limb = self.a[lo:].as_signed()
            else:
                width = self.LIMB + 1
                limb = Cat(self.a[lo:lo + self.LIMB], Const(0, 1)).as_signed()
            mul = Multiplier(max(width, 2), self._b_width, domain=self._domain)
            m.submodules[f"limb{i}"] = mul
            m.d.comb += [mul.a.eq(limb), mul.b.eq(self.b), mul.en.eq(self.en)]
            partial.append(mul.p << lo if lo else mul.p)
        total = Signal.like(self.p)
        with m.If(self.en):
            acc = partial[0]
            for p in partial[1:]:
                acc = acc + p
            m.d[self._domain] += total.eq(acc)
        m.d.comb += self.p.eq(total)
        return m
