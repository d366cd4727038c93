"""Output-stationary multiplier array for 1x1 convolutions.

The array holds one *tile*: ``P`` output pixels x ``Q`` output channels, one
accumulator per (pixel, channel). Input channels stream through serially: each
input beat is one input channel ``ci`` and carries the ``P`` activations
``x[p, ci]`` of the tile's pixels and the ``Q`` weights ``w[q, ci]`` of its
output channels; every multiplier ``(p, q)`` adds ``x[p, ci] * w[q, ci]`` to its
accumulator. The beat flagged ``last`` closes the tile: the ``P*Q`` sums are
copied into a shadow bank, which the output stream drains while the next tile
already accumulates, so back-to-back tiles keep every multiplier busy.

Data flow and latency
---------------------
::

    cycle t     beat accepted on ``i``; activation sign-extended to 9 bits
    cycle t     row/column registers capture a, w
    cycle t+1   fan-out copies capture a, w (one copy per FANOUT = 4 multipliers)
    cycle t+2   DSP input registers capture a, w           (MULT18X18D A/B regs)
    cycle t+3   DSP output registers capture a*w           (MULT18X18D P regs)
    cycle t+4   fabric product register (next to the accumulator)
    cycle t+5   accumulator update (fabric add, acc_bits wide); on ``last`` the sum
                goes straight into the shadow bank and the accumulator
                restarts from 0
    cycle t+6   first output beat of the tile valid on ``o``

Activations are broadcast along a row of ``Q`` multipliers and weights along a
column of ``P`` through a two-level register tree: one register per row
(column), then ``ceil(Q / 4)`` (``ceil(P / 4)``) copies of it, each feeding four
DSP input registers (:func:`hw.fanout.register_copies`, kept apart from
synthesis' register merging). On the 85F a single register driving a row of 16
DSPs spread over the die cost a 10 ns route. There are no forwarding registers
between neighbours; a skewed (truly systolic) feed remains the upgrade path
for larger arrays, with the same interface.

The shadow bank is a shift register of pixel rows: row 0 drives the output
(a ``Q / out_lanes``-way lane-group multiplexer, none when ``out_lanes = Q``) and
the bank shifts up one row per drained pixel, so no ``P``-way multiplexer spans
the array. The shift is enabled a cycle after the drain decides it, by registered
copies of the decision (one per row and ``FANOUT`` columns); in that cycle the
output reads row 1. Drain rate: ``out_lanes`` accumulators per cycle; the output side
must read at least ``P * Q / C_in`` of them per cycle to keep the multipliers
busy (``bench/engine_cycles.py --out-lanes N`` shows the cost of less).

The multipliers never stall (no clock enable): the pipeline is a shift of
valid-tagged beats, and back-pressure is handled by admission: a ``last`` beat
is accepted only when the shadow bank is empty and no other ``last`` is still in
the pipeline (one ``blocked`` flag), so the bank is always free when a tile's
sums arrive. The tile
period is therefore ``max(C_in, D + LATENCY)`` cycles (``LATENCY = 6``) with
``D`` the number of output beats of the previous tile
(``n_pix * ceil(n_chan / out_lanes)``, at most ``P * Q / out_lanes``); with
``out_lanes = Q`` any ``C_in >= P + 6`` runs at one beat per cycle.

Numerics
--------
Activations are 8-bit, signed (int8) or unsigned (uint8) per beat
(``act_signed``), zero-point 0, and become 9-bit signed inside. Weights are
symmetric ``weight_bits``-bit integers (int8: -127..127; int4: -7..7, see
``quant.numerics.weight_range``). The accumulators are two's complement and compute
exactly ``quant.numerics.conv1x1_acc`` without the bias (the bias is added by
``hw.output_stage``); the output carries them as ``ACC_BITS = 32``-bit values.
Inside, an accumulator is only as wide as ``max_cin`` products can make it
(``acc_bits``: 25 bits for ``max_cin = 384``; 32 for the default).

*Why 32 bits cannot overflow.* One product is bounded by
``|a * w| <= 255 * 127 = 32385`` (``|a| <= 255`` covers both uint8 and int8, whose
worst case is ``|-128| * 127 = 16256``). After ``C_in`` products
``|acc| <= C_in * 32385``, and ``C_in * 32385 <= 2**31 - 1`` for every
``C_in <= 66311``. The array therefore accepts ``max_cin`` up to 65536 (the
default; a tile longer than ``max_cin`` beats is a programming error the array
does not check). Int4 weights tighten the bound to ``C_in * 1785``.

Tiling
------
Tiling is the feeder's job: it sends the pixels ``P`` at a time (for a strided
layer only the strided pixels), output channels ``Q`` at a time, and for every
tile all ``C_in`` channels. The last tile of a layer may be partial: the
``last`` beat carries ``n_pix`` (1..P) and ``n_chan`` (1..Q), and the output
stream only emits the valid pixels and lane groups (``mask`` marks the valid
lanes within a group). Activations of invalid pixels and weights of invalid
channels are don't-care.

Int4 weights
------------
``weight_bits=4`` is a build option that narrows the weight lanes of the input
payload to 4 bits (one 4-bit lane per column, range -7..7); each product still
occupies one ``MULT18X18D``. Packing two int4 products into one DSP (a single
``a * (w0 + w1 * 2**12)``) would double the array for int4 networks and is not
done yet.
"""

