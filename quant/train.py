"""Train a shift network (float or quantisation-aware) on CIFAR-10/100 or Fashion-MNIST.

    python -m quant.train --model shiftresnet20 --expansion 6 --dataset cifar10 --bits float
    torchrun --nproc_per_node 4 -m quant.train --model shiftresnet20 --expansion 6 ...

The defaults are the recipe of the authors' CIFAR code (SGD momentum 0.9, weight
decay 5e-4, batch 128, lr 0.1 divided by 10 at epochs 81 and 122 of 164, random crop
32 pad 4 + horizontal flip). ``docs/TRAINING.md`` describes every option, the
checkpoint contents and the fields of ``result.json``.

Other modules may use :func:`load_model` to rebuild a trained model from any
checkpoint this script writes.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import platform
import random
import shlex
import sys
import time
import zipfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from quant import distributed as qdist
from quant.data import (DATASETS, BatchLoader, DataError, Normalize, canonical_name,
                        describe, load_dataset, split_train_val)

__all__ = ["main", "build_parser", "load_model", "load_checkpoint", "build_model",
           "quantize", "UsageError", "CheckpointError", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = "shiftfpga-train-1"
BITS = ("float", "w8a8", "w4a4")


class UsageError(RuntimeError):
    """Bad input (arguments, model names, files) with a one-line message for the user."""


class CheckpointError(UsageError):
    """A checkpoint that cannot be read or does not fit."""


# --------------------------------------------------------------------------- arguments

class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage block
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m quant.train",
                description="Train a shift network (float or QAT) on CIFAR-10/100 or Fashion-MNIST.",
                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("model")
    g.add_argument("--model", required=True,
                   help="a name of models.names() (e.g. shiftresnet20), or MODULE:FACTORY")
    g.add_argument("--expansion", type=float, default=None,
                   help="expansion E of the shift modules (passed to the model when given)")
    g.add_argument("--bits", default="float", choices=BITS, help="quantisation (quant.qat.prepare)")
    g.add_argument("--scaling", default="float", choices=("float", "po2"),
                   help="QAT scale type passed to quant.qat.prepare (po2: power-of-two scales)")
    g.add_argument("--calibrate-batches", type=int, default=0,
                   help="QAT: calibrate activation scales on N training batches before training")
    g.add_argument("--init", default=None, metavar="CKPT",
                   help="initial weights, e.g. a float checkpoint to start QAT from")
    g.add_argument("--fold-bn", action="store_true",
                   help="QAT with --scaling po2: fold the BatchNorm of the --init model into its "
                        "convolutions (bias on the accumulator grid, quant.qat.fold_bn) and fine-tune "
                        "that twin, which equals the exported integer program bit for bit")
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="cifar10", help="cifar10 | cifar100 | fashion-mnist")
    g.add_argument("--data-dir", default=None,
                   help="dataset directory or .tar.gz (default: search cache/shared folders, then download)")
    g.add_argument("--cache-dir", default=None, help="cache (default $SHIFTFPGA_CACHE or ~/.cache/shiftfpga)")
    g.add_argument("--no-download", action="store_true", help="never download")
    g.add_argument("--val-size", type=int, default=5000,
                   help="images held out of the training set for validation (0: none)")
    g.add_argument("--val-seed", type=int, default=0, help="seed of the validation split")
    g.add_argument("--no-augment", action="store_true", help="no random crop/flip")
    g.add_argument("--flip", choices=("auto", "on", "off"), default="auto",
                   help="horizontal flip (auto: on for CIFAR, off for Fashion-MNIST)")
    g.add_argument("--workers", type=int, default=0,
                   help="prefetch depth of a background batch thread (0: prepare batches inline)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=164)
    g.add_argument("--time-budget", type=float, default=0.0, metavar="SECONDS",
                   help="train for this many seconds of training time (evaluation not counted) "
                        "instead of --epochs, which stays the upper limit: the schedule runs "
                        "on the fraction of the budget spent (0: off)")
    g.add_argument("--batch-size", type=int, default=128, help="global batch (split over processes)")
    g.add_argument("--eval-batch-size", type=int, default=500, help="per-process evaluation batch")
    g.add_argument("--lr", type=float, default=0.1)
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--nesterov", action="store_true")
    g.add_argument("--wd", type=float, default=5e-4, help="weight decay")
    g.add_argument("--no-wd-norm", action="store_true",
                   help="no weight decay on 1-d parameters (BN, biases)")
    g.add_argument("--schedule", choices=("step", "cosine", "constant"), default="step")
    g.add_argument("--milestones", type=int, nargs="+", default=None,
                   help="step schedule: 0-based epochs from which lr *= gamma "
                        "(default: 81/164 and 122/164 of --epochs, rounded)")
    g.add_argument("--gamma", type=float, default=0.1)
    g.add_argument("--min-lr", type=float, default=0.0, help="cosine: final lr")
    g.add_argument("--warmup", type=float, default=0.0, help="linear warm-up, in epochs")
    g.add_argument("--label-smoothing", type=float, default=0.0)
    g.add_argument("--teacher", default=None, metavar="CKPT", help="knowledge distillation teacher")
    g.add_argument("--kd-alpha", type=float, default=0.5, help="weight of the distillation loss")
    g.add_argument("--kd-temp", type=float, default=4.0, help="distillation temperature")
    g.add_argument("--clip-grad", type=float, default=0.0, help="clip the gradient norm (0: off)")
    g = p.add_argument_group("run")
    g.add_argument("--out", default=None, help="output directory (default runs/MODEL-eE-DATASET-BITS-sSEED)")
    g.add_argument("--resume", action="store_true", help="continue from OUT/last.pt when it exists")
    g.add_argument("--overwrite", action="store_true", help="start afresh even if OUT has a checkpoint")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    g.add_argument("--dist-backend", default="auto", help="auto (nccl on GPU, gloo on CPU) | gloo | nccl")
    g.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm under torchrun")
    g.add_argument("--amp", action="store_true", help="bfloat16 autocast on CUDA")
    g.add_argument("--threads", type=int, default=0, help="torch CPU threads per process (0: default)")
    g.add_argument("--limit-train-batches", type=int, default=None, help="steps per epoch (smoke tests)")
    g.add_argument("--limit-eval-batches", type=int, default=None, help="batches per evaluation")
    g.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    g.add_argument("--log-every", type=int, default=100,
                   help="without a progress bar, print a progress line every N steps (0: never)")
    return p


def _check_args(a: argparse.Namespace) -> None:
    try:
        a.dataset = canonical_name(a.dataset)
    except DataError as e:
        raise UsageError(str(e)) from None
    for name in ("epochs", "val_size", "workers", "threads", "calibrate_batches", "log_every"):
        if getattr(a, name) < 0:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 0")
    for name in ("batch_size", "eval_batch_size"):
        if getattr(a, name) <= 0:
            raise UsageError(f"--{name.replace('_', '-')} must be > 0")
    for name in ("limit_train_batches", "limit_eval_batches"):
        v = getattr(a, name)
        if v is not None and v <= 0:
            raise UsageError(f"--{name.replace('_', '-')} must be > 0")
    if a.lr <= 0:
        raise UsageError("--lr must be > 0")
    if a.time_budget < 0:
        raise UsageError("--time-budget must be >= 0")
    if not 0 <= a.label_smoothing < 1:
        raise UsageError("--label-smoothing must be in [0, 1)")
    if not 0 <= a.kd_alpha <= 1 or a.kd_temp <= 0:
        raise UsageError("--kd-alpha must be in [0, 1] and --kd-temp > 0")
    if a.expansion is not None and a.expansion <= 0:
        raise UsageError("--expansion must be > 0")
    if a.data_dir is not None and not Path(a.data_dir).expanduser().exists():
        raise UsageError(f"data directory {a.data_dir} does not exist")
    for name in ("init", "teacher"):
        v = getattr(a, name)
        if v is not None and not Path(v).is_file():
            raise UsageError(f"--{name} {v}: no such file")
    if a.fold_bn:
        if a.bits == "float" or a.scaling != "po2":
            raise UsageError("--fold-bn needs a QAT run with power-of-two scales (--bits w8a8|w4a4 "
                             "--scaling po2): only then does the folded twin equal the integer program")
        if a.init is None:
            raise UsageError("--fold-bn folds trained BatchNorm statistics: give the checkpoint to "
                             "fine-tune with --init CKPT")


def _default_out(a) -> str:
    m = a.model.replace(":", "-").replace("/", "-").replace(".", "-")
    e = "" if a.expansion is None else f"-e{_num(a.expansion)}"
    return str(Path("runs") / f"{m}{e}-{a.dataset}-{a.bits}-s{a.seed}")


def _num(v: float):
    return int(v) if float(v).is_integer() else float(v)


# --------------------------------------------------------------------------- models

def build_model(spec: str, kwargs: dict) -> nn.Module:
    """``models.get(spec, **kwargs)``, or ``FACTORY(**kwargs)`` for ``spec = MODULE:FACTORY``."""
    if ":" in spec:
        mod, _, fn = spec.partition(":")
        try:
            factory = getattr(importlib.import_module(mod), fn)
        except (ImportError, AttributeError) as e:
            raise UsageError(f"cannot import model factory {spec!r}: {e}") from None
    else:
        try:
            import models  # the project's model registry
        except ImportError as e:
            raise UsageError(f"the models package is not available ({e})") from None
        names = list(models.names()) if hasattr(models, "names") else []
        if names and spec not in names:
            raise UsageError(f"unknown model {spec!r} (available: {', '.join(sorted(names))})")

        def factory(**kw):
            return models.get(spec, **kw)
    try:
        model = factory(**kwargs)
    except (KeyError, ValueError, TypeError) as e:
        msg = e.args[0] if e.args else e
        raise UsageError(f"cannot build model {spec!r} with {kwargs}: {msg}") from None
    if not isinstance(model, nn.Module):
        raise UsageError(f"model factory {spec!r} did not return an nn.Module")
    return model


def quantize(model: nn.Module, bits: str, scaling: str = "float") -> nn.Module:
    """``quant.qat.prepare(model, bits[, scaling])``; "float" works without quant.qat."""
    if bits not in BITS:
        raise UsageError(f"unknown --bits {bits!r} (choose from {', '.join(BITS)})")
    try:
        from quant import qat
    except ImportError as e:
        if bits == "float":
            return model
        raise UsageError(f"--bits {bits} needs quant.qat, which is not available ({e})") from None
    if bits == "float":
        return qat.prepare(model, bits)
    try:
        if scaling != "float":
            return qat.prepare(model, bits, scaling=scaling)
        return qat.prepare(model, bits)
    except (ValueError, KeyError, NotImplementedError) as e:
        msg = e.args[0] if e.args else e
        raise UsageError(f"cannot quantise the model to {bits}: {msg}") from None


def _fold_bn(model: nn.Module) -> int:
    """``quant.qat.fold_bn(model)``; returns how many BatchNorm layers it folded."""
    from quant import qat

    if not isinstance(model, qat.QuantNet):
        raise UsageError("BN folding needs a QAT model (quant.qat.QuantNet)")
    n = sum(p.bn is not None for p in model.graph.passes)
    qat.fold_bn(model)
    return n


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- checkpoints

def _first_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return (s[0] if s else type(e).__name__)[:300]


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint written by this script (or a plain state dict) on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"cannot read checkpoint {path}: not a PyTorch checkpoint "
                              f"(corrupted or truncated?)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        msg = str(e)
        if "WeightsUnpickler error:" in msg:
            why = msg.split("WeightsUnpickler error:", 1)[1].strip().split(".")[0]
            raise CheckpointError(f"cannot read checkpoint {path}: it holds objects other than "
                                  f"tensors and plain data ({why})") from None
        raise CheckpointError(f"cannot read checkpoint {path}: {_first_line(e)}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} does not hold a dict")
    if "model" not in obj:
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return {"model": obj}  # a bare state dict
        raise CheckpointError(f"checkpoint {path} has no model weights")
    return obj


def _save_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_json_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def _load_state(model: nn.Module, state: dict, what: str) -> None:
    state = {k[7:] if k.startswith("module.") else k: v for k, v in state.items()}
    try:
        res = model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        msg = " ".join(str(e).split())
        raise CheckpointError(f"{what} does not fit the model: {msg[:300]}") from None
    del res


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu",
               ) -> tuple[nn.Module, dict]:
    """Rebuild the trained model of a checkpoint: ``(model in eval mode, meta)``.

    ``meta`` holds model name + kwargs, bits, scaling, whether BatchNorm is folded
    (``bn_folded``), dataset, classes, input normalisation (``mean``/``std`` on
    [0, 1] pixels) and the input shape."""
    ck = load_checkpoint(path)
    meta = ck.get("meta")
    if not meta:
        raise CheckpointError(f"checkpoint {path} lacks the model description (meta)")
    model = build_model(meta["model"], dict(meta["model_kwargs"]))
    model = quantize(model, meta["bits"], meta.get("scaling", "float"))
    if meta.get("bn_folded"):
        _fold_bn(model)
    _load_state(model, ck["model"], f"checkpoint {path}")
    return model.to(device).eval(), meta


def _rng_state() -> dict:
    st = np.random.get_state()
    out = {"torch": torch.get_rng_state(), "python": random.getstate(),
           "numpy": {"name": st[0], "keys": torch.from_numpy(st[1].astype(np.int64)),
                     "pos": int(st[2]), "has_gauss": int(st[3]), "gauss": float(st[4])}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def _set_rng_state(s: dict) -> None:
    try:
        torch.set_rng_state(s["torch"])
        v, state, gauss = s["python"]
        random.setstate((v, tuple(state), gauss))
        n = s["numpy"]
        np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"],
                             n["has_gauss"], n["gauss"]))
        if "cuda" in s and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(s["cuda"][:torch.cuda.device_count()])
    except Exception as e:  # never fatal: augmentation has its own seeded generators
        print(f"warning: RNG state not restored ({_first_line(e)})", file=sys.stderr)


# --------------------------------------------------------------------------- schedule

class LRSchedule:
    """Learning rate per optimiser step: linear warm-up, then step or cosine.

    With ``--time-budget`` the run's length is a training time, not a number of steps:
    :meth:`set_progress` gives the fraction of the budget spent, and cosine and step
    (milestones as fractions of ``--epochs``) follow it. Warm-up stays counted in steps.
    """

    def __init__(self, a, steps_per_epoch: int):
        self.base = a.lr
        self.kind = a.schedule
        self.spe = max(1, steps_per_epoch)
        self.total = self.spe * a.epochs
        self.warm = int(round(a.warmup * self.spe))
        self.gamma, self.min_lr = a.gamma, a.min_lr
        if a.milestones is not None:
            self.milestones = sorted(a.milestones)
        else:  # the authors' 81 and 122 of 164 epochs
            self.milestones = [max(1, round(a.epochs * 81 / 164)), max(1, round(a.epochs * 122 / 164))]
        self.epochs = max(1, a.epochs)
        self.step_count = 0
        self.progress: float | None = None  # fraction of the time budget spent, when there is one

    def set_progress(self, fraction: float) -> None:
        self.progress = min(1.0, max(0.0, fraction))

    def lr(self, step: int | None = None) -> float:
        s = self.step_count if step is None else step
        if s < self.warm:
            return self.base * (s + 1) / self.warm
        timed = self.progress is not None
        if self.kind == "cosine":
            t = self.progress if timed else min(1.0, (s - self.warm) / max(1, self.total - self.warm))
            return self.min_lr + (self.base - self.min_lr) * 0.5 * (1 + math.cos(math.pi * t))
        if self.kind == "step":
            epoch = self.progress * self.epochs if timed else s // self.spe
            return self.base * self.gamma ** sum(epoch >= m for m in self.milestones)
        return self.base

    def apply(self, opt: torch.optim.Optimizer) -> float:
        lr = self.lr()
        for g in opt.param_groups:
            g["lr"] = lr
        return lr

    def step(self) -> None:
        self.step_count += 1

    def state_dict(self) -> dict:
        return {"step": self.step_count, "kind": self.kind, "milestones": self.milestones,
                "warmup_steps": self.warm, "steps_per_epoch": self.spe}

    def load_state_dict(self, d: dict) -> None:
        self.step_count = int(d["step"])


# --------------------------------------------------------------------------- training

def _param_groups(model: nn.Module, wd: float, no_wd_norm: bool) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        quantiser = "_quant." in name or "scaling_impl" in name or "tensor_quant" in name
        if quantiser or (no_wd_norm and p.ndim <= 1):
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": ps, "weight_decay": w} for ps, w in ((decay, wd), (no_decay, 0.0)) if ps]
    if not groups:
        raise UsageError("the model has no trainable parameters")
    return groups


def _device(arg: str, ctx: qdist.Context) -> torch.device:
    if arg == "auto":
        arg = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(arg)
    except RuntimeError:
        raise UsageError(f"unknown --device {arg!r}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError("--device cuda, but no CUDA GPU is available")
        if ctx.distributed:
            dev = torch.device("cuda", ctx.local_rank % torch.cuda.device_count())
        elif dev.index is None:
            dev = torch.device("cuda", 0)
        torch.cuda.set_device(dev)
    elif dev.type != "cpu":
        raise UsageError(f"unsupported --device {arg!r} (cpu or cuda)")
    return dev


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return f"{dev} ({torch.cuda.get_device_name(dev)})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


@torch.no_grad()
def evaluate(model: nn.Module, loader: BatchLoader, ctx: qdist.Context,
             autocast: Callable) -> tuple[float, float, int]:
    """(top-1 %, mean cross-entropy, images) over all ranks' shards."""
    was = model.training
    model.eval()
    tot = torch.zeros(3, dtype=torch.float64, device=loader.device)
    for x, y in loader:
        with autocast():
            out = model(x)
        tot[0] += F.cross_entropy(out.float(), y, reduction="sum").double()
        tot[1] += (out.argmax(1) == y).sum()
        tot[2] += len(y)
    ctx.all_reduce(tot)
    model.train(was)
    n = int(tot[2].item())
    if n == 0:
        return float("nan"), float("nan"), 0
    return 100.0 * tot[1].item() / n, tot[0].item() / n, n


