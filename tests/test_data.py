"""quant.data on tiny synthetic datasets made here (never the real ones)."""

from __future__ import annotations

import gzip
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from quant import data as qd
from quant.data import (DATASETS, BatchLoader, DataError, Normalize, load_dataset,
                        load_idx, random_crop_flip, read_idx, split_train_val)

CIFAR10 = DATASETS["cifar10"]
# created in this (unsorted) order on purpose: labels must follow the sorted names
CLASS_NAMES = ["truck", "airplane", "ship", "bird", "horse", "cat", "frog", "deer", "dog", "automobile"]


def _colour(label: int, k: int) -> tuple[int, int, int]:
    return (10 + 20 * label, 5 + 40 * k, 250 - 20 * label)


def make_imagefolder(root: Path, n_train=2, n_test=1, ext=".png") -> Path:
    for split, n in (("train", n_train), ("test", n_test)):
        for name in CLASS_NAMES:
            d = root / split / name
            d.mkdir(parents=True)
            label = sorted(CLASS_NAMES).index(name)
            for k in range(n):
                img = Image.new("RGB", (32, 32), _colour(label, k))
                img.putpixel((3, 1), (255, 0, 0))  # x=3, y=1: checks the HWC -> CHW transpose
                img.save(d / f"{k:04d}{ext}", quality=95)
    return root


def make_cifar10_pickles(root: Path, per_batch=4, n_test=6, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    batches = {}
    for i in range(1, 6):
        batches[f"data_batch_{i}"] = (rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                                      list(rng.integers(0, 10, per_batch)))
    batches["test_batch"] = (rng.integers(0, 256, (n_test, 3072), dtype=np.uint8),
                             list(rng.integers(0, 10, n_test)))
    for name, (x, y) in batches.items():
        with open(d / name, "wb") as f:
            pickle.dump({b"data": x, b"labels": [int(v) for v in y], b"batch_label": name.encode()}, f)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [c.encode() for c in qd.CIFAR10_CLASSES]}, f)
    return d


def write_idx(path: Path, arr: np.ndarray, compress=True) -> None:
    head = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    raw = head + arr.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(path, "wb") as f:
            f.write(raw)
    else:
        path.write_bytes(raw)


def make_fashion(d: Path, n_train=12, n_test=5, compress=True, seed=0):
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
              "train-labels-idx1-ubyte": rng.integers(0, 10, n_train),
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
              "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test)}
    for stem, a in arrays.items():
        write_idx(d / (stem + (".gz" if compress else "")), a, compress)
    return arrays


# --------------------------------------------------------------------------- loaders

def test_imagefolder_decodes_with_sorted_labels(tmp_path):
    root = make_imagefolder(tmp_path / "cf")
    s = qd.load_imagefolder(root, CIFAR10, cache=tmp_path / "cache")
    assert s.classes == tuple(sorted(CLASS_NAMES))
    assert s.train_x.shape == (20, 3, 32, 32) and s.train_x.dtype == torch.uint8
    assert s.test_x.shape == (10, 3, 32, 32)
    assert s.train_y.tolist() == [c for c in range(10) for _ in range(2)]
    for i, (label, k) in enumerate((c, k) for c in range(10) for k in range(2)):
        assert s.train_x[i, :, 0, 0].tolist() == list(_colour(label, k))
        assert s.train_x[i, :, 1, 3].tolist() == [255, 0, 0]
    # decoded once: a second load comes from the .npy cache without decoding
    cached = list((tmp_path / "cache" / "decoded").glob("cifar10-*/train_x.npy"))
    assert len(cached) == 1

    def boom(*a, **k):
        raise AssertionError("decoded again")
    orig = qd._decode
    qd._decode = boom
    try:
        s2 = qd.load_imagefolder(root, CIFAR10, cache=tmp_path / "cache")
    finally:
        qd._decode = orig
    assert torch.equal(s2.train_x, s.train_x) and torch.equal(s2.test_y, s.test_y)


def test_imagefolder_jpeg_and_tarball(tmp_path):
    root = make_imagefolder(tmp_path / "src", n_train=1, n_test=1, ext=".jpg")
    arc = tmp_path / "cifar10-jpeg.tar.gz"
    with tarfile.open(arc, "w:gz") as t:
        for sub in ("train", "test"):
            t.add(root / sub, arcname=sub)
    s = load_dataset("cifar10", arc, cache=tmp_path / "cache")
    assert (tmp_path / "cache" / "unpacked" / "cifar10-jpeg" / "train" / "truck").is_dir()
    assert s.train_x.shape == (10, 3, 32, 32)
    # JPEG is lossy: the flat colour comes back within a few levels
    want = torch.tensor([_colour(c, 0) for c in range(10)], dtype=torch.float32)
    got = s.train_x[:, :, 16, 16].float()
    assert (got - want).abs().max() <= 6
    # a folder that holds the tarball works too, and the unpacked copy is reused
    s2 = load_dataset("cifar10", tmp_path, cache=tmp_path / "cache")
    assert torch.equal(s2.train_x, s.train_x)


