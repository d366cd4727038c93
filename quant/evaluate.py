"""Accuracy of a program on a test set: golden model vs its Brevitas twin (and the float model).

    python -m quant.evaluate model.shiftprog --dataset cifar10 [--checkpoint qat.pt] [--float-checkpoint f.pt]

Prints the top-1 accuracy of every model it is given, the golden-vs-Brevitas
top-1 agreement and the largest logit difference (in real units), and writes
them as JSON with ``--json``. The golden model is what the hardware computes.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings

import torch

from . import golden
from .program import ProgramError, load

__all__ = ["evaluate", "main"]


@torch.no_grad()
def evaluate(program, images: torch.Tensor, labels: torch.Tensor, qat_net=None, float_net=None,
             normalize=None, batch_size: int = 250, progress: bool = False) -> dict:
    """Top-1 accuracies and agreement over uint8 NCHW ``images``."""
    from tqdm import tqdm

    n = len(labels)
    correct = {"golden": 0, "brevitas": 0, "float": 0}
    agree, max_diff = 0, 0.0
    logit_scale = program.tensors[program.output].scale
    for start in tqdm(range(0, n, batch_size), disable=not progress, desc="evaluate", unit="batch"):
        x = images[start:start + batch_size]
        y = labels[start:start + batch_size]
        q = golden.quantize_input(program, x.double() / 255.0)
        logits = golden.run(program, q)[program.output].flatten(1)
        pred = logits.argmax(1)
        correct["golden"] += int((pred == y).sum())
        if qat_net is not None or float_net is not None:
            xf = normalize(x)
        if qat_net is not None:
            ref = qat_net(xf).double()
            correct["brevitas"] += int((ref.argmax(1) == y).sum())
            agree += int((ref.argmax(1) == pred).sum())
            max_diff = max(max_diff, float((logits.double() * logit_scale - ref).abs().max()))
        if float_net is not None:
            correct["float"] += int((float_net(xf).argmax(1) == y).sum())
    result = {"images": n, "golden_top1": correct["golden"] / n}
    if qat_net is not None:
        result |= {"brevitas_top1": correct["brevitas"] / n, "top1_agreement": agree / n,
                   "max_logit_diff": max_diff}
    if float_net is not None:
        result["float_top1"] = correct["float"] / n
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m quant.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("program", help=".shiftprog file (python -m quant.export)")
    parser.add_argument("--dataset", required=True, help="cifar10, cifar100 or fashion-mnist")
    parser.add_argument("--data-dir", help="dataset directory or archive (default: search, see docs/TRAINING.md)")
    parser.add_argument("--checkpoint", help="the QAT checkpoint the program was exported from (Brevitas twin)")
    parser.add_argument("--float-checkpoint", help="a float checkpoint of the same model")
    parser.add_argument("--limit", type=int, help="evaluate only the first N test images")
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--json", help="write the figures to this JSON file")
    args = parser.parse_args(argv)
    logging.getLogger().setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    def fail(message: str) -> int:
        print(f"error: {message}", file=sys.stderr)
        return 2

    from .data import DataError, Normalize, load_dataset

    try:
        program = load(args.program)
        splits = load_dataset(args.dataset, args.data_dir, progress=sys.stderr.isatty())
    except (ProgramError, DataError) as exc:
        return fail(str(exc))
    spec = program.tensors[program.input].shape
    if tuple(splits.test_x.shape[1:]) != (spec[2], spec[0], spec[1]):
        return fail(f"{args.dataset} images are {tuple(splits.test_x.shape[1:])} (CHW) but the program expects "
                    f"{spec[2]}x{spec[0]}x{spec[1]}")
    qat_net = float_net = None
    if args.checkpoint or args.float_checkpoint:
        from .train import CheckpointError, UsageError, load_model

        try:
            if args.checkpoint:
                qat_net, _ = load_model(args.checkpoint)
            if args.float_checkpoint:
                float_net, _ = load_model(args.float_checkpoint)
        except (CheckpointError, UsageError) as exc:
            return fail(str(exc))
    images, labels = splits.test_x, splits.test_y
    if args.limit:
        images, labels = images[:args.limit], labels[:args.limit]
    result = evaluate(program, images, labels, qat_net, float_net, Normalize(program.mean, program.std),
                      args.batch_size, progress=sys.stderr.isatty())
    result |= {"program": args.program, "dataset": args.dataset, "model": program.model,
               "model_args": program.model_args, "trained": program.meta.get("trained")}
    rows = [("float", "float_top1"), ("brevitas (QAT)", "brevitas_top1"), ("golden (integer)", "golden_top1")]
    print(f"{program.model} {program.model_args} on {result['images']} {args.dataset} test images")
    for label, key in rows:
        if key in result:
            print(f"  {label:<18} top-1 {100 * result[key]:6.2f}%")
    if "top1_agreement" in result:
        print(f"  golden vs brevitas top-1 agreement {100 * result['top1_agreement']:.2f}%, "
              f"max logit difference {result['max_logit_diff']:.4g}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
