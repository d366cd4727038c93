"""The engine: on-chip memories, a layer sequencer and the streaming datapath.

One bitstream runs any program the exporter writes: the host compiles a
``.shiftprog`` (:mod:`host.compile`) into memory images and writes them over the
link bus; the engine then executes the layer descriptors one after another.

Data flow of one layer (one *pass* of docs/NUMERICS.md section 8)::

    activation memory --reader--> ShiftUnit --> TileFeeder --> SystolicArray
          ^     |  (input tensor,              (tile buffer,     (P x Q MACs)
          |     |   raster order)               weights)              |
          |     +--residual read------------------------+             v
          |                                             +-------> OutputStage
          +--------------writer (address FIFO) <-----------------------+
                                  |
                                  +--> logits memory (RAW layers)

* The **reader** streams the input tensor (``pixels * in_beats`` words of ``L``
  bytes; for a strided 1x1 layer without a gather only the pixels on the
  stride grid) into the shift unit, which applies the layer's gather table (a plain
  shift, shift-im2col of a KxK stem, or the identity for a 1x1 layer).
* The **tile feeder** keeps the strided pixels, transposes ``P`` of them into
  its tile buffer and replays the tile once per group of ``Q`` output
  channels, with the weights.
* The **output path** turns each array beat (``L`` accumulators of one pixel)
  into an activation-memory address, reads the residual word at the same
  offset of the residual tensor, and hands both to the output stage (bias,
  requantisation, residual add, pool). An address FIFO, pushed when a beat
  enters the output stage and popped when its result leaves, tells the writer
  where each result goes; in pool mode only the map's last pixel produces a
  result (the pooled vector).
* A **fused CSC pass** (``desc.fused``) also runs the block's expand 1x1: a
  second reader streams the block input into the feeder's second port, and
  those tiles' results go into a ring of mid pixels that the main reader
  (into the shift unit) reads behind them; see docs/ENGINE.md.
* The **sequencer** loads a descriptor, copies the layer's shift schedule and
  per-channel table into the shift unit and the output stage, pulses
  ``start``, waits until the layer's last result is written, and stores the
  layer's cycle and array-beat counts.

Bus view (:class:`hw.link.BusSignature`, 32-bit word addresses): the regions of
:class:`hw.engine_params.Region`. Memory entries wider than 32 bits take
``parts_for(width)`` consecutive bus words, least significant first; a write
stores the entry when its last part arrives, so entries are written whole, in
part order. The memories are the host's only while the engine is idle; during
a run, bus writes to them are dropped and reads return 0 (CSRs and counters
stay accessible). Register map: :class:`hw.engine_params.Csr`.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from .engine_params import (DESC_WORDS, ENGINE_ID, ENGINE_VERSION, Csr, EngineParams, Region,
                            descriptor_layout, parts_for)
from .dp16kd import in_block_ram
from .dual_read import MAX_DEPTH, DualReadMemory
from .link import BusSignature
from .output_stage import Mode, OutputStage, TableEntry
from .skid import SkidBuffer
from .sliced_memory import SlicedMemory
from .systolic import SystolicArray
from .tile_feeder import TileFeeder, tag_layout

__all__ = ["Engine"]


def sched_is_sliced(params: EngineParams) -> bool:
    """Whether the engine's schedule memory is 18-bit DP16KD slices behind their output register.

    From 1024 words on, 1024 x 18 is the widest block shape anyway, so the slices take no more
    blocks than Yosys' own mapping; a shallower memory Yosys packs into 512 x 36 blocks, and the
    25F's has no block to spare: it is read through both ports of such blocks instead
    (:class:`hw.dual_read.DualReadMemory`), at Yosys' block count."""
    return params.sched_words >= 1024