def test_cifar10_pickles(tmp_path):
    d = make_cifar10_pickles(tmp_path)
    s = load_dataset("cifar10", tmp_path, cache=tmp_path / "cache")  # parent folder
    s_direct = load_dataset("cifar10", d, cache=tmp_path / "cache")  # the batch folder itself
    with open(d / "data_batch_2", "rb") as f:
        b2 = pickle.load(f, encoding="bytes")
    assert s.train_x.shape == (20, 3, 32, 32) and s.test_x.shape == (6, 3, 32, 32)
    assert torch.equal(s.train_x[4:8], torch.from_numpy(b2[b"data"].reshape(4, 3, 32, 32)))
    assert s.train_y[4:8].tolist() == b2[b"labels"]
    assert s.classes == qd.CIFAR10_CLASSES
    assert torch.equal(s_direct.train_x, s.train_x)


def test_cifar100_pickles(tmp_path):
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    rng = np.random.default_rng(1)
    for name, n in (("train", 7), ("test", 3)):
        with open(d / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         b"fine_labels": [int(v) for v in rng.integers(0, 100, n)],
                         b"coarse_labels": [0] * n}, f)
    with open(d / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [f"c{i}".encode() for i in range(100)]}, f)
    s = load_dataset("cifar100", tmp_path, cache=tmp_path / "cache")
    assert s.train_x.shape == (7, 3, 32, 32) and len(s.classes) == 100
    assert s.info.num_classes == 100


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_idx(tmp_path, compress):
    arrays = make_fashion(tmp_path / "fm", compress=compress)
    s = load_idx(tmp_path / "fm")
    assert s.train_x.shape == (12, 1, 28, 28) and s.test_x.shape == (5, 1, 28, 28)
    assert np.array_equal(s.train_x[:, 0].numpy(), arrays["train-images-idx3-ubyte"])
    assert s.test_y.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    s2 = load_dataset("fashion-mnist", tmp_path / "fm", cache=tmp_path / "c")
    assert torch.equal(s2.train_x, s.train_x) and s2.info.in_channels == 1


def test_fashion_search_order_and_subfolder(tmp_path, monkeypatch):
    make_fashion(tmp_path / "shared" / "fashion-mnist", n_train=3)
    monkeypatch.setattr(qd, "SYSTEM_DATASETS", tmp_path / "nothing")
    monkeypatch.setattr(qd, "shared_dataset_dirs", lambda: [tmp_path / "shared"])
    s = load_dataset("fashion-mnist", cache=tmp_path / "cache")
    assert len(s.train_x) == 3
    s = load_dataset("fashion_mnist", tmp_path / "shared", cache=tmp_path / "cache")
    assert len(s.train_x) == 3


def test_bad_idx_is_a_data_error(tmp_path):
    p = tmp_path / "x-idx3-ubyte"
    p.write_bytes(b"\x00\x00\x08\x03" + struct.pack(">3I", 2, 28, 28) + b"\x00" * 10)
    with pytest.raises(DataError, match="size does not match"):
        read_idx(p)
    (tmp_path / "y").write_bytes(b"hello")
    with pytest.raises(DataError, match="not an IDX"):
        read_idx(tmp_path / "y")


