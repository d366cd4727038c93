"""Export: a Brevitas twin (``quant.qat.QuantNet``) -> the integer program.

Every constant is computed as docs/NUMERICS.md says: BatchNorm is folded into a
per-channel real factor and an integer bias on the accumulator grid (a twin
folded by ``quant.qat.fold_bn`` has no BN left: factor 1, its own bias), the factor
becomes a multiplier/shift pair (``numerics.quantize_multiplier``), a negative
BN gain flips the sign of the channel's weights, KxK convolutions become
shift-im2col gather tables, shifts become ``(c, dy, dx)`` tables.

Command line::

    python -m quant.export CHECKPOINT -o model.shiftprog
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from . import numerics
from .lower import Pass
from .program import Layer, Pool, Program, Requant, Residual, TensorSpec
from .qat import BIAS_LIMIT, QuantNet, accumulator_bias
from .synthetic import im2col_table

__all__ = ["to_program", "ExportError"]


class ExportError(ValueError):
    """The quantised model cannot be expressed within the numerics contract."""


def _gather_and_weight(p: Pass, w_int: torch.Tensor) -> tuple[np.ndarray | None, np.ndarray]:
    """Gather table and the [C_out, C_gather] integer weight matrix of a pass."""
    if w_int.dim() == 2:  # Linear
        return None, w_int.numpy()
    c_out, c_in, k, _ = w_int.shape
    if k == 1:
        weight = w_int[:, :, 0, 0].numpy()
        if p.shift is None:
            return None, weight
        offsets = p.shift.offsets.to(torch.int64)
        table = torch.cat([torch.arange(c_in).view(-1, 1), offsets], dim=1).numpy()
        return table, weight
    if p.shift is not None:
        raise ExportError(f"{p.name}: a shift before a {k}x{k} convolution is not supported")
    # im2col row (ky*K + kx)*C_in + c  <->  weight[o, c, ky, kx]
    return im2col_table(c_in, k), w_int.permute(0, 2, 3, 1).reshape(c_out, k * k * c_in).numpy()


def _fold(p: Pass) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (gain, offset) of BN (and conv bias) in float64: y = gain * conv_nobias(x) + offset.

    A twin folded by ``quant.qat.fold_bn`` has no BN: gain 1, offset its bias
    (which the twin already rounds onto the accumulator grid as ``_int_bias`` does).
    """
    c_out = p.conv.out_features if isinstance(p.conv, nn.Linear) else p.conv.out_channels
    gain = torch.ones(c_out, dtype=torch.float64)
    offset = torch.zeros(c_out, dtype=torch.float64)
    if p.conv.bias is not None:
        offset = p.conv.bias.detach().double().clone()
    if p.bn is not None:
        bn = p.bn
        g = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
        offset = g * (offset - bn.running_mean.double()) + bn.bias.detach().double()
        gain = g
    return gain, offset


def _int_bias(offset: torch.Tensor, unit: torch.Tensor, where: str) -> np.ndarray:
    # the BN-folded twin (quant.qat.fold_bn) rounds its bias with the same function
    bias = accumulator_bias(offset, unit)
    limit = BIAS_LIMIT
    if bias.abs().max() > limit:
        raise ExportError(f"{where}: a folded bias needs more than 31 bits (|bias| = {int(bias.abs().max())})")
    return bias.to(torch.int64).numpy()


