"""Cycles and multiplier utilisation of the 1x1 array (``hw.systolic``) per layer.

For every layer shape (``C_in``, ``C_out``, output pixels) this script

* computes the cycle count of a *cycle model* of the array's admission rule
  (a tile's ``last`` beat waits until the shadow bank of the previous tile has
  drained: tile period ``max(C_in, D + LATENCY)``, ``D`` = output beats of the
  previous tile), and
* unless ``--no-rtl``, runs the same layer through the generated Verilog in
  Verilator (cocotb, through ``sim.harness``) with a source that is always
  valid and a sink that is always ready, counts the cycles from the first
  accepted beat to the last output beat, checks the output beat count, and
  fails if the model and the RTL disagree;

then prints a table (shape, cycles, MACs, utilisation = MACs / (P*Q*cycles))
and writes it as JSON.

Default shapes: every 1x1 convolution of ShiftResNet-20 (CIFAR, 32x32) for
expansion E = 1, 3 and 6, derived from the architecture (stages of 3 CSC blocks
at 16/32/64 channels, strides 1/2/2; mid = E * out; conv1 in->mid at the input
resolution, conv2 mid->out at the strided resolution, a strided 1x1 shortcut
in->out where the shape changes), plus a few shapes whose channel counts are
multiples of the array size. Pixels of a strided layer are the output pixels:
the feeder sends only those.

Usage::

    python bench/engine_cycles.py                    # 8x16 array, RTL + model, all shapes
    python bench/engine_cycles.py --no-rtl           # model only (seconds)
    python bench/engine_cycles.py --rows 8 --cols 16 --out-lanes 4 --json out.json
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cocotb
from cocotb.triggers import ReadOnly, RisingEdge

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

log = logging.getLogger("engine_cycles")


@dataclass
class Shape:
    name: str
    c_in: int
    c_out: int
    pixels: int

    @property
    def macs(self) -> int:
        return self.c_in * self.c_out * self.pixels


def shiftresnet20_shapes(expansion: int, resolution: int = 32) -> list[Shape]:
    """The 1x1 convolutions of ShiftResNet-20 with expansion ``expansion`` (authors' CSC blocks)."""
    shapes = []
    in_ch, res = 16, resolution
    for stage, (out_ch, stride) in enumerate(((16, 1), (32, 2), (64, 2)), start=1):
        for block in range(3):
            s = stride if block == 0 else 1
            mid = int(expansion * out_ch)
            out_res = res // s
            tag = f"srn20-E{expansion} s{stage}b{block + 1}"
            shapes.append(Shape(f"{tag} conv1", in_ch, mid, res * res))
            shapes.append(Shape(f"{tag} conv2/s{s}", mid, out_ch, out_res * out_res))
            if s != 1 or in_ch != out_ch:
                shapes.append(Shape(f"{tag} shortcut/s{s}", in_ch, out_ch, out_res * out_res))
            in_ch, res = out_ch, out_res
    return shapes


def multiple_shapes(rows: int, cols: int) -> list[Shape]:
    """Shapes whose channel and pixel counts are multiples of the array."""
    return [
        Shape(f"mult {2 * cols}x{2 * cols} px{16 * rows}", 2 * cols, 2 * cols, 16 * rows),
        Shape(f"mult {4 * cols}x{4 * cols} px{8 * rows}", 4 * cols, 4 * cols, 8 * rows),
        Shape(f"mult {8 * cols}x{2 * cols} px{8 * rows}", 8 * cols, 2 * cols, 8 * rows),
        Shape(f"mult {cols}x{cols} px{128 * rows}", cols, cols, 128 * rows),
    ]


def other_shapes(rows: int, cols: int) -> list[Shape]:
    """Layers that are not multiples of the array, to show where utilisation drops."""
    return [
        Shape("srn20 stem 3x3 as im2col 1x1", 27, 16, 1024),
        Shape("srn20 classifier (pooled vector)", 64, 10, 1),
        Shape("odd 24x40 px100", 24, 40, 100),
        Shape("odd short C_in 5x20 px13", 5, 20, 13),
        Shape(f"C_in = P+2 ({rows + 2}) {cols}x px{8 * rows}", rows + 2, cols, 8 * rows),
    ]


def tiles(rows: int, cols: int, shape: Shape):
    """Feeder order (output-channel tiles outside, pixel tiles inside): (n_pix, n_chan) per tile."""
    for co in range(0, shape.c_out, cols):
        for px in range(0, shape.pixels, rows):
            yield min(rows, shape.pixels - px), min(cols, shape.c_out - co)


def model_cycles(rows: int, cols: int, out_lanes: int, shape: Shape, latency: int = 4) -> int:
    """Cycles from the first accepted beat to the last output beat (source always valid, sink always ready)."""
    t = -1            # cycle of the previous accepted beat
    free_at = 0       # first cycle in which a new `last` beat may be accepted
    end = 0
    for n_pix, n_chan in tiles(rows, cols, shape):
        d = n_pix * math.ceil(n_chan / out_lanes)  # output beats of this tile
        t_last = max(t + shape.c_in, free_at)
        free_at = t_last + latency + d
        end = t_last + latency + d  # last output beat in cycle end - 1
        t = t_last
    return end


# ---- RTL measurement (a cocotb test; run through sim.harness) ----------------

@cocotb.test()
async def measure(dut):
    """Drive every shape in ``BENCH_SHAPES`` back to back and write the cycle counts to ``BENCH_OUT``."""
    from sim.stream import reset, start_clock
    from sim.tb_systolic import pack
    from hw.systolic import SystolicArray

    arr = json.loads(os.environ["BENCH_ARRAY"])
    shapes = [Shape(**s) for s in json.loads(os.environ["BENCH_SHAPES"])]
    ref = SystolicArray(**arr)
    P, Q, L = ref.rows, ref.cols, ref.out_lanes
    start_clock(dut.clk)
    await reset(dut.clk, dut.rst)
    results = []
    for shape in shapes:
        words = {}
        expected_out = 0
        seq = []
        for n_pix, n_chan in tiles(P, Q, shape):
            key = (n_pix, n_chan)
            if key not in words:
                common = {"act": [3] * P, "act_signed": 0, "weight": [-5] * Q, "n_pix": n_pix, "n_chan": n_chan}
                words[key] = (pack(ref.input_layout, {**common, "last": 0}),
                              pack(ref.input_layout, {**common, "last": 1}))
            seq.append(words[key])
            expected_out += n_pix * math.ceil(n_chan / L)
        dut.o__ready.value = 1
        cycle, first, last_out, outs = 0, None, None, 0
        for body, last in seq:
            for k in range(shape.c_in):
                dut.i__payload.value = last if k == shape.c_in - 1 else body
                dut.i__valid.value = 1
                while True:
                    await ReadOnly()
                    fire = bool(dut.i__ready.value)
                    if dut.o__valid.value:
                        outs += 1
                        last_out = cycle
                    await RisingEdge(dut.clk)
                    if fire and first is None:
                        first = cycle
                    cycle += 1
                    if fire:
                        break
        dut.i__valid.value = 0
        while outs < expected_out:
            await ReadOnly()
            if dut.o__valid.value:
                outs += 1
                last_out = cycle
            await RisingEdge(dut.clk)
            cycle += 1
            if cycle - (last_out or 0) > 1000:
                raise AssertionError(f"{shape.name}: only {outs} of {expected_out} output beats")
        results.append({"name": shape.name, "cycles": last_out - first + 1, "output_beats": outs})
        # let the array go idle before the next shape
        for _ in range(4):
            await RisingEdge(dut.clk)
    Path(os.environ["BENCH_OUT"]).write_text(json.dumps(results))


def run_rtl(rows: int, cols: int, out_lanes: int, shapes: list[Shape], out_file: Path) -> dict[str, int]:
    from hw.systolic import SystolicArray
    from sim.harness import run_cocotb

    arr = dict(rows=rows, cols=cols, out_lanes=out_lanes, tag_width=1)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.unlink(missing_ok=True)
    run_cocotb(
        SystolicArray(**arr),
        test_module="bench.engine_cycles",
        build_name=f"bench_array_{rows}x{cols}_l{out_lanes}",
        env={"BENCH_ARRAY": arr, "BENCH_SHAPES": [asdict(s) for s in shapes], "BENCH_OUT": str(out_file)},
    )
    return {r["name"]: r["cycles"] for r in json.loads(out_file.read_text())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--rows", type=int, default=8, help="P, pixels per tile (default 8)")
    ap.add_argument("--cols", type=int, default=16, help="Q, output channels per tile (default 16)")
    ap.add_argument("--out-lanes", type=int, default=None, help="accumulators per output beat (default: cols)")
    ap.add_argument("--expansions", default="1,3,6", help="ShiftResNet-20 expansions (default 1,3,6)")
    ap.add_argument("--no-rtl", action="store_true", help="cycle model only, no Verilator run")
    ap.add_argument("--json", type=Path, default=REPO / "sim_build" / "engine_cycles.json",
                    help="where to write the results (default sim_build/engine_cycles.json)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    P, Q = args.rows, args.cols
    L = args.out_lanes or Q
    try:
        from hw.systolic import SystolicArray
        SystolicArray(P, Q, out_lanes=L)
        exps = [int(e) for e in args.expansions.split(",") if e]
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    shapes = [s for e in exps for s in shiftresnet20_shapes(e)] + multiple_shapes(P, Q) + other_shapes(P, Q)
    model = {s.name: model_cycles(P, Q, L, s, SystolicArray.LATENCY) for s in shapes}
    rtl = {}
    t0 = time.monotonic()
    if not args.no_rtl:
        rtl = run_rtl(P, Q, L, shapes, args.json.with_suffix(".rtl.json"))
        log.info(f"RTL simulation of {len(shapes)} shapes took {time.monotonic() - t0:.1f} s")

    rows = []
    head = f"{'layer':34s} {'C_in':>5s} {'C_out':>5s} {'pixels':>6s} {'MACs':>10s} {'cycles':>8s} {'model':>8s} {'util':>6s}"
    print(f"array {P}x{Q} ({P * Q} multipliers), {L} accumulators per output beat")
    print(head)
    print("-" * len(head))
    groups: dict[str, list[int]] = {}
    mismatches = []
    for s in shapes:
        cyc = rtl.get(s.name, model[s.name])
        if rtl and rtl[s.name] != model[s.name]:
            mismatches.append(s.name)
        util = s.macs / (P * Q * cyc)
        rows.append({**asdict(s), "macs": s.macs, "cycles": cyc, "model_cycles": model[s.name],
                     "rtl": bool(rtl), "utilisation": util})
        print(f"{s.name:34s} {s.c_in:5d} {s.c_out:5d} {s.pixels:6d} {s.macs:10d} {cyc:8d} {model[s.name]:8d} {util:6.1%}")
        key = s.name.split(" ")[0] if s.name.startswith("srn20-") else (
            "multiples" if s.name.startswith("mult") else "others")
        g = groups.setdefault(key, [0, 0])
        g[0] += s.macs
        g[1] += cyc
    print("-" * len(head))
    totals = {}
    for key, (macs, cyc) in groups.items():
        totals[key] = {"macs": macs, "cycles": cyc, "utilisation": macs / (P * Q * cyc)}
        print(f"{key + ' (total)':34s} {'':5s} {'':5s} {'':6s} {macs:10d} {cyc:8d} {'':8s} {macs / (P * Q * cyc):6.1%}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "array": {"rows": P, "cols": Q, "out_lanes": L, "multipliers": P * Q},
        "source": "rtl (verilator) + model" if rtl else "model",
        "layers": rows, "totals": totals,
    }, indent=2))
    print(f"wrote {args.json}")
    if mismatches:
        print(f"error: cycle model disagrees with the RTL on {len(mismatches)} shapes: {mismatches[:5]}", file=sys.stderr)
        return 1
    if rtl:
        print(f"cycle model matches the RTL on all {len(shapes)} shapes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
