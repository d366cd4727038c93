"""Output stage: bias, requantisation, ReLU, fused residual add, global average pool.

It takes the 32-bit accumulators of ``hw.systolic.SystolicArray`` ``lanes``
output channels at a time and turns them into the next layer's activations,
with exactly the arithmetic of ``quant.numerics`` (one rounding rule,
``round_shift``: add ``2**(s-1)``, arithmetic shift right; nothing added for
``s = 0``). Per lane, in order:

1. **bias**: ``v = acc + bias[c]`` (33-bit, cannot wrap). The bias is added here,
   from the per-channel table, rather than pre-loaded into the array's
   accumulators: it keeps the array's input beats narrow (no ``Q`` x 32-bit bias
   lanes on the first beat of every tile) and costs one adder per lane instead
   of one per multiplier. ``acc + bias`` is ``quant.numerics.conv1x1_acc`` with
   its bias.
2. **requantise** (mode ``QUANT`` and ``POOL``):
   ``y = clamp(round_shift(v * m[c], s[c]), lo, hi)`` =
   ``numerics.requantize``; ``m`` is unsigned ``MULT_BITS`` = 16 bit,
   ``s`` in 0..47. ReLU is ``lo = 0``.
3. **residual** (``res_en``, modes ``QUANT`` and ``POOL``): one word per input
   beat arrives on the second stream ``r`` and
   ``y = clamp(y + round_shift(r * res_m, res_s), res_lo, res_hi)`` =
   ``numerics.residual_add`` (per-tensor ``res_m``/``res_s``, its own clamp
   because a CSC block has ReLU before the add and none after it).
4. **global average pool** (mode ``POOL``): ``y`` is summed per channel over the
   map in a per-channel accumulator memory; the beat flagged ``pool_first``
   restarts the sum, the beat flagged ``pool_last`` emits
   ``clamp(round_shift(sum * pool_m, pool_s), pool_lo, pool_hi)`` =
   ``numerics.global_avgpool``. Other beats emit nothing in this mode.
5. mode ``RAW`` emits ``acc + bias`` as 32-bit words (classifier logits; the
   exporter guarantees ``|acc| + |bias| < 2**31``); the residual stream is not
   read.

Stride is not handled here: a strided 1x1 layer is computed only at the strided
pixels, i.e. the feeder sends the array only the pixels ``(s*y, s*x)``
(``numerics.conv1x1_acc(..., stride=s)``), so every beat reaching this stage is
an output pixel.

Pipeline
--------
A fixed-latency pipeline of valid-tagged stages (no clock enables, so the
multiplier DSPs keep their registers and the wide datapath has no
high-fan-out stall net) ends in a ``SyncFIFOBuffered``. Back-pressure is
handled by credits: a beat is accepted only while the beats in flight plus the
words in the FIFO are fewer than ``fifo_depth``, so the FIFO can never
overflow, and with ``fifo_depth > LATENCY`` a stage that is read every cycle
accepts every cycle. Per lane it uses 2 ``MULT18X18D`` for ``v * m`` (33 x 17
bits), 1 for ``r * res_m`` and 2 for ``sum * pool_m``: ``5 * lanes`` in total.

The per-channel tables (banked by lane: channel ``c`` lives in bank
``c % lanes``) and the pool sums (one word of all lanes per channel group) are
read synchronously and their data registered before use, so Yosys may put them
in block RAM or in LUT RAM, whichever its cost model prefers (block RAM for the
85F's 512 channels, LUT RAM for the small parts' 64). Block RAM as Yosys infers
it for ECP5 has no output register (about 5.6 ns clock-to-out), hence the
register; a deep LUT RAM read asynchronously would put a read address with
hundreds of loads on the path (docs/BUILD.md, t20). A table in block RAM is a
:class:`hw.dual_read.DualReadMemory` instead, whose data come from the blocks'
own output registers. The table is read as the beat is accepted, the pool sum
three stages before it is needed (behind two registers); three beats of the
same channel group closer than the read-to-write distance take the sum from a
bypass register instead. Accept-to-output latency: 20 cycles.

The configuration ``cfg`` and the tables must only change while ``busy`` is
low (no beat in flight).
"""



from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import bits_for, ceil_log2

from quant.numerics import ACC_BITS, MULT_BITS, SHIFT_MAX

