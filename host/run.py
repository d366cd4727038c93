#!/usr/bin/env python3
"""Run a shift network on the accelerator and check it against the golden model.

    python host/run.py --model shiftresnet20 --expansion 6              # the simulated board
    python host/run.py --model shiftresnet20 --image cat.png --port /dev/ttyUSB0 --program-fpga

Steps: resolve the integer program (``host.models``), read the input image(s),
start the simulated board or open the real one, compile the program for the
engine the board reports, upload it, run every image, compare every logit word
with the golden model (``quant.golden``), print the top classes, cycles per layer,
utilisation and frames per second (``host.report``), optionally write JSON.

Exit status: 0 every image bit-exact (or --no-check); 1 a logit differs from the
golden model; 2 an expected failure (one line ``error: ...`` on stderr); 130 Ctrl-C.

``main(argv, connect=..., compile_program=...)`` takes stand-ins for the board and
the compiler (tests use fakes); by default they are ``host.accelerator`` over
``host.protocol.Link`` and ``host.compile.compile_program``.
"""

from __future__ import annotations

import sys
from pathlib import Path

_HOST = Path(__file__).resolve().parent
REPO = _HOST.parent
if __package__ in (None, ""):  # python host/run.py: host/ is sys.path[0] and would shadow the repo's packages
    sys.path[:] = [str(REPO)] + [p for p in sys.path if p and Path(p).resolve() != _HOST]

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import shlex  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import asdict, dataclass, is_dataclass  # noqa: E402

import numpy as np  # noqa: E402

from host import report as rep  # noqa: E402
from host.models import ModelError, program_bits, resolve_program  # noqa: E402

__all__ = ["main", "build_parser", "Target", "InputImage", "load_image", "default_images", "engine_clock",
           "open_accelerator", "UsageError", "SAMPLES_DIR", "REPORT_SCHEMA", "DEFAULT_BOARD"]

log = logging.getLogger("host.run")

#: Committed test images, used when no --image is given and one fits the program.
SAMPLES_DIR = _HOST / "samples"
#: Board assumed for the simulated board (its build report gives the Fmax).
DEFAULT_BOARD = "ulx3s"
#: Version tag of the ``--report`` JSON.
REPORT_SCHEMA = "shiftfpga-run-report/1"
#: Build report schema written by ``python -m hw.build`` (docs/BUILD.md).
BUILD_REPORT_SCHEMA = "shiftfpga-build-report/1"
#: Seed of the synthetic input image.
SYNTHETIC_SEED = 0
#: Link reply timeouts (s): a real UART answers in microseconds, a simulation far slower.
TIMEOUT_BOARD_S, TIMEOUT_SIM_S = 0.25, 10.0

Say = Callable[[str], None]


class UsageError(ValueError):
    """Bad command-line input (one line)."""


