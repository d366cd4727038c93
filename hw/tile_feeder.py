"""Tile feeder: turns the shift unit's pixel stream into the array's channel stream.

The shift unit emits gathered pixels in raster order, ``L`` channels per beat
(pixel-major). The output-stationary array (:mod:`hw.systolic`) wants the
transpose: one beat per input channel, carrying that channel of ``P`` pixels,
together with ``Q`` weights. The feeder sits between them:

* **Write side.** Beats of the pixels that survive the stride (``x`` and ``y``
  multiples of ``2**stride_log2``; the others are consumed and dropped) are
  written into a tile buffer: ``P`` banks, one per pixel slot of the tile,
  ``TILE_SLOTS`` tiles deep (a ring). Pixel ``p`` of a tile, beat ``b`` goes to
  bank ``p``, word ``slot * tile_words + b`` (:func:`tile_words`). A slot is *full* after ``P``
  pixels, or after the last output pixel of the layer (a partial tile).
* **Read side.** A full slot is replayed once per output-channel group
  ``g = 0 .. groups-1`` (``Q`` channels each): for ``ci = 0 .. c_gather-1`` one
  array beat with byte ``ci % L`` of word ``ci // L`` of every bank, and the
  weight word ``w_base + g * c_gather + ci`` (``Q`` int8 lanes). The weight
  address is simply a counter that restarts at ``w_base`` for every tile,
  because the host lays the weights out in exactly this order. The beat with
  ``ci = c_gather - 1`` is the tile's ``last``; its ``tag`` carries the tile's
  first output pixel and ``g`` for the output side.

The read side is a pipeline that never stalls: a beat is issued only against
a credit for a place in a small FIFO in front of the array (``OUT_FIFO_DEPTH``).
The weight request (address, enable) is registered once in the feeder and
reaches the weight memory a cycle after the issue, which answers
``WEIGHT_READ_LATENCY`` (4) cycles later (it registers its inputs, replicated
next to its block RAMs, and each slice's read data twice); the tile buffer
answers in two (its address is registered), its words wait in a register and
the selected bytes in further ones, so both enter the FIFO together. So no memory address or
enable depends on the array's ``ready``, and back-pressure from the array (it
refuses a ``last`` beat while its shadow bank is busy) only stops the issue once
the FIFO's credits are used up.

**Fused CSC passes** (``cfg.fused``, docs/ENGINE.md) add a second input,
``ia``: the block input for the expand half, written into slots 2-3 while the
shift unit's stream keeps slots 0-1. One bank write per cycle: the two streams
take turns when both have a beat. An expand tile starts only when its last
pixel is below ``a_room_end`` (room in the mid ring). Between tiles the read
side takes the shift unit's next slot if it is full, else the expand input's;
the tile's context (``ctx`` in the tag: 1 for expand) selects its
``c_gather``, ``groups``, ``c_out``, weight base and signedness, and an
expand tile's ``pix0`` is its position in the ring.

The array is busy for ``groups * c_gather`` cycles per tile and the shift
unit needs ``P * gather_words`` (times ``4**stride_log2`` for strided layers,
whose dropped pixels still pass), so for the usual shapes the array, not the
feeder, sets the pace.
"""

from __future__ import annotations

from amaranth import Array, Cat, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out
from amaranth.utils import bits_for, ceil_log2

from .dp16kd import in_block_ram
from .engine_params import EngineParams
from .sliced_memory import SlicedMemory

__all__ = ["TileFeeder", "tag_layout", "tile_words", "TILE_SLOTS"]

#: Tiles the buffer holds (a power of two). Two would be double buffering; four absorb the
#: bursts of a strided layer, where whole input rows pass without a kept pixel.
TILE_SLOTS = 4


def tag_layout(params: EngineParams) -> data.StructLayout:
    """What a tile's ``last`` beat tells the output side: first output pixel, channel group, context.

    ``ctx`` is 1 for a tile of the expand half of a fused CSC pass (its ``pix0`` is then the
    tile's first pixel in the mid ring), 0 otherwise.
    """
    return data.StructLayout({
        "pix0": unsigned_for(params.max_out_pixels),
        "group": unsigned_for(params.max_groups),
        "ctx": 1,
    })


