"""python -m quant.train end to end on a tiny synthetic CIFAR-10 (a few steps, CPU)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from quant.train import CheckpointError, LRSchedule, load_checkpoint, load_model, main

sys.path.insert(0, str(Path(__file__).parent))
from test_data import make_cifar10_pickles  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

TINY = '''
import torch.nn as nn
def tiny(num_classes=10, in_channels=3, expansion=1):
    w = int(4 * expansion)
    return nn.Sequential(nn.Conv2d(in_channels, w, 3, padding=1, bias=False), nn.BatchNorm2d(w),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(w, num_classes))
'''


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    (root / "tinynet.py").write_text(TINY)
    data = make_cifar10_pickles(root / "data", per_batch=8, n_test=12)
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(root), str(REPO), e.get("PYTHONPATH", "")])
    e["SHIFTFPGA_CACHE"] = str(root / "cache")
    e["OMP_NUM_THREADS"] = "1"
    e.pop("WORLD_SIZE", None)
    sys.path.insert(0, str(root))  # the tiny factory, for the in-process runs
    threads = torch.get_num_threads()
    yield SimpleNamespace(root=root, data=data, env=e)
    sys.path.remove(str(root))
    torch.set_num_threads(threads)  # --threads 1 of the in-process runs


def common(env, out, *extra):
    return ["--model", "tinynet:tiny", "--dataset", "cifar10", "--data-dir", str(env.data),
            "--out", str(out), "--cache-dir", str(env.root / "cache"), "--val-size", "8", "--batch-size", "8", "--eval-batch-size", "16",
            "--limit-train-batches", "2", "--threads", "1", "--seed", "1", *extra]


def run_train(env, args, timeout=120):
    return subprocess.run([sys.executable, "-m", "quant.train", *args], cwd=REPO, env=env.env,
                          capture_output=True, text=True, timeout=timeout)


def test_train_then_resume(env, capsys):
    out = env.root / "run"
    p = run_train(env, common(env, out, "--epochs", "1"))
    assert p.returncode == 0, p.stderr
    assert {"last.pt", "best.pt", "final.pt", "result.json", "train.log"} <= {f.name for f in out.iterdir()}
    r = json.loads((out / "result.json").read_text())
    assert r["finished"] and r["epochs_done"] == 1 and len(r["val_acc"]) == 1
    assert r["train_size"] == 32 and r["val_size"] == 8 and r["test_size"] == 12
    assert r["steps_per_epoch"] == 2 and r["history"][0]["images_per_s"] > 0
    assert r["params"] == 4 * 27 + 8 + 4 * 10 + 10
    for k in ("command", "args", "train_time_s", "test_top1", "best_val_acc", "torch_version", "device"):
        assert r[k] is not None, k
    ck = load_checkpoint(out / "last.pt")
    assert ck["epoch"] == 1 and {"model", "optimizer", "scheduler", "rng", "meta"} <= set(ck)
    assert ck["scheduler"]["step"] == 2
    meta = load_checkpoint(out / "final.pt")["meta"]
    assert meta["model"] == "tinynet:tiny" and meta["num_classes"] == 10 and meta["bits"] == "float"
    assert meta["mean"] == [0.4914, 0.4822, 0.4465] and meta["input_size"] == [32, 32]

    # a second run into the same folder needs --resume (or --overwrite); in-process from here on
    assert main(common(env, out, "--epochs", "2")) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(common(env, out, "--epochs", "2", "--resume", "--no-progress")) == 0
    assert "resumed from" in capsys.readouterr().out
    r = json.loads((out / "result.json").read_text())
    assert r["epochs_done"] == 2 and [h["epoch"] for h in r["history"]] == [1, 2]
    assert load_checkpoint(out / "last.pt")["scheduler"]["step"] == 4

    # the final checkpoint rebuilds the model
    model, meta = load_model(out / "final.pt")
    assert not model.training and model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)

    # --init from that checkpoint, a new run
    assert main(common(env, env.root / "init", "--epochs", "1", "--init", str(out / "final.pt"),
                       "--limit-train-batches", "1")) == 0
    assert "initialised from" in capsys.readouterr().out

    # distillation from it, with the other recipe knobs
    kd = env.root / "kd"
    assert main(common(env, kd, "--epochs", "2", "--teacher", str(out / "final.pt"), "--kd-alpha", "0.7",
                       "--schedule", "cosine", "--warmup", "0.5", "--label-smoothing", "0.1",
                       "--nesterov", "--no-wd-norm", "--workers", "1", "--limit-train-batches", "1")) == 0
    assert "distilling from" in capsys.readouterr().out
    r = json.loads((kd / "result.json").read_text())
    assert r["history"][0]["lr"] == pytest.approx(0.1) and r["history"][1]["lr"] < 0.1


def test_fashion_mnist_in_process(env, capsys, tmp_path):
    from test_data import make_fashion
    make_fashion(tmp_path / "fm", n_train=24, n_test=6)
    out = tmp_path / "run"
    args = common(env, out, "--epochs", "1")
    args[3], args[5] = "fashion-mnist", str(tmp_path / "fm")
    assert main(args) == 0
    meta = load_checkpoint(out / "final.pt")["meta"]
    assert meta["in_channels"] == 1 and meta["input_size"] == [28, 28] and meta["std"] == [0.353]
    r = json.loads((out / "result.json").read_text())
    assert r["augment"] == {"crop": 28, "pad": 2, "flip": False}


def test_qat_w8a8_smoke(env, capsys):
    """The real model and the lead's quant.qat, two tiny steps (skipped while either is missing)."""
    models = pytest.importorskip("models")
    pytest.importorskip("quant.qat")
    if "shiftresnet20" not in models.names():
        pytest.skip("shiftresnet20 not registered yet")
    out = env.root / "qat"
    args = common(env, out, "--epochs", "1", "--bits", "w8a8", "--calibrate-batches", "1",
                  "--batch-size", "4", "--limit-eval-batches", "1")
    args[1] = "shiftresnet20"
    args += ["--expansion", "1"]
    assert main(args) == 0, capsys.readouterr().err
    model, meta = load_model(out / "final.pt")
    assert meta["bits"] == "w8a8" and meta["model_kwargs"]["expansion"] == 1
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