# ----------------------------------------------------------------------------- arguments


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage block
        self.exit(2, f"error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python host/run.py",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Run a shift network on the accelerator (the simulated board by default, or a real board with "
            "--port), check every logit word against the golden model, and report the top classes, cycles per "
            "layer, utilisation and frames per second."),
        epilog="""\
model (first match wins):
  --weights FILE         a .shiftprog program or a QAT checkpoint of python -m quant.train (exported in memory)
  models/trained/*.shiftprog
                         a committed trained program for --model / --expansion / --bits (w8a8 preferred)
  otherwise              deterministic UNTRAINED weights (seed 0, as python -m quant.export --untrained):
                         the engine and the bit-exact check work, the classes are meaningless

input:
  --image FILE...        PNG/JPEG with exactly the program's input size and channels (CIFAR: 32x32 RGB,
                         Fashion-MNIST: 28x28 grayscale); pixels / 255 are normalised and quantised by
                         quant.golden.quantize_input. Without --image: the first image in host/samples/ that
                         fits the program, else a synthetic image (uniform random pixels, seed 0).

board:
  no board options       starts the simulated board (the engine's RTL in Verilator behind the same link)
  --port PORT            a real board on a serial port (/dev/ttyUSB0, COM3) or tcp://HOST:PORT;
                         --board names it (default ulx3s); --program-fpga first loads the bitstream
                         with openFPGALoader -b BOARD BITFILE (from the build report, or --bitstream)

speed:
  FPS = engine clock / total cycles (compute only; link transfers are not counted). The clock is --fmax,
  else engine_fmax_mhz of the build report (--build-report, default build/BOARD/report.json written by
  python -m hw.build --board BOARD), else the board's target clock (150 MHz on the ULX3S), labelled assumed.
  Utilisation = MACs / (rows * cols * cycles) of the engine's multiplier array.

exit status:
  0 every image bit-exact (or --no-check), 1 a logit differs from the golden model,
  2 an expected failure (bad program or image file, unknown board, no such port, link timeout,
  program too large for the engine: one line 'error: ...' on stderr), 130 interrupted (Ctrl-C)

examples:
  python host/run.py --model shiftresnet20 --expansion 1
  python host/run.py --model shiftresnet20 --weights m.shiftprog --image host/samples/*.jpg --report run.json
  python host/run.py --model shiftresnet20 --port /dev/ttyUSB0 --board ulx3s --program-fpga
""")
    g = p.add_argument_group("model")
    g.add_argument("--model", metavar="NAME", help="registry model name (python -m models.summary lists them); "
                   "optional with --weights, whose header names it")
    g.add_argument("--expansion", type=float, metavar="E", help="expansion E of the shift modules "
                   "(default: the model's)")
    g.add_argument("--bits", choices=("w8a8", "w4a4"), help="quantisation (default: w8a8 when there is a choice)")
    g.add_argument("--dataset", help="pick the committed trained program of this dataset (cifar10, fashion-mnist; "
                                     "default: CIFAR-10 when there is a choice)")
    g.add_argument("--weights", metavar="FILE", help=".shiftprog program or QAT checkpoint")
    g = p.add_argument_group("input")
    g.add_argument("--image", metavar="FILE", nargs="+", action="extend", help="input image(s), PNG or JPEG")
    g.add_argument("--top-k", type=int, default=5, metavar="K", help="classes to list per image (default 5)")
    g.add_argument("--check", action=argparse.BooleanOptionalAction, default=True,
                   help="compare every logit with the golden model (default: on)")
    g = p.add_argument_group("board")
    g.add_argument("--port", metavar="PORT", help="serial port or tcp://HOST:PORT of a real board "
                   "(default: start the simulated board)")
    g.add_argument("--board", metavar="NAME", help=f"board at --port (default {DEFAULT_BOARD}); "
                   "see python -m hw.build --help")
    g.add_argument("--baud", type=int, default=3_000_000, help="serial bit rate (default 3000000)")
    g.add_argument("--timeout", type=float, metavar="S", help=f"link reply timeout in seconds (default "
                   f"{TIMEOUT_BOARD_S:g} for a board, {TIMEOUT_SIM_S:g} for the simulated board)")
    g.add_argument("--program-fpga", action="store_true", help="load the bitstream with openFPGALoader first")
    g.add_argument("--bitstream", metavar="FILE", help="bitstream for --program-fpga (default: the build report's)")
    g = p.add_argument_group("report")
    g.add_argument("--build-report", metavar="FILE", help="hw.build report.json for the engine Fmax "
                   "(default build/BOARD/report.json)")
    g.add_argument("--fmax", type=float, metavar="MHZ", help="engine clock for FPS, overrides the build report")
    g.add_argument("--report", metavar="FILE", help="also write everything as JSON")
    g.add_argument("-v", "--verbose", action="store_true", help="log link and engine details to stderr")
    return p


# ----------------------------------------------------------------------------- board


@dataclass(frozen=True)
class Target:
    """Where to run: the simulated board (``port`` None) or a real one."""

    board: str                 # hw.boards name (for the build report and openFPGALoader)
    port: str | None
    baud: int
    timeout: float
    target_mhz: float          # the board's engine target clock
    loader_board: str | None = None

    @property
    def simulated(self) -> bool:
        return self.port is None

    def describe(self) -> str:
        if self.simulated:
            return ("simulated board (the engine's RTL in Verilator behind the same link), started because no "
                    "--port was given")
        return f"{self.board} on {self.port}" + ("" if self.port.startswith("tcp://") else f" at {self.baud:,} baud")


