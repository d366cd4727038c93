"""The integer program: a typed, versioned file format for quantised shift networks.

A program is a list of engine passes (``Layer``) over named tensors
(``TensorSpec``). Each pass is exactly the chain of docs/NUMERICS.md section 8:
gather (shift / im2col) -> stride -> 1x1 accumulate -> requantise -> residual add
-> global average pool. The file layout is documented in docs/PROGRAM.md.

A ``.shiftprog`` file is a zip archive holding ``program.json`` (format name,
version, tensors, layer descriptors) and one ``.npy`` member per integer array
(loaded with ``allow_pickle=False``). Everything is validated on load; any
problem raises ``ProgramError`` with a one-line message.
"""

from __future__ import annotations

import io
import json
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import numerics

__all__ = [
    "FORMAT",
    "VERSION",
    "ProgramError",
    "TensorSpec",
    "Requant",
    "Residual",
    "Pool",
    "Layer",
    "Program",
    "save",
    "load",
]

FORMAT = "shiftprog"
VERSION = 1

#: Largest number of gathered input channels of one pass (NUMERICS.md section 4).
MAX_CIN = 8192
_BIAS_LIMIT = 1 << 30


class ProgramError(ValueError):
    """A program file or object that breaks the format or the numerics contract."""


@dataclass(frozen=True)
class TensorSpec:
    """A feature map of the program: ``real = q * scale``, stored HWC."""

    name: str
    shape: tuple[int, int, int]
    bits: int
    signed: bool
    scale: float

    @property
    def range(self) -> tuple[int, int]:
        return numerics.act_range(self.bits, self.signed)


@dataclass(frozen=True)
class Requant:
    """Per-channel ``clamp(round_shift(acc * multiplier, shift), lo, hi)``."""

    multiplier: np.ndarray
    shift: np.ndarray
    lo: int
    hi: int


@dataclass(frozen=True)
class Residual:
    """Fused ``clamp(y + round_shift(tensor * multiplier, shift), lo, hi)``."""

    tensor: str
    multiplier: int
    shift: int
    lo: int
    hi: int


@dataclass(frozen=True)
class Pool:
    """Fused global average pool ``clamp(round_shift(sum * multiplier, shift), lo, hi)``."""

    multiplier: int
    shift: int
    lo: int
    hi: int


@dataclass
class Layer:
    """One engine pass; see docs/NUMERICS.md section 8 for the order of operations.

    Attributes
    ----------
    weight : int array [C_out, C_gather]
    bias : int array [C_out]
    gather : int array [C_gather, 3] of (src, dy, dx), or None (no shift: C_gather = C_in)
    requant : None means a raw 32-bit output (classifier logits)
    """

    name: str
    input: str
    output: str
    weight: np.ndarray
    bias: np.ndarray
    weight_bits: int = 8
    stride: int = 1
    gather: np.ndarray | None = None
    requant: Requant | None = None
    residual: Residual | None = None
    pool: Pool | None = None

    @property
    def macs_per_pixel(self) -> int:
        return int(self.weight.shape[0] * self.weight.shape[1])


@dataclass
class Program:
    """A whole network as integer passes over named tensors."""

    model: str
    input: str
    output: str
    tensors: dict[str, TensorSpec]
    layers: list[Layer]
    model_args: dict = field(default_factory=dict)
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    classes: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    def validate(self) -> "Program":
        """Check every shape, range and cross-reference; raise ProgramError on the first problem."""
        _validate(self)
        return self


# ----------------------------------------------------------------------------- validation


def _fail(where: str, what: str):
    raise ProgramError(f"{where}: {what}")


def _check_int_array(where, name, arr, shape_len, lo=None, hi=None):
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "iu":
        _fail(where, f"{name} must be an integer array")
    if arr.ndim != shape_len:
        _fail(where, f"{name} must have {shape_len} dimensions, has shape {arr.shape}")
    if arr.size and lo is not None and (arr.min() < lo or arr.max() > hi):
        _fail(where, f"{name} holds values outside [{lo}, {hi}]")