def test_fold_bn_fine_tune(env, capsys):
    """QAT (po2) -> --fold-bn fine-tune: two steps, BN-free checkpoint that load_model rebuilds."""
    models = pytest.importorskip("models")
    qat = pytest.importorskip("quant.qat")
    if "shiftresnet20" not in models.names():
        pytest.skip("shiftresnet20 not registered yet")

    def args(out, *extra):
        a = common(env, out, "--bits", "w8a8", "--scaling", "po2", "--batch-size", "4",
                   "--limit-eval-batches", "1", "--expansion", "1", "--no-progress", *extra)
        a[1] = "shiftresnet20"
        return a

    base = env.root / "fold-base"
    assert main(args(base, "--epochs", "0", "--calibrate-batches", "1")) == 0, capsys.readouterr().err
    out = env.root / "fold"
    assert main(args(out, "--epochs", "1", "--init", str(base / "final.pt"), "--fold-bn", "--lr", "0.001")) == 0
    log = capsys.readouterr().out
    assert "folded 21 BatchNorm layers" in log
    r = json.loads((out / "result.json").read_text())
    assert r["finished"] and r["steps_per_epoch"] == 2 and r["args"]["fold_bn"] is True
    model, meta = load_model(out / "final.pt")
    assert meta["bn_folded"] is True and meta["scaling"] == "po2"
    assert all(p.bn is None for p in model.graph.passes) and model.bn_folded
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert all(isinstance(p.conv, qat._AccumulatorBias) and p.conv.bias is not None for p in model.graph.passes)
    state = load_checkpoint(out / "final.pt")["model"]
    assert not any("running_mean" in k for k in state)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(x), load_model(out / "best.pt")[0](x))  # one epoch: best == final

    # a folded checkpoint continues only as a folded run
    assert main(args(env.root / "fold2", "--epochs", "1", "--init", str(out / "final.pt"),
                     "--limit-train-batches", "1")) == 2
    assert "--fold-bn" in capsys.readouterr().err
    assert main(args(env.root / "fold2", "--epochs", "1", "--init", str(out / "final.pt"), "--fold-bn",
                     "--limit-train-batches", "1", "--lr", "0.001")) == 0
    assert "BN folded" in capsys.readouterr().out
    assert load_model(env.root / "fold2" / "final.pt")[1]["bn_folded"] is True

    # po2 scales and a checkpoint to fold are required: one error line each
    for extra in (["--scaling", "float", "--init", str(base / "final.pt")], []):
        a = args(env.root / "fold-bad", "--epochs", "1", "--fold-bn")
        if extra:
            a[a.index("po2")] = "float"
            a += extra[2:]
        assert main(a) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--fold-bn" in err[0], err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_gloo_processes(env):
    out = env.root / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           "-m", "quant.train", *common(env, out, "--epochs", "1", "--device", "cpu")]
    p = subprocess.run(cmd, cwd=REPO, env=env.env, capture_output=True, text=True, timeout=150)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    files = sorted(f.name for f in out.iterdir())
    assert files == ["best.pt", "final.pt", "last.pt", "result.json", "train.log"]  # no temp files
    r = json.loads((out / "result.json").read_text())
    assert r["world_size"] == 2 and r["finished"]
    assert r["steps_per_epoch"] == 2  # 32 images, global batch 8 = 4 per process: limited to 2
    log = (out / "train.log").read_text()
    lines = log.splitlines()
    assert sum(x.startswith("epoch 1/1") for x in lines) == 1  # rank 0 only
    assert sum(x.startswith("test top-1") for x in lines) == 1
    assert sum(x.startswith("test top-1") for x in p.stdout.splitlines()) == 1


