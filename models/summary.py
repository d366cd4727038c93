"""Layer-by-layer summary of a registered model: shapes, parameters, MACs.

Run as::

    python -m models.summary shiftresnet20 --expansion 3
    python -m models.summary shiftnet-c --input 3x160x160 --classes 100

MACs are multiply-accumulates for one image (batch 1), counted with
forward hooks on Conv2d, ConvTranspose2d and Linear layers; every other
layer (shift, BN, ReLU, pooling, up-sampling) counts 0. Parameter counts
include BN affine weights.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import textwrap
from dataclasses import dataclass
from functools import partial
from typing import List, Sequence, Tuple

import torch
from torch import nn

from .registry import entry, names

__all__ = ["LayerRow", "Summary", "summarize", "count_params", "count_macs",
           "parse_input", "main"]


@dataclass
class LayerRow:
    """One executed leaf layer."""

    name: str
    type: str
    output_shape: Tuple[int, ...]
    params: int
    macs: int


@dataclass
class Summary:
    """The rows of one forward pass plus totals."""

    rows: List[LayerRow]
    input_shape: Tuple[int, ...]
    output_shape: Tuple[int, ...]
    params: int
    macs: int

    @property
    def shift_layers(self) -> int:
        """How many shift layers ran."""
        return sum(r.type == "Shift" for r in self.rows)


def count_params(model: nn.Module) -> int:
    """Total number of parameters (trainable or not, buffers excluded)."""
    return sum(p.numel() for p in model.parameters())


def _layer_macs(module: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> int:
    n = out.shape[0]
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return out.numel() // n * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, nn.ConvTranspose2d):
        kh, kw = module.kernel_size
        return inp.numel() // n * (module.out_channels // module.groups) * kh * kw
    if isinstance(module, nn.Linear):
        return out.numel() // n * module.in_features
    return 0


def summarize(model: nn.Module, input_shape: Sequence[int]) -> Summary:
    """Run one image of ``input_shape`` (C, H, W) through ``model``.

    Parameters
    ----------
    model : nn.Module
        The model; it is put in eval mode.
    input_shape : sequence of int
        (C, H, W), without batch dimension.

    Returns
    -------
    Summary
    """
    rows: List[LayerRow] = []
    hooks = []
    for name, mod in model.named_modules():
        if next(mod.children(), None) is not None:
            continue  # containers: their leaves are listed instead

        def hook(m, args, out, name=name):
            inp = args[0] if args else None
            rows.append(LayerRow(
                name or type(m).__name__, type(m).__name__,
                tuple(out.shape[1:]),
                sum(p.numel() for p in m.parameters(recurse=False)),
                _layer_macs(m, inp, out)))
        hooks.append(mod.register_forward_hook(hook))
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, *input_shape))
    finally:
        for h in hooks:
            h.remove()
    return Summary(rows, tuple(input_shape), tuple(out.shape[1:]),
                   count_params(model), sum(r.macs for r in rows))


def count_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-accumulates of one image of ``input_shape`` (C, H, W)."""
    return summarize(model, input_shape).macs


def parse_input(text: str) -> Tuple[int, int, int]:
    """Parse "3x32x32" into (3, 32, 32); ValueError otherwise."""
    m = re.fullmatch(r"\s*(\d+)[xX](\d+)[xX](\d+)\s*", text or "")
    if not m or min(int(g) for g in m.groups()) < 1:
        raise ValueError(f"--input must be CxHxW with positive integers, "
                         f"e.g. 3x32x32; got {text!r}")
    return tuple(int(g) for g in m.groups())


def _shape(s: Sequence[int]) -> str:
    return "x".join(str(v) for v in s)


def format_summary(title: str, s: Summary) -> str:
    """The table printed by the command line."""
    header = ("layer", "type", "output", "params", "MACs")
    body = [(r.name, r.type, _shape(r.output_shape), f"{r.params:,}",
             f"{r.macs:,}") for r in s.rows]
    widths = [max(len(row[i]) for row in [header] + body) for i in range(5)]
    fmt = "  ".join(["{:<%d}" % widths[0], "{:<%d}" % widths[1],
                     "{:<%d}" % widths[2], "{:>%d}" % widths[3],
                     "{:>%d}" % widths[4]])
    rule = "-" * (sum(widths) + 8)
    lines = [title, f"input {_shape(s.input_shape)} -> output "
             f"{_shape(s.output_shape)}", rule, fmt.format(*header), rule]
    lines += [fmt.format(*row) for row in body]
    lines += [rule,
              f"total params: {s.params:,}",
              f"total MACs:   {s.macs:,}  ({s.macs / 1e6:.2f} M per image)",
              f"shift layers: {s.shift_layers} (0 params, 0 MACs each)"]
    return "\n".join(lines)


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line on stderr, exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _build_parser() -> argparse.ArgumentParser:
    wrap = partial(textwrap.fill, width=76, break_on_hyphens=False)
    p = _Parser(
        prog="python -m models.summary",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=wrap(
            "Print a layer table (output shape, parameters, MACs for one "
            "image) of a registered shiftfpga model, with totals. Shift "
            "layers cost 0 parameters and 0 MACs."),
        epilog=wrap("models: " + ", ".join(names())) + "\n\nexample: "
               "python -m models.summary shiftresnet20 --expansion 3")
    p.add_argument("name", help="registered model name (see the list below)")
    p.add_argument("--expansion", type=float, metavar="E",
                   help="expansion E (ShiftResNets and the reduced ResNets)")
    p.add_argument("--input", metavar="CxHxW",
                   help="input shape without batch, e.g. 3x32x32 "
                        "(default: the model's own)")
    p.add_argument("--classes", type=int, metavar="N",
                   help="number of classes of the classifier")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit code."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    prog = parser.prog
    try:
        ent = entry(args.name)
        kwargs = {}
        if args.expansion is not None:
            e = args.expansion
            kwargs["expansion"] = int(e) if float(e).is_integer() else e
        if args.classes is not None:
            kwargs["num_classes"] = args.classes
        shape = parse_input(args.input) if args.input is not None \
            else ent.input_shape
        model = ent.build(**kwargs)
    except ValueError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    try:
        s = summarize(model, shape)
    except (RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"{prog}: error: model {args.name!r} cannot run on input "
              f"{_shape(shape)}: {first}", file=sys.stderr)
        return 2
    opts = ", ".join(f"{k}={v}" for k, v in kwargs.items())
    try:
        print(format_summary(f"{args.name}" + (f" ({opts})" if opts else ""),
                             s))
        sys.stdout.flush()
    except BrokenPipeError:  # e.g. piped into `head`
        sys.stdout = open(os.devnull, "w")
    return 0


if __name__ == "__main__":
    sys.exit(main())