class Engine(wiring.Component):
    """Memories + sequencer + datapath behind a link bus (see the module docstring).

    Members
    -------
    bus : In(BusSignature())
        The host's view (from :class:`hw.link.LinkEngine`).
    busy : Out(1)
        A run is in progress.
    done : Out(1)
        The last run finished (cleared by the next start).
    """

    #: words of the FIFO between the activation-memory reader and the shift unit (covers the
    #: read latency, so that the reader keeps up one word per cycle)
    READ_FIFO_DEPTH = 8
    #: register stages behind each slice of the two big memories' read data (hw/sliced_memory.py:
    #: with one, nextpnr placed it at the consumer's end of the die, 6.85 ns of route from its block
    #: RAM on the 85F; two split that way)
    MEMORY_OUTPUT_REGISTERS = 2
    #: cycles from an activation-memory read request to its data (port register, block RAM, two data
    #: registers: hw.sliced_memory.SlicedMemory with input and output registers)
    ACT_READ_LATENCY = 2 + MEMORY_OUTPUT_REGISTERS
    #: beats between the output path and the output stage (covers the beats in flight in the
    #: output path, so that the array drains one beat per cycle)
    BEAT_FIFO_DEPTH = 16
    #: words of the FIFO between the shift unit and the tile feeder (3: one word per cycle)
    SHIFT_FIFO_DEPTH = 3

    def __init__(self, params: EngineParams = EngineParams(), block_ram: str = "auto"):
        self.params = params
        #: how the sliced memories (and the shift unit's ring banks) build their block RAMs
        #: (hw.sliced_memory.SlicedMemory's block_ram: "auto" uses DP16KD primitives on ECP5,
        #: "model" simulates their wiring)
        self.block_ram = block_ram
        self.shift = params.shift_unit(block_ram=block_ram)
        self.array = SystolicArray(params.rows, params.cols, out_lanes=params.lanes,
                                   tag_width=tag_layout(params).size, max_cin=params.max_gather)
        self.stage = OutputStage(params.lanes, max_channels=params.max_cout,
                                 max_pool_pixels=params.max_out_pixels, fifo_depth=32, block_ram=block_ram)
        self.feeder = TileFeeder(params, self.array.input_layout, block_ram=block_ram)
        self.desc_layout = descriptor_layout(params, self.shift.cfg_layout)
        super().__init__({"bus": In(BusSignature()), "busy": Out(1), "done": Out(1)})

    def _credited_fifo(self, m, name, data, sink):
        """A FIFO in front of ``sink`` (a stream) for words read from the activation memory.

        Returns ``(issue, credits)``: the caller drives ``issue`` (a read is requested now; the
        word arrives ``ACT_READ_LATENCY`` cycles later on ``data`` and enters the FIFO) and may
        do so only while ``credits`` (places in the FIFO not yet taken by a word or a read in
        flight) is not 0. So the read port's enable and address depend on registers only.
        """
        depth = self.READ_FIFO_DEPTH
        credits = Signal(range(depth + 1), init=depth, name=f"{name}_credits")
        issue = Signal(name=f"{name}_issue")
        issued = [Signal(name=f"{name}_issued{k}") for k in range(self.ACT_READ_LATENCY)]
        fifo = m.submodules[f"{name}_fifo"] = SyncFIFOBuffered(width=len(data), depth=depth)
        pop = Signal(name=f"{name}_pop")
        m.d.comb += [
            fifo.w_data.eq(data),
            fifo.w_en.eq(issued[-1]),          # the word requested ACT_READ_LATENCY cycles ago
            sink.valid.eq(fifo.r_rdy),
            sink.payload.as_value().eq(fifo.r_data),
            fifo.r_en.eq(sink.ready),
            pop.eq(fifo.r_rdy & sink.ready),
        ]
        m.d.sync += [issued[0].eq(issue), credits.eq(credits - issue + pop)]
        m.d.sync += [issued[k].eq(issued[k - 1]) for k in range(1, len(issued))]
        return issue, credits

    def elaborate(self, platform):
        m = Module()
        p = self.params
        P, Q, L = p.rows, p.cols, p.lanes
        lg_l = ceil_log2(L)
        m.submodules.shift = shift = self.shift
        m.submodules.array = array = self.array
        m.submodules.stage = stage = self.stage
        m.submodules.feeder = feeder = self.feeder

        # ------------------------------------------------------------ memories
        # the two big memories as bit slices: no word multiplexer behind their block RAMs; both
        # register their port inputs (replicated per slice group) and each slice's read data twice,
        # so read data arrive four cycles after the request (ACT_READ_LATENCY; the feeder's
        # WEIGHT_READ_LATENCY)
        act = SlicedMemory(width=8 * L, depth=p.act_words, read_ports=2, name="act", input_registers=True,
                           output_registers=self.MEMORY_OUTPUT_REGISTERS, max_deep=p.slice_depth,
                           block_ram=self.block_ram)
        weight = SlicedMemory(width=8 * Q, depth=p.weight_words, read_ports=1, name="weight", input_registers=True,
                              output_registers=self.MEMORY_OUTPUT_REGISTERS, max_deep=p.slice_depth,
                              block_ram=self.block_ram)
        assert act.read_latency == self.ACT_READ_LATENCY
        assert weight.read_latency == self.feeder.WEIGHT_READ_LATENCY
        # the descriptors behind a register (on ECP5 the block RAM's own): their read data fan out to
        # the whole descriptor register (45F t14's critical path ran from the block RAM into it).
        # 16-bit slices: the widest DP16KD shape (1024 x 18), whatever the depth
        desc_mem = SlicedMemory(width=32, depth=p.max_layers * DESC_WORDS, read_ports=1, name="desc_mem",
                                output_registers=1, slice_bits=16, block_ram=self.block_ram)
        # the shift schedules likewise where that costs no block RAM (t45's critical path ran from a
        # schedule block RAM, 4.2 ns away, into its host-read entry register): from 1024 words on in
        # 18-bit slices, below in blocks read through both ports (hw.dual_read; the host writes
        # them only while the engine is stopped, and no read is pending then)
        slot_bits = shift.slot_layout.size
        if sched_is_sliced(p):
            sched = SlicedMemory(width=slot_bits, depth=p.sched_words, read_ports=1, name="sched",
                                 output_registers=1, slice_bits=18, block_ram=self.block_ram)
            s_wr, (s_rd,) = sched.write, sched.reads
            sched_latency = sched.read_latency
        elif in_block_ram(slot_bits, p.sched_words):
            sched = DualReadMemory(width=slot_bits, depth=p.sched_words, name="sched", block_ram=self.block_ram)
            s_wr, s_rd = sched.write, sched.read
            sched_latency = sched.read_latency
        else:
            sched = Memory(shape=shift.slot_layout.size, depth=p.sched_words, init=[])
            s_wr, s_rd = sched.write_port(), sched.read_port(transparent_for=())
            sched_latency = 1
        # the channel tables behind a register (on ECP5 the block RAM's own, in 18-bit slices: as many
        # blocks as yosys maps): t37's critical path ran from a table block RAM into the host read
        table = SlicedMemory(width=TableEntry.size, depth=p.table_words, read_ports=1, name="table",
                             output_registers=1, slice_bits=18, block_ram=self.block_ram)
        logits = Memory(shape=32 * L, depth=p.logit_words, init=[])
        # the layer counters: read only by the host, through both ports of their block behind its output
        # registers (hw.dual_read): 45F t30's critical path ran from the inferred block RAM (no output
        # register) 3.3 ns across the die to the first of two registers behind it. A counter write
        # (two cycles per layer) takes the ports; the host's read is repeated every cycle of its
        # six, so it still returns the word
        if 2 * p.max_layers <= MAX_DEPTH:
            counters = DualReadMemory(width=32, depth=2 * p.max_layers, name="counters", block_ram=self.block_ram)
            c_wr, c_rd = counters.write, counters.read
        else:
            counters = SlicedMemory(width=32, depth=2 * p.max_layers, name="counters", output_registers=1,
                                    slice_bits=16, block_ram=self.block_ram)
            c_wr, c_rd = counters.write, counters.reads[0]
        for name, mem in (("act", act), ("weight", weight), ("desc_mem", desc_mem), ("sched", sched),
                          ("table", table), ("logits", logits), ("counters", counters)):
            m.submodules[name] = mem
        act_wr, (act_rd, act_res) = act.write, act.reads
        w_wr, (w_rd,) = weight.write, weight.reads
        d_wr, (d_rd,) = desc_mem.write, desc_mem.reads
        t_wr, (t_rd,) = table.write, table.reads
        l_wr, l_rd = logits.write_port(), logits.read_port(transparent_for=())

        running = Signal()
        done = Signal()
        m.d.comb += [self.busy.eq(running), self.done.eq(done)]

        # ------------------------------------------------------------ sequencer state
        n_layers = Signal(range(p.max_layers + 1))
        layer = Signal(range(p.max_layers + 1))
        desc_bits = Signal(32 * DESC_WORDS)
        desc = data.View(self.desc_layout, desc_bits[:self.desc_layout.size])
        total_cycles = Signal(32)
        layer_cycles = Signal(32)
        runs = Signal(32)
        start = Signal()           # one-cycle pulse into the datapath at the start of a layer
        in_run = Signal()          # the layer's datapath is active (RUN phase)
        writes = Signal.like(desc.out_beats)

        # ------------------------------------------------------------ reader
        # Reads shift.height rows of shift.width pixels of in_beats words; after each pixel it skips
        # rd_skip words and after each row rd_row_skip more (both 0 for a plain raster read; a strided
        # 1x1 layer without a gather reads only the pixels it keeps). Reads are issued against credits
        # into a small FIFO in front of the shift unit, so the block-RAM enable and address depend
        # on registers only (no combinational path from the shift unit's ready into the memory).
        rd_addr = Signal.like(act_rd.addr)
        rd_w = Signal.like(desc.shift.in_beats)
        rd_x = Signal.like(desc.shift.width)
        rd_y = Signal.like(desc.shift.height)
        rd_active = Signal()
        # a register slice between the reader's FIFO and the shift unit: the shift unit's ready
        # (its ring-room compares) ends at the slice instead of running on into the FIFO's level
        # and the read credits (the 85F's and 45F t22's paths)
        m.submodules.shift_in = shift_in = SkidBuffer(shift.i.payload.shape())
        wiring.connect(m, shift_in.o, shift.i)
        rd_issue, rd_credits = self._credited_fifo(m, "rd", act_rd.data, shift_in.i)
        # Fused CSC passes: a second reader streams the block input (the expand half's) straight
        # into the feeder. The two readers share the read port, taking turns when both can issue.
        # The main reader reads the mid ring, a pixel only once the expand half has written it
        # (rd_pix < mid_ready) and wrapping from ring_end back to in_base.
        rd_pix = Signal(range(p.max_out_pixels + 1))     # pixels the main reader has fully requested
        mid_ready = Signal.like(rd_pix)                   # mid pixels written (fused passes)
        # rd_pix < mid_ready one cycle late (the write passes the memory's port register first),
        # kept as a register: computed from the next rd_pix and mid_ready, it equals that compare of
        # this cycle's rd_pix and last cycle's mid_ready (45F t23's critical path ran from rd_pix
        # through the compare into the issue)
        mid_ok = Signal()
        a_addr_rd = Signal.like(act_rd.addr)
        a_left = Signal.like(desc.a_in_words)
        a_active = Signal()
        a_issue, a_credits = self._credited_fifo(m, "a", act_rd.data, feeder.ia)
        b_want, a_want, rd_turn = Signal(), Signal(), Signal()
        m.d.comb += [
            b_want.eq(rd_active & (rd_credits != 0) & (~desc.fused | mid_ok)),
            a_want.eq(a_active & (a_credits != 0)),
            a_issue.eq(a_want & (~b_want | rd_turn)),
            rd_issue.eq(b_want & ~a_issue),
        ]
        with m.If(a_want & b_want):
            m.d.sync += rd_turn.eq(~rd_turn)
        with m.If(start):
            m.d.sync += [a_addr_rd.eq(desc.a_in_base), a_left.eq(desc.a_in_words),
                         a_active.eq(desc.fused & (desc.a_in_words != 0))]
        with m.Elif(a_issue):
            m.d.sync += [a_addr_rd.eq(a_addr_rd + 1), a_left.eq(a_left - 1)]
            with m.If(a_left == 1):
                m.d.sync += a_active.eq(0)

        # The next address in one adder: the three steps (next word, next pixel, next row), the
        # last word/pixel/row indices and the wrap points (rd_addr == ring_end - step: the next
        # address would be ring_end) are the layer's constants, registered at start; the step is
        # chosen by two comparisons of registers (t26's critical path was the adder chain
        # rd_addr + 1 + rd_skip + rd_row_skip and the wrap comparison behind it).
        step_pix = Signal(len(rd_addr) + 1)
        step_row = Signal(len(rd_addr) + 2)
        wrap_shape = signed(max(len(desc.ring_end), len(step_row)) + 1)
        wrap_word, wrap_pix, wrap_row = (Signal(wrap_shape, name=f"rd_wrap_{n}") for n in ("word", "pix", "row"))
        last_w, last_x, last_y = Signal.like(rd_w), Signal.like(rd_x), Signal.like(rd_y)
        # the indices before the last (wrapping to all ones for a single word or pixel, where they are
        # never compared): the counters' "more to come" flags are equalities of registers
        before_last_w, before_last_x = Signal.like(rd_w), Signal.like(rd_x)
        # the sums of three descriptor fields in two register steps, every cycle: the descriptor
        # is complete from the first LOAD_TABLES cycle on, two cycles before the reader needs them
        wrap_pix_pre = Signal(wrap_shape)
        step_pix_pre = Signal.like(step_pix)
        m.d.sync += [wrap_pix_pre.eq(desc.ring_end - 1 - desc.rd_skip), step_pix_pre.eq(1 + desc.rd_skip),
                     wrap_row.eq(wrap_pix_pre - desc.rd_row_skip), step_row.eq(step_pix_pre + desc.rd_row_skip)]
        with m.If(start):
            m.d.sync += [
                step_pix.eq(1 + desc.rd_skip),
                wrap_word.eq(desc.ring_end - 1),
                wrap_pix.eq(desc.ring_end - 1 - desc.rd_skip),
                last_w.eq(desc.shift.in_beats - 1),
                last_x.eq(desc.shift.width - 1),
                before_last_w.eq(desc.shift.in_beats - 2),
                before_last_x.eq(desc.shift.width - 2),
                last_y.eq(desc.shift.height - 1),
            ]
        # rd_w != last_w and rd_x != last_x, kept as registers beside the counters (45F t25's
        # critical path ran from rd_w through the compare and the step choice into rd_addr)
        w_more, x_more = Signal(), Signal()
        rd_step = Signal.like(step_row)
        rd_wrap_at = Signal(wrap_shape)
        m.d.comb += [
            rd_step.eq(Mux(w_more, 1, Mux(x_more, step_pix, step_row))),
            rd_wrap_at.eq(Mux(w_more, wrap_word, Mux(x_more, wrap_pix, wrap_row))),
        ]

        with m.If(start):
            m.d.sync += [rd_addr.eq(desc.in_base), rd_w.eq(0), rd_x.eq(0), rd_y.eq(0), rd_active.eq(1),
                         rd_pix.eq(0), w_more.eq(desc.shift.in_beats != 1), x_more.eq(desc.shift.width != 1)]
        with m.Elif(rd_issue):
            # wrapped at the end of the mid ring (ring_end = act_words, never reached, for an
            # ordinary pass)
            m.d.sync += rd_addr.eq(Mux(rd_addr == rd_wrap_at, desc.in_base, rd_addr + rd_step))
            with m.If(w_more):
                m.d.sync += [rd_w.eq(rd_w + 1), w_more.eq(rd_w != before_last_w)]
            with m.Else():
                m.d.sync += [rd_w.eq(0), w_more.eq(last_w != 0), rd_pix.eq(rd_pix + 1)]
                with m.If(x_more):
                    m.d.sync += [rd_x.eq(rd_x + 1), x_more.eq(rd_x != before_last_x)]
                with m.Else():
                    m.d.sync += [rd_x.eq(0), x_more.eq(last_x != 0), rd_y.eq(rd_y + 1)]
                    with m.If(rd_y == last_y):
                        m.d.sync += rd_active.eq(0)
        rd_idle = Signal()
        m.d.comb += rd_idle.eq(~rd_active & (rd_credits == self.READ_FIFO_DEPTH) & ~shift_in.busy
                               & ~a_active & (a_credits == self.READ_FIFO_DEPTH))
        # the expand half may fill the ring up to ring_pixels past the main reader's position
        m.d.sync += feeder.a_room_end.eq(rd_pix + desc.ring_pixels)

        # the shift unit's configuration: the layer's while it runs, all-zero (idle) otherwise
        shift_cfg = Signal(len(desc.shift.as_value()))
        m.d.comb += shift.cfg.eq(shift_cfg)

        # ------------------------------------------------------------ shift unit -> feeder -> array
        # a small FIFO between the shift unit and the feeder: the shift unit's ready (the clock
        # enable of its ring memories) then comes from the FIFO's level register, not from the
        # feeder's slot and admission logic
        m.submodules.shift_fifo = shift_fifo = SyncFIFOBuffered(width=8 * L, depth=self.SHIFT_FIFO_DEPTH)
        fc = feeder.cfg
        m.d.comb += [
            shift_fifo.w_en.eq(shift.o.valid),
            shift_fifo.w_data.eq(shift.o.payload.as_value()),
            shift.o.ready.eq(shift_fifo.w_rdy),
            feeder.i.valid.eq(shift_fifo.r_rdy),
            feeder.i.payload.as_value().eq(shift_fifo.r_data),
            shift_fifo.r_en.eq(feeder.i.ready),
            fc.width.eq(desc.shift.width),
            fc.height.eq(desc.shift.height),
            fc.stride_log2.eq(desc.stride_log2),
            fc.g_words.eq((desc.c_gather + (L - 1)) >> lg_l),
            fc.c_gather.eq(desc.c_gather),
            fc.c_out.eq(desc.c_out),
            fc.groups.eq(desc.groups),
            fc.out_pixels.eq(desc.out_pixels),
            fc.w_base.eq(desc.w_base),
            fc.act_signed.eq(desc.act_signed),
            fc.fused.eq(desc.fused),
            fc.a_g_words.eq(desc.a_in_beats),
            fc.a_c_gather.eq(desc.a_c_gather),
            fc.a_c_out.eq(desc.a_c_out),
            fc.a_groups.eq(desc.a_groups),
            fc.a_pixels.eq(desc.a_pixels),
            fc.a_w_base.eq(desc.a_w_base),
            fc.a_act_signed.eq(desc.a_act_signed),
            fc.ring_pixels.eq(desc.ring_pixels),
            feeder.start.eq(start),
            feeder.w_data.eq(w_rd.data),
            array.i.valid.eq(feeder.o.valid),
            array.i.payload.eq(feeder.o.payload),
            feeder.o.ready.eq(array.i.ready),
        ]

        # ------------------------------------------------------------ output path
        # Eight register stages: Y registers the array beat with its absolute channel and pixel,
        # M the pixel's word offset (the one multiply), Z the beat's word offset, A the output and
        # residual addresses (45F t20's critical path was the multiply and its add in one stage); the residual
        # read returns its word ACT_READ_LATENCY (4) stages later, in E, and E's beat, address and
        # residual go into the beat FIFO in front of the output stage. Every memory address and enable here starts at a
        # flip-flop.
        mode = desc.out.mode
        ao = array.o.payload
        tag = data.View(tag_layout(p), ao.tag)

        def stage_regs(prefix):
            return dict(valid=Signal(name=f"{prefix}_valid"), acc=Signal.like(ao.acc, name=f"{prefix}_acc"),
                        mask=Signal.like(ao.mask, name=f"{prefix}_mask"),
                        chan=Signal.like(stage.i.payload.chan, name=f"{prefix}_chan"),
                        first=Signal(name=f"{prefix}_first"), last=Signal(name=f"{prefix}_last"),
                        ctx=Signal(name=f"{prefix}_ctx"))

        y, mul, z, a = (stage_regs(n) for n in ("y", "m", "z", "a"))
        y_pix = Signal(range(p.max_out_pixels + P))
        y_words = Signal(max(len(desc.shift.in_beats), len(desc.out_words)))      # words per pixel
        z_word_off = Signal(range(p.max_out_pixels * (p.max_cout // L) + 1))
        m_pix_off = Signal.like(z_word_off)
        a_addr = Signal(max(len(act_wr.addr), len(l_wr.addr)))
        a_res_addr = Signal.like(act_res.addr)
        # The stages never stall (no enable fans out over them); the array may hand over a
        # beat only while the beat FIFO behind E (the last stage) has room for it and every beat in flight
        # (credits, a register: array.o.ready is one LUT of flip-flops).
        D = self.BEAT_FIFO_DEPTH
        out_credits = Signal(range(D + 1), init=D)
        m.d.comb += array.o.ready.eq(out_credits != 0)

        def advance(dst, src_valid, values):
            m.d.sync += dst["valid"].eq(src_valid)
            with m.If(src_valid):
                m.d.sync += [dst[k].eq(v) for k, v in values.items()]

        array_take = Signal()
        m.d.comb += array_take.eq(array.o.valid & array.o.ready)
        # ctx 1: a beat of a fused pass's expand half, written into the mid ring (pix0 is its ring
        # pixel) with the mid's words per pixel; its output-stage entries start at a_table_off
        advance(y, array_take, dict(acc=ao.acc, mask=ao.mask, chan=tag.group * Q + ao.chan, ctx=tag.ctx))
        with m.If(array_take):
            m.d.sync += [y_pix.eq(tag.pix0 + ao.pixel),
                         y_words.eq(Mux(tag.ctx, desc.shift.in_beats, desc.out_words))]
        keys = ("acc", "mask", "chan", "first", "last", "ctx")
        # the layer's last output pixel, a register (the descriptor is static while the layer runs):
        # the map's last beat is an equality of registers, not an adder and a compare behind y_pix
        last_out_pix = Signal.like(desc.out_pixels)
        m.d.sync += last_out_pix.eq(desc.out_pixels - 1)
        advance(mul, y["valid"], dict(acc=y["acc"], mask=y["mask"], chan=y["chan"], first=y_pix == 0,
                                      last=y_pix == last_out_pix, ctx=y["ctx"]))
        with m.If(y["valid"]):
            m.d.sync += m_pix_off.eq(y_pix * y_words)
        advance(z, mul["valid"], {k: mul[k] for k in keys})
        with m.If(mul["valid"]):
            m.d.sync += z_word_off.eq(m_pix_off + (mul["chan"] >> lg_l))
        advance(a, z["valid"], {k: z[k] for k in keys})
        with m.If(z["valid"]):
            m.d.sync += [
                a_addr.eq(Mux(z["ctx"], desc.in_base + z_word_off,
                              Mux(mode == Mode.POOL, desc.out_base + (z["chan"] >> lg_l),
                                  Mux(mode == Mode.RAW, z_word_off, desc.out_base + z_word_off)))),
                a_res_addr.eq(desc.res_base + z_word_off),
            ]
        # B, C, D, E (ACT_READ_LATENCY stages): the beat and its output address wait for the residual
        # word; the last of them moves an expand beat's channel to its table entries
        tail, tail_addr = a, a_addr
        waits = []
        for k in range(self.ACT_READ_LATENCY):
            name = chr(ord("b") + k)
            st, st_addr = stage_regs(name), Signal.like(a_addr, name=f"{name}_addr")
            values = {key: tail[key] for key in keys}
            if k == self.ACT_READ_LATENCY - 1:
                values["chan"] = tail["chan"] + Mux(tail["ctx"], desc.a_table_off, 0)
            advance(st, tail["valid"], values)
            with m.If(tail["valid"]):
                m.d.sync += st_addr.eq(tail_addr)
            waits.append(st)
            tail, tail_addr = st, st_addr
        with m.If(start):
            m.d.sync += [st["valid"].eq(0) for st in (y, mul, z, a, *waits)]
        m.d.comb += [act_res.addr.eq(a_res_addr), act_res.en.eq(1)]

        # beat FIFO: E's beat with its output address and residual word, into the output stage
        fields = [tail["acc"], tail["mask"], tail["chan"], tail["first"], tail["last"], tail["ctx"], tail_addr,
                  act_res.data]
        m.submodules.beat_fifo = beat_fifo = SyncFIFOBuffered(width=len(Cat(*fields)), depth=D)
        m.d.comb += [beat_fifo.w_data.eq(Cat(*fields)), beat_fifo.w_en.eq(tail["valid"])]
        f_acc, f_mask, f_chan, f_first, f_last, f_ctx, f_addr, f_res = (
            Signal.like(f, name=f"fifo_{n}") for f, n in
            zip(fields, ("acc", "mask", "chan", "first", "last", "ctx", "addr", "res")))
        m.d.comb += Cat(f_acc, f_mask, f_chan, f_first, f_last, f_ctx, f_addr, f_res).eq(beat_fifo.r_data)
        beat_pop = Signal()
        m.d.comb += [beat_fifo.r_en.eq(stage.i.ready), beat_pop.eq(beat_fifo.r_rdy & stage.i.ready)]
        m.d.sync += out_credits.eq(out_credits - array_take + beat_pop)

        sp = stage.i.payload
        m.d.comb += [
            stage.i.valid.eq(beat_fifo.r_rdy),
            sp.acc.eq(f_acc), sp.chan.eq(f_chan), sp.mask.eq(f_mask),
            sp.pool_first.eq(f_first), sp.pool_last.eq(f_last), sp.last.eq(0), sp.alt.eq(f_ctx),
            stage.r.valid.eq(beat_fifo.r_rdy),
            stage.cfg.eq(desc.out),
        ]
        for k in range(L):
            byte = f_res[8 * k:8 * k + 8]
            m.d.comb += stage.r.payload[k].eq(Mux(desc.res_signed, byte.as_signed(), byte))

        m.submodules.addr_fifo = addr_fifo = SyncFIFOBuffered(width=len(a_addr) + 1, depth=64)
        m.d.comb += [
            addr_fifo.w_data.eq(Cat(f_addr, f_ctx)),
            addr_fifo.w_en.eq(stage.i.valid & stage.i.ready & ((mode != Mode.POOL) | f_last | f_ctx)),
            addr_fifo.r_en.eq(stage.o.valid),
            stage.o.ready.eq(1),
        ]

        so = stage.o.payload
        out_bytes = Cat(Mux(so.mask[k], so.data[k][:8], 0) for k in range(L))
        out_words = Cat(Mux(so.mask[k], so.data[k], 0) for k in range(L))
        result = Signal()
        m.d.comb += result.eq(stage.o.valid & in_run)
        with m.If(start):
            m.d.sync += writes.eq(0)
        with m.Elif(result):
            m.d.sync += writes.eq(writes + 1)
        # results are written one cycle later from registers (the write enables of the activation
        # memory reach every block RAM of it, so they start at a flip-flop)
        wr_act, wr_raw, wr_mid = Signal(), Signal(), Signal()
        wr_addr = Signal(len(a_addr))
        wr_bytes = Signal.like(out_bytes)
        wr_words = Signal.like(out_words)
        res_ctx = addr_fifo.r_data[-1]
        m.d.sync += [
            wr_act.eq(result & addr_fifo.r_rdy & ((mode != Mode.RAW) | res_ctx)),
            wr_raw.eq(result & addr_fifo.r_rdy & (mode == Mode.RAW) & ~res_ctx),
            wr_mid.eq(result & addr_fifo.r_rdy & res_ctx),
            wr_addr.eq(addr_fifo.r_data[:-1]), wr_bytes.eq(out_bytes), wr_words.eq(out_words),
        ]
        # mid pixels written by the expand half: whole tiles (a tile's words arrive group by group,
        # so its pixels are complete only with its last word), all of them with the last word.
        # The main reader sees the count a cycle later (mid_ok), when the write has passed the
        # memory's port register.
        a_written = Signal.like(desc.a_out_beats)
        a_tile_cnt = Signal.like(desc.a_tile_words)
        # the last indices as registers (the descriptor is static from before start on), so the
        # end tests are equalities of registers, not adders and compares in front of mid_ready
        a_last_beat, a_last_tile_word = Signal.like(a_written), Signal.like(a_tile_cnt)
        m.d.sync += [a_last_beat.eq(desc.a_out_beats - 1), a_last_tile_word.eq(desc.a_tile_words - 1)]
        with m.If(start):
            m.d.sync += [a_written.eq(0), a_tile_cnt.eq(0), mid_ready.eq(0)]
        with m.Elif(wr_mid):
            m.d.sync += a_written.eq(a_written + 1)
            with m.If(a_written == a_last_beat):
                m.d.sync += mid_ready.eq(desc.a_pixels)
            with m.Elif(a_tile_cnt == a_last_tile_word):
                m.d.sync += [a_tile_cnt.eq(0), mid_ready.eq(mid_ready + P)]
            with m.Else():
                m.d.sync += a_tile_cnt.eq(a_tile_cnt + 1)
        pix_done = rd_issue & ~w_more
        m.d.sync += mid_ok.eq(~start & Mux(pix_done, rd_pix + 1 < mid_ready, rd_pix < mid_ready))

        # ------------------------------------------------------------ bus (host side)
        bus = self.bus
        region = bus.addr[24:28]
        offset = bus.addr[:24]
        regions = {  # region: (width, write port or None, read port, its read latency)
            Region.ACT: (8 * L, act_wr, act_rd, act.read_latency),
            Region.WEIGHT: (8 * Q, w_wr, w_rd, weight.read_latency),
            Region.DESC: (32, d_wr, d_rd, desc_mem.read_latency),
            Region.SCHED: (shift.slot_layout.size, s_wr, s_rd, sched_latency),
            Region.TABLE: (TableEntry.size, t_wr, t_rd, table.read_latency),
            Region.LOGITS: (32 * L, l_wr, l_rd, 1),
            Region.COUNTERS: (32, None, c_rd, counters.read_latency),
        }
        max_parts = max(parts_for(w) for w, *_ in regions.values())
        staging = Signal(32 * max_parts)
        # a read's request travels through read_pending[0..]: the slowest memory's read (the big
        # memories' port register, block-RAM read and data register), then the region's word
        # register; read_done: the register after the region multiplexer
        slowest_read = max(latency for *_, latency in regions.values())
        read_pending = [Signal(name=f"read_pending{k}") for k in range(slowest_read + 1)]
        read_done = Signal()
        host_owns = ~running

        # bus defaults for every port (the engine overrides below while running)
        bus_read = Signal()
        m.d.comb += bus_read.eq(bus.valid & ~bus.w_en & ~Cat(*read_pending).any() & ~read_done)
        csr_data = Signal(32)
        r_data_sel = Signal(32)
        bus_part = Signal(range(max_parts))   # part of a wide entry this bus word is
        for reg, (width, wr, rd, latency) in regions.items():
            k = parts_for(width)
            lg_k = ceil_log2(k)
            entry = offset >> lg_k
            part = offset[:lg_k] if lg_k else Const(0, 1)
            hit = region == reg
            if wr is not None:
                w_addr, w_en = entry, bus.valid & bus.w_en & hit & (part == k - 1)
                w_data = Cat(staging[:32 * (k - 1)], bus.w_data)[:width] if k > 1 else bus.w_data[:width]
                if reg not in (Region.ACT, Region.WEIGHT):
                    # the write reaches the memory a cycle after the bus write, from registers (the
                    # activations and weights register their port inputs themselves): t50's critical
                    # path ran from the link's state through this decode into the write enables of
                    # the channel table's blocks. A start (decoded a cycle late) or a read of the word
                    # (answered cycles later, its memory read repeated every cycle) comes after it
                    w_addr_q = Signal.like(wr.addr, name=f"host_w_addr{reg}")
                    w_data_q = Signal.like(wr.data, name=f"host_w_data{reg}", reset_less=True)
                    w_en_q = Signal(name=f"host_w_en{reg}")
                    m.d.sync += [w_addr_q.eq(w_addr), w_data_q.eq(w_data), w_en_q.eq(host_owns & w_en)]
                    w_addr, w_en, w_data = w_addr_q, w_en_q, w_data_q
                with m.If(host_owns):
                    m.d.comb += [wr.addr.eq(w_addr), wr.data.eq(w_data), wr.en.eq(w_en)]
            with m.If(host_owns | (reg == Region.COUNTERS)):
                # while the host owns a port it reads continuously (the bus holds the address for
                # the whole request): the enable is a constant, not the bus decode (t25's critical
                # path ended at a table block RAM's clock enable)
                m.d.comb += [rd.addr.eq(entry), rd.en.eq(1)]
            with m.If(hit):
                m.d.comb += bus_part.eq(part)
            # each region's word registered next to its memory, then the region multiplexer: the
            # block RAMs' read data (about 5.8 ns clock-to-out) never meets the multiplexer directly.
            # An entry read straight from a block RAM (latency 1) is registered whole before its
            # word is selected and registered again (t31's critical path ran from the table's block
            # RAM through that selection; the counters' block RAM led t46's logic ranking); the
            # other memories' data are registered already. Neither adds to the read's six cycles,
            # which the big memories' latency sets.
            entry_data = rd.data
            if latency == 1:
                entry_data = Signal(width, name=f"host_rd_entry{reg}", reset_less=True)
                m.d.sync += entry_data.eq(rd.data)
            padded = Cat(entry_data, Const(0, 32 * k - width)) if 32 * k > width else entry_data
            word_q = Signal(32, name=f"host_rd_region{reg}")
            m.d.sync += word_q.eq(padded.word_select(part, 32) if k > 1 else padded)
            with m.If(hit):
                m.d.comb += r_data_sel.eq(word_q)
        with m.If(bus.valid & bus.w_en):
            m.d.sync += staging.word_select(bus_part, 32).eq(bus.w_data)

        params_words = p.to_words()
        with m.Switch(offset[:8]):
            with m.Case(Csr.ID):
                m.d.comb += csr_data.eq(ENGINE_ID)
            with m.Case(Csr.VERSION):
                m.d.comb += csr_data.eq(ENGINE_VERSION)
            for i, w in enumerate(params_words):
                with m.Case(Csr.PARAMS + i):
                    m.d.comb += csr_data.eq(w)
            with m.Case(Csr.STATUS):
                m.d.comb += csr_data.eq(Cat(running, done, Const(0, 14), layer))
            with m.Case(Csr.TOTAL_CYCLES):
                m.d.comb += csr_data.eq(total_cycles)
            with m.Case(Csr.RUNS):
                m.d.comb += csr_data.eq(runs)

        # writes complete in their cycle; reads answer six cycles later (port register, memory
        # read, two data registers, the region's word register, then a register after the region
        # multiplexer)
        read_data = Signal(32)
        data_ok = host_owns | (region == Region.COUNTERS) | (region == Region.CSR)
        with m.If(bus.valid & bus.w_en):
            m.d.comb += bus.ready.eq(1)
        with m.Elif(bus.valid & read_done):
            m.d.comb += [bus.ready.eq(1), bus.r_data.eq(read_data)]
        m.d.sync += [
            read_pending[0].eq(bus_read),
            *(read_pending[k].eq(read_pending[k - 1]) for k in range(1, len(read_pending))),
            read_done.eq(read_pending[-1]),
            read_data.eq(Mux(region == Region.CSR, csr_data, Mux(data_ok, r_data_sel, 0))),
        ]

        # a start request (a write of the layer count to CONTROL) is decoded into registers and acted
        # on a cycle later: 45F t15's critical path ran from the bus's write data through this decode
        # into the sequencer's state. The host's next request is answered cycles later, when the run
        # has started.
        start_request = Signal()
        start_layers = Signal.like(n_layers)
        m.d.sync += [
            start_request.eq(bus.valid & bus.w_en & (region == Region.CSR) & (offset == Csr.CONTROL)
                             & ~running & (bus.w_data != 0) & (bus.w_data <= p.max_layers)),
            start_layers.eq(bus.w_data),
        ]

        # the engine's side of the memory ports (the host's side is above, while not running)
        with m.If(running):
            m.d.comb += [
                act_rd.addr.eq(Mux(a_issue, a_addr_rd, rd_addr)), act_rd.en.eq(1),
                w_rd.addr.eq(feeder.w_addr), w_rd.en.eq(feeder.w_en),
                act_wr.addr.eq(wr_addr), act_wr.data.eq(wr_bytes), act_wr.en.eq(wr_act),
                l_wr.addr.eq(wr_addr), l_wr.data.eq(wr_words), l_wr.en.eq(wr_raw),
            ]

        # ------------------------------------------------------------ sequencer
        # The descriptor, schedule and table reads are addressed from registers, computed every cycle
        # from the counters of the cycle before (45F t32's latest endpoints after the host's write
        # decode: the address adders in front of the schedule's and descriptors' block RAMs), so a
        # word is read a cycle after its counter value.
        lat_d = 1 + desc_mem.read_latency               # from the counter k to the word on d_rd.data
        k = Signal(range(DESC_WORDS + lat_d + 1))
        d_raddr = Signal.like(d_rd.addr)
        m.d.sync += d_raddr.eq(layer * DESC_WORDS + k)
        ts = Signal(range(p.max_gather + 2))
        tt = Signal(range(p.max_cout + 2))
        s_raddr, t_raddr = Signal.like(s_rd.addr), Signal.like(t_rd.addr)
        m.d.sync += [s_raddr.eq(desc.sched_base + ts), t_raddr.eq(desc.table_base + tt)]
        # a read (valid flag, word index) in flight, then delayed with its data: the word comes out of
        # the memory `latency` cycles after the read and passes one register of ours before it is
        # written (the words cross the die from the engine's memories to the shift unit's and output
        # stage's blocks; t50's endpoints after the host's write decode were the tables' write data)
        ts_v, tt_v = Signal(), Signal()                 # a read this cycle (LOAD_TABLES only)
        ts_i, tt_i = Signal.like(shift.tab.payload.addr), Signal.like(stage.tbl.payload.chan)
        m.d.sync += [ts_v.eq(0), tt_v.eq(0)]

        def delayed(valid, index, data, latency, name):
            vs, idx = [valid], [index]
            for j in range(latency + 1):
                v_next = Signal(name=f"{name}_v{j + 1}")
                i_next = Signal.like(index, name=f"{name}_i{j + 1}")
                m.d.sync += [v_next.eq(vs[-1]), i_next.eq(idx[-1])]
                vs.append(v_next)
                idx.append(i_next)
            word = Signal.like(data, name=f"{name}_word", reset_less=True)
            m.d.sync += word.eq(data)
            return vs, idx[-1], word

        s_vs, s_index, s_word = delayed(ts_v, ts_i, s_rd.data, sched_latency, "sched_load")
        t_vs, t_index, t_word = delayed(tt_v, tt_i, t_rd.data, table.read_latency, "table_load")
        with m.If(running):
            m.d.sync += [total_cycles.eq(total_cycles + 1), layer_cycles.eq(layer_cycles + 1)]
        # whether the layer is the run's last, a register (layer is unchanged from COUNT0 to COUNT1,
        # where it is used): the adder and compare stay off the paths into the state and run flags
        final_layer = Signal()
        m.d.sync += final_layer.eq(layer + 1 == n_layers)
        # the layer's end (every result word written, the datapath idle), a register: a cycle late,
        # but every term stays true once true. 45F t32's endpoints: the busy flags -> the state and
        # the shift unit's cfg register enables. Only RUN cycles count (`in_run`), so the value of
        # the START cycle, when `writes` still holds the last layer's count, never ends a layer
        layer_done = Signal()
        m.d.sync += layer_done.eq(in_run & (writes == desc.out_beats) & rd_idle & ~shift.busy & ~stage.busy
                                  & ~start)

        with m.FSM():
            with m.State("IDLE"):
                with m.If(start_request):
                    m.d.sync += [n_layers.eq(start_layers), layer.eq(0), running.eq(1), done.eq(0),
                                 total_cycles.eq(0), layer_cycles.eq(0), k.eq(0)]
                    m.next = "LOAD_DESC"
            with m.State("LOAD_DESC"):
                # word k is addressed in cycle k (d_raddr), read in k + 1 and stored lat_d cycles
                # after k (the read of the first cycle, from the previous state's address, is dropped)
                m.d.comb += [d_rd.addr.eq(d_raddr), d_rd.en.eq(1)]
                m.d.sync += k.eq(k + 1)
                with m.If(k >= lat_d):
                    m.d.sync += desc_bits.word_select((k - lat_d)[:len(k)], 32).eq(d_rd.data)
                with m.If(k == DESC_WORDS + lat_d - 1):
                    m.d.sync += [ts.eq(0), tt.eq(0)]
                    m.next = "LOAD_TABLES"
            with m.State("LOAD_TABLES"):
                # one read per cycle from each memory (of the word its counter named in the cycle
                # before); the block RAMs' data go to a register only (45F t17's critical path ran
                # from the channel table's block RAM into the output stage's tables)
                m.d.comb += [s_rd.addr.eq(s_raddr), s_rd.en.eq(1), t_rd.addr.eq(t_raddr), t_rd.en.eq(1)]
                more_s = ts < desc.shift.slots
                more_t = tt < desc.table_len
                m.d.sync += [ts_v.eq(more_s), ts_i.eq(ts), tt_v.eq(more_t), tt_i.eq(tt)]
                with m.If(more_s):
                    m.d.sync += ts.eq(ts + 1)
                with m.If(more_t):
                    m.d.sync += tt.eq(tt + 1)
                m.d.comb += [
                    shift.tab.valid.eq(s_vs[-1]), shift.tab.payload.addr.eq(s_index),
                    shift.tab.payload.data.eq(s_word),
                    stage.tbl.valid.eq(t_vs[-1]), stage.tbl.payload.chan.eq(t_index),
                    stage.tbl.payload.entry.eq(t_word),
                ]
                with m.If(~more_s & ~more_t & ~Cat(*s_vs, *t_vs).any()):
                    m.next = "START"
            with m.State("START"):
                # its own state, so the start pulse (which fans out across the datapath) is decoded
                # from the state register alone (45F t18's critical path ran from the table
                # counters through the end-of-tables comparisons into it)
                m.d.comb += start.eq(1)
                m.d.sync += shift_cfg.eq(desc.shift.as_value())
                m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += in_run.eq(1)
                with m.If(layer_done):
                    m.d.sync += shift_cfg.eq(0)
                    m.next = "COUNT0"
            with m.State("COUNT0"):
                m.d.comb += [c_wr.addr.eq(2 * layer), c_wr.data.eq(layer_cycles), c_wr.en.eq(1)]
                m.next = "COUNT1"
            with m.State("COUNT1"):
                m.d.comb += [c_wr.addr.eq(2 * layer + 1), c_wr.data.eq(feeder.beats), c_wr.en.eq(1)]
                m.d.sync += [layer.eq(layer + 1), layer_cycles.eq(0), k.eq(0)]
                with m.If(final_layer):
                    m.d.sync += [running.eq(0), done.eq(1), runs.eq(runs + 1)]
                    m.next = "IDLE"
                with m.Else():
                    m.next = "LOAD_DESC"
        return m