def tile_words(params: EngineParams) -> int:
    """Tile-buffer words per slot: ``gather_words`` rounded up to a power of two, so that a slot's
    base address is a shift (96, for ``max_gather`` 384 and 4 lanes, would cost multipliers)."""
    return 1 << ceil_log2(params.gather_words)


def unsigned_for(n: int):
    from amaranth.hdl import unsigned

    return unsigned(bits_for(n))


class TileFeeder(wiring.Component):
    """Pixel stream in, array beats out (see the module docstring).

    Members
    -------
    i : In(stream.Signature(ArrayLayout(unsigned(8), L)))
        Gathered pixels from the shift unit.
    ia : In(stream.Signature(ArrayLayout(unsigned(8), L)))
        Fused passes only: the expand half's input pixels (raster order, ``a_g_words``
        beats each, no gather, stride 1).
    o : Out(stream.Signature(array.input_layout))
        Array beats.
    cfg : In(cfg_layout)
        ``width``, ``height`` (input map), ``stride_log2``, ``g_words``
        (beats per gathered pixel), ``c_gather``, ``c_out``, ``groups``,
        ``out_pixels``, ``w_base``, ``act_signed``; for a fused pass also
        ``fused`` and the expand half's ``a_g_words``, ``a_c_gather``,
        ``a_c_out``, ``a_groups``, ``a_pixels``, ``a_w_base``,
        ``a_act_signed`` and ``ring_pixels``. Static while running.
    a_room_end : In
        Fused passes: the expand half may start a tile only if all its pixels
        are below this pixel index (the engine keeps it at the mid ring's
        free end).
    start : In(1)
        Pulse before a layer: resets both sides.
    w_addr, w_en : Out
        Weight memory read port (address, enable); ``w_data`` must be its data
        ``WEIGHT_READ_LATENCY`` cycles after an enabled read (a
        :class:`hw.sliced_memory.SlicedMemory` with input and output registers).
    w_data : In(Q * 8)
    beats : Out(32)
        Array beats accepted since ``start`` (for the layer counters).
    """

    #: cycles from ``w_en`` to the weight word on ``w_data`` (at least 2, the tile buffer's)
    WEIGHT_READ_LATENCY = 4
    #: cycles from a beat's issue to its weight word: the feeder's own request register, then
    #: the weight memory (t39's critical path ran from the issue logic straight into the weight
    #: memory's replicated input registers)
    ISSUE_TO_WEIGHT = 1 + WEIGHT_READ_LATENCY
    #: beats of the FIFO in front of the array. A credit goes round in ISSUE_TO_WEIGHT + 3 cycles
    #: (issue in t, the beat enters the FIFO in t + 5, reaches its output register in t + 7 and is
    #: popped; the credit counts again in t + 8), so 8 keep one beat per cycle (one fewer costs an
    #: eighth of the throughput)
    OUT_FIFO_DEPTH = ISSUE_TO_WEIGHT + 3

    def __init__(self, params: EngineParams, array_input_layout, *, block_ram: str = "auto"):
        self._p = params
        #: how tile-buffer banks that Yosys would put into block RAM build their blocks
        #: (hw.sliced_memory.SlicedMemory's block_ram)
        self._block_ram = block_ram
        L = params.lanes
        pix = unsigned_for(params.max_out_pixels)
        self.cfg_layout = data.StructLayout({
            "width": unsigned_for(params.max_width),
            "height": unsigned_for(params.max_height),
            "stride_log2": 2,
            "g_words": unsigned_for(params.gather_words),
            "c_gather": unsigned_for(params.max_gather),
            "c_out": unsigned_for(params.max_cout),
            "groups": unsigned_for(params.max_groups),
            "out_pixels": pix,
            "w_base": unsigned_for(params.weight_words - 1),
            "act_signed": 1,
            "fused": 1,
            "a_g_words": unsigned_for(params.gather_words),
            "a_c_gather": unsigned_for(params.max_gather),
            "a_c_out": unsigned_for(params.max_cout),
            "a_groups": unsigned_for(params.max_groups),
            "a_pixels": pix,
            "a_w_base": unsigned_for(params.weight_words - 1),
            "a_act_signed": 1,
            "ring_pixels": pix,
        })
        self._tag_layout = tag_layout(params)
        super().__init__({
            "i": In(stream.Signature(data.ArrayLayout(8, L))),
            "ia": In(stream.Signature(data.ArrayLayout(8, L))),
            "o": Out(stream.Signature(array_input_layout)),
            "cfg": In(self.cfg_layout),
            "a_room_end": In(bits_for(2 * params.max_out_pixels)),
            "start": In(1),
            "w_addr": Out(max(1, ceil_log2(params.weight_words))),
            "w_en": Out(1),
            "w_data": In(params.cols * 8),
            "beats": Out(32),
        })

    def elaborate(self, platform):
        m = Module()
        p = self._p
        P, Q, L = p.rows, p.cols, p.lanes
        GW = tile_words(p)
        lg_l = ceil_log2(L)
        cfg = self.cfg
        S = TILE_SLOTS

        # The tile buffer: one bank per pixel slot, read with latency 2. A bank in block RAM (in the
        # 512 x 36 shape Yosys would give it) has its read data in the block's own output register
        # (45F t31's latest endpoints were the registers behind these blocks, with Yosys' logic for
        # a read of a word written in the same cycle in between); a smaller bank is LUT RAM with a
        # register. A bank word is never read in the cycle it is written (see `release`).
        depth = S * GW
        in_blocks = in_block_ram(8 * L, depth)
        banks = []
        for k in range(P):
            mem = SlicedMemory(width=8 * L, depth=depth, name=f"bank{k}", slice_bits=36, output_registers=1,
                               block_ram=self._block_ram if in_blocks else "inferred")
            m.submodules[f"bank{k}"] = mem
            banks.append((mem.write, mem.reads[0]))

        # ------------------------------------------------------------ write side
        # Slot ownership: the pass's only stream (the shift unit's) uses all S slots as a ring; in a
        # fused pass it uses slots 0..1 and the expand input slots 2..3.
        full = Signal(S)
        n_pix = Array(Signal(range(P + 1), name=f"n_pix{h}") for h in range(S))
        pix0 = Array(Signal(self._tag_layout["pix0"].shape, name=f"pix0_{h}") for h in range(S))

        # the shift unit's stream: cursor (slot, pixel in tile, beat in pixel), map position, kept pixels
        wslot = Signal(range(S))
        wp = Signal(range(P))
        b = Signal.like(cfg.g_words)
        x = Signal.like(cfg.width)
        y = Signal.like(cfg.height)
        kept = Signal.like(cfg.out_pixels)          # output pixels written so far

        # the expand input's stream (fused passes): cursor, pixels written, the tile's place in the ring
        a_wslot = Signal()                           # slot 2 + a_wslot
        a_wp = Signal(range(P))
        a_b = Signal.like(cfg.a_g_words)
        a_kept = Signal.like(cfg.a_pixels)
        a_ring = Signal.like(cfg.ring_pixels)        # ring pixel of the tile being written
        a_slot = Signal(range(S))
        m.d.comb += a_slot.eq(Cat(a_wslot, 1))

        # The layer's last indices, registered from cfg (a cycle behind it: cfg is static from the
        # start pulse on, and no beat is taken or issued in that cycle), so that the cursors'
        # end tests compare registers for equality instead of adding to the counters and comparing
        # with cfg fields that are themselves sums of descriptor fields (the 85F's deepest feeder
        # paths ran from the descriptor through g_words into `full`)
        last_b, a_last_b = Signal.like(cfg.g_words), Signal.like(cfg.a_g_words)
        last_x = Signal.like(cfg.width)
        last_kept, a_last_kept = Signal.like(cfg.out_pixels), Signal.like(cfg.a_pixels)
        a_ring_last = Signal.like(cfg.ring_pixels)   # the ring's last tile start
        smask = Signal(2)
        m.d.sync += [
            last_b.eq(cfg.g_words - 1), a_last_b.eq(cfg.a_g_words - 1), last_x.eq(cfg.width - 1),
            last_kept.eq(cfg.out_pixels - 1), a_last_kept.eq(cfg.a_pixels - 1),
            a_ring_last.eq(cfg.ring_pixels - P),
            smask.eq(Mux(cfg.stride_log2 == 0, 0, Mux(cfg.stride_log2 == 1, 1, 3))),
        ]
        tile_first = Signal.like(cfg.out_pixels)    # output pixel of the tile being written
        keep = Signal()
        m.d.comb += keep.eq(((x & smask) == 0) & ((y & smask) == 0))

        # one bank write per cycle: the two streams take turns when both have a beat
        a_turn = Signal()
        b_free = Signal()
        a_can = Signal()
        a_tile_start = Signal()
        # A tile of the expand half starts only when the ring has room for all of it. The compare
        # is registered (it sat on the path into the shift unit's memory enables): a_room_ok says
        # whether a tile starting at a_kept fits, as of the previous cycle. a_room_end only grows
        # during a pass, so a stale value is never too generous; a_kept grows when a tile closes,
        # so the cycle after that (and after start) waits for the compare to catch up.
        a_room_ok = Signal()
        a_stale = Signal(init=1)
        # (a_kept + P is a counter of its own, so the compare is the only carry chain on the path)
        a_kept_end = Signal(len(a_kept) + bits_for(P), init=P)
        m.d.sync += [a_room_ok.eq(a_kept_end <= self.a_room_end), a_stale.eq(0)]
        m.d.comb += [
            b_free.eq(~full.bit_select(wslot, 1)),
            a_tile_start.eq((a_wp == 0) & (a_b == 0)),
            a_can.eq(cfg.fused & ~full.bit_select(a_slot, 1)
                     & (~a_tile_start | (a_room_ok & ~a_stale))),
            self.i.ready.eq(b_free & ~(a_turn & a_can & self.ia.valid)),
        ]
        take = Signal()
        m.d.comb += take.eq(self.i.valid & self.i.ready)
        m.d.comb += self.ia.ready.eq(a_can & ~take)
        a_take = Signal()
        m.d.comb += a_take.eq(self.ia.valid & self.ia.ready)
        with m.If(self.i.valid & b_free & self.ia.valid & a_can):
            m.d.sync += a_turn.eq(~a_turn)
        # a taken beat is written a cycle later, from registers (45F t32's endpoints: the handshake ->
        # the banks' write enables). Its slot is marked full when the beat is taken, so a tile's
        # first read (issued the cycle after, its bank read one cycle later still) comes after
        # its last write
        bank_waddr = Signal(range(S * GW))
        bank_wdata = Signal(8 * L, reset_less=True)
        bank_wen = Signal(P)
        m.d.sync += [
            bank_waddr.eq(Mux(a_take, a_slot * GW + a_b, wslot * GW + b)),
            bank_wdata.eq(Mux(a_take, self.ia.payload.as_value(), self.i.payload.as_value())),
            bank_wen.eq(Cat(*((take & keep & (wp == k)) | (a_take & (a_wp == k)) for k in range(P)))),
        ]
        for k, (wr, _) in enumerate(banks):
            m.d.comb += [wr.addr.eq(bank_waddr), wr.data.eq(bank_wdata), wr.en.eq(bank_wen[k])]

        pixel_end = Signal()
        m.d.comb += pixel_end.eq(take & (b == last_b))
        with m.If(take):
            m.d.sync += b.eq(Mux(pixel_end, 0, b + 1))
        with m.If(pixel_end):
            with m.If(x == last_x):
                m.d.sync += [x.eq(0), y.eq(y + 1)]
            with m.Else():
                m.d.sync += x.eq(x + 1)
            with m.If(keep):
                m.d.sync += kept.eq(kept + 1)
                close = (wp == P - 1) | (kept == last_kept)
                with m.If(close):
                    m.d.sync += [
                        full.bit_select(wslot, 1).eq(1),
                        wp.eq(0),
                        wslot.eq(Mux(cfg.fused, ~wslot[0], wslot + 1)),
                        n_pix[wslot].eq(wp + 1),
                        pix0[wslot].eq(tile_first),
                        tile_first.eq(kept + 1),
                    ]
                with m.Else():
                    m.d.sync += wp.eq(wp + 1)

        a_pixel_end = Signal()
        m.d.comb += a_pixel_end.eq(a_take & (a_b == a_last_b))
        with m.If(a_take):
            m.d.sync += a_b.eq(Mux(a_pixel_end, 0, a_b + 1))
        with m.If(a_pixel_end):
            m.d.sync += [a_kept.eq(a_kept + 1), a_kept_end.eq(a_kept_end + 1)]
            with m.If((a_wp == P - 1) | (a_kept == a_last_kept)):
                m.d.sync += [
                    a_stale.eq(1),
                    full.bit_select(a_slot, 1).eq(1),
                    a_wp.eq(0),
                    a_wslot.eq(~a_wslot),
                    n_pix[a_slot].eq(a_wp + 1),
                    pix0[a_slot].eq(a_ring),
                    # the ring holds a multiple of P pixels, so a tile never wraps
                    a_ring.eq(Mux(a_ring == a_ring_last, 0, a_ring + P)),
                ]
            with m.Else():
                m.d.sync += a_wp.eq(a_wp + 1)

        # ------------------------------------------------------------- read side
        # Between tiles (ci = 0, g = 0) the next tile is the shift unit's stream's next slot if it
        # is full, else the expand input's (fused passes); inside a tile the choice is held in
        # cur_slot / cur_ctx. The choice between the streams (pick_a) is a register, made from the
        # previous cycle's slots: a slot stays full until its tile is issued, so it never points
        # to a stream whose slot has emptied (the issue still tests the chosen slot now); a slot
        # filled since then waits a cycle, and the slot after a finished tile is chosen a cycle
        # late. t47's critical path ran from the fused flag through this choice into the
        # weight address.
        b_rslot = Signal(range(S))       # next slot of the shift unit's stream
        a_rslot = Signal()               # next slot of the expand input: 2 + a_rslot
        cur_slot = Signal(range(S))
        cur_ctx = Signal()
        g = Signal.like(cfg.groups)
        ci = Signal.like(cfg.c_gather)
        waddr = Signal.like(self.w_addr)
        v1 = Signal()                    # a beat was issued in the previous cycle
        lane1 = Signal(max(1, lg_l))
        last1 = Signal()
        npix1 = Signal(range(P + 1))
        nchan1 = Signal(range(Q + 1))
        signed1 = Signal()
        tag1 = Signal(self._tag_layout)

        in_tile = Signal()               # (ci, g) != (0, 0), kept as a register of its own
        a_next = Signal(range(S))
        m.d.comb += a_next.eq(Cat(a_rslot, 1))
        pick_a = Signal()
        m.d.sync += pick_a.eq(~full.bit_select(b_rslot, 1) & cfg.fused & full.bit_select(a_next, 1))
        rs = Signal(range(S))            # slot of the beat issued now
        rc = Signal()                    # its context (1: expand half)
        m.d.comb += [
            rs.eq(Mux(in_tile, cur_slot, Mux(pick_a, a_next, b_rslot))),
            rc.eq(Mux(in_tile, cur_ctx, pick_a)),
        ]
        # per context, registered like the write side's: the last channel and group of a tile and
        # the channels of its last group (groups = ceil(c_out / Q), so every other group has Q)
        last_ci = [Signal.like(cfg.c_gather, name=f"last_ci{k}") for k in range(2)]
        last_g = [Signal.like(cfg.groups, name=f"last_g{k}") for k in range(2)]
        last_chans = [Signal(range(Q + 1), name=f"last_chans{k}") for k in range(2)]
        for k, (c_gather_k, groups_k, c_out_k) in enumerate(((cfg.c_gather, cfg.groups, cfg.c_out),
                                                            (cfg.a_c_gather, cfg.a_groups, cfg.a_c_out))):
            m.d.sync += [last_ci[k].eq(c_gather_k - 1), last_g[k].eq(groups_k - 1),
                         last_chans[k].eq(c_out_k - (groups_k - 1) * Q)]
        tile_last, group_last = Signal(), Signal()
        m.d.comb += [
            tile_last.eq(ci == Mux(rc, last_ci[1], last_ci[0])),
            group_last.eq(g == Mux(rc, last_g[1], last_g[0])),
        ]

        # The read pipeline never stalls: a beat is issued only against a credit for a place in
        # the output FIFO, so no enable or address depends on the array's ready. Issue (cycle t):
        # the weight address and the bank address go into registers; the weight memory's
        # replicated input registers take the former at the end of t + 1; the banks deliver in
        # t + 2, the weight memory in t + ISSUE_TO_WEIGHT, when the beat (the tile's bytes, its
        # weights and what travelled beside them) is written into the FIFO in front of the array.
        release = Signal()               # a tile finished in the previous cycle: free its slot now
        release_slot = Signal(range(S))
        m.d.sync += release.eq(0)
        credits = Signal(range(self.OUT_FIFO_DEPTH + 1), init=self.OUT_FIFO_DEPTH)
        pop = Signal()
        issue = Signal()
        m.d.comb += issue.eq((credits != 0) & full.bit_select(rs, 1))
        m.d.sync += credits.eq(credits - issue + pop)
        word = ci >> lg_l
        bank_addr = Signal(range(S * GW))
        m.d.sync += bank_addr.eq(rs * GW + word)
        for _, rd in banks:
            m.d.comb += [rd.addr.eq(bank_addr), rd.en.eq(1)]
        # the weight address is a counter through the tile's groups that starts at its context's
        # base; the request goes to the weight memory from a register
        w_addr = Signal.like(self.w_addr)
        m.d.comb += w_addr.eq(Mux(in_tile, waddr, Mux(rc, cfg.a_w_base, cfg.w_base)))
        m.d.sync += [self.w_addr.eq(w_addr), self.w_en.eq(issue)]

        m.d.sync += v1.eq(issue)
        with m.If(issue):
            m.d.sync += [
                lane1.eq(ci[:lg_l] if lg_l else 0),
                last1.eq(tile_last),
                npix1.eq(n_pix[rs]),
                nchan1.eq(Mux(group_last, Mux(rc, last_chans[1], last_chans[0]), Q)),
                signed1.eq(Mux(rc, cfg.a_act_signed, cfg.act_signed)),
                tag1.pix0.eq(pix0[rs]),
                tag1.group.eq(g),
                tag1.ctx.eq(rc),
                waddr.eq(w_addr + 1),
                ci.eq(Mux(tile_last, 0, ci + 1)),
                cur_slot.eq(rs),
                cur_ctx.eq(rc),
            ]
            m.d.sync += in_tile.eq(1)
            with m.If(tile_last):
                with m.If(group_last):
                    m.d.sync += [g.eq(0), in_tile.eq(0), release.eq(1), release_slot.eq(rs)]
                    with m.If(rc):
                        m.d.sync += a_rslot.eq(~a_rslot)
                    with m.Else():
                        m.d.sync += b_rslot.eq(Mux(cfg.fused, ~b_rslot[0], b_rslot + 1))
                with m.Else():
                    m.d.sync += g.eq(g + 1)

        # A finished tile's slot is released (no longer full) a cycle after its last beat's issue,
        # when the banks read that beat's word: so the write side, which writes only slots that
        # are not full (a cycle after taking the beat), never writes a word in the cycle it is
        # read (the first word of the slot's next pixel is the last one read when a pixel has one
        # word). A read and a write of the same word in one cycle would give an undefined word in
        # the 512 x 36 block shape.
        with m.If(release):
            m.d.sync += full.bit_select(release_slot, 1).eq(0)

        # cycle t + 1: the memories read; what goes beside the data moves one register on
        v2 = Signal()
        side1 = Cat(lane1, last1, npix1, nchan1, signed1, tag1.as_value())
        side2 = Signal.like(side1)
        m.d.sync += [v2.eq(v1), side2.eq(side1)]

        # cycle t + 3: the banks' words, from their output registers; registered again before the
        # lane's byte is selected (45F t16's critical path ran from a bank's block RAM through that
        # selection; the 85F's registers stood across the die from the banks); cycle t + 4: the
        # tile's bytes. They and what goes beside them wait for the weights
        words3 = Cat(rd.data for _, rd in banks)
        words4 = Signal.like(words3, name="bank_words4", reset_less=True)
        v3, side3 = Signal(name="v3"), Signal.like(side2, name="side3")
        v4, side4 = Signal(name="v4"), Signal.like(side2, name="side4")
        m.d.sync += [v3.eq(v2), side3.eq(side2), words4.eq(words3), v4.eq(v3), side4.eq(side3)]
        lane4 = side4[:len(lane1)]
        valid, side = v4, side4
        acts = Cat(words4.word_select(k, 8 * L).word_select(lane4, 8) if L > 1 else words4.word_select(k, 8)
                   for k in range(len(banks)))
        assert self.ISSUE_TO_WEIGHT >= 4, "the tile's bytes are ready from t + 4 on"
        for k in range(5, self.ISSUE_TO_WEIGHT + 1):
            valid_k, side_k = Signal(name=f"v{k}"), Signal.like(side, name=f"side{k}")
            acts_k = Signal.like(acts, name=f"acts{k}")
            m.d.sync += [valid_k.eq(valid), side_k.eq(side), acts_k.eq(acts)]
            valid, side, acts = valid_k, side_k, acts_k
        _, last_w, npix_w, nchan_w, signed_w, tag_w = (
            side[lo:lo + len(f)] for lo, f in _offsets(lane1, last1, npix1, nchan1, signed1, tag1.as_value()))

        # cycle t + ISSUE_TO_WEIGHT: the beat into the output FIFO
        op = self.o.payload
        beat = Cat(acts, self.w_data, last_w, npix_w, nchan_w, signed_w, tag_w)
        m.submodules.out_fifo = out_fifo = SyncFIFOBuffered(width=len(beat), depth=self.OUT_FIFO_DEPTH)
        f_acts, f_w, f_last, f_npix, f_nchan, f_signed, f_tag = (
            out_fifo.r_data[lo:lo + len(f)]
            for lo, f in _offsets(acts, self.w_data, last_w, npix_w, nchan_w, signed_w, tag_w))
        m.d.comb += [
            out_fifo.w_data.eq(beat),
            out_fifo.w_en.eq(valid),
            self.o.valid.eq(out_fifo.r_rdy),
            out_fifo.r_en.eq(self.o.ready),
            pop.eq(out_fifo.r_rdy & self.o.ready),
            op.act.as_value().eq(f_acts),
            op.weight.as_value().eq(f_w),
            op.last.eq(f_last),
            op.n_pix.eq(f_npix),
            op.n_chan.eq(f_nchan),
            op.act_signed.eq(f_signed),
            op.tag.eq(f_tag),
        ]

        with m.If(self.o.valid & self.o.ready):
            m.d.sync += self.beats.eq(self.beats + 1)

        # a new layer: both sides from the top (the tile buffer contents do not matter; the read
        # pipeline and the output FIFO are empty, since the last layer's beats were all consumed)
        with m.If(self.start):
            m.d.sync += [full.eq(0), wslot.eq(0), wp.eq(0), b.eq(0), x.eq(0), y.eq(0), kept.eq(0), tile_first.eq(0),
                         a_wslot.eq(0), a_wp.eq(0), a_b.eq(0), a_kept.eq(0), a_kept_end.eq(P), a_ring.eq(0), a_turn.eq(0),
                         a_stale.eq(1),
                         b_rslot.eq(0), a_rslot.eq(0), pick_a.eq(0), g.eq(0), ci.eq(0), in_tile.eq(0),
                         self.beats.eq(0)]
        return m


def _offsets(*fields):
    """(bit offset, field) of each field of ``Cat(*fields)``."""
    lo = 0
    for f in fields:
        yield lo, f
        lo += len(f)
