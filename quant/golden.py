"""The golden model: executes an integer program exactly as docs/NUMERICS.md says.

This file is deliberately small: each pass is the chain of NUMERICS.md section 8
written with the primitives of ``quant.numerics``. The RTL, the simulated board
and the host all compare their outputs with :func:`run`.
"""

from __future__ import annotations

import numpy as np
import torch

from . import numerics
from .program import Layer, Program, ProgramError

__all__ = ["quantize_input", "run_layer", "run", "predict"]


def quantize_input(program: Program, image: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Normalise and quantise float image(s) with values in [0, 1] to the program's input tensor (int64).

    Accepts CHW or HWC, or a batch NCHW / NHWC; returns HWC (or NHWC).
    ``q = clamp(floor(((x - mean) / std) / scale + 1/2), lo, hi)`` (NUMERICS.md section 9).
    """
    spec = program.tensors[program.input]
    x = torch.as_tensor(np.asarray(image), dtype=torch.float64)
    h, w, c = spec.shape
    if x.dim() in (3, 4) and tuple(x.shape[-3:]) == (c, h, w) and (c, h, w) != (h, w, c):
        x = x.movedim(-3, -1)
    if x.dim() not in (3, 4) or tuple(x.shape[-3:]) != (h, w, c):
        raise ProgramError(f"image has shape {tuple(x.shape)}, the program expects {h}x{w}x{c} (HWC) or CHW")
    if program.mean:
        x = (x - torch.tensor(program.mean, dtype=torch.float64)) / torch.tensor(program.std, dtype=torch.float64)
    lo, hi = spec.range
    return torch.floor(x / spec.scale + 0.5).clamp(lo, hi).to(torch.int64)


def run_layer(layer: Layer, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
    """One engine pass on an HWC (or NHWC) int64 map; returns the pass's output tensor."""
    if layer.gather is not None:
        x = numerics.shift_gather(x, torch.from_numpy(layer.gather))
    acc = numerics.conv1x1_acc(x, torch.from_numpy(layer.weight), torch.from_numpy(layer.bias), layer.stride)
    if layer.requant is None:
        return acc
    rq = layer.requant
    y = numerics.requantize(acc, torch.from_numpy(rq.multiplier), torch.from_numpy(rq.shift), rq.lo, rq.hi)
    if layer.residual is not None:
        r = layer.residual
        y = numerics.residual_add(y, residual, r.multiplier, r.shift, r.lo, r.hi)
    if layer.pool is not None:
        p = layer.pool
        y = numerics.global_avgpool(y, p.multiplier, p.shift, p.lo, p.hi)[..., None, None, :]
    return y


def run(program: Program, q_input: torch.Tensor) -> dict[str, torch.Tensor]:
    """Execute ``program`` on a quantised HWC input (or an NHWC batch); return every tensor by name (int64)."""
    spec = program.tensors[program.input]
    q_input = torch.as_tensor(q_input)
    if tuple(q_input.shape[-3:]) != tuple(spec.shape) or q_input.dim() not in (3, 4):
        raise ProgramError(f"input has shape {tuple(q_input.shape)}, the program expects {tuple(spec.shape)}")
    lo, hi = spec.range
    if q_input.numel() and (q_input.min() < lo or q_input.max() > hi):
        raise ProgramError(f"input values lie outside the input tensor's range [{lo}, {hi}]")
    tensors = {program.input: q_input.to(torch.int64)}
    for layer in program.layers:
        residual = tensors[layer.residual.tensor] if layer.residual else None
        tensors[layer.output] = run_layer(layer, tensors[layer.input], residual)
    return tensors


def predict(program: Program, image) -> torch.Tensor:
    """Float image in (CHW or HWC, values in [0, 1]), integer logits [classes] out."""
    return run(program, quantize_input(program, image))[program.output].flatten()


def dequantize(program: Program, name: str, q: torch.Tensor) -> torch.Tensor:
    """Real values of a program tensor (for reports; never used in the datapath)."""
    return q.to(torch.float64) * program.tensors[name].scale

