"""Compile an integer program (``.shiftprog``) into the engine's memory images.

The engine (:mod:`hw.engine`) runs whatever is in its memories; this module
decides what goes where, for the :class:`~hw.engine_params.EngineParams` of the
bitstream at hand:

* **activations** — every tensor of the program gets a range of activation
  words (HWC, ``L`` channels per word, channels padded up to a multiple of
  ``L``). Tensors share memory when their lifetimes (first write .. last read)
  do not overlap (largest first, each at the lowest free address); ``keep_all=True`` gives every tensor its own range
  so that a test can read back every layer's output after a run.
* **weights** — per layer, for each group of ``Q`` output channels, one word per
  gathered input channel (``Q`` int8 lanes), in the order the tile feeder
  reads them.
* **shift schedules** — the layer's gather table (or the identity for a plain
  1x1 layer) compiled by :meth:`hw.shift_unit.ShiftUnit.program`.
* **output-stage tables** — ``(m, s, bias)`` per output channel.
* **descriptors** — one :func:`~hw.engine_params.descriptor_layout` record per
  layer.

A program that does not fit (image too large, too many channels, memories too
small) raises :class:`CompileError` with one line saying what and by how much.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from hw.engine_params import DESC_WORDS, EngineParams, Region, descriptor_layout, parts_for, region_addr
from quant.program import Layer, Program

__all__ = ["CompileError", "EngineParams", "CompiledProgram", "TensorPlace", "Pass", "plan_passes", "compile_program",
           "pack_entries", "pack_activation", "unpack_activation", "unpack_logits"]


class CompileError(ValueError):
    """The program does not fit this engine (one-line message)."""


@dataclass(frozen=True)
class TensorPlace:
    """Where a tensor lives: ``region`` ACT or LOGITS, first word, words per pixel, shape HWC."""

    region: int
    base: int
    words_per_pixel: int
    shape: tuple[int, int, int]
    signed: bool

    @property
    def words(self) -> int:
        return self.shape[0] * self.shape[1] * self.words_per_pixel


@dataclass
class CompiledProgram:
    """Memory images for one program on one engine configuration.

    ``uploads`` lists ``(bus word address, words)``; :meth:`upload_words` counts them.
    """

    params: EngineParams
    program: Program
    places: dict[str, TensorPlace]
    layer_names: list[str]
    macs: list[int]
    uploads: list[tuple[int, list[int]]] = field(default_factory=list)
    #: the mid rings of fused passes, by :attr:`Pass.ring`
    rings: dict[str, TensorPlace] = field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        return len(self.layer_names)

    @property
    def upload_words(self) -> int:
        return sum(len(words) for _, words in self.uploads)

    @property
    def act_words_used(self) -> int:
        """Activation words the program occupies (highest word used + 1): its memory footprint."""
        return max((pl.base + pl.words for pl in (*self.places.values(), *self.rings.values())
                    if pl.region == Region.ACT), default=0)

    @property
    def input_place(self) -> TensorPlace:
        return self.places[self.program.input]

    @property
    def output_place(self) -> TensorPlace:
        return self.places[self.program.output]


# ------------------------------------------------------------------ packing helpers


def pack_entries(values: list[int], width: int) -> list[int]:
    """Memory entries of ``width`` bits -> bus words (``parts_for(width)`` per entry, LSW first)."""
    k = parts_for(width)
    mask = (1 << width) - 1
    words = []
    for v in values:
        v &= mask
        words.extend((v >> (32 * i)) & 0xFFFFFFFF for i in range(k))
    return words


def _pack_bytes(row: np.ndarray) -> int:
    """Little-endian lanes of 8 bits (two's complement) -> one integer."""
    return int.from_bytes((np.asarray(row, dtype=np.int64) & 0xFF).astype(np.uint8).tobytes(), "little")


def pack_activation(q: np.ndarray, lanes: int) -> list[int]:
    """An HWC integer tensor -> activation entries (channels padded to a multiple of ``lanes``)."""
    h, w, c = q.shape
    wpp = math.ceil(c / lanes)
    padded = np.zeros((h * w, wpp * lanes), dtype=np.int64)
    padded[:, :c] = q.reshape(h * w, c)
    return [_pack_bytes(row) for row in padded.reshape(-1, lanes)]


def unpack_activation(entries: list[int], shape: tuple[int, int, int], lanes: int, signed: bool) -> np.ndarray:
    """Inverse of :func:`pack_activation`."""
    h, w, c = shape
    raw = b"".join(int(e).to_bytes(lanes, "little") for e in entries)
    arr = np.frombuffer(raw, dtype=np.int8 if signed else np.uint8).astype(np.int64)
    return arr.reshape(h * w, -1)[:, :c].reshape(h, w, c)


def unpack_logits(entries: list[int], shape: tuple[int, int, int], lanes: int) -> np.ndarray:
    """Logits entries (``lanes`` x int32 each) -> HWC int64."""
    h, w, c = shape
    vals = []
    for e in entries:
        for k in range(lanes):
            v = (int(e) >> (32 * k)) & 0xFFFFFFFF
            vals.append(v - (1 << 32) if v & 0x80000000 else v)
    return np.array(vals, dtype=np.int64).reshape(h * w, -1)[:, :c].reshape(h, w, c)


# ------------------------------------------------------------------ passes


@dataclass(frozen=True)
class Pass:
    """One engine pass: ``layer``, or a fused CSC pass of ``expand`` then ``layer`` (its reduce half).

    A fused pass never stores the expanded (mid) tensor: the expand half writes it into a ring of
    ``ring_pixels`` mid pixels that the reduce half's shift unit reads behind it (docs/ENGINE.md).
    """

    layer: Layer
    expand: Layer | None = None
    ring_pixels: int = 0

    @property
    def name(self) -> str:
        return f"{self.expand.name}+{self.layer.name}" if self.expand else self.layer.name

    @property
    def input(self) -> str:
        """The tensor the pass reads from memory (the block input when fused)."""
        return self.expand.input if self.expand else self.layer.input

    @property
    def ring(self) -> str | None:
        return f"{self.layer.input}@ring" if self.expand else None


def _fusable(program: Program, params: EngineParams, expand: Layer, reduce: Layer) -> bool:
    """Can ``expand`` (a plain 1x1) run inside ``reduce``'s pass (shift + 1x1 on its output)?"""
    mid = expand.output
    readers = [layer for layer in program.layers
               if mid in (layer.input, layer.residual.tensor if layer.residual else None)]
    c_mid = expand.weight.shape[0]
    table_off = math.ceil(reduce.weight.shape[0] / params.lanes) * params.lanes
    return (reduce.input == mid and len(readers) == 1 and readers[0] is reduce and mid != program.output
            and expand.gather is None and expand.stride == 1 and expand.requant is not None
            and expand.residual is None and expand.pool is None
            and reduce.gather is not None and reduce.requant is not None
            and table_off + c_mid <= params.max_cout)


def default_ring_pixels(params: EngineParams, width: int, pixels: int) -> int:
    """Mid pixels a fused pass keeps: two image rows or four tiles, whole tiles, at most the map."""
    P = params.rows
    ring = max(2 * width, 4 * P)
    return min(-(-ring // P) * P, -(-pixels // P) * P)


def plan_passes(program: Program, params: EngineParams, *, fuse: bool = True,
                ring_pixels: int | None = None) -> list[Pass]:
    """The program's layers as engine passes, each CSC expand fused into its reduce where it can be.

    ``ring_pixels`` overrides the ring size of every fused pass (a multiple of ``params.rows``;
    tests use ``params.rows``, the smallest that cannot deadlock).
    """
    layers = program.layers
    writer = {layer.output: layer for layer in layers}
    fused = {}
    if fuse:
        for reduce in layers:
            expand = writer.get(reduce.input)
            if expand is not None and _fusable(program, params, expand, reduce):
                fused[expand.name] = expand
    passes = []
    for layer in layers:
        if layer.name in fused:
            continue
        expand = fused.get(writer[layer.input].name) if layer.input in writer else None
        if expand is None:
            passes.append(Pass(layer))
            continue
        h, w, _ = program.tensors[expand.output].shape
        ring = ring_pixels if ring_pixels is not None else default_ring_pixels(params, w, h * w)
        if ring % params.rows or ring < params.rows:
            raise CompileError(f"ring of {ring} pixels: it must be a positive multiple of the array's "
                               f"{params.rows} rows")
        passes.append(Pass(layer, expand, ring))
    return passes


# ------------------------------------------------------------------ allocation


def _allocate(program: Program, params: EngineParams, passes: list[Pass],
              keep_all: bool) -> tuple[dict[str, TensorPlace], dict[str, TensorPlace]]:
    """Places of the stored tensors, and of the mid rings of fused passes (by ``Pass.ring``)."""
    L = params.lanes
    raw_outputs = {ps.layer.output for ps in passes if ps.layer.requant is None}
    # lifetime of each stored tensor: [pass that writes it, last pass that reads it]; the input is
    # written at -1; a ring lives for its pass only
    first = {program.input: -1}
    last = {program.input: -1}
    shapes = {program.input: program.tensors[program.input].shape}
    for i, ps in enumerate(passes):
        out = ps.layer.output
        first.setdefault(out, i)
        last.setdefault(out, i)
        shapes[out] = program.tensors[out].shape
        if ps.ring:
            first[ps.ring] = last[ps.ring] = i
            shapes[ps.ring] = (1, ps.ring_pixels, program.tensors[ps.layer.input].shape[2])
        for name in (ps.input, ps.layer.residual.tensor if ps.layer.residual else None):
            if name is not None:
                last[name] = max(last.get(name, i), i)
    n = len(passes)
    places: dict[str, TensorPlace] = {}
    rings: dict[str, TensorPlace] = {}
    taken: list[tuple[int, int, int, int]] = []      # (start, end, first, last) of placed ranges
    logit_next = 0
    # offline placement, largest tensors first (the big expanded "mid" maps get the low addresses and
    # the small ones fill the gaps around them), each at the lowest address free for its whole lifetime
    def size_of(t):
        h, w, c = shapes[t]
        return h * w * math.ceil(c / L)

    for name in sorted(first, key=lambda t: (-size_of(t), first[t], t)):
        h, w, c = shapes[name]
        wpp = math.ceil(c / L)
        if name in raw_outputs:
            words = h * w * wpp
            if logit_next + words > params.logit_words:
                raise CompileError(f"logits tensor {name!r} needs {words} logits entries, the engine has "
                                   f"{params.logit_words - logit_next} free")
            places[name] = TensorPlace(Region.LOGITS, logit_next, wpp, shapes[name], True)
            logit_next += words
            continue
        size = h * w * wpp
        life = (first[name], n if keep_all or name == program.output else last[name])
        base = 0
        for start, end, f, l in sorted(taken):
            overlaps_in_time = not (life[1] < f or l < life[0])
            if overlaps_in_time and base < end and start < base + size:
                base = max(base, end)
        if base + size > params.act_words:
            need = size + sum(e - s for s, e, f, l in taken if not (life[1] < f or l < life[0]))
            raise CompileError(f"activations do not fit: tensor {name!r} ({h}x{w}x{c}) needs {size} words at "
                               f"step {first[name] + 1}, about {need} words are live then, the engine has "
                               f"{params.act_words} ({params.act_words * L // 1024} KiB)")
        taken.append((base, base + size, life[0], life[1]))
        if name.endswith("@ring"):
            rings[name] = TensorPlace(Region.ACT, base, wpp, shapes[name], False)
        else:
            places[name] = TensorPlace(Region.ACT, base, wpp, shapes[name], program.tensors[name].signed)
    return places, rings


# ------------------------------------------------------------------ per layer


def _shift_program(shift_unit, layer: Layer, in_shape):
    h, w, c = in_shape
    if layer.gather is None and layer.stride > 1:
        # the reader fetches only the pixels on the stride grid: the unit sees the strided map
        h, w = -(-h // layer.stride), -(-w // layer.stride)
    table = layer.gather if layer.gather is not None else np.array([[j, 0, 0] for j in range(c)])
    try:
        return shift_unit.program(table, width=w, height=h, c_in=c)
    except ValueError as exc:
        raise CompileError(f"layer {layer.name!r}: {exc}") from None


def compile_program(program: Program, params: EngineParams, *, keep_all: bool = False, fuse: bool = True,
                    ring_pixels: int | None = None) -> CompiledProgram:
    """Memory images of ``program`` for an engine with ``params`` (see the module docstring).

    ``fuse=False`` runs every layer as its own pass (no fused CSC passes); ``ring_pixels``: see
    :func:`plan_passes`. With ``keep_all``, every stored tensor keeps its own words (the mid tensors
    of fused passes are never stored).

    Raises
    ------
    CompileError
        If the program does not fit.
    """
    from hw.output_stage import Mode, TableEntry

    p = params
    L, Q = p.lanes, p.cols
    if not program.layers:
        raise CompileError("the program has no layers")
    passes = plan_passes(program, p, fuse=fuse, ring_pixels=ring_pixels)
    if len(passes) > p.max_layers:
        raise CompileError(f"{len(passes)} passes ({len(program.layers)} layers), the engine holds "
                           f"{p.max_layers} descriptors")
    shift_unit = p.shift_unit(for_host=True)
    desc_layout = descriptor_layout(p, shift_unit.cfg_layout)
    places, rings = _allocate(program, p, passes, keep_all)

    descs, sched, table, weights = [], [], [], []
    names, macs = [], []

    def check_layer(where, layer):
        c_out, c_gather = layer.weight.shape
        if c_out > p.max_cout:
            raise CompileError(f"{where}: {c_out} output channels, the engine handles {p.max_cout}")
        if c_gather > p.max_gather:
            raise CompileError(f"{where}: {c_gather} gathered channels, the engine handles {p.max_gather}")
        if layer.stride not in (1, 2, 4):
            raise CompileError(f"{where}: stride {layer.stride} (the engine supports 1, 2, 4)")
        if int(np.abs(layer.weight).max(initial=0)) > 127:
            raise CompileError(f"{where}: weights beyond int8")
        groups = math.ceil(c_out / Q)
        if len(weights) + groups * c_gather > p.weight_words:
            raise CompileError(f"weights do not fit: {where} needs words up to {len(weights) + groups * c_gather}, "
                               f"the engine has {p.weight_words} ({p.weight_words * Q // 1024} KiB)")

    def add_weights(layer):
        """Append the layer's weight words (per group of Q outputs, one word per gathered channel)."""
        c_out, c_gather = layer.weight.shape
        groups = math.ceil(c_out / Q)
        wt = np.zeros((groups * Q, c_gather), dtype=np.int64)
        wt[:c_out] = layer.weight
        for g in range(groups):
            block = wt[g * Q:(g + 1) * Q]          # [Q, c_gather]
            weights.extend(_pack_bytes(block[:, ci]) for ci in range(c_gather))

    def add_table(layer):
        rq = layer.requant
        c_out = layer.weight.shape[0]
        mult = rq.multiplier if rq else np.zeros(c_out, dtype=np.int64)
        shift = rq.shift if rq else np.zeros(c_out, dtype=np.int64)
        for c in range(c_out):
            table.append(TableEntry.const({"m": int(mult[c]), "s": int(shift[c]),
                                           "bias": int(layer.bias[c])}).as_bits())

    for i, ps in enumerate(passes):
        layer, expand = ps.layer, ps.expand
        where = f"pass {i} ({ps.name!r})"
        src = rings[ps.ring] if expand else places[layer.input]
        dst = places[layer.output]
        if places[ps.input].region != Region.ACT:
            raise CompileError(f"{where}: its input is a raw 32-bit tensor, which the engine cannot read")
        check_layer(where, layer)
        h, w, c_in = program.tensors[layer.input].shape
        c_out, c_gather = layer.weight.shape
        sp = _shift_program(shift_unit, layer, (h, w, c_in))
        ho, wo = -(-h // layer.stride), -(-w // layer.stride)
        groups = math.ceil(c_out / Q)
        out_words = math.ceil(c_out / L)
        if layer.requant is None:
            mode = Mode.RAW
            if layer.residual is not None or layer.pool is not None:
                raise CompileError(f"{where}: a raw (logits) layer cannot have a residual or a pool")
        else:
            mode = Mode.POOL if layer.pool is not None else Mode.QUANT
        out_beats = out_words if mode == Mode.POOL else ho * wo * out_words
        if len(sched) + len(sp.slot_words) > p.sched_words:
            raise CompileError(f"{where}: shift schedules exceed the engine's {p.sched_words} slots")

        rq = layer.requant
        res = layer.residual
        pool = layer.pool
        out_cfg = {
            "mode": mode,
            "lo": rq.lo if rq else 0, "hi": rq.hi if rq else 0,
            "res_en": int(res is not None),
            "res_m": res.multiplier if res else 0, "res_s": res.shift if res else 0,
            "res_lo": res.lo if res else 0, "res_hi": res.hi if res else 0,
            "pool_m": pool.multiplier if pool else 0, "pool_s": pool.shift if pool else 0,
            "pool_lo": pool.lo if pool else 0, "pool_hi": pool.hi if pool else 0,
            "alt_lo": expand.requant.lo if expand else 0, "alt_hi": expand.requant.hi if expand else 0,
        }
        res_place = places[res.tensor] if res else None
        strided_read = layer.gather is None and layer.stride > 1
        in_beats = math.ceil(c_in / L)
        s = layer.stride
        table_base = len(table)
        fields = {
            "act_signed": int(program.tensors[layer.input].signed),
            "res_signed": int(res_place.signed) if res_place else 0,
            # a strided read hands the feeder only kept pixels: no stride left to apply
            "stride_log2": 0 if strided_read else {1: 0, 2: 1, 4: 2}[s],
            "rd_skip": (s - 1) * in_beats if strided_read else 0,
            "rd_row_skip": (s * w - wo * s) * in_beats if strided_read else 0,
            "in_base": src.base,
            "out_base": dst.base,
            "res_base": res_place.base if res_place else 0,
            "out_words": out_words,
            "c_gather": c_gather,
            "c_out": c_out,
            "groups": groups,
            "out_pixels": ho * wo,
            "w_base": len(weights),
            "sched_base": len(sched),
            "table_base": table_base,
            "out_beats": out_beats,
            "table_len": c_out,
            "shift": sp.config,
            "out": out_cfg,
            "ring_end": p.act_words,
        }
        add_weights(layer)
        add_table(layer)
        pass_macs = ho * wo * c_out * c_gather
        if expand:
            # the expand half: the block input -> 1x1 -> requantise/ReLU -> the mid ring
            check_layer(where, expand)
            x = places[expand.input]
            c_mid, a_gather = expand.weight.shape
            a_in_beats = math.ceil(program.tensors[expand.input].shape[2] / L)
            table.extend([0] * (-len(table) % L))     # the expand half's entries start on a lane boundary
            fields.update({
                "fused": 1,
                "ring_end": src.base + src.words,
                "ring_pixels": ps.ring_pixels,
                "a_in_base": x.base,
                "a_in_words": h * w * a_in_beats,
                "a_in_beats": a_in_beats,
                "a_act_signed": int(x.signed),
                "a_c_gather": a_gather,
                "a_c_out": c_mid,
                "a_groups": math.ceil(c_mid / Q),
                "a_pixels": h * w,
                "a_w_base": len(weights),
                "a_table_off": len(table) - table_base,
                "a_tile_words": p.rows * in_beats,
                "a_out_beats": h * w * in_beats,
                "out_beats": out_beats + h * w * in_beats,
                "table_len": len(table) - table_base + c_mid,
            })
            add_weights(expand)
            add_table(expand)
            pass_macs += h * w * c_mid * a_gather
        if len(table) > p.table_words:
            raise CompileError(f"{where}: channel tables exceed the engine's {p.table_words} entries")
        try:
            bits = desc_layout.const(fields).as_bits()
        except Exception as exc:  # a field out of its range
            raise CompileError(f"{where}: does not fit the descriptor ({exc})") from None
        descs.extend((bits >> (32 * k)) & 0xFFFFFFFF for k in range(DESC_WORDS))
        sched.extend(sp.slot_words)
        names.append(ps.name)
        macs.append(pass_macs)

    uploads = [
        (region_addr(Region.DESC), descs),
        (region_addr(Region.SCHED), pack_entries(sched, shift_unit.slot_layout.size)),
        (region_addr(Region.TABLE), pack_entries(table, TableEntry.size)),
        (region_addr(Region.WEIGHT), pack_entries(weights, 8 * Q)),
    ]
    return CompiledProgram(params=p, program=program, places=places, layer_names=names, macs=macs,
                           uploads=uploads, rings=rings)
