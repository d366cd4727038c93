"""Which integer program ``python host/run.py --model NAME`` runs.

:func:`resolve_program` turns the command line's model options into a validated
:class:`quant.program.Program`, in this order:

1. ``--weights FILE``: a ``.shiftprog`` (read with :func:`quant.program.load`) or a
   QAT checkpoint of ``python -m quant.train --bits w8a8|w4a4`` (exported in memory
   with :func:`quant.export.to_program`, exactly as ``python -m quant.export`` does);
2. a committed trained program in ``models/trained/`` (``*.shiftprog``) whose header
   names the model, its expansion and, if asked for, its bits (w8a8 preferred);
3. deterministic *untrained* weights (:func:`quant.export.untrained_net`, seed 0),
   the same program as ``python -m quant.export --untrained NAME``: the engine and
   the bit-exact check work, the classes mean nothing.

Every expected problem raises :class:`ModelError` (or :class:`quant.program.ProgramError`
for a broken program file) with a one-line message.
"""

from __future__ import annotations

import json
import logging
import zipfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["ModelError", "TRAINED_DIR", "UNTRAINED_SEED", "UNTRAINED_NOTE", "resolve_program",
           "find_trained", "program_bits", "is_shiftprog"]

log = logging.getLogger(__name__)

#: Committed trained programs (``*.shiftprog``).
TRAINED_DIR = Path(__file__).resolve().parent.parent / "models" / "trained"
#: Weight seed of the untrained fallback.
UNTRAINED_SEED = 0
#: What the user is told when the untrained fallback runs.
UNTRAINED_NOTE = f"UNTRAINED weights (deterministic, seed {UNTRAINED_SEED}): classes are meaningless"

BITS = ("w8a8", "w4a4")


class ModelError(ValueError):
    """The model options name nothing that can run (one-line message)."""


def resolve_program(name: str | None, expansion: float | None = None, bits: str | None = None,
                    weights: str | Path | None = None, *, trained_dir: str | Path | None = None,
                    progress: Callable[[str], None] | None = None, dataset: str | None = None):
    """The program to run and a one-line description of where it came from.

    Parameters
    ----------
    name : str or None
        Registry model name (``models.names()``); may be None only with ``weights``,
        whose header then names the model.
    expansion : float, optional
        Expansion E of the shift modules; None means the model's default (or, with
        ``weights``, whatever the file holds).
    bits : {"w8a8", "w4a4"}, optional
        None: any (w8a8 preferred; the untrained fallback uses w8a8).
    weights : path, optional
        A ``.shiftprog`` or a QAT checkpoint.
    trained_dir : path, optional
        Where committed trained programs live (default :data:`TRAINED_DIR`).
    progress : callable, optional
        Called with a line before slow steps (exporting a model takes seconds).
    dataset : str, optional
        Only a trained program of this dataset (``cifar10``, ``fashion-mnist``);
        default: any, CIFAR-10 preferred.

    Returns
    -------
    (Program, str)

    Raises
    ------
    ModelError, quant.program.ProgramError
        One line each.
    """
    if bits is not None and bits not in BITS:
        raise ModelError(f"--bits must be one of {', '.join(BITS)}, not {bits!r}")
    say = progress or (lambda line: None)
    if weights is not None:
        program, description = _from_weights(Path(weights), say)
        _check_matches(program, name, expansion, bits, str(weights))
        return program, description
    if name is None:
        raise ModelError("give --model NAME (or --weights FILE)")
    model_args = _model_args(name, expansion)
    found = find_trained(name, model_args.get("expansion"), bits, trained_dir, dataset=dataset)
    if found is None and dataset is not None:
        raise ModelError(f"no trained {name} program for dataset {dataset!r} in "
                         f"{_shown(Path(trained_dir or TRAINED_DIR))}")
    if found is not None:
        from quant.program import load

        program = load(found)
        return program, f"trained program {_shown(found)}{_provenance(program)}"
    say(f"no trained {name} program in {_shown(Path(trained_dir or TRAINED_DIR))}: exporting deterministic "
        f"untrained weights (seed {UNTRAINED_SEED}), a few seconds ...")
    return _untrained(name, model_args, bits or "w8a8"), UNTRAINED_NOTE