def _meta(a, model_kwargs: dict, splits, norm: Normalize) -> dict:
    info = splits.info
    return {"model": a.model, "model_kwargs": model_kwargs, "bits": a.bits, "scaling": a.scaling,
            "bn_folded": bool(a.fold_bn),
            "dataset": info.name, "num_classes": info.num_classes,
            "in_channels": info.in_channels, "input_size": [info.size, info.size],
            "mean": list(norm.mean), "std": list(norm.std), "input_scale": 255,
            "classes": list(splits.classes), "data_source": splits.source,
            "format": CHECKPOINT_FORMAT}


def run(a: argparse.Namespace, argv: list[str], ctx: qdist.Context) -> dict | None:
    is_main = ctx.rank == 0
    out = Path(a.out or _default_out(a))
    last_path = out / "last.pt"
    logf = None

    def log(msg: str) -> None:
        if is_main:
            print(msg, flush=True)
            if logf is not None:
                logf.write(msg + "\n")
                logf.flush()

    if a.threads:
        torch.set_num_threads(a.threads)
    device = _device(a.device, ctx)
    ctx.init_process_group(device, a.dist_backend)

    resume_ck = None
    if last_path.exists():
        if a.resume:
            resume_ck = load_checkpoint(last_path)
            if resume_ck.get("format") != CHECKPOINT_FORMAT or "optimizer" not in resume_ck:
                raise CheckpointError(f"{last_path} is not a resumable checkpoint of quant.train")
            old = resume_ck["args"]
            defaults = {"scaling": "float", "fold_bn": False}
            for k in ("model", "expansion", "dataset", "bits", "scaling", "fold_bn"):
                if old.get(k, defaults.get(k)) != getattr(a, k):
                    raise CheckpointError(f"--resume: {last_path} was trained with --{k.replace('_', '-')} "
                                          f"{old.get(k, defaults.get(k))}, not {getattr(a, k)}")
        elif not a.overwrite:
            raise UsageError(f"{out} already holds a checkpoint; pass --resume to continue "
                             f"or --overwrite to start afresh")

    # ---- model
    random.seed(a.seed)
    np.random.seed(a.seed)
    torch.manual_seed(a.seed)
    info = DATASETS[a.dataset]
    model_kwargs: dict = {"num_classes": info.num_classes, "in_channels": info.in_channels}
    if a.expansion is not None:
        model_kwargs["expansion"] = _num(a.expansion)
    model = build_model(a.model, model_kwargs)
    n_params = count_params(model)
    init_ck = load_checkpoint(a.init) if a.init else None
    init_after = init_folded = False
    if init_ck is not None:
        src_meta = init_ck.get("meta") or {}
        src_bits = src_meta.get("bits", "float")
        init_folded = bool(src_meta.get("bn_folded"))
        if init_folded and not a.fold_bn:
            raise CheckpointError(f"--init {a.init} holds a BN-folded model (it has no BatchNorm); "
                                  f"continue it with --fold-bn")
        if a.fold_bn and src_bits != "float" and src_meta.get("scaling", "float") != a.scaling:
            raise CheckpointError(f"--init {a.init} was trained with --scaling "
                                  f"{src_meta.get('scaling', 'float')}; --fold-bn needs a --scaling "
                                  f"{a.scaling} checkpoint (or a float one)")
        if src_bits == "float":
            _load_state(model, init_ck["model"], f"--init {a.init}")
            log(f"initialised from {a.init} (float weights)")
        elif src_bits == a.bits:
            init_after = True
        else:
            raise CheckpointError(f"--init {a.init} holds a {src_bits} model; it can start a "
                                  f"{src_bits} or a float run, not {a.bits}")
    model = quantize(model, a.bits, a.scaling)
    if a.fold_bn and init_folded:  # the folded structure first, then its weights
        _fold_bn(model)
    if init_after:
        _load_state(model, init_ck["model"], f"--init {a.init}")
        log(f"initialised from {a.init} ({a.bits} weights{', BN folded' if init_folded else ''})")
    if a.fold_bn and not init_folded:
        n_bn = _fold_bn(model)
        log(f"folded {n_bn} BatchNorm layers into their convolutions (eval statistics); every bias is "
            f"now on the accumulator grid (quant.qat.fold_bn)")
    model.to(device)
    teacher = None
    if a.teacher:
        teacher, tmeta = load_model(a.teacher, device)
        if tmeta["dataset"] != info.name or tmeta["num_classes"] != info.num_classes:
            raise UsageError(f"--teacher {a.teacher} was trained on {tmeta['dataset']}, not {info.name}")
        for p in teacher.parameters():
            p.requires_grad_(False)
        log(f"distilling from {a.teacher} ({tmeta['model']} {tmeta['bits']}), "
            f"alpha {a.kd_alpha}, T {a.kd_temp}")

    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        if resume_ck is None:  # a fresh run (maybe --overwrite): no stale files of an older one
            for name in ("last.pt", "best.pt", "final.pt", "result.json"):
                (out / name).unlink(missing_ok=True)
        logf = open(out / "train.log", "a")
    log(f"$ python -m quant.train {shlex.join(argv)}")

    # ---- data (rank 0 first: it may unpack, decode or download into the cache)
    show = is_main and not a.no_progress and sys.stderr.isatty()

    def get_data():
        return load_dataset(a.dataset, a.data_dir, a.cache_dir, download=not a.no_download,
                            progress=show, log=log if is_main else (lambda m: None))
    splits = ctx.rank0_first(get_data)
    info = splits.info
    log(describe(splits))
    norm = Normalize(info.mean, info.std)
    train_idx, val_idx = split_train_val(splits.train_y, a.val_size, a.val_seed)
    log(f"split: {len(train_idx)} train / {len(val_idx)} validation (seed {a.val_seed}) / "
        f"{len(splits.test_x)} test")
    if a.batch_size % ctx.world_size:
        raise UsageError(f"--batch-size {a.batch_size} is not divisible by {ctx.world_size} processes")
    local_bs = a.batch_size // ctx.world_size
    on_dev = device.type == "cuda"
    tx = splits.train_x.to(device) if on_dev else splits.train_x
    ty = splits.train_y.to(device) if on_dev else splits.train_y
    flip = {"auto": info.flip, "on": True, "off": False}[a.flip]
    augment = None if a.no_augment else (info.pad, flip)
    train_loader = BatchLoader(tx, ty, train_idx, local_bs, norm, shuffle=True, augment=augment,
                               device=device, rank=ctx.rank, world_size=ctx.world_size,
                               seed=a.seed, limit_batches=a.limit_train_batches, workers=a.workers)

    def eval_loader(x, y, idx):
        return BatchLoader(x, y, idx, a.eval_batch_size, norm, device=device, rank=ctx.rank,
                           world_size=ctx.world_size, limit_batches=a.limit_eval_batches,
                           workers=a.workers)
    val_loader = eval_loader(tx, ty, val_idx) if len(val_idx) else None
    test_loader = eval_loader(splits.test_x, splits.test_y, None)
    steps_per_epoch = len(train_loader)

    meta = _meta(a, model_kwargs, splits, norm)
    log(f"model {a.model} {model_kwargs} bits={a.bits}: {n_params:,} parameters (float model); "
        f"device {_device_name(device)}; {ctx.world_size} process(es), "
        f"batch {a.batch_size} ({local_bs} per process), {steps_per_epoch} steps/epoch")

    opt = torch.optim.SGD(_param_groups(model, a.wd, a.no_wd_norm), lr=a.lr,
                          momentum=a.momentum, nesterov=a.nesterov)
    sched = LRSchedule(a, steps_per_epoch)
    start_epoch, best_val, best_epoch, history, train_time = 0, -1.0, 0, [], 0.0
    best_state = None
    resume_ck_loaded = resume_ck is not None
    if resume_ck is not None:
        _load_state(model, resume_ck["model"], str(last_path))
        try:
            opt.load_state_dict(resume_ck["optimizer"])
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"{last_path}: optimiser state does not fit ({e})") from None
        sched.load_state_dict(resume_ck["scheduler"])
        start_epoch = int(resume_ck["epoch"])
        best_val = float(resume_ck.get("best_val", -1.0))
        best_epoch = int(resume_ck.get("best_epoch", 0))
        history = list(resume_ck.get("history", []))
        train_time = float(resume_ck.get("train_time_s", 0.0))
        if resume_ck.get("best_model") is not None:
            best_state = resume_ck["best_model"]
        _set_rng_state(resume_ck.get("rng", {}))
        log(f"resumed from {last_path} after epoch {start_epoch}")
    del resume_ck, init_ck

    if a.calibrate_batches and a.bits != "float" and resume_ck_loaded is False:
        try:
            from quant.qat import calibrate
        except ImportError as e:
            raise UsageError(f"--calibrate-batches needs quant.qat.calibrate ({e})") from None
        train_loader.set_epoch(0)
        batches = [x for i, (x, _) in zip(range(a.calibrate_batches), train_loader)]
        calibrate(model, batches)
        ctx.sync_buffers(model)
        if ctx.started:
            for p_ in model.parameters():
                torch.distributed.broadcast(p_.data, 0)
        log(f"calibrated activation scales on {len(batches)} training batches")
        del batches
    if a.sync_bn and ctx.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    net = ctx.wrap(model, device, find_unused_parameters=a.bits != "float")
    crit = nn.CrossEntropyLoss(label_smoothing=a.label_smoothing)
    use_amp = a.amp and device.type == "cuda"
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp)

    from tqdm import tqdm
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")

    def result(finished: bool, test=None, test_best=None) -> dict:
        r = {
            "command": "python -m quant.train " + shlex.join(argv),
            "argv": argv, "args": vars(a), "finished": finished,
            "model": a.model, "model_kwargs": model_kwargs, "bits": a.bits,
            "dataset": info.name, "data_source": splits.source, "classes": list(splits.classes),
            "train_size": len(train_idx), "val_size": len(val_idx), "test_size": len(splits.test_x),
            "normalization": norm.state(), "augment": None if augment is None
            else {"crop": info.size, "pad": augment[0], "flip": augment[1]},
            "epochs": a.epochs, "epochs_done": len(history), "steps_per_epoch": steps_per_epoch,
            "steps_done": sched.step_count, "time_budget_s": a.time_budget or None,
            "train_time_s": round(train_time, 2),
            "images_per_s": history[-1]["images_per_s"] if history else None,
            "history": history, "val_acc": [h["val_acc"] for h in history],
            "best_val_acc": best_val if best_val >= 0 else None, "best_epoch": best_epoch or None,
            "test_top1": None, "test_loss": None, "test_top1_best_val": None,
            "params": n_params, "params_trained": count_params(model),
            "torch_version": str(torch.__version__), "python": platform.python_version(),
            "device": _device_name(device), "world_size": ctx.world_size,
            "started": started, "checkpoint": str(out / "final.pt") if finished else str(last_path),
        }
        try:
            import brevitas
            r["brevitas_version"] = brevitas.__version__
        except Exception:
            pass
        if test is not None:
            r["test_top1"], r["test_loss"] = test[0], test[1]
        if test_best is not None:
            r["test_top1_best_val"] = test_best
        r["ended"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        return r

    # ---- epochs
    show_bar = is_main and not a.no_progress and sys.stderr.isatty()
    budget = a.time_budget
    for epoch in range(start_epoch, a.epochs):
        if budget and train_time >= budget:
            break
        net.train()
        train_loader.set_epoch(epoch)
        tot = torch.zeros(3, dtype=torch.float64, device=device)
        t0 = time.perf_counter()
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{a.epochs}", disable=not show_bar,
                   leave=False, dynamic_ncols=True, mininterval=1.0)
        lr = sched.lr()
        steps = 0
        for i, (x, y) in enumerate(bar):
            if budget:  # the schedule follows the training time spent (host clock)
                spent = train_time + time.perf_counter() - t0
                if spent >= budget:
                    break
                sched.set_progress(spent / budget)
            lr = sched.apply(opt)
            steps += 1
            with autocast():
                logits = net(x)
                loss = crit(logits.float(), y)
                if teacher is not None:
                    with torch.no_grad():
                        t_logits = teacher(x).float()
                    T = a.kd_temp
                    kd = F.kl_div(F.log_softmax(logits.float() / T, 1), F.log_softmax(t_logits / T, 1),
                                  reduction="batchmean", log_target=True) * (T * T)
                    loss = (1 - a.kd_alpha) * loss + a.kd_alpha * kd
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if a.clip_grad > 0:
                nn.utils.clip_grad_norm_(net.parameters(), a.clip_grad)
            opt.step()
            sched.step()
            with torch.no_grad():
                tot[0] += loss.detach().double() * len(y)
                tot[1] += (logits.argmax(1) == y).sum()
                tot[2] += len(y)
            if show_bar and i % 20 == 0:
                bar.set_postfix(loss=f"{tot[0].item() / max(1, tot[2].item()):.3f}", lr=f"{lr:.4g}")
            elif is_main and not show_bar and a.log_every and (i + 1) % a.log_every == 0:
                el = time.perf_counter() - t0
                print(f"  epoch {epoch + 1} step {i + 1}/{steps_per_epoch} loss "
                      f"{tot[0].item() / max(1, tot[2].item()):.4f} lr {lr:.4g} "
                      f"{tot[2].item() * ctx.world_size / el:.0f} img/s", flush=True)
        bar.close()
        if steps == 0:  # the budget ran out at the epoch's start
            break
        ctx.all_reduce(tot)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        dt = time.perf_counter() - t0
        train_time += dt
        n = max(1.0, tot[2].item())
        tr_loss, tr_acc = tot[0].item() / n, 100.0 * tot[1].item() / n
        if not math.isfinite(tr_loss):
            raise UsageError(f"training diverged in epoch {epoch + 1} (loss {tr_loss}); lower --lr")
        ctx.sync_buffers(model)
        rec = {"epoch": epoch + 1 if steps == steps_per_epoch else round(epoch + steps / steps_per_epoch, 3),
               "lr": lr, "train_loss": round(tr_loss, 5),
               "train_acc": round(tr_acc, 3), "time_s": round(dt, 2),
               "images_per_s": round(tot[2].item() / dt, 1), "val_loss": None, "val_acc": None}
        if val_loader is not None:
            v_acc, v_loss, _ = evaluate(model, val_loader, ctx, autocast)
            rec["val_acc"], rec["val_loss"] = round(v_acc, 3), round(v_loss, 5)
            if v_acc > best_val:
                best_val, best_epoch = v_acc, epoch + 1
                best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
                if is_main:
                    _save_atomic({"format": CHECKPOINT_FORMAT, "model": best_state, "meta": meta,
                                  "epoch": epoch + 1, "val_acc": v_acc}, out / "best.pt")
        history.append(rec)
        log(f"epoch {epoch + 1}/{a.epochs} lr {lr:.4g} train loss {tr_loss:.4f} acc {tr_acc:.2f}% "
            + (f"val loss {rec['val_loss']:.4f} acc {rec['val_acc']:.2f}% " if rec["val_acc"] is not None else "")
            + f"({dt:.1f}s, {rec['images_per_s']:.0f} img/s)")
        if is_main:
            _save_atomic({"format": CHECKPOINT_FORMAT, "model": model.state_dict(),
                          "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                          "epoch": epoch + 1, "best_val": best_val, "best_epoch": best_epoch,
                          "best_model": best_state, "history": history, "train_time_s": train_time,
                          "rng": _rng_state(), "args": vars(a), "meta": meta,
                          "torch_version": str(torch.__version__)}, last_path)
            _write_json_atomic(result(False), out / "result.json")

    # ---- final evaluation on the test split (reported, never used for choices)
    ctx.sync_buffers(model)
    test = evaluate(model, test_loader, ctx, autocast)
    test_best = None
    if best_state is not None and best_epoch != len(history):
        final_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(best_state)
        test_best = round(evaluate(model, test_loader, ctx, autocast)[0], 3)
        model.load_state_dict(final_state)
    elif best_state is not None:
        test_best = round(test[0], 3)
    log(f"test top-1 {test[0]:.2f}% (loss {test[1]:.4f}, {test[2]} images)"
        + (f"; best validation {best_val:.2f}% at epoch {best_epoch}, its test top-1 {test_best:.2f}%"
           if best_state is not None else ""))
    res = result(True, (round(test[0], 3), round(test[1], 5)), test_best)
    if is_main:
        _save_atomic({"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "meta": meta,
                      "epoch": len(history), "test_top1": test[0], "best_val": best_val,
                      "args": vars(a), "torch_version": str(torch.__version__)}, out / "final.pt")
        _write_json_atomic(res, out / "result.json")
        log(f"wrote {out / 'final.pt'} and {out / 'result.json'}")
        logf.close()
    return res


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = build_parser().parse_args(argv)
    ctx = qdist.Context.from_env()
    finished = False
    try:
        _check_args(a)
        if a.time_budget and ctx.world_size > 1:  # before the process group would wait for peers
            raise UsageError("--time-budget needs a single process (each rank's clock would end "
                             "the run at a different step)")
        run(a, argv, ctx)
        finished = True
        return 0
    except (UsageError, DataError) as e:
        print(f"quant.train: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("quant.train: interrupted", file=sys.stderr)
        return 130
    finally:
        ctx.shutdown(clean=finished)


if __name__ == "__main__":
    qdist.Context.from_env().exit_process(main())
