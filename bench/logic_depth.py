"""Rank the register-to-register paths of a synthesised ECP5 netlist by estimated delay.

nextpnr reports one critical path per clock, and only after a full place and route
(20-30 minutes for the 85F SoC). This script reads the netlist Yosys wrote for a
build (``build/<out>/top.json``, written before place and route starts) and
estimates, for every register, block-RAM and multiplier input, the longest path
that ends there: the same cell delays nextpnr uses for LUTs, wide-function
multiplexers and carry chains, plus one *typical* route per cell boundary. It
knows nothing of placement, so it misses long routes (the usual reason a path
fails on the 85F) and overrates cells that share a slice; use it to find the
deepest logic before a build, not to predict Fmax.

Start points: flip-flop outputs, multiplier outputs (registered) and block-RAM
read data (late unless the block has ``REGMODE_B = "OUTREG"``). End points: every
input of a flip-flop, block RAM or multiplier.

Usage::

    python bench/logic_depth.py build/ulx3s_t43/top.json [--top 40] [--path NAME] [--json FILE]

``--path NAME`` prints, for the worst end point whose cell name contains NAME,
every cell of its path with the estimated arrival time.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict, deque
from pathlib import Path

#: estimated route between two cells (ns); nextpnr's are 0.1-3.5 ns on the 85F
ROUTE = 0.65
#: block-RAM clock-to-out without / with the output register (bench/bram_outreg.py)
BRAM_NOREG, BRAM_OUTREG = 5.8, 0.6
FF_CLK_TO_Q = 0.52

# combinational arcs: cell type -> (input port, output port, delay with the route behind it)
_LUT_ARCS = [(p, "Z", 0.24 + ROUTE) for p in "ABCD"]
_COMB = {
    "LUT4": _LUT_ARCS,
    "PFUMX": [("ALUT", "Z", 0.36), ("BLUT", "Z", 0.36), ("C0", "Z", 0.26 + ROUTE)],
    "L6MUX21": [("D0", "Z", 0.36), ("D1", "Z", 0.36), ("SD", "Z", 0.26 + ROUTE)],
    "CCU2C": [(f"{p}{i}", o, 0.45 + ROUTE) for p in "ABCD" for i in "01" for o in ("S0", "S1", "COUT")]
             + [("CIN", "COUT", 0.07), ("CIN", "S0", 0.44 + ROUTE), ("CIN", "S1", 0.44 + ROUTE)],
    "TRELLIS_DPR16X4": [(f"RAD[{i}]", f"DO[{j}]", 0.5 + ROUTE) for i in range(4) for j in range(4)],
}
_ENDS = ("TRELLIS_FF", "DP16KD", "MULT18X18D")


def _bit_port(port, bits, i):
    return port if len(bits) == 1 else f"{port}[{i}]"


def analyse(netlist: dict) -> tuple[list, dict]:
    """``(ends, info)``: end points ``(arrival_ns, bit, cell, port)`` worst first, and what
    :func:`path_of` needs to walk one back."""
    top = next(m for m in netlist["modules"].values() if m.get("attributes", {}).get("top"))
    cells = top["cells"]
    names = {}
    for name, net in top["netnames"].items():
        for b in net["bits"]:
            if isinstance(b, int) and (b not in names or name.count("$") < names[b].count("$")):
                names[b] = name
    driver, loads = {}, defaultdict(list)
    for cn, c in cells.items():
        dirs = c.get("port_directions", {})
        for port, bits in c["connections"].items():
            for i, b in enumerate(bits):
                if isinstance(b, int):
                    (driver.__setitem__(b, (cn, _bit_port(port, bits, i))) if dirs.get(port) == "output"
                     else loads[b].append((cn, _bit_port(port, bits, i))))
    arcs = {}
    for cn, c in cells.items():
        if c["type"] in _COMB:
            a = defaultdict(list)
            for ip, op, dl in _COMB[c["type"]]:
                a[ip].append((op, dl))
            arcs[cn] = a
    arrival, pred = {}, {}
    for b, (cn, port) in driver.items():
        c = cells[cn]
        if c["type"] in _COMB:
            continue
        if c["type"] == "DP16KD":
            t0 = BRAM_OUTREG if "OUTREG" in str(c.get("parameters", {}).get("REGMODE_B", "")) else BRAM_NOREG
        else:
            t0 = FF_CLK_TO_Q
        arrival[b], pred[b] = t0 + ROUTE, None

    def outputs(cn, op):
        bits = cells[cn]["connections"].get(op.split("[")[0], [])
        if "[" in op:
            i = int(op.split("[")[1][:-1])
            return bits[i:i + 1]
        return bits[:1]

    inputs = defaultdict(list)
    for cn in arcs:
        c = cells[cn]
        for port, bits in c["connections"].items():
            if c["port_directions"].get(port) == "input":
                inputs[cn] += [(b, _bit_port(port, bits, i)) for i, b in enumerate(bits) if isinstance(b, int)]
    pending = {cn: sum(1 for b, _ in inputs[cn] if b in driver and driver[b][0] in arcs) for cn in arcs}
    ready = deque(cn for cn, n in pending.items() if n == 0)
    while ready:                      # longest path, cells in topological order
        cn = ready.popleft()
        for b, ip in inputs[cn]:
            if b in arrival:
                for op, dl in arcs[cn].get(ip, ()):
                    for ob in outputs(cn, op):
                        if arrival[b] + dl > arrival.get(ob, -1.0):
                            arrival[ob], pred[ob] = arrival[b] + dl, (b, cn)
        c = cells[cn]
        for port, bits in c["connections"].items():
            if c["port_directions"].get(port) == "output":
                for ob in bits:
                    for lc, _ in loads.get(ob, ()):
                        if lc in pending:
                            pending[lc] -= 1
                            if pending[lc] == 0:
                                ready.append(lc)
    ends = [(arrival[b], b, lc, lp) for b, ls in loads.items() if b in arrival
            for lc, lp in ls if cells[lc]["type"] in _ENDS]
    ends.sort(key=lambda e: -e[0])
    return ends, {"cells": cells, "names": names, "arrival": arrival, "pred": pred}


def path_of(info: dict, bit) -> list[tuple[float, str, str]]:
    """(arrival, net name, driving cell type) from the start point to ``bit``."""
    steps = []
    while info["pred"].get(bit):
        prev, cn = info["pred"][bit]
        steps.append((info["arrival"][bit], info["names"].get(bit, str(bit)), info["cells"][cn]["type"]))
        bit = prev
    steps.append((info["arrival"][bit], info["names"].get(bit, str(bit)), "start"))
    return steps[::-1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("netlist", type=Path, help="Yosys JSON netlist (build/<out>/top.json)")
    ap.add_argument("--top", type=int, default=40, help="end points to list (one per register group)")
    ap.add_argument("--path", metavar="NAME", help="print the worst path into a cell whose name contains NAME")
    ap.add_argument("--json", type=Path, help="also write the table as JSON")
    args = ap.parse_args(argv)
    try:
        netlist = json.loads(args.netlist.read_text())
    except (OSError, ValueError) as e:
        print(f"error: cannot read the netlist {args.netlist}: {e}", file=sys.stderr)
        return 2
    try:
        ends, info = analyse(netlist)
    except (KeyError, TypeError, AttributeError, StopIteration) as e:
        print(f"error: {args.netlist} is not a Yosys JSON netlist with a top module ({e!r})", file=sys.stderr)
        return 2
    rows, seen = [], set()
    for t, b, cell, port in ends:
        group = cell.split("_TRELLIS_FF")[0]          # one line per register, not per bit
        if group in seen:
            continue
        seen.add(group)
        steps = path_of(info, b)
        rows.append({"estimate_ns": round(t, 2), "cells": len(steps) - 1, "from": steps[0][1],
                     "to": f"{cell}.{port}"})
        if len(rows) >= args.top:
            break
    print(f"{'est. ns':>7}  {'cells':>5}  from -> to")
    for r in rows:
        print(f"{r['estimate_ns']:7.2f}  {r['cells']:5d}  {r['from']} -> {r['to']}")
    if args.path:
        hit = next((e for e in ends if args.path in e[2]), None)
        if hit is None:
            print(f"error: no end point in a cell named like {args.path!r}", file=sys.stderr)
            return 2
        print(f"\nworst path into {hit[2]}.{hit[3]} (estimated {hit[0]:.2f} ns):")
        for t, net, kind in path_of(info, hit[1]):
            print(f"  {t:6.2f}  {kind:16s} {net}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"netlist": str(args.netlist), "route_ns": ROUTE, "ends": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
