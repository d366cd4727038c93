"""Whole-network cycles, multiplier utilisation and inferences/s on the simulated board.

For each ShiftResNet-20 expansion E, the script exports a program
(deterministic untrained weights: the cycle count of the engine does not depend
on weight values, only on the program's shapes), runs one 32x32 inference on
the Verilator-built simulated board (:func:`hw.soc.simulated_board`), checks the
logits against the golden model bit for bit, and reports per layer and in
total:

* cycles, measured by the engine's own per-layer counters (descriptor load,
  table copies, pipeline fill and drain included);
* utilisation = MACs / (P * Q * cycles), MACs counted from the program;
* inferences/s = clock / total cycles, at the engine clock of the latest
  ``python -m hw.build`` report when one exists, otherwise at the 150 MHz
  target, labelled as such.

Usage::

    python bench/network.py                      # E = 1, 3, 6; table + runs/bench_network.json
    python bench/network.py --expansions 6 --json out.json
    python bench/network.py --no-fuse            # every layer its own pass (no fused CSC passes)
    python bench/network.py --part LFE5U-85F --engine 7x16 --lanes 8 --fmax 45   # a variant of a part's SoC
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TARGET_MHZ = 150.0


def _fmax(args, params) -> tuple[float, str]:
    """The clock of a SoC bitstream built with exactly these engine parameters, else the assumed target."""
    if args.fmax:
        return args.fmax, "given with --fmax"
    for path in sorted(Path("build").glob("*/report.json")):
        try:
            rep = json.loads(path.read_text())
            if rep.get("core") != "soc" or rep.get("engine_params") != params.as_dict():
                continue
            if rep.get("timing_met"):
                return float(rep["clock"]["target_mhz"]), f"clock of the bitstream in {path} (timing met)"
            return float(rep["engine_fmax_mhz"]), f"Fmax of {path} (timing FAILED at its clock)"
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
    return TARGET_MHZ, "ASSUMED: the 150 MHz target clock (no build report of this engine configuration)"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--expansions", default="1,3,6", help="comma-separated E values (default 1,3,6)")
    ap.add_argument("--bits", default="w8a8", choices=["w8a8", "w4a4"])
    ap.add_argument("--fmax", type=float, help="engine clock in MHz for the inferences/s column")
    ap.add_argument("--json", default="runs/bench_network.json", help="where to write the results")
    ap.add_argument("--no-fuse", action="store_true",
                    help="run each CSC block's expand and reduce as two passes (default: one fused pass)")
    ap.add_argument("--part", help="use the engine configuration of this FPGA part's SoC bitstream "
                                   "(hw.soc.SOC_PARAMS, e.g. LFE5U-85F) instead of the simulated board's")
    ap.add_argument("--engine", metavar="PxQ", help="with --part: another array shape (as python -m hw.build --engine)")
    ap.add_argument("--lanes", type=int, help="with --part: other lanes, same activation bytes (as python -m hw.build "
                                              "--lanes)")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.getLogger().setLevel(logging.ERROR)

    import numpy as np
    import torch

    from host.accelerator import Accelerator
    from host.compile import compile_program
    from hw.soc import SIM_PARAMS, simulated_board
    from quant import golden
    from quant.export import to_program, untrained_net

    from hw.soc import SOC_PARAMS

    if args.part and args.part not in SOC_PARAMS:
        ap.error(f"unknown part {args.part!r} (known: {', '.join(SOC_PARAMS)})")
    p = SOC_PARAMS[args.part] if args.part else SIM_PARAMS
    if args.engine or args.lanes:
        from dataclasses import replace

        if not args.part:
            ap.error("--engine/--lanes change a part's SoC configuration: give --part")
        changes = {}
        try:
            if args.engine:
                rows, cols = (int(v) for v in args.engine.lower().split("x"))
                changes.update(rows=rows, cols=cols)
            if args.lanes:
                changes.update(lanes=args.lanes, act_words=max(1, p.act_words * p.lanes // args.lanes))
            p = replace(p, **changes)
        except ValueError as e:
            ap.error(f"--engine/--lanes: {e}")
    mhz, clock_note = _fmax(args, p)
    results = []
    with simulated_board(p, progress=lambda s: print(s, flush=True)) as board:
        acc = Accelerator(board.link(timeout=10.0))
        for e in [int(v) for v in args.expansions.split(",")]:
            net, shape = untrained_net("shiftresnet20", args.bits, 0, {"expansion": e})
            program = to_program(net, model="shiftresnet20", model_args={"expansion": e}, input_shape=shape)
            compiled = compile_program(program, acc.params, fuse=not args.no_fuse)
            t0 = time.monotonic()
            acc.load(compiled)
            load_s = time.monotonic() - t0
            x = golden.quantize_input(program, torch.rand(*shape, generator=torch.Generator().manual_seed(e)))
            t0 = time.monotonic()
            res = acc.infer(x.numpy())
            run_s = time.monotonic() - t0
            exact = bool(np.array_equal(res.logits, golden.run(program, x)[program.output].numpy().reshape(-1)))
            macs = sum(compiled.macs)
            util = macs / (p.rows * p.cols * res.total_cycles)
            layers = [dict(name=n, cycles=c, macs=m, array_beats=b, utilisation=m / (p.rows * p.cols * c))
                      for n, c, m, b in zip(compiled.layer_names, res.layer_cycles, compiled.macs, res.layer_beats)]
            results.append(dict(model="shiftresnet20", expansion=e, bits=args.bits, input="3x32x32",
                                macs=macs, cycles=res.total_cycles, utilisation=util, fused=not args.no_fuse,
                                passes=compiled.n_layers, act_kib=compiled.act_words_used * p.lanes / 1024,
                                inferences_per_s=mhz * 1e6 / res.total_cycles, bit_exact=exact,
                                upload_words=compiled.upload_words, upload_s=load_s, wall_s=run_s, layers=layers))
            print(f"E={e}: {res.total_cycles} cycles, bit-exact {exact}, wall {run_s:.2f} s", flush=True)

    print(f"\nengine {p.rows}x{p.cols} array, {p.lanes} lanes{' (' + args.part + ' SoC)' if args.part else ''}; "
          f"clock {mhz:.1f} MHz ({clock_note})\n")
    print("| model | passes | activation KiB | MACs | cycles | utilisation | inferences/s | bit-exact | sim wall s |")
    print("|---|---:|---:|---:|---:|---:|---:|---|---:|")
    for r in results:
        print(f"| ShiftResNet-20 E={r['expansion']} {r['bits']} | {r['passes']} | {r['act_kib']:.0f} | {r['macs']:,} | "
              f"{r['cycles']:,} | {100 * r['utilisation']:.1f} % | {r['inferences_per_s']:,.0f} | {r['bit_exact']} | "
              f"{r['wall_s']:.2f} |")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(engine=p.as_dict(), part=args.part, clock_mhz=mhz, clock_source=clock_note,
                                   results=results), indent=1))
    print(f"\nwrote {out}")
    return 0 if all(r["bit_exact"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