def _validate(p: Program) -> None:
    if p.input not in p.tensors:
        _fail("program", f"input tensor {p.input!r} is not declared")
    if p.output not in p.tensors:
        _fail("program", f"output tensor {p.output!r} is not declared")
    for name, t in p.tensors.items():
        if t.name != name:
            _fail(f"tensor {name!r}", "name does not match its key")
        if len(t.shape) != 3 or any(int(d) < 1 for d in t.shape):
            _fail(f"tensor {name!r}", f"shape must be three positive sizes (H, W, C), got {t.shape}")
        if t.bits not in (4, 8, 32):
            _fail(f"tensor {name!r}", f"bits must be 4, 8 or 32, got {t.bits}")
        if t.bits == 32 and not t.signed:
            _fail(f"tensor {name!r}", "32-bit tensors (raw accumulators) are signed")
    if p.tensors[p.input].bits == 32:
        _fail("program", "the input tensor must be 4 or 8 bits")
    if p.mean and len(p.mean) != p.tensors[p.input].shape[2]:
        _fail("program", f"mean has {len(p.mean)} entries for {p.tensors[p.input].shape[2]} input channels")
    if len(p.std) != len(p.mean) or any(s <= 0 for s in p.std):
        _fail("program", "std must have as many positive entries as mean")

    produced = {p.input}
    for index, layer in enumerate(p.layers):
        where = f"layer {index} ({layer.name})"
        for ref in (layer.input, layer.output) + ((layer.residual.tensor,) if layer.residual else ()):
            if ref not in p.tensors:
                _fail(where, f"tensor {ref!r} is not declared")
        if layer.input not in produced:
            _fail(where, f"reads {layer.input!r} before any layer writes it")
        if layer.residual and layer.residual.tensor not in produced:
            _fail(where, f"residual {layer.residual.tensor!r} is read before any layer writes it")
        if layer.output in produced:
            _fail(where, f"writes {layer.output!r} a second time")
        src, dst = p.tensors[layer.input], p.tensors[layer.output]
        if src.bits == 32:
            _fail(where, "a raw 32-bit tensor cannot feed another layer")

        if layer.weight_bits not in (4, 8):
            _fail(where, f"weight_bits must be 4 or 8, got {layer.weight_bits}")
        wlo, whi = numerics.weight_range(layer.weight_bits)
        _check_int_array(where, "weight", layer.weight, 2, wlo, whi)
        c_out, c_gather = layer.weight.shape
        if not 1 <= c_gather <= MAX_CIN:
            _fail(where, f"{c_gather} input channels (at most {MAX_CIN})")
        _check_int_array(where, "bias", layer.bias, 1, -_BIAS_LIMIT + 1, _BIAS_LIMIT - 1)
        if layer.bias.shape != (c_out,):
            _fail(where, f"bias has shape {layer.bias.shape}, expected ({c_out},)")
        if layer.stride not in (1, 2, 4):
            _fail(where, f"stride must be 1, 2 or 4, got {layer.stride}")

        if layer.gather is None:
            if c_gather != src.shape[2]:
                _fail(where, f"weight reads {c_gather} channels but {layer.input!r} has {src.shape[2]}")
        else:
            _check_int_array(where, "gather", layer.gather, 2)
            if layer.gather.shape != (c_gather, 3):
                _fail(where, f"gather table has shape {layer.gather.shape}, expected ({c_gather}, 3)")
            if layer.gather.size:
                s, dy, dx = layer.gather[:, 0], layer.gather[:, 1], layer.gather[:, 2]
                if s.min() < 0 or s.max() >= src.shape[2]:
                    _fail(where, f"gather table names a source channel outside 0..{src.shape[2] - 1}")
                if np.abs(dy).max() >= src.shape[0] + 8 or np.abs(dx).max() >= src.shape[1] + 8:
                    _fail(where, "gather offsets are larger than the image")

        h_out = -(-src.shape[0] // layer.stride)
        w_out = -(-src.shape[1] // layer.stride)
        expect = (1, 1, c_out) if layer.pool else (h_out, w_out, c_out)
        if tuple(dst.shape) != expect:
            _fail(where, f"output {layer.output!r} has shape {tuple(dst.shape)}, expected {expect}")

        if layer.requant is None:
            if dst.bits != 32 or layer.residual or layer.pool:
                _fail(where, "a raw (not requantised) output must be a 32-bit tensor without residual or pool")
        else:
            rq = layer.requant
            _check_int_array(where, "requant multiplier", rq.multiplier, 1, 1, (1 << numerics.MULT_BITS) - 1)
            _check_int_array(where, "requant shift", rq.shift, 1, 0, numerics.SHIFT_MAX)
            if rq.multiplier.shape != (c_out,) or rq.shift.shape != (c_out,):
                _fail(where, f"requant tables must have {c_out} entries")
            final = layer.pool or layer.residual or rq
            lo_t, hi_t = dst.range
            if not (lo_t <= final.lo <= final.hi <= hi_t):
                _fail(where, f"final clamp [{final.lo}, {final.hi}] exceeds {layer.output!r} range [{lo_t}, {hi_t}]")
        for part, name in ((layer.residual, "residual"), (layer.pool, "pool")):
            if part is None:
                continue
            if not 1 <= part.multiplier < (1 << numerics.MULT_BITS) or not 0 <= part.shift <= numerics.SHIFT_MAX:
                _fail(where, f"{name} multiplier/shift out of range")
            if part.lo > part.hi:
                _fail(where, f"{name} clamp is empty")
        if layer.residual:
            if tuple(p.tensors[layer.residual.tensor].shape) != (h_out, w_out, c_out):
                _fail(where, f"residual {layer.residual.tensor!r} does not match the output shape")
        produced.add(layer.output)
    if p.output not in produced:
        _fail("program", f"no layer writes the output tensor {p.output!r}")


# ----------------------------------------------------------------------------- file I/O

_LAYER_ARRAYS = ("weight", "bias", "gather")


def _array_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def save(program: Program, path: str | Path) -> None:
    """Validate ``program`` and write it as a ``.shiftprog`` file."""
    program.validate()
    arrays: dict[str, np.ndarray] = {}
    layers = []
    for index, layer in enumerate(program.layers):
        entry = {"name": layer.name, "input": layer.input, "output": layer.output,
                 "weight_bits": layer.weight_bits, "stride": layer.stride}
        for key in _LAYER_ARRAYS:
            arr = getattr(layer, key)
            if arr is not None:
                member = f"arrays/{index:03d}.{key}.npy"
                arrays[member] = arr
                entry[key] = member
        if layer.requant is not None:
            mm, ms = f"arrays/{index:03d}.multiplier.npy", f"arrays/{index:03d}.shift.npy"
            arrays[mm], arrays[ms] = layer.requant.multiplier, layer.requant.shift
            entry["requant"] = {"multiplier": mm, "shift": ms, "lo": layer.requant.lo, "hi": layer.requant.hi}
        if layer.residual is not None:
            entry["residual"] = vars(layer.residual).copy()
        if layer.pool is not None:
            entry["pool"] = vars(layer.pool).copy()
        layers.append(entry)
    header = {
        "format": FORMAT,
        "version": VERSION,
        "model": program.model,
        "model_args": program.model_args,
        "input": program.input,
        "output": program.output,
        "mean": list(program.mean),
        "std": list(program.std),
        "classes": list(program.classes),
        "meta": program.meta,
        "tensors": [
            {"name": t.name, "shape": list(t.shape), "bits": t.bits, "signed": t.signed, "scale": t.scale}
            for t in program.tensors.values()
        ],
        "layers": layers,
    }
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("program.json", json.dumps(header, indent=1))
        for member, arr in arrays.items():
            zf.writestr(member, _array_bytes(arr))
    tmp.replace(path)


def load(path: str | Path) -> Program:
    """Read and validate a ``.shiftprog`` file; every problem raises ProgramError (one line)."""
    path = Path(path)
    if not path.is_file():
        raise ProgramError(f"{path}: no such program file")
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
            if bad is not None:
                raise ProgramError(f"{path}: member {bad} is corrupted (CRC mismatch)")
            header = json.loads(zf.read("program.json"))
            return _from_header(header, zf, path)
    except ProgramError:
        raise
    except zipfile.BadZipFile:
        raise ProgramError(f"{path}: not a shiftprog file (not a zip archive, or truncated)") from None
    except zlib.error:
        raise ProgramError(f"{path}: a member is corrupted (cannot be decompressed)") from None
    except KeyError as exc:
        raise ProgramError(f"{path}: missing entry {exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ProgramError(f"{path}: program.json is not valid JSON") from None
    except (ValueError, TypeError, OSError, EOFError) as exc:
        raise ProgramError(f"{path}: malformed program ({exc})") from None


def _from_header(header: dict, zf: zipfile.ZipFile, path: Path) -> Program:
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ProgramError(f"{path}: not a shiftprog file (format field is {header.get('format')!r})")
    if header.get("version") != VERSION:
        raise ProgramError(
            f"{path}: format version {header.get('version')!r} is not supported (this tool reads version {VERSION})"
        )

    def array(member: str) -> np.ndarray:
        return np.load(io.BytesIO(zf.read(member)), allow_pickle=False)

    tensors = {}
    for t in header["tensors"]:
        tensors[t["name"]] = TensorSpec(t["name"], tuple(int(d) for d in t["shape"]), int(t["bits"]),
                                        bool(t["signed"]), float(t["scale"]))
    layers = []
    for entry in header["layers"]:
        rq = entry.get("requant")
        layers.append(Layer(
            name=entry["name"], input=entry["input"], output=entry["output"],
            weight=array(entry["weight"]), bias=array(entry["bias"]),
            weight_bits=int(entry["weight_bits"]), stride=int(entry["stride"]),
            gather=array(entry["gather"]) if "gather" in entry else None,
            requant=Requant(array(rq["multiplier"]), array(rq["shift"]), int(rq["lo"]), int(rq["hi"])) if rq else None,
            residual=Residual(**entry["residual"]) if entry.get("residual") else None,
            pool=Pool(**entry["pool"]) if entry.get("pool") else None,
        ))
    program = Program(
        model=header["model"], input=header["input"], output=header["output"], tensors=tensors, layers=layers,
        model_args=header.get("model_args", {}), mean=tuple(header.get("mean", ())), std=tuple(header.get("std", ())),
        classes=list(header.get("classes", [])), meta=header.get("meta", {}),
    )
    try:
        program.validate()
    except ProgramError as exc:
        raise ProgramError(f"{path}: {exc}") from None
    return program


# ----------------------------------------------------------------------------- command line


def _describe(p: Program) -> str:
    lines = [f"model {p.model} {p.model_args}  input {p.input} {p.tensors[p.input].shape}  "
             f"output {p.output} {p.tensors[p.output].shape}",
             f"{'layer':<24} {'in':>14} {'out':>14} {'gather':>7} {'stride':>6} {'w':>2} {'extras':<16} {'MACs':>12}"]
    total = 0
    for layer in p.layers:
        src, dst = p.tensors[layer.input], p.tensors[layer.output]
        h_out, w_out = -(-src.shape[0] // layer.stride), -(-src.shape[1] // layer.stride)
        macs = h_out * w_out * layer.macs_per_pixel
        total += macs
        extras = ",".join(name for name, part in (("relu", layer.requant and layer.requant.lo == 0),
                                                  ("res", layer.residual), ("pool", layer.pool),
                                                  ("raw", layer.requant is None)) if part)
        gather = "-" if layer.gather is None else str(len(layer.gather))
        lines.append(f"{layer.name:<24} {'x'.join(map(str, src.shape)):>14} {'x'.join(map(str, dst.shape)):>14} "
                     f"{gather:>7} {layer.stride:>6} {layer.weight_bits:>2} {extras:<16} {macs:>12,}")
    lines.append(f"{len(p.layers)} passes, {total:,} MACs per inference")
    return "\n".join(lines)


def main(argv=None) -> int:
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m quant.program",
                                     description="Validate a .shiftprog integer program and list its passes.")
    parser.add_argument("program", help="path to a .shiftprog file")
    args = parser.parse_args(argv)
    try:
        p = load(args.program)
    except ProgramError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(_describe(p))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
