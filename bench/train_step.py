"""Time training steps of a shift network (float and QAT) on this machine's device.

    python bench/train_step.py [--model shiftresnet20] [--expansions 1 6] [--bits float w8a8]
                               [--batch-size 256] [--steps 20] [--device auto]
                               [--shift gather index] [--json runs/bench_train_step.json]

One step = forward, cross-entropy, backward and an SGD step on a random batch, with
the model in training mode, as quant.train runs it (QAT models calibrated on one
batch first, like ``--calibrate-batches``). Each configuration is warmed up
(5 steps) and then timed step by step (the device synchronised around each); the
table gives the median. ``--shift index`` swaps in the shift's former implementation
(broadcast advanced indexing, whose backward sorts the indices) for comparison with
the current one (``gather``, backward a scatter-add).
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quant.qat import calibrate  # noqa: E402
from quant.train import build_model, quantize  # noqa: E402

# the module itself (the package `models` exports its function `shift` under that name)
shift_mod = importlib.import_module("models.shift")


def _index_gather(x, idx):
    """The former shift: pad, then one broadcast advanced-indexing read."""
    p, index = idx
    if p == 0:
        return x.clone()
    n, c, h, w = x.shape
    wp = w + 2 * p
    rows, cols = (index // wp).view(c, h, w), (index % wp).view(c, h, w)
    ch = torch.arange(c, device=x.device).view(c, 1, 1)
    return F.pad(x, (p, p, p, p))[:, ch, rows, cols]


def time_steps(model, batch: int, steps: int, device: torch.device) -> list[float]:
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    model.train()
    times = []
    for i in range(5 + steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= 5:
            times.append(time.perf_counter() - t0)
    return times


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python bench/train_step.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="shiftresnet20")
    ap.add_argument("--expansions", type=float, nargs="+", default=[1, 6])
    ap.add_argument("--bits", nargs="+", default=["float", "w8a8"], choices=("float", "w8a8", "w4a4"))
    ap.add_argument("--shift", nargs="+", default=["gather", "index"], choices=("gather", "index"))
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", default="runs/bench_train_step.json")
    a = ap.parse_args(argv)
    dev = torch.device("cuda" if a.device == "auto" and torch.cuda.is_available()
                       else ("cpu" if a.device == "auto" else a.device))
    if dev.type == "cuda" and not torch.cuda.is_available():
        ap.error(f"--device {a.device}: this machine has no CUDA device")
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
        name = torch.cuda.get_device_name(dev)
    else:
        name = f"cpu ({torch.get_num_threads()} threads)"
    gather = shift_mod._gather
    out = Path(a.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    print(f"device {name}, torch {torch.__version__}, batch {a.batch_size}, {a.steps} timed steps")
    print(f"{'model':<16} {'E':>4} {'bits':<6} {'shift':<7} {'median ms':>10} {'img/s':>9}")
    for e in a.expansions:
        for bits in a.bits:
            for impl in a.shift:
                shift_mod._gather = gather if impl == "gather" else _index_gather
                torch.manual_seed(0)
                kw = {"num_classes": 10, "in_channels": 3, "expansion": e}
                model = quantize(build_model(a.model, kw), bits, "po2" if bits != "float" else "float")
                if bits != "float":  # as quant.train --calibrate-batches: without it, Brevitas
                    # collects percentile statistics (kthvalue) in the first training steps
                    calibrate(model.to(dev), [torch.randn(a.batch_size, 3, 32, 32, device=dev)])
                t = statistics.median(time_steps(model.to(dev), a.batch_size, a.steps, dev))
                rows.append({"model": a.model, "expansion": e, "bits": bits, "shift": impl,
                             "batch": a.batch_size, "median_step_s": round(t, 5),
                             "images_per_s": round(a.batch_size / t, 1)})
                print(f"{a.model:<16} {e:>4g} {bits:<6} {impl:<7} {t * 1e3:>10.2f} {a.batch_size / t:>9.0f}",
                      flush=True)
                out.write_text(json.dumps({"device": name, "torch": str(torch.__version__),
                                           "rows": rows}, indent=1) + "\n")  # after every row
    shift_mod._gather = gather
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