def make_target(args) -> Target:
    """Check the board options (cheap, before any model work)."""
    from hw.boards import UnknownBoard, get_board

    if args.board is not None and args.port is None:
        raise UsageError(f"--board {args.board} needs --port (the board's serial port, e.g. /dev/ttyUSB0); "
                         "without board options the simulated board runs")
    if args.program_fpga and args.port is None:
        raise UsageError("--program-fpga needs --port (a real board)")
    if args.bitstream and not args.program_fpga:
        raise UsageError("--bitstream is for --program-fpga")
    try:
        board = get_board(args.board or DEFAULT_BOARD)
    except UnknownBoard as exc:
        raise UsageError(str(exc)) from None
    if args.top_k < 1:
        raise UsageError(f"--top-k must be at least 1, not {args.top_k}")
    if args.timeout is not None and not args.timeout > 0:
        raise UsageError(f"--timeout must be positive, not {args.timeout:g}")
    if args.fmax is not None and not args.fmax > 0:
        raise UsageError(f"--fmax must be positive, not {args.fmax:g}")
    if args.baud < 1:
        raise UsageError(f"--baud must be positive, not {args.baud}")
    timeout = args.timeout or (TIMEOUT_SIM_S if args.port is None else TIMEOUT_BOARD_S)
    return Target(board.name, args.port, args.baud, timeout, board.clock_mhz, board.loader_board)


@contextlib.contextmanager
def open_accelerator(target: Target, say: Say):
    """The default ``connect``: a ``host.accelerator.Accelerator`` on the simulated or the real board."""
    from host.accelerator import Accelerator
    from host.protocol import Link
    from host.transport import open_transport

    with contextlib.ExitStack() as stack:
        if target.simulated:
            from hw.soc import simulated_board

            say("starting the simulated board (elaborating the SoC; Verilator builds it the first time) ...")
            board = stack.enter_context(simulated_board(progress=say))
            address = board.address
            say(f"simulated board listening on {address}")
        else:
            address = target.port
        link = stack.enter_context(Link(open_transport(address, baudrate=target.baud), timeout=target.timeout))
        yield Accelerator(link)