from .dp16kd import in_block_ram
from .dual_read import DualReadMemory
from .mult import Multiplier, WideMultiplier
from .sliced_memory import SlicedMemory

__all__ = ["OutputStage", "Mode", "ConfigLayout", "TableEntry", "ACT_OUT_SHAPE"]

#: Shape of a quantised activation or residual (int8 and uint8 both fit).
ACT_OUT_SHAPE = signed(9)
#: the rescaled residual's saturation before the residual add: wide enough that a sum with any
#: ACT_OUT_SHAPE value beyond it is beyond every ACT_OUT_SHAPE bound too
RES_SAT = signed(ACT_OUT_SHAPE.width + 2)
_SHIFT = unsigned(bits_for(SHIFT_MAX))


class Mode(enum.Enum, shape=2):
    """What the output stage emits."""

    #: requantised (and optionally residual-added) activations, one word per input beat
    QUANT = 0
    #: ``acc + bias`` as 32-bit integers (classifier logits)
    RAW = 1
    #: global average pool of the (requantised, residual-added) map, on ``pool_last`` beats only
    POOL = 2


#: Run-time configuration of a layer (static while ``busy``).
ConfigLayout = data.StructLayout({
    "mode": Mode,
    "lo": ACT_OUT_SHAPE,
    "hi": ACT_OUT_SHAPE,
    "res_en": 1,
    "res_m": unsigned(MULT_BITS),
    "res_s": _SHIFT,
    "res_lo": ACT_OUT_SHAPE,
    "res_hi": ACT_OUT_SHAPE,
    "pool_m": unsigned(MULT_BITS),
    "pool_s": _SHIFT,
    "pool_lo": ACT_OUT_SHAPE,
    "pool_hi": ACT_OUT_SHAPE,
    # the clamp of beats flagged ``alt`` (mode QUANT only): the expand half of a fused CSC pass,
    # whose beats share the pass with the reduce half but have their own ReLU and no residual
    "alt_lo": ACT_OUT_SHAPE,
    "alt_hi": ACT_OUT_SHAPE,
})

#: One entry of the per-channel table.
TableEntry = data.StructLayout({
    "m": unsigned(MULT_BITS),
    "s": _SHIFT,
    "bias": signed(ACC_BITS),
})


def _half(s, width):
    """``2**(s-1)`` for ``s > 0``, 0 for ``s == 0`` (the rounding constant of ``round_shift``)."""
    return (Const(1, width + 1) << s)[1:]


def _clamp(v, lo, hi):
    """``v`` limited to ``[lo, hi]`` (``lo <= hi``).

    A ``v`` wider than the bounds is first tested for fitting their width (its top bits all
    equal to its sign), so that only the narrow comparison needs a carry chain: a ~45-bit
    comparison with the bounds was the 45F's critical path (t24)."""
    v, lo, hi = Value.cast(v), Value.cast(lo), Value.cast(hi)
    w = max(len(b) + (not b.shape().signed) for b in (lo, hi))   # bits of a signed value holding both
    if len(v) <= w or not v.shape().signed:
        return Mux(v < lo, lo, Mux(v > hi, hi, v))
    top = v[w - 1:]
    fits = top.all() | ~top.any()
    narrow = v[:w].as_signed()
    negative = v[-1]
    below = Mux(fits, narrow < lo, negative)
    above = Mux(fits, narrow > hi, ~negative)
    return Mux(below, lo, Mux(above, hi, narrow))