def test_bad_model_exits_2_with_one_line(env):
    p = run_train(env, ["--model", "no-such-model", "--out", str(env.root / "bad")], timeout=60)
    assert p.returncode == 2
    assert len(p.stderr.strip().splitlines()) == 1 and "model" in p.stderr, p.stderr
    assert not (env.root / "bad").exists()


@pytest.mark.parametrize("case", ["model", "dataset", "datadir", "init", "resume", "arg", "bits"])
def test_bad_input_one_line_nonzero(env, case, capsys):
    out = env.root / f"bad-{case}"
    args = common(env, out, "--epochs", "1")
    if case == "model":
        args[1] = "tinynet:nope"
    elif case == "dataset":
        args[3] = "imagenet-22k"
    elif case == "datadir":
        args[5] = str(env.root / "missing")
    elif case == "init":
        bad = env.root / "bad.pt"
        bad.write_bytes(b"this is not a checkpoint")
        args += ["--init", str(bad)]
    elif case == "resume":
        out.mkdir()
        (out / "last.pt").write_bytes(b"PK\x03\x04 truncated zip")
        args += ["--resume"]
    elif case == "arg":
        args += ["--epochs", "many"]
    elif case == "bits":
        args += ["--bits", "w3a3"]
    try:
        rc = main(args)
    except SystemExit as e:  # argparse
        rc = e.code
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error" in err[0], err


def test_lr_schedule():
    a = SimpleNamespace(lr=0.1, schedule="step", epochs=164, warmup=0.0, gamma=0.1, min_lr=0.0,
                        milestones=None)
    s = LRSchedule(a, 10)
    assert s.milestones == [81, 122]
    assert s.lr(80 * 10 + 9) == pytest.approx(0.1) and s.lr(81 * 10) == pytest.approx(0.01)
    assert s.lr(122 * 10) == pytest.approx(0.001)
    a.schedule, a.warmup, a.epochs = "cosine", 1.0, 10
    s = LRSchedule(a, 10)
    assert s.lr(0) == pytest.approx(0.01) and s.lr(9) == pytest.approx(0.1)
    assert s.lr(10) == pytest.approx(0.1) and s.lr(99) < 0.001


def test_lr_schedule_follows_the_time_budget():
    a = SimpleNamespace(lr=0.1, schedule="cosine", epochs=1000, warmup=0.0, gamma=0.1, min_lr=0.0,
                        milestones=None)
    s = LRSchedule(a, 10)
    s.set_progress(0.5)
    assert s.lr() == pytest.approx(0.05)  # half-way down the cosine, whatever the step count
    s.set_progress(1.5)
    assert s.lr() == pytest.approx(0.0)
    a.schedule, a.epochs = "step", 164
    s = LRSchedule(a, 10)
    s.set_progress(80.9 / 164)
    assert s.lr() == pytest.approx(0.1)
    s.set_progress(81.1 / 164)
    assert s.lr() == pytest.approx(0.01)


def test_time_budget_ends_the_run(env, capsys, tmp_path):
    # a budget spent before the first step: no step, but a finished run with its files
    out = tmp_path / "spent"
    assert main(common(env, out, "--epochs", "3", "--time-budget", "1e-9")) == 0
    r = json.loads((out / "result.json").read_text())
    assert r["finished"] and r["steps_done"] == 0 and r["epochs_done"] == 0
    assert r["time_budget_s"] == 1e-9 and (out / "final.pt").is_file()
    # a budget never reached: --epochs ends the run as usual
    out = tmp_path / "ample"
    assert main(common(env, out, "--epochs", "1", "--time-budget", "1e6")) == 0
    r = json.loads((out / "result.json").read_text())
    assert r["steps_done"] == 2 and [h["epoch"] for h in r["history"]] == [1]


def test_time_budget_needs_one_process(env):
    e = dict(env.env, WORLD_SIZE="2", RANK="0", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
             MASTER_PORT=str(_free_port()))
    r = run_train(SimpleNamespace(env=e), common(env, env.root / "tb2", "--time-budget", "10"))
    assert r.returncode == 2 and "single process" in r.stderr


def test_corrupted_checkpoint_is_checkpoint_error(tmp_path):
    p = tmp_path / "x.pt"
    p.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load_checkpoint(p)
    torch.save({"model": {"w": torch.zeros(1)}, "meta": {"x": SimpleNamespace(a=1)}}, p)
    with pytest.raises(CheckpointError, match="other than tensors"):
        load_checkpoint(p)