def program_fpga(target: Target, bitstream: Path, say: Say) -> None:
    """``openFPGALoader -b BOARD BITFILE`` (SRAM); one-line UsageError when it cannot."""
    from hw.build import ToolMissing, find_tool

    if target.loader_board is None:
        raise UsageError(f"board {target.board} is not programmed with openFPGALoader")
    if not bitstream.is_file():
        raise UsageError(f"no bitstream {bitstream}: build one with python -m hw.build --board {target.board}, "
                         "or give --bitstream FILE")
    try:
        tool = find_tool("openFPGALoader")
    except ToolMissing as exc:
        raise UsageError(str(exc)) from None
    say(f"programming the FPGA: openFPGALoader -b {target.loader_board} {bitstream}")
    done = subprocess.run([tool, "-b", target.loader_board, str(bitstream)], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise UsageError(f"openFPGALoader failed (exit {done.returncode}: {last}); is the board connected?")


# ----------------------------------------------------------------------------- engine clock


def _build_report_path(args, target: Target) -> tuple[Path | None, bool]:
    """The build report to read and whether the user named it."""
    if args.build_report:
        return Path(args.build_report), True
    for root in (Path.cwd(), REPO):
        path = root / "build" / target.board / "report.json"
        if path.is_file():
            return path, False
    return None, False


def _read_build_report(path: Path) -> dict:
    try:
        report = json.loads(path.read_text())
    except OSError as exc:
        raise UsageError(f"cannot read build report {path}: {exc.strerror or exc}") from None
    except ValueError:
        raise UsageError(f"build report {path} is not JSON") from None
    if not isinstance(report, dict) or report.get("schema") != BUILD_REPORT_SCHEMA:
        raise UsageError(f"{path} is not a build report of python -m hw.build (schema {BUILD_REPORT_SCHEMA})")
    return report


def engine_clock(args, target: Target, rows: int, cols: int, params=None) -> rep.Clock:
    """The clock for FPS: --fmax, else the clock of the SoC bitstream in the build report, else assumed.

    A build report counts only when it is for the SoC (``core == "soc"``) with this engine's
    parameters; FPS is then at the clock the bitstream runs at (its PLL output) when timing
    was met, otherwise at the achieved Fmax, labelled as such.
    """
    if args.fmax is not None:
        return rep.Clock(args.fmax, "--fmax")
    path, named = _build_report_path(args, target)
    assumed = lambda note: rep.Clock(target.target_mhz, "assumed", True, note)  # noqa: E731
    if path is None:
        return assumed("no build report")
    if named and not path.is_file():
        raise UsageError(f"no build report {path}")
    report = _read_build_report(path)
    shown = _shown(path)
    engine = report.get("engine") or {}
    fmax = report.get("engine_fmax_mhz")
    if report.get("core") != "soc" or fmax is None:
        return assumed(f"build report {shown} is not of the SoC (core {report.get('core')!r})")
    built = report.get("engine_params")
    if built is not None and hasattr(params, "as_dict"):
        if built != params.as_dict():
            return assumed(f"build report {shown} is for another engine configuration "
                           f"({engine.get('rows')}x{engine.get('cols')}, {engine.get('lanes')} lanes)")
    elif (engine.get("rows"), engine.get("cols")) != (rows, cols):
        return assumed(f"build report {shown} is for a {engine.get('rows')}x{engine.get('cols')} engine, "
                       f"not this {rows}x{cols} one")
    clock_mhz = (report.get("clock") or {}).get("target_mhz")
    if report.get("timing_met") and clock_mhz:
        return rep.Clock(float(clock_mhz), f"clock of the bitstream in {shown} (timing met, Fmax {float(fmax):.1f} MHz)")
    return rep.Clock(float(fmax), f"Fmax of {shown} (timing FAILED at the bitstream's clock)")


def _bitstream_path(args, target: Target) -> Path:
    if args.bitstream:
        return Path(args.bitstream)
    path, _ = _build_report_path(args, target)
    if path is None or not path.is_file():
        raise UsageError(f"no bitstream: build one with python -m hw.build --board {target.board}, "
                         "or give --bitstream FILE")
    files = _read_build_report(path).get("files") or {}
    return path.parent / files.get("bitstream", "top.bit")


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


# ----------------------------------------------------------------------------- images


@dataclass(frozen=True)
class InputImage:
    """One input: where it came from, float pixels CHW in [0, 1], and the label its file name gives."""

    source: str
    pixels: np.ndarray
    label: int | None = None


_CHANNEL_NAMES = {1: "grayscale", 2: "grayscale+alpha", 3: "RGB", 4: "RGBA"}


def _channels(c: int) -> str:
    return _CHANNEL_NAMES.get(c, f"{c} channels")


def load_image(path: str | Path, hwc: tuple[int, int, int]) -> np.ndarray:
    """PNG/JPEG -> float CHW in [0, 1]; UsageError (one line naming the file) unless it is exactly H x W x C."""
    from PIL import Image

    path = Path(path)
    h, w, c = hwc
    if not path.is_file():
        raise UsageError(f"image {path}: no such file")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode == "1":
                im = im.convert("L")
            elif im.mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif im.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                im = im.convert("RGB")
            if im.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):  # 16-bit grayscale PNG
                pixels = np.asarray(im, dtype=np.float64) / 65535.0
            elif im.mode in ("L", "LA", "RGB", "RGBA"):
                pixels = np.asarray(im, dtype=np.float64) / 255.0
            else:
                raise UsageError(f"image {path}: pixel format {im.mode} is not supported (use 8-bit RGB or grayscale)")
    except UsageError:
        raise
    except Exception as exc:  # PIL raises many types for unreadable files
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise UsageError(f"image {path}: cannot read it as an image ({reason})") from None
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    ih, iw, ic = pixels.shape
    if (ih, iw, ic) != (h, w, c):
        raise UsageError(f"image {path} is {iw}x{ih} {_channels(ic)}; the program needs {w}x{h} {_channels(c)}")
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def synthetic_image(hwc: tuple[int, int, int], seed: int = SYNTHETIC_SEED) -> np.ndarray:
    h, w, c = hwc
    return np.random.default_rng(seed).random((c, h, w))