# ----------------------------------------------------------------------------- model name and arguments


def _model_args(name: str, expansion: float | None) -> dict:
    """``model_args`` as ``python -m quant.export --untrained`` writes them; checks the name and E."""
    import models

    try:
        entry = models.entry(name)
    except ValueError as exc:
        raise ModelError(str(exc)) from None
    if expansion is None:
        return {}
    if "expansion" not in entry.kwargs:
        raise ModelError(f"model {name} has no expansion parameter (--expansion is for the shift networks)")
    if not expansion > 0:
        raise ModelError(f"--expansion must be positive, not {expansion:g}")
    return {"expansion": int(expansion) if float(expansion).is_integer() else float(expansion)}


def _expansion_of(model: str, model_args: dict):
    """The expansion a program was built with (the registry default when its header omits it)."""
    if "expansion" in model_args:
        return float(model_args["expansion"])
    import models

    try:
        default = models.entry(model).kwargs.get("expansion")
    except ValueError:
        return None
    return None if default is None else float(default)


def program_bits(program) -> str:
    """``"w8a8"`` or ``"w4a4"``: from ``meta["bits"]``, else from the activation widths."""
    return _header_bits(program.meta, [t.bits for name, t in program.tensors.items() if name != program.input])


def _header_bits(meta: dict, tensor_bits: list[int]) -> str:
    if isinstance(meta, dict) and meta.get("bits") in BITS:
        return meta["bits"]
    return "w4a4" if 4 in tensor_bits else "w8a8"


def _check_matches(program, name, expansion, bits, where: str) -> None:
    """A program file must be what the other options ask for, when they ask."""
    if name is not None and program.model != name:
        raise ModelError(f"{where} holds a {program.model} program, not {name}")
    if expansion is not None:
        have = _expansion_of(program.model, program.model_args)
        if have is None or have != float(expansion):
            raise ModelError(f"{where} has expansion {'none' if have is None else f'{have:g}'}, "
                             f"not {float(expansion):g}")
    if bits is not None and program_bits(program) != bits:
        raise ModelError(f"{where} is a {program_bits(program)} program, not {bits}")


# ----------------------------------------------------------------------------- --weights FILE


def is_shiftprog(path: Path) -> bool:
    """True for a zip archive holding ``program.json`` (a PyTorch checkpoint is a zip too, without it)."""
    try:
        with zipfile.ZipFile(path) as zf:
            return "program.json" in zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return False


def _from_weights(path: Path, say):
    from quant.program import ProgramError, load

    if not path.is_file():
        raise ModelError(f"{path}: no such weights file")
    if path.suffix == ".shiftprog" or is_shiftprog(path):
        program = load(path)
        if program.meta.get("trained") is False:
            seed = program.meta.get("seed")
            seed_text = "" if seed is None else f" (seed {seed})"
            return program, f"program {path}: UNTRAINED weights{seed_text}: classes are meaningless"
        return program, f"program {path}{_provenance(program)}"
    if not zipfile.is_zipfile(path):
        raise ProgramError(f"{path}: neither a .shiftprog program nor a PyTorch checkpoint")
    say(f"exporting checkpoint {path} to an integer program ...")
    return _from_checkpoint(path), f"checkpoint {path}, exported in memory"