from amaranth.hdl import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import bits_for, ceil_log2

from quant.numerics import ACC_BITS

from .fanout import register_copies
from .mult import DSP_WIDTH, Multiplier

__all__ = ["SystolicArray", "MAX_CIN_LIMIT", "ACT_BITS"]

#: Largest ``max_cin`` for which the 32-bit accumulator provably cannot overflow
#: (``66311 * 255 * 127 < 2**31``); the parameter is capped at 65536.
MAX_CIN_LIMIT = 65536

#: Width of one activation on the input stream (int8 or uint8).
ACT_BITS = 8


class SystolicArray(wiring.Component):
    """P x Q output-stationary array of signed multipliers and accumulators (32-bit results).

    Parameters
    ----------
    rows : int
        ``P``, pixels per tile (1..64).
    cols : int
        ``Q``, output channels per tile (1..64).
    weight_bits : int
        8 (int8 weights) or 4 (int4 weights, narrower input lanes).
    out_lanes : int or None
        Accumulators per output beat; must divide ``cols``. Default ``cols``
        (one pixel per beat).
    tag_width : int
        Width of an opaque ``tag`` that the ``last`` beat of a tile carries to
        every output beat of that tile (the feeder puts e.g. the tile's output
        channel base and pixel index there). 0..64, default 16.
    max_cin : int
        Longest tile (input channels) the accumulator width must cover,
        1..65536. Documents and checks the overflow bound (see the module
        docstring); it has no other hardware cost.

    Members
    -------
    i : In(stream.Signature(input_layout))
        One input channel of a tile. Payload fields:

        * ``act``: ``ArrayLayout(unsigned(8), P)``, the raw activation bytes;
        * ``act_signed``: 1 when the bytes are int8, 0 for uint8;
        * ``weight``: ``ArrayLayout(signed(weight_bits), Q)``;
        * ``last``: last input channel of the tile;
        * ``n_pix``, ``n_chan``: valid pixels / output channels of the tile
          (read on the ``last`` beat only);
        * ``tag``: copied to the tile's output beats (read on ``last`` only).
    o : Out(stream.Signature(output_layout))
        The tile's sums, pixel-major: for each valid pixel, the lane groups
        ``[g*out_lanes, (g+1)*out_lanes)`` that hold at least one valid channel.
        Payload fields: ``acc`` (``ArrayLayout(signed(32), out_lanes)``),
        ``pixel`` (0..P-1), ``chan`` (first lane's column, ``g * out_lanes``),
        ``mask`` (valid lanes), ``last`` (last beat of the tile), ``tag``.
    busy : Out(1)
        A tile is in the pipeline or the shadow bank (for the sequencer).

    Raises
    ------
    ValueError
        On an out-of-range parameter.
    """

    #: Cycles from an accepted ``last`` beat to the tile's first output beat.
    #: register stages between the input port and the DSP input registers (a row/column
    #: register, then its fan-out copies)
    IN_STAGES = 2
    #: multipliers fed by one copy of an activation or weight register
    FANOUT = 4
    LATENCY = IN_STAGES + Multiplier.LATENCY + 2

    def __init__(self, rows: int, cols: int, *, weight_bits: int = 8, out_lanes: int | None = None,
                 tag_width: int = 16, max_cin: int = MAX_CIN_LIMIT):
        if not isinstance(rows, int) or not 1 <= rows <= 64:
            raise ValueError(f"rows (P) must be an integer in 1..64, not {rows!r}")
        if not isinstance(cols, int) or not 1 <= cols <= 64:
            raise ValueError(f"cols (Q) must be an integer in 1..64, not {cols!r}")
        if weight_bits not in (4, 8):
            raise ValueError(f"weight_bits must be 8 or 4, not {weight_bits!r}")
        if out_lanes is None:
            out_lanes = cols
        if not isinstance(out_lanes, int) or out_lanes < 1 or cols % out_lanes:
            raise ValueError(f"out_lanes must be a positive divisor of cols={cols}, not {out_lanes!r}")
        if not isinstance(tag_width, int) or not 0 <= tag_width <= 64:
            raise ValueError(f"tag_width must be an integer in 0..64, not {tag_width!r}")
        if not isinstance(max_cin, int) or not 1 <= max_cin <= MAX_CIN_LIMIT:
            raise ValueError(
                f"max_cin must be an integer in 1..{MAX_CIN_LIMIT} (the 32-bit accumulator bound), not {max_cin!r}"
            )
        w_max = (1 << (weight_bits - 1)) - 1
        assert max_cin * 255 * w_max < 2 ** (ACC_BITS - 1), "accumulator bound"
        assert ACT_BITS + 1 <= DSP_WIDTH and weight_bits <= DSP_WIDTH
        self._rows, self._cols = rows, cols
        self._weight_bits = weight_bits
        self._out_lanes = out_lanes
        self._tag_width = tag_width
        self._max_cin = max_cin
        # the accumulators are only as wide as max_cin products can make them (25 bits for the
        # SoC's 384 channels instead of 32): the output carries them sign-extended to ACC_BITS,
        # so nothing downstream changes, and the array saves flip-flops, carry chains and routes
        self._acc_bits = min(ACC_BITS, (max_cin * 255 * w_max).bit_length() + 1)

        self._input_layout = data.StructLayout({
            "act": data.ArrayLayout(unsigned(ACT_BITS), rows),
            "act_signed": 1,
            "weight": data.ArrayLayout(signed(weight_bits), cols),
            "last": 1,
            "n_pix": unsigned(bits_for(rows)),
            "n_chan": unsigned(bits_for(cols)),
            "tag": unsigned(tag_width),
        })
        self._output_layout = data.StructLayout({
            "acc": data.ArrayLayout(signed(ACC_BITS), out_lanes),
            "pixel": unsigned(max(1, ceil_log2(rows))),
            "chan": unsigned(max(1, ceil_log2(cols))),
            "mask": unsigned(out_lanes),
            "last": 1,
            "tag": unsigned(tag_width),
        })
        super().__init__({
            "i": In(stream.Signature(self._input_layout)),
            "o": Out(stream.Signature(self._output_layout)),
            "busy": Out(1),
        })

    rows = property(lambda self: self._rows, doc="P, pixels per tile.")
    cols = property(lambda self: self._cols, doc="Q, output channels per tile.")
    weight_bits = property(lambda self: self._weight_bits)
    out_lanes = property(lambda self: self._out_lanes)
    tag_width = property(lambda self: self._tag_width)
    max_cin = property(lambda self: self._max_cin)
    acc_bits = property(lambda self: self._acc_bits)
    input_layout = property(lambda self: self._input_layout)
    output_layout = property(lambda self: self._output_layout)

    def elaborate(self, platform):
        m = Module()
        P, Q, L = self._rows, self._cols, self._out_lanes
        G = Q // L  # lane groups per pixel
        ip = self.i.payload

        # ---- admission ------------------------------------------------------
        shadow_full = Signal()
        first = Signal(init=1)  # the next accepted beat opens a tile (for `busy` only)
        # control pipeline, aligned with the multiplier stages
        n_ctl = self.IN_STAGES + 3
        c_valid = [Signal(name=f"c{k}_valid") for k in range(1, n_ctl + 1)]
        c_last = [Signal(name=f"c{k}_last") for k in range(1, n_ctl + 1)]
        # `blocked`: a `last` beat is in the pipeline or the shadow bank is not yet
        # drained. A register (set when a `last` is accepted, cleared with the bank's
        # final output beat), so `ready` is one LUT of registers and the input-side
        # clock enables do not depend on the pipeline.
        blocked = Signal()
        drained = Signal()
        m.d.comb += self.i.ready.eq(~ip.last | ~blocked)
        accept = Signal()
        m.d.comb += accept.eq(self.i.valid & self.i.ready)
        with m.If(accept):
            m.d.sync += first.eq(ip.last)

        m.d.sync += [c_valid[0].eq(accept), c_last[0].eq(ip.last)]
        for k in range(1, n_ctl):
            m.d.sync += [c_valid[k].eq(c_valid[k - 1]), c_last[k].eq(c_last[k - 1])]
        # tile descriptor, captured from the last beat (stable until the shadow load)
        t_npix = Signal.like(ip.n_pix)
        t_nchan = Signal.like(ip.n_chan)
        t_tag = Signal.like(ip.tag)
        # Sampled every cycle until a `last` is accepted, then frozen by `blocked`.
        with m.If(~blocked):
            m.d.sync += [t_npix.eq(ip.n_pix), t_nchan.eq(ip.n_chan), t_tag.eq(ip.tag)]
        with m.If(accept & ip.last):
            m.d.sync += blocked.eq(1)
        with m.Elif(drained):
            m.d.sync += blocked.eq(0)

        # ---- multipliers and accumulators ----------------------------------
        acts = []
        for p in range(P):
            a9 = Signal(signed(ACT_BITS + 1), name=f"act{p}")
            byte = ip.act[p]
            m.d.comb += a9.eq(byte.as_unsigned() | ((ip.act_signed & byte[ACT_BITS - 1]) << ACT_BITS))
            acts.append(a9)
        # Input pipeline (IN_STAGES = 2): one register per row (activation) and per column
        # (weight), then copies of it, each feeding FANOUT multipliers, so that no flip-flop
        # drives a whole row or column of DSPs spread over the die.
        a_row = [Signal.like(a, name=f"act{p}_r") for p, a in enumerate(acts)]
        w_col = [Signal.like(ip.weight[q], name=f"weight{q}_r") for q in range(Q)]
        m.d.sync += [r.eq(a) for r, a in zip(a_row, acts)]
        m.d.sync += [w_col[q].eq(ip.weight[q]) for q in range(Q)]
        fan = self.FANOUT
        a_copy = [register_copies(m, platform, a_row[p], -(-Q // fan), f"act{p}") for p in range(P)]
        w_copy = [register_copies(m, platform, w_col[q], -(-P // fan), f"weight{q}") for q in range(Q)]
        load = Signal()
        m.d.comb += load.eq(c_valid[-1] & c_last[-1])
        next_row = Signal()  # the drain moves on to the next pixel: the bank shifts by a row
        # The shift itself happens a cycle later, enabled by registered copies of next_row (one
        # per row and FANOUT columns): one combinational enable into every shadow flip-flop of
        # the array was the 85F's critical path (t41). Until the shift is done (`shift_due`),
        # the output reads row 1, which then holds the pixel being drained.
        shift_due = Signal()
        m.d.sync += shift_due.eq(next_row)
        n_groups = -(-Q // fan)
        shift_copies = register_copies(m, platform, next_row, P * n_groups, "shift")
        A = self._acc_bits
        shadow = [[Signal(signed(A), name=f"shadow_{p}_{q}") for q in range(Q)] for p in range(P)]
        for p in range(P):
            for q in range(Q):
                mul = Multiplier(ACT_BITS + 1, self._weight_bits)
                m.submodules[f"mul_{p}_{q}"] = mul
                m.d.comb += [mul.a.eq(a_copy[p][q // fan]), mul.b.eq(w_copy[q][p // fan])]
                # a fabric register between the DSP and the adder: the DSP column may sit
                # far from the accumulator's slices, and the route plus a 25-32-bit carry
                # chain in one cycle limits the clock to ~150 MHz
                prod = Signal.like(mul.p, name=f"prod_{p}_{q}")
                m.d.sync += prod.eq(mul.p)
                acc = Signal(signed(A), name=f"acc_{p}_{q}")
                nxt = Signal(signed(A), name=f"sum_{p}_{q}")
                m.d.comb += nxt.eq((acc + prod)[:A])
                # The tile's last product goes straight to the shadow bank and the
                # accumulator restarts from 0 (a synchronous reset of its flip-flops, off
                # the adder's path), so a tile's first beat needs no "first" mux.
                with m.If(c_valid[-1]):
                    with m.If(c_last[-1]):
                        m.d.sync += acc.eq(0)
                    with m.Else():
                        m.d.sync += acc.eq(nxt)
                # The shadow bank is a shift register of pixel rows: row 0 is on the
                # output, so the output payload needs no P-way multiplexer across the
                # array. (A load never meets a shift: the bank is empty when it loads.)
                with m.If(load):
                    m.d.sync += shadow[p][q].eq(nxt)
                with m.Elif(shift_copies[p * n_groups + q // fan]):
                    if p + 1 < P:
                        m.d.sync += shadow[p][q].eq(shadow[p + 1][q])

        # ---- drain ----------------------------------------------------------
        s_npix = Signal.like(ip.n_pix)
        s_nchan = Signal.like(ip.n_chan)
        s_tag = Signal.like(ip.tag)
        pix = Signal(range(max(P, 2)))
        grp = Signal(range(max(G, 2)))
        o = self.o.payload
        # the output payload: lane group `grp` of the bank's row 0 (row 1 while a shift is due)
        head = [Signal(signed(A), name=f"head_{q}") for q in range(Q)]
        for q in range(Q):
            m.d.comb += head[q].eq(Mux(shift_due, shadow[1][q], shadow[0][q]) if P > 1 else shadow[0][q])
        with m.Switch(grp):
            for g in range(G):
                with m.Case(g):
                    m.d.comb += [o.acc[k].eq(head[g * L + k]) for k in range(L)]
        chan = Signal(range(Q + 1))
        m.d.comb += chan.eq(grp * L)
        lane_ok = [Signal(name=f"lane_ok{k}") for k in range(L)]
        m.d.comb += [lane_ok[k].eq(chan + k < s_nchan) for k in range(L)]
        # last pixel / last lane group of the tile, as registers kept beside pix and grp (the
        # compares on the next values run beside the handshake, not behind it)
        last_pix = Signal()
        last_grp = Signal()
        one_grp = Signal()                  # the tile's pixels have a single lane group
        m.d.comb += [
            o.pixel.eq(pix),
            o.chan.eq(chan),
            o.mask.eq(Cat(*lane_ok)),
            o.last.eq(last_pix & last_grp),
            o.tag.eq(s_tag),
            self.o.valid.eq(shadow_full),
        ]
        with m.If(load):
            m.d.sync += [
                shadow_full.eq(1), pix.eq(0), grp.eq(0),
                s_npix.eq(t_npix), s_nchan.eq(t_nchan), s_tag.eq(t_tag),
                last_pix.eq(t_npix <= 1),
                one_grp.eq((G == 1) | (t_nchan <= L)), last_grp.eq((G == 1) | (t_nchan <= L)),
            ]
        with m.Elif(self.o.valid & self.o.ready):
            with m.If(last_grp):
                m.d.sync += [grp.eq(0), last_grp.eq(one_grp)]
                with m.If(last_pix):
                    m.d.sync += shadow_full.eq(0)
                    m.d.comb += drained.eq(1)
                with m.Else():
                    m.d.sync += [pix.eq(pix + 1), last_pix.eq(pix + 2 >= s_npix)]
                    m.d.comb += next_row.eq(1)
            with m.Else():
                m.d.sync += [grp.eq(grp + 1), last_grp.eq((grp + 2 == G) | (chan + 2 * L >= s_nchan))]

        m.d.comb += self.busy.eq(shadow_full | Cat(*c_valid).any() | ~first)
        return m