def default_images(hwc: tuple[int, int, int], classes) -> tuple[list[InputImage], str]:
    """The first committed sample that fits the program, else the synthetic image; and a line saying which."""
    h, w, c = hwc
    samples = sorted(p for p in SAMPLES_DIR.glob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    for path in samples:
        try:
            pixels = load_image(path, hwc)
        except UsageError:
            continue
        return ([InputImage(_shown(path), pixels, rep.label_from_name(path, classes))],
                f"no --image: the first committed sample that fits, {_shown(path)}")
    return ([InputImage(f"synthetic (uniform random pixels, seed {SYNTHETIC_SEED})", synthetic_image(hwc))],
            f"no --image and no sample in {_shown(SAMPLES_DIR)} is {w}x{h} {_channels(c)}: a synthetic image "
            f"(uniform random pixels, seed {SYNTHETIC_SEED})")


def read_inputs(args, program) -> tuple[list[InputImage], str]:
    hwc = tuple(program.tensors[program.input].shape)
    if not args.image:
        return default_images(hwc, program.classes)
    images = [InputImage(str(p), load_image(p, hwc), rep.label_from_name(p, program.classes)) for p in args.image]
    return images, f"{len(images)} image{'s' if len(images) > 1 else ''} from --image"


# ----------------------------------------------------------------------------- inference


def run_image(acc, compiled, program, image: InputImage, *, check: bool, top: int, clock: rep.Clock
              ) -> rep.ImageReport:
    """One inference on the engine, its check against the golden model, and its figures."""
    from quant import golden

    x_q = golden.quantize_input(program, image.pixels)
    result = acc.infer(x_q.numpy())
    logits = np.asarray(result.logits, dtype=np.int64).ravel()
    expected = golden.run(program, x_q)[program.output].flatten().numpy() if check else None
    rows, cols = int(acc.params.rows), int(acc.params.cols)
    return rep.ImageReport(
        source=image.source,
        logits=[int(v) for v in logits],
        top=rep.top_k(logits, program.tensors[program.output].scale, program.classes, top),
        layers=rep.layer_rows(compiled.layer_names, result.layer_cycles, compiled.macs, rows, cols),
        total_cycles=int(result.total_cycles), rows=rows, cols=cols, clock=clock,
        expected=None if expected is None else [int(v) for v in expected],
        mismatch=None if expected is None else rep.compare_logits(expected, logits),
        label=image.label,
        label_name=None if image.label is None else rep.class_name(program.classes, image.label),
        extra={"layer_beats": [int(b) for b in result.layer_beats]} if hasattr(result, "layer_beats") else {})


@contextlib.contextmanager
def _on_link_error(target: Target):
    """A link failure names the board it happened on (a transport's own message already does)."""
    from host.protocol import LinkError
    from host.transport import TransportError

    try:
        yield
    except LinkError as exc:
        if isinstance(exc, TransportError):
            raise
        where = "simulated board" if target.simulated else target.port
        raise UsageError(f"{where}: {(str(exc).splitlines() or [type(exc).__name__])[0]}") from None


def _params_text(params) -> str:
    shown = ("lanes", "act_words", "weight_words", "max_layers")  # all of them go to --report
    rest = ", ".join(f"{k.replace('_', ' ')} {getattr(params, k):,}" for k in shown if hasattr(params, k))
    return f"{params.rows}x{params.cols} multiplier array" + (f" ({rest})" if rest else "")


def _model_text(program) -> str:
    args = ", ".join(f"{k} {v}" for k, v in program.model_args.items())
    return f"{program.model}" + (f" ({args})" if args else "") + f", {program_bits(program)}, " \
        f"{len(program.layers)} layers, input {'x'.join(map(str, program.tensors[program.input].shape))} (HWC)"


def _run(args, connect, compile_program) -> int:
    out = lambda line="": print(line, flush=True)  # noqa: E731
    note = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731

    target = make_target(args)
    for path in args.image or ():  # cheap checks before the model is exported
        if not Path(path).is_file():
            raise UsageError(f"image {path}: no such file")
    if args.report and not Path(args.report).resolve().parent.is_dir():
        raise UsageError(f"cannot write report {args.report}: no such directory")
    if args.program_fpga:
        program_fpga(target, _bitstream_path(args, target), note)

    program, weights = resolve_program(args.model, args.expansion, args.bits, args.weights, progress=note,
                                       dataset=args.dataset)
    images, input_text = read_inputs(args, program)
    out(rep.format_header([("model", _model_text(program)), ("weights", weights), ("input", input_text),
                           ("board", target.describe())]))

    if compile_program is None:
        from host.compile import compile_program
    reports = []
    with _on_link_error(target), connect(target, note) as acc:
        params = acc.params
        compiled = compile_program(program, params)
        clock = engine_clock(args, target, int(params.rows), int(params.cols), params)
        t0 = time.monotonic()
        acc.load(compiled, progress=sys.stderr.isatty())
        upload_s = time.monotonic() - t0
        out(rep.format_header([("engine", _params_text(params)),
                               ("program", f"{len(compiled.layer_names)} engine passes "
                                           f"({len(program.layers)} layers; a CSC block's two 1x1 layers "
                                           f"share a pass), {compiled.upload_words:,} words uploaded "
                                           f"in {upload_s:.2f} s")]))
        for i, image in enumerate(images):
            r = run_image(acc, compiled, program, image, check=args.check, top=args.top_k, clock=clock)
            same_cycles = bool(reports) and [x["cycles"] for x in reports[-1].layers] == [
                x["cycles"] for x in r.layers]
            out()
            out(f"image {i + 1}/{len(images)}  {image.source}")
            out(rep.format_image(r, program.tensors[program.output].scale, show_layers=not same_cycles))
            reports.append(r)

    out()
    out(rep.format_summary(reports))
    if args.report:
        _write_report(args, program, weights, target, params, compiled, upload_s, clock, reports)
        out(f"report    {args.report}")
    return 1 if any(r.bit_exact is False for r in reports) else 0


def _write_report(args, program, weights, target, params, compiled, upload_s, clock, reports) -> None:
    report = {
        "schema": REPORT_SCHEMA,
        "command": shlex.join(["python", "host/run.py", *args.argv]),
        "model": {"name": program.model, "model_args": program.model_args, "bits": program_bits(program),
                  "weights": weights, "trained": program.meta.get("trained"), "classes": program.classes,
                  "logit_scale": program.tensors[program.output].scale},
        "board": {"simulated": target.simulated, "board": target.board, "port": target.port},
        "engine": asdict(params) if is_dataclass(params) else {"rows": params.rows, "cols": params.cols},
        "program": {"layers": list(compiled.layer_names), "macs": [int(m) for m in compiled.macs],
                    "upload_words": int(compiled.upload_words), "upload_seconds": round(upload_s, 3)},
        "clock": {"mhz": clock.mhz, "source": clock.source, "assumed": clock.assumed, "note": clock.note},
        "probabilities": "softmax of the dequantised logits (integer logit x logit_scale)",
        "fps": "engine clock / total cycles, compute only (link transfers not counted)",
        "images": [r.as_dict() for r in reports],
        "all_bit_exact": None if not any(r.checked for r in reports) else all(
            r.bit_exact for r in reports if r.checked),
    }
    try:
        rep.write_json(args.report, report)
    except OSError as exc:
        raise UsageError(f"cannot write report {args.report}: {exc.strerror or exc}") from None


# ----------------------------------------------------------------------------- main

#: Modules of the engine side; a checkout without them gets one line, not a traceback.
_ENGINE_MODULES = ("host.compile", "host.accelerator", "hw.soc", "sim.board")


def _expected_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input or a board problem: one line, exit 2 (others are bugs: traceback)."""
    from host.protocol import LinkError  # TransportError and AcceleratorError are ones
    from quant.program import ProgramError

    errors = [UsageError, ModelError, ProgramError, LinkError]
    for module, name in (("host.compile", "CompileError"), ("sim.board", "BoardError")):
        if module in sys.modules:  # an exception of a module never imported cannot have been raised
            errors.append(getattr(sys.modules[module], name))
    return tuple(errors)


def main(argv=None, *, connect=None, compile_program=None) -> int:
    """The command line; returns the exit status.

    Parameters
    ----------
    connect : callable, optional
        ``connect(target: Target, say) -> context manager`` yielding an accelerator
        (``.params``, ``.load(compiled, progress=)``, ``.infer(x_q)``); default
        :func:`open_accelerator`.
    compile_program : callable, optional
        ``compile_program(program, params)``; default ``host.compile.compile_program``.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a bad argument (one line already printed)
        return exc.code if isinstance(exc.code, int) else 2
    args.argv = argv
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(name)s: %(message)s", stream=sys.stderr)
    try:
        with warnings.catch_warnings():
            if not args.verbose:
                warnings.simplefilter("ignore")
            return _run(args, connect or open_accelerator, compile_program)
    except KeyboardInterrupt:
        return 130
    except ModuleNotFoundError as exc:
        if exc.name not in _ENGINE_MODULES:
            raise
        print(f"error: {exc.name} is not in this checkout; the engine side is needed to run on a board",
              file=sys.stderr)
        return 2
    except Exception as exc:
        if not isinstance(exc, _expected_errors()):
            raise
        print(f"error: {(str(exc).strip().splitlines() or [type(exc).__name__])[0]}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