def _from_checkpoint(path: Path):
    """What ``python -m quant.export CHECKPOINT`` would write, without the file."""
    from quant.export import ExportError, to_program
    from quant.qat import QuantNet
    from quant.train import UsageError, load_model

    try:
        net, meta = load_model(path)
    except UsageError as exc:  # CheckpointError included
        raise ModelError(str(exc)) from None
    except (KeyError, ValueError, TypeError) as exc:
        raise ModelError(f"checkpoint {path} does not describe a model this project builds ({exc})") from None
    if not isinstance(net, QuantNet):
        raise ModelError(f"{path} is a {meta.get('bits')} checkpoint; the engine needs a QAT one "
                         "(train with --bits w8a8 or w4a4, e.g. starting from it with --init)")
    shape = (int(meta["in_channels"]), *map(int, meta["input_size"]))
    try:
        return to_program(net, model=meta["model"], model_args=meta["model_kwargs"], input_shape=shape,
                          mean=meta["mean"], std=meta["std"], classes=meta.get("classes", ()),
                          meta={"trained": True, "bits": meta["bits"], "dataset": meta["dataset"],
                                "checkpoint": str(path)})
    except ExportError as exc:
        raise ModelError(f"{path}: {str(exc).splitlines()[0]}") from None


# ----------------------------------------------------------------------------- models/trained/


def _read_header(path: Path) -> dict | None:
    try:
        with zipfile.ZipFile(path) as zf:
            header = json.loads(zf.read("program.json"))
    except (zipfile.BadZipFile, KeyError, OSError, ValueError):
        log.warning("%s: not a readable .shiftprog, skipped", path)
        return None
    return header if isinstance(header, dict) else None


def find_trained(name: str, expansion: float | None = None, bits: str | None = None,
                 trained_dir: str | Path | None = None, *, dataset: str | None = None) -> Path | None:
    """The committed trained program for ``name`` (and E, bits, dataset), or None.

    Only headers are read (cheap). Among several matches: w8a8 before w4a4, then
    CIFAR-10 before other datasets, then by file name. Files whose header says ``meta.trained == false`` are not "trained".
    """
    folder = Path(trained_dir or TRAINED_DIR)
    if not folder.is_dir():
        return None
    want_e = _expansion_of(name, {} if expansion is None else {"expansion": expansion})
    candidates = []
    for path in sorted(folder.glob("*.shiftprog")):
        header = _read_header(path)
        if header is None or header.get("model") != name:
            continue
        meta = header.get("meta") or {}
        if isinstance(meta, dict) and meta.get("trained") is False:
            continue
        if _expansion_of(name, header.get("model_args") or {}) != want_e:
            continue
        tensor_bits = [int(t.get("bits", 8)) for t in header.get("tensors", [])
                       if isinstance(t, dict) and t.get("name") != header.get("input")]
        have_bits = _header_bits(meta, tensor_bits)
        if bits is not None and have_bits != bits:
            continue
        trained_on = meta.get("dataset") if isinstance(meta, dict) else None
        if dataset is not None and trained_on != dataset:
            continue
        candidates.append((have_bits != "w8a8", trained_on != "cifar10", path.name, path))
    return min(candidates)[-1] if candidates else None


def _provenance(program) -> str:
    meta = program.meta if isinstance(program.meta, dict) else {}
    parts = [program_bits(program)]
    if meta.get("dataset"):
        parts.append(f"trained on {meta['dataset']}")
    for key in ("accuracy", "test_accuracy", "top1"):
        value = meta.get(key)
        if isinstance(value, (int, float)):
            parts.append(f"accuracy {100 * value:.2f}%" if value <= 1 else f"accuracy {value:.2f}%")
            break
    return f" ({', '.join(parts)})"


def _shown(path: Path) -> str:
    """A path relative to the working directory when it lies below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


# ----------------------------------------------------------------------------- untrained fallback


def _untrained(name: str, model_args: dict, bits: str):
    """What ``python -m quant.export --untrained NAME [--expansion E] --bits B`` writes (seed 0)."""
    import warnings

    with warnings.catch_warnings():  # Brevitas warns about optional kernels on import
        warnings.simplefilter("ignore")
        from quant.export import ExportError, to_program, untrained_net

        try:
            net, shape = untrained_net(name, bits, UNTRAINED_SEED, model_args)
            return to_program(net, model=name, model_args=model_args, input_shape=shape,
                              meta={"trained": False, "bits": bits, "seed": UNTRAINED_SEED,
                                    "note": "UNTRAINED: deterministic random weights, for demos and tests"})
        except ExportError as exc:
            raise ModelError(f"{name}: {str(exc).splitlines()[0]}") from None