@torch.no_grad()
def to_program(net: QuantNet, *, model: str, model_args: dict | None = None,
               input_shape: tuple[int, int, int] = (3, 32, 32), mean=(), std=(), classes=(),
               meta: dict | None = None) -> Program:
    """The integer program of a (trained or calibrated) ``QuantNet`` in eval mode.

    ``input_shape`` is CHW of one image.
    """
    net.eval()
    g = net.graph
    c, h, w = input_shape
    _, float_tensors = net(torch.zeros(1, c, h, w), return_tensors=True)

    def range_of(tensor: str) -> tuple[int, int]:
        bits = 8 if net.quantiser_of[tensor] == g.input else net.act_bits
        return numerics.act_range(bits, g.signed(net.quantiser_of[tensor]))

    tensors: dict[str, TensorSpec] = {}
    for name in g.tensors:
        shape = tuple(float_tensors[name].shape[1:])
        hwc = (shape[1], shape[2], shape[0]) if len(shape) == 3 else (1, 1, shape[0])
        if name == g.output:
            continue  # added below with the classifier's scale
        owner = net.quantiser_of[name]
        bits = 8 if owner == g.input else net.act_bits
        tensors[name] = TensorSpec(name, hwc, bits, g.signed(owner), net.scale_of(name))

    layers = []
    for p in g.passes:
        s_in = net.scale_of(p.input)
        qw = p.conv.quant_weight()
        w_int = qw.int().to(torch.int64)
        s_w = qw.scale.detach().double().flatten()
        c_out = w_int.shape[0]
        if s_w.numel() == 1:
            s_w = s_w.expand(c_out)
        gather, weight = _gather_and_weight(p, w_int)
        weight = weight.copy()
        w_bits = int(qw.bit_width)
        gain, offset = _fold(p)
        stride = 1 if isinstance(p.conv, nn.Linear) else int(p.conv.stride[0])

        if p.output == g.output:  # classifier: raw accumulators, one scale for all logits
            unit = s_in * s_w * gain
            if not torch.allclose(unit, unit[0].expand_as(unit)):
                raise ExportError(f"{p.name}: a raw output needs one scale for all channels")
            tensors[g.output] = TensorSpec(g.output, (1, 1, c_out), 32, True, float(unit[0]))
            layers.append(Layer(p.name, p.input, p.output, weight, _int_bias(offset, unit, p.name), w_bits,
                                stride, gather))
            continue

        s_out = net.scale_of(p.output)
        lo_t, hi_t = range_of(p.output)
        sign = torch.where(gain < 0, -1, 1)
        weight *= sign.view(-1, 1).numpy()
        unit = s_in * s_w * gain.abs()  # real value of one accumulator step
        mult, shift = [], []
        for ch in range(c_out):
            if unit[ch] == 0:
                raise ExportError(f"{p.name}: channel {ch} has a zero BN gain or weight scale")
            m, s = numerics.quantize_multiplier(float(unit[ch] / s_out))
            mult.append(m)
            shift.append(s)
        branch_lo = 0 if p.relu else lo_t
        requant = Requant(np.array(mult, dtype=np.int64), np.array(shift, dtype=np.int64), branch_lo, hi_t)
        residual = pool = None
        if p.residual is not None:
            m_r, s_r = numerics.quantize_multiplier(net.scale_of(p.residual) / s_out)
            residual = Residual(p.residual, m_r, s_r, 0 if p.relu_after_add else lo_t, hi_t)
        if p.pool:
            _, _, h_in, w_in = float_tensors[p.input].shape
            hw = -(-h_in // stride) * -(-w_in // stride)  # pixels of the (strided) map being pooled
            m_p, s_p = numerics.quantize_multiplier(1.0 / hw)  # pooled tensor shares the pre-pool scale
            pool = Pool(m_p, s_p, lo_t, hi_t)
        layers.append(Layer(p.name, p.input, p.output, weight, _int_bias(offset, unit, p.name), w_bits, stride,
                            gather, requant, residual, pool))

    return Program(model=model, input=g.input, output=g.output, tensors=tensors, layers=layers,
                   model_args=dict(model_args or {}), mean=tuple(mean), std=tuple(std), classes=list(classes),
                   meta=dict(meta or {})).validate()


# ----------------------------------------------------------------------------- command line


def export_qonnx(net: QuantNet, input_shape: tuple[int, int, int], path) -> None:
    """Write the Brevitas twin as QONNX (Quant nodes) for interoperability (FINN, qonnx tools)."""
    from brevitas.export import export_qonnx as _export

    net.eval()
    _export(net, torch.zeros(1, *input_shape), export_path=str(path), dynamo=False)


def untrained_net(model: str, bits: str, seed: int = 0, model_args: dict | None = None,
                  input_shape: tuple[int, int, int] | None = None):
    """A deterministic, *untrained* QuantNet calibrated on random images (for demos and hardware tests)."""
    import models

    torch.manual_seed(seed)
    float_model = models.get(model, **(model_args or {}))
    shape = tuple(input_shape or models.entry(model).input_shape_for(**(model_args or {})))
    net = QuantNet(float_model, bits)
    g = torch.Generator().manual_seed(seed)
    from .qat import calibrate

    calibrate(net, [torch.randn(8, *shape, generator=g) for _ in range(4)])
    return net.eval(), shape


def main(argv=None) -> int:
    import argparse
    import logging
    import sys
    import warnings

    from .program import ProgramError, save

    parser = argparse.ArgumentParser(
        prog="python -m quant.export",
        description="Export a QAT checkpoint (python -m quant.train --bits w8a8|w4a4) to an integer "
                    "program (.shiftprog), optionally also as QONNX. With --untrained MODEL, export a "
                    "deterministic untrained model instead (clearly labelled as such in the program).")
    parser.add_argument("checkpoint", nargs="?", help="checkpoint written by quant.train")
    parser.add_argument("-o", "--output", required=True, help="program file to write (.shiftprog)")
    parser.add_argument("--qonnx", metavar="PATH", help="also write the quantised model as QONNX")
    parser.add_argument("--untrained", metavar="MODEL", help="export registry model MODEL with random weights")
    parser.add_argument("--expansion", type=float, help="expansion E for --untrained")
    parser.add_argument("--bits", default="w8a8", choices=["w8a8", "w4a4"], help="bits for --untrained")
    parser.add_argument("--seed", type=int, default=0, help="weight seed for --untrained")
    args = parser.parse_args(argv)
    logging.getLogger().setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    def fail(message: str) -> int:
        print(f"error: {message}", file=sys.stderr)
        return 2

    if bool(args.checkpoint) == bool(args.untrained):
        return fail("give either a CHECKPOINT or --untrained MODEL")
    try:
        if args.untrained:
            import models

            if args.untrained not in models.names():
                return fail(f"unknown model {args.untrained!r} (available: {', '.join(models.names())})")
            model_args = {}
            if args.expansion is not None:
                model_args["expansion"] = int(args.expansion) if args.expansion.is_integer() else args.expansion
            net, shape = untrained_net(args.untrained, args.bits, args.seed, model_args)
            program = to_program(net, model=args.untrained, model_args=model_args, input_shape=shape,
                                 meta={"trained": False, "bits": args.bits, "seed": args.seed,
                                       "note": "UNTRAINED: deterministic random weights, for demos and tests"})
        else:
            from .train import CheckpointError, UsageError, load_model

            try:
                net, meta = load_model(args.checkpoint)
            except (CheckpointError, UsageError) as exc:
                return fail(str(exc))
            if not isinstance(net, QuantNet):
                return fail(f"{args.checkpoint} is a {meta.get('bits')} checkpoint; export needs a QAT one "
                            "(train with --bits w8a8 or w4a4, e.g. starting from it with --init)")
            shape = (int(meta["in_channels"]), *map(int, meta["input_size"]))
            program = to_program(
                net, model=meta["model"], model_args=meta["model_kwargs"], input_shape=shape,
                mean=meta["mean"], std=meta["std"], classes=meta.get("classes", ()),
                meta={"trained": True, "bits": meta["bits"], "dataset": meta["dataset"],
                      "scaling": meta.get("scaling", "float"), "bn_folded": bool(meta.get("bn_folded")),
                      "checkpoint": str(args.checkpoint)})
        save(program, args.output)
        if args.qonnx:
            export_qonnx(net, shape, args.qonnx)
    except (ExportError, ProgramError, ValueError) as exc:
        return fail(str(exc).splitlines()[0])
    print(f"wrote {args.output}: {len(program.layers)} passes, model {program.model} "
          f"{'(UNTRAINED)' if not program.meta.get('trained') else ''}".rstrip())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