class OutputStage(wiring.Component):
    """Bias + requantisation + ReLU + residual add + global average pool, ``lanes`` channels per beat.

    Parameters
    ----------
    lanes : int
        Output channels per beat, a power of two 1..32.
    max_channels : int
        Size of the per-channel tables (``m``, ``s``, bias, pool sums); a power
        of two, at least ``lanes``. Default 512. The tables hold
        ``max_channels * (54 + pool_bits)`` bits.
    max_pool_pixels : int
        Largest map the pool sums cover (sets their width). Default 65536.
    fifo_depth : int
        Output FIFO depth (and credit count); must exceed ``LATENCY`` for full
        throughput. Default 32.
    block_ram : str
        How a channel table that Yosys would put into block RAM is built
        (:class:`hw.dual_read.DualReadMemory`'s choices; default ``"auto"``).

    Members
    -------
    i : In(stream.Signature(input_layout))
        ``acc`` (``ArrayLayout(signed(32), lanes)``), ``chan`` (output channel of
        lane 0, a multiple of ``lanes``), ``mask`` (valid lanes, passed on),
        ``pool_first``/``pool_last`` (first/last pixel of the map, mode POOL),
        ``last`` (passed on), ``alt`` (clamp with ``cfg.alt_lo``/``alt_hi``, no
        residual add, no pool: one word out per beat in every mode but RAW; the
        residual word is still consumed).
    r : In(stream.Signature(ArrayLayout(signed(9), lanes)))
        Residual (the block input on the output grid), one word per ``i`` beat
        when ``cfg.res_en`` and mode is not RAW; never read otherwise.
    o : Out(stream.Signature(output_layout))
        ``data`` (``ArrayLayout(signed(32), lanes)``: activations sign-extended,
        or raw sums), ``chan``, ``mask``, ``last``.
    cfg : In(ConfigLayout)
        The layer's mode, clamps and residual/pool constants.
    tbl : In(stream.Signature(StructLayout({"chan", "entry": TableEntry})))
        Table writes (always ready): ``m``, ``s``, bias of output channel ``chan``.
    busy : Out(1)
        Beats in flight or in the FIFO.

    Raises
    ------
    ValueError
        On an out-of-range parameter.
    """

    #: Cycles from an accepted beat to its word being written into the output FIFO
    #: (the word is valid on ``o`` two cycles later: 20 cycles accept -> ``o.valid``).
    LATENCY = 18
    #: delays of this many stages or more are rings in LUT RAM (see ``elaborate``'s ``delay``)
    LUTRAM_DELAY = 8

    def __init__(self, lanes: int = 4, *, max_channels: int = 512, max_pool_pixels: int = 65536,
                 fifo_depth: int = 32, block_ram: str = "auto"):
        if not isinstance(lanes, int) or not 1 <= lanes <= 32 or lanes & (lanes - 1):
            raise ValueError(f"lanes must be a power of two in 1..32, not {lanes!r}")
        if (not isinstance(max_channels, int) or max_channels < lanes
                or max_channels & (max_channels - 1)):
            raise ValueError(f"max_channels must be a power of two >= lanes={lanes}, not {max_channels!r}")
        if not isinstance(max_pool_pixels, int) or not 1 <= max_pool_pixels <= 1 << 24:
            raise ValueError(f"max_pool_pixels must be an integer in 1..2**24, not {max_pool_pixels!r}")
        if not isinstance(fifo_depth, int) or fifo_depth < 2:
            raise ValueError(f"fifo_depth must be an integer >= 2, not {fifo_depth!r}")
        self._lanes = lanes
        self._max_channels = max_channels
        self._max_pool_pixels = max_pool_pixels
        self._fifo_depth = fifo_depth
        self._block_ram = block_ram
        # |y| <= 256 per pixel: the pool sum needs bits_for(256 * pixels) + sign
        self._pool_bits = bits_for(256 * max_pool_pixels) + 1
        chan_shape = unsigned(max(1, ceil_log2(max_channels)))
        self._input_layout = data.StructLayout({
            "acc": data.ArrayLayout(signed(ACC_BITS), lanes),
            "chan": chan_shape,
            "mask": unsigned(lanes),
            "pool_first": 1,
            "pool_last": 1,
            "last": 1,
            "alt": 1,
        })
        self._residual_layout = data.ArrayLayout(ACT_OUT_SHAPE, lanes)
        self._output_layout = data.StructLayout({
            "data": data.ArrayLayout(signed(ACC_BITS), lanes),
            "chan": chan_shape,
            "mask": unsigned(lanes),
            "last": 1,
        })
        self._table_layout = data.StructLayout({"chan": chan_shape, "entry": TableEntry})
        super().__init__({
            "i": In(stream.Signature(self._input_layout)),
            "r": In(stream.Signature(self._residual_layout)),
            "o": Out(stream.Signature(self._output_layout)),
            "cfg": In(ConfigLayout),
            "tbl": In(stream.Signature(self._table_layout)),
            "busy": Out(1),
        })

    lanes = property(lambda self: self._lanes)
    max_channels = property(lambda self: self._max_channels)
    pool_bits = property(lambda self: self._pool_bits)
    fifo_depth = property(lambda self: self._fifo_depth)
    input_layout = property(lambda self: self._input_layout)
    residual_layout = property(lambda self: self._residual_layout)
    output_layout = property(lambda self: self._output_layout)
    table_layout = property(lambda self: self._table_layout)

    def elaborate(self, platform):
        m = Module()
        N = self._lanes
        lg = ceil_log2(N)
        depth = self._max_channels // N
        cfg = self.cfg
        ip = self.i.payload

        ring_pos = Signal(4)                 # write position of the delay rings in LUT RAM
        m.d.sync += ring_pos.eq(ring_pos + 1)

        def delay(value, n, name):
            """``value`` delayed by ``n`` always-enabled stages.

            Short delays are registers. From ``LUTRAM_DELAY`` stages on, a ring of 16 words in LUT
            RAM (written every cycle at ``ring_pos``, read ``n - 1`` words back, asynchronously)
            and one register: the 15-stage delay of the raw 32-bit sums alone took 1920
            flip-flops on the 85F."""
            if n < self.LUTRAM_DELAY:
                cur = value
                for k in range(n):
                    reg = Signal.like(value, name=f"{name}_d{k + 1}")
                    m.d.sync += reg.eq(cur)
                    cur = reg
                return cur
            assert n <= 16
            ring = Memory(shape=Value.cast(value).shape(), depth=16, init=[])
            m.submodules[f"{name}_ring"] = ring
            wr, rd = ring.write_port(), ring.read_port(domain="comb")
            out = Signal.like(value, name=f"{name}_d{n}")
            m.d.comb += [wr.addr.eq(ring_pos), wr.data.eq(value), wr.en.eq(1),
                         rd.addr.eq(ring_pos - (n - 1))]
            m.d.sync += out.eq(rd.data)
            return out

        # ---- admission (credits) -------------------------------------------
        fifo = m.submodules.fifo = SyncFIFOBuffered(width=self._output_layout.size, depth=self._fifo_depth)
        used = Signal(range(self._fifo_depth + 1))
        room = Signal()
        m.d.comb += room.eq(used < self._fifo_depth)
        need_res = Signal()
        m.d.comb += need_res.eq(cfg.res_en & (cfg.mode != Mode.RAW))
        m.d.comb += [
            self.i.ready.eq(room & (~need_res | self.r.valid)),
            self.r.ready.eq(room & need_res & self.i.valid),
        ]
        accept = Signal()
        m.d.comb += accept.eq(self.i.valid & self.i.ready)

        # stage 0: the beat as accepted, while the table read is in flight; stage 0b: the beat while
        # the entry is in the table's output register; stage 1: the beat with its entry in a
        # register of ours
        res_in = Signal(self._residual_layout)
        m.d.comb += res_in.eq(Mux(need_res, self.r.payload.as_value(), 0))
        beat = dict(v=accept, chan=ip.chan, mask=ip.mask, pf=ip.pool_first, pl=ip.pool_last, last=ip.last,
                    alt=ip.alt, acc=ip.acc, res=res_in)

        def register_beat(src, n):
            regs = {k: Signal.like(val, name=f"{k}{n}") for k, val in src.items()}
            m.d.sync += [regs[k].eq(val) for k, val in src.items()]
            return regs

        beat1 = register_beat(register_beat(register_beat(beat, 0), "0b"), 1)
        v1, chan1, mask1, pf1, pl1, last1, alt1, acc1, res1 = beat1.values()

        # control, delayed alongside the datapath; stage numbers from here on count from stage 1,
        # so the beat leaves in stage LATENCY - 1
        EXIT = self.LATENCY - 1
        v = {1: v1}
        cur = v1
        for k in range(2, EXIT + 1):
            nxt = Signal(name=f"v{k}")
            m.d.sync += nxt.eq(cur)
            v[k] = cur = nxt
        chan6 = delay(chan1, 5, "chan")
        chan7 = delay(chan6, 1, "chan7")
        chan8 = delay(chan7, 1, "chan8")
        pf8 = delay(pf1, 7, "pool_first")
        pl8 = delay(pl1, 7, "pool_last")
        mask_x = delay(mask1, EXIT - 1, "mask")
        last_x = delay(last1, EXIT - 1, "last")
        chan_x = delay(chan1, EXIT - 1, "chan_x")
        pl_x = delay(pl8, EXIT - 8, "pool_last_x")
        alt5 = delay(alt1, 4, "alt")         # selects the clamp bounds registered beside q6
        alt6 = delay(alt5, 1, "alt6")
        alt7 = delay(alt6, 1, "alt7")        # beside y7 (the residual add)
        alt8 = delay(alt7, 1, "alt8")        # beside the residual sum (its clamp)
        alt9 = delay(alt8, 1, "alt9")        # beside the pool write: alt beats never pool
        alt_x = delay(alt9, EXIT - 9, "alt_x")
        lo6, hi6 = Signal(ACT_OUT_SHAPE), Signal(ACT_OUT_SHAPE)
        m.d.sync += [lo6.eq(Mux(alt5, cfg.alt_lo, cfg.lo)), hi6.eq(Mux(alt5, cfg.alt_hi, cfg.hi))]

        pool_mode = Signal()
        m.d.comb += pool_mode.eq(cfg.mode == Mode.POOL)
        # the per-layer rounding constants, decoded into registers (cfg is static while beats are in
        # flight, and a beat reaches their adders cycles after its acceptance)
        res_half, pool_half = Signal(SHIFT_MAX), Signal(SHIFT_MAX)
        m.d.sync += [res_half.eq(_half(cfg.res_s, SHIFT_MAX)), pool_half.eq(_half(cfg.pool_s, SHIFT_MAX))]
        # pool control. The sums are read in stage 6 (synchronously; the data pass two registers,
        # the first free to sit beside a block RAM, and are due in stage 9) and written back in
        # stage 9, so the three beats ahead of a beat (in stages 9, 10 and 11 while it is in stage
        # 8) may have written its channel group after its read: it then takes their sum from
        # psum10 / psum11 / psum12 instead (the nearest one wins).
        chan9 = delay(chan8, 1, "chan9")
        chan10 = delay(chan9, 1, "chan10")
        chan11 = delay(chan10, 1, "chan11")
        pf9 = delay(pf8, 1, "pool_first9")
        pool_we9 = Signal()
        m.d.comb += pool_we9.eq(v[9] & pool_mode & ~alt9)
        pool_we10 = delay(pool_we9, 1, "pool_we10")
        pool_we11 = delay(pool_we10, 1, "pool_we11")
        bypass1, bypass2, bypass3 = Signal(), Signal(), Signal()
        m.d.sync += [bypass1.eq(pool_we9 & ((chan9 >> lg) == (chan8 >> lg))),
                     bypass2.eq(pool_we10 & ((chan10 >> lg) == (chan8 >> lg))),
                     bypass3.eq(pool_we11 & ((chan11 >> lg) == (chan8 >> lg)))]
        # the sums' read data pass the memory's output register (in block RAM, the 85F's, the blocks'
        # own, in the 512 x 36 shape Yosys would give them) and one of ours
        pool_layout = data.ArrayLayout(signed(self._pool_bits), N)
        pool_in_blocks = in_block_ram(pool_layout.size, depth)
        pmem = SlicedMemory(width=pool_layout.size, depth=depth, name="pool", slice_bits=36, output_registers=1,
                            block_ram=self._block_ram if pool_in_blocks else "inferred")
        m.submodules.pool = pmem
        pwr, prd = pmem.write, pmem.reads[0]
        read9 = Signal(pool_layout, name="pool_read")
        m.d.comb += [prd.addr.eq(chan6 >> lg), prd.en.eq(1), pwr.addr.eq(chan9 >> lg), pwr.en.eq(pool_we9)]
        m.d.sync += read9.eq(prd.data)
        pool_wdata = Signal(pool_layout)
        m.d.comb += pwr.data.eq(pool_wdata)
        y9 = []

        out_data = []
        for k in range(N):
            # ---- table (m, s, bias), banked by lane --------------------------
            # read as the beat is accepted, its entry due in stage 1, in a register the placer may
            # put next to the bias adders and multipliers. In block RAM (the 85F's 128 entries per
            # lane) both ports of each block read, so that the entry leaves the blocks through their
            # own output registers (hw.dual_read; 85F t46's critical path ran from a table block
            # RAM's late read data across the die into `entry`); in LUT RAM the read data are
            # registered twice
            entry_bits = Value.cast(self.tbl.payload.entry).shape().width
            tbl_write = self.tbl.valid & ((self.tbl.payload.chan & (N - 1)) == k)
            ent = Signal(TableEntry, name=f"entry{k}")              # valid in stage 1
            if in_block_ram(entry_bits, depth):
                tmem = DualReadMemory(width=entry_bits, depth=depth, name=f"table{k}", block_ram=self._block_ram)
                m.submodules[f"table{k}"] = tmem
                m.d.comb += [
                    tmem.write.addr.eq(self.tbl.payload.chan >> lg),
                    tmem.write.data.eq(self.tbl.payload.entry),
                    tmem.write.en.eq(tbl_write),
                    tmem.read.addr.eq(ip.chan >> lg),
                    tmem.read.en.eq(1),
                ]
                m.d.sync += ent.eq(tmem.read.data)
            else:
                tmem = Memory(shape=TableEntry, depth=depth, init=[])
                m.submodules[f"table{k}"] = tmem
                twr, trd = tmem.write_port(), tmem.read_port()
                m.d.comb += [
                    twr.addr.eq(self.tbl.payload.chan >> lg),
                    twr.data.eq(self.tbl.payload.entry),
                    twr.en.eq(tbl_write),
                    trd.addr.eq(ip.chan >> lg),
                ]
                ent_0b = Signal(TableEntry, name=f"entry{k}_0b")
                m.d.sync += [ent_0b.eq(trd.data), ent.eq(ent_0b)]

            # ---- stage 1: acc + bias, start of the multiplies ----------------
            vsum = Signal(signed(ACC_BITS + 1), name=f"vsum{k}")
            m.d.comb += vsum.eq(acc1[k] + ent.bias)
            raw_x = delay(vsum[:ACC_BITS].as_signed(), EXIT - 1, f"raw{k}")

            mul = WideMultiplier(ACC_BITS + 1, MULT_BITS + 1)
            m.submodules[f"mul_q{k}"] = mul
            m.d.comb += [mul.a.eq(vsum), mul.b.eq(Cat(ent.m, Const(0, 1)).as_signed())]
            s3 = delay(ent.s, WideMultiplier.LATENCY - 1, f"s{k}")
            s4 = delay(s3, 1, f"s{k}_4")
            # the rounding constant decoded from the shift a stage ahead of its adder (the decode
            # in front of the ~50-bit carry chain led the t48 netlist's ranking of this stage)
            half4 = Signal(SHIFT_MAX, name=f"half{k}_4")
            m.d.sync += half4.eq(_half(s3, SHIFT_MAX))

            rmul = Multiplier(ACT_OUT_SHAPE.width, MULT_BITS + 1)
            m.submodules[f"mul_r{k}"] = rmul
            m.d.comb += [rmul.a.eq(res1[k]), rmul.b.eq(Cat(cfg.res_m, Const(0, 1)).as_signed())]
            rp4 = delay(rmul.p, 1, f"rprod{k}")   # stage 3 -> 4

            # ---- stage 4: add the rounding constants -------------------------
            q5 = Signal(signed(mul.p.shape().width + 1), name=f"q{k}_rounded")
            r5 = Signal(signed(rmul.p.shape().width + 1), name=f"r{k}_rounded")
            s5 = Signal.like(s4, name=f"s{k}_5")
            m.d.sync += [
                q5.eq(mul.p + half4),
                r5.eq(rp4 + res_half),
                s5.eq(s4),
            ]
            # ---- stage 5: shifts ----------------------------------------------
            q6 = Signal.like(q5, name=f"q{k}_shifted")
            r6 = Signal.like(r5, name=f"r{k}_shifted")
            m.d.sync += [q6.eq(q5 >> s5), r6.eq(r5 >> cfg.res_s)]
            # ---- stage 6: requantisation clamp --------------------------------
            # The residual is clamped too, to RES_SAT: with y7 a 9-bit value, a sum with a residual
            # beyond it lies beyond any 9-bit bound either way, so stage 7's clamp is unchanged,
            # and its adder and compare are 11 bits wide instead of ~40 (45F t25's deepest path)
            y7 = Signal(ACT_OUT_SHAPE, name=f"y{k}")
            r7 = Signal(RES_SAT, name=f"r{k}_7")
            m.d.sync += [y7.eq(_clamp(q6, lo6, hi6)),
                         r7.eq(_clamp(r6, Const(-(1 << (RES_SAT.width - 1)), RES_SAT),
                                        Const((1 << (RES_SAT.width - 1)) - 1, RES_SAT)))]
            # ---- stage 7: residual add; stage 8: its clamp (45F t27's critical path had both in
            # one stage). The result is due in stage 9 (the pool's read-modify-write), so this
            # costs no latency
            sum8 = Signal(signed(RES_SAT.width + 1), name=f"ysum{k}")
            y7_8 = Signal(ACT_OUT_SHAPE, name=f"y{k}_8")
            m.d.sync += [sum8.eq(y7 + r7), y7_8.eq(y7)]
            y9k = Signal(ACT_OUT_SHAPE, name=f"yr{k}")
            m.d.sync += y9k.eq(Mux(need_res & ~alt8, _clamp(sum8, cfg.res_lo, cfg.res_hi), y7_8))
            y_x = delay(y9k, EXIT - 9, f"yq{k}")
            y9.append(y9k)

            # ---- stages 6-9: pool read-modify-write -----------------------------
            psum = Signal(signed(self._pool_bits), name=f"psum{k}")
            psum10 = Signal.like(psum, name=f"psum{k}_10")
            psum11 = Signal.like(psum, name=f"psum{k}_11")
            psum12 = Signal.like(psum, name=f"psum{k}_12")
            m.d.comb += [
                psum.eq(Mux(pf9, 0, Mux(bypass1, psum10, Mux(bypass2, psum11, Mux(bypass3, psum12, read9[k]))))
                        + y9[k]),
                pool_wdata[k].eq(psum),
            ]
            m.d.sync += [psum11.eq(psum10), psum12.eq(psum11)]
            # stage 10: the sum, registered (the route into the DSP); 13: product;
            # 14: rounding constant; 15: shift; 16: clamp; then registers up to the exit
            m.d.sync += psum10.eq(psum)
            pmul = WideMultiplier(self._pool_bits, MULT_BITS + 1)
            m.submodules[f"mul_p{k}"] = pmul
            m.d.comb += [pmul.a.eq(psum10), pmul.b.eq(Cat(cfg.pool_m, Const(0, 1)).as_signed())]
            pq12 = Signal(signed(pmul.p.shape().width + 1), name=f"p{k}_rounded")
            pq13 = Signal.like(pq12, name=f"p{k}_shifted")
            pq14 = Signal(ACT_OUT_SHAPE, name=f"p{k}_clamped")
            m.d.sync += [
                pq12.eq(pmul.p + pool_half),
                pq13.eq(pq12 >> cfg.pool_s),
                pq14.eq(_clamp(pq13, cfg.pool_lo, cfg.pool_hi)),
            ]
            pool_x = delay(pq14, EXIT - 16, f"pool{k}")
            word = Signal(signed(ACC_BITS), name=f"out{k}")
            with m.Switch(cfg.mode):
                with m.Case(Mode.RAW):
                    m.d.comb += word.eq(raw_x)
                with m.Case(Mode.POOL):
                    m.d.comb += word.eq(Mux(alt_x, y_x, pool_x))
                with m.Default():
                    m.d.comb += word.eq(y_x)
            out_data.append(word)

        # ---- exit into the FIFO ---------------------------------------------
        emit = Signal()
        drop = Signal()
        m.d.comb += [
            emit.eq(v[EXIT] & (~pool_mode | pl_x | alt_x)),
            drop.eq(v[EXIT] & ~emit),
        ]
        wword = Signal(self._output_layout)
        m.d.comb += [
            wword.data.eq(Cat(*out_data)),
            wword.chan.eq(chan_x),
            wword.mask.eq(mask_x),
            wword.last.eq(last_x),
            fifo.w_data.eq(wword.as_value()),
            fifo.w_en.eq(emit),
            self.o.valid.eq(fifo.r_rdy),
            self.o.payload.eq(fifo.r_data),
            fifo.r_en.eq(self.o.ready),
        ]
        read = Signal()
        m.d.comb += read.eq(self.o.valid & self.o.ready)
        m.d.sync += used.eq(used + accept - read - drop)
        m.d.comb += [self.tbl.ready.eq(1), self.busy.eq(used != 0)]
        return m