def test_missing_and_offline_errors(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("cifar10", tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no cifar10 data found"):
        load_dataset("cifar10", tmp_path / "empty", cache=tmp_path / "c")
    with pytest.raises(DataError, match="unknown dataset"):
        load_dataset("imagenet")
    # nothing anywhere and no network: one clear line naming --data-dir
    monkeypatch.setattr(qd, "SYSTEM_DATASETS", tmp_path / "nothing")
    monkeypatch.setattr(qd, "shared_dataset_dirs", lambda: [])
    monkeypatch.setattr(qd, "_FASHION_URL", "http://127.0.0.1:9/")
    monkeypatch.setitem(qd._CIFAR_URLS, "cifar10", ("http://127.0.0.1:9/c.tar.gz", None,
                                                    "cifar-10-batches-py"))
    for name in ("fashion-mnist", "cifar10"):
        with pytest.raises(DataError) as e:
            load_dataset(name, cache=tmp_path / "c")
        msg = str(e.value)
        assert "download" in msg and "--data-dir" in msg and "\n" not in msg
    with pytest.raises(DataError, match="not found"):
        load_dataset("cifar10", cache=tmp_path / "c", download=False)


# --------------------------------------------------------------------------- splits, transforms

def test_validation_split_deterministic_disjoint_stratified():
    y = torch.arange(1000) % 10
    tr, va = split_train_val(y, 100, seed=0)
    tr2, va2 = split_train_val(y, 100, seed=0)
    assert torch.equal(tr, tr2) and torch.equal(va, va2)
    assert len(va) == 100 and len(tr) == 900
    assert set(tr.tolist()).isdisjoint(va.tolist())
    assert sorted(tr.tolist() + va.tolist()) == list(range(1000))
    assert torch.bincount(y[va], minlength=10).tolist() == [10] * 10
    _, va3 = split_train_val(y, 100, seed=1)
    assert not torch.equal(va, va3)
    tr0, va0 = split_train_val(y, 0)
    assert len(va0) == 0 and len(tr0) == 1000
    with pytest.raises(DataError):
        split_train_val(y, 1000)


def test_random_crop_flip_shapes_and_determinism():
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    a = random_crop_flip(x, 4, True, torch.Generator().manual_seed(3))
    b = random_crop_flip(x, 4, True, torch.Generator().manual_seed(3))
    c = random_crop_flip(x, 4, True, torch.Generator().manual_seed(4))
    assert a.shape == x.shape and a.dtype == torch.uint8
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(random_crop_flip(x, 0, False), x)
    # every output is a window of the zero-padded (possibly flipped) input
    xp = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(16):
        hits = [torch.equal(a[i], w[:, dy:dy + 32, dx:dx + 32]) for w in (xp[i], xp[i].flip(2))
                for dy in range(9) for dx in range(9)]
        assert any(hits)
    # flip only: each image is itself or its mirror, and both happen
    f = random_crop_flip(x, 0, True, torch.Generator().manual_seed(0))
    same = [torch.equal(f[i], x[i]) for i in range(16)]
    mirr = [torch.equal(f[i], x[i].flip(2)) for i in range(16)]
    assert all(s or m for s, m in zip(same, mirr)) and any(same) and any(mirr)


def test_normalize_matches_formula():
    n = Normalize(CIFAR10.mean, CIFAR10.std)
    x = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    ref = (x.float() / 255 - torch.tensor(CIFAR10.mean).view(1, 3, 1, 1)) / torch.tensor(CIFAR10.std).view(1, 3, 1, 1)
    assert torch.allclose(n(x), ref, atol=1e-5)


def test_batch_loader_sharding_and_epochs():
    x = torch.arange(23, dtype=torch.uint8).view(23, 1, 1, 1).expand(23, 1, 2, 2).contiguous()
    y = torch.arange(23)
    norm = Normalize((0.0,), (1 / 255,))  # identity on the values
    # evaluation: ranks split the set exactly, no padding
    seen = []
    for r in range(2):
        ld = BatchLoader(x, y, None, 5, norm, rank=r, world_size=2)
        seen += [int(v) for _, yb in ld for v in yb]
    assert sorted(seen) == list(range(23))
    # training: same permutation on every rank, padded so each rank runs the same steps
    ls = [BatchLoader(x, y, torch.arange(23), 4, norm, shuffle=True, augment=(0, True),
                      rank=r, world_size=2, seed=7) for r in range(2)]
    assert len(ls[0]) == len(ls[1]) == 3
    got = [[int(v) for _, yb in ld for v in yb] for ld in ls]
    assert set(got[0]) | set(got[1]) == set(range(23))
    again = [int(v) for _, yb in ls[0] for v in yb]
    assert again == got[0]
    ls[0].set_epoch(1)
    assert [int(v) for _, yb in ls[0] for v in yb] != got[0]
    # images follow their labels through the shuffle; the prefetch thread gives the same batches
    one = BatchLoader(x, y, None, 4, norm, shuffle=True, seed=1, limit_batches=2)
    thr = BatchLoader(x, y, None, 4, norm, shuffle=True, seed=1, limit_batches=2, workers=2)
    a, b = list(one), list(thr)
    assert len(a) == 2
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert torch.allclose(xa[:, 0, 0, 0], ya.float())
    # a limited evaluation spreads over the whole split
    lim = BatchLoader(x, y, None, 2, norm, limit_batches=2)
    picked = [int(v) for _, yb in lim for v in yb]
    assert len(lim) == 2 and picked[0] == 0 and picked[-1] == 22 and len(set(picked)) == 4
